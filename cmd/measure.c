/*
 * measure.c - `imgtool measure`: how big a new image of a given format
 * must be to hold either a given virtual size or the contents of an
 * existing image, as `qemu-img measure` reports it.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/info-print.h"

static const char measure_usage[] =
    "usage: imgtool measure [--output=human|json] [-O output_fmt]\n"
    "                       [-o options] [--size N | [--object objectdef]\n"
    "                       [--image-opts] [-f fmt] [-l snapshot] [-U]\n"
    "                       filename]\n"
    "\n"
    "  --size N          measure a new empty image of N bytes (k, M, G, T,\n"
    "                    P, E suffixes)\n"
    "  filename          measure a copy of this image's contents\n"
    "  -O output_fmt     format of the image to measure for (default: raw)\n"
    "  -o options        its creation options, e.g. cluster_size=64k\n"
    "  -f fmt            format of filename (probed when omitted)\n"
    "  --output=FMT      'human' (default) or 'json'\n"
    "  -U, --force-share open filename without conflicting locks\n"
    "  --image-opts      filename is an option string (driver=...,...)\n";

enum { OPT_SIZE_ARG = 256 };

static const struct option measure_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "size", required_argument, NULL, OPT_SIZE_ARG },
    IMAGE_ARGS_LONG_OPTIONS,
    FORCE_SHARE_LONG_OPTION,
    OUTPUT_LONG_OPTION,
    { NULL, 0, NULL, 0 },
};

static void print_result(const BlockMeasure *m, OutputFormat output)
{
    if (output == OUTPUT_JSON) {
        json_t *o = json_object();
        json_object_set_new(o, "required",
                            json_integer((json_int_t)m->required));
        json_object_set_new(o, "fully-allocated",
                            json_integer((json_int_t)m->fully_allocated));
        if (m->has_bitmaps) {
            json_object_set_new(o, "bitmaps",
                                json_integer((json_int_t)m->bitmaps));
        }
        json_t *ordered = qemu_json_order(o);
        imgtool_print_json(ordered);
        json_decref(ordered);
        json_decref(o);
        return;
    }
    printf("required size: %" PRIu64 "\n", m->required);
    printf("fully allocated size: %" PRIu64 "\n", m->fully_allocated);
    if (m->has_bitmaps) {
        printf("bitmaps size: %" PRIu64 "\n", m->bitmaps);
    }
}

static int check_target_opts(const BlockDriver *drv, KVList *opts,
                             Error *err)
{
    for (size_t i = 0; i < opts->n; i++) {
        bool known = false;
        for (int j = 0; block_driver_create_opts(drv) && block_driver_create_opts(drv)[j].name; j++) {
            known |= strcmp(block_driver_create_opts(drv)[j].name,
                            opts->items[i].key) == 0;
        }
        if (!known) {
            return error_setf(err, EINVAL, "Invalid parameter '%s'",
                              opts->items[i].key);
        }
    }
    return 0;
}

int cmd_measure(int argc, char **argv)
{
    const char *out_fmt = "raw", *snapshot = NULL;
    const char *size_arg = NULL;
    ImageArgs a = { 0 };
    KVList opts = { 0 };
    Error err = { 0 };
    int c, r, rc = 1;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hO:o:f:l:U", measure_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(measure_usage, stdout);
            kvlist_free(&opts);
            return 0;
        case 'O':
            out_fmt = optarg;
            break;
        case 'o':
            if (kvlist_parse(&opts, optarg, NULL, &err) < 0) {
                imgtool_report(&err);
                kvlist_free(&opts);
                return 1;
            }
            break;
        case 'l':
            snapshot = optarg;
            break;
        case OPT_SIZE_ARG:
            size_arg = optarg;
            break;
        default:
            r = image_args_option(&a, c, optarg, "measure", argv);
            if (r) {
                kvlist_free(&opts);
                return r;
            }
        }
    }

    int npos = argc - optind;
    const char *filename = npos >= 1 ? argv[optind] : NULL;
    if (npos > 1) {
        char msg[300];
        snprintf(msg, sizeof(msg), "Unexpected argument: %s",
                 argv[optind + 1]);
        kvlist_free(&opts);
        return usage_error("measure", msg);
    }
    if (size_arg && filename) {
        imgtool_error("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!size_arg && !filename) {
        imgtool_error("Either --size N or one filename must be specified.");
        goto out;
    }
    if (image_args_check(&a) < 0) {
        goto out;
    }
    if (size_arg && (a.fmt || a.image_opts || snapshot)) {
        imgtool_error("--image-opts, -f, and -l require a filename "
                      "argument.");
        goto out;
    }

    uint64_t size = 0;
    if (size_arg && parse_size(size_arg, &size) < 0) {
        imgtool_error("Invalid image size specified. You may use k, M, G, "
                      "T, P or E suffixes for kilobytes, megabytes, "
                      "gigabytes, terabytes, petabytes and exabytes.");
        goto out;
    }

    /* qemu-img measures whole sectors, as create makes them. */
    size = (size + 511) & ~(uint64_t)511;

    const BlockDriver *drv = block_find_driver(out_fmt);
    if (!drv || !block_driver_is_format(drv)) {
        imgtool_error("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (!block_driver_can_measure(drv)) {
        imgtool_error("Block driver '%s' does not support size measurement",
                      out_fmt);
        goto out;
    }
    if (check_target_opts(drv, &opts, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    BlockNode *in = NULL;
    if (filename) {
        in = imgtool_open(filename, a.fmt, a.image_opts,
                          image_args_flags(&a), &err);
        if (!in) {
            imgtool_report(&err);
            goto out;
        }
        if (snapshot && block_snapshot_load_tmp(in, snapshot, &err) < 0) {
            imgtool_report(&err);
            block_close(in);
            goto out;
        }
    }
    BlockMeasure m;
    if (block_measure(out_fmt, &opts, in, size, &m, &err) < 0) {
        imgtool_report(&err);
    } else {
        print_result(&m, a.output);
        rc = 0;
    }
    if (in) {
        block_close(in);
    }
out:
    kvlist_free(&opts);
    return rc;
}
