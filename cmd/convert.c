/*
 * convert.c - `imgtool convert`: copy one or more images (concatenated)
 * into a new or existing image of any format, like qemu-img convert.
 *
 * All the copying is the copy engine's (block/copy.h); this file decides
 * what the engine may assume about the target:
 *  - a target we just created, or one that block status proves zero, need
 *    not have zero regions written at all;
 *  - with -B the target reads its backing file where nothing is written:
 *    when that backing file is part of the source's chain, only what lies
 *    above it is copied; otherwise the engine compares with the target
 *    and writes only differences, so the result is exactly the source
 *    either way.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "block/job/copy.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/opthelp.h"

static const char convert_usage[] =
    "usage: imgtool convert [--object objectdef] [--image-opts]\n"
    "         [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C]\n"
    "         [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache]\n"
    "         [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options]\n"
    "         [-l snapshot_param] [-S sparse_size] [-r rate_limit]\n"
    "         [-m num_coroutines] [-W] [--salvage] [--skip-broken-bitmaps]\n"
    "         filename [filename2 [...]] output_filename\n"
    "\n"
    "  -f fmt              source format (probed when omitted)\n"
    "  -O fmt              target format (default raw)\n"
    "  -o options          target creation options (see 'create')\n"
    "  -B file [-F fmt]    give the target this backing file and copy only\n"
    "                      what differs from it\n"
    "  -n                  write into an existing target, do not create it\n"
    "  --target-is-zero    with -n: the target already reads as zeroes\n"
    "  -S size             zero runs of this size become holes (default\n"
    "                      4k; 0 allocates the whole target)\n"
    "  -m N                requests in flight (1..16, default 8)\n"
    "  -W                  allow out-of-order writes\n"
    "  -r rate             limit the copy to rate bytes per second\n"
    "  -t/-T cache         target/source cache mode\n"
    "  -p                  show progress; -q: quiet\n"
    "  -U                  open sources without conflicting locks\n"
    "  --salvage           copy unreadable source sectors as zeroes\n"
    "  --bitmaps           copy the persistent dirty bitmaps too (qcow2)\n"
    "  --skip-broken-bitmaps  with --bitmaps: leave inconsistent bitmaps\n"
    "                      out instead of failing\n";

enum {
    OPT_TARGET_IMAGE_OPTS = 256, OPT_TARGET_IS_ZERO, OPT_BITMAPS,
    OPT_SALVAGE, OPT_SKIP_BROKEN,
};

static const struct option convert_options[] = {
    { "help", no_argument, NULL, 'h' },
    IMAGE_ARGS_LONG_OPTIONS,
    FORCE_SHARE_LONG_OPTION,
    { "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
    { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
    { "bitmaps", no_argument, NULL, OPT_BITMAPS },
    { "salvage", no_argument, NULL, OPT_SALVAGE },
    { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
    { NULL, 0, NULL, 0 },
};

typedef struct ConvertOpts {
    ImageArgs src;    /* -f -U -q --image-opts --object */
    const char *out_fmt, *backing, *backing_fmt, *cache, *src_cache;
    char *create_opts;       /* every -o, joined with ',' (qemu-img merges) */
    const char *snapshot;
    bool target_image_opts, target_is_zero, bitmaps, salvage, skip_broken;
    bool compress, progress, no_create, out_of_order, help;
    uint64_t sparse, rate;
    int workers;
} ConvertOpts;

static void size_hint(void)
{
    imgtool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
}

/* Returns -1 to continue, else the exit code. */
/* Appends one -o list to the ones before it. */
static int append_opts(char **all, const char *more)
{
    size_t have = *all ? strlen(*all) : 0;
    char *n = realloc(*all, have + strlen(more) + 2);
    if (!n) {
        return -ENOMEM;
    }
    if (have) {
        n[have++] = ',';
    }
    strcpy(n + have, more);
    *all = n;
    return 0;
}

static int convert_parse(int argc, char **argv, ConvertOpts *o)
{
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:B:F:Cco:l:S:pt:T:qnm:WUr:",
                            convert_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(convert_usage, stdout);
            return 0;
        case 'O': o->out_fmt = optarg; break;
        case 'B': o->backing = optarg; break;
        case 'F': o->backing_fmt = optarg; break;
        case 'C': break;   /* offload is an optimisation; plain copy is ok */
        case 'c': o->compress = true; break;
        case 'o':
            o->help |= opthelp_wanted(optarg);
            if (append_opts(&o->create_opts, optarg) < 0) {
                imgtool_error("out of memory");
                return 1;
            }
            break;
        case 'l': o->snapshot = optarg; break;
        case 'S': {
            uint64_t v;
            if (parse_size(optarg, &v) < 0) {
                imgtool_error("Invalid buffer size for sparse output "
                              "specified. You may use k, M, G, T, P or E "
                              "suffixes for");
                size_hint();
                return 1;
            }
            if (v % 512 || v > 16 * 1024 * 1024) {
                imgtool_error("Invalid buffer size for sparse output "
                              "specified. Valid sizes are multiples of 512 "
                              "up to 16777216. Select 0 to disable sparse "
                              "detection (fully allocates output).");
                return 1;
            }
            o->sparse = v;
            break;
        }
        case 'p': o->progress = true; break;
        case 't': o->cache = optarg; break;
        case 'T': o->src_cache = optarg; break;
        case 'n': o->no_create = true; break;
        case 'm': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end || v < 1 || v > COPY_MAX_WORKERS) {
                imgtool_error("Invalid number of coroutines. Allowed number "
                              "of coroutines is between 1 and %d",
                              COPY_MAX_WORKERS);
                return 1;
            }
            o->workers = (int)v;
            break;
        }
        case 'W': o->out_of_order = true; break;
        case 'r':
            if (parse_size(optarg, &o->rate) < 0) {
                imgtool_error("Invalid rate limit specified. You may use k, "
                              "M, G, T, P or E suffixes for");
                size_hint();
                return 1;
            }
            break;
        case OPT_TARGET_IMAGE_OPTS: o->target_image_opts = true; break;
        case OPT_TARGET_IS_ZERO: o->target_is_zero = true; break;
        case OPT_BITMAPS: o->bitmaps = true; break;
        case OPT_SALVAGE: o->salvage = true; break;
        case OPT_SKIP_BROKEN: o->skip_broken = true; break;
        default: {
            int r = image_args_parse(&o->src, c, optarg);
            if (r <= 0) {
                return r < 0 ? 1 : usage_bad_option("convert", usage_refused_option(argv, (char[3]){0}), c == ':');
            }
        }
        }
    }
    if (o->src.quiet) {
        o->progress = false;
    }
    if (image_args_check(&o->src) < 0) {
        return 1;
    }
    if (o->help) {
        /* as qemu-img: the output format's list, merged with its file's
         * once the output is named (the last of two or more names) */
        const char *fmt = o->out_fmt ? o->out_fmt : "raw";
        const BlockDriver *drv = block_find_driver(fmt);
        if (!drv || !block_driver_is_format(drv)) {
            imgtool_error("Unknown file format '%s'", fmt);
            return 1;
        }
        opthelp_print_create(drv, argc - optind >= 2 ? argv[argc - 1] : NULL);
        return 0;
    }
    if (argc - optind < 1) {
        return usage_error("convert", "Must specify image file name");
    }
    if (argc - optind < 2) {
        imgtool_error("Must specify both input and output files");
        return 1;
    }
    if (o->target_is_zero && !o->no_create) {
        imgtool_error("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (o->target_image_opts && !o->no_create) {
        imgtool_error("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (o->no_create && o->create_opts) {
        imgtool_error("-o has no effect when skipping image creation");
        return 1;
    }
    if (o->backing && !o->backing_fmt && !o->no_create) {
        /* qemu-img 7.2 refuses to guess a backing file's format */
        imgtool_error("Use of backing file requires explicit backing format");
        return 1;
    }
    if (o->skip_broken && !o->bitmaps) {
        imgtool_error("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (o->bitmaps && argc - optind > 2) {
        imgtool_error("Copying bitmaps only possible with single source");
        return 1;
    }
    return -1;
}

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The node of src's chain that is the same image as the target's backing
 * file, or NULL. */
static BlockNode *find_common_base(BlockNode *src, BlockNode *dst)
{
    BlockNode *want = block_backing(dst);
    BlockNode *want_file = want ? block_node_storage(want) : NULL;
    if (!want_file || want_file == want) {
        return NULL;
    }
    for (BlockNode *n = block_backing(src); n; n = block_backing(n)) {
        BlockNode *f = block_node_storage(n);
        if (f && f != n &&
            strcmp(block_node_format(n), block_node_format(want)) == 0 &&
            same_file(block_node_filename(f), block_node_filename(want_file))) {
            return n;
        }
    }
    return NULL;
}

static void convert_progress(void *opaque, uint64_t done, uint64_t total)
{
    progress_update(opaque, done, total);
}

static void convert_salvage_warn(void *opaque, uint64_t off, uint64_t len,
                                 int err)
{
    const ConvertOpts *o = opaque;
    if (!o->src.quiet) {
        imgtool_warn("error while reading %llu bytes at byte %llu: %s; "
                     "copied as zeroes", (unsigned long long)len,
                     (unsigned long long)off, strerror(-err));
    }
}

static int create_target(const ConvertOpts *o, const char *out_fmt,
                         const char *out, uint64_t size)
{
    Error err = { 0 };
    KVList opts = { 0 };
    if (o->create_opts &&
        kvlist_parse(&opts, o->create_opts, NULL, &err) < 0) {
        imgtool_report(&err);
        kvlist_free(&opts);
        return 1;
    }
    if (o->backing) {
        kvlist_set(&opts, "backing_file", o->backing);
    }
    if (o->backing_fmt) {
        kvlist_set(&opts, "backing_fmt", o->backing_fmt);
    }
    /* qemu-img creates images in whole 512-byte sectors */
    size = (size + 511) & ~(uint64_t)511;
    int ret = block_create(out_fmt, out, size, true, &opts,
                           BLOCK_CREATE_QUIET, &err);
    kvlist_free(&opts);
    if (ret < 0) {
        imgtool_report(&err);
        return 1;
    }
    return 0;
}

/* The target we create encrypted must be opened with the same secret:
 * every "*key-secret" creation option (key-secret for luks,
 * encrypt.key-secret for qcow2) becomes an open option.  Returns whether
 * there was any. */
static bool target_secret_opts(const ConvertOpts *o, KVList *out)
{
    KVList opts = { 0 };
    Error err = { 0 };
    bool any = false;
    if (o->create_opts && !o->no_create &&
        kvlist_parse(&opts, o->create_opts, NULL, &err) == 0) {
        for (size_t i = 0; i < opts.n; i++) {
            const char *k = opts.items[i].key;
            size_t kl = strlen(k), sl = strlen("key-secret");
            if (kl >= sl && !strcmp(k + kl - sl, "key-secret")) {
                kvlist_set(out, k, opts.items[i].value);
                any = true;
            }
        }
    }
    kvlist_free(&opts);
    return any;
}

/* Whether the -o options ask for preallocation (the last value of
 * preallocation=, other than off). */
static bool compress_prealloc(const ConvertOpts *o)
{
    KVList opts = { 0 };
    Error err = { 0 };
    bool prealloc = false;
    if (o->create_opts &&
        kvlist_parse(&opts, o->create_opts, NULL, &err) == 0) {
        const char *p = kvlist_get(&opts, "preallocation");
        prealloc = p && strcmp(p, "off") != 0;
    }
    kvlist_free(&opts);
    return prealloc;
}

static int convert_run(ConvertOpts *o, int argc, char **argv)
{
    int rc;
    const char *out_fmt = o->out_fmt ? o->out_fmt : "raw";
    const BlockDriver *out_drv = block_find_driver(out_fmt);
    if (!out_drv) {
        imgtool_error("Unknown file format '%s'", out_fmt);
        return 1;
    }
    if (o->compress && !block_driver_can_compress(out_drv)) {
        imgtool_error("Compression not supported for this file format");
        return 1;
    }
    if (o->compress && o->create_opts && strstr(o->create_opts, "encrypt")) {
        /* QEMU cannot write compressed clusters into encrypted images */
        imgtool_error("Compression and encryption not supported at the "
                      "same time");
        return 1;
    }
    if (o->compress && compress_prealloc(o)) {
        /* Compressed clusters go wherever they fit: preallocated ones
         * would stay unused (qemu-img refuses it too). */
        imgtool_error("Compression and preallocation not supported at the "
                      "same time");
        return 1;
    }

    int src_flags = image_args_flags(&o->src);
    int dst_flags = BLOCK_O_RDWR;
    if (o->src_cache && imgtool_parse_cache(o->src_cache, &src_flags) < 0) {
        imgtool_error("Invalid source cache option: %s", o->src_cache);
        return 1;
    }
    if (o->cache && imgtool_parse_cache(o->cache, &dst_flags) < 0) {
        imgtool_error("Invalid cache option: %s", o->cache);
        return 1;
    }

    int nsrc = argc - optind - 1;
    const char *out = argv[argc - 1];
    BlockNode **src = calloc(nsrc, sizeof(*src));
    BlockNode *dst = NULL;
    KVList dst_opts = { 0 };
    Progress *prog = NULL;
    Error err = { 0 };
    rc = 1;
    if (!src) {
        imgtool_error("out of memory");
        return 1;
    }
    /* vol:POOL/NAME: a new file in a directory pool; with -n the volume
     * is opened as any image is (imgtool/open.c). */
    char *out_path = NULL, *bpath = NULL, *bfmt = NULL;
    if ((!o->no_create && !o->target_image_opts &&
         imgtool_target_name(out, &out_path, &err) < 0) ||
        imgtool_backing_name(o->backing, &bpath, &bfmt, &err) < 0) {
        imgtool_report(&err);
        free(out_path);
        free(src);
        return 1;
    }
    if (out_path) {
        out = out_path;
    }
    if (bpath) {
        o->backing = bpath;
        if (!o->backing_fmt) {
            o->backing_fmt = bfmt;
        }
    }
    for (int i = 0; i < nsrc; i++) {
        src[i] = imgtool_open(argv[optind + i], o->src.fmt, o->src.image_opts,
                              src_flags, &err);
        if (!src[i]) {
            imgtool_report(&err);
            goto out;
        }
    }
    /* Refused before the target is created, as qemu-img does. */
    if (o->bitmaps &&
        block_bitmaps_check_copy(src[0], o->skip_broken, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    if (o->snapshot) {
        if (nsrc != 1) {
            imgtool_error("No support for concatenating multiple snapshot");
            goto out;
        }
        if (block_snapshot_load_tmp(src[0], o->snapshot, &err) < 0) {
            imgtool_report(&err);
            goto out;
        }
    }
    int64_t total = copy_sources_length(src, nsrc);
    if (total < 0) {
        imgtool_error("Could not get size of the source: %s",
                      strerror((int)-total));
        goto out;
    }

    if (!o->no_create && create_target(o, out_fmt, out, total)) {
        goto out;
    }
    if (o->target_image_opts || !target_secret_opts(o, &dst_opts)) {
        dst = imgtool_open(out, o->target_image_opts ? NULL : out_fmt,
                           o->target_image_opts, dst_flags, &err);
    } else {
        dst = block_open(out, out_fmt, &dst_opts, dst_flags, &err);
    }
    kvlist_free(&dst_opts);
    if (!dst) {
        imgtool_report(&err);
        goto out;
    }
    int64_t dst_len = block_get_length(dst);
    if (dst_len < 0) {
        imgtool_error("Could not get size of '%s': %s", out,
                      strerror((int)-dst_len));
        goto out;
    }
    if (dst_len < total) {
        imgtool_error("output file is smaller than input file");
        goto out;
    }
    if (o->bitmaps && !block_bitmaps_persistent(dst)) {
        imgtool_error("Format driver '%s' does not support bitmaps",
                      block_node_format(dst));
        goto out;
    }

    if (o->compress) {
        BlockInfoExtra extra;
        block_get_info_extra(dst, &extra);
        if (extra.encrypted) {
            imgtool_error("Compression and encryption not supported at the "
                          "same time");
            goto out;
        }
    }

    CopyJob job;
    copy_job_init(&job);
    job.src = src;
    job.nsrc = nsrc;
    job.dst = dst;
    job.length = total;
    job.sparse_size = o->sparse;
    job.compress = o->compress;
    job.workers = o->workers;
    job.out_of_order = o->out_of_order;
    job.rate_limit = o->rate;
    job.salvage = o->salvage;
    job.warn = convert_salvage_warn;
    job.warn_opaque = o;
    if (block_backing(dst)) {
        /* zero writes must hide the backing file, not expose it */
        job.no_unmap = true;
        job.src_base = nsrc == 1 ? find_common_base(src[0], dst) : NULL;
        job.compare_target = !job.src_base;
    } else {
        /* A target we just made reads as zero even where block status
         * cannot tell (preallocated with written zeroes): writing zeroes
         * there would punch holes into what preallocation=full
         * allocated.  -S 0 asks for zeroes written, as in qemu-img. */
        job.dst_is_zero = o->target_is_zero ||
                          (!o->no_create && o->sparse &&
                           block_has_zero_init(dst)) ||
                          block_is_zero_fast(dst, 0, total);
    }

    prog = progress_start(o->progress);
    job.progress = convert_progress;
    job.progress_opaque = prog;
    if (copy_run(&job, &err) < 0) {
        progress_finish(prog);
        prog = NULL;
        imgtool_report(&err);
        goto out;
    }
    /* After the copy, so that the copy's own writes do not mark them. */
    if (o->bitmaps && block_bitmaps_copy(dst, src[0], o->skip_broken,
                                        &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    rc = 0;

out:
    progress_finish(prog);
    if (dst) {
        block_close(dst);
    }
    for (int i = 0; i < nsrc; i++) {
        if (src[i]) {
            block_close(src[i]);
        }
    }
    free(src);
    if (rc == 0 && out_path) {
        imgtool_target_created(argv[argc - 1], out_fmt);
    }
    free(out_path);
    free(bpath);
    free(bfmt);
    return rc;
}

int cmd_convert(int argc, char **argv)
{
    ConvertOpts o = { .sparse = COPY_DEFAULT_SPARSE,
                      .workers = COPY_DEFAULT_WORKERS };
    int rc = convert_parse(argc, argv, &o);
    if (rc < 0) {
        rc = convert_run(&o, argc, argv);
    }
    free(o.create_opts);
    return rc;
}
