/*
 * nbd-client.h - what the NBD protocol driver's two files share:
 * nbd.c (names, options, connecting, the driver table) and
 * nbd-client-io.c (the request engine: I/O threads, commands, splitting,
 * completions).  Nothing else includes this.
 */
#ifndef IMGTOOL_PROTOCOL_NBD_CLIENT_H
#define IMGTOOL_PROTOCOL_NBD_CLIENT_H

#include <libnbd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/driver.h"

/* libnbd is loaded when the first NBD node opens (dlopen), not linked:
 * it brings GnuTLS and p11-kit, some 3 MiB of resident memory that
 * every other command would pay at start-up.  Calls go through this
 * table (nbdlib.nbd_create(...)); the prototypes are libnbd.h's. */
#define NBD_LIB_FUNCS(X) \
    X(nbd_add_meta_context) \
    X(nbd_aio_block_status) \
    X(nbd_aio_flush) \
    X(nbd_aio_get_direction) \
    X(nbd_aio_get_fd) \
    X(nbd_aio_is_closed) \
    X(nbd_aio_is_dead) \
    X(nbd_aio_notify_read) \
    X(nbd_aio_notify_write) \
    X(nbd_aio_pread) \
    X(nbd_aio_pwrite) \
    X(nbd_aio_trim) \
    X(nbd_aio_zero) \
    X(nbd_can_fast_zero) \
    X(nbd_can_flush) \
    X(nbd_can_fua) \
    X(nbd_can_meta_context) \
    X(nbd_can_multi_conn) \
    X(nbd_can_trim) \
    X(nbd_can_zero) \
    X(nbd_close) \
    X(nbd_connect_tcp) \
    X(nbd_connect_unix) \
    X(nbd_create) \
    X(nbd_get_block_size) \
    X(nbd_get_errno) \
    X(nbd_get_error) \
    X(nbd_get_size) \
    X(nbd_is_read_only) \
    X(nbd_set_export_name) \
    X(nbd_set_tls) \
    X(nbd_set_tls_certificates) \
    X(nbd_set_tls_psk_file) \
    X(nbd_set_tls_username) \
    X(nbd_set_tls_verify_peer) \
    X(nbd_shutdown)

typedef struct NbdLib {
#define NBD_LIB_MEMBER(f) __typeof__(f) *f;
    NBD_LIB_FUNCS(NBD_LIB_MEMBER)
#undef NBD_LIB_MEMBER
} NbdLib;

extern NbdLib nbdlib;
/* Loads libnbd once (thread-safe); fails with one line when it is not
 * installed. */
int nbd_lib_load(Error *err);

#define NBD_CLIENT_MAX_CONNECTIONS 16
#define NBD_CLIENT_MAX_REQUEST (32u << 20)

typedef struct NbdPart NbdPart;

/* One connection (libnbd handle) and the thread that drives it. */
typedef struct NbdConnection {
    struct nbd_handle *h;
    int efd;                   /* wakes the I/O thread */
    pthread_t thread;
    bool thread_started;
    bool stop;                 /* atomic */
    bool dead;                 /* atomic: failed, no more I/O */
    pthread_mutex_t done_lock;
    NbdPart *done;             /* parts libnbd finished, not yet ended */
} NbdConnection;

typedef struct NbdClientState {
    NbdConnection conns[NBD_CLIENT_MAX_CONNECTIONS];
    int nconns;
    unsigned next;             /* round robin, atomic */
    uint64_t size;
    uint64_t max_request;      /* split larger requests */
    char *context;             /* where block status comes from */
    bool dirty_bitmap;         /* context is not base:allocation */
} NbdClientState;

/* Starts the I/O thread of a connected handle. */
int nbd_client_start_thread(NbdConnection *c, Error *err);
/* Stops and joins it (nothing may be in flight). */
void nbd_client_stop_thread(NbdConnection *c);

/* The driver's request callbacks (nbd-client-io.c). */
int nbd_client_submit(BlockNode *n, BlockRequest *req);
int nbd_client_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov,
                      int flags);
int nbd_client_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                       int flags);
int nbd_client_flush(BlockNode *n);
int nbd_client_discard(BlockNode *n, uint64_t off, uint64_t len);
int nbd_client_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                            int flags);
int nbd_client_block_status(BlockNode *n, uint64_t off, uint64_t len,
                            uint64_t *pnum, uint64_t *map, BlockNode **file);

#endif
