/*
 * map.c - `imgtool map`: which layer of the chain holds each byte range,
 * and where, in qemu-img map's human and JSON layouts.
 *
 * The chain is walked one layer at a time (block_status per node) so the
 * depth and the host offset belong to the layer that answers.  A layer
 * answers a range when it reports data or zeroes; an unallocated range of
 * a layer with no backing file, or beyond its backing file's end, reads
 * as zero and is answered by that layer (qemu-img map reports it the same
 * way).  Adjacent ranges with equal attributes (and contiguous host
 * offsets) are merged into one entry.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/parse-options.h"

/* One status query covers at most this much; entries merge anyway. */
#define MAP_STEP (1ULL << 30)

static struct {
    uint64_t start, max_len;
} o = { .max_len = UINT64_MAX };

static const CmdOpt map_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_FORMAT,
    { CMDOPT_SIZE, 0, "start-offset", "offset", "first byte to map",
      .value = &o.start, .what = "start offset", .max = INT64_MAX },
    { CMDOPT_SIZE, 0, "max-length", "len", "map at most len bytes",
      .value = &o.max_len, .what = "max length", .max = INT64_MAX },
    CMDOPT_OUTPUT,
    CMDOPT_FORCE_SHARE,
    CMDOPT_END,
};

static const CmdSpec map_spec = {
    .name = "map",
    .args = "filename",
    .description = "Shows which layer of the backing chain holds each byte "
                   "range, and where.\n",
    .opts = map_opts,
};

typedef struct MapEntry {
    uint64_t start, length;
    int depth;
    bool present, zero, data, has_offset;
    uint64_t offset;
    const char *filename;   /* of the node holding the data */
} MapEntry;

/* Status of [off, off+len) as the chain below top answers it. */
static int map_get(BlockNode *top, uint64_t off, uint64_t len, MapEntry *e)
{
    int depth = 0;
    BlockNode *n = top;
    for (;;) {
        uint64_t pnum = 0, map = 0;
        BlockNode *file = NULL;
        int st = block_status(n, off, len, &pnum, &map, &file);
        if (st < 0) {
            return st;
        }
        if (pnum == 0) {
            return -EIO;
        }
        len = pnum;
        /* Only a layer that can have a backing file reads unallocated
         * ranges from it (or as zero); a protocol's are unknown. */
        if (!(st & (BLOCK_STATUS_ZERO | BLOCK_STATUS_DATA |
                    BLOCK_STATUS_ALLOCATED)) &&
            block_node_supports_backing(n)) {
            int64_t blen = block_backing(n) ? block_get_length(block_backing(n)) : 0;
            if (blen < 0) {
                return (int)blen;
            }
            if (!block_backing(n) || off >= (uint64_t)blen) {
                st |= BLOCK_STATUS_ZERO;
            } else {
                if (off + len > (uint64_t)blen) {
                    len = blen - off;
                }
                n = block_backing(n);
                depth++;
                continue;
            }
        }
        bool has_offset = (st & BLOCK_STATUS_OFFSET_VALID) && file;
        *e = (MapEntry) {
            .start = off,
            .length = len,
            .depth = depth,
            .present = st & BLOCK_STATUS_ALLOCATED,
            .zero = st & BLOCK_STATUS_ZERO,
            .data = st & BLOCK_STATUS_DATA,
            .has_offset = has_offset,
            .offset = has_offset ? map : 0,
            .filename = has_offset ? block_node_filename(file) : NULL,
        };
        return 0;
    }
}

static bool map_mergeable(const MapEntry *a, const MapEntry *b)
{
    if (a->start + a->length != b->start || a->depth != b->depth ||
        a->present != b->present || a->zero != b->zero ||
        a->data != b->data || a->has_offset != b->has_offset) {
        return false;
    }
    if (a->has_offset &&
        (a->offset + a->length != b->offset ||
         strcmp(a->filename, b->filename) != 0)) {
        return false;
    }
    return true;
}

/* Prints one finished entry; returns 0 or an exit code. */
static int map_print(const MapEntry *e, OutputFormat fmt, bool first)
{
    if (fmt == OUTPUT_JSON) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
               ", \"depth\": %d, \"present\": %s, \"zero\": %s"
               ", \"data\": %s",
               first ? "[" : ",\n", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %" PRIu64, e->offset);
        }
        printf("}");
        return 0;
    }
    if (!e->data) {
        return 0;
    }
    if (!e->has_offset) {
        imgtool_error("File contains external, encrypted or compressed "
                      "clusters.");
        return 1;
    }
    if (e->zero) {
        /* allocated, but a hole of the host file: qemu-img lists data
         * that is not zero only */
        return 0;
    }
    printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
           e->start, e->length, e->offset, e->filename);
    return 0;
}

static int map_run(BlockNode *n, uint64_t start, uint64_t end,
                   OutputFormat fmt)
{
    if (fmt == OUTPUT_HUMAN) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    }
    MapEntry cur = { .start = start };
    bool have = false, first = true;
    for (uint64_t off = start; off < end;) {
        MapEntry next;
        uint64_t len = end - off < MAP_STEP ? end - off : MAP_STEP;
        int ret = map_get(n, off, len, &next);
        if (ret < 0) {
            imgtool_error("Could not read file metadata: %s", strerror(-ret));
            return 1;
        }
        off += next.length;
        if (have && map_mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (have) {
            if (map_print(&cur, fmt, first)) {
                return 1;
            }
            first = false;
        }
        cur = next;
        have = true;
    }
    /* an empty range still prints one (empty) entry, as qemu-img does */
    if (map_print(&cur, fmt, first)) {
        return 1;
    }
    if (fmt == OUTPUT_JSON) {
        printf("]\n");
    }
    return 0;
}

int cmd_map(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&map_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    uint64_t start = o.start, max_len = o.max_len;
    if (argc - optind != 1) {
        return usage_error("map", "Expecting one image file name");
    }
    if (image_args_check(&a) < 0) {
        return 1;
    }

    Error err = { 0 };
    BlockNode *n = imgtool_open(argv[optind], a.fmt, a.image_opts,
                                image_args_flags(&a), &err);
    if (!n) {
        imgtool_report(&err);
        return 1;
    }
    int64_t size = block_get_length(n);
    if (size < 0) {
        imgtool_error("Could not get size of '%s': %s", argv[optind],
                      strerror((int)-size));
        block_close(n);
        return 1;
    }
    uint64_t end = (uint64_t)size;
    if (max_len < end && start + max_len < end) {
        end = start + max_len;
    }
    rc = map_run(n, start, end, a.output);
    block_close(n);
    return rc;
}
