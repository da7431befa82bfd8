/*
 * convert-progress.h - convert's -p in qemu-img's steps.
 */
#ifndef IMGTOOL_CMD_CONVERT_PROGRESS_H
#define IMGTOOL_CMD_CONVERT_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"
#include "imgtool/imgtool.h"

typedef struct ConvertProgress {
    Progress *bar;
    BlockNode **src;
    int nsrc;
    bool count_zero;     /* -S 0: zero extents are copied, and counted */
    bool compressed;     /* -c: whole clusters, short areas count */
    uint64_t step;       /* qemu-img's copy unit */
    uint64_t total;      /* bytes counted */
    uint64_t length;     /* of the concatenated sources */
    /* the walk: extent [ext_start, ext_end) of the concatenated source
     * holds `walked`; counted bytes of whole pieces so far */
    uint64_t walked, ext_start, ext_end, counted;
    bool ext_counts;
    int failed;          /* a status query failed: plain steps from then */
} ConvertProgress;

/* Sizes the count (a block status walk over the sources).  step: 2 MiB,
 * or the target cluster when compressing, as qemu-img's buffer. */
void convert_progress_init(ConvertProgress *cp, Progress *bar,
                           BlockNode **src, int nsrc, uint64_t length,
                           bool count_zero, bool compressed, uint64_t step);
/* The copy has written everything before byte `done` of the range. */
void convert_progress_to(ConvertProgress *cp, uint64_t done);

#endif
