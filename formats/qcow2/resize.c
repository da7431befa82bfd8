/*
 * resize.c - growing (with optional preallocation) and shrinking qcow2
 * images.
 *
 * Growing may need a larger L1 table: the new table is written and
 * flushed before one header write switches to it, then the old one is
 * freed.  Shrinking frees the clusters beyond the new end first, then
 * writes the smaller size; a crash in between leaves only leaks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

static int grow_l1(Qcow2State *s, uint64_t new_size)
{
    uint64_t bytes = new_size * 8;
    uint64_t clusters = (bytes + s->cluster_size - 1) >> s->cluster_bits;
    uint64_t *nt;
    uint8_t *buf, hdr[12];
    int ret;

    if (bytes > QCOW2_MAX_L1_BYTES) {
        return -EFBIG;
    }
    int64_t off = qcow2_alloc_clusters(s, clusters);
    if (off < 0) {
        return (int)off;
    }
    nt = calloc(new_size, 8);
    buf = calloc(1, bytes);
    if (!nt || !buf) {
        free(nt);
        free(buf);
        return -ENOMEM;
    }
    memcpy(nt, s->l1_table, (size_t)s->l1_size * 8);
    for (uint64_t i = 0; i < new_size; i++) {
        qcow2_put_be64(buf + 8 * i, nt[i]);
    }
    /* Refcounts for the new table first, then the table, then the
     * header switches to it. */
    ret = qcow2_cache_writeback(&s->refcount_cache);
    if (ret >= 0) {
        ret = block_pwrite(block_file(s->node), (uint64_t)off, bytes, buf, 0);
    }
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    free(buf);
    if (ret < 0) {
        free(nt);
        return ret;
    }
    s->refcount_unflushed = false;
    qcow2_put_be32(hdr, (uint32_t)new_size);
    qcow2_put_be64(hdr + 4, (uint64_t)off);
    ret = block_pwrite(block_file(s->node), QCOW2_HDR_L1_SIZE, 12, hdr, 0);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        free(nt);
        return ret;
    }
    uint64_t old_off = s->l1_table_offset;
    uint64_t old_clusters = ((uint64_t)s->l1_size * 8 + s->cluster_size - 1)
                            >> s->cluster_bits;
    free(s->l1_table);
    s->l1_table = nt;
    s->l1_size = (uint32_t)new_size;
    s->l1_table_offset = (uint64_t)off;
    if (old_clusters && old_off) {
        ret = qcow2_update_refcount(s, old_off,
                                    old_clusters << s->cluster_bits, -1);
    }
    return ret;
}

static int write_size(Qcow2State *s, uint64_t size)
{
    uint8_t b[8];
    qcow2_put_be64(b, size);
    int ret = block_pwrite(block_file(s->node), QCOW2_HDR_SIZE, 8, b, 0);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret >= 0) {
        s->size = size;
    }
    return ret < 0 ? ret : 0;
}

/* Makes a freshly allocated host run read as zeroes and, for falloc/full,
 * really reserves it.  Part of it may already be inside the file (reused
 * clusters, or metadata placed after it extended the file). */
static int reserve_run(Qcow2State *s, uint64_t host, uint64_t len,
                       uint64_t old_file_len, PreallocMode pm)
{
    BlockNode *f = block_file(s->node);
    int64_t cur = block_get_length(f);
    int ret = 0;

    if (cur < 0) {
        return (int)cur;
    }
    uint64_t inside = (uint64_t)cur > host ? (uint64_t)cur - host : 0;
    if (inside > len) {
        inside = len;
    }
    if (inside) {
        if (pm == PREALLOC_FULL) {
            uint64_t chunk = inside < (1u << 20) ? inside : (1u << 20);
            uint8_t *z = calloc(1, chunk);
            if (!z) {
                return -ENOMEM;
            }
            for (uint64_t o = 0; o < inside && ret >= 0; o += chunk) {
                uint64_t l = inside - o < chunk ? inside - o : chunk;
                ret = block_pwrite(f, host + o, l, z, 0);
            }
            free(z);
        } else if (pm == PREALLOC_FALLOC || host < old_file_len) {
            ret = block_write_zeroes(f, host, inside, 0);
        }
        if (ret < 0) {
            return ret;
        }
    }
    if (inside < len) {
        Error terr = { 0 };
        ret = block_truncate(f, host + len, false,
                             pm == PREALLOC_METADATA ? PREALLOC_OFF : pm,
                             &terr);
    }
    return ret < 0 ? ret : 0;
}

/* Maps every unallocated cluster of [start, end) to a new host cluster
 * (contiguous runs, L2 table first as QEMU lays them out). */
static int preallocate(Qcow2State *s, uint64_t start, uint64_t end,
                       uint64_t old_file_len, PreallocMode pm)
{
    uint64_t cs = s->cluster_size;
    uint64_t pos = start & ~(cs - 1);
    int ret = 0;

    while (pos < end) {
        uint64_t table_end = ((pos >> (s->cluster_bits + s->l2_bits)) + 1)
                             << (s->cluster_bits + s->l2_bits);
        uint64_t stop = end < table_end ? qcow2_align_up(end, cs) : table_end;
        uint8_t *t;
        uint64_t idx;
        ret = qcow2_get_l2_table(s, pos, true, &t, &idx);
        if (ret < 0) {
            return ret;
        }
        /* Count the unallocated clusters in this table's part. */
        uint64_t need = 0;
        for (uint64_t c = pos, i = idx; c < stop; c += cs, i++) {
            Qcow2L2Entry e;
            qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, i),
                                  qcow2_l2_get_bitmap(s, t, i), &e);
            need += e.type == QCOW2_CLUSTER_UNALLOCATED ||
                    e.type == QCOW2_CLUSTER_ZERO_PLAIN;
        }
        uint64_t host = 0;
        if (need && !s->has_data_file) {
            int64_t h = qcow2_alloc_clusters(s, need);
            if (h < 0) {
                qcow2_cache_put(&s->l2_cache, &t);
                return (int)h;
            }
            host = (uint64_t)h;
            ret = reserve_run(s, host, need * cs, old_file_len, pm);
            if (ret < 0) {
                qcow2_cache_put(&s->l2_cache, &t);
                return ret;
            }
        }
        for (uint64_t c = pos, i = idx; c < stop && need; c += cs, i++) {
            Qcow2L2Entry e;
            qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, i),
                                  qcow2_l2_get_bitmap(s, t, i), &e);
            if (e.type != QCOW2_CLUSTER_UNALLOCATED &&
                e.type != QCOW2_CLUSTER_ZERO_PLAIN) {
                continue;
            }
            uint64_t h = s->has_data_file ? c : host;
            qcow2_l2_set(s, t, i, h | QCOW2_OFLAG_COPIED,
                         s->extended_l2 ? QCOW2_L2B_ALLOC_MASK : 0);
            host += cs;
        }
        qcow2_cache_mark_dirty(&s->l2_cache, t);
        qcow2_cache_put(&s->l2_cache, &t);
        pos = stop;
    }
    return 0;
}

/* Is the refcount block at off (reftable index rti) free of references
 * but its own (when it describes its own cluster)? */
static int refblock_unused(Qcow2State *s, uint64_t rti, uint64_t off,
                           bool *unused)
{
    uint64_t self = off >> s->cluster_bits;
    bool self_here = qcow2_reftable_index(s, self) == rti;
    uint8_t *block;
    int ret = qcow2_cache_get(&s->refcount_cache, off, &block);
    if (ret < 0) {
        return ret;
    }
    *unused = true;
    for (uint64_t i = 0; i < s->refblock_entries && *unused; i++) {
        if (qcow2_refblock_get(s, block, i) &&
            !(self_here && i == qcow2_refblock_index(s, self))) {
            *unused = false;
        }
    }
    qcow2_cache_put(&s->refcount_cache, &block);
    return 0;
}

/* As QEMU after a shrink: refcount blocks that count no cluster in use
 * leave the table and are freed, so that the file can end at its last
 * used cluster (a preallocated image keeps refcount blocks out at the
 * old end).  The table goes to disk before a block's own reference is
 * dropped: a crash in between leaks that cluster, nothing worse.
 * Repeats while dropping one frees the block that counted it. */
static int shrink_reftable(Qcow2State *s)
{
    for (bool again = true; again;) {
        again = false;
        for (uint64_t rti = 1; rti < s->refcount_table_size; rti++) {
            int64_t off = qcow2_refblock_offset(s, rti);
            bool unused = false;
            if (off < 0) {
                return (int)off;
            }
            if (off == 0) {
                continue;
            }
            int ret = refblock_unused(s, rti, (uint64_t)off, &unused);
            if (ret < 0) {
                return ret;
            }
            if (!unused) {
                continue;
            }
            uint64_t self = (uint64_t)off >> s->cluster_bits;
            bool self_here = qcow2_reftable_index(s, self) == rti;
            s->refcount_table[rti] = 0;
            s->refcount_table_gen++;
            ret = qcow2_write_reftable(s, rti, 1);
            if (ret >= 0) {
                ret = block_flush(block_file(s->node));
            }
            if (ret < 0) {
                return ret;
            }
            qcow2_cache_discard(&s->refcount_cache, (uint64_t)off);
            if (!self_here) {
                ret = qcow2_update_refcount(s, (uint64_t)off, s->cluster_size,
                                            -1);
                if (ret < 0) {
                    return ret;
                }
                again = true;
            }
        }
    }
    return qcow2_flush_caches(s);
}

static int shrink(Qcow2State *s, uint64_t size, Error *err)
{
    uint64_t cs = s->cluster_size;
    uint64_t l2_span = cs << s->l2_bits;
    uint64_t a = qcow2_align_up(size, cs);
    int ret;

    for (uint64_t pos = a; pos < s->size;) {
        uint64_t table_end = (pos / l2_span + 1) * l2_span;
        uint64_t stop = s->size < table_end ? qcow2_align_up(s->size, cs)
                                            : table_end;
        uint8_t *t;
        uint64_t idx;
        ret = qcow2_get_l2_table(s, pos, false, &t, &idx);
        if (ret < 0) {
            return error_setf(err, -ret, "cannot read an L2 table: %s",
                              strerror(-ret));
        }
        if (t) {
            qcow2_cache_put(&s->l2_cache, &t);
            ret = qcow2_get_l2_table(s, pos, true, &t, &idx);
            if (ret < 0) {
                return error_setf(err, -ret, "cannot update an L2 table: %s",
                                  strerror(-ret));
            }
            for (uint64_t c = pos, i = idx; c < stop; c += cs, i++) {
                Qcow2L2Entry e;
                qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, i),
                                      qcow2_l2_get_bitmap(s, t, i), &e);
                qcow2_l2_set(s, t, i, 0, 0);
                if (s->has_data_file) {
                    continue;
                }
                if (e.type == QCOW2_CLUSTER_COMPRESSED) {
                    ret = qcow2_free_compressed_deferred(s, &e);
                } else if (e.type == QCOW2_CLUSTER_NORMAL ||
                           e.type == QCOW2_CLUSTER_ZERO_ALLOC) {
                    ret = qcow2_free_clusters_deferred(s, e.host_offset, 1);
                }
                if (ret < 0) {
                    qcow2_cache_put(&s->l2_cache, &t);
                    return error_setf(err, -ret, "cannot free clusters: %s",
                                      strerror(-ret));
                }
            }
            qcow2_cache_mark_dirty(&s->l2_cache, t);
            qcow2_cache_put(&s->l2_cache, &t);
        }
        pos = stop;
    }
    /* L2 tables wholly beyond the new end. */
    uint64_t first_l1 = (size + l2_span - 1) / l2_span;
    for (uint64_t i = first_l1; i < s->l1_size; i++) {
        uint64_t l2 = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        ret = qcow2_cache_writeback(&s->l2_cache);
        if (ret >= 0) {
            ret = block_flush(block_file(s->node));
        }
        s->l1_table[i] = 0;
        if (ret >= 0) {
            ret = qcow2_write_l1(s, i, 1);
        }
        if (ret >= 0) {
            qcow2_cache_discard(&s->l2_cache, l2);
            ret = qcow2_free_clusters_deferred(s, l2, 1);
        }
        if (ret < 0) {
            return error_setf(err, -ret, "cannot free an L2 table: %s",
                              strerror(-ret));
        }
    }
    ret = write_size(s, size);
    if (ret >= 0) {
        ret = qcow2_flush_caches(s);
    }
    if (ret >= 0 && !s->has_data_file) {
        ret = shrink_reftable(s);
    }
    if (ret < 0) {
        return error_setf(err, -ret, "cannot shrink the image: %s",
                          strerror(-ret));
    }
    qcow2_cut_free_tail(s);
    return 0;
}

int qcow2_truncate(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                   Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret = 0;

    if (size % 512) {
        return error_setf(err, EINVAL, "The new size must be a multiple of "
                          "512");
    }
    if (s->read_only) {
        return error_setf(err, EACCES, "image is read-only");
    }
    pthread_mutex_lock(&s->lock);
    while (s->inflight) {
        pthread_cond_wait(&s->inflight_cond, &s->lock);
    }
    if (s->nb_snapshots && s->version < 3 && size != s->size) {
        /* v2 snapshot entries do not record their own size. */
        pthread_mutex_unlock(&s->lock);
        return error_setf(err, ENOTSUP, "Can't resize a v2 image which has "
                          "snapshots");
    }
    if (size < s->size) {
        /* Snapshots keep their clusters: shared L2 tables are copied
         * before entries are cleared, shared data only loses the active
         * state's reference. */
        if (pm != PREALLOC_OFF) {
            ret = error_setf(err, ENOTSUP, "Preallocation can't be used for "
                             "shrinking an image");
        } else {
            ret = shrink(s, size, err);
        }
        pthread_mutex_unlock(&s->lock);
        return ret;
    }
    if (size == s->size && pm == PREALLOC_OFF) {
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    uint64_t need_l1 = (size + l2_span - 1) / l2_span;
    if (need_l1 > s->l1_size) {
        ret = grow_l1(s, need_l1);
        if (ret < 0) {
            pthread_mutex_unlock(&s->lock);
            /* qemu-img's words (create checks the size beforehand) */
            return error_setf(err, -ret, "Failed to grow the L1 table: %s",
                              strerror(-ret));
        }
    }
    /* Same size with preallocation (create): preallocate all of it. */
    uint64_t old_size = size == s->size ? 0 : s->size;
    if (s->has_data_file) {
        int64_t dlen = block_get_length(block_data_file(n));
        if (dlen >= 0 && (uint64_t)dlen < size) {
            ret = block_truncate(block_data_file(n), size, false,
                                 pm == PREALLOC_METADATA ? PREALLOC_OFF : pm,
                                 err);
            if (ret < 0) {
                pthread_mutex_unlock(&s->lock);
                return ret;
            }
        }
    }
    if (pm != PREALLOC_OFF) {
        int64_t flen = block_get_length(block_file(n));
        ret = preallocate(s, old_size, size, flen < 0 ? 0 : (uint64_t)flen,
                          pm);
        if (ret >= 0) {
            ret = qcow2_flush_caches(s);
        }
        if (ret >= 0 && !s->has_data_file) {
            /* Reads of preallocated clusters must stay inside the file. */
            uint64_t want = s->alloc_end << s->cluster_bits;
            int64_t cur = block_get_length(block_file(n));
            if (cur >= 0 && (uint64_t)cur < want) {
                ret = block_truncate(block_file(n), want, false,
                                     pm == PREALLOC_METADATA ? PREALLOC_OFF
                                                             : pm, err);
            }
        }
        if (ret < 0) {
            pthread_mutex_unlock(&s->lock);
            return error_is_set(err) ? ret
                   : error_setf(err, -ret, "preallocation failed: %s",
                                strerror(-ret));
        }
    }
    ret = write_size(s, size);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot write the new size: %s",
                          strerror(-ret));
    }
    (void)exact;
    return 0;
}
