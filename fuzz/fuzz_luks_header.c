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
 * input, so the usual layouts validate and the key paths run.
 *
 * Any crash, sanitizer report, leak or timeout is a bug in
 * formats/luks/: every header must be refused or handled in bounded
 * time and memory.
 */
#include <errno.h>
#include <string.h>

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
} Area;

/* Past the input the area reads as zeroes (a truncated seed). */
static int area_read(void *opaque, uint64_t off, void *buf, size_t len,
                     Error *err)
{
    const Area *a = opaque;
    memset(buf, 0, len);
    if (off < a->size) {
        size_t n = a->size - off < len ? (size_t)(a->size - off) : len;
        memcpy(buf, a->data + off, n);
    }
    return 0;
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
    Area a = { data, size };
    LuksVolume *v = NULL;
    Error err = { 0 };

    if (luks_open(area_read, &a, size, NULL, 0, LUKS_OPEN_NO_KEY, &v,
                  &err) == 0) {
        use_volume(v);
        luks_close(v);
        v = NULL;
    }
    error_clear(&err);
    uint64_t area = size > FUZZ_LUKS_AREA ? size : FUZZ_LUKS_AREA;
    if (luks_open(area_read, &a, area, NULL, 0, LUKS_OPEN_NO_KEY, &v,
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
    if (luks_open(area_read, &a, area, fuzz_pass, sizeof(fuzz_pass) - 1, 0,
                  &v, &err) == 0) {
        use_volume(v);
        luks_close(v);
    }
    return 0;
}
