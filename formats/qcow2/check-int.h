/*
 * check-int.h - qcow2 check's state and the pieces its files share:
 * check.c (the passes, messages, file reads), check-counts.c (the counted
 * references), check-relocate.c (tables past the end of the file given
 * new clusters), check-walk.c (counting them), check-refcounts.c
 * (comparing with the stored refcounts), check-rebuild.c (new refcount
 * structures from the counts) and check-copied.c (COPIED flags).
 * Everything here needs s->lock held.
 */
#ifndef IMGTOOL_FORMATS_QCOW2_CHECK_INT_H
#define IMGTOOL_FORMATS_QCOW2_CHECK_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/qcow2/qcow2.h"

/* Reference-count array entries saturate here; real refcounts above it are
 * reported as overflow like the refcount width's maximum. */
#define COUNT_MAX UINT32_MAX

/* Per refcount table entry.  A block past the end of the file reads as
 * zeroes (like any missing tail); a misaligned one cannot be read at all. */
enum { RB_NONE = 0, RB_COUNTED = 1, RB_BAD = 2, RB_OUTSIDE = 3 };

typedef struct Check {
    BlockNode *n;
    Qcow2State *s;
    BlockCheckResult *res;
    int fix;
    bool quiet;
    uint64_t cs;              /* cluster size */
    uint64_t file_len;
    uint64_t nb_clusters;     /* clusters of the image file (rounded up) */
    /* One past the highest cluster counted: metadata may reach less
     * than a cluster past the end of the file (check_count_region), and
     * those clusters are compared too, as qemu-img compares them. */
    uint64_t ref_end;
    /* Clusters whose count reached the refcount width's maximum and
     * stopped there (reported as overflow): their true number of
     * references is unknown, so a rebuild must not take the old
     * refcount structures' share off them.  Past OVERFLOW_MAX of them,
     * overflow_many says so for all. */
    uint64_t *overflowed;
    size_t n_overflowed;
    bool overflow_many;
    /* Counted references per host cluster, in chunks allocated when first
     * touched: memory follows what the metadata references, not the
     * (possibly sparse, possibly hostile) extent of the file. */
    uint32_t **chunks;
    uint64_t nchunks;
    uint64_t refs_len;        /* clusters covered by chunks[] */
    uint8_t *rb_state;        /* per refcount table entry: RB_* */
    bool reftable_counted;
    bool rebuild;
    bool complete_snapshots;  /* rewrite the snapshot table at the end */
    bool snap_table_counted;  /* its clusters hold a reference to free */
    uint64_t next_contig;     /* fragmentation: where the next cluster
                                 would be if the image were contiguous */
    uint64_t highest;         /* highest used cluster + 1 */
    uint8_t *l2buf;
    /* The refcount blocks' offsets, sorted, for check_may_rewrite (a
     * hostile image can ask it once per L1/L2 entry): valid while
     * rb_index_gen equals the state's refcount_table_gen. */
    uint64_t *rb_index;
    uint64_t rb_index_n;
    uint64_t rb_index_gen;
    bool rb_index_valid;
} Check;

/* check.c */

/* One line of findings to the caller's message callback (none when
 * quiet). */
void check_say(Check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Past the end of the file but before QCOW2_READ_LIMIT, reads return
 * zeroes; beyond it they fail. */
bool check_readable(uint64_t off, uint64_t len);
/* Reads [off, off + len) of the image file; bytes past its end read as
 * zero. */
int check_read_file(Check *c, uint64_t off, uint64_t len, void *buf);
/* Whether a repair may rewrite a table at [off, off + len) (self: the
 * table's own offset): never over the header or other metadata. */
bool check_may_rewrite(Check *c, uint64_t off, uint64_t len, uint64_t self);

/* check-counts.c: counted references per host cluster */

/* Makes the counts cover clusters [0, need); -ENOMEM. */
int check_grow_refs(Check *c, uint64_t need);
/* Count of cluster k (0 beyond what is covered). */
uint64_t check_ref_at(const Check *c, uint64_t k);
/* The counter of cluster k (< refs_len), allocating its chunk; NULL when
 * out of memory. */
uint32_t *check_ref_slot(Check *c, uint64_t k);
void check_ref_set(Check *c, uint64_t k, uint32_t v);
/* Some cluster of [lo, hi) is counted. */
bool check_range_used(const Check *c, uint64_t lo, uint64_t hi);
/* One past the last counted cluster. */
uint64_t check_used_end(const Check *c);
/* Cluster k's count saturated: its true count is unknown. */
bool check_saturated(const Check *c, uint64_t k);
/* Counts one reference to every cluster of [off, off + size): 1 when
 * counted, 0 when not (past the end of the file: a corruption, reported),
 * negative on allocation failure. */
int check_count_region(Check *c, uint64_t off, uint64_t size);

/* check-relocate.c */

/* With -r all, before anything is counted: an active L1 table or bitmap
 * tables lying wholly past the end of the file get fresh clusters at its
 * end (an empty L1, all-ones bitmap tables), switched to by one header
 * write; the file (c->file_len) grows. */
int check_relocate_past_end(Check *c);

/* check-walk.c */

/* Counts the references of everything that owns host clusters. */
int check_count_all(Check *c);

/* check-refcounts.c */

/* Stored refcount of cluster k, never read through a refcount block
 * known to be unusable (-EIO). */
int check_stored_refcount(Check *c, uint64_t k, uint64_t *rc);
/* Compares counts and stored refcounts over every cluster, repairing
 * per fix (0: only reports, and sets c->rebuild where only a rebuild
 * settles it). */
int check_compare_refcounts(Check *c, int fix);

/* check-rebuild.c */

/* New refcount table and blocks from the counts, switched to in one
 * header write; the old structures are free in them. */
int check_rebuild_refcounts(Check *c);

/* check-copied.c */

/* Compares (and with -r repairs) the COPIED flags of the active L1 and L2
 * tables with the stored refcounts. */
int check_copied(Check *c);

#endif
