/*
 * vhost-blk-export.c - the "vhost-user-blk" export type: a node served
 * to one vhost-user front end at a time (QEMU's vhost-user-blk-pci), with
 * qemu-storage-daemon's options
 *   addr.type=unix,addr.path=PATH | addr.type=fd,addr.str=FD,
 *   num-queues=N (1), logical-block-size=BYTES (512),
 * besides the common ones (id, node-name, writable, writethrough).
 *
 * The vhost-user conversation runs on a control thread of the export's
 * own and each queue on its own thread (vhost-user.h): a front end's
 * messages wait for rings to stop, which must not hold up the daemon's
 * main loop.  Shutdown is asynchronous: the control thread disconnects
 * the front end once its requests complete and then tells the registry.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/export.h"
#include "block/export/vhost-export.h"
#include "block/export/vhost-blk.h"
#include "block/export/vhost-user.h"

typedef struct VhostBlkExport {
    BlockExport *exp;
    SockAddr addr;
    bool addr_parsed;
    bool listening;
    VhostBlk *blk;
} VhostBlkExport;

int vhost_export_addr(SockAddr *a, KVList *opts, Error *err)
{
    int ret = sockaddr_parse(a, opts, "addr", err);
    if (ret == 0 && a->type == SOCKADDR_INET) {
        sockaddr_free(a);
        ret = error_setf(err, EINVAL, "vhost-user only supports unix and "
                         "fd socket addresses");
    }
    return ret;
}

static int blk_create(BlockExport *exp, KVList *opts, Error *err)
{
    VhostBlkExport *e = exp->opaque;
    e->exp = exp;
    uint64_t nq, lbs;
    int ret = vhost_export_addr(&e->addr, opts, err);
    e->addr_parsed = true;
    if (ret == 0) {
        ret = kvlist_get_uint(opts, "num-queues", 1, &nq, err);
    }
    if (ret == 0) {
        ret = kvlist_get_size(opts, "logical-block-size", 512, &lbs, err);
    }
    if (ret < 0) {
        return ret;
    }
    if (nq < 1 || nq > 64) {
        return error_setf(err, EINVAL, "num-queues must be between 1 and "
                          "64");
    }
    VhostBlkConf conf = {
        .id = exp->id,
        .node = exp->node,
        .writable = exp->writable,
        .writethrough = exp->writethrough,
        .logical_block_size = lbs > UINT32_MAX ? 0 : (uint32_t)lbs,
        .num_queues = (int)nq,
    };
    if (lbs > 65536) {
        return error_setf(err, EINVAL, "logical-block-size %llu: a power "
                          "of two from 512 to 64k expected",
                          (unsigned long long)lbs);
    }
    return vhost_blk_new(&conf, &e->blk, err);
}

static int blk_start(BlockExport *exp, Error *err)
{
    VhostBlkExport *e = exp->opaque;
    int fd;
    int ret = sockaddr_listen(&e->addr, &fd, 1, err);
    if (ret < 0) {
        return ret;
    }
    e->listening = true;
    return vhost_blk_listen(e->blk, NULL, fd, err);
}

static void blk_shutdown_done(void *opaque)
{
    block_export_shutdown_done(opaque);
}

static void blk_shutdown(BlockExport *exp, bool hard)
{
    VhostBlkExport *e = exp->opaque;
    vhost_dev_shutdown(vhost_blk_dev(e->blk), blk_shutdown_done, exp);
}

static void blk_free(BlockExport *exp)
{
    VhostBlkExport *e = exp->opaque;
    vhost_blk_free(e->blk);
    if (e->listening) {
        sockaddr_unlink(&e->addr);
    }
    if (e->addr_parsed) {
        sockaddr_free(&e->addr);
    }
}

static bool blk_in_use(BlockExport *exp)
{
    VhostBlkExport *e = exp->opaque;
    return vhost_dev_connected(vhost_blk_dev(e->blk));
}

static void blk_query(BlockExport *exp, json_t *entry)
{
    VhostBlkExport *e = exp->opaque;
    char *addr = sockaddr_describe(&e->addr);
    if (addr) {
        json_object_set_new(entry, "addr", json_string(addr));
    }
    free(addr);
    json_object_set_new(entry, "clients", json_integer(
        vhost_dev_connected(vhost_blk_dev(e->blk)) ? 1 : 0));
    json_object_set_new(entry, "writable", json_boolean(exp->writable));
}

static void blk_resized(BlockExport *exp)
{
    VhostBlkExport *e = exp->opaque;
    vhost_blk_resized(e->blk);
}

const BlockExportDriver vhost_user_blk_export_driver = {
    .api_version = BLOCK_EXPORT_API_VERSION,
    .type = "vhost-user-blk",
    .instance_size = sizeof(VhostBlkExport),
    .create = blk_create,
    .start = blk_start,
    .shutdown = blk_shutdown,
    .free = blk_free,
    .in_use = blk_in_use,
    .query = blk_query,
    .resized = blk_resized,
};
