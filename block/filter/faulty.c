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
 * Invariants: the overlay is a sorted list of non-overlapping extents
 * holding the newest bytes (or zeroes) for their range; reads see the
 * real file, then zeroes past any pending shrink, then the overlay.  FUA
 * writes go straight through and are flushed, as the flag promises.  The
 * overlay is bounded (max-dirty=, 256 MiB by default): past that it is
 * written back to the file without a flush, which a disk may always do.
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

#define SECTOR 512
#define DEFAULT_MAX_DIRTY (256ull << 20)

enum { CLS_READ, CLS_WRITE, CLS_FLUSH, CLS_N };

typedef enum { PF_DROP, PF_KEEP, PF_RANDOM_PART } PowerfailMode;

typedef struct Extent {
    uint64_t off;
    uint64_t len;
    uint8_t *data;          /* NULL: the range reads as zeroes */
} Extent;

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

    /* The volatile overlay. */
    Extent *ext;
    size_t n_ext, cap_ext;
    uint64_t dirty_bytes;
    uint64_t max_dirty;
    uint64_t length;              /* the file length as callers see it */
    bool shrunk;                  /* a truncate cut below the real end */
    uint64_t shrink_to;           /* lowest length cut to since flush */

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

/* ------------------------------------------------------------------ */
/* The overlay                                                         */

/* Index of the first extent that ends after off. */
static size_t ov_find(FaultyState *s, uint64_t off)
{
    size_t lo = 0, hi = s->n_ext;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->ext[mid].off + s->ext[mid].len <= off) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static int ov_insert_at(FaultyState *s, size_t i, Extent e)
{
    if (s->n_ext == s->cap_ext) {
        size_t cap = s->cap_ext ? s->cap_ext * 2 : 64;
        Extent *ne = realloc(s->ext, cap * sizeof(*ne));
        if (!ne) {
            return -ENOMEM;
        }
        s->ext = ne;
        s->cap_ext = cap;
    }
    memmove(&s->ext[i + 1], &s->ext[i], (s->n_ext - i) * sizeof(Extent));
    s->ext[i] = e;
    s->n_ext++;
    if (e.data) {
        s->dirty_bytes += e.len;
    }
    return 0;
}

static void ov_remove_at(FaultyState *s, size_t i)
{
    if (s->ext[i].data) {
        s->dirty_bytes -= s->ext[i].len;
    }
    free(s->ext[i].data);
    memmove(&s->ext[i], &s->ext[i + 1],
            (s->n_ext - i - 1) * sizeof(Extent));
    s->n_ext--;
}

/* Removes [off, end) from the overlay, splitting extents at the edges.
 * Returns the index where an extent starting at off belongs. */
static int ov_punch(FaultyState *s, uint64_t off, uint64_t end, size_t *pos)
{
    size_t i = ov_find(s, off);
    while (i < s->n_ext && s->ext[i].off < end) {
        Extent *e = &s->ext[i];
        uint64_t eend = e->off + e->len;
        if (e->off < off) {
            /* Keep the head; a tail past end becomes its own extent. */
            if (eend > end) {
                Extent tail = { end, eend - end, NULL };
                if (e->data) {
                    tail.data = malloc(tail.len);
                    if (!tail.data) {
                        return -ENOMEM;
                    }
                    memcpy(tail.data, e->data + (end - e->off), tail.len);
                }
                int ret = ov_insert_at(s, i + 1, tail);
                if (ret < 0) {
                    free(tail.data);
                    return ret;
                }
                e = &s->ext[i];
            }
            if (e->data) {
                s->dirty_bytes -= eend - off;
            }
            e->len = off - e->off;
            i++;
            continue;
        }
        if (eend <= end) {
            ov_remove_at(s, i);
            continue;
        }
        /* Starts inside, ends past: keep the part after end. */
        uint64_t cut = end - e->off;
        if (e->data) {
            uint8_t *nd = malloc(e->len - cut);
            if (!nd) {
                return -ENOMEM;
            }
            memcpy(nd, e->data + cut, e->len - cut);
            free(e->data);
            e->data = nd;
            s->dirty_bytes -= cut;
        }
        e->off = end;
        e->len -= cut;
        break;
    }
    *pos = i;
    return 0;
}

/* Adds [off, off+len) holding buf (NULL: zeroes) as the newest data. */
static int ov_add(FaultyState *s, uint64_t off, uint64_t len,
                  const void *buf)
{
    size_t pos;
    int ret = ov_punch(s, off, off + len, &pos);
    if (ret < 0) {
        return ret;
    }
    Extent e = { off, len, NULL };
    if (buf) {
        e.data = malloc(len);
        if (!e.data) {
            return -ENOMEM;
        }
        memcpy(e.data, buf, len);
    }
    ret = ov_insert_at(s, pos, e);
    if (ret < 0) {
        free(e.data);
    }
    return ret;
}

static void ov_clear(FaultyState *s)
{
    for (size_t i = 0; i < s->n_ext; i++) {
        free(s->ext[i].data);
    }
    s->n_ext = 0;
    s->dirty_bytes = 0;
    s->shrunk = false;
}

static int child_put(FaultyState *s, uint64_t off, uint64_t len,
                     const uint8_t *data)
{
    if (data) {
        return block_pwrite(s->child, off, (size_t)len, data, 0);
    }
    return block_write_zeroes(s->child, off, len, BLOCK_REQ_MAY_UNMAP);
}

static int child_set_length(FaultyState *s, uint64_t len)
{
    int64_t cur = block_get_length(s->child);
    if (cur < 0) {
        return (int)cur;
    }
    if ((uint64_t)cur == len) {
        return 0;
    }
    Error err = { 0 };
    return block_truncate(s->child, len, true, PREALLOC_OFF, &err);
}

/* Writes the whole overlay to the child (no flush) and empties it. */
static int ov_writeback(FaultyState *s)
{
    int ret;
    if (s->shrunk) {
        ret = child_set_length(s, s->shrink_to);
        if (ret < 0) {
            return ret;
        }
    }
    for (size_t i = 0; i < s->n_ext; i++) {
        ret = child_put(s, s->ext[i].off, s->ext[i].len, s->ext[i].data);
        if (ret < 0) {
            return ret;
        }
    }
    ret = child_set_length(s, s->length);
    if (ret < 0) {
        return ret;
    }
    ov_clear(s);
    return 0;
}

/* What a crash leaves of the overlay: none, all, or random sectors. */
static void power_loss(FaultyState *s)
{
    s->powered_off = true;
    if (s->pf_mode == PF_KEEP) {
        ov_writeback(s);
    } else if (s->pf_mode == PF_RANDOM_PART) {
        /* The file's size is metadata of its own: the shrink and the new
         * length may or may not have made it. */
        if (s->shrunk && (rng_next(s) & 1)) {
            child_set_length(s, s->shrink_to);
        }
        for (size_t i = 0; i < s->n_ext; i++) {
            Extent *e = &s->ext[i];
            uint64_t p = e->off, end = e->off + e->len;
            while (p < end) {
                uint64_t next = (p / SECTOR + 1) * SECTOR;
                if (next > end) {
                    next = end;
                }
                if (rng_next(s) & 1) {
                    child_put(s, p, next - p,
                              e->data ? e->data + (p - e->off) : NULL);
                }
                p = next;
            }
        }
        if (rng_next(s) & 1) {
            int64_t cur = block_get_length(s->child);
            if (cur >= 0 && (uint64_t)cur > s->length) {
                child_set_length(s, s->length);
            }
        }
    }
    block_flush(s->child);
    ov_clear(s);
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

static int after_overlay_add(FaultyState *s)
{
    if (s->dirty_bytes > s->max_dirty) {
        return ov_writeback(s);
    }
    return 0;
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
    s->length = (uint64_t)len;
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
    if (!s->powered_off && (s->n_ext || s->shrunk)) {
        ov_writeback(s);
    }
    if (s->stats_file) {
        write_stats(s);
    }
    ov_clear(s);
    free(s->ext);
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
    uint64_t end = off + len;
    uint8_t *b = buf;
    if (s->shrunk && end > s->shrink_to) {
        uint64_t z = off > s->shrink_to ? off : s->shrink_to;
        memset(b + (z - off), 0, end - z);
    }
    for (size_t i = ov_find(s, off); i < s->n_ext && s->ext[i].off < end;
         i++) {
        Extent *e = &s->ext[i];
        uint64_t lo = e->off > off ? e->off : off;
        uint64_t hi = e->off + e->len < end ? e->off + e->len : end;
        if (e->data) {
            memcpy(b + (lo - off), e->data + (lo - e->off), hi - lo);
        } else {
            memset(b + (lo - off), 0, hi - lo);
        }
    }
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
        if (s->volatile_cache && s->shrunk) {
            /* A cached shrink would hide the new bytes from reads. */
            ret = ov_writeback(s);
        } else if (s->volatile_cache) {
            /* Write-through: older cached bytes of the range are stale. */
            size_t pos;
            ret = ov_punch(s, off, off + len, &pos);
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
        if (ret >= 0 && s->volatile_cache && off + len > s->length) {
            s->length = off + len;
        }
        goto out;
    }
    /* A discarded range reads as zeroes from the file driver too. */
    ret = ov_add(s, off, len, kind == K_WRITE ? data : NULL);
    if (ret < 0) {
        goto out;
    }
    if (kind != K_DISCARD && off + len > s->length) {
        s->length = off + len;
    }
    ret = after_overlay_add(s);
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
        ret = ov_writeback(s);
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
        size_t i = ov_find(s, off);
        if (i < s->n_ext && s->ext[i].off <= off) {
            Extent *e = &s->ext[i];
            uint64_t run = e->off + e->len - off;
            *pnum = run < len ? run : len;
            ret = BLOCK_STATUS_ALLOCATED |
                  (e->data ? BLOCK_STATUS_DATA : BLOCK_STATUS_ZERO);
            goto out;
        }
        if (i < s->n_ext && s->ext[i].off - off < len) {
            len = s->ext[i].off - off;
        }
        if (s->shrunk && off >= s->shrink_to) {
            *pnum = len;
            ret = BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO;
            goto out;
        }
        if (s->shrunk && s->shrink_to - off < len) {
            len = s->shrink_to - off;
        }
        int64_t clen = block_get_length(s->child);
        if (clen >= 0 && off >= (uint64_t)clen) {
            /* Grown by the overlay's length only: zeroes. */
            *pnum = len;
            ret = BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO;
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
    int64_t len = (int64_t)s->length;
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
            ret = ov_writeback(s);
            if (ret < 0) {
                error_setf(err, -ret, "faulty: write-back failed: %s",
                           strerror(-ret));
                goto out;
            }
        }
        ret = block_truncate(s->child, size, exact, pm, err);
        if (ret >= 0 && s->volatile_cache) {
            int64_t len = block_get_length(s->child);
            s->length = len >= 0 ? (uint64_t)len : size;
        }
        goto out;
    }
    if (size < s->length) {
        size_t pos;
        ret = ov_punch(s, size, UINT64_MAX, &pos);
        if (ret < 0) {
            error_setf(err, -ret, "faulty: out of memory");
            goto out;
        }
        int64_t clen = block_get_length(s->child);
        if (clen >= 0 && size < (uint64_t)clen &&
            (!s->shrunk || size < s->shrink_to)) {
            s->shrunk = true;
            s->shrink_to = size;
        }
    }
    s->length = size;
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
