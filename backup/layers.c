/*
 * layers.c - opening points' qcow2 layers and chains (see layers.h).
 *
 * Invariant: a chain is built bottom first, every layer opened with
 * BLOCK_O_NO_BACKING and given its parent with block_set_backing, so
 * the records decide the chain and an encrypted layer gets the key
 * without nested backing.* options.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/layers.h"

char *bk_layer_backing_name(const char *parent_id, const char *disk)
{
    char *s = NULL;
    return asprintf(&s, "../%s/%s.qcow2", parent_id, disk) < 0 ? NULL : s;
}

int bk_layer_opts(BkRepo *r, KVList *opts, Error *err)
{
    if (!r->encrypted) {
        return 0;
    }
    if (!r->have_key || !r->key_secret) {
        return error_setf(err, EACCES, "%s: the repository is encrypted: "
                          "give its passphrase with --object secret,id=ID,"
                          "file=PATH --key-secret ID", r->path);
    }
    if (kvlist_set(opts, "encrypt.key-secret", r->key_secret) < 0) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

BlockNode *bk_layer_open(BkRepo *r, const char *id, const char *disk,
                         int flags, Error *err)
{
    KVList opts = { 0 };
    char *path = bk_disk_file(r, id, disk, "qcow2");
    BlockNode *n = NULL;
    if (!path) {
        error_setf(err, ENOMEM, "out of memory");
    } else if (bk_layer_opts(r, &opts, err) == 0) {
        n = block_open(path, "qcow2", &opts, flags | BLOCK_O_NO_BACKING, err);
        if (!n) {
            error_prefixf(err, "point %s disk %s", id, disk);
        }
    }
    kvlist_free(&opts);
    free(path);
    return n;
}

void bk_chain_close(BkChain *c)
{
    block_close(c->top);
    for (int i = 0; i < c->n; i++) {
        free(c->ids[i]);
    }
    free(c->ids);
    memset(c, 0, sizeof(*c));
}

const char *bk_chain_layer_name(void *chain, int depth)
{
    BkChain *c = chain;
    return depth >= 0 && depth < c->n ? c->ids[depth] : NULL;
}

int bk_chain_open(BkRepo *r, BkPoint *p, const char *disk, int top_flags,
                  BkChain *out, Error *err)
{
    BkPoint *chain[BLOCK_MAX_CHAIN];
    int n = 0;
    int ret = 0;

    memset(out, 0, sizeof(*out));
    for (BkPoint *q = p; q;) {
        BkDiskRec *d = bk_point_disk(q, disk);
        if (!d) {
            return error_setf(err, ENOENT, "point %s has no disk '%s'",
                              q->id, disk);
        }
        if (n == BLOCK_MAX_CHAIN) {
            return error_setf(err, ELOOP, "the chain of point %s disk %s "
                              "is longer than %d points", p->id, disk,
                              BLOCK_MAX_CHAIN);
        }
        chain[n++] = q;
        if (!d->parent) {
            break;
        }
        BkPoint *parent = bk_repo_find(r, d->parent);
        if (!parent || parent->seq >= q->seq) {
            return error_setf(err, ENOENT, "point %s disk %s: its parent "
                              "point %s is missing", q->id, disk, d->parent);
        }
        q = parent;
    }
    out->ids = calloc((size_t)n, sizeof(*out->ids));
    if (!out->ids) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        out->ids[i] = strdup(chain[i]->id);
        if (!out->ids[i]) {
            out->n = i;
            bk_chain_close(out);
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    out->n = n;
    BlockNode *below = NULL;
    for (int i = n - 1; i >= 0; i--) {
        BlockNode *l = bk_layer_open(r, chain[i]->id, disk,
                                     i == 0 ? top_flags : 0, err);
        if (!l) {
            ret = -(err->code ? err->code : EIO);
            block_close(below);
            bk_chain_close(out);
            return ret;
        }
        if (below) {
            ret = block_set_backing(l, below, err);
            if (ret < 0) {
                block_close(l);
                bk_chain_close(out);
                return ret;
            }
        }
        below = l;
    }
    out->top = below;
    return 0;
}
