/*
 * hooks.c - before-write hooks (block.h says what they promise).
 *
 * Invariant: n->write_hooks changes only while n is drained by the
 * caller of add/remove, so a request that runs the hooks (it is counted
 * in n) sees a list nobody changes under it, and a request held by the
 * drain meets the new list when it is resubmitted.  Writes to a node
 * with hooks never take a driver's asynchronous fast path (aio.c sends
 * them to the synchronous path, which runs the hooks).
 */
#include <errno.h>
#include <stdlib.h>

#include "block/core/request.h"
#include "block/driver.h"

typedef struct BlockWriteHook {
    BlockBeforeWriteFn *fn;
    void *opaque;
    struct BlockWriteHook *next;
} BlockWriteHook;

int block_add_before_write(BlockNode *n, BlockBeforeWriteFn *fn,
                           void *opaque)
{
    BlockWriteHook *h = calloc(1, sizeof(*h));
    if (!h) {
        return -ENOMEM;
    }
    h->fn = fn;
    h->opaque = opaque;
    block_drain_begin(n);
    h->next = n->write_hooks;
    n->write_hooks = h;
    block_drain_end(n);
    return 0;
}

void block_remove_before_write(BlockNode *n, BlockBeforeWriteFn *fn,
                               void *opaque)
{
    block_drain_begin(n);
    for (BlockWriteHook **p = &n->write_hooks; *p; p = &(*p)->next) {
        if ((*p)->fn == fn && (*p)->opaque == opaque) {
            BlockWriteHook *h = *p;
            *p = h->next;
            free(h);
            break;
        }
    }
    block_drain_end(n);
}

int block_run_write_hooks(BlockNode *n, uint64_t off, uint64_t len)
{
    for (BlockWriteHook *h = n->write_hooks; h; h = h->next) {
        int ret = h->fn(h->opaque, n, off, len);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

bool block_has_write_hooks(const BlockNode *n)
{
    return n->write_hooks != NULL;
}

void block_free_write_hooks(BlockNode *n)
{
    while (n->write_hooks) {
        BlockWriteHook *h = n->write_hooks;
        n->write_hooks = h->next;
        free(h);
    }
}

int block_hook_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    struct iovec iov;
    BlockIOV v;
    blockiov_init_buf(&v, &iov, buf, len);
    return block_io_preadv(n, off, &v, 0);
}
