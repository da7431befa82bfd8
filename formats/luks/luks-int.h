/*
 * luks-int.h - the pieces of formats/luks/ shared between its files:
 * the decoded LUKS1 header, the cipher specification it names, the
 * sector cipher, the anti-forensic splitter and PBKDF2.
 */
#ifndef IMGTOOL_FORMATS_LUKS_INT_H
#define IMGTOOL_FORMATS_LUKS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "formats/luks/luks.h"

#define LUKS_MAGIC "LUKS\xba\xbe"
#define LUKS_MAGIC_LEN 6
#define LUKS_HEADER_SIZE 592
#define LUKS_NUM_SLOTS 8
#define LUKS_STRIPES 4000
#define LUKS_SALT_LEN 32
#define LUKS_DIGEST_LEN 20
#define LUKS_UUID_LEN 40
#define LUKS_NAME_LEN 32
#define LUKS_SLOT_ENABLED 0x00AC71F3u
#define LUKS_SLOT_DISABLED 0x0000DEADu
#define LUKS_MAX_KEY_BYTES 64
/* Key material areas start and are sized in multiples of this, as
 * QEMU and cryptsetup lay them out. */
#define LUKS_ALIGN 4096
#define LUKS_MIN_ITERATIONS 1000

typedef struct LuksSlot {
    uint32_t active;
    uint32_t iterations;
    uint8_t salt[LUKS_SALT_LEN];
    uint32_t key_offset;     /* sectors */
    uint32_t stripes;
} LuksSlot;

/* The on-disk header in host byte order; strings NUL-terminated. */
typedef struct LuksHeader {
    uint16_t version;
    char cipher_name[LUKS_NAME_LEN + 1];
    char cipher_mode[LUKS_NAME_LEN + 1];
    char hash_spec[LUKS_NAME_LEN + 1];
    uint32_t payload_offset;  /* sectors */
    uint32_t key_bytes;
    uint8_t mk_digest[LUKS_DIGEST_LEN];
    uint8_t mk_salt[LUKS_SALT_LEN];
    uint32_t mk_iterations;
    char uuid[LUKS_UUID_LEN + 1];
    LuksSlot slots[LUKS_NUM_SLOTS];
} LuksHeader;

void luks_header_encode(const LuksHeader *h, uint8_t out[LUKS_HEADER_SIZE]);
/* Checks magic and version; does not judge the contents. */
int luks_header_decode(const uint8_t in[LUKS_HEADER_SIZE], LuksHeader *h,
                       Error *err);

typedef enum { LUKS_MODE_CBC, LUKS_MODE_XTS } LuksMode;
typedef enum { LUKS_IV_PLAIN, LUKS_IV_PLAIN64, LUKS_IV_ESSIV } LuksIvgen;

/* A cipher specification, as names and as OpenSSL objects. */
typedef struct LuksSpec {
    unsigned aes_bits;          /* 128, 192, 256 */
    LuksMode mode;
    LuksIvgen ivgen;
    const char *ivgen_hash;     /* essiv's hash (or QEMU's ":hash" on
                                   another ivgen), NULL if none */
    const EVP_MD *ivgen_md;     /* essiv only */
    const char *hash;
    const EVP_MD *md;
    size_t key_bytes;           /* master key length */
} LuksSpec;

int luks_spec_from_params(const LuksCreateParams *p, LuksSpec *s,
                          Error *err);
int luks_spec_from_header(const LuksHeader *h, LuksSpec *s, Error *err);
void luks_spec_to_header(const LuksSpec *s, LuksHeader *h);
const char *luks_mode_name(LuksMode m);
const char *luks_ivgen_name(LuksIvgen g);

/* Bytes of key material one slot holds: key_bytes * stripes rounded up
 * to whole sectors (the cipher works on sectors). */
size_t luks_material_len(size_t key_bytes, uint32_t stripes);

/* An AES sector cipher keyed once; luks_cipher_run() is thread-safe. */
typedef struct LuksCipher {
    LuksSpec spec;
    const EVP_CIPHER *cipher;
    const EVP_CIPHER *essiv_cipher;
    const EVP_CIPHER *tweak_cipher;  /* manual XTS: ECB for the tweak */
    bool manual_xts;
    uint8_t key[LUKS_MAX_KEY_BYTES];
    uint8_t essiv_key[EVP_MAX_MD_SIZE];
} LuksCipher;

int luks_cipher_init(LuksCipher *c, const LuksSpec *s, const uint8_t *key,
                     Error *err);
int luks_cipher_run(const LuksCipher *c, bool encrypt, uint64_t sector,
                    uint8_t *buf, size_t len);
void luks_cipher_wipe(LuksCipher *c);

/* Anti-forensic split of key into stripes * keylen bytes, and back. */
int luks_af_split(const EVP_MD *md, const uint8_t *key, size_t keylen,
                  uint32_t stripes, uint8_t *out);
int luks_af_merge(const EVP_MD *md, const uint8_t *in, size_t keylen,
                  uint32_t stripes, uint8_t *key);

int luks_pbkdf2(const EVP_MD *md, const uint8_t *pass, size_t passlen,
                const uint8_t *salt, uint32_t iterations, uint8_t *out,
                size_t outlen);
/* PBKDF2 iterations per second of CPU time here, for md producing
 * outlen bytes (measured, as QEMU sizes iterations by time). */
int luks_pbkdf2_rate(const EVP_MD *md, size_t outlen, uint64_t *per_sec,
                     Error *err);

/* A volume: its header as last written, and the sector cipher keyed
 * with the master key once a slot has been unlocked. */
struct LuksVolume {
    LuksHeader hdr;
    LuksSpec spec;
    bool unlocked;
    LuksCipher cipher;        /* cipher.key is the master key */
};

/* PBKDF2 blocks of work opening every active slot of h costs (slot
 * derivation plus the master key digest each): at most LUKS_MAX_WORK in
 * a header we accept or write. */
uint64_t luks_header_work(const LuksHeader *h, const LuksSpec *s);

/* Makes slot i (inactive) hold master key mk under pass, PBKDF2 sized to
 * ms of CPU: writes its key material through write_fn and updates
 * v->hdr.slots[i] in memory only (active, iterations, salt); the caller
 * writes the header.  On failure v->hdr.slots[i] may hold a new salt and
 * count but is still inactive. */
int luks_slot_write(LuksVolume *v, int i, const uint8_t *mk,
                    const uint8_t *pass, size_t passlen, uint64_t ms,
                    LuksWriteFn write_fn, void *opaque, Error *err);
/* Tries pass on active slot i: 1 if it opens it (mk receives the master
 * key), 0 if not, negative on error. */
int luks_slot_try(const LuksVolume *v, int i, const uint8_t *pass,
                  size_t passlen, LuksReadFn read_fn, void *opaque,
                  uint8_t *mk, Error *err);

#endif
