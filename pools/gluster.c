/*
 * gluster.c - Gluster pools: the files in one directory of a Gluster
 * volume as volumes (raw, qcow2 or luks), as libvirt's gluster pool has
 * them, with every volume command where libvirt's can only delete:
 * create (with backing volumes), clone, delete, resize, upload,
 * download, wipe.
 *
 * Definition: <source><host name=H [port=P]/> <name>VOLUME</name>
 * [<dir path='/D'/>]</source>, no target (as libvirt).  A volume's path,
 * which is also its key, is gluster://H[:P]/VOLUME/D/NAME: what QEMU and
 * every imgtool command open.  Files are reached through gfapi on the
 * process's connection to the volume: the gluster driver module's
 * GlusterVolOps (block/protocol/gluster.h), so a command that only
 * defines or lists pools never loads the module or gfapi; the images on
 * them through the block layer, like any gluster:// image.
 *
 * What is known about each file is cached by its stat fields, and the
 * format of a volume imgtool made is never probed again: the rules of
 * file volumes (filevol.h), the directory pool's too.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/protocol/gluster.h"
#include "pools/filevol.h"
#include "pools/util.h"

static int gluster_def_check(PoolDef *d, Error *err)
{
    if (d->nhosts < 1) {
        return error_setf(err, EINVAL, "a gluster pool needs a source host "
                          "(--source-host)");
    }
    if (!d->source_name || !*d->source_name || strchr(d->source_name, '/')) {
        return error_setf(err, EINVAL, "a gluster pool needs the Gluster "
                          "volume's name as its source name "
                          "(--source-name)");
    }
    if (d->source_dir && d->source_dir[0] != '/') {
        return error_setf(err, EINVAL, "gluster pool directory '%s' is not "
                          "absolute", d->source_dir);
    }
    return 0;
}

static int gluster_vol_name_check(const char *name, Error *err)
{
    (void)name;
    (void)err;
    return 0;
}

/* gluster://host[:port]/volume/dir/ followed by name ("" for the
 * directory itself). */
static char *url_of(const Pool *p, const char *name)
{
    const PoolHost *h = &p->def.hosts[0];
    bool v6 = strchr(h->name, ':') != NULL;
    char port[16] = "";
    if (h->port) {
        snprintf(port, sizeof(port), ":%d", h->port);
    }
    const char *dir = p->def.source_dir ? p->def.source_dir : "/";
    while (*dir == '/') {
        dir++;
    }
    size_t dl = strlen(dir);
    while (dl && dir[dl - 1] == '/') {
        dl--;
    }
    return pool_strfmt("gluster://%s%s%s%s/%s/%.*s%s%s", v6 ? "[" : "",
                       h->name, v6 ? "]" : "", port, p->def.source_name,
                       (int)dl, dir, dl ? "/" : "", name);
}

/* The Gluster module's operations and the URL of name in the pool (""
 * for its directory), or a negative errno in err: what every operation
 * below starts with.  The caller frees *url. */
static int ops_and_url(const Pool *p, const char *name,
                       const GlusterVolOps **g, char **url, Error *err)
{
    int ret = gluster_vol_ops(g, err);
    if (ret < 0) {
        return ret;
    }
    *url = url_of(p, name);
    return *url ? 0 : error_setf(err, ENOMEM, "out of memory");
}

static bool is_root(const Pool *p)
{
    const char *d = p->def.source_dir;
    return !d || strspn(d, "/") == strlen(d);
}

static int gluster_build(Pool *p, unsigned flags, Error *err)
{
    (void)flags;
    if (is_root(p)) {
        return 0;
    }
    const GlusterVolOps *g;
    char *url;
    int ret = ops_and_url(p, "", &g, &url, err);
    if (ret < 0) {
        return ret;
    }
    ret = g->mkdir_p(url, 0755, err);
    free(url);
    return ret;
}

static int gluster_start(Pool *p, Error *err)
{
    const GlusterVolOps *g;
    char *url;
    int ret = ops_and_url(p, "", &g, &url, err);
    if (ret < 0) {
        return ret;
    }
    struct stat st;
    ret = g->stat(url, &st, err);
    if (ret == -ENOENT) {
        ret = error_setf(err, ENOENT, "cannot open directory '%s': %s", url,
                         strerror(ENOENT));
    } else if (ret == 0 && !S_ISDIR(st.st_mode)) {
        ret = error_setf(err, ENOTDIR, "cannot open directory '%s': %s",
                         url, strerror(ENOTDIR));
    }
    free(url);
    return ret;
}

static int gluster_stop(Pool *p, Error *err)
{
    (void)p;
    (void)err;
    return 0;
}

static int gluster_delete(Pool *p, Error *err)
{
    if (is_root(p)) {
        return error_setf(err, ENOTSUP, "the root of Gluster volume '%s' is "
                          "not removed with its pool", p->def.source_name);
    }
    const GlusterVolOps *g;
    char *url;
    int ret = ops_and_url(p, "", &g, &url, err);
    if (ret < 0) {
        return ret;
    }
    ret = g->rmdir(url, err);
    free(url);
    return ret;
}

static int gluster_refresh_sizes(Pool *p, Error *err)
{
    const GlusterVolOps *g;
    char *url;
    int ret = ops_and_url(p, "", &g, &url, err);
    if (ret < 0) {
        return ret;
    }
    struct statvfs sv;
    ret = g->statvfs(url, &sv, err);
    free(url);
    if (ret < 0) {
        return ret;
    }
    p->capacity = (uint64_t)sv.f_frsize * sv.f_blocks;
    p->available = (uint64_t)sv.f_frsize * sv.f_bavail;
    p->allocation = (uint64_t)sv.f_frsize * (sv.f_blocks - sv.f_bfree);
    return 0;
}

static int file_vol(Pool *p, const char *name, const struct stat *st,
                    VolInfo *v, Error *err)
{
    char *url = url_of(p, name);
    int ret = url ? pool_file_vol(p, name, url, "network", st, v, err)
                  : error_setf(err, ENOMEM, "out of memory");
    free(url);
    return ret;
}

static int gluster_refresh(Pool *p, Error *err)
{
    const GlusterVolOps *g;
    char *dir;
    int n = ops_and_url(p, "", &g, &dir, err);
    if (n < 0) {
        return n;
    }
    GlusterDirEntry *ents;
    n = g->list_dir(dir, &ents, err);
    free(dir);
    if (n < 0) {
        return n;
    }
    json_t *seen = json_object();
    int ret = seen ? 0 : error_setf(err, ENOMEM, "out of memory");
    p->vols = calloc(n ? (size_t)n : 1, sizeof(*p->vols));
    if (!p->vols) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    for (int i = 0; ret == 0 && i < n; i++) {
        if (!S_ISREG(ents[i].st.st_mode)) {
            continue;
        }
        VolInfo *v = &p->vols[p->nvols];
        Error verr = { 0 };
        if (file_vol(p, ents[i].name, &ents[i].st, v, &verr) < 0) {
            /* a file that cannot be read is not a volume */
            vol_info_clear(v);
            if (verr.code == ENOMEM) {
                ret = error_setf(err, ENOMEM, "out of memory");
            }
            continue;
        }
        p->nvols++;
        json_object_set_new(seen, ents[i].name, json_true());
    }
    if (ret == 0) {
        pool_file_vols_prune(p, seen);
    }
    json_decref(seen);
    g->dir_entries_free(ents, n);
    return ret;
}

static int gluster_vol_lookup(Pool *p, const char *name, VolInfo *out,
                              Error *err)
{
    const GlusterVolOps *g;
    char *url;
    int ret = ops_and_url(p, name, &g, &url, err);
    if (ret < 0) {
        return ret;
    }
    struct stat st;
    Error serr = { 0 };
    ret = g->stat(url, &st, &serr);
    free(url);
    if (ret == -ENOENT || (ret == 0 && !S_ISREG(st.st_mode))) {
        return -ENOENT;
    }
    if (ret < 0) {
        return error_setf(err, -ret, "%s", serr.msg);
    }
    return file_vol(p, name, &st, out, err);
}

static int gluster_vol_create(Pool *p, const VolCreateArgs *a, VolInfo *out,
                              Error *err)
{
    const GlusterVolOps *g;
    char *url;
    int ret = ops_and_url(p, a->name, &g, &url, err);
    if (ret < 0) {
        return ret;
    }
    struct stat st;
    Error serr = { 0 };
    ret = g->stat(url, &st, &serr);
    if (ret == 0) {
        ret = error_setf(err, EEXIST, "storage volume name '%s' already in "
                         "use.", a->name);
    } else if (ret == -ENOENT) {
        ret = gluster_refresh_sizes(p, err);
    } else {
        ret = error_setf(err, -ret, "%s", serr.msg);
    }
    if (ret == 0) {
        ret = pool_file_vol_room(p, a, err);
    }
    if (ret == 0) {
        ret = pool_create_image(p, url, a, a->backing_vol,
                                a->backing_format, true, err);
        Error ignored = { 0 };
        if (ret == 0) {
            ret = g->chmod(url, a->mode >= 0 ? a->mode : 0600, err);
        }
        if (ret < 0) {
            g->unlink(url, &ignored);
        }
    }
    if (ret == 0) {
        /* remembered, never probed (filevol.h) */
        pool_file_vol_remember(p, a->name, a->format ? a->format : "raw",
                               a->secret);
        ret = gluster_vol_lookup(p, a->name, out, err);
        if (ret == -ENOENT) {
            ret = error_setf(err, ENOENT, "volume '%s' vanished after it "
                             "was made", a->name);
        }
    }
    free(url);
    return ret;
}

static int gluster_vol_delete(Pool *p, const VolInfo *v, Error *err)
{
    const GlusterVolOps *g;
    char *url;
    int ret = ops_and_url(p, v->name, &g, &url, err);
    if (ret < 0) {
        return ret;
    }
    ret = g->unlink(url, err);
    free(url);
    if (ret == 0 || ret == -ENOENT) {
        pool_file_vol_forget(p, v->name);
        ret = 0;
    }
    return ret;
}

static char *gluster_vol_new_path(Pool *p, const char *name)
{
    return url_of(p, name);
}

const PoolBackend pool_backend_gluster = {
    .type = "gluster",
    .def_check = gluster_def_check,
    .vol_name_check = gluster_vol_name_check,
    .build = gluster_build,
    .start = gluster_start,
    .stop = gluster_stop,
    .delete = gluster_delete,
    .refresh_sizes = gluster_refresh_sizes,
    .refresh = gluster_refresh,
    .vol_lookup = gluster_vol_lookup,
    .vol_create = gluster_vol_create,
    .vol_delete = gluster_vol_delete,
    .vol_resize = pool_file_vol_resize,
    .vol_open_spec = pool_file_vol_open_spec,
    .vol_new_path = gluster_vol_new_path,
    .vol_changed = pool_file_vol_changed,
};
