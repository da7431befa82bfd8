/*
 * nbd-request.c - the transmission phase: parsing requests, running
 * them through the block layer's asynchronous API, and replying (simple
 * replies, or structured ones once negotiated).
 *
 * Invariants:
 *  - a request is counted in c->in_flight (and its buffer in
 *    in_flight_bytes) from its header until its reply has been sent or
 *    dropped; nbd_request_release ends it and holds the connection's
 *    reference for it;
 *  - a request that fails validation never reaches the block layer; a
 *    refused write's data is still read (and dropped) so the stream
 *    stays in step;
 *  - replies go out in completion order, each whole (the output queue
 *    never interleaves two replies' bytes).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/nbd-int.h"

struct NbdReq {
    NbdConn *conn;
    LoopWork work;
    uint64_t handle;
    uint64_t offset;
    uint32_t len;
    uint16_t type;
    uint16_t flags;
    int ret;                   /* 0 or -errno from the block layer */
    uint32_t error;            /* NBD error decided before running */
    uint8_t *buf;
    size_t buf_len;            /* counted in in_flight_bytes */
    size_t got;                /* payload bytes read */
    struct iovec iov;
    BlockIOV qiov;
    bool then_flush;           /* TRIM with FUA */
    NbdExtents *ext;
    int n_ext;
};

static void reply(NbdReq *r);

/* ------------------------------------------------------------------ */
/* Ending a request                                                    */

void nbd_request_release(NbdReq *r)
{
    NbdConn *c = r->conn;
    c->in_flight--;
    c->in_flight_bytes -= r->buf_len;
    free(r->buf);
    nbd_extents_free(r->ext, r->n_ext);
    free(r);
    if (c->paused && c->in_flight < NBD_MAX_IN_FLIGHT &&
        c->in_flight_bytes < NBD_MAX_IN_FLIGHT_BYTES) {
        c->paused = false;
        nbd_conn_kick(c);
    }
    nbd_conn_unref(c);
}

static void release_cb(void *opaque)
{
    nbd_request_release(opaque);
}

void nbd_request_abandon_current(NbdConn *c)
{
    if (c->cur) {
        NbdReq *r = c->cur;
        c->cur = NULL;
        /* Its connection reference goes with it; the caller holds one. */
        nbd_request_release(r);
    }
}

/* ------------------------------------------------------------------ */
/* Replies                                                             */

static void put_simple(uint8_t *h, uint32_t error, uint64_t handle)
{
    nbd_put32(h, NBD_SIMPLE_REPLY_MAGIC);
    nbd_put32(h + 4, error);
    nbd_put64(h + 8, handle);
}

static void put_chunk(uint8_t *h, uint16_t flags, uint16_t type,
                      uint64_t handle, uint32_t len)
{
    nbd_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
    nbd_put16(h + 4, flags);
    nbd_put16(h + 6, type);
    nbd_put64(h + 8, handle);
    nbd_put32(h + 16, len);
}

static NbdOut *out_for(NbdReq *r, bool last)
{
    NbdOut *o = nbd_out_new();
    if (o && last) {
        o->release = release_cb;
        o->opaque = r;
    }
    return o;
}

static void reply_error(NbdReq *r, uint32_t err)
{
    NbdConn *c = r->conn;
    NbdOut *o = out_for(r, true);
    if (!o) {
        nbd_conn_close(c, true);
        nbd_request_release(r);
        return;
    }
    if (!c->structured) {
        put_simple(o->hdr, err, r->handle);
        o->iov[0] = (struct iovec){ o->hdr, NBD_SIMPLE_REPLY_SIZE };
        o->niov = 1;
    } else {
        const char *msg = strerror(r->ret ? -r->ret : (int)err);
        size_t ml = strlen(msg);
        char *m = malloc(ml);
        if (m) {
            memcpy(m, msg, ml);
        } else {
            ml = 0;
        }
        put_chunk(o->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                  r->handle, (uint32_t)(6 + ml));
        nbd_put32(o->hdr + 20, err);
        nbd_put16(o->hdr + 24, (uint16_t)ml);
        o->iov[0] = (struct iovec){ o->hdr, 26 };
        o->niov = 1;
        if (ml) {
            o->owned = m;
            o->iov[1] = (struct iovec){ m, ml };
            o->niov = 2;
        }
    }
    nbd_conn_queue(c, o);
}

static void reply_ok(NbdReq *r)
{
    NbdConn *c = r->conn;
    NbdOut *o = out_for(r, true);
    if (!o) {
        nbd_conn_close(c, true);
        nbd_request_release(r);
        return;
    }
    bool data = r->type == NBD_CMD_READ;
    if (!c->structured) {
        put_simple(o->hdr, 0, r->handle);
        o->iov[0] = (struct iovec){ o->hdr, NBD_SIMPLE_REPLY_SIZE };
    } else if (data) {
        put_chunk(o->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                  r->handle, 8 + r->len);
        nbd_put64(o->hdr + 20, r->offset);
        o->iov[0] = (struct iovec){ o->hdr, 28 };
    } else {
        put_chunk(o->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                  r->handle, 0);
        o->iov[0] = (struct iovec){ o->hdr, NBD_STRUCTURED_REPLY_SIZE };
    }
    o->niov = 1;
    if (data) {
        o->iov[1] = (struct iovec){ r->buf, r->len };
        o->niov = 2;
    }
    nbd_conn_queue(c, o);
}

static void reply_status(NbdReq *r)
{
    NbdConn *c = r->conn;
    for (int i = 0; i < r->n_ext; i++) {
        bool last = i == r->n_ext - 1;
        NbdOut *o = out_for(r, last);
        if (!o) {
            /* The piece that would release r was never queued. */
            nbd_conn_close(c, true);
            nbd_request_release(r);
            return;
        }
        NbdExtents *x = &r->ext[i];
        put_chunk(o->hdr, last ? NBD_REPLY_FLAG_DONE : 0,
                  NBD_REPLY_TYPE_BLOCK_STATUS, r->handle,
                  (uint32_t)x->wire_len);
        o->iov[0] = (struct iovec){ o->hdr, NBD_STRUCTURED_REPLY_SIZE };
        o->iov[1] = (struct iovec){ x->wire, x->wire_len };
        o->owned = x->wire;      /* the piece frees it once sent */
        x->wire = NULL;
        o->niov = 2;
        nbd_conn_queue(c, o);
    }
}

/* On the loop: the block layer is done with r. */
static void reply(NbdReq *r)
{
    NbdConn *c = r->conn;
    if (c->closed) {
        nbd_request_release(r);
        return;
    }
    if (r->error || r->ret < 0) {
        reply_error(r, r->error ? r->error : nbd_errno(r->ret));
    } else if (r->type == NBD_CMD_BLOCK_STATUS) {
        reply_status(r);
    } else {
        reply_ok(r);
    }
}

static void reply_work(void *opaque)
{
    reply(opaque);
}

static void flush_done(void *opaque, int ret)
{
    NbdReq *r = opaque;
    r->ret = ret;
    r->work.fn = reply_work;
    r->work.opaque = r;
    loop_post(r->conn->loop, &r->work);
}

/* A library thread: hand the result to the loop. */
static void io_done(void *opaque, int ret)
{
    NbdReq *r = opaque;
    if (ret == 0 && r->then_flush) {
        r->then_flush = false;
        block_aio_flush(r->conn->exp->be->node, flush_done, r);
        return;
    }
    flush_done(r, ret);
}

/* ------------------------------------------------------------------ */
/* Block status on a worker thread                                     */

static void status_work(void *opaque)
{
    NbdReq *r = opaque;
    NbdConn *c = r->conn;
    r->ext = calloc((size_t)c->n_ctx, sizeof(*r->ext));
    if (!r->ext) {
        r->ret = -ENOMEM;
        return;
    }
    r->n_ext = c->n_ctx;
    r->ret = nbd_status_compute(c->exp, c->ctx, c->n_ctx, r->offset, r->len,
                                r->flags & NBD_CMD_FLAG_REQ_ONE, r->ext);
}

/* ------------------------------------------------------------------ */
/* Running a request                                                   */

static void run(NbdReq *r)
{
    NbdConn *c = r->conn;
    BlockExport *be = c->exp->be;
    BlockNode *n = be->node;
    int fua = (r->flags & NBD_CMD_FLAG_FUA) || be->writethrough
                  ? BLOCK_REQ_FUA : 0;
    if (r->error) {
        reply(r);
        return;
    }
    switch (r->type) {
    case NBD_CMD_READ:
    case NBD_CMD_CACHE:
        blockiov_init_buf(&r->qiov, &r->iov, r->buf, r->buf_len);
        block_aio_preadv(n, r->offset, &r->qiov, 0, io_done, r);
        break;
    case NBD_CMD_WRITE:
        blockiov_init_buf(&r->qiov, &r->iov, r->buf, r->len);
        block_aio_pwritev(n, r->offset, &r->qiov, fua, io_done, r);
        break;
    case NBD_CMD_FLUSH:
        block_aio_flush(n, io_done, r);
        break;
    case NBD_CMD_TRIM:
        r->then_flush = fua != 0;
        block_aio_discard(n, r->offset, r->len, io_done, r);
        break;
    case NBD_CMD_WRITE_ZEROES: {
        int f = fua;
        if (!(r->flags & NBD_CMD_FLAG_NO_HOLE)) {
            f |= BLOCK_REQ_MAY_UNMAP;
        }
        if (r->flags & NBD_CMD_FLAG_FAST_ZERO) {
            f |= BLOCK_REQ_NO_FALLBACK;
        }
        block_aio_write_zeroes(n, r->offset, r->len, f, io_done, r);
        break;
    }
    case NBD_CMD_BLOCK_STATUS:
        if (loop_run_blocking(c->loop, status_work, reply_work, r) < 0) {
            r->ret = -ENOMEM;
            reply(r);
        }
        break;
    default:
        r->error = NBD_EINVAL;
        reply(r);
    }
}

/* The checks every request passes before it runs; returns an NBD error
 * or 0. */
static uint32_t validate(NbdConn *c, NbdReq *r)
{
    NbdExport *e = c->exp;
    uint16_t allowed = 0;
    bool write = false, needs_len = true;
    switch (r->type) {
    case NBD_CMD_READ:
        allowed = c->structured ? NBD_CMD_FLAG_DF : 0;
        break;
    case NBD_CMD_WRITE:
        allowed = NBD_CMD_FLAG_FUA;
        write = true;
        break;
    case NBD_CMD_FLUSH:
        needs_len = false;
        break;
    case NBD_CMD_TRIM:
        allowed = NBD_CMD_FLAG_FUA;
        write = true;
        break;
    case NBD_CMD_WRITE_ZEROES:
        allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
                  NBD_CMD_FLAG_FAST_ZERO;
        write = true;
        break;
    case NBD_CMD_CACHE:
        break;
    case NBD_CMD_BLOCK_STATUS:
        allowed = NBD_CMD_FLAG_REQ_ONE;
        if (!c->structured || c->n_ctx == 0) {
            return NBD_EINVAL;
        }
        break;
    default:
        return NBD_EINVAL;
    }
    if (r->flags & ~allowed) {
        return NBD_EINVAL;
    }
    if (write && !e->be->writable) {
        return NBD_EPERM;
    }
    if (e->shutting_down) {
        return NBD_ESHUTDOWN;
    }
    if (!needs_len) {
        return 0;
    }
    if (r->len == 0) {
        return NBD_EINVAL;
    }
    if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) &&
        r->len > NBD_MAX_BUFFER) {
        return NBD_EINVAL;    /* above the maximum block size we sent */
    }
    if (r->offset > e->size || r->len > e->size - r->offset) {
        return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES
                   ? NBD_ENOSPC : NBD_EINVAL;
    }
    return 0;
}

static NbdStep start_request(NbdConn *c, const uint8_t *p)
{
    if (nbd_get32(p) != NBD_REQUEST_MAGIC) {
        return NBD_STEP_CLOSE;   /* cannot find the next request */
    }
    NbdReq *r = calloc(1, sizeof(*r));
    if (!r) {
        return NBD_STEP_CLOSE;
    }
    r->conn = c;
    r->flags = nbd_get16(p + 4);
    r->type = nbd_get16(p + 6);
    r->handle = nbd_get64(p + 8);
    r->offset = nbd_get64(p + 16);
    r->len = nbd_get32(p + 24);
    nbd_conn_consume(c, NBD_REQUEST_SIZE);

    if (r->type == NBD_CMD_DISC) {
        free(r);
        c->disc = true;
        c->state = NBD_ST_DONE;
        if (c->in_flight == 0 && !c->out_head) {
            return NBD_STEP_CLOSE;
        }
        return NBD_STEP_WAIT;
    }
    nbd_conn_ref(c);
    c->in_flight++;
    r->error = validate(c, r);

    if (r->type == NBD_CMD_WRITE) {
        if (r->error) {
            c->cur = r;
            c->state = NBD_ST_REQ_SKIP;
            return NBD_STEP_MORE;
        }
        r->buf = malloc(r->len);
        if (!r->buf) {
            r->error = NBD_ENOMEM;
            c->cur = r;
            c->state = NBD_ST_REQ_SKIP;
            return NBD_STEP_MORE;
        }
        r->buf_len = r->len;
        c->in_flight_bytes += r->buf_len;
        c->cur = r;
        c->state = NBD_ST_REQ_PAYLOAD;
        return NBD_STEP_MORE;
    }
    if (!r->error && (r->type == NBD_CMD_READ || r->type == NBD_CMD_CACHE)) {
        size_t len = r->len < NBD_MAX_BUFFER ? r->len : NBD_MAX_BUFFER;
        r->buf = malloc(len);
        if (!r->buf) {
            r->error = NBD_ENOMEM;
        } else {
            r->buf_len = len;
            c->in_flight_bytes += len;
        }
    }
    run(r);
    return NBD_STEP_MORE;
}

/* Takes what the connection has buffered of r's payload, at most what is
 * left of it: into r->buf, or dropped when skip (a refused write's data).
 * False when nothing is buffered (the caller reads the socket). */
static bool take_buffered(NbdConn *c, NbdReq *r, bool skip)
{
    size_t have = nbd_conn_buffered(c);
    if (!have) {
        return false;
    }
    size_t want = r->len - r->got;
    size_t n = have < want ? have : want;
    if (!skip && n) {
        memcpy(r->buf + r->got, nbd_conn_peek(c, n), n);
    }
    nbd_conn_consume(c, n);
    r->got += n;
    return true;
}

/* When r's whole payload is in, the connection goes on to the next
 * request header and r is the caller's to run or answer. */
static bool payload_complete(NbdConn *c, NbdReq *r)
{
    if (r->got < r->len) {
        return false;
    }
    c->cur = NULL;
    c->state = NBD_ST_REQ_HEADER;
    return true;
}

NbdStep nbd_request_step(NbdConn *c)
{
    switch (c->state) {
    case NBD_ST_REQ_HEADER: {
        if (c->in_flight >= NBD_MAX_IN_FLIGHT ||
            c->in_flight_bytes >= NBD_MAX_IN_FLIGHT_BYTES) {
            c->paused = true;
            return NBD_STEP_WAIT;
        }
        const uint8_t *p = nbd_conn_peek(c, NBD_REQUEST_SIZE);
        if (!p) {
            return NBD_STEP_FILL;
        }
        return start_request(c, p);
    }
    case NBD_ST_REQ_PAYLOAD: {
        NbdReq *r = c->cur;
        if (!take_buffered(c, r, false)) {
            ssize_t got = nbd_conn_recv(c, r->buf + r->got, r->len - r->got);
            if (got == -EAGAIN) {
                return NBD_STEP_WAIT;
            }
            if (got <= 0) {
                return NBD_STEP_FILL;   /* fill sees the EOF or error */
            }
            r->got += (size_t)got;
        }
        if (!payload_complete(c, r)) {
            return NBD_STEP_MORE;
        }
        run(r);
        return NBD_STEP_MORE;
    }
    case NBD_ST_REQ_SKIP: {
        NbdReq *r = c->cur;
        take_buffered(c, r, true);
        if (!payload_complete(c, r)) {
            return NBD_STEP_FILL;
        }
        reply(r);
        return NBD_STEP_MORE;
    }
    default:
        return NBD_STEP_WAIT;
    }
}
