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
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"

static const char resize_usage[] =
    "usage: imgtool resize [--object objectdef] [--image-opts] [-f fmt]\n"
    "                      [--preallocation=off|falloc|full|metadata] [-q]\n"
    "                      [--shrink] filename [+|-]size\n"
    "\n"
    "  size              new size in bytes or with a k, M, G, T, P or E\n"
    "                    suffix; '+' grows and '-' shrinks by that much\n"
    "  --shrink          allow making the image smaller (data past the new\n"
    "                    end is lost)\n"
    "  --preallocation=M how to allocate the added space (growing only)\n"
    "  -f fmt            image format (probed when omitted)\n"
    "  -q, --quiet       do not print 'Image resized.'\n"
    "  --image-opts      filename is an option string (driver=...,...)\n";

enum { OPT_PREALLOC = 256, OPT_SHRINK };

static const struct option resize_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "quiet", no_argument, NULL, 'q' },
    { "preallocation", required_argument, NULL, OPT_PREALLOC },
    { "shrink", no_argument, NULL, OPT_SHRINK },
    IMAGE_ARGS_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
};

int cmd_resize(int argc, char **argv)
{
    const char *size_arg = NULL;
    ImageArgs a = { 0 };
    bool shrink = false;
    PreallocMode pm = PREALLOC_OFF;
    int c, r;

    if (argc > 2 && argv[argc - 1][0] == '-' &&
        isdigit((unsigned char)argv[argc - 1][1])) {
        size_arg = argv[--argc];
    }

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:q", resize_options, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            fputs(resize_usage, stdout);
            return 0;
        case OPT_PREALLOC:
            if (prealloc_parse(optarg, &pm) < 0) {
                imgtool_error("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            break;
        case OPT_SHRINK:
            shrink = true;
            break;
        default:
            r = image_args_option(&a, c, optarg, "resize", argv);
            if (r) {
                return r;
            }
        }
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
    int rc = 1;
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
