/*
 * online.c - the disks of a running VM, through its QMP socket (pull
 * mode with a fleecing overlay; source.h says what each step does).
 *
 * begin, for every disk in one QMP transaction (so several disks are
 * one point in time):
 *   - block-dirty-bitmap-add the new point's bitmap (persistent for
 *     qcow2; in QEMU's memory only for raw disks, which then keep
 *     incrementals for as long as the VM runs);
 *   - with a usable base bitmap: a disabled copy of it (add + merge), the
 *     frozen set of changes at that instant (QEMU exports only disabled
 *     bitmaps, and the base's must keep recording for differentials);
 *   - blockdev-backup sync=none from the disk into a fleecing overlay (a
 *     local qcow2 whose backing node is the disk): before the guest
 *     overwrites a cluster, QEMU copies the old one into the overlay, so
 *     the overlay reads as the disk did at the transaction, and guest
 *     writes wait for that local copy only, never for the backup target.
 * The overlays are exported over NBD (a UNIX socket in the point's
 * directory) with the frozen bitmaps, and read through imgtool's NBD
 * client: data with base:allocation, the changes through the
 * qemu:dirty-bitmap context.  The guest agent, when given, freezes the
 * guest's filesystems around the transaction only.
 *
 * Cleanup, on success, failure or interruption alike: the export, the
 * NBD server, the backup job, the overlay node and file, the frozen
 * bitmaps; on failure also the new bitmap (the base's never changed).
 * What a killed imgtool left behind (names carry the repository's id)
 * is removed by the next backup of the repository before it starts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup/online-int.h"
#include "backup/rotate.h"

static Online *on(BkSession *s)
{
    return s->priv;
}

/* "imgtool-" and the repository uuid's first 8 hex digits: QEMU node
 * names may be 31 characters. */
static char *make_tag(const char *uuid)
{
    char *t = NULL;
    return asprintf(&t, "imgtool-%.8s", uuid) < 0 ? NULL : t;
}

static int on_open(BkSession *s, Error *err)
{
    Online *o = calloc(1, sizeof(*o));
    json_t *blocks = NULL;
    int ret;

    if (!o) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    s->priv = o;
    if (!(o->d = calloc((size_t)s->ndisks, sizeof(*o->d))) ||
        !(o->tag = make_tag(s->r->uuid)) ||
        asprintf(&o->sock, "%s/nbd.sock", s->workdir) < 0) {
        o->sock = NULL;
        return error_setf(err, ENOMEM, "out of memory");
    }
    ret = qmp_connect(s->o->qmp_socket, &o->qmp, err);
    if (ret < 0) {
        return ret;
    }
    json_t *ver = NULL;
    Error ve = { 0 };
    if (qmp_call(o->qmp, "query-version", NULL, &ver, &ve) == 0) {
        o->is_serve = on_has_prefix(json_string_value(json_object_get(
                                     ver, "package")), "imgtool");
    }
    json_decref(ver);
    on_remove_leftovers(o, s->r->uuid);
    ret = on_query_disks(o, &blocks, err);
    for (int i = 0; ret == 0 && i < s->ndisks; i++) {
        BkSrcDisk *d = &s->disks[i];
        json_t *b = on_find_device(blocks, d->name);
        if (!b) {
            ret = error_setf(err, ENOENT, "%s: the VM has no disk '%s' (a "
                             "device id, drive or node name; query-block "
                             "lists them)", s->o->qmp_socket, d->name);
            break;
        }
        json_t *ins = json_object_get(b, "inserted");
        json_t *img = json_object_get(ins, "image");
        const char *node = json_string_value(json_object_get(ins,
                                                             "node-name"));
        const char *fmt = json_string_value(json_object_get(img, "format"));
        json_int_t size = json_integer_value(json_object_get(img,
                                                             "virtual-size"));
        if (!node || size <= 0) {
            ret = error_setf(err, EPROTO, "%s: disk '%s': query-block does "
                             "not say its node or size", s->o->qmp_socket,
                             d->name);
            break;
        }
        o->d[i].node = strdup(node);
        o->d[i].bitmaps = json_incref(json_object_get(ins, "dirty-bitmaps"));
        d->format = strdup(fmt ? fmt : "raw");
        d->size = (uint64_t)size;
        d->can_bitmaps = true;
        d->persistent = fmt && strcmp(fmt, "qcow2") == 0;
        if (!o->d[i].node || !d->format) {
            ret = error_setf(err, ENOMEM, "out of memory");
        }
    }
    json_decref(blocks);
    return ret;
}

static json_t *find_bitmap(json_t *bms, const char *name)
{
    size_t i;
    json_t *b;
    json_array_foreach(bms, i, b) {
        const char *n = json_string_value(json_object_get(b, "name"));
        if (n && strcmp(n, name) == 0) {
            return b;
        }
    }
    return NULL;
}

static int on_bitmap_usable(BkSession *s, int i, const char *base_id,
                            char **reason, Error *err)
{
    Online *o = on(s);
    char *want = bk_bitmap_name(s->r->uuid, base_id);
    int r = 0;
    *reason = NULL;
    if (!want) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    json_t *b = find_bitmap(o->d[i].bitmaps, want);
    if (b && json_is_true(json_object_get(b, "inconsistent"))) {
        r = asprintf(reason, "its bitmap %s is inconsistent (the VM was not "
                     "shut down cleanly)", want);
    } else if (b && json_is_false(json_object_get(b, "recording"))) {
        r = asprintf(reason, "its bitmap %s is disabled, so it did not "
                     "record every change", want);
    } else if (b && json_is_true(json_object_get(b, "busy"))) {
        r = asprintf(reason, "its bitmap %s is busy (another job uses it)",
                     want);
    } else if (!b) {
        r = asprintf(reason, "its bitmap %s is missing%s", want,
                     s->disks[i].persistent
                         ? "" : " (a raw disk's bitmap lives only as long "
                                "as the VM's QEMU)");
    }
    free(want);
    if (r < 0) {
        *reason = NULL;
        return error_setf(err, ENOMEM, "out of memory");
    }
    return *reason ? 0 : 1;
}

/* Before the transaction: ours that cannot be used (inconsistent) or
 * that no point needs (a killed run's, which may even bear the new
 * point's name) go; QEMU keeps them in memory, so this needs no care
 * for crashes. */
static int remove_stale(BkSession *s, int i, const char *const *keep,
                        Error *err)
{
    Online *o = on(s);
    char *prefix = bk_bitmap_name(s->r->uuid, "");
    size_t k;
    json_t *b;
    int ret = prefix ? 0 : error_setf(err, ENOMEM, "out of memory");
    json_array_foreach(o->d[i].bitmaps, k, b) {
        const char *n = json_string_value(json_object_get(b, "name"));
        if (ret < 0 || !prefix || !on_has_prefix(n, prefix)) {
            continue;
        }
        const char *id = n + strlen(prefix);
        bool kept = false;
        for (int x = 0; x < BK_KEEP && !kept; x++) {
            kept = keep[BK_KEEP * i + x] &&
                   strcmp(id, keep[BK_KEEP * i + x]) == 0;
        }
        if (!kept || json_is_true(json_object_get(b, "inconsistent"))) {
            ret = qmp_call(o->qmp, "block-dirty-bitmap-remove",
                           json_pack("{s:s, s:s}", "node", o->d[i].node,
                                     "name", n), NULL, err);
        }
    }
    free(prefix);
    return ret;
}

static int freeze(BkSession *s, QmpClient **qga, Error *err)
{
    *qga = NULL;
    if (!s->o->qga_socket) {
        return 0;
    }
    json_t *n = NULL;
    int ret = qga_connect(s->o->qga_socket, qga, err);
    if (ret == 0) {
        ret = qmp_call(*qga, "guest-fsfreeze-freeze", NULL, &n, err);
    }
    if (ret == 0) {
        /* How many filesystems the agent froze: the record says so. */
        if (!s->record_extra) {
            s->record_extra = json_object();
        }
        json_object_set_new(s->record_extra, "guest-frozen",
                            json_integer(json_integer_value(n)));
    }
    json_decref(n);
    if (ret < 0) {
        error_prefixf(err, "guest agent %s", s->o->qga_socket);
    }
    return ret;
}

static void thaw(QmpClient *qga)
{
    if (qga) {
        Error e = { 0 };
        qmp_call(qga, "guest-fsfreeze-thaw", NULL, NULL, &e);
        qmp_close(qga);
    }
}

/* The NBD bitmap context, as QEMU's client reports it: a dirty range has
 * no DATA. */
static int nbd_select(void *opaque, uint64_t off, uint64_t len,
                      uint64_t *pnum, Error *err)
{
    BlockNode *n = opaque;
    int st = block_status(n, off, len, pnum, NULL, NULL);
    if (st < 0) {
        return error_setf(err, -st, "cannot read the dirty bitmap through "
                          "NBD at byte %llu: %s", (unsigned long long)off,
                          strerror(-st));
    }
    return !(st & BLOCK_STATUS_DATA);
}

static int on_begin(BkSession *s, const char *new_id,
                    const char *const *use_bitmap, const char *const *keep,
                    Error *err)
{
    Online *o = on(s);
    const char *tmp = s->o->fleece_dir ? s->o->fleece_dir : s->workdir;
    json_t *actions = json_array();
    QmpClient *qga = NULL;
    int ret = 0;

    for (int i = 0; i < s->ndisks && ret == 0; i++) {
        BkSrcDisk *d = &s->disks[i];
        OnDisk *od = &o->d[i];
        if (asprintf(&od->fleece_node, "%s-f%d", o->tag, i) < 0 ||
            asprintf(&od->export, "%s-e%d", o->tag, i) < 0 ||
            asprintf(&od->job, "%s-j%d", o->tag, i) < 0 ||
            asprintf(&od->fleece_file, "%s/fleece-%d.qcow2", tmp, i) < 0) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        ret = remove_stale(s, i, keep, err);
        if (ret < 0) {
            break;
        }
        /* The overlay: a local qcow2 the disk's old clusters go to. */
        KVList copts = { 0 };
        kvlist_set(&copts, "cluster_size", "65536");
        ret = block_create("qcow2", od->fleece_file, d->size, true, &copts,
                           BLOCK_CREATE_QUIET, err);
        kvlist_free(&copts);
        if (ret < 0) {
            break;
        }
        json_t *add = json_pack("{s:s, s:s, s:{s:s, s:s}}",
                                "driver", "qcow2",
                                "node-name", od->fleece_node,
                                "file", "driver", "file",
                                "filename", od->fleece_file);
        if (!o->is_serve) {
            /* QEMU: the overlay reads through to the disk. */
            json_object_set_new(add, "backing", json_string(od->node));
        } else if (asprintf(&od->view, "%s-v%d", o->tag, i) < 0) {
            od->view = NULL;
            json_decref(add);
            return error_setf(err, ENOMEM, "out of memory");
        }
        ret = qmp_call(o->qmp, "blockdev-add", add, NULL, err);
        if (ret < 0) {
            break;
        }
        char *name = bk_bitmap_name(s->r->uuid, new_id);
        json_array_append_new(actions, json_pack(
            "{s:s, s:{s:s, s:s, s:i, s:b}}", "type", "block-dirty-bitmap-add",
            "data", "node", od->node, "name", name, "granularity",
            1 << BK_CLUSTER_BITS, "persistent", d->persistent));
        free(name);
        if (use_bitmap[i]) {
            char *base = bk_bitmap_name(s->r->uuid, use_bitmap[i]);
            if (!base || asprintf(&od->frozen, "%s.frozen", base) < 0) {
                free(base);
                return error_setf(err, ENOMEM, "out of memory");
            }
            /* QEMU keeps it in memory; the daemon stores every bitmap
             * of a qcow2 (a leftover is removed by name at the next
             * run). */
            json_array_append_new(actions, json_pack(
                "{s:s, s:{s:s, s:s, s:i, s:b, s:b}}",
                "type", "block-dirty-bitmap-add", "data", "node", od->node,
                "name", od->frozen, "granularity", 1 << BK_CLUSTER_BITS,
                "persistent", o->is_serve && d->persistent, "disabled", 1));
            json_array_append_new(actions, json_pack(
                "{s:s, s:{s:s, s:s, s:[s]}}",
                "type", "block-dirty-bitmap-merge", "data", "node", od->node,
                "target", od->frozen, "bitmaps", base));
            free(base);
        }
        json_t *bk = json_pack("{s:s, s:s, s:s, s:s}", "job-id", od->job,
                               "device", od->node, "target",
                               od->fleece_node, "sync", "none");
        if (od->view) {
            /* The daemon's point-in-time view (block/filter/fleece.c). */
            json_object_set_new(bk, "filter-node-name",
                                json_string(od->view));
        }
        json_array_append_new(actions, json_pack(
            "{s:s, s:o}", "type", "blockdev-backup", "data", bk));
    }
    if (ret == 0) {
        ret = freeze(s, &qga, err);
    }
    if (ret == 0) {
        ret = qmp_call(o->qmp, "transaction",
                       json_pack("{s:O}", "actions", actions), NULL, err);
        thaw(qga);
    }
    json_decref(actions);
    if (ret < 0) {
        return ret;
    }
    for (int i = 0; i < s->ndisks; i++) {
        o->d[i].added = o->d[i].job_started = true;
    }
    ret = on_nbd_server(s, err);
    if (ret < 0) {
        error_prefixf(err, "%s", s->o->qmp_socket);
        return ret;
    }
    for (int i = 0; i < s->ndisks && ret == 0; i++) {
        OnDisk *od = &o->d[i];
        BkSrcDisk *d = &s->disks[i];
        json_t *bms = json_array();
        if (od->frozen) {
            json_array_append_new(bms, json_pack("{s:s, s:s}", "node",
                                                 od->node, "name",
                                                 od->frozen));
        }
        ret = qmp_call(o->qmp, "block-export-add",
                       json_pack("{s:s, s:s, s:s, s:s, s:b, s:o}",
                                 "type", "nbd", "id", od->export,
                                 "node-name", od->view ? od->view
                                                       : od->fleece_node,
                                 "name", od->export, "writable", 0,
                                 "bitmaps", bms), NULL, err);
        if (ret < 0) {
            break;
        }
        od->exported = true;
        char *url = NULL;
        if (asprintf(&url, "%s%s%s", o->url_head, od->export,
                     o->url_tail) < 0) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        /* The peer's server may require TLS (imgtool serve
         * --tls-creds): both connections present the client's creds. */
        const char *tls = s->o->tls_creds;
        KVList ropts = { 0 };
        if (tls) {
            kvlist_set(&ropts, "file.tls-creds", tls);
        }
        d->node = block_open(url, "raw", &ropts, 0, err);
        kvlist_free(&ropts);
        if (d->node && od->frozen) {
            KVList opts = { 0 };
            char *ctx = NULL;
            if (asprintf(&ctx, "qemu:dirty-bitmap:%s", od->frozen) >= 0) {
                kvlist_set(&opts, "x-dirty-bitmap", ctx);
                if (tls) {
                    kvlist_set(&opts, "tls-creds", tls);
                }
                od->bm_node = block_open_protocol(url, &opts, 0, err);
            }
            free(ctx);
            kvlist_free(&opts);
            if (od->bm_node) {
                d->select = nbd_select;
                d->select_opaque = od->bm_node;
            }
        }
        free(url);
        if (!d->node || (od->frozen && !od->bm_node)) {
            ret = -(err->code ? err->code : EIO);
        }
    }
    return ret;
}

/* Everything begin put in QEMU but the new bitmap; idempotent. */
static void teardown(BkSession *s)
{
    Online *o = on(s);
    Error e = { 0 };
    if (!o || o->torn_down || !o->qmp || !o->d) {
        return;
    }
    o->torn_down = true;
    for (int i = 0; i < s->ndisks; i++) {
        block_close(s->disks[i].node);
        s->disks[i].node = NULL;
        block_close(o->d[i].bm_node);
        o->d[i].bm_node = NULL;
    }
    for (int i = 0; i < s->ndisks; i++) {
        OnDisk *od = &o->d[i];
        if (od->exported) {
            error_clear(&e);
            if (qmp_call(o->qmp, "block-export-del",
                         json_pack("{s:s}", "id", od->export), NULL,
                         &e) == 0) {
                qmp_wait_event(o->qmp, "BLOCK_EXPORT_DELETED", "id",
                               od->export, EVENT_TIMEOUT_MS, NULL, &e);
            }
        }
    }
    if (o->server_started) {
        error_clear(&e);
        qmp_call(o->qmp, "nbd-server-stop", NULL, NULL, &e);
    }
    for (int i = 0; i < s->ndisks; i++) {
        OnDisk *od = &o->d[i];
        if (od->job_started) {
            error_clear(&e);
            if (qmp_call(o->qmp, "block-job-cancel",
                         json_pack("{s:s, s:b}", "device", od->job, "force",
                                   1), NULL, &e) == 0) {
                qmp_wait_event(o->qmp, "BLOCK_JOB_CANCELLED", "device",
                               od->job, EVENT_TIMEOUT_MS, NULL, &e);
            }
        }
        if (od->fleece_node) {
            error_clear(&e);
            qmp_call(o->qmp, "blockdev-del",
                     json_pack("{s:s}", "node-name", od->fleece_node), NULL,
                     &e);
        }
        if (od->frozen && od->added) {
            error_clear(&e);
            qmp_call(o->qmp, "block-dirty-bitmap-remove",
                     json_pack("{s:s, s:s}", "node", od->node, "name",
                               od->frozen), NULL, &e);
        }
        if (od->fleece_file) {
            unlink(od->fleece_file);
        }
    }
}

static int on_finish(BkSession *s, const char *const *keep, Error *err)
{
    Online *o = on(s);
    int ret = 0;
    teardown(s);
    /* Rotation step 2: ours but the kept ones go. */
    json_t *blocks = NULL;
    ret = on_query_disks(o, &blocks, err);
    for (int i = 0; ret == 0 && i < s->ndisks; i++) {
        json_t *b = on_find_device(blocks, s->disks[i].name);
        size_t k;
        json_t *bm;
        char *prefix = bk_bitmap_name(s->r->uuid, "");
        json_array_foreach(json_object_get(json_object_get(b, "inserted"),
                                           "dirty-bitmaps"), k, bm) {
            const char *n = json_string_value(json_object_get(bm, "name"));
            if (!prefix || !on_has_prefix(n, prefix)) {
                continue;
            }
            const char *id = n + strlen(prefix);
            bool kept = false;
            for (int k = 0; k < BK_KEEP && !kept; k++) {
                const char *x = keep[BK_KEEP * i + k];
                kept = x && strcmp(id, x) == 0;
            }
            if (kept) {
                continue;
            }
            ret = qmp_call(o->qmp, "block-dirty-bitmap-remove",
                           json_pack("{s:s, s:s}", "node", o->d[i].node,
                                     "name", n), NULL, err);
            if (ret < 0) {
                break;
            }
        }
        free(prefix);
    }
    json_decref(blocks);
    return ret;
}

static void on_abort(BkSession *s, const char *new_id)
{
    Online *o = on(s);
    teardown(s);
    for (int i = 0; o && o->qmp && i < s->ndisks; i++) {
        if (o->d[i].added) {
            char *name = bk_bitmap_name(s->r->uuid, new_id);
            Error e = { 0 };
            if (name) {
                qmp_call(o->qmp, "block-dirty-bitmap-remove",
                         json_pack("{s:s, s:s}", "node", o->d[i].node,
                                   "name", name), NULL, &e);
            }
            free(name);
        }
    }
}

static void on_close(BkSession *s)
{
    Online *o = s->priv;
    if (!o) {
        return;
    }
    teardown(s);
    for (int i = 0; o->d && i < s->ndisks; i++) {
        OnDisk *od = &o->d[i];
        free(od->node);
        free(od->fleece_node);
        free(od->fleece_file);
        free(od->export);
        free(od->job);
        free(od->frozen);
        free(od->view);
        json_decref(od->bitmaps);
        free(s->disks[i].format);
    }
    qmp_close(o->qmp);
    free(o->d);
    free(o->tag);
    free(o->sock);
    free(o->url_head);
    free(o->url_tail);
    free(o);
    s->priv = NULL;
}

const BkSourceOps bk_online_source = {
    .origin = "qmp",
    .open = on_open,
    .bitmap_usable = on_bitmap_usable,
    .begin = on_begin,
    .finish = on_finish,
    .abort = on_abort,
    .close = on_close,
};
