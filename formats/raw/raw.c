/*
 * raw.c - the raw format: guest bytes are the file's bytes, optionally a
 * window (offset/size) of the protocol node.
 *
 * When the format was probed rather than given, writes that would make
 * sector 0 look like another format are refused: otherwise a guest could
 * write a qcow2 header into its disk and have the next probing open read
 * host files through a backing file name of its choosing.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "block/block.h"

typedef struct RawState {
    uint64_t offset;
    uint64_t size;
    bool has_size;
    bool probed;
} RawState;

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return 1;   /* anything is raw, as a last resort */
}

static int raw_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    RawState *s = n->opaque;
    int ret = kvlist_get_size(opts, "offset", 0, &s->offset, err);
    if (ret < 0) {
        return ret;
    }
    s->has_size = kvlist_has(opts, "size");
    ret = kvlist_get_size(opts, "size", 0, &s->size, err);
    if (ret < 0) {
        return ret;
    }
    int64_t flen = block_get_length(n->file);
    if (flen < 0) {
        return error_setf(err, (int)-flen, "Could not get the size of '%s'",
                          n->filename);
    }
    if (s->offset > (uint64_t)flen) {
        return error_setf(err, EINVAL, "The offset %" PRIu64 " is beyond "
                          "the end of '%s'", s->offset, n->filename);
    }
    if (s->has_size && s->offset + s->size > (uint64_t)flen) {
        return error_setf(err, EINVAL, "The sum of offset and size is "
                          "larger than the file '%s'", n->filename);
    }
    s->probed = flags & BLOCK_O_PROBED;
    n->request_alignment = n->file->request_alignment;
    return 0;
}

static int64_t raw_get_length(BlockNode *n)
{
    RawState *s = n->opaque;
    if (s->has_size) {
        return (int64_t)s->size;
    }
    int64_t len = block_get_length(n->file);
    if (len < 0) {
        return len;
    }
    /* Disks are made of 512-byte sectors: like QEMU, a file whose length
     * is not a multiple shows a last sector padded with zeroes. */
    return (int64_t)(((uint64_t)len - s->offset + 511) & ~(uint64_t)511);
}

static int raw_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    RawState *s = n->opaque;
    return block_pread(n->file, off + s->offset, len, buf);
}

/* Would writing buf at off turn sector 0 into something another format
 * driver claims? */
static bool write_changes_format(BlockNode *n, uint64_t off, size_t len,
                                 const void *buf)
{
    uint8_t head[512];
    if (block_pread_zero_tail(n, 0, sizeof(head), head) < 0) {
        return true;
    }
    size_t now = len < sizeof(head) - off ? len : sizeof(head) - off;
    memcpy(head + off, buf, now);
    for (int i = 0; block_driver_list[i]; i++) {
        const BlockDriver *d = block_driver_list[i];
        if (d->is_format && d->probe && d != n->drv &&
            d->probe(head, sizeof(head), n->filename) > 1) {
            return true;
        }
    }
    return false;
}

static int raw_pwrite(BlockNode *n, uint64_t off, size_t len,
                      const void *buf, int flags)
{
    RawState *s = n->opaque;
    if (s->probed && off < 512 && write_changes_format(n, off, len, buf)) {
        return -EPERM;
    }
    return block_pwrite(n->file, off + s->offset, len, buf, flags);
}

static int raw_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    RawState *s = n->opaque;
    return block_discard(n->file, off + s->offset, len);
}

static int raw_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                            int flags)
{
    RawState *s = n->opaque;
    return block_write_zeroes(n->file, off + s->offset, len, flags);
}

static int raw_block_status(BlockNode *n, uint64_t off, uint64_t len,
                            uint64_t *pnum, uint64_t *map, BlockNode **file)
{
    RawState *s = n->opaque;
    int ret = block_status(n->file, off + s->offset, len, pnum, map, file);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        /* The window extends past the file (size= given): unwritten. */
        *pnum = len;
        *map = off + s->offset;
        *file = n->file;
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID |
               BLOCK_STATUS_ALLOCATED;
    }
    return ret | BLOCK_STATUS_ALLOCATED;
}

static int raw_truncate(BlockNode *n, uint64_t size, bool exact,
                        PreallocMode pm, Error *err)
{
    RawState *s = n->opaque;
    if (s->offset || s->has_size) {
        return error_setf(err, ENOTSUP, "Cannot resize a raw image opened "
                          "with an offset or size");
    }
    return block_truncate(n->file, size, exact, pm, err);
}

static int raw_create(const char *filename, uint64_t size, KVList *opts,
                      Error *err)
{
    PreallocMode pm = PREALLOC_OFF;
    const char *p = kvlist_get(opts, "preallocation");
    if (p && (prealloc_parse(p, &pm) < 0 || pm == PREALLOC_METADATA)) {
        return error_setf(err, EINVAL, "Invalid preallocation mode: '%s'",
                          p);
    }
    kvlist_get(opts, "size");
    return block_create_file(filename, size, pm, opts, err);
}

static int raw_measure(KVList *opts, BlockNode *in, uint64_t size,
                       BlockMeasure *out, Error *err)
{
    if (in) {
        int64_t len = block_get_length(in);
        if (len < 0) {
            return error_setf(err, (int)-len, "Could not get the input size");
        }
        size = (uint64_t)len;
    }
    out->required = size;
    out->fully_allocated = size;
    return 0;
}

const BlockDriver raw_driver = {
    .name = "raw",
    .instance_size = sizeof(RawState),
    .is_format = true,
    .probe = raw_probe,
    .open = raw_open,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .discard = raw_discard,
    .write_zeroes = raw_write_zeroes,
    .block_status = raw_block_status,
    .get_length = raw_get_length,
    .truncate = raw_truncate,
    .create = raw_create,
    .create_opts = block_protocol_create_opts,
    .measure = raw_measure,
};
