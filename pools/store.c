/*
 * store.c - the on-disk layout of pools, their locks and running state
 * (see store.h for the layout).
 *
 * Invariants: a definition, state or cache file is only ever replaced
 * whole (pool_write_atomic); the pool lock is held whenever a pool's
 * files change, and the store lock as well when a pool appears or
 * disappears.  A marker is created under the pool lock and stays
 * flocked by the process doing the work, so "is it still running" is
 * a non-blocking flock away.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pools/store.h"
#include "pools/backend.h"
#include "pools/util.h"

static char *default_dir(void)
{
    const char *env = getenv("IMGTOOL_CONFIG_DIR");
    if (env && *env) {
        return strdup(env);
    }
    if (geteuid() == 0) {
        return strdup("/etc/imgtool/storage");
    }
    const char *xdg = getenv("XDG_CONFIG_HOME");
    if (xdg && *xdg == '/') {
        return pool_strfmt("%s/imgtool/storage", xdg);
    }
    const char *home = getenv("HOME");
    return pool_strfmt("%s/.config/imgtool/storage", home ? home : "");
}

int pool_store_open(PoolStore **out, Error *err)
{
    *out = NULL;
    PoolStore *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    s->store_lock_fd = -1;
    s->dir = default_dir();
    s->run_dir = s->dir ? pool_strfmt("%s/.imgtool", s->dir) : NULL;
    if (!s->dir || !s->run_dir) {
        pool_store_close(s);
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (s->dir[0] != '/') {
        int r = error_setf(err, EINVAL, "storage config directory '%s' is "
                           "not an absolute path", s->dir);
        pool_store_close(s);
        return r;
    }
    char *pools = pool_strfmt("%s/pools", s->run_dir);
    int ret = pools ? pool_mkdir_p(pools, 0700, err)
                    : error_setf(err, ENOMEM, "out of memory");
    free(pools);
    if (ret < 0) {
        pool_store_close(s);
        return ret;
    }
    pool_boot_id(s->boot_id);
    *out = s;
    return 0;
}

void pool_store_close(PoolStore *s)
{
    if (!s) {
        return;
    }
    store_unlock(s);
    free(s->dir);
    free(s->run_dir);
    free(s);
}

const char *pool_store_dir(const PoolStore *s)
{
    return s->dir;
}

/* Opens and flocks path, retrying when the file was replaced or removed
 * while we waited. */
static int lock_file(const char *path, int *out, Error *err)
{
    for (;;) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            int e = errno;
            return error_setf(err, e, "cannot open lock file '%s': %s", path,
                              strerror(e));
        }
        while (flock(fd, LOCK_EX) < 0) {
            if (errno != EINTR) {
                int e = errno;
                close(fd);
                return error_setf(err, e, "cannot lock '%s': %s", path,
                                  strerror(e));
            }
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(path, &b) == 0 &&
            a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
            *out = fd;
            return 0;
        }
        close(fd);
    }
}

int store_lock(PoolStore *s, Error *err)
{
    if (s->store_lock_fd >= 0) {
        return 0;
    }
    char *path = pool_strfmt("%s/store.lock", s->run_dir);
    if (!path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = lock_file(path, &s->store_lock_fd, err);
    free(path);
    return ret;
}

void store_unlock(PoolStore *s)
{
    if (s->store_lock_fd >= 0) {
        close(s->store_lock_fd);
        s->store_lock_fd = -1;
    }
}

char *store_pool_dir(PoolStore *s, const char *name)
{
    return pool_strfmt("%s/pools/%s", s->run_dir, name);
}

int store_pool_lock(PoolStore *s, const char *name, int *fd, Error *err)
{
    char *dir = store_pool_dir(s, name);
    char *ops = dir ? pool_strfmt("%s/ops", dir) : NULL;
    char *path = dir ? pool_strfmt("%s/lock", dir) : NULL;
    int ret = (dir && ops && path) ? pool_mkdir_p(ops, 0700, err)
                                   : error_setf(err, ENOMEM, "out of memory");
    if (ret == 0) {
        ret = lock_file(path, fd, err);
    }
    free(dir);
    free(ops);
    free(path);
    return ret;
}

void store_pool_unlock(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void store_names_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(names[i]);
    }
    free(names);
}

static int add_name(char ***names, size_t *n, size_t *cap, const char *name)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*names)[i], name) == 0) {
            return 0;
        }
    }
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        char **nv = realloc(*names, nc * sizeof(*nv));
        if (!nv) {
            return -ENOMEM;
        }
        *names = nv;
        *cap = nc;
    }
    (*names)[*n] = strdup(name);
    if (!(*names)[*n]) {
        return -ENOMEM;
    }
    (*n)++;
    return 0;
}

int store_pool_names(PoolStore *s, char ***out, size_t *nout, Error *err)
{
    char **names = NULL;
    size_t n = 0, cap = 0;
    int ret = 0;
    *out = NULL;
    *nout = 0;

    DIR *d = opendir(s->dir);
    if (!d) {
        int e = errno;
        return error_setf(err, e, "cannot read '%s': %s", s->dir,
                          strerror(e));
    }
    struct dirent *e;
    while (ret == 0 && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".xml") == 0 &&
            e->d_name[0] != '.') {
            char *name = strndup(e->d_name, len - 4);
            ret = name ? add_name(&names, &n, &cap, name) : -ENOMEM;
            free(name);
        }
    }
    closedir(d);

    /* Transient pools: a state dir with a pool.xml. */
    char *pools = pool_strfmt("%s/pools", s->run_dir);
    d = pools ? opendir(pools) : NULL;
    while (ret == 0 && d && (e = readdir(d))) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char *def = pool_strfmt("%s/%s/pool.xml", pools, e->d_name);
        if (!def) {
            ret = -ENOMEM;
        } else if (access(def, F_OK) == 0) {
            ret = add_name(&names, &n, &cap, e->d_name);
        }
        free(def);
    }
    if (d) {
        closedir(d);
    }
    free(pools);
    if (ret < 0) {
        store_names_free(names, n);
        return error_setf(err, -ret, "out of memory");
    }
    if (n) {
        qsort(names, n, sizeof(*names), cmp_str);
    }
    *out = names;
    *nout = n;
    return 0;
}

char *store_def_path(PoolStore *s, const char *name, bool transient)
{
    if (transient) {
        return pool_strfmt("%s/pools/%s/pool.xml", s->run_dir, name);
    }
    return pool_strfmt("%s/%s.xml", s->dir, name);
}

int store_state_load(PoolStore *s, const char *name, PoolRunState *st,
                     Error *err)
{
    memset(st, 0, sizeof(*st));
    char *path = pool_strfmt("%s/pools/%s/state", s->run_dir, name);
    if (!path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    char *tpath = store_def_path(s, name, true);
    st->transient = tpath && access(tpath, F_OK) == 0;
    free(tpath);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    free(path);
    if (!j) {
        return 0;
    }
    st->active = json_is_true(json_object_get(j, "active"));
    const char *b = json_string_value(json_object_get(j, "boot_id"));
    snprintf(st->boot_id, sizeof(st->boot_id), "%s", b ? b : "");
    json_decref(j);
    return 0;
}

static int save_json(const char *path, json_t *j, Error *err)
{
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = pool_write_atomic(path, text, strlen(text), err);
    free(text);
    return ret;
}

int store_state_save(PoolStore *s, const char *name, const PoolRunState *st,
                     Error *err)
{
    char *path = pool_strfmt("%s/pools/%s/state", s->run_dir, name);
    json_t *j = json_pack("{s:b, s:s}", "active", st->active, "boot_id",
                          s->boot_id);
    int ret = (path && j) ? save_json(path, j, err)
                          : error_setf(err, ENOMEM, "out of memory");
    json_decref(j);
    free(path);
    return ret;
}

json_t *store_cache_load(PoolStore *s, const char *name)
{
    char *path = pool_strfmt("%s/pools/%s/cache", s->run_dir, name);
    json_t *j = NULL;
    struct stat st;
    if (path && stat(path, &st) == 0 && st.st_size <= POOL_MAX_CACHE) {
        json_error_t je;
        j = json_load_file(path, 0, &je);
    }
    free(path);
    if (!json_is_object(j)) {
        json_decref(j);
        j = json_object();
    }
    return j;
}

int store_cache_save(PoolStore *s, const char *name, json_t *cache,
                     Error *err)
{
    char *path = pool_strfmt("%s/pools/%s/cache", s->run_dir, name);
    int ret = path ? save_json(path, cache, err)
                   : error_setf(err, ENOMEM, "out of memory");
    free(path);
    return ret;
}

bool store_autostart_get(PoolStore *s, const char *name)
{
    char *link = pool_strfmt("%s/autostart/%s.xml", s->dir, name);
    struct stat st;
    bool on = link && stat(link, &st) == 0;
    free(link);
    return on;
}

int store_autostart_set(PoolStore *s, const char *name, bool on,
                        Error *err)
{
    char *dir = pool_strfmt("%s/autostart", s->dir);
    char *link = pool_strfmt("%s/autostart/%s.xml", s->dir, name);
    char *target = pool_strfmt("../%s.xml", name);
    char *tmp = pool_strfmt("%s/autostart/.%s.xml.tmp.%ld", s->dir, name,
                            (long)getpid());
    int ret = 0;
    if (!dir || !link || !target || !tmp) {
        ret = error_setf(err, ENOMEM, "out of memory");
    } else if (on) {
        ret = pool_mkdir_p(dir, 0755, err);
        unlink(tmp);
        if (ret == 0 && (symlink(target, tmp) < 0 || rename(tmp, link) < 0)) {
            int e = errno;
            unlink(tmp);
            ret = error_setf(err, e, "cannot create '%s': %s", link,
                             strerror(e));
        }
    } else if (unlink(link) < 0 && errno != ENOENT) {
        int e = errno;
        ret = error_setf(err, e, "cannot remove '%s': %s", link,
                         strerror(e));
    }
    if (ret == 0 && link) {
        pool_sync_parent(link);
    }
    free(dir);
    free(link);
    free(target);
    free(tmp);
    return ret;
}

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) {
                continue;
            }
            char *sub = pool_strfmt("%s/%s", path, e->d_name);
            if (sub) {
                struct stat st;
                if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode)) {
                    remove_tree(sub);
                } else {
                    unlink(sub);
                }
                free(sub);
            }
        }
        closedir(d);
    }
    rmdir(path);
}

void store_pool_forget(PoolStore *s, const char *name)
{
    Error ignored = { 0 };
    store_autostart_set(s, name, false, &ignored);
    char *dir = store_pool_dir(s, name);
    if (dir) {
        remove_tree(dir);
        pool_sync_parent(dir);
    }
    free(dir);
}

static char *op_path(PoolStore *s, const char *pool, const char *vol)
{
    return pool_strfmt("%s/pools/%s/ops/%s", s->run_dir, pool, vol);
}

int store_op_begin(PoolStore *s, const char *pool, const char *vol,
                   const char *op, OpMarker *m, Error *err)
{
    m->fd = -1;
    m->path = op_path(s, pool, vol);
    if (!m->path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    /* A marker left by a killed run is replaced: the caller has decided
     * what to do about it (a wipe runs again over it). */
    int fd = open(m->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        error_setf(err, e, "cannot create '%s': %s", m->path, strerror(e));
        free(m->path);
        m->path = NULL;
        return -e;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        close(fd);
        free(m->path);
        m->path = NULL;
        return error_setf(err, EBUSY, "volume '%s' is busy: another "
                          "command is working on it", vol);
    }
    int ret = ftruncate(fd, 0) == 0 &&
              write(fd, op, strlen(op)) == (ssize_t)strlen(op) &&
              fsync(fd) == 0 ? 0 : -errno;
    if (ret < 0) {
        unlink(m->path);
        close(fd);
        error_setf(err, -ret, "cannot write '%s': %s", m->path,
                   strerror(-ret));
        free(m->path);
        m->path = NULL;
        return ret;
    }
    pool_sync_parent(m->path);
    m->fd = fd;
    return 0;
}

void store_op_end(OpMarker *m)
{
    if (m->path) {
        unlink(m->path);
        pool_sync_parent(m->path);
        free(m->path);
        m->path = NULL;
    }
    if (m->fd >= 0) {
        close(m->fd);
        m->fd = -1;
    }
}

OpStatus store_op_status(PoolStore *s, const char *pool, const char *vol,
                         char op[16])
{
    if (op) {
        op[0] = '\0';
    }
    char *path = op_path(s, pool, vol);
    if (!path) {
        return OP_NONE;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0) {
        return OP_NONE;
    }
    if (op) {
        ssize_t r = read(fd, op, 15);
        op[r > 0 ? r : 0] = '\0';
    }
    OpStatus st = flock(fd, LOCK_SH | LOCK_NB) < 0 ? OP_RUNNING
                                                  : OP_INTERRUPTED;
    close(fd);
    return st;
}

int store_op_names(PoolStore *s, const char *pool, char ***out, size_t *nout)
{
    char **names = NULL;
    size_t n = 0, cap = 0;
    *out = NULL;
    *nout = 0;
    char *dir = pool_strfmt("%s/pools/%s/ops", s->run_dir, pool);
    DIR *d = dir ? opendir(dir) : NULL;
    free(dir);
    if (!d) {
        return 0;
    }
    struct dirent *e;
    int ret = 0;
    while (ret == 0 && (e = readdir(d))) {
        if (e->d_name[0] != '.' || (strcmp(e->d_name, ".") &&
                                    strcmp(e->d_name, ".."))) {
            ret = add_name(&names, &n, &cap, e->d_name);
        }
    }
    closedir(d);
    if (ret < 0) {
        store_names_free(names, n);
        return ret;
    }
    if (n) {
        qsort(names, n, sizeof(*names), cmp_str);
    }
    *out = names;
    *nout = n;
    return 0;
}

void store_op_clear(PoolStore *s, const char *pool, const char *vol)
{
    char *path = op_path(s, pool, vol);
    if (path) {
        unlink(path);
        pool_sync_parent(path);
    }
    free(path);
}
