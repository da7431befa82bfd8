/*
 * cluster.c - the guest-to-host mapping: L1 table, L2 tables, entry
 * decoding.
 *
 * The active L1 table lives in memory and is written through; L2 tables go
 * through the metadata cache.  A new L2 table is on disk (with its
 * refcount) before the L1 entry that points at it is written.  A shared L2
 * table (no COPIED flag: a snapshot references it) is copied before it is
 * modified.  All functions need s->lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

void qcow2_decode_l2_entry(const Qcow2State *s, uint64_t entry,
                           uint64_t bitmap, Qcow2L2Entry *out)
{
    memset(out, 0, sizeof(*out));
    out->entry = entry;
    out->bitmap = bitmap;
    out->copied = entry & QCOW2_OFLAG_COPIED;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
        out->type = QCOW2_CLUSTER_COMPRESSED;
        out->host_offset = entry & s->coffset_mask;
        out->compressed_size = sectors * 512 - (out->host_offset & 511);
        return;
    }
    uint64_t off = entry & QCOW2_L2E_OFFSET_MASK;
    /* Offset 0 is a valid data cluster only in an external data file. */
    bool has_cluster = off || (s->has_data_file && out->copied);
    out->host_offset = off;
    if (!s->extended_l2 && (entry & QCOW2_OFLAG_ZERO)) {
        out->type = has_cluster ? QCOW2_CLUSTER_ZERO_ALLOC
                                : QCOW2_CLUSTER_ZERO_PLAIN;
    } else if (has_cluster) {
        out->type = QCOW2_CLUSTER_NORMAL;
    } else {
        out->type = QCOW2_CLUSTER_UNALLOCATED;
    }
}

Qcow2SubclusterType qcow2_subcluster_type(const Qcow2State *s,
                                          const Qcow2L2Entry *e, int sc)
{
    if (e->type == QCOW2_CLUSTER_COMPRESSED) {
        return QCOW2_SUBCLUSTER_COMPRESSED;
    }
    if (!s->extended_l2) {
        switch (e->type) {
        case QCOW2_CLUSTER_UNALLOCATED:
            return QCOW2_SUBCLUSTER_UNALLOCATED;
        case QCOW2_CLUSTER_NORMAL:
            return QCOW2_SUBCLUSTER_DATA;
        default:
            return QCOW2_SUBCLUSTER_ZERO;
        }
    }
    bool alloc = (e->bitmap >> sc) & 1;
    bool zero = (e->bitmap >> (32 + sc)) & 1;
    if (alloc && zero) {
        return QCOW2_SUBCLUSTER_INVALID;
    }
    if (zero) {
        return QCOW2_SUBCLUSTER_ZERO;
    }
    if (alloc) {
        return e->type == QCOW2_CLUSTER_NORMAL ? QCOW2_SUBCLUSTER_DATA
                                               : QCOW2_SUBCLUSTER_INVALID;
    }
    return QCOW2_SUBCLUSTER_UNALLOCATED;
}

uint64_t qcow2_l2_get_entry(const Qcow2State *s, const uint8_t *table,
                            uint64_t idx)
{
    return qcow2_be64(table + idx * s->l2_entry_size);
}

uint64_t qcow2_l2_get_bitmap(const Qcow2State *s, const uint8_t *table,
                             uint64_t idx)
{
    return s->extended_l2 ? qcow2_be64(table + idx * 16 + 8) : 0;
}

void qcow2_l2_set(const Qcow2State *s, uint8_t *table, uint64_t idx,
                  uint64_t entry, uint64_t bitmap)
{
    qcow2_put_be64(table + idx * s->l2_entry_size, entry);
    if (s->extended_l2) {
        qcow2_put_be64(table + idx * 16 + 8, bitmap);
    }
}

/* Writes entries [first, first + n) of an in-memory table of big-endian
 * 64-bit entries (L1, refcount table) that lives at table_offset. */
int qcow2_write_table64(Qcow2State *s, const uint64_t *table,
                        uint64_t table_offset, uint64_t first, uint64_t n)
{
    uint8_t *buf;
    int ret;

    if (n == 0) {
        return 0;
    }
    buf = malloc(n * 8);
    if (!buf) {
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        qcow2_put_be64(buf + 8 * i, table[first + i]);
    }
    ret = block_pwrite(block_file(s->node), table_offset + first * 8, n * 8, buf,
                       0);
    free(buf);
    return ret < 0 ? ret : 0;
}

int qcow2_write_l1(Qcow2State *s, uint64_t first, uint64_t n)
{
    block_debug_event(block_file(s->node), BLOCK_EV_L1_UPDATE);
    return qcow2_write_table64(s, s->l1_table, s->l1_table_offset, first, n);
}

int qcow2_read_table64(Qcow2State *s, uint64_t offset, uint32_t n,
                       uint64_t **out)
{
    uint64_t *t = calloc(n ? n : 1, 8);
    int ret;

    if (!t) {
        return -ENOMEM;
    }
    if (n) {
        ret = block_pread(block_file(s->node), offset, (size_t)n * 8, t);
        if (ret < 0) {
            free(t);
            return ret;
        }
        for (uint32_t i = 0; i < n; i++) {
            t[i] = qcow2_be64((uint8_t *)&t[i]);
        }
    }
    *out = t;
    return 0;
}

int qcow2_read_l1(Qcow2State *s, uint64_t offset, uint32_t l1_size,
                  uint64_t **l1)
{
    return qcow2_read_table64(s, offset, l1_size, l1);
}

int qcow2_read_l2_table(Qcow2State *s, uint64_t offset, uint8_t *buf)
{
    int ret = block_pread(block_file(s->node), offset, s->cluster_size, buf);
    return ret < 0 ? ret : 0;
}

int qcow2_write_l2_table(Qcow2State *s, uint64_t offset, const uint8_t *buf)
{
    qcow2_cache_discard(&s->l2_cache, offset);
    int ret = block_pwrite(block_file(s->node), offset, s->cluster_size, buf, 0);
    return ret < 0 ? ret : 0;
}

static int check_l2_offset(Qcow2State *s, uint64_t l1i, uint64_t l2off)
{
    if (l2off % s->cluster_size) {
        qcow2_signal_corruption(s, "L2 table offset 0x%llx unaligned "
                                "(L1 index 0x%llx)",
                                (unsigned long long)l2off,
                                (unsigned long long)l1i);
        return -EIO;
    }
    return 0;
}

int qcow2_get_l2_table_cached(Qcow2State *s, uint64_t guest_offset,
                              uint8_t **table, uint64_t *index)
{
    uint64_t cluster = guest_offset >> s->cluster_bits;
    uint64_t l1i = cluster >> s->l2_bits;

    *table = NULL;
    *index = cluster & (s->l2_entries - 1);
    if (l1i >= s->l1_size) {
        return 1;
    }
    uint64_t l2off = s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK;
    if (!l2off) {
        return 1;
    }
    if (check_l2_offset(s, l1i, l2off) < 0) {
        return 0;   /* the slow path says why */
    }
    return qcow2_cache_peek(&s->l2_cache, l2off, table) ? 1 : 0;
}

int qcow2_get_l2_table(Qcow2State *s, uint64_t guest_offset, bool allocate,
                       uint8_t **table, uint64_t *index)
{
    uint64_t cluster = guest_offset >> s->cluster_bits;
    uint64_t l1i = cluster >> s->l2_bits;
    int ret;

    *table = NULL;
    *index = cluster & (s->l2_entries - 1);
    if (l1i >= s->l1_size) {
        return allocate ? -EIO : 0;
    }
    uint64_t l1e = s->l1_table[l1i];
    uint64_t l2off = l1e & QCOW2_L1E_OFFSET_MASK;
    if (l2off) {
        ret = check_l2_offset(s, l1i, l2off);
        if (ret < 0) {
            return ret;
        }
    }
    if (l2off && (!allocate || (l1e & QCOW2_OFLAG_COPIED))) {
        return qcow2_cache_get(&s->l2_cache, l2off, table);
    }
    if (!allocate) {
        return 0;
    }

    int64_t noff = qcow2_alloc_clusters(s, 1);
    if (noff < 0) {
        return (int)noff;
    }
    uint8_t *nt;
    ret = qcow2_cache_get_empty(&s->l2_cache, (uint64_t)noff, &nt);
    if (ret < 0) {
        return ret;
    }
    if (l2off) {
        /* Shared with a snapshot: copy it; the data clusters it points
         * at keep their counts (one per referencing table). */
        uint8_t *old;
        ret = qcow2_cache_get(&s->l2_cache, l2off, &old);
        if (ret < 0) {
            qcow2_cache_put(&s->l2_cache, &nt);
            return ret;
        }
        memcpy(nt, old, s->cluster_size);
        qcow2_cache_put(&s->l2_cache, &old);
    }
    /* The table and the refcount of its cluster on disk before the L1
     * entry, with one flush.  Neither depends on unflushed guest data (an
     * empty table, or a copy of a snapshot's, which is on disk), so the
     * other dirty tables need not go first. */
    ret = qcow2_cache_writeback(&s->refcount_cache);
    if (ret >= 0) {
        block_debug_event(block_file(s->node), BLOCK_EV_L2_ALLOC_WRITE);
        ret = block_pwrite(block_file(s->node), (uint64_t)noff, s->cluster_size,
                           nt, 0);
    }
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        /* No L1 entry points at the new table: its cluster is a leak, and
         * a cached copy left dirty would make every later flush retry a
         * write that failed (on a full disk, every one of them). */
        qcow2_cache_put(&s->l2_cache, &nt);
        qcow2_cache_discard(&s->l2_cache, (uint64_t)noff);
        return ret;
    }
    s->refcount_unflushed = false;
    s->l1_table[l1i] = (uint64_t)noff | QCOW2_OFLAG_COPIED;
    ret = qcow2_write_l1(s, l1i, 1);
    if (ret < 0) {
        s->l1_table[l1i] = l1e;
        qcow2_cache_put(&s->l2_cache, &nt);
        return ret;
    }
    if (l2off) {
        ret = qcow2_free_clusters_deferred(s, l2off, 1);
        if (ret < 0) {
            qcow2_cache_put(&s->l2_cache, &nt);
            return ret;
        }
    }
    *table = nt;
    return 0;
}

int qcow2_get_l2_entry(Qcow2State *s, uint64_t guest_offset,
                       Qcow2L2Entry *out)
{
    uint8_t *t;
    uint64_t idx;
    int ret = qcow2_get_l2_table(s, guest_offset, false, &t, &idx);

    if (ret < 0) {
        return ret;
    }
    if (!t) {
        qcow2_decode_l2_entry(s, 0, 0, out);
        return 0;
    }
    qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, idx),
                          qcow2_l2_get_bitmap(s, t, idx), out);
    qcow2_cache_put(&s->l2_cache, &t);
    return 0;
}
