/*
 * point.c - making a backup point (backup_create): choosing each disk's
 * base and how its changes are found, rotating its bitmaps, running the
 * engine into a new qcow2 layer, and listing the point.
 *
 * How changes are found, per disk:
 *   full      every cluster is read; zero clusters are not stored;
 *   bitmap    the clusters the base point's bitmap (rotate.c) calls
 *             dirty are read; the others are the base's;
 *   checksum  every cluster is read, hashed and compared with the base
 *             point's map; only those that differ are stored.  This is
 *             how raw files and LVM volumes (which cannot hold a bitmap)
 *             get incrementals, and how a chain heals when the bitmap is
 *             missing, inconsistent, older than the base or the size
 *             changed.
 * In every case a cluster read and found equal to the base's is not
 * stored, so a point holds only what really changed.
 *
 * Invariants: nothing of the point is visible before the rename of its
 * finished, fsynced directory; the base is never changed; a failure
 * leaves the repository as it was (the .tmp- directory is removed, or
 * removed by the next writer when the process died).
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backup/backup.h"
#include "backup/engine.h"
#include "backup/journal.h"
#include "backup/layers.h"
#include "backup/repo.h"
#include "backup/rotate.h"
#include "backup/source.h"

typedef struct DiskRun {
    const BackupSource *spec;
    BkSrcDisk *src;            /* the session's disk */
    BkPoint *base;             /* NULL: a full */
    const char *use_bitmap;    /* base id whose bitmap selects, or NULL */
    char *root_id;             /* the new point's chain's full */
    BkDiskRec rec;
} DiskRun;

static const char *const mode_names[] = {
    [BACKUP_AUTO] = "auto",
    [BACKUP_FULL] = "full",
    [BACKUP_INCREMENTAL] = "incremental",
    [BACKUP_DIFFERENTIAL] = "differential",
};

int backup_mode_parse(const char *s, BackupMode *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, mode_names[i]) == 0) {
            *out = (BackupMode)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *backup_mode_name(BackupMode m)
{
    return (unsigned)m < 4 ? mode_names[m] : "?";
}

/* The disk name a source gets by default: its file name without the
 * extension ("vol:pool/web.qcow2" -> "web", "/v/db.img" -> "db"). */
static char *default_disk_name(const char *name)
{
    const char *base = name;
    for (const char *p = name; *p; p++) {
        if (*p == '/' || *p == ':' || *p == '=' || *p == ',') {
            base = p + 1;
        }
    }
    size_t n = strlen(base);
    const char *dot = strrchr(base, '.');
    if (dot && dot > base) {
        n = (size_t)(dot - base);
    }
    char *s = strndup(base, n);
    for (size_t i = 0; s && s[i]; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
              (c >= 'a' && c <= 'z') || c == '-' || c == '_' || c == '.' ||
              c == '+')) {
            s[i] = '_';
        }
    }
    return s;
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0) {
        msg = NULL;
    }
    va_end(ap);
    if (msg) {
        block_report(BLOCK_REPORT_WARNING, "%s", msg);
        free(msg);
    }
}

/* Every layer file of p's chain is there and the base's map is the one
 * its record names: what an incremental on top of p relies on. */
static int chain_usable(BkRepo *r, BkPoint *p, const char *disk, char **why,
                        Error *err)
{
    *why = NULL;
    BkPoint *root = bk_repo_chain_root(r, p, disk);
    if (!root) {
        return asprintf(why, "the chain under point %s is broken (a parent "
                        "point is missing)", p->id) < 0 ? -ENOMEM : 0;
    }
    for (BkPoint *q = p; q;) {
        BkDiskRec *d = bk_point_disk(q, disk);
        char *f = bk_disk_file(r, q->id, disk, "qcow2");
        struct stat st;
        bool ok = f && stat(f, &st) == 0;
        free(f);
        if (!ok) {
            return asprintf(why, "the data of point %s is missing", q->id) < 0
                       ? -ENOMEM : 0;
        }
        q = d->parent ? bk_repo_find(r, d->parent) : NULL;
    }
    char *sums = bk_disk_file(r, p->id, disk, "sums");
    Error e = { 0 };
    int ret = sums ? sums_file_check(sums, r->have_key ? &r->key : NULL,
                                     &bk_point_disk(p, disk)->sums_digest,
                                     NULL, &e)
                   : -ENOMEM;
    free(sums);
    if (ret == -ENOMEM) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (ret < 0) {
        return asprintf(why, "the checksum map of point %s is damaged (%s)",
                        p->id, e.msg) < 0 ? -ENOMEM : 0;
    }
    return 0;
}

/* Chooses d's base, type and method. */
static int plan_disk(BkRepo *r, BkSession *ses, int idx, DiskRun *d,
                     BackupMode mode, const char *id, Error *err)
{
    const char *disk = d->rec.name;
    BkPoint *last = bk_repo_last_with(r, disk);
    char *why = NULL;
    int ret;

    if (mode != BACKUP_FULL && !last) {
        if (mode != BACKUP_AUTO) {
            return error_setf(err, ENOENT, "%s: no earlier point of disk "
                              "'%s': nothing to be %s to (use --mode full "
                              "or auto)", r->path, disk,
                              mode == BACKUP_INCREMENTAL ? "incremental"
                                                         : "differential");
        }
        mode = BACKUP_FULL;
    }
    if (mode != BACKUP_FULL) {
        BkPoint *base = mode == BACKUP_DIFFERENTIAL
                            ? bk_repo_chain_root(r, last, disk) : last;
        ret = base ? chain_usable(r, base, disk, &why, err)
                   : (asprintf(&why, "the chain under point %s is broken (a "
                               "parent point is missing)", last->id) < 0
                          ? -ENOMEM : 0);
        if (ret < 0) {
            return ret == -ENOMEM ? error_setf(err, ENOMEM, "out of memory")
                                  : ret;
        }
        if (why && mode != BACKUP_AUTO) {
            ret = error_setf(err, EINVAL, "%s: disk '%s': %s; a full backup "
                             "(--mode full or auto) starts a new chain",
                             r->path, disk, why);
            free(why);
            return ret;
        }
        if (why) {
            note("disk '%s': %s: taking a full backup", disk, why);
            free(why);
            mode = BACKUP_FULL;
        } else {
            d->base = base;
        }
    }
    if (mode == BACKUP_AUTO) {
        mode = BACKUP_INCREMENTAL;
    }
    const char *type = mode == BACKUP_FULL ? "full"
                     : mode == BACKUP_INCREMENTAL ? "incremental"
                                                  : "differential";
    d->rec.type = strdup(type);
    if (!d->base) {
        d->rec.method = strdup("full");
        d->root_id = strdup(id);
        return d->rec.type && d->rec.method && d->root_id
                   ? 0 : error_setf(err, ENOMEM, "out of memory");
    }
    BkDiskRec *b = bk_point_disk(d->base, disk);
    BkPoint *root = bk_repo_chain_root(r, d->base, disk);
    d->rec.parent = strdup(d->base->id);
    d->root_id = strdup(root->id);
    char *reason = NULL;
    if (b->virtual_size != d->rec.virtual_size) {
        ret = asprintf(&reason, "its size changed from %llu to %llu bytes",
                       (unsigned long long)b->virtual_size,
                       (unsigned long long)d->rec.virtual_size);
        if (ret < 0) {
            reason = NULL;
        }
    } else if (d->src->can_bitmaps) {
        ret = ses->ops->bitmap_usable(ses, idx, d->base->id, &reason, err);
        if (ret < 0) {
            return ret;
        }
        if (ret == 1) {
            d->use_bitmap = d->base->id;
        }
    }
    if (reason) {
        note("disk '%s': %s: reading every cluster and storing those whose "
             "checksum differs from point %s", disk, reason, d->base->id);
    }
    d->rec.reason = reason;
    d->rec.method = strdup(d->use_bitmap ? "bitmap" : "checksum");
    if (!d->rec.type || !d->rec.parent || !d->root_id || !d->rec.method) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

typedef struct Progress {
    const BackupOptions *o;
    uint64_t before, total;
} Progress;

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    Progress *p = opaque;
    (void)total;
    if (p->o->progress) {
        p->o->progress(p->o->progress_opaque, p->before + done, p->total);
    }
}

/* Creates the disk's layer in dir and fills it. */
static int store_disk(BkRepo *r, DiskRun *d, const char *dir,
                      const BackupOptions *o, Progress *pr, Error *err)
{
    const char *disk = d->rec.name;
    char *qcow = NULL, *sums = NULL, *backing = NULL, *base_sums = NULL;
    KVList copts = { 0 };
    BlockNode *dst = NULL;
    SumsReader *ref = NULL;
    SumsWriter *out = NULL;
    char num[32];
    int ret;

    if (asprintf(&qcow, "%s/%s.qcow2", dir, disk) < 0 ||
        asprintf(&sums, "%s/%s.sums", dir, disk) < 0) {
        qcow = sums = NULL;
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    snprintf(num, sizeof(num), "%llu", 1ull << BK_CLUSTER_BITS);
    kvlist_set(&copts, "cluster_size", num);
    kvlist_set(&copts, "compat", "1.1");
    if (d->base) {
        backing = bk_layer_backing_name(d->base->id, disk);
        base_sums = bk_disk_file(r, d->base->id, disk, "sums");
        kvlist_set(&copts, "backing_file", backing);
        kvlist_set(&copts, "backing_fmt", "qcow2");
    }
    if (o->compress) {
        kvlist_set(&copts, "compression_type", "zstd");
    }
    if (r->encrypted) {
        snprintf(num, sizeof(num), "%llu",
                 (unsigned long long)r->luks_iter_time);
        kvlist_set(&copts, "encrypt.format", "luks");
        kvlist_set(&copts, "encrypt.key-secret", r->key_secret);
        kvlist_set(&copts, "encrypt.iter-time", num);
    }
    ret = block_create("qcow2", qcow, d->rec.virtual_size, true, &copts,
                       BLOCK_CREATE_UNSAFE | BLOCK_CREATE_QUIET, err);
    if (ret < 0) {
        error_prefixf(err, "%s", qcow);
        goto out;
    }
    KVList lopts = { 0 };
    ret = bk_layer_opts(r, &lopts, err);
    if (ret == 0) {
        dst = block_open(qcow, "qcow2", &lopts,
                         BLOCK_O_RDWR | BLOCK_O_NO_BACKING, err);
    }
    kvlist_free(&lopts);
    if (!dst) {
        ret = -(err->code ? err->code : EIO);
        goto out;
    }
    if (d->base) {
        ret = sums_reader_open(base_sums, r->have_key ? &r->key : NULL, &ref,
                               err);
        if (ret < 0) {
            goto out;
        }
    }
    SumsInfo info = {
        .cluster_bits = BK_CLUSTER_BITS,
        .virtual_size = d->rec.virtual_size,
        .count = (d->rec.virtual_size + (1ull << BK_CLUSTER_BITS) - 1) >>
                 BK_CLUSTER_BITS,
    };
    ret = sums_writer_open(sums, &info, r->have_key ? &r->key : NULL, &out,
                           err);
    if (ret < 0) {
        goto out;
    }
    char what[256];
    snprintf(what, sizeof(what), "disk %s", disk);
    BkJob job = {
        .action = BK_ACT_STORE,
        .src = d->src->node,
        .size = d->rec.virtual_size,
        .cluster_bits = BK_CLUSTER_BITS,
        .seed = r->seed,
        .select = d->src->select,
        .select_opaque = d->src->select_opaque,
        .ref = ref,
        .out = out,
        .dst = dst,
        .dst_fd = -1,
        .dst_backed = d->base != NULL,
        .compress = o->compress,
        .workers = o->workers,
        .progress = progress_cb,
        .progress_opaque = pr,
        .cancel = o->cancel,
        .what = what,
    };
    BkStats st;
    ret = bk_engine_run(&job, &st, err);
    if (ret < 0) {
        error_prefixf(err, "%s", d->spec->name);
        goto out;
    }
    if (ref) {
        ret = sums_reader_finish(ref, &bk_point_disk(d->base, disk)->sums_digest,
                                 err);
        ref = NULL;
        if (ret < 0) {
            goto out;
        }
    }
    ret = sums_writer_close(out, &d->rec.sums_digest,
                            &d->rec.content_digest, err);
    out = NULL;
    if (ret < 0) {
        goto out;
    }
    ret = block_flush(dst);
    if (ret < 0) {
        ret = error_setf(err, -ret, "%s: flush failed: %s", qcow,
                         strerror(-ret));
        goto out;
    }
    int64_t alloc = block_get_allocated_size(dst);
    d->rec.file_size = alloc > 0 ? (uint64_t)alloc : 0;
    d->rec.bytes_read = st.bytes_read;
    d->rec.bytes_written = st.bytes_written;
    d->rec.clusters_read = st.clusters_read;
    d->rec.clusters_changed = st.clusters_changed;
    d->rec.compressed = o->compress;
    d->rec.encrypted = r->encrypted;
out:
    sums_reader_close(ref);
    sums_writer_abort(out);
    block_close(dst);
    kvlist_free(&copts);
    free(qcow);
    free(sums);
    free(backing);
    free(base_sums);
    return ret;
}

/* Leftovers of runs that died: their .tmp- directories. */
static void remove_stale_tmp(BkRepo *r)
{
    DIR *dir = opendir(r->path);
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
        if (strncmp(e->d_name, BK_TMP_PREFIX, strlen(BK_TMP_PREFIX)) == 0) {
            char *p = NULL;
            if (asprintf(&p, "%s/%s", r->path, e->d_name) >= 0) {
                bk_remove_tree(p);
                free(p);
            }
        }
    }
    if (dir) {
        closedir(dir);
    }
}

int backup_create(const char *repo, const BackupSource *src, int nsrc,
                  const BackupOptions *o, json_t **record, Error *err)
{
    BkOpenArgs oa = {
        .mode = BK_OPEN_WRITE, .create = true, .key_secret = o->key_secret,
        .iter_time_ms = o->iter_time_ms, .need_key = true,
    };
    BkRepo *r = NULL;
    DiskRun *d = calloc((size_t)(nsrc > 0 ? nsrc : 1), sizeof(*d));
    BkSrcDisk *sd = calloc((size_t)(nsrc > 0 ? nsrc : 1), sizeof(*sd));
    const char **use = calloc((size_t)(nsrc > 0 ? nsrc : 1), sizeof(*use));
    const char **keep = calloc((size_t)(nsrc > 0 ? BK_KEEP * nsrc : 1),
                               sizeof(*keep));
    BkSession ses = {
        .ops = o->qmp_socket ? &bk_online_source : &bk_offline_source,
        .o = o, .disks = sd, .ndisks = nsrc,
    };
    BkPoint p = { 0 };
    char *tmp = NULL, *final = NULL;
    bool opened = false, begun = false, listed = false;
    int ret;

    if (record) {
        *record = NULL;
    }
    if (!d || !sd || !use || !keep) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (nsrc < 1) {
        ret = error_setf(err, EINVAL, "no source to back up");
        goto out;
    }
    if (o->compress && o->key_secret) {
        ret = error_setf(err, EINVAL, "compression and encryption cannot be "
                         "combined (qcow2 does not compress encrypted "
                         "clusters)");
        goto out;
    }
    for (int i = 0; i < nsrc; i++) {
        d[i].spec = &src[i];
        d[i].src = &sd[i];
        sd[i].name = src[i].name;
        d[i].rec.name = src[i].disk ? strdup(src[i].disk)
                                    : default_disk_name(src[i].name);
        if (!d[i].rec.name) {
            ret = error_setf(err, ENOMEM, "out of memory");
            goto out;
        }
        if (!bk_disk_name_ok(d[i].rec.name)) {
            ret = error_setf(err, EINVAL, "'%s' cannot name a disk (letters, "
                             "digits, '-', '_', '.', '+', at most 64, not "
                             "starting with '.'): name it with --disk",
                             d[i].rec.name);
            goto out;
        }
        for (int k = 0; k < i; k++) {
            if (strcmp(d[k].rec.name, d[i].rec.name) == 0) {
                ret = error_setf(err, EINVAL, "two sources would be disk "
                                 "'%s': name them with --disk",
                                 d[i].rec.name);
                goto out;
            }
        }
    }
    ret = bk_repo_open(repo, &oa, &r, err);
    if (ret < 0) {
        goto out;
    }
    ses.r = r;
    if (r->encrypted && o->compress) {
        ret = error_setf(err, EINVAL, "%s: the repository is encrypted, and "
                         "qcow2 does not compress encrypted clusters",
                         r->path);
        goto out;
    }
    ret = bk_journal_replay(r, err);
    if (ret < 0) {
        goto out;
    }
    remove_stale_tmp(r);

    int64_t now = (int64_t)time(NULL);
    p.id = bk_repo_next_id(r, now);
    p.seq = r->npoints ? r->points[r->npoints - 1].seq + 1 : 1;
    p.time = now;
    p.mode = strdup(backup_mode_name(o->mode));
    p.origin = strdup(ses.ops->origin);
    if (!p.id || !p.mode || !p.origin ||
        asprintf(&tmp, "%s/%s%s", r->path, BK_TMP_PREFIX, p.id) < 0 ||
        asprintf(&final, "%s/%s", r->path, p.id) < 0) {
        tmp = final = NULL;
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (mkdir(tmp, 0755) < 0) {
        ret = error_setf(err, errno, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    ses.workdir = tmp;
    opened = true;
    ret = ses.ops->open(&ses, err);
    if (ret < 0) {
        goto out;
    }
    Progress pr = { o, 0, 0 };
    for (int i = 0; i < nsrc; i++) {
        d[i].rec.virtual_size = sd[i].size;
        d[i].rec.cluster_bits = BK_CLUSTER_BITS;
        d[i].rec.source = strdup(sd[i].name);
        d[i].rec.source_format = strdup(sd[i].format ? sd[i].format : "raw");
        if (!d[i].rec.source || !d[i].rec.source_format) {
            ret = error_setf(err, ENOMEM, "out of memory");
            goto out;
        }
        pr.total += sd[i].size;
    }
    for (int i = 0; i < nsrc; i++) {
        ret = plan_disk(r, &ses, i, &d[i], o->mode, p.id, err);
        if (ret < 0) {
            goto out;
        }
        use[i] = d[i].use_bitmap;
        BkPoint *last = bk_repo_last_with(r, d[i].rec.name);
        BkPoint *lroot = last ? bk_repo_chain_root(r, last, d[i].rec.name)
                              : NULL;
        const char **k = keep + BK_KEEP * i;
        k[0] = last ? last->id : NULL;
        k[1] = d[i].base ? d[i].base->id : NULL;
        k[2] = d[i].root_id;
        k[3] = lroot ? lroot->id : NULL;
    }
    /* The point in time and the bitmaps' rotation, every disk at once. */
    ret = ses.ops->begin(&ses, p.id, use, keep, err);
    begun = true;
    if (ret < 0) {
        goto out;
    }
    for (int i = 0; i < nsrc; i++) {
        if (sd[i].can_bitmaps) {
            d[i].rec.bitmap = bk_bitmap_name(r->uuid, p.id);
        }
        ret = store_disk(r, &d[i], tmp, o, &pr, err);
        if (ret < 0) {
            goto out;
        }
        pr.before += d[i].rec.virtual_size;
    }
    p.ndisks = nsrc;
    p.disks = calloc((size_t)nsrc, sizeof(*p.disks));
    if (!p.disks) {
        p.ndisks = 0;
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < nsrc; i++) {
        p.disks[i] = d[i].rec;
        memset(&d[i].rec, 0, sizeof(d[i].rec));
    }
    if (ses.record_extra) {
        p.extra = json_incref(ses.record_extra);
    }
    ret = bk_point_save(tmp, &p, false, err);
    if (ret < 0) {
        goto out;
    }
    if ((ret = bk_fsync_dir(tmp)) < 0 || rename(tmp, final) < 0 ||
        (ret = bk_fsync_dir(r->path)) < 0) {
        ret = ret < 0 ? ret : -errno;
        ret = error_setf(err, -ret, "%s: cannot list the point: %s", final,
                         strerror(-ret));
        goto out;
    }
    listed = true;
    /* What the source no longer needs: a failure here leaves an extra
     * bitmap, which the next backup removes; the point stands. */
    for (int i = 0; i < nsrc; i++) {
        const char **k = keep + BK_KEEP * i;
        k[0] = p.id;
        k[1] = d[i].root_id;
        k[2] = k[3] = NULL;
    }
    Error e = { 0 };
    if (ses.ops->finish(&ses, keep, &e) < 0) {
        note("%s", e.msg);
    }
    if (record) {
        *record = bk_point_to_json(&p);
    }
    ret = 0;
out:
    if (!listed && begun) {
        ses.ops->abort(&ses, p.id);
    }
    if (opened) {
        ses.ops->close(&ses);
    }
    if (!listed && tmp) {
        bk_remove_tree(tmp);
    }
    for (int i = 0; d && i < nsrc; i++) {
        free(d[i].root_id);
        bk_disk_clear(&d[i].rec);
    }
    free(d);
    free(sd);
    free(use);
    free(keep);
    json_decref(ses.record_extra);
    bk_point_clear(&p);
    free(tmp);
    free(final);
    bk_repo_close(r);
    return ret;
}
