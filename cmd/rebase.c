/*
 * rebase.c - `imgtool rebase`: change an image's backing file, as
 * qemu-img rebase does.
 *
 * The work (safe mode's copy of what the old chain shows, then the
 * header switch, in that order so that a kill leaves the old state) is
 * block_rebase() in block/rebase.c, which external snapshot deletion
 * shares.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"
#include "imgtool/parse-options.h"

static struct {
    const char *cache, *src_cache, *backing, *backing_fmt;
    bool unsafe, progress, compress;
} o;

static const CmdOpt rebase_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    { CMDOPT_COMMON, 'U', "force-share", NULL,
      "open the backing files without conflicting locks",
      .common_code = 'U' },
    CMDOPT_QUIET,
    CMDOPT_FORMAT,
    CMDOPT_CACHE('t', "cache", &o.cache, "the image's "),
    CMDOPT_CACHE('T', "src_cache", &o.src_cache, "the backing files' "),
    CMDOPT_PROGRESS(&o.progress),
    { CMDOPT_FLAG, 'u', NULL, NULL,
      "unsafe: change the header only, copy nothing", .value = &o.unsafe },
    { CMDOPT_FLAG, 'c', NULL, NULL, "store the clusters written compressed",
      .value = &o.compress },
    { CMDOPT_STRING, 'b', NULL, "backing_file",
      "the new backing file (relative names are relative to the image's "
      "directory); \"\" removes the backing file", .value = &o.backing },
    { CMDOPT_STRING, 'F', NULL, "backing_fmt",
      "format of the new backing file", .value = &o.backing_fmt },
    CMDOPT_END,
};

static const CmdSpec rebase_spec = {
    .name = "rebase",
    .args = "filename",
    .description = "Changes an image's backing file (-b is needed unless "
                   "-u is given).\n",
    .opts = rebase_opts,
};

typedef struct RebaseBar {
    Progress *p;
    bool show;
} RebaseBar;

/* The bar starts with the copy, once the new backing file is open, as
 * qemu-img's does. */
static void rebase_progress(void *opaque, uint64_t done, uint64_t total)
{
    RebaseBar *bar = opaque;
    if (!bar->p) {
        bar->p = progress_start(bar->show);
    }
    progress_update(bar->p, done, total);
}

int cmd_rebase(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&rebase_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    const char *backing = o.backing, *backing_fmt = o.backing_fmt;
    bool unsafe = o.unsafe, show_progress = o.progress;
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
    char *bpath = NULL, *bfmt = NULL;
    Error berr = { 0 };
    if (imgtool_backing_name(backing, &bpath, &bfmt, &berr) < 0) {
        imgtool_report(&berr);
        return 1;
    }
    if (bpath) {
        backing = bpath;    /* the volume's path */
        backing_fmt = backing_fmt ? backing_fmt : bfmt;
    }
    if (*backing && !backing_fmt && unsafe) {
        imgtool_error("Could not change the backing file to '%s': backing "
                      "format must be specified", backing);
        free(bpath);
        free(bfmt);
        return 1;
    }
    int cache_flags = 0, src_flags = 0;
    if (cmd_cache_flags(o.cache, false, &cache_flags) < 0 ||
        cmd_cache_flags(o.src_cache, true, &src_flags) < 0) {
        free(bpath);
        free(bfmt);
        return 1;
    }

    const char *name = argv[optind];
    Error err = { 0 };
    rc = 1;
    int flags = BLOCK_O_RDWR | cache_flags;
    if (unsafe) {
        flags |= BLOCK_O_NO_BACKING;
    }
    BlockNode *top = imgtool_open(name, a.fmt, a.image_opts, flags, &err);
    if (!top) {
        imgtool_report(&err);
        free(bpath);
        free(bfmt);
        return 1;
    }
    RebaseBar bar = { .show = show_progress };
    if (*backing && !backing_fmt) {
        /* As qemu-img: a new backing file that cannot be opened is
         * reported before its missing format (qemu-img finds that only
         * after copying; we refuse before anything is written). */
        char *path = block_resolve_backing(block_node_filename(top), backing);
        BlockNode *nb = path ? block_open(path, NULL, NULL,
                                          image_args_flags(&a) | src_flags |
                                          BLOCK_O_NO_BACKING, &err) : NULL;
        free(path);
        if (!nb && error_is_set(&err)) {
            imgtool_error("Could not open new backing file '%s': %s",
                          backing, err.msg);
        } else {
            imgtool_error("Could not change the backing file to '%s': "
                          "backing format must be specified", backing);
        }
        block_close(nb);
        goto out;
    }
    BlockRebase rb = {
        .backing = backing,
        .backing_fmt = backing_fmt,
        /* -U applies to the new backing file, as in qemu-img */
        .backing_flags = image_args_flags(&a) | src_flags,
        .unsafe = unsafe,
        .compress = o.compress,
        .progress = rebase_progress,
        .progress_opaque = &bar,
    };
    if (block_rebase(top, &rb, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    progress_update(bar.p, 1, 1);
    rc = 0;

out:
    progress_finish(bar.p);
    block_close(top);
    free(bpath);
    free(bfmt);
    return rc;
}
