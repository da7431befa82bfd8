/*
 * copy-write.c - how the copy engine writes what a chunk holds: zero
 * regions (skipped where the target provably reads zero already), data
 * with its zero runs turned into holes, data compressed a cluster at a
 * time, and with compare_target only the granules that differ from the
 * target.
 *
 * The target ends up reading exactly as the source whichever path a
 * chunk takes; the paths differ only in what they allocate.  Called
 * without the job lock, from any worker.
 *
 * Data runs are shared from the source's file where the job offloads
 * (copy_put_data): the run's whole target clusters are shared, its
 * edges written from the buffer that was read anyway (for the zero
 * scan), so the result is the same as a write's.
 */
#include <errno.h>
#include <string.h>

#include "block/job/copy-int.h"

static bool buf_is_zero(const uint8_t *p, size_t len)
{
    /* compare against itself shifted: len bytes are zero iff the first
     * is and every byte equals its predecessor */
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

static int zero_flags(const CopyJob *job)
{
    return job->no_unmap ? 0 : BLOCK_REQ_MAY_UNMAP;
}

/* A region the source reads as zero.  Skipped when the target provably
 * reads zero there already. */
int copy_write_zero(Copy *c, uint64_t d_off, uint64_t len)
{
    const CopyJob *job = c->job;
    if (job->dst_is_zero) {
        return 0;
    }
    if (job->compare_target && block_is_zero_fast(job->dst, d_off, len)) {
        return 0;
    }
    return block_write_zeroes(job->dst, d_off, len, zero_flags(job));
}

/* Compressing: each target cluster is either all zero (a zero region,
 * unless sparse_size is 0) or data, compressed by the driver in this
 * worker's thread when it is a whole cluster. */
static int copy_write_compressed(Copy *c, uint64_t d_off, const uint8_t *buf,
                                 uint64_t len)
{
    const CopyJob *job = c->job;
    uint64_t cl = c->cluster;
    while (len > 0) {
        uint64_t piece = cl - d_off % cl;
        if (piece > len) {
            piece = len;
        }
        bool whole = d_off % cl == 0 &&
                     (piece == cl || d_off + piece == c->dst_len);
        int ret;
        if (job->sparse_size && buf_is_zero(buf, piece)) {
            ret = copy_write_zero(c, d_off, piece);
        } else {
            ret = block_pwrite(job->dst, d_off, piece, buf,
                               whole ? BLOCK_REQ_COMPRESSED : 0);
        }
        if (ret < 0) {
            return ret;
        }
        d_off += piece;
        buf += piece;
        len -= piece;
    }
    return 0;
}

/* Data for [d_off, d_off + len), which the source holds at s_off of
 * src: shared where the job and the file systems allow, else written. */
static int copy_put_data(Copy *c, uint64_t d_off, uint64_t len,
                         const uint8_t *buf, BlockNode *src, uint64_t s_off)
{
    const CopyJob *job = c->job;
    uint64_t a = c->share_align;
    uint64_t lo = (d_off + a - 1) / a * a, hi = (d_off + len) / a * a;
    if (src && hi > lo && atomic_load(&c->share)) {
        int ret = block_copy_range(src, s_off + (lo - d_off), job->dst, lo,
                                   hi - lo, c->share_flags);
        if (ret == 0) {
            ret = block_pwrite(job->dst, d_off, lo - d_off, buf, 0);
            if (ret >= 0) {
                ret = block_pwrite(job->dst, hi, d_off + len - hi,
                                   buf + (hi - d_off), 0);
            }
            return ret;
        }
        if (!block_copy_range_fallback(ret)) {
            return ret;
        }
        if (ret == -EXDEV) {
            /* the file system cannot share: stop asking */
            atomic_store(&c->share, false);
        }
    }
    return block_pwrite(job->dst, d_off, len, buf, 0);
}

/* Writes data, compressed when the job compresses. */
static int copy_pwrite(Copy *c, uint64_t d_off, uint64_t len,
                       const uint8_t *buf, BlockNode *src, uint64_t s_off)
{
    if (c->job->compress && c->cluster > 1) {
        return copy_write_compressed(c, d_off, buf, len);
    }
    return copy_put_data(c, d_off, len, buf, src, s_off);
}

/* Writes buf (source data for [d_off, d_off+len)), turning zero runs of
 * at least sparse_size into zero regions. */
int copy_write_sparse(Copy *c, uint64_t d_off, const uint8_t *buf,
                      uint64_t len, BlockNode *src, uint64_t s_off)
{
    const CopyJob *job = c->job;
    uint64_t min = job->sparse_size;
    /* an offloaded copy (convert -C) takes data as it is, zeroes and
     * all, as qemu-img's does */
    if (min == 0 || (job->compress && c->cluster > 1) ||
        (job->offload & COPY_OFFLOAD)) {
        return copy_pwrite(c, d_off, len, buf, src, s_off);
    }

    uint64_t data_start = 0;   /* start of pending data not yet written */
    uint64_t p = 0;
    while (p < len) {
        uint64_t g = len - p < SCAN_GRANULE ? len - p : SCAN_GRANULE;
        if (!buf_is_zero(buf + p, g)) {
            p += g;
            continue;
        }
        uint64_t z = p;
        while (p < len) {
            g = len - p < SCAN_GRANULE ? len - p : SCAN_GRANULE;
            if (!buf_is_zero(buf + p, g)) {
                break;
            }
            p += g;
        }
        if (p - z < min) {
            continue;   /* too short to be worth a hole: stays data */
        }
        if (z > data_start) {
            int ret = copy_put_data(c, d_off + data_start, z - data_start,
                                    buf + data_start, src, s_off + data_start);
            if (ret < 0) {
                return ret;
            }
        }
        int ret = copy_write_zero(c, d_off + z, p - z);
        if (ret < 0) {
            return ret;
        }
        data_start = p;
    }
    if (len > data_start) {
        return copy_put_data(c, d_off + data_start, len - data_start,
                             buf + data_start, src, s_off + data_start);
    }
    return 0;
}

/* compare_target: write only the granules where the target differs. */
int copy_write_diff(Copy *c, uint64_t d_off, const uint8_t *buf,
                    const uint8_t *cur, uint64_t len, BlockNode *src,
                    uint64_t s_off)
{
    const CopyJob *job = c->job;
    uint64_t p = 0;
    while (p < len) {
        uint64_t g = c->granule - (d_off + p) % c->granule;
        if (g > len - p) {
            g = len - p;
        }
        if (memcmp(buf + p, cur + p, g) == 0) {
            p += g;
            continue;
        }
        /* extend over consecutive differing granules: fewer requests */
        uint64_t start = p;
        p += g;
        while (p < len) {
            g = c->granule - (d_off + p) % c->granule;
            if (g > len - p) {
                g = len - p;
            }
            if (memcmp(buf + p, cur + p, g) == 0) {
                break;
            }
            p += g;
        }
        int ret;
        if (job->sparse_size && buf_is_zero(buf + start, p - start)) {
            ret = block_write_zeroes(job->dst, d_off + start, p - start,
                                     zero_flags(job));
        } else {
            ret = copy_pwrite(c, d_off + start, p - start, buf + start, src,
                              s_off + start);
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}
