"""qcow2 driver read/write: random workloads through `imgtool io` must leave
images that qemu-img checks clean and whose guest content equals the same
workload run by qemu-io on an image QEMU created with the same options.
"""
import json
import random
import zlib

import pytest

from conftest import (imgtool, io_args, merged_map, poke_be, qemu_check_clean,
                      qemu_img, qemu_io, random_io, read_be, same_content)

MiB = 1024 * 1024

# (create options, virtual size) covering compat, cluster sizes 512..2M,
# refcount widths 1..64, lazy refcounts, extended L2 and data files.
CONFIGS = [
    ("compat=1.1", 64 * MiB),
    ("compat=0.10", 64 * MiB),
    ("cluster_size=512", 8 * MiB),
    ("cluster_size=512,refcount_bits=64", 8 * MiB),
    ("cluster_size=512,refcount_bits=1", 8 * MiB),
    ("cluster_size=4k,refcount_bits=2", 16 * MiB),
    ("cluster_size=4k,refcount_bits=4", 16 * MiB),
    ("cluster_size=16k,refcount_bits=8", 32 * MiB),
    ("refcount_bits=32", 64 * MiB),
    ("cluster_size=2M", 64 * MiB),
    ("lazy_refcounts=on", 64 * MiB),
    ("extended_l2=on", 64 * MiB),
    ("extended_l2=on,cluster_size=16k", 16 * MiB),
    ("extended_l2=on,cluster_size=2M", 64 * MiB),
    ("compat=0.10,cluster_size=4k", 16 * MiB),
]


def workload(seed, size, n=40):
    """Random data, zero (with and without unmap) writes and discards, a
    fifth of them up to a quarter of the disk long, the rest up to
    256 KiB."""
    def length(r):
        maxlen = size // 4 if r.random() < 0.2 else 256 * 1024
        return r.randrange(1, max(2, maxlen // 512)) * 512
    return random_io(random.Random(seed), size, n,
                     ["data"] * 3 + ["zero", "zero-unmap", "discard"], length)


def run_both(tmp, opts, size, ops, data_file=False):
    ours = tmp / "ours.qcow2"
    ref = tmp / "ref.qcow2"
    o_ours, o_ref = opts, opts
    if data_file:
        o_ours += f",data_file={tmp / 'ours.data'}"
        o_ref += f",data_file={tmp / 'ref.data'}"
    imgtool("create", "-q", "-f", "qcow2", "-o", o_ours, ours, str(size))
    qemu_img("create", "-q", "-f", "qcow2", "-o", o_ref, ref, str(size))
    imgtool("io", *io_args(ops), ours)
    qemu_io("-f", "qcow2", *io_args(ops), ref)
    return ours, ref


@pytest.mark.parametrize("opts,size", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_random_workload_matches_qemu(tmp, opts, size):
    ops = workload(zlib.crc32(opts.encode()), size)
    ours, ref = run_both(tmp, opts, size, ops)
    qemu_check_clean(str(ours))
    assert same_content(str(ours), str(ref), "qcow2", "qcow2"), ops
    if "extended_l2" not in opts:
        # Same allocation status as QEMU: zero flags, discards and
        # deallocation follow its rules.  (With subclusters QEMU leaves
        # holes for zero copy-on-write, which map shows differently.)
        assert merged_map(str(ours)) == merged_map(str(ref))


def test_data_file_workload(tmp):
    ops = workload(7, 32 * MiB)
    ours, ref = run_both(tmp, "compat=1.1", 32 * MiB, ops, data_file=True)
    qemu_check_clean(str(ours))
    assert same_content(str(ours), str(ref), "qcow2", "qcow2")


def test_data_file_raw_stays_raw(tmp):
    img = tmp / "r.qcow2"
    data = tmp / "r.raw"
    imgtool("create", "-q", "-f", "qcow2", "-o",
            f"data_file={data},data_file_raw=on", img, "16M")
    imgtool("io", "-c", "write -P 0x5a 1M 3M", "-c", "write -z 2M 64k", img)
    qemu_check_clean(str(img))
    # The data file alone is the guest content.
    assert same_content(str(img), str(data), "qcow2", "raw")
    qemu_io("-f", "raw", "-c", "read -P 0x5a 1M 1M", "-c",
            "read -P 0 2M 64k", data)


def test_qemu_written_reads_back(tmp):
    for opts in ["compat=1.1", "compat=0.10", "extended_l2=on",
                 "cluster_size=4k,refcount_bits=8"]:
        img = tmp / "q.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, img, "16M")
        qemu_io("-c", "write -P 0x33 0 100k", "-c", "write -P 0x44 1M 1536k",
                "-c", "write -z 1200k 64k", "-c", "discard 2M 64k", img)
        imgtool("io", "-c", "read -P 0x33 0 100k", "-c", "read -P 0 100k 924k",
                "-c", "read -P 0x44 1M 176k", "-c", "read -P 0 1200k 64k",
                "-c", "read -P 0x44 1264k 784k", "-c", "read -P 0 2M 64k",
                "-c", "read -P 0x44 2112k 448k", img)


def test_backing_cow_partial_clusters(tmp):
    for opts in ["compat=1.1", "compat=0.10", "extended_l2=on",
                 "cluster_size=4k"]:
        base = tmp / "base.qcow2"
        top = tmp / "top.qcow2"
        ref = tmp / "ref.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", base, "8M")
        qemu_io("-c", "write -P 0xaa 0 8M", base)
        imgtool("create", "-q", "-f", "qcow2", "-o", opts, "-b", base.name,
                "-F", "qcow2", top)
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", base.name,
                 "-F", "qcow2", ref)
        ops = ["write -P 0x01 1000 3000", "write -P 0x02 70000 512",
               "write -z 200k 10k", "write -z 1M 128k", "discard 2M 192k",
               "write -P 0x03 3M 100", "write -z -u 4M 64k"]
        imgtool("io", *io_args(ops), top)
        qemu_io("-f", "qcow2", *io_args(ops), ref)
        qemu_check_clean(str(top))
        assert same_content(str(top), str(ref)), opts
        # Unwritten parts of a COWed cluster still show the backing data.
        imgtool("io", "-c", "read -P 0xaa 0 1000", "-c",
                "read -P 0x01 1000 3000", "-c", "read -P 0xaa 4000 1000",
                top)


def test_overwrite_and_shrink_grow(tmp):
    img = tmp / "a.qcow2"
    ref = tmp / "b.qcow2"
    imgtool("create", "-q", "-f", "qcow2", img, "8M")
    qemu_img("create", "-q", "-f", "qcow2", ref, "8M")
    ops = ["write -P 0x11 0 8M", "write -P 0x22 4k 8k", "write -P 0x33 7M 1M"]
    imgtool("io", *io_args(ops), img)
    qemu_io(*io_args(ops), ref)
    assert same_content(str(img), str(ref))
    qemu_check_clean(str(img))
    # Whole-image overwrite allocates nothing new.
    before = qemu_check_clean(str(img))["image-end-offset"]
    imgtool("io", "-c", "write -P 0x44 0 8M", img)
    assert qemu_check_clean(str(img))["image-end-offset"] == before


# Header fields qemu-img refuses to open an image with: (offset, width,
# the new value or a function of the old one).  Encryption methods AES (1)
# and LUKS (2) are known (tests/test_qcow2_luks.py); one beyond them is
# refused.
REFUSED_HEADERS = {
    "unknown-incompatible-feature": (72, 8, lambda v: v | 1 << 20),
    "encryption-method-3": (32, 4, 3),
    "huge-l1-size": (36, 4, 0x7fffffff),
}


@pytest.mark.parametrize("case", sorted(REFUSED_HEADERS))
def test_refused_header(tmp, case):
    """The one error line qemu-img prints, word for word."""
    img = tmp / "h.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke_be(img, *REFUSED_HEADERS[case])
    theirs = qemu_img("info", img, check=False)
    ours = imgtool("info", img, check=False)
    assert theirs.returncode != 0 and ours.returncode != 0
    assert ours.stderr.count("\n") == 1
    assert ours.stderr == theirs.stderr.replace("qemu-img: ", "imgtool: ", 1)


def test_unknown_feature_named_from_table(tmp):
    img = tmp / "f.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke_be(img, 72, 8, lambda v: v | 1 << 5)
    with open(img, "r+b") as f:
        # Rename the "extended L2 entries" (bit 4) table entry to bit 5.
        head = bytearray(f.read(4096))
        i = head.find(b"extended L2 entries")
        assert i > 0
        head[i - 1] = 5
        head[i:i + 19] = b"frobnicated widgets"
        f.seek(0)
        f.write(head)
    p = imgtool("info", img, check=False)
    assert p.returncode != 0
    assert "Unsupported qcow2 feature(s): frobnicated widgets" in p.stderr


def test_corrupt_bit_refuses_write(tmp):
    img = tmp / "c.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke_be(img, 72, 8, lambda v: v | 2)
    p = imgtool("io", "-c", "write 0 512", img, check=False)
    assert p.returncode != 0
    assert "corrupt" in p.stderr
    imgtool("info", img)


def test_snapshot_clusters_are_copied_not_overwritten(tmp):
    img = tmp / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "16M")
    qemu_io("-c", "write -P 1 0 4M", img)
    qemu_img("snapshot", "-c", "snap1", img)
    imgtool("io", "-c", "write -P 2 1M 1M", "-c", "write -P 3 100k 1k",
            "-c", "discard 3M 1M", "-c", "write -z -u 2M 64k", img)
    qemu_check_clean(str(img))
    qemu_io("-c", "read -P 2 1M 1M", "-c", "read -P 3 100k 1k",
            "-c", "read -P 0 3M 1M", "-c", "read -P 0 2M 64k", img)
    assert "snap1" in qemu_img("snapshot", "-l", img).stdout
    # The snapshot still holds the old data.
    snap = tmp / "snap.raw"
    qemu_img("convert", "-l", "snap1", "-O", "raw", img, snap)
    qemu_io("-f", "raw", "-c", "read -P 1 0 4M", "-c", "read -P 0 4M 12M",
            snap)


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_compressed_clusters_read_and_cow(tmp, ctype):
    src = tmp / "src.raw"
    with open(src, "wb") as f:
        for i in range(64):
            f.write((b"cluster %04d " % i) * 5000)
    img, ref = tmp / "c.qcow2", tmp / "r.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o",
             f"compression_type={ctype}", src, img)
    assert same_content(str(img), str(src), "qcow2", "raw")
    imgtool("convert", "-O", "raw", img, tmp / "out.raw")
    assert (tmp / "out.raw").read_bytes() == src.read_bytes()
    # Partial writes into compressed clusters copy them first.
    import shutil
    shutil.copy(img, ref)
    ops = ["write -P 9 10k 1k", "write -z 1M 64k", "discard 1088k 64k",
           "write -P 8 3000k 300k"]
    imgtool("io", *io_args(ops), img)
    qemu_io(*io_args(ops), ref)
    qemu_check_clean(str(img))
    assert same_content(str(img), str(ref))


def test_unknown_autoclear_bits_cleared_on_write(tmp):
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke_be(img, 88, 8, (1 << 40) | (1 << 3))
    imgtool("info", img)   # read-only: leaves them alone
    assert read_be(img, 88, 8) == (1 << 40) | (1 << 3)
    imgtool("io", "-c", "write -P 1 0 512", img)
    assert read_be(img, 88, 8) == 0
    qemu_check_clean(str(img))


def test_lazy_refcounts_dirty_image_repaired_on_open(tmp):
    img = tmp / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img,
             "64M")
    # qemu-io's abort leaves the dirty bit set and refcounts stale.
    qemu_io("-c", "write -P 7 0 1M", "-c", "write -P 8 10M 1M", "-c",
            "abort", img, check=False)
    assert read_be(img, 72, 8) & 1
    imgtool("io", "-c", "write -P 9 20M 1M", "-c", "read -P 7 0 1M",
            "-c", "read -P 8 10M 1M", img)
    assert read_be(img, 72, 8) & 1 == 0
    qemu_check_clean(str(img))


def test_lazy_refcounts_clean_after_close(tmp):
    img = tmp / "l.qcow2"
    imgtool("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img,
            "16M")
    imgtool("io", "-c", "write -P 1 0 5M", "-c", "discard 1M 1M",
            "-c", "write -z -u 3M 1M", img)
    assert read_be(img, 72, 8) & 1 == 0
    qemu_check_clean(str(img))


def test_block_status_runs(tmp):
    img = tmp / "m.qcow2"
    imgtool("create", "-q", "-f", "qcow2", img, "64M")
    imgtool("io", "-c", "write -P 1 0 10M", "-c", "write -z 20M 4M",
            "-c", "write -P 2 30M 64k", img)
    theirs = json.loads(qemu_img("map", "--output=json", img).stdout)
    ours = json.loads(imgtool("map", "--output=json", img).stdout)
    assert ours == theirs
