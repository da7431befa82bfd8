"""Model-based random testing of imgtool's qcow2 write path.

Thousands of random operations (patterned writes, write -z with and
without unmap, discards, in-process read checks, flushes; resize grow and
shrink and a fresh open between batches) are applied to a qcow2 image and,
in Python, to a shadow copy of its guest-visible content.  Operations run in
batches, one `imgtool io -c ... -c ...` process per batch, so every batch
also reopens the image.  After each batch the real QEMU tools must agree:
`qemu-img compare` finds image and shadow identical and `qemu-img check`
finds no corruption and no leaks.

Each case has a fixed seed; IMGTOOL_MODEL_SEED overrides it (for all
cases) and IMGTOOL_MODEL_OPS sets the number of operations per case (long
mode: IMGTOOL_MODEL_OPS=100000).  A failure names the seed, the batch and
its exact command line.

The same model also drives qemu-io/qemu-img (the *_oracle cases), which
checks the model's expectations (e.g. discard semantics) against QEMU.
"""
import os
import random
import zlib

import pytest

from conftest import IMGTOOL, io_args, qemu_img, run

K = 1024
M = 1024 * 1024

DEFAULT_OPS = 2000       # per case; 7 cases -> 14000 ops per run
BATCH = 50               # operations per imgtool io process


class Case:
    def __init__(self, name, opts, size, cluster, backing=False, v2=False):
        self.name = name
        self.opts = opts
        self.size = size
        self.cluster = cluster
        self.backing = backing
        self.v2 = v2


CASES = [
    Case("c512", "cluster_size=512", 8 * M, 512),
    Case("c4k-v2-backing", "cluster_size=4096,compat=0.10", 16 * M, 4 * K,
         backing=True, v2=True),
    Case("c4k-v2-refcount16", "cluster_size=4096,compat=0.10,refcount_bits=16",
         16 * M, 4 * K, v2=True),
    Case("c64k-refcount1-lazy-backing",
         "cluster_size=65536,compat=1.1,refcount_bits=1,lazy_refcounts=on",
         32 * M, 64 * K, backing=True),
    Case("c64k-extl2-refcount64-backing",
         "cluster_size=65536,extended_l2=on,refcount_bits=64",
         32 * M, 64 * K, backing=True),
    Case("c2M-extl2-backing", "cluster_size=2M,extended_l2=on", 32 * M, 2 * M,
         backing=True),
    Case("c2M-lazy", "cluster_size=2M,lazy_refcounts=on", 32 * M, 2 * M),
]


def seed_for(case):
    env = os.environ.get("IMGTOOL_MODEL_SEED")
    if env:
        return int(env, 0)
    return zlib.crc32(case.name.encode())


def ops_per_case(default=DEFAULT_OPS):
    return int(os.environ.get("IMGTOOL_MODEL_OPS", default))


class Tool:
    """How one side of the model runs: imgtool, or QEMU as the oracle."""

    def __init__(self, name):
        self.name = name

    def create(self, path, opts, size, backing):
        cmd = ["create", "-f", "qcow2"]
        if opts:
            cmd += ["-o", opts]
        if backing:
            cmd += ["-b", backing, "-F", "qcow2"]
        cmd += [path, str(size)]
        if self.name == "imgtool":
            run([IMGTOOL, *cmd])
        else:
            qemu_img(*cmd[:1], "-q", *cmd[1:])

    def io_argv(self, path, cmds):
        argv = [IMGTOOL, "io"] if self.name == "imgtool" else ["qemu-io"]
        return argv + ["-f", "qcow2", *io_args(cmds), path]

    def resize_argv(self, path, size, shrink):
        argv = [IMGTOOL, "resize"] if self.name == "imgtool" else ["qemu-img", "resize"]
        argv += ["-f", "qcow2"]
        if shrink:
            argv.append("--shrink")
        return argv + [path, str(size)]


class Model:
    def __init__(self, case, tool, tmp, seed):
        self.case = case
        self.tool = tool
        self.rng = random.Random(seed)
        self.seed = seed
        self.img = str(tmp / "model.qcow2")
        self.shadow_path = str(tmp / "shadow.raw")
        c = case.cluster
        self.min_size = case.size // 2
        self.max_size = case.size * 3 // 2
        self.backing_size = 0
        self.shadow = bytearray(case.size)
        # Ranges changed since the shadow file was last written: rewriting
        # only those keeps big images cheap to verify after every batch.
        self.dirty = [(0, case.size)]
        if case.backing:
            self._make_backing(tmp)
        tool.create(self.img, case.opts, case.size,
                    "backing.qcow2" if case.backing else None)
        assert self.min_size % c == 0 and self.max_size % c == 0

    def _make_backing(self, tmp):
        # The backing file is no larger than the smallest size the overlay
        # is ever shrunk to, so space regained by growing again never
        # shows backing data (which would need zero-on-grow semantics that
        # differ between qcow2 versions).
        path = str(tmp / "backing.qcow2")
        self.backing_size = self.min_size
        qemu_img("create", "-q", "-f", "qcow2", path, str(self.backing_size))
        cmds = []
        for _ in range(24):
            off = self.rng.randrange(0, self.backing_size - 1)
            ln = self.rng.randint(1, min(512 * K, self.backing_size - off))
            pat = self.rng.randrange(1, 256)
            cmds += ["-c", f"write -P {pat:#x} {off} {ln}"]
            self.shadow[off:off + ln] = bytes([pat]) * ln
        run(["qemu-io", "-f", "qcow2", *cmds, path])

    # --- random operations -------------------------------------------------

    def _range(self, max_len):
        size = len(self.shadow)
        r = self.rng.random()
        if r < 0.3:
            # Hot region at the start: overwrites, partial-cluster updates.
            hot = min(size, 8 * self.case.cluster)
            off = self.rng.randrange(0, hot)
        elif r < 0.4:
            # The end of the image (a resize may just have moved it).
            off = max(0, size - self.rng.randint(1, 4 * self.case.cluster))
        else:
            off = self.rng.randrange(0, size)
        if self.rng.random() < 0.5:
            off -= off % 512
        ln = self.rng.randint(1, max_len)
        if self.rng.random() < 0.5:
            ln = max(512, ln - ln % 512)
        ln = min(ln, size - off)
        return off, max(ln, 1)

    def op(self):
        c = self.case.cluster
        max_len = min(max(4 * c, 64 * K), 512 * K)
        if self.rng.random() < 0.03:
            max_len = 2 * M
        r = self.rng.random()
        if r < 0.55:
            off, ln = self._range(max_len)
            pat = self.rng.choice([0, *range(1, 256)])
            self.shadow[off:off + ln] = bytes([pat]) * ln
            self.dirty.append((off, ln))
            return f"write -P {pat:#x} {off} {ln}"
        if r < 0.70:
            off, ln = self._range(max_len)
            self.shadow[off:off + ln] = bytes(ln)
            self.dirty.append((off, ln))
            if self.rng.random() < 0.5:
                return f"write -z -u {off} {ln}"
            return f"write -z {off} {ln}"
        if r < 0.80:
            # Discards in whole clusters: qcow2 ignores partial clusters, and
            # a compat=0.10 image with a backing file keeps the data (it
            # cannot express zeroes over a backing file).
            whole = len(self.shadow) // c
            if whole == 0:
                return "flush"
            first = self.rng.randrange(0, whole)
            n = self.rng.randint(1, min(whole - first, max(1, 1 * M // c)))
            off, ln = first * c, n * c
            if not (self.case.v2 and self.case.backing):
                self.shadow[off:off + ln] = bytes(ln)
                self.dirty.append((off, ln))
            return f"discard {off} {ln}"
        if r < 0.93:
            # Read back, inside the same process, a range whose content is a
            # single byte value (so `read -P` can check it).
            for _ in range(8):
                off, ln = self._range(min(max_len, 64 * K))
                chunk = self.shadow[off:off + ln]
                if chunk.count(chunk[0]) == len(chunk):
                    return f"read -P {chunk[0]:#x} {off} {ln}"
            return "flush"
        return "flush"

    def resize(self):
        c = self.case.cluster
        new = self.rng.randrange(self.min_size // c, self.max_size // c + 1) * c
        old = len(self.shadow)
        if new < old:
            del self.shadow[new:]
        else:
            self.shadow.extend(bytes(new - old))
            self.dirty.append((old, new - old))
        return self.tool.resize_argv(self.img, new, new < old)

    # --- checking -------------------------------------------------------------

    def verify(self, what):
        mode = "r+b" if os.path.exists(self.shadow_path) else "wb"
        with open(self.shadow_path, mode) as f:
            view = memoryview(self.shadow)
            for off, ln in self.dirty:
                if off < len(self.shadow):
                    f.seek(off)
                    f.write(view[off:off + ln])
            f.truncate(len(self.shadow))
        self.dirty = []
        p = qemu_img("compare", "-f", "qcow2", "-F", "raw", self.img,
                     self.shadow_path, check=False)
        if p.returncode != 0:
            self.fail(what, f"qemu-img compare: exit {p.returncode}: "
                      f"{p.stdout.strip()} {p.stderr.strip()}")
        p = qemu_img("check", "-f", "qcow2", self.img, check=False)
        if p.returncode != 0:
            self.fail(what, f"qemu-img check: exit {p.returncode}:\n"
                      f"{p.stdout[-3000:]}{p.stderr[-2000:]}")

    def fail(self, what, why):
        pytest.fail(
            f"model case {self.case.name} ({self.tool.name}), seed "
            f"{self.seed} (rerun: IMGTOOL_MODEL_SEED={self.seed}); "
            f"failed after {what}:\n{why}", pytrace=False)

    def run_cmd(self, argv, what):
        p = run(argv, check=False)
        if p.returncode != 0:
            self.fail(what, f"exit {p.returncode}\nstdout: {p.stdout[-3000:]}"
                      f"\nstderr: {p.stderr[-3000:]}")

    def drive(self, nops):
        done = 0
        batch_no = 0
        while done < nops:
            batch_no += 1
            if self.rng.random() < 0.25:
                argv = self.resize()
                what = f"batch {batch_no}: {' '.join(argv)}"
                self.run_cmd(argv, what)
                self.verify(what)
            cmds = [self.op() for _ in range(min(BATCH, nops - done))]
            done += len(cmds)
            argv = self.tool.io_argv(self.img, cmds)
            what = (f"batch {batch_no} (ops {done - len(cmds)}..{done - 1}): "
                    + " ".join(f"'{a}'" if " " in a else a for a in argv))
            self.run_cmd(argv, what)
            self.verify(what)
        return batch_no


def final_imgtool_checks(model):
    """imgtool itself reads the image back and finds it clean."""
    out = model.img + ".out.raw"
    run([IMGTOOL, "convert", "-f", "qcow2", "-O", "raw", model.img, out])
    with open(out, "rb") as f:
        data = f.read()
    if data != bytes(model.shadow):
        first = next((i for i in range(min(len(data), len(model.shadow)))
                      if data[i] != model.shadow[i]), None)
        model.fail("the last batch", f"imgtool convert -O raw differs from the "
                   f"shadow (sizes {len(data)}/{len(model.shadow)}, first "
                   f"difference at {first})")
    run([IMGTOOL, "check", "-f", "qcow2", model.img])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_imgtool(case, tmp_path):
    model = Model(case, Tool("imgtool"), tmp_path, seed_for(case))
    model.drive(ops_per_case())
    final_imgtool_checks(model)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_oracle(case, tmp_path):
    """The model's expectations hold for QEMU itself (fewer operations)."""
    model = Model(case, Tool("qemu"), tmp_path, seed_for(case))
    model.drive(max(BATCH, ops_per_case() // 6))
