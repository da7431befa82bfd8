/*
 * amend.c - changing a qcow2 image's options in place (qemu-img amend):
 * compat=0.10 <-> 1.1, refcount_bits, lazy_refcounts, data_file,
 * data_file_raw, size, and (through crypto.c) the LUKS key slots.
 *
 * Every option is parsed and every change checked against the image
 * before the first byte is written, so a refused amend leaves the file
 * as it was.  The key slots change first (a wrong secret is the likeliest
 * failure), then the rest in an order where each step only needs what
 * the earlier ones made possible: amend_upgrade, refcount width, data file,
 * lazy refcounts, size, and amend_downgrade last.
 *
 * Here: the options, the plan and its checks, the small header changes
 * (data file, lazy refcounts) and the order of the steps.  The version
 * changes are in amend-compat.c, the refcount width in
 * amend-refcount-bits.c, and the crash-safe header rewrite they use in
 * header-write.c (qcow2_write_header_switch).
 *
 * Crash safety: each header change is one switch that a crash leaves
 * old or new; lazy refcounts are turned off only once the refcounts are
 * consistent on disk and the dirty bit is clear.
 * All the metadata work runs with s->lock held.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/amend-int.h"

const BlockCreateOpt qcow2_amend_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size", NULL },
    { "compat", OPT_STRING,
      "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "backing_file", OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", OPT_STRING, "Image format of the base image", NULL },
    { "data_file", OPT_STRING, "File name of an external data file", NULL },
    { "data_file_raw", OPT_BOOL,
      "The external data file must stay valid as a raw image", NULL },
    { "encrypt.new-secret", OPT_STRING, "New secret to set in the matching "
      "keyslots. Empty string to erase", NULL },
    { "encrypt.state", OPT_STRING, "Select new state of affected keyslots "
      "(active/inactive)", NULL },
    { "encrypt.old-secret", OPT_STRING,
      "Select all keyslots that match this password", NULL },
    { "encrypt.keyslot", OPT_NUMBER,
      "Select a single keyslot to modify explicitly", NULL },
    { "encrypt.iter-time", OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds", NULL },
    { "lazy_refcounts", OPT_BOOL, "Postpone refcount updates", NULL },
    { "refcount_bits", OPT_NUMBER, "Width of a reference count entry in bits",
      NULL },
    { NULL, 0, NULL, NULL },
};

/* What the options ask for; -1 (or false) = leave as it is. */
typedef struct AmendPlan {
    int version;
    int refcount_order;
    int lazy;
    bool set_data_file;
    const char *data_file;     /* "" removes the name */
    int data_file_raw;
    uint64_t size;             /* 0: unchanged, as in qemu-img */
    KVList crypto;             /* encrypt.* without the prefix */
} AmendPlan;

void amend_progress_report(AmendProgress *p, uint64_t done, uint64_t total)
{
    if (!p->fn || p->steps == 0) {
        return;
    }
    const uint64_t unit = 10000;
    uint64_t part = total ? done * unit / total : unit;
    if (part > unit) {
        part = unit;
    }
    p->fn(p->opaque, (uint64_t)p->step * unit + part,
          (uint64_t)p->steps * unit);
}

static void progress_step_done(AmendProgress *p)
{
    amend_progress_report(p, 1, 1);
    p->step++;
}

/* ------------------------------------------------------------------ */
/* Parsing and checking                                                */

static bool is_create_only(const char *key)
{
    for (int i = 0; qcow2_create_opts[i].name; i++) {
        if (strcmp(qcow2_create_opts[i].name, key) == 0) {
            return true;
        }
    }
    return false;
}

static bool is_amend_opt(const char *key)
{
    for (int i = 0; qcow2_amend_opts[i].name; i++) {
        if (strcmp(qcow2_amend_opts[i].name, key) == 0) {
            return true;
        }
    }
    return false;
}

static int parse_bool_opt(const char *key, const char *v, int *out,
                          Error *err)
{
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
        *out = 1;
    } else if (!strcmp(v, "off") || !strcmp(v, "false") ||
               !strcmp(v, "no")) {
        *out = 0;
    } else {
        return error_setf(err, EINVAL, "Parameter '%s' expects 'on' or "
                          "'off'", key);
    }
    return 0;
}

static int parse_number_opt(const char *key, const char *v, uint64_t *out,
                            Error *err)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 0);
    if (!*v || *end || errno || v[0] == '-') {
        return error_setf(err, EINVAL, "Parameter '%s' expects a number",
                          key);
    }
    *out = x;
    return 0;
}

/* Reads every option into plan (the last of repeated keys wins), refusing
 * unknown ones and bad values. */
static int parse_plan(KVList *opts, AmendPlan *plan, Error *err)
{
    plan->version = -1;
    plan->refcount_order = -1;
    plan->lazy = -1;
    plan->data_file_raw = -1;

    for (size_t i = 0; i < opts->n; i++) {
        const char *key = opts->items[i].key;
        const char *v = opts->items[i].value ? opts->items[i].value : "";
        int ret = 0;

        opts->items[i].used = true;
        if (!is_amend_opt(key)) {
            if (is_create_only(key)) {
                return error_setf(err, EINVAL, "Invalid parameter '%s': "
                                  "This option is only supported for image "
                                  "creation", key);
            }
            return error_setf(err, EINVAL, "Invalid parameter '%s'", key);
        }
        if (strcmp(key, "compat") == 0) {
            if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
                plan->version = 2;
            } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
                plan->version = 3;
            } else {
                return error_setf(err, EINVAL, "Unknown compatibility level "
                                  "%s", v);
            }
        } else if (strcmp(key, "refcount_bits") == 0) {
            uint64_t bits = 0;
            ret = parse_number_opt(key, v, &bits, err);
            if (ret < 0) {
                return ret;
            }
            if (bits == 0 || bits > 64 || (bits & (bits - 1))) {
                return error_setf(err, EINVAL, "Refcount width must be a "
                                  "power of two and may not exceed 64 bits");
            }
            int order = 0;
            while ((1ull << order) < bits) {
                order++;
            }
            plan->refcount_order = order;
        } else if (strcmp(key, "lazy_refcounts") == 0) {
            ret = parse_bool_opt(key, v, &plan->lazy, err);
        } else if (strcmp(key, "data_file_raw") == 0) {
            ret = parse_bool_opt(key, v, &plan->data_file_raw, err);
        } else if (strcmp(key, "data_file") == 0) {
            plan->set_data_file = true;
            plan->data_file = v;
        } else if (strcmp(key, "size") == 0) {
            if (parse_size(v, &plan->size) < 0) {
                return error_setf(err, EINVAL, "Parameter 'size' expects a "
                                  "non-negative number below 2^64 (optional "
                                  "suffix k, M, G, T, P or E)");
            }
        } else if (strcmp(key, "backing_file") == 0 ||
                   strcmp(key, "backing_fmt") == 0) {
            /* qemu-img 7.2 refuses these outright, unchanged or not. */
            return error_setf(err, ENOTSUP, "Cannot amend the backing file: "
                              "use 'imgtool rebase' instead");
        } else if (strncmp(key, "encrypt.", 8) == 0) {
            /* qcow2_crypto_amend checks these values as qemu-img does
             * (a negative keyslot is shown wrapped to 32 bits). */
            if (kvlist_set(&plan->crypto, key + 8, v) < 0) {
                ret = error_setf(err, ENOMEM, "out of memory");
            }
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Bitmaps loaded or on disk, or a bitmaps extension even when the
 * autoclear bit calls it stale (it would otherwise be carried into a v2
 * header). */
static bool has_bitmaps(Qcow2State *s)
{
    return qcow2_has_bitmaps(s) ||
           (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) ||
           qcow2_find_ext(s, QCOW2_EXT_BITMAPS);
}

static int find_compressed(Qcow2State *s, uint64_t l2_offset, void *opaque)
{
    bool *found = opaque;
    uint8_t *t;
    int ret = qcow2_cache_get(&s->l2_cache, l2_offset, &t);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->l2_entries && !*found; i++) {
        Qcow2L2Entry e;
        qcow2_decode_l2_entry(s, qcow2_l2_get_entry(s, t, i),
                              qcow2_l2_get_bitmap(s, t, i), &e);
        *found = e.type == QCOW2_CLUSTER_COMPRESSED;
    }
    qcow2_cache_put(&s->l2_cache, &t);
    return 0;
}

/* Everything that would stop the plan, checked before any change. */
static int check_plan(BlockNode *n, AmendPlan *p, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int target = p->version > 0 ? p->version : (int)s->version;
    int order = p->refcount_order >= 0 ? p->refcount_order
                                       : (int)s->refcount_order;

    if (s->read_only) {
        return error_setf(err, EACCES, "image is opened read-only");
    }
    if (target < 3 && order != 4) {
        if (p->version == 2) {
            return error_setf(err, EINVAL, "compat=0.10 requires "
                              "refcount_bits=16");
        }
        return error_setf(err, EINVAL, "Refcount widths other than 16 bits "
                          "require compatibility level 1.1 or above (use "
                          "compat=1.1 or greater)");
    }
    if (target < 3 && p->lazy == 1) {
        return error_setf(err, EINVAL, "Lazy refcounts only supported with "
                          "compatibility level 1.1 and above (use compat=1.1 "
                          "or greater)");
    }
    if (p->set_data_file && !s->has_data_file) {
        return error_setf(err, EINVAL, "data-file can only be set for images "
                          "that use an external data file");
    }
    if (p->data_file_raw == 1 && !s->data_file_raw) {
        return error_setf(err, EINVAL, "data-file-raw cannot be set on "
                          "existing images");
    }
    if (p->crypto.n && s->crypt_method == QCOW2_CRYPT_NONE) {
        return error_setf(err, EINVAL, "Can't amend encryption options - "
                          "encryption not present");
    }
    if (p->size && p->size % 512) {
        return error_setf(err, EINVAL, "The new size must be a multiple of "
                          "512");
    }
    if (p->size && p->size != s->size && s->nb_snapshots && target < 3) {
        return error_setf(err, ENOTSUP, "Can't resize a v2 image which has "
                          "snapshots");
    }
    if (target == 2 && s->version >= 3) {
        if (s->has_data_file) {
            return error_setf(err, ENOTSUP, "Cannot downgrade an image with "
                              "a data file");
        }
        uint64_t bad = s->incompatible_features &
                       ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_COMPRESSION);
        if (bad) {
            return error_setf(err, ENOTSUP, "Cannot downgrade an image with "
                              "incompatible features 0x%" PRIx64 " set", bad);
        }
        if (has_bitmaps(s)) {
            /* qemu-img 7.2 leaves them behind as leaked clusters and an
             * extension v2 readers mistrust; refuse instead. */
            return error_setf(err, ENOTSUP, "Cannot downgrade an image with "
                              "persistent dirty bitmaps (remove them first)");
        }
        if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
            bool found = false;
            pthread_mutex_lock(&s->lock);
            int ret = amend_walk_all_l2(s, find_compressed, &found, NULL);
            pthread_mutex_unlock(&s->lock);
            if (ret < 0) {
                return error_setf(err, -ret, "cannot read the L2 tables: %s",
                                  strerror(-ret));
            }
            if (found) {
                return error_setf(err, ENOTSUP, "Cannot downgrade an image "
                                  "with zstd compression type and existing "
                                  "compressed clusters");
            }
        }
    }
    return 0;
}

/* Everything cached on disk, refcounts consistent. */
int amend_settle(Qcow2State *s, Error *err)
{
    int ret = qcow2_flush_caches(s);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot write back metadata: %s",
                          strerror(-ret));
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Small header changes                                                */

static int set_data_file(Qcow2State *s, AmendPlan *p, Error *err)
{
    bool name_changes = p->set_data_file &&
        strcmp(p->data_file, s->data_file_name ? s->data_file_name : "") != 0;
    bool raw_off = p->data_file_raw == 0 && s->data_file_raw;

    if (!name_changes && !raw_off) {
        return 0;
    }
    int old_used = qcow2_header_used(s, err);
    if (old_used < 0) {
        return old_used;
    }
    char *old_name = s->data_file_name;
    uint64_t old_ac = s->autoclear_features;
    if (name_changes) {
        s->data_file_name = *p->data_file ? strdup(p->data_file) : NULL;
        if (*p->data_file && !s->data_file_name) {
            s->data_file_name = old_name;
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    if (raw_off) {
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    int ret = qcow2_write_header_switch(s, old_used, err);
    if (ret < 0) {
        if (name_changes) {
            free(s->data_file_name);
            s->data_file_name = old_name;
        }
        s->autoclear_features = old_ac;
        return ret;
    }
    if (name_changes) {
        free(old_name);
    }
    s->data_file_raw = s->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    return 0;
}

/* Lazy refcounts on: one compatible bit.  Off: the refcounts are made
 * consistent on disk and the dirty bit cleared before the bit goes, so
 * a crash never leaves a dirty image that does not say it may be. */
static int set_lazy(Qcow2State *s, bool on, Error *err)
{
    uint64_t v = on ? s->compatible_features | QCOW2_COMPAT_LAZY_REFCOUNTS
                    : s->compatible_features & ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    uint8_t b[8];
    int ret;

    if (v == s->compatible_features) {
        return 0;
    }
    if (!on) {
        ret = amend_settle(s, err);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY);
        if (ret < 0) {
            return error_setf(err, -ret, "cannot clear the dirty flag: %s",
                              strerror(-ret));
        }
        s->dirty_set = false;
    }
    qcow2_put_be64(b, v);
    ret = block_pwrite(block_file(s->node), QCOW2_HDR_COMPAT, 8, b, 0);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        return error_setf(err, -ret, "cannot write the qcow2 header: %s",
                          strerror(-ret));
    }
    s->compatible_features = v;
    s->lazy_refcounts = on;
    return 0;
}

/* ------------------------------------------------------------------ */

int qcow2_amend(BlockNode *n, KVList *opts, bool force,
                BlockProgressFn *progress, void *opaque, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    AmendPlan p = { 0 };
    AmendProgress prog = { .fn = progress, .opaque = opaque };
    int ret;

    ret = parse_plan(opts, &p, err);
    if (ret >= 0) {
        ret = check_plan(n, &p, err);
    }
    if (ret < 0) {
        kvlist_free(&p.crypto);
        return ret;
    }
    bool up = p.version == 3 && s->version < 3;
    bool down = p.version == 2 && s->version >= 3;
    bool refc = p.refcount_order >= 0 &&
                (uint32_t)p.refcount_order != s->refcount_order;
    bool resize = p.size && p.size != s->size;
    prog.steps = 1 + up + down + refc + resize + (p.crypto.n > 0);
    amend_progress_report(&prog, 0, 1);

    if (p.crypto.n) {
        /* First: the step most likely to be refused (a wrong secret)
         * runs before anything else has changed. */
        ret = qcow2_crypto_amend(n, &p.crypto, force, err);
        if (ret < 0) {
            goto out;
        }
        progress_step_done(&prog);
    }
    pthread_mutex_lock(&s->lock);
    while (s->inflight) {
        pthread_cond_wait(&s->inflight_cond, &s->lock);
    }
    if (up) {
        ret = amend_upgrade(s, err);
        if (ret < 0) {
            goto unlock;
        }
        progress_step_done(&prog);
    }
    if (refc) {
        ret = amend_change_refcount_order(s, (uint32_t)p.refcount_order, &prog,
                                          err);
        if (ret < 0) {
            goto unlock;
        }
        progress_step_done(&prog);
    }
    ret = set_data_file(s, &p, err);
    if (ret < 0) {
        goto unlock;
    }
    if (p.lazy >= 0 || down) {
        ret = set_lazy(s, p.lazy == 1 && !down, err);
        if (ret < 0) {
            goto unlock;
        }
    }
    progress_step_done(&prog);
    pthread_mutex_unlock(&s->lock);

    if (resize) {
        ret = block_truncate(n, p.size, false, PREALLOC_OFF, err);
        if (ret < 0) {
            goto out;
        }
        progress_step_done(&prog);
    }
    if (down) {
        pthread_mutex_lock(&s->lock);
        ret = amend_downgrade(s, &prog, err);
        if (ret < 0) {
            goto unlock;
        }
        progress_step_done(&prog);
        pthread_mutex_unlock(&s->lock);
    }
    ret = 0;
    goto out;

unlock:
    pthread_mutex_unlock(&s->lock);
out:
    kvlist_free(&p.crypto);
    return ret;
}
