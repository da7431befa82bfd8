/*
 * vhost-scsi.h - a virtio-scsi controller (virtio 1.x 5.6) served to a
 * vhost-user front end: one target (0) with up to SCSI_MAX_LUNS logical
 * units over block nodes, added and removed while the guest runs (the
 * event queue tells it), several request queues, and the control queue's
 * task management (abort, LUN and nexus reset, query).
 */
#ifndef IMGTOOL_EXPORT_VHOST_SCSI_H
#define IMGTOOL_EXPORT_VHOST_SCSI_H

#include <stdint.h>

#include "block/block.h"
#include "block/export/scsi.h"

/* virtio-scsi wire format. */
enum {
    VIRTIO_SCSI_F_INOUT   = 0,
    VIRTIO_SCSI_F_HOTPLUG = 1,
    VIRTIO_SCSI_F_CHANGE  = 2,
};
#define VIRTIO_SCSI_CDB_SIZE 32
#define VIRTIO_SCSI_SENSE_SIZE 96

typedef struct __attribute__((packed)) VirtioScsiCmdReq {
    uint8_t lun[8];
    uint64_t tag;
    uint8_t task_attr;
    uint8_t prio;
    uint8_t crn;
    uint8_t cdb[VIRTIO_SCSI_CDB_SIZE];
} VirtioScsiCmdReq;

typedef struct __attribute__((packed)) VirtioScsiCmdResp {
    uint32_t sense_len;
    uint32_t resid;
    uint16_t status_qualifier;
    uint8_t status;
    uint8_t response;
    uint8_t sense[VIRTIO_SCSI_SENSE_SIZE];
} VirtioScsiCmdResp;

typedef struct __attribute__((packed)) VirtioScsiCtrlTmfReq {
    uint32_t type;
    uint32_t subtype;
    uint8_t lun[8];
    uint64_t tag;
} VirtioScsiCtrlTmfReq;

typedef struct __attribute__((packed)) VirtioScsiCtrlAnReq {
    uint32_t type;
    uint8_t lun[8];
    uint32_t event_requested;
} VirtioScsiCtrlAnReq;

typedef struct __attribute__((packed)) VirtioScsiCtrlAnResp {
    uint32_t event_actual;
    uint8_t response;
} VirtioScsiCtrlAnResp;

typedef struct __attribute__((packed)) VirtioScsiEvent {
    uint32_t event;
    uint8_t lun[8];
    uint32_t reason;
} VirtioScsiEvent;

enum {  /* response codes */
    VIRTIO_SCSI_S_OK                = 0,
    VIRTIO_SCSI_S_FUNCTION_COMPLETE = 0,
    VIRTIO_SCSI_S_OVERRUN           = 1,
    VIRTIO_SCSI_S_ABORTED           = 2,
    VIRTIO_SCSI_S_BAD_TARGET        = 3,
    VIRTIO_SCSI_S_RESET             = 4,
    VIRTIO_SCSI_S_BUSY              = 5,
    VIRTIO_SCSI_S_TRANSPORT_FAILURE = 6,
    VIRTIO_SCSI_S_TARGET_FAILURE    = 7,
    VIRTIO_SCSI_S_NEXUS_FAILURE     = 8,
    VIRTIO_SCSI_S_FAILURE           = 9,
    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED = 10,
    VIRTIO_SCSI_S_FUNCTION_REJECTED = 11,
    VIRTIO_SCSI_S_INCORRECT_LUN     = 12,
};
enum {  /* control queue request types */
    VIRTIO_SCSI_T_TMF          = 0,
    VIRTIO_SCSI_T_AN_QUERY     = 1,
    VIRTIO_SCSI_T_AN_SUBSCRIBE = 2,
};
enum {  /* TMF subtypes */
    VIRTIO_SCSI_T_TMF_ABORT_TASK        = 0,
    VIRTIO_SCSI_T_TMF_ABORT_TASK_SET    = 1,
    VIRTIO_SCSI_T_TMF_CLEAR_ACA         = 2,
    VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET    = 3,
    VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET   = 4,
    VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET = 5,
    VIRTIO_SCSI_T_TMF_QUERY_TASK        = 6,
    VIRTIO_SCSI_T_TMF_QUERY_TASK_SET    = 7,
};
enum {  /* events */
    VIRTIO_SCSI_T_NO_EVENT         = 0,
    VIRTIO_SCSI_T_TRANSPORT_RESET  = 1,
    VIRTIO_SCSI_T_ASYNC_NOTIFY     = 2,
    VIRTIO_SCSI_T_PARAM_CHANGE     = 3,
    VIRTIO_SCSI_EVT_RESET_HARD     = 0,
    VIRTIO_SCSI_EVT_RESET_RESCAN   = 1,
    VIRTIO_SCSI_EVT_RESET_REMOVED  = 2,
};
#define VIRTIO_SCSI_T_EVENTS_MISSED 0x80000000u

/* Queue indexes: control, event, then the request queues. */
#define VHOST_SCSI_CTRL_QUEUE 0
#define VHOST_SCSI_EVENT_QUEUE 1
#define VHOST_SCSI_FIRST_REQ_QUEUE 2

typedef struct VhostScsi VhostScsi;

/* A controller named id with num_queues request queues (1 to 62). */
int vhost_scsi_new(const char *id, int num_queues, VhostScsi **out,
                   Error *err);
int vhost_scsi_listen(VhostScsi *s, const char *path, int fd, Error *err);
void vhost_scsi_free(VhostScsi *s);

/* Adds LUN lun; a connected guest is told (hot plug). */
int vhost_scsi_add_lun(VhostScsi *s, unsigned lun, const ScsiLunConf *conf,
                       Error *err);
/* Removes LUN lun after its commands complete; a connected guest is
 * told (hot unplug). */
int vhost_scsi_remove_lun(VhostScsi *s, unsigned lun, Error *err);
/* LUN lun's node changed size. */
int vhost_scsi_lun_resized(VhostScsi *s, unsigned lun);
/* Whether LUN lun is there. */
bool vhost_scsi_has_lun(VhostScsi *s, unsigned lun);
/* How many LUNs there are. */
unsigned vhost_scsi_lun_count(VhostScsi *s);
struct VhostDev *vhost_scsi_dev(VhostScsi *s);

#endif
