"""Allocating writes with O_DIRECT (-t none): fresh clusters get blocks that
read as zero (a fallocate) before their data lands, so many threads write
into them at once; the unwritten rest of every cluster must still read as
zero and the image must match what qemu-img makes of the same requests.
The file protocol's zero writes past the end of the file grow it without
ever shrinking it, which concurrent allocating writers depend on: an
ftruncate to a size computed before a neighbour grew the file further
would cut off the neighbour's data.
"""
import os

import pytest

from conftest import imgtool, io_args, qemu_check_clean, qemu_img, qemu_io

KiB = 1024
MiB = 1024 * KiB


def bench(tool, path, count, step, pattern, cache="none", depth=64):
    args = ["bench", "-w", "-t", cache, "-c", str(count), "-d", str(depth),
            "-s", "4096", "-S", str(step), f"--pattern={pattern}",
            "-f", "qcow2", str(path)]
    if tool == "qemu-img":
        if cache == "none":
            args.insert(1, "-n")
        return qemu_img(*args)
    return imgtool(*args)


def same_image(a, b):
    r = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(a),
                 str(b), check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)


@pytest.mark.parametrize("opts", ["cluster_size=64k", "cluster_size=4k",
                                  "cluster_size=256k,extended_l2=on",
                                  "compat=0.10"])
def test_scattered_alloc_writes_match_qemu(tmp, opts):
    size = 32 * MiB
    blocks = size // 4096
    step = 4096 * 4093          # prime: every block at most once
    count = blocks // 2         # half the blocks: most clusters part-written
    mine, ref = tmp / "mine.qcow2", tmp / "ref.qcow2"
    for p in (mine, ref):
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(p), str(size))
    bench("imgtool", mine, count, step, 0xab)
    bench("qemu-img", ref, count, step, 0xab)
    qemu_check_clean(str(mine))
    same_image(mine, ref)
    # the blocks bench did not write read as zero in qemu-io too
    first_unwritten = (count * (step // 4096)) % blocks * 4096
    out = qemu_io("-f", "qcow2", "-r", "-c",
                  f"read -P 0 {first_unwritten} 4096",
                  "-c", "read -P 0xab 0 4096", str(mine)).stdout
    assert "verification failed" not in out, out


def test_alloc_writes_then_overwrites_keep_every_byte(tmp):
    # a second pass writes the other half of the blocks, into clusters the
    # first pass allocated (their fallocated rest), with another pattern
    size = 16 * MiB
    blocks = size // 4096
    step = 4096 * 1021
    mine, ref = tmp / "mine.qcow2", tmp / "ref.qcow2"
    for p in (mine, ref):
        qemu_img("create", "-q", "-f", "qcow2", str(p), str(size))
    for tool, p in (("imgtool", mine), ("qemu-img", ref)):
        bench(tool, p, blocks // 2, step, 0x11)
        bench(tool, p, blocks, step * 3, 0x22)   # all blocks, other order
    qemu_check_clean(str(mine))
    same_image(mine, ref)


def test_page_cache_alloc_writes_stay_sparse(tmp):
    # through the page cache nothing is fallocated: a 4 KiB write into a
    # fresh 2 MiB cluster takes a few KiB of disk, not the cluster
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M",
             str(img), str(64 * MiB))
    before = os.stat(img).st_blocks * 512
    imgtool("io", "-f", "qcow2", *io_args(["write -P 0xab 4096 4096"]),
            str(img))
    grown = os.stat(img).st_blocks * 512 - before
    assert grown < 2 * MiB + MiB, grown      # the L2 table and some data
    qemu_check_clean(str(img))


def test_direct_write_into_fresh_cluster_reads_zero_around(tmp):
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), str(16 * MiB))
    imgtool("io", "-t", "none", "-f", "qcow2",
            *io_args(["write -P 0xab 8k 4k", "write -P 0xcd 1M 4k"]),
            str(img))
    qemu_check_clean(str(img))
    out = qemu_io("-f", "qcow2", "-r",
                  *io_args(["read -P 0 0 8k", "read -P 0xab 8k 4k",
                            "read -P 0 12k 52k", "read -P 0xcd 1M 4k",
                            "read -P 0 1028k 60k"]), str(img)).stdout
    assert "verification failed" not in out, out
