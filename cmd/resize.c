/*
 * resize.c - `imgtool resize`: change an image's virtual size, as
 * `qemu-img resize`.  Shrinking throws data away, so it needs --shrink.
 *
 * The size may be relative ("+1G", "-512M").  A negative size looks like
 * an option to getopt, so when the last argument starts with '-' and a
 * digit it is taken as the size before option parsing.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/parse-options.h"

static int parse_prealloc(const CmdOpt *o, const char *arg, void *ctx)
{
    if (prealloc_parse(arg, ctx) < 0) {
        imgtool_error("Invalid preallocation mode '%s'", arg);
        return 1;
    }
    return 0;
}

static bool shrink;

static const CmdOpt resize_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_FORMAT,
    { CMDOPT_FN, 0, "preallocation", "off|falloc|full|metadata",
      "how to allocate the added space (growing only)",
      .fn = parse_prealloc },
    { CMDOPT_COMMON, 'q', "quiet", NULL, "do not print 'Image resized.'",
      .common_code = 'q' },
    { CMDOPT_FLAG, 0, "shrink", NULL,
      "allow making the image smaller (data past the new end is lost)",
      .value = &shrink },
    CMDOPT_END,
};

static const CmdSpec resize_spec = {
    .name = "resize",
    .args = "filename [+|-]size",
    .description =
        "  size: the new size in bytes or with a k, M, G, T, P or E suffix;\n"
        "  '+' grows and '-' shrinks by that much.\n",
    .opts = resize_opts,
};

int cmd_resize(int argc, char **argv)
{
    const char *size_arg = NULL;
    ImageArgs a = { 0 };
    PreallocMode pm = PREALLOC_OFF;
    int rc;

    if (argc > 2 && argv[argc - 1][0] == '-' &&
        isdigit((unsigned char)argv[argc - 1][1])) {
        size_arg = argv[--argc];
    }
    shrink = false;
    if (cmd_parse(&resize_spec, &a, &pm, argc, argv, &rc) < 0) {
        return rc;
    }

    int npos = argc - optind;
    if (!size_arg && npos == 2) {
        size_arg = argv[optind + 1];
        npos--;
    }
    if (npos != 1 || !size_arg) {
        return usage_error("resize", "Expecting image file name and size");
    }
    if (image_args_check(&a) < 0) {
        return 1;
    }
    const char *filename = argv[optind];

    int sign = 0;
    const char *num = size_arg;
    if (*num == '+' || *num == '-') {
        sign = *num == '+' ? 1 : -1;
        num++;
    }
    uint64_t amount;
    if (parse_size(num, &amount) < 0 || amount > INT64_MAX) {
        imgtool_error("Invalid size '%s': expected a non-negative number "
                      "below 2^63 with an optional k, M, G, T, P or E "
                      "suffix", size_arg);
        return 1;
    }

    Error err = { 0 };
    BlockNode *n = imgtool_open(filename, a.fmt, a.image_opts, BLOCK_O_RDWR,
                                &err);
    if (!n) {
        imgtool_report(&err);
        return 1;
    }
    rc = 1;
    int64_t cur = block_get_length(n);
    if (cur < 0) {
        imgtool_error("Image size could not be determined: %s",
                      strerror((int)-cur));
        goto out;
    }
    int64_t target;
    if (sign > 0) {
        if (amount > (uint64_t)(INT64_MAX - cur)) {
            imgtool_error("New image size is too large");
            goto out;
        }
        target = cur + (int64_t)amount;
    } else if (sign < 0) {
        target = cur - (int64_t)amount;
    } else {
        target = (int64_t)amount;
    }
    if (target <= 0) {
        imgtool_error("New image size must be positive");
        goto out;
    }
    if (target < cur && !shrink) {
        imgtool_error("Use the --shrink option to perform a shrink "
                      "operation.");
        imgtool_warn("Shrinking an image will delete all data beyond the "
                     "shrunken image's end. Before performing such an "
                     "operation, make sure there is no important data "
                     "there.");
        goto out;
    }
    if (target < cur && pm != PREALLOC_OFF) {
        imgtool_error("Preallocation can only be used for growing images");
        goto out;
    }
    if (block_truncate(n, (uint64_t)target, true, pm, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    int fret = block_flush(n);
    if (fret < 0) {
        imgtool_error("%s: flush failed: %s", filename, strerror(-fret));
        goto out;
    }
    if (!a.quiet) {
        printf("Image resized.\n");
    }
    rc = 0;
out:
    block_close(n);
    return rc;
}
