/*
 * open.c - opening the node graph: a protocol chosen by driver=, URL
 * prefix or file name; a format probed or named; QEMU's blkdebug
 * spelling turned into the filter's options; backing chains opened
 * top-down; json: names and options alone naming what to open.
 *
 * Invariants:
 *  - a chain is opened top-down, each backing node read-only with reader
 *    locks; chains deeper than BLOCK_MAX_CHAIN or naming the same file
 *    twice are refused before anything is read from the repeated file;
 *  - a node is published (named, counted, capabilities answered) only
 *    once its driver's open succeeded; a failed open frees what it made.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/modules.h"
#include "block/core/request.h"

#define PROBE_BYTES 2048

/* ------------------------------------------------------------------ */
/* Opening                                                             */

/* The filename that options alone name for the protocol at the bottom of
 * a node described by opts (driver=iscsi,portal=...; or
 * driver=qcow2,file.driver=gluster,file.volume=...), or NULL.  Nothing
 * is marked used: the drivers read the same options when they open. */
static char *filename_from_opts(const KVList *opts, int depth)
{
    const char *drvname = kvlist_peek(opts, "driver");
    const BlockDriver *d = drvname ? block_find_driver(drvname) : NULL;
    if (d && d->kind == BLOCK_DRIVER_PROTOCOL) {
        return d->filename_from_opts ? d->filename_from_opts(opts) : NULL;
    }
    if (depth > 8) {
        return NULL;
    }
    KVList sub = { 0 };
    for (size_t i = 0; i < opts->n; i++) {
        const char *k = opts->items[i].key;
        if (strncmp(k, "file.", 5) == 0 &&
            kvlist_set(&sub, k + 5, opts->items[i].value) < 0) {
            kvlist_free(&sub);
            return NULL;
        }
    }
    char *name = sub.n ? filename_from_opts(&sub, depth + 1) : NULL;
    kvlist_free(&sub);
    return name;
}

BlockNode *block_open_protocol(const char *filename, KVList *opts, int flags,
                               Error *err)
{
    KVList empty = { 0 };
    if (!opts) {
        opts = &empty;
    }
    const char *drvname = kvlist_get(opts, "driver");
    const BlockDriver *drv = drvname ? block_find_driver(drvname)
                                     : block_protocol_for(filename);
    if (!drv || drv->kind != BLOCK_DRIVER_PROTOCOL) {
        /* A module that did not load says why, without the file name: an
         * iscsi:// URL may carry a password. */
        if (drv || block_module_driver_error(drvname, filename, err) == 0) {
            error_setf(err, EINVAL, "Unknown protocol driver '%s'",
                       drvname ? drvname : filename ? filename : "?");
        }
        return NULL;
    }
    const char *fn = kvlist_get(opts, "filename");
    if (fn) {
        filename = fn;
    }
    /* A protocol may be addressed by options alone: it names its file
     * (filename_from_opts), or, named by driver=, its open names the node
     * (driver=nbd,server.type=unix,server.path=...). */
    char *made = NULL;
    if ((!filename || !*filename) && drv->filename_from_opts) {
        filename = made = drv->filename_from_opts(opts);
    }
    if ((!filename || !*filename) && !drvname) {
        error_setf(err, EINVAL, "no file name given");
        free(made);
        return NULL;
    }
    BlockNode *n = node_new(drv, filename ? filename : "", flags);
    free(made);     /* the node keeps its own copy */
    if (!n) {
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    int ret = drv->open(n, opts, flags, err);
    if (ret < 0) {
        error_setf(err, -ret, "Could not open '%s': %s", n->filename,
                   strerror(-ret));
        node_free(n);
        return NULL;
    }
    if (node_publish(n, opts, err) < 0 ||
        kvlist_check_unused(opts, drv->name, err) < 0) {
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
        if (d->kind == BLOCK_DRIVER_FORMAT && d->probe) {
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
                             bool chain_member, Error *err);

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
                              backing_opts, bflags, cs, true, err);
    cs->depth--;
    if (!b) {
        /* once per level, as QEMU nests it, while the line keeps room
         * for the innermost reason and the caller's name for the top */
        static const char pfx[] = "Could not open backing file";
        if (err && strlen(err->msg) + sizeof(pfx) + 2 < sizeof(err->msg) / 2) {
            error_prefixf(err, "%s", pfx);
        }
        return -(err && err->code ? err->code : EIO);
    }
    return block_set_child(n, BLOCK_CHILD_BACKING, b);
}

/* QEMU's blkdebug spelling (block/filter/blkdebug.c) in ours: the filter
 * takes its child from "image" (image.* options, x-image=FILENAME) where
 * our filters take "file"; "blkdebug:CONFIG:IMAGE" names the filter over
 * IMAGE with the rules in CONFIG. */
static bool is_blkdebug_name(const char *name)
{
    return name && strncmp(name, "blkdebug:", 9) == 0;
}

static int blkdebug_name_to_opts(const char *name, KVList *out)
{
    const char *conf = name + 9;
    const char *colon = strchr(conf, ':');
    if (!colon) {
        return -EINVAL;
    }
    char *c = strndup(conf, (size_t)(colon - conf));
    int ret = c ? 0 : -ENOMEM;
    if (ret == 0 && (kvlist_set(out, "driver", "blkdebug") < 0 ||
                     kvlist_set(out, "config", c) < 0 ||
                     kvlist_set(out, "file.filename", colon + 1) < 0)) {
        ret = -ENOMEM;
    }
    free(c);
    return ret;
}

/* Renames the blkdebug node's child keys under prefix ("" or "file."):
 * image.filename and x-image name its file, image.X are its file's
 * options, image=NODE a node by name. */
static int blkdebug_child_keys(KVList *opts, const char *prefix)
{
    size_t pl = strlen(prefix);
    for (size_t i = 0; i < opts->n; i++) {
        char *k = opts->items[i].key, *nk = NULL;
        if (strncmp(k, prefix, pl) != 0) {
            continue;
        }
        const char *r = k + pl;
        if (!strcmp(r, "image.filename") || !strcmp(r, "x-image")) {
            if (asprintf(&nk, "%sfilename", prefix) < 0) {
                return -ENOMEM;
            }
        } else if (strncmp(r, "image.", 6) == 0) {
            if (asprintf(&nk, "%sfile.%s", prefix, r + 6) < 0) {
                return -ENOMEM;
            }
        } else if (strcmp(r, "image") == 0) {
            if (asprintf(&nk, "%sfile", prefix) < 0) {
                return -ENOMEM;
            }
        } else {
            continue;
        }
        if (!nk) {
            return -ENOMEM;
        }
        free(k);
        opts->items[i].key = nk;
    }
    return 0;
}

/* The child a format or filter works on: a node named by reference
 * (file=NODE-NAME, as QEMU's -blockdev says it), a node opened from the
 * "file.*" options (any kind: file.driver=faulty puts a filter there), or
 * the protocol that owns `filename`. */
static BlockNode *open_lower(const char *filename, KVList *opts,
                             KVList *file_opts, int flags, ChainState *cs,
                             Error *err)
{
    const char *ref = kvlist_get(opts, "file");
    if (ref && file_opts->n == 0) {
        BlockNode *named = block_find_node(ref);
        if (named) {
            return named;
        }
    }
    const char *drvname = NULL;
    for (size_t i = 0; i < file_opts->n; i++) {
        if (strcmp(file_opts->items[i].key, "driver") == 0) {
            drvname = file_opts->items[i].value;
        }
    }
    if (!drvname && file_opts->n == 0 && is_blkdebug_name(filename)) {
        KVList sub = { 0 };
        BlockNode *n = NULL;
        int ret = blkdebug_name_to_opts(filename, &sub);
        if (ret < 0) {
            error_setf(err, -ret, "Could not open '%s': %s", filename,
                       ret == -EINVAL ? "expected blkdebug:CONFIG:IMAGE"
                                      : strerror(-ret));
        } else {
            n = open_image(NULL, NULL, &sub, flags & ~BLOCK_O_BACKING_RO,
                           cs, false, err);
        }
        kvlist_free(&sub);
        return n;
    }
    const BlockDriver *d = drvname ? block_find_driver(drvname) : NULL;
    if (d && d->kind != BLOCK_DRIVER_PROTOCOL) {
        /* A filter or a format below: it opens the same way a top image
         * does, over `filename` unless its own options name a file. */
        KVList sub = { 0 };
        for (size_t i = 0; i < file_opts->n; i++) {
            kvlist_set(&sub, file_opts->items[i].key,
                       file_opts->items[i].value);
            file_opts->items[i].used = true;
        }
        if (!kvlist_has(&sub, "file.filename") &&
            !kvlist_has(&sub, "filename") && !kvlist_has(&sub, "file") &&
            filename) {
            kvlist_set(&sub, "file.filename", filename);
        }
        BlockNode *n = open_image(NULL, NULL, &sub,
                                  flags & ~BLOCK_O_BACKING_RO, cs, false,
                                  err);
        kvlist_free(&sub);
        return n;
    }
    return block_open_protocol(filename, file_opts, flags, err);
}

/* Every option given for this node is remembered so that a reopen keeps
 * it (an encrypted base's key-secret, backing.* options). */
static int remember_opts(BlockNode *n, const KVList *opts)
{
    for (size_t i = 0; i < opts->n; i++) {
        if (kvlist_set(&n->open_opts, opts->items[i].key,
                       opts->items[i].value) < 0) {
            return -ENOMEM;
        }
    }
    return 0;
}

/* chain_member: a layer of a backing chain (the top or a backing file),
 * checked against the chain's other layers; a node opened below a filter
 * or a format is not (raw over qcow2 names one file twice, rightly). */
static BlockNode *open_image(const char *filename, const char *format,
                             KVList *opts, int flags, ChainState *cs,
                             bool chain_member, Error *err)
{
    KVList file_opts = { 0 }, backing_opts = { 0 }, json_opts = { 0 };
    BlockNode *lower = NULL, *n = NULL;
    char *made_name = NULL;
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
    const char *fdrv = kvlist_peek(opts, "file.driver");
    if ((format && strcmp(format, "blkdebug") == 0 &&
         blkdebug_child_keys(opts, "") < 0) ||
        (fdrv && strcmp(fdrv, "blkdebug") == 0 &&
         blkdebug_child_keys(opts, "file.") < 0)) {
        error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    const char *optfile = kvlist_get(opts, "file.filename");
    if (!optfile) {
        optfile = kvlist_get(opts, "filename");
    }
    const char *fileref = kvlist_get(opts, "file");
    BlockNode *refnode = fileref ? block_find_node(fileref) : NULL;
    if (!optfile && fileref && !refnode) {
        optfile = fileref;
    }
    if (optfile) {
        filename = optfile;
    }
    if (refnode && !filename) {
        filename = refnode->filename;
    }
    block_close(refnode);
    if (!filename || !*filename) {
        /* driver=iscsi,portal=... names its LUN without a filename */
        const BlockDriver *fd = format ? block_find_driver(format) : NULL;
        if (fd && fd->kind == BLOCK_DRIVER_PROTOCOL) {
            made_name = fd->filename_from_opts ? fd->filename_from_opts(opts)
                                               : NULL;
        } else {
            made_name = filename_from_opts(opts, 0);
        }
        if (made_name) {
            filename = made_name;
        }
    }
    if (format) {
        drv = block_find_driver(format);
        if (!drv) {
            if (block_module_driver_error(format, NULL, err) == 0) {
                error_setf(err, EINVAL, "Unknown driver '%s'", format);
            }
            goto out;
        }
    }
    if ((!filename || !*filename) && drv &&
        drv->kind == BLOCK_DRIVER_FILTER && kvlist_peek(opts, "file.driver")) {
        /* a filter over a format given by options (blkdebug's
         * image.driver=qcow2,...): named after what lies below */
        const char *below = kvlist_peek(opts, "file.file.filename");
        if (below) {
            filename = below;
        }
    }
    if ((!filename || !*filename) &&
        !(drv && drv->kind == BLOCK_DRIVER_PROTOCOL)) {
        error_setf(err, EINVAL, "no image file name given");
        goto out;
    }

    if (chain_member && (!drv || drv->kind != BLOCK_DRIVER_PROTOCOL)) {
        char *ident = block_chain_identity(filename);
        if (!ident) {
            error_setf(err, ENOMEM, "out of memory");
            goto out;
        }
        for (int i = 0; i < cs->n_names; i++) {
            if (strcmp(cs->names[i], ident) == 0) {
                error_setf(err, ELOOP, "backing chain loop: '%s' appears "
                           "twice", filename);
                free(ident);
                goto out;
            }
        }
        if (cs->n_names < (int)(sizeof(cs->names) / sizeof(cs->names[0]))) {
            cs->names[cs->n_names++] = ident;
        } else {
            free(ident);
        }
    }

    kvlist_extract_prefix(opts, "file", &file_opts);
    kvlist_extract_prefix(opts, "backing", &backing_opts);

    if (drv && drv->kind == BLOCK_DRIVER_PROTOCOL) {
        /* Options for a protocol opened as the image itself are its own;
         * file.* ones are not expected. */
        for (size_t i = 0; i < file_opts.n; i++) {
            kvlist_set(opts, file_opts.items[i].key, file_opts.items[i].value);
        }
        n = block_open_protocol(filename, opts, flags, err);
        goto out;
    }

    /* What a node is opened for is its own: the bytes under it are
     * written by its driver (bitmaps, metadata) whatever the node
     * refuses its callers. */
    lower = open_lower(filename, opts, &file_opts,
                       flags & ~BLOCK_O_BITMAPS_ONLY, cs, err);
    if (!lower) {
        goto out;
    }
    if (!drv) {
        drv = probe_format(lower, err);
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
    block_set_child(n, drv->kind == BLOCK_DRIVER_FILTER
                       ? BLOCK_CHILD_FILTERED : BLOCK_CHILD_FILE, lower);
    lower = NULL;
    if (remember_opts(n, opts) < 0) {
        error_setf(err, ENOMEM, "out of memory");
        goto fail_node;
    }
    ret = drv->open(n, opts, flags, err);
    if (ret < 0) {
        /* A layer of a chain reports its driver's words bare, as QEMU
         * does: whoever opened the chain names its top (imgtool_open),
         * and each backing level says "Could not open backing file". */
        if (!chain_member && err && err->code &&
            strncmp(err->msg, "Could not open", 14)) {
            error_prefixf(err, "Could not open '%s'", filename);
        }
        error_setf(err, -ret, "Could not open '%s': %s", filename,
                   strerror(-ret));
        /* The driver's close must not run for a failed open. */
        for (int i = 0; i < n->n_children; i++) {
            block_close(n->children[i].node);
        }
        n->n_children = 0;
        node_free(n);
        n = NULL;
        goto out;
    }
    if (drv->kind == BLOCK_DRIVER_FORMAT) {
        /* backing= (json: "backing": null) opens this layer alone;
         * backing=NAME takes an open node. */
        const char *backing_ref = kvlist_get(opts, "backing");
        if (backing_ref && *backing_ref) {
            BlockNode *b = block_find_node(backing_ref);
            if (!b) {
                error_setf(err, ENOENT, "backing: no node named '%s'",
                           backing_ref);
                goto fail_node;
            }
            block_set_child(n, BLOCK_CHILD_BACKING, b);
        } else if (n->backing_file && *n->backing_file) {
            n->full_backing_filename = block_resolve_backing(filename,
                                                             n->backing_file);
            if (!(flags & BLOCK_O_NO_BACKING) && !backing_ref) {
                ret = open_backing(n, &backing_opts, flags, cs, err);
                if (ret < 0) {
                    goto fail_node;
                }
            }
        }
    }
    if (node_publish(n, opts, err) < 0) {
        goto fail_node;
    }
    if (kvlist_check_unused(opts, drv->name, err) < 0 ||
        kvlist_check_unused(&backing_opts, "backing", err) < 0) {
        block_close(n);
        n = NULL;
    }
    goto out;

fail_node:
    /* Not published yet: close it by hand. */
    if (n->drv->close) {
        n->drv->close(n);
    }
    for (int i = 0; i < n->n_children; i++) {
        block_close(n->children[i].node);
    }
    n->n_children = 0;
    node_free(n);
    n = NULL;
fail:
    block_close(lower);
out:
    kvlist_free(&file_opts);
    kvlist_free(&backing_opts);
    kvlist_free(&json_opts);
    free(made_name);
    return n;
}

BlockNode *block_open(const char *filename, const char *format, KVList *opts,
                      int flags, Error *err)
{
    ChainState cs = { 0 };
    KVList empty = { 0 };
    BlockNode *n = open_image(filename, format, opts ? opts : &empty, flags,
                              &cs, true, err);
    for (int i = 0; i < cs.n_names; i++) {
        free(cs.names[i]);
    }
    return n;
}

int block_open_backing(BlockNode *n, int flags, Error *err)
{
    block_set_child(n, BLOCK_CHILD_BACKING, NULL);
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

char *block_resolve_backing(const char *overlay, const char *backing)
{
    if (is_blkdebug_name(overlay) && strchr(overlay + 9, ':')) {
        /* relative to the image under the filter, as QEMU resolves it:
         * the backing file is not under the filter */
        overlay = strchr(overlay + 9, ':') + 1;
    }
    if (backing[0] == '/' || strstr(backing, "://") || !overlay ||
        block_is_json_name(backing)) {
        return strdup(backing);
    }
    /* A URL's "directory" ends at its last '/' before any query, and
     * the query (gluster+unix's ?socket=) stays with the result: a
     * backing file on the same volume as its overlay, as QEMU resolves
     * it. */
    const char *query = strstr(overlay, "://") ? strchr(overlay, '?') : NULL;
    size_t head = query ? (size_t)(query - overlay) : strlen(overlay);
    const char *slash = NULL;
    for (size_t i = 0; i < head; i++) {
        if (overlay[i] == '/') {
            slash = overlay + i;
        }
    }
    if (!slash || (query && slash < strstr(overlay, "://") + 3)) {
        return strdup(backing);
    }
    size_t dirlen = (size_t)(slash - overlay) + 1;
    size_t blen = strlen(backing);
    size_t qlen = query ? strlen(query) : 0;
    char *out = malloc(dirlen + blen + qlen + 1);
    if (!out) {
        return NULL;
    }
    memcpy(out, overlay, dirlen);
    memcpy(out + dirlen, backing, blen);
    memcpy(out + dirlen + blen, query ? query : "", qlen + 1);
    return out;
}
