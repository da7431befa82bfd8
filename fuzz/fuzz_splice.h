/*
 * fuzz_splice.h - builds the image a table harness opens: a fixed, valid
 * qemu-img-made template (fuzz/templates/) with the fuzz input spliced in
 * as one of its tables and the header fields that locate it; and runs the
 * sequence every table harness puts it through (fuzz_splice_exercise).
 *
 * Mutating whole images spends most executions on data clusters; keeping
 * everything but one table valid puts every mutation where the parser of
 * that table must cope with it.  The input is a 24-byte control block
 * followed by the table bytes (fuzz/make_corpus.py writes seeds in this
 * form from the templates' own tables):
 *
 *   byte 0     flags (FUZZ_SPLICE_*)
 *   bytes 1-3  ignored
 *   bytes 4-7  count: nb_snapshots / nb_bitmaps (big endian)
 *   bytes 8-15 offset of the table when FUZZ_SPLICE_RAW_OFFSET
 *   16-23      size: bitmap_directory_size when FUZZ_SPLICE_RAW_SIZE
 *   24-        the table
 *
 * Without FUZZ_SPLICE_RAW_OFFSET the table goes where the template had
 * its own (or, with FUZZ_SPLICE_AT_END, at the next cluster past the end),
 * so the L1 and bitmap table offsets inside the seeds stay meaningful.
 * The template keeps its own table bytes under the spliced ones.
 */
#ifndef IMGTOOL_FUZZ_SPLICE_H
#define IMGTOOL_FUZZ_SPLICE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz/fuzz_common.h"

#ifndef FUZZ_TEMPLATE_DIR
#define FUZZ_TEMPLATE_DIR "fuzz/templates"
#endif

enum {
    FUZZ_SPLICE_RAW_OFFSET = 1 << 0,
    FUZZ_SPLICE_AT_END     = 1 << 1,
    FUZZ_SPLICE_RAW_SIZE   = 1 << 2,
    FUZZ_SPLICE_NO_AUTOCLEAR = 1 << 3,  /* clear the bitmaps autoclear bit */
};

#define FUZZ_SPLICE_CONTROL 24
/* Tables are never written past this offset: a raw offset beyond it is
 * only stored in the header (the file stays small). */
#define FUZZ_SPLICE_MAX_FILE (1u << 20)
/* Each harness reads the disk several times (every snapshot, before and
 * after repair): smaller read budgets than fuzz_read_all keeps, or one
 * snapshot claiming a huge disk makes every execution a timeout. */
#define FUZZ_SPLICE_STATUS_CAP 2048
#define FUZZ_SPLICE_READ_CAP (4u << 20)

typedef struct FuzzTemplate {
    uint8_t *data;
    size_t len;
    uint32_t cluster_size;
} FuzzTemplate;

static inline uint64_t fuzz_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

static inline void fuzz_put_be(uint8_t *p, int n, uint64_t v)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* Loads $IMGTOOL_FUZZ_TEMPLATES/name (else FUZZ_TEMPLATE_DIR/name) once;
 * aborts when it is missing: the harness would fuzz nothing. */
static inline const FuzzTemplate *fuzz_template(const char *name,
                                                FuzzTemplate *t)
{
    if (t->data) {
        return t;
    }
    const char *dir = getenv("IMGTOOL_FUZZ_TEMPLATES");
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir ? dir : FUZZ_TEMPLATE_DIR,
             name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: cannot open template %s\n", path);
        abort();
    }
    t->data = malloc(FUZZ_SPLICE_MAX_FILE);
    t->len = fread(t->data, 1, FUZZ_SPLICE_MAX_FILE, f);
    fclose(f);
    if (t->len < 512 || memcmp(t->data, "QFI\xfb", 4) != 0) {
        fprintf(stderr, "fuzz: %s is not a qcow2 image\n", path);
        abort();
    }
    t->cluster_size = 1u << fuzz_be(t->data + 20, 4);
    return t;
}

typedef struct FuzzSplice {
    uint8_t flags;
    uint32_t count;
    uint64_t offset;      /* where the header says the table is */
    uint64_t size;        /* the table's length (or the raw size) */
    const uint8_t *table;
    size_t table_len;
} FuzzSplice;

/* Splits the input; false when it is too short to mean anything. */
static inline bool fuzz_splice_parse(const uint8_t *data, size_t size,
                                     FuzzSplice *sp)
{
    if (size < FUZZ_SPLICE_CONTROL) {
        return false;
    }
    sp->flags = data[0];
    sp->count = (uint32_t)fuzz_be(data + 4, 4);
    sp->offset = fuzz_be(data + 8, 8);
    sp->size = fuzz_be(data + 16, 8);
    sp->table = data + FUZZ_SPLICE_CONTROL;
    sp->table_len = size - FUZZ_SPLICE_CONTROL;
    if (!(sp->flags & FUZZ_SPLICE_RAW_SIZE)) {
        sp->size = sp->table_len;
    }
    return true;
}

/* Copies the template into *out (malloc'd) with sp->table written at
 * the placement sp asks for, template_off being where the template has
 * its own table; sets sp->offset to what the header must say.  Returns
 * the image length. */
static inline size_t fuzz_splice_build(const FuzzTemplate *t,
                                       FuzzSplice *sp, uint64_t template_off,
                                       uint8_t **out)
{
    uint64_t at = template_off;
    if (sp->flags & FUZZ_SPLICE_RAW_OFFSET) {
        at = sp->offset;
    } else if (sp->flags & FUZZ_SPLICE_AT_END) {
        at = (t->len + t->cluster_size - 1) / t->cluster_size *
             t->cluster_size;
    }
    sp->offset = at;
    size_t len = t->len;
    bool write = at < FUZZ_SPLICE_MAX_FILE &&
                 sp->table_len <= FUZZ_SPLICE_MAX_FILE - at;
    if (write && at + sp->table_len > len) {
        len = (size_t)(at + sp->table_len);
    }
    uint8_t *img = calloc(1, len);
    if (!img) {
        *out = NULL;
        return 0;
    }
    memcpy(img, t->data, t->len);
    if (write) {
        memcpy(img + at, sp->table, sp->table_len);
    }
    *out = img;
    return len;
}

/* Parses the input and builds the image from it (both above); 0, with
 * *out NULL, when the input is too short to mean anything or memory ran
 * out. */
static inline size_t fuzz_splice_image(const uint8_t *data, size_t size,
                                       const FuzzTemplate *t,
                                       uint64_t template_off, FuzzSplice *sp,
                                       uint8_t **out)
{
    *out = NULL;
    if (!fuzz_splice_parse(data, size, sp)) {
        return 0;
    }
    return fuzz_splice_build(t, sp, template_off, out);
}

/* What a table harness does with the image it built (img, malloc'd, is
 * freed): check without repair, inspect, modify, `check -r all`, inspect
 * again.  inspect and modify open the image themselves, as the commands
 * they stand for do; arg is modify's. */
static inline void fuzz_splice_exercise(uint8_t *img, size_t len,
                                        void (*inspect)(const char *path),
                                        void (*modify)(const char *path,
                                                       const void *arg),
                                        const void *arg)
{
    char path[64];
    int fd = fuzz_memfd(img, len, path, sizeof(path));
    free(img);
    if (fd < 0) {
        return;
    }
    fuzz_open_and_check(path, 0);
    inspect(path);
    modify(path, arg);
    fuzz_open_and_check(path, FUZZ_REPAIR);
    inspect(path);
    close(fd);
}

/* Describes n and reads it within the table harnesses' budget. */
static inline void fuzz_splice_read(BlockNode *n)
{
    fuzz_describe(n);
    fuzz_read_capped(n, FUZZ_SPLICE_STATUS_CAP, FUZZ_SPLICE_READ_CAP);
}

/* Offset of the data of header extension `type` in a v3 image, or 0. */
static inline size_t fuzz_find_extension(const uint8_t *img, size_t len,
                                         uint32_t type)
{
    if (fuzz_be(img + 4, 4) < 3 || len < 104) {
        return 0;
    }
    size_t off = (size_t)fuzz_be(img + 100, 4);
    while (off + 8 <= len) {
        uint32_t ty = (uint32_t)fuzz_be(img + off, 4);
        uint32_t l = (uint32_t)fuzz_be(img + off + 4, 4);
        if (ty == 0) {
            return 0;
        }
        if (ty == type) {
            return off + 8 + l <= len ? off + 8 : 0;
        }
        off += 8 + ((l + 7u) & ~7u);
    }
    return 0;
}

#endif
