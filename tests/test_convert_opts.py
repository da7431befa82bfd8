"""convert's -o lists: given several times they merge, as in qemu-img
(a later key wins), and `-o help` with a list still prints help."""
import json

from conftest import imgtool, qemu_img


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
