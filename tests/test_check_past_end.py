"""check -r all on tables that lie past the end of the file or over the
header, where qemu-img check gives the same verdict but its own -r all
either cannot repair (an L1 table past the end: it grows the file to
reach it) or repairs only by accident (on an image with persistent
bitmaps, opening it read-write rewrites the header and the bitmap
directory, which drops a broken snapshot table and empties a bitmap
whose table was past the end).  Found by the differential check test
(tests/test_check_differential.py, seeds 815, 1054, 1119, 1374, 1539,
2419 of 3000).

Each case: the verdict (exit code) equals qemu-img's; after imgtool's
-r all, qemu-img check finds the image clean and the guest reads what it
read before the repair (past the end of the file, reads are zeroes).
Bitmaps that lost bits come back with every bit set: a dirty bitmap may
over-approximate, never miss a change."""
import json
import shutil
import struct

import pytest

from conftest import IMGTOOL, qemu_img, qemu_io, run


def check(tool, path, *args):
    p = run([tool, "check", "--output=json", "-f", "qcow2", *args, path],
            check=False, timeout=60)
    return p.returncode, p.stderr


def rd(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def wr(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def header(path):
    h = rd(path, 0, 104)
    (_, _, _, _, cbits, size, _, l1_size, l1_off, rt_off, rt_cl, nb_snap,
     snap_off) = struct.unpack(">IIQIIQIIQQIIQ", h[:72])
    return dict(cs=1 << cbits, size=size, l1_size=l1_size, l1_off=l1_off,
                nb_snap=nb_snap, snap_off=snap_off,
                hlen=struct.unpack(">I", h[100:104])[0])


def bitmap_dir(path):
    """[(name, table offset, table size, position of the entry)]."""
    h = header(path)
    d = open(path, "rb").read()
    off = h["hlen"]
    while True:
        mag, ln = struct.unpack(">II", d[off:off + 8])
        if mag == 0:
            return []
        if mag == 0x23852875:
            nb, _, _, doff = struct.unpack(">IIQQ", d[off + 8:off + 32])
            out, p = [], doff
            for _ in range(nb):
                to, ts, _, _, _, ns, es = struct.unpack(">QIIBBHI",
                                                        d[p:p + 24])
                out.append((d[p + 24 + es:p + 24 + es + ns].decode(), to, ts,
                            p))
                p += (24 + es + ns + 7) & ~7
            return out
        off += 8 + ((ln + 7) & ~7)


def table(path, off, n):
    return list(struct.unpack(f">{n}Q", rd(path, off, 8 * n)))


def damaged_pair(tmp, make, damage):
    """The image qemu-img made (before the damage), and two copies of it
    damaged."""
    p = tmp / "img.qcow2"
    make(p)
    orig = tmp / "orig.qcow2"
    shutil.copy(p, orig)
    damage(p)
    q, m = tmp / "q.qcow2", tmp / "m.qcow2"
    shutil.copy(p, q)
    shutil.copy(p, m)
    return orig, q, m


def with_bitmaps(p):
    qemu_img("create", "-q", "-f", "qcow2", p, "16M")
    qemu_io("-c", "write -q -P 7 0 2M", p)
    qemu_img("bitmap", "--add", p, "b1")
    qemu_img("bitmap", "--add", "-g", "4096", p, "b2")
    qemu_io("-c", "write -q -P 3 5M 1M", p)


def repaired_clean(m, before):
    """imgtool -r all, then qemu-img finds m clean and reading unchanged."""
    rc, err = check(IMGTOOL, m, "-r", "all")
    assert rc == 0, err
    qrc, qerr = check("qemu-img", m)
    assert qrc == 0, qerr
    assert qemu_img("compare", "-f", "qcow2", "-F", "qcow2", before, m,
                    check=False).returncode == 0
    return err


def test_l1_table_past_the_end(tmp):
    """Seed 1054: the L1 offset moved past the end of the file.  qemu-img's
    -r all grows the file to 4 GiB to reach it."""
    def make(p):
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", p,
                 "8M")
        qemu_io("-c", "write -q -P 7 0 3M", p)

    p, q, m = damaged_pair(tmp, make, lambda p: wr(
        p, 40, struct.pack(">Q", 0x2003000)))
    assert check("qemu-img", q)[0] == check(IMGTOOL, m)[0] == 2
    # what the damaged image reads: nothing (zeroes past the end)
    blank = tmp / "blank.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", blank, "8M")
    err = repaired_clean(m, blank)
    assert "Repairing l1_offset=2003000: L1 table is past the end of the " \
        "file; an empty table replaces it" in err
    h = header(m)
    assert h["l1_off"] < m.stat().st_size
    # the repaired image takes writes like any other
    qemu_io("-c", "write -q -P 9 1M 64k", m)
    assert check("qemu-img", m)[0] == 0
    assert qemu_io("-c", "read -q -P 9 1M 64k", m).returncode == 0


def test_bitmap_table_past_the_end(tmp):
    """Seed 1539: a bitmap's table offset moved past the end.  The bitmap
    stays, with every bit set."""
    def damage(p):
        e = [b for b in bitmap_dir(p) if b[0] == "b2"][0]
        wr(p, e[3], struct.pack(">Q", 0x2560000))

    p, q, m = damaged_pair(tmp, with_bitmaps, damage)
    assert check("qemu-img", q)[0] == check(IMGTOOL, m)[0] == 2
    err = repaired_clean(m, p)
    assert "Repairing bitmap 'b2': its table is past the end of the file; " \
        "a table with every bit set replaces it" in err
    bms = {b[0]: b for b in bitmap_dir(m)}
    assert set(bms) == {"b1", "b2"}
    _, off, n, _ = bms["b2"]
    assert off < m.stat().st_size
    assert table(m, off, n) == [1] * n
    info = json.loads(qemu_img("info", "--output=json", m).stdout)
    names = [b["name"] for b in info["format-specific"]["data"]["bitmaps"]]
    assert names == ["b1", "b2"]


def test_bitmap_cluster_past_the_end(tmp):
    """Seed 1374: an entry of a bitmap table names a cluster past the
    end; that entry becomes "all ones", the others stay."""
    def damage(p):
        _, off, n, _ = [b for b in bitmap_dir(p) if b[0] == "b2"][0]
        t = table(p, off, n)
        assert t[0] > 1, "b2 has a data cluster to damage"
        wr(p, off, struct.pack(">Q", 0x4260000))

    p, q, m = damaged_pair(tmp, with_bitmaps, damage)
    assert check("qemu-img", q)[0] == check(IMGTOOL, m)[0] == 2
    before = {b[0]: table(p, b[1], b[2]) for b in bitmap_dir(p)}
    err = repaired_clean(m, p)
    assert "Repairing bitmap data offset 0x4260000: the cluster is past " \
        "the end of the file; its bits are all set" in err
    after = {b[0]: table(m, b[1], b[2]) for b in bitmap_dir(m)}
    assert after["b2"][0] == 1
    assert after["b2"][1:] == before["b2"][1:]


@pytest.mark.parametrize("nb", [3, 0xffffffff])
def test_snapshot_table_over_the_header(tmp, nb):
    """Seed 815: nb_snapshots set on an image whose table offset is 0, so
    the "entries" are the header's bytes.  -r all drops the table."""
    def damage(p):
        wr(p, 60, struct.pack(">I", nb))

    p, q, m = damaged_pair(tmp, with_bitmaps, damage)
    assert check("qemu-img", q)[0] == check(IMGTOOL, m)[0]
    err = repaired_clean(m, p)
    assert f"Repairing the snapshot table: the table overlaps the image " \
        f"header; its {nb} entries are dropped" in err
    h = header(m)
    assert (h["nb_snap"], h["snap_off"]) == (0, 0)


def test_snapshot_offset_invalid_without_snapshots(tmp):
    """Seed 2419: an unaligned table offset with no snapshots: check fails
    as qemu-img's does; -r all clears the offset (nothing is lost)."""
    def damage(p):
        wr(p, 64, struct.pack(">Q", 0xffffffffffffffff))

    p, q, m = damaged_pair(tmp, with_bitmaps, damage)
    assert check("qemu-img", q)[0] == check(IMGTOOL, m)[0] == 1
    err = repaired_clean(m, p)
    assert "Repairing the snapshot table offset: snapshot table offset " \
        "invalid with no snapshots; it is cleared" in err
    assert header(m)["snap_off"] == 0


def test_snapshot_offset_invalid_with_snapshots_still_fails(tmp):
    """With snapshots, an unaligned offset leaves nothing saying where
    they are: check -r all still refuses, rather than free their
    clusters as leaks."""
    def make(p):
        qemu_img("create", "-q", "-f", "qcow2", p, "16M")
        qemu_io("-c", "write -q -P 7 0 2M", p)
        qemu_img("snapshot", "-c", "s1", p)
        qemu_io("-c", "write -q -P 8 0 1M", p)

    p, q, m = damaged_pair(tmp, make, lambda p: wr(
        p, 64, struct.pack(">Q", header(p)["snap_off"] + 512)))
    assert check("qemu-img", q)[0] == check(IMGTOOL, m)[0] == 1
    rc, err = check(IMGTOOL, m, "-r", "all")
    assert rc == 1 and "snapshot table offset invalid" in err, err
    assert rd(m, 0, 1 << 20) == rd(q, 0, 1 << 20)
