/*
 * bitmap.h - in-memory dirty bitmaps attached to a node.
 *
 * The block layer marks every enabled bitmap of a node on each write,
 * zero and discard that reaches it; formats that persist bitmaps (qcow2)
 * load them at open and store them at flush/close.
 */
#ifndef IMGTOOL_BLOCK_BITMAP_H
#define IMGTOOL_BLOCK_BITMAP_H

#include "block/block.h"

/* Marks [off, off+len) dirty in every enabled bitmap of n (no-op when n
 * has none).  Thread-safe. */
void block_bitmaps_mark(BlockNode *n, uint64_t off, uint64_t len);

#endif
