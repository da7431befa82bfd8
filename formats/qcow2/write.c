/*
 * write.c - qcow2 guest writes (with allocation and copy-on-write), the
 * in-flight ranges that order them, and what zero writes and compressed
 * writes (zero.c, write-compressed.c) share with them.
 *
 * Concurrency: metadata is touched only under s->lock.  Guest data moves
 * without the lock: a write that changes metadata for a guest range first
 * registers that (cluster-aligned) range as in flight, so overlapping
 * allocating writers, zero writes and discards wait for it; then it drops
 * the lock, does its copy-on-write reads and data writes, and retakes the
 * lock to link the new clusters into the L2 table.  Writes into clusters
 * that are already allocated with refcount 1 (COPIED) need no metadata and
 * go straight to the host offset.
 *
 * Ordering on disk: new data is written before the L2 entry that maps it
 * (data_unflushed holds the L2 table back until the data is flushed), and
 * the old cluster's reference is dropped only once that entry is on disk
 * (deferred frees).
 *
 * The data of a write comes from memory or, for copy_range_from, from a
 * host range of another file whose extents the file protocol shares
 * (Qcow2Src): the same allocation and ordering either way.  A shared
 * range covers whole clusters, so it never needs copy-on-write edges.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/write-int.h"

/* ------------------------------------------------------------------ */
/* In-flight ranges                                                    */

bool qcow2_inflight_overlaps(Qcow2State *s, uint64_t start, uint64_t end)
{
    for (Qcow2InFlight *f = s->inflight; f; f = f->next) {
        if (f->start < end && start < f->end) {
            return true;
        }
    }
    return false;
}

void qcow2_wait_inflight(Qcow2State *s, uint64_t start, uint64_t end)
{
    while (qcow2_inflight_overlaps(s, start, end)) {
        pthread_cond_wait(&s->inflight_cond, &s->lock);
    }
}

void qcow2_inflight_add(Qcow2State *s, Qcow2InFlight *f, uint64_t start,
                        uint64_t end)
{
    f->start = start;
    f->end = end;
    f->next = s->inflight;
    s->inflight = f;
}

void qcow2_inflight_remove(Qcow2State *s, Qcow2InFlight *f)
{
    for (Qcow2InFlight **p = &s->inflight; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            break;
        }
    }
    /* its data (and any data_unflushed it set) came after a concurrent
     * unlocked flush may have started */
    s->unflushed_gen++;
    pthread_cond_broadcast(&s->inflight_cond);
}

/* ------------------------------------------------------------------ */
/* Writes                                                              */

/* Whether the cluster can be written in place (it is ours alone). */
bool qcow2_cluster_in_place(Qcow2State *s, const Qcow2L2Entry *e)
{
    if (e->type != QCOW2_CLUSTER_NORMAL &&
        e->type != QCOW2_CLUSTER_ZERO_ALLOC) {
        return false;
    }
    return e->copied || s->has_data_file;
}

/* Bitmap bits of the subclusters [a, b) touches within its cluster. */
uint64_t qcow2_subcluster_mask(Qcow2State *s, uint64_t a, uint64_t b)
{
    uint64_t cs = s->cluster_size;
    uint64_t cstart = a & ~(cs - 1);
    int first = (int)((a - cstart) >> s->subcluster_bits);
    int last = (int)((b - 1 - cstart) >> s->subcluster_bits);
    uint64_t m = 0;
    for (int i = first; i <= last; i++) {
        m |= 1ull << i;
    }
    return m;
}

/* Does the write [a, b) within one cluster touch only data subclusters? */
bool qcow2_touches_only_data(Qcow2State *s, const Qcow2L2Entry *e,
                              uint64_t a, uint64_t b)
{
    if (!s->extended_l2) {
        return e->type == QCOW2_CLUSTER_NORMAL;
    }
    if (e->type != QCOW2_CLUSTER_NORMAL) {
        return false;
    }
    uint64_t m = qcow2_subcluster_mask(s, a, b);
    return (e->bitmap & m) == m && !(e->bitmap & (m << 32));
}

void qcow2_entry_in_table(Qcow2State *s, uint8_t *t, uint64_t idx,
                           Qcow2L2Entry *e)
{
    qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, idx),
                          qcow2_l2_get_bitmap(s, t, idx), e);
}

int qcow2_free_old_host(Qcow2State *s, const Qcow2L2Entry *e)
{
    if (s->has_data_file) {
        return 0;   /* data clusters are not refcounted */
    }
    if (e->type == QCOW2_CLUSTER_COMPRESSED) {
        return qcow2_free_compressed_deferred(s, e);
    }
    if (qcow2_entry_has_host(e)) {
        return qcow2_free_clusters_deferred(s, e->host_offset, 1);
    }
    return 0;
}

/* Lazy refcounts: the first metadata change marks the image dirty. */
int qcow2_mark_dirty(Qcow2State *s)
{
    if (!s->lazy_refcounts || s->dirty_set || s->version < 3) {
        return 0;
    }
    int ret = qcow2_update_incompat(s, QCOW2_INCOMPAT_DIRTY, 0);
    if (ret == 0) {
        s->dirty_set = true;
    }
    return ret;
}

/* Buffers that reach the file node: aligned for O_DIRECT so the core
 * never bounces them. */
static void *alloc_io_buf(uint64_t len)
{
    void *p = NULL;
    return posix_memalign(&p, 4096, len ? len : 1) == 0 ? p : NULL;
}

static bool all_zero(const uint8_t *p, uint64_t len)
{
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* Reads the current guest content for copy-on-write (lock not held; the
 * range is covered by our in-flight entry so it cannot change).  *zero
 * says the content is all zeroes; then *out is NULL when `old` (the entry
 * the range had) already proves it without reading. */
static int cow_read(BlockNode *n, const Qcow2L2Entry *old, uint64_t off,
                    uint64_t len, uint8_t **out, bool *zero)
{
    *out = NULL;
    *zero = true;
    if (len == 0 || old->type == QCOW2_CLUSTER_ZERO_PLAIN ||
        (old->type == QCOW2_CLUSTER_UNALLOCATED && !block_backing(n))) {
        return 0;
    }
    *out = alloc_io_buf(len);
    if (!*out) {
        return -ENOMEM;
    }
    struct iovec iov;
    BlockIOV v;
    blockiov_init_buf(&v, &iov, *out, len);
    int ret = qcow2_preadv(n, off, &v, 0);
    *zero = ret >= 0 && all_zero(*out, len);
    return ret;
}

/* Copies a piece into b, or zeroes when the piece is NULL (zeroes). */
static void put_piece(uint8_t *b, const uint8_t *piece, uint64_t len)
{
    if (piece) {
        memcpy(b, piece, len);
    } else {
        memset(b, 0, len);
    }
}

/* Where a write's data comes from: buf, or (buf NULL) the host range
 * [host, host + len) of the file node `file`, shared into ours. */
typedef struct Qcow2Src {
    const uint8_t *buf;
    BlockNode *file;
    uint64_t host;
    int flags;           /* block_copy_range_from's */
} Qcow2Src;

static Qcow2Src src_advance(Qcow2Src d, uint64_t by)
{
    if (d.buf) {
        d.buf += by;
    } else {
        d.host += by;
    }
    return d;
}

/* Puts len bytes of the write's data (guest offset guest) at host of
 * the data node. */
static int put_data(Qcow2State *s, uint64_t host, uint64_t guest,
                    uint64_t len, const Qcow2Src *d)
{
    block_debug_event(block_file(s->node), BLOCK_EV_WRITE_AIO);
    if (!d->buf) {
        return block_copy_range_from(qcow2_data_node(s), host, len, d->file,
                                     d->host, d->flags);
    }
    if (qcow2_encrypted(s)) {
        return qcow2_crypto_write(s, host, guest, d->buf, len);
    }
    return block_pwrite(qcow2_data_node(s), host, len, d->buf, 0);
}

/* Writes len bytes of piece (NULL: zeroes) at host. */
static int write_piece(BlockNode *dn, uint64_t host, const uint8_t *piece,
                       uint64_t len)
{
    uint8_t *z = NULL;
    if (len == 0) {
        return 0;
    }
    if (!piece) {
        z = alloc_io_buf(len);
        if (!z) {
            return -ENOMEM;
        }
        memset(z, 0, len);
        piece = z;
    }
    int ret = block_pwrite(dn, host, len, piece, 0);
    free(z);
    return ret;
}

/* Writes the pieces [head][data][tail] contiguously at host (guest
 * offset guest); a NULL head or tail is zeroes.  Small ones go out as
 * one write. */
static int write_pieces(Qcow2State *s, uint64_t host, uint64_t guest,
                        const uint8_t *head,
                        uint64_t hlen, const Qcow2Src *d, uint64_t dlen,
                        const uint8_t *tail, uint64_t tlen)
{
    BlockNode *dn = qcow2_data_node(s);
    const uint8_t *data = d->buf;
    int ret = 0;

    bool enc = qcow2_encrypted(s);
    if (!data && (hlen || tlen || enc)) {
        return -ENOTSUP;     /* shared data never has edges */
    }
    if (enc || (hlen + dlen + tlen <= 4 * s->cluster_size &&
                      (hlen || tlen))) {
        uint8_t *b = alloc_io_buf(hlen + dlen + tlen);
        if (!b) {
            return -ENOMEM;
        }
        put_piece(b, head, hlen);
        memcpy(b + hlen, data, dlen);
        put_piece(b + hlen + dlen, tail, tlen);
        if (enc) {
            /* one buffer: the cipher needs whole sectors */
            ret = qcow2_crypto_write(s, host, guest, b, hlen + dlen + tlen);
        } else {
            ret = block_pwrite(dn, host, hlen + dlen + tlen, b, 0);
        }
        free(b);
        return ret < 0 ? ret : 0;
    }
    ret = write_piece(dn, host, head, hlen);
    if (ret >= 0) {
        ret = put_data(s, host + hlen, guest + hlen, dlen, d);
    }
    if (ret >= 0) {
        ret = write_piece(dn, host + hlen + dlen, tail, tlen);
    }
    return ret < 0 ? ret : 0;
}

/* Writes data at host + hlen with its copy-on-write edges.  An edge that
 * is zero is left out when the host clusters are fresh (never written
 * since they lay past the end of the file, so they read as zero). */
static int write_cow(Qcow2State *s, uint64_t host, uint64_t guest,
                     bool fresh,
                     const uint8_t *head, bool head_zero, uint64_t hlen,
                     const Qcow2Src *data, uint64_t dlen,
                     const uint8_t *tail, bool tail_zero, uint64_t tlen)
{
    if (fresh && head_zero) {
        host += hlen;
        guest += hlen;
        head = NULL;
        hlen = 0;
    }
    if (fresh && tail_zero) {
        tail = NULL;
        tlen = 0;
    }
    return write_pieces(s, host, guest, head, hlen, data, dlen, tail, tlen);
}

/* Copy-on-write span for the cluster [cstart, cstart+cs) when the write
 * covers [a, b) of it: the bytes that must be written around the data. */
static void cow_span(Qcow2State *s, const Qcow2L2Entry *old, uint64_t cstart,
                     uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi)
{
    uint64_t cs = s->cluster_size;
    if (!s->extended_l2 || old->type == QCOW2_CLUSTER_NORMAL ||
        old->type == QCOW2_CLUSTER_COMPRESSED) {
        *lo = cstart;
        *hi = cstart + cs;
        return;
    }
    uint64_t scs = s->subcluster_size;
    *lo = a & ~(scs - 1);
    *hi = qcow2_align_up(b, scs);
}

/* New bitmap for a cluster freshly written over [lo, hi) (extended L2). */
static uint64_t new_bitmap(Qcow2State *s, const Qcow2L2Entry *old,
                           uint64_t lo, uint64_t hi)
{
    if (!s->extended_l2) {
        return 0;
    }
    uint64_t m = qcow2_subcluster_mask(s, lo, hi);
    uint64_t zero = 0;
    if (old->type != QCOW2_CLUSTER_NORMAL &&
        old->type != QCOW2_CLUSTER_COMPRESSED) {
        zero = old->bitmap & QCOW2_L2B_ZERO_MASK;
    } else if (old->type == QCOW2_CLUSTER_NORMAL) {
        m |= old->bitmap & QCOW2_L2B_ALLOC_MASK;
        zero = old->bitmap & QCOW2_L2B_ZERO_MASK;
    }
    return m | (zero & ~(m << 32));
}

/* One write step starting at off; returns bytes done or -errno.  Called
 * with s->lock held; returns with it held, except that an overwrite in
 * place that finishes the request returns without it (*locked = false):
 * retaking the lock only to drop it again costs contended writers a
 * futex round trip each. */
static int64_t write_step(BlockNode *n, uint64_t off, uint64_t len,
                          const Qcow2Src *buf, bool *locked)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    uint64_t cstart = off & ~(cs - 1);
    uint64_t end = off + len;
    uint8_t *t;
    uint64_t idx;
    Qcow2L2Entry e;
    int ret;

    qcow2_wait_inflight(s, cstart, qcow2_align_up(end, cs));
    ret = qcow2_get_l2_table(s, off, false, &t, &idx);
    if (ret < 0) {
        return ret;
    }
    if (t) {
        qcow2_entry_in_table(s, t, idx, &e);
    } else {
        qcow2_decode_l2_entry(s, 0, 0, &e);
    }
    uint64_t table_end = ((cstart >> (s->cluster_bits + s->l2_bits)) + 1)
                         << (s->cluster_bits + s->l2_bits);
    uint64_t limit = end < table_end ? end : table_end;

    /* 1. Pure overwrite of clusters that are ours: no metadata. */
    uint64_t first_end = cstart + cs < limit ? cstart + cs : limit;
    if (qcow2_cluster_in_place(s, &e) && qcow2_touches_only_data(s, &e, off, first_end)) {
        uint64_t host = e.host_offset + (off - cstart);
        uint64_t pos = first_end;
        uint64_t i = idx + 1;
        while (t && pos < limit) {
            Qcow2L2Entry ne;
            qcow2_entry_in_table(s, t, i, &ne);
            uint64_t ce = pos + cs < limit ? pos + cs : limit;
            if (!qcow2_cluster_in_place(s, &ne) ||
                !qcow2_touches_only_data(s, &ne, pos, ce) ||
                ne.host_offset != host + (pos - off)) {
                break;
            }
            pos = ce;
            i++;
        }
        qcow2_cache_put(&s->l2_cache, &t);
        pthread_mutex_unlock(&s->lock);
        ret = put_data(s, host, off, pos - off, buf);
        if (ret >= 0 && pos - off == len) {
            *locked = false;
            return (int64_t)len;
        }
        pthread_mutex_lock(&s->lock);
        return ret < 0 ? ret : (int64_t)(pos - off);
    }

    ret = qcow2_mark_dirty(s);
    if (ret < 0) {
        qcow2_cache_put(&s->l2_cache, &t);
        return ret;
    }

    /* 2. In place but the entry changes (preallocated zero cluster, or
     * subclusters that are not yet allocated). */
    if (qcow2_cluster_in_place(s, &e)) {
        qcow2_cache_put(&s->l2_cache, &t);
        uint64_t a = off, b = first_end;
        uint64_t lo, hi;
        if (s->extended_l2) {
            lo = a & ~(s->subcluster_size - 1);
            hi = qcow2_align_up(b, s->subcluster_size);
        } else {
            lo = cstart;
            hi = cstart + cs;
        }
        Qcow2InFlight f;
        qcow2_inflight_add(s, &f, cstart, cstart + cs);
        pthread_mutex_unlock(&s->lock);
        uint8_t *head = NULL, *tail = NULL;
        bool hz, tz;
        ret = cow_read(n, &e, lo, a - lo, &head, &hz);
        if (ret >= 0) {
            ret = cow_read(n, &e, b, hi - b, &tail, &tz);
        }
        if (ret >= 0) {
            /* the preallocated cluster may hold anything: write it all */
            ret = write_pieces(s, e.host_offset + (lo - cstart), lo, head,
                               a - lo,
                               buf, b - a, tail, hi - b);
        }
        free(head);
        free(tail);
        pthread_mutex_lock(&s->lock);
        if (ret >= 0) {
            ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
        }
        if (ret >= 0) {
            Qcow2L2Entry cur;
            qcow2_entry_in_table(s, t, idx, &cur);
            uint64_t ne = (cur.entry & ~QCOW2_OFLAG_ZERO) |
                          (s->has_data_file ? QCOW2_OFLAG_COPIED : 0);
            uint64_t nb = 0;
            if (s->extended_l2) {
                uint64_t m = qcow2_subcluster_mask(s, lo, hi);
                nb = (cur.bitmap | m) & ~(m << 32);
            }
            qcow2_l2_set(s, t, idx, ne, nb);
            qcow2_cache_mark_dirty(&s->l2_cache, t);
            qcow2_cache_put(&s->l2_cache, &t);
            s->data_unflushed = true;
        }
        qcow2_inflight_remove(s, &f);
        return ret < 0 ? ret : (int64_t)(b - a);
    }

    /* 3. Allocate a run of new clusters (copy-on-write at the edges). */
    uint64_t pos = first_end;
    uint64_t i = idx + 1;
    uint64_t nclusters = 1;
    Qcow2L2Entry last = e;
    while (pos < limit) {
        Qcow2L2Entry ne;
        if (t) {
            qcow2_entry_in_table(s, t, i, &ne);
        } else {
            qcow2_decode_l2_entry(s, 0, 0, &ne);
        }
        if (qcow2_cluster_in_place(s, &ne)) {
            break;
        }
        last = ne;
        pos = pos + cs < limit ? pos + cs : limit;
        i++;
        nclusters++;
    }
    qcow2_cache_put(&s->l2_cache, &t);
    uint64_t run_end = pos;   /* end of the data written in this step */
    uint64_t last_cstart = (run_end - 1) & ~(cs - 1);

    /* The L2 table before the data clusters, as QEMU lays them out. */
    ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
    if (ret < 0) {
        return ret;
    }
    qcow2_cache_put(&s->l2_cache, &t);

    uint64_t host;
    bool fresh = false;
    if (s->has_data_file) {
        host = cstart;
    } else {
        /* Clusters at or past alloc_end were never in use since they lay
         * past the end of the file: they still read as zeroes. */
        uint64_t first_unused = s->alloc_end;
        int64_t h = qcow2_alloc_clusters(s, nclusters);
        if (h < 0) {
            return h;
        }
        host = (uint64_t)h;
        fresh = (host >> s->cluster_bits) >= first_unused &&
                !qcow2_encrypted(s);
    }

    /* Edges: what must be copied around the data in the first and last
     * cluster of the run (the same cluster when the run has one). */
    uint64_t lo, hi, unused;
    cow_span(s, &e, cstart, off, nclusters == 1 ? run_end : cstart + cs,
             &lo, &unused);
    cow_span(s, &last, last_cstart, nclusters == 1 ? off : last_cstart,
             run_end, &unused, &hi);

    Qcow2InFlight f;
    qcow2_inflight_add(s, &f, cstart, last_cstart + cs);
    pthread_mutex_unlock(&s->lock);
    uint8_t *head = NULL, *tail = NULL;
    bool hz, tz;
    ret = cow_read(n, &e, lo, off - lo, &head, &hz);
    if (ret >= 0) {
        ret = cow_read(n, &last, run_end, hi - run_end, &tail, &tz);
    }
    bool grows = fresh;
    if (ret >= 0 && fresh && (block_file(s->node)->flags & BLOCK_O_NOCACHE)) {
        /* O_DIRECT: blocks that read as zero for the whole new clusters
         * first (a fallocate, as QEMU does).  The data writes then land
         * inside the file in allocated blocks, which O_DIRECT writers do
         * in parallel, where a write that grows the file or fills a hole
         * holds the inode lock for its whole I/O, and so does each later
         * write into the cluster's rest.  Through the page cache a hole
         * costs nothing at write time and keeps the file sparse.
         * Without fallocate the writes grow the file in turn
         * (grow_lock): waiting here costs less than contending in the
         * kernel. */
        grows = block_write_zeroes(block_file(s->node), host, nclusters * cs,
                                   BLOCK_REQ_NO_FALLBACK) < 0;
    }
    if (ret >= 0) {
        if (grows) {
            pthread_mutex_lock(&s->grow_lock);
        }
        ret = write_cow(s, host + (lo - cstart), lo, fresh, head, hz,
                        off - lo,
                        buf, run_end - off, tail, tz, hi - run_end);
        if (grows) {
            pthread_mutex_unlock(&s->grow_lock);
        }
    }
    free(head);
    free(tail);
    pthread_mutex_lock(&s->lock);

    if (ret >= 0) {
        ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
    }
    if (ret < 0) {
        if (!s->has_data_file) {
            /* Nothing points at the new clusters: give them back. */
            qcow2_update_refcount(s, host, nclusters * cs, -1);
        }
        qcow2_inflight_remove(s, &f);
        return ret;
    }
    for (uint64_t c = 0; c < nclusters; c++) {
        Qcow2L2Entry old;
        uint64_t cst = cstart + c * cs;
        qcow2_entry_in_table(s, t, idx + c, &old);
        uint64_t wlo = c == 0 ? lo : cst;
        uint64_t whi = c == nclusters - 1 ? hi : cst + cs;
        uint64_t bm = new_bitmap(s, &old, wlo, whi);
        qcow2_l2_set(s, t, idx + c, (host + c * cs) | QCOW2_OFLAG_COPIED, bm);
        if (ret >= 0) {
            ret = qcow2_free_old_host(s, &old);
        }
    }
    qcow2_cache_mark_dirty(&s->l2_cache, t);
    qcow2_cache_put(&s->l2_cache, &t);
    s->data_unflushed = true;
    qcow2_inflight_remove(s, &f);
    return ret < 0 ? ret : (int64_t)(run_end - off);
}

/* The write loop over a data source (memory or a shared host range). */
static int write_from(BlockNode *n, uint64_t off, uint64_t len, Qcow2Src d)
{
    Qcow2State *s = qcow2_state(n);
    int ret = 0;
    bool locked = true;
    pthread_mutex_lock(&s->lock);
    while (len > 0 && locked) {
        if (s->read_only) {
            ret = -EACCES;
            break;
        }
        int64_t done = write_step(n, off, len, &d, &locked);
        if (done < 0) {
            ret = (int)done;
            break;
        }
        off += (uint64_t)done;
        d = src_advance(d, (uint64_t)done);
        len -= (uint64_t)done;
    }
    if (locked) {
        pthread_mutex_unlock(&s->lock);
    }
    return ret;
}

/* Whole clusters only (so no copy-on-write edges are ever needed), never
 * into an encrypted image (its clusters hold ciphertext). */
int qcow2_copy_range_from(BlockNode *n, uint64_t off, uint64_t len,
                          BlockNode *src_file, uint64_t src_host, int flags)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    if (qcow2_encrypted(s) || off % cs || len % cs || src_host % 512) {
        return -ENOTSUP;
    }
    Qcow2Src d = { .file = src_file, .host = src_host, .flags = flags };
    return write_from(n, off, len, d);
}

int qcow2_pwrite(BlockNode *n, uint64_t off, size_t len, const void *vbuf,
                 int flags)
{
    const uint8_t *buf = vbuf;
    int ret = 0;

    if (flags & BLOCK_REQ_COMPRESSED) {
        ret = qcow2_pwrite_compressed(n, off, len, buf);
        if (ret == 0 && (flags & BLOCK_REQ_FUA)) {
            ret = block_flush_within(n);
        }
        return ret;
    }

    Qcow2Src d = { .buf = buf };
    ret = write_from(n, off, len, d);
    if (ret == 0 && (flags & BLOCK_REQ_FUA)) {
        ret = block_flush_within(n);
    }
    return ret;
}
