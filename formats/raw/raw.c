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

#include "block/driver.h"

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
    int64_t flen = block_get_length(block_file(n));
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
    n->request_alignment = block_file(n)->request_alignment;
    return 0;
}

static int64_t raw_get_length(BlockNode *n)
{
    RawState *s = n->opaque;
    if (s->has_size) {
        return (int64_t)s->size;
    }
    int64_t len = block_get_length(block_file(n));
    if (len < 0) {
        return len;
    }
    /* Disks are made of 512-byte sectors: like QEMU, a file whose length
     * is not a multiple shows a last sector padded with zeroes. */
    return (int64_t)(((uint64_t)len - s->offset + 511) & ~(uint64_t)511);
}

static int raw_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    RawState *s = n->opaque;
    return block_preadv(block_file(n), off + s->offset, qiov, flags);
}

/* Would writing buf at off turn sector 0 into something another format
 * driver claims? */
static bool write_changes_format(BlockNode *n, uint64_t off,
                                 BlockIOV *qiov)
{
    uint8_t head[512];
    if (block_pread_zero_tail(n, 0, sizeof(head), head) < 0) {
        return true;
    }
    size_t now = qiov->size < sizeof(head) - off ? qiov->size
                                                 : sizeof(head) - off;
    blockiov_to_buf(qiov, 0, head + off, now);
    for (int i = 0; block_driver_list[i]; i++) {
        const BlockDriver *d = block_driver_list[i];
        if (d->kind == BLOCK_DRIVER_FORMAT && d->probe && d != n->drv &&
            d->probe(head, sizeof(head), n->filename) > 1) {
            return true;
        }
    }
    return false;
}

static int raw_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                       int flags)
{
    RawState *s = n->opaque;
    if (s->probed && off < 512 && write_changes_format(n, off, qiov)) {
        return -EPERM;
    }
    return block_pwritev(block_file(n), off + s->offset, qiov, flags);
}

/* Shared or kernel-copied data lands at the same place a write would;
 * a probed image's first sector stays with the write path, which checks
 * what is written there. */
static int raw_copy_range_from(BlockNode *n, uint64_t off, uint64_t len,
                               BlockNode *src_file, uint64_t src_host,
                               int flags)
{
    RawState *s = n->opaque;
    if (s->probed && off < 512) {
        return -ENOTSUP;
    }
    return block_copy_range_from(block_file(n), off + s->offset, len,
                                 src_file, src_host, flags);
}

static void raw_child_done(void *opaque, int ret)
{
    block_request_complete(opaque, ret);
}

/* Everything passes straight to the file, shifted by the window's
 * offset; only a probed image's first sector needs the synchronous
 * check above. */
static int raw_submit(BlockNode *n, BlockRequest *req)
{
    RawState *s = n->opaque;
    BlockNode *f = block_file(n);
    uint64_t off = req->offset + s->offset;
    switch (req->op) {
    case BLOCK_OP_READ:
        block_aio_preadv(f, off, req->qiov, req->flags, raw_child_done, req);
        return 0;
    case BLOCK_OP_WRITE:
        if (s->probed && req->offset < 512) {
            return -EAGAIN;
        }
        block_aio_pwritev(f, off, req->qiov, req->flags, raw_child_done,
                          req);
        return 0;
    case BLOCK_OP_FLUSH:
        block_aio_flush(f, raw_child_done, req);
        return 0;
    case BLOCK_OP_DISCARD:
        block_aio_discard(f, off, req->bytes, raw_child_done, req);
        return 0;
    case BLOCK_OP_WRITE_ZEROES:
        block_aio_write_zeroes(f, off, req->bytes, req->flags,
                               raw_child_done, req);
        return 0;
    }
    return -EAGAIN;
}

static bool raw_can_fua(BlockNode *n)
{
    return block_node_can_fua(block_file(n));
}

static bool raw_can_zero(BlockNode *n)
{
    return block_node_can_zero(block_file(n));
}

static bool raw_can_multi_conn(BlockNode *n)
{
    return block_node_can_multi_conn(block_file(n));
}

static int raw_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    RawState *s = n->opaque;
    return block_discard(block_file(n), off + s->offset, len);
}

static int raw_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                            int flags)
{
    RawState *s = n->opaque;
    return block_write_zeroes(block_file(n), off + s->offset, len, flags);
}

static int raw_block_status(BlockNode *n, uint64_t off, uint64_t len,
                            uint64_t *pnum, uint64_t *map, BlockNode **file)
{
    RawState *s = n->opaque;
    int ret = block_status(block_file(n), off + s->offset, len, pnum, map, file);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        /* The window extends past the file (size= given): unwritten. */
        *pnum = len;
        *map = off + s->offset;
        *file = block_file(n);
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID |
               BLOCK_STATUS_ALLOCATED;
    }
    return ret | BLOCK_STATUS_ALLOCATED;
}

static bool raw_has_zero_init(BlockNode *n)
{
    return block_has_zero_init(block_file(n));
}

static int raw_truncate(BlockNode *n, uint64_t size, bool exact,
                        PreallocMode pm, Error *err)
{
    RawState *s = n->opaque;
    if (s->offset || s->has_size) {
        return error_setf(err, ENOTSUP, "Cannot resize a raw image opened "
                          "with an offset or size");
    }
    return block_truncate(block_file(n), size, exact, pm, err);
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
    .api_version = BLOCK_DRIVER_API_VERSION,
    .kind = BLOCK_DRIVER_FORMAT,
    .probe = raw_probe,
    .open = raw_open,
    .preadv = raw_preadv,
    .pwritev = raw_pwritev,
    .submit = raw_submit,
    .can_fua = raw_can_fua,
    .can_zero = raw_can_zero,
    .can_multi_conn = raw_can_multi_conn,
    .discard = raw_discard,
    .write_zeroes = raw_write_zeroes,
    .block_status = raw_block_status,
    .copy_range_from = raw_copy_range_from,
    .get_length = raw_get_length,
    .has_zero_init = raw_has_zero_init,
    .truncate = raw_truncate,
    .create = raw_create,
    .create_opts = block_protocol_create_opts,
    .measure = raw_measure,
};
