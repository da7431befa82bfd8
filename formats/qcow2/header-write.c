/*
 * header-write.c - rewriting the qcow2 header cluster from s, and the
 * small in-place header changes (incompatible feature bits, the corrupt
 * bit).
 *
 * A rewrite keeps the header bytes and extensions we do not understand
 * (as header.c read them) and never touches anything past the part of
 * the first cluster the header uses.  A header of one sector is one
 * write, which lands whole or not at all: a crash leaves the old header
 * or the new one.  Where the header may grow past a sector (amend's
 * version and data file changes), qcow2_write_header_switch keeps that
 * promise too: a longer header that replaces a one-sector one has its
 * tail written and flushed before the first sector, and a long old
 * header is first made a one-sector one by dropping its optional
 * feature name table.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* Names QEMU writes in its feature name table, in its order. */
static const struct {
    uint8_t type, bit;
    const char *name;
} known_features[] = {
    { QCOW2_FEAT_INCOMPAT, 0, "dirty bit" },
    { QCOW2_FEAT_INCOMPAT, 1, "corrupt bit" },
    { QCOW2_FEAT_INCOMPAT, 2, "external data file" },
    { QCOW2_FEAT_INCOMPAT, 3, "compression type" },
    { QCOW2_FEAT_INCOMPAT, 4, "extended L2 entries" },
    { QCOW2_FEAT_COMPAT, 0, "lazy refcounts" },
    { QCOW2_FEAT_AUTOCLEAR, 0, "bitmaps" },
    { QCOW2_FEAT_AUTOCLEAR, 1, "raw external data" },
};

int qcow2_build_header(Qcow2State *s, uint8_t *buf, Error *err)
{
    uint64_t cs = s->cluster_size;
    uint32_t hl = s->version == 2 ? QCOW2_V2_HEADER_SIZE : s->header_length;
    uint64_t off;

    memset(buf, 0, cs);
    qcow2_put_be32(buf + QCOW2_HDR_MAGIC, QCOW2_MAGIC);
    qcow2_put_be32(buf + QCOW2_HDR_VERSION, s->version);
    qcow2_put_be32(buf + QCOW2_HDR_CLUSTER_BITS, s->cluster_bits);
    qcow2_put_be64(buf + QCOW2_HDR_SIZE, s->size);
    qcow2_put_be32(buf + QCOW2_HDR_CRYPT_METHOD, s->crypt_method);
    qcow2_put_be32(buf + QCOW2_HDR_L1_SIZE, s->l1_size);
    qcow2_put_be64(buf + QCOW2_HDR_L1_OFFSET, s->l1_table_offset);
    qcow2_put_be64(buf + QCOW2_HDR_REFTABLE_OFFSET, s->refcount_table_offset);
    qcow2_put_be32(buf + QCOW2_HDR_REFTABLE_CLUSTERS,
                   s->refcount_table_clusters);
    qcow2_put_be32(buf + QCOW2_HDR_NB_SNAPSHOTS, s->nb_snapshots);
    qcow2_put_be64(buf + QCOW2_HDR_SNAPSHOTS_OFFSET, s->snapshots_offset);
    if (s->version >= 3) {
        qcow2_put_be64(buf + QCOW2_HDR_INCOMPAT, s->incompatible_features);
        qcow2_put_be64(buf + QCOW2_HDR_COMPAT, s->compatible_features);
        qcow2_put_be64(buf + QCOW2_HDR_AUTOCLEAR, s->autoclear_features);
        qcow2_put_be32(buf + QCOW2_HDR_REFCOUNT_ORDER, s->refcount_order);
        qcow2_put_be32(buf + QCOW2_HDR_HEADER_LENGTH, hl);
        if (hl > QCOW2_HDR_COMPRESSION_TYPE) {
            buf[QCOW2_HDR_COMPRESSION_TYPE] = s->compression_type;
        }
        if (s->header_tail_len) {
            memcpy(buf + QCOW2_V3_HEADER_SIZE, s->header_tail,
                   s->header_tail_len);
        }
    }
    off = hl;

#define PUT_EXT(type_, data_, len_)                                     \
    do {                                                                \
        uint64_t l_ = (len_);                                           \
        if (off + 8 + qcow2_align_up(l_, 8) + 8 > cs) {                 \
            goto too_big;                                               \
        }                                                               \
        qcow2_put_be32(buf + off, (type_));                             \
        qcow2_put_be32(buf + off + 4, (uint32_t)l_);                    \
        if (l_) {                                                       \
            memcpy(buf + off + 8, (data_), l_);                         \
        }                                                               \
        off += 8 + qcow2_align_up(l_, 8);                               \
    } while (0)

    /* Crypto header pointer first, as QEMU orders them. */
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == QCOW2_EXT_CRYPTO) {
            PUT_EXT(QCOW2_EXT_CRYPTO, s->unknown_exts[i].data,
                    s->unknown_exts[i].len);
        }
    }
    if (s->backing_file && s->backing_format) {
        PUT_EXT(QCOW2_EXT_BACKING_FORMAT, s->backing_format,
                strlen(s->backing_format));
    }
    if (s->data_file_name) {
        PUT_EXT(QCOW2_EXT_DATA_FILE, s->data_file_name,
                strlen(s->data_file_name));
    }
    /* QEMU leaves the feature table out of clusters of 4k and less. */
    if (s->version >= 3 && cs > 4096) {
        size_t n = sizeof(known_features) / sizeof(known_features[0]);
        uint8_t table[sizeof(known_features) / sizeof(known_features[0]) *
                      QCOW2_FEATURE_ENTRY_SIZE];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < n; i++) {
            uint8_t *e = table + i * QCOW2_FEATURE_ENTRY_SIZE;
            e[0] = known_features[i].type;
            e[1] = known_features[i].bit;
            memcpy(e + 2, known_features[i].name,
                   strlen(known_features[i].name));
        }
        PUT_EXT(QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
    }
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type != QCOW2_EXT_CRYPTO) {
            PUT_EXT(s->unknown_exts[i].type, s->unknown_exts[i].data,
                    s->unknown_exts[i].len);
        }
    }
#undef PUT_EXT
    /* End marker (8 zero bytes; buf is zeroed). */
    off += 8;
    if (s->backing_file) {
        size_t bl = strlen(s->backing_file);
        if (off + bl > cs) {
            goto too_big;
        }
        memcpy(buf + off, s->backing_file, bl);
        qcow2_put_be64(buf + QCOW2_HDR_BACKING_OFFSET, off);
        qcow2_put_be32(buf + QCOW2_HDR_BACKING_SIZE, (uint32_t)bl);
        s->backing_file_offset_raw = off;
        off += bl;
    }
    return (int)off;

too_big:
    return error_setf(err, ENOSPC, "header extensions do not fit in the "
                      "first cluster");
}

int qcow2_write_header(Qcow2State *s, Error *err)
{
    uint8_t *buf = malloc(s->cluster_size);
    int ret;

    if (!buf) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    ret = qcow2_build_header(s, buf, err);
    if (ret >= 0) {
        /* One write of the used part of the first cluster: a crash sees
         * the old or the new header as long as the sector writes land
         * whole, and we never touch anything beyond it. */
        size_t len = (size_t)qcow2_align_up((uint64_t)ret, 512);
        if (len > s->cluster_size) {
            len = s->cluster_size;
        }
        ret = block_pwrite(block_file(s->node), 0, len, buf, 0);
        if (ret < 0) {
            error_setf(err, -ret, "cannot write qcow2 header: %s",
                       strerror(-ret));
        } else {
            ret = block_flush(block_file(s->node));
            if (ret < 0) {
                error_setf(err, -ret, "cannot flush qcow2 header: %s",
                           strerror(-ret));
            }
        }
    }
    free(buf);
    return ret < 0 ? ret : 0;
}

void qcow2_set_plain_header(Qcow2State *s, uint32_t version)
{
    s->version = version;
    s->incompatible_features = 0;
    s->compatible_features = 0;
    s->autoclear_features = 0;
    s->refcount_order = 4;
    s->header_length = version == 2 ? QCOW2_V2_HEADER_SIZE
                                    : QCOW2_V3_HEADER_SIZE;
    s->compression_type = QCOW2_COMPRESSION_ZLIB;
}

int qcow2_update_incompat(Qcow2State *s, uint64_t set, uint64_t clear)
{
    uint8_t b[8];
    uint64_t v = (s->incompatible_features | set) & ~clear;
    int ret;

    if (s->version < 3) {
        return set ? -ENOTSUP : 0;
    }
    if (v == s->incompatible_features) {
        return 0;
    }
    qcow2_put_be64(b, v);
    ret = block_pwrite(block_file(s->node), QCOW2_HDR_INCOMPAT, 8, b, 0);
    if (ret < 0) {
        return ret;
    }
    ret = block_flush(block_file(s->node));
    if (ret < 0) {
        return ret;
    }
    s->incompatible_features = v;
    return 0;
}

void qcow2_signal_corruption(Qcow2State *s, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (s->read_only || (s->open_flags & BLOCK_O_CHECK)) {
        block_report(BLOCK_REPORT_ERROR, "qcow2: image is corrupt: %s", msg);
        return;
    }
    block_report(BLOCK_REPORT_ERROR, "qcow2: marking image as corrupt: %s; "
                 "further corruption events will be suppressed", msg);
    if (!(s->incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
        qcow2_update_incompat(s, QCOW2_INCOMPAT_CORRUPT, 0);
    }
    s->read_only = true;
}

/* ------------------------------------------------------------------ */
/* Header switches                                                     */

/* Bytes of the header cluster the header on disk uses (fields,
 * extensions up to the end marker, backing file name wherever it sits):
 * what a rewrite must not disturb before its switch.  Unparseable means
 * the whole cluster. */
int qcow2_header_used(Qcow2State *s, Error *err)
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
int qcow2_write_header_switch(Qcow2State *s, int old_used, Error *err)
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
