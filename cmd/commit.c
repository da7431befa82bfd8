/*
 * commit.c - `imgtool commit`: merge an overlay into a backing image, as
 * qemu-img commit does.  The algorithm (and its crash-safety argument) is
 * the job in block/job/commit.c; -b implies -d as in qemu-img, because
 * the layers in between are no longer valid views.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "block/job/commit.h"
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

static void commit_progress(void *opaque, uint64_t done, uint64_t total)
{
    progress_update(opaque, done, total);
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
    /* What makes the job refuse to start is reported before the progress
     * bar draws anything, as qemu-img does. */
    if (!block_backing(top)) {
        imgtool_error("Image does not have a backing file");
        goto out;
    }
    if (base_name && !block_commit_find_base_parent(top, base_name)) {
        imgtool_error("Did not find '%s' in the backing chain of '%s'",
                      base_name, name);
        goto out;
    }
    BlockCommit job = {
        .base_name = base_name,
        .rate_limit = rate,
        .keep_top = drop,
        .cache_flags = cache_flags,
        .progress = commit_progress,
    };
    prog = progress_start(show_progress);
    job.progress_opaque = prog;
    if (block_commit(top, &job, &err) < 0) {
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
