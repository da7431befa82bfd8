"""Persistent dirty bitmaps (qcow2 bitmaps extension) against QEMU.

The oracle for which clusters a bitmap holds dirty is QEMU itself:
qemu-nbd exports the bitmap (-B) and `qemu-img map` over NBD with
x-dirty-bitmap reports the dirty ranges as "data": false.  Operations are
run once with qemu's tools and once with imgtool on copies of the same
image, and the bitmaps (info JSON, dirty ranges) must come out the same;
`qemu-img check` must be clean after every imgtool operation.
"""
import functools
import json
import os
import shutil
import struct
import subprocess
import time

import pytest

import limits
from conftest import (IMGTOOL, QCOW2_OFFSET_MASK, imgtool, imgtool_info,
                      one_error_line, qcow2_header, qemu_check_clean, qemu_img,
                      qemu_info, qemu_io, read_be, same_content,
                      start_qemu_nbd, stop_process)

pytestmark = pytest.mark.skipif(not shutil.which("qemu-nbd"),
                                reason="qemu-nbd is needed as the oracle")

EXT_BITMAPS = 0x23852875


# --------------------------------------------------------------------------
# helpers

def dirty_ranges(path, name):
    """[(start, length)] dirty in bitmap `name` of path, as QEMU sees it."""
    sock = f"{path}.{name}.nbd.sock"
    if os.path.exists(sock):
        os.unlink(sock)
    srv = start_qemu_nbd(sock, "-f", "qcow2", "-B", name, "-r", path)
    try:
        p = qemu_img("map", "--output=json", "--image-opts",
                     f"driver=nbd,server.type=unix,server.path={sock},"
                     f"x-dirty-bitmap=qemu:dirty-bitmap:{name}")
    finally:
        stop_process(srv)
        if os.path.exists(sock):
            os.unlink(sock)
    return [(e["start"], e["length"]) for e in json.loads(p.stdout)
            if not e["data"]]


def bitmaps_of(info):
    return info["format-specific"]["data"].get("bitmaps")


def all_dirty(path):
    """{name: dirty ranges} of every consistent bitmap of path."""
    out = {}
    for b in bitmaps_of(qemu_info(path)) or []:
        if "in-use" not in b["flags"]:
            out[b["name"]] = dirty_ranges(path, b["name"])
    return out


def header_ext(f):
    """(offset of the bitmaps extension's data, its 24 bytes) or None."""
    f.seek(0)
    h = f.read(65536)
    off = struct.unpack(">I", h[100:104])[0]
    while off + 8 <= len(h):
        t, ln = struct.unpack(">II", h[off:off + 8])
        if t == 0:
            return None
        if t == EXT_BITMAPS:
            return off + 8, h[off + 8:off + 8 + ln]
        off += 8 + (ln + 7) // 8 * 8
    return None


def directory(path):
    """[(entry file offset, dict)] of the bitmap directory on disk."""
    with open(path, "rb") as f:
        _, ext = header_ext(f)
        nb, _, size, off = struct.unpack(">IIQQ", ext)
        f.seek(off)
        d = f.read(size)
    out, pos = [], 0
    for _ in range(nb):
        to, ts, fl, ty, gb, nl, ex = struct.unpack(">QIIBBHI", d[pos:pos + 24])
        out.append((off + pos, dict(table=to, tsize=ts, flags=fl, type=ty,
                                    gbits=gb,
                                    name=d[pos + 24 + ex:pos + 24 + ex + nl])))
        pos += (24 + ex + nl + 7) // 8 * 8
    return out


def set_flags(path, name, flags):
    for pos, e in directory(path):
        if e["name"] == name.encode():
            with open(path, "r+b") as f:
                f.seek(pos + 12)
                f.write(struct.pack(">I", flags))
            return
    raise KeyError(name)


@pytest.fixture
def base_img(tmp):
    """64 MiB qcow2 with bitmaps made by qemu-img, some bits dirty."""
    p = tmp / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_img("bitmap", "--add", p, "b0")
    qemu_img("bitmap", "--add", "-g", "128k", "--disable", p, "b1")
    qemu_img("bitmap", "--add", "-g", "512", p, "fine")
    qemu_io("-c", "write -P 1 1M 64k", "-c", "write -P 2 10M 1k", p)
    qemu_img("bitmap", "--enable", p, "b1")
    qemu_io("-c", "write -P 3 20M 300k", p)
    return p


def copies(src, tmp, *names):
    out = []
    for n in names:
        shutil.copy(src, tmp / n)
        out.append(tmp / n)
    return out


# --------------------------------------------------------------------------
# reading what qemu made

def test_qemu_bitmaps_listed_identically(base_img):
    q = qemu_info(base_img)
    i = imgtool_info(base_img)
    assert bitmaps_of(q) == bitmaps_of(i)
    assert [b["name"] for b in bitmaps_of(i)] == ["b0", "b1", "fine"]
    hq = qemu_img("info", base_img).stdout
    hi = imgtool("info", base_img).stdout
    sect = lambda t: t[t.index("    bitmaps:"):t.index("    refcount bits")]
    assert sect(hq) == sect(hi)


def test_reading_leaves_bitmaps_untouched(base_img, tmp):
    before = open(base_img, "rb").read()
    imgtool("info", base_img)
    imgtool("io", "-r", "-c", "read 0 1M", base_img)
    imgtool("dd", "if=" + str(base_img), "-f", "qcow2", "of=" + str(tmp / "o"),
            "bs=1M", "count=2")
    imgtool("convert", "-O", "qcow2", base_img, tmp / "plain.qcow2")
    assert open(base_img, "rb").read() == before
    # convert without --bitmaps copies none
    assert bitmaps_of(qemu_info(tmp / "plain.qcow2")) is None


# --------------------------------------------------------------------------
# every write path marks, as qemu does

IO_OPS = {
    "write": ["write -P 7 3M 100k", "write 63M 1k"],
    "zero": ["write -z 5M 1M", "write -z -u 40M 64k"],
    "discard": ["discard 20M 128k", "discard 0 4k"],
}


@pytest.mark.parametrize("kind", sorted(IO_OPS))
def test_io_marks_like_qemu_io(base_img, tmp, kind):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    qargs = [a for c in IO_OPS[kind] for a in ("-c", c)]
    qemu_io(*qargs, q)
    imgtool("io", *qargs, i)
    qemu_check_clean(i)
    assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i))
    dq, di = all_dirty(q), all_dirty(i)
    assert dq == di
    assert dq["b0"] != dirty_ranges(base_img, "b0")   # the op did mark
    assert same_content(q, i)


def _chain(d, tool):
    d.mkdir()
    base, top = d / "base.qcow2", d / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "16M")
    qemu_io("-c", "write -P 1 0 4M", base)
    qemu_img("bitmap", "--add", base, "bb")
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_img("bitmap", "--add", top, "tb")
    qemu_io("-c", "write -P 2 1M 128k", "-c", "write -z 8M 64k",
            "-c", "write -P 3 12M 4k", "-c", "discard 2M 64k", top)
    return base, top


@pytest.mark.parametrize("keep", [True, False], ids=["d", "empty"])
def test_commit_marks_base_like_qemu(tmp, keep):
    res = {}
    for tool, run in (("q", qemu_img), ("i", imgtool)):
        base, top = _chain(tmp / tool, tool)
        run("commit", *(["-d"] if keep else []), top)
        qemu_check_clean(base)
        qemu_check_clean(top)
        res[tool] = (all_dirty(base), all_dirty(top),
                     bitmaps_of(qemu_info(base)), bitmaps_of(qemu_info(top)))
    assert res["q"] == res["i"]
    assert res["i"][0]["bb"]   # the base's bitmap saw the committed data


def test_rebase_marks_overlay_like_qemu(tmp):
    res = {}
    for tool, run in (("q", qemu_img), ("i", imgtool)):
        base, top = _chain(tmp / tool, tool)
        other = tmp / tool / "other.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", other, "16M")
        qemu_io("-c", "write -P 1 0 1M", other)
        run("rebase", "-b", other, "-F", "qcow2", top)
        qemu_check_clean(top)
        res[tool] = (all_dirty(top), bitmaps_of(qemu_info(top)))
    assert same_content(tmp / "q" / "top.qcow2", tmp / "i" / "top.qcow2")
    assert res["q"] == res["i"]
    assert res["i"][0]["tb"] != [(1048576, 131072), (2097152, 65536),
                                 (8388608, 65536), (12582912, 65536)]


def test_convert_n_marks_target(base_img, tmp):
    src = tmp / "src.raw"
    qemu_img("create", "-q", "-f", "raw", src, "64M")
    qemu_io("-f", "raw", "-c", "write -P 9 30M 256k", src)
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    qemu_img("convert", "-n", "-f", "raw", "-O", "qcow2", src, q)
    imgtool("convert", "-n", "-f", "raw", "-O", "qcow2", src, i)
    qemu_check_clean(i)
    assert same_content(q, i)
    di = all_dirty(i)
    # Whatever each tool chose to write, what it wrote is marked: the
    # copied data range is dirty in the enabled bitmaps.
    for name in ("b0", "fine"):
        assert any(s <= 30 << 20 and s + ln >= (30 << 20) + (256 << 10)
                   for s, ln in di[name]), (name, di[name])


def test_resize_keeps_bitmaps_like_qemu(base_img, tmp):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    for size in ("200M", "48M"):
        qemu_img("resize", "-q", "--shrink", q, size)
        imgtool("resize", "-q", "--shrink", i, size)
        qemu_check_clean(i)
        assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i))
        assert all_dirty(q) == all_dirty(i)
        assert {e["name"]: e["tsize"] for _, e in directory(q)} == \
               {e["name"]: e["tsize"] for _, e in directory(i)}
    qemu_io("-c", "write 47M 64k", q)
    imgtool("io", "-c", "write 47M 64k", i)
    assert all_dirty(q) == all_dirty(i)


# --------------------------------------------------------------------------
# imgtool bitmap against qemu-img bitmap

SEQUENCES = [
    [["--add"], "n1"],
    [["--add", "-g", "1M", "--disable"], "n2"],
    [["--add", "-g", "2G"], "huge"],
    [["--clear"], "b0"],
    [["--disable"], "fine"],
    [["--enable"], "b1"],
    [["--merge", "b1"], "b0"],
    [["--add", "--merge", "fine", "--disable"], "m"],
    [["--remove"], "b1"],
    [["--add", "--remove"], "gone"],
    [["--clear", "--merge", "m", "--merge", "fine"], "b0"],
]


def test_bitmap_command_matches_qemu(base_img, tmp):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    for args, name in SEQUENCES:
        qemu_img("bitmap", *args, q, name)
        imgtool("bitmap", *args, i, name)
        qemu_check_clean(i)
        assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i)), args
        assert bitmaps_of(imgtool_info(i)) == bitmaps_of(qemu_info(i))
    assert all_dirty(q) == all_dirty(i)
    # and what imgtool stored keeps tracking writes made by qemu
    qemu_io("-c", "write 33M 64k", q)
    qemu_io("-c", "write 33M 64k", i)
    assert all_dirty(q) == all_dirty(i)


def test_merge_from_other_file(base_img, tmp):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    other = tmp / "other.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", other, "64M")
    qemu_img("bitmap", "--add", "-g", "256k", other, "o")
    qemu_io("-c", "write 50M 10k", other)
    for img, run in ((q, qemu_img), (i, imgtool)):
        run("bitmap", "--merge", "o", "-b", other, "-F", "qcow2", img, "fine")
        run("bitmap", "--merge", "o", "-b", other, img, "b1")
    qemu_check_clean(i)
    assert all_dirty(q) == all_dirty(i)
    assert (50 << 20, 256 << 10) in all_dirty(i)["b1"]


def test_bitmaps_removed_all_drops_extension(base_img, tmp):
    (i,) = copies(base_img, tmp, "i.qcow2")
    imgtool("bitmap", "--remove", i, "b0")
    imgtool("bitmap", "--remove", i, "b1")
    imgtool("bitmap", "--remove", i, "fine")
    qemu_check_clean(i)
    assert bitmaps_of(qemu_info(i)) is None
    with open(i, "rb") as f:
        assert header_ext(f) is None
        f.seek(88)
        assert struct.unpack(">Q", f.read(8))[0] & 1 == 0
    # and a new one on an image that never had any
    imgtool("bitmap", "--add", i, "again")
    qemu_io("-c", "write 0 64k", i)
    assert dirty_ranges(i, "again") == [(0, 65536)]


def test_small_cluster_default_granularity(tmp):
    for cs, want in (("512", 4096), ("2M", 65536), ("16k", 16384)):
        p = tmp / f"c{cs}.qcow2"
        imgtool("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", p,
                "8M")
        imgtool("bitmap", "--add", p, "x")
        (b,) = bitmaps_of(qemu_info(p))
        assert b["granularity"] == want


def test_many_bitmaps(tmp):
    p = tmp / "many.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "16M")
    for k in range(40):
        imgtool("bitmap", "--add", "-g", str(512 << (k % 12)), p, f"bm{k}")
    imgtool("io", "-c", "write 4M 4k", p)
    qemu_check_clean(p)
    bl = bitmaps_of(qemu_info(p))
    assert [b["name"] for b in bl] == [f"bm{k}" for k in range(40)]
    assert dirty_ranges(p, "bm39") == [(4 << 20, 4096)]
    assert dirty_ranges(p, "bm11") == [(4 << 20, 1 << 20)]


# --------------------------------------------------------------------------
# errors: qemu-img's exit code and text, one line

ERRORS = [
    (["--add"], "b0", "Operation add on bitmap b0 failed: Bitmap already "
                      "exists: b0"),
    (["--remove"], "nope", "Operation remove on bitmap nope failed: Dirty "
                           "bitmap 'nope' not found"),
    (["--clear"], "nope", "Dirty bitmap 'nope' not found"),
    (["--enable"], "nope", "Dirty bitmap 'nope' not found"),
    (["--merge", "nope"], "b0", "Operation merge on bitmap b0 failed: Dirty "
                                "bitmap 'nope' not found"),
    (["--add", "-g", "1000"], "x", "Granularity must be power of 2 and at "
                                   "least 512"),
    (["--add", "-g", "256"], "x", "Granularity must be power of 2"),
    (["--add", "-g", "4G"], "x", "Granularity must be power of 2"),
    (["--add"], "", "Bitmap name cannot be empty"),
    (["--add"], "a" * 1024, "Name length exceeds maximum (1023 characters)"),
]


@pytest.mark.parametrize("args,name,msg", ERRORS,
                         ids=[f"{a[0]}-{n[:8]}" for a, n, _ in ERRORS])
def test_operation_errors(base_img, tmp, args, name, msg):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    pq = qemu_img("bitmap", *args, q, name, check=False)
    pi = imgtool("bitmap", *args, i, name, check=False)
    assert pq.returncode == pi.returncode == 1
    assert msg in pq.stderr
    assert msg in one_error_line(pi)
    qemu_check_clean(i)
    assert bitmaps_of(qemu_info(i)) == bitmaps_of(qemu_info(base_img))


USAGE = [
    ([], "Need at least one of --add, --remove, --clear, --enable, "
         "--disable, or --merge"),
    (["--add", "ONLYFILE"], "Expecting filename and bitmap name"),
    (["--enable", "-g", "64k"], "granularity only supported with --add"),
    (["--add", "-b", "x.qcow2"], "Merge bitmap source file only supported "
                                 "with --merge"),
    (["--add", "-F", "qcow2"], "-F only supported with -b"),
    (["--add", "-f", "qcow2", "--image-opts"],
     "--image-opts and --format are mutually exclusive"),
]


@pytest.mark.parametrize("args,msg", USAGE, ids=[m[:20] for _, m in USAGE])
def test_usage_errors(base_img, args, msg):
    if "ONLYFILE" in args:
        argv = [args[0], base_img]
    else:
        argv = [*args, base_img, "b0"]
    before = open(base_img, "rb").read()
    pq = qemu_img("bitmap", *argv, check=False)
    pi = imgtool("bitmap", *argv, check=False)
    assert pq.returncode == pi.returncode == 1
    assert msg in pq.stderr
    assert pi.stderr.startswith(f"imgtool: {msg}")
    assert open(base_img, "rb").read() == before


def test_errors_on_unsupported_images(tmp):
    raw = tmp / "r.raw"
    v2 = tmp / "v2.qcow2"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M")
    p = imgtool("bitmap", "--add", "-f", "raw", raw, "x", check=False)
    assert "Can't store persistent bitmaps to" in one_error_line(p)
    assert "Operation not supported" in p.stderr
    p = imgtool("bitmap", "--add", v2, "x", check=False)
    assert "Cannot store dirty bitmaps in qcow2 v2 files" in one_error_line(p)
    qemu_check_clean(v2)
    p = imgtool("bitmap", "--add", tmp / "missing.qcow2", "x", check=False)
    assert "Could not open" in one_error_line(p)


def test_earlier_actions_kept_after_a_failure(base_img, tmp):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    args = ["--add", "--disable", "--merge", "nope"]
    assert qemu_img("bitmap", *args, q, "new", check=False).returncode == 1
    assert imgtool("bitmap", *args, i, "new", check=False).returncode == 1
    qemu_check_clean(i)
    assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i))


# --------------------------------------------------------------------------
# in use: a bitmap left IN_USE is inconsistent, as in QEMU

def test_in_use_bitmap_is_inconsistent(base_img, tmp):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    for p in (q, i):
        set_flags(p, "b1", 3)
    assert bitmaps_of(imgtool_info(i)) == bitmaps_of(qemu_info(q))
    assert "in-use" in bitmaps_of(qemu_info(i))[1]["flags"]
    table = dict((e["name"], e["table"]) for _, e in directory(i))[b"b1"]

    qemu_io("-c", "write 5M 64k", q)
    imgtool("io", "-c", "write 5M 64k", i)
    qemu_check_clean(i)
    assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i))
    assert all_dirty(q) == all_dirty(i)
    # carried over verbatim
    assert dict((e["name"], e["table"]) for _, e in directory(i))[b"b1"] == \
        table

    for args in (["--clear"], ["--enable"], ["--disable"], ["--merge", "b0"]):
        pq = qemu_img("bitmap", *args, q, "b1", check=False)
        pi = imgtool("bitmap", *args, i, "b1", check=False)
        assert pq.returncode == pi.returncode == 1
        assert "Bitmap 'b1' is inconsistent and cannot be used" in pq.stderr
        assert "Bitmap 'b1' is inconsistent and cannot be used" in \
            one_error_line(pi)
    pi = imgtool("bitmap", "--merge", "b1", i, "b0", check=False)
    assert "inconsistent" in one_error_line(pi)

    qemu_img("bitmap", "--remove", q, "b1")
    imgtool("bitmap", "--remove", i, "b1")
    qemu_check_clean(i)
    assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i))


def test_in_use_while_open_for_writing(base_img, tmp):
    """Opened for writing, the bitmaps are flagged in use on disk before
    any write: killed there, qemu finds them inconsistent."""
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    p = subprocess.Popen([IMGTOOL, "io", "-c", f"write -s {fifo} 0 64k",
                          str(base_img)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 5
        while time.time() < deadline:
            flags = {e["name"]: e["flags"] for _, e in directory(base_img)}
            if all(f & 1 for f in flags.values()):
                break
            time.sleep(0.02)
        assert all(f & 1 for f in flags.values()), flags
    finally:
        p.kill()
        p.wait()
    assert all("in-use" in b["flags"] for b in bitmaps_of(qemu_info(base_img)))
    assert bitmaps_of(imgtool_info(base_img)) == \
        bitmaps_of(qemu_info(base_img))
    qemu_check_clean(base_img)


def test_read_only_open_does_not_set_in_use(base_img):
    before = {e["name"]: e["flags"] for _, e in directory(base_img)}
    imgtool("io", "-r", "-c", "read 0 64k", base_img)
    imgtool("check", base_img)
    imgtool("map", base_img)
    assert {e["name"]: e["flags"] for _, e in directory(base_img)} == before


def test_stale_extension_is_ignored_like_qemu(base_img, tmp):
    """Autoclear bit off: a program without bitmap support wrote the
    image; the bitmaps are not shown and are dropped on the next write."""
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    for p in (q, i):
        with open(p, "r+b") as f:
            f.seek(88)
            ac = struct.unpack(">Q", f.read(8))[0]
            f.seek(88)
            f.write(struct.pack(">Q", ac & ~1))
    assert bitmaps_of(imgtool_info(i)) is None
    assert bitmaps_of(qemu_info(q)) is None
    imgtool("bitmap", "--add", i, "fresh")
    qemu_img("bitmap", "--add", q, "fresh")
    assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i))
    assert qemu_img("check", i, check=False).returncode in (0, 3)


# --------------------------------------------------------------------------
# convert --bitmaps

def test_convert_bitmaps_like_qemu(base_img, tmp):
    q, i = tmp / "q.qcow2", tmp / "i.qcow2"
    qemu_img("convert", "--bitmaps", "-O", "qcow2", base_img, q)
    imgtool("convert", "--bitmaps", "-O", "qcow2", base_img, i)
    qemu_check_clean(i)
    assert same_content(q, i)
    assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(i))
    assert all_dirty(i) == all_dirty(base_img) == all_dirty(q)
    # round trip through imgtool again, other cluster size
    j = tmp / "j.qcow2"
    imgtool("convert", "--bitmaps", "-O", "qcow2", "-o", "cluster_size=4k",
            i, j)
    qemu_check_clean(j)
    assert all_dirty(j) == all_dirty(base_img)


def test_convert_bitmaps_errors(base_img, tmp):
    raw = tmp / "r.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "64M")
    cases = [
        (["-O", "raw", base_img, tmp / "o.raw"],
         "Format driver 'raw' does not support bitmaps"),
        (["-O", "qcow2", base_img, base_img, tmp / "o1.qcow2"],
         "Copying bitmaps only possible with single source"),
        (["-f", "raw", "-O", "qcow2", raw, tmp / "o2.qcow2"],
         "Source lacks bitmap support"),
        (["-O", "qcow2", "-o", "compat=0.10", base_img, tmp / "o3.qcow2"],
         "Format driver 'qcow2' does not support bitmaps"),
    ]
    for args, msg in cases:
        pq = qemu_img("convert", "--bitmaps", *args, check=False)
        pi = imgtool("convert", "--bitmaps", *args, check=False)
        assert pq.returncode == pi.returncode == 1, args
        assert msg in pq.stderr and msg in one_error_line(pi)
    p = imgtool("convert", "--skip-broken-bitmaps", "-O", "qcow2", base_img,
                tmp / "o4.qcow2", check=False)
    assert "requires --bitmaps" in one_error_line(p)


def test_convert_inconsistent_bitmap(base_img, tmp):
    set_flags(base_img, "b1", 3)
    out = tmp / "o.qcow2"
    p = imgtool("convert", "--bitmaps", "-O", "qcow2", base_img, out,
                check=False)
    assert "Cannot copy inconsistent bitmap 'b1'" in one_error_line(p)
    assert not out.exists()
    p = imgtool("convert", "--bitmaps", "--skip-broken-bitmaps", "-O",
                "qcow2", base_img, out)
    assert "Skipping inconsistent bitmap 'b1'" in p.stderr
    q = tmp / "q.qcow2"
    qemu_img("convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2",
             base_img, q)
    qemu_check_clean(out)
    assert bitmaps_of(qemu_info(q)) == bitmaps_of(qemu_info(out))
    assert all_dirty(q) == all_dirty(out)


def test_convert_n_bitmaps_existing_and_size(base_img, tmp):
    same = tmp / "same.qcow2"
    big = tmp / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", same, "64M")
    qemu_img("bitmap", "--add", same, "b0")
    qemu_img("create", "-q", "-f", "qcow2", big, "128M")
    p = imgtool("convert", "-n", "--bitmaps", "-O", "qcow2", base_img, same,
                check=False)
    assert "Failed to create bitmap b0: Bitmap already exists: b0" in \
        one_error_line(p)
    p = imgtool("convert", "-n", "--bitmaps", "-O", "qcow2", base_img, big,
                check=False)
    assert "Bitmaps are of different sizes (destination size is 134217728, " \
        "source size is 67108864) and can't be merged" in one_error_line(p)
    qemu_check_clean(same)
    qemu_check_clean(big)


# --------------------------------------------------------------------------
# hostile bitmap directories: one line, bounded memory, nothing written

_run_limited = functools.partial(limits.run_limited, timeout=10)


def _patch(path, off, fmt, value):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def _ext_off(path):
    with open(path, "rb") as f:
        return header_ext(f)[0]


def _entry(path, k=0):
    return directory(path)[k]


def _h_ext(field, fmt, value):
    def f(p):
        _patch(p, _ext_off(p) + field, fmt, value)
    return f


def _h_entry(field, fmt, value, k=0):
    def f(p):
        _patch(p, _entry(p, k)[0] + field, fmt, value)
    return f


def _h_table_entry(value):
    def f(p):
        _patch(p, _entry(p)[1]["table"], ">Q", value)
    return f


def _h_name_nul(p):
    _patch(p, _entry(p)[0] + 24, ">B", 0)


def _h_dup_name(p):
    pos = _entry(p, 1)[0]
    _patch(p, pos + 24, ">2s", b"b0")


def _h_shared_table(p):
    _patch(p, _entry(p, 1)[0], ">Q", _entry(p, 0)[1]["table"])


def _h_huge_bitmap(p):
    """Every field consistent, but 256 GiB of bits: refused before any
    allocation."""
    pos, e = _entry(p)
    cs = 1 << 21
    nbits = (1 << 50) // 512
    entries = (nbits // 8 + cs - 1) // cs
    _patch(p, pos + 17, ">B", 9)
    _patch(p, pos + 8, ">I", entries)
    os.truncate(p, e["table"] + entries * 8 + cs)


HOSTILE = {
    "dir-past-eof": _h_ext(16, ">Q", 1 << 40),
    "dir-unaligned": _h_ext(16, ">Q", 65536 + 8),
    "dir-huge": _h_ext(8, ">Q", 0xffffffffff),
    "zero-bitmaps": _h_ext(0, ">I", 0),
    "too-many-bitmaps": _h_ext(0, ">I", 70000),
    "more-than-dir": _h_ext(0, ">I", 3),
    "reserved": _h_ext(4, ">I", 1),
    "table-past-eof": _h_entry(0, ">Q", 1 << 40),
    "table-zero": _h_entry(0, ">Q", 0),
    "table-unaligned": _h_entry(0, ">Q", 65536 + 512),
    "table-size-huge": _h_entry(8, ">I", 0x7fffffff),
    "table-size-wrong": _h_entry(8, ">I", 7),
    "flags-unknown": _h_entry(12, ">I", 0x80000002),
    "type": _h_entry(16, ">B", 7),
    "gran-63": _h_entry(17, ">B", 63),
    "gran-8": _h_entry(17, ">B", 8),
    "name-empty": _h_entry(18, ">H", 0),
    "name-huge": _h_entry(18, ">H", 0xffff),
    "extra-huge": _h_entry(20, ">I", 0xfffffff0),
    "name-nul": _h_name_nul,
    "name-dup": _h_dup_name,
    "table-shared": _h_shared_table,
}

# A table entry that cannot be right damages only its bitmap: it is
# treated as inconsistent (and flagged in use once opened for writing),
# so the image stays usable and the bitmap can be removed.
DAMAGED = {
    "data-reserved-bits": _h_table_entry((1 << 62) | (3 << 16)),
    "data-past-eof": _h_table_entry(1 << 45),
    "data-unaligned": _h_table_entry(65536 + 4096),
    "data-in-header": _h_table_entry(0 | (1 << 9)),
    "data-all-ones-flag-with-offset": _h_table_entry((5 << 16) | 1),
}


@pytest.fixture(scope="module")
def hostile_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    p = d / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_img("bitmap", "--add", p, "b0")
    qemu_img("bitmap", "--add", p, "b1")
    qemu_io("-c", "write 0 64k", p)
    huge = d / "huge.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", huge,
             "1P")
    qemu_img("bitmap", "--add", "-g", "2G", huge, "b0")
    return p, huge


@pytest.mark.parametrize("case", sorted(HOSTILE) + ["huge-bitmap"])
def test_hostile_directory(hostile_base, tmp, case):
    p = tmp / "h.qcow2"
    if case == "huge-bitmap":
        shutil.copy(hostile_base[1], p)
        _h_huge_bitmap(p)
    else:
        shutil.copy(hostile_base[0], p)
        HOSTILE[case](p)
    before = open(p, "rb").read()
    for argv in (["info", p], ["io", "-c", "write 0 4k", p],
                 ["bitmap", "--add", p, "x"],
                 ["convert", "--bitmaps", "-O", "qcow2", p, tmp / "o.qcow2"]):
        r = _run_limited(*argv)
        assert r.returncode == 1, (argv, r.returncode, r.stderr)
        one_error_line(r)
        assert not (tmp / "o.qcow2").exists()
    # check does not trust the directory either, and never crashes
    r = _run_limited("check", p)
    assert r.returncode in (0, 1, 2, 3), r.stderr
    assert open(p, "rb").read() == before


# --------------------------------------------------------------------------
# power loss while bitmaps are stored

def disk_bitmaps(path):
    """{name: (flags, granularity bits, bitmap bytes)} read straight from
    the file (the NBD oracle is too slow for many cut points)."""
    out = {}
    with open(path, "rb") as f:
        f.seek(20)
        cs = 1 << struct.unpack(">I", f.read(4))[0]
        f.seek(88)
        if not struct.unpack(">Q", f.read(8))[0] & 1 or not header_ext(f):
            return out
    for _, e in directory(path):
        data = b""
        if not e["flags"] & 1:
            with open(path, "rb") as f:
                f.seek(e["table"])
                table = struct.unpack(f">{e['tsize']}Q",
                                      f.read(8 * e["tsize"]))
                for t in table:
                    off = t & 0x00fffffffffffe00
                    if off:
                        f.seek(off)
                        data += f.read(cs)
                    else:
                        data += (b"\xff" if t & 1 else b"\0") * cs
        out[e["name"].decode()] = (e["flags"], e["gbits"], data)
    return out


def faulty(img, **kw):
    opts = ["driver=qcow2", "file.driver=faulty", f"file.filename={img}"]
    opts += [f"file.{k.replace('_', '-')}={v}" for k, v in kw.items()]
    return ",".join(opts)


PF_OPS = {
    "merge": ["bitmap", "--merge", "a", "--image-opts", "{}", "b"],
    "remove": ["bitmap", "--remove", "--image-opts", "{}", "b"],
    "add": ["bitmap", "--add", "--image-opts", "{}", "c"],
    "write": ["io", "-c", "write 1M 4k", "--image-opts", "{}"],
}


@pytest.mark.parametrize("op", sorted(PF_OPS))
def test_power_loss_old_or_new_bitmaps(tmp, op):
    """Power goes after each write of a bitmap-changing run (unflushed
    writes dropped or torn): each bitmap is as before, as after, or flagged
    in use (inconsistent, as QEMU leaves it); at worst clusters leak."""
    base = tmp / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", base,
             "4M")
    qemu_img("bitmap", "--add", base, "a")
    qemu_img("bitmap", "--add", "-g", "4k", base, "b")
    qemu_io("-c", "write 0 64k", "-c", "write 3M 8k", base)
    qemu_img("bitmap", "--disable", base, "b")
    qemu_io("-c", "write 2M 4k", base)

    def argv(img, **kw):
        return [a.replace("{}", faulty(img, **kw)) for a in PF_OPS[op]]

    before = disk_bitmaps(base)
    dry = tmp / "dry.qcow2"
    shutil.copy(base, dry)
    imgtool(*argv(dry, stats_file=tmp / "st"))
    after = disk_bitmaps(dry)
    assert after != before
    counts = dict(ln.split("=") for ln in (tmp / "st").read_text().split())
    writes = int(counts["writes"])
    seen = set()
    for cut in range(1, writes + 1):
        mode = "drop" if cut % 2 else "random-part"
        img = tmp / "cut.qcow2"
        shutil.copy(base, img)
        imgtool(*argv(img, powerfail_after_writes=cut, powerfail_mode=mode,
                      seed=cut), check=False)
        p = qemu_img("check", img, check=False)
        assert p.returncode in (0, 3), (cut, mode, p.stdout, p.stderr)
        got = disk_bitmaps(img)
        assert set(got) in (set(before), set(after)), (cut, got.keys())
        ref = before if set(got) == set(before) else after
        if set(got) != set(before):
            seen.add("new")
        for name, (flags, gbits, data) in got.items():
            if flags & 1:
                seen.add("in-use")
                continue
            assert (flags, gbits, data) in (before.get(name), after.get(name)),\
                (cut, mode, name)
            seen.add("old" if (flags, gbits, data) == before.get(name)
                     else "new")
        assert ref is not None
    assert "new" in seen and "in-use" in seen, seen
    # the last cut point changed nothing: a clean run from there is clean
    qemu_check_clean(dry)


# --------------------------------------------------------------------------
# other commands that meet bitmaps

def test_snapshot_apply_refused_with_bitmaps(base_img, tmp):
    q, i = copies(base_img, tmp, "q.qcow2", "i.qcow2")
    for p in (q, i):
        qemu_img("snapshot", "-c", "s1", p)
        qemu_io("-c", "write -P 5 0 64k", p)
    pq = qemu_img("snapshot", "-a", "s1", q, check=False)
    pi = imgtool("snapshot", "-a", "s1", i, check=False)
    assert pq.returncode == pi.returncode == 1
    msg = "Could not apply snapshot 's1': Device has active dirty bitmaps"
    assert msg in pq.stderr and msg in one_error_line(pi)
    qemu_io("-c", "read -P 5 0 64k", i)
    qemu_check_clean(i)
    # without bitmaps it applies
    for name in ("b0", "b1", "fine"):
        imgtool("bitmap", "--remove", i, name)
    imgtool("snapshot", "-a", "s1", i)
    qemu_io("-c", "read -P 0 0 64k", i)


def test_measure_bitmaps_size_of_imgtool_bitmaps(base_img, tmp):
    (i,) = copies(base_img, tmp, "i.qcow2")
    imgtool("bitmap", "--add", "-g", "4k", i, "more")
    imgtool("io", "-c", "write 0 8M", i)
    for fmt in ("qcow2",):
        q = json.loads(qemu_img("measure", "--output=json", "-O", fmt,
                                i).stdout)
        m = json.loads(imgtool("measure", "--output=json", "-O", fmt,
                               i).stdout)
        assert q == m and m["bitmaps"] > 0


def _refblock_and_l2(path):
    """Host offsets of the first refcount block and the first L2 table."""
    h = qcow2_header(path)
    l1_off, rt_off = h["l1_table_offset"], h["refcount_table_offset"]
    return (read_be(path, rt_off, 8),
            read_be(path, l1_off, 8) & QCOW2_OFFSET_MASK, l1_off, rt_off)


def test_removing_hostile_in_use_bitmap_frees_no_metadata(tmp):
    """An in-use bitmap's table is never validated by use; when it is
    removed its clusters are freed, but never a cluster that is other
    metadata, nor one twice: at worst they leak."""
    p = tmp / "h.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_img("bitmap", "--add", p, "evil")
    qemu_img("bitmap", "--add", p, "good")
    qemu_io("-c", "write -P 7 0 1M", "-c", "write -P 8 32M 64k", p)
    rb, l2, l1, rt = _refblock_and_l2(p)
    pos, _ = _entry(p)
    set_flags(p, "evil", 3)
    # its table (in its own cluster, now longer): the metadata clusters
    # and a duplicate, every entry well-formed (a malformed one would make
    # the whole table untrusted and leak it)
    tbl = _entry(p)[1]["table"]
    ents = [rb, l2, l1, rt, 0, rb]
    with open(p, "r+b") as f:
        f.seek(tbl)
        f.write(struct.pack(f">{len(ents)}Q", *ents))
    _patch(p, pos + 8, ">I", len(ents))
    imgtool("bitmap", "--remove", p, "evil")
    r = qemu_img("check", "--output=json", p, check=False)
    assert r.returncode in (0, 3), r.stdout + r.stderr
    assert json.loads(r.stdout).get("corruptions", 0) == 0
    qemu_io("-c", "read -P 7 0 1M", "-c", "read -P 8 32M 64k", p)
    assert [b["name"] for b in bitmaps_of(qemu_info(p))] == ["good"]
    # and the image stays usable by both
    imgtool("io", "-c", "write -P 9 40M 64k", p)
    qemu_io("-c", "read -P 9 40M 64k", "-c", "read -P 7 0 1M", p)
    imgtool("check", "-r", "leaks", p, check=False)
    qemu_check_clean(p)


def test_directory_of_65535_bitmaps_is_handled_in_linear_time(tmp):
    """The largest directory the format allows (every other bitmap in
    use; the others all clear): open, flagging and unflagging in use,
    storing after a write and a remove stay fast."""
    p = tmp / "many.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "1M")
    qemu_img("bitmap", "--add", p, "seed")
    n = 65535
    with open(p, "r+b") as f:
        f.seek(0, 2)
        tbase = (f.tell() + 511) // 512 * 512
        parts = []
        for i in range(n):
            name = b"b%05d" % i
            parts.append(struct.pack(">QIIBBHI", tbase + i * 512, 1,
                                     3 if i % 2 else 2, 1, 16, len(name), 0)
                         + name + b"\0" * 2)
        d = b"".join(parts)
        doff = tbase + n * 512
        f.seek(doff)
        f.write(d)
        ext_off, _ = header_ext(f)
        f.seek(ext_off)
        f.write(struct.pack(">IIQQ", n, 0, len(d), doff))
    with open(p, "r+b") as f:
        f.truncate(doff + len(d) + 512)
    # Count the crafted tables in the refcounts (qemu-img check takes
    # minutes over 65535 bitmaps; ours is checked against it elsewhere).
    imgtool("check", "-q", "-r", "all", p, check=False)
    imgtool("check", p)
    for argv in (["info", "--output=json", p], ["io", "-c", "read 0 4k", p],
                 ["io", "-c", "write 0 4k", p],
                 ["bitmap", "--remove", p, "b00007"]):
        t0 = time.time()
        r = subprocess.run([IMGTOOL, *map(str, argv)], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert time.time() - t0 < 10, argv
    names = [b["name"] for b in bitmaps_of(imgtool_info(p))]
    assert len(names) == n - 1 and "b00007" not in names
    bl = bitmaps_of(imgtool_info(p))
    assert all(b["flags"] == (["auto"] if int(b["name"][1:]) % 2 == 0
                              else ["in-use", "auto"]) for b in bl)
    imgtool("check", p)


def test_unallocated_bitmap_cluster_refused_for_writing(base_img, tmp):
    """A table (or data) cluster the refcounts call free would be handed
    out again by the allocator: opening for writing is refused."""
    for what in ("table", "data", "in-use-data"):
        p = tmp / f"{what}.qcow2"
        shutil.copy(base_img, p)
        if what == "in-use-data":
            set_flags(p, "b0", 3)
        pos, e = _entry(p)
        with open(p, "r+b") as f:
            f.seek(0, 2)
            new = (f.tell() + 65535) // 65536 * 65536
            f.seek(e["table"])
            table = f.read(8 * e["tsize"])
            if what == "table":
                f.seek(new)
                f.write(table.ljust(65536, b"\0"))
            else:
                data_off = struct.unpack(">Q", table[:8])[0]
                assert data_off, "b0 has dirty bits in its first cluster"
                f.seek(data_off)
                data = f.read(65536)
                f.seek(new)
                f.write(data)
                f.seek(e["table"])
                f.write(struct.pack(">Q", new))
        if what == "table":
            _patch(p, pos, ">Q", new)
        before = p.read_bytes()
        for argv in (["io", "-c", "write 0 4k", p], ["bitmap", "--add", p, "x"]):
            r = imgtool(*argv, check=False)
            assert "is not allocated" in one_error_line(r)
        assert p.read_bytes() == before
        assert bitmaps_of(imgtool_info(p)) == bitmaps_of(qemu_info(p))
        # check -r all counts it, then the image is writable again
        imgtool("check", "-r", "all", p, check=False)
        qemu_check_clean(p)
        imgtool("io", "-c", "write 0 4k", p)
        qemu_check_clean(p)


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_bitmap_table(hostile_base, tmp, case):
    p = tmp / "d.qcow2"
    shutil.copy(hostile_base[0], p)
    DAMAGED[case](p)
    r = _run_limited("info", "--output=json", p)
    assert r.returncode == 0, r.stderr
    assert bitmaps_of(json.loads(r.stdout)) == [
        {"flags": ["auto"], "name": n, "granularity": 65536}
        for n in ("b0", "b1")]
    r = _run_limited("convert", "--bitmaps", "-O", "qcow2", p, tmp / "o")
    assert "Cannot copy inconsistent bitmap 'b0'" in one_error_line(r)
    r = _run_limited("bitmap", "--clear", p, "b0")
    assert "inconsistent" in one_error_line(r)
    r = _run_limited("io", "-c", "write 5M 4k", p)
    assert r.returncode == 0, r.stderr
    flags = {b["name"]: b["flags"] for b in bitmaps_of(qemu_info(p))}
    assert flags == {"b0": ["in-use", "auto"], "b1": ["auto"]}
    assert (5 << 20, 65536) in dirty_ranges(p, "b1")
    # (check reports the damaged entry itself; qemu-img check cannot even
    # open some of these images)
    assert imgtool("check", p, check=False).returncode in (0, 2, 3)
    r = _run_limited("bitmap", "--remove", p, "b0")
    assert r.returncode == 0, r.stderr
    assert [b["name"] for b in bitmaps_of(qemu_info(p))] == ["b1"]
    assert qemu_img("check", p, check=False).returncode in (0, 3)
    imgtool("check", "-r", "leaks", p, check=False)
    qemu_check_clean(p)
