/*
 * sockaddr.c - parsing, listening on and accepting from the socket
 * addresses of sockaddr.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "block/export/sockaddr.h"

#define BACKLOG 64

static const char *get(KVList *opts, const char *prefix, const char *key,
                       char *buf, size_t len)
{
    if (prefix) {
        snprintf(buf, len, "%s.%s", prefix, key);
        return kvlist_get(opts, buf);
    }
    return kvlist_get(opts, key);
}

int sockaddr_parse(SockAddr *a, KVList *opts, const char *prefix, Error *err)
{
    char k[128];
    const char *pre = prefix ? prefix : "";
    const char *dot = prefix ? "." : "";
    memset(a, 0, sizeof(*a));
    a->fd = -1;
    const char *type = get(opts, prefix, "type", k, sizeof(k));
    if (!type) {
        return error_setf(err, EINVAL, "Parameter '%s%stype' is missing",
                          pre, dot);
    }
    if (strcmp(type, "unix") == 0) {
        const char *path = get(opts, prefix, "path", k, sizeof(k));
        if (!path || !*path) {
            return error_setf(err, EINVAL, "Parameter '%s%spath' is missing",
                              pre, dot);
        }
        if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            return error_setf(err, ENAMETOOLONG, "UNIX socket path '%s' is "
                              "too long", path);
        }
        a->type = SOCKADDR_UNIX;
        a->path = strdup(path);
        /* QEMU's abstract/tight: only the default is supported. */
        bool abstract = false;
        snprintf(k, sizeof(k), "%s%sabstract", pre, dot);
        int ret = kvlist_get_bool(opts, k, false, &abstract, err);
        if (ret < 0) {
            return ret;
        }
        if (abstract) {
            return error_setf(err, ENOTSUP, "abstract unix sockets are not "
                              "supported");
        }
    } else if (strcmp(type, "inet") == 0) {
        const char *host = get(opts, prefix, "host", k, sizeof(k));
        const char *port = get(opts, prefix, "port", k, sizeof(k));
        if (!port || !*port) {
            return error_setf(err, EINVAL, "Parameter '%s%sport' is missing",
                              pre, dot);
        }
        a->type = SOCKADDR_INET;
        a->host = strdup(host ? host : "");
        a->port = strdup(port);
        /* ipv4=/ipv6=/numeric=/to= are QEMU tuning knobs: accepted. */
        static const char *const knobs[] = { "ipv4", "ipv6", "numeric",
                                             "to", "keep-alive" };
        for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
            get(opts, prefix, knobs[i], k, sizeof(k));
        }
    } else if (strcmp(type, "fd") == 0) {
        const char *s = get(opts, prefix, "str", k, sizeof(k));
        char *end;
        long v = s ? strtol(s, &end, 10) : -1;
        if (!s || *end || v < 0 || v > 65535) {
            return error_setf(err, EINVAL, "Parameter '%s%sstr' expects a "
                              "file descriptor number", pre, dot);
        }
        a->type = SOCKADDR_FD;
        a->fd = (int)v;
    } else {
        return error_setf(err, EINVAL, "Parameter '%s%stype' does not accept "
                          "value '%s'", pre, dot, type);
    }
    if ((a->type == SOCKADDR_UNIX && !a->path) ||
        (a->type == SOCKADDR_INET && (!a->host || !a->port))) {
        sockaddr_free(a);
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

void sockaddr_free(SockAddr *a)
{
    free(a->path);
    free(a->host);
    free(a->port);
    a->path = a->host = a->port = NULL;
}

char *sockaddr_describe(const SockAddr *a)
{
    char *s = NULL;
    int r = -1;
    switch (a->type) {
    case SOCKADDR_UNIX:
        r = asprintf(&s, "unix:%s", a->path);
        break;
    case SOCKADDR_INET:
        r = asprintf(&s, "inet:%s:%s", a->host, a->port);
        break;
    case SOCKADDR_FD:
        r = asprintf(&s, "fd:%d", a->fd);
        break;
    }
    return r < 0 ? NULL : s;
}

static int set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        return -errno;
    }
    return 0;
}

static int listen_unix(const SockAddr *a, int *fds, Error *err)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", a->path);
    struct stat st;
    if (lstat(a->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return error_setf(err, EEXIST, "Failed to bind socket to %s: "
                              "a file that is not a socket is in the way",
                              a->path);
        }
        unlink(a->path);   /* a stale socket of an earlier run */
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return error_setf(err, errno, "Failed to create socket: %s",
                          strerror(errno));
    }
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
        listen(fd, BACKLOG) < 0) {
        int e = errno;
        close(fd);
        return error_setf(err, e, "Failed to bind socket to %s: %s",
                          a->path, strerror(e));
    }
    fds[0] = fd;
    return 1;
}

static int listen_inet(const SockAddr *a, int *fds, int max, Error *err)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
    };
    struct addrinfo *res = NULL;
    int r = getaddrinfo(*a->host ? a->host : NULL, a->port, &hints, &res);
    if (r != 0) {
        return error_setf(err, EINVAL, "address resolution failed for "
                          "%s:%s: %s", a->host, a->port, gai_strerror(r));
    }
    int n = 0, last = 0;
    for (struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
        int fd = socket(ai->ai_family,
                        ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, BACKLOG) < 0) {
            last = errno;
            close(fd);
            continue;
        }
        fds[n++] = fd;
    }
    freeaddrinfo(res);
    if (n == 0) {
        return error_setf(err, last ? last : EADDRNOTAVAIL,
                          "Failed to bind socket to %s:%s: %s", a->host,
                          a->port, strerror(last ? last : EADDRNOTAVAIL));
    }
    return n;
}

int sockaddr_listen(const SockAddr *a, int *fds, int max, Error *err)
{
    if (max < 1) {
        return error_setf(err, EINVAL, "no room for a listening socket");
    }
    switch (a->type) {
    case SOCKADDR_UNIX:
        return listen_unix(a, fds, err);
    case SOCKADDR_INET:
        return listen_inet(a, fds, max, err);
    case SOCKADDR_FD: {
        int type = 0;
        socklen_t len = sizeof(type);
        if (getsockopt(a->fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
            type != SOCK_STREAM) {
            return error_setf(err, EBADF, "File descriptor %d is not a "
                              "stream socket", a->fd);
        }
        int ret = set_nonblock_cloexec(a->fd);
        if (ret < 0) {
            return error_setf(err, -ret, "File descriptor %d: %s", a->fd,
                              strerror(-ret));
        }
        /* Listening already, or not yet (it is fine to listen twice). */
        if (listen(a->fd, BACKLOG) < 0) {
            return error_setf(err, errno, "File descriptor %d cannot "
                              "listen: %s", a->fd, strerror(errno));
        }
        fds[0] = a->fd;
        return 1;
    }
    }
    return error_setf(err, EINVAL, "bad socket address");
}

void sockaddr_unlink(const SockAddr *a)
{
    if (a->type == SOCKADDR_UNIX && a->path) {
        unlink(a->path);
    }
}

int sockaddr_accept(int listen_fd)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
        (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}
