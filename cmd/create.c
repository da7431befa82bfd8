/*
 * create.c - `imgtool create`: make a new image, as `qemu-img create`.
 *
 * Everything the user can get wrong (unknown or malformed -o options, a
 * size given twice, a backing file without its format, a backing file
 * that cannot be opened) is refused before the "Formatting ..." line is
 * printed and before anything touches the disk, so a failed create
 * leaves nothing behind and says why in one line.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/opthelp.h"
#include "imgtool/parse-options.h"

static struct {
    const char *fmt, *backing, *backing_fmt;
    bool unsafe;
    CmdList opts;         /* each -o, in order */
} o = { .fmt = "raw" };

static const CmdOpt create_opts[] = {
    CMDOPT_OBJECT,
    { CMDOPT_COMMON, 'q', "quiet", NULL, "do not print the 'Formatting' line",
      .common_code = 'q' },
    { CMDOPT_STRING, 'f', NULL, "fmt", "image format (default: raw)",
      .value = &o.fmt },
    { CMDOPT_STRING, 'b', NULL, "backing_file",
      "create a copy-on-write overlay of backing_file", .value = &o.backing },
    { CMDOPT_STRING, 'F', NULL, "backing_fmt",
      "format of the backing file (required with -b)",
      .value = &o.backing_fmt },
    { CMDOPT_FLAG, 'u', NULL, NULL,
      "do not open the backing file (size must be given)",
      .value = &o.unsafe },
    { CMDOPT_LIST, 'o', NULL, "options",
      "format options, e.g. cluster_size=64k; '-o help' lists them",
      .value = &o.opts },
    CMDOPT_END,
};

static const CmdSpec create_spec = {
    .name = "create",
    .args = "filename [size]",
    .description = "  size: bytes, or with a k, M, G, T, P or E suffix; may be "
                   "omitted with -b\n  to use the backing file's size.\n",
    .opts = create_opts,
};

/*
 * The order in which qemu-img lists options in its "Formatting" line,
 * and the defaults it shows even when not given.  Observed from qemu-img
 * 7.2; formats without a table print size first, then the options given
 * in the driver's order.
 */
typedef struct ShownOpt {
    const char *name;
    const char *shown_default;
} ShownOpt;

static const ShownOpt qcow2_shown[] = {
    { "encryption", NULL }, { "encrypt.format", NULL },
    { "encrypt.key-secret", NULL }, { "encrypt.cipher-alg", NULL },
    { "encrypt.cipher-mode", NULL }, { "encrypt.ivgen-alg", NULL },
    { "encrypt.ivgen-hash-alg", NULL }, { "encrypt.hash-alg", NULL },
    { "encrypt.iter-time", NULL }, { "cluster_size", "65536" },
    { "extended_l2", "off" }, { "preallocation", NULL },
    { "compression_type", "zlib" }, { "size", NULL }, { "compat", NULL },
    { "backing_file", NULL }, { "backing_fmt", NULL },
    { "data_file", NULL }, { "data_file_raw", NULL },
    { "lazy_refcounts", "off" }, { "refcount_bits", "16" },
    { "nocow", NULL }, { "extent_size_hint", NULL },
    { NULL, NULL },
};

static const ShownOpt raw_shown[] = {
    { "size", NULL }, { "nocow", NULL }, { "preallocation", NULL },
    { "extent_size_hint", NULL }, { NULL, NULL },
};

static const ShownOpt default_shown[] = {
    { "size", NULL }, { NULL, NULL },
};

static const ShownOpt *shown_table(const char *fmt)
{
    if (strcmp(fmt, "qcow2") == 0) {
        return qcow2_shown;
    }
    if (strcmp(fmt, "raw") == 0) {
        return raw_shown;
    }
    return default_shown;
}

static bool parse_bool_text(const char *v)
{
    static const char *const ok[] = {
        "on", "off", "yes", "no", "true", "false", NULL,
    };
    for (int i = 0; ok[i]; i++) {
        if (strcmp(v, ok[i]) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * Checks every -o option against the driver's table and its type, and
 * builds the value qemu-img would show for it (sizes and numbers in plain
 * decimal).  shown[i] belongs to opts->items[i]; NULL for items
 * overridden by a later one.
 */
static int validate_opts(const BlockDriver *drv, KVList *opts, char **shown,
                         Error *err)
{
    for (size_t i = 0; i < opts->n; i++) {
        KVPair *p = &opts->items[i];
        const BlockCreateOpt *o = opthelp_find_opt(block_driver_create_opts(drv), p->key);
        if (!o) {
            return error_setf(err, EINVAL, "Invalid parameter '%s'", p->key);
        }
        uint64_t v;
        char buf[32];
        const char *text = p->value;
        if (o->type == OPT_SIZE) {
            if (parse_size(p->value, &v) < 0) {
                return error_setf(err, EINVAL, "Parameter '%s' expects a "
                                  "non-negative number below 2^64 (optional "
                                  "suffix k, M, G, T, P or E)", p->key);
            }
            snprintf(buf, sizeof(buf), "%" PRIu64, v);
            text = buf;
        } else if (o->type == OPT_NUMBER) {
            char *end;
            errno = 0;
            v = strtoull(p->value, &end, 0);
            if (!*p->value || *end || errno || p->value[0] == '-') {
                return error_setf(err, EINVAL, "Parameter '%s' expects a "
                                  "number", p->key);
            }
            snprintf(buf, sizeof(buf), "%" PRIu64, v);
            text = buf;
        } else if (o->type == OPT_BOOL && !parse_bool_text(p->value)) {
            return error_setf(err, EINVAL, "Parameter '%s' expects 'on' or "
                              "'off'", p->key);
        }
        for (size_t j = 0; j < i; j++) {
            if (shown[j] && strcmp(opts->items[j].key, p->key) == 0) {
                free(shown[j]);
                shown[j] = NULL;
            }
        }
        shown[i] = strdup(text);
    }
    return 0;
}

static const char *shown_value(const KVList *opts, char **shown,
                               const char *key)
{
    for (size_t i = 0; i < opts->n; i++) {
        if (shown[i] && strcmp(opts->items[i].key, key) == 0) {
            return shown[i];
        }
    }
    return NULL;
}

static bool in_table(const ShownOpt *t, const char *name)
{
    for (int i = 0; t[i].name; i++) {
        if (strcmp(t[i].name, name) == 0) {
            return true;
        }
    }
    return false;
}

/* qemu-img doubles the commas in option values, as its option syntax
 * reads them back (backing_file=a,,b.qcow2). */
static void print_opt(const char *name, const char *value)
{
    printf(" %s=", name);
    for (const char *c = value; *c; c++) {
        if (*c == ',') {
            putchar(',');
        }
        putchar(*c);
    }
}

static void print_formatting(const char *filename, const BlockDriver *drv,
                             const KVList *opts, char **shown, uint64_t size)
{
    const ShownOpt *t = shown_table(block_driver_name(drv));
    char sizebuf[32];
    snprintf(sizebuf, sizeof(sizebuf), "%" PRIu64, size);

    printf("Formatting '%s', fmt=%s", filename, block_driver_name(drv));
    for (int i = 0; t[i].name; i++) {
        const char *v = strcmp(t[i].name, "size") == 0
                            ? sizebuf
                            : shown_value(opts, shown, t[i].name);
        if (!v) {
            v = t[i].shown_default;
        }
        if (v) {
            print_opt(t[i].name, v);
        }
    }
    for (int i = 0; block_driver_create_opts(drv) && block_driver_create_opts(drv)[i].name; i++) {
        const char *name = block_driver_create_opts(drv)[i].name;
        const char *v = shown_value(opts, shown, name);
        if (v && !in_table(t, name)) {
            print_opt(name, v);
        }
    }
    printf("\n");
    fflush(stdout);
}

/* Opens the backing file the way the new image will, to prove it is
 * usable and to learn its size. */
static int probe_backing(const char *filename, const char *backing,
                         const char *backing_fmt, int64_t *len, Error *err)
{
    char *full = block_resolve_backing(filename, backing);
    if (!full) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    Error berr = { 0 };
    BlockNode *b = block_open(full, backing_fmt, NULL,
                              BLOCK_O_SHARE | BLOCK_O_NO_BACKING, &berr);
    free(full);
    if (!b) {
        /* qemu-img's line: the open's own words (its hint "Could not
         * open backing image." would be a second line) */
        return error_setf(err, berr.code ? berr.code : EIO, "%s",
                          berr.msg);
    }
    *len = block_get_length(b);
    block_close(b);
    if (*len < 0) {
        return error_setf(err, (int)-*len, "Could not get the size of the "
                          "backing image: %s", strerror((int)-*len));
    }
    return 0;
}

static int do_create(const char *fmt, const char *filename,
                     const char *size_arg, const char *backing,
                     const char *backing_fmt, bool unsafe, bool quiet,
                     const CmdList *ostrs)
{
    const BlockDriver *drv = block_find_driver(fmt);
    if (!drv || !block_driver_is_format(drv)) {
        imgtool_error("%s: Unknown file format '%s'", filename, fmt);
        return 1;
    }
    if (!block_driver_can_create(drv)) {
        imgtool_error("%s: Format driver '%s' does not support image "
                      "creation", filename, fmt);
        return 1;
    }

    uint64_t size = 0;
    bool size_given = false;
    if (size_arg) {
        int r = parse_size(size_arg, &size);
        if (r < 0) {
            imgtool_error("Invalid image size specified. You may use k, M, "
                          "G, T, P or E suffixes for kilobytes, megabytes, "
                          "gigabytes, terabytes, petabytes and exabytes.");
            return 1;
        }
        if (size > INT64_MAX) {
            imgtool_error("Invalid image size specified. Must be between 0 "
                          "and %" PRId64 ".", INT64_MAX);
            return 1;
        }
        size_given = true;
    }

    Error err = { 0 };
    KVList opts = { 0 };
    char **shown = NULL;
    int rc = 1;
    for (size_t i = 0; i < ostrs->n; i++) {
        if (kvlist_parse(&opts, ostrs->items[i], NULL, &err) < 0) {
            goto fail;
        }
    }
    if (backing) {
        kvlist_set(&opts, "backing_file", backing);
    }
    if (backing_fmt) {
        kvlist_set(&opts, "backing_fmt", backing_fmt);
    }
    const char *bfile = kvlist_get(&opts, "backing_file");
    if (bfile && *bfile && !block_driver_supports_backing(drv)) {
        error_setf(&err, ENOTSUP, "Backing file not supported for file "
                   "format '%s'", block_driver_name(drv));
        goto fail;
    }
    shown = calloc(opts.n ? opts.n : 1, sizeof(*shown));
    if (validate_opts(drv, &opts, shown, &err) < 0) {
        goto fail;
    }

    const char *osize = shown_value(&opts, shown, "size");
    if (osize) {
        if (size_given) {
            error_setf(&err, EINVAL, "The image size must be specified only "
                       "once");
            goto fail;
        }
        size = strtoull(osize, NULL, 10);
        size_given = true;
        if (size > INT64_MAX) {
            error_setf(&err, EINVAL, "Image size must be less than 8 EiB");
            goto fail;
        }
    }

    bfile = shown_value(&opts, shown, "backing_file");
    const char *bfmt = shown_value(&opts, shown, "backing_fmt");
    if (bfile && !*bfile) {
        bfile = NULL;
    }
    /* Without -u the backing file is opened (probed when its format is
     * not given) before its format is asked for: as in qemu-img, a file
     * that cannot be opened is the first thing reported. */
    if (bfile && !bfmt && unsafe) {
        error_setf(&err, EINVAL, "Backing file specified without backing "
                   "format");
        goto fail;
    }
    if (bfmt && !bfile) {
        error_setf(&err, EINVAL, "Backing format cannot be used without "
                   "backing file");
        goto fail;
    }
    if (bfile && strcmp(bfile, filename) == 0) {
        error_setf(&err, EINVAL, "Error: Trying to create an image with the "
                   "same filename as the backing file");
        goto fail;
    }
    if (bfile && !unsafe) {
        int64_t blen = 0;
        if (probe_backing(filename, bfile, bfmt, &blen, &err) < 0) {
            goto fail;
        }
        if (!bfmt) {
            error_setf(&err, EINVAL, "Backing file specified without "
                       "backing format");
            goto fail;
        }
        if (!size_given) {
            size = (uint64_t)blen;
            size_given = true;
        }
    }
    if (!size_given) {
        error_setf(&err, EINVAL, "Image creation needs a size parameter");
        goto fail;
    }

    if (block_create_name_check(filename, &err) < 0) {
        goto fail;
    }
    if (!quiet) {
        print_formatting(filename, drv, &opts, shown, size);
    }
    /* qemu-img shows the size as given but creates whole sectors. */
    size = (size + 511) & ~(uint64_t)511;
    if (block_create(fmt, filename, size, true, &opts,
                     (unsafe ? BLOCK_CREATE_UNSAFE : 0) |
                     (quiet ? BLOCK_CREATE_QUIET : 0), &err) < 0) {
        goto fail;
    }
    rc = 0;
    goto out;

fail:
    imgtool_error("%s: %s", filename, err.msg);
out:
    if (shown) {
        for (size_t i = 0; i < opts.n; i++) {
            free(shown[i]);
        }
        free(shown);
    }
    kvlist_free(&opts);
    return rc;
}

int cmd_create(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&create_spec, &a, NULL, argc, argv, &rc) < 0) {
        goto out;
    }
    const char *fmt = o.fmt, *backing = o.backing;
    int npos = argc - optind;
    bool help = false;
    for (size_t i = 0; i < o.opts.n; i++) {
        if (!cmd_option_list_valid(o.opts.items[i])) {
            rc = 1;
            goto out;
        }
        help |= opthelp_wanted(o.opts.items[i]);
    }
    if (help) {
        const BlockDriver *drv = block_find_driver(fmt);
        rc = 1;
        if (!drv || !block_driver_is_format(drv)) {
            imgtool_error("Unknown file format '%s'", fmt);
            goto out;
        }
        opthelp_print_create(drv, npos >= 1 ? argv[optind] : NULL);
        rc = 0;
        goto out;
    }
    if (npos < 1) {
        rc = usage_error("create", "Expecting image file name");
        goto out;
    }
    if (npos > 2) {
        char msg[300];
        snprintf(msg, sizeof(msg), "Unexpected argument: %s",
                 argv[optind + 2]);
        rc = usage_error("create", msg);
        goto out;
    }
    /* vol:POOL/NAME: a new file in a directory pool (imgtool/open.c) */
    char *path = NULL, *bpath = NULL, *bfmt = NULL;
    Error terr = { 0 };
    if (imgtool_target_name(argv[optind], &path, &terr) < 0 ||
        imgtool_backing_name(backing, &bpath, &bfmt, &terr) < 0) {
        imgtool_report(&terr);
        free(path);
        rc = 1;
        goto out;
    }
    rc = do_create(fmt, path, npos == 2 ? argv[optind + 1] : NULL,
                   bpath ? bpath : backing,
                   o.backing_fmt ? o.backing_fmt : bfmt, o.unsafe, a.quiet,
                   &o.opts);
    if (rc == 0) {
        imgtool_target_created(argv[optind], fmt);
    }
    free(path);
    free(bpath);
    free(bfmt);
out:
    cmd_list_free(&o.opts);
    return rc;
}
