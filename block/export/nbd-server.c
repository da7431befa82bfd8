/*
 * nbd-server.c - the NBD server object (nbd.h): listening sockets,
 * the TLS context, the connections and the table of NBD exports by
 * name.
 *
 * Invariants:
 *  - at most one server is current; a stopped server stays allocated
 *    (not current) until its last connection and export are gone, since
 *    both point at it;
 *  - while max-connections is reached the listening sockets are not
 *    watched, so further clients wait in the kernel's backlog;
 *  - the unix socket file a server created is removed when it stops.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "block/export/nbd-int.h"

static NbdServer *current;

NbdServer *nbd_server_current(void)
{
    return current;
}

bool nbd_server_running(void)
{
    return current != NULL;
}

int nbd_server_connections(void)
{
    return current ? (int)current->n_conns : 0;
}

NbdExport *nbd_server_find_export(NbdServer *s, const char *name)
{
    for (NbdExport *e = s->exports; e; e = e->next) {
        if (!e->shutting_down && strcmp(e->name, name) == 0) {
            return e;
        }
    }
    return NULL;
}

static void accept_cb(void *opaque, uint32_t events);

static void watch_listeners(NbdServer *s, bool on)
{
    if (s->listening == on) {
        return;
    }
    for (int i = 0; i < s->nfds; i++) {
        if (on) {
            loop_add_fd(s->loop, s->fds[i], EPOLLIN, accept_cb, s);
        } else {
            loop_del_fd(s->loop, s->fds[i]);
        }
    }
    s->listening = on;
}

static bool below_max(NbdServer *s)
{
    return s->max_conns == 0 || s->n_conns < s->max_conns;
}

static void accept_cb(void *opaque, uint32_t events)
{
    NbdServer *s = opaque;
    for (int i = 0; i < s->nfds && s->listening; i++) {
        while (below_max(s)) {
            int fd = sockaddr_accept(s->fds[i]);
            if (fd < 0) {
                break;
            }
            nbd_conn_new(s, fd);
        }
    }
    if (!below_max(s)) {
        watch_listeners(s, false);
    }
}

static void server_free(NbdServer *s)
{
    watch_listeners(s, false);
    for (int i = 0; i < s->nfds; i++) {
        close(s->fds[i]);
    }
    if (s->has_addr) {
        if (s->addr.type == SOCKADDR_UNIX && s->nfds) {
            sockaddr_unlink(&s->addr);
        }
        sockaddr_free(&s->addr);
    }
    SSL_CTX_free(s->tls);
    if (current == s) {
        current = NULL;
    }
    free(s);
}

static void maybe_free(NbdServer *s)
{
    if (s->stopping && !s->conns && !s->exports) {
        server_free(s);
    }
}

void nbd_server_conn_gone(NbdServer *s, NbdConn *c)
{
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    s->n_conns--;
    if (!s->stopping && below_max(s) && s->nfds) {
        watch_listeners(s, true);
    }
    maybe_free(s);
}

void nbd_server_export_gone(NbdServer *s, NbdExport *e)
{
    for (NbdExport **p = &s->exports; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    maybe_free(s);
}

static int server_new(const char *tls_creds, NbdServer **out, Error *err)
{
    if (current) {
        return error_setf(err, EEXIST, "NBD server already running");
    }
    Loop *l = block_export_main_loop();
    if (!l) {
        return error_setf(err, EINVAL, "no event loop for the NBD server");
    }
    NbdServer *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    s->loop = l;
    s->handshake_ms = NBD_HANDSHAKE_MS;
    if (tls_creds) {
        s->tls = nbd_tls_server_ctx(tls_creds, err);
        if (!s->tls) {
            free(s);
            return -(err && err->code ? err->code : EINVAL);
        }
    }
    *out = s;
    return 0;
}

int nbd_server_start_unbound(const char *tls_creds, Error *err)
{
    NbdServer *s = NULL;
    int ret = server_new(tls_creds, &s, err);
    if (ret == 0) {
        current = s;
    }
    return ret;
}

int nbd_server_start(KVList *opts, Error *err)
{
    NbdServer *s = NULL;
    const char *tls = kvlist_get(opts, "tls-creds");
    uint64_t max = 0;
    if (kvlist_get(opts, "tls-authz")) {
        return error_setf(err, ENOTSUP, "tls-authz is not supported: use "
                          "verify-peer=on credentials and a CA that only "
                          "signs allowed clients");
    }
    uint64_t hs = NBD_HANDSHAKE_MS / 1000;
    int ret = kvlist_get_uint(opts, "max-connections", 0, &max, err);
    if (ret == 0) {
        ret = kvlist_get_uint(opts, "handshake-max-seconds", hs, &hs, err);
    }
    if (ret < 0) {
        return ret;
    }
    if (hs > 86400) {
        return error_setf(err, EINVAL, "handshake-max-seconds must be at "
                          "most 86400");
    }
    if (max > 65535) {
        return error_setf(err, EINVAL, "max-connections must be at most "
                          "65535");
    }
    ret = server_new(tls, &s, err);
    if (ret < 0) {
        return ret;
    }
    s->max_conns = (unsigned)max;
    s->handshake_ms = hs * 1000;
    ret = sockaddr_parse(&s->addr, opts, "addr", err);
    if (ret < 0) {
        server_free(s);
        return ret;
    }
    s->has_addr = true;
    ret = sockaddr_listen(&s->addr, s->fds, NBD_MAX_LISTEN, err);
    if (ret < 0) {
        server_free(s);
        return ret;
    }
    s->nfds = ret;
    watch_listeners(s, true);
    current = s;
    return 0;
}

int nbd_server_adopt(int fd, Error *err)
{
    if (!current) {
        close(fd);
        return error_setf(err, ENOENT, "NBD server not running");
    }
    if (!nbd_conn_new(current, fd)) {
        return error_setf(err, ENOMEM, "cannot serve a connection");
    }
    return 0;
}

int nbd_server_stop(Error *err)
{
    NbdServer *s = current;
    if (!s) {
        return error_setf(err, ENOENT, "NBD server not running");
    }
    current = NULL;
    watch_listeners(s, false);
    for (int i = 0; i < s->nfds; i++) {
        close(s->fds[i]);
    }
    if (s->has_addr && s->addr.type == SOCKADDR_UNIX && s->nfds) {
        sockaddr_unlink(&s->addr);
    }
    s->nfds = 0;
    /* Exports go the regular way (block-export-del, hard); clients
     * still negotiating are dropped now. */
    for (NbdExport *e = s->exports; e; e = e->next) {
        if (!e->be->shutting_down) {
            Error ignored = { 0 };
            block_export_del(e->be->id, true, &ignored);
        }
    }
    NbdConn *c = s->conns;
    while (c) {
        if (c->exp || c->closed) {
            c = c->next;
            continue;
        }
        nbd_conn_ref(c);
        nbd_conn_close(c, true);
        NbdConn *next = c->next;
        nbd_conn_unref(c);    /* may free c */
        c = next;
    }
    /* Set last, so that the connections closed above cannot free s
     * under this loop; exports and bound connections free it later. */
    s->stopping = true;
    maybe_free(s);
    return 0;
}
