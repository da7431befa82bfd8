/*
 * nbd-negotiate.c - the fixed newstyle handshake and option haggling,
 * from the NBD protocol specification: EXPORT_NAME, ABORT, LIST,
 * STARTTLS, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and
 * SET_META_CONTEXT; anything else is answered NBD_REP_ERR_UNSUP.
 *
 * Invariants:
 *  - an option is parsed only once all of its data is buffered, and
 *    its data is held only up to NBD_MAX_OPTION bytes: a longer one is
 *    read and dropped, then refused with NBD_REP_ERR_TOO_BIG;
 *  - every length inside an option is checked against the option's
 *    length before it is used (NBD_REP_ERR_INVALID otherwise);
 *  - with TLS configured, nothing but STARTTLS and ABORT is served
 *    before the handshake (NBD_REP_ERR_TLS_REQD), and bytes the client
 *    sent after STARTTLS before the handshake close the connection
 *    (they would be plaintext smuggled into the TLS session).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/nbd-int.h"

#define KNOWN_CLIENT_FLAGS (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)

void nbd_negotiate_start(NbdConn *c)
{
    uint8_t g[18];
    nbd_put64(g, NBD_MAGIC);
    nbd_put64(g + 8, NBD_OPTS_MAGIC);
    nbd_put16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    nbd_conn_queue_copy(c, g, sizeof(g), NULL, 0);
    c->state = NBD_ST_FLAGS;
}

/* ------------------------------------------------------------------ */
/* Replies                                                             */

static void rep(NbdConn *c, uint32_t type, const void *data, size_t len)
{
    uint8_t h[20];
    nbd_put64(h, NBD_REP_MAGIC);
    nbd_put32(h + 8, c->opt);
    nbd_put32(h + 12, type);
    nbd_put32(h + 16, (uint32_t)len);
    nbd_conn_queue_copy(c, h, sizeof(h), data, len);
}

static void rep_err(NbdConn *c, uint32_t type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rep_err(NbdConn *c, uint32_t type, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    }
    rep(c, type, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
}

static void rep_info_export(NbdConn *c, NbdExport *e)
{
    uint8_t b[12];
    nbd_put16(b, NBD_INFO_EXPORT);
    nbd_put64(b + 2, e->size);
    nbd_put16(b + 10, nbd_export_tflags(e, c->structured));
    rep(c, NBD_REP_INFO, b, sizeof(b));
}

static void rep_info_string(NbdConn *c, uint16_t type, const char *s)
{
    size_t n = strlen(s);
    uint8_t *b = malloc(n + 2);
    if (!b) {
        return;
    }
    nbd_put16(b, type);
    memcpy(b + 2, s, n);
    rep(c, NBD_REP_INFO, b, n + 2);
    free(b);
}

static void rep_info_block_size(NbdConn *c)
{
    uint8_t b[14];
    nbd_put16(b, NBD_INFO_BLOCK_SIZE);
    /* The block layer bounces unaligned requests: any size works, 4 KiB
     * works best, NBD_MAX_BUFFER is what one request may carry. */
    nbd_put32(b + 2, 1);
    nbd_put32(b + 6, NBD_PREFERRED_BLOCK);
    nbd_put32(b + 10, NBD_MAX_BUFFER);
    rep(c, NBD_REP_INFO, b, sizeof(b));
}

/* ------------------------------------------------------------------ */
/* Entering transmission                                               */

static void enter_transmission(NbdConn *c, NbdExport *e)
{
    c->exp = e;
    nbd_export_conn_add(e, c);
    c->bound = true;
    if (c->ctx_export && (strcmp(c->ctx_export, e->name) != 0 ||
                          c->ctx_serial != e->serial)) {
        /* Contexts were chosen for another export: none apply. */
        c->n_ctx = 0;
    }
    if (c->timer) {
        loop_timer_disarm(c->timer);
    }
    c->state = NBD_ST_REQ_HEADER;
}

/* NBD_OPT_EXPORT_NAME: no reply on failure, only a close. */
static NbdStep opt_export_name(NbdConn *c, const uint8_t *d, uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    if (len > NBD_MAX_STRING) {
        return NBD_STEP_CLOSE;
    }
    memcpy(name, d, len);
    name[len] = '\0';
    NbdExport *e = nbd_server_find_export(c->server, name);
    if (!e || (c->server->tls && !c->tls_done)) {
        return NBD_STEP_CLOSE;
    }
    uint8_t b[10 + 124] = { 0 };
    nbd_put64(b, e->size);
    nbd_put16(b + 8, nbd_export_tflags(e, c->structured));
    nbd_conn_queue_copy(c, b, 10, c->no_zeroes ? NULL : b + 10,
                        c->no_zeroes ? 0 : 124);
    enter_transmission(c, e);
    return NBD_STEP_MORE;
}

/* NBD_OPT_INFO and NBD_OPT_GO. */
static NbdStep opt_info_go(NbdConn *c, const uint8_t *d, uint32_t len)
{
    if (len < 6) {
        rep_err(c, NBD_REP_ERR_INVALID, "option too short");
        return NBD_STEP_MORE;
    }
    uint32_t nlen = nbd_get32(d);
    if (nlen > len - 6) {
        rep_err(c, NBD_REP_ERR_INVALID, "name length beyond the option");
        return NBD_STEP_MORE;
    }
    uint16_t nreq = nbd_get16(d + 4 + nlen);
    if ((uint64_t)nreq * 2 != len - 6 - nlen) {
        rep_err(c, NBD_REP_ERR_INVALID, "information requests do not "
                "match the option length");
        return NBD_STEP_MORE;
    }
    if (nlen > NBD_MAX_STRING) {
        rep_err(c, NBD_REP_ERR_INVALID, "export name too long");
        return NBD_STEP_MORE;
    }
    char name[NBD_MAX_STRING + 1];
    memcpy(name, d + 4, nlen);
    name[nlen] = '\0';
    NbdExport *e = nbd_server_find_export(c->server, name);
    if (!e) {
        rep_err(c, NBD_REP_ERR_UNKNOWN, "export '%s' not present", name);
        return NBD_STEP_MORE;
    }
    bool want_name = false, want_desc = false;
    for (uint16_t i = 0; i < nreq; i++) {
        uint16_t t = nbd_get16(d + 6 + nlen + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
    }
    if (want_name) {
        rep_info_string(c, NBD_INFO_NAME, e->name);
    }
    if (want_desc && e->description) {
        rep_info_string(c, NBD_INFO_DESCRIPTION, e->description);
    }
    /* Block sizes whether asked or not: the spec lets a server send
     * information it was not asked for, and ours ask nothing odd. */
    rep_info_block_size(c);
    rep_info_export(c, e);
    rep(c, NBD_REP_ACK, NULL, 0);
    if (c->opt == NBD_OPT_GO) {
        enter_transmission(c, e);
    }
    return NBD_STEP_MORE;
}

static void opt_list(NbdConn *c, uint32_t len)
{
    if (len != 0) {
        rep_err(c, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
        return;
    }
    for (NbdExport *e = c->server->exports; e; e = e->next) {
        if (e->shutting_down) {
            continue;
        }
        size_t nl = strlen(e->name);
        size_t dl = e->description ? strlen(e->description) : 0;
        uint8_t *b = malloc(4 + nl + dl);
        if (!b) {
            continue;
        }
        nbd_put32(b, (uint32_t)nl);
        memcpy(b + 4, e->name, nl);
        if (dl) {
            memcpy(b + 4 + nl, e->description, dl);
        }
        rep(c, NBD_REP_SERVER, b, 4 + nl + dl);
        free(b);
    }
    rep(c, NBD_REP_ACK, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* Metadata contexts                                                   */

static void rep_context(NbdConn *c, NbdExport *e, uint32_t id)
{
    char name[NBD_MAX_STRING + 64];
    if (!nbd_context_name(e, id, name, sizeof(name))) {
        return;
    }
    size_t n = strlen(name);
    uint8_t *b = malloc(4 + n);
    if (!b) {
        return;
    }
    nbd_put32(b, id);
    memcpy(b + 4, name, n);
    rep(c, NBD_REP_META_CONTEXT, b, 4 + n);
    free(b);
}

static bool ctx_has(const uint32_t *v, int n, uint32_t id)
{
    for (int i = 0; i < n; i++) {
        if (v[i] == id) {
            return true;
        }
    }
    return false;
}

/* Adds to *v the ids query q selects: an exact name, or (list only) a
 * namespace or leaf prefix such as "qemu:" or "qemu:dirty-bitmap:". */
static void match_query(NbdExport *e, const char *q, bool list, uint32_t *v,
                        int *n)
{
    uint32_t total = NBD_CTX_BITMAP0 + (uint32_t)e->n_bitmaps;
    for (uint32_t id = 0; id < total; id++) {
        char name[NBD_MAX_STRING + 64];
        if (!nbd_context_name(e, id, name, sizeof(name))) {
            continue;
        }
        bool hit = strcmp(q, name) == 0;
        if (!hit && list) {
            size_t ql = strlen(q);
            /* "qemu:" (a namespace) and "qemu:dirty-bitmap:" (a leaf
             * prefix) list what they contain; "base:" lists
             * base:allocation. */
            hit = ql > 0 && q[ql - 1] == ':' && strncmp(q, name, ql) == 0;
        }
        if (hit && !ctx_has(v, *n, id)) {
            v[(*n)++] = id;
        }
    }
}

static NbdStep opt_meta_context(NbdConn *c, const uint8_t *d, uint32_t len)
{
    bool list = c->opt == NBD_OPT_LIST_META_CONTEXT;
    if (!list && !c->structured) {
        rep_err(c, NBD_REP_ERR_INVALID, "structured replies were not "
                "negotiated");
        return NBD_STEP_MORE;
    }
    if (len < 8) {
        rep_err(c, NBD_REP_ERR_INVALID, "option too short");
        return NBD_STEP_MORE;
    }
    uint32_t nlen = nbd_get32(d);
    if (nlen > len - 8 || nlen > NBD_MAX_STRING) {
        rep_err(c, NBD_REP_ERR_INVALID, "bad export name length");
        return NBD_STEP_MORE;
    }
    char name[NBD_MAX_STRING + 1];
    memcpy(name, d + 4, nlen);
    name[nlen] = '\0';
    uint32_t nq = nbd_get32(d + 4 + nlen);
    /* Check every query's framing before acting on any. */
    size_t pos = 8 + nlen;
    for (uint32_t i = 0; i < nq; i++) {
        if (len - pos < 4 || nbd_get32(d + pos) > len - pos - 4) {
            rep_err(c, NBD_REP_ERR_INVALID, "query %u beyond the option", i);
            return NBD_STEP_MORE;
        }
        pos += 4 + nbd_get32(d + pos);
    }
    if (pos != len) {
        rep_err(c, NBD_REP_ERR_INVALID, "trailing bytes after the queries");
        return NBD_STEP_MORE;
    }
    NbdExport *e = nbd_server_find_export(c->server, name);
    if (!e) {
        rep_err(c, NBD_REP_ERR_UNKNOWN, "export '%s' not present", name);
        return NBD_STEP_MORE;
    }
    int total = (int)NBD_CTX_BITMAP0 + e->n_bitmaps;
    uint32_t *sel = calloc((size_t)total, sizeof(*sel));
    int n = 0;
    if (!sel) {
        rep_err(c, NBD_REP_ERR_INVALID, "out of memory");
        return NBD_STEP_MORE;
    }
    if (nq == 0 && list) {
        for (int id = 0; id < total; id++) {
            char buf[NBD_MAX_STRING + 64];
            if (nbd_context_name(e, (uint32_t)id, buf, sizeof(buf))) {
                sel[n++] = (uint32_t)id;
            }
        }
    }
    pos = 8 + nlen;
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ql = nbd_get32(d + pos);
        if (ql <= NBD_MAX_STRING) {
            char q[NBD_MAX_STRING + 1];
            memcpy(q, d + pos + 4, ql);
            q[ql] = '\0';
            if (strlen(q) == ql) {
                match_query(e, q, list, sel, &n);
            }
        }
        pos += 4 + ql;
    }
    for (int i = 0; i < n; i++) {
        rep_context(c, e, sel[i]);
    }
    if (list) {
        free(sel);
    } else {
        free(c->ctx);
        free(c->ctx_export);
        c->ctx = sel;
        c->n_ctx = n;
        c->ctx_export = strdup(e->name);
        c->ctx_serial = e->serial;
        if (!c->ctx_export) {
            c->n_ctx = 0;
        }
    }
    rep(c, NBD_REP_ACK, NULL, 0);
    return NBD_STEP_MORE;
}

/* ------------------------------------------------------------------ */
/* The option loop                                                     */

static NbdStep handle_option(NbdConn *c, const uint8_t *d, uint32_t len)
{
    bool tls_needed = c->server->tls && !c->tls_done;
    if (tls_needed && c->opt != NBD_OPT_STARTTLS &&
        c->opt != NBD_OPT_ABORT) {
        if (c->opt == NBD_OPT_EXPORT_NAME) {
            return NBD_STEP_CLOSE;
        }
        rep_err(c, NBD_REP_ERR_TLS_REQD, "TLS is required before option %u",
                c->opt);
        return NBD_STEP_MORE;
    }
    switch (c->opt) {
    case NBD_OPT_EXPORT_NAME:
        return opt_export_name(c, d, len);
    case NBD_OPT_ABORT:
        rep(c, NBD_REP_ACK, NULL, 0);
        c->state = NBD_ST_DONE;
        c->disc = true;
        return NBD_STEP_WAIT;
    case NBD_OPT_LIST:
        opt_list(c, len);
        return NBD_STEP_MORE;
    case NBD_OPT_STARTTLS:
        if (len != 0) {
            rep_err(c, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
        } else if (!c->server->tls) {
            rep_err(c, NBD_REP_ERR_POLICY, "TLS is not configured");
        } else if (c->tls_done) {
            rep_err(c, NBD_REP_ERR_INVALID, "TLS is already on");
        } else {
            rep(c, NBD_REP_ACK, NULL, 0);
            if (nbd_conn_buffered(c)) {
                return NBD_STEP_CLOSE;
            }
            c->state = NBD_ST_TLS_START;
            return NBD_STEP_WAIT;
        }
        return NBD_STEP_MORE;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return opt_info_go(c, d, len);
    case NBD_OPT_STRUCTURED_REPLY:
        if (len != 0) {
            rep_err(c, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes "
                    "no data");
        } else if (c->structured) {
            rep_err(c, NBD_REP_ERR_INVALID, "structured replies are already "
                    "on");
        } else {
            c->structured = true;
            rep(c, NBD_REP_ACK, NULL, 0);
        }
        return NBD_STEP_MORE;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return opt_meta_context(c, d, len);
    default:
        rep_err(c, NBD_REP_ERR_UNSUP, "option %u is not supported", c->opt);
        return NBD_STEP_MORE;
    }
}

NbdStep nbd_negotiate_step(NbdConn *c)
{
    const uint8_t *p;
    switch (c->state) {
    case NBD_ST_FLAGS:
        if (!(p = nbd_conn_peek(c, 4))) {
            return NBD_STEP_FILL;
        }
        uint32_t flags = nbd_get32(p);
        nbd_conn_consume(c, 4);
        if (flags & ~KNOWN_CLIENT_FLAGS) {
            return NBD_STEP_CLOSE;
        }
        c->fixed = flags & NBD_FLAG_C_FIXED_NEWSTYLE;
        c->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
        c->state = NBD_ST_OPT_HEADER;
        return NBD_STEP_MORE;
    case NBD_ST_OPT_HEADER:
        if (!(p = nbd_conn_peek(c, 16))) {
            return NBD_STEP_FILL;
        }
        if (nbd_get64(p) != NBD_OPTS_MAGIC) {
            return NBD_STEP_CLOSE;
        }
        c->opt = nbd_get32(p + 8);
        c->opt_len = nbd_get32(p + 12);
        nbd_conn_consume(c, 16);
        if (c->opt_len > NBD_MAX_OPTION) {
            if (c->opt == NBD_OPT_EXPORT_NAME) {
                return NBD_STEP_CLOSE;
            }
            c->skip = c->opt_len;
            c->state = NBD_ST_OPT_SKIP;
        } else {
            c->state = NBD_ST_OPT_DATA;
        }
        return NBD_STEP_MORE;
    case NBD_ST_OPT_DATA:
        if (!(p = nbd_conn_peek(c, c->opt_len))) {
            return nbd_conn_buffered(c) < c->opt_len ? NBD_STEP_FILL
                                                     : NBD_STEP_CLOSE;
        }
        c->state = NBD_ST_OPT_HEADER;
        /* Options before fixed newstyle was agreed: only EXPORT_NAME
         * can be answered (no replies exist for the others). */
        if (!c->fixed && c->opt != NBD_OPT_EXPORT_NAME) {
            return NBD_STEP_CLOSE;
        }
        {
            /* The handler may queue replies but reads only p. */
            NbdStep s = handle_option(c, p, c->opt_len);
            nbd_conn_consume(c, c->opt_len);
            return s;
        }
    case NBD_ST_OPT_SKIP: {
        size_t have = nbd_conn_buffered(c);
        size_t n = have < c->skip ? have : (size_t)c->skip;
        nbd_conn_consume(c, n);
        c->skip -= n;
        if (c->skip) {
            return NBD_STEP_FILL;
        }
        c->state = NBD_ST_OPT_HEADER;
        if (!c->fixed) {
            return NBD_STEP_CLOSE;
        }
        rep_err(c, NBD_REP_ERR_TOO_BIG, "option of %u bytes is too long",
                c->opt_len);
        return NBD_STEP_MORE;
    }
    default:
        return NBD_STEP_WAIT;
    }
}

void nbd_negotiate_tls_done(NbdConn *c)
{
    c->tls_done = true;
    c->state = NBD_ST_OPT_HEADER;
    /* Everything negotiated in the clear is forgotten (the spec). */
    c->structured = false;
    c->n_ctx = 0;
    nbd_conn_update_events(c);
}
