/*
 * iscsi-int.h - the iSCSI protocol's internals, shared by
 * iscsi-addr.c (where a LUN is: URL and options), iscsi-conn.c (one
 * session and the thread that serves it), iscsi.c (the block driver),
 * iscsi-lun.c (what the driver's LUN is and holds) and iscsi-target.c
 * (what a pool asks of a target, iscsi.h).
 *
 * Invariants:
 *  - a libiscsi context is touched only by its connection's service
 *    thread once that thread runs; other threads hand it commands
 *    through the connection's queue and wait for, or are called back
 *    with, the result;
 *  - every command queued is completed exactly once: with the target's
 *    answer, or with an error when its time is up or the connection is
 *    closed;
 *  - password bytes live in IscsiAddr.password only, and are wiped when
 *    the address is freed; no message ever contains them.
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_ISCSI_INT_H
#define IMGTOOL_BLOCK_PROTOCOL_ISCSI_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/driver.h"
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "block/protocol/iscsi.h"

/* ------------------------------------------------------------------ */
/* Where a LUN is (iscsi-addr.c)                                       */

/* Without a timeout option a command (and the reconnects it waits for)
 * fails after this many seconds, as the Linux SCSI layer's default; 0
 * given explicitly waits forever, as QEMU's default does. */
#define ISCSI_DEFAULT_TIMEOUT 30

typedef struct IscsiAddr {
    char *portal;            /* host:port ("[v6]:port") */
    char *target;            /* IQN, decoded */
    int lun;                 /* -1: none (a portal or target only) */
    char *user;              /* CHAP user, or NULL */
    char *password;          /* CHAP secret bytes, or NULL */
    size_t password_len;
    char *initiator_name;
    int header_digest;       /* enum iscsi_header_digest */
    bool iser;               /* transport=iser */
    unsigned timeout;        /* seconds; 0: forever */
    bool password_in_url;    /* given in clear: the caller warns */
} IscsiAddr;

/* Does filename start with iscsi:// ? */
bool iscsi_is_url(const char *filename);

/* Fills a from `url` (may be NULL) and the options in opts (transport,
 * portal, target, lun, user, password-secret, initiator-name,
 * header-digest, timeout; options given explicitly override the URL).
 * need_lun: the address must name a LUN (a target pool needs only the
 * portal and maybe the target).  Fails with one line naming what is
 * missing or wrong. */
int iscsi_addr_parse(IscsiAddr *a, const char *url, KVList *opts,
                     bool need_lun, Error *err);
void iscsi_addr_free(IscsiAddr *a);

/* "iscsi://[user@]portal/target/lun", never with a password: for
 * messages and node names (malloc'd). */
char *iscsi_addr_display(const IscsiAddr *a);

/* iscsi.h's target operations, as the module implements them
 * (iscsi-target.c, iscsi-addr.c); callers outside the module reach them
 * through iscsi_target_ops(). */
int iscsi_target_luns(const char *portal, const char *target, KVList *opts,
                      IscsiLunInfo **out, Error *err);
int iscsi_target_lun(const char *portal, const char *target, KVList *opts,
                     int lun, IscsiLunInfo *out, Error *err);
void iscsi_lun_info_free(IscsiLunInfo *v, int n);
int iscsi_set_target_defaults(const char *target, const char *user,
                              const char *secret_id,
                              const char *initiator_name);

/* ------------------------------------------------------------------ */
/* One session and its service thread (iscsi-conn.c)                   */

typedef struct IscsiConn IscsiConn;
typedef struct IscsiCmd IscsiCmd;

typedef enum {
    ISCSI_CMD_READ,          /* READ(16) into iov */
    ISCSI_CMD_WRITE,         /* WRITE(16) from iov, fua */
    ISCSI_CMD_SYNC_CACHE,    /* SYNCHRONIZE CACHE(16), whole LUN */
    ISCSI_CMD_UNMAP,         /* UNMAP one range */
    ISCSI_CMD_WRITE_SAME,    /* WRITE SAME(16) of a zero block, unmap */
    ISCSI_CMD_LBA_STATUS,    /* GET LBA STATUS from lba; keeps the task */
    ISCSI_CMD_INQUIRY,       /* INQUIRY (evpd, page); keeps the task */
    ISCSI_CMD_READCAP16,     /* READ CAPACITY(16); keeps the task */
    ISCSI_CMD_READCAP10,     /* READ CAPACITY(10); keeps the task */
    ISCSI_CMD_MODE_SENSE6,   /* MODE SENSE(6), all pages; keeps the task */
    ISCSI_CMD_REPORT_LUNS,   /* REPORT LUNS; keeps the task */
    ISCSI_CMD_TUR,           /* TEST UNIT READY */
} IscsiCmdOp;

typedef void IscsiCmdDone(IscsiCmd *cmd, int ret);

struct IscsiCmd {
    /* what to do */
    IscsiCmdOp op;
    int lun;
    uint64_t lba;
    uint32_t nblocks;
    uint32_t block_size;
    struct scsi_iovec *iov;  /* READ / WRITE: the caller's buffers */
    int niov;
    bool fua;                /* WRITE */
    bool unmap;              /* WRITE_SAME */
    int evpd, page;          /* INQUIRY */
    uint32_t alloc_len;      /* INQUIRY, LBA_STATUS, MODE_SENSE6 ... */

    /* the answer: 0, or a negative errno with why in msg */
    IscsiCmdDone *done;      /* on the service thread; short */
    void *opaque;
    struct scsi_task *task;  /* commands that keep it: the caller frees
                                it with scsi_free_scsi_task */
    struct scsi_sense sense; /* of a CHECK CONDITION */
    char msg[256];

    /* connection private */
    IscsiCmd *next;
    int64_t deadline_ms;     /* 0: none */
    int attempts;
    struct scsi_task *running;
    bool cancelled;
};

/* Logs in to a->target at a->portal (and checks a->lun when >= 0) and
 * starts the service thread.  Bounded by a->timeout.  Failures are one
 * line: the portal cannot be reached, the login is refused (wrong
 * target, CHAP), the LUN does not exist. */
int iscsi_conn_open(IscsiConn **out, const IscsiAddr *a, Error *err);
/* Waits for every command to finish, logs out and frees. */
void iscsi_conn_close(IscsiConn *c);

/* Queues cmd; cmd->done runs once, on the service thread (or in the
 * caller's, when the connection is closed already). */
void iscsi_conn_submit(IscsiConn *c, IscsiCmd *cmd);
/* Queues cmd and waits for it; returns its result. */
int iscsi_conn_run(IscsiConn *c, IscsiCmd *cmd);

/* ------------------------------------------------------------------ */
/* The driver's node (iscsi.c) and what its LUN is (iscsi-lun.c)       */

/* A transfer never exceeds this, whatever the LUN allows: a command
 * should finish well inside its deadline. */
#define ISCSI_MAX_XFER_BYTES (32u << 20)

/* One iscsi:// node (iscsi.c, iscsi-lun.c). */
typedef struct IscsiState {
    IscsiConn *conn;
    char *display;
    int lun;
    uint32_t bs;             /* logical block size */
    uint64_t nblocks;        /* capacity */
    bool lbpme, lbprz;       /* thin; unmapped blocks read zero */
    bool lbpu, lbpws;        /* UNMAP; WRITE SAME with UNMAP */
    bool wp, dpofua;         /* write-protected; FUA honoured */
    uint32_t max_xfer;       /* blocks per READ / WRITE */
    uint32_t max_unmap;      /* blocks per UNMAP */
    uint32_t max_ws;         /* blocks per WRITE SAME */
    atomic_bool no_ws;       /* the LUN refused WRITE SAME */
    atomic_bool no_unmap;    /* the LUN refused UNMAP */
    uint8_t *zero_block;

    /* Every change to the LUN from here bumps this, when it is sent and
     * when it completes, so a cached GET LBA STATUS answer is used only
     * while nothing was written since it was asked. */
    atomic_uint_fast64_t write_gen;
    pthread_mutex_t status_lock;
    uint64_t status_gen;
    uint32_t status_n;
    struct StatusRun { uint64_t start, end; bool zero; } *status;
} IscsiState;

static inline uint64_t iscsi_capacity(const IscsiState *s)
{
    return s->nblocks * s->bs;
}

/* At open: the LUN is a disk (INQUIRY), its size and block size (READ
 * CAPACITY), limits and provisioning (VPD pages), write protection and
 * FUA (MODE SENSE) go into s.  One line on failure. */
int iscsi_lun_probe(IscsiState *s, Error *err);
/* READ CAPACITY again (a LUN resized on its target). */
int iscsi_lun_read_capacity(IscsiState *s, Error *err);
/* The driver's block_status: GET LBA STATUS on thin LUNs. */
int iscsi_lun_block_status(BlockNode *n, uint64_t off, uint64_t len,
                           uint64_t *pnum, uint64_t *map, BlockNode **file);

/* Maps a finished task's status and sense to a negative errno and a
 * message in cmd->msg. */
int iscsi_cmd_result(IscsiCmd *cmd, int status, struct scsi_task *task,
                     struct iscsi_context *ctx);

/* A one-shot completion a synchronous caller waits on, for commands and
 * requests whose done callback runs on the connection's thread. */
typedef struct IscsiWaiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int ret;
} IscsiWaiter;

static inline void iscsi_waiter_init(IscsiWaiter *w)
{
    w->done = false;
    w->ret = 0;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
}

static inline void iscsi_waiter_post(IscsiWaiter *w, int ret)
{
    pthread_mutex_lock(&w->lock);
    w->ret = ret;
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Waits for the post, then tears the waiter down; the posted value. */
static inline int iscsi_waiter_wait(IscsiWaiter *w)
{
    pthread_mutex_lock(&w->lock);
    while (!w->done) {
        pthread_cond_wait(&w->cond, &w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    return w->ret;
}

#endif
