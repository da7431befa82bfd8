/*
 * io.c - the synchronous request path.  Everything a caller asks of a
 * node passes here (or, for asynchronous requests, through aio.c into
 * the same block_io_* functions): range checks, read-only enforcement,
 * alignment, the driver's thread model, FUA for drivers without it, and
 * dirty-bitmap marking.
 *
 * Drivers only ever see requests aligned to their node's
 * request_alignment, with aligned buffers; unaligned requests are
 * bounced, and a bounced write's read-modify-write is serialised per node
 * so that two of them cannot lose each other's bytes in a shared edge
 * block.  Vectors reach drivers with preadv/pwritev untouched; drivers
 * with only pread/pwrite get a gathered or scattered linear buffer.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/request.h"

#define ZERO_CHUNK (1u << 20)

static uint64_t align_down(uint64_t v, uint64_t a)
{
    return v & ~(a - 1);
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static bool is_aligned(BlockNode *n, uint64_t off, uint64_t len,
                       const BlockIOV *qiov)
{
    uint64_t a = n->request_alignment;
    if (a <= 1) {
        return true;
    }
    return (off % a) == 0 && (len % a) == 0 &&
           (!qiov || blockiov_is_aligned(qiov, a));
}

static int64_t length_within(BlockNode *n);

/* Format nodes have a fixed virtual size; protocol nodes grow when a
 * format driver writes past their end (new clusters). */
int block_check_request(BlockNode *n, uint64_t off, uint64_t len, bool write)
{
    if (off + len < off) {
        return -EINVAL;
    }
    if (write && (n->read_only || (n->flags & BLOCK_O_BITMAPS_ONLY))) {
        return -EACCES;
    }
    /* A protocol answers past its end itself (zeroes or a short read);
     * asking its length here cost an fstat per request.  A filter leaves
     * the question to the node below it. */
    if (n->drv->kind != BLOCK_DRIVER_FORMAT) {
        return 0;
    }
    int64_t size = length_within(n);
    if (size < 0) {
        return (int)size;
    }
    if (off + len > (uint64_t)size) {
        return -EINVAL;
    }
    return 0;
}

static void *bounce_alloc(BlockNode *n, size_t len)
{
    void *p = NULL;
    size_t a = n->request_alignment < 4096 ? 4096 : n->request_alignment;
    if (posix_memalign(&p, a, len ? len : a) != 0) {
        return NULL;
    }
    return p;
}

/* ------------------------------------------------------------------ */
/* Driver calls                                                        */

static void serialize_begin(BlockNode *n)
{
    if (n->drv->thread_model == BLOCK_THREAD_SERIALIZE) {
        pthread_mutex_lock(&n->serialize_lock);
    }
}

static void serialize_end(BlockNode *n)
{
    if (n->drv->thread_model == BLOCK_THREAD_SERIALIZE) {
        pthread_mutex_unlock(&n->serialize_lock);
    }
}

static int drv_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    const BlockDriver *d = n->drv;
    int ret;
    serialize_begin(n);
    if (d->preadv) {
        ret = d->preadv(n, off, qiov, flags);
    } else if (!d->pread) {
        ret = -ENOTSUP;
    } else if (blockiov_flat(qiov)) {
        ret = d->pread(n, off, qiov->size, blockiov_flat(qiov));
    } else {
        uint8_t *b = bounce_alloc(n, qiov->size);
        ret = b ? d->pread(n, off, qiov->size, b) : -ENOMEM;
        if (ret >= 0) {
            blockiov_from_buf(qiov, 0, b, qiov->size);
        }
        free(b);
    }
    serialize_end(n);
    return ret < 0 ? ret : 0;
}

static int drv_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    const BlockDriver *d = n->drv;
    int ret;
    if (n->flags & BLOCK_O_NO_FLUSH) {
        flags &= ~BLOCK_REQ_FUA;
    }
    bool emulate_fua = (flags & BLOCK_REQ_FUA) && !n->caps.can_fua;
    if (emulate_fua) {
        flags &= ~BLOCK_REQ_FUA;
    }
    serialize_begin(n);
    if (d->pwritev) {
        ret = d->pwritev(n, off, qiov, flags);
    } else if (!d->pwrite) {
        ret = -ENOTSUP;
    } else if (blockiov_flat(qiov)) {
        ret = d->pwrite(n, off, qiov->size, blockiov_flat(qiov), flags);
    } else {
        uint8_t *b = bounce_alloc(n, qiov->size);
        if (b) {
            blockiov_to_buf(qiov, 0, b, qiov->size);
            ret = d->pwrite(n, off, qiov->size, b, flags);
        } else {
            ret = -ENOMEM;
        }
        free(b);
    }
    serialize_end(n);
    if (ret >= 0 && emulate_fua) {
        ret = block_io_flush(n);
    }
    return ret < 0 ? ret : 0;
}

/* ------------------------------------------------------------------ */
/* Reads and writes                                                    */

/* An unaligned request widened to whole alignment units [start, end),
 * with an aligned buffer of that size (NULL: out of memory). */
typedef struct Widened {
    uint64_t start, end;
    uint8_t *bounce;
} Widened;

static Widened widen(BlockNode *n, uint64_t off, size_t len)
{
    uint64_t a = n->request_alignment;
    Widened w = { align_down(off, a), align_up(off + len, a), NULL };
    w.bounce = bounce_alloc(n, w.end - w.start);
    return w;
}

int block_io_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    size_t len = qiov->size;
    if (len == 0) {
        return 0;
    }
    if (is_aligned(n, off, len, qiov)) {
        return drv_preadv(n, off, qiov, flags);
    }
    Widened w = widen(n, off, len);
    if (!w.bounce) {
        return -ENOMEM;
    }
    struct iovec iov;
    BlockIOV bv;
    blockiov_init_buf(&bv, &iov, w.bounce, w.end - w.start);
    int ret = drv_preadv(n, w.start, &bv, flags);
    if (ret >= 0) {
        blockiov_from_buf(qiov, 0, w.bounce + (off - w.start), len);
    }
    free(w.bounce);
    return ret;
}

static int pwritev_unmarked(BlockNode *n, uint64_t off, BlockIOV *qiov,
                            int flags)
{
    size_t len = qiov->size;
    if (len == 0) {
        return 0;
    }
    if ((flags & BLOCK_REQ_COMPRESSED) && !n->caps.can_compress) {
        return -ENOTSUP;
    }
    if (is_aligned(n, off, len, qiov)) {
        return drv_pwritev(n, off, qiov, flags);
    }
    uint64_t a = n->request_alignment;
    Widened w = widen(n, off, len);
    if (!w.bounce) {
        return -ENOMEM;
    }
    uint64_t start = w.start, end = w.end;
    uint8_t *bounce = w.bounce;
    struct iovec iov;
    BlockIOV bv;
    int ret = 0;
    pthread_mutex_lock(&n->rmw_lock);
    /* Head and tail blocks carry bytes we must keep (a protocol node
     * reads zeroes past its end). */
    bool head = start < off, tail = end > off + len;
    if (head) {
        blockiov_init_buf(&bv, &iov, bounce, a);
        ret = drv_preadv(n, start, &bv, 0);
    }
    if (ret >= 0 && tail && !(head && end - a == start)) {
        blockiov_init_buf(&bv, &iov, bounce + (end - a - start), a);
        ret = drv_preadv(n, end - a, &bv, 0);
    }
    if (ret >= 0) {
        blockiov_to_buf(qiov, 0, bounce + (off - start), len);
        blockiov_init_buf(&bv, &iov, bounce, end - start);
        ret = drv_pwritev(n, start, &bv, flags);
    }
    pthread_mutex_unlock(&n->rmw_lock);
    free(bounce);
    return ret;
}

/* Dirty bitmaps see every change that reached this node, whichever path
 * (aligned, bounced, zero fallback, synchronous or not) carried it. */
int block_io_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    int ret = n->write_hooks ? block_run_write_hooks(n, off, qiov->size) : 0;
    if (ret < 0) {
        return ret;
    }
    ret = pwritev_unmarked(n, off, qiov, flags);
    if (ret >= 0 && n->bitmaps) {
        block_bitmaps_mark(n, off, qiov->size);
    }
    return ret;
}

/* The synchronous entry for reads and writes: checked, counted in. */
static int sync_rw(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags,
                   bool write)
{
    block_node_enter(n, NULL);
    int ret = block_check_request(n, off, qiov->size, write);
    if (ret >= 0 && qiov->size > 0) {
        ret = write ? block_io_pwritev(n, off, qiov, flags)
                    : block_io_preadv(n, off, qiov, flags);
    }
    block_node_leave(n);
    return ret;
}

int block_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    return sync_rw(n, off, qiov, flags, false);
}

int block_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    return sync_rw(n, off, qiov, flags, true);
}

int block_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    struct iovec iov;
    BlockIOV v;
    blockiov_init_buf(&v, &iov, buf, len);
    return block_preadv(n, off, &v, 0);
}

int block_pwrite(BlockNode *n, uint64_t off, size_t len, const void *buf,
                 int flags)
{
    struct iovec iov;
    BlockIOV v;
    blockiov_init_buf(&v, &iov, (void *)buf, len);
    return block_pwritev(n, off, &v, flags);
}

int block_pread_zero_tail(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    int64_t size = block_get_length(n);
    if (size < 0) {
        return (int)size;
    }
    size_t have = 0;
    if (off < (uint64_t)size) {
        have = (uint64_t)size - off < len ? (size_t)((uint64_t)size - off)
                                          : len;
        int ret = block_pread(n, off, have, buf);
        if (ret < 0) {
            return ret;
        }
    }
    memset((uint8_t *)buf + have, 0, len - have);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Flush, discard, zeroes                                              */

int block_io_flush(BlockNode *n)
{
    int ret = 0;
    if (n->drv->flush) {
        /* A driver that flushed its children itself (ordering them
         * against its own writes) says so with a positive return. */
        serialize_begin(n);
        ret = n->drv->flush(n);
        serialize_end(n);
        if (ret != 0) {
            return ret < 0 ? ret : 0;
        }
    }
    static const BlockChildRole below[] = {
        BLOCK_CHILD_DATA_FILE, BLOCK_CHILD_FILE, BLOCK_CHILD_FILTERED,
    };
    for (size_t i = 0; i < sizeof(below) / sizeof(below[0]); i++) {
        BlockNode *c = block_child(n, below[i]);
        if (c) {
            ret = block_flush(c);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

int block_flush(BlockNode *n)
{
    if (!n) {
        return 0;
    }
    block_node_enter(n, NULL);
    int ret = block_flush_within(n);
    block_node_leave(n);
    return ret;
}

int block_flush_within(BlockNode *n)
{
    if (n->read_only || (n->flags & BLOCK_O_NO_FLUSH)) {
        return 0;
    }
    return block_io_flush(n);
}

int block_io_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    if (len == 0 || !n->drv->discard) {
        return 0;   /* discard is advisory */
    }
    if (n->write_hooks) {
        int h = block_run_write_hooks(n, off, len);
        if (h < 0) {
            return h;
        }
    }
    /* Drivers see only the aligned middle; the unaligned edges are kept. */
    uint64_t a = n->request_alignment;
    uint64_t start = align_up(off, a), end = align_down(off + len, a);
    int ret = 0;
    if (end > start) {
        serialize_begin(n);
        ret = n->drv->discard(n, start, end - start);
        serialize_end(n);
        if (ret == -ENOTSUP) {
            ret = 0;
        }
    }
    if (ret >= 0 && n->bitmaps) {
        block_bitmaps_mark(n, off, len);
    }
    return ret;
}

int block_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    block_node_enter(n, NULL);
    int ret = block_check_request(n, off, len, true);
    if (ret >= 0) {
        ret = block_io_discard(n, off, len);
    }
    block_node_leave(n);
    return ret;
}

static int write_zero_buffers(BlockNode *n, uint64_t off, uint64_t len,
                              int flags)
{
    size_t chunk = len < ZERO_CHUNK ? (size_t)len : ZERO_CHUNK;
    void *zero = bounce_alloc(n, chunk);
    if (!zero) {
        return -ENOMEM;
    }
    memset(zero, 0, chunk);
    int ret = 0;
    while (len > 0 && ret >= 0) {
        size_t now = len < chunk ? (size_t)len : chunk;
        struct iovec iov;
        BlockIOV v;
        blockiov_init_buf(&v, &iov, zero, now);
        ret = pwritev_unmarked(n, off, &v, flags & BLOCK_REQ_FUA);
        off += now;
        len -= now;
    }
    free(zero);
    return ret < 0 ? ret : 0;
}

static int drv_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                            int flags)
{
    serialize_begin(n);
    int ret = n->drv->write_zeroes(n, off, len, flags);
    serialize_end(n);
    return ret;
}

static int write_zeroes_unmarked(BlockNode *n, uint64_t off, uint64_t len,
                                 int flags)
{
    if (len == 0) {
        return 0;
    }
    uint64_t a = n->request_alignment;
    uint64_t start = align_up(off, a), end = align_down(off + len, a);
    if (end <= start || !n->drv->write_zeroes) {
        if (flags & BLOCK_REQ_NO_FALLBACK) {
            return -ENOTSUP;
        }
        return write_zero_buffers(n, off, len, flags);
    }
    int ret;
    if (start > off) {
        ret = write_zero_buffers(n, off, start - off, flags);
        if (ret < 0) {
            return ret;
        }
    }
    ret = drv_write_zeroes(n, start, end - start, flags);
    if (ret == -ENOTSUP && !(flags & BLOCK_REQ_NO_FALLBACK)) {
        ret = write_zero_buffers(n, start, end - start, flags);
    }
    if (ret < 0) {
        return ret;
    }
    if (off + len > end) {
        ret = write_zero_buffers(n, end, off + len - end, flags);
    }
    return ret < 0 ? ret : 0;
}

int block_io_write_zeroes(BlockNode *n, uint64_t off, uint64_t len, int flags)
{
    int ret = n->write_hooks ? block_run_write_hooks(n, off, len) : 0;
    if (ret < 0) {
        return ret;
    }
    ret = write_zeroes_unmarked(n, off, len, flags);
    if (ret >= 0 && n->bitmaps) {
        block_bitmaps_mark(n, off, len);
    }
    return ret;
}

int block_write_zeroes(BlockNode *n, uint64_t off, uint64_t len, int flags)
{
    block_node_enter(n, NULL);
    int ret = block_check_request(n, off, len, true);
    if (ret >= 0) {
        ret = block_io_write_zeroes(n, off, len, flags);
    }
    block_node_leave(n);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Length and size                                                     */

/* Asking a node's length is a request like the others: a reopen may be
 * rebuilding the state it reads. */
static int64_t length_within(BlockNode *n)
{
    if (!n->drv->get_length) {
        BlockNode *c = block_file(n) ? block_file(n) : block_filtered(n);
        return c ? block_get_length(c) : -ENOTSUP;
    }
    return n->drv->get_length(n);
}

int64_t block_get_length(BlockNode *n)
{
    block_node_enter(n, NULL);
    int64_t len = length_within(n);
    block_node_leave(n);
    return len;
}

bool block_has_zero_init(BlockNode *n)
{
    block_node_enter(n, NULL);
    bool z = n->drv->has_zero_init && n->drv->has_zero_init(n);
    block_node_leave(n);
    return z;
}

int64_t block_get_allocated_size(BlockNode *n)
{
    int64_t total;
    block_node_enter(n, NULL);
    BlockNode *c = block_file(n) ? block_file(n) : block_filtered(n);
    if (n->drv->get_allocated_size) {
        total = n->drv->get_allocated_size(n);
    } else if (c) {
        total = block_get_allocated_size(c);
    } else {
        total = -ENOTSUP;
    }
    BlockNode *d = block_data_file(n);
    if (total >= 0 && d) {
        int64_t ds = block_get_allocated_size(d);
        if (ds > 0) {
            total += ds;
        }
    }
    block_node_leave(n);
    return total;
}

int block_truncate(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                   Error *err)
{
    block_node_enter(n, NULL);
    if (n->read_only || (n->flags & BLOCK_O_BITMAPS_ONLY)) {
        block_node_leave(n);
        return error_setf(err, EACCES, "Image '%s' is read-only",
                          n->filename);
    }
    if (!n->drv->truncate) {
        block_node_leave(n);
        return error_setf(err, ENOTSUP, "Image format '%s' does not support "
                          "resizing", n->drv->name);
    }
    if (block_has_write_hooks(n)) {
        /* A watcher's point-in-time view (a backup's) has the old size,
         * and a shrink would drop clusters it has not copied yet. */
        block_node_leave(n);
        return error_setf(err, EBUSY, "Cannot resize '%s': a point-in-time "
                          "view of it is in use (a backup is running)",
                          n->node_name && *n->node_name ? n->node_name
                                                        : n->filename);
    }
    int64_t old = length_within(n);
    serialize_begin(n);
    int ret = n->drv->truncate(n, size, exact, pm, err);
    serialize_end(n);
    block_node_leave(n);
    BlockNode *b = block_backing(n);
    if (ret < 0 || old < 0 || !b || size <= (uint64_t)old) {
        return ret;
    }
    /* The grown area must read as zeroes, not as whatever a longer
     * backing file holds there (QEMU zeroes it the same way). */
    int64_t blen = block_get_length(b);
    if (blen > old) {
        uint64_t end = (uint64_t)blen < size ? (uint64_t)blen : size;
        ret = block_write_zeroes(n, (uint64_t)old, end - (uint64_t)old, 0);
        if (ret < 0) {
            return error_setf(err, -ret, "Could not zero the new area of "
                              "'%s': %s", n->filename, strerror(-ret));
        }
    }
    return 0;
}
