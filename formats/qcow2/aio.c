/*
 * aio.c - qcow2's asynchronous fast path (the driver's submit).
 *
 * A read whose guest range has one mapping in an L2 table that is already
 * cached, and a write that overwrites clusters in place (ours alone, data
 * subclusters only), need no metadata I/O: the request goes straight to
 * the file (or backing node) as an asynchronous request of its own, and
 * the qcow2 request ends when that one does.  So a server keeps many
 * requests in flight on one thread, through io_uring, for the common
 * case.  Everything else (a table to read, allocation, copy-on-write,
 * compression, encryption, FUA) is declined and runs on the synchronous
 * path in a worker thread, which is where those rules live.
 *
 * The checks are the synchronous path's own (qcow2_map_extent,
 * qcow2_cluster_in_place, qcow2_touches_only_data) made under s->lock; a
 * write also steps aside for any allocating write, zero write or discard
 * in flight on its clusters, as the synchronous overwrite does by
 * waiting.
 */
#include <errno.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

static void lower_done(void *opaque, int ret)
{
    block_request_complete(opaque, ret);
}

/* With s->lock held: where the whole read comes from, or false. */
static bool plan_read(Qcow2State *s, BlockRequest *req, Qcow2Extent *x)
{
    uint8_t *t;
    uint64_t idx;
    if (qcow2_get_l2_table_cached(s, req->offset, &t, &idx) != 1) {
        return false;
    }
    qcow2_cache_put(&s->l2_cache, &t);
    int64_t got = qcow2_map_extent(s, req->offset, req->bytes, x);
    return got == (int64_t)req->bytes;
}

static int submit_read(BlockNode *n, Qcow2State *s, BlockRequest *req)
{
    Qcow2Extent x;
    pthread_mutex_lock(&s->lock);
    bool known = plan_read(s, req, &x);
    pthread_mutex_unlock(&s->lock);
    if (!known) {
        return -EAGAIN;
    }
    switch (x.type) {
    case QCOW2_SUBCLUSTER_DATA:
        block_aio_preadv(qcow2_data_node(s), x.host, req->qiov, 0,
                         lower_done, req);
        return 0;
    case QCOW2_SUBCLUSTER_ZERO:
        blockiov_memset(req->qiov, 0, 0, req->bytes);
        block_request_complete(req, 0);
        return 0;
    case QCOW2_SUBCLUSTER_UNALLOCATED: {
        BlockNode *b = block_backing(n);
        if (!b) {
            blockiov_memset(req->qiov, 0, 0, req->bytes);
            block_request_complete(req, 0);
            return 0;
        }
        int64_t blen = block_get_length(b);
        if (blen < 0 || req->offset + req->bytes > (uint64_t)blen) {
            return -EAGAIN;   /* the zero tail is the slow path's job */
        }
        block_aio_preadv(b, req->offset, req->qiov, 0, lower_done, req);
        return 0;
    }
    default:
        return -EAGAIN;
    }
}

/* With s->lock held: the host offset of an in-place overwrite of the
 * whole request, or false. */
static bool plan_overwrite(Qcow2State *s, BlockRequest *req, uint64_t *host)
{
    uint64_t cs = s->cluster_size;
    uint64_t off = req->offset, end = off + req->bytes;
    uint64_t cstart = off & ~(cs - 1);
    if (qcow2_inflight_overlaps(s, cstart, qcow2_align_up(end, cs))) {
        return false;
    }
    uint8_t *t;
    uint64_t idx;
    if (qcow2_get_l2_table_cached(s, off, &t, &idx) != 1 || !t) {
        return false;
    }
    uint64_t table_span = (uint64_t)s->l2_entries << s->cluster_bits;
    bool ok = (off / table_span) == ((end - 1) / table_span);
    uint64_t pos = off;
    while (ok && pos < end) {
        Qcow2L2Entry e;
        qcow2_entry_in_table(s, t, idx, &e);
        uint64_t cend = (pos & ~(cs - 1)) + cs;
        uint64_t piece_end = cend < end ? cend : end;
        ok = qcow2_cluster_in_place(s, &e) &&
             qcow2_touches_only_data(s, &e, pos, piece_end);
        if (ok && pos == off) {
            *host = e.host_offset + (off - cstart);
        } else if (ok) {
            ok = e.host_offset == *host + (pos - off);
        }
        pos = piece_end;
        idx++;
    }
    qcow2_cache_put(&s->l2_cache, &t);
    return ok;
}

static int submit_write(Qcow2State *s, BlockRequest *req)
{
    if (req->flags & (BLOCK_REQ_FUA | BLOCK_REQ_COMPRESSED)) {
        return -EAGAIN;
    }
    uint64_t host = 0;
    pthread_mutex_lock(&s->lock);
    bool ok = !s->read_only && plan_overwrite(s, req, &host);
    pthread_mutex_unlock(&s->lock);
    if (!ok) {
        return -EAGAIN;
    }
    block_aio_pwritev(qcow2_data_node(s), host, req->qiov, 0, lower_done,
                      req);
    return 0;
}

int qcow2_submit(BlockNode *n, BlockRequest *req)
{
    Qcow2State *s = qcow2_state(n);
    if (qcow2_encrypted(s) || s->debug_events) {
        /* the synchronous paths raise the named events */
        return -EAGAIN;
    }
    switch (req->op) {
    case BLOCK_OP_READ:
        return submit_read(n, s, req);
    case BLOCK_OP_WRITE:
        return submit_write(s, req);
    default:
        return -EAGAIN;
    }
}
