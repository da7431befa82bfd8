/*
 * map.c - qcow2 block status (the mapping lookup it uses is read.c's
 * qcow2_map_extent).
 *
 * Block status reports what the L2 tables say.  When the image looks
 * metadata-preallocated (preallocation=metadata, or a copy made with
 * cp --sparse: its refcounts name at least 10/9 as many clusters as the
 * host file really holds), DATA extents with a host offset also carry
 * BLOCK_STATUS_RECURSE, and the core asks the host file whether they are
 * holes, which read as zero.  That is QEMU's rule and its threshold, so
 * map, measure and convert see the same zeroes as qemu-img; a fully
 * written image never pays the extra lookups.
 */
#include <errno.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* ------------------------------------------------------------------ */
/* Metadata preallocation                                              */

/* Whether the refcounts name at least max(10/9, +2) of the clusters the
 * host file really holds (QEMU's qcow2_detect_metadata_preallocation).
 * Needs s->lock; any failure says no. */
static bool detect_metadata_prealloc(Qcow2State *s)
{
    BlockNode *file = block_file(s->node);
    int64_t flen = block_get_length(file);
    int64_t alloc = block_get_allocated_size(file);
    if (flen < 0 || alloc < 0) {
        return false;
    }
    uint64_t real = (uint64_t)alloc / s->cluster_size;
    uint64_t threshold = real * 10 / 9 > real + 2 ? real * 10 / 9 : real + 2;
    uint64_t end = ((uint64_t)flen + s->cluster_size - 1) >> s->cluster_bits;
    uint64_t count = 0;
    /* A refcount block at a time: a 1 TiB image has 16M clusters.  Past
     * the refcount table every count is 0: the loop is bounded by the
     * table (at most 1M entries), not by what the file length claims. */
    for (uint64_t c = 0; c < end && count < threshold;) {
        uint64_t rti = qcow2_reftable_index(s, c);
        if (rti >= s->refcount_table_size) {
            break;
        }
        uint64_t in = qcow2_refblock_index(s, c);
        uint64_t n = s->refblock_entries - in;
        if (n > end - c) {
            n = end - c;
        }
        int64_t boff = qcow2_refblock_offset(s, rti);
        if (boff < 0) {
            return false;
        }
        if (boff > 0) {
            uint8_t *block;
            if (qcow2_cache_get(&s->refcount_cache, (uint64_t)boff,
                                &block) < 0) {
                return false;
            }
            for (uint64_t i = 0; i < n && count < threshold; i++) {
                count += qcow2_refblock_get(s, block, in + i) != 0;
            }
            qcow2_cache_put(&s->refcount_cache, &block);
        }
        c += n;
    }
    return count >= threshold;
}

/* ------------------------------------------------------------------ */
/* Block status                                                        */

int qcow2_block_status(BlockNode *n, uint64_t off, uint64_t len,
                       uint64_t *pnum, uint64_t *map, BlockNode **file)
{
    Qcow2State *s = qcow2_state(n);
    Qcow2Extent x;
    uint64_t total = 0;
    int flags = -1;
    uint64_t first_host = 0;
    bool first_has_host = false;

    pthread_mutex_lock(&s->lock);
    while (total < len) {
        int64_t got = qcow2_map_extent(s, off + total, len - total, &x);
        if (got < 0) {
            pthread_mutex_unlock(&s->lock);
            return (int)got;
        }
        int f;
        switch (x.type) {
        case QCOW2_SUBCLUSTER_UNALLOCATED:
            f = 0;
            break;
        case QCOW2_SUBCLUSTER_ZERO:
            f = BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED;
            break;
        case QCOW2_SUBCLUSTER_DATA:
            f = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED;
            break;
        case QCOW2_SUBCLUSTER_COMPRESSED:
            f = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED |
                BLOCK_STATUS_COMPRESSED;
            break;
        default:
            pthread_mutex_unlock(&s->lock);
            return -EIO;
        }
        if (x.has_host && !qcow2_encrypted(s)) {
            /* encrypted data is no use to a reader of the host file */
            f |= BLOCK_STATUS_OFFSET_VALID;
        }
        if (flags < 0) {
            flags = f;
            first_host = x.host;
            first_has_host = x.has_host;
        } else if (f != flags ||
                   (first_has_host && x.host != first_host + total) ||
                   (f & BLOCK_STATUS_COMPRESSED)) {
            break;
        }
        total += (uint64_t)got;
        if (f & BLOCK_STATUS_COMPRESSED) {
            break;
        }
    }
    if (!s->prealloc_checked) {
        s->prealloc_detected = detect_metadata_prealloc(s);
        s->prealloc_checked = true;
    }
    bool recurse = s->prealloc_detected;
    pthread_mutex_unlock(&s->lock);
    *pnum = total;
    if (recurse && (flags & BLOCK_STATUS_DATA) &&
        (flags & BLOCK_STATUS_OFFSET_VALID)) {
        flags |= BLOCK_STATUS_RECURSE;
    }
    if (flags & BLOCK_STATUS_OFFSET_VALID) {
        if (map) {
            *map = first_host;
        }
        if (file) {
            *file = qcow2_data_node(s);
        }
    }
    return flags;
}
