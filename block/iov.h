/*
 * iov.h - I/O vectors as requests carry them through the block layer.
 *
 * A BlockIOV is a view: it points at the caller's iovec array and never
 * owns the buffers.  A request keeps its vector from the caller (an NBD
 * connection's buffer, a virtqueue's descriptor chain) down to the file
 * without copying; drivers cut it into pieces with blockiov_slice, whose
 * pieces point into the same buffers.
 */
#ifndef IMGTOOL_BLOCK_IOV_H
#define IMGTOOL_BLOCK_IOV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct BlockIOV {
    struct iovec *iov;
    int niov;
    size_t size;          /* sum of the iov_len */
} BlockIOV;

/* Slices of up to this many elements need no allocation. */
#define BLOCKIOV_INLINE 8

/* A slice of another vector: its own iovec array (inline when it fits). */
typedef struct BlockIOVSlice {
    BlockIOV v;
    struct iovec inline_iov[BLOCKIOV_INLINE];
    struct iovec *heap;
} BlockIOVSlice;

/* A one-element vector over buf (iov is the caller's storage). */
static inline void blockiov_init_buf(BlockIOV *v, struct iovec *iov,
                                     void *buf, size_t len)
{
    iov->iov_base = buf;
    iov->iov_len = len;
    v->iov = iov;
    v->niov = 1;
    v->size = len;
}

/* Over an existing array; sums the lengths. */
void blockiov_init(BlockIOV *v, struct iovec *iov, int niov);

/* [off, off+len) of src as its own vector.  Returns 0 or -ENOMEM (only
 * for slices longer than BLOCKIOV_INLINE); free with blockiov_slice_free. */
int blockiov_slice(BlockIOVSlice *s, const BlockIOV *src, size_t off,
                   size_t len);
void blockiov_slice_free(BlockIOVSlice *s);

/* Copies between a vector's bytes [off, off+len) and a flat buffer. */
void blockiov_to_buf(const BlockIOV *v, size_t off, void *buf, size_t len);
void blockiov_from_buf(const BlockIOV *v, size_t off, const void *buf,
                       size_t len);
void blockiov_memset(const BlockIOV *v, size_t off, int c, size_t len);
/* Every byte of the vector is zero. */
bool blockiov_is_zero(const BlockIOV *v);
/* Every base address and length is a multiple of align. */
bool blockiov_is_aligned(const BlockIOV *v, size_t align);
/* The single buffer when the vector has one element, else NULL. */
static inline void *blockiov_flat(const BlockIOV *v)
{
    return v->niov == 1 ? v->iov[0].iov_base : NULL;
}

#endif
