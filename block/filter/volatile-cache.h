/*
 * volatile-cache.h - a disk's volatile write cache, modelled in memory
 * over a child node: writes are held until written back, and a crash can
 * drop, keep or tear what is held.  The faulty filter's power loss runs
 * on it; it is a helper of that driver, not a driver of its own.
 *
 * The cache does no locking: its owner serialises every call.
 */
#ifndef IMGTOOL_FILTER_VOLATILE_CACHE_H
#define IMGTOOL_FILTER_VOLATILE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block/driver.h"

typedef struct VCacheExtent {
    uint64_t off;
    uint64_t len;
    uint8_t *data;          /* NULL: the range reads as zeroes */
} VCacheExtent;

typedef struct VolatileCache {
    BlockNode *child;
    VCacheExtent *ext;            /* sorted, non-overlapping */
    size_t n_ext, cap_ext;
    uint64_t dirty_bytes;         /* bytes of data extents held */
    uint64_t max_dirty;           /* past this: written back, unflushed */
    uint64_t length;              /* the file length as callers see it */
    bool shrunk;                  /* a truncate cut below the real end */
    uint64_t shrink_to;           /* lowest length cut to since flush */
} VolatileCache;

/* What a crash leaves of the cache. */
typedef enum {
    VCACHE_CRASH_DROP,            /* nothing */
    VCACHE_CRASH_KEEP,            /* all of it */
    VCACHE_CRASH_RANDOM_PART,     /* a coin decides for each sector */
} VCacheCrash;

void vcache_init(VolatileCache *c, BlockNode *child, uint64_t length,
                 uint64_t max_dirty);
/* Frees what is held without writing it back. */
void vcache_destroy(VolatileCache *c);

/* Whether anything held differs from the child. */
bool vcache_dirty(const VolatileCache *c);
uint64_t vcache_length(const VolatileCache *c);

/* Overlays what the cache holds for [off, off+len) on buf, which holds
 * the child's bytes of that range. */
void vcache_read(const VolatileCache *c, uint64_t off, size_t len,
                 void *buf);

/* Holds [off, off+len) with data (NULL: zeroes) as the newest bytes,
 * growing the length if grow; past max_dirty writes everything back. */
int vcache_store(VolatileCache *c, uint64_t off, uint64_t len,
                 const void *data, bool grow);

/* Before a write to [off, off+len) bypasses the cache: drops the stale
 * bytes it holds there, or writes everything back when a held shrink
 * would hide the new bytes.  vcache_grow() then records its end. */
int vcache_write_through(VolatileCache *c, uint64_t off, uint64_t len);
void vcache_grow(VolatileCache *c, uint64_t end);

/* A truncate held in the cache. */
int vcache_truncate(VolatileCache *c, uint64_t size);
/* After a truncate went through to the child: the child's length. */
void vcache_set_length(VolatileCache *c, uint64_t length);

/* Writes everything held to the child (no flush) and empties the cache. */
int vcache_writeback(VolatileCache *c);

/* Answers block status for off when the cache decides it (returns the
 * BLOCK_STATUS_* bits, *pnum set); else returns 0 with *len cut to the
 * run the child answers for. */
int vcache_block_status(const VolatileCache *c, uint64_t off,
                        uint64_t *len, uint64_t *pnum);

/* Power goes: the child gets what a crash of kind how leaves (coin()
 * decides each sector and the size updates for RANDOM_PART), is flushed,
 * and the cache is emptied. */
void vcache_crash(VolatileCache *c, VCacheCrash how,
                  bool (*coin)(void *opaque), void *opaque);

#endif
