/*
 * file-clone.c - the file protocol's copy_range_from: another file
 * node's bytes put into this file by the kernel, without passing
 * through our memory.
 *
 * Shared extents first: FICLONERANGE makes both files point at the same
 * blocks (XFS with reflink, btrfs), which costs only metadata; the file
 * system's copy-on-write keeps later writes to either file private to
 * it.  It needs offsets and length in whole blocks of the file system.
 * Where extents cannot be shared (other file systems, unaligned ranges,
 * block devices) and the caller allows a copy in the kernel,
 * copy_file_range moves the bytes (it may still share them where the
 * file system can).  Anything else is -EXDEV (this file system, or this
 * pair of files, cannot share: callers stop asking) for the caller to
 * write the data itself.
 */
#include <errno.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/protocol/file-int.h"

static int copy_in_kernel(FileState *d, uint64_t off, uint64_t len,
                          FileState *s, uint64_t src_host)
{
    while (len > 0) {
        loff_t in = (loff_t)src_host, out = (loff_t)off;
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t r = copy_file_range(s->fd, &in, d->fd, &out, chunk, 0);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            /* the source ended early: let the caller read it */
            return -ENOTSUP;
        }
        off += (uint64_t)r;
        src_host += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

int file_copy_range_from(BlockNode *n, uint64_t off, uint64_t len,
                         BlockNode *src_file, uint64_t src_host, int flags)
{
    if (src_file->drv != n->drv) {
        return -EXDEV;
    }
    FileState *d = n->opaque, *s = src_file->opaque;
    if (d->is_device || s->is_device) {
        return -EXDEV;
    }
    struct stat st;
    if (fstat(d->fd, &st) < 0) {
        return -errno;
    }
    uint64_t bs = st.st_blksize > 0 ? (uint64_t)st.st_blksize : 4096;
    if (off % bs == 0 && src_host % bs == 0 && len % bs == 0) {
        struct file_clone_range r = {
            .src_fd = s->fd,
            .src_offset = src_host,
            .src_length = len,
            .dest_offset = off,
        };
        if (ioctl(d->fd, FICLONERANGE, &r) == 0) {
            return 0;
        }
        int e = errno;
        if (e != EOPNOTSUPP && e != EXDEV && e != EINVAL && e != ENOTTY &&
            e != ETXTBSY) {
            return -e;
        }
    }
    if (flags & BLOCK_COPY_IN_KERNEL) {
        int ret = copy_in_kernel(d, off, len, s, src_host);
        return ret == -EOPNOTSUPP || ret == -EINVAL ? -EXDEV : ret;
    }
    return -EXDEV;
}
