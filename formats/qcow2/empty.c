/*
 * empty.c - make_empty: drop every mapping of the active L1 table so the
 * image reads through to its backing file again (commit's last step).
 *
 * A discard cannot do this on v3 images with a backing file: it leaves
 * zero clusters, which hide the backing data.  Here whole L2 tables are
 * unhooked instead: each L1 entry is cleared on disk first, and only then
 * are the table and the clusters it mapped released (deferred frees are
 * applied after a flush), so a crash at any point leaves a consistent
 * image whose worst damage is leaked clusters.  Snapshots keep their own
 * references: a table shared with one only loses our reference.
 */
#include <errno.h>

#include "formats/qcow2/qcow2.h"

/* Queues the release of whatever host clusters one L2 entry maps. */
static int free_entry(Qcow2State *s, const Qcow2L2Entry *e)
{
    if (s->has_data_file) {
        return 0;   /* data clusters of a data file are not refcounted */
    }
    if (e->type == QCOW2_CLUSTER_COMPRESSED) {
        return qcow2_free_compressed_deferred(s, e);
    }
    if ((e->type == QCOW2_CLUSTER_NORMAL ||
         e->type == QCOW2_CLUSTER_ZERO_ALLOC) && e->host_offset) {
        return qcow2_free_clusters_deferred(s, e->host_offset, 1);
    }
    return 0;
}

static int empty_one_table(Qcow2State *s, uint64_t l1i)
{
    uint64_t l2off = s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK;
    uint64_t l1e = s->l1_table[l1i];
    uint64_t guest = l1i << (s->cluster_bits + s->l2_bits);
    uint64_t refcount = 0;
    uint8_t *t = NULL;
    uint64_t idx;
    int ret;

    if (!l2off) {
        if (!l1e) {
            return 0;
        }
        s->l1_table[l1i] = 0;
        return qcow2_write_l1(s, l1i, 1);
    }
    ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &refcount);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_get_l2_table(s, guest, false, &t, &idx);
    if (ret < 0) {
        return ret;
    }
    s->l1_table[l1i] = 0;
    ret = qcow2_write_l1(s, l1i, 1);
    if (ret < 0) {
        s->l1_table[l1i] = l1e;
        qcow2_cache_put(&s->l2_cache, &t);
        return ret;
    }
    /* The data clusters lose a reference only when the table itself goes
     * away; a table shared with a snapshot keeps pointing at them. */
    if (t && refcount == 1) {
        for (uint64_t i = 0; i < s->l2_entries && ret >= 0; i++) {
            Qcow2L2Entry e;
            qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, i),
                                  qcow2_l2_get_bitmap(s, t, i), &e);
            ret = free_entry(s, &e);
        }
    }
    if (t) {
        qcow2_cache_put(&s->l2_cache, &t);
    }
    if (refcount == 1) {
        qcow2_cache_discard(&s->l2_cache, l2off);
    }
    if (ret >= 0) {
        ret = qcow2_free_clusters_deferred(s, l2off, 1);
    }
    return ret;
}

/* Gives the freed space back like QEMU's emptied images do: the file is
 * cut after the last cluster still in use.  Runs after the refcounts are
 * on disk, so only free clusters are cut. */
void qcow2_cut_free_tail(Qcow2State *s)
{
    uint64_t last = s->alloc_end;
    int ret = 0;
    while (last > 1) {
        uint64_t rc;
        ret = qcow2_get_refcount(s, last - 1, &rc);
        if (ret < 0 || rc) {
            break;
        }
        last--;
    }
    int64_t flen = block_get_length(block_file(s->node));
    if (ret >= 0 && flen > 0 && (uint64_t)flen > last << s->cluster_bits) {
        Error err = { 0 };
        if (block_truncate(block_file(s->node), last << s->cluster_bits, true,
                           PREALLOC_OFF, &err) >= 0) {
            s->alloc_end = last;
            if (s->free_cluster_index > last) {
                s->free_cluster_index = last;
            }
        }
    }
}

int qcow2_make_empty(BlockNode *n)
{
    Qcow2State *s = qcow2_state(n);
    int ret = 0;

    if (s->read_only) {
        return -EACCES;
    }
    pthread_mutex_lock(&s->lock);
    for (uint64_t i = 0; i < s->l1_size && ret >= 0; i++) {
        ret = empty_one_table(s, i);
    }
    if (ret >= 0) {
        ret = qcow2_flush_caches(s);
    }
    if (ret >= 0) {
        qcow2_cut_free_tail(s);
    }
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? ret : 0;
}
