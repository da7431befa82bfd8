/*
 * nbd.h - the NBD server object: the listening sockets NBD exports hang
 * off (QMP's nbd-server-start/stop, qemu-storage-daemon's --nbd-server).
 * The exports themselves are block exports of type "nbd" (export.h);
 * adding one needs a running server, as in QEMU.
 *
 * One server per process.  It runs on the export layer's main loop
 * (block_export_main_loop) and every function here is called there.
 */
#ifndef IMGTOOL_EXPORT_NBD_H
#define IMGTOOL_EXPORT_NBD_H

#include <stdbool.h>

#include "block/block.h"

/* opts: addr.type=unix|inet|fd with addr.path | addr.host,addr.port |
 * addr.str; tls-creds=ID (a tls-creds-x509/psk object with
 * endpoint=server: clients must STARTTLS); tls-authz (refused: not
 * supported); max-connections=N (0: no limit); handshake-max-seconds=N
 * (a client still negotiating after N seconds is dropped; default 10,
 * 0: no limit; QEMU 8's name).  Listens at once. */
int nbd_server_start(KVList *opts, Error *err);
/* Closes the listening sockets (removing a unix socket file it made),
 * deletes every NBD export (hard) and drops connections still
 * negotiating. */
int nbd_server_stop(Error *err);
bool nbd_server_running(void);
/* Serves a connected socket as if it had been accepted (socket
 * activation, tests and fuzzing harnesses). */
int nbd_server_adopt(int fd, Error *err);
/* Connections open, negotiating or not (for harnesses). */
int nbd_server_connections(void);

/* A server without listening sockets (fuzzing harnesses): only
 * nbd_server_adopt brings clients.  tls_creds may be NULL. */
int nbd_server_start_unbound(const char *tls_creds, Error *err);

#endif
