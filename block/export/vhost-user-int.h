/*
 * vhost-user-int.h - what vhost-user.c (messages, connection) and
 * vhost-queue.c (queue threads, requests) share.  Nothing else includes
 * this.
 *
 * Locking.  dev->lock guards the connection state (features, the memory
 * table pointer, the back-end channel, the inflight area, conn_fd); only
 * the control thread changes it, other threads read under it.  Each
 * queue's q->lock guards its VirtQueue, q->mem, call_fd and in_flight:
 * the queue thread pops under it, completions push under it, and the
 * control thread takes it to swap the memory table or the call fd.  The
 * control thread alone starts and stops queue threads.  Lock order:
 * dev->lock before q->lock; no lock is held while a device callback runs.
 */
#ifndef IMGTOOL_EXPORT_VHOST_USER_INT_H
#define IMGTOOL_EXPORT_VHOST_USER_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "block/export/vhost-user.h"
#include "block/export/virtqueue.h"

struct VhostQueue {
    VhostDev *dev;
    int index;
    pthread_mutex_t lock;
    pthread_cond_t idle;       /* in_flight dropped to 0 */
    VirtQueue vq;              /* valid while ready */
    VhostMem *mem;             /* the table vq's rings were mapped with */
    unsigned in_flight;        /* requests handed to the device */

    /* Set up by the front end (control thread only). */
    unsigned num;
    uint16_t base;
    uint64_t desc_uva, avail_uva, used_uva;
    bool addr_set;
    int kick_fd, call_fd;
    bool kicked;               /* has a kick fd: the ring is started */
    bool enabled;
    bool ready;                /* vq initialised from the above */
    bool reported;             /* its breakage was reported */

    pthread_t thread;
    bool running;              /* the queue thread exists */
    int stop_fd;               /* eventfd: the thread should leave */
    struct iovec scratch[VQ_MAX_IOV];   /* the queue thread's */
};

struct VhostDev {
    char *name;
    const VhostDevOps *ops;
    void *opaque;
    int max_queues;
    VhostQueue *queues;

    pthread_mutex_t lock;
    uint64_t features;
    uint64_t protocol_features;
    VhostMem *mem;
    int backend_fd;
    void *inflight_map;
    size_t inflight_len;
    unsigned inflight_nq, inflight_qsize;
    bool connected;

    int listen_fd;
    char *path;                /* socket file we created, or NULL */
    int conn_fd;
    int wake_fd;
    pthread_t thread;
    bool thread_started;
    atomic_bool shutdown;
    void (*shutdown_done)(void *opaque);
    void *shutdown_opaque;
};

/* vhost-queue.c */
void vhost_queue_init(VhostQueue *q, VhostDev *dev, int index);
void vhost_queue_destroy(VhostQueue *q);
/* Starts what the front end's settings allow: the rings (vq) once the
 * memory table, size, addresses and a kick fd are there, the thread once
 * the ring is also enabled.  Reports failures. */
void vhost_queue_update(VhostQueue *q);
/* Stops the thread and waits until the device has completed every
 * request of the queue; the ring state is kept. */
void vhost_queue_halt(VhostQueue *q);
/* Halts and forgets the ring; returns the next avail index to take. */
uint16_t vhost_queue_stop(VhostQueue *q);
/* Stop and close every fd: back to the state of a new connection. */
void vhost_queue_reset(VhostQueue *q);
/* The queue's rings through the new table (running or not). */
void vhost_queue_remap(VhostQueue *q, VhostMem *mem);
void vhost_queue_set_call(VhostQueue *q, int fd);
void vhost_queue_set_kick(VhostQueue *q, int fd);

void vhost_report(VhostDev *dev, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
