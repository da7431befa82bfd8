"""Hostile NBD clients against `imgtool serve`: malformed and oversized
options and requests, options out of order, clients that vanish in the
middle of a reply.  Each answer is the one the NBD specification asks
for, and after every abuse the same daemon still serves a well-behaved
client (one daemon for the module, so the abuse accumulates)."""
import struct

import pytest

import nbdproto as N
from conftest import Serve, qemu_img, qemu_io

SIZE = 8 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    img = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", img, str(SIZE))
    qemu_io("-c", f"write -P 0x5a 0 {SIZE}", img)
    s = tmp / "s.sock"
    d = Serve(tmp, "--nbd", s, "--writable", "--name", "disk", img)
    with d:
        d.sock = s
        d.img = img
        yield d
        assert d.stop() == 0, d.stderr


def healthy(server):
    """A well-behaved client still gets served."""
    c = N.Client(server.sock)
    c.connect_export("disk")
    err, data = c.read(0, 4096)
    assert err == 0 and len(data) == 4096
    c.close()


@pytest.fixture
def client(server):
    c = N.Client(server.sock)
    yield c
    c.close()
    healthy(server)


def test_unknown_client_flags_close(client):
    client.greeting()
    client.send(struct.pack(">I", 0x80))
    assert client.closed()


def test_option_without_magic_closes(client):
    client.handshake()
    client.send(struct.pack(">QII", 0x1234, N.OPT_GO, 0))
    assert client.closed()


def test_option_lengths_checked(client):
    client.handshake()
    # INFO whose name length runs past the option
    client.opt(N.OPT_INFO, struct.pack(">I", 100) + b"disk" + b"\0\0")
    assert client.opt_replies()[-1][1] == N.REP_ERR_INVALID
    # info request count that does not match the length
    client.opt(N.OPT_GO, struct.pack(">I", 4) + b"disk" + b"\0\x05")
    assert client.opt_replies()[-1][1] == N.REP_ERR_INVALID
    # too short to hold anything
    client.opt(N.OPT_GO, b"\0")
    assert client.opt_replies()[-1][1] == N.REP_ERR_INVALID
    client.opt(N.OPT_LIST, b"junk")
    assert client.opt_replies()[-1][1] == N.REP_ERR_INVALID
    client.opt(N.OPT_STRUCTURED, b"x")
    assert client.opt_replies()[-1][1] == N.REP_ERR_INVALID
    client.opt(N.OPT_STARTTLS)
    assert client.opt_replies()[-1][1] == N.REP_ERR_POLICY
    client.opt(99, b"whatever")
    assert client.opt_replies()[-1][1] == N.REP_ERR_UNSUP
    # an unknown export, then the right one: the connection is fine
    r = client.go("nope")
    assert r["replies"][-1][1] == N.REP_ERR_UNKNOWN
    r = client.go("disk", option=N.OPT_INFO)
    assert r["size"] == SIZE
    r = client.go("disk")
    assert r["replies"][-1][1] == N.REP_ACK
    assert client.simple(N.CMD_FLUSH) == 0


def test_oversized_option_is_refused_and_skipped(client):
    client.handshake()
    big = 1 << 20
    client.opt(N.OPT_GO, b"\0" * big)
    assert client.opt_replies()[-1][1] == N.REP_ERR_TOO_BIG
    r = client.go("disk")
    assert r["replies"][-1][1] == N.REP_ACK


def test_huge_declared_option_then_vanish(server):
    """An option claiming 4 GiB, then a client that goes away: nothing
    is allocated for it and the daemon carries on."""
    c = N.Client(server.sock)
    c.handshake()
    c.opt(N.OPT_INFO, b"x" * 1000, length=0xffffffff)
    c.close()
    healthy(server)


def test_meta_context_rules(client):
    client.handshake()
    ctx, r = client.meta("disk", ["base:allocation"])
    assert r == N.REP_ERR_INVALID, "SET needs structured replies first"
    ctx, r = client.meta("disk", [], option=N.OPT_LIST_META)
    assert r == N.REP_ACK and "base:allocation" in ctx.values()
    client.structured_reply()
    assert client.structured_reply()[-1][1] == N.REP_ERR_INVALID
    ctx, r = client.meta("nope", ["base:allocation"])
    assert r == N.REP_ERR_UNKNOWN
    # a query whose length runs past the option
    client.opt(N.OPT_SET_META, struct.pack(">I", 4) + b"disk" +
               struct.pack(">II", 1, 500) + b"base:allocation")
    assert client.opt_replies()[-1][1] == N.REP_ERR_INVALID
    ctx, r = client.meta("disk", ["base:allocation", "qemu:nothing",
                                  "base:"])
    assert r == N.REP_ACK and list(ctx.values()) == ["base:allocation"]
    client.go("disk")
    st = client.block_status(0, 65536)
    assert list(st) == list(ctx)


def test_starttls_refused_without_tls(server):
    """Without TLS configured STARTTLS is refused by policy and the
    options after it are served in the clear."""
    c = N.Client(server.sock)
    c.handshake()
    c.opt(N.OPT_STARTTLS)
    c.opt(N.OPT_GO, N.Client.name_data("disk"))
    assert c.opt_replies()[-1][1] == N.REP_ERR_POLICY
    assert c.opt_replies()[-1][1] == N.REP_ACK
    c.close()


def test_export_name_unknown_closes(client):
    client.handshake()
    client.opt(N.OPT_EXPORT_NAME, b"nope")
    assert client.closed()


def test_export_name_and_old_style_zeroes(client):
    client.handshake(flags=N.FLAG_FIXED)
    client.opt(N.OPT_EXPORT_NAME, b"disk")
    size, flags = struct.unpack(">QH", client.recv(10))
    assert size == SIZE
    assert client.recv(124) == b"\0" * 124
    assert client.read(0, 512)[0] == 0


def test_bad_requests_get_errors(client):
    client.connect_export("disk", structured=False)
    c = client
    assert c.simple(N.CMD_READ, SIZE - 512, 1024) == N.EINVAL
    assert c.simple(N.CMD_WRITE, SIZE - 2, 4, data=b"abcd") == N.ENOSPC
    assert c.simple(N.CMD_WRITE_ZEROES, SIZE, 512) == N.ENOSPC
    assert c.simple(N.CMD_TRIM, 2 ** 64 - 512, 1024) == N.EINVAL
    assert c.simple(N.CMD_READ, 0, 0) == N.EINVAL
    assert c.simple(N.CMD_READ, 0, 64 << 20) == N.EINVAL
    assert c.simple(N.CMD_READ, 0, 512, flags=N.F_DF) == N.EINVAL
    assert c.simple(N.CMD_READ, 0, 512, flags=0x8000) == N.EINVAL
    assert c.simple(N.CMD_WRITE, 0, 4, flags=N.F_REQ_ONE,
                    data=b"abcd") == N.EINVAL
    assert c.simple(N.CMD_BLOCK_STATUS, 0, 512) == N.EINVAL
    assert c.simple(77, 0, 512) == N.EINVAL
    # The stream is still in step: a good read answers right.
    err, data = c.read(0, 512)
    assert err == 0 and len(data) == 512


def test_oversized_write_is_skipped_in_step(client):
    """A 40 MiB write (above the 32 MiB maximum) is refused after its
    data is read and dropped; the next request is parsed correctly."""
    client.connect_export("disk")
    n = 40 << 20
    h = client.request(N.CMD_WRITE, 0, n, data=b"\x99" * n)
    handle, err, _ = client.reply()
    assert (handle, err) == (h, N.EINVAL)
    err, data = client.read(0, 4096)
    assert err == 0 and data != b"\x99" * 4096


def test_bad_request_magic_closes(client):
    client.connect_export("disk")
    client.send(struct.pack(">IHHQQI", 0xdeadbeef, 0, N.CMD_READ, 1, 0, 512))
    assert client.closed()


def test_many_requests_in_flight(client):
    """500 pipelined requests (more than the per-connection bound): all
    answered, none lost, with the right data.  The client sends from a
    thread while it reads, as the spec asks of clients: one that only
    sends would deadlock against any server that bounds what it holds."""
    import threading
    client.connect_export("disk")
    client.simple(N.CMD_WRITE, 1 << 20, 4096, data=bytes(range(256)) * 16)
    handles = {i + 1000: (i % 8) * 512 for i in range(500)}
    for h in handles:
        client.pending[h] = (N.CMD_READ, 512)
    reqs = b"".join(struct.pack(">IHHQQI", N.REQUEST_MAGIC, 0, N.CMD_READ,
                                h, (1 << 20) + off, 512)
                    for h, off in handles.items())
    sender = threading.Thread(target=client.send, args=(reqs,))
    sender.start()
    for _ in range(500):
        h, err, chunks = client.reply()
        assert err == 0
        off = handles.pop(h)
        data = b"".join(p[8:] for t, p in chunks if t == N.T_DATA)
        assert data == (bytes(range(256)) * 16)[off:off + 512]
    sender.join()
    assert not handles


def test_disconnect_mid_reply(server):
    """Clients that ask for a lot and vanish: no crash, no leak, others
    carry on."""
    for _ in range(5):
        c = N.Client(server.sock)
        c.connect_export("disk")
        for i in range(40):
            c.request(N.CMD_READ, 0, 1 << 20)
        c.recv(100)
        c.close()
    c = N.Client(server.sock)
    c.connect_export("disk")
    for i in range(8):
        c.request(N.CMD_WRITE, i << 20, 1 << 20, data=b"\x77" * (1 << 20))
    c.close()
    healthy(server)


def test_disc_answers_what_is_in_flight(client):
    client.connect_export("disk")
    hs = [client.request(N.CMD_READ, i * 4096, 4096) for i in range(16)]
    client.request(N.CMD_DISC)
    got = set()
    for _ in hs:
        h, err, _ = client.reply()
        assert err == 0
        got.add(h)
    assert got == set(hs)
    assert client.closed()


def test_write_fua_trim_zeroes_cache(client):
    client.connect_export("disk")
    c = client
    assert c.flags & N.TF_SEND_FUA and c.flags & N.TF_SEND_TRIM
    assert c.flags & N.TF_FAST_ZERO and c.flags & N.TF_SEND_CACHE
    assert c.simple(N.CMD_WRITE, 2 << 20, 4096, flags=N.F_FUA,
                    data=b"\x21" * 4096) == 0
    assert c.read(2 << 20, 4096) == (0, b"\x21" * 4096)
    assert c.simple(N.CMD_WRITE_ZEROES, 2 << 20, 4096,
                    flags=N.F_NO_HOLE | N.F_FUA) == 0
    assert c.read(2 << 20, 4096) == (0, bytes(4096))
    # fast zero: done, or refused at once with ENOTSUP, never slow
    r = c.simple(N.CMD_WRITE_ZEROES, 3 << 20, 1 << 20, flags=N.F_FAST_ZERO)
    assert r in (0, N.ENOTSUP)
    assert c.simple(N.CMD_TRIM, 4 << 20, 1 << 20, flags=N.F_FUA) == 0
    assert c.simple(N.CMD_CACHE, 0, SIZE) == 0
    assert c.simple(N.CMD_FLUSH) == 0


def test_many_connections(server):
    clients = []
    for i in range(40):
        c = N.Client(server.sock)
        c.connect_export("disk")
        clients.append(c)
    for i, c in enumerate(clients):
        assert c.read(i * 4096, 4096)[0] == 0
    for c in clients:
        c.close()
    healthy(server)


def test_slow_handshake_is_dropped(tmp_path):
    """A client that connects and then says nothing (or stops in the
    middle of an option) is dropped after handshake-max-seconds; one
    that finished negotiating is not."""
    img = tmp_path / "r.raw"
    img.write_bytes(bytes(1 << 20))
    s = tmp_path / "s.sock"
    with Serve(tmp_path, "--blockdev",
               f"driver=file,node-name=f,filename={img}",
               "--nbd-server", f"addr.type=unix,addr.path={s},"
                               "handshake-max-seconds=1",
               "--export", "type=nbd,id=e,node-name=f,name=disk"):
        silent = N.Client(s)
        partial = N.Client(s)
        partial.handshake()
        partial.send(struct.pack(">QII", N.IHAVEOPT, N.OPT_GO, 100) + b"x")
        done = N.Client(s)
        done.connect_export("disk")
        import time
        time.sleep(1.5)
        assert silent.closed(timeout=5)
        assert partial.closed(timeout=5)
        assert done.read(0, 512) == (0, bytes(512))
        for c in (silent, partial, done):
            c.close()
