/*
 * record.c - a backup point's record (REPO/ID/point.json) to and from
 * JSON.  The record is what `backup-list --output=json` shows for the
 * point, so its keys are part of the command line's contract: new keys
 * may be added, none renamed.  Keys this version does not know are kept
 * (extra) and written back unchanged.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backup/repo.h"

static const char *const point_keys[] = {
    "id", "seq", "time", "timestamp", "mode", "origin", "disks",
    "bytes-read", "bytes-written", NULL,
};
static const char *const disk_keys[] = {
    "name", "source", "source-format", "virtual-size", "cluster-size",
    "type", "parent", "method", "reason", "bitmap", "compressed",
    "encrypted", "checksums", "bytes-read", "bytes-written",
    "clusters-read", "clusters-changed", "file-size", "file", NULL,
};

static bool known(const char *const *keys, const char *k)
{
    for (int i = 0; keys[i]; i++) {
        if (strcmp(keys[i], k) == 0) {
            return true;
        }
    }
    return false;
}

static json_t *extra_of(json_t *j, const char *const *keys)
{
    json_t *x = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
        if (!known(keys, k)) {
            json_object_set(x, k, v);
        }
    }
    return x;
}

static void merge_extra(json_t *j, json_t *extra)
{
    const char *k;
    json_t *v;
    if (!extra) {
        return;
    }
    json_object_foreach(extra, k, v) {
        if (!json_object_get(j, k)) {
            json_object_set(j, k, v);
        }
    }
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static void format_time(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *disk_to_json(const BkDiskRec *d, const char *id)
{
    char sums[33], content[33];
    bk_hash_hex(&d->sums_digest, sums);
    bk_hash_hex(&d->content_digest, content);
    char *file = NULL;
    if (asprintf(&file, "%s/%s.qcow2", id, d->name) < 0) {
        file = NULL;
    }
    json_t *j = json_pack(
        "{s:s, s:o, s:o, s:I, s:I, s:s, s:o, s:s, s:o, s:o, s:b, s:b,"
        " s:{s:s, s:I, s:s, s:s, s:s}, s:I, s:I, s:I, s:I, s:I, s:o}",
        "name", d->name,
        "source", str_or_null(d->source),
        "source-format", str_or_null(d->source_format),
        "virtual-size", (json_int_t)d->virtual_size,
        "cluster-size", (json_int_t)(1ull << d->cluster_bits),
        "type", d->type,
        "parent", str_or_null(d->parent),
        "method", d->method,
        "reason", str_or_null(d->reason),
        "bitmap", str_or_null(d->bitmap),
        "compressed", d->compressed,
        "encrypted", d->encrypted,
        "checksums",
            "algorithm", "xxh3-128",
            "granularity", (json_int_t)(1ull << d->cluster_bits),
            "file", "sums",
            "sums-digest", sums,
            "content-digest", content,
        "bytes-read", (json_int_t)d->bytes_read,
        "bytes-written", (json_int_t)d->bytes_written,
        "clusters-read", (json_int_t)d->clusters_read,
        "clusters-changed", (json_int_t)d->clusters_changed,
        "file-size", (json_int_t)d->file_size,
        "file", str_or_null(file));
    free(file);
    if (j) {
        /* The sums file's name, relative like "file". */
        char *s = NULL;
        if (asprintf(&s, "%s/%s.sums", id, d->name) >= 0) {
            json_object_set_new(json_object_get(j, "checksums"), "file",
                                json_string(s));
            free(s);
        }
        merge_extra(j, d->extra);
    }
    return j;
}

json_t *bk_point_to_json(const BkPoint *p)
{
    char when[32];
    uint64_t rd = 0, wr = 0;
    format_time(p->time, when, sizeof(when));
    json_t *disks = json_array();
    for (int i = 0; i < p->ndisks; i++) {
        json_array_append_new(disks, disk_to_json(&p->disks[i], p->id));
        rd += p->disks[i].bytes_read;
        wr += p->disks[i].bytes_written;
    }
    json_t *j = json_pack("{s:s, s:I, s:s, s:I, s:s, s:o, s:o, s:I, s:I}",
                          "id", p->id,
                          "seq", (json_int_t)p->seq,
                          "time", when,
                          "timestamp", (json_int_t)p->time,
                          "mode", p->mode ? p->mode : "auto",
                          "origin", str_or_null(p->origin),
                          "disks", disks,
                          "bytes-read", (json_int_t)rd,
                          "bytes-written", (json_int_t)wr);
    if (j) {
        merge_extra(j, p->extra);
    }
    return j;
}

/* ---- parsing: every field checked, nothing trusted ---- */

static int bad(Error *err, const char *what)
{
    return error_setf(err, EINVAL, "bad record: %s", what);
}

static int get_str(json_t *o, const char *k, bool nullable, char **out,
                   Error *err)
{
    json_t *v = json_object_get(o, k);
    *out = NULL;
    if ((!v || json_is_null(v)) && nullable) {
        return 0;
    }
    if (!json_is_string(v)) {
        return error_setf(err, EINVAL, "bad record: '%s' is not a string",
                          k);
    }
    *out = strdup(json_string_value(v));
    return *out ? 0 : error_setf(err, ENOMEM, "out of memory");
}

static int get_u64(json_t *o, const char *k, bool optional, uint64_t *out,
                   Error *err)
{
    json_t *v = json_object_get(o, k);
    *out = 0;
    if (!v && optional) {
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return error_setf(err, EINVAL, "bad record: '%s' is not a "
                          "non-negative integer", k);
    }
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

void bk_disk_clear(BkDiskRec *d)
{
    free(d->name);
    free(d->source);
    free(d->source_format);
    free(d->type);
    free(d->parent);
    free(d->method);
    free(d->reason);
    free(d->bitmap);
    json_decref(d->extra);
    memset(d, 0, sizeof(*d));
}

static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64 || id[0] == '.') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
              (c >= 'a' && c <= 'z') || c == '-' || c == '_' || c == '.')) {
            return false;
        }
    }
    return true;
}

static int disk_from_json(json_t *j, BkDiskRec *d, Error *err)
{
    uint64_t cs = 0;
    int ret;
    json_t *sums = json_object_get(j, "checksums");

    memset(d, 0, sizeof(*d));
    if (!json_is_object(j)) {
        return bad(err, "a disk is not an object");
    }
    if ((ret = get_str(j, "name", false, &d->name, err)) < 0 ||
        (ret = get_str(j, "source", true, &d->source, err)) < 0 ||
        (ret = get_str(j, "source-format", true, &d->source_format,
                       err)) < 0 ||
        (ret = get_u64(j, "virtual-size", false, &d->virtual_size,
                       err)) < 0 ||
        (ret = get_u64(j, "cluster-size", false, &cs, err)) < 0 ||
        (ret = get_str(j, "type", false, &d->type, err)) < 0 ||
        (ret = get_str(j, "parent", true, &d->parent, err)) < 0 ||
        (ret = get_str(j, "method", false, &d->method, err)) < 0 ||
        (ret = get_str(j, "reason", true, &d->reason, err)) < 0 ||
        (ret = get_str(j, "bitmap", true, &d->bitmap, err)) < 0 ||
        (ret = get_u64(j, "bytes-read", true, &d->bytes_read, err)) < 0 ||
        (ret = get_u64(j, "bytes-written", true, &d->bytes_written,
                       err)) < 0 ||
        (ret = get_u64(j, "clusters-read", true, &d->clusters_read,
                       err)) < 0 ||
        (ret = get_u64(j, "clusters-changed", true, &d->clusters_changed,
                       err)) < 0 ||
        (ret = get_u64(j, "file-size", true, &d->file_size, err)) < 0) {
        bk_disk_clear(d);
        return ret;
    }
    if (!bk_disk_name_ok(d->name) || (d->parent && !id_ok(d->parent))) {
        bk_disk_clear(d);
        return bad(err, "a disk or parent name that cannot be a file name");
    }
    while (d->cluster_bits < 30 && (1ull << d->cluster_bits) < cs) {
        d->cluster_bits++;
    }
    if ((1ull << d->cluster_bits) != cs || d->cluster_bits < 9 ||
        d->cluster_bits > 21) {
        bk_disk_clear(d);
        return bad(err, "cluster-size");
    }
    if (strcmp(d->type, "full") != 0 && strcmp(d->type, "incremental") != 0 &&
        strcmp(d->type, "differential") != 0) {
        bk_disk_clear(d);
        return bad(err, "type");
    }
    if (!d->parent != (strcmp(d->type, "full") == 0)) {
        bk_disk_clear(d);
        return bad(err, "a full point has no parent, others have one");
    }
    d->compressed = json_is_true(json_object_get(j, "compressed"));
    d->encrypted = json_is_true(json_object_get(j, "encrypted"));
    if (!json_is_object(sums) ||
        bk_hash_parse(json_string_value(json_object_get(sums,
                                                        "sums-digest")),
                      &d->sums_digest) < 0 ||
        bk_hash_parse(json_string_value(json_object_get(sums,
                                                        "content-digest")),
                      &d->content_digest) < 0) {
        bk_disk_clear(d);
        return bad(err, "checksums");
    }
    d->extra = extra_of(j, disk_keys);
    return 0;
}

void bk_point_clear(BkPoint *p)
{
    free(p->id);
    free(p->mode);
    free(p->origin);
    for (int i = 0; i < p->ndisks; i++) {
        bk_disk_clear(&p->disks[i]);
    }
    free(p->disks);
    json_decref(p->extra);
    memset(p, 0, sizeof(*p));
}

int bk_point_from_json(json_t *j, BkPoint *p, Error *err)
{
    uint64_t ts = 0;
    int ret;

    memset(p, 0, sizeof(*p));
    if (!json_is_object(j)) {
        return bad(err, "not an object");
    }
    if ((ret = get_str(j, "id", false, &p->id, err)) < 0 ||
        (ret = get_u64(j, "seq", false, &p->seq, err)) < 0 ||
        (ret = get_u64(j, "timestamp", false, &ts, err)) < 0 ||
        (ret = get_str(j, "mode", true, &p->mode, err)) < 0 ||
        (ret = get_str(j, "origin", true, &p->origin, err)) < 0) {
        bk_point_clear(p);
        return ret;
    }
    if (!id_ok(p->id)) {
        bk_point_clear(p);
        return bad(err, "id");
    }
    p->time = (int64_t)ts;
    json_t *disks = json_object_get(j, "disks");
    if (!json_is_array(disks) || json_array_size(disks) == 0 ||
        json_array_size(disks) > 256) {
        bk_point_clear(p);
        return bad(err, "disks");
    }
    p->disks = calloc(json_array_size(disks), sizeof(*p->disks));
    if (!p->disks) {
        bk_point_clear(p);
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < json_array_size(disks); i++) {
        ret = disk_from_json(json_array_get(disks, i), &p->disks[i], err);
        if (ret < 0) {
            bk_point_clear(p);
            return ret;
        }
        p->ndisks++;
        for (int k = 0; k < p->ndisks - 1; k++) {
            if (strcmp(p->disks[k].name, p->disks[i].name) == 0) {
                bk_point_clear(p);
                return bad(err, "two disks of one name");
            }
        }
    }
    p->extra = extra_of(j, point_keys);
    return 0;
}

int bk_point_save(const char *dir, const BkPoint *p, bool replace,
                  Error *err)
{
    char *path = NULL;
    if (asprintf(&path, "%s/%s", dir, BK_POINT_FILE) < 0) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    json_t *j = bk_point_to_json(p);
    int ret = !j ? error_setf(err, ENOMEM, "out of memory")
            : replace ? bk_write_json_atomic(path, j, err)
                      : bk_write_json_new(path, j, err);
    json_decref(j);
    free(path);
    return ret;
}
