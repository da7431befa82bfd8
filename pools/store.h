/*
 * store.h - where pools live on disk (internal to pools/).
 *
 *   DIR/NAME.xml                  persistent definitions (libvirt XML)
 *   DIR/autostart/NAME.xml        symlink to ../NAME.xml: autostart
 *                                 (libvirt's layout)
 *   DIR/.imgtool/store.lock       taken to define/undefine pools
 *   DIR/.imgtool/pools/NAME/      one pool's running state:
 *       lock                      the pool lock
 *       state                     {"active", "boot_id"}
 *       pool.xml                  a transient pool's definition
 *       cache                     the back end's cache (JSON)
 *       ops/VOLUME                a running (flocked) or interrupted
 *                                 (not flocked) creation or wipe
 *
 * Locks are flock()s, taken in the order store lock, then pool lock; a
 * lock file replaced while we waited for it is reopened (so removing a
 * pool cannot hand two commands "the" lock).  Files are replaced with
 * pool_write_atomic().
 */
#ifndef IMGTOOL_POOLS_STORE_H
#define IMGTOOL_POOLS_STORE_H

#include <jansson.h>

#include "pools/pool.h"

struct PoolStore {
    char *dir;
    char *run_dir;            /* DIR/.imgtool */
    int store_lock_fd;        /* -1 when not held */
    char boot_id[64];
};

int store_lock(PoolStore *s, Error *err);
void store_unlock(PoolStore *s);

/* DIR/.imgtool/pools/NAME (malloc'd). */
char *store_pool_dir(PoolStore *s, const char *name);
/* Takes the pool's lock (creating its state dir); *fd is the lock. */
int store_pool_lock(PoolStore *s, const char *name, int *fd, Error *err);
void store_pool_unlock(int *fd);

/* Names of every defined pool (persistent and transient), sorted. */
int store_pool_names(PoolStore *s, char ***names, size_t *n, Error *err);
void store_names_free(char **names, size_t n);

/* The definition's path: DIR/NAME.xml, or the transient one. */
char *store_def_path(PoolStore *s, const char *name, bool transient);

typedef struct PoolRunState {
    bool active;
    bool transient;
    char boot_id[64];
} PoolRunState;

/* Missing state reads as inactive, persistent. */
int store_state_load(PoolStore *s, const char *name, PoolRunState *st,
                     Error *err);
int store_state_save(PoolStore *s, const char *name, const PoolRunState *st,
                     Error *err);

/* The back end's cache: an empty object when missing or unreadable (it
 * is only a cache). */
json_t *store_cache_load(PoolStore *s, const char *name);
int store_cache_save(PoolStore *s, const char *name, json_t *cache,
                     Error *err);

bool store_autostart_get(PoolStore *s, const char *name);
int store_autostart_set(PoolStore *s, const char *name, bool on,
                        Error *err);

/* Removes the pool's running state and autostart link. */
void store_pool_forget(PoolStore *s, const char *name);

/* Operation markers.  op_begin needs the pool lock; it fails with
 * -EEXIST when the volume has a marker already. */
typedef struct OpMarker {
    int fd;
    char *path;
} OpMarker;

typedef enum { OP_NONE, OP_RUNNING, OP_INTERRUPTED } OpStatus;

int store_op_begin(PoolStore *s, const char *pool, const char *vol,
                   const char *op, OpMarker *m, Error *err);
/* The operation finished (or failed cleanly): the marker goes. */
void store_op_end(OpMarker *m);
/* What the marker of vol says; op (if not NULL) receives its kind. */
OpStatus store_op_status(PoolStore *s, const char *pool, const char *vol,
                         char op[16]);
/* Every volume that has a marker (sorted). */
int store_op_names(PoolStore *s, const char *pool, char ***names,
                   size_t *n);
void store_op_clear(PoolStore *s, const char *pool, const char *vol);

#endif
