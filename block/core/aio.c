/*
 * aio.c - the asynchronous request path: submission, the worker threads
 * that run synchronous drivers for asynchronous callers, completion, and
 * BlockQueue (a bounded number of requests in flight for one submitter).
 *
 * A request goes to its driver's submit when the driver has one and the
 * request is aligned (the core's bounce and FUA emulation live in the
 * synchronous path); otherwise, or when submit declines with -EAGAIN, a
 * worker thread runs the synchronous path for it.  Workers are started
 * on demand (up to MAX_WORKERS, so that depth is not bounded by threads
 * for drivers with submit, and is for the rest) and leave after
 * IDLE_SECONDS without work.
 *
 * The worker queue is bounded (MAX_QUEUED): a submitter that finds it
 * full waits, which pushes back on whoever produces requests faster than
 * the storage takes them.  A worker never waits for room (a completion
 * that submits again must not deadlock the pool).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "block/core/request.h"

#define MAX_WORKERS 64
#define MAX_QUEUED 4096
#define IDLE_SECONDS 10

/* BlockRequest.core_flags */
enum {
    REQ_MARKED = 1 << 0,    /* the synchronous path marked the bitmaps */
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work;      /* a request was queued */
    pthread_cond_t room;      /* the queue has room again */
    BlockRequest *head, *tail;
    unsigned queued;
    unsigned threads;
    unsigned idle;
} pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    .room = PTHREAD_COND_INITIALIZER,
};

static __thread bool in_worker;

static int run_sync(BlockRequest *req)
{
    BlockNode *n = req->node;
    switch (req->op) {
    case BLOCK_OP_READ:
        return block_io_preadv(n, req->offset, req->qiov, req->flags);
    case BLOCK_OP_WRITE:
        return block_io_pwritev(n, req->offset, req->qiov, req->flags);
    case BLOCK_OP_FLUSH:
        return block_io_flush(n);
    case BLOCK_OP_DISCARD:
        return block_io_discard(n, req->offset, req->bytes);
    case BLOCK_OP_WRITE_ZEROES:
        return block_io_write_zeroes(n, req->offset, req->bytes, req->flags);
    }
    return -EINVAL;
}

static void *worker_main(void *arg)
{
    (void)arg;
    in_worker = true;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.head) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += IDLE_SECONDS;
            pool.idle++;
            int r = pthread_cond_timedwait(&pool.work, &pool.lock, &until);
            pool.idle--;
            if (r == ETIMEDOUT && !pool.head) {
                pool.threads--;
                pthread_mutex_unlock(&pool.lock);
                return NULL;
            }
        }
        BlockRequest *req = pool.head;
        pool.head = req->next;
        if (!pool.head) {
            pool.tail = NULL;
        }
        if (pool.queued-- == MAX_QUEUED) {
            pthread_cond_broadcast(&pool.room);
        }
        pthread_mutex_unlock(&pool.lock);

        int ret = run_sync(req);
        req->core_flags |= REQ_MARKED;
        block_request_complete(req, ret);

        pthread_mutex_lock(&pool.lock);
    }
}

static void worker_queue(BlockRequest *req)
{
    pthread_mutex_lock(&pool.lock);
    while (pool.queued >= MAX_QUEUED && !in_worker) {
        pthread_cond_wait(&pool.room, &pool.lock);
    }
    req->next = NULL;
    if (pool.tail) {
        pool.tail->next = req;
    } else {
        pool.head = req;
    }
    pool.tail = req;
    pool.queued++;
    bool start = pool.idle < pool.queued && pool.threads < MAX_WORKERS;
    if (start) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, worker_main, NULL) == 0) {
            pool.threads++;
        }
        pthread_attr_destroy(&attr);
    }
    bool none = pool.threads == 0;
    pthread_cond_signal(&pool.work);
    if (none) {
        /* No thread could be started: run it here rather than never. */
        pool.head = req->next;
        if (!pool.head) {
            pool.tail = NULL;
        }
        pool.queued--;
        pthread_mutex_unlock(&pool.lock);
        int ret = run_sync(req);
        req->core_flags |= REQ_MARKED;
        block_request_complete(req, ret);
        return;
    }
    pthread_mutex_unlock(&pool.lock);
}

static bool native_ok(BlockRequest *req)
{
    BlockNode *n = req->node;
    uint64_t a = n->request_alignment;
    if (!n->drv->submit) {
        return false;
    }
    if ((req->flags & BLOCK_REQ_FUA) && !n->caps.can_fua) {
        return false;
    }
    if (a > 1 && (req->offset % a || req->bytes % a ||
                  (req->qiov && !blockiov_is_aligned(req->qiov, a)))) {
        return false;
    }
    return true;
}

/* Checks made once the request is inside its node (see
 * block_check_request); true when it was ended here. */
static bool ended_early(BlockRequest *req)
{
    BlockNode *n = req->node;
    int ret = 0;
    if (req->op == BLOCK_OP_FLUSH) {
        if (!n->read_only && !(n->flags & BLOCK_O_NO_FLUSH)) {
            return false;
        }
    } else {
        ret = block_check_request(n, req->offset, req->bytes,
                                  req->op != BLOCK_OP_READ);
        if (ret >= 0 && req->bytes > 0) {
            if (n->flags & BLOCK_O_NO_FLUSH) {
                req->flags &= ~BLOCK_REQ_FUA;
            }
            return false;
        }
    }
    req->core_flags |= REQ_MARKED;
    block_request_complete(req, ret);
    return true;
}

static void dispatch(BlockRequest *req)
{
    if (ended_early(req)) {
        return;
    }
    /* Before-write hooks run on the synchronous path only. */
    bool hooked = req->op != BLOCK_OP_READ && req->op != BLOCK_OP_FLUSH &&
                  block_has_write_hooks(req->node);
    if (!hooked && native_ok(req) &&
        req->node->drv->submit(req->node, req) == 0) {
        return;
    }
    worker_queue(req);
}

void block_request_complete(BlockRequest *req, int ret)
{
    BlockNode *n = req->node;
    if (ret >= 0 && n->bitmaps && !(req->core_flags & REQ_MARKED) &&
        req->op != BLOCK_OP_READ && req->op != BLOCK_OP_FLUSH) {
        block_bitmaps_mark(n, req->offset, req->bytes);
    }
    BlockCompletionFn *cb = req->cb;
    void *opaque = req->opaque;
    free(req);
    block_node_leave(n);
    cb(opaque, ret < 0 ? ret : 0);
}

void block_request_resubmit(BlockRequest *req)
{
    if (block_node_enter(req->node, req)) {
        dispatch(req);
    }
}

static void submit(BlockNode *n, BlockOp op, uint64_t off, uint64_t bytes,
                   BlockIOV *qiov, int flags, BlockCompletionFn *cb,
                   void *opaque)
{
    BlockRequest *req = calloc(1, sizeof(*req));
    if (!req) {
        cb(opaque, -ENOMEM);
        return;
    }
    req->node = n;
    req->op = op;
    req->offset = off;
    req->bytes = bytes;
    req->qiov = qiov;
    req->flags = flags;
    req->cb = cb;
    req->opaque = opaque;
    if (block_node_enter(n, req)) {
        dispatch(req);
    }
}

void block_aio_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags,
                      BlockCompletionFn *cb, void *opaque)
{
    submit(n, BLOCK_OP_READ, off, qiov->size, qiov, flags, cb, opaque);
}

void block_aio_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags,
                       BlockCompletionFn *cb, void *opaque)
{
    submit(n, BLOCK_OP_WRITE, off, qiov->size, qiov, flags, cb, opaque);
}

void block_aio_flush(BlockNode *n, BlockCompletionFn *cb, void *opaque)
{
    submit(n, BLOCK_OP_FLUSH, 0, 0, NULL, 0, cb, opaque);
}

void block_aio_discard(BlockNode *n, uint64_t off, uint64_t len,
                       BlockCompletionFn *cb, void *opaque)
{
    submit(n, BLOCK_OP_DISCARD, off, len, NULL, 0, cb, opaque);
}

void block_aio_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                            int flags, BlockCompletionFn *cb, void *opaque)
{
    submit(n, BLOCK_OP_WRITE_ZEROES, off, len, NULL, flags, cb, opaque);
}

/* ------------------------------------------------------------------ */
/* Pollers                                                             */

static pthread_mutex_t pollers_lock = PTHREAD_MUTEX_INITIALIZER;
static BlockPoller *pollers;

void block_poller_add(BlockPoller *p)
{
    atomic_init(&p->pins, 0);
    pthread_mutex_lock(&pollers_lock);
    p->next = pollers;
    pollers = p;
    pthread_mutex_unlock(&pollers_lock);
}

void block_poller_remove(BlockPoller *p)
{
    pthread_mutex_lock(&pollers_lock);
    for (BlockPoller **pp = &pollers; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    pthread_mutex_unlock(&pollers_lock);
    while (atomic_load(&p->pins) > 0) {
        sched_yield();
    }
}

#define MAX_POLLED 16

/* Polls the registered queues once.  They are pinned under the lock and
 * polled without it, since a completion may register a new queue. */
static bool poll_all(int timeout_us)
{
    BlockPoller *v[MAX_POLLED];
    int n = 0;
    pthread_mutex_lock(&pollers_lock);
    for (BlockPoller *p = pollers; p && n < MAX_POLLED; p = p->next) {
        atomic_fetch_add(&p->pins, 1);
        v[n++] = p;
    }
    pthread_mutex_unlock(&pollers_lock);
    bool progress = false;
    for (int i = 0; i < n; i++) {
        /* With several queues, wait on none of them for long. */
        if (!progress) {
            progress = v[i]->poll(v[i]->opaque, n == 1 ? timeout_us : 0);
        }
        atomic_fetch_sub(&v[i]->pins, 1);
    }
    return progress;
}

/* ------------------------------------------------------------------ */
/* BlockQueue                                                          */

/* A waiting submitter is woken at every completion: keeping the queue
 * full matters more than saving wake-ups (a device's rate is depth over
 * latency; refilling in batches lowered it by a quarter). */
struct BlockQueue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned depth;
    unsigned in_flight;
    unsigned waiting;       /* threads asleep in reserve or wait */
    int first_error;
};

typedef struct QueueToken {
    BlockQueue *q;
    BlockCompletionFn *cb;
    void *opaque;
} QueueToken;

/* With q->lock held: waits until fewer than `limit` requests are in
 * flight.  It first ends completions itself where a driver lets it
 * (pollers: no thread wake-up on the critical path), and sleeps only when
 * that made no progress: the completion of a request a worker thread
 * runs wakes it. */
static void queue_wait_below(BlockQueue *q, unsigned limit)
{
    while (q->in_flight >= limit) {
        pthread_mutex_unlock(&q->lock);
        bool progress = poll_all(2000);
        pthread_mutex_lock(&q->lock);
        if (progress || q->in_flight < limit) {
            continue;
        }
        q->waiting++;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 2 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        /* Bounded: a poller's queue may have become ready meanwhile. */
        pthread_cond_timedwait(&q->cond, &q->lock, &until);
        q->waiting--;
    }
}

BlockQueue *block_queue_new(unsigned depth)
{
    BlockQueue *q = calloc(1, sizeof(*q));
    if (!q) {
        return NULL;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->depth = depth ? depth : 1;
    return q;
}

void block_queue_free(BlockQueue *q)
{
    if (!q) {
        return;
    }
    block_queue_wait(q);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q);
}

void *block_queue_reserve(BlockQueue *q, BlockCompletionFn *cb, void *opaque)
{
    QueueToken *t = malloc(sizeof(*t));
    pthread_mutex_lock(&q->lock);
    queue_wait_below(q, q->depth);
    q->in_flight++;
    pthread_mutex_unlock(&q->lock);
    if (!t) {
        /* Complete the slot at once with the error; the caller submits
         * nothing useful with a NULL token, so report it. */
        pthread_mutex_lock(&q->lock);
        q->in_flight--;
        if (!q->first_error) {
            q->first_error = -ENOMEM;
        }
        if (q->waiting) {
            pthread_cond_broadcast(&q->cond);
        }
        pthread_mutex_unlock(&q->lock);
        return NULL;
    }
    t->q = q;
    t->cb = cb;
    t->opaque = opaque;
    return t;
}

void block_queue_complete(void *token, int ret)
{
    QueueToken *t = token;
    BlockQueue *q = t->q;
    if (t->cb) {
        t->cb(t->opaque, ret);
    }
    free(t);
    pthread_mutex_lock(&q->lock);
    if (ret < 0 && !q->first_error) {
        q->first_error = ret;
    }
    q->in_flight--;
    if (q->waiting) {
        pthread_cond_broadcast(&q->cond);
    }
    pthread_mutex_unlock(&q->lock);
}

int block_queue_wait(BlockQueue *q)
{
    pthread_mutex_lock(&q->lock);
    queue_wait_below(q, 1);
    int ret = q->first_error;
    q->first_error = 0;
    pthread_mutex_unlock(&q->lock);
    return ret;
}
