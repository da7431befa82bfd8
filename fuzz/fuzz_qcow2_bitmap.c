/*
 * fuzz_qcow2_bitmap.c - libFuzzer harness for the qcow2 bitmaps
 * extension and bitmap directory.  The input is spliced into
 * fuzz/templates/bitmap.qcow2 (a 512-byte cluster image with three
 * qemu-img bitmaps holding dirty bits) as its bitmap directory, with
 * nb_bitmaps, the directory size and offset and the autoclear bit from
 * the input (fuzz_splice.h).
 *
 * Then what touches the directory: check without repair; open as `info`
 * does and describe (the bitmaps list); open for writing, write (marking
 * the enabled bitmaps) and close (storing them); repair with
 * `check -r all`; check and read again.
 */
#include <unistd.h>

#include "fuzz/fuzz_splice.h"

#define BITMAPS_EXT 0x23852875u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FuzzTemplate tpl;
static size_t ext_at;

static void open_and_describe(const char *path)
{
    BlockNode *n = fuzz_open(path, 0);
    if (n) {
        fuzz_splice_read(n);
        block_close(n);
    }
}

static void write_some(const char *path, const void *unused)
{
    (void)unused;
    BlockNode *n = fuzz_open(path, BLOCK_O_RDWR);
    if (!n) {
        return;
    }
    static uint8_t buf[6000];
    memset(buf, 0xa5, sizeof(buf));
    int64_t len = block_get_length(n);
    if (len > 0) {
        uint64_t l = (uint64_t)len < sizeof(buf) ? (uint64_t)len
                                                 : sizeof(buf);
        block_pwrite(n, 0, (size_t)l, buf, 0);
        block_write_zeroes(n, (uint64_t)len - l, l, BLOCK_REQ_MAY_UNMAP);
        block_discard(n, (uint64_t)len / 2, l);
    }
    block_flush(n);
    block_close(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const FuzzTemplate *t = fuzz_template("bitmap.qcow2", &tpl);
    if (!ext_at) {
        ext_at = fuzz_find_extension(t->data, t->len, BITMAPS_EXT);
        if (!ext_at) {
            fprintf(stderr, "fuzz: bitmap.qcow2 has no bitmaps extension\n");
            abort();
        }
    }
    FuzzSplice sp;
    uint8_t *img;
    size_t len = fuzz_splice_image(data, size, t,
                                   fuzz_be(t->data + ext_at + 16, 8), &sp,
                                   &img);
    if (!img) {
        return 0;
    }
    fuzz_put_be(img + ext_at, 4, sp.count);
    fuzz_put_be(img + ext_at + 8, 8, sp.size);
    fuzz_put_be(img + ext_at + 16, 8, sp.offset);
    if (sp.flags & FUZZ_SPLICE_NO_AUTOCLEAR) {
        img[95] &= (uint8_t)~1u;
    }
    fuzz_splice_exercise(img, len, open_and_describe, write_some, NULL);
    return 0;
}
