"""The NBD server of `imgtool serve` against real clients: nbdinfo's
--map for every metadata context equals what it prints against qemu-nbd
on the same image; qemu-img, qemu-io and nbdcopy read and write through
it; TLS with X.509 certificates and with PSK, with nbdinfo and qemu-img
as clients."""
import os
import shutil
import struct
import subprocess
import time

import pytest

import nbdproto as N
from conftest import (Serve, nbd_uri, qemu_check_clean, qemu_img, qemu_io,
                      run, same_content, start_qemu_nbd, stop_process,
                      write_random_file)


def qemu_nbd(tmp, *args):
    """qemu-nbd serving with args on a unix socket; returns (proc, sock)."""
    sock = tmp / f"qn{time.monotonic_ns()}.sock"
    return start_qemu_nbd(sock, *args), sock


def stop(p):
    stop_process(p, timeout=30)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A qcow2 overlay over a qcow2 base, with zero clusters, discarded
    ranges, a partial cluster at the end of the host file, and two
    bitmaps of different granularity."""
    tmp = tmp_path_factory.mktemp("chain")
    base, top = tmp / "base.qcow2", tmp / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "16M")
    qemu_io("-c", "write -P 1 0 2M", "-c", "write -P 2 6M 1M",
            "-c", "write -z 10M 512k", base)
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_img("bitmap", "--add", top, "b0")
    qemu_img("bitmap", "--add", "-g", "128k", top, "b1")
    qemu_io("-c", "write -P 3 1M 2M", "-c", "write -z 6M 64k",
            "-c", "discard 12M 1M", "-c", "write -P 4 15M 100k", top)
    qemu_img("bitmap", "--add", top, "late")
    qemu_io("-c", "write -P 5 200k 8k", top)
    return top


@pytest.fixture(scope="module")
def sparse_raw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raw")
    p = tmp / "s.raw"
    with open(p, "wb") as f:
        f.truncate(8 << 20)
        for off in (0, 3 << 20, (5 << 20) + 4096):
            f.seek(off)
            f.write(os.urandom(300000))
    return p


def maps(sock, contexts, name=""):
    return {c: run(["nbdinfo", f"--map={c}", nbd_uri(sock, name)]).stdout
            for c in contexts}


CHAIN_CONTEXTS = ["base:allocation", "qemu:allocation-depth",
                  "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1",
                  "qemu:dirty-bitmap:late"]


def test_map_equals_qemu_nbd_chain(tmp, chain):
    p, qs = qemu_nbd(tmp, "-r", "-f", "qcow2", "-A", "-B", "b0", "-B", "b1",
                     "-B", "late", chain)
    try:
        want = maps(qs, CHAIN_CONTEXTS)
        ctx_q = run(["nbdinfo", "--json", nbd_uri(qs)]).stdout
    finally:
        stop(p)
    s = tmp / "i.sock"
    with Serve(tmp, "--nbd", s, "-A", "-B", "b0", "--bitmap", "b1",
               "-B", "late", chain):
        got = maps(s, CHAIN_CONTEXTS)
        ctx_i = run(["nbdinfo", "--json", nbd_uri(s)]).stdout
    for c in CHAIN_CONTEXTS:
        assert got[c] == want[c], f"{c}:\n{got[c]}\n!=\n{want[c]}"
    import json
    assert sorted(json.loads(ctx_i)["exports"][0]["contexts"]) == \
        sorted(json.loads(ctx_q)["exports"][0]["contexts"])


def test_map_equals_qemu_nbd_raw(tmp, sparse_raw):
    ctxs = ["base:allocation", "qemu:allocation-depth"]
    p, qs = qemu_nbd(tmp, "-r", "-f", "raw", "-A", sparse_raw)
    try:
        want = maps(qs, ctxs)
    finally:
        stop(p)
    s = tmp / "i.sock"
    with Serve(tmp, "--nbd", s, "-f", "raw", "-A", sparse_raw):
        got = maps(s, ctxs)
    assert got == want


def test_block_status_req_one_and_limits(tmp, chain):
    s = tmp / "i.sock"
    with Serve(tmp, "--nbd", s, "-A", "-B", "b0", chain):
        c = N.Client(s)
        c.handshake()
        c.structured_reply()
        ctx, r = c.meta("", ["base:allocation", "qemu:allocation-depth",
                             "qemu:dirty-bitmap:b0"])
        assert r == N.REP_ACK and len(ctx) == 3
        c.go("")
        st = c.block_status(0, 16 << 20, flags=N.F_REQ_ONE)
        assert all(len(v) == 1 for v in st.values()), st
        st = c.block_status(1 << 20, 4096)
        for cid, ext in st.items():
            assert sum(l for l, _ in ext) == 4096, (ctx[cid], ext)
        assert c.block_status(16 << 20, 512) == N.EINVAL
        c.close()


def test_qemu_tools_read_and_write(tmp, chain):
    img = tmp / "w.qcow2"
    shutil.copy(chain, img)
    qemu_img("rebase", "-u", "-b", chain.parent / "base.qcow2", "-F",
             "qcow2", img)
    s = tmp / "i.sock"
    with Serve(tmp, "--nbd", s, "--writable", img) as d:
        uri = nbd_uri(s)
        assert same_content(uri, chain, "raw", "qcow2")
        qemu_io("-f", "raw", "-c", "write -P 0x61 -f 0 64k",
                "-c", "aio_write -P 0x62 1M 1M", "-c", "aio_write -P 0x63 3M 4k",
                "-c", "aio_flush", "-c", "write -z -u 5M 1M",
                "-c", "discard 7M 64k", "-c", "flush",
                "-c", "read -P 0x62 1M 1M", uri)
        out = tmp / "copy.raw"
        qemu_img("convert", "-f", "raw", "-O", "raw", uri, out)
        assert d.stop() == 0
    qemu_check_clean(img)
    assert same_content(out, img, "raw", "qcow2")
    qemu_io("-c", "read -P 0x61 0 64k", "-c", "read -P 0 5M 1M", img)


def test_nbdcopy_both_ways(tmp):
    src = tmp / "src.raw"
    write_random_file(src, 24 << 20)
    with open(src, "r+b") as f:
        f.seek(8 << 20)
        f.write(bytes(4 << 20))
    dst = tmp / "dst.qcow2"
    qemu_img("create", "-f", "qcow2", dst, "24M")
    s = tmp / "i.sock"
    with Serve(tmp, "--nbd", s, "--writable", dst) as d:
        info = run(["nbdinfo", "--json", nbd_uri(s)]).stdout
        assert '"can_multi_conn": true' in info
        run(["nbdcopy", "--connections=4", "--requests=16", src, nbd_uri(s)])
        back = tmp / "back.raw"
        run(["nbdcopy", nbd_uri(s), back])
        assert back.read_bytes() == src.read_bytes()
        assert d.stop() == 0
    qemu_check_clean(dst)
    assert same_content(src, dst, "raw", "qcow2")


def test_many_clients_at_once(tmp, sparse_raw):
    s = tmp / "i.sock"
    with Serve(tmp, "--nbd", s, "-f", "raw", "-e", "3", sparse_raw) as d:
        readers = [subprocess.Popen(["qemu-img", "convert", "-f", "raw",
                                     "-O", "raw", nbd_uri(s),
                                     tmp / f"r{i}.raw"])
                   for i in range(6)]
        assert [r.wait(timeout=120) for r in readers] == [0] * 6
        for i in range(6):
            assert (tmp / f"r{i}.raw").read_bytes() == sparse_raw.read_bytes()
        assert d.stop() == 0


# ---------------------------------------------------------------------------
# TLS

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1, a client
    certificate, a second CA nobody trusts, and a PSK file."""
    d = tmp_path_factory.mktemp("pki")

    def sh(*a):
        run(["openssl", *a])

    def ca(name):
        sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
           d / f"{name}-key.pem", "-out", d / f"{name}-cert.pem", "-days",
           "2", "-subj", f"/CN={name}")

    def cert(name, cn, usage, ca_name):
        sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout",
           d / f"{name}-key.pem", "-out", d / f"{name}.csr", "-subj",
           f"/CN={cn}")
        (d / f"{name}.ext").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            f"extendedKeyUsage={usage}\n"
            "keyUsage=digitalSignature,keyEncipherment\n")
        sh("x509", "-req", "-in", d / f"{name}.csr", "-CA",
           d / f"{ca_name}-cert.pem", "-CAkey", d / f"{ca_name}-key.pem",
           "-CAcreateserial", "-out", d / f"{name}-cert.pem", "-days", "2",
           "-extfile", d / f"{name}.ext")

    ca("ca")
    ca("rogue")
    cert("server", "localhost", "serverAuth", "ca")
    cert("client", "client", "clientAuth", "ca")
    cert("intruder", "intruder", "clientAuth", "rogue")
    dirs = {}
    for name, files in {
        "server": {"ca-cert.pem": "ca-cert.pem",
                   "server-cert.pem": "server-cert.pem",
                   "server-key.pem": "server-key.pem"},
        "client": {"ca-cert.pem": "ca-cert.pem",
                   "client-cert.pem": "client-cert.pem",
                   "client-key.pem": "client-key.pem"},
        "nocert": {"ca-cert.pem": "ca-cert.pem"},
        "intruder": {"ca-cert.pem": "ca-cert.pem",
                     "client-cert.pem": "intruder-cert.pem",
                     "client-key.pem": "intruder-key.pem"},
    }.items():
        dirs[name] = d / name
        dirs[name].mkdir()
        for dst, src in files.items():
            shutil.copy(d / src, dirs[name] / dst)
    for name, key in (("psk", os.urandom(32).hex()),
                      ("psk-wrong", os.urandom(32).hex())):
        dirs[name] = d / name
        dirs[name].mkdir()
        (dirs[name] / "keys.psk").write_text(f"alice:{key}\n")
    return dirs


def tls_uri(port, creds_dir=None, psk=None):
    if psk:
        return f"nbds://alice@localhost:{port}/?tls-psk-file={psk}/keys.psk"
    return f"nbds://localhost:{port}/?tls-certificates={creds_dir}"


def qemu_img_info_tls(port, obj):
    return qemu_img("info", "--image-opts", "--object", obj,
                    f"driver=nbd,server.type=inet,server.host=localhost,"
                    f"server.port={port},tls-creds=t", check=False)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_tls_x509(tmp, pki, sparse_raw):
    port = free_port()
    with Serve(tmp, "--object", f"tls-creds-x509,id=tls0,endpoint=server,"
               f"dir={pki['server']}", "--nbd", f"127.0.0.1:{port}",
               "--tls-creds", "tls0", "-f", "raw", sparse_raw):
        out = run(["nbdinfo", tls_uri(port, pki["client"])]).stdout
        assert "with TLS" in out
        run(["nbdcopy", tls_uri(port, pki["client"]), tmp / "c.raw"])
        assert (tmp / "c.raw").read_bytes() == sparse_raw.read_bytes()
        p = qemu_img_info_tls(port, f"tls-creds-x509,id=t,endpoint=client,"
                              f"dir={pki['client']}")
        assert p.returncode == 0 and "8 MiB" in p.stdout, p.stderr
        # Refused: no TLS at all, no client certificate, a certificate
        # from a CA the server does not trust.
        p = run(["nbdinfo", f"nbd://localhost:{port}/"], check=False)
        assert p.returncode != 0
        for bad in ("nocert", "intruder"):
            p = run(["nbdinfo", tls_uri(port, pki[bad])], check=False)
            assert p.returncode != 0, bad
        # STARTTLS followed at once by plaintext: closed, not injected.
        c = N.Client(("127.0.0.1", port))
        c.handshake()
        c.opt(N.OPT_GO, N.Client.name_data(""))
        assert c.opt_replies()[-1][1] == N.REP_ERR_TLS_REQD
        c.opt(N.OPT_STARTTLS)
        c.opt(N.OPT_GO, N.Client.name_data(""))
        assert c.opt_reply()[1] == N.REP_ACK
        assert c.closed()
        c.close()


def test_tls_x509_without_peer_verification(tmp, pki, sparse_raw):
    port = free_port()
    with Serve(tmp, "--object", f"tls-creds-x509,id=tls0,endpoint=server,"
               f"dir={pki['server']},verify-peer=off",
               "--nbd", f"127.0.0.1:{port}", "--tls-creds", "tls0",
               "-f", "raw", sparse_raw):
        run(["nbdinfo", tls_uri(port, pki["nocert"])])


def test_tls_psk(tmp, pki, sparse_raw):
    port = free_port()
    with Serve(tmp, "--object", f"tls-creds-psk,id=tls0,endpoint=server,"
               f"dir={pki['psk']}", "--nbd", f"127.0.0.1:{port}",
               "--tls-creds", "tls0", "-f", "raw", "--writable",
               sparse_raw):
        out = run(["nbdinfo", tls_uri(port, psk=pki["psk"])]).stdout
        assert "with TLS" in out
        p = qemu_img_info_tls(port, f"tls-creds-psk,id=t,endpoint=client,"
                              f"dir={pki['psk']},username=alice")
        assert p.returncode == 0, p.stderr
        qemu_io("--image-opts", "--object", f"tls-creds-psk,id=t,"
                f"endpoint=client,dir={pki['psk']},username=alice",
                "-c", "write -P 0x44 0 64k",
                f"driver=nbd,server.type=inet,server.host=localhost,"
                f"server.port={port},tls-creds=t")
        p = run(["nbdinfo", tls_uri(port, psk=pki["psk-wrong"])],
                check=False)
        assert p.returncode != 0
    with open(sparse_raw, "rb") as f:
        assert f.read(65536) == b"\x44" * 65536


def test_tls_creds_errors(tmp, pki, sparse_raw):
    from conftest import imgtool, one_error_line
    p = imgtool("serve", "--object", f"tls-creds-x509,id=t,endpoint=server,"
                f"dir={pki['client']}", "--nbd", tmp / "s", "--tls-creds",
                "t", sparse_raw, check=False, rc=1)
    assert "server-cert.pem" in one_error_line(p)
    p = imgtool("serve", "--nbd", tmp / "s", "--tls-creds", "nope",
                sparse_raw, check=False, rc=1)
    assert "nope" in one_error_line(p)
    p = imgtool("serve", "--object", f"tls-creds-x509,id=t,endpoint=client,"
                f"dir={pki['client']}", "--nbd", tmp / "s", "--tls-creds",
                "t", sparse_raw, check=False, rc=1)
    assert "server" in one_error_line(p)
