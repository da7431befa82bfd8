/*
 * writeback.h - early writeback for jobs that write a lot and flush at
 * the end (convert's copy engine, backups): a thread of its own flushes
 * the target's host file every WRITEBACK_STEP bytes written, so the disk
 * works while the job does and the final flush finds little left.
 */
#ifndef IMGTOOL_BLOCK_JOB_WRITEBACK_H
#define IMGTOOL_BLOCK_JOB_WRITEBACK_H

#include <stdint.h>

#include "block/block.h"

typedef struct BlockWriteback BlockWriteback;

/* Starts writeback for dst's host file, or returns NULL when it would do
 * nothing useful (-t unsafe, O_DIRECT, an external data file) or cannot
 * start; every call below accepts NULL. */
BlockWriteback *block_writeback_start(BlockNode *dst);
/* len more bytes were written (thread-safe). */
void block_writeback_account(BlockWriteback *wb, uint64_t len);
/* Stops the thread and frees wb; flush errors show in the job's own
 * final flush. */
void block_writeback_stop(BlockWriteback *wb);

#endif
