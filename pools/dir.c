/*
 * dir.c - the directory pool back end: every regular file in the target
 * directory is a volume (raw, qcow2 or luks), its key is its path.
 *
 * Refresh is incremental and formats of volumes imgtool made are never
 * probed again: the cache of file volumes (filevol.h) says how.
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

#include "pools/filevol.h"
#include "pools/util.h"

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
        char *path = pool_strfmt("%s/%s", p->def.target_path, de->d_name);
        int fr = path ? pool_file_vol(p, de->d_name, path, "file", &st, v,
                                      &verr)
                      : error_setf(&verr, ENOMEM, "out of memory");
        free(path);
        if (fr < 0) {
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
    if (ret == 0) {
        pool_file_vols_prune(p, seen);
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
    if (r < 0 || !S_ISREG(st.st_mode)) {
        free(path);
        return -ENOENT;
    }
    r = pool_file_vol(p, name, path, "file", &st, out, err);
    free(path);
    return r;
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
    if (ret == 0) {
        ret = pool_file_vol_room(p, a, err);
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
        /* Remembered, never probed (filevol.h). */
        pool_file_vol_remember(p, a->name, a->format ? a->format : "raw",
                               a->secret);
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
        pool_file_vol_forget(p, v->name);
    }
    free(path);
    return ret;
}

static char *dir_vol_new_path(Pool *p, const char *name)
{
    return pool_strfmt("%s/%s", p->def.target_path, name);
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
    .vol_resize = pool_file_vol_resize,
    .vol_open_spec = pool_file_vol_open_spec,
    .vol_new_path = dir_vol_new_path,
    .vol_changed = pool_file_vol_changed,
};
