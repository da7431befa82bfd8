/*
 * iscsi.h - what a storage pool asks of an iSCSI target beyond opening
 * one LUN as a node (that is iscsi:// through block.h): the target's
 * disks, for an iSCSI pool's refresh, and the credentials its LUNs are
 * opened with.  The iscsi driver is a loadable module (it links
 * libiscsi), so these are operations of that module: iscsi_target_ops()
 * loads it and returns its table, and whoever calls them never links or
 * loads libiscsi itself.
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_ISCSI_H
#define IMGTOOL_BLOCK_PROTOCOL_ISCSI_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block/block.h"

typedef struct IscsiLunInfo {
    int lun;
    uint64_t capacity;       /* bytes (READ CAPACITY) */
    uint64_t allocation;     /* bytes mapped: GET LBA STATUS on a thin
                                LUN, the capacity on a thick one */
    uint32_t block_size;
    bool thin;
    bool write_protected;
    char *key;               /* stable and unique: the LUN's designator
                                (NAA, EUI-64, ...) as scsi_id prints it,
                                else its serial, else TARGET/lun */
} IscsiLunInfo;

/* Bumped when IscsiTargetOps changes: a module from another build is
 * refused rather than called through the wrong layout. */
#define ISCSI_TARGET_OPS_VERSION 1

typedef struct IscsiTargetOps {
    int version;             /* ISCSI_TARGET_OPS_VERSION */
    /* Logs in to `target` at `portal` (opts: user, password-secret,
     * initiator-name, timeout, as iscsi:// takes them) and lists its
     * disk LUNs in LUN order: REPORT LUNS, then INQUIRY, READ CAPACITY
     * and the Device Identification page of each; allocation comes from
     * GET LBA STATUS.  One session, no retries needed: a UNIT ATTENTION
     * (the LUN inventory changed) is answered by asking again.  Returns
     * the count. */
    int (*target_luns)(const char *portal, const char *target, KVList *opts,
                       IscsiLunInfo **out, Error *err);
    /* The same for one LUN: 1 and *out filled, 0 when the target has no
     * disk at that LUN. */
    int (*target_lun)(const char *portal, const char *target, KVList *opts,
                      int lun, IscsiLunInfo *out, Error *err);
    void (*lun_info_free)(IscsiLunInfo *v, int n);
    /* Credentials (and initiator name) for every session to `target`
     * that names none itself, as QEMU's -iscsi id=TARGET,... gives them:
     * so that what a pool opens or creates on its LUNs (a qcow2 image,
     * whose create path takes no options) logs in with the pool's CHAP
     * secret.  user NULL forgets them.  secret_id names an --object
     * secret.  They live in the module, with the sessions that use them. */
    int (*set_target_defaults)(const char *target, const char *user,
                               const char *secret_id,
                               const char *initiator_name);
} IscsiTargetOps;

/* The iscsi module's operations in *ops, loading it on first use; 0, or
 * a negative errno with one line in err when the module or libiscsi is
 * missing. */
static inline int iscsi_target_ops(const IscsiTargetOps **ops, Error *err)
{
    const void *p;
    int ret = block_module_ops("iscsi", &p, err);
    *ops = p;
    if (ret == 0 && (*ops)->version != ISCSI_TARGET_OPS_VERSION) {
        ret = error_setf(err, ENOEXEC, "the iscsi driver's module is from "
                         "another imgtool build (target operations version "
                         "%d, not %d)", (*ops)->version,
                         ISCSI_TARGET_OPS_VERSION);
    }
    return ret;
}

#endif
