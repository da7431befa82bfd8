"""Image locking interoperates with QEMU's byte-range locks, both ways.

A qemu-io process holding an image open (kept alive by a pipe we control)
must make imgtool refuse to write it and refuse even to read it without
-U, and vice versa: an imgtool process holding an image open for writing
must make qemu-img/qemu-io refuse it.
"""
import subprocess
import time

import pytest

from conftest import IMGTOOL, imgtool, qemu_img, run


def hold(argv):
    """Start an interactive tool that keeps the image open until we close
    its stdin; wait until it has opened the image (it prints a prompt or
    its first command's output)."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    return p


def wait_locked(path, expect=True, timeout=5.0):
    """Poll /proc/locks until some OFD lock exists on path's inode."""
    import os
    ino = os.stat(path).st_ino
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open("/proc/locks") as f:
            held = any(f":{ino} " in line and "OFDLCK" in line for line in f)
        if held == expect:
            return
        time.sleep(0.02)
    raise AssertionError(f"lock state on {path} never became {expect}")


def release(p):
    p.stdin.close()
    p.wait(timeout=10)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_qemu_writer_blocks_imgtool(tmp, fmt):
    img = tmp / f"a.{fmt}"
    qemu_img("create", "-f", fmt, img, "1M")
    p = hold(["qemu-io", "-f", fmt, str(img)])
    try:
        wait_locked(img)
        w = imgtool("io", "-f", fmt, "-c", "write 0 512", img, check=False)
        assert w.returncode != 0
        assert w.stderr.startswith("imgtool: ")
        assert 'lock' in w.stderr and len(w.stderr.strip().splitlines()) == 1
        r = imgtool("io", "-f", fmt, "-r", "-c", "read 0 512", img, check=False)
        assert r.returncode != 0 and 'shared "write" lock' in r.stderr
        # -U reads while QEMU writes.
        imgtool("io", "-f", fmt, "-r", "-U", "-c", "read 0 512", img)
        imgtool("info", "-U", img)
    finally:
        release(p)
    imgtool("io", "-f", fmt, "-c", "write 0 512", img)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_imgtool_writer_blocks_qemu(tmp, fmt):
    img = tmp / f"a.{fmt}"
    qemu_img("create", "-f", fmt, img, "1M")
    # imgtool io reads commands from stdin, so it holds the image open
    # until stdin closes.
    p = hold([IMGTOOL, "io", "-f", fmt, str(img)])
    try:
        wait_locked(img)
        w = run(["qemu-io", "-f", fmt, "-c", "write 0 512", img], check=False)
        assert "Failed to get" in w.stderr and "lock" in w.stderr
        if fmt == "qcow2":
            # qemu-img info needs a consistent read of qcow2 metadata
            # (it opens raw images without taking that permission).
            i = qemu_img("info", "-f", fmt, img, check=False)
            assert i.returncode != 0 and 'shared "write" lock' in i.stderr
        qemu_img("info", "-U", "-f", fmt, img)
        # A second imgtool writer is refused too.
        w2 = imgtool("io", "-f", fmt, "-c", "write 0 512", img, check=False)
        assert w2.returncode != 0 and "lock" in w2.stderr
    finally:
        release(p)
    run(["qemu-io", "-f", fmt, "-c", "write 0 512", img])


def test_readers_share(tmp):
    img = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", img, "1M")
    p = hold(["qemu-io", "-r", "-f", "qcow2", str(img)])
    try:
        wait_locked(img)
        imgtool("io", "-f", "qcow2", "-r", "-c", "read 0 512", img)
        w = imgtool("io", "-f", "qcow2", "-c", "write 0 512", img, check=False)
        assert w.returncode != 0 and '"write" lock' in w.stderr
    finally:
        release(p)


def test_backing_file_locked_for_reading(tmp):
    """A backing file in use by an imgtool writer's chain cannot be
    written by QEMU, but can be read."""
    base = tmp / "base.qcow2"
    top = tmp / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    p = hold([IMGTOOL, "io", "-f", "qcow2", str(top)])
    try:
        wait_locked(base)
        w = run(["qemu-io", "-f", "qcow2", "-c", "write 0 512", base],
                check=False)
        assert "lock" in w.stderr
        run(["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", base])
    finally:
        release(p)
