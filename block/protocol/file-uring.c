/*
 * file-uring.c - asynchronous reads, writes and flushes of the file
 * protocol through io_uring, so one submitting thread can keep many
 * requests in flight without a thread per request.
 *
 * One ring per file node, made on the first asynchronous request.
 * Submitters take sq_lock to fill and submit entries.  Completions are
 * ended under cq_lock by whoever gets there first: a submitter waiting
 * for room in its BlockQueue (through the ring's BlockPoller: no thread
 * wake-up between the disk and the next submission), or the ring's
 * reaper thread, which waits for completions nobody else waits for.  A request whose transfer
 * comes back short (a read at the end of the file, a partial write) is
 * finished synchronously by the reaper; errors end it.  When the kernel
 * refuses io_uring, or the ring is full, submit declines and the core's
 * worker threads run the request instead.
 *
 * Stopping: with no request in flight (the node is drained or nobody uses
 * it), a NOP with no request attached tells the reaper to leave.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/file-int.h"

#ifdef HAVE_LIBURING

#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#define RING_ENTRIES 256

struct FileRing {
    struct io_uring ring;
    pthread_mutex_t sq_lock;     /* filling and submitting entries */
    pthread_mutex_t cq_lock;     /* consuming completions */
    pthread_t reaper;
    bool stopping;               /* the stop marker was consumed */
    /* Bumped (release) by every submission and read (acquire) before
     * ending completions: the kernel orders a completion after its
     * submission, but only this lets ThreadSanitizer see that order. */
    atomic_ulong submitted;
    BlockPoller poller;
    FileState *s;
};

/* Unmaps and closes a ring.  liburing unmaps with raw system calls that
 * ThreadSanitizer does not see, so a ring later mapped at the same
 * address would inherit the old ring's accesses and be reported as
 * racing; under TSan the same teardown goes through the C library,
 * whose munmap TSan follows. */
static void ring_exit(struct io_uring *ring)
{
#if defined(__SANITIZE_THREAD__)
    munmap(ring->sq.sqes,
           ring->sq.ring_entries * sizeof(struct io_uring_sqe));
    munmap(ring->sq.ring_ptr, ring->sq.ring_sz);
    if (ring->cq.ring_ptr != ring->sq.ring_ptr) {
        munmap(ring->cq.ring_ptr, ring->cq.ring_sz);
    }
    close(ring->ring_fd);
#else
    io_uring_queue_exit(ring);
#endif
}

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

/* Ends every completion that is ready, without waiting, with cq_lock
 * held; returns how many requests it ended.  The stop marker sets
 * r->stopping. */
static int reap_ready(FileRing *r)
{
    struct io_uring_cqe *cqe;
    int ended = 0;
    while (io_uring_peek_cqe(&r->ring, &cqe) == 0) {
        /* After each peek, not once before the loop: a completion the
         * loop reaches may belong to a submission made after an earlier
         * load, and TSan must see that submission ordered before us. */
        (void)atomic_load_explicit(&r->submitted, memory_order_acquire);
        BlockRequest *req = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&r->ring, cqe);
        if (!req) {
            r->stopping = true;
            continue;
        }
        if (res == -EAGAIN || res == -EINTR) {
            /* Rare; finish it here rather than requeueing. */
            res = 0;
        }
        finish(r, req, res);
        ended++;
    }
    return ended;
}

/* Sleeps until the ring has a completion (or timeout_us passes; < 0:
 * no limit) without consuming or submitting anything, so it is safe
 * beside other threads that fill the submission queue. */
static int wait_ready(FileRing *r, long timeout_us)
{
    struct __kernel_timespec ts = {
        .tv_sec = timeout_us / 1000000,
        .tv_nsec = (timeout_us % 1000000) * 1000,
    };
    struct io_uring_getevents_arg arg = {
        .ts = timeout_us >= 0 ? (uint64_t)(uintptr_t)&ts : 0,
    };
    return io_uring_enter2(r->ring.ring_fd, 0, 1,
                           IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                           (sigset_t *)&arg, sizeof(arg));
}

/* The reaper ends completions nobody else is waiting for. */
static void *reaper_main(void *arg)
{
    FileRing *r = arg;
    for (;;) {
        int ret = wait_ready(r, -1);
        if (ret < 0 && ret != -EINTR && ret != -ETIME) {
            return NULL;   /* nothing sane is left to do with this ring */
        }
        pthread_mutex_lock(&r->cq_lock);
        reap_ready(r);
        bool stop = r->stopping;
        pthread_mutex_unlock(&r->cq_lock);
        if (stop) {
            return NULL;
        }
    }
}

/* A waiting submitter's poll (BlockPoller): end what is ready, waiting
 * for it briefly, on the submitter's own thread. */
static bool ring_poll(void *opaque, int timeout_us)
{
    FileRing *r = opaque;
    if (pthread_mutex_trylock(&r->cq_lock) != 0) {
        return false;   /* someone else is ending them right now */
    }
    int ended = reap_ready(r);
    if (!ended && timeout_us > 0 && !r->stopping) {
        wait_ready(r, timeout_us);
        ended = reap_ready(r);
    }
    pthread_mutex_unlock(&r->cq_lock);
    return ended > 0;
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
            pthread_mutex_init(&r->cq_lock, NULL);
            if (pthread_create(&r->reaper, NULL, reaper_main, r) == 0) {
                s->ring = r;
                r->poller.poll = ring_poll;
                r->poller.opaque = r;
                block_poller_add(&r->poller);
            } else {
                ring_exit(&r->ring);
                pthread_mutex_destroy(&r->sq_lock);
                pthread_mutex_destroy(&r->cq_lock);
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
    atomic_fetch_add_explicit(&r->submitted, 1, memory_order_release);
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
    block_poller_remove(&r->poller);
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
    ring_exit(&r->ring);
    pthread_mutex_destroy(&r->sq_lock);
    pthread_mutex_destroy(&r->cq_lock);
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
