/*
 * vhost-user.c - the vhost-user back end's messages: feature
 * negotiation, the memory table, ring setup, eventfds, the config space,
 * the inflight area and the back-end channel, each message handled and
 * answered (see vhost-user.h; locking in vhost-user-int.h; the socket
 * and the control thread are vhost-socket.c's).
 *
 * Invariants:
 *  - every fd a message brings is either taken over by its handler or
 *    closed before the next message is read;
 *  - a message whose header or payload size is wrong for its type ends
 *    the connection (there is no way to find the next message); a
 *    message that is well formed but asks for something we refuse (a bad
 *    memory table, a queue index out of range, an unknown request) fails
 *    alone: a NACK when the front end asked for one, a report always;
 *  - payloads are read into a fixed buffer: a front end cannot make us
 *    allocate.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/driver.h"   /* block_report: the library's one report sink */
#include "block/export/vhost-user-int.h"

/* A failure that ends the connection, as opposed to one that fails only
 * the message (any other negative errno). */
#define PROTO_ERROR (-EPROTO)

typedef struct Reply {
    VhostUserHeader hdr;
    uint8_t payload[VHOST_USER_MAX_PAYLOAD];
    int fd;
    bool has;
} Reply;

void vhost_report(VhostDev *dev, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    block_report(BLOCK_REPORT_WARNING, "%s: %s", dev->name, msg);
}

static uint64_t offered_features(VhostDev *dev)
{
    return dev->ops->features | (1ull << VIRTIO_F_VERSION_1) |
        (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
        (1ull << VIRTIO_RING_F_EVENT_IDX) |
        (1ull << VHOST_USER_F_PROTOCOL_FEATURES);
}

static uint64_t offered_protocol(VhostDev *dev)
{
    uint64_t p = (1ull << VHOST_USER_PROTOCOL_F_MQ) |
        (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
        (1ull << VHOST_USER_PROTOCOL_F_BACKEND_REQ) |
        (1ull << VHOST_USER_PROTOCOL_F_RESET_DEVICE);
    if (dev->ops->config) {
        p |= 1ull << VHOST_USER_PROTOCOL_F_CONFIG;
    }
    if (dev->ops->inflight) {
        p |= 1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD;
    }
    return p;
}

VhostDev *vhost_dev_new(const char *name, const VhostDevOps *ops,
                        void *opaque, int max_queues)
{
    if (max_queues < 1 || max_queues > 64) {
        return NULL;
    }
    VhostDev *dev = calloc(1, sizeof(*dev));
    if (!dev) {
        return NULL;
    }
    dev->queues = calloc((size_t)max_queues, sizeof(VhostQueue));
    dev->name = strdup(name);
    if (!dev->queues || !dev->name) {
        free(dev->queues);
        free(dev->name);
        free(dev);
        return NULL;
    }
    dev->ops = ops;
    dev->opaque = opaque;
    dev->max_queues = max_queues;
    dev->backend_fd = dev->listen_fd = dev->conn_fd = dev->wake_fd = -1;
    pthread_mutex_init(&dev->lock, NULL);
    for (int i = 0; i < max_queues; i++) {
        vhost_queue_init(&dev->queues[i], dev, i);
    }
    return dev;
}

uint64_t vhost_dev_features(VhostDev *dev)
{
    pthread_mutex_lock(&dev->lock);
    uint64_t f = dev->features;
    pthread_mutex_unlock(&dev->lock);
    return f;
}

bool vhost_dev_has_feature(VhostDev *dev, unsigned bit)
{
    return vhost_dev_features(dev) & (1ull << bit);
}

bool vhost_dev_connected(VhostDev *dev)
{
    pthread_mutex_lock(&dev->lock);
    bool c = dev->connected;
    pthread_mutex_unlock(&dev->lock);
    return c;
}

static bool has_protocol(VhostDev *dev, unsigned bit)
{
    return dev->protocol_features & (1ull << bit);
}

/* ---- Message handlers ---------------------------------------------- */

static void reply_u64(Reply *r, uint64_t v)
{
    memcpy(r->payload, &v, sizeof(v));
    r->hdr.size = sizeof(v);
    r->has = true;
}

static VhostQueue *queue_at(VhostDev *dev, uint32_t index, const char *what)
{
    if (index >= (uint32_t)dev->max_queues) {
        vhost_report(dev, "%s for queue %u (the device has %d)", what,
                     index, dev->max_queues);
        return NULL;
    }
    return &dev->queues[index];
}

static void drop_inflight(VhostDev *dev)
{
    if (dev->inflight_map) {
        munmap(dev->inflight_map, dev->inflight_len);
        dev->inflight_map = NULL;
        dev->inflight_len = 0;
    }
}

static void reset_queues(VhostDev *dev)
{
    for (int i = 0; i < dev->max_queues; i++) {
        vhost_queue_reset(&dev->queues[i]);
    }
}

static int set_mem_table(VhostDev *dev, const uint8_t *p, uint32_t size,
                         int *fds, int nfds)
{
    VhostUserMemory m;
    if (size < 8) {
        return PROTO_ERROR;
    }
    memset(&m, 0, sizeof(m));
    memcpy(&m, p, size < sizeof(m) ? size : sizeof(m));
    if (m.nregions > VHOST_USER_MAX_REGIONS ||
        size < 8 + m.nregions * sizeof(VhostUserMemRegion)) {
        vhost_report(dev, "memory table of %u regions in %u bytes",
                     m.nregions, size);
        return -EINVAL;
    }
    if ((uint32_t)nfds != m.nregions) {
        vhost_report(dev, "memory table of %u regions came with %d fds",
                     m.nregions, nfds);
        return -EINVAL;
    }
    VhostMem *mem;
    Error err = { 0 };
    int ret = vhost_mem_map(m.regions, (int)m.nregions, fds, &mem, &err);
    /* The mappings keep what they need. */
    for (int i = 0; i < nfds; i++) {
        close(fds[i]);
        fds[i] = -1;
    }
    if (ret < 0) {
        vhost_report(dev, "%s", err.msg);
        return ret;
    }
    pthread_mutex_lock(&dev->lock);
    VhostMem *old = dev->mem;
    dev->mem = mem;
    pthread_mutex_unlock(&dev->lock);
    for (int i = 0; i < dev->max_queues; i++) {
        vhost_queue_remap(&dev->queues[i], mem);
    }
    vhost_mem_unref(old);
    for (int i = 0; i < dev->max_queues; i++) {
        vhost_queue_update(&dev->queues[i]);
    }
    return 0;
}

static int set_vring_fd(VhostDev *dev, uint32_t request, uint64_t v,
                        int *fds, int nfds)
{
    bool nofd = v & VHOST_USER_VRING_NOFD_MASK;
    if (v & ~(uint64_t)(VHOST_USER_VRING_IDX_MASK |
                        VHOST_USER_VRING_NOFD_MASK)) {
        return -EINVAL;
    }
    VhostQueue *q = queue_at(dev, v & VHOST_USER_VRING_IDX_MASK,
                             "an eventfd");
    if (!q || nfds != (nofd ? 0 : 1)) {
        if (q) {
            vhost_report(dev, "queue %d: eventfd message with %d fds",
                         q->index, nfds);
        }
        return -EINVAL;
    }
    int fd = nofd ? -1 : fds[0];
    if (!nofd) {
        fds[0] = -1;
    }
    switch (request) {
    case VHOST_USER_SET_VRING_KICK:
        if (fd < 0) {
            vhost_report(dev, "queue %d: polling without a kick fd is not "
                         "supported", q->index);
            return -ENOTSUP;
        }
        vhost_queue_set_kick(q, fd);
        return 0;
    case VHOST_USER_SET_VRING_CALL:
        vhost_queue_set_call(q, fd);
        return 0;
    default:    /* SET_VRING_ERR: we never report ring errors that way */
        if (fd >= 0) {
            close(fd);
        }
        return 0;
    }
}

static int get_config(VhostDev *dev, const uint8_t *p, uint32_t size,
                      Reply *r)
{
    VhostUserConfig c;
    if (size < VHOST_USER_CONFIG_HDR || size > sizeof(c)) {
        return PROTO_ERROR;
    }
    memset(&c, 0, sizeof(c));
    memcpy(&c, p, size);
    r->has = true;
    if (!dev->ops->config || c.size > VHOST_USER_MAX_CONFIG ||
        c.offset > VHOST_USER_MAX_CONFIG - c.size ||
        size < VHOST_USER_CONFIG_HDR + c.size) {
        vhost_report(dev, "GET_CONFIG of %u bytes at %u refused", c.size,
                     c.offset);
        r->hdr.size = 0;   /* what the front end takes as a failure */
        return 0;
    }
    memset(c.region, 0, sizeof(c.region));
    dev->ops->get_config(dev->opaque, c.offset, c.region, c.size);
    memcpy(r->payload, &c, VHOST_USER_CONFIG_HDR + c.size);
    r->hdr.size = VHOST_USER_CONFIG_HDR + c.size;
    return 0;
}

static int check_inflight(VhostDev *dev, const VhostUserInflight *in)
{
    if (!has_protocol(dev, VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) ||
        in->num_queues == 0 || in->num_queues > dev->max_queues ||
        in->queue_size == 0 || in->queue_size > VIRTQ_MAX_SIZE ||
        (in->queue_size & (in->queue_size - 1))) {
        vhost_report(dev, "inflight area for %u queues of %u refused",
                     in->num_queues, in->queue_size);
        return -EINVAL;
    }
    return 0;
}

static int map_inflight(VhostDev *dev, int fd, uint64_t offset,
                        const VhostUserInflight *in)
{
    uint64_t len = in->num_queues * INFLIGHT_QUEUE_BYTES(in->queue_size);
    struct stat st;
    if (in->mmap_size < len || offset > UINT64_MAX - len ||
        fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size < offset + len || offset % 4096) {
        vhost_report(dev, "inflight area of %llu bytes at %llu does not "
                     "fit its file", (unsigned long long)in->mmap_size,
                     (unsigned long long)offset);
        return -EINVAL;
    }
    void *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED,
                   fd, (off_t)offset);
    if (p == MAP_FAILED) {
        vhost_report(dev, "cannot map the inflight area: %s",
                     strerror(errno));
        return -errno;
    }
    pthread_mutex_lock(&dev->lock);
    drop_inflight(dev);
    dev->inflight_map = p;
    dev->inflight_len = (size_t)len;
    dev->inflight_nq = in->num_queues;
    dev->inflight_qsize = in->queue_size;
    pthread_mutex_unlock(&dev->lock);
    return 0;
}

static int get_inflight_fd(VhostDev *dev, const VhostUserInflight *in,
                           Reply *r)
{
    int ret = check_inflight(dev, in);
    if (ret < 0) {
        return ret;
    }
    uint64_t len = in->num_queues * INFLIGHT_QUEUE_BYTES(in->queue_size);
    int fd = memfd_create("imgtool-inflight", MFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    if (ftruncate(fd, (off_t)len) < 0) {
        ret = -errno;
        close(fd);
        return ret;
    }
    VhostUserInflight out = *in;
    out.mmap_size = len;
    out.mmap_offset = 0;
    ret = map_inflight(dev, fd, 0, &out);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    memcpy(r->payload, &out, sizeof(out));
    r->hdr.size = sizeof(out);
    r->fd = fd;
    r->has = true;
    return 0;
}

/* Handles one message; returns 0, PROTO_ERROR, or another -errno for a
 * failed request.  Fills r when the request has a reply of its own. */
static int dispatch(VhostDev *dev, const VhostUserHeader *hdr,
                    const uint8_t *p, int *fds, int nfds, Reply *r)
{
    uint64_t u64 = 0;
    VhostUserVringState st = { 0 };
    VhostQueue *q;
    uint32_t size = hdr->size;

    switch (hdr->request) {
    case VHOST_USER_SET_FEATURES:
    case VHOST_USER_SET_PROTOCOL_FEATURES:
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR:
        if (size != sizeof(u64)) {
            return PROTO_ERROR;
        }
        memcpy(&u64, p, sizeof(u64));
        break;
    case VHOST_USER_SET_VRING_NUM:
    case VHOST_USER_SET_VRING_BASE:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_SET_VRING_ENABLE:
        if (size != sizeof(st)) {
            return PROTO_ERROR;
        }
        memcpy(&st, p, sizeof(st));
        break;
    }

    switch (hdr->request) {
    case VHOST_USER_GET_FEATURES:
        reply_u64(r, offered_features(dev));
        return 0;
    case VHOST_USER_SET_FEATURES:
        if (u64 & ~offered_features(dev)) {
            vhost_report(dev, "features 0x%llx were not offered",
                         (unsigned long long)(u64 & ~offered_features(dev)));
            return -EINVAL;
        }
        pthread_mutex_lock(&dev->lock);
        dev->features = u64;
        pthread_mutex_unlock(&dev->lock);
        if (!(u64 & (1ull << VHOST_USER_F_PROTOCOL_FEATURES))) {
            /* Without protocol features rings start enabled. */
            for (int i = 0; i < dev->max_queues; i++) {
                dev->queues[i].enabled = true;
                vhost_queue_update(&dev->queues[i]);
            }
        }
        return 0;
    case VHOST_USER_GET_PROTOCOL_FEATURES:
        reply_u64(r, offered_protocol(dev));
        return 0;
    case VHOST_USER_SET_PROTOCOL_FEATURES:
        if (u64 & ~offered_protocol(dev)) {
            vhost_report(dev, "protocol features 0x%llx were not offered",
                         (unsigned long long)(u64 & ~offered_protocol(dev)));
            return -EINVAL;
        }
        pthread_mutex_lock(&dev->lock);
        dev->protocol_features = u64;
        pthread_mutex_unlock(&dev->lock);
        return 0;
    case VHOST_USER_GET_QUEUE_NUM:
        reply_u64(r, (uint64_t)dev->max_queues);
        return 0;
    case VHOST_USER_SET_OWNER:
        return 0;
    case VHOST_USER_RESET_OWNER:
    case VHOST_USER_RESET_DEVICE:
        reset_queues(dev);
        pthread_mutex_lock(&dev->lock);
        dev->features = 0;
        pthread_mutex_unlock(&dev->lock);
        return 0;
    case VHOST_USER_SET_MEM_TABLE:
        return set_mem_table(dev, p, size, fds, nfds);
    case VHOST_USER_SET_VRING_NUM:
        if (!(q = queue_at(dev, st.index, "SET_VRING_NUM"))) {
            return -EINVAL;
        }
        if (q->ready || st.num == 0 || st.num > VIRTQ_MAX_SIZE ||
            (st.num & (st.num - 1))) {
            vhost_report(dev, "queue %u: size %u refused%s", st.index,
                         st.num, q->ready ? " (the ring is running)" : "");
            return -EINVAL;
        }
        q->num = st.num;
        return 0;
    case VHOST_USER_SET_VRING_BASE:
        if (!(q = queue_at(dev, st.index, "SET_VRING_BASE"))) {
            return -EINVAL;
        }
        if (q->ready || st.num > 0xffff) {
            vhost_report(dev, "queue %u: base %u refused", st.index, st.num);
            return -EINVAL;
        }
        q->base = (uint16_t)st.num;
        return 0;
    case VHOST_USER_SET_VRING_ADDR: {
        VhostUserVringAddr a;
        if (size != sizeof(a)) {
            return PROTO_ERROR;
        }
        memcpy(&a, p, sizeof(a));
        if (!(q = queue_at(dev, a.index, "SET_VRING_ADDR"))) {
            return -EINVAL;
        }
        if (a.flags & 1) {
            vhost_report(dev, "queue %u: used ring logging is not "
                         "supported", a.index);
            return -ENOTSUP;
        }
        if (q->ready) {
            vhost_report(dev, "queue %u: ring addresses changed while it "
                         "runs", a.index);
            return -EBUSY;
        }
        q->desc_uva = a.desc_user_addr;
        q->avail_uva = a.avail_user_addr;
        q->used_uva = a.used_user_addr;
        q->addr_set = true;
        return 0;
    }
    case VHOST_USER_GET_VRING_BASE:
        if (!(q = queue_at(dev, st.index, "GET_VRING_BASE"))) {
            return PROTO_ERROR;   /* a reply is owed that we cannot give */
        }
        st.num = vhost_queue_stop(q);
        memcpy(r->payload, &st, sizeof(st));
        r->hdr.size = sizeof(st);
        r->has = true;
        return 0;
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR:
        return set_vring_fd(dev, hdr->request, u64, fds, nfds);
    case VHOST_USER_SET_VRING_ENABLE:
        if (!(q = queue_at(dev, st.index, "SET_VRING_ENABLE"))) {
            return -EINVAL;
        }
        if (st.num > 1) {
            return -EINVAL;
        }
        q->enabled = st.num;
        if (q->enabled) {
            vhost_queue_update(q);
        } else {
            vhost_queue_halt(q);
        }
        return 0;
    case VHOST_USER_SET_BACKEND_REQ_FD:
        if (!has_protocol(dev, VHOST_USER_PROTOCOL_F_BACKEND_REQ) ||
            nfds != 1) {
            return -EINVAL;
        }
        pthread_mutex_lock(&dev->lock);
        if (dev->backend_fd >= 0) {
            close(dev->backend_fd);
        }
        dev->backend_fd = fds[0];
        fds[0] = -1;
        pthread_mutex_unlock(&dev->lock);
        return 0;
    case VHOST_USER_GET_CONFIG:
        return get_config(dev, p, size, r);
    case VHOST_USER_SET_CONFIG:
        if (size < VHOST_USER_CONFIG_HDR) {
            return PROTO_ERROR;
        }
        /* The write-back toggle is not offered; nothing else is
         * writable. */
        return -ENOTSUP;
    case VHOST_USER_GET_INFLIGHT_FD:
    case VHOST_USER_SET_INFLIGHT_FD: {
        VhostUserInflight in = { 0 };
        if (size != sizeof(in) && size != VHOST_USER_INFLIGHT_MIN) {
            return PROTO_ERROR;
        }
        memcpy(&in, p, size);
        if (hdr->request == VHOST_USER_GET_INFLIGHT_FD) {
            int ret = get_inflight_fd(dev, &in, r);
            if (ret < 0) {
                r->has = true;     /* a reply is owed: an empty one */
                r->hdr.size = 0;
            }
            return 0;
        }
        if (nfds != 1 || check_inflight(dev, &in) < 0) {
            return -EINVAL;
        }
        return map_inflight(dev, fds[0], in.mmap_offset, &in);
    }
    default:
        vhost_report(dev, "request %u is not supported", hdr->request);
        return -ENOTSUP;
    }
}

int vhost_dev_handle_message(VhostDev *dev, const VhostUserHeader *hdr,
                             const void *payload, int *fds, int nfds,
                             void *reply, size_t *reply_len, int *reply_fd)
{
    static __thread Reply r;
    int ret;
    memset(&r.hdr, 0, sizeof(r.hdr));
    r.has = false;
    r.fd = -1;
    *reply_len = 0;
    *reply_fd = -1;
    if ((hdr->flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION ||
        (hdr->flags & VHOST_USER_FLAG_REPLY) ||
        hdr->size > VHOST_USER_MAX_PAYLOAD) {
        ret = PROTO_ERROR;
        goto out;
    }
    pthread_mutex_lock(&dev->lock);
    dev->connected = true;
    pthread_mutex_unlock(&dev->lock);
    ret = dispatch(dev, hdr, payload, fds, nfds, &r);
    if (ret == PROTO_ERROR) {
        vhost_report(dev, "malformed request %u (%u bytes): disconnecting",
                     hdr->request, hdr->size);
        goto out;
    }
    if (!r.has && (hdr->flags & VHOST_USER_FLAG_NEED_REPLY) &&
        has_protocol(dev, VHOST_USER_PROTOCOL_F_REPLY_ACK)) {
        reply_u64(&r, ret < 0 ? 1 : 0);
    }
    if (r.has) {
        r.hdr.request = hdr->request;
        r.hdr.flags = VHOST_USER_VERSION | VHOST_USER_FLAG_REPLY;
        *reply_len = sizeof(r.hdr) + r.hdr.size;
        memcpy(reply, &r, *reply_len);
        *reply_fd = r.fd;
    }
    ret = 0;
out:
    for (int i = 0; i < nfds; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
    return ret;
}

void vhost_dev_disconnect(VhostDev *dev)
{
    reset_queues(dev);
    pthread_mutex_lock(&dev->lock);
    vhost_mem_unref(dev->mem);
    dev->mem = NULL;
    drop_inflight(dev);
    if (dev->backend_fd >= 0) {
        close(dev->backend_fd);
        dev->backend_fd = -1;
    }
    dev->features = 0;
    dev->protocol_features = 0;
    dev->connected = false;
    pthread_mutex_unlock(&dev->lock);
}

int vhost_dev_config_changed(VhostDev *dev)
{
    int ret = -ENOTCONN;
    pthread_mutex_lock(&dev->lock);
    if (dev->backend_fd >= 0 &&
        has_protocol(dev, VHOST_USER_PROTOCOL_F_CONFIG)) {
        VhostUserHeader h = {
            .request = VHOST_USER_BACKEND_CONFIG_CHANGE_MSG,
            .flags = VHOST_USER_VERSION,
            .size = 0,
        };
        ret = send(dev->backend_fd, &h, sizeof(h), MSG_NOSIGNAL) ==
            (ssize_t)sizeof(h) ? 0 : -EIO;
    }
    pthread_mutex_unlock(&dev->lock);
    return ret;
}
