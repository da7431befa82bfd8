/*
 * fuzz_qcow2_write.c - libFuzzer harness: an arbitrary file opened as
 * qcow2 for writing.  A few writes, zero writes, discards and a flush
 * chosen from a hash of the input (so the image bytes stay the input),
 * then `check -r all` as imgtool runs it, then a read-only check.
 * Writing to a damaged image may fail, never crash.
 */
#include <unistd.h>

#include "fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t fnv1a(const uint8_t *data, size_t size)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < size; i++) {
        h = (h ^ data[i]) * 0x100000001b3ull;
    }
    return h;
}

static uint64_t next(uint64_t *h)
{
    *h ^= *h << 13;
    *h ^= *h >> 7;
    *h ^= *h << 17;
    return *h;
}

static void workload(BlockNode *n, uint64_t h)
{
    int64_t len = block_get_length(n);
    if (len <= 0) {
        return;
    }
    uint64_t size = (uint64_t)len;
    static uint8_t buf[256 << 10];
    memset(buf, (int)(h & 0xff) | 1, sizeof(buf));
    /* Near the start, the middle and the end, then anywhere. */
    uint64_t spots[4] = { 0, size / 2, size > 65536 ? size - 65536 : 0, 0 };
    for (int i = 0; i < 8; i++) {
        uint64_t r = next(&h);
        uint64_t off = i < 3 ? spots[i] : r % size;
        off += (r >> 20) % 4096;
        if (off >= size) {
            off = size - 1;
        }
        uint64_t l = 1 + (r >> 32) % sizeof(buf);
        if (l > size - off) {
            l = size - off;
        }
        switch ((r >> 8) % 5) {
        case 0:
        case 1:
            block_pwrite(n, off, (size_t)l, buf, 0);
            break;
        case 2:
            block_write_zeroes(n, off, l, (r & 1) ? BLOCK_REQ_MAY_UNMAP : 0);
            break;
        case 3:
            block_discard(n, off, l);
            break;
        case 4:
            block_flush(n);
            break;
        }
    }
    block_flush(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfd(data, size, path, sizeof(path));
    if (fd < 0) {
        return 0;
    }
    BlockNode *n = fuzz_open(path, BLOCK_O_RDWR);
    if (n) {
        workload(n, fnv1a(data, size));
        block_close(n);
    }
    fuzz_open_and_check(path, FUZZ_REPAIR);
    n = fuzz_open(path, BLOCK_O_CHECK);
    if (n) {
        fuzz_check(n, 0);
        fuzz_read_all(n);
        block_close(n);
    }
    close(fd);
    return 0;
}
