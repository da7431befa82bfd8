/*
 * test-shared-node.c - one qcow2 node (over a backing file) shared by
 * several users at once, the way an export and a job share it:
 *
 *  - synchronous writer threads (plain buffers and multi-element vectors,
 *    zero writes, read-back checks);
 *  - one thread that keeps up to DEPTH asynchronous requests in flight
 *    through a BlockQueue;
 *  - a control thread that meanwhile drains the node, reopens the backing
 *    node read-write and back, and swaps the backing node between two
 *    images with the same content, CONTROL_ROUNDS times in all, while the
 *    others keep going.
 *
 * Each thread owns its own 4 KiB blocks, so the expected content of
 * every block is known (a shadow model).  At the end the image must read
 * back as the model says (also through the block layer's reopened
 * chain), block_check must find nothing wrong, and when qemu-img is
 * installed `qemu-img check` must agree.  (TAP)
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block.h"

#define BLOCK 4096
#define BLOCKS 1024            /* 4 MiB image */
#define SYNC_THREADS 3
#define ASYNC_OWNER SYNC_THREADS
#define OWNERS (SYNC_THREADS + 1)
#define CONTROL_ROUNDS 90       /* graph changes, a third of each kind */
#define DEPTH 64

static BlockNode *top;
static atomic_int failures;
static atomic_bool stop;
static atomic_int graph_changes[3];   /* drains, reopens, swaps */
static atomic_int async_done;
static uint8_t expect[BLOCKS];    /* byte every block holds (0: zeroes) */
static char path_base[512], path_base2[512], path_top[512];

static int owner(int blk)
{
    return blk % OWNERS;
}

static int pick(unsigned *seed, int who)
{
    int b = rand_r(seed) % BLOCKS;
    while (owner(b) != who) {
        b = (b + 1) % BLOCKS;
    }
    return b;
}

/* The backing files hold 0xb0 + block % 16 in every block; blocks the
 * top never wrote read through to them. */
static uint8_t backing_byte(int blk)
{
    return (uint8_t)(0xb0 + blk % 16);
}

static void fail(const char *what, int blk, int ret)
{
    fprintf(stderr, "# %s block %d: %d\n", what, blk, ret);
    atomic_fetch_add(&failures, 1);
}

static bool block_is(const uint8_t *buf, uint8_t v)
{
    for (int i = 0; i < BLOCK; i++) {
        if (buf[i] != v) {
            return false;
        }
    }
    return true;
}

static void *sync_worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    unsigned seed = 97u * (unsigned)t + 5;
    uint8_t *buf = malloc(BLOCK * 2);
    for (int r = 0; !atomic_load(&stop); r++) {
        int b = pick(&seed, t);
        int op = rand_r(&seed) % 5;
        int ret;
        if (op == 0) {
            ret = block_write_zeroes(top, (uint64_t)b * BLOCK, BLOCK,
                                     rand_r(&seed) % 2 ? BLOCK_REQ_MAY_UNMAP
                                                       : 0);
            if (ret < 0) {
                fail("zero", b, ret);
            }
            expect[b] = 0;
        } else if (op == 1) {
            /* A vector of three pieces of one block. */
            uint8_t v = (uint8_t)(1 + rand_r(&seed) % 200);
            memset(buf, v, BLOCK);
            struct iovec iov[3] = {
                { buf, 512 }, { buf + 512, 1536 }, { buf + 2048, 2048 },
            };
            BlockIOV q;
            blockiov_init(&q, iov, 3);
            ret = block_pwritev(top, (uint64_t)b * BLOCK, &q, 0);
            if (ret < 0) {
                fail("pwritev", b, ret);
            }
            expect[b] = v;
        } else if (op == 2) {
            ret = block_pread(top, (uint64_t)b * BLOCK, BLOCK, buf);
            uint8_t want = expect[b] == 0xff ? backing_byte(b) : expect[b];
            if (ret < 0 || !block_is(buf, want)) {
                fail("read back", b, ret);
            }
        } else {
            uint8_t v = (uint8_t)(1 + rand_r(&seed) % 200);
            memset(buf, v, BLOCK);
            ret = block_pwrite(top, (uint64_t)b * BLOCK, BLOCK, buf, 0);
            if (ret < 0) {
                fail("pwrite", b, ret);
            }
            expect[b] = v;
        }
    }
    free(buf);
    return NULL;
}

/* The asynchronous user: each slot is one block's request. */
typedef struct Slot {
    int blk;
    bool read;
    uint8_t v;
    uint8_t *buf;
    struct iovec iov[2];
    BlockIOV q;
} Slot;

static void slot_done(void *opaque, int ret)
{
    Slot *s = opaque;
    if (ret < 0) {
        fail(s->read ? "aio read" : "aio write", s->blk, ret);
    } else if (s->read && !block_is(s->buf, s->v)) {
        fail("aio read back", s->blk, 0);
    }
    atomic_fetch_add(&async_done, 1);
    free(s->buf);
    free(s);
}

static void *async_worker(void *arg)
{
    (void)arg;
    unsigned seed = 4242;
    BlockQueue *q = block_queue_new(DEPTH);
    /* Blocks with a request in flight are not touched again until the
     * queue is empty (each pass ends with a wait), so the model stays
     * exact. */
    bool busy[BLOCKS] = { 0 };
    for (int r = 0; !atomic_load(&stop); r++) {
        int b = pick(&seed, ASYNC_OWNER);
        if (busy[b]) {
            continue;
        }
        busy[b] = true;
        Slot *s = calloc(1, sizeof(*s));
        s->blk = b;
        s->buf = aligned_alloc(BLOCK, BLOCK);
        s->read = rand_r(&seed) % 3 == 0;
        if (s->read) {
            s->v = expect[b] == 0xff ? backing_byte(b) : expect[b];
        } else {
            s->v = (uint8_t)(1 + rand_r(&seed) % 200);
            memset(s->buf, s->v, BLOCK);
            expect[b] = s->v;
        }
        s->iov[0] = (struct iovec){ s->buf, 1024 };
        s->iov[1] = (struct iovec){ s->buf + 1024, BLOCK - 1024 };
        blockiov_init(&s->q, s->iov, 2);
        void *tok = block_queue_reserve(q, slot_done, s);
        if (s->read) {
            block_aio_preadv(top, (uint64_t)b * BLOCK, &s->q, 0,
                             block_queue_complete, tok);
        } else {
            block_aio_pwritev(top, (uint64_t)b * BLOCK, &s->q, 0,
                              block_queue_complete, tok);
        }
        if (r % 200 == 199) {
            if (block_queue_wait(q) < 0) {
                fail("queue", -1, -1);
            }
            memset(busy, 0, sizeof(busy));
        }
    }
    block_queue_free(q);
    return NULL;
}

static void *control(void *arg)
{
    (void)arg;
    for (int round = 0; round < CONTROL_ROUNDS;) {
        Error err = { 0 };
        atomic_fetch_add(&graph_changes[round % 3], 1);
        switch (round++ % 3) {
        case 0:
            block_drain_begin(top);
            usleep(200);
            block_drain_end(top);
            break;
        case 1:
            /* What commit does to the base, and undoes. */
            if (block_reopen(block_backing(top), true, 0, &err) < 0 ||
                block_reopen(block_backing(top), false, 0, &err) < 0) {
                fprintf(stderr, "# reopen: %s\n", err.msg);
                atomic_fetch_add(&failures, 1);
            }
            break;
        default: {
            const char *next = round % 2 ? path_base2 : path_base;
            BlockNode *b = block_open(next, "qcow2", NULL, 0, &err);
            if (!b || block_set_backing(top, b, &err) < 0) {
                fprintf(stderr, "# swap: %s\n", err.msg);
                atomic_fetch_add(&failures, 1);
            }
            break;
        }
        }
        usleep(500);
    }
    atomic_store(&stop, true);
    return NULL;
}

static int make_backing(const char *path, Error *err)
{
    if (block_create("qcow2", path, BLOCKS * BLOCK, true, NULL, 0, err) < 0) {
        return -1;
    }
    BlockNode *n = block_open(path, "qcow2", NULL, BLOCK_O_RDWR, err);
    if (!n) {
        return -1;
    }
    uint8_t *buf = malloc(BLOCK);
    int ret = 0;
    for (int b = 0; b < BLOCKS && ret >= 0; b++) {
        memset(buf, backing_byte(b), BLOCK);
        ret = block_pwrite(n, (uint64_t)b * BLOCK, BLOCK, buf, 0);
    }
    free(buf);
    block_close(n);
    return ret;
}

static int n;

/* One run of the whole scenario; nocache opens the top with O_DIRECT, so
 * the asynchronous requests go through io_uring and its pollers. */
static void scenario(const char *dir, bool nocache)
{
    Error err = { 0 };
    const char *how = nocache ? "O_DIRECT" : "page cache";
    atomic_store(&stop, false);
    atomic_store(&failures, 0);
    atomic_store(&async_done, 0);
    for (int i = 0; i < 3; i++) {
        atomic_store(&graph_changes[i], 0);
    }
    snprintf(path_base, sizeof(path_base), "%s/base.qcow2", dir);
    memset(expect, 0xff, sizeof(expect));   /* 0xff: still the backing's */
    snprintf(path_base2, sizeof(path_base2), "%s/base2.qcow2", dir);
    snprintf(path_top, sizeof(path_top), "%s/top.qcow2", dir);

    int ok = make_backing(path_base, &err) == 0 &&
             make_backing(path_base2, &err) == 0;
    KVList o = { 0 };
    kvlist_set(&o, "backing_file", "base.qcow2");
    kvlist_set(&o, "backing_fmt", "qcow2");
    kvlist_set(&o, "cluster_size", "4096");
    ok = ok && block_create("qcow2", path_top, BLOCKS * BLOCK, true, &o, 0,
                            &err) == 0;
    kvlist_free(&o);
    printf("%sok %d - images created (%s)%s%s\n", ok ? "" : "not ", ++n,
           how, ok ? "" : ": ", ok ? "" : err.msg);

    KVList opts = { 0 };
    kvlist_set(&opts, "node-name", "shared0");
    top = ok ? block_open(path_top, "qcow2", &opts,
                         BLOCK_O_RDWR | (nocache ? BLOCK_O_NOCACHE : 0),
                         &err)
             : NULL;
    kvlist_free(&opts);
    printf("%sok %d - open the shared node\n", top ? "" : "not ", ++n);
    if (!top) {
        printf("# %s\n", err.msg);
        return;
    }
    BlockNode *again = block_find_node("shared0");
    printf("%sok %d - found by its node name\n", again == top ? "" : "not ",
           ++n);
    block_close(again);

    pthread_t th[SYNC_THREADS + 2];
    for (int i = 0; i < SYNC_THREADS; i++) {
        pthread_create(&th[i], NULL, sync_worker, (void *)(intptr_t)i);
    }
    pthread_create(&th[SYNC_THREADS], NULL, async_worker, NULL);
    pthread_create(&th[SYNC_THREADS + 1], NULL, control, NULL);
    /* The control thread ends the run after its last graph change. */
    for (int i = 0; i < SYNC_THREADS + 2; i++) {
        pthread_join(th[i], NULL);
    }
    printf("%sok %d - no request failed while the graph changed\n",
           atomic_load(&failures) ? "not " : "", ++n);
    int changes = atomic_load(&graph_changes[0]) +
                  atomic_load(&graph_changes[1]) +
                  atomic_load(&graph_changes[2]);
    printf("%sok %d - %d drains, %d reopens, %d swaps and %d asynchronous "
           "requests happened meanwhile\n",
           changes >= 3 && atomic_load(&async_done) > 0 ? "" : "not ", ++n,
           atomic_load(&graph_changes[0]), atomic_load(&graph_changes[1]),
           atomic_load(&graph_changes[2]), atomic_load(&async_done));

    /* Everything as the model says. */
    uint8_t *buf = malloc(BLOCK);
    int bad = 0;
    for (int b = 0; b < BLOCKS; b++) {
        uint8_t want = expect[b] == 0xff ? backing_byte(b) : expect[b];
        if (block_pread(top, (uint64_t)b * BLOCK, BLOCK, buf) < 0 ||
            !block_is(buf, want)) {
            bad++;
        }
    }
    printf("%sok %d - content equals the model (%d bad blocks)\n",
           bad ? "not " : "", ++n, bad);

    int fl = block_flush(top);
    block_close(top);
    printf("%sok %d - flush and close\n", fl < 0 ? "not " : "", ++n);

    BlockNode *c = block_open(path_top, "qcow2", NULL,
                              BLOCK_O_RDWR | BLOCK_O_CHECK, &err);
    BlockCheckResult res = { 0 };
    int cr = c ? block_check(c, &res, 0, &err) : -1;
    block_close(c);
    printf("%sok %d - check: %d corruptions, %d leaks\n",
           cr < 0 || res.corruptions || res.leaks ? "not " : "", ++n,
           res.corruptions, res.leaks);

    if (system("qemu-img --version >/dev/null 2>&1") == 0) {
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "qemu-img check -q %s", path_top);
        int rc = system(cmd);
        printf("%sok %d - qemu-img check is clean\n", rc ? "not " : "", ++n);
    } else {
        printf("ok %d - qemu-img check # skip: no qemu-img\n", ++n);
    }

    free(buf);
    unlink(path_top);
    unlink(path_base);
    unlink(path_base2);
}

int main(void)
{
    char dir[] = "/tmp/test-shared-node.XXXXXX";
    if (!mkdtemp(dir)) {
        printf("1..0 # skip: no temporary directory\n");
        return 0;
    }
    scenario(dir, false);
    scenario(dir, true);
    rmdir(dir);
    printf("1..%d\n", n);
    return 0;
}
