/*
 * refcount-free.c - dropping qcow2 cluster references once it is safe.
 *
 * A reference is dropped only after the metadata that stopped pointing
 * at the cluster is on disk: the decrement is queued (pending frees,
 * adjacent runs merged) and applied after the L2 tables are written back
 * and the file flushed.  A crash in between leaks the cluster; it never
 * leaves on-disk metadata pointing at a free cluster, which could be
 * reallocated and overwritten while the old table still maps it.  This
 * holds with lazy refcounts too.  All functions need s->lock.
 */
#include <errno.h>
#include <stdlib.h>

#include "formats/qcow2/qcow2.h"

int qcow2_free_clusters_deferred(Qcow2State *s, uint64_t offset, uint64_t nb)
{
    if (nb == 0) {
        return 0;
    }
    /* Deferred even with lazy refcounts: the refcounts are rebuilt after a
     * crash, but a cluster freed at once could be reallocated and
     * overwritten while the on-disk L2 table still maps it to its old
     * guest offset, exposing new data there. */
    if (s->nb_pending_frees) {
        Qcow2PendingFree *last = &s->pending_frees[s->nb_pending_frees - 1];
        if (last->offset + (last->nb_clusters << s->cluster_bits) == offset) {
            last->nb_clusters += nb;
            return 0;
        }
    }
    if (s->nb_pending_frees == s->cap_pending_frees) {
        size_t cap = s->cap_pending_frees ? s->cap_pending_frees * 2 : 64;
        Qcow2PendingFree *n = realloc(s->pending_frees, cap * sizeof(*n));
        if (!n) {
            return -ENOMEM;
        }
        s->pending_frees = n;
        s->cap_pending_frees = cap;
    }
    s->pending_frees[s->nb_pending_frees].offset = offset;
    s->pending_frees[s->nb_pending_frees].nb_clusters = nb;
    s->nb_pending_frees++;
    if (s->nb_pending_frees >= 4096) {
        return qcow2_apply_pending_frees(s);
    }
    return 0;
}

int qcow2_free_compressed_deferred(Qcow2State *s, const Qcow2L2Entry *e)
{
    uint64_t first = e->host_offset & ~(s->cluster_size - 1);
    uint64_t last = (e->host_offset + e->compressed_size - 1) &
                    ~(s->cluster_size - 1);
    return qcow2_free_clusters_deferred(s, first,
                                        ((last - first) >> s->cluster_bits)
                                        + 1);
}

void qcow2_take_pending_frees(Qcow2State *s, Qcow2PendingFree **list,
                              size_t *n)
{
    *list = s->pending_frees;
    *n = s->nb_pending_frees;
    s->pending_frees = NULL;
    s->nb_pending_frees = 0;
    s->cap_pending_frees = 0;
}

int qcow2_apply_frees(Qcow2State *s, Qcow2PendingFree *list, size_t n)
{
    int ret = 0;

    for (size_t i = 0; i < n && ret >= 0; i++) {
        ret = qcow2_update_refcount(s, list[i].offset,
                                    list[i].nb_clusters << s->cluster_bits,
                                    -1);
    }
    free(list);
    return ret;
}

int qcow2_apply_pending_frees(Qcow2State *s)
{
    int ret;

    if (!s->nb_pending_frees) {
        return 0;
    }
    ret = qcow2_cache_writeback(&s->l2_cache);
    if (ret >= 0) {
        /* so that refcount_unflushed may be cleared below */
        ret = qcow2_cache_writeback(&s->refcount_cache);
    }
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        return ret;
    }
    s->refcount_unflushed = false;
    Qcow2PendingFree *list;
    size_t n;
    qcow2_take_pending_frees(s, &list, &n);
    return qcow2_apply_frees(s, list, n);
}
