/*
 * restore.c - backup_list and backup_restore.
 *
 * A restore reads the point's chain (opened from the records), checks
 * every cluster against the point's checksum map as it goes, and writes
 * the disk to the target: clusters that read as zero are not written to
 * a target that reads zero already (a new file stays sparse, a new
 * qcow2 thin), and are written as zeroes otherwise; a stream gets every
 * byte in order.  Nothing needs a daemon: the points are plain qcow2
 * files.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/backup.h"
#include "backup/engine.h"
#include "backup/layers.h"

int backup_list(const char *repo, const char *key_secret, json_t **points,
                Error *err)
{
    BkOpenArgs oa = { .mode = BK_OPEN_READ, .key_secret = key_secret };
    BkRepo *r = NULL;
    int ret = bk_repo_open(repo, &oa, &r, err);
    *points = NULL;
    if (ret < 0) {
        return ret;
    }
    json_t *a = json_array();
    for (int i = 0; a && i < r->npoints; i++) {
        json_array_append_new(a, bk_point_to_json(&r->points[i]));
    }
    bk_repo_close(r);
    if (!a) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    *points = a;
    return 0;
}

typedef struct Progress {
    const RestoreOptions *o;
} Progress;

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    const RestoreOptions *o = opaque;
    if (o->progress) {
        o->progress(o->progress_opaque, done, total);
    }
}

/* The point and disk a restore (or verify) names. */
static int pick(BkRepo *r, const char *point, const char *disk,
                BkPoint **pp, BkDiskRec **dd, Error *err)
{
    BkPoint *p = point ? bk_repo_find(r, point)
                       : (r->npoints ? &r->points[r->npoints - 1] : NULL);
    if (!p) {
        return point ? error_setf(err, ENOENT, "%s: no point '%s'", r->path,
                                  point)
                     : error_setf(err, ENOENT, "%s: the repository holds no "
                                  "point", r->path);
    }
    BkDiskRec *d = NULL;
    if (disk) {
        d = bk_point_disk(p, disk);
        if (!d) {
            return error_setf(err, ENOENT, "%s: point %s has no disk '%s'",
                              r->path, p->id, disk);
        }
    } else if (p->ndisks == 1) {
        d = &p->disks[0];
    } else {
        char names[512] = "";
        for (int i = 0; i < p->ndisks; i++) {
            if (strlen(names) + strlen(p->disks[i].name) + 3 < sizeof(names)) {
                strcat(names, i ? ", " : "");
                strcat(names, p->disks[i].name);
            }
        }
        return error_setf(err, EINVAL, "%s: point %s holds %d disks (%s): "
                          "name one with --disk", r->path, p->id, p->ndisks,
                          names);
    }
    *pp = p;
    *dd = d;
    return 0;
}

int backup_restore(const char *repo, const RestoreOptions *o,
                   const RestoreTarget *t, json_t **info, Error *err)
{
    BkOpenArgs oa = {
        .mode = BK_OPEN_READ, .key_secret = o->key_secret, .need_key = true,
    };
    BkRepo *r = NULL;
    BkChain chain = { 0 };
    SumsReader *ref = NULL;
    BlockNode *dst = NULL;
    char *sums = NULL;
    int fd = -1;
    int ret;

    if (info) {
        *info = NULL;
    }
    ret = bk_repo_open(repo, &oa, &r, err);
    if (ret < 0) {
        return ret;
    }
    BkPoint *p = NULL;
    BkDiskRec *d = NULL;
    ret = pick(r, o->point, o->disk, &p, &d, err);
    if (ret < 0) {
        goto out;
    }
    ret = bk_chain_open(r, p, d->name, 0, &chain, err);
    if (ret < 0) {
        goto out;
    }
    sums = bk_disk_file(r, p->id, d->name, "sums");
    ret = sums ? sums_reader_open(sums, r->have_key ? &r->key : NULL, &ref,
                                  err)
               : error_setf(err, ENOMEM, "out of memory");
    if (ret < 0) {
        goto out;
    }
    const SumsInfo *si = sums_reader_info(ref);
    if (si->virtual_size != d->virtual_size ||
        si->cluster_bits != d->cluster_bits) {
        ret = error_setf(err, EILSEQ, "point %s disk %s: its checksum map "
                         "does not match its record", p->id, d->name);
        goto out;
    }
    bool is_zero = false;
    const char *fmt = d->source_format && strcmp(d->source_format, "raw")
                          ? "qcow2" : "raw";
    dst = t->open(t->opaque, d->virtual_size, fmt, &fd, &is_zero, err);
    if (!dst && fd < 0) {
        ret = -(err->code ? err->code : EIO);
        goto out;
    }
    char what[256];
    snprintf(what, sizeof(what), "point %s disk %s", p->id, d->name);
    BkJob job = {
        .action = BK_ACT_RESTORE,
        .src = chain.top,
        .size = d->virtual_size,
        .cluster_bits = d->cluster_bits,
        .seed = r->seed,
        .ref = ref,
        .dst = dst,
        .dst_fd = dst ? -1 : fd,
        .dst_zero = is_zero,
        .workers = o->workers,
        .progress = progress_cb,
        .progress_opaque = (void *)o,
        .cancel = o->cancel,
        .layer_name = bk_chain_layer_name,
        .layer_opaque = &chain,
        .what = what,
    };
    BkStats st;
    ret = bk_engine_run(&job, &st, err);
    if (ret == 0) {
        ret = sums_reader_finish(ref, &d->sums_digest, err);
        ref = NULL;
    }
    if (ret == 0 && dst) {
        int f = block_flush(dst);
        if (f < 0) {
            ret = error_setf(err, -f, "flush failed: %s", strerror(-f));
        }
    }
    if (ret == 0 && info) {
        *info = json_pack("{s:s, s:s, s:I, s:I, s:I}", "point", p->id,
                          "disk", d->name, "virtual-size",
                          (json_int_t)d->virtual_size, "bytes-read",
                          (json_int_t)st.bytes_read, "bytes-written",
                          (json_int_t)st.bytes_written);
    }
out:
    sums_reader_close(ref);
    block_close(dst);
    bk_chain_close(&chain);
    free(sums);
    bk_repo_close(r);
    return ret;
}
