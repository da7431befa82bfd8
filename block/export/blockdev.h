/*
 * blockdev.h - the nodes a daemon holds for its users: opened from
 * QEMU's -blockdev options (`--blockdev`, QMP blockdev-add), listed
 * (query-named-block-nodes) and closed again (blockdev-del, shutdown).
 * The daemon's reference to each is what keeps a node open between
 * exports; an export takes a reference of its own.
 *
 * Also the one place QMP-style JSON becomes a KVList: qmp_flatten().
 * Main loop thread only.
 */
#ifndef IMGTOOL_EXPORT_BLOCKDEV_H
#define IMGTOOL_EXPORT_BLOCKDEV_H

#include <jansson.h>

#include "block/block.h"

/* Opens a node from -blockdev options: driver= and node-name= are
 * required; read-only, auto-read-only, force-share, cache.direct,
 * cache.no-flush, discard and detect-zeroes=off are understood here,
 * everything else goes to block_open (file=NODE and backing=NODE
 * reference open nodes). */
int blockdev_add(KVList *opts, Error *err);
/* Keeps n (the caller's reference passes to the daemon) as if it had
 * been added with blockdev_add (the short command-line form). */
int blockdev_hold(BlockNode *n, Error *err);
/* Drops the daemon's reference; refused while an export or another
 * node the daemon holds uses it. */
int blockdev_del(const char *node_name, Error *err);
/* At shutdown: flushes and closes every node the daemon holds; the
 * first flush that failed is in err (the others are closed anyway). */
int blockdev_close_all(Error *err);
/* query-named-block-nodes: a new JSON array of every open node. */
json_t *blockdev_query_named(void);

/* {"a": {"b": 1}, "l": ["x", {"k": true}]} -> a.b=1, l.0=x, l.1.k=on.
 * null is allowed only as "backing" (backing= : no backing file). */
int qmp_flatten(json_t *obj, KVList *out, Error *err);
/* The same for a command-line argument: JSON when it starts with '{',
 * else key=value,... with implied_key for a first bare word. */
int qmp_parse_arg(const char *arg, const char *implied_key, KVList *out,
                  Error *err);

#endif
