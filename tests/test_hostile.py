"""Crafted qcow2 images: imgtool must refuse or report, never crash.

Every image is a small valid qemu-img image with one field changed.  For
each, `imgtool info`, `imgtool check` and `imgtool io -c 'read 0 64k'` run
with a 256 MiB address-space limit and a 2 s timeout and must:
  - exit normally (no signal, no sanitizer report: tests/run's guard
    catches those), within the time limit;
  - on failure print only lines starting "imgtool: " (exactly one when the
    image cannot even be opened), never a bare C-library message;
  - refuse to open what qemu-img refuses to open (the header is invalid).
`check` may also succeed and report the damage (exit 2/3, qemu-img's
ERROR lines) when the image can be opened for checking.
"""
import os
import resource
import shutil
import struct
import subprocess

import pytest

from conftest import IMGTOOL, qemu_img, qemu_io

TB = 1 << 40
AS_LIMIT = 256 * 1024 * 1024
TIMEOUT = 2


def _sanitized():
    """ASan reserves terabytes of shadow address space: an address-space
    limit only stops it from starting, so such builds run without it."""
    try:
        with open(IMGTOOL, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZED = _sanitized()


def _limits():
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_limited(*args):
    try:
        return subprocess.run([IMGTOOL, *map(str, args)], capture_output=True,
                              text=True, timeout=TIMEOUT,
                              preexec_fn=_limits)
    except subprocess.TimeoutExpired:
        pytest.fail(f"imgtool {' '.join(map(str, args))}: still running "
                    f"after {TIMEOUT} s")


class Img:
    def __init__(self, path):
        self.path = path
        h = open(path, "rb").read(112)
        (_, _, _, _, self.cluster_bits, _, _, self.l1_size, self.l1_off,
         self.rt_off, _, _, _) = struct.unpack(">IIQIIQIIQQIIQ", h[:72])
        self.cs = 1 << self.cluster_bits

    def wr(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def u64(self, off):
        with open(self.path, "rb") as f:
            f.seek(off)
            return struct.unpack(">Q", f.read(8))[0]

    def p64(self, off, v):
        self.wr(off, struct.pack(">Q", v))

    def p32(self, off, v):
        self.wr(off, struct.pack(">I", v))

    def l2_off(self):
        return self.u64(self.l1_off) & 0x00fffffffffffe00

    def truncate(self, n):
        with open(self.path, "r+b") as f:
            f.truncate(n)


def _set_l2(i, v):
    i.p64(i.l2_off(), v)


# name -> (damage, qemu-img refuses to open it)
CASES = {
    "bad_magic": (lambda i: i.wr(0, b"QFI\xfa"), True),
    "bad_version": (lambda i: i.p32(4, 4), True),
    "empty_file": (lambda i: i.truncate(0), True),
    "truncated_header": (lambda i: i.truncate(50), True),
    "cluster_bits_30": (lambda i: i.p32(20, 30), True),
    "cluster_bits_8": (lambda i: i.p32(20, 8), True),
    "l1_past_eof": (lambda i: i.p64(40, TB), False),
    "l1_huge": (lambda i: i.p32(36, 0x7fffffff), True),
    "l1_unaligned": (lambda i: i.p64(40, i.l1_off + 8), True),
    "l1_too_small": (lambda i: i.p32(36, 0), True),
    "reftable_past_eof": (lambda i: i.p64(48, TB), False),
    "reftable_huge": (lambda i: i.p32(56, 0x7fffffff), True),
    "reftable_unaligned": (lambda i: i.p64(48, i.rt_off + 512), True),
    "l1_overlaps_header": (lambda i: i.p64(40, 0), False),
    "l1_overlaps_reftable": (lambda i: i.p64(40, i.rt_off), False),
    "l2_overlaps_reftable": (lambda i: i.p64(i.l1_off, (1 << 63) | i.rt_off),
                             False),
    "l2_table_unaligned": (lambda i: i.p64(i.l1_off,
                                           (1 << 63) | (i.l2_off() + 512)),
                           False),
    "l2_table_past_eof": (lambda i: i.p64(i.l1_off, (1 << 63) | TB), False),
    "data_unaligned": (lambda i: _set_l2(i, i.u64(i.l2_off()) | 0x200),
                       False),
    "data_past_eof": (lambda i: _set_l2(i, (1 << 63) | TB), False),
    "refblock_unaligned": (lambda i: i.p64(i.rt_off, i.cs * 2 + 512), False),
    "refblock_past_eof": (lambda i: i.p64(i.rt_off, TB), False),
    "unknown_incompat": (lambda i: i.p64(72, 1 << 20), True),
    "header_length_huge": (lambda i: i.p32(100, 0x7ffffff8), True),
    "header_length_short": (lambda i: i.p32(100, 64), True),
    "ext_length_huge": (lambda i: i.p32(0x70 + 4, 0x7fffffff), True),
    "backing_offset_past_eof": (lambda i: (i.p64(8, TB), i.p32(16, 10)),
                                True),
    "backing_name_1M": (lambda i: (i.p64(8, 512), i.p32(16, 1 << 20)), True),
    "refcount_order_7": (lambda i: i.p32(96, 7), True),
    "snapshots_huge": (lambda i: (i.p32(60, 0x7fffffff),
                                  i.p64(64, 0x10000)), True),
    "size_huge": (lambda i: i.p64(24, (1 << 63) - 1), True),
    "crypt_unknown": (lambda i: i.p32(32, 7), True),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    p = tmp_path_factory.mktemp("hostile") / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_io("-c", "write -q -P 1 0 1M", p)
    return p


def make(base, tmp, name):
    p = tmp / f"{name}.qcow2"
    shutil.copy(base, p)
    CASES[name][0](Img(str(p)))
    return p


def assert_clean_failure(p, what, exactly_one):
    assert p.returncode >= 0, f"{what}: killed by signal {-p.returncode}"
    lines = p.stderr.splitlines()
    assert lines, f"{what}: exit {p.returncode} without a message"
    for line in lines:
        assert line.startswith("imgtool: "), f"{what}: {line!r}"
    if exactly_one:
        assert len(lines) == 1, f"{what}: {p.stderr}"
    assert "AddressSanitizer" not in p.stderr
    assert "runtime error" not in p.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile(base, tmp, name):
    p = make(base, tmp, name)
    qemu_refuses = CASES[name][1]
    if qemu_refuses:   # keep the table honest against the oracle
        assert qemu_img("info", "-f", "qcow2", p,
                        check=False).returncode != 0

    info = run_limited("info", "-f", "qcow2", p)
    if qemu_refuses:
        assert info.returncode != 0, info.stdout
    if info.returncode != 0:
        assert_clean_failure(info, "info", exactly_one=True)
    else:
        assert info.stderr == "" or all(
            l.startswith("imgtool: ") for l in info.stderr.splitlines())

    chk = run_limited("check", "-f", "qcow2", p)
    assert chk.returncode in (0, 1, 2, 3), chk.stderr
    if qemu_refuses:
        assert chk.returncode == 1
    if chk.returncode == 1 and not chk.stdout:
        # No report at all: the last line says why.
        assert chk.stderr.splitlines()[-1].startswith("imgtool: "), \
            chk.stderr
    for line in chk.stderr.splitlines():
        assert line.startswith(("imgtool: ", "ERROR", "Leaked cluster",
                                "Can't get refcount")), line

    io = run_limited("io", "-r", "-f", "qcow2", "-c", "read 0 64k", p)
    if qemu_refuses:
        assert io.returncode != 0
    if io.returncode != 0:
        assert_clean_failure(io, "io", exactly_one=qemu_refuses)


@pytest.mark.parametrize("name", ["l2_table_unaligned", "data_unaligned",
                                  "refblock_past_eof", "data_past_eof"])
def test_hostile_check_reports_damage(base, tmp, name):
    """Images that open fine but are damaged: check says so (exit 1 or 2)
    and qemu-img agrees that something is wrong."""
    p = make(base, tmp, name)
    chk = run_limited("check", "-f", "qcow2", p)
    assert chk.returncode in (1, 2), chk.stderr
    assert qemu_img("check", "-f", "qcow2", p, check=False).returncode != 0


def test_check_refuses_image_file_too_big_for_memory(tmp):
    """A sparse image file of 8 TiB with 512-byte clusters (2^34 clusters,
    more than qemu-img will check) with a reference at its far end: a clear
    error, not an allocation crash."""
    p = tmp / "sparse.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p,
             "1M")
    qemu_io("-c", "write -q -P 1 0 512", p)
    i = Img(str(p))
    far = 8 * TB - 512
    i.truncate(8 * TB)
    _set_l2(i, (1 << 63) | far)
    chk = run_limited("check", "-f", "qcow2", p)
    assert chk.returncode in (1, 2), chk.stderr
    if chk.returncode == 1:
        assert_clean_failure(chk, "check", exactly_one=False)
