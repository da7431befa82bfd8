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
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/object.h"

/* Threads are cheap but not free: beyond this many, more in-flight
 * requests cannot add parallelism on any host this runs on, so deeper
 * queues are served by this many threads (documented in --help). */
#define BENCH_MAX_THREADS 1024
#define BENCH_STACK_SIZE  (256 * 1024)

static const char bench_usage[] =
    "usage: imgtool bench [-c count] [-d depth] [-f fmt]\n"
    "                     [--flush-interval=flush_interval] [-i aio] [-n]\n"
    "                     [--no-drain] [-o offset] [--pattern=pattern] [-q]\n"
    "                     [-s buffer_size] [-S step_size] [-t cache] [-U]\n"
    "                     [-w] [--random[=seed]] [--image-opts] filename\n"
    "\n"
    "Run a simple I/O benchmark on an image: count requests of buffer_size\n"
    "bytes, depth of them in flight at once, submitted asynchronously by\n"
    "one thread (--threads: one worker thread per request in flight, at\n"
    "most 1024 threads).\n"
    "\n"
    "  -c count        number of requests (default 75000)\n"
    "  -d depth        requests in flight (default 64)\n"
    "  -f fmt          image format (probed when omitted)\n"
    "  --flush-interval=N  flush after every N requests (write tests)\n"
    "  --no-drain      do not wait for in-flight requests before a flush\n"
    "  -i aio          threads, native or io_uring (accepted for\n"
    "                  compatibility; files use io_uring where the kernel\n"
    "                  allows, worker threads otherwise)\n"
    "  -n              native AIO (needs -t none, as in qemu-img)\n"
    "  -o offset       offset of the first request (default 0)\n"
    "  --pattern=BYTE  byte written by write tests (default 0)\n"
    "  -q              accepted for compatibility (qemu-img prints anyway)\n"
    "  -s size         bytes per request (default 4096)\n"
    "  -S step         distance between request offsets (default: the\n"
    "                  buffer size); offsets wrap at the end of the image\n"
    "  -t cache        cache mode: none, writeback, unsafe, directsync,\n"
    "                  writethrough (default writeback)\n"
    "  -U              open without conflicting locks (read tests)\n"
    "  -w              write test (default: read)\n"
    "  --threads       one synchronous worker thread per request in flight\n"
    "  --random[=seed] random offsets instead of sequential ones: each\n"
    "                  request picks a uniformly random multiple of the\n"
    "                  step size from the offset to the end of the image,\n"
    "                  from a generator seeded by seed (default 1)\n";

enum {
    OPT_FLUSH_INTERVAL = 256,
    OPT_NO_DRAIN,
    OPT_PATTERN,
    OPT_RANDOM,
    OPT_IMAGE_OPTS,
    OPT_OBJECT,
    OPT_THREADS,
};

static const struct option bench_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "format", required_argument, NULL, 'f' },
    { "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
    { "no-drain", no_argument, NULL, OPT_NO_DRAIN },
    { "pattern", required_argument, NULL, OPT_PATTERN },
    { "random", optional_argument, NULL, OPT_RANDOM },
    { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
    { "object", required_argument, NULL, OPT_OBJECT },
    { "force-share", no_argument, NULL, 'U' },
    { "threads", no_argument, NULL, OPT_THREADS },
    { NULL, 0, NULL, 0 },
};

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

static int bench_bad_size(const char *what)
{
    imgtool_error("Invalid %s specified. You may use k, M, G, T, P or E "
                  "suffixes for", what);
    imgtool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
    return 1;
}

/* A non-negative int as qemu-img accepts it (decimal, octal or hex). */
static bool parse_int(const char *s, int min, long long max, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* Sizes: suffixes allowed, no sign. */
static bool parse_bench_size(const char *s, uint64_t *out)
{
    return *s != '-' && parse_size(s, out) == 0;
}

int cmd_bench(int argc, char **argv)
{
    Bench b = {
        .count = 75000,
        .bufsize = 4096,
        .drain = true,
        .seed = 1,
    };
    long long depth = 64;
    const char *fmt = NULL, *cache = NULL;
    bool image_opts = false, share = false, native_aio = false;
    bool threads = false;
    int c;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU",
                            bench_options, NULL)) != -1) {
        long long v;
        switch (c) {
        case 'h':
            fputs(bench_usage, stdout);
            return 0;
        case 'c':
            if (!parse_int(optarg, 0, INT_MAX, &v)) {
                imgtool_error("Invalid request count specified");
                return 1;
            }
            b.count = v;
            break;
        case 'd':
            if (!parse_int(optarg, 1, INT_MAX, &v)) {
                imgtool_error("Invalid queue depth specified");
                return 1;
            }
            depth = v;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'n':
            native_aio = true;
            break;
        case 'i':
            if (!strcmp(optarg, "native")) {
                native_aio = true;
            } else if (!strcmp(optarg, "threads")) {
                native_aio = false;
            } else if (strcmp(optarg, "io_uring")) {
                imgtool_error("Invalid aio option: %s", optarg);
                return 1;
            }
            break;
        case 'o':
            if (!parse_bench_size(optarg, &b.offset) ||
                b.offset > INT64_MAX) {
                return bench_bad_size("offset");
            }
            break;
        case 'q':
            break;
        case 's':
            if (!parse_bench_size(optarg, &b.bufsize) ||
                b.bufsize > INT_MAX) {
                return bench_bad_size("buffer size");
            }
            break;
        case 'S':
            if (!parse_bench_size(optarg, &b.step) || b.step > INT_MAX) {
                return bench_bad_size("step_size");
            }
            break;
        case 't':
            cache = optarg;
            break;
        case 'w':
            b.write = true;
            break;
        case 'U':
            share = true;
            break;
        case OPT_FLUSH_INTERVAL:
            if (!parse_int(optarg, 0, INT_MAX, &v)) {
                imgtool_error("Invalid flush interval specified");
                return 1;
            }
            b.flush_interval = v;
            break;
        case OPT_NO_DRAIN:
            b.drain = false;
            break;
        case OPT_PATTERN:
            if (!parse_int(optarg, 0, 0xff, &v)) {
                imgtool_error("Invalid pattern byte specified");
                return 1;
            }
            b.pattern = (int)v;
            break;
        case OPT_RANDOM:
            b.random = true;
            if (optarg) {
                char *end;
                errno = 0;
                b.seed = strtoull(optarg, &end, 0);
                if (errno || end == optarg || *end || *optarg == '-') {
                    imgtool_error("Invalid random seed specified");
                    return 1;
                }
            }
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPT_THREADS:
            threads = true;
            break;
        case OPT_OBJECT:
            if (imgtool_object_add(optarg) < 0) {
                return 1;
            }
            break;
        default:
            return usage_bad_option("bench", usage_refused_option(argv, (char[3]){0}), c == ':');
        }
    }
    if (optind != argc - 1) {
        return usage_error("bench", "Expecting one image file name");
    }
    const char *filename = argv[optind];

    if (b.flush_interval && !b.write) {
        imgtool_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (b.flush_interval && b.flush_interval < (uint64_t)depth) {
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
    if (share) {
        if (b.write) {
            imgtool_error("Could not open '%s': force-share=on can only be "
                          "used with read-only images", filename);
            return 1;
        }
        flags |= BLOCK_O_SHARE;
    }
    if (native_aio && !(flags & BLOCK_O_NOCACHE)) {
        imgtool_error("Could not open '%s': aio=native was specified, but "
                      "it requires cache.direct=on, which was not "
                      "specified.", filename);
        return 1;
    }

    Error err = { 0 };
    b.node = imgtool_open(filename, fmt, image_opts, flags, &err);
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
               " bytes each, %lld in parallel (offsets aligned to %" PRIu64
               " from offset %" PRIu64 ", seed %" PRIu64 ")\n",
               b.count, b.write ? "write" : "read", b.bufsize, depth,
               b.step, b.offset, b.seed);
    } else {
        printf("Sending %" PRIu64 " %s requests, %" PRIu64 " bytes each, "
               "%lld in parallel (starting at offset %" PRIu64
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
    int ret = threads ? bench_run(&b, nthreads)
                      : bench_run_async(&b, (uint64_t)depth);
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
