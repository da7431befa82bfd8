/*
 * vhost-user.h - the back-end side of the vhost-user protocol, shared by
 * the virtio-blk and virtio-scsi devices: a listening unix socket, one
 * front end (QEMU) at a time, feature negotiation, the memory table,
 * rings, kick and call eventfds, the config space, inflight tracking for
 * reconnects, and one thread per queue.
 *
 * Threads.  One control thread per device accepts the front end and
 * handles its messages.  Each started queue has its own thread that waits
 * for kicks and hands every chain to the device's handle callback; the
 * device completes requests from any thread (block layer completions)
 * with vhost_req_complete.  Queues share no lock with each other: each
 * has its own, held only to touch its rings.
 *
 * A front end that breaks the protocol loses its connection; one whose
 * driver breaks a ring loses that queue (virtio's NEEDS_RESET).  Either
 * is reported (block_report) with the device's name and never takes the
 * process down; the socket keeps listening for the next front end, which
 * can resume where the last left off (inflight tracking).
 */
#ifndef IMGTOOL_EXPORT_VHOST_USER_H
#define IMGTOOL_EXPORT_VHOST_USER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "block/block.h"
#include "block/export/vhost-mem.h"

typedef struct VhostDev VhostDev;
typedef struct VhostQueue VhostQueue;

/* One chain taken from a queue, as the device gets it.  iov[0..out_num)
 * are the driver's readable buffers, then in_num writable ones; they
 * point into guest memory that stays mapped until the request completes.
 * The device's own per-request state (ops->req_size bytes, zeroed)
 * follows at vhost_req_priv(). */
typedef struct VhostReq {
    VhostQueue *q;
    VhostMem *mem;
    uint16_t head;
    int out_num, in_num;
    uint64_t out_bytes, in_bytes;
    struct iovec *iov;
} VhostReq;

typedef struct VhostDevOps {
    /* Virtio feature bits of the device type (VERSION_1, INDIRECT_DESC
     * and EVENT_IDX are added). */
    uint64_t features;
    /* Offer VHOST_USER_PROTOCOL_F_CONFIG / INFLIGHT_SHMFD. */
    bool config;
    bool inflight;
    size_t req_size;
    /* GET_CONFIG: len bytes of config space from offset into buf (the
     * caller checked offset + len <= 256; bytes past the device's config
     * must read as zero). */
    void (*get_config)(void *opaque, uint32_t offset, uint8_t *buf,
                       uint32_t len);
    /* A chain from queue index qi.  Runs on that queue's thread; the
     * device owns req until it calls vhost_req_complete (exactly once,
     * from any thread, possibly before handle returns). */
    void (*handle)(void *opaque, int qi, VhostReq *req);
    /* Queue qi stops (GET_VRING_BASE, disable, disconnect): complete
     * every request the device holds on purpose (event buffers).  The
     * back end then waits for the others.  May be NULL. */
    void (*stop)(void *opaque, int qi);
    /* Queue qi started; may be NULL. */
    void (*start)(void *opaque, int qi);
} VhostDevOps;

/* A device named name (for reports: "vhost-user-blk export 'd0'") with
 * up to max_queues queues (1..64).  Nothing listens yet. */
VhostDev *vhost_dev_new(const char *name, const VhostDevOps *ops,
                        void *opaque, int max_queues);
/* Listens on a new unix socket at path (an existing socket file there is
 * replaced) or, with path NULL, on the listening fd given (it becomes
 * the device's), and starts the control thread. */
int vhost_dev_listen(VhostDev *dev, const char *path, int fd, Error *err);
/* Starts shutting down without waiting: the control thread disconnects
 * the front end (its queues drain first), stops listening, and then
 * calls done(opaque) from its own thread.  Called once at most. */
void vhost_dev_shutdown(VhostDev *dev, void (*done)(void *opaque),
                        void *opaque);
/* Shuts down (if not done already) and waits for it, removes the socket
 * file vhost_dev_listen created, and frees everything. */
void vhost_dev_free(VhostDev *dev);

/* The device's private state of a request. */
static inline void *vhost_req_priv(VhostReq *r)
{
    return (uint8_t *)r + ((sizeof(VhostReq) + 15) & ~(size_t)15);
}
/* Returns the chain to the driver with `written` bytes in its writable
 * buffers, interrupts it when it asks, and frees req. */
void vhost_req_complete(VhostReq *req, uint32_t written);

/* Negotiated virtio features (valid while a front end is connected). */
uint64_t vhost_dev_features(VhostDev *dev);
bool vhost_dev_has_feature(VhostDev *dev, unsigned bit);
/* Tells the front end the config space changed (capacity after a
 * resize): VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the back-end channel.
 * -ENOTCONN when there is no front end or it gave no channel. */
int vhost_dev_config_changed(VhostDev *dev);
/* Whether a front end is connected now. */
bool vhost_dev_connected(VhostDev *dev);

/* ---- for tests and fuzzing: one message, without sockets ----------- */

/* Handles one message (header, payload of hdr->size bytes, fds received
 * with it, which the call takes over) as if it came from the front end,
 * and writes any reply into reply/reply_len (at most
 * sizeof(VhostUserHeader) + VHOST_USER_MAX_PAYLOAD) and the reply's fd
 * into *reply_fd (-1: none).  Returns 0, or -errno when the message
 * breaks the protocol (the connection would be dropped). */
struct VhostUserHeader;
int vhost_dev_handle_message(VhostDev *dev, const struct VhostUserHeader *hdr,
                             const void *payload, int *fds, int nfds,
                             void *reply, size_t *reply_len, int *reply_fd);
/* Ends the pretend connection: what a disconnect does. */
void vhost_dev_disconnect(VhostDev *dev);

#endif
