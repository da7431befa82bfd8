/*
 * scsi-lun.c - logical units over block nodes, the target that holds
 * them, and running one command (see scsi.h).
 *
 * Invariants:
 *  - a task holds a reference to its LUN from scsi_task_run until done
 *    is called, so a LUN detached meanwhile (hot unplug) lives until its
 *    last command completes;
 *  - every range is checked against the capacity, every transfer against
 *    the buffers given, before any I/O is submitted: a command either
 *    does what it says or fails with sense data and changes nothing
 *    (except a multi-range UNMAP or WRITE SAME that the node fails half
 *    way, which SBC allows);
 *  - a task's asynchronous pieces are counted in pending, plus one held
 *    by the submitter, so done runs once, after the last piece.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/scsi.h"

#define WRITE_SAME_CHUNK (1u << 20)

int scsi_lun_new(const ScsiLunConf *conf, ScsiLun **out, Error *err)
{
    uint32_t bs = conf->block_size ? conf->block_size : 512;
    if (bs < 512 || bs > 65536 || (bs & (bs - 1))) {
        return error_setf(err, EINVAL, "logical-block-size %u: a power of "
                          "two from 512 to 64k expected", bs);
    }
    if (conf->writable && block_node_read_only(conf->node)) {
        return error_setf(err, EROFS, "node '%s' is read-only",
                          block_node_name(conf->node));
    }
    int64_t len = block_get_length(conf->node);
    if (len < 0) {
        return error_setf(err, (int)-len, "cannot get the size of '%s'",
                          block_node_name(conf->node));
    }
    ScsiLun *l = calloc(1, sizeof(*l));
    if (!l) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    atomic_init(&l->refcnt, 1);
    l->node = block_ref(conf->node);
    l->read_only = !conf->writable;
    l->writethrough = conf->writethrough;
    l->can_discard = !l->read_only && block_node_can_discard(l->node);
    l->block_size = bs;
    atomic_init(&l->blocks, (uint64_t)len / bs);
    BlockInfoExtra extra = { 0 };
    block_get_info_extra(l->node, &extra);
    l->granularity = extra.cluster_size > bs ?
        (uint32_t)(extra.cluster_size / bs) : 1;
    /* Serials are printable ASCII without blanks (VPD 0x80). */
    const char *s = conf->serial ? conf->serial : block_node_name(l->node);
    size_t k = 0;
    for (; *s && k < sizeof(l->serial) - 1; s++) {
        if (*s > ' ' && *s < 0x7f) {
            l->serial[k++] = *s;
        }
    }
    if (k == 0) {
        strcpy(l->serial, "0");
    }
    *out = l;
    return 0;
}

ScsiLun *scsi_lun_ref(ScsiLun *l)
{
    if (l) {
        atomic_fetch_add(&l->refcnt, 1);
    }
    return l;
}

void scsi_lun_unref(ScsiLun *l)
{
    if (l && atomic_fetch_sub(&l->refcnt, 1) == 1) {
        block_close(l->node);
        free(l);
    }
}

void scsi_lun_resized(ScsiLun *l)
{
    int64_t len = block_get_length(l->node);
    if (len >= 0) {
        atomic_store(&l->blocks, (uint64_t)len / l->block_size);
        atomic_store(&l->pending_ua, ASC_CAPACITY_DATA_CHANGED);
    }
}

BlockNode *scsi_lun_node(ScsiLun *l)
{
    return l->node;
}

void scsi_target_init(ScsiTarget *t)
{
    memset(t, 0, sizeof(*t));
    pthread_rwlock_init(&t->lock, NULL);
}

void scsi_target_destroy(ScsiTarget *t)
{
    for (unsigned i = 0; i < SCSI_MAX_LUNS; i++) {
        scsi_lun_unref(t->luns[i]);
        t->luns[i] = NULL;
    }
    pthread_rwlock_destroy(&t->lock);
}

int scsi_target_attach(ScsiTarget *t, unsigned lun, ScsiLun *l)
{
    if (lun >= SCSI_MAX_LUNS) {
        return -ERANGE;
    }
    int ret = 0;
    pthread_rwlock_wrlock(&t->lock);
    if (t->luns[lun]) {
        ret = -EEXIST;
    } else {
        t->luns[lun] = l;
    }
    pthread_rwlock_unlock(&t->lock);
    return ret;
}

ScsiLun *scsi_target_detach(ScsiTarget *t, unsigned lun)
{
    if (lun >= SCSI_MAX_LUNS) {
        return NULL;
    }
    pthread_rwlock_wrlock(&t->lock);
    ScsiLun *l = t->luns[lun];
    t->luns[lun] = NULL;
    pthread_rwlock_unlock(&t->lock);
    return l;
}

ScsiLun *scsi_target_get(ScsiTarget *t, unsigned lun)
{
    if (lun >= SCSI_MAX_LUNS) {
        return NULL;
    }
    pthread_rwlock_rdlock(&t->lock);
    ScsiLun *l = scsi_lun_ref(t->luns[lun]);
    pthread_rwlock_unlock(&t->lock);
    return l;
}

/* ---- Completing a task ------------------------------------------------ */

static void finish(ScsiTask *t)
{
    blockiov_slice_free(&t->slice);
    free(t->buf);
    t->buf = NULL;
    scsi_lun_unref(t->lun);
    t->lun = NULL;
    t->done(t);
}

static void fail(ScsiTask *t, ScsiError e)
{
    t->status = SCSI_STATUS_CHECK_CONDITION;
    scsi_sense_fixed(t->sense, &e);
    t->sense_len = SCSI_SENSE_BYTES;
    finish(t);
}

static void fail_asc(ScsiTask *t, uint8_t key, uint16_t asc)
{
    fail(t, (ScsiError){ key, asc, -1, -1, false });
}

static void fail_field(ScsiTask *t, int byte)
{
    fail(t, (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB,
                         byte, -1, true });
}

static void fail_param(ScsiTask *t, int byte)
{
    fail(t, (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_PARAM,
                         byte, -1, false });
}

static void io_done(void *opaque, int ret)
{
    ScsiTask *t = opaque;
    if (ret < 0) {
        int zero = 0;
        atomic_compare_exchange_strong(&t->error, &zero, ret);
    }
    if (atomic_fetch_sub(&t->pending, 1) != 1) {
        return;
    }
    int e = atomic_load(&t->error);
    if (e < 0) {
        t->data_in = 0;
        fail(t, scsi_error_from_errno(e, t->cmd.kind != SCSI_CMD_READ));
    } else {
        finish(t);
    }
}

/* Copies a built response to the data-in buffers, cut to the allocation
 * length and the buffers' size. */
static void data_in(ScsiTask *t, const uint8_t *buf, size_t len,
                    uint32_t alloc)
{
    size_t n = len < alloc ? len : alloc;
    if (n > t->in->size) {
        n = t->in->size;
    }
    blockiov_from_buf(t->in, 0, buf, n);
    t->data_in = (uint32_t)n;
}

/* Where each CDB keeps its transfer length (for the field pointer). */
static int length_field(uint8_t op)
{
    switch (op >> 5) {
    case 0: return 4;
    case 1: case 2: return 7;
    case 5: return 6;
    default: return 10;
    }
}

static bool range_ok(ScsiLun *l, uint64_t lba, uint64_t blocks)
{
    uint64_t cap = atomic_load(&l->blocks);
    return lba <= cap && blocks <= cap - lba;
}

static void read_write(ScsiTask *t)
{
    ScsiLun *l = t->lun;
    ScsiCmd *c = &t->cmd;
    bool write = c->kind == SCSI_CMD_WRITE;
    uint64_t bytes = (uint64_t)c->blocks * l->block_size;
    if (bytes > SCSI_MAX_XFER_BYTES) {
        fail_field(t, length_field(c->op));
        return;
    }
    if (!range_ok(l, c->lba, c->blocks)) {
        fail_asc(t, SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
        return;
    }
    if (write && l->read_only) {
        fail_asc(t, SENSE_DATA_PROTECT, ASC_WRITE_PROTECTED);
        return;
    }
    if (bytes == 0) {
        finish(t);
        return;
    }
    const BlockIOV *buf = write ? t->out : t->in;
    if (buf->size < bytes) {
        t->overrun = true;
        finish(t);
        return;
    }
    if (blockiov_slice(&t->slice, buf, 0, (size_t)bytes) < 0) {
        fail_asc(t, SENSE_HARDWARE_ERROR, ASC_INTERNAL_TARGET_FAILURE);
        return;
    }
    atomic_store(&t->pending, 1);
    uint64_t off = c->lba * l->block_size;
    if (write) {
        block_aio_pwritev(l->node, off, &t->slice.v,
                          c->fua || l->writethrough ? BLOCK_REQ_FUA : 0,
                          io_done, t);
    } else {
        t->data_in = (uint32_t)bytes;
        block_aio_preadv(l->node, off, &t->slice.v, 0, io_done, t);
    }
}

/* WRITE SAME with a pattern that is not zero: one chunk after another,
 * each submitted from the previous one's completion. */
static void write_same_next(void *opaque, int ret)
{
    ScsiTask *t = opaque;
    if (ret < 0 || t->next >= t->end) {
        io_done(t, ret);
        return;
    }
    uint64_t n = t->end - t->next;
    if (n > t->chunk) {
        n = t->chunk;
    }
    blockiov_init_buf(&t->biov, &t->iov, t->buf, (size_t)n);
    uint64_t off = t->next;
    t->next += n;
    block_aio_pwritev(t->lun->node, off, &t->biov, 0, write_same_next, t);
}

static void write_same(ScsiTask *t)
{
    ScsiLun *l = t->lun;
    ScsiCmd *c = &t->cmd;
    uint64_t bs = l->block_size;
    if (c->blocks == 0) {
        fail_field(t, length_field(c->op));   /* WSNZ */
        return;
    }
    if ((uint64_t)c->blocks * bs > SCSI_MAX_UNMAP_BYTES) {
        fail_field(t, length_field(c->op));
        return;
    }
    if (!range_ok(l, c->lba, c->blocks)) {
        fail_asc(t, SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
        return;
    }
    if (l->read_only) {
        fail_asc(t, SENSE_DATA_PROTECT, ASC_WRITE_PROTECTED);
        return;
    }
    if (!c->ndob && t->out->size < bs) {
        t->overrun = true;
        finish(t);
        return;
    }
    uint8_t *pattern = malloc(bs);
    if (!pattern) {
        fail_asc(t, SENSE_HARDWARE_ERROR, ASC_INTERNAL_TARGET_FAILURE);
        return;
    }
    bool zero = true;
    if (c->ndob) {
        memset(pattern, 0, bs);
    } else {
        blockiov_to_buf(t->out, 0, pattern, bs);
        for (uint64_t i = 0; i < bs && zero; i++) {
            zero = pattern[i] == 0;
        }
    }
    uint64_t off = c->lba * bs, len = c->blocks * bs;
    atomic_store(&t->pending, 1);
    if (zero) {
        free(pattern);
        int flags = c->unmap && l->can_discard ? BLOCK_REQ_MAY_UNMAP : 0;
        block_aio_write_zeroes(l->node, off, len, flags, io_done, t);
        return;
    }
    t->chunk = len < WRITE_SAME_CHUNK ? len : WRITE_SAME_CHUNK;
    t->buf = malloc(t->chunk);
    if (!t->buf) {
        free(pattern);
        fail_asc(t, SENSE_HARDWARE_ERROR, ASC_INTERNAL_TARGET_FAILURE);
        return;
    }
    for (size_t i = 0; i < t->chunk; i += bs) {
        memcpy(t->buf + i, pattern, bs);
    }
    free(pattern);
    t->next = off;
    t->end = off + len;
    write_same_next(t, 0);
}

static void unmap(ScsiTask *t)
{
    ScsiLun *l = t->lun;
    uint32_t plen = t->cmd.alloc_len;
    if (l->read_only) {
        fail_asc(t, SENSE_DATA_PROTECT, ASC_WRITE_PROTECTED);
        return;
    }
    if (!l->can_discard) {
        fail(t, (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_INVALID_OPCODE, 0,
                             -1, true });
        return;
    }
    if (plen == 0) {
        finish(t);
        return;
    }
    if (plen < 8) {
        fail_asc(t, SENSE_ILLEGAL_REQUEST, ASC_PARAMETER_LIST_LENGTH);
        return;
    }
    if (t->out->size < plen) {
        t->overrun = true;
        finish(t);
        return;
    }
    uint8_t hdr[8];
    blockiov_to_buf(t->out, 0, hdr, sizeof(hdr));
    uint32_t dlen = (uint32_t)(hdr[2] << 8 | hdr[3]);
    if (dlen % 16 || dlen > plen - 8) {
        fail_param(t, 2);
        return;
    }
    unsigned n = dlen / 16;
    if (n > SCSI_MAX_UNMAP_DESC) {
        fail_param(t, 2);
        return;
    }
    uint8_t desc[SCSI_MAX_UNMAP_DESC * 16];
    blockiov_to_buf(t->out, 8, desc, (size_t)n * 16);
    uint64_t bs = l->block_size;
    for (unsigned i = 0; i < n; i++) {
        const uint8_t *d = desc + 16 * i;
        uint64_t lba = 0;
        for (int k = 0; k < 8; k++) {
            lba = lba << 8 | d[k];
        }
        uint32_t cnt = (uint32_t)d[8] << 24 | d[9] << 16 | d[10] << 8 | d[11];
        if (!range_ok(l, lba, cnt)) {
            fail_asc(t, SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
            return;
        }
        if ((uint64_t)cnt * bs > SCSI_MAX_UNMAP_BYTES) {
            fail_param(t, (int)(8 + 16 * i + 8));
            return;
        }
    }
    atomic_store(&t->pending, (int)n + 1);
    for (unsigned i = 0; i < n; i++) {
        const uint8_t *d = desc + 16 * i;
        uint64_t lba = 0;
        for (int k = 0; k < 8; k++) {
            lba = lba << 8 | d[k];
        }
        uint32_t cnt = (uint32_t)d[8] << 24 | d[9] << 16 | d[10] << 8 | d[11];
        if (cnt == 0) {
            io_done(t, 0);
        } else {
            block_aio_discard(l->node, lba * bs, cnt * bs, io_done, t);
        }
    }
    io_done(t, 0);
}

static void request_sense(ScsiTask *t, ScsiLun *l)
{
    ScsiError e = { SENSE_NO_SENSE, ASC_NO_ADDITIONAL_SENSE, -1, -1, false };
    int ua = l ? atomic_exchange(&l->pending_ua, 0) : 0;
    if (ua) {
        e = (ScsiError){ SENSE_UNIT_ATTENTION, (uint16_t)ua, -1, -1, false };
    } else if (!l) {
        e = (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_LUN_NOT_SUPPORTED, -1,
                         -1, false };
    }
    uint8_t s[SCSI_SENSE_BYTES];
    scsi_sense_fixed(s, &e);
    data_in(t, s, sizeof(s), t->cmd.alloc_len);
    finish(t);
}

/* Commands answered from a built buffer. */
static void info(ScsiTask *t)
{
    uint8_t buf[SCSI_INFO_MAX];
    ScsiError e;
    int n;
    uint32_t alloc = t->cmd.alloc_len;
    switch (t->cmd.kind) {
    case SCSI_CMD_INQUIRY:
        n = scsi_info_inquiry(t->lun, &t->cmd, buf, &e);
        break;
    case SCSI_CMD_MODE_SENSE:
        n = scsi_info_mode_sense(t->lun, &t->cmd, buf, &e);
        break;
    case SCSI_CMD_READ_CAPACITY_10:
        alloc = 8;
        /* fall through */
    case SCSI_CMD_READ_CAPACITY_16:
        n = scsi_info_read_capacity(t->lun, &t->cmd, buf, &e);
        break;
    case SCSI_CMD_REPORT_LUNS:
        n = scsi_info_report_luns(t->target, &t->cmd, buf, &e);
        break;
    default:    /* SCSI_CMD_GET_LBA_STATUS */
        n = scsi_info_lba_status(t->lun, &t->cmd, buf, &e);
        break;
    }
    if (n < 0) {
        fail(t, e);
        return;
    }
    data_in(t, buf, (size_t)n, alloc);
    finish(t);
}

void scsi_task_run(ScsiTarget *target, unsigned lun, ScsiTask *t)
{
    t->target = target;
    t->lun = scsi_target_get(target, lun);
    t->status = SCSI_STATUS_GOOD;
    t->sense_len = 0;
    t->data_in = 0;
    t->overrun = false;
    t->buf = NULL;
    t->slice.heap = NULL;
    atomic_store(&t->error, 0);
    ScsiError e;
    if (scsi_cdb_parse(t->cdb, t->cdb_len, &t->cmd, &e) < 0) {
        fail(t, e);
        return;
    }
    ScsiCmdKind k = t->cmd.kind;
    bool any_lun = k == SCSI_CMD_INQUIRY || k == SCSI_CMD_REPORT_LUNS ||
        k == SCSI_CMD_REQUEST_SENSE;
    if (!t->lun && !any_lun) {
        fail_asc(t, SENSE_ILLEGAL_REQUEST, ASC_LUN_NOT_SUPPORTED);
        return;
    }
    if (!any_lun) {
        int ua = atomic_exchange(&t->lun->pending_ua, 0);
        if (ua) {
            fail_asc(t, SENSE_UNIT_ATTENTION, (uint16_t)ua);
            return;
        }
    }
    switch (k) {
    case SCSI_CMD_TEST_UNIT_READY:
    case SCSI_CMD_START_STOP:
        finish(t);
        break;
    case SCSI_CMD_REQUEST_SENSE:
        request_sense(t, t->lun);
        break;
    case SCSI_CMD_INQUIRY:
    case SCSI_CMD_MODE_SENSE:
    case SCSI_CMD_READ_CAPACITY_10:
    case SCSI_CMD_READ_CAPACITY_16:
    case SCSI_CMD_REPORT_LUNS:
    case SCSI_CMD_GET_LBA_STATUS:
        if (k == SCSI_CMD_INQUIRY && !t->lun && t->cmd.evpd) {
            fail_field(t, 1);
            break;
        }
        info(t);
        break;
    case SCSI_CMD_READ:
    case SCSI_CMD_WRITE:
        read_write(t);
        break;
    case SCSI_CMD_SYNC_CACHE:
        if (t->cmd.blocks && !range_ok(t->lun, t->cmd.lba, t->cmd.blocks)) {
            fail_asc(t, SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
            break;
        }
        atomic_store(&t->pending, 1);
        block_aio_flush(t->lun->node, io_done, t);
        break;
    case SCSI_CMD_WRITE_SAME:
        write_same(t);
        break;
    case SCSI_CMD_UNMAP:
        unmap(t);
        break;
    }
}
