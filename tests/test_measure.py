"""imgtool measure against qemu-img measure: the same numbers, text and
JSON for --size and for existing images, and qemu-img's errors."""
import json

import pytest

from conftest import imgtool, qemu_img, qemu_io


def same(*args, rc=0):
    ours = imgtool("measure", *args, rc=rc)
    theirs = qemu_img("measure", *args, rc=rc)
    if rc == 0:
        assert ours.stdout == theirs.stdout
    else:
        assert ours.stdout == ""
        assert ours.stderr.startswith("imgtool: ")
    return ours


@pytest.mark.parametrize("size", ["0", "1", "512", "1M", "1G", "100G",
                                  "2T", "1.5G"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_size(fmt, size):
    same("--size", size, "-O", fmt)
    same("--output=json", "--size", size, "-O", fmt)


@pytest.mark.parametrize("opts", [
    "cluster_size=4k", "cluster_size=2M", "cluster_size=512",
    "refcount_bits=1", "refcount_bits=64", "extended_l2=on",
    "compat=0.10", "preallocation=metadata", "preallocation=full",
    "preallocation=falloc", "lazy_refcounts=on",
    "cluster_size=16k,refcount_bits=8,extended_l2=on",
])
def test_qcow2_options(opts):
    same("--size", "10G", "-O", "qcow2", "-o", opts)
    same("--output=json", "--size", "10G", "-O", "qcow2", "-o", opts)


def test_default_target_is_raw():
    out = same("--size", "1G").stdout
    assert out == "required size: 1073741824\n" \
                  "fully allocated size: 1073741824\n"


def test_json_shape():
    j = json.loads(same("--output=json", "--size", "1G", "-O",
                        "qcow2").stdout)
    assert list(j) == ["required", "fully-allocated"]


def test_from_raw_image(tmp):
    p = tmp / "r.raw"
    qemu_img("create", "-f", "raw", p, "16M")
    qemu_io("-f", "raw", "-c", "write -P 1 0 1M", "-c",
            "write -P 2 8M 64k", p)
    for target in ["raw", "qcow2"]:
        same("-f", "raw", "-O", target, p)
        same("--output=json", "-f", "raw", "-O", target, p)
    same("-O", "qcow2", "-o", "cluster_size=4k", "-f", "raw", p)


def test_from_qcow2_image(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "16M")
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -c -P 2 8M 64k", p)
    for target in ["raw", "qcow2"]:
        same("-O", target, p)
        same("--output=json", "-O", target, p)
    same("-O", "qcow2", "-o", "cluster_size=2M", p)


def test_from_chain(tmp):
    base, top = tmp / "b.qcow2", tmp / "t.qcow2"
    qemu_img("create", "-f", "qcow2", base, "8M")
    qemu_io("-c", "write -P 1 0 2M", base)
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io("-c", "write -P 2 4M 1M", top)
    same("-O", "qcow2", top)


def test_errors(tmp):
    p = tmp / "r.raw"
    qemu_img("create", "-f", "raw", p, "1M")
    q = same("--size", "1G", p, rc=1)
    assert "--size N cannot be used together with a filename." in q.stderr
    q = same(rc=1)
    assert "Either --size N or one filename must be specified." in q.stderr
    q = same("-O", "foo", "--size", "1G", rc=1)
    assert "Unknown file format 'foo'" in q.stderr
    q = same("-O", "qcow2", "--size", "1Q", rc=1)
    assert "Invalid image size specified" in q.stderr
    q = same("-O", "qcow2", "-o", "foo=1", "--size", "1G", rc=1)
    assert "Invalid parameter 'foo'" in q.stderr
    q = same("-O", "qcow2", tmp / "nonexistent", rc=1)
    q = imgtool("measure", "--output=xml", "--size", "1G", rc=1)
    assert "--output must be used with human or json" in q.stderr


def test_help():
    assert imgtool("measure", "--help").stdout.startswith(
        "usage: imgtool measure")


def test_host_holes_are_not_counted(tmp):
    """Clusters allocated over holes of the host file read as zero and
    need no space in a converted image: metadata preallocation and a
    cp --sparse copy measure as qemu-img measures them (they used to
    count as data: 64 MiB instead of 1.3 MiB)."""
    p = tmp / "p.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
             p, "64M")
    qemu_io("-c", "write -P 1 1M 1M", p)
    out = same("-O", "qcow2", p).stdout
    assert out.startswith("required size: 1376256\n"), out
    same("--output=json", "-O", "qcow2", p)
    same("-O", "raw", p)
    w = tmp / "w.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", w, "64M")
    qemu_io("-c", "write -P 0 0 32M", "-c", "write -P 5 40M 1M", w)
    s = tmp / "s.qcow2"
    import subprocess
    subprocess.run(["cp", "--sparse=always", w, s], check=True)
    same("-O", "qcow2", s)
    same("-O", "qcow2", "-o", "cluster_size=4k", s)
    same("-O", "qcow2", w)
