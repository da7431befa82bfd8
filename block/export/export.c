/*
 * export.c - the registry of running exports: creating one from its
 * options, deleting it gracefully, listing them (see export.h).
 *
 * Invariants:
 *  - the registry is changed on the main loop's thread only (QMP, the
 *    command line, and the shutdown continuation posted there); `lock`
 *    guards it for readers on other threads;
 *  - an id is in the registry from a successful create until the
 *    driver's shutdown is done and free has run; a second export with
 *    the same id is refused meanwhile, as in QEMU;
 *  - every export holds one reference to its node until it is freed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/export.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static BlockExport *exports;
static Loop *main_loop;
static BlockExportEventFn *event_fn;
static void *event_opaque;

typedef struct IOThread {
    char *id;
    Loop *loop;
    struct IOThread *next;
} IOThread;
static IOThread *iothreads;

const BlockExportDriver *block_export_find_driver(const char *type)
{
    for (int i = 0; block_export_driver_list[i]; i++) {
        const BlockExportDriver *d = block_export_driver_list[i];
        if (d->api_version == BLOCK_EXPORT_API_VERSION &&
            strcmp(d->type, type) == 0) {
            return d;
        }
    }
    return NULL;
}

void block_export_set_main_loop(Loop *l)
{
    main_loop = l;
}

Loop *block_export_main_loop(void)
{
    return main_loop;
}

int block_export_add_iothread(const char *id, Loop *l, Error *err)
{
    if (block_export_find_iothread(id)) {
        return error_setf(err, EEXIST, "attempt to add duplicate property "
                          "'%s' to object (type 'container')", id);
    }
    IOThread *t = calloc(1, sizeof(*t));
    if (!t || !(t->id = strdup(id))) {
        free(t);
        return error_setf(err, ENOMEM, "out of memory");
    }
    t->loop = l;
    pthread_mutex_lock(&lock);
    t->next = iothreads;
    iothreads = t;
    pthread_mutex_unlock(&lock);
    return 0;
}

Loop *block_export_find_iothread(const char *id)
{
    Loop *l = NULL;
    pthread_mutex_lock(&lock);
    for (IOThread *t = iothreads; t; t = t->next) {
        if (strcmp(t->id, id) == 0) {
            l = t->loop;
        }
    }
    pthread_mutex_unlock(&lock);
    return l;
}

void block_export_set_event_fn(BlockExportEventFn *fn, void *opaque)
{
    event_fn = fn;
    event_opaque = opaque;
}

/* lock held */
static BlockExport *find_locked(const char *id)
{
    for (BlockExport *e = exports; e; e = e->next) {
        if (strcmp(e->id, id) == 0) {
            return e;
        }
    }
    return NULL;
}

BlockExport *block_export_find(const char *id)
{
    pthread_mutex_lock(&lock);
    BlockExport *e = find_locked(id);
    pthread_mutex_unlock(&lock);
    return e;
}

int block_export_count(void)
{
    int n = 0;
    pthread_mutex_lock(&lock);
    for (BlockExport *e = exports; e; e = e->next) {
        n++;
    }
    pthread_mutex_unlock(&lock);
    return n;
}

static int take_common(BlockExport *exp, KVList *opts, Error *err)
{
    const char *id = kvlist_get(opts, "id");
    const char *node_name = kvlist_get(opts, "node-name");
    if (!id) {
        return error_setf(err, EINVAL, "Parameter 'id' is missing");
    }
    if (!node_name) {
        return error_setf(err, EINVAL, "Parameter 'node-name' is missing");
    }
    if (!*id) {
        return error_setf(err, EINVAL, "Parameter 'id' may not be empty");
    }
    int ret = kvlist_get_bool(opts, "writable", false, &exp->writable, err);
    if (ret == 0) {
        ret = kvlist_get_bool(opts, "writethrough", false,
                              &exp->writethrough, err);
    }
    bool fixed = false;
    if (ret == 0) {
        ret = kvlist_get_bool(opts, "fixed-iothread", false, &fixed, err);
    }
    if (ret < 0) {
        return ret;
    }
    const char *iothread = kvlist_get(opts, "iothread");
    exp->loop = main_loop;
    if (iothread) {
        exp->loop = block_export_find_iothread(iothread);
        if (!exp->loop) {
            return error_setf(err, ENOENT, "iothread \"%s\" not found",
                              iothread);
        }
    }
    if (!exp->loop) {
        return error_setf(err, EINVAL, "no event loop to run the export on");
    }
    if (block_export_find(id)) {
        return error_setf(err, EEXIST, "Block export id '%s' is already in "
                          "use", id);
    }
    exp->node = block_find_node(node_name);
    if (!exp->node) {
        return error_setf(err, ENOENT, "Cannot find device='' nor "
                          "node-name='%s'", node_name);
    }
    if (exp->writable && block_node_read_only(exp->node)) {
        return error_setf(err, EPERM, "Cannot export read-only node as "
                          "writable");
    }
    exp->id = strdup(id);
    return exp->id ? 0 : error_setf(err, ENOMEM, "out of memory");
}

static void export_destroy(BlockExport *exp)
{
    block_close(exp->node);
    free(exp->id);
    free(exp->opaque);
    free(exp);
}

int block_export_add(KVList *opts, BlockExport **out, Error *err)
{
    const char *type = kvlist_get(opts, "type");
    if (!type) {
        return error_setf(err, EINVAL, "Parameter 'type' is missing");
    }
    const BlockExportDriver *drv = block_export_find_driver(type);
    if (!drv) {
        return error_setf(err, EINVAL, "Parameter 'type' does not accept "
                          "value '%s'", type);
    }
    BlockExport *exp = calloc(1, sizeof(*exp));
    if (!exp || (drv->instance_size &&
                 !(exp->opaque = calloc(1, drv->instance_size)))) {
        free(exp);
        return error_setf(err, ENOMEM, "out of memory");
    }
    exp->drv = drv;
    bool created = false;
    int ret = take_common(exp, opts, err);
    if (ret == 0) {
        ret = drv->create(exp, opts, err);
        created = true;
    }
    if (ret == 0) {
        char what[64];
        snprintf(what, sizeof(what), "export type '%s'", type);
        ret = kvlist_check_unused(opts, what, err);
    }
    if (ret == 0 && drv->start) {
        ret = drv->start(exp, err);
    }
    if (ret < 0) {
        if (created && drv->free) {
            drv->free(exp);
        }
        export_destroy(exp);
        return ret;
    }
    pthread_mutex_lock(&lock);
    exp->next = exports;
    exports = exp;
    pthread_mutex_unlock(&lock);
    if (out) {
        *out = exp;
    }
    return 0;
}

/* On the main loop: the driver is done with exp. */
static void finish_delete(void *opaque)
{
    BlockExport *exp = opaque;
    pthread_mutex_lock(&lock);
    for (BlockExport **p = &exports; *p; p = &(*p)->next) {
        if (*p == exp) {
            *p = exp->next;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    if (exp->drv->free) {
        exp->drv->free(exp);
    }
    json_t *data = json_pack("{s:s}", "id", exp->id);
    if (event_fn && data) {
        event_fn(event_opaque, "BLOCK_EXPORT_DELETED", data);
    }
    json_decref(data);
    export_destroy(exp);
}

void block_export_shutdown_done(BlockExport *exp)
{
    exp->done = true;
    exp->done_work.fn = finish_delete;
    exp->done_work.opaque = exp;
    loop_post(main_loop, &exp->done_work);
}

static void start_delete(BlockExport *exp, bool hard)
{
    if (exp->shutting_down) {
        return;
    }
    exp->shutting_down = true;
    exp->drv->shutdown(exp, hard);
}

int block_export_del(const char *id, bool hard, Error *err)
{
    BlockExport *exp = block_export_find(id);
    if (!exp) {
        return error_setf(err, ENOENT, "Export '%s' is not found", id);
    }
    if (exp->shutting_down) {
        return error_setf(err, EBUSY, "Export '%s' is already shutting "
                          "down", id);
    }
    if (!hard && exp->drv->in_use && exp->drv->in_use(exp)) {
        return error_setf(err, EBUSY, "export '%s' still in use; use "
                          "mode='hard' to force client disconnect", id);
    }
    start_delete(exp, hard);
    return 0;
}

void block_export_del_all(void)
{
    /* shutdown may finish at once and post the removal: walk a copy. */
    pthread_mutex_lock(&lock);
    int n = 0;
    for (BlockExport *e = exports; e; e = e->next) {
        n++;
    }
    BlockExport **v = calloc((size_t)n + 1, sizeof(*v));
    n = 0;
    for (BlockExport *e = exports; e && v; e = e->next) {
        v[n++] = e;
    }
    pthread_mutex_unlock(&lock);
    for (int i = 0; v && i < n; i++) {
        start_delete(v[i], true);
    }
    free(v);
}

json_t *block_export_query(void)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&lock);
    /* Oldest first, as they were added. */
    int n = 0;
    for (BlockExport *e = exports; e; e = e->next) {
        n++;
    }
    for (int i = n - 1; i >= 0 && arr; i--) {
        BlockExport *e = exports;
        for (int k = 0; k < i; k++) {
            e = e->next;
        }
        json_t *o = json_pack("{s:s,s:s,s:s,s:b}", "type", e->drv->type,
                              "id", e->id, "node-name",
                              block_node_name(e->node), "shutting-down",
                              e->shutting_down);
        if (o && e->drv->query) {
            e->drv->query(e, o);
        }
        if (o) {
            json_array_append_new(arr, o);
        }
    }
    pthread_mutex_unlock(&lock);
    return arr;
}

static bool chain_has(BlockNode *top, BlockNode *n)
{
    for (int depth = 0; top && depth <= BLOCK_MAX_CHAIN; depth++) {
        if (top == n || block_node_storage(top) == n) {
            return true;
        }
        top = block_backing(top);
    }
    return false;
}

bool block_export_uses_node(BlockNode *n)
{
    bool used = false;
    pthread_mutex_lock(&lock);
    for (BlockExport *e = exports; e && !used; e = e->next) {
        used = chain_has(e->node, n);
    }
    pthread_mutex_unlock(&lock);
    return used;
}

void block_export_node_resized(BlockNode *n)
{
    pthread_mutex_lock(&lock);
    for (BlockExport *e = exports; e; e = e->next) {
        if (!e->shutting_down && e->drv->resized && chain_has(e->node, n)) {
            e->drv->resized(e);
        }
    }
    pthread_mutex_unlock(&lock);
}
