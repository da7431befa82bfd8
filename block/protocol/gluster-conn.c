/*
 * gluster-conn.c - where a file on Gluster is (QEMU's URL and
 * --image-opts syntax) and the process's connections to volumes.
 *
 * URL: gluster[+tcp|+unix|+rdma]://[host[:port]]/volume/path[?socket=PATH]
 * (+unix names the glusterd socket with ?socket= and no host; +rdma is
 * taken as tcp, as QEMU does).  Options: volume, path, debug (0-9),
 * logfile, server.N.type (inet|tcp|unix), server.N.host, server.N.port,
 * server.N.path (the unix socket).
 *
 * Why connections are never finished.  glfs_fini() on this Gluster
 * release takes about ten seconds, during which it waits for timers of
 * its own; every qemu-img call on a gluster:// URL pays that.  imgtool
 * keeps one connection per volume for the life of the process and never
 * calls glfs_fini: when the last node on a volume closes, its
 * descriptors have been fsync'd (the bricks acknowledged every write,
 * write-behind included) and closed (the bricks released their locks),
 * so the connection holds no data of ours.  What remains at exit is
 * sockets and memory, which the kernel takes back: the bricks see the
 * client disconnect, exactly as when any client dies.  A flush is never
 * skipped and an error from it is reported before the command ends; only
 * the ten-second teardown of an idle connection is.  The connection is
 * also reused by the next open on the same volume (a backing file next to
 * its overlay, a pool listing its volumes), which saves the handshake.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/gluster-int.h"

#define URL_FORM "gluster[+tcp|+unix]://[host[:port]]/volume/path"

bool gluster_is_url(const char *filename)
{
    return filename && strncmp(filename, "gluster", 7) == 0 &&
           (strncmp(filename + 7, "://", 3) == 0 ||
            strncmp(filename + 7, "+tcp://", 7) == 0 ||
            strncmp(filename + 7, "+unix://", 8) == 0 ||
            strncmp(filename + 7, "+rdma://", 8) == 0);
}

void gluster_addr_free(GlusterAddr *a)
{
    for (int i = 0; i < a->nservers; i++) {
        free(a->servers[i].host);
    }
    free(a->volume);
    free(a->path);
    free(a->logfile);
    memset(a, 0, sizeof(*a));
}

static int bad_url(Error *err, const char *url, const char *why)
{
    return error_setf(err, EINVAL, "Gluster URL '%s' %s (the form is "
                      URL_FORM ")", url, why);
}

static int parse_port(const char *s, size_t len, int *port)
{
    if (len == 0 || len > 5 || strspn(s, "0123456789") < len) {
        return -EINVAL;
    }
    int v = atoi(s);
    if (v < 1 || v > 65535) {
        return -EINVAL;
    }
    *port = v;
    return 0;
}

static int parse_url(GlusterAddr *a, const char *url, bool need_path,
                     Error *err)
{
    const char *p = strstr(url, "://") + 3;
    bool unix_sock = strncmp(url, "gluster+unix://", 15) == 0;
    const char *query = strchr(p, '?');
    const char *end = query ? query : p + strlen(p);
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *host_end = slash ? slash : end;
    GlusterServer *s = &a->servers[0];
    a->nservers = 1;
    if (unix_sock) {
        if (host_end != p) {
            return bad_url(err, url, "names a host, which +unix does not "
                           "take (gluster+unix:///volume/path?socket=PATH)");
        }
        const char *sock = query && strncmp(query, "?socket=", 8) == 0
                           ? query + 8 : NULL;
        if (!sock || !*sock) {
            return bad_url(err, url, "has no ?socket=PATH for +unix");
        }
        s->unix_socket = true;
        s->host = strdup(sock);
    } else {
        if (query) {
            return bad_url(err, url, "has a query, which only +unix takes");
        }
        const char *hs = p, *he = host_end, *port = NULL;
        if (*p == '[') {
            const char *rb = memchr(p, ']', (size_t)(host_end - p));
            if (!rb) {
                return bad_url(err, url, "has an unterminated [IPv6 "
                               "address]");
            }
            hs = p + 1;
            he = rb;
            if (rb + 1 < host_end) {
                if (rb[1] != ':') {
                    return bad_url(err, url, "has junk after the host");
                }
                port = rb + 2;
            }
        } else {
            const char *colon = memchr(p, ':', (size_t)(host_end - p));
            if (colon) {
                he = colon;
                port = colon + 1;
            }
        }
        s->port = GLUSTER_DEFAULT_PORT;
        if (port && parse_port(port, (size_t)(host_end - port),
                               &s->port) < 0) {
            return bad_url(err, url, "has a bad port");
        }
        /* No host: the local glusterd, as QEMU does. */
        s->host = he > hs ? strndup(hs, (size_t)(he - hs))
                          : strdup("localhost");
    }
    if (!s->host) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (!slash || slash + 1 >= end) {
        return bad_url(err, url, "names no volume");
    }
    const char *vol = slash + 1;
    const char *vslash = memchr(vol, '/', (size_t)(end - vol));
    const char *vend = vslash ? vslash : end;
    a->volume = strndup(vol, (size_t)(vend - vol));
    if (!a->volume) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    const char *path = vslash ? vslash + 1 : end;
    while (path < end && *path == '/') {
        path++;
    }
    if (path >= end) {
        if (need_path) {
            return bad_url(err, url, "names no image path in the volume");
        }
        return 0;
    }
    a->path = strndup(path, (size_t)(end - path));
    return a->path ? 0 : error_setf(err, ENOMEM, "out of memory");
}

/* server.N.* options: the list replaces the URL's server. */
static int parse_servers(GlusterAddr *a, KVList *opts, Error *err)
{
    bool any = false;
    for (int i = 0; i < GLUSTER_MAX_SERVERS; i++) {
        char k[48];
        snprintf(k, sizeof(k), "server.%d.type", i);
        const char *type = kvlist_get(opts, k);
        snprintf(k, sizeof(k), "server.%d.host", i);
        const char *host = kvlist_get(opts, k);
        snprintf(k, sizeof(k), "server.%d.port", i);
        const char *port = kvlist_get(opts, k);
        snprintf(k, sizeof(k), "server.%d.path", i);
        const char *path = kvlist_get(opts, k);
        if (!type && !host && !port && !path) {
            continue;
        }
        if (!any) {
            for (int j = 0; j < a->nservers; j++) {
                free(a->servers[j].host);
            }
            memset(a->servers, 0, sizeof(a->servers));
            a->nservers = 0;
            any = true;
        }
        GlusterServer *s = &a->servers[a->nservers++];
        if (!type || strcmp(type, "inet") == 0 || strcmp(type, "tcp") == 0) {
            if (!host || !*host) {
                return error_setf(err, EINVAL, "Gluster server.%d needs a "
                                  "host", i);
            }
            s->port = GLUSTER_DEFAULT_PORT;
            if (port && parse_port(port, strlen(port), &s->port) < 0) {
                return error_setf(err, EINVAL, "Gluster server.%d.port '%s' "
                                  "is not a port number", i, port);
            }
            s->host = strdup(host);
        } else if (strcmp(type, "unix") == 0) {
            if (!path || !*path) {
                return error_setf(err, EINVAL, "Gluster server.%d of type "
                                  "unix needs path=SOCKET", i);
            }
            s->unix_socket = true;
            s->host = strdup(path);
        } else {
            return error_setf(err, EINVAL, "Gluster server.%d.type '%s' is "
                              "not inet or unix", i, type);
        }
        if (!s->host) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    return 0;
}

int gluster_addr_parse(GlusterAddr *a, const char *url, KVList *opts,
                       bool need_path, Error *err)
{
    memset(a, 0, sizeof(*a));
    a->debug = 4;   /* errors, as QEMU's default */
    int ret = 0;
    if (url && *url) {
        ret = gluster_is_url(url) ? parse_url(a, url, need_path && !opts,
                                              err)
                                  : bad_url(err, url, "is not a Gluster URL");
    }
    const char *v;
    if (ret >= 0 && opts) {
        ret = parse_servers(a, opts, err);
    }
    if (ret >= 0 && opts && (v = kvlist_get(opts, "volume"))) {
        free(a->volume);
        a->volume = strdup(v);
    }
    if (ret >= 0 && opts && (v = kvlist_get(opts, "path"))) {
        free(a->path);
        while (*v == '/') {
            v++;
        }
        a->path = *v ? strdup(v) : NULL;
    }
    if (ret >= 0 && opts && kvlist_has(opts, "debug")) {
        uint64_t d;
        ret = kvlist_get_uint(opts, "debug", 4, &d, err);
        if (ret >= 0 && d > 9) {
            ret = error_setf(err, EINVAL, "Gluster debug level %llu is not "
                             "0 to 9", (unsigned long long)d);
        }
        a->debug = (int)d;
        a->debug_given = true;
    }
    if (ret >= 0 && opts && (v = kvlist_get(opts, "logfile"))) {
        a->logfile = strdup(v);
    }
    if (ret >= 0 && a->nservers == 0) {
        ret = error_setf(err, EINVAL, "Gluster: no server given (a URL "
                         URL_FORM ", or server.0.host=HOST)");
    }
    if (ret >= 0 && (!a->volume || !*a->volume)) {
        ret = error_setf(err, EINVAL, "Gluster: no volume given (the first "
                         "part of the URL's path, or volume=NAME)");
    }
    if (ret >= 0 && need_path && !a->path) {
        ret = error_setf(err, EINVAL, "Gluster: no image path given (after "
                         "the volume in the URL, or path=FILE)");
    }
    if (ret < 0) {
        gluster_addr_free(a);
    }
    return ret;
}

char *gluster_addr_url(const GlusterAddr *a, const char *path)
{
    const GlusterServer *s = &a->servers[0];
    char *out = NULL;
    int n;
    if (!path) {
        path = a->path ? a->path : "";
    }
    if (s->unix_socket) {
        n = asprintf(&out, "gluster+unix:///%s/%s?socket=%s", a->volume,
                     path, s->host);
    } else {
        bool v6 = strchr(s->host, ':') != NULL;
        char port[16] = "";
        if (s->port != GLUSTER_DEFAULT_PORT) {
            snprintf(port, sizeof(port), ":%d", s->port);
        }
        n = asprintf(&out, "gluster://%s%s%s%s/%s/%s", v6 ? "[" : "",
                     s->host, v6 ? "]" : "", port, a->volume, path);
    }
    return n < 0 ? NULL : out;
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */

typedef struct Conn {
    char *key;
    glfs_t *fs;
    int users;
    struct Conn *next;
} Conn;

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static Conn *conns;

typedef struct FailedFs {
    glfs_t *fs;
    struct FailedFs *next;
} FailedFs;
static pthread_mutex_t failed_lock = PTHREAD_MUTEX_INITIALIZER;
static FailedFs *failed;

static char *conn_key(const GlusterAddr *a)
{
    size_t len = strlen(a->volume) + 64 +
                 (a->logfile ? strlen(a->logfile) : 0);
    for (int i = 0; i < a->nservers; i++) {
        len += strlen(a->servers[i].host) + 16;
    }
    char *k = malloc(len), *p = k;
    if (!k) {
        return NULL;
    }
    p += sprintf(p, "%s|%d|%s|%d", a->volume, a->debug,
                 a->logfile ? a->logfile : "", a->debug_given);
    for (int i = 0; i < a->nservers; i++) {
        p += sprintf(p, "|%c%s:%d", a->servers[i].unix_socket ? 'u' : 't',
                     a->servers[i].host, a->servers[i].port);
    }
    return k;
}

static const char *server_name(const GlusterServer *s, char *buf, size_t len)
{
    if (s->unix_socket) {
        snprintf(buf, len, "unix socket %s", s->host);
    } else {
        snprintf(buf, len, "%s:%d", s->host, s->port);
    }
    return buf;
}

static glfs_t *connect_volume(const GlusterAddr *a, Error *err)
{
    char srv[300];
    glfs_t *fs = glfs_new(a->volume);
    if (!fs) {
        error_setf(err, errno ? errno : ENOMEM, "cannot set up a Gluster "
                   "client for volume '%s'", a->volume);
        return NULL;
    }
    for (int i = 0; i < a->nservers; i++) {
        const GlusterServer *s = &a->servers[i];
        if (glfs_set_volfile_server(fs, s->unix_socket ? "unix" : "tcp",
                                    s->host, s->unix_socket ? 0 : s->port)) {
            error_setf(err, errno ? errno : EINVAL, "Gluster server %s: %s",
                       server_name(s, srv, sizeof(srv)), strerror(errno));
            glfs_fini(fs);
            return NULL;
        }
    }
    /* gfapi's own log would put several lines on our stderr for one
     * failure; the caller's message says what went wrong.  debug= or
     * logfile= ask for it, as in QEMU. */
    const char *log = a->logfile ? a->logfile
                                 : a->debug_given ? "-" : "/dev/null";
    if (glfs_set_logging(fs, log, a->debug)) {
        error_setf(err, errno ? errno : EINVAL, "Gluster logfile '%s': %s",
                   log, strerror(errno));
        glfs_fini(fs);
        return NULL;
    }
    if (glfs_init(fs)) {
        int e = errno ? errno : EIO;
        server_name(&a->servers[0], srv, sizeof(srv));
        if (e == ENOENT) {
            error_setf(err, ENOENT, "Gluster volume '%s' does not exist on "
                       "%s", a->volume, srv);
        } else if (e == ENOTCONN || e == ECONNREFUSED || e == EHOSTUNREACH ||
                   e == ETIMEDOUT) {
            error_setf(err, e, "cannot reach Gluster server %s%s: %s", srv,
                       a->nservers > 1 ? " (nor the others)" : "",
                       strerror(e));
        } else {
            error_setf(err, e, "cannot mount Gluster volume '%s' from %s: %s",
                       a->volume, srv, strerror(e));
        }
        /* A client that never came up has no data; its teardown is the
         * slow part, so it is not waited for either.  It stays reachable
         * (gfapi's threads may still use it) until the process ends. */
        pthread_mutex_lock(&failed_lock);
        FailedFs *f = malloc(sizeof(*f));
        if (f) {
            f->fs = fs;
            f->next = failed;
            failed = f;
        }
        pthread_mutex_unlock(&failed_lock);
        return NULL;
    }
    return fs;
}

glfs_t *gluster_get(const GlusterAddr *a, Error *err)
{
    char *key = conn_key(a);
    if (!key) {
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_lock(&conn_lock);
    Conn *c;
    for (c = conns; c; c = c->next) {
        if (strcmp(c->key, key) == 0) {
            break;
        }
    }
    if (!c) {
        glfs_t *fs = connect_volume(a, err);
        c = fs ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            pthread_mutex_unlock(&conn_lock);
            free(key);
            if (fs) {
                error_setf(err, ENOMEM, "out of memory");
            }
            return NULL;
        }
        c->key = key;
        key = NULL;
        c->fs = fs;
        c->next = conns;
        conns = c;
    }
    c->users++;
    glfs_t *fs = c->fs;
    pthread_mutex_unlock(&conn_lock);
    free(key);
    return fs;
}

void gluster_put(glfs_t *fs)
{
    if (!fs) {
        return;
    }
    pthread_mutex_lock(&conn_lock);
    for (Conn *c = conns; c; c = c->next) {
        if (c->fs == fs) {
            /* Kept (idle) for the next open: see the top of the file. */
            c->users--;
            break;
        }
    }
    pthread_mutex_unlock(&conn_lock);
}
