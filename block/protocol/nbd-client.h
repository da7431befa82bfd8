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
