/*
 * engine.h - the cluster engine of backups: reads a disk cluster by
 * cluster through a node, hashes every cluster it reads, and decides
 * per cluster against a reference checksum map.  One engine serves the
 * three jobs that move or check backup data:
 *
 *   STORE    (backup): clusters whose hash differs from the reference
 *            (the base point's map) are written into the new point's
 *            layer; the new map is written in cluster order;
 *   RESTORE  every cluster read is checked against the point's map and
 *            written to the target (a node, or a stream in order);
 *   CHECK    (verify): clusters a layer holds are checked against the
 *            point's map; for the others the map must equal the
 *            parent's (what an unallocated cluster reads).
 *
 * What it promises:
 *  - block status drives reading: a range the source proves zero is
 *    never read (its hash is the zero hash); `select` says which
 *    clusters to read at all (a dirty bitmap, a layer's allocation);
 *    bytes_read counts exactly the bytes read from the source;
 *  - workers read, hash and write chunks in parallel; maps are written
 *    and streams receive data in cluster order; memory is bounded by
 *    the number of workers, never by the disk's size;
 *  - the first error stops every worker and is the one reported; a
 *    cancel flag set by the caller stops the job with ECANCELED.
 */
#ifndef IMGTOOL_BACKUP_ENGINE_H
#define IMGTOOL_BACKUP_ENGINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "backup/sums.h"
#include "block/block.h"

typedef enum {
    BK_ACT_STORE,
    BK_ACT_RESTORE,
    BK_ACT_CHECK,
} BkAction;

/* Which clusters to read: like block_status, 1 when [off, off + *pnum)
 * is to be read, 0 when not (*pnum >= 1), or a negative errno with err
 * set.  Called in order, from one thread at a time. */
typedef int BkSelectFn(void *opaque, uint64_t off, uint64_t len,
                       uint64_t *pnum, Error *err);

/* RESTORE/CHECK: the name of the chain layer (0 = top) that holds the
 * cluster whose hash did not match, for the message. */
typedef const char *BkLayerNameFn(void *opaque, int depth);

typedef struct BkJob {
    BkAction action;
    BlockNode *src;            /* read through its backing chain */
    uint64_t size;             /* bytes of the disk */
    uint32_t cluster_bits;     /* the hash unit */
    uint64_t seed;
    BkSelectFn *select;        /* NULL: every cluster */
    void *select_opaque;
    SumsReader *ref;           /* STORE: the base's map (NULL: zeroes);
                                  RESTORE, CHECK: the point's own */
    SumsReader *ref2;          /* CHECK: the parent's map (NULL: zeroes) */
    SumsWriter *out;           /* STORE: the new map */
    BlockNode *dst;            /* STORE, RESTORE (or dst_fd) */
    int dst_fd;                /* RESTORE: a stream written in order;
                                  -1: none */
    bool dst_backed;           /* STORE: dst has a backing file, so a
                                  cluster that became zero is written as
                                  zeroes (else it is left unallocated) */
    bool dst_zero;             /* RESTORE: dst reads as zeroes already */
    bool compress;             /* STORE: clusters written compressed */
    int workers;               /* 0: default */
    BlockProgressFn *progress; /* bytes of the disk done */
    void *progress_opaque;
    atomic_bool *cancel;       /* may be NULL */
    BkLayerNameFn *layer_name;
    void *layer_opaque;
    const char *what;          /* "point X disk Y", for messages */
} BkJob;

typedef struct BkStats {
    uint64_t bytes_read;       /* from src */
    uint64_t clusters_read;    /* selected clusters */
    uint64_t clusters_changed; /* STORE: clusters written to dst */
    uint64_t bytes_written;    /* guest bytes written to dst / dst_fd */
    uint64_t mismatches;       /* CHECK */
    uint64_t first_mismatch;   /* CHECK: byte offset of the first */
    int first_mismatch_depth;
} BkStats;

#define BK_DEFAULT_WORKERS 8
#define BK_MAX_WORKERS 16

int bk_engine_run(const BkJob *job, BkStats *st, Error *err);

/* True when len bytes at buf are all zero. */
bool bk_buffer_is_zero(const void *buf, size_t len);

#endif
