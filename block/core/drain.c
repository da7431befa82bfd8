/*
 * drain.c - requests in flight, drain, and the graph changes drain makes
 * safe (reopen, swapping a backing node).
 *
 * Every request is counted in its node's in_flight from the moment it
 * enters the node until it completes, and everything a driver does with
 * its children happens inside such a request.  So once a drained node's
 * in_flight is 0, nothing is looking at its children: they may be
 * swapped or reopened.
 *
 * The handshake (sequentially consistent atomics, the mutex only for
 * sleeping): a request increments in_flight, then reads quiesce; a drain
 * increments quiesce, then waits for in_flight to reach 0.  Whichever
 * came second sees the other, so a request either was counted before the
 * drain looked (and the drain waits for it) or sees the drain and backs
 * out (sync callers sleep until drain_end; async ones are held and
 * resubmitted by drain_end).  The thread that drained is the exception:
 * its own requests pass, since changing the graph needs I/O (a reopen
 * reads the header again).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/request.h"

/* Wakes a drain waiting for the count to fall. */
static void leave_locked_wake(BlockNode *n)
{
    pthread_mutex_lock(&n->drain_lock);
    pthread_cond_broadcast(&n->drain_cond);
    pthread_mutex_unlock(&n->drain_lock);
}

void block_node_leave(BlockNode *n)
{
    if (atomic_fetch_sub(&n->in_flight, 1) == 1 &&
        atomic_load(&n->quiesce) > 0) {
        leave_locked_wake(n);
    }
}

bool block_node_enter(BlockNode *n, BlockRequest *req)
{
    for (;;) {
        atomic_fetch_add(&n->in_flight, 1);
        if (atomic_load(&n->quiesce) == 0) {
            return true;
        }
        pthread_mutex_lock(&n->drain_lock);
        if (atomic_load(&n->quiesce) > 0 && n->drain_owned &&
            pthread_equal(n->drain_owner, pthread_self())) {
            /* The drainer's own requests (a reopen reading the header,
             * a commit switching its base) go through. */
            pthread_mutex_unlock(&n->drain_lock);
            return true;
        }
        if (atomic_fetch_sub(&n->in_flight, 1) == 1) {
            pthread_cond_broadcast(&n->drain_cond);
        }
        if (atomic_load(&n->quiesce) > 0) {
            if (req) {
                /* Held in arrival order; drain_end resubmits them. */
                BlockRequest **p = &n->held;
                while (*p) {
                    p = &(*p)->next;
                }
                req->next = NULL;
                *p = req;
                pthread_mutex_unlock(&n->drain_lock);
                return false;
            }
            while (atomic_load(&n->quiesce) > 0) {
                pthread_cond_wait(&n->drain_cond, &n->drain_lock);
            }
        }
        pthread_mutex_unlock(&n->drain_lock);
    }
}

/* One node: hold new requests, wait for those inside to finish. */
static void drain_node(BlockNode *n)
{
    pthread_mutex_lock(&n->drain_lock);
    if (atomic_fetch_add(&n->quiesce, 1) == 0) {
        n->drain_owner = pthread_self();
        n->drain_owned = true;
    }
    while (atomic_load(&n->in_flight) > 0) {
        pthread_cond_wait(&n->drain_cond, &n->drain_lock);
    }
    pthread_mutex_unlock(&n->drain_lock);
}

static void undrain_node(BlockNode *n)
{
    pthread_mutex_lock(&n->drain_lock);
    BlockRequest *held = NULL;
    if (atomic_fetch_sub(&n->quiesce, 1) == 1) {
        held = n->held;
        n->held = NULL;
        n->drain_owned = false;
    }
    pthread_cond_broadcast(&n->drain_cond);
    pthread_mutex_unlock(&n->drain_lock);
    while (held) {
        BlockRequest *next = held->next;
        block_request_resubmit(held);
        held = next;
    }
}

/* Parents before children: once a parent is quiet, it sends its children
 * nothing more, so their counts can only fall.  The children must be the
 * same at drain_end (a graph change drains only the node it changes). */
static void drain_tree(BlockNode *n, int depth)
{
    drain_node(n);
    if (depth > BLOCK_MAX_CHAIN * 4) {
        return;
    }
    for (int i = 0; i < n->n_children; i++) {
        drain_tree(n->children[i].node, depth + 1);
    }
}

static void undrain_tree(BlockNode *n, int depth)
{
    if (depth <= BLOCK_MAX_CHAIN * 4) {
        for (int i = n->n_children - 1; i >= 0; i--) {
            undrain_tree(n->children[i].node, depth + 1);
        }
    }
    undrain_node(n);
}

void block_drain_begin(BlockNode *n)
{
    drain_tree(n, 0);
}

void block_drain_end(BlockNode *n)
{
    undrain_tree(n, 0);
}

static int drain_one(BlockNode *n, void *opaque)
{
    /* Each node by itself: the registry holds every node, children too. */
    if (*(bool *)opaque) {
        drain_node(n);
    } else {
        undrain_node(n);
    }
    return 0;
}

void block_drain_all_begin(void)
{
    bool begin = true;
    block_for_each_node(drain_one, &begin);
}

void block_drain_all_end(void)
{
    bool begin = false;
    block_for_each_node(drain_one, &begin);
}

/* ------------------------------------------------------------------ */
/* Graph changes                                                       */

/* Children that share the node's read-write state: what a format writes
 * through.  A backing node stays read-only under a writable overlay. */
static bool follows_parent(BlockChildRole role)
{
    return role != BLOCK_CHILD_BACKING;
}

/* Formats and filters without a reopen of their own are closed and
 * opened again on the same node, with the options they were opened
 * with: their children (already reopened) and their users stay. */
static int open_again(BlockNode *n, int nflags, Error *err)
{
    KVList opts = { 0 };
    for (size_t i = 0; i < n->open_opts.n; i++) {
        if (kvlist_set(&opts, n->open_opts.items[i].key,
                       n->open_opts.items[i].value) < 0) {
            kvlist_free(&opts);
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    if (n->drv->close) {
        n->drv->close(n);
    }
    free(n->backing_file);
    free(n->backing_format);
    n->backing_file = n->backing_format = NULL;
    memset(n->opaque, 0, n->drv->instance_size);
    n->flags = nflags;
    n->read_only = !(nflags & BLOCK_O_RDWR);
    int ret = n->drv->open(n, &opts, nflags, err);
    kvlist_free(&opts);
    return ret;
}

static int driver_reopen(BlockNode *n, int nflags, Error *err)
{
    if (n->drv->reopen) {
        return n->drv->reopen(n, nflags, err);
    }
    if (n->drv->kind == BLOCK_DRIVER_PROTOCOL) {
        return error_setf(err, ENOTSUP, "'%s' (%s) cannot be reopened",
                          n->filename, n->drv->name);
    }
    int oflags = n->flags;
    int ret = open_again(n, nflags, err);
    if (ret < 0) {
        /* Back as it was, so the node stays usable. */
        Error ignored = { 0 };
        if (open_again(n, oflags, &ignored) < 0) {
            block_report(BLOCK_REPORT_ERROR, "'%s' could not be reopened "
                         "after a failed reopen: %s", n->filename,
                         ignored.msg);
        }
    }
    return ret;
}

static int reopen_tree(BlockNode *n, bool rw, int flags, Error *err)
{
    if (n->read_only == !rw) {
        return 0;
    }
    int nflags = rw ? (n->flags | BLOCK_O_RDWR | flags) & ~BLOCK_O_BACKING_RO
                    : n->flags & ~BLOCK_O_RDWR;
    int ret = 0;
    if (!rw) {
        /* Parent first: its caches reach the child while it can write. */
        ret = block_flush(n);
        if (ret < 0) {
            return error_setf(err, -ret, "Could not flush '%s': %s",
                              n->filename, strerror(-ret));
        }
        ret = driver_reopen(n, nflags, err);
        if (ret < 0) {
            return ret;
        }
        n->flags = nflags;
        n->read_only = true;
    }
    int i;
    for (i = 0; i < n->n_children; i++) {
        if (follows_parent(n->children[i].role)) {
            ret = reopen_tree(n->children[i].node, rw, flags, err);
            if (ret < 0) {
                break;
            }
        }
    }
    if (i < n->n_children) {
        /* Undo what was changed below, best effort. */
        Error ignored = { 0 };
        while (--i >= 0) {
            if (follows_parent(n->children[i].role)) {
                reopen_tree(n->children[i].node, !rw, 0, &ignored);
            }
        }
        return ret;
    }
    if (rw) {
        ret = driver_reopen(n, nflags, err);
        if (ret < 0) {
            Error ignored = { 0 };
            for (i = 0; i < n->n_children; i++) {
                if (follows_parent(n->children[i].role)) {
                    reopen_tree(n->children[i].node, false, 0, &ignored);
                }
            }
            return ret;
        }
        n->flags = nflags;
        n->read_only = false;
    }
    n->caps.can_write = rw && (n->drv->can_write ? n->drv->can_write(n)
                               : (n->drv->pwrite || n->drv->pwritev));
    return 0;
}

int block_reopen(BlockNode *n, bool read_write, int flags, Error *err)
{
    block_drain_begin(n);
    int ret = reopen_tree(n, read_write, flags, err);
    block_drain_end(n);
    return ret;
}

int block_set_backing(BlockNode *n, BlockNode *backing, Error *err)
{
    if (!backing && !block_child(n, BLOCK_CHILD_BACKING)) {
        return 0;
    }
    if (n->drv->kind != BLOCK_DRIVER_FORMAT || !n->drv->supports_backing) {
        block_close(backing);
        return error_setf(err, ENOTSUP, "'%s' (%s) cannot have a backing "
                          "file", n->filename, n->drv->name);
    }
    /* Only n: its requests are what read n's backing pointer, and the old
     * and new backing nodes are each drained or not as before. */
    drain_node(n);
    BlockNode *old = block_ref(block_child(n, BLOCK_CHILD_BACKING));
    int ret = block_set_child(n, BLOCK_CHILD_BACKING, backing);
    undrain_node(n);
    /* Released undrained: closing it may flush, which needs requests. */
    block_close(old);
    if (ret < 0) {
        block_close(backing);
        return error_setf(err, -ret, "Could not attach a backing node to "
                          "'%s'", n->filename);
    }
    return 0;
}
