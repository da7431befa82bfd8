/*
 * monitor.h - the daemon's control socket, speaking QMP: the greeting,
 * qmp_capabilities, then one command per JSON object
 * ({"execute": NAME, "arguments": {...}, "id": ANY}), answered with
 * {"return": ...} or {"error": {"class": ..., "desc": ...}}, and events
 * ({"event": NAME, "data": {...}, "timestamp": {...}}) to every client
 * past capabilities negotiation.
 *
 * The commands (qmp-cmds.c) are qemu-storage-daemon's block-export
 * set: block-export-add/del, query-block-exports, blockdev-add/del,
 * query-named-block-nodes, nbd-server-start/stop, nbd-server-add/remove,
 * block-dirty-bitmap-add/remove/clear/enable/disable/merge, object-add,
 * query-version, query-commands, quit.
 *
 * Everything runs on the export layer's main loop.
 */
#ifndef IMGTOOL_EXPORT_MONITOR_H
#define IMGTOOL_EXPORT_MONITOR_H

#include <stdbool.h>

#include <jansson.h>

#include "block/block.h"
#include "block/export/loop.h"

typedef struct Monitor Monitor;

/* Serves QMP on a listening socket (the monitor owns fd). */
Monitor *monitor_new(Loop *loop, int listen_fd, bool pretty, Error *err);
/* Closes the listening socket and every client. */
void monitor_free(Monitor *m);

/* What `quit` does (the daemon's shutdown). */
void monitor_set_quit_fn(void (*fn)(void *opaque), void *opaque);
/* Sends an event to every negotiated client of every monitor. */
void monitor_event(const char *name, json_t *data);

/* ---- qmp-cmds.c ---- */
/* Runs command name with args (an object, never NULL).  Returns the
 * "return" value (new reference), or NULL with err set and *class the
 * QMP error class. */
json_t *qmp_dispatch(const char *name, json_t *args, const char **class,
                     Error *err);
/* The names, for query-commands. */
json_t *qmp_command_names(void);
/* The i-th command's name (qmp_capabilities aside), NULL past the last:
 * the client (imgtool serve-ctl) offers what the daemon runs. */
const char *qmp_command_name(size_t i);
void qmp_quit(void);

#endif
