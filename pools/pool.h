/*
 * pool.h - storage pools and volumes, virsh's vocabulary without a
 * daemon: the API the commands in cmd/ call.
 *
 * A *store* is a directory of libvirt storage pool XML definitions
 * (pool_store_open() says which) with imgtool's running state beside
 * them.  Every call that changes something takes the store's or the
 * pool's lock (flock) for the few moments it updates the state, and
 * writes files by write-temp + fsync + rename, so concurrent commands
 * serialise and a killed command leaves the old or the new state.  Long
 * work on a volume's data (copying, wiping, uploading) runs without the
 * pool lock: the volume's image lock keeps other writers out, and an
 * operation marker tells later commands whether the work is still
 * running or was killed (then the volume is not listed as good).
 *
 * Pools and volumes are named as virsh names them: a pool by name or
 * UUID, a volume by name within a pool, by key, or by path.  Image
 * commands name a volume as "vol:POOL/NAME" (pool_vol_open_spec()).
 *
 * Every function returns 0 (or a count) on success and a negative errno
 * with err set to one line on failure.  Nothing here prints or exits.
 */
#ifndef IMGTOOL_POOLS_POOL_H
#define IMGTOOL_POOLS_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block/block.h"

typedef struct PoolStore PoolStore;

/* Opens the store: $IMGTOOL_CONFIG_DIR when set, else
 * /etc/imgtool/storage for root and $XDG_CONFIG_HOME/imgtool/storage
 * (~/.config/imgtool/storage) for other users.  Creates it when
 * missing. */
int pool_store_open(PoolStore **out, Error *err);
void pool_store_close(PoolStore *s);
const char *pool_store_dir(const PoolStore *s);

/* ---- pools ---------------------------------------------------------- */

typedef struct PoolInfo {
    char *name;
    char *uuid;
    char *type;             /* "dir", "logical", "iscsi", "gluster" ... */
    char *target;           /* the target path */
    bool active;
    bool autostart;
    bool persistent;        /* false: made by pool-create-as */
    bool sizes_known;       /* capacity..available are meaningful */
    uint64_t capacity;
    uint64_t allocation;
    uint64_t available;
} PoolInfo;

void pool_info_clear(PoolInfo *i);
void pool_info_list_free(PoolInfo *v, size_t n);

/* The options of pool-define-as / pool-create-as (NULL when not given),
 * turned into XML as virsh does (pool_xml_from_args). */
typedef struct PoolDefineArgs {
    const char *name, *type;
    const char *source_host, *source_path, *source_dev, *source_name;
    const char *target, *source_format;
    const char *source_initiator;
    const char *auth_type, *auth_username, *secret_usage, *secret_uuid;
} PoolDefineArgs;
int pool_xml_from_args(const PoolDefineArgs *a, char **xml, Error *err);

enum {
    POOL_BUILD_OVERWRITE    = 1 << 0,
    POOL_BUILD_NO_OVERWRITE = 1 << 1,
};

/* Defines (or redefines, keeping the UUID) a persistent pool from XML;
 * *name receives its name (malloc'd). */
int pool_define(PoolStore *s, const char *xml, size_t len, char **name,
                Error *err);
/* pool-create-as: a transient pool, built when build is set, started;
 * nothing stays defined when it fails. */
int pool_create(PoolStore *s, const char *xml, size_t len, bool build,
                unsigned build_flags, char **name, Error *err);
int pool_build(PoolStore *s, const char *pool, unsigned flags, Error *err);
int pool_start(PoolStore *s, const char *pool, bool build, unsigned flags,
               Error *err);
/* pool-destroy: inactive (a transient pool disappears). */
int pool_destroy(PoolStore *s, const char *pool, Error *err);
/* pool-delete: removes the pool's storage (the directory, the VG). */
int pool_delete(PoolStore *s, const char *pool, Error *err);
int pool_undefine(PoolStore *s, const char *pool, Error *err);
int pool_refresh(PoolStore *s, const char *pool, Error *err);
int pool_set_autostart(PoolStore *s, const char *pool, bool on, Error *err);

/* Every pool, sorted by name; sizes of active pools are current. */
int pool_list(PoolStore *s, PoolInfo **out, size_t *n, Error *err);
int pool_get_info(PoolStore *s, const char *pool, PoolInfo *out,
                  Error *err);
/* The pool's XML as libvirt formats it (live sizes unless inactive). */
int pool_dumpxml(PoolStore *s, const char *pool, bool inactive, char **xml,
                 Error *err);

/* ---- volumes -------------------------------------------------------- */

typedef enum {
    VOL_STATE_OK = 0,
    VOL_STATE_WIPE_INTERRUPTED,   /* a killed vol-wipe left it half wiped */
} VolState;

typedef struct VolExtent {
    char *device;
    uint64_t start, end;          /* bytes on the device */
} VolExtent;

typedef struct VolInfo {
    char *pool;
    char *name;
    char *key;
    char *path;
    char *format;                 /* "raw", "qcow2", "luks" */
    const char *type;             /* "file", "block" */
    uint64_t capacity;            /* guest-visible size */
    uint64_t allocation;          /* host bytes used */
    uint64_t physical;            /* host bytes the volume spans */
    char *backing_path;           /* NULL: none */
    char *backing_format;
    char *secret;                 /* the --object secret id of a LUKS
                                     volume, NULL when unknown */
    VolState state;
    /* what vol-dumpxml shows beyond the above */
    uint64_t cluster_size;        /* qcow2, else 0 */
    char *compat;                 /* qcow2 "0.10"/"1.1", else NULL */
    bool lazy_refcounts, extended_l2;
    int mode, uid, gid;           /* -1: not shown */
    int64_t atime_ns, mtime_ns, ctime_ns;   /* 0: not shown */
    VolExtent *extents;           /* logical volumes */
    size_t nextents;
    char *unusable;               /* why it cannot be opened here (an LV
                                     active through device-mapper
                                     somewhere, ...), NULL: it can */
} VolInfo;

void vol_info_clear(VolInfo *v);
void vol_info_list_free(VolInfo *v, size_t n);
/* Deep copy; returns -ENOMEM. */
int vol_info_copy(VolInfo *dst, const VolInfo *src);

/* Volumes of an active pool, sorted by name (refreshes what changed). */
int pool_vol_list(PoolStore *s, const char *pool, VolInfo **out, size_t *n,
                  Error *err);
/* virsh's lookup: by name in pool (when given), else by key, else by
 * path in any active pool. */
int pool_vol_find(PoolStore *s, const char *pool, const char *vol,
                  VolInfo *out, Error *err);
int pool_vol_dumpxml(PoolStore *s, const char *pool, const char *vol,
                     char **xml, Error *err);
/* libvirt's volume XML for v. */
char *pool_vol_format_xml(const VolInfo *v);

/* What a new volume is (vol-create-as, or parsed from volume XML). */
typedef struct VolCreateArgs {
    char *name;
    uint64_t capacity;
    bool has_allocation;
    uint64_t allocation;
    char *format;                 /* NULL: raw */
    char *backing_vol;            /* a volume name, key or path */
    char *backing_format;
    char *secret;                 /* LUKS: --object secret id */
    uint64_t iter_time;           /* LUKS: PBKDF time in ms, 0: default */
    bool prealloc_metadata;
    uint64_t cluster_size;        /* 0: default */
    char *compat;
    bool lazy_refcounts;
    int mode;                     /* -1: default */
} VolCreateArgs;

void vol_create_args_clear(VolCreateArgs *a);
int pool_vol_args_from_xml(const char *xml, size_t len, VolCreateArgs *a,
                           Error *err);
/* vol-create-as --print-xml. */
char *pool_vol_args_to_xml(const VolCreateArgs *a);

/* Creates a volume (and its content, copied from `from` when not NULL:
 * vol-create-from and vol-clone).  *out (may be NULL) describes it. */
int pool_vol_create(PoolStore *s, const char *pool, const VolCreateArgs *a,
                    BlockProgressFn *progress, void *opaque, VolInfo *out,
                    Error *err);
int pool_vol_create_from(PoolStore *s, const char *pool,
                         const VolCreateArgs *a, const char *inputpool,
                         const char *from, BlockProgressFn *progress,
                         void *opaque, VolInfo *out, Error *err);
int pool_vol_clone(PoolStore *s, const char *pool, const char *vol,
                   const char *newname, BlockProgressFn *progress,
                   void *opaque, VolInfo *out, Error *err);
int pool_vol_delete(PoolStore *s, const char *pool, const char *vol,
                    Error *err);

/* As libvirt: DELTA adds capacity to the current size, DELTA with
 * SHRINK takes it away; without SHRINK the volume never gets smaller. */
enum {
    VOL_RESIZE_ALLOCATE = 1 << 0,
    VOL_RESIZE_DELTA    = 1 << 1,
    VOL_RESIZE_SHRINK   = 1 << 2,
};
int pool_vol_resize(PoolStore *s, const char *pool, const char *vol,
                    uint64_t capacity, unsigned flags, Error *err);

/* vol-wipe algorithms: "zero", "nnsa", "dod", "bsi", "gutmann",
 * "schneier", "pfitzner7", "pfitzner33", "random", "trim". */
int pool_vol_wipe(PoolStore *s, const char *pool, const char *vol,
                  const char *algorithm, BlockProgressFn *progress,
                  void *opaque, Error *err);

/* The i-th wipe algorithm's name, NULL past the last (completion). */
const char *pool_wipe_algorithm(size_t i);

/* vol-upload / vol-download: the volume's host bytes from/to fd.
 * length 0 with has_length false means "to the end". */
typedef struct VolTransfer {
    int fd;
    const char *fd_name;          /* for messages ("stdin", a path) */
    uint64_t offset;
    uint64_t length;
    bool has_length;
    bool sparse;
    BlockProgressFn *progress;
    void *opaque;
} VolTransfer;
int pool_vol_upload(PoolStore *s, const char *pool, const char *vol,
                    const VolTransfer *t, Error *err);
int pool_vol_download(PoolStore *s, const char *pool, const char *vol,
                      const VolTransfer *t, Error *err);

/* ---- volumes in image commands ("vol:POOL/NAME") -------------------- */

#define POOL_VOL_PREFIX "vol:"
bool pool_is_vol_name(const char *name);

/* How the block layer opens a volume: filename with format and driver
 * options (opts holds "key-secret" for a LUKS volume whose secret was
 * given with --object, for instance). */
typedef struct VolOpenSpec {
    char *filename;
    char *format;
    KVList opts;
} VolOpenSpec;
void vol_open_spec_clear(VolOpenSpec *s);

/* name is "vol:POOL/NAME".  Refuses volumes that are not usable (an
 * inactive pool, an interrupted wipe or creation, an LV active through
 * device-mapper somewhere). */
int pool_vol_open_spec(PoolStore *s, const char *name, VolOpenSpec *spec,
                       Error *err);
/* Where an image command may create "vol:POOL/NAME": the path of a new
 * file in an active directory pool, or the existing volume's open spec
 * (*exists set) for any pool. */
int pool_vol_target_spec(PoolStore *s, const char *name, VolOpenSpec *spec,
                         bool *exists, Error *err);

/* An image command created "vol:POOL/NAME" itself: the pool records
 * its format as imgtool's own (never probed again). */
int pool_vol_set_format(PoolStore *s, const char *name, const char *format,
                        Error *err);

/* ---- helpers shared with the commands ------------------------------- */

/* Validates XML against libvirt's RelaxNG schema ("storagepool",
 * "storagevol") as virt-xml-validate does; needs libvirt's schemas. */
int pool_xml_validate(const char *xml, size_t len, const char *schema,
                      Error *err);

/* A scaled integer as virsh reads it: digits with an optional unit
 * suffix (b, k/KiB = 1024, KB = 1000, ... up to E/EiB/EB), default
 * bytes. */
int pool_parse_scaled(const char *s, uint64_t *out);

#endif
