/* lock.h - QEMU-compatible image locking (internal to the file driver). */
#ifndef IMGTOOL_BLOCK_LOCK_H
#define IMGTOOL_BLOCK_LOCK_H

#include <stdbool.h>

#include "block/block.h"

typedef enum {
    IMAGE_LOCK_WRITER,   /* read + write + resize; share none of write/resize */
    IMAGE_LOCK_READER,   /* read; share nothing that changes content */
    IMAGE_LOCK_SHARED,   /* -U: read, share everything */
} ImageLockMode;

/* Takes the lock bytes for mode on fd and checks that nobody else holds
 * conflicting ones.  Returns 0, -EAGAIN with err filled on conflict, or
 * 0 silently when the filesystem has no OFD locks. */
int image_lock(int fd, ImageLockMode mode, const char *filename, Error *err);

/* Gives up the write and resize permissions (a writer reopened
 * read-only becomes a reader). */
int image_unlock_write(int fd);

#endif
