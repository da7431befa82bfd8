/*
 * bitmap.c - `imgtool bitmap`: add, remove, clear, enable, disable or
 * merge persistent dirty bitmaps, as `qemu-img bitmap` does.
 *
 * Several actions may be given; they run in command-line order on the
 * one bitmap named last.  The first failing action stops the run with
 * "Operation <op> on bitmap <name> failed: <why>" and exit code 1, and
 * what the earlier actions did is still stored, as with qemu-img.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"

static const char bitmap_usage[] =
    "usage: imgtool bitmap (--merge SOURCE | --add | --remove | --clear |\n"
    "                       --enable | --disable)...\n"
    "                      [-b source_file [-F source_fmt]] [-g granularity]\n"
    "                      [--object objectdef] [--image-opts | -f fmt]\n"
    "                      filename bitmap\n"
    "\n"
    "  --add             create the bitmap (enabled, persistent)\n"
    "  --remove          delete the bitmap\n"
    "  --clear           clear every bit of the bitmap\n"
    "  --enable          let the bitmap track writes\n"
    "  --disable         stop the bitmap tracking writes\n"
    "  --merge SOURCE    set the bits of bitmap SOURCE in the bitmap\n"
    "  -b source_file    take the --merge SOURCE from this image\n"
    "  -F source_fmt     format of source_file\n"
    "  -g granularity    bytes per bit for --add (a power of two from 512\n"
    "                    to 2G; default: the cluster size within 4k..64k)\n"
    "  -f fmt            image format (probed when omitted)\n"
    "  --image-opts      filename is an option string (driver=...,...)\n";

enum {
    OPT_ADD = 256, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE,
};

static const struct option bitmap_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "add", no_argument, NULL, OPT_ADD },
    { "remove", no_argument, NULL, OPT_REMOVE },
    { "clear", no_argument, NULL, OPT_CLEAR },
    { "enable", no_argument, NULL, OPT_ENABLE },
    { "disable", no_argument, NULL, OPT_DISABLE },
    { "merge", required_argument, NULL, OPT_MERGE },
    { "granularity", required_argument, NULL, 'g' },
    { "source-file", required_argument, NULL, 'b' },
    { "source-format", required_argument, NULL, 'F' },
    IMAGE_ARGS_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
};

typedef struct Action {
    int op;
    const char *src;    /* --merge */
} Action;

static const char *op_name(int op)
{
    switch (op) {
    case OPT_ADD: return "add";
    case OPT_REMOVE: return "remove";
    case OPT_CLEAR: return "clear";
    case OPT_ENABLE: return "enable";
    case OPT_DISABLE: return "disable";
    default: return "merge";
    }
}

static int run_action(BlockNode *n, BlockNode *src_node, const Action *ac,
                      const char *name, uint64_t granularity, Error *err)
{
    switch (ac->op) {
    case OPT_ADD:
        return block_bitmap_add(n, name, granularity, true, err);
    case OPT_REMOVE:
        return block_bitmap_remove(n, name, err);
    case OPT_CLEAR:
        return block_bitmap_clear(n, name, err);
    case OPT_ENABLE:
    case OPT_DISABLE:
        return block_bitmap_enable(n, name, ac->op == OPT_ENABLE, err);
    default:
        return block_bitmap_merge(n, name, src_node ? src_node : n, ac->src,
                                  err);
    }
}

int cmd_bitmap(int argc, char **argv)
{
    ImageArgs a = { 0 };
    Action *acts = calloc((size_t)argc + 1, sizeof(*acts));
    int nacts = 0, c, r, rc = 1;
    const char *src_file = NULL, *src_fmt = NULL;
    uint64_t granularity = 0;
    bool merge = false;
    BlockNode *n = NULL, *src = NULL;
    Error err = { 0 };

    if (!acts) {
        imgtool_error("Out of memory");
        return 1;
    }
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hb:F:g:f:", bitmap_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(bitmap_usage, stdout);
            rc = 0;
            goto out;
        case OPT_ADD:
        case OPT_REMOVE:
        case OPT_CLEAR:
        case OPT_ENABLE:
        case OPT_DISABLE:
        case OPT_MERGE:
            acts[nacts].op = c;
            acts[nacts].src = c == OPT_MERGE ? optarg : NULL;
            merge |= c == OPT_MERGE;
            nacts++;
            break;
        case 'b':
            src_file = optarg;
            break;
        case 'F':
            src_fmt = optarg;
            break;
        case 'g':
            if (parse_size(optarg, &granularity) < 0) {
                imgtool_error("Invalid granularity specified: '%s' (use a "
                              "number with an optional k, M, G, T, P or E "
                              "suffix)", optarg);
                goto out;
            }
            /* 0 means "not given", as for qemu-img; other bad values
             * are refused by --add, where qemu-img refuses them. */
            break;
        default:
            r = image_args_option(&a, c, optarg, "bitmap", argv);
            if (r) {
                rc = r;
                goto out;
            }
        }
    }
    if (nacts == 0) {
        rc = usage_error("bitmap", "Need at least one of --add, --remove, "
                         "--clear, --enable, --disable, or --merge");
        goto out;
    }
    if (granularity) {
        bool add = false;
        for (int i = 0; i < nacts; i++) {
            add |= acts[i].op == OPT_ADD;
        }
        if (!add) {
            rc = usage_error("bitmap", "granularity only supported with "
                             "--add");
            goto out;
        }
    }
    if (src_fmt && !src_file) {
        rc = usage_error("bitmap", "-F only supported with -b");
        goto out;
    }
    if (src_file && !merge) {
        rc = usage_error("bitmap", "Merge bitmap source file only supported "
                         "with --merge");
        goto out;
    }
    if (argc - optind != 2) {
        rc = usage_error("bitmap", "Expecting filename and bitmap name");
        goto out;
    }
    if (image_args_check(&a) < 0) {
        goto out;
    }
    const char *filename = argv[optind];
    const char *name = argv[optind + 1];

    n = imgtool_open(filename, a.fmt, a.image_opts,
                     image_args_flags(&a) | BLOCK_O_RDWR, &err);
    if (!n) {
        imgtool_report(&err);
        goto out;
    }
    if (src_file) {
        src = imgtool_open(src_file, src_fmt, false,
                           BLOCK_O_NO_BACKING | BLOCK_O_SHARE, &err);
        if (!src) {
            imgtool_report(&err);
            goto out;
        }
    }
    rc = 0;
    for (int i = 0; i < nacts; i++) {
        error_clear(&err);
        if (run_action(n, src, &acts[i], name, granularity, &err) < 0) {
            imgtool_error("Operation %s on bitmap %s failed: %s",
                          op_name(acts[i].op), name, err.msg);
            rc = 1;
            break;
        }
    }
    error_clear(&err);
    if (block_bitmaps_store(n, &err) < 0) {
        imgtool_error("%s: could not store the bitmaps: %s", filename,
                      err.msg);
        rc = 1;
    }
out:
    block_close(src);
    block_close(n);
    free(acts);
    return rc;
}
