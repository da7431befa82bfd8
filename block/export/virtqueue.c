/*
 * virtqueue.c - the split virtqueue walker (see virtqueue.h).
 *
 * Invariants:
 *  - desc, avail and used point into one mapped region each, for the
 *    whole of their size (num entries and the event index fields), and
 *    are aligned for the atomic accesses below;
 *  - a chain handed out has at most VQ_MAX_IOV elements, all inside
 *    guest memory, at most VQ_MAX_CHAIN_BYTES bytes in each direction,
 *    readable elements before writable ones;
 *  - a head is in use (inuse bit) from the vq_pop that takes it to the
 *    vq_push that returns it, and never taken twice meanwhile: a driver
 *    that offers a head still in use breaks the queue (without this a
 *    driver could keep any number of requests in flight on one head);
 *  - with inflight tracking, a head's inflight byte is 1 exactly while it
 *    is in use, and is set before the next head is taken, so after a
 *    crash the heads in flight are the avail entries right after the
 *    used index (what vq_inflight_resume relies on).
 */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/virtqueue.h"

static void vq_break(VirtQueue *vq, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void vq_break(VirtQueue *vq, const char *fmt, ...)
{
    if (!vq->broken) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(vq->why, sizeof(vq->why), fmt, ap);
        va_end(ap);
        vq->broken = true;
    }
}

/* A full barrier between our stores to the rings and our next loads of
 * the driver's fields (the guest is another CPU, not a C11 thread: only
 * the hardware's ordering matters).  ThreadSanitizer cannot model
 * fences, so under it a sequentially consistent read-modify-write does
 * the job (a locked instruction: the same full barrier on x86). */
static inline void full_barrier(void)
{
#if defined(__SANITIZE_THREAD__)
    static int dummy;
    __atomic_fetch_add(&dummy, 0, __ATOMIC_SEQ_CST);
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

static uint16_t load16(const uint16_t *p)
{
    return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED));
}

static void store16(uint16_t *p, uint16_t v)
{
    __atomic_store_n(p, htole16(v), __ATOMIC_RELAXED);
}

/* One descriptor, copied once: the driver may rewrite it while we look,
 * and the barrier keeps the compiler from reading it again later. */
static VringDesc read_desc(const VringDesc *p)
{
    VringDesc d;
    memcpy(&d, p, sizeof(d));
    __asm__ volatile("" ::: "memory");
    d.addr = le64toh(d.addr);
    d.len = le32toh(d.len);
    d.flags = le16toh(d.flags);
    d.next = le16toh(d.next);
    return d;
}

static bool inuse_test(const VirtQueue *vq, uint16_t h)
{
    return vq->inuse[h / 64] & (1ull << (h % 64));
}

static void inuse_set(VirtQueue *vq, uint16_t h)
{
    vq->inuse[h / 64] |= 1ull << (h % 64);
    vq->inuse_count++;
}

static void inuse_clear(VirtQueue *vq, uint16_t h)
{
    vq->inuse[h / 64] &= ~(1ull << (h % 64));
    vq->inuse_count--;
}

static int ring_ptr(const VhostMem *mem, uint64_t uva, uint64_t bytes,
                    unsigned align, const char *what, void **out, Error *err)
{
    void *p = vhost_mem_uva(mem, uva, bytes);
    if (!p) {
        return error_setf(err, EFAULT, "%s ring at 0x%llx (%llu bytes) is "
                          "not in shared memory", what,
                          (unsigned long long)uva,
                          (unsigned long long)bytes);
    }
    if (uva % align || (uintptr_t)p % align) {
        return error_setf(err, EINVAL, "%s ring at 0x%llx is not aligned "
                          "to %u bytes", what, (unsigned long long)uva,
                          align);
    }
    *out = p;
    return 0;
}

static int map_rings(VirtQueue *vq, const VhostMem *mem, unsigned num,
                     uint64_t desc_uva, uint64_t avail_uva,
                     uint64_t used_uva, Error *err)
{
    if (!mem) {
        return error_setf(err, EINVAL, "rings set up before the memory "
                          "table");
    }
    void *desc = NULL, *avail = NULL, *used = NULL;
    int ret = ring_ptr(mem, desc_uva, VRING_DESC_BYTES(num), 16,
                       "descriptor", &desc, err);
    if (ret == 0) {
        ret = ring_ptr(mem, avail_uva, VRING_AVAIL_BYTES(num), 2,
                       "available", &avail, err);
    }
    if (ret == 0) {
        ret = ring_ptr(mem, used_uva, VRING_USED_BYTES(num), 4, "used",
                       &used, err);
    }
    if (ret < 0) {
        return ret;
    }
    vq->desc = desc;
    vq->avail = avail;
    vq->used = used;
    return 0;
}

int vq_init(VirtQueue *vq, const VhostMem *mem, unsigned num,
            uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva,
            uint16_t last_avail_idx, bool event_idx, bool indirect,
            Error *err)
{
    memset(vq, 0, sizeof(*vq));
    if (num == 0 || num > VIRTQ_MAX_SIZE || (num & (num - 1))) {
        return error_setf(err, EINVAL, "queue size %u (a power of two up "
                          "to %u expected)", num, VIRTQ_MAX_SIZE);
    }
    int ret = map_rings(vq, mem, num, desc_uva, avail_uva, used_uva, err);
    if (ret < 0) {
        return ret;
    }
    vq->inuse = calloc((num + 63) / 64, sizeof(uint64_t));
    if (!vq->inuse) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    vq->num = (uint16_t)num;
    vq->last_avail_idx = last_avail_idx;
    vq->used_idx = load16(&vq->used->idx);
    vq->event_idx = event_idx;
    vq->indirect = indirect;
    return 0;
}

int vq_remap(VirtQueue *vq, const VhostMem *mem, uint64_t desc_uva,
             uint64_t avail_uva, uint64_t used_uva, Error *err)
{
    return map_rings(vq, mem, vq->num, desc_uva, avail_uva, used_uva, err);
}

void vq_fini(VirtQueue *vq)
{
    free(vq->inuse);
    memset(vq, 0, sizeof(*vq));
}

/* Adds descriptor d's buffer to the chain. */
static int add_buffer(VirtQueue *vq, const VhostMem *mem, const VringDesc *d,
                      VqChain *c)
{
    bool writable = d->flags & VRING_DESC_F_WRITE;
    if (!writable && c->in_num > 0) {
        vq_break(vq, "readable descriptor after a writable one");
        return -EIO;
    }
    uint64_t *bytes = writable ? &c->in_bytes : &c->out_bytes;
    if (d->len > VQ_MAX_CHAIN_BYTES - *bytes) {
        vq_break(vq, "chain of more than %llu bytes",
                 (unsigned long long)VQ_MAX_CHAIN_BYTES);
        return -EIO;
    }
    *bytes += d->len;
    int n = c->out_num + c->in_num;
    int ret = vhost_mem_gpa_iov(mem, d->addr, d->len, c->iov, &n,
                                VQ_MAX_IOV);
    if (ret == -EFAULT) {
        vq_break(vq, "descriptor buffer 0x%llx+%u is not in guest memory",
                 (unsigned long long)d->addr, d->len);
        return -EIO;
    }
    if (ret < 0) {
        vq_break(vq, "chain of more than %d buffers", VQ_MAX_IOV);
        return -EIO;
    }
    if (writable) {
        c->in_num = n - c->out_num;
    } else {
        c->out_num = n;
    }
    return 0;
}

int vq_walk(VirtQueue *vq, const VhostMem *mem, uint16_t head, VqChain *c)
{
    c->head = head;
    c->out_num = c->in_num = 0;
    c->out_bytes = c->in_bytes = 0;
    if (vq->broken) {
        return -EIO;
    }
    if (head >= vq->num) {
        vq_break(vq, "head %u out of range (queue size %u)", head, vq->num);
        return -EIO;
    }
    const VringDesc *table = vq->desc;
    unsigned max = vq->num;
    VringDesc d = read_desc(&table[head]);
    if (d.flags & VRING_DESC_F_INDIRECT) {
        if (!vq->indirect) {
            vq_break(vq, "indirect descriptor without the feature");
            return -EIO;
        }
        if (d.flags & VRING_DESC_F_NEXT) {
            vq_break(vq, "indirect descriptor with a next descriptor");
            return -EIO;
        }
        if (d.len == 0 || d.len % sizeof(VringDesc) ||
            d.len / sizeof(VringDesc) > VQ_MAX_INDIRECT) {
            vq_break(vq, "indirect table of %u bytes", d.len);
            return -EIO;
        }
        table = vhost_mem_gpa(mem, d.addr, d.len);
        if (!table) {
            vq_break(vq, "indirect table 0x%llx+%u is not in guest memory",
                     (unsigned long long)d.addr, d.len);
            return -EIO;
        }
        max = d.len / sizeof(VringDesc);
        d = read_desc(&table[0]);
    }
    for (unsigned seen = 1;; seen++) {
        if (seen > max) {
            vq_break(vq, "descriptor chain at head %u loops", head);
            return -EIO;
        }
        if (d.flags & VRING_DESC_F_INDIRECT) {
            vq_break(vq, "indirect descriptor inside a chain");
            return -EIO;
        }
        if (d.len > 0 && add_buffer(vq, mem, &d, c) < 0) {
            return -EIO;
        }
        if (!(d.flags & VRING_DESC_F_NEXT)) {
            return 0;
        }
        if (d.next >= max) {
            vq_break(vq, "next descriptor %u out of range (%u)", d.next,
                     max);
            return -EIO;
        }
        d = read_desc(&table[d.next]);
    }
}

bool vq_has_avail(VirtQueue *vq)
{
    return !vq->broken && vq->num &&
        load16(&vq->avail->idx) != vq->last_avail_idx;
}

int vq_pop(VirtQueue *vq, const VhostMem *mem, VqChain *c)
{
    if (vq->broken) {
        return -EIO;
    }
    uint16_t avail_idx = le16toh(__atomic_load_n(&vq->avail->idx,
                                                 __ATOMIC_ACQUIRE));
    uint16_t pending = (uint16_t)(avail_idx - vq->last_avail_idx);
    if (pending == 0) {
        return 0;
    }
    if (pending > vq->num) {
        vq_break(vq, "available index moved %u entries ahead (queue size "
                 "%u)", pending, vq->num);
        return -EIO;
    }
    uint16_t head = load16(&vq->avail->ring[vq->last_avail_idx % vq->num]);
    if (head < vq->num && inuse_test(vq, head)) {
        vq_break(vq, "head %u made available while in use", head);
        return -EIO;
    }
    if (vq_walk(vq, mem, head, c) < 0) {
        return -EIO;
    }
    vq->last_avail_idx++;
    inuse_set(vq, head);
    if (vq->inflight) {
        vq->inflight->desc[head].counter = vq->inflight_counter++;
        vq->inflight->desc[head].inflight = 1;
    }
    return 1;
}

bool vq_push(VirtQueue *vq, uint16_t head, uint32_t len)
{
    if (head >= vq->num || !inuse_test(vq, head)) {
        return false;    /* a caller bug; never index out of the ring */
    }
    uint16_t old = vq->used_idx;
    InflightQueue *q = vq->inflight;
    if (q) {
        q->desc[head].next = q->last_batch_head;
        q->last_batch_head = head;
    }
    VringUsedElem *e = &vq->used->ring[old % vq->num];
    __atomic_store_n(&e->id, htole32(head), __ATOMIC_RELAXED);
    __atomic_store_n(&e->len, htole32(len), __ATOMIC_RELAXED);
    uint16_t new = (uint16_t)(old + 1);
    __atomic_store_n(&vq->used->idx, htole16(new), __ATOMIC_RELEASE);
    vq->used_idx = new;
    if (q) {
        q->desc[head].inflight = 0;
        __atomic_store_n(&q->used_idx, new, __ATOMIC_RELEASE);
    }
    inuse_clear(vq, head);

    /* The driver's used_event / NO_INTERRUPT must be read after the
     * used index is visible, or both sides could skip the interrupt. */
    full_barrier();
    if (vq->event_idx) {
        uint16_t event = load16(&vq->avail->ring[vq->num]);
        return (uint16_t)(new - event - 1) < (uint16_t)(new - old);
    }
    return !(load16(&vq->avail->flags) & VRING_AVAIL_F_NO_INTERRUPT);
}

void vq_set_notification(VirtQueue *vq, bool enable)
{
    if (vq->event_idx) {
        if (enable) {
            store16((uint16_t *)&vq->used->ring[vq->num],
                    vq->last_avail_idx);
        }
    } else {
        uint16_t f = load16(&vq->used->flags);
        store16(&vq->used->flags, enable ? f & ~VRING_USED_F_NO_NOTIFY
                                         : f | VRING_USED_F_NO_NOTIFY);
    }
    /* The flag must be visible before we look at the avail index again. */
    full_barrier();
}

int vq_inflight_attach(VirtQueue *vq, InflightQueue *q, Error *err)
{
    if (q->version == 0 && q->desc_num == 0) {
        /* A fresh region: nothing was ever in flight. */
        memset(q->desc, 0, (size_t)vq->num * sizeof(InflightDesc));
        q->desc_num = vq->num;
        q->version = 1;
        q->last_batch_head = 0;
        q->used_idx = vq->used_idx;
    } else if (q->version != 1 || q->desc_num != vq->num) {
        return error_setf(err, EINVAL, "inflight region for %u entries "
                          "(version %u), the queue has %u", q->desc_num,
                          q->version, vq->num);
    }
    vq->inflight = q;
    return 0;
}

typedef struct HeadOrder {
    uint64_t counter;
    uint16_t head;
} HeadOrder;

static int by_counter(const void *a, const void *b)
{
    const HeadOrder *x = a, *y = b;
    return x->counter < y->counter ? -1 : x->counter > y->counter;
}

int vq_inflight_resume(VirtQueue *vq, uint16_t *heads)
{
    InflightQueue *q = vq->inflight;
    if (!q) {
        return 0;
    }
    uint16_t ring_used = vq->used_idx;
    if (q->used_idx != ring_used) {
        /* Killed between the used ring update and the bookkeeping: the
         * last batch is done, whatever its inflight bytes say. */
        uint16_t batch = (uint16_t)(ring_used - q->used_idx);
        uint16_t h = q->last_batch_head;
        if (batch > vq->num) {
            vq_break(vq, "inflight region %u completions behind the ring",
                     batch);
            return -EIO;
        }
        for (uint16_t i = 0; i < batch; i++) {
            if (h >= vq->num) {
                vq_break(vq, "inflight batch list leaves the queue");
                return -EIO;
            }
            q->desc[h].inflight = 0;
            h = q->desc[h].next;
        }
        q->used_idx = ring_used;
    }
    HeadOrder *order = malloc(sizeof(*order) * vq->num);
    if (!order) {
        vq_break(vq, "out of memory");
        return -EIO;
    }
    int n = 0;
    uint64_t top = 0;
    for (unsigned i = 0; i < vq->num; i++) {
        if (q->desc[i].inflight) {
            order[n].counter = q->desc[i].counter;
            order[n].head = (uint16_t)i;
            if (q->desc[i].counter >= top) {
                top = q->desc[i].counter + 1;
            }
            n++;
        }
    }
    qsort(order, (size_t)n, sizeof(*order), by_counter);
    for (int i = 0; i < n; i++) {
        heads[i] = order[i].head;
        if (!inuse_test(vq, order[i].head)) {
            inuse_set(vq, order[i].head);
        }
    }
    free(order);
    vq->last_avail_idx = (uint16_t)(ring_used + n);
    if (top > vq->inflight_counter) {
        vq->inflight_counter = top;
    }
    return n;
}
