/*
 * vhost-user-proto.h - the vhost-user wire format (QEMU's
 * docs/interop/vhost-user.rst) and the split-virtqueue layout (virtio 1.x,
 * section 2.7), as the back ends, their tests and the fuzz harnesses see
 * them.  Constants and packed structures only; no code.
 *
 * Everything on the wire is in the host's byte order (vhost-user is a
 * local protocol); everything in guest memory is little-endian (virtio
 * 1.x; legacy devices are not offered).
 */
#ifndef IMGTOOL_EXPORT_VHOST_USER_PROTO_H
#define IMGTOOL_EXPORT_VHOST_USER_PROTO_H

#include <assert.h>
#include <stdint.h>

/* ---- Messages: a 12-byte header, then `size` bytes of payload ------- */

enum {
    VHOST_USER_VERSION         = 0x1,
    VHOST_USER_VERSION_MASK    = 0x3,
    VHOST_USER_FLAG_REPLY      = 1u << 2,
    VHOST_USER_FLAG_NEED_REPLY = 1u << 3,
};

/* Front-end requests. */
enum {
    VHOST_USER_GET_FEATURES          = 1,
    VHOST_USER_SET_FEATURES          = 2,
    VHOST_USER_SET_OWNER             = 3,
    VHOST_USER_RESET_OWNER           = 4,
    VHOST_USER_SET_MEM_TABLE         = 5,
    VHOST_USER_SET_LOG_BASE          = 6,
    VHOST_USER_SET_LOG_FD            = 7,
    VHOST_USER_SET_VRING_NUM         = 8,
    VHOST_USER_SET_VRING_ADDR        = 9,
    VHOST_USER_SET_VRING_BASE        = 10,
    VHOST_USER_GET_VRING_BASE        = 11,
    VHOST_USER_SET_VRING_KICK        = 12,
    VHOST_USER_SET_VRING_CALL        = 13,
    VHOST_USER_SET_VRING_ERR         = 14,
    VHOST_USER_GET_PROTOCOL_FEATURES = 15,
    VHOST_USER_SET_PROTOCOL_FEATURES = 16,
    VHOST_USER_GET_QUEUE_NUM         = 17,
    VHOST_USER_SET_VRING_ENABLE      = 18,
    VHOST_USER_SEND_RARP             = 19,
    VHOST_USER_NET_SET_MTU           = 20,
    VHOST_USER_SET_BACKEND_REQ_FD    = 21,
    VHOST_USER_IOTLB_MSG             = 22,
    VHOST_USER_SET_VRING_ENDIAN      = 23,
    VHOST_USER_GET_CONFIG            = 24,
    VHOST_USER_SET_CONFIG            = 25,
    VHOST_USER_GET_INFLIGHT_FD       = 31,
    VHOST_USER_SET_INFLIGHT_FD       = 32,
    VHOST_USER_RESET_DEVICE          = 34,
    VHOST_USER_GET_MAX_MEM_SLOTS     = 36,
    VHOST_USER_ADD_MEM_REG           = 37,
    VHOST_USER_REM_MEM_REG           = 38,
};

/* Back-end requests (on the channel SET_BACKEND_REQ_FD hands over). */
enum {
    VHOST_USER_BACKEND_CONFIG_CHANGE_MSG = 2,
};

/* Protocol feature bits. */
enum {
    VHOST_USER_PROTOCOL_F_MQ             = 0,
    VHOST_USER_PROTOCOL_F_LOG_SHMFD      = 1,
    VHOST_USER_PROTOCOL_F_REPLY_ACK      = 3,
    VHOST_USER_PROTOCOL_F_BACKEND_REQ    = 5,
    VHOST_USER_PROTOCOL_F_CONFIG         = 9,
    VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 12,
    VHOST_USER_PROTOCOL_F_RESET_DEVICE   = 13,
};

/* The virtio feature bit that says "GET_PROTOCOL_FEATURES exists". */
#define VHOST_USER_F_PROTOCOL_FEATURES 30

/* SET_VRING_KICK/CALL/ERR payload: queue index and "no fd attached". */
#define VHOST_USER_VRING_IDX_MASK  0xffu
#define VHOST_USER_VRING_NOFD_MASK (1u << 8)

/* SET_MEM_TABLE carries at most this many regions (one fd each). */
#define VHOST_USER_MAX_REGIONS 8
/* The largest payload any message we accept has (GET/SET_CONFIG). */
#define VHOST_USER_MAX_CONFIG 256
#define VHOST_USER_MAX_PAYLOAD 4096

typedef struct __attribute__((packed)) VhostUserHeader {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
} VhostUserHeader;

typedef struct __attribute__((packed)) VhostUserVringState {
    uint32_t index;
    uint32_t num;
} VhostUserVringState;

typedef struct __attribute__((packed)) VhostUserVringAddr {
    uint32_t index;
    uint32_t flags;           /* bit 0: log the used ring (unsupported) */
    uint64_t desc_user_addr;  /* front-end virtual addresses, translated */
    uint64_t used_user_addr;  /* through the regions' userspace_addr */
    uint64_t avail_user_addr;
    uint64_t log_guest_addr;
} VhostUserVringAddr;

typedef struct __attribute__((packed)) VhostUserMemRegion {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t mmap_offset;
} VhostUserMemRegion;

typedef struct __attribute__((packed)) VhostUserMemory {
    uint32_t nregions;
    uint32_t padding;
    VhostUserMemRegion regions[VHOST_USER_MAX_REGIONS];
} VhostUserMemory;

typedef struct __attribute__((packed)) VhostUserMemRegMsg {
    uint64_t padding;
    VhostUserMemRegion region;
} VhostUserMemRegMsg;

typedef struct __attribute__((packed)) VhostUserConfig {
    uint32_t offset;
    uint32_t size;
    uint32_t flags;
    uint8_t region[VHOST_USER_MAX_CONFIG];
} VhostUserConfig;
#define VHOST_USER_CONFIG_HDR 12

typedef struct __attribute__((packed)) VhostUserInflight {
    uint64_t mmap_size;
    uint64_t mmap_offset;
    uint16_t num_queues;
    uint16_t queue_size;
    uint32_t padding;    /* QEMU's C layout: 24 bytes on the wire */
} VhostUserInflight;

static_assert(sizeof(VhostUserHeader) == 12, "header");
static_assert(sizeof(VhostUserVringAddr) == 40, "vring addr");
static_assert(sizeof(VhostUserMemRegion) == 32, "region");
static_assert(sizeof(VhostUserInflight) == 24, "inflight");
/* The fields that matter; some front ends send only these. */
#define VHOST_USER_INFLIGHT_MIN 20

/* ---- Virtio feature bits common to every device ---------------------- */

enum {
    VIRTIO_F_NOTIFY_ON_EMPTY    = 24,
    VIRTIO_RING_F_INDIRECT_DESC = 28,
    VIRTIO_RING_F_EVENT_IDX     = 29,
    VIRTIO_F_VERSION_1          = 32,
};

/* ---- The split virtqueue (virtio 1.x 2.7) --------------------------- */

enum {
    VRING_DESC_F_NEXT     = 1,
    VRING_DESC_F_WRITE    = 2,
    VRING_DESC_F_INDIRECT = 4,
    VRING_USED_F_NO_NOTIFY = 1,
    VRING_AVAIL_F_NO_INTERRUPT = 1,
};

#define VIRTQ_MAX_SIZE 32768

typedef struct VringDesc {
    uint64_t addr;     /* guest physical */
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} VringDesc;

typedef struct VringAvail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];   /* num entries, then used_event (EVENT_IDX) */
} VringAvail;

typedef struct VringUsedElem {
    uint32_t id;
    uint32_t len;
} VringUsedElem;

typedef struct VringUsed {
    uint16_t flags;
    uint16_t idx;
    VringUsedElem ring[];  /* num entries, then avail_event (EVENT_IDX) */
} VringUsed;

static_assert(sizeof(VringDesc) == 16, "descriptor");

/* Bytes each part of a ring of num entries occupies (with the event
 * index fields, which we always allow for). */
#define VRING_DESC_BYTES(num)  ((uint64_t)(num) * 16)
#define VRING_AVAIL_BYTES(num) (6 + (uint64_t)(num) * 2)
#define VRING_USED_BYTES(num)  (6 + (uint64_t)(num) * 8)

/* ---- Inflight I/O tracking (INFLIGHT_SHMFD), split rings ------------ */

typedef struct InflightDesc {
    uint8_t inflight;      /* 1 while the request is being processed */
    uint8_t padding[5];
    uint16_t next;         /* links the last batch of completions */
    uint64_t counter;      /* order in which heads were fetched */
} InflightDesc;

typedef struct InflightQueue {
    uint64_t features;
    uint16_t version;      /* 1 */
    uint16_t desc_num;     /* queue size */
    uint16_t last_batch_head;
    uint16_t used_idx;
    InflightDesc desc[];
} InflightQueue;

static_assert(sizeof(InflightDesc) == 16, "inflight desc");
static_assert(sizeof(InflightQueue) == 16, "inflight queue");

/* Per-queue bytes of the inflight area, rounded to 64 for alignment. */
#define INFLIGHT_QUEUE_BYTES(qsize) \
    ((sizeof(InflightQueue) + (uint64_t)(qsize) * sizeof(InflightDesc) + 63) & ~63ull)

#endif
