"""convert's -o lists: given several times they merge, as in qemu-img
(a later key wins), and `-o help` with a list still prints help."""
import json
import os
import re

import pytest

from conftest import faulty_opts, imgtool, qemu_img


def fmt_info(path):
    return json.loads(qemu_img("info", "--output=json", path).stdout)


def test_repeated_o_lists_merge_like_qemu_img(tmp):
    src = tmp / "s.raw"
    src.write_bytes(b"\x01" * 65536)
    opts = ["-o", "cluster_size=4k", "-o", "lazy_refcounts=on,compat=1.1",
            "-o", "refcount_bits=8"]
    ours, ref = tmp / "ours.qcow2", tmp / "ref.qcow2"
    imgtool("convert", "-f", "raw", "-O", "qcow2", *opts, src, ours)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *opts, src, ref)
    a, b = fmt_info(ours), fmt_info(ref)
    assert a["cluster-size"] == b["cluster-size"] == 4096
    assert a["format-specific"]["data"] == b["format-specific"]["data"]
    assert a["format-specific"]["data"]["lazy-refcounts"] is True
    assert a["format-specific"]["data"]["refcount-bits"] == 8


def test_later_key_wins(tmp):
    src = tmp / "s.raw"
    src.write_bytes(b"\x01" * 65536)
    ours, ref = tmp / "ours.qcow2", tmp / "ref.qcow2"
    opts = ["-o", "cluster_size=4k", "-o", "cluster_size=8k"]
    imgtool("convert", "-f", "raw", "-O", "qcow2", *opts, src, ours)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *opts, src, ref)
    assert fmt_info(ours)["cluster-size"] == fmt_info(ref)["cluster-size"]


# A write failing in the middle of a convert, in every ordering mode: the
# workers stop (no hang), one error line names the byte and the reason,
# and the exit status is 1.
@pytest.mark.parametrize("mode", [[], ["-W"], ["-m", "1"], ["-m", "16"]])
@pytest.mark.parametrize("nth", [1, 5, 17])
def test_write_error_stops_every_mode(tmp, mode, nth):
    src = tmp / "s.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(24 << 20))
    dst = tmp / "d.qcow2"
    imgtool("create", "-q", "-f", "qcow2", dst, str(24 << 20))
    p = imgtool("convert", "-n", *mode, "-f", "raw", "--target-image-opts",
                src, faulty_opts(dst, fail_write=nth, fail_count=1000,
                                 errno="ENOSPC"), rc=1, timeout=60)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert re.match(r"imgtool: error while writing at byte \d+: "
                    r"No space left on device$", lines[0]), lines[0]
    c = qemu_img("check", dst, check=False)
    assert c.returncode in (0, 3), c.stdout + c.stderr


def allocated(path):
    return os.stat(path).st_blocks * 512


@pytest.fixture
def sparse_src(tmp):
    """20 MiB of qcow2 with 1 MiB of data."""
    src = tmp / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, "20M")
    from conftest import qemu_io
    qemu_io("-c", "write -P 1 0 1M", src)
    return src


@pytest.mark.parametrize("fmt,mode", [("raw", "full"), ("raw", "falloc"),
                                      ("qcow2", "full"),
                                      ("qcow2", "falloc"),
                                      ("qcow2", "metadata")])
def test_preallocation_survives_the_copy(tmp, sparse_src, fmt, mode):
    """-o preallocation= makes the target allocated as qemu-img's: the
    zero ranges of the source are not written, so they do not punch
    holes into a preallocated (written-zero) raw file: 20 MiB allocated,
    not 1."""
    ours, ref = tmp / f"ours.{fmt}", tmp / f"ref.{fmt}"
    args = ["-O", fmt, "-o", f"preallocation={mode}", sparse_src]
    imgtool("convert", *args, ours)
    qemu_img("convert", *args, ref)
    qemu_img("compare", "-f", fmt, "-F", fmt, ours, ref)
    # within a few file system blocks (extent tree splits)
    assert abs(allocated(ours) - allocated(ref)) <= 16384, \
        (allocated(ours), allocated(ref))
    if mode != "metadata":
        assert allocated(ours) >= 20 * 1024 * 1024
    assert os.path.getsize(ours) == os.path.getsize(ref)


@pytest.mark.parametrize("mode", ["full", "falloc", "metadata"])
def test_compression_refuses_preallocation(tmp, sparse_src, mode):
    """qemu-img refuses -c with preallocation (the compressed clusters
    would never use the preallocated ones), and creates nothing."""
    args = ["-c", "-O", "qcow2", "-o", f"preallocation={mode}", sparse_src]
    ours = imgtool("convert", *args, tmp / "ours.qcow2", rc=1)
    ref = qemu_img("convert", *args, tmp / "ref.qcow2", rc=1)
    assert ours.stderr.replace("imgtool:", "qemu-img:") == ref.stderr
    assert not (tmp / "ours.qcow2").exists()
    assert not (tmp / "ref.qcow2").exists()
    # off, or a later off, is fine for both
    for extra in (["-o", "preallocation=off"],
                  ["-o", f"preallocation={mode}", "-o", "preallocation=off"]):
        for tool, out in ((imgtool, "o2.qcow2"), (qemu_img, "r2.qcow2")):
            if (tmp / out).exists():
                (tmp / out).unlink()
            tool("convert", "-c", "-O", "qcow2", *extra, sparse_src,
                 tmp / out)
