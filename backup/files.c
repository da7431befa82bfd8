/*
 * files.c - the crash-safe file writes everything in backup/ uses
 * (repo.h): a file replaced whole (written aside, fsynced, renamed over,
 * its directory fsynced) or created only where none was, and trees
 * removed.  A crash leaves the old file or the new one, never a mix.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/repo.h"

/* ------------------------------------------------------------------ */
/* Files                                                               */

int bk_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int ret = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return ret;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        return strdup(".");
    }
    if (slash == path) {
        return strdup("/");
    }
    return strndup(path, (size_t)(slash - path));
}

int bk_write_file_atomic(const char *path, const void *buf, size_t len,
                         Error *err)
{
    char *tmp = NULL, *dir = NULL;
    int fd = -1, ret = 0;

    if (asprintf(&tmp, "%s.tmp", path) < 0 || !(dir = dir_of(path))) {
        free(tmp);
        return error_setf(err, ENOMEM, "out of memory");
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        ret = -errno;
        goto out;
    }
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, (const char *)buf + done, len - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            ret = -errno;
            goto out;
        }
        done += (size_t)n;
    }
    if (fsync(fd) < 0) {
        ret = -errno;
        goto out;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, path) < 0) {
        ret = -errno;
        goto out;
    }
    ret = bk_fsync_dir(dir);
out:
    if (fd >= 0) {
        close(fd);
    }
    if (ret < 0) {
        unlink(tmp);
        error_setf(err, -ret, "%s: %s", path, strerror(-ret));
    }
    free(tmp);
    free(dir);
    return ret;
}

int bk_write_file_new(const char *path, const void *buf, size_t len,
                      Error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int ret = fd < 0 ? -errno : 0;
    for (size_t done = 0; ret == 0 && done < len;) {
        ssize_t n = write(fd, (const char *)buf + done, len - done);
        if (n < 0 && errno != EINTR) {
            ret = -errno;
        } else if (n > 0) {
            done += (size_t)n;
        }
    }
    if (ret == 0 && fsync(fd) < 0) {
        ret = -errno;
    }
    if (fd >= 0) {
        close(fd);
    }
    if (ret < 0) {
        if (fd >= 0) {
            unlink(path);
        }
        error_setf(err, -ret, "%s: %s", path, strerror(-ret));
    }
    return ret;
}

/* The JSON text of j, newline-terminated (malloc'd). */
static char *json_text(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!s) {
        return NULL;
    }
    size_t len = strlen(s);
    char *t = realloc(s, len + 2);
    if (!t) {
        free(s);
        return NULL;
    }
    t[len] = '\n';
    t[len + 1] = '\0';
    return t;
}

int bk_write_json_new(const char *path, json_t *j, Error *err)
{
    char *t = json_text(j);
    if (!t) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = bk_write_file_new(path, t, strlen(t), err);
    free(t);
    return ret;
}

int bk_write_json_atomic(const char *path, json_t *j, Error *err)
{
    char *t = json_text(j);
    if (!t) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = bk_write_file_atomic(path, t, strlen(t), err);
    free(t);
    return ret;
}

int bk_remove_tree(const char *path)
{
    DIR *d = opendir(path);
    int ret = 0;
    if (!d) {
        if (errno == ENOENT) {
            return 0;
        }
        if (errno == ENOTDIR) {
            return unlink(path) < 0 ? -errno : 0;
        }
        return -errno;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        char *p = NULL;
        if (asprintf(&p, "%s/%s", path, e->d_name) < 0) {
            ret = -ENOMEM;
            break;
        }
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            int r = bk_remove_tree(p);
            ret = ret ? ret : r;
        } else if (unlink(p) < 0 && errno != ENOENT) {
            ret = ret ? ret : -errno;
        }
        free(p);
    }
    closedir(d);
    if (rmdir(path) < 0 && errno != ENOENT) {
        ret = ret ? ret : -errno;
    }
    return ret;
}
