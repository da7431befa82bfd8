"""qcow2 fast paths: allocating writes smaller than a cluster write only the
data and what copy-on-write needs (fresh clusters past the end of the file
already read as zero; reused ones get real zeroes), a guest flush costs one
fdatasync when no metadata changed, and the metadata cache options are read
and checked as QEMU reads them.
"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import (IMGTOOL, imgtool, io_args, merged_map,
                      no_leak_check_env, qemu_check_clean, qemu_img, qemu_io,
                      same_content)

KiB = 1024
MiB = 1024 * KiB


def io(path, *cmds, opts=None):
    args = io_args(cmds)
    if opts:
        return imgtool("io", *args, "--image-opts",
                       f"driver=qcow2,file.filename={path},{opts}")
    return imgtool("io", "-f", "qcow2", *args, path)


def qemu_reads(path, *checks):
    """qemu-io reads each (pattern, offset, length) back as written."""
    args = []
    for pat, off, length in checks:
        args += ["-c", f"read -P 0x{pat:02x} {off} {length}"]
    out = qemu_io("-f", "qcow2", "-r", *args, path).stdout
    assert "verification failed" not in out, out


def host_offset(path, guest):
    for e in json.loads(qemu_img("map", "--output=json", path).stdout):
        if e["start"] <= guest < e["start"] + e["length"] and "offset" in e:
            return e["offset"] + guest - e["start"]
    return None


def test_small_write_into_fresh_cluster_writes_only_data(tmp):
    img = tmp / "a.qcow2"
    cs = 2 * MiB
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", img,
             str(64 * MiB))
    before = os.stat(img).st_blocks * 512
    io(img, "write -P 0xab 4096 4096", f"write -P 0xcd {8 * MiB + 512} 512")
    grown = os.stat(img).st_blocks * 512 - before
    # the new L2 table is written whole; the two data clusters take a few
    # KiB, not 2 MiB each
    assert grown < cs + cs // 2, grown
    qemu_check_clean(str(img))
    qemu_reads(img, (0, 0, 4096), (0xab, 4096, 4096), (0, 8192, cs - 8192),
               (0, 8 * MiB, 512), (0xcd, 8 * MiB + 512, 512),
               (0, 8 * MiB + 1024, cs - 1024))


def test_small_write_into_reused_cluster_reads_zero_around(tmp):
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, str(16 * MiB))
    # guest cluster 0 gets a host cluster full of 0xff, which is freed by
    # the discard and then reused for the small write at 1 MiB
    io(img, "write -P 0xff 0 64k", "flush")
    old_host = host_offset(img, 0)
    io(img, "discard 0 64k", "flush", "write -P 0xab 1052672 4096")
    assert host_offset(img, 1 * MiB) == old_host, "cluster not reused"
    qemu_check_clean(str(img))
    qemu_reads(img, (0, 0, 64 * KiB), (0, 1 * MiB, 4096),
               (0xab, 1 * MiB + 4096, 4096), (0, 1 * MiB + 8192, 56 * KiB))


@pytest.mark.parametrize("opts", ["compat=1.1", "extended_l2=on"])
def test_small_write_over_backing_copies_edges(tmp, opts):
    base = tmp / "base.qcow2"
    top = tmp / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, str(4 * MiB))
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 4M", base)
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", base, "-F",
             "qcow2", top)
    io(top, "write -P 0x22 70000 3000", "write -P 0x33 1048576 512")
    qemu_check_clean(str(top))
    qemu_reads(top, (0x11, 0, 70000), (0x22, 70000, 3000),
               (0x11, 73000, 1048576 - 73000), (0x33, 1048576, 512),
               (0x11, 1048576 + 512, 3 * MiB - 512))


def test_workload_matches_qemu_with_tiny_caches(tmp):
    """Two L2 tables and four refcount blocks in the cache: eviction on
    nearly every request, and the image still equals QEMU's."""
    ours = tmp / "ours.qcow2"
    ref = tmp / "ref.qcow2"
    for p in (ours, ref):
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", p,
                 str(64 * MiB))
    ops = []
    for i in range(60):
        off = (i * 7919 * 4096 + i * 512) % (60 * MiB)
        ops.append(f"write -P 0x{i + 1:02x} {off} {4096 + 512 * (i % 9)}")
    ops.append("flush")
    ops.append("discard 8M 4M")
    io(ours, *ops, opts="l2-cache-size=8k,refcount-cache-size=16k,"
                        "cache-clean-interval=1")
    qemu_io("-f", "qcow2", *io_args(ops), ref)
    qemu_check_clean(str(ours))
    assert same_content(str(ours), str(ref), "qcow2", "qcow2")


BAD_CACHE_OPTS = [
    "cache-size=1M,l2-cache-size=512K,refcount-cache-size=256K",
    "cache-size=1M,l2-cache-size=2M",
    "cache-size=1M,refcount-cache-size=2M",
    "l2-cache-entry-size=100",
    "l2-cache-entry-size=131072",
    "l2-cache-size=abc",
    "cache-clean-interval=-1",
    "cache-clean-interval=4294967296",
    "refcount-cache-size=9223372036854775807",
]


@pytest.mark.parametrize("opt", BAD_CACHE_OPTS)
def test_bad_cache_options_fail_as_in_qemu(tmp, opt):
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, str(1 << 30))
    spec = f"driver=qcow2,file.filename={img},{opt}"
    q = qemu_img("info", "--image-opts", spec, check=False)
    ours = imgtool("info", "--image-opts", spec, check=False)
    assert q.returncode != 0 and ours.returncode != 0
    want = q.stderr.splitlines()[0].rsplit("': ", 1)[1]
    assert ours.stderr.startswith("imgtool: ")
    assert ours.stderr.rstrip("\n").endswith(want), (ours.stderr, want)
    assert len(ours.stderr.splitlines()) == 1


@pytest.mark.parametrize("opt", ["cache-size=1M", "l2-cache-size=100",
                                 "l2-cache-size=9223372036854775807",
                                 "refcount-cache-size=1M,cache-size=2M",
                                 "l2-cache-entry-size=4096",
                                 "cache-clean-interval=0"])
def test_good_cache_options_open(tmp, opt):
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, str(1 << 30))
    io(img, "write -P 0x5a 0 64k", opts=opt)
    qemu_reads(img, (0x5a, 0, 64 * KiB))


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_flush_without_metadata_changes_syncs_once(tmp):
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, str(16 * MiB))
    qemu_io("-f", "qcow2", "-c", "write -P 1 0 1M", img)
    # an overwrite of allocated clusters changes no metadata: the flush is
    # one fdatasync (close adds its own; count the flush by difference)
    def syncs(*cmds):
        p = subprocess.run(["strace", "-f", "-e", "trace=fdatasync,fsync",
                            IMGTOOL, "io", "-f", "qcow2", *io_args(cmds),
                            str(img)],
                           capture_output=True, text=True, timeout=120,
                           env=no_leak_check_env())
        assert p.returncode == 0, p.stderr
        return sum(1 for line in p.stderr.splitlines()
                   if "fdatasync(" in line or "fsync(" in line)
    base = syncs("write -P 2 0 4096")
    assert syncs("write -P 2 0 4096", "flush") - base == 1
    qemu_reads(img, (2, 0, 4096), (1, 4096, MiB - 4096))


@pytest.mark.parametrize("opts", ["cluster_size=2M", "compat=1.1",
                                  "cluster_size=512"])
def test_random_workload_same_allocation_as_qemu(tmp, opts):
    """The workload of test_qcow2_rw: same content and the same allocation
    status as QEMU, with the holes our small writes leave in the file."""
    import zlib
    from test_qcow2_rw import workload, run_both
    size = 8 * MiB if "512" in opts else 64 * MiB
    ops = workload(zlib.crc32(opts.encode()), size)
    ours, ref = run_both(tmp, opts, size, ops)
    qemu_check_clean(str(ours))
    assert same_content(str(ours), str(ref), "qcow2", "qcow2"), ops
    assert merged_map(str(ours)) == merged_map(str(ref))
