/*
 * rotate.c - the dirty bitmaps a repository keeps in a source image
 * (offline backups), and their rotation.
 *
 * Our bitmaps are named "imgtool-backup.REPO-UUID.POINT-ID": the changes
 * since that point.  After a point P is complete the image holds P's
 * bitmap (for the next incremental), the bitmap of P's chain's full (for
 * differentials), and at most the one of the point before P; nothing
 * else of ours.
 *
 * A backup rotates in one store, crash-safe (formats/qcow2/bitmap.c
 * writes a new directory and switches the header in one write), with the
 * image opened BLOCK_O_BITMAPS_ONLY so no bitmap is ever flagged in use
 * on disk: before any data is read it adds the new point's bitmap
 * (enabled, empty) and removes ours that no point can need any more
 * (all but the newest point's, the base's and the chain's full's).  The
 * base's bitmap stays as it is, recording, until a later backup no
 * longer needs it: one store per backup instead of two, and an image
 * whose bitmaps are all ours costs one bitmap more between backups.
 * A power cut or a kill anywhere leaves one of: nothing changed; the new
 * bitmap added but no point (the next run finds the base's bitmap
 * intact, since it never stopped recording, and removes the stray one);
 * the point listed (the next run uses its bitmap).  Never a point whose
 * bitmap is missing changes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/rotate.h"

char *bk_bitmap_name(const char *uuid, const char *id)
{
    char *s = NULL;
    return asprintf(&s, "%s%s.%s", BK_BITMAP_PREFIX, uuid, id) < 0 ? NULL
                                                                   : s;
}

/* The point id of one of our bitmaps, or NULL. */
static const char *bitmap_point(const char *uuid, const char *name)
{
    size_t pl = strlen(BK_BITMAP_PREFIX), ul = strlen(uuid);
    if (strncmp(name, BK_BITMAP_PREFIX, pl) != 0 ||
        strncmp(name + pl, uuid, ul) != 0 || name[pl + ul] != '.') {
        return NULL;
    }
    return name + pl + ul + 1;
}

/* Whether point pid is one of the nkeep points still in the chain. */
static bool kept_point(const char *pid, const char *const *keep, int nkeep)
{
    for (int k = 0; k < nkeep; k++) {
        if (keep[k] && strcmp(pid, keep[k]) == 0) {
            return true;
        }
    }
    return false;
}

int bk_bitmap_usable(BlockNode *src, const char *uuid, const char *id,
                     char **reason, Error *err)
{
    BlockBitmapInfo *v = NULL;
    int n = 0, r = 0;
    char *want = bk_bitmap_name(uuid, id);
    const char *older = NULL;
    const BlockBitmapInfo *found = NULL;

    *reason = NULL;
    if (!want || block_bitmap_list(src, &v, &n) < 0) {
        free(want);
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        const char *pid = bitmap_point(uuid, v[i].name);
        if (strcmp(v[i].name, want) == 0) {
            found = &v[i];
        } else if (pid && strcmp(pid, id) < 0 &&
                   (!older || strcmp(pid, older) > 0)) {
            older = pid;
        }
    }
    if (found && found->inconsistent) {
        r = asprintf(reason, "its bitmap %s is inconsistent (the image was "
                     "not closed cleanly)", want);
    } else if (found && !found->enabled) {
        r = asprintf(reason, "its bitmap %s is disabled, so it did not "
                     "record every change", want);
    } else if (!found && older) {
        r = asprintf(reason, "its bitmaps are older than point %s (the "
                     "newest is from point %s: was the image restored or "
                     "reverted?)", id, older);
    } else if (!found) {
        r = asprintf(reason, "its bitmap %s is missing", want);
    }
    block_bitmap_list_free(v, n);
    free(want);
    if (r < 0) {
        *reason = NULL;
        return error_setf(err, ENOMEM, "out of memory");
    }
    return *reason ? 0 : 1;
}

int bk_bitmaps_begin(BlockNode *src, const char *uuid, const char *new_id,
                     uint64_t granularity, const char *const *keep,
                     int nkeep, Error *err)
{
    BlockBitmapInfo *v = NULL;
    int n = 0;
    char *name = bk_bitmap_name(uuid, new_id);
    int ret = 0;

    if (!name || block_bitmap_list(src, &v, &n) < 0) {
        free(name);
        return error_setf(err, ENOMEM, "out of memory");
    }
    /* Ours that no point needs or that cannot be used go in the same
     * store (a leftover of the new name too: it belongs to no point). */
    for (int i = 0; i < n && ret == 0; i++) {
        const char *pid = bitmap_point(uuid, v[i].name);
        bool kept = pid && kept_point(pid, keep, nkeep);
        if (pid && (v[i].inconsistent || !kept ||
                    strcmp(v[i].name, name) == 0)) {
            ret = block_bitmap_remove(src, v[i].name, err);
        }
    }
    if (ret == 0) {
        ret = block_bitmap_add(src, name, granularity, true, err);
    }
    if (ret == 0) {
        ret = block_bitmaps_store(src, err);
    }
    if (ret < 0) {
        error_prefixf(err, "%s: cannot add bitmap %s",
                      block_node_filename(src), name);
    }
    block_bitmap_list_free(v, n);
    free(name);
    return ret;
}

int bk_bitmaps_finish(BlockNode *src, const char *uuid, const char *const *keep,
                      int nkeep, Error *err)
{
    BlockBitmapInfo *v = NULL;
    int n = 0, removed = 0, ret = 0;

    if (block_bitmap_list(src, &v, &n) < 0) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (int i = 0; i < n && ret == 0; i++) {
        const char *pid = bitmap_point(uuid, v[i].name);
        if (pid && !kept_point(pid, keep, nkeep)) {
            ret = block_bitmap_remove(src, v[i].name, err);
            removed++;
        }
    }
    if (ret == 0 && removed) {
        ret = block_bitmaps_store(src, err);
    }
    if (ret < 0) {
        error_prefixf(err, "%s: cannot remove old bitmaps",
                      block_node_filename(src));
    }
    block_bitmap_list_free(v, n);
    return ret;
}

int bk_bitmap_select(void *opaque, uint64_t off, uint64_t len,
                     uint64_t *pnum, Error *err)
{
    BkBitmapSelect *s = opaque;
    bool dirty = false;
    int ret = block_bitmap_dirty_range(s->node, s->name, off, len, &dirty,
                                       pnum, err);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        *pnum = len;         /* past the bitmap's end: nothing written */
    }
    return dirty;
}
