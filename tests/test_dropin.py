"""Drop-in behaviours (issue 15): imgtool run side by side with qemu-img
7.2 on the same inputs gives the same messages, exit codes and images.
Where names matter imgtool runs through a link named qemu-img."""
import json
import os

import pytest

from conftest import IMGTOOL, imgtool, qemu_img, qemu_io, run


@pytest.fixture
def as_qemu_img(tmp_path):
    """imgtool through a link named qemu-img (as a package installs it)."""
    d = tmp_path / "bin"
    d.mkdir()
    link = d / "qemu-img"
    os.symlink(IMGTOOL, link)
    return str(link)


def both(link, *args, cwd=None):
    """(qemu-img's, imgtool-as-qemu-img's) completed processes."""
    import subprocess
    out = []
    for exe in ("qemu-img", link):
        out.append(subprocess.run([exe, *map(str, args)], capture_output=True,
                                  text=True, cwd=cwd))
    return out


# --- 1. its name -----------------------------------------------------------

def test_messages_carry_the_invoked_name(tmp_path, as_qemu_img):
    raw = tmp_path / "r.img"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    cases = [
        ("info", "-f", "qcow2", raw),
        ("resize", "-f", "raw", raw, "-1G"),
        ("bogus-command",),
        ("create", "-f", "qcow2", "-o", "foo=bar", tmp_path / "y.qcow2", "1M"),
        ("amend", "-f", "raw", "-o", "compat=0.10", raw),
    ]
    for args in cases:
        q, i = both(as_qemu_img, *args, cwd=tmp_path)
        assert (i.returncode, i.stderr) == (q.returncode, q.stderr), args
        assert q.returncode != 0
    # the first line of a usage mistake, too
    q, i = both(as_qemu_img, "info", "--bogus", raw)
    assert i.returncode == q.returncode == 1
    assert i.stderr.splitlines()[0] == q.stderr.splitlines()[0]
    assert i.stderr.splitlines()[1].startswith("Try 'qemu-img ")


def test_as_imgtool_it_stays_imgtool(tmp_path):
    p = imgtool("bogus-command", rc=1)
    assert p.stderr.splitlines()[0] == "imgtool: Command not found: bogus-command"
    p = imgtool("info", tmp_path / "missing", rc=1)
    assert p.stderr.startswith("imgtool: Could not open ")
