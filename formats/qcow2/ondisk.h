/*
 * ondisk.h - the qcow2 on-disk format as qcow2.txt defines it: header
 * fields and limits, feature bits, extension types, L1/L2/refcount table
 * entry bits, and the big-endian accessors every structure is read and
 * written with.  No driver state: qcow2.h (the driver's internal
 * interface) includes it, and so can anything that only parses bytes.
 */
#ifndef IMGTOOL_FORMATS_QCOW2_ONDISK_H
#define IMGTOOL_FORMATS_QCOW2_ONDISK_H

#include <stdbool.h>
#include <stdint.h>

/* ------------------------------------------------------------------ */
/* On-disk constants                                                   */

#define QCOW2_MAGIC              0x514649fbu   /* "QFI\xfb" */
#define QCOW2_V2_HEADER_SIZE     72
#define QCOW2_V3_HEADER_MIN      104
#define QCOW2_V3_HEADER_SIZE     112           /* with compression_type */

#define QCOW2_MIN_CLUSTER_BITS   9
#define QCOW2_MAX_CLUSTER_BITS   21
#define QCOW2_EXTL2_MIN_CLUSTER_BITS 14
#define QCOW2_MAX_REFCOUNT_ORDER 6

/* Limits that bound memory for hostile headers (same as QEMU's). */
#define QCOW2_MAX_L1_BYTES        (32u * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES  (8u * 1024 * 1024)
#define QCOW2_MAX_BACKING_NAME    1023
#define QCOW2_MAX_SNAPSHOTS       65536
/* Where qemu-img stops reading a file (its BDRV_MAX_LENGTH, 2^63 - 1 GiB):
 * check treats metadata beyond it as unreadable, as qemu-img check does,
 * instead of reading zeroes there. */
#define QCOW2_READ_LIMIT          0x7fffffffc0000000ull

/* Header field offsets (big endian on disk). */
enum {
    QCOW2_HDR_MAGIC = 0,
    QCOW2_HDR_VERSION = 4,
    QCOW2_HDR_BACKING_OFFSET = 8,
    QCOW2_HDR_BACKING_SIZE = 16,
    QCOW2_HDR_CLUSTER_BITS = 20,
    QCOW2_HDR_SIZE = 24,
    QCOW2_HDR_CRYPT_METHOD = 32,
    QCOW2_HDR_L1_SIZE = 36,
    QCOW2_HDR_L1_OFFSET = 40,
    QCOW2_HDR_REFTABLE_OFFSET = 48,
    QCOW2_HDR_REFTABLE_CLUSTERS = 56,
    QCOW2_HDR_NB_SNAPSHOTS = 60,
    QCOW2_HDR_SNAPSHOTS_OFFSET = 64,
    QCOW2_HDR_INCOMPAT = 72,
    QCOW2_HDR_COMPAT = 80,
    QCOW2_HDR_AUTOCLEAR = 88,
    QCOW2_HDR_REFCOUNT_ORDER = 96,
    QCOW2_HDR_HEADER_LENGTH = 100,
    QCOW2_HDR_COMPRESSION_TYPE = 104,
};

/* incompatible_features */
#define QCOW2_INCOMPAT_DIRTY        (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1full
/* compatible_features */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_COMPAT_KNOWN          0x1ull
/* autoclear_features */
#define QCOW2_AUTOCLEAR_BITMAPS     (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)
/* Bits we maintain; others are cleared when opening for writing.  The
 * bitmaps bit survives: bitmap-*.c keep the bitmaps up to date. */
#define QCOW2_AUTOCLEAR_KNOWN       (QCOW2_AUTOCLEAR_DATA_FILE_RAW | \
                                     QCOW2_AUTOCLEAR_BITMAPS)

/* crypt_method */
#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES  1
#define QCOW2_CRYPT_LUKS 2

/* compression_type */
#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types. */
#define QCOW2_EXT_END            0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE  0x6803f857u
#define QCOW2_EXT_BITMAPS        0x23852875u
#define QCOW2_EXT_CRYPTO         0x0537be77u
#define QCOW2_EXT_DATA_FILE      0x44415441u

/* Feature name table entry: type(1) bit(1) name(46). */
#define QCOW2_FEATURE_NAME_LEN   46
#define QCOW2_FEATURE_ENTRY_SIZE 48
enum { QCOW2_FEAT_INCOMPAT = 0, QCOW2_FEAT_COMPAT = 1,
       QCOW2_FEAT_AUTOCLEAR = 2 };

/* L1 / L2 / refcount table entry bits. */
#define QCOW2_OFLAG_COPIED      (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED  (1ull << 62)
#define QCOW2_OFLAG_ZERO        (1ull << 0)
#define QCOW2_L1E_OFFSET_MASK   0x00fffffffffffe00ull
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffull
#define QCOW2_L2E_OFFSET_MASK   0x00fffffffffffe00ull
/* Reserved bits of a standard L2 entry (bits 1-8, 56-61). */
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define QCOW2_REFT_OFFSET_MASK  0xfffffffffffffe00ull
#define QCOW2_REFT_RESERVED_MASK 0x1ffull

/* Extended L2: second 64-bit word. */
#define QCOW2_SUBCLUSTERS       32
#define QCOW2_L2B_ALLOC_MASK    0x00000000ffffffffull
#define QCOW2_L2B_ZERO_MASK     0xffffffff00000000ull
#define QCOW2_L2B_ALL_ZERO      QCOW2_L2B_ZERO_MASK

/* Snapshot table entry fixed part. */
#define QCOW2_SNAPSHOT_FIXED    40
#define QCOW2_SNAPSHOT_EXTRA_V3 16

/* ------------------------------------------------------------------ */
/* Big-endian helpers                                                  */

static inline uint16_t qcow2_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t qcow2_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t qcow2_be64(const uint8_t *p)
{
    return ((uint64_t)qcow2_be32(p) << 32) | qcow2_be32(p + 4);
}
static inline void qcow2_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void qcow2_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void qcow2_put_be64(uint8_t *p, uint64_t v)
{
    qcow2_put_be32(p, (uint32_t)(v >> 32));
    qcow2_put_be32(p + 4, (uint32_t)v);
}

static inline uint64_t qcow2_align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* [a, a + alen) and [b, b + blen) share a byte. */
static inline bool qcow2_ranges_overlap(uint64_t a, uint64_t alen, uint64_t b,
                                        uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

#endif
