"""convert's -o lists: given several times they merge, as in qemu-img
(a later key wins), and `-o help` with a list still prints help."""
import json
import os
import re

import pytest

from conftest import faulty_opts, imgtool, qemu_img


def fmt_info(path):
    return json.loads(qemu_img("info", "--output=json", path).stdout)


def test_repeated_o_lists_merge_like_qemu_img(tmp):
    src = tmp / "s.raw"
    src.write_bytes(b"\x01" * 65536)
    opts = ["-o", "cluster_size=4k", "-o", "lazy_refcounts=on,compat=1.1",
            "-o", "refcount_bits=8"]
    ours, ref = tmp / "ours.qcow2", tmp / "ref.qcow2"
    imgtool("convert", "-f", "raw", "-O", "qcow2", *opts, src, ours)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *opts, src, ref)
    a, b = fmt_info(ours), fmt_info(ref)
    assert a["cluster-size"] == b["cluster-size"] == 4096
    assert a["format-specific"]["data"] == b["format-specific"]["data"]
    assert a["format-specific"]["data"]["lazy-refcounts"] is True
    assert a["format-specific"]["data"]["refcount-bits"] == 8


def test_later_key_wins(tmp):
    src = tmp / "s.raw"
    src.write_bytes(b"\x01" * 65536)
    ours, ref = tmp / "ours.qcow2", tmp / "ref.qcow2"
    opts = ["-o", "cluster_size=4k", "-o", "cluster_size=8k"]
    imgtool("convert", "-f", "raw", "-O", "qcow2", *opts, src, ours)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *opts, src, ref)
    assert fmt_info(ours)["cluster-size"] == fmt_info(ref)["cluster-size"]


# A write failing in the middle of a convert, in every ordering mode: the
# workers stop (no hang), one error line names the byte and the reason,
# and the exit status is 1.
@pytest.mark.parametrize("mode", [[], ["-W"], ["-m", "1"], ["-m", "16"]])
@pytest.mark.parametrize("nth", [1, 5, 17])
def test_write_error_stops_every_mode(tmp, mode, nth):
    src = tmp / "s.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(24 << 20))
    dst = tmp / "d.qcow2"
    imgtool("create", "-q", "-f", "qcow2", dst, str(24 << 20))
    p = imgtool("convert", "-n", *mode, "-f", "raw", "--target-image-opts",
                src, faulty_opts(dst, fail_write=nth, fail_count=1000,
                                 errno="ENOSPC"), rc=1, timeout=60)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert re.match(r"imgtool: error while writing at byte \d+: "
                    r"No space left on device$", lines[0]), lines[0]
    c = qemu_img("check", dst, check=False)
    assert c.returncode in (0, 3), c.stdout + c.stderr
