/*
 * rebase.c - changing an image's backing file (qemu-img rebase, and the
 * removal of a layer from an external snapshot chain).
 *
 * Safe mode keeps the guest-visible content: wherever the top does not
 * allocate and the old backing chain reads differently from the new
 * backing file, the old content is written into the top.  The copy
 * engine does it with compare_target: while it runs, the top's in-memory
 * backing link already points at the new backing file, so reading the
 * top there yields the new content and only the differences get written.
 * An empty new backing name flattens the whole chain into the top.
 * Unsafe mode only rewrites the header.
 *
 * Interrupt safety: the header names the new backing file only after all
 * data is written and flushed.  A kill before that leaves the old link,
 * and what was copied equals what the old chain showed, so the image
 * reads the same as before.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "block/job/copy.h"

typedef struct RebaseState {
    const BlockRebase *r;
    uint64_t base;    /* bytes of the image before the current job */
    uint64_t total;
    /* The new backing file's twin in the old chain, or NULL; below
     * `split` (the shortest layer above it) only what the old chain
     * allocates above it can differ, so nothing else is read. */
    BlockNode *prefix;
    uint64_t split;
} RebaseState;

static void report(RebaseState *rs, uint64_t done)
{
    if (rs->r->progress) {
        rs->r->progress(rs->r->progress_opaque, done, rs->total);
    }
}

static bool same_image(BlockNode *a, BlockNode *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (strcmp(block_node_format(a), block_node_format(b)) != 0 ||
        !realpath(block_node_filename(a), ra) ||
        !realpath(block_node_filename(b), rb)) {
        return false;
    }
    return strcmp(ra, rb) == 0;
}

/* Finds nb in old's chain (as qemu-img does, to read less when rebasing
 * onto an image further down the same chain). */
static void find_prefix(BlockNode *old, BlockNode *nb, RebaseState *rs)
{
    rs->prefix = NULL;
    rs->split = UINT64_MAX;
    if (!nb) {
        return;
    }
    for (BlockNode *m = old; m; m = block_backing(m)) {
        if (same_image(m, nb)) {
            rs->prefix = m;
            return;
        }
        int64_t ml = block_get_length(m);
        if (ml >= 0 && (uint64_t)ml < rs->split) {
            rs->split = (uint64_t)ml;
        }
    }
}

static void job_progress(void *opaque, uint64_t done, uint64_t total)
{
    RebaseState *rs = opaque;
    (void)total;
    report(rs, rs->base + done);
}

/* Makes [a, b) of top read what the old chain `old` reads wherever top
 * does not allocate (its backing link is already the new one, nb): one
 * copy job that skips top's own clusters.  Below the prefix's split only
 * what the old chain allocates above the prefix can differ. */
static int rebase_copy(BlockNode *top, BlockNode *old, BlockNode *nb,
                       BlockNode *src_base, uint64_t a, uint64_t b,
                       RebaseState *rs, Error *err)
{
    if (a >= b) {
        return 0;
    }
    CopyJob job;
    copy_job_init(&job);
    job.src = &old;
    job.nsrc = 1;
    job.src_base = src_base;
    job.dst = top;
    job.src_offset = a;
    job.dst_offset = a;
    job.length = b - a;
    job.skip_dst_allocated = true;
    job.src_zero_past_end = true;
    job.flush = false;   /* rebase_data flushes once, at the end */
    if (nb) {
        job.compare_target = true;
        job.no_unmap = true;   /* unmapping would expose nb */
    } else {
        job.dst_is_zero = true;
    }
    job.compress = rs->r->compress;
    job.progress = job_progress;
    job.progress_opaque = rs;
    rs->base = a;
    return copy_run(&job, err);
}

/* Without an old backing file the old view is zeroes: holes of top over
 * [s, e) where nb has data get zero writes.  Each status query starts
 * where the previous extent ended, on a cluster boundary of top, so no
 * earlier write has changed what it reports. */
static int rebase_zero_tail(BlockNode *top, BlockNode *nb, uint64_t s,
                            uint64_t e, Error *err)
{
    while (s < e) {
        uint64_t pnum = 0;
        int st = block_status(top, s, e - s, &pnum, NULL, NULL);
        if (st < 0) {
            return error_setf(err, -st, "error while reading block status "
                              "at byte %llu: %s", (unsigned long long)s,
                              strerror(-st));
        }
        if (pnum == 0) {
            pnum = e - s;
        }
        if (!(st & BLOCK_STATUS_ALLOCATED) &&
            !block_is_zero_fast(nb, s, pnum)) {
            int ret = block_write_zeroes(top, s, pnum, 0);
            if (ret < 0) {
                return error_setf(err, -ret, "error while writing at byte "
                                  "%llu: %s", (unsigned long long)s,
                                  strerror(-ret));
            }
        }
        s += pnum;
    }
    return 0;
}


static int rebase_data(BlockNode *top, BlockNode *old, BlockNode *nb,
                       RebaseState *rs, Error *err)
{
    int64_t len = block_get_length(top);
    int64_t old_len = old ? block_get_length(old) : 0;
    if (len < 0) {
        return error_setf(err, (int)-len, "Could not get the image size");
    }
    if (old_len < 0) {
        return error_setf(err, EIO, "Could not get the backing file size");
    }
    rs->total = (uint64_t)len;
    find_prefix(old, nb, rs);
    report(rs, 0);
    uint64_t mid = (uint64_t)(len < old_len ? len : old_len);
    /* [0, cut) may skip what the prefix defines; past a shorter layer
     * above it the old chain reads zeroes that src_base would skip.  The
     * cut lands on a cluster boundary of top: the second job asks which
     * clusters top allocates, and the first one's last write must not
     * have allocated the cluster the second starts in (reading more than
     * the prefix needs there is only slower, never wrong). */
    uint64_t cut = rs->prefix ? (mid < rs->split ? mid : rs->split) : 0;
    BlockInfoExtra extra;
    block_get_info_extra(top, &extra);
    if (extra.cluster_size > 1) {
        cut -= cut % extra.cluster_size;
    }
    int ret;
    if (!old) {
        ret = nb ? rebase_zero_tail(top, nb, 0, (uint64_t)len, err) : 0;
    } else {
        ret = rebase_copy(top, old, nb, rs->prefix, 0, cut, rs, err);
        if (ret >= 0) {
            /* past the old chain's end its view is zeroes, to top's end */
            ret = rebase_copy(top, old, nb, NULL, cut, (uint64_t)len, rs,
                              err);
        }
    }
    if (ret < 0) {
        return ret;
    }
    report(rs, (uint64_t)len);
    ret = block_flush(top);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not flush '%s': %s",
                          block_node_filename(top), strerror(-ret));
    }
    return 0;
}

int block_rebase(BlockNode *top, const BlockRebase *r, Error *err)
{
    const char *backing = r->backing ? r->backing : "";
    if (r->compress && !r->unsafe && !block_node_can_compress(top)) {
        return error_setf(err, ENOTSUP, "Compression not supported for this "
                          "file format");
    }
    if (*backing && !block_node_supports_backing(top)) {
        return error_setf(err, ENOTSUP, "Could not change the backing file "
                          "to '%s': Operation not supported", backing);
    }
    if (!r->unsafe) {
        BlockNode *nb = NULL;
        if (*backing) {
            Error berr = { 0 };
            char *path = block_resolve_backing(block_node_filename(top), backing);
            if (!path) {
                error_setf(&berr, ENOMEM, "out of memory");
            } else {
                nb = block_open(path, r->backing_fmt, NULL, r->backing_flags,
                                &berr);
                free(path);
            }
            if (!nb) {
                return error_setf(err, berr.code ? berr.code : EIO,
                                  "Could not open new backing file '%s': %s",
                                  backing, berr.msg);
            }
        }
        /* From here on top reads through the new backing file; the old
         * chain stays open (our reference) to compare against. */
        BlockNode *old = block_ref(block_backing(top));
        int ret = block_set_backing(top, block_ref(nb), err);
        if (ret >= 0) {
            RebaseState rs = { .r = r };
            ret = rebase_data(top, old, nb, &rs, err);
            if (ret < 0) {
                Error ignored = { 0 };
                block_set_backing(top, block_ref(old), &ignored);
            }
        }
        block_close(nb);
        block_close(old);
        if (ret < 0) {
            return ret;
        }
    }

    Error herr = { 0 };
    int ret = block_change_backing_file(top, *backing ? backing : NULL,
                                        *backing ? r->backing_fmt : NULL,
                                        &herr);
    if (ret < 0) {
        return error_setf(err, herr.code ? herr.code : -ret,
                          "Could not change the backing file to '%s': %s",
                          backing, error_is_set(&herr) ? herr.msg
                                                       : "unknown error");
    }
    return 0;
}
