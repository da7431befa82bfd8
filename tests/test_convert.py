"""imgtool convert against qemu-img: content, sparseness, chains,
concatenation, -n, -B, -m/-W/-S, progress and option errors."""
import os
import re
import random

import pytest

from conftest import (IMGTOOL, imgtool, io_args, qemu_img, qemu_io,
                      qemu_check_clean, random_io, same_content,
                      write_random_file)

MiB = 1024 * 1024


def random_ops(size, seed, n=24):
    """qemu-io commands mixing data, zero writes, zero-filled data and
    discards."""
    return random_io(random.Random(seed), size, n,
                     ["data"] * 3 + ["zero", "pzero", "discard"],
                     [512, 4096, 65536, 300 * 1024, MiB, 3 * MiB])


def make_image(path, fmt, size, seed, backing=None, n=24):
    args = ["create", "-q", "-f", fmt]
    if backing:
        args += ["-b", str(backing), "-F", "qcow2"]
    qemu_img(*args, path, str(size))
    if n:
        qemu_io("-f", fmt, *io_args(random_ops(size, seed, n)), path)
    return path


def allocated(path):
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("src_fmt,dst_fmt", [
    ("qcow2", "raw"), ("raw", "qcow2"), ("qcow2", "qcow2"), ("raw", "raw")])
def test_convert_random_content(tmp, src_fmt, dst_fmt):
    src = make_image(tmp / f"src.{src_fmt}", src_fmt, 24 * MiB, seed=1)
    dst = tmp / f"dst.{dst_fmt}"
    imgtool("convert", "-f", src_fmt, "-O", dst_fmt, src, dst)
    assert same_content(src, dst, src_fmt, dst_fmt)
    if dst_fmt == "qcow2":
        qemu_check_clean(dst)
    # never larger than what qemu-img's own convert allocates, plus slack
    ref = tmp / f"ref.{dst_fmt}"
    qemu_img("convert", "-f", src_fmt, "-O", dst_fmt, src, ref)
    assert allocated(dst) <= allocated(ref) + 2 * MiB


@pytest.mark.parametrize("dst_fmt", ["raw", "qcow2"])
def test_convert_mostly_empty_1g_stays_sparse(tmp, dst_fmt):
    src = tmp / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, "1G")
    qemu_io("-c", "write -P 7 100M 1M", "-c", "write -z 200M 64M",
            "-c", "write -P 0 300M 8M", "-c", "write -P 9 1023M 1M", src)
    dst = tmp / f"out.{dst_fmt}"
    imgtool("convert", "-O", dst_fmt, src, dst)
    assert same_content(src, dst, "qcow2", dst_fmt)
    # 2 MiB of data; zero writes and zero-filled data must not allocate
    assert allocated(dst) < 8 * MiB
    if dst_fmt == "qcow2":
        qemu_check_clean(dst)


def test_convert_backing_chain_source(tmp):
    base = make_image(tmp / "base.qcow2", "qcow2", 16 * MiB, seed=2)
    mid = make_image(tmp / "mid.qcow2", "qcow2", 16 * MiB, seed=3,
                     backing=base.name)
    top = make_image(tmp / "top.qcow2", "qcow2", 20 * MiB, seed=4,
                     backing=mid.name)
    for fmt in ("raw", "qcow2"):
        dst = tmp / f"flat.{fmt}"
        imgtool("convert", "-O", fmt, top, dst)
        assert same_content(top, dst, "qcow2", fmt)
        info = qemu_img("info", dst).stdout
        assert "backing file" not in info
        if fmt == "qcow2":
            qemu_check_clean(dst)


def test_convert_concatenates_sources(tmp):
    a = tmp / "a.raw"
    write_random_file(a, 3 * MiB + 512, seed=5)
    b = make_image(tmp / "b.qcow2", "qcow2", 5 * MiB, seed=6)
    c = make_image(tmp / "c.raw", "raw", 2 * MiB, seed=7)
    ours = tmp / "ours.qcow2"
    ref = tmp / "ref.qcow2"
    imgtool("convert", "-O", "qcow2", a, b, c, ours)
    qemu_img("convert", "-O", "qcow2", a, b, c, ref)
    assert same_content(ours, ref, "qcow2", "qcow2")
    assert qemu_img("info", "--output=json", ours).stdout.count(
        str(10 * MiB + 512)) >= 1
    qemu_check_clean(ours)


@pytest.mark.parametrize("dst_fmt", ["raw", "qcow2"])
def test_convert_n_overwrites_garbage(tmp, dst_fmt):
    size = 16 * MiB
    src = make_image(tmp / "src.qcow2", "qcow2", size, seed=8)
    garbage = tmp / "garbage.raw"
    write_random_file(garbage, size, seed=9)
    dst = tmp / f"dst.{dst_fmt}"
    qemu_img("convert", "-f", "raw", "-O", dst_fmt, garbage, dst)
    imgtool("convert", "-n", "-O", dst_fmt, src, dst)
    assert same_content(src, dst, "qcow2", dst_fmt)
    if dst_fmt == "qcow2":
        qemu_check_clean(dst)


def test_convert_n_target_is_zero(tmp):
    src = make_image(tmp / "src.qcow2", "qcow2", 8 * MiB, seed=10)
    dst = tmp / "dst.raw"
    qemu_img("create", "-q", "-f", "raw", dst, str(8 * MiB))
    imgtool("convert", "-n", "--target-is-zero", src, dst)
    assert same_content(src, dst, "qcow2", "raw")


def test_convert_n_target_smaller_fails(tmp):
    src = make_image(tmp / "src.qcow2", "qcow2", 8 * MiB, seed=11)
    dst = tmp / "small.raw"
    qemu_img("create", "-q", "-f", "raw", dst, str(MiB))
    p = imgtool("convert", "-n", src, dst, rc=1)
    assert "output file is smaller than input file" in p.stderr


def test_convert_B_common_backing(tmp):
    base = make_image(tmp / "base.qcow2", "qcow2", 16 * MiB, seed=12)
    top = make_image(tmp / "top.qcow2", "qcow2", 16 * MiB, seed=13,
                     backing=base.name)
    out = tmp / "out.qcow2"
    imgtool("convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2",
            top, out)
    assert same_content(top, out, "qcow2", "qcow2")
    qemu_check_clean(out)
    info = qemu_img("info", "--output=json", out).stdout
    assert '"backing-filename": "base.qcow2"' in info
    # only what lies above base was copied: no bigger than qemu-img's
    ref = tmp / "ref.qcow2"
    qemu_img("convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2",
             top, ref)
    assert allocated(out) <= allocated(ref) + MiB
    # same decisions as qemu-img: what lies above base, zero clusters too
    assert (imgtool("map", "--output=json", out).stdout ==
            qemu_img("map", "--output=json", ref).stdout)


def test_convert_B_unrelated_backing_is_still_exact(tmp):
    """-B onto a backing file that is not in the source's chain: the
    result must still read exactly as the source, holding only what
    differs from that backing file."""
    src = make_image(tmp / "src.qcow2", "qcow2", 16 * MiB, seed=14)
    other = tmp / "other.qcow2"
    qemu_img("convert", "-O", "qcow2", src, other)
    qemu_io("-c", "write -P 201 1M 2M", "-c", "write -z 8M 1M",
            "-c", "write -P 202 12M 64k", other)
    out = tmp / "out.qcow2"
    imgtool("convert", "-O", "qcow2", "-B", "other.qcow2", "-F", "qcow2",
            src, out)
    assert same_content(src, out, "qcow2", "qcow2")
    qemu_check_clean(out)
    full = tmp / "full.qcow2"
    imgtool("convert", "-O", "qcow2", src, full)
    assert allocated(out) < allocated(full) // 2


@pytest.mark.parametrize("extra", [["-m", "1"], ["-m", "16", "-W"],
                                   ["-m", "3"], ["-W"], ["-S", "0"],
                                   ["-S", "64k"], ["-t", "none"],
                                   ["-r", "1G"]])
def test_convert_variants_identical(tmp, extra):
    src = make_image(tmp / "src.qcow2", "qcow2", 12 * MiB, seed=16)
    dst = tmp / "dst.qcow2"
    imgtool("convert", *extra, "-O", "qcow2", src, dst)
    assert same_content(src, dst, "qcow2", "qcow2")
    qemu_check_clean(dst)


def test_convert_S0_allocates_everything(tmp):
    src = tmp / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, str(8 * MiB))
    dst = tmp / "dst.raw"
    imgtool("convert", "-S", "0", src, dst)
    assert allocated(dst) >= 8 * MiB
    sparse = tmp / "sparse.raw"
    imgtool("convert", src, sparse)
    assert allocated(sparse) < MiB


def test_convert_progress_bar(tmp):
    import subprocess
    src = make_image(tmp / "src.qcow2", "qcow2", 8 * MiB, seed=17)
    # bytes, not text: universal newlines would turn the \r into \n
    out = subprocess.run([IMGTOOL, "convert", "-p", src, tmp / "dst.raw"],
                         capture_output=True, check=True).stdout
    assert out.startswith(b"    (0.00/100%)\r")
    assert b"    (100.00/100%)\r" in out
    assert out.endswith(b"\r\n")
    assert re.fullmatch(rb"(    \(\d+\.\d\d/100%\)\r)+\n", out), out
    q = subprocess.run([IMGTOOL, "convert", "-p", "-q", src,
                        tmp / "dst2.raw"], capture_output=True, check=True)
    assert q.stdout == b""


@pytest.mark.parametrize("args,msg", [
    (["-m", "0"], "Invalid number of coroutines"),
    (["-m", "17"], "Invalid number of coroutines"),
    (["-S", "1000"], "Invalid buffer size for sparse output"),
    (["-c"], "Compression not supported for this file format"),
    (["-l", "snap"],
     "does not support temporarily loading internal snapshots"),
    (["--target-is-zero"], "--target-is-zero requires use of -n flag"),
    (["-O", "nosuchfmt"], "Unknown file format 'nosuchfmt'"),
    (["-O", "qcow2", "-B", "base.qcow2"],
     "Use of backing file requires explicit backing format"),
    (["-n", "-o", "size=1M"], "-o has no effect when skipping image creation"),
])
def test_convert_option_errors(tmp, args, msg):
    src = tmp / "src.raw"
    write_random_file(src, MiB)
    p = imgtool("convert", *args, src, tmp / "out", rc=1)
    assert msg in p.stderr
    assert p.stderr.startswith("imgtool: ")


def test_convert_missing_source(tmp):
    p = imgtool("convert", tmp / "nope", tmp / "out", rc=1)
    assert "nope" in p.stderr


def test_convert_sigusr1_reports_progress(tmp):
    """Without -p, SIGUSR1 prints the current progress on stderr."""
    import signal
    import subprocess
    import time
    src = tmp / "src.raw"
    write_random_file(src, 8 * MiB, seed=18)
    p = subprocess.Popen([IMGTOOL, "convert", "-r", "4M", "-f", "raw",
                          src, tmp / "dst.raw"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    time.sleep(0.7)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out == ""
    assert re.search(r"^    \(\d+\.\d\d/100%\)$", err, re.M), err


def test_convert_salvage_matches_qemu(tmp):
    """Unreadable source clusters (corrupt compressed data): plain
    convert fails with a read error; --salvage copies them as zeroes,
    giving the same result as qemu-img --salvage."""
    src = tmp / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, str(4 * MiB))
    qemu_io("-c", "write -P 1 0 4M", src)
    comp = tmp / "comp.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", src, comp)
    size = os.path.getsize(comp)
    with open(comp, "r+b") as f:
        f.seek(size - 600)
        f.write(b"\xff" * 600)
    p = imgtool("convert", comp, tmp / "fail.raw", rc=1)
    assert "error while reading at byte" in p.stderr
    p = imgtool("convert", "--salvage", comp, tmp / "ours.raw")
    r = qemu_img("convert", "--salvage", comp, tmp / "ref.raw")
    # qemu-img's warnings, a line per unreadable sector (issue 15); its
    # parallel coroutines print them in no fixed order
    assert "warning: error while reading offset " in r.stderr
    assert sorted(p.stderr.replace("imgtool:", "qemu-img:").splitlines()) \
        == sorted(r.stderr.splitlines())
    with open(tmp / "ours.raw", "rb") as a, open(tmp / "ref.raw", "rb") as b:
        assert a.read() == b.read()
    q = imgtool("convert", "-q", "--salvage", comp, tmp / "quiet.raw")
    assert q.stderr == ""


def test_convert_n_onto_overlay_is_exact(tmp):
    """-n into an existing overlay whose backing file holds other data:
    the target must read exactly as the source afterwards."""
    src = make_image(tmp / "src.qcow2", "qcow2", 8 * MiB, seed=19)
    base = make_image(tmp / "base.qcow2", "qcow2", 8 * MiB, seed=20)
    dst = tmp / "dst.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             dst)
    imgtool("convert", "-n", "-O", "qcow2", src, dst)
    assert same_content(src, dst, "qcow2", "qcow2")
    qemu_check_clean(dst)


@pytest.mark.parametrize("seed", range(10))
def test_convert_random_chains(tmp, seed):
    """Random chains (cluster sizes, growing layers, zero writes,
    discards) converted with random options: always exactly the source,
    and a clean qcow2."""
    r = random.Random(seed)
    size = r.choice([1, 3, 8]) * MiB + r.choice([0, 512, 4096])
    chain = []
    for d in range(r.randrange(1, 4)):
        p = tmp / f"l{d}.qcow2"
        args = ["create", "-q", "-f", "qcow2", "-o",
                f"cluster_size={r.choice(['4k', '64k', '512k'])}"]
        if chain:
            args += ["-b", chain[-1].name, "-F", "qcow2"]
        qemu_img(*args, p, str(size + d * r.choice([0, MiB])))
        n = r.randrange(0, 20)
        if n:
            qemu_io(*io_args(random_ops(size, seed * 10 + d, n)), p)
        chain.append(p)
    top = chain[-1]
    fmt = r.choice(["raw", "qcow2"])
    opts = r.choice([[], ["-m", "1"], ["-m", "16", "-W"], ["-S", "0"],
                     ["-S", "8k"], ["-W"]])
    out = tmp / f"out.{fmt}"
    if r.random() < 0.3:
        vsize = qemu_img_vsize(top)
        garbage = tmp / "garbage.raw"
        write_random_file(garbage, vsize, seed)
        qemu_img("convert", "-f", "raw", "-O", fmt, garbage, out)
        opts = opts + ["-n"]
    elif len(chain) > 1 and fmt == "qcow2":
        opts = opts + ["-B", chain[-2].name, "-F", "qcow2"]
    imgtool("convert", *opts, "-O", fmt, top, out)
    assert same_content(top, out, "qcow2", fmt)
    if fmt == "qcow2":
        qemu_check_clean(out)


def qemu_img_vsize(path):
    import json
    return json.loads(qemu_img("info", "--output=json", path).stdout)[
        "virtual-size"]
