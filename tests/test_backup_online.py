"""Online backups: a running QEMU, driven through its QMP socket (one
transaction per point over every disk, a fleecing overlay, NBD with the
qemu:dirty-bitmap context).

Most tests use a paused QEMU (no guest: writes come through HMP's
qemu-io, deterministic and quick), whose disks are read through an NBD
export of QEMU's own as the oracle.  One test boots a tiny Linux guest
(tests/guest.py) that keeps writing while points are taken, is killed,
and boots again: every point must be a state the guest really had at
the transaction, and the chain heals after the kill.

IMGTOOL_BACKUP_GUEST_LONG=1 runs the guest test for more rounds.
"""
import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

import guest
from backupenv import CLUSTER, points, verify
from conftest import IMGTOOL, imgtool, no_leak_check_env, one_error_line, \
    qemu_img
from qmpvm import Vm

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    not __import__("shutil").which("qemu-system-x86_64"),
    reason="needs qemu-system-x86_64")


def obackup(vm, repo, *args, devices=("vda", "vdb"), **kw):
    dev = [a for d in devices for a in ("--device", d)]
    return imgtool("backup", "--output=json", "--qmp", vm.qmp_path, *dev,
                   *args, repo, **kw)


def orec(vm, repo, *args, **kw):
    return json.loads(obackup(vm, repo, *args, **kw).stdout)


def restored(repo, pid, disk, out):
    if os.path.exists(out):
        os.unlink(out)
    imgtool("restore", "--point", pid, "--disk", disk, "-O", "raw", repo,
            out)
    with open(out, "rb") as f:
        return f.read()


def check_points(repo, expected, tmp):
    """expected: {point id: {disk: raw file}}: each restores exactly."""
    for pid, disks in expected.items():
        for disk, raw in disks.items():
            got = restored(repo, pid, disk, os.path.join(tmp, "r.raw"))
            with open(raw, "rb") as f:
                assert got == f.read(), f"point {pid} disk {disk} differs"


def make_disks(tmp):
    a = os.path.join(tmp, "sys.qcow2")
    b = os.path.join(tmp, "data.raw")
    qemu_img("create", "-q", "-f", "qcow2", a, "32M")
    qemu_img("create", "-q", "-f", "raw", b, "16M")
    return [(a, "qcow2", "vda"), (b, "raw", "vdb")]


def scribble(vm, rng, n=12):
    """Random writes to both disks; the clusters each touched."""
    touched = {"vda": set(), "vdb": set()}
    for _ in range(n):
        dev, node, size = rng.choice([("vda", "d0", 32 * MiB),
                                      ("vdb", "d1", 16 * MiB)])
        ln = rng.choice([4096, 65536, 200000])
        off = rng.randrange(0, (size - ln) // 512) * 512
        vm.write(node, rng.randrange(1, 256), off, ln)
        touched[dev].update(range(off // CLUSTER,
                                  (off + ln - 1) // CLUSTER + 1))
    return touched


def oracle(vm, tmp, tag):
    return {"vda": vm.snapshot("d0", os.path.join(tmp, f"{tag}-vda.raw")),
            "vdb": vm.snapshot("d1", os.path.join(tmp, f"{tag}-vdb.raw"))}


def test_online_chain_restart_and_heal(tmp_path):
    tmp = str(tmp_path)
    disks = make_disks(tmp)
    repo = tmp_path / "repo"
    rng = random.Random(11)
    expected = {}
    vm = Vm(tmp_path, disks)
    try:
        scribble(vm, rng, 20)
        rec = orec(vm, repo)
        assert [d["type"] for d in rec["disks"]] == ["full", "full"]
        assert rec["origin"] == "qmp"
        expected[rec["id"]] = oracle(vm, tmp, "p0")
        since_full = {"vda": set(), "vdb": set()}
        for i, mode in enumerate(["incremental", "incremental",
                                  "differential", "incremental"]):
            t = scribble(vm, rng)
            for k in t:
                since_full[k] |= t[k]
            rec = orec(vm, repo, "--mode", mode)
            for d in rec["disks"]:
                assert d["type"] == mode and d["method"] == "bitmap", d
                changed = t[d["name"]] if mode == "incremental" \
                    else since_full[d["name"]]
                assert d["bytes-read"] <= len(changed) * CLUSTER * 1.01, d
            expected[rec["id"]] = oracle(vm, tmp, f"p{i + 1}")
            if mode == "differential":
                since_full = {"vda": set(), "vdb": set()}
                since_full = {k: set() for k in since_full}
            assert vm.leftovers() == []
        # qcow2: a persistent bitmap; raw: one in QEMU's memory only.
        bms = vm.bitmaps("d0")
        assert all(b["persistent"] for b in bms.values()) and bms
        assert all(not b["persistent"] for b in vm.bitmaps("d1").values())
        # The VM dies: nothing QEMU kept in memory survives.
        scribble(vm, rng)
        vm.kill()
        vm = Vm(tmp_path, disks)
        p = obackup(vm, repo)
        rec = json.loads(p.stdout)
        for d in rec["disks"]:
            assert d["method"] == "checksum" and d["reason"], d
        assert p.stderr.count("imgtool: warning:") == 2, p.stderr
        expected[rec["id"]] = oracle(vm, tmp, "healed")
        scribble(vm, rng)
        rec = orec(vm, repo)
        assert [d["method"] for d in rec["disks"]] == ["bitmap", "bitmap"]
        expected[rec["id"]] = oracle(vm, tmp, "after")
        # A clean restart keeps the qcow2 disk's bitmap.
        vm.quit()
        vm = Vm(tmp_path, disks)
        scribble(vm, rng)
        rec = orec(vm, repo)
        assert [d["method"] for d in rec["disks"]] == ["bitmap", "checksum"]
        expected[rec["id"]] = oracle(vm, tmp, "restarted")
        assert vm.leftovers() == []
    finally:
        vm.stop()
    check_points(repo, expected, tmp)
    rep = json.loads(verify(repo).stdout)
    assert all(e["status"] == "ok" for e in rep)


def test_online_interruption_cleans_up(tmp_path):
    tmp = str(tmp_path)
    a = os.path.join(tmp, "big.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", a, "256M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 200M", a],
                   check=True, capture_output=True)
    repo = tmp_path / "repo"
    vm = Vm(tmp_path, [(a, "qcow2", "vda")])
    try:
        first = orec(vm, repo, devices=("vda",))
        before = vm.bitmaps("d0")
        cmd = [IMGTOOL, "backup", "--mode", "full", "--qmp", vm.qmp_path,
               "--device", "vda", str(repo)]
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=no_leak_check_env())
            # Until the export is up, then a little into the copy.
            for _ in range(400):
                if vm.leftovers() or p.poll() is not None:
                    break
                time.sleep(0.01)
            time.sleep(0.05)
            p.send_signal(sig)
            out, err = p.communicate(timeout=120)
            if p.returncode == 0:
                continue              # it finished first: nothing to see
            if sig != signal.SIGKILL:
                lines = [l for l in err.splitlines() if l.strip()]
                assert len(lines) == 1 and "interrupted" in lines[0], err
                assert vm.leftovers() == [], sig
                assert vm.bitmaps("d0").keys() == before.keys(), sig
            assert [q["id"] for q in points(repo)][0] == first["id"]
        # Whatever a killed run left, the next one removes, and goes on.
        rec = orec(vm, repo, devices=("vda",))
        assert vm.leftovers() == []
        assert rec["disks"][0]["method"] in ("bitmap", "full")
        exp = vm.snapshot("d0", os.path.join(tmp, "exp.raw"))
        got = restored(repo, rec["id"], "vda", os.path.join(tmp, "r.raw"))
        assert got == open(exp, "rb").read()
    finally:
        vm.stop()


def test_online_point_in_time(tmp_path):
    """Writes that land after the transaction, while the backup is still
    reading, are not in the point (the fleecing overlay keeps the old
    clusters for it), and the next incremental has them."""
    tmp = str(tmp_path)
    a = os.path.join(tmp, "big.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", a, "160M")
    with open(os.path.join(tmp, "rand"), "wb") as f:
        f.write(random.Random(5).randbytes(150 * MiB))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -s {tmp}/rand 0 150M", a], check=True,
                   capture_output=True)
    repo = tmp_path / "repo"
    vm = Vm(tmp_path, [(a, "qcow2", "vda")])
    try:
        before = vm.snapshot("d0", os.path.join(tmp, "before.raw"))
        p = subprocess.Popen([IMGTOOL, "backup", "--output=json", "--qmp",
                              vm.qmp_path, "--device", "vda", "-m", "1",
                              str(repo)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        for _ in range(2000):
            if any(x.startswith("imgtool-") and x.endswith("-e0")
                   for x in vm.leftovers()) or p.poll() is not None:
                break
            time.sleep(0.005)
        # The point in time is taken: overwrite what it reads last.
        for k in range(8):
            vm.write("d0", 0xe0 + k, 150 * MiB - (k + 1) * 2 * MiB, MiB)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        rec = json.loads(out)
        got = restored(repo, rec["id"], "vda", os.path.join(tmp, "r.raw"))
        assert got == open(before, "rb").read(), \
            "the point holds writes made after its transaction"
        after = vm.snapshot("d0", os.path.join(tmp, "after.raw"))
        rec = orec(vm, repo, devices=("vda",))
        assert rec["disks"][0]["method"] == "bitmap"
        assert rec["disks"][0]["bytes-read"] <= 8 * MiB * 1.01
        got = restored(repo, rec["id"], "vda", os.path.join(tmp, "r.raw"))
        assert got == open(after, "rb").read()
    finally:
        vm.stop()


def test_online_errors(tmp_path):
    tmp = str(tmp_path)
    disks = make_disks(tmp)
    repo = tmp_path / "repo"
    vm = Vm(tmp_path, disks)
    try:
        line = one_error_line(obackup(vm, repo, devices=("nope",),
                                      check=False))
        assert "no disk 'nope'" in line
        line = one_error_line(imgtool("backup", "--qmp", tmp + "/none.sock",
                                      "--device", "vda", repo, check=False))
        assert "none.sock" in line
        line = one_error_line(obackup(vm, repo, "--qga", vm.qmp_path,
                                      check=False))
        assert "guest agent" in line
        assert vm.leftovers() == []
        assert not [b for b in vm.bitmaps("d0") if "imgtool" in b]
        # A usage error: the line and qemu-img's hint to --help.
        p = imgtool("backup", "--device", "vda", "x", repo, check=False)
        assert p.returncode == 1 and "go with --qmp" in p.stderr
        # The device names the disk: a qdev id, or the node name.
        rec = orec(vm, repo, devices=("d0", "vdb"))
        assert [d["name"] for d in rec["disks"]] == ["d0", "vdb"]
    finally:
        vm.stop()


GUEST_WRITER = r"""
dd if=/dev/zero of=/tmp/z bs=65536 count=1 2>/dev/null
r=%(start)d
while :; do
    b=0
    while [ $b -lt %(blocks)d ]; do
        printf 'ROUND %%08d BLOCK %%04d\n' $r $b > /tmp/h
        cat /tmp/h /tmp/z | dd of=/tmp/blk bs=65536 count=1 iflag=fullblock 2>/dev/null
        dd if=/tmp/blk of=/dev/vda bs=65536 seek=$((b + 16)) count=1 \
            oflag=direct conv=notrunc,fsync 2>/dev/null || echo WRITE-FAILED
        b=$((b + 1))
    done
    echo "ROUND-DONE $r"
    r=$((r + 1))
done
"""
BLOCKS = 64


def guest_rounds(raw):
    """The round each block of the writer's region holds."""
    with open(raw, "rb") as f:
        data = f.read()
    out = []
    for b in range(BLOCKS):
        head = data[(16 + b) * 65536:(16 + b) * 65536 + 30]
        if not head.startswith(b"ROUND "):
            out.append(0)
            continue
        assert head[14:21] == b" BLOCK " and int(head[21:25]) == b, head
        out.append(int(head[6:14]))
    return out


def done_rounds(vm):
    out = []
    for l in vm.console():
        m = re.search(r"ROUND-DONE (\d+)", l)
        if m:
            out.append(int(m.group(1)))
    return out


def assert_point_in_time(rounds, before, after, what):
    """A sequential writer's disk at one instant: rounds never grow
    along the blocks (one boundary between the round being written and
    the one before it); the round being written at the transaction lies
    between what the guest had finished before the backup started and
    what it was writing when the backup ended."""
    assert all(x >= y for x, y in zip(rounds, rounds[1:])), \
        f"{what}: not one point in time: {rounds}"
    assert min(rounds) >= before, f"{what}: {rounds} older than {before}"
    assert max(rounds) <= after + 1, f"{what}: {rounds} newer than {after}"


@pytest.mark.skipif(guest.available() is not None,
                    reason=str(guest.available()))
def test_guest_writes_during_backups(tmp_path):
    kernel, base = guest.build()
    tmp = str(tmp_path)
    disk = os.path.join(tmp, "guest.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", disk, "32M")
    repo = tmp_path / "repo"
    rounds = 6 if os.environ.get("IMGTOOL_BACKUP_GUEST_LONG") else 2
    checks = []

    def boot(start):
        initrd = guest.initrd_with(
            base, GUEST_WRITER % {"start": start, "blocks": BLOCKS},
            os.path.join(tmp, f"initrd-{start}.img"))
        return Vm(tmp_path, [(disk, "qcow2", "vda")],
                  guest=(kernel, initrd))

    def take(vm, tag):
        before = max(done_rounds(vm) or [0])
        rec = orec(vm, repo, devices=("vda",))
        after = max(done_rounds(vm) or [0])
        checks.append((rec["id"], before, after, tag))
        return rec

    vm = boot(1)
    try:
        vm.wait_console("ROUND-DONE 1")
        rec = take(vm, "full")
        assert rec["disks"][0]["type"] == "full"
        for i in range(rounds):
            vm.wait_console(f"ROUND-DONE {max(done_rounds(vm)) + 1}")
            rec = take(vm, f"incremental {i}")
            assert rec["disks"][0]["method"] == "bitmap"
        assert vm.leftovers() == []
        vm.kill()
        # Boots again and writes on from round 1000; the bitmap is gone
        # with the VM: the next backup heals by checksums.
        vm = boot(1000)
        vm.wait_console("ROUND-DONE 1000")
        rec = take(vm, "healed")
        assert rec["disks"][0]["method"] == "checksum"
        assert rec["disks"][0]["reason"]
        vm.wait_console(f"ROUND-DONE {max(done_rounds(vm)) + 1}")
        rec = take(vm, "after heal")
        assert rec["disks"][0]["method"] == "bitmap"
        assert vm.leftovers() == []
        assert "WRITE-FAILED" not in vm.output()
    finally:
        vm.stop()
    for pid, before, after, tag in checks:
        raw = os.path.join(tmp, "r.raw")
        restored(repo, pid, "vda", raw)
        assert_point_in_time(guest_rounds(raw), before, after,
                             f"point {pid} ({tag})")
    verify(repo)


QGA_GUEST = r"""
for m in virtio_console crc16 mbcache jbd2 crc32c_generic ext4; do
    insmod /lib/modules/extra/$m.ko 2>/dev/null
done
mke2fs -q /dev/vda >/dev/null 2>&1 || echo MKFS-FAILED
mkdir -p /mnt /tmp/qga /var/run
mount -t ext4 /dev/vda /mnt || echo MOUNT-FAILED
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && \
        port=/dev/$(basename $p)
done
[ -n "$port" ] || echo NO-AGENT-PORT
/usr/sbin/qemu-ga -m virtio-serial -p $port -t /tmp/qga &
i=0
while :; do
    i=$((i + 1))
    dd if=/dev/urandom of=/mnt/f$((i % 40)) bs=16k count=$((i % 5 + 1)) 2>/dev/null
    [ $((i % 7)) = 0 ] && rm -f /mnt/f$(( (i * 3) % 40 ))
    # buffered, never synced by us: only a freeze puts it on the disk
    echo "SEQ $i" > /mnt/marker.tmp && mv /mnt/marker.tmp /mnt/marker
    echo "WROTE $i"
done
"""


def agent_files():
    """qemu-ga, the libraries it loads and the modules the guest needs
    (virtio-serial, ext4), at their host paths."""
    import glob
    import shutil as sh
    ga = sh.which("qemu-ga") or "/usr/sbin/qemu-ga"
    files = {"/usr/sbin/qemu-ga": (open(ga, "rb").read(), 0o755)}
    ldd = subprocess.run(["ldd", ga], capture_output=True, text=True).stdout
    for tok in ldd.split():
        if tok.startswith("/") and os.path.exists(tok):
            files[tok] = (open(tok, "rb").read(), 0o755)
    kv = guest.kernel_version()
    for m in ("virtio_console", "crc16", "mbcache", "jbd2",
              "crc32c_generic", "ext4"):
        found = glob.glob(f"/lib/modules/{kv}/kernel/**/{m}.ko",
                          recursive=True)
        if found:
            files[f"/lib/modules/extra/{m}.ko"] = open(found[0], "rb").read()
    return files


def wrote(vm):
    out = [0]
    for l in vm.console():
        m = re.search(r"WROTE (\d+)", l)
        if m:
            out.append(int(m.group(1)))
    return max(out)


@pytest.mark.skipif(guest.available() is not None or
                    not __import__("shutil").which("debugfs") or
                    not os.path.exists("/usr/sbin/qemu-ga"),
                    reason="needs the guest, e2fsprogs and qemu-ga")
def test_guest_agent_freezes_filesystems(tmp_path):
    """With --qga the guest's filesystems are frozen around the
    transaction, which writes their dirty data and metadata out: a point
    of a filesystem busy with buffered writes is clean for e2fsck and
    holds the writes the guest had made before the backup began (without
    the freeze they would still be in the guest's page cache)."""
    kernel, base = guest.build()
    tmp = str(tmp_path)
    disk = os.path.join(tmp, "fs.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", disk, "64M")
    qga = os.path.join(tmp, "qga.sock")
    initrd = guest.initrd_with(base, QGA_GUEST,
                               os.path.join(tmp, "initrd.img"),
                               files=agent_files())
    vm = Vm(tmp_path, [(disk, "qcow2", "vda")], guest=(kernel, initrd),
            extra=["-device", "virtio-serial-pci,id=vser",
                   "-chardev", f"socket,path={qga},server=on,wait=off,"
                   "id=qga0", "-device", "virtserialport,bus=vser.0,"
                   "chardev=qga0,name=org.qemu.guest_agent.0"])
    repo = tmp_path / "repo"
    checks = []
    try:
        vm.wait_console("WROTE 20")
        for _ in range(2):
            before = wrote(vm)
            rec = orec(vm, repo, "--qga", qga, devices=("vda",))
            assert rec["guest-frozen"] >= 1, rec
            checks.append((rec["id"], before, wrote(vm)))
            vm.wait_console(f"WROTE {wrote(vm) + 5}")
        out = vm.output()
        for bad in ("MKFS-FAILED", "MOUNT-FAILED", "NO-AGENT-PORT"):
            assert bad not in out, out[-2000:]
        assert vm.leftovers() == []
    finally:
        vm.stop()
    for pid, before, after in checks:
        raw = os.path.join(tmp, "r.raw")
        restored(repo, pid, "vda", raw)
        p = subprocess.run(["e2fsck", "-fn", raw], capture_output=True,
                           text=True)
        assert p.returncode == 0, f"point {pid}: {p.stdout}{p.stderr}"
        p = subprocess.run(["debugfs", "-R", "cat /marker", raw],
                           capture_output=True, text=True)
        m = re.search(r"SEQ (\d+)", p.stdout)
        assert m, f"point {pid}: no marker: {p.stdout}{p.stderr}"
        assert before <= int(m.group(1)) <= after + 1, \
            f"point {pid}: marker {m.group(1)}, guest wrote {before}..{after}"
