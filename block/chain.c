/*
 * chain.c - operations on backing chains that commit and rebase need:
 * emptying an overlay and reopening a backing image for writing.
 *
 * Backing nodes are opened read-only with reader locks, which refuse a
 * writer even in our own process (OFD locks belong to open file
 * descriptions, not processes).  So a backing image is made writable by
 * closing it first and opening it again, never by opening it twice.
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
    char *name = strdup(old->filename);
    const BlockDriver *drv = old->drv;
    int keep = old->flags & (BLOCK_O_NOCACHE | BLOCK_O_NO_FLUSH |
                             BLOCK_O_NO_LOCK);
    /* The options it was opened with (an encrypted base's key-secret,
     * its own backing.* options) must survive the reopen. */
    KVList opts = old->open_opts, again = { 0 };
    old->open_opts = (KVList){ 0 };
    if (!name) {
        kvlist_free(&opts);
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < opts.n; i++) {
        if (kvlist_set(&again, opts.items[i].key, opts.items[i].value) < 0) {
            free(name);
            kvlist_free(&opts);
            kvlist_free(&again);
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    parent->backing = NULL;
    block_close(old);
    BlockNode *nb = block_open(name, drv->name, &opts,
                               BLOCK_O_RDWR | keep | flags, err);
    if (!nb) {
        int code = err && err->code ? err->code : EIO;
        Error ignored = { 0 };
        nb = block_open(name, drv->name, &again,
                        (parent->flags & (BLOCK_O_SHARE | BLOCK_O_NOCACHE |
                                          BLOCK_O_NO_LOCK |
                                          BLOCK_O_NO_FLUSH)) |
                        BLOCK_O_BACKING_RO, &ignored);
        parent->backing = nb;
        free(name);
        kvlist_free(&opts);
        kvlist_free(&again);
        return -code;
    }
    free(name);
    kvlist_free(&opts);
    kvlist_free(&again);
    parent->backing = nb;
    return 0;
}
