/*
 * gluster.h - what a storage pool does with files on a Gluster volume
 * besides opening one as a node (that is gluster:// through block.h):
 * list a directory, stat, remove, make and remove directories, and the
 * volume's sizes.  Every call names its file or directory by a
 * gluster:// URL (the volume's root is gluster://host/volume/) and uses
 * the process's connection to that volume (gluster-conn.c).
 *
 * The gluster driver is a loadable module (it links libgfapi), so these
 * are operations of that module: gluster_vol_ops() loads it and returns
 * its table, and whoever calls them never links or loads libgfapi.
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_GLUSTER_H
#define IMGTOOL_BLOCK_PROTOCOL_GLUSTER_H

#include <errno.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "block/block.h"

typedef struct GlusterDirEntry {
    char *name;
    struct stat st;
} GlusterDirEntry;

/* Bumped when GlusterVolOps changes: a module from another build is
 * refused rather than called through the wrong layout. */
#define GLUSTER_VOL_OPS_VERSION 1

typedef struct GlusterVolOps {
    int version;             /* GLUSTER_VOL_OPS_VERSION */
    /* The entries of a directory ("." and ".." left out), unsorted; the
     * count, or a negative errno. */
    int (*list_dir)(const char *url, GlusterDirEntry **out, Error *err);
    void (*dir_entries_free)(GlusterDirEntry *v, int n);
    int (*stat)(const char *url, struct stat *st, Error *err);
    int (*unlink)(const char *url, Error *err);
    /* Makes the directory and its missing parents. */
    int (*mkdir_p)(const char *url, int mode, Error *err);
    int (*rmdir)(const char *url, Error *err);
    int (*chmod)(const char *url, int mode, Error *err);
    int (*statvfs)(const char *url, struct statvfs *sv, Error *err);
} GlusterVolOps;

/* The gluster module's operations in *ops, loading it on first use; 0,
 * or a negative errno with one line in err when the module or libgfapi
 * is missing. */
static inline int gluster_vol_ops(const GlusterVolOps **ops, Error *err)
{
    const void *p;
    int ret = block_module_ops("gluster", &p, err);
    *ops = p;
    if (ret == 0 && (*ops)->version != GLUSTER_VOL_OPS_VERSION) {
        ret = error_setf(err, ENOEXEC, "the gluster driver's module is from "
                         "another imgtool build (volume operations version "
                         "%d, not %d)", (*ops)->version,
                         GLUSTER_VOL_OPS_VERSION);
    }
    return ret;
}

#endif
