/*
 * cache.c - the write-back cache of qcow2 metadata tables, its sizing
 * from the open options, and the guest flush.
 *
 * Two instances per image: L2 tables and refcount blocks, cluster-sized
 * tables kept in on-disk byte order.  The tables live in one reserved
 * anonymous mapping (page aligned, so O_DIRECT reads and writes of them
 * need no bounce buffer; a slot costs memory only once used), and a hash
 * on the host offset finds them, so a large L2 cache (QEMU's default
 * covers 256 GiB of image with 64 KiB clusters) costs no more per lookup
 * than a small one.  All calls need s->lock.
 *
 * The one ordering rule lives here: before a dirty L2 table is written,
 * every refcount increment it may depend on is written and the file
 * flushed, and so is guest data written into newly allocated clusters
 * (unless lazy refcounts have the image marked dirty, in which case
 * refcounts are rebuilt after a crash anyway).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "formats/qcow2/qcow2.h"

static uint32_t hash_of(Qcow2Cache *c, uint64_t offset)
{
    uint64_t h = (offset >> c->s->cluster_bits) * 0x9e3779b97f4a7c15ull;
    return (uint32_t)(h >> 32) & c->hash_mask;
}

static void hash_insert(Qcow2Cache *c, int i)
{
    uint32_t b = hash_of(c, c->entries[i].offset);
    c->hash_next[i] = c->hash_head[b];
    c->hash_head[b] = i;
}

static void hash_remove(Qcow2Cache *c, int i)
{
    for (int *p = &c->hash_head[hash_of(c, c->entries[i].offset)]; *p >= 0;
         p = &c->hash_next[*p]) {
        if (*p == i) {
            *p = c->hash_next[i];
            return;
        }
    }
}

/* Empties slot i (not pinned, written back) and lets its memory go. */
static void drop_entry(Qcow2Cache *c, int i, bool release)
{
    Qcow2CacheEntry *e = &c->entries[i];
    uint64_t cs = c->s->cluster_size;

    if (e->offset) {
        hash_remove(c, i);
    }
    e->offset = 0;
    e->dirty = false;
    if (release && cs >= (uint64_t)sysconf(_SC_PAGESIZE)) {
        madvise(e->data, cs, MADV_DONTNEED);
    }
}

int qcow2_cache_init(Qcow2State *s, Qcow2Cache *c, int size,
                     bool is_refcount)
{
    uint32_t buckets = 1;

    memset(c, 0, sizeof(*c));
    c->s = s;
    c->size = size;
    c->is_refcount = is_refcount;
    while (buckets < 2u * (uint32_t)size) {
        buckets <<= 1;
    }
    c->hash_mask = buckets - 1;
    c->entries = calloc((size_t)size, sizeof(*c->entries));
    c->hash_head = malloc(buckets * sizeof(int));
    c->hash_next = malloc((size_t)size * sizeof(int));
    void *t = mmap(NULL, (size_t)size * s->cluster_size,
                   PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    c->tables = t == MAP_FAILED ? NULL : t;
    if (!c->entries || !c->hash_head || !c->hash_next || !c->tables) {
        qcow2_cache_destroy(c);
        return -ENOMEM;
    }
    memset(c->hash_head, 0xff, buckets * sizeof(int));
    for (int i = 0; i < size; i++) {
        c->entries[i].data = c->tables + (size_t)i * s->cluster_size;
        c->hash_next[i] = -1;
    }
    return 0;
}

void qcow2_cache_destroy(Qcow2Cache *c)
{
    if (c->tables) {
        munmap(c->tables, (size_t)c->size * c->s->cluster_size);
    }
    free(c->entries);
    free(c->hash_head);
    free(c->hash_next);
    c->tables = NULL;
    c->entries = NULL;
    c->hash_head = c->hash_next = NULL;
}

void qcow2_cache_set_clean_interval(Qcow2Cache *c, uint64_t seconds)
{
    c->clean_interval = seconds;
}

static uint64_t now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec;
}

/* cache-clean-interval: clean tables not used since the last round give
 * their memory back (dirty ones wait for their write-back). */
static void maybe_clean(Qcow2Cache *c)
{
    uint64_t now = now_seconds();

    if (!c->clean_time) {
        c->clean_time = now;
        return;
    }
    if (now - c->clean_time < c->clean_interval) {
        return;
    }
    for (int i = 0; i < c->size; i++) {
        Qcow2CacheEntry *e = &c->entries[i];
        if (e->offset && !e->ref && !e->dirty && e->lru <= c->clean_lru) {
            drop_entry(c, i, true);
        }
    }
    c->clean_lru = c->lru_counter;
    c->clean_time = now;
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
            ret = block_flush(block_data_file(s->node));
            if (ret < 0) {
                return ret;
            }
        }
        ret = block_flush(block_file(s->node));
        if (ret < 0) {
            return ret;
        }
        if (!s->dirty_set) {
            s->refcount_unflushed = false;
        }
        s->data_unflushed = false;
    }
    /* QEMU's names for a cache table written back */
    block_debug_event(block_file(s->node), c->is_refcount
                      ? BLOCK_EV_REFBLOCK_UPDATE_PART : BLOCK_EV_L2_UPDATE);
    ret = block_pwrite(block_file(s->node), e->offset, s->cluster_size, e->data, 0);
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
    for (int i = c->hash_head[hash_of(c, offset)]; i >= 0;
         i = c->hash_next[i]) {
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
    drop_entry(c, (int)(victim - c->entries), false);
    *out = victim;
    return 0;
}

static int cache_get(Qcow2Cache *c, uint64_t offset, uint8_t **table,
                     bool read)
{
    Qcow2CacheEntry *e;
    int ret;

    if (offset == 0 || (offset & (c->s->cluster_size - 1))) {
        return -EIO;
    }
    if (c->clean_interval && !(c->lru_counter & 255)) {
        maybe_clean(c);   /* the clock is read every 256th lookup */
    }
    e = find(c, offset);
    if (!e) {
        ret = take_slot(c, &e);
        if (ret < 0) {
            return ret;
        }
        if (read) {
            block_debug_event(block_file(c->s->node), c->is_refcount
                              ? BLOCK_EV_REFBLOCK_LOAD : BLOCK_EV_L2_LOAD);
            ret = block_pread(block_file(c->s->node), offset, c->s->cluster_size,
                              e->data);
            if (ret < 0) {
                return ret;
            }
        } else {
            memset(e->data, 0, c->s->cluster_size);
        }
        e->offset = offset;
        hash_insert(c, (int)(e - c->entries));
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

bool qcow2_cache_peek(Qcow2Cache *c, uint64_t offset, uint8_t **table)
{
    Qcow2CacheEntry *e = offset ? find(c, offset) : NULL;
    if (!e) {
        return false;
    }
    e->ref++;
    e->lru = ++c->lru_counter;
    *table = e->data;
    return true;
}

int qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset, uint8_t **table)
{
    return cache_get(c, offset, table, false);
}

static Qcow2CacheEntry *entry_of(Qcow2Cache *c, const uint8_t *table)
{
    uint64_t cs = c->s->cluster_size;
    if (table < c->tables ||
        table >= c->tables + (size_t)c->size * cs) {
        return NULL;
    }
    Qcow2CacheEntry *e = &c->entries[(size_t)(table - c->tables) >>
                                     c->s->cluster_bits];
    return e->offset ? e : NULL;
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
        drop_entry(c, (int)(e - c->entries), false);
    }
}

void qcow2_cache_invalidate(Qcow2Cache *c)
{
    for (int i = 0; i < c->size; i++) {
        c->entries[i].offset = 0;
        c->entries[i].dirty = false;
        c->entries[i].ref = 0;
        c->hash_next[i] = -1;
    }
    memset(c->hash_head, 0xff, (c->hash_mask + 1) * sizeof(int));
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
    ret = block_flush(block_data_file(s->node));
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
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
    /* the caches are written (QEMU's flush_to_os): what follows is the
     * flush to the disk */
    block_debug_event(block_file(s->node), BLOCK_EV_FLUSH_TO_DISK);
    ret = sync_unlocked(s);
    if (ret < 0) {
        /* the tables may not be on disk: drop the frees (leaks) */
        free(frees);
        return ret;
    }
    return qcow2_apply_frees(s, frees, nfrees);
}

/* ------------------------------------------------------------------ */
/* Sizing from the open options                                        */

/* QEMU's defaults on Linux: the L2 cache holds up to 32 MiB (all the
 * tables of a 256 GiB image with 64 KiB clusters), never more than the
 * image's tables; the refcount cache holds 4 clusters. */
#define L2_CACHE_MAX_DEFAULT (32ull << 20)
#define MIN_L2_ENTRIES       2
#define MIN_REFCOUNT_ENTRIES 4
#define RC_CACHE_CAP         (32ull << 20)

static int get_cache_size(KVList *opts, const char *key, bool *set,
                          uint64_t *out, Error *err)
{
    const char *v = kvlist_get(opts, key);
    *set = v != NULL;
    *out = 0;
    if (!v) {
        return 0;
    }
    /* A well-formed size too large for 64 bits ("16E") is named as such,
     * in qemu-img's words, rather than called malformed. */
    int ret = *v == '-' ? -EINVAL : parse_size(v, out);
    if (ret == -ERANGE) {
        return error_setf(err, EINVAL, "Value '%s' is out of range for "
                          "parameter '%s'", v, key);
    }
    if (ret < 0) {
        return error_setf(err, EINVAL, "Parameter '%s' expects a "
                          "non-negative number below 2^64", key);
    }
    return 0;
}

int qcow2_cache_config(Qcow2State *s, KVList *opts, Qcow2CacheConfig *cfg,
                       Error *err)
{
    uint64_t cs = s->cluster_size;
    uint64_t l2, rc, all, entry = cs;
    bool l2_set, rc_set, all_set;
    int ret;

    if ((ret = get_cache_size(opts, "l2-cache-size", &l2_set, &l2,
                              err)) < 0 ||
        (ret = get_cache_size(opts, "refcount-cache-size", &rc_set, &rc,
                              err)) < 0 ||
        (ret = get_cache_size(opts, "cache-size", &all_set, &all, err)) < 0) {
        return ret;
    }
    const char *v = kvlist_get(opts, "l2-cache-entry-size");
    if (v) {
        bool unused;
        if ((ret = get_cache_size(opts, "l2-cache-entry-size", &unused,
                                  &entry, err)) < 0) {
            return ret;
        }
        if (entry < 512 || entry > cs || (entry & (entry - 1))) {
            return error_setf(err, EINVAL, "L2 cache entry size must be a "
                              "power of two between 512 and the cluster "
                              "size (%llu)", (unsigned long long)cs);
        }
    }
    cfg->clean_interval = 600;
    v = kvlist_get(opts, "cache-clean-interval");
    if (v) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 0);
        if (!*v || *end) {
            return error_setf(err, EINVAL, "Parameter "
                              "'cache-clean-interval' expects a number");
        }
        if (errno || n > 0xffffffffull) {
            return error_setf(err, EINVAL, "Cache clean interval too big");
        }
        cfg->clean_interval = n;
    }

    /* All the image's tables: what more L2 cache could never hold. */
    uint64_t tables = (s->size + cs - 1) / cs;
    uint64_t max_l2 = qcow2_align_up(tables * s->l2_entry_size, cs);
    uint64_t min_rc = MIN_REFCOUNT_ENTRIES * cs;
    if (all_set) {
        if (l2_set && rc_set) {
            return error_setf(err, EINVAL, "cache-size, l2-cache-size and "
                              "refcount-cache-size may not be set at the "
                              "same time");
        }
        if (l2_set && l2 > all) {
            return error_setf(err, EINVAL, "l2-cache-size may not exceed "
                              "cache-size");
        }
        if (rc_set && rc > all) {
            return error_setf(err, EINVAL, "refcount-cache-size may not "
                              "exceed cache-size");
        }
        if (l2_set) {
            rc = all - l2;
        } else if (rc_set) {
            l2 = all - rc;
        } else if (all >= max_l2 + min_rc) {
            l2 = max_l2;
            rc = all - l2;
        } else {
            /* the L2 cache gets what the smallest refcount cache leaves */
            rc = all < min_rc ? all : min_rc;
            l2 = all - rc;
        }
    } else {
        if (!l2_set) {
            l2 = L2_CACHE_MAX_DEFAULT;
        }
        if (!rc_set) {
            /* QEMU's 4 clusters, but small clusters get 256 KiB: check
             * and snapshots walk the refcounts of the whole image */
            rc = min_rc > (256u << 10) ? min_rc : (256u << 10);
        }
    }
    if (l2 > max_l2) {
        l2 = max_l2;
    }
    if (l2 / entry > 0x7fffffffull) {
        return error_setf(err, EINVAL, "L2 cache size too big");
    }
    if (rc / cs > 0x7fffffffull) {
        return error_setf(err, EINVAL, "Refcount cache size too big");
    }
    /* Whole tables are cached whatever the entry size: the same memory
     * bound, in tables. */
    uint64_t n = l2 / cs;
    cfg->l2_entries = n < MIN_L2_ENTRIES ? MIN_L2_ENTRIES : (int)n;
    /* More refcount blocks than 32 MiB cover 2^40 clusters with 16-bit
     * refcounts: a larger request only costs memory. */
    n = (rc < RC_CACHE_CAP ? rc : RC_CACHE_CAP) / cs;
    cfg->refcount_entries = n < MIN_REFCOUNT_ENTRIES ? MIN_REFCOUNT_ENTRIES
                                                     : (int)n;
    return 0;
}
