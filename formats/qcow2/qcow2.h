/*
 * qcow2.h - internal interface of the qcow2 driver (formats/qcow2/).
 *
 * Shared by the driver files (header, cache, refcount, cluster, io,
 * create ...) and by check*.c / measure.c.  Not a public API: only files in
 * this directory include it.  Signatures here are stable: add, don't
 * change.  The on-disk format's constants and byte accessors are in
 * ondisk.h, which this includes.
 *
 * Invariants the driver keeps:
 *  - every field of Qcow2State below `lock` is read and written only with
 *    s->lock held, except the immutable geometry (cluster_bits, sizes,
 *    feature flags) which is fixed at open;
 *  - on disk, metadata never points at a cluster whose refcount is 0:
 *    refcount blocks are written (and flushed) before the L2 tables that
 *    reference newly allocated clusters, and refcount decrements are
 *    written only after the L2/L1 entries that dropped the reference;
 *  - the COPIED flag (bit 63) is set in active L1/L2 entries exactly when
 *    the referenced cluster has refcount 1; a cluster without it is never
 *    written in place.
 */
#ifndef IMGTOOL_QCOW2_H
#define IMGTOOL_QCOW2_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "block/driver.h"
#include "formats/qcow2/ondisk.h"

/* ------------------------------------------------------------------ */
/* In-memory state                                                     */

/* A header extension we do not interpret; kept verbatim and written back
 * when the header is rewritten. */
typedef struct Qcow2Extension {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
} Qcow2Extension;

typedef struct Qcow2FeatureName {
    uint8_t type;   /* QCOW2_FEAT_* */
    uint8_t bit;
    char name[QCOW2_FEATURE_NAME_LEN + 1];
} Qcow2FeatureName;

typedef struct Qcow2Snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str;
    char *name;
    uint64_t vm_state_size;
    uint64_t disk_size;     /* from extra data, or the image size */
    uint32_t extra_size;    /* bytes of extra data in the entry */
} Qcow2Snapshot;

/* A small write-back cache of cluster-sized metadata tables (L2 tables or
 * refcount blocks).  Entries are pinned while in use (ref > 0) and never
 * evicted while pinned.  All calls need s->lock. */
typedef struct Qcow2CacheEntry {
    uint64_t offset;        /* host offset, 0 = empty slot */
    uint8_t *data;          /* cluster_size bytes, big-endian as on disk */
    int ref;
    bool dirty;
    uint64_t lru;
} Qcow2CacheEntry;

typedef struct Qcow2State Qcow2State;

typedef struct Qcow2Cache {
    Qcow2State *s;
    Qcow2CacheEntry *entries;
    int size;
    uint64_t lru_counter;
    bool is_refcount;       /* refcount blocks (else L2 tables) */
    /* Entry i's table is tables + i * cluster_size: one reserved mapping
     * whose pages cost memory only once used. */
    uint8_t *tables;
    /* Hash of offset -> entry: heads of chains through `next` (-1 ends). */
    int *hash_head, *hash_next;
    uint32_t hash_mask;
    /* cache-clean-interval (seconds, 0 = never): tables unused for that
     * long give their memory back. */
    uint64_t clean_interval;
    uint64_t clean_time, clean_lru;
} Qcow2Cache;

/* Cache sizes from the open options (l2-cache-size, refcount-cache-size,
 * cache-size, l2-cache-entry-size, cache-clean-interval) as QEMU reads
 * them; entries per cache and the clean interval. */
typedef struct Qcow2CacheConfig {
    int l2_entries, refcount_entries;
    uint64_t clean_interval;
} Qcow2CacheConfig;
int qcow2_cache_config(Qcow2State *s, KVList *opts, Qcow2CacheConfig *cfg,
                       Error *err);

/* A guest range being allocated by a writer that dropped s->lock for its
 * data I/O; overlapping allocating requests wait for it. */
typedef struct Qcow2InFlight {
    uint64_t start, end;    /* guest bytes, cluster aligned */
    struct Qcow2InFlight *next;
} Qcow2InFlight;

/* A refcount decrement postponed until the L2/L1 change that dropped the
 * reference is on disk. */
typedef struct Qcow2PendingFree {
    uint64_t offset;        /* host offset, cluster aligned */
    uint64_t nb_clusters;
} Qcow2PendingFree;

struct Qcow2State {
    BlockNode *node;

    /* Header (host byte order). */
    uint32_t version;          /* 2 or 3 */
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint64_t size;             /* virtual size */
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;   /* refcount_bits = 1 << refcount_order */
    uint32_t header_length;
    uint8_t compression_type;
    uint64_t backing_file_offset_raw;  /* where the name sits in cluster 0 */
    /* Bytes of the header beyond the fields we know (header_length >
     * 112); preserved on rewrite. */
    uint8_t *header_tail;
    uint32_t header_tail_len;

    /* Derived geometry. */
    uint32_t refcount_bits;
    uint64_t refcount_max;     /* (1 << refcount_bits) - 1 */
    uint32_t refblock_bits;    /* log2(entries per refcount block) */
    uint64_t refblock_entries;
    bool extended_l2;
    uint32_t l2_entry_size;    /* 8 or 16 */
    uint32_t l2_bits;          /* log2(entries per L2 table) */
    uint64_t l2_entries;
    uint64_t subcluster_size;  /* == cluster_size without extended_l2 */
    uint32_t subcluster_bits;
    uint32_t subclusters_per_cluster; /* 1 or 32 */
    uint32_t csize_shift;      /* compressed descriptor: x = 62 - (cb - 8) */
    uint64_t csize_mask;
    uint64_t coffset_mask;
    bool lazy_refcounts;
    bool has_data_file;
    bool data_file_raw;

    /* Header extensions. */
    char *backing_file;        /* NULL when none */
    char *backing_format;      /* NULL when absent */
    char *data_file_name;      /* from the extension, or NULL */
    Qcow2FeatureName *features;
    int nb_features;
    Qcow2Extension *unknown_exts;  /* incl. bitmaps and crypto */
    int nb_unknown_exts;
    Qcow2Snapshot *snapshots;
    int nb_snapshots_loaded;
    uint64_t snapshots_size;   /* bytes of the snapshot table */
    /* Padding after the last entry of the table as read (0..7): qemu-img
     * counts the table up to the last entry's end, and check counts it
     * as qemu-img does (whether it reaches a cluster past the end of the
     * file can depend on those bytes).  0 once the table is rewritten. */
    uint32_t snapshots_tail_pad;
    /* Opened for check (BLOCK_O_CHECK) with a snapshot table that cannot
     * be parsed past entry nb_snapshots_loaded: why, else "".  Only the
     * entries before it are loaded; nb_snapshots keeps the header's
     * count until `check -r all` cuts the table there. */
    char snapshot_damage[160];
    /* How check takes that damage, as qemu-img check does (it reads the
     * table itself): SNAPSHOT_DAMAGE_CORRUPT is a corruption (-r all cuts
     * the table); _UNREADABLE_UNLESS_CUT is a failed check (exit 1)
     * unless -r all, which cuts; _UNREADABLE a failed check even then
     * (a misaligned table: nothing says where it is). */
    enum {
        SNAPSHOT_DAMAGE_CORRUPT,
        SNAPSHOT_DAMAGE_UNREADABLE_UNLESS_CUT,
        SNAPSHOT_DAMAGE_UNREADABLE,
    } snapshot_damage_kind;

    bool read_only;
    int open_flags;

    /* Serialises the data writes into fresh clusters that grow the file
     * (write.c: through the page cache, or when fallocate failed): the
     * kernel serialises them anyway, and many threads contending for the
     * inode lock there cost more CPU than waiting here. */
    pthread_mutex_t grow_lock;

    /* Everything below needs s->lock. */
    pthread_mutex_t lock;
    pthread_cond_t inflight_cond;
    Qcow2InFlight *inflight;

    uint64_t *l1_table;        /* host byte order, l1_size entries */
    uint64_t *refcount_table;  /* host byte order */
    uint64_t refcount_table_size;  /* entries */
    /* Bumped whenever refcount_table changes, so that what is derived
     * from it (check's index of refcount blocks) knows to rebuild. */
    uint64_t refcount_table_gen;

    Qcow2Cache l2_cache;
    Qcow2Cache refcount_cache;
    /* Set when the refcount cache holds increments not yet on disk: L2
     * tables must not be written before those. */
    bool refcount_unflushed;

    Qcow2PendingFree *pending_frees;
    size_t nb_pending_frees, cap_pending_frees;

    uint64_t free_cluster_index;   /* allocation hint */
    /* One past the last host cluster we know to be in use or allocated
     * (>= file length at open). */
    uint64_t alloc_end;
    bool dirty_set;            /* we set the dirty bit (lazy refcounts) */
    /* map.c: whether the image looks metadata-preallocated (its
     * refcounts name clearly more clusters than the host file holds):
     * then block status asks the file whether allocated clusters are
     * holes.  Decided at the first block status, as QEMU does. */
    bool prealloc_checked;
    bool debug_events;       /* a filter below takes named events */
    bool prealloc_detected;
    /* Guest data written into newly allocated clusters since the last
     * flush: it must be on disk before an L2 table pointing at it. */
    bool data_unflushed;
    /* Bumped when refcounts are dirtied or an in-flight write finishes:
     * a flush that ran without s->lock may clear the two flags above
     * only if it did not move meanwhile. */
    uint64_t unflushed_gen;
    /* Host byte where the next compressed cluster may be packed (inside
     * the last cluster allocated for compressed data); 0 = none. */
    uint64_t compressed_next;
    /* encrypt.format=luks (crypto.c): the unlocked volume (NULL when not
     * encrypted; opened without a key for header-only opens) and where
     * its header lives. */
    struct LuksVolume *crypto;
    uint64_t crypto_offset, crypto_length;
    /* Legacy encrypt.format=aes (read-only): AES-128-CBC, plain64 IVs
     * from the guest offset, key = the passphrase's first 16 bytes. */
    bool aes;
    bool aes_keyed;
    uint8_t aes_key[16];
    /* Persistent dirty bitmaps (bitmap-*.c): what the image holds on disk;
     * NULL when no bitmaps were loaded. */
    struct Qcow2Bitmaps *bitmaps;
};

static inline Qcow2State *qcow2_state(BlockNode *n)
{
    return (Qcow2State *)n->opaque;
}

/* The node holding guest data clusters (data file or the image file). */
static inline BlockNode *qcow2_data_node(Qcow2State *s)
{
    return s->has_data_file ? block_data_file(s->node) : block_file(s->node);
}

/* ------------------------------------------------------------------ */
/* L2 entry decoding                                                   */

typedef enum {
    QCOW2_CLUSTER_UNALLOCATED,   /* reads from backing (or zeroes) */
    QCOW2_CLUSTER_ZERO_PLAIN,    /* zero flag, no host cluster */
    QCOW2_CLUSTER_ZERO_ALLOC,    /* zero flag with a preallocated cluster */
    QCOW2_CLUSTER_NORMAL,        /* data at host_offset */
    QCOW2_CLUSTER_COMPRESSED,
} Qcow2ClusterType;

typedef enum {
    QCOW2_SUBCLUSTER_UNALLOCATED,     /* backing / zeroes */
    QCOW2_SUBCLUSTER_ZERO,            /* reads as zero */
    QCOW2_SUBCLUSTER_DATA,            /* data at host offset */
    QCOW2_SUBCLUSTER_COMPRESSED,
    QCOW2_SUBCLUSTER_INVALID,         /* bitmap says alloc+zero, or alloc
                                         without host offset */
} Qcow2SubclusterType;

typedef struct Qcow2L2Entry {
    uint64_t entry;          /* raw first word */
    uint64_t bitmap;         /* raw second word (extended L2), else 0 */
    Qcow2ClusterType type;
    uint64_t host_offset;    /* cluster offset (normal/zero_alloc), or the
                                compressed data's byte offset */
    uint64_t compressed_size;/* bytes to read for a compressed cluster
                                (sector-rounded upper bound) */
    bool copied;             /* bit 63 */
} Qcow2L2Entry;

/* The entry names a host cluster (data, or a preallocated zero one). */
static inline bool qcow2_entry_has_host(const Qcow2L2Entry *e)
{
    return e->type == QCOW2_CLUSTER_NORMAL ||
           e->type == QCOW2_CLUSTER_ZERO_ALLOC;
}

/* Decodes a raw entry (entry, bitmap) into *out. */
void qcow2_decode_l2_entry(const Qcow2State *s, uint64_t entry,
                           uint64_t bitmap, Qcow2L2Entry *out);
/* Type of subcluster sc (0..31; always 0 without extended L2). */
Qcow2SubclusterType qcow2_subcluster_type(const Qcow2State *s,
                                          const Qcow2L2Entry *e, int sc);
/* Raw words of entry idx in an L2 table buffer (on-disk byte order). */
uint64_t qcow2_l2_get_entry(const Qcow2State *s, const uint8_t *table,
                            uint64_t idx);
uint64_t qcow2_l2_get_bitmap(const Qcow2State *s, const uint8_t *table,
                             uint64_t idx);
void qcow2_l2_set(const Qcow2State *s, uint8_t *table, uint64_t idx,
                  uint64_t entry, uint64_t bitmap);

/* ------------------------------------------------------------------ */
/* Metadata cache (cache.c); all need s->lock                          */

int qcow2_cache_init(Qcow2State *s, Qcow2Cache *c, int size,
                     bool is_refcount);
void qcow2_cache_set_clean_interval(Qcow2Cache *c, uint64_t seconds);
void qcow2_cache_destroy(Qcow2Cache *c);
/* Pins the table at host offset `offset`, reading it from the image
 * file.  *table stays valid until qcow2_cache_put. */
int qcow2_cache_get(Qcow2Cache *c, uint64_t offset, uint8_t **table);
/* Like qcow2_cache_get for a table already in the cache (true); never
 * reads (false: not cached). */
bool qcow2_cache_peek(Qcow2Cache *c, uint64_t offset, uint8_t **table);
/* Like get but does not read: the table is zero-filled (for a table
 * that is being created). */
int qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset, uint8_t **table);
void qcow2_cache_put(Qcow2Cache *c, uint8_t **table);
void qcow2_cache_mark_dirty(Qcow2Cache *c, const uint8_t *table);
/* Writes back every dirty entry (honouring the refcount-before-L2
 * order); does not flush the file. */
int qcow2_cache_writeback(Qcow2Cache *c);
/* Drops the entry for `offset` if cached (the cluster was freed). */
void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset);
/* Drops every entry without writing (after check rebuilt metadata). */
void qcow2_cache_invalidate(Qcow2Cache *c);

/* ------------------------------------------------------------------ */
/* Refcounts (refcount.c, refcount-free.c); all need s->lock           */

/* Host offset of the refcount block for table index rti, 0 when none;
 * -EIO (after flagging corruption) when the entry is bad. */
int64_t qcow2_refblock_offset(Qcow2State *s, uint64_t rti);
/* Refcount of host cluster `cluster_index` (offset >> cluster_bits);
 * clusters beyond the refcount table read as 0. */
int qcow2_get_refcount(Qcow2State *s, uint64_t cluster_index,
                       uint64_t *refcount);
/* Sets the refcount of one host cluster, allocating a refcount block (and
 * growing the refcount table) if needed.  For check's repairs. */
int qcow2_set_refcount(Qcow2State *s, uint64_t cluster_index,
                       uint64_t refcount);
/* Adds `delta` (may be negative) to the refcount of every cluster in
 * [offset, offset + len).  -ERANGE on overflow/underflow. */
int qcow2_update_refcount(Qcow2State *s, uint64_t offset, uint64_t len,
                          int64_t delta);
/* Allocates nb contiguous host clusters with refcount 1; returns the host
 * offset (> 0) or a negative errno. */
int64_t qcow2_alloc_clusters(Qcow2State *s, uint64_t nb);
/* Allocates exactly the clusters at [offset, offset + nb clusters) (they
 * must be free); for data_file_raw / preallocation. */
int qcow2_alloc_clusters_at(Qcow2State *s, uint64_t offset, uint64_t nb);
/* Drops one reference to [offset, offset + nb clusters) once the metadata
 * that referenced it is on disk (see qcow2_apply_pending_frees). */
int qcow2_free_clusters_deferred(Qcow2State *s, uint64_t offset,
                                 uint64_t nb);
/* Writes back L2 tables so that the deferred frees are safe, then applies
 * them. */
int qcow2_apply_pending_frees(Qcow2State *s);
/* Takes the pending frees out of s (their L2/L1 changes must be written
 * back already) to apply them with qcow2_apply_frees once the file is
 * flushed; frees deferred meanwhile stay pending. */
void qcow2_take_pending_frees(Qcow2State *s, Qcow2PendingFree **list,
                              size_t *n);
/* Applies and frees a list from qcow2_take_pending_frees. */
int qcow2_apply_frees(Qcow2State *s, Qcow2PendingFree *list, size_t n);
/* Frees the clusters of a compressed cluster descriptor (deferred). */
int qcow2_free_compressed_deferred(Qcow2State *s, const Qcow2L2Entry *e);
/* Writes back the refcount cache and flushes the file: the refcounts
 * are on disk. */
int qcow2_sync_refcounts(Qcow2State *s);
/* Cuts the file after the last cluster still in use (make_empty, shrink);
 * call only once the refcounts are on disk.  Best effort. */
void qcow2_cut_free_tail(Qcow2State *s);

/* Refcount table geometry: index in the table and in the block. */
static inline uint64_t qcow2_reftable_index(const Qcow2State *s,
                                            uint64_t cluster_index)
{
    return cluster_index >> s->refblock_bits;
}
static inline uint64_t qcow2_refblock_index(const Qcow2State *s,
                                            uint64_t cluster_index)
{
    return cluster_index & (s->refblock_entries - 1);
}
/* Entry i of a refcount block buffer (on-disk layout). */
uint64_t qcow2_refblock_get(const Qcow2State *s, const uint8_t *block,
                            uint64_t i);
void qcow2_refblock_set(const Qcow2State *s, uint8_t *block, uint64_t i,
                        uint64_t value);
/* The same for a block of refcount_order `order` (not necessarily the
 * image's). */
void qcow2_refblock_set_order(uint32_t order, uint8_t *block, uint64_t i,
                              uint64_t value);
/* The largest refcount of refcount_order `order`. */
static inline uint64_t qcow2_refcount_max_for(uint32_t order)
{
    return order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
}
/* Sets s's refcount width and what follows from it (bits, maximum,
 * entries per block); cluster_bits must be set. */
void qcow2_set_refcount_order(Qcow2State *s, uint32_t order);
/* Writes the in-memory refcount table entries [first, first + n) to
 * disk. */
int qcow2_write_reftable(Qcow2State *s, uint64_t first, uint64_t n);

/* New refcount structures (refcount-build.c): blocks written from a set
 * of counts into clusters the caller reserved, then the table, then one
 * header write switches to them and s follows. */
typedef struct Qcow2RefcountLayout {
    uint32_t order;            /* refcount_order of the blocks written */
    /* The new table, host byte order, table_entries entries (a whole
     * number of clusters) to be written at table_offset; taken over.
     * Entries of ranges without a new block stay as given. */
    uint64_t *table;
    uint64_t table_entries;
    uint64_t table_offset;
    /* blocks[r] != 0: host offset of a new block for range r (clusters
     * [r << bits, (r + 1) << bits), bits from order), written from fill
     * and entered in table[r]. */
    const uint64_t *blocks;
    uint64_t nblocks;
    /* Sets the counts of clusters [first, first + n) in block (zeroed,
     * of width order, e.g. with qcow2_refblock_set_order); 0 or -errno. */
    int (*fill)(void *opaque, uint64_t first, uint64_t n, uint8_t *block);
    void *opaque;
    /* Blocks written so far, of nblocks + 1 (the table last); may be
     * NULL. */
    BlockProgressFn *progress;
    void *progress_opaque;
} Qcow2RefcountLayout;
/* How far qcow2_install_refcounts got when it failed: nothing written
 * (no memory), writing blocks, writing the table, or switching the
 * header (which may then name the new structures, or not). */
typedef enum {
    QCOW2_REFCOUNTS_NOMEM,
    QCOW2_REFCOUNTS_BLOCKS,
    QCOW2_REFCOUNTS_TABLE,
    QCOW2_REFCOUNTS_SWITCH,
} Qcow2RefcountStage;
/* Puts the structures l describes in place; a new order also becomes
 * s's.  The old structures stay allocated: freeing them is the caller's,
 * once this succeeded.  *stage (may be NULL) says where a failure
 * happened. */
int qcow2_install_refcounts(Qcow2State *s, Qcow2RefcountLayout *l,
                            Qcow2RefcountStage *stage);

/* Number of clusters needed for refcount metadata (table + blocks) to
 * cover `clusters` data/metadata clusters including themselves. */
uint64_t qcow2_refcount_metadata_clusters(uint64_t clusters,
                                          uint32_t cluster_bits,
                                          uint32_t refcount_order);

/* ------------------------------------------------------------------ */
/* Cluster mapping (cluster.c); all need s->lock                       */

/* Entry of guest cluster containing guest_offset (unallocated when its
 * L2 table is not allocated). */
int qcow2_get_l2_entry(Qcow2State *s, uint64_t guest_offset,
                       Qcow2L2Entry *out);
/* Pins the L2 table for guest_offset; allocates it when `allocate` (else
 * *table = NULL when there is none).  *index = entry index in it. */
/* qcow2_get_l2_table without I/O: 1 when the answer is known (*table is
 * the cached table to put back, or NULL: no L2 table for that offset),
 * 0 when the table would have to be read. */
int qcow2_get_l2_table_cached(Qcow2State *s, uint64_t guest_offset,
                              uint8_t **table, uint64_t *index);
int qcow2_get_l2_table(Qcow2State *s, uint64_t guest_offset, bool allocate,
                       uint8_t **table, uint64_t *index);
/* Writes L1 entries [first, first + n) from s->l1_table to disk. */
int qcow2_write_table64(Qcow2State *s, const uint64_t *table,
                        uint64_t table_offset, uint64_t first, uint64_t n);
int qcow2_write_l1(Qcow2State *s, uint64_t first, uint64_t n);
/* Reads a table of n 64-bit big-endian entries at offset (an L1 table, a
 * bitmap table) into a malloc'd host-order array. */
int qcow2_read_table64(Qcow2State *s, uint64_t offset, uint32_t n,
                       uint64_t **out);
/* Reads an L1 table (active or snapshot) of l1_size entries at offset into
 * a malloc'd host-order array. */
int qcow2_read_l1(Qcow2State *s, uint64_t offset, uint32_t l1_size,
                  uint64_t **l1);
/* Reads an L2 table cluster directly (bypassing the cache; check). */
int qcow2_read_l2_table(Qcow2State *s, uint64_t offset, uint8_t *buf);
/* Writes an L2 table cluster directly (repair), dropping any cached
 * copy. */
int qcow2_write_l2_table(Qcow2State *s, uint64_t offset, const uint8_t *buf);

/* ------------------------------------------------------------------ */
/* Header (header.c: reading, header-write.c: rewriting)               */

/* Parses and validates the header of block_file(n) into s.  */
int qcow2_read_header(Qcow2State *s, Error *err);
/* The first header extension of `type` among those kept verbatim
 * (s->unknown_exts: bitmaps, crypto and any we do not know), or NULL. */
Qcow2Extension *qcow2_find_ext(Qcow2State *s, uint32_t type);
/* n bytes of a name stored without a terminator, as a string. */
char *qcow2_dup_bytes(const uint8_t *p, size_t n);
/* Rewrites the header cluster (header + extensions + backing name) from
 * s, preserving unknown extensions and header bytes. */
int qcow2_write_header(Qcow2State *s, Error *err);
/* Builds the header cluster (cluster_size bytes) from s into buf;
 * returns the bytes used or a negative errno. */
int qcow2_build_header(Qcow2State *s, uint8_t *buf, Error *err);
/* Bytes of the header cluster the header on disk uses (fields,
 * extensions up to the end marker, backing file name wherever it sits),
 * or a negative errno. */
int qcow2_header_used(Qcow2State *s, Error *err);
/* Writes the header built from s over one that used old_used bytes
 * (qcow2_header_used), so that a crash leaves one or the other, also
 * when the new header takes more than one sector. */
int qcow2_write_header_switch(Qcow2State *s, int old_used, Error *err);
/* Sets the header fields of a `version` image that uses none of v3's
 * additions (no feature bits, 16-bit refcounts, zlib, the shortest header
 * length): what a v2 header implies, and what a compat change writes. */
void qcow2_set_plain_header(Qcow2State *s, uint32_t version);
/* Sets/clears incompatible feature bits with a single header write. */
int qcow2_update_incompat(Qcow2State *s, uint64_t set, uint64_t clear);
/* Marks the image corrupt (unless opened for check) and logs why. */
void qcow2_signal_corruption(Qcow2State *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void qcow2_free_header(Qcow2State *s);

/* Everything the driver caches written back and the file flushed. */
int qcow2_flush_caches(Qcow2State *s);
/* The same for a guest flush (cache.c): s->lock is dropped while the
 * files are synced, so guest I/O goes on; the image file and data file
 * are flushed (once in the common case). */
int qcow2_cache_flush_all(Qcow2State *s);

/* ------------------------------------------------------------------ */
/* Compressed clusters (compress.c)                                    */

/* Decompresses one cluster from src/src_len into dst (cluster_size). */
int qcow2_decompress(const Qcow2State *s, const uint8_t *src, size_t src_len,
                     uint8_t *dst);
/* Compresses one cluster (cluster_size bytes at src) into dst; returns the
 * compressed length, -ENOSPC when it does not fit in dst_len bytes. */
ssize_t qcow2_compress(const Qcow2State *s, const uint8_t *src, uint8_t *dst,
                       size_t dst_len);

/* ------------------------------------------------------------------ */
/* Internal snapshots (snapshot.c, snapshot-table.c)                   */

/* (at open, from header.c) Parses the snapshot table into s->snapshots;
 * flen is the image file's length.  Opened for check, damage is recorded
 * in s->snapshot_damage instead of refused. */
int qcow2_read_snapshot_table(Qcow2State *s, uint64_t flen, Error *err);

/* Called without s->lock: */

int qcow2_snapshot_create(BlockNode *n, const char *name, Error *err);
int qcow2_snapshot_apply(BlockNode *n, const char *id_or_name, Error *err);
int qcow2_snapshot_delete(BlockNode *n, const char *name, Error *err);
int qcow2_list_snapshots(BlockNode *n, BlockSnapshotInfo **out, int *count);
int qcow2_snapshot_load_tmp(BlockNode *n, const char *id, const char *name,
                            Error *err);
/* check -r all (s->lock held): rewrites the snapshot table with the
 * extra data a v3 entry must have (VM state size and disk size; the disk
 * size of an entry without one is the image's), as qemu-img repairs it. */
int qcow2_snapshot_complete_extra(Qcow2State *s, bool free_old,
                                  Error *err);
/* (s->lock held) Writes a snapshot table buffer (len > 0) to fresh
 * clusters, on disk with their refcounts before it returns, for a header
 * switch to point at; returns their offset or a negative errno. */
int64_t qcow2_store_snapshot_table(Qcow2State *s, const uint8_t *buf,
                                   size_t len, Error *err);
/* (s->lock held) Once the header names another table: drops the old
 * table's clusters (none when offset or size is 0). */
int qcow2_free_snapshot_table(Qcow2State *s, uint64_t offset, uint64_t size,
                              Error *err);

/* ------------------------------------------------------------------ */
/* LUKS encryption (crypto.c)                                          */

/* Opens the LUKS volume named by the crypto header extension with the
 * passphrase of opts' encrypt.key-secret. */
int qcow2_crypto_open(Qcow2State *s, KVList *opts, int flags, Error *err);
void qcow2_crypto_close(Qcow2State *s);
/* Create: the encrypt.* options can make a volume and the secret exists
 * (checked before anything is written). */
int qcow2_crypto_check_opts(KVList *opts, Error *err);
/* Measure: bytes of the LUKS header the encrypt.* options make (needs
 * the secret, as qemu-img does). */
int qcow2_crypto_header_size(KVList *opts, uint64_t *len, Error *err);
/* Create: allocates and writes a LUKS header (opts' encrypt.*) into the
 * freshly created, still empty image n and marks it encrypted. */
int qcow2_crypto_create(BlockNode *n, KVList *opts, Error *err);
/* qemu-img amend's encrypt.* options with the prefix taken off (state,
 * keyslot, new-secret, old-secret, iter-time; any other key is refused
 * as "encrypt.<key>"): adds or erases a LUKS key slot of the open,
 * unlocked image (formats/luks/luks.h luks_amend). */
int qcow2_crypto_amend(BlockNode *n, KVList *opts, bool force, Error *err);
/* Whether data clusters need decrypting (LUKS or legacy AES). */
static inline bool qcow2_encrypted(const Qcow2State *s)
{
    return s->crypto || s->aes;
}
/* Decrypts len bytes (whole sectors) of guest offset `guest` read from
 * host offset `host`. */
int qcow2_crypto_decrypt(Qcow2State *s, uint64_t host, uint64_t guest,
                         void *buf, size_t len);
/* Encrypts a copy of buf (guest offset `guest`: legacy AES takes its
 * IVs from it, LUKS from host) and writes it at host offset `host`. */
int qcow2_crypto_write(Qcow2State *s, uint64_t host, uint64_t guest,
                       const void *buf, size_t len);
/* Create with encryption=on / encrypt.format=aes, as qemu-img 7.2 still
 * does: proves the secret is there, marks the fresh image n AES
 * encrypted and keys it. */
int qcow2_crypto_create_aes(BlockNode *n, KVList *opts, Error *err);
/* The "encrypt" object of the format-specific info. */
json_t *qcow2_crypto_info(Qcow2State *s);

/* ------------------------------------------------------------------ */
/* Persistent dirty bitmaps (bitmap-dir.c, bitmap-load.c, bitmap-store.c) */

/* Bitmaps extension and directory limits (as QEMU's). */
#define QCOW2_BITMAP_EXT_SIZE      24
#define QCOW2_MAX_BITMAPS          65535
#define QCOW2_MAX_BITMAP_DIR_SIZE  (1024u * QCOW2_MAX_BITMAPS)
#define QCOW2_BITMAP_ENTRY_FIXED   24
/* Directory entry flags. */
#define QCOW2_BME_IN_USE           (1u << 0)
#define QCOW2_BME_AUTO             (1u << 1)
#define QCOW2_BME_EXTRA_COMPAT     (1u << 2)
#define QCOW2_BME_KNOWN_FLAGS      0x7u
#define QCOW2_BT_DIRTY_TRACKING    1

/* One bitmap directory entry. */
typedef struct Qcow2BitmapEntry {
    uint64_t table_offset;
    uint32_t table_size;       /* entries */
    uint32_t flags;            /* QCOW2_BME_* */
    uint8_t gran_bits;
    char *name;                /* NUL-free, 1..1023 bytes */
} Qcow2BitmapEntry;

/* What a directory is checked against. */
typedef struct Qcow2BitmapGeometry {
    uint32_t cluster_bits;
    uint64_t file_size;        /* bytes of the image file */
    uint64_t virtual_size;
} Qcow2BitmapGeometry;

/* Parses and validates a whole bitmap directory of nb entries held in
 * dir[0, dir_size): field ranges, names (unique), flags, table offsets
 * and sizes (in the file, not in the header cluster, not overlapping
 * each other), with memory bounded by dir_size.  Pure: callable on any
 * buffer (fuzzing).  *out gets nb entries; free with
 * qcow2_bitmap_entries_free. */
int qcow2_bitmaps_parse(const uint8_t *dir, uint64_t dir_size, uint32_t nb,
                        const Qcow2BitmapGeometry *g, Qcow2BitmapEntry **out,
                        Error *err);
void qcow2_bitmap_entries_free(Qcow2BitmapEntry *v, uint32_t nb);
/* At the end of open: loads the bitmaps into n->bitmaps and, when
 * writable, marks them in use on disk before any write.  Without s->lock. */
int qcow2_bitmaps_open(BlockNode *n, Error *err);
/* At close: stores the bitmaps (a failure goes to block_report: the
 * bitmaps stay marked in use, i.e. inconsistent) and frees them.
 * Needs s->lock. */
void qcow2_bitmaps_close(BlockNode *n);
/* The image holds persistent bitmaps (on disk or about to be stored). */
bool qcow2_has_bitmaps(Qcow2State *s);
/* The "bitmaps" list of the format-specific info as qemu-img shows it
 * (the directory as on disk: flags "in-use", "auto"), or NULL. */
json_t *qcow2_bitmaps_info(Qcow2State *s);

/* ------------------------------------------------------------------ */
/* Provided by check.c / measure.c                                     */

/* qcow2_check is called without s->lock; it takes it for its work (the
 * helpers above all expect it held).  During open with the dirty bit set,
 * the driver calls it with BLOCK_FIX_ERRORS | BLOCK_FIX_LEAKS before any
 * other request can arrive. */

int qcow2_check(BlockNode *n, BlockCheckResult *res, int fix, Error *err);
int qcow2_measure(KVList *opts, BlockNode *in, uint64_t size,
                  BlockMeasure *out, Error *err);
extern const BlockCreateOpt qcow2_create_opts[];

/* amend*.c: qemu-img amend for qcow2 (called without s->lock). */
int qcow2_amend(BlockNode *n, KVList *opts, bool force,
                BlockProgressFn *progress, void *opaque, Error *err);
extern const BlockCreateOpt qcow2_amend_opts[];

extern const BlockDriver qcow2_driver;

/* Guest I/O (read.c, write.c, write-compressed.c, zero.c). */
/* A run of guest bytes with one mapping (qcow2_map_extent). */
typedef struct Qcow2Extent {
    Qcow2SubclusterType type;
    bool has_host;         /* host valid (data, preallocated zero, or an
                              unallocated subcluster of an allocated
                              cluster) */
    uint64_t host;         /* host byte offset of the extent start */
    Qcow2L2Entry entry;    /* entry of the first cluster */
} Qcow2Extent;

/* Maps [off, off + len) from off as far as the status stays the same
 * (and host offsets stay contiguous), within one L2 table.  Needs
 * s->lock; reads the L2 table unless it is cached.  Returns bytes covered
 * (> 0) or a negative errno. */
int64_t qcow2_map_extent(Qcow2State *s, uint64_t off, uint64_t len,
                         Qcow2Extent *x);
/* An allocating write, zero write or discard is changing metadata for a
 * guest range that overlaps [start, end) (s->lock held). */
bool qcow2_inflight_overlaps(Qcow2State *s, uint64_t start, uint64_t end);
/* The cluster can be overwritten in place (it is ours alone). */
bool qcow2_cluster_in_place(Qcow2State *s, const Qcow2L2Entry *e);
/* Writing [a, b) of the cluster touches only allocated data subclusters. */
bool qcow2_touches_only_data(Qcow2State *s, const Qcow2L2Entry *e,
                             uint64_t a, uint64_t b);
void qcow2_entry_in_table(Qcow2State *s, uint8_t *t, uint64_t idx,
                          Qcow2L2Entry *e);
/* The asynchronous fast path (aio.c): the driver's submit. */
int qcow2_submit(BlockNode *n, BlockRequest *req);
int qcow2_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags);
int qcow2_pwrite(BlockNode *n, uint64_t off, size_t len, const void *buf,
                 int flags);
/* The driver's copy_range_from (whole clusters; see write.c). */
int qcow2_copy_range_from(BlockNode *n, uint64_t off, uint64_t len,
                          BlockNode *src_file, uint64_t src_host, int flags);

#endif
