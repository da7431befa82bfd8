/*
 * fuzz_virtqueue.c - the split virtqueue walker (block/export/
 * virtqueue.c) against guest memory the fuzzer writes: descriptor table,
 * avail ring, indirect tables, the inflight area, buffer addresses and
 * lengths are all input.
 *
 * Input: byte 0 picks the queue size (2^((b&31)%6+1)) and features (bit 6:
 * EVENT_IDX, bit 7: INDIRECT_DESC), byte 1 the number of pops to try;
 * the next INFLIGHT bytes are the inflight area (inflight recovery runs
 * first when byte 0 bit 5 is set); the rest is copied over two adjacent
 * 32 KiB guest memory regions (rings at fixed offsets of the first).
 * Every chain popped has each byte of every buffer read and written, so
 * a pointer outside the regions (heap buffers) trips AddressSanitizer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/export/virtqueue.h"

#define REGION 0x8000
#define GPA 0x10000ull
#define UVA 0x7f0000000000ull
#define INFLIGHT 2048

static struct iovec iov[VQ_MAX_IOV];

static void touch(const VqChain *c)
{
    volatile uint8_t sink = 0;
    for (int i = 0; i < c->out_num + c->in_num; i++) {
        uint8_t *p = iov[i].iov_base;
        for (size_t k = 0; k < iov[i].iov_len; k++) {
            sink ^= p[k];
            if (i >= c->out_num) {
                p[k] = sink;
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 + INFLIGHT) {
        return 0;
    }
    uint8_t *m0 = calloc(1, REGION), *m1 = calloc(1, REGION);
    uint8_t *inflight = calloc(1, INFLIGHT);
    unsigned num = 1u << ((data[0] & 0x1f) % 6 + 1);
    bool event_idx = data[0] & 0x40, indirect = data[0] & 0x80;
    bool recover = data[0] & 0x20;
    int pops = data[1];
    memcpy(inflight, data + 2, INFLIGHT);
    size_t left = size - 2 - INFLIGHT;
    const uint8_t *rest = data + 2 + INFLIGHT;
    memcpy(m0, rest, left < REGION ? left : REGION);
    if (left > REGION) {
        memcpy(m1, rest + REGION,
               left - REGION < REGION ? left - REGION : REGION);
    }
    VhostUserMemRegion r[2] = {
        { GPA, REGION, UVA, 0 },
        { GPA + REGION, REGION, UVA + 0x100000, 0 },
    };
    void *host[2] = { m0, m1 };
    VhostMem *mem;
    Error err = { 0 };
    VirtQueue vq;
    if (vhost_mem_local(r, 2, host, &mem, &err) == 0 &&
        vq_init(&vq, mem, num, UVA, UVA + 0x1000, UVA + 0x2000, 0,
                event_idx, indirect, &err) == 0) {
        VqChain c = { .iov = iov };
        uint16_t heads[64];
        if (recover && INFLIGHT_QUEUE_BYTES(num) <= INFLIGHT &&
            vq_inflight_attach(&vq, (InflightQueue *)inflight, &err) == 0) {
            int n = vq_inflight_resume(&vq, heads);
            for (int i = 0; i < n; i++) {
                if (vq_walk(&vq, mem, heads[i], &c) == 0) {
                    touch(&c);
                    vq_push(&vq, heads[i], (uint32_t)c.in_bytes);
                }
            }
        }
        for (int i = 0; i < pops; i++) {
            int ret = vq_pop(&vq, mem, &c);
            if (ret <= 0) {
                break;
            }
            touch(&c);
            /* Return every other chain, keep the rest in use. */
            if (i % 2 == 0) {
                vq_push(&vq, c.head, (uint32_t)c.in_bytes);
            }
            vq_set_notification(&vq, i % 3 == 0);
            vq_has_avail(&vq);
        }
        vq_fini(&vq);
    }
    vhost_mem_unref(mem);
    free(m0);
    free(m1);
    free(inflight);
    return 0;
}
