/*
 * amend.c - changing an existing image's options in place.
 */
#include <errno.h>

#include "block/driver.h"

int block_amend(BlockNode *n, KVList *opts, bool force,
                BlockProgressFn *progress, void *opaque, Error *err)
{
    if (!n->drv->amend) {
        return error_setf(err, ENOTSUP,
                          "Format driver '%s' does not support option "
                          "amendment", n->drv->name);
    }
    return n->drv->amend(n, opts, force, progress, opaque, err);
}
