/*
 * serve-opts.c - the qemu-storage-daemon options of `imgtool serve`
 * that set up the daemon itself rather than block objects: --chardev
 * (socket chardevs, the monitor's transport), --monitor (a QMP control
 * socket on a chardev), --qmp PATH (the short form) and --object
 * iothread (an event loop on a thread of its own).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/export/export.h"
#include "block/export/monitor.h"
#include "block/export/sockaddr.h"
#include "cmd/serve.h"

typedef struct Chardev {
    char *id;
    SockAddr addr;
    int fds[4];
    int nfds;             /* listening (a monitor uses it) */
    struct Chardev *next;
} Chardev;

typedef struct IOThread {
    Loop *loop;
    struct IOThread *next;
} IOThread;

typedef struct Mon {
    Monitor *m;
    struct Mon *next;
} Mon;

static Chardev *chardevs;
static IOThread *iothreads;
static Mon *mons;

/* QEMU's chardev syntax allows bare flags ("server", "nowait"); turn
 * them into key=value before the list parser sees them. */
static int parse_chardev_opts(const char *arg, KVList *kv, Error *err)
{
    char *copy = strdup(arg);
    if (!copy) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    size_t n = strlen(copy);
    char *out = malloc(n * 2 + 32);
    if (!out) {
        free(copy);
        return error_setf(err, ENOMEM, "out of memory");
    }
    size_t o = 0;
    char *p = copy;
    bool first = true;
    while (*p) {
        char *end = p;
        while (*end && !(*end == ',' && end[1] != ',')) {
            end += *end == ',' ? 2 : 1;
        }
        size_t len = (size_t)(end - p);
        bool has_eq = memchr(p, '=', len) != NULL;
        if (o) {
            out[o++] = ',';
        }
        if (!has_eq && first) {
            memcpy(out + o, "backend=", 8);
            o += 8;
        } else if (!has_eq && len == 6 && !strncmp(p, "nowait", 6)) {
            memcpy(out + o, "wait=off", 8);
            o += 8;
            p = *end ? end + 1 : end;
            first = false;
            continue;
        } else if (!has_eq && len == 7 && !strncmp(p, "nodelay", 7)) {
            memcpy(out + o, "nodelay=on", 10);
            o += 10;
            p = *end ? end + 1 : end;
            first = false;
            continue;
        }
        memcpy(out + o, p, len);
        o += len;
        if (!has_eq && !first) {
            memcpy(out + o, "=on", 3);
            o += 3;
        }
        first = false;
        p = *end ? end + 1 : end;
    }
    out[o] = '\0';
    int ret = kvlist_parse(kv, out, "backend", err);
    free(out);
    free(copy);
    return ret;
}

static Chardev *find_chardev(const char *id)
{
    for (Chardev *c = chardevs; c; c = c->next) {
        if (strcmp(c->id, id) == 0) {
            return c;
        }
    }
    return NULL;
}

int serve_chardev_add(const char *arg, Error *err)
{
    KVList kv = { 0 };
    Chardev *c = NULL;
    int ret = parse_chardev_opts(arg, &kv, err);
    if (ret < 0) {
        goto out;
    }
    const char *backend = kvlist_get(&kv, "backend");
    const char *id = kvlist_get(&kv, "id");
    if (!backend || strcmp(backend, "socket") != 0) {
        ret = error_setf(err, ENOTSUP, "chardev backend '%s' is not "
                         "supported (only 'socket')", backend ? backend : "");
        goto out;
    }
    if (!id) {
        ret = error_setf(err, EINVAL, "chardev: \"id\" is required");
        goto out;
    }
    if (find_chardev(id)) {
        ret = error_setf(err, EEXIST, "attempt to add duplicate property "
                         "'%s' to object (type 'container')", id);
        goto out;
    }
    bool server = false, wait = true, nodelay = false;
    ret = kvlist_get_bool(&kv, "server", false, &server, err);
    if (ret == 0) {
        ret = kvlist_get_bool(&kv, "wait", true, &wait, err);
    }
    if (ret == 0) {
        ret = kvlist_get_bool(&kv, "nodelay", false, &nodelay, err);
    }
    if (ret < 0) {
        goto out;
    }
    if (!server) {
        ret = error_setf(err, ENOTSUP, "chardev '%s': only server=on "
                         "sockets are supported", id);
        goto out;
    }
    (void)wait;   /* the daemon never blocks waiting for a client */
    c = calloc(1, sizeof(*c));
    if (!c || !(c->id = strdup(id))) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (kvlist_has(&kv, "path")) {
        kvlist_set(&kv, "type", "unix");
    } else {
        kvlist_set(&kv, "type", "inet");
    }
    ret = sockaddr_parse(&c->addr, &kv, NULL, err);
    if (ret < 0) {
        goto out;
    }
    kvlist_get(&kv, "telnet");
    kvlist_get(&kv, "websocket");
    ret = kvlist_check_unused(&kv, "chardev", err);
    if (ret < 0) {
        sockaddr_free(&c->addr);
        goto out;
    }
    c->next = chardevs;
    chardevs = c;
    c = NULL;
out:
    if (c) {
        free(c->id);
        free(c);
    }
    kvlist_free(&kv);
    return ret;
}

static int monitor_on(Chardev *c, bool pretty, Loop *loop, Error *err)
{
    if (c->nfds) {
        return error_setf(err, EBUSY, "chardev '%s' is already in use",
                          c->id);
    }
    int ret = sockaddr_listen(&c->addr, c->fds, 4, err);
    if (ret < 0) {
        return ret;
    }
    c->nfds = ret;
    for (int i = 0; i < c->nfds; i++) {
        /* The monitor owns each listening socket from here on. */
        Mon *m = calloc(1, sizeof(*m));
        if (!m) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        m->m = monitor_new(loop, c->fds[i], pretty, err);
        if (!m->m) {
            free(m);
            return -EINVAL;
        }
        m->next = mons;
        mons = m;
    }
    return 0;
}

int serve_monitor_add(const char *arg, Loop *loop, Error *err)
{
    KVList kv = { 0 };
    int ret = kvlist_parse(&kv, arg, "chardev", err);
    if (ret < 0) {
        kvlist_free(&kv);
        return ret;
    }
    const char *id = kvlist_get(&kv, "chardev");
    const char *mode = kvlist_get(&kv, "mode");
    bool pretty = false;
    kvlist_get(&kv, "id");
    ret = kvlist_get_bool(&kv, "pretty", false, &pretty, err);
    if (ret == 0 && mode && strcmp(mode, "control") != 0) {
        ret = error_setf(err, ENOTSUP, "Only QMP monitors (mode=control) "
                         "are supported");
    }
    if (ret == 0 && !id) {
        ret = error_setf(err, EINVAL, "Parameter 'chardev' is missing");
    }
    if (ret == 0) {
        ret = kvlist_check_unused(&kv, "monitor", err);
    }
    Chardev *c = ret == 0 ? find_chardev(id) : NULL;
    if (ret == 0 && !c) {
        ret = error_setf(err, ENOENT, "chardev \"%s\" not found", id);
    }
    if (ret == 0) {
        ret = monitor_on(c, pretty, loop, err);
    }
    kvlist_free(&kv);
    return ret;
}

int serve_qmp_path(const char *path, Loop *loop, Error *err)
{
    static int n;
    char def[64];
    snprintf(def, sizeof(def), "socket,id=#qmp%d,server=on,path=", n++);
    char *arg = NULL;
    if (asprintf(&arg, "%s%s", def, path) < 0) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    /* Commas in the path are literal: double them for the list. */
    char *esc = malloc(strlen(arg) * 2 + 1), *o = esc;
    for (const char *p = arg; esc && *p; p++) {
        *o++ = *p;
        if (*p == ',' && p >= arg + strlen(def)) {
            *o++ = ',';
        }
    }
    if (esc) {
        *o = '\0';
    }
    int ret = esc ? serve_chardev_add(esc, err)
                  : error_setf(err, ENOMEM, "out of memory");
    free(esc);
    free(arg);
    if (ret == 0) {
        ret = monitor_on(chardevs, false, loop, err);
    }
    return ret;
}

int serve_iothread_add(const char *arg, Error *err)
{
    KVList kv = { 0 };
    int ret = kvlist_parse(&kv, arg, "qom-type", err);
    const char *id = ret == 0 ? kvlist_get(&kv, "id") : NULL;
    kvlist_get(&kv, "qom-type");
    /* Polling and batching knobs of QEMU's iothreads: accepted. */
    static const char *const knobs[] = { "poll-max-ns", "poll-grow",
                                         "poll-shrink", "aio-max-batch",
                                         "thread-pool-min",
                                         "thread-pool-max" };
    for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
        kvlist_get(&kv, knobs[i]);
    }
    if (ret == 0 && !id) {
        ret = error_setf(err, EINVAL, "Parameter 'id' is missing");
    }
    if (ret == 0) {
        ret = kvlist_check_unused(&kv, "iothread", err);
    }
    Loop *l = NULL;
    IOThread *t = NULL;
    if (ret == 0) {
        l = loop_new(err);
        t = calloc(1, sizeof(*t));
        if (!l || !t) {
            ret = l ? error_setf(err, ENOMEM, "out of memory") : -ENOMEM;
        }
    }
    if (ret == 0 && block_export_find_iothread(id)) {
        ret = error_setf(err, EEXIST, "attempt to add duplicate property "
                         "'%s' to object (type 'container')", id);
    }
    if (ret == 0) {
        ret = loop_start_thread(l, err);
        if (ret == 0 && block_export_add_iothread(id, l, err) < 0) {
            loop_join(l);
            ret = -EEXIST;
        }
    }
    if (ret == 0) {
        t->loop = l;
        t->next = iothreads;
        iothreads = t;
    } else {
        free(t);
        if (l) {
            loop_free(l);
        }
    }
    kvlist_free(&kv);
    return ret;
}

void serve_opts_cleanup(void)
{
    while (mons) {
        Mon *m = mons;
        mons = m->next;
        monitor_free(m->m);
        free(m);
    }
    while (chardevs) {
        Chardev *c = chardevs;
        chardevs = c->next;
        if (c->nfds && c->addr.type == SOCKADDR_UNIX) {
            sockaddr_unlink(&c->addr);
        }
        sockaddr_free(&c->addr);
        free(c->id);
        free(c);
    }
    while (iothreads) {
        IOThread *t = iothreads;
        iothreads = t->next;
        loop_join(t->loop);
        loop_free(t->loop);
        free(t);
    }
}
