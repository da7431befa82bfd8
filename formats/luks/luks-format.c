/*
 * luks-format.c - the `luks` image format: a raw LUKS1 volume, header and
 * key material first, then the encrypted guest data.  Guest sector N is
 * encrypted with IV N (sectors count from the payload start).
 *
 * The passphrase comes from the secret named by key-secret=ID.  A
 * read-only open that does not want a backing chain is one that only
 * describes the image (info, or sizing a would-be backing file): like
 * qemu-img's no-I/O opens it reads the header without unlocking a key
 * slot, and any data request then fails with ENOKEY.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/secret.h"
#include "formats/luks/luks.h"

/* Encrypted writes go through a bounce buffer of at most this much. */
#define LUKS_BOUNCE_MAX (1024 * 1024)

typedef struct LuksFormatState {
    LuksVolume *vol;
    uint64_t payload;
} LuksFormatState;

static int luks_fmt_probe(const uint8_t *buf, size_t len,
                          const char *filename)
{
    return len >= 6 && memcmp(buf, "LUKS\xba\xbe", 6) == 0 ? 100 : 0;
}

static int file_read(void *opaque, uint64_t off, void *buf, size_t len,
                     Error *err)
{
    int ret = block_pread_zero_tail(opaque, off, len, buf);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not read the LUKS header: %s",
                          strerror(-ret));
    }
    return 0;
}

static int file_write(void *opaque, uint64_t off, const void *buf,
                      size_t len, Error *err)
{
    int ret = block_pwrite(opaque, off, len, buf, 0);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not write the LUKS header: %s",
                          strerror(-ret));
    }
    return 0;
}

static int file_flush(void *opaque, Error *err)
{
    int ret = block_flush(opaque);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not flush the LUKS header: %s",
                          strerror(-ret));
    }
    return 0;
}

static int luks_fmt_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    LuksFormatState *s = n->opaque;
    const char *id = kvlist_get(opts, "key-secret");
    bool header_only = !(flags & BLOCK_O_RDWR) &&
                       (flags & BLOCK_O_NO_BACKING);
    uint8_t *pass = NULL;
    size_t plen = 0;
    int ret;

    int64_t flen = block_get_length(block_file(n));
    if (flen < 0) {
        return error_setf(err, (int)-flen, "Could not get the size of '%s'",
                          n->filename);
    }
    if (!header_only) {
        ret = luks_get_passphrase(id, "key-secret", &pass, &plen, err);
        if (ret < 0) {
            return ret;
        }
    }
    ret = luks_open(file_read, block_file(n), (uint64_t)flen, pass, plen,
                    header_only ? LUKS_OPEN_NO_KEY : 0, &s->vol, err);
    secret_free(pass, plen);
    if (ret < 0) {
        return ret;
    }
    s->payload = luks_payload_offset(s->vol);
    if (s->payload > (uint64_t)flen) {
        luks_close(s->vol);
        s->vol = NULL;
        return error_setf(err, EINVAL, "LUKS payload offset %" PRIu64
                          " is beyond the end of the file (%" PRId64 ")",
                          s->payload, flen);
    }
    n->request_alignment = block_file(n)->request_alignment > LUKS_SECTOR_SIZE ?
                           block_file(n)->request_alignment : LUKS_SECTOR_SIZE;
    return 0;
}

static void luks_fmt_close(BlockNode *n)
{
    LuksFormatState *s = n->opaque;
    luks_close(s->vol);
    s->vol = NULL;
}

static int64_t luks_fmt_get_length(BlockNode *n)
{
    LuksFormatState *s = n->opaque;
    int64_t flen = block_get_length(block_file(n));
    if (flen < 0) {
        return flen;
    }
    if ((uint64_t)flen <= s->payload) {
        return 0;
    }
    /* Whole sectors, as QEMU shows a file that ends mid-sector. */
    uint64_t len = (uint64_t)flen - s->payload;
    return (int64_t)((len + LUKS_SECTOR_SIZE - 1) &
                     ~(uint64_t)(LUKS_SECTOR_SIZE - 1));
}

static int luks_fmt_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    LuksFormatState *s = n->opaque;
    if (!luks_is_unlocked(s->vol)) {
        return -ENOKEY;
    }
    int ret = block_pread_zero_tail(block_file(n), s->payload + off, len, buf);
    if (ret < 0) {
        return ret;
    }
    return luks_decrypt(s->vol, off / LUKS_SECTOR_SIZE, buf, len);
}

static int luks_fmt_pwrite(BlockNode *n, uint64_t off, size_t len,
                           const void *buf, int flags)
{
    LuksFormatState *s = n->opaque;
    if (!luks_is_unlocked(s->vol)) {
        return -ENOKEY;
    }
    size_t cap = len < LUKS_BOUNCE_MAX ? len : LUKS_BOUNCE_MAX;
    uint8_t *bounce = malloc(cap ? cap : 1);
    if (!bounce) {
        return -ENOMEM;
    }
    int ret = 0;
    for (size_t done = 0; done < len && ret == 0;) {
        size_t now = len - done < cap ? len - done : cap;
        memcpy(bounce, (const uint8_t *)buf + done, now);
        ret = luks_encrypt(s->vol, (off + done) / LUKS_SECTOR_SIZE, bounce,
                           now);
        if (ret == 0) {
            ret = block_pwrite(block_file(n), s->payload + off + done, now, bounce,
                               flags);
        }
        done += now;
    }
    free(bounce);
    return ret;
}

static int luks_fmt_truncate(BlockNode *n, uint64_t size, bool exact,
                             PreallocMode pm, Error *err)
{
    LuksFormatState *s = n->opaque;
    if (size > UINT64_MAX - s->payload) {
        return error_setf(err, EFBIG, "Image size is too large");
    }
    return block_truncate(block_file(n), s->payload + size, exact, pm, err);
}

static json_t *luks_fmt_get_format_info(BlockNode *n)
{
    LuksFormatState *s = n->opaque;
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("luks"));
    json_object_set_new(o, "data", luks_info(s->vol));
    return o;
}

static void luks_fmt_get_info_extra(BlockNode *n, BlockInfoExtra *out)
{
    memset(out, 0, sizeof(*out));
    out->encrypted = true;
}

/* What create and measure take from the options. */
typedef struct CreatePlan {
    LuksCreateParams p;
    PreallocMode pm;
    uint8_t *pass;
    size_t plen;
    uint64_t hlen;      /* header length: where the payload starts */
} CreatePlan;

/* Everything create and measure refuse before touching a disk.  On
 * failure pl->pass is NULL; else the caller frees it with secret_free. */
static int parse_create_opts(KVList *opts, CreatePlan *pl, Error *err)
{
    const char *pa = kvlist_get(opts, "preallocation");
    pl->pm = PREALLOC_OFF;
    if (pa && (prealloc_parse(pa, &pl->pm) < 0 ||
               pl->pm == PREALLOC_METADATA)) {
        return error_setf(err, EINVAL, "Invalid preallocation mode: '%s'",
                          pa);
    }
    kvlist_get(opts, "size");
    kvlist_get(opts, "nocow");
    kvlist_get(opts, "extent_size_hint");
    int ret = luks_get_passphrase(kvlist_get(opts, "key-secret"),
                                  "key-secret", &pl->pass, &pl->plen, err);
    if (ret < 0) {
        return ret;
    }
    ret = luks_params_parse(opts, "", &pl->p, err);
    if (ret == 0) {
        ret = luks_header_length(&pl->p, &pl->hlen, err);
    }
    if (ret < 0) {
        secret_free(pl->pass, pl->plen);
        pl->pass = NULL;
    }
    return ret;
}

static int luks_fmt_create(const char *filename, uint64_t size, KVList *opts,
                           Error *err)
{
    CreatePlan pl = { 0 };
    int ret = parse_create_opts(opts, &pl, err);
    if (ret < 0) {
        return ret;
    }
    if (size > (uint64_t)INT64_MAX - pl.hlen) {
        ret = error_setf(err, EFBIG, "Image size is too large");
    }
    if (ret == 0) {
        /* opts hold the file's hints (nocow, extent_size_hint) */
        ret = block_create_file(filename, pl.hlen + size, pl.pm, opts, err);
    }
    BlockNode *file = NULL;
    if (ret == 0) {
        KVList empty = { 0 };
        file = block_open_protocol(filename, &empty, BLOCK_O_RDWR, err);
        ret = file ? 0 : -(err && err->code ? err->code : EIO);
    }
    if (ret == 0) {
        LuksVolume *vol = NULL;
        ret = luks_create(&pl.p, pl.pass, pl.plen, file_write, file, &vol,
                          err);
        luks_close(vol);
    }
    if (ret == 0) {
        ret = block_flush(file);
        if (ret < 0) {
            error_setf(err, -ret, "Could not flush '%s': %s", filename,
                       strerror(-ret));
        }
    }
    block_close(file);
    secret_free(pl.pass, pl.plen);
    return ret;
}

static int luks_fmt_measure(KVList *opts, BlockNode *in, uint64_t size,
                            BlockMeasure *out, Error *err)
{
    CreatePlan pl = { 0 };
    int ret = parse_create_opts(opts, &pl, err);
    secret_free(pl.pass, pl.plen);
    if (ret < 0) {
        return ret;
    }
    if (in) {
        int64_t len = block_get_length(in);
        if (len < 0) {
            return error_setf(err, (int)-len, "Could not get the input size");
        }
        size = (uint64_t)len;
    }
    out->required = pl.hlen + size;
    out->fully_allocated = pl.hlen + size;
    return 0;
}

static int luks_fmt_amend(BlockNode *n, KVList *opts, bool force,
                          BlockProgressFn *progress, void *opaque,
                          Error *err)
{
    LuksFormatState *s = n->opaque;
    LuksIO io = { file_read, file_write, file_flush, block_file(n) };
    if (progress) {
        progress(opaque, 0, 1);
    }
    int ret = luks_amend(s->vol, opts, "", force, &io, err);
    if (ret == 0 && progress) {
        progress(opaque, 1, 1);
    }
    return ret;
}

/* qemu-img's texts, in its (alphabetical) order. */
static const BlockCreateOpt luks_amend_opts[] = {
    { "iter-time", OPT_NUMBER, "Time to spend in PBKDF in milliseconds",
      NULL },
    { "keyslot", OPT_NUMBER,
      "Select a single keyslot to modify explicitly", NULL },
    { "new-secret", OPT_STRING, "New secret to set in the matching "
      "keyslots. Empty string to erase", NULL },
    { "old-secret", OPT_STRING,
      "Select all keyslots that match this password", NULL },
    { "state", OPT_STRING,
      "Select new state of affected keyslots (active/inactive)", NULL },
    { NULL, 0, NULL, NULL },
};

static const BlockCreateOpt luks_create_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size", NULL },
    { "key-secret", OPT_STRING,
      "ID of the secret that provides the keyslot passphrase", NULL },
    { "cipher-alg", OPT_STRING, "Name of encryption cipher algorithm",
      NULL },
    { "cipher-mode", OPT_STRING, "Name of encryption cipher mode", NULL },
    { "ivgen-alg", OPT_STRING, "Name of IV generator algorithm", NULL },
    { "ivgen-hash-alg", OPT_STRING, "Name of IV generator hash algorithm",
      NULL },
    { "hash-alg", OPT_STRING, "Name of encryption hash algorithm", NULL },
    { "iter-time", OPT_NUMBER, "Time to spend in PBKDF in milliseconds",
      NULL },
    /* Passed to the file: same text as the file driver's entries, so
     * `create -o help` lists them only with a filename, as qemu-img. */
    { "preallocation", OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", "off" },
    { "nocow", OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)",
      "off" },
    { "extent_size_hint", OPT_SIZE,
      "Extent size hint for the image file, 0 to disable", NULL },
    { NULL, 0, NULL, NULL },
};

const BlockDriver luks_driver = {
    .name = "luks",
    .instance_size = sizeof(LuksFormatState),
    .api_version = BLOCK_DRIVER_API_VERSION,
    .kind = BLOCK_DRIVER_FORMAT,
    .probe = luks_fmt_probe,
    .open = luks_fmt_open,
    .close = luks_fmt_close,
    .pread = luks_fmt_pread,
    .pwrite = luks_fmt_pwrite,
    .get_length = luks_fmt_get_length,
    .truncate = luks_fmt_truncate,
    .create = luks_fmt_create,
    .create_opts = luks_create_opts,
    .measure = luks_fmt_measure,
    .get_format_info = luks_fmt_get_format_info,
    .get_info_extra = luks_fmt_get_info_extra,
    .amend = luks_fmt_amend,
    .amend_opts = luks_amend_opts,
};
