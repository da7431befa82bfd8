/*
 * vhost-queue.c - one vhost-user queue: its thread, which waits for kicks
 * and hands chains to the device, and request completion (see
 * vhost-user-int.h for the locking).
 *
 * Invariants:
 *  - the thread runs only while the queue is ready (vq set up), kicked
 *    and enabled; only the control thread starts and joins it;
 *  - in_flight counts requests handed to the device and not completed;
 *    the ring is torn down (vq_fini) and the memory table released only
 *    when it is 0, so a completion always finds its ring and memory;
 *  - every request holds a reference to the memory table its buffers
 *    were translated with.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "block/export/vhost-user-int.h"

#define REQ_HDR ((sizeof(VhostReq) + 15) & ~(size_t)15)

void vhost_queue_init(VhostQueue *q, VhostDev *dev, int index)
{
    memset(q, 0, sizeof(*q));
    q->dev = dev;
    q->index = index;
    q->kick_fd = q->call_fd = q->stop_fd = -1;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->idle, NULL);
}

void vhost_queue_destroy(VhostQueue *q)
{
    vhost_queue_reset(q);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->idle);
}

/* Reports a broken ring once (any thread). */
static void report_broken(VhostQueue *q)
{
    char why[sizeof(q->vq.why)];
    pthread_mutex_lock(&q->lock);
    bool report = q->vq.broken && !q->reported;
    if (report) {
        q->reported = true;
        memcpy(why, q->vq.why, sizeof(why));
    }
    pthread_mutex_unlock(&q->lock);
    if (report) {
        vhost_report(q->dev, "queue %d stopped: %s", q->index, why);
    }
}

static VhostReq *new_req(VhostQueue *q, const VqChain *c)
{
    size_t niov = (size_t)(c->out_num + c->in_num);
    size_t priv = (q->dev->ops->req_size + 15) & ~(size_t)15;
    VhostReq *r = calloc(1, REQ_HDR + priv + niov * sizeof(struct iovec));
    if (!r) {
        return NULL;
    }
    r->q = q;
    r->mem = vhost_mem_ref(q->mem);
    r->head = c->head;
    r->out_num = c->out_num;
    r->in_num = c->in_num;
    r->out_bytes = c->out_bytes;
    r->in_bytes = c->in_bytes;
    r->iov = (struct iovec *)((uint8_t *)r + REQ_HDR + priv);
    memcpy(r->iov, c->iov, niov * sizeof(struct iovec));
    return r;
}

static void signal_call(VhostQueue *q)
{
    if (q->call_fd >= 0) {
        uint64_t one = 1;
        /* Non-blocking: a full counter means an interrupt is pending
         * anyway. */
        ssize_t n = write(q->call_fd, &one, sizeof(one));
        (void)n;
    }
}

void vhost_req_complete(VhostReq *req, uint32_t written)
{
    VhostQueue *q = req->q;
    pthread_mutex_lock(&q->lock);
    if (vq_push(&q->vq, req->head, written)) {
        signal_call(q);
    }
    if (--q->in_flight == 0) {
        pthread_cond_broadcast(&q->idle);
    }
    pthread_mutex_unlock(&q->lock);
    vhost_mem_unref(req->mem);
    free(req);
}

/* Hands one chain to the device; out of memory, the chain goes back
 * unused (0 bytes written), which the driver sees as an error. */
static void dispatch(VhostQueue *q, VqChain *c)
{
    VhostReq *r = new_req(q, c);
    if (!r) {
        pthread_mutex_lock(&q->lock);
        if (vq_push(&q->vq, c->head, 0)) {
            signal_call(q);
        }
        q->in_flight--;
        pthread_mutex_unlock(&q->lock);
        return;
    }
    q->dev->ops->handle(q->dev->opaque, q->index, r);
}

/* Takes everything available, with kicks off while we are looking. */
static void process(VhostQueue *q)
{
    VqChain c = { .iov = q->scratch };
    for (;;) {
        pthread_mutex_lock(&q->lock);
        vq_set_notification(&q->vq, false);
        pthread_mutex_unlock(&q->lock);
        for (;;) {
            pthread_mutex_lock(&q->lock);
            int r = vq_pop(&q->vq, q->mem, &c);
            if (r > 0) {
                q->in_flight++;
            }
            pthread_mutex_unlock(&q->lock);
            if (r <= 0) {
                break;
            }
            dispatch(q, &c);
        }
        pthread_mutex_lock(&q->lock);
        vq_set_notification(&q->vq, true);
        bool more = vq_has_avail(&q->vq);
        bool broken = q->vq.broken;
        pthread_mutex_unlock(&q->lock);
        if (broken) {
            report_broken(q);
            return;
        }
        if (!more) {
            return;
        }
    }
}

/* After a restart with inflight tracking: the requests the last back end
 * took and did not finish, again, in the order it took them. */
static void resubmit_inflight(VhostQueue *q)
{
    uint16_t *heads = malloc(sizeof(uint16_t) * q->vq.num);
    if (!heads) {
        return;
    }
    VqChain c = { .iov = q->scratch };
    pthread_mutex_lock(&q->lock);
    int n = vq_inflight_resume(&q->vq, heads);
    pthread_mutex_unlock(&q->lock);
    if (n > 0) {
        vhost_report(q->dev, "queue %d: resubmitting %d request(s) left "
                     "in flight by the previous connection", q->index, n);
    }
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&q->lock);
        int r = vq_walk(&q->vq, q->mem, heads[i], &c);
        if (r == 0) {
            q->in_flight++;
        }
        pthread_mutex_unlock(&q->lock);
        if (r < 0) {
            break;
        }
        dispatch(q, &c);
    }
    free(heads);
    report_broken(q);
}

static void *queue_main(void *arg)
{
    VhostQueue *q = arg;
    /* Kicks may have been lost while no back end listened: look first. */
    process(q);
    struct pollfd pfd[2] = {
        { .fd = q->kick_fd, .events = POLLIN },
        { .fd = q->stop_fd, .events = POLLIN },
    };
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (pfd[1].revents) {
            break;
        }
        if (pfd[0].revents & (POLLERR | POLLNVAL)) {
            vhost_report(q->dev, "queue %d: kick fd failed", q->index);
            break;
        }
        uint64_t v;
        ssize_t n = read(q->kick_fd, &v, sizeof(v));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            /* Not an eventfd: nothing will ever kick us properly. */
            vhost_report(q->dev, "queue %d: kick fd is not an eventfd",
                         q->index);
            break;
        }
        process(q);     /* does nothing once the ring is broken */
    }
    return NULL;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) {
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
}

static bool start_thread(VhostQueue *q)
{
    q->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->stop_fd < 0) {
        vhost_report(q->dev, "queue %d: eventfd: %s", q->index,
                     strerror(errno));
        return false;
    }
    int ret = pthread_create(&q->thread, NULL, queue_main, q);
    if (ret != 0) {
        vhost_report(q->dev, "queue %d: cannot start its thread: %s",
                     q->index, strerror(ret));
        close(q->stop_fd);
        q->stop_fd = -1;
        return false;
    }
    q->running = true;
    return true;
}

static void stop_thread(VhostQueue *q)
{
    if (!q->running) {
        return;
    }
    uint64_t one = 1;
    ssize_t n = write(q->stop_fd, &one, sizeof(one));
    (void)n;
    pthread_join(q->thread, NULL);
    close(q->stop_fd);
    q->stop_fd = -1;
    q->running = false;
}

void vhost_queue_update(VhostQueue *q)
{
    VhostDev *dev = q->dev;
    if (!q->ready && q->kicked && q->addr_set && q->num) {
        Error err = { 0 };
        pthread_mutex_lock(&dev->lock);
        uint64_t f = dev->features;
        VhostMem *mem = vhost_mem_ref(dev->mem);
        InflightQueue *iq = NULL;
        if (dev->inflight_map && (unsigned)q->index < dev->inflight_nq &&
            dev->inflight_qsize == q->num) {
            iq = (InflightQueue *)((uint8_t *)dev->inflight_map +
                                   (size_t)q->index *
                                   INFLIGHT_QUEUE_BYTES(q->num));
        } else if (dev->inflight_map) {
            vhost_report(dev, "queue %d: the inflight area does not cover "
                         "it; requests in flight are not tracked",
                         q->index);
        }
        pthread_mutex_unlock(&dev->lock);
        pthread_mutex_lock(&q->lock);
        int ret = vq_init(&q->vq, mem, q->num, q->desc_uva, q->avail_uva,
                          q->used_uva, q->base,
                          f & (1ull << VIRTIO_RING_F_EVENT_IDX),
                          f & (1ull << VIRTIO_RING_F_INDIRECT_DESC), &err);
        if (ret == 0 && iq) {
            ret = vq_inflight_attach(&q->vq, iq, &err);
            if (ret < 0) {
                vq_fini(&q->vq);
            }
        }
        if (ret == 0) {
            vhost_mem_unref(q->mem);
            q->mem = mem;
            q->ready = true;
            q->reported = false;
        }
        pthread_mutex_unlock(&q->lock);
        if (ret < 0) {
            vhost_mem_unref(mem);
            vhost_report(dev, "queue %d: %s", q->index, err.msg);
            return;
        }
        if (iq) {
            resubmit_inflight(q);
        }
    }
    if (q->ready && q->kicked && q->enabled && !q->running) {
        if (dev->ops->start) {
            dev->ops->start(dev->opaque, q->index);
        }
        start_thread(q);
    }
}

void vhost_queue_halt(VhostQueue *q)
{
    VhostDev *dev = q->dev;
    stop_thread(q);
    if (q->ready && dev->ops->stop) {
        dev->ops->stop(dev->opaque, q->index);
    }
    pthread_mutex_lock(&q->lock);
    while (q->in_flight > 0) {
        pthread_cond_wait(&q->idle, &q->lock);
    }
    pthread_mutex_unlock(&q->lock);
}

uint16_t vhost_queue_stop(VhostQueue *q)
{
    vhost_queue_halt(q);
    uint16_t base = q->base;
    if (q->ready) {
        base = q->vq.last_avail_idx;
        pthread_mutex_lock(&q->lock);
        vq_fini(&q->vq);
        vhost_mem_unref(q->mem);
        q->mem = NULL;
        q->ready = false;
        pthread_mutex_unlock(&q->lock);
    }
    q->base = base;
    q->kicked = false;
    if (q->kick_fd >= 0) {
        close(q->kick_fd);
        q->kick_fd = -1;
    }
    return base;
}

void vhost_queue_reset(VhostQueue *q)
{
    vhost_queue_stop(q);
    vhost_queue_set_call(q, -1);
    q->num = 0;
    q->base = 0;
    q->addr_set = false;
    q->enabled = false;
}

void vhost_queue_remap(VhostQueue *q, VhostMem *mem)
{
    if (!q->ready) {
        return;
    }
    Error err = { 0 };
    pthread_mutex_lock(&q->lock);
    int ret = vq_remap(&q->vq, mem, q->desc_uva, q->avail_uva, q->used_uva,
                       &err);
    if (ret == 0) {
        vhost_mem_unref(q->mem);
        q->mem = vhost_mem_ref(mem);
    } else {
        /* The rings left guest memory: nothing sane can use them. */
        q->vq.broken = true;
        snprintf(q->vq.why, sizeof(q->vq.why), "%.150s", err.msg);
    }
    pthread_mutex_unlock(&q->lock);
    report_broken(q);
}

void vhost_queue_set_call(VhostQueue *q, int fd)
{
    if (fd >= 0) {
        set_nonblock(fd);
    }
    pthread_mutex_lock(&q->lock);
    int old = q->call_fd;
    q->call_fd = fd;
    pthread_mutex_unlock(&q->lock);
    if (old >= 0) {
        close(old);
    }
}

void vhost_queue_set_kick(VhostQueue *q, int fd)
{
    set_nonblock(fd);
    bool was_running = q->running;
    stop_thread(q);
    if (q->kick_fd >= 0) {
        close(q->kick_fd);
    }
    q->kick_fd = fd;
    q->kicked = true;
    if (was_running) {
        start_thread(q);
    } else {
        vhost_queue_update(q);
    }
}
