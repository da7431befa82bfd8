/*
 * check.c - qcow2 consistency check and repair (`imgtool check [-r]`):
 * the driver's entry point and the passes it runs.
 *
 * One pass walks every structure that owns host clusters (header, active
 * and snapshot L1/L2 tables and the data they map, the snapshot table, the
 * refcount table and blocks, the encryption header, bitmap directory,
 * tables and data) and counts the references each host cluster should
 * have (check-walk.c, into the counts of check-counts.c).  Those counts
 * are compared with the stored refcounts (check-refcounts.c):
 * stored < counted is a corruption (the cluster could be handed out twice),
 * stored > counted a leak (wasted space only).  Refcount structures that
 * cannot be repaired in place are rebuilt from the counts
 * (check-rebuild.c).  Finally the COPIED flags of the active tables are
 * compared with the stored refcounts (check-copied.c).  Messages go to
 * the caller's message callback in qemu-img's words, since scripts and
 * people grep for them.
 *
 * Here: the passes (a repair is followed by a quiet pass that reports
 * what is left) and what every phase shares: messages, reads of the image
 * file that see a truncated tail as zeroes, and which places a repair may
 * write to.
 *
 * Repair keeps the driver's crash-safety rule (metadata never points at a
 * free cluster): leaks are lowered, too-low counts raised, COPIED flags set
 * only where the refcount on disk is already 1, and the refcount
 * structures, when rebuilt, are switched to in one header write.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/check-int.h"

void check_say(Check *c, const char *fmt, ...)
{
    va_list ap;
    char line[1024];

    if (c->quiet || !c->res->message) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    c->res->message(c->res->message_opaque, line);
}

/* Past the end of the file but before QCOW2_READ_LIMIT, reads return
 * zeroes; beyond it they fail, and so does qemu-img's check: metadata
 * there is "cannot check" (exit 1), not a corruption, in both tools. */
bool check_readable(uint64_t off, uint64_t len)
{
    return off <= QCOW2_READ_LIMIT && len <= QCOW2_READ_LIMIT - off;
}

/* Reads [off, off + len) of the image file; bytes past its end read as
 * zero, as a truncated image's missing tail does. */
int check_read_file(Check *c, uint64_t off, uint64_t len, void *buf)
{
    uint64_t avail = 0;

    if (!check_readable(off, len)) {
        return -EIO;
    }
    if (off < c->file_len) {
        avail = c->file_len - off < len ? c->file_len - off : len;
    }
    memset((uint8_t *)buf + avail, 0, len - avail);
    if (avail == 0) {
        return 0;
    }
    int ret = block_pread(block_file(c->n), off, avail, buf);
    return ret < 0 ? ret : 0;
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* c->rb_index as the refcount table is now; false when out of memory. */
static bool rb_index_fresh(Check *c)
{
    Qcow2State *s = c->s;
    if (c->rb_index_valid && c->rb_index_gen == s->refcount_table_gen) {
        return true;
    }
    free(c->rb_index);
    c->rb_index = NULL;
    c->rb_index_n = 0;
    c->rb_index_valid = false;
    uint64_t n = 0;
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        n += (s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK) != 0;
    }
    if (n) {
        c->rb_index = malloc(n * sizeof(*c->rb_index));
        if (!c->rb_index) {
            return false;
        }
        for (uint64_t i = 0, k = 0; i < s->refcount_table_size; i++) {
            uint64_t b = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
            if (b) {
                c->rb_index[k++] = b;
            }
        }
        qsort(c->rb_index, n, sizeof(*c->rb_index), cmp_u64);
    }
    c->rb_index_n = n;
    c->rb_index_gen = s->refcount_table_gen;
    c->rb_index_valid = true;
    return true;
}

/* Whether a table at [off, off + len) may be rewritten by a repair: a
 * damaged image can put it over the header, the refcount structures,
 * the snapshot table or the active L1 table (self: the table's own
 * offset, so the active L1 may rewrite itself), and writing there would
 * destroy what the repair is meant to keep.  Such damage stays reported;
 * qemu-img's overlap checks refuse those writes too. */
bool check_may_rewrite(Check *c, uint64_t off, uint64_t len, uint64_t self)
{
    Qcow2State *s = c->s;
    uint64_t cs = c->cs;
    uint64_t a = off / cs * cs;
    uint64_t alen = qcow2_align_up(off + len, cs) - a;

    if (!check_readable(off, len) || off < cs ||
        qcow2_ranges_overlap(a, alen, s->refcount_table_offset,
                             (uint64_t)s->refcount_table_clusters * cs) ||
        (s->nb_snapshots &&
         qcow2_ranges_overlap(a, alen, s->snapshots_offset,
                              qcow2_align_up(s->snapshots_size, cs))) ||
        (self != s->l1_table_offset &&
         qcow2_ranges_overlap(a, alen, s->l1_table_offset,
                              qcow2_align_up((uint64_t)s->l1_size * 8,
                                             cs)))) {
        return false;
    }
    if (!rb_index_fresh(c)) {
        return false;       /* out of memory: refuse, as for an overlap */
    }
    /* The first block that ends after a starts at or after a - cs + 1;
     * it overlaps when it starts before the range ends. */
    uint64_t lo = 0, hi = c->rb_index_n, from = a >= cs ? a - cs + 1 : 0;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (c->rb_index[mid] < from) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return !(lo < c->rb_index_n &&
             qcow2_ranges_overlap(a, alen, c->rb_index[lo], cs));
}

static void check_free(Check *c)
{
    for (uint64_t i = 0; i < c->nchunks; i++) {
        free(c->chunks[i]);
    }
    free(c->chunks);
    free(c->rb_state);
    free(c->l2buf);
    free(c->overflowed);
    free(c->rb_index);
}

/* One full check (and repair, per c->fix) into c->res. */
static int check_pass(BlockNode *n, BlockCheckResult *res, int fix,
                      bool quiet, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    Check c = { .n = n, .s = s, .res = res, .fix = fix, .quiet = quiet };
    BlockCheckResult before;
    int64_t len;
    int ret;

    /* The counters start afresh; where findings go stays the caller's. */
    BlockCheckResult blank = { .message = res->message,
                               .message_opaque = res->message_opaque };
    *res = blank;
    c.cs = s->cluster_size;
    len = block_get_length(block_file(n));
    if (len < 0) {
        return error_setf(err, (int)-len, "Could not get the image file "
                          "length: %s", strerror((int)-len));
    }
    c.file_len = (uint64_t)len;
    c.nb_clusters = (c.file_len + c.cs - 1) / c.cs;
    if (c.nb_clusters > INT32_MAX) {
        /* Same limit as qemu-img; it also bounds the work per pass. */
        return error_setf(err, EFBIG, "Image file of %" PRIu64 " clusters "
                          "is too large to check: File too large",
                          c.nb_clusters);
    }
    res->total_clusters = (s->size + c.cs - 1) / c.cs;

    /* A snapshot table qemu-img could not read either: no check can say
     * what its snapshots reference (counting without them would call
     * their clusters leaked, and -r would free them). */
    if (s->snapshot_damage[0] &&
        (s->snapshot_damage_kind == SNAPSHOT_DAMAGE_UNREADABLE ||
         (s->snapshot_damage_kind == SNAPSHOT_DAMAGE_UNREADABLE_UNLESS_CUT &&
          !(fix & BLOCK_FIX_ERRORS)))) {
        res->check_errors++;
        return error_setf(err, EINVAL, "Failed to read the snapshot table: "
                          "%s%s", s->snapshot_damage,
                          s->snapshot_damage_kind ==
                          SNAPSHOT_DAMAGE_UNREADABLE ? "" :
                          " (check -r all drops the entries from there on)");
    }

    c.l2buf = malloc(c.cs);
    c.rb_state = calloc(s->refcount_table_size ? s->refcount_table_size : 1,
                        1);
    if (!c.l2buf || !c.rb_state) {
        check_free(&c);
        return error_setf(err, ENOMEM, "Out of memory for the check");
    }

    ret = check_relocate_past_end(&c);
    if (ret < 0) {
        check_free(&c);
        return error_setf(err, -ret, "Cannot give the tables past the end "
                          "of the file new clusters: %s", strerror(-ret));
    }
    ret = check_count_all(&c);
    if (ret < 0) {
        check_free(&c);
        return error_setf(err, -ret, "Cannot count the references of %"
                          PRIu64 " clusters: %s", c.nb_clusters,
                          strerror(-ret));
    }

    if (s->snapshot_damage[0] && !(fix & BLOCK_FIX_ERRORS)) {
        /* What the unparsed snapshot entries reference looks leaked;
         * freeing it would break them for a reader that gets further. */
        fix = 0;
    }
    /* A dry comparison first: whether a rebuild is needed decides how the
     * differences are repaired. */
    before = *res;
    ret = check_compare_refcounts(&c, 0);
    if (ret < 0) {
        goto fail;
    }
    if (c.rebuild && (fix & BLOCK_FIX_ERRORS)) {
        check_say(&c, "Rebuilding refcount structure");
        ret = check_rebuild_refcounts(&c);
        if (ret < 0) {
            goto fail;
        }
        /* Every refcount difference found is settled by the rebuild. */
        res->corruptions_fixed += res->corruptions;
        res->corruptions = 0;
        res->leaks_fixed += res->leaks;
        res->leaks = 0;
    } else if (fix) {
        if (c.rebuild) {
            check_say(&c, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            check_free(&c);
            return error_setf(err, EIO, "the refcount "
                              "structures need a rebuild (use -r all)");
        }
        if (res->leaks != before.leaks ||
            res->corruptions != before.corruptions) {
            /* L2 entries cleared while counting must be on disk before
             * the refcounts of what they pointed at can drop. */
            ret = block_flush(block_file(n));
            if (ret < 0) {
                goto fail;
            }
            *res = before;
            ret = check_compare_refcounts(&c, fix);
            if (ret < 0) {
                goto fail;
            }
            ret = qcow2_flush_caches(s);
            if (ret < 0) {
                goto fail;
            }
        }
    }

    if (c.complete_snapshots) {
        /* Allocates: only once the refcounts can be trusted. */
        ret = qcow2_snapshot_complete_extra(s, c.snap_table_counted, err);
        if (ret < 0) {
            check_free(&c);
            return ret;
        }
    }
    ret = check_copied(&c);
    if (ret < 0) {
        goto fail;
    }
    res->image_end_offset = (int64_t)(c.highest * c.cs);
    res->bfi_valid = true;
    check_free(&c);
    return 0;

fail:
    check_free(&c);
    return error_setf(err, -ret, "%s", strerror(-ret));
}

int qcow2_check(BlockNode *n, BlockCheckResult *res, int fix, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret;

    if (fix && s->read_only) {
        return error_setf(err, EROFS, "Cannot repair a read-only image");
    }
    pthread_mutex_lock(&s->lock);
    /* The walk reads tables from the file: it must see what the caches
     * hold. */
    if (!s->read_only) {
        ret = qcow2_flush_caches(s);
        if (ret < 0) {
            pthread_mutex_unlock(&s->lock);
            return error_setf(err, -ret, "Could not flush the image "
                              "before checking it: %s", strerror(-ret));
        }
    }

    ret = check_pass(n, res, fix, false, err);
    if (ret == 0 && fix && (res->leaks_fixed || res->corruptions_fixed)) {
        BlockCheckResult again = { 0 };

        ret = qcow2_flush_caches(s);
        if (ret < 0) {
            error_setf(err, -ret, "Could not flush the repaired image: %s",
                       strerror(-ret));
        } else {
            /* Report what is left, as the repaired image now stands. */
            ret = check_pass(n, &again, 0, true, err);
        }
        if (ret == 0) {
            again.leaks_fixed = res->leaks_fixed;
            again.corruptions_fixed = res->corruptions_fixed;
            again.message = res->message;
            again.message_opaque = res->message_opaque;
            *res = again;
        }
    }
    if (ret == 0 && fix && res->check_errors == 0 && res->corruptions == 0) {
        ret = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY |
                                          QCOW2_INCOMPAT_CORRUPT);
        if (ret < 0) {
            error_setf(err, -ret, "Could not mark the image clean: %s",
                       strerror(-ret));
        } else {
            s->dirty_set = false;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}
