#!/usr/bin/env python3
"""Seed corpus for the qcow2 harnesses, made with qemu-img and qemu-io.

    fuzz/make_corpus.py OUTDIR [--small]

Every seed is a valid image exercising one feature: cluster sizes, both
compat levels, lazy refcounts, refcount widths, extended L2 entries,
zstd, compressed clusters, zero clusters, snapshots, persistent bitmaps,
a backing file name, an external data file, and data written in a
scattered pattern.  --small keeps only the seeds of at most 8 KiB, which
are the ones committed in fuzz/corpus/qcow2/; the others are generated at
run time (tests/test_fuzz.py).

    fuzz/make_corpus.py --templates fuzz/templates
    fuzz/make_corpus.py --splice fuzz/templates fuzz/corpus

The first makes the template images of the table harnesses
(fuzz_splice.h): snapshot.qcow2, with two snapshots, and bitmap.qcow2,
with three bitmaps holding dirty bits.  They are committed: seeds point
into them, and qemu-img stamps snapshots with the time.  The second
writes the seeds of those harnesses, a 24-byte control block and a
table, into fuzz/corpus/qcow2-snapshot/ and fuzz/corpus/qcow2-bitmap/:
the templates' own tables, with fewer entries, moved, and the tables of
other qemu-img images (many snapshots, long names, other extra data
sizes, in-use and odd-granularity bitmaps).
"""
import os
import struct
import subprocess
import sys
import tempfile

SMALL = 8192

# name, create options, virtual size, qemu-io commands, extra step
SEEDS = [
    ("empty-c512", "cluster_size=512", "64k", [], None),
    ("data-c512", "cluster_size=512", "64k",
     ["write -P 0x11 0 1536", "write -P 0x22 20k 512", "write -z 40k 1k"],
     None),
    ("compat010-c512", "compat=0.10,cluster_size=512", "64k",
     ["write -P 0x33 512 2k", "write -P 0x44 60k 512"], None),
    ("lazy-c512", "lazy_refcounts=on,cluster_size=512", "64k",
     ["write -P 0x55 0 1k"], None),
    ("refbits1-c512", "refcount_bits=1,cluster_size=512", "64k",
     ["write -P 0x66 4k 1k"], None),
    ("refbits64-c512", "refcount_bits=64,cluster_size=512", "64k",
     ["write -P 0x77 8k 2k"], None),
    ("refbits8-c1k", "refcount_bits=8,cluster_size=1k", "128k",
     ["write -P 0x78 8k 2k"], None),
    ("zstd-c512", "compression_type=zstd,cluster_size=512", "64k",
     ["write -P 0x79 0 512"], None),
    ("backing-name-c512",
     "cluster_size=512,backing_file=base.img,backing_fmt=raw", "64k",
     ["write -P 0x7a 1k 1k"], "backing"),
    ("zero-clusters-c512", "cluster_size=512", "64k",
     ["write -P 0x7b 0 4k", "write -z 1k 2k", "discard 3k 512"], None),
    ("bigger-virtual-c512", "cluster_size=512", "16M",
     ["write -P 0x7c 0 512", "write -P 0x7d 15M 512"], None),
    ("snapshot-c512", "cluster_size=512", "64k",
     ["write -P 0x7e 0 1k"], "snapshot"),
    ("bitmap-c512", "cluster_size=512", "64k",
     ["write -P 0x7f 0 1k"], "bitmap"),
    ("compressed-c512", "cluster_size=512", "64k", [], "compressed"),
    ("datafile-c512", "cluster_size=512,data_file=data.raw", "64k",
     ["write -P 0x80 0 1k"], "datafile"),
    # Larger seeds, generated at run time only.
    ("default-64k", "", "16M",
     ["write -P 0x81 0 64k", "write -P 0x82 8M 4k", "write -z 12M 64k"],
     None),
    ("extl2-32k", "extended_l2=on,cluster_size=32k", "4M",
     ["write -P 0x83 0 4k", "write -P 0x84 64k 1k", "write -z 128k 2k"],
     None),
    ("compat010-64k", "compat=0.10", "4M", ["write -P 0x85 1M 64k"], None),
    ("extl2-compressed-16k", "extended_l2=on,cluster_size=16k", "1M", [],
     "compressed"),
]


def run(*argv, cwd):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_seed(d, name, opts, size, cmds, extra):
    img = os.path.join(d, name + ".qcow2")
    if extra == "backing":
        with open(os.path.join(d, "base.img"), "wb") as f:
            f.truncate(65536)
    if extra == "compressed":
        src = os.path.join(d, name + ".src")
        with open(src, "wb") as f:
            f.write(b"compressible " * 2000)
            f.truncate(65536)
        run("qemu-img", "convert", "-c", "-O", "qcow2",
            *(["-o", opts] if opts else []), src, img, cwd=d)
        return img
    run("qemu-img", "create", "-q", "-f", "qcow2",
        *(["-o", opts] if opts else []), img, size, cwd=d)
    if cmds:
        args = []
        for c in cmds:
            args += ["-c", c]
        run("qemu-io", "-f", "qcow2", *args, img, cwd=d)
    if extra == "snapshot":
        run("qemu-img", "snapshot", "-c", "snap1", img, cwd=d)
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x90 512 1k", img,
            cwd=d)
    if extra == "bitmap":
        run("qemu-img", "bitmap", "--add", img, "bm0", cwd=d)
        run("qemu-img", "bitmap", "--add", "-g", "4096", img, "bm1", cwd=d)
    return img


# --------------------------------------------------------- table harnesses

BITMAPS_EXT = 0x23852875
F_RAW_OFFSET, F_AT_END, F_RAW_SIZE, F_NO_AUTOCLEAR = 1, 2, 4, 8


def make_snapshot_image(d, img, snaps, cmds_between=True, cluster="512"):
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
        f"cluster_size={cluster}", img, "64k", cwd=d)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 4k", "-c",
        "write -P 2 32k 1k", img, cwd=d)
    for i, name in enumerate(snaps):
        run("qemu-img", "snapshot", "-c", name, img, cwd=d)
        if cmds_between:
            run("qemu-io", "-f", "qcow2", "-c",
                f"write -P {3 + i} {(i * 3 + 1) * 1024} 2k", img, cwd=d)
    run("qemu-io", "-f", "qcow2", "-c", "write -z 0 512", img, cwd=d)


def make_bitmap_image(d, img, bitmaps, cluster="512"):
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
        f"cluster_size={cluster}", img, "64k", cwd=d)
    for name, args in bitmaps:
        run("qemu-img", "bitmap", "--add", *args, img, name, cwd=d)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 4k", "-c",
        "write -P 2 40k 1k", img, cwd=d)


def make_templates(out):
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        make_snapshot_image(d, "snapshot.qcow2", ["s1", "second-snapshot"])
        make_bitmap_image(d, "bitmap.qcow2", [("bm0", []),
                                              ("bm1", ["-g", "4096"]),
                                              ("off", ["--disable"])])
        for name in ["snapshot.qcow2", "bitmap.qcow2"]:
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)


def snapshot_table(img):
    """(count, table bytes) of an image's snapshot table."""
    nb, off = struct.unpack(">IQ", img[60:72])
    pos = off
    for _ in range(nb):
        l1_size, = struct.unpack(">I", img[pos + 16:pos + 20])
        id_len, name_len = struct.unpack(">HH", img[pos + 12:pos + 16])
        extra, = struct.unpack(">I", img[pos + 36:pos + 40])
        pos += (40 + extra + id_len + name_len + 7) & ~7
    return nb, img[off:pos]


def bitmap_directory(img):
    """(count, directory bytes) of an image's bitmaps extension."""
    off = struct.unpack(">I", img[100:104])[0]
    while off + 8 <= len(img):
        ty, ln = struct.unpack(">II", img[off:off + 8])
        if ty == BITMAPS_EXT:
            nb, _, size, doff = struct.unpack(">IIQQ", img[off + 8:off + 32])
            return nb, img[doff:doff + size]
        if ty == 0:
            break
        off += 8 + ((ln + 7) & ~7)
    raise ValueError("no bitmaps extension")


def control(count, flags=0, offset=0, size=0):
    return struct.pack(">B3xIQQ", flags, count, offset, size)


def snapshot_entries(table, nb):
    out, pos = [], 0
    for _ in range(nb):
        id_len, name_len = struct.unpack(">HH", table[pos + 12:pos + 16])
        extra, = struct.unpack(">I", table[pos + 36:pos + 40])
        ln = (40 + extra + id_len + name_len + 7) & ~7
        out.append(table[pos:pos + ln])
        pos += ln
    return out


def with_extra(entry, extra_bytes):
    """The entry with its extra data replaced by extra_bytes."""
    id_len, name_len = struct.unpack(">HH", entry[12:16])
    extra, = struct.unpack(">I", entry[36:40])
    strings = entry[40 + extra:40 + extra + id_len + name_len]
    e = entry[:36] + struct.pack(">I", len(extra_bytes)) + extra_bytes + \
        strings
    return e + bytes(-len(e) % 8)


def snapshot_seeds(tdir):
    img = open(os.path.join(tdir, "snapshot.qcow2"), "rb").read()
    nb, table = snapshot_table(img)
    ents = snapshot_entries(table, nb)
    seeds = {
        "template": control(nb) + table,
        "first-only": control(1) + ents[0],
        "none": control(0),
        "at-end": control(nb, F_AT_END) + table,
        "reversed": control(nb) + b"".join(reversed(ents)),
        "extra16": control(nb) + b"".join(with_extra(e, e[40:56])
                                          for e in ents),
        "extra0": control(nb) + b"".join(with_extra(e, b"") for e in ents),
        "extra-unknown": control(nb) + b"".join(
            with_extra(e, e[40:64] + bytes(range(40))) for e in ents),
        "count-beyond": control(nb + 3) + table,
        "offset-zero": control(nb, F_RAW_OFFSET, 0) + table,
    }
    with tempfile.TemporaryDirectory() as d:
        make_snapshot_image(d, "many.qcow2",
                            [f"snap-{i}" for i in range(6)], False)
        make_snapshot_image(d, "long.qcow2", ["n" * 200, "x"])
        make_snapshot_image(d, "c1k.qcow2", ["a", "b"], cluster="1k")
        for name in ["many", "long", "c1k"]:
            other = open(os.path.join(d, name + ".qcow2"), "rb").read()
            n, t = snapshot_table(other)
            seeds[f"from-{name}"] = control(n) + t
    return seeds


def set_entry_flags(entry, flags):
    return entry[:12] + struct.pack(">I", flags) + entry[16:]


def bitmap_entries(directory, nb):
    out, pos = [], 0
    for _ in range(nb):
        name_len, extra = struct.unpack(">HI", directory[pos + 18:pos + 24])
        ln = (24 + extra + name_len + 7) & ~7
        out.append(directory[pos:pos + ln])
        pos += ln
    return out


def bitmap_seeds(tdir):
    img = open(os.path.join(tdir, "bitmap.qcow2"), "rb").read()
    nb, directory = bitmap_directory(img)
    ents = bitmap_entries(directory, nb)
    seeds = {
        "template": control(nb) + directory,
        "first-only": control(1) + ents[0],
        "at-end": control(nb, F_AT_END) + directory,
        "no-autoclear": control(nb, F_NO_AUTOCLEAR) + directory,
        "in-use": control(nb) + b"".join(
            set_entry_flags(e, struct.unpack(">I", e[12:16])[0] | 1)
            for e in ents),
        "size-short": control(nb, F_RAW_SIZE, size=len(directory) - 8) +
        directory,
        "size-huge": control(nb, F_RAW_SIZE, size=1 << 40) + directory,
        "count-beyond": control(nb + 2) + directory,
        "reversed": control(nb) + b"".join(reversed(ents)),
    }
    with tempfile.TemporaryDirectory() as d:
        make_bitmap_image(d, "gran.qcow2", [("g512", ["-g", "512"]),
                                            ("g64k", ["-g", "65536"]),
                                            ("n" * 120, [])])
        make_bitmap_image(d, "c4k.qcow2", [("a", []), ("b", ["--disable"])],
                          cluster="4k")
        for name in ["gran", "c4k"]:
            other = open(os.path.join(d, name + ".qcow2"), "rb").read()
            n, t = bitmap_directory(other)
            seeds[f"from-{name}"] = control(n) + t
    return seeds


def make_splice_seeds(tdir, out):
    for kind, seeds in [("qcow2-snapshot", snapshot_seeds(tdir)),
                        ("qcow2-bitmap", bitmap_seeds(tdir))]:
        d = os.path.join(out, kind)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1] == "--templates" and len(sys.argv) == 3:
        make_templates(sys.argv[2])
        return
    if sys.argv[1] == "--splice" and len(sys.argv) == 4:
        make_splice_seeds(sys.argv[2], sys.argv[3])
        return
    out = sys.argv[1]
    small = "--small" in sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for name, opts, size, cmds, extra in SEEDS:
            img = make_seed(d, name, opts, size, cmds, extra)
            data = open(img, "rb").read()
            if small and len(data) > SMALL:
                continue
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
