/*
 * extsnap.c - external snapshots: a backing chain used as a list of
 * saved states, with create, revert, delete and list.
 *
 * The active image (the path the VM uses, e.g. disk.qcow2) never moves.
 * Taking snapshot NAME freezes the active content under a new name
 * (<dir>/<stem>.NAME.qcow2 by default) and makes the active path a fresh
 * empty overlay on it; reverting makes the active path a fresh overlay on
 * an older layer and deletes the layers above it; deleting a layer first
 * copies what it holds into the layer above (a safe rebase), then drops
 * it.  A layer's name is derived from its file name, so nothing but the
 * chain itself records the snapshots.
 *
 * Invariants, whatever moment a process is killed at:
 *  - the active path names either the old image or the complete new one:
 *    a new overlay is written and synced under a temporary name and moved
 *    in with rename(2); a frozen image gets its new name with link(2)
 *    before the active path changes, so no moment lacks either;
 *  - no file still named by the chain is ever deleted: files to drop are
 *    first listed in a journal next to the active image, and whoever
 *    holds the active image next deletes only those no longer in its
 *    chain;
 *  - every file that must not change under us is locked: the active
 *    image with the writer lock (so QEMU and other imgtool runs refuse
 *    it), files to delete with the writer lock until they are gone (or,
 *    for a layer that -d drops, until the rebase opens it), so nobody, not
 *    even a reader using one as a backing file, has them open; the kept
 *    layers with reader locks.
 *
 * Here: the four operations.  The mechanics they are built from (names,
 * durability, the locked chain, the journal, overlays) are in
 * extsnap-chain.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/job/extsnap-int.h"

/* ------------------------------------------------------------------ */
/* Operations                                                          */

int block_extsnap_create(const char *active, const char *fmt,
                         const char *name, const char *file, Error *err)
{
    Ctx c = { 0 };
    char *frozen = NULL, *bname = NULL;
    int ret = extsnap_check_name(name, err);
    if (ret < 0) {
        return ret;
    }
    ret = extsnap_open_locked(&c, active, fmt, err);
    if (ret < 0) {
        goto out;
    }
    extsnap_recover(&c);
    BlockNode *top = c.top;
    if (strcmp(block_node_format(top), "qcow2") != 0) {
        ret = error_setf(err, ENOTSUP, "'%s' is a %s image; the active "
                         "image of an external snapshot chain must be "
                         "qcow2", active, block_node_format(top));
        goto out;
    }
    if (block_node_has_data_file(top)) {
        ret = error_setf(err, ENOTSUP, "'%s' has an external data file, "
                         "which external snapshots do not support", active);
        goto out;
    }
    for (int i = 0; i < c.n; i++) {
        if (strcmp(c.layers[i].name, name) == 0) {
            ret = error_setf(err, EEXIST, "snapshot '%s' already exists "
                             "('%s')", name, block_node_filename(c.layers[i].node));
            goto out;
        }
    }
    frozen = file ? strdup(file) : extsnap_asprintf("%s/%s.%s.qcow2", c.dir,
                                                    c.stem, name);
    if (!frozen) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (file) {
        char *derived = extsnap_layer_name(c.stem, file);
        bool ok = derived && strcmp(derived, name) == 0;
        free(derived);
        if (!ok) {
            ret = error_setf(err, EINVAL, "the file of snapshot '%s' must "
                             "be called '%s.qcow2' or '%s.%s.qcow2' (a "
                             "layer's name comes from its file name)",
                             name, name, c.stem, name);
            goto out;
        }
    }
    char *fa = extsnap_abs_name(frozen), *aa = extsnap_abs_name(active);
    bool self = !fa || !aa || strcmp(fa, aa) == 0;
    free(fa);
    free(aa);
    if (self) {
        ret = error_setf(err, EINVAL, "'%s' cannot be frozen as itself",
                         active);
        goto out;
    }
    /* A name that already exists refuses, unless it is the link an
     * interrupted run of this same command left: that is our frozen
     * image already. */
    struct stat fst;
    bool relink = true;
    if (lstat(frozen, &fst) == 0) {
        if (!c.layers[0].has_st || !extsnap_same_inode(&fst, &c.layers[0].st)) {
            ret = error_setf(err, EEXIST, "'%s' already exists", frozen);
            goto out;
        }
        relink = false;
    }
    bname = extsnap_backing_name_for(active, frozen);
    if (!bname) {
        ret = error_setf(err, errno ? errno : ENOMEM, "Could not resolve "
                         "the directory of '%s': %s", frozen,
                         strerror(errno ? errno : ENOMEM));
        goto out;
    }
    int64_t len = block_get_length(top);
    if (len < 0) {
        ret = error_setf(err, (int)-len, "Could not get the size of '%s'",
                         active);
        goto out;
    }
    ret = extsnap_absolute_backing(&c, frozen, err);
    if (ret < 0) {
        goto out;
    }
    /* What the frozen image holds must be on disk before it is frozen. */
    ret = block_flush(c.hold);
    if (ret < 0) {
        error_setf(err, -ret, "Could not flush '%s': %s", active,
                   strerror(-ret));
        goto out;
    }
    ret = extsnap_make_overlay(&c, bname, "qcow2", (uint64_t)len,
                               extsnap_cluster_size_of(top), err);
    if (ret < 0) {
        goto out;
    }
    if (relink && link(active, frozen) < 0) {
        int e = errno;
        unlink(c.tmp);
        ret = error_setf(err, e, "Could not link '%s' to '%s': %s%s", active,
                         frozen, strerror(e),
                         e == EXDEV ? " (it must be on the same file system)"
                                    : "");
        goto out;
    }
    /* The layer's date is when it was frozen. */
    utimensat(AT_FDCWD, frozen, NULL, 0);
    ret = extsnap_sync_dir_of(frozen, err);
    if (ret >= 0) {
        ret = extsnap_install_overlay(&c, err);
    }
out:
    free(frozen);
    free(bname);
    extsnap_ctx_free(&c);
    return ret < 0 ? ret : 0;
}

int block_extsnap_revert(const char *active, const char *fmt,
                         const char *name, Error *err)
{
    Ctx c = { 0 };
    BlockNode *locks[EXTSNAP_MAX_LAYERS] = { 0 };
    char *drop[EXTSNAP_MAX_LAYERS] = { 0 };
    struct stat drop_st[EXTSNAP_MAX_LAYERS];
    int ndrop = 0;
    BlockNode *keep = NULL;
    char *bname = NULL;
    int k = extsnap_open_layer(&c, active, fmt, name, err);
    int ret = k;
    if (k < 0) {
        goto out;
    }
    /* The layers between the active image and the target are dropped:
     * nobody may have them open. */
    for (int i = 1; i < k; i++) {
        const char *f = block_node_filename(c.layers[i].node);
        locks[i] = extsnap_lock_file(f, err);
        if (!locks[i]) {
            error_prefixf(err, "layer '%s' is in use", c.layers[i].name);
            ret = -(err && err->code ? err->code : EBUSY);
            goto out;
        }
        drop[ndrop] = extsnap_abs_name(f);
        if (!drop[ndrop] || !c.layers[i].has_st) {
            ret = error_setf(err, errno ? errno : ENOMEM, "Could not "
                             "resolve '%s'", f);
            goto out;
        }
        drop_st[ndrop++] = c.layers[i].st;
    }
    BlockNode *t = c.layers[k].node;
    keep = block_open(block_node_filename(t), block_node_format(t), NULL, 0, err);
    if (!keep) {
        ret = -(err && err->code ? err->code : EIO);
        goto out;
    }
    int64_t len = block_get_length(keep);
    bname = extsnap_backing_name_for(active, block_node_filename(t));
    if (len < 0 || !bname) {
        ret = error_setf(err, EIO, "Could not read '%s'", block_node_filename(t));
        goto out;
    }
    ret = extsnap_make_overlay(&c, bname, block_node_format(t), (uint64_t)len,
                               extsnap_cluster_size_of(c.top), err);
    if (ret >= 0 && ndrop) {
        ret = extsnap_journal_write(&c, drop, ndrop, err);
    }
    if (ret >= 0) {
        ret = extsnap_install_overlay(&c, err);
    }
    if (ret < 0) {
        unlink(c.tmp);
        unlink(c.journal);
        goto out;
    }
    /* Reverted.  Drop what the new chain no longer names (never a file
     * that is also one of the kept layers under another name). */
    for (int i = 0; i < ndrop; i++) {
        bool kept = false;
        for (int j = k; j < c.n; j++) {
            kept |= c.layers[j].has_st &&
                    extsnap_same_inode(&c.layers[j].st, &drop_st[i]);
        }
        if (!kept && unlink(drop[i]) == 0) {
            char *d = extsnap_dirname_of(drop[i]);
            if (d) {
                extsnap_sync_path(d, true);
            }
            free(d);
        }
    }
    if (ndrop) {
        unlink(c.journal);
        extsnap_sync_dir_of(c.journal, NULL);
    }
    ret = 0;
out:
    for (int i = 0; i < EXTSNAP_MAX_LAYERS; i++) {
        block_close(locks[i]);
        free(drop[i]);
    }
    block_close(keep);
    free(bname);
    extsnap_ctx_free(&c);
    return ret;
}

int block_extsnap_delete(const char *active, const char *fmt,
                         const char *name, BlockProgressFn *progress,
                         void *opaque, Error *err)
{
    Ctx c = { 0 };
    BlockNode *upper = NULL;
    char *bname = NULL, *bfmt = NULL, *tpath = NULL, *upath = NULL;
    int k = extsnap_open_layer(&c, active, fmt, name, err);
    int ret = k;
    if (k < 0) {
        goto out;
    }
    BlockNode *t = c.layers[k].node, *u = c.layers[k - 1].node;
    struct stat tst = c.layers[k].st;
    tpath = extsnap_abs_name(block_node_filename(t));
    upath = strdup(block_node_filename(u));
    if (!tpath || !upath || !c.layers[k].has_st) {
        ret = error_setf(err, ENOMEM, "Could not resolve '%s'", block_node_filename(t));
        goto out;
    }
    /* The layer above takes over the link to what lies below: the same
     * stored name when both sit in one directory, else a full path. */
    if (block_backing(t)) {
        char *ud = extsnap_dirname_of(block_node_filename(u));
        char *td = extsnap_dirname_of(block_node_filename(t));
        char *rud = ud ? realpath(ud, NULL) : NULL;
        char *rtd = td ? realpath(td, NULL) : NULL;
        if (rud && rtd && strcmp(rud, rtd) == 0) {
            bname = strdup(block_node_backing_file(t));
        } else {
            bname = extsnap_backing_name_for(block_node_filename(u),
                                block_node_full_backing_filename(t));
        }
        free(ud);
        free(td);
        free(rud);
        free(rtd);
        bfmt = strdup(block_node_backing_format(t) ? block_node_backing_format(t)
                                        : block_node_format(block_backing(t)));
        if (!bname || !bfmt) {
            ret = error_setf(err, ENOMEM, "out of memory");
            goto out;
        }
    }
    /* The dropped layer must be ours alone. */
    BlockNode *probe = extsnap_lock_file(block_node_filename(t), err);
    if (!probe) {
        error_prefixf(err, "layer '%s' is in use", c.layers[k].name);
        ret = -(err && err->code ? err->code : EBUSY);
        goto out;
    }
    block_close(probe);
    bool shared_inode = false;
    for (int j = 0; j < c.n; j++) {
        shared_inode |= j != k && c.layers[j].has_st &&
                        extsnap_same_inode(&c.layers[j].st, &tst);
    }
    const char *ufmt = block_node_format(u);
    /* The discovery chain is unlocked; the rebase opens its own. */
    block_close(c.top);
    c.top = NULL;
    if (k == 1) {
        /* The layer above is the active image itself: our writer lock on
         * it is handed to the node that writes it. */
        block_close(c.hold);
        c.hold = NULL;
    }
    upper = block_open(upath, ufmt, NULL, BLOCK_O_RDWR, err);
    if (!upper) {
        ret = -(err && err->code ? err->code : EIO);
        goto out;
    }
    if (!shared_inode) {
        ret = extsnap_journal_write(&c, &tpath, 1, err);
        if (ret < 0) {
            goto out;
        }
    }
    BlockRebase r = {
        .backing = bname ? bname : "",
        .backing_fmt = bfmt,
        .progress = progress,
        .progress_opaque = opaque,
    };
    ret = block_rebase(upper, &r, err);
    if (ret >= 0) {
        ret = block_flush(upper);
        if (ret < 0) {
            error_setf(err, -ret, "Could not flush '%s': %s", upath,
                       strerror(-ret));
        }
    }
    block_close(upper);
    upper = NULL;
    if (ret < 0) {
        /* The header may or may not have switched: the journal stays and
         * the next run deletes the layer only if the chain has left it. */
        goto out;
    }
    if (!shared_inode) {
        unlink(tpath);
        extsnap_sync_dir_of(tpath, NULL);
        unlink(c.journal);
        extsnap_sync_dir_of(c.journal, NULL);
    }
    ret = 0;
out:
    block_close(upper);
    free(bname);
    free(bfmt);
    free(tpath);
    free(upath);
    extsnap_ctx_free(&c);
    return ret;
}

int block_extsnap_list(const char *active, const char *fmt, int flags,
                       BlockExtSnapList *out, Error *err)
{
    Ctx c = { 0 };
    memset(out, 0, sizeof(*out));
    int ret = extsnap_ctx_names(&c, active, err);
    if (ret >= 0) {
        ret = extsnap_open_chain(&c, fmt, flags & (BLOCK_O_SHARE |
                                                   BLOCK_O_NO_LOCK), err);
    }
    if (ret < 0) {
        extsnap_ctx_free(&c);
        return ret;
    }
    out->layers = calloc((size_t)c.n, sizeof(*out->layers));
    if (!out->layers) {
        extsnap_ctx_free(&c);
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (int i = 0; i < c.n; i++) {
        Layer *l = &c.layers[i];
        BlockExtSnapLayer *o = &out->layers[out->n++];
        o->name = strdup(l->name);
        o->filename = strdup(block_node_filename(l->node));
        o->format = strdup(block_node_format(l->node));
        int64_t len = block_get_length(l->node);
        o->virtual_size = len > 0 ? (uint64_t)len : 0;
        o->actual_size = block_get_allocated_size(l->node);
        o->active = i == 0;
        if (l->has_st) {
            o->date_sec = (int64_t)l->st.st_mtim.tv_sec;
            o->date_nsec = (uint32_t)l->st.st_mtim.tv_nsec;
        }
        if (!o->name || !o->filename || !o->format) {
            block_extsnap_list_free(out);
            extsnap_ctx_free(&c);
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    struct stat st;
    out->interrupted = stat(c.tmp, &st) == 0 || stat(c.journal, &st) == 0;
    extsnap_ctx_free(&c);
    return 0;
}

void block_extsnap_list_free(BlockExtSnapList *l)
{
    for (int i = 0; i < l->n; i++) {
        free(l->layers[i].name);
        free(l->layers[i].filename);
        free(l->layers[i].format);
    }
    free(l->layers);
    memset(l, 0, sizeof(*l));
}
