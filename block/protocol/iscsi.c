/*
 * iscsi.c - the iscsi:// protocol driver: a LUN of an iSCSI target as a
 * node, on libiscsi.
 *
 * What the LUN can do is asked once, at open: READ CAPACITY(16) (size,
 * block size, whether it is thin and reads zeroes where it is unmapped),
 * the Block Limits VPD page (largest transfer, UNMAP and WRITE SAME
 * lengths) and the Logical Block Provisioning page (UNMAP, WRITE SAME
 * with UNMAP), MODE SENSE (write protection, FUA).  Requests are cut at
 * those limits here, since the core does not split them; the node's
 * request_alignment is the LUN's block size, so every request this
 * driver sees is whole blocks.
 *
 * All I/O is asynchronous underneath: each request becomes one or more
 * commands queued to the connection's service thread (iscsi-conn.c), so
 * the thread model is PARALLEL - callbacks only queue and wait, they never
 * touch the libiscsi context.  Asynchronous requests from the core are
 * completed from the service thread; synchronous ones wait for the same
 * commands.
 *
 * Fallbacks: discard without UNMAP support does nothing (discard is
 * advisory); write_zeroes without WRITE SAME, or when the LUN refuses it,
 * returns -ENOTSUP and the core writes zero buffers; WRITE SAME unmaps
 * only on a LUN that reads unmapped blocks as zeroes (LBPRZ), so zeroes
 * are never lost to unspecified contents.  Block status comes from GET
 * LBA STATUS on thin LUNs; a thick LUN is all data.
 *
 * What the LUN is (its capabilities at open) and what it holds (block
 * status) are asked in iscsi-lun.c.
 *
 * A LUN has a fixed size: reads past its end return zeroes (a bounced
 * read-modify-write may straddle it) and writes past it fail with
 * -ENOSPC, which is what a qcow2 bigger than its LUN meets.  There is no
 * image locking on a LUN (QEMU has none either; SCSI reservations are for
 * whoever manages the SAN).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/iscsi-int.h"

/* ------------------------------------------------------------------ */
/* Requests: one or more commands, completed together                  */

typedef struct IscsiReq IscsiReq;

typedef struct Piece {
    IscsiCmd cmd;            /* first: a command is its piece */
    BlockIOVSlice slice;
    struct scsi_iovec zero_iov;
    IscsiReq *req;
} Piece;

struct IscsiReq {
    atomic_uint_fast64_t *write_gen;
    atomic_int pending;
    atomic_int ret;
    void (*done)(IscsiReq *r, int ret);
    void *opaque;
    int npieces;
    Piece p[];
};

static void req_free(IscsiReq *r)
{
    for (int i = 0; i < r->npieces; i++) {
        blockiov_slice_free(&r->p[i].slice);
    }
    free(r);
}

static bool changes_data(IscsiCmdOp op)
{
    return op == ISCSI_CMD_WRITE || op == ISCSI_CMD_UNMAP ||
           op == ISCSI_CMD_WRITE_SAME;
}

static void piece_done(IscsiCmd *cmd, int ret)
{
    Piece *p = (Piece *)cmd;
    IscsiReq *r = p->req;
    if (changes_data(cmd->op)) {
        atomic_fetch_add(r->write_gen, 1);
    }
    if (ret < 0) {
        int zero = 0;
        atomic_compare_exchange_strong(&r->ret, &zero, ret);
    }
    if (atomic_fetch_sub(&r->pending, 1) == 1) {
        r->done(r, atomic_load(&r->ret));
    }
}

static IscsiReq *req_new(int npieces)
{
    IscsiReq *r = calloc(1, sizeof(*r) + (size_t)npieces * sizeof(Piece));
    if (!r) {
        return NULL;
    }
    r->npieces = npieces;
    atomic_init(&r->pending, npieces);
    atomic_init(&r->ret, 0);
    for (int i = 0; i < npieces; i++) {
        r->p[i].req = r;
        r->p[i].cmd.done = piece_done;
    }
    return r;
}

static void req_start(IscsiState *s, IscsiReq *r)
{
    r->write_gen = &s->write_gen;
    if (r->npieces && changes_data(r->p[0].cmd.op)) {
        atomic_fetch_add(&s->write_gen, 1);
    }
    for (int i = 0, n = r->npieces; i < n; i++) {
        iscsi_conn_submit(s->conn, &r->p[i].cmd);
    }
}

static uint32_t pieces_for(uint64_t blocks, uint32_t per)
{
    return (uint32_t)((blocks + per - 1) / per);
}

/* Commands for op over [off, off+bytes) (whole blocks inside the LUN);
 * qiov for READ / WRITE.  NULL with *ret set when there is nothing to
 * send or it cannot be sent. */
static IscsiReq *build(IscsiState *s, IscsiCmdOp op, uint64_t off,
                       uint64_t bytes, BlockIOV *qiov, int flags, int *ret)
{
    uint64_t lba = off / s->bs, blocks = bytes / s->bs;
    uint32_t per;
    switch (op) {
    case ISCSI_CMD_READ:
    case ISCSI_CMD_WRITE:
        per = s->max_xfer;
        break;
    case ISCSI_CMD_UNMAP:
        per = s->max_unmap;
        break;
    case ISCSI_CMD_WRITE_SAME:
        per = s->max_ws;
        break;
    default:
        per = 1;
        blocks = 1;
        break;
    }
    uint32_t n = pieces_for(blocks, per);
    IscsiReq *r = req_new((int)n);
    if (!r) {
        *ret = -ENOMEM;
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        Piece *p = &r->p[i];
        IscsiCmd *c = &p->cmd;
        uint64_t first = (uint64_t)i * per;
        uint64_t cnt = blocks - first < per ? blocks - first : per;
        c->op = op;
        c->lun = s->lun;
        c->lba = lba + first;
        c->nblocks = (uint32_t)cnt;
        c->block_size = s->bs;
        if (op == ISCSI_CMD_READ || op == ISCSI_CMD_WRITE) {
            if (blockiov_slice(&p->slice, qiov, (size_t)(first * s->bs),
                               (size_t)(cnt * s->bs)) < 0) {
                r->npieces = (int)i;
                req_free(r);
                *ret = -ENOMEM;
                return NULL;
            }
            /* struct scsi_iovec is struct iovec by libiscsi's promise */
            c->iov = (struct scsi_iovec *)p->slice.v.iov;
            c->niov = p->slice.v.niov;
            c->fua = op == ISCSI_CMD_WRITE && (flags & BLOCK_REQ_FUA);
        } else if (op == ISCSI_CMD_WRITE_SAME) {
            p->zero_iov.iov_base = s->zero_block;
            p->zero_iov.iov_len = s->bs;
            c->iov = &p->zero_iov;
            c->niov = 1;
            c->unmap = flags & BLOCK_REQ_MAY_UNMAP;
        }
    }
    return r;
}

static void sync_done(IscsiReq *r, int ret)
{
    iscsi_waiter_post(r->opaque, ret);
}

static int run(IscsiState *s, IscsiReq *r)
{
    IscsiWaiter w;
    iscsi_waiter_init(&w);
    r->done = sync_done;
    r->opaque = &w;
    req_start(s, r);
    int ret = iscsi_waiter_wait(&w);
    req_free(r);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Ranges against the LUN's end                                        */

/* A read: the part past the end reads as zero; *bytes is what is left
 * to read from the LUN (0: nothing). */
static void clip_read(IscsiState *s, uint64_t off, BlockIOV *qiov,
                      uint64_t *bytes)
{
    uint64_t cap = iscsi_capacity(s);
    uint64_t len = qiov->size;
    uint64_t in = off >= cap ? 0 : (cap - off < len ? cap - off : len);
    if (in < len) {
        blockiov_memset(qiov, (size_t)in, 0, (size_t)(len - in));
    }
    *bytes = in;
}

static int check_write(IscsiState *s, uint64_t off, uint64_t bytes)
{
    return off + bytes > iscsi_capacity(s) ? -ENOSPC : 0;
}

/* ------------------------------------------------------------------ */
/* Data                                                                */

static int iscsi_drv_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov,
                            int flags)
{
    IscsiState *s = n->opaque;
    uint64_t bytes;
    int ret = 0;
    clip_read(s, off, qiov, &bytes);
    if (!bytes) {
        return 0;
    }
    BlockIOVSlice head;
    BlockIOV *v = qiov;
    if (bytes < qiov->size) {
        if (blockiov_slice(&head, qiov, 0, (size_t)bytes) < 0) {
            return -ENOMEM;
        }
        v = &head.v;
    }
    IscsiReq *r = build(s, ISCSI_CMD_READ, off, bytes, v, 0, &ret);
    if (r) {
        ret = run(s, r);
    }
    if (v != qiov) {
        blockiov_slice_free(&head);
    }
    return ret;
}

static int iscsi_drv_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                             int flags)
{
    IscsiState *s = n->opaque;
    int ret = check_write(s, off, qiov->size);
    if (ret < 0) {
        return ret;
    }
    IscsiReq *r = build(s, ISCSI_CMD_WRITE, off, qiov->size, qiov, flags,
                        &ret);
    return r ? run(s, r) : ret;
}

static int iscsi_drv_flush(BlockNode *n)
{
    IscsiState *s = n->opaque;
    int ret;
    IscsiReq *r = build(s, ISCSI_CMD_SYNC_CACHE, 0, 0, NULL, 0, &ret);
    return r ? run(s, r) : ret;
}

static uint64_t clip_write_range(IscsiState *s, uint64_t off, uint64_t len)
{
    uint64_t cap = iscsi_capacity(s);
    return off >= cap ? 0 : (cap - off < len ? cap - off : len);
}

static int iscsi_drv_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    IscsiState *s = n->opaque;
    if (!s->lbpu || atomic_load(&s->no_unmap)) {
        return -ENOTSUP;
    }
    len = clip_write_range(s, off, len);
    if (!len) {
        return 0;
    }
    int ret;
    IscsiReq *r = build(s, ISCSI_CMD_UNMAP, off, len, NULL, 0, &ret);
    ret = r ? run(s, r) : ret;
    if (ret == -ENOTSUP) {
        atomic_store(&s->no_unmap, true);
    }
    return ret;
}

static int iscsi_drv_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                                  int flags)
{
    IscsiState *s = n->opaque;
    int ret = check_write(s, off, len);
    if (ret < 0) {
        return ret;
    }
    if (atomic_load(&s->no_ws)) {
        return -ENOTSUP;
    }
    /* Unmapping is zeroing only where unmapped blocks read zero. */
    if (!(s->lbpws && s->lbprz)) {
        flags &= ~BLOCK_REQ_MAY_UNMAP;
    }
    IscsiReq *r = build(s, ISCSI_CMD_WRITE_SAME, off, len, NULL,
                        flags & BLOCK_REQ_MAY_UNMAP, &ret);
    ret = r ? run(s, r) : ret;
    if (ret == -ENOTSUP || ret == -EINVAL) {
        /* the LUN does not do WRITE SAME (this way): buffers from now */
        atomic_store(&s->no_ws, true);
        ret = -ENOTSUP;
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* Asynchronous requests                                               */

static void aio_done(IscsiReq *r, int ret)
{
    BlockRequest *req = r->opaque;
    req_free(r);
    block_request_complete(req, ret);
}

static int iscsi_drv_submit(BlockNode *n, BlockRequest *req)
{
    IscsiState *s = n->opaque;
    IscsiReq *r = NULL;
    int ret = 0;
    uint64_t bytes;
    switch (req->op) {
    case BLOCK_OP_READ:
        clip_read(s, req->offset, req->qiov, &bytes);
        if (bytes != req->qiov->size) {
            /* at the end of the LUN: the synchronous path cuts it */
            return -EAGAIN;
        }
        r = build(s, ISCSI_CMD_READ, req->offset, bytes, req->qiov, 0, &ret);
        break;
    case BLOCK_OP_WRITE:
        ret = check_write(s, req->offset, req->qiov->size);
        if (ret == 0) {
            r = build(s, ISCSI_CMD_WRITE, req->offset, req->qiov->size,
                      req->qiov, req->flags, &ret);
        }
        break;
    case BLOCK_OP_FLUSH:
        r = build(s, ISCSI_CMD_SYNC_CACHE, 0, 0, NULL, 0, &ret);
        break;
    default:
        /* discard and zeroes have fallbacks the synchronous path knows */
        return -EAGAIN;
    }
    if (!r) {
        block_request_complete(req, ret);
        return 0;
    }
    r->done = aio_done;
    r->opaque = req;
    req_start(s, r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Open, close                                                         */

static bool iscsi_owns_filename(const char *filename)
{
    return iscsi_is_url(filename);
}

static char *iscsi_filename_from_opts(const KVList *opts)
{
    const char *portal = kvlist_peek(opts, "portal");
    const char *target = kvlist_peek(opts, "target");
    const char *lun = kvlist_peek(opts, "lun");
    if (!portal || !target) {
        return NULL;
    }
    size_t len = strlen(portal) + strlen(target) + 32;
    char *s = malloc(len);
    if (s) {
        snprintf(s, len, "iscsi://%s/%s/%s", portal, target,
                 lun ? lun : "0");
    }
    return s;
}

/* Connects to the LUN a filename and options name. */
static int connect_lun(IscsiState *s, const char *filename, KVList *opts,
                       Error *err)
{
    IscsiAddr a;
    int ret = iscsi_addr_parse(&a, iscsi_is_url(filename) ? filename : NULL,
                               opts, true, err);
    if (ret < 0) {
        return ret;
    }
    if (a.password_in_url) {
        block_report(BLOCK_REPORT_WARNING, "the CHAP password in the URL "
                     "of iSCSI target %s is visible to other users of this "
                     "machine; use password-secret=ID with --object "
                     "secret,id=ID,file=PATH instead", a.target);
    }
    s->display = iscsi_addr_display(&a);
    s->lun = a.lun;
    if (!s->display) {
        ret = error_setf(err, ENOMEM, "out of memory");
    } else {
        ret = iscsi_conn_open(&s->conn, &a, err);
    }
    iscsi_addr_free(&a);
    return ret;
}

static int iscsi_drv_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    IscsiState *s = n->opaque;
    pthread_mutex_init(&s->status_lock, NULL);
    s->max_xfer = UINT32_MAX;
    s->max_unmap = UINT32_MAX;
    s->max_ws = UINT32_MAX;
    int ret = connect_lun(s, n->filename, opts, err);
    if (ret < 0) {
        goto fail;
    }
    ret = iscsi_lun_probe(s, err);
    if (ret < 0) {
        goto fail;
    }
    if ((flags & BLOCK_O_RDWR) && s->wp) {
        ret = error_setf(err, EACCES, "%s is write-protected; open it "
                         "read-only", s->display);
        goto fail;
    }
    uint32_t xfer_cap = ISCSI_MAX_XFER_BYTES / s->bs;
    if (s->max_xfer > xfer_cap) {
        s->max_xfer = xfer_cap;
    }
    if (s->max_ws > xfer_cap * 8) {
        s->max_ws = xfer_cap * 8;
    }
    if (s->max_unmap > (1u << 30) / s->bs * 32) {
        s->max_unmap = (1u << 30) / s->bs * 32;
    }
    s->zero_block = calloc(1, s->bs);
    if (!s->zero_block) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto fail;
    }
    n->request_alignment = s->bs;
    n->max_transfer = (uint64_t)s->max_xfer * s->bs;
    return 0;
fail:
    iscsi_conn_close(s->conn);
    s->conn = NULL;
    free(s->display);
    s->display = NULL;
    pthread_mutex_destroy(&s->status_lock);
    return ret;
}

static void iscsi_drv_close(BlockNode *n)
{
    IscsiState *s = n->opaque;
    iscsi_conn_close(s->conn);
    free(s->display);
    free(s->zero_block);
    free(s->status);
    pthread_mutex_destroy(&s->status_lock);
}

static int iscsi_drv_reopen(BlockNode *n, int flags, Error *err)
{
    IscsiState *s = n->opaque;
    if ((flags & BLOCK_O_RDWR) && s->wp) {
        return error_setf(err, EACCES, "%s is write-protected", s->display);
    }
    return 0;
}

static bool iscsi_can_fua(BlockNode *n)
{
    IscsiState *s = n->opaque;
    return s->dpofua;
}

static bool iscsi_can_discard(BlockNode *n)
{
    IscsiState *s = n->opaque;
    return s->lbpu;
}

static bool iscsi_can_extents(BlockNode *n)
{
    IscsiState *s = n->opaque;
    return s->lbpme;
}

/* Every initiator's writes land on the same LUN, and SYNCHRONIZE CACHE
 * covers the whole LUN. */
static bool iscsi_can_multi_conn(BlockNode *n)
{
    return true;
}

static int64_t iscsi_drv_get_length(BlockNode *n)
{
    IscsiState *s = n->opaque;
    return (int64_t)iscsi_capacity(s);
}

/* Nobody can tell from the initiator side (QEMU says "unavailable"). */
static int64_t iscsi_drv_get_allocated_size(BlockNode *n)
{
    return -ENOTSUP;
}

static int iscsi_drv_truncate(BlockNode *n, uint64_t size, bool exact,
                              PreallocMode pm, Error *err)
{
    IscsiState *s = n->opaque;
    /* The LUN may have been resized on the target meanwhile. */
    int ret = iscsi_lun_read_capacity(s, err);
    if (ret < 0) {
        return ret;
    }
    uint64_t cap = iscsi_capacity(s);
    if (size == cap || (!exact && size < cap)) {
        return 0;
    }
    return error_setf(err, ENOTSUP, "Cannot %s %s (%llu bytes) to %llu "
                      "bytes: a LUN is resized on its target",
                      size > cap ? "grow" : "shrink", s->display,
                      (unsigned long long)cap, (unsigned long long)size);
}

/* "Creating" on a LUN: the LUN exists; it must be writable and big
 * enough (as QEMU's iscsi driver checks). */
static int iscsi_drv_create(const char *filename, uint64_t size,
                            KVList *opts, Error *err)
{
    const char *p = kvlist_get(opts, "preallocation");
    PreallocMode pm = PREALLOC_OFF;
    if (p && prealloc_parse(p, &pm) < 0) {
        return error_setf(err, EINVAL, "Invalid preallocation mode: '%s'",
                          p);
    }
    if (pm != PREALLOC_OFF) {
        return error_setf(err, ENOTSUP, "preallocation=%s is not supported "
                          "on an iSCSI LUN", p);
    }
    KVList empty = { 0 };
    BlockNode *node = block_open_protocol(filename, &empty, BLOCK_O_RDWR,
                                          err);
    if (!node) {
        return -(err && err->code ? err->code : EIO);
    }
    int64_t cap = block_get_length(node);
    block_close(node);
    if (cap >= 0 && (uint64_t)cap < size) {
        char have[32], want[32];
        format_size((uint64_t)cap, have, sizeof(have));
        format_size(size, want, sizeof(want));
        return error_setf(err, ENOSPC, "Could not create '%s': the LUN "
                          "holds %s, less than the %s asked for", filename,
                          have, want);
    }
    return kvlist_check_unused(opts, "iscsi", err);
}

static const BlockCreateOpt iscsi_create_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size (at most the LUN's)", NULL },
    { "preallocation", OPT_STRING, "Preallocation mode (allowed values: "
      "off)", "off" },
    { NULL, 0, NULL, NULL },
};

const BlockDriver iscsi_driver = {
    .name = "iscsi",
    .api_version = BLOCK_DRIVER_API_VERSION,
    .kind = BLOCK_DRIVER_PROTOCOL,
    .thread_model = BLOCK_THREAD_PARALLEL,
    .instance_size = sizeof(IscsiState),
    .owns_filename = iscsi_owns_filename,
    .filename_from_opts = iscsi_filename_from_opts,
    .open = iscsi_drv_open,
    .close = iscsi_drv_close,
    .reopen = iscsi_drv_reopen,
    .can_fua = iscsi_can_fua,
    .can_discard = iscsi_can_discard,
    .can_extents = iscsi_can_extents,
    .can_multi_conn = iscsi_can_multi_conn,
    .preadv = iscsi_drv_preadv,
    .pwritev = iscsi_drv_pwritev,
    .flush = iscsi_drv_flush,
    .discard = iscsi_drv_discard,
    .write_zeroes = iscsi_drv_write_zeroes,
    .block_status = iscsi_lun_block_status,
    .submit = iscsi_drv_submit,
    .get_length = iscsi_drv_get_length,
    .get_allocated_size = iscsi_drv_get_allocated_size,
    .truncate = iscsi_drv_truncate,
    .create = iscsi_drv_create,
    .create_opts = iscsi_create_opts,
};

BLOCK_DRIVER_MODULE(iscsi_driver);
