"""Real network storage servers for the tests: an iSCSI target (tgtd) and
glusterd with one brick, both on 127.0.0.1 (recipes: SERVICES.md).

Each is started and stopped by the test fixtures (conftest.py), by pid,
cleaning up what the daemons leave behind (/run/tgtd/socket.N,
/run/gluster, /var/log/glusterfs) even when a test fails.  Every tgtadm
call runs under `timeout`: one can hang for good when it races a stopping
tgtd.

tgtd runs one instance per test worker (its own control port and portal
port), so parallel workers never meet; a test that kills its target
starts a private one.  glusterd can only listen on 24007 (its bricks look
for it there), so one process at a time owns it: the fixture takes an
exclusive lock for its session and skips when another worker of the same
run holds it (tests/run puts every Gluster test into one worker with
--dist loadgroup).
"""
import fcntl
import glob
import os
import shutil
import signal
import socket
import subprocess
import time

TGTD_BASE_PORT = 13260
GLUSTERD_PORT = 24007
GLUSTER_LOCK = "/run/lock/imgtool-test-glusterd.lock"


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout} s")


def _kill(proc, sig=signal.SIGKILL, wait=10):
    if proc and proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(wait)


def _port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ----------------------------------------------------------------------
# iSCSI: tgtd

def _take_slot():
    """(n, fd): the first slot no other live Tgtd holds, locked by fd."""
    d = "/tmp/imgtool-tgtd-slots"
    os.makedirs(d, exist_ok=True)
    for n in range(200):
        fd = os.open(os.path.join(d, str(n)), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if _port_free(TGTD_BASE_PORT + n):
            return n, fd
        os.close(fd)
    raise RuntimeError("no free tgtd slot (200 in use?)")

class Tgtd:
    """A tgtd on 127.0.0.1:port with its own control port.  Targets are
    added with add_target; LUN backing files live in workdir."""

    def __init__(self, workdir, slot=0):
        self.workdir = str(workdir)
        # Each instance holds a slot (portal port and control socket
        # /run/tgtd/socket.N) under an exclusive lock for its lifetime, so
        # private instances (kill tests), parallel workers and separate
        # test runs on one host never share a control socket.  slot is
        # kept for callers; the lock decides.
        del slot
        n, self._slot_fd = _take_slot()
        self.port = TGTD_BASE_PORT + n
        self.control = 700 + n
        self.proc = None
        self.tids = set()
        self.accounts = set()
        self.log = os.path.join(self.workdir, f"tgtd-{self.port}.log")

    @property
    def portal(self):
        return f"127.0.0.1:{self.port}"

    def tgtadm(self, *args, check=True):
        p = subprocess.run(["timeout", "10", "tgtadm", "-C",
                            str(self.control), *map(str, args)],
                           capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(map(str, args))}: "
                               f"{p.returncode} {p.stdout}{p.stderr}")
        return p

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        self._remove_sockets()
        self.tids = set()
        self.accounts = set()
        if not _port_free(self.port):
            raise RuntimeError(f"port {self.port} is taken: a tgtd of an "
                               "earlier run?")
        log = open(self.log, "ab")
        # tgtd -f stays in the foreground: our child, stopped by its pid
        self.proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(self.control), "--iscsi",
             f"portal={self.portal}"], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)
        log.close()
        _wait(lambda: self.proc.poll() is not None or
              self.tgtadm("--op", "show", "--mode", "sys",
                          check=False).returncode == 0, 10, "tgtd")
        if self.proc.poll() is not None:
            raise RuntimeError(f"tgtd exited: {open(self.log).read()[-2000:]}")
        return self

    def add_target(self, tid, iqn, luns, chap=None, initiators=("127.0.0.1",)):
        """luns: [(lun, path, size, opts)] where opts may hold blocksize,
        thin (bool) and readonly (bool); the backing file is created
        (sparse) when missing.  chap: (user, password) required to log
        in."""
        self.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "target",
                    "--tid", tid, "-T", iqn)
        self.tids.add(tid)
        for lun, path, size, opts in luns:
            self.add_lun(tid, lun, path, size, **(opts or {}))
        for ini in initiators:
            self.tgtadm("--lld", "iscsi", "--op", "bind", "--mode", "target",
                        "--tid", tid, "-I", ini)
        if chap:
            user, password = chap
            # an account is made once and may serve several targets
            if user not in self.accounts:
                self.tgtadm("--lld", "iscsi", "--op", "new", "--mode",
                            "account", "--user", user, "--password", password)
                self.accounts.add(user)
            self.tgtadm("--lld", "iscsi", "--op", "bind", "--mode",
                        "account", "--tid", tid, "--user", user)

    def add_lun(self, tid, lun, path, size, blocksize=None, thin=True,
                readonly=False):
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.truncate(size)
        args = ["--lld", "iscsi", "--op", "new", "--mode", "logicalunit",
                "--tid", tid, "--lun", lun, "-b", path]
        if blocksize:
            args += ["--blocksize", blocksize]
        self.tgtadm(*args)
        params = []
        if thin:
            params.append("thin_provisioning=1")
        if readonly:
            params.append("readonly=1")
        if params:
            self.tgtadm("--lld", "iscsi", "--op", "update", "--mode",
                        "logicalunit", "--tid", tid, "--lun", lun,
                        "--params", ",".join(params))

    def unbind(self, tid, initiator="127.0.0.1"):
        self.tgtadm("--lld", "iscsi", "--op", "unbind", "--mode", "target",
                    "--tid", tid, "-I", initiator)

    def delete_lun(self, tid, lun):
        self.tgtadm("--lld", "iscsi", "--op", "delete", "--mode",
                    "logicalunit", "--tid", tid, "--lun", lun)

    def sessions(self, tid):
        out = self.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "conn",
                          "--tid", tid, check=False).stdout
        return [int(l.split()[1]) for l in out.splitlines()
                if l.strip().startswith("Session:")]

    def drop_connections(self, tid):
        """Closes every initiator connection to target tid (a network
        fault the initiator must survive); returns how many."""
        sids = self.sessions(tid)
        for sid in sids:
            self.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "conn",
                        "--tid", tid, "--sid", sid, "--cid", 0, check=False)
        return len(sids)

    def kill(self):
        """The target dies (no clean shutdown)."""
        _kill(self.proc)
        self._remove_sockets()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                for tid in sorted(self.tids):
                    self.tgtadm("--lld", "iscsi", "--op", "delete", "--mode",
                                "target", "--tid", tid, "--force",
                                check=False)
                self.tgtadm("--op", "delete", "--mode", "system",
                            check=False)
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # tgtd ignores SIGTERM; what the clean stop left is killed
        _kill(self.proc)
        self.proc = None
        self._remove_sockets()

    def _remove_sockets(self):
        for f in glob.glob(f"/run/tgtd/socket.{self.control}*"):
            try:
                os.unlink(f)
            except OSError:
                pass


def iscsi_url(portal, iqn, lun, user=None, password=None):
    auth = ""
    if user:
        auth = user + (f"%{password}" if password else "") + "@"
    return f"iscsi://{auth}{portal}/{iqn}/{lun}"


# ----------------------------------------------------------------------
# Gluster: glusterd + one brick per volume

def loopback_hostname():
    """A name that resolves to 127.0.0.1 and is not "localhost" (glusterd
    refuses bricks on localhost and on the literal address)."""
    names = []
    try:
        with open("/etc/hosts") as f:
            for line in f:
                parts = line.split("#")[0].split()
                if parts and parts[0] == "127.0.0.1":
                    names += parts[1:]
    except OSError:
        pass
    names.append(socket.gethostname())
    for n in names:
        if n.startswith("localhost"):
            continue
        try:
            if socket.gethostbyname(n) == "127.0.0.1":
                return n
        except OSError:
            continue
    return None


GLUSTERD_VOL = """volume management
    type mgmt/glusterd
    option working-directory {state}
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port {port}
    option ping-timeout 0
    option event-threads 1
end-volume
"""


class Glusterd:
    """glusterd with its state in workdir, listening on 127.0.0.1 only."""

    def __init__(self, workdir):
        self.workdir = str(workdir)
        self.state = os.path.join(self.workdir, "state")
        self.bricks = os.path.join(self.workdir, "bricks")
        self.volfile = os.path.join(self.workdir, "glusterd.vol")
        self.pidfile = os.path.join(self.workdir, "glusterd.pid")
        self.log = os.path.join(self.workdir, "glusterd.log")
        self.proc = None
        self.volumes = []
        self.host = None
        self._lock = None

    def cli(self, *args, check=True, timeout=60):
        p = subprocess.run(["gluster", "--mode=script", *map(str, args)],
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"gluster {' '.join(map(str, args))}: "
                               f"{p.returncode} {p.stdout}{p.stderr}")
        return p

    def acquire(self):
        """True when this process may run glusterd now."""
        os.makedirs(os.path.dirname(GLUSTER_LOCK), exist_ok=True)
        self._lock = open(GLUSTER_LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            return False
        return True

    def start(self):
        self.host = loopback_hostname()
        if not self.host:
            raise RuntimeError("no host name maps to 127.0.0.1 besides "
                               "localhost (glusterd needs one for its brick); "
                               "add one to /etc/hosts")
        if not _port_free(GLUSTERD_PORT):
            raise RuntimeError(f"port {GLUSTERD_PORT} is taken: another "
                               "glusterd runs on this machine")
        os.makedirs(self.state, exist_ok=True)
        os.makedirs(self.bricks, exist_ok=True)
        with open(self.volfile, "w") as f:
            f.write(GLUSTERD_VOL.format(state=self.state, port=GLUSTERD_PORT))
        self.proc = subprocess.Popen(
            ["glusterd", "-N", "-f", self.volfile, "-p", self.pidfile,
             "-l", self.log], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.proc.poll() is not None or
              self.cli("pool", "list", check=False, timeout=10)
              .returncode == 0, 60, "glusterd")
        if self.proc.poll() is not None:
            raise RuntimeError("glusterd exited: " +
                               open(self.log).read()[-2000:])
        return self

    def create_volume(self, name):
        brick = os.path.join(self.bricks, name)
        os.makedirs(brick, exist_ok=True)
        self.cli("volume", "create", name, f"{self.host}:{brick}", "force")
        self.volumes.append(name)
        self.cli("volume", "start", name)
        return brick

    def brick_pid(self, name):
        out = self.cli("volume", "status", name, "detail", check=False).stdout
        for line in out.splitlines():
            if line.strip().startswith("Pid"):
                try:
                    return int(line.split(":")[1])
                except ValueError:
                    return None
        return None

    def restart_brick(self, name):
        self.cli("volume", "start", name, "force")

    def kill_glusterd(self):
        _kill(self.proc)

    def restart_glusterd(self):
        self.proc = subprocess.Popen(
            ["glusterd", "-N", "-f", self.volfile, "-p", self.pidfile,
             "-l", self.log], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.proc.poll() is not None or
              self.cli("pool", "list", check=False, timeout=10)
              .returncode == 0, 60, "glusterd")

    def stop(self):
        try:
            if self.proc and self.proc.poll() is None:
                for v in self.volumes:
                    self.cli("volume", "stop", v, "force", check=False)
                    self.cli("volume", "delete", v, check=False)
        finally:
            # bricks glusterd started and may have left behind
            for pidf in glob.glob("/run/gluster/vols/*/*.pid"):
                try:
                    pid = int(open(pidf).read().strip())
                    if any(b in open(f"/proc/{pid}/cmdline").read()
                           for b in [self.bricks]):
                        os.kill(pid, signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            _kill(self.proc, signal.SIGTERM)
            self.proc = None
            shutil.rmtree(self.workdir, ignore_errors=True)
            for d in ("/run/gluster", "/var/log/glusterfs"):
                for f in glob.glob(os.path.join(d, "*")):
                    if os.path.isdir(f) and not os.path.islink(f):
                        shutil.rmtree(f, ignore_errors=True)
                    else:
                        try:
                            os.unlink(f)
                        except OSError:
                            pass
            if self._lock:
                self._lock.close()
                self._lock = None


def gluster_url(volume, path, host="127.0.0.1"):
    return f"gluster://{host}/{volume}/{path}"
