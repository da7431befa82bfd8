/*
 * node.c - building and tearing down the node graph: protocol selection,
 * format probing, and opening backing chains.
 *
 * A chain is opened top-down; each backing node is opened read-only with
 * reader locks.  Chains deeper than BLOCK_MAX_CHAIN or that name the same
 * file twice are refused before anything is read from the repeated file.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"

#define PROBE_BYTES 2048

static BlockNode *node_new(const BlockDriver *drv, const char *filename,
                           int flags)
{
    BlockNode *n = calloc(1, sizeof(*n));
    if (!n) {
        return NULL;
    }
    n->drv = drv;
    n->filename = strdup(filename ? filename : "");
    n->flags = flags;
    n->read_only = !(flags & BLOCK_O_RDWR);
    n->request_alignment = 1;
    pthread_mutex_init(&n->rmw_lock, NULL);
    if (drv->instance_size) {
        n->opaque = calloc(1, drv->instance_size);
    }
    if (!n->filename || (drv->instance_size && !n->opaque)) {
        free(n->filename);
        free(n->opaque);
        free(n);
        return NULL;
    }
    return n;
}

static void node_free(BlockNode *n)
{
    pthread_mutex_destroy(&n->rmw_lock);
    free(n->filename);
    free(n->backing_file);
    free(n->backing_format);
    free(n->full_backing_filename);
    kvlist_free(&n->open_opts);
    free(n->opaque);
    free(n);
}

static const BlockDriver *protocol_for(const char *filename)
{
    for (int i = 0; block_driver_list[i]; i++) {
        const BlockDriver *d = block_driver_list[i];
        if (d->is_protocol && d->owns_filename && d->owns_filename(filename)) {
            return d;
        }
    }
    return block_find_driver("file");
}

BlockNode *block_open_protocol(const char *filename, KVList *opts, int flags,
                               Error *err)
{
    const char *drvname = kvlist_get(opts, "driver");
    const BlockDriver *drv = drvname ? block_find_driver(drvname)
                                     : protocol_for(filename);
    if (!drv || !drv->is_protocol) {
        error_setf(err, EINVAL, "Unknown protocol driver '%s'",
                   drvname ? drvname : "?");
        return NULL;
    }
    const char *fn = kvlist_get(opts, "filename");
    if (fn) {
        filename = fn;
    }
    if (!filename || !*filename) {
        error_setf(err, EINVAL, "no file name given");
        return NULL;
    }
    BlockNode *n = node_new(drv, filename, flags);
    if (!n) {
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    int ret = drv->open(n, opts, flags, err);
    if (ret < 0) {
        error_setf(err, -ret, "Could not open '%s': %s", filename,
                   strerror(-ret));
        node_free(n);
        return NULL;
    }
    ret = kvlist_check_unused(opts, drv->name, err);
    if (ret < 0) {
        block_close(n);
        return NULL;
    }
    return n;
}

static const BlockDriver *probe_format(BlockNode *file, Error *err)
{
    uint8_t buf[PROBE_BYTES] = { 0 };
    int64_t len = block_get_length(file);
    if (len < 0) {
        error_setf(err, (int)-len, "Could not read image length: %s",
                   strerror((int)-len));
        return NULL;
    }
    size_t n = len < PROBE_BYTES ? (size_t)len : PROBE_BYTES;
    int ret = block_pread(file, 0, n, buf);
    if (ret < 0) {
        error_setf(err, -ret, "Could not read image for determining its "
                   "format: %s", strerror(-ret));
        return NULL;
    }
    const BlockDriver *best = block_find_driver("raw");
    int best_score = 0;
    for (int i = 0; block_driver_list[i]; i++) {
        const BlockDriver *d = block_driver_list[i];
        if (d->is_format && d->probe) {
            int score = d->probe(buf, n, file->filename);
            if (score > best_score) {
                best = d;
                best_score = score;
            }
        }
    }
    return best;
}

const BlockDriver *block_probe(const char *filename, Error *err)
{
    BlockNode *file = block_open_protocol(filename, NULL,
                                          BLOCK_O_SHARE | BLOCK_O_NO_LOCK,
                                          err);
    if (!file) {
        return NULL;
    }
    const BlockDriver *d = probe_format(file, err);
    block_close(file);
    return d;
}

typedef struct ChainState {
    int depth;
    int n_names;
    char *names[BLOCK_MAX_CHAIN + 2];
} ChainState;

char *block_chain_identity(const char *filename)
{
    if (strstr(filename, "://")) {
        return strdup(filename);
    }
    char *real = realpath(filename, NULL);
    return real ? real : strdup(filename);
}

static BlockNode *open_image(const char *filename, const char *format,
                             KVList *opts, int flags, ChainState *cs,
                             Error *err);

static int open_backing(BlockNode *n, KVList *backing_opts, int flags,
                        ChainState *cs, Error *err)
{
    if (cs->depth + 1 > BLOCK_MAX_CHAIN) {
        return error_setf(err, ELOOP, "backing chain of '%s' is deeper than "
                          "%d images", n->filename, BLOCK_MAX_CHAIN);
    }
    int bflags = (flags & (BLOCK_O_SHARE | BLOCK_O_NOCACHE | BLOCK_O_NO_LOCK |
                           BLOCK_O_NO_FLUSH)) | BLOCK_O_BACKING_RO;
    cs->depth++;
    BlockNode *b = open_image(n->full_backing_filename, n->backing_format,
                              backing_opts, bflags, cs, err);
    cs->depth--;
    if (!b) {
        /* Name the innermost failure once, not once per chain level. */
        if (err && strncmp(err->msg, "Could not open backing file",
                           strlen("Could not open backing file")) != 0) {
            error_prefixf(err, "Could not open backing file");
        }
        return -(err && err->code ? err->code : EIO);
    }
    n->backing = b;
    return 0;
}

static BlockNode *open_image(const char *filename, const char *format,
                             KVList *opts, int flags, ChainState *cs,
                             Error *err)
{
    KVList file_opts = { 0 }, backing_opts = { 0 }, json_opts = { 0 };
    BlockNode *file = NULL, *n = NULL;
    const BlockDriver *drv = NULL;
    int ret;

    if (block_is_json_name(filename)) {
        /* The name is the options; options given beside it win. */
        if (block_json_name_to_opts(filename, &json_opts, err) < 0) {
            goto out;
        }
        for (size_t i = 0; i < opts->n; i++) {
            if (kvlist_set(&json_opts, opts->items[i].key,
                           opts->items[i].value) < 0) {
                error_setf(err, ENOMEM, "out of memory");
                goto out;
            }
            /* Checked for use as part of json_opts from here on. */
            opts->items[i].used = true;
        }
        opts = &json_opts;
        filename = NULL;
    }

    const char *optfmt = kvlist_get(opts, "driver");
    if (optfmt) {
        format = optfmt;
    }
    const char *optfile = kvlist_get(opts, "file.filename");
    if (!optfile) {
        optfile = kvlist_get(opts, "filename");
    }
    if (!optfile) {
        optfile = kvlist_get(opts, "file");
    }
    if (optfile) {
        filename = optfile;
    }
    if (!filename || !*filename) {
        error_setf(err, EINVAL, "no image file name given");
        goto out;
    }
    if (format) {
        drv = block_find_driver(format);
        if (!drv) {
            error_setf(err, EINVAL, "Unknown driver '%s'", format);
            goto out;
        }
    }

    char *ident = block_chain_identity(filename);
    if (!ident) {
        error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < cs->n_names; i++) {
        if (strcmp(cs->names[i], ident) == 0) {
            error_setf(err, ELOOP, "backing chain loop: '%s' appears twice",
                       filename);
            free(ident);
            goto out;
        }
    }
    cs->names[cs->n_names++] = ident;

    kvlist_extract_prefix(opts, "file", &file_opts);
    kvlist_extract_prefix(opts, "backing", &backing_opts);

    if (drv && drv->is_protocol) {
        n = block_open_protocol(filename, &file_opts, flags, err);
        if (n) {
            ret = kvlist_check_unused(opts, drv->name, err);
            if (ret < 0) {
                block_close(n);
                n = NULL;
            }
        }
        goto out;
    }

    file = block_open_protocol(filename, &file_opts, flags, err);
    if (!file) {
        goto out;
    }
    if (!drv) {
        drv = probe_format(file, err);
        if (!drv) {
            goto fail;
        }
        flags |= BLOCK_O_PROBED;
    }
    n = node_new(drv, filename, flags);
    if (!n) {
        error_setf(err, ENOMEM, "out of memory");
        goto fail;
    }
    n->file = file;
    n->request_alignment = 1;
    for (size_t i = 0; i < opts->n; i++) {
        if (kvlist_set(&n->open_opts, opts->items[i].key,
                       opts->items[i].value) < 0) {
            error_setf(err, ENOMEM, "out of memory");
            n->file = NULL;
            node_free(n);
            n = NULL;
            goto fail;
        }
    }
    ret = drv->open(n, opts, flags, err);
    if (ret < 0) {
        if (err && err->code && strncmp(err->msg, "Could not open", 14)) {
            error_prefixf(err, "Could not open '%s'", filename);
        }
        error_setf(err, -ret, "Could not open '%s': %s", filename,
                   strerror(-ret));
        n->file = NULL;
        node_free(n);
        n = NULL;
        goto fail;
    }
    /* backing= (json: "backing": null) opens this layer alone; a
     * non-empty value would name a node, and there are no node names. */
    const char *backing_ref = kvlist_get(opts, "backing");
    if (backing_ref && *backing_ref) {
        error_setf(err, EINVAL, "backing: '%s': only an empty value (no "
                   "backing file) is supported, not node names",
                   backing_ref);
        goto fail_node;
    }
    ret = kvlist_check_unused(opts, drv->name, err);
    if (ret < 0) {
        goto fail_node;
    }
    if (n->backing_file && *n->backing_file) {
        n->full_backing_filename = block_resolve_backing(filename,
                                                         n->backing_file);
        if (!(flags & BLOCK_O_NO_BACKING) && !backing_ref) {
            ret = open_backing(n, &backing_opts, flags, cs, err);
            if (ret < 0) {
                goto fail_node;
            }
        }
    }
    ret = kvlist_check_unused(&backing_opts, "backing", err);
    if (ret < 0) {
        goto fail_node;
    }
    goto out;

fail_node:
    block_close(n);
    n = NULL;
    file = NULL;
fail:
    if (file) {
        block_close(file);
    }
out:
    kvlist_free(&file_opts);
    kvlist_free(&backing_opts);
    kvlist_free(&json_opts);
    return n;
}

BlockNode *block_open(const char *filename, const char *format, KVList *opts,
                      int flags, Error *err)
{
    ChainState cs = { 0 };
    KVList empty = { 0 };
    BlockNode *n = open_image(filename, format, opts ? opts : &empty, flags,
                              &cs, err);
    for (int i = 0; i < cs.n_names; i++) {
        free(cs.names[i]);
    }
    return n;
}

int block_open_backing(BlockNode *n, int flags, Error *err)
{
    if (n->backing) {
        block_close(n->backing);
        n->backing = NULL;
    }
    free(n->full_backing_filename);
    n->full_backing_filename = NULL;
    if (!n->backing_file || !*n->backing_file) {
        return 0;
    }
    n->full_backing_filename = block_resolve_backing(n->filename,
                                                     n->backing_file);
    if (!n->full_backing_filename) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    ChainState cs = { 0 };
    cs.names[cs.n_names++] = block_chain_identity(n->filename);
    KVList empty = { 0 };
    int ret = open_backing(n, &empty, flags, &cs, err);
    for (int i = 0; i < cs.n_names; i++) {
        free(cs.names[i]);
    }
    return ret;
}

void block_close(BlockNode *n)
{
    if (!n) {
        return;
    }
    if (n->drv->close) {
        n->drv->close(n);
    }
    block_close(n->backing);
    block_close(n->data_file);
    block_close(n->file);
    node_free(n);
}

char *block_resolve_backing(const char *overlay, const char *backing)
{
    if (backing[0] == '/' || strstr(backing, "://") || !overlay ||
        strstr(overlay, "://") || block_is_json_name(backing)) {
        return strdup(backing);
    }
    const char *slash = strrchr(overlay, '/');
    if (!slash) {
        return strdup(backing);
    }
    size_t dirlen = (size_t)(slash - overlay) + 1;
    size_t blen = strlen(backing);
    char *out = malloc(dirlen + blen + 1);
    if (!out) {
        return NULL;
    }
    memcpy(out, overlay, dirlen);
    memcpy(out + dirlen, backing, blen + 1);
    return out;
}
