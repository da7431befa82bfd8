/*
 * snapshot.c - qcow2 internal snapshots: create, apply (revert), delete
 * and list, in the on-disk form QEMU reads and writes.
 *
 * Reference counting follows QEMU: an L2 table counts one reference per
 * L1 table (active or snapshot) pointing at it, and a data cluster one per
 * L1 table whose L2 path reaches it, so every operation here is a walk of
 * one L1 table adding +1 or -1 to everything it reaches.
 *
 * Crash safety: every operation first makes the refcount increments it
 * needs durable, then switches the header (snapshot table, or active L1)
 * in one write, which is the commit point, and only then drops the
 * references the old state held.  A crash anywhere leaves at worst
 * leaked clusters.
 *
 * The snapshot table is rewritten by copying the existing entries
 * byte for byte (unknown extra data included) into freshly allocated
 * clusters; the old table is freed after the header switch.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "formats/qcow2/qcow2.h"

/* Extra data we write: vm_state_size_large, disk_size, icount (as QEMU
 * 7.2 does). */
#define SN_EXTRA_WRITE 24

/* Length of the entry at p (8-byte aligned), or 0 if it does not fit. */
static size_t entry_len(const uint8_t *p, size_t avail)
{
    if (avail < QCOW2_SNAPSHOT_FIXED) {
        return 0;
    }
    size_t len = QCOW2_SNAPSHOT_FIXED + qcow2_be32(p + 36) +
                 qcow2_be16(p + 12) + qcow2_be16(p + 14);
    len = (size_t)qcow2_align_up(len, 8);
    return len <= avail ? len : 0;
}

static int read_table(Qcow2State *s, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (!s->nb_snapshots || !s->snapshots_size) {
        return 0;
    }
    uint8_t *b = malloc(s->snapshots_size);
    if (!b) {
        return -ENOMEM;
    }
    int ret = block_pread(block_file(s->node), s->snapshots_offset,
                          s->snapshots_size, b);
    if (ret < 0) {
        free(b);
        return ret;
    }
    *buf = b;
    *len = s->snapshots_size;
    return 0;
}

/* Offsets of the entries of a table buffer; nb entries expected. */
static int index_table(const uint8_t *buf, size_t len, uint32_t nb,
                       size_t *offs, size_t *lens)
{
    size_t off = 0;
    for (uint32_t i = 0; i < nb; i++) {
        size_t l = entry_len(buf + off, len - off);
        if (!l) {
            return -EINVAL;
        }
        offs[i] = off;
        lens[i] = l;
        off += l;
    }
    return 0;
}

/* index_table into offset and length arrays it allocates (nb + 1 long, so
 * nb may be 0); on failure nothing stays allocated. */
static int index_entries(const uint8_t *buf, size_t len, uint32_t nb,
                         size_t **offs, size_t **lens)
{
    *offs = calloc(nb + 1, sizeof(size_t));
    *lens = calloc(nb + 1, sizeof(size_t));
    int ret = *offs && *lens ? index_table(buf, len, nb, *offs, *lens)
                             : -ENOMEM;
    if (ret < 0) {
        free(*offs);
        free(*lens);
        *offs = *lens = NULL;
    }
    return ret;
}

static char *dup_bytes(const uint8_t *p, size_t n)
{
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, p, n);
        r[n] = 0;
    }
    return r;
}

/* Rebuilds s->snapshots from a table buffer (after a change). */
static int reload_snapshots(Qcow2State *s, const uint8_t *buf, size_t len,
                            uint32_t nb)
{
    Qcow2Snapshot *sns = calloc(nb ? nb : 1, sizeof(*sns));
    if (!sns) {
        return -ENOMEM;
    }
    size_t off = 0;
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *p = buf + off;
        size_t l = entry_len(p, len - off);
        uint32_t extra = qcow2_be32(p + 36);
        uint16_t idl = qcow2_be16(p + 12), nl = qcow2_be16(p + 14);
        sns[i].l1_table_offset = qcow2_be64(p);
        sns[i].l1_size = qcow2_be32(p + 8);
        sns[i].extra_size = extra;
        sns[i].vm_state_size = qcow2_be32(p + 32);
        sns[i].disk_size = s->size;
        if (extra >= 8) {
            sns[i].vm_state_size = qcow2_be64(p + 40);
        }
        if (extra >= 16) {
            sns[i].disk_size = qcow2_be64(p + 48);
        }
        sns[i].id_str = dup_bytes(p + 40 + extra, idl);
        sns[i].name = dup_bytes(p + 40 + extra + idl, nl);
        off += l;
    }
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        free(s->snapshots[i].id_str);
        free(s->snapshots[i].name);
    }
    free(s->snapshots);
    s->snapshots = sns;
    s->nb_snapshots_loaded = (int)nb;
    for (uint32_t i = 0; i < nb; i++) {
        if (!sns[i].id_str || !sns[i].name) {
            return -ENOMEM;
        }
    }
    return 0;
}

/* Index of the first snapshot named `name`; -1. */
static int find_snapshot_by_name(Qcow2State *s, const char *name)
{
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        if (strcmp(s->snapshots[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

/* Index of the snapshot whose id, else whose name, is `key`; -1. */
static int find_snapshot(Qcow2State *s, const char *key)
{
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        if (strcmp(s->snapshots[i].id_str, key) == 0) {
            return i;
        }
    }
    return find_snapshot_by_name(s, key);
}

/* Writes a host-order L1 array to offset, zero-padded to clusters. */
static int write_l1_at(Qcow2State *s, uint64_t offset, const uint64_t *l1,
                       uint32_t n)
{
    size_t len = (size_t)qcow2_align_up((uint64_t)n * 8, s->cluster_size);
    uint8_t *buf = calloc(1, len);
    if (!buf) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        qcow2_put_be64(buf + 8 * i, l1[i]);
    }
    int ret = block_pwrite(block_file(s->node), offset, len, buf, 0);
    free(buf);
    return ret < 0 ? ret : 0;
}

static uint64_t l1_clusters(Qcow2State *s, uint32_t n)
{
    return qcow2_align_up((uint64_t)n * 8, s->cluster_size) >>
           s->cluster_bits;
}

/*
 * Adds `addend` (-1, 0, +1) to the refcount of every L2 table and data
 * cluster l1 reaches.  When `fix_copied`, l1 is the active table: its
 * entries and those of its L2 tables get COPIED exactly when the
 * referenced cluster's refcount is (now) 1.  Shared L2 tables never gain
 * COPIED entries that way, since every cluster they map has refcount > 1.
 */
static int walk_l1_limited(Qcow2State *s, uint64_t *l1, uint32_t l1_size,
                           int addend, bool fix_copied, uint64_t *done,
                           uint64_t limit)
{
    uint8_t *t = NULL;
    bool dirty_t = false;
    int ret;
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2off) {
            continue;
        }
        if (l2off & (s->cluster_size - 1)) {
            /* A damaged entry: refcounts reached through it cannot be
             * trusted.  Dropping references skips it (what it pointed
             * at leaks, which check -r leaks repairs); adding fails. */
            if (addend < 0) {
                continue;
            }
            return -EIO;
        }
        ret = qcow2_cache_get(&s->l2_cache, l2off, &t);
        if (ret < 0) {
            return ret;
        }
        dirty_t = false;
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t raw = qcow2_l2_get_entry(s, t, j);
            uint64_t bm = qcow2_l2_get_bitmap(s, t, j);
            Qcow2L2Entry e;
            qcow2_decode_l2_entry(s, raw, bm, &e);
            uint64_t rc = 0;
            if (e.type == QCOW2_CLUSTER_COMPRESSED) {
                if (addend) {
                    if (*done >= limit) {
                        goto out;
                    }
                    uint64_t first = e.host_offset & ~(s->cluster_size - 1);
                    uint64_t last = (e.host_offset + e.compressed_size - 1) &
                                    ~(s->cluster_size - 1);
                    ret = qcow2_update_refcount(s, first,
                                                last - first + s->cluster_size,
                                                addend);
                    if (ret < 0) {
                        goto fail;
                    }
                    (*done)++;
                }
                continue;   /* compressed entries never carry COPIED */
            }
            if ((e.type == QCOW2_CLUSTER_NORMAL ||
                 e.type == QCOW2_CLUSTER_ZERO_ALLOC) && e.host_offset &&
                !s->has_data_file) {
                if (addend) {
                    if (*done >= limit) {
                        goto out;
                    }
                    ret = qcow2_update_refcount(s, e.host_offset,
                                                s->cluster_size, addend);
                    if (ret < 0) {
                        goto fail;
                    }
                    (*done)++;
                }
                ret = qcow2_get_refcount(s, e.host_offset >> s->cluster_bits,
                                         &rc);
                if (ret < 0) {
                    goto fail;
                }
            } else {
                continue;
            }
            if (fix_copied) {
                uint64_t nraw = rc == 1 ? raw | QCOW2_OFLAG_COPIED
                                        : raw & ~QCOW2_OFLAG_COPIED;
                if (nraw != raw) {
                    qcow2_l2_set(s, t, j, nraw, bm);
                    dirty_t = true;
                }
            }
        }
        if (dirty_t) {
            qcow2_cache_mark_dirty(&s->l2_cache, t);
        }
        qcow2_cache_put(&s->l2_cache, &t);
        if (addend) {
            if (*done >= limit) {
                return 0;
            }
            ret = qcow2_update_refcount(s, l2off, s->cluster_size, addend);
            if (ret < 0) {
                return ret;
            }
            (*done)++;
        }
        if (fix_copied) {
            uint64_t rc;
            ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &rc);
            if (ret < 0) {
                return ret;
            }
            l1[i] = rc == 1 ? l1[i] | QCOW2_OFLAG_COPIED
                            : l1[i] & ~QCOW2_OFLAG_COPIED;
        }
    }
    return 0;
out:
    ret = 0;
fail:
    if (dirty_t) {
        qcow2_cache_mark_dirty(&s->l2_cache, t);
    }
    qcow2_cache_put(&s->l2_cache, &t);
    return ret;
}

static int walk_l1(Qcow2State *s, uint64_t *l1, uint32_t l1_size,
                   int addend, bool fix_copied)
{
    uint64_t done = 0;
    return walk_l1_limited(s, l1, l1_size, addend, fix_copied, &done,
                           UINT64_MAX);
}

/* Adds one reference to everything l1 reaches; on failure (a refcount at
 * its maximum) takes back the ones already added, so that nothing leaks
 * and the refcounts stay exact. */
static int walk_l1_inc(Qcow2State *s, uint64_t *l1, uint32_t l1_size,
                       bool fix_copied)
{
    uint64_t done = 0, undone = 0;
    int ret = walk_l1_limited(s, l1, l1_size, 1, fix_copied, &done,
                              UINT64_MAX);
    if (ret < 0) {
        walk_l1_limited(s, l1, l1_size, -1, false, &undone, done);
        if (fix_copied) {
            walk_l1(s, l1, l1_size, 0, true);
        }
    }
    return ret;
}

/* Refcounts, then L2 tables, on disk and flushed. */
static int write_meta(Qcow2State *s)
{
    int ret = qcow2_sync_refcounts(s);
    return ret < 0 ? ret : qcow2_flush_caches(s);
}

/* The active L1 after its COPIED flags changed: the refcounts and L2
 * tables that justify the flags go first. */
static int write_active_l1(Qcow2State *s)
{
    int ret = write_meta(s);
    if (ret >= 0) {
        ret = qcow2_write_l1(s, 0, s->l1_size);
    }
    return ret < 0 ? ret : block_flush(block_file(s->node));
}

/* A failure in writing metadata has no better words than its errno. */
static int errno_error(Error *err, int ret)
{
    return ret < 0 ? error_setf(err, -ret, "%s", strerror(-ret)) : ret;
}

int64_t qcow2_store_snapshot_table(Qcow2State *s, const uint8_t *buf,
                                   size_t len, Error *err)
{
    uint64_t nc = qcow2_align_up(len, s->cluster_size) >> s->cluster_bits;
    int64_t a = qcow2_alloc_clusters(s, nc);
    if (a < 0) {
        return error_setf(err, (int)-a, "cannot allocate the snapshot "
                          "table: %s", strerror((int)-a));
    }
    uint8_t *pad = calloc(1, nc << s->cluster_bits);
    if (!pad) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    memcpy(pad, buf, len);
    int ret = block_pwrite(block_file(s->node), (uint64_t)a, nc << s->cluster_bits,
                           pad, 0);
    free(pad);
    if (ret >= 0) {
        ret = write_meta(s);
    }
    if (ret < 0) {
        return error_setf(err, -ret, "cannot write the snapshot table: %s",
                          strerror(-ret));
    }
    return a;
}

int qcow2_free_snapshot_table(Qcow2State *s, uint64_t offset, uint64_t size,
                              Error *err)
{
    if (!offset || !size) {
        return 0;
    }
    int ret = qcow2_update_refcount(s, offset,
                                    qcow2_align_up(size, s->cluster_size), -1);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot free the old snapshot table: %s",
                          strerror(-ret));
    }
    return 0;
}

/* Writes a new snapshot table (buf/len) to fresh clusters and switches
 * the header to it; then frees the old table (unless free_old is false:
 * check found it was never counted, e.g. past the end of the file).  The
 * commit point. */
static int switch_table_ex(Qcow2State *s, const uint8_t *buf, size_t len,
                           uint32_t nb, bool free_old, Error *err)
{
    uint64_t noff = 0;
    int ret;
    if (len) {
        int64_t a = qcow2_store_snapshot_table(s, buf, len, err);
        if (a < 0) {
            return (int)a;
        }
        noff = (uint64_t)a;
    }
    uint64_t ooff = s->snapshots_offset, osize = s->snapshots_size;
    uint32_t onb = s->nb_snapshots;
    s->snapshots_offset = noff;
    s->snapshots_size = len;
    s->snapshots_tail_pad = 0;
    s->nb_snapshots = nb;
    ret = qcow2_write_header(s, err);
    if (ret < 0) {
        s->snapshots_offset = ooff;
        s->snapshots_size = osize;
        s->nb_snapshots = onb;
        return ret;
    }
    ret = free_old ? qcow2_free_snapshot_table(s, ooff, osize, err) : 0;
    return ret < 0 ? ret : reload_snapshots(s, buf, len, nb);
}

static int switch_table(Qcow2State *s, const uint8_t *buf, size_t len,
                        uint32_t nb, Error *err)
{
    return switch_table_ex(s, buf, len, nb, true, err);
}

int qcow2_snapshot_complete_extra(Qcow2State *s, bool free_old, Error *err)
{
    uint32_t nb = (uint32_t)s->nb_snapshots_loaded;
    uint8_t *old = NULL, *nbuf = NULL;
    size_t olen = 0, nlen = 0;
    size_t *o = NULL, *l = NULL;
    int ret = read_table(s, &old, &olen);

    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot table: %s",
                          strerror(-ret));
    }
    nbuf = calloc(1, olen + (size_t)nb * 16 + 8);
    ret = nbuf ? index_entries(old, olen, nb, &o, &l) : -ENOMEM;
    for (uint32_t i = 0; i < nb && ret >= 0; i++) {
        const uint8_t *p = old + o[i];
        uint32_t extra = qcow2_be32(p + 36);
        if (extra >= 16) {
            memcpy(nbuf + nlen, p, l[i]);
            nlen += l[i];
            continue;
        }
        size_t strs = (size_t)qcow2_be16(p + 12) + qcow2_be16(p + 14);
        uint8_t *q = nbuf + nlen;
        memcpy(q, p, QCOW2_SNAPSHOT_FIXED);
        qcow2_put_be32(q + 36, 16);
        qcow2_put_be64(q + 40, s->snapshots[i].vm_state_size);
        qcow2_put_be64(q + 48, s->snapshots[i].disk_size);
        memcpy(q + 56, p + QCOW2_SNAPSHOT_FIXED + extra, strs);
        nlen += (size_t)qcow2_align_up(56 + strs, 8);
    }
    if (ret >= 0) {
        ret = switch_table_ex(s, nbuf, nlen, nb, free_old, err);
    } else {
        error_setf(err, -ret, "cannot rewrite the snapshot table: %s",
                   strerror(-ret));
    }
    free(o);
    free(l);
    free(old);
    free(nbuf);
    return ret;
}

/* Every operation starts from metadata on disk, so that what it writes
 * next cannot land before older changes. */
static int flush_before(Qcow2State *s, Error *err)
{
    return errno_error(err, qcow2_flush_caches(s));
}

static int check_usable(Qcow2State *s, Error *err)
{
    if (s->read_only) {
        return error_setf(err, EACCES, "image is opened read-only");
    }
    if (s->has_data_file) {
        return error_setf(err, ENOTSUP, "internal snapshots are not "
                          "supported with an external data file");
    }
    return 0;
}

static int do_create(Qcow2State *s, const char *name, Error *err)
{
    uint8_t *old = NULL, *nbuf = NULL;
    size_t olen = 0;
    uint64_t *sn_l1 = NULL;
    int64_t l1off = 0;
    int ret;

    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        return error_setf(err, EFBIG, "Too many snapshots");
    }
    size_t nlen = strlen(name);
    if (nlen > 65535) {
        return error_setf(err, EINVAL, "snapshot name too long");
    }
    /* QEMU's choice: one more than the largest numeric id. */
    unsigned long maxid = 0;
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        unsigned long v = strtoul(s->snapshots[i].id_str, NULL, 10);
        if (v > maxid) {
            maxid = v;
        }
    }
    char id[32];
    snprintf(id, sizeof(id), "%lu", maxid + 1);

    ret = flush_before(s, err);
    if (ret < 0) {
        return ret;
    }
    ret = read_table(s, &old, &olen);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot table: %s",
                          strerror(-ret));
    }
    {
        size_t *o, *l;
        ret = index_entries(old, olen, s->nb_snapshots, &o, &l);
        if (ret < 0) {
            free(old);
            return error_setf(err, -ret, "snapshot table is corrupt");
        }
        if (s->nb_snapshots) {
            /* Drop trailing padding we might have read along. */
            olen = o[s->nb_snapshots - 1] + l[s->nb_snapshots - 1];
        }
        free(o);
        free(l);
    }

    /* Every cluster the active state reaches gains the snapshot's
     * reference; the active tables lose COPIED accordingly. */
    ret = walk_l1_inc(s, s->l1_table, s->l1_size, true);
    if (ret < 0) {
        error_setf(err, -ret, "cannot update refcounts: %s", strerror(-ret));
        goto out;
    }
    sn_l1 = malloc((s->l1_size ? s->l1_size : 1) * 8);
    if (!sn_l1) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    memcpy(sn_l1, s->l1_table, (size_t)s->l1_size * 8);
    if (s->l1_size) {
        l1off = qcow2_alloc_clusters(s, l1_clusters(s, s->l1_size));
        if (l1off < 0) {
            ret = error_setf(err, (int)-l1off, "cannot allocate the "
                             "snapshot L1 table");
            goto out;
        }
        ret = write_l1_at(s, (uint64_t)l1off, sn_l1, s->l1_size);
    }
    if (ret >= 0) {
        ret = write_active_l1(s);
    }
    if (ret < 0) {
        error_setf(err, -ret, "cannot write snapshot metadata: %s",
                   strerror(-ret));
        goto out;
    }

    size_t idl = strlen(id);
    size_t elen = (size_t)qcow2_align_up(QCOW2_SNAPSHOT_FIXED +
                                         SN_EXTRA_WRITE + idl + nlen, 8);
    nbuf = calloc(1, olen + elen);
    if (!nbuf) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (olen) {
        memcpy(nbuf, old, olen);
    }
    uint8_t *p = nbuf + olen;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    qcow2_put_be64(p, (uint64_t)l1off);
    qcow2_put_be32(p + 8, s->l1_size);
    qcow2_put_be16(p + 12, (uint16_t)idl);
    qcow2_put_be16(p + 14, (uint16_t)nlen);
    qcow2_put_be32(p + 16, (uint32_t)tv.tv_sec);
    qcow2_put_be32(p + 20, (uint32_t)tv.tv_usec * 1000);
    /* vm_clock_nsec (24) and vm_state_size (32) stay 0. */
    qcow2_put_be32(p + 36, SN_EXTRA_WRITE);
    qcow2_put_be64(p + 48, s->size);
    /* vm_state_size_large (40) and icount (56) are 0 as qemu-img writes
     * them. */
    memcpy(p + 40 + SN_EXTRA_WRITE, id, idl);
    memcpy(p + 40 + SN_EXTRA_WRITE + idl, name, nlen);
    ret = switch_table(s, nbuf, olen + elen, s->nb_snapshots + 1, err);
    if (ret >= 0) {
        l1off = 0;   /* owned by the snapshot now */
        ret = errno_error(err, write_meta(s));
    }
out:
    /* On failure before the switch, the increments (and the snapshot L1
     * clusters) are leaks; the active tables merely lost COPIED, which
     * only costs an extra copy on write. */
    free(old);
    free(nbuf);
    free(sn_l1);
    return ret < 0 ? ret : 0;
}

/* After a snapshot table switch has committed: drops every reference
 * the L1 table l1 (stored at l1_off) held, then sets OFLAG_COPIED again
 * on the active state's clusters that are back to refcount 1, so they
 * may be written in place.  Refcounts only go down before the active
 * L2/L1 flags change, so a crash in here at worst leaks clusters. */
static int release_l1(Qcow2State *s, uint64_t *l1, uint32_t l1_size,
                      uint64_t l1_off, Error *err)
{
    int ret = walk_l1(s, l1, l1_size, -1, false);
    if (ret >= 0 && l1_size) {
        ret = qcow2_update_refcount(s, l1_off,
                                    l1_clusters(s, l1_size) << s->cluster_bits,
                                    -1);
    }
    if (ret >= 0) {
        ret = write_meta(s);
    }
    if (ret >= 0) {
        ret = walk_l1(s, s->l1_table, s->l1_size, 0, true);
    }
    if (ret >= 0) {
        ret = write_active_l1(s);
    }
    return errno_error(err, ret);
}

static int do_apply(Qcow2State *s, const char *id_or_name, Error *err)
{
    int idx = find_snapshot(s, id_or_name);
    if (idx < 0) {
        return error_setf(err, ENOENT, "Failed to load snapshot: %s",
                          strerror(ENOENT));
    }
    Qcow2Snapshot *sn = &s->snapshots[idx];
    uint64_t *nl1 = NULL, *old_l1 = s->l1_table;
    int ret;

    ret = flush_before(s, err);
    if (ret < 0) {
        return ret;
    }
    /* The active L1 must cover the snapshot's virtual size. */
    uint64_t per_l1 = s->cluster_size * s->l2_entries;
    uint64_t need = (sn->disk_size + per_l1 - 1) / per_l1;
    uint32_t nsize = sn->l1_size;
    if (need > nsize) {
        if (need * 8 > QCOW2_MAX_L1_BYTES) {
            return error_setf(err, EFBIG, "snapshot L1 table too large");
        }
        nsize = (uint32_t)need;
    }
    ret = qcow2_read_l1(s, sn->l1_table_offset, sn->l1_size, &nl1);
    if (ret < 0) {
        return error_setf(err, -ret, "Failed to load snapshot: %s",
                          strerror(-ret));
    }
    if (nsize > sn->l1_size) {
        uint64_t *g = realloc(nl1, (size_t)nsize * 8);
        if (!g) {
            free(nl1);
            return error_setf(err, ENOMEM, "out of memory");
        }
        nl1 = g;
        memset(nl1 + sn->l1_size, 0, (size_t)(nsize - sn->l1_size) * 8);
    }
    for (uint32_t i = 0; i < nsize; i++) {
        nl1[i] &= ~QCOW2_OFLAG_COPIED;
    }
    /* The new active state's references, durable before it is visible. */
    ret = walk_l1_inc(s, nl1, nsize, false);
    int64_t l1off = -ENOMEM;
    if (ret >= 0) {
        l1off = qcow2_alloc_clusters(s, l1_clusters(s, nsize ? nsize : 1));
        ret = l1off < 0 ? (int)l1off : 0;
    }
    if (ret >= 0) {
        ret = write_l1_at(s, (uint64_t)l1off, nl1, nsize);
    }
    if (ret >= 0) {
        ret = write_meta(s);
    }
    if (ret < 0) {
        free(nl1);
        return error_setf(err, -ret, "cannot apply snapshot: %s",
                          strerror(-ret));
    }

    uint64_t oofs = s->l1_table_offset, osz = s->size;
    uint32_t ol1size = s->l1_size;
    s->l1_table_offset = (uint64_t)l1off;
    s->l1_size = nsize;
    s->size = sn->disk_size;
    ret = qcow2_write_header(s, err);
    if (ret < 0) {
        s->l1_table_offset = oofs;
        s->l1_size = ol1size;
        s->size = osz;
        free(nl1);
        return ret;
    }
    s->l1_table = nl1;

    /* Committed: drop what the old active state referenced. */
    ret = release_l1(s, old_l1, ol1size, oofs, err);
    free(old_l1);
    return ret < 0 ? ret : 0;
}

/* By name only: qemu-img snapshot -d never looks at ids, and a script
 * naming snapshots "1", "2" ... must not lose the one whose *id* is 1. */
static int do_delete(Qcow2State *s, const char *name, Error *err)
{
    int idx = find_snapshot_by_name(s, name);
    if (idx < 0) {
        return error_setf(err, ENOENT, "snapshot not found");
    }
    uint8_t *old = NULL, *nbuf = NULL;
    size_t olen = 0;
    uint32_t nb = s->nb_snapshots;
    size_t *o = NULL, *l = NULL;
    uint64_t *sl1 = NULL;
    int ret;

    ret = flush_before(s, err);
    if (ret < 0) {
        return ret;
    }
    Qcow2Snapshot sn = s->snapshots[idx];
    ret = qcow2_read_l1(s, sn.l1_table_offset, sn.l1_size, &sl1);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot L1 table: %s",
                          strerror(-ret));
    }
    ret = read_table(s, &old, &olen);
    if (ret >= 0) {
        ret = index_entries(old, olen, nb, &o, &l);
    }
    if (ret < 0) {
        error_setf(err, -ret, "snapshot table is corrupt");
        goto out;
    }
    size_t nlen = 0;
    nbuf = malloc(olen ? olen : 1);
    if (!nbuf) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < nb; i++) {
        if ((int)i != idx) {
            memcpy(nbuf + nlen, old + o[i], l[i]);
            nlen += l[i];
        }
    }
    ret = switch_table(s, nbuf, nlen, nb - 1, err);
    if (ret < 0) {
        goto out;
    }
    /* Committed: the snapshot's references go. */
    ret = release_l1(s, sl1, sn.l1_size, sn.l1_table_offset, err);
out:
    free(old);
    free(nbuf);
    free(o);
    free(l);
    free(sl1);
    return ret < 0 ? ret : 0;
}

/* Runs a change of the snapshot table, under s->lock, on an image that
 * allows one. */
static int run_locked(BlockNode *n, const char *arg,
                      int (*op)(Qcow2State *, const char *, Error *),
                      Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret = check_usable(s, err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&s->lock);
    ret = op(s, arg, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_snapshot_create(BlockNode *n, const char *name, Error *err)
{
    return run_locked(n, name, do_create, err);
}

int qcow2_snapshot_apply(BlockNode *n, const char *id_or_name, Error *err)
{
    if (qcow2_state(n)->has_data_file) {
        return error_setf(err, ENOTSUP, "Failed to load snapshot: %s",
                          strerror(ENOTSUP));
    }
    return run_locked(n, id_or_name, do_apply, err);
}

int qcow2_snapshot_delete(BlockNode *n, const char *name, Error *err)
{
    return run_locked(n, name, do_delete, err);
}

int qcow2_list_snapshots(BlockNode *n, BlockSnapshotInfo **out, int *count)
{
    Qcow2State *s = qcow2_state(n);
    uint8_t *buf = NULL;
    size_t len = 0;
    int ret;

    *out = NULL;
    *count = 0;
    pthread_mutex_lock(&s->lock);
    uint32_t nb = (uint32_t)s->nb_snapshots_loaded;
    ret = read_table(s, &buf, &len);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    BlockSnapshotInfo *v = calloc(nb ? nb : 1, sizeof(*v));
    if (!v) {
        free(buf);
        return -ENOMEM;
    }
    size_t off = 0;
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *p = buf + off;
        size_t l = entry_len(p, len - off);
        if (!l) {
            ret = -EINVAL;
            break;
        }
        uint32_t extra = qcow2_be32(p + 36);
        uint16_t idl = qcow2_be16(p + 12), nl = qcow2_be16(p + 14);
        v[i].id = dup_bytes(p + 40 + extra, idl);
        v[i].name = dup_bytes(p + 40 + extra + idl, nl);
        v[i].date_sec = qcow2_be32(p + 16);
        v[i].date_nsec = qcow2_be32(p + 20);
        uint64_t clk = qcow2_be64(p + 24);
        v[i].vm_clock_sec = clk / 1000000000ull;
        v[i].vm_clock_nsec = clk % 1000000000ull;
        v[i].vm_state_size = qcow2_be32(p + 32);
        if (extra >= 8) {
            v[i].vm_state_size = qcow2_be64(p + 40);
        }
        v[i].has_icount = extra >= 24;
        if (v[i].has_icount) {
            v[i].icount = qcow2_be64(p + 56);
            /* QEMU stores -1 for "no icount" and then leaves it out. */
            v[i].has_icount = v[i].icount != UINT64_MAX;
        }
        off += l;
        if (!v[i].id || !v[i].name) {
            ret = -ENOMEM;
            break;
        }
    }
    free(buf);
    if (ret < 0) {
        block_snapshot_list_free(v, (int)nb);
        return ret;
    }
    *out = v;
    *count = (int)nb;
    return 0;
}

int qcow2_snapshot_load_tmp(BlockNode *n, const char *id, const char *name,
                            Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret = 0;

    if (!s->read_only) {
        return error_setf(err, EPERM, "Failed to load snapshot: the image "
                          "must be opened read-only");
    }
    pthread_mutex_lock(&s->lock);
    int idx = -1;
    for (int i = 0; i < s->nb_snapshots_loaded && idx < 0; i++) {
        if ((!id || strcmp(s->snapshots[i].id_str, id) == 0) &&
            (!name || strcmp(s->snapshots[i].name, name) == 0)) {
            idx = i;
        }
    }
    if (idx < 0) {
        ret = error_setf(err, ENOENT, "Failed to load snapshot: Can't find "
                         "snapshot");
    } else {
        Qcow2Snapshot *sn = &s->snapshots[idx];
        uint64_t *l1;
        ret = qcow2_read_l1(s, sn->l1_table_offset, sn->l1_size, &l1);
        if (ret < 0) {
            error_setf(err, -ret, "Failed to load snapshot: %s",
                       strerror(-ret));
        } else {
            /* Reads only: nothing is written back, so the swapped table
             * never reaches the disk.  The virtual size stays the
             * image's, as in qemu-img convert -l (past the snapshot's
             * L1 reads as unallocated). */
            free(s->l1_table);
            s->l1_table = l1;
            s->l1_size = sn->l1_size;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}
