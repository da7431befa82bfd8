"""qcow2 check and repair, with qemu-img check as the oracle.

Each damaged image is made once (by a tiny qcow2 editor below) and copied:
qemu-img checks/repairs one copy, imgtool the other, and the counters,
exit codes and the repaired result are compared.
"""
import json
import os
import shutil
import struct

import pytest

from conftest import imgtool, qemu_img, qemu_io, run, IMGTOOL

MiB = 1 << 20


class Q2:
    """Just enough of qcow2 to damage an image on purpose (16-bit
    refcounts, standard L2 entries)."""

    def __init__(self, path):
        self.path = path
        h = self.rd(0, 104)
        (self.magic, self.version, _, _, self.cluster_bits, self.size, _,
         self.l1_size, self.l1_off, self.rt_off, self.rt_clusters,
         self.nb_snap, self.snap_off) = struct.unpack(">IIQIIQIIQQIIQ", h[:72])
        self.incompat, = struct.unpack(">Q", h[72:80])
        self.refcount_order = struct.unpack(">I", h[96:100])[0] \
            if self.version >= 3 else 4
        self.cs = 1 << self.cluster_bits

    def rd(self, off, n):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n)

    def wr(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def u64(self, off):
        return struct.unpack(">Q", self.rd(off, 8))[0]

    def put64(self, off, v):
        self.wr(off, struct.pack(">Q", v))

    def l1(self, i):
        return self.u64(self.l1_off + 8 * i)

    def l2_entry_off(self, guest):
        per = self.cs // 8
        ci = guest // self.cs
        l2 = self.l1(ci // per) & 0x00fffffffffffe00
        assert l2, "no L2 table there"
        return l2 + 8 * (ci % per)

    def l2(self, guest):
        return self.u64(self.l2_entry_off(guest))

    def set_l2(self, guest, v):
        self.put64(self.l2_entry_off(guest), v)

    def _rc_loc(self, cl):
        assert self.refcount_order == 4
        per = self.cs * 8 // 16
        blk = self.u64(self.rt_off + 8 * (cl // per))
        assert blk, "no refcount block there"
        return blk + 2 * (cl % per)

    def refcount(self, cl):
        return struct.unpack(">H", self.rd(self._rc_loc(cl), 2))[0]

    def set_refcount(self, cl, v):
        self.wr(self._rc_loc(cl), struct.pack(">H", v))

    def set_incompat(self, bits):
        self.wr(72, struct.pack(">Q", bits))
        self.incompat = bits

    def nb_file_clusters(self):
        return (os.path.getsize(self.path) + self.cs - 1) // self.cs


def check(tool, path, *args):
    """(exit code, JSON without filename or None, stderr)."""
    p = run([tool, "check", "--output=json", "-f", "qcow2", *args, path],
            check=False, timeout=60)
    j = None
    if p.stdout.strip():
        j = json.loads(p.stdout)
        j.pop("filename", None)
    return p.returncode, j, p.stderr


def both(path, tmp, *args):
    """Runs qemu-img and imgtool check on two copies of path."""
    q = tmp / ("q-" + os.path.basename(path))
    m = tmp / ("m-" + os.path.basename(path))
    shutil.copy(path, q)
    shutil.copy(path, m)
    return check("qemu-img", q, *args), check(IMGTOOL, m, *args), q, m


def base_image(tmp, name="base.qcow2", opts=None):
    """1 MiB of pattern at 0 and 64 KiB at 10 MiB in a 64 MiB image."""
    p = tmp / name
    args = ["create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    qemu_img(*args, p, "64M")
    qemu_io("-c", "write -q -P 1 0 1M", "-c", "write -q -P 2 10M 64k", p)
    return p


# ---------------------------------------------------------------------
# Clean images


def _mk_plain(p):
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")


def _mk_data(p):
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_io("-c", "write -q -P 7 0 3M", "-c", "write -q -z 8M 1M",
            "-c", "write -q -P 8 63M 1M", p)


def _mk_compressed(p):
    qemu_img("create", "-q", "-f", "qcow2", p, "16M")
    qemu_io("-c", "write -q -c -P 3 0 64k", "-c", "write -q -c -P 4 64k 64k",
            "-c", "write -q -P 5 128k 128k", p)


def _mk_snapshot(p):
    _mk_data(p)
    qemu_img("snapshot", "-c", "s1", p)
    qemu_io("-c", "write -q -P 9 1M 2M", p)
    qemu_img("snapshot", "-c", "s2", p)
    qemu_io("-c", "write -q -P 10 0 64k", p)


def _mk_opts(opts, size="64M"):
    def mk(p):
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, p, size)
        qemu_io("-c", "write -q -P 7 0 3M", "-c", "write -q -P 8 5M 100k",
                "-c", "write -q -z 9M 64k", p)
    return mk


def _mk_prealloc(p):
    qemu_img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
             p, "8M")


def _mk_bitmaps(p):
    _mk_data(p)
    qemu_img("bitmap", "--add", p, "b1")
    qemu_img("bitmap", "--add", "-g", "512", p, "b2")
    qemu_io("-c", "write -q -P 3 20M 1M", p)


CLEAN = {
    "empty": _mk_plain,
    "data": _mk_data,
    "compressed": _mk_compressed,
    "snapshots": _mk_snapshot,
    "v2": _mk_opts("compat=0.10"),
    "c512": _mk_opts("cluster_size=512", "16M"),
    "c2M": _mk_opts("cluster_size=2M", "64M"),
    "rc1": _mk_opts("refcount_bits=1"),
    "rc64": _mk_opts("refcount_bits=64"),
    "extl2": _mk_opts("extended_l2=on,cluster_size=128k"),
    "lazy": _mk_opts("lazy_refcounts=on"),
    "prealloc": _mk_prealloc,
    "bitmaps": _mk_bitmaps,
}


@pytest.mark.parametrize("kind", sorted(CLEAN))
def test_clean_qemu_made_same_json(tmp, kind):
    p = tmp / f"{kind}.qcow2"
    CLEAN[kind](p)
    (qrc, qj, _), (mrc, mj, merr), _, _ = both(p, tmp)
    assert qrc == 0
    assert mrc == 0, merr
    assert mj == qj
    assert merr == ""


def test_clean_human_output_matches(tmp):
    p = tmp / "h.qcow2"
    _mk_compressed(p)
    q = qemu_img("check", p)
    m = imgtool("check", p)
    assert m.stdout == q.stdout
    assert "No errors were found on the image." in m.stdout


def test_clean_imgtool_made(tmp):
    p = tmp / "made.qcow2"
    imgtool("create", "-q", "-f", "qcow2", p, "32M")
    imgtool("io", "-c", "write -P 5 0 1M", "-c", "write -P 6 20M 64k", p)
    (qrc, qj, qerr), (mrc, mj, merr), _, _ = both(p, tmp)
    assert qrc == 0, qerr
    assert mrc == 0, merr
    assert mj == qj


def test_raw_has_no_check(tmp):
    p = tmp / "x.raw"
    p.write_bytes(b"\0" * 65536)
    q = qemu_img("check", "-f", "raw", p, check=False)
    m = imgtool("check", "-f", "raw", p, check=False)
    assert q.returncode == 63
    assert m.returncode == 63
    assert m.stderr.startswith("imgtool: ")


# ---------------------------------------------------------------------
# Damage, the same on both copies


def dmg_leak_data(q):
    q.set_refcount((q.l2(0) & 0x00fffffffffffe00) // q.cs, 2)


def dmg_leak_free(q):
    # Two clusters past the used area inside the file, marked in use.
    n = q.nb_file_clusters()
    with open(q.path, "r+b") as f:
        f.truncate((n + 2) * q.cs)
    q.set_refcount(n, 1)
    q.set_refcount(n + 1, 3)


def dmg_refcount_zero(q):
    q.set_refcount((q.l2(64 << 10) & 0x00fffffffffffe00) // q.cs, 0)


def dmg_refcount_low(q):
    # A cluster shared by two entries but counted once.
    q.set_l2(10 * MiB, (1 << 63) | (q.l2(0) & 0x00fffffffffffe00))


def dmg_l2_past_eof(q):
    q.set_l2(0, (1 << 63) | (100 * q.cs))


def dmg_l2_past_eof_nocopied(q):
    q.set_l2(0, 100 * q.cs)


def dmg_l2_unaligned(q):
    q.set_l2(0, q.l2(0) | 0x200)


def dmg_l2_unaligned_zero(q):
    q.set_l2(0, q.l2(0) | 0x200 | 1)


def dmg_reftable_past_eof(q):
    q.put64(q.rt_off, 300 * q.cs)


def dmg_refblock_shared(q):
    q.put64(q.rt_off, q.l2(0) & 0x00fffffffffffe00)


def dmg_reftable_reserved(q):
    # Reserved bit 0 of an empty refcount table entry (issue 17's image):
    # qemu-img reports it and rebuilds the refcounts.
    q.put64(q.rt_off + 8, 1)


def dmg_copied_missing(q):
    q.set_l2(64 << 10, q.l2(64 << 10) & ~(1 << 63))
    q.put64(q.l1_off, q.l1(0) & ~(1 << 63))


DAMAGE = {
    "leak_data": dmg_leak_data,
    "leak_free": dmg_leak_free,
    "refcount_zero": dmg_refcount_zero,
    "refcount_low": dmg_refcount_low,
    "l2_past_eof": dmg_l2_past_eof,
    "l2_past_eof_nocopied": dmg_l2_past_eof_nocopied,
    "l2_unaligned": dmg_l2_unaligned,
    "l2_unaligned_zero": dmg_l2_unaligned_zero,
    "reftable_past_eof": dmg_reftable_past_eof,
    "refblock_shared": dmg_refblock_shared,
    "copied_missing": dmg_copied_missing,
    "reftable_reserved": dmg_reftable_reserved,
}

# After -r all, qemu-img check on the result is clean for these (the rest
# hold damage that no repair can undo, e.g. data that is not in the file).
REPAIRABLE = {"leak_data", "leak_free", "refcount_zero", "refcount_low",
              "l2_unaligned_zero", "reftable_past_eof", "refblock_shared",
              "copied_missing", "reftable_reserved"}
# Repairs whose damage never touched guest data.
DATA_INTACT = {"leak_data", "leak_free", "refcount_zero", "reftable_past_eof",
               "refblock_shared", "copied_missing", "reftable_reserved"}
# QEMU counts these repairs differently (it grows the file to reach a
# refcount block past its end instead of rebuilding): only the outcome is
# compared.
COUNTS_DIFFER_ON_REPAIR = {"reftable_past_eof"}
# Damage qemu-img leaves but imgtool's -r all repairs without changing
# what the guest reads: a data cluster wholly past the end of the file
# reads as zeroes, and becomes a zero cluster.
REPAIRED_BEYOND_QEMU = {"l2_past_eof", "l2_past_eof_nocopied"}


def damaged(tmp, kind):
    p = base_image(tmp, f"{kind}.qcow2")
    orig = tmp / f"{kind}.orig.qcow2"
    shutil.copy(p, orig)
    DAMAGE[kind](Q2(str(p)))
    return p, orig


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_detected_like_qemu(tmp, kind):
    p, _ = damaged(tmp, kind)
    (qrc, qj, qerr), (mrc, mj, merr), _, _ = both(p, tmp)
    assert qrc in (2, 3), qerr
    assert mrc == qrc, merr
    assert mj == qj
    # Every complaint is one of qemu-img's kinds of line.
    assert merr
    for line in merr.splitlines():
        assert line.startswith(("ERROR", "Leaked cluster", "Can't get")), line


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_repair_leaks_like_qemu(tmp, kind):
    p, _ = damaged(tmp, kind)
    (qrc, qj, qerr), (mrc, mj, merr), q, m = both(p, tmp, "-r", "leaks")
    assert mrc == qrc, f"qemu: {qerr}\nimgtool: {merr}"
    assert mj == qj
    if qrc == 1:
        assert merr.splitlines()[-1].startswith("imgtool: Check failed: ")
    # What remains is what qemu-img sees afterwards on either copy.
    assert check("qemu-img", m)[:2] == check("qemu-img", q)[:2]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_repair_all_like_qemu(tmp, kind):
    p, orig = damaged(tmp, kind)
    (qrc, qj, qerr), (mrc, mj, merr), q, m = both(p, tmp, "-r", "all")
    if kind in REPAIRED_BEYOND_QEMU:
        assert (qrc, mrc) == (2, 0), f"qemu: {qerr}\nimgtool: {merr}"
        assert check("qemu-img", m)[0] == 0
        assert qemu_img("compare", p, m, check=False).returncode == 0
        return
    assert mrc == qrc, f"qemu: {qerr}\nimgtool: {merr}"
    if kind in COUNTS_DIFFER_ON_REPAIR:
        assert mj.get("corruptions-fixed", 0) > 0
        for k in ("corruptions", "leaks", "check-errors"):
            assert mj.get(k, 0) == qj.get(k, 0), k
    else:
        assert mj == qj
    after_m = check("qemu-img", m)
    after_q = check("qemu-img", q)
    if kind in REPAIRABLE:
        assert after_m[0] == 0, after_m[2]
        assert after_q[0] == 0
    else:
        assert after_m[0] == after_q[0]
        assert after_m[1] == after_q[1]
    if kind in DATA_INTACT:
        assert qemu_img("compare", orig, m, check=False).returncode == 0
    # imgtool agrees with itself afterwards.
    assert check(IMGTOOL, m)[0] == after_m[0]


def test_repair_keeps_image_usable(tmp):
    """After a rebuild the image takes new writes without new damage."""
    p, orig = damaged(tmp, "refcount_zero")
    rc, j, err = check(IMGTOOL, p, "-r", "all")
    assert rc == 0, err
    qemu_io("-c", "write -q -P 11 30M 2M", "-c", "write -q -P 12 0 64k", p)
    assert check("qemu-img", p)[0] == 0
    assert qemu_img("compare", "-f", "qcow2", p, orig,
                    check=False).returncode == 1   # changed by the writes
    r = qemu_io("-c", "read -q -P 11 30M 2M", "-c", "read -q -P 1 64k 960k",
                p)
    assert "Pattern verification failed" not in r.stdout


def test_repair_clears_dirty_and_corrupt_bits(tmp):
    p = base_image(tmp, "bits.qcow2", "lazy_refcounts=on")
    q = Q2(str(p))
    dmg_leak_free(q)
    q.set_incompat(q.incompat | 0x3)          # dirty + corrupt
    rc, j, err = check(IMGTOOL, p, "-r", "all")
    assert rc == 0, err
    assert j.get("leaks-fixed") == 2
    assert Q2(str(p)).incompat & 0x3 == 0
    info = json.loads(qemu_img("info", "--output=json", p).stdout)
    assert info["format-specific"]["data"]["corrupt"] is False
    assert "dirty-flag" not in info or info["dirty-flag"] is False
    assert check("qemu-img", p)[0] == 0


def test_check_without_repair_leaves_bits(tmp):
    p = base_image(tmp, "bits2.qcow2")
    q = Q2(str(p))
    q.set_incompat(q.incompat | 0x2)          # corrupt
    rc, _, err = check(IMGTOOL, p)
    assert rc == 0, err
    assert Q2(str(p)).incompat & 0x2


def test_leaks_repair_only_leaves_corruption(tmp):
    """-r leaks must not touch a corruption, and reports it afterwards."""
    p, _ = damaged(tmp, "refcount_low")     # also orphans one cluster
    dmg_leak_free(Q2(str(p)))
    rc, j, err = check(IMGTOOL, p, "-r", "leaks")
    assert rc == 2
    assert j["leaks-fixed"] == 3
    assert j["corruptions"] >= 1
    assert "leaks" not in j


def test_dirty_lazy_image_repaired_on_open(tmp):
    """A lazy-refcounts image left dirty (a refcount update lost in a
    crash) is repaired when opened for writing."""
    p = base_image(tmp, "lazy.qcow2", "lazy_refcounts=on")
    orig = tmp / "lazy.orig.qcow2"
    shutil.copy(p, orig)
    q = Q2(str(p))
    dmg_refcount_zero(q)
    q.set_incompat(q.incompat | 1)
    assert check("qemu-img", p)[0] == 2
    imgtool("io", "-c", "write -P 13 40M 64k", p)
    rc, j, err = check("qemu-img", p)
    assert rc == 0, err
    qemu_io("-c", "write -q -P 13 40M 64k", orig)
    assert qemu_img("compare", orig, p, check=False).returncode == 0


def test_reftable_reserved_bits_reported_like_qemu(tmp):
    """Issue 17: a reserved bit in refcount table entry 1 (no block) was
    "No errors" and survived -r all.  Now the same line and exit code as
    qemu-img, and -r all rebuilds the refcounts as qemu-img does, listing
    the old table and block it frees in qemu-img's "Repairing cluster"
    lines."""
    p = tmp / "r.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    q = Q2(str(p))
    q.wr(q.rt_off + 15, b"\x01")
    m = tmp / "m.qcow2"
    shutil.copy(p, m)
    mine = run([IMGTOOL, "check", m], check=False)
    ref = qemu_img("check", p, check=False)
    assert (mine.returncode, mine.stdout, mine.stderr) == \
        (2, ref.stdout, ref.stderr)
    assert "ERROR refcount table entry 1 has reserved bits set\n" == \
        mine.stderr
    mine = run([IMGTOOL, "check", "-r", "all", m], check=False)
    ref = qemu_img("check", "-r", "all", p, check=False)
    assert (mine.returncode, mine.stdout) == (0, ref.stdout)
    # the old table and block freed by the rebuild are listed as qemu-img
    # lists them (issue 15)
    assert "Repairing cluster " in ref.stderr
    assert mine.stderr == ref.stderr
    for img in (m, p):
        assert check("qemu-img", img)[0] == 0
        assert Q2(str(img)).u64(Q2(str(img)).rt_off + 8) == 0
    assert check(IMGTOOL, m)[0] == 0


def test_reftable_reserved_bits_on_a_live_block(tmp):
    """Reserved bits in an entry that names a refcount block: both tools
    report the entry (exit 2) and read the refcounts through its offset
    bits.  A deliberate difference: qemu-img leaves that block uncounted,
    so it also calls it leaked, and its -r all then places the new block
    on the live one, marks the image corrupt and fails ("Check failed",
    exit 1).  imgtool counts the block (the refcounts live in it), and
    its -r all rebuilds cleanly."""
    p = base_image(tmp, "live.qcow2")
    q = Q2(str(p))
    q.put64(q.rt_off, q.u64(q.rt_off) | 1)
    (qrc, qj, qerr), (mrc, mj, merr), qq, m = both(p, tmp)
    assert (qrc, mrc) == (2, 2)
    assert qj["corruptions"] == mj["corruptions"] == 1
    assert qj["leaks"] == 1 and mj.get("leaks", 0) == 0
    assert "ERROR refcount table entry 0 has reserved bits set" in qerr
    assert merr == "ERROR refcount table entry 0 has reserved bits set\n"
    mrc, mj, merr = check(IMGTOOL, m, "-r", "all")
    assert mrc == 0, merr
    assert mj["corruptions-fixed"] == 1
    assert check("qemu-img", m)[0] == 0
    assert qemu_img("compare", p, m, check=False).returncode == 0
    qrc, _, qerr = check("qemu-img", qq, "-r", "all")
    assert qrc == 1 and "Check failed" in qerr, qerr
