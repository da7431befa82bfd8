/*
 * gluster.c - the gluster:// protocol driver: a file on a Gluster volume
 * as a node, on libgfapi.
 *
 * gfapi is thread-safe, so the driver is PARALLEL: synchronous callbacks
 * call gfapi directly from whichever thread runs them, and asynchronous
 * reads, writes and flushes go to gfapi's own asynchronous calls (many in
 * flight from one thread), completed from gfapi's threads.  Discard and
 * zeroes use glfs_discard and glfs_zerofill; holes come from
 * SEEK_DATA/SEEK_HOLE; preallocation from glfs_fallocate (falloc) and
 * glfs_zerofill (full).
 *
 * Locking.  QEMU takes no image locks on Gluster; imgtool does, with the
 * same byte-range scheme it uses on local files (lock.c), on Gluster's
 * POSIX locks.  Each node's lock descriptor gets a lock owner of its own
 * (glfs_fd_set_lkowner), which makes those locks behave like OFD locks:
 * two nodes, in one process or two, conflict, and the bricks drop a dead
 * client's locks when its connection goes.  So two imgtool processes
 * never write one image at once; QEMU, which does not look at the locks,
 * is not kept out (the man page says so).  locking=off skips it.
 *
 * Ending.  A writable node fsyncs its descriptor before closing it, so
 * the bricks have acknowledged every byte (write-behind's too) before the
 * node is gone; the volume's connection stays open for the life of the
 * process and is never glfs_fini'd (gluster-conn.c says why that is safe
 * and what it saves: ten seconds per command).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/protocol/gluster-int.h"
#include "block/protocol/lock.h"

typedef struct GlusterState {
    glfs_t *fs;
    glfs_fd_t *fd;           /* does the I/O */
    glfs_fd_t *lock_fd;      /* holds the locks (fd, unless reopened) */
    char *path;
    char *url;               /* for messages */
    bool locked;
    uint64_t lk_owner;
    bool no_seek;            /* SEEK_DATA unsupported: all data */
    atomic_bool failed;      /* an I/O error was returned already */
} GlusterState;

static _Atomic uint64_t owner_seq;

/* ------------------------------------------------------------------ */
/* Locks                                                               */

static int gl_lock_set(void *file, int byte, bool lock)
{
    struct flock fl = {
        .l_type = lock ? F_RDLCK : F_UNLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    return glfs_posix_lock(file, F_SETLK, &fl) < 0 ? -errno : 0;
}

static int gl_lock_held(void *file, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    if (glfs_posix_lock(file, F_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

static const ImageLockOps gl_lock_ops = { gl_lock_set, gl_lock_held };

static int take_lock(GlusterState *s, glfs_fd_t *fd, int flags,
                     const char *name, Error *err)
{
    /* An owner of this descriptor's own: unique in the process (a
     * counter) and across clients (the pid). */
    uint64_t owner = ((uint64_t)getpid() << 32) ^
                     atomic_fetch_add(&owner_seq, 1) ^ 0x696d67746f6f6cull;
    if (glfs_fd_set_lkowner(fd, &owner, sizeof(owner)) < 0) {
        return error_setf(err, errno, "Could not set a lock owner on '%s': "
                          "%s", name, strerror(errno));
    }
    ImageLockMode mode = (flags & BLOCK_O_SHARE) ? IMAGE_LOCK_SHARED
                         : (flags & BLOCK_O_RDWR) ? IMAGE_LOCK_WRITER
                                                  : IMAGE_LOCK_READER;
    int ret = image_lock_with(&gl_lock_ops, fd, mode, name, err);
    if (ret < 0) {
        return ret;
    }
    if (s) {
        s->lk_owner = owner;
        s->locked = mode != IMAGE_LOCK_SHARED;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Open, reopen, close                                                 */

static bool gluster_owns_filename(const char *filename)
{
    return gluster_is_url(filename);
}

static char *gluster_filename_from_opts(const KVList *opts)
{
    const char *vol = kvlist_peek(opts, "volume");
    const char *path = kvlist_peek(opts, "path");
    const char *type = kvlist_peek(opts, "server.0.type");
    const char *host = kvlist_peek(opts, "server.0.host");
    const char *port = kvlist_peek(opts, "server.0.port");
    const char *sock = kvlist_peek(opts, "server.0.path");
    char *out = NULL;
    if (!vol || !path) {
        return NULL;
    }
    while (*path == '/') {
        path++;
    }
    int n;
    if (type && strcmp(type, "unix") == 0) {
        n = asprintf(&out, "gluster+unix:///%s/%s?socket=%s", vol, path,
                     sock ? sock : "");
    } else {
        n = asprintf(&out, "gluster://%s%s%s/%s/%s", host ? host : "",
                     port ? ":" : "", port ? port : "", vol, path);
    }
    return n < 0 ? NULL : out;
}

static int gluster_drv_open(BlockNode *n, KVList *opts, int flags,
                            Error *err)
{
    GlusterState *s = n->opaque;
    GlusterAddr a;
    int ret = gluster_addr_parse(&a, gluster_is_url(n->filename)
                                     ? n->filename : NULL, opts, true, err);
    if (ret < 0) {
        return ret;
    }
    const char *locking = kvlist_get(opts, "locking");
    if (locking && strcmp(locking, "on") && strcmp(locking, "off") &&
        strcmp(locking, "auto")) {
        gluster_addr_free(&a);
        return error_setf(err, EINVAL, "Parameter 'locking' expects 'on', "
                          "'off' or 'auto'");
    }
    s->url = gluster_addr_url(&a, NULL);
    s->path = strdup(a.path);
    s->fs = gluster_get(&a, err);
    gluster_addr_free(&a);
    if (!s->fs) {
        ret = -(err && err->code ? err->code : EIO);
        goto fail;
    }
    if (!s->url || !s->path) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto fail;
    }
    s->fd = glfs_open(s->fs, s->path, (flags & BLOCK_O_RDWR) ? O_RDWR
                                                             : O_RDONLY);
    if (!s->fd) {
        ret = -errno;
        ret = error_setf(err, -ret, "Could not open '%s': %s", s->url,
                         strerror(-ret));
        goto fail;
    }
    s->lock_fd = s->fd;
    struct stat st;
    if (glfs_fstat(s->fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        ret = error_setf(err, EISDIR, "Could not open '%s': Is a directory",
                         s->url);
        goto fail;
    }
    /* Whole 512-byte sectors, as QEMU's gluster driver reads and writes
     * them: a file that ended inside a sector (a qcow2's 8-byte L1
     * table) is a short read, an I/O error, to QEMU over gluster://. */
    n->request_alignment = 512;
    if (!(flags & BLOCK_O_NO_LOCK) &&
        !(locking && strcmp(locking, "off") == 0)) {
        ret = take_lock(s, s->fd, flags, s->url, err);
        if (ret < 0) {
            error_prefixf(err, "Could not open '%s'", s->url);
            goto fail;
        }
    }
    return 0;
fail:
    if (s->fd) {
        glfs_close(s->fd);
    }
    gluster_put(s->fs);
    free(s->url);
    free(s->path);
    memset(s, 0, sizeof(*s));
    return ret;
}

/* The data a writable node wrote reaches the bricks' disks before it
 * goes: the one flush the end of a command must never skip. */
static void sync_and_close(GlusterState *s, glfs_fd_t *fd, bool writable)
{
    /* Said only when nothing failed before: after a lost server the
     * command has told the user already. */
    if (writable && glfs_fsync(fd, NULL, NULL) < 0 &&
        !atomic_load(&s->failed)) {
        block_report(BLOCK_REPORT_ERROR, "flushing '%s' on close failed: %s",
                     s->url, strerror(errno));
    }
    glfs_close(fd);
}

static int io_error(GlusterState *s, int err)
{
    atomic_store(&s->failed, true);
    /* gfapi says EBADFD when the brick behind a descriptor is gone (it
     * could not reopen it after the disconnect): to a user that is a lost
     * connection, not a bug in how we hold descriptors. */
    return err == EBADFD ? -ENOTCONN : -err;
}

static int gluster_drv_reopen(BlockNode *n, int flags, Error *err)
{
    GlusterState *s = n->opaque;
    bool rw = flags & BLOCK_O_RDWR;
    int ret;
    if (s->locked && rw) {
        ret = image_lock_with(&gl_lock_ops, s->lock_fd, IMAGE_LOCK_WRITER,
                              s->url, err);
        if (ret < 0) {
            image_unlock_write_with(&gl_lock_ops, s->lock_fd);
            error_prefixf(err, "Could not reopen '%s' read-write", s->url);
            return ret;
        }
    }
    glfs_fd_t *fd = glfs_open(s->fs, s->path, rw ? O_RDWR : O_RDONLY);
    if (!fd) {
        ret = errno;
        if (s->locked && rw) {
            image_unlock_write_with(&gl_lock_ops, s->lock_fd);
        }
        return error_setf(err, ret, "Could not reopen '%s': %s", s->url,
                          strerror(ret));
    }
    if (s->locked && !rw) {
        image_unlock_write_with(&gl_lock_ops, s->lock_fd);
    }
    if (s->fd != s->lock_fd) {
        /* Its own lock owner is the default one: closing it keeps the
         * lock descriptor's locks. */
        sync_and_close(s, s->fd, !n->read_only);
    } else if (!n->read_only) {
        glfs_fsync(s->fd, NULL, NULL);
    }
    s->fd = fd;
    return 0;
}

static void gluster_drv_close(BlockNode *n)
{
    GlusterState *s = n->opaque;
    if (s->fd && s->fd != s->lock_fd) {
        sync_and_close(s, s->fd, !n->read_only);
    }
    if (s->lock_fd) {
        sync_and_close(s, s->lock_fd, s->fd == s->lock_fd && !n->read_only);
    }
    gluster_put(s->fs);
    free(s->url);
    free(s->path);
}

/* ------------------------------------------------------------------ */
/* Data                                                                */

/* Reads or writes all of qiov at off, resuming after short transfers
 * and EINTR.  A read past the end reads as zero; a write that makes no
 * progress is a full volume. */
static int rw_all(GlusterState *s, uint64_t off, BlockIOV *qiov, bool write)
{
    size_t done = 0;
    while (done < qiov->size) {
        BlockIOVSlice rest;
        if (blockiov_slice(&rest, qiov, done, qiov->size - done) < 0) {
            return -ENOMEM;
        }
        ssize_t r = write ? glfs_pwritev(s->fd, rest.v.iov, rest.v.niov,
                                         (off_t)(off + done), 0)
                          : glfs_preadv(s->fd, rest.v.iov, rest.v.niov,
                                        (off_t)(off + done), 0);
        int e = errno;
        blockiov_slice_free(&rest);
        if (r < 0) {
            if (e == EINTR) {
                continue;
            }
            return io_error(s, e);
        }
        if (r == 0) {
            if (write) {
                return io_error(s, ENOSPC);
            }
            blockiov_memset(qiov, done, 0, qiov->size - done);
            return 0;
        }
        done += (size_t)r;
    }
    return 0;
}

static int gluster_drv_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov,
                              int flags)
{
    return rw_all(n->opaque, off, qiov, false);
}

static int gluster_drv_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                               int flags)
{
    return rw_all(n->opaque, off, qiov, true);
}

static int gluster_drv_flush(BlockNode *n)
{
    GlusterState *s = n->opaque;
    return glfs_fsync(s->fd, NULL, NULL) < 0 ? io_error(s, errno) : 0;
}

static int64_t file_size(GlusterState *s)
{
    struct stat st;
    if (glfs_fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

static int gluster_drv_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    GlusterState *s = n->opaque;
    if (glfs_discard(s->fd, (off_t)off, (size_t)len) < 0) {
        return errno == EOPNOTSUPP || errno == ENOSYS ? -ENOTSUP : -errno;
    }
    return 0;
}

static int gluster_drv_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                                    int flags)
{
    GlusterState *s = n->opaque;
    if (flags & BLOCK_REQ_MAY_UNMAP) {
        /* A punched hole reads as zero, inside the file; past its end
         * the file must grow, which only zerofill does. */
        int64_t size = file_size(s);
        if (size >= 0 && off + len <= (uint64_t)size &&
            glfs_discard(s->fd, (off_t)off, (size_t)len) == 0) {
            return 0;
        }
    }
    if (glfs_zerofill(s->fd, (off_t)off, (off_t)len) < 0) {
        return errno == EOPNOTSUPP || errno == ENOSYS ? -ENOTSUP : -errno;
    }
    return 0;
}

static int gluster_drv_block_status(BlockNode *n, uint64_t off, uint64_t len,
                                    uint64_t *pnum, uint64_t *map,
                                    BlockNode **file)
{
    GlusterState *s = n->opaque;
    const int data_flags = BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID |
                           BLOCK_STATUS_ALLOCATED;
    const int zero_flags = BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID |
                           BLOCK_STATUS_ALLOCATED;
    *map = off;
    *file = n;
    *pnum = len;
    if (s->no_seek) {
        return data_flags;
    }
    off_t data = glfs_lseek(s->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            return zero_flags;    /* a hole to the end */
        }
        if (errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP) {
            s->no_seek = true;
            return data_flags;
        }
        return -errno;
    }
    if ((uint64_t)data > off) {
        uint64_t hole = (uint64_t)data - off;
        *pnum = hole < len ? hole : len;
        return zero_flags;
    }
    off_t hole = glfs_lseek(s->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        return data_flags;
    }
    uint64_t run = (uint64_t)hole - off;
    *pnum = run < len ? run : len;
    return data_flags;
}

/* ------------------------------------------------------------------ */
/* Asynchronous requests                                               */

static void aio_cb(glfs_fd_t *fd, ssize_t ret, struct glfs_stat *pre,
                   struct glfs_stat *post, void *data)
{
    BlockRequest *req = data;
    int r = 0;
    if (ret < 0) {
        r = io_error(req->node->opaque, errno ? errno : EIO);
    } else if (req->op == BLOCK_OP_READ && (size_t)ret < req->qiov->size) {
        /* the end of the file: the rest reads as zero */
        blockiov_memset(req->qiov, (size_t)ret, 0,
                        req->qiov->size - (size_t)ret);
    } else if (req->op == BLOCK_OP_WRITE && (size_t)ret < req->qiov->size) {
        r = -EIO;
    }
    block_request_complete(req, r);
}

static int gluster_drv_submit(BlockNode *n, BlockRequest *req)
{
    GlusterState *s = n->opaque;
    int r;
    switch (req->op) {
    case BLOCK_OP_READ:
        r = glfs_preadv_async(s->fd, req->qiov->iov, req->qiov->niov,
                              (off_t)req->offset, 0, aio_cb, req);
        break;
    case BLOCK_OP_WRITE:
        r = glfs_pwritev_async(s->fd, req->qiov->iov, req->qiov->niov,
                               (off_t)req->offset, 0, aio_cb, req);
        break;
    case BLOCK_OP_FLUSH:
        r = glfs_fsync_async(s->fd, aio_cb, req);
        break;
    default:
        return -EAGAIN;
    }
    /* Not queued: the synchronous path (a worker) does it instead. */
    return r < 0 ? -EAGAIN : 0;
}

/* ------------------------------------------------------------------ */
/* Size                                                                */

static int64_t gluster_drv_get_length(BlockNode *n)
{
    return file_size(n->opaque);
}

static int64_t gluster_drv_get_allocated_size(BlockNode *n)
{
    GlusterState *s = n->opaque;
    struct stat st;
    if (glfs_fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

/* Grows or shrinks fd to size; the new area allocated per pm. */
static int resize_fd(glfs_fd_t *fd, uint64_t old, uint64_t size,
                     PreallocMode pm, const char *name, Error *err)
{
    if (pm == PREALLOC_METADATA) {
        return error_setf(err, ENOTSUP, "Preallocation mode 'metadata' is "
                          "not supported for files");
    }
    if (glfs_ftruncate(fd, (off_t)size, NULL, NULL) < 0) {
        int e = errno;
        return error_setf(err, e, "Could not resize '%s': %s", name,
                          strerror(e));
    }
    if (size <= old || pm == PREALLOC_OFF) {
        return 0;
    }
    int r = pm == PREALLOC_FALLOC
            ? glfs_fallocate(fd, 1, (off_t)old, (size_t)(size - old))
            : glfs_zerofill(fd, (off_t)old, (off_t)(size - old));
    if (r < 0) {
        int e = errno;
        glfs_ftruncate(fd, (off_t)old, NULL, NULL);
        return error_setf(err, e, "Could not preallocate '%s': %s", name,
                          strerror(e));
    }
    return 0;
}

static int gluster_drv_truncate(BlockNode *n, uint64_t size, bool exact,
                                PreallocMode pm, Error *err)
{
    GlusterState *s = n->opaque;
    int64_t old = file_size(s);
    if (old < 0) {
        return error_setf(err, (int)-old, "Could not get the size of '%s'",
                          s->url);
    }
    if (!exact && (uint64_t)old > size) {
        return 0;
    }
    return resize_fd(s->fd, (uint64_t)old, size, pm, s->url, err);
}

/* ------------------------------------------------------------------ */
/* Create                                                              */

static int gluster_drv_create(const char *filename, uint64_t size,
                              KVList *opts, Error *err)
{
    PreallocMode pm = PREALLOC_OFF;
    const char *p = kvlist_get(opts, "preallocation");
    if (p && prealloc_parse(p, &pm) < 0) {
        return error_setf(err, EINVAL, "Invalid preallocation mode: '%s'",
                          p);
    }
    int ret = kvlist_check_unused(opts, "gluster", err);
    if (ret < 0) {
        return ret;
    }
    GlusterAddr a;
    ret = gluster_addr_parse(&a, filename, NULL, true, err);
    if (ret < 0) {
        return ret;
    }
    glfs_t *fs = gluster_get(&a, err);
    if (!fs) {
        gluster_addr_free(&a);
        return -(err && err->code ? err->code : EIO);
    }
    /* No O_TRUNC before the lock: an image in use is not clobbered. */
    glfs_fd_t *fd = glfs_creat(fs, a.path, O_RDWR | O_CREAT, 0644);
    if (!fd) {
        ret = errno;
        ret = error_setf(err, ret, "Could not create '%s': %s", filename,
                         strerror(ret));
    } else {
        ret = take_lock(NULL, fd, BLOCK_O_RDWR, filename, err);
        if (ret == 0) {
            ret = resize_fd(fd, 0, 0, PREALLOC_OFF, filename, err);
        }
        if (ret == 0) {
            ret = resize_fd(fd, 0, size, pm, filename, err);
        }
        if (glfs_fsync(fd, NULL, NULL) < 0 && ret == 0) {
            ret = error_setf(err, errno, "Could not flush '%s': %s",
                             filename, strerror(errno));
        }
        glfs_close(fd);
    }
    gluster_put(fs);
    gluster_addr_free(&a);
    return ret;
}

static const BlockCreateOpt gluster_create_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size", NULL },
    { "preallocation", OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", "off" },
    { NULL, 0, NULL, NULL },
};

/* A file create just made is holes or written zeroes (as a local
 * file). */
static bool gluster_has_zero_init(BlockNode *n)
{
    return true;
}

static bool gluster_can_zero(BlockNode *n)
{
    return true;
}

/* Every client of a volume sees the same file, and an fsync covers
 * what any of them wrote through the bricks. */
static bool gluster_can_multi_conn(BlockNode *n)
{
    return true;
}

const BlockDriver gluster_driver = {
    .name = "gluster",
    .api_version = BLOCK_DRIVER_API_VERSION,
    .kind = BLOCK_DRIVER_PROTOCOL,
    .thread_model = BLOCK_THREAD_PARALLEL,
    .instance_size = sizeof(GlusterState),
    .owns_filename = gluster_owns_filename,
    .filename_from_opts = gluster_filename_from_opts,
    .open = gluster_drv_open,
    .close = gluster_drv_close,
    .reopen = gluster_drv_reopen,
    .can_zero = gluster_can_zero,
    .can_multi_conn = gluster_can_multi_conn,
    .preadv = gluster_drv_preadv,
    .pwritev = gluster_drv_pwritev,
    .flush = gluster_drv_flush,
    .discard = gluster_drv_discard,
    .write_zeroes = gluster_drv_write_zeroes,
    .block_status = gluster_drv_block_status,
    .submit = gluster_drv_submit,
    .get_length = gluster_drv_get_length,
    .get_allocated_size = gluster_drv_get_allocated_size,
    .has_zero_init = gluster_has_zero_init,
    .truncate = gluster_drv_truncate,
    .create = gluster_drv_create,
    .create_opts = gluster_create_opts,
};

BLOCK_DRIVER_MODULE(gluster_driver);
