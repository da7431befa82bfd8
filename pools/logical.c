/*
 * logical.c - the LVM pool back end: the pool is a volume group, its
 * volumes are logical volumes (raw, or a qcow2 or LUKS image inside the
 * LV), the volume key is the LV's UUID.  lvm2's commands do the work;
 * their JSON reports say what there is.
 *
 * On hosts without device-mapper (lvm_have_dm() false) LVs are never
 * activated: they are created with activation off and their data is
 * reached through their linear segments on the PVs, read from the VG's
 * metadata (block/linear.c); an LV that device-mapper has active
 * somewhere (lv_active in the report) is refused, since its data may be
 * changing under another kernel's mapping.  Where device-mapper exists
 * the pool activates the VG and opens /dev/VG/LV.  (Untested here:
 * these machines have no device-mapper.)
 *
 * What imgtool knows about an LV beyond LVM's own fields lives in LV
 * tags, in the VG metadata with the LV: imgtool_fmt_<format> (an LV
 * without one is raw, never probed) and imgtool_secret_<id> (the
 * --object secret of a LUKS volume).
 *
 * Not done: thin pools and thin volumes (they need device-mapper to be
 * usable at all, and cannot be tested here), backing volumes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pools/backend.h"
#include "pools/lvm.h"
#include "pools/util.h"

#define FMT_TAG "imgtool_fmt_"
#define SECRET_TAG "imgtool_secret_"

static const char *vg_of(const Pool *p)
{
    return p->def.source_name;
}

static int logical_def_check(PoolDef *d, Error *err)
{
    if (!d->source_name) {
        d->source_name = strdup(d->name);
    }
    if (!d->target_path) {
        d->target_path = pool_strfmt("/dev/%s", d->source_name ?
                                     d->source_name : "");
    }
    if (!d->source_name || !d->target_path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (d->source_format && strcmp(d->source_format, "lvm2") &&
        strcmp(d->source_format, "unknown")) {
        return error_setf(err, EINVAL, "unsupported pool source format "
                          "'%s' (logical pools are lvm2)", d->source_format);
    }
    for (const char *c = d->source_name; *c; c++) {
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789+_.-", *c) || d->source_name[0] == '-') {
            return error_setf(err, EINVAL, "'%s' is not a valid volume "
                              "group name", d->source_name);
        }
    }
    return 0;
}

/* lvm2's rules for LV names (and what its internal LVs use). */
static int logical_vol_name_check(const char *name, Error *err)
{
    static const char *const reserved[] = {
        "_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare",
        "_rimage", "_rmeta", "_tdata", "_tmeta", "_vorigin", "_vdata",
        NULL,
    };
    bool ok = strlen(name) <= 127 && name[0] != '-' &&
              strncmp(name, "snapshot", 8) && strncmp(name, "pvmove", 6);
    for (const char *c = name; ok && *c; c++) {
        ok = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789+_.-", *c) != NULL;
    }
    for (int i = 0; ok && reserved[i]; i++) {
        ok = strstr(name, reserved[i]) == NULL;
    }
    if (!ok) {
        return error_setf(err, EINVAL, "'%s' is not a valid logical volume "
                          "name (letters, digits, + _ . -)", name);
    }
    return 0;
}

static int check_devices(Pool *p, Error *err)
{
    if (p->def.ndevices == 0) {
        return error_setf(err, EINVAL, "no source devices: a logical pool "
                          "is built on <device path='...'/>");
    }
    for (size_t i = 0; i < p->def.ndevices; i++) {
        struct stat st;
        const char *d = p->def.source_devices[i];
        if (stat(d, &st) < 0) {
            return error_setf(err, errno, "cannot find source device '%s': "
                              "%s", d, strerror(errno));
        }
        if (!S_ISBLK(st.st_mode)) {
            return error_setf(err, EINVAL, "'%s' is not a block device", d);
        }
    }
    return 0;
}

static int logical_build(Pool *p, unsigned flags, Error *err)
{
    int ret = check_devices(p, err);
    for (size_t i = 0; ret == 0 && i < p->def.ndevices; i++) {
        const char *d = p->def.source_devices[i];
        if (flags & POOL_BUILD_OVERWRITE) {
            const char *wa[] = { "-a", d, NULL };
            int st;
            ret = lvm_run_prog("wipefs", wa, NULL, &st, err);
            continue;
        }
        /* As libvirt: without --overwrite a device that holds anything
         * (a file system, a PV, a partition table) is not touched. */
        const char *ba[] = { "-p", "-o", "value", "-s", "TYPE", d, NULL };
        char *out = NULL;
        int st;
        Error berr = { 0 };
        if (lvm_run_prog("blkid", ba, &out, &st, &berr) == 0 && out &&
            out[0] && out[0] != '\n') {
            out[strcspn(out, "\n")] = '\0';
            ret = error_setf(err, EEXIST, "device '%s' already holds a '%s' "
                             "signature (pool-build --overwrite wipes it)",
                             d, out);
        }
        free(out);
    }
    for (size_t i = 0; ret == 0 && i < p->def.ndevices; i++) {
        const char *pa[] = { "pvcreate", "-ff", "-y",
                             p->def.source_devices[i], NULL };
        ret = lvm_run(pa, NULL, err);
    }
    if (ret == 0) {
        const char **va = calloc(p->def.ndevices + 4, sizeof(*va));
        if (!va) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        size_t k = 0;
        va[k++] = "vgcreate";
        va[k++] = vg_of(p);
        for (size_t i = 0; i < p->def.ndevices; i++) {
            va[k++] = p->def.source_devices[i];
        }
        ret = lvm_run(va, NULL, err);
        free(va);
    }
    return ret;
}

static int vg_report(Pool *p, json_t **row, Error *err)
{
    const char *a[] = { "vgs", "--reportformat", "json", "--units", "b",
                        "--nosuffix", "-o",
                        "vg_name,vg_size,vg_free,vg_extent_size", vg_of(p),
                        NULL };
    json_t *rows = NULL;
    *row = NULL;
    int ret = lvm_report(a, "vg", &rows, err);
    if (ret == -ENOENT || (ret == 0 && json_array_size(rows) != 1)) {
        json_decref(rows);
        error_clear(err);
        return error_setf(err, ENOENT, "volume group '%s' not found",
                          vg_of(p));
    }
    if (ret == 0) {
        *row = json_incref(json_array_get(rows, 0));
        json_decref(rows);
    }
    return ret;
}

static uint64_t num(json_t *row, const char *k)
{
    const char *s = json_string_value(json_object_get(row, k));
    return s ? strtoull(s, NULL, 10) : 0;
}

static const char *str(json_t *row, const char *k)
{
    const char *s = json_string_value(json_object_get(row, k));
    return s ? s : "";
}

static int logical_start(Pool *p, Error *err)
{
    for (size_t i = 0; i < p->def.ndevices; i++) {
        struct stat st;
        if (stat(p->def.source_devices[i], &st) < 0) {
            return error_setf(err, errno, "cannot find source device '%s': "
                              "%s", p->def.source_devices[i],
                              strerror(errno));
        }
    }
    json_t *row;
    int ret = vg_report(p, &row, err);
    if (ret < 0) {
        return ret;
    }
    json_decref(row);
    if (lvm_have_dm()) {
        const char *a[] = { "vgchange", "-aay", vg_of(p), NULL };
        ret = lvm_run(a, NULL, err);
    }
    return ret;
}

static int logical_stop(Pool *p, Error *err)
{
    if (!lvm_have_dm()) {
        return 0;
    }
    const char *a[] = { "vgchange", "-aln", vg_of(p), NULL };
    return lvm_run(a, NULL, err);
}

static int logical_delete(Pool *p, Error *err)
{
    const char *a[] = { "vgremove", "-f", vg_of(p), NULL };
    int ret = lvm_run(a, NULL, err);
    if (ret == -ENOENT) {
        error_clear(err);
        ret = 0;
    }
    for (size_t i = 0; ret == 0 && i < p->def.ndevices; i++) {
        const char *b[] = { "pvremove", "-y", p->def.source_devices[i],
                            NULL };
        ret = lvm_run(b, NULL, err);
    }
    return ret;
}

static int logical_refresh_sizes(Pool *p, Error *err)
{
    json_t *row;
    int ret = vg_report(p, &row, err);
    if (ret == 0) {
        p->capacity = num(row, "vg_size");
        p->available = num(row, "vg_free");
        p->allocation = p->capacity - p->available;
        json_decref(row);
    }
    return ret;
}

/* pe_start of every PV of the VG: {"/dev/loop0": 1048576, ...}. */
static int pv_starts(Pool *p, json_t **out, Error *err)
{
    const char *a[] = { "pvs", "--reportformat", "json", "--units", "b",
                        "--nosuffix", "-o", "pv_name,pe_start,vg_name",
                        NULL };
    json_t *rows;
    int ret = lvm_report(a, "pv", &rows, err);
    if (ret < 0) {
        return ret;
    }
    *out = json_object();
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
        if (strcmp(str(r, "vg_name"), vg_of(p)) == 0) {
            json_object_set_new(*out, str(r, "pv_name"),
                                json_integer((json_int_t)num(r,
                                                             "pe_start")));
        }
    }
    json_decref(rows);
    return 0;
}

static bool has_tag_prefix(const char *tags, const char *prefix,
                           char *out, size_t len)
{
    size_t pl = strlen(prefix);
    for (const char *t = tags; t && *t;) {
        const char *e = strchr(t, ',');
        size_t l = e ? (size_t)(e - t) : strlen(t);
        if (l > pl && strncmp(t, prefix, pl) == 0) {
            snprintf(out, len, "%.*s", (int)(l - pl), t + pl);
            return true;
        }
        t = e ? e + 1 : NULL;
    }
    return false;
}

/* "linear:OFF+LEN@DEV;..." from the volume's extents. */
static char *linear_name(const VolInfo *v)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        return NULL;
    }
    fputs("linear:", f);
    for (size_t i = 0; i < v->nextents; i++) {
        fprintf(f, "%s%llu+%llu@%s", i ? ";" : "",
                (unsigned long long)v->extents[i].start,
                (unsigned long long)(v->extents[i].end -
                                     v->extents[i].start),
                v->extents[i].device);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static int add_extent(VolInfo *v, const char *range, uint64_t ext,
                      json_t *starts, Error *err)
{
    /* "/dev/loop0:3-4": device, first and last PE */
    const char *colon = strrchr(range, ':');
    const char *dash = colon ? strchr(colon, '-') : NULL;
    if (!colon || !dash) {
        return error_setf(err, EIO, "cannot read segment '%s'", range);
    }
    char *dev = strndup(range, (size_t)(colon - range));
    json_t *s = dev ? json_object_get(starts, dev) : NULL;
    uint64_t lo = strtoull(colon + 1, NULL, 10);
    uint64_t hi = strtoull(dash + 1, NULL, 10);
    VolExtent *ne = realloc(v->extents, (v->nextents + 1) * sizeof(*ne));
    if (!dev || !ne) {
        free(dev);
        return error_setf(err, ENOMEM, "out of memory");
    }
    v->extents = ne;
    if (!s || hi < lo) {
        free(dev);
        return error_setf(err, EIO, "segment '%s' is on no PV of the VG",
                          range);
    }
    uint64_t start = (uint64_t)json_integer_value(s) + lo * ext;
    v->extents[v->nextents++] = (VolExtent){
        .device = dev, .start = start, .end = start + (hi - lo + 1) * ext,
    };
    return 0;
}

static int cmp_seg(const void *a, const void *b)
{
    uint64_t x = num(*(json_t *const *)a, "seg_start_pe");
    uint64_t y = num(*(json_t *const *)b, "seg_start_pe");
    return x < y ? -1 : x > y;
}

/* One VolInfo from the report rows of one LV (its segments). */
static int lv_to_vol(Pool *p, json_t **segs, size_t nsegs, json_t *starts,
                     VolInfo *v, Error *err)
{
    memset(v, 0, sizeof(*v));
    v->mode = v->uid = v->gid = -1;
    qsort(segs, nsegs, sizeof(*segs), cmp_seg);
    json_t *r = segs[0];
    const char *name = str(r, "lv_name");
    char tag[256];
    v->pool = strdup(p->def.name);
    v->name = strdup(name);
    v->key = strdup(str(r, "lv_uuid"));
    v->path = pool_strfmt("%s/%s", p->def.target_path, name);
    v->type = "block";
    v->format = strdup(has_tag_prefix(str(r, "lv_tags"), FMT_TAG, tag,
                                      sizeof(tag)) ? tag : "raw");
    if (has_tag_prefix(str(r, "lv_tags"), SECRET_TAG, tag, sizeof(tag))) {
        v->secret = strdup(tag);
    }
    if (!v->pool || !v->name || !v->key || !v->path || !v->format) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    uint64_t size = num(r, "lv_size");
    v->capacity = v->allocation = v->physical = size;
    uint64_t ext = num(r, "vg_extent_size");
    const char *active = str(r, "lv_active");
    bool dm = lvm_have_dm();
    for (size_t i = 0; i < nsegs && !v->unusable; i++) {
        const char *type = str(segs[i], "segtype");
        if (strcmp(type, "linear") != 0) {
            v->unusable = pool_strfmt("segment type '%s' needs "
                                      "device-mapper", type);
        } else {
            int ret = add_extent(v, str(segs[i], "seg_pe_ranges"), ext,
                                 starts, err);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (!dm && !v->unusable && *active && strcmp(active, "unknown") != 0) {
        v->unusable = pool_strfmt("the logical volume is active through "
                                  "device-mapper (lv_active: %s); its data "
                                  "may change under that mapping", active);
    }
    if (strcmp(v->format, "raw") != 0 && !v->unusable) {
        char *fn = dm ? strdup(v->path) : linear_name(v);
        VolInfo img = { 0 };
        Error ierr = { 0 };
        if (fn && pool_read_image_info(fn, v->format, &img, &ierr) == 0) {
            v->capacity = img.capacity;
            v->cluster_size = img.cluster_size;
            v->compat = img.compat;
            v->lazy_refcounts = img.lazy_refcounts;
            v->extended_l2 = img.extended_l2;
            img.compat = NULL;
        }
        vol_info_clear(&img);
        free(fn);
    }
    return 0;
}

/* Every LV of the VG (lv NULL) or one. */
static int lv_list(Pool *p, const char *lv, VolInfo **out, size_t *n,
                   Error *err)
{
    *out = NULL;
    *n = 0;
    char *target = lv ? pool_strfmt("%s/%s", vg_of(p), lv)
                      : strdup(vg_of(p));
    const char *a[] = { "lvs", "--reportformat", "json", "--units", "b",
                        "--nosuffix", "-o",
                        "lv_name,lv_uuid,lv_size,lv_active,lv_tags,"
                        "seg_start_pe,seg_pe_ranges,segtype,vg_extent_size",
                        target, NULL };
    json_t *rows = NULL, *starts = NULL;
    int ret = target ? lvm_report(a, "lv", &rows, err)
                     : error_setf(err, ENOMEM, "out of memory");
    free(target);
    if (ret == 0) {
        ret = pv_starts(p, &starts, err);
    }
    size_t nrows = ret == 0 ? json_array_size(rows) : 0;
    json_t **segs = calloc(nrows ? nrows : 1, sizeof(*segs));
    VolInfo *v = calloc(nrows ? nrows : 1, sizeof(*v));
    if (ret == 0 && (!segs || !v)) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    /* Rows of one LV are adjacent; group them by UUID. */
    for (size_t i = 0; ret == 0 && i < nrows;) {
        const char *uuid = str(json_array_get(rows, i), "lv_uuid");
        size_t k = 0;
        while (i < nrows &&
               strcmp(str(json_array_get(rows, i), "lv_uuid"), uuid) == 0) {
            segs[k++] = json_array_get(rows, i++);
        }
        ret = lv_to_vol(p, segs, k, starts, &v[*n], err);
        (*n)++;
    }
    free(segs);
    json_decref(rows);
    json_decref(starts);
    if (ret < 0) {
        vol_info_list_free(v, *n);
        *n = 0;
        return ret;
    }
    *out = v;
    return 0;
}

static int logical_refresh(Pool *p, Error *err)
{
    return lv_list(p, NULL, &p->vols, &p->nvols, err);
}

static int logical_vol_lookup(Pool *p, const char *name, VolInfo *out,
                              Error *err)
{
    Error nerr = { 0 };
    if (logical_vol_name_check(name, &nerr) < 0) {
        return -ENOENT;
    }
    VolInfo *v;
    size_t n;
    int ret = lv_list(p, name, &v, &n, err);
    if (ret == -ENOENT || (ret == 0 && n != 1)) {
        vol_info_list_free(v, ret == 0 ? n : 0);
        error_clear(err);
        return -ENOENT;
    }
    if (ret == 0) {
        *out = v[0];
        free(v);
    }
    return ret;
}

static int run_on_lv(Pool *p, const char *verb, const char *opt,
                     const char *val, const char *name, Error *err)
{
    char *target = pool_strfmt("%s/%s", vg_of(p), name);
    if (!target) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    const char *a[] = { verb, opt, val, target, NULL };
    if (!val) {
        a[2] = target;
        a[3] = NULL;
    }
    int ret = lvm_run(a, NULL, err);
    free(target);
    return ret;
}

/* Bytes the LV needs for an image of capacity bytes in format fmt
 * (a: the new volume's details, or NULL). */
static int needed_size(const char *fmt, const VolCreateArgs *a,
                       const char *secret, uint64_t capacity, uint64_t *out,
                       Error *err)
{
    if (strcmp(fmt, "raw") == 0) {
        *out = capacity;
        return 0;
    }
    KVList o = { 0 };
    if (a && a->cluster_size) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%llu",
                 (unsigned long long)a->cluster_size);
        kvlist_set(&o, "cluster_size", buf);
    }
    if (a && a->compat) {
        kvlist_set(&o, "compat", a->compat);
    }
    if (secret && strcmp(fmt, "luks") == 0) {
        /* the luks driver measures with its creation options, secret
         * included */
        kvlist_set(&o, "key-secret", secret);
    }
    BlockMeasure m;
    int ret = block_measure(fmt, &o, NULL, capacity, &m, err);
    kvlist_free(&o);
    *out = m.fully_allocated;
    return ret;
}

static int logical_vol_open_spec(Pool *p, const VolInfo *v, bool raw_bytes,
                                 VolOpenSpec *spec, Error *err)
{
    (void)p;
    memset(spec, 0, sizeof(*spec));
    if (v->unusable) {
        return error_setf(err, EBUSY, "volume '%s': %s", v->name,
                          v->unusable);
    }
    int ret = pool_vol_spec_init(spec, lvm_have_dm() ? strdup(v->path)
                                                    : linear_name(v),
                                 v, raw_bytes, err);
    if (ret == 0) {
        pool_vol_spec_luks_key(spec, v, raw_bytes);
    }
    return ret;
}

/* The first 4 KiB of a new raw LV are zeroed, as lvcreate does with
 * device-mapper: old signatures must not show through. */
static int zero_head(Pool *p, const VolInfo *v, Error *err)
{
    BlockNode *n;
    int ret = pool_vol_open_node(p, v, true, BLOCK_O_RDWR, &n, err);
    if (ret < 0) {
        return ret;
    }
    int64_t len = block_get_length(n);
    uint64_t z = len > 0 && len < 4096 ? (uint64_t)len : 4096;
    ret = block_write_zeroes(n, 0, z, 0);
    if (ret == 0) {
        ret = block_flush(n);
    }
    block_close(n);
    return ret < 0 ? error_setf(err, -ret, "cannot zero the new volume: %s",
                                strerror(-ret)) : 0;
}

static int logical_vol_create(Pool *p, const VolCreateArgs *a, VolInfo *out,
                              Error *err)
{
    const char *fmt = a->format ? a->format : "raw";
    if (a->backing_vol) {
        return error_setf(err, ENOTSUP, "logical pools have no backing "
                          "volumes (directory pools do)");
    }
    if (a->secret && strspn(a->secret, "abcdefghijklmnopqrstuvwxyz"
                            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_.-") !=
                     strlen(a->secret)) {
        return error_setf(err, EINVAL, "secret id '%s' cannot be kept in an "
                          "LVM tag (letters, digits, + _ . -)", a->secret);
    }
    uint64_t size;
    int ret = needed_size(fmt, a, a->secret, a->capacity, &size, err);
    if (ret == 0) {
        ret = logical_refresh_sizes(p, err);
    }
    if (ret == 0 && size > p->available) {
        return error_setf(err, ENOSPC, "not enough space in volume group "
                          "'%s' for volume '%s': %llu bytes wanted, %llu "
                          "free", vg_of(p), a->name,
                          (unsigned long long)size,
                          (unsigned long long)p->available);
    }
    if (ret < 0) {
        return ret;
    }
    char sz[32];
    snprintf(sz, sizeof(sz), "%llub", (unsigned long long)size);
    char *ftag = pool_strfmt(FMT_TAG "%s", fmt);
    char *stag = a->secret ? pool_strfmt(SECRET_TAG "%s", a->secret) : NULL;
    const char *args[16] = { "lvcreate", "-y", "-n", a->name, "-L", sz,
                             "--addtag", ftag };
    int k = 8;
    if (stag) {
        args[k++] = "--addtag";
        args[k++] = stag;
    }
    if (!lvm_have_dm()) {
        args[k++] = "-Zn";   /* nothing to zero through: zero_head */
    }
    args[k++] = vg_of(p);
    args[k] = NULL;
    ret = ftag ? lvm_run(args, NULL, err)
               : error_setf(err, ENOMEM, "out of memory");
    free(ftag);
    free(stag);
    if (ret < 0) {
        return ret;
    }
    ret = logical_vol_lookup(p, a->name, out, err);
    if (ret == -ENOENT) {
        ret = error_setf(err, EIO, "lvcreate made no volume '%s'", a->name);
    }
    if (ret == 0 && strcmp(fmt, "raw") == 0) {
        ret = zero_head(p, out, err);
    } else if (ret == 0) {
        VolOpenSpec spec;
        ret = logical_vol_open_spec(p, out, true, &spec, err);
        if (ret == 0) {
            ret = pool_create_image(p, spec.filename, a, NULL, NULL, false,
                                    err);
            vol_open_spec_clear(&spec);
        }
    }
    if (ret < 0) {
        Error ignored = { 0 };
        run_on_lv(p, "lvremove", "-f", NULL, a->name, &ignored);
        return ret;
    }
    vol_info_clear(out);
    return logical_vol_lookup(p, a->name, out, err);
}

static int logical_vol_delete(Pool *p, const VolInfo *v, Error *err)
{
    int ret = run_on_lv(p, "lvremove", "-f", NULL, v->name, err);
    if (ret == -ENOENT) {
        error_clear(err);
        ret = 0;
    }
    return ret;
}

static int set_lv_size(Pool *p, const VolInfo *v, uint64_t size, Error *err)
{
    char sz[32];
    snprintf(sz, sizeof(sz), "%llub", (unsigned long long)size);
    bool grow = size > v->physical;
    char *target = pool_strfmt("%s/%s", vg_of(p), v->name);
    const char *a[] = { grow ? "lvextend" : "lvreduce", "-f", "-L", sz,
                        target, NULL };
    int ret = target ? lvm_run(a, NULL, err)
                     : error_setf(err, ENOMEM, "out of memory");
    free(target);
    return ret;
}

static int logical_vol_resize(Pool *p, const VolInfo *v, uint64_t capacity,
                              bool allocate, Error *err)
{
    (void)allocate;           /* an LV is always allocated */
    bool raw = strcmp(v->format, "raw") == 0;
    uint64_t need;
    int ret = needed_size(v->format, NULL, v->secret, capacity, &need, err);
    if (ret < 0) {
        return ret;
    }
    /* Holding the volume open for writing keeps everyone else off it
     * while its size changes. */
    BlockNode *lock;
    Error oerr = { 0 };
    ret = pool_vol_open_node(p, v, true, BLOCK_O_RDWR, &lock, &oerr);
    if (ret < 0) {
        return error_setf(err, -ret, "volume '%s' cannot be used: %s",
                          v->name, oerr.msg);
    }
    if (raw || need > v->physical) {
        ret = set_lv_size(p, v, need, err);
    }
    block_close(lock);
    if (ret < 0 || raw) {
        return ret;
    }
    /* The image inside: its new extents, then its new virtual size
     * (a smaller qcow2 keeps its LV: its clusters may lie anywhere). */
    VolInfo nv;
    ret = logical_vol_lookup(p, v->name, &nv, err);
    BlockNode *n = NULL;
    if (ret == 0) {
        ret = pool_vol_open_node(p, &nv, false, BLOCK_O_RDWR, &n, err);
        vol_info_clear(&nv);
    }
    if (ret == 0) {
        ret = block_truncate(n, capacity, true, PREALLOC_OFF, err);
        if (ret == 0) {
            ret = block_flush(n);
        }
        block_close(n);
    }
    return ret;
}

static int logical_vol_changed(Pool *p, const VolInfo *v, const char *format,
                               Error *err)
{
    char probed[16];
    if (!format) {
        VolOpenSpec spec;
        int ret = logical_vol_open_spec(p, v, true, &spec, err);
        if (ret < 0) {
            return ret;
        }
        Error perr = { 0 };
        const BlockDriver *d = block_probe(spec.filename, &perr);
        vol_open_spec_clear(&spec);
        snprintf(probed, sizeof(probed), "%s", d ? block_driver_name(d) : "raw");
        format = probed;
    }
    if (strcmp(format, v->format) == 0) {
        return 0;
    }
    char *del = pool_strfmt(FMT_TAG "%s", v->format);
    char *add = pool_strfmt(FMT_TAG "%s", format);
    char *target = pool_strfmt("%s/%s", vg_of(p), v->name);
    const char *a[] = { "lvchange", "--deltag", del, "--addtag", add, target,
                        NULL };
    int ret = del && add && target ? lvm_run(a, NULL, err)
                                   : error_setf(err, ENOMEM, "out of memory");
    free(del);
    free(add);
    free(target);
    return ret;
}

const PoolBackend pool_backend_logical = {
    .type = "logical",
    .def_check = logical_def_check,
    .vol_name_check = logical_vol_name_check,
    .build = logical_build,
    .start = logical_start,
    .stop = logical_stop,
    .delete = logical_delete,
    .refresh_sizes = logical_refresh_sizes,
    .refresh = logical_refresh,
    .vol_lookup = logical_vol_lookup,
    .vol_create = logical_vol_create,
    .vol_delete = logical_vol_delete,
    .vol_resize = logical_vol_resize,
    .vol_open_spec = logical_vol_open_spec,
    .vol_changed = logical_vol_changed,
};
