/*
 * export.h - the contract between imgtool's export layer and the export
 * types (NBD, vhost-user-blk, vhost-user-scsi), the way block/driver.h is
 * the contract of block drivers; and the registry of running exports
 * that the daemon (cmd/serve.c) and its control socket use.
 *
 * A new export type is one file (or a few, block/export/TYPE-*.c) that
 * fills a BlockExportDriver, plus one line in block/export/drivers.c.
 *
 * THE RULES
 *
 * Options.  An export is created from a KVList of QEMU's keyval names
 * (`--export type=nbd,id=e0,node-name=n0,writable=on,...`, or the
 * arguments of QMP's block-export-add flattened the same way: nested
 * objects as "a.b", lists as "a.0", "a.1").  The export layer takes the
 * common ones (type, id, node-name, writable, writethrough, iothread,
 * fixed-iothread) and fills the BlockExport; the driver's create takes
 * its own and leaves others unused, which the layer refuses as
 * "Invalid parameter 'x' for export type 'T'" before anything is
 * served: create only parses and prepares, start makes the export
 * reachable (listens, registers its name).
 *
 * Threads.  Each export belongs to one event loop (exp->loop: the
 * daemon's main loop, or the iothread= named); create, shutdown, free,
 * in_use and query are called on the thread that runs the registry
 * (the main loop) while exp->loop may be another: a driver whose loop is
 * not the main one hands work over with loop_call.  Requests go through
 * the block layer's asynchronous API and complete on library threads;
 * a driver hands completions back to exp->loop (loop_post).
 *
 * Lifetime.  block_export_add calls create, checks the options, then
 * start; once start succeeds the export is in the registry under its
 * id.  When create, the check or start fails, free is called (nothing
 * was served, nothing is in flight) and the export never existed.  Deleting it (block_export_del, or every
 * export at SIGTERM) calls shutdown once: the driver stops accepting
 * connections and requests (hard: it also disconnects its clients),
 * lets the requests in flight complete, and then, from any thread,
 * calls block_export_shutdown_done(exp) exactly once.  Until then the
 * export is listed with "shutting-down": true and its node stays
 * referenced; afterwards the layer calls free (on the registry's
 * thread), drops the node reference, removes the id and emits
 * BLOCK_EXPORT_DELETED.  free must cope with an export whose create
 * failed half-way.
 *
 * Capabilities a driver advertises come from the node:
 * block_node_can_fua/discard/zero/fast_zero/multi_conn in block.h; a
 * read-only export refuses writes itself (the node may be writable for
 * another export).
 */
#ifndef IMGTOOL_EXPORT_EXPORT_H
#define IMGTOOL_EXPORT_EXPORT_H

#include <stdbool.h>

#include <jansson.h>

#include "block/block.h"
#include "block/export/loop.h"

#define BLOCK_EXPORT_API_VERSION 1

typedef struct BlockExport BlockExport;

typedef struct BlockExportDriver {
    int api_version;            /* BLOCK_EXPORT_API_VERSION */
    const char *type;           /* "nbd", "vhost-user-blk" ... */
    size_t instance_size;       /* bytes of exp->opaque, zeroed */

    /* Takes the export's own options (see "Options") and prepares. */
    int (*create)(BlockExport *exp, KVList *opts, Error *err);
    /* Starts serving (NULL: nothing to do beyond create). */
    int (*start)(BlockExport *exp, Error *err);
    /* Begin shutting down (see "Lifetime"); hard: drop clients now. */
    void (*shutdown)(BlockExport *exp, bool hard);
    /* Releases what create made; nothing is in flight any more. */
    void (*free)(BlockExport *exp);
    /* Clients are connected: block-export-del without mode=hard refuses.
     * NULL: never. */
    bool (*in_use)(BlockExport *exp);
    /* Adds type-specific members to exp's query-block-exports entry
     * (NULL: none). */
    void (*query)(BlockExport *exp, json_t *entry);
    /* The node changed size (block_resize): tell the clients, as a
     * virtio device's config change does (NULL: nothing to tell). */
    void (*resized)(BlockExport *exp);
} BlockExportDriver;

struct BlockExport {
    const BlockExportDriver *drv;
    void *opaque;               /* drv->instance_size bytes */
    char *id;
    BlockNode *node;            /* the export's reference */
    bool writable;              /* clients may change the node */
    bool writethrough;          /* every write is FUA */
    Loop *loop;                 /* where its connections run */

    /* ---- export layer private ---- */
    bool shutting_down;
    bool done;
    LoopWork done_work;
    BlockExport *next;
};

/* The registry of export types (block/export/drivers.c). */
extern const BlockExportDriver *const block_export_driver_list[];
const BlockExportDriver *block_export_find_driver(const char *type);

/* Called by a driver once its shutdown is complete (any thread). */
void block_export_shutdown_done(BlockExport *exp);

/* ---- The registry of running exports (one per process) ------------ */

/* The loop exports run on unless iothread= names another; set by the
 * daemon before the first export is added.  The registry's own work
 * (free after shutdown) runs on it. */
void block_export_set_main_loop(Loop *l);
Loop *block_export_main_loop(void);
/* iothread objects (--object iothread,id=ID): loops on threads of their
 * own that exports may be put on.  The registry does not own them. */
int block_export_add_iothread(const char *id, Loop *l, Error *err);
Loop *block_export_find_iothread(const char *id);

/* Events for QMP monitors: event is "BLOCK_EXPORT_DELETED"; data is
 * borrowed for the call. */
typedef void BlockExportEventFn(void *opaque, const char *event,
                                json_t *data);
void block_export_set_event_fn(BlockExportEventFn *fn, void *opaque);

/* Creates an export from opts (see "Options"); *out (may be NULL)
 * receives it.  Main loop thread. */
int block_export_add(KVList *opts, BlockExport **out, Error *err);
/* Starts deleting export id; without hard, refuses while clients are
 * connected (QEMU's mode=safe). */
int block_export_del(const char *id, bool hard, Error *err);
/* Starts deleting every export, hard (SIGTERM). */
void block_export_del_all(void);
/* Exports in the registry, shutting down ones included. */
int block_export_count(void);
BlockExport *block_export_find(const char *id);
/* query-block-exports: a new JSON array. */
json_t *block_export_query(void);
/* Node n changed size: every export serving it (or a node above it)
 * tells its clients. */
void block_export_node_resized(BlockNode *n);
/* Some export (not yet deleted) serves node n, or a node above it. */
bool block_export_uses_node(BlockNode *n);

/* The node's name as exports refer to it. */
static inline const char *block_export_node_name(const BlockExport *exp)
{
    return block_node_name(exp->node);
}

#endif
