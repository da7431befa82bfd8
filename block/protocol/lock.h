/* lock.h - QEMU-compatible image locking, shared by the protocols that
 * have byte-range locks (file: OFD locks; gluster: POSIX locks with an
 * owner per descriptor, which behave the same way). */
#ifndef IMGTOOL_BLOCK_LOCK_H
#define IMGTOOL_BLOCK_LOCK_H

#include <stdbool.h>

#include "block/block.h"

typedef enum {
    IMAGE_LOCK_WRITER,   /* read + write + resize; share none of write/resize */
    IMAGE_LOCK_READER,   /* read; share nothing that changes content */
    IMAGE_LOCK_SHARED,   /* -U: read, share everything */
} ImageLockMode;

/* The two primitives a lock scheme needs on one open file.  `set` takes
 * (lock true) a shared lock on one byte, or drops it; `held` answers 1
 * when another owner holds a lock on that byte, 0 when nobody else does.
 * Both return a negative errno on failure; -EINVAL, -ENOTSUP or -ENOLCK
 * from set mean "no such locks here". */
typedef struct ImageLockOps {
    int (*set)(void *file, int byte, bool lock);
    int (*held)(void *file, int byte);
} ImageLockOps;

/* Takes the lock bytes for mode and checks that nobody else holds
 * conflicting ones.  Returns 0, -EAGAIN with err filled on conflict, or
 * 0 silently when the file system has no such locks. */
int image_lock_with(const ImageLockOps *ops, void *file, ImageLockMode mode,
                    const char *filename, Error *err);
/* Gives up the write and resize permissions (a writer reopened
 * read-only becomes a reader). */
int image_unlock_write_with(const ImageLockOps *ops, void *file);

/* The same on a local descriptor, with OFD locks. */
int image_lock(int fd, ImageLockMode mode, const char *filename, Error *err);
int image_unlock_write(int fd);

#endif
