/*
 * rw.c - qcow2 guest I/O: read, write (with allocation and copy-on-write),
 * zero writes and discard (block status: map.c).
 *
 * Concurrency: metadata is touched only under s->lock.  Guest data moves
 * without the lock: a write that changes metadata for a guest range first
 * registers that (cluster-aligned) range as in flight, so overlapping
 * allocating writers, zero writes and discards wait for it; then it drops
 * the lock, does its copy-on-write reads and data writes, and retakes the
 * lock to link the new clusters into the L2 table.  Writes into clusters
 * that are already allocated with refcount 1 (COPIED) need no metadata and
 * go straight to the host offset.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

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

static void wait_inflight(Qcow2State *s, uint64_t start, uint64_t end)
{
    while (qcow2_inflight_overlaps(s, start, end)) {
        pthread_cond_wait(&s->inflight_cond, &s->lock);
    }
}

static void inflight_add(Qcow2State *s, Qcow2InFlight *f, uint64_t start,
                         uint64_t end)
{
    f->start = start;
    f->end = end;
    f->next = s->inflight;
    s->inflight = f;
}

static void inflight_remove(Qcow2State *s, Qcow2InFlight *f)
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
/* Mapping lookup                                                      */

static bool entry_has_host(const Qcow2L2Entry *e)
{
    return e->type == QCOW2_CLUSTER_NORMAL ||
           e->type == QCOW2_CLUSTER_ZERO_ALLOC;
}

/* Maps [off, off + len) from off as far as the status stays the same
 * (and host offsets stay contiguous), within one L2 table.  Needs
 * s->lock.  Returns bytes covered (> 0) or a negative errno. */
int64_t qcow2_map_extent(Qcow2State *s, uint64_t off, uint64_t len,
                          Qcow2Extent *x)
{
    uint8_t *t;
    uint64_t idx;
    int ret = qcow2_get_l2_table(s, off, false, &t, &idx);
    uint64_t cs = s->cluster_size;
    uint64_t table_end = ((off >> (s->cluster_bits + s->l2_bits)) + 1)
                         << (s->cluster_bits + s->l2_bits);
    uint64_t limit = off + len < table_end ? off + len : table_end;

    if (ret < 0) {
        return ret;
    }
    memset(x, 0, sizeof(*x));
    if (!t) {
        x->type = QCOW2_SUBCLUSTER_UNALLOCATED;
        qcow2_decode_l2_entry(s, 0, 0, &x->entry);
        return (int64_t)(limit - off);
    }

    uint64_t pos = off;
    bool first = true;
    uint64_t expect_host = 0;
    while (pos < limit) {
        Qcow2L2Entry e;
        uint64_t cstart = pos & ~(cs - 1);
        qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, idx),
                              qcow2_l2_get_bitmap(s, t, idx), &e);
        if (first) {
            x->entry = e;
        }
        if (e.type == QCOW2_CLUSTER_COMPRESSED) {
            if (first) {
                x->type = QCOW2_SUBCLUSTER_COMPRESSED;
                pos = cstart + cs;
            }
            break;
        }
        bool host_ok = entry_has_host(&e);
        if (host_ok && (e.host_offset & (cs - 1))) {
            qcow2_cache_put(&s->l2_cache, &t);
            qcow2_signal_corruption(s, "cluster allocation offset 0x%llx "
                                    "unaligned (L2 index 0x%llx)",
                                    (unsigned long long)e.host_offset,
                                    (unsigned long long)idx);
            return -EIO;
        }
        /* Walk subclusters of this cluster. */
        while (pos < limit && pos < cstart + cs) {
            int sc = (int)((pos - cstart) >> s->subcluster_bits);
            Qcow2SubclusterType st = qcow2_subcluster_type(s, &e, sc);
            /* An unallocated subcluster of an allocated cluster has
             * its host bytes too (QEMU maps them: UNALLOCATED_ALLOC). */
            bool hh = host_ok && (st == QCOW2_SUBCLUSTER_DATA ||
                                  st == QCOW2_SUBCLUSTER_ZERO ||
                                  st == QCOW2_SUBCLUSTER_UNALLOCATED);
            uint64_t h = hh ? e.host_offset + (pos - cstart) : 0;
            if (first) {
                x->type = st;
                x->has_host = hh;
                x->host = h;
                first = false;
            } else if (st != x->type || hh != x->has_host ||
                       (hh && h != expect_host)) {
                goto done;
            }
            if (st == QCOW2_SUBCLUSTER_INVALID) {
                pos += s->subcluster_size - ((pos - cstart) &
                                             (s->subcluster_size - 1));
                goto done;
            }
            uint64_t step = s->subcluster_size -
                            ((pos - cstart) & (s->subcluster_size - 1));
            pos += step;
            expect_host = h + step;
        }
        idx++;
    }
done:
    qcow2_cache_put(&s->l2_cache, &t);
    if (pos > limit) {
        pos = limit;
    }
    return (int64_t)(pos - off);
}

/* ------------------------------------------------------------------ */
/* Reads                                                               */

/* A whole cluster is decompressed straight into buf; only a part of one
 * goes through a bounce buffer. */
static int read_compressed(Qcow2State *s, const Qcow2L2Entry *e,
                           uint64_t in_cluster, size_t len, uint8_t *buf)
{
    bool whole = in_cluster == 0 && len == s->cluster_size;
    uint8_t *cbuf = malloc(e->compressed_size ? e->compressed_size : 1);
    uint8_t *out = whole ? buf : malloc(s->cluster_size);
    int ret = -ENOMEM;

    if (cbuf && out) {
        ret = block_pread_zero_tail(block_file(s->node), e->host_offset,
                                    e->compressed_size, cbuf);
        if (ret >= 0) {
            ret = qcow2_decompress(s, cbuf, e->compressed_size, out);
        }
        if (ret >= 0 && !whole) {
            memcpy(buf, out + in_cluster, len);
        }
        ret = ret < 0 ? ret : 0;
    }
    free(cbuf);
    if (!whole) {
        free(out);
    }
    return ret;
}

/* Unallocated here: the backing file's bytes (zeroes past its end), or
 * zeroes without one. */
static int read_backing(Qcow2State *s, uint64_t off, BlockIOV *v)
{
    BlockNode *b = block_backing(s->node);
    int64_t blen = b ? block_get_length(b) : 0;
    if (blen < 0) {
        return (int)blen;
    }
    size_t have = 0;
    if (off < (uint64_t)blen) {
        have = (uint64_t)blen - off < v->size ? (size_t)((uint64_t)blen - off)
                                              : v->size;
    }
    int ret = 0;
    if (have == v->size) {
        ret = block_preadv(b, off, v, 0);
    } else if (have > 0) {
        BlockIOVSlice head;
        ret = blockiov_slice(&head, v, 0, have);
        if (ret >= 0) {
            ret = block_preadv(b, off, &head.v, 0);
            blockiov_slice_free(&head);
        }
    }
    if (ret >= 0 && have < v->size) {
        blockiov_memset(v, have, 0, v->size - have);
    }
    return ret;
}

/* Data that must pass through memory before it reaches the caller
 * (decryption, decompression) uses one flat buffer; a caller's single
 * buffer is used as it is. */
static int read_transformed(Qcow2State *s, const Qcow2Extent *x,
                            uint64_t off, BlockIOV *v)
{
    uint8_t *flat = blockiov_flat(v);
    uint8_t *buf = flat ? flat : malloc(v->size);
    int ret;
    if (!buf) {
        return -ENOMEM;
    }
    if (x->type == QCOW2_SUBCLUSTER_COMPRESSED) {
        ret = read_compressed(s, &x->entry, off & (s->cluster_size - 1),
                              v->size, buf);
    } else {
        ret = block_pread(qcow2_data_node(s), x->host, v->size, buf);
        if (ret >= 0) {
            ret = qcow2_crypto_decrypt(s, x->host, off, buf, v->size);
        }
    }
    if (!flat) {
        if (ret >= 0) {
            blockiov_from_buf(v, 0, buf, v->size);
        }
        free(buf);
    }
    return ret;
}

int qcow2_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    Qcow2State *s = qcow2_state(n);
    size_t pos = 0;
    (void)flags;
    int ret;

    while (pos < qiov->size) {
        Qcow2Extent x;
        pthread_mutex_lock(&s->lock);
        int64_t got = qcow2_map_extent(s, off, qiov->size - pos, &x);
        pthread_mutex_unlock(&s->lock);
        if (got < 0) {
            return (int)got;
        }
        size_t chunk = (size_t)got;
        BlockIOVSlice piece;
        ret = blockiov_slice(&piece, qiov, pos, chunk);
        if (ret < 0) {
            return ret;
        }
        switch (x.type) {
        case QCOW2_SUBCLUSTER_UNALLOCATED:
            ret = read_backing(s, off, &piece.v);
            break;
        case QCOW2_SUBCLUSTER_ZERO:
            blockiov_memset(&piece.v, 0, 0, chunk);
            ret = 0;
            break;
        case QCOW2_SUBCLUSTER_DATA:
            if (qcow2_encrypted(s)) {
                ret = read_transformed(s, &x, off, &piece.v);
            } else {
                ret = block_preadv(qcow2_data_node(s), x.host, &piece.v, 0);
            }
            break;
        case QCOW2_SUBCLUSTER_COMPRESSED:
            ret = read_transformed(s, &x, off, &piece.v);
            break;
        default:
            pthread_mutex_lock(&s->lock);
            qcow2_signal_corruption(s, "invalid subcluster state at guest "
                                    "offset 0x%llx",
                                    (unsigned long long)off);
            pthread_mutex_unlock(&s->lock);
            ret = -EIO;
            break;
        }
        blockiov_slice_free(&piece);
        if (ret < 0) {
            return ret;
        }
        off += chunk;
        pos += chunk;
    }
    return 0;
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
static uint64_t sc_mask(Qcow2State *s, uint64_t a, uint64_t b)
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
    uint64_t m = sc_mask(s, a, b);
    return (e->bitmap & m) == m && !(e->bitmap & (m << 32));
}

void qcow2_entry_in_table(Qcow2State *s, uint8_t *t, uint64_t idx,
                           Qcow2L2Entry *e)
{
    qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, idx),
                          qcow2_l2_get_bitmap(s, t, idx), e);
}

static int free_old_host(Qcow2State *s, const Qcow2L2Entry *e)
{
    if (s->has_data_file) {
        return 0;   /* data clusters are not refcounted */
    }
    if (e->type == QCOW2_CLUSTER_COMPRESSED) {
        return qcow2_free_compressed_deferred(s, e);
    }
    if (entry_has_host(e)) {
        return qcow2_free_clusters_deferred(s, e->host_offset, 1);
    }
    return 0;
}

/* Lazy refcounts: the first metadata change marks the image dirty. */
static int mark_dirty(Qcow2State *s)
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

/* Writes the pieces [head][data][tail] contiguously at host; a NULL head
 * or tail is zeroes.  Small ones go out as one write. */
static int write_pieces(Qcow2State *s, uint64_t host, const uint8_t *head,
                        uint64_t hlen, const uint8_t *data, uint64_t dlen,
                        const uint8_t *tail, uint64_t tlen)
{
    BlockNode *dn = qcow2_data_node(s);
    int ret = 0;

    if (s->crypto || (hlen + dlen + tlen <= 4 * s->cluster_size &&
                      (hlen || tlen))) {
        uint8_t *b = alloc_io_buf(hlen + dlen + tlen);
        if (!b) {
            return -ENOMEM;
        }
        put_piece(b, head, hlen);
        memcpy(b + hlen, data, dlen);
        put_piece(b + hlen + dlen, tail, tlen);
        if (s->crypto) {
            /* one buffer: the cipher needs whole sectors */
            ret = qcow2_crypto_write(s, host, b, hlen + dlen + tlen);
        } else {
            ret = block_pwrite(dn, host, hlen + dlen + tlen, b, 0);
        }
        free(b);
        return ret < 0 ? ret : 0;
    }
    ret = write_piece(dn, host, head, hlen);
    if (ret >= 0) {
        ret = block_pwrite(dn, host + hlen, dlen, data, 0);
    }
    if (ret >= 0) {
        ret = write_piece(dn, host + hlen + dlen, tail, tlen);
    }
    return ret < 0 ? ret : 0;
}

/* Writes data at host + hlen with its copy-on-write edges.  An edge that
 * is zero is left out when the host clusters are fresh (never written
 * since they lay past the end of the file, so they read as zero). */
static int write_cow(Qcow2State *s, uint64_t host, bool fresh,
                     const uint8_t *head, bool head_zero, uint64_t hlen,
                     const uint8_t *data, uint64_t dlen,
                     const uint8_t *tail, bool tail_zero, uint64_t tlen)
{
    if (fresh && head_zero) {
        host += hlen;
        head = NULL;
        hlen = 0;
    }
    if (fresh && tail_zero) {
        tail = NULL;
        tlen = 0;
    }
    return write_pieces(s, host, head, hlen, data, dlen, tail, tlen);
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
    uint64_t m = sc_mask(s, lo, hi);
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
                          const uint8_t *buf, bool *locked)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    uint64_t cstart = off & ~(cs - 1);
    uint64_t end = off + len;
    uint8_t *t;
    uint64_t idx;
    Qcow2L2Entry e;
    int ret;

    wait_inflight(s, cstart, qcow2_align_up(end, cs));
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
        if (s->crypto) {
            ret = qcow2_crypto_write(s, host, buf, pos - off);
        } else {
            ret = block_pwrite(qcow2_data_node(s), host, pos - off, buf, 0);
        }
        if (ret >= 0 && pos - off == len) {
            *locked = false;
            return (int64_t)len;
        }
        pthread_mutex_lock(&s->lock);
        return ret < 0 ? ret : (int64_t)(pos - off);
    }

    ret = mark_dirty(s);
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
        inflight_add(s, &f, cstart, cstart + cs);
        pthread_mutex_unlock(&s->lock);
        uint8_t *head = NULL, *tail = NULL;
        bool hz, tz;
        ret = cow_read(n, &e, lo, a - lo, &head, &hz);
        if (ret >= 0) {
            ret = cow_read(n, &e, b, hi - b, &tail, &tz);
        }
        if (ret >= 0) {
            /* the preallocated cluster may hold anything: write it all */
            ret = write_pieces(s, e.host_offset + (lo - cstart), head, a - lo,
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
                uint64_t m = sc_mask(s, lo, hi);
                nb = (cur.bitmap | m) & ~(m << 32);
            }
            qcow2_l2_set(s, t, idx, ne, nb);
            qcow2_cache_mark_dirty(&s->l2_cache, t);
            qcow2_cache_put(&s->l2_cache, &t);
            s->data_unflushed = true;
        }
        inflight_remove(s, &f);
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
    inflight_add(s, &f, cstart, last_cstart + cs);
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
        ret = write_cow(s, host + (lo - cstart), fresh, head, hz, off - lo,
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
        inflight_remove(s, &f);
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
            ret = free_old_host(s, &old);
        }
    }
    qcow2_cache_mark_dirty(&s->l2_cache, t);
    qcow2_cache_put(&s->l2_cache, &t);
    s->data_unflushed = true;
    inflight_remove(s, &f);
    return ret < 0 ? ret : (int64_t)(run_end - off);
}

/* ------------------------------------------------------------------ */
/* Compressed writes                                                   */

int qcow2_pwrite(BlockNode *n, uint64_t off, size_t len, const void *vbuf,
                 int flags);

/* Host bytes for clen bytes of compressed data, packed after the previous
 * compressed cluster when its host cluster has room (as QEMU packs them);
 * the span in whole sectors never crosses a host cluster, so each host
 * cluster it touches is the one it holds a reference to.  Needs s->lock. */
static int64_t alloc_compressed_bytes(Qcow2State *s, uint64_t clen)
{
    uint64_t cs = s->cluster_size;
    uint64_t coff = s->compressed_next;

    if (coff && (coff & (cs - 1)) &&
        (qcow2_align_up(coff + clen, 512) - 1) / cs == coff / cs) {
        int ret = qcow2_update_refcount(s, coff & ~(cs - 1), 1, 1);
        if (ret == 0) {
            s->compressed_next = coff + clen;
            return (int64_t)coff;
        }
        if (ret != -ERANGE) {
            return ret;
        }
        /* refcount_max references already: start a fresh cluster */
    }
    int64_t h = qcow2_alloc_clusters(s, 1);
    if (h < 0) {
        return h;
    }
    s->compressed_next = (uint64_t)h + clen;
    return h;
}

/* Stores the guest cluster at cstart (data: cluster_size bytes, zero
 * padded past the image end) compressed, or plainly when it does not
 * compress.  Compression runs without s->lock, in the calling thread;
 * only the allocation and the L2 update hold it. */
static int write_compressed_cluster(BlockNode *n, uint64_t cstart,
                                    const uint8_t *data)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    uint64_t valid = s->size - cstart < cs ? s->size - cstart : cs;
    uint8_t *out = malloc(cs);
    int ret;

    if (!out) {
        return -ENOMEM;
    }
    /* Stored compressed only when it saves space (QEMU's rule). */
    ssize_t clen = qcow2_compress(s, data, out, cs - 1);
    if (clen == -ENOSPC) {
        free(out);
        return qcow2_pwrite(n, cstart, valid, data, 0);
    }
    if (clen < 0) {
        free(out);
        return (int)clen;
    }

    pthread_mutex_lock(&s->lock);
    if (s->read_only) {
        ret = -EACCES;
        goto out_unlock;
    }
    wait_inflight(s, cstart, cstart + cs);
    uint8_t *t;
    uint64_t idx;
    ret = mark_dirty(s);
    if (ret >= 0) {
        /* The L2 table before the data, as for plain writes. */
        ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
    }
    if (ret < 0) {
        goto out_unlock;
    }
    qcow2_cache_put(&s->l2_cache, &t);
    int64_t coff = alloc_compressed_bytes(s, (uint64_t)clen);
    if (coff < 0) {
        ret = (int)coff;
        goto out_unlock;
    }
    Qcow2InFlight f;
    inflight_add(s, &f, cstart, cstart + cs);
    pthread_mutex_unlock(&s->lock);

    ret = block_pwrite(block_file(s->node), (uint64_t)coff, (size_t)clen, out, 0);

    pthread_mutex_lock(&s->lock);
    if (ret >= 0) {
        ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
    }
    if (ret < 0) {
        qcow2_update_refcount(s, (uint64_t)coff & ~(cs - 1), 1, -1);
        inflight_remove(s, &f);
        goto out_unlock;
    }
    Qcow2L2Entry old;
    qcow2_entry_in_table(s, t, idx, &old);
    uint64_t extra = ((uint64_t)coff + (uint64_t)clen - 1) / 512 -
                     (uint64_t)coff / 512;
    qcow2_l2_set(s, t, idx, QCOW2_OFLAG_COMPRESSED |
                 (extra << s->csize_shift) | (uint64_t)coff, 0);
    ret = free_old_host(s, &old);
    qcow2_cache_mark_dirty(&s->l2_cache, t);
    qcow2_cache_put(&s->l2_cache, &t);
    s->data_unflushed = true;
    inflight_remove(s, &f);
out_unlock:
    pthread_mutex_unlock(&s->lock);
    free(out);
    return ret < 0 ? ret : 0;
}

/* BLOCK_REQ_COMPRESSED: whole clusters only (the last one may end at the
 * end of the image), like QEMU. */
static int qcow2_pwrite_compressed(BlockNode *n, uint64_t off, size_t len,
                                   const uint8_t *buf)
{
    Qcow2State *s = qcow2_state(n);
    uint64_t cs = s->cluster_size;
    uint8_t *pad = NULL;
    int ret = 0;

    if (s->has_data_file || s->crypt_method != QCOW2_CRYPT_NONE) {
        return -ENOTSUP;
    }
    if (s->read_only) {
        return -EACCES;
    }
    if ((off & (cs - 1)) || ((len & (cs - 1)) && off + len != s->size)) {
        return -EINVAL;
    }
    while (len > 0 && ret >= 0) {
        const uint8_t *data = buf;
        size_t now = len < cs ? len : cs;
        if (now < cs) {
            pad = calloc(1, cs);
            if (!pad) {
                return -ENOMEM;
            }
            memcpy(pad, buf, now);
            data = pad;
        }
        ret = write_compressed_cluster(n, off, data);
        off += now;
        buf += now;
        len -= now;
    }
    free(pad);
    return ret;
}

int qcow2_pwrite(BlockNode *n, uint64_t off, size_t len, const void *vbuf,
                 int flags)
{
    Qcow2State *s = qcow2_state(n);
    const uint8_t *buf = vbuf;
    int ret = 0;

    if (flags & BLOCK_REQ_COMPRESSED) {
        ret = qcow2_pwrite_compressed(n, off, len, buf);
        if (ret == 0 && (flags & BLOCK_REQ_FUA)) {
            ret = block_flush(n);
        }
        return ret;
    }

    bool locked = true;
    pthread_mutex_lock(&s->lock);
    while (len > 0 && locked) {
        if (s->read_only) {
            ret = -EACCES;
            break;
        }
        int64_t done = write_step(n, off, len, buf, &locked);
        if (done < 0) {
            ret = (int)done;
            break;
        }
        off += (uint64_t)done;
        buf += done;
        len -= (size_t)done;
    }
    if (locked) {
        pthread_mutex_unlock(&s->lock);
    }
    if (ret == 0 && (flags & BLOCK_REQ_FUA)) {
        ret = block_flush(n);
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* Zero writes and discard                                             */

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

    wait_inflight(s, start, end);
    ret = mark_dirty(s);
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
                ret = free_old_host(s, &old);
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
    wait_inflight(s, cstart, cstart + cs);
    ret = qcow2_get_l2_entry(s, cstart, &e);
    if (ret < 0) {
        return ret;
    }
    if (!(e.type == QCOW2_CLUSTER_UNALLOCATED || qcow2_cluster_in_place(s, &e))) {
        return 0;
    }
    ret = mark_dirty(s);
    if (ret >= 0) {
        ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
    }
    if (ret < 0) {
        return ret;
    }
    qcow2_entry_in_table(s, t, idx, &e);
    uint64_t m = sc_mask(s, a, b);
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
    wait_inflight(s, a & ~(s->cluster_size - 1),
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
    wait_inflight(s, cstart, cstart + cs);
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
        ret = zero_edge(n, us, ue, op, &done);
        if (ret < 0) {
            return ret;
        }
        if (!done) {
            ret = write_zero_buffer(n, off, stop - off);
            if (ret < 0) {
                return ret;
            }
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
        ret = zero_edge(n, us, ue, op, &done);
        if (ret < 0) {
            return ret;
        }
        if (!done) {
            ret = write_zero_buffer(n, from, end - from);
            if (ret < 0) {
                return ret;
            }
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
