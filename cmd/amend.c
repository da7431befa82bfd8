/*
 * amend.c - `imgtool amend`: change the options of an existing image in
 * place, as `qemu-img amend` does (compat level, refcount width, lazy
 * refcounts, data file, size, LUKS key slots).
 *
 * The format driver checks every option before it changes anything, so
 * a refused amend leaves the image as it was.  Exit codes: 0 success, 1
 * any failure.  `-o help` lists what the format can amend; with a file
 * name the image is opened to learn its format.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"
#include "imgtool/opthelp.h"
#include "imgtool/parse-options.h"

static struct {
    char *opts;           /* every -o, joined with ',' */
    bool help;            /* one of them asks for the list */
    const char *cache;
    bool progress, force;
} o;

/* -o: a malformed list is refused where it stands, as qemu-img does. */
static int opt_options(const CmdOpt *opt, const char *arg, void *ctx)
{
    if (!cmd_option_list_valid(arg)) {
        return 1;
    }
    o.help |= opthelp_wanted(arg);
    if (cmd_opts_append(&o.opts, arg) < 0) {
        imgtool_error("out of memory");
        return 1;
    }
    return 0;
}

static const CmdOpt amend_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_PROGRESS(&o.progress),
    { CMDOPT_COMMON, 'q', "quiet", NULL, "print nothing but errors",
      .common_code = 'q' },
    CMDOPT_FORMAT,
    CMDOPT_CACHE('t', "cache", &o.cache, ""),
    { CMDOPT_FLAG, 0, "force", NULL,
      "allow changes that lose something (erasing the last LUKS key slot)",
      .value = &o.force },
    { CMDOPT_FN, 'o', NULL, "options",
      "the options to change, e.g. compat=0.10 or refcount_bits=8; "
      "'-o help' lists them", .fn = opt_options },
    CMDOPT_END,
};

static const CmdSpec amend_spec = {
    .name = "amend",
    .args = "filename",
    .description = "Changes the format options of an image in place (-o is "
                   "required).\n",
    .opts = amend_opts,
};

/* The options a driver can amend, sorted by name as qemu-img lists them. */
static int print_amend_help(const BlockDriver *drv)
{
    if (!block_driver_amend_opts(drv)) {
        imgtool_error("Format driver '%s' does not support option amendment",
                      block_driver_name(drv));
        return 1;
    }
    const BlockCreateOpt *list = block_driver_amend_opts(drv);
    size_t n = 0;
    while (list && list[n].name) {
        n++;
    }
    const BlockCreateOpt **v = calloc(n ? n : 1, sizeof(*v));
    if (!v) {
        imgtool_error("out of memory");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        v[i] = &list[i];
    }
    char title[128];
    snprintf(title, sizeof(title), "Amend options for '%s':", block_driver_name(drv));
    opthelp_print(title, v, n);
    free(v);
    return 0;
}

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    progress_update(opaque, done, total);
}

/*
 * Rewrites an -o string the way qemu-img reads it: a bare "key" means
 * "key=on"; an empty item (",x", "x,") makes the list invalid (NULL).
 * ",," stays a literal comma inside a value.
 */
static char *normalize_opts(const char *in)
{
    /* an item of one byte and its comma grow by "=on": 2.5x at most */
    size_t cap = strlen(in) * 3 + 8, w = 0;
    char *out = malloc(cap);
    const char *p = in;

    if (!out) {
        return NULL;
    }
    for (;;) {
        const char *end = p;
        bool has_eq = false;
        while (*end && !(*end == ',' && end[1] != ',')) {
            has_eq |= *end == '=';
            end += (*end == ',') ? 2 : 1;
        }
        if (end == p) {
            free(out);
            return NULL;
        }
        memcpy(out + w, p, (size_t)(end - p));
        w += (size_t)(end - p);
        if (!has_eq) {
            memcpy(out + w, "=on", 3);
            w += 3;
        }
        if (!*end) {
            break;
        }
        out[w++] = ',';
        p = end + 1;
    }
    out[w] = '\0';
    return out;
}

static int run_amend(const char *filename, const ImageArgs *a, int flags,
                     const char *optstr, bool help, bool progress, bool force)
{
    Error err = { 0 };
    KVList opts = { 0 };
    int rc = 1;

    if (!help) {
        char *norm = normalize_opts(optstr);
        int ret = norm ? kvlist_parse(&opts, norm, NULL, &err) : -EINVAL;
        free(norm);
        if (ret < 0) {
            imgtool_error("Invalid option list: %s", optstr);
            kvlist_free(&opts);
            return 1;
        }
    }
    if (help && !a->image_opts) {
        /* The format alone answers: an encrypted image needs no key. */
        const BlockDriver *drv = a->fmt ? block_find_driver(a->fmt)
                                        : block_probe(filename, &err);
        if (!drv || !block_driver_is_format(drv)) {
            if (drv || !error_is_set(&err)) {
                imgtool_error("Unknown file format '%s'", a->fmt);
            } else {
                imgtool_report(&err);
            }
            return 1;
        }
        return print_amend_help(drv);
    }
    BlockNode *n = imgtool_open(filename, a->fmt, a->image_opts,
                                help ? 0 : BLOCK_O_RDWR | flags, &err);
    if (!n) {
        imgtool_report(&err);
        kvlist_free(&opts);
        return 1;
    }
    if (help) {
        rc = print_amend_help(block_node_driver(n));
        goto out;
    }
    if (!block_driver_amend_opts(block_node_driver(n))) {
        imgtool_error("Format driver '%s' does not support option amendment",
                      block_node_format(n));
        goto out;
    }
    Progress *p = progress_start(progress && !a->quiet);
    int ret = block_amend(n, &opts, force, on_progress, p, &err);
    if (ret >= 0) {
        ret = block_flush(n);
        if (ret < 0) {
            error_setf(&err, -ret, "flush failed: %s", strerror(-ret));
        }
    }
    if (ret >= 0) {
        progress_update(p, 1, 1);
    }
    progress_finish(p);
    if (ret < 0) {
        if (!error_is_set(&err)) {
            error_setf(&err, -ret, "Error while amending options: %s",
                       strerror(-ret));
        }
        imgtool_report(&err);
        goto out;
    }
    rc = 0;
out:
    block_close(n);
    kvlist_free(&opts);
    return rc;
}

int cmd_amend(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&amend_spec, &a, NULL, argc, argv, &rc) < 0) {
        goto out;
    }
    rc = 1;
    if (!o.opts) {
        rc = usage_error("amend", "Must specify options (-o)");
        goto out;
    }
    if (image_args_check(&a) < 0) {
        goto out;
    }
    bool help = o.help;
    int npos = argc - optind;
    if (help && npos == 0 && a.fmt) {
        const BlockDriver *drv = block_find_driver(a.fmt);
        if (!drv || !block_driver_is_format(drv)) {
            imgtool_error("Unknown file format '%s'", a.fmt);
            goto out;
        }
        rc = print_amend_help(drv);
        goto out;
    }
    if (npos != 1) {
        rc = usage_error("amend", "Expecting one image file name");
        goto out;
    }
    int flags = 0;
    if (cmd_cache_flags(o.cache, false, &flags) < 0) {
        goto out;
    }
    rc = run_amend(argv[optind], &a, flags, o.opts, help, o.progress,
                   o.force);
out:
    free(o.opts);
    return rc;
}
