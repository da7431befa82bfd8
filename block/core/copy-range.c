/*
 * copy-range.c - copies whose bytes never pass through memory: the
 * target's file gets the source's extents shared (FICLONERANGE, on file
 * systems with reflinks) or copied inside the kernel (copy_file_range).
 *
 * block_copy_range() finds where the source's data lives (block status
 * through its chain: a host offset in a file node) and hands each piece
 * to the target's copy_range_from op, which maps the guest range to its
 * own host offsets (raw: its window; qcow2: clusters it allocates, as a
 * write would) and passes it down to the file protocol.
 *
 * Invariants:
 *  - only plain data is ever shared: a source piece must be DATA with a
 *    valid host offset in a node of the file protocol that is the FILE
 *    or DATA_FILE child of the format node that defines it (so no filter
 *    - fault injection, throttling - and no encryption or compression is
 *    skipped); anything else is -ENOTSUP and the caller copies through
 *    memory;
 *  - a failure after which the caller falls back (-ENOTSUP, -EOPNOTSUPP,
 *    -EXDEV, -EINVAL) leaves the target range as it was or partly
 *    written with the source's own bytes, never anything else.
 */
#include <errno.h>

#include "block/core/request.h"

bool block_copy_range_fallback(int ret)
{
    return ret == -ENOTSUP || ret == -EOPNOTSUPP || ret == -EXDEV ||
           ret == -EINVAL || ret == -ENOSYS || ret == -ETXTBSY;
}

bool block_node_can_copy_range(BlockNode *n)
{
    while (n && n->drv->copy_range_from) {
        if (n->drv->kind != BLOCK_DRIVER_FORMAT) {
            return true;
        }
        /* a format's data lives in its data file, if it has one */
        n = block_data_file(n) ? block_data_file(n) : block_file(n);
    }
    return false;
}

int block_copy_range_from(BlockNode *dst, uint64_t off, uint64_t len,
                          BlockNode *src_file, uint64_t src_host, int flags)
{
    if (!dst->drv->copy_range_from) {
        return -ENOTSUP;
    }
    block_node_enter(dst, NULL);
    int ret = block_check_request(dst, off, len, true);
    if (ret >= 0 && len > 0) {
        ret = dst->drv->copy_range_from(dst, off, len, src_file, src_host,
                                        flags);
    }
    block_node_leave(dst);
    return ret;
}

/* Is file the FILE or DATA_FILE child of the format node that holds the
 * data, depth layers below top? */
static bool plain_host(BlockNode *top, int depth, BlockNode *file)
{
    BlockNode *n = top;
    for (int i = 0; i < depth && n; i++) {
        n = block_backing(n);
    }
    if (!n || n->drv->kind != BLOCK_DRIVER_FORMAT || !file ||
        file->drv->kind != BLOCK_DRIVER_PROTOCOL) {
        return false;
    }
    return file == block_file(n) || file == block_data_file(n);
}

int block_copy_range(BlockNode *src, uint64_t src_off, BlockNode *dst,
                     uint64_t dst_off, uint64_t len, int flags)
{
    if (src->drv->kind != BLOCK_DRIVER_FORMAT) {
        return -ENOTSUP;
    }
    while (len > 0) {
        uint64_t pnum = 0, map = 0;
        BlockNode *file = NULL;
        int depth = 0;
        int st = block_status_above(src, NULL, src_off, len, &pnum, &map,
                                    &file, &depth);
        if (st < 0) {
            return st;
        }
        int need = BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
        if ((st & need) != need ||
            (st & (BLOCK_STATUS_ZERO | BLOCK_STATUS_COMPRESSED)) ||
            pnum == 0 || !plain_host(src, depth, file)) {
            return -ENOTSUP;
        }
        int ret = block_copy_range_from(dst, dst_off, pnum, file, map, flags);
        if (ret < 0) {
            return ret;
        }
        src_off += pnum;
        dst_off += pnum;
        len -= pnum;
    }
    return 0;
}
