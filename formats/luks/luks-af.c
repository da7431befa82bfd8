/*
 * luks-af.c - the anti-forensic splitter of LUKS1 and PBKDF2.
 *
 * AF split turns a key into `stripes` blocks such that all of them are
 * needed to recover it: every block but the last is random, each is
 * XORed into an accumulator that is then diffused by hashing, and the
 * last block is the key XORed with the final accumulator.  Diffusion
 * hashes the accumulator in digest-sized pieces, each prefixed with its
 * index as a big-endian 32-bit number (a short last piece keeps only as
 * many bytes of its hash).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "formats/luks/luks-int.h"

static int diffuse(const EVP_MD *md, uint8_t *buf, size_t len)
{
    size_t dlen = (size_t)EVP_MD_get_size(md);
    uint8_t out[EVP_MAX_MD_SIZE];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ret = ctx ? 0 : -ENOMEM;
    for (uint32_t i = 0; ret == 0 && (size_t)i * dlen < len; i++) {
        size_t off = (size_t)i * dlen;
        size_t n = len - off < dlen ? len - off : dlen;
        uint8_t idx[4] = { (uint8_t)(i >> 24), (uint8_t)(i >> 16),
                           (uint8_t)(i >> 8), (uint8_t)i };
        if (!EVP_DigestInit_ex(ctx, md, NULL) ||
            !EVP_DigestUpdate(ctx, idx, sizeof(idx)) ||
            !EVP_DigestUpdate(ctx, buf + off, n) ||
            !EVP_DigestFinal_ex(ctx, out, NULL)) {
            ret = -EIO;
            break;
        }
        memcpy(buf + off, out, n);
    }
    OPENSSL_cleanse(out, sizeof(out));
    EVP_MD_CTX_free(ctx);
    return ret;
}

static void xor_into(uint8_t *dst, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        dst[i] ^= src[i];
    }
}

int luks_af_split(const EVP_MD *md, const uint8_t *key, size_t keylen,
                  uint32_t stripes, uint8_t *out)
{
    uint8_t acc[LUKS_MAX_KEY_BYTES] = { 0 };
    int ret = 0;
    if (keylen > sizeof(acc) || stripes == 0) {
        return -EINVAL;
    }
    for (uint32_t i = 0; i + 1 < stripes && ret == 0; i++) {
        uint8_t *block = out + (size_t)i * keylen;
        if (RAND_bytes(block, (int)keylen) != 1) {
            ret = -EIO;
            break;
        }
        xor_into(acc, block, keylen);
        ret = diffuse(md, acc, keylen);
    }
    if (ret == 0) {
        uint8_t *last = out + (size_t)(stripes - 1) * keylen;
        memcpy(last, acc, keylen);
        xor_into(last, key, keylen);
    }
    OPENSSL_cleanse(acc, sizeof(acc));
    return ret;
}

int luks_af_merge(const EVP_MD *md, const uint8_t *in, size_t keylen,
                  uint32_t stripes, uint8_t *key)
{
    uint8_t acc[LUKS_MAX_KEY_BYTES] = { 0 };
    int ret = 0;
    if (keylen > sizeof(acc) || stripes == 0) {
        return -EINVAL;
    }
    for (uint32_t i = 0; i + 1 < stripes && ret == 0; i++) {
        xor_into(acc, in + (size_t)i * keylen, keylen);
        ret = diffuse(md, acc, keylen);
    }
    if (ret == 0) {
        memcpy(key, in + (size_t)(stripes - 1) * keylen, keylen);
        xor_into(key, acc, keylen);
    }
    OPENSSL_cleanse(acc, sizeof(acc));
    return ret;
}

int luks_pbkdf2(const EVP_MD *md, const uint8_t *pass, size_t passlen,
                const uint8_t *salt, uint32_t iterations, uint8_t *out,
                size_t outlen)
{
    if (iterations == 0 || iterations > LUKS_MAX_ITERATIONS ||
        passlen > INT32_MAX) {
        return -EINVAL;
    }
    /* OpenSSL wants a non-NULL password even when it is empty. */
    static const uint8_t empty[1];
    if (!PKCS5_PBKDF2_HMAC((const char *)(pass ? pass : empty), (int)passlen,
                           salt, LUKS_SALT_LEN, (int)iterations, md,
                           (int)outlen, out)) {
        return -EIO;
    }
    return 0;
}

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int luks_pbkdf2_rate(const EVP_MD *md, size_t outlen, uint64_t *per_sec,
                     Error *err)
{
    static const uint8_t pass[] = "imgtool-pbkdf2-benchmark";
    uint8_t salt[LUKS_SALT_LEN] = { 0 };
    uint8_t out[LUKS_MAX_KEY_BYTES];
    /* Double the work until a run takes long enough to time well. */
    for (uint32_t iters = 1u << 12; iters <= LUKS_MAX_ITERATIONS;
         iters <<= 1) {
        uint64_t start = cpu_ns();
        if (luks_pbkdf2(md, pass, sizeof(pass) - 1, salt, iters, out,
                        outlen) < 0) {
            return error_setf(err, EIO, "PBKDF2 failed");
        }
        uint64_t ns = cpu_ns() - start;
        if (ns >= 50000000u) {
            *per_sec = (uint64_t)iters * 1000000000u / ns;
            return 0;
        }
    }
    *per_sec = LUKS_MAX_ITERATIONS;
    return 0;
}
