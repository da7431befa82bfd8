"""Crafted qcow2 images: imgtool must refuse or report, never crash.

Every image is a small valid qemu-img image with one field changed.  For
each, `imgtool info`, `imgtool check`, `imgtool io -c 'read 0 64k'`,
`imgtool convert` and `imgtool snapshot -l` run
with a 256 MiB address-space limit and a 2 s timeout and must:
  - exit normally (no signal, no sanitizer report: tests/run's guard
    catches those), within the time limit;
  - on failure print only lines starting "imgtool: " (exactly one when the
    image cannot even be opened), never a bare C-library message;
  - refuse to open what qemu-img refuses to open (the header is invalid).
`check` may also succeed and report the damage (exit 2/3, qemu-img's
ERROR lines) when the image can be opened for checking.
"""
import functools
import os
import shutil
import struct

import pytest

import limits
from conftest import poke_be, qemu_check_clean, qemu_img, qemu_io, read_be

TB = 1 << 40
TIMEOUT = 2


run_limited = functools.partial(limits.run_limited, timeout=TIMEOUT)


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
        return read_be(self.path, off, 8)

    def p64(self, off, v):
        poke_be(self.path, off, 8, v)

    def p32(self, off, v):
        poke_be(self.path, off, 4, v)

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

    for what, args in [("convert", ["convert", "-f", "qcow2", "-O", "raw", p,
                                    tmp / "out.raw"]),
                       ("snapshot -l", ["snapshot", "-l", "-f", "qcow2", p])]:
        r = run_limited(*args)
        if qemu_refuses:
            assert r.returncode != 0, what
        if r.returncode != 0:
            # An image that opens may still fail midway: the corruption
            # notice comes first, as qemu-img prints it.
            assert_clean_failure(r, what, exactly_one=qemu_refuses)


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


# ------------------------------------------------- snapshot and bitmap tables
#
# Absurd snapshot tables and bitmap directories, in images with two
# snapshots (64 MiB, data in both) or three bitmaps holding dirty bits.
# info, check, snapshot -l and convert (and convert -l for snapshot
# images) each run under the same limits; a refusal is one `imgtool:`
# line.  What qemu-img refuses to open, imgtool refuses too; imgtool may
# also refuse what qemu-img misreads (a table past the end of the file
# reads as zeroes there).  check opens what it can and `check -r all`
# leaves the repairable ones clean for qemu-img.

BITMAPS_EXT = 0x23852875


class Tables(Img):
    def __init__(self, path):
        super().__init__(path)
        h = open(path, "rb").read(112)
        self.nb_snap, self.snap_off = struct.unpack(">IQ", h[60:72])

    def u32(self, off):
        return read_be(self.path, off, 4)

    def p16(self, off, v):
        poke_be(self.path, off, 2, v)

    def snap(self, i):
        """Offset of snapshot table entry i."""
        off = self.snap_off
        with open(self.path, "rb") as f:
            for _ in range(i):
                f.seek(off)
                h = f.read(40)
                id_len, name_len = struct.unpack(">HH", h[12:16])
                extra = struct.unpack(">I", h[36:40])[0]
                off += (40 + extra + id_len + name_len + 7) & ~7
        return off

    def bext(self):
        """Offset of the bitmaps extension's data."""
        off = self.u32(100)
        with open(self.path, "rb") as f:
            while True:
                f.seek(off)
                ty, ln = struct.unpack(">II", f.read(8))
                assert ty, "no bitmaps extension"
                if ty == BITMAPS_EXT:
                    return off + 8
                off += 8 + ((ln + 7) & ~7)

    def bdir(self):
        return self.u64(self.bext() + 16)

    def bent(self, i):
        """Offset of bitmap directory entry i."""
        off = self.bdir()
        with open(self.path, "rb") as f:
            for _ in range(i):
                f.seek(off)
                h = f.read(24)
                name_len, extra = struct.unpack(">HI", h[18:24])
                off += (24 + extra + name_len + 7) & ~7
        return off


# name -> (base image, damage, qemu-img refuses to open it,
#          check -r all makes it clean)
TABLE_CASES = {
    "snap_count_over_limit": ("snap", lambda i: i.p32(60, 65537), True,
                              False),
    "snap_count_past_table": ("snap", lambda i: i.p32(60, 1000), False, True),
    "snap_count_max_u32": ("snap", lambda i: i.p32(60, 0xffffffff), True,
                           False),
    "snap_table_past_eof": ("snap", lambda i: i.p64(64, TB), False, True),
    "snap_table_unaligned": ("snap", lambda i: i.p64(64, i.snap_off + 8),
                             True, False),
    # qemu-img reads the header as the table and cannot repair that;
    # neither can imgtool (nothing says where the entries were).
    "snap_table_on_header": ("snap", lambda i: i.p64(64, 0), False, False),
    "snap_table_on_l1": ("snap", lambda i: i.p64(64, i.l1_off), False,
                         False),
    "snap_l1_past_eof": ("snap", lambda i: i.p64(i.snap(0), TB), False,
                         False),
    "snap_l1_huge": ("snap", lambda i: i.p32(i.snap(0) + 8, 0x7fffffff),
                     False, False),
    "snap_l1_size_past_eof": ("snap",
                              lambda i: i.p32(i.snap(1) + 8, 0x1000000),
                              False, False),
    "snap_l1_unaligned": ("snap",
                          lambda i: i.p64(i.snap(0), i.u64(i.snap(0)) + 8),
                          False, False),
    "snap_l1_on_header": ("snap", lambda i: i.p64(i.snap(1), 0), False,
                          False),
    "snap_extra_huge": ("snap", lambda i: i.p32(i.snap(0) + 36, 0xffffffff),
                        True, True),
    "snap_extra_1025": ("snap", lambda i: i.p32(i.snap(1) + 36, 1025), True,
                        True),
    "snap_extra_short": ("snap", lambda i: i.p32(i.snap(1) + 36, 4), False,
                         True),
    "snap_name_len_huge": ("snap", lambda i: i.p16(i.snap(1) + 14, 0xffff),
                           False, True),
    "snap_id_len_huge": ("snap", lambda i: i.p16(i.snap(1) + 12, 0xffff),
                         False, True),
    "snap_disk_size_huge": ("snap", lambda i: i.p64(i.snap(0) + 48,
                                                    (1 << 63) - 512),
                            False, False),
    "snap_vmstate_huge": ("snap", lambda i: i.p64(i.snap(0) + 40, 1 << 62),
                          False, False),
    "bm_count_huge": ("bitmap", lambda i: i.p32(i.bext(), 0xffffffff), True,
                      False),
    "bm_count_zero": ("bitmap", lambda i: i.p32(i.bext(), 0), True, False),
    "bm_count_past_dir": ("bitmap", lambda i: i.p32(i.bext(), 3), True,
                          False),
    "bm_dir_past_eof": ("bitmap", lambda i: i.p64(i.bext() + 16, TB), True,
                        False),
    "bm_dir_huge": ("bitmap", lambda i: i.p64(i.bext() + 8, TB), True, False),
    "bm_dir_size_zero": ("bitmap", lambda i: i.p64(i.bext() + 8, 0), True,
                         False),
    "bm_dir_unaligned": ("bitmap", lambda i: i.p64(i.bext() + 16,
                                                   i.bdir() + 8), True,
                         False),
    "bm_dir_on_header": ("bitmap", lambda i: i.p64(i.bext() + 16, 0), True,
                         False),
    "bm_table_past_eof": ("bitmap", lambda i: i.p64(i.bent(0), TB), False,
                          False),
    "bm_table_huge": ("bitmap", lambda i: i.p32(i.bent(0) + 8, 0x7fffffff),
                      True, False),
    "bm_table_unaligned": ("bitmap", lambda i: i.p64(i.bent(1),
                                                     i.u64(i.bent(1)) + 8),
                           True, False),
    "bm_table_on_header": ("bitmap", lambda i: i.p64(i.bent(1), 0), True,
                           False),
    "bm_granularity_63": ("bitmap", lambda i: i.wr(i.bent(0) + 17, b"\x3f"),
                          True, False),
    "bm_name_len_huge": ("bitmap", lambda i: i.p16(i.bent(1) + 18, 0xffff),
                         True, False),
    "bm_extra_huge": ("bitmap", lambda i: i.p32(i.bent(0) + 20, 0xffffffff),
                      True, False),
    "bm_data_past_eof": ("bitmap",
                         lambda i: i.p64(i.u64(i.bent(0)) & ~511, TB),
                         False, False),
}


@pytest.fixture(scope="module")
def table_bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    snap = d / "snap.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", snap, "64M")
    qemu_io("-c", "write -q -P 1 0 1M", snap)
    qemu_img("snapshot", "-c", "one", snap)
    qemu_io("-c", "write -q -P 2 512k 1M", snap)
    qemu_img("snapshot", "-c", "two", snap)
    bm = d / "bitmap.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", bm, "64M")
    qemu_img("bitmap", "--add", bm, "bm0")
    qemu_img("bitmap", "--add", "-g", "1M", bm, "bm1")
    qemu_io("-c", "write -q -P 1 0 1M", bm)
    return {"snap": snap, "bitmap": bm}


def make_table_case(bases, tmp, name):
    p = tmp / f"{name}.qcow2"
    shutil.copy(bases[TABLE_CASES[name][0]], p)
    TABLE_CASES[name][1](Tables(str(p)))
    return p


def assert_one_line_or_success(p, what):
    if p.returncode != 0:
        assert_clean_failure(p, what, exactly_one=True)
    else:
        assert "AddressSanitizer" not in p.stderr and \
            "runtime error" not in p.stderr, f"{what}: {p.stderr}"


@pytest.mark.parametrize("name", sorted(TABLE_CASES))
def test_hostile_tables(table_bases, tmp, name):
    base, _, qemu_refuses, repairable = TABLE_CASES[name]
    p = make_table_case(table_bases, tmp, name)
    q = qemu_img("info", "-f", "qcow2", p, check=False)
    assert (q.returncode != 0) == qemu_refuses, q.stderr

    out = tmp / "out.raw"
    runs = {
        "info": run_limited("info", "-f", "qcow2", p),
        "snapshot -l": run_limited("snapshot", "-l", "-f", "qcow2", p),
        "convert": run_limited("convert", "-f", "qcow2", "-O", "raw", p,
                               out),
    }
    if base == "snap":
        runs["convert -l"] = run_limited("convert", "-l", "one", "-f",
                                         "qcow2", "-O", "raw", p, out)
    for what, r in runs.items():
        assert_one_line_or_success(r, what)
    refused = runs["info"].returncode != 0
    for what, r in runs.items():
        if what != "convert -l":
            assert (r.returncode != 0) == refused, \
                f"{what} exit {r.returncode}, info exit " \
                f"{runs['info'].returncode}: {r.stderr}"

    chk = run_limited("check", "-f", "qcow2", p)
    assert chk.returncode in (0, 1, 2, 3), chk.stderr
    for line in chk.stderr.splitlines():
        assert line.startswith(("imgtool: ", "ERROR", "Leaked cluster",
                                "Can't get refcount")), line
    if chk.returncode == 1 and not chk.stdout:
        assert len(chk.stderr.splitlines()) == 1, chk.stderr
    if refused and chk.returncode != 1:
        # check opened what the others refuse: it must say what is wrong.
        assert chk.returncode == 2, chk.stderr
    # The verdict is qemu-img check's: it reads the snapshot table and
    # loads the bitmaps itself, and fails (exit 1) where it cannot.
    assert chk.returncode == qemu_img("check", "-f", "qcow2", p,
                                      check=False).returncode, chk.stderr

    if repairable:
        fix = run_limited("check", "-r", "all", "-f", "qcow2", p)
        assert fix.returncode == 0, fix.stdout + fix.stderr
        assert "Repairing" in fix.stderr or "Rebuilding" in fix.stderr, \
            fix.stderr
        q = qemu_img("check", "-f", "qcow2", p, check=False)
        assert q.returncode == 0, q.stdout + q.stderr
        # What is left opens everywhere; the active layer is intact.
        assert run_limited("info", "-f", "qcow2", p).returncode == 0
        qemu_io("-c", "read -P 1 0 512k", "-c", "read -P 2 512k 1M", p)


@pytest.mark.parametrize("name", sorted(n for n, c in TABLE_CASES.items()
                                        if c[0] == "bitmap" and c[2]))
def test_hostile_bitmaps_refused_like_qemu(table_bases, tmp, name):
    """What qemu-img refuses to open for its bitmaps, imgtool refuses."""
    p = make_table_case(table_bases, tmp, name)
    r = run_limited("info", "-f", "qcow2", p)
    if r.returncode == 0 and not _bitmaps_landed():
        pytest.xfail("persistent bitmaps (formats/qcow2/bitmap-dir.c) are "
                     "not parsed yet")
    assert r.returncode != 0, r.stdout
    assert_clean_failure(r, "info", exactly_one=True)


def _bitmaps_landed():
    src = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "formats", "qcow2", "bitmap-dir.c")
    try:
        return "qcow2_bitmaps_parse" in open(src).read()
    except OSError:
        return False


def test_incomplete_snapshot_entry_repaired(table_bases, tmp):
    """A v3 snapshot entry without its disk size (extra data of 0 bytes,
    as very old QEMU wrote them) is what qemu-img check calls incomplete:
    imgtool check reports it the same way, and check -r all rewrites the
    table with full extra data without changing any snapshot."""
    p = tmp / "short.qcow2"
    shutil.copy(table_bases["snap"], p)
    t = Tables(str(p))
    last = t.snap(t.nb_snap - 1)
    with open(p, "r+b") as f:
        f.seek(last)
        e = f.read(40)
        id_len, name_len = struct.unpack(">HH", e[12:16])
        extra = struct.unpack(">I", e[36:40])[0]
        f.seek(last + 40 + extra)
        strings = f.read(id_len + name_len)
        f.seek(last + 36)
        f.write(struct.pack(">I", 0) + strings + bytes(extra))
    q = qemu_img("check", "-f", "qcow2", p, check=False)
    assert q.returncode == 2 and "is incomplete" in q.stderr, q.stderr
    chk = run_limited("check", "-f", "qcow2", p)
    assert chk.returncode == 2, chk.stderr
    assert f"ERROR snapshot table entry {t.nb_snap - 1} is incomplete" in \
        chk.stderr, chk.stderr
    want = {}
    for name in ("one", "two"):
        out = tmp / f"{name}.want"
        qemu_img("convert", "-l", name, "-O", "raw", p, out)
        want[name] = out.read_bytes()
    fix = run_limited("check", "-r", "all", "-f", "qcow2", p)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    assert "Repairing snapshot table entry 1 is incomplete" in fix.stderr
    qemu_check_clean(str(p))
    for name in ("one", "two"):
        out = tmp / f"{name}.got"
        qemu_img("convert", "-l", name, "-O", "raw", p, out)
        assert out.read_bytes() == want[name], name
    e = Tables(str(p))
    with open(p, "rb") as f:
        f.seek(e.snap(1) + 36)
        assert struct.unpack(">I", f.read(4))[0] >= 16
