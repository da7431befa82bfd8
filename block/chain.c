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
    if (!name) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    parent->backing = NULL;
    block_close(old);
    BlockNode *nb = block_open(name, drv->name, NULL,
                               BLOCK_O_RDWR | keep | flags, err);
    free(name);
    if (!nb) {
        int code = err && err->code ? err->code : EIO;
        Error ignored = { 0 };
        block_open_backing(parent, parent->flags, &ignored);
        return -code;
    }
    parent->backing = nb;
    return 0;
}
