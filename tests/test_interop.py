"""Images made by QEMU read back identically through imgtool.

qemu-img creates and qemu-io writes images with every qcow2 feature we
claim (compat 0.10/1.1, cluster sizes 512..2M, every refcount width, lazy
refcounts (also left dirty by a killed writer), extended L2, external data
files, compression, zero clusters, discards, backing chains with relative
names in other directories).  For each one:

 - `imgtool convert -O raw` is byte-equal to `qemu-img convert -O raw`;
 - `imgtool info --output=json` has the same keys and values as
   `qemu-img info --output=json` (actual-size aside, which depends on how
   the host file system allocates), also with --backing-chain.
"""
import filecmp
import json
import os

import pytest

from conftest import imgtool, io_args, qemu_img, qemu_io

K = 1024
M = 1024 * 1024


# --- helpers ----------------------------------------------------------------

def workload(size, cluster):
    """qemu-io commands that exercise allocation, partial clusters, zero
    clusters (with and without unmap), discards and the image's end."""
    c = cluster
    return [
        f"write -P 0x11 0 {3 * c + 512}",
        f"write -P 0x22 {5 * c + 100} 3000",
        f"write -P 0x33 {size - 2 * c} {2 * c}",
        f"write -P 0x34 {size - 700} 300",
        f"write -z {8 * c} {2 * c}",
        f"write -P 0x44 {12 * c} {4 * c}",
        f"write -z -u {13 * c} {2 * c}",
        f"write -z {14 * c + 1000} 5000",
        f"write -P 0x55 {20 * c} {4 * c}",
        f"discard {21 * c} {2 * c}",
        f"discard {23 * c + 512} {c}",
        f"write -P 0x66 {size // 2 + 4097} {min(c, 64 * K) * 3 + 17}",
    ]


def qemu_write(path, cmds, fmt="qcow2", rc=0):
    return qemu_io("-f", fmt, *io_args(cmds), path, rc=rc)


def first_difference(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x, y = fa.read(M), fb.read(M)
            if x != y:
                for i in range(min(len(x), len(y))):
                    if x[i] != y[i]:
                        return off + i
                return off + min(len(x), len(y))
            if not x:
                return None
            off += len(x)


def assert_reads_same(img, tmp, fmt="qcow2", extra=()):
    """imgtool convert -O raw == qemu-img convert -O raw, byte for byte."""
    q = os.path.join(tmp, "qemu-read.raw")
    i = os.path.join(tmp, "imgtool-read.raw")
    for p in (q, i):
        if os.path.exists(p):
            os.unlink(p)
    qemu_img("convert", "-f", fmt, "-O", "raw", *extra, img, q)
    imgtool("convert", "-f", fmt, "-O", "raw", *extra, img, i)
    if not filecmp.cmp(q, i, shallow=False):
        raise AssertionError(
            f"{img}: imgtool reads different content than qemu-img "
            f"(sizes {os.path.getsize(i)}/{os.path.getsize(q)}, first "
            f"difference at byte {first_difference(q, i)})")


def strip_actual_size(j):
    if isinstance(j, list):
        return [strip_actual_size(x) for x in j]
    if isinstance(j, dict):
        return {k: strip_actual_size(v) for k, v in j.items()
                if k != "actual-size"}
    return j


def info_pair(img, *extra):
    q = json.loads(qemu_img("info", "--output=json", *extra, img).stdout)
    i = json.loads(imgtool("info", "--output=json", *extra, img).stdout)
    return strip_actual_size(q), strip_actual_size(i)


def assert_info_same(img, *extra):
    q, i = info_pair(img, *extra)
    assert i == q, (f"imgtool info --output=json {' '.join(extra)} {img} differs "
                    f"from qemu-img:\nqemu-img: {json.dumps(q, indent=1)}\n"
                    f"imgtool:  {json.dumps(i, indent=1)}")


def assert_check_same(img, fmt="qcow2"):
    q = qemu_img("check", "-f", fmt, img, check=False)
    i = imgtool("check", "-f", fmt, img, check=False)
    assert i.returncode == q.returncode, (
        f"check {img}: imgtool exit {i.returncode}, qemu-img exit "
        f"{q.returncode}\nimgtool: {i.stdout}{i.stderr}\nqemu-img: {q.stdout}")


# --- every qcow2 feature, written by qemu-io --------------------------------

FEATURES = [
    # id, -o options, virtual size, cluster size
    ("v2", "compat=0.10", 8 * M, 64 * K),
    ("v2-c4k", "compat=0.10,cluster_size=4k", 4 * M, 4 * K),
    ("v3", "compat=1.1", 8 * M, 64 * K),
    ("c512", "cluster_size=512", 2 * M, 512),
    ("c4k", "cluster_size=4k", 4 * M, 4 * K),
    ("c2M", "cluster_size=2M", 128 * M, 2 * M),
    ("refcount1", "refcount_bits=1", 8 * M, 64 * K),
    ("refcount2", "refcount_bits=2", 8 * M, 64 * K),
    ("refcount4", "refcount_bits=4", 8 * M, 64 * K),
    ("refcount8", "refcount_bits=8", 8 * M, 64 * K),
    ("refcount32", "refcount_bits=32", 8 * M, 64 * K),
    ("refcount64", "refcount_bits=64,cluster_size=4k", 4 * M, 4 * K),
    ("lazy", "lazy_refcounts=on", 8 * M, 64 * K),
    ("extl2", "extended_l2=on", 8 * M, 64 * K),
    ("extl2-c16k", "extended_l2=on,cluster_size=16k", 4 * M, 16 * K),
    ("extl2-c2M", "extended_l2=on,cluster_size=2M", 128 * M, 2 * M),
    ("zstd", "compression_type=zstd", 8 * M, 64 * K),
    ("prealloc-metadata", "preallocation=metadata", 8 * M, 64 * K),
    ("prealloc-falloc", "preallocation=falloc,cluster_size=4k", 4 * M, 4 * K),
    # QEMU resolves a relative data_file name against the current
    # directory (not the image's), so name it absolutely: {tmp} is the
    # test's directory.
    ("data-file", "data_file={tmp}/ext.data", 8 * M, 64 * K),
    ("data-file-raw", "data_file={tmp}/ext.data,data_file_raw=on", 8 * M, 64 * K),
    ("data-file-extl2", "data_file={tmp}/ext.data,extended_l2=on", 8 * M, 64 * K),
]


@pytest.mark.parametrize("opts,size,cluster", [f[1:] for f in FEATURES],
                         ids=[f[0] for f in FEATURES])
def test_qemu_written_image_reads_same(tmp, opts, size, cluster):
    img = str(tmp / "img.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts.format(tmp=tmp), img, str(size))
    qemu_write(img, workload(size, cluster))
    assert_reads_same(img, str(tmp))
    assert_info_same(img)
    assert_check_same(img)


@pytest.mark.parametrize("opts", ["compression_type=zlib",
                                  "compression_type=zstd",
                                  "compression_type=zlib,cluster_size=4k",
                                  "compression_type=zstd,cluster_size=2M,compat=1.1"],
                         ids=["zlib", "zstd", "zlib-c4k", "zstd-c2M"])
def test_compressed_image_reads_same(tmp, opts):
    src = tmp / "src.raw"
    data = bytearray()
    for i in range(6 * 64):
        # Compressible text, incompressible noise and zeroes, 16k at a time.
        if i % 3 == 0:
            data += ((b"imgtool %06d " % i) * (16 * K // 15 + 1))[:16 * K]
        elif i % 3 == 1:
            data += os.urandom(16 * K)
        else:
            data += bytes(16 * K)
    src.write_bytes(bytes(data))
    img = str(tmp / "c.qcow2")
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, str(src), img)
    # Overwrite part of a compressed cluster: the rest stays compressed.
    qemu_write(img, ["write -P 0x77 4096 512"])
    data[4096:4608] = b"\x77" * 512
    assert_reads_same(img, str(tmp))
    with open(tmp / "imgtool-read.raw", "rb") as f:
        if f.read() != bytes(data):
            raise AssertionError("compressed image does not read back what was written")
    assert_info_same(img)


def test_compat_v2_zero_writes_and_discard_over_backing(tmp):
    """compat=0.10 has no zero flag: write -z must write zeroes and a discard
    over a backing file keeps the data; both read back as QEMU reads them."""
    base = str(tmp / "base.qcow2")
    top = str(tmp / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", base, "4M")
    qemu_write(base, ["write -P 0xaa 0 4M"])
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2",
             "-F", "qcow2", top)
    qemu_write(top, ["write -P 0x11 0 1M", "write -z 64k 128k",
                     "discard 512k 128k", "write -z -u 2M 64k"])
    assert_reads_same(top, str(tmp))
    assert_info_same(top, "--backing-chain")


# --- lazy refcounts left dirty ----------------------------------------------

def make_dirty_lazy_image(tmp):
    img = str(tmp / "dirty.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "8M")
    qemu_write(img, ["write -P 0x5a 0 128k"])
    # Killed before close: the dirty bit stays set and the refcounts of the
    # clusters allocated in this run are never written.
    p = qemu_io("-f", "qcow2", "-c", "write -P 0x5b 1M 192k",
                "-c", "write -P 0x5c 4M 64k", "-c", "sigraise 9", img, check=False)
    assert p.returncode == -9, p
    assert qemu_info(img)["dirty-flag"] is True
    return img


def qemu_info(img):
    return json.loads(qemu_img("info", "--output=json", img).stdout)


def test_dirty_lazy_refcounts_image_reads_same(tmp):
    img = make_dirty_lazy_image(tmp)
    assert_reads_same(img, str(tmp))
    assert_info_same(img)


def test_dirty_lazy_refcounts_image_repaired_on_write(tmp):
    """Opening a dirty image for writing repairs the refcounts first (as
    QEMU does); afterwards the image is clean and holds everything."""
    img = make_dirty_lazy_image(tmp)
    imgtool("io", "-f", "qcow2", "-c", "write -P 0x5d 2M 64k", img)
    q = qemu_img("check", "-f", "qcow2", img, check=False)
    assert q.returncode == 0, q.stdout + q.stderr
    assert qemu_info(img)["dirty-flag"] is False
    qemu_io("-f", "qcow2", "-c", "read -P 0x5a 0 128k", "-c", "read -P 0x5b 1M 192k",
            "-c", "read -P 0x5d 2M 64k", "-c", "read -P 0x5c 4M 64k", img)


# --- backing chains ---------------------------------------------------------

def test_three_level_chain(tmp):
    base, mid, top = (str(tmp / n) for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k",
             base, "16M")
    qemu_write(base, ["write -P 0x01 0 16M"])
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "base.qcow2",
             "-F", "qcow2", mid)
    qemu_write(mid, ["write -P 0x02 1M 3M", "write -z 2M 64k", "write -P 0x03 5000 7000"])
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
             "-b", "mid.qcow2", "-F", "qcow2", top)
    qemu_write(top, ["write -P 0x04 1536k 1M", "write -z 3M 512k", "discard 8M 1M",
                     "write -z -u 12M 100k", f"write -P 0x05 {16 * M - 4096} 4096"])
    assert_reads_same(top, str(tmp))
    assert_reads_same(mid, str(tmp))
    assert_info_same(top)
    assert_info_same(top, "--backing-chain")
    assert_info_same(mid, "--backing-chain")


@pytest.mark.parametrize("base_size,top_size", [(4 * M, 8 * M), (8 * M, 4 * M)],
                         ids=["overlay-larger", "overlay-smaller"])
def test_backing_of_different_size(tmp, base_size, top_size):
    base, top = str(tmp / "base.qcow2"), str(tmp / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, str(base_size))
    qemu_write(base, [f"write -P 0x31 0 {base_size}"])
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             top, str(top_size))
    qemu_write(top, [f"write -P 0x32 {top_size - 64 * K} 64k"])
    assert_reads_same(top, str(tmp))
    assert_info_same(top, "--backing-chain")


def test_raw_backing_file(tmp):
    base, top = str(tmp / "base.raw"), str(tmp / "top.qcow2")
    with open(base, "wb") as f:
        f.write(os.urandom(3 * M + 512))
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top, "4M")
    qemu_write(top, ["write -P 0x41 1M 4096", "write -z 2M 64k"])
    assert_reads_same(top, str(tmp))
    assert_reads_same(base, str(tmp), fmt="raw")
    assert_info_same(top, "--backing-chain")
    assert_info_same(base)


def test_relative_backing_in_another_directory(tmp, monkeypatch):
    """Relative backing names resolve against the overlay's directory, not
    the current one, whatever directory the tool runs in."""
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    (tmp / "c").mkdir()
    base = str(tmp / "a" / "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_write(base, ["write -P 0x61 0 4M"])
    qemu_img("create", "-q", "-f", "qcow2", "-b", "../a/base.qcow2", "-F", "qcow2",
             str(tmp / "b" / "mid.qcow2"))
    qemu_write(str(tmp / "b" / "mid.qcow2"), ["write -P 0x62 1M 1M"])
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
             str(tmp / "b" / "top.qcow2"))
    qemu_write(str(tmp / "b" / "top.qcow2"), ["write -P 0x63 3M 64k"])

    # From an unrelated directory, with a relative and an absolute name.
    monkeypatch.chdir(tmp / "c")
    for name in ("../b/top.qcow2", str(tmp / "b" / "top.qcow2")):
        assert_reads_same(name, str(tmp))
        assert_info_same(name)
        assert_info_same(name, "--backing-chain")


def test_backing_without_format_is_probed(tmp):
    """An overlay that does not record its backing format (old images)."""
    base, top = str(tmp / "base.qcow2"), str(tmp / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_write(base, ["write -P 0x71 0 2M"])
    # qemu-img 7.2 no longer creates such images: make one with a format,
    # then turn the backing-format header extension into an unknown one
    # (which readers skip).
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    with open(top, "r+b") as f:
        head = f.read(64 * K)
        at = head.find(bytes.fromhex("e2792aca"))
        assert at > 0
        f.seek(at)
        f.write(bytes.fromhex("7e57e571"))
    assert "backing-filename-format" not in qemu_info(top)
    qemu_write(top, ["write -P 0x72 1M 64k"])
    assert_reads_same(top, str(tmp))
    assert_info_same(top, "--backing-chain")


def test_raw_image_info(tmp):
    img = str(tmp / "disk.raw")
    qemu_img("create", "-q", "-f", "raw", img, "5M")
    qemu_write(img, ["write -P 0x21 1M 1M"], fmt="raw")
    assert_reads_same(img, str(tmp), fmt="raw")
    assert_info_same(img)
    assert_info_same(img, "-f", "raw")


def test_info_json_key_order_matches(tmp):
    """Scripts should not care, but diffs of the two outputs should be
    empty: keys come out in qemu-img's order."""
    base, top = str(tmp / "base.qcow2"), str(tmp / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp}/top.data",
             "-b", "base.qcow2", "-F", "qcow2", top)
    q = qemu_img("info", "--output=json", "--backing-chain", top).stdout
    i = imgtool("info", "--output=json", "--backing-chain", top).stdout

    def keys(j, path=""):
        if isinstance(j, dict):
            out = [path + "." + k for k in j if k != "actual-size"]
            for k, v in j.items():
                out += keys(v, path + "." + k)
            return out
        if isinstance(j, list):
            return [x for n, v in enumerate(j) for x in keys(v, f"{path}[{n}]")]
        return []
    assert keys(json.loads(i)) == keys(json.loads(q))
