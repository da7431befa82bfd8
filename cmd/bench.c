/*
 * bench.c - `imgtool bench`: a simple I/O benchmark with qemu-img bench's
 * options, output and exit codes, plus a random-offset mode qemu-img
 * lacks.
 *
 * Depth means requests in flight.  By default one thread submits them
 * through the block layer's asynchronous API and keeps exactly `depth`
 * outstanding (a BlockQueue), which is what qemu-img's coroutines do
 * with its AIO; the file protocol runs them through io_uring where the
 * kernel allows.  --threads instead has `depth` worker threads each
 * issue one synchronous request at a time (the model before the
 * asynchronous API, kept for comparison).
 *
 * Requests are numbered 0..count-1 and a worker takes the next number
 * from a shared counter.  The offset is a pure function of the number
 * (offset + i*step, wrapping at the image end as qemu-img does; or a
 * hash of (seed, i) with --random), so the set of offsets does not depend
 * on thread scheduling and two runs with the same seed touch the same
 * blocks.
 *
 * Flushes (--flush-interval=N, writes only): before request N, 2N, ...
 * one flush is issued.  By default the flusher first waits until no
 * request is in flight and holds new ones back until the flush returns
 * (qemu-img's drain); with --no-drain the flush runs alongside the other
 * requests.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/parse-options.h"

/* Threads are cheap but not free: beyond this many, more in-flight
 * requests cannot add parallelism on any host this runs on, so deeper
 * queues are served by this many threads (documented in --help). */
#define BENCH_MAX_THREADS 1024
#define BENCH_STACK_SIZE  (256 * 1024)

typedef struct Bench {
    BlockNode *node;
    bool write;
    uint64_t count;
    uint64_t bufsize;
    uint64_t offset;
    uint64_t step;
    uint64_t image_size;
    uint64_t flush_interval;
    bool drain;
    bool random;
    uint64_t seed;
    uint64_t slots;       /* --random: offsets to choose from */
    int pattern;
    int write_flags;      /* FUA for writethrough/directsync */

    atomic_uint_fast64_t next;   /* next request number (no flushes) */
    atomic_int failed;           /* first error, as a negative errno */

    /* Only with flush_interval: request numbers are handed out under the
     * lock so a flush lands exactly between request k*N-1 and k*N. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint64_t next_locked;
    uint64_t in_flight;
    bool flushing;
} Bench;

/* splitmix64: a full-period mixer, so (seed, i) -> offset is cheap,
 * stateless and well spread. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t bench_offset(const Bench *b, uint64_t i)
{
    if (b->random) {
        return b->offset + mix64(b->seed * 0x100000001b3ULL ^ mix64(i)) %
                           b->slots * b->step;
    }
    /* qemu-img's sequence: the first request at offset as given (past
     * the end it fails), each later one the previous plus step, modulo
     * the image size */
    if (i == 0 || b->image_size == 0) {
        return b->offset;
    }
    unsigned __int128 o = (unsigned __int128)b->step * i + b->offset;
    return (uint64_t)(o % b->image_size);
}

static int bench_request(Bench *b, uint8_t *buf, uint64_t i)
{
    uint64_t off = bench_offset(b, i);
    if (off + b->bufsize > b->image_size) {
        return -EIO;   /* qemu-img's answer to a request past the end */
    }
    if (b->write) {
        return block_pwrite(b->node, off, b->bufsize, buf, b->write_flags);
    }
    return block_pread(b->node, off, b->bufsize, buf);
}

static void bench_fail(Bench *b, int ret)
{
    int zero = 0;
    atomic_compare_exchange_strong(&b->failed, &zero, ret);
}

/* Takes the next request number, issuing the flush that precedes it
 * when one is due.  Returns false when the run is over. */
static bool bench_next_locked(Bench *b, uint64_t *i)
{
    pthread_mutex_lock(&b->lock);
    while (b->flushing && b->drain) {
        pthread_cond_wait(&b->cond, &b->lock);
    }
    if (b->next_locked >= b->count || atomic_load(&b->failed)) {
        pthread_mutex_unlock(&b->lock);
        return false;
    }
    *i = b->next_locked++;
    if (*i > 0 && *i % b->flush_interval == 0) {
        b->flushing = true;
        if (b->drain) {
            while (b->in_flight > 0) {
                pthread_cond_wait(&b->cond, &b->lock);
            }
        }
        pthread_mutex_unlock(&b->lock);
        int ret = block_flush(b->node);
        if (ret < 0) {
            bench_fail(b, ret);
        }
        pthread_mutex_lock(&b->lock);
        b->flushing = false;
        pthread_cond_broadcast(&b->cond);
    }
    b->in_flight++;
    pthread_mutex_unlock(&b->lock);
    return true;
}

static void bench_done_locked(Bench *b)
{
    pthread_mutex_lock(&b->lock);
    if (--b->in_flight == 0 && b->flushing) {
        pthread_cond_broadcast(&b->cond);
    }
    pthread_mutex_unlock(&b->lock);
}

typedef struct BenchWorker {
    Bench *b;
    uint8_t *buf;
    pthread_t thread;
} BenchWorker;

static void *bench_worker(void *opaque)
{
    BenchWorker *w = opaque;
    Bench *b = w->b;
    for (;;) {
        uint64_t i;
        if (b->flush_interval) {
            if (!bench_next_locked(b, &i)) {
                break;
            }
        } else {
            i = atomic_fetch_add_explicit(&b->next, 1, memory_order_relaxed);
            if (i >= b->count || atomic_load_explicit(&b->failed,
                                                      memory_order_relaxed)) {
                break;
            }
        }
        int ret = bench_request(b, w->buf, i);
        if (b->flush_interval) {
            bench_done_locked(b);
        }
        if (ret < 0) {
            bench_fail(b, ret);
            break;
        }
    }
    return NULL;
}

/* ---- One submitting thread, asynchronous requests ---- */

typedef struct AsyncSlot {
    struct AsyncRun *run;
    void *token;             /* the queue slot it holds */
    uint8_t *buf;
    struct iovec iov;
    BlockIOV qiov;
    struct AsyncSlot *next_free;
} AsyncSlot;

typedef struct AsyncRun {
    Bench *b;
    pthread_mutex_t lock;    /* the free list; completions return slots */
    AsyncSlot *free;
} AsyncRun;

static void async_done(void *opaque, int ret)
{
    AsyncSlot *sl = opaque;
    AsyncRun *r = sl->run;
    void *token = sl->token;
    if (ret < 0) {
        bench_fail(r->b, ret);
    }
    /* The buffer goes back before the queue slot does, so whoever the
     * queue lets in next finds a free buffer. */
    pthread_mutex_lock(&r->lock);
    sl->next_free = r->free;
    r->free = sl;
    pthread_mutex_unlock(&r->lock);
    block_queue_complete(token, ret);
}

static int bench_run_async(Bench *b, uint64_t depth)
{
    if (depth > b->count) {
        depth = b->count ? b->count : 1;
    }
    AsyncRun r = { .b = b };
    AsyncSlot *slots = calloc(depth, sizeof(*slots));
    BlockQueue *q = block_queue_new((unsigned)depth);
    size_t buflen = b->bufsize ? b->bufsize : 1;
    int ret = 0;
    uint64_t made = 0;
    if (!slots || !q) {
        ret = -ENOMEM;
        goto out;
    }
    pthread_mutex_init(&r.lock, NULL);
    for (; made < depth; made++) {
        AsyncSlot *sl = &slots[made];
        /* 4 KiB alignment lets -t none requests go straight through */
        if (posix_memalign((void **)&sl->buf, 4096, buflen) != 0) {
            ret = -ENOMEM;
            goto out;
        }
        if (b->write) {
            memset(sl->buf, b->pattern, buflen);
        }
        sl->run = &r;
        blockiov_init_buf(&sl->qiov, &sl->iov, sl->buf, b->bufsize);
        sl->next_free = r.free;
        r.free = sl;
    }
    for (uint64_t i = 0; i < b->count && !atomic_load(&b->failed); i++) {
        if (b->flush_interval && i > 0 && i % b->flush_interval == 0) {
            if (b->drain) {
                block_queue_wait(q);
                int fr = block_flush(b->node);
                if (fr < 0) {
                    bench_fail(b, fr);
                    break;
                }
            } else {
                void *tok = block_queue_reserve(q, NULL, NULL);
                if (tok) {
                    block_aio_flush(b->node, block_queue_complete, tok);
                }
            }
        }
        uint64_t off = bench_offset(b, i);
        if (off + b->bufsize > b->image_size) {
            bench_fail(b, -EIO);   /* qemu-img's answer past the end */
            break;
        }
        /* A buffer is free once the queue gave us room: the queue
         * bounds requests in flight by the number of buffers. */
        void *tok = block_queue_reserve(q, NULL, NULL);
        if (!tok) {
            bench_fail(b, -ENOMEM);
            break;
        }
        pthread_mutex_lock(&r.lock);
        AsyncSlot *sl = r.free;
        r.free = sl->next_free;
        pthread_mutex_unlock(&r.lock);
        sl->token = tok;
        if (b->write) {
            block_aio_pwritev(b->node, off, &sl->qiov, b->write_flags,
                              async_done, sl);
        } else {
            block_aio_preadv(b->node, off, &sl->qiov, 0, async_done, sl);
        }
    }
    int qret = block_queue_wait(q);
    if (qret < 0) {
        bench_fail(b, qret);
    }
    ret = atomic_load(&b->failed);
    pthread_mutex_destroy(&r.lock);
out:
    block_queue_free(q);
    for (uint64_t k = 0; slots && k < made; k++) {
        free(slots[k].buf);
    }
    free(slots);
    return ret;
}

/* Runs the workers; returns 0 or the first request's negative errno. */
static int bench_run(Bench *b, int nthreads)
{
    BenchWorker *w = calloc(nthreads, sizeof(*w));
    size_t buflen = b->bufsize ? b->bufsize : 1;
    if (!w) {
        return -ENOMEM;
    }
    int ret = 0;
    int n = 0;
    for (; n < nthreads; n++) {
        w[n].b = b;
        /* 4 KiB alignment lets -t none requests go straight through */
        if (posix_memalign((void **)&w[n].buf, 4096, buflen) != 0) {
            ret = -ENOMEM;
            goto out;
        }
        if (b->write) {
            memset(w[n].buf, b->pattern, buflen);
        }
    }

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, BENCH_STACK_SIZE);
    int started = 1;   /* the calling thread is worker 0 */
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&w[i].thread, &attr, bench_worker, &w[i]) != 0) {
            break;   /* fewer in flight is slower, not wrong */
        }
        started++;
    }
    pthread_attr_destroy(&attr);
    bench_worker(&w[0]);
    for (int i = 1; i < started; i++) {
        pthread_join(w[i].thread, NULL);
    }
    ret = atomic_load(&b->failed);

out:
    for (int i = 0; i < n; i++) {
        free(w[i].buf);
    }
    free(w);
    return ret;
}

/* The command line, filled by the table below. */
static struct {
    uint64_t count, depth, offset, bufsize, step, flush_interval, pattern;
    uint64_t seed;
    bool write, no_drain, random, native_aio, threads;
    const char *cache;
} o = { .count = 75000, .depth = 64, .bufsize = 4096, .seed = 1 };

static int opt_aio(const CmdOpt *opt, const char *arg, void *ctx)
{
    if (!strcmp(arg, "native")) {
        o.native_aio = true;
    } else if (!strcmp(arg, "threads")) {
        o.native_aio = false;
    } else if (strcmp(arg, "io_uring")) {
        imgtool_error("Invalid aio option: %s", arg);
        return 1;
    }
    return 0;
}

/* --random[=seed]: any 64-bit seed, no sign. */
static int opt_random(const CmdOpt *opt, const char *arg, void *ctx)
{
    o.random = true;
    if (arg) {
        char *end;
        errno = 0;
        o.seed = strtoull(arg, &end, 0);
        if (errno || end == arg || *end || *arg == '-') {
            imgtool_error("Invalid random seed specified");
            return 1;
        }
    }
    return 0;
}

static const CmdOpt bench_opts[] = {
    { CMDOPT_UINT, 'c', NULL, "count",
      "number of requests (default 75000)", .value = &o.count,
      .what = "request count", .max = INT_MAX },
    { CMDOPT_UINT, 'd', NULL, "depth", "requests in flight (default 64)",
      .value = &o.depth, .what = "queue depth", .min = 1, .max = INT_MAX },
    CMDOPT_FORMAT,
    { CMDOPT_UINT, 0, "flush-interval", "flush_interval",
      "flush after every flush_interval requests (write tests)",
      .value = &o.flush_interval, .what = "flush interval", .max = INT_MAX },
    { CMDOPT_FN, 'i', NULL, "aio",
      "threads, native or io_uring (accepted for compatibility; files use "
      "io_uring where the kernel allows, worker threads otherwise)",
      .fn = opt_aio },
    { CMDOPT_FLAG, 'n', NULL, NULL, "native AIO (needs -t none, as in "
      "qemu-img)", .value = &o.native_aio },
    { CMDOPT_FLAG, 0, "no-drain", NULL,
      "do not wait for in-flight requests before a flush",
      .value = &o.no_drain },
    { CMDOPT_SIZE, 'o', NULL, "offset",
      "offset of the first request (default 0)", .value = &o.offset,
      .what = "offset", .max = INT64_MAX },
    { CMDOPT_UINT, 0, "pattern", "pattern",
      "byte written by write tests (default 0)", .value = &o.pattern,
      .what = "pattern byte", .max = 0xff },
    { CMDOPT_COMMON, 'q', NULL, NULL,
      "accepted for compatibility (qemu-img prints anyway)",
      .common_code = 'q' },
    { CMDOPT_SIZE, 's', NULL, "buffer_size",
      "bytes per request (default 4096)", .value = &o.bufsize,
      .what = "buffer size", .max = INT_MAX },
    { CMDOPT_SIZE, 'S', NULL, "step_size",
      "distance between request offsets (default: the buffer size); "
      "offsets wrap at the end of the image", .value = &o.step,
      .what = "step_size", .max = INT_MAX },
    { CMDOPT_STRING, 't', NULL, "cache",
      "cache mode: none, writeback, unsafe, directsync, writethrough "
      "(default writeback)", .value = &o.cache },
    { CMDOPT_COMMON, 'U', "force-share", NULL,
      "open without conflicting locks (read tests)", .common_code = 'U' },
    { CMDOPT_FLAG, 'w', NULL, NULL, "write test (default: read)",
      .value = &o.write },
    { CMDOPT_FLAG, 0, "threads", NULL,
      "one synchronous worker thread per request in flight",
      .value = &o.threads },
    { CMDOPT_FN, 0, "random", "seed",
      "random offsets instead of sequential ones: each request picks a "
      "uniformly random multiple of the step size from the offset to the "
      "end of the image, from a generator seeded by seed (default 1)",
      .fn = opt_random, .flags = CMDOPT_ARG_OPTIONAL },
    CMDOPT_IMAGE_OPTS,
    CMDOPT_OBJECT,
    CMDOPT_END,
};

static const CmdSpec bench_spec = {
    .name = "bench",
    .args = "filename",
    .description =
        "Run a simple I/O benchmark on an image: count requests of "
        "buffer_size\nbytes, depth of them in flight at once, submitted "
        "asynchronously by\none thread (--threads: one worker thread per "
        "request in flight, at\nmost 1024 threads).\n",
    .opts = bench_opts,
};

int cmd_bench(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&bench_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    Bench b = {
        .count = o.count,
        .bufsize = o.bufsize,
        .offset = o.offset,
        .step = o.step,
        .write = o.write,
        .flush_interval = o.flush_interval,
        .drain = !o.no_drain,
        .random = o.random,
        .seed = o.seed,
        .pattern = (int)o.pattern,
    };
    uint64_t depth = o.depth;
    const char *cache = o.cache;
    if (optind != argc - 1) {
        return usage_error("bench", "Expecting one image file name");
    }
    const char *filename = argv[optind];

    if (b.flush_interval && !b.write) {
        imgtool_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (b.flush_interval && b.flush_interval < depth) {
        imgtool_error("Flush interval can't be smaller than depth");
        return 1;
    }
    if (b.step == 0) {
        b.step = b.bufsize;
    }

    int flags = b.write ? BLOCK_O_RDWR : 0;
    if (cache && imgtool_parse_cache(cache, &flags) < 0) {
        imgtool_error("Invalid cache mode");
        return 1;
    }
    /* these modes complete a write only once it is on stable storage,
     * which is what a benchmark of them has to pay for */
    if (cache && (!strcmp(cache, "writethrough") ||
                  !strcmp(cache, "directsync"))) {
        b.write_flags = BLOCK_REQ_FUA;
    }
    if (a.force_share) {
        if (b.write) {
            imgtool_error("Could not open '%s': force-share=on can only be "
                          "used with read-only images", filename);
            return 1;
        }
        flags |= BLOCK_O_SHARE;
    }
    if (o.native_aio && !(flags & BLOCK_O_NOCACHE)) {
        imgtool_error("Could not open '%s': aio=native was specified, but "
                      "it requires cache.direct=on, which was not "
                      "specified.", filename);
        return 1;
    }

    Error err = { 0 };
    b.node = imgtool_open(filename, a.fmt, a.image_opts, flags, &err);
    if (!b.node) {
        imgtool_report(&err);
        return 1;
    }
    int64_t size = block_get_length(b.node);
    if (size < 0) {
        imgtool_error("Could not get size of '%s': %s", filename,
                      strerror((int)-size));
        block_close(b.node);
        return 1;
    }
    b.image_size = size;

    if (b.random) {
        if (b.step == 0 || b.offset + b.bufsize > b.image_size) {
            imgtool_error("--random: the image has no room for a %" PRIu64
                          "-byte request at or after offset %" PRIu64,
                          b.bufsize, b.offset);
            block_close(b.node);
            return 1;
        }
        b.slots = (b.image_size - b.offset - b.bufsize) / b.step + 1;
        printf("Sending %" PRIu64 " random %s requests, %" PRIu64
               " bytes each, %" PRIu64 " in parallel (offsets aligned to %"
               PRIu64
               " from offset %" PRIu64 ", seed %" PRIu64 ")\n",
               b.count, b.write ? "write" : "read", b.bufsize, depth,
               b.step, b.offset, b.seed);
    } else {
        printf("Sending %" PRIu64 " %s requests, %" PRIu64 " bytes each, "
               "%" PRIu64 " in parallel (starting at offset %" PRIu64
               ", step size %" PRIu64 ")\n",
               b.count, b.write ? "write" : "read", b.bufsize, depth,
               b.offset, b.step);
    }
    if (b.flush_interval) {
        printf("Sending flush every %" PRIu64 " requests\n",
               b.flush_interval);
    }
    fflush(stdout);

    int nthreads = depth < BENCH_MAX_THREADS ? (int)depth : BENCH_MAX_THREADS;
    if ((uint64_t)nthreads > b.count) {
        nthreads = b.count ? (int)b.count : 1;
    }
    pthread_mutex_init(&b.lock, NULL);
    pthread_cond_init(&b.cond, NULL);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int ret = o.threads ? bench_run(&b, nthreads)
                        : bench_run_async(&b, depth);
    clock_gettime(CLOCK_MONOTONIC, &t1);

    pthread_cond_destroy(&b.cond);
    pthread_mutex_destroy(&b.lock);
    block_close(b.node);
    if (ret < 0) {
        imgtool_error("Failed request: %s", strerror(-ret));
        return 1;
    }
    double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("Run completed in %.3f seconds.\n", secs);
    return 0;
}
