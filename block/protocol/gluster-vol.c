/*
 * gluster-vol.c - files and directories on a Gluster volume for the
 * pools (gluster.h's GlusterVolOps, the table this module exports), on
 * the same per-volume connections the driver uses.
 * Each call resolves its URL, does one thing through gfapi and returns
 * one line on failure that names the URL.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/gluster-int.h"

/* The connection and the path inside the volume ("/" for its root). */
static glfs_t *resolve(const char *url, char **path, Error *err)
{
    GlusterAddr a;
    *path = NULL;
    if (gluster_addr_parse(&a, url, NULL, false, err) < 0) {
        return NULL;
    }
    size_t len = a.path ? strlen(a.path) : 0;
    *path = malloc(len + 2);
    if (!*path) {
        gluster_addr_free(&a);
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    (*path)[0] = '/';
    memcpy(*path + 1, a.path ? a.path : "", len + 1);
    while (len > 0 && (*path)[len] == '/') {
        (*path)[len--] = 0;       /* "dir/" is "dir" */
    }
    glfs_t *fs = gluster_get(&a, err);
    gluster_addr_free(&a);
    if (!fs) {
        free(*path);
        *path = NULL;
    }
    return fs;
}

static int fail(Error *err, int e, const char *what, const char *url)
{
    return error_setf(err, e, "cannot %s '%s': %s", what, url, strerror(e));
}

static void gluster_dir_entries_free(GlusterDirEntry *v, int n)
{
    for (int i = 0; i < n; i++) {
        free(v[i].name);
    }
    free(v);
}

static int gluster_list_dir(const char *url, GlusterDirEntry **out,
                            Error *err)
{
    *out = NULL;
    char *path;
    glfs_t *fs = resolve(url, &path, err);
    if (!fs) {
        return -(err && err->code ? err->code : EIO);
    }
    glfs_fd_t *d = glfs_opendir(fs, path);
    int ret = 0, n = 0, cap = 0;
    GlusterDirEntry *v = NULL;
    if (!d) {
        ret = fail(err, errno, "open directory", url);
    }
    while (ret == 0) {
        struct stat st;
        errno = 0;
        struct dirent *de = glfs_readdirplus(d, &st);
        if (!de) {
            if (errno) {
                ret = fail(err, errno, "read directory", url);
            }
            break;
        }
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) {
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            GlusterDirEntry *nv = realloc(v, (size_t)cap * sizeof(*nv));
            if (!nv) {
                ret = error_setf(err, ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        v[n].name = strdup(de->d_name);
        v[n].st = st;
        if (!v[n].name) {
            ret = error_setf(err, ENOMEM, "out of memory");
            break;
        }
        n++;
    }
    if (d) {
        glfs_closedir(d);
    }
    gluster_put(fs);
    free(path);
    if (ret < 0) {
        gluster_dir_entries_free(v, n);
        return ret;
    }
    *out = v;
    return n;
}

static int gluster_stat(const char *url, struct stat *st, Error *err)
{
    char *path;
    glfs_t *fs = resolve(url, &path, err);
    if (!fs) {
        return -(err && err->code ? err->code : EIO);
    }
    int ret = glfs_stat(fs, path, st) < 0 ? -errno : 0;
    gluster_put(fs);
    free(path);
    return ret == -ENOENT ? ret
           : ret < 0 ? fail(err, -ret, "stat", url) : 0;
}

static int gluster_unlink(const char *url, Error *err)
{
    char *path;
    glfs_t *fs = resolve(url, &path, err);
    if (!fs) {
        return -(err && err->code ? err->code : EIO);
    }
    int ret = glfs_unlink(fs, path) < 0 ? -errno : 0;
    gluster_put(fs);
    free(path);
    return ret < 0 && ret != -ENOENT ? fail(err, -ret, "remove", url) : ret;
}

static int gluster_mkdir_p(const char *url, int mode, Error *err)
{
    char *path;
    glfs_t *fs = resolve(url, &path, err);
    if (!fs) {
        return -(err && err->code ? err->code : EIO);
    }
    int ret = 0;
    for (char *p = path + 1; ret == 0; p++) {
        bool last = !*p;
        if (*p != '/' && !last) {
            continue;
        }
        char keep = *p;
        *p = 0;
        if (path[1] && glfs_mkdir(fs, path, (mode_t)mode) < 0 &&
            errno != EEXIST) {
            ret = fail(err, errno, "make directory", url);
        }
        *p = keep;
        if (last) {
            break;
        }
    }
    gluster_put(fs);
    free(path);
    return ret;
}

static int gluster_rmdir(const char *url, Error *err)
{
    char *path;
    glfs_t *fs = resolve(url, &path, err);
    if (!fs) {
        return -(err && err->code ? err->code : EIO);
    }
    int ret = glfs_rmdir(fs, path) < 0 ? -errno : 0;
    gluster_put(fs);
    free(path);
    return ret < 0 && ret != -ENOENT ? fail(err, -ret, "remove directory",
                                            url) : 0;
}

static int gluster_chmod(const char *url, int mode, Error *err)
{
    char *path;
    glfs_t *fs = resolve(url, &path, err);
    if (!fs) {
        return -(err && err->code ? err->code : EIO);
    }
    int ret = glfs_chmod(fs, path, (mode_t)mode) < 0 ? -errno : 0;
    gluster_put(fs);
    free(path);
    return ret < 0 ? fail(err, -ret, "set the mode of", url) : 0;
}

static int gluster_statvfs(const char *url, struct statvfs *sv,
                           Error *err)
{
    char *path;
    glfs_t *fs = resolve(url, &path, err);
    if (!fs) {
        return -(err && err->code ? err->code : EIO);
    }
    int ret = glfs_statvfs(fs, path, sv) < 0 ? -errno : 0;
    gluster_put(fs);
    free(path);
    return ret < 0 ? fail(err, -ret, "statvfs", url) : 0;
}

static const GlusterVolOps gluster_vol_ops_table = {
    .version = GLUSTER_VOL_OPS_VERSION,
    .list_dir = gluster_list_dir,
    .dir_entries_free = gluster_dir_entries_free,
    .stat = gluster_stat,
    .unlink = gluster_unlink,
    .mkdir_p = gluster_mkdir_p,
    .rmdir = gluster_rmdir,
    .chmod = gluster_chmod,
    .statvfs = gluster_statvfs,
};

BLOCK_MODULE_OPS(gluster_vol_ops_table);
