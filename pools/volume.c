/*
 * volume.c - volumes: listing with the operation markers applied,
 * virsh's lookups, creation (empty, or with content copied through the
 * block layer), deletion and resizing.
 *
 * Invariants:
 *  - a volume whose creation is running or was killed is never listed
 *    or opened; a killed creation's leftovers are removed by the next
 *    command that refreshes the pool (its marker is no longer flocked);
 *  - a volume being deleted, resized, wiped or written is opened for
 *    writing through the block layer first, so QEMU or another imgtool
 *    that has it open makes the operation fail before anything changes;
 *  - a volume another volume of the pool uses as its backing file is not
 *    deleted.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/job/copy.h"
#include "pools/core.h"
#include "pools/util.h"

void vol_info_clear(VolInfo *v)
{
    free(v->pool);
    free(v->name);
    free(v->key);
    free(v->path);
    free(v->format);
    free(v->backing_path);
    free(v->backing_format);
    free(v->secret);
    free(v->compat);
    free(v->unusable);
    for (size_t i = 0; i < v->nextents; i++) {
        free(v->extents[i].device);
    }
    free(v->extents);
    memset(v, 0, sizeof(*v));
    v->mode = v->uid = v->gid = -1;
}

void vol_info_list_free(VolInfo *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        vol_info_clear(&v[i]);
    }
    free(v);
}

static int dup_field(char **dst, const char *src)
{
    *dst = src ? strdup(src) : NULL;
    return (src && !*dst) ? -ENOMEM : 0;
}

int vol_info_copy(VolInfo *d, const VolInfo *s)
{
    *d = *s;
    d->pool = d->name = d->key = d->path = d->format = NULL;
    d->backing_path = d->backing_format = d->secret = d->compat = NULL;
    d->unusable = NULL;
    d->extents = NULL;
    d->nextents = 0;
    int ret = dup_field(&d->pool, s->pool) | dup_field(&d->name, s->name) |
              dup_field(&d->key, s->key) | dup_field(&d->path, s->path) |
              dup_field(&d->format, s->format) |
              dup_field(&d->backing_path, s->backing_path) |
              dup_field(&d->backing_format, s->backing_format) |
              dup_field(&d->secret, s->secret) |
              dup_field(&d->compat, s->compat) |
              dup_field(&d->unusable, s->unusable);
    if (ret == 0 && s->nextents) {
        d->extents = calloc(s->nextents, sizeof(*d->extents));
        if (!d->extents) {
            ret = -ENOMEM;
        }
        for (size_t i = 0; d->extents && i < s->nextents; i++) {
            d->extents[i] = s->extents[i];
            ret |= dup_field(&d->extents[i].device, s->extents[i].device);
            d->nextents = i + 1;
        }
    }
    if (ret) {
        vol_info_clear(d);
        return -ENOMEM;
    }
    return 0;
}

static int cmp_vol(const void *a, const void *b)
{
    return strcmp(((const VolInfo *)a)->name, ((const VolInfo *)b)->name);
}

static int vol_not_found(Error *err, const char *what, const char *vol)
{
    return error_setf(err, ENOENT, "Storage volume not found: no storage "
                      "vol with matching %s '%s'", what, vol);
}

static void drop_vol(Pool *p, size_t i)
{
    vol_info_clear(&p->vols[i]);
    memmove(&p->vols[i], &p->vols[i + 1],
            (p->nvols - i - 1) * sizeof(*p->vols));
    p->nvols--;
}

static ssize_t find_vol(Pool *p, const char *name)
{
    for (size_t i = 0; i < p->nvols; i++) {
        if (strcmp(p->vols[i].name, name) == 0) {
            return (ssize_t)i;
        }
    }
    return -1;
}

/* Removes what a killed creation left of `name` (v: the volume as the
 * back end sees it, or NULL when there is none). */
static void cleanup_creation(Pool *p, const char *name, const VolInfo *v)
{
    Error ignored = { 0 };
    if (v) {
        p->be->vol_delete(p, v, &ignored);
    }
    store_op_clear(p->store, p->def.name, name);
}

int pool_refresh_locked(Pool *p, Error *err)
{
    vol_info_list_free(p->vols, p->nvols);
    p->vols = NULL;
    p->nvols = 0;
    int ret = p->be->refresh_sizes(p, err);
    if (ret == 0) {
        ret = p->be->refresh(p, err);
    }
    if (ret < 0) {
        return ret;
    }
    char **names;
    size_t n;
    if (store_op_names(p->store, p->def.name, &names, &n) < 0) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        char op[16];
        OpStatus st = store_op_status(p->store, p->def.name, names[i], op);
        ssize_t k = find_vol(p, names[i]);
        if (strcmp(op, "wipe") != 0) {
            if (st == OP_INTERRUPTED) {
                cleanup_creation(p, names[i], k >= 0 ? &p->vols[k] : NULL);
            }
            if (k >= 0 && st != OP_NONE) {
                drop_vol(p, (size_t)k);
            }
        } else if (st == OP_INTERRUPTED) {
            if (k >= 0) {
                p->vols[k].state = VOL_STATE_WIPE_INTERRUPTED;
            } else {
                store_op_clear(p->store, p->def.name, names[i]);
            }
        }
    }
    store_names_free(names, n);
    if (p->nvols) {
        qsort(p->vols, p->nvols, sizeof(*p->vols), cmp_vol);
    }
    p->refreshed = true;
    return 0;
}

int pool_lookup_locked(Pool *p, const char *name, VolInfo *out, Error *err)
{
    memset(out, 0, sizeof(*out));
    Error nerr = { 0 };
    if (pool_check_name("volume", name, &nerr) < 0) {
        return vol_not_found(err, "name", name);
    }
    char op[16];
    OpStatus st = store_op_status(p->store, p->def.name, name, op);
    bool wipe = strcmp(op, "wipe") == 0;
    if (st == OP_RUNNING && !wipe) {
        return vol_not_found(err, "name", name);
    }
    int ret = p->be->vol_lookup(p, name, out, err);
    if (st == OP_INTERRUPTED && !wipe) {
        cleanup_creation(p, name, ret == 0 ? out : NULL);
        if (ret == 0) {
            vol_info_clear(out);
        }
        error_clear(err);
        return vol_not_found(err, "name", name);
    }
    if (ret == -ENOENT) {
        error_clear(err);
        if (st == OP_INTERRUPTED) {
            store_op_clear(p->store, p->def.name, name);
        }
        return vol_not_found(err, "name", name);
    }
    if (ret == 0 && st == OP_INTERRUPTED) {
        out->state = VOL_STATE_WIPE_INTERRUPTED;
    }
    return ret;
}

static char *parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? strndup(path, (size_t)(slash - path)) : NULL;
}

/* In pool p (locked, active): the volume whose path or key is vol. */
static int match_key_or_path(Pool *p, const char *vol, bool full,
                             VolInfo *out, Error *err)
{
    char *dir = parent_dir(vol);
    bool here = dir && p->def.target_path &&
                strcmp(dir, p->def.target_path) == 0;
    free(dir);
    if (here && pool_lookup_locked(p, strrchr(vol, '/') + 1, out, err) == 0) {
        return 0;
    }
    error_clear(err);
    if (!full) {
        return -ENOENT;
    }
    int ret = p->refreshed ? 0 : pool_refresh_locked(p, err);
    if (ret < 0) {
        return ret;
    }
    for (size_t i = 0; i < p->nvols; i++) {
        if (strcmp(p->vols[i].key, vol) == 0 ||
            strcmp(p->vols[i].path, vol) == 0) {
            return vol_info_copy(out, &p->vols[i]) < 0
                       ? error_setf(err, ENOMEM, "out of memory") : 0;
        }
    }
    return -ENOENT;
}

int pool_vol_resolve(PoolStore *s, const char *pool, const char *vol,
                     Pool **out, VolInfo *v, Error *err)
{
    *out = NULL;
    memset(v, 0, sizeof(*v));
    if (!vol || !*vol) {
        return error_setf(err, EINVAL, "no volume name given");
    }
    Pool *p = NULL;
    int ret;
    if (pool) {
        ret = pool_open(s, pool, &p, err);
        if (ret == 0) {
            ret = pool_require_active(p, err);
        }
        if (ret == 0) {
            ret = pool_lookup_locked(p, vol, v, err);
            if (ret == 0) {
                *out = p;
                return 0;
            }
        }
        pool_close(p);
        if (ret != -ENOENT) {
            return ret;
        }
        error_clear(err);
    }
    /* By key or path, in every active pool: first the cheap path match,
     * then full refreshes (an LV's key is its UUID). */
    char **names;
    size_t n;
    ret = store_pool_names(s, &names, &n, err);
    if (ret < 0) {
        return ret;
    }
    ret = -ENOENT;
    for (int pass = 0; pass < 2 && ret == -ENOENT; pass++) {
        for (size_t i = 0; i < n && ret == -ENOENT; i++) {
            Error perr = { 0 };
            if (pool_open(s, names[i], &p, &perr) < 0) {
                continue;
            }
            if (p->active) {
                ret = match_key_or_path(p, vol, pass == 1, v, err);
            }
            if (ret == 0) {
                *out = p;
            } else {
                pool_close(p);
            }
        }
    }
    store_names_free(names, n);
    if (ret == -ENOENT) {
        error_clear(err);
        return pool ? vol_not_found(err, "name", vol)
                    : vol_not_found(err, "name, key or path", vol);
    }
    if (ret == 0 && pool && strcmp((*out)->def.name, pool) != 0 &&
        strcmp((*out)->def.uuid, pool) != 0) {
        ret = error_setf(err, EINVAL, "Requested volume '%s' is not in pool "
                         "'%s'", vol, pool);
        pool_close(*out);
        *out = NULL;
        vol_info_clear(v);
    }
    return ret;
}

int pool_vol_list(PoolStore *s, const char *pool, VolInfo **out, size_t *n,
                  Error *err)
{
    *out = NULL;
    *n = 0;
    Pool *p;
    int ret = pool_open(s, pool, &p, err);
    if (ret < 0) {
        return ret;
    }
    ret = pool_require_active(p, err);
    if (ret == 0) {
        ret = pool_refresh_locked(p, err);
    }
    if (ret == 0) {
        *out = p->vols;
        *n = p->nvols;
        p->vols = NULL;
        p->nvols = 0;
    }
    pool_close(p);
    return ret;
}

int pool_vol_find(PoolStore *s, const char *pool, const char *vol,
                  VolInfo *out, Error *err)
{
    Pool *p;
    int ret = pool_vol_resolve(s, pool, vol, &p, out, err);
    if (ret == 0) {
        pool_close(p);
    }
    return ret;
}

int pool_vol_dumpxml(PoolStore *s, const char *pool, const char *vol,
                     char **xml, Error *err)
{
    VolInfo v;
    int ret = pool_vol_find(s, pool, vol, &v, err);
    if (ret < 0) {
        return ret;
    }
    *xml = pool_vol_format_xml(&v);
    vol_info_clear(&v);
    return *xml ? 0 : error_setf(err, ENOMEM, "out of memory");
}

int pool_vol_open_node(Pool *p, const VolInfo *v, bool raw_bytes, int flags,
                       BlockNode **out, Error *err)
{
    *out = NULL;
    VolOpenSpec spec = { 0 };
    int ret = p->be->vol_open_spec(p, v, raw_bytes, &spec, err);
    if (ret < 0) {
        return ret;
    }
    *out = raw_bytes ? block_open_protocol(spec.filename, &spec.opts, flags,
                                           err)
                     : block_open(spec.filename, spec.format, &spec.opts,
                                  flags, err);
    vol_open_spec_clear(&spec);
    if (!*out) {
        return -(err->code ? err->code : EIO);
    }
    return 0;
}

/* Opens v for writing to prove nobody else uses it. */
static int lock_volume(Pool *p, const VolInfo *v, BlockNode **node,
                       Error *err)
{
    Error lerr = { 0 };
    int ret = pool_vol_open_node(p, v, true, BLOCK_O_RDWR, node, &lerr);
    if (ret < 0) {
        return error_setf(err, -ret, "volume '%s' cannot be used: %s",
                          v->name, lerr.msg);
    }
    return 0;
}

static int busy_check(Pool *p, const VolInfo *v, Error *err)
{
    if (store_op_status(p->store, p->def.name, v->name, NULL) ==
        OP_RUNNING) {
        return error_setf(err, EBUSY, "volume '%s' is busy: another command "
                          "is working on it", v->name);
    }
    return 0;
}

int pool_vol_create_begin(Pool *p, const VolCreateArgs *a, OpMarker *m,
                          VolInfo *out, Error *err)
{
    m->fd = -1;
    m->path = NULL;
    int ret = pool_require_active(p, err);
    if (ret == 0) {
        ret = pool_check_name("volume", a->name, err);
    }
    if (ret == 0) {
        ret = p->be->vol_name_check(a->name, err);
    }
    if (ret < 0) {
        return ret;
    }
    if (a->capacity > INT64_MAX) {
        return error_setf(err, EINVAL, "volume capacity %llu is too large",
                          (unsigned long long)a->capacity);
    }
    const char *fmt = a->format ? a->format : "raw";
    if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2") && strcmp(fmt, "luks")) {
        return error_setf(err, ENOTSUP, "unsupported volume format '%s' "
                          "(imgtool creates raw, qcow2 and luks)", fmt);
    }
    VolInfo old;
    ret = pool_lookup_locked(p, a->name, &old, err);
    if (ret == 0) {
        vol_info_clear(&old);
        return error_setf(err, EEXIST, "storage volume name '%s' already in "
                          "use.", a->name);
    }
    if (ret != -ENOENT) {
        return ret;
    }
    error_clear(err);
    ret = store_op_begin(p->store, p->def.name, a->name, "create", m, err);
    if (ret < 0) {
        return ret;
    }
    ret = p->be->vol_create(p, a, out, err);
    if (ret < 0) {
        store_op_end(m);
    }
    return ret;
}

/* The backing volume of a new volume: a volume (name in this pool, key
 * or path) or an existing image path.  Resolved before the target pool
 * is locked (pools are never locked two at a time). */
static int resolve_backing(PoolStore *s, const char *pool,
                           const VolCreateArgs *a, char **path, char **fmt,
                           Error *err)
{
    *path = *fmt = NULL;
    if (!a->backing_vol) {
        return 0;
    }
    VolInfo b;
    Error lerr = { 0 };
    int ret = pool_vol_find(s, pool, a->backing_vol, &b, &lerr);
    if (ret == -ENOENT) {
        ret = pool_vol_find(s, NULL, a->backing_vol, &b, &lerr);
    }
    if (ret == 0) {
        *path = strdup(b.path);
        *fmt = strdup(a->backing_format ? a->backing_format : b.format);
        vol_info_clear(&b);
    } else if (ret == -ENOENT && a->backing_vol[0] == '/' &&
               a->backing_format) {
        /* Any image, as libvirt's <backingStore> allows; its format must
         * be given: probing one would trust its content. */
        *path = strdup(a->backing_vol);
        *fmt = strdup(a->backing_format);
    } else {
        return error_setf(err, lerr.code ? lerr.code : ENOENT, "backing "
                          "volume '%s': %s", a->backing_vol,
                          ret == -ENOENT && a->backing_vol[0] == '/'
                              ? "not a volume; give its format with "
                                "--backing-vol-format"
                              : lerr.msg);
    }
    if (!*path || !*fmt) {
        free(*path);
        free(*fmt);
        *path = *fmt = NULL;
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

static bool same_backing(BlockNode *src, BlockNode *dst)
{
    BlockNode *sb = block_backing(src), *db = block_backing(dst);
    if (!sb || !db) {
        return false;
    }
    char *a = block_chain_identity(block_node_filename(sb));
    char *b = block_chain_identity(block_node_filename(db));
    bool same = a && b && strcmp(a, b) == 0;
    free(a);
    free(b);
    return same;
}

/* Copies the content of src (a volume opened read-only) into the new
 * volume v of p; p is unlocked meanwhile (the marker holds the name). */
static int fill_volume(Pool *p, const VolInfo *v, BlockNode *src,
                       BlockProgressFn *progress, void *opaque, Error *err)
{
    BlockNode *dst;
    Error oerr = { 0 };
    int ret = pool_vol_open_node(p, v, false, BLOCK_O_RDWR, &dst, &oerr);
    if (ret < 0) {
        return error_setf(err, -ret, "%s", oerr.msg);
    }
    int64_t len = block_get_length(src);
    int64_t dlen = block_get_length(dst);
    if (len < 0 || dlen < 0) {
        block_close(dst);
        return error_setf(err, EIO, "cannot get the size of a volume");
    }
    CopyJob job;
    copy_job_init(&job);
    job.src = &src;
    job.nsrc = 1;
    job.dst = dst;
    job.length = (uint64_t)(len < dlen ? len : dlen);
    /* A copy over the same backing file copies only its own layer. */
    if (same_backing(src, dst)) {
        job.src_base = block_backing(src);
    } else {
        job.dst_is_zero = block_is_zero_fast(dst, 0, job.length);
    }
    job.flush = true;
    job.progress = progress;
    job.progress_opaque = opaque;
    ret = copy_run(&job, err);
    block_close(dst);
    return ret;
}

static int create_with_content(PoolStore *s, const char *pool,
                               const VolCreateArgs *a, Pool *srcp,
                               const VolInfo *srcv, BlockProgressFn *progress,
                               void *opaque, VolInfo *out, Error *err)
{
    char *bpath = NULL, *bfmt = NULL;
    VolCreateArgs b = *a;
    int ret = 0;
    BlockNode *src = NULL;
    if (srcp) {
        /* Read-only with a reader lock: nobody writes it while we copy. */
        ret = pool_vol_open_node(srcp, srcv, false, 0, &src, err);
        pool_close(srcp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = resolve_backing(s, pool, &b, &bpath, &bfmt, err);
    b.backing_vol = bpath;
    b.backing_format = bfmt;
    Pool *p = NULL;
    if (ret == 0) {
        ret = pool_open(s, pool, &p, err);
    }
    OpMarker m = { -1, NULL };
    VolInfo v = { 0 };
    if (ret == 0) {
        ret = pool_vol_create_begin(p, &b, &m, &v, err);
    }
    if (ret == 0 && src) {
        pool_unlock(p);
        ret = fill_volume(p, &v, src, progress, opaque, err);
        Error rerr = { 0 };
        int r2 = pool_relock(p, &rerr);
        if (ret == 0 && r2 < 0) {
            ret = error_setf(err, rerr.code, "%s", rerr.msg);
        }
        if (ret < 0 && p->lock_fd >= 0) {
            Error ignored = { 0 };
            p->be->vol_delete(p, &v, &ignored);
        }
    }
    if (m.path) {
        store_op_end(&m);
    }
    if (ret == 0 && out) {
        vol_info_clear(&v);
        ret = pool_lookup_locked(p, b.name, out, err);
    }
    vol_info_clear(&v);
    block_close(src);
    pool_close(p);
    free(bpath);
    free(bfmt);
    return ret;
}

int pool_vol_create(PoolStore *s, const char *pool, const VolCreateArgs *a,
                    BlockProgressFn *progress, void *opaque, VolInfo *out,
                    Error *err)
{
    return create_with_content(s, pool, a, NULL, NULL, progress, opaque, out,
                               err);
}

int pool_vol_create_from(PoolStore *s, const char *pool,
                         const VolCreateArgs *a, const char *inputpool,
                         const char *from, BlockProgressFn *progress,
                         void *opaque, VolInfo *out, Error *err)
{
    Pool *sp;
    VolInfo sv;
    int ret = pool_vol_resolve(s, inputpool, from, &sp, &sv, err);
    if (ret < 0) {
        return ret;
    }
    VolCreateArgs b = *a;
    /* libvirt: a copy is never smaller than its source */
    if (b.capacity < sv.capacity) {
        b.capacity = sv.capacity;
    }
    ret = sv.state == VOL_STATE_OK ? 0
        : error_setf(err, EINVAL, "volume '%s' was left half wiped by an "
                     "interrupted vol-wipe", sv.name);
    if (ret == 0) {
        ret = create_with_content(s, pool, &b, sp, &sv, progress, opaque,
                                  out, err);
    } else {
        pool_close(sp);
    }
    vol_info_clear(&sv);
    return ret;
}

int pool_vol_clone(PoolStore *s, const char *pool, const char *vol,
                   const char *newname, BlockProgressFn *progress,
                   void *opaque, VolInfo *out, Error *err)
{
    Pool *sp;
    VolInfo sv;
    int ret = pool_vol_resolve(s, pool, vol, &sp, &sv, err);
    if (ret < 0) {
        return ret;
    }
    char *target_pool = strdup(sp->def.name);
    VolCreateArgs a = {
        .name = (char *)newname,
        .capacity = sv.capacity,
        .format = sv.format,
        .secret = sv.secret,
        .cluster_size = sv.cluster_size,
        .compat = sv.compat,
        .lazy_refcounts = sv.lazy_refcounts,
        .mode = -1,
        /* a clone of an overlay is an overlay on the same backing file */
        .backing_vol = sv.backing_path,
        .backing_format = sv.backing_format,
    };
    if (!target_pool) {
        ret = error_setf(err, ENOMEM, "out of memory");
    } else if (sv.state != VOL_STATE_OK) {
        ret = error_setf(err, EINVAL, "volume '%s' was left half wiped by "
                         "an interrupted vol-wipe", sv.name);
    }
    if (ret == 0) {
        ret = create_with_content(s, target_pool, &a, sp, &sv, progress,
                                  opaque, out, err);
    } else {
        pool_close(sp);
    }
    free(target_pool);
    vol_info_clear(&sv);
    return ret;
}

static int backing_users(Pool *p, const VolInfo *v, Error *err)
{
    int ret = pool_refresh_locked(p, err);
    for (size_t i = 0; ret == 0 && i < p->nvols; i++) {
        const char *b = p->vols[i].backing_path;
        if (b && strcmp(b, v->path) == 0) {
            ret = error_setf(err, EBUSY, "volume '%s' is the backing file of "
                             "volume '%s'", v->name, p->vols[i].name);
        }
    }
    return ret;
}

int pool_vol_delete(PoolStore *s, const char *pool, const char *vol,
                    Error *err)
{
    Pool *p;
    VolInfo v;
    int ret = pool_vol_resolve(s, pool, vol, &p, &v, err);
    if (ret < 0) {
        return ret;
    }
    BlockNode *lock = NULL;
    ret = busy_check(p, &v, err);
    if (ret == 0) {
        ret = backing_users(p, &v, err);
    }
    if (ret == 0) {
        ret = lock_volume(p, &v, &lock, err);
    }
    if (ret == 0) {
        ret = p->be->vol_delete(p, &v, err);
    }
    if (ret == 0) {
        store_op_clear(p->store, p->def.name, v.name);
    }
    block_close(lock);
    vol_info_clear(&v);
    pool_close(p);
    return ret;
}

static int new_capacity(const VolInfo *v, uint64_t cap, unsigned flags,
                        uint64_t *out, Error *err)
{
    if (!(flags & VOL_RESIZE_DELTA)) {
        *out = cap;
    } else if (flags & VOL_RESIZE_SHRINK) {
        *out = v->capacity - (cap < v->capacity ? cap : v->capacity);
    } else if (cap > INT64_MAX - v->capacity) {
        return error_setf(err, EINVAL, "new capacity is too large");
    } else {
        *out = v->capacity + cap;
    }
    if (*out > INT64_MAX) {
        return error_setf(err, EINVAL, "new capacity is too large");
    }
    if (*out < v->capacity && !(flags & VOL_RESIZE_SHRINK)) {
        return error_setf(err, EINVAL, "Can't shrink capacity below current "
                          "capacity unless shrink flag explicitly "
                          "specified");
    }
    if (*out == 0) {
        return error_setf(err, EINVAL, "Can't shrink capacity to zero");
    }
    return 0;
}

int pool_vol_resize(PoolStore *s, const char *pool, const char *vol,
                    uint64_t capacity, unsigned flags, Error *err)
{
    Pool *p;
    VolInfo v;
    int ret = pool_vol_resolve(s, pool, vol, &p, &v, err);
    if (ret < 0) {
        return ret;
    }
    uint64_t cap = 0;
    ret = busy_check(p, &v, err);
    if (ret == 0 && v.state != VOL_STATE_OK) {
        ret = error_setf(err, EINVAL, "volume '%s' was left half wiped by an "
                         "interrupted vol-wipe; wipe it again or delete it",
                         v.name);
    }
    if (ret == 0) {
        ret = new_capacity(&v, capacity, flags, &cap, err);
    }
    if (ret == 0) {
        ret = p->be->refresh_sizes(p, err);
    }
    if (ret == 0 && cap > v.capacity && cap - v.capacity > p->available) {
        ret = error_setf(err, ENOSPC, "Not enough space left in storage "
                         "pool '%s': %llu bytes more wanted, %llu "
                         "available", p->def.name,
                         (unsigned long long)(cap - v.capacity),
                         (unsigned long long)p->available);
    }
    if (ret == 0 && cap != v.capacity) {
        ret = p->be->vol_resize(p, &v, cap, flags & VOL_RESIZE_ALLOCATE,
                                err);
    }
    vol_info_clear(&v);
    pool_close(p);
    return ret;
}

void vol_open_spec_clear(VolOpenSpec *s)
{
    free(s->filename);
    free(s->format);
    kvlist_free(&s->opts);
    memset(s, 0, sizeof(*s));
}
