/*
 * dir.c - the directory pool back end: every regular file in the target
 * directory is a volume (raw, qcow2 or luks), its key is its path.
 *
 * Refresh is incremental: the cache remembers, per file, the stat
 * fields that change whenever its content does (inode, size, mtime and
 * ctime in nanoseconds) and what was read from it; a file whose fields
 * are unchanged is not opened again.  A file modified within the clock
 * tick of the stat that cached it could change again without its mtime
 * moving ("racily clean", as git calls it), so such entries are read
 * again next time.
 *
 * The format of a volume imgtool created (or wiped) is remembered and
 * never probed again, so a guest that writes a qcow2 header into its raw
 * volume cannot make the next command open host files through it.  Files
 * that appeared otherwise are probed, as libvirt does.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "block/core/secret.h"
#include "pools/backend.h"
#include "pools/util.h"

/* A cached entry younger than this (mtime vs. the time of its stat) is
 * re-read: mtime comes from a coarse clock. */
#define RACY_NS (100 * 1000 * 1000LL)

static int dir_def_check(PoolDef *d, Error *err)
{
    if (!d->target_path) {
        return error_setf(err, EINVAL, "missing storage pool target path");
    }
    if (d->target_path[0] != '/') {
        return error_setf(err, EINVAL, "storage pool target path '%s' is "
                          "not absolute", d->target_path);
    }
    return 0;
}

static int dir_vol_name_check(const char *name, Error *err)
{
    (void)name;
    (void)err;
    return 0;
}

static int dir_build(Pool *p, unsigned flags, Error *err)
{
    (void)flags;   /* libvirt: meaningful for mkfs-based pools only */
    const char *t = p->def.target_path;
    int mode = p->def.mode >= 0 ? p->def.mode : 0711;
    int ret = pool_mkdir_p(t, 0755, err);
    if (ret == 0 && chmod(t, (mode_t)mode) < 0) {
        ret = error_setf(err, errno, "cannot set mode of '%s': %s", t,
                         strerror(errno));
    }
    if (ret == 0 && (p->def.uid >= 0 || p->def.gid >= 0) &&
        chown(t, (uid_t)p->def.uid, (gid_t)p->def.gid) < 0) {
        ret = error_setf(err, errno, "cannot set owner of '%s': %s", t,
                         strerror(errno));
    }
    return ret;
}

static int dir_start(Pool *p, Error *err)
{
    struct stat st;
    const char *t = p->def.target_path;
    if (stat(t, &st) < 0) {
        return error_setf(err, errno, "cannot open directory '%s': %s", t,
                          strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        return error_setf(err, ENOTDIR, "cannot open directory '%s': %s", t,
                          strerror(ENOTDIR));
    }
    return 0;
}

static int dir_stop(Pool *p, Error *err)
{
    (void)p;
    (void)err;
    return 0;
}

static int dir_delete(Pool *p, Error *err)
{
    const char *t = p->def.target_path;
    if (rmdir(t) < 0 && errno != ENOENT) {
        return error_setf(err, errno, "cannot remove directory '%s': %s", t,
                          strerror(errno));
    }
    return 0;
}

static int dir_refresh_sizes(Pool *p, Error *err)
{
    struct statvfs sv;
    if (statvfs(p->def.target_path, &sv) < 0) {
        return error_setf(err, errno, "cannot statvfs path '%s': %s",
                          p->def.target_path, strerror(errno));
    }
    p->capacity = (uint64_t)sv.f_frsize * sv.f_blocks;
    p->available = (uint64_t)sv.f_frsize * sv.f_bavail;
    p->allocation = (uint64_t)sv.f_frsize * (sv.f_blocks - sv.f_bfree);
    return 0;
}

/* ---- the cache ------------------------------------------------------- */

static json_t *vols_cache(Pool *p)
{
    json_t *v = json_object_get(p->cache, "vols");
    if (!json_is_object(v)) {
        v = json_object();
        json_object_set_new(p->cache, "vols", v);
    }
    return v;
}

static int64_t ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec;
}

static bool entry_matches(json_t *e, const struct stat *st)
{
    return json_is_object(e) &&
           !json_is_true(json_object_get(e, "racy")) &&
           json_integer_value(json_object_get(e, "ino")) ==
               (json_int_t)st->st_ino &&
           json_integer_value(json_object_get(e, "size")) ==
               (json_int_t)st->st_size &&
           json_integer_value(json_object_get(e, "mtime")) ==
               ts_ns(&st->st_mtim) &&
           json_integer_value(json_object_get(e, "ctime")) ==
               ts_ns(&st->st_ctim);
}

static const char *jstr(json_t *e, const char *k)
{
    return json_string_value(json_object_get(e, k));
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* VolInfo fields kept in the cache. */
static void entry_to_vol(json_t *e, VolInfo *v)
{
    v->format = dup_or_null(jstr(e, "fmt"));
    v->capacity = (uint64_t)json_integer_value(json_object_get(e, "cap"));
    v->backing_path = dup_or_null(jstr(e, "bk"));
    v->backing_format = dup_or_null(jstr(e, "bkf"));
    v->secret = dup_or_null(jstr(e, "secret"));
    v->compat = dup_or_null(jstr(e, "compat"));
    v->cluster_size = (uint64_t)json_integer_value(json_object_get(e, "cl"));
    v->lazy_refcounts = json_is_true(json_object_get(e, "lazy"));
    v->extended_l2 = json_is_true(json_object_get(e, "el2"));
}

static void set_str(json_t *e, const char *k, const char *v)
{
    if (v) {
        json_object_set_new(e, k, json_string(v));
    } else {
        json_object_del(e, k);
    }
}

/* Reads the file and records what it is.  old: the previous entry (its
 * sticky format and secret survive). */
static int read_entry(Pool *p, const char *name, const char *path,
                      const struct stat *st, json_t *old, VolInfo *v,
                      Error *err)
{
    bool sticky = json_is_true(json_object_get(old, "sticky"));
    const char *fmt = sticky ? jstr(old, "fmt") : NULL;
    int ret = pool_read_image_info(path, fmt, v, err);
    if (ret < 0) {
        return ret;
    }
    if (ret == 1 || v->capacity == 0) {
        v->capacity = (uint64_t)st->st_size;
    }
    json_t *e = json_pack("{s:I, s:I, s:I, s:I, s:s, s:I, s:I, s:b, s:b}",
                          "ino", (json_int_t)st->st_ino,
                          "size", (json_int_t)st->st_size,
                          "mtime", (json_int_t)ts_ns(&st->st_mtim),
                          "ctime", (json_int_t)ts_ns(&st->st_ctim),
                          "fmt", v->format,
                          "cap", (json_int_t)v->capacity,
                          "cl", (json_int_t)v->cluster_size,
                          "lazy", v->lazy_refcounts,
                          "el2", v->extended_l2);
    if (!e) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    set_str(e, "bk", v->backing_path);
    set_str(e, "bkf", v->backing_format);
    set_str(e, "compat", v->compat);
    if (sticky) {
        json_object_set_new(e, "sticky", json_true());
    }
    const char *secret = jstr(old, "secret");
    if (secret) {
        set_str(e, "secret", secret);
        free(v->secret);
        v->secret = strdup(secret);
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (ts_ns(&now) - ts_ns(&st->st_mtim) < RACY_NS ||
        ts_ns(&now) - ts_ns(&st->st_ctim) < RACY_NS) {
        json_object_set_new(e, "racy", json_true());
    }
    json_object_set_new(vols_cache(p), name, e);
    p->cache_dirty = true;
    return 0;
}

/* Fills v for the file `name` (stat st), from the cache when it is
 * still right. */
static int file_vol(Pool *p, const char *name, const struct stat *st,
                    VolInfo *v, Error *err)
{
    vol_info_clear(v);
    char *path = pool_strfmt("%s/%s", p->def.target_path, name);
    v->pool = strdup(p->def.name);
    v->name = strdup(name);
    if (!path || !v->pool || !v->name) {
        free(path);
        return error_setf(err, ENOMEM, "out of memory");
    }
    json_t *e = json_object_get(vols_cache(p), name);
    int ret = 0;
    if (entry_matches(e, st)) {
        entry_to_vol(e, v);
    } else {
        json_incref(e);
        ret = read_entry(p, name, path, st, e, v, err);
        json_decref(e);
    }
    v->path = path;
    v->key = strdup(path);
    v->type = "file";
    v->allocation = (uint64_t)st->st_blocks * 512;
    v->physical = (uint64_t)st->st_size;
    v->mode = (int)(st->st_mode & 07777);
    v->uid = (int)st->st_uid;
    v->gid = (int)st->st_gid;
    v->atime_ns = ts_ns(&st->st_atim);
    v->mtime_ns = ts_ns(&st->st_mtim);
    v->ctime_ns = ts_ns(&st->st_ctim);
    if (ret == 0 && (!v->key || !v->format)) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    return ret;
}

static int dir_refresh(Pool *p, Error *err)
{
    DIR *d = opendir(p->def.target_path);
    if (!d) {
        return error_setf(err, errno, "cannot open directory '%s': %s",
                          p->def.target_path, strerror(errno));
    }
    int dfd = dirfd(d);
    json_t *seen = json_object();
    size_t cap = 0;
    int ret = seen ? 0 : error_setf(err, ENOMEM, "out of memory");
    struct dirent *de;
    while (ret == 0 && (de = readdir(d))) {
        struct stat st;
        if (de->d_name[0] == '.' && (!de->d_name[1] ||
                                     !strcmp(de->d_name, ".."))) {
            continue;
        }
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISREG(st.st_mode)) {
            continue;
        }
        if (p->nvols == cap) {
            size_t nc = cap ? cap * 2 : 64;
            VolInfo *nv = realloc(p->vols, nc * sizeof(*nv));
            if (!nv) {
                ret = error_setf(err, ENOMEM, "out of memory");
                break;
            }
            p->vols = nv;
            cap = nc;
        }
        VolInfo *v = &p->vols[p->nvols];
        memset(v, 0, sizeof(*v));
        Error verr = { 0 };
        if (file_vol(p, de->d_name, &st, v, &verr) < 0) {
            /* A file that cannot be read is not a volume; the rest of
             * the pool still is. */
            vol_info_clear(v);
            if (verr.code == ENOMEM) {
                ret = error_setf(err, ENOMEM, "out of memory");
            }
            continue;
        }
        p->nvols++;
        json_object_set_new(seen, de->d_name, json_true());
    }
    closedir(d);
    /* Forget files that are gone. */
    json_t *vols = vols_cache(p);
    const char *key;
    json_t *val, *tmp;
    json_object_foreach_safe(vols, tmp, key, val) {
        if (ret == 0 && !json_object_get(seen, key)) {
            json_object_del(vols, key);
            p->cache_dirty = true;
        }
    }
    json_decref(seen);
    return ret;
}

static int dir_vol_lookup(Pool *p, const char *name, VolInfo *out,
                          Error *err)
{
    char *path = pool_strfmt("%s/%s", p->def.target_path, name);
    if (!path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    struct stat st;
    int r = lstat(path, &st);
    free(path);
    if (r < 0 || !S_ISREG(st.st_mode)) {
        return -ENOENT;
    }
    return file_vol(p, name, &st, out, err);
}

static int dir_vol_create(Pool *p, const VolCreateArgs *a, VolInfo *out,
                          Error *err)
{
    char *path = pool_strfmt("%s/%s", p->def.target_path, a->name);
    if (!path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    struct stat st;
    int ret = 0;
    if (lstat(path, &st) == 0) {
        ret = error_setf(err, EEXIST, "storage volume name '%s' already in "
                         "use.", a->name);
    }
    if (ret == 0) {
        ret = dir_refresh_sizes(p, err);
    }
    if (ret == 0 && a->has_allocation && a->allocation > p->available) {
        ret = error_setf(err, ENOSPC, "not enough space in pool '%s' for "
                         "volume '%s': %llu bytes wanted, %llu available",
                         p->def.name, a->name,
                         (unsigned long long)a->allocation,
                         (unsigned long long)p->available);
    }
    if (ret == 0) {
        ret = pool_create_image(p, path, a, a->backing_vol,
                                a->backing_format, true, err);
        if (ret < 0) {
            unlink(path);
        }
    }
    if (ret == 0 && chmod(path, (mode_t)(a->mode >= 0 ? a->mode : 0600)) <
        0) {
        ret = error_setf(err, errno, "cannot set mode of '%s': %s", path,
                         strerror(errno));
        unlink(path);
    }
    if (ret == 0) {
        /* Remembered, never probed: see the top of this file. */
        json_t *e = json_pack("{s:s, s:b, s:b}", "fmt",
                              a->format ? a->format : "raw", "sticky", 1,
                              "racy", 1);
        if (e && a->secret) {
            json_object_set_new(e, "secret", json_string(a->secret));
        }
        json_object_set_new(vols_cache(p), a->name, e);
        p->cache_dirty = true;
        ret = dir_vol_lookup(p, a->name, out, err);
        if (ret < 0) {
            unlink(path);
        }
    }
    free(path);
    return ret;
}

static int dir_vol_delete(Pool *p, const VolInfo *v, Error *err)
{
    char *path = pool_strfmt("%s/%s", p->def.target_path, v->name);
    if (!path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = 0;
    if (unlink(path) < 0 && errno != ENOENT) {
        ret = error_setf(err, errno, "cannot unlink file '%s': %s", path,
                         strerror(errno));
    } else {
        pool_sync_parent(path);
        json_object_del(vols_cache(p), v->name);
        p->cache_dirty = true;
    }
    free(path);
    return ret;
}

static int dir_vol_resize(Pool *p, const VolInfo *v, uint64_t capacity,
                          bool allocate, Error *err)
{
    BlockNode *n;
    Error oerr = { 0 };
    int ret = pool_vol_open_node(p, v, false, BLOCK_O_RDWR, &n, &oerr);
    if (ret < 0) {
        return error_setf(err, -ret, "volume '%s' cannot be used: %s",
                          v->name, oerr.msg);
    }
    ret = block_truncate(n, capacity, true,
                         allocate ? PREALLOC_FALLOC : PREALLOC_OFF, err);
    if (ret == 0) {
        ret = block_flush(n);
        if (ret < 0) {
            error_setf(err, -ret, "flush failed: %s", strerror(-ret));
        }
    }
    block_close(n);
    return ret;
}

static int dir_vol_open_spec(Pool *p, const VolInfo *v, bool raw_bytes,
                             VolOpenSpec *spec, Error *err)
{
    memset(spec, 0, sizeof(*spec));
    spec->filename = strdup(v->path);
    spec->format = strdup(raw_bytes ? "raw" : v->format);
    if (!spec->filename || !spec->format) {
        vol_open_spec_clear(spec);
        return error_setf(err, ENOMEM, "out of memory");
    }
    (void)p;
    if (!raw_bytes && v->secret && strcmp(v->format, "luks") == 0) {
        /* The key is used when the command defined the secret; without
         * it the volume still opens for what needs no key (info). */
        uint8_t *data;
        size_t len;
        Error ignored = { 0 };
        if (secret_lookup(v->secret, &data, &len, &ignored) == 0) {
            secret_free(data, len);
            kvlist_set(&spec->opts, "key-secret", v->secret);
        }
    }
    return 0;
}

static int dir_vol_changed(Pool *p, const VolInfo *v, const char *format,
                           Error *err)
{
    (void)err;
    json_t *vols = vols_cache(p);
    if (!format) {
        json_object_del(vols, v->name);
    } else {
        json_t *e = json_pack("{s:s, s:b, s:b}", "fmt", format, "sticky", 1,
                              "racy", 1);
        json_object_set_new(vols, v->name, e);
    }
    p->cache_dirty = true;
    return 0;
}

const PoolBackend pool_backend_dir = {
    .type = "dir",
    .def_check = dir_def_check,
    .vol_name_check = dir_vol_name_check,
    .build = dir_build,
    .start = dir_start,
    .stop = dir_stop,
    .delete = dir_delete,
    .refresh_sizes = dir_refresh_sizes,
    .refresh = dir_refresh,
    .vol_lookup = dir_vol_lookup,
    .vol_create = dir_vol_create,
    .vol_delete = dir_vol_delete,
    .vol_resize = dir_vol_resize,
    .vol_open_spec = dir_vol_open_spec,
    .vol_changed = dir_vol_changed,
};
