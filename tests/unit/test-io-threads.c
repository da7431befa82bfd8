/*
 * test-io-threads.c - many threads writing unaligned, non-overlapping
 * ranges through an O_DIRECT raw node.  Neighbouring ranges share edge
 * sectors, so without serialised read-modify-write in the core some
 * writes would be lost.  (TAP)
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/driver.h"

#define THREADS 8
#define PIECE 700          /* deliberately not a multiple of 512 */
#define ROUNDS 64

static BlockNode *node;
static int failures;

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint8_t buf[PIECE];
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t idx = (uint64_t)r * THREADS + (uint64_t)t;
        memset(buf, (int)(idx % 251) + 1, sizeof(buf));
        if (block_pwrite(node, idx * PIECE, PIECE, buf, 0) < 0) {
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);
        }
    }
    return NULL;
}

int main(void)
{
    char path[] = "/tmp/imgtool-io-threads-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        printf("Bail out! mkstemp: %s\n", strerror(errno));
        return 1;
    }
    uint64_t size = (uint64_t)THREADS * ROUNDS * PIECE + 4096;
    if (ftruncate(fd, (off_t)size) < 0) {
        return 1;
    }
    close(fd);
    Error err = { 0 };
    node = block_open(path, "raw", NULL, BLOCK_O_RDWR | BLOCK_O_NOCACHE, &err);
    int n = 0, bad = 0;
    if (!node) {
        /* tmpfs has no O_DIRECT: fall back to buffered I/O but still
         * force the bounce path with a large alignment. */
        error_clear(&err);
        node = block_open(path, "raw", NULL, BLOCK_O_RDWR, &err);
        if (node) {
            node->request_alignment = 4096;
            block_file(node)->request_alignment = 4096;
        }
    }
    printf("%sok %d - open raw node\n", node ? "" : "not ", ++n);
    if (!node) {
        printf("# %s\n1..%d\n", err.msg, n);
        unlink(path);
        return 1;
    }
    printf("# request alignment %u\n", block_file(node)->request_alignment);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
    }
    printf("%sok %d - all writes succeeded\n", failures ? "not " : "", ++n);

    uint8_t buf[PIECE];
    for (uint64_t idx = 0; idx < (uint64_t)THREADS * ROUNDS; idx++) {
        if (block_pread(node, idx * PIECE, PIECE, buf) < 0) {
            bad++;
            continue;
        }
        for (int k = 0; k < PIECE; k++) {
            if (buf[k] != (uint8_t)((idx % 251) + 1)) {
                bad++;
                break;
            }
        }
    }
    printf("%sok %d - every piece reads back (%d bad)\n", bad ? "not " : "",
           ++n, bad);
    block_close(node);
    unlink(path);
    printf("1..%d\n", n);
    return (failures || bad) ? 1 : 0;
}
