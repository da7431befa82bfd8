"""imgtool commit against qemu-img commit.

Each chain is built twice (same seed), once committed by qemu-img and once
by imgtool; then every layer must read the same as qemu-img's result,
check clean, and show the same backing chain.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (IMGTOOL, imgtool, io_args, no_leak_check_env,
                      qemu_check_clean, qemu_img, qemu_io, random_io,
                      same_content)

MiB = 1024 * 1024


def random_ops(r, size, n):
    """qemu-io commands: random data, zero writes and discards."""
    return random_io(r, size, n, ["data"] * 3 + ["zero", "discard"],
                     [512, 4096, 65536, 200 * 1024, MiB])


def build_chain(d, sizes, seed, tool="qemu", base_fmt="qcow2"):
    """Chain l0 <- l1 <- ... with the given virtual sizes (MiB); returns
    the layer paths, base first."""
    r = random.Random(seed)
    paths = []
    for i, sz in enumerate(sizes):
        fmt = base_fmt if i == 0 else "qcow2"
        p = d / f"l{i}.{fmt}"
        args = ["create", "-q", "-f", fmt]
        if i:
            args += ["-b", paths[-1].name, "-F",
                     base_fmt if i == 1 else "qcow2"]
        if tool == "qemu":
            qemu_img(*args, p, f"{sz}M")
        else:
            a = [x for x in args if x != "-q"]
            imgtool(*a, p, f"{sz}M")
        cmds = random_ops(r, sz * MiB, 12)
        if fmt == "raw":
            cmds = [c for c in cmds if not c.startswith("discard")]
        if tool == "qemu":
            qemu_io("-f", fmt, *io_args(cmds), p)
        else:
            imgtool("io", "-f", fmt, *io_args(cmds), p)
        paths.append(p)
    return paths


def chain_summary(path):
    out = qemu_img("info", "--output=json", "--backing-chain", path).stdout
    return [(os.path.basename(e["filename"]), e.get("backing-filename"),
             e["virtual-size"], e["format"]) for e in json.loads(out)]


def commit_both(tmp, sizes, seed, args=(), tool="qemu", base_fmt="qcow2"):
    q, i = tmp / "q", tmp / "i"
    q.mkdir()
    i.mkdir()
    qp = build_chain(q, sizes, seed, tool, base_fmt)
    ip = build_chain(i, sizes, seed, tool, base_fmt)
    subprocess.run(["qemu-img", "commit", *args, qp[-1].name], cwd=q,
                   check=True, capture_output=True)
    p = subprocess.run([IMGTOOL, "commit", *args, ip[-1].name], cwd=i,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return qp, ip, p


def assert_same_result(qp, ip):
    fmts = ["raw" if str(p).endswith(".raw") else "qcow2" for p in qp]
    for a, b, f in zip(qp, ip, fmts):
        assert same_content(a, b, f, f), f"{b} differs from qemu-img's"
        if f == "qcow2":
            qemu_check_clean(b)
    assert chain_summary(ip[-1]) == chain_summary(qp[-1])


@pytest.mark.parametrize("sizes,seed", [
    ([4, 4], 1),
    ([2, 6], 2),             # top larger than base: the base grows
    ([4, 3, 8], 3),          # a short middle layer reads zero past its end
    ([3, 5, 5, 7], 4),
])
def test_commit_matches_qemu(tmp, sizes, seed):
    qp, ip, p = commit_both(tmp, sizes, seed)
    assert p.stdout == "Image committed.\n"
    assert_same_result(qp, ip)
    # the top is empty again: it allocates nothing (no zero clusters)
    m = json.loads(qemu_img("map", "--output=json", ip[-1]).stdout)
    top_alloc = [e for e in m if e["depth"] == 0]
    assert top_alloc == [], top_alloc
    # and gives its space back (the file ends after its metadata)
    assert os.path.getsize(ip[-1]) <= max(os.path.getsize(qp[-1]),
                                          4 * 65536)


@pytest.mark.parametrize("sizes,seed", [([4, 3, 8], 5), ([3, 5, 5, 7], 6)])
def test_commit_to_lower_base(tmp, sizes, seed):
    qp, ip, _ = commit_both(tmp, sizes, seed, args=("-b", "l0.qcow2"))
    assert_same_result(qp, ip)


def test_commit_drop_keeps_top(tmp):
    qp, ip, _ = commit_both(tmp, [4, 4], 7, args=("-d",))
    assert_same_result(qp, ip)
    # top still holds its own data
    m = json.loads(qemu_img("map", "--output=json", ip[-1]).stdout)
    assert any(e["depth"] == 0 for e in m)


def test_commit_imgtool_chain(tmp):
    qp, ip, _ = commit_both(tmp, [3, 4, 6], 8, tool="imgtool")
    assert_same_result(qp, ip)


def test_commit_raw_base(tmp):
    qp, ip, _ = commit_both(tmp, [2, 4], 9, base_fmt="raw")
    assert_same_result(qp, ip)


def test_commit_view_preserved(tmp):
    """After commit the top reads what it read before."""
    paths = build_chain(tmp, [3, 4, 6], 10)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", paths[-1], before)
    imgtool("commit", "-q", "-p", paths[-1])
    assert same_content(before, paths[-1], "raw", "qcow2")


def test_commit_progress(tmp):
    paths = build_chain(tmp, [2, 2], 11)
    p = imgtool("commit", "-p", paths[-1])
    assert "(100.00/100%)" in p.stdout
    assert p.stdout.endswith("Image committed.\n")


def test_commit_errors(tmp):
    paths = build_chain(tmp, [2, 2, 2], 12)
    other = tmp / "other.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", other, "2M")
    p = imgtool("commit", other, rc=1)
    assert p.stderr == "imgtool: Image does not have a backing file\n"
    p = imgtool("commit", "-b", other, paths[-1], rc=1)
    assert p.stderr == (f"imgtool: Did not find '{other}' in the backing "
                        f"chain of '{paths[-1]}'\n")
    p = imgtool("commit", "-b", paths[-1], paths[-1], rc=1)
    assert "Did not find" in p.stderr
    # nothing was changed by the refused commits
    for x in paths:
        qemu_check_clean(x)
    # -b names a layer relative to the overlay's directory
    p = subprocess.run([IMGTOOL, "commit", "-b", "l0.qcow2", str(paths[-1])],
                       cwd="/", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_commit_refuses_image_in_use(tmp):
    paths = build_chain(tmp, [2, 2], 13)
    # qemu-io holds a writer lock on the base while it runs
    proc = subprocess.Popen(["qemu-io", "-f", "qcow2", paths[0]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        p = imgtool("commit", paths[-1], rc=1)
        assert "lock" in p.stderr
    finally:
        proc.communicate(b"quit\n", timeout=10)
    qemu_check_clean(paths[-1])
    imgtool("commit", "-q", paths[-1])


def test_commit_killed(tmp):
    """kill -9 at random moments: every image checks consistent (leaks
    allowed) and the top still reads its original content."""
    data = tmp / "d.raw"
    r = random.Random(14)
    with open(data, "wb") as f:
        for _ in range(256):
            f.write(r.randbytes(MiB))
    base0, top0 = tmp / "b0.qcow2", tmp / "t0.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base0, "512M")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-B", base0.name,
             "-F", "qcow2", data, top0)
    r = random.Random(15)
    for delay in [0.05, r.uniform(0.1, 0.4), r.uniform(0.3, 0.8)]:
        base, top = tmp / "b.qcow2", tmp / "t.qcow2"
        shutil.copy(base0, base)
        subprocess.run(["cp", top0, top], check=True)
        qemu_img("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", top)
        proc = subprocess.Popen([IMGTOOL, "commit", "-q", top],
                                env=no_leak_check_env())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for img in (base, top):
            c = qemu_img("check", img, check=False)
            assert c.returncode in (0, 3), c.stdout + c.stderr
            imgtool("info", img)
        assert same_content(data, top, "raw", "qcow2")
        # the interrupted commit can be run again and finishes the job
        imgtool("commit", "-q", top)
        qemu_img("check", "-r", "leaks", base, check=False)
        assert same_content(data, base, "raw", "qcow2")
        assert same_content(data, top, "raw", "qcow2")


def test_commit_top_with_snapshot_and_compressed(tmp):
    """Emptying keeps what an internal snapshot still references and frees
    compressed clusters: every image checks clean, the snapshot reads as
    before."""
    res = {}
    for tool in ("q", "i"):
        d = tmp / tool
        d.mkdir()
        paths = build_chain(d, [4, 4], 30)
        top = paths[-1]
        qemu_io("-c", "write -c -P 0x41 1M 128k", "-c",
                "write -P 0x42 2M 64k", top)
        qemu_img("snapshot", "-c", "s1", top)
        qemu_io("-c", "write -P 0x43 1M 64k", "-c", "write -c -P 0x44 3M 64k",
                top)
        snap = d / "snap.raw"
        qemu_img("convert", "-O", "raw", "-l", "snapshot.name=s1", top, snap)
        prog = ["qemu-img"] if tool == "q" else [IMGTOOL]
        subprocess.run(prog + ["commit", "-q", top], check=True)
        after = d / "after.raw"
        qemu_img("convert", "-O", "raw", "-l", "snapshot.name=s1", top,
                 after)
        assert same_content(snap, after, "raw", "raw")
        qemu_check_clean(top)
        qemu_check_clean(paths[0])
        qemu_io("-c", "write -P 0x45 1M 1M", top)   # reuses freed space
        qemu_check_clean(top)
        res[tool] = paths
    for a, b in zip(res["q"], res["i"]):
        assert same_content(a, b)


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_commit_compat(tmp, compat):
    res = {}
    for tool in ("q", "i"):
        d = tmp / tool
        d.mkdir()
        base, top = d / "b.qcow2", d / "t.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat}",
                 base, "4M")
        qemu_io("-c", "write -P 1 0 4M", base)
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat}",
                 "-b", "b.qcow2", "-F", "qcow2", top, "5M")
        qemu_io("-c", "write -P 2 64k 1M", "-c", "write -z 2M 128k",
                "-c", "discard 3M 64k", "-c", "write -P 3 4M 512k", top)
        prog = ["qemu-img"] if tool == "q" else [IMGTOOL]
        subprocess.run(prog + ["commit", "-q", top], check=True)
        qemu_check_clean(top)
        qemu_check_clean(base)
        res[tool] = (base, top)
    for a, b in zip(res["q"], res["i"]):
        assert same_content(a, b)


@pytest.mark.parametrize("base_opts,top_opts", [
    ("cluster_size=4k", "cluster_size=64k"),
    ("cluster_size=2M", "cluster_size=4k"),
    ("cluster_size=64k", "extended_l2=on,cluster_size=128k"),
])
def test_commit_mixed_cluster_sizes(tmp, base_opts, top_opts):
    res = {}
    for tool in ("q", "i"):
        d = tmp / tool
        d.mkdir()
        base, top = d / "b.qcow2", d / "t.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", base_opts, base, "6M")
        qemu_io(*io_args(random_ops(random.Random(40), 6 * MiB, 15)), base)
        qemu_img("create", "-q", "-f", "qcow2", "-o", top_opts, "-b",
                 "b.qcow2", "-F", "qcow2", top, "7M")
        qemu_io(*io_args(random_ops(random.Random(41), 7 * MiB, 25)), top)
        before = d / "before.raw"
        qemu_img("convert", "-O", "raw", top, before)
        prog = ["qemu-img"] if tool == "q" else [IMGTOOL]
        subprocess.run(prog + ["commit", "-q", "-t", "none", top],
                       check=True)
        assert same_content(before, top, "raw", "qcow2")
        assert same_content(before, base, "raw", "qcow2")
        qemu_check_clean(top)
        qemu_check_clean(base)
        res[tool] = (base, top)
    for a, b in zip(res["q"], res["i"]):
        assert same_content(a, b)


def test_commit_image_opts(tmp):
    paths = build_chain(tmp, [2, 2], 42)
    before = tmp / "before.raw"
    qemu_img("convert", "-O", "raw", paths[-1], before)
    imgtool("commit", "-q", "--image-opts",
            f"driver=qcow2,file.filename={paths[-1]}")
    assert same_content(before, paths[0], "raw", "qcow2")
    assert same_content(before, paths[-1], "raw", "qcow2")
