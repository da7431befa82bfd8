/*
 * measure.c - how big a qcow2 image would be (`imgtool measure -O qcow2`).
 *
 * Two numbers, the same ones qemu-img prints:
 *  - fully allocated: every guest cluster plus all the metadata a fully
 *    populated image needs (header, L1, L2 tables, refcount structures
 *    that also count themselves);
 *  - required: the same metadata, but only the data clusters the input
 *    actually holds (or none when measuring by size alone).  Metadata is
 *    still counted for a full image, so this is an upper bound.
 * An input is scanned with block status through its whole backing chain,
 * since a conversion flattens it; a target with its own backing file might
 * share anything with the input, so then every cluster is assumed needed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

static uint64_t div_round_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Refcount blocks and table needed for `clusters` clusters, counting the
 * refcount clusters themselves: iterate to the fixed point. */
static uint64_t refcount_meta_bytes(uint64_t clusters, uint64_t cluster_size,
                                    uint32_t refcount_order)
{
    uint64_t per_block = (cluster_size * 8) >> refcount_order;
    uint64_t per_table_cluster = cluster_size / 8;
    uint64_t blocks = 0, table = 0, total = 0, last;

    do {
        last = total;
        blocks = div_round_up(clusters + table + blocks, per_block);
        table = div_round_up(blocks, per_table_cluster);
        total = clusters + blocks + table;
    } while (total != last);
    return (blocks + table) * cluster_size;
}

/* Size of an image with every guest cluster and its metadata allocated.
 * virtual_size is already cluster aligned. */
static uint64_t full_image_bytes(uint64_t virtual_size, uint64_t cluster_size,
                                 uint32_t refcount_order, bool extended_l2)
{
    uint64_t l2e_size = extended_l2 ? 16 : 8;
    uint64_t meta = cluster_size;   /* header cluster */
    uint64_t nl2e, nl1e;

    nl2e = qcow2_align_up(virtual_size / cluster_size,
                          cluster_size / l2e_size);
    meta += nl2e * l2e_size;
    nl1e = qcow2_align_up(nl2e * l2e_size / cluster_size, cluster_size / 8);
    meta += nl1e * 8;
    meta += refcount_meta_bytes((meta + virtual_size) / cluster_size,
                                cluster_size, refcount_order);
    return meta + virtual_size;
}

/* Accepts only keys qcow2 create knows (measure takes create's -o). */
static int check_known_keys(const KVList *opts, Error *err)
{
    for (size_t i = 0; i < opts->n; i++) {
        const char *key = opts->items[i].key;
        bool known = !strcmp(key, "size") || !strncmp(key, "encrypt.", 8);

        for (const BlockCreateOpt *o = qcow2_create_opts; !known && o->name;
             o++) {
            known = !strcmp(o->name, key);
        }
        if (!known) {
            return error_setf(err, EINVAL, "Invalid parameter '%s'", key);
        }
    }
    return 0;
}

typedef struct MeasureOpts {
    uint64_t cluster_size;
    uint32_t refcount_order;
    bool extended_l2;
    bool v3;
    bool has_backing;
    PreallocMode prealloc;
    uint64_t crypto_header;   /* LUKS header bytes (encrypt.format=luks) */
} MeasureOpts;

static int parse_opts(KVList *opts, MeasureOpts *mo, Error *err)
{
    uint64_t refcount_bits;
    const char *s;
    int ret;

    ret = check_known_keys(opts, err);
    if (ret < 0) {
        return ret;
    }
    ret = kvlist_get_size(opts, "cluster_size", 65536, &mo->cluster_size,
                          err);
    if (ret < 0) {
        return ret;
    }
    if (mo->cluster_size < 512 || mo->cluster_size > (2u << 20) ||
        (mo->cluster_size & (mo->cluster_size - 1))) {
        return error_setf(err, EINVAL, "Cluster size must be a power of two "
                          "between 512 and 2048k");
    }
    ret = kvlist_get_uint(opts, "refcount_bits", 16, &refcount_bits, err);
    if (ret < 0) {
        return ret;
    }
    if (refcount_bits == 0 || refcount_bits > 64 ||
        (refcount_bits & (refcount_bits - 1))) {
        return error_setf(err, EINVAL, "Refcount width must be a power of "
                          "two and may not exceed 64 bits");
    }
    mo->refcount_order = (uint32_t)__builtin_ctzll(refcount_bits);

    mo->v3 = true;
    s = kvlist_get(opts, "compat");
    if (s) {
        if (!strcmp(s, "0.10")) {
            mo->v3 = false;
        } else if (strcmp(s, "1.1")) {
            return error_setf(err, EINVAL,
                              "Invalid compatibility level: '%s'", s);
        }
    }
    if (!mo->v3 && refcount_bits != 16) {
        return error_setf(err, EINVAL, "Different refcount widths than 16 "
                          "bits require compatibility level 1.1 or above "
                          "(use compat=1.1 or greater)");
    }

    ret = kvlist_get_bool(opts, "extended_l2", false, &mo->extended_l2, err);
    if (ret < 0) {
        return ret;
    }
    if (mo->extended_l2 && mo->cluster_size < (1u << QCOW2_EXTL2_MIN_CLUSTER_BITS)) {
        return error_setf(err, EINVAL, "Extended L2 entries are only "
                          "supported with cluster sizes of at least %u bytes",
                          1u << QCOW2_EXTL2_MIN_CLUSTER_BITS);
    }

    mo->prealloc = PREALLOC_OFF;
    s = kvlist_get(opts, "preallocation");
    if (s && prealloc_parse(s, &mo->prealloc) < 0) {
        return error_setf(err, EINVAL, "invalid parameter value: %s", s);
    }

    s = kvlist_get(opts, "backing_file");
    mo->has_backing = s && *s;

    s = kvlist_get(opts, "encrypt.format");
    mo->crypto_header = 0;
    if (s && !strcmp(s, "luks")) {
        int ret = qcow2_crypto_header_size(opts, &mo->crypto_header, err);
        if (ret < 0) {
            return ret;
        }
    } else if (s && *s) {
        return error_setf(err, ENOTSUP,
                          "measuring encrypted qcow2 targets is not supported");
    }
    /* The rest of create's options do not change the size. */
    for (size_t i = 0; i < opts->n; i++) {
        opts->items[i].used = true;
    }
    return 0;
}

/* Bytes of whole clusters of `in` that hold data somewhere in its chain;
 * zero regions (even allocated ones) cost nothing after conversion. */
static int count_data_clusters(BlockNode *in, uint64_t len,
                               uint64_t cluster_size, uint64_t *out,
                               Error *err)
{
    uint64_t required = 0, off = 0;

    while (off < len) {
        uint64_t pnum = 0;
        int st = block_status_above(in, NULL, off, len - off, &pnum, NULL,
                                    NULL, NULL);

        if (st < 0) {
            return error_setf(err, -st, "Could not read the allocation "
                              "status of the input at offset %llu: %s",
                              (unsigned long long)off, strerror(-st));
        }
        if (pnum == 0) {
            return error_setf(err, EIO, "Block status made no progress at "
                              "offset %llu", (unsigned long long)off);
        }
        if (!(st & BLOCK_STATUS_ZERO) &&
            (st & (BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED)) ==
                (BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED)) {
            /* Count from the start of the first touched cluster to the end
             * of the last one, and continue after it. */
            uint64_t end = qcow2_align_up(off + pnum, cluster_size);

            required += end - (off - off % cluster_size);
            pnum = end - off;
        }
        off += pnum;
    }
    *out = required;
    return 0;
}

/* Room for copying the input's persistent bitmaps into the target: each
 * bitmap's data fully allocated, its table, and the directory. */
static int bitmaps_bytes(BlockNode *in, uint64_t size, uint64_t cluster_size,
                         uint64_t *out, Error *err)
{
    Qcow2State *s = qcow2_state(in);
    const Qcow2Extension *x = NULL;
    uint64_t dir_size, dir_off, total = 0, dir_bytes = 0;
    uint8_t *dir;
    int ret;

    *out = 0;
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == QCOW2_EXT_BITMAPS) {
            x = &s->unknown_exts[i];
        }
    }
    /* Without the autoclear bit the bitmaps are stale and not carried
     * over. */
    if (!x || x->len < 24 ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    dir_size = qcow2_be64(x->data + 8);
    dir_off = qcow2_be64(x->data + 16);
    if (dir_size == 0) {
        return 0;
    }
    if (dir_size > 64u * 1024 * 1024) {
        return error_setf(err, EINVAL, "bitmap directory of the input is "
                          "too large");
    }
    dir = malloc(dir_size);
    if (!dir) {
        return error_setf(err, ENOMEM, "Out of memory");
    }
    ret = block_pread(block_file(in), dir_off, dir_size, dir);
    if (ret < 0) {
        free(dir);
        return error_setf(err, -ret, "Could not read the input's bitmap "
                          "directory: %s", strerror(-ret));
    }
    for (uint64_t pos = 0; pos + 24 <= dir_size;) {
        const uint8_t *e = dir + pos;
        uint32_t gbits = e[17];
        uint64_t name_len = qcow2_be16(e + 18);
        uint64_t entry = qcow2_align_up(24 + (uint64_t)qcow2_be32(e + 20) +
                                        name_len, 8);
        uint64_t bits, bytes, clusters;

        if (gbits > 63) {
            break;
        }
        bits = div_round_up(size, 1ull << gbits);
        bytes = div_round_up(bits, 8);
        clusters = div_round_up(bytes, cluster_size);
        total += clusters * cluster_size;
        total += qcow2_align_up(clusters * 8, cluster_size);
        /* The target's entry has no extra data. */
        dir_bytes += qcow2_align_up(24 + name_len, 8);
        pos += entry;
    }
    free(dir);
    *out = total + qcow2_align_up(dir_bytes, cluster_size);
    return 0;
}

int qcow2_measure(KVList *opts, BlockNode *in, uint64_t size,
                  BlockMeasure *out, Error *err)
{
    MeasureOpts mo;
    uint64_t virtual_size, required = 0, l2_tables;
    int ret;

    memset(out, 0, sizeof(*out));
    memset(&mo, 0, sizeof(mo));
    if (opts) {
        ret = parse_opts(opts, &mo, err);
    } else {
        KVList empty = { 0 };
        ret = parse_opts(&empty, &mo, err);
    }
    if (ret < 0) {
        return ret;
    }

    if (in) {
        int64_t len = block_get_length(in);

        if (len < 0) {
            return error_setf(err, (int)-len, "Could not get the input "
                              "size: %s", strerror((int)-len));
        }
        size = (uint64_t)len;
    }
    if (size > INT64_MAX) {
        return error_setf(err, EINVAL, "The image size is too large");
    }
    virtual_size = qcow2_align_up(size, mo.cluster_size);

    /* The L1 table of a fully allocated image must stay within the limit
     * the driver (and QEMU) can open. */
    l2_tables = div_round_up(virtual_size / mo.cluster_size,
                             mo.cluster_size / (mo.extended_l2 ? 16 : 8));
    if (l2_tables > QCOW2_MAX_L1_BYTES / 8) {
        return error_setf(err, EFBIG, "The image size is too large (try "
                          "using a larger cluster size)");
    }

    if (in && (mo.prealloc == PREALLOC_OFF ||
               mo.prealloc == PREALLOC_METADATA)) {
        if (mo.has_backing) {
            required = virtual_size;
        } else {
            ret = count_data_clusters(in, size, mo.cluster_size, &required,
                                      err);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (mo.prealloc == PREALLOC_FULL || mo.prealloc == PREALLOC_FALLOC) {
        required = virtual_size;
    }

    out->fully_allocated = full_image_bytes(virtual_size, mo.cluster_size,
                                            mo.refcount_order,
                                            mo.extended_l2);
    out->required = out->fully_allocated - virtual_size + required;
    /* The LUKS header takes whole clusters of its own. */
    out->fully_allocated += qcow2_align_up(mo.crypto_header, mo.cluster_size);
    out->required += qcow2_align_up(mo.crypto_header, mo.cluster_size);

    /* Bitmaps can be carried over only from a v3 qcow2 input into a v3
     * target. */
    out->has_bitmaps = mo.v3 && in && in->drv == &qcow2_driver &&
                       qcow2_state(in)->version >= 3;
    if (out->has_bitmaps) {
        ret = bitmaps_bytes(in, size, mo.cluster_size, &out->bitmaps, err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}
