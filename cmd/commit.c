/*
 * commit.c - `imgtool commit`: merge an overlay into a backing image, as
 * qemu-img commit does.  The algorithm (and its crash-safety argument) is
 * the job in block/job/commit.c; -b implies -d as in qemu-img, because
 * the layers in between are no longer valid views.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/job/commit.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/parse-options.h"
#include "imgtool/imgtool.h"

static struct {
    const char *cache;
    const char *base_name;
    bool drop;
    bool progress;
    uint64_t rate;
} o;

/* -b: the layers in between become invalid views, so -b implies -d. */
static int opt_base(const CmdOpt *opt, const char *arg, void *ctx)
{
    o.base_name = arg;
    o.drop = true;
    return 0;
}

static const CmdOpt commit_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_QUIET,
    CMDOPT_FORMAT,
    CMDOPT_CACHE('t', "cache", &o.cache, ""),
    { CMDOPT_FN, 'b', NULL, "base",
      "commit into this image of the backing chain (default: the "
      "immediate backing file); implies -d", .fn = opt_base },
    { CMDOPT_SIZE, 'r', NULL, "rate_limit",
      "limit the copy to rate_limit bytes per second", .value = &o.rate,
      .what = "rate limit", .min = 1 },
    { CMDOPT_FLAG, 'd', NULL, NULL,
      "do not empty the top image afterwards", .value = &o.drop },
    CMDOPT_PROGRESS(&o.progress),
    CMDOPT_END,
};

static const CmdSpec commit_spec = {
    .name = "commit",
    .args = "filename",
    .description = "Merges an overlay into its backing file and empties "
                   "it.\n",
    .opts = commit_opts,
};

static void commit_progress(void *opaque, uint64_t done, uint64_t total)
{
    progress_update(opaque, done, total);
}

int cmd_commit(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&commit_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    const char *cache = o.cache, *base_name = o.base_name;
    bool drop = o.drop, show_progress = o.progress;
    uint64_t rate = o.rate;
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
    if (cmd_cache_flags(cache, false, &cache_flags) < 0) {
        return 1;
    }

    const char *name = argv[optind];
    Error err = { 0 };
    rc = 1;
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
