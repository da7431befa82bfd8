/*
 * bitmap.c - qcow2 persistent dirty bitmaps (the bitmaps extension).
 *
 * On disk: the header extension names a directory of entries; each entry
 * names a bitmap table whose 64-bit entries point at data clusters (or
 * say "all zeroes" / "all ones").  The autoclear bit 0 says the
 * directory is current: a program unaware of bitmaps clears it when it
 * writes, and the bitmaps are then ignored (their clusters leak).
 *
 * What we keep:
 *  - everything read from disk is validated before it sizes an
 *    allocation: the directory by qcow2_bitmaps_parse, each table entry
 *    as it is read; a bitmap's bits are bounded by BLOCK_BITMAP_MAX_BYTES;
 *  - opened writable, every bitmap we loaded is flagged IN_USE on disk
 *    (in place, flushed) before the first guest write, so a crash leaves
 *    it inconsistent rather than silently stale;
 *  - storing is copy-on-write: new data clusters and tables, their
 *    refcounts on disk, the new directory, then the header extension in
 *    one header write, and only then are the old clusters freed.  A crash
 *    at any point shows the old or the new directory, at worst with
 *    leaked clusters;
 *  - a bitmap found IN_USE at open ("inconsistent") is never loaded or
 *    changed; its entry is carried over verbatim until it is removed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/driver.h"
#include "formats/qcow2/qcow2.h"

/* Bitmap table entry fields. */
#define BT_OFFSET_MASK    0x00fffffffffffe00ull
#define BT_RESERVED_MASK  0xff000000000001feull
#define BT_ALL_ONES       1ull

/* What the image holds on disk now. */
typedef struct Qcow2Bitmaps {
    uint64_t dir_offset;         /* 0: no directory */
    uint64_t dir_size;
    uint32_t nb;
    uint8_t *dir;                /* the directory as on disk */
    uint64_t *flag_pos;          /* byte position of each entry's flags */
    Qcow2BitmapEntry *entries;   /* as parsed */
    bool in_use_set;             /* we flagged our bitmaps IN_USE */
} Qcow2Bitmaps;

void qcow2_bitmap_entries_free(Qcow2BitmapEntry *v, uint32_t nb)
{
    for (uint32_t i = 0; v && i < nb; i++) {
        free(v[i].name);
    }
    free(v);
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Table entries a bitmap of this granularity needs for virtual_size. */
static uint64_t table_entries(const Qcow2BitmapGeometry *g, uint32_t gbits)
{
    uint64_t bits = div_up(g->virtual_size, 1ull << gbits);
    return div_up(div_up(bits, 8), 1ull << g->cluster_bits);
}

typedef struct Range {
    uint64_t start, end;
    uint32_t who;
} Range;

static int range_cmp(const void *a, const void *b)
{
    const Range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static int name_cmp(const void *a, const void *b)
{
    const Qcow2BitmapEntry *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Names unique and tables disjoint: both by sorting, O(n log n). */
static int check_disjoint(Qcow2BitmapEntry *v, uint32_t nb,
                          const Qcow2BitmapGeometry *g, Error *err)
{
    Range *r = calloc(nb, sizeof(*r));
    const Qcow2BitmapEntry **p = calloc(nb, sizeof(*p));
    int ret = 0;

    if (!r || !p) {
        free(r);
        free(p);
        return error_setf(err, ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < nb; i++) {
        uint64_t bytes = qcow2_align_up((uint64_t)v[i].table_size * 8,
                                        1ull << g->cluster_bits);
        r[i].start = v[i].table_offset;
        r[i].end = v[i].table_offset + (bytes ? bytes : 1);
        r[i].who = i;
        p[i] = &v[i];
    }
    qsort(r, nb, sizeof(*r), range_cmp);
    for (uint32_t i = 1; i < nb; i++) {
        if (r[i].start < r[i - 1].end) {
            ret = error_setf(err, EINVAL, "bitmaps '%s' and '%s' share "
                             "their bitmap table", v[r[i - 1].who].name,
                             v[r[i].who].name);
            break;
        }
    }
    qsort(p, nb, sizeof(*p), name_cmp);
    for (uint32_t i = 1; i < nb && ret == 0; i++) {
        if (strcmp(p[i]->name, p[i - 1]->name) == 0) {
            ret = error_setf(err, EINVAL, "duplicate bitmap name '%s'",
                             p[i]->name);
        }
    }
    free(r);
    free(p);
    return ret;
}

int qcow2_bitmaps_parse(const uint8_t *dir, uint64_t dir_size, uint32_t nb,
                        const Qcow2BitmapGeometry *g, Qcow2BitmapEntry **out,
                        Error *err)
{
    uint64_t cs = 1ull << g->cluster_bits;
    uint64_t pos = 0;
    int ret = 0;

    *out = NULL;
    if (nb == 0 || nb > QCOW2_MAX_BITMAPS ||
        dir_size > QCOW2_MAX_BITMAP_DIR_SIZE ||
        dir_size < (uint64_t)nb * QCOW2_BITMAP_ENTRY_FIXED) {
        return error_setf(err, EINVAL, "bitmap directory: %u entries do "
                          "not fit in %llu bytes", nb,
                          (unsigned long long)dir_size);
    }
    Qcow2BitmapEntry *v = calloc(nb, sizeof(*v));
    if (!v) {
        return error_setf(err, ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < nb; i++) {
        if (dir_size - pos < QCOW2_BITMAP_ENTRY_FIXED) {
            ret = error_setf(err, EINVAL, "bitmap directory is truncated "
                             "at entry %u", i);
            goto fail;
        }
        const uint8_t *e = dir + pos;
        Qcow2BitmapEntry *b = &v[i];
        uint8_t type = e[16];
        uint16_t name_len = qcow2_be16(e + 18);
        uint32_t extra = qcow2_be32(e + 20);
        b->table_offset = qcow2_be64(e);
        b->table_size = qcow2_be32(e + 8);
        b->flags = qcow2_be32(e + 12);
        b->gran_bits = e[17];
        uint64_t len = (uint64_t)QCOW2_BITMAP_ENTRY_FIXED + extra + name_len;
        if (len > dir_size - pos) {
            ret = error_setf(err, EINVAL, "bitmap directory entry %u runs "
                             "past the directory", i);
            goto fail;
        }
        if (name_len == 0 || name_len > BLOCK_BITMAP_MAX_NAME ||
            memchr(e + QCOW2_BITMAP_ENTRY_FIXED + extra, 0, name_len)) {
            ret = error_setf(err, EINVAL, "bitmap directory entry %u has an "
                             "invalid name", i);
            goto fail;
        }
        b->name = malloc(name_len + 1u);
        if (!b->name) {
            ret = error_setf(err, ENOMEM, "Out of memory");
            goto fail;
        }
        memcpy(b->name, e + QCOW2_BITMAP_ENTRY_FIXED + extra, name_len);
        b->name[name_len] = '\0';
        if (type != QCOW2_BT_DIRTY_TRACKING) {
            ret = error_setf(err, ENOTSUP, "Bitmap '%s' has unsupported "
                             "type %u", b->name, type);
            goto fail;
        }
        if (b->flags & ~QCOW2_BME_KNOWN_FLAGS) {
            ret = error_setf(err, ENOTSUP, "Bitmap '%s' has unknown flags "
                             "0x%x", b->name, b->flags);
            goto fail;
        }
        if (extra && !(b->flags & QCOW2_BME_EXTRA_COMPAT)) {
            ret = error_setf(err, ENOTSUP, "Bitmap '%s' has unsupported "
                             "extra data", b->name);
            goto fail;
        }
        if (b->gran_bits < BLOCK_BITMAP_MIN_GRAN_BITS ||
            b->gran_bits > BLOCK_BITMAP_MAX_GRAN_BITS) {
            ret = error_setf(err, EINVAL, "Bitmap '%s' has invalid "
                             "granularity 2^%u", b->name, b->gran_bits);
            goto fail;
        }
        uint64_t tbytes = (uint64_t)b->table_size * 8;
        if (b->table_offset == 0 || b->table_offset % cs ||
            b->table_offset >= g->file_size ||
            tbytes > g->file_size - b->table_offset) {
            ret = error_setf(err, EINVAL, "Bitmap '%s' has an invalid "
                             "bitmap table offset 0x%llx", b->name,
                             (unsigned long long)b->table_offset);
            goto fail;
        }
        /* An in-use bitmap may be stale in any way; it is only carried
         * over, so its size need not match the image. */
        if (!(b->flags & QCOW2_BME_IN_USE) &&
            b->table_size != table_entries(g, b->gran_bits)) {
            ret = error_setf(err, EINVAL, "Bitmap '%s' has a bitmap table "
                             "of %u entries, the image size needs %llu",
                             b->name, b->table_size,
                             (unsigned long long)table_entries(g,
                                                               b->gran_bits));
            goto fail;
        }
        if ((uint64_t)b->table_size * cs > BLOCK_BITMAP_MAX_BYTES) {
            ret = error_setf(err, EFBIG, "Bitmap '%s' is too large",
                             b->name);
            goto fail;
        }
        pos += qcow2_align_up(len, 8);
    }
    if (pos != qcow2_align_up(dir_size, 8)) {
        ret = error_setf(err, EINVAL, "bitmap directory size does not match "
                         "its %u entries", nb);
        goto fail;
    }
    ret = check_disjoint(v, nb, g, err);
    if (ret < 0) {
        goto fail;
    }
    *out = v;
    return 0;

fail:
    qcow2_bitmap_entries_free(v, nb);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Extension                                                           */

static Qcow2Extension *find_ext(Qcow2State *s)
{
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == QCOW2_EXT_BITMAPS) {
            return &s->unknown_exts[i];
        }
    }
    return NULL;
}

static void drop_ext(Qcow2State *s)
{
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == QCOW2_EXT_BITMAPS) {
            free(s->unknown_exts[i].data);
            memmove(&s->unknown_exts[i], &s->unknown_exts[i + 1],
                    (size_t)(s->nb_unknown_exts - i - 1) *
                        sizeof(s->unknown_exts[0]));
            s->nb_unknown_exts--;
            return;
        }
    }
}

static int set_ext(Qcow2State *s, uint32_t nb, uint64_t dir_size,
                   uint64_t dir_offset)
{
    Qcow2Extension *x = find_ext(s);
    if (!x) {
        Qcow2Extension *v = realloc(s->unknown_exts,
                                    (s->nb_unknown_exts + 1) * sizeof(*v));
        if (!v) {
            return -ENOMEM;
        }
        s->unknown_exts = v;
        x = &v[s->nb_unknown_exts];
        x->data = calloc(1, QCOW2_BITMAP_EXT_SIZE);
        if (!x->data) {
            return -ENOMEM;
        }
        x->type = QCOW2_EXT_BITMAPS;
        x->len = QCOW2_BITMAP_EXT_SIZE;
        s->nb_unknown_exts++;
    }
    if (x->len < QCOW2_BITMAP_EXT_SIZE) {
        return -EINVAL;
    }
    x->len = QCOW2_BITMAP_EXT_SIZE;
    memset(x->data, 0, QCOW2_BITMAP_EXT_SIZE);
    qcow2_put_be32(x->data, nb);
    qcow2_put_be64(x->data + 8, dir_size);
    qcow2_put_be64(x->data + 16, dir_offset);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */

static int read_table(Qcow2State *s, uint64_t off, uint32_t entries,
                      uint64_t **out)
{
    uint64_t *t = calloc(entries ? entries : 1, 8);
    int ret;

    if (!t) {
        return -ENOMEM;
    }
    ret = entries ? block_pread(block_file(s->node), off, (size_t)entries * 8, t)
                  : 0;
    if (ret < 0) {
        free(t);
        return ret;
    }
    for (uint32_t i = 0; i < entries; i++) {
        t[i] = qcow2_be64((uint8_t *)&t[i]);
    }
    *out = t;
    return 0;
}

/* Opened for writing, new clusters come from the refcounts: a bitmap
 * cluster counted free would be handed out again and end up shared. */
static int check_allocated(Qcow2State *s, uint64_t off, uint64_t bytes,
                           const char *name, Error *err)
{
    uint64_t cs = s->cluster_size;
    int ret = 0;

    if (s->read_only || s->node->read_only) {
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    for (uint64_t c = off / cs; c < div_up(off + bytes, cs) && !ret; c++) {
        uint64_t rc = 0;
        ret = qcow2_get_refcount(s, c, &rc);
        if (ret < 0) {
            error_setf(err, -ret, "cannot read the refcount of a cluster of "
                       "bitmap '%s'", name);
        } else if (rc == 0) {
            ret = error_setf(err, EINVAL, "Bitmap '%s': cluster 0x%llx is "
                             "not allocated; repair the image with check "
                             "-r all", name, (unsigned long long)(c * cs));
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* An in-use bitmap is not loaded, but removing it frees the data
 * clusters its table names: each must be allocated now, or the allocator
 * could give it to someone else first. */
static int check_in_use_data(Qcow2State *s, const Qcow2BitmapEntry *e,
                             uint64_t flen, Error *err)
{
    uint64_t *t;
    int ret;

    if (s->read_only || s->node->read_only) {
        return 0;
    }
    ret = read_table(s, e->table_offset, e->table_size, &t);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the bitmap table of "
                          "'%s'", e->name);
    }
    for (uint32_t i = 0; i < e->table_size && ret >= 0; i++) {
        uint64_t d = t[i] & BT_OFFSET_MASK;
        if (d && !(t[i] & BT_RESERVED_MASK) && d % s->cluster_size == 0 &&
            d < flen) {
            ret = check_allocated(s, d, s->cluster_size, e->name, err);
        }
    }
    free(t);
    return ret;
}

/* Reads a bitmap's bits.  A table entry that cannot be right (reserved
 * bits, a data offset outside the file or unaligned) makes the bitmap
 * damaged (*damaged, returns 0): it is then treated as inconsistent, so
 * the image stays usable and the bitmap can be removed. */
static int load_data(Qcow2State *s, const Qcow2BitmapEntry *e,
                     BlockBitmap *bm, uint64_t flen, bool *damaged,
                     Error *err)
{
    uint64_t cs = s->cluster_size;
    uint64_t *t;
    uint8_t *buf;
    int ret = read_table(s, e->table_offset, e->table_size, &t);

    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the bitmap table of "
                          "'%s'", e->name);
    }
    buf = malloc(cs);
    if (!buf) {
        free(t);
        return error_setf(err, ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < e->table_size && ret >= 0; i++) {
        uint64_t off = t[i] & BT_OFFSET_MASK;
        if ((t[i] & BT_RESERVED_MASK) || (off && (t[i] & BT_ALL_ONES)) ||
            (off && (off % cs || off < cs || off >= flen ||
                     cs > flen - off))) {
            *damaged = true;
            break;
        } else if (!off) {
            if (t[i] & BT_ALL_ONES) {
                block_bitmap_set_bits(bm, (uint64_t)i * cs * 8,
                                      (uint64_t)(i + 1) * cs * 8);
            }
        } else if ((ret = check_allocated(s, off, cs, e->name, err)) >= 0) {
            ret = block_pread(block_file(s->node), off, cs, buf);
            if (ret < 0) {
                error_setf(err, -ret, "cannot read the data of bitmap '%s'",
                           e->name);
            } else {
                block_bitmap_set_bytes(bm, (uint64_t)i * cs, cs, buf);
            }
        }
    }
    free(buf);
    free(t);
    return ret < 0 ? ret : 0;
}

static uint64_t default_granularity(BlockNode *n)
{
    uint64_t cs = qcow2_state(n)->cluster_size;
    return cs < 4096 ? 4096 : cs > 65536 ? 65536 : cs;
}

static int can_add(BlockNode *n, const char *name, uint32_t gran_bits,
                   Error *err)
{
    Qcow2State *s = qcow2_state(n);
    BlockBitmaps *set = n->bitmaps;
    const char *why = NULL;
    uint64_t dir = 0;

    (void)gran_bits;
    if (s->version < 3) {
        why = "Cannot store dirty bitmaps in qcow2 v2 files";
    } else if (strlen(name) > BLOCK_BITMAP_MAX_NAME) {
        why = "Name length exceeds maximum (1023 characters)";
    } else if (set->n >= QCOW2_MAX_BITMAPS) {
        why = "Maximum number of persistent bitmaps is already reached";
    } else if (n->read_only || s->read_only) {
        why = "the image is opened read-only";
    } else {
        for (int i = 0; i < set->n; i++) {
            dir += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED +
                                  strlen(set->v[i]->name), 8);
        }
        dir += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED + strlen(name), 8);
        if (dir > QCOW2_MAX_BITMAP_DIR_SIZE) {
            why = "Not enough space in the bitmap directory";
        }
    }
    if (why) {
        /* A name too long to store is too long for one error line too. */
        bool cut = strlen(name) > 64;
        return error_setf(err, ENOSPC, "Can't make bitmap '%.*s%s' "
                          "persistent in '%s': %s", cut ? 60 : 64, name,
                          cut ? "..." : "", n->filename, why);
    }
    return 0;
}

static int store(BlockNode *n, Error *err);

static const BlockBitmapsFormat qcow2_bitmaps_format = {
    .store = store,
    .can_add = can_add,
    .default_granularity = default_granularity,
};

static void free_disk(Qcow2Bitmaps *d)
{
    if (d) {
        free(d->dir);
        free(d->flag_pos);
        qcow2_bitmap_entries_free(d->entries, d->nb);
        free(d);
    }
}

/* Rewrites the flags of the on-disk directory in place (only flags
 * differ, so a torn write still leaves a valid directory). */
static int write_flags(Qcow2State *s, Qcow2Bitmaps *d, const uint32_t *flags)
{
    for (uint32_t i = 0; i < d->nb; i++) {
        qcow2_put_be32(d->dir + d->flag_pos[i], flags[i]);
        d->entries[i].flags = flags[i];
    }
    int ret = block_pwrite(block_file(s->node), d->dir_offset, d->dir_size,
                           d->dir, 0);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    return ret < 0 ? ret : 0;
}

/* Reads and checks the extension and directory; *out NULL when the image
 * has no usable bitmaps extension. */
static int read_disk(Qcow2State *s, Qcow2Bitmaps **out, Error *err)
{
    Qcow2Extension *x = find_ext(s);
    int64_t flen = block_get_length(block_file(s->node));
    Qcow2Bitmaps *d;
    int ret;

    *out = NULL;
    if (!x || s->version < 3 ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    if (flen < 0) {
        return error_setf(err, (int)-flen, "cannot get the file length");
    }
    if (x->len != QCOW2_BITMAP_EXT_SIZE) {
        return error_setf(err, EINVAL, "bitmaps_ext: Invalid extension "
                          "length");
    }
    uint32_t nb = qcow2_be32(x->data);
    uint64_t dir_size = qcow2_be64(x->data + 8);
    uint64_t dir_off = qcow2_be64(x->data + 16);
    if (qcow2_be32(x->data + 4)) {
        return error_setf(err, EINVAL, "bitmaps_ext: Reserved field is not "
                          "zero");
    }
    if (nb == 0) {
        return error_setf(err, EINVAL, "bitmaps_ext: found bitmaps "
                          "extension with zero bitmaps");
    }
    if (nb > QCOW2_MAX_BITMAPS) {
        return error_setf(err, EINVAL, "bitmaps_ext: image has %u bitmaps, "
                          "exceeding the supported maximum of %u", nb,
                          QCOW2_MAX_BITMAPS);
    }
    if (dir_size > QCOW2_MAX_BITMAP_DIR_SIZE) {
        return error_setf(err, EINVAL, "bitmaps_ext: bitmap directory size "
                          "(%llu) exceeds the maximum supported size (%u)",
                          (unsigned long long)dir_size,
                          QCOW2_MAX_BITMAP_DIR_SIZE);
    }
    if (dir_off == 0 || dir_off % s->cluster_size ||
        dir_off >= (uint64_t)flen || dir_size > (uint64_t)flen - dir_off) {
        return error_setf(err, EINVAL, "bitmaps_ext: invalid bitmap "
                          "directory offset");
    }
    d = calloc(1, sizeof(*d));
    if (!d || !(d->dir = malloc(dir_size ? dir_size : 1)) ||
        !(d->flag_pos = calloc(nb, sizeof(*d->flag_pos)))) {
        free_disk(d);
        return error_setf(err, ENOMEM, "Out of memory");
    }
    d->dir_offset = dir_off;
    d->dir_size = dir_size;
    ret = block_pread(block_file(s->node), dir_off, dir_size, d->dir);
    if (ret < 0) {
        free_disk(d);
        return error_setf(err, -ret, "cannot read the bitmap directory: %s",
                          strerror(-ret));
    }
    Qcow2BitmapGeometry g = {
        .cluster_bits = s->cluster_bits,
        /* check reads tables past the end of the file as zeroes, as
         * qemu-img does; anything else refuses them */
        .file_size = (s->open_flags & BLOCK_O_CHECK) ? QCOW2_READ_LIMIT
                                                     : (uint64_t)flen,
        .virtual_size = s->size,
    };
    ret = qcow2_bitmaps_parse(d->dir, dir_size, nb, &g, &d->entries, err);
    if (ret < 0) {
        free_disk(d);
        return ret;
    }
    d->nb = nb;
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        d->flag_pos[i] = pos + 12;
        pos += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED +
                              (uint64_t)qcow2_be32(d->dir + pos + 20) +
                              qcow2_be16(d->dir + pos + 18), 8);
    }
    *out = d;
    return 0;
}

/* Opened for check, the bitmaps are only validated, the way any
 * qemu-img open (its check's too) loads them: a directory that does not
 * parse, or a table entry of a consistent (not in use) bitmap that
 * cannot be right or cannot be read, fails the open.  Check then says
 * "cannot check" (exit 1) for the images qemu-img cannot check either,
 * instead of calling them corrupt. */
static int check_mode_bitmaps(Qcow2State *s, Error *err)
{
    Qcow2Bitmaps *d;
    int ret = read_disk(s, &d, err);
    if (ret < 0 || !d) {
        return ret;
    }
    for (uint32_t i = 0; i < d->nb && ret >= 0; i++) {
        const Qcow2BitmapEntry *e = &d->entries[i];
        uint64_t bytes = (uint64_t)e->table_size * 8;
        uint64_t *t;
        if (e->flags & QCOW2_BME_IN_USE) {
            continue;
        }
        if (e->table_offset > QCOW2_READ_LIMIT ||
            bytes > QCOW2_READ_LIMIT - e->table_offset ||
            read_table(s, e->table_offset, e->table_size, &t) < 0) {
            ret = error_setf(err, EIO, "Could not read bitmap_table table "
                             "from image for bitmap '%s': %s", e->name,
                             strerror(EIO));
            break;
        }
        for (uint32_t k = 0; k < e->table_size && ret >= 0; k++) {
            uint64_t off = t[k] & BT_OFFSET_MASK;
            if ((t[k] & BT_RESERVED_MASK) ||
                (off && ((t[k] & BT_ALL_ONES) || off % s->cluster_size))) {
                ret = error_setf(err, EINVAL, "Could not read bitmap_table "
                                 "table from image for bitmap '%s': %s",
                                 e->name, strerror(EINVAL));
            } else if (off > QCOW2_READ_LIMIT - s->cluster_size) {
                ret = error_setf(err, EIO, "Could not read bitmap '%s' from "
                                 "image: %s", e->name, strerror(EIO));
            }
        }
        free(t);
    }
    free_disk(d);
    return ret < 0 ? ret : 0;
}

int qcow2_bitmaps_open(BlockNode *n, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    Qcow2Bitmaps *d = NULL;
    int ret;

    /* check and repair look at the clusters, not at the bitmaps. */
    if (s->open_flags & BLOCK_O_CHECK) {
        return check_mode_bitmaps(s, err);
    }
    ret = read_disk(s, &d, err);
    if (ret < 0) {
        return ret;
    }
    if (!d && !n->read_only) {
        /* A stale extension (autoclear bit off) is dropped at the next
         * header write, as QEMU does; its clusters leak. */
        drop_ext(s);
    }
    n->bitmaps = block_bitmaps_new(&qcow2_bitmaps_format);
    if (!n->bitmaps) {
        free_disk(d);
        return error_setf(err, ENOMEM, "Out of memory");
    }
    s->bitmaps = d;
    if (!d) {
        return 0;
    }
    int64_t flen = block_get_length(block_file(s->node));
    for (uint32_t i = 0; i < d->nb; i++) {
        const Qcow2BitmapEntry *e = &d->entries[i];
        bool in_use = e->flags & QCOW2_BME_IN_USE;
        BlockBitmap *bm;
        ret = check_allocated(s, e->table_offset,
                              (uint64_t)e->table_size * 8, e->name, err);
        if (ret >= 0) {
            ret = block_bitmaps_append(n->bitmaps, e->name, e->gran_bits,
                                       s->size, e->flags & QCOW2_BME_AUTO,
                                       in_use, &bm, err);
        }
        bool damaged = false;
        if (ret >= 0 && !in_use) {
            ret = load_data(s, e, bm, (uint64_t)flen, &damaged, err);
        }
        if (ret >= 0 && (in_use || damaged)) {
            ret = check_in_use_data(s, e, (uint64_t)flen, err);
        }
        if (ret < 0) {
            goto fail;
        }
        bm->stored_offset = e->table_offset;
        bm->stored_size = e->table_size;
        bm->stored_flags = e->flags;
        if (damaged) {
            /* Stays flagged in use on disk, where QEMU sees it too. */
            block_bitmap_make_inconsistent(n->bitmaps, bm);
            bm->stored_flags |= QCOW2_BME_IN_USE;
        }
    }
    if (!n->read_only && !s->read_only) {
        uint32_t *flags = calloc(d->nb, sizeof(*flags));
        bool any = false;
        if (!flags) {
            ret = error_setf(err, ENOMEM, "Out of memory");
            goto fail;
        }
        for (uint32_t i = 0; i < d->nb; i++) {
            flags[i] = d->entries[i].flags;
            any |= !(flags[i] & QCOW2_BME_IN_USE);
            flags[i] |= QCOW2_BME_IN_USE;
        }
        ret = any ? write_flags(s, d, flags) : 0;
        free(flags);
        if (ret < 0) {
            error_setf(err, -ret, "cannot mark the bitmaps in use: %s",
                       strerror(-ret));
            goto fail;
        }
        d->in_use_set = any;
    }
    return 0;

fail:
    block_bitmaps_free(n->bitmaps);
    n->bitmaps = NULL;
    free_disk(d);
    s->bitmaps = NULL;
    return ret;
}

/* ------------------------------------------------------------------ */
/* Storing                                                             */

/* Sets of cluster offsets for freeing the old state.  Past VEC_MAX
 * entries a set is "overflowed" and nothing is freed (a leak is always
 * allowed; a wrong free is not). */
#define VEC_MAX (4u << 20)

typedef struct U64Vec {
    uint64_t *v;
    size_t n, cap;
    bool overflow;
} U64Vec;

static void vec_push(U64Vec *a, uint64_t x)
{
    if (a->overflow) {
        return;
    }
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        uint64_t *v = cap > VEC_MAX ? NULL : realloc(a->v, cap * sizeof(*v));
        if (!v) {
            a->overflow = true;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
}

static void vec_push_range(U64Vec *a, uint64_t off, uint64_t bytes,
                           uint64_t cs)
{
    for (uint64_t c = 0; c < div_up(bytes, cs) && !a->overflow; c++) {
        vec_push(a, off + c * cs);
    }
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void vec_sort_unique(U64Vec *a)
{
    size_t k = 0;
    if (!a->n) {
        return;
    }
    qsort(a->v, a->n, sizeof(uint64_t), u64_cmp);
    for (size_t i = 0; i < a->n; i++) {
        if (k == 0 || a->v[k - 1] != a->v[i]) {
            a->v[k++] = a->v[i];
        }
    }
    a->n = k;
}

static bool vec_has(const U64Vec *a, uint64_t x)
{
    return a->n && bsearch(&x, a->v, a->n, sizeof(uint64_t), u64_cmp);
}

/* Writes bm's bits as new data clusters and a new table; *table_off and
 * *table_size describe them.  Needs s->lock. */
static int write_bitmap(Qcow2State *s, BlockBitmap *bm, uint64_t *table_off,
                        uint32_t *table_size, U64Vec *fresh)
{
    uint64_t cs = s->cluster_size;
    uint64_t bytes = block_bitmap_bytes(bm);
    uint64_t entries = div_up(bytes, cs);
    uint64_t tclusters = div_up(entries * 8, cs);
    uint64_t nonzero = 0;
    uint64_t *t = calloc(entries ? entries : 1, 8);
    uint8_t *buf = malloc(cs > tclusters * cs ? cs : tclusters * cs);
    int64_t data = 0, toff;
    int ret = 0;

    if (!t || !buf) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < entries; i++) {
        nonzero += !block_bitmap_bytes_zero(bm, i * cs, cs);
    }
    if (nonzero) {
        data = qcow2_alloc_clusters(s, nonzero);
        if (data < 0) {
            ret = (int)data;
            goto out;
        }
        vec_push_range(fresh, (uint64_t)data, nonzero * cs, cs);
    }
    uint64_t next = (uint64_t)data;
    for (uint64_t i = 0; i < entries && ret >= 0; i++) {
        if (block_bitmap_bytes_zero(bm, i * cs, cs)) {
            continue;
        }
        block_bitmap_get_bytes(bm, i * cs, cs, buf);
        ret = block_pwrite(block_file(s->node), next, cs, buf, 0);
        t[i] = next;
        next += cs;
    }
    if (ret < 0) {
        goto out;
    }
    toff = qcow2_alloc_clusters(s, tclusters ? tclusters : 1);
    if (toff < 0) {
        ret = (int)toff;
        goto out;
    }
    vec_push_range(fresh, (uint64_t)toff, tclusters ? tclusters * cs : cs,
                   cs);
    memset(buf, 0, tclusters ? tclusters * cs : cs);
    for (uint64_t i = 0; i < entries; i++) {
        qcow2_put_be64(buf + i * 8, t[i]);
    }
    ret = block_pwrite(block_file(s->node), (uint64_t)toff,
                       tclusters ? tclusters * cs : cs, buf, 0);
    *table_off = (uint64_t)toff;
    *table_size = (uint32_t)entries;
out:
    free(t);
    free(buf);
    return ret < 0 ? ret : 0;
}

/* Clusters the image uses for other metadata: a hostile bitmap table may
 * name any of them, and freeing one would corrupt the image. */
static void collect_metadata(Qcow2State *s, U64Vec *meta)
{
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t e = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (e) {
            vec_push(meta, e);
        }
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t e = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (e) {
            vec_push(meta, e);
        }
    }
    vec_push_range(meta, 0, s->cluster_size, s->cluster_size);
    vec_push_range(meta, s->l1_table_offset, (uint64_t)s->l1_size * 8,
                   s->cluster_size);
    vec_push_range(meta, s->refcount_table_offset,
                   s->refcount_table_size * 8, s->cluster_size);
    vec_push_range(meta, s->snapshots_offset, s->snapshots_size,
                   s->cluster_size);
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        vec_push_range(meta, s->snapshots[i].l1_table_offset,
                       (uint64_t)s->snapshots[i].l1_size * 8,
                       s->cluster_size);
    }
    if (s->crypto_length) {
        vec_push_range(meta, s->crypto_offset, s->crypto_length,
                       s->cluster_size);
    }
}

/* Drops the image's references to the old directory and to the tables
 * and data of old bitmaps the new directory no longer names (after the
 * header switched).  Each cluster is freed at most once, and only when it
 * is in use and nothing else the image knows of (fresh: what this store
 * allocated) sits there. */
static int free_old(Qcow2State *s, BlockBitmaps *set, Qcow2Bitmaps *old,
                    U64Vec *fresh)
{
    U64Vec kept = { 0 }, meta = { 0 }, out = { 0 };
    uint64_t cs = s->cluster_size;
    int64_t flen = block_get_length(block_file(s->node));
    int ret = 0;

    for (int j = 0; j < set->n; j++) {
        vec_push(&kept, set->v[j]->stored_offset);
    }
    vec_sort_unique(&kept);
    collect_metadata(s, &meta);
    for (size_t i = 0; i < fresh->n; i++) {
        vec_push(&meta, fresh->v[i]);
    }
    /* What the new directory names stays, even where an old table (of a
     * damaged in-use bitmap) names it too. */
    for (int j = 0; j < set->n && !meta.overflow; j++) {
        const BlockBitmap *bm = set->v[j];
        uint64_t *t;
        vec_push_range(&meta, bm->stored_offset,
                       (uint64_t)bm->stored_size * 8, cs);
        if (read_table(s, bm->stored_offset, bm->stored_size, &t) < 0) {
            meta.overflow = true;       /* unknown: free nothing */
            break;
        }
        for (uint32_t k = 0; k < bm->stored_size; k++) {
            if (t[k] & BT_OFFSET_MASK) {
                vec_push(&meta, t[k] & BT_OFFSET_MASK);
            }
        }
        free(t);
    }
    vec_sort_unique(&meta);
    for (uint32_t i = 0; i < old->nb && !out.overflow; i++) {
        const Qcow2BitmapEntry *e = &old->entries[i];
        uint64_t *t;
        if (vec_has(&kept, e->table_offset)) {
            continue;
        }
        if (read_table(s, e->table_offset, e->table_size, &t) < 0) {
            continue;   /* it leaks */
        }
        /* One impossible entry and the whole table is garbage: what it
         * names may belong to anyone (guest data is not in meta), so all
         * of it leaks rather than risk a wrong free. */
        bool trusted = true;
        for (uint32_t k = 0; k < e->table_size && trusted; k++) {
            uint64_t d = t[k] & BT_OFFSET_MASK;
            trusted = !(t[k] & BT_RESERVED_MASK) &&
                      !(d && ((t[k] & BT_ALL_ONES) || d % cs || d < cs ||
                              d >= (uint64_t)flen));
        }
        if (trusted) {
            vec_push_range(&out, e->table_offset,
                           (uint64_t)e->table_size * 8, cs);
            for (uint32_t k = 0; k < e->table_size; k++) {
                if (t[k] & BT_OFFSET_MASK) {
                    vec_push(&out, t[k] & BT_OFFSET_MASK);
                }
            }
        }
        free(t);
    }
    vec_push_range(&out, old->dir_offset, old->dir_size, cs);
    if (kept.overflow || meta.overflow || out.overflow || fresh->overflow ||
        flen < 0) {
        goto done;      /* everything old leaks */
    }
    vec_sort_unique(&out);
    for (size_t i = 0; i < out.n && ret >= 0; i++) {
        uint64_t c = out.v[i], rc = 0;
        if (c >= (uint64_t)flen || vec_has(&meta, c) ||
            qcow2_get_refcount(s, c >> s->cluster_bits, &rc) < 0 || rc == 0) {
            continue;
        }
        ret = qcow2_free_clusters_deferred(s, c, 1);
    }
done:
    free(kept.v);
    free(meta.v);
    free(out.v);
    return ret;
}

static bool anything_changed(BlockBitmaps *set)
{
    if (set->set_changed) {
        return true;
    }
    for (int i = 0; i < set->n; i++) {
        if (__atomic_load_n(&set->v[i]->changed, __ATOMIC_RELAXED)) {
            return true;
        }
    }
    return false;
}

/* Flags a stored bitmap gets. */
static uint32_t flags_of(const BlockBitmap *bm)
{
    if (bm->inconsistent) {
        return bm->stored_flags;
    }
    return bm->enabled ? QCOW2_BME_AUTO : 0;
}

/* Nothing but our IN_USE flags to take back: in place. */
static int clear_in_use(Qcow2State *s, BlockBitmaps *set, Qcow2Bitmaps *d)
{
    uint32_t *flags = calloc(d->nb ? d->nb : 1, sizeof(*flags));
    if (!flags) {
        return -ENOMEM;
    }
    /* Unchanged set: set->v[i] is still the bitmap of entry i. */
    for (uint32_t i = 0; i < d->nb; i++) {
        BlockBitmap *bm = i < (uint32_t)set->n ? set->v[i] : NULL;
        flags[i] = bm && !strcmp(bm->name, d->entries[i].name)
                       ? flags_of(bm) : d->entries[i].flags;
    }
    int ret = write_flags(s, d, flags);
    free(flags);
    if (ret >= 0) {
        d->in_use_set = false;
    }
    return ret;
}

static int build_dir(BlockBitmaps *set, uint8_t **out, uint64_t *size)
{
    uint64_t len = 0;
    for (int i = 0; i < set->n; i++) {
        len += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED +
                              strlen(set->v[i]->name), 8);
    }
    uint8_t *dir = calloc(1, len ? len : 1);
    if (!dir) {
        return -ENOMEM;
    }
    uint64_t pos = 0;
    for (int i = 0; i < set->n; i++) {
        const BlockBitmap *bm = set->v[i];
        size_t nl = strlen(bm->name);
        uint8_t *e = dir + pos;
        qcow2_put_be64(e, bm->stored_offset);
        qcow2_put_be32(e + 8, bm->stored_size);
        qcow2_put_be32(e + 12, flags_of(bm) & ~QCOW2_BME_EXTRA_COMPAT);
        e[16] = QCOW2_BT_DIRTY_TRACKING;
        e[17] = (uint8_t)bm->gran_bits;
        qcow2_put_be16(e + 18, (uint16_t)nl);
        memcpy(e + QCOW2_BITMAP_ENTRY_FIXED, bm->name, nl);
        pos += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED + nl, 8);
    }
    *out = dir;
    *size = len;
    return 0;
}

/* The in-memory state becomes the on-disk state: d is replaced by what
 * was just written (dir, which is taken over). */
static int remember(Qcow2State *s, BlockBitmaps *set, uint8_t *dir,
                    uint64_t dir_size, uint64_t dir_off)
{
    Qcow2Bitmaps *d = NULL;
    free_disk(s->bitmaps);
    s->bitmaps = NULL;
    if (set->n == 0) {
        free(dir);
        return 0;
    }
    d = calloc(1, sizeof(*d));
    if (d) {
        d->entries = calloc((size_t)set->n, sizeof(*d->entries));
        d->flag_pos = calloc((size_t)set->n, sizeof(*d->flag_pos));
    }
    if (!d || !d->entries || !d->flag_pos) {
        free(dir);
        if (d) {
            free(d->entries);
            free(d->flag_pos);
            free(d);
        }
        return -ENOMEM;
    }
    d->dir = dir;
    d->dir_size = dir_size;
    d->dir_offset = dir_off;
    uint64_t pos = 0;
    for (int i = 0; i < set->n; i++) {
        BlockBitmap *bm = set->v[i];
        Qcow2BitmapEntry *e = &d->entries[i];
        e->name = strdup(bm->name);
        e->table_offset = bm->stored_offset;
        e->table_size = bm->stored_size;
        e->flags = flags_of(bm);
        e->gran_bits = (uint8_t)bm->gran_bits;
        d->flag_pos[i] = pos + 12;
        d->nb++;
        pos += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED + strlen(bm->name), 8);
        if (!e->name) {
            free_disk(d);
            return -ENOMEM;
        }
    }
    s->bitmaps = d;
    return 0;
}

static int store_locked(BlockNode *n, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    BlockBitmaps *set = n->bitmaps;
    Qcow2Bitmaps *old = s->bitmaps;
    uint64_t *saved = NULL;
    U64Vec fresh = { 0 };
    uint8_t *dir = NULL;
    uint64_t dir_size = 0;
    int64_t dir_off = 0;
    int ret = 0;

    if (!anything_changed(set)) {
        if (old && old->in_use_set) {
            ret = clear_in_use(s, set, old);
            if (ret < 0) {
                return error_setf(err, -ret, "cannot update the bitmap "
                                  "directory");
            }
        }
        return 0;
    }
    /* Old locations, to put back if we fail before the switch. */
    saved = calloc((size_t)set->n + 1, 2 * sizeof(*saved));
    if (!saved) {
        return error_setf(err, ENOMEM, "Out of memory");
    }
    for (int i = 0; i < set->n; i++) {
        saved[2 * i] = set->v[i]->stored_offset;
        saved[2 * i + 1] = set->v[i]->stored_size;
    }
    for (int i = 0; i < set->n && ret >= 0; i++) {
        BlockBitmap *bm = set->v[i];
        if (bm->inconsistent || (!bm->changed && bm->stored_offset)) {
            continue;
        }
        ret = write_bitmap(s, bm, &bm->stored_offset, &bm->stored_size,
                           &fresh);
        if (ret < 0) {
            error_setf(err, -ret, "cannot write bitmap '%s'", bm->name);
        }
    }
    if (ret >= 0 && set->n) {
        ret = build_dir(set, &dir, &dir_size);
        if (ret >= 0) {
            dir_off = qcow2_alloc_clusters(s, div_up(dir_size,
                                                     s->cluster_size));
            ret = dir_off < 0 ? (int)dir_off : 0;
        }
        if (ret >= 0) {
            vec_push_range(&fresh, (uint64_t)dir_off, dir_size,
                           s->cluster_size);
        }
        if (ret >= 0) {
            ret = block_pwrite(block_file(s->node), (uint64_t)dir_off, dir_size,
                               dir, 0);
        }
        if (ret < 0) {
            error_setf(err, -ret, "cannot write the bitmap directory: %s",
                       strerror(-ret));
        }
    }
    /* The new clusters and their refcounts reach the disk before the
     * header points at them. */
    if (ret >= 0) {
        ret = qcow2_flush_caches(s);
        if (ret < 0) {
            error_setf(err, -ret, "cannot flush the bitmaps: %s",
                       strerror(-ret));
        }
    }
    if (ret >= 0) {
        uint64_t ac = s->autoclear_features;
        if (set->n) {
            ret = set_ext(s, (uint32_t)set->n, dir_size, (uint64_t)dir_off);
            s->autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
        } else {
            drop_ext(s);
            s->autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
        }
        if (ret >= 0) {
            ret = qcow2_write_header(s, err);
        } else {
            error_setf(err, -ret, "cannot update the bitmaps extension: %s",
                       strerror(-ret));
        }
        if (ret < 0) {
            s->autoclear_features = ac;
            if (old) {
                set_ext(s, old->nb, old->dir_size, old->dir_offset);
            } else {
                drop_ext(s);
            }
        }
    }
    if (ret < 0) {
        /* The new clusters leak; the image still holds the old state. */
        for (int i = 0; i < set->n; i++) {
            set->v[i]->stored_offset = saved[2 * i];
            set->v[i]->stored_size = (uint32_t)saved[2 * i + 1];
        }
        free(saved);
        free(dir);
        free(fresh.v);
        return ret;
    }
    free(saved);

    /* The header names the new state: the old one can go.  A failure
     * from here on only leaks clusters. */
    int fret = old ? free_old(s, set, old, &fresh) : 0;
    free(fresh.v);
    for (int i = 0; i < set->n; i++) {
        set->v[i]->changed = false;
        set->v[i]->stored_flags = flags_of(set->v[i]);
    }
    set->set_changed = false;
    ret = remember(s, set, dir, dir_size, (uint64_t)dir_off);
    if (fret >= 0) {
        fret = qcow2_flush_caches(s);
    }
    if (fret < 0 && !error_is_set(err)) {
        block_report(BLOCK_REPORT_WARNING, "could not free the old bitmap "
                     "clusters (%s); they leak", strerror(-fret));
    }
    return ret < 0 ? error_setf(err, -ret, "Out of memory") : 0;
}

static int store(BlockNode *n, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret;

    if (s->read_only) {
        return error_setf(err, EACCES, "cannot store bitmaps: the image is "
                          "read-only");
    }
    pthread_mutex_lock(&s->lock);
    pthread_rwlock_rdlock(&n->bitmaps->lock);
    ret = store_locked(n, err);
    pthread_rwlock_unlock(&n->bitmaps->lock);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

void qcow2_bitmaps_close(BlockNode *n)
{
    Qcow2State *s = qcow2_state(n);

    if (n->bitmaps && !n->read_only && !s->read_only) {
        Error err = { 0 };
        pthread_rwlock_rdlock(&n->bitmaps->lock);
        if (store_locked(n, &err) < 0) {
            block_report(BLOCK_REPORT_ERROR, "%s: could not store the dirty "
                         "bitmaps: %s", n->filename, err.msg);
        }
        pthread_rwlock_unlock(&n->bitmaps->lock);
    }
    block_bitmaps_free(n->bitmaps);
    n->bitmaps = NULL;
    free_disk(s->bitmaps);
    s->bitmaps = NULL;
}

bool qcow2_has_bitmaps(Qcow2State *s)
{
    BlockBitmaps *set = s->node ? s->node->bitmaps : NULL;
    if (set) {
        return set->n > 0;
    }
    return (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) && find_ext(s);
}

json_t *qcow2_bitmaps_info(Qcow2State *s)
{
    Qcow2Bitmaps *d = s->bitmaps;
    if (!d || d->nb == 0) {
        return NULL;
    }
    json_t *list = json_array();
    for (uint32_t i = 0; i < d->nb; i++) {
        const Qcow2BitmapEntry *e = &d->entries[i];
        json_t *fl = json_array();
        if (e->flags & QCOW2_BME_IN_USE) {
            json_array_append_new(fl, json_string("in-use"));
        }
        if (e->flags & QCOW2_BME_AUTO) {
            json_array_append_new(fl, json_string("auto"));
        }
        json_t *b = json_object();
        json_object_set_new(b, "flags", fl);
        json_object_set_new(b, "name", json_string(e->name));
        json_object_set_new(b, "granularity",
                            json_integer((json_int_t)1 << e->gran_bits));
        json_array_append_new(list, b);
    }
    return list;
}
