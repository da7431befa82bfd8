"""Backing chains: relative names resolve against the overlay's directory,
the backing format is honoured, loops and chains deeper than 64 are
refused with one clear line."""
import os

from conftest import imgtool, qemu_img, qemu_io, run, same_content


def test_relative_backing_resolved_against_overlay_dir(tmp):
    d = tmp / "images"
    d.mkdir()
    qemu_img("create", "-f", "qcow2", d / "base.qcow2", "4M")
    qemu_io("-c", "write -P 0x61 0 1M", d / "base.qcow2")
    # Backing name stored relative; run from another directory.
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             d / "top.qcow2")
    qemu_io("-c", "write -P 0x62 512k 4k", d / "top.qcow2")
    cwd = os.getcwd()
    try:
        os.chdir(tmp)
        imgtool("io", "-c", "read -P 0x61 0 512k", "-c",
                "read -P 0x62 512k 4k", "-c", "read -P 0x61 516k 508k",
                "-c", "read -P 0 1M 3M", "images/top.qcow2")
    finally:
        os.chdir(cwd)


def test_backing_format_honoured(tmp):
    # A raw backing file whose content looks like qcow2 must be read as raw
    # when the overlay says backing_fmt=raw.
    inner = tmp / "inner.qcow2"
    qemu_img("create", "-f", "qcow2", inner, "1M")
    size = os.path.getsize(inner)
    top = tmp / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", inner, "-F", "raw", top,
             str(size))
    with open(inner, "rb") as f:
        head = f.read(4)
    assert head == b"QFI\xfb"
    # Reading through the chain gives inner's raw bytes ("QF..."), not the
    # zeroes its qcow2 interpretation would give.
    imgtool("io", "-c", "read -P 0x51 0 1", "-c", "read -P 0x46 1 1", top)


def test_backing_loop_refused(tmp):
    a, b = tmp / "a.qcow2", tmp / "b.qcow2"
    qemu_img("create", "-f", "qcow2", a, "1M")
    qemu_img("create", "-f", "qcow2", "-b", a, "-F", "qcow2", b)
    # Point a back at b without opening anything (-u).
    qemu_img("rebase", "-u", "-b", b, "-F", "qcow2", a)
    p = imgtool("io", "-c", "read 0 512", b, check=False)
    assert p.returncode == 1
    line = p.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("imgtool: ")
    assert "loop" in line


def test_chain_deeper_than_64_refused(tmp):
    prev = tmp / "l0.qcow2"
    qemu_img("create", "-f", "qcow2", prev, "1M")
    for i in range(1, 67):
        cur = tmp / f"l{i}.qcow2"
        qemu_img("create", "-f", "qcow2", "-u", "-b", prev.name, "-F",
                 "qcow2", cur, "1M")
        prev = cur
    # 64 backing levels are fine ...
    imgtool("io", "-r", "-c", "read -P 0 0 512", tmp / "l64.qcow2")
    # ... 65 are not.
    p = imgtool("io", "-r", "-c", "read 0 512", tmp / "l66.qcow2",
                check=False)
    assert p.returncode == 1
    assert "deeper than 64" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_missing_backing_file(tmp):
    top = tmp / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F",
             "qcow2", top, "1M")
    p = imgtool("io", "-c", "read 0 512", top, check=False)
    assert p.returncode == 1
    assert "gone.qcow2" in p.stderr and "No such file" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_resize_overlay_grown_area_reads_zero(tmp):
    """Growing an overlay over a longer backing file must not expose the
    backing file's bytes in the new area (as qemu-img resize)."""
    base, top, ref = tmp / "b.qcow2", tmp / "t.qcow2", tmp / "ref.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io("-c", "write -P 7 0 4M", base)
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "2M")
    run(["cp", top, ref])
    imgtool("resize", top, "4M")
    qemu_img("resize", ref, "4M")
    imgtool("io", "-r", "-c", "read -P 7 0 2M", "-c", "read -P 0 2M 2M", top)
    assert qemu_img("compare", top, ref).returncode == 0
    qemu_img("check", top)


def test_convert_B_over_short_middle_layer(tmp):
    """convert -B base of a chain whose middle layer is shorter than the
    base: the part past the middle layer's end reads as zero in the
    source and must be written as zeroes, not left to the base."""
    base, mid, top = tmp / "b.qcow2", tmp / "m.qcow2", tmp / "t.qcow2"
    out = tmp / "out.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io("-c", "write -P 0x11 0 4M", base)
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", mid, "2M")
    qemu_img("create", "-f", "qcow2", "-b", mid, "-F", "qcow2", top, "4M")
    qemu_io("-c", "write -P 0x22 0 64k", top)
    imgtool("convert", "-O", "qcow2", "-B", base, "-F", "qcow2", top, out)
    imgtool("io", "-r", "-c", "read -P 0x22 0 64k",
            "-c", "read -P 0x11 64k 1984k", "-c", "read -P 0 2M 2M", out)
    assert same_content(top, out)
