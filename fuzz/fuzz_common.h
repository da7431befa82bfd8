/*
 * fuzz_common.h - what the qcow2 harnesses share: the fuzz input as a
 * file the block layer can open by name, opening it as the commands do,
 * check with and without repair, and a bounded read of a whole virtual
 * disk.
 *
 * The input lives in a memfd named through /proc/self/fd, so no harness
 * run touches the real file system and runs cannot see each other.
 */
#ifndef IMGTOOL_FUZZ_COMMON_H
#define IMGTOOL_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "block/block.h"

/* Reads of the virtual disk stop after this many bytes: a hostile header
 * may claim exabytes. */
#define FUZZ_READ_CAP (64u << 20)
#define FUZZ_STATUS_CAP 65536
#define FUZZ_CHUNK (1u << 20)

/* Flags every harness opens with: the input's backing file name and
 * locks are not what is being fuzzed. */
#define FUZZ_OPEN_FLAGS (BLOCK_O_NO_BACKING | BLOCK_O_NO_LOCK)

/* What `check -r all` repairs. */
#define FUZZ_REPAIR (BLOCK_FIX_LEAKS | BLOCK_FIX_ERRORS)

static inline int fuzz_memfd(const uint8_t *data, size_t size, char *path,
                             size_t pathlen)
{
    int fd = memfd_create("fuzz-image", 0);
    if (fd < 0) {
        return -1;
    }
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

/* Reads every region block status calls data, and a few fixed spots,
 * within read_cap bytes and status_cap status calls in all. */
static inline void fuzz_read_capped(BlockNode *n, int status_cap,
                                    uint64_t read_cap)
{
    int64_t len = block_get_length(n);
    if (len <= 0) {
        return;
    }
    uint8_t *buf = malloc(FUZZ_CHUNK);
    if (!buf) {
        return;
    }
    uint64_t size = (uint64_t)len, read_bytes = 0, off = 0;
    for (int calls = 0; off < size && calls < status_cap &&
         read_bytes < read_cap; calls++) {
        uint64_t pnum = 0, map = 0;
        BlockNode *file = NULL;
        int st = block_status_above(n, NULL, off, size - off, &pnum, &map,
                                    &file, NULL);
        if (st < 0 || pnum == 0) {
            /* A damaged table: the read itself must fail cleanly too. */
            size_t l = size - off < 4096 ? (size_t)(size - off) : 4096;
            block_pread(n, off, l, buf);
            off += l;
            read_bytes += l;
            continue;
        }
        if (st & BLOCK_STATUS_DATA) {
            for (uint64_t p = off; p < off + pnum &&
                 read_bytes < read_cap;) {
                size_t l = off + pnum - p < FUZZ_CHUNK
                               ? (size_t)(off + pnum - p) : FUZZ_CHUNK;
                block_pread(n, p, l, buf);
                p += l;
                read_bytes += l;
            }
        }
        off += pnum;
    }
    /* The head and tail, whatever status said, unaligned on purpose. */
    size_t l = size < 70000 ? (size_t)size : 70000;
    block_pread(n, 0, l, buf);
    block_pread(n, size - l, l, buf);
    if (size > 3) {
        block_pread(n, size / 3 + 1, size - size / 3 - 1 < 4097
                                         ? (size_t)(size - size / 3 - 1)
                                         : 4097, buf);
    }
    free(buf);
}

static inline void fuzz_read_all(BlockNode *n)
{
    fuzz_read_capped(n, FUZZ_STATUS_CAP, FUZZ_READ_CAP);
}

static inline void fuzz_check(BlockNode *n, int fix)
{
    BlockCheckResult res;
    Error err = { 0 };
    memset(&res, 0, sizeof(res));
    block_check(n, &res, fix, &err);
}

/* Opens path as qcow2 with FUZZ_OPEN_FLAGS and flags; NULL when refused,
 * which is a fine outcome for any input, so the reason is dropped. */
static inline BlockNode *fuzz_open(const char *path, int flags)
{
    Error err = { 0 };
    BlockNode *n = block_open(path, "qcow2", NULL, FUZZ_OPEN_FLAGS | flags,
                              &err);
    error_clear(&err);
    return n;
}

/* `check` (fix 0) or `check -r all` (fix FUZZ_REPAIR) as imgtool runs
 * it: a repair opens for writing. */
static inline void fuzz_open_and_check(const char *path, int fix)
{
    BlockNode *n = fuzz_open(path, BLOCK_O_CHECK | (fix ? BLOCK_O_RDWR : 0));
    if (n) {
        fuzz_check(n, fix);
        block_close(n);
    }
}

static inline void fuzz_describe(BlockNode *n)
{
    json_t *j = block_get_format_info(n);
    if (j) {
        char *s = json_dumps(j, 0);
        free(s);
        json_decref(j);
    }
    BlockInfoExtra ex;
    memset(&ex, 0, sizeof(ex));
    block_get_info_extra(n, &ex);
    block_get_allocated_size(n);
}

#endif
