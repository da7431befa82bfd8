/*
 * commit.h - the commit job: merge an overlay (and the layers between)
 * into a backing image of its chain, crash-safely (block/job/commit.c).
 */
#ifndef IMGTOOL_BLOCK_JOB_COMMIT_H
#define IMGTOOL_BLOCK_JOB_COMMIT_H

#include "block/block.h"

typedef struct BlockCommit {
    const char *base_name;   /* a backing name in top's chain; NULL: the
                                immediate backing file */
    uint64_t rate_limit;     /* bytes per second, 0 = unlimited */
    bool keep_top;           /* do not empty the top afterwards */
    int cache_flags;         /* BLOCK_O_* for the reopened base */
    BlockProgressFn *progress;   /* bytes done of the top's length */
    void *progress_opaque;
} BlockCommit;

/* Commits top into its base; one line in err on failure. */
int block_commit(BlockNode *top, const BlockCommit *c, Error *err);

/* The layer whose backing node is `name` (a backing name as stored, or
 * the same file resolved against that layer's directory), or NULL. */
BlockNode *block_commit_find_base_parent(BlockNode *top, const char *name);

#endif
