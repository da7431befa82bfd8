/*
 * vhost-mem.c - mapping and translating a front end's memory table (see
 * vhost-mem.h).
 *
 * Invariants of a built table: 1 <= n <= VHOST_USER_MAX_REGIONS; every
 * region has size > 0, gpa + size and uva + size do not overflow, no two
 * regions overlap in guest physical or front-end virtual space, and
 * [host, host + size) is mapped read-write for the table's lifetime.
 * Translation therefore never yields a pointer outside a mapping.
 *
 * A front end can still truncate a region's file after we mapped it;
 * touching the lost pages would raise SIGBUS.  QEMU's memfd backend seals
 * its files against shrinking (seal=on, the default), and we check the
 * size at map time; a front end that unseals and shrinks its own memory
 * can only hurt the connection it owns.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "block/export/vhost-mem.h"

static int check_regions(const VhostUserMemRegion *regs, int n, Error *err)
{
    if (n < 1 || n > VHOST_USER_MAX_REGIONS) {
        return error_setf(err, EINVAL, "memory table with %d regions "
                          "(1 to %d allowed)", n, VHOST_USER_MAX_REGIONS);
    }
    for (int i = 0; i < n; i++) {
        const VhostUserMemRegion *r = &regs[i];
        if (r->memory_size == 0) {
            return error_setf(err, EINVAL, "memory region %d is empty", i);
        }
        if (r->guest_phys_addr + r->memory_size < r->guest_phys_addr ||
            r->userspace_addr + r->memory_size < r->userspace_addr ||
            r->mmap_offset + r->memory_size < r->mmap_offset ||
            r->mmap_offset + r->memory_size > (uint64_t)SIZE_MAX) {
            return error_setf(err, EINVAL, "memory region %d wraps the "
                              "address space", i);
        }
        for (int j = 0; j < i; j++) {
            const VhostUserMemRegion *o = &regs[j];
            if (r->guest_phys_addr < o->guest_phys_addr + o->memory_size &&
                o->guest_phys_addr < r->guest_phys_addr + r->memory_size) {
                return error_setf(err, EINVAL, "memory regions %d and %d "
                                  "overlap in guest memory", j, i);
            }
            if (r->userspace_addr < o->userspace_addr + o->memory_size &&
                o->userspace_addr < r->userspace_addr + r->memory_size) {
                return error_setf(err, EINVAL, "memory regions %d and %d "
                                  "overlap in the front end's address "
                                  "space", j, i);
            }
        }
    }
    return 0;
}

static VhostMem *mem_new(const VhostUserMemRegion *regs, int n)
{
    VhostMem *m = calloc(1, sizeof(*m));
    if (!m) {
        return NULL;
    }
    atomic_init(&m->refcnt, 1);
    for (int i = 0; i < n; i++) {
        m->r[i].gpa = regs[i].guest_phys_addr;
        m->r[i].size = regs[i].memory_size;
        m->r[i].uva = regs[i].userspace_addr;
    }
    return m;
}

/* A table for the front end's regions once they passed check_regions,
 * no region mapped yet. */
static int mem_new_checked(const VhostUserMemRegion *regs, int n,
                           VhostMem **out, Error *err)
{
    int ret = check_regions(regs, n, err);
    if (ret < 0) {
        return ret;
    }
    *out = mem_new(regs, n);
    return *out ? 0 : error_setf(err, ENOMEM, "out of memory");
}

int vhost_mem_map(const VhostUserMemRegion *regs, int n, const int *fds,
                  VhostMem **out, Error *err)
{
    VhostMem *m;
    int ret = mem_new_checked(regs, n, &m, err);
    if (ret < 0) {
        return ret;
    }
    for (int i = 0; i < n; i++) {
        struct stat st;
        uint64_t need = regs[i].mmap_offset + regs[i].memory_size;
        if (fstat(fds[i], &st) < 0 || !S_ISREG(st.st_mode)) {
            ret = error_setf(err, EINVAL, "memory region %d: its fd is not "
                             "a shared memory file", i);
            goto fail;
        }
        if ((uint64_t)st.st_size < need) {
            ret = error_setf(err, EINVAL, "memory region %d: %llu bytes at "
                             "offset %llu, but its file has %lld", i,
                             (unsigned long long)regs[i].memory_size,
                             (unsigned long long)regs[i].mmap_offset,
                             (long long)st.st_size);
            goto fail;
        }
        void *p = mmap(NULL, (size_t)need, PROT_READ | PROT_WRITE,
                       MAP_SHARED, fds[i], 0);
        if (p == MAP_FAILED) {
            ret = error_setf(err, errno, "memory region %d: cannot map it: "
                             "%s", i, strerror(errno));
            goto fail;
        }
        m->r[i].map = p;
        m->r[i].map_len = (size_t)need;
        m->r[i].host = (uint8_t *)p + regs[i].mmap_offset;
        m->n = i + 1;
    }
    *out = m;
    return 0;

fail:
    vhost_mem_unref(m);
    return ret;
}

int vhost_mem_local(const VhostUserMemRegion *regs, int n, void *const *host,
                    VhostMem **out, Error *err)
{
    VhostMem *m;
    int ret = mem_new_checked(regs, n, &m, err);
    if (ret < 0) {
        return ret;
    }
    for (int i = 0; i < n; i++) {
        m->r[i].host = host[i];
    }
    m->n = n;
    *out = m;
    return 0;
}

VhostMem *vhost_mem_ref(VhostMem *m)
{
    if (m) {
        atomic_fetch_add(&m->refcnt, 1);
    }
    return m;
}

void vhost_mem_unref(VhostMem *m)
{
    if (!m || atomic_fetch_sub(&m->refcnt, 1) != 1) {
        return;
    }
    for (int i = 0; i < m->n; i++) {
        if (m->r[i].map) {
            munmap(m->r[i].map, m->r[i].map_len);
        }
    }
    free(m);
}

/* The region holding addr, a guest physical address or (by_uva) a front
 * end's virtual one, and addr's offset in it; NULL when none does. */
static const VhostMemRegion *region_of(const VhostMem *m, bool by_uva,
                                       uint64_t addr, uint64_t *off)
{
    for (int i = 0; i < m->n; i++) {
        const VhostMemRegion *r = &m->r[i];
        uint64_t base = by_uva ? r->uva : r->gpa;
        if (addr >= base && addr - base < r->size) {
            *off = addr - base;
            return r;
        }
    }
    return NULL;
}

/* Regions do not overlap (in either space), so the one holding addr is
 * the only one that can hold the whole range. */
static void *range_of(const VhostMem *m, bool by_uva, uint64_t addr,
                      uint64_t len)
{
    uint64_t off;
    const VhostMemRegion *r = region_of(m, by_uva, addr, &off);
    if (len == 0) {
        len = 1;
    }
    return r && len <= r->size - off ? r->host + off : NULL;
}

void *vhost_mem_gpa(const VhostMem *m, uint64_t gpa, uint64_t len)
{
    return range_of(m, false, gpa, len);
}

void *vhost_mem_uva(const VhostMem *m, uint64_t uva, uint64_t len)
{
    return range_of(m, true, uva, len);
}

int vhost_mem_gpa_iov(const VhostMem *m, uint64_t gpa, uint64_t len,
                      struct iovec *iov, int *niov, int max)
{
    while (len > 0) {
        uint64_t off;
        const VhostMemRegion *r = region_of(m, false, gpa, &off);
        if (!r) {
            return -EFAULT;
        }
        if (*niov >= max) {
            return -E2BIG;
        }
        uint64_t in_region = r->size - off;
        uint64_t take = len < in_region ? len : in_region;
        iov[*niov].iov_base = r->host + off;
        iov[*niov].iov_len = (size_t)take;
        (*niov)++;
        gpa += take;   /* cannot wrap: take <= what is left of r */
        len -= take;
    }
    return 0;
}
