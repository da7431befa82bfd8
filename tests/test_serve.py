"""`imgtool serve`: the daemon, its short form, qemu-storage-daemon's
command lines (run unchanged against both daemons), the QMP control
socket and `imgtool serve-ctl`, SIGTERM, --pidfile, --daemonize and
systemd readiness.  NBD clients are QEMU's and libnbd's tools."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

import nbdproto
from conftest import (IMGTOOL, Qmp, Serve, imgtool, nbd_uri, one_error_line,
                      qemu_check_clean, qemu_img, qemu_io, run)


def nbdinfo_json(uri):
    return json.loads(run(["nbdinfo", "--json", uri]).stdout)


@pytest.fixture
def img(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "64M")
    qemu_io("-c", "write -P 0xab 0 1M", "-c", "write -z 4M 1M",
            "-c", "write -P 0x5c 8M 64k", p)
    return p


def test_short_form_read_only(tmp, img):
    s = tmp / "s.sock"
    with Serve(tmp, "--nbd", s, img) as d:
        info = nbdinfo_json(nbd_uri(s))
        e = info["exports"][0]
        assert e["export-name"] == ""
        assert e["export-size"] == 64 << 20
        assert e["is_read_only"] is True
        assert qemu_img("compare", "-f", "raw", "-F", "qcow2", "-U",
                        nbd_uri(s), img).returncode == 0
        c = nbdproto.Client(s)
        c.connect_export("")
        assert c.flags & nbdproto.TF_READ_ONLY
        assert c.simple(nbdproto.CMD_WRITE, 0, 4, data=b"abcd") == \
            nbdproto.EPERM
        assert c.simple(nbdproto.CMD_WRITE_ZEROES, 0, 4096) == nbdproto.EPERM
        assert c.read(0, 4) == (0, b"\xab" * 4)
        c.close()
        assert d.stop() == 0
    assert not s.exists(), "the socket it made is removed"


def test_short_form_writable_sigterm_flushes(tmp, img):
    s = tmp / "s.sock"
    with Serve(tmp, "--nbd", s, "--writable", img) as d:
        qemu_io("-f", "raw", "-c", "write -P 0x77 2M 1M",
                "-c", "write -z 8M 64k", nbd_uri(s))
        assert d.stop() == 0, d.stderr
        assert d.stderr == ""
    qemu_check_clean(img)
    qemu_io("-c", "read -P 0x77 2M 1M", "-c", "read -P 0 8M 64k",
            "-c", "read -P 0xab 0 1M", img)


def test_short_form_tcp(tmp, img):
    port = free_port()
    with Serve(tmp, "--nbd", f"127.0.0.1:{port}", "--name", "disk", img):
        info = nbdinfo_json(f"nbd://127.0.0.1:{port}/disk")
        assert info["exports"][0]["export-name"] == "disk"


def test_one_image_twice_shares_one_node(tmp, img):
    """Two names of one file: the second export uses the first's node
    (a second open would fight over the image's write lock)."""
    s = tmp / "s.sock"
    other = os.path.join(os.path.relpath(str(tmp), os.getcwd()), "a.qcow2")
    with Serve(tmp, "--nbd", s, "--writable", "--qmp", tmp / "q.sock",
               img, other):
        q = Qmp(tmp / "q.sock")
        exports = q.cmd("query-block-exports")["return"]
        assert [e["name"] for e in exports] == [str(img), other]
        assert exports[0]["node-name"] == exports[1]["node-name"]
        qemu_io("-f", "raw", "-c", "write -P 0x31 0 64k",
                nbd_uri(s, str(img)))
        qemu_io("-f", "raw", "-c", "read -P 0x31 0 64k", nbd_uri(s, other))


def test_bad_usage_is_one_line(tmp, img):
    # Usage mistakes: the reason, then qemu-img's hint to ask for help.
    for argv in (["serve"], ["serve", img], ["serve", "--bogus"]):
        p = imgtool(*argv, check=False, rc=1)
        assert p.stderr.startswith("imgtool: ") and \
            "imgtool serve --help" in p.stderr
    p = imgtool("serve", "--nbd", tmp / "s.sock", tmp / "missing.qcow2",
                check=False, rc=1)
    assert "missing.qcow2" in one_error_line(p)
    p = imgtool("serve", "--export", "type=nbd,id=e0,node-name=x",
                check=False, rc=1)
    assert "node-name='x'" in one_error_line(p)
    p = imgtool("serve", "--blockdev",
                f"driver=file,node-name=f,filename={img},read-only=on",
                "--export", "type=nbd,id=e0,node-name=f", check=False, rc=1)
    assert "NBD server not running" in one_error_line(p)
    p = imgtool("serve", "--blockdev", f"driver=file,filename={img}",
                check=False, rc=1)
    assert "node-name" in one_error_line(p)
    p = imgtool("serve", "--blockdev",
                f"driver=file,node-name=f,filename={img}",
                "--nbd-server", f"addr.type=unix,addr.path={tmp}/s,bogus=1",
                check=False, rc=1)
    assert "bogus" in one_error_line(p)
    assert not (tmp / "s").exists()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------
# qemu-storage-daemon command lines, unchanged

def qsd_line(tmp, img, which):
    """Real qemu-storage-daemon command line number `which` (from its
    documentation and from libvirt's and backup tools' use), with the
    NBD URI and QMP socket it creates."""
    s, q = tmp / "n.sock", tmp / "q.sock"
    port = free_port()
    enc, key = (enc_image(tmp) if which == 3
                else (tmp / "enc.qcow2", tmp / "key"))
    return [
        # the documentation's example: file + format node, unix NBD
        # server, writable export, QMP monitor on a chardev
        ([f"--blockdev", f"driver=file,node-name=file,filename={img}",
          "--blockdev", "driver=qcow2,node-name=qcow2,file=file",
          "--nbd-server", f"addr.type=unix,addr.path={s}",
          "--export", "type=nbd,id=export,node-name=qcow2,name=disk,"
                      "writable=on",
          "--chardev", f"socket,path={q},server=on,wait=off,id=char1",
          "--monitor", "chardev=char1"], nbd_uri(s, "disk"), q),
        # JSON options, read-only node, bitmap-less export named by node
        (["--blockdev", json.dumps({"driver": "qcow2", "node-name": "fmt",
                                    "read-only": True,
                                    "file": {"driver": "file",
                                             "filename": str(img)}}),
          "--nbd-server", json.dumps({"addr": {"type": "unix",
                                               "path": str(s)}}),
          "--export", json.dumps({"type": "nbd", "id": "e0",
                                  "node-name": "fmt"}),
          "--chardev", f"socket,id=m,path={q},server=on,wait=off",
          "--monitor", "m"], nbd_uri(s, "fmt"), q),
        # TCP, cache and aio knobs, legacy "server,nowait" chardev flags
        # (no iothread: qemu-storage-daemon 7.2 aborts when a client of
        # an export on an iothread disconnects)
        (["--blockdev", f"driver=file,node-name=f0,filename={img},"
                        "cache.direct=off,aio=threads",
          "--blockdev", "driver=qcow2,node-name=d0,file=f0,discard=unmap",
          "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,"
                          f"addr.port={port},max-connections=4",
          "--export", "type=nbd,id=e1,node-name=d0,writable=on,name=d0",
          "--chardev", f"socket,id=mon0,path={q},server,nowait",
          "--monitor", "chardev=mon0,mode=control"],
         f"nbd://127.0.0.1:{port}/d0", q),
        # a LUKS-encrypted qcow2 (secret object, nested JSON options), a
        # dirty bitmap and the allocation depth offered (a backup's
        # setup)
        (["--object", f"secret,id=sec0,file={key}",
          "--blockdev", json.dumps({
              "driver": "qcow2", "node-name": "enc",
              "encrypt": {"format": "luks", "key-secret": "sec0"},
              "file": {"driver": "file", "filename": str(enc)}}),
          "--nbd-server", f"addr.type=unix,addr.path={s}",
          "--export", "type=nbd,id=b,node-name=enc,name=backup,"
                      "bitmaps.0=b0,allocation-depth=on",
          "--chardev", f"socket,id=m,path={q},server=on,wait=off",
          "--monitor", "chardev=m"], nbd_uri(s, "backup"), q),
    ][which]


def test_iothread(tmp, img):
    s = tmp / "s.sock"
    with Serve(tmp, "--object", "iothread,id=io0,poll-max-ns=0",
               "--blockdev", f"driver=file,node-name=f0,filename={img}",
               "--blockdev", "driver=qcow2,node-name=d0,file=f0",
               "--nbd-server", f"addr.type=unix,addr.path={s}",
               "--export", "type=nbd,id=e,node-name=d0,iothread=io0,"
                           "writable=on") as d:
        for _ in range(2):
            qemu_io("-f", "raw", "-c", "write -P 0x61 0 64k",
                    nbd_uri(s, "d0"))
        assert d.stop() == 0
    p = imgtool("serve", "--blockdev", f"driver=file,node-name=f0,"
                f"filename={img}", "--nbd-server",
                f"addr.type=unix,addr.path={s}", "--export",
                "type=nbd,id=e,node-name=f0,iothread=nope", check=False, rc=1)
    assert "nope" in one_error_line(p)


def enc_image(tmp):
    """A LUKS-encrypted qcow2 with a dirty bitmap that saw writes, and
    its passphrase file (made once per test directory)."""
    img, key = tmp / "enc.qcow2", tmp / "key"
    if not img.exists():
        key.write_text("pass")
        obj = f"secret,id=k,file={key}"
        # imgtool makes it: qemu-img's PBKDF2 calibration fails now and
        # then on a busy host ("Unable to get accurate CPU usage").
        imgtool("create", "-q", "-f", "qcow2", "--object", obj, "-o",
                "encrypt.format=luks,encrypt.key-secret=k,"
                "encrypt.iter-time=10", img, "8M")
        opts = f"driver=qcow2,file.filename={img},encrypt.key-secret=k"
        imgtool("bitmap", "--add", "--object", obj, "--image-opts", opts,
                "b0")
        qemu_io("--object", obj, "--image-opts", "-c",
                "write -P 0x3c 1M 64k", "-c", "write -P 0x3d 5M 8k", opts)
        # QEMU exports only disabled bitmaps read-only (a backup's frozen
        # view): freeze it.
        imgtool("bitmap", "--disable", "--object", obj, "--image-opts",
                opts, "b0")
    return img, key


def start_qsd(tmp, args, qmp_sock):
    p = subprocess.Popen(["qemu-storage-daemon", *map(str, args)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise AssertionError(p.stderr.read().decode())
        if os.path.exists(qmp_sock):
            try:
                Qmp(qmp_sock).close()
                return p
            except OSError:
                pass
        time.sleep(0.05)
    p.kill()
    raise AssertionError("qemu-storage-daemon did not start")


@pytest.mark.parametrize("which", range(4))
def test_qemu_storage_daemon_command_lines(tmp, img, which):
    """The same argv to qemu-storage-daemon and to imgtool serve: both
    serve the same export (nbdinfo's view, its map, the data), both
    answer query-block-exports alike, both quit on QMP's quit."""
    args, uri, q = qsd_line(tmp, img, which)
    seen = {}
    for tool in ("qemu", "imgtool"):
        if tool == "qemu":
            daemon = start_qsd(tmp, args, q)
        else:
            d = Serve(tmp, *args).start()
            daemon = d.proc
        try:
            info = nbdinfo_json(uri)["exports"][0]
            m = [run(["nbdinfo", f"--map={c}", uri]).stdout
                 for c in info["contexts"]]
            data = run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                        uri, tmp / f"{tool}.raw"])
            qmp = Qmp(q)
            exports = qmp.cmd("query-block-exports")["return"]
            assert qmp.cmd("quit") == {"return": {}}
            qmp.close()
            assert daemon.wait(timeout=30) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        seen[tool] = (
            {k: info[k] for k in ("export-name", "export-size",
                                  "is_read_only", "can_flush", "can_trim",
                                  "can_zero", "contexts")},
            m,
            [{k: e[k] for k in ("type", "id", "node-name", "shutting-down")}
             for e in exports])
        assert not os.path.exists(q)
    assert seen["imgtool"] == seen["qemu"]
    assert (tmp / "qemu.raw").read_bytes() == (tmp / "imgtool.raw").read_bytes()


# ---------------------------------------------------------------------------
# QMP at run time

@pytest.fixture
def daemon(tmp, img):
    q = tmp / "q.sock"
    s = tmp / "n.sock"
    d = Serve(tmp, "--blockdev", f"driver=file,node-name=f0,filename={img}",
              "--blockdev", "driver=qcow2,node-name=d0,file=f0",
              "--nbd-server", f"addr.type=unix,addr.path={s}",
              "--chardev", f"socket,id=m0,path={q},server=on,wait=off",
              "--monitor", "chardev=m0")
    with d:
        d.qmp = Qmp(q)
        d.nbd = s
        d.q = q
        yield d
        d.qmp.close()


def test_qmp_exports_at_run_time(daemon, tmp):
    q = daemon.qmp
    assert q.cmd("query-block-exports") == {"return": []}
    r = q.cmd("block-export-add", type="nbd", id="e0", node_name="d0",
              writable=True, name="disk")
    assert r == {"return": {}}
    r = q.cmd("block-export-add", type="nbd", id="e0", node_name="d0")
    assert "already in use" in r["error"]["desc"]
    r = q.cmd("block-export-add", type="nbd", id="e9", node_name="nope")
    assert r["error"]["class"] == "GenericError"
    r = q.cmd("block-export-add", type="nbd", id="e9", node_name="d0",
              name="disk")
    assert "already has export" in r["error"]["desc"]
    r = q.cmd("block-export-add", type="nbd", id="e9", node_name="d0",
              frobnicate=1)
    assert "frobnicate" in r["error"]["desc"]
    exports = q.cmd("query-block-exports")["return"]
    assert [(e["id"], e["node-name"], e["shutting-down"]) for e in exports] \
        == [("e0", "d0", False)]
    qemu_io("-f", "raw", "-c", "write -P 0x42 0 4k", nbd_uri(daemon.nbd,
                                                            "disk"))
    # A connected client makes mode=safe refuse; hard drops it.
    client = nbdproto.Client(daemon.nbd)
    client.connect_export("disk")
    try:
        assert q.cmd("query-block-exports")["return"][0]["clients"] == 1
        r = q.cmd("block-export-del", id="e0")
        assert "still in use" in r["error"]["desc"]
        assert q.cmd("block-export-del", id="e0", mode="hard") == \
            {"return": {}}
        ev = q.wait_event("BLOCK_EXPORT_DELETED")
        assert ev["data"] == {"id": "e0"}
        assert client.closed()
    finally:
        client.close()
    assert q.cmd("query-block-exports") == {"return": []}
    r = q.cmd("block-export-del", id="e0")
    assert "not found" in r["error"]["desc"]


def test_qmp_blockdev_add_del(daemon, tmp):
    q = daemon.qmp
    other = tmp / "b.qcow2"
    qemu_img("create", "-f", "qcow2", other, "1M")
    r = q.cmd("blockdev-add", driver="qcow2", node_name="b0",
              file={"driver": "file", "filename": str(other)})
    assert r == {"return": {}}
    names = [n["node-name"] for n in q.cmd("query-named-block-nodes")["return"]]
    assert "b0" in names and "d0" in names
    assert q.cmd("block-export-add", type="nbd", id="eb", node_name="b0") \
        == {"return": {}}
    r = q.cmd("blockdev-del", node_name="b0")
    assert "busy" in r["error"]["desc"]
    r = q.cmd("blockdev-del", node_name="f0")
    assert "busy" in r["error"]["desc"], "d0 uses f0"
    assert q.cmd("block-export-del", id="eb") == {"return": {}}
    q.wait_event("BLOCK_EXPORT_DELETED")
    assert q.cmd("blockdev-del", node_name="b0") == {"return": {}}
    r = q.cmd("blockdev-del", node_name="b0")
    assert "Failed to find" in r["error"]["desc"]
    # qemu-img may open it again: the daemon let go of it and its lock.
    qemu_io("-c", "write 0 4k", other)


def test_qmp_protocol_errors(daemon):
    q = Qmp(daemon.q)
    assert q.greeting["QMP"]["version"]["qemu"]["major"] >= 7
    q.send_raw(b'{"execute": "query-block-exports"} {"bad json')
    assert q.reply() == {"return": []}
    q.send_raw(b'"}\n')
    r = q.reply()
    assert r["error"]["class"] == "GenericError"
    r = q.cmd("no-such-command")
    assert r["error"]["class"] == "CommandNotFound"
    q.send_raw(b'{"execute": "query-version", "id": 7}')
    r = q.reply()
    assert r["id"] == 7 and "qemu" in r["return"]
    q.send_raw(b'[1, 2]')
    assert "error" in q.reply()
    # The daemon still serves everyone.
    assert daemon.qmp.cmd("query-block-exports") == {"return": []}
    q.close()


def test_serve_ctl(daemon):
    p = imgtool("serve-ctl", daemon.q, "block-export-add", "type=nbd",
                "id=x", "node-name=d0", "name=ctl")
    assert json.loads(p.stdout) == {}
    p = imgtool("serve-ctl", daemon.q, "query-block-exports")
    assert [e["id"] for e in json.loads(p.stdout)] == ["x"]
    p = imgtool("serve-ctl", daemon.q, "block-export-add",
                '{"type": "nbd", "id": "x", "node-name": "d0"}',
                check=False, rc=1)
    assert "already in use" in one_error_line(p)
    p = imgtool("serve-ctl", daemon.q.parent / "nope.sock",
                "query-block-exports", check=False, rc=1)
    assert "cannot connect" in one_error_line(p)


# ---------------------------------------------------------------------------
# Daemon life

def test_sigterm_while_a_client_writes(tmp, img):
    """SIGTERM during a stream of writes: the daemon disconnects the
    client, lets what it accepted finish, flushes, exits 0; the image is
    clean and holds whole writes."""
    s = tmp / "s.sock"
    with Serve(tmp, "--nbd", s, "--writable", img) as d:
        cmds = [f"aio_write -P {i % 250 + 1} {(i % 32) * 65536} 64k"
                for i in range(4000)]
        writer = subprocess.Popen(["qemu-io", "-f", "raw", *sum(
            (["-c", c] for c in cmds), []), nbd_uri(s)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        assert d.stop() == 0, d.stderr
        writer.wait(timeout=60)
    qemu_check_clean(img)
    assert not s.exists()


def test_pidfile_and_daemonize(tmp, img):
    s, pf = tmp / "s.sock", tmp / "d.pid"
    p = run([IMGTOOL, "serve", "--daemonize", "--pidfile", pf, "--nbd", s,
             img], timeout=60)
    assert p.returncode == 0
    pid = int(pf.read_text())
    try:
        assert nbdinfo_json(nbd_uri(s))["exports"][0]["export-size"] == \
            64 << 20
        # A second daemon with the same pid file is refused.
        p = imgtool("serve", "--pidfile", pf, "--nbd", tmp / "t.sock", img,
                    check=False, rc=1)
        assert "pid file" in one_error_line(p)
        assert int(pf.read_text()) == pid
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(500):
        if not pf.exists():
            break
        time.sleep(0.02)
    assert not pf.exists() and not s.exists()


def test_daemonize_failure_exits_nonzero(tmp):
    p = imgtool("serve", "--daemonize", "--nbd", tmp / "s.sock",
                tmp / "missing.qcow2", check=False, rc=1)
    assert "missing.qcow2" in one_error_line(p)


def test_stale_socket_replaced_regular_file_kept(tmp, img):
    s = tmp / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(s))
    stale.close()
    with Serve(tmp, "--nbd", s, img) as d:
        nbdinfo_json(nbd_uri(s))
        d.stop()
    f = tmp / "file"
    f.write_text("keep me")
    p = imgtool("serve", "--nbd", f, img, check=False, rc=1)
    assert "not a socket" in one_error_line(p)
    assert f.read_text() == "keep me"


def test_qmp_nbd_server_and_bitmaps(tmp, img):
    """nbd-server-start with QMP's SocketAddressLegacy, dirty bitmaps
    managed at run time and read through qemu:dirty-bitmap:, then
    nbd-server-stop; bitmaps are stored in the image at quit."""
    q = tmp / "q.sock"
    s = tmp / "n.sock"
    with Serve(tmp, "--blockdev", f"driver=file,node-name=f0,filename={img}",
               "--blockdev", "driver=qcow2,node-name=d0,file=f0",
               "--chardev", f"socket,id=m0,path={q},server=on,wait=off",
               "--monitor", "chardev=m0") as d:
        c = Qmp(q)
        assert c.cmd("nbd-server-start", addr={
            "type": "unix", "data": {"path": str(s)}}) == {"return": {}}
        r = c.cmd("nbd-server-start", addr={"type": "unix",
                                            "data": {"path": str(s)}})
        assert "already running" in r["error"]["desc"]
        for name in ("b0", "b1"):
            assert c.cmd("block-dirty-bitmap-add", node="d0", name=name,
                         granularity=65536) == {"return": {}}
        r = c.cmd("block-dirty-bitmap-add", node="d0", name="b0")
        assert "exists" in r["error"]["desc"]
        r = c.cmd("block-export-add", type="nbd", id="e", node_name="d0",
                  name="disk", writable=True, bitmaps=["b0", "nope"])
        assert "nope" in r["error"]["desc"]
        assert c.cmd("block-export-add", type="nbd", id="e", node_name="d0",
                     name="disk", writable=True, bitmaps=["b0"],
                     allocation_depth=True) == {"return": {}}
        uri = nbd_uri(s, "disk")

        def dirty():
            out = run(["nbdinfo", "--map=qemu:dirty-bitmap:b0", uri]).stdout
            return [tuple(map(int, l.split()[:2])) for l in out.splitlines()
                    if l.split()[2] == "1"]

        assert dirty() == []
        qemu_io("-f", "raw", "-c", "write -P 9 2M 64k", uri)
        assert dirty() == [(2 << 20, 65536)]
        assert c.cmd("block-dirty-bitmap-merge", node="d0", target="b1",
                     bitmaps=["b0"]) == {"return": {}}
        assert c.cmd("block-dirty-bitmap-clear", node="d0",
                     name="b0") == {"return": {}}
        assert dirty() == []
        assert c.cmd("block-dirty-bitmap-disable", node="d0",
                     name="b0") == {"return": {}}
        qemu_io("-f", "raw", "-c", "write -P 9 3M 64k", uri)
        assert dirty() == []
        assert c.cmd("block-dirty-bitmap-enable", node="d0",
                     name="b0") == {"return": {}}
        qemu_io("-f", "raw", "-c", "write -P 9 5M 4k", uri)
        assert dirty() == [(5 << 20, 65536)]
        assert c.cmd("nbd-server-stop") == {"return": {}}
        assert c.wait_event("BLOCK_EXPORT_DELETED")["data"]["id"] == "e"
        assert not s.exists()
        assert c.cmd("block-dirty-bitmap-remove", node="d0",
                     name="b0") == {"return": {}}
        assert c.cmd("quit") == {"return": {}}
        assert d.proc.wait(timeout=30) == 0
    bitmaps = {b["name"]: b for b in json.loads(qemu_img(
        "info", "--output=json", img).stdout)["format-specific"]["data"]
        ["bitmaps"]}
    assert set(bitmaps) == {"b1"}
    qemu_check_clean(img)


def test_kill_and_restart(tmp, img):
    """kill -9 during writes: the image has no corruption (leaks at
    most), a new daemon on the same socket path (the stale socket is
    replaced) serves what was flushed."""
    s = tmp / "s.sock"
    d = Serve(tmp, "--nbd", s, "--writable", img)
    with d:
        qemu_io("-f", "raw", "-c", "write -P 0x66 6M 1M", "-c", "flush",
                nbd_uri(s))
        cmds = sum((["-c", f"aio_write -P 7 {(i % 40) * 131072} 128k"]
                    for i in range(3000)), [])
        writer = subprocess.Popen(["qemu-io", "-f", "raw", *cmds,
                                   nbd_uri(s)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        d.stop(sig=signal.SIGKILL)
        writer.wait(timeout=60)
    p = qemu_img("check", "-f", "qcow2", img, check=False)
    assert p.returncode in (0, 3), p.stdout + p.stderr
    assert s.exists(), "a killed daemon leaves its socket"
    with Serve(tmp, "--nbd", s, "--writable", img) as d:
        qemu_io("-f", "raw", "-c", "read -P 0x66 6M 1M", nbd_uri(s))
        assert d.stop() == 0


def test_image_locking_with_qemu(tmp, img):
    """QEMU's lock bytes: while the daemon writes the image, qemu-io
    cannot open it for writing (and -U still reads); while QEMU writes
    it, the daemon cannot serve it writable."""
    s = tmp / "s.sock"
    with Serve(tmp, "--nbd", s, "--writable", img) as d:
        p = qemu_io("-c", "write 0 4k", img, check=False)
        assert p.returncode != 0 and "lock" in (p.stdout + p.stderr)
        qemu_img("info", "-U", img)
        d.stop()
    # qemu-io's sleep is in milliseconds: hold the lock until killed
    # (3 s was shorter than a few qemu-img polls on a loaded host)
    def hold():
        return subprocess.Popen(["qemu-io", "-c", "sleep 600000", img],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    holder = hold()
    try:
        deadline = time.monotonic() + 120
        while qemu_img("info", img, check=False).returncode == 0:
            assert time.monotonic() < deadline, "qemu-io never took its lock"
            # qemu-io gives up when a poll's shared lock is held at the
            # moment it opens: start it again
            if holder.poll() is not None:
                holder = hold()
            time.sleep(0.05)     # until qemu-io holds its lock
        p = imgtool("serve", "--nbd", s, "--writable", img, check=False,
                    rc=1, timeout=60)
        assert "lock" in one_error_line(p)
    finally:
        holder.kill()
        holder.wait()


def test_volume_short_form(tmp):
    """vol:POOL/NAME serves a pool's volume; the same volume named by
    its path as well shares the node."""
    from poolenv import Pools
    pools = Pools(tmp / "cfg")
    target = tmp / "pool"
    pools("pool-define-as", "p", "dir", "--target", target)
    pools("pool-build", "p")
    pools("pool-start", "p")
    pools("vol-create-as", "p", "disk", "16M", "--format", "qcow2")
    path = pools("vol-path", "--pool", "p", "disk").stdout.strip()
    s = tmp / "s.sock"
    with Serve(tmp, "--nbd", s, "--writable", "--qmp", tmp / "q.sock",
               "vol:p/disk", path, env=pools.env):
        q = Qmp(tmp / "q.sock")
        e = q.cmd("query-block-exports")["return"]
        assert [x["name"] for x in e] == ["vol:p/disk", path]
        assert e[0]["node-name"] == e[1]["node-name"]
        qemu_io("-f", "raw", "-c", "write -P 0x12 0 64k",
                nbd_uri(s, "vol:p/disk"))
    qemu_io("-c", "read -P 0x12 0 64k", path)
