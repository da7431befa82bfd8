"""Copies that share extents instead of copying (issue 15): convert,
commit and rebase put the source's data extents into the target's file
(FICLONERANGE) on a file system with reflinks - XFS made on a loop device
here - and write only metadata; on ext4 they copy as before.  Each case
checks the data against qemu-img, `qemu-img check`, that the target's
file really shares extents (FIEMAP's shared flag, through filefrag), and
that writing into either image afterwards leaves the other unchanged."""
import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import imgtool, qemu_img, qemu_io, run

MiB = 1 << 20


def _mount_fs(tmp_path_factory, mkfs, size):
    if os.geteuid() != 0 or not shutil.which(mkfs[0]):
        pytest.skip("needs root and " + mkfs[0])
    d = tmp_path_factory.mktemp("fs")
    img, mnt = d / "fs.img", d / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(size)
    run([*mkfs, img])
    mounted = False
    try:
        run(["mount", "-o", "loop", img, mnt])
        mounted = True
        yield mnt
    finally:
        if mounted:
            run(["umount", mnt], check=False)
        img.unlink()


@pytest.fixture(scope="module")
def xfs(tmp_path_factory):
    yield from _mount_fs(tmp_path_factory,
                         ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], 512 * MiB)


@pytest.fixture(scope="module")
def ext4(tmp_path_factory):
    yield from _mount_fs(tmp_path_factory,
                         ["mkfs.ext4", "-q", "-F"], 256 * MiB)


@pytest.fixture
def xdir(xfs, request):
    d = xfs / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    yield d
    shutil.rmtree(d)


@pytest.fixture
def edir(ext4, request):
    d = ext4 / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    yield d
    shutil.rmtree(d)


def shared_bytes(path):
    """Bytes of path's extents that FIEMAP flags as shared."""
    out = run(["filefrag", "-v", "-b4096", path]).stdout
    total = 0
    for line in out.splitlines():
        m = re.match(r"\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):", line)
        if m and "shared" in line:
            total += int(m.group(1)) * 4096
    return total


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def make_source(d, fmt):
    """An image with data runs, a zero run and holes (24 MiB of data)."""
    p = d / f"src.{fmt}"
    qemu_img("create", "-q", "-f", fmt, p, "64M")
    qemu_io("-f", fmt, "-c", "write -P 0x5a 0 8M", "-c", "write -z 8M 1M",
            "-c", "write -P 0xa5 12M 16M", "-c", "write -P 0x3c 40M 3M",
            "-c", "write -P 0x11 63M 4k", p)
    return p


def guest_map(path, fmt):
    """qemu-img's map without host offsets (which layout differences
    between the two tools may move)."""
    return [(e["start"], e["length"], e["data"], e["zero"], e["depth"])
            for e in json.loads(qemu_img("map", "-f", fmt, "--output=json",
                                         path).stdout)]


def assert_independent(a, fa, b, fb):
    """Writing into either image leaves the other as it was."""
    for (x, fx), (y, fy) in (((a, fa), (b, fb)), ((b, fb), (a, fa))):
        before = digest(y)
        qemu_io("-f", fx, "-c", "write -P 0xee 0 1M", "-c",
                "write -P 0xef 13M 64k", x)
        assert digest(y) == before, (x, y)


@pytest.mark.parametrize("sfmt,dfmt", [("raw", "qcow2"), ("qcow2", "raw"),
                                       ("qcow2", "qcow2"), ("raw", "raw")])
def test_convert_shares_on_xfs(xdir, sfmt, dfmt):
    src = make_source(xdir, sfmt)
    out, ref = xdir / f"out.{dfmt}", xdir / f"ref.{dfmt}"
    imgtool("convert", "-f", sfmt, "-O", dfmt, src, out)
    qemu_img("convert", "-f", sfmt, "-O", dfmt, src, ref)
    qemu_img("compare", "-f", sfmt, "-F", dfmt, src, out)
    if dfmt == "qcow2":
        qemu_img("check", out)
    # the same guest layout as qemu-img's copy (holes and zeroes alike)
    assert guest_map(out, dfmt) == guest_map(ref, dfmt)
    # 8 + 16 + 3 MiB of data shared, the 4k at 63M too
    assert shared_bytes(out) >= 27 * MiB
    assert shared_bytes(ref) == 0
    snap = xdir / "snap"
    shutil.copyfile(src, snap)
    assert_independent(src, sfmt, out, dfmt)
    # the source took only its own write: it reads as the copy + 2 writes
    qemu_io("-f", sfmt, "-c", "read -P 0x5a 1M 7M", "-c",
            "read -P 0xa5 12M 1M", src)
    qemu_io("-f", dfmt, "-c", "read -P 0xa5 14M 14M", out)


def test_convert_target_writes_stay_private(xdir):
    """The other direction, checked byte for byte: after sharing, a write
    into the copy changes nothing in the source's file."""
    src = make_source(xdir, "raw")
    out = xdir / "out.qcow2"
    imgtool("convert", "-f", "raw", "-O", "qcow2", src, out)
    before = digest(src)
    qemu_io("-c", "write -P 0x99 12M 4M", out)
    imgtool("io", "-c", "write -P 0x98 0 64k", out)
    assert digest(src) == before
    qemu_io("-c", "read -P 0x99 12M 4M", "-c", "read -P 0xa5 16M 12M", out)
    qemu_img("check", out)


def test_commit_shares_on_xfs(xdir):
    base, top = xdir / "base.qcow2", xdir / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "64M")
    qemu_io("-c", "write -P 0x01 0 64M", base)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             top)
    qemu_io("-c", "write -P 0x22 4M 20M", "-c", "write -z 30M 1M", top)
    ref = xdir / "ref.raw"
    qemu_img("convert", "-O", "raw", top, ref)
    shared_before = shared_bytes(base)
    imgtool("commit", "-d", top)
    qemu_img("check", base)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", base, ref)
    assert shared_bytes(base) - shared_before >= 20 * MiB
    assert_independent(top, "qcow2", base, "qcow2")


def test_rebase_shares_on_xfs(xdir):
    b, m, t = (xdir / f"{n}.qcow2" for n in "bmt")
    qemu_img("create", "-q", "-f", "qcow2", b, "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", m)
    qemu_io("-c", "write -P 0x21 0 16M", "-c", "write -P 0x22 32M 8M", m)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", t)
    qemu_io("-c", "write -P 0x23 1M 1M", t)
    ref = xdir / "ref.raw"
    qemu_img("convert", "-O", "raw", t, ref)
    qcopy = xdir / "q.qcow2"
    shutil.copyfile(t, qcopy)
    imgtool("rebase", "-b", "b.qcow2", "-F", "qcow2", t)
    qemu_img("rebase", "-b", "b.qcow2", "-F", "qcow2", qcopy)
    qemu_img("check", t)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", t, ref)
    # the same clusters allocated in the overlay as qemu-img leaves
    assert guest_map(t, "qcow2") == guest_map(qcopy, "qcow2")
    assert shared_bytes(t) >= 23 * MiB
    assert_independent(m, "qcow2", t, "qcow2")


@pytest.mark.parametrize("extra", [[], ["-C"]])
def test_ext4_falls_back(edir, extra):
    src = make_source(edir, "raw")
    for dfmt in ("raw", "qcow2"):
        out, ref = edir / f"out.{dfmt}", edir / f"ref.{dfmt}"
        imgtool("convert", *extra, "-f", "raw", "-O", dfmt, src, out)
        qemu_img("convert", *extra, "-f", "raw", "-O", dfmt, src, ref)
        qemu_img("compare", "-f", "raw", "-F", dfmt, src, out)
        assert shared_bytes(out) == 0
        assert guest_map(out, dfmt) == guest_map(ref, dfmt)
        before = digest(src)
        qemu_io("-f", dfmt, "-c", "write -P 0x77 0 1M", out)
        assert digest(src) == before


def test_offload_option_rules(tmp_path):
    src = tmp_path / "s.raw"
    qemu_img("create", "-q", "-f", "raw", src, "1M")
    for extra, msg in ((["-c", "-O", "qcow2"], "when -c is used"),
                       (["-S", "0", "-O", "raw"], "when -S is used")):
        q = qemu_img("convert", "-C", *extra, src, tmp_path / "q", rc=1)
        i = imgtool("convert", "-C", *extra, src, tmp_path / "i", rc=1)
        assert msg in q.stderr
        assert i.stderr.replace("imgtool:", "qemu-img:") == q.stderr
