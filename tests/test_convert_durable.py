"""convert's promise: by default its output is on disk when it exits
(writeback with a flush at the end), unlike qemu-img's -t unsafe default;
-t unsafe never syncs.  Counted with strace on the output's descriptor,
converting into an existing image (-n): creating one syncs its metadata
in both tools, whatever -t says."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import (IMGTOOL, imgtool, no_leak_check_env, qemu_img,
                      same_content)

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not shutil.which("strace"),
                                reason="needs strace")


def output_syncs(tmp, *args):
    """Runs imgtool convert under strace; returns the fsync/fdatasync calls
    made on the output file's descriptors."""
    log = tmp / "strace.log"
    env = no_leak_check_env()
    p = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e",
                        "trace=openat,fsync,fdatasync", IMGTOOL, "convert",
                        *args], capture_output=True, text=True, timeout=120,
                       env=env)
    assert p.returncode == 0, p.stderr
    out = str(args[-1])
    fds, syncs = set(), 0
    for line in log.read_text().splitlines():
        m = re.search(r'openat\(.*"([^"]+)".* = (\d+)$', line)
        if m and os.path.abspath(m.group(1)) == os.path.abspath(out):
            fds.add(m.group(2))
        m = re.search(r"\b(?:fsync|fdatasync)\((\d+)\)", line)
        if m and m.group(1) in fds:
            syncs += 1
    return syncs


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_default_output_is_synced(tmp, fmt):
    src = tmp / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(40 * MiB))   # past the 16 MiB early writeback
    out = tmp / f"out.{fmt}"
    imgtool("create", "-q", "-f", fmt, out, "40M")
    assert output_syncs(tmp, "-n", "-f", "raw", "-O", fmt, src, out) >= 1
    assert same_content(src, out, "raw", fmt)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_unsafe_never_syncs(tmp, fmt):
    src = tmp / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(40 * MiB))
    out = tmp / f"out.{fmt}"
    imgtool("create", "-q", "-f", fmt, out, "40M")
    assert output_syncs(tmp, "-n", "-t", "unsafe", "-f", "raw", "-O", fmt,
                        src, out) == 0
    assert same_content(src, out, "raw", fmt)
    if fmt == "qcow2":
        assert qemu_img("check", out).returncode == 0
