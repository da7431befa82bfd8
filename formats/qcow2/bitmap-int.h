/*
 * bitmap-int.h - what the qcow2 bitmap files share: bitmap-dir.c (the
 * extension, directory and tables on disk), bitmap-load.c (open) and
 * bitmap-store.c (store, close).
 */
#ifndef IMGTOOL_FORMATS_QCOW2_BITMAP_INT_H
#define IMGTOOL_FORMATS_QCOW2_BITMAP_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/qcow2/qcow2.h"

/* Bitmap table entry fields. */
#define BT_OFFSET_MASK    0x00fffffffffffe00ull
#define BT_RESERVED_MASK  0xff000000000001feull
#define BT_ALL_ONES       1ull

/* What the image holds on disk now. */
typedef struct Qcow2Bitmaps {
    uint64_t dir_offset;         /* 0: no directory */
    uint64_t dir_size;
    uint32_t nb;
    uint8_t *dir;                /* the directory as on disk */
    uint64_t *flag_pos;          /* byte position of each entry's flags */
    Qcow2BitmapEntry *entries;   /* as parsed */
    bool in_use_set;             /* we flagged our bitmaps IN_USE */
} Qcow2Bitmaps;

static inline uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* bitmap-dir.c */

/* Drops it (the next header write leaves it out). */
void qcow2_bitmaps_drop_ext(Qcow2State *s);
/* Sets it (adding it when absent) to name a directory of nb entries. */
int qcow2_bitmaps_set_ext(Qcow2State *s, uint32_t nb, uint64_t dir_size,
                          uint64_t dir_offset);
void qcow2_bitmaps_free_disk(Qcow2Bitmaps *d);
/* Rewrites the flags of the on-disk directory in place and flushes. */
int qcow2_bitmaps_write_flags(Qcow2State *s, Qcow2Bitmaps *d,
                              const uint32_t *flags);

/* bitmap-store.c */

/* The format's store (BlockBitmapsFormat): writes what changed. */
int qcow2_bitmaps_store(BlockNode *n, Error *err);

#endif
