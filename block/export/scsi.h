/*
 * scsi.h - a SCSI target of block nodes (SPC-4, SBC-3): a set of logical
 * units (LUNs), each a block device over a node, executing commands from
 * their CDBs with data buffers given as I/O vectors, and answering every
 * error with CHECK CONDITION and fixed-format sense data.  Transport
 * independent: vhost-scsi.c carries it over virtio-scsi.
 *
 * Commands: TEST UNIT READY, REQUEST SENSE, INQUIRY (VPD 00 80 83 B0 B1
 * B2), MODE SENSE 6/10 (caching, control, all), READ CAPACITY 10/16, READ
 * and WRITE 6/10/12/16, WRITE SAME 10/16 (with UNMAP), UNMAP, SYNCHRONIZE
 * CACHE 10/16, GET LBA STATUS, REPORT LUNS, START STOP UNIT.
 */
#ifndef IMGTOOL_EXPORT_SCSI_H
#define IMGTOOL_EXPORT_SCSI_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

/* ---- Status, sense keys, additional sense codes ---------------------- */

enum {
    SCSI_STATUS_GOOD            = 0x00,
    SCSI_STATUS_CHECK_CONDITION = 0x02,
    SCSI_STATUS_BUSY            = 0x08,
    SCSI_STATUS_TASK_ABORTED    = 0x40,
};

enum {
    SENSE_NO_SENSE        = 0x0,
    SENSE_NOT_READY       = 0x2,
    SENSE_MEDIUM_ERROR    = 0x3,
    SENSE_HARDWARE_ERROR  = 0x4,
    SENSE_ILLEGAL_REQUEST = 0x5,
    SENSE_UNIT_ATTENTION  = 0x6,
    SENSE_DATA_PROTECT    = 0x7,
    SENSE_ABORTED_COMMAND = 0xb,
};

/* (ASC << 8) | ASCQ */
enum {
    ASC_NO_ADDITIONAL_SENSE      = 0x0000,
    ASC_WRITE_ERROR              = 0x0c00,
    ASC_UNRECOVERED_READ_ERROR   = 0x1100,
    ASC_PARAMETER_LIST_LENGTH    = 0x1a00,
    ASC_INVALID_OPCODE           = 0x2000,
    ASC_LBA_OUT_OF_RANGE         = 0x2100,
    ASC_INVALID_FIELD_IN_CDB     = 0x2400,
    ASC_LUN_NOT_SUPPORTED        = 0x2500,
    ASC_INVALID_FIELD_IN_PARAM   = 0x2600,
    ASC_WRITE_PROTECTED          = 0x2700,
    ASC_SPACE_ALLOC_FAILED_WP    = 0x2707,
    ASC_POWER_ON_RESET           = 0x2900,
    ASC_CAPACITY_DATA_CHANGED    = 0x2a09,
    ASC_SAVING_PARAMS_UNSUP      = 0x3900,
    ASC_REPORTED_LUNS_CHANGED    = 0x3f0e,
    ASC_INTERNAL_TARGET_FAILURE  = 0x4400,
};

/* Fixed-format sense data is 18 bytes. */
#define SCSI_SENSE_BYTES 18

/* What went wrong, before it becomes sense bytes.  field: byte of the
 * CDB (cdb true) or parameter list the error points at, -1 for none;
 * bit: the bit in that byte, -1 for the whole byte. */
typedef struct ScsiError {
    uint8_t key;
    uint16_t asc;
    int field;
    int bit;
    bool cdb;
} ScsiError;

/* Writes fixed-format sense data (18 bytes) for e into buf. */
void scsi_sense_fixed(uint8_t *buf, const ScsiError *e);
/* The error for a negative errno from the block layer (reading or
 * writing). */
ScsiError scsi_error_from_errno(int ret, bool write);

/* ---- Decoded CDBs (scsi-cdb.c) --------------------------------------- */

enum {
    SCSI_TEST_UNIT_READY   = 0x00,
    SCSI_REQUEST_SENSE     = 0x03,
    SCSI_READ_6            = 0x08,
    SCSI_WRITE_6           = 0x0a,
    SCSI_INQUIRY           = 0x12,
    SCSI_MODE_SENSE_6      = 0x1a,
    SCSI_START_STOP_UNIT   = 0x1b,
    SCSI_READ_CAPACITY_10  = 0x25,
    SCSI_READ_10           = 0x28,
    SCSI_WRITE_10          = 0x2a,
    SCSI_SYNC_CACHE_10     = 0x35,
    SCSI_WRITE_SAME_10     = 0x41,
    SCSI_UNMAP             = 0x42,
    SCSI_MODE_SENSE_10     = 0x5a,
    SCSI_READ_16           = 0x88,
    SCSI_WRITE_16          = 0x8a,
    SCSI_SYNC_CACHE_16     = 0x91,
    SCSI_WRITE_SAME_16     = 0x93,
    SCSI_SERVICE_ACTION_IN_16 = 0x9e,
    SCSI_REPORT_LUNS       = 0xa0,
    SCSI_READ_12           = 0xa8,
    SCSI_WRITE_12          = 0xaa,
};
enum {
    SCSI_SAI_READ_CAPACITY_16 = 0x10,
    SCSI_SAI_GET_LBA_STATUS   = 0x12,
};

typedef enum {
    SCSI_CMD_TEST_UNIT_READY,
    SCSI_CMD_REQUEST_SENSE,
    SCSI_CMD_INQUIRY,
    SCSI_CMD_MODE_SENSE,
    SCSI_CMD_START_STOP,
    SCSI_CMD_READ_CAPACITY_10,
    SCSI_CMD_READ_CAPACITY_16,
    SCSI_CMD_READ,
    SCSI_CMD_WRITE,
    SCSI_CMD_SYNC_CACHE,
    SCSI_CMD_WRITE_SAME,
    SCSI_CMD_UNMAP,
    SCSI_CMD_GET_LBA_STATUS,
    SCSI_CMD_REPORT_LUNS,
} ScsiCmdKind;

typedef struct ScsiCmd {
    ScsiCmdKind kind;
    uint8_t op;
    unsigned cdb_len;
    uint64_t lba;
    uint32_t blocks;      /* transfer / unmap / write-same length */
    uint32_t alloc_len;   /* allocation or parameter list length */
    bool fua;
    bool unmap;           /* WRITE SAME UNMAP */
    bool anchor;
    bool ndob;            /* WRITE SAME(16): no data-out buffer */
    bool evpd;            /* INQUIRY */
    bool dbd, llbaa;      /* MODE SENSE */
    bool ten;             /* MODE SENSE(10) */
    bool desc;            /* REQUEST SENSE */
    uint8_t page;         /* INQUIRY / MODE SENSE page code */
    uint8_t subpage;
    uint8_t pc;           /* MODE SENSE page control */
    uint8_t select;       /* REPORT LUNS select report */
} ScsiCmd;

/* Decodes cdb (len bytes available; the command's own length must fit).
 * Returns 0, or -EINVAL with *e set (INVALID COMMAND OPERATION CODE,
 * INVALID FIELD IN CDB with the field pointer). */
int scsi_cdb_parse(const uint8_t *cdb, unsigned len, ScsiCmd *c,
                   ScsiError *e);

/* ---- Logical units and the target ------------------------------------ */

#define SCSI_MAX_LUNS 256
/* Most blocks one READ/WRITE may move (32 MiB at 512-byte blocks,
 * VPD B0's maximum transfer length is stated from it), descriptors in one
 * UNMAP, blocks per UNMAP descriptor or WRITE SAME. */
#define SCSI_MAX_XFER_BYTES (32u << 20)
#define SCSI_MAX_UNMAP_DESC 256
#define SCSI_MAX_UNMAP_BYTES (1ull << 30)
/* Descriptors one GET LBA STATUS returns at most. */
#define SCSI_MAX_LBA_STATUS_DESC 64

typedef struct ScsiLunConf {
    BlockNode *node;          /* the LUN takes its own reference */
    bool writable;
    bool writethrough;        /* every write is FUA */
    uint32_t block_size;      /* 512 to 64k, power of two (0: 512) */
    const char *serial;       /* unit serial / identifiers */
} ScsiLunConf;

typedef struct ScsiLun ScsiLun;
int scsi_lun_new(const ScsiLunConf *conf, ScsiLun **out, Error *err);
ScsiLun *scsi_lun_ref(ScsiLun *l);
void scsi_lun_unref(ScsiLun *l);
/* The node changed size: capacity is read again and the next command
 * gets a CAPACITY DATA HAS CHANGED unit attention. */
void scsi_lun_resized(ScsiLun *l);
BlockNode *scsi_lun_node(ScsiLun *l);

/* A set of LUNs behind one target.  Attaching and detaching may happen
 * while commands run on other threads. */
typedef struct ScsiTarget {
    pthread_rwlock_t lock;
    ScsiLun *luns[SCSI_MAX_LUNS];
} ScsiTarget;

void scsi_target_init(ScsiTarget *t);
/* Drops every LUN. */
void scsi_target_destroy(ScsiTarget *t);
/* -EEXIST when taken, -ERANGE past SCSI_MAX_LUNS; takes over l's ref. */
int scsi_target_attach(ScsiTarget *t, unsigned lun, ScsiLun *l);
/* The LUN detached (the caller's reference), or NULL. */
ScsiLun *scsi_target_detach(ScsiTarget *t, unsigned lun);
/* A new reference to LUN lun, or NULL. */
ScsiLun *scsi_target_get(ScsiTarget *t, unsigned lun);

/* One command.  The caller fills the inputs and calls scsi_task_run; done
 * is called exactly once, from any thread, possibly before scsi_task_run
 * returns, with the outputs set. */
typedef struct ScsiTask ScsiTask;
struct ScsiTask {
    /* in */
    uint8_t cdb[32];
    unsigned cdb_len;
    const BlockIOV *out;      /* data-out buffers (may be empty) */
    const BlockIOV *in;       /* data-in buffers (may be empty) */
    void (*done)(ScsiTask *t);
    /* out */
    uint8_t status;
    uint8_t sense[SCSI_SENSE_BYTES];
    unsigned sense_len;
    uint32_t data_in;         /* bytes written into `in` */
    bool overrun;             /* the command needs more buffer than given */
    /* private */
    ScsiTarget *target;
    ScsiLun *lun;
    ScsiCmd cmd;
    atomic_int pending;
    atomic_int error;
    BlockIOVSlice slice;
    uint8_t *buf;             /* WRITE SAME's pattern */
    uint64_t next, end;       /* WRITE SAME's progress (bytes) */
    size_t chunk;
    struct iovec iov;
    BlockIOV biov;
};

/* Runs t on LUN lun of target (a LUN that is not there answers INQUIRY
 * with "no device", REPORT LUNS and REQUEST SENSE, and LOGICAL UNIT NOT
 * SUPPORTED to the rest). */
void scsi_task_run(ScsiTarget *target, unsigned lun, ScsiTask *t);

/* Internal: scsi-info.c's data-in commands, given the decoded CDB.
 * They build the response in buf (size SCSI_INFO_MAX), return its full
 * length or -EINVAL with *e set. */
#define SCSI_INFO_MAX 4096
int scsi_info_inquiry(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                      ScsiError *e);
int scsi_info_mode_sense(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                         ScsiError *e);
int scsi_info_read_capacity(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                            ScsiError *e);
int scsi_info_report_luns(ScsiTarget *t, const ScsiCmd *c, uint8_t *buf,
                          ScsiError *e);
int scsi_info_lba_status(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                         ScsiError *e);

/* What scsi-info.c needs to know of a LUN (scsi-lun.c owns it). */
struct ScsiLun {
    atomic_int refcnt;
    BlockNode *node;
    bool read_only;
    bool writethrough;
    bool can_discard;
    uint32_t block_size;
    uint32_t granularity;     /* blocks: the format's cluster */
    _Atomic uint64_t blocks;  /* capacity */
    atomic_int pending_ua;    /* ASC/ASCQ of a unit attention, 0: none */
    char serial[64];
};

#endif
