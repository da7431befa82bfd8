/*
 * luks-volume.c - LUKS1 volumes: creating one (master key, key slot 0),
 * validating a header read from disk, unlocking a key slot with a
 * passphrase, and encrypting/decrypting payload sectors.
 *
 * Layout, as QEMU and cryptsetup make it: the 592-byte header in the
 * first 4 KiB, then eight key material areas of key_bytes * 4000 bytes
 * each rounded up to 4 KiB, then the payload.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "block/core/secret.h"
#include "formats/luks/luks-int.h"

static size_t slot_area_len(size_t key_bytes)
{
    size_t len = key_bytes * LUKS_STRIPES;
    return (len + LUKS_ALIGN - 1) / LUKS_ALIGN * LUKS_ALIGN;
}

int luks_params_parse(KVList *opts, const char *prefix, LuksCreateParams *p,
                      Error *err)
{
    static const struct {
        const char *name;
        size_t off;
    } strs[] = {
        { "cipher-alg", offsetof(LuksCreateParams, cipher_alg) },
        { "cipher-mode", offsetof(LuksCreateParams, cipher_mode) },
        { "ivgen-alg", offsetof(LuksCreateParams, ivgen_alg) },
        { "ivgen-hash-alg", offsetof(LuksCreateParams, ivgen_hash_alg) },
        { "hash-alg", offsetof(LuksCreateParams, hash_alg) },
    };
    char key[96];
    memset(p, 0, sizeof(*p));
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        snprintf(key, sizeof(key), "%s%s", prefix, strs[i].name);
        const char *v = kvlist_get(opts, key);
        if (v) {
            char *dst = (char *)p + strs[i].off;
            if (strlen(v) >= sizeof(p->cipher_alg)) {
                return error_setf(err, EINVAL, "Parameter '%s' does not "
                                  "accept value '%s'", key, v);
            }
            strcpy(dst, v);
        }
    }
    snprintf(key, sizeof(key), "%siter-time", prefix);
    const char *it = kvlist_get(opts, key);
    p->iter_time_ms = 2000;
    if (it) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(it, &end, 10);
        if (!*it || *end || errno || it[0] == '-') {
            return error_setf(err, EINVAL, "Parameter '%s' expects a number",
                              key);
        }
        p->iter_time_ms = v;
    }
    LuksSpec s;
    return luks_spec_from_params(p, &s, err);
}

int luks_header_length(const LuksCreateParams *p, uint64_t *len, Error *err)
{
    LuksSpec s;
    int ret = luks_spec_from_params(p, &s, err);
    if (ret < 0) {
        return ret;
    }
    *len = LUKS_ALIGN + LUKS_NUM_SLOTS * (uint64_t)slot_area_len(s.key_bytes);
    return 0;
}

static int random_bytes(uint8_t *buf, size_t len, Error *err)
{
    if (RAND_bytes(buf, (int)len) != 1) {
        return error_setf(err, EIO, "Could not get random bytes");
    }
    return 0;
}

static int make_uuid(char out[LUKS_UUID_LEN + 1], Error *err)
{
    uint8_t u[16];
    int ret = random_bytes(u, sizeof(u), err);
    if (ret < 0) {
        return ret;
    }
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);   /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
    snprintf(out, LUKS_UUID_LEN + 1,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5],
             u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
    return 0;
}

/* PBKDF2 iterations worth `ms` of CPU divided by `share`, as QEMU sizes
 * them (the master key digest gets an eighth). */
static int size_iterations(const LuksSpec *s, size_t outlen, uint64_t ms,
                           uint64_t share, uint32_t *iters, Error *err)
{
    uint64_t rate;
    int ret = luks_pbkdf2_rate(s->md, outlen, &rate, err);
    if (ret < 0) {
        return ret;
    }
    if (ms && rate > UINT64_MAX / ms) {
        return error_setf(err, ERANGE, "iter-time %" PRIu64 " ms is too "
                          "long", ms);
    }
    uint64_t n = rate * ms / 1000 / share;
    if (n > LUKS_MAX_ITERATIONS) {
        return error_setf(err, ERANGE, "iter-time %" PRIu64 " ms needs %"
                          PRIu64 " PBKDF2 iterations here, more than the %u "
                          "allowed", ms, n, LUKS_MAX_ITERATIONS);
    }
    *iters = n < LUKS_MIN_ITERATIONS ? LUKS_MIN_ITERATIONS : (uint32_t)n;
    return 0;
}

static LuksVolume *volume_new(void)
{
    return calloc(1, sizeof(LuksVolume));
}

void luks_close(LuksVolume *v)
{
    if (v) {
        OPENSSL_cleanse(v, sizeof(*v));
        free(v);
    }
}

uint64_t luks_header_work(const LuksHeader *h, const LuksSpec *s)
{
    uint64_t dlen = (uint64_t)EVP_MD_get_size(s->md);
    uint64_t blocks = (s->key_bytes + dlen - 1) / dlen, work = 0;
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        if (h->slots[i].active == LUKS_SLOT_ENABLED) {
            work += h->slots[i].iterations * blocks + h->mk_iterations;
        }
    }
    return work;
}

/* The iteration count sized for a new slot i must leave the header
 * openable: luks_open refuses headers asking for more than
 * LUKS_MAX_WORK in all. */
static int check_slot_work(const LuksVolume *v, int i, uint32_t iters,
                           uint64_t ms, Error *err)
{
    LuksHeader h = v->hdr;
    h.slots[i].active = LUKS_SLOT_ENABLED;
    h.slots[i].iterations = iters;
    uint64_t work = luks_header_work(&h, &v->spec);
    if (work > LUKS_MAX_WORK) {
        return error_setf(err, ERANGE, "iter-time %" PRIu64 " ms makes the "
                          "key slots ask for %" PRIu64 " PBKDF2 blocks of "
                          "work, more than the %llu allowed", ms, work,
                          LUKS_MAX_WORK);
    }
    return 0;
}

int luks_slot_write(LuksVolume *v, int i, const uint8_t *mk,
                    const uint8_t *pass, size_t passlen, uint64_t ms,
                    LuksWriteFn write_fn, void *opaque, Error *err)
{
    LuksSlot *ks = &v->hdr.slots[i];
    size_t klen = v->spec.key_bytes;
    size_t mlen = luks_material_len(klen, LUKS_STRIPES);
    uint8_t dk[LUKS_MAX_KEY_BYTES];
    LuksCipher c;
    uint8_t *material = calloc(1, mlen);
    int ret = material ? 0 : error_setf(err, ENOMEM, "out of memory");
    if (ret == 0) {
        ret = size_iterations(&v->spec, klen, ms, 1, &ks->iterations, err);
    }
    if (ret == 0) {
        ret = check_slot_work(v, i, ks->iterations, ms, err);
    }
    if (ret == 0) {
        ret = random_bytes(ks->salt, LUKS_SALT_LEN, err);
    }
    if (ret == 0 && luks_pbkdf2(v->spec.md, pass, passlen, ks->salt,
                                ks->iterations, dk, klen) < 0) {
        ret = error_setf(err, EIO, "PBKDF2 failed");
    }
    if (ret == 0 && luks_af_split(v->spec.md, mk, klen, LUKS_STRIPES,
                                  material) < 0) {
        ret = error_setf(err, EIO, "Could not split the master key");
    }
    if (ret == 0) {
        ret = luks_cipher_init(&c, &v->spec, dk, err);
        if (ret == 0) {
            if (luks_cipher_run(&c, true, 0, material, mlen) < 0) {
                ret = error_setf(err, EIO, "Could not encrypt key slot %d",
                                 i);
            }
            luks_cipher_wipe(&c);
        }
    }
    if (ret == 0) {
        /* QEMU writes the material unpadded; the padding of an unaligned
         * size (aes-192-cbc) is only needed to decrypt whole sectors. */
        ret = write_fn(opaque, (uint64_t)ks->key_offset * LUKS_SECTOR_SIZE,
                       material, klen * LUKS_STRIPES, err);
        if (ret == 0 && mlen > klen * LUKS_STRIPES) {
            ret = write_fn(opaque,
                           (uint64_t)ks->key_offset * LUKS_SECTOR_SIZE +
                           klen * LUKS_STRIPES, material + klen * LUKS_STRIPES,
                           mlen - klen * LUKS_STRIPES, err);
        }
    }
    if (ret == 0) {
        ks->active = LUKS_SLOT_ENABLED;
    }
    OPENSSL_cleanse(dk, sizeof(dk));
    if (material) {
        OPENSSL_cleanse(material, mlen);
        free(material);
    }
    return ret;
}

int luks_create(const LuksCreateParams *p, const uint8_t *pass,
                size_t passlen, LuksWriteFn write_fn, void *opaque,
                LuksVolume **out, Error *err)
{
    uint8_t mk[LUKS_MAX_KEY_BYTES];
    uint8_t raw[LUKS_HEADER_SIZE];
    LuksVolume *v = volume_new();
    if (!v) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = luks_spec_from_params(p, &v->spec, err);
    LuksHeader *h = &v->hdr;
    size_t klen = v->spec.key_bytes;
    if (ret == 0) {
        h->version = 1;
        luks_spec_to_header(&v->spec, h);
        size_t area = slot_area_len(klen);
        for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
            h->slots[i].active = LUKS_SLOT_DISABLED;
            h->slots[i].stripes = LUKS_STRIPES;
            h->slots[i].key_offset =
                (uint32_t)((LUKS_ALIGN + i * area) / LUKS_SECTOR_SIZE);
        }
        h->payload_offset = (uint32_t)((LUKS_ALIGN + LUKS_NUM_SLOTS * area) /
                                       LUKS_SECTOR_SIZE);
        ret = random_bytes(mk, klen, err);
    }
    if (ret == 0) {
        ret = random_bytes(h->mk_salt, LUKS_SALT_LEN, err);
    }
    if (ret == 0) {
        ret = make_uuid(h->uuid, err);
    }
    if (ret == 0) {
        ret = size_iterations(&v->spec, LUKS_DIGEST_LEN, p->iter_time_ms, 8,
                              &h->mk_iterations, err);
    }
    if (ret == 0 && luks_pbkdf2(v->spec.md, mk, klen, h->mk_salt,
                                h->mk_iterations, h->mk_digest,
                                LUKS_DIGEST_LEN) < 0) {
        ret = error_setf(err, EIO, "PBKDF2 failed");
    }
    if (ret == 0) {
        ret = luks_slot_write(v, 0, mk, pass, passlen, p->iter_time_ms,
                              write_fn, opaque, err);
    }
    /* The header last: it never names key material not yet written. */
    if (ret == 0) {
        luks_header_encode(h, raw);
        ret = write_fn(opaque, 0, raw, sizeof(raw), err);
    }
    if (ret == 0) {
        ret = luks_cipher_init(&v->cipher, &v->spec, mk, err);
    }
    OPENSSL_cleanse(mk, sizeof(mk));
    if (ret < 0) {
        luks_close(v);
        return ret;
    }
    v->unlocked = true;
    *out = v;
    return 0;
}

/* Everything about a header that can be judged without a key. */
static int validate_header(const LuksHeader *h, const LuksSpec *s,
                           uint64_t area_len, Error *err)
{
    if (h->mk_iterations == 0 || h->mk_iterations > LUKS_MAX_ITERATIONS) {
        return error_setf(err, EINVAL, "LUKS master key iteration count %u "
                          "is out of range (1..%u)", h->mk_iterations,
                          LUKS_MAX_ITERATIONS);
    }
    uint64_t mlen = luks_material_len(s->key_bytes, LUKS_STRIPES);
    uint64_t payload = (uint64_t)h->payload_offset * LUKS_SECTOR_SIZE;
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *ks = &h->slots[i];
        if (ks->active != LUKS_SLOT_ENABLED &&
            ks->active != LUKS_SLOT_DISABLED) {
            return error_setf(err, EINVAL, "LUKS key slot %d is corrupted "
                              "(state 0x%08x)", i, ks->active);
        }
        if (ks->stripes != LUKS_STRIPES) {
            return error_setf(err, EINVAL, "LUKS key slot %d is corrupted "
                              "(stripes %u != %u)", i, ks->stripes,
                              LUKS_STRIPES);
        }
        if (ks->active == LUKS_SLOT_ENABLED &&
            (ks->iterations == 0 || ks->iterations > LUKS_MAX_ITERATIONS)) {
            return error_setf(err, EINVAL, "LUKS key slot %d iteration "
                              "count %u is out of range (1..%u)", i,
                              ks->iterations, LUKS_MAX_ITERATIONS);
        }
        uint64_t start = (uint64_t)ks->key_offset * LUKS_SECTOR_SIZE;
        uint64_t end = start + mlen;
        if (start < LUKS_HEADER_SIZE) {
            return error_setf(err, EINVAL, "LUKS key slot %d material "
                              "overlaps the header", i);
        }
        if (end > payload) {
            return error_setf(err, EINVAL, "LUKS key slot %d material "
                              "overlaps the payload", i);
        }
        if (end > area_len) {
            return error_setf(err, EINVAL, "LUKS key slot %d material lies "
                              "beyond the end of the header area", i);
        }
        for (int j = 0; j < i; j++) {
            uint64_t s2 = (uint64_t)h->slots[j].key_offset *
                          LUKS_SECTOR_SIZE;
            if (start < s2 + mlen && s2 < end) {
                return error_setf(err, EINVAL, "LUKS key slots %d and %d "
                                  "overlap", j, i);
            }
        }
    }
    uint64_t work = luks_header_work(h, s);
    if (work > LUKS_MAX_WORK) {
        return error_setf(err, EINVAL, "LUKS key slots ask for %" PRIu64
                          " PBKDF2 blocks of work, more than the %llu "
                          "allowed", work, LUKS_MAX_WORK);
    }
    return 0;
}

int luks_slot_try(const LuksVolume *v, int i, const uint8_t *pass,
                  size_t passlen, LuksReadFn read_fn, void *opaque,
                  uint8_t *mk, Error *err)
{
    const LuksSlot *ks = &v->hdr.slots[i];
    size_t klen = v->spec.key_bytes;
    size_t mlen = luks_material_len(klen, LUKS_STRIPES);
    uint8_t dk[LUKS_MAX_KEY_BYTES], digest[LUKS_DIGEST_LEN];
    LuksCipher c;
    int ret = 0, found = 0;
    uint8_t *material = calloc(1, mlen);
    if (!material) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    /* Read what QEMU wrote (the unpadded length); the padding of an
     * unaligned size stays zero, as cryptsetup has it. */
    ret = read_fn(opaque, (uint64_t)ks->key_offset * LUKS_SECTOR_SIZE,
                  material, klen * LUKS_STRIPES, err);
    if (ret == 0 && luks_pbkdf2(v->spec.md, pass, passlen, ks->salt,
                                ks->iterations, dk, klen) < 0) {
        ret = error_setf(err, EIO, "PBKDF2 failed");
    }
    if (ret == 0) {
        ret = luks_cipher_init(&c, &v->spec, dk, err);
        if (ret == 0) {
            if (luks_cipher_run(&c, false, 0, material, mlen) < 0) {
                ret = error_setf(err, EIO, "Could not decrypt key slot %d",
                                 i);
            }
            luks_cipher_wipe(&c);
        }
    }
    if (ret == 0 && luks_af_merge(v->spec.md, material, klen, LUKS_STRIPES,
                                  mk) < 0) {
        ret = error_setf(err, EIO, "Could not merge key slot %d", i);
    }
    if (ret == 0 && luks_pbkdf2(v->spec.md, mk, klen, v->hdr.mk_salt,
                                v->hdr.mk_iterations, digest,
                                LUKS_DIGEST_LEN) < 0) {
        ret = error_setf(err, EIO, "PBKDF2 failed");
    }
    if (ret == 0) {
        found = CRYPTO_memcmp(digest, v->hdr.mk_digest, LUKS_DIGEST_LEN) == 0;
    }
    OPENSSL_cleanse(dk, sizeof(dk));
    OPENSSL_cleanse(material, mlen);
    free(material);
    return ret < 0 ? ret : found;
}

int luks_open(LuksReadFn read_fn, void *opaque, uint64_t area_len,
              const uint8_t *pass, size_t passlen, int flags,
              LuksVolume **out, Error *err)
{
    uint8_t raw[LUKS_HEADER_SIZE];
    uint8_t mk[LUKS_MAX_KEY_BYTES];
    LuksVolume *v = volume_new();
    if (!v) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = read_fn(opaque, 0, raw, sizeof(raw), err);
    if (ret == 0) {
        ret = luks_header_decode(raw, &v->hdr, err);
    }
    if (ret == 0) {
        ret = luks_spec_from_header(&v->hdr, &v->spec, err);
    }
    if (ret == 0) {
        ret = validate_header(&v->hdr, &v->spec, area_len, err);
    }
    if (ret == 0 && !(flags & LUKS_OPEN_NO_KEY)) {
        int found = 0;
        for (int i = 0; i < LUKS_NUM_SLOTS && found == 0; i++) {
            if (v->hdr.slots[i].active == LUKS_SLOT_ENABLED) {
                found = luks_slot_try(v, i, pass, passlen, read_fn, opaque,
                                      mk, err);
            }
        }
        if (found < 0) {
            ret = found;
        } else if (!found) {
            ret = error_setf(err, EACCES, "Invalid password, cannot unlock "
                             "any keyslot");
        } else {
            ret = luks_cipher_init(&v->cipher, &v->spec, mk, err);
            v->unlocked = ret == 0;
        }
    }
    OPENSSL_cleanse(mk, sizeof(mk));
    if (ret < 0) {
        luks_close(v);
        return ret;
    }
    *out = v;
    return 0;
}

uint64_t luks_payload_offset(const LuksVolume *v)
{
    return (uint64_t)v->hdr.payload_offset * LUKS_SECTOR_SIZE;
}

bool luks_is_unlocked(const LuksVolume *v)
{
    return v->unlocked;
}

int luks_encrypt(const LuksVolume *v, uint64_t first_sector, void *buf,
                 size_t len)
{
    if (!v->unlocked) {
        return -ENOKEY;
    }
    return luks_cipher_run(&v->cipher, true, first_sector, buf, len);
}

int luks_decrypt(const LuksVolume *v, uint64_t first_sector, void *buf,
                 size_t len)
{
    if (!v->unlocked) {
        return -ENOKEY;
    }
    return luks_cipher_run(&v->cipher, false, first_sector, buf, len);
}

json_t *luks_info(const LuksVolume *v)
{
    const LuksHeader *h = &v->hdr;
    const LuksSpec *s = &v->spec;
    char alg[16];
    snprintf(alg, sizeof(alg), "aes-%u", s->aes_bits);
    json_t *o = json_object();
    json_object_set_new(o, "cipher-alg", json_string(alg));
    json_object_set_new(o, "cipher-mode",
                        json_string(luks_mode_name(s->mode)));
    json_object_set_new(o, "ivgen-alg",
                        json_string(luks_ivgen_name(s->ivgen)));
    if (s->ivgen == LUKS_IV_ESSIV) {
        json_object_set_new(o, "ivgen-hash-alg", json_string(s->ivgen_hash));
    }
    json_object_set_new(o, "hash-alg", json_string(s->hash));
    json_object_set_new(o, "payload-offset",
                        json_integer((json_int_t)luks_payload_offset(v)));
    json_object_set_new(o, "master-key-iters",
                        json_integer(h->mk_iterations));
    json_object_set_new(o, "uuid", json_string(h->uuid));
    json_t *slots = json_array();
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *ks = &h->slots[i];
        json_t *so = json_object();
        bool active = ks->active == LUKS_SLOT_ENABLED;
        json_object_set_new(so, "active", json_boolean(active));
        if (active) {
            json_object_set_new(so, "iters", json_integer(ks->iterations));
            json_object_set_new(so, "stripes", json_integer(ks->stripes));
        }
        json_object_set_new(so, "key-offset",
                            json_integer((json_int_t)ks->key_offset *
                                         LUKS_SECTOR_SIZE));
        json_array_append_new(slots, so);
    }
    json_object_set_new(o, "slots", slots);
    return o;
}

int luks_get_passphrase(const char *id, const char *opt_name,
                        uint8_t **pass, size_t *len, Error *err)
{
    if (!id) {
        return error_setf(err, EINVAL, "Parameter '%s' is required for "
                          "cipher", opt_name);
    }
    return secret_lookup(id, pass, len, err);
}
