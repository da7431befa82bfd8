/*
 * file-int.h - the file protocol's state, shared by file.c (open, the
 * synchronous calls, reopen) and file-uring.c (asynchronous reads, writes
 * and flushes through io_uring).
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_FILE_INT_H
#define IMGTOOL_BLOCK_PROTOCOL_FILE_INT_H

#include <pthread.h>
#include <stdbool.h>

#include "block/driver.h"

typedef struct FileRing FileRing;

typedef struct FileState {
    int fd;              /* does the I/O */
    int lock_fd;         /* holds the image locks (fd, unless reopened) */
    bool is_device;
    bool direct;
    bool locked;         /* took QEMU's lock bytes (not -U, not off) */

    bool use_uring;      /* aio= allows it */
    pthread_mutex_t ring_lock;   /* creating / stopping the ring */
    FileRing *ring;      /* made on the first asynchronous request */
    bool ring_failed;    /* the kernel refused: workers from now on */
} FileState;

/* The rest of a vectored read or write from byte `done` of the vector,
 * synchronously: for short transfers io_uring left unfinished, and the
 * whole request in the synchronous path (done 0). */
int file_preadv_from(FileState *s, uint64_t off, BlockIOV *qiov,
                     size_t done);
int file_pwritev_from(FileState *s, uint64_t off, BlockIOV *qiov,
                      size_t done, int flags);

/* The driver's submit: takes reads, writes and flushes into the ring
 * (0), or declines (-EAGAIN) so a worker runs them. */
int file_submit(BlockNode *n, BlockRequest *req);
/* Waits for the ring's requests and tears it down (close, reopen; no
 * request is in flight then, the node being drained or unused). */
void file_uring_stop(FileState *s);

/* file-clone.c: the driver's copy_range_from. */
int file_copy_range_from(BlockNode *n, uint64_t off, uint64_t len,
                         BlockNode *src_file, uint64_t src_host, int flags);

#endif
