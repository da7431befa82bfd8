"""`measure -O qcow2` gives qemu-img's numbers, by size and from inputs."""
import itertools
import json
import random

import pytest

from conftest import imgtool, qemu_img, qemu_io, run, IMGTOOL


def measure(tool, *args):
    p = run([tool, "measure", "--output=json", "-O", "qcow2", *args],
            check=False)
    return p.returncode, (json.loads(p.stdout) if p.returncode == 0 else None)


def same(*args):
    q = measure("qemu-img", *args)
    m = measure(IMGTOOL, *args)
    assert m == q, args
    return q


SIZES = [0, 1, 512, 65535, 65536, 65537, 1 << 20, (1 << 30) + 1,
         (1 << 40) + 12345, 5 << 40]


@pytest.mark.parametrize("cluster", [512, 4096, 65536, 2 << 20])
def test_by_size(cluster):
    rnd = random.Random(cluster)
    sizes = SIZES + [rnd.randrange(1 << 42) for _ in range(4)]
    for size, rb, ext in itertools.product(sizes, (1, 16, 64),
                                           (False, True)):
        if ext and cluster < 16384:
            continue
        opts = f"cluster_size={cluster},refcount_bits={rb}," \
               f"extended_l2={'on' if ext else 'off'}"
        same("--size", str(size), "-o", opts)


@pytest.mark.parametrize("opts", [
    "preallocation=off", "preallocation=metadata", "preallocation=falloc",
    "preallocation=full", "compat=0.10", "compat=1.1", "lazy_refcounts=on",
    "backing_file=whatever.qcow2", "compression_type=zstd",
    "cluster_size=2M,preallocation=full",
])
def test_by_size_options(opts):
    for size in ("0", "1G", "123456789", "3T"):
        same("--size", size, "-o", opts)


@pytest.mark.parametrize("opts", [
    "cluster_size=1000", "cluster_size=256", "cluster_size=4M",
    "refcount_bits=3", "refcount_bits=128", "refcount_bits=0",
    "refcount_bits=32,compat=0.10", "extended_l2=on,cluster_size=8k",
    "compat=0.9", "preallocation=bogus", "nosuchoption=1",
])
def test_bad_options_fail_like_qemu(opts):
    q = measure("qemu-img", "--size", "1G", "-o", opts)
    m = measure(IMGTOOL, "--size", "1G", "-o", opts)
    assert q[0] != 0
    assert m[0] != 0


def test_too_large_for_cluster_size():
    for size, opts in (("1P", "cluster_size=512"), ("8E", "cluster_size=2M"),
                       ("600T", "cluster_size=4k"),
                       ("256T", "cluster_size=64k,extended_l2=on")):
        q = measure("qemu-img", "--size", size, "-o", opts)
        m = measure(IMGTOOL, "--size", size, "-o", opts)
        assert (m[0] == 0) == (q[0] == 0), (size, opts)
        assert m == q or q[0] != 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure")
    imgs = {}

    p = d / "data.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "100M")
    qemu_io("-c", "write -q -P 1 0 3M", "-c", "write -q -P 2 10M 100k",
            "-c", "write -q -z 20M 1M", "-c", "write -q -P 3 99M 1M", p)
    imgs["data"] = p

    p = d / "compressed.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "16M")
    qemu_io("-c", "write -q -c -P 3 0 64k", "-c", "write -q -c -P 4 1M 64k",
            "-c", "write -q -P 5 2M 128k", p)
    imgs["compressed"] = p

    p = d / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_io("-c", "write -q -P 1 0 4M", "-c", "write -q -P 1 30M 1M", p)
    imgs["base"] = p
    o = d / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", p, "-F", "qcow2", o)
    qemu_io("-c", "write -q -P 2 8M 1M", "-c", "write -q -z 30M 512k",
            "-c", "write -q -P 2 2M 4k", o)
    imgs["overlay"] = o

    p = d / "v2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", p, "8M")
    qemu_io("-c", "write -q -P 1 1M 1M", p)
    imgs["v2"] = p

    p = d / "sparse.raw"
    with open(p, "wb") as f:
        f.truncate(10 * 1024 * 1024 + 777)
        for off, n in ((102400, 3000), (1024000, 1), (5 << 20, 200000),
                       (10 * 1024 * 1024 + 700, 77)):
            f.seek(off)
            f.write(b"\x5a" * n)
    imgs["raw"] = p

    p = d / "odd.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", p,
             "1000001")
    qemu_io("-c", "write -q -P 9 995328 4096", p)
    imgs["odd"] = p

    p = d / "bitmaps.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "300M")
    qemu_io("-c", "write -q -P 1 0 1M", p)
    qemu_img("bitmap", "--add", p, "b1")
    qemu_img("bitmap", "--add", "-g", "512", p, "a-much-longer-bitmap-name")
    qemu_img("bitmap", "--add", "-g", "2M", "--disable", p, "b3")
    imgs["bitmaps"] = p

    p = d / "empty.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "1G")
    imgs["empty"] = p
    return imgs


INPUT_OPTS = [None, "cluster_size=512", "cluster_size=2M",
              "cluster_size=4k,refcount_bits=1", "extended_l2=on",
              "preallocation=full", "preallocation=metadata",
              "compat=0.10", "backing_file=some.qcow2"]


@pytest.mark.parametrize("name", ["data", "compressed", "base", "overlay",
                                  "v2", "raw", "odd", "empty", "bitmaps"])
def test_from_input(inputs, name):
    for opts in INPUT_OPTS:
        args = ["-o", opts] if opts else []
        q = same(*args, inputs[name])
        assert q[0] == 0


def test_bitmaps_size_counted(inputs):
    j = same(inputs["bitmaps"])[1]
    assert j["bitmaps"] > 0


def test_bitmaps_key_only_for_v3_qcow2_input(inputs):
    assert "bitmaps" in measure(IMGTOOL, inputs["data"])[1]
    assert "bitmaps" not in measure(IMGTOOL, inputs["v2"])[1]
    assert "bitmaps" not in measure(IMGTOOL, inputs["raw"])[1]
    assert "bitmaps" not in measure(IMGTOOL, "-o", "compat=0.10",
                                    inputs["data"])[1]


def test_human_output(inputs):
    for args in (["--size", "1G"], [str(inputs["overlay"])]):
        q = qemu_img("measure", "-O", "qcow2", *args).stdout
        m = imgtool("measure", "-O", "qcow2", *args).stdout
        assert m == q


def test_required_matches_a_real_conversion(inputs, tmp):
    """The estimate bounds what convert actually writes."""
    out = tmp / "c.qcow2"
    qemu_img("convert", "-O", "qcow2", inputs["data"], out)
    req = measure(IMGTOOL, inputs["data"])[1]["required"]
    assert out.stat().st_size <= req
