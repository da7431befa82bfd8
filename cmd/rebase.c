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
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
    if (*backing && !backing_fmt) {
        imgtool_error("Could not change the backing file to '%s': backing "
                      "format must be specified", backing);
        free(bpath);
        free(bfmt);
        return 1;
    }
    int cache_flags = 0, src_flags = 0;
    if (cache && imgtool_parse_cache(cache, &cache_flags) < 0) {
        imgtool_error("Invalid cache option: %s", cache);
        free(bpath);
        free(bfmt);
        return 1;
    }
    if (src_cache && imgtool_parse_cache(src_cache, &src_flags) < 0) {
        imgtool_error("Invalid source cache option: %s", src_cache);
        free(bpath);
        free(bfmt);
        return 1;
    }

    const char *name = argv[optind];
    Error err = { 0 };
    int rc = 1;
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
    BlockRebase rb = {
        .backing = backing,
        .backing_fmt = backing_fmt,
        /* -U applies to the new backing file, as in qemu-img */
        .backing_flags = image_args_flags(&a) | src_flags,
        .unsafe = unsafe,
        .compress = compress,
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
