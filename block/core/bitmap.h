/*
 * bitmap.h - in-memory dirty bitmaps attached to a node.
 *
 * The block layer marks every enabled bitmap of a node on each write,
 * zero and discard that reaches it; formats that persist bitmaps (qcow2)
 * load them at open and store them at close (block_bitmaps_store).
 *
 * A node that can hold bitmaps has n->bitmaps set by its format driver at
 * open (it may be empty); n->bitmaps == NULL means the format cannot keep
 * persistent bitmaps at all.
 *
 * Invariants:
 *  - bit i of a bitmap covers guest bytes [i << gbits, (i + 1) << gbits);
 *    a bitmap always has exactly ceil(length / granularity) bits;
 *  - bits only ever go from 0 to 1 while requests run (atomic OR), so
 *    marking needs only the set's read lock; anything that changes the
 *    set or a bitmap's shape (add, remove, resize, clear, merge) takes
 *    the write lock;
 *  - an inconsistent bitmap (found "in use" on disk at open) is never
 *    marked, read or changed: it can only be removed, as in QEMU.
 */
#ifndef IMGTOOL_BLOCK_BITMAP_H
#define IMGTOOL_BLOCK_BITMAP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

#define BLOCK_BITMAP_MIN_GRAN_BITS  9     /* 512 bytes */
#define BLOCK_BITMAP_MAX_GRAN_BITS  31    /* 2 GiB */
#define BLOCK_BITMAP_MAX_NAME       1023
/* One bitmap's bits may take at most this much memory (QEMU's limit on a
 * stored bitmap's data); a header asking for more is refused before
 * anything is allocated. */
#define BLOCK_BITMAP_MAX_BYTES      (512ull << 20)

typedef struct BlockBitmap {
    char *name;
    uint32_t gran_bits;      /* granularity = 1 << gran_bits */
    bool enabled;            /* tracks writes ('auto' in qcow2) */
    bool inconsistent;       /* in use on disk when opened */
    bool changed;            /* bits or attributes differ from the stored
                                copy (set atomically by marking) */
    uint64_t length;         /* guest bytes covered */
    uint64_t nb_bits;
    uint64_t *words;         /* NULL for an inconsistent bitmap */

    /* Where the format keeps this bitmap on disk (qcow2: bitmap table
     * offset, entries, directory flags); 0 when not stored yet. */
    uint64_t stored_offset;
    uint32_t stored_size;
    uint32_t stored_flags;
} BlockBitmap;

typedef struct BlockBitmaps BlockBitmaps;

/* How a format persists the set; installed with the set at open. */
typedef struct BlockBitmapsFormat {
    /* Writes the set to disk so that it is what the image holds after
     * close; called by block_bitmaps_store with no request running. */
    int (*store)(BlockNode *n, Error *err);
    /* Why this node cannot hold (more) persistent bitmaps named `name`,
     * or 0; fills err with qemu-img's text. */
    int (*can_add)(BlockNode *n, const char *name, uint32_t gran_bits,
                   Error *err);
    /* Granularity when the user gives none. */
    uint64_t (*default_granularity)(BlockNode *n);
} BlockBitmapsFormat;

struct BlockBitmaps {
    pthread_rwlock_t lock;
    BlockBitmap **v;
    int n;
    int nb_enabled;          /* read atomically by the marking fast path */
    bool set_changed;        /* a bitmap was added or removed */
    const BlockBitmapsFormat *fmt;
};

/* A new empty set for a format that persists bitmaps through fmt. */
BlockBitmaps *block_bitmaps_new(const BlockBitmapsFormat *fmt);
void block_bitmaps_free(BlockBitmaps *set);

/* Marks [off, off+len) dirty in every enabled bitmap of n (no-op when n
 * has none).  Thread-safe. */
void block_bitmaps_mark(BlockNode *n, uint64_t off, uint64_t len);

/* Allocates a bitmap of `length` bytes at granularity 1 << gran_bits with
 * all bits clear (no bits when inconsistent) and appends it to the set.
 * The size is checked against BLOCK_BITMAP_MAX_BYTES first.  Callers that
 * are not the format's open take the set's write lock (the functions
 * below do). */
int block_bitmaps_append(BlockBitmaps *set, const char *name,
                         uint32_t gran_bits, uint64_t length, bool enabled,
                         bool inconsistent, BlockBitmap **out, Error *err);
/* A bitmap whose stored bits turned out damaged becomes inconsistent
 * (for the format's open, before any request). */
void block_bitmap_make_inconsistent(BlockBitmaps *set, BlockBitmap *bm);
/* The bitmap named name, or NULL. */
BlockBitmap *block_bitmaps_find(BlockBitmaps *set, const char *name);
/* Bytes of the on-disk serialisation (bit i = byte i/8, bit i%8). */
uint64_t block_bitmap_bytes(const BlockBitmap *bm);
/* Copies serialised bytes [first, first+len) out of / into bm (bytes
 * past the end read as zero / are ignored; padding bits are dropped). */
void block_bitmap_get_bytes(const BlockBitmap *bm, uint64_t first,
                            uint64_t len, uint8_t *buf);
void block_bitmap_set_bytes(BlockBitmap *bm, uint64_t first, uint64_t len,
                            const uint8_t *buf);
/* Sets every bit in [first_bit, end_bit). */
void block_bitmap_set_bits(BlockBitmap *bm, uint64_t first_bit,
                           uint64_t end_bit);
bool block_bitmap_get_bit(const BlockBitmap *bm, uint64_t bit);
/* No bit set in serialised bytes [first, first+len). */
bool block_bitmap_bytes_zero(const BlockBitmap *bm, uint64_t first,
                             uint64_t len);

/* What `imgtool bitmap` does, one operation each, with qemu-img's errors
 * (the caller prefixes "Operation <op> on bitmap <name> failed: ").
 * granularity 0 takes the format's default. */
int block_bitmap_add(BlockNode *n, const char *name, uint64_t granularity,
                     bool enabled, Error *err);
int block_bitmap_remove(BlockNode *n, const char *name, Error *err);
int block_bitmap_clear(BlockNode *n, const char *name, Error *err);
int block_bitmap_enable(BlockNode *n, const char *name, bool enable,
                        Error *err);
/* dst |= src; src_node may be n itself. */
int block_bitmap_merge(BlockNode *n, const char *dst, BlockNode *src_node,
                       const char *src, Error *err);

/* New length (truncate): bits past it are dropped, new bits are clear. */
int block_bitmaps_resize(BlockNode *n, uint64_t length);

/* n can hold persistent bitmaps (qcow2 v3, writable). */
bool block_bitmaps_persistent(BlockNode *n);
/* convert --bitmaps: src has bitmaps support and, unless skip_broken,
 * no inconsistent bitmap (checked before the target is created). */
int block_bitmaps_check_copy(BlockNode *src, bool skip_broken, Error *err);
/* Adds every (consistent) bitmap of src to dst with the same name,
 * granularity, state and bits, then stores them; qemu-img's messages. */
int block_bitmaps_copy(BlockNode *dst, BlockNode *src, bool skip_broken,
                       Error *err);

/* Persists n's bitmaps now (the format's store): what close would do,
 * with the error reported.  The stored bitmaps are no longer flagged in
 * use, so call it right before block_close, with no write in between.
 * No-op without bitmaps support or on a read-only node. */
int block_bitmaps_store(BlockNode *n, Error *err);

#endif
