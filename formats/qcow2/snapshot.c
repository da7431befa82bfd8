/*
 * snapshot.c - qcow2 internal snapshots: create, apply (revert), delete,
 * and loading one read-only (convert -l), in the on-disk form QEMU reads
 * and writes.  The snapshot table itself is snapshot-table.c's.
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
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "formats/qcow2/snapshot-int.h"

/* Extra data we write: vm_state_size_large, disk_size, icount (as QEMU
 * 7.2 does). */
#define SN_EXTRA_WRITE 24

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

/* The active L1 after its COPIED flags changed: the refcounts and L2
 * tables that justify the flags go first. */
static int write_active_l1(Qcow2State *s)
{
    int ret = qcow2_snapshot_write_meta(s);
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
    ret = qcow2_snapshot_read_table(s, &old, &olen);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot table: %s",
                          strerror(-ret));
    }
    {
        size_t *o, *l;
        ret = qcow2_snapshot_index_entries(old, olen, s->nb_snapshots, &o, &l);
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
    ret = qcow2_snapshot_switch_table(s, nbuf, olen + elen,
                                      s->nb_snapshots + 1, err);
    if (ret >= 0) {
        l1off = 0;   /* owned by the snapshot now */
        ret = errno_error(err, qcow2_snapshot_write_meta(s));
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
        ret = qcow2_snapshot_write_meta(s);
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
    int idx = qcow2_snapshot_find(s, id_or_name);
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
        ret = qcow2_snapshot_write_meta(s);
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
    int idx = qcow2_snapshot_find_by_name(s, name);
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
    ret = qcow2_snapshot_read_table(s, &old, &olen);
    if (ret >= 0) {
        ret = qcow2_snapshot_index_entries(old, olen, nb, &o, &l);
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
    ret = qcow2_snapshot_switch_table(s, nbuf, nlen, nb - 1, err);
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
