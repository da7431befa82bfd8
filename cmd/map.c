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
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"

/* One status query covers at most this much; entries merge anyway. */
#define MAP_STEP (1ULL << 30)

static const char map_usage[] =
    "usage: imgtool map [--object objectdef] [--image-opts] [-f fmt]\n"
    "                   [--start-offset=OFFSET] [--max-length=LEN]\n"
    "                   [--output=human|json] [-U] filename\n"
    "\n"
    "  -f fmt              image format (probed when omitted)\n"
    "  --start-offset=OFF  first byte to map\n"
    "  --max-length=LEN    map at most LEN bytes\n"
    "  --output=FMT        'human' (default) or 'json'\n"
    "  -U, --force-share   open without conflicting locks\n";

enum { OPT_START = 256, OPT_MAXLEN };

static const struct option map_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "start-offset", required_argument, NULL, OPT_START },
    { "max-length", required_argument, NULL, OPT_MAXLEN },
    IMAGE_ARGS_LONG_OPTIONS,
    FORCE_SHARE_LONG_OPTION,
    OUTPUT_LONG_OPTION,
    { NULL, 0, NULL, 0 },
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
        if (!(st & (BLOCK_STATUS_ZERO | BLOCK_STATUS_DATA |
                    BLOCK_STATUS_ALLOCATED))) {
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

static int bad_size(const char *what)
{
    imgtool_error("Invalid %s specified. You may use k, M, G, T, P or E "
                  "suffixes for", what);
    imgtool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
    return 1;
}

int cmd_map(int argc, char **argv)
{
    ImageArgs a = { 0 };
    uint64_t start = 0, max_len = UINT64_MAX;
    int c, r;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:U", map_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(map_usage, stdout);
            return 0;
        case OPT_START:
            if (parse_size(optarg, &start) < 0 || start > INT64_MAX) {
                return bad_size("start offset");
            }
            break;
        case OPT_MAXLEN:
            if (parse_size(optarg, &max_len) < 0 || max_len > INT64_MAX) {
                return bad_size("max length");
            }
            break;
        default:
            r = image_args_option(&a, c, optarg, "map", argv);
            if (r) {
                return r;
            }
        }
    }
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
    int rc = map_run(n, start, end, a.output);
    block_close(n);
    return rc;
}
