/*
 * vhost-blk.c - the virtio-blk request layer over a block node (see
 * vhost-blk.h).
 *
 * A request's header and payload may be split over any descriptors
 * (VERSION_1 implies ANY_LAYOUT): they are copied out of the vector, and
 * the data is handed to the block layer as a slice of the guest's own
 * buffers, without copying.  The status byte is the last byte of the
 * writable part.  Every request is checked against the capacity before
 * any I/O: a sector range past the end, a length that is not whole
 * sectors, a write to a read-only export, a discard/write-zeroes list
 * that is malformed, too long or has unknown flags, all end as IOERR or
 * UNSUPP without touching the node.
 *
 * A request with several discard or write-zeroes segments submits them
 * all and completes when the last one does (pending counts them, plus
 * one for the submitter so no completion can finish the request while
 * segments are still being submitted).
 */
#include <endian.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/vhost-blk.h"
#include "block/export/vhost-user.h"

struct VhostBlk {
    char *id;
    BlockNode *node;
    bool read_only;
    bool writethrough;
    uint32_t blk_size;
    int num_queues;
    uint32_t discard_align;     /* sectors */
    bool can_discard, can_zero;
    _Atomic uint64_t sectors;   /* capacity */
    VhostDev *dev;
};

typedef struct BlkReq {
    VhostBlk *b;
    VhostReq *req;
    uint8_t *status;
    uint32_t written;
    atomic_int pending;
    atomic_int error;
    BlockIOV out, in;
    BlockIOVSlice data;
} BlkReq;

static void finish(BlkReq *br, uint8_t status)
{
    *br->status = status;
    blockiov_slice_free(&br->data);
    vhost_req_complete(br->req, br->written);
}

static void io_done(void *opaque, int ret)
{
    BlkReq *br = opaque;
    if (ret < 0) {
        int zero = 0;
        atomic_compare_exchange_strong(&br->error, &zero, ret);
    }
    if (atomic_fetch_sub(&br->pending, 1) == 1) {
        int e = atomic_load(&br->error);
        finish(br, e == 0 ? VIRTIO_BLK_S_OK :
               e == -ENOTSUP ? VIRTIO_BLK_S_UNSUPP : VIRTIO_BLK_S_IOERR);
    }
}

/* [sector, sector + bytes) lies inside the disk. */
static bool in_range(VhostBlk *b, uint64_t sector, uint64_t bytes)
{
    uint64_t cap = atomic_load(&b->sectors);
    return sector <= cap && bytes / 512 <= cap - sector;
}

static void rw(BlkReq *br, uint64_t sector, bool write)
{
    VhostBlk *b = br->b;
    const BlockIOV *src = write ? &br->out : &br->in;
    size_t off = write ? sizeof(VirtioBlkOuthdr) : 0;
    size_t len = write ? br->out.size - off : br->in.size - 1;
    if (write && b->read_only) {
        finish(br, VIRTIO_BLK_S_IOERR);
        return;
    }
    if (len % 512 || !in_range(b, sector, len) ||
        blockiov_slice(&br->data, src, off, len) < 0) {
        finish(br, VIRTIO_BLK_S_IOERR);
        return;
    }
    if (!write) {
        br->written = (uint32_t)len + 1;
    }
    if (len == 0) {
        finish(br, VIRTIO_BLK_S_OK);
        return;
    }
    atomic_store(&br->pending, 1);
    if (write) {
        block_aio_pwritev(b->node, sector * 512, &br->data.v,
                          b->writethrough ? BLOCK_REQ_FUA : 0, io_done, br);
    } else {
        block_aio_preadv(b->node, sector * 512, &br->data.v, 0, io_done,
                         br);
    }
}

static void discard_or_zero(BlkReq *br, uint32_t type)
{
    VhostBlk *b = br->b;
    bool zero = type == VIRTIO_BLK_T_WRITE_ZEROES;
    size_t bytes = br->out.size - sizeof(VirtioBlkOuthdr);
    size_t n = bytes / sizeof(VirtioBlkDiscardWz);
    if (b->read_only || !(zero ? b->can_zero : b->can_discard)) {
        finish(br, b->read_only ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_UNSUPP);
        return;
    }
    if (bytes % sizeof(VirtioBlkDiscardWz) || n == 0 ||
        n > VHOST_BLK_MAX_DISCARD_SEG) {
        finish(br, VIRTIO_BLK_S_UNSUPP);
        return;
    }
    /* Check every segment before doing any. */
    for (size_t i = 0; i < n; i++) {
        VirtioBlkDiscardWz s;
        blockiov_to_buf(&br->out, sizeof(VirtioBlkOuthdr) + i * sizeof(s),
                        &s, sizeof(s));
        uint32_t allowed = zero ? VIRTIO_BLK_WZ_UNMAP : 0;
        if ((le32toh(s.flags) & ~allowed) ||
            le32toh(s.num_sectors) > VHOST_BLK_MAX_DISCARD_SECTORS) {
            finish(br, VIRTIO_BLK_S_UNSUPP);
            return;
        }
        if (!in_range(b, le64toh(s.sector),
                      (uint64_t)le32toh(s.num_sectors) * 512)) {
            finish(br, VIRTIO_BLK_S_IOERR);
            return;
        }
    }
    atomic_store(&br->pending, (int)n + 1);
    for (size_t i = 0; i < n; i++) {
        VirtioBlkDiscardWz s;
        blockiov_to_buf(&br->out, sizeof(VirtioBlkOuthdr) + i * sizeof(s),
                        &s, sizeof(s));
        uint64_t off = le64toh(s.sector) * 512;
        uint64_t len = (uint64_t)le32toh(s.num_sectors) * 512;
        /* The guest may have rewritten the list since we checked it. */
        if (!in_range(b, le64toh(s.sector), len) ||
            le32toh(s.num_sectors) > VHOST_BLK_MAX_DISCARD_SECTORS) {
            io_done(br, -EINVAL);
            continue;
        }
        if (len == 0) {
            io_done(br, 0);
        } else if (zero) {
            int flags = (le32toh(s.flags) & VIRTIO_BLK_WZ_UNMAP) &&
                b->can_discard ? BLOCK_REQ_MAY_UNMAP : 0;
            block_aio_write_zeroes(b->node, off, len, flags, io_done, br);
        } else {
            block_aio_discard(b->node, off, len, io_done, br);
        }
    }
    io_done(br, 0);
}

static void get_id(BlkReq *br)
{
    VhostBlk *b = br->b;
    char id[VIRTIO_BLK_ID_BYTES] = { 0 };
    size_t n = strlen(b->id);
    memcpy(id, b->id, n < sizeof(id) ? n : sizeof(id));
    size_t room = br->in.size - 1;
    size_t put = room < sizeof(id) ? room : sizeof(id);
    blockiov_from_buf(&br->in, 0, id, put);
    br->written = (uint32_t)put + 1;
    finish(br, VIRTIO_BLK_S_OK);
}

static void blk_handle(void *opaque, int qi, VhostReq *req)
{
    VhostBlk *b = opaque;
    BlkReq *br = vhost_req_priv(req);
    br->b = b;
    br->req = req;
    br->written = 1;
    if (req->out_bytes < sizeof(VirtioBlkOuthdr) || req->in_bytes < 1) {
        /* No header or no room for a status: nothing to answer with. */
        vhost_req_complete(req, 0);
        return;
    }
    blockiov_init(&br->out, req->iov, req->out_num);
    blockiov_init(&br->in, req->iov + req->out_num, req->in_num);
    /* The status byte: the last byte of the last non-empty writable
     * buffer (vq_walk never keeps empty ones). */
    struct iovec *last = &br->in.iov[br->in.niov - 1];
    br->status = (uint8_t *)last->iov_base + last->iov_len - 1;

    VirtioBlkOuthdr h;
    blockiov_to_buf(&br->out, 0, &h, sizeof(h));
    uint32_t type = le32toh(h.type);
    uint64_t sector = le64toh(h.sector);
    switch (type) {
    case VIRTIO_BLK_T_IN:
        rw(br, sector, false);
        break;
    case VIRTIO_BLK_T_OUT:
        rw(br, sector, true);
        break;
    case VIRTIO_BLK_T_FLUSH:
        atomic_store(&br->pending, 1);
        block_aio_flush(b->node, io_done, br);
        break;
    case VIRTIO_BLK_T_GET_ID:
        get_id(br);
        break;
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        discard_or_zero(br, type);
        break;
    default:
        finish(br, VIRTIO_BLK_S_UNSUPP);
        break;
    }
}

static void blk_get_config(void *opaque, uint32_t offset, uint8_t *buf,
                           uint32_t len)
{
    VhostBlk *b = opaque;
    VirtioBlkConfig c;
    memset(&c, 0, sizeof(c));
    c.capacity = htole64(atomic_load(&b->sectors));
    c.seg_max = htole32(VHOST_BLK_SEG_MAX);
    c.blk_size = htole32(b->blk_size);
    c.writeback = !b->writethrough;
    c.num_queues = htole16((uint16_t)b->num_queues);
    if (b->can_discard) {
        c.max_discard_sectors = htole32(VHOST_BLK_MAX_DISCARD_SECTORS);
        c.max_discard_seg = htole32(VHOST_BLK_MAX_DISCARD_SEG);
        c.discard_sector_alignment = htole32(b->discard_align);
    }
    if (b->can_zero) {
        c.max_write_zeroes_sectors = htole32(VHOST_BLK_MAX_DISCARD_SECTORS);
        c.max_write_zeroes_seg = htole32(VHOST_BLK_MAX_DISCARD_SEG);
        c.write_zeroes_may_unmap = b->can_discard;
    }
    if (offset < sizeof(c)) {
        uint32_t n = sizeof(c) - offset < len ? sizeof(c) - offset : len;
        memcpy(buf, (uint8_t *)&c + offset, n);
    }
}

static VhostDevOps blk_ops_template = {
    .config = true,
    .inflight = true,
    .req_size = sizeof(BlkReq),
    .get_config = blk_get_config,
    .handle = blk_handle,
};

typedef struct VhostBlkAlloc {
    VhostBlk b;
    VhostDevOps ops;
} VhostBlkAlloc;

int vhost_blk_new(const VhostBlkConf *conf, VhostBlk **out, Error *err)
{
    uint32_t bs = conf->logical_block_size ? conf->logical_block_size : 512;
    if (bs < 512 || bs > 65536 || (bs & (bs - 1))) {
        return error_setf(err, EINVAL, "logical-block-size %u: a power of "
                          "two from 512 to 64k expected", bs);
    }
    if (conf->num_queues < 1 || conf->num_queues > 64) {
        return error_setf(err, EINVAL, "num-queues %d: 1 to 64 expected",
                          conf->num_queues);
    }
    int64_t len = block_get_length(conf->node);
    if (len < 0) {
        return error_setf(err, (int)-len, "cannot get the size of '%s'",
                          block_node_name(conf->node));
    }
    if (conf->writable && block_node_read_only(conf->node)) {
        return error_setf(err, EROFS, "node '%s' is read-only",
                          block_node_name(conf->node));
    }
    VhostBlkAlloc *a = calloc(1, sizeof(*a));
    if (!a) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    VhostBlk *b = &a->b;
    b->id = strdup(conf->id ? conf->id : block_node_name(conf->node));
    b->node = block_ref(conf->node);
    b->read_only = !conf->writable;
    b->writethrough = conf->writethrough;
    b->blk_size = bs;
    b->num_queues = conf->num_queues;
    atomic_init(&b->sectors, (uint64_t)len / 512);
    b->can_discard = !b->read_only && block_node_can_discard(b->node);
    b->can_zero = !b->read_only;   /* the core falls back to buffers */
    BlockInfoExtra extra = { 0 };
    block_get_info_extra(b->node, &extra);
    uint64_t gran = extra.cluster_size > bs ? extra.cluster_size : bs;
    b->discard_align = (uint32_t)(gran / 512);

    a->ops = blk_ops_template;
    a->ops.features = (1ull << VIRTIO_BLK_F_SEG_MAX) |
        (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_MQ);
    /* FLUSH is what tells a driver the device has a volatile write
     * cache; a writethrough export has none (every write is FUA), so its
     * guest never needs to flush, and a crash of the daemon loses no
     * write the guest saw completed. */
    if (!b->writethrough) {
        a->ops.features |= 1ull << VIRTIO_BLK_F_FLUSH;
    }
    if (b->read_only) {
        a->ops.features |= 1ull << VIRTIO_BLK_F_RO;
    }
    if (b->can_discard) {
        a->ops.features |= 1ull << VIRTIO_BLK_F_DISCARD;
    }
    if (b->can_zero) {
        a->ops.features |= 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    char name[300];
    snprintf(name, sizeof(name), "vhost-user-blk export '%s'", b->id);
    b->dev = vhost_dev_new(name, &a->ops, b, b->num_queues);
    if (!b->id || !b->dev) {
        vhost_blk_free(b);
        return error_setf(err, ENOMEM, "out of memory");
    }
    *out = b;
    return 0;
}

int vhost_blk_listen(VhostBlk *b, const char *path, int fd, Error *err)
{
    return vhost_dev_listen(b->dev, path, fd, err);
}

void vhost_blk_free(VhostBlk *b)
{
    if (!b) {
        return;
    }
    vhost_dev_free(b->dev);
    block_close(b->node);
    free(b->id);
    free(b);   /* b is the first member of its VhostBlkAlloc */
}

int vhost_blk_resized(VhostBlk *b)
{
    int64_t len = block_get_length(b->node);
    if (len < 0) {
        return (int)len;
    }
    atomic_store(&b->sectors, (uint64_t)len / 512);
    return vhost_dev_config_changed(b->dev);
}

struct VhostDev *vhost_blk_dev(VhostBlk *b)
{
    return b->dev;
}
