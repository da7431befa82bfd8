/*
 * blockdev.c - nodes held by the daemon (blockdev.h) and flattening
 * QMP JSON into key=value lists.
 *
 * Invariants: every entry of `held` owns one reference to its node; a
 * node appears at most once (node names are unique).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/blockdev.h"
#include "block/export/export.h"

#define FLATTEN_MAX_DEPTH 16

typedef struct Held {
    BlockNode *node;
    struct Held *next;
} Held;

static Held *held;

/* ------------------------------------------------------------------ */
/* JSON to KVList                                                      */

static int flatten(json_t *v, const char *key, int depth, KVList *out,
                   Error *err);

/* A member (name) or element (its index) of the object or array at key:
 * flattened under "key.name", or "name" at the top. */
static int flatten_under(json_t *sub, const char *key, const char *name,
                         int depth, KVList *out, Error *err)
{
    char *full = NULL;
    if (asprintf(&full, "%s%s%s", key, *key ? "." : "", name) < 0) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = flatten(sub, full, depth + 1, out, err);
    free(full);
    return ret;
}

static int flatten(json_t *v, const char *key, int depth, KVList *out,
                   Error *err)
{
    char num[32];
    const char *val = NULL;
    if (depth > FLATTEN_MAX_DEPTH) {
        return error_setf(err, EINVAL, "options nested too deeply");
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *sub;
        json_object_foreach(v, k, sub) {
            int ret = flatten_under(sub, key, k, depth, out, err);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *sub;
        json_array_foreach(v, i, sub) {
            char idx[32];
            snprintf(idx, sizeof(idx), "%zu", i);
            int ret = flatten_under(sub, key, idx, depth, out, err);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    case JSON_STRING:
        val = json_string_value(v);
        break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(v));
        val = num;
        break;
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        val = num;
        break;
    case JSON_TRUE:
        val = "on";
        break;
    case JSON_FALSE:
        val = "off";
        break;
    case JSON_NULL: {
        const char *last = strrchr(key, '.');
        if (strcmp(last ? last + 1 : key, "backing") == 0) {
            val = "";
            break;
        }
        return error_setf(err, EINVAL, "Parameter '%s' may not be null",
                          key);
    }
    }
    if (!*key) {
        return error_setf(err, EINVAL, "expected a JSON object");
    }
    return kvlist_set(out, key, val) < 0
               ? error_setf(err, ENOMEM, "out of memory") : 0;
}

int qmp_flatten(json_t *obj, KVList *out, Error *err)
{
    if (!json_is_object(obj)) {
        return error_setf(err, EINVAL, "expected a JSON object");
    }
    return flatten(obj, "", 0, out, err);
}

int qmp_parse_arg(const char *arg, const char *implied_key, KVList *out,
                  Error *err)
{
    if (arg[0] == '{') {
        json_error_t jerr;
        json_t *j = json_loads(arg, JSON_REJECT_DUPLICATES, &jerr);
        if (!j) {
            return error_setf(err, EINVAL, "JSON parse error: %s", jerr.text);
        }
        int ret = qmp_flatten(j, out, err);
        json_decref(j);
        return ret;
    }
    return kvlist_parse(out, arg, implied_key, err);
}

/* ------------------------------------------------------------------ */
/* Held nodes                                                          */

static int take_bool(KVList *o, const char *key, bool *v, Error *err)
{
    return kvlist_get_bool(o, key, *v, v, err);
}

int blockdev_add(KVList *opts, Error *err)
{
    const char *driver = kvlist_get(opts, "driver");
    const char *name = kvlist_get(opts, "node-name");
    bool ro = false, auto_ro = false, share = false, direct = false;
    bool no_flush = false;
    if (!driver) {
        return error_setf(err, EINVAL, "Parameter 'driver' is missing");
    }
    if (!name) {
        return error_setf(err, EINVAL, "node-name is required when adding "
                          "a node");
    }
    int ret = take_bool(opts, "read-only", &ro, err);
    if (ret == 0) {
        ret = take_bool(opts, "auto-read-only", &auto_ro, err);
    }
    if (ret == 0) {
        ret = take_bool(opts, "force-share", &share, err);
    }
    if (ret == 0) {
        ret = take_bool(opts, "cache.direct", &direct, err);
    }
    if (ret == 0) {
        ret = take_bool(opts, "cache.no-flush", &no_flush, err);
    }
    if (ret < 0) {
        return ret;
    }
    const char *discard = kvlist_get(opts, "discard");
    if (discard && strcmp(discard, "ignore") && strcmp(discard, "off") &&
        strcmp(discard, "unmap") && strcmp(discard, "on")) {
        return error_setf(err, EINVAL, "Parameter 'discard' does not accept "
                          "value '%s'", discard);
    }
    const char *dz = kvlist_get(opts, "detect-zeroes");
    if (dz && strcmp(dz, "off") != 0) {
        return error_setf(err, ENOTSUP, "detect-zeroes=%s is not supported",
                          dz);
    }
    if (share && !ro) {
        return error_setf(err, EINVAL, "force-share=on can only be used "
                          "with read-only images");
    }
    /* Re-read by block_open from the list (its own keys only). */
    KVList rest = { 0 };
    static const char *const ours[] = {
        "read-only", "auto-read-only", "force-share", "cache.direct",
        "cache.no-flush", "discard", "detect-zeroes",
    };
    for (size_t i = 0; i < opts->n; i++) {
        bool skip = false;
        for (size_t k = 0; k < sizeof(ours) / sizeof(ours[0]); k++) {
            skip |= strcmp(opts->items[i].key, ours[k]) == 0;
        }
        if (!skip && kvlist_set(&rest, opts->items[i].key,
                                opts->items[i].value) < 0) {
            kvlist_free(&rest);
            return error_setf(err, ENOMEM, "out of memory");
        }
        opts->items[i].used = true;
    }
    int flags = (ro ? 0 : BLOCK_O_RDWR) | (share ? BLOCK_O_SHARE : 0) |
                (direct ? BLOCK_O_NOCACHE : 0) |
                (no_flush ? BLOCK_O_NO_FLUSH : 0);
    Held *h = calloc(1, sizeof(*h));
    if (!h) {
        kvlist_free(&rest);
        return error_setf(err, ENOMEM, "out of memory");
    }
    h->node = block_open(NULL, NULL, &rest, flags, err);
    if (!h->node && !ro && auto_ro && err &&
        (err->code == EACCES || err->code == EPERM || err->code == EROFS)) {
        /* auto-read-only: what cannot be opened for writing is served
         * read-only, as QEMU does. */
        error_clear(err);
        for (size_t i = 0; i < rest.n; i++) {
            rest.items[i].used = false;
        }
        h->node = block_open(NULL, NULL, &rest, flags & ~BLOCK_O_RDWR, err);
    }
    kvlist_free(&rest);
    if (!h->node) {
        free(h);
        return -(err && err->code ? err->code : EIO);
    }
    h->next = held;
    held = h;
    return 0;
}

int blockdev_hold(BlockNode *n, Error *err)
{
    for (Held *h = held; h; h = h->next) {
        if (h->node == n) {
            block_close(n);    /* held already: one reference is enough */
            return 0;
        }
    }
    Held *h = calloc(1, sizeof(*h));
    if (!h) {
        block_close(n);
        return error_setf(err, ENOMEM, "out of memory");
    }
    h->node = n;
    h->next = held;
    held = h;
    return 0;
}

static bool held_uses(BlockNode *top, BlockNode *n)
{
    for (int d = 0; top && d <= BLOCK_MAX_CHAIN; d++) {
        if (block_node_storage(top) == n ||
            (d > 0 && top == n)) {
            return true;
        }
        top = block_backing(top);
    }
    return false;
}

int blockdev_del(const char *node_name, Error *err)
{
    Held **p = &held;
    while (*p && strcmp(block_node_name((*p)->node), node_name) != 0) {
        p = &(*p)->next;
    }
    if (!*p) {
        BlockNode *n = block_find_node(node_name);
        block_close(n);
        return error_setf(err, ENOENT, n ? "Node %s is not owned by the "
                          "monitor" : "Failed to find node with node-name="
                          "'%s'", node_name);
    }
    BlockNode *n = (*p)->node;
    if (block_export_uses_node(n)) {
        return error_setf(err, EBUSY, "Node '%s' is busy: block device is in "
                          "use by an export", node_name);
    }
    for (Held *h = held; h; h = h->next) {
        if (h->node != n && held_uses(h->node, n)) {
            return error_setf(err, EBUSY, "Node '%s' is busy: node is used "
                              "by node '%s'", node_name,
                              block_node_name(h->node));
        }
    }
    Held *h = *p;
    *p = h->next;
    block_close(h->node);
    free(h);
    return 0;
}

int blockdev_close_all(Error *err)
{
    int first = 0;
    /* Newest first: a node added later may use an earlier one. */
    while (held) {
        Held *h = held;
        held = h->next;
        if (!block_node_read_only(h->node)) {
            int ret = block_flush(h->node);
            if (ret < 0 && !first) {
                first = error_setf(err, -ret, "flushing node '%s' failed: "
                                   "%s", block_node_name(h->node),
                                   strerror(-ret));
            }
        }
        block_close(h->node);
        free(h);
    }
    return first;
}

static int add_named(BlockNode *n, void *opaque)
{
    json_t *arr = opaque;
    int64_t len = block_get_length(n);
    json_t *img = json_pack("{s:s,s:s,s:I}", "filename",
                            block_node_filename(n), "format",
                            block_node_format(n), "virtual-size",
                            (json_int_t)(len < 0 ? 0 : len));
    json_t *o = json_pack("{s:s,s:s,s:s,s:b,s:b,s:o}", "node-name",
                          block_node_name(n), "drv", block_node_format(n),
                          "file", block_node_filename(n), "ro",
                          block_node_read_only(n), "encrypted", false,
                          "image", img ? img : json_object());
    BlockBitmapInfo *bms = NULL;
    int nbm = 0;
    if (o && block_bitmap_list(n, &bms, &nbm) == 0 && nbm) {
        /* QEMU's shape: backups look for theirs here. */
        json_t *arr = json_array();
        for (int i = 0; i < nbm; i++) {
            json_t *b = json_pack("{s:s,s:b,s:b,s:b,s:I}", "name",
                                  bms[i].name, "recording", bms[i].enabled,
                                  "persistent", block_bitmaps_persistent(n),
                                  "busy", false, "granularity",
                                  (json_int_t)bms[i].granularity);
            if (b && bms[i].inconsistent) {
                json_object_set_new(b, "inconsistent", json_true());
            }
            json_array_append_new(arr, b);
        }
        json_object_set_new(o, "dirty-bitmaps", arr);
    }
    block_bitmap_list_free(bms, nbm);
    if (o) {
        json_array_append_new(arr, o);
    }
    return 0;
}

json_t *blockdev_query_named(void)
{
    json_t *arr = json_array();
    if (arr) {
        block_for_each_node(add_named, arr);
    }
    return arr;
}
