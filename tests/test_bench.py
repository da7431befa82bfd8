"""imgtool bench: qemu-img bench's options, output lines and errors, the
--random mode, and bench/run end to end at a tiny scale.

Timings are never asserted: only the shape of the output, the exit codes,
and what write tests leave in the image (checked with qemu-io).
"""
import os
import re
import subprocess

import pytest

from conftest import IMGTOOL, ROOT, imgtool, qemu_img, qemu_io, run

SENDING = re.compile(
    r"^Sending (\d+) (read|write) requests, (\d+) bytes each, (\d+) in "
    r"parallel \(starting at offset (\d+), step size (\d+)\)$")
COMPLETED = re.compile(r"^Run completed in \d+\.\d{3} seconds\.$")


@pytest.fixture
def img(tmp):
    p = tmp / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "16M")
    return p


def lines(p):
    return p.stdout.splitlines()


def shape(p):
    """The output reduced to what does not depend on timing."""
    return [COMPLETED.sub("Run completed", l) for l in lines(p)]


# Each option of qemu-img bench, alone or with what it needs; both tools
# must print the same lines (apart from the time) and exit 0.
OPTION_CASES = [
    [],
    ["-c", "100"],
    ["-c", "50", "-d", "1"],
    ["-c", "50", "-d", "200"],
    ["-c", "50", "-f", "qcow2"],
    ["-c", "10", "-f", "raw"],
    ["-c", "50", "-w", "--flush-interval=10", "-d", "8"],
    ["-c", "200", "-w", "--flush-interval=64", "--no-drain"],
    ["-c", "50", "-i", "threads"],
    ["-c", "50", "-t", "none", "-n"],
    ["-c", "50", "-t", "none", "-i", "native"],
    ["-c", "50", "-o", "1M"],
    ["-c", "50", "-o", "1"],
    ["-c", "50", "-w", "--pattern=0xab"],
    ["-c", "50", "-q"],
    ["-c", "50", "-s", "512"],
    ["-c", "50", "-s", "64k", "-S", "1M"],
    ["-c", "50", "-S", "0"],
    ["-c", "50", "-t", "writeback"],
    ["-c", "50", "-t", "unsafe", "-w"],
    ["-c", "50", "-t", "directsync"],
    ["-c", "20", "-w", "-t", "writethrough"],
    ["-c", "20", "-w", "-t", "directsync"],
    ["-c", "50", "-U"],
    ["-c", "0"],
    ["-c", "5000", "-S", "3M"],     # wraps around the 16 MiB image
]


@pytest.mark.parametrize("opts", OPTION_CASES, ids=" ".join)
def test_output_matches_qemu_img(img, opts):
    q = qemu_img("bench", *opts, img)
    i = imgtool("bench", *opts, img)
    assert shape(i) == shape(q)
    assert SENDING.match(lines(i)[0])
    assert COMPLETED.match(lines(i)[-1])
    assert i.stderr == ""


def test_image_opts(img):
    i = imgtool("bench", "-c", "10", "--image-opts",
                f"driver=qcow2,file.filename={img}")
    assert SENDING.match(lines(i)[0]) and COMPLETED.match(lines(i)[1])


@pytest.mark.parametrize("opts,msg", [
    (["-c", "-1"], "Invalid request count specified"),
    (["-c", "x"], "Invalid request count specified"),
    (["-d", "x"], "Invalid queue depth specified"),
    (["-i", "foo"], "Invalid aio option: foo"),
    (["--pattern=256", "-w"], "Invalid pattern byte specified"),
    (["--flush-interval=x", "-w"], "Invalid flush interval specified"),
    (["--flush-interval=10"],
     "--flush-interval is only available in write tests"),
    (["--flush-interval=10", "-w", "-d", "11"],
     "Flush interval can't be smaller than depth"),
    (["-t", "bogus"], "Invalid cache mode"),
    (["-s", "x"], "Invalid buffer size specified. You may use k, M, G, T, "
                  "P or E suffixes for"),
    (["-S", "-1"], "Invalid step_size specified. You may use k, M, G, T, "
                   "P or E suffixes for"),
    (["-o", "x"], "Invalid offset specified. You may use k, M, G, T, P or "
                  "E suffixes for"),
])
def test_option_errors_match_qemu_img(img, opts, msg):
    q = qemu_img("bench", *opts, img, rc=1)
    i = imgtool("bench", *opts, img, rc=1)
    first = lambda p: p.stderr.splitlines()[0].split(": ", 1)[1]
    assert first(q) == msg
    assert first(i) == msg
    assert i.stdout == ""


def test_depth_zero_is_refused(img):
    # qemu-img 7.2 accepts -d 0 and then waits forever; refuse it with
    # the message qemu-img gives other bad depths
    i = imgtool("bench", "-d", "0", img, rc=1, timeout=10)
    assert i.stderr == "imgtool: Invalid queue depth specified\n"


def test_open_errors(img):
    i = imgtool("bench", "-w", "-U", img, rc=1)
    assert "force-share=on can only be used with read-only images" in i.stderr
    i = imgtool("bench", "-n", img, rc=1)
    assert "aio=native was specified, but it requires cache.direct=on" \
        in i.stderr
    i = imgtool("bench", img.parent / "missing.qcow2", rc=1)
    assert i.stderr.startswith("imgtool: ") and "missing.qcow2" in i.stderr
    i = imgtool("bench", rc=1)
    assert "Expecting one image file name" in i.stderr
    i = imgtool("bench", img, img, rc=1)
    assert "Expecting one image file name" in i.stderr


@pytest.mark.parametrize("opts", [["-o", "16M"], ["-s", "32M", "-c", "1", "-d", "1"]])
def test_request_past_end_fails_like_qemu_img(img, opts):
    q = qemu_img("bench", *opts, img, rc=1)
    i = imgtool("bench", *opts, img, rc=1)
    assert i.stderr == "imgtool: Failed request: Input/output error\n"
    assert q.stderr == "qemu-img: Failed request: Input/output error\n"
    assert lines(i) == lines(q)   # the Sending line, no completion


def test_write_lands_where_qemu_img_writes(tmp):
    """Sequential writes with offset, step and pattern hit the same bytes
    in both tools' images."""
    a, b = tmp / "a.qcow2", tmp / "b.qcow2"
    for p in (a, b):
        qemu_img("create", "-q", "-f", "qcow2", p, "4M")
    opts = ["-w", "-c", "300", "-d", "8", "-s", "1536", "-S", "20000",
            "-o", "777", "--pattern=0x5c"]
    qemu_img("bench", *opts, a)
    imgtool("bench", *opts, b)
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", a, b)
    # and it really wrote the pattern (first and a wrapped request)
    qemu_io("-f", "qcow2", "-c", "read -P 0x5c 777 1536", b)
    off = (777 + 299 * 20000) % (4 << 20)
    qemu_io("-f", "qcow2", "-c", f"read -P 0x5c {off} 1536", b)
    qemu_img("check", "-q", b)


def test_flush_interval_writes_everything(tmp):
    p = tmp / "f.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "8M")
    for drain in ([], ["--no-drain"]):
        imgtool("bench", "-w", "-c", "2048", "-d", "16", "--pattern=7",
                "--flush-interval=32", *drain, p)
        qemu_io("-f", "qcow2", "-c", "read -P 7 0 8M", p)
    qemu_img("check", "-q", p)


RANDOM = re.compile(
    r"^Sending (\d+) random (read|write) requests, (\d+) bytes each, (\d+) "
    r"in parallel \(offsets aligned to (\d+) from offset (\d+), seed (\d+)\)$")


def test_random_read_shape(img):
    i = imgtool("bench", "--random", "-c", "500", img)
    m = RANDOM.match(lines(i)[0])
    assert m and m.groups() == ("500", "read", "4096", "64", "4096", "0", "1")
    assert COMPLETED.match(lines(i)[1])
    i = imgtool("bench", "--random=42", "-c", "10", "-S", "64k", "-o", "1M",
                "-d", "2", img)
    assert RANDOM.match(lines(i)[0]).groups() == \
        ("10", "read", "4096", "2", "65536", "1048576", "42")


def allocated(path):
    """Host-visible data clusters (offset, length) of a qcow2."""
    out = qemu_img("map", "--output=json", "-f", "qcow2", path).stdout
    import json
    return [(e["start"], e["length"]) for e in json.loads(out) if e["data"]]


def test_random_write_is_seeded_aligned_and_in_range(tmp):
    """Same seed, same blocks; another seed, other blocks; every write is
    step-aligned from the offset and inside the image."""
    imgs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        p = tmp / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", p,
                 "64M")
        imgtool("bench", f"--random={seed}", "-w", "-c", "200", "-d", "4",
                "-S", "64k", "-o", "8M", "--pattern=1", p)
        imgs[name] = p
    qemu_img("compare", imgs["a"], imgs["b"])
    assert qemu_img("compare", imgs["a"], imgs["c"], check=False).returncode == 1
    ext = allocated(imgs["a"])
    total = sum(l for _, l in ext)
    # 200 draws over 896 slots: some repeat, most do not
    assert 150 * 4096 <= total <= 200 * 4096
    for start, length in ext:
        assert start >= 8 << 20
        assert (start - (8 << 20)) % 65536 == 0 or length > 4096
        assert start + length <= 64 << 20


def test_random_needs_room(img):
    i = imgtool("bench", "--random", "-o", "16M", img, rc=1)
    assert i.stderr.startswith("imgtool: --random:")


def test_help():
    i = imgtool("bench", "--help")
    for opt in ("-c count", "-d depth", "--flush-interval", "--no-drain",
                "--pattern", "--random[=seed]", "-S step", "--image-opts"):
        assert opt in i.stdout


# ---------------------------------------------------------------------------
# bench/run end to end

BENCH_RUN = os.path.join(ROOT, "bench", "run")


def test_bench_run_tiny_scale(tmp):
    """The script builds its workload, runs every row with both tools and
    prints the table; rows that cannot run yet print n/a."""
    # --no-net: the network rows start their own tgtd and glusterd, and
    # the suite's gluster fixture holds the host's one glusterd meanwhile
    p = run(["/usr/bin/python3", BENCH_RUN, "--scale", "1/256", "--runs",
             "1", "--dir", tmp / "w", "--imgtool", IMGTOOL, "--no-net"],
            timeout=240)
    out = p.stdout
    assert "ratio" in out and "target" in out
    for row in ("convert raw->qcow2 (flushed)", "convert qcow2->raw (unsafe)",
                "convert qcow2->qcow2 (flushed)",
                "convert raw->raw vs cp (unsafe)",
                "convert -c zlib", "convert -c zstd",
                "read compressed (zlib, flushed)",
                "read compressed (zstd, unsafe)", "commit",
                "4k scattered read",
                "4k scattered write", "create 1 TiB qcow2", "info 1 TiB",
                "map 1 TiB", "check 1 TiB"):
        line = next((l for l in out.splitlines() if l.startswith(row)), None)
        assert line, f"row {row!r} missing:\n{out}"
        # the reference tool always runs
        cols = line[46:].split()
        assert re.match(r"\d+\.\d{3}$", cols[1]), line
    assert re.search(r"^convert raw->qcow2 \(unsafe\) .* \d+\.\d{3} +\d+\.\d{3} +"
                     r"\d+\.\d\d ", out, re.M)


def test_bench_run_only_and_errors(tmp):
    p = run(["/usr/bin/python3", BENCH_RUN, "--scale", "1/256", "--runs",
             "1", "--dir", tmp / "w", "--imgtool", IMGTOOL, "--only",
             "info"], timeout=120)
    rows = [l for l in p.stdout.splitlines() if "1 TiB" in l]
    assert len(rows) == 1 and rows[0].startswith("info 1 TiB")
    p = run(["/usr/bin/python3", BENCH_RUN, "--scale", "x"], rc=1)
    assert "bad --scale" in p.stderr
    p = run(["/usr/bin/python3", BENCH_RUN, "--imgtool", tmp / "none"], rc=1)
    assert "not found" in p.stderr


# ---------------------------------------------------------------------------
# Speed work in the copy engine must not change results

@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_convert_with_early_writeback_is_exact(tmp, out_fmt):
    """A convert writing well over the copy engine's writeback step (16
    MiB) flushes from a side thread while workers copy; the output must
    still be exactly the source and, for qcow2, clean."""
    src = tmp / "src.raw"
    with open(src, "wb") as f:
        f.truncate(96 << 20)
        for k in range(0, 96, 3):       # 32 MiB of data in 1 MiB extents
            f.seek(k << 20)
            f.write(os.urandom(1 << 20))
    out = tmp / f"out.{out_fmt}"
    imgtool("convert", "-f", "raw", "-O", out_fmt, src, out)
    qemu_img("compare", "-f", "raw", "-F", out_fmt, src, out)
    if out_fmt == "qcow2":
        qemu_img("check", "-q", out)
