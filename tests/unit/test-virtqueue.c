/*
 * test-virtqueue.c - the split virtqueue walker against well-formed and
 * hostile rings: chains, indirect tables, buffers across regions, loops,
 * out-of-range heads, indexes and addresses, oversize lengths, order of
 * readable and writable buffers, heads reused while in use, interrupt
 * suppression, and inflight tracking across a simulated back-end crash
 * (including one between the used ring update and its bookkeeping).
 * Guest memory is two adjacent regions of this process's memory.  (TAP)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "block/export/virtqueue.h"

static int n_test, failed;

static void ok(int cond, const char *what)
{
    n_test++;
    if (!cond) {
        failed++;
    }
    printf("%sok %d - %s\n", cond ? "" : "not ", n_test, what);
}

#define NUM 8
#define GPA0 0x100000ull
#define REGION 0x40000ull            /* 256 KiB each */
#define UVA0 0x7f0000000000ull
#define DESC_OFF 0x0
#define AVAIL_OFF 0x1000
#define USED_OFF 0x2000
#define DATA_OFF 0x10000
/* A third region, large and never touched, for byte limits. */
#define GPA_BIG 0x40000000ull
#define BIG (160ull << 20)

static uint8_t *mem0, *mem1, *big;
static VhostMem *mem;
static VringDesc *desc;
static VringAvail *avail;
static VringUsed *used;
static struct iovec iov[VQ_MAX_IOV];

static void setup_memory(void)
{
    mem0 = aligned_alloc(4096, REGION);
    mem1 = aligned_alloc(4096, REGION);
    big = mmap(NULL, BIG, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    VhostUserMemRegion r[3] = {
        { GPA0, REGION, UVA0, 0 },
        { GPA0 + REGION, REGION, UVA0 + 0x100000000ull, 0 },
        { GPA_BIG, BIG, UVA0 + 0x200000000ull, 0 },
    };
    void *host[3] = { mem0, mem1, big };
    Error err = { 0 };
    ok(big != MAP_FAILED && vhost_mem_local(r, 3, host, &mem, &err) == 0,
       "memory table");
    desc = (VringDesc *)(mem0 + DESC_OFF);
    avail = (VringAvail *)(mem0 + AVAIL_OFF);
    used = (VringUsed *)(mem0 + USED_OFF);
}

static void reset_rings(void)
{
    memset(mem0, 0, DATA_OFF);
}

static int init_vq(VirtQueue *vq, bool event_idx, bool indirect)
{
    Error err = { 0 };
    int ret = vq_init(vq, mem, NUM, UVA0 + DESC_OFF, UVA0 + AVAIL_OFF,
                      UVA0 + USED_OFF, 0, event_idx, indirect, &err);
    if (ret < 0) {
        printf("# %s\n", err.msg);
    }
    return ret;
}

static void set_desc(VringDesc *table, int i, uint64_t addr, uint32_t len,
                     uint16_t flags, uint16_t next)
{
    table[i].addr = addr;
    table[i].len = len;
    table[i].flags = flags;
    table[i].next = next;
}

static void offer(uint16_t head)
{
    avail->ring[avail->idx % NUM] = head;
    avail->idx++;
}

static int pop(VirtQueue *vq, VqChain *c)
{
    c->iov = iov;
    return vq_pop(vq, mem, c);
}

/* A fresh queue whose next pop must break it with `why` in its reason. */
static void expect_broken(VirtQueue *vq, const char *why, const char *what)
{
    VqChain c;
    int r = pop(vq, &c);
    ok(r == -EIO && vq->broken && strstr(vq->why, why), what);
    if (!strstr(vq->why, why)) {
        printf("# why: %s\n", vq->why);
    }
    ok(pop(vq, &c) == -EIO, "a broken queue stays broken");
    vq_fini(vq);
}

static void test_chains(void)
{
    VirtQueue vq;
    VqChain c;
    reset_rings();
    ok(init_vq(&vq, false, true) == 0, "queue set up");
    ok(pop(&vq, &c) == 0, "nothing available");

    set_desc(desc, 0, GPA0 + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
    set_desc(desc, 1, GPA0 + DATA_OFF + 0x1000, 4096, VRING_DESC_F_NEXT, 2);
    set_desc(desc, 2, GPA0 + DATA_OFF + 0x2000, 1, VRING_DESC_F_WRITE, 0);
    offer(0);
    ok(pop(&vq, &c) == 1, "a chain of three");
    ok(c.head == 0 && c.out_num == 2 && c.in_num == 1, "two out, one in");
    ok(c.out_bytes == 16 + 4096 && c.in_bytes == 1, "byte counts");
    ok(iov[0].iov_base == mem0 + DATA_OFF && iov[2].iov_len == 1,
       "translated addresses");
    ok(pop(&vq, &c) == 0, "taken once");

    /* A buffer that starts in region 0 and ends in region 1. */
    set_desc(desc, 3, GPA0 + REGION - 100, 300, 0, 0);
    offer(3);
    ok(pop(&vq, &c) == 1 && c.out_num == 2 && iov[0].iov_len == 100 &&
       iov[1].iov_base == mem1 && iov[1].iov_len == 200,
       "a buffer across adjacent regions becomes two elements");

    /* Zero-length descriptors add nothing. */
    set_desc(desc, 4, GPA0 + DATA_OFF, 0, VRING_DESC_F_NEXT, 5);
    set_desc(desc, 5, GPA0 + DATA_OFF, 8, VRING_DESC_F_WRITE, 0);
    offer(4);
    ok(pop(&vq, &c) == 1 && c.out_num == 0 && c.in_num == 1,
       "empty descriptor skipped");

    /* Used ring and interrupts: without EVENT_IDX, NO_INTERRUPT rules. */
    ok(vq_push(&vq, 0, 1) && used->idx == 1 && used->ring[0].id == 0 &&
       used->ring[0].len == 1, "push fills the used ring");
    avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
    ok(!vq_push(&vq, 3, 0), "NO_INTERRUPT suppresses the interrupt");
    avail->flags = 0;
    ok(!vq_push(&vq, 3, 0), "pushing a head not in use does nothing");
    ok(used->idx == 2, "...and does not move the used index");
    vq_set_notification(&vq, false);
    ok(used->flags & VRING_USED_F_NO_NOTIFY, "kicks off");
    vq_set_notification(&vq, true);
    ok(!(used->flags & VRING_USED_F_NO_NOTIFY), "kicks on");
    vq_fini(&vq);
}

static void test_event_idx(void)
{
    VirtQueue vq;
    VqChain c;
    reset_rings();
    ok(init_vq(&vq, true, false) == 0, "queue with EVENT_IDX");
    set_desc(desc, 0, GPA0 + DATA_OFF, 8, VRING_DESC_F_WRITE, 0);
    set_desc(desc, 1, GPA0 + DATA_OFF, 8, VRING_DESC_F_WRITE, 0);
    offer(0);
    offer(1);
    ok(pop(&vq, &c) == 1 && pop(&vq, &c) == 1, "two taken");
    avail->ring[NUM] = 1;       /* used_event: interrupt after entry 1 */
    ok(!vq_push(&vq, 0, 8), "no interrupt before used_event");
    ok(vq_push(&vq, 1, 8), "interrupt when used_event is passed");
    vq_set_notification(&vq, true);
    ok(*(uint16_t *)&used->ring[NUM] == 2, "avail_event = next to take");
    vq_fini(&vq);
}

static void test_indirect(void)
{
    VirtQueue vq;
    VqChain c;
    VringDesc *table = (VringDesc *)(mem0 + DATA_OFF + 0x8000);
    uint64_t table_gpa = GPA0 + DATA_OFF + 0x8000;

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(table, 0, GPA0 + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
    set_desc(table, 1, GPA0 + DATA_OFF + 16, 512, VRING_DESC_F_NEXT, 2);
    set_desc(table, 2, GPA0 + DATA_OFF + 1024, 1, VRING_DESC_F_WRITE, 0);
    set_desc(desc, 0, table_gpa, 3 * 16, VRING_DESC_F_INDIRECT, 0);
    offer(0);
    ok(pop(&vq, &c) == 1 && c.out_num == 2 && c.in_num == 1 &&
       c.out_bytes == 528, "indirect table of three");
    vq_fini(&vq);

    reset_rings();
    init_vq(&vq, false, false);
    set_desc(desc, 0, table_gpa, 3 * 16, VRING_DESC_F_INDIRECT, 0);
    offer(0);
    expect_broken(&vq, "without the feature", "indirect without feature");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, table_gpa, 3 * 16,
             VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);
    offer(0);
    expect_broken(&vq, "with a next", "indirect with NEXT");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, table_gpa, 20, VRING_DESC_F_INDIRECT, 0);
    offer(0);
    expect_broken(&vq, "indirect table of 20", "table length not 16*n");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, table_gpa, (VQ_MAX_INDIRECT + 1) * 16,
             VRING_DESC_F_INDIRECT, 0);
    offer(0);
    expect_broken(&vq, "indirect table of", "table too long");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, GPA0 + 2 * REGION - 16, 32, VRING_DESC_F_INDIRECT, 0);
    offer(0);
    expect_broken(&vq, "not in guest memory", "table past guest memory");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(table, 0, table_gpa, 16, VRING_DESC_F_INDIRECT, 0);
    set_desc(desc, 0, table_gpa, 16, VRING_DESC_F_INDIRECT, 0);
    offer(0);
    expect_broken(&vq, "inside a chain", "nested indirect table");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(table, 0, GPA0 + DATA_OFF, 8, VRING_DESC_F_NEXT, 1);
    set_desc(table, 1, GPA0 + DATA_OFF, 8, VRING_DESC_F_NEXT, 0);
    set_desc(desc, 0, table_gpa, 2 * 16, VRING_DESC_F_INDIRECT, 0);
    offer(0);
    expect_broken(&vq, "loops", "loop inside an indirect table");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(table, 0, GPA0 + DATA_OFF, 8, VRING_DESC_F_NEXT, 5);
    set_desc(desc, 0, table_gpa, 2 * 16, VRING_DESC_F_INDIRECT, 0);
    offer(0);
    expect_broken(&vq, "out of range", "next past the indirect table");
}

static void test_hostile(void)
{
    VirtQueue vq;
    VqChain c;

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, GPA0 + DATA_OFF, 8, VRING_DESC_F_NEXT, 1);
    set_desc(desc, 1, GPA0 + DATA_OFF, 8, VRING_DESC_F_NEXT, 0);
    offer(0);
    expect_broken(&vq, "loops", "a two-descriptor loop");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 3, GPA0 + DATA_OFF, 8, VRING_DESC_F_NEXT, 3);
    offer(3);
    expect_broken(&vq, "loops", "a descriptor pointing at itself");

    reset_rings();
    init_vq(&vq, false, true);
    offer(NUM);
    expect_broken(&vq, "head 8 out of range", "head out of range");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, GPA0 + DATA_OFF, 8, VRING_DESC_F_NEXT, 200);
    offer(0);
    expect_broken(&vq, "next descriptor 200", "next out of range");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, 0x1000, 8, 0, 0);
    offer(0);
    expect_broken(&vq, "not in guest memory", "buffer below guest memory");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, GPA0 + 2 * REGION - 4, 8, 0, 0);
    offer(0);
    expect_broken(&vq, "not in guest memory", "buffer running off the end");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, UINT64_MAX - 4, 8, 0, 0);
    offer(0);
    expect_broken(&vq, "not in guest memory", "buffer wrapping 2^64");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, GPA0, 0xffffffffu, 0, 0);
    offer(0);
    expect_broken(&vq, "more than", "4 GiB descriptor");

    reset_rings();
    init_vq(&vq, false, true);
    for (int i = 0; i < 2; i++) {
        set_desc(desc, i, GPA_BIG, (uint32_t)(150u << 20),
                 i < 1 ? VRING_DESC_F_NEXT : 0, (uint16_t)(i + 1));
    }
    offer(0);
    expect_broken(&vq, "more than", "chain longer than the byte limit");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, GPA0 + DATA_OFF, 8, VRING_DESC_F_WRITE |
             VRING_DESC_F_NEXT, 1);
    set_desc(desc, 1, GPA0 + DATA_OFF, 8, 0, 0);
    offer(0);
    expect_broken(&vq, "readable descriptor after", "read after write");

    reset_rings();
    init_vq(&vq, false, true);
    avail->idx = NUM + 1;
    expect_broken(&vq, "moved 9 entries", "avail index too far ahead");

    reset_rings();
    init_vq(&vq, false, true);
    set_desc(desc, 0, GPA0 + DATA_OFF, 8, 0, 0);
    offer(0);
    offer(0);
    ok(pop(&vq, &c) == 1, "first offer taken");
    expect_broken(&vq, "while in use", "a head offered twice");

    /* Ring setup. */
    Error err = { 0 };
    ok(vq_init(&vq, mem, 6, UVA0, UVA0 + AVAIL_OFF, UVA0 + USED_OFF, 0,
               false, false, &err) == -EINVAL, "size not a power of two");
    error_clear(&err);
    ok(vq_init(&vq, mem, 65536, UVA0, UVA0 + AVAIL_OFF, UVA0 + USED_OFF, 0,
               false, false, &err) == -EINVAL, "size past 32768");
    error_clear(&err);
    ok(vq_init(&vq, mem, NUM, UVA0 + 8, UVA0 + AVAIL_OFF, UVA0 + USED_OFF,
               0, false, false, &err) == -EINVAL, "misaligned descriptors");
    error_clear(&err);
    ok(vq_init(&vq, mem, NUM, UVA0, UVA0 + AVAIL_OFF, 0x1000, 0, false,
               false, &err) == -EFAULT, "used ring outside memory");
    error_clear(&err);
    ok(vq_init(&vq, mem, NUM, UVA0 + REGION - 64, UVA0 + AVAIL_OFF,
               UVA0 + USED_OFF, 0, false, false, &err) == -EFAULT,
       "descriptor table across a region's end");
}

static void test_inflight(void)
{
    VirtQueue vq;
    VqChain c;
    size_t qbytes = INFLIGHT_QUEUE_BYTES(NUM);
    InflightQueue *q = calloc(1, qbytes);
    Error err = { 0 };

    reset_rings();
    init_vq(&vq, false, false);
    ok(vq_inflight_attach(&vq, q, &err) == 0 && q->version == 1 &&
       q->desc_num == NUM, "fresh inflight region set up");
    for (int i = 0; i < 4; i++) {
        set_desc(desc, i, GPA0 + DATA_OFF, 8, VRING_DESC_F_WRITE, 0);
        offer((uint16_t)i);
    }
    for (int i = 0; i < 4; i++) {
        pop(&vq, &c);
    }
    ok(q->desc[0].inflight && q->desc[3].inflight, "taken heads tracked");
    vq_push(&vq, 2, 8);
    vq_push(&vq, 0, 8);
    ok(!q->desc[2].inflight && q->used_idx == 2, "completions tracked");
    vq_fini(&vq);        /* the back end dies with heads 1 and 3 out */

    /* A new back end: the front end restored the base to the used index. */
    vq_init(&vq, mem, NUM, UVA0 + DESC_OFF, UVA0 + AVAIL_OFF,
            UVA0 + USED_OFF, used->idx, false, false, &err);
    ok(vq_inflight_attach(&vq, q, &err) == 0, "region attached again");
    uint16_t heads[NUM];
    int n = vq_inflight_resume(&vq, heads);
    ok(n == 2 && heads[0] == 1 && heads[1] == 3,
       "heads in flight come back in the order they were taken");
    ok(vq.last_avail_idx == 4, "and are not taken from the ring again");
    ok(pop(&vq, &c) == 0, "nothing else is available");
    ok(vq_push(&vq, 1, 8) || used->idx == 3, "a recovered head completes");
    vq_fini(&vq);

    /* Killed between the used ring update and clearing inflight. */
    q->used_idx = (uint16_t)(used->idx - 1);
    q->last_batch_head = 1;
    q->desc[1].inflight = 1;
    vq_init(&vq, mem, NUM, UVA0 + DESC_OFF, UVA0 + AVAIL_OFF,
            UVA0 + USED_OFF, used->idx, false, false, &err);
    vq_inflight_attach(&vq, q, &err);
    n = vq_inflight_resume(&vq, heads);
    ok(n == 1 && heads[0] == 3, "the last batch's head is not resubmitted");
    ok(q->used_idx == used->idx, "bookkeeping caught up");
    vq_fini(&vq);

    /* A region that does not fit the queue. */
    q->desc_num = NUM * 2;
    init_vq(&vq, false, false);
    ok(vq_inflight_attach(&vq, q, &err) == -EINVAL, "mismatched region");
    vq_fini(&vq);

    /* A hostile region: batch list running out of the queue. */
    q->desc_num = NUM;
    q->used_idx = (uint16_t)(used->idx - 3);
    q->last_batch_head = 1000;
    vq_init(&vq, mem, NUM, UVA0 + DESC_OFF, UVA0 + AVAIL_OFF,
            UVA0 + USED_OFF, used->idx, false, false, &err);
    vq_inflight_attach(&vq, q, &err);
    ok(vq_inflight_resume(&vq, heads) == -EIO && vq.broken,
       "a batch list that leaves the queue breaks it");
    vq_fini(&vq);
    free(q);
}

static void test_memory_tables(void)
{
    VhostMem *m;
    Error err = { 0 };
    void *host[2] = { mem0, mem1 };
    VhostUserMemRegion overlap[2] = {
        { 0, 0x10000, 0, 0 }, { 0x8000, 0x10000, 0x100000, 0 } };
    ok(vhost_mem_local(overlap, 2, host, &m, &err) == -EINVAL &&
       strstr(err.msg, "overlap"), "overlapping regions refused");
    error_clear(&err);
    VhostUserMemRegion wrap = { UINT64_MAX - 10, 0x1000, 0, 0 };
    ok(vhost_mem_local(&wrap, 1, host, &m, &err) == -EINVAL,
       "region wrapping the address space refused");
    error_clear(&err);
    VhostUserMemRegion empty = { 0, 0, 0, 0 };
    ok(vhost_mem_local(&empty, 1, host, &m, &err) == -EINVAL,
       "empty region refused");
    error_clear(&err);
    ok(vhost_mem_local(&empty, 0, host, &m, &err) == -EINVAL,
       "no regions refused");
    ok(vhost_mem_gpa(mem, GPA0 + REGION - 1, 2) == NULL,
       "a range across regions is not one pointer");
    ok(vhost_mem_gpa(mem, GPA0 + REGION - 2, 2) == mem0 + REGION - 2,
       "the last bytes of a region are");
}

int main(void)
{
    setup_memory();
    test_chains();
    test_event_idx();
    test_indirect();
    test_hostile();
    test_inflight();
    test_memory_tables();
    vhost_mem_unref(mem);
    free(mem0);
    free(mem1);
    munmap(big, BIG);
    printf("1..%d\n", n_test);
    return failed ? 1 : 0;
}
