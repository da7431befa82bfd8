/*
 * status.c - block status of one node and through a backing chain.
 *
 * A region a format node does not allocate falls through to its backing
 * node; with no backing node, or past the backing node's end, it reads as
 * zero, and block_status says so (ZERO without ALLOCATED), which is what
 * lets copies skip it without reading.
 *
 * A driver may flag a DATA extent with BLOCK_STATUS_RECURSE: then the
 * node holding its host bytes is asked too, and where that is a hole (or
 * past its end) the extent reads as zero: ZERO is added, the extent cut
 * where the host file's status changes.
 */
#include <errno.h>

#include "block/core/request.h"

/* ret (DATA at host offset map of node file, for *pnum bytes) with
 * ZERO added when the host range is a hole or past the host file's end;
 * *pnum is cut where the host status changes.  A failing host status
 * proves nothing: ret is kept. */
static int host_zeroes(BlockNode *n, int ret, uint64_t *pnum, uint64_t map,
                       BlockNode *file)
{
    if (!file || file == n || !(ret & BLOCK_STATUS_DATA) ||
        !(ret & BLOCK_STATUS_OFFSET_VALID) || (ret & BLOCK_STATUS_ZERO)) {
        return ret;
    }
    uint64_t hnum;
    int hret = block_status(file, map, *pnum, &hnum, NULL, NULL);
    if (hret < 0) {
        return ret;
    }
    int64_t flen = block_get_length(file);
    if (hnum == 0 || ((hret & BLOCK_STATUS_ZERO) && flen >= 0 &&
                      map + hnum >= (uint64_t)flen)) {
        /* A hole up to (or beyond) the end: all of it reads as zero. */
        return ret | BLOCK_STATUS_ZERO;
    }
    *pnum = hnum;
    return ret | (hret & BLOCK_STATUS_ZERO);
}

int block_status(BlockNode *n, uint64_t off, uint64_t len, uint64_t *pnum,
                 uint64_t *map, BlockNode **file)
{
    uint64_t dummy_map;
    BlockNode *dummy_file;
    if (!map) {
        map = &dummy_map;
    }
    if (!file) {
        file = &dummy_file;
    }
    *file = NULL;
    *map = 0;
    *pnum = 0;
    int64_t size = block_get_length(n);
    if (size < 0) {
        return (int)size;
    }
    if (off >= (uint64_t)size || len == 0) {
        return 0;
    }
    if (len > (uint64_t)size - off) {
        len = (uint64_t)size - off;
    }
    int ret;
    if (!n->drv->block_status) {
        *pnum = len;
        ret = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED;
    } else {
        /* A request like any other: it reads the driver's metadata and
         * children, which a graph change must not pull away. */
        block_node_enter(n, NULL);
        if (n->drv->thread_model == BLOCK_THREAD_SERIALIZE) {
            pthread_mutex_lock(&n->serialize_lock);
        }
        ret = n->drv->block_status(n, off, len, pnum, map, file);
        if (n->drv->thread_model == BLOCK_THREAD_SERIALIZE) {
            pthread_mutex_unlock(&n->serialize_lock);
        }
        block_node_leave(n);
        if (ret < 0) {
            return ret;
        }
        if (*pnum == 0 || *pnum > len) {
            *pnum = len;   /* a driver must make progress */
        }
        if (ret & BLOCK_STATUS_RECURSE) {
            ret = host_zeroes(n, ret & ~BLOCK_STATUS_RECURSE, pnum, *map,
                              *file);
        }
    }
    if (!(ret & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_DATA |
                 BLOCK_STATUS_ZERO)) && n->drv->supports_backing) {
        /* Only a layer that can have a backing file reads its
         * unallocated ranges as zero when it has none; a protocol that
         * says "unallocated, contents unknown" (an NBD hole without the
         * zero flag) must be read, as QEMU does. */
        if (!block_backing(n)) {
            ret |= BLOCK_STATUS_ZERO;
        } else {
            int64_t blen = block_get_length(block_backing(n));
            if (blen >= 0 && off >= (uint64_t)blen) {
                ret |= BLOCK_STATUS_ZERO;
            } else if (blen >= 0 && off + *pnum > (uint64_t)blen) {
                *pnum = (uint64_t)blen - off;
            }
        }
    }
    return ret;
}

int block_status_above(BlockNode *top, BlockNode *base, uint64_t off,
                       uint64_t len, uint64_t *pnum, uint64_t *map,
                       BlockNode **file, int *depth)
{
    int d = 0;
    BlockNode *n = top;
    for (;;) {
        uint64_t num;
        int ret = block_status(n, off, len, &num, map, file);
        if (ret < 0) {
            return ret;
        }
        if (num == 0) {
            /* Past the end of this node: nothing more to say. */
            *pnum = 0;
            if (depth) {
                *depth = d;
            }
            return 0;
        }
        len = num;
        if ((ret & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO |
                    BLOCK_STATUS_DATA)) ||
            !block_backing(n) || block_backing(n) == base) {
            *pnum = num;
            if (depth) {
                *depth = d;
            }
            return ret;
        }
        n = block_backing(n);
        d++;
    }
}

bool block_is_zero_fast(BlockNode *n, uint64_t off, uint64_t len)
{
    while (len > 0) {
        uint64_t num;
        int ret = block_status_above(n, NULL, off, len, &num, NULL, NULL,
                                     NULL);
        if (ret < 0 || num == 0 || !(ret & BLOCK_STATUS_ZERO)) {
            return false;
        }
        off += num;
        len -= num;
    }
    return true;
}
