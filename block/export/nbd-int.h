/*
 * nbd-int.h - what the files of the NBD server share.  Nothing outside
 * block/export/nbd-*.c includes this.
 *
 *   nbd-server.c     the server object: listening sockets, TLS context,
 *                    connections, the name table of NBD exports
 *   nbd-export.c     the "nbd" export type (BlockExportDriver)
 *   nbd-conn.c       one connection's I/O: input buffer, output queue,
 *                    plain or TLS transport, closing
 *   nbd-negotiate.c  the handshake and option haggling
 *   nbd-request.c    the transmission phase: requests and replies
 *   nbd-status.c     block status for the metadata contexts
 *   nbd-tls.c        OpenSSL contexts from tls-creds objects
 *
 * Everything here runs on the server's loop thread, except the block
 * layer's completion callbacks (which only post work back) and the
 * block status computation (a worker thread, touching only its own
 * request).
 *
 * Bounds a client cannot push past: NBD_MAX_BUFFER bytes per read or
 * write, NBD_MAX_IN_FLIGHT requests and NBD_MAX_IN_FLIGHT_BYTES of
 * buffers per connection (reading stops until replies are sent),
 * NBD_MAX_OPTION bytes of option data held (longer options are
 * skipped and refused), NBD_MAX_EXTENTS extents per context and reply,
 * the server's handshake limit (handshake-max-seconds, default
 * NBD_HANDSHAKE_MS) to finish negotiating.
 */
#ifndef IMGTOOL_EXPORT_NBD_INT_H
#define IMGTOOL_EXPORT_NBD_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <openssl/ssl.h>

#include "block/export/export.h"
#include "block/export/loop.h"
#include "block/export/nbd-proto.h"
#include "block/export/nbd.h"
#include "block/export/sockaddr.h"

#define NBD_MAX_BUFFER          (32u << 20)
#define NBD_MAX_IN_FLIGHT       64
#define NBD_MAX_IN_FLIGHT_BYTES (64u << 20)
#define NBD_MAX_OPTION          (64u << 10)
#define NBD_MAX_EXTENTS         65536
#define NBD_HANDSHAKE_MS        10000
#define NBD_PREFERRED_BLOCK     4096
#define NBD_MAX_LISTEN          8

typedef struct NbdServer NbdServer;
typedef struct NbdExport NbdExport;
typedef struct NbdConn NbdConn;
typedef struct NbdReq NbdReq;

/* ---- big-endian helpers ---- */
static inline void nbd_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void nbd_put32(uint8_t *p, uint32_t v)
{
    nbd_put16(p, (uint16_t)(v >> 16));
    nbd_put16(p + 2, (uint16_t)v);
}
static inline void nbd_put64(uint8_t *p, uint64_t v)
{
    nbd_put32(p, (uint32_t)(v >> 32));
    nbd_put32(p + 4, (uint32_t)v);
}
static inline uint16_t nbd_get16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t nbd_get32(const uint8_t *p)
{
    return ((uint32_t)nbd_get16(p) << 16) | nbd_get16(p + 2);
}
static inline uint64_t nbd_get64(const uint8_t *p)
{
    return ((uint64_t)nbd_get32(p) << 32) | nbd_get32(p + 4);
}

/* ---- the server (nbd-server.c) ---- */

struct NbdServer {
    Loop *loop;
    SockAddr addr;
    bool has_addr;
    int fds[NBD_MAX_LISTEN];
    int nfds;
    bool listening;            /* fds are watched (below max-connections) */
    SSL_CTX *tls;              /* NULL: plain */
    unsigned max_conns;        /* 0: no limit */
    uint64_t handshake_ms;     /* 0: no limit */
    unsigned n_conns;
    NbdConn *conns;
    NbdExport *exports;
    bool stopping;             /* nbd-server-stop: freed when empty */
};

/* The running server, or NULL. */
NbdServer *nbd_server_current(void);
/* Export by name (not shutting down), or NULL. */
NbdExport *nbd_server_find_export(NbdServer *s, const char *name);
/* A connection's last reference went (nbd-conn.c calls this). */
void nbd_server_conn_gone(NbdServer *s, NbdConn *c);
/* An export left the server; frees a stopping server that is empty. */
void nbd_server_export_gone(NbdServer *s, NbdExport *e);

/* ---- the export (nbd-export.c) ---- */

typedef struct NbdBitmap {
    char *name;                /* as the bitmap is named in its node */
    BlockNode *node;           /* the node holding it (no reference:
                                  within the export node's graph) */
} NbdBitmap;

struct NbdExport {
    BlockExport *be;
    NbdServer *server;
    char *name;
    char *description;
    NbdBitmap *bitmaps;
    int n_bitmaps;
    bool allocation_depth;
    bool multi_conn;
    uint64_t size;
    unsigned long serial;      /* tells a re-added name from the old one */
    int n_conns;               /* connections bound to it, until freed */
    bool shutting_down;
    NbdExport *next;           /* the server's list */
};

/* Transmission flags for a connection (DF needs structured replies). */
uint16_t nbd_export_tflags(const NbdExport *e, bool structured);
/* Connection bookkeeping; the last one gone completes a shutdown. */
void nbd_export_conn_add(NbdExport *e, NbdConn *c);
void nbd_export_conn_del(NbdExport *e);

/* Metadata context ids: base:allocation, qemu:allocation-depth, and
 * qemu:dirty-bitmap:NAME for the export's bitmap i. */
#define NBD_CTX_BASE     0u
#define NBD_CTX_DEPTH    1u
#define NBD_CTX_BITMAP0  2u

/* ---- a connection (nbd-conn.c) ---- */

typedef enum {
    NBD_ST_FLAGS,          /* waiting for the client's flags */
    NBD_ST_OPT_HEADER,
    NBD_ST_OPT_DATA,
    NBD_ST_OPT_SKIP,       /* dropping an option too long to hold */
    NBD_ST_TLS_START,      /* STARTTLS acknowledged: flush, then TLS */
    NBD_ST_TLS_HANDSHAKE,
    NBD_ST_REQ_HEADER,
    NBD_ST_REQ_PAYLOAD,    /* reading a write's data */
    NBD_ST_REQ_SKIP,       /* dropping a refused write's data */
    NBD_ST_DONE,           /* reads nothing more */
} NbdState;

/* One piece of output: header bytes (inline) and optional data
 * (borrowed, or owned and freed); release(opaque) runs when the piece
 * has been sent or dropped. */
typedef struct NbdOut {
    struct NbdOut *next;
    struct iovec iov[2];
    int niov;
    size_t sent;
    size_t total;
    void *owned;
    void (*release)(void *opaque);
    void *opaque;
    uint8_t hdr[32];
} NbdOut;

struct NbdConn {
    NbdServer *server;
    NbdExport *exp;            /* after GO / EXPORT_NAME */
    Loop *loop;
    int fd;
    SSL *ssl;
    NbdState state;
    uint32_t events;           /* what the loop watches now */
    int refs;                  /* 1 while open + 1 per request */
    bool closed;               /* socket gone; waiting for requests */

    /* input: unread bytes are in[in_pos, in_len) */
    uint8_t *in;
    size_t in_pos, in_len, in_cap;
    bool eof;

    /* output queue */
    NbdOut *out_head, *out_tail;
    LoopWork flush_work;
    bool flush_pending;
    bool ssl_write_wants_read;
    bool ssl_read_wants_write;

    /* negotiation */
    bool fixed, no_zeroes, structured, tls_done;
    uint32_t opt, opt_len;
    uint64_t skip;             /* bytes still to drop */
    LoopTimer *timer;
    /* selected metadata contexts and the export they were chosen for */
    uint32_t *ctx;
    int n_ctx;
    char *ctx_export;
    unsigned long ctx_serial;

    /* transmission */
    NbdReq *cur;               /* the write whose data is being read */
    unsigned in_flight;
    uint64_t in_flight_bytes;
    bool paused;               /* over a bound: not reading requests */
    bool disc;                 /* NBD_CMD_DISC: close when idle */

    NbdConn *next, *prev;      /* the server's list */
    bool bound;                /* counted in exp->n_conns */
};

/* Greets the client and starts watching fd (the connection owns it). */
NbdConn *nbd_conn_new(NbdServer *s, int fd);
/* Closes the socket now (hard) or once the replies in flight are sent;
 * the connection is freed when its last request ends. */
void nbd_conn_close(NbdConn *c, bool hard);
void nbd_conn_ref(NbdConn *c);
void nbd_conn_unref(NbdConn *c);

/* n contiguous unread bytes, or NULL when fewer are buffered (room for
 * n is made).  consume drops them. */
const uint8_t *nbd_conn_peek(NbdConn *c, size_t n);
void nbd_conn_consume(NbdConn *c, size_t n);
size_t nbd_conn_buffered(const NbdConn *c);
/* Reads straight into buf (payloads): bytes, 0 at EOF, -EAGAIN, -errno. */
ssize_t nbd_conn_recv(NbdConn *c, void *buf, size_t len);

/* Queues output (the connection flushes at the end of the round). */
void nbd_conn_queue(NbdConn *c, NbdOut *o);
/* A piece of copied bytes. */
int nbd_conn_queue_copy(NbdConn *c, const void *a, size_t alen,
                        const void *b, size_t blen);
NbdOut *nbd_out_new(void);
/* Re-reads the state and tells the loop what to watch. */
void nbd_conn_update_events(NbdConn *c);
/* Runs the input state machine again (after a pause ends). */
void nbd_conn_kick(NbdConn *c);

/* Input steps: what the state machine does with what is buffered. */
typedef enum {
    NBD_STEP_MORE,      /* progress: run again */
    NBD_STEP_FILL,      /* needs more bytes in the input buffer */
    NBD_STEP_WAIT,      /* wait for an event (socket, completion) */
    NBD_STEP_CLOSE,     /* protocol violation or done: close hard */
} NbdStep;

/* ---- negotiation (nbd-negotiate.c) ---- */
void nbd_negotiate_start(NbdConn *c);
NbdStep nbd_negotiate_step(NbdConn *c);
/* The TLS handshake advanced (nbd-conn.c drives SSL_accept). */
void nbd_negotiate_tls_done(NbdConn *c);

/* ---- transmission (nbd-request.c) ---- */
NbdStep nbd_request_step(NbdConn *c);
/* A request's reply has left: bookkeeping and resuming input. */
void nbd_request_release(NbdReq *r);
/* Drops a write being received (the connection is closing). */
void nbd_request_abandon_current(NbdConn *c);

/* ---- block status (nbd-status.c) ---- */
typedef struct NbdExtents {
    uint32_t ctx_id;
    uint32_t n;
    uint8_t *wire;             /* 4-byte id then (length, flags) pairs */
    size_t wire_len;
} NbdExtents;
/* Fills r's extents for every selected context (a worker thread). */
int nbd_status_compute(NbdExport *e, const uint32_t *ctx, int n_ctx,
                       uint64_t off, uint32_t len, bool one,
                       NbdExtents *out);
void nbd_extents_free(NbdExtents *x, int n);
/* Context names: the name of id for export e (NULL: no such id). */
const char *nbd_context_name(const NbdExport *e, uint32_t id, char *buf,
                             size_t len);

/* ---- TLS (nbd-tls.c) ---- */
SSL_CTX *nbd_tls_server_ctx(const char *creds_id, Error *err);
/* Drives SSL_accept: 1 done, 0 in progress (events set), -1 failed. */
int nbd_tls_accept(NbdConn *c);
/* SSL I/O in the transport's terms: bytes, 0 at EOF, -EAGAIN, -EIO. */
ssize_t nbd_tls_recv(NbdConn *c, void *buf, size_t len);
ssize_t nbd_tls_send(NbdConn *c, const struct iovec *iov, int niov);

/* Errno values to NBD's. */
uint32_t nbd_errno(int err);

#endif
