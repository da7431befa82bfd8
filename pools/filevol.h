/*
 * filevol.h - volumes that are files (a directory pool's, a Gluster
 * pool's): what the back end's cache keeps about each and when it must
 * read the file again.  Internal to pools/.
 *
 * The cache remembers, per file, the stat fields that change whenever
 * its content does (inode, size, mtime and ctime in nanoseconds) and
 * what was read from it; a file whose fields are unchanged is not opened
 * again.  A file modified within the clock tick of the stat that cached
 * it could change again without its mtime moving ("racily clean", as
 * git calls it), so such entries are read again next time.
 *
 * The format of a volume imgtool created (or wiped) is remembered and
 * never probed again, so a guest that writes a qcow2 header into its raw
 * volume cannot make the next command open host files through it.  Files
 * that appeared otherwise are probed, as libvirt does.
 */
#ifndef IMGTOOL_POOLS_FILEVOL_H
#define IMGTOOL_POOLS_FILEVOL_H

#include <sys/stat.h>

#include "pools/backend.h"

/* Fills v for the file `name` at `path` (a local path or a URL the
 * block layer opens; it is also the volume's key) whose stat is st,
 * from the cache when it is still right.  type: "file", "network". */
int pool_file_vol(Pool *p, const char *name, const char *path,
                  const char *type, const struct stat *st, VolInfo *v,
                  Error *err);
/* The volume is (now) of `format`, made or changed by imgtool: never
 * probe it; secret: a LUKS volume's secret id, or NULL. */
void pool_file_vol_remember(Pool *p, const char *name, const char *format,
                            const char *secret);
/* Forget what was known (the file is gone, or changed behind us). */
void pool_file_vol_forget(Pool *p, const char *name);
/* After a full listing: forget every file not in `seen` (an object
 * whose keys are the names found). */
void pool_file_vols_prune(Pool *p, json_t *seen);

/* Ops the directory and the Gluster back ends share: a file volume is
 * resized through the block layer, opened by its path or URL, and its
 * format is remembered once imgtool changed it. */
/* A new volume's requested allocation fits in what the pool has
 * available (p's sizes just refreshed); ENOSPC otherwise. */
int pool_file_vol_room(const Pool *p, const VolCreateArgs *a, Error *err);
int pool_file_vol_resize(Pool *p, const VolInfo *v, uint64_t capacity,
                         bool allocate, Error *err);
int pool_file_vol_open_spec(Pool *p, const VolInfo *v, bool raw_bytes,
                            VolOpenSpec *spec, Error *err);
int pool_file_vol_changed(Pool *p, const VolInfo *v, const char *format,
                          Error *err);

#endif
