/*
 * prune.c - removing points (retention), crash-safely.
 *
 * Removing a point P whose disk layer is the parent of a kept point C
 * merges P into C: every cluster P's layer holds and C's does not is
 * copied into C, C's backing file becomes P's parent's, then C's record
 * says so.  C reads the same before, during and after (the clusters it
 * gains are the ones it was reading through P), so readers and QEMU
 * never see a change.  Points are removed newest first, so a removed
 * point's children are all kept or already re-parented.
 *
 * The plan (which points go, in which order) is written to
 * REPO/journal.json before anything changes, and every step is
 * idempotent and found again from the records: a point still listed is
 * still to be removed; a child still naming it is still to be merged
 * (copying again what was copied changes nothing; its header is set
 * again).  So a killed prune is finished by the next backup or prune,
 * which replays the journal.  The order of each merge: C's data and
 * flush, C's header, C's record; then P is unlisted by renaming its
 * directory to a .tmp- name, then deleted.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup/backup.h"
#include "backup/journal.h"
#include "backup/layers.h"
#include "backup/retention.h"

#define MERGE_CHUNK (1u << 20)

/* Copies into c what p's layer holds and c's does not, over [0, end). */
static int merge_data(BlockNode *p, BlockNode *c, uint64_t end,
                      bool compress, uint64_t cluster, Error *err)
{
    uint8_t *buf = malloc(MERGE_CHUNK);
    uint64_t off = 0;
    int ret = 0;
    if (!buf) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    while (off < end && ret >= 0) {
        uint64_t pn = 0, cn = 0;
        int ps = block_status(p, off, end - off, &pn, NULL, NULL);
        if (ps < 0) {
            ret = ps;
            break;
        }
        int cs = block_status(c, off, pn, &cn, NULL, NULL);
        if (cs < 0) {
            ret = cs;
            break;
        }
        uint64_t n = cn < pn ? cn : pn;
        if (n > MERGE_CHUNK) {
            n = MERGE_CHUNK;
        }
        if ((ps & BLOCK_STATUS_ALLOCATED) && !(cs & BLOCK_STATUS_ALLOCATED)) {
            if (ps & BLOCK_STATUS_ZERO) {
                ret = block_write_zeroes(c, off, n, 0);
            } else {
                ret = block_pread(p, off, n, buf);
                for (uint64_t o = 0; ret >= 0 && o < n; o += cluster) {
                    uint64_t l = n - o < cluster ? n - o : cluster;
                    int flags = compress && l == cluster &&
                                off % cluster == 0 ? BLOCK_REQ_COMPRESSED
                                                   : 0;
                    ret = block_pwrite(c, off + o, l, buf + o, flags);
                    if (ret == -ENOTSUP && flags) {
                        ret = block_pwrite(c, off + o, l, buf + o, 0);
                    }
                }
            }
        }
        off += n;
    }
    free(buf);
    if (ret < 0) {
        return error_setf(err, -ret, "error while merging at byte %llu: %s",
                          (unsigned long long)off, strerror(-ret));
    }
    return 0;
}

/* Merges point p's disk into its child c (see the top of the file). */
static int merge_into(BkRepo *r, BkPoint *p, BkPoint *c, const char *disk,
                      Error *err)
{
    BkDiskRec *pd = bk_point_disk(p, disk), *cd = bk_point_disk(c, disk);
    BkPoint *pp = pd->parent ? bk_repo_find(r, pd->parent) : NULL;
    BlockNode *pl = NULL, *cl = NULL;
    char *backing = NULL, *dir = NULL;
    int ret;

    if (pd->parent && !pp) {
        return error_setf(err, ENOENT, "point %s disk %s: its parent point "
                          "%s is missing", p->id, disk, pd->parent);
    }
    pl = bk_layer_open(r, p->id, disk, 0, err);
    cl = pl ? bk_layer_open(r, c->id, disk, BLOCK_O_RDWR, err) : NULL;
    if (!cl) {
        ret = -(err->code ? err->code : EIO);
        goto out;
    }
    uint64_t end = cd->virtual_size < pd->virtual_size ? cd->virtual_size
                                                       : pd->virtual_size;
    ret = merge_data(pl, cl, end, cd->compressed,
                     1ull << cd->cluster_bits, err);
    /* Past p's end c read zeroes through p; p's parent may hold data
     * there, so c must hold the zeroes itself. */
    if (ret == 0 && pp && cd->virtual_size > pd->virtual_size) {
        uint64_t off = pd->virtual_size;
        while (ret == 0 && off < cd->virtual_size) {
            uint64_t n = 0;
            int s = block_status(cl, off, cd->virtual_size - off, &n, NULL,
                                 NULL);
            if (s < 0) {
                ret = error_setf(err, -s, "%s", strerror(-s));
                break;
            }
            if (!(s & BLOCK_STATUS_ALLOCATED)) {
                int w = block_write_zeroes(cl, off, n, 0);
                if (w < 0) {
                    ret = error_setf(err, -w, "%s", strerror(-w));
                }
            }
            off += n;
        }
    }
    if (ret == 0) {
        int f = block_flush(cl);
        if (f < 0) {
            ret = error_setf(err, -f, "flush failed: %s", strerror(-f));
        }
    }
    if (ret == 0) {
        backing = pp ? bk_layer_backing_name(pp->id, disk) : NULL;
        ret = block_change_backing_file(cl, backing, pp ? "qcow2" : NULL,
                                        err);
    }
    if (ret < 0) {
        error_prefixf(err, "merging point %s into %s (disk %s)", p->id,
                      c->id, disk);
        goto out;
    }
    /* The record last: from here on c's parent is p's parent. */
    free(cd->parent);
    cd->parent = pp ? strdup(pp->id) : NULL;
    if (!pp) {
        free(cd->type);
        cd->type = strdup("full");
    }
    if ((pp && !cd->parent) || !cd->type ||
        asprintf(&dir, "%s/%s", r->path, c->id) < 0) {
        dir = NULL;
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    ret = bk_point_save(dir, c, true, err);
out:
    block_close(cl);
    block_close(pl);
    free(backing);
    free(dir);
    return ret;
}

/* Removes point id: merges it into its children (every disk), unlists
 * it and deletes its files.  Idempotent (see the top of the file). */
static int remove_point(BkRepo *r, const char *id, Error *err)
{
    BkPoint *p = bk_repo_find(r, id);
    int ret = 0;
    if (!p) {
        return 0;          /* done before */
    }
    for (int k = 0; k < p->ndisks && ret == 0; k++) {
        const char *disk = p->disks[k].name;
        for (int i = 0; i < r->npoints && ret == 0; i++) {
            BkDiskRec *d = bk_point_disk(&r->points[i], disk);
            if (d && d->parent && strcmp(d->parent, id) == 0) {
                ret = merge_into(r, p, &r->points[i], disk, err);
            }
        }
    }
    if (ret < 0) {
        return ret;
    }
    char *dir = NULL, *gone = NULL;
    if (asprintf(&dir, "%s/%s", r->path, id) < 0 ||
        asprintf(&gone, "%s/%sdel-%s", r->path, BK_TMP_PREFIX, id) < 0) {
        free(dir);
        return error_setf(err, ENOMEM, "out of memory");
    }
    bk_remove_tree(gone);
    if (rename(dir, gone) < 0 || bk_fsync_dir(r->path) < 0) {
        ret = error_setf(err, errno, "%s: cannot remove: %s", dir,
                         strerror(errno));
    } else {
        bk_remove_tree(gone);
    }
    free(dir);
    free(gone);
    if (ret == 0) {
        ret = bk_repo_reload(r, err);
    }
    return ret;
}

static char *journal_path(BkRepo *r)
{
    return bk_repo_file(r, NULL, BK_JOURNAL);
}

static int run_journal(BkRepo *r, json_t *ids, Error *err)
{
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        if (!json_is_string(v)) {
            return error_setf(err, EINVAL, "%s: bad %s", r->path,
                              BK_JOURNAL);
        }
        int ret = remove_point(r, json_string_value(v), err);
        if (ret < 0) {
            return ret;
        }
    }
    char *jp = journal_path(r);
    int ret = 0;
    if (!jp) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (unlink(jp) < 0 && errno != ENOENT) {
        ret = error_setf(err, errno, "%s: %s", jp, strerror(errno));
    } else {
        ret = bk_fsync_dir(r->path);
        if (ret < 0) {
            ret = error_setf(err, -ret, "%s: %s", r->path, strerror(-ret));
        }
    }
    free(jp);
    return ret;
}

int bk_journal_replay(BkRepo *r, Error *err)
{
    char *jp = journal_path(r);
    if (!jp) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (access(jp, F_OK) < 0) {
        free(jp);
        return 0;
    }
    json_error_t je;
    json_t *j = json_load_file(jp, JSON_REJECT_DUPLICATES, &je);
    free(jp);
    if (!j || !json_is_array(json_object_get(j, "remove"))) {
        json_decref(j);
        return error_setf(err, EINVAL, "%s: an interrupted prune left a "
                          "journal that cannot be read (%s)", r->path,
                          BK_JOURNAL);
    }
    int ret = bk_repo_lock_exclusive(r, err);
    if (ret == 0) {
        ret = bk_repo_reload(r, err);
    }
    if (ret == 0) {
        block_report(BLOCK_REPORT_WARNING, "%s: finishing a prune that was "
                     "interrupted", r->path);
        ret = run_journal(r, json_object_get(j, "remove"), err);
    }
    json_decref(j);
    return ret;
}

/* What removing the points not kept does, without doing it: the merges,
 * found by simulating the parent links (newest removed first, as
 * run_journal removes them). */
static json_t *plan_merges(BkRepo *r, const bool *keep)
{
    json_t *merges = json_array();
    json_t *par = json_object();     /* id -> {disk: parent id or null} */
    for (int i = 0; i < r->npoints; i++) {
        json_t *m = json_object();
        for (int k = 0; k < r->points[i].ndisks; k++) {
            const char *pa = r->points[i].disks[k].parent;
            json_object_set_new(m, r->points[i].disks[k].name,
                                pa ? json_string(pa) : json_null());
        }
        json_object_set_new(par, r->points[i].id, m);
    }
    for (int i = r->npoints - 1; i >= 0; i--) {
        if (keep[i]) {
            continue;
        }
        BkPoint *p = &r->points[i];
        json_t *mine = json_object_get(par, p->id);
        for (int c = i + 1; c < r->npoints; c++) {
            json_t *theirs = json_object_get(par, r->points[c].id);
            if (!theirs) {
                continue;              /* removed already */
            }
            for (int k = 0; k < p->ndisks; k++) {
                const char *disk = p->disks[k].name;
                json_t *cp = json_object_get(theirs, disk);
                if (json_is_string(cp) &&
                    strcmp(json_string_value(cp), p->id) == 0) {
                    json_array_append_new(merges, json_pack(
                        "{s:s, s:s, s:s}", "disk", disk, "from", p->id,
                        "into", r->points[c].id));
                    json_object_set(theirs, disk,
                                    json_object_get(mine, disk));
                }
            }
        }
        json_object_del(par, p->id);
    }
    json_decref(par);
    return merges;
}

int backup_prune(const char *repo, const PruneOptions *o, json_t **result,
                 Error *err)
{
    BkOpenArgs oa = {
        .mode = BK_OPEN_WRITE, .key_secret = o->key_secret,
        .need_key = !o->dry_run,
    };
    BkRepo *r = NULL;
    bool *keep = NULL;
    json_t *res = NULL;
    int ret;

    if (result) {
        *result = NULL;
    }
    if (o->keep_last <= 0 && o->keep_daily <= 0 && o->keep_weekly <= 0 &&
        o->keep_monthly <= 0) {
        return error_setf(err, EINVAL, "no --keep-last, --keep-daily, "
                          "--keep-weekly or --keep-monthly given: refusing "
                          "to remove every point but the newest");
    }
    ret = bk_repo_open(repo, &oa, &r, err);
    if (ret < 0) {
        return ret;
    }
    if (!o->dry_run) {
        ret = bk_journal_replay(r, err);
        if (ret < 0) {
            goto out;
        }
    }
    keep = calloc((size_t)(r->npoints ? r->npoints : 1), sizeof(*keep));
    if (!keep) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    BkPolicy pol = { o->keep_last > 0 ? o->keep_last : 0,
                     o->keep_daily > 0 ? o->keep_daily : 0,
                     o->keep_weekly > 0 ? o->keep_weekly : 0,
                     o->keep_monthly > 0 ? o->keep_monthly : 0 };
    bk_retention(r, &pol, keep);
    json_t *kept = json_array(), *removed = json_array(), *ids = json_array();
    for (int i = 0; i < r->npoints; i++) {
        json_array_append_new(keep[i] ? kept : removed,
                              json_string(r->points[i].id));
    }
    /* Newest first: a removed point's children are then all kept. */
    for (int i = r->npoints - 1; i >= 0; i--) {
        if (!keep[i]) {
            json_array_append_new(ids, json_string(r->points[i].id));
        }
    }
    res = json_pack("{s:o, s:o, s:o, s:b}", "keep", kept, "remove", removed,
                    "merges", plan_merges(r, keep), "dry-run", o->dry_run);
    if (!res) {
        json_decref(ids);
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (!o->dry_run && json_array_size(ids)) {
        char *jp = journal_path(r);
        json_t *jr = json_pack("{s:O}", "remove", ids);
        ret = bk_repo_lock_exclusive(r, err);
        if (ret == 0) {
            ret = jp && jr ? bk_write_json_atomic(jp, jr, err)
                           : error_setf(err, ENOMEM, "out of memory");
        }
        json_decref(jr);
        free(jp);
        if (ret == 0) {
            ret = run_journal(r, ids, err);
        }
    }
    json_decref(ids);
out:
    if (ret == 0 && result) {
        *result = res;
    } else {
        json_decref(res);
    }
    free(keep);
    bk_repo_close(r);
    return ret;
}
