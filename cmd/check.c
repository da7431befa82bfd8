/*
 * check.c - `imgtool check`: verify an image's metadata and optionally
 * repair it, with qemu-img's output and exit codes:
 *   0 clean, 1 check could not complete (or internal errors),
 *   2 corruptions, 3 leaks only, 63 format cannot be checked.
 *
 * After a repair the image is checked again and that second result is
 * what gets reported (plus the counts of what was fixed), so the exit
 * code says whether the repaired image is now clean.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/info-print.h"
#include "imgtool/parse-options.h"

static struct {
    const char *cache;
    int fix;
} o;

/* -r leaks|all */
static int opt_repair(const CmdOpt *opt, const char *arg, void *ctx)
{
    if (strcmp(arg, "leaks") == 0) {
        o.fix = BLOCK_FIX_LEAKS;
    } else if (strcmp(arg, "all") == 0) {
        o.fix = BLOCK_FIX_LEAKS | BLOCK_FIX_ERRORS;
    } else {
        char msg[300];
        snprintf(msg, sizeof(msg), "Unknown option value for -r "
                 "(expecting 'leaks' or 'all'): %s", arg);
        return usage_error("check", msg);
    }
    return 0;
}

static const CmdOpt check_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    { CMDOPT_COMMON, 'q', "quiet", NULL,
      "print nothing, only set the exit code", .common_code = 'q' },
    CMDOPT_FORMAT,
    CMDOPT_OUTPUT,
    { CMDOPT_FN, 'r', "repair", "leaks|all",
      "repair leaked clusters (safe), or all errors (may lose data on a "
      "badly damaged image)", .fn = opt_repair },
    CMDOPT_CACHE('T', "src_cache", &o.cache, ""),
    CMDOPT_FORCE_SHARE,
    CMDOPT_END,
};

static const CmdSpec check_spec = {
    .name = "check",
    .args = "filename",
    .description =
        "Checks an image's metadata and optionally repairs it.\n\n"
        "Exit codes: 0 no errors, 1 check could not be completed, 2 "
        "corruptions,\n3 leaked clusters only, 63 the format does not "
        "support checks.\n",
    .opts = check_opts,
};

static void print_human(const BlockCheckResult *r)
{
    if (r->corruptions == 0 && r->leaks == 0 && r->check_errors == 0) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%d errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n", r->corruptions);
        }
        if (r->leaks) {
            printf("\n%d leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        }
        if (r->check_errors) {
            printf("\n%d internal errors have occurred during the check.\n",
                   r->check_errors);
        }
    }
    if (r->bfi_valid && r->total_clusters != 0 &&
        r->allocated_clusters != 0) {
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, "
               "%0.2f%% fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset > 0) {
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
    }
}

/* qemu-img leaves out counters that are zero, except check-errors. */
static void set_nonzero(json_t *o, const char *key, uint64_t v)
{
    if (v) {
        json_object_set_new(o, key, json_integer((json_int_t)v));
    }
}

static void print_json(const BlockCheckResult *r, BlockNode *n)
{
    json_t *o = json_object();
    json_object_set_new(o, "filename", json_string(block_node_filename(n)));
    json_object_set_new(o, "format", json_string(block_node_format(n)));
    json_object_set_new(o, "check-errors", json_integer(r->check_errors));
    if (r->image_end_offset > 0) {
        json_object_set_new(o, "image-end-offset",
                            json_integer(r->image_end_offset));
    }
    set_nonzero(o, "corruptions", (uint64_t)r->corruptions);
    set_nonzero(o, "leaks", (uint64_t)r->leaks);
    set_nonzero(o, "corruptions-fixed", (uint64_t)r->corruptions_fixed);
    set_nonzero(o, "leaks-fixed", (uint64_t)r->leaks_fixed);
    if (r->bfi_valid) {
        set_nonzero(o, "total-clusters", r->total_clusters);
        set_nonzero(o, "allocated-clusters", r->allocated_clusters);
        set_nonzero(o, "fragmented-clusters", r->fragmented_clusters);
        set_nonzero(o, "compressed-clusters", r->compressed_clusters);
    }
    json_t *ordered = qemu_json_order(o);
    imgtool_print_json(ordered);
    json_decref(ordered);
    json_decref(o);
}

/* Findings go to stderr, as qemu-img writes them. */
static void print_finding(void *opaque, const char *line)
{
    (void)opaque;
    fprintf(stderr, "%s\n", line);
}

/* Runs one check; on failure reports it and returns the exit code. */
static int run_check(BlockNode *n, BlockCheckResult *res, int fix)
{
    Error err = { 0 };
    memset(res, 0, sizeof(*res));
    res->message = print_finding;
    int ret = block_check(n, res, fix, &err);
    if (ret == -ENOTSUP) {
        imgtool_error("This image format does not support checks");
        return 63;
    }
    if (ret < 0) {
        imgtool_error("Check failed: %s",
                      error_is_set(&err) ? err.msg : strerror(-ret));
        return 1;
    }
    return 0;
}

int cmd_check(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&check_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    int fix = o.fix;
    if (argc - optind != 1) {
        return usage_error("check", "Expecting one image file name");
    }
    if (image_args_check(&a) < 0) {
        return 1;
    }

    if (fix && a.force_share) {
        imgtool_error("Could not open '%s': force-share=on can only be used "
                      "with read-only images", argv[optind]);
        return 1;
    }

    int flags = BLOCK_O_CHECK, cache_flags = 0;
    if (cmd_cache_flags(o.cache, true, &cache_flags) < 0) {
        return 1;
    }
    flags |= cache_flags;
    if (fix) {
        flags |= BLOCK_O_RDWR;
    }
    flags |= image_args_flags(&a);

    const char *name = argv[optind];
    Error err = { 0 };
    BlockNode *n = imgtool_open(name, a.fmt, a.image_opts, flags, &err);
    if (!n) {
        imgtool_report(&err);
        return 1;
    }

    BlockCheckResult res;
    rc = run_check(n, &res, fix);
    if (rc == 0 && (res.leaks_fixed || res.corruptions_fixed)) {
        int leaks_fixed = res.leaks_fixed;
        int corruptions_fixed = res.corruptions_fixed;
        if (a.output == OUTPUT_HUMAN && !a.quiet) {
            printf("The following inconsistencies were found and repaired:"
                   "\n\n"
                   "    %d leaked clusters\n"
                   "    %d corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   leaks_fixed, corruptions_fixed);
        }
        rc = run_check(n, &res, 0);
        res.leaks_fixed = leaks_fixed;
        res.corruptions_fixed = corruptions_fixed;
    }
    if (rc == 0) {
        if (!a.quiet) {
            if (a.output == OUTPUT_JSON) {
                print_json(&res, n);
            } else {
                print_human(&res);
            }
        }
        rc = res.check_errors ? 1 : res.corruptions ? 2 : res.leaks ? 3 : 0;
    }
    block_close(n);
    return rc;
}
