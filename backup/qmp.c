/*
 * qmp.c - QMP and guest agent client (see qmp.h).
 *
 * Invariants: a line longer than MAX_LINE is an error, never a larger
 * buffer; kept events are bounded too (the oldest go); every read waits
 * at most the caller's timeout.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "backup/qmp.h"

#define MAX_LINE (16u << 20)
#define MAX_EVENTS 256
#define CALL_TIMEOUT_MS 60000
#define GREETING_TIMEOUT_MS 10000

struct QmpClient {
    int fd;
    char *path;
    char *buf;
    size_t len, cap;
    json_t *events;            /* kept events, oldest first */
};

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

void qmp_close(QmpClient *c)
{
    if (c) {
        if (c->fd >= 0) {
            close(c->fd);
        }
        json_decref(c->events);
        free(c->buf);
        free(c->path);
        free(c);
    }
}

static int send_json(QmpClient *c, json_t *j, Error *err)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (!s) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    size_t n = strlen(s);
    int ret = 0;
    for (size_t done = 0; done < n;) {
        ssize_t w = send(c->fd, s + done, n - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            ret = error_setf(err, errno, "%s: %s", c->path, strerror(errno));
            break;
        }
        done += (size_t)w;
    }
    if (ret == 0) {
        ssize_t w;
        do {
            w = send(c->fd, "\n", 1, MSG_NOSIGNAL);
        } while (w < 0 && errno == EINTR);
        if (w < 0) {
            ret = error_setf(err, errno, "%s: %s", c->path, strerror(errno));
        }
    }
    free(s);
    return ret;
}

/* The next JSON line, waiting until deadline (ms, monotonic). */
static int read_json(QmpClient *c, int64_t deadline, json_t **out,
                     Error *err)
{
    *out = NULL;
    for (;;) {
        char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            bool blank = true;
            for (size_t i = 0; i < n && blank; i++) {
                blank = c->buf[i] == '\r' || c->buf[i] == ' ';
            }
            json_error_t je;
            json_t *j = blank ? NULL : json_loadb(c->buf, n, 0, &je);
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            if (blank) {
                continue;
            }
            if (!j) {
                return error_setf(err, EPROTO, "%s: bad JSON from the peer: "
                                  "%s", c->path, je.text);
            }
            *out = j;
            return 0;
        }
        if (c->len == MAX_LINE) {
            return error_setf(err, EPROTO, "%s: a message longer than %u "
                              "bytes", c->path, MAX_LINE);
        }
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 65536;
            if (cap > MAX_LINE) {
                cap = MAX_LINE;
            }
            char *b = realloc(c->buf, cap);
            if (!b) {
                return error_setf(err, ENOMEM, "out of memory");
            }
            c->buf = b;
            c->cap = cap;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            return error_setf(err, ETIMEDOUT, "%s: no answer", c->path);
        }
        struct pollfd p = { c->fd, POLLIN, 0 };
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r < 0 && errno != EINTR) {
            return error_setf(err, errno, "%s: %s", c->path, strerror(errno));
        }
        if (r <= 0) {
            continue;
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return error_setf(err, errno, "%s: %s", c->path, strerror(errno));
        }
        if (n == 0) {
            return error_setf(err, ECONNRESET, "%s: the peer closed the "
                              "connection", c->path);
        }
        c->len += (size_t)n;
    }
}

static void keep_event(QmpClient *c, json_t *ev)
{
    json_array_append_new(c->events, ev);
    while (json_array_size(c->events) > MAX_EVENTS) {
        json_array_remove(c->events, 0);
    }
}

static int dial(const char *path, QmpClient **out, Error *err)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    *out = NULL;
    if (strlen(path) >= sizeof(a.sun_path)) {
        return error_setf(err, ENAMETOOLONG, "%s: socket path too long",
                          path);
    }
    strcpy(a.sun_path, path);
    QmpClient *c = calloc(1, sizeof(*c));
    if (!c || !(c->path = strdup(path)) || !(c->events = json_array())) {
        qmp_close(c);
        return error_setf(err, ENOMEM, "out of memory");
    }
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int e = errno;
        qmp_close(c);
        return error_setf(err, e, "%s: cannot connect: %s", path,
                          strerror(e));
    }
    *out = c;
    return 0;
}

int qmp_connect(const char *path, QmpClient **out, Error *err)
{
    QmpClient *c;
    json_t *j = NULL;
    int ret = dial(path, &c, err);
    if (ret < 0) {
        return ret;
    }
    ret = read_json(c, now_ms() + GREETING_TIMEOUT_MS, &j, err);
    if (ret == -ETIMEDOUT) {
        error_clear(err);
        ret = error_setf(err, ETIMEDOUT, "%s: no QMP greeting (QEMU serves "
                         "one client per QMP socket: is another one "
                         "connected?)", path);
    }
    if (ret == 0 && !json_object_get(j, "QMP")) {
        ret = error_setf(err, EPROTO, "%s: not a QMP socket (no greeting)",
                         path);
    }
    json_decref(j);
    if (ret == 0) {
        ret = qmp_call(c, "qmp_capabilities", NULL, NULL, err);
    }
    if (ret < 0) {
        qmp_close(c);
        return ret;
    }
    *out = c;
    return 0;
}

int qga_connect(const char *path, QmpClient **out, Error *err)
{
    QmpClient *c;
    int ret = dial(path, &c, err);
    if (ret < 0) {
        return ret;
    }
    /* A reply to an earlier client may still be in the pipe: guest-sync
     * with our own id tells where our conversation starts. */
    json_int_t id = (json_int_t)(now_ms() & 0x3fffffff);
    json_t *r = NULL;
    json_t *sync = json_pack("{s:s, s:{s:I}}", "execute", "guest-sync",
                             "arguments", "id", id);
    ret = sync ? send_json(c, sync, err)
               : error_setf(err, ENOMEM, "out of memory");
    json_decref(sync);
    int64_t deadline = now_ms() + 10000;
    while (ret == 0) {
        ret = read_json(c, deadline, &r, err);
        if (ret == 0 && json_integer_value(json_object_get(r, "return")) ==
                            id) {
            json_decref(r);
            break;
        }
        json_decref(r);
    }
    if (ret < 0) {
        qmp_close(c);
        return ret;
    }
    *out = c;
    return 0;
}

int qmp_call(QmpClient *c, const char *cmd, json_t *args, json_t **ret,
             Error *err)
{
    json_t *req = args ? json_pack("{s:s, s:o}", "execute", cmd, "arguments",
                                   args)
                       : json_pack("{s:s}", "execute", cmd);
    if (ret) {
        *ret = NULL;
    }
    if (!req) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int r = send_json(c, req, err);
    json_decref(req);
    int64_t deadline = now_ms() + CALL_TIMEOUT_MS;
    while (r == 0) {
        json_t *j = NULL;
        r = read_json(c, deadline, &j, err);
        if (r < 0) {
            break;
        }
        if (json_object_get(j, "event")) {
            keep_event(c, j);
            continue;
        }
        json_t *e = json_object_get(j, "error");
        if (e) {
            r = error_setf(err, EIO, "%s: %s", cmd,
                           json_string_value(json_object_get(e, "desc"))
                               ? json_string_value(json_object_get(e, "desc"))
                               : "error");
        } else if (ret) {
            *ret = json_incref(json_object_get(j, "return"));
        }
        json_decref(j);
        break;
    }
    return r;
}

static bool event_matches(json_t *ev, const char *name, const char *key,
                          const char *value)
{
    const char *n = json_string_value(json_object_get(ev, "event"));
    if (!n || strcmp(n, name) != 0) {
        return false;
    }
    if (!key) {
        return true;
    }
    const char *v = json_string_value(
        json_object_get(json_object_get(ev, "data"), key));
    return v && strcmp(v, value) == 0;
}

int qmp_wait_event(QmpClient *c, const char *name, const char *key,
                   const char *value, int timeout_ms, json_t **ev,
                   Error *err)
{
    if (ev) {
        *ev = NULL;
    }
    for (size_t i = 0; i < json_array_size(c->events); i++) {
        json_t *e = json_array_get(c->events, i);
        if (event_matches(e, name, key, value)) {
            if (ev) {
                *ev = json_incref(e);
            }
            json_array_remove(c->events, i);
            return 0;
        }
    }
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        json_t *j = NULL;
        int r = read_json(c, deadline, &j, err);
        if (r < 0) {
            if (r == -ETIMEDOUT) {
                error_clear(err);
                return error_setf(err, ETIMEDOUT, "%s: no %s event",
                                  c->path, name);
            }
            return r;
        }
        if (json_object_get(j, "event") &&
            event_matches(j, name, key, value)) {
            if (ev) {
                *ev = j;
            } else {
                json_decref(j);
            }
            return 0;
        }
        if (json_object_get(j, "event")) {
            keep_event(c, j);
        } else {
            json_decref(j);
        }
    }
}
