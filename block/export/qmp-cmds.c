/*
 * qmp-cmds.c - the QMP commands of the daemon's control socket, with
 * qemu-storage-daemon's names, arguments and error texts where QEMU has
 * them.  Each takes its JSON arguments, does one thing through the
 * export layer or the block layer, and returns the "return" value.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/secret.h"
#include "block/core/tlscreds.h"
#include "block/export/blockdev.h"
#include "block/export/export.h"
#include "block/export/monitor.h"
#include "block/export/nbd.h"
#include "block/export/qmp-backup.h"

typedef json_t *QmpFn(json_t *args, Error *err);

static json_t *ok(void)
{
    return json_object();
}

static const char *str_arg(json_t *args, const char *key, Error *err)
{
    json_t *v = json_object_get(args, key);
    if (!v) {
        error_setf(err, EINVAL, "Parameter '%s' is missing", key);
        return NULL;
    }
    if (!json_is_string(v)) {
        error_setf(err, EINVAL, "Invalid parameter type for '%s', expected: "
                   "string", key);
        return NULL;
    }
    return json_string_value(v);
}

/* Flattens args and fails on anything it cannot. */
static int flat(json_t *args, KVList *out, Error *err)
{
    return qmp_flatten(args, out, err);
}

/* ---- exports ---- */

static json_t *cmd_block_export_add(json_t *args, Error *err)
{
    KVList kv = { 0 };
    int ret = flat(args, &kv, err);
    if (ret == 0) {
        ret = block_export_add(&kv, NULL, err);
    }
    kvlist_free(&kv);
    return ret < 0 ? NULL : ok();
}

static json_t *cmd_block_export_del(json_t *args, Error *err)
{
    const char *id = str_arg(args, "id", err);
    json_t *mode = json_object_get(args, "mode");
    bool hard = false;
    if (!id) {
        return NULL;
    }
    if (mode) {
        const char *m = json_string_value(mode);
        if (!m || (strcmp(m, "safe") && strcmp(m, "hard"))) {
            error_setf(err, EINVAL, "Parameter 'mode' does not accept value "
                       "'%s'", m ? m : "?");
            return NULL;
        }
        hard = strcmp(m, "hard") == 0;
    }
    return block_export_del(id, hard, err) < 0 ? NULL : ok();
}

static json_t *cmd_query_block_exports(json_t *args, Error *err)
{
    return block_export_query();
}

/* nbd-server-add {device, name?, writable?, bitmap?}: the pre-5.2 way to
 * add an NBD export, kept by QEMU; the export's id is its name. */
static json_t *cmd_nbd_server_add(json_t *args, Error *err)
{
    const char *dev = str_arg(args, "device", err);
    if (!dev) {
        return NULL;
    }
    json_t *name = json_object_get(args, "name");
    const char *n = json_is_string(name) ? json_string_value(name) : dev;
    KVList kv = { 0 };
    kvlist_set(&kv, "type", "nbd");
    kvlist_set(&kv, "id", n);
    kvlist_set(&kv, "node-name", dev);
    kvlist_set(&kv, "name", n);
    json_t *w = json_object_get(args, "writable");
    kvlist_set(&kv, "writable", json_is_true(w) ? "on" : "off");
    json_t *b = json_object_get(args, "bitmap");
    if (json_is_string(b)) {
        kvlist_set(&kv, "bitmaps.0", json_string_value(b));
    }
    const char *key;
    json_t *v;
    int ret = 0;
    json_object_foreach(args, key, v) {
        if (strcmp(key, "device") && strcmp(key, "name") &&
            strcmp(key, "writable") && strcmp(key, "bitmap") &&
            strcmp(key, "description")) {
            ret = error_setf(err, EINVAL, "Parameter '%s' is unexpected",
                             key);
        }
    }
    json_t *d = json_object_get(args, "description");
    if (json_is_string(d)) {
        kvlist_set(&kv, "description", json_string_value(d));
    }
    if (ret == 0) {
        ret = block_export_add(&kv, NULL, err);
    }
    kvlist_free(&kv);
    return ret < 0 ? NULL : ok();
}

static json_t *cmd_nbd_server_remove(json_t *args, Error *err)
{
    const char *name = str_arg(args, "name", err);
    json_t *mode = json_object_get(args, "mode");
    if (!name) {
        return NULL;
    }
    bool hard = json_is_string(mode) &&
                strcmp(json_string_value(mode), "hard") == 0;
    return block_export_del(name, hard, err) < 0 ? NULL : ok();
}

/* ---- the NBD server ---- */

static json_t *cmd_nbd_server_start(json_t *args, Error *err)
{
    KVList kv = { 0 };
    int ret = flat(args, &kv, err);
    /* QMP's nbd-server-start takes SocketAddressLegacy: addr.data.* */
    for (size_t i = 0; ret == 0 && i < kv.n; i++) {
        if (strncmp(kv.items[i].key, "addr.data.", 10) == 0) {
            char *k = NULL;
            if (asprintf(&k, "addr.%s", kv.items[i].key + 10) < 0) {
                ret = error_setf(err, ENOMEM, "out of memory");
                break;
            }
            free(kv.items[i].key);
            kv.items[i].key = k;
        }
    }
    if (ret == 0) {
        ret = nbd_server_start(&kv, err);
    }
    if (ret == 0) {
        ret = kvlist_check_unused(&kv, "nbd-server-start", err);
        if (ret < 0) {
            Error ignored = { 0 };
            nbd_server_stop(&ignored);
        }
    }
    kvlist_free(&kv);
    return ret < 0 ? NULL : ok();
}

static json_t *cmd_nbd_server_stop(json_t *args, Error *err)
{
    return nbd_server_stop(err) < 0 ? NULL : ok();
}

/* ---- nodes ---- */

static json_t *cmd_blockdev_add(json_t *args, Error *err)
{
    KVList kv = { 0 };
    int ret = flat(args, &kv, err);
    if (ret == 0) {
        ret = blockdev_add(&kv, err);
    }
    kvlist_free(&kv);
    return ret < 0 ? NULL : ok();
}

static json_t *cmd_blockdev_del(json_t *args, Error *err)
{
    const char *name = str_arg(args, "node-name", err);
    return !name || blockdev_del(name, err) < 0 ? NULL : ok();
}

static json_t *cmd_query_named_block_nodes(json_t *args, Error *err)
{
    return blockdev_query_named();
}

static BlockNode *node_arg(json_t *args, const char *key, Error *err);

/* block_resize: the node grows or shrinks (drained, so no request sees
 * half of it), then the exports serving it tell their clients (a
 * vhost-user device's config change). */
static json_t *cmd_block_resize(json_t *args, Error *err)
{
    json_t *size = json_object_get(args, "size");
    if (!size || !json_is_integer(size) || json_integer_value(size) < 0) {
        error_setf(err, EINVAL, "Parameter 'size' expects a non-negative "
                   "integer");
        return NULL;
    }
    BlockNode *n = node_arg(args, json_object_get(args, "node-name") ?
                            "node-name" : "device", err);
    if (!n) {
        return NULL;
    }
    block_drain_begin(n);
    int ret = block_truncate(n, (uint64_t)json_integer_value(size), false,
                             PREALLOC_OFF, err);
    block_drain_end(n);
    if (ret == 0) {
        block_export_node_resized(n);
    }
    block_close(n);
    return ret < 0 ? NULL : ok();
}

/* ---- dirty bitmaps ---- */

static BlockNode *node_arg(json_t *args, const char *key, Error *err)
{
    const char *name = str_arg(args, key, err);
    if (!name) {
        return NULL;
    }
    BlockNode *n = block_find_node(name);
    if (!n) {
        error_setf(err, ENOENT, "Cannot find device='%s' nor node-name='%s'",
                   name, name);
    }
    return n;
}

typedef enum { BM_ADD, BM_REMOVE, BM_CLEAR, BM_ENABLE, BM_DISABLE } BmOp;

static json_t *bitmap_op(json_t *args, BmOp op, Error *err)
{
    BlockNode *n = node_arg(args, "node", err);
    const char *name = n ? str_arg(args, "name", err) : NULL;
    int ret = -EINVAL;
    if (n && name) {
        switch (op) {
        case BM_ADD: {
            json_t *g = json_object_get(args, "granularity");
            json_t *p = json_object_get(args, "persistent");
            json_t *d = json_object_get(args, "disabled");
            if (g && !json_is_integer(g)) {
                ret = error_setf(err, EINVAL, "Invalid parameter type for "
                                 "'granularity', expected: integer");
                break;
            }
            if (p && !json_is_true(p)) {
                /* A format that stores bitmaps stores them all; a node
                 * whose format keeps none (raw) gets one in memory, as
                 * QEMU does, for as long as the daemon runs. */
                ret = block_bitmaps_make_volatile(n, err);
                if (ret < 0) {
                    break;
                }
            } else if (block_bitmaps_volatile(n)) {
                ret = error_setf(err, ENOTSUP, "Cannot store persistent "
                                 "bitmaps in %s nodes: give "
                                 "persistent=false", block_node_format(n));
                break;
            }
            ret = block_bitmap_add(n, name,
                                   g ? (uint64_t)json_integer_value(g) : 0,
                                   !json_is_true(d), err);
            break;
        }
        case BM_REMOVE:
            ret = block_bitmap_remove(n, name, err);
            break;
        case BM_CLEAR:
            ret = block_bitmap_clear(n, name, err);
            break;
        case BM_ENABLE:
        case BM_DISABLE:
            ret = block_bitmap_enable(n, name, op == BM_ENABLE, err);
            break;
        }
    }
    block_close(n);
    return ret < 0 ? NULL : ok();
}

static json_t *cmd_bm_add(json_t *a, Error *e) { return bitmap_op(a, BM_ADD, e); }
static json_t *cmd_bm_remove(json_t *a, Error *e) { return bitmap_op(a, BM_REMOVE, e); }
static json_t *cmd_bm_clear(json_t *a, Error *e) { return bitmap_op(a, BM_CLEAR, e); }
static json_t *cmd_bm_enable(json_t *a, Error *e) { return bitmap_op(a, BM_ENABLE, e); }
static json_t *cmd_bm_disable(json_t *a, Error *e) { return bitmap_op(a, BM_DISABLE, e); }

static json_t *cmd_bm_merge(json_t *args, Error *err)
{
    BlockNode *n = node_arg(args, "node", err);
    const char *target = n ? str_arg(args, "target", err) : NULL;
    json_t *srcs = json_object_get(args, "bitmaps");
    int ret = -EINVAL;
    if (n && target) {
        if (!json_is_array(srcs)) {
            ret = error_setf(err, EINVAL, "Parameter 'bitmaps' is missing");
        } else {
            size_t i;
            json_t *s;
            ret = 0;
            json_array_foreach(srcs, i, s) {
                BlockNode *sn = block_ref(n);
                const char *sname = json_string_value(s);
                if (json_is_object(s)) {
                    block_close(sn);
                    sn = node_arg(s, "node", err);
                    sname = sn ? str_arg(s, "name", err) : NULL;
                }
                if (!sn || !sname) {
                    block_close(sn);
                    ret = error_setf(err, EINVAL, "bad entry %zu in "
                                     "'bitmaps'", i);
                    break;
                }
                ret = block_bitmap_merge(n, target, sn, sname, err);
                block_close(sn);
                if (ret < 0) {
                    break;
                }
            }
        }
    }
    block_close(n);
    return ret < 0 ? NULL : ok();
}

/* ---- objects ---- */

static json_t *cmd_object_add(json_t *args, Error *err)
{
    KVList kv = { 0 };
    int ret = flat(args, &kv, err);
    char *def = NULL;
    size_t len = 0;
    FILE *f = ret == 0 ? open_memstream(&def, &len) : NULL;
    if (ret == 0 && !f) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    const char *type = ret == 0 ? kvlist_get(&kv, "qom-type") : NULL;
    if (ret == 0 && !type) {
        ret = error_setf(err, EINVAL, "Parameter 'qom-type' is missing");
    }
    if (ret == 0) {
        fprintf(f, "%s", type);
        for (size_t i = 0; i < kv.n; i++) {
            if (strcmp(kv.items[i].key, "qom-type") == 0) {
                continue;
            }
            fprintf(f, ",%s=", kv.items[i].key);
            for (const char *p = kv.items[i].value; *p; p++) {
                if (*p == ',') {
                    fputc(',', f);    /* a literal comma is ",," */
                }
                fputc(*p, f);
            }
        }
    }
    if (f) {
        fclose(f);
    }
    if (ret == 0) {
        if (strcmp(type, "secret") == 0) {
            ret = secret_define(def, err);
        } else if (tls_creds_is_def(def)) {
            ret = tls_creds_define(def, err);
        } else {
            ret = error_setf(err, EINVAL, "Invalid parameter value for "
                             "'qom-type': '%s' is not supported", type);
        }
    }
    if (def) {
        /* It may hold a secret's data. */
        memset(def, 0, len);
        free(def);
    }
    kvlist_free(&kv);
    return ret < 0 ? NULL : ok();
}

/* ---- the daemon ---- */

static json_t *cmd_query_version(json_t *args, Error *err)
{
    return json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "micro", 0, "minor",
                     2, "major", 7, "package", "imgtool 0.1.0");
}

static json_t *cmd_query_commands(json_t *args, Error *err)
{
    return qmp_command_names();
}

static json_t *cmd_quit(json_t *args, Error *err)
{
    qmp_quit();
    return ok();
}

static const struct {
    const char *name;
    QmpFn *fn;
} commands[] = {
    { "block-export-add", cmd_block_export_add },
    { "block-export-del", cmd_block_export_del },
    { "query-block-exports", cmd_query_block_exports },
    { "nbd-server-start", cmd_nbd_server_start },
    { "nbd-server-stop", cmd_nbd_server_stop },
    { "nbd-server-add", cmd_nbd_server_add },
    { "nbd-server-remove", cmd_nbd_server_remove },
    { "blockdev-add", cmd_blockdev_add },
    { "blockdev-del", cmd_blockdev_del },
    { "query-named-block-nodes", cmd_query_named_block_nodes },
    { "block_resize", cmd_block_resize },
    { "block-dirty-bitmap-add", cmd_bm_add },
    { "block-dirty-bitmap-remove", cmd_bm_remove },
    { "block-dirty-bitmap-clear", cmd_bm_clear },
    { "block-dirty-bitmap-enable", cmd_bm_enable },
    { "block-dirty-bitmap-disable", cmd_bm_disable },
    { "block-dirty-bitmap-merge", cmd_bm_merge },
    { "transaction", qmp_cmd_transaction },
    { "blockdev-backup", qmp_cmd_blockdev_backup },
    { "block-job-cancel", qmp_cmd_block_job_cancel },
    { "query-block-jobs", qmp_cmd_query_block_jobs },
    { "x-imgtool-query-nbd-server", qmp_cmd_query_nbd_server },
    { "object-add", cmd_object_add },
    { "query-version", cmd_query_version },
    { "query-commands", cmd_query_commands },
    { "quit", cmd_quit },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

const char *qmp_command_name(size_t i)
{
    return i < N_COMMANDS ? commands[i].name : NULL;
}

json_t *qmp_command_names(void)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < N_COMMANDS; i++) {
        json_array_append_new(arr, json_pack("{s:s}", "name",
                                             commands[i].name));
    }
    json_array_append_new(arr, json_pack("{s:s}", "name",
                                         "qmp_capabilities"));
    return arr;
}

json_t *qmp_dispatch(const char *name, json_t *args, const char **class,
                     Error *err)
{
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0) {
            json_t *r = commands[i].fn(args, err);
            if (!r && !error_is_set(err)) {
                error_setf(err, EIO, "command failed");
            }
            return r;
        }
    }
    *class = "CommandNotFound";
    error_setf(err, ENOENT, "The command %s has not been found", name);
    return NULL;
}
