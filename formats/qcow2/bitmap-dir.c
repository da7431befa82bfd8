/*
 * bitmap-dir.c - the qcow2 bitmaps extension on disk: the directory
 * (parsed and validated as a whole), the extension that names it in the
 * header, the bitmap tables, and the directory's flags rewritten in
 * place.
 *
 * Everything read from disk is validated before it sizes an allocation:
 * the directory by qcow2_bitmaps_parse (pure, callable on any buffer:
 * the fuzzer does), with memory bounded by its size.  Flags are the only
 * bytes rewritten in place, so a torn write still leaves a valid
 * directory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/bitmap-int.h"

void qcow2_bitmap_entries_free(Qcow2BitmapEntry *v, uint32_t nb)
{
    for (uint32_t i = 0; v && i < nb; i++) {
        free(v[i].name);
    }
    free(v);
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

void qcow2_bitmaps_drop_ext(Qcow2State *s)
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

int qcow2_bitmaps_set_ext(Qcow2State *s, uint32_t nb, uint64_t dir_size,
                          uint64_t dir_offset)
{
    Qcow2Extension *x = qcow2_find_ext(s, QCOW2_EXT_BITMAPS);
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

void qcow2_bitmaps_free_disk(Qcow2Bitmaps *d)
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
int qcow2_bitmaps_write_flags(Qcow2State *s, Qcow2Bitmaps *d,
                              const uint32_t *flags)
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
