/*
 * check-rebuild.c - rebuilding the refcount structures from check's
 * counts, when they are unusable or a referenced cluster reads as free.
 *
 * New blocks and table are placed in clusters that nothing references,
 * the old structures included, so those stay intact until the switch;
 * the blocks and table are then written and the header switched to them
 * in one write (qcow2_install_refcounts), so a crash leaves either the
 * old structures or the new ones.  The old table and blocks are counted
 * free in the new ones (they leak otherwise), except where a count
 * saturated: that cluster may still be in use.  Each cluster so freed is
 * reported as qemu-img reports it (its rebuild writes them counted, then
 * repairs them as leaks): "Repairing cluster N refcount=1 reference=0",
 * in cluster order.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/check-int.h"

/* First run of n clusters that nothing references (the old refcount
 * structures included, so they stay intact until the switch). */
static int alloc_free_run(Check *c, uint64_t *hint, uint64_t n,
                          uint64_t *start)
{
    uint64_t k = *hint, run = 0;
    int ret;

    while (run < n) {
        if (check_ref_at(c, k)) {
            run = 0;
        } else {
            run++;
        }
        k++;
    }
    ret = check_grow_refs(c, k);
    if (ret < 0) {
        return ret;
    }
    *start = k - n;
    for (uint64_t i = *start; i < k; i++) {
        if (!check_ref_slot(c, i)) {
            return -ENOMEM;
        }
        check_ref_set(c, i, 1);
    }
    /* hint: every cluster below it is in use.  A single cluster is the
     * first free one at or after hint, so everything up to it is in use
     * now (rescanning that prefix for every block made rebuilding a
     * hostile image's refcounts quadratic). */
    if (n == 1) {
        *hint = k;
    }
    return 0;
}

/* Places refcount blocks (one per range that holds a used cluster) and a
 * table big enough for them, first fit, until placing them needs nothing
 * more.  blocks[r] = cluster of the block for range r, 0 when none. */
static int place_refcount_structures(Check *c, uint64_t **pblocks,
                                     uint64_t *pentries, uint64_t *ptable,
                                     uint64_t *ptc)
{
    uint64_t rbe = c->s->refblock_entries;
    uint64_t hint = 0, table = 0, tc = 0, cap = 0, entries = 0;
    uint64_t *blocks = NULL;
    bool changed = true;
    int ret = 0;

    while (changed) {
        changed = false;
        entries = (check_used_end(c) + rbe - 1) / rbe;
        if (entries * 8 > QCOW2_MAX_REFTABLE_BYTES) {
            /* Known to fail before a single block is placed: placing
             * millions of them first is what made it slow. */
            ret = -EFBIG;
            break;
        }
        if (entries > cap) {
            uint64_t ncap = entries * 2;
            uint64_t *nb = realloc(blocks, ncap * sizeof(*nb));
            if (!nb) {
                ret = -ENOMEM;
                break;
            }
            memset(nb + cap, 0, (ncap - cap) * sizeof(*nb));
            blocks = nb;
            cap = ncap;
        }
        for (uint64_t r = 0; r < entries; r++) {
            if (blocks[r] || !check_range_used(c, r * rbe, (r + 1) * rbe)) {
                continue;
            }
            ret = alloc_free_run(c, &hint, 1, &blocks[r]);
            if (ret < 0) {
                goto out;
            }
            changed = true;
        }
        uint64_t need = (entries * 8 + c->cs - 1) / c->cs;
        if (need > tc) {
            for (uint64_t k = table; k < table + tc; k++) {
                check_ref_set(c, k, 0);
            }
            if (tc && table < hint) {
                hint = table;
            }
            ret = alloc_free_run(c, &hint, need, &table);
            if (ret < 0) {
                goto out;
            }
            tc = need;
            changed = true;
        }
    }
out:
    if (ret < 0) {
        free(blocks);
        return ret;
    }
    *pblocks = blocks;
    *pentries = entries;
    *ptable = table;
    *ptc = tc;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Cluster k of the old structures is free in the new ones; its count
 * was `before`.  Recorded for the report when it becomes 0. */
static void release_old(Check *c, uint64_t k, uint64_t **freed,
                        size_t *nfreed)
{
    if (!check_ref_at(c, k) || check_saturated(c, k)) {
        return;
    }
    uint32_t left = (uint32_t)check_ref_at(c, k) - 1;
    check_ref_set(c, k, left);
    if (left == 0) {
        uint64_t *n = realloc(*freed, (*nfreed + 1) * sizeof(**freed));
        if (n) {   /* without memory the report is short, nothing else */
            *freed = n;
            n[(*nfreed)++] = k;
        }
    }
}

/* A new block's counts: what check counted for its range. */
static int fill_from_counts(void *opaque, uint64_t first, uint64_t n,
                            uint8_t *block)
{
    Check *c = opaque;
    for (uint64_t k = first; k < first + n && k < c->refs_len; k++) {
        if (check_ref_at(c, k)) {
            qcow2_refblock_set(c->s, block, k - first, check_ref_at(c, k));
        }
    }
    return 0;
}

int check_rebuild_refcounts(Check *c)
{
    Qcow2State *s = c->s;
    uint64_t *blocks = NULL, *table = NULL, *freed = NULL;
    uint64_t entries, table_start, tc, tentries;
    size_t nfreed = 0;
    int ret;

    ret = place_refcount_structures(c, &blocks, &entries, &table_start, &tc);
    if (ret == -EFBIG) {
        check_say(c, "ERROR: the rebuilt refcount table would be too large");
        return ret;
    }
    if (ret < 0) {
        return ret;
    }
    if (tc * c->cs > QCOW2_MAX_REFTABLE_BYTES) {
        check_say(c, "ERROR: the rebuilt refcount table would be too large");
        ret = -EFBIG;
        goto out;
    }

    /* The old table and blocks are free once the header has switched. */
    /* (a saturated count keeps it: it may still be in use) */
    if (c->reftable_counted) {
        uint64_t first = s->refcount_table_offset / c->cs;
        for (uint64_t k = 0; k < s->refcount_table_clusters; k++) {
            release_old(c, first + k, &freed, &nfreed);
        }
    }
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        if (c->rb_state[i] == RB_COUNTED) {
            uint64_t k = (s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK) /
                         c->cs;
            release_old(c, k, &freed, &nfreed);
        }
    }

    tentries = tc * c->cs / 8;
    table = calloc(tentries ? tentries : 1, 8);
    if (!table) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint64_t r = 0; r < entries; r++) {
        blocks[r] *= c->cs;
    }
    /* Blocks from the counts, the table, then the header switched over
     * in one write. */
    Qcow2RefcountLayout l = {
        .order = s->refcount_order,
        .table = table, .table_entries = tentries,
        .table_offset = table_start * c->cs,
        .blocks = blocks, .nblocks = entries,
        .fill = fill_from_counts, .opaque = c,
    };
    Qcow2RefcountStage stage;
    table = NULL;
    ret = qcow2_install_refcounts(s, &l, &stage);
    if (ret < 0 && stage == QCOW2_REFCOUNTS_BLOCKS) {
        check_say(c, "ERROR writing refblock: %s", strerror(-ret));
        goto out;
    }
    if (ret < 0 && stage == QCOW2_REFCOUNTS_NOMEM) {
        goto out;
    }
    qcow2_cache_invalidate(&s->refcount_cache);
    if (ret < 0) {
        check_say(c, "ERROR writing the new refcount table: %s",
                  strerror(-ret));
        goto out;
    }
    s->free_cluster_index = 0;
    uint64_t end = check_used_end(c);
    if (s->alloc_end < end) {
        s->alloc_end = end;
    }
    if (end * c->cs > c->file_len) {
        c->file_len = end * c->cs;
        c->nb_clusters = end;
    }
    free(c->rb_state);
    c->rb_state = calloc(s->refcount_table_size ? s->refcount_table_size : 1,
                         1);
    if (!c->rb_state) {
        ret = -ENOMEM;
        goto out;
    }
    c->highest = end;
    if (nfreed) {
        qsort(freed, nfreed, sizeof(*freed), cmp_u64);
    }
    for (size_t i = 0; i < nfreed; i++) {
        check_say(c, "Repairing cluster %" PRIu64 " refcount=1 reference=0",
                  freed[i]);
    }
    ret = 0;
out:
    free(freed);
    free(blocks);
    free(table);
    return ret;
}
