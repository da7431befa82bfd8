/*
 * offline.c - the disks of a backup are images imgtool opens itself
 * (files, volumes, URLs), not in use by anyone else (source.h says what
 * each step does; rotate.c how the bitmaps rotate crash-safely).
 *
 * A qcow2 image that can hold bitmaps is opened read-write for its
 * bitmaps only (BLOCK_O_BITMAPS_ONLY), so it is locked against writers
 * for the whole backup, and a kill never leaves a bitmap flagged in use.
 * Anything else (raw, LUKS, qcow2 v2, an image we may not write) is
 * opened read-only and compared by checksums.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backup/rotate.h"
#include "backup/source.h"

static int off_open(BkSession *s, Error *err)
{
    const BackupOptions *o = s->o;
    for (int i = 0; i < s->ndisks; i++) {
        BkSrcDisk *d = &s->disks[i];
        d->node = o->open(o->open_opaque, d->name,
                          BLOCK_O_RDWR | BLOCK_O_BITMAPS_ONLY, err);
        if (!d->node && (err->code == EACCES || err->code == EROFS ||
                         err->code == EPERM)) {
            /* Not ours to change: no bitmaps, checksums only. */
            error_clear(err);
            d->node = o->open(o->open_opaque, d->name, 0, err);
        }
        if (!d->node) {
            return -(err->code ? err->code : EIO);
        }
        int64_t len = block_get_length(d->node);
        if (len < 0) {
            return error_setf(err, (int)-len, "%s: cannot get its size: %s",
                              d->name, strerror((int)-len));
        }
        d->size = (uint64_t)len;
        d->can_bitmaps = !block_node_read_only(d->node) &&
                         block_bitmaps_persistent(d->node);
        d->persistent = d->can_bitmaps;
        d->format = strdup(block_node_format(d->node));
        if (!d->format) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    return 0;
}

static int off_bitmap_usable(BkSession *s, int i, const char *base_id,
                             char **reason, Error *err)
{
    return bk_bitmap_usable(s->disks[i].node, s->r->uuid, base_id, reason,
                            err);
}

static int off_begin(BkSession *s, const char *new_id,
                     const char *const *use_bitmap, const char *const *keep,
                     Error *err)
{
    for (int i = 0; i < s->ndisks; i++) {
        BkSrcDisk *d = &s->disks[i];
        if (!d->can_bitmaps) {
            continue;
        }
        int ret = bk_bitmaps_begin(d->node, s->r->uuid, new_id,
                                   1ull << BK_CLUSTER_BITS, keep + BK_KEEP * i,
                                   BK_KEEP, err);
        if (ret < 0) {
            return ret;
        }
        if (use_bitmap[i]) {
            BkBitmapSelect *sel = calloc(1, sizeof(*sel));
            char *name = bk_bitmap_name(s->r->uuid, use_bitmap[i]);
            if (!sel || !name) {
                free(sel);
                free(name);
                return error_setf(err, ENOMEM, "out of memory");
            }
            sel->node = d->node;
            sel->name = name;
            d->priv = sel;
            d->select = bk_bitmap_select;
            d->select_opaque = sel;
        }
    }
    return 0;
}

static int off_finish(BkSession *s, const char *const *keep, Error *err)
{
    /* Old bitmaps went in begin's store (rotate.c). */
    return 0;
}

static void off_abort(BkSession *s, const char *new_id)
{
    for (int i = 0; i < s->ndisks; i++) {
        BkSrcDisk *d = &s->disks[i];
        if (!d->can_bitmaps) {
            continue;
        }
        /* The bitmap this run added goes; the base's never changed. */
        char *name = bk_bitmap_name(s->r->uuid, new_id);
        Error e = { 0 };
        if (name && block_bitmap_remove(d->node, name, &e) == 0) {
            block_bitmaps_store(d->node, &e);
        }
        free(name);
    }
}

static void off_close(BkSession *s)
{
    for (int i = 0; i < s->ndisks; i++) {
        BkSrcDisk *d = &s->disks[i];
        BkBitmapSelect *sel = d->priv;
        if (sel) {
            free((char *)sel->name);
            free(sel);
        }
        block_close(d->node);
        free(d->format);
    }
}

const BkSourceOps bk_offline_source = {
    .origin = "offline",
    .open = off_open,
    .bitmap_usable = off_bitmap_usable,
    .begin = off_begin,
    .finish = off_finish,
    .abort = off_abort,
    .close = off_close,
};
