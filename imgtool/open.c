/* open.c - opening images named on the command line. */
#include <errno.h>
#include <string.h>

#include "imgtool/imgtool.h"

BlockNode *imgtool_open(const char *name, const char *fmt, bool image_opts,
                        int flags, Error *err)
{
    if (!image_opts) {
        BlockNode *n = block_open(name, fmt, NULL, flags, err);
        if (n && !fmt && (flags & BLOCK_O_RDWR) &&
            strcmp(block_node_format(n), "raw") == 0) {
            imgtool_warn("Image format was not specified for '%s' and "
                         "probing guessed raw; writes to block 0 are "
                         "restricted. Specify the 'raw' format explicitly "
                         "to remove the restrictions.", name);
        }
        return n;
    }
    if (fmt) {
        error_setf(err, EINVAL, "--image-opts and --format are mutually "
                   "exclusive");
        return NULL;
    }
    KVList opts = { 0 };
    if (kvlist_parse(&opts, name, "file", err) < 0) {
        kvlist_free(&opts);
        return NULL;
    }
    BlockNode *n = block_open(NULL, NULL, &opts, flags, err);
    kvlist_free(&opts);
    return n;
}

int imgtool_parse_cache(const char *mode, int *flags)
{
    *flags &= ~(BLOCK_O_NOCACHE | BLOCK_O_NO_FLUSH);
    if (!strcmp(mode, "none") || !strcmp(mode, "off") ||
        !strcmp(mode, "directsync")) {
        *flags |= BLOCK_O_NOCACHE;
    } else if (!strcmp(mode, "unsafe")) {
        *flags |= BLOCK_O_NO_FLUSH;
    } else if (strcmp(mode, "writeback") && strcmp(mode, "writethrough")) {
        return -EINVAL;
    }
    return 0;
}
