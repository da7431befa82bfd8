/*
 * iscsi.c - iSCSI pools: the disk LUNs of one target as volumes, reached
 * in user space with libiscsi.  libvirt's "iscsi-direct" type is the same
 * idea; its "iscsi" type (the kernel initiator, volumes under
 * /dev/disk/by-path) is taken too and served the same way, its target
 * path only kept in the definition.
 *
 * Volumes are named as libvirt names them, unit:0:0:LUN; the key is the
 * LUN's designator from the Device Identification page (as scsi_id
 * prints it), so it follows the disk, not its number; the path is
 * iscsi://PORTAL/IQN/LUN, which QEMU opens too.  Refresh is one session:
 * REPORT LUNS, then READ CAPACITY and the designator of each disk and,
 * on thin LUNs, GET LBA STATUS for the allocation (where libvirt shows
 * the capacity).  The connection retries UNIT ATTENTION and BUSY, so a
 * refresh needs no retries of its own.
 *
 * LUNs are made, removed and resized on the target, not here: those
 * commands say so in one line.  vol-wipe zeroes with WRITE SAME (trim:
 * UNMAP) through the iscsi driver; vol-upload and vol-download go
 * through it too.  A LUN is raw unless imgtool put another format on it
 * (an image command that created it, a wipe), which is remembered by the
 * LUN's key and never probed.
 *
 * CHAP: <auth type='chap' username=U><secret usage=ID/> names the
 * --object secret ID; the pool registers the target's credentials with
 * the iscsi driver (its set_target_defaults), so everything opened on
 * its LUNs during the command logs in with them.
 *
 * libiscsi is the iscsi driver module's (block/protocol/iscsi.h): every
 * question to a target goes through the module's IscsiTargetOps, so a
 * command that only defines or lists pools never loads either.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/iscsi.h"
#include "pools/backend.h"
#include "pools/util.h"

#define NAME_PREFIX "unit:0:0:"

static const char *iqn_of(const Pool *p)
{
    return p->def.source_devices[0];
}

static char *portal_of(const Pool *p)
{
    const PoolHost *h = &p->def.hosts[0];
    bool v6 = strchr(h->name, ':') != NULL;
    return pool_strfmt("%s%s%s:%d", v6 ? "[" : "", h->name, v6 ? "]" : "",
                       h->port ? h->port : 3260);
}

static int check_def(PoolDef *d, bool direct, Error *err)
{
    if (d->nhosts != 1) {
        return error_setf(err, EINVAL, "an iSCSI pool needs exactly one "
                          "source host (--source-host)");
    }
    if (d->ndevices != 1 || !d->source_devices[0][0]) {
        return error_setf(err, EINVAL, "an iSCSI pool needs the target IQN "
                          "as its source device (--source-dev)");
    }
    if (strncmp(d->source_devices[0], "iqn.", 4) &&
        strncmp(d->source_devices[0], "eui.", 4) &&
        strncmp(d->source_devices[0], "naa.", 4)) {
        return error_setf(err, EINVAL, "iSCSI target name '%s' is not an "
                          "IQN (iqn.YYYY-MM.domain:name)",
                          d->source_devices[0]);
    }
    if (!direct && !d->target_path) {
        d->target_path = strdup("/dev/disk/by-path");
        if (!d->target_path) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    return 0;
}

static int iscsi_def_check(PoolDef *d, Error *err)
{
    return check_def(d, false, err);
}

static int iscsi_direct_def_check(PoolDef *d, Error *err)
{
    return check_def(d, true, err);
}

static int lun_of(const char *name)
{
    if (strncmp(name, NAME_PREFIX, strlen(NAME_PREFIX)) != 0) {
        return -1;
    }
    const char *n = name + strlen(NAME_PREFIX);
    char *end;
    long v = strtol(n, &end, 10);
    return *n && !*end && v >= 0 && v <= 16383 ? (int)v : -1;
}

static int iscsi_vol_name_check(const char *name, Error *err)
{
    if (lun_of(name) < 0) {
        return error_setf(err, EINVAL, "iSCSI volumes are named "
                          NAME_PREFIX "LUN, not '%s'", name);
    }
    return 0;
}

/* The session options and the target's defaults for what opens LUNs;
 * *ops is the module's table they were given to. */
static int session_opts(Pool *p, KVList *o, const IscsiTargetOps **ops,
                        Error *err)
{
    int ret = iscsi_target_ops(ops, err);
    if (ret < 0) {
        return ret;
    }
    if (p->def.auth_type) {
        kvlist_set(o, "user", p->def.auth_username);
        kvlist_set(o, "password-secret", p->def.auth_secret);
    }
    if (p->def.initiator_iqn) {
        kvlist_set(o, "initiator-name", p->def.initiator_iqn);
    }
    if ((*ops)->set_target_defaults(iqn_of(p), p->def.auth_username,
                                    p->def.auth_secret,
                                    p->def.initiator_iqn) < 0) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

/* The target's disk LUNs; free them with (*ops)->lun_info_free. */
static int list(Pool *p, IscsiLunInfo **luns, const IscsiTargetOps **ops,
                Error *err)
{
    char *portal = portal_of(p);
    KVList o = { 0 };
    int n = portal ? session_opts(p, &o, ops, err)
                   : error_setf(err, ENOMEM, "out of memory");
    if (n == 0) {
        n = (*ops)->target_luns(portal, iqn_of(p), &o, luns, err);
    }
    kvlist_free(&o);
    free(portal);
    return n;
}

static int iscsi_build(Pool *p, unsigned flags, Error *err)
{
    (void)flags;
    return error_setf(err, ENOTSUP, "an iSCSI pool has nothing to build: "
                      "its target and LUNs are made on the iSCSI server");
}

static int iscsi_start(Pool *p, Error *err)
{
    IscsiLunInfo *luns;
    const IscsiTargetOps *ops;
    int n = list(p, &luns, &ops, err);
    if (n < 0) {
        return n;
    }
    ops->lun_info_free(luns, n);
    return 0;
}

static int iscsi_stop(Pool *p, Error *err)
{
    (void)p;
    (void)err;
    return 0;
}

static int iscsi_delete(Pool *p, Error *err)
{
    (void)p;
    return error_setf(err, ENOTSUP, "an iSCSI pool's storage is removed on "
                      "the iSCSI server");
}

/* ---- the cache: formats imgtool put on LUNs, by LUN key --------------- */

static json_t *formats(Pool *p)
{
    json_t *f = json_object_get(p->cache, "formats");
    if (!json_is_object(f)) {
        f = json_object();
        json_object_set_new(p->cache, "formats", f);
    }
    return f;
}

static char *lun_url(Pool *p, int lun)
{
    char *portal = portal_of(p);
    char *url = portal ? pool_strfmt("iscsi://%s/%s/%d", portal, iqn_of(p),
                                     lun) : NULL;
    free(portal);
    return url;
}

static int fill_vol(Pool *p, const IscsiLunInfo *l, VolInfo *v, Error *err)
{
    vol_info_clear(v);
    v->pool = strdup(p->def.name);
    v->name = pool_strfmt(NAME_PREFIX "%d", l->lun);
    v->key = strdup(l->key);
    v->path = lun_url(p, l->lun);
    v->type = "network";
    v->capacity = l->capacity;
    v->allocation = l->allocation;
    v->physical = l->capacity;
    const char *fmt = json_string_value(json_object_get(formats(p), l->key));
    v->format = strdup(fmt ? fmt : "raw");
    if (!v->pool || !v->name || !v->key || !v->path || !v->format) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (strcmp(v->format, "raw") != 0) {
        /* capacity, backing file and details from the image itself */
        VolInfo img = { 0 };
        Error ierr = { 0 };
        if (pool_read_image_info(v->path, v->format, &img, &ierr) == 0) {
            v->capacity = img.capacity;
            v->backing_path = img.backing_path;
            v->backing_format = img.backing_format;
            v->cluster_size = img.cluster_size;
            v->compat = img.compat;
            v->lazy_refcounts = img.lazy_refcounts;
            v->extended_l2 = img.extended_l2;
            img.backing_path = img.backing_format = img.compat = NULL;
        }
        vol_info_clear(&img);
    }
    return 0;
}

static int iscsi_refresh_sizes(Pool *p, Error *err)
{
    IscsiLunInfo *luns;
    const IscsiTargetOps *ops;
    int n = list(p, &luns, &ops, err);
    if (n < 0) {
        return n;
    }
    p->capacity = p->allocation = 0;
    for (int i = 0; i < n; i++) {
        p->capacity += luns[i].capacity;
        p->allocation += luns[i].allocation;
    }
    /* as libvirt: nothing is free in a target, LUNs are all there is */
    p->available = 0;
    ops->lun_info_free(luns, n);
    return 0;
}

static int iscsi_refresh(Pool *p, Error *err)
{
    IscsiLunInfo *luns;
    const IscsiTargetOps *ops;
    int n = list(p, &luns, &ops, err);
    if (n < 0) {
        return n;
    }
    int ret = 0;
    p->vols = calloc(n ? (size_t)n : 1, sizeof(*p->vols));
    if (!p->vols) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    json_t *keys = json_object();
    for (int i = 0; ret == 0 && i < n; i++) {
        ret = fill_vol(p, &luns[i], &p->vols[p->nvols], err);
        if (ret == 0) {
            p->nvols++;
            json_object_set_new(keys, luns[i].key, json_true());
        }
    }
    /* LUNs gone from the target take their remembered formats along */
    const char *key;
    json_t *val, *tmp;
    json_object_foreach_safe(formats(p), tmp, key, val) {
        if (ret == 0 && !json_object_get(keys, key)) {
            json_object_del(formats(p), key);
            p->cache_dirty = true;
        }
    }
    json_decref(keys);
    ops->lun_info_free(luns, n);
    return ret;
}

static int iscsi_vol_lookup(Pool *p, const char *name, VolInfo *out,
                            Error *err)
{
    int lun = lun_of(name);
    if (lun < 0) {
        return -ENOENT;
    }
    char *portal = portal_of(p);
    KVList o = { 0 };
    IscsiLunInfo l = { 0 };
    const IscsiTargetOps *ops;
    int ret = portal ? session_opts(p, &o, &ops, err)
                     : error_setf(err, ENOMEM, "out of memory");
    if (ret == 0) {
        ret = ops->target_lun(portal, iqn_of(p), &o, lun, &l, err);
    }
    kvlist_free(&o);
    free(portal);
    if (ret == 0) {
        return -ENOENT;
    }
    if (ret < 0) {
        return ret;
    }
    ret = fill_vol(p, &l, out, err);
    free(l.key);
    return ret;
}

static int iscsi_vol_create(Pool *p, const VolCreateArgs *a, VolInfo *out,
                            Error *err)
{
    (void)p;
    (void)a;
    (void)out;
    return error_setf(err, ENOTSUP, "an iSCSI pool cannot create volumes: "
                      "LUNs are made on the iSCSI server (then "
                      "pool-refresh); an image goes onto a LUN with "
                      "imgtool create or convert on vol:POOL/" NAME_PREFIX
                      "N");
}

static int iscsi_vol_delete(Pool *p, const VolInfo *v, Error *err)
{
    (void)p;
    return error_setf(err, ENOTSUP, "an iSCSI pool cannot delete volume "
                      "'%s': LUNs are removed on the iSCSI server (vol-wipe "
                      "clears one)", v->name);
}

static int iscsi_vol_resize(Pool *p, const VolInfo *v, uint64_t capacity,
                            bool allocate, Error *err)
{
    (void)p;
    (void)capacity;
    (void)allocate;
    return error_setf(err, ENOTSUP, "an iSCSI pool cannot resize volume "
                      "'%s': a LUN is resized on the iSCSI server", v->name);
}

static int iscsi_vol_open_spec(Pool *p, const VolInfo *v, bool raw_bytes,
                               VolOpenSpec *spec, Error *err)
{
    int ret = pool_vol_spec_init(spec, strdup(v->path), v, raw_bytes, err);
    if (ret < 0) {
        return ret;
    }
    /* raw bytes are the protocol node itself; an image has it as file */
    const char *pre = raw_bytes ? "" : "file.";
    char key[64];
    if (p->def.auth_type) {
        snprintf(key, sizeof(key), "%suser", pre);
        kvlist_set(&spec->opts, key, p->def.auth_username);
        snprintf(key, sizeof(key), "%spassword-secret", pre);
        kvlist_set(&spec->opts, key, p->def.auth_secret);
    }
    if (p->def.initiator_iqn) {
        snprintf(key, sizeof(key), "%sinitiator-name", pre);
        kvlist_set(&spec->opts, key, p->def.initiator_iqn);
    }
    /* what the image opens behind it (its create path) logs in too */
    const IscsiTargetOps *ops;
    ret = iscsi_target_ops(&ops, err);
    if (ret == 0 && ops->set_target_defaults(iqn_of(p), p->def.auth_username,
                                             p->def.auth_secret,
                                             p->def.initiator_iqn) < 0) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    if (ret < 0) {
        vol_open_spec_clear(spec);
    }
    return ret;
}

static int iscsi_vol_changed(Pool *p, const VolInfo *v, const char *format,
                             Error *err)
{
    (void)err;
    if (!format || strcmp(format, "raw") == 0) {
        json_object_del(formats(p), v->key);
    } else {
        json_object_set_new(formats(p), v->key, json_string(format));
    }
    p->cache_dirty = true;
    return 0;
}

#define ISCSI_OPS                                                          \
    .vol_name_check = iscsi_vol_name_check,                               \
    .build = iscsi_build,                                                  \
    .start = iscsi_start,                                                  \
    .stop = iscsi_stop,                                                    \
    .delete = iscsi_delete,                                                \
    .refresh_sizes = iscsi_refresh_sizes,                                  \
    .refresh = iscsi_refresh,                                              \
    .vol_lookup = iscsi_vol_lookup,                                        \
    .vol_create = iscsi_vol_create,                                        \
    .vol_delete = iscsi_vol_delete,                                        \
    .vol_resize = iscsi_vol_resize,                                        \
    .vol_open_spec = iscsi_vol_open_spec,                                  \
    .vol_changed = iscsi_vol_changed,                                     \
    .fixed_volumes = true

const PoolBackend pool_backend_iscsi_direct = {
    .type = "iscsi-direct",
    .def_check = iscsi_direct_def_check,
    ISCSI_OPS,
};

const PoolBackend pool_backend_iscsi = {
    .type = "iscsi",
    .def_check = iscsi_def_check,
    ISCSI_OPS,
};
