/*
 * vhost-scsi.c - the virtio-scsi device: request, control and event
 * queues over the SCSI target of scsi.h (see vhost-scsi.h).
 *
 * Invariants:
 *  - a command is on its request queue's in-flight list from the moment
 *    it is handed to the target until its response is written, so task
 *    management sees every command it may have to wait for;
 *  - a TMF completes only after every command it aborted has completed
 *    (virtio: "all requests related to the TMF have been completed"):
 *    it counts them, plus one for its own scan, and the last one to
 *    finish writes its response;
 *  - event buffers are held in the order the driver gave them and used
 *    in that order; events with no buffer wait in a bounded queue, and
 *    when that overflows the next event carries EVENTS_MISSED (the
 *    driver then rescans everything).
 */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/export/vhost-scsi.h"
#include "block/export/vhost-user.h"

#define MAX_PENDING_EVENTS 64
#define MAX_HELD_EVENTS 256

typedef struct Tmf Tmf;
typedef struct ScsiReq ScsiReq;

typedef struct ReqList {
    pthread_mutex_t lock;
    ScsiReq *head;
} ReqList;

struct ScsiReq {
    VhostScsi *s;
    VhostReq *req;
    ReqList *list;
    ScsiReq *prev, *next;
    uint64_t tag;
    unsigned lun;
    bool aborted;
    Tmf *tmf;
    BlockIOV out, in;
    BlockIOVSlice out_data, in_data;
    ScsiTask task;
};

struct Tmf {
    VhostReq *req;
    atomic_int pending;
    uint8_t response;
};

struct VhostScsi {
    char *id;
    int num_queues;
    ScsiTarget target;
    VhostDev *dev;
    ReqList *lists;            /* one per request queue */

    pthread_mutex_t ev_lock;
    VhostReq *held[MAX_HELD_EVENTS];
    unsigned nheld;
    VirtioScsiEvent pending[MAX_PENDING_EVENTS];
    unsigned npending;
    bool missed;
};

/* The private part of a request: a command, a TMF or an event buffer. */
typedef union ScsiPriv {
    ScsiReq cmd;
    Tmf tmf;
} ScsiPriv;

/* ---- LUN addresses ---------------------------------------------------- */

/* Target 0's LUN from virtio's 8 bytes; SCSI_MAX_LUNS when it names a
 * LUN we cannot have; -1 when it names another target. */
static int decode_lun(const uint8_t *l)
{
    if (l[0] != 1 || l[1] != 0) {
        return -1;
    }
    if (l[4] | l[5] | l[6] | l[7]) {
        return SCSI_MAX_LUNS;
    }
    unsigned lun;
    switch (l[2] & 0xc0) {
    case 0x40:
        lun = (unsigned)(l[2] & 0x3f) << 8 | l[3];
        break;
    case 0x00:
        lun = l[2] == 0 ? l[3] : SCSI_MAX_LUNS;
        break;
    default:
        lun = SCSI_MAX_LUNS;
        break;
    }
    return lun < SCSI_MAX_LUNS ? (int)lun : SCSI_MAX_LUNS;
}

static void encode_lun(uint8_t *l, unsigned lun)
{
    memset(l, 0, 8);
    l[0] = 1;
    l[1] = 0;
    if (lun >= 256) {
        l[2] = (uint8_t)(0x40 | (lun >> 8));
    }
    l[3] = (uint8_t)lun;
}

/* ---- Commands --------------------------------------------------------- */

static void tmf_put(Tmf *tmf)
{
    if (atomic_fetch_sub(&tmf->pending, 1) != 1) {
        return;
    }
    VhostReq *req = tmf->req;
    BlockIOV in;
    blockiov_init(&in, req->iov + req->out_num, req->in_num);
    blockiov_from_buf(&in, 0, &tmf->response, 1);
    vhost_req_complete(req, 1);
}

static void cmd_done(ScsiTask *t)
{
    ScsiReq *r = (ScsiReq *)((uint8_t *)t - offsetof(ScsiReq, task));
    VirtioScsiCmdResp resp;
    memset(&resp, 0, sizeof(resp));
    resp.status = t->status;
    resp.response = t->overrun ? VIRTIO_SCSI_S_OVERRUN : VIRTIO_SCSI_S_OK;
    unsigned sl = t->sense_len < VIRTIO_SCSI_SENSE_SIZE ? t->sense_len :
        VIRTIO_SCSI_SENSE_SIZE;
    memcpy(resp.sense, t->sense, sl);
    resp.sense_len = htole32(sl);
    uint64_t room = r->in_data.v.size;
    resp.resid = htole32((uint32_t)(room - (t->data_in < room ?
                                            t->data_in : room)));

    ReqList *list = r->list;
    pthread_mutex_lock(&list->lock);
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        list->head = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    }
    Tmf *tmf = r->tmf;
    if (r->aborted) {
        resp.response = VIRTIO_SCSI_S_ABORTED;
    }
    pthread_mutex_unlock(&list->lock);

    blockiov_from_buf(&r->in, 0, &resp, sizeof(resp));
    blockiov_slice_free(&r->out_data);
    blockiov_slice_free(&r->in_data);
    VhostReq *req = r->req;
    uint32_t written = (uint32_t)sizeof(resp) + t->data_in;
    vhost_req_complete(req, written);
    if (tmf) {
        tmf_put(tmf);
    }
}

static void respond_early(ScsiReq *r, uint8_t response)
{
    VirtioScsiCmdResp resp;
    memset(&resp, 0, sizeof(resp));
    resp.response = response;
    blockiov_from_buf(&r->in, 0, &resp, sizeof(resp));
    vhost_req_complete(r->req, sizeof(resp));
}

static void handle_cmd(VhostScsi *s, int qi, VhostReq *req)
{
    ScsiReq *r = vhost_req_priv(req);
    if (req->out_bytes < sizeof(VirtioScsiCmdReq) ||
        req->in_bytes < sizeof(VirtioScsiCmdResp)) {
        vhost_req_complete(req, 0);   /* no room to answer in */
        return;
    }
    r->s = s;
    r->req = req;
    blockiov_init(&r->out, req->iov, req->out_num);
    blockiov_init(&r->in, req->iov + req->out_num, req->in_num);
    VirtioScsiCmdReq h;
    blockiov_to_buf(&r->out, 0, &h, sizeof(h));
    int lun = decode_lun(h.lun);
    if (lun < 0) {
        respond_early(r, VIRTIO_SCSI_S_BAD_TARGET);
        return;
    }
    if (blockiov_slice(&r->out_data, &r->out, sizeof(h),
                       r->out.size - sizeof(h)) < 0 ||
        blockiov_slice(&r->in_data, &r->in, sizeof(VirtioScsiCmdResp),
                       r->in.size - sizeof(VirtioScsiCmdResp)) < 0) {
        blockiov_slice_free(&r->out_data);
        respond_early(r, VIRTIO_SCSI_S_FAILURE);
        return;
    }
    r->tag = le64toh(h.tag);
    r->lun = (unsigned)lun;
    r->list = &s->lists[qi - VHOST_SCSI_FIRST_REQ_QUEUE];
    pthread_mutex_lock(&r->list->lock);
    r->next = r->list->head;
    if (r->next) {
        r->next->prev = r;
    }
    r->list->head = r;
    pthread_mutex_unlock(&r->list->lock);

    ScsiTask *t = &r->task;
    memcpy(t->cdb, h.cdb, sizeof(t->cdb));
    t->cdb_len = sizeof(t->cdb);
    t->out = &r->out_data.v;
    t->in = &r->in_data.v;
    t->done = cmd_done;
    scsi_task_run(&s->target, (unsigned)lun, t);
}

/* ---- Control queue ---------------------------------------------------- */

/* Marks the commands a TMF covers and makes it wait for them.  Returns
 * how many matched. */
static int tmf_scan(VhostScsi *s, Tmf *tmf, int lun, uint64_t tag,
                    bool one_task, bool abort)
{
    int found = 0;
    for (int i = 0; i < s->num_queues; i++) {
        ReqList *list = &s->lists[i];
        pthread_mutex_lock(&list->lock);
        for (ScsiReq *r = list->head; r; r = r->next) {
            if ((lun >= 0 && r->lun != (unsigned)lun) ||
                (one_task && r->tag != tag)) {
                continue;
            }
            found++;
            if (abort) {
                r->aborted = true;
                if (!r->tmf) {
                    r->tmf = tmf;
                    atomic_fetch_add(&tmf->pending, 1);
                }
            }
        }
        pthread_mutex_unlock(&list->lock);
    }
    return found;
}

static void handle_tmf(VhostScsi *s, VhostReq *req, const BlockIOV *out)
{
    Tmf *tmf = vhost_req_priv(req);
    VirtioScsiCtrlTmfReq h;
    if (out->size < sizeof(h)) {
        vhost_req_complete(req, 0);
        return;
    }
    blockiov_to_buf(out, 0, &h, sizeof(h));
    tmf->req = req;
    atomic_init(&tmf->pending, 1);
    tmf->response = VIRTIO_SCSI_S_FUNCTION_COMPLETE;
    int lun = decode_lun(h.lun);
    uint32_t sub = le32toh(h.subtype);
    if (lun < 0) {
        tmf->response = VIRTIO_SCSI_S_BAD_TARGET;
        tmf_put(tmf);
        return;
    }
    ScsiLun *l = scsi_target_get(&s->target, (unsigned)lun);
    bool present = l != NULL;
    scsi_lun_unref(l);
    if (!present && sub != VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET) {
        tmf->response = VIRTIO_SCSI_S_INCORRECT_LUN;
        tmf_put(tmf);
        return;
    }
    switch (sub) {
    case VIRTIO_SCSI_T_TMF_ABORT_TASK:
        tmf_scan(s, tmf, lun, le64toh(h.tag), true, true);
        break;
    case VIRTIO_SCSI_T_TMF_ABORT_TASK_SET:
    case VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET:
    case VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET:
        tmf_scan(s, tmf, lun, 0, false, true);
        break;
    case VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET:
        tmf_scan(s, tmf, -1, 0, false, true);
        break;
    case VIRTIO_SCSI_T_TMF_QUERY_TASK:
    case VIRTIO_SCSI_T_TMF_QUERY_TASK_SET:
        if (tmf_scan(s, tmf, lun, le64toh(h.tag),
                     sub == VIRTIO_SCSI_T_TMF_QUERY_TASK, false) > 0) {
            tmf->response = VIRTIO_SCSI_S_FUNCTION_SUCCEEDED;
        }
        break;
    default:    /* CLEAR ACA: we have no ACA */
        tmf->response = VIRTIO_SCSI_S_FUNCTION_REJECTED;
        break;
    }
    tmf_put(tmf);
}

static void handle_ctrl(VhostScsi *s, VhostReq *req)
{
    BlockIOV out, in;
    blockiov_init(&out, req->iov, req->out_num);
    blockiov_init(&in, req->iov + req->out_num, req->in_num);
    uint32_t type;
    if (out.size < sizeof(type) || in.size < 1) {
        vhost_req_complete(req, 0);
        return;
    }
    blockiov_to_buf(&out, 0, &type, sizeof(type));
    switch (le32toh(type)) {
    case VIRTIO_SCSI_T_TMF:
        handle_tmf(s, req, &out);
        return;
    case VIRTIO_SCSI_T_AN_QUERY:
    case VIRTIO_SCSI_T_AN_SUBSCRIBE: {
        /* No asynchronous notifications: none are ever sent. */
        VirtioScsiCtrlAnResp resp = { 0, VIRTIO_SCSI_S_OK };
        if (out.size < sizeof(VirtioScsiCtrlAnReq) ||
            in.size < sizeof(resp)) {
            vhost_req_complete(req, 0);
            return;
        }
        blockiov_from_buf(&in, 0, &resp, sizeof(resp));
        vhost_req_complete(req, sizeof(resp));
        return;
    }
    default:
        vhost_req_complete(req, 0);
        return;
    }
}

/* ---- Event queue ------------------------------------------------------ */

static void fill_event(VhostReq *req, const VirtioScsiEvent *ev)
{
    BlockIOV in;
    blockiov_init(&in, req->iov + req->out_num, req->in_num);
    blockiov_from_buf(&in, 0, ev, sizeof(*ev));
    vhost_req_complete(req, sizeof(*ev));
}

/* Under ev_lock: the next event to deliver, or false. */
static bool next_event(VhostScsi *s, VirtioScsiEvent *ev)
{
    if (s->npending == 0) {
        if (!s->missed) {
            return false;
        }
        memset(ev, 0, sizeof(*ev));
    } else {
        *ev = s->pending[0];
        memmove(s->pending, s->pending + 1,
                (s->npending - 1) * sizeof(*ev));
        s->npending--;
    }
    if (s->missed) {
        ev->event |= htole32(VIRTIO_SCSI_T_EVENTS_MISSED);
        s->missed = false;
    }
    return true;
}

static void handle_event_buf(VhostScsi *s, VhostReq *req)
{
    if (req->in_bytes < sizeof(VirtioScsiEvent)) {
        vhost_req_complete(req, 0);
        return;
    }
    VirtioScsiEvent ev;
    pthread_mutex_lock(&s->ev_lock);
    bool deliver = next_event(s, &ev);
    bool hold = !deliver && s->nheld < MAX_HELD_EVENTS;
    if (hold) {
        s->held[s->nheld++] = req;
    }
    pthread_mutex_unlock(&s->ev_lock);
    if (deliver) {
        fill_event(req, &ev);
    } else if (!hold) {
        memset(&ev, 0, sizeof(ev));
        fill_event(req, &ev);
    }
}

static void post_event(VhostScsi *s, uint32_t event, unsigned lun,
                       uint32_t reason)
{
    VirtioScsiEvent ev = { .event = htole32(event),
                           .reason = htole32(reason) };
    encode_lun(ev.lun, lun);
    VhostReq *req = NULL;
    pthread_mutex_lock(&s->ev_lock);
    if (s->npending < MAX_PENDING_EVENTS) {
        s->pending[s->npending++] = ev;
    } else {
        s->missed = true;
    }
    if (s->nheld > 0 && next_event(s, &ev)) {
        req = s->held[0];
        memmove(s->held, s->held + 1, (s->nheld - 1) * sizeof(req));
        s->nheld--;
    }
    pthread_mutex_unlock(&s->ev_lock);
    if (req) {
        fill_event(req, &ev);
    }
}

/* ---- The device ------------------------------------------------------- */

static void scsi_handle(void *opaque, int qi, VhostReq *req)
{
    VhostScsi *s = opaque;
    switch (qi) {
    case VHOST_SCSI_CTRL_QUEUE:
        handle_ctrl(s, req);
        break;
    case VHOST_SCSI_EVENT_QUEUE:
        handle_event_buf(s, req);
        break;
    default:
        handle_cmd(s, qi, req);
        break;
    }
}

static void scsi_stop(void *opaque, int qi)
{
    VhostScsi *s = opaque;
    if (qi != VHOST_SCSI_EVENT_QUEUE) {
        return;
    }
    /* Give the held buffers back empty (NO_EVENT): the ring stops and
     * the back end waits for every request it handed out. */
    pthread_mutex_lock(&s->ev_lock);
    unsigned n = s->nheld;
    VhostReq *held[MAX_HELD_EVENTS];
    memcpy(held, s->held, n * sizeof(held[0]));
    s->nheld = 0;
    pthread_mutex_unlock(&s->ev_lock);
    VirtioScsiEvent ev;
    memset(&ev, 0, sizeof(ev));
    for (unsigned i = 0; i < n; i++) {
        fill_event(held[i], &ev);
    }
}

static const VhostDevOps scsi_ops = {
    .features = (1ull << VIRTIO_SCSI_F_HOTPLUG) |
        (1ull << VIRTIO_SCSI_F_CHANGE),
    .config = false,
    .inflight = false,
    .req_size = sizeof(ScsiPriv),
    .handle = scsi_handle,
    .stop = scsi_stop,
};

int vhost_scsi_new(const char *id, int num_queues, VhostScsi **out,
                   Error *err)
{
    if (num_queues < 1 || num_queues > 62) {
        return error_setf(err, EINVAL, "num-queues %d: 1 to 62 expected",
                          num_queues);
    }
    VhostScsi *s = calloc(1, sizeof(*s));
    if (!s) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    s->id = strdup(id);
    s->num_queues = num_queues;
    s->lists = calloc((size_t)num_queues, sizeof(ReqList));
    scsi_target_init(&s->target);
    pthread_mutex_init(&s->ev_lock, NULL);
    if (s->lists) {
        for (int i = 0; i < num_queues; i++) {
            pthread_mutex_init(&s->lists[i].lock, NULL);
        }
    }
    char name[300];
    snprintf(name, sizeof(name), "vhost-user-scsi export '%s'", id);
    s->dev = vhost_dev_new(name, &scsi_ops, s,
                           VHOST_SCSI_FIRST_REQ_QUEUE + num_queues);
    if (!s->id || !s->lists || !s->dev) {
        vhost_scsi_free(s);
        return error_setf(err, ENOMEM, "out of memory");
    }
    *out = s;
    return 0;
}

int vhost_scsi_listen(VhostScsi *s, const char *path, int fd, Error *err)
{
    return vhost_dev_listen(s->dev, path, fd, err);
}

void vhost_scsi_free(VhostScsi *s)
{
    if (!s) {
        return;
    }
    vhost_dev_free(s->dev);
    scsi_target_destroy(&s->target);
    if (s->lists) {
        for (int i = 0; i < s->num_queues; i++) {
            pthread_mutex_destroy(&s->lists[i].lock);
        }
    }
    pthread_mutex_destroy(&s->ev_lock);
    free(s->lists);
    free(s->id);
    free(s);
}

static bool hotplug(VhostScsi *s)
{
    return vhost_dev_connected(s->dev) &&
        vhost_dev_has_feature(s->dev, VIRTIO_SCSI_F_HOTPLUG);
}

int vhost_scsi_add_lun(VhostScsi *s, unsigned lun, const ScsiLunConf *conf,
                       Error *err)
{
    if (lun >= SCSI_MAX_LUNS) {
        return error_setf(err, ERANGE, "LUN %u: 0 to %d expected", lun,
                          SCSI_MAX_LUNS - 1);
    }
    ScsiLun *l;
    int ret = scsi_lun_new(conf, &l, err);
    if (ret < 0) {
        return ret;
    }
    if (scsi_target_attach(&s->target, lun, l) < 0) {
        scsi_lun_unref(l);
        return error_setf(err, EEXIST, "LUN %u of '%s' is taken", lun,
                          s->id);
    }
    if (hotplug(s)) {
        post_event(s, VIRTIO_SCSI_T_TRANSPORT_RESET, lun,
                   VIRTIO_SCSI_EVT_RESET_RESCAN);
    }
    return 0;
}

int vhost_scsi_remove_lun(VhostScsi *s, unsigned lun, Error *err)
{
    ScsiLun *l = scsi_target_detach(&s->target, lun);
    if (!l) {
        return error_setf(err, ENOENT, "'%s' has no LUN %u", s->id, lun);
    }
    if (hotplug(s)) {
        post_event(s, VIRTIO_SCSI_T_TRANSPORT_RESET, lun,
                   VIRTIO_SCSI_EVT_RESET_REMOVED);
    }
    /* Commands still running hold references; the node must be free
     * when we return (the caller may delete it next). */
    while (atomic_load(&l->refcnt) > 1) {
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
    scsi_lun_unref(l);
    return 0;
}

int vhost_scsi_lun_resized(VhostScsi *s, unsigned lun)
{
    ScsiLun *l = scsi_target_get(&s->target, lun);
    if (!l) {
        return -ENOENT;
    }
    scsi_lun_resized(l);
    scsi_lun_unref(l);
    if (vhost_dev_connected(s->dev) &&
        vhost_dev_has_feature(s->dev, VIRTIO_SCSI_F_CHANGE)) {
        post_event(s, VIRTIO_SCSI_T_PARAM_CHANGE, lun,
                   (ASC_CAPACITY_DATA_CHANGED >> 8) |
                   (ASC_CAPACITY_DATA_CHANGED & 0xff) << 8);
    }
    return 0;
}

bool vhost_scsi_has_lun(VhostScsi *s, unsigned lun)
{
    ScsiLun *l = scsi_target_get(&s->target, lun);
    scsi_lun_unref(l);
    return l != NULL;
}

unsigned vhost_scsi_lun_count(VhostScsi *s)
{
    unsigned n = 0;
    pthread_rwlock_rdlock(&s->target.lock);
    for (unsigned i = 0; i < SCSI_MAX_LUNS; i++) {
        n += s->target.luns[i] != NULL;
    }
    pthread_rwlock_unlock(&s->target.lock);
    return n;
}

struct VhostDev *vhost_scsi_dev(VhostScsi *s)
{
    return s->dev;
}
