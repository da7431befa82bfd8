"""imgtool dd: the output equals what qemu-img dd produces (size and
content), errors and exit codes as qemu-img's."""
import os

import pytest

from conftest import imgtool, qemu_img, qemu_io, run, IMGTOOL, same_content

MiB = 1024 * 1024


@pytest.fixture
def src(tmp):
    s = tmp / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", s, str(4 * MiB))
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -P 2 1500k 300k",
            "-c", "write -z 2M 512k", "-c", "write -P 3 3M 4096", s)
    return s


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("ops", [
    [], ["bs=64k"], ["bs=64k", "count=3", "skip=2"], ["bs=100k", "skip=3"],
    ["bs=3000"], ["count=1k"], ["skip=1k"], ["bs=1M", "count=2"],
    ["bs=1k", "count=0"], ["bs=100k", "skip=100"], ["bs=7", "skip=3",
                                                     "count=100000"],
])
def test_dd_raw_output_matches_qemu(tmp, src, ops):
    ours = run([IMGTOOL, "dd", f"if={src}", f"of={tmp / 'ours.raw'}", *ops],
               check=False)
    ref = run(["qemu-img", "dd", f"if={src}", f"of={tmp / 'ref.raw'}", *ops],
              check=False)
    assert ours.returncode == ref.returncode == 0, (ours.stderr, ref.stderr)
    assert read(tmp / "ours.raw") == read(tmp / "ref.raw")
    assert bool(ours.stderr) == bool(ref.stderr)


def test_dd_qcow2_output(tmp, src):
    imgtool("dd", "-O", "qcow2", "bs=64k", "skip=8", f"if={src}",
            f"of={tmp / 'ours.qcow2'}")
    qemu_img("dd", "-O", "qcow2", "bs=64k", "skip=8", f"if={src}",
             f"of={tmp / 'ref.qcow2'}")
    assert same_content(tmp / "ours.qcow2", tmp / "ref.qcow2",
                        "qcow2", "qcow2")
    info = qemu_img("info", "--output=json", tmp / "ours.qcow2").stdout
    assert f'"virtual-size": {4 * MiB - 8 * 65536}' in info
    qemu_img("check", tmp / "ours.qcow2")


def test_dd_output_is_sparse(tmp):
    s = tmp / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", s, "1G")
    qemu_io("-c", "write -P 1 500M 1M", s)
    imgtool("dd", "bs=1M", f"if={s}", f"of={tmp / 'o.raw'}")
    assert same_content(s, tmp / "o.raw", "qcow2", "raw")
    assert os.stat(tmp / "o.raw").st_blocks * 512 < 8 * MiB


@pytest.mark.parametrize("ops,msg", [
    (["bs=0"], "Invalid bs specified. Must be between 1 and 2147483647."),
    (["bs=1x"], "Invalid bs specified"),
    (["count=-1"], "Invalid count specified"),
    (["foo=1"], "unrecognized operand foo"),
])
def test_dd_errors(tmp, src, ops, msg):
    p = imgtool("dd", f"if={src}", f"of={tmp / 'o'}", *ops, rc=1)
    assert msg in p.stderr
    q = qemu_img("dd", f"if={src}", f"of={tmp / 'q'}", *ops, rc=1)
    assert msg in q.stderr


def test_dd_missing_operands(tmp, src):
    p = imgtool("dd", f"if={src}", rc=1)
    assert "Must specify both input and output files" in p.stderr
    imgtool("dd", f"if={tmp / 'missing'}", f"of={tmp / 'o'}", rc=1)
    assert not os.path.exists(tmp / "o")
