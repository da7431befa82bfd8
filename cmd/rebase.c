/*
 * rebase.c - `imgtool rebase`: change an image's backing file, as
 * qemu-img rebase does.
 *
 * Safe mode (the default) keeps the guest-visible content: wherever the
 * top does not allocate and the old backing chain reads differently from
 * the new backing file, the old content is written into the top.  This is
 * done by the copy engine with compare_target: while it runs, the top's
 * in-memory backing link already points at the new backing file, so
 * reading the top there yields the new content and only the differences
 * get written.  `-b ""` flattens the whole chain into the top.  Unsafe
 * mode (-u) only rewrites the header.
 *
 * Interrupt safety: the header names the new backing file only after all
 * data is written and flushed.  A kill before that leaves the old link,
 * and what was copied equals what the old chain showed, so the image
 * reads the same as before.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/copy.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"

static const char rebase_usage[] =
    "usage: imgtool rebase [--object objectdef] [--image-opts] [-U] [-q]\n"
    "                      [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-c]\n"
    "                      -b backing_file [-F backing_fmt] filename\n"
    "\n"
    "  -b file       the new backing file (relative names are relative to\n"
    "                the image's directory); \"\" removes the backing file\n"
    "  -F fmt        format of the new backing file\n"
    "  -u            unsafe: change the header only, copy nothing\n"
    "  -c            store the clusters written compressed\n"
    "  -t cache      cache mode of the image; -T: of the backing files\n"
    "  -U            open the backing files without conflicting locks\n"
    "  -p            show progress; -q: quiet\n";

static const struct option rebase_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "quiet", no_argument, NULL, 'q' },
    IMAGE_ARGS_LONG_OPTIONS,
    FORCE_SHARE_LONG_OPTION,
    { NULL, 0, NULL, 0 },
};

typedef struct RebaseProgress {
    Progress *p;
    uint64_t base;    /* bytes of the image before the current job */
    uint64_t total;
    /* The new backing file's twin in the old chain, or NULL; below
     * `split` (the shortest layer above it) only what the old chain
     * allocates above it can differ, so nothing else is read. */
    BlockNode *prefix;
    uint64_t split;
    bool compress;    /* -c: clusters written are stored compressed */
} RebaseProgress;

static bool same_image(BlockNode *a, BlockNode *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (a->drv != b->drv || !realpath(a->filename, ra) ||
        !realpath(b->filename, rb)) {
        return false;
    }
    return strcmp(ra, rb) == 0;
}

/* Finds nb in old's chain (as qemu-img does, to read less when rebasing
 * onto an image further down the same chain). */
static void find_prefix(BlockNode *old, BlockNode *nb, RebaseProgress *rp)
{
    rp->prefix = NULL;
    rp->split = UINT64_MAX;
    if (!nb) {
        return;
    }
    for (BlockNode *m = old; m; m = m->backing) {
        if (same_image(m, nb)) {
            rp->prefix = m;
            return;
        }
        int64_t ml = block_get_length(m);
        if (ml >= 0 && (uint64_t)ml < rp->split) {
            rp->split = (uint64_t)ml;
        }
    }
}

static void rebase_progress(void *opaque, uint64_t done, uint64_t total)
{
    RebaseProgress *rp = opaque;
    (void)total;
    progress_update(rp->p, rp->base + done, rp->total);
}

/* Makes [s, e) of top (unallocated there; its backing link already the
 * new one, nb) read what the old chain `old` reads. */
static int rebase_range(BlockNode *top, BlockNode *old, BlockNode *nb,
                        uint64_t s, uint64_t e, RebaseProgress *rp,
                        Error *err)
{
    int64_t old_len = old ? block_get_length(old) : 0;
    int64_t new_len = nb ? block_get_length(nb) : 0;
    if (old_len < 0 || new_len < 0) {
        return error_setf(err, EIO, "Could not get the backing file size");
    }
    uint64_t mid = e < (uint64_t)old_len ? e : (uint64_t)old_len;
    /* [s, cut) may skip what the prefix defines; past a shorter layer
     * above it the old chain reads zeroes that src_base would skip. */
    uint64_t cut = rp->prefix ? (mid < rp->split ? mid : rp->split) : s;
    if (cut < s) {
        cut = s;
    }
    for (int pass = 0; pass < 2; pass++) {
        uint64_t a = pass ? cut : s, b = pass ? mid : cut;
        if (a >= b) {
            continue;
        }
        CopyJob job;
        copy_job_init(&job);
        job.src = &old;
        job.nsrc = 1;
        job.src_base = pass ? NULL : rp->prefix;
        job.dst = top;
        job.src_offset = a;
        job.dst_offset = a;
        job.length = b - a;
        if (nb) {
            job.compare_target = true;
            job.no_unmap = true;   /* unmapping would expose nb */
        } else {
            job.dst_is_zero = true;
        }
        job.compress = rp->compress;
        job.progress = rebase_progress;
        job.progress_opaque = rp;
        rp->base = a;
        int ret = copy_run(&job, err);
        if (ret < 0) {
            return ret;
        }
    }
    /* Past the old chain's end the old view is zeroes. */
    uint64_t zs = s > mid ? s : mid;
    uint64_t ze = e < (uint64_t)new_len ? e : (uint64_t)new_len;
    if (zs < ze && !block_is_zero_fast(nb, zs, ze - zs)) {
        int ret = block_write_zeroes(top, zs, ze - zs, 0);
        if (ret < 0) {
            return error_setf(err, -ret, "error while writing at byte %llu: "
                              "%s", (unsigned long long)zs, strerror(-ret));
        }
    }
    return 0;
}

static int rebase_data(BlockNode *top, BlockNode *old, BlockNode *nb,
                       bool compress, Progress *prog, Error *err)
{
    int64_t len = block_get_length(top);
    if (len < 0) {
        return error_setf(err, (int)-len, "Could not get the image size");
    }
    RebaseProgress rp = { .p = prog, .total = (uint64_t)len };
    find_prefix(old, nb, &rp);
    rp.compress = compress;
    uint64_t off = 0;
    while (off < (uint64_t)len) {
        uint64_t pnum = 0;
        int st = block_status(top, off, (uint64_t)len - off, &pnum, NULL,
                              NULL);
        if (st < 0) {
            return error_setf(err, -st, "error while reading block status "
                              "at byte %llu: %s", (unsigned long long)off,
                              strerror(-st));
        }
        if (pnum == 0) {
            pnum = (uint64_t)len - off;
        }
        if (!(st & BLOCK_STATUS_ALLOCATED)) {
            int ret = rebase_range(top, old, nb, off, off + pnum, &rp, err);
            if (ret < 0) {
                return ret;
            }
        }
        off += pnum;
        progress_update(prog, off, (uint64_t)len);
    }
    int ret = block_flush(top);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not flush '%s': %s",
                          top->filename, strerror(-ret));
    }
    return 0;
}

int cmd_rebase(int argc, char **argv)
{
    const char *cache = NULL, *src_cache = NULL;
    const char *backing = NULL, *backing_fmt = NULL;
    ImageArgs a = { 0 };
    bool unsafe = false, show_progress = false, compress = false;
    int c, r;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:b:t:T:Upucq", rebase_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(rebase_usage, stdout);
            return 0;
        case 'b':
            backing = optarg;
            break;
        case 'F':
            backing_fmt = optarg;
            break;
        case 't':
            cache = optarg;
            break;
        case 'T':
            src_cache = optarg;
            break;
        case 'u':
            unsafe = true;
            break;
        case 'p':
            show_progress = true;
            break;
        case 'c':
            compress = true;
            break;
        default:
            r = image_args_option(&a, c, optarg, "rebase", argv);
            if (r) {
                return r;
            }
        }
    }
    if (argc - optind != 1) {
        return usage_error("rebase", "Expecting one image file name");
    }
    if (!unsafe && !backing) {
        return usage_error("rebase", "Must specify backing file (-b) or use "
                           "unsafe mode (-u)");
    }
    if (image_args_check(&a) < 0) {
        return 1;
    }
    if (!backing) {
        backing = "";
    }
    if (a.quiet) {
        show_progress = false;
    }
    if (*backing && !backing_fmt) {
        imgtool_error("Could not change the backing file to '%s': backing "
                      "format must be specified", backing);
        return 1;
    }
    int cache_flags = 0, src_flags = 0;
    if (cache && imgtool_parse_cache(cache, &cache_flags) < 0) {
        imgtool_error("Invalid cache option: %s", cache);
        return 1;
    }
    if (src_cache && imgtool_parse_cache(src_cache, &src_flags) < 0) {
        imgtool_error("Invalid source cache option: %s", src_cache);
        return 1;
    }

    const char *name = argv[optind];
    Error err = { 0 };
    int rc = 1;
    Progress *prog = NULL;
    BlockNode *nb = NULL, *old = NULL;
    int flags = BLOCK_O_RDWR | cache_flags;
    if (unsafe) {
        flags |= BLOCK_O_NO_BACKING;
    }
    BlockNode *top = imgtool_open(name, a.fmt, a.image_opts, flags, &err);
    if (!top) {
        imgtool_report(&err);
        return 1;
    }
    if (compress && !unsafe && !top->drv->supports_compressed) {
        imgtool_error("Compression not supported for this file format");
        goto out;
    }
    if (*backing && !top->drv->supports_backing) {
        imgtool_error("Could not change the backing file to '%s': Operation "
                      "not supported", backing);
        goto out;
    }

    if (!unsafe) {
        if (*backing) {
            char *path = block_resolve_backing(top->filename, backing);
            nb = path ? block_open(path, backing_fmt, NULL,
                                   image_args_flags(&a) | src_flags, &err)
                      : NULL;
            free(path);
            if (!nb) {
                imgtool_error("Could not open new backing file '%s': %s",
                              backing, err.msg);
                goto out;
            }
        }
        /* From here on top reads through the new backing file. */
        old = top->backing;
        top->backing = nb;
        prog = progress_start(show_progress);
        int ret = rebase_data(top, old, nb, compress, prog, &err);
        if (ret < 0) {
            top->backing = old;
            old = NULL;
            imgtool_report(&err);
            goto out;
        }
        nb = NULL;   /* owned by top now */
    }

    if (block_change_backing_file(top, *backing ? backing : NULL,
                                  *backing ? backing_fmt : NULL, &err) < 0) {
        if (!error_is_set(&err)) {
            error_setf(&err, EIO, "unknown error");
        }
        imgtool_error("Could not change the backing file to '%s': %s",
                      backing, err.msg);
        goto out;
    }
    progress_update(prog, 1, 1);
    rc = 0;

out:
    progress_finish(prog);
    block_close(old);
    block_close(nb);
    block_close(top);
    return rc;
}
