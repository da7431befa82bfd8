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


def sparse_copy(src, dst):
    run(["cp", "--sparse=always", src, dst])


@pytest.fixture
def host_holes(tmp):
    """qcow2 images with allocated clusters over holes of the host file:
    metadata preallocation (p), a written image copied with
    cp --sparse=always (clusters of zeroes became holes: s), and one so
    little sparse that QEMU does not take it for preallocated (its
    10/9 threshold: the zero cluster stays data, x)."""
    p = tmp / "p.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
             p, "64M")
    qemu_io("-c", "write -P 1 1M 1M", p)
    w = tmp / "w.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", w, "64M")
    qemu_io("-c", "write -P 0 0 32M", "-c", "write -P 5 40M 1M",
            "-c", "write -P 0 50M 64k", "-c", "write -P 6 60M 4k", w)
    s = tmp / "s.qcow2"
    sparse_copy(w, s)
    x0 = tmp / "x0.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", x0, "64M")
    qemu_io("-c", "write -P 3 0 10M", "-c", "write -P 0 4M 512k", x0)
    x = tmp / "x.qcow2"
    sparse_copy(x0, x)
    e = tmp / "e.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             "preallocation=metadata,extended_l2=on,cluster_size=128k", e,
             "8M")
    qemu_io("-c", "write -P 2 100k 8k", e)
    return p, s, x, e


def test_map_host_holes_read_as_zero(host_holes):
    """An allocated cluster whose host range is a hole of the file reads
    as zero: map says "zero": true there (and the human map leaves it
    out), as qemu-img does, instead of calling the whole disk data."""
    p, s, x, e = host_holes
    for img in host_holes:
        both_outputs(img)
        both_outputs(img, "--start-offset=1M", "--max-length=3M")
    out = imgtool("map", "--output=json", p).stdout
    assert '"zero": true, "data": true' in out
    assert imgtool("map", p).stdout.splitlines()[1:] == [
        "0x100000        0x100000        0x150000        " + str(p)]


def data_clusters(img, cluster=65536):
    """Guest clusters holding data that is not known to be zero, as
    qemu-img map sees them."""
    import json
    out = set()
    for e in json.loads(qemu_img("map", "--output=json", img).stdout):
        if e["data"] and not e["zero"]:
            out.update(range(e["start"] // cluster,
                             (e["start"] + e["length"] - 1) // cluster + 1))
    return out


def test_convert_of_host_holes_matches_qemu(host_holes, tmp):
    """convert reads no zeroes it can prove: its output holds data in
    the clusters qemu-img's holds data in, and measures the same.  (Not
    byte for byte: where a cluster is partly written, qemu-img extends
    the file over the rest of it, imgtool leaves the file end there.)"""
    for img in host_holes:
        mine, theirs = tmp / "mine.qcow2", tmp / "theirs.qcow2"
        for f in (mine, theirs):
            if f.exists():
                f.unlink()
        imgtool("convert", "-O", "qcow2", img, mine)
        qemu_img("convert", "-O", "qcow2", img, theirs)
        assert data_clusters(mine) == data_clusters(theirs), img
        assert qemu_img("measure", "-O", "qcow2", mine).stdout == \
            qemu_img("measure", "-O", "qcow2", theirs).stdout, img
        imgtool("compare", img, mine)
        qemu_img("compare", img, mine)
        assert_same_map("--output=json", mine)
