/*
 * commit.c - merging an overlay into a backing image (imgtool commit, and
 * later backups' retention): the job behind the command.
 *
 * What the top allocates (and every layer between it and the base) is
 * copied into the base by the copy engine (src_base = the base, so only
 * the layers above it are read); a base shorter than the top grows first.
 * Then, unless told to keep it, the top is emptied so it reads through to
 * the base again.  Backing links are never rewritten.
 *
 * Interrupt safety: the base is flushed before the top is emptied, so a
 * kill during the copy leaves the top's view intact (it still defines
 * every copied range) and a kill while emptying exposes only base data
 * that already equals what the top held.  Every image stays consistent;
 * at worst clusters leak.
 *
 * The base is made writable in place (block_reopen), so whoever else uses
 * the chain's nodes keeps them.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/job/commit.h"
#include "block/job/copy.h"

/* Local files by their real path; URLs (gluster://, iscsi://) by the
 * name itself, which is all there is to go by. */
static bool same_file(const char *a, const char *b)
{
    if (strstr(a, "://") || strstr(b, "://")) {
        return strcmp(a, b) == 0;
    }
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra) || !realpath(b, rb)) {
        return false;
    }
    return strcmp(ra, rb) == 0;
}

/* The node above the base named by -b: -b matches a layer's backing
 * name as stored, or the same file once resolved against that layer's
 * directory (as qemu-img finds backing images).  NULL when not found. */
BlockNode *block_commit_find_base_parent(BlockNode *top, const char *name)
{
    for (BlockNode *n = top; n && block_backing(n); n = block_backing(n)) {
        if (block_node_backing_file(n) && strcmp(block_node_backing_file(n), name) == 0) {
            return n;
        }
        char *resolved = block_resolve_backing(block_node_filename(n), name);
        bool hit = resolved && same_file(resolved, block_node_filename(block_backing(n)));
        free(resolved);
        if (hit) {
            return n;
        }
    }
    return NULL;
}

typedef struct CommitProgress {
    const BlockCommit *c;
    uint64_t base;    /* offset of the running copy */
    uint64_t total;
} CommitProgress;

static void commit_progress(void *opaque, uint64_t done, uint64_t total)
{
    CommitProgress *cp = opaque;
    (void)total;
    if (cp->c->progress) {
        cp->c->progress(cp->c->progress_opaque, cp->base + done, cp->total);
    }
}

int block_commit(BlockNode *top, const BlockCommit *c, Error *err)
{
    const char *name = block_node_filename(top);
    if (!block_backing(top)) {
        return error_setf(err, EINVAL, "Image does not have a backing file");
    }
    BlockNode *parent = top;
    if (c->base_name) {
        parent = block_commit_find_base_parent(top, c->base_name);
        if (!parent) {
            return error_setf(err, ENOENT, "Did not find '%s' in the backing "
                              "chain of '%s'", c->base_name, name);
        }
    }
    int ret = block_reopen_backing_rw(parent, c->cache_flags, err);
    if (ret < 0) {
        return ret;
    }
    BlockNode *base = block_backing(parent);

    int64_t top_len = block_get_length(top);
    int64_t base_len = block_get_length(base);
    if (top_len < 0 || base_len < 0) {
        int e = top_len < 0 ? (int)top_len : (int)base_len;
        return error_setf(err, -e, "Could not get the image size: %s",
                          strerror(-e));
    }
    if (base_len < top_len &&
        block_truncate(base, (uint64_t)top_len, false, PREALLOC_OFF,
                       err) < 0) {
        error_prefixf(err, "Could not resize '%s'", block_node_filename(base));
        return -(err && err->code ? err->code : EIO);
    }
    /* The grown part of the base would read through to the base's own
     * backing file, which the top never showed there (it read zeroes
     * past the base's old end): hide it, as QEMU's truncate does. */
    if (base_len < top_len && block_backing(base)) {
        int64_t blen = block_get_length(block_backing(base));
        uint64_t end = blen < top_len ? (uint64_t)(blen > 0 ? blen : 0)
                                      : (uint64_t)top_len;
        if (end > (uint64_t)base_len) {
            ret = block_write_zeroes(base, (uint64_t)base_len,
                                     end - (uint64_t)base_len, 0);
            if (ret < 0) {
                return error_setf(err, -ret, "Could not resize '%s': %s",
                                  block_node_filename(base), strerror(-ret));
            }
        }
    }

    /* Where a layer between top and base is shorter than the top, the
     * top reads zeroes past its end although nothing "allocates" them
     * there, so src_base would skip them: past the shortest such layer,
     * copy the top's whole view, writing only what differs. */
    uint64_t split = (uint64_t)top_len;
    for (BlockNode *m = block_backing(top); m && m != base; m = block_backing(m)) {
        int64_t ml = block_get_length(m);
        if (ml >= 0 && (uint64_t)ml < split) {
            split = (uint64_t)ml;
        }
    }
    CommitProgress cp = { .c = c, .total = (uint64_t)top_len };
    for (int pass = 0; pass < 2; pass++) {
        uint64_t start = pass ? split : 0;
        uint64_t end = pass ? (uint64_t)top_len : split;
        if (start >= end) {
            continue;
        }
        CopyJob job;
        copy_job_init(&job);
        job.src = &top;
        job.nsrc = 1;
        job.src_base = pass ? NULL : base;
        job.compare_target = pass == 1;
        job.dst = base;
        job.src_offset = start;
        job.dst_offset = start;
        job.length = end - start;
        job.rate_limit = c->rate_limit;
        job.flush = true;
        /* zero writes must hide what lies below the base, not expose it */
        job.no_unmap = block_backing(base) != NULL;
        job.progress = commit_progress;
        job.progress_opaque = &cp;
        cp.base = start;
        ret = copy_run(&job, err);
        if (ret < 0) {
            return ret;
        }
    }
    ret = block_flush(base);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not flush '%s'",
                          block_node_filename(base));
    }
    if (!c->keep_top) {
        ret = block_make_empty(top, err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

