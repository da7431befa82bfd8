/*
 * file.c - the protocol driver for local regular files and block devices.
 *
 * Holes are found with SEEK_DATA/SEEK_HOLE, zeroes and discards use
 * fallocate (BLKZEROOUT/BLKDISCARD on devices), and O_DIRECT is optional.
 * Reads past the end of a file return zeroes: format drivers allocate by
 * writing past the end, and a bounced read-modify-write may straddle it.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/protocol/file-int.h"
#include "block/protocol/lock.h"

static int file_fd_length(FileState *s, int64_t *len)
{
    if (s->is_device) {
        uint64_t bytes;
        if (ioctl(s->fd, BLKGETSIZE64, &bytes) < 0) {
            return -errno;
        }
        *len = (int64_t)bytes;
        return 0;
    }
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    *len = st.st_size;
    return 0;
}

/* Smallest O_DIRECT read size the file accepts. */
static uint32_t probe_direct_alignment(int fd)
{
    void *buf;
    if (posix_memalign(&buf, 4096, 4096) != 0) {
        return 4096;
    }
    uint32_t found = 4096;
    for (uint32_t a = 512; a <= 4096; a *= 2) {
        ssize_t r = pread(fd, buf, a, 0);
        if (r >= 0) {
            found = a;
            break;
        }
    }
    free(buf);
    return found;
}

static int file_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    FileState *s = n->opaque;
    s->fd = -1;
    s->lock_fd = -1;
    pthread_mutex_init(&s->ring_lock, NULL);
    const char *locking = kvlist_get(opts, "locking");
    const char *aio = kvlist_get(opts, "aio");
    if (aio && strcmp(aio, "threads") && strcmp(aio, "native") &&
        strcmp(aio, "io_uring")) {
        return error_setf(err, EINVAL, "Parameter 'aio' expects 'threads', "
                          "'native' or 'io_uring'");
    }
    /* native (Linux AIO) is served by io_uring, its successor. */
    s->use_uring = !aio || strcmp(aio, "threads") != 0;
    bool direct = flags & BLOCK_O_NOCACHE;
    int ret = kvlist_get_bool(opts, "cache.direct", direct, &direct, err);
    if (ret < 0) {
        return ret;
    }
    bool no_flush = false;
    ret = kvlist_get_bool(opts, "cache.no-flush", false, &no_flush, err);
    if (ret < 0) {
        return ret;
    }
    if (no_flush) {
        n->flags |= BLOCK_O_NO_FLUSH;
    }
    if (locking && strcmp(locking, "on") && strcmp(locking, "off") &&
        strcmp(locking, "auto")) {
        return error_setf(err, EINVAL, "Parameter 'locking' expects 'on', "
                          "'off' or 'auto'");
    }

    int oflags = O_CLOEXEC | ((flags & BLOCK_O_RDWR) ? O_RDWR : O_RDONLY);
    if (direct) {
        oflags |= O_DIRECT;
    }
    s->fd = open(n->filename, oflags);
    s->lock_fd = s->fd;
    if (s->fd < 0) {
        ret = -errno;
        return error_setf(err, -ret, "Could not open '%s': %s", n->filename,
                          strerror(-ret));
    }
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        ret = -errno;
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        /* (opened for writing, open() itself said "Is a directory") */
        ret = error_setf(err, EISDIR, "'file' driver requires '%s' to be a "
                         "regular file", n->filename);
        goto fail;
    }
    s->is_device = S_ISBLK(st.st_mode);
    s->direct = direct;
    if (direct) {
        n->request_alignment = probe_direct_alignment(s->fd);
    }
    /* what the node does, whichever way it was asked (flag or option):
     * format drivers above lay out their writes by it */
    n->flags = direct ? n->flags | BLOCK_O_NOCACHE
                      : n->flags & ~BLOCK_O_NOCACHE;

    bool want_lock = !(flags & BLOCK_O_NO_LOCK) &&
                     !(locking && strcmp(locking, "off") == 0);
    if (want_lock) {
        ImageLockMode mode = (flags & BLOCK_O_SHARE) ? IMAGE_LOCK_SHARED
                             : (flags & BLOCK_O_RDWR) ? IMAGE_LOCK_WRITER
                                                      : IMAGE_LOCK_READER;
        ret = image_lock(s->fd, mode, n->filename, err);
        if (ret < 0) {
            error_prefixf(err, "Could not open '%s'", n->filename);
            goto fail;
        }
        s->locked = mode != IMAGE_LOCK_SHARED;
    }
    return 0;
fail:
    close(s->fd);
    s->fd = s->lock_fd = -1;
    return ret;
}

/* Read-write and back, in place.  The locks stay on the descriptor that
 * took them first (lock_fd): OFD locks belong to an open file
 * description, so a second descriptor of ours would conflict with them;
 * the new descriptor only does the I/O. */
static int file_reopen(BlockNode *n, int flags, Error *err)
{
    FileState *s = n->opaque;
    bool rw = flags & BLOCK_O_RDWR;
    int ret;
    if (s->locked && rw) {
        ret = image_lock(s->lock_fd, IMAGE_LOCK_WRITER, n->filename, err);
        if (ret < 0) {
            image_unlock_write(s->lock_fd);
            error_prefixf(err, "Could not reopen '%s' read-write",
                          n->filename);
            return ret;
        }
    }
    int oflags = O_CLOEXEC | (rw ? O_RDWR : O_RDONLY) |
                 (s->direct ? O_DIRECT : 0);
    int fd = open(n->filename, oflags);
    if (fd < 0) {
        ret = -errno;
        if (s->locked && rw) {
            image_unlock_write(s->lock_fd);
        }
        return error_setf(err, -ret, "Could not reopen '%s': %s",
                          n->filename, strerror(-ret));
    }
    if (s->locked && !rw) {
        image_unlock_write(s->lock_fd);
    }
    file_uring_stop(s);
    if (s->fd != s->lock_fd) {
        close(s->fd);
    }
    s->fd = fd;
    return 0;
}

static void file_close(BlockNode *n)
{
    FileState *s = n->opaque;
    file_uring_stop(s);
    if (s->fd >= 0 && s->fd != s->lock_fd) {
        close(s->fd);
    }
    if (s->lock_fd >= 0) {
        close(s->lock_fd);
    }
    s->fd = s->lock_fd = -1;
    pthread_mutex_destroy(&s->ring_lock);
}

int file_preadv_from(FileState *s, uint64_t off, BlockIOV *qiov,
                     size_t done)
{
    while (done < qiov->size) {
        BlockIOVSlice rest;
        if (blockiov_slice(&rest, qiov, done, qiov->size - done) < 0) {
            return -ENOMEM;
        }
        ssize_t r = rest.v.niov == 1
                    ? pread(s->fd, rest.v.iov[0].iov_base,
                            rest.v.iov[0].iov_len, (off_t)(off + done))
                    : preadv(s->fd, rest.v.iov, rest.v.niov,
                             (off_t)(off + done));
        int e = errno;
        blockiov_slice_free(&rest);
        if (r < 0) {
            if (e == EINTR) {
                continue;
            }
            return -e;
        }
        if (r == 0) {
            /* past the end reads as zero */
            blockiov_memset(qiov, done, 0, qiov->size - done);
            return 0;
        }
        done += (size_t)r;
    }
    return 0;
}

static int file_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov, int flags)
{
    return file_preadv_from(n->opaque, off, qiov, 0);
}

int file_pwritev_from(FileState *s, uint64_t off, BlockIOV *qiov,
                      size_t done, int flags)
{
    bool dsync = flags & BLOCK_REQ_FUA;
    while (done < qiov->size) {
        BlockIOVSlice rest;
        if (blockiov_slice(&rest, qiov, done, qiov->size - done) < 0) {
            return -ENOMEM;
        }
        /* FUA is one write with RWF_DSYNC, not a write and a flush. */
        ssize_t r = rest.v.niov == 1 && !dsync
                    ? pwrite(s->fd, rest.v.iov[0].iov_base,
                             rest.v.iov[0].iov_len, (off_t)(off + done))
                    : pwritev2(s->fd, rest.v.iov, rest.v.niov,
                               (off_t)(off + done), dsync ? RWF_DSYNC : 0);
        int e = errno;
        blockiov_slice_free(&rest);
        if (r < 0) {
            if (e == EINTR) {
                continue;
            }
            if (e == EOPNOTSUPP && dsync) {
                dsync = false;
                flags |= BLOCK_REQ_FUA;   /* flush below instead */
                continue;
            }
            return -e;
        }
        if (r == 0) {
            return -ENOSPC;
        }
        done += (size_t)r;
    }
    if ((flags & BLOCK_REQ_FUA) && !dsync && fdatasync(s->fd) < 0) {
        return -errno;
    }
    return 0;
}

static int file_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                        int flags)
{
    return file_pwritev_from(n->opaque, off, qiov, 0, flags);
}

static bool file_can_fua(BlockNode *n)
{
    return true;
}

static bool file_can_zero(BlockNode *n)
{
    return true;
}

/* Writes through one descriptor are seen by every reader of the file,
 * and a flush covers them all: NBD clients may open several
 * connections. */
static bool file_can_multi_conn(BlockNode *n)
{
    return true;
}

static int file_flush(BlockNode *n)
{
    FileState *s = n->opaque;
    return fdatasync(s->fd) < 0 ? -errno : 0;
}

static int file_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    FileState *s = n->opaque;
    if (s->is_device) {
        uint64_t range[2] = { off, len };
        return ioctl(s->fd, BLKDISCARD, range) < 0 ? -errno : 0;
    }
    if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)off, (off_t)len) < 0) {
        return -errno;
    }
    return 0;
}

/* Makes the file at least end bytes long without ever shrinking it: a
 * size read before an ftruncate may be stale by the time it runs, and
 * then the ftruncate cuts off what a concurrent writer put past it.
 * fallocate only ever grows the file.  With allocate, [off, end) gets
 * blocks (that read as zero); otherwise only the last block is given
 * one for the new size and then punched out again, so the area stays a
 * hole.  Without fallocate, ftruncate is the only way left. */
static int grow_file(int fd, uint64_t off, uint64_t end, bool allocate)
{
    uint64_t from = allocate ? off : end - 1;
    if (fallocate(fd, 0, (off_t)from, (off_t)(end - from)) == 0) {
        if (!allocate) {
            uint64_t blk = (end - 1) & ~(uint64_t)4095;
            uint64_t p = blk > off ? blk : off;
            /* best effort: a block of real zeroes is no harm */
            (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            (off_t)p, (off_t)(end - p));
        }
        return 0;
    }
    if (errno != EOPNOTSUPP && errno != ENOSYS) {
        return -errno;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return -errno;
    }
    if ((uint64_t)st.st_size < end && ftruncate(fd, (off_t)end) < 0) {
        return -errno;
    }
    return 0;
}

static int file_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                             int flags)
{
    FileState *s = n->opaque;
    if (s->is_device) {
        uint64_t range[2] = { off, len };
        return ioctl(s->fd, BLKZEROOUT, range) < 0 ? -errno : 0;
    }
    if (!(flags & BLOCK_REQ_MAY_UNMAP) &&
        fallocate(s->fd, FALLOC_FL_ZERO_RANGE, (off_t)off, (off_t)len) == 0) {
        /* Blocks that read as zero, past the end too (the file grows):
         * O_DIRECT writes into them later need no block allocation,
         * which on ext4 would take the inode lock exclusively. */
        return 0;
    }
    int64_t size;
    int ret = file_fd_length(s, &size);
    if (ret < 0) {
        return ret;
    }
    if (off >= (uint64_t)size) {
        /* Extending: the new area of a file reads as zero already. */
        return grow_file(s->fd, off, off + len,
                         !(flags & BLOCK_REQ_MAY_UNMAP));
    }
    if (flags & BLOCK_REQ_MAY_UNMAP) {
        if (off + len > (uint64_t)size) {
            ret = grow_file(s->fd, (uint64_t)size, off + len, false);
            if (ret < 0) {
                return ret;
            }
        }
        if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)off, (off_t)len) == 0) {
            return 0;
        }
        if (fallocate(s->fd, FALLOC_FL_ZERO_RANGE, (off_t)off,
                      (off_t)len) == 0) {
            return 0;
        }
    }
    return -ENOTSUP;
}

static int file_block_status(BlockNode *n, uint64_t off, uint64_t len,
                             uint64_t *pnum, uint64_t *map, BlockNode **file)
{
    FileState *s = n->opaque;
    *map = off;
    *file = n;
    int data_flags = BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID |
                     BLOCK_STATUS_ALLOCATED;
    if (s->is_device) {
        *pnum = len;
        return data_flags;
    }
    off_t data = lseek(s->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* No data from here to the end: a trailing hole. */
            *pnum = len;
            return BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID |
                   BLOCK_STATUS_ALLOCATED;
        }
        *pnum = len;    /* SEEK_DATA unsupported: assume data */
        return data_flags;
    }
    if ((uint64_t)data > off) {
        uint64_t hole = (uint64_t)data - off;
        *pnum = hole < len ? hole : len;
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID |
               BLOCK_STATUS_ALLOCATED;
    }
    off_t hole = lseek(s->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        *pnum = len;
        return data_flags;
    }
    uint64_t run = (uint64_t)hole - off;
    *pnum = run < len ? run : len;
    return data_flags;
}

/* A new regular file is all zeroes (holes or written zeroes); a device
 * holds whatever it held. */
static bool file_has_zero_init(BlockNode *n)
{
    return !((FileState *)n->opaque)->is_device;
}

static int64_t file_get_length(BlockNode *n)
{
    FileState *s = n->opaque;
    int64_t len;
    int ret = file_fd_length(s, &len);
    return ret < 0 ? ret : len;
}

static int64_t file_get_allocated_size(BlockNode *n)
{
    FileState *s = n->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    if (s->is_device) {
        return 0;
    }
    return (int64_t)st.st_blocks * 512;
}

static int write_zero_range(int fd, uint64_t off, uint64_t len)
{
    size_t chunk = 1 << 20;
    uint8_t *zero = calloc(1, chunk);
    if (!zero) {
        return -ENOMEM;
    }
    int ret = 0;
    while (len > 0) {
        size_t now = len < chunk ? (size_t)len : chunk;
        ssize_t r = pwrite(fd, zero, now, (off_t)off);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            ret = r < 0 ? -errno : -ENOSPC;
            break;
        }
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    free(zero);
    return ret;
}

/* Grows or shrinks fd to size; the new area is allocated per pm. */
static int resize_fd(int fd, uint64_t old, uint64_t size, PreallocMode pm,
                     Error *err, const char *name)
{
    if (pm == PREALLOC_METADATA) {
        return error_setf(err, ENOTSUP, "Preallocation mode 'metadata' is "
                          "not supported for files");
    }
    if (size > old && pm == PREALLOC_FULL) {
        int ret = write_zero_range(fd, old, size - old);
        if (ret < 0) {
            return error_setf(err, -ret, "Could not preallocate '%s': %s",
                              name, strerror(-ret));
        }
        return 0;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        int e = errno;
        return error_setf(err, e, "Could not resize '%s': %s", name,
                          strerror(e));
    }
    if (size > old && pm == PREALLOC_FALLOC) {
        int r = posix_fallocate(fd, (off_t)old, (off_t)(size - old));
        if (r != 0) {
            if (ftruncate(fd, (off_t)old) < 0) {
                /* the error below is what matters */
            }
            return error_setf(err, r, "Could not preallocate '%s': %s",
                              name, strerror(r));
        }
    }
    return 0;
}

static int file_truncate(BlockNode *n, uint64_t size, bool exact,
                         PreallocMode pm, Error *err)
{
    FileState *s = n->opaque;
    int64_t old;
    int ret = file_fd_length(s, &old);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not get the size of '%s'",
                          n->filename);
    }
    if (s->is_device) {
        if ((uint64_t)old == size || (!exact && (uint64_t)old > size)) {
            return 0;
        }
        return error_setf(err, ENOTSUP, "Cannot grow device files");
    }
    if (!exact && (uint64_t)old > size) {
        return 0;
    }
    return resize_fd(s->fd, (uint64_t)old, size, pm, err, n->filename);
}

/* Allocation hints for a new, still empty file: the file system may
 * ignore them (only btrfs knows NOCOW, only XFS honours an extent size
 * hint), so failures are not errors, as in QEMU.  Both must be set
 * while the file holds no data. */
static void set_file_hints(int fd, bool nocow, uint32_t extent_size_hint)
{
    if (nocow) {
        int attr = 0;
        if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
        }
    }
    if (extent_size_hint) {
        struct fsxattr attr;
        if (ioctl(fd, FS_IOC_FSGETXATTR, &attr) == 0) {
            attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
            attr.fsx_extsize = extent_size_hint;
            (void)ioctl(fd, FS_IOC_FSSETXATTR, &attr);
        }
    }
}

static int file_create(const char *filename, uint64_t size, KVList *opts,
                       Error *err)
{
    PreallocMode pm = PREALLOC_OFF;
    const char *p = kvlist_get(opts, "preallocation");
    if (p && prealloc_parse(p, &pm) < 0) {
        return error_setf(err, EINVAL, "Invalid preallocation mode: '%s'",
                          p);
    }
    bool nocow = false;
    uint64_t hint = 1024 * 1024;   /* QEMU's default */
    int ret = kvlist_get_bool(opts, "nocow", false, &nocow, err);
    if (ret >= 0) {
        ret = kvlist_get_size(opts, "extent_size_hint", hint, &hint, err);
    }
    if (ret >= 0 && hint > UINT32_MAX) {
        ret = error_setf(err, EINVAL, "Extent size hint is too large");
    }
    if (ret >= 0) {
        ret = kvlist_check_unused(opts, "file", err);
    }
    if (ret < 0) {
        return ret;
    }
    int fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        return error_setf(err, e, "Could not create '%s': %s", filename,
                          strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        close(fd);
        return 0;   /* a device is created by whoever made it */
    }
    /* Refuse to clobber an image someone is using. */
    ret = image_lock(fd, IMAGE_LOCK_WRITER, filename, err);
    if (ret == 0 && ftruncate(fd, 0) < 0) {
        int e = errno;
        ret = error_setf(err, e, "Could not truncate '%s': %s", filename,
                         strerror(e));
    }
    if (ret == 0) {
        set_file_hints(fd, nocow, (uint32_t)hint);
        ret = resize_fd(fd, 0, size, pm, err, filename);
    }
    close(fd);
    return ret;
}

const BlockDriver file_driver = {
    .name = "file",
    .instance_size = sizeof(FileState),
    .api_version = BLOCK_DRIVER_API_VERSION,
    .kind = BLOCK_DRIVER_PROTOCOL,
    .open = file_open,
    .close = file_close,
    .reopen = file_reopen,
    .can_fua = file_can_fua,
    .can_zero = file_can_zero,
    .can_multi_conn = file_can_multi_conn,
    .preadv = file_preadv,
    .pwritev = file_pwritev,
    .submit = file_submit,
    .flush = file_flush,
    .discard = file_discard,
    .write_zeroes = file_write_zeroes,
    .block_status = file_block_status,
    .copy_range_from = file_copy_range_from,
    .get_length = file_get_length,
    .get_allocated_size = file_get_allocated_size,
    .has_zero_init = file_has_zero_init,
    .truncate = file_truncate,
    .create = file_create,
    .create_opts = block_protocol_create_opts,
};
