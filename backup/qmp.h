/*
 * qmp.h - a client for QEMU's machine protocol (QMP) and for the guest
 * agent (QGA) over a UNIX socket (internal to backup/).
 *
 * One JSON object per line each way.  QMP greets, then takes commands
 * once qmp_capabilities is sent; replies ({"return": ...} or
 * {"error": {"desc": ...}}) and events ({"event": ...}) arrive
 * interleaved, so events met while waiting for a reply are kept for
 * qmp_wait_event.  Every wait is bounded (a timeout), and so is every
 * line read (a peer cannot make us allocate without bound).
 */
#ifndef IMGTOOL_BACKUP_QMP_H
#define IMGTOOL_BACKUP_QMP_H

#include <jansson.h>

#include "block/block.h"

typedef struct QmpClient QmpClient;

/* Connects, reads the greeting and negotiates capabilities. */
int qmp_connect(const char *path, QmpClient **out, Error *err);
/* Connects to a guest agent (no greeting), synchronised with guest-sync. */
int qga_connect(const char *path, QmpClient **out, Error *err);
void qmp_close(QmpClient *c);

/* Runs cmd with args (NULL: none; the reference is taken).  *ret (may
 * be NULL) receives the "return" value.  A QMP error is -EIO with
 * "CMD: DESC" in err. */
int qmp_call(QmpClient *c, const char *cmd, json_t *args, json_t **ret,
             Error *err);
/* Waits up to timeout_ms for an event named name whose data has
 * key == value (key may be NULL), kept or still to come; *ev (may be
 * NULL) receives it. */
int qmp_wait_event(QmpClient *c, const char *name, const char *key,
                   const char *value, int timeout_ms, json_t **ev,
                   Error *err);

#endif
