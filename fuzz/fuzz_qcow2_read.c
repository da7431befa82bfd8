/*
 * fuzz_qcow2_read.c - libFuzzer harness: an arbitrary file opened as
 * qcow2, read-only.  Opens it as `check` does and checks it without
 * repairing, then opens it as `info`/`convert` do, describes it, and
 * reads the whole virtual disk (bounded).  Any crash, sanitizer report
 * or leak is a driver bug: every input must be refused or handled.
 */
#include <unistd.h>

#include "fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfd(data, size, path, sizeof(path));
    if (fd < 0) {
        return 0;
    }
    Error err = { 0 };
    BlockNode *n = block_open(path, "qcow2", NULL,
                              FUZZ_OPEN_FLAGS | BLOCK_O_CHECK, &err);
    if (n) {
        fuzz_check(n, 0);
        block_close(n);
    }
    error_clear(&err);
    n = block_open(path, "qcow2", NULL, FUZZ_OPEN_FLAGS, &err);
    if (n) {
        fuzz_describe(n);
        fuzz_read_all(n);
        block_close(n);
    }
    close(fd);
    return 0;
}
