/*
 * iscsi-lun.c - what the iscsi driver's LUN is and what it holds: its
 * capabilities, asked once at open (INQUIRY: a disk; READ CAPACITY(16):
 * size, block size, thin, zeroes where unmapped; the Block Limits and
 * Logical Block Provisioning VPD pages: transfer, UNMAP and WRITE SAME
 * limits and support; MODE SENSE: write protection, FUA), and its block
 * status from GET LBA STATUS on thin LUNs.  A LUN that is not thin is all
 * data.
 *
 * A GET LBA STATUS answer describes many runs: they are kept until the
 * next change to the LUN (IscsiState.write_gen), so a map of a LUN
 * written at random costs one command per answer, not per run.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/iscsi-int.h"

#define LBA_STATUS_ALLOC 4096

/* ------------------------------------------------------------------ */
/* Block status                                                        */

/* The cached run holding off, if the cache is current: its flags and
 * *pnum.  0 when it does not know. */
static int status_cached(IscsiState *s, uint64_t off, uint64_t len,
                         uint64_t *pnum, int zero, int data)
{
    int flags = 0;
    pthread_mutex_lock(&s->status_lock);
    if (s->status_gen == atomic_load(&s->write_gen)) {
        for (uint32_t i = 0; i < s->status_n; i++) {
            const struct StatusRun *r = &s->status[i];
            if (off >= r->start && off < r->end) {
                *pnum = r->end - off < len ? r->end - off : len;
                flags = r->zero ? zero : data;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->status_lock);
    return flags;
}

int iscsi_lun_block_status(BlockNode *n, uint64_t off, uint64_t len,
                           uint64_t *pnum, uint64_t *map, BlockNode **file)
{
    IscsiState *s = n->opaque;
    const int data = BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID |
                     BLOCK_STATUS_ALLOCATED;
    const int zero = BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID |
                     BLOCK_STATUS_ALLOCATED;
    *map = off;
    *file = n;
    *pnum = len;
    if (off >= iscsi_capacity(s)) {
        return zero;
    }
    if (!s->lbpme) {
        return data;
    }
    int flags = status_cached(s, off, len, pnum, zero, data);
    if (flags) {
        return flags;
    }
    uint64_t gen = atomic_load(&s->write_gen);
    IscsiCmd cmd = {
        .op = ISCSI_CMD_LBA_STATUS,
        .lun = s->lun,
        .lba = off / s->bs,
        .alloc_len = LBA_STATUS_ALLOC,
    };
    int ret = iscsi_conn_run(s->conn, &cmd);
    if (ret < 0) {
        return ret == -ENOTSUP ? data : ret;
    }
    struct scsi_get_lba_status *st = scsi_datain_unmarshall(cmd.task);
    flags = data;
    pthread_mutex_lock(&s->status_lock);
    s->status_n = 0;
    struct StatusRun *runs = st && st->num_descriptors
        ? realloc(s->status, st->num_descriptors * sizeof(*runs)) : NULL;
    if (runs) {
        s->status = runs;
        s->status_gen = gen;
    }
    for (uint32_t i = 0; st && i < st->num_descriptors; i++) {
        const struct scsi_lba_status_descriptor *d = &st->descriptors[i];
        /* Unmapped blocks of a LUN that does not promise zeroes hold
         * whatever: data, as far as anyone can tell. */
        struct StatusRun r = {
            .start = d->lba * s->bs,
            .end = (d->lba + d->num_blocks) * s->bs,
            .zero = d->provisioning != SCSI_PROVISIONING_TYPE_MAPPED &&
                    s->lbprz,
        };
        if (runs) {
            runs[s->status_n++] = r;
        }
        if (off >= r.start && off < r.end) {
            *pnum = r.end - off < len ? r.end - off : len;
            flags = r.zero ? zero : data;
        }
    }
    pthread_mutex_unlock(&s->status_lock);
    scsi_free_scsi_task(cmd.task);
    return flags;
}

/* ------------------------------------------------------------------ */
/* What the LUN is                                                     */

/* Runs an information command; *task (to be freed) holds the answer. */
static int ask(IscsiState *s, IscsiCmd *cmd, struct scsi_task **task)
{
    cmd->lun = s->lun;
    if (!cmd->alloc_len) {
        cmd->alloc_len = 255;
    }
    int ret = iscsi_conn_run(s->conn, cmd);
    *task = ret < 0 ? NULL : cmd->task;
    return ret;
}

int iscsi_lun_read_capacity(IscsiState *s, Error *err)
{
    struct scsi_task *t;
    IscsiCmd cmd = { .op = ISCSI_CMD_READCAP16, .alloc_len = 32 };
    int ret = ask(s, &cmd, &t);
    if (ret == 0) {
        struct scsi_readcapacity16 *rc = scsi_datain_unmarshall(t);
        if (rc) {
            s->bs = rc->block_length;
            s->nblocks = rc->returned_lba + 1;
            s->lbpme = rc->lbpme;
            s->lbprz = rc->lbprz;
        }
        scsi_free_scsi_task(t);
        ret = rc ? 0 : -EIO;
    } else if (ret == -ENOTSUP || ret == -EINVAL) {
        /* an old LUN: READ CAPACITY(10), 2 TiB at most, never thin */
        IscsiCmd c10 = { .op = ISCSI_CMD_READCAP10, .alloc_len = 8 };
        ret = ask(s, &c10, &t);
        if (ret == 0) {
            struct scsi_readcapacity10 *rc = scsi_datain_unmarshall(t);
            if (rc) {
                s->bs = rc->block_size;
                s->nblocks = (uint64_t)rc->lba + 1;
            }
            scsi_free_scsi_task(t);
            ret = rc ? 0 : -EIO;
        }
        cmd = c10;
    }
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the capacity of %s: %s",
                          s->display, cmd.msg[0] ? cmd.msg : strerror(-ret));
    }
    if (s->bs < 512 || s->bs > 65536 || (s->bs & (s->bs - 1))) {
        return error_setf(err, EIO, "%s has a block size of %u bytes, which "
                          "is not a power of two from 512 to 65536",
                          s->display, s->bs);
    }
    return 0;
}

static int check_disk(IscsiState *s, Error *err)
{
    struct scsi_task *t;
    IscsiCmd cmd = { .op = ISCSI_CMD_INQUIRY, .alloc_len = 96 };
    int ret = ask(s, &cmd, &t);
    if (ret < 0) {
        return error_setf(err, -ret, "INQUIRY of %s failed: %s", s->display,
                          cmd.msg);
    }
    struct scsi_inquiry_standard *inq = scsi_datain_unmarshall(t);
    if (!inq) {
        scsi_free_scsi_task(t);
        return error_setf(err, EIO, "INQUIRY of %s: malformed answer",
                          s->display);
    }
    int qual = inq->qualifier, type = inq->device_type;
    scsi_free_scsi_task(t);
    if (qual != SCSI_INQUIRY_PERIPHERAL_QUALIFIER_CONNECTED) {
        return error_setf(err, ENODEV, "%s: no device is connected at "
                          "that LUN", s->display);
    }
    if (type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS) {
        return error_setf(err, ENODEV, "%s is not a disk (SCSI device type "
                          "0x%02x, %s)", s->display, type,
                          scsi_devtype_to_str(type));
    }
    return 0;
}

static void read_vpd(IscsiState *s)
{
    struct scsi_task *t;
    bool has_bl = false, has_lbp = false;
    IscsiCmd cmd = { .op = ISCSI_CMD_INQUIRY, .evpd = 1,
                     .page = SCSI_INQUIRY_PAGECODE_SUPPORTED_VPD_PAGES };
    if (ask(s, &cmd, &t) == 0) {
        struct scsi_inquiry_supported_pages *sp = scsi_datain_unmarshall(t);
        for (int i = 0; sp && i < sp->num_pages; i++) {
            has_bl |= sp->pages[i] == SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS;
            has_lbp |= sp->pages[i] ==
                       SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING;
        }
        scsi_free_scsi_task(t);
    }
    if (has_bl) {
        IscsiCmd bl = { .op = ISCSI_CMD_INQUIRY, .evpd = 1,
                        .page = SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS,
                        .alloc_len = 64 };
        if (ask(s, &bl, &t) == 0) {
            struct scsi_inquiry_block_limits *l = scsi_datain_unmarshall(t);
            if (l) {
                if (l->max_xfer_len && l->max_xfer_len < s->max_xfer) {
                    s->max_xfer = l->max_xfer_len;
                }
                if (l->max_unmap && l->max_unmap < s->max_unmap) {
                    s->max_unmap = l->max_unmap;
                }
                if (l->max_ws_len && l->max_ws_len < s->max_ws) {
                    s->max_ws = (uint32_t)l->max_ws_len;
                }
            }
            scsi_free_scsi_task(t);
        }
    }
    if (has_lbp && s->lbpme) {
        IscsiCmd lp = { .op = ISCSI_CMD_INQUIRY, .evpd = 1,
                        .page = SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING,
                        .alloc_len = 64 };
        if (ask(s, &lp, &t) == 0) {
            struct scsi_inquiry_logical_block_provisioning *p =
                scsi_datain_unmarshall(t);
            if (p) {
                s->lbpu = p->lbpu;
                s->lbpws = p->lbpws;
            }
            scsi_free_scsi_task(t);
        }
    }
}

static void read_mode(IscsiState *s)
{
    struct scsi_task *t;
    IscsiCmd cmd = { .op = ISCSI_CMD_MODE_SENSE6 };
    if (ask(s, &cmd, &t) == 0) {
        struct scsi_mode_sense *ms = scsi_datain_unmarshall(t);
        if (ms) {
            s->wp = ms->device_specific_parameter & 0x80;
            s->dpofua = ms->device_specific_parameter & 0x10;
        }
        scsi_free_scsi_task(t);
    }
}

int iscsi_lun_probe(IscsiState *s, Error *err)
{
    int ret = check_disk(s, err);
    if (ret == 0) {
        ret = iscsi_lun_read_capacity(s, err);
    }
    if (ret == 0) {
        read_vpd(s);
        read_mode(s);
    }
    return ret;
}
