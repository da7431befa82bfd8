/*
 * amend-int.h - what amend.c (options, plan, order of the steps),
 * amend-compat.c (version changes) and amend-refcount-bits.c (refcount
 * width) share.  Everything here needs s->lock held.
 */
#ifndef IMGTOOL_FORMATS_QCOW2_AMEND_INT_H
#define IMGTOOL_FORMATS_QCOW2_AMEND_INT_H

#include <stdint.h>

#include "formats/qcow2/qcow2.h"

/* Progress over the steps of one amend: each step reports its own
 * fraction, mapped to its share of the whole. */
typedef struct AmendProgress {
    BlockProgressFn *fn;
    void *opaque;
    int step, steps;
} AmendProgress;

/* Calls fn once on every L2 table reachable from the active L1 or from a
 * snapshot's L1, with the L1 position done/total for progress.  Tables
 * and L1s shared by several snapshots are visited once, so the work is
 * bounded by the image's size whatever its snapshot table says. */
typedef int AmendL2Fn(Qcow2State *s, uint64_t l2_offset, void *opaque);

/* amend.c */

/* The current step is done/total of the way. */
void amend_progress_report(AmendProgress *p, uint64_t done, uint64_t total);
/* Everything cached on disk, refcounts consistent. */
int amend_settle(Qcow2State *s, Error *err);

/* amend-compat.c */

/* See AmendL2Fn; prog (may be NULL) gets the L1 positions. */
int amend_walk_all_l2(Qcow2State *s, AmendL2Fn *fn, void *opaque,
                      AmendProgress *prog);
/* compat=1.1 from a v2 image. */
int amend_upgrade(Qcow2State *s, Error *err);
/* compat=0.10 from a v3 image (check_plan has refused what v2 cannot
 * hold). */
int amend_downgrade(Qcow2State *s, AmendProgress *prog, Error *err);

/* amend-refcount-bits.c */

/* refcount_bits = 1 << order. */
int amend_change_refcount_order(Qcow2State *s, uint32_t order,
                                AmendProgress *prog, Error *err);

#endif
