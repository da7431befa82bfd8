/*
 * gluster-lib.h - libgfapi, loaded when the first Gluster volume is
 * reached.  Linked at start-up, gfapi (with libglusterfs, the RPC, XDR
 * and Kerberos libraries behind it) costs every imgtool command about a
 * megabyte of resident memory; the gluster files call it through a table
 * filled by dlopen/dlsym instead, as iscsi-lib.h explains for libiscsi.
 * dlsym returns each symbol's default version, the one the header's
 * prototypes describe (gfapi 6 and later).
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_GLUSTER_LIB_H
#define IMGTOOL_BLOCK_PROTOCOL_GLUSTER_LIB_H

#include <glusterfs/api/glfs.h>

#include "block/block.h"

#define GLUSTER_LIB_FUNCTIONS(X)                                             \
    X(glfs_new) X(glfs_set_volfile_server) X(glfs_set_logging) X(glfs_init) \
    X(glfs_fini) X(glfs_open) X(glfs_creat) X(glfs_close) X(glfs_fstat)     \
    X(glfs_preadv) X(glfs_pwritev) X(glfs_fsync) X(glfs_discard)            \
    X(glfs_zerofill) X(glfs_fallocate) X(glfs_ftruncate) X(glfs_lseek)      \
    X(glfs_posix_lock) X(glfs_fd_set_lkowner) X(glfs_preadv_async)          \
    X(glfs_pwritev_async) X(glfs_fsync_async) X(glfs_opendir)               \
    X(glfs_readdirplus) X(glfs_closedir) X(glfs_stat) X(glfs_unlink)        \
    X(glfs_mkdir) X(glfs_rmdir) X(glfs_chmod) X(glfs_statvfs)

typedef struct GlusterLib {
#define X(f) __typeof__(f) *f;
    GLUSTER_LIB_FUNCTIONS(X)
#undef X
} GlusterLib;

extern GlusterLib gluster_lib;

/* Loads libgfapi once (thread-safe); one line naming the package when it
 * is not installed. */
int gluster_lib_load(Error *err);

#ifndef GLUSTER_LIB_IMPL
#define glfs_new(...) (*gluster_lib.glfs_new)(__VA_ARGS__)
#define glfs_set_volfile_server(...) \
    (*gluster_lib.glfs_set_volfile_server)(__VA_ARGS__)
#define glfs_set_logging(...) (*gluster_lib.glfs_set_logging)(__VA_ARGS__)
#define glfs_init(...) (*gluster_lib.glfs_init)(__VA_ARGS__)
#define glfs_fini(...) (*gluster_lib.glfs_fini)(__VA_ARGS__)
#define glfs_open(...) (*gluster_lib.glfs_open)(__VA_ARGS__)
#define glfs_creat(...) (*gluster_lib.glfs_creat)(__VA_ARGS__)
#define glfs_close(...) (*gluster_lib.glfs_close)(__VA_ARGS__)
#define glfs_fstat(...) (*gluster_lib.glfs_fstat)(__VA_ARGS__)
#define glfs_preadv(...) (*gluster_lib.glfs_preadv)(__VA_ARGS__)
#define glfs_pwritev(...) (*gluster_lib.glfs_pwritev)(__VA_ARGS__)
#define glfs_fsync(...) (*gluster_lib.glfs_fsync)(__VA_ARGS__)
#define glfs_discard(...) (*gluster_lib.glfs_discard)(__VA_ARGS__)
#define glfs_zerofill(...) (*gluster_lib.glfs_zerofill)(__VA_ARGS__)
#define glfs_fallocate(...) (*gluster_lib.glfs_fallocate)(__VA_ARGS__)
#define glfs_ftruncate(...) (*gluster_lib.glfs_ftruncate)(__VA_ARGS__)
#define glfs_lseek(...) (*gluster_lib.glfs_lseek)(__VA_ARGS__)
#define glfs_posix_lock(...) (*gluster_lib.glfs_posix_lock)(__VA_ARGS__)
#define glfs_fd_set_lkowner(...) \
    (*gluster_lib.glfs_fd_set_lkowner)(__VA_ARGS__)
#define glfs_preadv_async(...) (*gluster_lib.glfs_preadv_async)(__VA_ARGS__)
#define glfs_pwritev_async(...) (*gluster_lib.glfs_pwritev_async)(__VA_ARGS__)
#define glfs_fsync_async(...) (*gluster_lib.glfs_fsync_async)(__VA_ARGS__)
#define glfs_opendir(...) (*gluster_lib.glfs_opendir)(__VA_ARGS__)
#define glfs_readdirplus(...) (*gluster_lib.glfs_readdirplus)(__VA_ARGS__)
#define glfs_closedir(...) (*gluster_lib.glfs_closedir)(__VA_ARGS__)
#define glfs_stat(...) (*gluster_lib.glfs_stat)(__VA_ARGS__)
#define glfs_unlink(...) (*gluster_lib.glfs_unlink)(__VA_ARGS__)
#define glfs_mkdir(...) (*gluster_lib.glfs_mkdir)(__VA_ARGS__)
#define glfs_rmdir(...) (*gluster_lib.glfs_rmdir)(__VA_ARGS__)
#define glfs_chmod(...) (*gluster_lib.glfs_chmod)(__VA_ARGS__)
#define glfs_statvfs(...) (*gluster_lib.glfs_statvfs)(__VA_ARGS__)
#endif

#endif
