/*
 * node.c - the node graph's nodes: the registry of names, children and
 * references, teardown, and the capabilities answered at open.  Opening
 * (protocol selection, probing, filters, backing chains) is open.c's.
 *
 * Invariants:
 *  - every node that open returned is in the registry under a unique
 *    name until its last reference goes;
 *  - a parent holds one reference to each of its children, so a child
 *    shared by two parents (or by a parent and an export) lives as long
 *    as the last of them.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/request.h"


/* ------------------------------------------------------------------ */
/* Registry                                                            */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static BlockNode *registry;
static unsigned long next_auto_name;

/* registry_lock held. */
static BlockNode *registry_find(const char *name)
{
    for (BlockNode *n = registry; n; n = n->registry_next) {
        if (strcmp(n->node_name, name) == 0) {
            return n;
        }
    }
    return NULL;
}

static int registry_add(BlockNode *n, const char *name, Error *err)
{
    pthread_mutex_lock(&registry_lock);
    if (name) {
        if (!*name || registry_find(name)) {
            pthread_mutex_unlock(&registry_lock);
            return error_setf(err, EEXIST, *name
                              ? "Duplicate nodes with node-name='%s'"
                              : "node-name%s may not be empty", name);
        }
        n->node_name = strdup(name);
    } else {
        char buf[32];
        snprintf(buf, sizeof(buf), "#block%lu", next_auto_name++);
        n->node_name = strdup(buf);
    }
    if (!n->node_name) {
        pthread_mutex_unlock(&registry_lock);
        return error_setf(err, ENOMEM, "out of memory");
    }
    n->registry_next = registry;
    registry = n;
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

static void registry_remove(BlockNode *n)
{
    pthread_mutex_lock(&registry_lock);
    for (BlockNode **p = &registry; *p; p = &(*p)->registry_next) {
        if (*p == n) {
            *p = n->registry_next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

BlockNode *block_find_node(const char *node_name)
{
    pthread_mutex_lock(&registry_lock);
    BlockNode *n = registry_find(node_name);
    if (n) {
        block_ref(n);
    }
    pthread_mutex_unlock(&registry_lock);
    return n;
}

BlockNode *block_find_image(const char *filename)
{
    char *want = block_chain_identity(filename);
    BlockNode *found = NULL;
    if (!want) {
        return NULL;
    }
    pthread_mutex_lock(&registry_lock);
    for (BlockNode *n = registry; n && !found; n = n->registry_next) {
        if (n->drv->kind != BLOCK_DRIVER_FORMAT) {
            continue;
        }
        char *have = block_chain_identity(n->filename);
        if (have && strcmp(have, want) == 0) {
            found = block_ref(n);
        }
        free(have);
    }
    pthread_mutex_unlock(&registry_lock);
    free(want);
    return found;
}

int block_for_each_node(int (*fn)(BlockNode *n, void *opaque), void *opaque)
{
    /* Take references under the lock, call without it: fn may open or
     * close nodes. */
    pthread_mutex_lock(&registry_lock);
    size_t count = 0;
    for (BlockNode *n = registry; n; n = n->registry_next) {
        count++;
    }
    BlockNode **v = calloc(count ? count : 1, sizeof(*v));
    if (!v) {
        pthread_mutex_unlock(&registry_lock);
        return -ENOMEM;
    }
    size_t i = 0;
    for (BlockNode *n = registry; n; n = n->registry_next) {
        v[i++] = block_ref(n);
    }
    pthread_mutex_unlock(&registry_lock);
    int ret = 0;
    for (i = 0; i < count; i++) {
        if (!ret) {
            ret = fn(v[i], opaque);
        }
        block_close(v[i]);
    }
    free(v);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Nodes and children                                                  */

BlockNode *node_new(const BlockDriver *drv, const char *filename, int flags)
{
    BlockNode *n = calloc(1, sizeof(*n));
    if (!n) {
        return NULL;
    }
    n->drv = drv;
    n->filename = strdup(filename ? filename : "");
    n->flags = flags;
    n->read_only = !(flags & BLOCK_O_RDWR);
    n->request_alignment = 1;
    atomic_init(&n->refcnt, 1);
    atomic_init(&n->in_flight, 0);
    atomic_init(&n->quiesce, 0);
    pthread_mutex_init(&n->rmw_lock, NULL);
    pthread_mutex_init(&n->serialize_lock, NULL);
    pthread_mutex_init(&n->drain_lock, NULL);
    pthread_cond_init(&n->drain_cond, NULL);
    if (drv->instance_size) {
        n->opaque = calloc(1, drv->instance_size);
    }
    if (!n->filename || (drv->instance_size && !n->opaque)) {
        free(n->filename);
        free(n->opaque);
        free(n);
        return NULL;
    }
    return n;
}

void node_free(BlockNode *n)
{
    block_free_write_hooks(n);
    /* A volatile set (block_bitmaps_make_volatile); formats free their
     * own at close. */
    block_bitmaps_free(n->bitmaps);
    pthread_mutex_destroy(&n->rmw_lock);
    pthread_mutex_destroy(&n->serialize_lock);
    pthread_mutex_destroy(&n->drain_lock);
    pthread_cond_destroy(&n->drain_cond);
    free(n->node_name);
    free(n->filename);
    free(n->backing_file);
    free(n->backing_format);
    free(n->full_backing_filename);
    kvlist_free(&n->open_opts);
    free(n->opaque);
    free(n);
}

BlockNode *block_child(BlockNode *n, BlockChildRole role)
{
    for (int i = 0; i < n->n_children; i++) {
        if (n->children[i].role == role) {
            return n->children[i].node;
        }
    }
    return NULL;
}

int block_set_child(BlockNode *n, BlockChildRole role, BlockNode *child)
{
    BlockNode *old = NULL;
    int i;
    for (i = 0; i < n->n_children; i++) {
        if (n->children[i].role == role) {
            break;
        }
    }
    if (i < n->n_children) {
        old = n->children[i].node;
        if (child) {
            n->children[i].node = child;
        } else {
            n->children[i] = n->children[--n->n_children];
        }
    } else if (child) {
        if (n->n_children == BLOCK_MAX_CHILDREN) {
            return -ENOSPC;
        }
        n->children[n->n_children].role = role;
        n->children[n->n_children].node = child;
        n->n_children++;
    }
    block_close(old);
    return 0;
}

BlockNode *block_ref(BlockNode *n)
{
    if (n) {
        atomic_fetch_add(&n->refcnt, 1);
    }
    return n;
}

void block_close(BlockNode *n)
{
    if (!n || atomic_fetch_sub(&n->refcnt, 1) != 1) {
        return;
    }
    registry_remove(n);
    if (n->drv->close) {
        n->drv->close(n);
    }
    /* Backing first: it is the most independent; the file children go
     * last because the driver's close may have used them. */
    static const BlockChildRole order[] = {
        BLOCK_CHILD_BACKING, BLOCK_CHILD_DATA_FILE, BLOCK_CHILD_FILTERED,
        BLOCK_CHILD_TARGET, BLOCK_CHILD_FILE,
    };
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        block_close(block_child(n, order[i]));
    }
    node_free(n);
}

/* ------------------------------------------------------------------ */
/* Capabilities                                                        */

static bool cap(bool (*fn)(BlockNode *), BlockNode *n, bool def)
{
    return fn ? fn(n) : def;
}

static void answer_caps(BlockNode *n)
{
    const BlockDriver *d = n->drv;
    BlockCaps *c = &n->caps;
    BlockNode *below = block_file(n) ? block_file(n) : block_filtered(n);
    c->can_write = !n->read_only &&
                   cap(d->can_write, n, d->pwrite || d->pwritev);
    c->can_flush = cap(d->can_flush, n,
                       d->flush || (below && below->caps.can_flush));
    c->can_fua = cap(d->can_fua, n, false);
    c->can_discard = cap(d->can_discard, n, d->discard != NULL);
    c->can_zero = cap(d->can_zero, n, d->write_zeroes != NULL);
    c->can_fast_zero = cap(d->can_fast_zero, n, false);
    c->can_extents = cap(d->can_extents, n, d->block_status != NULL);
    c->can_compress = cap(d->can_compress, n, false);
    c->can_multi_conn = cap(d->can_multi_conn, n, false);
}

/* A node that open returned: named, counted, capabilities answered. */
int node_publish(BlockNode *n, KVList *opts, Error *err)
{
    const char *name = kvlist_get(opts, "node-name");
    answer_caps(n);
    return registry_add(n, name, err);
}
