/*
 * volatile-cache.c - a disk's volatile write cache, modelled in memory
 * over a child node, for the faulty filter's power loss: writes are held
 * here, reach the child when written back (at a flush, or when too much
 * is held), and a crash drops them, keeps them, or keeps a random subset
 * of their 512-byte sectors (torn, reordered writes).
 *
 * Invariants:
 *  - ext[] is sorted by offset and its extents do not overlap; each holds
 *    the newest bytes (or zeroes, data NULL) for its range.
 *  - dirty_bytes is the sum of the lengths of the extents holding data.
 *  - Reads see the child, then zeroes past a held shrink (shrink_to),
 *    then the extents.  length is the length callers see; the child's
 *    own length catches up at write-back.
 *  - dirty_bytes stays at most max_dirty after every store: past that
 *    everything is written back without a flush, which a disk may do.
 *  - No locking here: the owner serialises every call.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/filter/volatile-cache.h"

#define SECTOR 512

void vcache_init(VolatileCache *c, BlockNode *child, uint64_t length,
                 uint64_t max_dirty)
{
    memset(c, 0, sizeof(*c));
    c->child = child;
    c->length = length;
    c->max_dirty = max_dirty;
}

static void clear(VolatileCache *c)
{
    for (size_t i = 0; i < c->n_ext; i++) {
        free(c->ext[i].data);
    }
    c->n_ext = 0;
    c->dirty_bytes = 0;
    c->shrunk = false;
}

void vcache_destroy(VolatileCache *c)
{
    clear(c);
    free(c->ext);
    c->ext = NULL;
    c->cap_ext = 0;
}

bool vcache_dirty(const VolatileCache *c)
{
    return c->n_ext || c->shrunk;
}

uint64_t vcache_length(const VolatileCache *c)
{
    return c->length;
}

/* Index of the first extent that ends after off. */
static size_t find(const VolatileCache *c, uint64_t off)
{
    size_t lo = 0, hi = c->n_ext;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->ext[mid].off + c->ext[mid].len <= off) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static int insert_at(VolatileCache *c, size_t i, VCacheExtent e)
{
    if (c->n_ext == c->cap_ext) {
        size_t cap = c->cap_ext ? c->cap_ext * 2 : 64;
        VCacheExtent *ne = realloc(c->ext, cap * sizeof(*ne));
        if (!ne) {
            return -ENOMEM;
        }
        c->ext = ne;
        c->cap_ext = cap;
    }
    memmove(&c->ext[i + 1], &c->ext[i],
            (c->n_ext - i) * sizeof(VCacheExtent));
    c->ext[i] = e;
    c->n_ext++;
    if (e.data) {
        c->dirty_bytes += e.len;
    }
    return 0;
}

static void remove_at(VolatileCache *c, size_t i)
{
    if (c->ext[i].data) {
        c->dirty_bytes -= c->ext[i].len;
    }
    free(c->ext[i].data);
    memmove(&c->ext[i], &c->ext[i + 1],
            (c->n_ext - i - 1) * sizeof(VCacheExtent));
    c->n_ext--;
}

/* Removes [off, end) from the cache, splitting extents at the edges.
 * Sets *pos to the index where an extent starting at off belongs. */
static int punch(VolatileCache *c, uint64_t off, uint64_t end, size_t *pos)
{
    size_t i = find(c, off);
    while (i < c->n_ext && c->ext[i].off < end) {
        VCacheExtent *e = &c->ext[i];
        uint64_t eend = e->off + e->len;
        if (e->off < off) {
            /* Keep the head; a tail past end becomes its own extent. */
            if (eend > end) {
                VCacheExtent tail = { end, eend - end, NULL };
                if (e->data) {
                    tail.data = malloc(tail.len);
                    if (!tail.data) {
                        return -ENOMEM;
                    }
                    memcpy(tail.data, e->data + (end - e->off), tail.len);
                }
                int ret = insert_at(c, i + 1, tail);
                if (ret < 0) {
                    free(tail.data);
                    return ret;
                }
                e = &c->ext[i];
            }
            if (e->data) {
                c->dirty_bytes -= eend - off;
            }
            e->len = off - e->off;
            i++;
            continue;
        }
        if (eend <= end) {
            remove_at(c, i);
            continue;
        }
        /* Starts inside, ends past: keep the part after end. */
        uint64_t cut = end - e->off;
        if (e->data) {
            uint8_t *nd = malloc(e->len - cut);
            if (!nd) {
                return -ENOMEM;
            }
            memcpy(nd, e->data + cut, e->len - cut);
            free(e->data);
            e->data = nd;
            c->dirty_bytes -= cut;
        }
        e->off = end;
        e->len -= cut;
        break;
    }
    *pos = i;
    return 0;
}

/* Adds [off, off+len) holding buf (NULL: zeroes) as the newest data. */
static int add(VolatileCache *c, uint64_t off, uint64_t len, const void *buf)
{
    size_t pos;
    int ret = punch(c, off, off + len, &pos);
    if (ret < 0) {
        return ret;
    }
    VCacheExtent e = { off, len, NULL };
    if (buf) {
        e.data = malloc(len);
        if (!e.data) {
            return -ENOMEM;
        }
        memcpy(e.data, buf, len);
    }
    ret = insert_at(c, pos, e);
    if (ret < 0) {
        free(e.data);
    }
    return ret;
}

static int child_put(VolatileCache *c, uint64_t off, uint64_t len,
                     const uint8_t *data)
{
    if (data) {
        return block_pwrite(c->child, off, (size_t)len, data, 0);
    }
    return block_write_zeroes(c->child, off, len, BLOCK_REQ_MAY_UNMAP);
}

static int child_set_length(VolatileCache *c, uint64_t len)
{
    int64_t cur = block_get_length(c->child);
    if (cur < 0) {
        return (int)cur;
    }
    if ((uint64_t)cur == len) {
        return 0;
    }
    Error err = { 0 };
    return block_truncate(c->child, len, true, PREALLOC_OFF, &err);
}

void vcache_read(const VolatileCache *c, uint64_t off, size_t len,
                 void *buf)
{
    uint64_t end = off + len;
    uint8_t *b = buf;
    if (c->shrunk && end > c->shrink_to) {
        uint64_t z = off > c->shrink_to ? off : c->shrink_to;
        memset(b + (z - off), 0, end - z);
    }
    for (size_t i = find(c, off); i < c->n_ext && c->ext[i].off < end;
         i++) {
        const VCacheExtent *e = &c->ext[i];
        uint64_t lo = e->off > off ? e->off : off;
        uint64_t hi = e->off + e->len < end ? e->off + e->len : end;
        if (e->data) {
            memcpy(b + (lo - off), e->data + (lo - e->off), hi - lo);
        } else {
            memset(b + (lo - off), 0, hi - lo);
        }
    }
}

int vcache_writeback(VolatileCache *c)
{
    int ret;
    if (c->shrunk) {
        ret = child_set_length(c, c->shrink_to);
        if (ret < 0) {
            return ret;
        }
    }
    for (size_t i = 0; i < c->n_ext; i++) {
        ret = child_put(c, c->ext[i].off, c->ext[i].len, c->ext[i].data);
        if (ret < 0) {
            return ret;
        }
    }
    ret = child_set_length(c, c->length);
    if (ret < 0) {
        return ret;
    }
    clear(c);
    return 0;
}

int vcache_store(VolatileCache *c, uint64_t off, uint64_t len,
                 const void *data, bool grow)
{
    int ret = add(c, off, len, data);
    if (ret < 0) {
        return ret;
    }
    if (grow) {
        vcache_grow(c, off + len);
    }
    if (c->dirty_bytes > c->max_dirty) {
        return vcache_writeback(c);
    }
    return 0;
}

int vcache_write_through(VolatileCache *c, uint64_t off, uint64_t len)
{
    if (c->shrunk) {
        return vcache_writeback(c);
    }
    size_t pos;
    return punch(c, off, off + len, &pos);
}

void vcache_grow(VolatileCache *c, uint64_t end)
{
    if (end > c->length) {
        c->length = end;
    }
}

int vcache_truncate(VolatileCache *c, uint64_t size)
{
    if (size < c->length) {
        size_t pos;
        int ret = punch(c, size, UINT64_MAX, &pos);
        if (ret < 0) {
            return ret;
        }
        int64_t clen = block_get_length(c->child);
        if (clen >= 0 && size < (uint64_t)clen &&
            (!c->shrunk || size < c->shrink_to)) {
            c->shrunk = true;
            c->shrink_to = size;
        }
    }
    c->length = size;
    return 0;
}

void vcache_set_length(VolatileCache *c, uint64_t length)
{
    c->length = length;
}

int vcache_block_status(const VolatileCache *c, uint64_t off,
                        uint64_t *len, uint64_t *pnum)
{
    size_t i = find(c, off);
    if (i < c->n_ext && c->ext[i].off <= off) {
        const VCacheExtent *e = &c->ext[i];
        uint64_t run = e->off + e->len - off;
        *pnum = run < *len ? run : *len;
        return BLOCK_STATUS_ALLOCATED |
               (e->data ? BLOCK_STATUS_DATA : BLOCK_STATUS_ZERO);
    }
    if (i < c->n_ext && c->ext[i].off - off < *len) {
        *len = c->ext[i].off - off;
    }
    if (c->shrunk && off >= c->shrink_to) {
        *pnum = *len;
        return BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO;
    }
    if (c->shrunk && c->shrink_to - off < *len) {
        *len = c->shrink_to - off;
    }
    int64_t clen = block_get_length(c->child);
    if (clen >= 0 && off >= (uint64_t)clen) {
        /* Grown by the cache's length only: zeroes. */
        *pnum = *len;
        return BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO;
    }
    return 0;
}

/* Each sector of each extent reaches the child if the coin says so; the
 * file's size is metadata of its own, so the held shrink and the new
 * length may or may not have made it either. */
static void crash_random_part(VolatileCache *c, bool (*coin)(void *),
                              void *opaque)
{
    if (c->shrunk && coin(opaque)) {
        child_set_length(c, c->shrink_to);
    }
    for (size_t i = 0; i < c->n_ext; i++) {
        const VCacheExtent *e = &c->ext[i];
        uint64_t p = e->off, end = e->off + e->len;
        while (p < end) {
            uint64_t next = (p / SECTOR + 1) * SECTOR;
            if (next > end) {
                next = end;
            }
            if (coin(opaque)) {
                child_put(c, p, next - p,
                          e->data ? e->data + (p - e->off) : NULL);
            }
            p = next;
        }
    }
    if (coin(opaque)) {
        int64_t cur = block_get_length(c->child);
        if (cur >= 0 && (uint64_t)cur > c->length) {
            child_set_length(c, c->length);
        }
    }
}

void vcache_crash(VolatileCache *c, VCacheCrash how,
                  bool (*coin)(void *opaque), void *opaque)
{
    /* Errors are ignored: a crash writes what it manages to. */
    if (how == VCACHE_CRASH_KEEP) {
        vcache_writeback(c);
    } else if (how == VCACHE_CRASH_RANDOM_PART) {
        crash_random_part(c, coin, opaque);
    }
    block_flush(c->child);
    clear(c);
}
