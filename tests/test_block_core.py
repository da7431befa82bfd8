"""Block-layer behaviour visible through `imgtool io` on raw images:
alignment bouncing under O_DIRECT, probing restrictions, zeroes and
discards keeping files sparse, and one-line errors."""
import os

import pytest

from conftest import imgtool, qemu_io, run


def test_unaligned_io_with_o_direct(tmp):
    img = tmp / "a.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    # 100-byte writes at odd offsets through -t none (O_DIRECT) must land
    # exactly, without touching the neighbouring bytes.
    imgtool("io", "-f", "raw", "-t", "none",
            "-c", "write -P 0x11 0 4096",
            "-c", "write -P 0x22 1000 100",
            "-c", "write -P 0x33 4090 12",
            "-c", "read -P 0x22 1000 100", img)
    data = open(img, "rb").read(8192)
    assert data[:1000] == b"\x11" * 1000
    assert data[1000:1100] == b"\x22" * 100
    assert data[1100:4090] == b"\x11" * 2990
    assert data[4090:4102] == b"\x33" * 12
    assert data[4102:8192] == b"\x00" * (8192 - 4102)


def test_write_zeroes_and_discard_keep_sparse(tmp):
    img = tmp / "a.raw"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    imgtool("io", "-f", "raw", "-c", "write -P 0x55 0 32M", img)
    before = os.stat(img).st_blocks * 512
    imgtool("io", "-f", "raw", "-c", "write -z -u 0 16M",
            "-c", "discard 16M 8M", img)
    after = os.stat(img).st_blocks * 512
    assert after <= before - (20 << 20), (before, after)
    qemu_io("-f", "raw", "-c", "read -P 0 0 16M", "-c", "read -P 0x55 24M 8M",
            img)


def test_probed_raw_refuses_format_header_in_block0(tmp):
    """A guest must not turn a probed raw disk into a qcow2 image (whose
    backing file name could then point at any host file)."""
    img = tmp / "a.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    hdr = tmp / "hdr.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", hdr, "1M"])
    p = imgtool("io", "-c", f"write -s {hdr} 0 512", img, check=False)
    assert p.returncode == 1
    assert "probing guessed raw" in p.stderr
    assert "Operation not permitted" in p.stderr
    assert open(img, "rb").read(4) == b"\0\0\0\0"
    # Other data in block 0 is fine, and -f raw lifts the restriction.
    imgtool("io", "-c", "write -P 0x51 0 512", img)
    imgtool("io", "-f", "raw", "-c", f"write -s {hdr} 0 512", img)
    assert open(img, "rb").read(4) == b"QFI\xfb"


@pytest.mark.parametrize("args, needle", [
    (["io", "-c", "read 0 1", "/nonexistent/x.raw"], "No such file"),
    (["io", "-c", "read 0 1", "/tmp"], "Is a directory"),
    (["io", "-f", "nosuchfmt", "-c", "read 0 1", "/dev/null"], "nosuchfmt"),
    (["io", "-f", "raw", "-c", "read 0 2M", "@IMG@"], "read failed"),
    (["io", "-f", "raw", "-c", "bogus 0 1", "@IMG@"], "unknown command"),
])
def test_one_line_errors(tmp, args, needle):
    img = tmp / "a.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    args = [str(img) if a == "@IMG@" else a for a in args]
    p = imgtool(*args, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("imgtool: ") and needle in lines[0], p.stderr


def test_pattern_mismatch_fails(tmp):
    img = tmp / "a.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    p = imgtool("io", "-f", "raw", "-c", "read -P 0x11 0 512", img,
                check=False)
    assert p.returncode == 1 and "Pattern verification failed" in p.stderr


def test_commands_from_stdin(tmp):
    img = tmp / "a.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    script = "".join(f"write -P {i} {i * 4096} 4096\n" for i in range(1, 200))
    imgtool("io", "-f", "raw", img, input=script)
    for i in (1, 57, 199):
        qemu_io("-f", "raw", "-c", f"read -P {i} {i * 4096} 4096", img)
