/*
 * check.c - qcow2 consistency check and repair (`imgtool check [-r]`).
 *
 * One pass walks every structure that owns host clusters (header, active
 * and snapshot L1/L2 tables and the data they map, the snapshot table, the
 * refcount table and blocks, the encryption header, bitmap directory,
 * tables and data) and counts the references each host cluster should
 * have.  Those counts are compared with the stored refcounts:
 * stored < counted is a corruption (the cluster could be handed out twice),
 * stored > counted a leak (wasted space only).  Finally the COPIED flags of
 * the active tables are compared with the stored refcounts.  Messages go to
 * the caller's message callback in qemu-img's words, since scripts and
 * people grep for them.
 *
 * Memory: the counts live in one array indexed by host cluster, sized by
 * the clusters actually referenced and never beyond the image file's
 * length, so a hostile header cannot make us allocate more than the file
 * could describe.
 *
 * Repair keeps the driver's crash-safety rule (metadata never points at a
 * free cluster): leaks are lowered, too-low counts raised, COPIED flags set
 * only where the refcount on disk is already 1.  When the refcount
 * structures themselves are unusable (or a referenced cluster reads as
 * free, so it may already have been handed out), they are rebuilt from the
 * counts: new blocks and table are written past the end of the file and
 * the header is switched to them in one write, so a crash leaves either the
 * old structures or the new ones.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* Reference-count array entries saturate here; real refcounts above it are
 * reported as overflow like the refcount width's maximum. */
#define COUNT_MAX UINT32_MAX

/* Metadata we read whole into memory: beyond these sizes an entry is
 * treated as corrupt instead of trusted. */
#define MAX_BITMAP_DIR_BYTES   (64u * 1024 * 1024)
#define MAX_BITMAP_TABLE_BYTES (64u * 1024 * 1024)

/* Per refcount table entry.  A block past the end of the file reads as
 * zeroes (like any missing tail); a misaligned one cannot be read at all. */
enum { RB_NONE = 0, RB_COUNTED = 1, RB_BAD = 2, RB_OUTSIDE = 3 };

typedef struct Check {
    BlockNode *n;
    Qcow2State *s;
    BlockCheckResult *res;
    int fix;
    bool quiet;
    uint64_t cs;              /* cluster size */
    uint64_t file_len;
    uint64_t nb_clusters;     /* clusters of the image file (rounded up) */
    /* One past the highest cluster counted: metadata may reach less
     * than a cluster past the end of the file (count_region), and those
     * clusters are compared too, as qemu-img compares them. */
    uint64_t ref_end;
    /* Clusters whose count reached the refcount width's maximum and
     * stopped there (reported as overflow): their true number of
     * references is unknown, so a rebuild must not take the old
     * refcount structures' share off them.  Past OVERFLOW_MAX of them,
     * overflow_many says so for all. */
    uint64_t *overflowed;
    size_t n_overflowed;
    bool overflow_many;
    /* Counted references per host cluster, in chunks allocated when first
     * touched: memory follows what the metadata references, not the
     * (possibly sparse, possibly hostile) extent of the file. */
    uint32_t **chunks;
    uint64_t nchunks;
    uint64_t refs_len;        /* clusters covered by chunks[] */
    uint8_t *rb_state;        /* per refcount table entry: RB_* */
    bool reftable_counted;
    bool rebuild;
    bool complete_snapshots;  /* rewrite the snapshot table at the end */
    bool snap_table_counted;  /* its clusters hold a reference to free */
    uint64_t next_contig;     /* fragmentation: where the next cluster
                                 would be if the image were contiguous */
    uint64_t highest;         /* highest used cluster + 1 */
    uint8_t *l2buf;
} Check;

static void say(Check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(Check *c, const char *fmt, ...)
{
    va_list ap;
    char line[1024];

    if (c->quiet || !c->res->message) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    c->res->message(c->res->message_opaque, line);
}

/* Past the end of the file but before QCOW2_READ_LIMIT, reads return
 * zeroes; beyond it they fail, and so does qemu-img's check: metadata
 * there is "cannot check" (exit 1), not a corruption, in both tools. */
static bool readable(uint64_t off, uint64_t len)
{
    return off <= QCOW2_READ_LIMIT && len <= QCOW2_READ_LIMIT - off;
}

/* Reads [off, off + len) of the image file; bytes past its end read as
 * zero, as a truncated image's missing tail does. */
static int read_file(Check *c, uint64_t off, uint64_t len, void *buf)
{
    uint64_t avail = 0;

    if (!readable(off, len)) {
        return -EIO;
    }
    if (off < c->file_len) {
        avail = c->file_len - off < len ? c->file_len - off : len;
    }
    memset((uint8_t *)buf + avail, 0, len - avail);
    if (avail == 0) {
        return 0;
    }
    int ret = block_pread(block_file(c->n), off, avail, buf);
    return ret < 0 ? ret : 0;
}

#define CHUNK_BITS 12
#define CHUNK_SIZE (1u << CHUNK_BITS)

static int grow_refs(Check *c, uint64_t need)
{
    uint64_t n = (need + CHUNK_SIZE - 1) >> CHUNK_BITS;
    uint32_t **p;

    if (n > c->nchunks) {
        if (n > SIZE_MAX / sizeof(*p)) {
            return -ENOMEM;
        }
        p = realloc(c->chunks, n * sizeof(*p));
        if (!p) {
            return -ENOMEM;
        }
        memset(p + c->nchunks, 0, (n - c->nchunks) * sizeof(*p));
        c->chunks = p;
        c->nchunks = n;
    }
    if (need > c->refs_len) {
        c->refs_len = need;
    }
    return 0;
}

static uint64_t ref_at(const Check *c, uint64_t k)
{
    const uint32_t *ch;

    if (k >= c->refs_len) {
        return 0;
    }
    ch = c->chunks[k >> CHUNK_BITS];
    return ch ? ch[k & (CHUNK_SIZE - 1)] : 0;
}

/* The counter of cluster k (< refs_len), allocating its chunk; NULL when
 * out of memory. */
static uint32_t *ref_slot(Check *c, uint64_t k)
{
    uint32_t **ch = &c->chunks[k >> CHUNK_BITS];

    if (!*ch) {
        *ch = calloc(CHUNK_SIZE, sizeof(uint32_t));
        if (!*ch) {
            return NULL;
        }
    }
    return &(*ch)[k & (CHUNK_SIZE - 1)];
}

static void ref_set(Check *c, uint64_t k, uint32_t v)
{
    if (v || ref_at(c, k)) {
        uint32_t *p = ref_slot(c, k);
        if (p) {
            *p = v;
        }
    }
}

static bool range_used(const Check *c, uint64_t lo, uint64_t hi)
{
    for (uint64_t k = lo; k < hi && k < c->refs_len; k++) {
        if (!c->chunks[k >> CHUNK_BITS]) {
            k |= CHUNK_SIZE - 1;   /* skip the untouched chunk */
            continue;
        }
        if (ref_at(c, k)) {
            return true;
        }
    }
    return false;
}

static uint64_t used_end(const Check *c)
{
    uint64_t k = c->refs_len;

    while (k > 0) {
        if (!c->chunks[(k - 1) >> CHUNK_BITS]) {
            k = ((k - 1) >> CHUNK_BITS) << CHUNK_BITS;
            continue;
        }
        if (ref_at(c, k - 1)) {
            break;
        }
        k--;
    }
    return k;
}

#define OVERFLOW_MAX 4096

static void note_overflow(Check *c, uint64_t k)
{
    if (c->n_overflowed == OVERFLOW_MAX) {
        c->overflow_many = true;
        return;
    }
    if (!c->overflowed) {
        c->overflowed = malloc(OVERFLOW_MAX * sizeof(*c->overflowed));
        if (!c->overflowed) {
            c->overflow_many = true;
            return;
        }
    }
    c->overflowed[c->n_overflowed++] = k;
}

static bool saturated(const Check *c, uint64_t k)
{
    if (c->overflow_many) {
        return true;
    }
    for (size_t i = 0; i < c->n_overflowed; i++) {
        if (c->overflowed[i] == k) {
            return true;
        }
    }
    return false;
}

/* Counts one reference to every cluster of [off, off + size).  A region
 * reaching a cluster or more past the end of the file cannot be counted
 * (there is no refcount to compare with): that is a corruption.  Returns
 * 1 when counted, 0 when not, negative on allocation failure. */
static int count_region(Check *c, uint64_t off, uint64_t size)
{
    uint64_t first, last;
    uint64_t max = c->s->refcount_max < COUNT_MAX ? c->s->refcount_max
                                                   : COUNT_MAX;
    int ret;

    if (size == 0) {
        return 1;
    }
    if (off > UINT64_MAX - size ||
        off + size >= c->file_len + c->cs) {
        say(c, "ERROR: counting reference for region exceeding the end of "
            "the file by one cluster or more: offset 0x%" PRIx64
            " size 0x%" PRIx64, off, size);
        c->res->corruptions++;
        return 0;
    }
    first = off / c->cs;
    last = (off + size - 1) / c->cs;
    ret = grow_refs(c, last + 1);
    if (ret < 0) {
        return ret;
    }
    if (last + 1 > c->ref_end) {
        c->ref_end = last + 1;
    }
    for (uint64_t k = first; k <= last; k++) {
        uint32_t *slot = ref_slot(c, k);

        if (!slot) {
            return -ENOMEM;
        }
        if (*slot >= max) {
            say(c, "ERROR: overflow cluster offset=0x%" PRIx64,
                k * c->cs);
            c->res->corruptions++;
            note_overflow(c, k);
            continue;
        }
        (*slot)++;
    }
    return 1;
}

/* --------------------------------------------------------------------- */
/* Counting references                                                   */

static bool ranges_meet(uint64_t a, uint64_t alen, uint64_t b,
                        uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* Whether a table at [off, off + len) may be rewritten by a repair: a
 * damaged image can put it over the header, the refcount structures,
 * the snapshot table or the active L1 table (self: the table's own
 * offset, so the active L1 may rewrite itself), and writing there would
 * destroy what the repair is meant to keep.  Such damage stays reported;
 * qemu-img's overlap checks refuse those writes too. */
static bool may_rewrite(Check *c, uint64_t off, uint64_t len, uint64_t self)
{
    Qcow2State *s = c->s;
    uint64_t cs = c->cs;
    uint64_t a = off / cs * cs;
    uint64_t alen = qcow2_align_up(off + len, cs) - a;

    if (!readable(off, len) || off < cs ||
        ranges_meet(a, alen, s->refcount_table_offset,
                    (uint64_t)s->refcount_table_clusters * cs) ||
        (s->nb_snapshots &&
         ranges_meet(a, alen, s->snapshots_offset,
                     qcow2_align_up(s->snapshots_size, cs))) ||
        (self != s->l1_table_offset &&
         ranges_meet(a, alen, s->l1_table_offset,
                     qcow2_align_up((uint64_t)s->l1_size * 8, cs)))) {
        return false;
    }
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t b = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (b && ranges_meet(a, alen, b, cs)) {
            return false;
        }
    }
    return true;
}

static int repair_l2_entry(Check *c, uint64_t l2_off, uint64_t idx,
                           uint64_t entry, uint64_t bitmap)
{
    if (!may_rewrite(c, l2_off, c->cs, l2_off)) {
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
                say(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must "
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
                say(c, "ERROR compressed cluster %" PRIu64 " with data "
                    "file, entry=0x%" PRIx64, j, e);
                res->corruptions++;
                continue;
            }
            if (s->extended_l2 && b) {
                say(c, "ERROR compressed cluster %" PRIu64 " with non-zero "
                    "subcluster allocation bitmap, entry=0x%" PRIx64, j, e);
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
            ret = count_region(c, coff & ~511ull, nsect * 512);
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
                say(c, "Repairing l2 entry with reserved bits set: %" PRIx64,
                    e);
                res->corruptions_fixed++;
                e &= ~QCOW2_L2E_STD_RESERVED_MASK;
            } else {
                say(c, "ERROR found l2 entry with reserved bits set: %"
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
                say(c, "Repairing offset=%" PRIx64 ": Data cluster is past "
                    "the end of the file; it now reads as zeroes, as it "
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
                say(c, "ERROR: Unallocated cluster has non-zero "
                    "subcluster allocation map");
                res->corruptions++;
            }
            continue;
        }
        if ((b >> 32) & b) {
            /* a subcluster both allocated and zero */
            say(c, "ERROR offset=%" PRIx64 ": Allocated cluster has "
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
                say(c, "%s offset=%" PRIx64 ": Preallocated cluster is not "
                    "properly aligned; L2 entry corrupted.",
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
                    say(c, "ERROR: could not repair the L2 entry: %s",
                        strerror(-ret));
                    res->check_errors++;
                }
                res->corruptions++;
            } else {
                say(c, "ERROR offset=%" PRIx64 ": Data cluster is not "
                    "properly aligned; L2 entry corrupted.", off);
                res->corruptions++;
            }
        }
        if (s->has_data_file) {
            continue;   /* data clusters live in the data file */
        }
        ret = count_region(c, off, c->cs);
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
    if (!may_rewrite(c, l1_off + 8 * (uint64_t)i, 8, l1_off)) {
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

    ret = count_region(c, l1_off, bytes);
    if (ret < 0 || l1_size == 0) {
        return ret < 0 ? ret : 0;
    }
    l1 = malloc(bytes);
    if (!l1) {
        return -ENOMEM;
    }
    ret = read_file(c, l1_off, bytes, l1);
    if (ret < 0) {
        say(c, "ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        free(l1);
        return 0;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t e = qcow2_be64(l1 + 8 * (uint64_t)i);
        uint64_t l2_off = e & QCOW2_L1E_OFFSET_MASK;

        if (e & QCOW2_L1E_RESERVED_MASK) {
            if ((c->fix & BLOCK_FIX_ERRORS) &&
                repair_l1_entry(c, l1_off, active, i,
                                e & ~QCOW2_L1E_RESERVED_MASK) == 0) {
                say(c, "Repairing L1 entry with reserved bits set: %" PRIx64,
                    e);
                c->res->corruptions_fixed++;
                e &= ~QCOW2_L1E_RESERVED_MASK;
            } else {
                say(c, "ERROR found L1 entry with reserved bits set: %"
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
            say(c, "Repairing l2_offset=%" PRIx64 ": L2 table is past the "
                "end of the file; the L1 entry is cleared", l2_off);
            c->res->corruptions_fixed++;
            continue;
        }
        if (l2_off % c->cs) {
            /* Walking a misplaced table would only invent errors; its
             * clusters stay counted so nothing it covers is freed. */
            say(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                "aligned; L1 entry corrupted", l2_off);
            c->res->corruptions++;
            ret = count_region(c, l2_off, c->cs);
            if (ret < 0) {
                break;
            }
            continue;
        }
        ret = count_region(c, l2_off, c->cs);
        if (ret < 0) {
            break;
        }
        if (!readable(l2_off, c->cs)) {
            say(c, "ERROR: I/O error in check_refcounts_l2");
            c->res->check_errors++;
            continue;
        }
        if (l2_off >= c->file_len) {
            continue;   /* reads as zeroes: nothing mapped */
        }
        ret = read_file(c, l2_off, c->cs, c->l2buf);
        if (ret < 0) {
            say(c, "ERROR: I/O error in check_refcounts_l2");
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
 * entry nb_snapshots_loaded (header.c): reported, and with -r all cut
 * there by one header write.  The clusters only the dropped entries used
 * are then leaks, which this same check frees. */
static int snapshot_table_damage(Check *c)
{
    Qcow2State *s = c->s;
    int keep = s->nb_snapshots_loaded;

    if (!s->snapshot_damage[0]) {
        return 0;
    }
    if (!(c->fix & BLOCK_FIX_ERRORS)) {
        say(c, "ERROR snapshot table entry %d: %s", keep,
            s->snapshot_damage);
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
    say(c, "Repairing snapshot table entry %d: %s; the table now ends "
        "before it", keep, s->snapshot_damage);
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
            say(c, "Repairing snapshot table entry %d is incomplete", i);
            c->res->corruptions_fixed++;
            c->complete_snapshots = true;
        } else {
            say(c, "ERROR snapshot table entry %d is incomplete", i);
            c->res->corruptions++;
        }
    }

    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        const char *id = sn->id_str ? sn->id_str : "";
        const char *name = sn->name ? sn->name : "";

        if (sn->l1_table_offset % c->cs) {
            say(c, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table "
                "is not cluster aligned; snapshot table entry corrupted",
                id, name, sn->l1_table_offset);
            c->res->corruptions++;
            continue;
        }
        if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            say(c, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table "
                "is too large; snapshot table entry corrupted",
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
        ret = count_region(c, s->snapshots_offset,
                           s->snapshots_size - s->snapshots_tail_pad);
        c->snap_table_counted = ret > 0;
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static const Qcow2Extension *find_ext(const Qcow2State *s, uint32_t type)
{
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == type) {
            return &s->unknown_exts[i];
        }
    }
    return NULL;
}

static int count_crypto_header(Check *c)
{
    const Qcow2Extension *x = find_ext(c->s, QCOW2_EXT_CRYPTO);

    if (!x || x->len < 16) {
        return 0;
    }
    int ret = count_region(c, qcow2_be64(x->data), qcow2_be64(x->data + 8));
    return ret < 0 ? ret : 0;
}

static int count_bitmap_table(Check *c, uint64_t off, uint32_t entries)
{
    uint64_t bytes = (uint64_t)entries * 8;
    uint8_t *t;
    int ret;

    if (off % c->cs) {
        say(c, "ERROR bitmap table offset 0x%" PRIx64 " is not cluster "
            "aligned", off);
        c->res->corruptions++;
        return 0;
    }
    /* Sizes first: counting a region claimed by a hostile header costs
     * memory per cluster of it, so only its start is counted (kept from
     * the leak repair) when it is too large. */
    if (bytes > MAX_BITMAP_TABLE_BYTES) {
        say(c, "ERROR bitmap table at 0x%" PRIx64 " is too large", off);
        c->res->corruptions++;
        ret = count_region(c, off, MAX_BITMAP_TABLE_BYTES);
        return ret < 0 ? ret : 0;
    }
    ret = count_region(c, off, bytes);
    if (ret <= 0 || bytes == 0) {
        return ret < 0 ? ret : 0;
    }
    t = malloc(bytes);
    if (!t) {
        return -ENOMEM;
    }
    ret = read_file(c, off, bytes, t);
    if (ret < 0) {
        say(c, "ERROR: I/O error reading a bitmap table");
        c->res->check_errors++;
        free(t);
        return 0;
    }
    for (uint32_t i = 0; i < entries && ret >= 0; i++) {
        uint64_t d = qcow2_be64(t + 8 * (uint64_t)i) & 0x00fffffffffffe00ull;
        if (!d) {
            continue;
        }
        if (d % c->cs) {
            say(c, "ERROR bitmap data offset 0x%" PRIx64 " is not cluster "
                "aligned", d);
            c->res->corruptions++;
        }
        ret = count_region(c, d, c->cs);
    }
    free(t);
    return ret < 0 ? ret : 0;
}

/* A bitmaps extension in force (v3, autoclear bit set) whose directory
 * open would refuse (bitmap.c's parser says why) is a corruption: check
 * opens it all the same, so it must not call it clean. */
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
        say(c, "ERROR bitmaps extension: %u bitmaps in a directory of %"
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
        say(c, "ERROR bitmap directory: %s", err.msg);
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
    const Qcow2Extension *x = find_ext(c->s, QCOW2_EXT_BITMAPS);
    uint64_t dir_size, dir_off;
    uint8_t *dir;
    int ret;

    if (!x || x->len < 24) {
        return 0;
    }
    dir_size = qcow2_be64(x->data + 8);
    dir_off = qcow2_be64(x->data + 16);
    if (dir_off % c->cs) {
        say(c, "ERROR bitmap directory offset 0x%" PRIx64 " is not cluster "
            "aligned", dir_off);
        c->res->corruptions++;
        return 0;
    }
    if (dir_size > MAX_BITMAP_DIR_BYTES) {
        say(c, "ERROR bitmap directory is too large: %" PRIu64 " bytes",
            dir_size);
        c->res->corruptions++;
        ret = count_region(c, dir_off, MAX_BITMAP_DIR_BYTES);
        return ret < 0 ? ret : 0;
    }
    ret = count_region(c, dir_off, dir_size);
    if (ret <= 0 || dir_size == 0) {
        if (ret >= 0 && dir_size == 0) {
            validate_bitmaps(c, x, NULL, 0);
        }
        return ret < 0 ? ret : 0;
    }
    dir = malloc(dir_size);
    if (!dir) {
        return -ENOMEM;
    }
    ret = read_file(c, dir_off, dir_size, dir);
    if (ret < 0) {
        say(c, "ERROR: I/O error reading the bitmap directory");
        c->res->check_errors++;
        free(dir);
        return 0;
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
            say(c, "ERROR refcount table entry %" PRIu64 " has reserved "
                "bits set", i);
            c->res->corruptions++;
            c->rebuild = true;
        }
        if (!off) {
            continue;
        }
        if (off % c->cs) {
            if (!reserved) {
                say(c, "ERROR refcount block %" PRIu64 " is not cluster "
                    "aligned; refcount table entry corrupted", i);
                c->res->corruptions++;
            }
            c->rb_state[i] = RB_BAD;
            c->rebuild = true;
            continue;
        }
        if (off / c->cs >= c->nb_clusters) {
            if (!reserved) {
                say(c, "ERROR refcount block %" PRIu64 " is outside image",
                    i);
                c->res->corruptions++;
            }
            /* where nothing can be read, its refcounts cannot be had */
            c->rb_state[i] = readable(off, c->cs) ? RB_OUTSIDE : RB_BAD;
            c->rebuild = true;
            continue;
        }
        ret = count_region(c, off, c->cs);
        if (ret < 0) {
            return ret;
        }
        c->rb_state[i] = RB_COUNTED;
        if (ref_at(c, off / c->cs) != 1) {
            say(c, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64, i,
                ref_at(c, off / c->cs));
            c->res->corruptions++;
            c->rebuild = true;
        }
    }
    return 0;
}

static int count_all(Check *c)
{
    Qcow2State *s = c->s;
    int ret;

    c->next_contig = 0;
    ret = count_region(c, 0, c->cs);
    if (ret >= 0) {
        ret = count_l1(c, s->l1_table_offset, s->l1_size, true);
    }
    if (ret >= 0) {
        ret = count_snapshots(c);
    }
    if (ret >= 0) {
        ret = count_region(c, s->refcount_table_offset,
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

/* --------------------------------------------------------------------- */
/* Comparing with the stored refcounts                                   */

/* Stored refcount of one cluster, refusing to read through a refcount
 * block already known to be unusable.  Read through the entry's offset
 * bits whatever its reserved bits say (the driver refuses such entries;
 * count_refblocks has reported them). */
static int stored_refcount(Check *c, uint64_t k, uint64_t *rc)
{
    Qcow2State *s = c->s;
    uint64_t rti = qcow2_reftable_index(s, k);

    *rc = 0;
    if (rti >= s->refcount_table_size || c->rb_state[rti] == RB_OUTSIDE) {
        return 0;
    }
    if (c->rb_state[rti] == RB_BAD) {
        return -EIO;
    }
    uint64_t boff = s->refcount_table[rti] & QCOW2_REFT_OFFSET_MASK;
    if (!boff) {
        return 0;
    }
    uint8_t *block;
    int ret = qcow2_cache_get(&s->refcount_cache, boff, &block);
    if (ret < 0) {
        return ret;
    }
    *rc = qcow2_refblock_get(s, block, qcow2_refblock_index(s, k));
    qcow2_cache_put(&s->refcount_cache, &block);
    return 0;
}

typedef struct Fixup {
    uint64_t cluster, stored, counted;
} Fixup;

static void fixup_report(Check *c, const Fixup *f)
{
    bool corrupt = f->stored < f->counted;

    say(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
        corrupt ? "ERROR" : "Leaked", f->cluster, f->stored, f->counted);
    if (corrupt) {
        c->res->corruptions++;
    } else {
        c->res->leaks++;
    }
}

/* Compares clusters of one refcount block's range [base, end). */
static int compare_block(Check *c, uint64_t rti, uint64_t base, uint64_t end,
                         int fix, Fixup *fx)
{
    Qcow2State *s = c->s;
    uint64_t boff = rti < s->refcount_table_size &&
                    c->rb_state[rti] != RB_OUTSIDE
                        ? s->refcount_table[rti] & QCOW2_REFT_OFFSET_MASK : 0;
    uint8_t *block = NULL;
    size_t nfx = 0;
    int ret;

    if (rti < s->refcount_table_size && c->rb_state[rti] == RB_BAD) {
        for (uint64_t k = base; k < end; k++) {
            say(c, "Can't get refcount for cluster %" PRIu64 ": %s", k,
                strerror(EIO));
            c->res->check_errors++;
            if (ref_at(c, k)) {
                c->highest = k + 1;
            }
        }
        return 0;
    }
    if (boff) {
        ret = qcow2_cache_get(&s->refcount_cache, boff, &block);
        if (ret < 0) {
            for (uint64_t k = base; k < end; k++) {
                say(c, "Can't get refcount for cluster %" PRIu64 ": %s", k,
                    strerror(-ret));
                c->res->check_errors++;
            }
            return 0;
        }
    }
    for (uint64_t k = base; k < end; k++) {
        uint64_t stored = block ? qcow2_refblock_get(s, block, k - base) : 0;
        uint64_t counted = ref_at(c, k);
        uint64_t after = stored;

        if (stored != counted) {
            Fixup f = { k, stored, counted };
            bool fixable = stored != 0 &&
                           ((stored > counted && (fix & BLOCK_FIX_LEAKS)) ||
                            (stored < counted && (fix & BLOCK_FIX_ERRORS)));
            if (stored == 0) {
                /* In use but free on disk: it may have been handed out
                 * again already; only a rebuild settles that. */
                c->rebuild = true;
            }
            if (fixable) {
                fx[nfx++] = f;
                after = counted;
            } else {
                fixup_report(c, &f);
            }
        }
        if (after || counted) {
            c->highest = k + 1;
        }
    }
    if (block) {
        qcow2_cache_put(&s->refcount_cache, &block);
    }

    for (size_t i = 0; i < nfx; i++) {
        ret = qcow2_set_refcount(s, fx[i].cluster, fx[i].counted);
        if (ret < 0) {
            say(c, "ERROR: could not fix the refcount of cluster %" PRIu64
                ": %s", fx[i].cluster, strerror(-ret));
            c->res->check_errors++;
            fixup_report(c, &fx[i]);
            continue;
        }
        say(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
            " reference=%" PRIu64, fx[i].cluster, fx[i].stored,
            fx[i].counted);
        if (fx[i].stored > fx[i].counted) {
            c->res->leaks_fixed++;
        } else {
            c->res->corruptions_fixed++;
        }
    }
    return 0;
}

static int compare_refcounts(Check *c, int fix)
{
    Qcow2State *s = c->s;
    uint64_t rbe = s->refblock_entries;
    Fixup *fx = malloc(rbe * sizeof(*fx));
    int ret = 0;

    if (!fx) {
        return -ENOMEM;
    }
    c->highest = 0;
    uint64_t limit = c->nb_clusters > c->ref_end ? c->nb_clusters
                                                 : c->ref_end;
    for (uint64_t base = 0; base < limit; base += rbe) {
        uint64_t rti = base / rbe;
        uint64_t end = base + rbe < limit ? base + rbe : limit;
        bool no_block = rti >= s->refcount_table_size ||
                        !(s->refcount_table[rti] & QCOW2_REFT_OFFSET_MASK);

        /* Past both the counted clusters and the refcount table there is
         * nothing left to disagree about. */
        if (no_block && !range_used(c, base, end)) {
            if (rti >= s->refcount_table_size && base >= c->refs_len) {
                break;
            }
            continue;
        }
        ret = compare_block(c, rti, base, end, fix, fx);
        if (ret < 0) {
            break;
        }
    }
    free(fx);
    return ret;
}

/* --------------------------------------------------------------------- */
/* Rebuilding the refcount structures                                    */

/* First run of n clusters that nothing references (the old refcount
 * structures included, so they stay intact until the switch). */
static int alloc_free_run(Check *c, uint64_t *hint, uint64_t n,
                          uint64_t *start)
{
    uint64_t k = *hint, run = 0;
    int ret;

    while (run < n) {
        if (ref_at(c, k)) {
            run = 0;
        } else {
            run++;
        }
        k++;
    }
    ret = grow_refs(c, k);
    if (ret < 0) {
        return ret;
    }
    *start = k - n;
    for (uint64_t i = *start; i < k; i++) {
        if (!ref_slot(c, i)) {
            return -ENOMEM;
        }
        ref_set(c, i, 1);
    }
    /* hint: every cluster below it is in use.  A single cluster is the
     * first free one at or after hint, so everything up to it is in use
     * now (rescanning that prefix for every block made rebuilding a
     * hostile image's refcounts quadratic). */
    if (n == 1) {
        *hint = k;
    }
    return 0;
}

/* Places refcount blocks (one per range that holds a used cluster) and a
 * table big enough for them, first fit, until placing them needs nothing
 * more.  blocks[r] = cluster of the block for range r, 0 when none. */
static int place_refcount_structures(Check *c, uint64_t **pblocks,
                                     uint64_t *pentries, uint64_t *ptable,
                                     uint64_t *ptc)
{
    uint64_t rbe = c->s->refblock_entries;
    uint64_t hint = 0, table = 0, tc = 0, cap = 0, entries = 0;
    uint64_t *blocks = NULL;
    bool changed = true;
    int ret = 0;

    while (changed) {
        changed = false;
        entries = (used_end(c) + rbe - 1) / rbe;
        if (entries * 8 > QCOW2_MAX_REFTABLE_BYTES) {
            /* Known to fail before a single block is placed: placing
             * millions of them first is what made it slow. */
            ret = -EFBIG;
            break;
        }
        if (entries > cap) {
            uint64_t ncap = entries * 2;
            uint64_t *nb = realloc(blocks, ncap * sizeof(*nb));
            if (!nb) {
                ret = -ENOMEM;
                break;
            }
            memset(nb + cap, 0, (ncap - cap) * sizeof(*nb));
            blocks = nb;
            cap = ncap;
        }
        for (uint64_t r = 0; r < entries; r++) {
            if (blocks[r] || !range_used(c, r * rbe, (r + 1) * rbe)) {
                continue;
            }
            ret = alloc_free_run(c, &hint, 1, &blocks[r]);
            if (ret < 0) {
                goto out;
            }
            changed = true;
        }
        uint64_t need = (entries * 8 + c->cs - 1) / c->cs;
        if (need > tc) {
            for (uint64_t k = table; k < table + tc; k++) {
                ref_set(c, k, 0);
            }
            if (tc && table < hint) {
                hint = table;
            }
            ret = alloc_free_run(c, &hint, need, &table);
            if (ret < 0) {
                goto out;
            }
            tc = need;
            changed = true;
        }
    }
out:
    if (ret < 0) {
        free(blocks);
        return ret;
    }
    *pblocks = blocks;
    *pentries = entries;
    *ptable = table;
    *ptc = tc;
    return 0;
}

static int rebuild_refcounts(Check *c)
{
    Qcow2State *s = c->s;
    uint64_t rbe = s->refblock_entries;
    uint64_t *blocks = NULL, *table = NULL;
    uint64_t entries, table_start, tc, tentries;
    uint8_t *buf = NULL;
    int ret;

    ret = place_refcount_structures(c, &blocks, &entries, &table_start, &tc);
    if (ret == -EFBIG) {
        say(c, "ERROR: the rebuilt refcount table would be too large");
        return ret;
    }
    if (ret < 0) {
        return ret;
    }
    if (tc * c->cs > QCOW2_MAX_REFTABLE_BYTES) {
        say(c, "ERROR: the rebuilt refcount table would be too large");
        ret = -EFBIG;
        goto out;
    }

    /* The old table and blocks are free once the header has switched. */
    /* (a saturated count keeps it: it may still be in use) */
    if (c->reftable_counted) {
        uint64_t first = s->refcount_table_offset / c->cs;
        for (uint64_t k = 0; k < s->refcount_table_clusters; k++) {
            if (ref_at(c, first + k) && !saturated(c, first + k)) {
                ref_set(c, first + k, (uint32_t)ref_at(c, first + k) - 1);
            }
        }
    }
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        if (c->rb_state[i] == RB_COUNTED) {
            uint64_t k = (s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK) /
                         c->cs;
            if (ref_at(c, k) && !saturated(c, k)) {
                ref_set(c, k, (uint32_t)ref_at(c, k) - 1);
            }
        }
    }

    tentries = tc * c->cs / 8;
    table = calloc(tentries ? tentries : 1, 8);
    buf = malloc(c->cs);
    if (!table || !buf) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint64_t r = 0; r < entries; r++) {
        if (!blocks[r]) {
            continue;
        }
        memset(buf, 0, c->cs);
        for (uint64_t k = r * rbe; k < (r + 1) * rbe && k < c->refs_len; k++) {
            if (ref_at(c, k)) {
                qcow2_refblock_set(s, buf, k - r * rbe, ref_at(c, k));
            }
        }
        table[r] = blocks[r] * c->cs;
        ret = block_pwrite(block_file(c->n), blocks[r] * c->cs, c->cs, buf, 0);
        if (ret < 0) {
            say(c, "ERROR writing refblock: %s", strerror(-ret));
            goto out;
        }
    }
    /* Writes the table and flushes (so the blocks are on disk too), then
     * switches the header over in one write. */
    ret = qcow2_replace_reftable(s, table, tentries, table_start * c->cs);
    table = NULL;
    qcow2_cache_invalidate(&s->refcount_cache);
    if (ret < 0) {
        say(c, "ERROR writing the new refcount table: %s", strerror(-ret));
        goto out;
    }
    s->free_cluster_index = 0;
    uint64_t end = used_end(c);
    if (s->alloc_end < end) {
        s->alloc_end = end;
    }
    if (end * c->cs > c->file_len) {
        c->file_len = end * c->cs;
        c->nb_clusters = end;
    }
    free(c->rb_state);
    c->rb_state = calloc(s->refcount_table_size ? s->refcount_table_size : 1,
                         1);
    if (!c->rb_state) {
        ret = -ENOMEM;
        goto out;
    }
    c->highest = end;
    ret = 0;
out:
    free(blocks);
    free(table);
    free(buf);
    return ret;
}

/* --------------------------------------------------------------------- */
/* COPIED flags of the active tables                                     */

static int check_copied(Check *c)
{
    Qcow2State *s = c->s;
    BlockCheckResult *r = c->res;
    /* Flags follow the refcounts; when only leaks may be repaired that is
     * safe only if the refcounts themselves are right by now. */
    bool fixing = (c->fix & BLOCK_FIX_ERRORS) ||
                  ((c->fix & BLOCK_FIX_LEAKS) && !r->check_errors &&
                   !r->corruptions && !r->leaks);
    int ret;
    /* a table laid over other metadata is reported, never rewritten */
    bool fix_l1 = fixing &&
                  may_rewrite(c, s->l1_table_offset,
                              (uint64_t)s->l1_size * 8, s->l1_table_offset);

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t e = s->l1_table[i];
        uint64_t l2_off = e & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        bool changed = false;

        if (!l2_off && (e & QCOW2_OFLAG_COPIED)) {
            /* No L2 table (offset 0 is unallocated, qcow2.txt), so no
             * refcount of one.  qemu-img calls it a corruption too, by
             * walking cluster 0 as the table. */
            say(c, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
                " l1_entry=%" PRIx64 " refcount=0",
                fix_l1 ? "Repairing" : "ERROR", i, e);
            if (fix_l1) {
                s->l1_table[i] = e & ~QCOW2_OFLAG_COPIED;
                ret = qcow2_write_l1(s, i, 1);
                if (ret < 0) {
                    s->l1_table[i] = e;
                    c->res->check_errors++;
                    c->res->corruptions++;
                } else {
                    c->res->corruptions_fixed++;
                }
            } else {
                c->res->corruptions++;
            }
            continue;
        }
        if (!l2_off || l2_off % c->cs) {
            continue;
        }
        ret = stored_refcount(c, l2_off / c->cs, &rc);
        if (ret < 0) {
            c->res->check_errors++;
            continue;
        }
        if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
            say(c, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
                " l1_entry=%" PRIx64 " refcount=%" PRIu64,
                fix_l1 ? "Repairing" : "ERROR", i, e, rc);
            if (fix_l1) {
                s->l1_table[i] = rc == 1 ? e | QCOW2_OFLAG_COPIED
                                         : e & ~QCOW2_OFLAG_COPIED;
                ret = qcow2_write_l1(s, i, 1);
                if (ret < 0) {
                    s->l1_table[i] = e;
                    c->res->check_errors++;
                    c->res->corruptions++;
                } else {
                    c->res->corruptions_fixed++;
                }
            } else {
                c->res->corruptions++;
            }
        }
        if (l2_off >= c->file_len) {
            continue;
        }
        ret = read_file(c, l2_off, c->cs, c->l2buf);
        if (ret < 0) {
            c->res->check_errors++;
            continue;
        }
        bool fix_l2 = fixing && may_rewrite(c, l2_off, c->cs, l2_off);
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t e2 = qcow2_l2_get_entry(s, c->l2buf, j);
            uint64_t off = e2 & QCOW2_L2E_OFFSET_MASK;

            if ((e2 & QCOW2_OFLAG_COMPRESSED) ||
                !(off || (s->has_data_file && (e2 & QCOW2_OFLAG_COPIED)))) {
                continue;
            }
            if (s->has_data_file) {
                rc = 1;   /* external data clusters are never shared */
            } else if (stored_refcount(c, off / c->cs, &rc) < 0) {
                c->res->check_errors++;
                continue;
            }
            if ((rc == 1) == !!(e2 & QCOW2_OFLAG_COPIED)) {
                continue;
            }
            say(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                " refcount=%" PRIu64, fix_l2 ? "Repairing" : "ERROR", e2, rc);
            if (fix_l2) {
                uint64_t b = s->extended_l2 ?
                             qcow2_l2_get_bitmap(s, c->l2buf, j) : 0;
                qcow2_l2_set(s, c->l2buf, j,
                             rc == 1 ? e2 | QCOW2_OFLAG_COPIED
                                     : e2 & ~QCOW2_OFLAG_COPIED, b);
                changed = true;
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        if (changed) {
            ret = qcow2_write_l2_table(s, l2_off, c->l2buf);
            if (ret < 0) {
                say(c, "ERROR: could not write the L2 table at 0x%" PRIx64
                    ": %s", l2_off, strerror(-ret));
                c->res->check_errors++;
            }
        }
    }
    return 0;
}

/* --------------------------------------------------------------------- */

static void check_free(Check *c)
{
    for (uint64_t i = 0; i < c->nchunks; i++) {
        free(c->chunks[i]);
    }
    free(c->chunks);
    free(c->rb_state);
    free(c->l2buf);
    free(c->overflowed);
}

/* One full check (and repair, per c->fix) into c->res. */
static int check_pass(BlockNode *n, BlockCheckResult *res, int fix,
                      bool quiet, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    Check c = { .n = n, .s = s, .res = res, .fix = fix, .quiet = quiet };
    BlockCheckResult before;
    int64_t len;
    int ret;

    /* The counters start afresh; where findings go stays the caller's. */
    BlockCheckResult blank = { .message = res->message,
                               .message_opaque = res->message_opaque };
    *res = blank;
    c.cs = s->cluster_size;
    len = block_get_length(block_file(n));
    if (len < 0) {
        return error_setf(err, (int)-len, "Could not get the image file "
                          "length: %s", strerror((int)-len));
    }
    c.file_len = (uint64_t)len;
    c.nb_clusters = (c.file_len + c.cs - 1) / c.cs;
    if (c.nb_clusters > INT32_MAX) {
        /* Same limit as qemu-img; it also bounds the work per pass. */
        return error_setf(err, EFBIG, "Image file of %" PRIu64 " clusters "
                          "is too large to check: File too large",
                          c.nb_clusters);
    }
    res->total_clusters = (s->size + c.cs - 1) / c.cs;

    /* A snapshot table qemu-img could not read either: no check can say
     * what its snapshots reference (counting without them would call
     * their clusters leaked, and -r would free them). */
    if (s->snapshot_damage[0] &&
        (s->snapshot_damage_kind == SNAPSHOT_DAMAGE_UNREADABLE ||
         (s->snapshot_damage_kind == SNAPSHOT_DAMAGE_UNREADABLE_UNLESS_CUT &&
          !(fix & BLOCK_FIX_ERRORS)))) {
        res->check_errors++;
        return error_setf(err, EINVAL, "Failed to read the snapshot table: "
                          "%s%s", s->snapshot_damage,
                          s->snapshot_damage_kind ==
                          SNAPSHOT_DAMAGE_UNREADABLE ? "" :
                          " (check -r all drops the entries from there on)");
    }

    c.l2buf = malloc(c.cs);
    c.rb_state = calloc(s->refcount_table_size ? s->refcount_table_size : 1,
                        1);
    if (!c.l2buf || !c.rb_state) {
        check_free(&c);
        return error_setf(err, ENOMEM, "Out of memory for the check");
    }

    ret = count_all(&c);
    if (ret < 0) {
        check_free(&c);
        return error_setf(err, -ret, "Cannot count the references of %"
                          PRIu64 " clusters: %s", c.nb_clusters,
                          strerror(-ret));
    }

    if (s->snapshot_damage[0] && !(fix & BLOCK_FIX_ERRORS)) {
        /* What the unparsed snapshot entries reference looks leaked;
         * freeing it would break them for a reader that gets further. */
        fix = 0;
    }
    /* A dry comparison first: whether a rebuild is needed decides how the
     * differences are repaired. */
    before = *res;
    ret = compare_refcounts(&c, 0);
    if (ret < 0) {
        goto fail;
    }
    if (c.rebuild && (fix & BLOCK_FIX_ERRORS)) {
        say(&c, "Rebuilding refcount structure");
        ret = rebuild_refcounts(&c);
        if (ret < 0) {
            goto fail;
        }
        /* Every refcount difference found is settled by the rebuild. */
        res->corruptions_fixed += res->corruptions;
        res->corruptions = 0;
        res->leaks_fixed += res->leaks;
        res->leaks = 0;
    } else if (fix) {
        if (c.rebuild) {
            say(&c, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            check_free(&c);
            return error_setf(err, EIO, "the refcount "
                              "structures need a rebuild (use -r all)");
        }
        if (res->leaks != before.leaks ||
            res->corruptions != before.corruptions) {
            /* L2 entries cleared while counting must be on disk before
             * the refcounts of what they pointed at can drop. */
            ret = block_flush(block_file(n));
            if (ret < 0) {
                goto fail;
            }
            *res = before;
            ret = compare_refcounts(&c, fix);
            if (ret < 0) {
                goto fail;
            }
            ret = qcow2_flush_caches(s);
            if (ret < 0) {
                goto fail;
            }
        }
    }

    if (c.complete_snapshots) {
        /* Allocates: only once the refcounts can be trusted. */
        ret = qcow2_snapshot_complete_extra(s, c.snap_table_counted, err);
        if (ret < 0) {
            check_free(&c);
            return ret;
        }
    }
    ret = check_copied(&c);
    if (ret < 0) {
        goto fail;
    }
    res->image_end_offset = (int64_t)(c.highest * c.cs);
    res->bfi_valid = true;
    check_free(&c);
    return 0;

fail:
    check_free(&c);
    return error_setf(err, -ret, "%s", strerror(-ret));
}

int qcow2_check(BlockNode *n, BlockCheckResult *res, int fix, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret;

    if (fix && s->read_only) {
        return error_setf(err, EROFS, "Cannot repair a read-only image");
    }
    pthread_mutex_lock(&s->lock);
    /* The walk reads tables from the file: it must see what the caches
     * hold. */
    if (!s->read_only) {
        ret = qcow2_flush_caches(s);
        if (ret < 0) {
            pthread_mutex_unlock(&s->lock);
            return error_setf(err, -ret, "Could not flush the image "
                              "before checking it: %s", strerror(-ret));
        }
    }

    ret = check_pass(n, res, fix, false, err);
    if (ret == 0 && fix && (res->leaks_fixed || res->corruptions_fixed)) {
        BlockCheckResult again = { 0 };

        ret = qcow2_flush_caches(s);
        if (ret < 0) {
            error_setf(err, -ret, "Could not flush the repaired image: %s",
                       strerror(-ret));
        } else {
            /* Report what is left, as the repaired image now stands. */
            ret = check_pass(n, &again, 0, true, err);
        }
        if (ret == 0) {
            again.leaks_fixed = res->leaks_fixed;
            again.corruptions_fixed = res->corruptions_fixed;
            again.message = res->message;
            again.message_opaque = res->message_opaque;
            *res = again;
        }
    }
    if (ret == 0 && fix && res->check_errors == 0 && res->corruptions == 0) {
        ret = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY |
                                          QCOW2_INCOMPAT_CORRUPT);
        if (ret < 0) {
            error_setf(err, -ret, "Could not mark the image clean: %s",
                       strerror(-ret));
        } else {
            s->dirty_set = false;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}
