/*
 * test-qcow2-threads.c - many threads writing and zeroing interleaved
 * 512-byte sectors of the same qcow2 clusters (over a backing file, so
 * copy-on-write and subcluster fills race with each other).  Every sector
 * must end up with what its owner wrote last, and check must find no
 * corruption or leak.  (TAP)
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/driver.h"

#define THREADS 6
#define SECTORS 2048          /* 1 MiB image */
#define ROUNDS 800

static BlockNode *node;
static int failures;
static uint8_t expect[SECTORS];   /* final byte of every sector */

static int owner(int sector)
{
    return (sector / 3) % THREADS;
}

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    unsigned seed = (unsigned)t * 7919u + 1;
    uint8_t buf[512 * 3];

    for (int r = 0; r < ROUNDS; r++) {
        int s = rand_r(&seed) % SECTORS;
        while (owner(s) != t) {
            s = (s + 1) % SECTORS;
        }
        /* A run of this thread's sectors (1..3 of them, stopping at the
         * first one owned by someone else). */
        int n = 1 + rand_r(&seed) % 3;
        while (n > 1 && (s + n > SECTORS || owner(s + n - 1) != t)) {
            n--;
        }
        int ret;
        uint8_t v;
        if (rand_r(&seed) % 4 == 0) {
            v = 0;
            ret = block_write_zeroes(node, (uint64_t)s * 512,
                                     (uint64_t)n * 512,
                                     rand_r(&seed) % 2 ? BLOCK_REQ_MAY_UNMAP
                                                       : 0);
        } else {
            v = (uint8_t)(1 + rand_r(&seed) % 250);
            memset(buf, v, sizeof(buf));
            ret = block_pwrite(node, (uint64_t)s * 512, (size_t)n * 512, buf,
                               0);
        }
        if (ret < 0) {
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);
        }
        for (int i = 0; i < n; i++) {
            expect[s + i] = v;
        }
    }
    return NULL;
}

static int run_case(const char *dir, const char *opts, int num)
{
    char base[512], top[512];
    Error err = { 0 };
    KVList o = { 0 };
    int ok = 1;

    snprintf(base, sizeof(base), "%s/base-%d.qcow2", dir, num);
    snprintf(top, sizeof(top), "%s/top-%d.qcow2", dir, num);
    if (block_create("qcow2", base, SECTORS * 512, true, NULL, 0, &err) < 0) {
        printf("# create base: %s\n", err.msg);
        return 0;
    }
    BlockNode *b = block_open(base, "qcow2", NULL, BLOCK_O_RDWR, &err);
    if (!b) {
        printf("# open base: %s\n", err.msg);
        return 0;
    }
    uint8_t *pat = malloc(SECTORS * 512);
    memset(pat, 0xee, SECTORS * 512);
    block_pwrite(b, 0, SECTORS * 512, pat, 0);
    block_close(b);

    kvlist_parse(&o, opts, NULL, &err);
    kvlist_set(&o, "backing_file", base);
    kvlist_set(&o, "backing_fmt", "qcow2");
    if (block_create("qcow2", top, SECTORS * 512, true, &o, 0, &err) < 0) {
        printf("# create top: %s\n", err.msg);
        kvlist_free(&o);
        free(pat);
        return 0;
    }
    kvlist_free(&o);
    node = block_open(top, "qcow2", NULL, BLOCK_O_RDWR, &err);
    if (!node) {
        printf("# open top: %s\n", err.msg);
        free(pat);
        return 0;
    }
    memset(expect, 0xee, sizeof(expect));
    failures = 0;
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
    }
    if (failures) {
        printf("# %d requests failed\n", failures);
        ok = 0;
    }
    if (block_pread(node, 0, SECTORS * 512, pat) < 0) {
        printf("# read back failed\n");
        ok = 0;
    }
    for (int sct = 0; ok && sct < SECTORS; sct++) {
        for (int i = 0; i < 512; i++) {
            if (pat[sct * 512 + i] != expect[sct]) {
                printf("# sector %d byte %d: %02x, expected %02x\n", sct, i,
                       pat[sct * 512 + i], expect[sct]);
                ok = 0;
                break;
            }
        }
    }
    block_flush(node);
    BlockCheckResult res;
    if (block_check(node, &res, 0, &err) < 0 || res.corruptions ||
        res.leaks || res.check_errors) {
        printf("# check: %d corruptions, %d leaks, %d errors %s\n",
               res.corruptions, res.leaks, res.check_errors, err.msg);
        ok = 0;
    }
    block_close(node);
    free(pat);
    unlink(base);
    unlink(top);
    return ok;
}

int main(void)
{
    static const char *const cases[] = {
        "cluster_size=4k",
        "cluster_size=64k",
        "cluster_size=64k,extended_l2=on",
        "compat=0.10,cluster_size=1k",
        "cluster_size=512,refcount_bits=64",
    };
    int n = (int)(sizeof(cases) / sizeof(cases[0]));
    char dir[] = "/tmp/imgtool-qcow2-threads-XXXXXX";

    if (!mkdtemp(dir)) {
        printf("1..0 # SKIP no temp dir\n");
        return 0;
    }
    printf("1..%d\n", n);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int ok = run_case(dir, cases[i], i);
        printf("%s %d - concurrent sector writes, %s\n", ok ? "ok" : "not ok",
               i + 1, cases[i]);
        bad += !ok;
    }
    rmdir(dir);
    return bad ? 1 : 0;
}
