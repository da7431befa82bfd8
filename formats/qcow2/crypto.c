/*
 * crypto.c - qcow2 encrypt.format=luks: the LUKS header lives in host
 * clusters named by the crypto header extension (offset, length), and
 * every guest data cluster is encrypted in place with the sector number
 * host_offset / 512 as IV input, as QEMU does.  Zero and unallocated
 * clusters are never decrypted; metadata is never encrypted.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "block/core/secret.h"
#include "formats/luks/luks.h"
#include "formats/qcow2/qcow2.h"

typedef struct HdrArea {
    BlockNode *file;
    uint64_t offset, length;
} HdrArea;

static int area_read(void *opaque, uint64_t off, void *buf, size_t len,
                     Error *err)
{
    HdrArea *a = opaque;
    if (off > a->length || len > a->length - off) {
        return error_setf(err, EINVAL, "LUKS header read beyond the qcow2 "
                          "crypto header area");
    }
    int ret = block_pread_zero_tail(a->file, a->offset + off, len, buf);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not read the LUKS header: %s",
                          strerror(-ret));
    }
    return 0;
}

static int area_write(void *opaque, uint64_t off, const void *buf, size_t len,
                      Error *err)
{
    HdrArea *a = opaque;
    if (off > a->length || len > a->length - off) {
        return error_setf(err, EINVAL, "LUKS header write beyond the qcow2 "
                          "crypto header area");
    }
    int ret = block_pwrite(a->file, a->offset + off, len, buf, 0);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not write the LUKS header: %s",
                          strerror(-ret));
    }
    return 0;
}

static int area_flush(void *opaque, Error *err)
{
    HdrArea *a = opaque;
    int ret = block_flush(a->file);
    if (ret < 0) {
        return error_setf(err, -ret, "Could not flush the LUKS header: %s",
                          strerror(-ret));
    }
    return 0;
}

static const Qcow2Extension *crypto_ext(const Qcow2State *s)
{
    for (int i = 0; i < s->nb_unknown_exts; i++) {
        if (s->unknown_exts[i].type == QCOW2_EXT_CRYPTO) {
            return &s->unknown_exts[i];
        }
    }
    return NULL;
}

static int aes_open(Qcow2State *s, const char *id, bool header_only,
                    int flags, Error *err)
{
    s->aes = true;
    s->node->request_alignment = LUKS_SECTOR_SIZE;
    if (header_only) {
        return 0;
    }
    uint8_t *pass = NULL;
    size_t plen = 0;
    int ret = luks_get_passphrase(id, "encrypt.key-secret", &pass, &plen,
                                  err);
    if (ret < 0) {
        return ret;
    }
    /* Written as qemu-img 7.2 writes it (its tools still do, though
     * the scheme is weak: a fixed key, IVs that repeat per sector). */
    /* As QEMU: the key is the passphrase itself, cut or zero padded to
     * 16 bytes (no key derivation). */
    memset(s->aes_key, 0, sizeof(s->aes_key));
    memcpy(s->aes_key, pass, plen < 16 ? plen : 16);
    secret_free(pass, plen);
    s->aes_keyed = true;
    return 0;
}

int qcow2_crypto_open(Qcow2State *s, KVList *opts, int flags, Error *err)
{
    const char *id = kvlist_get(opts, "encrypt.key-secret");
    /* A format probe or `info` needs the header only, as qemu-img
     * opens without a key when it does no I/O. */
    bool header_only = !id && !(flags & BLOCK_O_RDWR) &&
                       (flags & BLOCK_O_NO_BACKING);
    const char *fmt = kvlist_get(opts, "encrypt.format");

    if (fmt && strcmp(fmt, "luks") != 0) {
        return error_setf(err, EINVAL, "Header reported 'luks' encryption "
                          "format but options specify '%s'", fmt);
    }
    if (s->crypt_method == QCOW2_CRYPT_AES) {
        return aes_open(s, id, header_only, flags, err);
    }
    if (s->crypt_method != QCOW2_CRYPT_LUKS) {
        return error_setf(err, ENOTSUP, "qcow2: unknown encryption method "
                          "%u", s->crypt_method);
    }
    const Qcow2Extension *x = crypto_ext(s);
    if (!x || x->len < 16) {
        return error_setf(err, EINVAL, "qcow2: LUKS encryption without a "
                          "crypto header extension");
    }
    HdrArea a = { block_file(s->node), qcow2_be64(x->data),
                  qcow2_be64(x->data + 8) };
    int64_t flen = block_get_length(block_file(s->node));
    if (flen < 0 || a.offset % s->cluster_size || a.length == 0 ||
        a.offset > (uint64_t)flen || a.length > (uint64_t)flen - a.offset) {
        return error_setf(err, EINVAL, "qcow2: crypto header at %" PRIu64
                          " (+%" PRIu64 ") is outside the image", a.offset,
                          a.length);
    }
    uint8_t *pass = NULL;
    size_t plen = 0;
    if (!header_only) {
        int ret = luks_get_passphrase(id, "encrypt.key-secret", &pass, &plen,
                                      err);
        if (ret < 0) {
            return ret;
        }
    }
    int ret = luks_open(area_read, &a, a.length, pass, plen,
                        header_only ? LUKS_OPEN_NO_KEY : 0, &s->crypto, err);
    secret_free(pass, plen);
    if (ret < 0) {
        return ret;
    }
    s->crypto_offset = a.offset;
    s->crypto_length = a.length;
    s->node->request_alignment = LUKS_SECTOR_SIZE;
    return 0;
}

int qcow2_crypto_check_opts(KVList *opts, Error *err)
{
    LuksCreateParams p;
    uint8_t *pass = NULL;
    size_t plen = 0;
    int ret = luks_params_parse(opts, "encrypt.", &p, err);
    if (ret >= 0) {
        ret = luks_get_passphrase(kvlist_get(opts, "encrypt.key-secret"),
                                  "encrypt.key-secret", &pass, &plen, err);
    }
    secret_free(pass, plen);
    return ret;
}

int qcow2_crypto_header_size(KVList *opts, uint64_t *len, Error *err)
{
    LuksCreateParams p;
    int ret = qcow2_crypto_check_opts(opts, err);
    if (ret >= 0) {
        ret = luks_params_parse(opts, "encrypt.", &p, err);
    }
    if (ret >= 0) {
        ret = luks_header_length(&p, len, err);
    }
    return ret;
}

void qcow2_crypto_close(Qcow2State *s)
{
    luks_close(s->crypto);
    s->crypto = NULL;
    OPENSSL_cleanse(s->aes_key, sizeof(s->aes_key));
    s->aes_keyed = false;
}

int qcow2_crypto_create(BlockNode *n, KVList *opts, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    LuksCreateParams p;
    uint8_t *pass = NULL;
    size_t plen = 0;
    uint64_t hlen;
    int ret;

    ret = luks_params_parse(opts, "encrypt.", &p, err);
    if (ret >= 0) {
        ret = luks_header_length(&p, &hlen, err);
    }
    if (ret >= 0) {
        ret = luks_get_passphrase(kvlist_get(opts, "encrypt.key-secret"),
                                  "encrypt.key-secret", &pass, &plen, err);
    }
    if (ret < 0) {
        return ret;
    }
    uint64_t nb = (hlen + s->cluster_size - 1) >> s->cluster_bits;
    pthread_mutex_lock(&s->lock);
    int64_t off = qcow2_alloc_clusters(s, nb);
    pthread_mutex_unlock(&s->lock);
    if (off < 0) {
        secret_free(pass, plen);
        return error_setf(err, (int)-off, "Could not allocate the LUKS "
                          "header: %s", strerror((int)-off));
    }
    ret = block_write_zeroes(block_file(n), (uint64_t)off, nb * s->cluster_size,
                             0);
    if (ret < 0) {
        secret_free(pass, plen);
        return error_setf(err, -ret, "Could not write the LUKS header: %s",
                          strerror(-ret));
    }
    HdrArea a = { block_file(n), (uint64_t)off, hlen };
    LuksVolume *v = NULL;
    ret = luks_create(&p, pass, plen, area_write, &a, &v, err);
    secret_free(pass, plen);
    luks_close(v);
    if (ret < 0) {
        return ret;
    }

    Qcow2Extension *exts = realloc(s->unknown_exts,
                                   (s->nb_unknown_exts + 1) * sizeof(*exts));
    uint8_t *data = malloc(16);
    if (!exts || !data) {
        if (exts) {
            s->unknown_exts = exts;
        }
        free(data);
        return error_setf(err, ENOMEM, "out of memory");
    }
    qcow2_put_be64(data, (uint64_t)off);
    qcow2_put_be64(data + 8, hlen);
    s->unknown_exts = exts;
    exts[s->nb_unknown_exts].type = QCOW2_EXT_CRYPTO;
    exts[s->nb_unknown_exts].len = 16;
    exts[s->nb_unknown_exts].data = data;
    s->nb_unknown_exts++;
    s->crypt_method = QCOW2_CRYPT_LUKS;
    pthread_mutex_lock(&s->lock);
    ret = qcow2_flush_caches(s);
    if (ret >= 0) {
        ret = qcow2_write_header(s, err);
    }
    pthread_mutex_unlock(&s->lock);
    if (ret < 0 && !error_is_set(err)) {
        error_setf(err, -ret, "Could not write the qcow2 header: %s",
                   strerror(-ret));
    }
    return ret;
}

int qcow2_crypto_amend(BlockNode *n, KVList *opts, bool force, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    if (s->aes) {
        return error_setf(err, ENOTSUP, "Only LUKS encryption options can "
                          "be amended");
    }
    if (!s->crypto) {
        return error_setf(err, ENOTSUP, "Can't amend encryption options - "
                          "encryption not present");
    }
    /* The LUKS header clusters are not qcow2 metadata: nothing of ours
     * caches them, so they are written straight to the file. */
    HdrArea a = { block_file(n), s->crypto_offset, s->crypto_length };
    LuksIO io = { area_read, area_write, area_flush, &a };
    return luks_amend(s->crypto, opts, "encrypt.", force, &io, err);
}

int qcow2_crypto_create_aes(BlockNode *n, KVList *opts, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    const char *id = kvlist_get(opts, "encrypt.key-secret");
    if (!id) {
        return error_setf(err, EINVAL, "Parameter 'encrypt.key-secret' is "
                          "required for cipher");
    }
    s->crypt_method = QCOW2_CRYPT_AES;
    int ret = aes_open(s, id, false, BLOCK_O_RDWR, err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&s->lock);
    ret = qcow2_write_header(s, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0 && !error_is_set(err)) {
        error_setf(err, -ret, "Could not write the qcow2 header: %s",
                   strerror(-ret));
    }
    return ret;
}

/* Legacy AES: each 512-byte sector is CBC with IV = its guest sector
 * number, little endian, zero padded.  In place, either way. */
static int aes_crypt(Qcow2State *s, uint64_t guest, uint8_t *buf,
                     size_t len, bool enc)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int ret = 0;

    if (!s->aes_keyed) {
        EVP_CIPHER_CTX_free(ctx);
        return -ENOKEY;
    }
    if (!ctx) {
        return -ENOMEM;
    }
    for (size_t done = 0; done < len && ret == 0; done += LUKS_SECTOR_SIZE) {
        uint8_t iv[16] = { 0 };
        uint64_t sector = (guest + done) / LUKS_SECTOR_SIZE;
        for (int i = 0; i < 8; i++) {
            iv[i] = (uint8_t)(sector >> (8 * i));
        }
        int outl = 0;
        if (EVP_CipherInit_ex(ctx, EVP_aes_128_cbc(), NULL, s->aes_key,
                              iv, enc) != 1 ||
            EVP_CIPHER_CTX_set_padding(ctx, 0) != 1 ||
            EVP_CipherUpdate(ctx, buf + done, &outl, buf + done,
                             LUKS_SECTOR_SIZE) != 1 ||
            outl != LUKS_SECTOR_SIZE) {
            ret = -EIO;
        }
    }
    EVP_CIPHER_CTX_free(ctx);
    return ret;
}

int qcow2_crypto_decrypt(Qcow2State *s, uint64_t host, uint64_t guest,
                         void *buf, size_t len)
{
    if (s->aes) {
        return aes_crypt(s, guest, buf, len, false);
    }
    return luks_decrypt(s->crypto, host / LUKS_SECTOR_SIZE, buf, len);
}

int qcow2_crypto_write(Qcow2State *s, uint64_t host, uint64_t guest,
                       const void *buf, size_t len)
{
    uint8_t *tmp = malloc(len ? len : 1);
    if (!tmp) {
        return -ENOMEM;
    }
    memcpy(tmp, buf, len);
    int ret = s->aes ? aes_crypt(s, guest, tmp, len, true)
                     : luks_encrypt(s->crypto, host / LUKS_SECTOR_SIZE, tmp,
                                    len);
    if (ret >= 0) {
        ret = block_pwrite(qcow2_data_node(s), host, len, tmp, 0);
    }
    free(tmp);
    return ret < 0 ? ret : 0;
}

json_t *qcow2_crypto_info(Qcow2State *s)
{
    json_t *o = json_object();
    const char *k;
    json_t *v;

    if (s->aes) {
        json_object_set_new(o, "format", json_string("aes"));
        return o;
    }
    json_t *li = luks_info(s->crypto);
    if (!li) {
        return o;
    }
    /* qemu-img's key order: "format" follows "uuid". */
    json_object_foreach(li, k, v) {
        json_object_set(o, k, v);
        if (!strcmp(k, "uuid")) {
            json_object_set_new(o, "format", json_string("luks"));
        }
    }
    if (!json_object_get(o, "format")) {
        json_object_set_new(o, "format", json_string("luks"));
    }
    json_decref(li);
    return o;
}
