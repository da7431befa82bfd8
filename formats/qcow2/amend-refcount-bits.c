/*
 * amend-refcount-bits.c - amend's refcount_bits: rebuilding the refcount
 * structures at another width.
 *
 * Crash safety: the new structures are built in clusters the old
 * structures count as allocated, made durable, switched to by one write
 * of the header sector (offset, size and width share it), and only then
 * are the old structures freed: a crash at any point leaves old or new
 * refcounts with at most leaked clusters.  s->lock is held throughout.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/amend-int.h"

/* Calls fn for every cluster index in [0, end) whose refcount is not 0,
 * one old refcount block at a time. */
typedef int RefFn(Qcow2State *s, uint64_t ci, uint64_t rc, void *opaque);

static int for_each_refcount(Qcow2State *s, uint64_t from, uint64_t end,
                             RefFn *fn, void *opaque)
{
    for (uint64_t r = from >> s->refblock_bits;
         r < s->refcount_table_size && (r << s->refblock_bits) < end; r++) {
        uint64_t e = s->refcount_table[r];
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
        if (!off) {
            continue;
        }
        if ((e & QCOW2_REFT_RESERVED_MASK) || off % s->cluster_size) {
            qcow2_signal_corruption(s, "refblock offset 0x%" PRIx64
                                    " unaligned", off);
            return -EIO;
        }
        uint8_t *block;
        int ret = qcow2_cache_get(&s->refcount_cache, off, &block);
        if (ret < 0) {
            return ret;
        }
        uint64_t first = r << s->refblock_bits;
        for (uint64_t i = 0; i < s->refblock_entries; i++) {
            uint64_t ci = first + i;
            if (ci < from || ci >= end) {
                continue;
            }
            uint64_t rc = qcow2_refblock_get(s, block, i);
            if (rc) {
                ret = fn(s, ci, rc, opaque);
                if (ret < 0) {
                    break;
                }
            }
        }
        qcow2_cache_put(&s->refcount_cache, &block);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

typedef struct RefScan {
    uint64_t max;          /* refcounts above are refused */
    uint64_t end;          /* one past the last cluster in use */
    uint64_t bad_ci, bad_rc;
} RefScan;

static int scan_one(Qcow2State *s, uint64_t ci, uint64_t rc, void *opaque)
{
    RefScan *sc = opaque;
    (void)s;
    if (rc > sc->max) {
        sc->bad_ci = ci;
        sc->bad_rc = rc;
        return -ERANGE;
    }
    if (ci + 1 > sc->end) {
        sc->end = ci + 1;
    }
    return 0;
}

typedef struct RefFill {
    Qcow2State *s;
    uint32_t order;        /* of the new blocks */
    uint64_t first;        /* first cluster the block covers */
    uint8_t *block;
} RefFill;

static int fill_one(Qcow2State *s, uint64_t ci, uint64_t rc, void *opaque)
{
    RefFill *f = opaque;
    qcow2_refblock_set_order(f->order, f->block, ci - f->first, rc);
    return 0;
}

/* A new block's counts: the old refcounts of its range. */
static int fill_block(void *opaque, uint64_t first, uint64_t n,
                      uint8_t *block)
{
    RefFill *f = opaque;
    f->first = first;
    f->block = block;
    return for_each_refcount(f->s, first, first + n, fill_one, f);
}

static void progress(void *opaque, uint64_t done, uint64_t total)
{
    amend_progress_report(opaque, done, total);
}

/* Highest in-use cluster + 1 (checking every refcount fits in `max`);
 * -ERANGE with *bad_ci / *bad_rc set when one does not. */
static int refcount_extent(Qcow2State *s, uint64_t max, uint64_t *end,
                           uint64_t *bad_ci, uint64_t *bad_rc)
{
    RefScan sc = { .max = max };
    int ret = for_each_refcount(s, 0, UINT64_MAX, scan_one, &sc);
    *bad_ci = sc.bad_ci;
    *bad_rc = sc.bad_rc;
    *end = sc.end > s->alloc_end ? sc.end : s->alloc_end;
    return ret;
}

int amend_change_refcount_order(Qcow2State *s, uint32_t order,
                                AmendProgress *prog, Error *err)
{
    uint64_t cs = s->cluster_size;
    uint32_t nbits = s->cluster_bits + 3 - order;   /* log2 entries/block */
    uint64_t end, bad_ci, bad_rc;
    uint64_t *blocks = NULL, nblocks_alloc = 0, cap = 0;
    uint64_t table_off = 0, table_clusters = 0;
    uint64_t *old_blocks = NULL, nold = 0;
    uint64_t *table = NULL;
    bool switching = false;    /* the header may point at the new ones */
    int ret;

    ret = amend_settle(s, err);
    if (ret < 0) {
        return ret;
    }
    ret = refcount_extent(s, qcow2_refcount_max_for(order), &end, &bad_ci,
                          &bad_rc);
    if (ret == -ERANGE) {
        return error_setf(err, ERANGE, "Cannot decrease refcount entry width "
                          "to %u bits: Cluster at offset %#" PRIx64 " has a "
                          "refcount of %" PRIu64, 1u << order,
                          bad_ci << s->cluster_bits, bad_rc);
    }
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the refcounts: %s",
                          strerror(-ret));
    }

    /* Room for the new structures, allocated through the old ones: until
     * the header switch they are leaked clusters the old refcounts
     * count, and the new refcounts count them too. */
    for (;;) {
        uint64_t need_blocks = (end + (1ull << nbits) - 1) >> nbits;
        uint64_t need_tc = qcow2_align_up(need_blocks * 8, cs) / cs;
        if (need_tc == 0) {
            need_tc = 1;
        }
        if (need_tc * cs > QCOW2_MAX_REFTABLE_BYTES) {
            ret = error_setf(err, EFBIG, "the refcount table would be too "
                             "large");
            goto release;
        }
        if (nblocks_alloc >= need_blocks && table_clusters >= need_tc) {
            break;
        }
        if (table_clusters < need_tc) {
            if (table_clusters) {
                ret = qcow2_update_refcount(s, table_off, table_clusters * cs,
                                            -1);
                if (ret < 0) {
                    goto io_fail;
                }
            }
            /* One spare cluster: the blocks allocated next may need a
             * slightly larger table. */
            int64_t a = qcow2_alloc_clusters(s, need_tc + 1);
            if (a < 0) {
                ret = (int)a;
                goto io_fail;
            }
            table_off = (uint64_t)a;
            table_clusters = need_tc + 1;
        }
        while (nblocks_alloc < need_blocks) {
            if (nblocks_alloc == cap) {
                cap = cap ? cap * 2 : 64;
                uint64_t *nb = realloc(blocks, cap * sizeof(*nb));
                if (!nb) {
                    ret = error_setf(err, ENOMEM, "out of memory");
                    goto release;
                }
                blocks = nb;
            }
            int64_t a = qcow2_alloc_clusters(s, 1);
            if (a < 0) {
                ret = (int)a;
                goto io_fail;
            }
            blocks[nblocks_alloc++] = (uint64_t)a;
        }
        uint64_t e2 = s->alloc_end;
        if (e2 > end) {
            end = e2;
        }
    }
    ret = qcow2_cache_writeback(&s->refcount_cache);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        goto io_fail;
    }

    /* What to free once the new structures are live. */
    old_blocks = calloc(s->refcount_table_size + 1, sizeof(*old_blocks));
    table = calloc(table_clusters * cs / 8, 8);
    if (!old_blocks || !table) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto release;
    }
    for (uint64_t r = 0; r < s->refcount_table_size; r++) {
        uint64_t off = s->refcount_table[r] & QCOW2_REFT_OFFSET_MASK;
        if (off) {
            old_blocks[nold++] = off;
        }
    }
    uint64_t old_table = s->refcount_table_offset;
    uint64_t old_tc = s->refcount_table_clusters;

    /* The new blocks, filled from the old refcounts (which now count the
     * new structures and still count the old ones), the table, and the
     * switch: table offset, its size and the width share the first
     * sector of the header, so one write moves them together. */
    RefFill f = { .s = s, .order = order };
    Qcow2RefcountLayout l = {
        .order = order,
        .table = table, .table_entries = table_clusters * cs / 8,
        .table_offset = table_off,
        .blocks = blocks, .nblocks = nblocks_alloc,
        .fill = fill_block, .opaque = &f,
        .progress = prog ? progress : NULL, .progress_opaque = prog,
    };
    Qcow2RefcountStage stage;
    table = NULL;
    ret = qcow2_install_refcounts(s, &l, &stage);
    if (ret < 0 && stage == QCOW2_REFCOUNTS_NOMEM) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto release;
    }
    if (ret < 0) {
        switching = stage == QCOW2_REFCOUNTS_SWITCH;
        goto io_fail;
    }

    /* Live (s follows the new width): the old structures go. */
    s->free_cluster_index = 1;

    ret = qcow2_update_refcount(s, old_table, old_tc * cs, -1);
    for (uint64_t i = 0; i < nold && ret >= 0; i++) {
        ret = qcow2_update_refcount(s, old_blocks[i], cs, -1);
    }
    if (ret >= 0) {
        ret = qcow2_flush_caches(s);
    }
    if (ret < 0) {
        ret = error_setf(err, -ret, "cannot free the old refcount "
                         "structures: %s", strerror(-ret));
    }
    goto out;

io_fail:
    ret = error_setf(err, -ret, "cannot rebuild the refcount structures: %s",
                     strerror(-ret));
release:
    if (!switching) {
        /* The old structures are still the live ones: give back what was
         * allocated for the new (best effort; failing, it leaks). */
        if (table_clusters) {
            qcow2_update_refcount(s, table_off, table_clusters * cs, -1);
        }
        for (uint64_t i = 0; i < nblocks_alloc; i++) {
            qcow2_update_refcount(s, blocks[i], cs, -1);
        }
        qcow2_cache_writeback(&s->refcount_cache);
    }
out:
    free(blocks);
    free(old_blocks);
    free(table);
    return ret;
}
