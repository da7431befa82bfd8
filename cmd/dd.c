/*
 * dd.c - `imgtool dd`: copy a byte range of an image into a new image
 * with dd(1)-style operands, as qemu-img dd does.
 *
 * The output holds input bytes [skip*bs, min(size, count*bs)): qemu-img
 * applies count from the start of the input rather than after skip, and
 * scripts depend on the sizes it produces, so we do the same.  A skip
 * past the end is reported but yields an empty output and exit 0, again
 * like qemu-img.  The copy itself is the copy engine's, so zero regions
 * stay sparse in the output.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/job/copy.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/parse-options.h"

static const char *out_fmt = "raw";

static const CmdOpt dd_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_FORCE_SHARE,
    { CMDOPT_COMMON, 'f', "format", "fmt", "input format (probed when omitted)",
      .common_code = 'f' },
    { CMDOPT_STRING, 'O', NULL, "output_fmt", "output format (default raw)",
      .value = &out_fmt },
    CMDOPT_END,
};

/* dd's own operands are key=value words, read after the options. */
static const CmdSpec dd_spec = {
    .name = "dd",
    .args = "[bs=block_size] [count=blocks] [skip=blocks] if=input "
            "of=output",
    .description = "Copies a byte range of an image into a new image.\n"
                   "  bs=SIZE   block size (default 512)\n"
                   "  count=N   copy input up to N blocks from its start\n"
                   "  skip=N    skip N blocks of the input\n"
                   "  if=FILE   input image; of=FILE output image "
                   "(created)\n",
    .opts = dd_opts,
};

typedef struct DdArgs {
    uint64_t bs, count, skip;
    bool has_count, has_skip;
    const char *in, *out;
} DdArgs;

/* Returns -1 on success, else the exit code. */
static int dd_operand(DdArgs *a, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq) {
        imgtool_error("unrecognized operand %s", arg);
        return 1;
    }
    size_t klen = eq - arg;
    const char *v = eq + 1;
    if (klen == 2 && !strncmp(arg, "bs", 2)) {
        if (parse_size(v, &a->bs) < 0) {
            return usage_bad_size("bs");
        }
        if (a->bs < 1 || a->bs > INT_MAX) {
            imgtool_error("Invalid bs specified. Must be between 1 and %d.",
                          INT_MAX);
            return 1;
        }
    } else if (klen == 5 && !strncmp(arg, "count", 5)) {
        if (*v == '-' || parse_size(v, &a->count) < 0) {
            return usage_bad_size("count");
        }
        a->has_count = true;
    } else if (klen == 4 && !strncmp(arg, "skip", 4)) {
        if (*v == '-' || parse_size(v, &a->skip) < 0) {
            return usage_bad_size("skip");
        }
        a->has_skip = true;
    } else if (klen == 2 && !strncmp(arg, "if", 2)) {
        a->in = v;
    } else if (klen == 2 && !strncmp(arg, "of", 2)) {
        a->out = v;
    } else {
        imgtool_error("unrecognized operand %s", arg);
        return 1;
    }
    return -1;
}

int cmd_dd(int argc, char **argv)
{
    ImageArgs ia = { 0 };
    DdArgs a = { .bs = 512 };
    int rc;
    if (cmd_parse(&dd_spec, &ia, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    for (int i = optind; i < argc; i++) {
        rc = dd_operand(&a, argv[i]);
        if (rc >= 0) {
            return rc;
        }
    }
    if (image_args_check(&ia) < 0) {
        return 1;
    }
    if (!a.in || !a.out) {
        imgtool_error("Must specify both input and output files");
        return 1;
    }
    if (!block_find_driver(out_fmt)) {
        imgtool_error("Unknown file format '%s'", out_fmt);
        return 1;
    }

    Error err = { 0 };
    /* of=vol:POOL/NAME: a new file in a directory pool */
    char *out_path = NULL;
    if (imgtool_target_name(a.out, &out_path, &err) < 0) {
        imgtool_report(&err);
        return 1;
    }
    const char *out_name = a.out;
    a.out = out_path;
    BlockNode *in = imgtool_open(a.in, ia.fmt, ia.image_opts,
                                 image_args_flags(&ia), &err);
    if (!in) {
        imgtool_report(&err);
        free(out_path);
        return 1;
    }
    BlockNode *out = NULL;
    rc = 1;
    int64_t in_size = block_get_length(in);
    if (in_size < 0) {
        imgtool_error("%s: failed to get size: %s", a.in,
                      strerror((int)-in_size));
        goto done;
    }
    uint64_t end = in_size;
    if (a.has_count && a.count <= UINT64_MAX / a.bs && a.count * a.bs < end) {
        end = a.count * a.bs;
    }
    uint64_t start = 0;
    if (a.has_skip) {
        if (a.skip > UINT64_MAX / a.bs || a.skip * a.bs > end) {
            imgtool_error("%s: cannot skip to specified offset", a.in);
            start = end;
        } else {
            start = a.skip * a.bs;
        }
    }

    /* qemu-img creates images in whole 512-byte sectors */
    uint64_t out_size = (end - start + 511) & ~(uint64_t)511;
    KVList opts = { 0 };
    int ret = block_create(out_fmt, a.out, out_size, true, &opts,
                           BLOCK_CREATE_QUIET, &err);
    kvlist_free(&opts);
    if (ret < 0) {
        imgtool_error("%s: error while creating output image: %s", a.out,
                      err.msg);
        goto done;
    }
    out = imgtool_open(a.out, out_fmt, false, BLOCK_O_RDWR, &err);
    if (!out) {
        imgtool_report(&err);
        goto done;
    }

    CopyJob job;
    copy_job_init(&job);
    job.src = &in;
    job.nsrc = 1;
    job.dst = out;
    job.src_offset = start;
    job.length = end - start;
    job.dst_is_zero = block_is_zero_fast(out, 0, end - start);
    if (copy_run(&job, &err) < 0) {
        imgtool_report(&err);
        goto done;
    }
    rc = 0;

done:
    if (out) {
        block_close(out);
    }
    block_close(in);
    if (rc == 0) {
        imgtool_target_created(out_name, out_fmt);
    }
    free(out_path);
    return rc;
}
