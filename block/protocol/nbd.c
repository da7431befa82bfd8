/*
 * nbd.c - the protocol driver for NBD exports, on libnbd: every image
 * command works against any NBD server.  This file holds the names and
 * options, connecting, and the driver table; nbd-client-io.c the
 * request engine (thread model: PARALLEL, libnbd's handle being
 * thread-safe; see there).  Built as the loadable module imgtool-nbd.so
 * (block/core/modules.c), since libnbd brings GnuTLS and p11-kit: some
 * 3 MiB of resident memory every other command would pay.
 *
 * Names, as QEMU takes them:
 *   nbd://HOST[:PORT]/EXPORT, nbd+tcp://..., nbd+unix:///EXPORT?socket=P,
 *   nbds://... and nbds+unix://... (TLS required), and the legacy
 *   nbd:HOST:PORT[:exportname=E] and nbd:unix:PATH[:exportname=E];
 *   or options (--image-opts, json:): driver=nbd,
 *   server.type=unix|inet, server.path=P | server.host=H,server.port=N,
 *   export=E, tls-creds=ID (a tls-creds-x509/psk object with
 *   endpoint=client), x-dirty-bitmap=CONTEXT, and imgtool's
 *   x-connections=N (N connections when the server offers multi-conn).
 *
 * x-dirty-bitmap=qemu:dirty-bitmap:NAME (or any context the server
 * offers) replaces base:allocation as the source of block status, with
 * QEMU's meaning: a range whose flags have bit 0 set (dirty) has no
 * DATA, a clean one has DATA.  So `imgtool map` lists dirty ranges as
 * "data": false, exactly as `qemu-img map` does with that option, and a
 * backup reads the ranges block status calls not-data.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/tlscreds.h"
#include "block/protocol/nbd-client.h"

#define DEFAULT_PORT "10809"

typedef struct Target {
    bool is_unix;
    char *path;                /* unix */
    char *host, *port;         /* tcp */
    char *export;
    bool tls;                  /* nbds: TLS required */
} Target;

static void target_free(Target *t)
{
    free(t->path);
    free(t->host);
    free(t->port);
    free(t->export);
}

static bool nbd_owns_filename(const char *f)
{
    return strncmp(f, "nbd:", 4) == 0 || strncmp(f, "nbds:", 5) == 0 ||
           strncmp(f, "nbd+", 4) == 0 || strncmp(f, "nbds+", 5) == 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* %XX decoding of a URL part (n bytes of s). */
static char *unescape(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    for (size_t i = 0; out && i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
            hexval(s[i + 2]) >= 0) {
            *o++ = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    if (out) {
        *o = '\0';
    }
    return out;
}

static int parse_legacy(const char *f, Target *t, Error *err)
{
    /* nbd:unix:PATH[:exportname=E] or nbd:HOST:PORT[:exportname=E] */
    const char *rest = f + 4;
    const char *ex = strstr(rest, ":exportname=");
    size_t len = ex ? (size_t)(ex - rest) : strlen(rest);
    t->export = strdup(ex ? ex + strlen(":exportname=") : "");
    if (strncmp(rest, "unix:", 5) == 0) {
        t->is_unix = true;
        t->path = strndup(rest + 5, len - 5);
    } else {
        const char *colon = memrchr(rest, ':', len);
        if (!colon) {
            return error_setf(err, EINVAL, "'%s': expected nbd:HOST:PORT or "
                              "nbd:unix:PATH", f);
        }
        t->host = strndup(rest, (size_t)(colon - rest));
        t->port = strndup(colon + 1, len - (size_t)(colon - rest) - 1);
    }
    return 0;
}

static int parse_url(const char *f, Target *t, Error *err)
{
    const char *sep = strstr(f, "://");
    if (!sep) {
        return parse_legacy(f, t, err);
    }
    size_t slen = (size_t)(sep - f);
    if (!strncmp(f, "nbd", slen) || !strncmp(f, "nbd+tcp", slen)) {
        t->is_unix = false;
    } else if (!strncmp(f, "nbds", slen) || !strncmp(f, "nbds+tcp", slen)) {
        t->tls = true;
    } else if (!strncmp(f, "nbd+unix", slen)) {
        t->is_unix = true;
    } else if (!strncmp(f, "nbds+unix", slen)) {
        t->is_unix = t->tls = true;
    } else {
        return error_setf(err, EINVAL, "'%s': unknown NBD URL scheme", f);
    }
    const char *auth = sep + 3;
    size_t alen = strcspn(auth, "/?");
    const char *path = auth + alen;
    size_t plen = strcspn(path, "?");
    const char *query = path[plen] == '?' ? path + plen + 1 : NULL;
    t->export = unescape(*path == '/' ? path + 1 : path,
                         *path == '/' ? plen - 1 : plen);
    if (t->is_unix) {
        if (alen) {
            return error_setf(err, EINVAL, "'%s': a unix socket URL has no "
                              "host", f);
        }
        if (!query || strncmp(query, "socket=", 7) != 0 ||
            strchr(query, '&')) {
            return error_setf(err, EINVAL, "'%s': expected "
                              "nbd+unix:///EXPORT?socket=PATH", f);
        }
        t->path = unescape(query + 7, strlen(query + 7));
        return 0;
    }
    if (query) {
        return error_setf(err, EINVAL, "'%s': a TCP URL takes no query", f);
    }
    if (alen == 0) {
        return error_setf(err, EINVAL, "'%s': no host", f);
    }
    const char *host = auth, *hend = auth + alen, *port = NULL;
    if (*auth == '[') {
        const char *close = memchr(auth, ']', alen);
        if (!close) {
            return error_setf(err, EINVAL, "'%s': bad IPv6 address", f);
        }
        host = auth + 1;
        port = close + 1 < hend && close[1] == ':' ? close + 2 : NULL;
        hend = close;
    } else {
        const char *colon = memchr(auth, ':', alen);
        if (colon) {
            port = colon + 1;
            hend = colon;
        }
    }
    t->host = strndup(host, (size_t)(hend - host));
    t->port = port ? strndup(port, (size_t)(auth + alen - port))
                   : strdup(DEFAULT_PORT);
    return 0;
}

/* The target from server.* options (or QEMU 2's path/host/port). */
static int parse_opts(KVList *o, Target *t, Error *err)
{
    const char *type = kvlist_get(o, "server.type");
    const char *path = kvlist_get(o, "server.path");
    const char *host = kvlist_get(o, "server.host");
    const char *port = kvlist_get(o, "server.port");
    if (!path) {
        path = kvlist_get(o, "path");
    }
    if (!host) {
        host = kvlist_get(o, "host");
    }
    if (!port) {
        port = kvlist_get(o, "port");
    }
    if (!type) {
        type = path ? "unix" : host ? "inet" : NULL;
    }
    if (!type) {
        return error_setf(err, EINVAL, "NBD server address missing");
    }
    if (!strcmp(type, "unix")) {
        if (!path) {
            return error_setf(err, EINVAL, "Parameter 'server.path' is "
                              "missing");
        }
        t->is_unix = true;
        t->path = strdup(path);
    } else if (!strcmp(type, "inet")) {
        if (!host) {
            return error_setf(err, EINVAL, "Parameter 'server.host' is "
                              "missing");
        }
        t->host = strdup(host);
        t->port = strdup(port ? port : DEFAULT_PORT);
    } else {
        return error_setf(err, EINVAL, "Parameter 'server.type' does not "
                          "accept value '%s'", type);
    }
    return 0;
}

/* The node's name when options alone addressed it. */
static char *describe(const Target *t)
{
    char *s = NULL;
    /* QEMU's spelling, so that map and info print the same name. */
    const char *slash = *t->export ? "/" : "";
    int r = t->is_unix
        ? asprintf(&s, "nbd+unix://%s%s?socket=%s", slash, t->export,
                   t->path)
        : asprintf(&s, "nbd://%s:%s%s%s", t->host, t->port, slash,
                   t->export);
    return r < 0 ? NULL : s;
}

static int nbd_fail(Error *err, const char *what, const Target *t)
{
    int e = nbd_get_errno();
    char *d = describe(t);
    error_setf(err, e ? e : EIO, "%s %s: %s", what, d ? d : "NBD server",
               nbd_get_error() ? nbd_get_error() : "failed");
    free(d);
    return -(e ? e : EIO);
}

static int use_tls(struct nbd_handle *h, const char *id, Error *err)
{
    const TlsCreds *c = tls_creds_find(id);
    if (!c) {
        return error_setf(err, ENOENT, "No TLS credentials with id '%s'",
                          id);
    }
    if (c->server) {
        return error_setf(err, EINVAL, "Expecting TLS credentials with a "
                          "client endpoint");
    }
    if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0) {
        return error_setf(err, ENOTSUP, "%s", nbd_get_error());
    }
    if (c->type == TLS_CREDS_X509) {
        if (nbd_set_tls_certificates(h, c->dir) < 0 ||
            nbd_set_tls_verify_peer(h, c->verify_peer) < 0) {
            return error_setf(err, EINVAL, "%s", nbd_get_error());
        }
        return 0;
    }
    char *psk = tls_creds_path(c, "keys.psk");
    int ret = 0;
    /* QEMU's default PSK identity. */
    if (!psk || nbd_set_tls_psk_file(h, psk) < 0 ||
        nbd_set_tls_username(h, c->username ? c->username : "qemu") < 0) {
        ret = error_setf(err, EINVAL, "%s", psk ? nbd_get_error()
                                                : "out of memory");
    }
    free(psk);
    return ret;
}

static struct nbd_handle *connect_one(const Target *t, const char *context,
                                      const char *tls, Error *err)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        error_setf(err, ENOMEM, "%s", nbd_get_error());
        return NULL;
    }
    if (nbd_set_export_name(h, t->export) < 0 ||
        nbd_add_meta_context(h, context) < 0) {
        nbd_fail(err, "Could not set up a connection to", t);
        goto fail;
    }
    if (tls && use_tls(h, tls, err) < 0) {
        goto fail;
    }
    if (!tls && t->tls && nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0) {
        error_setf(err, ENOTSUP, "%s", nbd_get_error());
        goto fail;
    }
    int r = t->is_unix ? nbd_connect_unix(h, t->path)
                       : nbd_connect_tcp(h, t->host, t->port);
    if (r < 0) {
        nbd_fail(err, "Could not connect to", t);
        goto fail;
    }
    return h;
fail:
    nbd_close(h);
    return NULL;
}

static void nbd_close_cb(BlockNode *n)
{
    NbdClientState *s = n->opaque;
    for (int i = 0; i < s->nconns; i++) {
        nbd_client_stop_thread(&s->conns[i]);
        if (s->conns[i].h) {
            nbd_shutdown(s->conns[i].h, 0);
            nbd_close(s->conns[i].h);
        }
    }
    s->nconns = 0;
    free(s->context);
    s->context = NULL;
}

static int nbd_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    NbdClientState *s = n->opaque;
    Target t = { 0 };
    int ret;
    const char *filename = n->filename && *n->filename ? n->filename : NULL;
    if (filename) {
        ret = parse_url(filename, &t, err);
    } else {
        ret = parse_opts(opts, &t, err);
    }
    const char *export = kvlist_get(opts, "export");
    const char *tls = kvlist_get(opts, "tls-creds");
    const char *tls_host = kvlist_get(opts, "tls-hostname");
    const char *bitmap = kvlist_get(opts, "x-dirty-bitmap");
    uint64_t nconns = 1, dummy;
    if (ret == 0) {
        ret = kvlist_get_uint(opts, "x-connections", 1, &nconns, err);
    }
    /* QEMU's reconnection knobs: a lost server fails requests here. */
    if (ret == 0) {
        ret = kvlist_get_uint(opts, "reconnect-delay", 0, &dummy, err);
    }
    if (ret == 0) {
        ret = kvlist_get_uint(opts, "open-timeout", 0, &dummy, err);
    }
    if (ret == 0 && (nconns < 1 || nconns > NBD_CLIENT_MAX_CONNECTIONS)) {
        ret = error_setf(err, EINVAL, "x-connections must be 1 to %d",
                         NBD_CLIENT_MAX_CONNECTIONS);
    }
    if (ret == 0 && tls_host && (t.is_unix || strcmp(tls_host, t.host))) {
        ret = error_setf(err, ENOTSUP, "tls-hostname other than the server's "
                         "host name is not supported");
    }
    if (ret < 0) {
        target_free(&t);
        return ret;
    }
    if (export || !t.export) {
        free(t.export);
        t.export = strdup(export ? export : "");
    }
    if (!t.export || (t.is_unix ? !t.path : !t.host || !t.port)) {
        target_free(&t);
        return error_setf(err, ENOMEM, "out of memory");
    }
    s->context = strdup(bitmap ? bitmap : "base:allocation");
    s->dirty_bitmap = bitmap && strcmp(bitmap, "base:allocation") != 0;
    if (!s->context) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    s->conns[0].h = connect_one(&t, s->context, tls, err);
    if (!s->conns[0].h) {
        ret = -(err && err->code ? err->code : EIO);
        goto out;
    }
    s->nconns = 1;
    struct nbd_handle *h = s->conns[0].h;
    if ((flags & BLOCK_O_RDWR) && nbd_is_read_only(h) > 0) {
        ret = error_setf(err, EACCES, "export '%s' is read-only", t.export);
        goto out;
    }
    int64_t size = nbd_get_size(h);
    if (size < 0) {
        ret = nbd_fail(err, "Could not get the size of", &t);
        goto out;
    }
    s->size = (uint64_t)size;
    if (bitmap && nbd_can_meta_context(h, bitmap) <= 0) {
        ret = error_setf(err, ENOENT, "the server does not offer context "
                         "'%s'", bitmap);
        goto out;
    }
    int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    if (min > 1 && min <= 65536 && !(min & (min - 1))) {
        n->request_alignment = (uint32_t)min;
    }
    s->max_request = max > 0 && max < NBD_CLIENT_MAX_REQUEST
                         ? (uint64_t)max & ~(uint64_t)(n->request_alignment - 1)
                         : NBD_CLIENT_MAX_REQUEST;
    if (nconns > 1 && nbd_can_multi_conn(h) > 0) {
        for (uint64_t i = 1; i < nconns; i++) {
            s->conns[i].h = connect_one(&t, s->context, tls, err);
            if (!s->conns[i].h) {
                ret = -(err && err->code ? err->code : EIO);
                goto out;
            }
            s->nconns++;
        }
    }
    for (int i = 0; i < s->nconns; i++) {
        ret = nbd_client_start_thread(&s->conns[i], err);
        if (ret < 0) {
            goto out;
        }
    }
    if (!filename) {
        char *d = describe(&t);
        if (d) {
            free(n->filename);
            n->filename = d;
        }
    }
    ret = 0;
out:
    if (ret < 0) {
        nbd_close_cb(n);
    }
    target_free(&t);
    return ret;
}

static int64_t nbd_get_length_cb(BlockNode *n)
{
    NbdClientState *s = n->opaque;
    return (int64_t)s->size;
}

static struct nbd_handle *h0(BlockNode *n)
{
    return ((NbdClientState *)n->opaque)->conns[0].h;
}

static bool can_write_cb(BlockNode *n)
{
    return !n->read_only && nbd_is_read_only(h0(n)) == 0;
}

static bool can_flush_cb(BlockNode *n)
{
    return nbd_can_flush(h0(n)) > 0;
}

static bool can_fua_cb(BlockNode *n)
{
    return nbd_can_fua(h0(n)) > 0;
}

static bool can_discard_cb(BlockNode *n)
{
    return nbd_can_trim(h0(n)) > 0;
}

static bool can_zero_cb(BlockNode *n)
{
    return nbd_can_zero(h0(n)) > 0;
}

static bool can_fast_zero_cb(BlockNode *n)
{
    return nbd_can_fast_zero(h0(n)) > 0;
}

static bool can_multi_conn_cb(BlockNode *n)
{
    return nbd_can_multi_conn(h0(n)) > 0;
}

static bool can_extents_cb(BlockNode *n)
{
    NbdClientState *s = n->opaque;
    return nbd_can_meta_context(h0(n), s->context) > 0;
}

const BlockDriver nbd_driver = {
    .api_version = BLOCK_DRIVER_API_VERSION,
    .name = "nbd",
    .kind = BLOCK_DRIVER_PROTOCOL,
    .thread_model = BLOCK_THREAD_PARALLEL,
    .instance_size = sizeof(NbdClientState),
    .owns_filename = nbd_owns_filename,
    .open = nbd_open,
    .close = nbd_close_cb,
    .can_write = can_write_cb,
    .can_flush = can_flush_cb,
    .can_fua = can_fua_cb,
    .can_discard = can_discard_cb,
    .can_zero = can_zero_cb,
    .can_fast_zero = can_fast_zero_cb,
    .can_multi_conn = can_multi_conn_cb,
    .can_extents = can_extents_cb,
    .preadv = nbd_client_preadv,
    .pwritev = nbd_client_pwritev,
    .flush = nbd_client_flush,
    .discard = nbd_client_discard,
    .write_zeroes = nbd_client_write_zeroes,
    .block_status = nbd_client_block_status,
    .submit = nbd_client_submit,
    .get_length = nbd_get_length_cb,
};

BLOCK_DRIVER_MODULE(nbd_driver);
