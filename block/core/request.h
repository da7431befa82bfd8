/*
 * request.h - the request core's internals shared by io.c (synchronous
 * path), aio.c (asynchronous path and worker threads) and drain.c.
 * Nothing outside block/core includes this.
 */
#ifndef IMGTOOL_BLOCK_CORE_REQUEST_H
#define IMGTOOL_BLOCK_CORE_REQUEST_H

#include "block/driver.h"

/* Counts a request into n.  Returns true when it may run now; false
 * (only when req is given) when a drain holds it: drain_end resubmits
 * it.  Without req (a synchronous caller) it waits for the drain. */
bool block_node_enter(BlockNode *n, BlockRequest *req);
void block_node_leave(BlockNode *n);

/* Range, permission and length checks shared by both paths, made on an
 * entered node: outside it, a reopen may be changing what they read
 * (a write checked against a writable node would then run on a node
 * reopened read-only). */
int block_check_request(BlockNode *n, uint64_t off, uint64_t len,
                        bool write);

/* The synchronous work of each operation on an entered node: alignment
 * bounce, thread model, the driver call, dirty-bitmap marking.  Both the
 * synchronous API and the worker threads run these. */
int block_io_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags);
int block_io_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags);
int block_io_flush(BlockNode *n);
int block_io_discard(BlockNode *n, uint64_t off, uint64_t len);
int block_io_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                          int flags);

/* Before-write hooks (hooks.c): run them for [off, off+len) of an
 * entered node; whether it has any (then writes take the synchronous
 * path); free them with the node. */
int block_run_write_hooks(BlockNode *n, uint64_t off, uint64_t len);
bool block_has_write_hooks(const BlockNode *n);
void block_free_write_hooks(BlockNode *n);

/* Nodes (node.c) as open.c makes them: a new node of drv (not yet in
 * the registry), freed with node_free when its open fails; published
 * (named, counted, capabilities answered) once it succeeded. */
BlockNode *node_new(const BlockDriver *drv, const char *filename, int flags);
void node_free(BlockNode *n);
int node_publish(BlockNode *n, KVList *opts, Error *err);

/* Runs a request that a drain held (it is not counted in yet). */
void block_request_resubmit(BlockRequest *req);

#endif
