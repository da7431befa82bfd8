/*
 * iov.c - I/O vector views (see block/iov.h).  Nothing here allocates
 * except a slice longer than BLOCKIOV_INLINE elements.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/iov.h"

void blockiov_init(BlockIOV *v, struct iovec *iov, int niov)
{
    v->iov = iov;
    v->niov = niov;
    v->size = 0;
    for (int i = 0; i < niov; i++) {
        v->size += iov[i].iov_len;
    }
}

/* The element holding byte off, and off's position inside it. */
static int find_elem(const BlockIOV *v, size_t off, size_t *inner)
{
    int i = 0;
    while (i < v->niov && off >= v->iov[i].iov_len) {
        off -= v->iov[i].iov_len;
        i++;
    }
    *inner = off;
    return i;
}

int blockiov_slice(BlockIOVSlice *s, const BlockIOV *src, size_t off,
                   size_t len)
{
    size_t inner;
    int first = find_elem(src, off, &inner);
    /* Count the elements the slice spans before filling any. */
    int count = 0;
    size_t left = len;
    for (int i = first; i < src->niov && left > 0; i++) {
        size_t avail = src->iov[i].iov_len - (i == first ? inner : 0);
        left -= avail < left ? avail : left;
        count++;
    }
    s->heap = NULL;
    struct iovec *out = s->inline_iov;
    if (count > BLOCKIOV_INLINE) {
        s->heap = malloc(sizeof(struct iovec) * (size_t)count);
        if (!s->heap) {
            return -ENOMEM;
        }
        out = s->heap;
    }
    left = len;
    int k = 0;
    for (int i = first; k < count; i++) {
        size_t skip = i == first ? inner : 0;
        size_t avail = src->iov[i].iov_len - skip;
        size_t take = avail < left ? avail : left;
        out[k].iov_base = (uint8_t *)src->iov[i].iov_base + skip;
        out[k].iov_len = take;
        left -= take;
        k++;
    }
    s->v.iov = out;
    s->v.niov = count;
    s->v.size = len - left;
    return 0;
}

void blockiov_slice_free(BlockIOVSlice *s)
{
    free(s->heap);
    s->heap = NULL;
}

void blockiov_to_buf(const BlockIOV *v, size_t off, void *buf, size_t len)
{
    size_t inner;
    uint8_t *p = buf;
    for (int i = find_elem(v, off, &inner); i < v->niov && len > 0; i++) {
        size_t avail = v->iov[i].iov_len - inner;
        size_t take = avail < len ? avail : len;
        memcpy(p, (uint8_t *)v->iov[i].iov_base + inner, take);
        p += take;
        len -= take;
        inner = 0;
    }
}

void blockiov_from_buf(const BlockIOV *v, size_t off, const void *buf,
                       size_t len)
{
    size_t inner;
    const uint8_t *p = buf;
    for (int i = find_elem(v, off, &inner); i < v->niov && len > 0; i++) {
        size_t avail = v->iov[i].iov_len - inner;
        size_t take = avail < len ? avail : len;
        memcpy((uint8_t *)v->iov[i].iov_base + inner, p, take);
        p += take;
        len -= take;
        inner = 0;
    }
}

void blockiov_memset(const BlockIOV *v, size_t off, int c, size_t len)
{
    size_t inner;
    for (int i = find_elem(v, off, &inner); i < v->niov && len > 0; i++) {
        size_t avail = v->iov[i].iov_len - inner;
        size_t take = avail < len ? avail : len;
        memset((uint8_t *)v->iov[i].iov_base + inner, c, take);
        len -= take;
        inner = 0;
    }
}

static bool buf_is_zero(const uint8_t *p, size_t len)
{
    /* Compare the buffer with itself shifted by one byte after checking
     * the first: memcmp is far faster than a byte loop. */
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

bool blockiov_is_zero(const BlockIOV *v)
{
    for (int i = 0; i < v->niov; i++) {
        if (!buf_is_zero(v->iov[i].iov_base, v->iov[i].iov_len)) {
            return false;
        }
    }
    return true;
}

bool blockiov_is_aligned(const BlockIOV *v, size_t align)
{
    if (align <= 1) {
        return true;
    }
    for (int i = 0; i < v->niov; i++) {
        if ((uintptr_t)v->iov[i].iov_base % align ||
            v->iov[i].iov_len % align) {
            return false;
        }
    }
    return true;
}
