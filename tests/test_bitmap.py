"""Persistent dirty bitmaps (qcow2 bitmaps extension) against QEMU.

The oracle for which clusters a bitmap holds dirty is QEMU itself:
qemu-nbd exports the bitmap (-B) and `qemu-img map` over NBD with
x-dirty-bitmap reports the dirty ranges as "data": false.  Operations are
run once with qemu's tools and once with imgtool on copies of the same
image, and the bitmaps (info JSON, dirty ranges) must come out the same;
`qemu-img check` must be clean after every imgtool operation.
"""
import json
import os
import resource
import shutil
import struct
import subprocess
import time

import pytest

from conftest import (IMGTOOL, imgtool, qemu_check_clean, qemu_img, qemu_info,
                      qemu_io, imgtool_info, same_content)

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
    srv = subprocess.Popen(["qemu-nbd", "-k", sock, "-f", "qcow2", "-B", name,
                            "-r", "-t", str(path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if os.path.exists(sock) or srv.poll() is not None:
                break
            time.sleep(0.02)
        assert srv.poll() is None, srv.stderr.read().decode()
        p = qemu_img("map", "--output=json", "--image-opts",
                     f"driver=nbd,server.type=unix,server.path={sock},"
                     f"x-dirty-bitmap=qemu:dirty-bitmap:{name}")
    finally:
        srv.terminate()
        srv.wait()
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


def one_line_error(p):
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgtool: "), p.stderr
    return lines[0]


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
