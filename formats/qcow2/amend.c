/*
 * amend.c - changing a qcow2 image's options in place (qemu-img amend):
 * compat=0.10 <-> 1.1, refcount_bits, lazy_refcounts, data_file,
 * data_file_raw, size, and (through crypto.c) the LUKS key slots.
 *
 * Every option is parsed and every change checked against the image
 * before the first byte is written, so a refused amend leaves the file
 * as it was.  The key slots change first (a wrong secret is the likeliest
 * failure), then the rest in an order where each step only needs what
 * the earlier ones made possible: upgrade, refcount width, data file,
 * lazy refcounts, size, and downgrade last.
 *
 * Crash safety, per change:
 *  - the header is rewritten so that a crash leaves the old or the new
 *    one (write_header_switch): a header that fits in one sector is one
 *    write; a longer one that replaces a one-sector header has its tail
 *    written and flushed before the first sector, and a long old header
 *    is first made a one-sector one by dropping its optional feature
 *    name table;
 *  - a new refcount width is built in clusters the old structures count
 *    as allocated, made durable, switched to by one write of the header
 *    sector, and only then are the old structures freed: a crash at any
 *    point leaves old or new refcounts with at most leaked clusters;
 *  - a downgrade first turns every zero cluster into something v2 reads
 *    as zeroes (a written zero cluster, or unallocated when no backing
 *    file shows through), each step safe on its own (zeroes durable
 *    before the L2 entry, refcounts before both, old references dropped
 *    after), and switches the version last.
 * All the metadata work runs with s->lock held.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

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

/* Progress over the steps of one amend: each step reports its own
 * fraction, mapped to its share of the whole. */
typedef struct AmendProgress {
    BlockProgressFn *fn;
    void *opaque;
    int step, steps;
} AmendProgress;

static void progress_report(AmendProgress *p, uint64_t done, uint64_t total)
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
    progress_report(p, 1, 1);
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
    if (qcow2_has_bitmaps(s) ||
        (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return true;
    }
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == QCOW2_EXT_BITMAPS) {
            return true;
        }
    }
    return false;
}

/* A set of host offsets (never 0), to visit each table once. */
typedef struct OffsetSet {
    uint64_t *slots;
    size_t cap, n;             /* cap: power of two */
} OffsetSet;

/* 1 when off was added, 0 when it was there already, or -ENOMEM. */
static int offset_set_add(OffsetSet *set, uint64_t off)
{
    if ((set->n + 1) * 2 > set->cap) {
        size_t ncap = set->cap ? set->cap * 2 : 1024;
        uint64_t *ns = calloc(ncap, sizeof(*ns));
        if (!ns) {
            return -ENOMEM;
        }
        for (size_t i = 0; i < set->cap; i++) {
            if (set->slots[i]) {
                size_t h = (size_t)(set->slots[i] * 0x9e3779b97f4a7c15ull >>
                                    17) & (ncap - 1);
                while (ns[h]) {
                    h = (h + 1) & (ncap - 1);
                }
                ns[h] = set->slots[i];
            }
        }
        free(set->slots);
        set->slots = ns;
        set->cap = ncap;
    }
    size_t h = (size_t)(off * 0x9e3779b97f4a7c15ull >> 17) & (set->cap - 1);
    while (set->slots[h]) {
        if (set->slots[h] == off) {
            return 0;
        }
        h = (h + 1) & (set->cap - 1);
    }
    set->slots[h] = off;
    set->n++;
    return 1;
}

/* Calls fn once on every L2 table reachable from the active L1 or from a
 * snapshot's L1, with the L1 position done/total for progress.  Tables
 * and L1s shared by several snapshots are visited once, so the work is
 * bounded by the image's size whatever its snapshot table says. */
typedef int L2Fn(Qcow2State *s, uint64_t l2_offset, void *opaque);

typedef struct L1Ref {
    uint64_t offset;
    uint32_t size;
} L1Ref;

/* By offset, the largest first: a shorter table at the same offset is a
 * prefix of it. */
static int l1ref_cmp(const void *a, const void *b)
{
    const L1Ref *x = a, *y = b;
    if (x->offset != y->offset) {
        return x->offset < y->offset ? -1 : 1;
    }
    return x->size > y->size ? -1 : x->size < y->size;
}

static int walk_l1(Qcow2State *s, const uint64_t *l1, uint32_t l1_size,
                   OffsetSet *seen, L2Fn *fn, void *opaque,
                   AmendProgress *prog, uint64_t *done, uint64_t total)
{
    int ret = 0;
    for (uint32_t i = 0; i < l1_size && ret >= 0; i++) {
        uint64_t off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (off) {
            if (off % s->cluster_size) {
                qcow2_signal_corruption(s, "L2 table offset 0x%" PRIx64
                                        " unaligned", off);
                return -EIO;
            }
            ret = offset_set_add(seen, off);
            if (ret > 0) {
                ret = fn(s, off, opaque);
            }
        }
        if (prog && (++*done % 64 == 0 || *done == total)) {
            progress_report(prog, *done, total);
        }
    }
    return ret < 0 ? ret : 0;
}

static int walk_all_l2(Qcow2State *s, L2Fn *fn, void *opaque,
                       AmendProgress *prog)
{
    OffsetSet seen = { 0 };
    int nsn = s->nb_snapshots_loaded;
    L1Ref *refs = calloc(nsn ? (size_t)nsn : 1, sizeof(*refs));
    uint64_t total = s->l1_size, done = 0;
    int ret;

    if (!refs) {
        return -ENOMEM;
    }
    for (int i = 0; i < nsn; i++) {
        refs[i].offset = s->snapshots[i].l1_table_offset;
        refs[i].size = s->snapshots[i].l1_size;
    }
    qsort(refs, (size_t)nsn, sizeof(*refs), l1ref_cmp);
    for (int i = 0; i < nsn; i++) {
        if (!i || refs[i].offset != refs[i - 1].offset) {
            total += refs[i].size;
        }
    }
    ret = walk_l1(s, s->l1_table, s->l1_size, &seen, fn, opaque, prog,
                  &done, total);
    for (int i = 0; i < nsn && ret >= 0; i++) {
        if ((i && refs[i].offset == refs[i - 1].offset) || !refs[i].size) {
            continue;
        }
        uint64_t *l1;
        ret = qcow2_read_l1(s, refs[i].offset, refs[i].size, &l1);
        if (ret >= 0) {
            ret = walk_l1(s, l1, refs[i].size, &seen, fn, opaque, prog,
                          &done, total);
            free(l1);
        }
    }
    free(refs);
    free(seen.slots);
    return ret;
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
            int ret = walk_all_l2(s, find_compressed, &found, NULL);
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

/* ------------------------------------------------------------------ */
/* Header switches                                                     */

/* Bytes of the header cluster the header on disk uses (fields,
 * extensions up to the end marker, backing file name wherever it sits):
 * what a rewrite must not disturb before its switch.  Unparseable means
 * the whole cluster. */
static int header_used(Qcow2State *s, Error *err)
{
    uint64_t cs = s->cluster_size;
    int64_t flen = block_get_length(block_file(s->node));
    uint8_t *h = calloc(1, cs);
    int ret;

    if (!h) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    size_t len = flen > 0 && (uint64_t)flen < cs ? (size_t)flen : cs;
    ret = block_pread(block_file(s->node), 0, len, h);
    if (ret < 0) {
        free(h);
        return error_setf(err, -ret, "cannot read the qcow2 header: %s",
                          strerror(-ret));
    }
    uint64_t hl = qcow2_be32(h + QCOW2_HDR_VERSION) == 2
                  ? QCOW2_V2_HEADER_SIZE
                  : qcow2_be32(h + QCOW2_HDR_HEADER_LENGTH);
    uint64_t name_end = qcow2_be64(h + QCOW2_HDR_BACKING_OFFSET) +
                        qcow2_be32(h + QCOW2_HDR_BACKING_SIZE);
    uint64_t used = cs, in = hl;
    while (hl <= cs && in + 8 <= cs) {
        uint32_t type = qcow2_be32(h + in);
        uint64_t elen = 8 + qcow2_align_up(qcow2_be32(h + in + 4), 8);
        if (type == QCOW2_EXT_END) {
            used = in + 8;
            break;
        }
        in += elen;
    }
    if (name_end > used) {
        used = name_end < cs ? name_end : cs;
    }
    free(h);
    return (int)used;
}

/*
 * The on-disk header (old_used bytes) without its feature name table,
 * which is optional: the same image in fewer bytes.  Returns the bytes it
 * uses, or 0 when it cannot be made to fit in one sector.
 */
static int compact_header(Qcow2State *s, int old_used, uint8_t *out)
{
    uint8_t *h = calloc(1, s->cluster_size);
    int ret = 0;

    if (!h || block_pread(block_file(s->node), 0, (size_t)old_used, h) < 0) {
        free(h);
        return 0;
    }
    uint64_t hl = qcow2_be32(h + QCOW2_HDR_VERSION) == 2
                  ? QCOW2_V2_HEADER_SIZE
                  : qcow2_be32(h + QCOW2_HDR_HEADER_LENGTH);
    uint64_t name_off = qcow2_be64(h + QCOW2_HDR_BACKING_OFFSET);
    uint32_t name_len = qcow2_be32(h + QCOW2_HDR_BACKING_SIZE);
    uint64_t in = hl, o = hl;
    uint64_t end = name_off ? name_off : (uint64_t)old_used;
    if (hl > 512 || end > (uint64_t)old_used ||
        name_off + name_len > (uint64_t)old_used) {
        goto out;
    }
    memset(out, 0, 512);
    memcpy(out, h, hl);
    while (in + 8 <= end) {
        uint32_t type = qcow2_be32(h + in);
        uint64_t elen = 8 + qcow2_align_up(qcow2_be32(h + in + 4), 8);
        if (type == QCOW2_EXT_END || in + elen > end) {
            break;
        }
        if (type != QCOW2_EXT_FEATURE_TABLE) {
            if (o + elen > 512) {
                goto out;
            }
            memcpy(out + o, h + in, elen);
            o += elen;
        }
        in += elen;
    }
    o += 8;  /* end marker: zeroes */
    if (name_off) {
        if (o + name_len > 512) {
            goto out;
        }
        memcpy(out + o, h + name_off, name_len);
        qcow2_put_be64(out + QCOW2_HDR_BACKING_OFFSET, o);
        o += name_len;
    }
    ret = o <= 512 ? (int)o : 0;
out:
    free(h);
    return ret;
}

/*
 * Writes the header built from s over one that used old_used bytes, so
 * that a crash leaves one or the other: a sector is written whole or not
 * at all, so a new header of one sector is one write, and a longer one
 * over a one-sector header gets its tail first (beyond what the old
 * header uses, so the old one stays intact) and its first sector last.
 * A long old header is first rewritten in one sector without its feature
 * name table when that fits; only when not is the switch a single
 * multi-sector write.
 */
static int write_header_switch(Qcow2State *s, int old_used, Error *err)
{
    uint8_t *buf = malloc(s->cluster_size);
    int ret;

    if (!buf) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    uint64_t len = 0;
    ret = qcow2_build_header(s, buf, err);
    if (ret >= 0) {
        len = qcow2_align_up((uint64_t)ret, 512);
        if (len > s->cluster_size) {
            len = s->cluster_size;
        }
    }
    if (ret >= 0 && len > 512 && old_used > 512) {
        uint8_t small[512];
        int used = compact_header(s, old_used, small);
        if (used > 0) {
            ret = block_pwrite(block_file(s->node), 0, 512, small, 0);
            if (ret >= 0) {
                ret = block_flush(block_file(s->node));
            }
            old_used = used;
        }
    }
    if (ret < 0) {
        free(buf);
        return error_is_set(err) ? ret : error_setf(err, -ret, "cannot "
                                                    "write the qcow2 header: "
                                                    "%s", strerror(-ret));
    }
    if (len > 512 && old_used <= 512) {
        ret = block_pwrite(block_file(s->node), 512, len - 512, buf + 512, 0);
        if (ret >= 0) {
            ret = block_flush(block_file(s->node));
        }
        len = 512;
    }
    if (ret >= 0) {
        ret = block_pwrite(block_file(s->node), 0, len, buf, 0);
    }
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    free(buf);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot write the qcow2 header: %s",
                          strerror(-ret));
    }
    return 0;
}

/* Everything cached on disk, refcounts consistent. */
static int settle(Qcow2State *s, Error *err)
{
    int ret = qcow2_flush_caches(s);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot write back metadata: %s",
                          strerror(-ret));
    }
    return 0;
}

/* A version switch starts from metadata on disk and needs to know how
 * much of the header cluster the old header fills (header_used). */
static int settled_header_used(Qcow2State *s, Error *err)
{
    int ret = settle(s, err);
    return ret < 0 ? ret : header_used(s, err);
}

/* ------------------------------------------------------------------ */
/* compat=1.1                                                          */

/* A v3 snapshot table entry needs at least 16 bytes of extra data
 * (vm_state_size_large, disk_size); older v2 writers left less.  Builds
 * a table where every entry has them, or *out = NULL when none lacks
 * them. */
static int widen_snapshot_table(Qcow2State *s, uint8_t **out, size_t *out_len)
{
    uint8_t *old = NULL, *nt = NULL;
    size_t len = s->snapshots_size, pos = 0, npos = 0;
    bool needed = false;
    int ret;

    *out = NULL;
    *out_len = 0;
    if (!s->nb_snapshots || !len) {
        return 0;
    }
    old = malloc(len);
    nt = calloc(1, len + (size_t)s->nb_snapshots * 16);
    if (!old || !nt) {
        ret = -ENOMEM;
        goto fail;
    }
    ret = block_pread(block_file(s->node), s->snapshots_offset, len, old);
    if (ret < 0) {
        goto fail;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (pos + QCOW2_SNAPSHOT_FIXED > len) {
            ret = -EINVAL;
            goto fail;
        }
        const uint8_t *e = old + pos;
        uint32_t extra = qcow2_be32(e + 36);
        uint32_t names = qcow2_be16(e + 12) + qcow2_be16(e + 14);
        size_t elen = qcow2_align_up(QCOW2_SNAPSHOT_FIXED + extra + names, 8);
        if (pos + elen > len) {
            ret = -EINVAL;
            goto fail;
        }
        uint32_t nextra = extra < QCOW2_SNAPSHOT_EXTRA_V3
                          ? QCOW2_SNAPSHOT_EXTRA_V3 : extra;
        uint8_t *d = nt + npos;
        memcpy(d, e, QCOW2_SNAPSHOT_FIXED);
        qcow2_put_be32(d + 36, nextra);
        memcpy(d + QCOW2_SNAPSHOT_FIXED, e + QCOW2_SNAPSHOT_FIXED, extra);
        if (extra < 8) {
            qcow2_put_be64(d + QCOW2_SNAPSHOT_FIXED, qcow2_be32(e + 32));
        }
        if (extra < 16) {
            /* The size the snapshot had is not recorded; a v2 image with
             * snapshots cannot have been resized, so it is the current
             * one. */
            qcow2_put_be64(d + QCOW2_SNAPSHOT_FIXED + 8, s->size);
            needed = true;
        }
        memcpy(d + QCOW2_SNAPSHOT_FIXED + nextra,
               e + QCOW2_SNAPSHOT_FIXED + extra, names);
        npos += qcow2_align_up(QCOW2_SNAPSHOT_FIXED + nextra + names, 8);
        pos += elen;
    }
    free(old);
    if (!needed) {
        free(nt);
        return 0;
    }
    *out = nt;
    *out_len = npos;
    return 0;

fail:
    free(old);
    free(nt);
    return ret;
}

static int upgrade(Qcow2State *s, Error *err)
{
    uint8_t *table = NULL;
    size_t tlen = 0;
    uint64_t new_table = 0;
    int ret;

    int old_used = settled_header_used(s, err);
    if (old_used < 0) {
        return old_used;
    }
    ret = widen_snapshot_table(s, &table, &tlen);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot table: %s",
                          strerror(-ret));
    }
    if (table) {
        /* The widened table goes to new clusters, durable (with their
         * refcounts) before the header that points at it. */
        int64_t a = qcow2_store_snapshot_table(s, table, tlen, err);
        free(table);
        if (a < 0) {
            return (int)a;
        }
        new_table = (uint64_t)a;
    }

    uint64_t old_table = s->snapshots_offset, old_tsize = s->snapshots_size;
    qcow2_set_plain_header(s, 3);
    if (new_table) {
        s->snapshots_offset = new_table;
        s->snapshots_size = tlen;
        s->snapshots_tail_pad = 0;
    }
    ret = write_header_switch(s, old_used, err);
    if (ret < 0) {
        s->version = 2;
        s->header_length = QCOW2_V2_HEADER_SIZE;
        s->snapshots_offset = old_table;
        s->snapshots_size = old_tsize;
        return ret;
    }
    if (new_table && old_table) {
        ret = qcow2_free_snapshot_table(s, old_table, old_tsize, err);
        return ret < 0 ? ret : settle(s, err);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* compat=0.10                                                         */

typedef struct ZeroExpand {
    bool has_backing;
    uint8_t *copy;             /* cluster_size scratch */
    uint64_t *new_entries;     /* l2_entries */
    uint64_t *drop;            /* host clusters to release after */
    uint8_t *zeroes;           /* cluster_size zero bytes */
} ZeroExpand;

/* Makes host cluster `off` read as zeroes through this image: raw zero
 * bytes, or encrypted ones for a LUKS image (raw zeroes would decrypt to
 * noise; qemu-img 7.2 makes that mistake). */
static int write_zero_cluster(Qcow2State *s, ZeroExpand *zx, uint64_t off)
{
    if (s->crypto) {
        return qcow2_crypto_write(s, off, zx->zeroes, s->cluster_size);
    }
    if (s->aes) {
        return -ENOTSUP;   /* legacy AES is read-only here */
    }
    return block_write_zeroes(block_file(s->node), off, s->cluster_size, 0);
}

enum { ZX_KEEP, ZX_UNALLOC, ZX_INPLACE, ZX_NEW };

/* One L2 table: every zero entry becomes data that reads as zero, or
 * unallocated when nothing can show through.  A table shared by rc L1s
 * is changed for all of them at once, so a cluster put in it gets rc
 * references, and a preallocated zero cluster is zeroed in place only
 * when all its references come through this table. */
static int expand_zero_l2(Qcow2State *s, uint64_t l2_offset, void *opaque)
{
    ZeroExpand *zx = opaque;
    uint64_t rc_l2, n_change = 0, n_drop = 0;
    uint8_t *t;
    int ret;

    ret = qcow2_get_refcount(s, l2_offset >> s->cluster_bits, &rc_l2);
    if (ret < 0) {
        return ret;
    }
    if (rc_l2 == 0) {
        qcow2_signal_corruption(s, "L2 table at 0x%" PRIx64 " has refcount "
                                "0", l2_offset);
        return -EIO;
    }
    ret = qcow2_cache_get(&s->l2_cache, l2_offset, &t);
    if (ret < 0) {
        return ret;
    }
    memcpy(zx->copy, t, s->cluster_size);
    qcow2_cache_put(&s->l2_cache, &t);

    /* Plan, and make the new data durable (refcounts, then zeroes). */
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        uint64_t raw = qcow2_l2_get_entry(s, zx->copy, i);
        Qcow2L2Entry e;
        qcow2_decode_l2_entry(s, raw, 0, &e);
        zx->new_entries[i] = raw;
        int action = ZX_KEEP;
        if (e.type == QCOW2_CLUSTER_ZERO_PLAIN) {
            action = zx->has_backing ? ZX_NEW : ZX_UNALLOC;
        } else if (e.type == QCOW2_CLUSTER_ZERO_ALLOC) {
            uint64_t rc;
            ret = qcow2_get_refcount(s, e.host_offset >> s->cluster_bits,
                                     &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc == rc_l2) {
                action = ZX_INPLACE;
            } else {
                action = zx->has_backing ? ZX_NEW : ZX_UNALLOC;
                if (rc > rc_l2) {
                    zx->drop[n_drop++] = e.host_offset;
                }
            }
        }
        if (action == ZX_KEEP) {
            continue;
        }
        n_change++;
        if (action == ZX_UNALLOC) {
            zx->new_entries[i] = 0;
        } else if (action == ZX_INPLACE) {
            ret = write_zero_cluster(s, zx, e.host_offset);
            if (ret < 0) {
                return ret;
            }
            zx->new_entries[i] = raw & ~QCOW2_OFLAG_ZERO;
        } else {
            int64_t a = qcow2_alloc_clusters(s, 1);
            if (a < 0) {
                return (int)a;
            }
            if (rc_l2 > 1) {
                ret = qcow2_update_refcount(s, (uint64_t)a, s->cluster_size,
                                            (int64_t)rc_l2 - 1);
                if (ret < 0) {
                    return ret;
                }
            }
            ret = write_zero_cluster(s, zx, (uint64_t)a);
            if (ret < 0) {
                return ret;
            }
            zx->new_entries[i] = (uint64_t)a |
                                 (rc_l2 == 1 ? QCOW2_OFLAG_COPIED : 0);
        }
    }
    if (!n_change) {
        return 0;
    }
    ret = qcow2_sync_refcounts(s);
    if (ret < 0) {
        return ret;
    }

    /* Then the table, durable before any old reference is dropped. */
    ret = qcow2_cache_get(&s->l2_cache, l2_offset, &t);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        if (zx->new_entries[i] != qcow2_l2_get_entry(s, t, i)) {
            qcow2_l2_set(s, t, i, zx->new_entries[i], 0);
        }
    }
    qcow2_cache_mark_dirty(&s->l2_cache, t);
    qcow2_cache_put(&s->l2_cache, &t);
    ret = qcow2_cache_writeback(&s->l2_cache);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    for (uint64_t i = 0; i < n_drop && ret >= 0; i++) {
        ret = qcow2_update_refcount(s, zx->drop[i], s->cluster_size,
                                    -(int64_t)rc_l2);
    }
    return ret;
}

static int downgrade(Qcow2State *s, AmendProgress *prog, Error *err)
{
    ZeroExpand zx = { 0 };
    int ret;

    ret = settle(s, err);
    if (ret < 0) {
        return ret;
    }
    zx.has_backing = s->backing_file != NULL;
    zx.copy = malloc(s->cluster_size);
    zx.new_entries = calloc(s->l2_entries, sizeof(uint64_t));
    zx.drop = calloc(s->l2_entries, sizeof(uint64_t));
    zx.zeroes = calloc(1, s->cluster_size);
    if (!zx.copy || !zx.new_entries || !zx.drop || !zx.zeroes) {
        ret = error_setf(err, ENOMEM, "out of memory");
    } else {
        ret = walk_all_l2(s, expand_zero_l2, &zx, prog);
        if (ret < 0) {
            error_setf(err, -ret, "cannot expand zero clusters: %s",
                       strerror(-ret));
        }
    }
    free(zx.copy);
    free(zx.new_entries);
    free(zx.drop);
    free(zx.zeroes);
    if (ret < 0) {
        return ret;
    }
    int old_used = settled_header_used(s, err);
    if (old_used < 0) {
        return old_used;
    }
    uint32_t o_version = s->version, o_hlen = s->header_length;
    uint64_t o_incompat = s->incompatible_features;
    uint64_t o_compat = s->compatible_features;
    uint64_t o_autoclear = s->autoclear_features;
    uint8_t o_ctype = s->compression_type;
    /* refcount_order is 4 already: check_plan refuses other widths. */
    qcow2_set_plain_header(s, 2);
    ret = write_header_switch(s, old_used, err);
    if (ret < 0) {
        s->version = o_version;
        s->incompatible_features = o_incompat;
        s->compatible_features = o_compat;
        s->autoclear_features = o_autoclear;
        s->header_length = o_hlen;
        s->compression_type = o_ctype;
        return ret;
    }
    s->lazy_refcounts = false;
    s->dirty_set = false;
    return 0;
}

/* ------------------------------------------------------------------ */
/* refcount_bits                                                       */

static uint64_t refcount_max_for(uint32_t order)
{
    return order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
}

/* Refcount block entry set for a width that is not (yet) the image's. */
static void refblock_set_order(Qcow2State *s, uint32_t order, uint8_t *block,
                               uint64_t i, uint64_t v)
{
    uint32_t saved = s->refcount_order;
    s->refcount_order = order;
    qcow2_refblock_set(s, block, i, v);
    s->refcount_order = saved;
}

/* Calls fn for every cluster index in [0, end) whose refcount is not 0,
 * one old refcount block at a time. */
typedef int RefFn(Qcow2State *s, uint64_t ci, uint64_t rc, void *opaque);

static int for_each_refcount(Qcow2State *s, uint64_t from, uint64_t end,
                             RefFn *fn, void *opaque)
{
    for (uint64_t r = from >> s->refblock_bits;
         r < s->refcount_table_size && (r << s->refblock_bits) < end; r++) {
        uint64_t e = s->refcount_table[r];
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
        if (!off) {
            continue;
        }
        if ((e & QCOW2_REFT_RESERVED_MASK) || off % s->cluster_size) {
            qcow2_signal_corruption(s, "refblock offset 0x%" PRIx64
                                    " unaligned", off);
            return -EIO;
        }
        uint8_t *block;
        int ret = qcow2_cache_get(&s->refcount_cache, off, &block);
        if (ret < 0) {
            return ret;
        }
        uint64_t first = r << s->refblock_bits;
        for (uint64_t i = 0; i < s->refblock_entries; i++) {
            uint64_t ci = first + i;
            if (ci < from || ci >= end) {
                continue;
            }
            uint64_t rc = qcow2_refblock_get(s, block, i);
            if (rc) {
                ret = fn(s, ci, rc, opaque);
                if (ret < 0) {
                    break;
                }
            }
        }
        qcow2_cache_put(&s->refcount_cache, &block);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

typedef struct RefScan {
    uint64_t max;          /* refcounts above are refused */
    uint64_t end;          /* one past the last cluster in use */
    uint64_t bad_ci, bad_rc;
} RefScan;

static int scan_one(Qcow2State *s, uint64_t ci, uint64_t rc, void *opaque)
{
    RefScan *sc = opaque;
    (void)s;
    if (rc > sc->max) {
        sc->bad_ci = ci;
        sc->bad_rc = rc;
        return -ERANGE;
    }
    if (ci + 1 > sc->end) {
        sc->end = ci + 1;
    }
    return 0;
}

typedef struct RefFill {
    uint32_t order;
    uint64_t first;        /* first cluster the block covers */
    uint8_t *block;
} RefFill;

static int fill_one(Qcow2State *s, uint64_t ci, uint64_t rc, void *opaque)
{
    RefFill *f = opaque;
    refblock_set_order(s, f->order, f->block, ci - f->first, rc);
    return 0;
}

/* Highest in-use cluster + 1 (checking every refcount fits in `max`);
 * -ERANGE with *bad_ci / *bad_rc set when one does not. */
static int refcount_extent(Qcow2State *s, uint64_t max, uint64_t *end,
                           uint64_t *bad_ci, uint64_t *bad_rc)
{
    RefScan sc = { .max = max };
    int ret = for_each_refcount(s, 0, UINT64_MAX, scan_one, &sc);
    *bad_ci = sc.bad_ci;
    *bad_rc = sc.bad_rc;
    *end = sc.end > s->alloc_end ? sc.end : s->alloc_end;
    return ret;
}

static int change_refcount_order(Qcow2State *s, uint32_t order,
                                 AmendProgress *prog, Error *err)
{
    uint64_t cs = s->cluster_size;
    uint32_t nbits = s->cluster_bits + 3 - order;   /* log2 entries/block */
    uint64_t end, bad_ci, bad_rc;
    uint64_t *blocks = NULL, nblocks_alloc = 0, cap = 0;
    uint64_t table_off = 0, table_clusters = 0;
    uint64_t *old_blocks = NULL, nold = 0;
    uint8_t *buf = NULL;
    uint64_t *table = NULL;
    bool switching = false;    /* the header may point at the new ones */
    int ret;

    ret = settle(s, err);
    if (ret < 0) {
        return ret;
    }
    ret = refcount_extent(s, refcount_max_for(order), &end, &bad_ci, &bad_rc);
    if (ret == -ERANGE) {
        return error_setf(err, ERANGE, "Cannot decrease refcount entry width "
                          "to %u bits: Cluster at offset %#" PRIx64 " has a "
                          "refcount of %" PRIu64, 1u << order,
                          bad_ci << s->cluster_bits, bad_rc);
    }
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the refcounts: %s",
                          strerror(-ret));
    }

    /* Room for the new structures, allocated through the old ones: until
     * the header switch they are leaked clusters the old refcounts
     * count, and the new refcounts count them too. */
    for (;;) {
        uint64_t need_blocks = (end + (1ull << nbits) - 1) >> nbits;
        uint64_t need_tc = qcow2_align_up(need_blocks * 8, cs) / cs;
        if (need_tc == 0) {
            need_tc = 1;
        }
        if (need_tc * cs > QCOW2_MAX_REFTABLE_BYTES) {
            ret = error_setf(err, EFBIG, "the refcount table would be too "
                             "large");
            goto release;
        }
        if (nblocks_alloc >= need_blocks && table_clusters >= need_tc) {
            break;
        }
        if (table_clusters < need_tc) {
            if (table_clusters) {
                ret = qcow2_update_refcount(s, table_off, table_clusters * cs,
                                            -1);
                if (ret < 0) {
                    goto io_fail;
                }
            }
            /* One spare cluster: the blocks allocated next may need a
             * slightly larger table. */
            int64_t a = qcow2_alloc_clusters(s, need_tc + 1);
            if (a < 0) {
                ret = (int)a;
                goto io_fail;
            }
            table_off = (uint64_t)a;
            table_clusters = need_tc + 1;
        }
        while (nblocks_alloc < need_blocks) {
            if (nblocks_alloc == cap) {
                cap = cap ? cap * 2 : 64;
                uint64_t *nb = realloc(blocks, cap * sizeof(*nb));
                if (!nb) {
                    ret = error_setf(err, ENOMEM, "out of memory");
                    goto release;
                }
                blocks = nb;
            }
            int64_t a = qcow2_alloc_clusters(s, 1);
            if (a < 0) {
                ret = (int)a;
                goto io_fail;
            }
            blocks[nblocks_alloc++] = (uint64_t)a;
        }
        uint64_t e2 = s->alloc_end;
        if (e2 > end) {
            end = e2;
        }
    }
    ret = qcow2_cache_writeback(&s->refcount_cache);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        goto io_fail;
    }

    /* The new blocks, filled from the old refcounts (which now count the
     * new structures and still count the old ones). */
    buf = malloc(cs);
    table = calloc(table_clusters * cs / 8, 8);
    if (!buf || !table) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto release;
    }
    for (uint64_t b = 0; b < nblocks_alloc; b++) {
        RefFill f = { .order = order, .first = b << nbits, .block = buf };
        memset(buf, 0, cs);
        ret = for_each_refcount(s, f.first, f.first + (1ull << nbits),
                                fill_one, &f);
        if (ret >= 0) {
            ret = block_pwrite(block_file(s->node), blocks[b], cs, buf, 0);
        }
        if (ret < 0) {
            goto io_fail;
        }
        table[b] = blocks[b];
        if (prog) {
            progress_report(prog, b + 1, nblocks_alloc + 1);
        }
    }
    uint8_t *tbuf = calloc(table_clusters, cs);
    if (!tbuf) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto release;
    }
    for (uint64_t i = 0; i < nblocks_alloc; i++) {
        qcow2_put_be64(tbuf + 8 * i, table[i]);
    }
    ret = block_pwrite(block_file(s->node), table_off, table_clusters * cs, tbuf, 0);
    free(tbuf);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        goto io_fail;
    }

    /* What to free once the new structures are live. */
    old_blocks = calloc(s->refcount_table_size + 1, sizeof(*old_blocks));
    if (!old_blocks) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto release;
    }
    for (uint64_t r = 0; r < s->refcount_table_size; r++) {
        uint64_t off = s->refcount_table[r] & QCOW2_REFT_OFFSET_MASK;
        if (off) {
            old_blocks[nold++] = off;
        }
    }
    uint64_t old_table = s->refcount_table_offset;
    uint64_t old_tc = s->refcount_table_clusters;

    /* The switch: table offset, its size and the width share the first
     * sector of the header, so one write moves them together. */
    uint8_t hdr[QCOW2_HDR_HEADER_LENGTH - QCOW2_HDR_REFTABLE_OFFSET];
    ret = block_pread(block_file(s->node), QCOW2_HDR_REFTABLE_OFFSET, sizeof(hdr),
                      hdr);
    if (ret < 0) {
        goto io_fail;
    }
    qcow2_put_be64(hdr, table_off);
    qcow2_put_be32(hdr + QCOW2_HDR_REFTABLE_CLUSTERS -
                   QCOW2_HDR_REFTABLE_OFFSET, (uint32_t)table_clusters);
    qcow2_put_be32(hdr + QCOW2_HDR_REFCOUNT_ORDER - QCOW2_HDR_REFTABLE_OFFSET,
                   order);
    switching = true;
    ret = block_pwrite(block_file(s->node), QCOW2_HDR_REFTABLE_OFFSET, sizeof(hdr),
                       hdr, 0);
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
    }
    if (ret < 0) {
        goto io_fail;
    }

    /* Live: the in-memory view follows, then the old structures go. */
    qcow2_cache_invalidate(&s->refcount_cache);
    free(s->refcount_table);
    s->refcount_table = table;
    table = NULL;
    s->refcount_table_offset = table_off;
    s->refcount_table_clusters = (uint32_t)table_clusters;
    s->refcount_table_size = table_clusters * cs / 8;
    s->refcount_order = order;
    s->refcount_bits = 1u << order;
    s->refcount_max = refcount_max_for(order);
    s->refblock_bits = nbits;
    s->refblock_entries = 1ull << nbits;
    s->free_cluster_index = 1;

    ret = qcow2_update_refcount(s, old_table, old_tc * cs, -1);
    for (uint64_t i = 0; i < nold && ret >= 0; i++) {
        ret = qcow2_update_refcount(s, old_blocks[i], cs, -1);
    }
    if (ret >= 0) {
        ret = qcow2_flush_caches(s);
    }
    if (ret < 0) {
        ret = error_setf(err, -ret, "cannot free the old refcount "
                         "structures: %s", strerror(-ret));
    }
    goto out;

io_fail:
    ret = error_setf(err, -ret, "cannot rebuild the refcount structures: %s",
                     strerror(-ret));
release:
    if (!switching) {
        /* The old structures are still the live ones: give back what was
         * allocated for the new (best effort; failing, it leaks). */
        if (table_clusters) {
            qcow2_update_refcount(s, table_off, table_clusters * cs, -1);
        }
        for (uint64_t i = 0; i < nblocks_alloc; i++) {
            qcow2_update_refcount(s, blocks[i], cs, -1);
        }
        qcow2_cache_writeback(&s->refcount_cache);
    }
out:
    free(blocks);
    free(old_blocks);
    free(buf);
    free(table);
    return ret;
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
    int old_used = header_used(s, err);
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
    int ret = write_header_switch(s, old_used, err);
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
        ret = settle(s, err);
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
    progress_report(&prog, 0, 1);

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
        ret = upgrade(s, err);
        if (ret < 0) {
            goto unlock;
        }
        progress_step_done(&prog);
    }
    if (refc) {
        ret = change_refcount_order(s, (uint32_t)p.refcount_order, &prog,
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
        ret = downgrade(s, &prog, err);
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
