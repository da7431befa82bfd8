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
    fuzz_open_and_check(path, 0);
    BlockNode *n = fuzz_open(path, 0);
    if (n) {
        fuzz_describe(n);
        fuzz_read_all(n);
        block_close(n);
    }
    close(fd);
    return 0;
}
