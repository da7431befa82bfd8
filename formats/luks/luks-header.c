/*
 * luks-header.c - the 592-byte LUKS1 header (all integers big-endian)
 * and the names it uses for ciphers, modes, IV generators and hashes.
 *
 * Names are parsed strictly against the short list we implement: the
 * header is untrusted input and every name maps to a fixed OpenSSL
 * object, never to a lookup by an arbitrary string.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/luks/luks-int.h"

/* Field offsets of the LUKS1 on-disk format. */
enum {
    OFF_MAGIC = 0,
    OFF_VERSION = 6,
    OFF_CIPHER_NAME = 8,
    OFF_CIPHER_MODE = 40,
    OFF_HASH_SPEC = 72,
    OFF_PAYLOAD = 104,
    OFF_KEY_BYTES = 108,
    OFF_MK_DIGEST = 112,
    OFF_MK_SALT = 132,
    OFF_MK_ITER = 164,
    OFF_UUID = 168,
    OFF_SLOTS = 208,
    SLOT_SIZE = 48,
    SLOT_OFF_ITER = 4,
    SLOT_OFF_SALT = 8,
    SLOT_OFF_KEY_OFFSET = 40,
    SLOT_OFF_STRIPES = 44,
};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}

/* Copies a fixed-size, possibly unterminated string field. */
static void get_str(char *dst, const uint8_t *src, size_t n)
{
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Fixed-size string field: NUL-padded, not necessarily terminated. */
static void put_str(uint8_t *dst, const char *src, size_t n)
{
    memcpy(dst, src, strnlen(src, n));
}

void luks_header_encode(const LuksHeader *h, uint8_t out[LUKS_HEADER_SIZE])
{
    memset(out, 0, LUKS_HEADER_SIZE);
    memcpy(out + OFF_MAGIC, LUKS_MAGIC, LUKS_MAGIC_LEN);
    out[OFF_VERSION] = (uint8_t)(h->version >> 8);
    out[OFF_VERSION + 1] = (uint8_t)h->version;
    put_str(out + OFF_CIPHER_NAME, h->cipher_name, LUKS_NAME_LEN);
    put_str(out + OFF_CIPHER_MODE, h->cipher_mode, LUKS_NAME_LEN);
    put_str(out + OFF_HASH_SPEC, h->hash_spec, LUKS_NAME_LEN);
    put_be32(out + OFF_PAYLOAD, h->payload_offset);
    put_be32(out + OFF_KEY_BYTES, h->key_bytes);
    memcpy(out + OFF_MK_DIGEST, h->mk_digest, LUKS_DIGEST_LEN);
    memcpy(out + OFF_MK_SALT, h->mk_salt, LUKS_SALT_LEN);
    put_be32(out + OFF_MK_ITER, h->mk_iterations);
    put_str(out + OFF_UUID, h->uuid, LUKS_UUID_LEN);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        uint8_t *s = out + OFF_SLOTS + i * SLOT_SIZE;
        const LuksSlot *ks = &h->slots[i];
        put_be32(s, ks->active);
        put_be32(s + SLOT_OFF_ITER, ks->iterations);
        memcpy(s + SLOT_OFF_SALT, ks->salt, LUKS_SALT_LEN);
        put_be32(s + SLOT_OFF_KEY_OFFSET, ks->key_offset);
        put_be32(s + SLOT_OFF_STRIPES, ks->stripes);
    }
}

int luks_header_decode(const uint8_t in[LUKS_HEADER_SIZE], LuksHeader *h,
                       Error *err)
{
    memset(h, 0, sizeof(*h));
    if (memcmp(in + OFF_MAGIC, LUKS_MAGIC, LUKS_MAGIC_LEN) != 0) {
        return error_setf(err, EINVAL, "Volume is not in LUKS format");
    }
    h->version = (uint16_t)(in[OFF_VERSION] << 8 | in[OFF_VERSION + 1]);
    if (h->version != 1) {
        return error_setf(err, ENOTSUP, "LUKS version %u is not supported "
                          "(only LUKS1)", h->version);
    }
    get_str(h->cipher_name, in + OFF_CIPHER_NAME, LUKS_NAME_LEN);
    get_str(h->cipher_mode, in + OFF_CIPHER_MODE, LUKS_NAME_LEN);
    get_str(h->hash_spec, in + OFF_HASH_SPEC, LUKS_NAME_LEN);
    h->payload_offset = get_be32(in + OFF_PAYLOAD);
    h->key_bytes = get_be32(in + OFF_KEY_BYTES);
    memcpy(h->mk_digest, in + OFF_MK_DIGEST, LUKS_DIGEST_LEN);
    memcpy(h->mk_salt, in + OFF_MK_SALT, LUKS_SALT_LEN);
    h->mk_iterations = get_be32(in + OFF_MK_ITER);
    get_str(h->uuid, in + OFF_UUID, LUKS_UUID_LEN);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const uint8_t *s = in + OFF_SLOTS + i * SLOT_SIZE;
        LuksSlot *ks = &h->slots[i];
        ks->active = get_be32(s);
        ks->iterations = get_be32(s + SLOT_OFF_ITER);
        memcpy(ks->salt, s + SLOT_OFF_SALT, LUKS_SALT_LEN);
        ks->key_offset = get_be32(s + SLOT_OFF_KEY_OFFSET);
        ks->stripes = get_be32(s + SLOT_OFF_STRIPES);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Names                                                               */

typedef struct HashName {
    const char *name;
    const EVP_MD *(*md)(void);
} HashName;

static const HashName hashes[] = {
    { "md5", EVP_md5 },
    { "sha1", EVP_sha1 },
    { "sha224", EVP_sha224 },
    { "sha256", EVP_sha256 },
    { "sha384", EVP_sha384 },
    { "sha512", EVP_sha512 },
    { NULL, NULL },
};

static const HashName *find_hash(const char *name)
{
    for (int i = 0; hashes[i].name; i++) {
        if (strcmp(hashes[i].name, name) == 0) {
            return &hashes[i];
        }
    }
    return NULL;
}

const char *luks_mode_name(LuksMode m)
{
    return m == LUKS_MODE_XTS ? "xts" : "cbc";
}

const char *luks_ivgen_name(LuksIvgen g)
{
    switch (g) {
    case LUKS_IV_PLAIN: return "plain";
    case LUKS_IV_PLAIN64: return "plain64";
    default: return "essiv";
    }
}

static int parse_ivgen(const char *s, LuksIvgen *g)
{
    if (!strcmp(s, "plain")) {
        *g = LUKS_IV_PLAIN;
    } else if (!strcmp(s, "plain64")) {
        *g = LUKS_IV_PLAIN64;
    } else if (!strcmp(s, "essiv")) {
        *g = LUKS_IV_ESSIV;
    } else {
        return -EINVAL;
    }
    return 0;
}

/* ESSIV encrypts the sector number with AES keyed by a hash of the
 * master key, so the hash must give an AES key length. */
static int check_essiv_hash(const LuksSpec *s, Error *err)
{
    int len = EVP_MD_get_size(s->ivgen_md);
    if (len != 16 && len != 24 && len != 32) {
        return error_setf(err, EINVAL, "No AES cipher with key size %d "
                          "available", len);
    }
    return 0;
}

static int finish_spec(LuksSpec *s, const char *ivgen_hash, Error *err)
{
    const HashName *h = find_hash(s->hash);
    if (!h) {
        return error_setf(err, ENOTSUP, "Hash algorithm '%s' is not "
                          "supported", s->hash);
    }
    s->hash = h->name;
    s->md = h->md();
    s->key_bytes = s->aes_bits / 8 * (s->mode == LUKS_MODE_XTS ? 2 : 1);
    s->ivgen_hash = NULL;
    s->ivgen_md = NULL;
    if (ivgen_hash) {
        const HashName *ih = find_hash(ivgen_hash);
        if (!ih) {
            return error_setf(err, ENOTSUP, "Hash algorithm '%s' is not "
                              "supported", ivgen_hash);
        }
        s->ivgen_hash = ih->name;
        s->ivgen_md = ih->md();
    }
    if (s->ivgen == LUKS_IV_ESSIV) {
        if (!s->ivgen_md) {
            s->ivgen_hash = "sha256";
            s->ivgen_md = EVP_sha256();
        }
        return check_essiv_hash(s, err);
    }
    return 0;
}

int luks_spec_from_params(const LuksCreateParams *p, LuksSpec *s,
                          Error *err)
{
    memset(s, 0, sizeof(*s));
    const char *alg = p->cipher_alg[0] ? p->cipher_alg : "aes-256";
    if (!strcmp(alg, "aes-128")) {
        s->aes_bits = 128;
    } else if (!strcmp(alg, "aes-192")) {
        s->aes_bits = 192;
    } else if (!strcmp(alg, "aes-256")) {
        s->aes_bits = 256;
    } else {
        return error_setf(err, ENOTSUP, "Algorithm '%s' not supported", alg);
    }
    const char *mode = p->cipher_mode[0] ? p->cipher_mode : "xts";
    if (!strcmp(mode, "xts")) {
        s->mode = LUKS_MODE_XTS;
    } else if (!strcmp(mode, "cbc")) {
        s->mode = LUKS_MODE_CBC;
    } else {
        return error_setf(err, ENOTSUP, "Cipher mode '%s' not supported",
                          mode);
    }
    const char *iv = p->ivgen_alg[0] ? p->ivgen_alg : "plain64";
    if (parse_ivgen(iv, &s->ivgen) < 0) {
        return error_setf(err, EINVAL, "Parameter 'ivgen-alg' does not "
                          "accept value '%s'", iv);
    }
    s->hash = p->hash_alg[0] ? p->hash_alg : "sha256";
    return finish_spec(s, p->ivgen_hash_alg[0] ? p->ivgen_hash_alg : NULL,
                       err);
}

int luks_spec_from_header(const LuksHeader *h, LuksSpec *s, Error *err)
{
    memset(s, 0, sizeof(*s));
    if (strcmp(h->cipher_name, "aes") != 0) {
        return error_setf(err, ENOTSUP, "LUKS cipher '%s' is not supported "
                          "(only aes)", h->cipher_name);
    }
    /* "<mode>-<ivgen>[:<hash>]" */
    char mode[LUKS_NAME_LEN + 1];
    snprintf(mode, sizeof(mode), "%s", h->cipher_mode);
    char *dash = strchr(mode, '-');
    if (!dash) {
        return error_setf(err, ENOTSUP, "LUKS cipher mode '%s' is not "
                          "supported", h->cipher_mode);
    }
    *dash = '\0';
    char *ivgen = dash + 1, *ivhash = strchr(ivgen, ':');
    if (ivhash) {
        *ivhash++ = '\0';
    }
    if (!strcmp(mode, "xts")) {
        s->mode = LUKS_MODE_XTS;
    } else if (!strcmp(mode, "cbc")) {
        s->mode = LUKS_MODE_CBC;
    } else {
        return error_setf(err, ENOTSUP, "LUKS cipher mode '%s' is not "
                          "supported", h->cipher_mode);
    }
    if (parse_ivgen(ivgen, &s->ivgen) < 0) {
        return error_setf(err, ENOTSUP, "LUKS IV generator '%s' is not "
                          "supported", ivgen);
    }
    size_t unit = s->mode == LUKS_MODE_XTS ? 2 : 1;
    switch (h->key_bytes) {
    case 16: case 24: case 32: case 48: case 64:
        if (h->key_bytes % unit == 0 &&
            h->key_bytes / unit >= 16 && h->key_bytes / unit <= 32 &&
            h->key_bytes / unit % 8 == 0) {
            s->aes_bits = (unsigned)(h->key_bytes / unit * 8);
            break;
        }
        /* fall through */
    default:
        return error_setf(err, EINVAL, "LUKS key size %u bytes is not "
                          "valid for aes-%s", h->key_bytes, mode);
    }
    if (ivhash && !*ivhash) {
        ivhash = NULL;
    }
    s->hash = h->hash_spec;
    if (finish_spec(s, ivhash, err) < 0) {
        return -(err && err->code ? err->code : EINVAL);
    }
    return 0;
}

void luks_spec_to_header(const LuksSpec *s, LuksHeader *h)
{
    snprintf(h->cipher_name, sizeof(h->cipher_name), "aes");
    /* QEMU records an ivgen hash given with any generator. */
    snprintf(h->cipher_mode, sizeof(h->cipher_mode), "%s-%s%s%s",
             luks_mode_name(s->mode), luks_ivgen_name(s->ivgen),
             s->ivgen_hash ? ":" : "", s->ivgen_hash ? s->ivgen_hash : "");
    snprintf(h->hash_spec, sizeof(h->hash_spec), "%s", s->hash);
    h->key_bytes = (uint32_t)s->key_bytes;
}

size_t luks_material_len(size_t key_bytes, uint32_t stripes)
{
    size_t len = key_bytes * stripes;
    return (len + LUKS_SECTOR_SIZE - 1) / LUKS_SECTOR_SIZE * LUKS_SECTOR_SIZE;
}
