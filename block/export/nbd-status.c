/*
 * nbd-status.c - NBD_CMD_BLOCK_STATUS for the metadata contexts an
 * export offers:
 *   base:allocation        NBD_STATE_HOLE where no layer holds data,
 *                          NBD_STATE_ZERO where the range reads as zero
 *                          (also data a format maps onto a hole of its
 *                          file, as QEMU reports it);
 *   qemu:allocation-depth  0 where no layer allocates the range, else
 *                          1 + the index in the backing chain (1: top);
 *   qemu:dirty-bitmap:NAME NBD_STATE_DIRTY where the bitmap is set.
 *
 * Runs on a worker thread (block status may read metadata).  Adjacent
 * extents with the same flags are merged; each context's reply covers
 * [off, off+len) or stops after NBD_MAX_EXTENTS extents (one with
 * REQ_ONE), and never goes past off+len.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/nbd-int.h"

const char *nbd_context_name(const NbdExport *e, uint32_t id, char *buf,
                             size_t len)
{
    if (id == NBD_CTX_BASE) {
        snprintf(buf, len, "base:allocation");
    } else if (id == NBD_CTX_DEPTH) {
        if (!e->allocation_depth) {
            return NULL;
        }
        snprintf(buf, len, "qemu:allocation-depth");
    } else if (id - NBD_CTX_BITMAP0 < (uint32_t)e->n_bitmaps) {
        snprintf(buf, len, "qemu:dirty-bitmap:%s",
                 e->bitmaps[id - NBD_CTX_BITMAP0].name);
    } else {
        return NULL;
    }
    return buf;
}

typedef struct Acc {
    uint8_t *wire;
    size_t cap;
    uint32_t n;
    uint32_t max;
    uint32_t last_flags;
} Acc;

static int acc_add(Acc *a, uint64_t len, uint32_t flags)
{
    while (len > 0) {
        uint32_t piece = len > 0xfffff000u ? 0xfffff000u : (uint32_t)len;
        size_t at = 4 + (size_t)(a->n ? a->n - 1 : 0) * 8;
        if (a->n && a->last_flags == flags &&
            (uint64_t)nbd_get32(a->wire + at) + piece <= 0xfffff000u) {
            nbd_put32(a->wire + at, nbd_get32(a->wire + at) + piece);
        } else {
            if (a->n == a->max) {
                return 1;   /* full */
            }
            size_t need = 4 + (size_t)(a->n + 1) * 8;
            if (need > a->cap) {
                size_t cap = a->cap * 2 > need ? a->cap * 2 : need;
                uint8_t *w = realloc(a->wire, cap);
                if (!w) {
                    return -ENOMEM;
                }
                a->wire = w;
                a->cap = cap;
            }
            nbd_put32(a->wire + need - 8, piece);
            nbd_put32(a->wire + need - 4, flags);
            a->n++;
            a->last_flags = flags;
        }
        len -= piece;
    }
    return 0;
}

/* One extent of the context at off: its flags and length. */
static int one_extent(NbdExport *e, uint32_t id, uint64_t off, uint64_t len,
                      uint32_t *flags, uint64_t *pnum)
{
    BlockNode *n = e->be->node;
    if (id >= NBD_CTX_BITMAP0) {
        NbdBitmap *b = &e->bitmaps[id - NBD_CTX_BITMAP0];
        bool dirty;
        int ret = block_bitmap_dirty_range(b->node, b->name, off, len, &dirty,
                                           pnum, NULL);
        if (ret < 0) {
            return ret;
        }
        if (*pnum == 0) {
            /* Past the bitmap's end (the node grew): clean. */
            *pnum = len;
            dirty = false;
        }
        *flags = dirty ? NBD_STATE_DIRTY : 0;
        return 0;
    }
    int depth = 0;
    uint64_t map = 0;
    BlockNode *file = NULL;
    int ret = block_status_above(n, NULL, off, len, pnum, &map, &file,
                                 &depth);
    if (ret < 0) {
        return ret;
    }
    if (*pnum == 0) {
        return -EIO;   /* the node shrank under the export */
    }
    if (id == NBD_CTX_BASE && (ret & BLOCK_STATUS_DATA) &&
        !(ret & BLOCK_STATUS_ZERO) && (ret & BLOCK_STATUS_OFFSET_VALID) &&
        file && file != n) {
        /* Data a format maps onto a hole (or past the end) of its file
         * reads as zero: say so, as QEMU does, so clients skip it. */
        uint64_t fnum;
        int fret = block_status(file, map, *pnum, &fnum, NULL, NULL);
        if (fret >= 0 && fnum == 0) {
            ret |= BLOCK_STATUS_ZERO;
        } else if (fret >= 0) {
            *pnum = fnum;
            ret |= fret & BLOCK_STATUS_ZERO;
        }
    }
    if (id == NBD_CTX_BASE) {
        *flags = (ret & BLOCK_STATUS_DATA ? 0 : NBD_STATE_HOLE) |
                 (ret & BLOCK_STATUS_ZERO ? NBD_STATE_ZERO : 0);
    } else {
        *flags = ret & BLOCK_STATUS_ALLOCATED ? (uint32_t)depth + 1 : 0;
    }
    return 0;
}

static int compute_one(NbdExport *e, uint32_t id, uint64_t off, uint32_t len,
                       bool one, NbdExtents *out)
{
    Acc a = { .max = one ? 1 : NBD_MAX_EXTENTS };
    a.cap = 4 + 8 * 16;
    a.wire = malloc(a.cap);
    if (!a.wire) {
        return -ENOMEM;
    }
    nbd_put32(a.wire, id);
    uint64_t end = off + len;
    while (off < end) {
        uint32_t flags;
        uint64_t pnum;
        int ret = one_extent(e, id, off, end - off, &flags, &pnum);
        if (ret < 0) {
            free(a.wire);
            return ret;
        }
        ret = acc_add(&a, pnum, flags);
        if (ret < 0) {
            free(a.wire);
            return ret;
        }
        if (ret > 0) {
            break;
        }
        off += pnum;
        if (one) {
            break;
        }
    }
    out->ctx_id = id;
    out->n = a.n;
    out->wire = a.wire;
    out->wire_len = 4 + (size_t)a.n * 8;
    return 0;
}

int nbd_status_compute(NbdExport *e, const uint32_t *ctx, int n_ctx,
                       uint64_t off, uint32_t len, bool one, NbdExtents *out)
{
    for (int i = 0; i < n_ctx; i++) {
        int ret = compute_one(e, ctx[i], off, len, one, &out[i]);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

void nbd_extents_free(NbdExtents *x, int n)
{
    for (int i = 0; x && i < n; i++) {
        free(x[i].wire);
    }
    free(x);
}
