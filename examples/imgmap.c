/*
 * imgmap.c - libimgtool example: open an image (format probed), print
 * its format and size, then one line per extent of what reads return
 * through the backing chain, then the image's bytes to a file if asked.
 *
 *   cc imgmap.c $(pkg-config --cflags --libs libimgtool) -o imgmap
 *   ./imgmap disk.qcow2 [raw-copy]
 *
 * Output: "format qcow2", "size 1048576", then lines
 * "OFFSET LENGTH data|zero|data,zero allocated|-".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libimgtool.h>

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: imgmap IMAGE [RAW-COPY]\n");
        return 2;
    }
    libimgtool_image *img;
    libimgtool_error err;
    if (libimgtool_open(argv[1], NULL, LIBIMGTOOL_OPEN_SHARE, &img,
                        &err) < 0) {
        fprintf(stderr, "imgmap: %s: %s\n", argv[1], err.message);
        return 1;
    }
    int64_t size = libimgtool_size(img);
    if (size < 0) {
        fprintf(stderr, "imgmap: size: %s\n", strerror((int)-size));
        libimgtool_close(img);
        return 1;
    }
    printf("format %s\nsize %lld\n", libimgtool_format(img),
           (long long)size);
    int rc = 0;
    for (uint64_t off = 0; off < (uint64_t)size;) {
        uint64_t n;
        unsigned st;
        int r = libimgtool_block_status(img, off, (uint64_t)size - off, &n,
                                        &st);
        if (r < 0) {
            fprintf(stderr, "imgmap: block status: %s\n", strerror(-r));
            rc = 1;
            break;
        }
        printf("%llu %llu %s %s\n", (unsigned long long)off,
               (unsigned long long)n,
               (st & LIBIMGTOOL_STATUS_DATA) && (st & LIBIMGTOOL_STATUS_ZERO)
                   ? "data,zero"
                   : (st & LIBIMGTOOL_STATUS_DATA) ? "data" : "zero",
               (st & LIBIMGTOOL_STATUS_ALLOCATED) ? "allocated" : "-");
        off += n;
    }
    if (rc == 0 && argc == 3) {
        FILE *out = fopen(argv[2], "wb");
        static char buf[1 << 16];
        for (uint64_t off = 0; out && off < (uint64_t)size && rc == 0;) {
            size_t len = (uint64_t)size - off < sizeof(buf)
                             ? (size_t)((uint64_t)size - off) : sizeof(buf);
            int r = libimgtool_pread(img, buf, len, off);
            if (r < 0 || fwrite(buf, 1, len, out) != len) {
                fprintf(stderr, "imgmap: copy at %llu: %s\n",
                        (unsigned long long)off,
                        strerror(r < 0 ? -r : errno));
                rc = 1;
            }
            off += len;
        }
        if (!out || fclose(out) != 0) {
            fprintf(stderr, "imgmap: %s: %s\n", argv[2], strerror(errno));
            rc = 1;
        }
    }
    libimgtool_close(img);
    return rc;
}
