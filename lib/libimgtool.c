/*
 * libimgtool.c - include/libimgtool.h over the block layer (block/block.h).
 * A thin layer: it only translates types and flags, so the public
 * interface stays fixed while the internals move.  Built into
 * libimgtool.so only; the imgtool program calls the block layer itself.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "include/libimgtool.h"

#ifndef IMGTOOL_VERSION
#define IMGTOOL_VERSION "unknown"
#endif

struct libimgtool_image {
    BlockNode *node;
};

static void copy_error(libimgtool_error *out, const Error *e, int ret)
{
    if (!out) {
        return;
    }
    out->code = e->code ? e->code : -ret;
    snprintf(out->message, sizeof(out->message), "%s",
             e->msg[0] ? e->msg : strerror(out->code));
}

const char *libimgtool_version(void)
{
    return IMGTOOL_VERSION;
}

int libimgtool_open(const char *filename, const char *format,
                    unsigned flags, libimgtool_image **out,
                    libimgtool_error *err)
{
    Error e = { 0 };
    *out = NULL;
    if (!filename) {
        error_setf(&e, EINVAL, "no file name");
        copy_error(err, &e, -EINVAL);
        return -EINVAL;
    }
    libimgtool_image *img = calloc(1, sizeof(*img));
    if (!img) {
        error_setf(&e, ENOMEM, "out of memory");
        copy_error(err, &e, -ENOMEM);
        return -ENOMEM;
    }
    int bflags = 0;
    if (flags & LIBIMGTOOL_OPEN_RDWR) {
        bflags |= BLOCK_O_RDWR;
    } else if (flags & LIBIMGTOOL_OPEN_SHARE) {
        bflags |= BLOCK_O_SHARE;
    }
    if (flags & LIBIMGTOOL_OPEN_NO_BACKING) {
        bflags |= BLOCK_O_NO_BACKING;
    }
    img->node = block_open(filename, format, NULL, bflags, &e);
    if (!img->node) {
        int ret = e.code ? -e.code : -EIO;
        copy_error(err, &e, ret);
        free(img);
        return ret;
    }
    *out = img;
    return 0;
}

const char *libimgtool_format(const libimgtool_image *img)
{
    return block_node_format(img->node);
}

int64_t libimgtool_size(libimgtool_image *img)
{
    return block_get_length(img->node);
}

/* Requests past the end are the caller's mistake, refused here rather
 * than left to each driver. */
static int check_range(libimgtool_image *img, uint64_t off, size_t len)
{
    int64_t size = block_get_length(img->node);
    if (size < 0) {
        return (int)size;
    }
    if (off > (uint64_t)size || len > (uint64_t)size - off) {
        return -EINVAL;
    }
    return 0;
}

int libimgtool_pread(libimgtool_image *img, void *buf, size_t len,
                     uint64_t off)
{
    int ret = check_range(img, off, len);
    return ret < 0 ? ret : block_pread(img->node, off, len, buf);
}

int libimgtool_pwrite(libimgtool_image *img, const void *buf, size_t len,
                      uint64_t off, unsigned flags)
{
    int ret = check_range(img, off, len);
    if (ret < 0) {
        return ret;
    }
    ret = block_pwrite(img->node, off, len, buf,
                       flags & LIBIMGTOOL_WRITE_FUA ? BLOCK_REQ_FUA : 0);
    return ret < 0 ? ret : 0;
}

int libimgtool_flush(libimgtool_image *img)
{
    return block_flush(img->node);
}

int libimgtool_block_status(libimgtool_image *img, uint64_t off,
                            uint64_t len, uint64_t *pnum, unsigned *status)
{
    int ret = check_range(img, off, len);
    if (ret < 0) {
        return ret;
    }
    ret = block_status_above(img->node, NULL, off, len, pnum, NULL, NULL,
                             NULL);
    if (ret < 0) {
        return ret;
    }
    *status = (ret & BLOCK_STATUS_DATA ? LIBIMGTOOL_STATUS_DATA : 0) |
              (ret & BLOCK_STATUS_ZERO ? LIBIMGTOOL_STATUS_ZERO : 0) |
              (ret & BLOCK_STATUS_ALLOCATED ? LIBIMGTOOL_STATUS_ALLOCATED
                                            : 0);
    return 0;
}

int libimgtool_create(const char *filename, const char *format,
                      uint64_t size, const char *options,
                      libimgtool_error *err)
{
    Error e = { 0 };
    KVList opts = { 0 };
    int ret = 0;
    if (!filename || !format) {
        ret = error_setf(&e, EINVAL, "give a file name and a format");
    }
    if (ret == 0 && options) {
        ret = kvlist_parse(&opts, options, NULL, &e);
    }
    if (ret == 0) {
        /* size 0 with a backing file: the backing file's size */
        bool size_given = size > 0 || !kvlist_has(&opts, "backing_file");
        ret = block_create(format, filename, size, size_given, &opts,
                           BLOCK_CREATE_QUIET, &e);
    }
    kvlist_free(&opts);
    if (ret < 0) {
        copy_error(err, &e, ret);
    }
    return ret < 0 ? ret : 0;
}

void libimgtool_close(libimgtool_image *img)
{
    if (img) {
        block_close(img->node);
        free(img);
    }
}
