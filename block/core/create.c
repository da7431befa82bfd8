/*
 * create.c - format-level entry points that dispatch to the driver:
 * image creation (with backing-file size defaulting and option
 * validation before anything touches the disk), check, measure, info and
 * backing-file changes.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/core/modules.h"
#include "block/driver.h"

/* Raw images are files: the raw format and the file protocol take the
 * same creation options. */
const BlockCreateOpt block_protocol_create_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size", NULL },
    { "preallocation", OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", "off" },
    { "nocow", OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)",
      "off" },
    { "extent_size_hint", OPT_SIZE,
      "Extent size hint for the image file, 0 to disable", NULL },
    { NULL, 0, NULL, NULL },
};

static bool opt_known(const BlockCreateOpt *list, const char *key)
{
    for (int i = 0; list && list[i].name; i++) {
        if (strcmp(list[i].name, key) == 0) {
            return true;
        }
    }
    return false;
}

int block_create_name_check(const char *filename, Error *err)
{
    if (block_is_json_name(filename)) {
        /* It names options of an image that must exist; creating would
         * make a file called "json:{...}". */
        return error_setf(err, EINVAL, "cannot create an image named by "
                          "json: options; give a file name (convert: -n "
                          "writes into an existing image)");
    }
    return 0;
}

/* The local files a create may make: their names, and whether each
 * was absent before (so it is ours to remove if the create fails). */
typedef struct NewFiles {
    const char *name[2];
    bool absent[2];
    int n;
} NewFiles;

static bool is_local_name(const char *name)
{
    if (block_module_owning(name)) {
        return false;          /* nbd://, iscsi://, gluster:// ... */
    }
    for (int i = 0; block_driver_list[i]; i++) {
        const BlockDriver *d = block_driver_list[i];
        if (d->kind == BLOCK_DRIVER_PROTOCOL && d->owns_filename &&
            d->owns_filename(name)) {
            return false;
        }
    }
    return true;
}

static void new_files_note(NewFiles *f, const char *name)
{
    struct stat st;
    if (f->n < 2 && name && *name && is_local_name(name)) {
        f->name[f->n] = name;
        f->absent[f->n] = lstat(name, &st) < 0 && errno == ENOENT;
        f->n++;
    }
}

static void new_files_undo(const NewFiles *f)
{
    for (int i = 0; i < f->n; i++) {
        if (f->absent[i]) {
            unlink(f->name[i]);
        }
    }
}

int block_create(const char *format, const char *filename, uint64_t size,
                 bool size_given, KVList *opts, int flags, Error *err)
{
    const BlockDriver *drv = block_find_driver(format);
    KVList empty = { 0 };
    if (!opts) {
        opts = &empty;
    }
    if (!drv) {
        return error_setf(err, EINVAL, "Unknown file format '%s'", format);
    }
    if (!drv->create) {
        return error_setf(err, ENOTSUP, "Format driver '%s' does not "
                          "support image creation", drv->name);
    }
    if (block_create_name_check(filename, err) < 0) {
        return -EINVAL;
    }
    const char *backing = NULL;
    for (size_t i = 0; i < opts->n; i++) {
        if (strcmp(opts->items[i].key, "backing_file") == 0) {
            backing = opts->items[i].value;
        }
    }
    if (backing && !*backing) {
        backing = NULL;
    }
    if (backing && !drv->supports_backing) {
        return error_setf(err, ENOTSUP, "Backing file not supported for "
                          "file format '%s'", drv->name);
    }
    /* Refuse unknown options before creating anything. */
    for (size_t i = 0; i < opts->n; i++) {
        if (!opt_known(drv->create_opts, opts->items[i].key)) {
            return error_setf(err, EINVAL, "Invalid parameter '%s'",
                              opts->items[i].key);
        }
    }
    if (backing && strcmp(backing, filename) == 0) {
        return error_setf(err, EINVAL, "Error: Trying to create an image "
                          "with the same filename as the backing file");
    }
    if (backing && !(flags & BLOCK_CREATE_UNSAFE)) {
        const char *bfmt = NULL;
        for (size_t i = 0; i < opts->n; i++) {
            if (strcmp(opts->items[i].key, "backing_fmt") == 0) {
                bfmt = opts->items[i].value;
            }
        }
        char *full = block_resolve_backing(filename, backing);
        if (!full) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        Error berr = { 0 };
        BlockNode *b = block_open(full, bfmt, NULL,
                                  BLOCK_O_SHARE | BLOCK_O_NO_BACKING, &berr);
        free(full);
        if (!b) {
            return error_setf(err, berr.code, "Could not open backing "
                              "image: %s", berr.msg);
        }
        if (!size_given) {
            int64_t len = block_get_length(b);
            if (len < 0) {
                block_close(b);
                return error_setf(err, (int)-len, "Could not get the size "
                                  "of the backing image");
            }
            size = (uint64_t)len;
            size_given = true;
        }
        block_close(b);
    }
    if (!size_given) {
        return error_setf(err, EINVAL, "Image creation needs a size "
                          "parameter");
    }
    /* A failed create leaves nothing it made: a half-made image (a
     * valid qcow2 of size 0) or a preallocated file filling the disk
     * would look like a result. */
    NewFiles nf = { .n = 0 };
    new_files_note(&nf, filename);
    if (drv->create_file_opt) {
        const char *other = NULL;
        for (size_t i = 0; i < opts->n; i++) {
            if (!strcmp(opts->items[i].key, drv->create_file_opt)) {
                other = opts->items[i].value;   /* the last one counts */
            }
        }
        new_files_note(&nf, other);
    }
    int ret = drv->create(filename, size, opts, err);
    if (ret < 0) {
        new_files_undo(&nf);
    }
    return ret;
}

void block_create_file_hints(KVList *opts, KVList *out)
{
    static const char *const hints[] = { "nocow", "extent_size_hint" };
    for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++) {
        const char *v = kvlist_get(opts, hints[i]);
        if (v) {
            kvlist_set(out, hints[i], v);
        }
    }
}

int block_create_file(const char *filename, uint64_t size, PreallocMode pm,
                      KVList *opts, Error *err)
{
    const BlockDriver *drv = block_protocol_for(filename);
    if (!drv) {
        int ret = block_module_driver_error(NULL, filename, err);
        return ret < 0 ? ret : error_setf(err, EINVAL, "no protocol driver "
                                          "for '%s'", filename);
    }
    KVList popts = { 0 };
    if (opts) {
        kvlist_extract_prefix(opts, "file", &popts);
    }
    if (pm != PREALLOC_OFF) {
        kvlist_set(&popts, "preallocation", prealloc_name(pm));
    }
    if (opts) {
        block_create_file_hints(opts, &popts);
    }
    int ret = drv->create(filename, size, &popts, err);
    kvlist_free(&popts);
    return ret;
}

int block_check(BlockNode *n, BlockCheckResult *res, int fix, Error *err)
{
    BlockCheckResult blank = { .message = res->message,
                               .message_opaque = res->message_opaque };
    *res = blank;
    if (!n->drv->check) {
        return -ENOTSUP;
    }
    if (fix && n->read_only) {
        return error_setf(err, EACCES, "Cannot repair read-only image '%s'",
                          n->filename);
    }
    return n->drv->check(n, res, fix, err);
}

int block_measure(const char *format, KVList *opts, BlockNode *in,
                  uint64_t size, BlockMeasure *out, Error *err)
{
    const BlockDriver *drv = block_find_driver(format);
    memset(out, 0, sizeof(*out));
    if (!drv) {
        return error_setf(err, EINVAL, "Unknown file format '%s'", format);
    }
    if (!drv->measure) {
        return error_setf(err, ENOTSUP, "Format driver '%s' does not "
                          "support measure", drv->name);
    }
    return drv->measure(opts, in, size, out, err);
}

json_t *block_get_format_info(BlockNode *n)
{
    return n->drv->get_format_info ? n->drv->get_format_info(n) : NULL;
}

void block_get_info_extra(BlockNode *n, BlockInfoExtra *out)
{
    memset(out, 0, sizeof(*out));
    if (n->drv->get_info_extra) {
        n->drv->get_info_extra(n, out);
    }
}

int block_change_backing_file(BlockNode *n, const char *file,
                              const char *fmt, Error *err)
{
    if (!n->drv->change_backing_file) {
        return error_setf(err, ENOTSUP, "Format '%s' has no backing file",
                          n->drv->name);
    }
    if (n->read_only) {
        return error_setf(err, EACCES, "Image '%s' is read-only",
                          n->filename);
    }
    return n->drv->change_backing_file(n, file, fmt, err);
}
