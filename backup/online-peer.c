/*
 * online-peer.c - how a running QEMU and an imgtool serve daemon differ
 * as peers of an online backup (online.c does the rest alike): where
 * their disks are listed, which NBD server the point's exports go on,
 * and finding what a killed run of ours left behind.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/online-int.h"
#include "backup/rotate.h"

static Online *on(BkSession *s)
{
    return s->priv;
}

bool on_has_prefix(const char *s, const char *p)
{
    return s && strncmp(s, p, strlen(p)) == 0;
}

/* Removes what a killed run of this repository left in QEMU. */
void on_remove_leftovers(Online *o, const char *uuid)
{
    json_t *r = NULL;
    Error e = { 0 };
    size_t i;
    json_t *v;
    if (qmp_call(o->qmp, "query-block-exports", NULL, &r, &e) == 0) {
        json_array_foreach(r, i, v) {
            const char *id = json_string_value(json_object_get(v, "id"));
            if (on_has_prefix(id, o->tag)) {
                o->had_leftovers = true;
                error_clear(&e);
                qmp_call(o->qmp, "block-export-del",
                         json_pack("{s:s, s:s}", "id", id, "mode", "hard"),
                         NULL, &e);
                qmp_wait_event(o->qmp, "BLOCK_EXPORT_DELETED", "id", id,
                               EVENT_TIMEOUT_MS, NULL, &e);
            }
        }
    }
    json_decref(r);
    r = NULL;
    error_clear(&e);
    if (qmp_call(o->qmp, "query-block-jobs", NULL, &r, &e) == 0) {
        json_array_foreach(r, i, v) {
            const char *id = json_string_value(json_object_get(v, "device"));
            if (on_has_prefix(id, o->tag)) {
                o->had_leftovers = true;
                error_clear(&e);
                qmp_call(o->qmp, "block-job-cancel",
                         json_pack("{s:s, s:b}", "device", id, "force", 1),
                         NULL, &e);
                qmp_wait_event(o->qmp, "BLOCK_JOB_CANCELLED", "device", id,
                               EVENT_TIMEOUT_MS, NULL, &e);
            }
        }
    }
    json_decref(r);
    r = NULL;
    error_clear(&e);
    if (qmp_call(o->qmp, "query-named-block-nodes",
                 json_pack("{s:b}", "flat", 1), &r, &e) == 0) {
        json_array_foreach(r, i, v) {
            const char *n = json_string_value(json_object_get(v,
                                                              "node-name"));
            if (on_has_prefix(n, o->tag)) {
                o->had_leftovers = true;
                error_clear(&e);
                qmp_call(o->qmp, "blockdev-del",
                         json_pack("{s:s}", "node-name", n), NULL, &e);
            }
            /* frozen copies of ours (never persistent) */
            json_t *bms = json_object_get(v, "dirty-bitmaps");
            size_t k;
            json_t *b;
            json_array_foreach(bms, k, b) {
                const char *bn = json_string_value(json_object_get(b,
                                                                   "name"));
                size_t pl = strlen(BK_BITMAP_PREFIX) + strlen(uuid);
                if (on_has_prefix(bn, BK_BITMAP_PREFIX) && strlen(bn) > pl &&
                    strncmp(bn + strlen(BK_BITMAP_PREFIX), uuid,
                            strlen(uuid)) == 0 &&
                    strstr(bn + pl, ".frozen")) {
                    error_clear(&e);
                    qmp_call(o->qmp, "block-dirty-bitmap-remove",
                             json_pack("{s:s, s:s}", "node", n, "name", bn),
                             NULL, &e);
                }
            }
        }
    }
    json_decref(r);
}

/* The query-block entry for a device the user named: a qdev id, a
 * backend (drive) name, or a node name. */
json_t *on_find_device(json_t *blocks, const char *name)
{
    size_t i;
    json_t *b;
    json_array_foreach(blocks, i, b) {
        json_t *ins = json_object_get(b, "inserted");
        const char *qdev = json_string_value(json_object_get(b, "qdev"));
        const char *dev = json_string_value(json_object_get(b, "device"));
        const char *node = json_string_value(json_object_get(ins,
                                                             "node-name"));
        if (!ins) {
            continue;
        }
        if ((dev && *dev && strcmp(dev, name) == 0) ||
            (node && strcmp(node, name) == 0) ||
            (qdev && strcmp(qdev, name) == 0)) {
            return b;
        }
        /* "/machine/peripheral/NAME/virtio-backend" */
        const char *p = qdev ? strstr(qdev, "/peripheral/") : NULL;
        if (p) {
            p += strlen("/peripheral/");
            size_t n = strlen(name);
            if (strncmp(p, name, n) == 0 && (p[n] == '/' || !p[n])) {
                return b;
            }
        }
    }
    return NULL;
}

/* The daemon's nodes in query-block's shape ({"inserted": {"node-name",
 * "image", "dirty-bitmaps"}}), so one lookup serves both peers; a node
 * is also found by the name or id of an NBD export of it (the short
 * form of serve names its nodes "#blockN" and its exports after the
 * images). */
static int named_as_blocks(Online *o, json_t **out, Error *err)
{
    json_t *nodes = NULL, *exports = NULL;
    int ret = qmp_call(o->qmp, "query-named-block-nodes", NULL, &nodes, err);
    if (ret == 0) {
        ret = qmp_call(o->qmp, "query-block-exports", NULL, &exports, err);
    }
    *out = json_array();
    size_t i, k;
    json_t *n, *e;
    json_array_foreach(nodes, i, n) {
        json_t *img = json_deep_copy(json_object_get(n, "image"));
        json_t *bms = json_object_get(n, "dirty-bitmaps");
        const char *name = json_string_value(json_object_get(n,
                                                             "node-name"));
        if (img) {
            json_object_set_new(img, "format", json_incref(
                json_object_get(n, "drv")));
        }
        json_t *ins = json_pack("{s:O, s:o, s:o}", "node-name",
                                json_object_get(n, "node-name"), "image",
                                img ? img : json_object(), "dirty-bitmaps",
                                bms ? json_incref(bms) : json_array());
        json_array_append_new(*out, json_pack("{s:s, s:O}", "device", "",
                                              "inserted", ins));
        json_array_foreach(exports, k, e) {
            const char *en = json_string_value(json_object_get(e,
                                                               "node-name"));
            if (name && en && strcmp(name, en) == 0) {
                json_array_append_new(*out, json_pack(
                    "{s:O, s:O, s:O}", "device", json_object_get(e, "name"),
                    "qdev", json_object_get(e, "id"), "inserted", ins));
            }
        }
        json_decref(ins);
    }
    json_decref(nodes);
    json_decref(exports);
    return ret;
}

/* Our NBD server, on the point's socket. */
static int start_server(Online *o, Error *err)
{
    int ret = qmp_call(o->qmp, "nbd-server-start",
                       json_pack("{s:{s:s, s:{s:s}}}", "addr", "type",
                                 "unix", "data", "path", o->sock), NULL,
                       err);
    if (ret < 0) {
        return ret;
    }
    o->server_started = true;
    o->url_head = strdup("nbd+unix:///");
    if (asprintf(&o->url_tail, "?socket=%s", o->sock) < 0) {
        o->url_tail = NULL;
    }
    if (!o->url_head || !o->url_tail) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

/* QEMU runs one NBD server.  When a killed run of ours left its
 * overlays behind, the server running is most likely its too. */
static int qemu_nbd_server(BkSession *s, Error *err)
{
    Online *o = on(s);
    int ret = start_server(o, err);
    if (ret < 0 && o->had_leftovers) {
        Error e = { 0 };
        error_clear(err);
        qmp_call(o->qmp, "nbd-server-stop", NULL, NULL, &e);
        ret = start_server(o, err);
    }
    return ret;
}

/* The daemon's NBD server, when it runs one (it usually serves the VM),
 * takes our exports too; one on a socket in this repository is what a
 * killed run of ours left, and gives way to ours. */
static int serve_nbd_server(BkSession *s, Error *err)
{
    Online *o = on(s);
    json_t *info = NULL;
    int ret = qmp_call(o->qmp, "x-imgtool-query-nbd-server", NULL, &info,
                       err);
    if (ret < 0) {
        return ret;
    }
    json_t *addr = json_object_get(info, "addr");
    const char *type = json_string_value(json_object_get(addr, "type"));
    const char *path = json_string_value(json_object_get(addr, "path"));
    size_t rl = strlen(s->r->path);
    if (!json_is_true(json_object_get(info, "running"))) {
        ret = start_server(o, err);
    } else if (type && strcmp(type, "unix") == 0 && path &&
               strncmp(path, s->r->path, rl) == 0 && path[rl] == '/') {
        Error e = { 0 };
        qmp_call(o->qmp, "nbd-server-stop", NULL, NULL, &e);
        ret = start_server(o, err);
    } else if (json_is_true(json_object_get(info, "tls")) &&
               !s->o->tls_creds) {
        ret = error_setf(err, EACCES, "the daemon's NBD server requires "
                         "TLS: give --tls-creds ID (with --object "
                         "tls-creds-x509 or tls-creds-psk,...,"
                         "endpoint=client)");
    } else if (type && strcmp(type, "unix") == 0 && path) {
        o->url_head = strdup("nbd+unix:///");
        if (asprintf(&o->url_tail, "?socket=%s", path) < 0) {
            o->url_tail = NULL;
        }
    } else if (type && strcmp(type, "inet") == 0) {
        const char *host = json_string_value(json_object_get(addr, "host"));
        const char *port = json_string_value(json_object_get(addr, "port"));
        if (asprintf(&o->url_head, "nbd://%s:%s/", host ? host : "",
                     port ? port : "") < 0) {
            o->url_head = NULL;
        }
        o->url_tail = strdup("");
    } else {
        ret = error_setf(err, EPROTO, "the daemon's NBD server has an "
                         "address backups cannot reach");
    }
    if (ret == 0 && (!o->url_head || !o->url_tail)) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    json_decref(info);
    return ret;
}

int on_nbd_server(BkSession *s, Error *err)
{
    return on(s)->is_serve ? serve_nbd_server(s, err)
                           : qemu_nbd_server(s, err);
}

int on_query_disks(Online *o, json_t **out, Error *err)
{
    /* QEMU names disks by device; the daemon has nodes only. */
    return o->is_serve ? named_as_blocks(o, out, err)
                       : qmp_call(o->qmp, "query-block", NULL, out, err);
}
