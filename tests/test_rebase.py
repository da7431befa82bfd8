"""imgtool rebase against qemu-img rebase.

Chains are built twice from the same seed; qemu-img rebases one copy and
imgtool the other.  The top must read as it did before (safe mode), as
qemu-img's result does, check clean, and name the same backing chain.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (IMGTOOL, imgtool, no_leak_check_env, qemu_check_clean,
                      qemu_img, qemu_io, same_content)
from test_commit import build_chain, chain_summary

MiB = 1024 * 1024


def make_other(d, size_mb, seed):
    """An unrelated image with random content, to rebase onto."""
    r = random.Random(seed)
    p = d / "other.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, f"{size_mb}M")
    cmds = []
    for _ in range(10):
        off = r.randrange(0, size_mb * MiB // 65536) * 65536
        cmds += ["-c", f"write -P {r.randrange(0, 255)} {off} 65536"]
    qemu_io("-f", "qcow2", *cmds, p)
    return p


def rebase_both(tmp, sizes, seed, args, other_mb=None):
    res = {}
    for tool in ("q", "i"):
        d = tmp / tool
        d.mkdir(exist_ok=True)
        paths = build_chain(d, sizes, seed)
        if other_mb:
            make_other(d, other_mb, seed + 100)
        before = d / "before.raw"
        qemu_img("convert", "-O", "raw", paths[-1], before)
        prog = ["qemu-img"] if tool == "q" else [IMGTOOL]
        p = subprocess.run(prog + ["rebase", *args, paths[-1].name], cwd=d,
                           capture_output=True, text=True)
        assert p.returncode == 0, f"{tool}: {p.stderr}"
        res[tool] = (paths, before, p)
    return res


def assert_rebased(res):
    qp, _, _ = res["q"]
    ip, before, _ = res["i"]
    assert same_content(before, ip[-1], "raw", "qcow2"), "view changed"
    assert same_content(qp[-1], ip[-1])
    for p in ip:
        qemu_check_clean(p)
    assert chain_summary(ip[-1]) == chain_summary(qp[-1])


@pytest.mark.parametrize("sizes,seed", [
    ([4, 4, 4], 1),
    ([4, 3, 8], 2),       # the dropped middle layer is shorter
    ([2, 5, 5, 7], 3),
])
def test_rebase_onto_chain_base(tmp, sizes, seed):
    res = rebase_both(tmp, sizes, seed, ["-b", "l0.qcow2", "-F", "qcow2"])
    assert_rebased(res)
    assert res["i"][2].stdout == ""


@pytest.mark.parametrize("other_mb", [2, 6, 12])
def test_rebase_onto_unrelated(tmp, other_mb):
    res = rebase_both(tmp, [3, 4, 6], 4 + other_mb,
                      ["-b", "other.qcow2", "-F", "qcow2"], other_mb)
    assert_rebased(res)


@pytest.mark.parametrize("sizes", [[4, 6], [6, 4, 5]])
def test_rebase_flatten(tmp, sizes):
    res = rebase_both(tmp, sizes, 20, ["-b", ""])
    assert_rebased(res)
    assert "backing-filename" not in qemu_img(
        "info", "--output=json", res["i"][0][-1]).stdout


def test_rebase_raw_backing(tmp):
    for tool in ("q", "i"):
        d = tmp / tool
        d.mkdir()
        raw = d / "new.raw"
        with open(raw, "wb") as f:
            f.write(random.Random(5).randbytes(3 * MiB))
    res = rebase_both(tmp, [4, 4], 6, ["-b", "new.raw", "-F", "raw"])
    assert_rebased(res)


def test_rebase_unsafe_header_only(tmp):
    res = {}
    for tool in ("q", "i"):
        d = tmp / tool
        d.mkdir()
        paths = build_chain(d, [2, 2, 2], 7)
        prog = ["qemu-img"] if tool == "q" else [IMGTOOL]
        subprocess.run(prog + ["rebase", "-u", "-b", "l0.qcow2", "-F",
                               "qcow2", paths[-1].name], cwd=d, check=True)
        res[tool] = paths
    # no data moved: the top's own allocation is unchanged
    def own(p):
        m = json.loads(qemu_img("map", "--output=json", p).stdout)
        return [(e["start"], e["length"], e["zero"], e["data"])
                for e in m if e["depth"] == 0]
    assert own(res["i"][-1]) == own(res["q"][-1])
    assert same_content(res["q"][-1], res["i"][-1])
    assert chain_summary(res["i"][-1]) == chain_summary(res["q"][-1])
    qemu_check_clean(res["i"][-1])


def test_rebase_relative_name_from_other_dir(tmp):
    paths = build_chain(tmp, [2, 2, 2], 8)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", paths[-1], before)
    p = subprocess.run([IMGTOOL, "rebase", "-b", "l0.qcow2", "-F", "qcow2",
                        str(paths[-1])], cwd="/", capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    info = json.loads(qemu_img("info", "--output=json", paths[-1]).stdout)
    assert info["backing-filename"] == "l0.qcow2"
    assert info["full-backing-filename"] == str(tmp / "l0.qcow2")
    assert same_content(before, paths[-1], "raw", "qcow2")


def test_rebase_errors(tmp):
    paths = build_chain(tmp, [2, 2], 9)
    top = paths[-1]
    p = imgtool("rebase", "-b", "missing.qcow2", "-F", "qcow2", top, rc=1)
    assert p.stderr.startswith(
        "imgtool: Could not open new backing file 'missing.qcow2': ")
    assert "No such file or directory" in p.stderr
    assert qemu_img("info", "--output=json", top).stdout.count("l0.qcow2")
    # unsafe mode may name a file that does not exist (yet)
    imgtool("rebase", "-u", "-b", "missing.qcow2", "-F", "qcow2", top)
    out = qemu_img("info", "--output=json", "--force-share",
                   "--backing-chain", top, check=False)
    assert out.returncode != 0 and "missing.qcow2" in out.stderr
    # and back again, without being able to open the missing one
    imgtool("rebase", "-u", "-b", "l0.qcow2", "-F", "qcow2", top)
    qemu_check_clean(top)
    p = imgtool("rebase", "-b", "l0.qcow2", top, rc=1)
    assert p.stderr == ("imgtool: Could not change the backing file to "
                        "'l0.qcow2': backing format must be specified\n")
    p = imgtool("rebase", top, rc=1)
    assert "Must specify backing file (-b) or use unsafe mode (-u)" in \
        p.stderr


def test_rebase_progress(tmp):
    paths = build_chain(tmp, [2, 2], 10)
    p = imgtool("rebase", "-p", "-b", "", paths[-1])
    assert "(100.00/100%)" in p.stdout


@pytest.mark.parametrize("onto", ["", "n.qcow2"])
def test_rebase_killed(tmp, onto):
    """kill -9 during a rebase (flattening, or onto an unrelated image):
    the image checks consistent, still reads what it read before, and
    names either its old backing or, if the kill came after the header
    was rewritten, the new one with all data already in place (the
    rerun below then has nothing to copy, so a header written before
    the data would show as a content mismatch)."""
    r = random.Random(11)
    data = tmp / "d.raw"
    with open(data, "wb") as f:
        for _ in range(192):
            f.write(r.randbytes(MiB))
    base0 = tmp / "b0.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", data, base0)
    args = ["-b", onto] + (["-F", "qcow2"] if onto else [])
    if onto:
        qemu_img("create", "-q", "-f", "qcow2", tmp / onto, "192M")
        qemu_io("-c", "write -P 9 0 64M", tmp / onto)
    # A whole rebase takes ~0.15 s on an idle host: kill early and late.
    for delay in [0.02, r.uniform(0.05, 0.3)]:
        base, top = tmp / "b.qcow2", tmp / "t.qcow2"
        subprocess.run(["cp", base0, base], check=True)
        qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F",
                 "qcow2", top)
        qemu_io("-c", "write -P 3 1M 1M", top)
        proc = subprocess.Popen([IMGTOOL, "rebase", *args, top],
                                env=no_leak_check_env())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        c = qemu_img("check", top, check=False)
        assert c.returncode in (0, 3), c.stdout + c.stderr
        info = json.loads(qemu_img("info", "--output=json", top).stdout)
        if rc == -signal.SIGKILL:
            assert info.get("backing-filename") in ("b.qcow2", onto or None)
        qemu_io("-c", "read -P 3 1M 1M", top)
        subprocess.run([IMGTOOL, "rebase", *args, str(top)], check=True)
        qemu_io("-c", "write -P 3 1M 1M", base)
        assert same_content(base, top)
        c = qemu_img("check", top, check=False)   # leaks of the kill stay
        assert c.returncode in (0, 3), c.stdout + c.stderr
        info = json.loads(qemu_img("info", "--output=json", top).stdout)
        assert info.get("backing-filename") == (onto or None)


def test_rebase_image_opts_and_caches(tmp):
    paths = build_chain(tmp, [3, 3, 3], 43)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", paths[-1], before)
    imgtool("rebase", "-t", "none", "-T", "none", "-b", "l0.qcow2",
            "-F", "qcow2", "--image-opts",
            f"driver=qcow2,file.filename={paths[-1]}")
    assert same_content(before, paths[-1], "raw", "qcow2")
    assert qemu_img("info", "--output=json", paths[-1]).stdout.count(
        '"backing-filename": "l0.qcow2"') == 1
    qemu_check_clean(paths[-1])


@pytest.mark.parametrize("target,sizes", [
    ("l1.qcow2", [3, 5, 2, 7]),     # shorter layer above the new base
    ("l2.qcow2", [3, 5, 4, 7]),     # the current backing: nothing moves
    ("l1.qcow2", [6, 3, 8, 4]),
])
def test_rebase_within_chain(tmp, target, sizes):
    res = rebase_both(tmp, sizes, 50 + len(target),
                      ["-b", target, "-F", "qcow2"])
    assert_rebased(res)


def bytes_read(argv, tmp):
    """Bytes the command reads from files (strace), or None without
    strace."""
    if not shutil.which("strace"):
        return None
    log = tmp / "strace.log"
    env = no_leak_check_env()
    subprocess.run(["strace", "-f", "-qq", "-o", log, "-e",
                    "trace=pread64,preadv,preadv2,read", *map(str, argv)],
                   check=True, capture_output=True, env=env)
    total = 0
    for line in open(log):
        m = re.search(r"= (\d+)$", line.strip())
        if m:
            total += int(m.group(1))
    return total


def test_rebase_within_chain_reads_less(tmp):
    """Rebasing onto a layer of the old chain reads only what lies above
    it (as qemu-img does): a big, fully allocated base is not read."""
    base = tmp / "l0.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "64M")
    qemu_io("-c", "write -P 7 0 64M", base)
    mid = tmp / "l1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "l0.qcow2", "-F", "qcow2",
             mid)
    qemu_io("-c", "write -P 8 1M 1M", mid)
    top = tmp / "l2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "l1.qcow2", "-F", "qcow2",
             top)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", top, before)
    n = bytes_read([IMGTOOL, "rebase", "-b", "l0.qcow2", "-F", "qcow2", top],
                   tmp)
    assert same_content(before, top, "raw", "qcow2")
    m = json.loads(qemu_img("map", "--output=json", top).stdout)
    own = [(e["start"], e["length"]) for e in m if e["depth"] == 0]
    assert own == [(MiB, MiB)]
    if n is not None:
        assert n < 16 * MiB, n


@pytest.mark.parametrize("onto", ["", "other.qcow2"])
def test_rebase_compressed(tmp, onto):
    """-c (as in later qemu-img): what rebase writes is stored compressed;
    the content is unchanged and the image checks clean."""
    paths = build_chain(tmp, [4, 4, 6], 60)
    qemu_io("-c", "write -P 0x61 0 2M", paths[0])   # compressible data
    if onto:
        make_other(tmp, 6, 61)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", paths[-1], before)
    args = ["-b", onto] + (["-F", "qcow2"] if onto else [])
    imgtool("rebase", "-c", *args, paths[-1])
    assert same_content(before, paths[-1], "raw", "qcow2")
    c = qemu_check_clean(paths[-1])
    assert c.get("compressed-clusters", 0) > 0, c


def test_rebase_compressed_refused_for_raw(tmp):
    raw = tmp / "a.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    p = imgtool("rebase", "-c", "-f", "raw", "-b", "", raw, rc=1)
    assert p.stderr == ("imgtool: Compression not supported for this file "
                        "format\n")


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_rebase_many_holes_one_job(tmp):
    """A top with many scattered clusters (so many holes between them)
    rebased onto an unrelated base: the result reads as before, and the
    holes are filled by one copy job with one flush at the end, not a job
    and a flush per hole (which made a 512 MiB rebase slower than
    qemu-img's)."""
    r = random.Random(5)
    base, nb, top = tmp / "b.qcow2", tmp / "n.qcow2", tmp / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "64M")
    qemu_io("-c", "write -P 5 0 64M", base)
    qemu_img("create", "-q", "-f", "qcow2", nb, "64M")
    qemu_io("-c", "write -P 9 8M 16M", nb)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2",
             top)
    cmds = []
    for k, slot in enumerate(sorted(r.sample(range(1024), 200))):
        cmds += ["-c", f"write -P {k % 200 + 20} {slot * 65536} 65536"]
    qemu_io(*cmds, top)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", top, before)
    p = subprocess.run(["strace", "-f", "-e", "trace=fdatasync,fsync",
                        IMGTOOL, "rebase", "-F", "qcow2", "-b", "n.qcow2",
                        str(top)], capture_output=True, text=True,
                       timeout=120, env=no_leak_check_env())
    assert p.returncode == 0, p.stderr
    syncs = sum(1 for line in p.stderr.splitlines()
                if "fdatasync(" in line or "fsync(" in line)
    # data flush, header rewrite, close: a handful, not one per hole
    assert syncs <= 8, p.stderr[-2000:]
    assert same_content(before, top, "raw", "qcow2")
    qemu_check_clean(top)


@pytest.mark.parametrize("case", ["unrelated", "prefix"])
def test_rebase_odd_sizes_small_backing_clusters(tmp, case):
    """Old backing layers with 4 KiB clusters and lengths that end inside
    one of the top's 64 KiB clusters: writes into the top end mid-cluster
    and allocate the whole cluster, so whatever decides what the top
    allocates must not look again after them (the rest of that cluster
    would then keep the new backing's bytes)."""
    odd = 3 * MiB + 4608
    l0, l1, top = tmp / "l0.qcow2", tmp / "l1.qcow2", tmp / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", l0, "8M")
    qemu_io("-c", "write -P 9 0 8M", l0)
    if case == "unrelated":
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096",
                 l1, str(odd))
    else:
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096",
                 "-b", "l0.qcow2", "-F", "qcow2", l1, str(odd))
    cmds = []
    for k, off in enumerate(range(4096 * 3, odd - 4096, 4096 * 37)):
        cmds += ["-c", f"write -P {k % 200 + 20} {off} 4096"]
    cmds += ["-c", f"write -P 7 {odd - 4608} 4608"]
    qemu_io(*cmds, l1)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "l1.qcow2", "-F", "qcow2",
             top, "8M")
    qemu_io("-c", "write -P 3 1M 64k", "-c", "write -P 4 5M 64k", top)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", top, before)
    if case == "unrelated":
        new = tmp / "n.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", new, "8M")
        qemu_io("-c", "write -P 11 0 8M", new)
        imgtool("rebase", "-F", "qcow2", "-b", "n.qcow2", top)
    else:
        imgtool("rebase", "-F", "qcow2", "-b", "l0.qcow2", top)
    assert same_content(before, top, "raw", "qcow2")
    qemu_check_clean(top)
