/*
 * write-int.h - what the qcow2 write paths share: write.c (guest writes
 * and the in-flight ranges), write-compressed.c (compressed writes) and
 * zero.c (zero writes and discard).  Everything here needs s->lock held.
 */
#ifndef IMGTOOL_FORMATS_QCOW2_WRITE_INT_H
#define IMGTOOL_FORMATS_QCOW2_WRITE_INT_H

#include <stdint.h>

#include "formats/qcow2/qcow2.h"

/* In-flight ranges (write.c): an allocating write, zero write or discard
 * registers the cluster-aligned guest range [start, end) whose metadata
 * it will change before it drops s->lock for its data I/O; the others
 * wait for ranges that overlap theirs. */
void qcow2_wait_inflight(Qcow2State *s, uint64_t start, uint64_t end);
void qcow2_inflight_add(Qcow2State *s, Qcow2InFlight *f, uint64_t start,
                        uint64_t end);
void qcow2_inflight_remove(Qcow2State *s, Qcow2InFlight *f);

/* Bitmap bits of the subclusters [a, b) touches within its cluster. */
uint64_t qcow2_subcluster_mask(Qcow2State *s, uint64_t a, uint64_t b);
/* Drops (deferred) the reference an L2 entry that is being replaced held
 * on its host cluster(s). */
int qcow2_free_old_host(Qcow2State *s, const Qcow2L2Entry *e);
/* Lazy refcounts: the first metadata change marks the image dirty. */
int qcow2_mark_dirty(Qcow2State *s);

/* BLOCK_REQ_COMPRESSED writes (write-compressed.c): whole clusters only
 * (the last one may end at the end of the image).  Without s->lock. */
int qcow2_pwrite_compressed(BlockNode *n, uint64_t off, size_t len,
                            const uint8_t *buf);

#endif
