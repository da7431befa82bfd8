"""The systemd units as installed: `systemd-analyze verify` accepts them,
and what they run does what the unit promises -- the serve instance
reports readiness once its sockets exist and stops cleanly on SIGTERM
(systemd's default stop), the oneshot starts the autostart pools.

systemd is not PID 1 here, so the units' commands are run the way
systemd would run them: ExecStart with the EnvironmentFile's variable
split at whitespace, $NOTIFY_SOCKET for Type=notify."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, Serve, imgtool, qemu_img, run
from installtree import meson_install

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"),
                                reason="systemd-analyze not installed")

SERVE = "imgtool-serve@.service"
AUTOSTART = "imgtool-pools-autostart.service"


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    dest = tmp_path_factory.mktemp("unitinstall")
    prefix = meson_install(dest)
    unitdir = os.path.join(prefix, "lib", "systemd", "system")
    text = {u: open(os.path.join(unitdir, u)).read()
            for u in (SERVE, AUTOSTART)}
    return dest, prefix[len(str(dest)):], text


def fields(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def verify(tmp, dest, prefix, text, name="imgtool-serve@web.service"):
    """systemd-analyze verify on units whose paths point into the scratch
    install (verify checks the ExecStart binary and the man page)."""
    d = tmp / "units"
    d.mkdir(exist_ok=True)
    for unit, t in text.items():
        (d / unit).write_text(t.replace(prefix + "/bin/",
                                        str(dest) + prefix + "/bin/"))
    env = dict(os.environ,
               MANPATH=str(dest) + prefix + "/share/man")
    return subprocess.run(["systemd-analyze", "verify", str(d / AUTOSTART),
                           str(d / name)], capture_output=True, text=True,
                          env=env, cwd=d)


def test_units_verify(units, tmp):
    dest, prefix, text = units
    p = verify(tmp, dest, prefix, text)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stderr == ""
    serve, auto = fields(text[SERVE]), fields(text[AUTOSTART])
    assert serve["Type"] == ["notify"]
    assert serve["ExecStart"] == [prefix + "/bin/imgtool serve "
                                  "$IMGTOOL_SERVE_ARGS"]
    assert serve["EnvironmentFile"][0].endswith("/imgtool/serve/%i.conf")
    assert auto["Type"] == ["oneshot"]
    assert auto["ExecStart"] == [prefix + "/bin/imgtool "
                                 "pool-start-autostart"]
    assert auto["WantedBy"] == serve["WantedBy"] == ["multi-user.target"]


def test_verify_catches_a_broken_unit(units, tmp):
    """The check above can fail: a bad Type is reported."""
    dest, prefix, text = units
    bad = dict(text)
    bad[SERVE] = text[SERVE].replace("Type=notify", "Type=notifyy")
    p = verify(tmp, dest, prefix, bad)
    assert "Failed to parse service type" in p.stderr
    # and a unit whose command is missing fails outright
    gone = {u: t.replace("/bin/imgtool ", "/bin/imgtool-gone ")
            for u, t in text.items()}
    p = verify(tmp, dest, prefix, gone)
    assert p.returncode != 0 and "imgtool-gone" in p.stderr


def test_serve_instance_ready_and_clean_stop(units, tmp):
    """The instance's configuration file as the unit reads it; the
    daemon's READY=1 comes when its socket accepts; SIGTERM removes it."""
    dest, prefix, text = units
    img = tmp / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", img, "16M")
    sock = tmp / "run" / "nbd.sock"
    sock.parent.mkdir()
    example = open(os.path.join(ROOT, "systemd", "serve-example.conf")).read()
    conf = example.replace("/var/lib/images/disk.qcow2", str(img)).replace(
        "/run/imgtool/example/nbd.sock", str(sock))
    assert conf != example
    env_line = [l for l in conf.splitlines()
                if l.startswith("IMGTOOL_SERVE_ARGS=")][0]
    value = env_line.split("=", 1)[1]
    execstart = fields(text[SERVE])["ExecStart"][0].split()
    assert execstart[1:] == ["serve", "$IMGTOOL_SERVE_ARGS"]
    args = value.split()      # systemd splits an unbraced $VAR at spaces
    with Serve(tmp, *args) as s:
        assert sock.exists()
        info = qemu_img("info", "--output=json",
                        f"nbd+unix:///d0?socket={sock}").stdout
        assert '"virtual-size": 16777216' in info
        assert s.stop() == 0
    assert not sock.exists()


def test_autostart_oneshot_starts_autostart_pools(tmp):
    env = dict(os.environ, IMGTOOL_CONFIG_DIR=str(tmp / "store"))
    for name in ("a1", "a2", "manual"):
        (tmp / name).mkdir()
        imgtool("pool-define-as", name, "dir", "--target", tmp / name,
                env=env)
    imgtool("pool-autostart", "a1", env=env)
    imgtool("pool-autostart", "a2", env=env)
    p = imgtool("pool-start-autostart", env=env)
    assert p.stdout == "Pool a1 started\nPool a2 started\n\n"
    listing = imgtool("pool-list", "--all", "--output=json", env=env).stdout
    state = {p["name"]: p["state"] for p in
             __import__("json").loads(listing)}
    assert state == {"a1": "running", "a2": "running", "manual": "inactive"}
    # again: nothing left to start
    assert imgtool("pool-start-autostart", "--output=json",
                   env=env).stdout.split() == ['{', '"started":', '[]', '}']
    # one pool that cannot start does not keep the others down
    imgtool("pool-destroy", "a1", env=env)
    imgtool("pool-destroy", "a2", env=env)
    os.rmdir(tmp / "a1")
    p = imgtool("pool-start-autostart", env=env, rc=1)
    assert p.stdout == "Pool a2 started\n\n"
    assert p.stderr.startswith("imgtool: Failed to start pool a1")
    assert p.stderr.count("\n") == 1
