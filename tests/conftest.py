"""Shared helpers for imgtool's integration tests.

Tests drive the built binary ($IMGTOOL, default build/imgtool) and use the
real QEMU tools (qemu-img, qemu-io) as the oracle.  Every helper returns a
CompletedProcess with text output; `check=True` (the default) fails the
test with the command's stderr when the exit code is not the expected one.
"""
import json
import os
import random
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMGTOOL = os.environ.get("IMGTOOL") or os.path.join(ROOT, "build", "imgtool")


def run(argv, check=True, rc=0, input=None, timeout=300, env=None):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                       input=input, timeout=timeout, env=env)
    if check and p.returncode != rc:
        raise AssertionError(
            f"{' '.join(map(str, argv))}: exit {p.returncode} (wanted {rc})\n"
            f"stdout: {p.stdout[-4000:]}\nstderr: {p.stderr[-4000:]}")
    return p


def imgtool(*args, **kw):
    return run([IMGTOOL, *args], **kw)


def qemu_img(*args, **kw):
    return run(["qemu-img", *args], **kw)


def qemu_io(*args, **kw):
    return run(["qemu-io", *args], **kw)


def qemu_info(path, *extra):
    return json.loads(qemu_img("info", "--output=json", *extra, path).stdout)


def imgtool_info(path, *extra):
    return json.loads(imgtool("info", "--output=json", *extra, path).stdout)


def qemu_check_clean(path, fmt="qcow2"):
    """qemu-img check reports no corruption and no leaks."""
    p = qemu_img("check", "--output=json", "-f", fmt, path, check=False)
    assert p.returncode == 0, f"qemu-img check {path}: {p.returncode}\n{p.stdout}{p.stderr}"
    return json.loads(p.stdout)


def same_content(a, b, fa=None, fb=None):
    """qemu-img compare says the guest-visible contents are equal."""
    args = ["compare"]
    if fa:
        args += ["-f", fa]
    if fb:
        args += ["-F", fb]
    p = qemu_img(*args, a, b, check=False)
    return p.returncode == 0


def sanitized():
    """Whether $IMGTOOL is built with AddressSanitizer: some three times
    slower, and its shadow memory reserves terabytes of address space
    (False when it is not built: _binary_exists says so)."""
    try:
        with open(IMGTOOL, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def write_random_file(path, size, seed=0):
    r = random.Random(seed)
    with open(path, "wb") as f:
        f.write(r.randbytes(size))


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    if not os.path.exists(IMGTOOL):
        pytest.exit(f"{IMGTOOL} not built", returncode=2)
    assert shutil.which("qemu-img"), "qemu-img (qemu-utils) is required"
