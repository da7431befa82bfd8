/*
 * sums.h - checksum maps: one 128-bit hash per cluster of a disk's whole
 * content at one backup point, and the file that keeps them.
 *
 * A map is what a point's disk reads as, cluster by cluster, whichever
 * layers of the chain hold the data: so a point is verified without its
 * parents' data, an incremental compares what it reads with its base's
 * map without reading the base, and a restore checks every cluster it
 * writes.
 *
 * The hash is XXH3-128 seeded with the repository's random seed (a
 * guest does not know the seed, so it cannot aim two of its clusters at
 * one hash; a hash is a corruption check, not a signature).  Cluster i
 * covers bytes [i * cluster, min((i + 1) * cluster, size)); the last one
 * may be short.  Past a map's end a disk reads as zeroes (a shorter
 * backing file), so lookups there give the zero hash.
 *
 * The file: a 64-byte header (plain: magic, version, flags, cluster
 * bits, size, count, nonce), the entries as one zstd stream (encrypted
 * with AES-256-GCM, the header as associated data, when the repository
 * is encrypted: hashes of plaintext must not leak what a disk holds),
 * the GCM tag (zeroes when plain), and an XXH3-128 of everything before
 * it.  Files are written once, streamed in cluster order, fsynced at
 * close, and read back streamed in the same order; memory stays bounded
 * whatever the disk's size.
 */
#ifndef IMGTOOL_BACKUP_SUMS_H
#define IMGTOOL_BACKUP_SUMS_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

typedef struct BkHash {
    uint64_t lo, hi;
} BkHash;

static inline bool bk_hash_eq(const BkHash *a, const BkHash *b)
{
    return a->lo == b->lo && a->hi == b->hi;
}

void bk_hash(const void *buf, size_t len, uint64_t seed, BkHash *out);
/* The hash of `len` zero bytes (cached for the usual lengths). */
void bk_hash_zero(size_t len, uint64_t seed, BkHash *out);
/* 32 lowercase hex digits (+ NUL). */
void bk_hash_hex(const BkHash *h, char out[33]);
int bk_hash_parse(const char *hex, BkHash *out);

/* The encryption key of a repository's maps (NULL: plain). */
typedef struct BkKey {
    uint8_t bytes[32];
} BkKey;

typedef struct SumsInfo {
    uint32_t cluster_bits;
    uint64_t virtual_size;
    uint64_t count;           /* clusters: ceil(size / cluster) */
} SumsInfo;

typedef struct SumsWriter SumsWriter;
typedef struct SumsReader SumsReader;

/* Creates path (exclusively) for a map of info->count entries. */
int sums_writer_open(const char *path, const SumsInfo *info,
                     const BkKey *key, SumsWriter **out, Error *err);
int sums_writer_append(SumsWriter *w, const BkHash *v, uint64_t n,
                       Error *err);
/* Checks that exactly count entries came, ends the file, fsyncs it and
 * gives its digest (the last 16 bytes) and the content digest (the hash
 * of the entries: equal for two points whose disks read the same); both
 * may be NULL.  Frees w whatever happens (removing the file on failure). */
int sums_writer_close(SumsWriter *w, BkHash *digest, BkHash *content,
                      Error *err);
/* Frees w and removes its file (a run that failed). */
void sums_writer_abort(SumsWriter *w);

/* Opens a map for reading in order; a wrong key or a damaged header is
 * an error here, damaged entries at the latest in sums_reader_finish. */
int sums_reader_open(const char *path, const BkKey *key, SumsReader **out,
                     Error *err);
const SumsInfo *sums_reader_info(const SumsReader *r);
/* Up to n next entries; returns how many (fewer only at the map's end:
 * past it a disk reads zeroes, and the caller uses the zero hash of its
 * own cluster length). */
int sums_reader_next(SumsReader *r, BkHash *v, uint64_t n, Error *err);
/* Reads what is left, checks the tag and the digest (against `expect`
 * when not NULL) and frees r. */
int sums_reader_finish(SumsReader *r, const BkHash *expect, Error *err);
void sums_reader_close(SumsReader *r);

/* Reads the whole file and checks it: its digest against `expect` (may
 * be NULL), the tag, the stream and the entry count.  *content (may be
 * NULL) receives the content digest: the hash of the entries, equal for
 * two points whose disks read the same. */
int sums_file_check(const char *path, const BkKey *key, const BkHash *expect,
                    BkHash *content, Error *err);

#endif
