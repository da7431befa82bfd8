"""Power-loss and kill -9 crash tests of the qcow2 driver.

A random guest workload (writes, compressed writes, zero writes,
discards, flushes, FUA writes, truncates that grow or shrink) runs through `imgtool io` on a qcow2 image
(plain, or LUKS-encrypted without the compressed writes it refuses)
whose file sits under the `faulty` filter (block/filter/faulty.c).  The filter
keeps every write in a volatile cache until a flush completes and cuts
the power at a chosen point: after the Nth write the driver makes to the
file, or instead of the Nth flush; the cache is then dropped, kept, or
torn (a random subset of its sectors reaches the file).

After each cut the image must:
  - open in qemu-img and imgtool, with the corrupt bit clear;
  - pass `qemu-img check` and `imgtool check` with no corruption (leaks
    are allowed).  An image with lazy refcounts left dirty is repaired
    first with `check -r all`, by qemu-img (as QEMU does on open) and,
    on a copy, by imgtool, whose result qemu-img must find clean too;
  - hold, for every sector, a value the guest could see: everything
    written before the last completed flush reads back as written; a
    sector changed after it holds its old value or any value written to
    it since (a discard may also leave zeroes or the backing data; a
    shrink discards the whole clusters past the new end, and growing
    again zeroes them, and in an overlay the whole new area).  The
    virtual size is the one before the last completed flush or one set
    after it.  qemu-img and imgtool must read the same bytes.

Cut points per run: IMGTOOL_CRASH_POINTS (default 375, 150 with a
sanitizer build, split over the configurations); IMGTOOL_CRASH_SEED changes the workloads.  A failure
prints the configuration, the workload script and the exact `imgtool io`
command that reproduces it; the images stay in pytest's tmp directory.

The kill -9 test stops a real `imgtool convert -O qcow2` at random
moments: the target must open and check consistent (leaks allowed) and
hold, per sector, the source's data or zeroes.

Snapshot operations among guest I/O, and kill -9 of snapshot and amend:
tests/test_crash_snapshots.py.
"""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import time

import pytest

from conftest import (IMGTOOL, faulty_opts, imgtool, no_leak_check_env,
                      qemu_img, qemu_io, run, sanitized)

SECTOR = 512
VSIZE = 4 << 20


# A sanitizer build is some three times slower: fewer points by default.
POINTS = int(os.environ.get("IMGTOOL_CRASH_POINTS",
                            "150" if sanitized() else "375"))
SEED = int(os.environ.get("IMGTOOL_CRASH_SEED", "1"))
CUTS_PER_WORKLOAD = 5

# Encrypted configurations unlock with this secret (a file written per
# test); a short iter-time keeps the PBKDF2 of every open cheap.
SECRET_ID = "crashsec"
LUKS = f"encrypt.format=luks,encrypt.key-secret={SECRET_ID},encrypt.iter-time=10"

CONFIGS = [
    ("default", "", False),
    ("c512", "cluster_size=512", False),
    ("compat010", "compat=0.10", False),
    ("compat010-c512", "compat=0.10,cluster_size=512", False),
    ("lazy", "lazy_refcounts=on", False),
    ("lazy-c512", "lazy_refcounts=on,cluster_size=512", False),
    ("refbits1-c512", "refcount_bits=1,cluster_size=512", False),
    ("refbits64-c4k", "refcount_bits=64,cluster_size=4k", False),
    ("extl2", "extended_l2=on", False),
    ("backing", "", True),
    ("backing-extl2", "extended_l2=on,cluster_size=32k", True),
    ("backing-compat010-c512", "compat=0.10,cluster_size=512", True),
    # Encrypted data: every partial write decrypts, merges and encrypts
    # its cluster, and COW from the (plain) backing file encrypts.
    ("luks", LUKS, False),
    ("luks-backing-c4k", f"{LUKS},cluster_size=4k", True),
    ("luks-lazy-c512", f"{LUKS},lazy_refcounts=on,cluster_size=512", False),
]


# ------------------------------------------------------------------ model

def uniform_sectors(data):
    """Per-sector value of an image built from sector-aligned uniform
    writes."""
    out = []
    for i in range(0, len(data), SECTOR):
        chunk = data[i:i + SECTOR]
        assert chunk == bytes([chunk[0]]) * len(chunk), f"sector {i // SECTOR}"
        out.append(chunk[0])
    return out


class Model:
    """Possible values of every sector and possible virtual sizes."""

    def __init__(self, initial, backing, nsec, cs=65536, has_backing=False):
        self.cand = [{v} for v in initial] + [{0}] * (nsec - len(initial))
        self.back = list(backing) + [0] * (nsec - len(backing))
        self.size = len(initial) * SECTOR
        self.sizes = {self.size}
        self.cs = cs
        self.has_backing = has_backing

    def _set(self, s, values, durable):
        self.cand[s] = set(values) if durable else self.cand[s] | set(values)

    def truncate(self, new, durable):
        cur, self.size = self.size, new
        if durable:
            self.sizes = {new}
        else:
            self.sizes.add(new)
        if new < cur:
            # Whole clusters past the new end are freed (they read as
            # zero or, in an overlay, as the backing file); the rest of
            # the last cluster keeps its data, as in QEMU.
            first = -(-new // self.cs) * self.cs // SECTOR
            for s in range(first, cur // SECTOR):
                self._set(s, {0, self.back[s]}, durable)
            return
        # Growing an overlay zeroes the new area (the backing file must
        # not show through); a plain image exposes what the last cluster
        # still holds and zeroes past it.
        first = cur if self.has_backing else -(-cur // self.cs) * self.cs
        for s in range(first // SECTOR, new // SECTOR):
            self._set(s, {0}, durable)

    def apply(self, op, durable):
        kind = op[0]
        if kind == "truncate":
            self.truncate(op[1], durable)
            return
        if kind == "flush":
            return
        off, length = op[1] // SECTOR, op[2] // SECTOR
        for s in range(off, off + length):
            if kind == "discard":
                self.cand[s] = self.cand[s] | {0, self.back[s]}
            else:
                # write, zero and compressed write ("cwrite")
                self._set(s, {op[3]}, durable)

    def verify(self, data, vsize):
        assert vsize in self.sizes, f"virtual size {vsize} not in {self.sizes}"
        bad = []
        for s in range(vsize // SECTOR):
            chunk = data[s * SECTOR:(s + 1) * SECTOR]
            allowed = bytes(sorted(self.cand[s]))
            if chunk.translate(None, allowed):
                got = sorted(set(chunk))
                bad.append(f"sector {s} (offset {s * SECTOR:#x}): holds "
                           f"{got}, allowed {sorted(self.cand[s])}")
                if len(bad) >= 8:
                    break
        return bad


def gen_workload(rng, cs=65536, nops=28, resize=True, compress=True):
    """Random guest requests; sizes stay multiples of 512, compressed
    writes (unless compress is false: encrypted images refuse them) cover
    whole clusters inside the current size, shrinks never go below 1 MiB
    and may leave a partial last cluster."""
    ops, size, pattern = [], VSIZE, 1
    for _ in range(nops):
        r = rng.random()
        if r < 0.2:
            ops.append(("flush",))
            continue
        if r < 0.25 and resize:
            if size < 8 << 20 and rng.random() < 0.6:
                size += rng.choice([64 << 10, 512 << 10, 1 << 20])
            else:
                size -= rng.choice([64 << 10, 512 << 10, 1 << 20])
                size -= rng.choice([0, 0, rng.randrange(1, 128) * SECTOR])
                size = max(size, 1 << 20)
            ops.append(("truncate", size))
            continue
        if r < 0.31 and size >= cs and compress:
            nclu = rng.choice([1, 1, 2, 4, max(1, (64 << 10) // cs)])
            nclu = min(nclu, size // cs)
            off = rng.randrange(0, size // cs - nclu + 1) * cs
            ops.append(("cwrite", off, nclu * cs, pattern))
            pattern = pattern % 0xA0 + 1
            continue
        nsec = size // SECTOR
        length = rng.choice([1, 3, 8, 64, 128, 129, 256, 512])
        off = rng.randrange(0, nsec)
        if rng.random() < 0.3:
            off -= off % 128   # cluster-aligned for 64k clusters
        length = min(length, nsec - off)
        o, l = off * SECTOR, length * SECTOR
        if r < 0.38:
            ops.append(("discard", o, l))
        elif r < 0.47:
            ops.append(("zero", o, l, 0, rng.random() < 0.5))
        else:
            ops.append(("write", o, l, pattern, rng.random() < 0.1))
            pattern = pattern % 0xA0 + 1
    return ops


def script_line(op):
    kind = op[0]
    if kind == "flush":
        return "flush"
    if kind == "truncate":
        return f"truncate {op[1]}"
    if kind == "discard":
        return f"discard {op[1]} {op[2]}"
    if kind == "zero":
        return f"write -z{' -u' if op[4] else ''} {op[1]} {op[2]}"
    if kind == "cwrite":
        return f"write -c -P {op[3]} {op[1]} {op[2]}"
    return f"write{' -f' if op[4] else ''} -P {op[3]} {op[1]} {op[2]}"


def cluster_size(opts):
    for o in opts.split(","):
        if o.startswith("cluster_size="):
            v = o.split("=")[1]
            return int(v[:-1]) << 10 if v.endswith("k") else int(v)
    return 65536


# ------------------------------------------------------------------ images

# (--object arguments, image options) that unlock an encrypted image;
# empty for the plain configurations.
NO_ENC = ([], ())


def encryption(opts, tmp):
    if "encrypt.format" not in opts:
        return NO_ENC
    path = tmp / "secret"
    path.write_text("crash-test passphrase")
    return (["--object", f"secret,id={SECRET_ID},file={path}"],
            (f"encrypt.key-secret={SECRET_ID}",))


def image_ref(img, enc=NO_ENC):
    """(arguments before the image name, the image name) opening img as
    qcow2 with enc's secret, for qemu-img, qemu-io and imgtool alike."""
    obj, keys = enc
    if not obj:
        return ["-f", "qcow2"], str(img)
    return [*obj, "--image-opts"], ",".join(["driver=qcow2",
                                             f"file.filename={img}", *keys])


def read_raw(tool, img, out, enc=NO_ENC):
    if os.path.exists(out):
        os.unlink(out)
    pre, name = image_ref(img, enc)
    run([tool, "convert", *pre, name, "-O", "raw", out])
    with open(out, "rb") as f:
        return f.read()


def header_flags(img):
    with open(img, "rb") as f:
        hdr = f.read(104)
    assert hdr[:4] == b"QFI\xfb", "not a qcow2 header"
    version = struct.unpack(">I", hdr[4:8])[0]
    if version < 3:
        return False, False
    incompat = struct.unpack(">Q", hdr[72:80])[0]
    return bool(incompat & 1), bool(incompat & 2)


def make_base(tmp, name, opts, backing, rng, enc=NO_ENC):
    """A prefilled image (and its backing file, never encrypted); returns
    (path, model initial values, backing values)."""
    d = tmp / name
    d.mkdir()
    back_vals = [0] * (VSIZE // SECTOR)
    top = d / "base.qcow2"
    create = ["create", "-q", "-f", "qcow2"]
    if backing:
        bimg = d / "backing.qcow2"
        qemu_img(*create, bimg, str(VSIZE))
        cmds = []
        for i in range(6):
            o = rng.randrange(0, VSIZE // 65536) * 65536
            cmds += ["-c", f"write -P {0xB0 + i} {o} 64k"]
        qemu_io("-f", "qcow2", *cmds, bimg)
        back_vals = uniform_sectors(read_raw("qemu-img", bimg, d / "b.raw"))
        opt = ",".join(x for x in [opts, f"backing_file={bimg}",
                                   "backing_fmt=qcow2"] if x)
    else:
        opt = opts
    # imgtool makes encrypted images: qemu-img's PBKDF2 calibration fails
    # now and then on a loaded host ("Unable to get accurate CPU usage").
    # QEMU writes the prefill and reads every result.
    (imgtool if enc[0] else qemu_img)(
        *create, *enc[0], *(["-o", opt] if opt else []), top, str(VSIZE))
    cmds = []
    for i in range(4):
        length = rng.choice([512, 4096, 65536])
        o = rng.randrange(0, (VSIZE - length) // SECTOR) * SECTOR
        cmds += ["-c", f"write -P {0xC0 + i} {o} {length}"]
    pre, ref = image_ref(top, enc)
    qemu_io(*pre, *cmds, ref)
    initial = uniform_sectors(read_raw("qemu-img", top, d / "i.raw", enc))
    return top, initial, back_vals


def run_io(img, script, enc=NO_ENC, **faulty):
    return subprocess.run([IMGTOOL, "io", *enc[0], "--image-opts",
                           faulty_opts(img, extra=enc[1], **faulty)],
                          input=script, capture_output=True, text=True,
                          timeout=120)


def durable_model(ops, io_stderr, *model_args):
    """Model(*model_args) after ops, those before the last guest flush
    that completed durable (imgtool io says which flushes failed)."""
    done = sum(op[0] == "flush" for op in ops) - \
        io_stderr.count("io: flush failed")
    cut = 0
    seen = 0
    for i, op in enumerate(ops):
        if op[0] == "flush":
            seen += 1
            if seen == done:
                cut = i + 1
                break
    model = Model(*model_args)
    for i, op in enumerate(ops):
        model.apply(op, durable=i < cut)
    return model


def check_after_crash(img, work, ops, model_args, describe, enc=NO_ENC):
    """Everything the module docstring promises of a crashed image."""
    model = durable_model(ops, work["proc"].stderr, *model_args)

    dirty, corrupt = header_flags(img)
    assert not corrupt, describe("corrupt bit set")
    info = qemu_img("info", "--output=json", "-f", "qcow2", img, check=False)
    assert info.returncode == 0, describe(f"qemu-img info: {info.stderr}")
    it = imgtool("info", "--output=json", "-f", "qcow2", img, check=False)
    assert it.returncode == 0, describe(f"imgtool info: {it.stderr}")
    vsize = json.loads(info.stdout)["virtual-size"]

    if dirty:
        copy = str(img) + ".imgtool-repaired"
        shutil.copy(img, copy)
        r = imgtool("check", "-r", "all", *image_ref(copy, enc)[0],
                    image_ref(copy, enc)[1], check=False)
        assert r.returncode == 0, describe(
            f"imgtool check -r all on the dirty image: {r.returncode}\n"
            f"{r.stdout}{r.stderr}")
        q = qemu_img("check", *image_ref(copy, enc)[0],
                     image_ref(copy, enc)[1], check=False)
        assert q.returncode == 0, describe(
            f"qemu-img check after imgtool's repair: {q.returncode}\n"
            f"{q.stdout}{q.stderr}")
        r = qemu_img("check", "-r", "all", *image_ref(img, enc)[0],
                     image_ref(img, enc)[1], check=False)
        assert r.returncode == 0, describe(
            f"qemu-img check -r all: {r.returncode}\n{r.stdout}{r.stderr}")
    else:
        q = qemu_img("check", "--output=json", *image_ref(img, enc)[0],
                     image_ref(img, enc)[1], check=False)
        assert q.returncode in (0, 3), describe(
            f"qemu-img check: {q.returncode}\n{q.stdout}{q.stderr}")
        r = imgtool("check", *image_ref(img, enc)[0], image_ref(img, enc)[1],
                    check=False)
        assert r.returncode == q.returncode, describe(
            f"imgtool check exit {r.returncode}, qemu-img {q.returncode}\n"
            f"{r.stdout}{r.stderr}\nqemu-img: {q.stdout}")

    data = read_raw("qemu-img", img, str(img) + ".q.raw", enc)
    mine = read_raw(IMGTOOL, img, str(img) + ".i.raw", enc)
    assert data == mine, describe("imgtool and qemu-img read different data")
    bad = model.verify(data, vsize)
    assert not bad, describe("lost or invented data:\n" + "\n".join(bad))
    return dirty


def crash_config(tmp, name, opts, backing, npoints, seed):
    rng = random.Random(f"{seed}-{name}")
    stats = {"points": 0, "dirty": 0, "modes": {}}
    nwork = max(1, -(-npoints // CUTS_PER_WORKLOAD))
    enc = encryption(opts, tmp)
    for w in range(nwork):
        base, initial, back_vals = make_base(tmp, f"w{w}", opts, backing, rng,
                                             enc)
        cs = cluster_size(opts)
        ops = gen_workload(rng, cs, compress=not enc[0])
        script = "".join(script_line(op) + "\n" for op in ops)
        nsec = (max([VSIZE] + [op[1] for op in ops if op[0] == "truncate"])
                // SECTOR)
        model_args = (initial, back_vals, nsec, cs, backing)

        dry = base.parent / "dry.qcow2"
        shutil.copy(base, dry)
        st = base.parent / "stats"
        p = run_io(dry, script, enc, stats_file=st)
        assert p.returncode == 0, f"{name}: workload failed: {p.stderr}"
        counts = dict(line.split("=") for line in
                      open(st).read().split())
        writes, flushes = int(counts["writes"]), int(counts["flushes"])

        for c in range(min(CUTS_PER_WORKLOAD, npoints - stats["points"])):
            img = base.parent / f"cut{c}.qcow2"
            shutil.copy(base, img)
            mode = rng.choice(["drop", "random-part", "random-part", "keep"])
            cutseed = rng.randrange(1, 1 << 30)
            if rng.random() < 0.7:
                where = {"powerfail_after_writes": rng.randint(1, writes)}
            else:
                where = {"powerfail_at_flush": rng.randint(1, flushes)}
            faulty = dict(where, powerfail_mode=mode, seed=cutseed,
                          stats_file=base.parent / f"cut{c}.stats")
            p = run_io(img, script, enc, **faulty)
            cmd = (f"cp {base} /tmp/x.qcow2 && {IMGTOOL} io "
                   f"{' '.join(enc[0])} --image-opts "
                   f"'{faulty_opts('/tmp/x.qcow2', extra=enc[1], **dict(where, powerfail_mode=mode, seed=cutseed))}'"
                   f" < script")

            def describe(what, img=img, cmd=cmd):
                return (f"\n[{name}] {what}\nimage: {img}\nconfig: -o {opts}"
                        f"{' (with backing file)' if backing else ''}\n"
                        f"reproduce: {cmd}\nscript:\n{script}"
                        f"io stderr:\n{p.stderr}")

            assert "Sanitizer" not in p.stderr, describe("sanitizer report")
            dirty = check_after_crash(img, {"proc": p}, ops, model_args,
                                      describe, enc)
            stats["points"] += 1
            stats["dirty"] += dirty
            stats["modes"][mode] = stats["modes"].get(mode, 0) + 1
            os.unlink(img)
        shutil.rmtree(base.parent)
    return stats


@pytest.mark.parametrize("name,opts,backing", CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_power_loss(tmp_path, name, opts, backing):
    npoints = max(1, POINTS // len(CONFIGS))
    stats = crash_config(tmp_path, name, opts, backing, npoints, SEED)
    assert stats["points"] == npoints
    print(f"{name}: {stats}")


def test_lazy_refcounts_reuse(tmp_path):
    """Lazy refcounts must not reuse a freed cluster before the L2 update
    that freed it is on disk.  Cluster X holds guest offset 0 and
    is flushed; a discard frees it, a write to 1M reuses it, and the power
    goes after that data write reached the disk but before any L2 update
    did.  Guest offset 0 must read its old data or zeroes, never 1M's."""
    img = tmp_path / "lazy.qcow2"
    script = "write -P 1 0 64k\nflush\ndiscard 0 64k\nwrite -P 2 1M 64k\n"
    st = tmp_path / "stats"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img,
             "4M")
    p = run_io(img, script, stats_file=st)
    assert p.returncode == 0, p.stderr
    writes = int(dict(l.split("=") for l in open(st).read().split())["writes"])
    for n in range(1, writes + 1):
        qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
                 img, "4M")
        run_io(img, script, powerfail_after_writes=n, powerfail_mode="keep")
        qemu_img("check", "-q", "-r", "all", "-f", "qcow2", img, check=False)
        head = read_raw("qemu-img", img, tmp_path / "out.raw")[:65536]
        assert head in (bytes(65536), bytes([1]) * 65536), \
            f"powerfail-after-writes={n}: guest offset 0 holds " \
            f"{sorted(set(head))}"


# ------------------------------------------------------------------ kill -9

KILL_POINTS = int(os.environ.get("IMGTOOL_KILL_POINTS", "30"))


def timed_run(cmd):
    """Runs cmd to its end; returns how many seconds it took, the window
    the kill tests pick their moments in."""
    t0 = time.monotonic()
    run(cmd)
    return time.monotonic() - t0


def kill_after(cmd, delay):
    """Starts cmd and SIGKILLs it after delay seconds (if still running)."""
    proc = subprocess.Popen([str(a) for a in cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=no_leak_check_env())
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def make_source(path, size, rng):
    """A raw file of random clusters, zero clusters and holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 64 << 10):
            r = rng.random()
            if r < 0.5:
                f.seek(off)
                f.write(rng.randbytes(64 << 10))
            elif r < 0.6:
                f.seek(off)
                f.write(bytes(64 << 10))


@pytest.mark.parametrize("args", [
    [],
    ["-o", "cluster_size=4k"],
    ["-W", "-m", "4"],
    ["-o", LUKS],
], ids=["default", "c4k", "W-m4", "luks"])
def test_kill_convert(tmp_path, args):
    rng = random.Random(f"{SEED}-kill-{args}")
    enc = encryption(" ".join(args), tmp_path)
    src = tmp_path / "src.raw"
    size = 48 << 20
    make_source(src, size, rng)
    with open(src, "rb") as f:
        srcdata = f.read()
    dst = tmp_path / "dst.qcow2"
    cmd = [IMGTOOL, "convert", *enc[0], "-f", "raw", "-O", "qcow2", *args,
           src, dst]
    full = timed_run(cmd)
    outcomes = {"empty": 0, "size0": 0, "checked": 0}
    for k in range(max(1, KILL_POINTS // 3)):
        if dst.exists():
            dst.unlink()
        kill_after(cmd, rng.uniform(0, full * 1.1))
        # create writes the header last (a kill can cut a write short):
        # a file without one is nothing made yet
        if not dst.exists() or os.path.getsize(dst) < 104 or \
                open(dst, "rb").read(4) != b"QFI\xfb":
            outcomes["empty"] += 1
            continue
        what = f"convert {args} killed after the header was written ({k})"
        dirty, corrupt = header_flags(dst)
        assert not corrupt, what
        info = qemu_img("info", "--output=json", "-f", "qcow2", dst,
                        check=False)
        assert info.returncode == 0, f"{what}: {info.stderr}"
        pre, ref = image_ref(dst, enc)
        q = qemu_img("check", "--output=json", *pre, ref, check=False)
        assert q.returncode in (0, 3), f"{what}: {q.stdout}{q.stderr}"
        r = imgtool("check", *pre, ref, check=False)
        assert r.returncode == q.returncode, f"{what}: {r.stdout}{r.stderr}"
        if json.loads(info.stdout)["virtual-size"] == 0:
            # Like qemu-img, create makes a zero-sized image and then
            # grows it: killed in between, that is what is left.
            outcomes["size0"] += 1
            continue
        data = read_raw("qemu-img", dst, tmp_path / "out.raw", enc)
        assert len(data) == size, what
        zero = bytes(SECTOR)
        for s in range(0, size, SECTOR):
            chunk = data[s:s + SECTOR]
            assert chunk == srcdata[s:s + SECTOR] or chunk == zero, \
                f"{what}: sector at {s:#x} holds neither source nor zeroes"
        outcomes["checked"] += 1
    print(f"kill {args}: {outcomes}, full convert {full:.2f}s")
