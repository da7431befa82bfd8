"""Shared helpers for imgtool's integration tests.

Tests drive the built binary ($IMGTOOL, default build/imgtool) and use the
real QEMU tools (qemu-img, qemu-io) as the oracle.  Every helper returns a
CompletedProcess with text output; `check=True` (the default) fails the
test with the command's stderr when the exit code is not the expected one.
"""
import json
import os
import random
import shutil
import struct
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMGTOOL = os.environ.get("IMGTOOL") or os.path.join(ROOT, "build", "imgtool")


def run(argv, check=True, rc=0, input=None, timeout=300, env=None):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                       input=input, timeout=timeout, env=env)
    if check and p.returncode != rc:
        raise AssertionError(
            f"{' '.join(map(str, argv))}: exit {p.returncode} (wanted {rc})\n"
            f"stdout: {p.stdout[-4000:]}\nstderr: {p.stderr[-4000:]}")
    return p


def no_leak_check_env():
    """The environment with LeakSanitizer off, for imgtool runs that are
    traced (LeakSanitizer cannot run under ptrace) or killed (a kill that
    lands while it stops the world at exit leaves a report of a thread it
    could not read).  The untraced, unkilled tests cover leaks."""
    opts = [o for o in os.environ.get("ASAN_OPTIONS", "").split(":")
            if o and not o.startswith("detect_leaks=")]
    return dict(os.environ, ASAN_OPTIONS=":".join(opts + ["detect_leaks=0"]))


def imgtool(*args, **kw):
    return run([IMGTOOL, *args], **kw)


def qemu_img(*args, **kw):
    return run(["qemu-img", *args], **kw)


def qemu_io(*args, **kw):
    return run(["qemu-io", *args], **kw)


def qemu_info(path, *extra):
    return json.loads(qemu_img("info", "--output=json", *extra, path).stdout)


def imgtool_info(path, *extra):
    return json.loads(imgtool("info", "--output=json", *extra, path).stdout)


def retry_calibration(run_once, tries=30):
    """run_once() -> CompletedProcess, run again while qemu-img's PBKDF2
    calibration fails ("Unable to get accurate CPU usage", now and then
    on a loaded host); any other outcome is returned as it is."""
    import time
    for _ in range(tries):
        p = run_once()
        if "accurate CPU usage" not in p.stderr:
            return p
        time.sleep(0.1)
    raise AssertionError("qemu-img kept failing to calibrate PBKDF2")


def start_qemu_nbd(sock, *args, stderr=subprocess.PIPE):
    """qemu-nbd -t serving args on unix socket sock, returned once it
    accepts connections: its socket file appears at bind(), before
    listen(), so waiting for the file alone races ("Connection
    refused")."""
    import socket
    import time
    sock = str(sock)
    p = subprocess.Popen(["qemu-nbd", "-t", "-k", sock, *map(str, args)],
                         stdout=subprocess.DEVNULL, stderr=stderr)
    for _ in range(1000):
        if p.poll() is not None:
            raise AssertionError("qemu-nbd exited: " + (
                p.stderr.read().decode() if p.stderr else ""))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock)
            return p
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()
    stop_process(p)
    raise AssertionError("qemu-nbd did not start listening on " + sock)


def stop_process(p, timeout=10):
    """SIGTERM, and SIGKILL when that is not heeded within timeout."""
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def qemu_check_clean(path, fmt="qcow2"):
    """qemu-img check reports no corruption and no leaks."""
    p = qemu_img("check", "--output=json", "-f", fmt, path, check=False)
    assert p.returncode == 0, f"qemu-img check {path}: {p.returncode}\n{p.stdout}{p.stderr}"
    return json.loads(p.stdout)


def same_content(a, b, fa=None, fb=None):
    """qemu-img compare says the guest-visible contents are equal."""
    args = ["compare"]
    if fa:
        args += ["-f", fa]
    if fb:
        args += ["-F", fb]
    p = qemu_img(*args, a, b, check=False)
    return p.returncode == 0


def io_args(cmds):
    """qemu-io / imgtool io arguments running cmds in order."""
    return [a for c in cmds for a in ("-c", c)]


_IO_KINDS = {"pzero": "write -P 0", "zero": "write -z",
             "zero-unmap": "write -z -u", "discard": "discard"}


def random_io(r, size, n, kinds, lengths):
    """n qemu-io commands at random 512-byte aligned offsets of a
    size-byte disk.  Each one's kind is drawn from kinds (name one more
    than once to make it likelier): "data" (a random pattern), "pzero"
    (zeroes written as data), "zero", "zero-unmap" or "discard"; its
    length from lengths (a list, or a function of r), cut at the disk's
    end."""
    cmds = []
    for _ in range(n):
        off = r.randrange(0, size // 512) * 512
        ln = r.choice(lengths) if isinstance(lengths, list) else lengths(r)
        ln = min(ln, size - off)
        kind = r.choice(kinds)
        cmd = (f"write -P {r.randrange(1, 256)}" if kind == "data"
               else _IO_KINDS[kind])
        cmds.append(f"{cmd} {off} {ln}")
    return cmds


def merged_map(path):
    """qemu-img map of path with adjacent runs of equal status merged:
    the allocation status as the guest sees it, blind to host offsets, to
    how the runs happen to be split, and to holes in the host file under
    allocated clusters (QEMU reports those as zero data once it takes an
    image for a metadata-preallocated one)."""
    out = json.loads(qemu_img("map", "--output=json", path).stdout)
    runs = []
    for e in out:
        k = (e["zero"] and not e["data"], e["data"], e["present"])
        if runs and runs[-1][2:] == k and sum(runs[-1][:2]) == e["start"]:
            runs[-1] = (runs[-1][0], runs[-1][1] + e["length"]) + k
        else:
            runs.append((e["start"], e["length"]) + k)
    return runs


def one_error_line(p):
    """p failed with a single "imgtool: ..." line (blank lines aside) on
    stderr; returns that line."""
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode != 0, p.stdout
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("imgtool: "), p.stderr
    return lines[0]


_QCOW2_HEADER = ("magic", "version", "backing_file_offset",
                 "backing_file_size", "cluster_bits", "size", "crypt_method",
                 "l1_size", "l1_table_offset", "refcount_table_offset",
                 "refcount_table_clusters", "nb_snapshots",
                 "snapshots_offset")
# Bits of an L1 or L2 entry that hold the host offset.
QCOW2_OFFSET_MASK = 0x00fffffffffffe00


def qcow2_header(path):
    """The version 2 part of path's qcow2 header (the first 72 bytes), by
    the specification's field names."""
    with open(path, "rb") as f:
        fields = struct.unpack(">IIQIIQIIQQIIQ", f.read(72))
    return dict(zip(_QCOW2_HEADER, fields))


def faulty_opts(path, fmt="qcow2", extra=(), **kw):
    """--image-opts opening path as fmt (with extra "key=value" options of
    its own) over the faulty filter, kw being the filter's options
    (underscores for dashes: powerfail_after_writes=3)."""
    opts = [f"driver={fmt}", *extra, "file.driver=faulty",
            f"file.filename={path}"]
    opts += [f"file.{k.replace('_', '-')}={v}" for k, v in kw.items()]
    return ",".join(opts)


def read_be(path, off, width):
    """The big-endian unsigned field of width bytes at off in path."""
    with open(path, "rb") as f:
        f.seek(off)
        return int.from_bytes(f.read(width), "big")


def poke_be(path, off, width, value):
    """Sets the big-endian field of width bytes at off in path to value,
    or to value(old) when value is a function."""
    if callable(value):
        value = value(read_be(path, off, width))
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(value.to_bytes(width, "big"))


def sanitized():
    """Whether $IMGTOOL is built with AddressSanitizer: some three times
    slower, and its shadow memory reserves terabytes of address space
    (False when it is not built: _binary_exists says so)."""
    try:
        with open(IMGTOOL, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def guest_bytes(img, out, snap=None):
    """img's guest content, or that of its internal snapshot snap, as
    qemu-img converts it to a raw file at out."""
    if os.path.exists(out):
        os.unlink(out)
    qemu_img("convert", *(["-l", snap] if snap else []), "-O", "raw", img, out)
    with open(out, "rb") as f:
        return f.read()


def image_state(img, work):
    """(snapshot names, active content, {name: content}) of a qcow2 image
    as qemu-img reads them, work being a directory for the raw copies."""
    names = [s["name"] for s in qemu_info(img, "-f", "qcow2")
             .get("snapshots", [])]
    out = os.path.join(work, "state.raw")
    return (names, guest_bytes(img, out),
            {n: guest_bytes(img, out, n) for n in names})


def write_random_file(path, size, seed=0):
    r = random.Random(seed)
    with open(path, "wb") as f:
        f.write(r.randbytes(size))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item._imgtool_failed = True


@pytest.fixture
def tmp_path(request, tmp_path_factory):
    """pytest's tmp_path, removed once its test has passed.  A full run
    writes about 12 GiB of images (crash and kill tests, benches, model
    runs); pytest keeps three runs' worth, and the normal and ASan runs
    doubled that, which filled the CI machine's disk in the middle of a
    run.  A failed test keeps its directory for a look."""
    name = "".join(c if c.isalnum() or c in "-_" else "_"
                   for c in request.node.name)[:30]
    path = tmp_path_factory.mktemp(name, numbered=True)
    yield path
    if not getattr(request.node, "_imgtool_failed", False):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    if not os.path.exists(IMGTOOL):
        pytest.exit(f"{IMGTOOL} not built", returncode=2)
    assert shutil.which("qemu-img"), "qemu-img (qemu-utils) is required"


# ---------------------------------------------------------------------------
# Serving: `imgtool serve` daemons, QMP clients, NBD URIs

def nbd_uri(sock, name=""):
    """The NBD URI of export name on unix socket sock."""
    return f"nbd+unix:///{name}?socket={sock}"


class Serve:
    """An `imgtool serve` daemon started with args, ready when start()
    returns: readiness is the READY=1 datagram it sends to
    $NOTIFY_SOCKET, so no test polls for sockets or sleeps.  stop()
    sends SIGTERM and returns the exit code; a daemon still running when
    the `with` block ends is killed by its pid."""

    def __init__(self, workdir, *args, env=None, binary=None):
        self.workdir = str(workdir)
        self.args = [str(a) for a in args]
        self.env = dict(env if env is not None else os.environ)
        self.binary = binary or IMGTOOL
        self.proc = None
        self.stderr = ""

    def start(self, timeout=30, expect_ready=True):
        import socket
        import tempfile
        d = tempfile.mkdtemp(prefix="notify", dir=self.workdir)
        path = os.path.join(d, "n")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(path)
        ns.settimeout(0.2)
        self.env["NOTIFY_SOCKET"] = path
        self.errfile = open(os.path.join(d, "stderr"), "w+")
        self.proc = subprocess.Popen([self.binary, "serve", *self.args],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=self.errfile, env=self.env)
        import time
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    msg = ns.recv(4096).decode()
                except socket.timeout:
                    if self.proc.poll() is not None:
                        break
                    continue
                if "READY=1" in msg:
                    return self
            if expect_ready:
                rc = self.proc.poll()
                self.kill()
                raise AssertionError(f"imgtool serve {' '.join(self.args)} "
                                     f"not ready (exit {rc}):\n"
                                     f"{self.read_stderr()}")
            return self
        finally:
            ns.close()

    def read_stderr(self):
        self.errfile.flush()
        self.errfile.seek(0)
        return self.errfile.read()

    def stop(self, sig=None, timeout=60):
        import signal as _signal
        if self.proc.poll() is None:
            self.proc.send_signal(sig or _signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self.stderr = self.read_stderr()
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        if self.proc:
            self.errfile.close()


class Qmp:
    """A QMP client: greeting and qmp_capabilities on connect; cmd()
    returns the whole reply (a dict with "return" or "error"); events
    that arrive meanwhile are kept in .events."""

    def __init__(self, path, timeout=30):
        import socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""
        self.events = []
        self.greeting = self._next()
        r = self.cmd("qmp_capabilities")
        assert r == {"return": {}}, r

    def _next(self):
        dec = json.JSONDecoder()
        while True:
            text = self.buf.decode(errors="replace").lstrip()
            if text:
                try:
                    obj, end = dec.raw_decode(text)
                except ValueError:
                    obj = None
                if obj is not None:
                    self.buf = text[end:].encode()
                    return obj
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP connection closed")
            self.buf += chunk

    def send_raw(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self):
        while True:
            obj = self._next()
            if "event" in obj:
                self.events.append(obj)
                continue
            return obj

    def cmd(self, _command, **args):
        msg = {"execute": _command}
        if args:
            msg["arguments"] = {k.replace("_", "-"): v
                                for k, v in args.items()}
        self.send_raw(json.dumps(msg) + "\n")
        return self.reply()

    def wait_event(self, name):
        for e in self.events:
            if e["event"] == name:
                self.events.remove(e)
                return e
        while True:
            obj = self._next()
            if obj.get("event") == name:
                return obj
            if "event" in obj:
                self.events.append(obj)

    def close(self):
        self.sock.close()


# ----------------------------------------------------------------------
# Network storage: a real tgtd and a real glusterd (tests/netservices.py)

ISCSI_IQN = "iqn.2024-01.org.imgtool.test:disks"
ISCSI_CHAP_IQN = "iqn.2024-01.org.imgtool.test:chap"
CHAP_USER = "imgtool"
CHAP_PASSWORD = "s3cret-chap-pw"


class IscsiTarget:
    """The session's tgtd: target 1 (ISCSI_IQN, no CHAP) gets a fresh LUN
    per test from new_lun(); target 2 (ISCSI_CHAP_IQN) has LUN 1 behind
    CHAP_USER / CHAP_PASSWORD."""

    def __init__(self, tgtd, workdir):
        self.tgtd = tgtd
        self.workdir = workdir
        self.next_lun = 1
        self.next_tid = 10
        self.portal = tgtd.portal

    def url(self, lun, iqn=ISCSI_IQN, **kw):
        from netservices import iscsi_url
        return iscsi_url(self.portal, iqn, lun, **kw)

    def new_target(self, luns, chap=None):
        """A target of its own: luns is [(lun, size, opts)]; returns
        (iqn, tid, {lun: backing path})."""
        tid = self.next_tid
        self.next_tid += 1
        iqn = f"iqn.2024-01.org.imgtool.test:t{tid}"
        paths = {}
        spec = []
        for lun, size, opts in luns:
            path = os.path.join(str(self.workdir), f"t{tid}-lun{lun}.img")
            if os.path.exists(path):
                os.unlink(path)
            paths[lun] = path
            spec.append((lun, path, size, opts))
        self.tgtd.add_target(tid, iqn, spec, chap=chap)
        return iqn, tid, paths

    def new_lun(self, size=64 << 20, **opts):
        """A fresh (zeroed, sparse) LUN of target 1: (url, backing path)."""
        lun = self.next_lun
        self.next_lun += 1
        path = os.path.join(str(self.workdir), f"lun{lun}.img")
        if os.path.exists(path):
            os.unlink(path)
        self.tgtd.add_lun(1, lun, path, size, **opts)
        return self.url(lun), path


def _lun_dir(tmp_path_factory):
    """Where LUN backing files go: tmpfs when there is one, so that tgtd
    never waits for a disk to take what a test wrote."""
    import tempfile
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return tempfile.mkdtemp(prefix="imgtool-luns-", dir="/dev/shm")
    return str(tmp_path_factory.mktemp("luns"))


@pytest.fixture(scope="session")
def iscsi_target(tmp_path_factory):
    from netservices import Tgtd
    d = _lun_dir(tmp_path_factory)
    t = Tgtd(tmp_path_factory.mktemp("tgtd"))
    try:
        t.start()
        t.add_target(1, ISCSI_IQN, [])
        t.add_target(2, ISCSI_CHAP_IQN,
                     [(1, os.path.join(str(d), "chap1.img"), 32 << 20, {})],
                     chap=(CHAP_USER, CHAP_PASSWORD))
        yield IscsiTarget(t, d)
    finally:
        t.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lun(iscsi_target):
    """A fresh 64 MiB thin LUN with 512-byte blocks: (url, backing file)."""
    url, path = iscsi_target.new_lun()
    yield url, path
    iscsi_target.tgtd.delete_lun(1, int(url.rsplit("/", 1)[1]))
    os.unlink(path)


GLUSTER_VOLUME = "imgtool-gv"


class GlusterVolume:
    """The session's glusterd and its one-brick volume.  url(name) is a
    file on it, brick(name) the same file on the brick (a one-brick
    distribute volume keeps each file whole there, so local tools can
    look at it without paying a Gluster connection)."""

    def __init__(self, glusterd, volume, brick_dir):
        self.glusterd = glusterd
        self.volume = volume
        self.brick_dir = brick_dir

    def url(self, name, host="127.0.0.1"):
        return f"gluster://{host}/{self.volume}/{name}"

    def brick(self, name):
        return os.path.join(self.brick_dir, name)


@pytest.fixture(scope="session")
def gluster(tmp_path_factory):
    from netservices import Glusterd
    g = Glusterd(tmp_path_factory.mktemp("glusterd"))
    if not g.acquire():
        pytest.skip("glusterd is in use by another test process")
    try:
        g.start()
        brick = g.create_volume(GLUSTER_VOLUME)
        yield GlusterVolume(g, GLUSTER_VOLUME, brick)
    finally:
        g.stop()
