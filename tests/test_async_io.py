"""Asynchronous requests end to end: `imgtool bench -d` submits from one
thread through the block layer's asynchronous API, so its writes go down
every submit path there is (io_uring for O_DIRECT files, qcow2's
overwrite-in-place fast path, worker threads for allocating writes) and
must land exactly where the synchronous path would put them: checked with
qemu-io and qemu-img check.
"""
import pytest

from conftest import imgtool, qemu_img, qemu_io

MiB = 1 << 20


def bench_write(img, fmt, pattern, count, step, cache, depth=32):
    imgtool("bench", "-f", fmt, "-w", "-t", cache, "-d", str(depth),
            "-c", str(count), "-s", "4k", "-S", str(step),
            f"--pattern={pattern}", img)


@pytest.mark.parametrize("cache", ["none", "writeback"])
@pytest.mark.parametrize("prealloc", ["off", "metadata"])
def test_async_qcow2_writes_land_where_qemu_reads_them(tmp_path, cache,
                                                       prealloc):
    img = tmp_path / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             f"preallocation={prealloc}", img, "16M")
    # Every other 4k block of the first 8 MiB, twice: the second pass
    # overwrites clusters the first allocated (the in-place fast path).
    bench_write(img, "qcow2", 0x11, 1024, 8192, cache)
    bench_write(img, "qcow2", 0x5a, 1024, 8192, cache)
    qemu_img("check", img)
    for off in (0, 8192, 4 * MiB, 8 * MiB - 8192):
        qemu_io("-f", "qcow2", "-c", f"read -P 0x5a {off} 4k",
                "-c", f"read -P 0 {off + 4096} 4k", img)


def test_async_raw_o_direct_writes(tmp_path):
    img = tmp_path / "a.raw"
    qemu_img("create", "-q", "-f", "raw", img, "8M")
    bench_write(img, "raw", 0x33, 2048, 4096, "none", depth=64)
    data = img.read_bytes()
    assert data == b"\x33" * (8 * MiB)


def test_async_reads_through_a_backing_file(tmp_path):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "8M")
    qemu_io("-c", "write -P 0x21 0 8M", base)
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io("-c", "write -P 0x42 1M 1M", top)
    # Reads from both layers and past nothing: every request succeeds.
    imgtool("bench", "-f", "qcow2", "-t", "none", "-d", "32", "-c", "4096",
            "-s", "4k", "--random=3", top)
    qemu_img("check", top)
