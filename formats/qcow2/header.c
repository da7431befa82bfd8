/*
 * header.c - parsing and validating the qcow2 header cluster (and the
 * snapshot table it names) when an image is opened.
 *
 * Everything read from the header is checked against the file size and
 * sane limits before any allocation depends on it, so a hostile image
 * yields a one-line error rather than a crash or a huge allocation.
 * Header bytes and extensions we do not understand are kept in s, so
 * that a rewrite (header-write.c) carries them over.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

char *qcow2_dup_bytes(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);
    if (!s) {
        return NULL;
    }
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

Qcow2Extension *qcow2_find_ext(Qcow2State *s, uint32_t type)
{
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == type) {
            return &s->unknown_exts[i];
        }
    }
    return NULL;
}

static int add_unknown_ext(Qcow2State *s, uint32_t type, const uint8_t *p,
                           uint32_t len)
{
    Qcow2Extension *n = realloc(s->unknown_exts,
                                (s->nb_unknown_exts + 1) * sizeof(*n));
    if (!n) {
        return -ENOMEM;
    }
    s->unknown_exts = n;
    n[s->nb_unknown_exts].type = type;
    n[s->nb_unknown_exts].len = len;
    n[s->nb_unknown_exts].data = malloc(len ? len : 1);
    if (!n[s->nb_unknown_exts].data) {
        return -ENOMEM;
    }
    memcpy(n[s->nb_unknown_exts].data, p, len);
    s->nb_unknown_exts++;
    return 0;
}

static int parse_extensions(Qcow2State *s, const uint8_t *buf, size_t buflen,
                            uint64_t end, Error *err)
{
    uint64_t off = s->header_length;

    /* Extensions may not run into the backing file name. */
    if (s->backing_file_offset_raw && end > s->backing_file_offset_raw) {
        end = s->backing_file_offset_raw;
    }
    if (end > buflen) {
        end = buflen;
    }
    while (off + 8 <= end) {
        uint32_t type = qcow2_be32(buf + off);
        uint32_t len = qcow2_be32(buf + off + 4);
        const uint8_t *p = buf + off + 8;
        off += 8;
        if (type == QCOW2_EXT_END) {
            return 0;
        }
        if (len > end - off) {
            return error_setf(err, EINVAL,
                              "header extension 0x%08x is too large", type);
        }
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            free(s->backing_format);
            s->backing_format = qcow2_dup_bytes(p, len);
            if (!s->backing_format) {
                return -ENOMEM;
            }
            break;
        case QCOW2_EXT_DATA_FILE:
            free(s->data_file_name);
            s->data_file_name = qcow2_dup_bytes(p, len);
            if (!s->data_file_name) {
                return -ENOMEM;
            }
            break;
        case QCOW2_EXT_FEATURE_TABLE: {
            uint32_t n = len / QCOW2_FEATURE_ENTRY_SIZE;
            free(s->features);
            s->features = calloc(n ? n : 1, sizeof(*s->features));
            if (!s->features) {
                return -ENOMEM;
            }
            for (uint32_t i = 0; i < n; i++) {
                const uint8_t *e = p + i * QCOW2_FEATURE_ENTRY_SIZE;
                s->features[i].type = e[0];
                s->features[i].bit = e[1];
                memcpy(s->features[i].name, e + 2, QCOW2_FEATURE_NAME_LEN);
                s->features[i].name[QCOW2_FEATURE_NAME_LEN] = '\0';
            }
            s->nb_features = (int)n;
            break;
        }
        default: {
            int ret = add_unknown_ext(s, type, p, len);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        }
        off += qcow2_align_up(len, 8);
    }
    return 0;
}

/* qemu-img's words and order: the bits the image's feature-name table
 * names, by name in the table's order, then every unnamed bit together
 * as one hex mask. */
static int report_unknown_incompat(Qcow2State *s, uint64_t bits, Error *err)
{
    char list[768] = "";
    size_t used = 0;

    for (int i = 0; i < s->nb_features && used < sizeof(list); i++) {
        const Qcow2FeatureName *f = &s->features[i];
        if (f->type != QCOW2_FEAT_INCOMPAT || f->bit >= 64 ||
            !(bits & (1ull << f->bit))) {
            continue;
        }
        int w = snprintf(list + used, sizeof(list) - used, "%s%s",
                         used ? ", " : "", f->name);
        used = w < 0 ? sizeof(list) : used + (size_t)w;
        bits &= ~(1ull << f->bit);
    }
    if (bits && used < sizeof(list)) {
        snprintf(list + used, sizeof(list) - used,
                 "%sUnknown incompatible feature: %llx", used ? ", " : "",
                 (unsigned long long)bits);
    }
    return error_setf(err, ENOTSUP, "Unsupported qcow2 feature(s): %s", list);
}

static void derive_geometry(Qcow2State *s)
{
    s->cluster_size = 1ull << s->cluster_bits;
    qcow2_set_refcount_order(s, s->refcount_order);
    s->extended_l2 = s->incompatible_features & QCOW2_INCOMPAT_EXTL2;
    s->l2_entry_size = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->l2_entries = 1ull << s->l2_bits;
    s->subclusters_per_cluster = s->extended_l2 ? QCOW2_SUBCLUSTERS : 1;
    s->subcluster_bits = s->cluster_bits - (s->extended_l2 ? 5 : 0);
    s->subcluster_size = 1ull << s->subcluster_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->coffset_mask = (1ull << s->csize_shift) - 1;
    s->lazy_refcounts = s->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    s->has_data_file = s->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
    s->data_file_raw = s->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    s->refcount_table_size =
        (uint64_t)s->refcount_table_clusters * s->cluster_size / 8;
}

/* Opened for check, the tables need only what qemu-img check's open
 * asks of them (qcow2_validate_table: bounded, aligned, no overflow):
 * a table past the end of the file reads as zeroes, one over the header
 * or another table is what check is there to report, and a refcount
 * table of no clusters is rebuilt by -r all.  Anything stricter would
 * say "cannot check" where qemu-img reports (and repairs) corruption. */
static int check_mode_tables(Qcow2State *s, uint64_t l1_bytes, uint64_t fsize,
                             Error *err)
{
    const uint64_t max_off = INT64_MAX;
    if (s->l1_table_offset % s->cluster_size ||
        max_off - l1_bytes < s->l1_table_offset) {
        return error_setf(err, EINVAL, "Active L1 table offset invalid");
    }
    uint64_t rt_bytes = (uint64_t)s->refcount_table_clusters * s->cluster_size;
    if (rt_bytes > QCOW2_MAX_REFTABLE_BYTES) {
        return error_setf(err, EFBIG, "Reference count table too large");
    }
    if (s->refcount_table_offset % s->cluster_size ||
        max_off - rt_bytes < s->refcount_table_offset) {
        return error_setf(err, EINVAL, "Reference count table offset "
                          "invalid");
    }
    return qcow2_read_snapshot_table(s, fsize, err);
}

int qcow2_read_header(Qcow2State *s, Error *err)
{
    BlockNode *file = block_file(s->node);
    int64_t flen = block_get_length(file);
    uint8_t h[QCOW2_V3_HEADER_SIZE];
    int ret;

    if (flen < 0) {
        return error_setf(err, (int)-flen, "cannot get file length");
    }
    /* Bytes past the end of a short file read as zeroes, as QEMU reads
     * them: an empty file "is not in qcow2 format", a cut one's header
     * is "too short" (the checks below). */
    memset(h, 0, sizeof(h));
    ret = block_pread(file, 0,
                      flen < (int64_t)sizeof(h) ? (size_t)flen : sizeof(h), h);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read qcow2 header: %s",
                          strerror(-ret));
    }
    if (qcow2_be32(h) != QCOW2_MAGIC) {
        return error_setf(err, EINVAL, "Image is not in qcow2 format");
    }
    s->version = qcow2_be32(h + QCOW2_HDR_VERSION);
    if (s->version != 2 && s->version != 3) {
        return error_setf(err, ENOTSUP, "Unsupported qcow2 version %u",
                          s->version);
    }
    s->cluster_bits = qcow2_be32(h + QCOW2_HDR_CLUSTER_BITS);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        s->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        return error_setf(err, EINVAL, "Unsupported cluster size: 2^%u",
                          s->cluster_bits);
    }
    s->cluster_size = 1ull << s->cluster_bits;
    uint64_t backing_off = qcow2_be64(h + QCOW2_HDR_BACKING_OFFSET);
    uint32_t backing_len = qcow2_be32(h + QCOW2_HDR_BACKING_SIZE);
    s->size = qcow2_be64(h + QCOW2_HDR_SIZE);
    s->crypt_method = qcow2_be32(h + QCOW2_HDR_CRYPT_METHOD);
    s->l1_size = qcow2_be32(h + QCOW2_HDR_L1_SIZE);
    s->l1_table_offset = qcow2_be64(h + QCOW2_HDR_L1_OFFSET);
    s->refcount_table_offset = qcow2_be64(h + QCOW2_HDR_REFTABLE_OFFSET);
    s->refcount_table_clusters = qcow2_be32(h + QCOW2_HDR_REFTABLE_CLUSTERS);
    s->nb_snapshots = qcow2_be32(h + QCOW2_HDR_NB_SNAPSHOTS);
    s->snapshots_offset = qcow2_be64(h + QCOW2_HDR_SNAPSHOTS_OFFSET);
    if (s->version == 2) {
        qcow2_set_plain_header(s, 2);
    } else {
        s->incompatible_features = qcow2_be64(h + QCOW2_HDR_INCOMPAT);
        s->compatible_features = qcow2_be64(h + QCOW2_HDR_COMPAT);
        s->autoclear_features = qcow2_be64(h + QCOW2_HDR_AUTOCLEAR);
        s->refcount_order = qcow2_be32(h + QCOW2_HDR_REFCOUNT_ORDER);
        s->header_length = qcow2_be32(h + QCOW2_HDR_HEADER_LENGTH);
        if (s->header_length < QCOW2_V3_HEADER_MIN) {
            return error_setf(err, EINVAL, "qcow2 header too short");
        }
        if (s->header_length > s->cluster_size) {
            return error_setf(err, EINVAL, "qcow2 header exceeds cluster "
                              "size");
        }
        if (s->header_length % 8 || s->header_length > s->cluster_size ||
            s->header_length > (uint64_t)flen) {
            return error_setf(err, EINVAL, "invalid qcow2 header length %u",
                              s->header_length);
        }
        s->compression_type = s->header_length > QCOW2_HDR_COMPRESSION_TYPE
                              ? h[QCOW2_HDR_COMPRESSION_TYPE] : 0;
    }
    if (s->refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
        return error_setf(err, EINVAL, "Refcount width %u is too large",
                          s->refcount_order);
    }

    /* The whole first cluster: header, extensions, backing file name. */
    size_t hlen = (uint64_t)flen < s->cluster_size ? (size_t)flen
                                                   : (size_t)s->cluster_size;
    uint8_t *buf = calloc(1, s->cluster_size);
    if (!buf) {
        return -ENOMEM;
    }
    ret = block_pread(file, 0, hlen, buf);
    if (ret < 0) {
        free(buf);
        return error_setf(err, -ret, "cannot read qcow2 header: %s",
                          strerror(-ret));
    }
    if (s->header_length > QCOW2_V3_HEADER_SIZE) {
        s->header_tail_len = s->header_length - QCOW2_V3_HEADER_SIZE;
        s->header_tail = malloc(s->header_tail_len);
        if (!s->header_tail) {
            free(buf);
            return -ENOMEM;
        }
        memcpy(s->header_tail, buf + QCOW2_V3_HEADER_SIZE, s->header_tail_len);
    }
    if (backing_off && (s->open_flags & BLOCK_O_CHECK)) {
        /* What qemu-img check's open asks (it ignores the backing file
         * itself): an offset inside the first cluster and a name of at
         * most 1023 bytes that fits there; an empty name is none.  The
         * extensions end where the name starts, wherever that is. */
        if (backing_off > s->cluster_size) {
            free(buf);
            return error_setf(err, EINVAL, "Invalid backing file offset");
        }
        uint64_t room = s->cluster_size - backing_off;
        if (backing_len > (room < 1023 ? room : 1023)) {
            free(buf);
            return error_setf(err, EINVAL, "Backing file name too long");
        }
        s->backing_file_offset_raw = backing_off;
        if (backing_len) {
            s->backing_file = qcow2_dup_bytes(buf + backing_off,
                                              backing_len);
            if (!s->backing_file) {
                free(buf);
                return -ENOMEM;
            }
        }
    } else if (backing_off) {
        if (backing_len > QCOW2_MAX_BACKING_NAME || backing_len == 0 ||
            backing_off > s->cluster_size ||
            backing_off + backing_len > hlen) {
            free(buf);
            return error_setf(err, EINVAL, "backing file name is invalid");
        }
        s->backing_file = qcow2_dup_bytes(buf + backing_off,
                                          backing_len);
        if (!s->backing_file) {
            free(buf);
            return -ENOMEM;
        }
        s->backing_file_offset_raw = backing_off;
    }
    ret = parse_extensions(s, buf, hlen, s->cluster_size, err);
    free(buf);
    if (ret < 0) {
        return error_is_set(err) ? ret
                                 : error_setf(err, -ret, "header extensions");
    }

    uint64_t unknown = s->incompatible_features & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        return report_unknown_incompat(s, unknown, err);
    }
    if (s->crypt_method > QCOW2_CRYPT_LUKS) {
        return error_setf(err, ENOTSUP, "Unsupported encryption method %u",
                          s->crypt_method);
    }
    if (s->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->header_length <= QCOW2_HDR_COMPRESSION_TYPE ||
            s->compression_type == QCOW2_COMPRESSION_ZLIB) {
            return error_setf(err, EINVAL, "compression type bit set but "
                              "no compression type in the header");
        }
        if (s->compression_type != QCOW2_COMPRESSION_ZSTD) {
            return error_setf(err, ENOTSUP, "unknown compression type %u",
                              s->compression_type);
        }
    } else if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
        return error_setf(err, EINVAL, "compression type %u without the "
                          "compression type feature bit", s->compression_type);
    }
    if ((s->incompatible_features & QCOW2_INCOMPAT_EXTL2) &&
        s->cluster_bits < QCOW2_EXTL2_MIN_CLUSTER_BITS) {
        return error_setf(err, EINVAL, "extended L2 entries need a cluster "
                          "size of at least 16k");
    }
    if ((s->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) &&
        !(s->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)) {
        if (s->open_flags & BLOCK_O_CHECK) {
            /* qemu-img check cannot open it either (qcow2.txt: the bit
             * "can only be set if the data file bit is set"). */
            return error_setf(err, EINVAL, "data-file-raw requires a data "
                              "file");
        }
        /* Meaningless without a data file; treat as an unknown bit. */
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }

    derive_geometry(s);

    /* Tables: aligned, in the file, bounded, and not overlapping. */
    uint64_t fsize = (uint64_t)flen;
    /* QEMU's checks in QEMU's order (scripts see the first that fails):
     * the L1 table's own size, then the L1 entries the virtual size
     * needs (more than INT_MAX is "too big"), then whether the table
     * has them. */
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    if (l1_bytes > QCOW2_MAX_L1_BYTES) {
        return error_setf(err, EFBIG, "Active L1 table too large");
    }
    uint64_t per_l1 = s->cluster_size * s->l2_entries;
    uint64_t need_l1 = s->size / per_l1 + (s->size % per_l1 != 0);
    if (need_l1 > INT32_MAX) {
        return error_setf(err, EFBIG, "Image is too big");
    }
    if (s->l1_size < need_l1) {
        return error_setf(err, EINVAL, "L1 table is too small");
    }
    if (s->size > (1ull << 62)) {
        /* our own bound: offsets past it would overflow */
        return error_setf(err, EFBIG, "Image is too big");
    }
    if (s->open_flags & BLOCK_O_CHECK) {
        return check_mode_tables(s, l1_bytes, fsize, err);
    }
    if (s->l1_size && (s->l1_table_offset % s->cluster_size ||
                       s->l1_table_offset == 0 ||
                       s->l1_table_offset > fsize ||
                       l1_bytes > fsize - s->l1_table_offset)) {
        return error_setf(err, EINVAL, "Invalid L1 table offset");
    }
    uint64_t rt_bytes = (uint64_t)s->refcount_table_clusters * s->cluster_size;
    if (rt_bytes > QCOW2_MAX_REFTABLE_BYTES) {
        return error_setf(err, EFBIG, "Reference count table too large");
    }
    if (s->refcount_table_clusters == 0 ||
        s->refcount_table_offset % s->cluster_size ||
        s->refcount_table_offset == 0 ||
        s->refcount_table_offset > fsize ||
        fsize - s->refcount_table_offset <
            (rt_bytes < s->cluster_size ? rt_bytes : 8)) {
        return error_setf(err, EINVAL, "Invalid reference count table offset");
    }
    if (qcow2_ranges_overlap(s->l1_table_offset, l1_bytes,
                             s->refcount_table_offset, rt_bytes)) {
        return error_setf(err, EINVAL,
                          "L1 table overlaps the reference count table");
    }
    return qcow2_read_snapshot_table(s, fsize, err);
}

void qcow2_free_header(Qcow2State *s)
{
    free(s->header_tail);
    s->header_tail = NULL;
    free(s->backing_file);
    free(s->backing_format);
    free(s->data_file_name);
    s->backing_file = s->backing_format = s->data_file_name = NULL;
    free(s->features);
    s->features = NULL;
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        free(s->unknown_exts[i].data);
    }
    free(s->unknown_exts);
    s->unknown_exts = NULL;
    s->nb_unknown_exts = 0;
    for (int i = 0; i < s->nb_snapshots_loaded; i++) {
        free(s->snapshots[i].id_str);
        free(s->snapshots[i].name);
    }
    free(s->snapshots);
    s->snapshots = NULL;
    s->nb_snapshots_loaded = 0;
}
