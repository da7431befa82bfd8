/*
 * amend-compat.c - amend's version changes: compat=1.1 (amend_upgrade) and
 * compat=0.10 (amend_downgrade), and the walk over every L2 table they and the
 * plan's checks use.
 *
 * Crash safety:
 *  - an amend_upgrade widens the snapshot table where v3 needs it into new
 *    clusters, durable with their refcounts, before the header switch
 *    points at it; the old table is freed after;
 *  - a amend_downgrade first turns every zero cluster into something v2 reads
 *    as zeroes (a written zero cluster, or unallocated when no backing
 *    file shows through), each step safe on its own (zeroes durable
 *    before the L2 entry, refcounts before both, old references dropped
 *    after), and switches the version last.
 * Both start from metadata on disk (amend_settle) and switch the header
 * with qcow2_write_header_switch.  s->lock is held throughout.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/amend-int.h"

/* ------------------------------------------------------------------ */
/* Every L2 table, once                                                */

/* A set of host offsets (never 0), to visit each table once. */
typedef struct OffsetSet {
    uint64_t *slots;
    size_t cap, n;             /* cap: power of two */
} OffsetSet;

/* 1 when off was added, 0 when it was there already, or -ENOMEM. */
static int offset_set_add(OffsetSet *set, uint64_t off)
{
    if ((set->n + 1) * 2 > set->cap) {
        size_t ncap = set->cap ? set->cap * 2 : 1024;
        uint64_t *ns = calloc(ncap, sizeof(*ns));
        if (!ns) {
            return -ENOMEM;
        }
        for (size_t i = 0; i < set->cap; i++) {
            if (set->slots[i]) {
                size_t h = (size_t)(set->slots[i] * 0x9e3779b97f4a7c15ull >>
                                    17) & (ncap - 1);
                while (ns[h]) {
                    h = (h + 1) & (ncap - 1);
                }
                ns[h] = set->slots[i];
            }
        }
        free(set->slots);
        set->slots = ns;
        set->cap = ncap;
    }
    size_t h = (size_t)(off * 0x9e3779b97f4a7c15ull >> 17) & (set->cap - 1);
    while (set->slots[h]) {
        if (set->slots[h] == off) {
            return 0;
        }
        h = (h + 1) & (set->cap - 1);
    }
    set->slots[h] = off;
    set->n++;
    return 1;
}

typedef struct L1Ref {
    uint64_t offset;
    uint32_t size;
} L1Ref;

/* By offset, the largest first: a shorter table at the same offset is a
 * prefix of it. */
static int l1ref_cmp(const void *a, const void *b)
{
    const L1Ref *x = a, *y = b;
    if (x->offset != y->offset) {
        return x->offset < y->offset ? -1 : 1;
    }
    return x->size > y->size ? -1 : x->size < y->size;
}

static int walk_l1(Qcow2State *s, const uint64_t *l1, uint32_t l1_size,
                   OffsetSet *seen, AmendL2Fn *fn, void *opaque,
                   AmendProgress *prog, uint64_t *done, uint64_t total)
{
    int ret = 0;
    for (uint32_t i = 0; i < l1_size && ret >= 0; i++) {
        uint64_t off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (off) {
            if (off % s->cluster_size) {
                qcow2_signal_corruption(s, "L2 table offset 0x%" PRIx64
                                        " unaligned", off);
                return -EIO;
            }
            ret = offset_set_add(seen, off);
            if (ret > 0) {
                ret = fn(s, off, opaque);
            }
        }
        if (prog && (++*done % 64 == 0 || *done == total)) {
            amend_progress_report(prog, *done, total);
        }
    }
    return ret < 0 ? ret : 0;
}

int amend_walk_all_l2(Qcow2State *s, AmendL2Fn *fn, void *opaque,
                      AmendProgress *prog)
{
    OffsetSet seen = { 0 };
    int nsn = s->nb_snapshots_loaded;
    L1Ref *refs = calloc(nsn ? (size_t)nsn : 1, sizeof(*refs));
    uint64_t total = s->l1_size, done = 0;
    int ret;

    if (!refs) {
        return -ENOMEM;
    }
    for (int i = 0; i < nsn; i++) {
        refs[i].offset = s->snapshots[i].l1_table_offset;
        refs[i].size = s->snapshots[i].l1_size;
    }
    qsort(refs, (size_t)nsn, sizeof(*refs), l1ref_cmp);
    for (int i = 0; i < nsn; i++) {
        if (!i || refs[i].offset != refs[i - 1].offset) {
            total += refs[i].size;
        }
    }
    ret = walk_l1(s, s->l1_table, s->l1_size, &seen, fn, opaque, prog,
                  &done, total);
    for (int i = 0; i < nsn && ret >= 0; i++) {
        if ((i && refs[i].offset == refs[i - 1].offset) || !refs[i].size) {
            continue;
        }
        uint64_t *l1;
        ret = qcow2_read_l1(s, refs[i].offset, refs[i].size, &l1);
        if (ret >= 0) {
            ret = walk_l1(s, l1, refs[i].size, &seen, fn, opaque, prog,
                          &done, total);
            free(l1);
        }
    }
    free(refs);
    free(seen.slots);
    return ret;
}

/* A version switch starts from metadata on disk and needs to know how
 * much of the header cluster the old header fills (qcow2_header_used). */
static int settled_header_used(Qcow2State *s, Error *err)
{
    int ret = amend_settle(s, err);
    return ret < 0 ? ret : qcow2_header_used(s, err);
}

/* ------------------------------------------------------------------ */
/* compat=1.1                                                          */

/* A v3 snapshot table entry needs at least 16 bytes of extra data
 * (vm_state_size_large, disk_size); older v2 writers left less.  Builds
 * a table where every entry has them, or *out = NULL when none lacks
 * them. */
static int widen_snapshot_table(Qcow2State *s, uint8_t **out, size_t *out_len)
{
    uint8_t *old = NULL, *nt = NULL;
    size_t len = s->snapshots_size, pos = 0, npos = 0;
    bool needed = false;
    int ret;

    *out = NULL;
    *out_len = 0;
    if (!s->nb_snapshots || !len) {
        return 0;
    }
    old = malloc(len);
    nt = calloc(1, len + (size_t)s->nb_snapshots * 16);
    if (!old || !nt) {
        ret = -ENOMEM;
        goto fail;
    }
    ret = block_pread(block_file(s->node), s->snapshots_offset, len, old);
    if (ret < 0) {
        goto fail;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (pos + QCOW2_SNAPSHOT_FIXED > len) {
            ret = -EINVAL;
            goto fail;
        }
        const uint8_t *e = old + pos;
        uint32_t extra = qcow2_be32(e + 36);
        uint32_t names = qcow2_be16(e + 12) + qcow2_be16(e + 14);
        size_t elen = qcow2_align_up(QCOW2_SNAPSHOT_FIXED + extra + names, 8);
        if (pos + elen > len) {
            ret = -EINVAL;
            goto fail;
        }
        uint32_t nextra = extra < QCOW2_SNAPSHOT_EXTRA_V3
                          ? QCOW2_SNAPSHOT_EXTRA_V3 : extra;
        uint8_t *d = nt + npos;
        memcpy(d, e, QCOW2_SNAPSHOT_FIXED);
        qcow2_put_be32(d + 36, nextra);
        memcpy(d + QCOW2_SNAPSHOT_FIXED, e + QCOW2_SNAPSHOT_FIXED, extra);
        if (extra < 8) {
            qcow2_put_be64(d + QCOW2_SNAPSHOT_FIXED, qcow2_be32(e + 32));
        }
        if (extra < 16) {
            /* The size the snapshot had is not recorded; a v2 image with
             * snapshots cannot have been resized, so it is the current
             * one. */
            qcow2_put_be64(d + QCOW2_SNAPSHOT_FIXED + 8, s->size);
            needed = true;
        }
        memcpy(d + QCOW2_SNAPSHOT_FIXED + nextra,
               e + QCOW2_SNAPSHOT_FIXED + extra, names);
        npos += qcow2_align_up(QCOW2_SNAPSHOT_FIXED + nextra + names, 8);
        pos += elen;
    }
    free(old);
    if (!needed) {
        free(nt);
        return 0;
    }
    *out = nt;
    *out_len = npos;
    return 0;

fail:
    free(old);
    free(nt);
    return ret;
}

int amend_upgrade(Qcow2State *s, Error *err)
{
    uint8_t *table = NULL;
    size_t tlen = 0;
    uint64_t new_table = 0;
    int ret;

    int old_used = settled_header_used(s, err);
    if (old_used < 0) {
        return old_used;
    }
    ret = widen_snapshot_table(s, &table, &tlen);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot table: %s",
                          strerror(-ret));
    }
    if (table) {
        /* The widened table goes to new clusters, durable (with their
         * refcounts) before the header that points at it. */
        int64_t a = qcow2_store_snapshot_table(s, table, tlen, err);
        free(table);
        if (a < 0) {
            return (int)a;
        }
        new_table = (uint64_t)a;
    }

    uint64_t old_table = s->snapshots_offset, old_tsize = s->snapshots_size;
    qcow2_set_plain_header(s, 3);
    if (new_table) {
        s->snapshots_offset = new_table;
        s->snapshots_size = tlen;
        s->snapshots_tail_pad = 0;
    }
    ret = qcow2_write_header_switch(s, old_used, err);
    if (ret < 0) {
        s->version = 2;
        s->header_length = QCOW2_V2_HEADER_SIZE;
        s->snapshots_offset = old_table;
        s->snapshots_size = old_tsize;
        return ret;
    }
    if (new_table && old_table) {
        ret = qcow2_free_snapshot_table(s, old_table, old_tsize, err);
        return ret < 0 ? ret : amend_settle(s, err);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* compat=0.10                                                         */

typedef struct ZeroExpand {
    bool has_backing;
    uint8_t *copy;             /* cluster_size scratch */
    uint64_t *new_entries;     /* l2_entries */
    uint64_t *drop;            /* host clusters to release after */
    uint8_t *zeroes;           /* cluster_size zero bytes */
} ZeroExpand;

/* Makes host cluster `off` read as zeroes through this image: raw zero
 * bytes, or encrypted ones for a LUKS image (raw zeroes would decrypt to
 * noise; qemu-img 7.2 makes that mistake). */
static int write_zero_cluster(Qcow2State *s, ZeroExpand *zx, uint64_t off)
{
    if (s->crypto) {
        return qcow2_crypto_write(s, off, 0, zx->zeroes, s->cluster_size);
    }
    if (s->aes) {
        return -ENOTSUP;   /* AES IVs need the guest offset: not here */
    }
    return block_write_zeroes(block_file(s->node), off, s->cluster_size, 0);
}

enum { ZX_KEEP, ZX_UNALLOC, ZX_INPLACE, ZX_NEW };

/* One L2 table: every zero entry becomes data that reads as zero, or
 * unallocated when nothing can show through.  A table shared by rc L1s
 * is changed for all of them at once, so a cluster put in it gets rc
 * references, and a preallocated zero cluster is zeroed in place only
 * when all its references come through this table. */
static int expand_zero_l2(Qcow2State *s, uint64_t l2_offset, void *opaque)
{
    ZeroExpand *zx = opaque;
    uint64_t rc_l2, n_change = 0, n_drop = 0;
    uint8_t *t;
    int ret;

    ret = qcow2_get_refcount(s, l2_offset >> s->cluster_bits, &rc_l2);
    if (ret < 0) {
        return ret;
    }
    if (rc_l2 == 0) {
        qcow2_signal_corruption(s, "L2 table at 0x%" PRIx64 " has refcount "
                                "0", l2_offset);
        return -EIO;
    }
    ret = qcow2_cache_get(&s->l2_cache, l2_offset, &t);
    if (ret < 0) {
        return ret;
    }
    memcpy(zx->copy, t, s->cluster_size);
    qcow2_cache_put(&s->l2_cache, &t);

    /* Plan, and make the new data durable (refcounts, then zeroes). */
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        uint64_t raw = qcow2_l2_get_entry(s, zx->copy, i);
        Qcow2L2Entry e;
        qcow2_decode_l2_entry(s, raw, 0, &e);
        zx->new_entries[i] = raw;
        int action = ZX_KEEP;
        if (e.type == QCOW2_CLUSTER_ZERO_PLAIN) {
            action = zx->has_backing ? ZX_NEW : ZX_UNALLOC;
        } else if (e.type == QCOW2_CLUSTER_ZERO_ALLOC) {
            uint64_t rc;
            ret = qcow2_get_refcount(s, e.host_offset >> s->cluster_bits,
                                     &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc == rc_l2) {
                action = ZX_INPLACE;
            } else {
                action = zx->has_backing ? ZX_NEW : ZX_UNALLOC;
                if (rc > rc_l2) {
                    zx->drop[n_drop++] = e.host_offset;
                }
            }
        }
        if (action == ZX_KEEP) {
            continue;
        }
        n_change++;
        if (action == ZX_UNALLOC) {
            zx->new_entries[i] = 0;
        } else if (action == ZX_INPLACE) {
            ret = write_zero_cluster(s, zx, e.host_offset);
            if (ret < 0) {
                return ret;
            }
            zx->new_entries[i] = raw & ~QCOW2_OFLAG_ZERO;
        } else {
            int64_t a = qcow2_alloc_clusters(s, 1);
            if (a < 0) {
                return (int)a;
            }
            if (rc_l2 > 1) {
                ret = qcow2_update_refcount(s, (uint64_t)a, s->cluster_size,
                                            (int64_t)rc_l2 - 1);
                if (ret < 0) {
                    return ret;
                }
            }
            ret = write_zero_cluster(s, zx, (uint64_t)a);
            if (ret < 0) {
                return ret;
            }
            zx->new_entries[i] = (uint64_t)a |
                                 (rc_l2 == 1 ? QCOW2_OFLAG_COPIED : 0);
        }
    }
    if (!n_change) {
        return 0;
    }
    ret = qcow2_sync_refcounts(s);
    if (ret < 0) {
        return ret;
    }

    /* Then the table, durable before any old reference is dropped. */
    ret = qcow2_cache_get(&s->l2_cache, l2_offset, &t);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        if (zx->new_entries[i] != qcow2_l2_get_entry(s, t, i)) {
            qcow2_l2_set(s, t, i, zx->new_entries[i], 0);
        }
    }
    qcow2_cache_mark_dirty(&s->l2_cache, t);
    qcow2_cache_put(&s->l2_cache, &t);
    ret = qcow2_cache_writeback(&s->l2_cache);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    for (uint64_t i = 0; i < n_drop && ret >= 0; i++) {
        ret = qcow2_update_refcount(s, zx->drop[i], s->cluster_size,
                                    -(int64_t)rc_l2);
    }
    return ret;
}

int amend_downgrade(Qcow2State *s, AmendProgress *prog, Error *err)
{
    ZeroExpand zx = { 0 };
    int ret;

    ret = amend_settle(s, err);
    if (ret < 0) {
        return ret;
    }
    zx.has_backing = s->backing_file != NULL;
    zx.copy = malloc(s->cluster_size);
    zx.new_entries = calloc(s->l2_entries, sizeof(uint64_t));
    zx.drop = calloc(s->l2_entries, sizeof(uint64_t));
    zx.zeroes = calloc(1, s->cluster_size);
    if (!zx.copy || !zx.new_entries || !zx.drop || !zx.zeroes) {
        ret = error_setf(err, ENOMEM, "out of memory");
    } else {
        ret = amend_walk_all_l2(s, expand_zero_l2, &zx, prog);
        if (ret < 0) {
            error_setf(err, -ret, "cannot expand zero clusters: %s",
                       strerror(-ret));
        }
    }
    free(zx.copy);
    free(zx.new_entries);
    free(zx.drop);
    free(zx.zeroes);
    if (ret < 0) {
        return ret;
    }
    int old_used = settled_header_used(s, err);
    if (old_used < 0) {
        return old_used;
    }
    uint32_t o_version = s->version, o_hlen = s->header_length;
    uint64_t o_incompat = s->incompatible_features;
    uint64_t o_compat = s->compatible_features;
    uint64_t o_autoclear = s->autoclear_features;
    uint8_t o_ctype = s->compression_type;
    /* refcount_order is 4 already: check_plan refuses other widths. */
    qcow2_set_plain_header(s, 2);
    ret = qcow2_write_header_switch(s, old_used, err);
    if (ret < 0) {
        s->version = o_version;
        s->incompatible_features = o_incompat;
        s->compatible_features = o_compat;
        s->autoclear_features = o_autoclear;
        s->header_length = o_hlen;
        s->compression_type = o_ctype;
        return ret;
    }
    s->lazy_refcounts = false;
    s->dirty_set = false;
    return 0;
}
