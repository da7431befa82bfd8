/*
 * qmp-backup.c - the control socket's commands for pull-mode backups of
 * the volumes the daemon serves: transaction, blockdev-backup (sync=none:
 * a point-in-time view, block/filter/fleece.c), block-job-cancel and
 * query-block-jobs, with QEMU's names and shapes, so `imgtool backup
 * --qmp` drives the daemon as it drives QEMU.
 *
 * imgtool's blockdev-backup sync=none takes QEMU's arguments (job-id,
 * device, target, sync) and needs filter-node-name: the name of the view
 * node, which is what a client exports and reads (QEMU exports the
 * target, whose unwritten clusters read through to the disk; here the
 * view reads the disk itself, coordinated with the copies, so it never
 * races a guest write).  A job lives until block-job-cancel, which
 * closes the view (export it no more first) and emits
 * BLOCK_JOB_CANCELLED.
 *
 * transaction runs its actions with every node drained, so the actions
 * see one instant: no write lands between a bitmap's copy and the start
 * of a view.  When an action fails, the ones before it are undone
 * (bitmaps added are removed, views closed); others cannot be and are
 * not allowed in a transaction.  Main loop thread only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/blockdev.h"
#include "block/export/monitor.h"
#include "block/export/nbd-int.h"
#include "block/export/qmp-backup.h"

typedef struct Job {
    char *id;
    char *view;                /* the view node (held by the daemon) */
    char *device;
    uint64_t len;
    struct Job *next;
} Job;

static Job *jobs;

static Job *find_job(const char *id)
{
    for (Job *j = jobs; j; j = j->next) {
        if (strcmp(j->id, id) == 0) {
            return j;
        }
    }
    return NULL;
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int backup_start(json_t *args, Error *err)
{
    const char *dev = str(args, "device");
    const char *target = str(args, "target");
    const char *sync = str(args, "sync");
    const char *view = str(args, "filter-node-name");
    const char *id = str(args, "job-id");
    if (!dev || !target || !sync) {
        return error_setf(err, EINVAL, "Parameters 'device', 'target' and "
                          "'sync' are required");
    }
    if (strcmp(sync, "none") != 0) {
        return error_setf(err, ENOTSUP, "imgtool serve: blockdev-backup "
                          "supports sync=none only (pull-mode backups)");
    }
    if (!view) {
        return error_setf(err, EINVAL, "imgtool serve: blockdev-backup "
                          "needs filter-node-name, the point-in-time view "
                          "to export");
    }
    if (!id) {
        id = dev;
    }
    if (find_job(id)) {
        return error_setf(err, EEXIST, "Job ID '%s' already in use", id);
    }
    BlockNode *src = block_find_node(dev);
    if (!src) {
        return error_setf(err, ENOENT, "Cannot find device='%s' nor "
                          "node-name='%s'", dev, dev);
    }
    int64_t len = block_get_length(src);
    block_close(src);
    KVList kv = { 0 };
    kvlist_set(&kv, "driver", "fleece");
    kvlist_set(&kv, "node-name", view);
    kvlist_set(&kv, "file", dev);
    kvlist_set(&kv, "target", target);
    BlockNode *v = block_open(NULL, NULL, &kv, 0, err);
    kvlist_free(&kv);
    if (!v) {
        return -(err->code ? err->code : EIO);
    }
    Job *j = calloc(1, sizeof(*j));
    if (!j || !(j->id = strdup(id)) || !(j->view = strdup(view)) ||
        !(j->device = strdup(dev))) {
        if (j) {
            free(j->id);
            free(j->view);
            free(j);
        }
        block_close(v);
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = blockdev_hold(v, err);
    if (ret < 0) {
        free(j->id);
        free(j->view);
        free(j->device);
        free(j);
        return ret;
    }
    j->len = len < 0 ? 0 : (uint64_t)len;
    j->next = jobs;
    jobs = j;
    return 0;
}

static int job_cancel(const char *id, Error *err)
{
    Job **p = &jobs;
    while (*p && strcmp((*p)->id, id) != 0) {
        p = &(*p)->next;
    }
    if (!*p) {
        return error_setf(err, ENOENT, "Job '%s' not found", id);
    }
    Job *j = *p;
    int ret = blockdev_del(j->view, err);
    if (ret < 0) {
        return ret;
    }
    *p = j->next;
    json_t *ev = json_pack("{s:s, s:s, s:I, s:I, s:i}", "type", "backup",
                           "device", j->id, "len", (json_int_t)j->len,
                           "offset", (json_int_t)0, "speed", 0);
    monitor_event("BLOCK_JOB_CANCELLED", ev);
    json_decref(ev);
    free(j->id);
    free(j->view);
    free(j->device);
    free(j);
    return 0;
}

json_t *qmp_cmd_blockdev_backup(json_t *args, Error *err)
{
    return backup_start(args, err) < 0 ? NULL : json_object();
}

json_t *qmp_cmd_block_job_cancel(json_t *args, Error *err)
{
    const char *id = str(args, "device");
    if (!id) {
        error_setf(err, EINVAL, "Parameter 'device' is missing");
        return NULL;
    }
    return job_cancel(id, err) < 0 ? NULL : json_object();
}

json_t *qmp_cmd_query_block_jobs(json_t *args, Error *err)
{
    json_t *a = json_array();
    for (Job *j = jobs; a && j; j = j->next) {
        json_array_append_new(a, json_pack(
            "{s:s, s:s, s:I, s:I, s:i, s:b, s:b, s:b, s:s}", "type",
            "backup", "device", j->id, "len", (json_int_t)j->len, "offset",
            (json_int_t)0, "speed", 0, "busy", 0, "paused", 0, "ready", 0,
            "status", "running"));
    }
    return a;
}

/* imgtool's extension: where the running NBD server listens, so a
 * backup can add its export to a server the daemon runs already (QEMU
 * runs one server; the daemon's usually serves the VM). */
json_t *qmp_cmd_query_nbd_server(json_t *args, Error *err)
{
    NbdServer *s = nbd_server_current();
    if (!s || s->stopping) {
        return json_pack("{s:b}", "running", 0);
    }
    json_t *addr = json_object();
    if (s->has_addr && s->addr.type == SOCKADDR_UNIX) {
        json_object_set_new(addr, "type", json_string("unix"));
        json_object_set_new(addr, "path", json_string(s->addr.path));
    } else if (s->has_addr && s->addr.type == SOCKADDR_INET) {
        json_object_set_new(addr, "type", json_string("inet"));
        json_object_set_new(addr, "host", json_string(
            s->addr.host && *s->addr.host ? s->addr.host : "127.0.0.1"));
        json_object_set_new(addr, "port", json_string(s->addr.port));
    }
    return json_pack("{s:b, s:o, s:b}", "running", 1, "addr", addr, "tls",
                     s->tls != NULL);
}

/* ---- transaction ---- */

typedef struct Done {
    const char *type;
    json_t *data;
} Done;

static void undo(Done *d)
{
    Error e = { 0 };
    const char *class = NULL;
    if (strcmp(d->type, "block-dirty-bitmap-add") == 0) {
        json_t *a = json_pack("{s:O, s:O}", "node",
                              json_object_get(d->data, "node"), "name",
                              json_object_get(d->data, "name"));
        json_decref(qmp_dispatch("block-dirty-bitmap-remove", a, &class,
                                 &e));
        json_decref(a);
    } else if (strcmp(d->type, "blockdev-backup") == 0) {
        const char *id = str(d->data, "job-id");
        job_cancel(id ? id : str(d->data, "device"), &e);
    }
}

static bool allowed(const char *type)
{
    static const char *const ok[] = {
        "block-dirty-bitmap-add", "block-dirty-bitmap-merge",
        "block-dirty-bitmap-disable", "blockdev-backup", NULL,
    };
    for (int i = 0; ok[i]; i++) {
        if (strcmp(type, ok[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* The nodes the actions name ("node" or "device"), each once, with a
 * reference: drained, they make the transaction's one instant.  Only
 * these: a drain of every node would also have to end on the views the
 * actions open meanwhile, which it never began. */
static size_t named_nodes(json_t *actions, BlockNode **out)
{
    size_t n = 0, i;
    json_t *a;
    json_array_foreach(actions, i, a) {
        json_t *data = json_object_get(a, "data");
        const char *name = str(data, "node");
        if (!name) {
            name = str(data, "device");
        }
        BlockNode *bn = name ? block_find_node(name) : NULL;
        for (size_t k = 0; bn && k < n; k++) {
            if (out[k] == bn) {
                block_close(bn);
                bn = NULL;
            }
        }
        if (bn) {
            out[n++] = bn;
        }
    }
    return n;
}

json_t *qmp_cmd_transaction(json_t *args, Error *err)
{
    json_t *actions = json_object_get(args, "actions");
    if (!json_is_array(actions)) {
        error_setf(err, EINVAL, "Parameter 'actions' is missing");
        return NULL;
    }
    size_t n = json_array_size(actions);
    Done *done = calloc(n ? n : 1, sizeof(*done));
    if (!done) {
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    size_t i;
    json_t *a;
    json_array_foreach(actions, i, a) {
        const char *type = str(a, "type");
        if (!type || !json_is_object(json_object_get(a, "data"))) {
            error_setf(err, EINVAL, "action %zu: 'type' and 'data' are "
                       "required", i);
            free(done);
            return NULL;
        }
        if (!allowed(type)) {
            error_setf(err, ENOTSUP, "Action '%s' is not supported in a "
                       "transaction by imgtool serve", type);
            free(done);
            return NULL;
        }
    }
    BlockNode **nodes = calloc(n ? n : 1, sizeof(*nodes));
    if (!nodes) {
        free(done);
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    size_t nn = named_nodes(actions, nodes);
    int ret = 0;
    size_t ndone = 0;
    /* One instant for every action: nothing in flight on the nodes they
     * name, nothing starts there. */
    for (size_t k = 0; k < nn; k++) {
        block_drain_begin(nodes[k]);
    }
    json_array_foreach(actions, i, a) {
        const char *type = str(a, "type");
        json_t *data = json_object_get(a, "data");
        if (strcmp(type, "blockdev-backup") == 0) {
            ret = backup_start(data, err);
        } else {
            const char *class = NULL;
            json_t *r = qmp_dispatch(type, data, &class, err);
            ret = r ? 0 : -(err->code ? err->code : EIO);
            json_decref(r);
        }
        if (ret < 0) {
            break;
        }
        done[ndone].type = type;
        done[ndone].data = data;
        ndone++;
    }
    if (ret < 0) {
        while (ndone > 0) {
            undo(&done[--ndone]);
        }
    }
    for (size_t k = nn; k > 0; k--) {
        block_drain_end(nodes[k - 1]);
        block_close(nodes[k - 1]);
    }
    free(nodes);
    free(done);
    return ret < 0 ? NULL : json_object();
}

void qmp_backup_jobs_free(void)
{
    while (jobs) {
        Job *j = jobs;
        jobs = j->next;
        free(j->id);
        free(j->view);
        free(j->device);
        free(j);
    }
}
