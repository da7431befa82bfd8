"""Reading compressed clusters: images qemu-img compressed (zlib and zstd)
read identically in imgtool whatever the request shape - requests of many
clusters, requests that start and end inside clusters, streams that cross
host cluster boundaries - and damaged or odd streams get QEMU's verdict.
"""
import random
import struct
import zlib

import pytest

from conftest import (QCOW2_OFFSET_MASK, imgtool, qcow2_header, qemu_img,
                      qemu_io, same_content)

K = 1024
M = 1024 * K

WORDS = (b"the of and to in is was for on that with as by at from block image "
         b"cluster disk guest host table refcount snapshot data volume pool "
         b"backing chain format header offset sector write read").split()


def text(r, size):
    """Text-like bytes that compress to a third or so, differently per
    cluster, so compressed streams have varied lengths."""
    out = bytearray()
    while len(out) < size:
        out += b" ".join(r.choice(WORDS) for _ in range(r.randint(4, 12)))
        out += b"%d.\n" % r.randint(0, 1 << 30)
    return bytes(out[:size])


def mixed(n, cs, seed):
    """Mostly text clusters, with a random and a zero cluster now and
    then (stored plain and left unallocated by the compressor)."""
    r = random.Random(seed)
    out = bytearray()
    for i in range(n):
        if i % 7 == 3:
            out += r.randbytes(cs)
        elif i % 11 == 5:
            out += bytes(cs)
        else:
            out += text(r, cs)
    return bytes(out)


def compressed_extents(path):
    """(guest offset, host offset, bytes to read) of each compressed
    cluster, from the L2 tables."""
    h = qcow2_header(path)
    cb, l1n, l1o = h["cluster_bits"], h["l1_size"], h["l1_table_offset"]
    with open(path, "rb") as f:
        cs = 1 << cb
        x = 62 - (cb - 8)
        f.seek(l1o)
        l1 = struct.unpack(">%dQ" % l1n, f.read(8 * l1n))
        out = []
        for i, e in enumerate(l1):
            l2o = e & QCOW2_OFFSET_MASK
            if not l2o:
                continue
            f.seek(l2o)
            l2 = struct.unpack(">%dQ" % (cs // 8), f.read(cs))
            for j, d in enumerate(l2):
                if d & (1 << 62):
                    off = d & ((1 << x) - 1)
                    sectors = ((d >> x) & ((1 << (62 - x)) - 1)) + 1
                    guest = (i * (cs // 8) + j) * cs
                    out.append((guest, off, sectors * 512 - (off & 511)))
    return cs, out


def qemu_compressed(tmp, data, cs, ctype):
    src = tmp / "src.raw"
    src.write_bytes(data)
    comp = tmp / f"c-{ctype}.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
             f"cluster_size={cs},compression_type={ctype}", src, comp)
    return src, comp


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
@pytest.mark.parametrize("cs", [4 * K, 64 * K])
def test_qemu_compressed_any_request_shape(tmp, cs, ctype):
    n = 300 if cs == 4 * K else 40
    data = mixed(n, cs, seed=cs)
    src, comp = qemu_compressed(tmp, data, cs, ctype)
    _, ext = compressed_extents(comp)
    # the case this test is about: streams packed across host clusters
    crossing = [e for e in ext if e[1] // cs != (e[1] + e[2] - 1) // cs]
    assert len(ext) > n // 2 and crossing

    # whole clusters, many per request (1 MiB chunks, 16 workers)
    out = tmp / "out.raw"
    imgtool("convert", "-m", "16", "-f", "qcow2", "-O", "raw", comp, out)
    assert out.read_bytes() == data
    # one request over the whole image
    p = imgtool("io", "-f", "qcow2", "-c", f"read 0 {len(data)}", comp)
    assert "read %d/%d" % (len(data), len(data)) in p.stdout
    # requests starting and ending inside clusters: dd reads from an odd
    # sector, so every chunk boundary cuts a cluster
    part = tmp / "part.raw"
    imgtool("dd", "-f", "qcow2", "-O", "raw", f"if={comp}", f"of={part}",
            "bs=512", "skip=77")
    assert part.read_bytes() == data[77 * 512:]
    assert same_content(src, comp, "raw", "qcow2")


def damage(path, guest_cluster):
    """Overwrites the start of the stream of one compressed cluster."""
    cs, ext = compressed_extents(path)
    e = [e for e in ext if e[0] == guest_cluster * cs]
    assert e, "cluster to damage is not compressed"
    with open(path, "r+b") as f:
        f.seek(e[0][1])
        f.write(b"\xff" * 48)
    return cs


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_damaged_cluster_inside_a_long_request(tmp, ctype):
    r = random.Random(5)
    data = b"".join(text(r, 64 * K) for _ in range(24))
    src, comp = qemu_compressed(tmp, data, 64 * K, ctype)
    damage(comp, 9)
    # QEMU refuses the cluster too
    q = qemu_io("-f", "qcow2", "-c", f"read {9 * 64 * K} 64k", comp,
                check=False)
    assert "error" in (q.stdout + q.stderr).lower()

    p = imgtool("convert", "-f", "qcow2", "-O", "raw", comp, tmp / "o.raw",
                rc=1)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgtool: "), p.stderr
    p = imgtool("io", "-f", "qcow2", "-c", "read 0 1M", comp, rc=1)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgtool: "), p.stderr
    # the clusters around it still read
    imgtool("io", "-f", "qcow2", "-c", f"read 0 {9 * 64 * K}", "-c",
            f"read {10 * 64 * K} {14 * 64 * K}", comp)


def test_deflate_stream_longer_than_cluster_is_cut(tmp):
    """A stream that decodes to more than a cluster is cut at the cluster,
    as QEMU reads it (imgtool's fast decoder hands it to zlib)."""
    cs = 64 * K
    r = random.Random(9)
    # cluster 0 compresses poorly, so its stream has room for ours
    first = r.randbytes(cs // 2) + text(r, cs // 2)
    data = first + b"".join(text(r, cs) for _ in range(3))
    src, comp = qemu_compressed(tmp, data, cs, "zlib")
    _, ext = compressed_extents(comp)
    guest, host, room = ext[0]
    assert guest == 0
    long_text = text(random.Random(10), cs + 8 * K)
    c = zlib.compressobj(6, zlib.DEFLATED, -12)
    stream = c.compress(long_text) + c.flush()
    assert len(stream) <= room
    with open(comp, "r+b") as f:
        f.seek(host)
        f.write(stream)

    want = long_text[:cs] + data[cs:]
    q = tmp / "q.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", comp, q)
    assert q.read_bytes() == want
    out = tmp / "o.raw"
    imgtool("convert", "-f", "qcow2", "-O", "raw", comp, out)
    assert out.read_bytes() == want
    part = tmp / "part.raw"
    imgtool("dd", "-f", "qcow2", "-O", "raw", f"if={comp}", f"of={part}",
            "bs=512", "skip=3", "count=100")
    assert part.read_bytes() == want[3 * 512:100 * 512]


def test_deflate_stream_short_of_a_cluster_fails(tmp):
    """A stream that ends before a full cluster is an error in both."""
    cs = 64 * K
    r = random.Random(11)
    data = r.randbytes(cs // 2) + text(r, cs // 2) + text(r, cs)
    src, comp = qemu_compressed(tmp, data, cs, "zlib")
    _, ext = compressed_extents(comp)
    guest, host, room = ext[0]
    c = zlib.compressobj(6, zlib.DEFLATED, -12)
    stream = c.compress(text(r, cs - 100)) + c.flush()
    assert len(stream) <= room
    with open(comp, "r+b") as f:
        f.seek(host)
        f.write(stream)
    q = qemu_io("-f", "qcow2", "-c", "read 0 64k", comp, check=False)
    assert "error" in (q.stdout + q.stderr).lower()
    p = imgtool("io", "-f", "qcow2", "-c", "read 0 64k", comp, rc=1)
    assert len(p.stderr.strip().splitlines()) == 1
    imgtool("io", "-f", "qcow2", "-c", "read 64k 64k", comp)
