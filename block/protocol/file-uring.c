/*
 * file-uring.c - asynchronous reads, writes and flushes of the file
 * protocol through io_uring, so one submitting thread can keep many
 * requests in flight without a thread per request.
 *
 * One ring per file node, made on the first asynchronous request.
 * Submitters take sq_lock to fill and submit entries; one reaper thread
 * waits for completions and ends the requests.  A request whose transfer
 * comes back short (a read at the end of the file, a partial write) is
 * finished synchronously by the reaper; errors end it.  When the kernel
 * refuses io_uring, or the ring is full, submit declines and the core's
 * worker threads run the request instead.
 *
 * Stopping: with no request in flight (the node is drained or nobody uses
 * it), a NOP with no request attached tells the reaper to leave.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/file-int.h"

#ifdef HAVE_LIBURING

#include <liburing.h>

#define RING_ENTRIES 256

struct FileRing {
    struct io_uring ring;
    pthread_mutex_t sq_lock;
    pthread_t reaper;
    FileState *s;
};

static void finish(FileRing *r, BlockRequest *req, int res)
{
    FileState *s = r->s;
    if (res < 0) {
        block_request_complete(req, res);
        return;
    }
    size_t done = (size_t)res;
    int ret = 0;
    switch (req->op) {
    case BLOCK_OP_READ:
        if (done < req->qiov->size) {
            ret = file_preadv_from(s, req->offset, req->qiov, done);
        }
        break;
    case BLOCK_OP_WRITE:
        if (done < req->qiov->size) {
            ret = file_pwritev_from(s, req->offset, req->qiov, done,
                                    req->flags);
        }
        break;
    default:
        break;
    }
    block_request_complete(req, ret);
}

/* Ends every completion that is ready, without waiting; returns false
 * once the stop marker was seen. */
static bool reap_ready(FileRing *r)
{
    struct io_uring_cqe *cqe;
    while (io_uring_peek_cqe(&r->ring, &cqe) == 0) {
        BlockRequest *req = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&r->ring, cqe);
        if (!req) {
            return false;   /* the stop marker */
        }
        if (res == -EAGAIN || res == -EINTR) {
            /* Rare; finish it here rather than requeueing. */
            res = 0;
        }
        finish(r, req, res);
    }
    return true;
}

static void *reaper_main(void *arg)
{
    FileRing *r = arg;
    for (;;) {
        struct io_uring_cqe *cqe;
        int ret = io_uring_wait_cqe(&r->ring, &cqe);
        if (ret == -EINTR) {
            continue;
        }
        if (ret < 0) {
            /* Nothing sane is left to do with this ring. */
            return NULL;
        }
        /* One wake-up ends every completion that is ready by now. */
        if (!reap_ready(r)) {
            return NULL;
        }
    }
}

static FileRing *ring_get(FileState *s)
{
    pthread_mutex_lock(&s->ring_lock);
    FileRing *r = s->ring;
    if (!r && !s->ring_failed) {
        r = calloc(1, sizeof(*r));
        if (r && io_uring_queue_init(RING_ENTRIES, &r->ring, 0) == 0) {
            r->s = s;
            pthread_mutex_init(&r->sq_lock, NULL);
            if (pthread_create(&r->reaper, NULL, reaper_main, r) == 0) {
                s->ring = r;
            } else {
                io_uring_queue_exit(&r->ring);
                pthread_mutex_destroy(&r->sq_lock);
                free(r);
                r = NULL;
            }
        } else {
            free(r);
            r = NULL;
        }
        if (!r) {
            s->ring_failed = true;
        }
    }
    pthread_mutex_unlock(&s->ring_lock);
    return r;
}

int file_submit(BlockNode *n, BlockRequest *req)
{
    FileState *s = n->opaque;
    /* Buffered I/O is served from the page cache faster by a thread's
     * pread than by io_uring, which hands misses to its own workers. */
    if (!s->use_uring || !s->direct || s->is_device ||
        (req->op != BLOCK_OP_READ && req->op != BLOCK_OP_WRITE &&
         req->op != BLOCK_OP_FLUSH)) {
        return -EAGAIN;
    }
    FileRing *r = ring_get(s);
    if (!r) {
        return -EAGAIN;
    }
    pthread_mutex_lock(&r->sq_lock);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) {
        pthread_mutex_unlock(&r->sq_lock);
        return -EAGAIN;
    }
    switch (req->op) {
    case BLOCK_OP_READ:
        io_uring_prep_readv(sqe, s->fd, req->qiov->iov, req->qiov->niov,
                            req->offset);
        break;
    case BLOCK_OP_WRITE:
        io_uring_prep_writev(sqe, s->fd, req->qiov->iov, req->qiov->niov,
                             req->offset);
        if (req->flags & BLOCK_REQ_FUA) {
            sqe->rw_flags = RWF_DSYNC;
        }
        break;
    default:
        io_uring_prep_fsync(sqe, s->fd, IORING_FSYNC_DATASYNC);
        break;
    }
    io_uring_sqe_set_data(sqe, req);
    int ret = io_uring_submit(&r->ring);
    pthread_mutex_unlock(&r->sq_lock);
    if (ret < 0) {
        /* The entry was not taken: let a worker do it. */
        return -EAGAIN;
    }
    return 0;
}

void file_uring_stop(FileState *s)
{
    pthread_mutex_lock(&s->ring_lock);
    FileRing *r = s->ring;
    s->ring = NULL;
    pthread_mutex_unlock(&s->ring_lock);
    if (!r) {
        return;
    }
    pthread_mutex_lock(&r->sq_lock);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data(sqe, NULL);
        io_uring_submit(&r->ring);
    }
    pthread_mutex_unlock(&r->sq_lock);
    if (sqe) {
        pthread_join(r->reaper, NULL);
    } else {
        /* No room for the marker means requests are still in flight,
         * which the callers' rules exclude; leave the thread rather
         * than free what it uses. */
        return;
    }
    io_uring_queue_exit(&r->ring);
    pthread_mutex_destroy(&r->sq_lock);
    free(r);
}

#else   /* !HAVE_LIBURING */

int file_submit(BlockNode *n, BlockRequest *req)
{
    return -EAGAIN;
}

void file_uring_stop(FileState *s)
{
}

#endif
