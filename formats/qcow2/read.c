/*
 * read.c - qcow2 guest reads, and the mapping lookup (qcow2_map_extent)
 * that reads, block status (map.c) and the asynchronous fast path
 * (aio.c) share.
 *
 * The mapping is looked up under s->lock and the data read without it
 * (a writer links new clusters into the L2 table only after their data
 * is written).  Encrypted and compressed data pass through one flat
 * buffer; everything else goes straight into the caller's vector.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

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
        bool host_ok = qcow2_entry_has_host(&e);
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
            block_debug_event(block_file(n), BLOCK_EV_READ_BACKING_AIO);
            ret = read_backing(s, off, &piece.v);
            break;
        case QCOW2_SUBCLUSTER_ZERO:
            blockiov_memset(&piece.v, 0, 0, chunk);
            ret = 0;
            break;
        case QCOW2_SUBCLUSTER_DATA:
            block_debug_event(block_file(n), BLOCK_EV_READ_AIO);
            if (qcow2_encrypted(s)) {
                ret = read_transformed(s, &x, off, &piece.v);
            } else {
                ret = block_preadv(qcow2_data_node(s), x.host, &piece.v, 0);
            }
            break;
        case QCOW2_SUBCLUSTER_COMPRESSED:
            block_debug_event(block_file(n), BLOCK_EV_READ_COMPRESSED);
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
