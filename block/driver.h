/*
 * driver.h - the whole contract between imgtool's block core and its
 * drivers: formats (qcow2, luks, raw), protocols (file, and later iscsi,
 * gluster, nbd) and filters (faulty).  A new driver is one file (or one
 * folder) that fills a BlockDriver and one line in block/core/drivers.c;
 * nothing else changes.  Callers (commands, jobs, exports, pools) use
 * block/block.h and never this header.
 *
 * THE RULES
 *
 * Kinds.  A protocol is a leaf over a host resource (a file, a LUN, a
 * volume); it has no children.  A format interprets the bytes of its FILE
 * child (and may have a DATA_FILE child and a BACKING node).  A filter
 * sits over exactly one FILTERED child and passes requests on, changing
 * some of them (fault injection, throttling); a filter can stack anywhere
 * a node can: under a format, over a format, over another filter.
 *
 * Children.  A node's children are a list of (role, node) pairs; a driver
 * reaches them with block_child()/block_file()/block_backing() and talks
 * to them only through block/block.h, never through their drivers.  The
 * core opens children before the driver's open (FILE, FILTERED) or after
 * it (BACKING, from n->backing_file); a format opens its own DATA_FILE
 * with block_open_child().  A parent holds one reference to each child;
 * a child may have several parents (shared nodes).
 *
 * Requests.  The core calls I/O callbacks only with:
 *  - offset and length aligned to n->request_alignment (the core bounces
 *    unaligned requests, serialising their read-modify-write per node),
 *    and buffers aligned too; length is never 0;
 *  - ranges inside the node's length for formats and filters (protocols
 *    may be written past their end: that is how formats allocate);
 *  - writes only on nodes opened read-write;
 *  - the node counted as busy (in flight), so the graph below it cannot
 *    change during the call (see drain in block.h).
 * A driver implements reads and writes either vectored (preadv/pwritev:
 * preferred, the request's iovecs come through untouched) or linear
 * (pread/pwrite: the core gathers and scatters through a bounce buffer).
 *
 * Return values.  Every callback returns 0 (or a documented non-negative
 * value) on success and a negative errno on failure.  flush is the one
 * special case: it flushes the driver's own caches and metadata; the core
 * then flushes the node's children (DATA_FILE, then FILE or FILTERED).  A
 * driver that must order those child flushes against its own writes
 * (qcow2: data before the metadata that points at it) does them itself
 * and returns 1, which tells the core that the children are flushed.
 * Returning 0 means "my part is done, flush my children".
 *
 * Asynchronous requests.  Every request can also be submitted with a
 * completion callback (block_aio_* in block.h).  A driver with `submit`
 * may take such a request and complete it later from any thread with
 * block_request_complete(); it returns 0 when it took the request and
 * -EAGAIN when it would rather not (the core then runs the synchronous
 * callback on a worker thread).  So a driver may keep a fast path (a
 * qcow2 read whose mapping is cached, an io_uring read of a file) and
 * leave everything else to the synchronous code.  Drivers without submit
 * are simply run on worker threads.
 *
 * Threads.  A driver declares its thread model: PARALLEL drivers are
 * called from many threads at once and lock what they share themselves;
 * SERIALIZE drivers (one library context that is not thread-safe, such
 * as a libiscsi connection) are called by one thread at a time: the core
 * holds a per-node mutex around every synchronous callback.  submit is
 * the exception: it is called from any thread, concurrently, whatever
 * the model (a SERIALIZE driver's submit hands the request to its own
 * event loop).  Completion callbacks run
 * on library threads; they must be short and must not drain.
 *
 * Capabilities are answered by can_* callbacks once at open (absent ones
 * take the default written next to them) and cached in n->caps.
 */
#ifndef IMGTOOL_BLOCK_DRIVER_H
#define IMGTOOL_BLOCK_DRIVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

/* Bumped when a callback's meaning or signature changes; every driver
 * states the version it was written for and the registry refuses others
 * (a driver from an older tree fails loudly instead of misbehaving). */
#define BLOCK_DRIVER_API_VERSION 2

typedef enum {
    BLOCK_DRIVER_PROTOCOL,
    BLOCK_DRIVER_FORMAT,
    BLOCK_DRIVER_FILTER,
} BlockDriverKind;

typedef enum {
    BLOCK_THREAD_PARALLEL,     /* callbacks may run concurrently */
    BLOCK_THREAD_SERIALIZE,    /* the core calls one callback at a time */
} BlockThreadModel;

/* ------------------------------------------------------------------ */
/* Children                                                            */

typedef enum {
    BLOCK_CHILD_FILE,       /* the bytes a format interprets */
    BLOCK_CHILD_DATA_FILE,  /* a format's external data file */
    BLOCK_CHILD_BACKING,    /* where unallocated ranges read from */
    BLOCK_CHILD_FILTERED,   /* what a filter passes requests on to */
    BLOCK_CHILD_TARGET,     /* where a filter keeps what it saves (the
                             * fleece filter's copies of old clusters) */
} BlockChildRole;

typedef struct BlockChild {
    BlockChildRole role;
    BlockNode *node;
} BlockChild;

#define BLOCK_MAX_CHILDREN 4

/* The first child with that role, or NULL.  Call from within a request
 * (or with the node drained): that is what keeps the answer valid. */
BlockNode *block_child(BlockNode *n, BlockChildRole role);

/* Attaches child (the caller's reference passes to n) with role,
 * replacing and releasing any child with that role.  child NULL removes
 * it.  The node must be drained or not yet visible to other threads. */
int block_set_child(BlockNode *n, BlockChildRole role, BlockNode *child);


/* ------------------------------------------------------------------ */
/* Capabilities                                                        */

typedef struct BlockCaps {
    bool can_write;        /* writes accepted (node read-write) */
    bool can_flush;        /* flush does something durable */
    bool can_fua;          /* BLOCK_REQ_FUA honoured natively */
    bool can_discard;      /* discard frees space */
    bool can_zero;         /* write_zeroes without writing buffers */
    bool can_fast_zero;    /* ... and quickly (BLOCK_REQ_NO_FALLBACK ok) */
    bool can_extents;      /* block_status tells holes from data */
    bool can_compress;     /* BLOCK_REQ_COMPRESSED honoured */
    bool can_multi_conn;   /* flush on one connection covers all */
} BlockCaps;

/* ------------------------------------------------------------------ */
/* The node                                                            */

typedef struct BlockRequest BlockRequest;

struct BlockNode {
    const BlockDriver *drv;
    void *opaque;              /* driver state, drv->instance_size bytes */

    char *node_name;           /* unique; given (node-name=) or "#blockN" */
    char *filename;            /* as the user named it */
    int flags;                 /* BLOCK_O_* it was opened with */
    bool read_only;

    BlockChild children[BLOCK_MAX_CHILDREN];
    int n_children;

    /* Set by a format driver's open from its header; the core opens the
     * chain from them.  backing_file is as stored in the image. */
    char *backing_file;
    char *backing_format;      /* NULL when the image does not say */
    char *full_backing_filename;  /* resolved against our directory */

    uint32_t request_alignment;   /* >= 1; power of two */
    uint64_t max_transfer;        /* 0 = unlimited */
    BlockCaps caps;               /* answered once, at open */

    /* In-memory dirty bitmaps of this node (block/core/bitmap.c), NULL
     * when the format cannot keep persistent bitmaps; every successful
     * write, zero and discard that reaches this node marks the enabled
     * ones. */
    struct BlockBitmaps *bitmaps;

    /* The driver options this node was opened with ("encrypt.key-secret",
     * "backing.xxx" ...), so that reopening it keeps them. */
    KVList open_opts;

    /* ---- core private ---- */
    atomic_int refcnt;
    atomic_uint in_flight;        /* requests inside this node */
    atomic_int quiesce;           /* drain depth; > 0 holds new requests */
    pthread_mutex_t drain_lock;   /* with drain_cond: the drain handshake */
    pthread_cond_t drain_cond;
    BlockRequest *held;           /* async requests held by a drain */
    pthread_t drain_owner;        /* who drained it (its requests pass) */
    bool drain_owned;
    pthread_mutex_t rmw_lock;     /* serialises bounced unaligned writes */
    pthread_mutex_t serialize_lock;  /* BLOCK_THREAD_SERIALIZE drivers */
    /* block_add_before_write; changed only while the node is drained. */
    struct BlockWriteHook *write_hooks;
    BlockNode *registry_next;
};

/* The node's FILE / BACKING / DATA_FILE / FILTERED child, or NULL. */
static inline BlockNode *block_file(BlockNode *n)
{
    return block_child(n, BLOCK_CHILD_FILE);
}
static inline BlockNode *block_data_file(BlockNode *n)
{
    return block_child(n, BLOCK_CHILD_DATA_FILE);
}
static inline BlockNode *block_filtered(BlockNode *n)
{
    return block_child(n, BLOCK_CHILD_FILTERED);
}

/* A flush of n issued from inside a request on n (a FUA write flushed
 * through): block_flush would enter n again, and wait for a drain that
 * waits for the request itself. */
int block_flush_within(BlockNode *n);

/* ------------------------------------------------------------------ */
/* Watching another node's writes (block/core/hooks.c)                 */

/* A filter that must see what another node is about to change (the
 * fleece filter, block/filter/fleece.c, keeps a point-in-time view)
 * hooks that node's writes: fn runs before every write, zero write and
 * discard of [off, off+len) reaches n's driver, on the thread that
 * carries the request, with the request already counted in n; an error
 * fails the request.  fn may read n only with block_hook_pread (the
 * request is in flight: a block_pread could wait for a drain that waits
 * for it).  Adding and removing drain n themselves: a request either
 * completed before, or meets the hook.  Writes to a hooked node take
 * the synchronous path (a driver's submit never sees them).  A hooked
 * node cannot be resized (block_truncate fails with EBUSY): the
 * watcher's view keeps the size it was made with. */
typedef int BlockBeforeWriteFn(void *opaque, BlockNode *n, uint64_t off,
                               uint64_t len);
int block_add_before_write(BlockNode *n, BlockBeforeWriteFn *fn,
                           void *opaque);
void block_remove_before_write(BlockNode *n, BlockBeforeWriteFn *fn,
                               void *opaque);
/* A read of n from inside one of its before-write hooks. */
int block_hook_pread(BlockNode *n, uint64_t off, size_t len, void *buf);

/* ------------------------------------------------------------------ */
/* Asynchronous requests, as a driver's submit sees them               */

typedef enum {
    BLOCK_OP_READ,
    BLOCK_OP_WRITE,
    BLOCK_OP_FLUSH,
    BLOCK_OP_DISCARD,
    BLOCK_OP_WRITE_ZEROES,
} BlockOp;

struct BlockRequest {
    BlockNode *node;
    BlockOp op;
    uint64_t offset;
    uint64_t bytes;
    BlockIOV *qiov;               /* READ / WRITE */
    int flags;                    /* BLOCK_REQ_* */

    /* core private */
    BlockCompletionFn *cb;
    void *opaque;
    BlockRequest *next;           /* held / worker queue */
    void *driver_data;            /* free for the driver that took it */
    int core_flags;
};

/* Ends a request a driver's submit took: exactly once, from any thread.
 * ret is 0 or a negative errno. */
void block_request_complete(BlockRequest *req, int ret);

/* A driver whose completions arrive on a queue it owns (an io_uring)
 * registers a poller while it has requests in flight, so a submitter
 * that waits for a free slot (BlockQueue) ends completions itself on its
 * own thread instead of waiting for the driver's thread to wake it.
 * poll waits at most timeout_us for completions, ends the ready ones
 * (calling block_request_complete) and says whether it ended any; it
 * must return at once when another thread is already polling the same
 * queue. */
typedef struct BlockPoller {
    bool (*poll)(void *opaque, int timeout_us);
    void *opaque;
    /* core private */
    struct BlockPoller *next;
    atomic_int pins;          /* polls running on it now */
} BlockPoller;
void block_poller_add(BlockPoller *p);
/* Unlinks p and waits for the polls running on it to end. */
void block_poller_remove(BlockPoller *p);

/* ------------------------------------------------------------------ */
/* Dirty bitmaps, as formats that persist them see them                */

typedef struct BlockBitmap {
    char *name;
    uint32_t gran_bits;      /* granularity = 1 << gran_bits */
    bool enabled;            /* tracks writes ('auto' in qcow2) */
    bool inconsistent;       /* in use on disk when opened */
    bool changed;            /* bits or attributes differ from the stored
                                copy (set atomically by marking) */
    uint64_t length;         /* guest bytes covered */
    uint64_t nb_bits;
    uint64_t *words;         /* NULL for an inconsistent bitmap */

    /* Where the format keeps this bitmap on disk (qcow2: bitmap table
     * offset, entries, directory flags); 0 when not stored yet. */
    uint64_t stored_offset;
    uint32_t stored_size;
    uint32_t stored_flags;
} BlockBitmap;

/* How a format persists the set; installed with the set at open. */
typedef struct BlockBitmapsFormat {
    /* Writes the set to disk so that it is what the image holds after
     * close; called by block_bitmaps_store with no request running. */
    int (*store)(BlockNode *n, Error *err);
    /* Why this node cannot hold (more) persistent bitmaps named `name`,
     * or 0; fills err with qemu-img's text. */
    int (*can_add)(BlockNode *n, const char *name, uint32_t gran_bits,
                   Error *err);
    /* Granularity when the user gives none. */
    uint64_t (*default_granularity)(BlockNode *n);
} BlockBitmapsFormat;

/* Invariants of a set:
 *  - bit i of a bitmap covers guest bytes [i << gbits, (i + 1) << gbits);
 *    a bitmap always has exactly ceil(length / granularity) bits;
 *  - bits only ever go from 0 to 1 while requests run (atomic OR), so
 *    marking needs only the set's read lock; anything that changes the
 *    set or a bitmap's shape (add, remove, resize, clear, merge) takes
 *    the write lock;
 *  - an inconsistent bitmap (found "in use" on disk at open) is never
 *    marked, read or changed: it can only be removed, as in QEMU. */
typedef struct BlockBitmaps {
    pthread_rwlock_t lock;
    BlockBitmap **v;
    int n;
    int nb_enabled;          /* read atomically by the marking fast path */
    bool set_changed;        /* a bitmap was added or removed */
    const BlockBitmapsFormat *fmt;
} BlockBitmaps;

#define BLOCK_BITMAP_MIN_GRAN_BITS  9     /* 512 bytes */
#define BLOCK_BITMAP_MAX_GRAN_BITS  31    /* 2 GiB */
#define BLOCK_BITMAP_MAX_NAME       1023
/* One bitmap's bits may take at most this much memory (QEMU's limit on a
 * stored bitmap's data); a header asking for more is refused before
 * anything is allocated. */
#define BLOCK_BITMAP_MAX_BYTES      (512ull << 20)

/* A new empty set for a format that persists bitmaps through fmt. */
BlockBitmaps *block_bitmaps_new(const BlockBitmapsFormat *fmt);
void block_bitmaps_free(BlockBitmaps *set);
/* Marks [off, off+len) dirty in every enabled bitmap of n (the core does
 * this for every change that reaches n).  Thread-safe. */
void block_bitmaps_mark(BlockNode *n, uint64_t off, uint64_t len);
/* Allocates a bitmap of `length` bytes at granularity 1 << gran_bits with
 * all bits clear (no bits when inconsistent) and appends it to the set.
 * The size is checked against BLOCK_BITMAP_MAX_BYTES first.  Callers that
 * are not the format's open take the set's write lock. */
int block_bitmaps_append(BlockBitmaps *set, const char *name,
                         uint32_t gran_bits, uint64_t length, bool enabled,
                         bool inconsistent, BlockBitmap **out, Error *err);
/* A bitmap whose stored bits turned out damaged becomes inconsistent
 * (for the format's open, before any request). */
void block_bitmap_make_inconsistent(BlockBitmaps *set, BlockBitmap *bm);
BlockBitmap *block_bitmaps_find(BlockBitmaps *set, const char *name);
/* Bytes of the on-disk serialisation (bit i = byte i/8, bit i%8). */
uint64_t block_bitmap_bytes(const BlockBitmap *bm);
/* Copies serialised bytes [first, first+len) out of / into bm (bytes
 * past the end read as zero / are ignored; padding bits are dropped). */
void block_bitmap_get_bytes(const BlockBitmap *bm, uint64_t first,
                            uint64_t len, uint8_t *buf);
void block_bitmap_set_bytes(BlockBitmap *bm, uint64_t first, uint64_t len,
                            const uint8_t *buf);
void block_bitmap_set_bits(BlockBitmap *bm, uint64_t first_bit,
                           uint64_t end_bit);
bool block_bitmap_get_bit(const BlockBitmap *bm, uint64_t bit);
/* No bit set in serialised bytes [first, first+len). */
bool block_bitmap_bytes_zero(const BlockBitmap *bm, uint64_t first,
                             uint64_t len);
/* New length (truncate): bits past it are dropped, new bits are clear. */
int block_bitmaps_resize(BlockNode *n, uint64_t length);

/* Reports from drivers: block_report() in block.h. */

/* ------------------------------------------------------------------ */
/* The driver                                                          */

struct BlockDriver {
    int api_version;              /* BLOCK_DRIVER_API_VERSION */
    const char *name;
    BlockDriverKind kind;
    BlockThreadModel thread_model;
    size_t instance_size;         /* bytes of n->opaque, zeroed */
    bool supports_backing;        /* formats: may have a backing file */

    /* Format probing: score 0..100 for the first bytes of a file. */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /* Protocols: does this filename belong to us (iscsi://...)? */
    bool (*owns_filename)(const char *filename);
    /* Protocols whose resource options alone can name (iscsi: portal,
     * target, lun; gluster: server.*, volume, path), as QEMU's
     * --image-opts allow: the filename those options stand for
     * (malloc'd), or NULL when they name none.  The core asks when no
     * filename is given; it reads opts with kvlist_peek only. */
    char *(*filename_from_opts)(const KVList *opts);

    /* Formats and filters: their FILE / FILTERED child is open.  Options
     * not consumed are an error (the core checks). */
    int (*open)(BlockNode *n, KVList *opts, int flags, Error *err);
    void (*close)(BlockNode *n);
    /* Switches a drained node between read-only and read-write (flags
     * has BLOCK_O_RDWR or not); children are reopened first.  NULL: the
     * node cannot change (the core refuses). */
    int (*reopen)(BlockNode *n, int flags, Error *err);

    /* Capabilities (defaults in brackets).  can_write [the node is
     * read-write and has pwrite/pwritev], can_flush [has flush or a
     * child that can], can_fua [false: the core flushes after the
     * write], can_discard [has discard], can_zero [has write_zeroes],
     * can_fast_zero [false], can_extents [has block_status],
     * can_compress [false], can_multi_conn [false]. */
    bool (*can_write)(BlockNode *n);
    bool (*can_flush)(BlockNode *n);
    bool (*can_fua)(BlockNode *n);
    bool (*can_discard)(BlockNode *n);
    bool (*can_zero)(BlockNode *n);
    bool (*can_fast_zero)(BlockNode *n);
    bool (*can_extents)(BlockNode *n);
    bool (*can_compress)(BlockNode *n);
    bool (*can_multi_conn)(BlockNode *n);

    /* Data.  One of each pair: vectored (preferred) or linear. */
    int (*preadv)(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags);
    int (*pwritev)(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags);
    int (*pread)(BlockNode *n, uint64_t off, size_t len, void *buf);
    int (*pwrite)(BlockNode *n, uint64_t off, size_t len, const void *buf,
                  int flags);
    int (*flush)(BlockNode *n);   /* see "Return values" above */
    int (*discard)(BlockNode *n, uint64_t off, uint64_t len);
    /* -ENOTSUP: the core writes zero buffers (unless NO_FALLBACK). */
    int (*write_zeroes)(BlockNode *n, uint64_t off, uint64_t len, int flags);
    /* Status of this layer alone; see block_status() in block.h.  A
     * range the layer does not define returns neither ALLOCATED nor
     * DATA/ZERO and the core consults the backing node.  A DATA extent
     * that may lie over holes of *file can carry BLOCK_STATUS_RECURSE:
     * the core then asks *file and adds ZERO over its holes. */
    int (*block_status)(BlockNode *n, uint64_t off, uint64_t len,
                        uint64_t *pnum, uint64_t *map, BlockNode **file);
    /* See "Asynchronous requests" above. */
    int (*submit)(BlockNode *n, BlockRequest *req);
    /* Makes [off, off + len) of this node hold what src_file (a node of
     * the file protocol) holds at src_host, without the bytes passing
     * through memory: shared extents, or a copy in the kernel when flags
     * has BLOCK_COPY_IN_KERNEL.  -ENOTSUP (and the other errors
     * block_copy_range_fallback() names) when it cannot; the caller then
     * writes the data.  NULL: never.  See block/core/copy-range.c. */
    int (*copy_range_from)(BlockNode *n, uint64_t off, uint64_t len,
                           BlockNode *src_file, uint64_t src_host, int flags);
    /* A format above raised a named event (block_debug_event). */
    void (*debug_event)(BlockNode *n, BlockDebugEvent ev);

    int64_t (*get_length)(BlockNode *n);      /* NULL: the child's */
    int64_t (*get_allocated_size)(BlockNode *n);
    /* block_has_zero_init(): a node create just made reads as zeroes
     * everywhere.  NULL: no. */
    bool (*has_zero_init)(BlockNode *n);
    int (*truncate)(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                    Error *err);

    int (*create)(const char *filename, uint64_t size, KVList *opts,
                  Error *err);
    const BlockCreateOpt *create_opts;   /* NULL-name terminated */
    /* The create option whose value names another file create makes
     * (qcow2: data_file), or NULL: block_create removes it again, as the
     * image, when create fails and it did not exist before. */
    const char *create_file_opt;

    int (*check)(BlockNode *n, BlockCheckResult *res, int fix, Error *err);
    /* Internal snapshots (NULL: the format has none).  apply matches ids
     * first, then names, as QEMU does; delete matches names only, as
     * qemu-img snapshot -d does. */
    int (*snapshot_create)(BlockNode *n, const char *name, Error *err);
    int (*snapshot_apply)(BlockNode *n, const char *id_or_name, Error *err);
    int (*snapshot_delete)(BlockNode *n, const char *name, Error *err);
    int (*list_snapshots)(BlockNode *n, BlockSnapshotInfo **out,
                          int *count);
    /* id or name may be NULL (not both); both given must both match. */
    int (*snapshot_load_tmp)(BlockNode *n, const char *id, const char *name,
                             Error *err);
    int (*measure)(KVList *opts, BlockNode *in, uint64_t size,
                   BlockMeasure *out, Error *err);
    json_t *(*get_format_info)(BlockNode *n);
    void (*get_info_extra)(BlockNode *n, BlockInfoExtra *out);
    int (*change_backing_file)(BlockNode *n, const char *file,
                               const char *fmt, Error *err);
    /* Deallocate everything so reads fall through to the backing file
     * again (commit); crash-safe: at worst clusters leak. */
    int (*make_empty)(BlockNode *n);
    /* block_amend(); opts unknown to the driver must be refused. */
    int (*amend)(BlockNode *n, KVList *opts, bool force,
                 BlockProgressFn *progress, void *opaque, Error *err);
    const BlockCreateOpt *amend_opts;   /* for amend -o help; NULL-name
                                           terminated, NULL: create_opts */
};

/* A driver that can be built as a loadable module (its library is large)
 * ends with BLOCK_DRIVER_MODULE(its_driver): built as a module
 * (-DIMGTOOL_MODULE) that is the symbol the loader looks for; built in,
 * nothing.  A module that answers more than block I/O (what a pool asks
 * of an iSCSI target) also exports its operations table with
 * BLOCK_MODULE_OPS(table), which block_module_ops() hands to callers.
 * The registry lists such drivers with their URL prefixes in
 * block_module_list (block/core/drivers.c).  Modules are compiled with
 * hidden visibility: these two are the only symbols they export. */
#ifdef IMGTOOL_MODULE
#define BLOCK_DRIVER_MODULE(drv)                                      \
    __attribute__((visibility("default")))                            \
    const BlockDriver *const imgtool_block_module_driver = &(drv)
#define BLOCK_MODULE_OPS(ops)                                         \
    __attribute__((visibility("default")))                            \
    const void *const imgtool_block_module_ops = &(ops)
#else
#define BLOCK_DRIVER_MODULE(drv) extern const BlockDriver drv
#define BLOCK_MODULE_OPS(ops) extern const int imgtool_block_module_no_ops
#endif

/* The registry (block/core/drivers.c): every driver, NULL-terminated. */
extern const BlockDriver *const block_driver_list[];

/* Creation options of the file protocol, shared by the raw format. */
extern const BlockCreateOpt block_protocol_create_opts[];

/* Creates (or truncates) a protocol-level file of `size` bytes with the
 * given preallocation; used by format drivers' create. */
int block_create_file(const char *filename, uint64_t size, PreallocMode pm,
                      KVList *opts, Error *err);
/* Copies the host file hints a format takes among its own creation
 * options (nocow, extent_size_hint) from opts into out: for a file the
 * format creates besides its own, such as qcow2's external data file. */
void block_create_file_hints(KVList *opts, KVList *out);

#endif
