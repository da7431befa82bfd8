/*
 * convert-progress.c - convert's -p bar advancing in the steps qemu-img's
 * does, so a script that reads the bar sees the same values.
 *
 * qemu-img counts only what it copies as data (block status DATA, and
 * ZERO too with -S 0), walks each such extent in pieces of its buffer
 * size (2 MiB; a cluster when compressing) from the extent's start, and
 * after each piece draws 100 * counted / total when that moved the bar
 * by more than one point (progress_qemu_step).  Compressing, it walks
 * whole clusters instead, and a cluster whose first extent is shorter
 * than the cluster counts as data whatever it holds.  Here the same
 * pieces are
 * found by walking block status behind the copy as it reports its
 * position: memory stays constant whatever the image's layout.  With
 * out-of-order writes (-W) the position is approximate, as qemu-img's
 * own order is then.
 */
#include "cmd/convert-progress.h"

/* Status of the concatenated source at pos: sets the current extent. */
static int next_extent(ConvertProgress *cp, uint64_t pos)
{
    uint64_t base = 0;
    for (int i = 0; i < cp->nsrc; i++) {
        int64_t len = block_get_length(cp->src[i]);
        if (len < 0) {
            return (int)len;
        }
        if (pos < base + (uint64_t)len) {
            uint64_t pnum = 0;
            int st = block_status_above(cp->src[i], NULL, pos - base,
                                        base + (uint64_t)len - pos, &pnum,
                                        NULL, NULL, NULL);
            if (st < 0) {
                return st;
            }
            if (pnum == 0) {
                pnum = base + (uint64_t)len - pos;
            }
            bool zero = st & BLOCK_STATUS_ZERO;
            cp->ext_start = pos;
            cp->ext_end = pos + pnum;
            cp->ext_counts = zero ? cp->count_zero : true;
            return 0;
        }
        base += (uint64_t)len;
    }
    cp->ext_start = pos;
    cp->ext_end = cp->length;
    cp->ext_counts = false;
    return 0;
}

/* Bytes of [ext_start, ext_start + rel) in whole pieces. */
static uint64_t whole_pieces(const ConvertProgress *cp, uint64_t rel)
{
    uint64_t len = cp->ext_end - cp->ext_start;
    return rel >= len ? len : rel / cp->step * cp->step;
}

static void piece_done(ConvertProgress *cp, uint64_t len, bool draw)
{
    cp->counted += len;
    if (draw && cp->total) {
        progress_qemu_step(cp->bar, (float)(100.0 * (double)cp->counted /
                                            (double)cp->total));
    }
}

/* Compressing: a cluster at a time (the last may be short). */
static void walk_clusters(ConvertProgress *cp, uint64_t to, bool draw)
{
    while (!cp->failed && cp->walked < to) {
        uint64_t rem = cp->length - cp->walked;
        uint64_t piece = rem < cp->step ? rem : cp->step;
        if (cp->walked + piece > to) {
            break;
        }
        cp->failed = next_extent(cp, cp->walked);
        if (cp->failed) {
            break;
        }
        bool counts = cp->ext_end - cp->walked < piece || cp->ext_counts;
        cp->walked += piece;
        if (counts) {
            piece_done(cp, piece, draw);
        }
    }
}

/* Walks to `to`; each piece completed draws the bar (draw) or is only
 * counted (sizing). */
static void walk(ConvertProgress *cp, uint64_t to, bool draw)
{
    if (cp->compressed) {
        walk_clusters(cp, to, draw);
        return;
    }
    while (!cp->failed && cp->walked < to) {
        if (cp->walked >= cp->ext_end) {
            cp->failed = next_extent(cp, cp->walked);
            if (cp->failed) {
                break;
            }
        }
        uint64_t end = to < cp->ext_end ? to : cp->ext_end;
        if (cp->ext_counts) {
            /* one piece at a time: each may draw */
            for (;;) {
                uint64_t have = whole_pieces(cp, cp->walked - cp->ext_start);
                uint64_t next = have + cp->step;
                uint64_t pend = cp->ext_start + next < cp->ext_end
                                ? cp->ext_start + next : cp->ext_end;
                if (pend > end) {
                    break;
                }
                cp->walked = pend;
                piece_done(cp, pend - cp->ext_start - have, draw);
                if (pend == cp->ext_end) {
                    break;
                }
            }
        }
        cp->walked = end;
    }
}

void convert_progress_init(ConvertProgress *cp, Progress *bar,
                           BlockNode **src, int nsrc, uint64_t length,
                           bool count_zero, bool compressed, uint64_t step)
{
    *cp = (ConvertProgress){ .bar = bar, .src = src, .nsrc = nsrc,
                             .count_zero = count_zero,
                             .compressed = compressed && step,
                             .step = step ? step : 2u << 20,
                             .length = length };
    if (!bar) {
        return;
    }
    walk(cp, length, false);
    cp->total = cp->counted;
    int failed = cp->failed;
    *cp = (ConvertProgress){ .bar = bar, .src = src, .nsrc = nsrc,
                             .count_zero = count_zero,
                             .compressed = cp->compressed, .step = cp->step,
                             .length = length, .total = cp->total,
                             .failed = failed };
}

void convert_progress_to(ConvertProgress *cp, uint64_t done)
{
    if (!cp->bar) {
        return;
    }
    if (cp->failed) {
        /* no layout to follow: plain steps */
        progress_qemu_step(cp->bar, cp->length ? (float)(100.0 *
                           (double)done / (double)cp->length) : 100.0f);
        return;
    }
    walk(cp, done, true);
}
