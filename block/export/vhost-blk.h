/*
 * vhost-blk.h - a virtio-blk device (virtio 1.x 5.2) over a block node,
 * served to a vhost-user front end: reads, writes, flush, discard and
 * write-zeroes (several segments per request), GET_ID, read-only mode,
 * the config space, and capacity change notification after a resize.
 */
#ifndef IMGTOOL_EXPORT_VHOST_BLK_H
#define IMGTOOL_EXPORT_VHOST_BLK_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

/* virtio-blk wire format. */
enum {
    VIRTIO_BLK_F_SIZE_MAX     = 1,
    VIRTIO_BLK_F_SEG_MAX      = 2,
    VIRTIO_BLK_F_RO           = 5,
    VIRTIO_BLK_F_BLK_SIZE     = 6,
    VIRTIO_BLK_F_FLUSH        = 9,
    VIRTIO_BLK_F_TOPOLOGY     = 10,
    VIRTIO_BLK_F_MQ           = 12,
    VIRTIO_BLK_F_DISCARD      = 13,
    VIRTIO_BLK_F_WRITE_ZEROES = 14,
};
enum {
    VIRTIO_BLK_T_IN           = 0,
    VIRTIO_BLK_T_OUT          = 1,
    VIRTIO_BLK_T_FLUSH        = 4,
    VIRTIO_BLK_T_GET_ID       = 8,
    VIRTIO_BLK_T_DISCARD      = 11,
    VIRTIO_BLK_T_WRITE_ZEROES = 13,
};
enum {
    VIRTIO_BLK_S_OK     = 0,
    VIRTIO_BLK_S_IOERR  = 1,
    VIRTIO_BLK_S_UNSUPP = 2,
};
#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_WZ_UNMAP 1u

typedef struct __attribute__((packed)) VirtioBlkOuthdr {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
} VirtioBlkOuthdr;

typedef struct __attribute__((packed)) VirtioBlkDiscardWz {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
} VirtioBlkDiscardWz;

typedef struct __attribute__((packed)) VirtioBlkConfig {
    uint64_t capacity;           /* 512-byte sectors */
    uint32_t size_max;
    uint32_t seg_max;
    uint16_t cylinders;
    uint8_t heads;
    uint8_t sectors;
    uint32_t blk_size;
    uint8_t physical_block_exp;
    uint8_t alignment_offset;
    uint16_t min_io_size;
    uint32_t opt_io_size;
    uint8_t writeback;
    uint8_t unused0;
    uint16_t num_queues;
    uint32_t max_discard_sectors;
    uint32_t max_discard_seg;
    uint32_t discard_sector_alignment;
    uint32_t max_write_zeroes_sectors;
    uint32_t max_write_zeroes_seg;
    uint8_t write_zeroes_may_unmap;
    uint8_t unused1[3];
} VirtioBlkConfig;

/* Our limits, as the config space states them. */
#define VHOST_BLK_SEG_MAX 126
#define VHOST_BLK_MAX_DISCARD_SECTORS (1u << 21)     /* 1 GiB */
#define VHOST_BLK_MAX_DISCARD_SEG 256

typedef struct VhostBlkConf {
    const char *id;             /* export id: reports and GET_ID */
    BlockNode *node;            /* the export takes its own reference */
    bool writable;
    bool writethrough;          /* every write is FUA */
    uint32_t logical_block_size;   /* 512 to 64k, a power of two */
    int num_queues;             /* 1 to 64 */
} VhostBlkConf;

typedef struct VhostBlk VhostBlk;

int vhost_blk_new(const VhostBlkConf *conf, VhostBlk **out, Error *err);
/* Serves on a unix socket at path, or on listening fd when path is NULL. */
int vhost_blk_listen(VhostBlk *b, const char *path, int fd, Error *err);
/* Disconnects the front end after its requests complete, and frees. */
void vhost_blk_free(VhostBlk *b);
/* The node's size changed: tell the front end (capacity in the config
 * space, then a config-change message). */
int vhost_blk_resized(VhostBlk *b);
/* The vhost-user device (tests drive it message by message). */
struct VhostDev *vhost_blk_dev(VhostBlk *b);

#endif
