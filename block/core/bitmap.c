/*
 * bitmap.c - in-memory dirty bitmaps (see bitmap.h).
 *
 * Bits live in 64-bit words, bit i in word i / 64 at position i % 64.
 * Writers OR bits in with atomics under the set's read lock, so many
 * request threads mark at once; reshaping operations take the write lock
 * and therefore wait for marks in flight.  The error texts of the
 * operations are qemu-img 7.2's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/driver.h"

BlockBitmaps *block_bitmaps_new(const BlockBitmapsFormat *fmt)
{
    BlockBitmaps *set = calloc(1, sizeof(*set));
    if (!set) {
        return NULL;
    }
    pthread_rwlock_init(&set->lock, NULL);
    set->fmt = fmt;
    return set;
}

static void bitmap_free(BlockBitmap *bm)
{
    if (bm) {
        free(bm->name);
        free(bm->words);
        free(bm);
    }
}

void block_bitmaps_free(BlockBitmaps *set)
{
    if (!set) {
        return;
    }
    for (int i = 0; i < set->n; i++) {
        bitmap_free(set->v[i]);
    }
    free(set->v);
    pthread_rwlock_destroy(&set->lock);
    free(set);
}

static void count_enabled(BlockBitmaps *set)
{
    int k = 0;
    for (int i = 0; i < set->n; i++) {
        k += set->v[i]->enabled && !set->v[i]->inconsistent;
    }
    __atomic_store_n(&set->nb_enabled, k, __ATOMIC_RELEASE);
}

static uint64_t nb_words(uint64_t nb_bits)
{
    return (nb_bits + 63) / 64;
}

static uint64_t bits_for(uint64_t length, uint32_t gran_bits)
{
    uint64_t g = 1ull << gran_bits;
    return length / g + (length % g != 0);
}

/* ORs bits [a, b) in atomically. */
static void set_range(BlockBitmap *bm, uint64_t a, uint64_t b)
{
    if (b > bm->nb_bits) {
        b = bm->nb_bits;
    }
    while (a < b) {
        uint64_t w = a / 64, lo = a % 64;
        uint64_t hi = (b - w * 64) < 64 ? b - w * 64 : 64;
        uint64_t m = (hi == 64 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1);
        if ((__atomic_load_n(&bm->words[w], __ATOMIC_RELAXED) & m) != m) {
            __atomic_fetch_or(&bm->words[w], m, __ATOMIC_RELAXED);
        }
        a = w * 64 + hi;
    }
}

void block_bitmaps_mark(BlockNode *n, uint64_t off, uint64_t len)
{
    BlockBitmaps *set = n->bitmaps;

    if (!set || len == 0 ||
        __atomic_load_n(&set->nb_enabled, __ATOMIC_ACQUIRE) == 0) {
        return;
    }
    pthread_rwlock_rdlock(&set->lock);
    for (int i = 0; i < set->n; i++) {
        BlockBitmap *bm = set->v[i];
        if (!bm->enabled || bm->inconsistent) {
            continue;
        }
        uint64_t a = off >> bm->gran_bits;
        uint64_t b = ((off + len - 1) >> bm->gran_bits) + 1;
        set_range(bm, a, b);
        if (!__atomic_load_n(&bm->changed, __ATOMIC_RELAXED)) {
            __atomic_store_n(&bm->changed, true, __ATOMIC_RELAXED);
        }
    }
    pthread_rwlock_unlock(&set->lock);
}

int block_bitmaps_append(BlockBitmaps *set, const char *name,
                         uint32_t gran_bits, uint64_t length, bool enabled,
                         bool inconsistent, BlockBitmap **out, Error *err)
{
    if (gran_bits < BLOCK_BITMAP_MIN_GRAN_BITS ||
        gran_bits > BLOCK_BITMAP_MAX_GRAN_BITS) {
        return error_setf(err, EINVAL, "Granularity must be power of 2 and "
                          "at least 512");
    }
    uint64_t nb_bits = bits_for(length, gran_bits);
    if (!inconsistent && nb_bits / 8 > BLOCK_BITMAP_MAX_BYTES) {
        return error_setf(err, EFBIG, "bitmap '%s' would need %llu bytes "
                          "of memory (at most %llu)", name,
                          (unsigned long long)(nb_bits / 8),
                          (unsigned long long)BLOCK_BITMAP_MAX_BYTES);
    }
    BlockBitmap *bm = calloc(1, sizeof(*bm));
    BlockBitmap **v = set->v;
    /* Power-of-two capacity: a directory of 65535 loads in linear time. */
    if ((set->n & (set->n - 1)) == 0) {
        v = realloc(set->v, (set->n ? set->n * 2 : 1) * sizeof(*v));
        if (v) {
            set->v = v;
        }
    }
    if (!bm || !v || !(bm->name = strdup(name))) {
        free(bm);
        return error_setf(err, ENOMEM, "Out of memory");
    }
    if (!inconsistent) {
        bm->words = calloc(nb_words(nb_bits) ? nb_words(nb_bits) : 1, 8);
        if (!bm->words) {
            bitmap_free(bm);
            return error_setf(err, ENOMEM, "cannot allocate %llu bytes for "
                              "bitmap '%s'",
                              (unsigned long long)(nb_words(nb_bits) * 8),
                              name);
        }
    }
    bm->gran_bits = gran_bits;
    bm->enabled = enabled && !inconsistent;
    bm->inconsistent = inconsistent;
    bm->length = length;
    bm->nb_bits = nb_bits;
    set->v[set->n++] = bm;
    if (bm->enabled) {
        __atomic_add_fetch(&set->nb_enabled, 1, __ATOMIC_RELEASE);
    }
    if (out) {
        *out = bm;
    }
    return 0;
}

BlockBitmap *block_bitmaps_find(BlockBitmaps *set, const char *name)
{
    for (int i = 0; set && i < set->n; i++) {
        if (strcmp(set->v[i]->name, name) == 0) {
            return set->v[i];
        }
    }
    return NULL;
}

uint64_t block_bitmap_bytes(const BlockBitmap *bm)
{
    return (bm->nb_bits + 7) / 8;
}

/* Byte k of the serialisation: bits 8k..8k+7, least significant first,
 * which is byte k % 8 of word k / 8 read little-endian. */
static uint8_t get_byte(const BlockBitmap *bm, uint64_t k)
{
    uint64_t w = __atomic_load_n(&bm->words[k / 8], __ATOMIC_RELAXED);
    return (uint8_t)(w >> (8 * (k % 8)));
}

void block_bitmap_get_bytes(const BlockBitmap *bm, uint64_t first,
                            uint64_t len, uint8_t *buf)
{
    uint64_t total = block_bitmap_bytes(bm);
    for (uint64_t i = 0; i < len; i++) {
        buf[i] = first + i < total && bm->words ? get_byte(bm, first + i) : 0;
    }
    /* Bits past nb_bits are never set, so the last byte needs no mask. */
}

void block_bitmap_set_bytes(BlockBitmap *bm, uint64_t first, uint64_t len,
                            const uint8_t *buf)
{
    uint64_t total = block_bitmap_bytes(bm);
    if (!bm->words) {
        return;
    }
    for (uint64_t i = 0; i < len && first + i < total; i++) {
        uint64_t k = first + i;
        uint64_t v = buf[i];
        if (k == total - 1 && bm->nb_bits % 8) {
            v &= (1u << (bm->nb_bits % 8)) - 1;
        }
        uint64_t shift = 8 * (k % 8);
        bm->words[k / 8] = (bm->words[k / 8] & ~(0xffull << shift)) |
                           (v << shift);
    }
}

void block_bitmap_set_bits(BlockBitmap *bm, uint64_t first_bit,
                           uint64_t end_bit)
{
    if (bm->words) {
        set_range(bm, first_bit, end_bit);
    }
}

bool block_bitmap_get_bit(const BlockBitmap *bm, uint64_t bit)
{
    if (!bm->words || bit >= bm->nb_bits) {
        return false;
    }
    return (__atomic_load_n(&bm->words[bit / 64], __ATOMIC_RELAXED) >>
            (bit % 64)) & 1;
}

bool block_bitmap_bytes_zero(const BlockBitmap *bm, uint64_t first,
                             uint64_t len)
{
    uint64_t total = block_bitmap_bytes(bm);
    if (!bm->words) {
        return true;
    }
    if (first >= total) {
        return true;
    }
    if (len > total - first) {
        len = total - first;
    }
    uint64_t k = first;
    for (; k < first + len && k % 8; k++) {
        if (get_byte(bm, k)) {
            return false;
        }
    }
    for (; k + 8 <= first + len; k += 8) {
        if (__atomic_load_n(&bm->words[k / 8], __ATOMIC_RELAXED)) {
            return false;
        }
    }
    for (; k < first + len; k++) {
        if (get_byte(bm, k)) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Operations of `imgtool bitmap`                                      */

static int no_support(BlockNode *n, Error *err)
{
    return error_setf(err, ENOTSUP, "Can't store persistent bitmaps to %s: "
                      "Operation not supported", n->filename);
}

/* The bitmap `name` of n, usable for reading and changing. */
static int usable(BlockNode *n, const char *name, BlockBitmap **out,
                  Error *err)
{
    BlockBitmap *bm = block_bitmaps_find(n->bitmaps, name);
    if (!bm) {
        return error_setf(err, ENOENT, "Dirty bitmap '%s' not found", name);
    }
    if (bm->inconsistent) {
        return error_setf(err, EBUSY, "Bitmap '%s' is inconsistent and "
                          "cannot be used; try removing it", name);
    }
    *out = bm;
    return 0;
}

int block_bitmap_add(BlockNode *n, const char *name, uint64_t granularity,
                     bool enabled, Error *err)
{
    BlockBitmaps *set = n->bitmaps;
    uint32_t gbits = 0;
    int ret;

    if (!*name) {
        return error_setf(err, EINVAL, "Bitmap name cannot be empty");
    }
    if (!set) {
        return no_support(n, err);
    }
    if (granularity == 0) {
        granularity = set->fmt && set->fmt->default_granularity
                          ? set->fmt->default_granularity(n) : 65536;
    }
    if (granularity & (granularity - 1) || granularity < 512 ||
        granularity > (1ull << BLOCK_BITMAP_MAX_GRAN_BITS)) {
        return error_setf(err, EINVAL, "Granularity must be power of 2 and "
                          "at least 512");
    }
    while ((1ull << gbits) < granularity) {
        gbits++;
    }
    if (block_bitmaps_find(set, name)) {
        return error_setf(err, EEXIST, "Bitmap already exists: %s", name);
    }
    if (set->fmt && set->fmt->can_add) {
        ret = set->fmt->can_add(n, name, gbits, err);
        if (ret < 0) {
            return ret;
        }
    }
    int64_t len = block_get_length(n);
    if (len < 0) {
        return error_setf(err, (int)-len, "cannot get the image size");
    }
    BlockBitmap *bm = NULL;
    pthread_rwlock_wrlock(&set->lock);
    ret = block_bitmaps_append(set, name, gbits, (uint64_t)len, enabled,
                               false, &bm, err);
    if (ret >= 0) {
        bm->changed = true;
        set->set_changed = true;
    }
    pthread_rwlock_unlock(&set->lock);
    return ret;
}

int block_bitmap_remove(BlockNode *n, const char *name, Error *err)
{
    BlockBitmaps *set = n->bitmaps;
    if (!block_bitmaps_find(set, name)) {
        return error_setf(err, ENOENT, "Dirty bitmap '%s' not found", name);
    }
    pthread_rwlock_wrlock(&set->lock);
    for (int i = 0; i < set->n; i++) {
        if (strcmp(set->v[i]->name, name) == 0) {
            bitmap_free(set->v[i]);
            memmove(&set->v[i], &set->v[i + 1],
                    (size_t)(set->n - i - 1) * sizeof(set->v[0]));
            set->n--;
            break;
        }
    }
    set->set_changed = true;
    count_enabled(set);
    pthread_rwlock_unlock(&set->lock);
    return 0;
}

int block_bitmap_clear(BlockNode *n, const char *name, Error *err)
{
    BlockBitmap *bm = NULL;
    int ret = usable(n, name, &bm, err);
    if (ret < 0) {
        return ret;
    }
    pthread_rwlock_wrlock(&n->bitmaps->lock);
    memset(bm->words, 0, nb_words(bm->nb_bits) * 8);
    bm->changed = true;
    pthread_rwlock_unlock(&n->bitmaps->lock);
    return 0;
}

int block_bitmap_enable(BlockNode *n, const char *name, bool enable,
                        Error *err)
{
    BlockBitmap *bm = NULL;
    int ret = usable(n, name, &bm, err);
    if (ret < 0) {
        return ret;
    }
    pthread_rwlock_wrlock(&n->bitmaps->lock);
    if (bm->enabled != enable) {
        bm->enabled = enable;
        bm->changed = true;
    }
    count_enabled(n->bitmaps);
    pthread_rwlock_unlock(&n->bitmaps->lock);
    return 0;
}

int block_bitmap_merge(BlockNode *n, const char *dst, BlockNode *src_node,
                       const char *src, Error *err)
{
    BlockBitmap *d = NULL, *s = NULL;
    int ret = usable(n, dst, &d, err);
    if (ret < 0) {
        return ret;
    }
    ret = usable(src_node, src, &s, err);
    if (ret < 0) {
        return ret;
    }
    if (d->length != s->length) {
        return error_setf(err, EINVAL, "Bitmaps are of different sizes "
                          "(destination size is %llu, source size is %llu) "
                          "and can't be merged",
                          (unsigned long long)d->length,
                          (unsigned long long)s->length);
    }
    if (d == s) {
        return 0;
    }
    bool other = src_node->bitmaps != n->bitmaps;
    if (other) {
        pthread_rwlock_rdlock(&src_node->bitmaps->lock);
    }
    pthread_rwlock_wrlock(&n->bitmaps->lock);
    if (d->gran_bits == s->gran_bits) {
        for (uint64_t w = 0; w < nb_words(d->nb_bits); w++) {
            d->words[w] |= s->words[w];
        }
    } else {
        /* Each set source bit dirties the bytes it covers in dst. */
        for (uint64_t w = 0; w < nb_words(s->nb_bits); w++) {
            uint64_t word = s->words[w];
            while (word) {
                int b = __builtin_ctzll(word);
                word &= word - 1;
                uint64_t bit = w * 64 + (uint64_t)b;
                uint64_t off = bit << s->gran_bits;
                uint64_t end = off + (1ull << s->gran_bits);
                if (end > d->length) {
                    end = d->length;
                }
                set_range(d, off >> d->gran_bits,
                          ((end - 1) >> d->gran_bits) + 1);
            }
        }
    }
    d->changed = true;
    pthread_rwlock_unlock(&n->bitmaps->lock);
    if (other) {
        pthread_rwlock_unlock(&src_node->bitmaps->lock);
    }
    return 0;
}

/* The first bit in [a, b) whose value is not v, or b. */
static uint64_t next_other(const BlockBitmap *bm, uint64_t a, uint64_t b,
                           bool v)
{
    while (a < b) {
        uint64_t w = __atomic_load_n(&bm->words[a / 64], __ATOMIC_RELAXED);
        if (v) {
            w = ~w;
        }
        w &= ~0ull << (a % 64);    /* bits below a are not asked about */
        if (w) {
            uint64_t hit = a / 64 * 64 + (uint64_t)__builtin_ctzll(w);
            return hit < b ? hit : b;
        }
        a = (a / 64 + 1) * 64;
    }
    return b;
}

int block_bitmap_dirty_range(BlockNode *n, const char *name, uint64_t off,
                             uint64_t len, bool *dirty, uint64_t *pnum,
                             Error *err)
{
    BlockBitmap *bm = NULL;
    *dirty = false;
    *pnum = 0;
    if (!n->bitmaps) {
        return error_setf(err, ENOENT, "Dirty bitmap '%s' not found", name);
    }
    pthread_rwlock_rdlock(&n->bitmaps->lock);
    int ret = usable(n, name, &bm, err);
    if (ret == 0 && off < bm->length && len > 0) {
        if (len > bm->length - off) {
            len = bm->length - off;
        }
        uint64_t first = off >> bm->gran_bits;
        uint64_t last = ((off + len - 1) >> bm->gran_bits) + 1;
        *dirty = block_bitmap_get_bit(bm, first);
        uint64_t other = next_other(bm, first, last, *dirty);
        uint64_t end = other << bm->gran_bits;
        *pnum = (other == last || end > off + len ? off + len : end) - off;
    }
    pthread_rwlock_unlock(&n->bitmaps->lock);
    return ret;
}

int block_bitmaps_resize(BlockNode *n, uint64_t length)
{
    BlockBitmaps *set = n->bitmaps;
    int ret = 0;

    if (!set) {
        return 0;
    }
    pthread_rwlock_wrlock(&set->lock);
    for (int i = 0; i < set->n && ret == 0; i++) {
        BlockBitmap *bm = set->v[i];
        if (bm->inconsistent || bm->length == length) {
            continue;
        }
        uint64_t nb = bits_for(length, bm->gran_bits);
        if (nb / 8 > BLOCK_BITMAP_MAX_BYTES) {
            ret = -EFBIG;
            break;
        }
        uint64_t ow = nb_words(bm->nb_bits), nw = nb_words(nb);
        uint64_t *w = realloc(bm->words, (nw ? nw : 1) * 8);
        if (!w) {
            ret = -ENOMEM;
            break;
        }
        if (nw > ow) {
            memset(w + ow, 0, (nw - ow) * 8);
        }
        /* Drop bits past the new end so they cannot come back on growth. */
        if (nb % 64 && nw) {
            w[nw - 1] &= (1ull << (nb % 64)) - 1;
        }
        bm->words = w;
        bm->nb_bits = nb;
        bm->length = length;
        bm->changed = true;
    }
    pthread_rwlock_unlock(&set->lock);
    return ret;
}

int block_bitmaps_store(BlockNode *n, Error *err)
{
    if (!n->bitmaps || !n->bitmaps->fmt || !n->bitmaps->fmt->store ||
        n->read_only) {
        return 0;
    }
    return n->bitmaps->fmt->store(n, err);
}

bool block_bitmaps_persistent(BlockNode *n)
{
    /* A set without a format lives in memory only (make_volatile). */
    if (!n->bitmaps || !n->bitmaps->fmt) {
        return false;
    }
    const BlockBitmapsFormat *f = n->bitmaps->fmt;
    return !f->can_add ||
           f->can_add(n, "x", BLOCK_BITMAP_MIN_GRAN_BITS, NULL) == 0;
}

int block_bitmaps_check_copy(BlockNode *src, bool skip_broken, Error *err)
{
    if (!src->bitmaps) {
        return error_setf(err, ENOTSUP, "Source lacks bitmap support");
    }
    for (int i = 0; i < src->bitmaps->n && !skip_broken; i++) {
        if (src->bitmaps->v[i]->inconsistent) {
            return error_setf(err, EBUSY, "Cannot copy inconsistent bitmap "
                              "'%s'; try --skip-broken-bitmaps, or use "
                              "'imgtool bitmap --remove' to delete it",
                              src->bitmaps->v[i]->name);
        }
    }
    return 0;
}

int block_bitmaps_copy(BlockNode *dst, BlockNode *src, bool skip_broken,
                       Error *err)
{
    int ret = block_bitmaps_check_copy(src, skip_broken, err);
    if (ret < 0) {
        return ret;
    }
    if (!block_bitmaps_persistent(dst)) {
        return error_setf(err, ENOTSUP, "Format driver '%s' does not "
                          "support bitmaps", dst->drv->name);
    }
    for (int i = 0; i < src->bitmaps->n; i++) {
        const BlockBitmap *bm = src->bitmaps->v[i];
        Error e = { 0 };
        if (bm->inconsistent) {
            block_report(BLOCK_REPORT_WARNING, "Skipping inconsistent "
                         "bitmap '%s'", bm->name);
            continue;
        }
        ret = block_bitmap_add(dst, bm->name, 1ull << bm->gran_bits,
                               bm->enabled, &e);
        if (ret < 0) {
            return error_setf(err, -ret, "Failed to create bitmap %s: %s",
                              bm->name, e.msg);
        }
        ret = block_bitmap_merge(dst, bm->name, src, bm->name, &e);
        if (ret < 0) {
            return error_setf(err, -ret, "Failed to populate bitmap %s: %s",
                              bm->name, e.msg);
        }
    }
    return block_bitmaps_store(dst, err);
}

void block_bitmap_make_inconsistent(BlockBitmaps *set, BlockBitmap *bm)
{
    free(bm->words);
    bm->words = NULL;
    bm->inconsistent = true;
    bm->enabled = false;
    count_enabled(set);
}

/* ------------------------------------------------------------------ */
/* Queries (backups list the bitmaps they rotate)                     */

int block_bitmap_list(BlockNode *n, BlockBitmapInfo **out, int *count)
{
    BlockBitmaps *set = n->bitmaps;
    *out = NULL;
    *count = 0;
    if (!set) {
        return 0;
    }
    pthread_rwlock_rdlock(&set->lock);
    BlockBitmapInfo *v = calloc(set->n ? (size_t)set->n : 1, sizeof(*v));
    int ret = v ? 0 : -ENOMEM;
    for (int i = 0; v && i < set->n; i++) {
        const BlockBitmap *bm = set->v[i];
        v[i].name = strdup(bm->name);
        v[i].granularity = 1ull << bm->gran_bits;
        v[i].enabled = bm->enabled;
        v[i].inconsistent = bm->inconsistent;
        if (!v[i].name) {
            ret = -ENOMEM;
        }
    }
    int nb = set->n;
    pthread_rwlock_unlock(&set->lock);
    if (ret < 0) {
        block_bitmap_list_free(v, nb);
        return ret;
    }
    *out = v;
    *count = nb;
    return 0;
}

void block_bitmap_list_free(BlockBitmapInfo *v, int count)
{
    for (int i = 0; v && i < count; i++) {
        free(v[i].name);
    }
    free(v);
}

int block_bitmaps_make_volatile(BlockNode *n, Error *err)
{
    if (n->bitmaps) {
        if (n->bitmaps->fmt) {
            return error_setf(err, ENOTSUP, "Only persistent bitmaps are "
                              "supported on %s nodes", n->drv->name);
        }
        return 0;
    }
    BlockBitmaps *set = block_bitmaps_new(NULL);
    if (!set) {
        return error_setf(err, ENOMEM, "Out of memory");
    }
    /* Writes mark n->bitmaps without a lock: switch it drained. */
    block_drain_begin(n);
    n->bitmaps = set;
    block_drain_end(n);
    return 0;
}

bool block_bitmaps_volatile(BlockNode *n)
{
    return n->bitmaps && !n->bitmaps->fmt;
}
