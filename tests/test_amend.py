"""`imgtool amend` on qcow2 images, against qemu-img 7.2 as the oracle.

Each amend runs on images made by qemu-img and by imgtool, holding data,
zero clusters (plain and preallocated), compressed clusters, an internal
snapshot and, where it matters, a backing file.  After it:
  - `qemu-img check` is clean;
  - `qemu-img info` shows the new settings, and its format-specific part
    equals what `qemu-img amend` makes of a copy;
  - the guest content and the snapshot's content are unchanged (read by
    qemu-img).
Refused amends fail with one line, exit 1, and leave the file byte for
byte as it was.  A power-loss test cuts every write of a refcount width
change and of a compat change: the image must always open, pass qemu-img
check with at most leaks, and read back the same data.
"""
import json
import shutil
import struct

import pytest

from conftest import (faulty_opts, image_state, imgtool, qemu_check_clean,
                      qemu_img, qemu_info, qemu_io, same_content)

MiB = 1024 * 1024


def mk(path, size="8M", opts=None, tool=qemu_img, backing=None):
    args = ["create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    if opts:
        args += ["-o", opts]
    args.append(path)
    if not backing:
        args.append(size)
    tool(*args)


def imgtool_io(*args, **kw):
    return imgtool("io", *args, **kw)


def fill(img, snapshot=True, compressed=True, maker="qemu"):
    """Data, zero clusters (plain and preallocated), compressed clusters,
    a snapshot, then changes on top of it (some that turn the snapshot's
    clusters into zero clusters of the active layer), written by qemu-io
    or imgtool."""
    io = imgtool_io if maker == "imgtool" else qemu_io
    io("-c", "write -P 1 0 1M", "-c", "write -z 1M 256k",
       "-c", f"write {'-c ' if compressed else ''}-P 3 2M 128k",
       "-c", "write -P 4 3M 64k",
       "-c", "write -z 3M 32k", "-c", "write -z -u 5M 64k", img)
    if snapshot:
        TOOLS[maker]("snapshot", "-c", "s1", img)
    io("-c", "write -P 5 512k 64k", "-c", "write -z 4M 64k",
       "-c", "discard 0 64k", "-c", "write -z 768k 64k", img)


def fmt_info(img):
    return qemu_info(img)["format-specific"]["data"]


def amend_both(tmp, img, opts, *extra):
    """Amends img with imgtool and a copy with qemu-img; returns the
    copy."""
    ref = tmp / ("qemu-" + img.name)
    shutil.copy(img, ref)
    imgtool("amend", *extra, "-o", opts, img)
    qemu_img("amend", *extra, "-o", opts, ref)
    return ref


TOOLS = {"qemu": qemu_img, "imgtool": imgtool}


# ------------------------------------------------------------ help, usage

def test_help_lists_what_qemu_img_lists(tmp):
    img = tmp / "a.qcow2"
    mk(img)
    want = qemu_img("amend", "-o", "help", img).stdout
    assert want.startswith("Amend options for 'qcow2':\n")
    assert imgtool("amend", "-o", "help", img).stdout == want
    assert imgtool("amend", "-f", "qcow2", "-o", "?").stdout == want
    assert imgtool("amend", "-o", "compat=1.1,help", img).stdout == want
    p = imgtool("amend", "-f", "raw", "-o", "help", rc=1)
    assert p.stderr == ("imgtool: Format driver 'raw' does not support "
                        "option amendment\n")
    p = imgtool("amend", "-f", "nope", "-o", "help", rc=1)
    assert p.stderr == "imgtool: Unknown file format 'nope'\n"


@pytest.mark.parametrize("args,msg", [
    ([], "Must specify options (-o)"),
    (["-o", "compat=1.1"], "Expecting one image file name"),
    (["-o", "compat=1.1", "IMG", "IMG"], "Expecting one image file name"),
    (["-o", "", "IMG"], "Invalid option list: "),
    (["-o", "compat=1.1,", "IMG"], "Invalid option list: compat=1.1,"),
    (["-o", ",compat=1.1", "IMG"], "Invalid option list: ,compat=1.1"),
    # A bare key means key=on.
    (["-o", "compat", "IMG"], "Unknown compatibility level on"),
    (["-t", "bogus", "-o", "compat=1.1", "IMG"], "Invalid cache option: "
     "bogus"),
    (["-f", "qcow2", "--image-opts", "-o", "compat=1.1", "IMG"],
     "--image-opts and --format are mutually exclusive"),
])
def test_usage_errors(tmp, args, msg):
    img = tmp / "a.qcow2"
    mk(img)
    before = img.read_bytes()
    args = [str(img) if a == "IMG" else a for a in args]
    p = imgtool("amend", *args, rc=1)
    assert p.stderr.splitlines()[0] == "imgtool: " + msg
    q = qemu_img("amend", *args, rc=1)
    assert q.stderr.splitlines()[0] == "qemu-img: " + msg
    assert img.read_bytes() == before


# ------------------------------------------------------------ refusals

# (create options, amend options, qemu-img's message, or None when
# imgtool's one-line message differs from qemu-img's two lines).
REFUSED = [
    ("", "foo=bar", "Invalid parameter 'foo'"),
    ("", "cluster_size=4k", None),
    ("", "preallocation=full", None),
    ("", "encrypt.format=luks", None),
    ("", "compat=2.0", "Unknown compatibility level 2.0"),
    ("", "refcount_bits=3",
     "Refcount width must be a power of two and may not exceed 64 bits"),
    ("", "refcount_bits=128",
     "Refcount width must be a power of two and may not exceed 64 bits"),
    ("", "refcount_bits=0",
     "Refcount width must be a power of two and may not exceed 64 bits"),
    ("", "refcount_bits=abc", "Parameter 'refcount_bits' expects a number"),
    ("", "lazy_refcounts=maybe",
     "Parameter 'lazy_refcounts' expects 'on' or 'off'"),
    ("refcount_bits=8", "compat=0.10", "compat=0.10 requires "
     "refcount_bits=16"),
    ("", "compat=0.10,lazy_refcounts=on", "Lazy refcounts only supported "
     "with compatibility level 1.1 and above (use compat=1.1 or greater)"),
    ("compat=0.10", "lazy_refcounts=on", "Lazy refcounts only supported "
     "with compatibility level 1.1 and above (use compat=1.1 or greater)"),
    ("compat=0.10", "refcount_bits=8", "Refcount widths other than 16 bits "
     "require compatibility level 1.1 or above (use compat=1.1 or "
     "greater)"),
    ("", "backing_file=x.qcow2", None),
    ("", "backing_fmt=raw", None),
    ("", "data_file=x.raw", "data-file can only be set for images that use "
     "an external data file"),
    ("", "data_file_raw=on", "data-file-raw cannot be set on existing "
     "images"),
    ("data_file=DATA", "data_file_raw=on", "data-file-raw cannot be set on "
     "existing images"),
    ("data_file=DATA", "compat=0.10", "Cannot downgrade an image with a "
     "data file"),
    ("extended_l2=on", "compat=0.10", "Cannot downgrade an image with "
     "incompatible features 0x10 set"),
    ("", "encrypt.new-secret=s0", "Can't amend encryption options - "
     "encryption not present"),
    ("", "size=12345", "The new size must be a multiple of 512"),
]


@pytest.mark.parametrize("create,opts,msg", REFUSED)
def test_refused_like_qemu_img_and_unchanged(tmp, create, opts, msg):
    img = tmp / "a.qcow2"
    create = create.replace("DATA", str(tmp / "d.raw"))
    mk(img, opts=create or None)
    qemu_io("-c", "write -P 7 0 128k", img)
    ref = tmp / "ref.qcow2"
    shutil.copy(img, ref)
    before = img.read_bytes()
    p = imgtool("amend", "-o", opts, img, rc=1)
    q = qemu_img("amend", "-o", opts, ref, rc=1)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgtool: "), p.stderr
    if msg:
        assert q.stderr == f"qemu-img: {msg}\n"
        assert p.stderr == f"imgtool: {msg}\n"
    else:
        # qemu-img: "Invalid parameter 'x'\nThis option is only supported
        # for image creation" or "Cannot amend the backing file\nYou can
        # use 'qemu-img rebase' instead.": one line here.
        first = q.stderr.splitlines()[0][len("qemu-img: "):]
        assert lines[0].startswith("imgtool: " + first), (p.stderr, q.stderr)
    assert img.read_bytes() == before


def test_refcount_overflow_refused_like_qemu_img(tmp):
    """Four snapshots give clusters refcount 5: 2 bits cannot hold it."""
    img = tmp / "a.qcow2"
    mk(img)
    qemu_io("-c", "write -P 1 0 64k", img)
    for i in range(4):
        qemu_img("snapshot", "-c", f"s{i}", img)
    before = img.read_bytes()
    for bits in (1, 2):
        p = imgtool("amend", "-o", f"refcount_bits={bits}", img, rc=1)
        q = qemu_img("amend", "-o", f"refcount_bits={bits}", img, rc=1)
        assert p.stderr == q.stderr.replace("qemu-img:", "imgtool:")
        assert "has a refcount of 5" in p.stderr
        assert img.read_bytes() == before
    imgtool("amend", "-o", "refcount_bits=4", img)
    qemu_check_clean(str(img))
    assert fmt_info(img)["refcount-bits"] == 4


def test_downgrade_refusals(tmp):
    # zstd is dropped when nothing is compressed with it, as qemu-img does
    img = tmp / "z.qcow2"
    mk(img, opts="compression_type=zstd")
    qemu_io("-c", "write -P 1 0 64k", img)
    ref = amend_both(tmp, img, "compat=0.10")
    assert fmt_info(img) == fmt_info(ref)
    assert fmt_info(img)["compression-type"] == "zlib"
    qemu_check_clean(str(img))
    # ... and refused when compressed clusters need it.
    mk(img, opts="compression_type=zstd")
    qemu_io("-c", "write -c -P 1 0 64k", img)
    before = img.read_bytes()
    p = imgtool("amend", "-o", "compat=0.10", img, rc=1)
    q = qemu_img("amend", "-o", "compat=0.10", tmp / "z.qcow2", rc=1)
    assert p.stderr == q.stderr.replace("qemu-img:", "imgtool:")
    assert img.read_bytes() == before
    # Persistent bitmaps: qemu-img 7.2 downgrades and leaves them as
    # leaked clusters behind an extension v2 readers distrust; refused.
    img = tmp / "b.qcow2"
    mk(img)
    qemu_img("bitmap", "--add", img, "bm0")
    before = img.read_bytes()
    p = imgtool("amend", "-o", "compat=0.10", img, rc=1)
    assert p.stderr == ("imgtool: Cannot downgrade an image with persistent "
                        "dirty bitmaps (remove them first)\n")
    assert img.read_bytes() == before


# ------------------------------------------------------------ changes

@pytest.mark.parametrize("maker,cs,widths", [
    ("qemu", "512", (1, 2, 4, 8, 16, 32, 64)),
    ("imgtool", "512", (1, 2, 4, 8, 16, 32, 64)),
    ("imgtool", "64k", (2, 64)),
])
def test_refcount_bits_every_width(tmp, maker, cs, widths):
    src = tmp / "src.qcow2"
    mk(src, opts=f"cluster_size={cs}", tool=TOOLS[maker])
    fill(src, maker=maker)
    want = image_state(src, tmp)
    for bits in widths:
        img = tmp / "a.qcow2"
        shutil.copy(src, img)
        ref = tmp / "ref.qcow2"
        shutil.copy(src, ref)
        p = imgtool("amend", "-o", f"refcount_bits={bits}", img, check=False)
        q = qemu_img("amend", "-o", f"refcount_bits={bits}", ref,
                     check=False)
        assert p.returncode == q.returncode, (bits, p.stderr, q.stderr)
        if p.returncode:
            # Snapshots and compressed clusters share clusters: too many
            # references for the narrowest widths.
            assert p.stderr == q.stderr.replace("qemu-img:", "imgtool:")
            assert img.read_bytes() == src.read_bytes()
            continue
        qemu_check_clean(str(img))
        assert fmt_info(img) == fmt_info(ref)
        assert fmt_info(img)["refcount-bits"] == bits
        assert image_state(img, tmp) == want, bits
        imgtool("check", img)


def test_refcount_bits_chain_and_back(tmp):
    """1 -> 64 -> 2 -> 16 bits on an image without snapshots, with
    writes in between (the allocator works with each width)."""
    img = tmp / "a.qcow2"
    mk(img, opts="cluster_size=4k", tool=imgtool)
    fill(img, snapshot=False, compressed=False)
    for i, bits in enumerate((1, 64, 2, 16)):
        imgtool("amend", "-o", f"refcount_bits={bits}", img)
        qemu_check_clean(str(img))
        assert fmt_info(img)["refcount-bits"] == bits
        imgtool("io", "-c", f"write -P {0x40 + i} {6 * MiB + i * 65536} 64k",
                img)
        qemu_check_clean(str(img))
    qemu_io("-c", "read -P 1 64k 64k", "-c", "read -P 0x43 6336k 64k", img)


@pytest.mark.parametrize("maker,cs,with_backing", [
    ("qemu", "512", True), ("imgtool", "64k", True),
    ("qemu", "64k", False), ("imgtool", "512", False),
])
def test_downgrade_and_upgrade(tmp, maker, cs, with_backing):
    base = None
    if with_backing:
        base = tmp / "base.qcow2"
        mk(base, size="8M")
        qemu_io("-c", "write -P 9 0 8M", base)
    img = tmp / "a.qcow2"
    mk(img, opts=f"cluster_size={cs},lazy_refcounts=on", tool=TOOLS[maker],
       backing=base)
    fill(img, maker=maker)
    want = image_state(img, tmp)
    ref = amend_both(tmp, img, "compat=0.10")
    qemu_check_clean(str(img))
    assert fmt_info(img) == fmt_info(ref)
    assert fmt_info(img)["compat"] == "0.10"
    assert image_state(img, tmp) == want
    # qemu-img zeroes a preallocated zero cluster it shares with the
    # snapshot and so changes the snapshot (768k here); we do not.
    assert image_state(ref, tmp)[1] == want[1]
    if with_backing:
        assert qemu_info(img)["backing-filename"] == str(base)
    # No zero flags are left (v2 has none) and nothing reads through to
    # the backing file that did not before.
    assert same_content(img, ref)

    ref = amend_both(tmp, img, "compat=1.1,lazy_refcounts=on")
    qemu_check_clean(str(img))
    assert fmt_info(img) == fmt_info(ref)
    assert fmt_info(img)["compat"] == "1.1"
    assert fmt_info(img)["lazy-refcounts"] is True
    assert image_state(img, tmp) == want
    imgtool("check", img)


def strip_snapshot_extra(img):
    """Rewrites the single snapshot table entry without extra data, as
    old v2 writers left it."""
    with open(img, "r+b") as f:
        d = bytearray(f.read())
        nb, off = struct.unpack(">IQ", d[60:72])
        assert nb == 1
        id_len, name_len = struct.unpack(">HH", d[off + 12:off + 16])
        extra = struct.unpack(">I", d[off + 36:off + 40])[0]
        names = d[off + 40 + extra:off + 40 + extra + id_len + name_len]
        struct.pack_into(">I", d, off + 36, 0)
        end = off + 40 + extra + id_len + name_len
        d[off + 40:end] = names + bytes(end - off - 40 - len(names))
        f.seek(0)
        f.write(d)


def test_upgrade_widens_old_snapshot_entries(tmp):
    """v3 needs 16 bytes of snapshot extra data that old v2 writers did
    not write: the table is rewritten with them on upgrade."""
    img = tmp / "a.qcow2"
    mk(img, opts="compat=0.10,cluster_size=4k")
    qemu_io("-c", "write -P 1 0 64k", img)
    qemu_img("snapshot", "-c", "old", img)
    qemu_io("-c", "write -P 2 0 64k", img)
    strip_snapshot_extra(img)
    qemu_check_clean(str(img))
    want = image_state(img, tmp)
    ref = amend_both(tmp, img, "compat=1.1")
    qemu_check_clean(str(img))
    assert fmt_info(img) == fmt_info(ref)
    assert image_state(img, tmp) == want
    d = img.read_bytes()
    off = struct.unpack(">Q", d[64:72])[0]
    extra = struct.unpack(">I", d[off + 36:off + 40])[0]
    assert extra >= 16
    assert struct.unpack(">Q", d[off + 48:off + 56])[0] == 8 * MiB
    # The snapshot still applies.
    imgtool("snapshot", "-a", "old", img)
    qemu_io("-c", "read -P 1 0 64k", img)


def test_lazy_refcounts_on_off_and_dirty(tmp):
    img = tmp / "a.qcow2"
    mk(img)
    ref = amend_both(tmp, img, "lazy_refcounts=on")
    assert fmt_info(img) == fmt_info(ref)
    assert fmt_info(img)["lazy-refcounts"] is True
    # Killed with lazy refcounts: dirty, refcounts stale on disk.
    qemu_io("-c", "write -P 3 0 1M", "-c", "sigraise 9", img, check=False)
    assert qemu_info(img)["dirty-flag"] is True
    imgtool("amend", "-o", "lazy_refcounts=off", img)
    info = qemu_info(img)
    assert info["dirty-flag"] is False
    assert info["format-specific"]["data"]["lazy-refcounts"] is False
    qemu_check_clean(str(img))
    qemu_io("-c", "read -P 3 0 1M", img)


def test_unchanged_values_change_nothing(tmp):
    img = tmp / "a.qcow2"
    mk(img)
    qemu_io("-c", "write -P 1 0 64k", img)
    before = img.read_bytes()
    imgtool("amend", "-o", "compat=1.1,refcount_bits=16,lazy_refcounts=off,"
            "data_file_raw=off,size=8M", img)
    imgtool("amend", "-o", "compat=v3", "-o", "size=0", img)
    assert img.read_bytes() == before
    imgtool("amend", "-o", "lazy_refcounts", img)
    assert fmt_info(img)["lazy-refcounts"] is True


def test_size(tmp):
    img = tmp / "a.qcow2"
    mk(img)
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -P 2 7M 1M", img)
    ref = amend_both(tmp, img, "size=16M")
    assert qemu_info(img)["virtual-size"] == 16 * MiB
    assert same_content(img, ref)
    # Shrinking needs no --shrink in amend, as with qemu-img.
    ref = amend_both(tmp, img, "size=4M")
    assert qemu_info(img)["virtual-size"] == 4 * MiB
    assert same_content(img, ref)
    qemu_check_clean(str(img))
    # Growing together with an upgrade of a v2 image with snapshots.
    v2 = tmp / "v2.qcow2"
    mk(v2, opts="compat=0.10")
    qemu_img("snapshot", "-c", "s", v2)
    p = imgtool("amend", "-o", "size=16M", v2, rc=1)
    assert p.stderr == ("imgtool: Can't resize a v2 image which has "
                        "snapshots\n")
    ref = amend_both(tmp, v2, "compat=1.1,size=16M")
    assert fmt_info(v2) == fmt_info(ref)
    assert qemu_info(v2)["virtual-size"] == 16 * MiB


def test_data_file(tmp):
    data = tmp / "d.raw"
    img = tmp / "a.qcow2"
    mk(img, opts=f"data_file={data},data_file_raw=on")
    qemu_io("-c", "write -P 6 0 1M", img)
    ref = amend_both(tmp, img, "data_file_raw=on")
    assert fmt_info(img) == fmt_info(ref)
    ref = amend_both(tmp, img, "data_file_raw=off")
    assert fmt_info(img) == fmt_info(ref)
    assert fmt_info(img)["data-file-raw"] is False
    # Renaming the data file (qemu-img does not check the new name).
    moved = tmp / "moved.raw"
    shutil.copy(data, moved)
    ref = amend_both(tmp, img, f"data_file={moved}")
    assert fmt_info(img) == fmt_info(ref)
    assert fmt_info(img)["data-file"] == str(moved)
    data.unlink()
    qemu_io("-c", "read -P 6 0 1M", img)
    qemu_check_clean(str(img))
    # An empty name drops it from the header: the image then needs the
    # data file named when it is opened.
    ref = amend_both(tmp, img, "data_file=")
    assert fmt_info(img) == fmt_info(ref)
    assert "data-file" not in fmt_info(img)
    qemu_io("--image-opts", "-c", "read -P 6 0 1M",
            f"driver=qcow2,file.filename={img},data-file.filename={moved}")


def test_luks_key_slot_through_encrypt_options(tmp):
    (tmp / "s0").write_text("secret0")
    (tmp / "s1").write_text("secret1")
    obj = ["--object", f"secret,id=s0,file={tmp / 's0'}",
           "--object", f"secret,id=s1,file={tmp / 's1'}"]
    img = tmp / "e.qcow2"
    # (imgtool creates it: qemu-img's PBKDF calibration takes seconds)
    imgtool("create", "-q", "-f", "qcow2", *obj, "-o",
             "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
             img, "4M")
    qemu_io(*obj, "--image-opts", "-c", "write -P 8 0 64k",
            f"driver=qcow2,file.filename={img},encrypt.key-secret=s0")
    imgtool("amend", *obj, "--image-opts", "-o",
            "encrypt.new-secret=s1,encrypt.state=active,"
            "encrypt.iter-time=10,compat=0.10",
            f"driver=qcow2,file.filename={img},encrypt.key-secret=s0")
    assert fmt_info(img)["compat"] == "0.10"
    qemu_io(*obj, "--image-opts", "-c", "read -P 8 0 64k",
            f"driver=qcow2,file.filename={img},encrypt.key-secret=s1")
    p = qemu_img("check", *obj, "--image-opts",
                 f"driver=qcow2,file.filename={img},encrypt.key-secret=s1")
    assert "No errors" in p.stdout


def test_progress_and_quiet(tmp):
    img = tmp / "a.qcow2"
    mk(img)
    fill(img)
    p = imgtool("amend", "-p", "-o", "refcount_bits=8,compat=1.1", img)
    # (text mode reads the bar's \r as line ends)
    lines = p.stdout.splitlines()
    assert lines[0] == "    (0.00/100%)" and lines[-1] == "    (100.00/100%)"
    p = imgtool("amend", "-p", "-q", "-o", "refcount_bits=16,compat=0.10",
                img)
    assert p.stdout == "" and p.stderr == ""
    qemu_check_clean(str(img))


def test_image_opts_and_cache_modes(tmp):
    img = tmp / "a.qcow2"
    mk(img)
    fill(img)
    want = image_state(img, tmp)
    imgtool("amend", "-t", "none", "-o", "refcount_bits=32", img)
    imgtool("amend", "--image-opts", "-t", "writethrough", "-o",
            "compat=0.10,refcount_bits=16",
            f"driver=qcow2,file.filename={img}")
    qemu_check_clean(str(img))
    assert fmt_info(img)["compat"] == "0.10"
    assert image_state(img, tmp) == want


# ------------------------------------------------------------ power loss

def _cuts(writes, limit=16):
    """Every write when there are few; else the first and last ones (the
    switch and the frees) and an even spread of the rest."""
    if writes <= limit:
        return list(range(1, writes + 1))
    edge = limit // 4
    step = (writes - 2 * edge) / (limit - 2 * edge)
    mid = {edge + 1 + int(i * step) for i in range(limit - 2 * edge)}
    return sorted(set(range(1, edge + 1)) | mid |
                  set(range(writes - edge + 1, writes + 1)))


@pytest.mark.parametrize("create,opts,setting", [
    ("cluster_size=4k", "refcount_bits=64", ("refcount-bits", 16, 64)),
    ("cluster_size=512,refcount_bits=64", "refcount_bits=1",
     ("refcount-bits", 64, 1)),
    ("cluster_size=4k,lazy_refcounts=on", "compat=0.10",
     ("compat", "1.1", "0.10")),
    ("cluster_size=64k,compat=0.10", "compat=1.1,refcount_bits=8",
     ("compat", "0.10", "1.1")),
    # The snapshot table is rewritten with the extra data v3 needs.
    ("cluster_size=4k,compat=0.10,STRIP", "compat=1.1",
     ("compat", "0.10", "1.1")),
    # Both headers are longer than a sector (feature name table): the old
    # one is first rewritten without its table.
    ("cluster_size=64k,data_file=TMP/d.raw", "data_file=TMP/renamed.raw",
     ("data-file", "TMP/d.raw", "TMP/renamed.raw")),
])
def test_power_loss(tmp, create, opts, setting):
    """Power goes after each write of the amend in turn, with the writes
    not yet flushed dropped or torn: the image opens, qemu-img check finds
    at most leaks, the guest data is the same, and the setting is the old
    or the new one."""
    strip = ",STRIP" in create
    create = create.replace(",STRIP", "")
    create, opts = (x.replace("TMP", str(tmp)) for x in (create, opts))
    setting = tuple(x.replace("TMP", str(tmp)) if isinstance(x, str) else x
                    for x in setting)
    base = tmp / "base.qcow2"
    mk(base, "4M")
    qemu_io("-c", "write -P 9 0 4M", base)
    src = tmp / "src.qcow2"
    mk(src, opts=create, backing=base)
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -z 256k 64k",
            "-c", "write -P 3 1M 64k", "-c", "write -z 1M 4k", src)
    if "data_file" in create:
        (tmp / "renamed.raw").symlink_to(tmp / "d.raw")
    elif "refcount_bits=1" not in opts:
        qemu_img("snapshot", "-c", "s1", src)
        qemu_io("-c", "write -z 64k 64k", "-c", "write -P 4 2M 64k", src)
    if strip:
        strip_snapshot_extra(src)
    want = image_state(src, tmp)

    dry = tmp / "dry.qcow2"
    shutil.copy(src, dry)
    st = tmp / "stats"
    imgtool("amend", "-o", opts, "--image-opts",
            faulty_opts(dry, stats_file=st))
    key, old, new = setting
    assert fmt_info(dry)[key] == new
    counts = dict(line.split("=") for line in st.read_text().split())
    writes = int(counts["writes"])
    assert writes >= 1
    seen = set()
    for cut in _cuts(writes):
        # Few writes: tear each in many ways.
        seeds = range(cut * 100, cut * 100 + (12 if writes <= 4 else 1))
        modes = [("drop", 1)] + [("random-part", sd) for sd in seeds]
        if cut == writes:
            # Power goes before the last write is flushed: only a cache
            # that kept it shows the finished amend.
            modes.append(("keep", 1))
        for mode, seed in modes:
            img = tmp / "cut.qcow2"
            shutil.copy(src, img)
            imgtool("amend", "-o", opts, "--image-opts",
                    faulty_opts(img, powerfail_after_writes=cut,
                                powerfail_mode=mode, seed=seed), check=False)
            p = qemu_img("check", "--output=json", img, check=False)
            assert p.returncode in (0, 3), (cut, mode, p.stdout, p.stderr)
            r = json.loads(p.stdout)
            assert not r.get("corruptions") and not r.get("check-errors"), \
                (cut, mode, r)
            got = fmt_info(img)[key]
            assert got in (old, new), (cut, mode, got)
            seen.add(got)
            assert image_state(img, tmp) == want, (cut, mode)
            if p.returncode:
                imgtool("check", "-r", "leaks", img)
                qemu_check_clean(str(img))
    assert seen == {old, new}


@pytest.mark.parametrize("opts", ["refcount_bits=64", "compat=0.10"])
def test_io_error_midway(tmp, opts):
    """A write failing anywhere in the amend: one error line, exit 1, and
    an image that checks without corruption and reads the same; a failed
    width change gives back what it had allocated."""
    base = tmp / "base.qcow2"
    mk(base, "4M")
    qemu_io("-c", "write -P 9 0 4M", base)
    src = tmp / "src.qcow2"
    mk(src, opts="cluster_size=512", backing=base)
    qemu_io("-c", "write -P 1 0 512k", "-c", "write -z 64k 64k", src)
    want = image_state(src, tmp)
    st = tmp / "stats"
    dry = tmp / "dry.qcow2"
    shutil.copy(src, dry)
    imgtool("amend", "-o", opts, "--image-opts",
            faulty_opts(dry, stats_file=st))
    counts = dict(line.split("=") for line in st.read_text().split())
    writes = int(counts["writes"])
    for n in sorted({1, 2, writes // 2, writes - 1}):
        img = tmp / "e.qcow2"
        shutil.copy(src, img)
        p = imgtool("amend", "-o", opts, "--image-opts",
                    faulty_opts(img, fail_write=n), rc=1)
        assert len(p.stderr.splitlines()) == 1, p.stderr
        assert "Input/output error" in p.stderr
        c = qemu_img("check", "--output=json", img, check=False)
        r = json.loads(c.stdout)
        assert c.returncode in (0, 3) and not r.get("corruptions"), (n, r)
        if "refcount" in opts and n <= 2:
            assert c.returncode == 0, (n, r)   # allocations given back
        assert image_state(img, tmp) == want, n


def test_refcount_bits_keeps_bitmaps(tmp):
    img = tmp / "a.qcow2"
    mk(img, opts="cluster_size=4k")
    qemu_io("-c", "write -P 1 0 1M", img)
    qemu_img("bitmap", "--add", img, "b0")
    qemu_io("-c", "write -P 2 0 64k", img)
    want = qemu_info(img)["format-specific"]["data"]["bitmaps"]
    ref = amend_both(tmp, img, "refcount_bits=8")
    qemu_check_clean(str(img))
    assert fmt_info(img) == fmt_info(ref)
    assert fmt_info(img)["bitmaps"] == want
    # The bitmap still loads: convert --bitmaps copies it.
    out = tmp / "out.qcow2"
    qemu_img("convert", "--bitmaps", "-O", "qcow2", img, out)
    qemu_check_clean(str(out))
    assert fmt_info(out)["bitmaps"] == want


def test_downgrade_many_snapshots_sharing_tables(tmp):
    """Zero clusters spread over several snapshots' L2 tables, some shared
    by many L1s: each snapshot reads as before."""
    base = tmp / "base.qcow2"
    mk(base, "4M", opts="cluster_size=4k")
    qemu_io("-c", "write -P 7 0 4M", base)
    img = tmp / "a.qcow2"
    mk(img, opts="cluster_size=4k", tool=imgtool, backing=base)
    for i in range(1, 7):
        qemu_io("-c", f"write -z {i * 64}k 8k", "-c",
                f"write -P {i} {i * 128}k 4k", "-c",
                f"write -z -u {i * 512}k 4k", img)
        qemu_img("snapshot", "-c", f"s{i}", img)
    want = image_state(img, tmp)
    imgtool("amend", "-o", "compat=0.10", img)
    qemu_check_clean(str(img))
    assert fmt_info(img)["compat"] == "0.10"
    assert image_state(img, tmp) == want


def test_downgrade_encrypted_zero_clusters(tmp):
    """A LUKS overlay's zero clusters become clusters of encrypted zeroes
    (qemu-img 7.2 writes raw zeroes, which read back as noise)."""
    (tmp / "s0").write_text("secret0")
    obj = ["--object", f"secret,id=s0,file={tmp / 's0'}"]
    base = tmp / "base.qcow2"
    mk(base, "4M")
    qemu_io("-c", "write -P 7 0 4M", base)
    img = tmp / "e.qcow2"
    imgtool("create", "-q", "-f", "qcow2", *obj, "-b", base, "-F", "qcow2",
            "-o", "encrypt.format=luks,encrypt.key-secret=s0,"
            "encrypt.iter-time=10", img)
    opts = f"driver=qcow2,file.filename={img},encrypt.key-secret=s0"
    qemu_io(*obj, "--image-opts", "-c", "write -P 1 0 128k",
            "-c", "write -z 0 64k", "-c", "write -z -u 1M 64k", opts)
    imgtool("amend", *obj, "--image-opts", "-o", "compat=0.10", opts)
    assert fmt_info(img)["compat"] == "0.10"
    qemu_io(*obj, "--image-opts", "-c", "read -P 0 0 64k",
            "-c", "read -P 1 64k 64k", "-c", "read -P 0 1M 64k",
            "-c", "read -P 7 2M 64k", opts)
    p = qemu_img("check", *obj, "--image-opts", opts)
    assert "No errors" in p.stdout
