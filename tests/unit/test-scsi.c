/*
 * test-scsi.c - the SCSI target over real block nodes (a raw file as
 * LUN 0, read-write, and a qcow2 file as LUN 1, read-only): CDB decoding,
 * fixed-format sense data with field pointers, INQUIRY and each VPD page,
 * READ CAPACITY, MODE SENSE, REPORT LUNS, REQUEST SENSE, reads and writes
 * of every size class, WRITE SAME (pattern across chunks, zeroes with
 * UNMAP), UNMAP, GET LBA STATUS, SYNCHRONIZE CACHE, unit attention after
 * a resize, a LUN that is not there, and the error paths: out of range,
 * write protected, buffers too small, malformed parameter lists.  (TAP)
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/export/scsi.h"

static int n_test, failed;

static void ok(int cond, const char *what)
{
    n_test++;
    if (!cond) {
        failed++;
    }
    printf("%sok %d - %s\n", cond ? "" : "not ", n_test, what);
}

#define MiB (1024 * 1024)
static ScsiTarget target;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static bool finished;
static uint8_t inbuf[4 * MiB], outbuf[4 * MiB];

static void done(ScsiTask *t)
{
    pthread_mutex_lock(&lock);
    finished = true;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
}

/* Runs cdb on lun with `outlen` bytes of outbuf and `inlen` of inbuf. */
static ScsiTask *run(unsigned lun, const uint8_t *cdb, size_t cdblen,
                     size_t outlen, size_t inlen)
{
    static ScsiTask t;
    static struct iovec oiov, iiov;
    static BlockIOV out, in;
    memset(&t, 0, sizeof(t));
    memcpy(t.cdb, cdb, cdblen);
    t.cdb_len = sizeof(t.cdb);
    blockiov_init_buf(&out, &oiov, outbuf, outlen);
    blockiov_init_buf(&in, &iiov, inbuf, inlen);
    t.out = &out;
    t.in = &in;
    t.done = done;
    finished = false;
    scsi_task_run(&target, lun, &t);
    pthread_mutex_lock(&lock);
    while (!finished) {
        pthread_cond_wait(&cond, &lock);
    }
    pthread_mutex_unlock(&lock);
    return &t;
}

static bool good(const ScsiTask *t)
{
    return t->status == SCSI_STATUS_GOOD && !t->overrun;
}

static bool sense_is(const ScsiTask *t, uint8_t key, uint16_t asc)
{
    return t->status == SCSI_STATUS_CHECK_CONDITION &&
        t->sense_len == SCSI_SENSE_BYTES && t->sense[0] == 0x70 &&
        (t->sense[2] & 0xf) == key && t->sense[12] == asc >> 8 &&
        t->sense[13] == (asc & 0xff);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static void cdb16(uint8_t *c, uint8_t op, uint64_t lba, uint32_t n)
{
    memset(c, 0, 16);
    c[0] = op;
    put64(c + 2, lba);
    put32(c + 10, n);
}

static void test_parse(void)
{
    ScsiCmd c;
    ScsiError e;
    uint8_t cdb[32] = { 0 };
    cdb[0] = 0xff;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == -EINVAL &&
       e.asc == ASC_INVALID_OPCODE, "vendor opcode refused");
    cdb[0] = 0x7f;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == -EINVAL &&
       e.asc == ASC_INVALID_OPCODE, "variable-length CDB refused");
    cdb[0] = SCSI_READ_16;
    ok(scsi_cdb_parse(cdb, 10, &c, &e) == -EINVAL,
       "16-byte CDB in 10 bytes refused");
    memset(cdb, 0, sizeof(cdb));
    cdb[0] = SCSI_READ_6;
    cdb[1] = 0x1f;
    cdb[2] = 0xff;
    cdb[3] = 0xfe;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == 0 && c.lba == 0x1ffffe &&
       c.blocks == 256 && c.kind == SCSI_CMD_READ,
       "READ(6): 21-bit LBA, length 0 means 256");
    memset(cdb, 0, sizeof(cdb));
    cdb[0] = SCSI_WRITE_10;
    cdb[1] = 0x20;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == -EINVAL &&
       e.asc == ASC_INVALID_FIELD_IN_CDB && e.field == 1 && e.bit == 7,
       "WRPROTECT refused, pointing at byte 1 bit 7");
    cdb[1] = 0x08;
    cdb[9] = 0x04;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == -EINVAL && e.field == 9 &&
       e.bit == 2, "NACA refused, pointing at the control byte");
    cdb[9] = 0;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == 0 && c.fua, "FUA decoded");
    memset(cdb, 0, sizeof(cdb));
    cdb[0] = SCSI_SERVICE_ACTION_IN_16;
    cdb[1] = 0x11;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == -EINVAL && e.field == 1,
       "unknown service action refused");
    memset(cdb, 0, sizeof(cdb));
    cdb[0] = SCSI_INQUIRY;
    cdb[2] = 0x80;
    ok(scsi_cdb_parse(cdb, 32, &c, &e) == -EINVAL && e.field == 2,
       "page code without EVPD refused");

    uint8_t s[SCSI_SENSE_BYTES];
    ScsiError fe = { SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 300, 3,
                     true };
    scsi_sense_fixed(s, &fe);
    ok(s[0] == 0x70 && s[2] == 5 && s[7] == 10 && s[12] == 0x24 &&
       s[13] == 0 && s[15] == (0x80 | 0x40 | 0x08 | 3) && s[16] == 1 &&
       s[17] == 44, "fixed sense with a field pointer");
}

static void test_info(void)
{
    uint8_t cdb[16] = { SCSI_INQUIRY, 0, 0, 0, 255, 0 };
    ScsiTask *t = run(0, cdb, 6, 0, 255);
    ok(good(t) && inbuf[0] == 0 && inbuf[2] == 6 &&
       memcmp(inbuf + 8, "IMGTOOL ", 8) == 0 && t->data_in == 96,
       "standard INQUIRY");
    t = run(7, cdb, 6, 0, 255);
    ok(good(t) && inbuf[0] == 0x7f, "INQUIRY of an absent LUN: PQ 3");
    cdb[4] = 5;
    t = run(0, cdb, 6, 0, 255);
    ok(good(t) && t->data_in == 5, "allocation length cuts the answer");

    cdb[1] = 1;
    cdb[4] = 255;
    t = run(0, cdb, 6, 0, 255);
    ok(good(t) && inbuf[1] == 0 && inbuf[3] == 6 && inbuf[4] == 0 &&
       inbuf[5] == 0x80 && inbuf[9] == 0xb2, "VPD 00: supported pages");
    cdb[2] = 0x80;
    t = run(0, cdb, 6, 0, 255);
    ok(good(t) && inbuf[3] == 4 && memcmp(inbuf + 4, "lun0", 4) == 0,
       "VPD 80: unit serial number");
    cdb[2] = 0x83;
    t = run(0, cdb, 6, 0, 255);
    ok(good(t) && inbuf[4] == 1 && inbuf[5] == 3 && inbuf[7] == 8 &&
       (inbuf[8] >> 4) == 3 && inbuf[16] == 2 && inbuf[17] == 1 &&
       memcmp(inbuf + 20, "IMGTOOL lun0", 12) == 0,
       "VPD 83: NAA and T10 vendor designators");
    cdb[2] = 0xb0;
    t = run(0, cdb, 6, 0, 255);
    ok(good(t) && inbuf[3] == 0x3c && inbuf[4] == 1 &&
       be32(inbuf + 8) == SCSI_MAX_XFER_BYTES / 512 &&
       be32(inbuf + 24) == SCSI_MAX_UNMAP_DESC,
       "VPD B0: block limits");
    cdb[2] = 0xb1;
    t = run(0, cdb, 6, 0, 255);
    ok(good(t) && inbuf[4] == 0 && inbuf[5] == 1, "VPD B1: non-rotating");
    cdb[2] = 0xb2;
    t = run(0, cdb, 6, 0, 255);
    ok(good(t) && (inbuf[5] & 0xe0) == 0xe0 && inbuf[6] == 2,
       "VPD B2: UNMAP and WRITE SAME unmap, thin");
    t = run(1, cdb, 6, 0, 255);
    ok(good(t) && inbuf[5] == 0, "VPD B2 of a read-only LUN: no unmap");
    cdb[2] = 0x99;
    t = run(0, cdb, 6, 0, 255);
    ok(sense_is(t, SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB) &&
       t->sense[17] == 2, "unknown VPD page refused");

    uint8_t rc10[10] = { SCSI_READ_CAPACITY_10 };
    t = run(0, rc10, 10, 0, 8);
    ok(good(t) && be32(inbuf) == 4 * MiB / 512 - 1 && be32(inbuf + 4) == 512,
       "READ CAPACITY(10)");
    uint8_t rc16[16] = { SCSI_SERVICE_ACTION_IN_16, 0x10 };
    put32(rc16 + 10, 32);
    t = run(0, rc16, 16, 0, 32);
    ok(good(t) && be64(inbuf) == 4 * MiB / 512 - 1 &&
       be32(inbuf + 8) == 512 && (inbuf[14] & 0x80),
       "READ CAPACITY(16) with LBPME");

    uint8_t ms[6] = { SCSI_MODE_SENSE_6, 0, 0x3f, 0, 255 };
    t = run(0, ms, 6, 0, 255);
    ok(good(t) && inbuf[0] == t->data_in - 1 && inbuf[2] == 0x10 &&
       inbuf[3] == 8 && inbuf[12] == 0x08 && (inbuf[14] & 0x04) &&
       inbuf[32] == 0x0a, "MODE SENSE(6) all pages: caching with WCE");
    t = run(1, ms, 6, 0, 255);
    ok(good(t) && (inbuf[2] & 0x80), "MODE SENSE of a read-only LUN: WP");
    uint8_t ms10[10] = { SCSI_MODE_SENSE_10, 0x18, 0x08, 0, 0, 0, 0, 0,
                         255 };
    t = run(0, ms10, 10, 0, 255);
    ok(good(t) && inbuf[4] == 1 && inbuf[7] == 0 && inbuf[8] == 0x08,
       "MODE SENSE(10), DBD: caching page only");
    ms[2] = 0x1c;
    t = run(0, ms, 6, 0, 255);
    ok(sense_is(t, SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB),
       "unknown mode page refused");
    ms[2] = 0xc8;
    t = run(0, ms, 6, 0, 255);
    ok(sense_is(t, SENSE_ILLEGAL_REQUEST, ASC_SAVING_PARAMS_UNSUP),
       "saved values refused");

    uint8_t rl[12] = { SCSI_REPORT_LUNS };
    put32(rl + 6, 1024);
    t = run(5, rl, 12, 0, 1024);
    ok(good(t) && be32(inbuf) == 16 && inbuf[9] == 0 && inbuf[17] == 1,
       "REPORT LUNS from any LUN");
    put32(rl + 6, 8);
    t = run(0, rl, 12, 0, 1024);
    ok(sense_is(t, SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB),
       "REPORT LUNS allocation length under 16 refused");

    uint8_t tur[6] = { SCSI_TEST_UNIT_READY };
    ok(good(run(0, tur, 6, 0, 0)), "TEST UNIT READY");
    t = run(9, tur, 6, 0, 0);
    ok(sense_is(t, SENSE_ILLEGAL_REQUEST, ASC_LUN_NOT_SUPPORTED),
       "absent LUN: LOGICAL UNIT NOT SUPPORTED");
    uint8_t rs[6] = { SCSI_REQUEST_SENSE, 0, 0, 0, 18 };
    t = run(0, rs, 6, 0, 18);
    ok(good(t) && t->data_in == 18 && inbuf[0] == 0x70 && inbuf[2] == 0,
       "REQUEST SENSE: no sense");
    rs[1] = 1;
    ok(sense_is(run(0, rs, 6, 0, 18), SENSE_ILLEGAL_REQUEST,
                ASC_INVALID_FIELD_IN_CDB), "descriptor sense refused");
}

static void test_io(void)
{
    uint8_t c[16];
    for (int i = 0; i < 8192; i++) {
        outbuf[i] = (uint8_t)(i * 7 + 3);
    }
    uint8_t w10[10] = { SCSI_WRITE_10, 0x08, 0, 0, 0, 100, 0, 0, 16, 0 };
    ok(good(run(0, w10, 10, 8192, 0)), "WRITE(10) with FUA");
    cdb16(c, SCSI_READ_16, 100, 16);
    memset(inbuf, 0, 8192);
    ScsiTask *t = run(0, c, 16, 0, 8192 + 512);
    ok(good(t) && t->data_in == 8192 && memcmp(inbuf, outbuf, 8192) == 0,
       "READ(16) returns it");
    uint8_t r6[6] = { SCSI_READ_6, 0, 0, 101, 1, 0 };
    t = run(0, r6, 6, 0, 512);
    ok(good(t) && memcmp(inbuf, outbuf + 512, 512) == 0, "READ(6)");
    uint8_t r12[12] = { SCSI_READ_12, 0, 0, 0, 0, 102, 0, 0, 0, 2 };
    t = run(0, r12, 12, 0, 1024);
    ok(good(t) && memcmp(inbuf, outbuf + 1024, 1024) == 0, "READ(12)");

    cdb16(c, SCSI_READ_16, 4 * MiB / 512 - 1, 2);
    ok(sense_is(run(0, c, 16, 0, 1024), SENSE_ILLEGAL_REQUEST,
                ASC_LBA_OUT_OF_RANGE), "read past the end refused");
    cdb16(c, SCSI_READ_16, UINT64_MAX, 1);
    ok(sense_is(run(0, c, 16, 0, 1024), SENSE_ILLEGAL_REQUEST,
                ASC_LBA_OUT_OF_RANGE), "LBA 2^64-1 refused");
    cdb16(c, SCSI_READ_16, 0, 0x100000);
    ok(sense_is(run(0, c, 16, 0, 1024), SENSE_ILLEGAL_REQUEST,
                ASC_INVALID_FIELD_IN_CDB), "transfer past the limit refused");
    cdb16(c, SCSI_READ_16, 0, 4);
    t = run(0, c, 16, 0, 1024);
    ok(t->overrun && t->status == SCSI_STATUS_GOOD && t->data_in == 0,
       "buffer shorter than the transfer: overrun, no I/O");
    cdb16(c, SCSI_WRITE_16, 0, 1);
    ok(sense_is(run(1, c, 16, 512, 0), SENSE_DATA_PROTECT,
                ASC_WRITE_PROTECTED), "write to a read-only LUN refused");
    cdb16(c, SCSI_WRITE_16, 0, 0);
    ok(good(run(0, c, 16, 0, 0)), "zero-length write is fine");

    /* WRITE SAME with a pattern over more than one 1 MiB chunk. */
    memset(outbuf, 0xc5, 512);
    cdb16(c, SCSI_WRITE_SAME_16, 1024, 5000);
    ok(good(run(0, c, 16, 512, 0)), "WRITE SAME(16) of 2.4 MiB");
    cdb16(c, SCSI_READ_16, 1024 + 4990, 10);
    t = run(0, c, 16, 0, 5120);
    bool all = good(t);
    for (int i = 0; i < 5120; i++) {
        all = all && inbuf[i] == 0xc5;
    }
    ok(all, "pattern reaches the last block");
    memset(outbuf, 0, 512);
    uint8_t ws10[10] = { SCSI_WRITE_SAME_10, 0x08, 0, 0, 0x04, 0, 0, 0x10,
                         0, 0 };
    ok(good(run(0, ws10, 10, 512, 0)), "WRITE SAME(10) zeroes with UNMAP");
    cdb16(c, SCSI_READ_16, 1024, 4096);
    t = run(0, c, 16, 0, 2 * MiB);
    all = good(t);
    for (int i = 0; i < 2 * MiB; i++) {
        all = all && inbuf[i] == 0;
    }
    ok(all, "reads back zeroes");
    cdb16(c, SCSI_WRITE_SAME_16, 0, 0);
    ok(sense_is(run(0, c, 16, 512, 0), SENSE_ILLEGAL_REQUEST,
                ASC_INVALID_FIELD_IN_CDB), "WRITE SAME of 0 blocks refused");
    cdb16(c, SCSI_WRITE_SAME_16, 0, 4);
    c[1] = 0x01;   /* NDOB */
    ok(good(run(0, c, 16, 0, 0)), "WRITE SAME(16) without data-out");
    cdb16(c, SCSI_WRITE_SAME_16, 0, 4);
    ok(run(0, c, 16, 100, 0)->overrun, "WRITE SAME with a short buffer");

    /* UNMAP two ranges, then GET LBA STATUS sees them deallocated. */
    memset(outbuf, 0xaa, 64 * 1024);
    cdb16(c, SCSI_WRITE_16, 2048, 128);
    ok(good(run(0, c, 16, 64 * 1024, 0)), "64k written at LBA 2048");
    uint8_t um[10] = { SCSI_UNMAP, 0, 0, 0, 0, 0, 0, 0, 40, 0 };
    memset(outbuf, 0, 40);
    outbuf[1] = 38;
    outbuf[3] = 32;
    put64(outbuf + 8, 2048);
    put32(outbuf + 16, 64);
    put64(outbuf + 24, 2112);
    put32(outbuf + 32, 64);
    ok(good(run(0, um, 10, 40, 0)), "UNMAP of two descriptors");
    cdb16(c, SCSI_READ_16, 2048, 128);
    t = run(0, c, 16, 0, 64 * 1024);
    all = good(t);
    for (int i = 0; i < 64 * 1024; i++) {
        all = all && inbuf[i] == 0;
    }
    ok(all, "unmapped blocks read zero");
    uint8_t gls[16] = { SCSI_SERVICE_ACTION_IN_16, 0x12 };
    put64(gls + 2, 2048);
    put32(gls + 10, 1024);
    t = run(0, gls, 16, 0, 1024);
    ok(good(t) && be64(inbuf + 8) == 2048 && be32(inbuf + 16) >= 128 &&
       (inbuf[20] & 0xf) == 1, "GET LBA STATUS: deallocated");
    put64(gls + 2, 100);
    t = run(0, gls, 16, 0, 1024);
    ok(good(t) && be64(inbuf + 8) == 100 && (inbuf[20] & 0xf) == 0,
       "GET LBA STATUS: mapped");
    put64(gls + 2, 4 * MiB);
    ok(sense_is(run(0, gls, 16, 0, 1024), SENSE_ILLEGAL_REQUEST,
                ASC_LBA_OUT_OF_RANGE), "GET LBA STATUS past the end");

    outbuf[3] = 20;
    ok(sense_is(run(0, um, 10, 40, 0), SENSE_ILLEGAL_REQUEST,
                ASC_INVALID_FIELD_IN_PARAM),
       "UNMAP descriptor length not 16*n refused");
    outbuf[3] = 16;
    put64(outbuf + 8, 4 * MiB / 512 - 1);
    put32(outbuf + 16, 2);
    ok(sense_is(run(0, um, 10, 40, 0), SENSE_ILLEGAL_REQUEST,
                ASC_LBA_OUT_OF_RANGE), "UNMAP past the end refused");
    um[8] = 4;
    ok(sense_is(run(0, um, 10, 40, 0), SENSE_ILLEGAL_REQUEST,
                ASC_PARAMETER_LIST_LENGTH), "UNMAP list under 8 bytes");
    um[8] = 40;
    ok(sense_is(run(1, um, 10, 40, 0), SENSE_DATA_PROTECT,
                ASC_WRITE_PROTECTED), "UNMAP on a read-only LUN");

    uint8_t sc[10] = { SCSI_SYNC_CACHE_10 };
    ok(good(run(0, sc, 10, 0, 0)), "SYNCHRONIZE CACHE(10)");
}

static void test_resize(const char *path)
{
    ScsiLun *l = scsi_target_get(&target, 0);
    Error err = { 0 };
    ok(block_truncate(scsi_lun_node(l), 8 * MiB, false, PREALLOC_OFF,
                      &err) == 0, "image grown to 8 MiB");
    scsi_lun_resized(l);
    scsi_lun_unref(l);
    uint8_t tur[6] = { SCSI_TEST_UNIT_READY };
    ok(sense_is(run(0, tur, 6, 0, 0), SENSE_UNIT_ATTENTION,
                ASC_CAPACITY_DATA_CHANGED), "unit attention after resize");
    ok(good(run(0, tur, 6, 0, 0)), "reported once");
    uint8_t rc10[10] = { SCSI_READ_CAPACITY_10 };
    ScsiTask *t = run(0, rc10, 10, 0, 8);
    ok(good(t) && be32(inbuf) == 8 * MiB / 512 - 1, "new capacity");
}

int main(void)
{
    char raw[] = "/tmp/test-scsi-XXXXXX";
    int fd = mkstemp(raw);
    if (fd < 0 || ftruncate(fd, 4 * MiB) < 0) {
        printf("Bail out! cannot create %s\n", raw);
        return 1;
    }
    close(fd);
    char q[64];
    snprintf(q, sizeof(q), "%s.qcow2", raw);
    Error err = { 0 };
    if (block_create("qcow2", q, 4 * MiB, true, &(KVList){ 0 }, 0,
                     &err) < 0) {
        printf("Bail out! %s\n", err.msg);
        return 1;
    }
    BlockNode *n0 = block_open(raw, "raw", NULL, BLOCK_O_RDWR, &err);
    BlockNode *n1 = block_open(q, NULL, NULL, 0, &err);
    scsi_target_init(&target);
    ScsiLun *l0, *l1;
    ScsiLunConf c0 = { .node = n0, .writable = true, .serial = "lun0" };
    ScsiLunConf c1 = { .node = n1, .writable = false, .serial = "lun1" };
    ok(n0 && n1 && scsi_lun_new(&c0, &l0, &err) == 0 &&
       scsi_lun_new(&c1, &l1, &err) == 0, "two LUNs");
    ScsiLun *bad;
    ok(scsi_lun_new(&(ScsiLunConf){ .node = n1, .writable = true }, &bad,
                    &err) == -EROFS, "a writable LUN over a read-only node");
    ok(scsi_target_attach(&target, 0, l0) == 0 &&
       scsi_target_attach(&target, 1, l1) == 0, "attached");
    ok(scsi_target_attach(&target, 1, l1) == -EEXIST, "LUN 1 is taken");
    ok(scsi_target_attach(&target, SCSI_MAX_LUNS, l1) == -ERANGE,
       "LUN out of range");
    block_close(n0);
    block_close(n1);

    test_parse();
    test_info();
    test_io();
    test_resize(raw);

    scsi_lun_unref(scsi_target_detach(&target, 1));
    uint8_t tur[6] = { SCSI_TEST_UNIT_READY };
    ok(sense_is(run(1, tur, 6, 0, 0), SENSE_ILLEGAL_REQUEST,
                ASC_LUN_NOT_SUPPORTED), "a detached LUN is gone");
    scsi_target_destroy(&target);
    unlink(raw);
    unlink(q);
    printf("1..%d\n", n_test);
    return failed ? 1 : 0;
}
