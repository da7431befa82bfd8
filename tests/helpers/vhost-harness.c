/*
 * vhost-harness.c - test-only: serves images over the library's
 * vhost-user-blk or vhost-user-scsi back end until stdin closes or says
 * "quit", so real QEMU can drive the back ends without a daemon.
 *
 *   vhost-harness blk SOCKET IMAGE [ro] [queues=N] [bs=N]
 *   vhost-harness scsi SOCKET [queues=N] [bs=N] IMAGE[:ro]...  (LUN 0, 1...)
 *
 * Prints "READY" once the socket listens; then reads commands:
 *   resize [LUN] SIZE     truncate an image and tell the front end
 *   add LUN IMAGE         hot-add a LUN (scsi)
 *   del LUN               hot-remove a LUN (scsi)
 *   quit
 * and answers each with one line "<command> <0 or -errno> [message]".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"
#include "block/export/vhost-blk.h"
#include "block/export/vhost-scsi.h"

#define MAX_IMAGES SCSI_MAX_LUNS

static BlockNode *nodes[MAX_IMAGES];
static unsigned bs = 512;

static void report(void *opaque, BlockReportLevel level, const char *msg)
{
    fprintf(stderr, "vhost-harness: %s\n", msg);
}

static BlockNode *open_image(const char *spec, bool *ro, Error *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s", spec);
    size_t l = strlen(path);
    *ro = l > 3 && strcmp(path + l - 3, ":ro") == 0;
    if (*ro) {
        path[l - 3] = 0;
    }
    return block_open(path, NULL, NULL, *ro ? 0 : BLOCK_O_RDWR, err);
}

static int add_lun(VhostScsi *s, unsigned lun, const char *spec, Error *err)
{
    bool ro;
    if (lun >= MAX_IMAGES || nodes[lun]) {
        return error_setf(err, EEXIST, "LUN %u taken", lun);
    }
    BlockNode *n = open_image(spec, &ro, err);
    if (!n) {
        return -err->code;
    }
    char serial[32];
    snprintf(serial, sizeof(serial), "lun%u", lun);
    ScsiLunConf lc = { .node = n, .writable = !ro, .block_size = bs,
                       .serial = serial };
    int ret = vhost_scsi_add_lun(s, lun, &lc, err);
    if (ret < 0) {
        block_close(n);
        return ret;
    }
    nodes[lun] = n;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "blk") && strcmp(argv[1], "scsi"))) {
        fprintf(stderr, "usage: vhost-harness blk|scsi SOCKET ...\n");
        return 2;
    }
    block_set_report_fn(report, NULL);
    bool scsi = strcmp(argv[1], "scsi") == 0;
    bool ro = false;
    int queues = 1;
    Error err = { 0 };
    VhostBlk *b = NULL;
    VhostScsi *s = NULL;
    unsigned nimg = 0;
    const char *images[MAX_IMAGES];
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "ro") == 0) {
            ro = true;
        } else if (strncmp(argv[i], "queues=", 7) == 0) {
            queues = atoi(argv[i] + 7);
        } else if (strncmp(argv[i], "bs=", 3) == 0) {
            bs = (unsigned)atoi(argv[i] + 3);
        } else if (nimg < MAX_IMAGES) {
            images[nimg++] = argv[i];
        }
    }
    if (!scsi) {
        nodes[0] = block_open(images[0], NULL, NULL,
                              ro ? 0 : BLOCK_O_RDWR, &err);
        VhostBlkConf conf = { .id = "disk0", .node = nodes[0],
                              .writable = !ro, .logical_block_size = bs,
                              .num_queues = queues };
        if (!nodes[0] || vhost_blk_new(&conf, &b, &err) < 0 ||
            vhost_blk_listen(b, argv[2], -1, &err) < 0) {
            fprintf(stderr, "vhost-harness: %s\n", err.msg);
            return 1;
        }
    } else {
        if (vhost_scsi_new("scsi0", queues, &s, &err) < 0) {
            fprintf(stderr, "vhost-harness: %s\n", err.msg);
            return 1;
        }
        for (unsigned i = 0; i < nimg; i++) {
            if (add_lun(s, i, images[i], &err) < 0) {
                fprintf(stderr, "vhost-harness: %s\n", err.msg);
                return 1;
            }
        }
        if (vhost_scsi_listen(s, argv[2], -1, &err) < 0) {
            fprintf(stderr, "vhost-harness: %s\n", err.msg);
            return 1;
        }
    }
    printf("READY\n");
    fflush(stdout);
    char line[4200];
    while (fgets(line, sizeof(line), stdin)) {
        uint64_t size;
        unsigned lun = 0;
        char arg[4096];
        int ret = -EINVAL;
        error_clear(&err);
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "quit") == 0) {
            break;
        } else if ((sscanf(line, "resize %u %4095s", &lun, arg) == 2 ||
                    sscanf(line, "resize %4095s", arg) == 1) &&
                   parse_size(arg, &size) == 0 && lun < MAX_IMAGES &&
                   nodes[lun]) {
            ret = block_truncate(nodes[lun], size, false, PREALLOC_OFF, &err);
            if (ret == 0) {
                ret = b ? vhost_blk_resized(b) : vhost_scsi_lun_resized(s, lun);
            }
        } else if (s && sscanf(line, "add %u %4095s", &lun, arg) == 2) {
            ret = add_lun(s, lun, arg, &err);
        } else if (s && sscanf(line, "del %u", &lun) == 1) {
            ret = vhost_scsi_remove_lun(s, lun, &err);
            if (ret == 0 && lun < MAX_IMAGES) {
                block_close(nodes[lun]);
                nodes[lun] = NULL;
            }
        }
        printf("%s %d %s\n", line, ret, err.msg);
        fflush(stdout);
    }
    vhost_blk_free(b);
    vhost_scsi_free(s);
    for (unsigned i = 0; i < MAX_IMAGES; i++) {
        block_close(nodes[i]);
    }
    return 0;
}
