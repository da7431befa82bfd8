/*
 * refcount-build.c - putting new refcount structures in place: refcount
 * blocks written from a set of counts, the table that points at them,
 * and the header switched to that table in one write.
 *
 * Three callers rebuild the refcount table, each with its own idea of
 * where the new structures go and what they count, and this is the part
 * they share:
 *  - refcount.c grows the table: the new table and the blocks for ranges
 *    nothing covered yet go past the end of the image, the other
 *    entries are the old blocks, kept;
 *  - check -r all (check-rebuild.c) rebuilds from the references it
 *    counted, in clusters nothing references;
 *  - amend's refcount_bits (amend-refcount-bits.c) copies the old counts
 *    into blocks of another width, in clusters the old structures count.
 * The caller chooses and reserves the clusters; here they are filled.
 *
 * Crash safety, for all three: blocks, then table, are written and
 * flushed before the one header write that names them (offset and
 * cluster count, and the width when it changes, share the header's first
 * sector), and that write is flushed before s follows it.  A crash
 * leaves the old structures or the new ones; the caller frees the old
 * ones only after a successful switch.  Needs s->lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

int qcow2_install_refcounts(Qcow2State *s, Qcow2RefcountLayout *l,
                            Qcow2RefcountStage *stage)
{
    BlockNode *file = block_file(s->node);
    uint64_t cs = s->cluster_size;
    uint64_t clusters = l->table_entries * 8 / cs;
    uint32_t bits = s->cluster_bits + 3 - l->order;  /* log2 entries/block */
    uint64_t *table = l->table;
    uint8_t *buf = malloc(cs);
    uint8_t *tbuf = calloc(clusters ? clusters : 1, cs);
    Qcow2RefcountStage at = QCOW2_REFCOUNTS_NOMEM;
    int ret = -ENOMEM;

    l->table = NULL;
    if (!buf || !tbuf) {
        goto out;
    }

    /* The blocks, each filled from the counts of the range it covers. */
    at = QCOW2_REFCOUNTS_BLOCKS;
    for (uint64_t r = 0; r < l->nblocks; r++) {
        if (!l->blocks[r]) {
            continue;
        }
        memset(buf, 0, cs);
        ret = l->fill(l->opaque, r << bits, 1ull << bits, buf);
        if (ret >= 0) {
            ret = block_pwrite(file, l->blocks[r], cs, buf, 0);
        }
        if (ret < 0) {
            goto out;
        }
        table[r] = l->blocks[r];
        if (l->progress) {
            /* the table is the last step */
            l->progress(l->progress_opaque, r + 1, l->nblocks + 1);
        }
    }

    /* The table, on disk with the blocks before the header names it. */
    at = QCOW2_REFCOUNTS_TABLE;
    for (uint64_t i = 0; i < l->table_entries; i++) {
        qcow2_put_be64(tbuf + 8 * i, table[i]);
    }
    ret = block_pwrite(file, l->table_offset, clusters * cs, tbuf, 0);
    if (ret >= 0) {
        ret = block_flush(file);
    }
    if (ret < 0) {
        goto out;
    }

    /* The switch.  Offset and cluster count are adjacent: one write moves
     * both.  A new width shares the header's first sector with them and
     * goes in the same write, the bytes between rewritten as they are. */
    if (l->order == s->refcount_order) {
        uint8_t hdr[12];
        qcow2_put_be64(hdr, l->table_offset);
        qcow2_put_be32(hdr + 8, (uint32_t)clusters);
        at = QCOW2_REFCOUNTS_SWITCH;
        ret = block_pwrite(file, QCOW2_HDR_REFTABLE_OFFSET, sizeof(hdr), hdr,
                           0);
    } else {
        uint8_t hdr[QCOW2_HDR_HEADER_LENGTH - QCOW2_HDR_REFTABLE_OFFSET];
        ret = block_pread(file, QCOW2_HDR_REFTABLE_OFFSET, sizeof(hdr), hdr);
        if (ret < 0) {
            goto out;
        }
        qcow2_put_be64(hdr, l->table_offset);
        qcow2_put_be32(hdr + QCOW2_HDR_REFTABLE_CLUSTERS -
                       QCOW2_HDR_REFTABLE_OFFSET, (uint32_t)clusters);
        qcow2_put_be32(hdr + QCOW2_HDR_REFCOUNT_ORDER -
                       QCOW2_HDR_REFTABLE_OFFSET, l->order);
        at = QCOW2_REFCOUNTS_SWITCH;
        ret = block_pwrite(file, QCOW2_HDR_REFTABLE_OFFSET, sizeof(hdr), hdr,
                           0);
    }
    if (ret >= 0) {
        ret = block_flush(file);
    }
    if (ret < 0) {
        goto out;
    }

    /* Live: the in-memory view follows.  Cached blocks of another width
     * mean nothing any more. */
    if (l->order != s->refcount_order) {
        qcow2_cache_invalidate(&s->refcount_cache);
        qcow2_set_refcount_order(s, l->order);
    }
    free(s->refcount_table);
    s->refcount_table = table;
    table = NULL;
    s->refcount_table_size = l->table_entries;
    s->refcount_table_gen++;
    s->refcount_table_offset = l->table_offset;
    s->refcount_table_clusters = (uint32_t)clusters;
    ret = 0;
out:
    if (stage) {
        *stage = at;
    }
    free(table);
    free(buf);
    free(tbuf);
    return ret;
}
