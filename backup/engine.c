/*
 * engine.c - the cluster engine (promises in engine.h).
 *
 * Shape: workers loop "plan the next chunk (under the job lock) ->
 * read, hash and write it (unlocked, in parallel) -> post it".  Chunks
 * are planned in cluster order with growing sequence numbers and
 * committed in that order: whichever worker posts the chunk that is next
 * in line commits it and every posted chunk after it (appends its hashes
 * to the new map, writes a stream's bytes), outside the lock, while the
 * others go on.  Planning waits while WINDOW chunks are planned but not
 * committed, which bounds memory.
 *
 * A chunk is one of:
 *   SKIP  clusters `select` leaves alone: their hashes come from the
 *         reference map (STORE keeps the base's data; CHECK compares the
 *         map with the parent's);
 *   ZERO  clusters block status proves zero: no I/O to read them;
 *   DATA  clusters to read (up to CHUNK_BYTES), whose zero parts block
 *         status may still prove.
 * Chunk boundaries are cluster boundaries, so every cluster is hashed
 * whole by one worker.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup/engine.h"
#include "block/job/writeback.h"

#define CHUNK_BYTES (1u << 20)
/* A SKIP or ZERO chunk spans at most this many clusters (its hashes are
 * in memory). */
#define RUN_CLUSTERS 16384
#define WINDOW_PER_WORKER 4

typedef enum { CH_SKIP, CH_ZERO, CH_DATA } ChunkKind;

typedef struct Chunk {
    ChunkKind kind;
    uint64_t seq;
    uint64_t off, len;         /* bytes of the disk */
    uint64_t c0, nc;           /* clusters */
    BkHash *ref;               /* reference hashes, nc */
    BkHash *ref2;              /* CHECK: the parent's, nc */
    BkHash *hash;              /* what the disk holds, nc */
    uint8_t *buf;              /* DATA: the bytes (kept for streams) */
    bool *zero;                /* DATA: per cluster, all zero */
} Chunk;

typedef struct Engine {
    const BkJob *job;
    uint64_t cluster;
    uint64_t nclusters;
    int workers;
    uint64_t window;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint64_t next_pos;         /* next byte to plan */
    uint64_t next_seq;
    uint64_t commit_seq;       /* next chunk to commit */
    Chunk **posted;            /* [window], by seq % window */
    bool committing;
    uint64_t ref_pos;          /* clusters taken from job->ref */
    uint64_t ref2_pos;
    uint8_t **free_bufs;       /* spare DATA buffers */
    int nfree;

    BlockWriteback *wb;        /* early writeback of dst */
    BkStats st;
    int ret;
    Error err;
} Engine;

bool bk_buffer_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    /* Bytes to a word boundary, then words, then the tail. */
    while (len && ((uintptr_t)p & 7)) {
        if (*p) {
            return false;
        }
        p++;
        len--;
    }
    const uint64_t *w = (const uint64_t *)(const void *)p;
    size_t n = len / 8;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        if (w[i] | w[i + 1] | w[i + 2] | w[i + 3]) {
            return false;
        }
    }
    for (size_t i = n & ~(size_t)3; i < n; i++) {
        if (w[i]) {
            return false;
        }
    }
    p += n * 8;
    for (size_t i = 0; i < len % 8; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

/* The first failure wins; later ones are consequences of stopping. */
static void engine_fail(Engine *e, int ret, const Error *err)
{
    pthread_mutex_lock(&e->lock);
    if (!e->ret) {
        e->ret = ret < 0 ? ret : -EIO;
        if (err && err->code) {
            e->err = *err;
        } else {
            error_setf(&e->err, -e->ret, "%s", strerror(-e->ret));
        }
    }
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

static uint64_t cluster_len(const Engine *e, uint64_t c)
{
    uint64_t start = c * e->cluster;
    return e->job->size - start < e->cluster ? e->job->size - start
                                             : e->cluster;
}

static void chunk_free(Engine *e, Chunk *ch)
{
    if (!ch) {
        return;
    }
    if (ch->buf) {
        if (e->nfree < e->workers * (int)WINDOW_PER_WORKER) {
            e->free_bufs[e->nfree++] = ch->buf;
        } else {
            free(ch->buf);
        }
    }
    free(ch->ref);
    free(ch->ref2);
    free(ch->hash);
    free(ch->zero);
    free(ch);
}

/* Reference hashes for clusters [c0, c0 + n) from r (read in order); past
 * the map's end a disk reads zeroes. */
static int load_ref(Engine *e, SumsReader *r, uint64_t *pos, uint64_t c0,
                    uint64_t n, BkHash *out, Error *err)
{
    uint64_t got = 0;
    if (r) {
        if (*pos != c0) {
            return error_setf(err, EIO, "internal: map read out of order");
        }
        int k = sums_reader_next(r, out, n, err);
        if (k < 0) {
            return k;
        }
        got = (uint64_t)k;
        *pos += n;
    }
    for (uint64_t i = got; i < n; i++) {
        bk_hash_zero(cluster_len(e, c0 + i), e->job->seed, &out[i]);
    }
    return 0;
}

/* Plans the next chunk; *out NULL when the disk is done.  Lock held. */
static int plan(Engine *e, Chunk **out, Error *err)
{
    const BkJob *job = e->job;
    uint64_t cl = e->cluster;
    uint64_t pos = e->next_pos, size = job->size;
    ChunkKind kind = CH_DATA;
    uint64_t end;
    int ret;

    *out = NULL;
    if (pos >= size) {
        return 0;
    }
    if (job->cancel && atomic_load(job->cancel)) {
        return error_setf(err, ECANCELED, "interrupted");
    }
    uint64_t span = size - pos;
    if (span > (uint64_t)RUN_CLUSTERS * cl) {
        span = (uint64_t)RUN_CLUSTERS * cl;
    }
    if (job->select) {
        uint64_t pnum = 0;
        ret = job->select(job->select_opaque, pos, span, &pnum, err);
        if (ret < 0) {
            return ret;
        }
        if (pnum == 0) {
            return error_setf(err, EIO, "selection made no progress at "
                              "byte %llu", (unsigned long long)pos);
        }
        if (ret == 0) {
            /* Whole clusters only: a cluster partly selected is read. */
            end = (pos + pnum) / cl * cl;
            if (end > pos) {
                kind = CH_SKIP;
            } else {
                end = pos + cl < size ? pos + cl : size;
                span = end - pos;
            }
        } else {
            span = pnum < span ? pnum : span;
        }
    }
    if (kind == CH_DATA) {
        uint64_t pnum = 0;
        int st = block_status_above(job->src, NULL, pos, span, &pnum, NULL,
                                    NULL, NULL);
        if (st < 0) {
            return error_setf(err, -st, "cannot get the block status at "
                              "byte %llu: %s", (unsigned long long)pos,
                              strerror(-st));
        }
        if (pnum == 0) {
            return error_setf(err, EIO, "block status made no progress at "
                              "byte %llu", (unsigned long long)pos);
        }
        uint64_t zend = (pos + pnum) / cl * cl;
        if (pos + pnum >= size) {
            zend = size;
        }
        if ((st & BLOCK_STATUS_ZERO) && zend > pos) {
            kind = CH_ZERO;
            end = zend;
        } else {
            if (span > CHUNK_BYTES) {
                span = CHUNK_BYTES;
            }
            end = (pos + span + cl - 1) / cl * cl;
        }
    }
    if (end > size) {
        end = size;
    }
    Chunk *ch = calloc(1, sizeof(*ch));
    if (!ch) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    ch->kind = kind;
    ch->off = pos;
    ch->len = end - pos;
    ch->c0 = pos / cl;
    ch->nc = (end - pos + cl - 1) / cl;
    ch->ref = calloc(ch->nc, sizeof(BkHash));
    ch->hash = calloc(ch->nc, sizeof(BkHash));
    if (job->action == BK_ACT_CHECK) {
        ch->ref2 = calloc(ch->nc, sizeof(BkHash));
    }
    if (kind == CH_DATA) {
        ch->zero = calloc(ch->nc, sizeof(bool));
        if (e->nfree) {
            ch->buf = e->free_bufs[--e->nfree];
        } else if (posix_memalign((void **)&ch->buf, 4096, CHUNK_BYTES)) {
            ch->buf = NULL;
        }
    }
    if (!ch->ref || !ch->hash ||
        (job->action == BK_ACT_CHECK && !ch->ref2) ||
        (kind == CH_DATA && (!ch->zero || !ch->buf))) {
        chunk_free(e, ch);
        return error_setf(err, ENOMEM, "out of memory");
    }
    ret = load_ref(e, job->ref, &e->ref_pos, ch->c0, ch->nc, ch->ref, err);
    if (ret >= 0 && job->action == BK_ACT_CHECK) {
        ret = load_ref(e, job->ref2, &e->ref2_pos, ch->c0, ch->nc, ch->ref2,
                       err);
    }
    if (ret < 0) {
        chunk_free(e, ch);
        return ret;
    }
    ch->seq = e->next_seq++;
    e->next_pos = end;
    *out = ch;
    return 0;
}

/* ---- processing one chunk (no lock held) ---- */

/* Writes clusters [i, j) of ch to dst: data in one request (or one per
 * cluster, compressed), zeroes as a zero write. */
static int write_run(Engine *e, Chunk *ch, uint64_t i, uint64_t j,
                     bool zero, BkStats *st, Error *err)
{
    const BkJob *job = e->job;
    uint64_t off = (ch->c0 + i) * e->cluster;
    uint64_t end = (ch->c0 + j) * e->cluster;
    int ret = 0;
    if (end > job->size) {
        end = job->size;
    }
    if (zero) {
        ret = block_write_zeroes(job->dst, off, end - off,
                                 job->action == BK_ACT_RESTORE
                                     ? BLOCK_REQ_MAY_UNMAP : 0);
    } else if (job->compress) {
        for (uint64_t o = off; o < end && ret >= 0; o += e->cluster) {
            uint64_t l = end - o < e->cluster ? end - o : e->cluster;
            const uint8_t *b = ch->buf + (o - ch->off);
            ret = block_pwrite(job->dst, o, l, b, BLOCK_REQ_COMPRESSED);
            if (ret == -ENOTSUP || ret == -EINVAL) {
                /* a tail the format does not compress */
                ret = block_pwrite(job->dst, o, l, b, 0);
            }
        }
    } else {
        ret = block_pwrite(job->dst, off, end - off, ch->buf + (off - ch->off),
                           0);
    }
    if (ret < 0) {
        return error_setf(err, -ret, "error while writing at byte %llu: %s",
                          (unsigned long long)off, strerror(-ret));
    }
    if (!zero) {
        block_writeback_account(e->wb, end - off);
    }
    st->bytes_written += end - off;
    return 0;
}

static int read_chunk(Engine *e, Chunk *ch, BkStats *st, Error *err)
{
    const BkJob *job = e->job;
    uint64_t pos = ch->off, end = ch->off + ch->len;
    for (uint64_t c = 0; c < ch->nc; c++) {
        ch->zero[c] = true;
    }
    while (pos < end) {
        uint64_t pnum = 0;
        int s = block_status_above(job->src, NULL, pos, end - pos, &pnum,
                                   NULL, NULL, NULL);
        if (s < 0) {
            return error_setf(err, -s, "cannot get the block status at "
                              "byte %llu: %s", (unsigned long long)pos,
                              strerror(-s));
        }
        if (pnum == 0 || pnum > end - pos) {
            pnum = end - pos;
        }
        uint8_t *b = ch->buf + (pos - ch->off);
        if (s & BLOCK_STATUS_ZERO) {
            memset(b, 0, pnum);
        } else {
            int r = block_pread(job->src, pos, pnum, b);
            if (r < 0) {
                return error_setf(err, -r, "error while reading at byte "
                                  "%llu: %s", (unsigned long long)pos,
                                  strerror(-r));
            }
            st->bytes_read += pnum;
            uint64_t a = (pos - ch->off) / e->cluster;
            uint64_t z = (pos + pnum - ch->off - 1) / e->cluster;
            for (uint64_t c = a; c <= z; c++) {
                ch->zero[c] = false;
            }
        }
        pos += pnum;
    }
    for (uint64_t c = 0; c < ch->nc; c++) {
        uint64_t len = cluster_len(e, ch->c0 + c);
        const uint8_t *b = ch->buf + c * e->cluster;
        if (!ch->zero[c]) {
            ch->zero[c] = bk_buffer_is_zero(b, len);
        }
        if (ch->zero[c]) {
            bk_hash_zero(len, job->seed, &ch->hash[c]);
        } else {
            bk_hash(b, len, job->seed, &ch->hash[c]);
        }
    }
    st->clusters_read += ch->nc;
    return 0;
}

static int mismatch(Engine *e, uint64_t off, BkStats *st, Error *err)
{
    const BkJob *job = e->job;
    int depth = 0;
    uint64_t pnum;
    if (job->action == BK_ACT_RESTORE) {
        block_status_above(job->src, NULL, off, 1, &pnum, NULL, NULL, &depth);
        const char *layer = job->layer_name
                                ? job->layer_name(job->layer_opaque, depth)
                                : NULL;
        return error_setf(err, EILSEQ, "%s: the cluster at byte %llu does "
                          "not match its checksum (damaged data%s%s)",
                          job->what ? job->what : "restore",
                          (unsigned long long)off, layer ? " in point " : "",
                          layer ? layer : "");
    }
    if (st->mismatches++ == 0) {
        st->first_mismatch = off;
    }
    return 0;
}

static int process(Engine *e, Chunk *ch, BkStats *st, Error *err)
{
    const BkJob *job = e->job;
    int ret;

    if (ch->kind == CH_SKIP) {
        memcpy(ch->hash, ch->ref, ch->nc * sizeof(BkHash));
        if (job->action == BK_ACT_CHECK) {
            for (uint64_t c = 0; c < ch->nc; c++) {
                if (!bk_hash_eq(&ch->ref[c], &ch->ref2[c])) {
                    mismatch(e, (ch->c0 + c) * e->cluster, st, err);
                }
            }
        }
        return 0;
    }
    if (ch->kind == CH_ZERO) {
        for (uint64_t c = 0; c < ch->nc; c++) {
            bk_hash_zero(cluster_len(e, ch->c0 + c), job->seed, &ch->hash[c]);
        }
        st->clusters_read += ch->nc;
    } else {
        ret = read_chunk(e, ch, st, err);
        if (ret < 0) {
            return ret;
        }
    }
    /* Decide per cluster; runs of clusters to write the same way are
     * written together. */
    uint64_t run = 0;
    int run_kind = 0;          /* 0 none, 1 data, 2 zero */
    for (uint64_t c = 0; c <= ch->nc; c++) {
        int want = 0;
        if (c < ch->nc) {
            bool zero = ch->kind == CH_ZERO || ch->zero[c];
            bool same = bk_hash_eq(&ch->hash[c], &ch->ref[c]);
            switch (job->action) {
            case BK_ACT_STORE:
                if (!same) {
                    st->clusters_changed++;
                    want = zero ? (job->dst_backed ? 2 : 0) : 1;
                }
                break;
            case BK_ACT_RESTORE:
                if (!same) {
                    return mismatch(e, (ch->c0 + c) * e->cluster, st, err);
                }
                if (job->dst_fd < 0) {
                    want = zero ? (job->dst_zero ? 0 : 2) : 1;
                }
                break;
            case BK_ACT_CHECK:
                if (!same) {
                    mismatch(e, (ch->c0 + c) * e->cluster, st, err);
                }
                break;
            }
        }
        if (want != run_kind || c == ch->nc) {
            if (run_kind) {
                ret = write_run(e, ch, run, c, run_kind == 2, st, err);
                if (ret < 0) {
                    return ret;
                }
            }
            run = c;
            run_kind = want;
        }
    }
    return 0;
}

/* ---- committing in order (one worker at a time, no lock held) ---- */

static int commit(Engine *e, Chunk *ch, BkStats *st, Error *err)
{
    const BkJob *job = e->job;
    if (job->out) {
        int ret = sums_writer_append(job->out, ch->hash, ch->nc, err);
        if (ret < 0) {
            return ret;
        }
    }
    if (job->dst_fd >= 0 && job->action == BK_ACT_RESTORE) {
        static const uint8_t zeroes[65536];
        uint64_t done = 0;
        while (done < ch->len) {
            const uint8_t *b;
            size_t n;
            if (ch->kind == CH_DATA) {
                b = ch->buf + done;
                n = (size_t)(ch->len - done);
            } else {
                b = zeroes;
                n = ch->len - done < sizeof(zeroes) ? (size_t)(ch->len - done)
                                                    : sizeof(zeroes);
            }
            ssize_t w = write(job->dst_fd, b, n);
            if (w < 0) {
                if (errno == EINTR) {
                    continue;
                }
                int x = errno;
                return error_setf(err, x, "error while writing at byte "
                                  "%llu: %s",
                                  (unsigned long long)(ch->off + done),
                                  strerror(x));
            }
            done += (uint64_t)w;
        }
        st->bytes_written += ch->len;
    }
    if (job->progress) {
        job->progress(job->progress_opaque, ch->off + ch->len, job->size);
    }
    return 0;
}

/* Posts a processed chunk and, unless another worker is at it, commits
 * every chunk that is next in line.  Lock held on entry and exit. */
static void post(Engine *e, Chunk *ch, BkStats *st)
{
    e->posted[ch->seq % e->window] = ch;
    if (e->committing) {
        return;
    }
    e->committing = true;
    for (;;) {
        Chunk *c = e->posted[e->commit_seq % e->window];
        if (!c || c->seq != e->commit_seq || e->ret) {
            break;
        }
        e->posted[e->commit_seq % e->window] = NULL;
        pthread_mutex_unlock(&e->lock);
        Error err = { 0 };
        int ret = commit(e, c, st, &err);
        if (ret < 0) {
            engine_fail(e, ret, &err);
        }
        pthread_mutex_lock(&e->lock);
        chunk_free(e, c);
        e->commit_seq++;
        pthread_cond_broadcast(&e->cond);
    }
    e->committing = false;
}

static void *worker(void *arg)
{
    Engine *e = arg;
    BkStats st = { 0 };
    Error err = { 0 };

    pthread_mutex_lock(&e->lock);
    while (!e->ret) {
        while (!e->ret && e->next_seq - e->commit_seq >= e->window) {
            pthread_cond_wait(&e->cond, &e->lock);
        }
        if (e->ret) {
            break;
        }
        Chunk *ch = NULL;
        int ret = plan(e, &ch, &err);
        if (ret < 0) {
            pthread_mutex_unlock(&e->lock);
            engine_fail(e, ret, &err);
            pthread_mutex_lock(&e->lock);
            break;
        }
        if (!ch) {
            break;
        }
        pthread_mutex_unlock(&e->lock);
        error_clear(&err);
        ret = process(e, ch, &st, &err);
        if (ret < 0) {
            engine_fail(e, ret, &err);
        }
        pthread_mutex_lock(&e->lock);
        if (ret < 0) {
            chunk_free(e, ch);
            break;
        }
        post(e, ch, &st);
    }
    e->st.bytes_read += st.bytes_read;
    e->st.clusters_read += st.clusters_read;
    e->st.clusters_changed += st.clusters_changed;
    e->st.bytes_written += st.bytes_written;
    if (st.mismatches) {
        if (!e->st.mismatches ||
            st.first_mismatch < e->st.first_mismatch) {
            e->st.first_mismatch = st.first_mismatch;
        }
        e->st.mismatches += st.mismatches;
    }
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

int bk_engine_run(const BkJob *job, BkStats *stats, Error *err)
{
    Engine e;
    memset(&e, 0, sizeof(e));
    memset(stats, 0, sizeof(*stats));
    e.job = job;
    e.cluster = 1ull << job->cluster_bits;
    e.nclusters = (job->size + e.cluster - 1) / e.cluster;
    e.workers = job->workers > 0 ? job->workers : BK_DEFAULT_WORKERS;
    if (e.workers > BK_MAX_WORKERS) {
        e.workers = BK_MAX_WORKERS;
    }
    /* A stream or a tiny disk gains nothing from many workers. */
    if (e.nclusters < (uint64_t)e.workers) {
        e.workers = e.nclusters ? (int)e.nclusters : 1;
    }
    if (e.cluster > CHUNK_BYTES) {
        return error_setf(err, EINVAL, "cluster size %llu is too large",
                          (unsigned long long)e.cluster);
    }
    e.window = (uint64_t)e.workers * WINDOW_PER_WORKER;
    e.posted = calloc(e.window, sizeof(*e.posted));
    e.free_bufs = calloc(e.window, sizeof(*e.free_bufs));
    pthread_t *tids = calloc((size_t)e.workers, sizeof(*tids));
    if (!e.posted || !e.free_bufs || !tids) {
        free(e.posted);
        free(e.free_bufs);
        free(tids);
        return error_setf(err, ENOMEM, "out of memory");
    }
    pthread_mutex_init(&e.lock, NULL);
    pthread_cond_init(&e.cond, NULL);
    if (job->dst) {
        e.wb = block_writeback_start(job->dst);
    }
    int started = 0;
    for (int i = 0; i < e.workers; i++) {
        if (pthread_create(&tids[i], NULL, worker, &e) != 0) {
            if (i == 0) {
                /* No thread at all: do the work on this one. */
                worker(&e);
            }
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
    }
    block_writeback_stop(e.wb);
    for (uint64_t i = 0; i < e.window; i++) {
        chunk_free(&e, e.posted[i]);
    }
    for (int i = 0; i < e.nfree; i++) {
        free(e.free_bufs[i]);
    }
    int ret = e.ret;
    if (!ret && e.commit_seq != e.next_seq) {
        ret = error_setf(&e.err, EIO, "internal: %llu chunks not committed",
                         (unsigned long long)(e.next_seq - e.commit_seq));
    }
    *stats = e.st;
    if (ret < 0) {
        *err = e.err;
    }
    free(e.posted);
    free(e.free_bufs);
    free(tids);
    pthread_mutex_destroy(&e.lock);
    pthread_cond_destroy(&e.cond);
    return ret;
}
