/*
 * check-relocate.c - repairs (check -r all) that give a table new
 * clusters at the end of the image file because the table lies wholly
 * past that end: the active L1 table, and the tables of persistent
 * bitmaps.  Past the end of the file every read returns zeroes, so the
 * image already behaves as if those tables were there and empty; the
 * repair makes that explicit without changing what anybody reads:
 *  - the L1 table becomes an empty table (it mapped nothing);
 *  - a bitmap's table becomes one whose entries say "all ones": a dirty
 *    bitmap may only over-approximate, so the next incremental backup
 *    from it copies everything rather than trusting a bitmap that lost
 *    its bits (qemu-img, reading the zeroes, keeps it as empty).
 *
 * Crash safety: the new tables (and the new bitmap directory naming
 * them) are written and flushed before the one header write that
 * switches to them; a crash in between leaves the image as it was, plus
 * clusters past the old end that nothing references.
 *
 * Both run before any reference is counted: the file grows here, and the
 * counts start from its new length.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/bitmap-int.h"
#include "formats/qcow2/check-int.h"

/* Bounds on what a repair writes, whatever the header claims. */
#define MAX_DIR_BYTES   (64u * 1024 * 1024)
#define MAX_TABLE_BYTES (64u * 1024 * 1024)

/* Writes len bytes of buf to fresh clusters at the end of the file (the
 * rest of the last cluster zeroed) and flushes; *at gets their offset. */
static int append(Check *c, const void *buf, uint64_t len, uint64_t *at)
{
    uint64_t off = qcow2_align_up(c->file_len, c->cs);
    uint64_t bytes = qcow2_align_up(len, c->cs);
    uint8_t *b = calloc(1, bytes);

    if (!b) {
        return -ENOMEM;
    }
    memcpy(b, buf, len);
    int ret = block_pwrite(block_file(c->n), off, bytes, b, 0);
    free(b);
    if (ret >= 0) {
        ret = block_flush(block_file(c->n));
    }
    if (ret < 0) {
        return ret;
    }
    c->file_len = off + bytes;
    c->nb_clusters = c->file_len / c->cs;
    *at = off;
    return 0;
}

static int relocate_l1(Check *c)
{
    Qcow2State *s = c->s;
    uint64_t bytes = (uint64_t)s->l1_size * 8;
    uint64_t old = s->l1_table_offset;

    if (!s->l1_size || old % c->cs || old < c->file_len ||
        bytes > QCOW2_MAX_L1_BYTES) {
        return 0;
    }
    uint8_t *zero = calloc(1, bytes);
    if (!zero) {
        return -ENOMEM;
    }
    uint64_t at;
    int ret = append(c, zero, bytes, &at);
    free(zero);
    if (ret < 0) {
        return ret;
    }
    Error err = { 0 };
    s->l1_table_offset = at;
    ret = qcow2_write_header(s, &err);
    if (ret < 0) {
        s->l1_table_offset = old;
        return ret;
    }
    /* what was read past the end: zeroes, now on disk too */
    memset(s->l1_table, 0, bytes);
    check_say(c, "Repairing l1_offset=%" PRIx64 ": L1 table is past the end "
              "of the file; an empty table replaces it", old);
    c->res->corruptions_fixed++;
    return 0;
}

/* An all-ones table of n entries at the end of the file. */
static int all_ones_table(Check *c, uint32_t n, uint64_t *at)
{
    uint8_t *t = malloc((size_t)n * 8);

    if (!t) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        qcow2_put_be64(t + 8 * (size_t)i, 1);   /* "every bit set" */
    }
    int ret = append(c, t, (uint64_t)n * 8, at);
    free(t);
    return ret;
}

static int relocate_bitmap_tables(Check *c)
{
    Qcow2State *s = c->s;
    const Qcow2Extension *x = qcow2_find_ext(s, QCOW2_EXT_BITMAPS);

    if (!x || x->len < 24 || s->version < 3 ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    uint32_t nb = qcow2_be32(x->data);
    uint64_t dir_size = qcow2_be64(x->data + 8);
    uint64_t dir_off = qcow2_be64(x->data + 16);
    if (!nb || !dir_size || dir_size > MAX_DIR_BYTES || dir_off % c->cs ||
        dir_off >= c->file_len || dir_size > c->file_len - dir_off) {
        return 0;   /* the directory itself is the damage: reported */
    }
    uint8_t *dir = malloc(dir_size);
    if (!dir) {
        return -ENOMEM;
    }
    int ret = check_read_file(c, dir_off, dir_size, dir);
    /* Only a directory that is sound but for tables past the end (read
     * as zeroes, as check's open reads them) is repaired here. */
    Qcow2BitmapGeometry g = {
        .cluster_bits = s->cluster_bits,
        .file_size = QCOW2_READ_LIMIT,
        .virtual_size = s->size,
    };
    Qcow2BitmapEntry *v = NULL;
    Error perr = { 0 };
    if (ret < 0 || qcow2_bitmaps_parse(dir, dir_size, nb, &g, &v, &perr) < 0) {
        free(dir);
        return ret < 0 ? ret : 0;
    }
    /* the end before this repair appends anything */
    uint64_t end = c->file_len;
    bool *moved = calloc(nb, sizeof(*moved));
    int n_moved = 0;
    uint64_t pos = 0;
    ret = moved ? 0 : -ENOMEM;
    for (uint32_t i = 0; i < nb && ret >= 0; i++) {
        uint8_t *e = dir + pos;
        uint64_t len = QCOW2_BITMAP_ENTRY_FIXED + qcow2_be32(e + 20) +
                       qcow2_be16(e + 18);
        pos += qcow2_align_up(len, 8);
        if (!v[i].table_size || v[i].table_offset < end ||
            (uint64_t)v[i].table_size * 8 > MAX_TABLE_BYTES) {
            continue;
        }
        uint64_t at;
        ret = all_ones_table(c, v[i].table_size, &at);
        if (ret >= 0) {
            qcow2_put_be64(e, at);
            moved[i] = true;
            n_moved++;
        }
    }
    uint64_t new_dir = 0;
    if (ret >= 0 && n_moved) {
        ret = append(c, dir, dir_size, &new_dir);
    }
    if (ret >= 0 && n_moved) {
        ret = qcow2_bitmaps_set_ext(s, nb, dir_size, new_dir);
        Error err = { 0 };
        if (ret >= 0) {
            ret = qcow2_write_header(s, &err);
            if (ret < 0) {
                qcow2_bitmaps_set_ext(s, nb, dir_size, dir_off);
            }
        }
    }
    for (uint32_t i = 0; ret >= 0 && i < nb; i++) {
        if (moved[i]) {
            check_say(c, "Repairing bitmap '%s': its table is past the end "
                      "of the file; a table with every bit set replaces it",
                      v[i].name);
            c->res->corruptions_fixed++;
        }
    }
    free(moved);
    qcow2_bitmap_entries_free(v, nb);
    free(dir);
    return ret < 0 ? ret : 0;
}

int check_relocate_past_end(Check *c)
{
    if (!(c->fix & BLOCK_FIX_ERRORS)) {
        return 0;
    }
    int ret = relocate_l1(c);
    if (ret >= 0) {
        ret = relocate_bitmap_tables(c);
    }
    return ret < 0 ? ret : 0;
}
