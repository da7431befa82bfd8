/*
 * filevol.c - the cache of file volumes shared by the directory and the
 * Gluster back ends (filevol.h says what it keeps and why), and the ops
 * of their volumes that do not depend on where the file is.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pools/filevol.h"
#include "pools/util.h"

/* A cached entry younger than this (mtime vs. the time of its stat) is
 * re-read: mtime comes from a coarse clock. */
#define RACY_NS (100 * 1000 * 1000LL)

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

int pool_file_vol(Pool *p, const char *name, const char *path,
                  const char *type, const struct stat *st, VolInfo *v,
                  Error *err)
{
    vol_info_clear(v);
    v->pool = strdup(p->def.name);
    v->name = strdup(name);
    v->path = strdup(path);
    if (!v->path || !v->pool || !v->name) {
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
    v->key = strdup(path);
    v->type = type;
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

void pool_file_vol_remember(Pool *p, const char *name, const char *format,
                            const char *secret)
{
    json_t *e = json_pack("{s:s, s:b, s:b}", "fmt", format, "sticky", 1,
                          "racy", 1);
    if (e && secret) {
        json_object_set_new(e, "secret", json_string(secret));
    }
    json_object_set_new(vols_cache(p), name, e);
    p->cache_dirty = true;
}

void pool_file_vol_forget(Pool *p, const char *name)
{
    json_object_del(vols_cache(p), name);
    p->cache_dirty = true;
}

void pool_file_vols_prune(Pool *p, json_t *seen)
{
    json_t *vols = vols_cache(p);
    const char *key;
    json_t *val, *tmp;
    json_object_foreach_safe(vols, tmp, key, val) {
        if (!json_object_get(seen, key)) {
            json_object_del(vols, key);
            p->cache_dirty = true;
        }
    }
}

int pool_file_vol_room(const Pool *p, const VolCreateArgs *a, Error *err)
{
    if (a->has_allocation && a->allocation > p->available) {
        return error_setf(err, ENOSPC, "not enough space in pool '%s' for "
                          "volume '%s': %llu bytes wanted, %llu available",
                          p->def.name, a->name,
                          (unsigned long long)a->allocation,
                          (unsigned long long)p->available);
    }
    return 0;
}

int pool_file_vol_resize(Pool *p, const VolInfo *v, uint64_t capacity,
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

int pool_file_vol_open_spec(Pool *p, const VolInfo *v, bool raw_bytes,
                            VolOpenSpec *spec, Error *err)
{
    (void)p;
    int ret = pool_vol_spec_init(spec, strdup(v->path), v, raw_bytes, err);
    if (ret == 0) {
        pool_vol_spec_luks_key(spec, v, raw_bytes);
    }
    return ret;
}

int pool_file_vol_changed(Pool *p, const VolInfo *v, const char *format,
                          Error *err)
{
    (void)err;
    if (!format) {
        pool_file_vol_forget(p, v->name);
    } else {
        pool_file_vol_remember(p, v->name, format, NULL);
    }
    return 0;
}
