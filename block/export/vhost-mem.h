/*
 * vhost-mem.h - a vhost-user front end's memory table: the guest memory
 * regions it shared with us (one fd each), mapped into this process, and
 * the translation of guest physical addresses (descriptors) and front-end
 * virtual addresses (ring locations) into pointers here.
 *
 * A table is immutable once built and reference-counted: every request
 * holds a reference to the table its buffers were translated with, so a
 * SET_MEM_TABLE that replaces the table never unmaps memory an I/O still
 * reads or writes; the old mapping goes when its last request completes.
 */
#ifndef IMGTOOL_EXPORT_VHOST_MEM_H
#define IMGTOOL_EXPORT_VHOST_MEM_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "block/block.h"
#include "block/export/vhost-user-proto.h"

typedef struct VhostMemRegion {
    uint64_t gpa;          /* guest physical start */
    uint64_t size;
    uint64_t uva;          /* the front end's virtual address of it */
    uint8_t *host;         /* where it is mapped here */
    void *map;             /* the mmap (NULL: memory not ours to unmap) */
    size_t map_len;
} VhostMemRegion;

typedef struct VhostMem {
    atomic_int refcnt;
    int n;
    VhostMemRegion r[VHOST_USER_MAX_REGIONS];
} VhostMem;

/* Maps n regions described by regs, region i from fds[i] (the fds stay
 * the caller's: the mappings keep what they need).  Refuses overlapping
 * or empty regions, sizes that overflow, fds that are not files large
 * enough to back what the region claims, and failed mappings, with one
 * line in err.  The new table has one reference. */
int vhost_mem_map(const VhostUserMemRegion *regs, int n, const int *fds,
                  VhostMem **out, Error *err);
/* A table over memory this process already has (tests, fuzzing):
 * region i is host[i], nothing is unmapped at the end. */
int vhost_mem_local(const VhostUserMemRegion *regs, int n, void *const *host,
                    VhostMem **out, Error *err);

VhostMem *vhost_mem_ref(VhostMem *m);
void vhost_mem_unref(VhostMem *m);   /* NULL is fine */

/* A pointer to [gpa, gpa + len) when the whole range lies in one region,
 * else NULL.  len 0 is treated as 1. */
void *vhost_mem_gpa(const VhostMem *m, uint64_t gpa, uint64_t len);
/* The same for a front-end virtual address (ring locations). */
void *vhost_mem_uva(const VhostMem *m, uint64_t uva, uint64_t len);
/* Appends the iovecs covering [gpa, gpa + len) (split where it crosses
 * from one region into an adjacent one) to iov[*niov..max).  Returns 0,
 * -EFAULT when part of the range is not guest memory, -E2BIG when more
 * than max elements would be needed. */
int vhost_mem_gpa_iov(const VhostMem *m, uint64_t gpa, uint64_t len,
                      struct iovec *iov, int *niov, int max);

#endif
