#!/usr/bin/python3
"""Writes the seeds of fuzz_nbd_server (fuzz/corpus/nbd/): well-formed
client byte streams, as the NBD protocol specification defines them,
that reach every option and command the server knows.  The server's
answers are not part of a seed (the harness drops them).

    fuzz/make_nbd_corpus.py fuzz/corpus/nbd
"""
import os
import struct
import sys

IHAVEOPT = 0x49484156454f5054
REQ = 0x25609513


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def name(n, info=()):
    n = n.encode()
    return (struct.pack(">I", len(n)) + n + struct.pack(">H", len(info)) +
            b"".join(struct.pack(">H", i) for i in info))


def meta(export, queries):
    e = export.encode()
    d = struct.pack(">I", len(e)) + e + struct.pack(">I", len(queries))
    for q in queries:
        d += struct.pack(">I", len(q)) + q.encode()
    return d


def req(cmd, off=0, length=0, flags=0, handle=1, data=b""):
    return struct.pack(">IHHQQI", REQ, flags, cmd, handle, off, length) + data


HELLO = struct.pack(">I", 3)      # fixed newstyle, no zeroes

SEEDS = {
    "go-rw": HELLO + opt(8) + opt(7, name("", (0, 1, 2, 3))) +
             req(1, 4096, 512, 1, 1, b"\xab" * 512) + req(0, 4096, 512, 4, 2) +
             req(6, 8192, 4096, 16, 3) + req(6, 0, 4096, 2, 4) +
             req(4, 0, 65536, 1, 5) + req(3, handle=6) +
             req(5, 0, 1 << 20, 0, 7) + req(2),
    "simple": HELLO + opt(7, name("")) + req(0, 0, 4096) +
              req(1, 0, 8, 0, 2, b"12345678") + req(2),
    "status": HELLO + opt(8) +
              opt(9, meta("q", [])) + opt(9, meta("q", ["qemu:"])) +
              opt(10, meta("q", ["base:allocation", "qemu:allocation-depth",
                                 "qemu:dirty-bitmap:b"])) +
              opt(7, name("q")) + req(7, 0, 1 << 20) +
              req(7, 65536, 4096, 8, 2) + req(0, 0, 1 << 16, 4, 3) + req(2),
    "list-info": HELLO + opt(3) + opt(6, name("q", (1, 2, 3))) +
                 opt(6, name("nope")) + opt(5) + opt(99, b"x") + opt(2),
    "export-name": struct.pack(">I", 1) + opt(1, b"q") + req(0, 0, 512) +
                   req(2),
    "bad-requests": HELLO + opt(8) + opt(7, name("")) +
                    req(0, 1 << 20, 512) + req(0, 0, 0, 0, 2) +
                    req(1, 0, 40 << 20, 0, 3) + req(77, 0, 1, 0, 4) +
                    req(0, 0, 512, 0x80, 5) + req(7, 0, 512, 0, 6),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/nbd"
    os.makedirs(out, exist_ok=True)
    for k, v in SEEDS.items():
        with open(os.path.join(out, k), "wb") as f:
            f.write(v)


if __name__ == "__main__":
    main()
