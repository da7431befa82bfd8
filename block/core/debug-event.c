/*
 * debug-event.c - named events a format driver raises on the node below
 * it (QEMU's BLKDBG_EVENT points), for fault-injection filters.
 *
 * The event goes to the first node, from the one named down through FILE
 * and FILTERED children, whose driver takes events; a graph without such
 * a filter pays one short walk per event.
 */
#include <string.h>

#include "block/driver.h"

static const char *const names[BLOCK_EV__MAX] = {
    [BLOCK_EV_L1_UPDATE] = "l1_update",
    [BLOCK_EV_L2_LOAD] = "l2_load",
    [BLOCK_EV_L2_UPDATE] = "l2_update",
    [BLOCK_EV_L2_ALLOC_WRITE] = "l2_alloc_write",
    [BLOCK_EV_READ_AIO] = "read_aio",
    [BLOCK_EV_READ_BACKING_AIO] = "read_backing_aio",
    [BLOCK_EV_READ_COMPRESSED] = "read_compressed",
    [BLOCK_EV_WRITE_AIO] = "write_aio",
    [BLOCK_EV_WRITE_COMPRESSED] = "write_compressed",
    [BLOCK_EV_COW_READ] = "cow_read",
    [BLOCK_EV_COW_WRITE] = "cow_write",
    [BLOCK_EV_REFTABLE_LOAD] = "reftable_load",
    [BLOCK_EV_REFTABLE_GROW] = "reftable_grow",
    [BLOCK_EV_REFBLOCK_LOAD] = "refblock_load",
    [BLOCK_EV_REFBLOCK_UPDATE] = "refblock_update",
    [BLOCK_EV_REFBLOCK_UPDATE_PART] = "refblock_update_part",
    [BLOCK_EV_REFBLOCK_ALLOC] = "refblock_alloc",
    [BLOCK_EV_CLUSTER_ALLOC] = "cluster_alloc",
    [BLOCK_EV_CLUSTER_FREE] = "cluster_free",
    [BLOCK_EV_FLUSH_TO_OS] = "flush_to_os",
    [BLOCK_EV_FLUSH_TO_DISK] = "flush_to_disk",
};

const char *block_debug_event_name(BlockDebugEvent ev)
{
    return ev < BLOCK_EV__MAX ? names[ev] : NULL;
}

int block_debug_event_lookup(const char *name)
{
    for (int i = 0; i < BLOCK_EV__MAX; i++) {
        if (names[i] && strcmp(names[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

static BlockNode *event_taker(BlockNode *n)
{
    while (n && !n->drv->debug_event) {
        BlockNode *below = block_file(n);
        n = below ? below : block_filtered(n);
    }
    return n;
}

void block_debug_event(BlockNode *n, BlockDebugEvent ev)
{
    BlockNode *t = event_taker(n);
    if (t) {
        t->drv->debug_event(t, ev);
    }
}

bool block_takes_debug_events(BlockNode *n)
{
    return event_taker(n) != NULL;
}
