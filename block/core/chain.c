/*
 * chain.c - operations on backing chains that commit and rebase need:
 * emptying an overlay and making a backing image writable.
 *
 * Backing nodes are opened read-only with reader locks, which refuse a
 * writer even in our own process (OFD locks belong to open file
 * descriptions, not processes).  So a backing image is made writable in
 * place (block_reopen), never by opening it twice.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/driver.h"

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
        /* qemu-img commit's words */
        return error_setf(err, -ret, "Failed to empty %s: %s", n->filename,
                          strerror(-ret));
    }
    return 0;
}

int block_reopen_backing_rw(BlockNode *parent, int flags, Error *err)
{
    BlockNode *b = block_backing(parent);
    if (!b) {
        return error_setf(err, EINVAL, "'%s' has no backing file",
                          parent->filename);
    }
    /* In place: whoever else uses the backing node (an export, the
     * chain's other overlays) keeps using the same node, now writable. */
    return block_reopen(b, true, flags, err);
}
