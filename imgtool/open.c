/*
 * open.c - opening images named on the command line, and the one place
 * where "vol:POOL/NAME" (a volume of a storage pool) becomes what the
 * block layer opens or creates.  A file whose name starts with "vol:"
 * is named "./vol:..." instead.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/imgtool.h"
#include "pools/pool.h"

static BlockNode *open_volume(const char *name, const char *fmt, int flags,
                              Error *err)
{
    PoolStore *s;
    VolOpenSpec spec;
    if (pool_store_open(&s, err) < 0) {
        return NULL;
    }
    int ret = pool_vol_open_spec(s, name, &spec, err);
    pool_store_close(s);
    if (ret < 0) {
        error_prefixf(err, "%s", name);
        return NULL;
    }
    BlockNode *n = NULL;
    if (fmt && strcmp(fmt, spec.format) != 0) {
        /* The pool knows what the volume is; probing or a wrong -f must
         * not make it something else. */
        error_setf(err, EINVAL, "%s: the volume's format is %s, not %s",
                   name, spec.format, fmt);
    } else {
        n = block_open(spec.filename, spec.format, &spec.opts, flags, err);
    }
    vol_open_spec_clear(&spec);
    return n;
}

BlockNode *imgtool_open(const char *name, const char *fmt, bool image_opts,
                        int flags, Error *err)
{
    if (!image_opts && pool_is_vol_name(name)) {
        return open_volume(name, fmt, flags, err);
    }
    if (!image_opts) {
        BlockNode *n = block_open(name, fmt, NULL, flags, err);
        if (!n) {
            /* qemu-img's words: its name for the image, then the block
             * layer's ("Could not open 'x': Could not open 'x': No such
             * file or directory" when the file itself is missing) */
            error_prefixf(err, "Could not open '%s'", name);
        }
        if (n && !fmt && (flags & BLOCK_O_RDWR) &&
            strcmp(block_node_format(n), "raw") == 0) {
            imgtool_warn("Image format was not specified for '%s' and "
                         "probing guessed raw; writes to block 0 are "
                         "restricted. Specify the 'raw' format explicitly "
                         "to remove the restrictions.", name);
        }
        return n;
    }
    if (fmt) {
        error_setf(err, EINVAL, "--image-opts and --format are mutually "
                   "exclusive");
        return NULL;
    }
    KVList opts = { 0 };
    if (kvlist_parse(&opts, name, "file", err) < 0) {
        kvlist_free(&opts);
        return NULL;
    }
    BlockNode *n = block_open(NULL, NULL, &opts, flags, err);
    kvlist_free(&opts);
    if (!n) {
        /* as qemu-img names it: by the option string */
        error_prefixf(err, "Could not open '%s'", name);
    }
    return n;
}

int imgtool_target_name(const char *name, char **out, Error *err)
{
    *out = NULL;
    if (!pool_is_vol_name(name)) {
        *out = strdup(name);
        return *out ? 0 : error_setf(err, ENOMEM, "out of memory");
    }
    PoolStore *s;
    int ret = pool_store_open(&s, err);
    if (ret < 0) {
        return ret;
    }
    VolOpenSpec spec;
    bool exists;
    ret = pool_vol_target_spec(s, name, &spec, &exists, err);
    pool_store_close(s);
    if (ret == 0 && exists) {
        ret = error_setf(err, EEXIST, "the volume exists already (delete it "
                         "with vol-delete, or write into it with "
                         "convert -n)");
    }
    if (ret < 0) {
        error_prefixf(err, "%s", name);
    } else {
        *out = spec.filename;
        spec.filename = NULL;
    }
    vol_open_spec_clear(&spec);
    return ret;
}

void imgtool_target_created(const char *name, const char *fmt)
{
    if (!pool_is_vol_name(name)) {
        return;
    }
    PoolStore *s;
    Error err = { 0 };
    if (pool_store_open(&s, &err) == 0) {
        pool_vol_set_format(s, name, fmt, &err);
        pool_store_close(s);
    }
}

int imgtool_backing_name(const char *name, char **path, char **fmt,
                         Error *err)
{
    *path = *fmt = NULL;
    if (!name || !pool_is_vol_name(name)) {
        return 0;
    }
    PoolStore *s;
    int ret = pool_store_open(&s, err);
    if (ret < 0) {
        return ret;
    }
    VolOpenSpec spec;
    ret = pool_vol_open_spec(s, name, &spec, err);
    pool_store_close(s);
    if (ret == 0 && spec.filename[0] != '/') {
        /* Another program reads the backing name stored in the image. */
        ret = error_setf(err, ENOTSUP, "only volumes of directory pools "
                         "can be backing files");
    }
    if (ret < 0) {
        error_prefixf(err, "%s", name);
    } else {
        *path = spec.filename;
        *fmt = spec.format;
        spec.filename = spec.format = NULL;
    }
    vol_open_spec_clear(&spec);
    return ret;
}

int imgtool_parse_cache(const char *mode, int *flags)
{
    *flags &= ~(BLOCK_O_NOCACHE | BLOCK_O_NO_FLUSH);
    if (!strcmp(mode, "none") || !strcmp(mode, "off") ||
        !strcmp(mode, "directsync")) {
        *flags |= BLOCK_O_NOCACHE;
    } else if (!strcmp(mode, "unsafe")) {
        *flags |= BLOCK_O_NO_FLUSH;
    } else if (strcmp(mode, "writeback") && strcmp(mode, "writethrough")) {
        return -EINVAL;
    }
    return 0;
}
