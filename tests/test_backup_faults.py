"""Backups under faults: SIGKILL at random moments (of a backup and of a
prune), power cuts while a backup rotates the bitmaps in the image (the
faulty filter's power-cut mode under the source), and a repository disk
that fills up (a small tmpfs).

After each fault: the repository lists only complete points and
backup-verify finds them sound; the image's bitmaps are consistent (none
flagged in use, qemu-img check clean but for leaks), so the next backup
still finds the changes by bitmap; and that backup restores to exactly
what the image holds.

IMGTOOL_BACKUP_KILLS (default 8) sets the kills per test; vary
IMGTOOL_BACKUP_SEED for other moments.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from backupenv import (assert_bitmaps_consistent, assert_point_restores,
                       backup, backup_rec, faulty_source, keep, our_bitmaps,
                       points, read_stats, verify)
from conftest import (IMGTOOL, imgtool, io_args, no_leak_check_env,
                      one_error_line, qemu_img, qemu_io, random_io)

MiB = 1 << 20
KILLS = int(os.environ.get("IMGTOOL_BACKUP_KILLS", "8"))
SEED = int(os.environ.get("IMGTOOL_BACKUP_SEED", "1"))


def make_image(path, size, rng, fill=0.6):
    """A qcow2 image with random data in a fraction of its clusters."""
    raw = str(path) + ".raw"
    with open(raw, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 1 << 20):
            if rng.random() < fill:
                f.seek(off)
                f.write(rng.randbytes(1 << 20))
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, path)
    os.unlink(raw)


def change(img, rng, size, n=20):
    cmds = random_io(rng, size, n, ["data", "data", "zero", "discard"],
                     [4096, 65536, 1 << 20])
    qemu_io("-f", "qcow2", *io_args(cmds), img)


def kill_after(cmd, delay):
    proc = subprocess.Popen([str(a) for a in cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=no_leak_check_env())
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def test_kill_during_backup(tmp_path):
    rng = random.Random(f"{SEED}-kill-backup")
    size = 96 * MiB
    img = tmp_path / "vm.qcow2"
    make_image(img, size, rng)
    repo = tmp_path / "repo"
    t0 = time.monotonic()
    backup(img, repo)
    full = time.monotonic() - t0
    outcomes = {"killed": 0, "finished": 0}
    for k in range(KILLS):
        change(img, rng, size)
        mode = rng.choice(["full", "incremental", "differential", "auto"])
        rc = kill_after([IMGTOOL, "backup", "--mode", mode, img, repo],
                        rng.uniform(0, full * 1.2))
        outcomes["finished" if rc == 0 else "killed"] += 1
        what = f"kill {k} ({mode})"
        listed = points(repo)
        assert listed, what
        rep = json.loads(verify(repo).stdout)
        assert all(e["status"] == "ok" for e in rep), f"{what}: {rep}"
        assert_bitmaps_consistent(img)
        # Whatever the moment, the chain goes on by bitmap: the base's
        # bitmap is never lost.
        rec = backup_rec(img, repo, "--mode", "incremental")
        assert rec["disks"][0]["method"] == "bitmap", f"{what}: {rec}"
        assert not [n for n in os.listdir(repo) if n.startswith(".tmp-")]
        mine = {n.rsplit(".", 1)[1] for n in our_bitmaps(img)}
        assert rec["id"] in mine and len(mine) <= 3, what
        assert_point_restores(repo, rec["id"],
                              keep(img, tmp_path / "exp.raw"), tmp_path)
    print(f"backup kills: {outcomes}, full backup {full:.2f}s")


def test_kill_during_prune(tmp_path):
    rng = random.Random(f"{SEED}-kill-prune")
    size = 24 * MiB
    img = tmp_path / "vm.qcow2"
    make_image(img, size, rng)
    template = tmp_path / "template"
    expected = {}
    for i, mode in enumerate(["full", "incremental", "differential",
                              "incremental", "incremental", "incremental"]):
        if i:
            change(img, rng, size, 30)
        rec = backup_rec(img, template, "--mode", mode)
        expected[rec["id"]] = keep(img, tmp_path / f"e{i}.raw")
    ids = sorted(expected)
    cmd = [IMGTOOL, "backup-prune", "--keep-last", "2"]
    work = tmp_path / "work"
    shutil.copytree(template, work)
    t0 = time.monotonic()
    imgtool(*cmd[1:], work)
    full = time.monotonic() - t0
    for k in range(max(2, KILLS // 2)):
        shutil.rmtree(work)
        shutil.copytree(template, work)
        kill_after([*cmd, work], rng.uniform(0, full * 1.2))
        what = f"prune kill {k}"
        # Between kill and replay every listed point still restores
        # (readers go by the records) and verifies.
        rep = json.loads(verify(work).stdout)
        assert all(e["status"] == "ok" for e in rep), f"{what}: {rep}"
        p = rng.choice(points(work))
        assert_point_restores(work, p["id"], expected[p["id"]], tmp_path)
        # The next prune finishes the interrupted one.
        imgtool(*cmd[1:], work)
        assert [p["id"] for p in points(work)] == ids[-2:], what
        assert not (work / "journal.json").exists()
        for pid in ids[-2:]:
            assert_point_restores(work, pid, expected[pid], tmp_path)
        verify(work)


def test_power_cut_while_rotating_bitmaps(tmp_path):
    """Every write a backup makes to the image (its bitmap stores) is a
    possible power cut: cut after each one in turn, in the three ways
    the cache may be left, and the image must come back with consistent
    bitmaps that still lead the next backup to the changes."""
    rng = random.Random(f"{SEED}-powercut")
    size = 16 * MiB
    base = tmp_path / "base.qcow2"
    make_image(base, size, rng, fill=0.5)
    base_repo = tmp_path / "base-repo"
    backup(base, base_repo, "--disk", "vm")
    change(base, rng, size)
    # A second point, so the next one both adds a bitmap (before it reads)
    # and removes one (once it is listed).
    backup(base, base_repo, "--disk", "vm")
    change(base, rng, size)
    # How many writes an incremental makes to the image.
    img = tmp_path / "vm.qcow2"
    repo = tmp_path / "repo"
    shutil.copy(base, img)
    shutil.copytree(base_repo, repo)
    st = tmp_path / "count.stats"
    backup(faulty_source(img, st), repo, "--image-opts", "--disk", "vm")
    writes = read_stats(st)["writes"]
    assert writes >= 2
    modes = ["drop", "keep", "random-part"]
    outcomes = {"failed": 0, "listed": 0}
    for n in range(1, writes + 1):
        mode = modes[n % 3]
        shutil.copy(base, img)
        shutil.rmtree(repo)
        shutil.copytree(base_repo, repo)
        before = len(points(repo))
        p = backup(faulty_source(img, tmp_path / "s", powerfail_after_writes=n,
                                 powerfail_mode=mode, seed=n),
                   repo, "--image-opts", "--disk", "vm", check=False)
        outcomes["listed" if p.returncode == 0 else "failed"] += 1
        what = f"power cut after write {n} ({mode})"
        assert len(points(repo)) == before + (p.returncode == 0), what
        # "Reboot": the image as the cut left it.
        assert_bitmaps_consistent(img)
        verify(repo)
        rec = backup_rec(img, repo, "--disk", "vm")
        assert rec["disks"][0]["method"] == "bitmap", f"{what}: {rec}"
        assert_point_restores(repo, rec["id"],
                              keep(img, tmp_path / "exp.raw"), tmp_path)
    print(f"power cuts over {writes} writes: {outcomes}")


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_repository_disk(tmp_path, small_fs):
    rng = random.Random(f"{SEED}-full")
    size = 64 * MiB
    img = tmp_path / "vm.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, str(size))
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 4M", img)
    repo = small_fs / "repo"
    first = backup_rec(img, repo)
    exp_first = keep(img, tmp_path / "first.raw")
    # 30 MiB of incompressible data cannot fit in what is left.
    with open(tmp_path / "rand", "wb") as f:
        f.write(rng.randbytes(30 * MiB))
    qemu_io("-f", "qcow2", "-c", f"write -s {tmp_path / 'rand'} 8M 30M",
            img)
    for mode in ("incremental", "full"):
        line = one_error_line(backup(img, repo, "--mode", mode, check=False))
        assert "No space left on device" in line, line
        assert [p["id"] for p in points(repo)] == [first["id"]]
        assert not [n for n in os.listdir(repo) if n.startswith(".tmp-")]
        verify(repo)
        assert_bitmaps_consistent(img)
        mine = {n.rsplit(".", 1)[1] for n in our_bitmaps(img)}
        assert mine == {first["id"]}
    assert_point_restores(repo, first["id"], exp_first, tmp_path)
    subprocess.run(["mount", "-o", "remount,size=96m", str(small_fs)],
                   check=True)
    rec = backup_rec(img, repo)
    assert rec["disks"][0]["method"] == "bitmap"
    assert_point_restores(repo, rec["id"], keep(img, tmp_path / "e.raw"),
                          tmp_path)
