/*
 * snapshot-table.c - the qcow2 snapshot table: parsed into s->snapshots
 * at open, read and indexed whole, rewritten into fresh clusters behind
 * a header switch, completed for v3 by check -r all, and listed.
 *
 * Parsing at open checks every entry against the file and sane limits
 * before it sizes an allocation; opened for check, damage is recorded
 * (s->snapshot_damage) the way qemu-img check sees it instead of
 * refusing the image.  The table is rewritten by copying the existing
 * entries byte for byte (unknown extra data included) into freshly
 * allocated clusters, durable with their refcounts before the header
 * names them; the old table is freed after the header switch.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/snapshot-int.h"

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

int qcow2_snapshot_read_table(Qcow2State *s, uint8_t **buf, size_t *len)
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
int qcow2_snapshot_index_entries(const uint8_t *buf, size_t len, uint32_t nb,
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
        sns[i].id_str = qcow2_dup_bytes(p + 40 + extra, idl);
        sns[i].name = qcow2_dup_bytes(p + 40 + extra + idl, nl);
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
int qcow2_snapshot_find_by_name(Qcow2State *s, const char *name)
{
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        if (strcmp(s->snapshots[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

/* Index of the snapshot whose id, else whose name, is `key`; -1. */
int qcow2_snapshot_find(Qcow2State *s, const char *key)
{
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        if (strcmp(s->snapshots[i].id_str, key) == 0) {
            return i;
        }
    }
    return qcow2_snapshot_find_by_name(s, key);
}

/* Refcounts, then L2 tables, on disk and flushed. */
int qcow2_snapshot_write_meta(Qcow2State *s)
{
    int ret = qcow2_sync_refcounts(s);
    return ret < 0 ? ret : qcow2_flush_caches(s);
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
        ret = qcow2_snapshot_write_meta(s);
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

int qcow2_snapshot_switch_table(Qcow2State *s, const uint8_t *buf, size_t len,
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
    int ret = qcow2_snapshot_read_table(s, &old, &olen);

    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot table: %s",
                          strerror(-ret));
    }
    nbuf = calloc(1, olen + (size_t)nb * 16 + 8);
    ret = nbuf ? qcow2_snapshot_index_entries(old, olen, nb, &o, &l) : -ENOMEM;
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
    ret = qcow2_snapshot_read_table(s, &buf, &len);
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
        v[i].id = qcow2_dup_bytes(p + 40 + extra, idl);
        v[i].name = qcow2_dup_bytes(p + 40 + extra + idl, nl);
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

/* ------------------------------------------------------------------ */
/* Parsing at open                                                     */

/* A snapshot table that cannot be parsed from entry nb_snapshots_loaded
 * on: refused, except when opened for check, which reports it and can
 * cut the table there (check-walk.c). */
static int snapshot_table_damaged(Qcow2State *s, Error *err, int kind,
                                  const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int snapshot_table_damaged(Qcow2State *s, Error *err, int kind,
                                  const char *fmt, ...)
{
    char why[sizeof(s->snapshot_damage)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (!(s->open_flags & BLOCK_O_CHECK)) {
        return error_setf(err, EINVAL, "%s", why);
    }
    memcpy(s->snapshot_damage, why, sizeof(why));
    s->snapshot_damage_kind = kind;
    return 0;
}

/* Opened for check, the table is read as qemu-img check reads it: its
 * offset must be aligned (even with no snapshots, as qcow2.txt says),
 * entries past the end of the file read as zeroes, and a table qemu-img
 * cannot read (too many entries, too much extra data, over 64 MiB) is a
 * failed check unless -r all cuts it.  Otherwise the open refuses what
 * it cannot trust. */
int qcow2_read_snapshot_table(Qcow2State *s, uint64_t flen, Error *err)
{
    bool check = s->open_flags & BLOCK_O_CHECK;
    s->snapshot_damage[0] = '\0';
    s->snapshots_size = 0;
    if (check && (s->snapshots_offset % s->cluster_size ||
                  s->snapshots_offset > INT64_MAX - (uint64_t)40 *
                                        s->nb_snapshots)) {
        /* With no snapshots nothing is lost where the table is: -r all
         * clears the offset.  With some, nothing says where they are. */
        return snapshot_table_damaged(
            s, err, s->nb_snapshots ? SNAPSHOT_DAMAGE_UNREADABLE
                                    : SNAPSHOT_DAMAGE_UNREADABLE_UNLESS_CUT,
            "snapshot table offset invalid");
    }
    if (!s->nb_snapshots) {
        return 0;
    }
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        if (!check) {
            return error_setf(err, EINVAL, "too many snapshots (%u)",
                              s->nb_snapshots);
        }
        /* read up to the limit; -r all drops the rest */
        snapshot_table_damaged(s, err, SNAPSHOT_DAMAGE_UNREADABLE_UNLESS_CUT,
                               "snapshot table too large");
    }
    uint32_t nb = s->nb_snapshots < QCOW2_MAX_SNAPSHOTS ? s->nb_snapshots
                                                        : QCOW2_MAX_SNAPSHOTS;
    if (!check && (s->snapshots_offset % s->cluster_size ||
                   !s->snapshots_offset || s->snapshots_offset >= flen)) {
        return snapshot_table_damaged(s, err, SNAPSHOT_DAMAGE_CORRUPT,
                                      "snapshot table offset invalid (0x%llx)",
                                      (unsigned long long)s->snapshots_offset);
    }
    s->snapshots = calloc(nb, sizeof(*s->snapshots));
    if (!s->snapshots) {
        return -ENOMEM;
    }
    uint64_t off = s->snapshots_offset;
    for (uint32_t i = 0; i < nb; i++) {
        uint8_t h[QCOW2_SNAPSHOT_FIXED];
        Qcow2Snapshot *sn = &s->snapshots[i];
        if (off + sizeof(h) > flen && !check) {
            return snapshot_table_damaged(s, err, SNAPSHOT_DAMAGE_CORRUPT,
                                          "snapshot table is truncated");
        }
        /* (past the end of the file: zeroes) */
        if (off > QCOW2_READ_LIMIT - 2 * 65536 - sizeof(h)) {
            return snapshot_table_damaged(s, err, SNAPSHOT_DAMAGE_UNREADABLE,
                                          "cannot read the snapshot table: "
                                          "%s", strerror(EIO));
        }
        int ret = block_pread(block_file(s->node), off, sizeof(h), h);
        if (ret < 0) {
            return error_setf(err, -ret, "cannot read snapshot table: %s",
                              strerror(-ret));
        }
        uint64_t l1_table_offset = qcow2_be64(h);
        uint32_t l1_size = qcow2_be32(h + 8);
        uint16_t id_len = qcow2_be16(h + 12);
        uint16_t name_len = qcow2_be16(h + 14);
        uint32_t extra = qcow2_be32(h + 36);
        if (extra > 1024) {
            return snapshot_table_damaged(
                s, err, SNAPSHOT_DAMAGE_UNREADABLE_UNLESS_CUT,
                "snapshot extra data too large");
        }
        uint64_t entry_len = sizeof(h) + extra + id_len + name_len;
        if (off + entry_len > flen && !check) {
            return snapshot_table_damaged(s, err, SNAPSHOT_DAMAGE_CORRUPT,
                                          "snapshot table is truncated");
        }
        if (off + qcow2_align_up(entry_len, 8) - s->snapshots_offset >
            64ull * 1024 * 1024) {
            return snapshot_table_damaged(
                s, err, SNAPSHOT_DAMAGE_UNREADABLE_UNLESS_CUT,
                "snapshot table too large");
        }
        uint8_t *rest = malloc(extra + id_len + name_len + 1);
        if (!rest) {
            return -ENOMEM;
        }
        ret = block_pread(block_file(s->node), off + sizeof(h),
                          extra + id_len + name_len, rest);
        if (ret < 0) {
            free(rest);
            return error_setf(err, -ret, "cannot read snapshot table: %s",
                              strerror(-ret));
        }
        sn->l1_table_offset = l1_table_offset;
        sn->l1_size = l1_size;
        sn->extra_size = extra;
        sn->vm_state_size = qcow2_be32(h + 32);
        sn->disk_size = s->size;
        if (extra >= 8) {
            sn->vm_state_size = qcow2_be64(rest);
        }
        if (extra >= 16) {
            sn->disk_size = qcow2_be64(rest + 8);
        }
        sn->id_str = qcow2_dup_bytes(rest + extra, id_len);
        sn->name = qcow2_dup_bytes(rest + extra + id_len, name_len);
        free(rest);
        s->nb_snapshots_loaded = (int)i + 1;
        if (!sn->id_str || !sn->name) {
            return -ENOMEM;
        }
        /* check reports (and does not follow) a bad L1 of one entry; the
         * entries after it still parse. */
        if ((sn->l1_table_offset % s->cluster_size ||
             (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) &&
            !(s->open_flags & BLOCK_O_CHECK)) {
            return error_setf(err, EINVAL,
                              "snapshot %u has an invalid L1 table", i);
        }
        off += qcow2_align_up(entry_len, 8);
        s->snapshots_size = off - s->snapshots_offset;
        s->snapshots_tail_pad = (uint32_t)(qcow2_align_up(entry_len, 8) -
                                           entry_len);
    }
    return 0;
}
