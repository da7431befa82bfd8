"""A seeded random corrupter of qcow2 images, for differential tests of
`check` against qemu-img check.

It reads the structures of an image (header, L1 and L2 tables, refcount
table and blocks, snapshot table, bitmap directory and bitmap tables) as
qcow2's specification (QEMU's docs/interop/qcow2.txt) lays them out, and
changes one field of one of them the ways damage happens: a bit flipped,
zeroed, pointing at another cluster, past the end of the file, off a
cluster boundary, with reserved bits, or (for counters) one off or huge.
Everything is driven by a random.Random, so a seed names a corruption.
"""
import os
import struct

BITMAPS_EXT = 0x23852875

# Bits of an L1/L2/refcount table entry that hold a host offset.
OFFSET_MASK = 0x00fffffffffffe00
L1_RESERVED = 0x7f000000000001ff
L2_RESERVED = 0x3f000000000001fe
REFT_RESERVED = 0x1ff
BMT_RESERVED = 0xff000000000001fe


class Image:
    """The structures of one qcow2 file, by file offset and width."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        d = self.data
        (self.magic, self.version, self.backing_off, self.backing_size,
         self.cluster_bits, self.size, self.crypt, self.l1_size, self.l1_off,
         self.rt_off, self.rt_clusters, self.nb_snap,
         self.snap_off) = struct.unpack(">IIQIIQIIQQIIQ", d[:72])
        self.cs = 1 << self.cluster_bits
        self.incompat = self.compat = self.autoclear = 0
        self.refcount_order, self.header_len = 4, 72
        if self.version >= 3:
            (self.incompat, self.compat, self.autoclear, self.refcount_order,
             self.header_len) = struct.unpack(">QQQII", d[72:104])
        self.extl2 = bool(self.incompat & 16)
        self.l2_entry = 16 if self.extl2 else 8
        self.bitmap_ext = None      # (offset of the extension data)
        self._read_extensions()

    # -- raw access ---------------------------------------------------
    def u(self, off, width):
        if off < 0 or off + width > len(self.data):
            return None
        return int.from_bytes(self.data[off:off + width], "big")

    def _read_extensions(self):
        off = self.header_len
        for _ in range(64):
            t, ln = self.u(off, 4), self.u(off + 4, 4)
            if t is None or ln is None or t == 0:
                break
            if t == BITMAPS_EXT:
                self.bitmap_ext = off + 8
            off += 8 + (ln + 7) // 8 * 8

    def file_clusters(self):
        return (len(self.data) + self.cs - 1) // self.cs

    # -- locations ----------------------------------------------------
    def header_fields(self):
        """(offset, width) of the header fields worth damaging."""
        f = [(12, 4), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8),
             (48, 8), (56, 4), (60, 4), (64, 8)]
        if self.version >= 3:
            f += [(72, 8), (80, 8), (88, 8), (96, 4), (100, 4)]
        return f

    def l1_entries(self):
        n = min(self.l1_size, 1 << 12)
        return [self.l1_off + 8 * i for i in range(n)
                if self.u(self.l1_off + 8 * i, 8) is not None]

    def l2_tables(self):
        out = []
        for e in self.l1_entries():
            off = self.u(e, 8) & OFFSET_MASK
            if off and off + self.cs <= len(self.data):
                out.append(off)
                if len(out) == 64:     # bounded, whatever the L1 says
                    break
        return out

    def l2_entries(self, used_only=True):
        out = []
        for t in self.l2_tables():
            for i in range(self.cs // self.l2_entry):
                p = t + i * self.l2_entry
                if not used_only or self.u(p, 8) or \
                        (self.extl2 and self.u(p + 8, 8)):
                    out.append(p)
        return out

    def refcount_table_entries(self):
        n = min(self.rt_clusters * self.cs // 8, 1 << 12)
        return [self.rt_off + 8 * i for i in range(n)
                if self.u(self.rt_off + 8 * i, 8) is not None]

    def refcount_blocks(self):
        out = []
        for e in self.refcount_table_entries():
            off = self.u(e, 8) & OFFSET_MASK
            if off and off + self.cs <= len(self.data):
                out.append(off)
        return out

    def snapshot_entries(self):
        """[(entry offset, l1 offset, l1 size, name length ...)] as file
        offsets of each entry's start."""
        out = []
        off = self.snap_off
        for _ in range(min(self.nb_snap, 64)):
            if self.u(off, 8) is None or self.u(off + 40, 1) is None:
                break
            extra = self.u(off + 36, 4)
            idl, nl = self.u(off + 12, 2), self.u(off + 14, 2)
            out.append(off)
            off += (40 + extra + idl + nl + 7) // 8 * 8
        return out

    def bitmap_entries(self):
        if self.bitmap_ext is None:
            return []
        nb = self.u(self.bitmap_ext, 4)
        off = self.u(self.bitmap_ext + 16, 8)
        out = []
        for _ in range(min(nb or 0, 64)):
            if off is None or self.u(off + 24, 1) is None:
                break
            out.append(off)
            nlen, extra = self.u(off + 18, 2), self.u(off + 20, 4)
            off += (24 + extra + nlen + 7) // 8 * 8
        return out

    def bitmap_table_entries(self):
        out = []
        for b in self.bitmap_entries():
            t, n = self.u(b, 8), self.u(b + 8, 4)
            for i in range(min(n, 4096)):
                if self.u(t + 8 * i, 8):
                    out.append(t + 8 * i)
        return out


def _pick_offset(r, img, kind):
    """A host offset of the given kind for a damaged pointer."""
    nc = img.file_clusters()
    if kind == "other":
        return r.randrange(0, max(nc, 1)) * img.cs
    if kind == "past_eof":
        return (nc + r.randrange(1, 1000)) * img.cs
    # unaligned: inside a cluster (512-byte steps are all an entry holds)
    step = r.randrange(1, img.cs // 512) * 512 if img.cs > 512 else 0
    return r.randrange(0, max(nc, 1)) * img.cs + step


def mutate_pointer(r, img, value, reserved):
    """A damaged 64-bit table entry: (new value, what was done)."""
    how = r.choice(["flip", "zero", "other", "past_eof", "unaligned",
                    "reserved", "copied", "flip"])
    if how == "flip":
        return value ^ (1 << r.randrange(64)), how
    if how == "zero":
        return 0, how
    if how == "reserved":
        bits = [b for b in range(64) if reserved >> b & 1]
        return value | (1 << r.choice(bits)), how
    if how == "copied":
        return value ^ (1 << 63), how
    off = _pick_offset(r, img, how)
    return (value & ~OFFSET_MASK) | (off & OFFSET_MASK), how


def mutate_number(r, value, width):
    how = r.choice(["flip", "zero", "max", "plus1", "minus1", "flip"])
    top = (1 << (8 * width)) - 1
    if how == "flip":
        return value ^ (1 << r.randrange(8 * width)), how
    if how == "zero":
        return 0, how
    if how == "max":
        return top, how
    if how == "plus1":
        return min(value + 1, top), how
    return max(value - 1, 0), how


def _refcount_slot(r, img):
    blocks = img.refcount_blocks()
    if not blocks:
        return None
    bits = 1 << img.refcount_order
    b = r.choice(blocks)
    # prefer the used part: clusters of the file
    used = min(img.file_clusters(), img.cs * 8 // bits)
    i = r.randrange(max(used, 1))
    return b, i, bits


def corrupt(path, r):
    """Damages the image at path once, chosen by r; returns a short
    description, or None when the chosen structure is absent."""
    img = Image(path)
    family = r.choice(["header", "l1", "l2", "l2", "reftable", "refblock",
                       "refblock", "snapshot", "bitmap"])
    patch = None            # (offset, width, value)
    what = family
    if family == "header":
        off, w = r.choice(img.header_fields())
        v, how = mutate_number(r, img.u(off, w), w)
        if r.random() < 0.3 and w == 8 and off in (40, 48, 64):
            v, how = mutate_pointer(r, img, img.u(off, w), 0x1ff)
        patch, what = (off, w, v), f"header@{off} {how}"
    elif family in ("l1", "l2", "reftable"):
        locs = {"l1": img.l1_entries, "l2": img.l2_entries,
                "reftable": img.refcount_table_entries}[family]()
        if family != "l1":
            locs = [p for p in locs if img.u(p, 8)] or locs
        if not locs:
            return None
        p = r.choice(locs)
        if family == "l2" and img.extl2 and r.random() < 0.3:
            v, how = mutate_number(r, img.u(p + 8, 8), 8)
            patch, what = (p + 8, 8, v), f"l2 bitmap@{p} {how}"
        else:
            res = {"l1": L1_RESERVED, "l2": L2_RESERVED,
                   "reftable": REFT_RESERVED}[family]
            v, how = mutate_pointer(r, img, img.u(p, 8), res)
            if family == "l2" and r.random() < 0.15:
                v, how = img.u(p, 8) ^ (1 << 62), "compressed-bit"
            patch, what = (p, 8, v), f"{family}@{p} {how}"
    elif family == "refblock":
        slot = _refcount_slot(r, img)
        if not slot:
            return None
        b, i, bits = slot
        top = (1 << bits) - 1
        v = r.choice([0, 0, 1, 2, top, r.randrange(top + 1)])
        if bits >= 8:
            w = bits // 8
            patch = (b + i * w, w, v)
        else:
            byte = b + i * bits // 8
            shift = i * bits % 8
            old = img.u(byte, 1)
            mask = top << shift
            patch = (byte, 1, (old & ~mask) | ((v << shift) & mask))
        what = f"refblock cluster {i} := {v}"
    elif family == "snapshot":
        ents = img.snapshot_entries()
        if not ents:
            return None
        e = r.choice(ents)
        field, w = r.choice([(0, 8), (8, 4), (12, 2), (14, 2), (32, 4),
                             (36, 4), (40, 8), (48, 8)])
        old = img.u(e + field, w)
        if old is None:
            return None
        if field == 0:
            v, how = mutate_pointer(r, img, old, 0x1ff)
        else:
            v, how = mutate_number(r, old, w)
        patch, what = (e + field, w, v), f"snapshot+{field} {how}"
    elif family == "bitmap":
        ents = img.bitmap_entries()
        tabs = img.bitmap_table_entries()
        if not ents:
            return None
        if tabs and r.random() < 0.4:
            p = r.choice(tabs)
            v, how = mutate_pointer(r, img, img.u(p, 8), BMT_RESERVED)
            patch, what = (p, 8, v), f"bitmap table {how}"
        else:
            e = r.choice(ents)
            field, w = r.choice([(0, 8), (8, 4), (12, 4), (16, 1), (17, 1),
                                 (18, 2), (20, 4)])
            old = img.u(e + field, w)
            if field == 0:
                v, how = mutate_pointer(r, img, old, 0x1ff)
            else:
                v, how = mutate_number(r, old, w)
            patch, what = (e + field, w, v), f"bitmap dir+{field} {how}"
    off, w, v = patch
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(int(v).to_bytes(w, "big"))
    return what


def size(path):
    return os.path.getsize(path)
