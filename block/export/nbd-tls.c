/*
 * nbd-tls.c - TLS for the NBD server with OpenSSL: a server context
 * from a tls-creds-x509 object (certificate, key, CA to verify clients
 * with when verify-peer is on) or a tls-creds-psk object (keys.psk,
 * "identity:hexkey" lines, for TLS 1.3 and 1.2 PSK suites), and the
 * non-blocking handshake, reads and writes of one connection.
 *
 * Writes go through a 16 KiB staging copy so that a small reply header
 * and its data share one TLS record; a write that would block is
 * retried with the same leading bytes, as OpenSSL requires
 * (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets the staging copy move).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "block/core/tlscreds.h"
#include "block/export/nbd-int.h"

#define STAGE (16u << 10)

typedef struct PskKey {
    char *identity;
    uint8_t *key;
    size_t len;
    struct PskKey *next;
} PskKey;

static int psk_index = -1;

static int ssl_error(Error *err, const char *what)
{
    char buf[256] = "unknown error";
    unsigned long e = ERR_get_error();
    if (e) {
        ERR_error_string_n(e, buf, sizeof(buf));
    }
    ERR_clear_error();
    return error_setf(err, EINVAL, "%s: %s", what, buf);
}

static void psk_free(PskKey *k)
{
    while (k) {
        PskKey *next = k->next;
        free(k->identity);
        if (k->key) {
            OPENSSL_cleanse(k->key, k->len);
        }
        free(k->key);
        free(k);
        k = next;
    }
}

static void psk_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                        long argl, void *argp)
{
    psk_free(ptr);
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

/* keys.psk: "identity:hexkey" per line, as QEMU and libnbd read it. */
static int psk_load(const char *path, PskKey **out, Error *err)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        return error_setf(err, errno, "Unable to read %s: %s", path,
                          strerror(errno));
    }
    char line[4096];
    int ret = 0, lineno = 0;
    PskKey *list = NULL;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (!*line) {
            continue;
        }
        char *colon = strchr(line, ':');
        size_t hl = colon ? strlen(colon + 1) : 0;
        if (!colon || colon == line || hl == 0 || hl % 2 ||
            hl / 2 > PSK_MAX_PSK_LEN) {
            ret = error_setf(err, EINVAL, "%s:%d: expected "
                             "'identity:hexkey'", path, lineno);
            break;
        }
        PskKey *k = calloc(1, sizeof(*k));
        if (!k || !(k->key = malloc(hl / 2)) ||
            !(k->identity = strndup(line, (size_t)(colon - line)))) {
            psk_free(k);
            ret = error_setf(err, ENOMEM, "out of memory");
            break;
        }
        k->next = list;
        list = k;
        k->len = hl / 2;
        for (size_t i = 0; i < k->len; i++) {
            int hi = hexval(colon[1 + 2 * i]), lo = hexval(colon[2 + 2 * i]);
            if (hi < 0 || lo < 0) {
                ret = error_setf(err, EINVAL, "%s:%d: the key is not "
                                 "hexadecimal", path, lineno);
                break;
            }
            k->key[i] = (uint8_t)(hi << 4 | lo);
        }
        if (ret < 0) {
            break;
        }
    }
    OPENSSL_cleanse(line, sizeof(line));
    fclose(f);
    if (ret == 0 && !list) {
        ret = error_setf(err, EINVAL, "%s holds no key", path);
    }
    if (ret < 0) {
        psk_free(list);
        return ret;
    }
    *out = list;
    return 0;
}

static unsigned int psk_server_cb(SSL *ssl, const char *identity,
                                  unsigned char *psk, unsigned int max_len)
{
    const PskKey *k = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), psk_index);
    for (; k && identity; k = k->next) {
        if (strcmp(k->identity, identity) == 0 && k->len <= max_len) {
            memcpy(psk, k->key, k->len);
            return (unsigned int)k->len;
        }
    }
    return 0;   /* unknown identity: the handshake fails */
}

static int use_x509(SSL_CTX *ctx, const TlsCreds *c, Error *err)
{
    char *ca = tls_creds_path(c, "ca-cert.pem");
    char *cert = tls_creds_path(c, "server-cert.pem");
    char *key = tls_creds_path(c, "server-key.pem");
    char *crl = tls_creds_path(c, "ca-crl.pem");
    int ret = 0;
    if (!ca || !cert || !key || !crl) {
        ret = error_setf(err, ENOMEM, "out of memory");
    } else if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ret = ssl_error(err, cert);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
               SSL_CTX_check_private_key(ctx) != 1) {
        ret = ssl_error(err, key);
    } else if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        ret = ssl_error(err, ca);
    } else if (c->verify_peer) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
        if (names) {
            SSL_CTX_set_client_CA_list(ctx, names);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
                           SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        if (access(crl, R_OK) == 0) {
            X509_STORE *st = SSL_CTX_get_cert_store(ctx);
            if (X509_STORE_load_file(st, crl) != 1) {
                ret = ssl_error(err, crl);
            } else {
                X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
            }
        }
    }
    free(ca);
    free(cert);
    free(key);
    free(crl);
    return ret;
}

static int use_psk(SSL_CTX *ctx, const TlsCreds *c, Error *err)
{
    char *path = tls_creds_path(c, "keys.psk");
    PskKey *keys = NULL;
    int ret = path ? psk_load(path, &keys, err)
                   : error_setf(err, ENOMEM, "out of memory");
    free(path);
    if (ret < 0) {
        return ret;
    }
    if (psk_index < 0) {
        psk_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL,
                                             psk_ex_free);
    }
    if (psk_index < 0 || SSL_CTX_set_ex_data(ctx, psk_index, keys) != 1) {
        psk_free(keys);
        return ssl_error(err, "cannot attach the PSK keys");
    }
    SSL_CTX_set_psk_server_callback(ctx, psk_server_cb);
    /* TLS 1.2 suites authenticated by the PSK alone; TLS 1.3 uses the
     * same callback with its default suites. */
    if (SSL_CTX_set_cipher_list(ctx, "aPSK") != 1) {
        return ssl_error(err, "no TLS 1.2 PSK cipher suites");
    }
    return 0;
}

SSL_CTX *nbd_tls_server_ctx(const char *creds_id, Error *err)
{
    const TlsCreds *c = tls_creds_find(creds_id);
    if (!c) {
        error_setf(err, ENOENT, "No TLS credentials with id '%s'", creds_id);
        return NULL;
    }
    if (!c->server) {
        error_setf(err, EINVAL, "Expecting TLS credentials with a server "
                   "endpoint");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_error(err, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF |
                        SSL_OP_NO_RENEGOTIATION);
    int ret = c->type == TLS_CREDS_X509 ? use_x509(ctx, c, err)
                                        : use_psk(ctx, c, err);
    if (ret < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* ------------------------------------------------------------------ */
/* One connection                                                      */

static void want(NbdConn *c, uint32_t events)
{
    if (c->events != events) {
        loop_mod_fd(c->loop, c->fd, events);
        c->events = events;
    }
}

int nbd_tls_accept(NbdConn *c)
{
    if (!c->ssl) {
        c->ssl = SSL_new(c->server->tls);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
            return -1;
        }
        SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_set_accept_state(c->ssl);
    }
    ERR_clear_error();
    int r = SSL_accept(c->ssl);
    if (r == 1) {
        want(c, EPOLLIN);
        return 1;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        want(c, EPOLLIN);
        return 0;
    case SSL_ERROR_WANT_WRITE:
        want(c, EPOLLOUT);
        return 0;
    default:
        ERR_clear_error();
        return -1;
    }
}

ssize_t nbd_tls_recv(NbdConn *c, void *buf, size_t len)
{
    ERR_clear_error();
    c->ssl_read_wants_write = false;
    int r = SSL_read(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (r > 0) {
        return r;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        c->ssl_read_wants_write = true;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        ERR_clear_error();
        return -EIO;
    }
}

ssize_t nbd_tls_send(NbdConn *c, const struct iovec *iov, int niov)
{
    uint8_t stage[STAGE];
    size_t n = 0;
    for (int i = 0; i < niov && n < STAGE; i++) {
        size_t take = iov[i].iov_len < STAGE - n ? iov[i].iov_len : STAGE - n;
        memcpy(stage + n, iov[i].iov_base, take);
        n += take;
    }
    if (n == 0) {
        return 0;
    }
    ERR_clear_error();
    c->ssl_write_wants_read = false;
    int r = SSL_write(c->ssl, stage, (int)n);
    if (r > 0) {
        return r;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        return -EAGAIN;
    case SSL_ERROR_WANT_READ:
        c->ssl_write_wants_read = true;
        return -EAGAIN;
    default:
        ERR_clear_error();
        return -EIO;
    }
}
