/*
 * backend.h - the whole contract between the pool core (pools/pool.c,
 * pools/volume.c) and a storage back end (pools/dir.c,
 * pools/logical.c).  A new pool type is one file with one PoolBackend
 * plus a line in pool_backends[] (pools/pool.c).
 *
 * The core calls every op with the pool's lock held and the pool
 * loaded (Pool: its definition, running state and the back end's
 * cache), except where an op says otherwise.  Ops never print; they
 * return 0 or a negative errno with err set to one line.
 *
 * Rules the core keeps for back ends:
 *  - names reaching an op passed pool_check_name() (no '/', "..",
 *    control characters) and the back end's own vol_name_check;
 *  - vol_create is only called for a name no volume and no running or
 *    interrupted operation uses; it makes an *empty* volume of the
 *    requested format and capacity (content is copied afterwards through
 *    the block layer, by the core, with the pool unlocked and the name
 *    held by an operation marker);
 *  - vol_delete is called with the volume open for writing by the core
 *    (so QEMU or another imgtool using it made the delete fail first);
 *    vol_resize opens the volume for writing itself (an LV's extents
 *    change during the resize) and must fail when it cannot;
 *  - a back end answers "how do I open this volume" (vol_open_spec) with
 *    something the block layer opens; it never does format I/O itself
 *    beyond creating an empty image through pool_create_image() and
 *    reading one through pool_read_image_info().
 */
#ifndef IMGTOOL_POOLS_BACKEND_H
#define IMGTOOL_POOLS_BACKEND_H

#include <jansson.h>

#include "pools/pool.h"

/* A source host of a network pool: <host name='...' port='...'/>. */
typedef struct PoolHost {
    char *name;
    int port;                     /* 0: the protocol's default */
} PoolHost;

/* A pool definition (libvirt's storage pool XML, pools/poolxml.c). */
typedef struct PoolDef {
    char *type;
    char *name;
    char uuid[37];
    char *target_path;            /* NULL when not given */
    char *source_name;            /* logical: the VG; gluster: the volume */
    char *source_format;          /* logical: "lvm2"/"unknown" */
    char **source_devices;        /* iscsi: the target IQN */
    size_t ndevices;
    PoolHost *hosts;              /* iscsi, gluster: the servers */
    size_t nhosts;
    char *source_dir;             /* gluster: the directory in the volume */
    char *initiator_iqn;          /* iscsi: <initiator><iqn name=.../> */
    char *auth_type;              /* "chap", NULL: no authentication */
    char *auth_username;
    char *auth_secret;            /* <secret usage=...> or uuid=...: the
                                     id of an --object secret */
    bool auth_secret_is_uuid;
    int mode, uid, gid;           /* target permissions, -1: unset */
    char *label;
} PoolDef;

void pool_def_clear(PoolDef *d);
int pool_def_parse(const char *xml, size_t len, PoolDef *d, Error *err);
/* sizes may be NULL (the stored definition has none). */
char *pool_def_format(const PoolDef *d, const uint64_t sizes[3]);

typedef struct PoolBackend PoolBackend;

/* A loaded pool, locked by the caller. */
typedef struct Pool {
    PoolStore *store;
    PoolDef def;
    const PoolBackend *be;
    bool active;
    bool autostart;
    bool transient;
    uint64_t capacity, allocation, available;   /* after refresh_sizes */

    VolInfo *vols;                /* after refresh: every good volume */
    size_t nvols;
    bool refreshed;

    json_t *cache;                /* the back end's cache (an object),
                                     kept in the pool's state dir */
    bool cache_dirty;             /* write it back when unlocking */

    int lock_fd;                  /* the pool lock, -1 when not held */
    char *state_dir;              /* .imgtool/pools/NAME */
} Pool;

struct PoolBackend {
    const char *type;
    /* Checks the definition's fields for this type and fills defaults
     * (logical: the VG name, the target path). */
    int (*def_check)(PoolDef *d, Error *err);
    int (*vol_name_check)(const char *name, Error *err);

    int (*build)(Pool *p, unsigned flags, Error *err);
    /* The pool's storage is there and usable. */
    int (*start)(Pool *p, Error *err);
    int (*stop)(Pool *p, Error *err);
    int (*delete)(Pool *p, Error *err);

    /* Capacity, allocation and available of the pool. */
    int (*refresh_sizes)(Pool *p, Error *err);
    /* Fills p->vols with every volume (sorted by name or not: the core
     * sorts).  Incremental where it can be: p->cache survives between
     * commands. */
    int (*refresh)(Pool *p, Error *err);
    /* One volume by name (fast path of lookups); -ENOENT when missing. */
    int (*vol_lookup)(Pool *p, const char *name, VolInfo *out, Error *err);

    /* Makes an empty volume; fills out.  The core has checked the name. */
    int (*vol_create)(Pool *p, const VolCreateArgs *a, VolInfo *out,
                      Error *err);
    /* Removes a volume's storage (also half-made ones: v may describe a
     * volume that never completed). */
    int (*vol_delete)(Pool *p, const VolInfo *v, Error *err);
    /* Sets the capacity (already checked against --shrink by the core);
     * allocate: the new space gets host storage. */
    int (*vol_resize)(Pool *p, const VolInfo *v, uint64_t capacity,
                      bool allocate, Error *err);
    /* Host bytes of the volume (upload, download, wipe) and its image
     * (the format over them).  raw_bytes: open the storage as raw bytes
     * whatever the volume's format. */
    int (*vol_open_spec)(Pool *p, const VolInfo *v, bool raw_bytes,
                         VolOpenSpec *spec, Error *err);
    /* Where an image command (create, convert) makes a volume of this
     * name that does not exist yet: a file's path or a URL (malloc'd).
     * NULL op: such commands cannot make volumes in this pool (an LV or a
     * LUN needs the pool's own commands or the server's). */
    char *(*vol_new_path)(Pool *p, const char *name);
    /* Its volumes exist before any image is put on them (an iSCSI
     * target's LUNs): image commands create onto an existing volume
     * instead of refusing to clobber it. */
    bool fixed_volumes;
    /* The volume's content changed behind the back end's cache (upload,
     * wipe, an image command that created it): forget what it knew and
     * record `format` as what it is now (NULL: find out by probing). */
    int (*vol_changed)(Pool *p, const VolInfo *v, const char *format,
                       Error *err);
};

extern const PoolBackend pool_backend_dir;
extern const PoolBackend pool_backend_logical;
extern const PoolBackend pool_backend_iscsi;
extern const PoolBackend pool_backend_iscsi_direct;
extern const PoolBackend pool_backend_gluster;

const PoolBackend *pool_backend_find(const char *type);

/* ---- shared by back ends (pools/image.c, pools/volume.c) ------------ */

/* One volume's info from its image through the block layer (format,
 * capacity, backing, qcow2 details); fmt NULL probes.  Returns 1 when
 * the image cannot be opened as what it is: v->format is set, the rest
 * is left for the caller (a file's size). */
int pool_read_image_info(const char *filename, const char *fmt,
                         VolInfo *v, Error *err);
/* Opens a volume through the block layer (pools/volume.c): its image,
 * or its host bytes when raw_bytes. */
int pool_vol_open_node(Pool *p, const VolInfo *v, bool raw_bytes, int flags,
                       BlockNode **out, Error *err);
/* Starts a volume's open spec (pools/volopen.c): filename (taken, NULL
 * when out of memory) and v's format, or "raw" for its host bytes.
 * On failure spec is cleared. */
int pool_vol_spec_init(VolOpenSpec *spec, char *filename, const VolInfo *v,
                       bool raw_bytes, Error *err);
/* A LUKS image's key, when the command defined v's secret; without it
 * the volume still opens for what needs no key (info). */
void pool_vol_spec_luks_key(VolOpenSpec *spec, const VolInfo *v,
                            bool raw_bytes);
/* Creates an empty image of a's format and capacity at filename (a
 * file, or storage the block layer reaches by that name).  fill_storage:
 * the image's storage is a new file that gets a's allocation (and
 * preallocation); false for storage that exists already (an LV). */
int pool_create_image(Pool *p, const char *filename, const VolCreateArgs *a,
                      const char *backing_path, const char *backing_fmt,
                      bool fill_storage, Error *err);

#endif
