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
"""
import os
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


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
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
