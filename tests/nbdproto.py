"""A small NBD client for tests, written from the NBD protocol
specification: it does exactly what it is told, in the order it is told,
so tests can send what well-behaved clients never would (options out of
order, bad lengths, oversized and malformed requests, disconnects in the
middle of a reply)."""
import socket
import ssl
import struct

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
REPLY_MAGIC = 0x3e889045565a9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668e33ef

FLAG_FIXED, FLAG_NO_ZEROES = 1, 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST = 1, 2, 3
OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED = 5, 6, 7, 8
OPT_LIST_META, OPT_SET_META = 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = ERR | 1, ERR | 2, ERR | 3
REP_ERR_TLS_REQD, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = ERR | 5, ERR | 6, ERR | 9

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 4, 5, 6, 7
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16

T_NONE, T_DATA, T_HOLE, T_STATUS = 0, 1, 2, 5
T_ERROR, T_ERROR_OFFSET = (1 << 15) | 1, (1 << 15) | 2

EPERM, EIO, EINVAL, ENOSPC, ENOTSUP = 1, 5, 22, 28, 95

# transmission flags
TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 2, 4, 8
TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_SEND_DF = 32, 64, 128
TF_MULTI_CONN, TF_SEND_CACHE, TF_FAST_ZERO = 256, 1024, 2048


class Closed(Exception):
    pass


class Client:
    def __init__(self, addr, timeout=30):
        if isinstance(addr, tuple):
            self.sock = socket.create_connection(addr, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(str(addr))
        self.handle = 0
        self.pending = {}      # handle -> (type, length)
        self.structured = False

    # ---- raw bytes ----
    def send(self, data):
        self.sock.sendall(data)

    def recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise Closed(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def closed(self, timeout=10):
        """True when the server closed the connection (EOF)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    # ---- handshake ----
    def greeting(self):
        magic, opts, flags = struct.unpack(">QQH", self.recv(18))
        assert magic == NBDMAGIC and opts == IHAVEOPT, (magic, opts)
        self.server_flags = flags
        return flags

    def handshake(self, flags=FLAG_FIXED | FLAG_NO_ZEROES):
        self.greeting()
        self.client_flags = flags
        self.send(struct.pack(">I", flags))

    def opt(self, option, data=b"", length=None):
        self.send(struct.pack(">QII", IHAVEOPT, option,
                              len(data) if length is None else length) + data)

    def opt_reply(self):
        magic, option, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == REPLY_MAGIC, hex(magic)
        return option, rtype, self.recv(length)

    def opt_replies(self):
        """Replies to one option up to the final one (ACK or an error)."""
        out = []
        while True:
            r = self.opt_reply()
            out.append(r)
            if r[1] == REP_ACK or r[1] & ERR:
                return out

    def structured_reply(self):
        self.opt(OPT_STRUCTURED)
        r = self.opt_replies()
        if r[-1][1] == REP_ACK:
            self.structured = True
        return r

    @staticmethod
    def name_data(name, info=()):
        n = name.encode()
        return (struct.pack(">I", len(n)) + n +
                struct.pack(">H", len(info)) +
                b"".join(struct.pack(">H", i) for i in info))

    def go(self, name="", info=(), option=OPT_GO):
        self.opt(option, self.name_data(name, info))
        replies = self.opt_replies()
        out = {"replies": replies}
        for _, t, d in replies:
            if t == REP_INFO and struct.unpack(">H", d[:2])[0] == 0:
                out["size"], out["flags"] = struct.unpack(">QH", d[2:12])
        return out

    def meta(self, name, queries, option=OPT_SET_META):
        n = name.encode()
        data = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
        for q in queries:
            qb = q.encode()
            data += struct.pack(">I", len(qb)) + qb
        self.opt(option, data)
        replies = self.opt_replies()
        ctx = {}
        for _, t, d in replies:
            if t == REP_META:
                ctx[struct.unpack(">I", d[:4])[0]] = d[4:].decode()
        return ctx, replies[-1][1]

    def starttls(self, context, hostname=None):
        self.opt(OPT_STARTTLS)
        r = self.opt_replies()
        if r[-1][1] != REP_ACK:
            return r[-1][1]
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        return REP_ACK

    # ---- transmission ----
    def request(self, cmd, offset=0, length=0, flags=0, data=b"",
                handle=None):
        if handle is None:
            self.handle += 1
            handle = self.handle
        self.pending[handle] = (cmd, length)
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle,
                              offset, length) + data)
        return handle

    def reply(self):
        """One reply: a simple one, or every chunk of a structured one up
        to its DONE chunk (chunks of other handles in between are kept
        for later).  Returns (handle, error, payload) where payload is
        bytes for reads and a list of chunks for structured replies."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_MAGIC:
            error, handle = struct.unpack(">IQ", self.recv(12))
            cmd, length = self.pending.pop(handle, (None, 0))
            data = b""
            if cmd == CMD_READ and error == 0:
                data = self.recv(length)
            return handle, error, data
        assert magic == STRUCTURED_MAGIC, hex(magic)
        chunks = {}
        while True:
            flags, rtype, handle, length = struct.unpack(">HHQI",
                                                         self.recv(16))
            payload = self.recv(length)
            chunks.setdefault(handle, []).append((rtype, payload))
            if flags & 1:
                self.pending.pop(handle, None)
                err = 0
                for t, p in chunks[handle]:
                    if t & (1 << 15):
                        err = struct.unpack(">I", p[:4])[0]
                return handle, err, chunks[handle]
            magic = struct.unpack(">I", self.recv(4))[0]
            assert magic == STRUCTURED_MAGIC, hex(magic)

    def read(self, offset, length, flags=0):
        h = self.request(CMD_READ, offset, length, flags)
        handle, err, payload = self.reply()
        assert handle == h
        if err or not self.structured:
            return err, payload
        data = bytearray(length)
        for t, p in payload:
            if t == T_DATA:
                off = struct.unpack(">Q", p[:8])[0] - offset
                data[off:off + len(p) - 8] = p[8:]
        return 0, bytes(data)

    def simple(self, cmd, offset=0, length=0, flags=0, data=b""):
        """Sends a command and returns its error (0: success)."""
        h = self.request(cmd, offset, length, flags, data)
        handle, err, _ = self.reply()
        assert handle == h
        return err

    def block_status(self, offset, length, flags=0):
        """{context id: [(length, flags), ...]} or an error number."""
        h = self.request(CMD_BLOCK_STATUS, offset, length, flags)
        handle, err, chunks = self.reply()
        assert handle == h
        if err:
            return err
        out = {}
        for t, p in chunks:
            if t == T_STATUS:
                cid = struct.unpack(">I", p[:4])[0]
                out[cid] = [struct.unpack(">II", p[i:i + 8])
                            for i in range(4, len(p), 8)]
        return out

    def connect_export(self, name="", structured=True):
        self.handshake()
        if structured:
            self.structured_reply()
        r = self.go(name)
        assert r["replies"][-1][1] == REP_ACK, r
        self.size, self.flags = r["size"], r["flags"]
        return r
