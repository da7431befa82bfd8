/*
 * nbd-conn.c - one NBD connection's I/O on the server's loop: the input
 * buffer the negotiation and request parsers read from, the output
 * queue of replies, plain or TLS transport, and closing.
 *
 * Invariants:
 *  - all of it runs on the loop thread;
 *  - refs counts one for the open socket and one per request not yet
 *    released; the connection is freed at 0, so a completion that
 *    arrives after the client went away still finds its connection;
 *  - after closed is set the fd is gone: nothing is read or written,
 *    queued output is dropped (each piece's release still runs);
 *  - input is parsed only while the state machine asks for it; a
 *    connection over its in-flight bounds (paused) does not watch
 *    EPOLLIN, so a client that sends faster than the storage completes
 *    is pushed back through TCP.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "block/export/nbd-int.h"

#define IN_BUF_MIN (64u << 10)
#define MAX_IOV 64

static void conn_input(NbdConn *c);
static void conn_flush(NbdConn *c);

uint32_t nbd_errno(int err)
{
    switch (err < 0 ? -err : err) {
    case 0:
        return 0;
    case EPERM:
    case EROFS:
    case EACCES:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

/* ------------------------------------------------------------------ */
/* Transport                                                           */

ssize_t nbd_conn_recv(NbdConn *c, void *buf, size_t len)
{
    if (c->closed) {
        return -EPIPE;
    }
    if (c->ssl && c->tls_done) {
        return nbd_tls_recv(c, buf, len);
    }
    for (;;) {
        ssize_t r = recv(c->fd, buf, len, 0);
        if (r >= 0) {
            return r;
        }
        if (errno == EINTR) {
            continue;
        }
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static ssize_t conn_send(NbdConn *c, const struct iovec *iov, int niov)
{
    if (c->ssl && c->tls_done) {
        return nbd_tls_send(c, iov, niov);
    }
    struct msghdr m = { .msg_iov = (struct iovec *)iov,
                        .msg_iovlen = (size_t)niov };
    for (;;) {
        ssize_t r = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (r >= 0) {
            return r;
        }
        if (errno == EINTR) {
            continue;
        }
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

/* ------------------------------------------------------------------ */
/* Events                                                              */

void nbd_conn_update_events(NbdConn *c)
{
    if (c->closed) {
        return;
    }
    uint32_t want = 0;
    bool reading = c->state != NBD_ST_DONE && c->state != NBD_ST_TLS_START &&
                   !c->paused && !c->eof;
    if (c->state == NBD_ST_TLS_HANDSHAKE) {
        reading = false;   /* nbd_tls_accept sets what it waits for */
        want = c->events & (EPOLLIN | EPOLLOUT);
    }
    if (reading || c->ssl_write_wants_read) {
        want |= EPOLLIN;
    }
    if (c->out_head || c->ssl_read_wants_write) {
        want |= EPOLLOUT;
    }
    if (want != c->events) {
        loop_mod_fd(c->loop, c->fd, want);
        c->events = want;
    }
}

static void conn_event(void *opaque, uint32_t events)
{
    NbdConn *c = opaque;
    nbd_conn_ref(c);
    if (c->state == NBD_ST_TLS_HANDSHAKE) {
        int r = nbd_tls_accept(c);
        if (r < 0) {
            nbd_conn_close(c, true);
        } else if (r > 0) {
            nbd_negotiate_tls_done(c);
            conn_input(c);
        }
        nbd_conn_unref(c);
        return;
    }
    if (c->paused && events & (EPOLLHUP | EPOLLERR)) {
        /* Gone for good while we were not reading: epoll reports a hang
         * up whether asked or not, so waiting would spin.  Nothing more
         * can reach the client; the requests in flight end unanswered. */
        nbd_conn_close(c, true);
        nbd_conn_unref(c);
        return;
    }
    if (events & EPOLLOUT || (events & EPOLLIN && c->ssl_write_wants_read)) {
        conn_flush(c);
    }
    if (!c->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR) ||
                       (events & EPOLLOUT && c->ssl_read_wants_write))) {
        conn_input(c);
    }
    if (!c->closed) {
        nbd_conn_update_events(c);
    }
    nbd_conn_unref(c);
}

/* ------------------------------------------------------------------ */
/* Input                                                               */

const uint8_t *nbd_conn_peek(NbdConn *c, size_t n)
{
    if (c->in_len - c->in_pos >= n) {
        return c->in + c->in_pos;
    }
    /* Make room for n bytes at the buffer's start. */
    if (c->in_pos) {
        memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
        c->in_len -= c->in_pos;
        c->in_pos = 0;
    }
    if (n > c->in_cap) {
        uint8_t *b = realloc(c->in, n);
        if (b) {
            c->in = b;
            c->in_cap = n;
        }
    }
    return NULL;
}

void nbd_conn_consume(NbdConn *c, size_t n)
{
    c->in_pos += n;
    if (c->in_pos == c->in_len) {
        c->in_pos = c->in_len = 0;
        /* An option made it grow: give the memory back. */
        if (c->in_cap > IN_BUF_MIN) {
            uint8_t *b = realloc(c->in, IN_BUF_MIN);
            if (b) {
                c->in = b;
                c->in_cap = IN_BUF_MIN;
            }
        }
    }
}

size_t nbd_conn_buffered(const NbdConn *c)
{
    return c->in_len - c->in_pos;
}

/* Reads what the socket has into the input buffer. */
static ssize_t fill(NbdConn *c)
{
    if (c->in_pos && c->in_len == c->in_cap) {
        memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
        c->in_len -= c->in_pos;
        c->in_pos = 0;
    }
    if (c->in_len == c->in_cap) {
        return -ENOBUFS;   /* peek could not grow it */
    }
    ssize_t r = nbd_conn_recv(c, c->in + c->in_len, c->in_cap - c->in_len);
    if (r > 0) {
        c->in_len += (size_t)r;
    }
    return r;
}

static NbdStep step(NbdConn *c)
{
    switch (c->state) {
    case NBD_ST_FLAGS:
    case NBD_ST_OPT_HEADER:
    case NBD_ST_OPT_DATA:
    case NBD_ST_OPT_SKIP:
        return nbd_negotiate_step(c);
    case NBD_ST_REQ_HEADER:
    case NBD_ST_REQ_PAYLOAD:
    case NBD_ST_REQ_SKIP:
        return nbd_request_step(c);
    default:
        return NBD_STEP_WAIT;
    }
}

static void conn_input(NbdConn *c)
{
    while (!c->closed && !c->paused && !c->eof) {
        NbdStep s = step(c);
        if (s == NBD_STEP_MORE) {
            continue;
        }
        if (s == NBD_STEP_CLOSE) {
            nbd_conn_close(c, true);
            return;
        }
        if (s == NBD_STEP_WAIT) {
            break;
        }
        ssize_t r = fill(c);
        if (r == -EAGAIN) {
            break;
        }
        if (r == 0) {
            /* The client is gone (or half-closed): finish what is in
             * flight, answer nothing more. */
            c->eof = true;
            nbd_request_abandon_current(c);
            if (c->state < NBD_ST_REQ_HEADER || c->in_flight == 0) {
                nbd_conn_close(c, true);
                return;
            }
            nbd_conn_close(c, false);
            return;
        }
        if (r < 0) {
            nbd_conn_close(c, true);
            return;
        }
    }
    nbd_conn_update_events(c);
}

void nbd_conn_kick(NbdConn *c)
{
    if (!c->closed) {
        conn_input(c);
        if (!c->closed) {
            nbd_conn_update_events(c);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

NbdOut *nbd_out_new(void)
{
    return calloc(1, sizeof(NbdOut));
}

static void out_release(NbdOut *o)
{
    free(o->owned);
    if (o->release) {
        o->release(o->opaque);
    }
    free(o);
}

static void flush_cb(void *opaque)
{
    NbdConn *c = opaque;
    c->flush_pending = false;
    conn_flush(c);
    if (!c->closed) {
        nbd_conn_update_events(c);
    }
    nbd_conn_unref(c);
}

void nbd_conn_queue(NbdConn *c, NbdOut *o)
{
    o->next = NULL;
    o->total = 0;
    for (int i = 0; i < o->niov; i++) {
        o->total += o->iov[i].iov_len;
    }
    if (c->closed) {
        out_release(o);
        return;
    }
    if (c->out_tail) {
        c->out_tail->next = o;
    } else {
        c->out_head = o;
    }
    c->out_tail = o;
    /* Send once per loop round, after every completion of the round has
     * queued its reply. */
    if (!c->flush_pending) {
        c->flush_pending = true;
        nbd_conn_ref(c);
        c->flush_work.fn = flush_cb;
        c->flush_work.opaque = c;
        loop_defer(c->loop, &c->flush_work);
    }
}

int nbd_conn_queue_copy(NbdConn *c, const void *a, size_t alen,
                        const void *b, size_t blen)
{
    NbdOut *o = nbd_out_new();
    void *data = blen ? malloc(blen) : NULL;
    if (!o || alen > sizeof(o->hdr) || (blen && !data)) {
        free(o);
        free(data);
        return -ENOMEM;
    }
    memcpy(o->hdr, a, alen);
    o->iov[0].iov_base = o->hdr;
    o->iov[0].iov_len = alen;
    o->niov = 1;
    if (blen) {
        memcpy(data, b, blen);
        o->owned = data;
        o->iov[1].iov_base = data;
        o->iov[1].iov_len = blen;
        o->niov = 2;
    }
    nbd_conn_queue(c, o);
    return 0;
}

static void conn_flush(NbdConn *c)
{
    while (c->out_head && !c->closed) {
        struct iovec iov[MAX_IOV];
        int n = 0;
        for (NbdOut *o = c->out_head; o && n + 2 <= MAX_IOV; o = o->next) {
            size_t skip = o->sent;
            for (int i = 0; i < o->niov; i++) {
                if (skip >= o->iov[i].iov_len) {
                    skip -= o->iov[i].iov_len;
                    continue;
                }
                iov[n].iov_base = (uint8_t *)o->iov[i].iov_base + skip;
                iov[n].iov_len = o->iov[i].iov_len - skip;
                skip = 0;
                n++;
            }
        }
        ssize_t r = conn_send(c, iov, n);
        if (r == -EAGAIN) {
            break;
        }
        if (r < 0) {
            nbd_conn_close(c, true);
            return;
        }
        size_t done = (size_t)r;
        while (done && c->out_head) {
            NbdOut *o = c->out_head;
            size_t left = o->total - o->sent;
            if (done < left) {
                o->sent += done;
                break;
            }
            done -= left;
            c->out_head = o->next;
            if (!c->out_head) {
                c->out_tail = NULL;
            }
            out_release(o);
        }
    }
    if (c->closed || c->out_head) {
        return;
    }
    if (c->state == NBD_ST_TLS_START) {
        /* The STARTTLS acknowledgement is out: the next byte is TLS. */
        c->state = NBD_ST_TLS_HANDSHAKE;
        c->events = 0;
        int r = nbd_tls_accept(c);
        if (r < 0) {
            nbd_conn_close(c, true);
        } else if (r > 0) {
            nbd_negotiate_tls_done(c);
            conn_input(c);   /* the client may have written already */
        }
        return;
    }
    if ((c->disc || c->eof) && c->in_flight == 0 && c->state != NBD_ST_DONE) {
        nbd_conn_close(c, true);
    } else if (c->state == NBD_ST_DONE && c->in_flight == 0) {
        nbd_conn_close(c, true);
    }
}

/* ------------------------------------------------------------------ */
/* Life                                                                */

static void handshake_timeout(void *opaque)
{
    NbdConn *c = opaque;
    if (c->state < NBD_ST_REQ_HEADER) {
        nbd_conn_close(c, true);
    }
}

NbdConn *nbd_conn_new(NbdServer *s, int fd)
{
    NbdConn *c = calloc(1, sizeof(*c));
    if (!c || !(c->in = malloc(IN_BUF_MIN))) {
        free(c);
        close(fd);
        return NULL;
    }
    c->in_cap = IN_BUF_MIN;
    c->server = s;
    c->loop = s->loop;
    c->fd = fd;
    c->refs = 1;
    c->events = EPOLLIN;
    c->timer = loop_timer_new(c->loop, handshake_timeout, c);
    if (!c->timer || loop_add_fd(c->loop, fd, EPOLLIN, conn_event, c) < 0) {
        loop_timer_free(c->timer);
        free(c->in);
        free(c);
        close(fd);
        return NULL;
    }
    if (s->handshake_ms) {
        loop_timer_arm(c->timer, s->handshake_ms);
    }
    c->next = s->conns;
    if (s->conns) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->n_conns++;
    nbd_negotiate_start(c);
    return c;
}

void nbd_conn_ref(NbdConn *c)
{
    c->refs++;
}

static void conn_free(NbdConn *c)
{
    /* No request is left: each held a reference. */
    if (c->exp && c->bound) {
        nbd_export_conn_del(c->exp);
    }
    nbd_server_conn_gone(c->server, c);
    free(c->ctx);
    free(c->ctx_export);
    free(c->in);
    free(c);
}

void nbd_conn_unref(NbdConn *c)
{
    if (--c->refs == 0) {
        conn_free(c);
    }
}

void nbd_conn_close(NbdConn *c, bool hard)
{
    if (c->closed) {
        return;
    }
    if (!hard) {
        /* Stop reading; the last reply sent closes it (conn_flush). */
        c->disc = true;
        if (c->in_flight == 0 && !c->out_head) {
            hard = true;
        } else {
            nbd_conn_update_events(c);
            return;
        }
    }
    c->closed = true;
    c->state = NBD_ST_DONE;
    nbd_request_abandon_current(c);
    loop_del_fd(c->loop, c->fd);
    if (c->ssl) {
        /* No close_notify: the peer may be gone, and a blocking wait for
         * its answer is what a hostile client would want. */
        SSL_set_quiet_shutdown(c->ssl, 1);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    shutdown(c->fd, SHUT_RDWR);
    close(c->fd);
    c->fd = -1;
    loop_timer_free(c->timer);
    c->timer = NULL;
    while (c->out_head) {
        NbdOut *o = c->out_head;
        c->out_head = o->next;
        out_release(o);
    }
    c->out_tail = NULL;
    nbd_conn_unref(c);
}
