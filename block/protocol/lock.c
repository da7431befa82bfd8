/*
 * lock.c - image locking with the byte-range scheme QEMU uses, so that
 * QEMU and imgtool refuse to write an image the other is writing.
 *
 * Each permission P (bit index p: 0 consistent read, 1 write, 2 write
 * unchanged, 3 resize) is represented by two bytes of an OFD read lock:
 * byte 100+p means "I hold P", byte 200+p means "I do not let others hold
 * P".  Acquiring P is refused when someone locks 200+p; refusing to share
 * P is refused when someone locks 100+p.  Conflicts are tested with
 * F_OFD_GETLK for a write lock, which our own open file description never
 * conflicts with.
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

static int lock_byte(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_RDLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 when another open file description holds a lock on byte. */
static int byte_held(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
    };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

int image_lock(int fd, ImageLockMode mode, const char *filename, Error *err)
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
        int ret = lock_byte(fd, PERM_BASE + perms[i]);
        if (ret == -EINVAL || ret == -ENOTSUP || ret == -ENOLCK) {
            return 0;   /* no OFD locks on this filesystem */
        }
        if (ret < 0) {
            return error_setf(err, -ret, "Failed to lock byte %d: %s",
                              PERM_BASE + perms[i], strerror(-ret));
        }
    }
    for (int i = 0; i < nunshared; i++) {
        int ret = lock_byte(fd, SHARED_BASE + unshared[i]);
        if (ret < 0) {
            return error_setf(err, -ret, "Failed to lock byte %d: %s",
                              SHARED_BASE + unshared[i], strerror(-ret));
        }
    }
    for (int i = 0; i < nperm; i++) {
        int held = byte_held(fd, SHARED_BASE + perms[i]);
        if (held > 0) {
            return error_setf(err, EAGAIN, "Failed to get \"%s\" lock: is "
                              "another process using the image?",
                              perm_names[perms[i]]);
        }
    }
    for (int i = 0; i < nunshared; i++) {
        int held = byte_held(fd, PERM_BASE + unshared[i]);
        if (held > 0) {
            return error_setf(err, EAGAIN, "Failed to get shared \"%s\" "
                              "lock: is another process using the image?",
                              perm_names[unshared[i]]);
        }
    }
    return 0;
}

int image_unlock_write(int fd)
{
    static const int bytes[] = { PERM_BASE + PERM_WRITE,
                                 PERM_BASE + PERM_RESIZE };
    for (size_t i = 0; i < sizeof(bytes) / sizeof(bytes[0]); i++) {
        struct flock fl = {
            .l_type = F_UNLCK,
            .l_whence = SEEK_SET,
            .l_start = bytes[i],
            .l_len = 1,
        };
        if (fcntl(fd, F_OFD_SETLK, &fl) < 0 && errno != EINVAL) {
            return -errno;
        }
    }
    return 0;
}
