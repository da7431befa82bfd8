/*
 * vhost-harness.c - test-only: serves one image over vhost-user-blk with
 * the library's back end, until stdin closes or says "quit".  Lets the
 * back ends be driven by real QEMU before `imgtool serve` can host them.
 *
 *   vhost-harness blk SOCKET IMAGE [ro] [queues=N] [bs=N]
 *
 * Prints "READY" once the socket listens; reads commands from stdin:
 *   resize SIZE   truncate the image and notify the front end
 *   quit
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "block/export/vhost-blk.h"

static void report(void *opaque, BlockReportLevel level, const char *msg)
{
    fprintf(stderr, "vhost-harness: %s\n", msg);
}

int main(int argc, char **argv)
{
    if (argc < 4 || strcmp(argv[1], "blk") != 0) {
        fprintf(stderr, "usage: vhost-harness blk SOCKET IMAGE [ro] "
                "[queues=N] [bs=N]\n");
        return 2;
    }
    block_set_report_fn(report, NULL);
    bool ro = false;
    int queues = 1;
    unsigned bs = 512;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "ro") == 0) {
            ro = true;
        } else if (strncmp(argv[i], "queues=", 7) == 0) {
            queues = atoi(argv[i] + 7);
        } else if (strncmp(argv[i], "bs=", 3) == 0) {
            bs = (unsigned)atoi(argv[i] + 3);
        }
    }
    Error err = { 0 };
    BlockNode *n = block_open(argv[3], NULL, NULL, ro ? 0 : BLOCK_O_RDWR,
                              &err);
    if (!n) {
        fprintf(stderr, "vhost-harness: %s\n", err.msg);
        return 1;
    }
    VhostBlkConf conf = { .id = "disk0", .node = n, .writable = !ro,
                          .logical_block_size = bs, .num_queues = queues };
    VhostBlk *b;
    if (vhost_blk_new(&conf, &b, &err) < 0 ||
        vhost_blk_listen(b, argv[2], -1, &err) < 0) {
        fprintf(stderr, "vhost-harness: %s\n", err.msg);
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof(line), stdin)) {
        uint64_t size;
        char arg[200];
        if (strncmp(line, "quit", 4) == 0) {
            break;
        } else if (sscanf(line, "resize %199s", arg) == 1 &&
                   parse_size(arg, &size) == 0) {
            int ret = block_truncate(n, size, false, PREALLOC_OFF, &err);
            if (ret == 0) {
                ret = vhost_blk_resized(b);
            }
            printf("resize %d %s\n", ret, ret < 0 ? err.msg : "");
            fflush(stdout);
        }
    }
    vhost_blk_free(b);
    block_close(n);
    return 0;
}
