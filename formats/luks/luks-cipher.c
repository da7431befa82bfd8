/*
 * luks-cipher.c - sector encryption: AES in XTS or CBC mode, one
 * 512-byte sector at a time, with the IV derived from the sector number
 * (plain: low 32 bits, plain64: 64 bits, both little-endian; essiv: the
 * 64-bit number encrypted with AES keyed by a hash of the key).
 *
 * Every call builds its own EVP contexts from the stored key so that
 * many threads can encrypt at once without sharing OpenSSL state.
 */
#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>

#include "formats/luks/luks-int.h"

#define AES_BLOCK 16

static const EVP_CIPHER *aes_ecb(unsigned bits)
{
    return bits == 128 ? EVP_aes_128_ecb() :
           bits == 192 ? EVP_aes_192_ecb() : EVP_aes_256_ecb();
}

/* OpenSSL has no AES-192-XTS; QEMU (and dm-crypt) do, so that one is
 * built here from AES-192-ECB (xts_sector below). */
static const EVP_CIPHER *aes_cipher(LuksMode mode, unsigned bits)
{
    if (mode == LUKS_MODE_XTS) {
        return bits == 128 ? EVP_aes_128_xts() :
               bits == 256 ? EVP_aes_256_xts() : aes_ecb(192);
    }
    return bits == 128 ? EVP_aes_128_cbc() :
           bits == 192 ? EVP_aes_192_cbc() : EVP_aes_256_cbc();
}

int luks_cipher_init(LuksCipher *c, const LuksSpec *s, const uint8_t *key,
                     Error *err)
{
    memset(c, 0, sizeof(*c));
    c->spec = *s;
    c->cipher = aes_cipher(s->mode, s->aes_bits);
    c->manual_xts = s->mode == LUKS_MODE_XTS && s->aes_bits == 192;
    if (c->manual_xts) {
        c->tweak_cipher = aes_ecb(192);
    }
    if (s->key_bytes > sizeof(c->key)) {
        return error_setf(err, EINVAL, "LUKS key is too long");
    }
    memcpy(c->key, key, s->key_bytes);
    if (s->ivgen == LUKS_IV_ESSIV) {
        unsigned int len = 0;
        if (!EVP_Digest(key, s->key_bytes, c->essiv_key, &len, s->ivgen_md,
                        NULL)) {
            luks_cipher_wipe(c);
            return error_setf(err, EIO, "Could not hash the key for ESSIV");
        }
        c->essiv_cipher = len == 16 ? EVP_aes_128_ecb() :
                          len == 24 ? EVP_aes_192_ecb() : EVP_aes_256_ecb();
    }
    return 0;
}

void luks_cipher_wipe(LuksCipher *c)
{
    OPENSSL_cleanse(c, sizeof(*c));
}

static void sector_iv(const LuksCipher *c, EVP_CIPHER_CTX *essiv,
                      uint64_t sector, uint8_t iv[AES_BLOCK], bool *ok)
{
    memset(iv, 0, AES_BLOCK);
    uint64_t v = c->spec.ivgen == LUKS_IV_PLAIN ? (sector & 0xffffffffu)
                                                 : sector;
    for (int i = 0; i < 8; i++) {
        iv[i] = (uint8_t)(v >> (8 * i));
    }
    if (c->spec.ivgen == LUKS_IV_ESSIV) {
        int outl = 0;
        *ok = *ok && EVP_EncryptUpdate(essiv, iv, &outl, iv, AES_BLOCK) &&
              outl == AES_BLOCK;
    }
}

/* Multiplies the tweak by x in GF(2^128), little-endian (IEEE 1619). */
static void xts_next_tweak(uint8_t t[AES_BLOCK])
{
    uint8_t carry = t[AES_BLOCK - 1] >> 7;
    for (int i = AES_BLOCK - 1; i > 0; i--) {
        t[i] = (uint8_t)(t[i] << 1 | t[i - 1] >> 7);
    }
    t[0] = (uint8_t)(t[0] << 1) ^ (carry ? 0x87 : 0);
}

/* XTS of one sector from ECB: data key ctx (keyed with the first half,
 * in the request's direction), tweak key tctx (second half, encrypt).
 * A sector is a whole number of blocks, so no ciphertext stealing. */
static bool xts_sector(EVP_CIPHER_CTX *ctx, EVP_CIPHER_CTX *tctx,
                       const uint8_t iv[AES_BLOCK], uint8_t *buf)
{
    uint8_t tweaks[LUKS_SECTOR_SIZE];
    int outl = 0;
    if (!EVP_EncryptUpdate(tctx, tweaks, &outl, iv, AES_BLOCK) ||
        outl != AES_BLOCK) {
        return false;
    }
    for (size_t b = AES_BLOCK; b < LUKS_SECTOR_SIZE; b += AES_BLOCK) {
        memcpy(tweaks + b, tweaks + b - AES_BLOCK, AES_BLOCK);
        xts_next_tweak(tweaks + b);
    }
    for (size_t i = 0; i < LUKS_SECTOR_SIZE; i++) {
        buf[i] ^= tweaks[i];
    }
    bool ok = EVP_CipherUpdate(ctx, buf, &outl, buf, LUKS_SECTOR_SIZE) &&
              outl == LUKS_SECTOR_SIZE;
    for (size_t i = 0; i < LUKS_SECTOR_SIZE; i++) {
        buf[i] ^= tweaks[i];
    }
    OPENSSL_cleanse(tweaks, sizeof(tweaks));
    return ok;
}

int luks_cipher_run(const LuksCipher *c, bool encrypt, uint64_t sector,
                    uint8_t *buf, size_t len)
{
    if (len % LUKS_SECTOR_SIZE) {
        return -EINVAL;
    }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX *essiv = NULL, *tctx = NULL;
    bool ok = ctx && EVP_CipherInit_ex(ctx, c->cipher, NULL, c->key, NULL,
                                       encrypt ? 1 : 0) &&
              EVP_CIPHER_CTX_set_padding(ctx, 0);
    if (ok && c->manual_xts) {
        tctx = EVP_CIPHER_CTX_new();
        ok = tctx && EVP_EncryptInit_ex(tctx, c->tweak_cipher, NULL,
                                        c->key + c->spec.key_bytes / 2,
                                        NULL) &&
             EVP_CIPHER_CTX_set_padding(tctx, 0);
    }
    if (ok && c->essiv_cipher) {
        essiv = EVP_CIPHER_CTX_new();
        ok = essiv && EVP_EncryptInit_ex(essiv, c->essiv_cipher, NULL,
                                         c->essiv_key, NULL) &&
             EVP_CIPHER_CTX_set_padding(essiv, 0);
    }
    for (size_t done = 0; ok && done < len; done += LUKS_SECTOR_SIZE) {
        uint8_t iv[AES_BLOCK];
        int outl = 0;
        sector_iv(c, essiv, sector++, iv, &ok);
        if (c->manual_xts) {
            ok = ok && xts_sector(ctx, tctx, iv, buf + done);
            continue;
        }
        ok = ok && EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) &&
             EVP_CipherUpdate(ctx, buf + done, &outl, buf + done,
                              LUKS_SECTOR_SIZE) &&
             outl == LUKS_SECTOR_SIZE;
    }
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_CTX_free(tctx);
    EVP_CIPHER_CTX_free(essiv);
    return ok ? 0 : -EIO;
}
