/*
 * tlscreds.c - the registry of TLS credentials objects (tlscreds.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/core/tlscreds.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static TlsCreds *creds_list;

static const char *def_type(const char *objdef, char *buf, size_t len)
{
    const char *t = objdef;
    if (strncmp(t, "qom-type=", 9) == 0) {
        t += 9;
    }
    size_t n = strcspn(t, ",");
    snprintf(buf, len, "%.*s", (int)n, t);
    return buf;
}

bool tls_creds_is_def(const char *objdef)
{
    char t[32];
    def_type(objdef, t, sizeof(t));
    return strcmp(t, "tls-creds-x509") == 0 || strcmp(t, "tls-creds-psk") == 0;
}

const TlsCreds *tls_creds_find(const char *id)
{
    pthread_mutex_lock(&lock);
    TlsCreds *c = creds_list;
    while (c && strcmp(c->id, id) != 0) {
        c = c->next;
    }
    pthread_mutex_unlock(&lock);
    return c;
}

char *tls_creds_path(const TlsCreds *c, const char *name)
{
    char *p = NULL;
    return asprintf(&p, "%s/%s", c->dir, name) < 0 ? NULL : p;
}

static int need_file(const TlsCreds *c, const char *name, Error *err)
{
    char *p = tls_creds_path(c, name);
    if (!p) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = 0;
    if (access(p, R_OK) < 0) {
        ret = error_setf(err, errno, "Unable to access credentials %s: %s",
                         p, strerror(errno));
    }
    free(p);
    return ret;
}

static void creds_free(TlsCreds *c)
{
    if (c) {
        free(c->id);
        free(c->dir);
        free(c->username);
        free(c);
    }
}

int tls_creds_define(const char *objdef, Error *err)
{
    KVList kv = { 0 };
    TlsCreds *c = calloc(1, sizeof(*c));
    int ret = c ? kvlist_parse(&kv, objdef, "qom-type", err)
                : error_setf(err, ENOMEM, "out of memory");
    if (ret < 0) {
        goto out;
    }
    const char *type = kvlist_get(&kv, "qom-type");
    const char *id = kvlist_get(&kv, "id");
    const char *dir = kvlist_get(&kv, "dir");
    const char *endpoint = kvlist_get(&kv, "endpoint");
    const char *username = kvlist_get(&kv, "username");
    kvlist_get(&kv, "priority");        /* GnuTLS priority strings: */
    kvlist_get(&kv, "sanity-check");    /* accepted, OpenSSL's defaults */
    if (!type || (strcmp(type, "tls-creds-x509") &&
                  strcmp(type, "tls-creds-psk"))) {
        ret = error_setf(err, EINVAL, "invalid object type: %s",
                         type ? type : "");
        goto out;
    }
    c->type = strcmp(type, "tls-creds-x509") == 0 ? TLS_CREDS_X509
                                                    : TLS_CREDS_PSK;
    if (!id) {
        ret = error_setf(err, EINVAL, "Parameter 'id' is missing");
        goto out;
    }
    if (!dir) {
        ret = error_setf(err, EINVAL, "Parameter 'dir' is missing");
        goto out;
    }
    if (endpoint && strcmp(endpoint, "server") &&
        strcmp(endpoint, "client")) {
        ret = error_setf(err, EINVAL, "Parameter 'endpoint' does not accept "
                         "value '%s'", endpoint);
        goto out;
    }
    c->server = endpoint && strcmp(endpoint, "server") == 0;
    ret = kvlist_get_bool(&kv, "verify-peer", true, &c->verify_peer, err);
    if (ret < 0) {
        goto out;
    }
    if (kvlist_has(&kv, "passwordid")) {
        ret = error_setf(err, ENOTSUP, "encrypted private keys "
                         "(passwordid=) are not supported");
        goto out;
    }
    ret = kvlist_check_unused(&kv, type, err);
    if (ret < 0) {
        goto out;
    }
    c->id = strdup(id);
    c->dir = strdup(dir);
    c->username = username ? strdup(username) : NULL;
    if (!c->id || !c->dir || (username && !c->username)) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (c->type == TLS_CREDS_PSK) {
        ret = need_file(c, "keys.psk", err);
    } else {
        ret = need_file(c, "ca-cert.pem", err);
        if (ret == 0) {
            ret = need_file(c, c->server ? "server-cert.pem"
                                         : "client-cert.pem", err);
            /* A client without a certificate of its own is fine when the
             * server does not ask for one. */
            if (ret < 0 && !c->server) {
                error_clear(err);
                ret = 0;
            }
        }
        if (ret == 0 && c->server) {
            ret = need_file(c, "server-key.pem", err);
        }
    }
    if (ret < 0) {
        goto out;
    }
    pthread_mutex_lock(&lock);
    for (TlsCreds *o = creds_list; o; o = o->next) {
        if (strcmp(o->id, id) == 0) {
            pthread_mutex_unlock(&lock);
            ret = error_setf(err, EEXIST, "attempt to add duplicate property "
                             "'%s' to object (type 'container')", id);
            goto out;
        }
    }
    c->next = creds_list;
    creds_list = c;
    c = NULL;
    pthread_mutex_unlock(&lock);
out:
    creds_free(c);
    kvlist_free(&kv);
    return ret;
}
