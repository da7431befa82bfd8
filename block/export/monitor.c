/*
 * monitor.c - QMP control sockets (monitor.h): accepting clients,
 * framing JSON objects out of the byte stream, capabilities
 * negotiation, replies and events.
 *
 * Invariants:
 *  - a client's unparsed input and unsent output are each bounded
 *    (MAX_IN, MAX_OUT): a client that sends an endless object or never
 *    reads is disconnected;
 *  - commands are refused until qmp_capabilities has been accepted,
 *    and events go only to clients past it;
 *  - a command runs to completion before the next is parsed (QMP
 *    without out-of-band execution).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "block/export/monitor.h"
#include "block/export/sockaddr.h"

#define MAX_IN (1u << 20)
#define MAX_OUT (16u << 20)

typedef struct Client {
    Monitor *mon;
    int fd;
    bool negotiated;
    bool closing;
    char *in;
    size_t in_len;
    char *out;
    size_t out_len, out_pos;
    uint32_t events;
    struct Client *next;
} Client;

struct Monitor {
    Loop *loop;
    int fd;
    bool pretty;
    Client *clients;
    Monitor *next;
};

static Monitor *monitors;
static void (*quit_fn)(void *);
static void *quit_opaque;

void monitor_set_quit_fn(void (*fn)(void *opaque), void *opaque)
{
    quit_fn = fn;
    quit_opaque = opaque;
}

void qmp_quit(void)
{
    if (quit_fn) {
        quit_fn(quit_opaque);
    }
}

static void client_free(Client *c)
{
    Monitor *m = c->mon;
    for (Client **p = &m->clients; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    loop_del_fd(m->loop, c->fd);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static void client_update(Client *c)
{
    uint32_t want = EPOLLIN | (c->out_len > c->out_pos ? EPOLLOUT : 0);
    if (want != c->events) {
        loop_mod_fd(c->mon->loop, c->fd, want);
        c->events = want;
    }
}

static void client_flush(Client *c)
{
    while (c->out_pos < c->out_len) {
        ssize_t r = send(c->fd, c->out + c->out_pos, c->out_len - c->out_pos,
                         MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && errno == EAGAIN) {
            break;
        }
        if (r <= 0) {
            c->closing = true;
            return;
        }
        c->out_pos += (size_t)r;
    }
    if (c->out_pos == c->out_len) {
        c->out_pos = c->out_len = 0;
    }
}

static void client_send(Client *c, json_t *msg)
{
    size_t flags = JSON_PRESERVE_ORDER |
                   (c->mon->pretty ? JSON_INDENT(4) : JSON_COMPACT);
    char *s = json_dumps(msg, flags);
    if (!s) {
        c->closing = true;
        return;
    }
    size_t n = strlen(s);
    if (c->out_len - c->out_pos + n + 2 > MAX_OUT) {
        free(s);
        c->closing = true;
        return;
    }
    char *o = realloc(c->out, c->out_len + n + 2);
    if (!o) {
        free(s);
        c->closing = true;
        return;
    }
    c->out = o;
    memcpy(o + c->out_len, s, n);
    memcpy(o + c->out_len + n, "\r\n", 2);
    c->out_len += n + 2;
    free(s);
    client_flush(c);
}

static json_t *error_obj(const char *class, const char *desc)
{
    return json_pack("{s:{s:s,s:s}}", "error", "class", class, "desc", desc);
}

static void reply(Client *c, json_t *msg, json_t *id)
{
    if (msg && id) {
        json_object_set(msg, "id", id);
    }
    if (msg) {
        client_send(c, msg);
        json_decref(msg);
    }
}

static void handle(Client *c, json_t *req)
{
    json_t *id = json_is_object(req) ? json_object_get(req, "id") : NULL;
    if (!json_is_object(req)) {
        reply(c, error_obj("GenericError", "QMP input must be a JSON "
                           "object"), NULL);
        return;
    }
    json_t *exec = json_object_get(req, "execute");
    json_t *args = json_object_get(req, "arguments");
    const char *key;
    json_t *v;
    json_object_foreach(req, key, v) {
        if (strcmp(key, "execute") && strcmp(key, "arguments") &&
            strcmp(key, "id")) {
            char msg[160];
            snprintf(msg, sizeof(msg), "QMP input member '%.64s' is "
                     "unexpected", key);
            reply(c, error_obj("GenericError", msg), id);
            return;
        }
    }
    if (!json_is_string(exec)) {
        reply(c, error_obj("GenericError", "QMP input lacks member "
                           "'execute'"), id);
        return;
    }
    if (args && !json_is_object(args)) {
        reply(c, error_obj("GenericError", "QMP input member 'arguments' "
                           "must be an object"), id);
        return;
    }
    const char *name = json_string_value(exec);
    if (!c->negotiated) {
        if (strcmp(name, "qmp_capabilities") == 0) {
            c->negotiated = true;
            reply(c, json_pack("{s:{}}", "return"), id);
        } else {
            reply(c, error_obj("CommandNotFound", "Expecting capabilities "
                               "negotiation with 'qmp_capabilities'"), id);
        }
        return;
    }
    if (strcmp(name, "qmp_capabilities") == 0) {
        reply(c, error_obj("CommandNotFound", "Capabilities negotiation is "
                           "already complete, command ignored"), id);
        return;
    }
    json_t *empty = NULL;
    if (!args) {
        args = empty = json_object();
    }
    Error err = { 0 };
    const char *class = "GenericError";
    json_t *ret = qmp_dispatch(name, args, &class, &err);
    json_decref(empty);
    if (ret) {
        json_t *msg = json_object();
        json_object_set_new(msg, "return", ret);
        reply(c, msg, id);
    } else {
        reply(c, error_obj(class, err.msg[0] ? err.msg : "failed"), id);
    }
}

/* Parses and runs every complete object in the input buffer. */
static void parse_input(Client *c)
{
    size_t pos = 0;
    while (pos < c->in_len && !c->closing) {
        size_t ws = pos;
        while (ws < c->in_len && strchr(" \t\r\n", c->in[ws])) {
            ws++;
        }
        if (ws == c->in_len) {
            pos = ws;
            break;
        }
        json_error_t jerr;
        json_t *j = json_loadb(c->in + ws, c->in_len - ws,
                               JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY,
                               &jerr);
        if (!j) {
            if (json_error_code(&jerr) == json_error_premature_end_of_input) {
                pos = ws;
                break;   /* wait for the rest */
            }
            char msg[256];
            snprintf(msg, sizeof(msg), "JSON parse error, %s", jerr.text);
            reply(c, error_obj("GenericError", msg), NULL);
            pos = c->in_len;    /* start afresh, as QEMU's parser does */
            break;
        }
        pos = ws + (size_t)jerr.position;
        handle(c, j);
        json_decref(j);
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

static void client_event(void *opaque, uint32_t events)
{
    Client *c = opaque;
    if (events & EPOLLOUT) {
        client_flush(c);
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR) && !c->closing) {
        char buf[65536];
        ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            r = -2;
        }
        if (r == 0 || r == -1) {
            c->closing = true;
        } else if (r > 0) {
            if (c->in_len + (size_t)r > MAX_IN) {
                reply(c, error_obj("GenericError", "QMP input too long"),
                      NULL);
                c->closing = true;
            } else {
                char *in = realloc(c->in, c->in_len + (size_t)r + 1);
                if (!in) {
                    c->closing = true;
                } else {
                    c->in = in;
                    memcpy(in + c->in_len, buf, (size_t)r);
                    c->in_len += (size_t)r;
                    parse_input(c);
                }
            }
        }
    }
    if (c->closing) {
        client_free(c);
        return;
    }
    client_update(c);
}

static void accept_event(void *opaque, uint32_t events)
{
    Monitor *m = opaque;
    for (;;) {
        int fd = sockaddr_accept(m->fd);
        if (fd < 0) {
            return;
        }
        Client *c = calloc(1, sizeof(*c));
        if (!c || loop_add_fd(m->loop, fd, EPOLLIN, client_event, c) < 0) {
            free(c);
            close(fd);
            continue;
        }
        c->mon = m;
        c->fd = fd;
        c->events = EPOLLIN;
        c->next = m->clients;
        m->clients = c;
        json_t *g = json_pack("{s:{s:{s:{s:i,s:i,s:i},s:s},s:[]}}", "QMP",
                              "version", "qemu", "micro", 0, "minor", 2,
                              "major", 7, "package", "imgtool 0.1.0",
                              "capabilities");
        client_send(c, g);
        json_decref(g);
        if (c->closing) {
            client_free(c);
        } else {
            client_update(c);
        }
    }
}

Monitor *monitor_new(Loop *loop, int listen_fd, bool pretty, Error *err)
{
    Monitor *m = calloc(1, sizeof(*m));
    if (!m) {
        close(listen_fd);
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    m->loop = loop;
    m->fd = listen_fd;
    m->pretty = pretty;
    int ret = loop_add_fd(loop, listen_fd, EPOLLIN, accept_event, m);
    if (ret < 0) {
        close(listen_fd);
        free(m);
        error_setf(err, -ret, "cannot watch the monitor socket: %s",
                   strerror(-ret));
        return NULL;
    }
    m->next = monitors;
    monitors = m;
    return m;
}

void monitor_free(Monitor *m)
{
    if (!m) {
        return;
    }
    for (Monitor **p = &monitors; *p; p = &(*p)->next) {
        if (*p == m) {
            *p = m->next;
            break;
        }
    }
    while (m->clients) {
        client_free(m->clients);
    }
    loop_del_fd(m->loop, m->fd);
    close(m->fd);
    free(m);
}

void monitor_event(const char *name, json_t *data)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    json_t *ev = json_pack("{s:s,s:O,s:{s:I,s:I}}", "event", name, "data",
                           data ? data : json_null(), "timestamp", "seconds",
                           (json_int_t)tv.tv_sec, "microseconds",
                           (json_int_t)tv.tv_usec);
    if (!ev) {
        return;
    }
    for (Monitor *m = monitors; m; m = m->next) {
        Client *c = m->clients;
        while (c) {
            Client *next = c->next;
            if (c->negotiated) {
                client_send(c, ev);
                if (c->closing) {
                    client_free(c);
                } else {
                    client_update(c);
                }
            }
            c = next;
        }
    }
    json_decref(ev);
}
