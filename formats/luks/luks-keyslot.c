/*
 * luks-keyslot.c - adding and erasing key slots of an open LUKS1 volume
 * (qemu-img amend's state/keyslot/new-secret/old-secret/iter-time).
 *
 * Invariants:
 *  - options are checked in QEMU's order with QEMU's messages, and every
 *    refusal comes before anything is written;
 *  - adding: the slot's key material is written and flushed before the
 *    header entry that activates it, so a crash leaves the slot inactive
 *    (its old material was unused) or active and complete;
 *  - erasing: the header entries turn inactive and are flushed before
 *    the material is overwritten with random bytes, so a crash never
 *    leaves an active slot whose material is gone;
 *  - only the 48-byte entries of the slots that change are rewritten.
 *    They lie in the first 4 KiB (one filesystem block); only slot 6's
 *    entry straddles two sectors, and a torn write of it yields a slot
 *    that does not open, never one that opens wrongly, while the other
 *    slots (at least one stays active without force) still open;
 *  - the master key, derived keys and passphrases are wiped after use.
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

/* Byte offset of slot i's entry in the on-disk header (LUKS1 spec). */
#define SLOT_ENTRY_OFF(i) (208 + (i) * 48)
#define SLOT_ENTRY_LEN 48

#define AMEND_ITER_TIME_DEFAULT 2000

typedef struct AmendOpts {
    bool activate;
    bool has_keyslot, has_iter_time;
    uint64_t keyslot;
    bool keyslot_negative;        /* given as "-N": QEMU shows it as u32 */
    uint64_t iter_time;
    const char *new_secret, *old_secret;
} AmendOpts;

static const char *const amend_keys[] = {
    "state", "keyslot", "new-secret", "old-secret", "iter-time", NULL,
};
/* Keys of `create` that cannot change afterwards. */
static const char *const create_only_keys[] = {
    "key-secret", "cipher-alg", "cipher-mode", "ivgen-alg",
    "ivgen-hash-alg", "hash-alg", "format", "size", NULL,
};

static bool in_list(const char *const *list, const char *name)
{
    for (int i = 0; list[i]; i++) {
        if (!strcmp(list[i], name)) {
            return true;
        }
    }
    return false;
}

static int refuse_unknown(const KVList *opts, const char *prefix,
                          Error *err)
{
    for (size_t i = 0; i < opts->n; i++) {
        const char *k = opts->items[i].key;
        if (in_list(amend_keys, k)) {
            continue;
        }
        if (in_list(create_only_keys, k)) {
            return error_setf(err, EINVAL, "Invalid parameter '%s%s': This "
                              "option is only supported for image creation",
                              prefix, k);
        }
        return error_setf(err, EINVAL, "Invalid parameter '%s%s'", prefix,
                          k);
    }
    return 0;
}

/* QEMU's numbers: decimal, octal or hex; "-N" wraps around. */
static int get_number(KVList *opts, const char *prefix, const char *name,
                      bool *has, uint64_t *out, bool *negative, Error *err)
{
    const char *v = kvlist_get(opts, name);
    *has = v != NULL;
    if (!v) {
        return 0;
    }
    const char *p = v;
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    char *end;
    errno = 0;
    unsigned long long n = strtoull(p, &end, 0);
    if (!*p || *end || errno) {
        return error_setf(err, EINVAL, "Parameter '%s%s' expects a number",
                          prefix, name);
    }
    *out = n;
    if (negative) {
        *negative = *p == '-';
    }
    return 0;
}

static int parse_opts(KVList *opts, const char *prefix, AmendOpts *o,
                      Error *err)
{
    memset(o, 0, sizeof(*o));
    int ret = refuse_unknown(opts, prefix, err);
    if (ret < 0) {
        return ret;
    }
    /* QEMU names these without the prefix. */
    const char *state = kvlist_get(opts, "state");
    if (!state) {
        return error_setf(err, EINVAL, "Parameter 'state' is missing");
    }
    if (!strcmp(state, "active")) {
        o->activate = true;
    } else if (strcmp(state, "inactive") != 0) {
        return error_setf(err, EINVAL, "Parameter 'state' does not accept "
                          "value '%s'", state);
    }
    o->new_secret = kvlist_get(opts, "new-secret");
    o->old_secret = kvlist_get(opts, "old-secret");
    ret = get_number(opts, prefix, "keyslot", &o->has_keyslot, &o->keyslot,
                     &o->keyslot_negative, err);
    if (ret == 0) {
        ret = get_number(opts, prefix, "iter-time", &o->has_iter_time,
                         &o->iter_time, NULL, err);
    }
    return ret;
}

static int check_keyslot_range(const AmendOpts *o, Error *err)
{
    if (o->has_keyslot && o->keyslot >= LUKS_NUM_SLOTS) {
        uint64_t shown = o->keyslot_negative ? (uint32_t)o->keyslot
                                             : o->keyslot;
        return error_setf(err, EINVAL, "Invalid keyslot %" PRIu64 " "
                          "specified, must be between 0 and %d", shown,
                          LUKS_NUM_SLOTS - 1);
    }
    return 0;
}

static bool slot_active(const LuksVolume *v, int i)
{
    return v->hdr.slots[i].active == LUKS_SLOT_ENABLED;
}

/* Writes the header entries of the slots flagged in `which` as they are
 * in h, one write covering them all, then flushes. */
static int write_slot_entries(const LuksHeader *h, const bool *which,
                              const LuksIO *io, Error *err)
{
    uint8_t raw[LUKS_HEADER_SIZE];
    int first = -1, last = -1;
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        if (which[i]) {
            first = first < 0 ? i : first;
            last = i;
        }
    }
    if (first < 0) {
        return 0;
    }
    luks_header_encode(h, raw);
    size_t off = SLOT_ENTRY_OFF(first);
    size_t len = SLOT_ENTRY_OFF(last) + SLOT_ENTRY_LEN - off;
    int ret = io->write(io->opaque, off, raw + off, len, err);
    if (ret == 0) {
        ret = io->flush(io->opaque, err);
    }
    return ret;
}

static int add_slot(LuksVolume *v, const AmendOpts *o, const LuksIO *io,
                    Error *err)
{
    if (!o->new_secret) {
        return error_setf(err, EINVAL, "'new-secret' is required to "
                          "activate a keyslot");
    }
    if (o->old_secret) {
        return error_setf(err, EINVAL, "'old-secret' must not be given "
                          "when activating keyslots");
    }
    int ret = check_keyslot_range(o, err);
    if (ret < 0) {
        return ret;
    }
    int slot = -1;
    if (o->has_keyslot) {
        slot = (int)o->keyslot;
        if (slot_active(v, slot)) {
            return error_setf(err, EBUSY, "Refusing to overwrite active "
                              "keyslot %d - please erase it first", slot);
        }
    } else {
        for (int i = 0; i < LUKS_NUM_SLOTS && slot < 0; i++) {
            slot = slot_active(v, i) ? -1 : i;
        }
        if (slot < 0) {
            return error_setf(err, ENOSPC, "Can't add a keyslot - all "
                              "keyslots are in use");
        }
    }
    uint8_t *pass = NULL;
    size_t plen = 0;
    ret = secret_lookup(o->new_secret, &pass, &plen, err);
    if (ret < 0) {
        return ret;
    }
    LuksSlot saved = v->hdr.slots[slot];
    ret = luks_slot_write(v, slot, v->cipher.key, pass, plen,
                          o->has_iter_time ? o->iter_time
                                           : AMEND_ITER_TIME_DEFAULT,
                          io->write, io->opaque, err);
    secret_free(pass, plen);
    if (ret == 0) {
        ret = io->flush(io->opaque, err);
    }
    if (ret == 0) {
        bool which[LUKS_NUM_SLOTS] = { false };
        which[slot] = true;
        ret = write_slot_entries(&v->hdr, which, io, err);
    }
    if (ret < 0) {
        /* The slot stays inactive in memory too; whether the entry
         * reached the disk is unknown, but either state is consistent. */
        v->hdr.slots[slot] = saved;
    }
    return ret;
}

/* Which active slots pass opens (only `only` when >= 0). */
static int match_slots(const LuksVolume *v, const uint8_t *pass,
                       size_t plen, int only, const LuksIO *io, bool *match,
                       int *count, Error *err)
{
    uint8_t mk[LUKS_MAX_KEY_BYTES];
    int ret = 0;
    *count = 0;
    for (int i = 0; i < LUKS_NUM_SLOTS && ret >= 0; i++) {
        match[i] = false;
        if ((only >= 0 && i != only) || !slot_active(v, i)) {
            continue;
        }
        ret = luks_slot_try(v, i, pass, plen, io->read, io->opaque, mk,
                            err);
        if (ret > 0) {
            match[i] = true;
            (*count)++;
        }
    }
    OPENSSL_cleanse(mk, sizeof(mk));
    return ret < 0 ? ret : 0;
}

/* Overwrites slot i's key material with random bytes. */
static int wipe_material(const LuksVolume *v, int i, const LuksIO *io,
                         Error *err)
{
    size_t mlen = luks_material_len(v->spec.key_bytes, LUKS_STRIPES);
    uint8_t *junk = malloc(mlen);
    if (!junk) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = 0;
    if (RAND_bytes(junk, (int)mlen) != 1) {
        ret = error_setf(err, EIO, "Could not get random bytes");
    }
    if (ret == 0) {
        ret = io->write(io->opaque,
                        (uint64_t)v->hdr.slots[i].key_offset *
                        LUKS_SECTOR_SIZE, junk, mlen, err);
    }
    free(junk);
    return ret;
}

static int erase_slots(LuksVolume *v, const AmendOpts *o, bool force,
                       const LuksIO *io, Error *err)
{
    if (o->new_secret) {
        return error_setf(err, EINVAL, "'new-secret' must not be given "
                          "when erasing keyslots");
    }
    if (o->has_iter_time) {
        return error_setf(err, EINVAL, "'iter-time' must not be given "
                          "when erasing keyslots");
    }
    uint8_t *pass = NULL;
    size_t plen = 0;
    int ret = 0;
    if (o->old_secret) {
        ret = secret_lookup(o->old_secret, &pass, &plen, err);
    }
    if (ret == 0) {
        ret = check_keyslot_range(o, err);
    }
    if (ret == 0 && !o->has_keyslot && !o->old_secret) {
        ret = error_setf(err, EINVAL, "To erase keyslot(s), either "
                         "explicit keyslot index or the password currently "
                         "contained in them must be given");
    }
    int slot = o->has_keyslot ? (int)o->keyslot : -1;
    bool erase[LUKS_NUM_SLOTS] = { false };
    int count = 0;
    if (ret == 0 && o->old_secret) {
        ret = match_slots(v, pass, plen, slot, io, erase, &count, err);
        if (ret == 0 && count == 0) {
            ret = slot >= 0 ?
                error_setf(err, EACCES, "Given keyslot %d doesn't contain "
                           "the given old password for erase operation",
                           slot) :
                error_setf(err, EACCES, "No keyslots match given (old) "
                           "password for erase operation");
        }
    } else if (ret == 0) {
        if (!slot_active(v, slot)) {
            /* QEMU's message ends with a blank. */
            ret = error_setf(err, ENOENT, "Given keyslot %d is already "
                             "erased (inactive) ", slot);
        }
        erase[slot] = true;
    }
    secret_free(pass, plen);
    if (ret < 0) {
        return ret;
    }
    int left = 0;
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        left += slot_active(v, i) && !erase[i];
    }
    if (left == 0 && !force) {
        return slot >= 0 ?
            error_setf(err, EPERM, "Attempt to erase the only active "
                       "keyslot %d which will erase all the data in the "
                       "image irreversibly - refusing operation", slot) :
            error_setf(err, EPERM, "All the active keyslots match the (old) "
                       "password that was given and erasing them will "
                       "erase all the data in the image irreversibly - "
                       "refusing operation");
    }

    LuksHeader h = v->hdr;
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        if (erase[i]) {
            /* As QEMU leaves an erased entry: offset and stripes kept. */
            h.slots[i].active = LUKS_SLOT_DISABLED;
            h.slots[i].iterations = 0;
            memset(h.slots[i].salt, 0, LUKS_SALT_LEN);
        }
    }
    ret = write_slot_entries(&h, erase, io, err);
    if (ret < 0) {
        return ret;
    }
    v->hdr = h;
    for (int i = 0; i < LUKS_NUM_SLOTS && ret == 0; i++) {
        if (erase[i]) {
            ret = wipe_material(v, i, io, err);
        }
    }
    if (ret == 0) {
        ret = io->flush(io->opaque, err);
    }
    return ret;
}

int luks_amend(LuksVolume *v, KVList *opts, const char *prefix, bool force,
               const LuksIO *io, Error *err)
{
    AmendOpts o;
    int ret = parse_opts(opts, prefix, &o, err);
    if (ret < 0) {
        return ret;
    }
    if (!v->unlocked) {
        return error_setf(err, ENOKEY, "The LUKS volume is not unlocked");
    }
    return o.activate ? add_slot(v, &o, io, err)
                      : erase_slots(v, &o, force, io, err);
}
