/*
 * fleece.c - a point-in-time view of a node that keeps changing: the
 * "fleece" driver, over the node it watches (its FILTERED child, named
 * with file=NODE) and a target node where old clusters go (target=NODE):
 *
 *   driver=fleece,node-name=V,file=SOURCE,target=TARGET[,cluster-size=N]
 *
 * From its open on, a before-write hook on SOURCE copies every cluster a
 * write, zero write or discard is about to change into TARGET (at the
 * same offset), once; V reads copied clusters from TARGET and the others
 * from SOURCE, so V reads as SOURCE did when V was opened, for as long
 * as V is open.  This is what `imgtool serve` does for blockdev-backup
 * sync=none (block/export/qmp-backup.c): backups read V through NBD
 * while the VM writes SOURCE, and the VM's writes wait only for the copy
 * of the old clusters into the (local) target.
 *
 * Invariants, per cluster, under the state lock: `copied` only goes from
 * 0 to 1, and then TARGET holds the cluster's data as at the open; the
 * one writer's hook that copies a cluster holds `busy` on it meanwhile
 * (another writer of it waits), and a write reaches SOURCE only after
 * its hook returned, so only after the cluster is `copied`.  Hence a
 * reader of V that read a cluster from SOURCE and then finds it neither
 * copied nor busy read it before any later write: its data stand;
 * otherwise it reads the copy from TARGET.  Readers never hold a
 * cluster, so a writer never waits for a reader, and a drain of SOURCE
 * (which waits for writers in their hooks) cannot wait on V's readers.
 * The view is read-only.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "block/driver.h"

enum { C_COPIED = 1, C_BUSY = 2 };

typedef struct FleeceState {
    BlockNode *source;
    BlockNode *target;
    uint64_t size;
    uint64_t cluster;
    uint64_t nclusters;
    uint8_t *state;            /* per cluster: C_COPIED, C_BUSY */
    uint8_t *buf;              /* the hook's copy buffer (one cluster) */
    pthread_mutex_t buf_lock;  /* writers' hooks share buf */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool hooked;
} FleeceState;

/* Waits until cluster c is not busy; returns true when it must be taken
 * from SOURCE (then it is marked busy for the caller).  Lock held. */
static bool take(FleeceState *s, uint64_t c)
{
    while (s->state[c] & C_BUSY) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    if (s->state[c] & C_COPIED) {
        return false;
    }
    s->state[c] |= C_BUSY;
    return true;
}

static void release(FleeceState *s, uint64_t c, bool copied)
{
    pthread_mutex_lock(&s->lock);
    s->state[c] &= (uint8_t)~C_BUSY;
    if (copied) {
        s->state[c] |= C_COPIED;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* Before SOURCE changes [off, off+len): its old clusters into TARGET. */
static int fleece_hook(void *opaque, BlockNode *n, uint64_t off, uint64_t len)
{
    FleeceState *s = opaque;
    if (off >= s->size || len == 0) {
        return 0;
    }
    uint64_t end = off + len < s->size ? off + len : s->size;
    for (uint64_t c = off / s->cluster; c * s->cluster < end; c++) {
        pthread_mutex_lock(&s->lock);
        bool mine = take(s, c);
        pthread_mutex_unlock(&s->lock);
        if (!mine) {
            continue;
        }
        uint64_t a = c * s->cluster;
        uint64_t l = s->size - a < s->cluster ? s->size - a : s->cluster;
        pthread_mutex_lock(&s->buf_lock);
        int ret = block_hook_pread(n, a, l, s->buf);
        if (ret >= 0) {
            ret = block_pwrite(s->target, a, l, s->buf, 0);
        }
        pthread_mutex_unlock(&s->buf_lock);
        release(s, c, ret >= 0);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Clusters [c, ...) from c on, at most up to byte end, that share c's
 * `copied` state now (a snapshot: they may become copied meanwhile). */
static uint64_t run_end(FleeceState *s, uint64_t c, uint64_t end,
                        bool *copied)
{
    pthread_mutex_lock(&s->lock);
    *copied = s->state[c] & C_COPIED;
    uint64_t e = c + 1;
    while (e * s->cluster < end &&
           (bool)(s->state[e] & C_COPIED) == *copied) {
        e++;
    }
    pthread_mutex_unlock(&s->lock);
    return e * s->cluster < end ? e * s->cluster : end;
}

/* After reading cluster c from SOURCE: whether a writer copied it since
 * (then the read may hold the new data, and TARGET has the old). */
static bool copied_since(FleeceState *s, uint64_t c)
{
    pthread_mutex_lock(&s->lock);
    while (s->state[c] & C_BUSY) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    bool copied = s->state[c] & C_COPIED;
    pthread_mutex_unlock(&s->lock);
    return copied;
}

static int fleece_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    FleeceState *s = n->opaque;
    uint8_t *b = buf;
    uint64_t end = off + len;
    while (off < end) {
        bool copied;
        uint64_t rend = run_end(s, off / s->cluster, end, &copied);
        int ret = block_pread(copied ? s->target : s->source, off,
                              rend - off, b);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t p = off; !copied && p < rend;) {
            uint64_t c = p / s->cluster;
            uint64_t cend = (c + 1) * s->cluster < rend
                                ? (c + 1) * s->cluster : rend;
            if (copied_since(s, c)) {
                ret = block_pread(s->target, p, cend - p, b + (p - off));
                if (ret < 0) {
                    return ret;
                }
            }
            p = cend;
        }
        b += rend - off;
        off = rend;
    }
    return 0;
}

/* What V reads: copied clusters are data (in TARGET); the others are as
 * SOURCE says, unless a writer copied them while we asked. */
static int fleece_block_status(BlockNode *n, uint64_t off, uint64_t len,
                               uint64_t *pnum, uint64_t *map,
                               BlockNode **file)
{
    FleeceState *s = n->opaque;
    bool copied;
    uint64_t rend = run_end(s, off / s->cluster, off + len, &copied);
    if (copied) {
        *pnum = rend - off;
        return BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED;
    }
    uint64_t num = 0;
    int ret = block_status_above(s->source, NULL, off, rend - off, &num,
                                 NULL, NULL, NULL);
    if (ret < 0) {
        return ret;
    }
    if (num == 0) {
        num = rend - off;
    }
    /* Only the clusters still uncopied keep the answer. */
    uint64_t p = off;
    while (p < off + num && !copied_since(s, p / s->cluster)) {
        p = (p / s->cluster + 1) * s->cluster;
    }
    if (p == off) {
        *pnum = (off / s->cluster + 1) * s->cluster - off;
        if (*pnum > len) {
            *pnum = len;
        }
        return BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED;
    }
    *pnum = p < off + num ? p - off : num;
    return (ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO)) |
           BLOCK_STATUS_ALLOCATED;
}

static int64_t fleece_get_length(BlockNode *n)
{
    FleeceState *s = n->opaque;
    return (int64_t)s->size;
}

static bool fleece_can_write(BlockNode *n)
{
    return false;
}

static int fleece_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    FleeceState *s = n->opaque;
    const char *tname = kvlist_get(opts, "target");
    uint64_t cluster = 0;
    int ret;

    if (flags & BLOCK_O_RDWR) {
        return error_setf(err, EINVAL, "fleece: the view is read-only");
    }
    if (!tname) {
        return error_setf(err, EINVAL, "fleece: target= (a node name) is "
                          "needed");
    }
    ret = kvlist_get_size(opts, "cluster-size", 65536, &cluster, err);
    if (ret < 0) {
        return ret;
    }
    if (cluster < 512 || cluster > (64u << 20) || (cluster & (cluster - 1))) {
        return error_setf(err, EINVAL, "fleece: cluster-size must be a "
                          "power of two from 512 to 64M");
    }
    s->source = block_filtered(n);
    BlockNode *t = block_find_node(tname);
    if (!t) {
        return error_setf(err, ENOENT, "fleece: no node '%s'", tname);
    }
    int64_t slen = block_get_length(s->source);
    int64_t tlen = block_get_length(t);
    if (slen < 0 || tlen < 0 || tlen < slen || block_node_read_only(t)) {
        block_close(t);
        return error_setf(err, EINVAL, "fleece: target '%s' must be "
                          "writable and at least as large as the source",
                          tname);
    }
    s->size = (uint64_t)slen;
    s->cluster = cluster;
    s->nclusters = (s->size + cluster - 1) / cluster;
    s->state = calloc(s->nclusters ? s->nclusters : 1, 1);
    s->buf = malloc(cluster);
    if (!s->state || !s->buf) {
        free(s->state);
        free(s->buf);
        block_close(t);
        return error_setf(err, ENOMEM, "fleece: out of memory");
    }
    /* The target is ours to hold while the view lives. */
    block_set_child(n, BLOCK_CHILD_TARGET, t);
    s->target = t;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->buf_lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    ret = block_add_before_write(s->source, fleece_hook, s);
    if (ret < 0) {
        free(s->state);
        free(s->buf);
        return error_setf(err, -ret, "fleece: cannot watch the source");
    }
    s->hooked = true;
    n->request_alignment = 1;
    return 0;
}

static void fleece_close(BlockNode *n)
{
    FleeceState *s = n->opaque;
    if (s->hooked) {
        block_remove_before_write(s->source, fleece_hook, s);
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->buf_lock);
    pthread_mutex_destroy(&s->lock);
    free(s->state);
    free(s->buf);
}

const BlockDriver fleece_driver = {
    .api_version = BLOCK_DRIVER_API_VERSION,
    .name = "fleece",
    .kind = BLOCK_DRIVER_FILTER,
    .instance_size = sizeof(FleeceState),
    .open = fleece_open,
    .close = fleece_close,
    .can_write = fleece_can_write,
    .pread = fleece_pread,
    .block_status = fleece_block_status,
    .get_length = fleece_get_length,
};
