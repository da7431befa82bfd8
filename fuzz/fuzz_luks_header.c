/*
 * fuzz_luks_header.c - libFuzzer harness: an arbitrary LUKS1 header
 * area, parsed and validated without a key (as `info` does) and then,
 * when the header asks for little enough PBKDF2 work, unlocked with a
 * passphrase (as every data open does), over an in-memory buffer.
 *
 * The input is the start of the header area (the seeds in
 * fuzz/corpus/luks/ are the first 4 KiB of volumes made by imgtool and
 * qemu-img).  It is opened twice without a key: once with the area as
 * long as the input, so key material past the end is refused, and once
 * with the area QEMU's default layout needs, reading zeroes past the
 * input, so the usual layouts validate and the key paths run.  A volume
 * that unlocks then has key slots erased through luks_amend (the slot
 * the input's last byte names, and every slot the passphrase opens),
 * its writes checked against the area and dropped.
 *
 * Any crash, sanitizer report, leak or timeout is a bug in
 * formats/luks/: every header must be refused or handled in bounded
 * time and memory.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "block/core/secret.h"
#include "formats/luks/luks-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The header area of QEMU's default layout (aes-256-xts): 4 KiB, then 8
 * slots of 250 KiB of key material. */
#define FUZZ_LUKS_AREA 2068480u

/* luks_open bounds a header's PBKDF2 work by LUKS_MAX_WORK, about a
 * minute of CPU: acceptable for a user opening one hostile image, far
 * too slow for a fuzzer that must run thousands of inputs a minute (a
 * header claiming 2^26 iterations in one slot is valid and would hit
 * libFuzzer's timeout).  So the keyed open runs only when the header's
 * total work, as luks_open would compute it, is at most this many
 * HMAC blocks (a few ms); the NO_KEY opens still validate every header,
 * including the ones that bound refuses.  The seeds are made with
 * iter-time=1 (1000 to 4000 iterations a slot) so they stay below it. */
#define FUZZ_LUKS_MAX_WORK (1u << 15)

static const uint8_t fuzz_pass[] = "fuzz";

typedef struct Area {
    const uint8_t *data;
    size_t size;
    uint64_t len;       /* the area the volume was opened with */
} Area;

/* Past the input the area reads as zeroes (a truncated seed). */
static int area_read(void *opaque, uint64_t off, void *buf, size_t len,
                     Error *err)
{
    const Area *a = opaque;
    if (off > a->len || len > a->len - off) {
        return error_setf(err, EINVAL, "read past the header area");
    }
    memset(buf, 0, len);
    if (off < a->size) {
        size_t n = a->size - off < len ? (size_t)(a->size - off) : len;
        memcpy(buf, a->data + off, n);
    }
    return 0;
}

static int area_write(void *opaque, uint64_t off, const void *buf,
                      size_t len, Error *err)
{
    const Area *a = opaque;
    if (off > a->len || len > a->len - off) {
        return error_setf(err, EINVAL, "write past the header area");
    }
    return 0;
}

static int area_flush(void *opaque, Error *err)
{
    return 0;
}

/* Only erasing is fuzzed: adding sizes PBKDF2 by measuring the CPU,
 * which is slow and not about the header.  force lets the last slot go
 * too. */
static void erase_slots(LuksVolume *v, Area *a, uint8_t which)
{
    static bool defined;
    if (!defined) {
        Error e = { 0 };
        secret_define("secret,id=fuzz,data=fuzz", &e);
        defined = true;
    }
    char opts[2][64];
    snprintf(opts[0], sizeof(opts[0]), "state=inactive,keyslot=%u",
             which % (LUKS_NUM_SLOTS + 1));
    snprintf(opts[1], sizeof(opts[1]), "state=inactive,old-secret=fuzz");
    LuksIO io = { area_read, area_write, area_flush, a };
    for (int i = 0; i < 2; i++) {
        KVList kv = { 0 };
        Error err = { 0 };
        if (kvlist_parse(&kv, opts[i], NULL, &err) == 0) {
            luks_amend(v, &kv, "", i == 0, &io, &err);
        }
        kvlist_free(&kv);
    }
}

static void use_volume(LuksVolume *v)
{
    json_t *j = luks_info(v);
    char *s = json_dumps(j, 0);
    free(s);
    json_decref(j);
    (void)luks_payload_offset(v);
    if (luks_is_unlocked(v)) {
        uint8_t sectors[2 * LUKS_SECTOR_SIZE] = { 0 };
        luks_encrypt(v, 7, sectors, sizeof(sectors));
        luks_decrypt(v, 7, sectors, sizeof(sectors));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Area a = { data, size, size };
    LuksVolume *v = NULL;
    Error err = { 0 };

    if (luks_open(area_read, &a, a.len, NULL, 0, LUKS_OPEN_NO_KEY, &v,
                  &err) == 0) {
        use_volume(v);
        luks_close(v);
        v = NULL;
    }
    error_clear(&err);
    a.len = size > FUZZ_LUKS_AREA ? size : FUZZ_LUKS_AREA;
    if (luks_open(area_read, &a, a.len, NULL, 0, LUKS_OPEN_NO_KEY, &v,
                  &err) != 0) {
        return 0;
    }
    use_volume(v);
    uint64_t work = luks_header_work(&v->hdr, &v->spec);
    luks_close(v);
    v = NULL;
    if (work > FUZZ_LUKS_MAX_WORK) {
        return 0;
    }
    error_clear(&err);
    if (luks_open(area_read, &a, a.len, fuzz_pass, sizeof(fuzz_pass) - 1, 0,
                  &v, &err) == 0) {
        use_volume(v);
        erase_slots(v, &a, size ? data[size - 1] : 0);
        luks_close(v);
    }
    return 0;
}
