/*
 * nbd-export.c - the "nbd" export type: a node offered under a name by
 * the running NBD server (nbd-server.c), with QEMU's options
 *   name=NAME (default: the node name), description=TEXT,
 *   bitmaps.N=BITMAP (or bitmaps.N.node=NODE,bitmaps.N.name=BITMAP;
 *   QEMU 5's bitmap=BITMAP too), allocation-depth=on|off,
 *   multi-conn=auto|on|off (imgtool's: auto offers it whenever one
 *   flush covers every connection, which is always the case for a node
 *   this process owns, unless the storage below is remote and says no).
 *
 * Invariants:
 *  - the export is in its server's name table from create until free;
 *    once shutting down it is no longer found by name, so new clients
 *    cannot bind to it;
 *  - n_conns counts the connections bound to it until they are freed
 *    (their requests have ended): the shutdown is complete at 0.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/nbd-int.h"

static unsigned long next_serial = 1;

uint16_t nbd_export_tflags(const NbdExport *e, bool structured)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                 NBD_FLAG_SEND_CACHE;
    if (e->be->writable) {
        /* The core emulates what a node lacks (FUA by a flush, zeroes
         * by writing them); fast zero fails with ENOTSUP when it
         * cannot be fast, which is what the flag promises. */
        f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
             NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    } else {
        f |= NBD_FLAG_READ_ONLY;
    }
    if (structured) {
        f |= NBD_FLAG_SEND_DF;
    }
    if (e->multi_conn) {
        f |= NBD_FLAG_CAN_MULTI_CONN;
    }
    return f;
}

void nbd_export_conn_add(NbdExport *e, NbdConn *c)
{
    e->n_conns++;
}

void nbd_export_conn_del(NbdExport *e)
{
    if (--e->n_conns == 0 && e->shutting_down) {
        block_export_shutdown_done(e->be);
    }
}

/* The node (the export's or one below it in its backing chain) that
 * holds bitmap `name`. */
static BlockNode *bitmap_holder(BlockNode *top, const char *name)
{
    for (int d = 0; top && d <= BLOCK_MAX_CHAIN; d++) {
        bool dirty;
        uint64_t pnum;
        if (block_bitmap_dirty_range(top, name, 0, 0, &dirty, &pnum,
                                     NULL) == 0) {
            return top;
        }
        top = block_backing(top);
    }
    return NULL;
}

static int add_bitmap(NbdExport *e, const char *node_name, const char *name,
                      Error *err)
{
    BlockNode *holder = NULL;
    if (node_name) {
        BlockNode *n = block_find_node(node_name);
        if (!n) {
            return error_setf(err, ENOENT, "Cannot find node '%s'",
                              node_name);
        }
        Error e2 = { 0 };
        bool dirty;
        uint64_t pnum;
        if (block_bitmap_dirty_range(n, name, 0, 0, &dirty, &pnum,
                                     &e2) == 0) {
            holder = n;
        }
        /* The export's graph keeps it alive; no reference of ours. */
        block_close(n);
        if (!holder) {
            return error_setf(err, e2.code ? e2.code : ENOENT, "%s",
                              e2.msg[0] ? e2.msg : "bitmap not found");
        }
    } else {
        holder = bitmap_holder(e->be->node, name);
        if (!holder) {
            Error e2 = { 0 };
            bool dirty;
            uint64_t pnum;
            block_bitmap_dirty_range(e->be->node, name, 0, 0, &dirty, &pnum,
                                     &e2);
            if (e2.code == EBUSY) {
                return error_setf(err, EBUSY, "%s", e2.msg);
            }
            return error_setf(err, ENOENT, "Bitmap '%s' is not found", name);
        }
    }
    for (int i = 0; i < e->n_bitmaps; i++) {
        if (strcmp(e->bitmaps[i].name, name) == 0) {
            return error_setf(err, EEXIST, "Bitmap '%s' is exported twice",
                              name);
        }
    }
    NbdBitmap *v = realloc(e->bitmaps, (size_t)(e->n_bitmaps + 1) *
                                       sizeof(*v));
    if (!v) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    e->bitmaps = v;
    v[e->n_bitmaps].name = strdup(name);
    v[e->n_bitmaps].node = holder;
    if (!v[e->n_bitmaps].name) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    e->n_bitmaps++;
    return 0;
}

static int take_bitmaps(NbdExport *e, KVList *opts, Error *err)
{
    const char *legacy = kvlist_get(opts, "bitmap");
    if (legacy) {
        int ret = add_bitmap(e, NULL, legacy, err);
        if (ret < 0) {
            return ret;
        }
    }
    for (int i = 0; i < 1024; i++) {
        char k[64], kn[64], kb[64];
        snprintf(k, sizeof(k), "bitmaps.%d", i);
        snprintf(kn, sizeof(kn), "bitmaps.%d.node", i);
        snprintf(kb, sizeof(kb), "bitmaps.%d.name", i);
        const char *plain = kvlist_get(opts, k);
        const char *node = kvlist_get(opts, kn);
        const char *name = kvlist_get(opts, kb);
        if (!plain && !node && !name) {
            break;
        }
        if (plain && (node || name)) {
            return error_setf(err, EINVAL, "Parameter 'bitmaps.%d' is "
                              "given twice", i);
        }
        if (!plain && (!node || !name)) {
            return error_setf(err, EINVAL, "Parameter 'bitmaps.%d.%s' is "
                              "missing", i, node ? "name" : "node");
        }
        int ret = add_bitmap(e, plain ? NULL : node, plain ? plain : name,
                             err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static void export_free(BlockExport *be)
{
    NbdExport *e = be->opaque;
    if (e->server) {
        nbd_server_export_gone(e->server, e);
    }
    for (int i = 0; i < e->n_bitmaps; i++) {
        free(e->bitmaps[i].name);
    }
    free(e->bitmaps);
    free(e->name);
    free(e->description);
}

static int nbd_export_create(BlockExport *be, KVList *opts, Error *err)
{
    NbdExport *e = be->opaque;
    NbdServer *s = nbd_server_current();
    e->be = be;
    if (!s) {
        return error_setf(err, ENOENT, "NBD server not running");
    }
    const char *name = kvlist_get(opts, "name");
    const char *desc = kvlist_get(opts, "description");
    const char *mc = kvlist_get(opts, "multi-conn");
    if (!name) {
        name = block_export_node_name(be);
    }
    if (strlen(name) > NBD_MAX_STRING) {
        return error_setf(err, EINVAL, "export name '%.64s...' too long",
                          name);
    }
    if (desc && strlen(desc) > NBD_MAX_STRING) {
        return error_setf(err, EINVAL, "description '%.64s...' too long",
                          desc);
    }
    if (nbd_server_find_export(s, name)) {
        return error_setf(err, EEXIST, "NBD server already has export "
                          "named '%s'", name);
    }
    int ret = kvlist_get_bool(opts, "allocation-depth", false,
                              &e->allocation_depth, err);
    if (ret < 0) {
        return ret;
    }
    BlockNode *storage = block_node_storage(be->node);
    e->multi_conn = !be->writable || !storage ||
                    block_node_can_multi_conn(storage);
    if (mc && strcmp(mc, "auto") != 0) {
        ret = kvlist_get_bool(opts, "multi-conn", false, &e->multi_conn,
                              err);
        if (ret < 0) {
            return error_setf(err, EINVAL, "Parameter 'multi-conn' expects "
                              "'auto', 'on' or 'off'");
        }
    }
    int64_t size = block_get_length(be->node);
    if (size < 0) {
        return error_setf(err, (int)-size, "cannot get the size of '%s'",
                          block_export_node_name(be));
    }
    e->size = (uint64_t)size;
    e->name = strdup(name);
    e->description = desc ? strdup(desc) : NULL;
    if (!e->name || (desc && !e->description)) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    ret = take_bitmaps(e, opts, err);
    if (ret < 0) {
        return ret;
    }
    return 0;
}

static int nbd_export_start(BlockExport *be, Error *err)
{
    NbdExport *e = be->opaque;
    NbdServer *s = nbd_server_current();
    if (!s) {
        return error_setf(err, ENOENT, "NBD server not running");
    }
    e->serial = next_serial++;
    e->server = s;
    e->next = s->exports;
    s->exports = e;
    return 0;
}

static void nbd_export_shutdown(BlockExport *be, bool hard)
{
    NbdExport *e = be->opaque;
    e->shutting_down = true;
    if (e->n_conns == 0) {
        block_export_shutdown_done(be);
        return;
    }
    /* Without hard the registry only gets here with no clients; those
     * bound meanwhile (none: the loop is this thread) would be closed
     * the same way. */
    NbdConn *c = e->server->conns;
    while (c) {
        if (c->exp != e || c->closed) {
            c = c->next;
            continue;
        }
        nbd_conn_ref(c);
        nbd_conn_close(c, true);
        NbdConn *next = c->next;
        nbd_conn_unref(c);
        c = next;
    }
}

static bool nbd_export_in_use(BlockExport *be)
{
    NbdExport *e = be->opaque;
    return e->n_conns > 0;
}

static void nbd_export_query(BlockExport *be, json_t *entry)
{
    NbdExport *e = be->opaque;
    json_object_set_new(entry, "name", json_string(e->name));
    json_object_set_new(entry, "clients", json_integer(e->n_conns));
    json_object_set_new(entry, "writable", json_boolean(be->writable));
}

const BlockExportDriver nbd_export_driver = {
    .api_version = BLOCK_EXPORT_API_VERSION,
    .type = "nbd",
    .instance_size = sizeof(NbdExport),
    .create = nbd_export_create,
    .start = nbd_export_start,
    .shutdown = nbd_export_shutdown,
    .free = export_free,
    .in_use = nbd_export_in_use,
    .query = nbd_export_query,
};
