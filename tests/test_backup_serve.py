"""Online backups of the volumes `imgtool serve` exports, through its QMP
control socket: the same `imgtool backup --qmp SOCKET --device NAME` as
for QEMU, one transaction per point over every disk, a point-in-time view
(the fleece filter) exported over the daemon's NBD server with the
frozen dirty bitmap.

The daemon is real and its disks are written through its own NBD exports
by qemu-io (QEMU's NBD client), also while the backups run; the oracle
for every point is the content qemu-img reads through the same export at
the transaction.  A qcow2 disk keeps its bitmaps in the image; a raw one
gets bitmaps in the daemon's memory, so incrementals for as long as the
daemon runs.
"""
import json
import os
import random
import signal
import subprocess
import time

import pytest

from backupenv import CLUSTER, points, verify
from conftest import IMGTOOL, Qmp, Serve, imgtool, nbd_uri, \
    no_leak_check_env, one_error_line, qemu_img, qemu_io

MiB = 1 << 20
TAG = "imgtool-"


class Daemon:
    """`imgtool serve` with a qcow2 disk (node d0, export "sys") and
    optionally a raw one (d1, "data"), a writable NBD export of each and a
    QMP monitor; restartable on the same files."""

    def __init__(self, tmp, disks):
        self.tmp = str(tmp)
        self.disks = disks          # [(path, fmt, export name)]
        self.nbd = os.path.join(self.tmp, "nbd.sock")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.serve = None
        self.start()

    def start(self):
        args = []
        for i, (path, fmt, name) in enumerate(self.disks):
            args += ["--blockdev",
                     f"driver=file,node-name=f{i},filename={path}",
                     "--blockdev", f"driver={fmt},node-name=d{i},file=f{i}"]
        args += ["--nbd-server", f"addr.type=unix,addr.path={self.nbd}"]
        for i, (_, _, name) in enumerate(self.disks):
            args += ["--export", f"type=nbd,id=e{i},node-name=d{i},"
                     f"name={name},writable=on"]
        args += ["--chardev",
                 f"socket,id=m,path={self.qmp_path},server=on,wait=off",
                 "--monitor", "chardev=m"]
        self.serve = Serve(self.tmp, *args).start()

    def uri(self, name):
        return nbd_uri(self.nbd, name)

    def write(self, name, cmds):
        """qemu-io commands, one after the other, through the export."""
        argv = ["qemu-io", "-f", "raw"]
        for c in cmds:
            argv += ["-c", c]
        subprocess.run(argv + [self.uri(name)], check=True,
                       capture_output=True)

    def snapshot(self, name, out):
        if os.path.exists(out):
            os.unlink(out)
        qemu_img("convert", "-f", "raw", "-O", "raw", self.uri(name), out)
        return out

    def qmp(self, cmd, **args):
        q = Qmp(self.qmp_path)
        try:
            r = q.cmd(cmd, **args)
        finally:
            q.close()
        assert "return" in r, r
        return r["return"]

    def leftovers(self):
        """What a backup put in the daemon and did not take away."""
        left = [e["id"] for e in self.qmp("query-block-exports")
                if e["id"].startswith(TAG)]
        left += [j["device"] for j in self.qmp("query-block-jobs")]
        for n in self.qmp("query-named-block-nodes"):
            if n["node-name"].startswith(TAG):
                left.append(n["node-name"])
            left += [b["name"] for b in n.get("dirty-bitmaps", [])
                     if b["name"].endswith(".frozen")]
        return left

    def bitmaps(self, node):
        n = next(n for n in self.qmp("query-named-block-nodes")
                 if n["node-name"] == node)
        return {b["name"]: b for b in n.get("dirty-bitmaps", [])}

    def kill(self):
        self.serve.kill()

    def stop(self):
        if self.serve:
            self.serve.kill()
            self.serve.errfile.close()
            self.serve = None


@pytest.fixture
def daemon(tmp_path):
    made = []

    def make(disks):
        d = Daemon(tmp_path, disks)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


def two_disks(tmp):
    a = os.path.join(tmp, "sys.qcow2")
    b = os.path.join(tmp, "data.raw")
    qemu_img("create", "-q", "-f", "qcow2", a, "32M")
    qemu_img("create", "-q", "-f", "raw", b, "16M")
    return [(a, "qcow2", "sys"), (b, "raw", "data")]


def sbackup(d, repo, *args, devices=("sys", "data"), **kw):
    dev = [a for x in devices for a in ("--device", x)]
    return imgtool("backup", "--output=json", "--qmp", d.qmp_path, *dev,
                   *args, str(repo), **kw)


def srec(d, repo, *args, **kw):
    return json.loads(sbackup(d, repo, *args, **kw).stdout)


def scribble(d, rng, sizes, n=10):
    """Random writes, zero writes and discards; the clusters touched."""
    touched = {name: set() for name in sizes}
    cmds = {name: [] for name in sizes}
    for _ in range(n):
        name = rng.choice(sorted(sizes))
        ln = rng.choice([4096, 65536, 200000])
        off = rng.randrange(0, (sizes[name] - ln) // 512) * 512
        kind = rng.choice(["write -P %d" % rng.randrange(1, 256)] * 4 +
                          ["write -z", "discard"])
        cmds[name].append(f"{kind} {off} {ln}")
        touched[name].update(range(off // CLUSTER,
                                   (off + ln - 1) // CLUSTER + 1))
    for name, c in cmds.items():
        if c:
            d.write(name, c)
    return touched


def restored(repo, pid, disk, out):
    if os.path.exists(out):
        os.unlink(out)
    imgtool("restore", "--point", pid, "--disk", disk, "-O", "raw",
            str(repo), out)
    with open(out, "rb") as f:
        return f.read()


def check_points(repo, expected, tmp):
    for pid, disks in expected.items():
        for disk, raw in disks.items():
            got = restored(repo, pid, disk, os.path.join(tmp, "r.raw"))
            with open(raw, "rb") as f:
                assert got == f.read(), f"point {pid} disk {disk} differs"


def test_serve_chain_two_disks(tmp_path, daemon):
    """Full, incrementals and a differential of a qcow2 and a raw disk in
    one transaction each; every point restores to what the exports read
    at its transaction; incrementals read only what changed (+1 %); the
    daemon is left as it was, but for the bitmaps the chain needs."""
    tmp = str(tmp_path)
    d = daemon(two_disks(tmp))
    sizes = {"sys": 32 * MiB, "data": 16 * MiB}
    repo = tmp_path / "repo"
    rng = random.Random(3)
    expected = {}

    def oracle(tag):
        return {n: d.snapshot(n, os.path.join(tmp, f"{tag}-{n}.raw"))
                for n in sizes}

    scribble(d, rng, sizes, 16)
    rec = srec(d, repo)
    assert rec["origin"] == "qmp"
    assert [x["type"] for x in rec["disks"]] == ["full", "full"]
    expected[rec["id"]] = oracle("p0")
    since_full = {n: set() for n in sizes}
    for i, mode in enumerate(["incremental", "differential",
                              "incremental"]):
        t = scribble(d, rng, sizes)
        for n in t:
            since_full[n] |= t[n]
        rec = srec(d, repo, "--mode", mode)
        for x in rec["disks"]:
            assert x["type"] == mode and x["method"] == "bitmap", x
            changed = t[x["name"]] if mode == "incremental" \
                else since_full[x["name"]]
            assert x["bytes-read"] <= len(changed) * CLUSTER * 1.01, x
        expected[rec["id"]] = oracle(f"p{i + 1}")
        assert d.leftovers() == []
    # qcow2: bitmaps stored in the image; raw: in the daemon's memory.
    assert d.bitmaps("d0") and \
        all(b["persistent"] for b in d.bitmaps("d0").values())
    assert d.bitmaps("d1") and \
        not any(b["persistent"] for b in d.bitmaps("d1").values())
    check_points(repo, expected, tmp)
    assert all(e["status"] == "ok" for e in json.loads(verify(repo).stdout))


def test_serve_point_in_time_while_written(tmp_path, daemon):
    """A writer goes on through the export while the backup reads: the
    point is one instant of its sequence of writes (the writes before
    the transaction, none after), and the next incremental has the
    rest.  IMGTOOL_BACKUP_SERVE_LONG=1 runs more rounds."""
    tmp = str(tmp_path)
    a = os.path.join(tmp, "big.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", a, "96M")
    d = daemon([(a, "qcow2", "big")])
    d.write("big", ["write -P 1 0 64M"])
    repo = tmp_path / "repo"
    first = srec(d, repo, devices=("big",))
    assert first["disks"][0]["type"] == "full"
    rounds = 8 if os.environ.get("IMGTOOL_BACKUP_SERVE_LONG") else 1
    for r in range(rounds):
        point_while_written(d, repo, tmp, r)
    assert d.leftovers() == []


def point_while_written(d, repo, tmp, r):
    with open(d.snapshot("big", os.path.join(tmp, "before.raw")),
              "rb") as f:
        before = f.read()
    # Every write hits a cluster of its own, in this order; writes 0..k-1
    # of it must be in the point, none from k on.
    order = random.Random(9 + r).sample(range(0, 1024), 512)
    pat = [2 + (i + 37 * r) % 250 for i in range(len(order))]
    cmds = [f"write -P {pat[i]} {c * CLUSTER} {CLUSTER}"
            for i, c in enumerate(order)]
    # qemu-io reads its commands from stdin and runs them one by one.
    writer = subprocess.Popen(["qemu-io", "-f", "raw", d.uri("big")],
                              stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        writer.stdin.write("".join(c + "\n" for c in cmds).encode())
        writer.stdin.close()
        time.sleep(0.05)
        rec = srec(d, repo, "-m", "1", devices=("big",))
    finally:
        try:
            writer.wait(timeout=120)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, writer.stderr.read()
    assert rec["disks"][0]["method"] == "bitmap"
    got = restored(repo, rec["id"], "big", os.path.join(tmp, "r.raw"))
    present = []
    for i, c in enumerate(order):
        chunk = got[c * CLUSTER:(c + 1) * CLUSTER]
        old = before[c * CLUSTER:(c + 1) * CLUSTER]
        if old == bytes([pat[i]]) * CLUSTER:
            continue                  # rewrites what it held: says nothing
        if chunk == bytes([pat[i]]) * CLUSTER:
            present.append(True)
        else:
            assert chunk == old, \
                f"round {r}, cluster {c}: neither old nor written"
            present.append(False)
    k = present.count(True)
    assert present == [True] * k + [False] * (len(present) - k), \
        f"round {r}: the point holds a later write without an earlier one"
    # The writes after the transaction: in the next incremental.
    after = d.snapshot("big", os.path.join(tmp, "after.raw"))
    rec = srec(d, repo, devices=("big",))
    x = rec["disks"][0]
    assert x["method"] == "bitmap"
    assert x["bytes-read"] <= (len(order) - k) * CLUSTER * 1.01, (x, k)
    assert restored(repo, rec["id"], "big",
                    os.path.join(tmp, "r.raw")) == open(after, "rb").read()


def test_serve_late_writes_stay_out(tmp_path, daemon):
    """Writes that land once the point's export is up, on what the
    backup reads last, are kept out of the point by the view."""
    tmp = str(tmp_path)
    a = os.path.join(tmp, "big.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", a, "160M")
    with open(os.path.join(tmp, "rand"), "wb") as f:
        f.write(random.Random(5).randbytes(150 * MiB))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -s {tmp}/rand 0 150M", a], check=True,
                   capture_output=True)
    d = daemon([(a, "qcow2", "big")])
    before = d.snapshot("big", os.path.join(tmp, "before.raw"))
    repo = tmp_path / "repo"
    p = subprocess.Popen([IMGTOOL, "backup", "--output=json", "--qmp",
                          d.qmp_path, "--device", "big", "-m", "1",
                          str(repo)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2000):
            if any(x.endswith("-e0") for x in d.leftovers()) or \
                    p.poll() is not None:
                break
            time.sleep(0.005)
        d.write("big", [f"write -P {0xe0 + k} {150 * MiB - (k + 1) * 2 * MiB}"
                        f" {MiB}" for k in range(8)] +
                ["write -z 0 1M", "discard 4M 1M"])
    finally:
        out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    rec = json.loads(out)
    got = restored(repo, rec["id"], "big", os.path.join(tmp, "r.raw"))
    assert got == open(before, "rb").read(), \
        "the point holds writes made after its transaction"
    assert d.leftovers() == []


def test_serve_killed_daemon_heals_and_interruptions(tmp_path, daemon):
    """A backup interrupted (SIGTERM, SIGKILL) leaves the chain as it was
    and the daemon clean (a killed run's leftovers go with the next
    backup); a daemon killed between backups leaves the qcow2 bitmap
    inconsistent and the raw one gone: the next backup heals the chain
    by checksums, with one warning line per disk."""
    tmp = str(tmp_path)
    disks = two_disks(tmp)
    d = daemon(disks)
    sizes = {"sys": 32 * MiB, "data": 16 * MiB}
    rng = random.Random(21)
    repo = tmp_path / "repo"
    d.write("sys", ["write -P 3 0 30M"])
    first = srec(d, repo)
    before = d.bitmaps("d0")
    cmd = [IMGTOOL, "backup", "--mode", "full", "--qmp", d.qmp_path,
           "--device", "sys", "--device", "data", str(repo)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=no_leak_check_env())
        for _ in range(400):
            if d.leftovers() or p.poll() is not None:
                break
            time.sleep(0.005)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        if p.returncode == 0:
            continue
        if sig != signal.SIGKILL:
            lines = [x for x in err.splitlines() if x.strip()]
            assert len(lines) == 1 and "interrupted" in lines[0], err
            assert d.leftovers() == []
            assert d.bitmaps("d0").keys() == before.keys()
        assert [q["id"] for q in points(repo)] == [first["id"]]
    expected = {}
    scribble(d, rng, sizes)
    rec = srec(d, repo)
    assert d.leftovers() == []
    assert [x["method"] for x in rec["disks"]] == ["bitmap", "bitmap"]
    expected[rec["id"]] = {n: d.snapshot(n, os.path.join(tmp, f"a-{n}"))
                           for n in sizes}
    # A clean restart stores the qcow2 disk's bitmaps in the image; the
    # raw disk's lived in the daemon's memory.
    scribble(d, rng, sizes)
    assert d.serve.stop() == 0
    d.start()
    p = sbackup(d, repo)
    rec = json.loads(p.stdout)
    assert [x["method"] for x in rec["disks"]] == ["bitmap", "checksum"]
    assert "missing" in rec["disks"][1]["reason"]
    assert p.stderr.count("imgtool: warning:") == 1, p.stderr
    expected[rec["id"]] = {n: d.snapshot(n, os.path.join(tmp, f"r-{n}"))
                           for n in sizes}
    # Killed, the daemon leaves the qcow2 bitmap it found in the image
    # flagged in use there (one added since is missing: as with QEMU,
    # bitmaps are stored at close).
    assert d.serve.stop() == 0
    d.start()
    scribble(d, rng, sizes)
    d.kill()
    d.start()
    p = sbackup(d, repo)
    rec = json.loads(p.stdout)
    for x in rec["disks"]:
        assert x["method"] == "checksum" and x["reason"], x
    assert "inconsistent" in rec["disks"][0]["reason"]
    assert p.stderr.count("imgtool: warning:") == 2, p.stderr
    expected[rec["id"]] = {n: d.snapshot(n, os.path.join(tmp, f"h-{n}"))
                           for n in sizes}
    t = scribble(d, rng, sizes)
    rec = srec(d, repo)
    for x in rec["disks"]:
        assert x["method"] == "bitmap", x
        assert x["bytes-read"] <= len(t[x["name"]]) * CLUSTER * 1.01, x
    expected[rec["id"]] = {n: d.snapshot(n, os.path.join(tmp, f"b-{n}"))
                           for n in sizes}
    check_points(repo, expected, tmp)


def test_serve_short_form_and_errors(tmp_path, daemon):
    """The short form's disks are found by their export names; unknown
    devices and a daemon that is not there give one line."""
    tmp = str(tmp_path)
    a = os.path.join(tmp, "vm.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", a, "8M")
    nbd = os.path.join(tmp, "s.sock")
    qmp = os.path.join(tmp, "q.sock")
    s = Serve(tmp, "--nbd", nbd, "-w", "--name", "vm", "--qmp", qmp,
              a).start()
    try:
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 5 1M 1M",
                        nbd_uri(nbd, "vm")], check=True,
                       capture_output=True)
        repo = tmp_path / "repo"
        rec = json.loads(imgtool("backup", "--output=json", "--qmp", qmp,
                                 "--device", "vm", str(repo)).stdout)
        assert rec["disks"][0]["bytes-read"] == MiB
        out = os.path.join(tmp, "now.raw")
        qemu_img("convert", "-f", "raw", "-O", "raw",
                 nbd_uri(nbd, "vm"), out)
        assert restored(repo, rec["id"], "vm",
                        os.path.join(tmp, "r.raw")) == open(out, "rb").read()
        p = imgtool("backup", "--qmp", qmp, "--device", "nope", str(repo),
                    rc=1)
        assert "no disk 'nope'" in one_error_line(p)
    finally:
        s.kill()
        s.errfile.close()
    p = imgtool("backup", "--qmp", qmp, "--device", "vm",
                str(tmp_path / "repo"), rc=1)
    assert qmp in one_error_line(p)


def test_serve_without_nbd_server(tmp_path):
    """A daemon that runs no NBD server (its disks served otherwise, e.g.
    vhost-user) gets one for the backup's exports, on a socket in the
    repository, and has none again afterwards."""
    tmp = str(tmp_path)
    a = os.path.join(tmp, "vm.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", a, "8M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 3M", a],
                   check=True, capture_output=True)
    qmp = os.path.join(tmp, "q.sock")
    s = Serve(tmp, "--blockdev", f"driver=file,node-name=f0,filename={a}",
              "--blockdev", "driver=qcow2,node-name=vm,file=f0",
              "--chardev", f"socket,id=m,path={qmp},server=on,wait=off",
              "--monitor", "chardev=m").start()
    try:
        repo = tmp_path / "repo"
        for mode in ("full", "incremental"):
            rec = json.loads(imgtool("backup", "--output=json", "--mode",
                                     mode, "--qmp", qmp, "--device", "vm",
                                     str(repo)).stdout)
            assert rec["disks"][0]["bytes-read"] == \
                (3 * MiB if mode == "full" else 0)
            q = Qmp(qmp)
            try:
                r = q.cmd("x-imgtool-query-nbd-server")
            finally:
                q.close()
            assert r == {"return": {"running": False}}, r
        assert s.stop() == 0, s.stderr
    finally:
        s.kill()
        s.errfile.close()
    out = os.path.join(tmp, "r.raw")
    imgtool("restore", "-O", "raw", str(repo), out)
    assert qemu_img("compare", "-F", "qcow2", out, a).returncode == 0


@pytest.mark.skipif(__import__("vhostguest").skip_reason() is not None,
                    reason="needs the tiny guest")
def test_guest_under_imgtool_run(tmp_path):
    """A guest booted by `imgtool run` (its disk served by imgtool serve
    over vhost-user-blk) writes all the time; points taken through the
    daemon's control socket each hold one instant of its writes.  The
    daemon is killed between backups (run restarts it, the guest carries
    on): the next backup heals the chain by checksums, the one after
    uses bitmaps again."""
    from test_backup_online import BLOCKS, GUEST_WRITER, \
        assert_point_in_time, guest_rounds
    from vhostguest import Guest
    tmp = str(tmp_path)
    disk = os.path.join(tmp, "guest.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", disk, "32M")
    run_dir = tmp_path / "run"
    qmp = str(run_dir / "qmp.sock")
    repo = tmp_path / "repo"
    checks = []

    def done(g):
        return max([int(x.split()[1]) for x in g.log
                    if x.startswith("ROUND-DONE ")] or [0])

    def take(g, tag):
        before = done(g)
        p = imgtool("backup", "--output=json", "--qmp", qmp, "--device",
                    "disk0", str(repo))
        # The round being written when the backup ended is done before
        # the next one is.
        g.lines_until(f"ROUND-DONE {done(g) + 1}")
        checks.append((json.loads(p.stdout)["id"], before, done(g), tag))
        return json.loads(p.stdout)["disks"][0], p.stderr

    with Guest(tmp_path, GUEST_WRITER % {"start": 1, "blocks": BLOCKS},
               [disk], run_dir=run_dir) as g:
        g.lines_until("ROUND-DONE 1")
        d, _ = take(g, "full")
        assert d["type"] == "full"
        d, _ = take(g, "incremental")
        assert d["method"] == "bitmap", d
        old = g.daemon_pids()
        assert len(old) == 1
        os.kill(old[0], signal.SIGKILL)
        for _ in range(600):
            new = g.daemon_pids()
            if new and new != old and os.path.exists(qmp):
                try:
                    Qmp(qmp).close()
                    break
                except OSError:
                    pass
            time.sleep(0.05)
        g.lines_until(f"ROUND-DONE {done(g) + 1}")
        d, err = take(g, "healed")
        assert d["method"] == "checksum" and d["reason"], d
        assert err.count("imgtool: warning:") == 1, err
        d, _ = take(g, "after heal")
        assert d["method"] == "bitmap", d
        assert "WRITE-FAILED" not in g.log
    for pid, before, after, tag in checks:
        raw = os.path.join(tmp, "r.raw")
        restored(repo, pid, "disk0", raw)
        assert_point_in_time(guest_rounds(raw), before, after,
                             f"point {pid} ({tag})")
    assert all(e["status"] == "ok" for e in json.loads(verify(repo).stdout))


def test_resize_refused_while_a_view_exists(tmp_path, daemon):
    """A backup's point-in-time view keeps the size the disk had: while it
    exists, block_resize of the disk fails (EBUSY, one line naming why)
    and leaves it as it was; once the job is gone, the resize works."""
    d = daemon(two_disks(str(tmp_path))[:1])
    fleece = str(tmp_path / "fleece.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", fleece, "32M")
    d.qmp("blockdev-add", **{"driver": "qcow2", "node-name": "t",
                             "file": {"driver": "file", "filename": fleece}})
    d.qmp("blockdev-backup", **{"job-id": "j", "device": "d0", "target": "t",
                                "sync": "none", "filter-node-name": "v"})
    q = Qmp(d.qmp_path)
    try:
        r = q.cmd("block_resize", **{"node-name": "d0", "size": 64 << 20})
    finally:
        q.close()
    assert "error" in r, r
    assert r["error"]["desc"] == ("Cannot resize 'd0': a point-in-time view "
                                  "of it is in use (a backup is running)")
    sizes = {n["node-name"]: n["image"]["virtual-size"]
             for n in d.qmp("query-named-block-nodes") if "image" in n}
    assert sizes["d0"] == 32 << 20
    d.qmp("block-job-cancel", device="j", force=True)
    d.qmp("block_resize", **{"node-name": "d0", "size": 64 << 20})
    sizes = {n["node-name"]: n["image"]["virtual-size"]
             for n in d.qmp("query-named-block-nodes") if "image" in n}
    assert sizes["d0"] == 64 << 20


def test_two_repositories_back_up_one_daemon_at_once(tmp_path, daemon):
    """Two repositories, each with its own chain of the same disks, whose
    backups run at the same moment: each point restores to what the
    exports read, and each repository's incrementals carry what changed
    since its own last point (the bitmaps are per repository)."""
    tmp = str(tmp_path)
    d = daemon(two_disks(tmp))
    sizes = {"sys": 32 * MiB, "data": 16 * MiB}
    repos = [tmp_path / "repo-a", tmp_path / "repo-b"]
    rng = random.Random(5)
    expected = {r: {} for r in repos}

    def oracle(tag):
        return {n: d.snapshot(n, os.path.join(tmp, f"{tag}-{n}.raw"))
                for n in sizes}

    def both(tag, *args):
        procs = [subprocess.Popen(
            [IMGTOOL, "backup", "--output=json", "--qmp", d.qmp_path,
             "--device", "sys", "--device", "data", *args, str(r)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in repos]
        want = oracle(tag)
        for r, p in zip(repos, procs):
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            expected[r][json.loads(out)["id"]] = want
        return want

    scribble(d, rng, sizes, 12)
    both("p0")
    scribble(d, rng, sizes)
    both("p1", "--mode", "incremental")
    # only A backs up now; B's next incremental carries both changes
    # (check_points: a missed one would not restore)
    t2 = scribble(d, rng, sizes)
    rec = srec(d, repos[0], "--mode", "incremental")
    expected[repos[0]][rec["id"]] = oracle("p2a")
    t3 = scribble(d, rng, sizes)
    rec = srec(d, repos[1], "--mode", "incremental")
    expected[repos[1]][rec["id"]] = oracle("p2b")
    for x in rec["disks"]:
        assert x["method"] == "bitmap", x
        changed = t2[x["name"]] | t3[x["name"]]
        assert x["bytes-read"] <= len(changed) * CLUSTER * 1.01, x
    assert d.leftovers() == []
    for r in repos:
        check_points(r, expected[r], tmp)
        assert all(e["status"] == "ok"
                   for e in json.loads(verify(r).stdout))


def test_backup_through_a_tls_nbd_server(tmp_path):
    """The daemon's NBD server requires TLS (PSK here): a backup without
    credentials is refused in one line naming the option; with
    --tls-creds it backs up (full, then incremental) and the points
    restore to the disk's content."""
    tmp = str(tmp_path)
    psk = tmp_path / "psk"
    psk.mkdir()
    (psk / "keys.psk").write_text(f"alice:{os.urandom(32).hex()}\n")
    img = os.path.join(tmp, "sys.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "16M")
    qemu_io("-c", "write -P 7 1M 3M", img)
    nbd, qmp = os.path.join(tmp, "nbd.sock"), os.path.join(tmp, "qmp.sock")
    repo = tmp_path / "repo"
    client = ["--object", f"tls-creds-psk,id=c,endpoint=client,dir={psk},"
              "username=alice", "--tls-creds", "c"]

    def backup(*args, **kw):
        return imgtool("backup", "--output=json", "--qmp", qmp, "--device",
                       "sys", *args, str(repo), **kw)

    serve = Serve(tmp, "--object", f"tls-creds-psk,id=s,endpoint=server,"
                  f"dir={psk}", "--blockdev",
                  f"driver=file,node-name=f0,filename={img}", "--blockdev",
                  "driver=qcow2,node-name=d0,file=f0", "--nbd-server",
                  f"addr.type=unix,addr.path={nbd},tls-creds=s", "--export",
                  "type=nbd,id=e0,node-name=d0,name=sys,writable=on",
                  "--chardev", f"socket,id=m,path={qmp},server=on,wait=off",
                  "--monitor", "chardev=m").start()
    try:
        p = backup(check=False, rc=1)
        assert "requires TLS: give --tls-creds" in one_error_line(p)
        full = json.loads(backup(*client).stdout)
        # a write through the TLS export, then an incremental
        qemu_io("--image-opts", "--object", f"tls-creds-psk,id=t,"
                f"endpoint=client,dir={psk},username=alice",
                "-c", "write -P 9 8M 64k",
                f"driver=nbd,server.type=unix,server.path={nbd},"
                "export=sys,tls-creds=t")
        inc = json.loads(backup("--mode", "incremental", *client).stdout)
        assert [x["type"] for x in inc["disks"]] == ["incremental"]
        assert inc["disks"][0]["bytes-read"] <= 2 * CLUSTER
    finally:
        serve.kill()
        serve.errfile.close()
    out = os.path.join(tmp, "r.raw")
    restored(repo, inc["id"], "sys", out)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", out, img)
    restored(repo, full["id"], "sys", out)
    qemu_io("-c", "read -P 7 1M 3M", "-c", "read -P 0 8M 64k", "-f", "raw",
            out)
