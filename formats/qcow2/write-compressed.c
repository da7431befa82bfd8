/*
 * write-compressed.c - qcow2 compressed writes (BLOCK_REQ_COMPRESSED):
 * whole clusters, compressed in the calling thread and packed after one
 * another in shared host clusters, as QEMU packs them.
 *
 * The compressed span of a cluster never crosses a host cluster, so each
 * host cluster it touches holds exactly one of its references.  Like any
 * allocating write, the guest cluster is in flight while its data is
 * written without s->lock, and its L2 entry changes only after.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/write-int.h"

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
    qcow2_wait_inflight(s, cstart, cstart + cs);
    uint8_t *t;
    uint64_t idx;
    ret = qcow2_mark_dirty(s);
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
    qcow2_inflight_add(s, &f, cstart, cstart + cs);
    pthread_mutex_unlock(&s->lock);

    block_debug_event(block_file(s->node), BLOCK_EV_WRITE_COMPRESSED);
    ret = block_pwrite(block_file(s->node), (uint64_t)coff, (size_t)clen, out, 0);

    pthread_mutex_lock(&s->lock);
    if (ret >= 0) {
        ret = qcow2_get_l2_table(s, cstart, true, &t, &idx);
    }
    if (ret < 0) {
        qcow2_update_refcount(s, (uint64_t)coff & ~(cs - 1), 1, -1);
        qcow2_inflight_remove(s, &f);
        goto out_unlock;
    }
    Qcow2L2Entry old;
    qcow2_entry_in_table(s, t, idx, &old);
    uint64_t extra = ((uint64_t)coff + (uint64_t)clen - 1) / 512 -
                     (uint64_t)coff / 512;
    qcow2_l2_set(s, t, idx, QCOW2_OFLAG_COMPRESSED |
                 (extra << s->csize_shift) | (uint64_t)coff, 0);
    ret = qcow2_free_old_host(s, &old);
    qcow2_cache_mark_dirty(&s->l2_cache, t);
    qcow2_cache_put(&s->l2_cache, &t);
    s->data_unflushed = true;
    qcow2_inflight_remove(s, &f);
out_unlock:
    pthread_mutex_unlock(&s->lock);
    free(out);
    return ret < 0 ? ret : 0;
}

/* BLOCK_REQ_COMPRESSED: whole clusters only (the last one may end at the
 * end of the image), like QEMU. */
int qcow2_pwrite_compressed(BlockNode *n, uint64_t off, size_t len,
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
