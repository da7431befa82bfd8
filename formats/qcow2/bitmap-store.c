/*
 * bitmap-store.c - storing qcow2 persistent dirty bitmaps (on request and
 * at close).
 *
 * Storing is copy-on-write: new data clusters and tables, their
 * refcounts on disk, the new directory, then the header extension in one
 * header write, and only then are the old clusters freed.  A crash at
 * any point shows the old or the new directory, at worst with leaked
 * clusters.  Freeing the old state frees a cluster only when it is in
 * use and nothing else the image knows of sits there (a hostile table
 * may name anything); when in doubt it leaks.  When nothing changed but
 * our IN_USE flags, they are cleared in place.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/bitmap-int.h"

/* Sets of cluster offsets for freeing the old state.  Past VEC_MAX
 * entries a set is "overflowed" and nothing is freed (a leak is always
 * allowed; a wrong free is not). */
#define VEC_MAX (4u << 20)

typedef struct U64Vec {
    uint64_t *v;
    size_t n, cap;
    bool overflow;
} U64Vec;

static void vec_push(U64Vec *a, uint64_t x)
{
    if (a->overflow) {
        return;
    }
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        uint64_t *v = cap > VEC_MAX ? NULL : realloc(a->v, cap * sizeof(*v));
        if (!v) {
            a->overflow = true;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
}

static void vec_push_range(U64Vec *a, uint64_t off, uint64_t bytes,
                           uint64_t cs)
{
    for (uint64_t c = 0; c < div_up(bytes, cs) && !a->overflow; c++) {
        vec_push(a, off + c * cs);
    }
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void vec_sort_unique(U64Vec *a)
{
    size_t k = 0;
    if (!a->n) {
        return;
    }
    qsort(a->v, a->n, sizeof(uint64_t), u64_cmp);
    for (size_t i = 0; i < a->n; i++) {
        if (k == 0 || a->v[k - 1] != a->v[i]) {
            a->v[k++] = a->v[i];
        }
    }
    a->n = k;
}

static bool vec_has(const U64Vec *a, uint64_t x)
{
    return a->n && bsearch(&x, a->v, a->n, sizeof(uint64_t), u64_cmp);
}

/* Writes bm's bits as new data clusters and a new table; *table_off and
 * *table_size describe them.  Needs s->lock. */
static int write_bitmap(Qcow2State *s, BlockBitmap *bm, uint64_t *table_off,
                        uint32_t *table_size, U64Vec *fresh)
{
    uint64_t cs = s->cluster_size;
    uint64_t bytes = block_bitmap_bytes(bm);
    uint64_t entries = div_up(bytes, cs);
    uint64_t tclusters = div_up(entries * 8, cs);
    uint64_t nonzero = 0;
    uint64_t *t = calloc(entries ? entries : 1, 8);
    uint8_t *buf = malloc(cs > tclusters * cs ? cs : tclusters * cs);
    int64_t data = 0, toff;
    int ret = 0;

    if (!t || !buf) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < entries; i++) {
        nonzero += !block_bitmap_bytes_zero(bm, i * cs, cs);
    }
    if (nonzero) {
        data = qcow2_alloc_clusters(s, nonzero);
        if (data < 0) {
            ret = (int)data;
            goto out;
        }
        vec_push_range(fresh, (uint64_t)data, nonzero * cs, cs);
    }
    uint64_t next = (uint64_t)data;
    for (uint64_t i = 0; i < entries && ret >= 0; i++) {
        if (block_bitmap_bytes_zero(bm, i * cs, cs)) {
            continue;
        }
        block_bitmap_get_bytes(bm, i * cs, cs, buf);
        ret = block_pwrite(block_file(s->node), next, cs, buf, 0);
        t[i] = next;
        next += cs;
    }
    if (ret < 0) {
        goto out;
    }
    toff = qcow2_alloc_clusters(s, tclusters ? tclusters : 1);
    if (toff < 0) {
        ret = (int)toff;
        goto out;
    }
    vec_push_range(fresh, (uint64_t)toff, tclusters ? tclusters * cs : cs,
                   cs);
    memset(buf, 0, tclusters ? tclusters * cs : cs);
    for (uint64_t i = 0; i < entries; i++) {
        qcow2_put_be64(buf + i * 8, t[i]);
    }
    ret = block_pwrite(block_file(s->node), (uint64_t)toff,
                       tclusters ? tclusters * cs : cs, buf, 0);
    *table_off = (uint64_t)toff;
    *table_size = (uint32_t)entries;
out:
    free(t);
    free(buf);
    return ret < 0 ? ret : 0;
}

/* Clusters the image uses for other metadata: a hostile bitmap table may
 * name any of them, and freeing one would corrupt the image. */
static void collect_metadata(Qcow2State *s, U64Vec *meta)
{
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t e = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (e) {
            vec_push(meta, e);
        }
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t e = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (e) {
            vec_push(meta, e);
        }
    }
    vec_push_range(meta, 0, s->cluster_size, s->cluster_size);
    vec_push_range(meta, s->l1_table_offset, (uint64_t)s->l1_size * 8,
                   s->cluster_size);
    vec_push_range(meta, s->refcount_table_offset,
                   s->refcount_table_size * 8, s->cluster_size);
    vec_push_range(meta, s->snapshots_offset, s->snapshots_size,
                   s->cluster_size);
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        vec_push_range(meta, s->snapshots[i].l1_table_offset,
                       (uint64_t)s->snapshots[i].l1_size * 8,
                       s->cluster_size);
    }
    if (s->crypto_length) {
        vec_push_range(meta, s->crypto_offset, s->crypto_length,
                       s->cluster_size);
    }
}

/* Drops the image's references to the old directory and to the tables
 * and data of old bitmaps the new directory no longer names (after the
 * header switched).  Each cluster is freed at most once, and only when it
 * is in use and nothing else the image knows of (fresh: what this store
 * allocated) sits there. */
static int free_old(Qcow2State *s, BlockBitmaps *set, Qcow2Bitmaps *old,
                    U64Vec *fresh)
{
    U64Vec kept = { 0 }, meta = { 0 }, out = { 0 };
    uint64_t cs = s->cluster_size;
    int64_t flen = block_get_length(block_file(s->node));
    int ret = 0;

    for (int j = 0; j < set->n; j++) {
        vec_push(&kept, set->v[j]->stored_offset);
    }
    vec_sort_unique(&kept);
    collect_metadata(s, &meta);
    for (size_t i = 0; i < fresh->n; i++) {
        vec_push(&meta, fresh->v[i]);
    }
    /* What the new directory names stays, even where an old table (of a
     * damaged in-use bitmap) names it too. */
    for (int j = 0; j < set->n && !meta.overflow; j++) {
        const BlockBitmap *bm = set->v[j];
        uint64_t *t;
        vec_push_range(&meta, bm->stored_offset,
                       (uint64_t)bm->stored_size * 8, cs);
        if (qcow2_read_table64(s, bm->stored_offset, bm->stored_size,
                               &t) < 0) {
            meta.overflow = true;       /* unknown: free nothing */
            break;
        }
        for (uint32_t k = 0; k < bm->stored_size; k++) {
            if (t[k] & BT_OFFSET_MASK) {
                vec_push(&meta, t[k] & BT_OFFSET_MASK);
            }
        }
        free(t);
    }
    vec_sort_unique(&meta);
    for (uint32_t i = 0; i < old->nb && !out.overflow; i++) {
        const Qcow2BitmapEntry *e = &old->entries[i];
        uint64_t *t;
        if (vec_has(&kept, e->table_offset)) {
            continue;
        }
        if (qcow2_read_table64(s, e->table_offset, e->table_size, &t) < 0) {
            continue;   /* it leaks */
        }
        /* One impossible entry and the whole table is garbage: what it
         * names may belong to anyone (guest data is not in meta), so all
         * of it leaks rather than risk a wrong free. */
        bool trusted = true;
        for (uint32_t k = 0; k < e->table_size && trusted; k++) {
            uint64_t d = t[k] & BT_OFFSET_MASK;
            trusted = !(t[k] & BT_RESERVED_MASK) &&
                      !(d && ((t[k] & BT_ALL_ONES) || d % cs || d < cs ||
                              d >= (uint64_t)flen));
        }
        if (trusted) {
            vec_push_range(&out, e->table_offset,
                           (uint64_t)e->table_size * 8, cs);
            for (uint32_t k = 0; k < e->table_size; k++) {
                if (t[k] & BT_OFFSET_MASK) {
                    vec_push(&out, t[k] & BT_OFFSET_MASK);
                }
            }
        }
        free(t);
    }
    vec_push_range(&out, old->dir_offset, old->dir_size, cs);
    if (kept.overflow || meta.overflow || out.overflow || fresh->overflow ||
        flen < 0) {
        goto done;      /* everything old leaks */
    }
    vec_sort_unique(&out);
    for (size_t i = 0; i < out.n && ret >= 0; i++) {
        uint64_t c = out.v[i], rc = 0;
        if (c >= (uint64_t)flen || vec_has(&meta, c) ||
            qcow2_get_refcount(s, c >> s->cluster_bits, &rc) < 0 || rc == 0) {
            continue;
        }
        ret = qcow2_free_clusters_deferred(s, c, 1);
    }
done:
    free(kept.v);
    free(meta.v);
    free(out.v);
    return ret;
}

static bool anything_changed(BlockBitmaps *set)
{
    if (set->set_changed) {
        return true;
    }
    for (int i = 0; i < set->n; i++) {
        if (__atomic_load_n(&set->v[i]->changed, __ATOMIC_RELAXED)) {
            return true;
        }
    }
    return false;
}

/* Flags a stored bitmap gets. */
static uint32_t flags_of(const BlockBitmap *bm)
{
    if (bm->inconsistent) {
        return bm->stored_flags;
    }
    return bm->enabled ? QCOW2_BME_AUTO : 0;
}

/* Nothing but our IN_USE flags to take back: in place. */
static int clear_in_use(Qcow2State *s, BlockBitmaps *set, Qcow2Bitmaps *d)
{
    uint32_t *flags = calloc(d->nb ? d->nb : 1, sizeof(*flags));
    if (!flags) {
        return -ENOMEM;
    }
    /* Unchanged set: set->v[i] is still the bitmap of entry i. */
    for (uint32_t i = 0; i < d->nb; i++) {
        BlockBitmap *bm = i < (uint32_t)set->n ? set->v[i] : NULL;
        flags[i] = bm && !strcmp(bm->name, d->entries[i].name)
                       ? flags_of(bm) : d->entries[i].flags;
    }
    int ret = qcow2_bitmaps_write_flags(s, d, flags);
    free(flags);
    if (ret >= 0) {
        d->in_use_set = false;
    }
    return ret;
}

static int build_dir(BlockBitmaps *set, uint8_t **out, uint64_t *size)
{
    uint64_t len = 0;
    for (int i = 0; i < set->n; i++) {
        len += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED +
                              strlen(set->v[i]->name), 8);
    }
    uint8_t *dir = calloc(1, len ? len : 1);
    if (!dir) {
        return -ENOMEM;
    }
    uint64_t pos = 0;
    for (int i = 0; i < set->n; i++) {
        const BlockBitmap *bm = set->v[i];
        size_t nl = strlen(bm->name);
        uint8_t *e = dir + pos;
        qcow2_put_be64(e, bm->stored_offset);
        qcow2_put_be32(e + 8, bm->stored_size);
        qcow2_put_be32(e + 12, flags_of(bm) & ~QCOW2_BME_EXTRA_COMPAT);
        e[16] = QCOW2_BT_DIRTY_TRACKING;
        e[17] = (uint8_t)bm->gran_bits;
        qcow2_put_be16(e + 18, (uint16_t)nl);
        memcpy(e + QCOW2_BITMAP_ENTRY_FIXED, bm->name, nl);
        pos += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED + nl, 8);
    }
    *out = dir;
    *size = len;
    return 0;
}

/* The in-memory state becomes the on-disk state: d is replaced by what
 * was just written (dir, which is taken over). */
static int remember(Qcow2State *s, BlockBitmaps *set, uint8_t *dir,
                    uint64_t dir_size, uint64_t dir_off)
{
    Qcow2Bitmaps *d = NULL;
    qcow2_bitmaps_free_disk(s->bitmaps);
    s->bitmaps = NULL;
    if (set->n == 0) {
        free(dir);
        return 0;
    }
    d = calloc(1, sizeof(*d));
    if (d) {
        d->entries = calloc((size_t)set->n, sizeof(*d->entries));
        d->flag_pos = calloc((size_t)set->n, sizeof(*d->flag_pos));
    }
    if (!d || !d->entries || !d->flag_pos) {
        free(dir);
        if (d) {
            free(d->entries);
            free(d->flag_pos);
            free(d);
        }
        return -ENOMEM;
    }
    d->dir = dir;
    d->dir_size = dir_size;
    d->dir_offset = dir_off;
    uint64_t pos = 0;
    for (int i = 0; i < set->n; i++) {
        BlockBitmap *bm = set->v[i];
        Qcow2BitmapEntry *e = &d->entries[i];
        e->name = strdup(bm->name);
        e->table_offset = bm->stored_offset;
        e->table_size = bm->stored_size;
        e->flags = flags_of(bm);
        e->gran_bits = (uint8_t)bm->gran_bits;
        d->flag_pos[i] = pos + 12;
        d->nb++;
        pos += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED + strlen(bm->name), 8);
        if (!e->name) {
            qcow2_bitmaps_free_disk(d);
            return -ENOMEM;
        }
    }
    s->bitmaps = d;
    return 0;
}

static int store_locked(BlockNode *n, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    BlockBitmaps *set = n->bitmaps;
    Qcow2Bitmaps *old = s->bitmaps;
    uint64_t *saved = NULL;
    U64Vec fresh = { 0 };
    uint8_t *dir = NULL;
    uint64_t dir_size = 0;
    int64_t dir_off = 0;
    int ret = 0;

    if (!anything_changed(set)) {
        if (old && old->in_use_set) {
            ret = clear_in_use(s, set, old);
            if (ret < 0) {
                return error_setf(err, -ret, "cannot update the bitmap "
                                  "directory");
            }
        }
        return 0;
    }
    /* Old locations, to put back if we fail before the switch. */
    saved = calloc((size_t)set->n + 1, 2 * sizeof(*saved));
    if (!saved) {
        return error_setf(err, ENOMEM, "Out of memory");
    }
    for (int i = 0; i < set->n; i++) {
        saved[2 * i] = set->v[i]->stored_offset;
        saved[2 * i + 1] = set->v[i]->stored_size;
    }
    for (int i = 0; i < set->n && ret >= 0; i++) {
        BlockBitmap *bm = set->v[i];
        if (bm->inconsistent || (!bm->changed && bm->stored_offset)) {
            continue;
        }
        ret = write_bitmap(s, bm, &bm->stored_offset, &bm->stored_size,
                           &fresh);
        if (ret < 0) {
            error_setf(err, -ret, "cannot write bitmap '%s'", bm->name);
        }
    }
    if (ret >= 0 && set->n) {
        ret = build_dir(set, &dir, &dir_size);
        if (ret >= 0) {
            dir_off = qcow2_alloc_clusters(s, div_up(dir_size,
                                                     s->cluster_size));
            ret = dir_off < 0 ? (int)dir_off : 0;
        }
        if (ret >= 0) {
            vec_push_range(&fresh, (uint64_t)dir_off, dir_size,
                           s->cluster_size);
        }
        if (ret >= 0) {
            ret = block_pwrite(block_file(s->node), (uint64_t)dir_off, dir_size,
                               dir, 0);
        }
        if (ret < 0) {
            error_setf(err, -ret, "cannot write the bitmap directory: %s",
                       strerror(-ret));
        }
    }
    /* The new clusters and their refcounts reach the disk before the
     * header points at them. */
    if (ret >= 0) {
        ret = qcow2_flush_caches(s);
        if (ret < 0) {
            error_setf(err, -ret, "cannot flush the bitmaps: %s",
                       strerror(-ret));
        }
    }
    if (ret >= 0) {
        uint64_t ac = s->autoclear_features;
        if (set->n) {
            ret = qcow2_bitmaps_set_ext(s, (uint32_t)set->n, dir_size,
                                        (uint64_t)dir_off);
            s->autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
        } else {
            qcow2_bitmaps_drop_ext(s);
            s->autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
        }
        if (ret >= 0) {
            ret = qcow2_write_header(s, err);
        } else {
            error_setf(err, -ret, "cannot update the bitmaps extension: %s",
                       strerror(-ret));
        }
        if (ret < 0) {
            s->autoclear_features = ac;
            if (old) {
                qcow2_bitmaps_set_ext(s, old->nb, old->dir_size,
                                      old->dir_offset);
            } else {
                qcow2_bitmaps_drop_ext(s);
            }
        }
    }
    if (ret < 0) {
        /* The new clusters leak; the image still holds the old state. */
        for (int i = 0; i < set->n; i++) {
            set->v[i]->stored_offset = saved[2 * i];
            set->v[i]->stored_size = (uint32_t)saved[2 * i + 1];
        }
        free(saved);
        free(dir);
        free(fresh.v);
        return ret;
    }
    free(saved);

    /* The header names the new state: the old one can go.  A failure
     * from here on only leaks clusters. */
    int fret = old ? free_old(s, set, old, &fresh) : 0;
    free(fresh.v);
    for (int i = 0; i < set->n; i++) {
        set->v[i]->changed = false;
        set->v[i]->stored_flags = flags_of(set->v[i]);
    }
    set->set_changed = false;
    ret = remember(s, set, dir, dir_size, (uint64_t)dir_off);
    if (fret >= 0) {
        fret = qcow2_flush_caches(s);
    }
    if (fret < 0 && !error_is_set(err)) {
        block_report(BLOCK_REPORT_WARNING, "could not free the old bitmap "
                     "clusters (%s); they leak", strerror(-fret));
    }
    return ret < 0 ? error_setf(err, -ret, "Out of memory") : 0;
}

int qcow2_bitmaps_store(BlockNode *n, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret;

    if (s->read_only) {
        return error_setf(err, EACCES, "cannot store bitmaps: the image is "
                          "read-only");
    }
    pthread_mutex_lock(&s->lock);
    pthread_rwlock_rdlock(&n->bitmaps->lock);
    ret = store_locked(n, err);
    pthread_rwlock_unlock(&n->bitmaps->lock);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

void qcow2_bitmaps_close(BlockNode *n)
{
    Qcow2State *s = qcow2_state(n);

    if (n->bitmaps && !n->read_only && !s->read_only) {
        Error err = { 0 };
        pthread_rwlock_rdlock(&n->bitmaps->lock);
        if (store_locked(n, &err) < 0) {
            block_report(BLOCK_REPORT_ERROR, "%s: could not store the dirty "
                         "bitmaps: %s", n->filename, err.msg);
        }
        pthread_rwlock_unlock(&n->bitmaps->lock);
    }
    block_bitmaps_free(n->bitmaps);
    n->bitmaps = NULL;
    qcow2_bitmaps_free_disk(s->bitmaps);
    s->bitmaps = NULL;
}
