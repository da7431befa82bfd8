/*
 * copy-int.h - the copy engine's state, shared by copy.c (workers, write
 * order, set-up), copy-plan.c (which chunk comes next) and copy-write.c
 * (how a chunk is written).
 */
#ifndef IMGTOOL_BLOCK_JOB_COPY_INT_H
#define IMGTOOL_BLOCK_JOB_COPY_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "block/job/copy.h"
#include "block/job/writeback.h"

/* Granule of the zero scan; -S sizes are multiples of it. */
#define SCAN_GRANULE 512

typedef enum { CHUNK_DATA, CHUNK_ZERO, CHUNK_SKIP } ChunkKind;

typedef struct Chunk {
    ChunkKind kind;
    uint64_t pos;        /* offset within the job's range */
    uint64_t len;
    int src;             /* index into job->src */
    uint64_t src_off;    /* offset within that source */
    uint64_t seq;
    bool known_zero;     /* DATA only because -S 0 allocates zeroes */
} Chunk;

typedef struct Copy {
    const CopyJob *job;
    uint64_t chunk_size;
    uint64_t granule;        /* compare_target granule */
    uint64_t cluster;        /* target cluster size (compress), else 0 */
    uint64_t dst_len;        /* target length (compress) */
    int64_t *src_start;      /* cumulative start of each source */
    int64_t *src_len;
    int base_depth;          /* nodes from src[0] down to src_base */

    pthread_mutex_t lock;
    /* In-order writes: the worker holding read chunk q posts itself in
     * posted[q % nworkers].  Chunks not yet written are all held by
     * workers, so no two pending chunks share a slot, and a slot is
     * emptied (its chunk taken for writing) before chunk q + nworkers can
     * be planned. */
    struct Worker *workers;
    int nworkers;
    struct Worker *posted[COPY_MAX_WORKERS];
    bool writing;            /* some worker is writing posted chunks */
    uint64_t next_pos;       /* next byte of the range to plan */
    uint64_t next_seq;       /* sequence number of the next chunk */
    uint64_t write_seq;      /* chunk allowed to write (in-order mode) */
    uint64_t done;

    /* cached status extent [st_start, st_end) of source st_src */
    int st_src;
    uint64_t st_start, st_end;
    ChunkKind st_kind;
    /* skip_dst_allocated: cached target extent [dt_start, dt_end) */
    uint64_t dt_start, dt_end;
    bool dt_alloc;

    /* sharing extents (job->offload): on while the target's file system
     * has not refused; runs are cut to share_align (whole target
     * clusters, whole pages) and their edges written */
    atomic_bool share;
    int share_flags;
    uint64_t share_align;

    int ret;
    Error err;

    struct timespec t0;
    uint64_t rated_bytes;

    BlockWriteback *wb;      /* early writeback (block/job/writeback.c) */
} Copy;

/* copy-plan.c */

/* Hands out the next chunk; returns 1 with *ch filled, 0 when the range
 * is exhausted, negative on a status error.  Lock held. */
int copy_plan(Copy *c, Chunk *ch);

/* copy-write.c: lock not held */

/* A region the source reads as zero. */
int copy_write_zero(Copy *c, uint64_t d_off, uint64_t len);
/* Source data for [d_off, d_off + len): zero runs of at least
 * sparse_size become zero regions. */
int copy_write_sparse(Copy *c, uint64_t d_off, const uint8_t *buf,
                      uint64_t len, BlockNode *src, uint64_t s_off);
/* compare_target: writes only the granules where buf differs from cur
 * (the target's content). */
int copy_write_diff(Copy *c, uint64_t d_off, const uint8_t *buf,
                    const uint8_t *cur, uint64_t len, BlockNode *src,
                    uint64_t s_off);

#endif
