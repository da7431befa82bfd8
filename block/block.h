/*
 * block.h - the caller API of imgtool's block layer: what commands, jobs,
 * exports and pools use.  Drivers implement block/driver.h.
 *
 * A node graph: a command opens a top node (a format) over a protocol
 * child (`file`) and, optionally, a backing node (another format node).
 * Nodes are named and reference-counted, so one image opened once can
 * serve several users (exports, a job) at the same time.  Every request
 * goes through the block_* functions below, synchronously or with a
 * completion callback, with plain buffers or I/O vectors; they may be
 * called from any number of threads at once.
 *
 * The library never prints, exits or handles signals: warnings go to the
 * report callback (block_set_report_fn), failures come back as a
 * negative errno and one line in an Error.
 *
 * Functions return 0 (or a non-negative value) on success and a negative
 * errno on failure.  Functions that can fail for reasons worth explaining
 * take an Error * which receives one human-readable line.
 */
#ifndef IMGTOOL_BLOCK_H
#define IMGTOOL_BLOCK_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "block/iov.h"

/* ------------------------------------------------------------------ */
/* Errors                                                              */

typedef struct Error {
    int code;        /* positive errno, 0 when unset */
    char msg[1024];  /* one line, no trailing newline */
} Error;

/* Sets err (if not NULL and not already set) and returns -code. */
int error_setf(Error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to an existing message. */
void error_prefixf(Error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
bool error_is_set(const Error *err);
void error_clear(Error *err);

/* ------------------------------------------------------------------ */
/* key=value option lists ("-o a=b,c=d", --image-opts)                 */

typedef struct KVPair {
    char *key;
    char *value;
    bool used;
} KVPair;

typedef struct KVList {
    KVPair *items;
    size_t n;
} KVList;

/* Parses "a=b,c=d" (",," is a literal comma) and appends to l.  A bare
 * word without '=' is stored with key=implied_key (if not NULL) when it is
 * first, else it is an error. */
int kvlist_parse(KVList *l, const char *str, const char *implied_key,
                 Error *err);
int kvlist_set(KVList *l, const char *key, const char *value);
/* The last value for key (marks it used), or NULL. */
const char *kvlist_get(KVList *l, const char *key);
/* The same without marking it used: for a look that is not the reader
 * the option is meant for (which protocol a set of options names). */
const char *kvlist_peek(const KVList *l, const char *key);
bool kvlist_has(const KVList *l, const char *key);
int kvlist_get_bool(KVList *l, const char *key, bool def, bool *out,
                    Error *err);
/* Sizes accept k/M/G/T/P/E suffixes (powers of 1024) and plain bytes. */
int kvlist_get_size(KVList *l, const char *key, uint64_t def, uint64_t *out,
                    Error *err);
int kvlist_get_uint(KVList *l, const char *key, uint64_t def, uint64_t *out,
                    Error *err);
/* Moves every "prefix.rest" entry into out as "rest" (marks them used). */
void kvlist_extract_prefix(KVList *l, const char *prefix, KVList *out);
/* Error naming the first unused key. */
int kvlist_check_unused(const KVList *l, const char *what, Error *err);
void kvlist_free(KVList *l);

/* "json:{...}" image names (jsonname.c): nested objects become dotted
 * keys ("file": {"filename": x} is file.filename=x), booleans on/off. */
bool block_is_json_name(const char *name);
int block_json_name_to_opts(const char *name, KVList *out, Error *err);

/* "1G", "512k", "4096", "1.5G" -> bytes.  Returns -EINVAL on junk,
 * -ERANGE on overflow. */
int parse_size(const char *s, uint64_t *out);
/* Human "1 GiB", "512 KiB", "1.5 GiB" as qemu-img prints sizes. */
void format_size(uint64_t bytes, char *buf, size_t len);

/* ------------------------------------------------------------------ */
/* Nodes                                                               */

typedef struct BlockDriver BlockDriver;
typedef struct BlockCreateOpt BlockCreateOpt;
typedef struct BlockNode BlockNode;

enum {
    BLOCK_O_RDWR       = 1 << 0,  /* open for writing */
    BLOCK_O_NO_BACKING = 1 << 1,  /* do not open the backing chain */
    BLOCK_O_SHARE      = 1 << 2,  /* -U: read-only, take no locks that
                                     would conflict with a writer */
    BLOCK_O_NOCACHE    = 1 << 3,  /* O_DIRECT on the protocol node */
    BLOCK_O_NO_LOCK    = 1 << 4,  /* take no image locks at all */
    BLOCK_O_CHECK      = 1 << 5,  /* open for check/repair: tolerate the
                                     corrupt bit and repairable damage */
    BLOCK_O_CREATE     = 1 << 6,  /* protocol: create/truncate the file */
    BLOCK_O_NO_FLUSH   = 1 << 7,  /* -t unsafe: flushes are no-ops */
    BLOCK_O_BACKING_RO = 1 << 8,  /* internal: opened as someone's backing */
    BLOCK_O_PROBED     = 1 << 9,  /* the format was guessed, not given */
    /* With BLOCK_O_RDWR: opened writable only to change persistent dirty
     * bitmaps (add, remove, store), never guest data.  Guest writes,
     * zero writes, discards and truncation fail with EACCES, so the
     * bitmaps are not flagged in use on disk: a process killed while it
     * holds the image leaves them consistent (backups rotate theirs this
     * way).  The image is locked as for writing. */
    BLOCK_O_BITMAPS_ONLY = 1 << 10,
};

/* Request flags. */
enum {
    BLOCK_REQ_FUA         = 1 << 0,  /* write through before returning */
    BLOCK_REQ_MAY_UNMAP   = 1 << 1,  /* write_zeroes may deallocate */
    BLOCK_REQ_NO_FALLBACK = 1 << 2,  /* write_zeroes: fail with -ENOTSUP
                                        rather than writing zero buffers */
    BLOCK_REQ_COMPRESSED  = 1 << 3,  /* pwrite: store whole clusters
                                        compressed (drivers with
                                        supports_compressed only; others
                                        fail with -ENOTSUP) */
};

/* block_status flags (non-negative return value of block_status). */
enum {
    BLOCK_STATUS_DATA         = 1 << 0, /* reads come from real data */
    BLOCK_STATUS_ZERO         = 1 << 1, /* reads return zeroes */
    BLOCK_STATUS_OFFSET_VALID = 1 << 2, /* *map is a host offset in *file */
    BLOCK_STATUS_ALLOCATED    = 1 << 3, /* this layer defines the content
                                           (else it comes from backing) */
    BLOCK_STATUS_COMPRESSED   = 1 << 4, /* informational (map/check) */
    /* Driver to core only (never returned by block_status): the DATA
     * extent at *map in *file may hold holes of the host file, which
     * read as zero; the core asks *file and adds ZERO where it says so
     * (qcow2 with metadata preallocation, as QEMU). */
    BLOCK_STATUS_RECURSE      = 1 << 5,
};

/* Preallocation modes (create, truncate). */
typedef enum {
    PREALLOC_OFF = 0,
    PREALLOC_METADATA,
    PREALLOC_FALLOC,
    PREALLOC_FULL,
} PreallocMode;
int prealloc_parse(const char *s, PreallocMode *out);
const char *prealloc_name(PreallocMode m);

/* Drivers, as callers ask about them (the structure is block/driver.h's). */
const BlockDriver *block_node_driver(const BlockNode *n);
/* The i-th driver the build knows: the built-in ones, then those in
 * loadable modules (*module true; not loaded by asking); NULL past the
 * last.  For --version and completion. */
const char *block_known_driver(size_t i, bool *module);
/* The i-th loadable module (drivers and ops-only ones), with the library
 * it links in *library; NULL past the last. */
const char *block_known_module(size_t i, const char **library);
/* The driver named name (any kind), or NULL. */
const BlockDriver *block_find_driver(const char *name);
/* The format driver named name, or NULL (protocols and filters too). */
const BlockDriver *block_find_format(const char *name);
bool block_driver_is_format(const BlockDriver *d);
/* The protocol driver that owns filename ("file" for plain paths);
 * NULL when it is a URL whose driver module cannot be loaded. */
const BlockDriver *block_protocol_for(const char *filename);
/* What a driver module offers besides its driver (block/core/modules.c),
 * loading the module on first use: the structure its own header
 * declares (block/protocol/iscsi.h's IscsiTargetOps for "iscsi" ...),
 * in *ops.  0, or a negative errno with one line in err when the module
 * or its library is missing. */
int block_module_ops(const char *driver, const void **ops, Error *err);
const char *block_driver_name(const BlockDriver *d);
bool block_driver_supports_backing(const BlockDriver *d);
bool block_driver_can_compress(const BlockDriver *d);
bool block_driver_can_create(const BlockDriver *d);
bool block_driver_can_measure(const BlockDriver *d);
/* NULL-name terminated option tables; amend's is NULL when the format
 * cannot amend. */
const BlockCreateOpt *block_driver_create_opts(const BlockDriver *d);
const BlockCreateOpt *block_driver_amend_opts(const BlockDriver *d);

/* Open `filename` with `format` (NULL probes the content; probing that
 * falls back to raw is flagged in *probed_raw when not NULL).  opts are
 * driver options (--image-opts, "file.xxx" for the protocol child,
 * "backing.xxx" ...); unknown keys are an error.  Opens the backing chain
 * unless BLOCK_O_NO_BACKING. */
BlockNode *block_open(const char *filename, const char *format, KVList *opts,
                      int flags, Error *err);
/* The format driver probing would pick for filename's content (raw when
 * nothing else claims it), without opening the format: for questions
 * that need no key or lock (amend -o help). */
const BlockDriver *block_probe(const char *filename, Error *err);
/* Opens a protocol node only ("file" for paths). */
BlockNode *block_open_protocol(const char *filename, KVList *opts, int flags,
                               Error *err);
/* Drops the caller's reference: the node (and whatever of its children
 * and backing chain nobody else holds) closes when the last goes. */
void block_close(BlockNode *node);

/* ---- Sharing -------------------------------------------------------- */

/* One more reference to n (each block_ref is ended by one block_close). */
BlockNode *block_ref(BlockNode *n);
/* Names: every open node has one, given with the node-name= option or
 * made up ("#block7").  block_find_node returns a new reference to the
 * node so named, or NULL. */
const char *block_node_name(const BlockNode *n);
BlockNode *block_find_node(const char *node_name);
/* A new reference to an open format node (a top of a chain) whose file
 * is `filename` (compared by block_chain_identity), or NULL: how a
 * second export of the same image shares the first one's node. */
BlockNode *block_find_image(const char *filename);
/* Calls fn for every open node (a snapshot of the list: nodes opened or
 * closed meanwhile may be missed); stops at a non-zero return. */
int block_for_each_node(int (*fn)(BlockNode *n, void *opaque), void *opaque);

/* What a caller may ask of a node. */
const char *block_node_filename(const BlockNode *n);
const char *block_node_format(const BlockNode *n);     /* driver name */
bool block_node_is_format(const BlockNode *n);
bool block_node_read_only(const BlockNode *n);
int block_node_flags(const BlockNode *n);
/* The backing node (NULL: none, or not opened). */
BlockNode *block_backing(BlockNode *n);
/* The backing file name as the image stores it, its format, and the name
 * resolved against the image's directory (NULL when there is none). */
const char *block_node_backing_file(const BlockNode *n);
const char *block_node_backing_format(const BlockNode *n);
const char *block_node_full_backing_filename(const BlockNode *n);
/* The protocol node at the bottom of n's FILE children, seen through
 * filters (the file a qcow2 lives in), or n itself for a protocol. */
BlockNode *block_node_storage(BlockNode *n);
/* n keeps its data in an external data file (qcow2 data_file). */
bool block_node_has_data_file(BlockNode *n);
bool block_node_supports_backing(const BlockNode *n);
bool block_node_can_compress(const BlockNode *n);
/* Capabilities as NBD and virtio advertise them. */
bool block_node_can_discard(const BlockNode *n);
bool block_node_can_zero(const BlockNode *n);
bool block_node_can_fast_zero(const BlockNode *n);
bool block_node_can_fua(const BlockNode *n);
bool block_node_can_multi_conn(const BlockNode *n);
uint32_t block_node_alignment(const BlockNode *n);

/* ---- Drain and graph changes ----------------------------------------
 *
 * block_drain_begin(n) waits until no request is inside n or below it
 * (through n) and holds new ones from other threads: synchronous callers
 * wait, asynchronous submissions are queued, until the matching
 * block_drain_end.  The draining thread's own requests still run (a
 * graph change needs I/O).  While n is drained its children may be
 * swapped and it may be reopened.  Drains nest.  Never drain from a
 * completion callback or from inside a request on the same node. */
void block_drain_begin(BlockNode *n);
void block_drain_end(BlockNode *n);
/* Every open node (SIGTERM in a server: nothing in flight, then flush). */
void block_drain_all_begin(void);
void block_drain_all_end(void);

/* Reopens n read-write (flags: extra BLOCK_O_* cache flags) or read-only
 * in place, with its children, drained; the node's users keep their
 * references.  Fails with one line (and leaves n as it was) when a lock
 * or the driver refuses. */
int block_reopen(BlockNode *n, bool read_write, int flags, Error *err);
/* Makes `backing` (a reference the call takes over; NULL: none) n's
 * backing node, drained; the old one is released. */
int block_set_backing(BlockNode *n, BlockNode *backing, Error *err);

/* Opens (replacing any) the backing chain of node from backing_file /
 * backing_format.  Called by block_open; exposed for rebase/commit. */
int block_open_backing(BlockNode *node, int flags, Error *err);

/* Resolves a backing name against the directory of `overlay` (relative
 * names are relative to the overlay's directory, as in QEMU).  Returns
 * malloc'd string. */
char *block_resolve_backing(const char *overlay, const char *backing);

/* Backing chains longer than this are refused (a loop or a hostile
 * image). */
#define BLOCK_MAX_CHAIN 64
/* Identity of a chain member for loop detection (malloc'd): the
 * canonical path for local files, the string itself for URLs.  Two names
 * of one file, such as "a.qcow2" and "../dir/a.qcow2", or a json: name
 * and the file it names (once opened: use the node's filename), agree. */
char *block_chain_identity(const char *filename);

/* ------------------------------------------------------------------ */
/* Requests (thread-safe)                                              */

int block_pread(BlockNode *n, uint64_t off, size_t len, void *buf);
int block_pwrite(BlockNode *n, uint64_t off, size_t len, const void *buf,
                 int flags);
/* The same with I/O vectors: qiov->size bytes from off. */
int block_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags);
int block_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags);
int block_flush(BlockNode *n);
int block_discard(BlockNode *n, uint64_t off, uint64_t len);
int block_write_zeroes(BlockNode *n, uint64_t off, uint64_t len, int flags);
/* Status of [off, off+len) in this node alone: returns BLOCK_STATUS_*
 * flags, *pnum = bytes from off with that same status (>= 1 unless len is
 * 0); map and file (may be NULL) receive the host offset and the node
 * holding it when OFFSET_VALID.  Unallocated regions of a layer that
 * can have a backing file, with no backing node (or past its end), are
 * reported as ZERO without ALLOCATED; a protocol's unallocated regions
 * of unknown content have neither (read them). */
int block_status(BlockNode *n, uint64_t off, uint64_t len, uint64_t *pnum,
                 uint64_t *map, BlockNode **file);
/* Status through the backing chain from top down to (not including) base
 * (NULL: whole chain).  Unallocated regions past a backing file's end
 * read as zero.  *depth (may be NULL) = chain index of the layer that
 * defines the data (0 = top), or the chain length if none does. */
int block_status_above(BlockNode *top, BlockNode *base, uint64_t off,
                       uint64_t len, uint64_t *pnum, uint64_t *map,
                       BlockNode **file, int *depth);
/* Like block_pread, but bytes at or beyond the node's length read as zero
 * (for reading a possibly shorter backing file). */
int block_pread_zero_tail(BlockNode *n, uint64_t off, size_t len, void *buf);

/* Copies without moving the bytes through memory (block/core/copy-range.c):
 * [src_off, src_off + len) of src (read through its chain) into dst at
 * dst_off, by sharing the source file's extents (FICLONERANGE) and, with
 * BLOCK_COPY_IN_KERNEL, by copy_file_range where they cannot be shared.
 * Returns 0 or a negative errno; when block_copy_range_fallback() says so
 * the caller copies the range the ordinary way instead. */
enum {
    BLOCK_COPY_IN_KERNEL = 1 << 0,
};
int block_copy_range(BlockNode *src, uint64_t src_off, BlockNode *dst,
                     uint64_t dst_off, uint64_t len, int flags);
/* The same for one host range: src_file is a file protocol node. */
int block_copy_range_from(BlockNode *dst, uint64_t off, uint64_t len,
                          BlockNode *src_file, uint64_t src_host, int flags);
bool block_copy_range_fallback(int ret);

/* Named points in a format driver's work, raised on the node below it so
 * that a fault-injection filter there (QEMU's blkdebug spelling, see
 * block/filter/blkdebug.c) can act on them.  The names are QEMU's. */
typedef enum {
    BLOCK_EV_L1_UPDATE,
    BLOCK_EV_L2_LOAD,
    BLOCK_EV_L2_UPDATE,
    BLOCK_EV_L2_ALLOC_WRITE,
    BLOCK_EV_READ_AIO,
    BLOCK_EV_READ_BACKING_AIO,
    BLOCK_EV_READ_COMPRESSED,
    BLOCK_EV_WRITE_AIO,
    BLOCK_EV_WRITE_COMPRESSED,
    BLOCK_EV_COW_READ,
    BLOCK_EV_COW_WRITE,
    BLOCK_EV_REFTABLE_LOAD,
    BLOCK_EV_REFTABLE_GROW,
    BLOCK_EV_REFBLOCK_LOAD,
    BLOCK_EV_REFBLOCK_UPDATE,
    BLOCK_EV_REFBLOCK_UPDATE_PART,
    BLOCK_EV_REFBLOCK_ALLOC,
    BLOCK_EV_CLUSTER_ALLOC,
    BLOCK_EV_CLUSTER_FREE,
    BLOCK_EV_FLUSH_TO_OS,
    BLOCK_EV_FLUSH_TO_DISK,
    BLOCK_EV__MAX
} BlockDebugEvent;
/* QEMU's name of ev ("l2_load"), or NULL. */
const char *block_debug_event_name(BlockDebugEvent ev);
/* -1 when name is no event. */
int block_debug_event_lookup(const char *name);
/* Raises ev on n or, when n does not take events, on the first node
 * below it (file or filtered child) that does; nothing when none does. */
void block_debug_event(BlockNode *n, BlockDebugEvent ev);
/* Whether any node from n down takes events (drivers skip fast paths
 * that would raise none). */
bool block_takes_debug_events(BlockNode *n);
/* Could dst take shared data at all (its drivers, down to the file that
 * holds its data, all can)?  Says nothing about the file system. */
bool block_node_can_copy_range(BlockNode *n);

int64_t block_get_length(BlockNode *n);
/* Bytes the node occupies on the host ("disk size"), or negative. */
int64_t block_get_allocated_size(BlockNode *n);
int block_truncate(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                   Error *err);

/* True when every byte in the range reads as zero (block status only). */
bool block_is_zero_fast(BlockNode *n, uint64_t off, uint64_t len);
/* True when n, just made by block_create, reads as zeroes everywhere
 * whatever block status says (a raw file preallocated with written
 * zeroes is data, yet zero): a copy into it need not write zeroes, and
 * must not punch holes into what preallocation allocated. */
bool block_has_zero_init(BlockNode *n);

/* ------------------------------------------------------------------ */
/* Asynchronous requests                                               */

/* Called exactly once per submitted request with 0 or a negative errno,
 * from any thread (possibly the submitter's, before the submit function
 * returns).  It must be short and must not drain. */
typedef void BlockCompletionFn(void *opaque, int ret);

/* Submit a request; the iovecs and buffers must stay valid until the
 * callback.  Requests run concurrently and complete in any order; a
 * caller that needs an order waits for the earlier completion. */
void block_aio_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags,
                      BlockCompletionFn *cb, void *opaque);
void block_aio_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                       int flags, BlockCompletionFn *cb, void *opaque);
void block_aio_flush(BlockNode *n, BlockCompletionFn *cb, void *opaque);
void block_aio_discard(BlockNode *n, uint64_t off, uint64_t len,
                       BlockCompletionFn *cb, void *opaque);
void block_aio_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                            int flags, BlockCompletionFn *cb, void *opaque);

/* A bounded queue for one submitter: at most `depth` of its requests in
 * flight.  block_queue_reserve waits for a free slot (so a loop that
 * submits never has more than depth outstanding); pass block_queue_done
 * with the queue as the completion (or call it from your own) to free
 * it.  block_queue_wait waits for all and returns the first error. */
typedef struct BlockQueue BlockQueue;
BlockQueue *block_queue_new(unsigned depth);
void block_queue_free(BlockQueue *q);
/* Waits for a slot; returns a token to pass as the completion opaque of
 * the request (with block_queue_complete as its callback), or to give to
 * block_queue_complete from the caller's own callback. */
void *block_queue_reserve(BlockQueue *q, BlockCompletionFn *cb,
                          void *opaque);
void block_queue_complete(void *token, int ret);
int block_queue_wait(BlockQueue *q);

/* ------------------------------------------------------------------ */
/* Reports                                                             */

typedef enum {
    BLOCK_REPORT_WARNING,   /* "imgtool: warning: ..." */
    BLOCK_REPORT_ERROR,     /* a failure the library carries on after */
    BLOCK_REPORT_INFO,
} BlockReportLevel;

/* Where the library's warnings go (one line each, no "imgtool:" prefix
 * and no newline); the default drops them.  Set once at start-up. */
typedef void BlockReportFn(void *opaque, BlockReportLevel level,
                           const char *msg);
void block_set_report_fn(BlockReportFn *fn, void *opaque);
/* A warning or notice for the user from drivers and jobs (the library
 * never prints: the CLI, an export or a test installs the sink above). */
void block_report(BlockReportLevel level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------ */
/* Format-level operations                                             */

/* Whether filename can name a new image (json: names cannot); call
 * before announcing a creation. */
int block_create_name_check(const char *filename, Error *err);
/* Create an image.  size may be 0 when opts has backing_file (the
 * backing file's size is used unless BLOCK_CREATE_UNSAFE).  opts hold the
 * driver's -o options (incl. backing_file, backing_fmt).  On failure the
 * local files it made (the image, qcow2's data file) are removed again;
 * a file that existed before is never removed. */
enum { BLOCK_CREATE_UNSAFE = 1 << 0, BLOCK_CREATE_QUIET = 1 << 1 };
int block_create(const char *format, const char *filename, uint64_t size,
                 bool size_given, KVList *opts, int flags, Error *err);

/* Describes one create option (for -o help and validation). */
typedef enum { OPT_STRING, OPT_SIZE, OPT_NUMBER, OPT_BOOL } OptType;
struct BlockCreateOpt {
    const char *name;
    OptType type;
    const char *help;
    const char *def;   /* default value as text, or NULL */
};

/* check's findings, one line each in qemu-img's words ("ERROR cluster 5
 * refcount=1 reference=2", "Leaked cluster 9 refcount=1 reference=0",
 * "Repairing ..."), handed to the caller as they are found (a damaged
 * image can have millions); NULL drops them. */
typedef void BlockCheckMessageFn(void *opaque, const char *line);

typedef struct BlockCheckResult {
    BlockCheckMessageFn *message;    /* set by the caller */
    void *message_opaque;
    int corruptions;
    int leaks;
    int check_errors;
    int corruptions_fixed;
    int leaks_fixed;
    int64_t image_end_offset;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    bool bfi_valid;    /* the cluster counters above are meaningful */
} BlockCheckResult;

enum { BLOCK_FIX_LEAKS = 1, BLOCK_FIX_ERRORS = 2 };

/* Returns -ENOTSUP when the format cannot be checked. */
int block_check(BlockNode *n, BlockCheckResult *res, int fix, Error *err);

typedef struct BlockMeasure {
    uint64_t required;
    uint64_t fully_allocated;
    uint64_t bitmaps;
    bool has_bitmaps;
} BlockMeasure;

/* in may be NULL (measure by size); opts are the target's -o options. */
int block_measure(const char *format, KVList *opts, BlockNode *in,
                  uint64_t size, BlockMeasure *out, Error *err);

/* Format-specific info for `info`: the value of "format-specific", i.e.
 * {"type": drv, "data": {...}}, or NULL.  Caller owns the result. */
json_t *block_get_format_info(BlockNode *n);
/* cluster size, dirty flag etc. for `info`; 0/false when not relevant. */
typedef struct BlockInfoExtra {
    uint64_t cluster_size;
    bool dirty;
    bool encrypted;
} BlockInfoExtra;
void block_get_info_extra(BlockNode *n, BlockInfoExtra *out);

/* Update the header's backing file name/format (rebase -u, commit). */
int block_change_backing_file(BlockNode *n, const char *file,
                              const char *fmt, Error *err);

/* Chains (block/chain.c), for commit and rebase. */
/* Every cluster of n becomes unallocated (not zero): n reads through to
 * its backing file again.  -ENOTSUP when the format cannot. */
int block_make_empty(BlockNode *n, Error *err);
/* Replaces parent->backing by the same image opened read-write (with its
 * own backing chain), so data can be committed into it.  flags are extra
 * BLOCK_O_* (cache modes).  On failure parent->backing is reopened
 * read-only when possible. */
int block_reopen_backing_rw(BlockNode *parent, int flags, Error *err);

/* Progress of a long operation (amend, ...): done out of total units. */
typedef void BlockProgressFn(void *opaque, uint64_t done, uint64_t total);

/* Changes options of an existing image in place (qemu-img amend); opts
 * are the format's -o options.  Keys the format cannot change are an
 * error naming them; nothing is changed then.  force allows what loses
 * something (erasing the last key slot).  progress may be NULL
 * (block/amend.c). */
int block_amend(BlockNode *n, KVList *opts, bool force,
                BlockProgressFn *progress, void *opaque, Error *err);

/* ---- Persistent dirty bitmaps (block/core/bitmap.c) ----
 * What `imgtool bitmap` does, one operation each, with qemu-img's errors
 * (the caller prefixes "Operation <op> on bitmap <name> failed: ").
 * granularity 0 takes the format's default. */
int block_bitmap_add(BlockNode *n, const char *name, uint64_t granularity,
                     bool enabled, Error *err);
int block_bitmap_remove(BlockNode *n, const char *name, Error *err);
int block_bitmap_clear(BlockNode *n, const char *name, Error *err);
int block_bitmap_enable(BlockNode *n, const char *name, bool enable,
                        Error *err);
/* dst |= src; src_node may be n itself. */
int block_bitmap_merge(BlockNode *n, const char *dst, BlockNode *src_node,
                       const char *src, Error *err);
/* Whether bitmap `name` of n has [off, ...) dirty: *dirty says so for
 * the byte at off and *pnum (>= 1 unless off is at or past the bitmap's
 * end, then 0) counts the bytes from off, at most len, that share that
 * answer.  Read-only and thread-safe (NBD's qemu:dirty-bitmap:NAME
 * context, backups). */
int block_bitmap_dirty_range(BlockNode *n, const char *name, uint64_t off,
                             uint64_t len, bool *dirty, uint64_t *pnum,
                             Error *err);
/* The persistent bitmaps of n, as `info` lists them (names malloc'd;
 * free with block_bitmap_list_free).  *count 0 without bitmaps support. */
typedef struct BlockBitmapInfo {
    char *name;
    uint64_t granularity;
    bool enabled;
    bool inconsistent;       /* found in use on disk: unusable */
} BlockBitmapInfo;
int block_bitmap_list(BlockNode *n, BlockBitmapInfo **out, int *count);
void block_bitmap_list_free(BlockBitmapInfo *v, int count);
/* Non-persistent bitmaps for a node whose format keeps none (raw):
 * gives it a set that lives in memory only; refused (ENOTSUP) for a
 * node whose format stores its bitmaps.  No-op when it has a volatile
 * set already. */
int block_bitmaps_make_volatile(BlockNode *n, Error *err);
/* n has such a set (its bitmaps end with the process). */
bool block_bitmaps_volatile(BlockNode *n);
/* n can hold persistent bitmaps (qcow2 v3, writable). */
bool block_bitmaps_persistent(BlockNode *n);
/* convert --bitmaps: src has bitmaps support and, unless skip_broken,
 * no inconsistent bitmap (checked before the target is created). */
int block_bitmaps_check_copy(BlockNode *src, bool skip_broken, Error *err);
/* Adds every (consistent) bitmap of src to dst with the same name,
 * granularity, state and bits, then stores them; qemu-img's messages. */
int block_bitmaps_copy(BlockNode *dst, BlockNode *src, bool skip_broken,
                       Error *err);
/* Persists n's bitmaps now (the format's store): what close would do,
 * with the error reported.  The stored bitmaps are no longer flagged in
 * use, so call it right before block_close, with no write in between.
 * No-op without bitmaps support or on a read-only node. */
int block_bitmaps_store(BlockNode *n, Error *err);

/* ---- Rebase and external snapshots (block/rebase.c, block/extsnap.c) -- */

/* Changes top's backing file to r->backing ("" or NULL: none).  Safe
 * mode copies into top whatever the new backing reads differently from
 * the old chain, then switches the header; crash-safe (data first). */
typedef struct BlockRebase {
    const char *backing;     /* as it will be stored in top */
    const char *backing_fmt;
    int backing_flags;       /* BLOCK_O_* to open it with (-U, -T) */
    bool unsafe;             /* header only */
    bool compress;           /* store written clusters compressed */
    BlockProgressFn *progress;   /* may be NULL */
    void *progress_opaque;
} BlockRebase;
int block_rebase(BlockNode *top, const BlockRebase *r, Error *err);

/* External snapshots of the active image at path `active` (format fmt,
 * NULL probes): the layers of its backing chain, named after their files
 * ("<stem>.NAME.qcow2" is NAME, other files their name without
 * extension).  Each call opens and locks what it needs itself; the
 * active path names the old or the new image whenever it is killed. */
typedef struct BlockExtSnapLayer {
    char *name;
    char *filename;          /* as the chain names it */
    char *format;
    uint64_t virtual_size;
    int64_t actual_size;     /* bytes on the host, < 0 unknown */
    int64_t date_sec;        /* the file's mtime: when it was frozen */
    uint32_t date_nsec;
    bool active;             /* the top, the image the VM uses */
} BlockExtSnapLayer;

typedef struct BlockExtSnapList {
    BlockExtSnapLayer *layers;   /* top first */
    int n;
    bool interrupted;        /* a killed run left files to clean up; the
                                next create/revert/delete removes them */
} BlockExtSnapList;

/* flags: BLOCK_O_SHARE (-U). */
int block_extsnap_list(const char *active, const char *fmt, int flags,
                       BlockExtSnapList *out, Error *err);
void block_extsnap_list_free(BlockExtSnapList *l);
/* Freezes the active content as `name` (in `file`, or NULL for
 * <dir>/<stem>.NAME.qcow2) under a fresh empty overlay. */
int block_extsnap_create(const char *active, const char *fmt,
                         const char *name, const char *file, Error *err);
/* The active image becomes a fresh overlay on layer `name` (a name, file
 * name or path); the layers above it are deleted. */
int block_extsnap_revert(const char *active, const char *fmt,
                         const char *name, Error *err);
/* Removes layer `name`, keeping every other state: the layer above takes
 * its data (safe rebase), then its file is deleted. */
int block_extsnap_delete(const char *active, const char *fmt,
                         const char *name, BlockProgressFn *progress,
                         void *opaque, Error *err);
/* ---- end of rebase and external snapshots ---- */

/* One internal snapshot, as `info` and `snapshot -l` show it
 * (block/snapshot.c). */
typedef struct BlockSnapshotInfo {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_sec, vm_clock_nsec;
    uint64_t icount;
    bool has_icount;
} BlockSnapshotInfo;

/* Snapshots of n (count 0 and *out NULL-or-empty for formats without
 * any); free with block_snapshot_list_free. */
int block_snapshot_list(BlockNode *n, BlockSnapshotInfo **out, int *count);
void block_snapshot_list_free(BlockSnapshotInfo *v, int count);
/* -ENOTSUP (err set) when the format has no internal snapshots. */
int block_snapshot_create(BlockNode *n, const char *name, Error *err);
int block_snapshot_apply(BlockNode *n, const char *id_or_name, Error *err);
/* Deletes the first snapshot *named* `name` (ids are not looked at, as
 * in qemu-img snapshot -d: with numeric names an id match would delete
 * a different snapshot than the one named). */
int block_snapshot_delete(BlockNode *n, const char *name, Error *err);
/* Makes a read-only node read the snapshot instead of the active state
 * until it is closed (qemu-img convert -l).  param is an id or name, or
 * "snapshot.id=I[,snapshot.name=N]" as qemu-img accepts it. */
int block_snapshot_load_tmp(BlockNode *n, const char *param, Error *err);

#endif
