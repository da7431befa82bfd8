/*
 * gluster.h - what a storage pool does with files on a Gluster volume
 * besides opening one as a node (that is gluster:// through block.h):
 * list a directory, stat, remove, make and remove directories, and the
 * volume's sizes.  Every call names its file or directory by a
 * gluster:// URL (the volume's root is gluster://host/volume/) and uses
 * the process's connection to that volume (gluster-conn.c).
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_GLUSTER_H
#define IMGTOOL_BLOCK_PROTOCOL_GLUSTER_H

#include <sys/stat.h>
#include <sys/statvfs.h>

#include "block/block.h"

typedef struct GlusterDirEntry {
    char *name;
    struct stat st;
} GlusterDirEntry;

/* The entries of a directory ("." and ".." left out), unsorted; the
 * count, or a negative errno. */
int gluster_list_dir(const char *url, GlusterDirEntry **out, Error *err);
void gluster_dir_entries_free(GlusterDirEntry *v, int n);
int gluster_stat(const char *url, struct stat *st, Error *err);
int gluster_unlink(const char *url, Error *err);
/* Makes the directory and its missing parents. */
int gluster_mkdir_p(const char *url, int mode, Error *err);
int gluster_rmdir(const char *url, Error *err);
int gluster_chmod(const char *url, int mode, Error *err);
int gluster_statvfs(const char *url, struct statvfs *sv, Error *err);

#endif
