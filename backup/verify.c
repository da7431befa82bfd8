/*
 * verify.c - backup_verify: every point's every disk against its
 * checksums, reading each stored byte once.
 *
 * For a point P and disk D, with M(P) the checksum map of what D reads
 * as at P:
 *   - the map file is the one the record names (its digest) and decodes
 *     whole to the record's content digest;
 *   - P's qcow2 layer passes check (no corruption; leaks are harmless),
 *     has the record's size and names the record's parent as backing;
 *   - every cluster P's layer holds hashes to M(P);
 *   - every cluster it does not hold reads through to the parent, so
 *     M(P) must equal M(parent) there (zeroes for a full).
 * By induction over the chain, every point then reads exactly as its
 * map says, without reading any point's whole disk.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backup/backup.h"
#include "backup/engine.h"
#include "backup/layers.h"

static int layer_select(void *opaque, uint64_t off, uint64_t len,
                        uint64_t *pnum, Error *err)
{
    BlockNode *n = opaque;
    int s = block_status(n, off, len, pnum, NULL, NULL);
    if (s < 0) {
        return error_setf(err, -s, "cannot get the block status at byte "
                          "%llu: %s", (unsigned long long)off, strerror(-s));
    }
    return (s & BLOCK_STATUS_ALLOCATED) != 0;
}

static void check_message(void *opaque, const char *line)
{
    char *first = opaque;
    if (!first[0]) {
        snprintf(first, 256, "%s", line);
    }
}

typedef struct VProgress {
    const VerifyOptions *o;
    uint64_t before, total;
} VProgress;

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    VProgress *v = opaque;
    (void)total;
    if (v->o->progress) {
        v->o->progress(v->o->progress_opaque, v->before + done, v->total);
    }
}

/* Checks one disk of one point; *problem (malloc'd) says what is wrong,
 * NULL when nothing is.  Returns < 0 only when the check itself cannot
 * go on (out of memory, interrupted). */
static int verify_disk(BkRepo *r, BkPoint *p, BkDiskRec *d, bool journal,
                       const VerifyOptions *o, VProgress *vp,
                       char **problem, Error *err)
{
    char *qcow = bk_disk_file(r, p->id, d->name, "qcow2");
    char *sums = bk_disk_file(r, p->id, d->name, "sums");
    char *psums = NULL, *want_backing = NULL;
    const BkKey *key = r->have_key ? &r->key : NULL;
    BlockNode *layer = NULL;
    SumsReader *ref = NULL, *ref2 = NULL;
    Error e = { 0 };
    int ret = 0, pr = 0;

    *problem = NULL;
    if (!qcow || !sums) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    BkHash content;
    if (sums_file_check(sums, key, &d->sums_digest, &content, &e) < 0) {
        pr = asprintf(problem, "its checksum map: %s", e.msg);
        goto out;
    }
    if (!bk_hash_eq(&content, &d->content_digest)) {
        pr = asprintf(problem, "its checksum map is not the one its record "
                      "names");
        goto out;
    }
    layer = bk_layer_open(r, p->id, d->name, 0, &e);
    if (!layer) {
        pr = asprintf(problem, "%s", e.msg);
        goto out;
    }
    char first[256] = "";
    BlockCheckResult cr;
    memset(&cr, 0, sizeof(cr));
    cr.message = check_message;
    cr.message_opaque = first;
    if (block_check(layer, &cr, 0, &e) < 0) {
        pr = asprintf(problem, "its qcow2 file cannot be checked: %s", e.msg);
        goto out;
    }
    if (cr.corruptions || cr.check_errors) {
        pr = asprintf(problem, "its qcow2 file is corrupt (%d errors%s%s)",
                      cr.corruptions + cr.check_errors, first[0] ? ": " : "",
                      first);
        goto out;
    }
    if ((uint64_t)block_get_length(layer) != d->virtual_size) {
        pr = asprintf(problem, "its qcow2 file is not of the recorded size");
        goto out;
    }
    const char *bf = block_node_backing_file(layer);
    want_backing = d->parent ? bk_layer_backing_name(d->parent, d->name)
                             : NULL;
    if (!journal && ((bf && *bf) != (want_backing != NULL) ||
                     (want_backing && strcmp(bf, want_backing) != 0))) {
        pr = asprintf(problem, "its qcow2 file's backing file is '%s', not "
                      "'%s'", bf ? bf : "", want_backing ? want_backing : "");
        goto out;
    }
    if (sums_reader_open(sums, key, &ref, &e) < 0) {
        pr = asprintf(problem, "its checksum map: %s", e.msg);
        goto out;
    }
    if (d->parent) {
        psums = bk_disk_file(r, d->parent, d->name, "sums");
        if (!psums || sums_reader_open(psums, key, &ref2, &e) < 0) {
            pr = asprintf(problem, "its parent's checksum map: %s",
                          psums ? e.msg : "out of memory");
            goto out;
        }
    }
    char what[256];
    snprintf(what, sizeof(what), "point %s disk %s", p->id, d->name);
    BkJob job = {
        .action = BK_ACT_CHECK,
        .src = layer,
        .size = d->virtual_size,
        .cluster_bits = d->cluster_bits,
        .seed = r->seed,
        .select = layer_select,
        .select_opaque = layer,
        .ref = ref,
        .ref2 = ref2,
        .dst_fd = -1,
        .workers = o->workers,
        .progress = progress_cb,
        .progress_opaque = vp,
        .cancel = o->cancel,
        .what = what,
    };
    BkStats st;
    ret = bk_engine_run(&job, &st, &e);
    if (ret == -ECANCELED || ret == -ENOMEM) {
        *err = e;
        goto out;
    }
    if (ret < 0) {
        ret = 0;
        pr = asprintf(problem, "%s", e.msg);
        goto out;
    }
    if (st.mismatches) {
        pr = asprintf(problem, "%llu cluster%s do%s not match the checksums "
                      "(the first at byte %llu)",
                      (unsigned long long)st.mismatches,
                      st.mismatches == 1 ? "" : "s",
                      st.mismatches == 1 ? "es" : "",
                      (unsigned long long)st.first_mismatch);
    }
out:
    if (pr < 0) {
        *problem = NULL;
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    sums_reader_close(ref);
    sums_reader_close(ref2);
    block_close(layer);
    free(qcow);
    free(sums);
    free(psums);
    free(want_backing);
    return ret;
}

int backup_verify(const char *repo, const VerifyOptions *o, json_t **report,
                  Error *err)
{
    BkOpenArgs oa = {
        .mode = BK_OPEN_READ, .key_secret = o->key_secret, .need_key = true,
    };
    BkRepo *r = NULL;
    json_t *rep = json_array();
    char *first_bad = NULL;
    int ret, nbad = 0;

    if (report) {
        *report = NULL;
    }
    ret = bk_repo_open(repo, &oa, &r, err);
    if (ret < 0) {
        json_decref(rep);
        return ret;
    }
    char *jp = bk_repo_file(r, NULL, BK_JOURNAL);
    struct stat st;
    bool journal = jp && stat(jp, &st) == 0;
    free(jp);
    if (journal) {
        block_report(BLOCK_REPORT_WARNING, "%s: a prune was interrupted; the "
                     "next backup or prune finishes it", r->path);
    }
    if (o->point && !bk_repo_find(r, o->point)) {
        ret = error_setf(err, ENOENT, "%s: no point '%s'", r->path, o->point);
        goto out;
    }
    VProgress vp = { o, 0, 0 };
    for (int i = 0; i < r->npoints; i++) {
        for (int k = 0; k < r->points[i].ndisks; k++) {
            if (!o->point || strcmp(o->point, r->points[i].id) == 0) {
                vp.total += r->points[i].disks[k].virtual_size;
            }
        }
    }
    for (int i = 0; i < r->ndamaged && !o->point; i++) {
        json_array_append_new(rep, json_pack("{s:s, s:s, s:[s]}", "id",
                              r->damaged[i], "status", "damaged", "problems",
                              "its record (point.json) is missing or cannot "
                              "be read"));
        if (!nbad++) {
            if (asprintf(&first_bad, "point %s: its record (point.json) is "
                         "missing or cannot be read", r->damaged[i]) < 0) {
                first_bad = NULL;
            }
        }
    }
    for (int i = 0; i < r->npoints; i++) {
        BkPoint *p = &r->points[i];
        if (o->point && strcmp(o->point, p->id) != 0) {
            continue;
        }
        json_t *problems = json_array();
        for (int k = 0; k < p->ndisks; k++) {
            char *problem = NULL;
            ret = verify_disk(r, p, &p->disks[k], journal, o, &vp, &problem,
                              err);
            if (ret < 0) {
                json_decref(problems);
                goto out;
            }
            vp.before += p->disks[k].virtual_size;
            if (problem) {
                char *line = NULL;
                if (asprintf(&line, "disk %s: %s", p->disks[k].name,
                             problem) >= 0) {
                    json_array_append_new(problems, json_string(line));
                    if (!nbad++ &&
                        asprintf(&first_bad, "point %s %s", p->id, line) < 0) {
                        first_bad = NULL;
                    }
                    free(line);
                }
                free(problem);
            }
        }
        bool ok = json_array_size(problems) == 0;
        json_array_append_new(rep, json_pack("{s:s, s:s, s:o}", "id", p->id,
                                             "status", ok ? "ok" : "damaged",
                                             "problems", problems));
    }
    if (nbad) {
        ret = error_setf(err, EILSEQ, "%s: %d damaged point%s: %s", r->path,
                         nbad, nbad == 1 ? "" : "s",
                         first_bad ? first_bad : "");
    }
out:
    if (report && (ret == 0 || ret == -EILSEQ)) {
        *report = rep;
    } else {
        json_decref(rep);
    }
    free(first_bad);
    bk_repo_close(r);
    return ret;
}
