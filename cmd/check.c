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
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/info-print.h"

static const char check_usage[] =
    "usage: imgtool check [--object objectdef] [--image-opts] [-q] [-f fmt]\n"
    "                     [--output=human|json] [-r leaks|all] [-T cache]\n"
    "                     [-U] filename\n"
    "\n"
    "  -f fmt            image format (probed when omitted)\n"
    "  --output=FMT      'human' (default) or 'json'\n"
    "  -r leaks          repair leaked clusters (safe)\n"
    "  -r all            repair all errors (may lose data on a badly\n"
    "                    damaged image)\n"
    "  -T cache          cache mode: none, writeback (default), unsafe,\n"
    "                    directsync, writethrough\n"
    "  -U, --force-share open the image read-only without conflicting locks\n"
    "  -q, --quiet       print nothing, only set the exit code\n"
    "  --image-opts      filename is an option string (driver=...,...)\n"
    "\n"
    "Exit codes: 0 no errors, 1 check could not be completed, 2 corruptions,\n"
    "3 leaked clusters only, 63 the format does not support checks.\n";

static const struct option check_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "repair", required_argument, NULL, 'r' },
    { "quiet", no_argument, NULL, 'q' },
    IMAGE_ARGS_LONG_OPTIONS,
    FORCE_SHARE_LONG_OPTION,
    OUTPUT_LONG_OPTION,
    { NULL, 0, NULL, 0 },
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
    const char *cache = NULL;
    ImageArgs a = { 0 };
    int fix = 0, c, r;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:r:T:Uq", check_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(check_usage, stdout);
            return 0;
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                fix = BLOCK_FIX_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                fix = BLOCK_FIX_LEAKS | BLOCK_FIX_ERRORS;
            } else {
                char msg[300];
                snprintf(msg, sizeof(msg), "Unknown option value for -r "
                         "(expecting 'leaks' or 'all'): %s", optarg);
                return usage_error("check", msg);
            }
            break;
        case 'T':
            cache = optarg;
            break;
        default:
            r = image_args_option(&a, c, optarg, "check", argv);
            if (r) {
                return r;
            }
        }
    }
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
    if (cache && imgtool_parse_cache(cache, &cache_flags) < 0) {
        imgtool_error("Invalid source cache option: %s", cache);
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
    int rc = run_check(n, &res, fix);
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
