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
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"
#include "imgtool/parse-options.h"

typedef struct Action {
    const char *op;     /* the option's name: "add", "merge", ... */
    const char *src;    /* --merge */
} Action;

/* The actions in command-line order; room for one per argument. */
typedef struct Actions {
    Action *v;
    int n;
} Actions;

static struct {
    const char *src_file, *src_fmt;
    uint64_t granularity;
} o;

static bool has_action(const Actions *acts, const char *op)
{
    for (int i = 0; i < acts->n; i++) {
        if (!strcmp(acts->v[i].op, op)) {
            return true;
        }
    }
    return false;
}

static int opt_action(const CmdOpt *opt, const char *arg, void *ctx)
{
    Actions *acts = ctx;
    acts->v[acts->n++] = (Action){ opt->long_name, arg };
    return 0;
}

static int opt_granularity(const CmdOpt *opt, const char *arg, void *ctx)
{
    if (parse_size(arg, &o.granularity) < 0) {
        imgtool_error("Invalid granularity specified: '%s' (use a number "
                      "with an optional k, M, G, T, P or E suffix)", arg);
        return 1;
    }
    /* 0 means "not given", as for qemu-img; other bad values are
     * refused by --add, where qemu-img refuses them. */
    return 0;
}

static const CmdOpt bitmap_opts[] = {
    { CMDOPT_FN, 0, "merge", "SOURCE",
      "set the bits of bitmap SOURCE in the bitmap", .fn = opt_action },
    { CMDOPT_FN, 0, "add", NULL, "create the bitmap (enabled, persistent)",
      .fn = opt_action },
    { CMDOPT_FN, 0, "remove", NULL, "delete the bitmap", .fn = opt_action },
    { CMDOPT_FN, 0, "clear", NULL, "clear every bit of the bitmap",
      .fn = opt_action },
    { CMDOPT_FN, 0, "enable", NULL, "let the bitmap track writes",
      .fn = opt_action },
    { CMDOPT_FN, 0, "disable", NULL, "stop the bitmap tracking writes",
      .fn = opt_action },
    { CMDOPT_STRING, 'b', "source-file", "source_file",
      "take the --merge SOURCE from this image", .value = &o.src_file },
    { CMDOPT_STRING, 'F', "source-format", "source_fmt",
      "format of source_file", .value = &o.src_fmt },
    { CMDOPT_FN, 'g', "granularity", "granularity",
      "bytes per bit for --add (a power of two from 512 to 2G; default: "
      "the cluster size within 4k..64k)", .fn = opt_granularity },
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_FORMAT,
    CMDOPT_END,
};

static const CmdSpec bitmap_spec = {
    .name = "bitmap",
    .args = "filename bitmap",
    .description = "Changes a persistent dirty bitmap: at least one of "
                   "--merge, --add, --remove,\n--clear, --enable and "
                   "--disable, run in command-line order.\n",
    .opts = bitmap_opts,
};

static int run_action(BlockNode *n, BlockNode *src_node, const Action *ac,
                      const char *name, uint64_t granularity, Error *err)
{
    if (!strcmp(ac->op, "add")) {
        return block_bitmap_add(n, name, granularity, true, err);
    } else if (!strcmp(ac->op, "remove")) {
        return block_bitmap_remove(n, name, err);
    } else if (!strcmp(ac->op, "clear")) {
        return block_bitmap_clear(n, name, err);
    } else if (!strcmp(ac->op, "enable") || !strcmp(ac->op, "disable")) {
        return block_bitmap_enable(n, name, !strcmp(ac->op, "enable"), err);
    }
    return block_bitmap_merge(n, name, src_node ? src_node : n, ac->src,
                              err);
}

int cmd_bitmap(int argc, char **argv)
{
    ImageArgs a = { 0 };
    Actions acts = { calloc((size_t)argc + 1, sizeof(Action)), 0 };
    int rc = 1;
    BlockNode *n = NULL, *src = NULL;
    Error err = { 0 };

    if (!acts.v) {
        imgtool_error("Out of memory");
        return 1;
    }
    if (cmd_parse(&bitmap_spec, &a, &acts, argc, argv, &rc) < 0) {
        goto out;
    }
    rc = 1;
    const char *src_file = o.src_file, *src_fmt = o.src_fmt;
    uint64_t granularity = o.granularity;
    int nacts = acts.n;
    if (nacts == 0) {
        rc = usage_error("bitmap", "Need at least one of --add, --remove, "
                         "--clear, --enable, --disable, or --merge");
        goto out;
    }
    if (granularity && !has_action(&acts, "add")) {
        rc = usage_error("bitmap", "granularity only supported with --add");
        goto out;
    }
    if (src_fmt && !src_file) {
        rc = usage_error("bitmap", "-F only supported with -b");
        goto out;
    }
    if (src_file && !has_action(&acts, "merge")) {
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
        if (run_action(n, src, &acts.v[i], name, granularity, &err) < 0) {
            imgtool_error("Operation %s on bitmap %s failed: %s",
                          acts.v[i].op, name, err.msg);
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
    free(acts.v);
    return rc;
}
