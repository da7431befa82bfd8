/*
 * measure.c - `imgtool measure`: how big a new image of a given format
 * must be to hold either a given virtual size or the contents of an
 * existing image, as `qemu-img measure` reports it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/info-print.h"
#include "imgtool/parse-options.h"

static struct {
    const char *out_fmt, *snapshot, *size;
} o = { .out_fmt = "raw" };

/* -o: each list is read as it comes, into the KVList at ctx. */
static int opt_create_opts(const CmdOpt *opt, const char *arg, void *ctx)
{
    Error err = { 0 };
    if (!cmd_option_list_valid(arg)) {
        return 1;
    }
    if (kvlist_parse(ctx, arg, NULL, &err) < 0) {
        imgtool_report(&err);
        return 1;
    }
    return 0;
}

static const CmdOpt measure_opts[] = {
    CMDOPT_OUTPUT,
    { CMDOPT_STRING, 'O', NULL, "output_fmt",
      "format of the image to measure for (default: raw)",
      .value = &o.out_fmt },
    { CMDOPT_FN, 'o', NULL, "options",
      "its creation options, e.g. cluster_size=64k",
      .fn = opt_create_opts },
    { CMDOPT_STRING, 0, "size", "N",
      "measure a new empty image of N bytes (k, M, G, T, P, E suffixes)",
      .value = &o.size },
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    { CMDOPT_COMMON, 'f', "format", "fmt",
      "format of filename (probed when omitted)", .common_code = 'f' },
    { CMDOPT_STRING, 'l', NULL, "snapshot",
      "measure this internal snapshot of filename", .value = &o.snapshot },
    { CMDOPT_COMMON, 'U', "force-share", NULL,
      "open filename without conflicting locks", .common_code = 'U' },
    CMDOPT_END,
};

static const CmdSpec measure_spec = {
    .name = "measure",
    .args = "[filename]",
    .description = "Computes how big a new image must be to hold either "
                   "--size N bytes or a copy\nof filename's contents (not "
                   "both).\n",
    .opts = measure_opts,
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
    ImageArgs a = { 0 };
    KVList opts = { 0 };
    Error err = { 0 };
    int rc;
    if (cmd_parse(&measure_spec, &a, &opts, argc, argv, &rc) < 0) {
        kvlist_free(&opts);
        return rc;
    }
    const char *out_fmt = o.out_fmt, *snapshot = o.snapshot;
    const char *size_arg = o.size;
    rc = 1;

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
        /* qemu-img's two lines, as create's */
        usage_bad_size("image size");
        goto out;
    }
    if (size > INT64_MAX) {
        imgtool_error("Invalid image size specified. Must be between 0 "
                      "and %" PRId64 ".", INT64_MAX);
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
