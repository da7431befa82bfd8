"""imgtool compare: exit codes and messages equal to qemu-img compare's."""
import pytest

from conftest import imgtool, qemu_img, qemu_io, run, IMGTOOL

MiB = 1024 * 1024


def both(*args):
    """Runs compare with imgtool and qemu-img; returns both results."""
    ours = run([IMGTOOL, "compare", *args], check=False)
    ref = run(["qemu-img", "compare", *args], check=False)
    return ours, ref


def assert_same(*args):
    ours, ref = both(*args)
    assert ours.returncode == ref.returncode, (ours.stderr, ref.stderr)
    assert ours.stdout == ref.stdout
    return ours


@pytest.fixture
def images(tmp):
    """a.qcow2 with data, zero clusters and holes; a.raw the same
    content; b.qcow2 differing at one byte deep inside."""
    a = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", a, str(16 * MiB))
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -z 4M 1M",
            "-c", "write -P 2 10M 100k", "-c", "write -P 0 12M 64k", a)
    r = tmp / "a.raw"
    qemu_img("convert", "-O", "raw", a, r)
    b = tmp / "b.qcow2"
    qemu_img("convert", "-O", "qcow2", a, b)
    qemu_io("-c", "write -P 9 10300001 1", b)
    return a, r, b


def test_identical(images):
    a, r, _ = images
    p = assert_same(a, r)
    assert p.returncode == 0
    assert p.stdout == "Images are identical.\n"
    assert_same("-f", "qcow2", "-F", "raw", a, r)


def test_content_mismatch_offset(images):
    a, _, b = images
    p = assert_same(a, b)
    assert p.returncode == 1
    assert p.stdout.startswith("Content mismatch at offset ")
    assert_same(b, a)


def test_mismatch_where_one_side_is_zero(tmp, images):
    a, _, _ = images
    c = tmp / "c.qcow2"
    qemu_img("convert", "-O", "qcow2", a, c)
    qemu_io("-c", "write -P 3 6M 4k", "-c", "write -z 0 64k", c)
    assert_same(a, c)
    assert_same(c, a)


@pytest.fixture
def grown(tmp, images):
    """a.qcow2 grown from 16 to 24 MiB: the tail reads as zeroes."""
    big = tmp / "big.qcow2"
    qemu_img("convert", "-O", "qcow2", images[0], big)
    qemu_img("resize", "-q", big, str(24 * MiB))
    return big


@pytest.mark.parametrize("tail,rc,verdict", [
    (None, 0, "Images are identical.\n"),
    ("write -P 5 20M 4k", 1, "Content mismatch at offset 20971520!\n"),
], ids=["zero-tail-identical", "data-in-tail"])
def test_size_mismatch(images, grown, tail, rc, verdict):
    if tail:
        qemu_io("-c", tail, grown)
    p = assert_same(images[0], grown)
    assert p.returncode == rc
    assert p.stdout == "Warning: Image size mismatch!\n" + verdict
    assert_same(grown, images[0])


def test_strict(images, grown):
    a, r, _ = images
    p = assert_same("-s", a, grown)
    assert p.stdout == "Strict mode: Image size mismatch!\n"
    # allocation differs (hole in qcow2 vs raw) though content is equal
    p = assert_same("-s", a, r)
    assert p.returncode == 1
    assert "block status mismatch" in p.stdout
    p = assert_same("-s", a, a)
    assert p.returncode == 0


def test_quiet(images):
    a, _, b = images
    p = assert_same("-q", a, b)
    assert p.returncode == 1 and p.stdout == ""
    p = assert_same("-q", a, a)
    assert p.returncode == 0 and p.stdout == ""


def test_chain_vs_flat(tmp):
    base = tmp / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, str(8 * MiB))
    qemu_io("-c", "write -P 1 0 4M", base)
    top = tmp / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             top)
    qemu_io("-c", "write -z 1M 1M", "-c", "write -P 4 6M 1M", top)
    flat = tmp / "flat.raw"
    qemu_img("convert", "-O", "raw", top, flat)
    p = assert_same(top, flat)
    assert p.returncode == 0
    p = assert_same(base, flat)
    assert p.returncode == 1


def test_errors(tmp, images):
    a, _, _ = images
    ours = imgtool("compare", a, tmp / "missing", rc=2)
    assert ours.stderr.startswith("imgtool: ")
    ours = imgtool("compare", "-f", "qcow2", tmp / "a.raw", a, rc=2)
    ours = imgtool("compare", a, rc=1)
    assert "Expecting two image file names" in ours.stderr


def test_progress(images):
    import subprocess
    a, r, _ = images
    out = subprocess.run([IMGTOOL, "compare", "-p", a, r],
                         capture_output=True, check=True).stdout
    assert out.startswith(b"    (0.00/100%)\r")
    assert out.endswith(b"\rImages are identical.\n\n")
