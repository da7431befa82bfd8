/*
 * commit.c - `imgtool commit`: merge an overlay into a backing image, as
 * qemu-img commit does.
 *
 * What the top allocates (and every layer between it and the base) is
 * copied into the base by the copy engine (src_base = the base, so only
 * the layers above it are read); a base shorter than the top grows first.
 * Then, unless -d (or -b, which implies -d as in qemu-img, because the
 * layers in between are no longer valid views), the top is emptied so it
 * reads through to the base again.  Backing links are never rewritten.
 *
 * Interrupt safety: the base is flushed before the top is emptied, so a
 * kill during the copy leaves the top's view intact (it still defines
 * every copied range) and a kill while emptying exposes only base data
 * that already equals what the top held.  Every image stays consistent;
 * at worst clusters leak.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/job/copy.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"

static const char commit_usage[] =
    "usage: imgtool commit [--object objectdef] [--image-opts] [-q] [-f fmt]\n"
    "                      [-t cache] [-b base] [-r rate_limit] [-d] [-p]\n"
    "                      filename\n"
    "\n"
    "  -f fmt        format of the top image (probed when omitted)\n"
    "  -t cache      cache mode: none, writeback (default), unsafe,\n"
    "                directsync, writethrough\n"
    "  -b base       commit into this image of the backing chain (default:\n"
    "                the immediate backing file); implies -d\n"
    "  -r rate       limit the copy to rate bytes per second\n"
    "  -d            do not empty the top image afterwards\n"
    "  -p            show progress; -q: quiet\n";

static const struct option commit_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "quiet", no_argument, NULL, 'q' },
    IMAGE_ARGS_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
};

static bool same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra) || !realpath(b, rb)) {
        return false;
    }
    return strcmp(ra, rb) == 0;
}

/* The node above the base named by -b: -b matches a layer's backing
 * name as stored, or the same file once resolved against that layer's
 * directory (as qemu-img finds backing images).  NULL when not found. */
static BlockNode *find_base_parent(BlockNode *top, const char *name)
{
    for (BlockNode *n = top; n && n->backing; n = n->backing) {
        if (n->backing_file && strcmp(n->backing_file, name) == 0) {
            return n;
        }
        char *resolved = block_resolve_backing(n->filename, name);
        bool hit = resolved && same_file(resolved, n->backing->filename);
        free(resolved);
        if (hit) {
            return n;
        }
    }
    return NULL;
}

typedef struct CommitProgress {
    Progress *p;
    uint64_t base;    /* offset of the running job */
    uint64_t total;
} CommitProgress;

static void commit_progress(void *opaque, uint64_t done, uint64_t total)
{
    CommitProgress *cp = opaque;
    (void)total;
    progress_update(cp->p, cp->base + done, cp->total);
}

int cmd_commit(int argc, char **argv)
{
    const char *cache = NULL, *base_name = NULL;
    ImageArgs a = { 0 };
    bool drop = false, show_progress = false;
    uint64_t rate = 0;
    int c, r;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:t:b:r:dpq", commit_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(commit_usage, stdout);
            return 0;
        case 't':
            cache = optarg;
            break;
        case 'b':
            base_name = optarg;
            drop = true;   /* the layers in between become invalid */
            break;
        case 'r':
            if (parse_size(optarg, &rate) < 0 || rate == 0) {
                imgtool_error("Invalid rate limit specified. You may use k, "
                              "M, G, T, P or E suffixes for");
                imgtool_error("kilobytes, megabytes, gigabytes, terabytes, "
                              "petabytes and exabytes.");
                return 1;
            }
            break;
        case 'd':
            drop = true;
            break;
        case 'p':
            show_progress = true;
            break;
        default:
            r = image_args_option(&a, c, optarg, "commit", argv);
            if (r) {
                return r;
            }
        }
    }
    if (argc - optind != 1) {
        return usage_error("commit", "Expecting one image file name");
    }
    if (image_args_check(&a) < 0) {
        return 1;
    }
    if (a.quiet) {
        show_progress = false;
    }
    int cache_flags = 0;
    if (cache && imgtool_parse_cache(cache, &cache_flags) < 0) {
        imgtool_error("Invalid cache option: %s", cache);
        return 1;
    }

    const char *name = argv[optind];
    Error err = { 0 };
    int rc = 1;
    Progress *prog = NULL;
    BlockNode *top = imgtool_open(name, a.fmt, a.image_opts,
                                  BLOCK_O_RDWR | cache_flags, &err);
    if (!top) {
        imgtool_report(&err);
        return 1;
    }
    if (!top->backing) {
        imgtool_error("Image does not have a backing file");
        goto out;
    }
    BlockNode *parent = top;
    if (base_name) {
        parent = find_base_parent(top, base_name);
        if (!parent) {
            imgtool_error("Did not find '%s' in the backing chain of '%s'",
                          base_name, name);
            goto out;
        }
    }
    if (block_reopen_backing_rw(parent, cache_flags, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    BlockNode *base = parent->backing;

    int64_t top_len = block_get_length(top);
    int64_t base_len = block_get_length(base);
    if (top_len < 0 || base_len < 0) {
        int e = top_len < 0 ? (int)top_len : (int)base_len;
        imgtool_error("Could not get the image size: %s", strerror(-e));
        goto out;
    }
    if (base_len < top_len &&
        block_truncate(base, (uint64_t)top_len, false, PREALLOC_OFF,
                       &err) < 0) {
        error_prefixf(&err, "Could not resize '%s'", base->filename);
        imgtool_report(&err);
        goto out;
    }
    /* The grown part of the base would read through to the base's own
     * backing file, which the top never showed there (it read zeroes
     * past the base's old end): hide it, as QEMU's truncate does. */
    if (base_len < top_len && base->backing) {
        int64_t blen = block_get_length(base->backing);
        uint64_t end = blen < top_len ? (uint64_t)(blen > 0 ? blen : 0)
                                      : (uint64_t)top_len;
        if (end > (uint64_t)base_len) {
            int ret = block_write_zeroes(base, (uint64_t)base_len,
                                         end - (uint64_t)base_len, 0);
            if (ret < 0) {
                imgtool_error("Could not resize '%s': %s", base->filename,
                              strerror(-ret));
                goto out;
            }
        }
    }

    /* Where a layer between top and base is shorter than the top, the
     * top reads zeroes past its end although nothing "allocates" them
     * there, so src_base would skip them: past the shortest such layer,
     * copy the top's whole view, writing only what differs. */
    uint64_t split = (uint64_t)top_len;
    for (BlockNode *m = top->backing; m && m != base; m = m->backing) {
        int64_t ml = block_get_length(m);
        if (ml >= 0 && (uint64_t)ml < split) {
            split = (uint64_t)ml;
        }
    }
    CommitProgress cp = { .p = progress_start(show_progress),
                          .total = (uint64_t)top_len };
    prog = cp.p;
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
        job.rate_limit = rate;
        job.flush = true;
        /* zero writes must hide what lies below the base, not expose it */
        job.no_unmap = base->backing != NULL;
        job.progress = commit_progress;
        job.progress_opaque = &cp;
        cp.base = start;
        if (copy_run(&job, &err) < 0) {
            imgtool_report(&err);
            goto out;
        }
    }
    if (block_flush(base) < 0) {
        imgtool_error("Could not flush '%s'", base->filename);
        goto out;
    }
    if (!drop && block_make_empty(top, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    progress_update(prog, 1, 1);
    progress_finish(prog);
    prog = NULL;
    if (!a.quiet) {
        printf("Image committed.\n");
    }
    rc = 0;

out:
    progress_finish(prog);
    block_close(top);
    return rc;
}
