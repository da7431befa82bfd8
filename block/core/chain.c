/*
 * chain.c - operations on backing chains that commit and rebase need:
 * emptying an overlay and reopening a backing image for writing.
 *
 * Backing nodes are opened read-only with reader locks, which refuse a
 * writer even in our own process (OFD locks belong to open file
 * descriptions, not processes).  So a backing image is made writable by
 * closing it first and opening it again, never by opening it twice.
 * The reopen uses the options the node was first opened with (kept in
 * node->open_opts), so an encrypted base keeps its key-secret.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"

int block_make_empty(BlockNode *n, Error *err)
{
    if (n->read_only) {
        return error_setf(err, EACCES, "Cannot empty '%s': opened read-only",
                          n->filename);
    }
    if (!n->drv->make_empty) {
        return error_setf(err, ENOTSUP, "Format '%s' cannot be emptied",
                          n->drv->name);
    }
    int ret = n->drv->make_empty(n);
    if (ret >= 0) {
        ret = block_flush(n);
    }
    if (ret < 0) {
        return error_setf(err, -ret, "Could not empty '%s': %s", n->filename,
                          strerror(-ret));
    }
    return 0;
}

/* A fresh copy of l (every item unused again: block_open consumes it). */
static int kvlist_copy(const KVList *l, KVList *out)
{
    for (size_t i = 0; i < l->n; i++) {
        if (kvlist_set(out, l->items[i].key, l->items[i].value) < 0) {
            kvlist_free(out);
            return -ENOMEM;
        }
    }
    return 0;
}

int block_reopen_backing_rw(BlockNode *parent, int flags, Error *err)
{
    BlockNode *old = parent->backing;
    if (!old) {
        return error_setf(err, EINVAL, "'%s' has no backing file",
                          parent->filename);
    }
    if (!old->read_only) {
        return 0;
    }
    /* The options it was opened with (an encrypted base's key-secret,
     * its own backing.* options) must survive the reopen, and the
     * read-only reopen after a failure. */
    KVList rw = { 0 }, ro = { 0 };
    char *name = strdup(old->filename);
    if (!name || kvlist_copy(&old->open_opts, &rw) < 0 ||
        kvlist_copy(&old->open_opts, &ro) < 0) {
        free(name);
        kvlist_free(&rw);
        return error_setf(err, ENOMEM, "out of memory");
    }
    const BlockDriver *drv = old->drv;
    int keep = old->flags & (BLOCK_O_NOCACHE | BLOCK_O_NO_FLUSH |
                             BLOCK_O_NO_LOCK);
    parent->backing = NULL;
    block_close(old);
    BlockNode *nb = block_open(name, drv->name, &rw,
                               BLOCK_O_RDWR | keep | flags, err);
    int ret = 0;
    if (!nb) {
        ret = -(err && err->code ? err->code : EIO);
        Error ignored = { 0 };
        nb = block_open(name, drv->name, &ro,
                        (parent->flags & (BLOCK_O_SHARE | BLOCK_O_NOCACHE |
                                          BLOCK_O_NO_LOCK |
                                          BLOCK_O_NO_FLUSH)) |
                        BLOCK_O_BACKING_RO, &ignored);
    }
    parent->backing = nb;
    free(name);
    kvlist_free(&rw);
    kvlist_free(&ro);
    return ret;
}
