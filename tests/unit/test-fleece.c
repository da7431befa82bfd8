/*
 * test-fleece.c - the fleece filter's point-in-time view under load: a
 * qcow2 source is written (data, zero writes, discards) by several
 * threads while others read the view and ask its block status, and a
 * control thread keeps draining the source (as a QMP transaction does).
 *
 * Every byte the view returns, during the load and after it, must be
 * what the source held when the view was opened (cluster c held byte
 * c + 1, the last cluster was never written: zeroes); block status on
 * the view must never call a range zero that held data; nothing may
 * hang.  After the view closes, the source takes writes without it and
 * reads as the writers left it.  Runs under ThreadSanitizer too.  (TAP)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block.h"

#define CLUSTER 65536
#define CLUSTERS 64                 /* 4 MiB */
#define SIZE ((uint64_t)CLUSTERS * CLUSTER)
#define WRITERS 3
#define READERS 2
#define OPS 300

static BlockNode *src, *view;
static atomic_int failures;
static atomic_int writers_left;
static int n;

static uint8_t original(uint64_t off)
{
    uint64_t c = off / CLUSTER;
    return c == CLUSTERS - 1 ? 0 : (uint8_t)(c + 1);
}

static void fail(const char *what, uint64_t off, int ret)
{
    fprintf(stderr, "# %s at %llu: %d\n", what, (unsigned long long)off,
            ret);
    atomic_fetch_add(&failures, 1);
}

static void *writer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    uint8_t *buf = malloc(2 * CLUSTER);
    for (int i = 0; i < OPS; i++) {
        uint64_t len = (rand_r(&seed) % 2 ? 4096 : CLUSTER + 4096);
        uint64_t off = (uint64_t)(rand_r(&seed) % (SIZE - len) / 512) * 512;
        int kind = rand_r(&seed) % 6;
        int ret;
        if (kind == 0) {
            ret = block_write_zeroes(src, off, len, BLOCK_REQ_MAY_UNMAP);
        } else if (kind == 1) {
            ret = block_discard(src, off, len);
        } else {
            memset(buf, 0x80 + rand_r(&seed) % 100, len);
            ret = block_pwrite(src, off, len, buf,
                               kind == 2 ? BLOCK_REQ_FUA : 0);
        }
        if (ret < 0) {
            fail("write to the source", off, ret);
        }
    }
    free(buf);
    atomic_fetch_sub(&writers_left, 1);
    return NULL;
}

static bool view_reads_original(uint64_t off, uint64_t len, uint8_t *buf)
{
    int ret = block_pread(view, off, len, buf);
    if (ret < 0) {
        fail("read of the view", off, ret);
        return false;
    }
    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] != original(off + i)) {
            fail("view differs from the point in time", off + i, buf[i]);
            return false;
        }
    }
    return true;
}

static void *reader(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    uint8_t *buf = malloc(3 * CLUSTER);
    while (atomic_load(&writers_left) > 0) {
        uint64_t len = 1 + rand_r(&seed) % (3 * CLUSTER - 1);
        uint64_t off = rand_r(&seed) % (SIZE - len);
        view_reads_original(off, len, buf);
        uint64_t pnum = 0;
        int st = block_status(view, off, len, &pnum, NULL, NULL);
        if (st < 0) {
            fail("block status of the view", off, st);
        } else if ((st & BLOCK_STATUS_ZERO) && !(st & BLOCK_STATUS_DATA) &&
                   off < (CLUSTERS - 1) * (uint64_t)CLUSTER) {
            fail("view called data zero", off, st);
        }
    }
    free(buf);
    return NULL;
}

static void *drainer(void *arg)
{
    while (atomic_load(&writers_left) > 0) {
        block_drain_begin(src);
        block_drain_end(src);
        usleep(200);
    }
    return NULL;
}

static int make_source(const char *path, Error *err)
{
    if (block_create("qcow2", path, SIZE, true, NULL, 0, err) < 0) {
        return -1;
    }
    BlockNode *b = block_open(path, "qcow2", NULL, BLOCK_O_RDWR, err);
    if (!b) {
        return -1;
    }
    uint8_t *buf = malloc(CLUSTER);
    int ret = 0;
    for (uint64_t c = 0; c + 1 < CLUSTERS && ret >= 0; c++) {
        memset(buf, original(c * CLUSTER), CLUSTER);
        ret = block_pwrite(b, c * CLUSTER, CLUSTER, buf, 0);
    }
    free(buf);
    block_close(b);
    return ret;
}

static BlockNode *open_named(const char *path, const char *name,
                             Error *err)
{
    KVList o = { 0 };
    kvlist_set(&o, "node-name", name);
    BlockNode *b = block_open(path, "qcow2", &o, BLOCK_O_RDWR, err);
    kvlist_free(&o);
    return b;
}

int main(void)
{
    char dir[] = "/tmp/test-fleece.XXXXXX";
    char ps[600], pt[600];
    Error err = { 0 };
    if (!mkdtemp(dir)) {
        printf("1..0 # skip: no temporary directory\n");
        return 0;
    }
    snprintf(ps, sizeof(ps), "%s/src.qcow2", dir);
    snprintf(pt, sizeof(pt), "%s/fleece.qcow2", dir);
    int ok = make_source(ps, &err) == 0 &&
             block_create("qcow2", pt, SIZE, true, NULL, 0, &err) == 0;
    src = ok ? open_named(ps, "src", &err) : NULL;
    BlockNode *tgt = src ? open_named(pt, "tgt", &err) : NULL;
    KVList v = { 0 };
    kvlist_set(&v, "driver", "fleece");
    kvlist_set(&v, "node-name", "view");
    kvlist_set(&v, "file", "src");
    kvlist_set(&v, "target", "tgt");
    view = tgt ? block_open(NULL, NULL, &v, 0, &err) : NULL;
    kvlist_free(&v);
    printf("%sok %d - a view over a qcow2 source%s%s\n", view ? "" : "not ",
           ++n, view ? "" : ": ", view ? "" : err.msg);
    if (!view) {
        printf("1..%d\n", n);
        return 1;
    }
    /* The view takes no writes. */
    uint8_t one = 1;
    printf("%sok %d - the view is read-only\n",
           block_pwrite(view, 0, 1, &one, 0) < 0 ? "" : "not ", ++n);

    pthread_t w[WRITERS], r[READERS], d;
    atomic_store(&writers_left, WRITERS);
    for (int i = 0; i < WRITERS; i++) {
        pthread_create(&w[i], NULL, writer, (void *)(uintptr_t)(i + 1));
    }
    for (int i = 0; i < READERS; i++) {
        pthread_create(&r[i], NULL, reader, (void *)(uintptr_t)(i + 77));
    }
    pthread_create(&d, NULL, drainer, NULL);
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(w[i], NULL);
    }
    for (int i = 0; i < READERS; i++) {
        pthread_join(r[i], NULL);
    }
    pthread_join(d, NULL);
    printf("%sok %d - concurrent writes, drains and reads: the view "
           "stayed the point in time\n",
           atomic_load(&failures) ? "not " : "", ++n);

    uint8_t *buf = malloc(SIZE);
    printf("%sok %d - the whole view reads as at its open\n",
           view_reads_original(0, SIZE, buf) ? "" : "not ", ++n);
    /* What the writers left, as the source reads it now. */
    uint8_t *now = malloc(SIZE);
    int ret = block_pread(src, 0, SIZE, now);
    block_close(view);
    block_close(tgt);
    memset(buf, 0x42, CLUSTER);
    ret = ret < 0 ? ret : block_pwrite(src, 0, CLUSTER, buf, 0);
    memcpy(now, buf, CLUSTER);
    uint8_t *again = malloc(SIZE);
    ret = ret < 0 ? ret : block_pread(src, 0, SIZE, again);
    printf("%sok %d - without the view the source reads as written\n",
           ret == 0 && memcmp(now, again, SIZE) == 0 ? "" : "not ", ++n);
    block_close(src);
    free(buf);
    free(now);
    free(again);
    unlink(ps);
    unlink(pt);
    rmdir(dir);
    printf("1..%d\n", n);
    return atomic_load(&failures) ? 1 : 0;
}
