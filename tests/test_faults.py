"""The `faulty` protocol filter: injected I/O errors and simulated power
loss (block/filter/faulty.c, docs/reliability.md).

Raw images make the filter's semantics exact (what reaches the file is
what the guest wrote); qcow2 images show that an injected error reaches
the user as one error line and leaves an image qemu-img finds consistent,
with everything flushed before the error intact.
"""
import json
import os

import pytest

import conftest
from conftest import imgtool, io_args, qemu_img, qemu_io

SIZE = 1 << 20


def faulty_opts(path, fmt="raw", **kw):
    """The filter over a raw image unless told."""
    return conftest.faulty_opts(path, fmt, **kw)


def io(opts, *cmds, rc=None):
    p = imgtool("io", *io_args(cmds), "--image-opts", opts, check=False)
    if rc is not None:
        assert p.returncode == rc, p.stdout + p.stderr
    return p


def stats(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, v = line.strip().split("=")
            out[k] = int(v)
    return out


def raw_image(tmp, fill=0):
    p = tmp / "disk.raw"
    with open(p, "wb") as f:
        f.write(bytes([fill]) * SIZE)
    return p


def sectors(path, off, length):
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(length)
    return [data[i:i + 512] for i in range(0, len(data), 512)]


def test_pass_through_without_faults(tmp):
    img = raw_image(tmp)
    st = tmp / "stats"
    io(faulty_opts(img, stats_file=st), "write -P 7 4k 8k", "read -P 7 4k 8k",
       "discard 64k 64k", "write -z 128k 4k", rc=0)
    assert sectors(img, 4096, 8192) == [bytes([7]) * 512] * 16
    s = stats(st)
    assert s["writes"] >= 3 and s["injected"] == 0 and s["powered_off"] == 0
    qemu_io("-f", "raw", "-c", "read -P 7 4k 8k", img)


@pytest.mark.parametrize("kind,cmd", [
    ("read", "read 0 4k"),
    ("write", "write -P 1 0 4k"),
    ("flush", "flush"),
])
@pytest.mark.parametrize("err,text", [("EIO", "Input/output error"),
                                      ("ENOSPC", "No space left on device")])
def test_nth_request_fails_with_errno(tmp, kind, cmd, err, text):
    img = raw_image(tmp)
    opts = faulty_opts(img, **{f"fail_{kind}": 2, "errno": err})
    p = io(opts, cmd, cmd, cmd, rc=1)
    errors = [l for l in p.stderr.splitlines() if l.startswith("imgtool: ")]
    assert any(text in l for l in errors), p.stderr
    # Only the 2nd request fails: the 1st and 3rd print their result
    # (qemu-io's two lines each: the request and its statistics).
    if kind != "flush":
        lines = p.stdout.splitlines()
        assert len(lines) == 4, p.stdout
        assert lines[0] == lines[2] == \
            f"{'read' if kind == 'read' else 'wrote'} 4096/4096 bytes at offset 0"
    assert all(l.startswith("imgtool: ") for l in p.stderr.splitlines())


def test_fail_count_and_fail_all_after(tmp):
    img = raw_image(tmp)
    p = io(faulty_opts(img, fail_write=2, fail_count=2),
           *[f"write -P {i} {i * 4}k 4k" for i in range(1, 6)], rc=1)
    assert p.stdout.count("wrote") == 3
    assert sectors(img, 4096, 512)[0] == bytes([1]) * 512
    assert sectors(img, 8192, 512)[0] == bytes(512)
    assert sectors(img, 16384, 512)[0] == bytes([4]) * 512
    img2 = raw_image(tmp, fill=0)
    p = io(faulty_opts(img2, fail_all_after=2),
           "write -P 1 0 4k", "read 0 4k", "read 0 4k", "write -P 2 0 4k",
           rc=1)
    assert p.stdout.count("wrote") == 1 and p.stdout.count("read ") == 1


def test_unknown_options_are_refused(tmp):
    img = raw_image(tmp)
    p = io(faulty_opts(img, fail_wirte=1), "read 0 512", rc=1)
    assert "fail-wirte" in p.stderr
    p = io(faulty_opts(img, errno="EWHAT"), "read 0 512", rc=1)
    assert "EWHAT" in p.stderr
    p = io(faulty_opts(img, powerfail_mode="sometimes",
                       powerfail_after_writes=1), "read 0 512", rc=1)
    assert "powerfail-mode" in p.stderr


def test_powerfail_drops_unflushed_writes(tmp):
    img = raw_image(tmp)
    st = tmp / "stats"
    p = io(faulty_opts(img, powerfail_after_writes=3, stats_file=st),
           "write -P 1 0 64k", "flush", "write -P 2 0 64k",
           "write -P 3 64k 4k", "read -P 3 64k 4k", "write -P 4 128k 4k",
           "flush", rc=1)
    # The third write was acknowledged, then the power went.
    assert p.stdout.count("wrote") == 3
    assert "flush failed" in p.stderr
    s = stats(st)
    assert s["powered_off"] == 1 and s["writes"] == 3
    assert sectors(img, 0, 65536) == [bytes([1]) * 512] * 128
    assert sectors(img, 65536, 4096) == [bytes(512)] * 8
    assert os.path.getsize(img) == SIZE


def test_powerfail_keep_mode_keeps_everything(tmp):
    img = raw_image(tmp)
    io(faulty_opts(img, powerfail_after_writes=2, powerfail_mode="keep"),
       "write -P 1 0 4k", "write -P 2 4k 4k", "write -P 3 8k 4k", rc=1)
    assert sectors(img, 0, 8192) == [bytes([1]) * 512] * 8 + \
        [bytes([2]) * 512] * 8
    assert sectors(img, 8192, 512) == [bytes(512)]


def test_powerfail_random_part_tears_at_sector_granularity(tmp):
    kept_counts = set()
    for seed in range(1, 6):
        img = raw_image(tmp)
        io(faulty_opts(img, powerfail_at_flush=2, seed=seed,
                       powerfail_mode="random-part"),
           "write -P 1 0 64k", "flush", "write -P 2 0 64k",
           "write -z 4k 4k", "flush", rc=1)
        secs = sectors(img, 0, 65536)
        for i, s in enumerate(secs):
            allowed = {bytes([1]) * 512}
            allowed.add(bytes(512) if 8 <= i < 16 else bytes([2]) * 512)
            assert s in allowed, (seed, i)
        kept_counts.add(sum(s != bytes([1]) * 512 for s in secs))
    # Different seeds keep different subsets, and neither all nor none.
    assert len(kept_counts) > 1
    assert all(0 < k < 128 for k in kept_counts)


def test_same_seed_same_tear(tmp):
    results = []
    for _ in range(2):
        img = raw_image(tmp)
        io(faulty_opts(img, powerfail_after_writes=4, seed=42,
                       powerfail_mode="random-part"),
           "write -P 1 0 64k", "write -P 2 64k 64k", "write -P 3 16k 64k",
           "write -P 4 300k 8k", rc=None)
        results.append(open(img, "rb").read())
    assert results[0] == results[1]


def test_fua_write_survives_power_loss(tmp):
    img = raw_image(tmp)
    io(faulty_opts(img, powerfail_after_writes=3),
       "write -P 1 0 4k", "write -f -P 2 4k 4k", "write -P 3 0 8k", rc=1)
    assert sectors(img, 0, 8192) == [bytes(512)] * 8 + [bytes([2]) * 512] * 8


def test_overlay_reads_grow_and_shrink_before_flush(tmp):
    """Reads see cached writes, a cached grow and a cached shrink; after
    a power loss the file is as it was, after a clean close as asked."""
    script = ["write -P 5 1016k 8k", "truncate 1536k", "write -P 6 1280k 4k",
              "read -P 6 1280k 4k", "read -P 0 1100k 4k",
              "read -P 5 1016k 8k", "truncate 512k", "truncate 1M",
              "read -P 0 768k 4k", "read -P 3 256k 4k", "length"]
    img = raw_image(tmp, fill=3)
    p = io(faulty_opts(img, volatile_cache="on"), *script, rc=0)
    assert p.stdout.splitlines()[-1] == "1 MiB"
    assert os.path.getsize(img) == SIZE
    assert sectors(img, 768 * 1024, 512)[0] == bytes(512)
    assert sectors(img, 256 * 1024, 512)[0] == bytes([3]) * 512
    img = raw_image(tmp, fill=3)
    io(faulty_opts(img, powerfail_after_writes=5), *script, rc=None)
    assert open(img, "rb").read() == bytes([3]) * SIZE


def test_fua_write_after_cached_shrink(tmp):
    img = raw_image(tmp, fill=3)
    io(faulty_opts(img, volatile_cache="on"), "truncate 512k", "truncate 1M",
       "write -f -P 4 768k 4k", "read -P 4 768k 4k", "read -P 0 772k 4k",
       rc=0)
    assert sectors(img, 768 * 1024, 8192) == [bytes([4]) * 512] * 8 + \
        [bytes(512)] * 8


def test_big_overlay_is_written_back_under_max_dirty(tmp):
    img = raw_image(tmp)
    io(faulty_opts(img, powerfail_after_writes=4, max_dirty="64k"),
       "write -P 1 0 64k", "write -P 2 64k 64k", "write -P 3 128k 4k",
       "write -P 4 256k 4k", rc=None)
    # The second write pushed the cache past 64k: the first two reached
    # the file unflushed, as a disk may do; the rest were lost.
    assert sectors(img, 0, 512)[0] == bytes([1]) * 512
    assert sectors(img, 65536, 512)[0] == bytes([2]) * 512
    assert sectors(img, 131072, 512)[0] == bytes(512)


# ---------------------------------------------------------------- qcow2

def qcow2_image(tmp, *opts):
    img = tmp / "disk.qcow2"
    o = ["-o", ",".join(opts)] if opts else []
    qemu_img("create", "-q", "-f", "qcow2", *o, img, "4M")
    qemu_io("-f", "qcow2", "-c", "write -P 9 0 256k", img)
    return img


def qemu_check(img):
    p = qemu_img("check", "--output=json", img, check=False)
    assert p.returncode in (0, 3), p.stdout + p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("cluster", ["512", "64k"])
@pytest.mark.parametrize("err", ["EIO", "ENOSPC"])
def test_qcow2_write_errors_leave_a_consistent_image(tmp, cluster, err):
    """Every write the qcow2 driver makes to a fresh area fails in turn:
    each time the error reaches the user and the image stays
    consistent, with the flushed data intact."""
    base = qcow2_image(tmp, f"cluster_size={cluster}")
    st = tmp / "stats"
    io(faulty_opts(base, "qcow2", stats_file=st),
       "write -P 1 1M 192k", "write -P 2 3M 4k", "flush", rc=0)
    total = stats(st)["writes"]
    assert total > 2
    for n in range(1, total + 1):
        img = tmp / f"n{n}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o",
                 f"cluster_size={cluster}", img, "4M")
        qemu_io("-f", "qcow2", "-c", "write -P 9 0 256k", img)
        p = io(faulty_opts(img, "qcow2", fail_write=n, errno=err),
               "write -P 1 1M 192k", "write -P 2 3M 4k", "flush", rc=1)
        lines = p.stderr.splitlines()
        assert lines and all(l.startswith("imgtool: ") for l in lines), \
            p.stderr
        qemu_check(img)
        qemu_io("-f", "qcow2", "-c", "read -P 9 0 256k", img)


def test_qcow2_read_error_is_reported_not_zeroes(tmp):
    img = qcow2_image(tmp)
    p = io(faulty_opts(img, "qcow2", fail_read=1, fail_count=1000),
           "read -P 9 0 4k", rc=1)
    assert "imgtool: " in p.stderr


def test_qcow2_flush_error_is_reported(tmp):
    img = qcow2_image(tmp)
    p = io(faulty_opts(img, "qcow2", fail_flush=1), "write -P 3 0 4k",
           "flush", rc=1)
    assert "flush failed" in p.stderr
    qemu_check(img)


def test_qcow2_powerfail_keeps_flushed_data(tmp):
    img = qcow2_image(tmp)
    io(faulty_opts(img, "qcow2", powerfail_at_flush=3,
                   powerfail_mode="random-part", seed=7),
       "write -P 1 1M 64k", "flush", "write -P 2 2M 64k", "flush",
       "write -P 3 3M 64k", "flush", "flush", rc=None)
    qemu_check(img)
    qemu_io("-f", "qcow2", "-c", "read -P 9 0 256k", "-c", "read -P 1 1M 64k",
            img)
