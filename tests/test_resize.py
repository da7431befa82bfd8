"""imgtool resize against qemu-img resize: absolute and relative sizes,
growing with each preallocation mode, shrinking only with --shrink, the
guest data kept, and qcow2 images qemu-img check finds clean."""
import os
import shutil

import pytest

from conftest import (imgtool, qemu_check_clean, qemu_img, qemu_info,
                      qemu_io, same_content)


def make(tmp, fmt, size="4M", name=None):
    p = tmp / (name or f"a.{fmt}")
    qemu_img("create", "-f", fmt, p, size)
    qemu_io("-f", fmt, "-c", "write -P 0x5a 0 1M", "-c",
            "write -P 0xa5 3M 512k", p)
    return p


def both(tmp, fmt, *args, size="4M"):
    """Resizes copies with both tools; returns (ours, theirs)."""
    ours = make(tmp, fmt, size, f"i.{fmt}")
    theirs = tmp / f"q.{fmt}"
    shutil.copy(ours, theirs)
    *opts, new = args
    p = imgtool("resize", "-f", fmt, *opts, ours, "--", new)
    qemu_img("resize", "-f", fmt, *opts, theirs, "--", new)
    assert p.stdout == "Image resized.\n"
    return ours, theirs


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("new", ["8M", "+1M", "+512", "1G", "4M"])
def test_grow(tmp, fmt, new):
    ours, theirs = both(tmp, fmt, new)
    assert qemu_info(ours)["virtual-size"] == qemu_info(theirs)["virtual-size"]
    assert same_content(ours, theirs, fmt, fmt)
    if fmt == "qcow2":
        qemu_check_clean(ours)
    else:
        assert os.path.getsize(ours) == os.path.getsize(theirs)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("new", ["2M", "-1M", "3584k", "512"])
def test_shrink(tmp, fmt, new):
    ours, theirs = both(tmp, fmt, "--shrink", new)
    assert qemu_info(ours)["virtual-size"] == qemu_info(theirs)["virtual-size"]
    assert same_content(ours, theirs, fmt, fmt)
    if fmt == "qcow2":
        qemu_check_clean(ours)


@pytest.mark.parametrize("prealloc", ["off", "falloc", "full"])
def test_raw_preallocation(tmp, prealloc):
    ours, theirs = both(tmp, "raw", f"--preallocation={prealloc}", "+8M")
    assert os.path.getsize(ours) == os.path.getsize(theirs) == 12 << 20
    if prealloc != "off":
        assert os.stat(ours).st_blocks * 512 >= 8 << 20


@pytest.mark.parametrize("prealloc", ["off", "metadata", "falloc", "full"])
def test_qcow2_preallocation(tmp, prealloc):
    ours, theirs = both(tmp, "qcow2", f"--preallocation={prealloc}", "+8M")
    assert qemu_info(ours)["virtual-size"] == 12 << 20
    assert same_content(ours, theirs, "qcow2", "qcow2")
    qemu_check_clean(ours)
    if prealloc in ("falloc", "full"):
        assert os.stat(ours).st_blocks * 512 >= 8 << 20


def test_negative_size_without_double_dash(tmp):
    p = make(tmp, "raw")
    imgtool("resize", "-f", "raw", "--shrink", p, "-1M")
    assert os.path.getsize(p) == 3 << 20


def test_shrink_needs_flag(tmp):
    for fmt in ["raw", "qcow2"]:
        p = make(tmp, fmt)
        q = imgtool("resize", "-f", fmt, p, "2M", rc=1)
        assert q.stdout == ""
        assert q.stderr.splitlines()[0] == \
            "imgtool: Use the --shrink option to perform a shrink operation."
        qemu_img("resize", "-f", fmt, p, "2M", rc=1)
        assert qemu_info(p)["virtual-size"] == 4 << 20


def test_quiet(tmp):
    p = make(tmp, "qcow2")
    q = imgtool("resize", "-q", p, "+1M")
    assert q.stdout == "" and q.stderr == ""
    assert qemu_info(p)["virtual-size"] == 5 << 20


def test_image_opts(tmp):
    p = make(tmp, "qcow2")
    imgtool("resize", "--image-opts", f"driver=qcow2,file.filename={p}",
            "6M")
    assert qemu_info(p)["virtual-size"] == 6 << 20
    qemu_check_clean(p)


@pytest.mark.parametrize("args,msg", [
    (["0"], "New image size must be positive"),
    (["--shrink", "-5M"], "New image size must be positive"),
    (["1Q"], "Invalid size"),
    (["--preallocation=bogus", "8M"], "Invalid preallocation mode 'bogus'"),
    (["--shrink", "--preallocation=full", "1M"],
     "Preallocation can only be used for growing images"),
])
def test_errors(tmp, args, msg):
    p = make(tmp, "raw")
    *opts, size = args
    q = imgtool("resize", "-f", "raw", *opts, p, "--", size, rc=1)
    assert msg in q.stderr
    assert q.stderr.startswith("imgtool: ")
    qemu_img("resize", "-f", "raw", *opts, p, "--", size, rc=1)
    assert os.path.getsize(p) == 4 << 20


def test_argument_errors(tmp):
    p = make(tmp, "raw")
    msg = "Expecting image file name and size"
    assert msg in imgtool("resize", p, rc=1).stderr
    assert msg in imgtool("resize", p, "1M", "2M", rc=1).stderr
    q = imgtool("resize", tmp / "nonexistent", "1M", rc=1)
    assert q.stderr.startswith("imgtool: ")


def test_help():
    assert imgtool("resize", "--help").stdout.startswith(
        "usage: imgtool resize")


def test_raw_odd_sizes(tmp):
    ours, theirs = both(tmp, "raw", "--shrink", "1")
    assert os.path.getsize(ours) == os.path.getsize(theirs) == 1
    ours, theirs = both(tmp, "raw", "+1")
    assert os.path.getsize(ours) == os.path.getsize(theirs)


def test_qcow2_unaligned_size_refused(tmp):
    p = make(tmp, "qcow2")
    q = imgtool("resize", "--shrink", p, "1", rc=1)
    assert q.stderr.startswith("imgtool: ")
    qemu_img("resize", "--shrink", p, "1", rc=1)


@pytest.mark.parametrize("cluster", ["512", "64k"])
def test_shrink_and_grow_keep_snapshots(tmp, cluster):
    """As qemu-img 7.2 does for v3 images: the active state shrinks and
    grows while the snapshot keeps its data and its own size (shared L2
    tables are copied, not cleared)."""
    ours = tmp / "i.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster}", ours,
             "8M")
    qemu_io("-c", "write -P 1 0 8M", ours)
    imgtool("snapshot", "-c", "before", ours)
    qemu_io("-c", "write -P 2 1M 1M", ours)
    theirs = tmp / "q.qcow2"
    shutil.copy(ours, theirs)
    for new in ["3M", "6M", "1M"]:
        imgtool("resize", "--shrink", ours, new)
        qemu_img("resize", "-q", "--shrink", theirs, new)
        assert qemu_info(ours)["virtual-size"] == \
            qemu_info(theirs)["virtual-size"]
        assert same_content(ours, theirs, "qcow2", "qcow2")
        qemu_check_clean(ours)
    imgtool("snapshot", "-a", "before", ours)
    qemu_check_clean(ours)
    assert qemu_info(ours)["virtual-size"] == 8 << 20
    out = qemu_io("-c", "read -P 1 0 8M", ours).stdout
    assert "verification failed" not in out and "read 8388608/" in out


def test_v2_with_snapshots_refused(tmp):
    img = tmp / "v2.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", img, "4M")
    qemu_img("snapshot", "-c", "s", img)
    before = img.read_bytes()
    for args in (["--shrink", img, "2M"], [img, "8M"]):
        p = imgtool("resize", *args, rc=1)
        assert p.stderr == ("imgtool: Can't resize a v2 image which has "
                            "snapshots\n")
        qemu_img("resize", *args, rc=1)
    assert img.read_bytes() == before
