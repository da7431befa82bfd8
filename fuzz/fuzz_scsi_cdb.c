/*
 * fuzz_scsi_cdb.c - the SCSI target (block/export/scsi-*.c): CDB
 * decoding and every command's execution over a real node (a 4 MiB raw
 * image in a memfd as LUN 0, writable; the same node read-only as LUN 1;
 * other LUNs absent), with data-out and data-in buffers of the input's
 * choosing.
 *
 * Input: byte 0 is the LUN (mod 4), bytes 1-2 the data-in buffer size
 * (up to 64 KiB), bytes 3-34 the CDB, the rest data-out.  Each command
 * must complete exactly once, with GOOD or CHECK CONDITION and 18 bytes
 * of fixed-format sense, and never write past the data-in buffer
 * (AddressSanitizer watches the heap buffer).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "block/export/scsi.h"

static ScsiTarget target;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int completions;

static void done(ScsiTask *t)
{
    pthread_mutex_lock(&lock);
    completions++;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
}

static void setup(void)
{
    int fd = memfd_create("fuzz-scsi", 0);
    if (fd < 0 || ftruncate(fd, 4 << 20) < 0) {
        abort();
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    Error err = { 0 };
    BlockNode *n = block_open(path, "raw", NULL,
                              BLOCK_O_RDWR | BLOCK_O_NO_LOCK, &err);
    if (!n) {
        abort();
    }
    scsi_target_init(&target);
    ScsiLun *l0, *l1;
    ScsiLunConf c0 = { .node = n, .writable = true, .serial = "fuzz0" };
    ScsiLunConf c1 = { .node = n, .writable = false, .serial = "fuzz1" };
    if (scsi_lun_new(&c0, &l0, &err) < 0 ||
        scsi_lun_new(&c1, &l1, &err) < 0) {
        abort();
    }
    scsi_target_attach(&target, 0, l0);
    scsi_target_attach(&target, 1, l1);
    block_close(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 35) {
        return 0;
    }
    unsigned lun = data[0] % 4;
    size_t inlen = ((size_t)data[1] << 8 | data[2]);
    uint8_t *in = malloc(inlen ? inlen : 1);
    size_t outlen = size - 35;
    uint8_t *out = malloc(outlen ? outlen : 1);
    memcpy(out, data + 35, outlen);
    struct iovec oiov, iiov;
    BlockIOV ov, iv;
    blockiov_init_buf(&ov, &oiov, out, outlen);
    blockiov_init_buf(&iv, &iiov, in, inlen);
    ScsiTask t;
    memset(&t, 0, sizeof(t));
    memcpy(t.cdb, data + 3, 32);
    t.cdb_len = 32;
    t.out = &ov;
    t.in = &iv;
    t.done = done;
    pthread_mutex_lock(&lock);
    int before = completions;
    pthread_mutex_unlock(&lock);
    scsi_task_run(&target, lun, &t);
    pthread_mutex_lock(&lock);
    while (completions == before) {
        pthread_cond_wait(&cond, &lock);
    }
    if (completions != before + 1) {
        abort();            /* done called twice */
    }
    pthread_mutex_unlock(&lock);
    if ((t.status != SCSI_STATUS_GOOD &&
         t.status != SCSI_STATUS_CHECK_CONDITION) ||
        (t.status == SCSI_STATUS_CHECK_CONDITION &&
         (t.sense_len != SCSI_SENSE_BYTES || t.sense[0] != 0x70)) ||
        t.data_in > inlen) {
        abort();
    }
    free(in);
    free(out);
    return 0;
}
