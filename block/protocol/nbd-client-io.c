/*
 * nbd-client-io.c - the NBD driver's request engine on libnbd.
 *
 * libnbd's handle is thread-safe (each call takes the handle's lock) and
 * carries many commands at once; its callbacks run with that lock held
 * and must not call libnbd.  So:
 *  - any thread issues commands with nbd_aio_* (and wakes the I/O thread
 *    when libnbd then waits to write);
 *  - one I/O thread per connection polls the socket and drives libnbd's
 *    state machine (nbd_aio_notify_read/write);
 *  - a command's completion callback only queues its part on the
 *    connection's done list; the I/O thread ends the parts after
 *    libnbd returns, outside the lock, and a request ends with its last
 *    part (block_request_complete, or waking a synchronous caller).
 * Block-layer completion callbacks therefore only ever run on I/O
 * threads, never inside a caller that may hold its own locks.
 *
 * A request above the server's maximum block size is split into parts;
 * the request holds one extra count while it issues them, so it cannot
 * end before the last part is issued.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "block/protocol/nbd-client.h"

typedef struct NbdReq {
    BlockRequest *breq;        /* asynchronous: end it; NULL: a waiter */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int left;                  /* parts (and the issuing hold) not ended */
    int err;                   /* the first error, positive errno */
    bool done;
    uint8_t *bounce;           /* a vector of several elements, flattened */
    BlockIOV *qiov;
    bool is_read;
    /* block status: the first extent of want_ctx at bs_off */
    const char *want_ctx;
    uint64_t bs_off;
    uint32_t bs_len, bs_flags;
    bool bs_got;
} NbdReq;

struct NbdPart {
    NbdReq *req;
    NbdConnection *conn;
    int err;
    NbdPart *next;
};

typedef enum { OP_READ, OP_WRITE, OP_FLUSH, OP_TRIM, OP_ZERO,
               OP_STATUS } Op;

static __thread bool on_io_thread;

/* ------------------------------------------------------------------ */
/* Requests and parts                                                  */

static NbdReq *req_new(BlockRequest *breq)
{
    NbdReq *r = calloc(1, sizeof(*r));
    if (r) {
        r->breq = breq;
        pthread_mutex_init(&r->lock, NULL);
        pthread_cond_init(&r->cond, NULL);
    }
    return r;
}

static void req_free(NbdReq *r)
{
    free(r->bounce);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}

static void req_end(NbdReq *r)
{
    if (r->bounce && r->is_read && !r->err) {
        blockiov_from_buf(r->qiov, 0, r->bounce, r->qiov->size);
    }
    if (r->breq) {
        BlockRequest *b = r->breq;
        int err = r->err;
        req_free(r);
        block_request_complete(b, -err);
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->done = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Counts one part (or the hold) of r as ended, with error err. */
static void req_put(NbdReq *r, int err)
{
    pthread_mutex_lock(&r->lock);
    if (err && !r->err) {
        r->err = err;
    }
    bool last = --r->left == 0;
    pthread_mutex_unlock(&r->lock);
    if (last) {
        req_end(r);
    }
}

static void wait_done(NbdReq *r)
{
    pthread_mutex_lock(&r->lock);
    while (!r->done) {
        pthread_cond_wait(&r->cond, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
}

/* ------------------------------------------------------------------ */
/* The I/O thread                                                      */

static void kick(NbdConnection *c)
{
    uint64_t one = 1;
    ssize_t r = write(c->efd, &one, sizeof(one));
    (void)r;
}

/* libnbd's completion callback, its lock held: queue the part only. */
static int part_complete(void *user_data, int *error)
{
    NbdPart *p = user_data;
    NbdConnection *c = p->conn;
    p->err = *error;
    pthread_mutex_lock(&c->done_lock);
    bool was_empty = !c->done;
    p->next = c->done;
    c->done = p;
    pthread_mutex_unlock(&c->done_lock);
    if (was_empty && !on_io_thread) {
        kick(c);   /* completed inside an issuing call */
    }
    return 1;   /* retire the command */
}

static void drain_done(NbdConnection *c)
{
    pthread_mutex_lock(&c->done_lock);
    NbdPart *p = c->done;
    c->done = NULL;
    pthread_mutex_unlock(&c->done_lock);
    while (p) {
        NbdPart *next = p->next;
        NbdReq *r = p->req;
        int err = p->err;
        free(p);
        req_put(r, err);
        p = next;
    }
}

static void *io_thread(void *opaque)
{
    NbdConnection *c = opaque;
    on_io_thread = true;
    for (;;) {
        struct pollfd pfd[2] = {
            { .fd = -1 }, { .fd = c->efd, .events = POLLIN },
        };
        if (!__atomic_load_n(&c->dead, __ATOMIC_ACQUIRE)) {
            unsigned dir = nbd_aio_get_direction(c->h);
            pfd[0].fd = nbd_aio_get_fd(c->h);
            pfd[0].events = (dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                            (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0);
        }
        if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
            break;
        }
        if (pfd[1].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(c->efd, &v, sizeof(v));
            (void)r;
        }
        if (__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
            break;
        }
        int r = 0;
        if (pfd[0].fd >= 0 && pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            r = nbd_aio_notify_read(c->h);
        } else if (pfd[0].fd >= 0 && pfd[0].revents & POLLOUT) {
            r = nbd_aio_notify_write(c->h);
        }
        if (pfd[0].fd >= 0 && (r < 0 || pfd[0].revents & POLLNVAL ||
                               nbd_aio_is_dead(c->h) > 0 ||
                               nbd_aio_is_closed(c->h) > 0)) {
            /* libnbd has failed the commands in flight (their callbacks
             * queued them); new ones fail at once. */
            __atomic_store_n(&c->dead, true, __ATOMIC_RELEASE);
        }
        drain_done(c);
    }
    drain_done(c);
    return NULL;
}

int nbd_client_start_thread(NbdConnection *c, Error *err)
{
    c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->efd < 0) {
        return error_setf(err, errno, "eventfd: %s", strerror(errno));
    }
    pthread_mutex_init(&c->done_lock, NULL);
    int r = pthread_create(&c->thread, NULL, io_thread, c);
    if (r) {
        close(c->efd);
        c->efd = -1;
        pthread_mutex_destroy(&c->done_lock);
        return error_setf(err, r, "cannot start the NBD I/O thread: %s",
                          strerror(r));
    }
    c->thread_started = true;
    return 0;
}

void nbd_client_stop_thread(NbdConnection *c)
{
    if (!c->thread_started) {
        return;
    }
    __atomic_store_n(&c->stop, true, __ATOMIC_RELEASE);
    kick(c);
    pthread_join(c->thread, NULL);
    close(c->efd);
    pthread_mutex_destroy(&c->done_lock);
    c->thread_started = false;
}

/* ------------------------------------------------------------------ */
/* Issuing commands                                                    */

static int status_extent(void *user_data, const char *metacontext,
                         uint64_t offset, uint32_t *entries,
                         size_t nr_entries, int *error)
{
    NbdReq *r = user_data;
    if (!r->bs_got && nr_entries >= 2 && offset == r->bs_off &&
        strcmp(metacontext, r->want_ctx) == 0) {
        r->bs_len = entries[0];
        r->bs_flags = entries[1];
        r->bs_got = true;
    }
    return 0;
}

/* One command on c for part p.  0, or -errno when libnbd refused it
 * (then no callback will come and the caller ends the part). */
static int issue(NbdConnection *c, NbdPart *p, Op op, void *buf,
                 uint64_t off, uint64_t len, uint32_t flags)
{
    if (__atomic_load_n(&c->dead, __ATOMIC_ACQUIRE)) {
        return -ENOTCONN;
    }
    nbd_completion_callback cb = { .callback = part_complete,
                                   .user_data = p };
    int64_t cookie;
    switch (op) {
    case OP_READ:
        cookie = nbd_aio_pread(c->h, buf, len, off, cb, 0);
        break;
    case OP_WRITE:
        cookie = nbd_aio_pwrite(c->h, buf, len, off, cb, flags);
        break;
    case OP_FLUSH:
        cookie = nbd_aio_flush(c->h, cb, 0);
        break;
    case OP_TRIM:
        cookie = nbd_aio_trim(c->h, len, off, cb, flags);
        break;
    case OP_ZERO:
        cookie = nbd_aio_zero(c->h, len, off, cb, flags);
        break;
    default: {
        nbd_extent_callback ecb = { .callback = status_extent,
                                    .user_data = p->req };
        cookie = nbd_aio_block_status(c->h, len, off, ecb, cb,
                                      LIBNBD_CMD_FLAG_REQ_ONE);
        break;
    }
    }
    if (cookie < 0) {
        int e = nbd_get_errno();
        return -(e ? e : EIO);
    }
    if (nbd_aio_get_direction(c->h) & LIBNBD_AIO_DIRECTION_WRITE) {
        kick(c);   /* the I/O thread must wait for POLLOUT too */
    }
    return 0;
}

static NbdConnection *pick(NbdClientState *s)
{
    unsigned i = __atomic_fetch_add(&s->next, 1, __ATOMIC_RELAXED);
    return &s->conns[i % (unsigned)s->nconns];
}

/* Issues r as parts of at most the server's maximum size (zeroes and
 * trims up to 2 GiB a part, block status one part); r ends with its
 * last part. */
static void run(NbdClientState *s, NbdReq *r, Op op, uint8_t *buf,
                uint64_t off, uint64_t len, uint32_t flags)
{
    uint64_t step = op == OP_TRIM || op == OP_ZERO ? 1ull << 31
                                                   : s->max_request;
    uint64_t nparts = 1;
    if (op == OP_STATUS) {
        len = len > 0xffffffffull ? 0xffffffffull : len;
    } else if (op != OP_FLUSH) {
        nparts = (len + step - 1) / step;
    }
    r->left = (int)nparts + 1;    /* + the hold, ended below */
    for (uint64_t i = 0; i < nparts; i++) {
        uint64_t o = off + i * step;
        uint64_t n = op == OP_STATUS ? len
                     : (len - i * step < step ? len - i * step : step);
        NbdConnection *c = pick(s);
        NbdPart *p = calloc(1, sizeof(*p));
        int ret = -ENOMEM;
        if (p) {
            p->req = r;
            p->conn = c;
            ret = issue(c, p, op, buf ? buf + (o - off) : NULL, o, n, flags);
        }
        if (ret < 0) {
            free(p);
            req_put(r, -ret);
        }
    }
    req_put(r, 0);
}

/* The flat buffer of a vector (bounced when it has several elements),
 * or NULL when out of memory. */
static uint8_t *flat(NbdReq *r, BlockIOV *qiov, bool is_read)
{
    r->qiov = qiov;
    r->is_read = is_read;
    uint8_t *b = blockiov_flat(qiov);
    if (b) {
        return b;
    }
    r->bounce = malloc(qiov->size ? qiov->size : 1);
    if (r->bounce && !is_read) {
        blockiov_to_buf(qiov, 0, r->bounce, qiov->size);
    }
    return r->bounce;
}

static uint32_t cmd_flags(int flags, Op op)
{
    uint32_t f = 0;
    if (flags & BLOCK_REQ_FUA) {
        f |= LIBNBD_CMD_FLAG_FUA;
    }
    if (op == OP_ZERO && !(flags & BLOCK_REQ_MAY_UNMAP)) {
        f |= LIBNBD_CMD_FLAG_NO_HOLE;
    }
    if (op == OP_ZERO && (flags & BLOCK_REQ_NO_FALLBACK)) {
        f |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    return f;
}

static void start(BlockNode *n, NbdReq *r, BlockOp op, uint64_t off,
                  uint64_t len, BlockIOV *qiov, int flags)
{
    Op o = op == BLOCK_OP_READ ? OP_READ
         : op == BLOCK_OP_WRITE ? OP_WRITE
         : op == BLOCK_OP_FLUSH ? OP_FLUSH
         : op == BLOCK_OP_DISCARD ? OP_TRIM : OP_ZERO;
    uint8_t *buf = NULL;
    if (o == OP_READ || o == OP_WRITE) {
        buf = flat(r, qiov, o == OP_READ);
        if (!buf) {
            r->err = ENOMEM;
            req_end(r);
            return;
        }
    }
    run(n->opaque, r, o, buf, off, len, cmd_flags(flags, o));
}

static int sync_op(BlockNode *n, BlockOp op, uint64_t off, uint64_t len,
                   BlockIOV *qiov, int flags)
{
    NbdReq *r = req_new(NULL);
    if (!r) {
        return -ENOMEM;
    }
    start(n, r, op, off, len, qiov, flags);
    wait_done(r);
    int err = r->err;
    req_free(r);
    return -err;
}

/* ------------------------------------------------------------------ */
/* Driver callbacks                                                    */

int nbd_client_submit(BlockNode *n, BlockRequest *req)
{
    NbdReq *r = req_new(req);
    if (!r) {
        return -EAGAIN;
    }
    start(n, r, req->op, req->offset, req->bytes, req->qiov, req->flags);
    return 0;
}

int nbd_client_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    return sync_op(n, BLOCK_OP_READ, off, qiov->size, qiov, flags);
}

int nbd_client_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                       int flags)
{
    return sync_op(n, BLOCK_OP_WRITE, off, qiov->size, qiov, flags);
}

int nbd_client_flush(BlockNode *n)
{
    NbdClientState *s = n->opaque;
    if (nbd_can_flush(s->conns[0].h) <= 0) {
        return 0;
    }
    return sync_op(n, BLOCK_OP_FLUSH, 0, 0, NULL, 0);
}

int nbd_client_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    return sync_op(n, BLOCK_OP_DISCARD, off, len, NULL, 0);
}

int nbd_client_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                            int flags)
{
    NbdClientState *s = n->opaque;
    if (nbd_can_zero(s->conns[0].h) <= 0 ||
        ((flags & BLOCK_REQ_NO_FALLBACK) &&
         nbd_can_fast_zero(s->conns[0].h) <= 0)) {
        return -ENOTSUP;
    }
    return sync_op(n, BLOCK_OP_WRITE_ZEROES, off, len, NULL, flags);
}

int nbd_client_block_status(BlockNode *n, uint64_t off, uint64_t len,
                            uint64_t *pnum, uint64_t *map, BlockNode **file)
{
    NbdClientState *s = n->opaque;
    *map = off;
    *file = n;
    if (nbd_can_meta_context(s->conns[0].h, s->context) <= 0) {
        *pnum = len;    /* an old server: all data, as QEMU assumes */
        return BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED |
               BLOCK_STATUS_OFFSET_VALID;
    }
    NbdReq *r = req_new(NULL);
    if (!r) {
        return -ENOMEM;
    }
    r->want_ctx = s->context;
    r->bs_off = off;
    run(s, r, OP_STATUS, NULL, off, len, 0);
    wait_done(r);
    int err = r->err;
    bool got = r->bs_got;
    uint64_t elen = r->bs_len;
    uint32_t eflags = r->bs_flags;
    req_free(r);
    if (err) {
        return -err;
    }
    int st = BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_DATA |
             BLOCK_STATUS_OFFSET_VALID;
    if (!got || elen == 0) {
        /* The server said nothing about it: data, as QEMU assumes. */
        *pnum = len;
        return st;
    }
    *pnum = elen < len ? elen : len;
    /* As QEMU's client reads it: bit 0 ("hole" in base:allocation,
     * "dirty" in a bitmap) means no data, bit 1 zero (base:allocation
     * only); a range with neither is unallocated with unknown content,
     * which callers read rather than skip. */
    st = 0;
    if (!(eflags & 1)) {
        st |= BLOCK_STATUS_DATA;
    }
    if (!s->dirty_bitmap && (eflags & 2)) {
        st |= BLOCK_STATUS_ZERO;
    }
    if (st) {
        st |= BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
    }
    return st;
}
