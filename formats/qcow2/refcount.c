/*
 * refcount.c - qcow2 host cluster reference counts and allocation.
 *
 * A two-level structure: the refcount table (contiguous, in memory) points
 * at refcount blocks (one cluster each, through the metadata cache).  New
 * refcount blocks and a grown table are self-describing: they are placed
 * in clusters they (or existing blocks) count, and are on disk before
 * anything points at them (a grown table is put in place, with the
 * blocks it needs, by refcount-build.c).  Decrements are deferred until
 * the metadata that dropped the reference is on disk (refcount-free.c),
 * so a crash can leak a cluster but never leave a reference to a free
 * one.  All functions need s->lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

uint64_t qcow2_refblock_get(const Qcow2State *s, const uint8_t *block,
                            uint64_t i)
{
    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        uint32_t bits = 1u << s->refcount_order;
        uint64_t bit = i * bits;
        return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    case 3:
        return block[i];
    case 4:
        return qcow2_be16(block + 2 * i);
    case 5:
        return qcow2_be32(block + 4 * i);
    default:
        return qcow2_be64(block + 8 * i);
    }
}

void qcow2_refblock_set(const Qcow2State *s, uint8_t *block, uint64_t i,
                        uint64_t value)
{
    qcow2_refblock_set_order(s->refcount_order, block, i, value);
}

void qcow2_refblock_set_order(uint32_t order, uint8_t *block, uint64_t i,
                              uint64_t value)
{
    switch (order) {
    case 0: case 1: case 2: {
        uint32_t bits = 1u << order;
        uint64_t bit = i * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit % 8));
        block[bit / 8] = (uint8_t)((block[bit / 8] & ~mask) |
                                   ((value << (bit % 8)) & mask));
        break;
    }
    case 3:
        block[i] = (uint8_t)value;
        break;
    case 4:
        qcow2_put_be16(block + 2 * i, (uint16_t)value);
        break;
    case 5:
        qcow2_put_be32(block + 4 * i, (uint32_t)value);
        break;
    default:
        qcow2_put_be64(block + 8 * i, value);
        break;
    }
}

void qcow2_set_refcount_order(Qcow2State *s, uint32_t order)
{
    s->refcount_order = order;
    s->refcount_bits = 1u << order;
    s->refcount_max = qcow2_refcount_max_for(order);
    s->refblock_bits = s->cluster_bits + 3 - order;
    s->refblock_entries = 1ull << s->refblock_bits;
}

/* Host offset of the refcount block for table index rti, 0 when none;
 * -EIO (after flagging corruption) when the entry is bad. */
int64_t qcow2_refblock_offset(Qcow2State *s, uint64_t rti)
{
    if (rti >= s->refcount_table_size) {
        return 0;
    }
    uint64_t e = s->refcount_table[rti];
    uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
    if (!off) {
        return 0;
    }
    if ((e & QCOW2_REFT_RESERVED_MASK) || off % s->cluster_size) {
        qcow2_signal_corruption(s, "refblock offset 0x%llx unaligned "
                                "(reftable index 0x%llx)",
                                (unsigned long long)off,
                                (unsigned long long)rti);
        return -EIO;
    }
    return (int64_t)off;
}

int qcow2_get_refcount(Qcow2State *s, uint64_t cluster_index,
                       uint64_t *refcount)
{
    int64_t off = qcow2_refblock_offset(s, qcow2_reftable_index(s,
                                                         cluster_index));
    uint8_t *block;
    int ret;

    *refcount = 0;
    if (off <= 0) {
        return (int)off;
    }
    ret = qcow2_cache_get(&s->refcount_cache, (uint64_t)off, &block);
    if (ret < 0) {
        return ret;
    }
    *refcount = qcow2_refblock_get(s, block,
                                   qcow2_refblock_index(s, cluster_index));
    qcow2_cache_put(&s->refcount_cache, &block);
    return 0;
}

int qcow2_write_reftable(Qcow2State *s, uint64_t first, uint64_t n)
{
    return qcow2_write_table64(s, s->refcount_table, s->refcount_table_offset,
                               first, n);
}

/* Clusters past the end of the image that may still be in use (leaks
 * from a crash) before we call the refcounts insane. */
#define QCOW2_MAX_USED_PAST_END (1ull << 20)

/* First run of nb clusters with refcount 0, at or after `from` (and the
 * allocation hint).  Scans whole refcount blocks at a time. */
static int find_free_run_from(Qcow2State *s, uint64_t nb, uint64_t from,
                              uint64_t *start)
{
    uint64_t i = from > s->free_cluster_index ? from : s->free_cluster_index;
    uint64_t run_start, run = 0;

    if (i == 0) {
        i = 1;
    }
    run_start = i;
    for (;;) {
        uint64_t rti = qcow2_reftable_index(s, i);
        uint64_t range_end = (rti + 1) << s->refblock_bits;
        int64_t boff = qcow2_refblock_offset(s, rti);
        if (boff < 0) {
            return (int)boff;
        }
        if (boff == 0) {
            /* A whole uncovered range is free. */
            run += range_end - i;
            i = range_end;
            if (run >= nb) {
                *start = run_start;
                return 0;
            }
            continue;
        }
        uint8_t *block;
        int ret = qcow2_cache_get(&s->refcount_cache, (uint64_t)boff, &block);
        if (ret < 0) {
            return ret;
        }
        for (; i < range_end; i++) {
            if (qcow2_refblock_get(s, block, qcow2_refblock_index(s, i))) {
                run = 0;
                run_start = i + 1;
                if (i > s->alloc_end + QCOW2_MAX_USED_PAST_END) {
                    qcow2_cache_put(&s->refcount_cache, &block);
                    qcow2_signal_corruption(s, "refcounts claim clusters "
                                            "far beyond the end of the "
                                            "image (0x%llx)",
                                            (unsigned long long)i);
                    return -EIO;
                }
                continue;
            }
            if (++run >= nb) {
                qcow2_cache_put(&s->refcount_cache, &block);
                *start = run_start;
                return 0;
            }
        }
        qcow2_cache_put(&s->refcount_cache, &block);
    }
}

static int find_free_run(Qcow2State *s, uint64_t nb, uint64_t *start)
{
    return find_free_run_from(s, nb, 0, start);
}

static int update_one(Qcow2State *s, uint64_t ci, int64_t delta,
                      bool absolute, uint64_t value)
{
    int64_t boff = qcow2_refblock_offset(s, qcow2_reftable_index(s, ci));
    uint8_t *block;
    int ret;

    if (boff < 0) {
        return (int)boff;
    }
    if (boff == 0) {
        qcow2_signal_corruption(s, "refcount block missing for cluster "
                                "0x%llx", (unsigned long long)ci);
        return -EIO;
    }
    ret = qcow2_cache_get(&s->refcount_cache, (uint64_t)boff, &block);
    if (ret < 0) {
        return ret;
    }
    uint64_t idx = qcow2_refblock_index(s, ci);
    uint64_t rc = qcow2_refblock_get(s, block, idx);
    uint64_t nrc;
    if (absolute) {
        nrc = value;
    } else if (delta < 0) {
        if (rc < (uint64_t)-delta) {
            qcow2_cache_put(&s->refcount_cache, &block);
            qcow2_signal_corruption(s, "refcount of cluster 0x%llx would "
                                    "drop below zero",
                                    (unsigned long long)ci);
            return -EIO;
        }
        nrc = rc - (uint64_t)-delta;
    } else {
        if (s->refcount_max - rc < (uint64_t)delta) {
            qcow2_cache_put(&s->refcount_cache, &block);
            return -ERANGE;
        }
        nrc = rc + (uint64_t)delta;
    }
    if (nrc > s->refcount_max) {
        qcow2_cache_put(&s->refcount_cache, &block);
        return -ERANGE;
    }
    if (nrc == 0 && s->compressed_next &&
        (s->compressed_next >> s->cluster_bits) == ci) {
        /* The cluster compressed data was being packed into is free
         * again: it may be reused for anything, so stop packing there. */
        s->compressed_next = 0;
    }
    qcow2_refblock_set(s, block, idx, nrc);
    qcow2_cache_mark_dirty(&s->refcount_cache, block);
    qcow2_cache_put(&s->refcount_cache, &block);
    if (nrc == 0) {
        if (ci < s->free_cluster_index) {
            s->free_cluster_index = ci;
        }
        uint64_t off = ci << s->cluster_bits;
        qcow2_cache_discard(&s->l2_cache, off);
        qcow2_cache_discard(&s->refcount_cache, off);
    } else if (ci + 1 > s->alloc_end) {
        s->alloc_end = ci + 1;
    }
    return 0;
}

/* Adds delta > 0 to the refcounts of clusters [first, first + n): one
 * cache lookup per refcount block, not per cluster.  All blocks must
 * exist.  -ERANGE (nothing of that block changed) on overflow. */
static int increment_range(Qcow2State *s, uint64_t first, uint64_t n,
                           uint64_t delta)
{
    while (n > 0) {
        uint64_t bi = qcow2_refblock_index(s, first);
        uint64_t cnt = s->refblock_entries - bi;
        if (cnt > n) {
            cnt = n;
        }
        int64_t boff = qcow2_refblock_offset(s,
                                             qcow2_reftable_index(s, first));
        if (boff <= 0) {
            if (boff == 0) {
                qcow2_signal_corruption(s, "refcount block missing for "
                                        "cluster 0x%llx",
                                        (unsigned long long)first);
            }
            return boff < 0 ? (int)boff : -EIO;
        }
        uint8_t *block;
        int ret = qcow2_cache_get(&s->refcount_cache, (uint64_t)boff,
                                  &block);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t i = 0; i < cnt; i++) {
            if (s->refcount_max - qcow2_refblock_get(s, block, bi + i) <
                delta) {
                qcow2_cache_put(&s->refcount_cache, &block);
                return -ERANGE;
            }
        }
        for (uint64_t i = 0; i < cnt; i++) {
            qcow2_refblock_set(s, block, bi + i,
                               qcow2_refblock_get(s, block, bi + i) + delta);
        }
        qcow2_cache_mark_dirty(&s->refcount_cache, block);
        qcow2_cache_put(&s->refcount_cache, &block);
        if (first + cnt > s->alloc_end) {
            s->alloc_end = first + cnt;
        }
        first += cnt;
        n -= cnt;
    }
    return 0;
}

static int count_uncovered(Qcow2State *s, uint64_t start, uint64_t end,
                           uint64_t *count)
{
    uint64_t n = 0;
    for (uint64_t r = start >> s->refblock_bits;
         r <= (end - 1) >> s->refblock_bits; r++) {
        int64_t b = qcow2_refblock_offset(s, r);
        if (b < 0) {
            return (int)b;
        }
        n += b == 0;
    }
    *count = n;
    return 0;
}

/* The clusters [start, end) that a grown table and its new blocks take,
 * counted once each. */
typedef struct GrowArea {
    Qcow2State *s;
    uint64_t start, end;
} GrowArea;

static int fill_area(void *opaque, uint64_t first, uint64_t n,
                     uint8_t *block)
{
    GrowArea *a = opaque;
    for (uint64_t c = a->start; c < a->end; c++) {
        if (c >= first && c < first + n) {
            qcow2_refblock_set(a->s, block, c - first, 1);
        }
    }
    return 0;
}

/* Moves the refcount table to the end of the image, big enough for
 * min_entries, with new refcount blocks for whatever the new area needs
 * and the old table does not cover. */
static int grow_reftable(Qcow2State *s, uint64_t min_entries, uint64_t from)
{
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t S = s->alloc_end > from ? s->alloc_end : from;
    uint64_t entries, tc, nb = 0;
    int ret;

    if (S < 1) {
        S = 1;
    }
    entries = s->refcount_table_size + s->refcount_table_size / 2 + 1;
    if (entries < min_entries) {
        entries = min_entries;
    }
    for (;;) {
        entries = qcow2_align_up(entries, per_cluster);
        if (entries > QCOW2_MAX_REFTABLE_BYTES / 8) {
            return -EFBIG;
        }
        tc = entries / per_cluster;
        nb = 0;
        for (;;) {
            uint64_t need = 0;
            ret = count_uncovered(s, S, S + tc + nb, &need);
            if (ret < 0) {
                return ret;
            }
            if (need <= nb) {
                break;
            }
            nb = need;
        }
        uint64_t last_r = (S + tc + nb - 1) >> s->refblock_bits;
        if (last_r < entries) {
            /* Check the area is really free (leaks past the end). */
            bool busy = false;
            for (uint64_t c = S; c < S + tc + nb; c++) {
                uint64_t rc;
                ret = qcow2_get_refcount(s, c, &rc);
                if (ret < 0) {
                    return ret;
                }
                if (rc) {
                    S = c + 1;
                    busy = true;
                    break;
                }
            }
            if (!busy) {
                break;
            }
            continue;
        }
        entries = last_r + 1;
    }
    uint64_t *nt = calloc(entries, 8);
    uint64_t *blocks = calloc(entries, 8);
    if (!nt || !blocks) {
        free(nt);
        free(blocks);
        return -ENOMEM;
    }
    memcpy(nt, s->refcount_table, s->refcount_table_size * 8);
    /* Assign the new blocks to the uncovered ranges in order. */
    uint64_t next_block = S + tc;
    uint64_t first_r = S >> s->refblock_bits;
    uint64_t last_r = (S + tc + nb - 1) >> s->refblock_bits;
    for (uint64_t r = first_r; r <= last_r; r++) {
        if (!(nt[r] & QCOW2_REFT_OFFSET_MASK)) {
            blocks[r] = next_block++ << s->cluster_bits;
        }
    }
    /* Area clusters covered by existing blocks. */
    for (uint64_t c = S; c < S + tc + nb; c++) {
        int64_t old = qcow2_refblock_offset(s, c >> s->refblock_bits);
        if (old < 0) {
            ret = (int)old;
            goto out;
        }
        if (old > 0) {
            ret = update_one(s, c, 1, false, 0);
            if (ret < 0) {
                goto out;
            }
        }
    }
    ret = qcow2_cache_writeback(&s->refcount_cache);
    if (ret < 0) {
        goto out;
    }
    uint64_t old_off = s->refcount_table_offset;
    uint64_t old_clusters = s->refcount_table_clusters;
    if (s->alloc_end < S + tc + nb) {
        s->alloc_end = S + tc + nb;
    }
    /* The new blocks count the new area's clusters they cover: nothing
     * else in their ranges was in use. */
    GrowArea area = { .s = s, .start = S, .end = S + tc + nb };
    Qcow2RefcountLayout l = {
        .order = s->refcount_order,
        .table = nt, .table_entries = entries,
        .table_offset = S << s->cluster_bits,
        .blocks = blocks, .nblocks = entries,
        .fill = fill_area, .opaque = &area,
    };
    nt = NULL;
    ret = qcow2_install_refcounts(s, &l, NULL);
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_update_refcount(s, old_off, old_clusters * s->cluster_size,
                                -1);
out:
    free(nt);
    free(blocks);
    return ret;
}

/* Puts a refcount block for range rti in the first free cluster at or
 * after `from` (past the run being allocated, as QEMU places them).  When
 * that cluster's own range has no block either, that range gets one
 * first, in the next free cluster. */
static int alloc_refblock(Qcow2State *s, uint64_t rti, uint64_t from)
{
    uint64_t b;
    int ret;

    block_debug_event(block_file(s->node), BLOCK_EV_REFBLOCK_ALLOC);
    if (rti >= s->refcount_table_size) {
        return grow_reftable(s, rti + 1, from);
    }
    ret = find_free_run_from(s, 1, from, &b);
    if (ret < 0) {
        return ret;
    }
    uint64_t brti = qcow2_reftable_index(s, b);
    if (brti >= s->refcount_table_size) {
        return grow_reftable(s, brti + 1, from);
    }
    int64_t boff = qcow2_refblock_offset(s, brti);
    if (boff < 0) {
        return (int)boff;
    }
    if (!boff && brti != rti) {
        ret = alloc_refblock(s, brti, b + 1);
        if (ret < 0) {
            return ret;
        }
        boff = qcow2_refblock_offset(s, brti);
        if (boff <= 0) {
            /* The table moved instead; let the caller retry. */
            return boff < 0 ? (int)boff : 0;
        }
    }
    uint8_t *block;
    if (boff) {
        ret = update_one(s, b, 1, false, 0);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_cache_get_empty(&s->refcount_cache, b << s->cluster_bits,
                                &block);
    if (ret < 0) {
        return ret;
    }
    if (!boff) {
        /* Self-describing: the block counts its own cluster. */
        qcow2_refblock_set(s, block, qcow2_refblock_index(s, b), 1);
    }
    qcow2_cache_mark_dirty(&s->refcount_cache, block);
    qcow2_cache_put(&s->refcount_cache, &block);
    ret = qcow2_sync_refcounts(s);
    if (ret < 0) {
        return ret;
    }
    s->refcount_table[rti] = b << s->cluster_bits;
    s->refcount_table_gen++;
    ret = qcow2_write_reftable(s, rti, 1);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (b + 1 > s->alloc_end) {
        s->alloc_end = b + 1;
    }
    return ret;
}

/* Retries of ensure_refblocks that a sane image can need for nb clusters:
 * one block per range plus a few table moves.  More means the refcount
 * structures do not describe themselves (a hostile or broken image). */
static uint64_t retry_budget(const Qcow2State *s, uint64_t nb)
{
    return (nb >> s->refblock_bits) + 64;
}

static int too_many_retries(Qcow2State *s)
{
    qcow2_signal_corruption(s, "refcount structures cannot be extended");
    return -EIO;
}

/* 1 when it had to allocate refcount metadata (the caller retries). */
static int ensure_refblocks(Qcow2State *s, uint64_t start, uint64_t nb)
{
    uint64_t from = start + nb;
    for (uint64_t r = start >> s->refblock_bits;
         r <= (start + nb - 1) >> s->refblock_bits; r++) {
        int64_t b = qcow2_refblock_offset(s, r);
        if (b < 0) {
            return (int)b;
        }
        if (b == 0) {
            int ret = alloc_refblock(s, r, from);
            return ret < 0 ? ret : 1;
        }
    }
    return 0;
}

/* Refblocks for a run that stays where it is, however many it takes to
 * describe them too. */
static int cover_run(Qcow2State *s, uint64_t start, uint64_t nb)
{
    int ret;
    uint64_t budget = retry_budget(s, nb);
    while ((ret = ensure_refblocks(s, start, nb)) > 0) {
        if (!budget--) {
            return too_many_retries(s);
        }
    }
    return ret;
}

/* 0 when no cluster of the run is in use, else -EEXIST (or an error). */
static int run_is_free(Qcow2State *s, uint64_t first, uint64_t nb)
{
    for (uint64_t c = first; c < first + nb; c++) {
        uint64_t rc;
        int ret = qcow2_get_refcount(s, c, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc) {
            return -EEXIST;
        }
    }
    return 0;
}

/* Takes a reference on nb clusters from *start (`fixed`) or from a free
 * run it finds and stores in *start.  New refblocks may land in the run,
 * so the run is checked or sought again after each one. */
static int claim_run(Qcow2State *s, uint64_t nb, bool fixed, uint64_t *start)
{
    int ret;
    uint64_t budget = retry_budget(s, nb);
    for (;;) {
        if (!budget--) {
            return too_many_retries(s);
        }
        ret = fixed ? run_is_free(s, *start, nb)
                    : find_free_run(s, nb, start);
        if (ret < 0) {
            return ret;
        }
        ret = ensure_refblocks(s, *start, nb);
        if (ret < 0) {
            return ret;
        }
        if (ret == 0) {
            break;
        }
    }
    ret = increment_range(s, *start, nb, 1);
    if (ret < 0) {
        return ret;
    }
    if (*start + nb > s->alloc_end) {
        s->alloc_end = *start + nb;
    }
    return 0;
}

int qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t len,
                          int64_t delta)
{
    if (len == 0) {
        return 0;
    }
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;

    if (delta > 0) {
        int ret = cover_run(s, first, last - first + 1);
        if (ret < 0) {
            return ret;
        }
    }
    if (delta > 0 && (uint64_t)delta <= s->refcount_max) {
        return increment_range(s, first, last - first + 1,
                               (uint64_t)delta);
    }
    for (uint64_t c = first; c <= last; c++) {
        int ret = update_one(s, c, delta, false, 0);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int qcow2_set_refcount(Qcow2State *s, uint64_t cluster_index,
                       uint64_t refcount)
{
    int ret = cover_run(s, cluster_index, 1);
    if (ret < 0) {
        return ret;
    }
    return update_one(s, cluster_index, 0, true, refcount);
}

int64_t qcow2_alloc_clusters(Qcow2State *s, uint64_t nb)
{
    uint64_t start;

    block_debug_event(block_file(s->node), BLOCK_EV_CLUSTER_ALLOC);
    if (nb == 0) {
        return -EINVAL;
    }
    int ret = claim_run(s, nb, false, &start);
    if (ret < 0) {
        return ret;
    }
    if (nb == 1 || start == s->free_cluster_index) {
        s->free_cluster_index = start + nb;
    }
    return (int64_t)(start << s->cluster_bits);
}

int qcow2_alloc_clusters_at(Qcow2State *s, uint64_t offset, uint64_t nb)
{
    uint64_t first = offset >> s->cluster_bits;
    return claim_run(s, nb, true, &first);
}

int qcow2_sync_refcounts(Qcow2State *s)
{
    int ret = qcow2_cache_writeback(&s->refcount_cache);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret >= 0) {
        s->refcount_unflushed = false;
    }
    return ret;
}

uint64_t qcow2_refcount_metadata_clusters(uint64_t clusters,
                                          uint32_t cluster_bits,
                                          uint32_t refcount_order)
{
    uint64_t per_block = 1ull << (cluster_bits + 3 - refcount_order);
    uint64_t per_table_cluster = (1ull << cluster_bits) / 8;
    uint64_t blocks = 0, tables = 0;

    for (;;) {
        uint64_t total = clusters + blocks + tables;
        uint64_t nblocks = (total + per_block - 1) / per_block;
        uint64_t ntables = (nblocks + per_table_cluster - 1) /
                           per_table_cluster;
        if (nblocks == blocks && ntables == tables) {
            return blocks + tables;
        }
        blocks = nblocks;
        tables = ntables;
    }
}
