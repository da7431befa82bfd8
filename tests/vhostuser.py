"""A small vhost-user front end in Python, for tests that talk to
imgtool's back ends directly: messages with fds, a memfd guest memory,
split rings, and virtio-blk / virtio-scsi requests.  Written from QEMU's
docs/interop/vhost-user.rst and the virtio 1.x specification.

Hostile tests use its pieces to send what QEMU never would.
"""
import mmap
import os
import select
import socket
import struct

# Requests
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 15, 16, 17
SET_VRING_ENABLE, GET_CONFIG, SET_CONFIG = 18, 24, 25
GET_INFLIGHT_FD, SET_INFLIGHT_FD = 31, 32

F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32
F_INDIRECT = 1 << 28
F_EVENT_IDX = 1 << 29
P_MQ, P_REPLY_ACK, P_CONFIG = 1 << 0, 1 << 3, 1 << 9

VERSION, REPLY, NEED_REPLY = 1, 1 << 2, 1 << 3

DESC_NEXT, DESC_WRITE, DESC_INDIRECT = 1, 2, 4

MEM_SIZE = 1 << 20
UVA = 0x7f0000000000
DESC, AVAIL, USED, DATA = 0x0, 0x1000, 0x2000, 0x10000


class Closed(Exception):
    """The back end dropped the connection."""


class Client:
    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(str(path))
        self.mem = None
        self.memfd = None
        self.kick = self.call = None
        self.avail_idx = 0
        self.used_seen = 0

    def close(self):
        for fd in (self.kick, self.call, self.memfd):
            if fd is not None:
                os.close(fd)
        if self.mem is not None:
            self.mem.close()
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- messages ----

    def send(self, req, payload=b"", fds=(), flags=VERSION):
        data = struct.pack("<III", req, flags, len(payload)) + payload
        if fds:
            socket.send_fds(self.s, [data], list(fds))
        else:
            self.s.sendall(data)

    def _read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise Closed()
            out += chunk
        return out

    def reply(self):
        """(request, payload, fds) of the next reply."""
        data, fds, _flags, _addr = socket.recv_fds(self.s, 12, 4)
        if not data:
            raise Closed()
        data += self._read(12 - len(data))
        req, flags, size = struct.unpack("<III", data)
        assert flags & REPLY, flags
        return req, self._read(size), fds

    def call_u64(self, req):
        self.send(req)
        r, payload, _ = self.reply()
        assert r == req and len(payload) == 8
        return struct.unpack("<Q", payload)[0]

    def ack(self, req, payload=b"", fds=()):
        """Sends with NEED_REPLY; 0 when the back end did it."""
        self.send(req, payload, fds, VERSION | NEED_REPLY)
        r, p, _ = self.reply()
        assert r == req and len(p) == 8, (r, p)
        return struct.unpack("<Q", p)[0]

    def alive(self):
        """The connection still answers."""
        try:
            self.call_u64(GET_FEATURES)
            return True
        except (Closed, OSError):
            return False

    # ---- setting up a device ----

    def negotiate(self, extra_features=0):
        feats = self.call_u64(GET_FEATURES)
        self.features = feats
        want = F_VERSION_1 | F_PROTOCOL_FEATURES | extra_features
        assert feats & want == want, hex(feats)
        self.send(SET_FEATURES, struct.pack("<Q", want))
        proto = self.call_u64(GET_PROTOCOL_FEATURES)
        self.send(SET_PROTOCOL_FEATURES,
                  struct.pack("<Q", proto & (P_REPLY_ACK | P_CONFIG | P_MQ)))
        self.send(SET_OWNER)
        return feats, proto

    def map_memory(self, size=MEM_SIZE):
        self.memfd = os.memfd_create("guest")
        os.ftruncate(self.memfd, size)
        self.mem = mmap.mmap(self.memfd, size)
        return self.ack(SET_MEM_TABLE, mem_table([(0, size, UVA, 0)]),
                        [self.memfd])

    def setup_queue(self, index=0, num=8):
        self.num = num
        assert self.ack(SET_VRING_NUM, struct.pack("<II", index, num)) == 0
        assert self.ack(SET_VRING_BASE, struct.pack("<II", index, 0)) == 0
        assert self.ack(SET_VRING_ADDR, struct.pack(
            "<IIQQQQ", index, 0, UVA + DESC, UVA + USED, UVA + AVAIL,
            0)) == 0
        self.kick = os.eventfd(0, os.EFD_NONBLOCK)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        assert self.ack(SET_VRING_CALL, struct.pack("<Q", index),
                        [self.call]) == 0
        assert self.ack(SET_VRING_KICK, struct.pack("<Q", index),
                        [self.kick]) == 0
        assert self.ack(SET_VRING_ENABLE, struct.pack("<II", index, 1)) == 0

    # ---- rings ----

    def desc(self, i, addr, length, flags=0, nxt=0, table=DESC):
        struct.pack_into("<QIHH", self.mem, table + 16 * i, addr, length,
                         flags, nxt)

    def offer(self, head, kick=True):
        struct.pack_into("<H", self.mem, AVAIL + 4 + 2 * (self.avail_idx %
                                                          self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xffff
        struct.pack_into("<H", self.mem, AVAIL + 2, self.avail_idx)
        if kick:
            os.eventfd_write(self.kick, 1)

    def set_avail_idx(self, idx):
        self.avail_idx = idx & 0xffff
        struct.pack_into("<H", self.mem, AVAIL + 2, self.avail_idx)
        os.eventfd_write(self.kick, 1)

    def used_idx(self):
        return struct.unpack_from("<H", self.mem, USED + 2)[0]

    def wait_used(self, timeout=10):
        """(head, len) of the next used entry."""
        while self.used_idx() == self.used_seen:
            r, _, _ = select.select([self.call], [], [], timeout)
            if not r:
                raise TimeoutError("no completion")
            try:
                os.eventfd_read(self.call)
            except BlockingIOError:
                pass
        e = struct.unpack_from("<II", self.mem, USED + 4 + 8 * (
            self.used_seen % self.num))
        self.used_seen = (self.used_seen + 1) & 0xffff
        return e

    # ---- virtio-blk ----

    def blk(self, rtype, sector, data_len=0, out=b"", base=DATA):
        """One virtio-blk request; returns (status, data read)."""
        hdr, buf, status = base, base + 0x100, base + 0x100 + max(
            data_len, len(out)) + 16
        self.mem[hdr:hdr + 16] = struct.pack("<IIQ", rtype, 0, sector)
        self.mem[status] = 0xff
        self.desc(0, hdr, 16, DESC_NEXT, 1)
        if out:
            self.mem[buf:buf + len(out)] = out
            self.desc(1, buf, len(out), DESC_NEXT, 2)
        elif data_len:
            self.desc(1, buf, data_len, DESC_NEXT | DESC_WRITE, 2)
        else:
            self.desc(0, hdr, 16, DESC_NEXT, 2)
        self.desc(2, status, 1, DESC_WRITE)
        self.offer(0)
        head, _ = self.wait_used()
        assert head == 0
        return self.mem[status], bytes(self.mem[buf:buf + data_len])


def mem_table(regions):
    out = struct.pack("<II", len(regions), 0)
    for r in regions:
        out += struct.pack("<QQQQ", *r)
    return out
