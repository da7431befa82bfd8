"""The vhost-user exports of `imgtool serve` against a front end written
in Python (tests/vhostuser.py): first well-formed I/O (virtio-blk reads
and writes, virtio-scsi INQUIRY and READ CAPACITY), which shows the
client is right, then what QEMU would never send: bad memory tables,
ring addresses outside memory or misaligned, descriptor loops,
descriptors out of range or oversize, indirect tables gone wrong, an
avail index that runs away, malformed and oversized messages, too many
fds.  Each must fail alone (a NACK, the queue stopped, or the connection
dropped) while the daemon keeps serving: after every case a new
connection does real I/O, and at the end SIGTERM stops the daemon
cleanly with no fd left behind.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import IMGTOOL, qemu_img, qemu_io
import vhostuser as vu
from vhostuser import Client, mem_table

MiB = 1 << 20


class Daemon:
    pass


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = tmp_path_factory.mktemp("vhost-hostile")
    img = d / "disk.raw"
    qemu_img("create", "-f", "raw", str(img), str(4 * MiB))
    qemu_io("-f", "raw", "-c", "write -P 0xa7 0 1M", str(img))
    blk, scsi = d / "blk.sock", d / "scsi.sock"
    err = open(d / "serve.err", "w")
    p = subprocess.Popen(
        [IMGTOOL, "serve",
         "--blockdev", f"driver=raw,node-name=n0,file.filename={img}",
         "--export", "type=vhost-user-blk,id=b0,node-name=n0,"
                     f"addr.type=unix,addr.path={blk},writable=on",
         "--export", "type=vhost-user-scsi,id=s0,node-name=n0,"
                     f"addr.type=unix,addr.path={scsi},writable=on"],
        stderr=err)
    for _ in range(200):
        if blk.exists() and scsi.exists():
            break
        time.sleep(0.05)
    dm = Daemon()
    dm.dir, dm.p = d, p
    dm.blk, dm.scsi, dm.err = blk, scsi, d / "serve.err"
    try:
        yield dm
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        err.close()


def reports(daemon):
    return daemon.err.read_text()


def wait_report(daemon, text, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in reports(daemon):
            return True
        time.sleep(0.05)
    return False


def still_serves(daemon):
    """A fresh connection reads the disk's first sector correctly."""
    assert daemon.p.poll() is None, "the daemon died:\n" + reports(daemon)
    with Client(daemon.blk) as c:
        c.negotiate()
        assert c.map_memory() == 0
        c.setup_queue()
        status, data = c.blk(0, 0, 512)
        assert status == 0 and data == b"\xa7" * 512
    return True


def fresh(daemon):
    c = Client(daemon.blk)
    c.negotiate()
    return c


def test_blk_io(daemon):
    with Client(daemon.blk) as c:
        feats, proto = c.negotiate()
        assert proto & vu.P_CONFIG and proto & vu.P_REPLY_ACK
        c.send(vu.GET_CONFIG, struct.pack("<III", 0, 60, 0) + bytes(60))
        req, cfg, _ = c.reply()
        assert req == vu.GET_CONFIG and len(cfg) == 72
        capacity, = struct.unpack_from("<Q", cfg, 12)
        blk_size, = struct.unpack_from("<I", cfg, 12 + 20)
        assert capacity == 4 * MiB // 512 and blk_size == 512
        assert c.map_memory() == 0
        c.setup_queue()
        status, data = c.blk(0, 0, 4096)
        assert status == 0 and data == b"\xa7" * 4096
        status, _ = c.blk(1, 2048, out=b"\x3c" * 1024)
        assert status == 0
        status, data = c.blk(0, 2048, 1024)
        assert status == 0 and data == b"\x3c" * 1024
        status, _ = c.blk(4, 0)                      # flush
        assert status == 0
        status, _ = c.blk(0, 4 * MiB // 512, 512)    # past the end
        assert status == 1
        status, _ = c.blk(99, 0, 512)                # unknown type
        assert status == 2
        c.send(vu.GET_VRING_BASE, struct.pack("<II", 0, 0))
        req, st, _ = c.reply()
        assert struct.unpack("<II", st) == (0, 6)
    p = qemu_io("-r", "-U", "-f", "raw", "-c", "read -P 0x3c 1M 1k",
                str(daemon.dir / "disk.raw"))
    assert "verification failed" not in p.stdout


def test_scsi_io(daemon):
    with Client(daemon.scsi) as c:
        c.negotiate()
        assert c.call_u64(vu.GET_QUEUE_NUM) == 3    # control, event, 1
        assert c.map_memory() == 0
        c.setup_queue(index=2)
        base = vu.DATA

        def command(cdb, inlen):
            req = bytes([1, 0, 0x40, 0]) + bytes(4) + struct.pack(
                "<QBBB", 7, 0, 0, 0) + cdb.ljust(32, b"\0")
            c.mem[base:base + len(req)] = req
            c.desc(0, base, len(req), vu.DESC_NEXT, 1)
            c.desc(1, base + 0x100, 108, vu.DESC_NEXT | vu.DESC_WRITE, 2)
            c.desc(2, base + 0x200, inlen, vu.DESC_WRITE)
            c.offer(0)
            head, written = c.wait_used()
            resp = bytes(c.mem[base + 0x100:base + 0x100 + 108])
            sense_len, resid, _, status, response = struct.unpack_from(
                "<IIHBB", resp)
            return (status, response, resid, resp[12:12 + sense_len],
                    bytes(c.mem[base + 0x200:base + 0x200 + inlen]), written)

        status, response, resid, sense, data, written = command(
            bytes([0x12, 0, 0, 0, 96]), 96)
        assert (status, response) == (0, 0) and data[8:15] == b"IMGTOOL"
        assert written == 108 + 96 and resid == 0
        status, response, _, _, data, _ = command(
            bytes([0x9e, 0x10]) + bytes(8) + struct.pack(">I", 32), 32)
        assert status == 0 and struct.unpack(">QI", data[:12]) == (
            4 * MiB // 512 - 1, 512)
        # An unknown opcode: CHECK CONDITION with fixed sense 05/20/00.
        status, response, _, sense, _, _ = command(bytes([0xff]), 0 + 8)
        assert status == 2 and sense[0] == 0x70 and sense[2] == 5 and \
            sense[12] == 0x20
        # Another target: BAD_TARGET.
        req = bytes([1, 3, 0x40, 0]) + bytes(4) + bytes(11) + bytes(32)
        c.mem[base:base + len(req)] = req
        c.offer(0)
        c.wait_used()
        assert c.mem[base + 0x100 + 11] == 3


def test_bad_memory_tables(daemon):
    with fresh(daemon) as c:
        fd = os.memfd_create("m")
        os.ftruncate(fd, MiB)
        r, w = os.pipe()
        cases = {
            "overlap": (mem_table([(0, MiB, vu.UVA, 0),
                                   (MiB // 2, MiB // 2, vu.UVA + 4 * MiB,
                                    0)]), [fd, fd]),
            "larger than its file": (mem_table([(0, 2 * MiB, vu.UVA, 0)]),
                                     [fd]),
            "offset past its file": (mem_table([(0, MiB, vu.UVA, MiB)]),
                                     [fd]),
            "offset wraps": (mem_table([(0, MiB, vu.UVA, 2**64 - 4096)]),
                             [fd]),
            "empty": (mem_table([(0, 0, vu.UVA, 0)]), [fd]),
            "wraps guest memory": (mem_table([(2**64 - 4096, 8192, vu.UVA,
                                               0)]), [fd]),
            "fewer fds than regions": (mem_table([(0, 4096, vu.UVA, 0),
                                                  (8192, 4096, vu.UVA + 8192,
                                                   0)]), [fd]),
            "a pipe": (mem_table([(0, 4096, vu.UVA, 0)]), [r]),
            "no regions": (mem_table([]), []),
            "nine regions": (struct.pack("<II", 9, 0) + bytes(9 * 32), []),
        }
        for name, (payload, fds) in cases.items():
            assert c.ack(vu.SET_MEM_TABLE, payload, fds) == 1, name
            assert c.alive(), name
        for x in (fd, r, w):
            os.close(x)
        # A ring set up without usable memory never starts.
        assert c.ack(vu.SET_VRING_NUM, struct.pack("<II", 0, 8)) == 0
        assert c.ack(vu.SET_VRING_ADDR, struct.pack(
            "<IIQQQQ", 0, 0, vu.UVA, vu.UVA + 0x2000, vu.UVA + 0x1000,
            0)) == 0
        k = os.eventfd(0)
        assert c.ack(vu.SET_VRING_KICK, struct.pack("<Q", 0), [k]) == 0
        os.close(k)
        assert c.alive()
    assert still_serves(daemon)


def test_bad_rings(daemon):
    with fresh(daemon) as c:
        assert c.map_memory() == 0
        for num in (0, 3, 65536, 100000):
            assert c.ack(vu.SET_VRING_NUM, struct.pack("<II", 0, num)) == 1
        assert c.ack(vu.SET_VRING_NUM, struct.pack("<II", 200, 8)) == 1
        assert c.ack(vu.SET_VRING_BASE, struct.pack("<II", 0, 70000)) == 1
        assert c.ack(vu.SET_VRING_ENABLE, struct.pack("<II", 77, 1)) == 1
        k = os.eventfd(0)
        assert c.ack(vu.SET_VRING_KICK, struct.pack("<Q", 0x1ff), [k]) == 1
        assert c.ack(vu.SET_VRING_KICK, struct.pack("<Q", 0x100)) == 1
        assert c.ack(vu.SET_VRING_CALL, struct.pack("<Q", 0), [k, k]) == 1
        os.close(k)
        assert c.alive()
    # One front end at a time: each case on a connection of its own.
    for name, addrs in {
            "outside memory": (vu.UVA + 2 * MiB, vu.UVA + 0x2000,
                               vu.UVA + 0x1000),
            "misaligned": (vu.UVA + 8, vu.UVA + 0x2000, vu.UVA + 0x1000),
            "across the end": (vu.UVA + MiB - 64, vu.UVA + 0x2000,
                               vu.UVA + 0x1000),
            "physical, not virtual": (0, 0x2000, 0x1000),
    }.items():
        with fresh(daemon) as c2:
            assert c2.map_memory() == 0
            assert c2.ack(vu.SET_VRING_NUM, struct.pack("<II", 0, 8)) == 0
            assert c2.ack(vu.SET_VRING_ADDR, struct.pack(
                "<IIQQQQ", 0, 0, addrs[0], addrs[1], addrs[2], 0)) == 0
            k = os.eventfd(0)
            assert c2.ack(vu.SET_VRING_KICK, struct.pack("<Q", 0), [k]) == 0
            os.close(k)
            assert c2.ack(vu.SET_VRING_ENABLE, struct.pack("<II", 0, 1)) == 0
            assert c2.alive(), name
    assert "ring at" in reports(daemon)
    assert still_serves(daemon)


def hostile_chain(daemon, build, why, features=0, sock=None, queue=0):
    """A chain built by build(client) breaks the queue with `why`
    reported; the connection and the daemon carry on."""
    with Client(sock or daemon.blk) as c:
        c.negotiate(features)
        assert c.map_memory() == 0
        c.setup_queue(queue)
        build(c)
        assert wait_report(daemon, why), reports(daemon)[-2000:]
        assert c.alive()
        c.send(vu.GET_VRING_BASE, struct.pack("<II", queue, 0))
        c.reply()
    assert still_serves(daemon)


def test_descriptor_loop(daemon):
    def build(c):
        c.desc(0, vu.DATA, 16, vu.DESC_NEXT, 1)
        c.desc(1, vu.DATA, 16, vu.DESC_NEXT, 0)
        c.offer(0)
    hostile_chain(daemon, build, "descriptor chain at head 0 loops")


def test_descriptor_out_of_range(daemon):
    def build(c):
        c.desc(0, vu.DATA, 16, vu.DESC_NEXT, 9)
        c.offer(0)
    hostile_chain(daemon, build, "next descriptor 9 out of range")


def test_head_out_of_range(daemon):
    hostile_chain(daemon, lambda c: c.offer(300), "head 300 out of range")


def test_buffer_outside_memory(daemon):
    def build(c):
        c.desc(0, MiB - 8, 16, 0)
        c.offer(0)
    hostile_chain(daemon, build, "is not in guest memory")


def test_oversize_descriptor(daemon):
    def build(c):
        c.desc(0, 0, 0xffffffff, 0)
        c.offer(0)
    hostile_chain(daemon, build, "chain of more than")


def test_indirect_loop(daemon):
    def build(c):
        table = vu.DATA + 0x800
        c.desc(0, vu.DATA, 16, vu.DESC_NEXT, 1, table=table)
        c.desc(1, vu.DATA, 16, vu.DESC_NEXT, 0, table=table)
        c.desc(0, table, 32, vu.DESC_INDIRECT)
        c.offer(0)
    hostile_chain(daemon, build, "loops", features=vu.F_INDIRECT)


def test_indirect_without_feature(daemon):
    def build(c):
        c.desc(0, vu.DATA + 0x800, 32, vu.DESC_INDIRECT)
        c.offer(0)
    hostile_chain(daemon, build, "indirect descriptor without the feature")


def test_avail_index_runs_away(daemon):
    hostile_chain(daemon, lambda c: c.set_avail_idx(5000),
                  "available index moved")


def test_head_reused_in_flight(daemon):
    """The virtio-scsi event queue holds its buffers until an event: the
    same head offered twice is in flight twice, which would let a driver
    keep any number of requests on one head."""
    def build(c):
        c.desc(0, vu.DATA, 16, vu.DESC_WRITE)
        c.offer(0, kick=False)
        c.offer(0)
    hostile_chain(daemon, build, "made available while in use",
                  sock=daemon.scsi, queue=1)


def protocol_error(daemon, raw, fds=()):
    """raw bytes end the connection (EOF from the daemon)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(daemon.blk))
    if fds:
        socket.send_fds(s, [raw], list(fds))
    else:
        s.sendall(raw)
    try:
        assert s.recv(100) == b""
    finally:
        s.close()


def test_malformed_messages(daemon):
    fds_before = len(os.listdir(f"/proc/{daemon.p.pid}/fd"))
    hdr = lambda req, size, flags=1: struct.pack("<III", req, flags, size)
    protocol_error(daemon, hdr(vu.GET_FEATURES, 1 << 20))     # huge size
    protocol_error(daemon, hdr(vu.GET_FEATURES, 0, flags=2))  # version 2
    protocol_error(daemon, hdr(vu.GET_FEATURES, 0, flags=5))  # a "reply"
    protocol_error(daemon, hdr(vu.SET_VRING_NUM, 4) + bytes(4))
    protocol_error(daemon, hdr(vu.SET_FEATURES, 2) + bytes(2))
    protocol_error(daemon, hdr(vu.GET_VRING_BASE, 8) +
                   struct.pack("<II", 99, 0))
    protocol_error(daemon, hdr(vu.SET_VRING_ADDR, 12) + bytes(12))
    protocol_error(daemon, hdr(vu.SET_MEM_TABLE, 4) + bytes(4))
    # More fds than any message carries: refused, and closed.
    many = [os.eventfd(0) for _ in range(12)]
    protocol_error(daemon, hdr(vu.SET_OWNER, 0), many)
    for fd in many:
        os.close(fd)
    # A header cut short, then the client goes away.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(daemon.blk))
    s.sendall(b"\x01\x00")
    s.close()
    # Unknown requests fail alone.
    with fresh(daemon) as c:
        assert c.ack(77) == 1
        assert c.ack(vu.SET_CONFIG, struct.pack("<III", 0, 4, 0) +
                     bytes(4)) == 1
        c.send(vu.GET_CONFIG, struct.pack("<III", 250, 100, 0) + bytes(100))
        req, payload, _ = c.reply()
        assert req == vu.GET_CONFIG and payload == b""
        assert c.alive()
    assert still_serves(daemon)
    # Everything those connections brought was closed again.
    for _ in range(100):
        if len(os.listdir(f"/proc/{daemon.p.pid}/fd")) <= fds_before:
            break
        time.sleep(0.05)
    assert len(os.listdir(f"/proc/{daemon.p.pid}/fd")) <= fds_before


def test_blk_discard_zeroes_and_id(daemon):
    """Several discard / write-zeroes ranges in one request (more than
    one 16 MiB segment's worth is allowed), their errors, GET_ID."""
    with Client(daemon.blk) as c:
        c.negotiate()
        c.send(vu.GET_CONFIG, struct.pack("<III", 0, 60, 0) + bytes(60))
        _, cfg, _ = c.reply()
        seg_max, = struct.unpack_from("<I", cfg, 12 + 12)
        max_discard, max_dseg = struct.unpack_from("<II", cfg, 12 + 36)
        max_wz, max_wzseg, may_unmap = struct.unpack_from("<IIB", cfg,
                                                          12 + 48)
        assert seg_max == 126 and max_dseg == 256 and max_wzseg == 256
        assert max_discard >= 32768 and max_wz >= 32768   # > 16 MiB
        assert c.map_memory() == 0
        c.setup_queue()
        status, _ = c.blk(1, 0, out=b"\x77" * 65536)
        assert status == 0
        segs = b"".join(struct.pack("<QII", s, 8, f) for s, f in
                        ((0, 1), (16, 0), (64, 1)))
        status, _ = c.blk(13, 0, out=segs)          # write zeroes x3
        assert status == 0
        status, data = c.blk(0, 0, 65536)
        expect = bytearray(b"\x77" * 65536)
        for s in (0, 16, 64):
            expect[s * 512:(s + 8) * 512] = bytes(4096)
        assert status == 0 and data == bytes(expect)
        status, _ = c.blk(11, 0, out=struct.pack("<QII", 100, 8, 0) * 2)
        assert status == 0                           # discard x2
        status, _ = c.blk(11, 0, out=struct.pack("<QII", 0, 8, 1))
        assert status == 2                           # unmap flag: UNSUPP
        status, _ = c.blk(11, 0, out=struct.pack("<QII", 8191, 8, 0))
        assert status == 1                           # past the end
        status, _ = c.blk(13, 0, out=b"\0" * 15)
        assert status == 2                           # not whole segments
        status, ident = c.blk(8, 0, 20)
        assert status == 0 and ident.rstrip(b"\0") == b"b0"
        # restore the pattern the other tests read
        status, _ = c.blk(1, 0, out=b"\xa7" * 65536)
        assert status == 0


def test_scsi_task_management(daemon):
    with Client(daemon.scsi) as c:
        c.negotiate()
        assert c.map_memory() == 0
        c.setup_queue(index=0)
        base = vu.DATA

        def ctrl(req, resp_len):
            c.mem[base:base + len(req)] = req
            c.mem[base + 0x100:base + 0x100 + resp_len] = b"\xee" * resp_len
            c.desc(0, base, len(req), vu.DESC_NEXT, 1)
            c.desc(1, base + 0x100, resp_len, vu.DESC_WRITE)
            c.offer(0)
            _, written = c.wait_used()
            return bytes(c.mem[base + 0x100:base + 0x100 + written])

        lun0 = bytes([1, 0, 0x40, 0, 0, 0, 0, 0])
        tmf = lambda sub, lun, tag=0: struct.pack("<II", 0, sub) + lun + \
            struct.pack("<Q", tag)
        assert ctrl(tmf(5, lun0), 1) == b"\x00"            # LUN reset
        assert ctrl(tmf(0, lun0, 42), 1) == b"\x00"        # abort, idle
        assert ctrl(tmf(6, lun0, 42), 1) == b"\x00"        # query: none
        assert ctrl(tmf(2, lun0), 1) == bytes([11])        # CLEAR ACA
        assert ctrl(tmf(5, bytes([1, 9, 0x40, 0]) + bytes(4)), 1) == \
            bytes([3])                                     # bad target
        assert ctrl(tmf(5, bytes([1, 0, 0x40, 7]) + bytes(4)), 1) == \
            bytes([12])                                    # no LUN 7
        an = struct.pack("<I", 1) + lun0 + struct.pack("<I", 0xff)
        assert ctrl(an, 5) == struct.pack("<IB", 0, 0)     # no events
        assert ctrl(struct.pack("<I", 9), 1) == b""        # unknown type
        c.send(vu.GET_VRING_BASE, struct.pack("<II", 0, 0))
        c.reply()
    assert still_serves(daemon)


def test_clean_shutdown_after_all_that(daemon):
    assert still_serves(daemon)
    daemon.p.send_signal(signal.SIGTERM)
    assert daemon.p.wait(timeout=30) == 0, reports(daemon)
    assert not daemon.blk.exists() and not daemon.scsi.exists()
