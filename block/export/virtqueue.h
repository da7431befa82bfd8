/*
 * virtqueue.h - the device side of a split virtqueue (virtio 1.x 2.7):
 * taking descriptor chains the driver made available, turning them into
 * I/O vectors over guest memory with strict validation, returning them
 * through the used ring, deciding when to notify, and the inflight
 * tracking that lets a restarted back end finish what its predecessor
 * took (vhost-user INFLIGHT_SHMFD).
 *
 * Nothing here is thread-safe: the owner serialises every call on one
 * queue (vhost-user.c holds the queue's lock).  Nothing here blocks.
 *
 * Everything in guest memory may change under us at any moment (a
 * hostile or buggy driver): each ring entry and descriptor is read once
 * into a local copy, every index and length is checked before use, and a
 * chain that breaks a rule breaks the queue (vq->broken, vq->why) instead
 * of the process: the device stops using it, as virtio's NEEDS_RESET.
 */
#ifndef IMGTOOL_EXPORT_VIRTQUEUE_H
#define IMGTOOL_EXPORT_VIRTQUEUE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "block/block.h"
#include "block/export/vhost-mem.h"
#include "block/export/vhost-user-proto.h"

/* Limits on one chain, whatever the driver writes: elements of the I/O
 * vector it becomes (descriptors, split at region boundaries), entries
 * of an indirect table, and bytes in each direction. */
#define VQ_MAX_IOV 1024
#define VQ_MAX_INDIRECT 1024
#define VQ_MAX_CHAIN_BYTES (256ull << 20)

typedef struct VirtQueue {
    uint16_t num;               /* 0: not set up */
    VringDesc *desc;
    VringAvail *avail;
    VringUsed *used;
    uint16_t last_avail_idx;    /* next avail entry to take */
    uint16_t used_idx;          /* our copy of used->idx */
    bool event_idx;             /* VIRTIO_RING_F_EVENT_IDX negotiated */
    bool indirect;              /* VIRTIO_RING_F_INDIRECT_DESC */

    uint64_t *inuse;            /* num bits: heads taken, not yet used */
    unsigned inuse_count;

    InflightQueue *inflight;    /* NULL: not tracked */
    uint64_t inflight_counter;

    bool broken;
    char why[160];              /* what broke it */
} VirtQueue;

/* One chain as vq_pop hands it out: iov[0..out_num) are the readable
 * (driver to device) buffers, iov[out_num..out_num+in_num) the writable
 * ones.  iov points at caller storage of VQ_MAX_IOV elements. */
typedef struct VqChain {
    uint16_t head;
    int out_num, in_num;
    uint64_t out_bytes, in_bytes;
    struct iovec *iov;
} VqChain;

/* Sets vq up over rings at front-end virtual addresses (SET_VRING_ADDR)
 * in mem: checks the size (a power of two up to 32768), alignment
 * (descriptors 16, avail 2, used 4) and that each ring lies inside one
 * region.  last_avail_idx is the base the front end set; used_idx is
 * taken from the ring. */
int vq_init(VirtQueue *vq, const VhostMem *mem, unsigned num,
            uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva,
            uint16_t last_avail_idx, bool event_idx, bool indirect,
            Error *err);
void vq_fini(VirtQueue *vq);
/* The same rings seen through a new memory table (SET_MEM_TABLE while the
 * queue runs); the queue's state is kept.  On failure nothing changes. */
int vq_remap(VirtQueue *vq, const VhostMem *mem, uint64_t desc_uva,
             uint64_t avail_uva, uint64_t used_uva, Error *err);

/* Takes the next available chain into c.  1: got one; 0: none available;
 * -EIO: the queue is (now) broken, vq->why says why. */
int vq_pop(VirtQueue *vq, const VhostMem *mem, VqChain *c);
/* Walks the chain at head without taking it from the avail ring (inflight
 * recovery).  0 or -EIO (broken). */
int vq_walk(VirtQueue *vq, const VhostMem *mem, uint16_t head, VqChain *c);

/* Returns head to the driver with len bytes written into its writable
 * buffers; true when the driver wants an interrupt for it. */
bool vq_push(VirtQueue *vq, uint16_t head, uint32_t len);

/* Whether the driver made chains available that we have not taken. */
bool vq_has_avail(VirtQueue *vq);
/* Asks the driver to kick for new chains (true) or not to bother (false:
 * we are looking anyway).  After enabling, check vq_has_avail again: a
 * chain made available meanwhile came without a kick. */
void vq_set_notification(VirtQueue *vq, bool enable);

/* Inflight tracking: ties region q (desc_num == num, version 1, or all
 * zero for a fresh region) to vq.  -EINVAL when it does not match. */
int vq_inflight_attach(VirtQueue *vq, InflightQueue *q, Error *err);
/* After a restart: completes the last batch's bookkeeping, collects the
 * heads still in flight in the order they were taken (up to num into
 * heads), marks them in use and moves last_avail_idx past them.  Returns
 * how many, or -EIO when the region is inconsistent with the ring. */
int vq_inflight_resume(VirtQueue *vq, uint16_t *heads);

#endif
