/*
 * check-counts.c - the references check counts per host cluster.
 *
 * Memory: the counts live in one array indexed by host cluster, in chunks
 * allocated when first touched, sized by the clusters actually referenced
 * and never beyond the image file's length (check_count_region refuses
 * regions past it), so a hostile header cannot make us allocate more than
 * the file could describe.
 *
 * A count saturates at the refcount width's maximum (or COUNT_MAX): the
 * cluster is reported as overflowed and remembered, so a rebuild does not
 * take references off a cluster whose true count is unknown.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/check-int.h"

#define CHUNK_BITS 12
#define CHUNK_SIZE (1u << CHUNK_BITS)

int check_grow_refs(Check *c, uint64_t need)
{
    uint64_t n = (need + CHUNK_SIZE - 1) >> CHUNK_BITS;
    uint32_t **p;

    if (n > c->nchunks) {
        if (n > SIZE_MAX / sizeof(*p)) {
            return -ENOMEM;
        }
        p = realloc(c->chunks, n * sizeof(*p));
        if (!p) {
            return -ENOMEM;
        }
        memset(p + c->nchunks, 0, (n - c->nchunks) * sizeof(*p));
        c->chunks = p;
        c->nchunks = n;
    }
    if (need > c->refs_len) {
        c->refs_len = need;
    }
    return 0;
}

uint64_t check_ref_at(const Check *c, uint64_t k)
{
    const uint32_t *ch;

    if (k >= c->refs_len) {
        return 0;
    }
    ch = c->chunks[k >> CHUNK_BITS];
    return ch ? ch[k & (CHUNK_SIZE - 1)] : 0;
}

/* The counter of cluster k (< refs_len), allocating its chunk; NULL when
 * out of memory. */
uint32_t *check_ref_slot(Check *c, uint64_t k)
{
    uint32_t **ch = &c->chunks[k >> CHUNK_BITS];

    if (!*ch) {
        *ch = calloc(CHUNK_SIZE, sizeof(uint32_t));
        if (!*ch) {
            return NULL;
        }
    }
    return &(*ch)[k & (CHUNK_SIZE - 1)];
}

void check_ref_set(Check *c, uint64_t k, uint32_t v)
{
    if (v || check_ref_at(c, k)) {
        uint32_t *p = check_ref_slot(c, k);
        if (p) {
            *p = v;
        }
    }
}

bool check_range_used(const Check *c, uint64_t lo, uint64_t hi)
{
    for (uint64_t k = lo; k < hi && k < c->refs_len; k++) {
        if (!c->chunks[k >> CHUNK_BITS]) {
            k |= CHUNK_SIZE - 1;   /* skip the untouched chunk */
            continue;
        }
        if (check_ref_at(c, k)) {
            return true;
        }
    }
    return false;
}

uint64_t check_used_end(const Check *c)
{
    uint64_t k = c->refs_len;

    while (k > 0) {
        if (!c->chunks[(k - 1) >> CHUNK_BITS]) {
            k = ((k - 1) >> CHUNK_BITS) << CHUNK_BITS;
            continue;
        }
        if (check_ref_at(c, k - 1)) {
            break;
        }
        k--;
    }
    return k;
}

#define OVERFLOW_MAX 4096

static void note_overflow(Check *c, uint64_t k)
{
    if (c->n_overflowed == OVERFLOW_MAX) {
        c->overflow_many = true;
        return;
    }
    if (!c->overflowed) {
        c->overflowed = malloc(OVERFLOW_MAX * sizeof(*c->overflowed));
        if (!c->overflowed) {
            c->overflow_many = true;
            return;
        }
    }
    c->overflowed[c->n_overflowed++] = k;
}

bool check_saturated(const Check *c, uint64_t k)
{
    if (c->overflow_many) {
        return true;
    }
    for (size_t i = 0; i < c->n_overflowed; i++) {
        if (c->overflowed[i] == k) {
            return true;
        }
    }
    return false;
}

/* Counts one reference to every cluster of [off, off + size).  A region
 * reaching a cluster or more past the end of the file cannot be counted
 * (there is no refcount to compare with): that is a corruption.  Returns
 * 1 when counted, 0 when not, negative on allocation failure. */
int check_count_region(Check *c, uint64_t off, uint64_t size)
{
    uint64_t first, last;
    uint64_t max = c->s->refcount_max < COUNT_MAX ? c->s->refcount_max
                                                   : COUNT_MAX;
    int ret;

    if (size == 0) {
        return 1;
    }
    if (off > UINT64_MAX - size ||
        off + size >= c->file_len + c->cs) {
        check_say(c, "ERROR: counting reference for region exceeding the "
                  "end of the file by one cluster or more: offset 0x%"
                  PRIx64
                  " size 0x%" PRIx64, off, size);
        c->res->corruptions++;
        return 0;
    }
    first = off / c->cs;
    last = (off + size - 1) / c->cs;
    ret = check_grow_refs(c, last + 1);
    if (ret < 0) {
        return ret;
    }
    if (last + 1 > c->ref_end) {
        c->ref_end = last + 1;
    }
    for (uint64_t k = first; k <= last; k++) {
        uint32_t *slot = check_ref_slot(c, k);

        if (!slot) {
            return -ENOMEM;
        }
        if (*slot >= max) {
            check_say(c, "ERROR: overflow cluster offset=0x%" PRIx64,
                      k * c->cs);
            c->res->corruptions++;
            note_overflow(c, k);
            continue;
        }
        (*slot)++;
    }
    return 1;
}
