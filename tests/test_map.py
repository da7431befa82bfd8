"""imgtool map: JSON and human output identical to qemu-img map on images
written by qemu-img/qemu-io (same allocator, so same host offsets)."""
import pytest

from conftest import imgtool, qemu_img, qemu_io, run, IMGTOOL

MiB = 1024 * 1024


def assert_same_map(*args):
    ours = run([IMGTOOL, "map", *args], check=False)
    ref = run(["qemu-img", "map", *args], check=False)
    assert ours.returncode == ref.returncode, (ours.stderr, ref.stderr)
    assert ours.stdout == ref.stdout
    return ours


def both_outputs(path, *extra):
    assert_same_map("--output=json", *extra, path)
    assert_same_map(*extra, path)


@pytest.fixture
def chain(tmp):
    """base <- mid <- top, with data, zero clusters, discards, a top
    larger than its backing files and unaligned writes."""
    base = tmp / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, str(16 * MiB))
    qemu_io("-c", "write -P 1 0 3M", "-c", "write -z 4M 1M",
            "-c", "write -P 2 10M 100k", "-c", "write -P 3 15M 1M", base)
    mid = tmp / "mid.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2",
             "-F", "qcow2", mid)
    qemu_io("-c", "write -P 4 512k 1M", "-c", "write -z 10M 64k",
            "-c", "discard 2M 512k", "-c", "write -P 5 7M 1000", mid)
    top = tmp / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2",
             "-F", "qcow2", top, str(20 * MiB))
    qemu_io("-c", "write -P 6 1M 64k", "-c", "write -P 7 18M 1M",
            "-c", "write -z 15M 512k", top)
    return base, mid, top


def test_map_raw(tmp):
    r = tmp / "a.raw"
    qemu_img("create", "-q", "-f", "raw", r, str(16 * MiB))
    qemu_io("-f", "raw", "-c", "write -P 1 0 1M", "-c", "write -P 2 10M 100k",
            r)
    both_outputs(r)
    both_outputs(r, "-f", "raw")


def test_map_qcow2(chain):
    base, _, _ = chain
    both_outputs(base)


def test_map_chain(chain):
    _, mid, top = chain
    both_outputs(mid)
    both_outputs(top)


def test_map_ranges(chain):
    _, _, top = chain
    for extra in (["--start-offset=1000", "--max-length=2M"],
                  ["--start-offset=5M"], ["--max-length=0"],
                  ["--start-offset=100M"], ["--start-offset=17M",
                                            "--max-length=10M"]):
        both_outputs(top, *extra)


def test_map_empty_and_zero_length(tmp):
    e = tmp / "e.raw"
    qemu_img("create", "-q", "-f", "raw", e, "0")
    both_outputs(e)
    q = tmp / "e.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", q, str(MiB))
    both_outputs(q)


def test_map_compressed(tmp, chain):
    base, _, _ = chain
    c = tmp / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", base, c)
    assert_same_map("--output=json", c)
    p = imgtool("map", c, rc=1)
    assert "compressed" in p.stderr


def test_map_errors(tmp):
    p = imgtool("map", "--output=xml", tmp / "x", rc=1)
    assert "--output must be used with human or json" in p.stderr
    imgtool("map", tmp / "missing", rc=1)
    imgtool("map", rc=1)


@pytest.mark.parametrize("seed", range(6))
def test_map_random_chains(tmp, seed):
    import random
    r = random.Random(seed)
    size = r.choice([1, 3, 8]) * MiB + r.choice([0, 512, 4096])
    prev = None
    for d in range(r.randrange(1, 4)):
        p = tmp / f"l{d}.qcow2"
        args = ["create", "-q", "-f", "qcow2", "-o",
                f"cluster_size={r.choice(['4k', '64k', '512k'])}"]
        if prev:
            args += ["-b", prev.name, "-F", "qcow2"]
        qemu_img(*args, p, str(size + d * r.choice([0, MiB])))
        io = []
        for _ in range(r.randrange(0, 25)):
            off = r.randrange(0, size) // 512 * 512
            ln = min(r.choice([512, 4096, 65536, 300 * 1024, MiB]),
                     size - off)
            io += ["-c", r.choice([f"write -P {r.randrange(1, 256)} {off} {ln}",
                                   f"write -z {off} {ln}",
                                   f"discard {off} {ln}"])]
        if io:
            qemu_io(*io, p)
        prev = p
    both_outputs(prev)
