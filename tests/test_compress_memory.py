"""Peak memory of converting to and from compressed images stays at or
below qemu-img's for the same conversion (the bench's RSS columns, on a
small workload).  Peak RSS comes from GNU time: a child forked from this
Python process would report Python's own RSS, which survives exec.
"""
import os
import random
import shutil

import pytest

from conftest import IMGTOOL, run, sanitized

TIME = "/usr/bin/time"
K = 1024
M = 1024 * K

pytestmark = [
    pytest.mark.skipif(not os.access(TIME, os.X_OK),
                       reason="GNU time (package time) is missing"),
    pytest.mark.skipif(sanitized(), reason="sanitizers' shadow memory "
                       "dwarfs what is measured"),
]


def peak_kib(tmp, argv, runs=3):
    """The lowest peak of a few runs: a single run's peak moves by a few
    hundred KiB with what else the machine is doing (page-cache pressure,
    thread scheduling), which is as large as the margin compared."""
    out = tmp / "time.out"
    best = None
    for _ in range(runs):
        run([TIME, "-f", "%M", "-o", out, *argv])
        v = int(out.read_text().split()[-1])
        best = v if best is None else min(best, v)
    return best


def workload(path, size):
    """Scattered 1 MiB extents of random and of text-like data."""
    r = random.Random(3)
    words = b"block image cluster disk guest host table data write".split()
    with open(path, "wb") as f:
        f.truncate(size)
        for slot in r.sample(range(size // M), size // M // 3):
            f.seek(slot * M)
            if r.random() < 0.5:
                f.write(r.randbytes(M))
            else:
                line = b" ".join(r.choice(words) for _ in range(60)) + b"\n"
                f.write((line * (M // len(line) + 1))[:M])


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_convert_c_and_back_peak_rss_not_above_qemu(tmp, ctype):
    src = tmp / "src.raw"
    workload(src, 96 * M)
    rss = {}
    for tool, exe in (("qemu", shutil.which("qemu-img")), ("ours", IMGTOOL)):
        comp = tmp / f"{tool}.qcow2"
        back = tmp / f"{tool}.raw"
        rss[tool] = (
            peak_kib(tmp, [exe, "convert", "-c", "-f", "raw", "-O", "qcow2",
                           "-o", f"compression_type={ctype}", src, comp]),
            peak_kib(tmp, [exe, "convert", "-f", "qcow2", "-O", "raw",
                           tmp / "qemu.qcow2", back]))
        assert back.read_bytes() == src.read_bytes()
    assert rss["ours"][0] <= rss["qemu"][0], rss
    assert rss["ours"][1] <= rss["qemu"][1], rss
