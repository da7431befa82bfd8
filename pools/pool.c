/*
 * pool.c - pools: defining, starting, stopping, building, deleting,
 * listing; the back-end registry; loading a pool under its lock.
 *
 * Invariants:
 *  - a pool's definition file, state and cache change only under its
 *    pool lock; a pool appears or disappears only under the store lock
 *    as well (store lock first);
 *  - "active" is recorded with the boot it happened in: a pool started
 *    before the last reboot reads as inactive (its storage may be gone,
 *    a VG deactivated), and autostart pools are started again the first
 *    time a command loads them after a reboot, as libvirtd does at boot;
 *    transient pools (pool-create-as) do not survive a reboot.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pools/core.h"
#include "pools/util.h"

static const PoolBackend *const pool_backends[] = {
    &pool_backend_dir,
    &pool_backend_logical,
    &pool_backend_iscsi,
    &pool_backend_iscsi_direct,
    &pool_backend_gluster,
    NULL,
};

/* Types libvirt has and imgtool does not (yet). */
static const char *const libvirt_types[] = {
    "fs", "netfs", "disk", "scsi", "mpath", "rbd", "sheepdog", "zfs",
    "vstorage", NULL,
};

const PoolBackend *pool_backend_find(const char *type)
{
    for (int i = 0; pool_backends[i]; i++) {
        if (strcmp(pool_backends[i]->type, type) == 0) {
            return pool_backends[i];
        }
    }
    return NULL;
}

static int backend_for(PoolDef *d, const PoolBackend **out, Error *err)
{
    *out = pool_backend_find(d->type);
    if (*out) {
        return (*out)->def_check(d, err);
    }
    for (int i = 0; libvirt_types[i]; i++) {
        if (strcmp(libvirt_types[i], d->type) == 0) {
            return error_setf(err, ENOTSUP, "unsupported storage pool type "
                              "'%s' (imgtool has dir, logical, iscsi, "
                              "iscsi-direct and gluster)", d->type);
        }
    }
    return error_setf(err, EINVAL, "unknown storage pool type '%s'",
                      d->type);
}

static int load_def(PoolStore *s, const char *name, bool transient,
                    PoolDef *d, Error *err)
{
    char *path = store_def_path(s, name, transient);
    char *xml = NULL;
    size_t len = 0;
    int ret = path ? pool_read_file(path, POOL_MAX_XML, &xml, &len, err)
                   : error_setf(err, ENOMEM, "out of memory");
    if (ret == 0) {
        ret = pool_def_parse(xml, len, d, err);
        if (ret < 0) {
            error_prefixf(err, "%s", path);
        }
    }
    free(xml);
    free(path);
    return ret;
}

static int not_found(Error *err, const char *pool)
{
    return error_setf(err, ENOENT, "Storage pool not found: no storage pool "
                      "with matching name '%s'", pool);
}

/* A name or UUID to the pool's name. */
static int resolve_name(PoolStore *s, const char *arg, char **name,
                        Error *err)
{
    *name = NULL;
    if (!arg || !*arg) {
        return error_setf(err, EINVAL, "no pool name given");
    }
    Error nerr = { 0 };
    if (pool_check_name("pool", arg, &nerr) == 0) {
        char *p = store_def_path(s, arg, false);
        char *t = store_def_path(s, arg, true);
        bool found = (p && access(p, F_OK) == 0) ||
                     (t && access(t, F_OK) == 0);
        free(p);
        free(t);
        if (found) {
            *name = strdup(arg);
            return *name ? 0 : error_setf(err, ENOMEM, "out of memory");
        }
    }
    char uuid[37];
    if (pool_uuid_parse(arg, uuid)) {
        char **names;
        size_t n;
        int ret = store_pool_names(s, &names, &n, err);
        if (ret < 0) {
            return ret;
        }
        for (size_t i = 0; i < n && !*name; i++) {
            PoolRunState st;
            PoolDef d = { 0 };
            Error ignored = { 0 };
            store_state_load(s, names[i], &st, &ignored);
            if (load_def(s, names[i], st.transient, &d, &ignored) == 0 &&
                strcmp(d.uuid, uuid) == 0) {
                *name = strdup(names[i]);
            }
            pool_def_clear(&d);
        }
        store_names_free(names, n);
        if (*name) {
            return 0;
        }
    }
    if (nerr.code) {
        return error_setf(err, nerr.code, "%s", nerr.msg);
    }
    return not_found(err, arg);
}

static void pool_free(Pool *p)
{
    if (!p) {
        return;
    }
    store_pool_unlock(&p->lock_fd);
    pool_def_clear(&p->def);
    vol_info_list_free(p->vols, p->nvols);
    json_decref(p->cache);
    free(p->state_dir);
    free(p);
}

int pool_save_state(Pool *p, Error *err)
{
    PoolRunState st = { .active = p->active, .transient = p->transient };
    return store_state_save(p->store, p->def.name, &st, err);
}

/* Loads the pool `name` with its lock already held in p->lock_fd. */
static int load_locked(Pool *p, const char *name, Error *err)
{
    PoolRunState st;
    int ret = store_state_load(p->store, name, &st, err);
    if (ret < 0) {
        return ret;
    }
    pool_def_clear(&p->def);
    Error lerr = { 0 };
    ret = load_def(p->store, name, st.transient, &p->def, &lerr);
    if (ret == -ENOENT) {
        return not_found(err, name);   /* undefined while we waited */
    }
    if (ret < 0) {
        return error_setf(err, lerr.code, "%s", lerr.msg);
    }
    ret = backend_for(&p->def, &p->be, err);
    if (ret < 0) {
        return ret;
    }
    p->transient = st.transient;
    p->active = st.active;
    p->autostart = !st.transient && store_autostart_get(p->store, name);
    const char *boot = p->store->boot_id;
    if (*boot && *st.boot_id && strcmp(boot, st.boot_id) != 0) {
        /* The machine rebooted since the last change. */
        if (p->transient) {
            /* Under the pool lock alone: taking the store lock now would
             * invert the lock order. */
            store_pool_forget(p->store, name);
            return not_found(err, name);
        }
        p->active = false;
        if (p->autostart) {
            Error serr = { 0 };
            p->active = p->be->start(p, &serr) == 0;
        }
        Error ignored = { 0 };
        pool_save_state(p, &ignored);
    }
    return 0;
}

int pool_open(PoolStore *s, const char *arg, Pool **out, Error *err)
{
    *out = NULL;
    char *name;
    int ret = resolve_name(s, arg, &name, err);
    if (ret < 0) {
        return ret;
    }
    Pool *p = calloc(1, sizeof(*p));
    if (!p) {
        free(name);
        return error_setf(err, ENOMEM, "out of memory");
    }
    p->store = s;
    p->lock_fd = -1;
    p->def.mode = p->def.uid = p->def.gid = -1;
    ret = store_pool_lock(s, name, &p->lock_fd, err);
    if (ret == 0) {
        ret = load_locked(p, name, err);
    }
    if (ret == 0) {
        p->cache = store_cache_load(s, name);
        p->state_dir = store_pool_dir(s, name);
        if (!p->cache || !p->state_dir) {
            ret = error_setf(err, ENOMEM, "out of memory");
        }
    }
    free(name);
    if (ret < 0) {
        pool_free(p);
        return ret;
    }
    *out = p;
    return 0;
}

void pool_close(Pool *p)
{
    if (p && p->cache_dirty && p->lock_fd >= 0) {
        Error ignored = { 0 };
        store_cache_save(p->store, p->def.name, p->cache, &ignored);
    }
    pool_free(p);
}

void pool_unlock(Pool *p)
{
    if (p->cache_dirty) {
        Error ignored = { 0 };
        store_cache_save(p->store, p->def.name, p->cache, &ignored);
        p->cache_dirty = false;
    }
    store_pool_unlock(&p->lock_fd);
}

int pool_relock(Pool *p, Error *err)
{
    char *name = strdup(p->def.name);
    if (!name) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = store_pool_lock(p->store, name, &p->lock_fd, err);
    if (ret == 0) {
        ret = load_locked(p, name, err);
    }
    if (ret == 0) {
        json_decref(p->cache);
        p->cache = store_cache_load(p->store, name);
        ret = pool_require_active(p, err);
    }
    free(name);
    return ret;
}

int pool_require_active(Pool *p, Error *err)
{
    if (!p->active) {
        return error_setf(err, EINVAL, "storage pool '%s' is not active",
                          p->def.name);
    }
    return 0;
}

static int require_inactive(Pool *p, Error *err)
{
    if (p->active) {
        return error_setf(err, EBUSY, "storage pool '%s' is still active",
                          p->def.name);
    }
    return 0;
}

/* libvirt refuses two pools over the same storage. */
static int check_conflicts(PoolStore *s, const PoolDef *d, Error *err)
{
    char **names;
    size_t n;
    int ret = store_pool_names(s, &names, &n, err);
    for (size_t i = 0; ret == 0 && i < n; i++) {
        PoolRunState st;
        PoolDef o = { 0 };
        Error ignored = { 0 };
        store_state_load(s, names[i], &st, &ignored);
        if (load_def(s, names[i], st.transient, &o, &ignored) < 0) {
            continue;
        }
        bool same = strcmp(o.name, d->name) == 0;
        if (!same && strcmp(o.uuid, d->uuid) == 0) {
            ret = error_setf(err, EEXIST, "pool '%s' already exists with "
                             "uuid %s", o.name, o.uuid);
        } else if (same && strcmp(o.uuid, d->uuid) != 0) {
            ret = error_setf(err, EEXIST, "pool '%s' is already defined "
                             "with uuid %s", o.name, o.uuid);
        } else if (same && st.transient) {
            ret = error_setf(err, EEXIST, "pool '%s' already exists as a "
                             "transient pool", o.name);
        } else if (!same && strcmp(o.type, d->type) == 0 &&
                   ((o.target_path && d->target_path &&
                     !strcmp(d->type, "dir") &&
                     !strcmp(o.target_path, d->target_path)) ||
                    (o.source_name && d->source_name &&
                     !strcmp(d->type, "logical") &&
                     !strcmp(o.source_name, d->source_name)))) {
            ret = error_setf(err, EEXIST, "Storage source conflict with "
                             "pool: '%s'", o.name);
        }
        pool_def_clear(&o);
    }
    store_names_free(names, n);
    return ret;
}

/* Parses and checks a new definition; fills its UUID from an existing
 * pool of that name, or a fresh one. */
static int prepare_def(PoolStore *s, const char *xml, size_t len,
                       PoolDef *d, const PoolBackend **be, Error *err)
{
    int ret = pool_def_parse(xml, len, d, err);
    if (ret == 0) {
        ret = backend_for(d, be, err);
    }
    if (ret == 0 && !d->uuid[0]) {
        PoolDef old = { 0 };
        Error ignored = { 0 };
        if (load_def(s, d->name, false, &old, &ignored) == 0) {
            memcpy(d->uuid, old.uuid, sizeof(d->uuid));
        } else {
            pool_uuid_generate(d->uuid);
        }
        pool_def_clear(&old);
    }
    if (ret == 0) {
        ret = check_conflicts(s, d, err);
    }
    return ret;
}

static int write_def(PoolStore *s, const PoolDef *d, bool transient,
                     Error *err)
{
    char *text = pool_def_format(d, NULL);
    char *path = store_def_path(s, d->name, transient);
    int ret = (text && path) ? pool_write_atomic(path, text, strlen(text),
                                                 err)
                             : error_setf(err, ENOMEM, "out of memory");
    free(text);
    free(path);
    return ret;
}

int pool_define(PoolStore *s, const char *xml, size_t len, char **name,
                Error *err)
{
    *name = NULL;
    PoolDef d = { 0 };
    const PoolBackend *be;
    int ret = store_lock(s, err);
    if (ret == 0) {
        ret = prepare_def(s, xml, len, &d, &be, err);
    }
    int lock = -1;
    if (ret == 0) {
        ret = store_pool_lock(s, d.name, &lock, err);
    }
    if (ret == 0) {
        PoolRunState st;
        store_state_load(s, d.name, &st, err);
        if (st.active && strcmp(st.boot_id, s->boot_id) == 0) {
            ret = error_setf(err, EBUSY, "storage pool '%s' is active: "
                             "pool-destroy it before redefining it", d.name);
        }
    }
    if (ret == 0) {
        ret = write_def(s, &d, false, err);
    }
    if (ret == 0) {
        *name = strdup(d.name);
    }
    store_pool_unlock(&lock);
    store_unlock(s);
    pool_def_clear(&d);
    return ret;
}

static int do_build(Pool *p, unsigned flags, Error *err)
{
    if ((flags & POOL_BUILD_OVERWRITE) && (flags & POOL_BUILD_NO_OVERWRITE)) {
        return error_setf(err, EINVAL, "Options --overwrite and "
                          "--no-overwrite are mutually exclusive");
    }
    return p->be->build(p, flags, err);
}

static int do_start(Pool *p, bool build, unsigned flags, Error *err)
{
    if (p->active) {
        return error_setf(err, EBUSY, "storage pool '%s' is already active",
                          p->def.name);
    }
    int ret = build ? do_build(p, flags, err) : 0;
    if (ret == 0) {
        ret = p->be->start(p, err);
    }
    if (ret == 0) {
        p->active = true;
        ret = pool_refresh_locked(p, err);
        if (ret < 0) {
            Error ignored = { 0 };
            p->be->stop(p, &ignored);
            p->active = false;
        }
    }
    if (ret == 0) {
        ret = pool_save_state(p, err);
    }
    return ret;
}

int pool_create(PoolStore *s, const char *xml, size_t len, bool build,
                unsigned build_flags, char **name, Error *err)
{
    *name = NULL;
    PoolDef d = { 0 };
    const PoolBackend *be;
    int ret = store_lock(s, err);
    if (ret == 0) {
        ret = prepare_def(s, xml, len, &d, &be, err);
    }
    if (ret == 0) {
        char *p = store_def_path(s, d.name, false);
        if (p && access(p, F_OK) == 0) {
            ret = error_setf(err, EEXIST, "pool '%s' already exists",
                             d.name);
        }
        free(p);
    }
    Pool *p = NULL;
    if (ret == 0) {
        int lock = -1;
        ret = store_pool_lock(s, d.name, &lock, err);
        if (ret == 0) {
            ret = write_def(s, &d, true, err);
            if (ret == 0) {
                PoolRunState st = { .transient = true };
                ret = store_state_save(s, d.name, &st, err);
            }
            store_pool_unlock(&lock);
        }
        if (ret == 0) {
            ret = pool_open(s, d.name, &p, err);
        }
        if (ret == 0) {
            ret = do_start(p, build, build_flags, err);
        }
        if (ret < 0) {
            store_pool_forget(s, d.name);
        } else {
            *name = strdup(d.name);
        }
    }
    pool_close(p);
    store_unlock(s);
    pool_def_clear(&d);
    return ret;
}

/* Runs op on the locked pool `pool`. */
#define WITH_POOL(s, pool, err, body)                                    \
    do {                                                                 \
        Pool *p_;                                                        \
        int r_ = pool_open((s), (pool), &p_, (err));                     \
        if (r_ < 0) {                                                    \
            return r_;                                                   \
        }                                                                \
        Pool *p = p_;                                                    \
        r_ = (body);                                                     \
        pool_close(p);                                                   \
        return r_;                                                       \
    } while (0)

static int build_locked(Pool *p, unsigned flags, Error *err)
{
    if (p->active) {
        return error_setf(err, EBUSY, "storage pool '%s' is already active",
                          p->def.name);
    }
    return do_build(p, flags, err);
}

int pool_build(PoolStore *s, const char *pool, unsigned flags, Error *err)
{
    WITH_POOL(s, pool, err, build_locked(p, flags, err));
}

int pool_start(PoolStore *s, const char *pool, bool build, unsigned flags,
               Error *err)
{
    WITH_POOL(s, pool, err, do_start(p, build, flags, err));
}

static int destroy_locked(Pool *p, Error *err)
{
    int ret = pool_require_active(p, err);
    if (ret == 0) {
        ret = p->be->stop(p, err);
    }
    if (ret == 0) {
        p->active = false;
        if (p->transient) {
            store_pool_forget(p->store, p->def.name);
            json_decref(p->cache);
            p->cache = json_object();
            p->cache_dirty = false;
        } else {
            ret = pool_save_state(p, err);
        }
    }
    return ret;
}

int pool_destroy(PoolStore *s, const char *pool, Error *err)
{
    WITH_POOL(s, pool, err, destroy_locked(p, err));
}

static int delete_locked(Pool *p, Error *err)
{
    int ret = require_inactive(p, err);
    if (ret == 0) {
        ret = p->be->delete(p, err);
    }
    if (ret == 0) {
        json_decref(p->cache);
        p->cache = json_object();
        p->cache_dirty = true;
    }
    return ret;
}

int pool_delete(PoolStore *s, const char *pool, Error *err)
{
    WITH_POOL(s, pool, err, delete_locked(p, err));
}

static int undefine_locked(Pool *p, Error *err)
{
    if (p->transient) {
        return error_setf(err, EINVAL, "cannot undefine transient storage "
                          "pool '%s'", p->def.name);
    }
    int ret = require_inactive(p, err);
    char *path = ret == 0 ? store_def_path(p->store, p->def.name, false)
                          : NULL;
    if (ret == 0 && !path) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    if (ret == 0 && unlink(path) < 0) {
        int e = errno;
        ret = error_setf(err, e, "cannot remove '%s': %s", path,
                         strerror(e));
    }
    if (ret == 0) {
        pool_sync_parent(path);
        store_pool_forget(p->store, p->def.name);
        p->cache_dirty = false;
    }
    free(path);
    return ret;
}

int pool_undefine(PoolStore *s, const char *pool, Error *err)
{
    int ret = store_lock(s, err);
    if (ret < 0) {
        return ret;
    }
    Pool *p;
    ret = pool_open(s, pool, &p, err);
    if (ret == 0) {
        ret = undefine_locked(p, err);
        pool_close(p);
    }
    store_unlock(s);
    return ret;
}

static int refresh_cmd(Pool *p, Error *err)
{
    int ret = pool_require_active(p, err);
    return ret < 0 ? ret : pool_refresh_locked(p, err);
}

int pool_refresh(PoolStore *s, const char *pool, Error *err)
{
    WITH_POOL(s, pool, err, refresh_cmd(p, err));
}

static int autostart_locked(Pool *p, bool on, Error *err)
{
    if (p->transient) {
        return error_setf(err, EINVAL, "cannot set autostart for transient "
                          "pool");
    }
    return store_autostart_set(p->store, p->def.name, on, err);
}

int pool_set_autostart(PoolStore *s, const char *pool, bool on, Error *err)
{
    WITH_POOL(s, pool, err, autostart_locked(p, on, err));
}

void pool_info_clear(PoolInfo *i)
{
    free(i->name);
    free(i->uuid);
    free(i->type);
    free(i->target);
    memset(i, 0, sizeof(*i));
}

void pool_info_list_free(PoolInfo *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        pool_info_clear(&v[i]);
    }
    free(v);
}

static int fill_info(Pool *p, PoolInfo *out, Error *err)
{
    memset(out, 0, sizeof(*out));
    out->name = strdup(p->def.name);
    out->uuid = strdup(p->def.uuid);
    out->type = strdup(p->def.type);
    out->target = p->def.target_path ? strdup(p->def.target_path) : NULL;
    out->active = p->active;
    out->autostart = p->autostart;
    out->persistent = !p->transient;
    if (!out->name || !out->uuid || !out->type) {
        pool_info_clear(out);
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (p->active && p->be->refresh_sizes(p, err) == 0) {
        out->sizes_known = true;
        out->capacity = p->capacity;
        out->allocation = p->allocation;
        out->available = p->available;
    }
    error_clear(err);
    return 0;
}

int pool_get_info(PoolStore *s, const char *pool, PoolInfo *out, Error *err)
{
    WITH_POOL(s, pool, err, fill_info(p, out, err));
}

int pool_list(PoolStore *s, PoolInfo **out, size_t *nout, Error *err)
{
    *out = NULL;
    *nout = 0;
    char **names;
    size_t n;
    int ret = store_pool_names(s, &names, &n, err);
    if (ret < 0) {
        return ret;
    }
    PoolInfo *v = calloc(n ? n : 1, sizeof(*v));
    size_t k = 0;
    if (!v) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    for (size_t i = 0; ret == 0 && i < n; i++) {
        Pool *p;
        Error perr = { 0 };
        if (pool_open(s, names[i], &p, &perr) < 0) {
            if (perr.code != ENOMEM) {
                /* undefined meanwhile, or a definition imgtool cannot
                 * use (pool-info NAME says why), as libvirtd skips it */
                continue;
            }
            ret = error_setf(err, perr.code, "%s", perr.msg);
            break;
        }
        ret = fill_info(p, &v[k], err);
        k += ret == 0;
        pool_close(p);
    }
    store_names_free(names, n);
    if (ret < 0) {
        pool_info_list_free(v, k);
        return ret;
    }
    *out = v;
    *nout = k;
    return 0;
}

static int dumpxml_locked(Pool *p, bool inactive, char **xml, Error *err)
{
    uint64_t sizes[3] = { 0, 0, 0 };
    if (p->active && !inactive && p->be->refresh_sizes(p, err) == 0) {
        sizes[0] = p->capacity;
        sizes[1] = p->allocation;
        sizes[2] = p->available;
    }
    error_clear(err);
    *xml = pool_def_format(&p->def, sizes);
    return *xml ? 0 : error_setf(err, ENOMEM, "out of memory");
}

int pool_dumpxml(PoolStore *s, const char *pool, bool inactive, char **xml,
                 Error *err)
{
    WITH_POOL(s, pool, err, dumpxml_locked(p, inactive, xml, err));
}
