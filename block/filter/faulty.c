/*
 * faulty.c - a filter that injects I/O errors and simulates power loss,
 * for reliability tests (the test-VFS idea of SQLite).
 *
 *   --image-opts driver=qcow2,file.driver=faulty,file.filename=IMG,
 *                file.powerfail-after-writes=17,file.powerfail-mode=random-part
 *
 * It usually sits between a format node and the real protocol node
 * (opened from its "file.*" options, a plain file by default), but like
 * any filter it can sit anywhere, over a format too
 * (driver=faulty,file.driver=qcow2,file.file.filename=IMG).  It passes
 * requests on, except:
 *
 *  - fail-read=N / fail-write=N / fail-flush=N fail the Nth request of
 *    that class (1-based) with errno= (EIO by default); fail-count=K
 *    fails K consecutive ones.  fail-all-after=N fails every request
 *    after the first N of any class.  "write" means every request that
 *    changes the file: pwrite, write_zeroes, discard and truncate.
 *
 *  - Power loss.  With powerfail-after-writes=N (power goes right after
 *    the Nth write is acknowledged) or powerfail-at-flush=N (power goes
 *    instead of completing the Nth flush), writes are held in a volatile
 *    overlay in memory, as a disk's write cache holds them, and reach the
 *    real file only when a flush completes.  At power loss the overlay is
 *    dropped (powerfail-mode=drop, the default), kept whole (keep), or
 *    a random subset of its 512-byte sectors is kept (random-part, seeded
 *    by seed=): torn, reordered writes.  Every later request fails with
 *    EIO and nothing more reaches the file, so what is on disk afterwards
 *    is what a crash at that moment could have left.
 *
 * The overlay is volatile-cache.c; it is bounded (max-dirty=, 256 MiB by
 * default): past that it is written back to the file without a flush,
 * which a disk may always do.
 *
 * Invariants: every request and the cache are serialised by s->lock; a
 * request counts in its class before it can fail, so the Nth request of
 * a class is the Nth the caller made.  FUA writes go straight through and
 * are flushed, as the flag promises.  Once powered off, nothing more
 * reaches the child.
 *
 * stats-file=PATH receives the request counters at close, so a test can
 * learn how many writes a workload makes and pick cut points among them.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/driver.h"
#include "block/filter/volatile-cache.h"

#define DEFAULT_MAX_DIRTY (256ull << 20)

enum { CLS_READ, CLS_WRITE, CLS_FLUSH, CLS_N };

typedef enum { PF_DROP, PF_KEEP, PF_RANDOM_PART } PowerfailMode;

typedef struct FaultyState {
    BlockNode *child;
    pthread_mutex_t lock;

    /* Error injection. */
    uint64_t fail_at[CLS_N];      /* 0 = never */
    uint64_t fail_count;
    uint64_t fail_all_after;      /* 0 = never */
    int err;

    uint64_t count[CLS_N];
    uint64_t total;

    /* Power loss. */
    bool volatile_cache;
    uint64_t pf_after_writes;     /* 0 = never */
    uint64_t pf_at_flush;         /* 0 = never */
    PowerfailMode pf_mode;
    uint64_t rng;
    bool powered_off;

    /* The disk's write cache, used with volatile_cache only. */
    VolatileCache cache;
    uint64_t max_dirty;

    char *stats_file;
    uint64_t injected;
    uint64_t read_bytes;          /* bytes of the reads that got through */
} FaultyState;

/* ------------------------------------------------------------------ */
/* Options                                                             */

static const struct {
    const char *name;
    int code;
} errno_names[] = {
    { "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EDQUOT", EDQUOT },
    { "ENOMEM", ENOMEM }, { "EROFS", EROFS }, { "EPERM", EPERM },
    { "EACCES", EACCES }, { "EFBIG", EFBIG }, { "ETIMEDOUT", ETIMEDOUT },
};

static int parse_errno(const char *s, int *out)
{
    for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]);
         i++) {
        if (strcasecmp(s, errno_names[i].name) == 0) {
            *out = errno_names[i].code;
            return 0;
        }
    }
    char *end;
    long v = strtol(s, &end, 10);
    if (*s && !*end && v > 0 && v < 4096) {
        *out = (int)v;
        return 0;
    }
    return -EINVAL;
}

static int parse_options(FaultyState *s, KVList *opts, Error *err)
{
    static const char *const fail_keys[CLS_N] = {
        "fail-read", "fail-write", "fail-flush",
    };
    int ret;

    for (int c = 0; c < CLS_N; c++) {
        ret = kvlist_get_uint(opts, fail_keys[c], 0, &s->fail_at[c], err);
        if (ret < 0) {
            return ret;
        }
    }
    ret = kvlist_get_uint(opts, "fail-count", 1, &s->fail_count, err);
    if (ret < 0) {
        return ret;
    }
    ret = kvlist_get_uint(opts, "fail-all-after", 0, &s->fail_all_after,
                          err);
    if (ret < 0) {
        return ret;
    }
    s->err = EIO;
    const char *e = kvlist_get(opts, "errno");
    if (e && parse_errno(e, &s->err) < 0) {
        return error_setf(err, EINVAL, "faulty: unknown errno '%s'", e);
    }
    ret = kvlist_get_uint(opts, "powerfail-after-writes", 0,
                          &s->pf_after_writes, err);
    if (ret < 0) {
        return ret;
    }
    ret = kvlist_get_uint(opts, "powerfail-at-flush", 0, &s->pf_at_flush,
                          err);
    if (ret < 0) {
        return ret;
    }
    const char *mode = kvlist_get(opts, "powerfail-mode");
    if (!mode || !strcmp(mode, "drop")) {
        s->pf_mode = PF_DROP;
    } else if (!strcmp(mode, "keep")) {
        s->pf_mode = PF_KEEP;
    } else if (!strcmp(mode, "random-part")) {
        s->pf_mode = PF_RANDOM_PART;
    } else {
        return error_setf(err, EINVAL, "faulty: powerfail-mode must be "
                          "drop, keep or random-part, not '%s'", mode);
    }
    uint64_t seed;
    ret = kvlist_get_uint(opts, "seed", 1, &seed, err);
    if (ret < 0) {
        return ret;
    }
    /* xorshift has one fixed point, zero. */
    s->rng = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    if (!s->rng) {
        s->rng = 1;
    }
    bool want_overlay = s->pf_after_writes || s->pf_at_flush;
    ret = kvlist_get_bool(opts, "volatile-cache", want_overlay,
                          &s->volatile_cache, err);
    if (ret < 0) {
        return ret;
    }
    if (want_overlay && !s->volatile_cache) {
        return error_setf(err, EINVAL, "faulty: power loss needs "
                          "volatile-cache=on");
    }
    ret = kvlist_get_size(opts, "max-dirty", DEFAULT_MAX_DIRTY,
                          &s->max_dirty, err);
    if (ret < 0) {
        return ret;
    }
    const char *stats = kvlist_get(opts, "stats-file");
    if (stats) {
        s->stats_file = strdup(stats);
        if (!s->stats_file) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    return 0;
}

static uint64_t rng_next(FaultyState *s)
{
    uint64_t x = s->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static bool rng_coin(void *opaque)
{
    return rng_next(opaque) & 1;
}

/* What a crash leaves of the cache: none, all, or random sectors. */
static void power_loss(FaultyState *s)
{
    static const VCacheCrash how[] = {
        [PF_DROP] = VCACHE_CRASH_DROP,
        [PF_KEEP] = VCACHE_CRASH_KEEP,
        [PF_RANDOM_PART] = VCACHE_CRASH_RANDOM_PART,
    };
    s->powered_off = true;
    vcache_crash(&s->cache, how[s->pf_mode], rng_coin, s);
}

/* ------------------------------------------------------------------ */
/* Request gate                                                        */

/* Counts a request and decides whether it fails.  Needs s->lock. */
static int gate(FaultyState *s, int cls)
{
    if (s->powered_off) {
        return -EIO;
    }
    s->count[cls]++;
    s->total++;
    if (s->fail_all_after && s->total > s->fail_all_after) {
        s->injected++;
        return -s->err;
    }
    uint64_t at = s->fail_at[cls];
    if (at && s->count[cls] >= at && s->count[cls] - at < s->fail_count) {
        s->injected++;
        return -s->err;
    }
    return 0;
}

/* After a write was acknowledged: the power may go now. */
static void after_write(FaultyState *s)
{
    if (s->pf_after_writes && s->count[CLS_WRITE] == s->pf_after_writes) {
        power_loss(s);
    }
}

/* ------------------------------------------------------------------ */
/* Driver callbacks                                                    */

static bool faulty_can_fua(BlockNode *n)
{
    return true;
}

static int faulty_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    FaultyState *s = n->opaque;
    int ret = parse_options(s, opts, err);
    if (ret < 0) {
        free(s->stats_file);
        return ret;
    }
    /* The core opened what we filter (file.* options, a plain file by
     * default) before calling us. */
    s->child = block_filtered(n);
    int64_t len = block_get_length(s->child);
    if (len < 0) {
        free(s->stats_file);
        return error_setf(err, (int)-len, "faulty: cannot get length");
    }
    vcache_init(&s->cache, s->child, (uint64_t)len, s->max_dirty);
    pthread_mutex_init(&s->lock, NULL);
    n->request_alignment = s->child->request_alignment;
    n->max_transfer = s->child->max_transfer;
    return 0;
}

static void write_stats(FaultyState *s)
{
    FILE *f = fopen(s->stats_file, "w");
    if (!f) {
        return;
    }
    fprintf(f, "reads=%" PRIu64 "\nwrites=%" PRIu64 "\nflushes=%" PRIu64
            "\ninjected=%" PRIu64 "\npowered_off=%d\nread_bytes=%" PRIu64
            "\n", s->count[CLS_READ], s->count[CLS_WRITE],
            s->count[CLS_FLUSH], s->injected, s->powered_off ? 1 : 0,
            s->read_bytes);
    fclose(f);
}

static void faulty_close(BlockNode *n)
{
    FaultyState *s = n->opaque;
    /* Without a crash the cache reaches the disk at some point anyway;
     * the core closes the child (block_file(n)) after us. */
    if (!s->powered_off && vcache_dirty(&s->cache)) {
        vcache_writeback(&s->cache);
    }
    if (s->stats_file) {
        write_stats(s);
    }
    vcache_destroy(&s->cache);
    free(s->stats_file);
    pthread_mutex_destroy(&s->lock);
}

static int faulty_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    FaultyState *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = gate(s, CLS_READ);
    if (ret < 0) {
        goto out;
    }
    ret = block_pread(s->child, off, len, buf);
    if (ret >= 0) {
        s->read_bytes += len;
    }
    if (ret < 0 || !s->volatile_cache) {
        goto out;
    }
    vcache_read(&s->cache, off, len, buf);
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* The shared path of pwrite/write_zeroes/discard: data NULL = zeroes. */
static int faulty_modify(BlockNode *n, uint64_t off, uint64_t len,
                         const void *data, int kind, int flags)
{
    enum { K_WRITE, K_ZERO, K_DISCARD };
    FaultyState *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = gate(s, CLS_WRITE);
    if (ret < 0) {
        goto out;
    }
    if (!s->volatile_cache || (flags & BLOCK_REQ_FUA)) {
        if (s->volatile_cache) {
            ret = vcache_write_through(&s->cache, off, len);
        }
        if (ret < 0) {
            goto out;
        }
        if (kind == K_WRITE) {
            ret = block_pwrite(s->child, off, (size_t)len, data, flags);
        } else if (kind == K_ZERO) {
            ret = block_write_zeroes(s->child, off, len, flags);
        } else {
            ret = block_discard(s->child, off, len);
        }
        if (ret >= 0 && s->volatile_cache) {
            vcache_grow(&s->cache, off + len);
        }
        goto out;
    }
    /* A discarded range reads as zeroes from the file driver too. */
    ret = vcache_store(&s->cache, off, len, kind == K_WRITE ? data : NULL,
                       kind != K_DISCARD);
out:
    if (ret >= 0) {
        after_write(s);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int faulty_pwrite(BlockNode *n, uint64_t off, size_t len,
                         const void *buf, int flags)
{
    return faulty_modify(n, off, len, buf, 0, flags);
}

static int faulty_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                               int flags)
{
    if (flags & BLOCK_REQ_NO_FALLBACK) {
        /* The overlay stores zeroes cheaply: never a fallback. */
        flags &= ~BLOCK_REQ_NO_FALLBACK;
    }
    return faulty_modify(n, off, len, NULL, 1, flags);
}

static int faulty_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    return faulty_modify(n, off, len, NULL, 2, 0);
}

static int faulty_flush(BlockNode *n)
{
    FaultyState *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = gate(s, CLS_FLUSH);
    if (ret < 0) {
        goto out;
    }
    if (s->pf_at_flush && s->count[CLS_FLUSH] == s->pf_at_flush) {
        power_loss(s);
        ret = -EIO;
        goto out;
    }
    if (s->volatile_cache) {
        ret = vcache_writeback(&s->cache);
    }
    /* The core flushes the child (block_file(n)) after us. */
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int faulty_block_status(BlockNode *n, uint64_t off, uint64_t len,
                               uint64_t *pnum, uint64_t *map,
                               BlockNode **file)
{
    FaultyState *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret;
    if (s->powered_off) {
        ret = -EIO;
        goto out;
    }
    if (s->volatile_cache) {
        ret = vcache_block_status(&s->cache, off, &len, pnum);
        if (ret > 0) {
            goto out;
        }
    }
    ret = block_status(s->child, off, len, pnum, map, file);
    if (ret >= 0 && *pnum == 0) {
        *pnum = len;
        ret = BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO;
    }
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int64_t faulty_get_length(BlockNode *n)
{
    FaultyState *s = n->opaque;
    if (!s->volatile_cache) {
        return block_get_length(s->child);
    }
    pthread_mutex_lock(&s->lock);
    int64_t len = (int64_t)vcache_length(&s->cache);
    pthread_mutex_unlock(&s->lock);
    return len;
}

static int faulty_truncate(BlockNode *n, uint64_t size, bool exact,
                           PreallocMode pm, Error *err)
{
    FaultyState *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = gate(s, CLS_WRITE);
    if (ret < 0) {
        error_setf(err, -ret, "faulty: injected error: %s", strerror(-ret));
        goto out;
    }
    if (!s->volatile_cache || pm != PREALLOC_OFF) {
        /* Preallocation is the child's business: write it through. */
        if (s->volatile_cache) {
            ret = vcache_writeback(&s->cache);
            if (ret < 0) {
                error_setf(err, -ret, "faulty: write-back failed: %s",
                           strerror(-ret));
                goto out;
            }
        }
        ret = block_truncate(s->child, size, exact, pm, err);
        if (ret >= 0 && s->volatile_cache) {
            int64_t len = block_get_length(s->child);
            vcache_set_length(&s->cache, len >= 0 ? (uint64_t)len : size);
        }
        goto out;
    }
    ret = vcache_truncate(&s->cache, size);
    if (ret < 0) {
        error_setf(err, -ret, "faulty: out of memory");
        goto out;
    }
out:
    if (ret >= 0) {
        after_write(s);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

const BlockDriver faulty_driver = {
    .api_version = BLOCK_DRIVER_API_VERSION,
    .name = "faulty",
    .kind = BLOCK_DRIVER_FILTER,
    .instance_size = sizeof(FaultyState),
    .can_fua = faulty_can_fua,
    .open = faulty_open,
    .close = faulty_close,
    .pread = faulty_pread,
    .pwrite = faulty_pwrite,
    .flush = faulty_flush,
    .discard = faulty_discard,
    .write_zeroes = faulty_write_zeroes,
    .block_status = faulty_block_status,
    .get_length = faulty_get_length,
    .truncate = faulty_truncate,
};
