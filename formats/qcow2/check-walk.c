/*
 * check-walk.c - counting the references the image's metadata holds:
 * the header, the active and snapshot L1/L2 tables and the data they map,
 * the snapshot table, the refcount table and blocks, the encryption
 * header, and the bitmap directory, tables and data.
 *
 * Every offset read from the image is checked before it is followed or
 * counted; what cannot be right is reported (in qemu-img's words) and
 * left uncounted or counted so that nothing it might cover is freed.
 * With -r, damage that a rewrite of the entry alone settles (reserved
 * bits, tables or data past the end of the file, misaligned preallocated
 * clusters, COPIED on compressed clusters, an unparseable tail of the
 * snapshot table) is repaired while walking; L1 and L2 entries only where
 * check_may_rewrite allows it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/check-int.h"

/* Metadata we read whole into memory: beyond these sizes an entry is
 * treated as corrupt instead of trusted. */
#define MAX_BITMAP_DIR_BYTES   (64u * 1024 * 1024)
#define MAX_BITMAP_TABLE_BYTES (64u * 1024 * 1024)

/* Reads a table of len bytes at off whole into *out (malloc'd): 1 when
 * read, 0 when it could not be (reported as an I/O error `where`, a
 * check error: check goes on without it), or -ENOMEM. */
static int read_whole(Check *c, uint64_t off, uint64_t len,
                      const char *where, uint8_t **out)
{
    uint8_t *buf = malloc(len);

    if (!buf) {
        return -ENOMEM;
    }
    if (check_read_file(c, off, len, buf) < 0) {
        check_say(c, "ERROR: I/O error %s", where);
        c->res->check_errors++;
        free(buf);
        return 0;
    }
    *out = buf;
    return 1;
}

static int repair_l2_entry(Check *c, uint64_t l2_off, uint64_t idx,
                           uint64_t entry, uint64_t bitmap)
{
    if (!check_may_rewrite(c, l2_off, c->cs, l2_off)) {
        return -EPERM;
    }
    qcow2_l2_set(c->s, c->l2buf, idx, entry, bitmap);
    return qcow2_write_l2_table(c->s, l2_off, c->l2buf);
}

/* One L2 table, already in c->l2buf. */
static int count_l2(Check *c, uint64_t l2_off, bool active)
{
    Qcow2State *s = c->s;
    BlockCheckResult *res = c->res;
    int ret;

    /* Contiguity is judged within one L2 table, as qemu-img does: the
     * tables interleaved with the data they map are not fragmentation. */
    c->next_contig = 0;
    for (uint64_t j = 0; j < s->l2_entries; j++) {
        uint64_t e = qcow2_l2_get_entry(s, c->l2buf, j);
        uint64_t b = s->extended_l2 ? qcow2_l2_get_bitmap(s, c->l2buf, j) : 0;

        if (e & QCOW2_OFLAG_COMPRESSED) {
            if (e & QCOW2_OFLAG_COPIED) {
                /* Compressed clusters may be shared and are never
                 * written in place: COPIED is meaningless there, and a
                 * writer trusting it would overwrite shared data. */
                check_say(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must "
                          "never be set for compressed clusters",
                          e & s->coffset_mask);
                res->corruptions++;
                e &= ~QCOW2_OFLAG_COPIED;
                if ((c->fix & BLOCK_FIX_ERRORS) &&
                    repair_l2_entry(c, l2_off, j, e, b) == 0) {
                    res->corruptions--;
                    res->corruptions_fixed++;
                }
            }
            if (s->has_data_file) {
                check_say(c, "ERROR compressed cluster %" PRIu64 " with data "
                          "file, entry=0x%" PRIx64, j, e);
                res->corruptions++;
                continue;
            }
            if (s->extended_l2 && b) {
                check_say(c, "ERROR compressed cluster %" PRIu64 " with "
                          "non-zero subcluster allocation bitmap, "
                          "entry=0x%" PRIx64, j, e);
                res->corruptions++;
                continue;
            }
            if (active) {
                /* Compressed clusters share sectors, so reading them is
                 * never sequential: they count as fragmented. */
                res->allocated_clusters++;
                res->compressed_clusters++;
                res->fragmented_clusters++;
            }
            uint64_t coff = e & s->coffset_mask;
            uint64_t nsect = ((e >> s->csize_shift) & s->csize_mask) + 1;
            ret = check_count_region(c, coff & ~511ull, nsect * 512);
            if (ret < 0) {
                return ret;
            }
            continue;
        }

        if (e & QCOW2_L2E_STD_RESERVED_MASK) {
            /* The mapping is in the other bits: clearing these keeps
             * it (qemu-img reports them and leaves them). */
            if ((c->fix & BLOCK_FIX_ERRORS) &&
                repair_l2_entry(c, l2_off, j,
                                e & ~QCOW2_L2E_STD_RESERVED_MASK, b) == 0) {
                check_say(c, "Repairing l2 entry with reserved bits set: %"
                          PRIx64, e);
                res->corruptions_fixed++;
                e &= ~QCOW2_L2E_STD_RESERVED_MASK;
            } else {
                check_say(c, "ERROR found l2 entry with reserved bits set: %"
                          PRIx64, e);
                res->corruptions++;
            }
        }
        uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
        if (off && off >= c->file_len && !s->has_data_file &&
            (c->fix & BLOCK_FIX_ERRORS) && off % c->cs == 0 &&
            (s->version >= 3 || !c->n->backing_file)) {
            /* A data cluster wholly past the end of the file reads as
             * zeroes: a zero cluster (or, in a v2 image without a
             * backing file, an unallocated one) says the same and
             * points nowhere.  qemu-img leaves it a corruption. */
            uint64_t ne = s->version >= 3 && !s->extended_l2
                          ? QCOW2_OFLAG_ZERO : 0;
            uint64_t nb = s->extended_l2 ? QCOW2_L2B_ALL_ZERO : 0;
            if (repair_l2_entry(c, l2_off, j, ne, nb) == 0) {
                check_say(c, "Repairing offset=%" PRIx64 ": Data cluster is "
                          "past the end of the file; it now reads as zeroes, "
                          "as it "
                          "did", off);
                res->corruptions_fixed++;
                continue;
            }
        }
        bool allocated = off != 0 ||
                         (s->has_data_file && (e & QCOW2_OFLAG_COPIED));
        if (!allocated) {
            if (b & QCOW2_L2B_ALLOC_MASK) {
                /* no host cluster to read the allocated subclusters
                 * from */
                check_say(c, "ERROR: Unallocated cluster has non-zero "
                          "subcluster allocation map");
                res->corruptions++;
            }
            continue;
        }
        if ((b >> 32) & b) {
            /* a subcluster both allocated and zero */
            check_say(c, "ERROR offset=%" PRIx64 ": Allocated cluster has "
                      "corrupted subcluster allocation bitmap", off);
            res->corruptions++;
        }
        if (active) {
            res->allocated_clusters++;
            if (c->next_contig && off != c->next_contig) {
                res->fragmented_clusters++;
            }
            c->next_contig = off + c->cs;
        }
        if (off % c->cs) {
            bool has_data = s->extended_l2 ? (b & QCOW2_L2B_ALLOC_MASK) != 0
                                           : !(e & QCOW2_OFLAG_ZERO);
            if (!has_data) {
                bool fixing = c->fix & BLOCK_FIX_ERRORS;
                check_say(c, "%s offset=%" PRIx64 ": Preallocated cluster is "
                          "not properly aligned; L2 entry corrupted.",
                          fixing ? "Repairing" : "ERROR", off);
                if (fixing) {
                    /* Reads as zeroes either way: drop the bad offset. */
                    ret = s->extended_l2
                              ? repair_l2_entry(c, l2_off, j, 0, b)
                              : repair_l2_entry(c, l2_off, j,
                                                QCOW2_OFLAG_ZERO, 0);
                    if (ret == 0) {
                        res->corruptions_fixed++;
                        continue;
                    }
                    check_say(c, "ERROR: could not repair the L2 entry: %s",
                              strerror(-ret));
                    res->check_errors++;
                }
                res->corruptions++;
            } else {
                check_say(c, "ERROR offset=%" PRIx64 ": Data cluster is not "
                          "properly aligned; L2 entry corrupted.", off);
                res->corruptions++;
            }
        }
        if (s->has_data_file) {
            continue;   /* data clusters live in the data file */
        }
        ret = check_count_region(c, off, c->cs);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Rewrites entry i of the L1 table at l1_off (the active one through
 * the driver's copy, so both stay the same). */
static int repair_l1_entry(Check *c, uint64_t l1_off, bool active,
                           uint32_t i, uint64_t e)
{
    Qcow2State *s = c->s;
    if (!check_may_rewrite(c, l1_off + 8 * (uint64_t)i, 8, l1_off)) {
        return -EPERM;
    }
    if (active && l1_off == s->l1_table_offset && i < s->l1_size) {
        uint64_t old = s->l1_table[i];
        s->l1_table[i] = e;
        int ret = qcow2_write_l1(s, i, 1);
        if (ret < 0) {
            s->l1_table[i] = old;
        }
        return ret;
    }
    uint8_t b[8];
    qcow2_put_be64(b, e);
    int ret = block_pwrite(block_file(c->n), l1_off + 8 * (uint64_t)i, 8, b,
                           0);
    return ret < 0 ? ret : 0;
}

static int count_l1(Check *c, uint64_t l1_off, uint32_t l1_size, bool active)
{
    uint64_t bytes = (uint64_t)l1_size * 8;
    uint8_t *l1;
    int ret;

    ret = check_count_region(c, l1_off, bytes);
    if (ret < 0 || l1_size == 0) {
        return ret < 0 ? ret : 0;
    }
    ret = read_whole(c, l1_off, bytes, "in check_refcounts_l1", &l1);
    if (ret <= 0) {
        return ret;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t e = qcow2_be64(l1 + 8 * (uint64_t)i);
        uint64_t l2_off = e & QCOW2_L1E_OFFSET_MASK;

        if (e & QCOW2_L1E_RESERVED_MASK) {
            if ((c->fix & BLOCK_FIX_ERRORS) &&
                repair_l1_entry(c, l1_off, active, i,
                                e & ~QCOW2_L1E_RESERVED_MASK) == 0) {
                check_say(c, "Repairing L1 entry with reserved bits set: %"
                          PRIx64, e);
                c->res->corruptions_fixed++;
                e &= ~QCOW2_L1E_RESERVED_MASK;
            } else {
                check_say(c, "ERROR found L1 entry with reserved bits set: %"
                          PRIx64, e);
                c->res->corruptions++;
            }
        }
        if (!l2_off) {
            continue;
        }
        if (l2_off >= c->file_len && l2_off % c->cs == 0 &&
            (c->fix & BLOCK_FIX_ERRORS) &&
            repair_l1_entry(c, l1_off, active, i, 0) == 0) {
            /* A table past the end of the file reads as zeroes: every
             * cluster it maps is unallocated, as with no table. */
            check_say(c, "Repairing l2_offset=%" PRIx64 ": L2 table is past "
                      "the end of the file; the L1 entry is cleared", l2_off);
            c->res->corruptions_fixed++;
            continue;
        }
        if (l2_off % c->cs) {
            /* Walking a misplaced table would only invent errors; its
             * clusters stay counted so nothing it covers is freed. */
            check_say(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                      "aligned; L1 entry corrupted", l2_off);
            c->res->corruptions++;
            ret = check_count_region(c, l2_off, c->cs);
            if (ret < 0) {
                break;
            }
            continue;
        }
        ret = check_count_region(c, l2_off, c->cs);
        if (ret < 0) {
            break;
        }
        if (!check_readable(l2_off, c->cs)) {
            check_say(c, "ERROR: I/O error in check_refcounts_l2");
            c->res->check_errors++;
            continue;
        }
        if (l2_off >= c->file_len) {
            continue;   /* reads as zeroes: nothing mapped */
        }
        ret = check_read_file(c, l2_off, c->cs, c->l2buf);
        if (ret < 0) {
            check_say(c, "ERROR: I/O error in check_refcounts_l2");
            c->res->check_errors++;
            continue;
        }
        ret = count_l2(c, l2_off, active);
        if (ret < 0) {
            break;
        }
    }
    free(l1);
    return ret < 0 ? ret : 0;
}

/* The header opened with a snapshot table that cannot be parsed past
 * entry nb_snapshots_loaded (snapshot-table.c): reported, and with -r all
 * cut there by one header write.  A table at offset 0 lies over the
 * header itself: its entries are the header's bytes read as snapshots,
 * so -r all drops it whole.  The clusters only the dropped entries used
 * are then leaks, which this same check frees. */
static int snapshot_table_damage(Check *c)
{
    Qcow2State *s = c->s;
    int keep = s->nb_snapshots_loaded;
    const char *why = s->snapshot_damage;

    if (s->nb_snapshots && !s->snapshots_offset &&
        (c->fix & BLOCK_FIX_ERRORS)) {
        keep = 0;
        why = "the table overlaps the image header";
    } else if (!s->snapshot_damage[0]) {
        return 0;
    }
    if (!(c->fix & BLOCK_FIX_ERRORS)) {
        check_say(c, "ERROR snapshot table entry %d: %s", keep, why);
        c->res->corruptions++;
        return 0;
    }
    uint32_t onb = s->nb_snapshots;
    uint64_t ooff = s->snapshots_offset;
    Error err = { 0 };
    s->nb_snapshots = (uint32_t)keep;
    if (!keep) {
        s->snapshots_offset = 0;
    }
    int ret = qcow2_write_header(s, &err);
    if (ret < 0) {
        s->nb_snapshots = onb;
        s->snapshots_offset = ooff;
        return ret;
    }
    if (!onb) {
        check_say(c, "Repairing the snapshot table offset: %s with no "
                  "snapshots; it is cleared", why);
    } else if (!keep && !ooff) {
        check_say(c, "Repairing the snapshot table: %s; its %" PRIu32
                  " entries are dropped", why, onb);
    } else {
        check_say(c, "Repairing snapshot table entry %d: %s; the table now "
                  "ends before it", keep, why);
    }
    for (int i = keep; i < s->nb_snapshots_loaded; i++) {
        free(s->snapshots[i].id_str);
        free(s->snapshots[i].name);
        s->snapshots[i].id_str = s->snapshots[i].name = NULL;
    }
    s->nb_snapshots_loaded = keep;
    s->snapshot_damage[0] = '\0';
    c->res->corruptions_fixed++;
    return 0;
}

static int count_snapshots(Check *c)
{
    Qcow2State *s = c->s;
    int ret = snapshot_table_damage(c);

    if (ret < 0) {
        return ret;
    }
    /* v3 entries must say their disk size (QEMU's rule); the table is
     * rewritten once the refcounts are right (check_pass). */
    for (int i = 0; s->version >= 3 && i < s->nb_snapshots_loaded; i++) {
        if (s->snapshots[i].extra_size >= 16) {
            continue;
        }
        if (c->fix & BLOCK_FIX_ERRORS) {
            check_say(c, "Repairing snapshot table entry %d is incomplete", i);
            c->res->corruptions_fixed++;
            c->complete_snapshots = true;
        } else {
            check_say(c, "ERROR snapshot table entry %d is incomplete", i);
            c->res->corruptions++;
        }
    }

    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        const char *id = sn->id_str ? sn->id_str : "";
        const char *name = sn->name ? sn->name : "";

        if (sn->l1_table_offset % c->cs) {
            check_say(c, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 "
                      "table is not cluster aligned; snapshot table entry "
                      "corrupted",
                      id, name, sn->l1_table_offset);
            c->res->corruptions++;
            continue;
        }
        if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            check_say(c, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 "
                      "table is too large; snapshot table entry corrupted",
                      id, name, sn->l1_size);
            c->res->corruptions++;
            continue;
        }
        ret = count_l1(c, sn->l1_table_offset, sn->l1_size, false);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->nb_snapshots && s->snapshots_size) {
        ret = check_count_region(c, s->snapshots_offset,
                                 s->snapshots_size - s->snapshots_tail_pad);
        c->snap_table_counted = ret > 0;
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int count_crypto_header(Check *c)
{
    const Qcow2Extension *x = qcow2_find_ext(c->s, QCOW2_EXT_CRYPTO);

    if (!x || x->len < 16) {
        return 0;
    }
    int ret = check_count_region(c, qcow2_be64(x->data),
                                 qcow2_be64(x->data + 8));
    return ret < 0 ? ret : 0;
}

/* A bitmap cluster past the end of the file reads as zeroes, bits that
 * were lost: the entry becomes "all ones", as a dirty bitmap may only
 * over-approximate (the next incremental backup copies that range). */
static int repair_bitmap_entry(Check *c, uint64_t table_off, uint32_t i)
{
    uint64_t at = table_off + 8 * (uint64_t)i;
    uint8_t b[8];

    if (!check_may_rewrite(c, at, 8, table_off)) {
        return -EPERM;
    }
    qcow2_put_be64(b, 1);
    int ret = block_pwrite(block_file(c->n), at, 8, b, 0);
    return ret < 0 ? ret : 0;
}

static int count_bitmap_table(Check *c, uint64_t off, uint32_t entries)
{
    uint64_t bytes = (uint64_t)entries * 8;
    uint8_t *t;
    int ret;

    if (off % c->cs) {
        check_say(c, "ERROR bitmap table offset 0x%" PRIx64 " is not cluster "
                  "aligned", off);
        c->res->corruptions++;
        return 0;
    }
    /* Sizes first: counting a region claimed by a hostile header costs
     * memory per cluster of it, so only its start is counted (kept from
     * the leak repair) when it is too large. */
    if (bytes > MAX_BITMAP_TABLE_BYTES) {
        check_say(c, "ERROR bitmap table at 0x%" PRIx64 " is too large", off);
        c->res->corruptions++;
        ret = check_count_region(c, off, MAX_BITMAP_TABLE_BYTES);
        return ret < 0 ? ret : 0;
    }
    ret = check_count_region(c, off, bytes);
    if (ret <= 0 || bytes == 0) {
        return ret < 0 ? ret : 0;
    }
    ret = read_whole(c, off, bytes, "reading a bitmap table", &t);
    if (ret <= 0) {
        return ret;
    }
    for (uint32_t i = 0; i < entries && ret >= 0; i++) {
        uint64_t d = qcow2_be64(t + 8 * (uint64_t)i) & 0x00fffffffffffe00ull;
        if (!d) {
            continue;
        }
        if (d >= c->file_len && d % c->cs == 0 &&
            (c->fix & BLOCK_FIX_ERRORS) &&
            repair_bitmap_entry(c, off, i) == 0) {
            check_say(c, "Repairing bitmap data offset 0x%" PRIx64 ": the "
                      "cluster is past the end of the file; its bits are "
                      "all set", d);
            c->res->corruptions_fixed++;
            continue;
        }
        if (d % c->cs) {
            check_say(c, "ERROR bitmap data offset 0x%" PRIx64 " is not "
                      "cluster aligned", d);
            c->res->corruptions++;
        }
        ret = check_count_region(c, d, c->cs);
    }
    free(t);
    return ret < 0 ? ret : 0;
}

/* A bitmaps extension in force (v3, autoclear bit set) whose directory
 * open would refuse (bitmap-dir.c's parser says why) is a corruption:
 * check opens it all the same, so it must not call it clean. */
static void validate_bitmaps(Check *c, const Qcow2Extension *x,
                             const uint8_t *dir, uint64_t dir_size)
{
    Qcow2State *s = c->s;
    uint32_t nb = qcow2_be32(x->data);
    Qcow2BitmapEntry *v = NULL;
    Error err = { 0 };

    if (s->version < 3 || !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return;
    }
    if (nb == 0 || nb > QCOW2_MAX_BITMAPS || !dir) {
        check_say(c, "ERROR bitmaps extension: %u bitmaps in a directory of %"
                  PRIu64 " bytes", nb, dir_size);
        c->res->corruptions++;
        return;
    }
    Qcow2BitmapGeometry g = {
        .cluster_bits = s->cluster_bits,
        .file_size = c->file_len,
        .virtual_size = s->size,
    };
    if (qcow2_bitmaps_parse(dir, dir_size, nb, &g, &v, &err) < 0) {
        check_say(c, "ERROR bitmap directory: %s", err.msg);
        c->res->corruptions++;
        return;
    }
    qcow2_bitmap_entries_free(v, nb);
}

/* Bitmap clusters are counted whenever the extension is present, even
 * with its autoclear bit off: freeing them while the directory still
 * names them would let two owners share a cluster. */
static int count_bitmaps(Check *c)
{
    const Qcow2Extension *x = qcow2_find_ext(c->s, QCOW2_EXT_BITMAPS);
    uint64_t dir_size, dir_off;
    uint8_t *dir;
    int ret;

    if (!x || x->len < 24) {
        return 0;
    }
    dir_size = qcow2_be64(x->data + 8);
    dir_off = qcow2_be64(x->data + 16);
    if (dir_off % c->cs) {
        check_say(c, "ERROR bitmap directory offset 0x%" PRIx64 " is not "
                  "cluster aligned", dir_off);
        c->res->corruptions++;
        return 0;
    }
    if (dir_size > MAX_BITMAP_DIR_BYTES) {
        check_say(c, "ERROR bitmap directory is too large: %" PRIu64 " bytes",
                  dir_size);
        c->res->corruptions++;
        ret = check_count_region(c, dir_off, MAX_BITMAP_DIR_BYTES);
        return ret < 0 ? ret : 0;
    }
    ret = check_count_region(c, dir_off, dir_size);
    if (ret <= 0 || dir_size == 0) {
        if (ret >= 0 && dir_size == 0) {
            validate_bitmaps(c, x, NULL, 0);
        }
        return ret < 0 ? ret : 0;
    }
    ret = read_whole(c, dir_off, dir_size, "reading the bitmap directory",
                     &dir);
    if (ret <= 0) {
        return ret;
    }
    validate_bitmaps(c, x, dir, dir_size);
    for (uint64_t pos = 0; pos + 24 <= dir_size && ret >= 0;) {
        const uint8_t *e = dir + pos;
        uint64_t len = 24 + (uint64_t)qcow2_be32(e + 20) + qcow2_be16(e + 18);

        ret = count_bitmap_table(c, qcow2_be64(e), qcow2_be32(e + 8));
        pos += qcow2_align_up(len, 8);
    }
    free(dir);
    return ret < 0 ? ret : 0;
}

/* Refcount blocks: each must be a whole cluster inside the file that
 * nothing else uses.  Unusable ones force a rebuild. */
static int count_refblocks(Check *c)
{
    Qcow2State *s = c->s;

    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t e = s->refcount_table[i];
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
        int ret;

        c->rb_state[i] = RB_NONE;
        /* Reserved bits (0-8) are a corruption of the entry alone, as
         * qemu-img says; the offset bits still name the block the
         * refcounts are read from (QEMU masks them too), so the block is
         * checked and counted as usual but reported only once.  QEMU
         * leaves it uncounted: it reports the block as leaked, and its
         * rebuild then places a new block on top of the live one and
         * fails. */
        bool reserved = e & QCOW2_REFT_RESERVED_MASK;
        if (reserved) {
            check_say(c, "ERROR refcount table entry %" PRIu64 " has reserved "
                      "bits set", i);
            c->res->corruptions++;
            c->rebuild = true;
        }
        if (!off) {
            continue;
        }
        if (off % c->cs) {
            if (!reserved) {
                check_say(c, "ERROR refcount block %" PRIu64 " is not cluster "
                          "aligned; refcount table entry corrupted", i);
                c->res->corruptions++;
            }
            c->rb_state[i] = RB_BAD;
            c->rebuild = true;
            continue;
        }
        if (off / c->cs >= c->nb_clusters) {
            if (!reserved) {
                check_say(c, "ERROR refcount block %" PRIu64 " is outside "
                          "image", i);
                c->res->corruptions++;
            }
            /* where nothing can be read, its refcounts cannot be had */
            c->rb_state[i] = check_readable(off, c->cs) ? RB_OUTSIDE : RB_BAD;
            c->rebuild = true;
            continue;
        }
        ret = check_count_region(c, off, c->cs);
        if (ret < 0) {
            return ret;
        }
        c->rb_state[i] = RB_COUNTED;
        if (check_ref_at(c, off / c->cs) != 1) {
            check_say(c, "ERROR refcount block %" PRIu64 " refcount=%"
                      PRIu64, i, check_ref_at(c, off / c->cs));
            c->res->corruptions++;
            c->rebuild = true;
        }
    }
    return 0;
}

int check_count_all(Check *c)
{
    Qcow2State *s = c->s;
    int ret;

    c->next_contig = 0;
    ret = check_count_region(c, 0, c->cs);
    if (ret >= 0) {
        ret = count_l1(c, s->l1_table_offset, s->l1_size, true);
    }
    if (ret >= 0) {
        ret = count_snapshots(c);
    }
    if (ret >= 0) {
        ret = check_count_region(c, s->refcount_table_offset,
                                 (uint64_t)s->refcount_table_clusters * c->cs);
        c->reftable_counted = ret > 0;
    }
    if (ret >= 0) {
        ret = count_crypto_header(c);
    }
    if (ret >= 0) {
        ret = count_bitmaps(c);
    }
    if (ret >= 0) {
        ret = count_refblocks(c);
    }
    return ret < 0 ? ret : 0;
}
