/*
 * vhost-scsi-export.c - the "vhost-user-scsi" export type: one LUN of a
 * virtio-scsi controller served over vhost-user.  qemu-storage-daemon
 * has no such export; its options follow the vhost-user-blk ones:
 *   addr.type=unix,addr.path=PATH | addr.type=fd,addr.str=FD
 *       the controller's socket;
 *   lun=N             the LUN (default: the lowest free one);
 *   num-queues=N      request queues of the controller (1);
 *   logical-block-size=BYTES (512); serial=TEXT (the export id).
 *
 * Exports that name the same socket are LUNs of one controller: the
 * first creates it (and its num-queues counts), the others join it, and
 * the last one deleted takes it away.  So `--export` given twice gives
 * a guest two disks on one controller, and block-export-add /
 * block-export-del while the guest runs hot-plug and unplug a LUN
 * (virtio-scsi's event queue tells the guest).  Deleting a LUN waits
 * for its commands; deleting the last LUN while a front end is connected
 * needs mode=hard (it takes the controller with it).
 *
 * Controllers are created and dropped on the registry's thread only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/export.h"
#include "block/export/vhost-export.h"
#include "block/export/vhost-scsi.h"
#include "block/export/vhost-user.h"

typedef struct Controller {
    char *key;                 /* sockaddr_describe of its address */
    SockAddr addr;
    VhostScsi *scsi;
    int num_queues;
    int luns;                  /* exports that are its LUNs */
    bool listening;
    bool dying;                /* its last LUN is being deleted */
    struct Controller *next;
} Controller;

static Controller *controllers;

typedef struct VhostScsiExport {
    BlockExport *exp;
    Controller *ctrl;
    unsigned lun;
    bool attached;
    ScsiLunConf conf;
    char *serial;
} VhostScsiExport;

static Controller *find_controller(const char *key)
{
    for (Controller *c = controllers; c; c = c->next) {
        if (strcmp(c->key, key) == 0) {
            return c;
        }
    }
    return NULL;
}

static void drop_controller(Controller *c)
{
    for (Controller **p = &controllers; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    vhost_scsi_free(c->scsi);
    if (c->listening) {
        sockaddr_unlink(&c->addr);
    }
    sockaddr_free(&c->addr);
    free(c->key);
    free(c);
}

static int new_controller(SockAddr *addr, char *key, int nq,
                          const char *id, Controller **out, Error *err)
{
    Controller *c = calloc(1, sizeof(*c));
    if (!c) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = vhost_scsi_new(id, nq, &c->scsi, err);
    if (ret < 0) {
        free(c);
        return ret;
    }
    c->addr = *addr;
    c->key = key;
    c->num_queues = nq;
    c->next = controllers;
    controllers = c;
    *out = c;
    return 0;
}

static int scsi_create(BlockExport *exp, KVList *opts, Error *err)
{
    VhostScsiExport *e = exp->opaque;
    e->exp = exp;
    SockAddr addr;
    uint64_t nq = 0, lbs, lun = SCSI_MAX_LUNS;
    int ret = vhost_export_addr(&addr, opts, err);
    if (ret < 0) {
        return ret;
    }
    bool nq_given = kvlist_has(opts, "num-queues");
    if (ret == 0) {
        ret = kvlist_get_uint(opts, "num-queues", 1, &nq, err);
    }
    if (ret == 0) {
        ret = kvlist_get_size(opts, "logical-block-size", 512, &lbs, err);
    }
    if (ret == 0 && kvlist_has(opts, "lun")) {
        ret = kvlist_get_uint(opts, "lun", 0, &lun, err);
        if (ret == 0 && lun >= SCSI_MAX_LUNS) {
            ret = error_setf(err, EINVAL, "lun must be below %d",
                             SCSI_MAX_LUNS);
        }
    }
    if (ret == 0 && (nq < 1 || nq > 62)) {
        ret = error_setf(err, EINVAL, "num-queues must be between 1 and 62");
    }
    if (ret == 0 && (lbs < 512 || lbs > 65536 || (lbs & (lbs - 1)))) {
        ret = error_setf(err, EINVAL, "logical-block-size %llu: a power of "
                         "two from 512 to 64k expected",
                         (unsigned long long)lbs);
    }
    char *key = ret == 0 ? sockaddr_describe(&addr) : NULL;
    if (ret == 0 && !key) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    if (ret < 0) {
        sockaddr_free(&addr);
        return ret;
    }
    Controller *c = find_controller(key);
    if (c && c->dying) {
        free(key);
        sockaddr_free(&addr);
        return error_setf(err, EBUSY, "the controller at %s is shutting "
                          "down", c->key);
    }
    if (c) {
        free(key);
        sockaddr_free(&addr);
        if (nq_given && (int)nq != c->num_queues) {
            return error_setf(err, EINVAL, "the controller at %s has %d "
                              "request queues", c->key, c->num_queues);
        }
    } else {
        ret = new_controller(&addr, key, (int)nq, exp->id, &c, err);
        if (ret < 0) {
            free(key);
            sockaddr_free(&addr);
            return ret;
        }
    }
    c->luns++;
    e->ctrl = c;
    if (lun == SCSI_MAX_LUNS) {
        /* The lowest LUN the controller does not have. */
        for (lun = 0; lun < SCSI_MAX_LUNS &&
             vhost_scsi_has_lun(c->scsi, (unsigned)lun); lun++) {
        }
        if (lun == SCSI_MAX_LUNS) {
            return error_setf(err, ENOSPC, "the controller at %s has no "
                              "free LUN", c->key);
        }
    } else if (vhost_scsi_has_lun(c->scsi, (unsigned)lun)) {
        return error_setf(err, EEXIST, "LUN %u of the controller at %s is "
                          "taken", (unsigned)lun, c->key);
    }
    e->lun = (unsigned)lun;
    const char *serial = kvlist_get(opts, "serial");
    e->serial = strdup(serial ? serial : exp->id);
    if (!e->serial) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    e->conf = (ScsiLunConf){
        .node = exp->node,
        .writable = exp->writable,
        .writethrough = exp->writethrough,
        .block_size = (uint32_t)lbs,
        .serial = e->serial,
    };
    return 0;
}

static int scsi_start(BlockExport *exp, Error *err)
{
    VhostScsiExport *e = exp->opaque;
    Controller *c = e->ctrl;
    int ret = vhost_scsi_add_lun(c->scsi, e->lun, &e->conf, err);
    if (ret < 0) {
        return ret;
    }
    e->attached = true;
    if (!c->listening) {
        int fd;
        ret = sockaddr_listen(&c->addr, &fd, 1, err);
        if (ret < 0) {
            return ret;
        }
        c->listening = true;
        ret = vhost_scsi_listen(c->scsi, NULL, fd, err);
    }
    return ret;
}

/* ---- Shutdown: the LUN goes (off the main loop: it waits for its
 * commands), then, when it was the last, the controller. ---- */

static void scsi_shutdown_done(void *opaque)
{
    block_export_shutdown_done(opaque);
}

static void remove_lun_work(void *opaque)
{
    BlockExport *exp = opaque;
    VhostScsiExport *e = exp->opaque;
    Error err = { 0 };
    if (e->attached) {
        vhost_scsi_remove_lun(e->ctrl->scsi, e->lun, &err);
        e->attached = false;
    }
}

static void remove_lun_done(void *opaque)
{
    BlockExport *exp = opaque;
    VhostScsiExport *e = exp->opaque;
    Controller *c = e->ctrl;
    if (c->luns == 1) {
        c->dying = true;
        vhost_dev_shutdown(vhost_scsi_dev(c->scsi), scsi_shutdown_done, exp);
    } else {
        block_export_shutdown_done(exp);
    }
}

static void scsi_shutdown(BlockExport *exp, bool hard)
{
    if (loop_run_blocking(exp->loop, remove_lun_work, remove_lun_done,
                          exp) < 0) {
        remove_lun_work(exp);
        remove_lun_done(exp);
    }
}

static void scsi_free(BlockExport *exp)
{
    VhostScsiExport *e = exp->opaque;
    Controller *c = e->ctrl;
    if (c) {
        remove_lun_work(exp);
        if (--c->luns == 0) {
            drop_controller(c);
        }
    }
    free(e->serial);
}

static bool scsi_in_use(BlockExport *exp)
{
    VhostScsiExport *e = exp->opaque;
    /* One LUN of several can go while the guest runs (hot unplug); the
     * last one takes the controller away from it. */
    return e->ctrl->luns == 1 &&
        vhost_dev_connected(vhost_scsi_dev(e->ctrl->scsi));
}

static void scsi_query(BlockExport *exp, json_t *entry)
{
    VhostScsiExport *e = exp->opaque;
    json_object_set_new(entry, "addr", json_string(e->ctrl->key));
    json_object_set_new(entry, "lun", json_integer(e->lun));
    json_object_set_new(entry, "clients", json_integer(
        vhost_dev_connected(vhost_scsi_dev(e->ctrl->scsi)) ? 1 : 0));
    json_object_set_new(entry, "writable", json_boolean(exp->writable));
}

static void scsi_resized(BlockExport *exp)
{
    VhostScsiExport *e = exp->opaque;
    vhost_scsi_lun_resized(e->ctrl->scsi, e->lun);
}

const BlockExportDriver vhost_user_scsi_export_driver = {
    .api_version = BLOCK_EXPORT_API_VERSION,
    .type = "vhost-user-scsi",
    .instance_size = sizeof(VhostScsiExport),
    .create = scsi_create,
    .start = scsi_start,
    .shutdown = scsi_shutdown,
    .free = scsi_free,
    .in_use = scsi_in_use,
    .query = scsi_query,
    .resized = scsi_resized,
};
