/*
 * io.c - the request API.  Everything a caller asks of a node passes here:
 * range checks, read-only enforcement, and alignment.  Drivers only ever
 * see requests aligned to their node's request_alignment, with aligned
 * buffers; unaligned requests are bounced, and a bounced write's
 * read-modify-write is serialised per node so that two of them cannot
 * lose each other's bytes in a shared edge block.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/bitmap.h"
#include "block/block.h"

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
                       const void *buf)
{
    uint64_t a = n->request_alignment;
    if (a <= 1) {
        return true;
    }
    return (off % a) == 0 && (len % a) == 0 &&
           (buf == NULL || ((uintptr_t)buf % a) == 0);
}

/* Format nodes have a fixed virtual size; protocol nodes grow when a
 * format driver writes past their end (new clusters). */
static int check_range(BlockNode *n, uint64_t off, uint64_t len, bool write)
{
    if (off + len < off) {
        return -EINVAL;
    }
    if (write && n->read_only) {
        return -EACCES;
    }
    /* A protocol answers past its end itself (zeroes or a short read);
     * asking its length here cost an fstat per request. */
    if (n->drv->is_protocol) {
        return 0;
    }
    int64_t size = block_get_length(n);
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

static int drv_pread_aligned(BlockNode *n, uint64_t off, size_t len,
                             void *buf)
{
    if (len == 0) {
        return 0;
    }
    return n->drv->pread(n, off, len, buf);
}

int block_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    int ret = check_range(n, off, len, false);
    if (ret < 0) {
        return ret;
    }
    if (len == 0) {
        return 0;
    }
    if (is_aligned(n, off, len, buf)) {
        return drv_pread_aligned(n, off, len, buf);
    }
    uint64_t a = n->request_alignment;
    uint64_t start = align_down(off, a);
    uint64_t end = align_up(off + len, a);
    uint8_t *bounce = bounce_alloc(n, end - start);
    if (!bounce) {
        return -ENOMEM;
    }
    ret = drv_pread_aligned(n, start, end - start, bounce);
    if (ret >= 0) {
        memcpy(buf, bounce + (off - start), len);
        ret = 0;
    }
    free(bounce);
    return ret;
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

static int drv_pwrite(BlockNode *n, uint64_t off, size_t len,
                      const void *buf, int flags)
{
    if (!n->drv->pwrite) {
        return -ENOTSUP;
    }
    if (n->flags & BLOCK_O_NO_FLUSH) {
        flags &= ~BLOCK_REQ_FUA;
    }
    return n->drv->pwrite(n, off, len, buf, flags);
}

static int pwrite_unmarked(BlockNode *n, uint64_t off, size_t len,
                           const void *buf, int flags)
{
    int ret = check_range(n, off, len, true);
    if (ret < 0) {
        return ret;
    }
    if (len == 0) {
        return 0;
    }
    if ((flags & BLOCK_REQ_COMPRESSED) && !n->drv->supports_compressed) {
        return -ENOTSUP;
    }
    if (is_aligned(n, off, len, buf)) {
        return drv_pwrite(n, off, len, buf, flags);
    }
    uint64_t a = n->request_alignment;
    uint64_t start = align_down(off, a);
    uint64_t end = align_up(off + len, a);
    uint8_t *bounce = bounce_alloc(n, end - start);
    if (!bounce) {
        return -ENOMEM;
    }
    pthread_mutex_lock(&n->rmw_lock);
    /* Head and tail blocks carry bytes we must keep (a protocol node
     * reads zeroes past its end). */
    bool head = start < off, tail = end > off + len;
    ret = 0;
    if (head) {
        ret = drv_pread_aligned(n, start, a, bounce);
    }
    if (ret >= 0 && tail && !(head && end - a == start)) {
        ret = drv_pread_aligned(n, end - a, a, bounce + (end - a - start));
    }
    if (ret >= 0) {
        memcpy(bounce + (off - start), buf, len);
        ret = drv_pwrite(n, start, end - start, bounce, flags);
    }
    pthread_mutex_unlock(&n->rmw_lock);
    free(bounce);
    return ret;
}

int block_flush(BlockNode *n)
{
    if (!n || n->read_only) {
        return 0;
    }
    if (n->flags & BLOCK_O_NO_FLUSH) {
        return 0;
    }
    int ret = 0;
    if (n->drv->flush) {
        /* A driver that must order its children's flushes against its
         * own writes (qcow2 metadata) flushes them itself and says so
         * with a positive return: flushing them again would only cost
         * another fdatasync. */
        ret = n->drv->flush(n);
        if (ret != 0) {
            return ret < 0 ? ret : 0;
        }
    }
    if (n->data_file) {
        ret = block_flush(n->data_file);
        if (ret < 0) {
            return ret;
        }
    }
    if (n->file) {
        ret = block_flush(n->file);
    }
    return ret;
}

static int discard_unmarked(BlockNode *n, uint64_t off, uint64_t len)
{
    int ret = check_range(n, off, len, true);
    if (ret < 0) {
        return ret;
    }
    if (len == 0 || !n->drv->discard) {
        return 0;   /* discard is advisory */
    }
    /* Drivers see only the aligned middle; the unaligned edges are kept. */
    uint64_t a = n->request_alignment;
    uint64_t start = align_up(off, a), end = align_down(off + len, a);
    if (end <= start) {
        return 0;
    }
    ret = n->drv->discard(n, start, end - start);
    return ret == -ENOTSUP ? 0 : ret;
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
        ret = pwrite_unmarked(n, off, now, zero, flags & BLOCK_REQ_FUA);
        off += now;
        len -= now;
    }
    free(zero);
    return ret < 0 ? ret : 0;
}

static int write_zeroes_unmarked(BlockNode *n, uint64_t off, uint64_t len,
                                 int flags)
{
    int ret = check_range(n, off, len, true);
    if (ret < 0 || len == 0) {
        return ret;
    }
    uint64_t a = n->request_alignment;
    uint64_t start = align_up(off, a), end = align_down(off + len, a);
    if (end <= start || !n->drv->write_zeroes) {
        if (flags & BLOCK_REQ_NO_FALLBACK) {
            return -ENOTSUP;
        }
        return write_zero_buffers(n, off, len, flags);
    }
    if (start > off) {
        ret = write_zero_buffers(n, off, start - off, flags);
        if (ret < 0) {
            return ret;
        }
    }
    ret = n->drv->write_zeroes(n, start, end - start, flags);
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

int64_t block_get_length(BlockNode *n)
{
    if (!n->drv->get_length) {
        return n->file ? block_get_length(n->file) : -ENOTSUP;
    }
    return n->drv->get_length(n);
}

int64_t block_get_allocated_size(BlockNode *n)
{
    int64_t total;
    if (n->drv->get_allocated_size) {
        total = n->drv->get_allocated_size(n);
    } else if (n->file) {
        total = block_get_allocated_size(n->file);
    } else {
        return -ENOTSUP;
    }
    if (total >= 0 && n->data_file) {
        int64_t d = block_get_allocated_size(n->data_file);
        if (d > 0) {
            total += d;
        }
    }
    return total;
}

int block_truncate(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                   Error *err)
{
    if (n->read_only) {
        return error_setf(err, EACCES, "Image '%s' is read-only",
                          n->filename);
    }
    if (!n->drv->truncate) {
        return error_setf(err, ENOTSUP, "Image format '%s' does not support "
                          "resizing", n->drv->name);
    }
    int64_t old = block_get_length(n);
    int ret = n->drv->truncate(n, size, exact, pm, err);
    if (ret < 0 || old < 0 || !n->backing || size <= (uint64_t)old) {
        return ret;
    }
    /* The grown area must read as zeroes, not as whatever a longer
     * backing file holds there (QEMU zeroes it the same way). */
    int64_t blen = block_get_length(n->backing);
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

/* Dirty bitmaps see every change that reached this node, whichever path
 * (aligned, bounced, zero fallback) carried it. */
int block_pwrite(BlockNode *n, uint64_t off, size_t len, const void *buf,
                 int flags)
{
    int ret = pwrite_unmarked(n, off, len, buf, flags);
    if (ret >= 0 && n->bitmaps) {
        block_bitmaps_mark(n, off, len);
    }
    return ret;
}

int block_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    int ret = discard_unmarked(n, off, len);
    if (ret >= 0 && n->bitmaps) {
        block_bitmaps_mark(n, off, len);
    }
    return ret;
}

int block_write_zeroes(BlockNode *n, uint64_t off, uint64_t len, int flags)
{
    int ret = write_zeroes_unmarked(n, off, len, flags);
    if (ret >= 0 && n->bitmaps) {
        block_bitmaps_mark(n, off, len);
    }
    return ret;
}
