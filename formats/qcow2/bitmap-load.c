/*
 * bitmap-load.c - loading qcow2 persistent dirty bitmaps at open, and
 * what the block layer asks of the format about them (can a bitmap be
 * added, its default granularity, the info list).
 *
 * What we keep:
 *  - a bitmap's bits are bounded by BLOCK_BITMAP_MAX_BYTES, and every
 *    table entry is checked as it is read; one that cannot be right makes
 *    the bitmap inconsistent, never the image unusable;
 *  - opened writable, every cluster a bitmap uses must be allocated (else
 *    the allocator could hand it out again), and every bitmap we loaded
 *    is flagged IN_USE on disk (in place, flushed) before the first
 *    guest write, so a crash leaves it inconsistent rather than silently
 *    stale; not when opened with BLOCK_O_BITMAPS_ONLY, where no guest
 *    write can happen;
 *  - a bitmap found IN_USE at open ("inconsistent") is never loaded or
 *    changed; its entry is carried over verbatim until it is removed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/bitmap-int.h"

/* ------------------------------------------------------------------ */
/* Loading                                                             */

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
    ret = qcow2_read_table64(s, e->table_offset, e->table_size, &t);
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
    int ret = qcow2_read_table64(s, e->table_offset, e->table_size, &t);

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

static const BlockBitmapsFormat qcow2_bitmaps_format = {
    .store = qcow2_bitmaps_store,
    .can_add = can_add,
    .default_granularity = default_granularity,
};

/* Reads and checks the extension and directory; *out NULL when the image
 * has no usable bitmaps extension. */
static int read_disk(Qcow2State *s, Qcow2Bitmaps **out, Error *err)
{
    Qcow2Extension *x = qcow2_find_ext(s, QCOW2_EXT_BITMAPS);
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
        qcow2_bitmaps_free_disk(d);
        return error_setf(err, ENOMEM, "Out of memory");
    }
    d->dir_offset = dir_off;
    d->dir_size = dir_size;
    ret = block_pread(block_file(s->node), dir_off, dir_size, d->dir);
    if (ret < 0) {
        qcow2_bitmaps_free_disk(d);
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
        qcow2_bitmaps_free_disk(d);
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
            qcow2_read_table64(s, e->table_offset, e->table_size, &t) < 0) {
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
    qcow2_bitmaps_free_disk(d);
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
        qcow2_bitmaps_drop_ext(s);
    }
    n->bitmaps = block_bitmaps_new(&qcow2_bitmaps_format);
    if (!n->bitmaps) {
        qcow2_bitmaps_free_disk(d);
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
    /* Opened only to change bitmaps, no guest write can make them stale,
     * so they stay consistent on disk should the process die. */
    if (!n->read_only && !s->read_only &&
        !(s->open_flags & BLOCK_O_BITMAPS_ONLY)) {
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
        ret = any ? qcow2_bitmaps_write_flags(s, d, flags) : 0;
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
    qcow2_bitmaps_free_disk(d);
    s->bitmaps = NULL;
    return ret;
}

bool qcow2_has_bitmaps(Qcow2State *s)
{
    BlockBitmaps *set = s->node ? s->node->bitmaps : NULL;
    if (set) {
        return set->n > 0;
    }
    return (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) &&
           qcow2_find_ext(s, QCOW2_EXT_BITMAPS);
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
