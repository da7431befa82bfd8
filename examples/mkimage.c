/*
 * mkimage.c - libimgtool example: create an image, write a pattern at
 * an offset, flush, close.
 *
 *   cc mkimage.c $(pkg-config --cflags --libs libimgtool) -o mkimage
 *   ./mkimage disk.qcow2 qcow2 64M cluster_size=65536 1048576
 *
 * Writes 64 KiB of bytes 0xa5 at the given offset (a number of bytes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libimgtool.h>

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: mkimage FILE FORMAT SIZE OPTIONS|- "
                        "OFFSET\n");
        return 2;
    }
    char *end;
    unsigned long long size = strtoull(argv[3], &end, 0);
    if (*end == 'M') {
        size <<= 20;
    } else if (*end == 'G') {
        size <<= 30;
    }
    unsigned long long off = strtoull(argv[5], NULL, 0);
    libimgtool_error err;
    const char *opts = strcmp(argv[4], "-") ? argv[4] : NULL;
    if (libimgtool_create(argv[1], argv[2], size, opts, &err) < 0) {
        fprintf(stderr, "mkimage: %s: %s\n", argv[1], err.message);
        return 1;
    }
    libimgtool_image *img;
    if (libimgtool_open(argv[1], argv[2], LIBIMGTOOL_OPEN_RDWR, &img,
                        &err) < 0) {
        fprintf(stderr, "mkimage: %s: %s\n", argv[1], err.message);
        return 1;
    }
    static unsigned char buf[65536];
    memset(buf, 0xa5, sizeof(buf));
    int r = libimgtool_pwrite(img, buf, sizeof(buf), off, 0);
    if (r == 0) {
        r = libimgtool_flush(img);
    }
    libimgtool_close(img);
    if (r < 0) {
        fprintf(stderr, "mkimage: write: %s\n", strerror(-r));
        return 1;
    }
    return 0;
}
