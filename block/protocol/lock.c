/*
 * lock.c - image locking with the byte-range scheme QEMU uses, so that
 * QEMU and imgtool refuse to write an image the other is writing.
 *
 * Each permission P (bit index p: 0 consistent read, 1 write, 2 write
 * unchanged, 3 resize) is represented by two bytes of an OFD read lock:
 * byte 100+p means "I hold P", byte 200+p means "I do not let others hold
 * P".  Acquiring P is refused when someone locks 200+p; refusing to share
 * P is refused when someone locks 100+p.  Conflicts are tested with a
 * write-lock test, which our own open file never conflicts with.  The
 * scheme is written once over two primitives (ImageLockOps): OFD locks
 * for local files, POSIX locks with an owner of their own per descriptor
 * on Gluster.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "block/protocol/lock.h"

#define PERM_BASE 100
#define SHARED_BASE 200

enum { PERM_READ = 0, PERM_WRITE = 1, PERM_RESIZE = 3 };

static const char *const perm_names[] = {
    "consistent read", "write", "write unchanged", "resize",
};

static int ofd_set(void *file, int byte, bool lock)
{
    struct flock fl = {
        .l_type = lock ? F_RDLCK : F_UNLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    return fcntl(*(int *)file, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 when another open file description holds a lock on byte: a write
 * lock test, which our own description never conflicts with. */
static int ofd_held(void *file, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    if (fcntl(*(int *)file, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

static const ImageLockOps ofd_ops = { ofd_set, ofd_held };

int image_lock_with(const ImageLockOps *ops, void *file, ImageLockMode mode,
                    const char *filename, Error *err)
{
    int perms[3], nperm = 0, unshared[2], nunshared = 0;
    perms[nperm++] = PERM_READ;
    if (mode == IMAGE_LOCK_WRITER) {
        perms[nperm++] = PERM_WRITE;
        perms[nperm++] = PERM_RESIZE;
    }
    if (mode != IMAGE_LOCK_SHARED) {
        unshared[nunshared++] = PERM_WRITE;
        unshared[nunshared++] = PERM_RESIZE;
    }

    for (int i = 0; i < nperm; i++) {
        int ret = ops->set(file, PERM_BASE + perms[i], true);
        if (ret == -EINVAL || ret == -ENOTSUP || ret == -ENOLCK) {
            return 0;   /* no such locks on this file system */
        }
        if (ret < 0) {
            return error_setf(err, -ret, "Failed to lock byte %d: %s",
                              PERM_BASE + perms[i], strerror(-ret));
        }
    }
    for (int i = 0; i < nunshared; i++) {
        int ret = ops->set(file, SHARED_BASE + unshared[i], true);
        if (ret < 0) {
            return error_setf(err, -ret, "Failed to lock byte %d: %s",
                              SHARED_BASE + unshared[i], strerror(-ret));
        }
    }
    for (int i = 0; i < nperm; i++) {
        int held = ops->held(file, SHARED_BASE + perms[i]);
        if (held > 0) {
            return error_setf(err, EAGAIN, "Failed to get \"%s\" lock: is "
                              "another process using the image?",
                              perm_names[perms[i]]);
        }
    }
    for (int i = 0; i < nunshared; i++) {
        int held = ops->held(file, PERM_BASE + unshared[i]);
        if (held > 0) {
            return error_setf(err, EAGAIN, "Failed to get shared \"%s\" "
                              "lock: is another process using the image?",
                              perm_names[unshared[i]]);
        }
    }
    return 0;
}

int image_unlock_write_with(const ImageLockOps *ops, void *file)
{
    static const int bytes[] = { PERM_BASE + PERM_WRITE,
                                 PERM_BASE + PERM_RESIZE };
    for (size_t i = 0; i < sizeof(bytes) / sizeof(bytes[0]); i++) {
        int ret = ops->set(file, bytes[i], false);
        if (ret < 0 && ret != -EINVAL) {
            return ret;
        }
    }
    return 0;
}

int image_lock(int fd, ImageLockMode mode, const char *filename, Error *err)
{
    return image_lock_with(&ofd_ops, &fd, mode, filename, err);
}

int image_unlock_write(int fd)
{
    return image_unlock_write_with(&ofd_ops, &fd);
}
