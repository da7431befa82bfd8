/*
 * iscsi-conn.c - one iSCSI session on libiscsi's asynchronous interface,
 * served by a thread of its own.
 *
 * A libiscsi context is not thread-safe, so exactly one thread (the
 * service thread) uses it: it takes commands from the connection's queue,
 * turns them into SCSI tasks, polls the socket, and completes each
 * command from libiscsi's callback.  Any thread may queue commands; many
 * are in flight at once (as many as the target's command window lets
 * libiscsi send), and a caller that wants to wait does so on its own
 * condition variable, never on the context.
 *
 * Faults.  When the TCP connection drops, libiscsi logs in again by
 * itself and sends the commands that were in flight once more (their
 * buffers are still ours, so that is safe: a read fills them again, a
 * write writes the same bytes again).  A command the target answers with
 * UNIT ATTENTION (a reset, a reconnect, a changed LUN) or BUSY / TASK SET
 * FULL is sent again too.  Every command has a deadline (the address's
 * timeout, counted from when it was queued, reconnects included); a
 * command past it is cancelled and fails.  If the session is down at
 * that moment the connection is given up: every later command fails at
 * once with the same one-line reason instead of waiting out its own
 * deadline.
 *
 * Invariants:
 *  - the context is used only by the service thread once it runs (before
 *    that, by the opening thread, and after it ends, by the closing one);
 *  - each issued task has a Slot; a Slot outlives its command when the
 *    command had to be abandoned (libiscsi could not cancel it), so a late
 *    callback never touches a command that was completed already;
 *  - a command completes exactly once.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "block/protocol/iscsi-int.h"

/* Commands answered "try again" (UNIT ATTENTION, BUSY) are sent again at
 * most this often before the answer counts as an error. */
#define MAX_ATTEMPTS 16
#define POLL_MS 100
#define BUSY_DELAY_MS 20

typedef struct Slot {
    IscsiConn *conn;
    IscsiCmd *cmd;           /* NULL once abandoned */
    struct scsi_task *task;
    struct Slot *prev, *next;
} Slot;

struct IscsiConn {
    struct iscsi_context *ctx;
    char *display;
    char *portal;
    char *target;
    unsigned timeout;        /* seconds; 0: none */
    int wake_fd;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t lock;    /* queue, closing, dead, dead_msg */
    IscsiCmd *head, *tail;
    bool closing;
    int dead;                /* < 0: given up, the errno every command gets */
    char dead_msg[200];

    /* service thread only */
    Slot *slots;             /* issued tasks */
    IscsiCmd *delayed;       /* to be sent again after not_before */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wake(IscsiConn *c)
{
    uint64_t one = 1;
    if (write(c->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the thread is awake anyway */
    }
}

static void finish(IscsiCmd *cmd, int ret)
{
    cmd->done(cmd, ret);
}

/* ------------------------------------------------------------------ */
/* Results                                                             */

static const char *sense_text(const struct scsi_sense *s)
{
    switch (s->ascq) {
    case SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE:
        return "the block is past the end of the LUN";
    case SCSI_SENSE_ASCQ_LOGICAL_UNIT_NOT_SUPPORTED:
        return "the LUN does not exist (any more)";
    case SCSI_SENSE_ASCQ_WRITE_PROTECTED:
    case SCSI_SENSE_ASCQ_HARDWARE_WRITE_PROTECTED:
    case SCSI_SENSE_ASCQ_SOFTWARE_WRITE_PROTECTED:
        return "the LUN is write-protected";
    case SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE:
        return "the LUN does not support the command";
    case SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB:
        return "the LUN refused a field of the command";
    case SCSI_SENSE_ASCQ_MEDIUM_NOT_PRESENT:
        return "no medium";
    }
    return NULL;
}

int iscsi_cmd_result(IscsiCmd *cmd, int status, struct scsi_task *task,
                     struct iscsi_context *ctx)
{
    if (status == SCSI_STATUS_GOOD) {
        return 0;
    }
    if (status == SCSI_STATUS_CHECK_CONDITION && task) {
        const struct scsi_sense *s = &task->sense;
        cmd->sense = *s;
        const char *why = sense_text(s);
        if (why) {
            snprintf(cmd->msg, sizeof(cmd->msg), "%s", why);
        } else {
            snprintf(cmd->msg, sizeof(cmd->msg), "SCSI sense %s, "
                     "ASC/ASCQ 0x%04x", scsi_sense_key_str(s->key),
                     (unsigned)s->ascq);
        }
        switch (s->key) {
        case SCSI_SENSE_ILLEGAL_REQUEST:
            if (s->ascq == SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE) {
                return -ENOSPC;
            }
            if (s->ascq == SCSI_SENSE_ASCQ_LOGICAL_UNIT_NOT_SUPPORTED) {
                return -ENODEV;
            }
            if (s->ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE ||
                s->ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB) {
                return -ENOTSUP;
            }
            return -EINVAL;
        case SCSI_SENSE_DATA_PROTECTION:
            return -EACCES;
        case SCSI_SENSE_NOT_READY:
            return s->ascq >> 8 == 0x3a ? -ENOMEDIUM : -EBUSY;
        case SCSI_SENSE_MEDIUM_ERROR:
        case SCSI_SENSE_HARDWARE_ERROR:
        default:
            return -EIO;
        }
    }
    switch (status) {
    case SCSI_STATUS_RESERVATION_CONFLICT:
        snprintf(cmd->msg, sizeof(cmd->msg), "reservation conflict: "
                 "another initiator has reserved the LUN");
        return -EBUSY;
    case SCSI_STATUS_CANCELLED:
        if (!cmd->msg[0]) {
            snprintf(cmd->msg, sizeof(cmd->msg), "command cancelled");
        }
        return -ECANCELED;
    case SCSI_STATUS_TIMEOUT:
        snprintf(cmd->msg, sizeof(cmd->msg), "command timed out");
        return -ETIMEDOUT;
    default:
        snprintf(cmd->msg, sizeof(cmd->msg), "%s",
                 ctx && iscsi_get_error(ctx) ? iscsi_get_error(ctx)
                                             : "iSCSI error");
        return -EIO;
    }
}

/* ------------------------------------------------------------------ */
/* The service thread                                                  */

static void slot_unlink(IscsiConn *c, Slot *s)
{
    if (s->prev) {
        s->prev->next = s->next;
    } else {
        c->slots = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
}

/* Sent again by the service loop after BUSY_DELAY_MS; its deadline
 * still counts from when it was first queued. */
static void delay(IscsiConn *c, IscsiCmd *cmd)
{
    cmd->attempts++;
    cmd->next = c->delayed;
    c->delayed = cmd;
}

static bool retryable(int status, struct scsi_task *task)
{
    if (status == SCSI_STATUS_BUSY || status == SCSI_STATUS_TASK_SET_FULL) {
        return true;
    }
    return status == SCSI_STATUS_CHECK_CONDITION && task &&
           task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
}

static bool keeps_task(IscsiCmdOp op)
{
    switch (op) {
    case ISCSI_CMD_LBA_STATUS:
    case ISCSI_CMD_INQUIRY:
    case ISCSI_CMD_READCAP16:
    case ISCSI_CMD_READCAP10:
    case ISCSI_CMD_MODE_SENSE6:
    case ISCSI_CMD_REPORT_LUNS:
        return true;
    default:
        return false;
    }
}

static void task_cb(struct iscsi_context *ctx, int status, void *data,
                    void *opaque)
{
    Slot *s = opaque;
    IscsiConn *c = s->conn;
    IscsiCmd *cmd = s->cmd;
    struct scsi_task *task = s->task;
    (void)data;
    slot_unlink(c, s);
    free(s);
    if (!cmd) {
        /* abandoned: its caller has been answered already */
        scsi_free_scsi_task(task);
        return;
    }
    cmd->running = NULL;
    if (!cmd->cancelled && retryable(status, task) &&
        cmd->attempts + 1 < MAX_ATTEMPTS) {
        scsi_free_scsi_task(task);
        delay(c, cmd);
        return;
    }
    int ret = cmd->cancelled ? (c->dead ? c->dead : -ETIMEDOUT)
                             : iscsi_cmd_result(cmd, status, task, ctx);
    if (ret == 0 && keeps_task(cmd->op)) {
        cmd->task = task;
    } else {
        scsi_free_scsi_task(task);
    }
    finish(cmd, ret);
}

static struct scsi_task *make_task(IscsiConn *c, IscsiCmd *cmd, Slot *s)
{
    struct iscsi_context *x = c->ctx;
    uint32_t bytes = cmd->nblocks * cmd->block_size;
    switch (cmd->op) {
    case ISCSI_CMD_READ:
        return iscsi_read16_iov_task(x, cmd->lun, cmd->lba, bytes,
                                     (int)cmd->block_size, 0, 0, 0, 0, 0,
                                     task_cb, s, cmd->iov, cmd->niov);
    case ISCSI_CMD_WRITE:
        return iscsi_write16_iov_task(x, cmd->lun, cmd->lba, NULL, bytes,
                                      (int)cmd->block_size, 0, 0,
                                      cmd->fua, 0, 0, task_cb, s, cmd->iov,
                                      cmd->niov);
    case ISCSI_CMD_SYNC_CACHE:
        return iscsi_synchronizecache16_task(x, cmd->lun, 0, 0, 0, 0,
                                             task_cb, s);
    case ISCSI_CMD_UNMAP: {
        struct unmap_list l = { .lba = cmd->lba, .num = cmd->nblocks };
        return iscsi_unmap_task(x, cmd->lun, 0, 0, &l, 1, task_cb, s);
    }
    case ISCSI_CMD_WRITE_SAME:
        /* one block of zeroes from the caller's iov */
        return iscsi_writesame16_task(x, cmd->lun, cmd->lba,
                                      cmd->iov[0].iov_base,
                                      cmd->block_size, cmd->nblocks, 0,
                                      cmd->unmap, 0, 0, task_cb, s);
    case ISCSI_CMD_LBA_STATUS:
        return iscsi_get_lba_status_task(x, cmd->lun, cmd->lba,
                                         cmd->alloc_len, task_cb, s);
    case ISCSI_CMD_INQUIRY:
        return iscsi_inquiry_task(x, cmd->lun, cmd->evpd, cmd->page,
                                  (int)cmd->alloc_len, task_cb, s);
    case ISCSI_CMD_READCAP16:
        return iscsi_readcapacity16_task(x, cmd->lun, task_cb, s);
    case ISCSI_CMD_READCAP10:
        return iscsi_readcapacity10_task(x, cmd->lun, 0, 0, task_cb, s);
    case ISCSI_CMD_MODE_SENSE6:
        return iscsi_modesense6_task(x, cmd->lun, 0,
                                     SCSI_MODESENSE_PC_CURRENT,
                                     SCSI_MODEPAGE_RETURN_ALL_PAGES, 0,
                                     (unsigned char)cmd->alloc_len,
                                     task_cb, s);
    case ISCSI_CMD_REPORT_LUNS:
        return iscsi_reportluns_task(x, 0, (int)cmd->alloc_len, task_cb, s);
    case ISCSI_CMD_TUR:
        return iscsi_testunitready_task(x, cmd->lun, task_cb, s);
    }
    return NULL;
}

static void issue(IscsiConn *c, IscsiCmd *cmd)
{
    if (c->dead) {
        snprintf(cmd->msg, sizeof(cmd->msg), "%s", c->dead_msg);
        finish(cmd, c->dead);
        return;
    }
    Slot *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(cmd->msg, sizeof(cmd->msg), "out of memory");
        finish(cmd, -ENOMEM);
        return;
    }
    s->conn = c;
    s->cmd = cmd;
    /* the callback needs the slot before the task exists */
    s->next = c->slots;
    if (c->slots) {
        c->slots->prev = s;
    }
    c->slots = s;
    struct scsi_task *t = make_task(c, cmd, s);
    if (!t) {
        slot_unlink(c, s);
        free(s);
        snprintf(cmd->msg, sizeof(cmd->msg), "cannot queue the command: %s",
                 iscsi_get_error(c->ctx));
        finish(cmd, -EIO);
        return;
    }
    s->task = t;
    cmd->running = t;
}

/* The session is down and a command's time is up: give the connection
 * up so that nothing else waits for it. */
static void give_up(IscsiConn *c)
{
    pthread_mutex_lock(&c->lock);
    if (!c->dead) {
        c->dead = -ENOTCONN;
        snprintf(c->dead_msg, sizeof(c->dead_msg), "lost the connection to "
                 "iSCSI target %s at %s and could not log in again within "
                 "%u s", c->target, c->portal, c->timeout);
    }
    pthread_mutex_unlock(&c->lock);
}

/* Ends cmd (issued in slot s) with ret now. */
static void cancel_slot(IscsiConn *c, Slot *s, int ret)
{
    IscsiCmd *cmd = s->cmd;
    cmd->cancelled = true;
    /* Cancelling calls task_cb at once, which frees s and finishes cmd
     * with -ETIMEDOUT ... */
    if (iscsi_scsi_cancel_task(c->ctx, s->task) < 0 && s->cmd) {
        /* ... unless libiscsi cannot find the task (in the middle of a
         * reconnect): answer the caller now and drop the task when it
         * comes back. */
        s->cmd = NULL;
        cmd->running = NULL;
        finish(cmd, ret);
    }
}

static void expire(IscsiConn *c, int64_t now)
{
    bool expired = false;
    for (Slot *s = c->slots; s && !expired; s = s->next) {
        expired = s->cmd && s->cmd->deadline_ms &&
                  now >= s->cmd->deadline_ms;
    }
    for (IscsiCmd *d = c->delayed; d && !expired; d = d->next) {
        expired = d->deadline_ms && now >= d->deadline_ms;
    }
    if (!expired) {
        return;
    }
    if (!iscsi_is_logged_in(c->ctx)) {
        give_up(c);
    }
    for (Slot *s = c->slots, *next; s; s = next) {
        next = s->next;     /* cancel_slot frees s */
        IscsiCmd *cmd = s->cmd;
        if (!cmd || (!c->dead && (!cmd->deadline_ms ||
                                  now < cmd->deadline_ms))) {
            continue;
        }
        if (c->dead) {
            snprintf(cmd->msg, sizeof(cmd->msg), "%s", c->dead_msg);
        } else {
            snprintf(cmd->msg, sizeof(cmd->msg), "no answer from iSCSI "
                     "target %s within %u s", c->target, c->timeout);
        }
        cancel_slot(c, s, c->dead ? c->dead : -ETIMEDOUT);
    }
    for (IscsiCmd **p = &c->delayed; *p;) {
        IscsiCmd *cmd = *p;
        if (c->dead || (cmd->deadline_ms && now >= cmd->deadline_ms)) {
            *p = cmd->next;
            if (c->dead) {
                snprintf(cmd->msg, sizeof(cmd->msg), "%s", c->dead_msg);
            } else {
                snprintf(cmd->msg, sizeof(cmd->msg), "iSCSI target %s kept "
                         "the command busy for %u s", c->target, c->timeout);
            }
            finish(cmd, c->dead ? c->dead : -ETIMEDOUT);
        } else {
            p = &cmd->next;
        }
    }
}

/* Commands still waiting for an answer (abandoned tasks do not count:
 * nobody waits for them, and the context's end frees them). */
static bool busy(IscsiConn *c)
{
    if (c->delayed) {
        return true;
    }
    for (Slot *s = c->slots; s; s = s->next) {
        if (s->cmd) {
            return true;
        }
    }
    return false;
}

static void *service_main(void *arg)
{
    IscsiConn *c = arg;
    int64_t last_delayed = now_ms();
    for (;;) {
        pthread_mutex_lock(&c->lock);
        IscsiCmd *batch = c->head;
        c->head = c->tail = NULL;
        bool closing = c->closing;
        pthread_mutex_unlock(&c->lock);
        while (batch) {
            IscsiCmd *cmd = batch;
            batch = cmd->next;
            issue(c, cmd);
        }
        int64_t now = now_ms();
        if (c->delayed && now - last_delayed >= BUSY_DELAY_MS) {
            IscsiCmd *d = c->delayed;
            c->delayed = NULL;
            last_delayed = now;
            while (d) {
                IscsiCmd *cmd = d;
                d = cmd->next;
                issue(c, cmd);
            }
        }
        if (closing && !busy(c)) {
            break;
        }
        int ev = iscsi_which_events(c->ctx);
        struct pollfd pfd[2] = {
            { .fd = c->wake_fd, .events = POLLIN },
            { .fd = iscsi_get_fd(c->ctx), .events = (short)ev },
        };
        int nfds = ev && pfd[1].fd >= 0 ? 2 : 1;
        int wait = c->delayed ? BUSY_DELAY_MS : POLL_MS;
        int r = poll(pfd, (nfds_t)nfds, wait);
        if (r > 0 && (pfd[0].revents & POLLIN)) {
            uint64_t v;
            if (read(c->wake_fd, &v, sizeof(v)) < 0) {
                /* nothing to read: another wake-up raced us */
            }
        }
        if (nfds == 2 && pfd[1].revents) {
            /* A failure here starts libiscsi's own reconnect; the
             * commands in flight are sent again once it logs in, or
             * expire below. */
            (void)iscsi_service(c->ctx, pfd[1].revents);
        } else if (r == 0) {
            /* libiscsi's timers (reconnect back-off) run from here */
            (void)iscsi_service(c->ctx, 0);
        }
        expire(c, now_ms());
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Submission                                                          */

void iscsi_conn_submit(IscsiConn *c, IscsiCmd *cmd)
{
    cmd->next = NULL;
    cmd->task = NULL;
    cmd->running = NULL;
    cmd->cancelled = false;
    cmd->attempts = 0;
    cmd->msg[0] = 0;
    cmd->deadline_ms = c->timeout ? now_ms() + (int64_t)c->timeout * 1000
                                  : 0;
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        int dead = c->dead;
        snprintf(cmd->msg, sizeof(cmd->msg), "%s", c->dead_msg);
        pthread_mutex_unlock(&c->lock);
        finish(cmd, dead);
        return;
    }
    bool was_empty = !c->head;
    if (c->tail) {
        c->tail->next = cmd;
    } else {
        c->head = cmd;
    }
    c->tail = cmd;
    pthread_mutex_unlock(&c->lock);
    /* One wake-up per batch: the service thread takes the whole queue at
     * once, and looks at it again before it polls (which is also why a
     * command queued from a completion on that thread needs none). */
    if (was_empty && !pthread_equal(pthread_self(), c->thread)) {
        wake(c);
    }
}

static void waiter_done(IscsiCmd *cmd, int ret)
{
    iscsi_waiter_post(cmd->opaque, ret);
}

int iscsi_conn_run(IscsiConn *c, IscsiCmd *cmd)
{
    IscsiWaiter w;
    iscsi_waiter_init(&w);
    cmd->done = waiter_done;
    cmd->opaque = &w;
    iscsi_conn_submit(c, cmd);
    return iscsi_waiter_wait(&w);
}

/* ------------------------------------------------------------------ */
/* Opening and closing                                                 */

typedef struct ConnectState {
    bool done;
    int status;
} ConnectState;

static void connect_cb(struct iscsi_context *ctx, int status, void *data,
                       void *opaque)
{
    ConnectState *st = opaque;
    (void)ctx;
    (void)data;
    /* The callback runs again when an established session drops later;
     * only the first answer is the login's. */
    if (!st->done) {
        st->done = true;
        st->status = status;
    }
}

/* Why a TCP connection to portal fails (for the message only). */
static int probe_portal(const char *portal, unsigned timeout_s)
{
    char host[300];
    const char *port = "3260";
    snprintf(host, sizeof(host), "%s", portal);
    char *colon = strrchr(host, ':');
    if (colon && (host[0] != '[' || colon > strchr(host, ']'))) {
        *colon = 0;
        port = colon + 1 - host + portal;
    }
    char *h = host;
    if (h[0] == '[') {
        h++;
        char *rb = strchr(h, ']');
        if (rb) {
            *rb = 0;
        }
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
    int gai = getaddrinfo(h, port, &hints, &res);
    if (gai) {
        return gai == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
    }
    int ret = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
                        SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            ret = -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            ret = 0;
        } else if (errno == EINPROGRESS) {
            struct pollfd p = { .fd = fd, .events = POLLOUT };
            int r = poll(&p, 1, (int)(timeout_s ? timeout_s : 5) * 1000);
            int e = 0;
            socklen_t el = sizeof(e);
            if (r == 0) {
                ret = -ETIMEDOUT;
            } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0) {
                ret = -e;
            }
        } else {
            ret = -errno;
        }
        close(fd);
        if (ret == 0) {
            break;
        }
    }
    freeaddrinfo(res);
    return ret;
}

/* Logs in, serving the context from this thread (the service thread is
 * not running yet). */
static int login(IscsiConn *c, const IscsiAddr *a, Error *err)
{
    ConnectState st = { false, 0 };
    if (iscsi_full_connect_async(c->ctx, a->portal, a->lun < 0 ? 0 : a->lun,
                                 connect_cb, &st) < 0) {
        return error_setf(err, EIO, "cannot connect to iSCSI portal %s: %s",
                          a->portal, iscsi_get_error(c->ctx));
    }
    int64_t deadline = a->timeout ? now_ms() + (int64_t)a->timeout * 1000
                                  : 0;
    while (!st.done) {
        int ev = iscsi_which_events(c->ctx);
        struct pollfd p = { .fd = iscsi_get_fd(c->ctx), .events = (short)ev };
        int r = ev && p.fd >= 0 ? poll(&p, 1, POLL_MS) : (usleep(POLL_MS *
                                                                 1000), 0);
        if (iscsi_service(c->ctx, r > 0 ? p.revents : 0) < 0 && !st.done) {
            st.done = true;
            st.status = SCSI_STATUS_ERROR;
        }
        if (!st.done && deadline && now_ms() > deadline) {
            return error_setf(err, ETIMEDOUT, "no answer from iSCSI portal "
                              "%s within %u s", a->portal, a->timeout);
        }
    }
    if (st.status == SCSI_STATUS_GOOD) {
        return 0;
    }
    const char *why = iscsi_get_error(c->ctx);
    why = why ? why : "";
    if (strstr(why, "Authentication failure")) {
        return error_setf(err, EACCES, "iSCSI login to %s at %s refused: "
                          "authentication failure (%s)", a->target,
                          a->portal, a->user ? "wrong CHAP user or password"
                          : "the target wants CHAP: give user= and "
                            "password-secret=");
    }
    if (strstr(why, "Target not found")) {
        return error_setf(err, ENOENT, "iSCSI target %s not found at %s",
                          a->target, a->portal);
    }
    if (strstr(why, "Failed to log in")) {
        const char *st_txt = strstr(why, "Status: ");
        return error_setf(err, EACCES, "iSCSI login to %s at %s refused: %s",
                          a->target, a->portal,
                          st_txt ? st_txt + 8 : why);
    }
    if (strstr(why, "LOGICAL_UNIT_NOT_SUPPORTED")) {
        return error_setf(err, ENOENT, "iSCSI target %s has no LUN %d",
                          a->target, a->lun);
    }
    if (strstr(why, "SENSE KEY")) {
        return error_setf(err, EIO, "iSCSI LUN %d of %s is not usable: %s",
                          a->lun, a->target, why);
    }
    int perr = probe_portal(a->portal, a->timeout);
    if (perr < 0) {
        return error_setf(err, -perr, "cannot connect to iSCSI portal %s: "
                          "%s", a->portal, strerror(-perr));
    }
    return error_setf(err, EIO, "cannot log in to iSCSI target %s at %s%s%s",
                      a->target, a->portal, *why ? ": " : "", why);
}

static void conn_free(IscsiConn *c)
{
    if (c->ctx) {
        iscsi_destroy_context(c->ctx);
    }
    /* Slots of tasks libiscsi never called back (abandoned, then the
     * context went away). */
    while (c->slots) {
        Slot *s = c->slots;
        c->slots = s->next;
        free(s);
    }
    if (c->wake_fd >= 0) {
        close(c->wake_fd);
    }
    pthread_mutex_destroy(&c->lock);
    free(c->display);
    free(c->portal);
    free(c->target);
    free(c);
}

int iscsi_conn_open(IscsiConn **out, const IscsiAddr *a, Error *err)
{
    int ret;
    IscsiConn *c = calloc(1, sizeof(*c));
    if (!c) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    pthread_mutex_init(&c->lock, NULL);
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->display = iscsi_addr_display(a);
    c->portal = strdup(a->portal);
    c->target = strdup(a->target ? a->target : "");
    c->timeout = a->timeout;
    if (c->wake_fd < 0 || !c->display || !c->portal || !c->target) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto fail;
    }
    c->ctx = iscsi_create_context(a->initiator_name);
    if (!c->ctx) {
        ret = error_setf(err, ENOMEM, "cannot create an iSCSI context");
        goto fail;
    }
    if (iscsi_set_targetname(c->ctx, a->target) < 0 ||
        iscsi_set_session_type(c->ctx, ISCSI_SESSION_NORMAL) < 0 ||
        iscsi_set_header_digest(c->ctx, a->header_digest) < 0 ||
        (a->user && iscsi_set_initiator_username_pwd(c->ctx, a->user,
                                                     a->password) < 0)) {
        ret = error_setf(err, EINVAL, "iSCSI: %s", iscsi_get_error(c->ctx));
        goto fail;
    }
    /* A UNIT ATTENTION queued by a reconnect is consumed by libiscsi
     * with TEST UNIT READY instead of failing our first command. */
    iscsi_set_no_ua_on_reconnect(c->ctx, 1);
    ret = login(c, a, err);
    if (ret < 0) {
        goto fail;
    }
    if (pthread_create(&c->thread, NULL, service_main, c) != 0) {
        ret = error_setf(err, EAGAIN, "cannot start the iSCSI thread");
        goto fail;
    }
    c->thread_started = true;
    *out = c;
    return 0;
fail:
    conn_free(c);
    return ret;
}

void iscsi_conn_close(IscsiConn *c)
{
    if (!c) {
        return;
    }
    pthread_mutex_lock(&c->lock);
    c->closing = true;
    pthread_mutex_unlock(&c->lock);
    wake(c);
    if (c->thread_started) {
        pthread_join(c->thread, NULL);
    }
    /* Commands queued after the thread saw closing (none should be: the
     * node is closed by its last user) still get an answer. */
    while (c->head) {
        IscsiCmd *cmd = c->head;
        c->head = cmd->next;
        snprintf(cmd->msg, sizeof(cmd->msg), "the connection is closed");
        finish(cmd, -ESHUTDOWN);
    }
    if (!c->dead && iscsi_is_logged_in(c->ctx)) {
        /* A polite logout, but never a long wait for it. */
        iscsi_set_timeout(c->ctx, 2);
        (void)iscsi_logout_sync(c->ctx);
    }
    conn_free(c);
}
