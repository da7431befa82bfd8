/*
 * sums.c - checksum maps and their files (format and promises in
 * sums.h).
 *
 * Invariants: a writer's file is complete (digest last) before close
 * returns 0, and fsynced; a reader hands out entries only from a header
 * it validated, counts every byte it reads into the digest, and reports
 * a stream that ends early, runs long or fails its tag or digest as
 * damage; nothing is sized by the file beyond the header's bounded
 * count.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <xxhash.h>
#include <zstd.h>

#include "backup/sums.h"

#define SUMS_MAGIC "IMGTSUM1"
#define SUMS_VERSION 1
#define SUMS_HEADER 64
#define SUMS_TRAILER 32           /* tag + digest */
#define SUMS_FLAG_ZSTD 1u
#define SUMS_FLAG_AES_GCM 2u
#define SUMS_ENTRY 16
/* A map of more entries than this is refused (16 EiB / 512 bytes). */
#define SUMS_MAX_COUNT (1ull << 55)
#define IO_BUF (256 * 1024)

/* ------------------------------------------------------------------ */
/* Hashes                                                              */

void bk_hash(const void *buf, size_t len, uint64_t seed, BkHash *out)
{
    XXH128_hash_t h = XXH3_128bits_withSeed(buf, len, seed);
    out->lo = h.low64;
    out->hi = h.high64;
}

void bk_hash_zero(size_t len, uint64_t seed, BkHash *out)
{
    static __thread struct { size_t len; uint64_t seed; BkHash h; bool ok; }
        cache[2];
    for (int i = 0; i < 2; i++) {
        if (cache[i].ok && cache[i].len == len && cache[i].seed == seed) {
            *out = cache[i].h;
            return;
        }
    }
    XXH3_state_t *st = XXH3_createState();
    static const uint8_t zero[4096];
    if (!st) {
        /* Out of memory: hash a buffer instead, in pieces of 4k is not
         * possible without a state; fall back to one allocation. */
        uint8_t *b = calloc(1, len ? len : 1);
        if (b) {
            bk_hash(b, len, seed, out);
            free(b);
        } else {
            out->lo = out->hi = 0;
        }
        return;
    }
    XXH3_128bits_reset_withSeed(st, seed);
    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof(zero) ? len - done : sizeof(zero);
        XXH3_128bits_update(st, zero, n);
        done += n;
    }
    XXH128_hash_t h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    out->lo = h.low64;
    out->hi = h.high64;
    int slot = cache[0].ok ? 1 : 0;
    cache[slot].len = len;
    cache[slot].seed = seed;
    cache[slot].h = *out;
    cache[slot].ok = true;
}

void bk_hash_hex(const BkHash *h, char out[33])
{
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)h->hi,
             (unsigned long long)h->lo);
}

int bk_hash_parse(const char *hex, BkHash *out)
{
    if (!hex || strlen(hex) != 32) {
        return -EINVAL;
    }
    uint64_t v[2] = { 0, 0 };
    for (int i = 0; i < 32; i++) {
        char c = hex[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) {
            return -EINVAL;
        }
        v[i / 16] = v[i / 16] << 4 | (uint64_t)d;
    }
    out->hi = v[0];
    out->lo = v[1];
    return 0;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static void digest_of(XXH3_state_t *st, uint8_t out[16])
{
    XXH128_hash_t h = XXH3_128bits_digest(st);
    put_le64(out, h.low64);
    put_le64(out + 8, h.high64);
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */

struct SumsWriter {
    char *path;
    int fd;
    SumsInfo info;
    uint64_t appended;
    ZSTD_CStream *z;
    EVP_CIPHER_CTX *cipher;       /* NULL: plain */
    XXH3_state_t *file_digest;
    XXH3_state_t *content;
    uint8_t *zout;                /* compressed bytes */
    uint8_t *cout;                /* encrypted bytes */
    uint8_t entries[IO_BUF];      /* serialised entries not yet compressed */
    size_t nentries_bytes;
};

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, p + done, len - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            break;
        }
        done += (size_t)n;
    }
    return (int)done;
}

/* Encrypts (when keyed), digests and writes len bytes of the stream. */
static int writer_emit(SumsWriter *w, const uint8_t *buf, size_t len)
{
    const uint8_t *out = buf;
    if (w->cipher) {
        int outl = 0;
        if (EVP_EncryptUpdate(w->cipher, w->cout, &outl, buf, (int)len) != 1) {
            return -EIO;
        }
        out = w->cout;
        len = (size_t)outl;
    }
    XXH3_128bits_update(w->file_digest, out, len);
    return write_all(w->fd, out, len);
}

static int writer_compress(SumsWriter *w, bool end)
{
    ZSTD_inBuffer in = { w->entries, w->nentries_bytes, 0 };
    for (;;) {
        ZSTD_outBuffer out = { w->zout, IO_BUF, 0 };
        size_t r = end ? ZSTD_compressStream2(w->z, &out, &in, ZSTD_e_end)
                       : ZSTD_compressStream2(w->z, &out, &in,
                                              ZSTD_e_continue);
        if (ZSTD_isError(r)) {
            return -EIO;
        }
        if (out.pos) {
            int ret = writer_emit(w, w->zout, out.pos);
            if (ret < 0) {
                return ret;
            }
        }
        if (end ? r == 0 : in.pos == in.size) {
            break;
        }
    }
    w->nentries_bytes = 0;
    return 0;
}

static void writer_free(SumsWriter *w)
{
    if (!w) {
        return;
    }
    if (w->fd >= 0) {
        close(w->fd);
    }
    ZSTD_freeCStream(w->z);
    EVP_CIPHER_CTX_free(w->cipher);
    XXH3_freeState(w->file_digest);
    XXH3_freeState(w->content);
    free(w->zout);
    free(w->cout);
    free(w->path);
    free(w);
}

static void header_build(uint8_t *h, const SumsInfo *info, uint32_t flags,
                         const uint8_t nonce[12])
{
    memset(h, 0, SUMS_HEADER);
    memcpy(h, SUMS_MAGIC, 8);
    put_le32(h + 8, SUMS_VERSION);
    put_le32(h + 12, flags);
    put_le32(h + 16, info->cluster_bits);
    put_le64(h + 24, info->virtual_size);
    put_le64(h + 32, info->count);
    memcpy(h + 40, nonce, 12);
}

int sums_writer_open(const char *path, const SumsInfo *info,
                     const BkKey *key, SumsWriter **out, Error *err)
{
    SumsWriter *w = calloc(1, sizeof(*w));
    uint8_t header[SUMS_HEADER], nonce[12] = { 0 };
    int ret;

    *out = NULL;
    if (!w) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    w->fd = -1;
    w->info = *info;
    w->path = strdup(path);
    w->z = ZSTD_createCStream();
    w->file_digest = XXH3_createState();
    w->content = XXH3_createState();
    w->zout = malloc(IO_BUF);
    w->cout = key ? malloc(IO_BUF + 64) : NULL;
    if (!w->path || !w->z || !w->file_digest || !w->content || !w->zout ||
        (key && !w->cout)) {
        writer_free(w);
        return error_setf(err, ENOMEM, "out of memory");
    }
    ZSTD_CCtx_setParameter(w->z, ZSTD_c_compressionLevel, 3);
    XXH3_128bits_reset(w->file_digest);
    XXH3_128bits_reset(w->content);
    uint32_t flags = SUMS_FLAG_ZSTD;
    if (key) {
        flags |= SUMS_FLAG_AES_GCM;
        if (RAND_bytes(nonce, sizeof(nonce)) != 1) {
            writer_free(w);
            return error_setf(err, EIO, "no random bytes for a nonce");
        }
    }
    header_build(header, info, flags, nonce);
    if (key) {
        int outl = 0;
        w->cipher = EVP_CIPHER_CTX_new();
        if (!w->cipher ||
            EVP_EncryptInit_ex(w->cipher, EVP_aes_256_gcm(), NULL, NULL,
                               NULL) != 1 ||
            EVP_CIPHER_CTX_ctrl(w->cipher, EVP_CTRL_GCM_SET_IVLEN, 12,
                                NULL) != 1 ||
            EVP_EncryptInit_ex(w->cipher, NULL, NULL, key->bytes,
                               nonce) != 1 ||
            EVP_EncryptUpdate(w->cipher, NULL, &outl, header,
                              SUMS_HEADER) != 1) {
            writer_free(w);
            return error_setf(err, EIO, "cannot set up AES-256-GCM");
        }
    }
    w->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        ret = -errno;
        writer_free(w);
        return error_setf(err, -ret, "%s: %s", path, strerror(-ret));
    }
    XXH3_128bits_update(w->file_digest, header, SUMS_HEADER);
    ret = write_all(w->fd, header, SUMS_HEADER);
    if (ret < 0) {
        error_setf(err, -ret, "%s: %s", path, strerror(-ret));
        sums_writer_abort(w);
        return ret;
    }
    *out = w;
    return 0;
}

int sums_writer_append(SumsWriter *w, const BkHash *v, uint64_t n,
                       Error *err)
{
    if (w->appended + n > w->info.count) {
        return error_setf(err, EINVAL, "%s: more checksums than clusters",
                          w->path);
    }
    for (uint64_t i = 0; i < n; i++) {
        uint8_t *e = w->entries + w->nentries_bytes;
        put_le64(e, v[i].lo);
        put_le64(e + 8, v[i].hi);
        w->nentries_bytes += SUMS_ENTRY;
        if (w->nentries_bytes == sizeof(w->entries)) {
            XXH3_128bits_update(w->content, w->entries, w->nentries_bytes);
            int ret = writer_compress(w, false);
            if (ret < 0) {
                return error_setf(err, -ret, "%s: %s", w->path,
                                  strerror(-ret));
            }
        }
    }
    w->appended += n;
    return 0;
}

int sums_writer_close(SumsWriter *w, BkHash *digest, BkHash *content,
                      Error *err)
{
    uint8_t trailer[SUMS_TRAILER] = { 0 };
    int ret = 0;

    if (w->appended != w->info.count) {
        ret = error_setf(err, EINVAL, "%s: %llu checksums for %llu clusters",
                         w->path, (unsigned long long)w->appended,
                         (unsigned long long)w->info.count);
        goto fail;
    }
    XXH3_128bits_update(w->content, w->entries, w->nentries_bytes);
    ret = writer_compress(w, true);
    if (ret >= 0 && w->cipher) {
        int outl = 0;
        if (EVP_EncryptFinal_ex(w->cipher, w->cout, &outl) != 1 ||
            EVP_CIPHER_CTX_ctrl(w->cipher, EVP_CTRL_GCM_GET_TAG, 16,
                                trailer) != 1) {
            ret = -EIO;
        } else if (outl > 0) {
            XXH3_128bits_update(w->file_digest, w->cout, (size_t)outl);
            ret = write_all(w->fd, w->cout, (size_t)outl);
        }
    }
    if (ret >= 0) {
        XXH3_128bits_update(w->file_digest, trailer, 16);
        digest_of(w->file_digest, trailer + 16);
        ret = write_all(w->fd, trailer, SUMS_TRAILER);
    }
    if (ret >= 0 && fsync(w->fd) < 0) {
        ret = -errno;
    }
    if (ret < 0) {
        error_setf(err, -ret, "%s: %s", w->path, strerror(-ret));
        goto fail;
    }
    if (digest) {
        digest->lo = get_le64(trailer + 16);
        digest->hi = get_le64(trailer + 24);
    }
    if (content) {
        XXH128_hash_t h = XXH3_128bits_digest(w->content);
        content->lo = h.low64;
        content->hi = h.high64;
    }
    writer_free(w);
    return 0;
fail:
    sums_writer_abort(w);
    return ret;
}

void sums_writer_abort(SumsWriter *w)
{
    if (w) {
        unlink(w->path);
        writer_free(w);
    }
}

/* ------------------------------------------------------------------ */
/* Reading                                                             */

struct SumsReader {
    char *path;
    int fd;
    SumsInfo info;
    uint64_t body_left;           /* encrypted/compressed bytes not read */
    uint64_t produced;            /* entries handed out */
    bool stream_done;             /* zstd frame ended */
    ZSTD_DStream *z;
    EVP_CIPHER_CTX *cipher;
    XXH3_state_t *file_digest;
    XXH3_state_t *content;
    uint8_t *raw;                 /* read from the file */
    uint8_t *plain;               /* decrypted */
    ZSTD_inBuffer in;             /* over plain */
    uint8_t *ent;                 /* decompressed entries */
    size_t ent_len, ent_pos;
};

static void reader_free(SumsReader *r)
{
    if (!r) {
        return;
    }
    if (r->fd >= 0) {
        close(r->fd);
    }
    ZSTD_freeDStream(r->z);
    EVP_CIPHER_CTX_free(r->cipher);
    XXH3_freeState(r->file_digest);
    XXH3_freeState(r->content);
    free(r->raw);
    free(r->plain);
    free(r->ent);
    free(r->path);
    free(r);
}

static int damaged(SumsReader *r, Error *err, const char *why)
{
    return error_setf(err, EILSEQ, "%s: checksum map damaged: %s", r->path,
                      why);
}

int sums_reader_open(const char *path, const BkKey *key, SumsReader **out,
                     Error *err)
{
    SumsReader *r = calloc(1, sizeof(*r));
    uint8_t h[SUMS_HEADER];
    struct stat st;
    int ret;

    *out = NULL;
    if (!r) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    r->fd = -1;
    r->path = strdup(path);
    r->z = ZSTD_createDStream();
    r->file_digest = XXH3_createState();
    r->content = XXH3_createState();
    r->raw = malloc(IO_BUF);
    r->plain = malloc(IO_BUF + 64);
    r->ent = malloc(IO_BUF);
    if (!r->path || !r->z || !r->file_digest || !r->content || !r->raw ||
        !r->plain || !r->ent) {
        reader_free(r);
        return error_setf(err, ENOMEM, "out of memory");
    }
    XXH3_128bits_reset(r->file_digest);
    XXH3_128bits_reset(r->content);
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0 || fstat(r->fd, &st) < 0) {
        ret = -errno;
        reader_free(r);
        return error_setf(err, -ret, "%s: %s", path, strerror(-ret));
    }
    ret = read_all(r->fd, h, SUMS_HEADER);
    if (ret < 0) {
        error_setf(err, -ret, "%s: %s", path, strerror(-ret));
        reader_free(r);
        return ret;
    }
    if (ret < SUMS_HEADER || (uint64_t)st.st_size < SUMS_HEADER +
                                                     SUMS_TRAILER) {
        ret = damaged(r, err, "the file is too short");
        reader_free(r);
        return ret;
    }
    uint32_t flags = get_le32(h + 12);
    r->info.cluster_bits = get_le32(h + 16);
    r->info.virtual_size = get_le64(h + 24);
    r->info.count = get_le64(h + 32);
    uint64_t cl = r->info.cluster_bits >= 9 && r->info.cluster_bits <= 26
                      ? 1ull << r->info.cluster_bits : 0;
    if (memcmp(h, SUMS_MAGIC, 8) != 0 || get_le32(h + 8) != SUMS_VERSION ||
        (flags & ~(SUMS_FLAG_ZSTD | SUMS_FLAG_AES_GCM)) ||
        !(flags & SUMS_FLAG_ZSTD) || !cl ||
        r->info.count > SUMS_MAX_COUNT ||
        r->info.count != r->info.virtual_size / cl +
                             (r->info.virtual_size % cl != 0)) {
        ret = damaged(r, err, "bad header");
        reader_free(r);
        return ret;
    }
    if ((flags & SUMS_FLAG_AES_GCM) && !key) {
        ret = error_setf(err, EACCES, "%s: the checksum map is encrypted: "
                         "the repository's passphrase is needed", path);
        reader_free(r);
        return ret;
    }
    if (!(flags & SUMS_FLAG_AES_GCM) && key) {
        ret = damaged(r, err, "not encrypted in an encrypted repository");
        reader_free(r);
        return ret;
    }
    if (key) {
        int outl = 0;
        r->cipher = EVP_CIPHER_CTX_new();
        if (!r->cipher ||
            EVP_DecryptInit_ex(r->cipher, EVP_aes_256_gcm(), NULL, NULL,
                               NULL) != 1 ||
            EVP_CIPHER_CTX_ctrl(r->cipher, EVP_CTRL_GCM_SET_IVLEN, 12,
                                NULL) != 1 ||
            EVP_DecryptInit_ex(r->cipher, NULL, NULL, key->bytes,
                               h + 40) != 1 ||
            EVP_DecryptUpdate(r->cipher, NULL, &outl, h, SUMS_HEADER) != 1) {
            reader_free(r);
            return error_setf(err, EIO, "cannot set up AES-256-GCM");
        }
    }
    XXH3_128bits_update(r->file_digest, h, SUMS_HEADER);
    r->body_left = (uint64_t)st.st_size - SUMS_HEADER - SUMS_TRAILER;
    r->in.src = r->plain;
    r->in.size = r->in.pos = 0;
    *out = r;
    return 0;
}

const SumsInfo *sums_reader_info(const SumsReader *r)
{
    return &r->info;
}

/* Refills r->in from the file.  0: more input, 1: the body is done. */
static int reader_fill(SumsReader *r, Error *err)
{
    if (r->body_left == 0) {
        return 1;
    }
    size_t want = r->body_left < IO_BUF ? (size_t)r->body_left : IO_BUF;
    int n = read_all(r->fd, r->raw, want);
    if (n < 0) {
        return error_setf(err, -n, "%s: %s", r->path, strerror(-n));
    }
    if ((size_t)n != want) {
        return damaged(r, err, "the file is shorter than it was");
    }
    r->body_left -= want;
    XXH3_128bits_update(r->file_digest, r->raw, want);
    if (r->cipher) {
        int outl = 0;
        if (EVP_DecryptUpdate(r->cipher, r->plain, &outl, r->raw,
                              (int)want) != 1) {
            return damaged(r, err, "cannot decrypt");
        }
        r->in.size = (size_t)outl;
    } else {
        memcpy(r->plain, r->raw, want);
        r->in.size = want;
    }
    r->in.pos = 0;
    return 0;
}

/* Decompresses more entries into r->ent.  0: some came, 1: the stream
 * has ended. */
static int reader_more(SumsReader *r, Error *err)
{
    /* keep a partial entry at the front */
    size_t keep = r->ent_len - r->ent_pos;
    memmove(r->ent, r->ent + r->ent_pos, keep);
    r->ent_len = keep;
    r->ent_pos = 0;
    while (!r->stream_done) {
        if (r->in.pos == r->in.size) {
            int f = reader_fill(r, err);
            if (f < 0) {
                return f;
            }
            if (f == 1) {
                return damaged(r, err, "the stream ends early");
            }
        }
        ZSTD_outBuffer out = { r->ent + r->ent_len, IO_BUF - r->ent_len, 0 };
        size_t z = ZSTD_decompressStream(r->z, &out, &r->in);
        if (ZSTD_isError(z)) {
            return damaged(r, err, "bad compressed data");
        }
        r->ent_len += out.pos;
        if (z == 0) {
            r->stream_done = true;
        }
        if (r->ent_len >= SUMS_ENTRY) {
            return 0;
        }
    }
    return r->ent_len >= SUMS_ENTRY ? 0 : 1;
}

int sums_reader_next(SumsReader *r, BkHash *v, uint64_t n, Error *err)
{
    uint64_t i = 0;
    while (i < n && r->produced < r->info.count) {
        if (r->ent_len - r->ent_pos < SUMS_ENTRY) {
            int ret = reader_more(r, err);
            if (ret < 0) {
                return ret;
            }
            if (ret == 1) {
                return damaged(r, err, "fewer checksums than clusters");
            }
        }
        while (i < n && r->produced < r->info.count &&
               r->ent_len - r->ent_pos >= SUMS_ENTRY) {
            const uint8_t *e = r->ent + r->ent_pos;
            XXH3_128bits_update(r->content, e, SUMS_ENTRY);
            v[i].lo = get_le64(e);
            v[i].hi = get_le64(e + 8);
            r->ent_pos += SUMS_ENTRY;
            r->produced++;
            i++;
        }
    }
    return (int)(i < (uint64_t)INT32_MAX ? i : INT32_MAX);
}

static int reader_end(SumsReader *r, const BkHash *expect, BkHash *content,
                      Error *err)
{
    BkHash skip[256];
    while (r->produced < r->info.count) {
        int n = sums_reader_next(r, skip, 256, err);
        if (n < 0) {
            return n;
        }
    }
    /* The frame must end right after the last entry, and the body with
     * it. */
    if (r->ent_len != r->ent_pos) {
        return damaged(r, err, "more checksums than clusters");
    }
    while (!r->stream_done) {
        int ret = reader_more(r, err);
        if (ret < 0) {
            return ret;
        }
        if (r->ent_len) {
            return damaged(r, err, "more checksums than clusters");
        }
        if (ret == 1) {
            break;
        }
    }
    if (r->in.pos != r->in.size || r->body_left) {
        return damaged(r, err, "bytes after the checksums");
    }
    uint8_t trailer[SUMS_TRAILER], mine[16];
    int n = read_all(r->fd, trailer, SUMS_TRAILER);
    if (n < 0) {
        return error_setf(err, -n, "%s: %s", r->path, strerror(-n));
    }
    if (n != SUMS_TRAILER) {
        return damaged(r, err, "the file is shorter than it was");
    }
    if (r->cipher) {
        int outl = 0;
        uint8_t tail[64];
        if (EVP_CIPHER_CTX_ctrl(r->cipher, EVP_CTRL_GCM_SET_TAG, 16,
                                trailer) != 1 ||
            EVP_DecryptFinal_ex(r->cipher, tail, &outl) != 1) {
            return error_setf(err, EACCES, "%s: the checksum map does not "
                              "decrypt: wrong passphrase, or the file is "
                              "damaged", r->path);
        }
    }
    XXH3_128bits_update(r->file_digest, trailer, 16);
    digest_of(r->file_digest, mine);
    if (memcmp(mine, trailer + 16, 16) != 0) {
        return damaged(r, err, "its digest does not match its bytes");
    }
    if (expect && (get_le64(mine) != expect->lo ||
                   get_le64(mine + 8) != expect->hi)) {
        return damaged(r, err, "it is not the file the record names");
    }
    if (content) {
        XXH128_hash_t h = XXH3_128bits_digest(r->content);
        content->lo = h.low64;
        content->hi = h.high64;
    }
    return 0;
}

int sums_reader_finish(SumsReader *r, const BkHash *expect, Error *err)
{
    int ret = reader_end(r, expect, NULL, err);
    reader_free(r);
    return ret;
}

void sums_reader_close(SumsReader *r)
{
    reader_free(r);
}

int sums_file_check(const char *path, const BkKey *key, const BkHash *expect,
                    BkHash *content, Error *err)
{
    SumsReader *r;
    int ret = sums_reader_open(path, key, &r, err);
    if (ret < 0) {
        return ret;
    }
    ret = reader_end(r, expect, content, err);
    reader_free(r);
    return ret;
}
