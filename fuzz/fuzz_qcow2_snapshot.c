/*
 * fuzz_qcow2_snapshot.c - libFuzzer harness for the qcow2 snapshot table.
 * The input is spliced into fuzz/templates/snapshot.qcow2 (a 512-byte
 * cluster image with two qemu-img snapshots) as its snapshot table, with
 * nb_snapshots and snapshots_offset from the input (fuzz_splice.h).
 *
 * Then everything a user can do with the table: check without repair;
 * list; load each snapshot as `convert -l` does and read it; open for
 * writing, write over shared clusters, create, apply and delete
 * snapshots; repair with `check -r all`; check and read again.  A refused
 * image is fine, a crash, leak or sanitizer report is a bug.
 */
#include <unistd.h>

#include "fuzz/fuzz_splice.h"

#define MAX_LOADS 3

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FuzzTemplate tpl;

static void load_and_read(const char *path, const char *param)
{
    BlockNode *n = fuzz_open(path, 0);
    if (!n) {
        return;
    }
    Error err = { 0 };
    if (block_snapshot_load_tmp(n, param, &err) == 0) {
        fuzz_splice_read(n);
    }
    block_close(n);
}

static void list_and_load(const char *path)
{
    BlockNode *n = fuzz_open(path, 0);
    if (!n) {
        return;
    }
    fuzz_describe(n);
    BlockSnapshotInfo *v = NULL;
    int count = 0;
    int ret = block_snapshot_list(n, &v, &count);
    block_close(n);
    if (ret < 0) {
        return;
    }
    for (int i = 0; i < count && i < MAX_LOADS; i++) {
        char param[2200];
        load_and_read(path, v[i].id);
        snprintf(param, sizeof(param), "snapshot.id=%s,snapshot.name=%s",
                 v[i].id, v[i].name);
        load_and_read(path, param);
    }
    block_snapshot_list_free(v, count);
}

/* Applying a snapshot makes its L1 table, grown to its disk size, the
 * active one: with 512-byte clusters 16 MiB of L1 for 64 GiB, walked
 * and written several times, which under ASan takes longer than
 * libFuzzer's timeout without being a bug.  Whether the first entry
 * (which list returns first) is small enough to apply. */
static bool first_entry_small(const uint8_t *img, size_t len, uint64_t at)
{
    if (at >= len || len - at < 56) {
        return true;
    }
    const uint8_t *e = img + at;
    if (fuzz_be(e + 8, 4) > 65536) {
        return false;
    }
    return fuzz_be(e + 36, 4) < 16 || fuzz_be(e + 48, 8) <= (1ull << 30);
}

/* L1 tables of up to 4M entries are valid, and one is read, walked and
 * checked several times per input: at a few executions a second the
 * fuzzer learns nothing.  Sizes between 64k entries and the limit are
 * cut to 64k (the limit itself stays reachable past it). */
static void clamp_l1_sizes(uint8_t *img, size_t len, uint64_t at,
                           uint32_t count)
{
    for (uint32_t i = 0; i < count && i < 64; i++) {
        if (at >= len || len - at < 40) {
            return;
        }
        uint8_t *e = img + at;
        uint64_t l1 = fuzz_be(e + 8, 4);
        if (l1 > 65536 && l1 <= (32u << 20) / 8) {
            fuzz_put_be(e + 8, 4, 65536);
        }
        at += (40 + fuzz_be(e + 36, 4) + fuzz_be(e + 12, 2) +
               fuzz_be(e + 14, 2) + 7) & ~7ull;
    }
}

/* *may_apply: whether first_entry_small said the first snapshot may be
 * applied. */
static void modify(const char *path, const void *may_apply)
{
    BlockNode *n = fuzz_open(path, BLOCK_O_RDWR);
    if (!n) {
        return;
    }
    Error err = { 0 };
    static uint8_t buf[8192];
    memset(buf, 0x5a, sizeof(buf));
    BlockSnapshotInfo *v = NULL;
    int count = 0;
    if (block_snapshot_list(n, &v, &count) < 0) {
        count = 0;
    }
    /* Clusters the snapshots share: copy on write. */
    block_pwrite(n, 0, sizeof(buf), buf, 0);
    block_snapshot_create(n, "fuzz", &err);
    if (count > 0) {
        error_clear(&err);
        if (*(const bool *)may_apply) {
            block_snapshot_apply(n, v[0].id, &err);
        }
        block_pwrite(n, 1024, 3000, buf, 0);
        error_clear(&err);
        block_snapshot_delete(n, v[count - 1].name, &err);
    }
    error_clear(&err);
    block_snapshot_delete(n, "fuzz", &err);
    block_snapshot_list_free(v, count);
    block_close(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const FuzzTemplate *t = fuzz_template("snapshot.qcow2", &tpl);
    FuzzSplice sp;
    uint8_t *img;
    size_t len = fuzz_splice_image(data, size, t, fuzz_be(t->data + 64, 8),
                                   &sp, &img);
    if (!img) {
        return 0;
    }
    fuzz_put_be(img + 60, 4, sp.count);
    fuzz_put_be(img + 64, 8, sp.offset);
    clamp_l1_sizes(img, len, sp.offset, sp.count);
    bool may_apply = first_entry_small(img, len, sp.offset);
    fuzz_splice_exercise(img, len, list_and_load, modify, &may_apply);
    return 0;
}
