/*
 * cache.c - the write-back cache of qcow2 metadata tables.
 *
 * Two instances per image: L2 tables and refcount blocks, each a few dozen
 * cluster-sized buffers kept in on-disk byte order.  All calls need
 * s->lock; the guest flush (at the end) drops it while the files are
 * synced.  The one ordering rule lives here: before a dirty L2 table is
 * written, every refcount increment it may depend on is written and the
 * file flushed (unless lazy refcounts have the image marked dirty, in
 * which case refcounts are rebuilt after a crash anyway).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

int qcow2_cache_init(Qcow2State *s, Qcow2Cache *c, int size,
                     bool is_refcount)
{
    memset(c, 0, sizeof(*c));
    c->s = s;
    c->size = size;
    c->is_refcount = is_refcount;
    c->entries = calloc((size_t)size, sizeof(*c->entries));
    return c->entries ? 0 : -ENOMEM;
}

void qcow2_cache_destroy(Qcow2Cache *c)
{
    if (!c->entries) {
        return;
    }
    for (int i = 0; i < c->size; i++) {
        free(c->entries[i].data);
    }
    free(c->entries);
    c->entries = NULL;
}

static int write_entry(Qcow2Cache *c, Qcow2CacheEntry *e)
{
    Qcow2State *s = c->s;
    int ret;

    if (!e->dirty) {
        return 0;
    }
    if (!c->is_refcount && ((s->refcount_unflushed && !s->dirty_set) ||
                            s->data_unflushed)) {
        /* Refcounts of new clusters, and the data written into them, go
         * to disk before a table that points at them. */
        if (s->refcount_unflushed && !s->dirty_set) {
            ret = qcow2_cache_writeback(&s->refcount_cache);
            if (ret < 0) {
                return ret;
            }
        }
        if (s->data_unflushed && s->has_data_file) {
            ret = block_flush(s->node->data_file);
            if (ret < 0) {
                return ret;
            }
        }
        ret = block_flush(s->node->file);
        if (ret < 0) {
            return ret;
        }
        if (!s->dirty_set) {
            s->refcount_unflushed = false;
        }
        s->data_unflushed = false;
    }
    ret = block_pwrite(s->node->file, e->offset, s->cluster_size, e->data, 0);
    if (ret < 0) {
        return ret;
    }
    e->dirty = false;
    return 0;
}

int qcow2_cache_writeback(Qcow2Cache *c)
{
    int result = 0;

    for (int i = 0; i < c->size; i++) {
        Qcow2CacheEntry *e = &c->entries[i];
        if (e->offset && e->dirty) {
            int ret = write_entry(c, e);
            if (ret < 0 && result == 0) {
                result = ret;
            }
        }
    }
    return result;
}

static Qcow2CacheEntry *find(Qcow2Cache *c, uint64_t offset)
{
    for (int i = 0; i < c->size; i++) {
        if (c->entries[i].offset == offset) {
            return &c->entries[i];
        }
    }
    return NULL;
}

/* A free or evictable slot (writing it back if dirty). */
static int take_slot(Qcow2Cache *c, Qcow2CacheEntry **out)
{
    Qcow2CacheEntry *victim = NULL;

    for (int i = 0; i < c->size; i++) {
        Qcow2CacheEntry *e = &c->entries[i];
        if (e->ref) {
            continue;
        }
        if (!e->offset) {
            victim = e;
            break;
        }
        if (!victim || e->lru < victim->lru) {
            victim = e;
        }
    }
    if (!victim) {
        return -ENOSPC;
    }
    if (victim->offset && victim->dirty) {
        int ret = write_entry(c, victim);
        if (ret < 0) {
            return ret;
        }
    }
    if (!victim->data) {
        victim->data = malloc(c->s->cluster_size);
        if (!victim->data) {
            return -ENOMEM;
        }
    }
    victim->offset = 0;
    victim->dirty = false;
    *out = victim;
    return 0;
}

static int cache_get(Qcow2Cache *c, uint64_t offset, uint8_t **table,
                     bool read)
{
    Qcow2CacheEntry *e = find(c, offset);
    int ret;

    if (offset == 0 || offset % c->s->cluster_size) {
        return -EIO;
    }
    if (!e) {
        ret = take_slot(c, &e);
        if (ret < 0) {
            return ret;
        }
        if (read) {
            ret = block_pread(c->s->node->file, offset, c->s->cluster_size,
                              e->data);
            if (ret < 0) {
                return ret;
            }
        } else {
            memset(e->data, 0, c->s->cluster_size);
        }
        e->offset = offset;
    } else if (!read) {
        memset(e->data, 0, c->s->cluster_size);
    }
    e->ref++;
    e->lru = ++c->lru_counter;
    *table = e->data;
    return 0;
}

int qcow2_cache_get(Qcow2Cache *c, uint64_t offset, uint8_t **table)
{
    return cache_get(c, offset, table, true);
}

int qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset, uint8_t **table)
{
    return cache_get(c, offset, table, false);
}

static Qcow2CacheEntry *entry_of(Qcow2Cache *c, const uint8_t *table)
{
    for (int i = 0; i < c->size; i++) {
        if (c->entries[i].data == table && c->entries[i].offset) {
            return &c->entries[i];
        }
    }
    return NULL;
}

void qcow2_cache_put(Qcow2Cache *c, uint8_t **table)
{
    Qcow2CacheEntry *e;

    if (!*table) {
        return;
    }
    e = entry_of(c, *table);
    if (e && e->ref > 0) {
        e->ref--;
    }
    *table = NULL;
}

void qcow2_cache_mark_dirty(Qcow2Cache *c, const uint8_t *table)
{
    Qcow2CacheEntry *e = entry_of(c, table);

    if (e) {
        e->dirty = true;
        if (c->is_refcount) {
            c->s->refcount_unflushed = true;
            c->s->unflushed_gen++;
        }
    }
}

void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    Qcow2CacheEntry *e = find(c, offset);

    if (e && !e->ref) {
        e->offset = 0;
        e->dirty = false;
    }
}

void qcow2_cache_invalidate(Qcow2Cache *c)
{
    for (int i = 0; i < c->size; i++) {
        c->entries[i].offset = 0;
        c->entries[i].dirty = false;
        c->entries[i].ref = 0;
    }
}

static bool has_dirty(Qcow2Cache *c)
{
    for (int i = 0; i < c->size; i++) {
        if (c->entries[i].offset && c->entries[i].dirty) {
            return true;
        }
    }
    return false;
}

/* Flushes the data file and the image file without s->lock (held on
 * entry and on return).  What was written before the call is then on
 * disk; the unflushed flags are cleared unless something new became
 * unflushed meanwhile. */
static int sync_unlocked(Qcow2State *s)
{
    uint64_t gen = s->unflushed_gen;
    int ret;

    pthread_mutex_unlock(&s->lock);
    ret = block_flush(s->node->data_file);
    if (ret >= 0) {
        ret = block_flush(s->node->file);
    }
    pthread_mutex_lock(&s->lock);
    if (ret >= 0 && gen == s->unflushed_gen) {
        if (!has_dirty(&s->refcount_cache)) {
            s->refcount_unflushed = false;
        }
        s->data_unflushed = false;
    }
    return ret;
}

int qcow2_cache_flush_all(Qcow2State *s)
{
    int ret = 0;

    /* Refcounts and data the dirty L2 tables depend on: on disk first, so
     * that writing the tables below needs no flush under the lock. */
    if (has_dirty(&s->l2_cache) &&
        ((s->refcount_unflushed && !s->dirty_set) || s->data_unflushed)) {
        ret = qcow2_cache_writeback(&s->refcount_cache);
        if (ret >= 0) {
            ret = sync_unlocked(s);
        }
    }
    if (ret >= 0) {
        /* flushes again by itself if new allocations came in meanwhile */
        ret = qcow2_cache_writeback(&s->l2_cache);
    }
    if (ret >= 0) {
        ret = qcow2_cache_writeback(&s->refcount_cache);
    }
    if (ret < 0) {
        return ret;
    }
    /* Clusters whose last reference went with the tables just written
     * are freed once those are on disk; frees deferred while the lock is
     * dropped wait for the next flush. */
    Qcow2PendingFree *frees;
    size_t nfrees;
    qcow2_take_pending_frees(s, &frees, &nfrees);
    ret = sync_unlocked(s);
    if (ret < 0) {
        /* the tables may not be on disk: drop the frees (leaks) */
        free(frees);
        return ret;
    }
    return qcow2_apply_frees(s, frees, nfrees);
}
