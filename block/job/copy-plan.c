/*
 * copy-plan.c - the copy engine's planning: which chunk comes next, and
 * what it is (data to read, a zero region, or a region to skip).
 *
 * Planning asks block_status_above once per status extent (cached), not
 * once per chunk: a 1 TiB empty image costs a handful of status calls.
 * Chunks are handed out in ascending order, data chunks end on the
 * target's chunk boundaries (and, compressing, on whole target
 * clusters), and a status that makes no progress is an error rather
 * than a spin.  Everything here runs with the job lock held.
 */
#include <errno.h>
#include <string.h>

#include "block/job/copy-int.h"

/* Zero regions proven by block status are handed out in pieces of at
 * most this, so progress moves and one worker does not hog a huge
 * write_zeroes. */
#define ZERO_CHUNK_MAX (1ULL << 30)

/* Classifies the source at [s_off, ...) of source i and caches the
 * extent.  Called with the lock held. */
static int copy_status(Copy *c, int i, uint64_t s_off, uint64_t max)
{
    const CopyJob *job = c->job;
    uint64_t pnum = 0;
    int depth = 0;
    int st = block_status_above(job->src[i], job->src_base, s_off, max,
                                &pnum, NULL, NULL, &depth);
    if (st < 0) {
        return st;
    }
    if (pnum == 0) {
        return -EIO;   /* a status that makes no progress would spin */
    }
    if (pnum > max) {
        pnum = max;
    }
    if (job->src_base &&
        (!(st & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO)) ||
         depth >= c->base_depth)) {
        /* Defined by src_base or below: the target has it already.  A
         * region that reads as zero above the base (past the end of a
         * shorter middle layer) is not, and is written as zeroes. */
        c->st_kind = CHUNK_SKIP;
    } else if (st & BLOCK_STATUS_ZERO) {
        c->st_kind = CHUNK_ZERO;
    } else {
        /* DATA, or a status that proves nothing: read it. */
        c->st_kind = CHUNK_DATA;
    }
    c->st_src = i;
    c->st_start = s_off;
    c->st_end = s_off + pnum;
    return 0;
}

/* skip_dst_allocated: clips [d, d + *len) of the target to one
 * allocation extent and says whether the target's own layer allocates
 * it.  Lock held. */
static int copy_dst_status(Copy *c, uint64_t d, uint64_t *len, bool *alloc)
{
    if (!(c->dt_start <= d && d < c->dt_end)) {
        /* Asked up to the job's end, never just the chunk: a chunk ending
         * inside a target cluster allocates all of it (copy-on-write from
         * the target's backing), so a fresh query there would call the
         * rest of that cluster the target's own and skip it.  Extents end
         * on the target's cluster boundaries, which no write crosses. */
        uint64_t end = c->job->dst_offset + c->job->length;
        uint64_t pnum = 0;
        int st = block_status(c->job->dst, d, end - d, &pnum, NULL, NULL);
        if (st < 0) {
            return st;
        }
        if (pnum == 0) {
            return -EIO;   /* a status that makes no progress would spin */
        }
        c->dt_start = d;
        c->dt_end = d + pnum;
        c->dt_alloc = st & BLOCK_STATUS_ALLOCATED;
    }
    if (*len > c->dt_end - d) {
        *len = c->dt_end - d;
    }
    *alloc = c->dt_alloc;
    return 0;
}

/* Compression works on whole target clusters: a region that would start
 * or end inside one becomes data up to the cluster boundary (zeroes are
 * read and found zero again when written). */
static void compress_align(Copy *c, uint64_t pos, uint64_t left,
                           ChunkKind *kind, uint64_t *len, Chunk *ch)
{
    uint64_t cl = c->cluster;
    uint64_t d = c->job->dst_offset + pos;
    if (*kind != CHUNK_DATA && (d % cl || (*len < cl && *len < left))) {
        *kind = CHUNK_DATA;
        ch->known_zero = false;
    }
    if (*kind == CHUNK_DATA) {
        uint64_t e = (d + *len + cl - 1) / cl * cl - d;
        *len = e < left ? e : left;
    } else if (*len < left) {
        *len = (d + *len) / cl * cl - d;
    }
}

/* Classifies the source from s_off (source i, within its length): the
 * status extent there, with adjacent data merged up to the chunk
 * boundary.  Clips *left to the source.  Lock held. */
static int copy_source_extent(Copy *c, int i, uint64_t s_off, uint64_t pos,
                              uint64_t *left_io, ChunkKind *kind_out,
                              uint64_t *len_out)
{
    const CopyJob *job = c->job;
    uint64_t left = *left_io;
    uint64_t src_left = c->src_len[i] - s_off;
    if (left > src_left) {
        left = src_left;
    }

    if (!(c->st_src == i && c->st_start <= s_off && s_off < c->st_end)) {
        int ret = copy_status(c, i, s_off, left);
        if (ret < 0 && job->salvage) {
            /* as qemu-img: one sector taken as data, status asked again
             * after it */
            if (job->warn_status) {
                job->warn_status(job->warn_opaque, c->src_start[i] + s_off,
                                 SCAN_GRANULE, ret);
            }
            c->st_src = i;
            c->st_start = s_off;
            c->st_end = s_off + (left < SCAN_GRANULE ? left : SCAN_GRANULE);
            c->st_kind = CHUNK_DATA;
            ret = 0;
        }
        if (ret < 0) {
            error_setf(&c->err, -ret,
                       "error while reading block status at byte %llu: %s",
                       (unsigned long long)(c->src_start[i] + s_off),
                       strerror(-ret));
            return ret;
        }
    }
    uint64_t len = c->st_end - s_off;
    if (len > left) {
        len = left;
    }

    ChunkKind kind = c->st_kind;
    if (kind == CHUNK_DATA) {
        /* Status may come in small pieces (qcow2 reports each compressed
         * cluster on its own): adjacent data up to the chunk boundary
         * goes into one chunk, one large read and write instead of one
         * per piece and a write turn each (convert of a compressed image:
         * 10,800 -> 1,900 context switches). */
        uint64_t d = job->dst_offset + pos;
        uint64_t want = c->chunk_size - d % c->chunk_size;
        while (len < want && len < left && c->st_end == s_off + len &&
               copy_status(c, i, c->st_end, left - len) == 0 &&
               c->st_kind == CHUNK_DATA) {
            len = c->st_end - s_off;
            if (len > left) {
                len = left;
            }
        }
        /* a status error or another kind next is met by the next plan */
    }
    *left_io = left;
    *kind_out = kind;
    *len_out = len;
    return 0;
}

/* Hands out the next chunk; returns 1 with *ch filled, 0 when the range
 * is exhausted, negative on a status error.  Lock held. */
int copy_plan(Copy *c, Chunk *ch)
{
    const CopyJob *job = c->job;
    if (c->next_pos >= job->length) {
        return 0;
    }
    uint64_t pos = c->next_pos;
    uint64_t s = job->src_offset + pos;
    int i = 0;
    while (i < job->nsrc - 1 && (uint64_t)c->src_start[i + 1] <= s) {
        i++;
    }
    uint64_t s_off = s - c->src_start[i];
    uint64_t left = job->length - pos;
    ChunkKind kind;
    uint64_t len;
    /* past the end of the sources: zeroes (src_zero_past_end) */
    bool past_end = s_off >= (uint64_t)c->src_len[i];
    if (past_end && !job->src_zero_past_end) {
        return -EIO;   /* range runs past the sources: caller bug */
    }
    if (past_end) {
        kind = CHUNK_ZERO;
        len = left;
    } else {
        int ret = copy_source_extent(c, i, s_off, pos, &left, &kind, &len);
        if (ret < 0) {
            return ret;
        }
    }
    ch->known_zero = false;
    if (kind == CHUNK_ZERO && job->sparse_size == 0 &&
        !job->compare_target) {
        /* -S 0: zeroes are written as data so the target is allocated. */
        kind = CHUNK_DATA;
        ch->known_zero = true;
    }
    if (job->compress && c->cluster > 1 && !past_end) {
        compress_align(c, pos, left, &kind, &len, ch);
    }
    if (kind == CHUNK_DATA) {
        /* end on a chunk boundary of the target so writes stay aligned */
        uint64_t d = job->dst_offset + pos;
        uint64_t to_boundary = c->chunk_size - d % c->chunk_size;
        if (len > to_boundary) {
            len = to_boundary;
        }
    } else if (len > ZERO_CHUNK_MAX) {
        len = ZERO_CHUNK_MAX;
    }

    if (job->skip_dst_allocated) {
        /* last, so no alignment above widens a chunk over the target's
         * own data again */
        bool alloc;
        uint64_t d = job->dst_offset + pos;
        int ret = copy_dst_status(c, d, &len, &alloc);
        if (ret < 0) {
            error_setf(&c->err, -ret,
                       "error while reading block status at byte %llu: %s",
                       (unsigned long long)d, strerror(-ret));
            return ret;
        }
        if (alloc) {
            kind = CHUNK_SKIP;
        }
    }

    ch->kind = kind;
    ch->pos = pos;
    ch->len = len;
    ch->src = i;
    ch->src_off = s_off;
    ch->seq = c->next_seq++;
    c->next_pos = pos + len;
    return 1;
}
