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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "block/job/copy.h"
#include "cmd/convert-progress.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/opthelp.h"
#include "imgtool/parse-options.h"

typedef struct ConvertOpts {
    ImageArgs src;    /* -f -U -q --image-opts --object */
    const char *out_fmt, *backing, *backing_fmt, *cache, *src_cache;
    char *create_opts;       /* every -o, joined with ',' (qemu-img merges) */
    char *opt_backing_fmt;   /* backing_fmt given in -o (backing_fmt points here) */
    const char *snapshot;
    bool target_image_opts, target_is_zero, bitmaps, salvage, skip_broken;
    bool compress, progress, no_create, out_of_order, help;
    bool offload;            /* -C: copy_file_range where extents cannot
                                be shared (sharing is always on) */
    bool sparse_given;       /* -S was on the command line */
    uint64_t sparse, rate;
    int workers;
} ConvertOpts;

/* The command line, filled by the table below. */
static ConvertOpts conv = {
    .sparse = COPY_DEFAULT_SPARSE,
    .workers = COPY_DEFAULT_WORKERS,
};

/* -o: every list, joined in order. */
static int opt_create_opts(const CmdOpt *opt, const char *arg, void *ctx)
{
    if (!cmd_option_list_valid(arg)) {
        return 1;
    }
    conv.help |= opthelp_wanted(arg);
    if (cmd_opts_append(&conv.create_opts, arg) < 0) {
        imgtool_error("out of memory");
        return 1;
    }
    return 0;
}

static int opt_sparse(const CmdOpt *opt, const char *arg, void *ctx)
{
    uint64_t v;
    if (parse_size(arg, &v) < 0) {
        return usage_bad_size("buffer size for sparse output");
    }
    if (v % 512 || v > 16 * 1024 * 1024) {
        imgtool_error("Invalid buffer size for sparse output specified. "
                      "Valid sizes are multiples of 512 up to 16777216. "
                      "Select 0 to disable sparse detection (fully "
                      "allocates output).");
        return 1;
    }
    conv.sparse = v;
    conv.sparse_given = true;
    return 0;
}

static int opt_workers(const CmdOpt *opt, const char *arg, void *ctx)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end || v < 1 || v > COPY_MAX_WORKERS) {
        imgtool_error("Invalid number of coroutines. Allowed number of "
                      "coroutines is between 1 and %d", COPY_MAX_WORKERS);
        return 1;
    }
    conv.workers = (int)v;
    return 0;
}

static const CmdOpt convert_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    { CMDOPT_FLAG, 0, "target-image-opts", NULL,
      "with -n: the output name is an option string (driver=...,...)",
      .value = &conv.target_image_opts },
    { CMDOPT_FLAG, 0, "target-is-zero", NULL,
      "with -n: the target already reads as zeroes",
      .value = &conv.target_is_zero },
    { CMDOPT_FLAG, 0, "bitmaps", NULL,
      "copy the persistent dirty bitmaps too (qcow2)",
      .value = &conv.bitmaps },
    { CMDOPT_COMMON, 'U', "force-share", NULL,
      "open the sources without conflicting locks", .common_code = 'U' },
    { CMDOPT_FLAG, 'C', NULL, NULL,
      "copy offloading: data the kernel copies (copy_file_range) where "
      "it cannot share extents",
      .value = &conv.offload },
    { CMDOPT_FLAG, 'c', NULL, NULL, "compress the target",
      .value = &conv.compress },
    CMDOPT_PROGRESS(&conv.progress),
    { CMDOPT_COMMON, 'q', NULL, NULL, "quiet", .common_code = 'q' },
    { CMDOPT_FLAG, 'n', NULL, NULL,
      "write into an existing target, do not create it",
      .value = &conv.no_create },
    { CMDOPT_COMMON, 'f', "format", "fmt",
      "source format (probed when omitted)", .common_code = 'f' },
    CMDOPT_CACHE('t', "cache", &conv.cache, "the target's "),
    CMDOPT_CACHE('T', "src_cache", &conv.src_cache, "the sources' "),
    { CMDOPT_STRING, 'O', NULL, "output_fmt", "target format (default raw)",
      .value = &conv.out_fmt },
    { CMDOPT_STRING, 'B', NULL, "backing_file",
      "give the target this backing file and copy only what differs from "
      "it", .value = &conv.backing },
    { CMDOPT_STRING, 'F', NULL, "backing_fmt", "format of backing_file",
      .value = &conv.backing_fmt },
    { CMDOPT_FN, 'o', NULL, "options",
      "target creation options (see 'create'); '-o help' lists them",
      .fn = opt_create_opts },
    { CMDOPT_STRING, 'l', NULL, "snapshot_param",
      "copy this internal snapshot of the source", .value = &conv.snapshot },
    { CMDOPT_FN, 'S', NULL, "sparse_size",
      "zero runs of this size become holes (default 4k; 0 allocates the "
      "whole target)", .fn = opt_sparse },
    { CMDOPT_SIZE, 'r', NULL, "rate_limit",
      "limit the copy to rate_limit bytes per second", .value = &conv.rate,
      .what = "rate limit" },
    { CMDOPT_FN, 'm', NULL, "num_coroutines",
      "requests in flight (1..16, default 8)", .fn = opt_workers },
    { CMDOPT_FLAG, 'W', NULL, NULL, "allow out-of-order writes",
      .value = &conv.out_of_order },
    { CMDOPT_FLAG, 0, "salvage", NULL,
      "copy unreadable source sectors as zeroes", .value = &conv.salvage },
    { CMDOPT_FLAG, 0, "skip-broken-bitmaps", NULL,
      "with --bitmaps: leave inconsistent bitmaps out instead of failing",
      .value = &conv.skip_broken },
    CMDOPT_END,
};

static const CmdSpec convert_spec = {
    .name = "convert",
    .args = "filename [filename2 [...]] output_filename",
    .description = "Copies one or more images (concatenated) into a new or "
                   "existing image.\n",
    .opts = convert_opts,
};

/* Returns -1 to continue, else the exit code. */
static int convert_parse(int argc, char **argv, ConvertOpts *o)
{
    int rc;
    if (cmd_parse(&convert_spec, &o->src, NULL, argc, argv, &rc) < 0) {
        return rc;
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
    if (o->backing && !o->backing_fmt && !o->no_create && o->create_opts) {
        /* -B base -o backing_fmt=FMT: the format may come from -o, as
         * qemu-img takes it */
        KVList l = { 0 };
        if (kvlist_parse(&l, o->create_opts, NULL, NULL) == 0 &&
            kvlist_get(&l, "backing_fmt")) {
            o->opt_backing_fmt = strdup(kvlist_get(&l, "backing_fmt"));
            o->backing_fmt = o->opt_backing_fmt;
        }
        kvlist_free(&l);
    }
    if (o->backing && !o->backing_fmt && !o->no_create) {
        /* qemu-img 7.2 refuses to guess a backing file's format */
        imgtool_error("Use of backing file requires explicit backing format");
        return 1;
    }
    /* qemu-img's rules: an offloaded copy neither compresses nor scans */
    if (o->offload && o->compress) {
        imgtool_error("Cannot enable copy offloading when -c is used");
        return 1;
    }
    if (o->offload && o->sparse_given) {
        imgtool_error("Cannot enable copy offloading when -S is used");
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

/* -p: the bar in qemu-img's steps (cmd/convert-progress.c). */
static void convert_progress_steps(void *opaque, uint64_t done,
                                   uint64_t total)
{
    (void)total;
    convert_progress_to(opaque, done);
}

/* --salvage: qemu-img's words, a line per 512-byte sector. */
static void convert_salvage_warn(void *opaque, uint64_t off, uint64_t len,
                                 int err)
{
    const ConvertOpts *o = opaque;
    for (uint64_t s = 0; !o->src.quiet && s < len; s += 512) {
        imgtool_warn("error while reading offset %llu: %s",
                     (unsigned long long)(off + s), strerror(-err));
    }
}

static void convert_status_warn(void *opaque, uint64_t off, uint64_t len,
                                int err)
{
    const ConvertOpts *o = opaque;
    (void)len;
    if (!o->src.quiet) {
        imgtool_warn("error while reading block status at offset %llu: %s",
                     (unsigned long long)off, strerror(-err));
    }
}

/* --salvage: qemu-img sizes its copy first and says where block status
 * fails then too (a sector at a time); the same lines, before the copy. */
static void salvage_status_pass(const ConvertOpts *o, BlockNode **src,
                                int nsrc)
{
    uint64_t base = 0;
    for (int i = 0; i < nsrc; i++) {
        int64_t len = block_get_length(src[i]);
        for (uint64_t off = 0; len > 0 && off < (uint64_t)len;) {
            uint64_t pnum = 0;
            int st = block_status_above(src[i], NULL, off,
                                        (uint64_t)len - off, &pnum, NULL,
                                        NULL, NULL);
            if (st < 0) {
                convert_status_warn((void *)o, base + off, 512, st);
                pnum = 512;
            }
            off += pnum ? pnum : (uint64_t)len - off;
        }
        base += len > 0 ? (uint64_t)len : 0;
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
    if (cmd_cache_flags(o->src_cache, true, &src_flags) < 0 ||
        cmd_cache_flags(o->cache, false, &dst_flags) < 0) {
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
    /* Data is shared from the source's file where the file system can
     * (reflinks); -C also lets the kernel copy what cannot be shared. */
    job.offload = o->offload ? COPY_SHARE | COPY_OFFLOAD : COPY_SHARE;
    job.warn = convert_salvage_warn;
    job.warn_status = convert_status_warn;
    if (o->salvage) {
        /* one worker: the warnings come in qemu-img's order */
        job.workers = 1;
        salvage_status_pass(o, src, nsrc);
    }
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
    ConvertProgress steps;
    if (o->progress && prog) {
        BlockInfoExtra extra;
        block_get_info_extra(dst, &extra);
        convert_progress_init(&steps, prog, src, nsrc, total, !o->sparse,
                              o->compress,
                              o->compress && extra.cluster_size
                              ? extra.cluster_size : 0);
        job.progress = convert_progress_steps;
        job.progress_opaque = &steps;
    }
    if (copy_run(&job, &err) < 0) {
        progress_finish(prog);
        prog = NULL;
        imgtool_report(&err);
        goto out;
    }
    /* qemu-img draws 100 once more when the copy is done */
    progress_qemu_step(prog, 100.0f);
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
    int rc = convert_parse(argc, argv, &conv);
    if (rc < 0) {
        rc = convert_run(&conv, argc, argv);
    }
    free(conv.create_opts);
    free(conv.opt_backing_fmt);
    return rc;
}
