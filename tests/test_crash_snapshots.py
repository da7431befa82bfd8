"""Crash tests of internal snapshots and amend (tests/test_crash.py has
the power-cut machinery, the shadow model and the kill -9 of convert).

  - A sequence of guest I/O and snapshot create, apply and delete is cut
    by power loss at random points of any step
    (IMGTOOL_CRASH_SNAP_POINTS, default 30, split over four
    configurations).
  - `imgtool snapshot -c/-a/-d` and `imgtool amend -o refcount_bits=/
    compat=` on a 32 MiB image with 512-byte clusters, zero clusters and
    two snapshots are killed with SIGKILL at random moments
    (IMGTOOL_KILL_POINTS / 6 per operation).

Every outcome is the state before or after the operation (snapshot names,
the active layer and every snapshot's content; for amend also the format)
with at most leaked clusters, which check -r all frees without changing
the content.  The power-loss tests of amend itself are in test_amend.py.
"""
import hashlib
import json
import os
import random
import shutil
import subprocess

import pytest

from conftest import (IMGTOOL, faulty_opts, image_state, imgtool,
                      qemu_check_clean, qemu_img, qemu_io, sanitized)
from test_crash import (KILL_POINTS, SECTOR, SEED, VSIZE, cluster_size,
                        durable_model, gen_workload, header_flags,
                        kill_after, make_base, run_io, script_line,
                        timed_run, uniform_sectors)


# ------------------------------------------------ snapshots among writes
#
# A fixed sequence of steps, random guest writes between internal
# snapshot operations: io, -c s1, io, -c s2, io, -a s1, io, -d s2, io.
# The power goes at a random write or flush of one step, every step
# before it having completed.  A cut inside a snapshot operation leaves
# the state before or after it (snapshot names, the active layer and
# every snapshot's content); a cut inside guest I/O leaves the snapshots
# exactly as they were and the active layer within the shadow model.
# Either way qemu-img check finds at most leaks (and, inside a snapshot
# operation, COPIED flags off by such a leaked reference, as in
# test_snapshot.py), and imgtool check -r all makes the image clean
# without changing what it holds.

SNAP_POINTS = int(os.environ.get("IMGTOOL_CRASH_SNAP_POINTS",
                                 "16" if sanitized() else "30"))
SNAP_STEPS = [None, ["-c", "s1"], None, ["-c", "s2"], None, ["-a", "s1"],
              None, ["-d", "s2"], None]
SNAP_CONFIGS = [
    ("default", ""),
    ("c512", "cluster_size=512"),
    ("compat010-c4k", "compat=0.10,cluster_size=4k"),
    ("lazy-extl2", "lazy_refcounts=on,extended_l2=on"),
]


def run_snap_step(img, step, script, **faulty):
    if step is None:
        return run_io(img, script, **faulty)
    return subprocess.run([IMGTOOL, "snapshot", *step, "--image-opts",
                           faulty_opts(img, **faulty)],
                          capture_output=True, text=True, timeout=120)


def snapshot_sequence(tmp, name, opts, npoints, seed):
    rng = random.Random(f"{seed}-snapseq-{name}")
    stats = {"points": 0, "in_snapshot_op": 0, "new_state": 0}
    base, _, _ = make_base(tmp, "seq", opts, False, rng)
    cs = cluster_size(opts)
    # Guest I/O without resizes: a snapshot keeps the size it was made at.
    steps = []
    for step in SNAP_STEPS:
        if step is None:
            ops = gen_workload(rng, cs, nops=12, resize=False)
            steps.append((None, ops, "".join(script_line(op) + "\n"
                                             for op in ops)))
        else:
            steps.append((step, None, ""))
    # One pass records the image before each step and each step's writes
    # and flushes.
    prefix, counts = [], []
    cur = base.parent / "cur.qcow2"
    shutil.copy(base, cur)
    for k, (step, ops, script) in enumerate(steps):
        snap = base.parent / f"before{k}.qcow2"
        shutil.copy(cur, snap)
        prefix.append(snap)
        st = base.parent / f"stats{k}"
        p = run_snap_step(cur, step, script, stats_file=st)
        assert p.returncode == 0, f"{name} step {k} {step}: {p.stderr}"
        c = dict(line.split("=") for line in open(st).read().split())
        counts.append((int(c["writes"]), int(c["flushes"])))
    after_all = cur

    for point in range(npoints):
        k = rng.randrange(len(steps))
        step, ops, script = steps[k]
        writes, flushes = counts[k]
        if not writes:
            continue
        img = base.parent / "cut.qcow2"
        shutil.copy(prefix[k], img)
        mode = rng.choice(["drop", "random-part", "keep"])
        cutseed = rng.randrange(1, 1 << 30)
        if rng.random() < 0.75 or not flushes:
            where = {"powerfail_after_writes": rng.randint(1, writes)}
        else:
            where = {"powerfail_at_flush": rng.randint(1, flushes)}
        p = run_snap_step(img, step, script, powerfail_mode=mode,
                          seed=cutseed, **where)
        what = (f"[{name}] step {k} ({step or 'guest I/O'}) cut at {where} "
                f"mode {mode} seed {cutseed}\nscript:\n{script}"
                f"stderr: {p.stderr}")
        assert "Sanitizer" not in p.stderr, what
        _, corrupt = header_flags(img)
        assert not corrupt, what

        before = image_state(prefix[k], tmp)
        got = image_state(img, tmp)
        if step is not None:
            after = image_state(prefix[k + 1] if k + 1 < len(steps)
                                else after_all, tmp)
            assert got in (before, after), what + "\nneither old nor new state"
            stats["in_snapshot_op"] += 1
            stats["new_state"] += got == after
        else:
            assert got[0] == before[0] and got[2] == before[2], \
                what + "\nguest I/O changed the snapshots"
            model = durable_model(ops, p.stderr, uniform_sectors(before[1]),
                                  [], VSIZE // SECTOR, cs, False)
            bad = model.verify(got[1], len(got[1]))
            assert not bad, what + "\n" + "\n".join(bad)

        dirty, _ = header_flags(img)
        q = qemu_img("check", "-f", "qcow2", img, check=False)
        errors = [l for l in (q.stdout + q.stderr).splitlines()
                  if l.startswith("ERROR")]
        assert q.returncode in (0, 3) or (
            (dirty or step is not None) and q.returncode == 2 and errors and
            all(e.startswith("ERROR OFLAG_COPIED") for e in errors)) or (
            dirty and q.returncode == 2), what + f"\n{q.stdout}{q.stderr}"
        if q.returncode:
            r = imgtool("check", "-r", "all", "-f", "qcow2", img,
                        check=False)
            assert r.returncode == 0, what + f"\n{r.stdout}{r.stderr}"
            qemu_check_clean(img)
            assert image_state(img, tmp) == got, \
                what + "\ncheck -r all changed the content"
        stats["points"] += 1
    return stats


@pytest.mark.parametrize("name,opts", SNAP_CONFIGS,
                         ids=[c[0] for c in SNAP_CONFIGS])
def test_power_loss_snapshots_among_writes(tmp_path, name, opts):
    npoints = max(1, SNAP_POINTS // len(SNAP_CONFIGS))
    stats = snapshot_sequence(tmp_path, name, opts, npoints, SEED)
    assert stats["points"] >= npoints // 2, stats
    print(f"{name}: {stats}")


# ------------------------------------------------ kill -9 of snapshot ops

def state_digest(img, work):
    """image_state() hashed: the kill test compares many states of a
    bigger image."""
    names, active, snaps = image_state(img, work)
    return (tuple(names), hashlib.sha256(active).hexdigest(),
            tuple(hashlib.sha256(snaps[n]).hexdigest() for n in names))


def make_snapshot_base(path, work, rng):
    """32 MiB, 512-byte clusters (so the operations have some 25k
    clusters of metadata to walk), 12 MiB of data, zero clusters, two
    snapshots and changes after each."""
    src = work / "src.raw"
    with open(src, "wb") as f:
        f.truncate(32 << 20)
        for off in range(0, 12 << 20, 1 << 20):
            f.seek(off + rng.randrange(0, 32) * 4096)
            f.write(bytes([rng.randrange(1, 255)]) * (1 << 20))
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512",
             src, path)
    src.unlink()
    qemu_img("snapshot", "-c", "s1", path)
    qemu_io("-c", "write -P 0x71 1M 3M", "-c", "write -z 20M 1M", path)
    qemu_img("snapshot", "-c", "s2", path)
    qemu_io("-c", "write -P 0x72 2M 2M", "-c", "discard 24M 2M", path)


def kill_at_random(cmd, base, img, rng, full, before, after, state, label,
                   also_ok=lambda q: False):
    """Runs cmd (taking some full seconds when left alone) on a fresh copy
    of base at img KILL_POINTS // 7 times (at least twice), killing it at
    a random moment each time.  Every outcome must have no corrupt bit,
    pass qemu-img check but for leaks (or what also_ok accepts of the
    check's result), hold state() before or after, and when check found
    anything be made clean by check -r all without changing that state.
    Prints how often each outcome came."""
    outcomes = {"before": 0, "after": 0, "repaired": 0}
    for k in range(max(2, KILL_POINTS // 7)):
        shutil.copy(base, img)
        kill_after(cmd, rng.uniform(0, full))
        what = f"{label} killed ({k}, it takes {full:.3f}s)"
        _, corrupt = header_flags(img)
        assert not corrupt, what
        q = qemu_img("check", "-f", "qcow2", img, check=False)
        assert q.returncode in (0, 3) or also_ok(q), \
            f"{what}\n{q.stdout}{q.stderr}"
        got = state()
        assert got in (before, after), f"{what}: neither old nor new state"
        outcomes["after" if got == after else "before"] += 1
        if q.returncode:
            imgtool("check", "-r", "all", "-f", "qcow2", img)
            qemu_check_clean(str(img))
            assert state() == got, f"{what}: check -r all changed it"
            outcomes["repaired"] += 1
    print(f"kill {label}: {outcomes}, full operation {full:.3f}s")


@pytest.fixture(scope="module")
def snapshot_base(tmp_path_factory):
    work = tmp_path_factory.mktemp("killsnap")
    base = work / "base.qcow2"
    make_snapshot_base(base, work, random.Random(f"{SEED}-killsnap"))
    return base, state_digest(base, work)


@pytest.mark.parametrize("op", [["-c", "s3"], ["-a", "s1"], ["-d", "s1"],
                                ["-d", "s2"]],
                         ids=["create", "apply", "delete-s1", "delete-s2"])
def test_kill_snapshot(tmp_path, snapshot_base, op):
    """SIGKILL at random moments of imgtool snapshot -c/-a/-d: the image
    holds the state before or after (names, active layer, every
    snapshot), qemu-img check finds at most leaks (and COPIED flags off
    by a leaked reference), and check -r all cleans it without changing
    the content."""
    rng = random.Random(f"{SEED}-killsnap-{op}")
    base, before = snapshot_base
    img = tmp_path / "img.qcow2"
    shutil.copy(base, img)
    cmd = [IMGTOOL, "snapshot", *op, img]
    full = timed_run(cmd)
    after = state_digest(img, tmp_path)
    assert after != before

    def copied_flags_only(q):
        errors = [l for l in (q.stdout + q.stderr).splitlines()
                  if l.startswith("ERROR")]
        return q.returncode == 2 and all(
            e.startswith("ERROR OFLAG_COPIED") for e in errors)

    kill_at_random(cmd, base, img, rng, full, before, after,
                   lambda: state_digest(img, tmp_path), f"snapshot {op}",
                   copied_flags_only)


# ------------------------------------------------ kill -9 of amend

def amend_state(img, work):
    info = json.loads(qemu_img("info", "--output=json", "-f", "qcow2",
                               img).stdout)
    spec = info["format-specific"]["data"]
    return spec["compat"], spec["refcount-bits"], state_digest(img, work)


@pytest.mark.parametrize("opts,start", [
    ("refcount_bits=4", None),
    ("refcount_bits=64", None),
    ("compat=0.10", None),
    ("compat=1.1", "compat=0.10"),
], ids=["refbits4", "refbits64", "compat010", "compat11"])
def test_kill_amend(tmp_path, snapshot_base, opts, start):
    """SIGKILL at random moments of imgtool amend -o refcount_bits=/
    compat= on the snapshot image (32 MiB, 512-byte clusters, zero
    clusters, two snapshots): the old or the new format with the same
    content (active layer and snapshots), qemu-img check finds at most
    leaks, and check -r all leaves it clean and unchanged."""
    rng = random.Random(f"{SEED}-killamend-{opts}")
    base = tmp_path / "base.qcow2"
    shutil.copy(snapshot_base[0], base)
    if start:
        qemu_img("amend", "-f", "qcow2", "-o", start, base)
    before = amend_state(base, tmp_path)
    img = tmp_path / "img.qcow2"
    shutil.copy(base, img)
    cmd = [IMGTOOL, "amend", "-f", "qcow2", "-o", opts, img]
    full = timed_run(cmd)
    after = amend_state(img, tmp_path)
    assert after[:2] != before[:2] and after[2] == before[2]
    kill_at_random(cmd, base, img, rng, full, before, after,
                   lambda: amend_state(img, tmp_path), f"amend -o {opts}")
