#!/usr/bin/env python3
"""Writes the seed corpora of fuzz_virtqueue and fuzz_scsi_cdb:
  make_vhost_corpus.py fuzz/corpus
Seeds are well-formed starting points (the fuzzer finds the hostile
variants): chains direct and indirect, one across the two regions, a
loop, and an inflight area to recover; one CDB per command the target
executes, with plausible fields and data-out."""
import os
import struct
import sys

INFLIGHT = 2048
REGION = 0x8000
GPA = 0x10000


def vq_seed(num_log2, flags, pops, chains, inflight=b"", indirect_tables=()):
    mem = bytearray(2 * REGION)
    descs = {}
    heads = []
    for head, chain in chains:
        heads.append(head)
        for idx, (addr, ln, fl, nxt) in chain:
            descs[idx] = struct.pack("<QIHH", addr, ln, fl, nxt)
    for idx, d in descs.items():
        mem[idx * 16: idx * 16 + 16] = d
    avail = 0x1000
    struct.pack_into("<HH", mem, avail, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", mem, avail + 4 + 2 * i, h)
    for off, table in indirect_tables:
        for i, (addr, ln, fl, nxt) in enumerate(table):
            struct.pack_into("<QIHH", mem, off + 16 * i, addr, ln, fl, nxt)
    head = bytes([num_log2 - 1 | flags, pops])
    return head + inflight.ljust(INFLIGHT, b"\0") + bytes(mem).rstrip(b"\0")


def virtqueue_seeds():
    data = GPA + 0x4000
    n, w, i = 1, 2, 4
    yield "chain", vq_seed(3, 0x40, 4, [
        (0, [(0, (data, 16, n, 1)), (1, (data + 64, 512, n, 2)),
             (2, (data + 1024, 1, w, 0))]),
        (3, [(3, (data + 2048, 4096, w, 0))]),
    ])
    yield "indirect", vq_seed(4, 0x80, 2, [
        (0, [(0, (GPA + 0x3000, 48, i, 0))]),
    ], indirect_tables=[(0x3000, [(data, 16, n, 1), (data + 16, 512, n, 2),
                                  (data + 600, 1, w, 0)])])
    yield "cross-region", vq_seed(3, 0, 1, [
        (0, [(0, (GPA + REGION - 100, 300, 0, 0))]),
    ])
    yield "loop", vq_seed(3, 0, 1, [
        (0, [(0, (data, 8, n, 1)), (1, (data, 8, n, 0))]),
    ])
    inflight = struct.pack("<QHHHH", 0, 1, 8, 1, 0)
    for h in range(8):
        inflight += struct.pack("<B5xHQ", 1 if h in (1, 3) else 0, 0, h)
    yield "inflight", vq_seed(3, 0x20, 2, [
        (1, [(1, (data, 512, w, 0))]), (3, [(3, (data + 512, 8, w, 0))]),
    ], inflight=inflight)


def cdb(*b):
    return bytes(b).ljust(32, b"\0")


def scsi_seed(lun, inlen, c, out=b""):
    return bytes([lun]) + struct.pack(">H", inlen) + c + out


def scsi_seeds():
    be32 = lambda v: list(struct.pack(">I", v))
    be64 = lambda v: list(struct.pack(">Q", v))
    block = b"\xa5" * 512
    unmap = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 8, 8)
    seeds = {
        "tur": scsi_seed(0, 0, cdb(0x00)),
        "request-sense": scsi_seed(0, 18, cdb(0x03, 0, 0, 0, 18)),
        "inquiry": scsi_seed(0, 96, cdb(0x12, 0, 0, 0, 96)),
        "inquiry-absent": scsi_seed(3, 96, cdb(0x12, 0, 0, 0, 96)),
        "vpd-00": scsi_seed(0, 255, cdb(0x12, 1, 0x00, 0, 255)),
        "vpd-83": scsi_seed(0, 255, cdb(0x12, 1, 0x83, 0, 255)),
        "vpd-b0": scsi_seed(0, 255, cdb(0x12, 1, 0xb0, 0, 255)),
        "vpd-b2": scsi_seed(1, 255, cdb(0x12, 1, 0xb2, 0, 255)),
        "mode-sense6": scsi_seed(0, 255, cdb(0x1a, 0, 0x3f, 0, 255)),
        "mode-sense10": scsi_seed(1, 255, cdb(0x5a, 0x10, 0x08, 0, 0, 0, 0,
                                              1, 0)),
        "read-capacity10": scsi_seed(0, 8, cdb(0x25)),
        "read-capacity16": scsi_seed(0, 32, cdb(0x9e, 0x10, *be64(0),
                                                *be32(32))),
        "read6": scsi_seed(0, 512, cdb(0x08, 0, 0, 1, 1, 0)),
        "read10": scsi_seed(0, 4096, cdb(0x28, 0, *be32(10), 0, 0, 8, 0)),
        "read12": scsi_seed(1, 1024, cdb(0xa8, 0, *be32(10), *be32(2))),
        "read16": scsi_seed(0, 4096, cdb(0x88, 0, *be64(100), *be32(8))),
        "write6": scsi_seed(0, 0, cdb(0x0a, 0, 0, 2, 1, 0), block),
        "write10-fua": scsi_seed(0, 0, cdb(0x2a, 8, *be32(4), 0, 0, 1, 0),
                                 block),
        "write16-ro": scsi_seed(1, 0, cdb(0x8a, 0, *be64(4), *be32(1)),
                                block),
        "write-same16": scsi_seed(0, 0, cdb(0x93, 0, *be64(16),
                                            *be32(300)), block),
        "write-same10-unmap": scsi_seed(0, 0, cdb(0x41, 8, *be32(16), 0, 0,
                                                  64, 0), b"\0" * 512),
        "unmap": scsi_seed(0, 0, cdb(0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0),
                           unmap),
        "sync-cache": scsi_seed(0, 0, cdb(0x35)),
        "get-lba-status": scsi_seed(0, 1024, cdb(0x9e, 0x12, *be64(0),
                                                 *be32(1024))),
        "report-luns": scsi_seed(2, 1024, cdb(0xa0, 0, 0, 0, 0, 0,
                                              *be32(1024))),
        "start-stop": scsi_seed(0, 0, cdb(0x1b)),
    }
    yield from seeds.items()


def main():
    root = sys.argv[1]
    for sub, gen in (("virtqueue", virtqueue_seeds),
                     ("scsi-cdb", scsi_seeds)):
        d = os.path.join(root, sub)
        os.makedirs(d, exist_ok=True)
        for name, data in gen():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
