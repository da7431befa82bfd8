/*
 * pool-cmd.c - output and error helpers of the pool and volume commands
 * (see pool-cmd.h).  The layouts are virsh 9's, measured against its
 * test driver: a table is a header row, a row of dashes as wide as
 * every column plus three, then one line per row; columns are
 * left-aligned, separated by three spaces, the first one indented by
 * one; the last column is not padded.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imgtool/pool-cmd.h"

PoolStore *pcmd_store(void)
{
    PoolStore *s;
    Error err = { 0 };
    if (pool_store_open(&s, &err) < 0) {
        imgtool_report(&err);
        return NULL;
    }
    return s;
}

int pcmd_fail(const Error *err, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    imgtool_error("%s: %s", what, err && err->code ? err->msg
                                                   : "unknown error");
    return 1;
}

void pcmd_pretty(uint64_t v, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB",
                                         "PiB", "EiB" };
    double d = (double)v;
    int u = 0;
    while (u < 6 && d >= 1024.0) {
        d /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.2f %s", d, units[u]);
}

void pcmd_kv(const char *key, const char *fmt, ...)
{
    char k[64];
    snprintf(k, sizeof(k), "%s:", key);
    printf("%-15s ", k);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

void pcmd_kv_size(const char *key, uint64_t v, bool bytes, const char *unit)
{
    if (bytes) {
        pcmd_kv(key, "%llu%s", (unsigned long long)v, unit);
    } else {
        char buf[32];
        pcmd_pretty(v, buf, sizeof(buf));
        pcmd_kv(key, "%s", buf);
    }
}

struct PcmdTable {
    int ncols;
    size_t nrows;
    char **cells;            /* (nrows + 1) * ncols, row 0 the header */
};

PcmdTable *pcmd_table_new(int ncols, const char *const *header)
{
    PcmdTable *t = calloc(1, sizeof(*t));
    if (t) {
        t->ncols = ncols;
        pcmd_table_row(t, header);
    }
    return t;
}

void pcmd_table_row(PcmdTable *t, const char *const *cells)
{
    if (!t) {
        return;
    }
    char **nc = realloc(t->cells, (t->nrows + 1) * (size_t)t->ncols *
                                  sizeof(*nc));
    if (!nc) {
        return;
    }
    t->cells = nc;
    for (int i = 0; i < t->ncols; i++) {
        nc[t->nrows * (size_t)t->ncols + (size_t)i] =
            strdup(cells[i] ? cells[i] : "");
    }
    t->nrows++;
}

static void print_row(const PcmdTable *t, size_t r, const size_t *w)
{
    for (int i = 0; i < t->ncols; i++) {
        const char *c = t->cells[r * (size_t)t->ncols + (size_t)i];
        c = c ? c : "";
        fputs(i ? "   " : " ", stdout);
        if (i + 1 < t->ncols) {
            printf("%-*s", (int)w[i], c);
        } else {
            fputs(c, stdout);
        }
    }
    putchar('\n');
}

void pcmd_table_print(PcmdTable *t)
{
    if (!t) {
        return;
    }
    size_t w[16] = { 0 };
    for (size_t r = 0; r < t->nrows; r++) {
        for (int i = 0; i < t->ncols && i < 16; i++) {
            const char *c = t->cells[r * (size_t)t->ncols + (size_t)i];
            size_t l = c ? strlen(c) : 0;
            w[i] = l > w[i] ? l : w[i];
        }
    }
    print_row(t, 0, w);
    size_t dashes = 0;
    for (int i = 0; i < t->ncols; i++) {
        dashes += w[i] + 3;
    }
    for (size_t i = 0; i < dashes; i++) {
        putchar('-');
    }
    putchar('\n');
    for (size_t r = 1; r < t->nrows; r++) {
        print_row(t, r, w);
    }
    putchar('\n');
    pcmd_table_free(t);
}

void pcmd_table_free(PcmdTable *t)
{
    if (!t) {
        return;
    }
    for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++) {
        free(t->cells[i]);
    }
    free(t->cells);
    free(t);
}

int pcmd_done(const VirshArgs *a, json_t *obj, const char *fmt, ...)
{
    if (a->output == OUTPUT_JSON) {
        imgtool_print_json(obj);
    } else {
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        fputs("\n\n", stdout);
    }
    json_decref(obj);
    return 0;
}

void pcmd_print_xml(const VirshArgs *a, const char *xml)
{
    if (a->output == OUTPUT_JSON) {
        json_t *j = json_pack("{s:s}", "xml", xml);
        imgtool_print_json(j);
        json_decref(j);
    } else {
        printf("%s\n", xml);
    }
}

json_t *pcmd_pool_json(const PoolInfo *p)
{
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:b, s:b}",
                          "name", p->name, "uuid", p->uuid, "type", p->type,
                          "state", p->active ? "running" : "inactive",
                          "autostart", p->autostart,
                          "persistent", p->persistent);
    if (j && p->target) {
        json_object_set_new(j, "target", json_string(p->target));
    }
    if (j && p->sizes_known) {
        json_object_set_new(j, "capacity", json_integer((json_int_t)p->capacity));
        json_object_set_new(j, "allocation",
                            json_integer((json_int_t)p->allocation));
        json_object_set_new(j, "available",
                            json_integer((json_int_t)p->available));
    }
    return j;
}

json_t *pcmd_vol_json(const VolInfo *v)
{
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I}",
                          "pool", v->pool, "name", v->name, "key", v->key,
                          "path", v->path, "type", v->type,
                          "format", v->format ? v->format : "raw",
                          "capacity", (json_int_t)v->capacity,
                          "allocation", (json_int_t)v->allocation,
                          "physical", (json_int_t)v->physical);
    if (!j) {
        return NULL;
    }
    if (v->backing_path) {
        json_object_set_new(j, "backing-path", json_string(v->backing_path));
        if (v->backing_format) {
            json_object_set_new(j, "backing-format",
                                json_string(v->backing_format));
        }
    }
    json_object_set_new(j, "state",
                        json_string(v->state == VOL_STATE_OK ? "ok"
                                    : "wipe-interrupted"));
    return j;
}

int pcmd_read_xml(const char *file, char **buf, size_t *len, Error *err)
{
    *buf = NULL;
    *len = 0;
    bool in = strcmp(file, "-") == 0;
    FILE *f = in ? stdin : fopen(file, "re");
    if (!f) {
        return error_setf(err, errno, "%s", strerror(errno));
    }
    const size_t max = 1024 * 1024;
    size_t cap = 64 * 1024, n = 0;
    char *b = malloc(cap + 1);
    int ret = b ? 0 : error_setf(err, ENOMEM, "out of memory");
    while (ret == 0) {
        if (n == cap) {
            char *nb = cap < max ? realloc(b, cap * 2 + 1) : NULL;
            if (!nb) {
                ret = cap < max ? error_setf(err, ENOMEM, "out of memory")
                                : error_setf(err, EFBIG, "XML larger than "
                                             "%zu bytes", max);
                break;
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                ret = error_setf(err, EIO, "read error");
            }
            break;
        }
    }
    if (!in) {
        fclose(f);
    }
    if (ret < 0) {
        free(b);
        return ret;
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
}

void pcmd_progress(void *opaque, uint64_t done, uint64_t total)
{
    progress_update(opaque, done, total);
}
