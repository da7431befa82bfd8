/*
 * zero.c - qcow2 zero writes and discard.
 *
 * Whole clusters (or subclusters, with extended L2) change only metadata:
 * a zero flag, or an unallocated entry where nothing can show through.
 * Unaligned edges are zeroed whole when they already read as zero (as
 * QEMU does), else written as zeroes.  v2 has no zero flag: clusters are
 * deallocated where no backing file shows through, written as zeroes
 * otherwise; a discard in v2 with a backing file leaves the data.  Every
 * metadata change waits for in-flight allocations of its range and holds
 * s->lock; references dropped are freed once the L2 change is on disk.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/write-int.h"

static int write_zero_buffer(BlockNode *n, uint64_t off, uint64_t len)
{
    uint64_t chunk = len < (1u << 20) ? len : (1u << 20);
    uint8_t *z = calloc(1, chunk ? chunk : 1);
    int ret = 0;

    if (!z) {
        return -ENOMEM;
    }
    while (len > 0 && ret >= 0) {
        uint64_t l = len < chunk ? len : chunk;
        ret = qcow2_pwrite(n, off, l, z, 0);
        off += l;
        len -= l;
    }
    free(z);
    return ret < 0 ? ret : 0;
}

/* Does [off, off+len) already read as zero (this layer, and the backing
 * chain where this layer is unallocated)?  Needs s->lock; the backing
 * nodes have their own locks and never call back into us. */
static int reads_zero(BlockNode *n, uint64_t off, uint64_t len, bool *zero)
{
    Qcow2State *s = qcow2_state(n);
    *zero = true;
    while (len > 0) {
        Qcow2Extent x;
        int64_t got = qcow2_map_extent(s, off, len, &x);
        if (got < 0) {
            return (int)got;
        }
        if (x.type == QCOW2_SUBCLUSTER_UNALLOCATED && block_backing(n)) {
            int64_t blen = block_get_length(block_backing(n));
            if (blen < 0) {
                return (int)blen;
            }
            if (off < (uint64_t)blen) {
                uint64_t l = (uint64_t)got;
                if (off + l > (uint64_t)blen) {
                    l = (uint64_t)blen - off;
                }
                if (!block_is_zero_fast(block_backing(n), off, l)) {
                    *zero = false;
                    return 0;
                }
            }
        } else if (x.type != QCOW2_SUBCLUSTER_ZERO &&
                   x.type != QCOW2_SUBCLUSTER_UNALLOCATED) {
            *zero = false;
            return 0;
        }
        off += (uint64_t)got;
        len -= (uint64_t)got;
    }
    return 0;
}

enum { OP_ZERO, OP_ZERO_UNMAP, OP_DISCARD, OP_DEALLOC };

/* Applies op to whole clusters [start, end), under s->lock. */
static int cluster_op(Qcow2State *s, uint64_t start, uint64_t end, int op)
{
    uint64_t cs = s->cluster_size;
    BlockNode *n = s->node;
    int ret = 0;

    qcow2_wait_inflight(s, start, end);
    ret = qcow2_mark_dirty(s);
    while (ret >= 0 && start < end) {
        uint64_t table_end = ((start >> (s->cluster_bits + s->l2_bits)) + 1)
                             << (s->cluster_bits + s->l2_bits);
        uint64_t stop = end < table_end ? end : table_end;
        uint8_t *t;
        uint64_t idx;
        bool need_table = op == OP_ZERO || op == OP_ZERO_UNMAP ||
                          (op == OP_DISCARD && block_backing(n) &&
                           s->version >= 3);
        ret = qcow2_get_l2_table(s, start, false, &t, &idx);
        if (ret < 0) {
            break;
        }
        if (!t && !need_table) {
            start = stop;
            continue;
        }
        if (!t || !(s->l1_table[start >> (s->cluster_bits + s->l2_bits)] &
                    QCOW2_OFLAG_COPIED)) {
            qcow2_cache_put(&s->l2_cache, &t);
            ret = qcow2_get_l2_table(s, start, true, &t, &idx);
            if (ret < 0) {
                break;
            }
        }
        for (uint64_t c = start; c < stop; c += cs, idx++) {
            Qcow2L2Entry old;
            uint64_t ne = 0, nb = 0;
            bool free_it = false;
            qcow2_entry_in_table(s, t, idx, &old);
            /* Anything but a plain unallocated entry (even a zero one)
             * keeps reading as zero after a discard, as in QEMU. */
            bool allocated = old.entry || old.bitmap;
            switch (op) {
            case OP_ZERO:
            case OP_ZERO_UNMAP: {
                bool keep = op == OP_ZERO && qcow2_cluster_in_place(s, &old);
                if (keep) {
                    ne = old.entry & (QCOW2_L2E_OFFSET_MASK |
                                      QCOW2_OFLAG_COPIED);
                } else {
                    free_it = true;
                }
                if (s->extended_l2) {
                    nb = QCOW2_L2B_ALL_ZERO;
                } else {
                    ne |= QCOW2_OFLAG_ZERO;
                }
                break;
            }
            case OP_DISCARD:
                free_it = true;
                if (block_backing(n) || allocated) {
                    if (s->extended_l2) {
                        nb = QCOW2_L2B_ALL_ZERO;
                    } else if (s->version >= 3) {
                        ne = QCOW2_OFLAG_ZERO;
                    }
                }
                break;
            default: /* OP_DEALLOC */
                free_it = true;
                break;
            }
            if (ne == old.entry && nb == old.bitmap) {
                continue;
            }
            qcow2_l2_set(s, t, idx, ne, nb);
            if (free_it) {
                ret = qcow2_free_old_host(s, &old);
                if (ret < 0) {
                    break;
                }
            }
        }
        qcow2_cache_mark_dirty(&s->l2_cache, t);
        qcow2_cache_put(&s->l2_cache, &t);
        start = stop;
    }
    return ret;
}

/* Zero flags for whole subclusters [a, b) of one cluster (extended L2);
 * returns false (nothing done) when the cluster is not ours to change. */
static int subcluster_zero(Qcow2State *s, uint64_t a, uint64_t b, bool *done)
{
    uint64_t cs = s->cluster_size;
    uint64_t cstart = a & ~(cs - 1);
    uint8_t *t;
    uint64_t idx;
    Qcow2L2Entry e;
    int ret;

    *done = false;
    qcow2_wait_inflight(s, cstart, cstart + cs);
    ret = qcow2_get_l2_entry(s, cstart, &e);
    if (ret < 0) {
        return ret;
    }
    if (!(e.type == QCOW2_CLUSTER_UNALLOCATED || qcow2_cluster_in_place(s, &e))) {
        return 0;
    }
    ret = qcow2_mark_dirty(s);
    if (ret >= 0) {
        ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
    }
    if (ret < 0) {
        return ret;
    }
    qcow2_entry_in_table(s, t, idx, &e);
    uint64_t m = qcow2_subcluster_mask(s, a, b);
    qcow2_l2_set(s, t, idx, e.entry, (e.bitmap & ~m) | (m << 32));
    qcow2_cache_mark_dirty(&s->l2_cache, t);
    qcow2_cache_put(&s->l2_cache, &t);
    *done = true;
    return 0;
}

/* v2 images: part of one cluster [a, b) is zeroed by writing zeroes,
 * unless it already reads as zero. */
static int zero_partial_v2(BlockNode *n, uint64_t a, uint64_t b)
{
    Qcow2State *s = qcow2_state(n);
    bool zero;
    int ret;

    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, a & ~(s->cluster_size - 1),
                        qcow2_align_up(b, s->cluster_size));
    ret = reads_zero(n, a, b - a, &zero);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0 || zero) {
        return ret;
    }
    return write_zero_buffer(n, a, b - a);
}

static int write_zeroes_v2(BlockNode *n, uint64_t off, uint64_t end)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    uint64_t a = qcow2_align_up(off, cs);
    uint64_t b = end == s->size ? qcow2_align_up(end, cs) : end & ~(cs - 1);
    int ret = 0;

    if (a >= b) {
        uint64_t mid = a < end ? a : end;
        ret = zero_partial_v2(n, off, mid);
        if (ret >= 0 && mid < end) {
            ret = zero_partial_v2(n, mid, end);
        }
        return ret;
    }
    if (off < a) {
        ret = zero_partial_v2(n, off, a);
    }
    if (ret >= 0) {
        /* No zero flag: without a backing file, unallocated reads zero. */
        pthread_mutex_lock(&s->lock);
        ret = cluster_op(s, a, b, OP_DEALLOC);
        pthread_mutex_unlock(&s->lock);
    }
    if (ret >= 0 && b < end) {
        ret = zero_partial_v2(n, b, end);
    }
    return ret < 0 ? ret : 0;
}

/* Zero flags for the unit-aligned range [a, b) (v3). */
static int zero_aligned(BlockNode *n, uint64_t a, uint64_t b, int op)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    int ret = 0;

    while (ret >= 0 && a < b) {
        uint64_t cstart = a & ~(cs - 1);
        uint64_t cend = cstart + cs;
        if (a == cstart && (b >= cend || b == s->size)) {
            /* Whole clusters. */
            uint64_t stop = b >= cend ? (b & ~(cs - 1)) : cend;
            if (b == s->size) {
                stop = qcow2_align_up(b, cs);
            }
            pthread_mutex_lock(&s->lock);
            ret = cluster_op(s, a, stop, op);
            pthread_mutex_unlock(&s->lock);
            a = stop;
            continue;
        }
        /* Whole subclusters inside one cluster (extended L2 only). */
        uint64_t stop = b < cend ? b : cend;
        bool done = false;
        pthread_mutex_lock(&s->lock);
        ret = subcluster_zero(s, a, stop, &done);
        pthread_mutex_unlock(&s->lock);
        if (ret >= 0 && !done) {
            ret = write_zero_buffer(n, a, stop - a);
        }
        a = stop;
    }
    return ret;
}

/* Zeroes the whole unit [us, ue) (a cluster, or a subcluster with
 * extended L2) if it already reads as zero; *done says whether it did.
 * The check and the metadata change happen under one hold of s->lock
 * after in-flight allocations of the cluster finished, so a concurrent
 * write into another part of the unit cannot be lost. */
static int zero_edge(BlockNode *n, uint64_t us, uint64_t ue, int op,
                     bool *done)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    uint64_t cstart = us & ~(cs - 1);
    bool zero;
    int ret;

    *done = false;
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, cstart, cstart + cs);
    ret = reads_zero(n, us, ue - us, &zero);
    if (ret >= 0 && zero) {
        if (us == cstart && (ue == cstart + cs || ue == s->size)) {
            ret = cluster_op(s, cstart, cstart + cs, op);
            *done = ret >= 0;
        } else {
            ret = subcluster_zero(s, us, ue, done);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* An unaligned edge [a, b) of the unit [us, ue): the unit is zeroed
 * whole when it already reads as zero (*done), else [a, b) is written
 * as zeroes. */
static int zero_unaligned(BlockNode *n, uint64_t us, uint64_t ue,
                          uint64_t a, uint64_t b, int op, bool *done)
{
    int ret = zero_edge(n, us, ue, op, done);
    if (ret >= 0 && !*done) {
        ret = write_zero_buffer(n, a, b - a);
    }
    return ret;
}

int qcow2_write_zeroes(BlockNode *n, uint64_t off, uint64_t len, int flags)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t end = off + len;
    int ret = 0;

    if (s->read_only) {
        return -EACCES;
    }
    if (s->data_file_raw || (s->version < 3 && block_backing(n))) {
        /* The raw data file must hold the zeroes itself; v2 has no zero
         * flag to hide backing data. */
        if (flags & BLOCK_REQ_NO_FALLBACK) {
            return -ENOTSUP;
        }
        return write_zero_buffer(n, off, len);
    }
    if (s->version < 3) {
        return write_zeroes_v2(n, off, end);
    }
    int op = (flags & BLOCK_REQ_MAY_UNMAP) ? OP_ZERO_UNMAP : OP_ZERO;
    uint64_t unit = s->subcluster_size;

    /* Unaligned edges: a unit that already reads as zero is zeroed whole
     * (as QEMU does); otherwise its part is written as zeroes. */
    if (off % unit) {
        uint64_t us = off - off % unit;
        uint64_t ue = us + unit < s->size ? us + unit : s->size;
        uint64_t stop = end < ue ? end : ue;
        bool done;
        ret = zero_unaligned(n, us, ue, off, stop, op, &done);
        if (ret < 0) {
            return ret;
        }
        off = done ? ue : stop;
        if (end < off) {
            end = off;
        }
    }
    if (off < end && end % unit && end != s->size) {
        uint64_t us = end - end % unit;
        uint64_t ue = us + unit < s->size ? us + unit : s->size;
        uint64_t from = off > us ? off : us;
        bool done;
        ret = zero_unaligned(n, us, ue, from, end, op, &done);
        if (ret < 0) {
            return ret;
        }
        end = from;
    }
    if (off < end) {
        ret = zero_aligned(n, off, end, op);
    }
    return ret < 0 ? ret : 0;
}

int qcow2_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    uint64_t a = qcow2_align_up(off, cs);
    uint64_t end = off + len;
    uint64_t b = end & ~(cs - 1);
    int ret;

    if (s->read_only) {
        return -EACCES;
    }
    /* A tail cluster cut by the end of the image counts as whole. */
    if (end == s->size) {
        b = qcow2_align_up(end, cs);
    }
    /* v2 cannot hide backing data behind a discarded cluster: QEMU leaves
     * the data in place, and so do we. */
    if (a >= b || s->data_file_raw || (s->version < 3 && block_backing(n))) {
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    ret = cluster_op(s, a, b, OP_DISCARD);
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? ret : 0;
}
