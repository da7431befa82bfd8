/*
 * copy.h - the copy engine: the one path that moves guest data from one
 * image to another (convert now; commit, rebase, dd, backups and volume
 * upload/download later).
 *
 * A job copies [src_offset, src_offset + length) of a *virtual source* -
 * a list of nodes concatenated end to end, as `convert a b c out` reads
 * them - to [dst_offset, ...) of one target node.
 *
 * What it promises:
 *  - block status drives it: a region the source proves zero is never
 *    read; it is skipped when the target already reads zero there (or the
 *    caller says the target is zero) and written with block_write_zeroes
 *    otherwise;
 *  - data that is read is scanned for zero runs of at least sparse_size
 *    bytes, which become holes/zero writes like the regions above
 *    (sparse_size 0 turns scanning off and writes everything as data, so
 *    the target ends up fully allocated, as qemu-img -S 0 does);
 *  - with src_base set, only regions allocated above src_base in the
 *    source chain are copied (the rest is assumed to already be right in
 *    the target, e.g. because its backing file is src_base);
 *  - with compare_target set, the target's current content is read and
 *    only the parts that differ are written (convert -B onto an unrelated
 *    backing file: the result is still exactly the source);
 *  - `workers` threads copy chunks of about chunk_size bytes in
 *    parallel; writes land in ascending order unless out_of_order;
 *  - progress is reported through one callback, from any worker thread
 *    but never concurrently.
 * On failure the first error wins, every worker stops, and err says
 * "error while reading/writing at byte N: <why>".
 */
#ifndef IMGTOOL_BLOCK_COPY_H
#define IMGTOOL_BLOCK_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

/* done and total are bytes of the job's range (skipped bytes count). */
typedef void CopyProgressFn(void *opaque, uint64_t done, uint64_t total);
/* A read error salvaged at byte off (of the concatenated source); may be
 * called from any worker, never concurrently. */
typedef void CopyWarnFn(void *opaque, uint64_t off, uint64_t len, int err);

typedef struct CopyJob {
    BlockNode **src;         /* concatenated sources, in order */
    int nsrc;
    BlockNode *src_base;     /* copy only what is allocated above this
                                node of src[0]'s chain (needs nsrc == 1);
                                NULL: everything */
    BlockNode *dst;

    uint64_t src_offset;     /* in the concatenated source */
    uint64_t dst_offset;
    uint64_t length;         /* bytes to copy */

    bool dst_is_zero;        /* the target range reads as zero already */
    bool compare_target;     /* write only what differs from the target */
    bool no_unmap;           /* zero writes must stay allocated */
    /* Leave alone what the target allocates in its own layer (not
     * through its backing file): rebase fills only the holes of the top
     * in one job instead of one job per hole. */
    bool skip_dst_allocated;
    /* The range may run past the end of the (last) source, which reads
     * as zeroes there, as a backing file shorter than its overlay does. */
    bool src_zero_past_end;
    uint64_t sparse_size;    /* min zero run turned into a hole; 0 = off */
    /* Store data compressed (BLOCK_REQ_COMPRESSED): work is planned in
     * whole target clusters, all-zero clusters become zero regions (when
     * sparse_size != 0), and each worker compresses its own clusters, so
     * compression runs in parallel.  Pieces that are not whole clusters
     * (only at odd source boundaries) are written plainly. */
    bool compress;

    int workers;             /* 0: COPY_DEFAULT_WORKERS */
    bool out_of_order;       /* -W: writes may land in any order */
    uint64_t chunk_size;     /* 0: COPY_DEFAULT_CHUNK */
    uint64_t rate_limit;     /* bytes per second, 0 = unlimited */
    bool flush;              /* flush the target when done */

    /* Data the source holds in plain file extents is shared into the
     * target's file (FICLONERANGE: XFS with reflink, btrfs) instead of
     * written, where target and source allow it; with COPY_OFFLOAD also
     * copied by the kernel (copy_file_range) where it cannot be shared
     * (convert -C).  Either way the target reads the same and later
     * writes to one image never show in the other (the file system's
     * copy-on-write).  COPY_OFFLOAD also turns off the zero scan of
     * data (qemu-img -C copies allocated data as it is).  copy_job_init
     * sets COPY_SHARE. */
    int offload;
    /* --salvage: a source range that cannot be read is copied as
     * zeroes (at 512-byte granularity) and reported through warn. */
    bool salvage;
    CopyWarnFn *warn;
    void *warn_opaque;
    /* --salvage: block status failed at byte off (of the concatenated
     * source); the 512 bytes there are copied as data (read, and
     * salvaged if the read fails too), as qemu-img does.  May be NULL. */
    CopyWarnFn *warn_status;

    CopyProgressFn *progress;
    void *progress_opaque;
} CopyJob;

enum { COPY_SHARE = 1, COPY_OFFLOAD = 2 };

#define COPY_DEFAULT_WORKERS 8
#define COPY_MAX_WORKERS     16
#define COPY_DEFAULT_CHUNK   (1024 * 1024)
/* Compressing jobs: chunks of at most this (or one target cluster). */
#define COPY_COMPRESS_CHUNK  (64 * 1024)
/* Chunk size of compare_target jobs (two buffers per worker). */
#define COPY_COMPARE_CHUNK   (256 * 1024)
#define COPY_DEFAULT_SPARSE  4096

/* Fills the defaults above; the caller sets src/nsrc/dst/length. */
void copy_job_init(CopyJob *job);

/* Runs the job to completion.  Returns 0 or a negative errno with err
 * set. */
int copy_run(const CopyJob *job, Error *err);

/* Total length of the concatenated sources, or a negative errno. */
int64_t copy_sources_length(BlockNode **src, int nsrc);

#endif
