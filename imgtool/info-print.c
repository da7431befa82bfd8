/*
 * info-print.c - ImageInfo objects and qemu-img's way of printing them.
 *
 * Scripts parse `qemu-img info/check/measure --output=json`, and some of
 * them compare the text, so we print the same keys in the same order.
 * qemu-img's key order is fixed per key name (it is not the order in
 * which the fields are produced); the table below lists every key we
 * emit in the order qemu-img 7.2 was observed to print them.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imgtool/info-print.h"

static const char *const key_order[] = {
    "ivgen-alg", "compat", "icount", "flags", "vm-clock-nsec",
    "image-end-offset", "name", "active", "compressed-clusters", "hash-alg",
    "backing-image", "iters", "compression-type", "compressed",
    "lazy-refcounts", "date-sec", "bitmaps", "cipher-alg", "refcount-bits",
    "uuid", "total-clusters", "corruptions", "data-file", "ivgen-hash-alg",
    "corruptions-fixed", "check-errors", "backing-filename-format",
    "date-nsec", "granularity", "required", "leaks", "snapshots",
    "key-offset", "leaks-fixed", "allocated-clusters", "virtual-size",
    "filename", "cluster-size", "fully-allocated", "format", "encrypt",
    "actual-size", "format-specific", "data-file-raw",
    "full-backing-filename", "cipher-mode", "stripes", "slots",
    "vm-clock-sec", "payload-offset", "encrypted", "type",
    "master-key-iters", "backing-filename", "corrupt",
    "fragmented-clusters", "id", "vm-state-size", "dirty-flag",
    "extended-l2", "data",
};

static size_t key_rank(const char *key)
{
    size_t n = sizeof(key_order) / sizeof(key_order[0]);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(key_order[i], key) == 0) {
            return i;
        }
    }
    return n;
}

typedef struct KeyRank {
    const char *key;
    size_t rank;
    size_t pos;      /* insertion position: keeps unknown keys stable */
} KeyRank;

static int key_rank_cmp(const void *a, const void *b)
{
    const KeyRank *x = a, *y = b;
    if (x->rank != y->rank) {
        return x->rank < y->rank ? -1 : 1;
    }
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

json_t *qemu_json_order(const json_t *j)
{
    if (json_is_array(j)) {
        json_t *out = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            json_array_append_new(out, qemu_json_order(v));
        }
        return out;
    }
    if (!json_is_object(j)) {
        return json_deep_copy(j);
    }
    size_t n = json_object_size(j), i = 0;
    KeyRank *keys = calloc(n ? n : 1, sizeof(*keys));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v) {
        keys[i].key = k;
        keys[i].rank = key_rank(k);
        keys[i].pos = i;
        i++;
    }
    qsort(keys, n, sizeof(*keys), key_rank_cmp);
    json_t *out = json_object();
    for (i = 0; i < n; i++) {
        json_object_set_new(out, keys[i].key,
                            qemu_json_order(json_object_get(j, keys[i].key)));
    }
    free(keys);
    return out;
}

json_t *info_snapshots(BlockNode *n)
{
    BlockSnapshotInfo *v;
    int count;
    if (block_snapshot_list(n, &v, &count) < 0) {
        return NULL;
    }
    if (count == 0) {
        block_snapshot_list_free(v, 0);
        return NULL;
    }
    json_t *a = json_array();
    for (int i = 0; i < count; i++) {
        json_t *o = json_object();
        if (v[i].has_icount) {
            json_object_set_new(o, "icount",
                                json_integer((json_int_t)v[i].icount));
        }
        json_object_set_new(o, "vm-clock-nsec",
                            json_integer((json_int_t)v[i].vm_clock_nsec));
        json_object_set_new(o, "name", json_string(v[i].name));
        json_object_set_new(o, "date-sec", json_integer(v[i].date_sec));
        json_object_set_new(o, "date-nsec", json_integer(v[i].date_nsec));
        json_object_set_new(o, "vm-clock-sec",
                            json_integer((json_int_t)v[i].vm_clock_sec));
        json_object_set_new(o, "id", json_string(v[i].id));
        json_object_set_new(o, "vm-state-size",
                            json_integer((json_int_t)v[i].vm_state_size));
        json_array_append_new(a, o);
    }
    block_snapshot_list_free(v, count);
    return a;
}

json_t *info_build(BlockNode *n)
{
    json_t *o = json_object();
    BlockInfoExtra extra = { 0 };
    block_get_info_extra(n, &extra);

    int64_t len = block_get_length(n);
    json_object_set_new(o, "virtual-size", json_integer(len < 0 ? 0 : len));
    json_object_set_new(o, "filename", json_string(block_node_filename(n)));
    if (extra.cluster_size) {
        json_object_set_new(o, "cluster-size",
                            json_integer((json_int_t)extra.cluster_size));
    }
    json_object_set_new(o, "format", json_string(block_node_format(n)));
    int64_t actual = block_get_allocated_size(n);
    if (actual >= 0) {
        json_object_set_new(o, "actual-size", json_integer(actual));
    }
    if (extra.encrypted) {
        json_object_set_new(o, "encrypted", json_true());
    }
    json_t *snaps = info_snapshots(n);
    if (snaps) {
        json_object_set_new(o, "snapshots", snaps);
    }
    json_t *spec = block_get_format_info(n);
    if (spec) {
        json_object_set_new(o, "format-specific", spec);
    }
    if (block_node_backing_file(n)) {
        char *full = block_node_full_backing_filename(n)
                         ? strdup(block_node_full_backing_filename(n))
                         : block_resolve_backing(block_node_filename(n), block_node_backing_file(n));
        json_object_set_new(o, "backing-filename",
                            json_string(block_node_backing_file(n)));
        if (full) {
            json_object_set_new(o, "full-backing-filename",
                                json_string(full));
        }
        free(full);
        if (block_node_backing_format(n)) {
            json_object_set_new(o, "backing-filename-format",
                                json_string(block_node_backing_format(n)));
        }
    }
    json_object_set_new(o, "dirty-flag", json_boolean(extra.dirty));

    json_t *ordered = qemu_json_order(o);
    json_decref(o);
    return ordered;
}

static void print_scalar(FILE *f, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        fputs(json_string_value(v), f);
        break;
    case JSON_INTEGER:
        fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        fprintf(f, "%g", json_real_value(v));
        break;
    case JSON_TRUE:
        fputs("true", f);
        break;
    case JSON_FALSE:
        fputs("false", f);
        break;
    default:
        fputs("null", f);
        break;
    }
}

static bool is_composite(const json_t *v)
{
    return json_is_object(v) || json_is_array(v);
}

/* What follows a key's or index's colon: a nested block on the lines
 * below, or a scalar on the same line. */
static void print_member(FILE *f, const json_t *v, int indent)
{
    if (is_composite(v)) {
        fputc('\n', f);
        info_print_tree(f, v, indent + 4);
    } else {
        fputc(' ', f);
        print_scalar(f, v);
        fputc('\n', f);
    }
}

void info_print_tree(FILE *f, const json_t *j, int indent)
{
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) {
            fprintf(f, "%*s", indent, "");
            for (const char *p = k; *p; p++) {
                fputc(*p == '-' ? ' ' : *p, f);
            }
            fputc(':', f);
            print_member(f, v, indent);
        }
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            fprintf(f, "%*s[%zu]:", indent, "", i);
            print_member(f, v, indent);
        }
    } else {
        fprintf(f, "%*s", indent, "");
        print_scalar(f, j);
        fputc('\n', f);
    }
}

static const char *get_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* One row of qemu-img's snapshot table (also used for its header). */
static void snapshot_row(FILE *f, const char *id, const char *tag,
                         const char *vmsize, const char *date,
                         const char *clock, const char *icount)
{
    fprintf(f, "%-9s %-17s %7s%20s%13s %10s\n", id, tag, vmsize, date,
            clock, icount);
}

void info_print_snapshots(FILE *f, const json_t *list)
{
    size_t i;
    json_t *sn;
    fprintf(f, "Snapshot list:\n");
    snapshot_row(f, "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    json_array_foreach(list, i, sn) {
        char size[32], date[32] = "", clock[48], icount[32] = "";
        format_size((uint64_t)json_integer_value(
                        json_object_get(sn, "vm-state-size")),
                    size, sizeof(size));
        time_t t = (time_t)json_integer_value(json_object_get(sn,
                                                              "date-sec"));
        struct tm tm;
        if (localtime_r(&t, &tm)) {
            strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        }
        uint64_t secs = (uint64_t)json_integer_value(
            json_object_get(sn, "vm-clock-sec"));
        uint64_t nsecs = (uint64_t)json_integer_value(
            json_object_get(sn, "vm-clock-nsec"));
        snprintf(clock, sizeof(clock), "%02" PRIu64 ":%02" PRIu64 ":%02"
                 PRIu64 ".%03" PRIu64, secs / 3600, secs / 60 % 60,
                 secs % 60, nsecs / 1000000);
        json_t *ic = json_object_get(sn, "icount");
        if (ic) {
            snprintf(icount, sizeof(icount), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(ic));
        }
        snapshot_row(f, json_string_value(json_object_get(sn, "id")),
                     json_string_value(json_object_get(sn, "name")), size,
                     date, clock, icount);
    }
}

void info_print_human(FILE *f, const json_t *info)
{
    char buf[64];
    json_int_t vsize = json_integer_value(json_object_get(info, "virtual-size"));

    fprintf(f, "image: %s\n", get_str(info, "filename"));
    fprintf(f, "file format: %s\n", get_str(info, "format"));
    format_size((uint64_t)vsize, buf, sizeof(buf));
    fprintf(f, "virtual size: %s (%" JSON_INTEGER_FORMAT " bytes)\n", buf,
            vsize);
    json_t *actual = json_object_get(info, "actual-size");
    if (actual) {
        format_size((uint64_t)json_integer_value(actual), buf, sizeof(buf));
        fprintf(f, "disk size: %s\n", buf);
    } else {
        fprintf(f, "disk size: unavailable\n");
    }
    if (json_is_true(json_object_get(info, "encrypted"))) {
        fprintf(f, "encrypted: yes\n");
    }
    json_t *cs = json_object_get(info, "cluster-size");
    if (cs) {
        fprintf(f, "cluster_size: %" JSON_INTEGER_FORMAT "\n",
                json_integer_value(cs));
    }
    if (json_is_true(json_object_get(info, "dirty-flag"))) {
        fprintf(f, "cleanly shut down: no\n");
    }
    const char *bf = get_str(info, "backing-filename");
    if (bf) {
        const char *full = get_str(info, "full-backing-filename");
        fprintf(f, "backing file: %s", bf);
        if (full && strcmp(full, bf) != 0) {
            fprintf(f, " (actual path: %s)", full);
        }
        fputc('\n', f);
        const char *bfmt = get_str(info, "backing-filename-format");
        if (bfmt) {
            fprintf(f, "backing file format: %s\n", bfmt);
        }
    }
    json_t *snaps = json_object_get(info, "snapshots");
    if (json_array_size(snaps) > 0) {
        info_print_snapshots(f, snaps);
    }
    json_t *spec = json_object_get(info, "format-specific");
    json_t *data = json_object_get(spec, "data");
    if (data) {
        fprintf(f, "Format specific information:\n");
        info_print_tree(f, data, 4);
    }
}
