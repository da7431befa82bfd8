/*
 * core.h - what the pool core's files (pool.c, volume.c, volio.c,
 * volopen.c) share: loading a pool under its lock, refreshing it with
 * the operation markers applied, and opening a volume's image.
 * Internal to pools/.
 */
#ifndef IMGTOOL_POOLS_CORE_H
#define IMGTOOL_POOLS_CORE_H

#include "pools/backend.h"
#include "pools/store.h"

/* Resolves a pool name or UUID, takes the pool lock and loads it (its
 * running state corrected after a reboot: a pool started in an earlier
 * boot is inactive again unless autostart starts it now). */
int pool_open(PoolStore *s, const char *pool, Pool **out, Error *err);
/* Writes the cache back if it changed, unlocks and frees. */
void pool_close(Pool *p);
/* Drops the pool lock for long work on a volume, and takes it again
 * (the pool must still be defined and active). */
void pool_unlock(Pool *p);
int pool_relock(Pool *p, Error *err);

int pool_require_active(Pool *p, Error *err);
int pool_save_state(Pool *p, Error *err);

/* Full refresh: every good volume in p->vols, sorted; creations that
 * were killed are cleaned up, interrupted wipes flagged. */
int pool_refresh_locked(Pool *p, Error *err);
/* One volume by name, with its marker applied: -ENOENT when it does not
 * exist or is still being created. */
int pool_lookup_locked(Pool *p, const char *name, VolInfo *out, Error *err);
/* virsh's volume lookup (name in pool, key, path) over every active
 * pool; *out is the pool holding it, open and locked. */
int pool_vol_resolve(PoolStore *s, const char *pool, const char *vol,
                     Pool **out, VolInfo *v, Error *err);

/* Creates the volume described by a (checks, marker, back end); the
 * marker stays held in *m for the caller to fill the content and end. */
int pool_vol_create_begin(Pool *p, const VolCreateArgs *a, OpMarker *m,
                          VolInfo *out, Error *err);

#endif
