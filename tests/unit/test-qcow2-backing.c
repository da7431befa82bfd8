/*
 * test-qcow2-backing.c - block_change_backing_file on qcow2 rewrites the
 * header so that the new name/format are read back, and header extensions
 * we do not know survive the rewrite.  (TAP)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/driver.h"

static int ok_count, test_no;

static void ok(int cond, const char *what)
{
    printf("%s %d - %s\n", cond ? "ok" : "not ok", ++test_no, what);
    ok_count += !cond;
}

int main(void)
{
    char dir[] = "/tmp/imgtool-qcow2-backing-XXXXXX";
    char img[256], base[256];
    Error err = { 0 };

    if (!mkdtemp(dir)) {
        printf("1..0 # SKIP no temp dir\n");
        return 0;
    }
    snprintf(img, sizeof(img), "%s/top.qcow2", dir);
    snprintf(base, sizeof(base), "%s/base.qcow2", dir);
    printf("1..6\n");
    block_create("qcow2", base, 1 << 20, true, NULL, 0, &err);
    KVList o = { 0 };
    kvlist_set(&o, "backing_file", "base.qcow2");
    kvlist_set(&o, "backing_fmt", "qcow2");
    ok(block_create("qcow2", img, 1 << 20, true, &o, 0, &err) == 0,
       "create with backing file");
    kvlist_free(&o);

    /* Plant an unknown extension right after the header. */
    FILE *f = fopen(img, "r+b");
    unsigned char hdr[4096];
    size_t got = fread(hdr, 1, sizeof(hdr), f);
    unsigned char ext[16] = { 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 3, 'a', 'b',
                              'c' };
    memmove(hdr + 112 + 16, hdr + 112, sizeof(hdr) - 112 - 16);
    memcpy(hdr + 112, ext, 16);
    /* The backing file name moved by 16 bytes. */
    unsigned long long boff = 0;
    for (int i = 0; i < 8; i++) {
        boff = (boff << 8) | hdr[8 + i];
    }
    boff += 16;
    for (int i = 7; i >= 0; i--) {
        hdr[8 + i] = (unsigned char)boff;
        boff >>= 8;
    }
    fseek(f, 0, SEEK_SET);
    fwrite(hdr, 1, got, f);
    fclose(f);

    BlockNode *n = block_open(img, "qcow2", NULL,
                              BLOCK_O_RDWR | BLOCK_O_NO_BACKING, &err);
    ok(n && n->backing_file && !strcmp(n->backing_file, "base.qcow2"),
       "open with an unknown extension");
    int ret = n ? block_change_backing_file(n, "other.img", "raw", &err)
                : -1;
    ok(ret == 0, "change backing file");
    block_close(n);

    n = block_open(img, "qcow2", NULL, BLOCK_O_NO_BACKING, &err);
    ok(n && n->backing_file && !strcmp(n->backing_file, "other.img") &&
       n->backing_format && !strcmp(n->backing_format, "raw"),
       "new backing file and format read back");
    block_close(n);

    f = fopen(img, "rb");
    got = fread(hdr, 1, sizeof(hdr), f);
    fclose(f);
    int found = 0;
    for (size_t i = 0; i + 11 <= got; i++) {
        if (!memcmp(hdr + i, ext, 11)) {
            found = 1;
        }
    }
    ok(found, "unknown extension preserved");

    n = block_open(img, "qcow2", NULL, BLOCK_O_RDWR | BLOCK_O_NO_BACKING,
                   &err);
    ret = n ? block_change_backing_file(n, NULL, NULL, &err) : -1;
    block_close(n);
    n = block_open(img, "qcow2", NULL, BLOCK_O_NO_BACKING, &err);
    ok(ret == 0 && n && !n->backing_file, "backing file removed");
    block_close(n);

    unlink(img);
    unlink(base);
    rmdir(dir);
    return ok_count ? 1 : 0;
}
