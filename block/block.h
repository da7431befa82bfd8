/*
 * block.h - the public API of imgtool's block layer.
 *
 * A node graph: a command opens a top node (format driver) which owns a
 * protocol child (`file`) and, optionally, a backing node (another format
 * node).  Every request goes through the block_* functions below; drivers
 * only ever talk to their own children through the same functions.
 *
 * Invariants the core keeps for drivers:
 *  - requests reaching a driver are aligned to node->request_alignment
 *    (the core bounces unaligned ones, serialising read-modify-write);
 *  - requests never extend past block_get_length() (except truncate);
 *  - write requests never reach a node opened read-only.
 * Drivers must be thread-safe: many callers issue requests at once.
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

struct BlockNode {
    const BlockDriver *drv;
    void *opaque;              /* driver state, drv->instance_size bytes */

    char *filename;            /* as the user named it */
    int flags;                 /* BLOCK_O_* it was opened with */
    bool read_only;

    BlockNode *file;           /* protocol child of a format node */
    BlockNode *data_file;      /* external data file child (qcow2), or NULL */
    BlockNode *backing;        /* backing node, or NULL */

    /* Set by a format driver's open from its header; the core opens the
     * chain from them.  backing_file is as stored in the image. */
    char *backing_file;
    char *backing_format;      /* NULL when the image does not say */
    char *full_backing_filename;  /* resolved against our directory */

    uint32_t request_alignment;   /* >= 1; power of two */
    uint64_t max_transfer;        /* 0 = unlimited */

    pthread_mutex_t rmw_lock;     /* serialises bounced unaligned writes */

    /* In-memory dirty bitmaps of this node (block/bitmap.c), NULL when
     * it has none; every successful write, zero and discard that reaches
     * this node marks the enabled ones. */
    struct BlockBitmaps *bitmaps;

    /* The driver options this node was opened with ("encrypt.key-secret",
     * "backing.xxx" ...), so that reopening it (block_reopen_backing_rw)
     * keeps them. */
    KVList open_opts;
};

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
/* Closes node, its children and its backing chain. */
void block_close(BlockNode *node);

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
int block_flush(BlockNode *n);
int block_discard(BlockNode *n, uint64_t off, uint64_t len);
int block_write_zeroes(BlockNode *n, uint64_t off, uint64_t len, int flags);
/* Status of [off, off+len) in this node alone: returns BLOCK_STATUS_*
 * flags, *pnum = bytes from off with that same status (>= 1 unless len is
 * 0); map and file (may be NULL) receive the host offset and the node
 * holding it when OFFSET_VALID.  Unallocated regions with no backing node
 * (or past its end) are reported as ZERO without ALLOCATED. */
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

int64_t block_get_length(BlockNode *n);
/* Bytes the node occupies on the host ("disk size"), or negative. */
int64_t block_get_allocated_size(BlockNode *n);
int block_truncate(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                   Error *err);

/* True when every byte in the range reads as zero (block status only). */
bool block_is_zero_fast(BlockNode *n, uint64_t off, uint64_t len);

/* ------------------------------------------------------------------ */
/* Format-level operations                                             */

/* Whether filename can name a new image (json: names cannot); call
 * before announcing a creation. */
int block_create_name_check(const char *filename, Error *err);
/* Create an image.  size may be 0 when opts has backing_file (the
 * backing file's size is used unless BLOCK_CREATE_UNSAFE).  opts hold the
 * driver's -o options (incl. backing_file, backing_fmt). */
enum { BLOCK_CREATE_UNSAFE = 1 << 0, BLOCK_CREATE_QUIET = 1 << 1 };
int block_create(const char *format, const char *filename, uint64_t size,
                 bool size_given, KVList *opts, int flags, Error *err);

/* Describes one create option (for -o help and validation). */
typedef enum { OPT_STRING, OPT_SIZE, OPT_NUMBER, OPT_BOOL } OptType;
typedef struct BlockCreateOpt {
    const char *name;
    OptType type;
    const char *help;
    const char *def;   /* default value as text, or NULL */
} BlockCreateOpt;

typedef struct BlockCheckResult {
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
int block_snapshot_delete(BlockNode *n, const char *id_or_name, Error *err);
/* Makes a read-only node read the snapshot instead of the active state
 * until it is closed (qemu-img convert -l).  param is an id or name, or
 * "snapshot.id=I[,snapshot.name=N]" as qemu-img accepts it. */
int block_snapshot_load_tmp(BlockNode *n, const char *param, Error *err);

/* ------------------------------------------------------------------ */
/* The driver contract                                                 */

struct BlockDriver {
    const char *name;
    size_t instance_size;
    bool is_protocol;      /* leaf node over a host resource */
    bool is_format;
    bool supports_backing;
    bool supports_compressed;  /* pwrite honours BLOCK_REQ_COMPRESSED */

    /* Format probing: score 0..100 for the first bytes of a file. */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /* Protocol drivers: does this filename belong to us (iscsi://...)? */
    bool (*owns_filename)(const char *filename);

    /* Format drivers: node->file is already open.  Options not consumed
     * are an error. */
    int (*open)(BlockNode *n, KVList *opts, int flags, Error *err);
    void (*close)(BlockNode *n);

    int (*pread)(BlockNode *n, uint64_t off, size_t len, void *buf);
    int (*pwrite)(BlockNode *n, uint64_t off, size_t len, const void *buf,
                  int flags);
    int (*flush)(BlockNode *n);   /* own metadata/cache; core flushes
                                     children afterwards */
    int (*discard)(BlockNode *n, uint64_t off, uint64_t len);
    int (*write_zeroes)(BlockNode *n, uint64_t off, uint64_t len, int flags);
    int (*block_status)(BlockNode *n, uint64_t off, uint64_t len,
                        uint64_t *pnum, uint64_t *map, BlockNode **file);
    int64_t (*get_length)(BlockNode *n);
    int64_t (*get_allocated_size)(BlockNode *n);
    int (*truncate)(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                    Error *err);

    int (*create)(const char *filename, uint64_t size, KVList *opts,
                  Error *err);
    const BlockCreateOpt *create_opts;   /* NULL-name terminated */

    int (*check)(BlockNode *n, BlockCheckResult *res, int fix, Error *err);
    /* Internal snapshots (NULL: the format has none).  id_or_name is
     * matched against ids first, then names, as QEMU does. */
    int (*snapshot_create)(BlockNode *n, const char *name, Error *err);
    int (*snapshot_apply)(BlockNode *n, const char *id_or_name, Error *err);
    int (*snapshot_delete)(BlockNode *n, const char *id_or_name,
                           Error *err);
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

/* The registry (block/drivers.c). */
const BlockDriver *block_find_driver(const char *name);
/* NULL-terminated list of every driver. */
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
