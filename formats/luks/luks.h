/*
 * luks.h - LUKS1 volumes: the header, key slots and sector encryption,
 * independent of where the header lives.
 *
 * Two users: the `luks` image format (header at offset 0 of the file,
 * payload after it) and qcow2's encrypt.format=luks (header in clusters
 * named by a header extension, data clusters encrypted in place).  Both
 * hand us a reader/writer callback over "the header area" and then ask
 * for sectors to be encrypted or decrypted.
 *
 * Invariants:
 *  - a header is validated completely (names, key size, iteration
 *    counts, stripes, key material placement) before any key work, so a
 *    hostile header costs bounded time and memory;
 *  - the master key, derived keys and anti-forensic material are wiped
 *    (OPENSSL_cleanse) before their memory is released;
 *  - the volume is immutable after open/create, so encrypt/decrypt are
 *    thread-safe.
 */
#ifndef IMGTOOL_FORMATS_LUKS_H
#define IMGTOOL_FORMATS_LUKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "block/driver.h"

#define LUKS_SECTOR_SIZE 512

/* Bounds on the PBKDF2 work a header may ask for, so that a hostile
 * header costs at most about a minute of CPU.  QEMU's and cryptsetup's
 * default (iter-time 2000 ms) give a few million iterations per slot on
 * current hardware (2.1M for sha256 with a 64-byte key here).
 * LUKS_MAX_ITERATIONS caps one slot or the master key digest (16x that
 * default); LUKS_MAX_WORK caps the sum, over every active slot, of
 * slot iterations times PBKDF2 output blocks plus the master key digest
 * iterations (each slot tried costs both): 2^28 HMAC blocks, about 60 s
 * here, enough for eight default slots made on a 2x faster machine. */
#define LUKS_MAX_ITERATIONS (1u << 26)
#define LUKS_MAX_WORK (1ull << 28)

/* What `qemu-img create -f luks -o ...` takes (qcow2 uses the same
 * names after "encrypt.").  Empty strings mean "the default". */
typedef struct LuksCreateParams {
    char cipher_alg[32];      /* aes-128 aes-192 aes-256 (aes-256) */
    char cipher_mode[32];     /* xts cbc (xts) */
    char ivgen_alg[32];       /* plain plain64 essiv (plain64) */
    char ivgen_hash_alg[32];  /* essiv's hash (sha256) */
    char hash_alg[32];        /* md5 sha1 sha224 sha256 sha384 sha512
                                 (sha256) */
    uint64_t iter_time_ms;    /* time to spend in PBKDF2 (2000) */
} LuksCreateParams;

/* Reads "<prefix>cipher-alg", ... "<prefix>iter-time" from opts (marking
 * them used) and checks that the combination is one we can create. */
int luks_params_parse(KVList *opts, const char *prefix, LuksCreateParams *p,
                      Error *err);

/* Bytes from the start of the header to the end of the last key slot's
 * material: what a volume made with p needs before its payload (the
 * luks format's payload offset; qcow2's crypto header length). */
int luks_header_length(const LuksCreateParams *p, uint64_t *len,
                       Error *err);

/* Callbacks over the header area, offsets relative to its start. */
typedef int (*LuksReadFn)(void *opaque, uint64_t off, void *buf, size_t len,
                          Error *err);
typedef int (*LuksWriteFn)(void *opaque, uint64_t off, const void *buf,
                           size_t len, Error *err);

typedef struct LuksVolume LuksVolume;

/* Makes a new volume: random master key, key slot 0 unlocked by
 * passphrase, PBKDF2 iterations sized to p->iter_time_ms.  Writes the
 * key material and then the header through write_fn
 * (luks_header_length() bytes at most; gaps are not written).  The
 * returned volume is unlocked.  The header records the payload right
 * after the key material (as QEMU does, also inside qcow2). */
int luks_create(const LuksCreateParams *p, const uint8_t *pass,
                size_t passlen, LuksWriteFn write_fn, void *opaque,
                LuksVolume **out, Error *err);

enum {
    /* Parse and validate the header only (info): no passphrase needed,
     * encrypt/decrypt fail with -ENOKEY. */
    LUKS_OPEN_NO_KEY = 1 << 0,
};

/* Reads and validates the header through read_fn; area_len is how many
 * bytes the header area holds (key material must fit in it; UINT64_MAX
 * if unknown).  Unless LUKS_OPEN_NO_KEY, tries every active key slot
 * with the passphrase and fails with -EACCES "Invalid password, cannot
 * unlock any keyslot" when none opens. */
int luks_open(LuksReadFn read_fn, void *opaque, uint64_t area_len,
              const uint8_t *pass, size_t passlen, int flags,
              LuksVolume **out, Error *err);

/* Wipes the keys and frees the volume (NULL is fine). */
void luks_close(LuksVolume *v);

/* Where the encrypted payload starts, in bytes from the header start. */
uint64_t luks_payload_offset(const LuksVolume *v);
bool luks_is_unlocked(const LuksVolume *v);

/* In-place encryption of len bytes (a multiple of LUKS_SECTOR_SIZE) that
 * are the sectors first_sector, first_sector + 1, ...; the sector number
 * is what the IV generator sees.  Thread-safe.  -ENOKEY when the volume
 * was opened without a key, -EINVAL for a bad length, -EIO when the
 * cipher fails. */
int luks_encrypt(const LuksVolume *v, uint64_t first_sector, void *buf,
                 size_t len);
int luks_decrypt(const LuksVolume *v, uint64_t first_sector, void *buf,
                 size_t len);

/* Key slot management (qemu-img amend), luks-keyslot.c.  The callbacks
 * reach the header area of an open volume; flush makes what was written
 * durable. */
typedef int (*LuksFlushFn)(void *opaque, Error *err);
typedef struct LuksIO {
    LuksReadFn read;
    LuksWriteFn write;
    LuksFlushFn flush;
    void *opaque;
} LuksIO;

/* Applies qemu-img amend's key slot options "state" (active or
 * inactive, required), "keyslot", "new-secret", "old-secret" and
 * "iter-time" from opts to an unlocked volume, with QEMU's checks and
 * messages; any other key is refused.  prefix is how the user named them
 * ("encrypt." for qcow2), for messages.  Activating fills the given or
 * the first free slot with the passphrase of new-secret; erasing clears
 * the given slot or every slot old-secret opens, and refuses to leave no
 * active slot unless force.  On error nothing on disk or in v has
 * changed that a reader would see.  Crash-safe: a new slot's material is
 * durable before the header names it; an erased slot is inactive on disk
 * before its material is wiped.  The master key and the cipher stay as
 * they are, so encrypt/decrypt may run meanwhile; luks_info must not. */
int luks_amend(LuksVolume *v, KVList *opts, const char *prefix, bool force,
               const LuksIO *io, Error *err);

/* The format-specific description qemu-img prints for LUKS ("data" of
 * the luks format, "encrypt" of qcow2 without the "format" key):
 * cipher-alg, cipher-mode, ivgen-alg, [ivgen-hash-alg,] hash-alg,
 * payload-offset, master-key-iters, uuid, slots[]. */
json_t *luks_info(const LuksVolume *v);

/* The passphrase named by a key-secret option.  A NULL id gives QEMU's
 * "Parameter '<opt_name>' is required for cipher".  Free the result with
 * secret_free(). */
int luks_get_passphrase(const char *id, const char *opt_name,
                        uint8_t **pass, size_t *len, Error *err);

#endif
