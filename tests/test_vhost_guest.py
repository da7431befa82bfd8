"""A real guest on imgtool's vhost-user back ends (`imgtool run`).

Debian's kernel and busybox boot (tests/guest.py builds and caches the
initramfs), and /test.sh in the guest checks data through the virtio
drivers, printing GUEST-VERIFIED only when every check passed.  The host
then checks byte for byte with qemu-io and qemu-img check.  Under TCG a
boot takes seconds, so the default suite boots three times:

- every transport at once: a qcow2 on virtio-blk, a qcow2 and a read-only
  raw image as LUNs of one virtio-scsi controller: reads of host data,
  writes, discard/UNMAP, and a refused write to the read-only LUN;
- run-time changes: a LUN hot-added and removed through QMP
  (block-export-add/-del on the daemon `imgtool run` started) and a
  resize of both disks (block_resize) that the guest sees;
- the daemon killed (SIGKILL) during guest writes: `imgtool run` starts
  it again, vhost-user-blk reconnects, the inflight area resubmits what
  was in flight, and the guest finishes; the image has no corruption.

IMGTOOL_GUEST_LONG=1 adds longer runs (several queues and CPUs).
"""
import json
import os
import signal
import subprocess

import pytest

from conftest import IMGTOOL, imgtool, qemu_img, qemu_io, qemu_check_clean
import vhostguest
from vhostguest import GUEST_OK, Guest

pytestmark = pytest.mark.skipif(vhostguest.skip_reason() is not None,
                                reason=str(vhostguest.skip_reason()))

MiB = 1 << 20


def make(path, size, fmt="qcow2", pattern=None, length=MiB):
    qemu_img("create", "-f", fmt, str(path), str(size))
    if pattern is not None:
        qemu_io("-f", fmt, "-c", f"write -P {pattern} 0 {length}", str(path))
    return str(path)


def read_is(path, pattern, off, length, fmt="qcow2"):
    p = qemu_io("-f", fmt, "-c", f"read -P {pattern} {off} {length}",
                str(path), check=False)
    return p.returncode == 0 and "Pattern verification failed" not in p.stdout


def qmp(run_dir, *args):
    return imgtool("serve-ctl", str(run_dir / "qmp.sock"), *args)


TRANSPORTS = r"""
ok=1
pat 021 1024 /tmp/p11; pat 042 1024 /tmp/p22; pat 063 1024 /tmp/p33
pat 104 2048 /tmp/p44; pat 125 2048 /tmp/p55
# SCSI LUNs are scanned asynchronously: wait for every disk.
for d in vda sda sdb; do wait_for [ -b /dev/$d ] || { fail no $d; ok=0; }; done
for d in vda:p11 sda:p22 sdb:p33; do
    dev=${d%:*}; p=${d#*:}
    dd if=/dev/$dev of=/tmp/r bs=64k count=16 iflag=direct 2>/dev/null
    same /tmp/r /tmp/$p && echo "READ-OK $dev" || { fail read $dev; ok=0; }
done
for d in vda:p44 sda:p55; do
    dev=${d%:*}; p=${d#*:}
    dd if=/tmp/$p of=/dev/$dev bs=64k seek=64 oflag=direct conv=fsync 2>/dev/null
    dd if=/dev/$dev of=/tmp/r bs=64k skip=64 count=32 iflag=direct 2>/dev/null
    same /tmp/r /tmp/$p && echo "WRITE-OK $dev" || { fail write $dev; ok=0; }
    # discard 1 MiB at 8 MiB after filling it: reads back zeroes
    dd if=/tmp/p44 of=/dev/$dev bs=64k seek=128 count=16 oflag=direct 2>/dev/null
    blkdiscard -o 8388608 -l 1048576 /dev/$dev || { fail discard $dev; ok=0; }
    dd if=/dev/$dev of=/tmp/r bs=64k skip=128 count=16 iflag=direct 2>/dev/null
    dd if=/dev/zero of=/tmp/z bs=64k count=16 2>/dev/null
    same /tmp/r /tmp/z && echo "DISCARD-OK $dev" || { fail discard-read $dev; ok=0; }
done
if dd if=/tmp/p44 of=/dev/sdb bs=64k count=1 oflag=direct 2>/dev/null; then
    fail write to read-only sdb succeeded; ok=0
else
    echo "RO-OK sdb"
fi
[ "$(cat /sys/block/sdb/ro)" = 1 ] || { fail sdb not read-only; ok=0; }
echo "SIZES $(cat /sys/block/vda/size) $(cat /sys/block/sda/size) $(cat /sys/block/sdb/size)"
[ $ok = 1 ] && echo GUEST-VERIFIED
"""


def test_transports(tmp_path):
    blk = make(tmp_path / "blk.qcow2", 64 * MiB, pattern="0x11")
    s0 = make(tmp_path / "s0.qcow2", 64 * MiB, pattern="0x22")
    s1 = make(tmp_path / "s1.raw", 16 * MiB, fmt="raw", pattern="0x33")
    with Guest(tmp_path, TRANSPORTS,
               [blk, f"{s0},bus=scsi", f"{s1},bus=scsi,format=raw,"
                "readonly=on"]) as g:
        rc, lines = g.finish()
        console = g.console()
    assert GUEST_OK in lines, console
    for dev in ("vda", "sda", "sdb"):
        assert f"READ-OK {dev}" in lines
    assert f"SIZES {64 * MiB // 512} {64 * MiB // 512} {16 * MiB // 512}" \
        in lines, console
    assert rc == 0, console
    # The host sees exactly what the guest wrote, and nothing else moved.
    assert read_is(blk, "0x44", 4 * MiB, 2 * MiB)
    assert read_is(s0, "0x55", 4 * MiB, 2 * MiB)
    assert read_is(blk, "0x11", 0, MiB) and read_is(s0, "0x22", 0, MiB)
    assert read_is(blk, "0", 8 * MiB, MiB) and read_is(s0, "0", 8 * MiB, MiB)
    assert read_is(s1, "0x33", 0, MiB, fmt="raw")
    assert read_is(s1, "0", MiB, 15 * MiB, fmt="raw")
    qemu_check_clean(blk)
    qemu_check_clean(s0)
    assert not os.listdir("/tmp") or not any(
        n.startswith("imgtool-run.") and os.path.isdir(f"/tmp/{n}") and
        any(f.endswith(".sock") for f in os.listdir(f"/tmp/{n}"))
        for n in os.listdir("/tmp"))


HOTPLUG = r"""
ok=1
pat 146 1024 /tmp/p66
for d in vda sda; do wait_for [ -b /dev/$d ] || { fail no $d; ok=0; }; done
echo "SIZE-BEFORE $(cat /sys/block/vda/size) $(cat /sys/block/sda/size)"
echo READY-FOR-PLUG
if wait_for [ -b /dev/sdb ]; then
    dd if=/dev/sdb of=/tmp/r bs=64k count=16 iflag=direct 2>/dev/null
    same /tmp/r /tmp/p66 && echo PLUG-OK || { fail hot-added LUN data; ok=0; }
else
    fail no sdb; ok=0
fi
echo READY-FOR-UNPLUG
wait_for [ ! -b /dev/sdb ] && echo UNPLUG-OK || { fail sdb still there; ok=0; }
echo READY-FOR-RESIZE
wait_for size_is vda 196608 && echo BLK-RESIZE-OK || { fail vda size $(cat /sys/block/vda/size); ok=0; }
for r in /sys/class/scsi_device/*/device/rescan; do echo 1 > $r; done
wait_for size_is sda 163840 && echo SCSI-RESIZE-OK || { fail sda size $(cat /sys/block/sda/size); ok=0; }
dd if=/dev/vda of=/tmp/r bs=64k skip=1535 count=1 iflag=direct 2>/dev/null && echo READ-PAST-OLD-END-OK || { fail read past old end; ok=0; }
[ $ok = 1 ] && echo GUEST-VERIFIED
"""


def test_hotplug_and_resize(tmp_path):
    blk = make(tmp_path / "blk.qcow2", 64 * MiB)
    s0 = make(tmp_path / "s0.qcow2", 64 * MiB)
    hot = make(tmp_path / "hot.qcow2", 32 * MiB, pattern="0x66")
    run_dir = tmp_path / "run"
    with Guest(tmp_path, HOTPLUG, [blk, f"{s0},bus=scsi"],
               run_dir=run_dir) as g:
        g.lines_until("READY-FOR-PLUG")
        exports = json.loads(qmp(run_dir, "query-block-exports").stdout)
        scsi = [e for e in exports if e["type"] == "vhost-user-scsi"]
        assert len(scsi) == 1 and scsi[0]["clients"] == 1, exports
        qmp(run_dir, "blockdev-add", "driver=qcow2", "node-name=hot",
            f"file.filename={hot}", "read-only=true")
        qmp(run_dir, "block-export-add", "type=vhost-user-scsi", "id=hot",
            "node-name=hot", "addr.type=unix",
            f"addr.path={run_dir}/scsi.sock", "lun=5")
        g.lines_until("READY-FOR-UNPLUG")
        # Not the last LUN: a safe delete is allowed while the guest runs.
        qmp(run_dir, "block-export-del", "id=hot")
        g.lines_until("READY-FOR-RESIZE")
        qmp(run_dir, "blockdev-del", "node-name=hot")
        qmp(run_dir, "block_resize", "node-name=disk0", f"size={96 * MiB}")
        qmp(run_dir, "block_resize", "node-name=disk1", f"size={80 * MiB}")
        rc, lines = g.finish()
        console = g.console()
    all_lines = g.log
    for m in ("PLUG-OK", "UNPLUG-OK", "BLK-RESIZE-OK", "SCSI-RESIZE-OK",
              GUEST_OK):
        assert m in all_lines, console
    assert rc == 0
    assert qemu_img("info", "--output=json", blk).stdout.count(
        str(96 * MiB)) >= 1
    qemu_check_clean(blk)
    qemu_check_clean(s0)
    qemu_check_clean(hot)


KILL = r"""
ok=1
pat 132 1024 /tmp/big
[ "$(cat /sys/block/vda/queue/write_cache)" = "write through" ] || { fail vda has a write cache; ok=0; }
[ "$(cat /sys/block/vdb/queue/write_cache)" = "write back" ] || { fail vdb has no write cache; ok=0; }
for dev in vda vdb; do
    dd if=/tmp/big of=/dev/$dev bs=64k oflag=direct conv=fsync 2>/dev/null || { fail flushed write $dev; ok=0; }
done
# Long streams of writes to both disks, the daemon killed in the middle.
for dev in vda vdb; do
    (j=1; while [ $j -le 16 ]; do dd if=/tmp/big of=/dev/$dev bs=64k seek=$((j * 16)) oflag=direct 2>/dev/null || echo "GUEST-FAIL stream $dev $j"; j=$((j + 1)); done) &
done
sleep 0.3
echo KILL-NOW
wait
echo STREAMS-DONE
# On the writethrough disk every completed write survived the crash; on
# the write-back one only what was flushed before it (the first MiB)
# must have.
j=0
while [ $j -le 16 ]; do
    dd if=/dev/vda of=/tmp/r bs=64k skip=$((j * 16)) count=16 iflag=direct 2>/dev/null
    same /tmp/r /tmp/big || { fail vda chunk $j; ok=0; }
    j=$((j + 1))
done
dd if=/dev/vdb of=/tmp/r bs=64k count=16 iflag=direct 2>/dev/null
same /tmp/r /tmp/big || { fail vdb flushed chunk; ok=0; }
[ $ok = 1 ] && echo GUEST-VERIFIED
"""


def test_daemon_killed_during_writes(tmp_path):
    """SIGKILL of the daemon while the guest streams writes to two
    virtio-blk disks: `imgtool run` starts it again, QEMU reconnects, the
    inflight area resubmits what was in flight and the guest carries on.
    The writethrough disk keeps every write the guest saw complete; the
    write-back one (a volatile cache, as the guest was told) keeps what
    was flushed; neither image has any corruption."""
    wt = make(tmp_path / "wt.qcow2", 64 * MiB)
    wb = make(tmp_path / "wb.qcow2", 64 * MiB)
    with Guest(tmp_path, KILL, [f"{wt},writethrough=on", wb],
               run_dir=tmp_path / "run") as g:
        g.lines_until("KILL-NOW")
        pids = g.daemon_pids()
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        rc, lines = g.finish()
        console = g.console()
        stderr = g.stderr()
    assert "serve daemon died (signal 9); starting it again" in stderr, \
        console
    assert "STREAMS-DONE" in g.log and GUEST_OK in g.log, console
    assert rc == 0
    # A killed qcow2 writer may leak clusters, never corrupt.
    for img in (wt, wb):
        p = qemu_img("check", "--output=json", img, check=False)
        assert p.returncode in (0, 3), p.stdout + p.stderr
        assert json.loads(p.stdout).get("corruptions", 0) == 0
    assert read_is(wt, "0x5a", 0, 17 * MiB)
    assert read_is(wb, "0x5a", 0, MiB)


@pytest.mark.skipif(not os.environ.get("IMGTOOL_GUEST_LONG"),
                    reason="set IMGTOOL_GUEST_LONG=1 for the long guest runs")
def test_multiqueue_two_cpus(tmp_path):
    blk = make(tmp_path / "blk.qcow2", 256 * MiB)
    s0 = make(tmp_path / "s0.qcow2", 256 * MiB)
    script = r"""
ok=1
pat 167 4096 /tmp/p
for dev in vda sda; do
    j=0
    while [ $j -lt 8 ]; do
        dd if=/tmp/p of=/dev/$dev bs=1M seek=$((j * 4)) oflag=direct 2>/dev/null &
        j=$((j + 1))
    done
    wait
    j=0
    while [ $j -lt 8 ]; do
        dd if=/dev/$dev of=/tmp/r bs=1M skip=$((j * 4)) count=4 iflag=direct 2>/dev/null
        same /tmp/r /tmp/p || { fail $dev chunk $j; ok=0; }
        j=$((j + 1))
    done
done
ls /sys/block/vda/mq | wc -l
[ $ok = 1 ] && echo GUEST-VERIFIED
"""
    with Guest(tmp_path, script, [blk, f"{s0},bus=scsi"], cpus=2) as g:
        rc, lines = g.finish(timeout=600)
        console = g.console()
    assert GUEST_OK in g.log, console
    assert "2" in g.log, console      # two virtio-blk queues
    qemu_check_clean(blk)
    qemu_check_clean(s0)
