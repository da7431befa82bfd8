/*
 * iscsi-target.c - the disks of an iSCSI target, for a pool's refresh:
 * one session, REPORT LUNS, and per LUN INQUIRY (is it a disk),
 * READ CAPACITY(16) (size, thin), the Device Identification VPD page (a
 * key that stays the same however the LUNs are numbered or listed) and
 * GET LBA STATUS (what a thin LUN really holds, where libvirt reports
 * the capacity).
 *
 * Deterministic: every answer comes from the target in this one session;
 * UNIT ATTENTION and BUSY are retried by the connection (iscsi-conn.c),
 * never by the caller.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/iscsi-int.h"
#include "block/protocol/iscsi.h"

/* GET LBA STATUS calls spent on one LUN's allocation; a LUN fragmented
 * beyond that reports its capacity (what libvirt always reports). */
#define MAX_STATUS_CALLS 4096

void iscsi_lun_info_free(IscsiLunInfo *v, int n)
{
    for (int i = 0; i < n; i++) {
        free(v[i].key);
    }
    free(v);
}

static int ask(IscsiConn *c, IscsiCmd *cmd, int lun, struct scsi_task **t)
{
    cmd->lun = lun;
    if (!cmd->alloc_len) {
        cmd->alloc_len = 255;
    }
    int ret = iscsi_conn_run(c, cmd);
    *t = ret < 0 ? NULL : cmd->task;
    return ret;
}

static char *hex_key(char prefix, const char *bytes, int len)
{
    char *k = malloc((size_t)len * 2 + 2);
    if (!k) {
        return NULL;
    }
    k[0] = prefix;
    for (int i = 0; i < len; i++) {
        snprintf(k + 1 + 2 * i, 3, "%02x", (unsigned char)bytes[i]);
    }
    return k;
}

/* The logical unit's designator, as udev's scsi_id names disks: the
 * designator type as a digit, then the identifier in hex. */
static char *designator_key(IscsiConn *c, int lun)
{
    struct scsi_task *t;
    IscsiCmd cmd = { .op = ISCSI_CMD_INQUIRY, .evpd = 1,
                     .page = SCSI_INQUIRY_PAGECODE_DEVICE_IDENTIFICATION };
    if (ask(c, &cmd, lun, &t) < 0) {
        return NULL;
    }
    struct scsi_inquiry_device_identification *id =
        scsi_datain_unmarshall(t);
    static const int pref[] = { SCSI_DESIGNATOR_TYPE_NAA,
                                SCSI_DESIGNATOR_TYPE_EUI_64,
                                SCSI_DESIGNATOR_TYPE_SCSI_NAME_STRING,
                                SCSI_DESIGNATOR_TYPE_T10_VENDORT_ID };
    char *key = NULL;
    for (size_t p = 0; id && !key && p < sizeof(pref) / sizeof(pref[0]);
         p++) {
        for (struct scsi_inquiry_device_designator *d = id->designators;
             d && !key; d = d->next) {
            if (d->association == SCSI_ASSOCIATION_LOGICAL_UNIT &&
                (int)d->designator_type == pref[p] &&
                d->designator_length > 0) {
                key = hex_key((char)('0' + pref[p]), d->designator,
                              d->designator_length);
            }
        }
    }
    scsi_free_scsi_task(t);
    return key;
}

static char *serial_key(IscsiConn *c, int lun)
{
    struct scsi_task *t;
    IscsiCmd cmd = { .op = ISCSI_CMD_INQUIRY, .evpd = 1,
                     .page = SCSI_INQUIRY_PAGECODE_UNIT_SERIAL_NUMBER };
    if (ask(c, &cmd, lun, &t) < 0) {
        return NULL;
    }
    struct scsi_inquiry_unit_serial_number *sn = scsi_datain_unmarshall(t);
    char *key = NULL;
    if (sn && sn->usn && *sn->usn) {
        size_t len = strlen(sn->usn) + 2;
        key = malloc(len);
        if (key) {
            snprintf(key, len, "S%s", sn->usn);
        }
    }
    scsi_free_scsi_task(t);
    return key;
}

/* Bytes mapped on a thin LUN. */
static uint64_t mapped_bytes(IscsiConn *c, int lun, uint64_t blocks,
                             uint32_t bs)
{
    uint64_t lba = 0, mapped = 0;
    for (int calls = 0; lba < blocks; calls++) {
        if (calls == MAX_STATUS_CALLS) {
            return blocks * bs;
        }
        struct scsi_task *t;
        IscsiCmd cmd = { .op = ISCSI_CMD_LBA_STATUS, .lba = lba,
                         .alloc_len = 4096 };
        if (ask(c, &cmd, lun, &t) < 0) {
            return blocks * bs;
        }
        struct scsi_get_lba_status *st = scsi_datain_unmarshall(t);
        uint64_t next = lba;
        for (uint32_t i = 0; st && i < st->num_descriptors; i++) {
            const struct scsi_lba_status_descriptor *d = &st->descriptors[i];
            uint64_t end = d->lba + d->num_blocks;
            if (end <= next) {
                continue;
            }
            uint64_t from = d->lba > next ? d->lba : next;
            if (d->provisioning == SCSI_PROVISIONING_TYPE_MAPPED) {
                mapped += (end - from) * bs;
            }
            next = end;
        }
        scsi_free_scsi_task(t);
        if (next <= lba) {
            return blocks * bs;   /* no progress: a target gone odd */
        }
        lba = next;
    }
    return mapped;
}

/* Fills i for LUN lun; 1 when it is not a disk (skipped). */
static int describe(IscsiConn *c, const char *target, int lun,
                    IscsiLunInfo *i, Error *err)
{
    struct scsi_task *t;
    IscsiCmd inq = { .op = ISCSI_CMD_INQUIRY, .alloc_len = 96 };
    int ret = ask(c, &inq, lun, &t);
    if (ret < 0) {
        return error_setf(err, -ret, "INQUIRY of LUN %d of %s: %s", lun,
                          target, inq.msg);
    }
    struct scsi_inquiry_standard *std = scsi_datain_unmarshall(t);
    bool disk = std && std->qualifier ==
                SCSI_INQUIRY_PERIPHERAL_QUALIFIER_CONNECTED &&
                std->device_type ==
                SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS;
    scsi_free_scsi_task(t);
    if (!disk) {
        return 1;
    }
    IscsiCmd rc = { .op = ISCSI_CMD_READCAP16, .alloc_len = 32 };
    ret = ask(c, &rc, lun, &t);
    if (ret < 0) {
        return error_setf(err, -ret, "READ CAPACITY of LUN %d of %s: %s",
                          lun, target, rc.msg);
    }
    struct scsi_readcapacity16 *cap = scsi_datain_unmarshall(t);
    if (!cap || !cap->block_length) {
        scsi_free_scsi_task(t);
        return error_setf(err, EIO, "READ CAPACITY of LUN %d of %s: "
                          "malformed answer", lun, target);
    }
    i->lun = lun;
    i->block_size = cap->block_length;
    uint64_t blocks = cap->returned_lba + 1;
    i->capacity = blocks * cap->block_length;
    i->thin = cap->lbpme;
    scsi_free_scsi_task(t);
    i->allocation = i->thin ? mapped_bytes(c, lun, blocks, i->block_size)
                            : i->capacity;
    IscsiCmd ms = { .op = ISCSI_CMD_MODE_SENSE6 };
    if (ask(c, &ms, lun, &t) == 0) {
        struct scsi_mode_sense *m = scsi_datain_unmarshall(t);
        i->write_protected = m && (m->device_specific_parameter & 0x80);
        scsi_free_scsi_task(t);
    }
    i->key = designator_key(c, lun);
    if (!i->key) {
        i->key = serial_key(c, lun);
    }
    if (!i->key) {
        size_t len = strlen(target) + 16;
        i->key = malloc(len);
        if (i->key) {
            snprintf(i->key, len, "%s/%d", target, lun);
        }
    }
    return i->key ? 0 : error_setf(err, ENOMEM, "out of memory");
}

static int cmp_lun(const void *a, const void *b)
{
    return ((const IscsiLunInfo *)a)->lun - ((const IscsiLunInfo *)b)->lun;
}

static int list_luns(const char *portal, const char *target, KVList *opts,
                     int only, IscsiLunInfo **out, Error *err)
{
    *out = NULL;
    KVList o = { 0 };
    for (size_t i = 0; opts && i < opts->n; i++) {
        kvlist_set(&o, opts->items[i].key, opts->items[i].value);
        opts->items[i].used = true;
    }
    kvlist_set(&o, "portal", portal);
    kvlist_set(&o, "target", target);
    IscsiAddr a;
    int ret = iscsi_addr_parse(&a, NULL, &o, false, err);
    kvlist_free(&o);
    if (ret < 0) {
        return ret;
    }
    IscsiConn *c;
    ret = iscsi_conn_open(&c, &a, err);
    iscsi_addr_free(&a);
    if (ret < 0) {
        return ret;
    }
    struct scsi_task *t;
    IscsiCmd rl = { .op = ISCSI_CMD_REPORT_LUNS, .alloc_len = 16384 };
    ret = ask(c, &rl, 0, &t);
    if (ret < 0) {
        iscsi_conn_close(c);
        return error_setf(err, -ret, "REPORT LUNS of %s: %s", target,
                          rl.msg);
    }
    struct scsi_reportluns_list *list = scsi_datain_unmarshall(t);
    uint32_t n = list ? list->num : 0;
    IscsiLunInfo *v = calloc(n ? n : 1, sizeof(*v));
    int count = 0;
    if (!v) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    for (uint32_t k = 0; ret >= 0 && k < n; k++) {
        /* flat or peripheral addressing: the LUN number in 14 bits */
        int lun = list->luns[k] & 0x3fff;
        if (only >= 0 && lun != only) {
            continue;
        }
        ret = describe(c, target, lun, &v[count], err);
        if (ret == 0) {
            count++;
        } else if (ret == 1) {
            ret = 0;
        }
    }
    scsi_free_scsi_task(t);
    iscsi_conn_close(c);
    if (ret < 0) {
        iscsi_lun_info_free(v, count);
        return ret;
    }
    qsort(v, (size_t)count, sizeof(*v), cmp_lun);
    *out = v;
    return count;
}

int iscsi_target_luns(const char *portal, const char *target, KVList *opts,
                      IscsiLunInfo **out, Error *err)
{
    return list_luns(portal, target, opts, -1, out, err);
}

int iscsi_target_lun(const char *portal, const char *target, KVList *opts,
                     int lun, IscsiLunInfo *out, Error *err)
{
    IscsiLunInfo *v;
    int n = list_luns(portal, target, opts, lun, &v, err);
    if (n <= 0) {
        if (n == 0) {
            iscsi_lun_info_free(v, 0);
        }
        return n;
    }
    *out = v[0];
    v[0].key = NULL;
    iscsi_lun_info_free(v, n);
    return 1;
}

/* What iscsi.h's callers reach through iscsi_target_ops(). */
static const IscsiTargetOps iscsi_target_ops_table = {
    .version = ISCSI_TARGET_OPS_VERSION,
    .target_luns = iscsi_target_luns,
    .target_lun = iscsi_target_lun,
    .lun_info_free = iscsi_lun_info_free,
    .set_target_defaults = iscsi_set_target_defaults,
};

BLOCK_MODULE_OPS(iscsi_target_ops_table);
