/*
 * node.c - building and tearing down the node graph: protocol selection,
 * format probing, filters, backing chains, node names and references.
 *
 * Invariants:
 *  - every node that open returned is in the registry under a unique
 *    name until its last reference goes;
 *  - a parent holds one reference to each of its children, so a child
 *    shared by two parents (or by a parent and an export) lives as long
 *    as the last of them;
 *  - a chain is opened top-down, each backing node read-only with reader
 *    locks; chains deeper than BLOCK_MAX_CHAIN or naming the same file
 *    twice are refused before anything is read from the repeated file.
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
/* Registry                                                            */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static BlockNode *registry;
static unsigned long next_auto_name;

/* registry_lock held. */
static BlockNode *registry_find(const char *name)
{
    for (BlockNode *n = registry; n; n = n->registry_next) {
        if (strcmp(n->node_name, name) == 0) {
            return n;
        }
    }
    return NULL;
}

static int registry_add(BlockNode *n, const char *name, Error *err)
{
    pthread_mutex_lock(&registry_lock);
    if (name) {
        if (!*name || registry_find(name)) {
            pthread_mutex_unlock(&registry_lock);
            return error_setf(err, EEXIST, *name
                              ? "Duplicate nodes with node-name='%s'"
                              : "node-name%s may not be empty", name);
        }
        n->node_name = strdup(name);
    } else {
        char buf[32];
        snprintf(buf, sizeof(buf), "#block%lu", next_auto_name++);
        n->node_name = strdup(buf);
    }
    if (!n->node_name) {
        pthread_mutex_unlock(&registry_lock);
        return error_setf(err, ENOMEM, "out of memory");
    }
    n->registry_next = registry;
    registry = n;
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

static void registry_remove(BlockNode *n)
{
    pthread_mutex_lock(&registry_lock);
    for (BlockNode **p = &registry; *p; p = &(*p)->registry_next) {
        if (*p == n) {
            *p = n->registry_next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

BlockNode *block_find_node(const char *node_name)
{
    pthread_mutex_lock(&registry_lock);
    BlockNode *n = registry_find(node_name);
    if (n) {
        block_ref(n);
    }
    pthread_mutex_unlock(&registry_lock);
    return n;
}

BlockNode *block_find_image(const char *filename)
{
    char *want = block_chain_identity(filename);
    BlockNode *found = NULL;
    if (!want) {
        return NULL;
    }
    pthread_mutex_lock(&registry_lock);
    for (BlockNode *n = registry; n && !found; n = n->registry_next) {
        if (n->drv->kind != BLOCK_DRIVER_FORMAT) {
            continue;
        }
        char *have = block_chain_identity(n->filename);
        if (have && strcmp(have, want) == 0) {
            found = block_ref(n);
        }
        free(have);
    }
    pthread_mutex_unlock(&registry_lock);
    free(want);
    return found;
}

int block_for_each_node(int (*fn)(BlockNode *n, void *opaque), void *opaque)
{
    /* Take references under the lock, call without it: fn may open or
     * close nodes. */
    pthread_mutex_lock(&registry_lock);
    size_t count = 0;
    for (BlockNode *n = registry; n; n = n->registry_next) {
        count++;
    }
    BlockNode **v = calloc(count ? count : 1, sizeof(*v));
    if (!v) {
        pthread_mutex_unlock(&registry_lock);
        return -ENOMEM;
    }
    size_t i = 0;
    for (BlockNode *n = registry; n; n = n->registry_next) {
        v[i++] = block_ref(n);
    }
    pthread_mutex_unlock(&registry_lock);
    int ret = 0;
    for (i = 0; i < count; i++) {
        if (!ret) {
            ret = fn(v[i], opaque);
        }
        block_close(v[i]);
    }
    free(v);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Nodes and children                                                  */

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
    atomic_init(&n->refcnt, 1);
    atomic_init(&n->in_flight, 0);
    atomic_init(&n->quiesce, 0);
    pthread_mutex_init(&n->rmw_lock, NULL);
    pthread_mutex_init(&n->serialize_lock, NULL);
    pthread_mutex_init(&n->drain_lock, NULL);
    pthread_cond_init(&n->drain_cond, NULL);
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
    block_free_write_hooks(n);
    /* A volatile set (block_bitmaps_make_volatile); formats free their
     * own at close. */
    block_bitmaps_free(n->bitmaps);
    pthread_mutex_destroy(&n->rmw_lock);
    pthread_mutex_destroy(&n->serialize_lock);
    pthread_mutex_destroy(&n->drain_lock);
    pthread_cond_destroy(&n->drain_cond);
    free(n->node_name);
    free(n->filename);
    free(n->backing_file);
    free(n->backing_format);
    free(n->full_backing_filename);
    kvlist_free(&n->open_opts);
    free(n->opaque);
    free(n);
}

BlockNode *block_child(BlockNode *n, BlockChildRole role)
{
    for (int i = 0; i < n->n_children; i++) {
        if (n->children[i].role == role) {
            return n->children[i].node;
        }
    }
    return NULL;
}

int block_set_child(BlockNode *n, BlockChildRole role, BlockNode *child)
{
    BlockNode *old = NULL;
    int i;
    for (i = 0; i < n->n_children; i++) {
        if (n->children[i].role == role) {
            break;
        }
    }
    if (i < n->n_children) {
        old = n->children[i].node;
        if (child) {
            n->children[i].node = child;
        } else {
            n->children[i] = n->children[--n->n_children];
        }
    } else if (child) {
        if (n->n_children == BLOCK_MAX_CHILDREN) {
            return -ENOSPC;
        }
        n->children[n->n_children].role = role;
        n->children[n->n_children].node = child;
        n->n_children++;
    }
    block_close(old);
    return 0;
}

BlockNode *block_ref(BlockNode *n)
{
    if (n) {
        atomic_fetch_add(&n->refcnt, 1);
    }
    return n;
}

void block_close(BlockNode *n)
{
    if (!n || atomic_fetch_sub(&n->refcnt, 1) != 1) {
        return;
    }
    registry_remove(n);
    if (n->drv->close) {
        n->drv->close(n);
    }
    /* Backing first: it is the most independent; the file children go
     * last because the driver's close may have used them. */
    static const BlockChildRole order[] = {
        BLOCK_CHILD_BACKING, BLOCK_CHILD_DATA_FILE, BLOCK_CHILD_FILTERED,
        BLOCK_CHILD_TARGET, BLOCK_CHILD_FILE,
    };
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        block_close(block_child(n, order[i]));
    }
    node_free(n);
}

/* ------------------------------------------------------------------ */
/* Capabilities                                                        */

static bool cap(bool (*fn)(BlockNode *), BlockNode *n, bool def)
{
    return fn ? fn(n) : def;
}

static void answer_caps(BlockNode *n)
{
    const BlockDriver *d = n->drv;
    BlockCaps *c = &n->caps;
    BlockNode *below = block_file(n) ? block_file(n) : block_filtered(n);
    c->can_write = !n->read_only &&
                   cap(d->can_write, n, d->pwrite || d->pwritev);
    c->can_flush = cap(d->can_flush, n,
                       d->flush || (below && below->caps.can_flush));
    c->can_fua = cap(d->can_fua, n, false);
    c->can_discard = cap(d->can_discard, n, d->discard != NULL);
    c->can_zero = cap(d->can_zero, n, d->write_zeroes != NULL);
    c->can_fast_zero = cap(d->can_fast_zero, n, false);
    c->can_extents = cap(d->can_extents, n, d->block_status != NULL);
    c->can_compress = cap(d->can_compress, n, false);
    c->can_multi_conn = cap(d->can_multi_conn, n, false);
}

/* A node that open returned: named, counted, capabilities answered. */
static int node_publish(BlockNode *n, KVList *opts, Error *err)
{
    const char *name = kvlist_get(opts, "node-name");
    answer_caps(n);
    return registry_add(n, name, err);
}

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
        /* Name the innermost failure once, not once per chain level. */
        if (err && strncmp(err->msg, "Could not open backing file",
                           strlen("Could not open backing file")) != 0) {
            error_prefixf(err, "Could not open backing file");
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
        if (err && err->code && strncmp(err->msg, "Could not open", 14)) {
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
