/*
 * iscsi-addr.c - where an iSCSI LUN is: QEMU's URL syntax
 * iscsi://[user[%password]@]host[:port]/target-iqn/lun and QEMU's
 * --image-opts keys (transport, portal, target, lun, user,
 * password-secret, initiator-name, header-digest, timeout).
 *
 * The CHAP password comes from a secret (password-secret=ID with
 * --object secret); a password written into the URL is accepted for
 * compatibility with QEMU and flagged so that the command line can warn
 * that it is visible to every user of the machine.  Either way the bytes
 * are kept in one place and wiped when the address is freed; the
 * display form of an address never carries them.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "block/core/secret.h"
#include "block/protocol/iscsi-int.h"
#include "block/protocol/iscsi.h"

#define ISCSI_DEFAULT_PORT 3260
#define ISCSI_MAX_LUN 16383    /* flat space addressing (SAM) */
/* Only ever inside format strings: the % is doubled. */
#define URL_SYNTAX "iscsi://[user[%%password]@]host[:port]/target-iqn/lun"

bool iscsi_is_url(const char *filename)
{
    return filename && strncmp(filename, "iscsi://", 8) == 0;
}

static void wipe_free(char *s, size_t len)
{
    if (s) {
        OPENSSL_cleanse(s, len);
        free(s);
    }
}

void iscsi_addr_free(IscsiAddr *a)
{
    free(a->portal);
    free(a->target);
    free(a->user);
    wipe_free(a->password, a->password_len);
    free(a->initiator_name);
    memset(a, 0, sizeof(*a));
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* %XX-decodes [s, s+len) (target names may carry %3A for ':'). */
static char *pct_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out) {
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        int h, l;
        if (s[i] == '%' && i + 2 < len && (h = hexval(s[i + 1])) >= 0 &&
            (l = hexval(s[i + 2])) >= 0) {
            *o++ = (char)(h * 16 + l);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = 0;
    return out;
}

static int parse_lun(const char *s, int *lun, const char *what, Error *err)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 0 || v > ISCSI_MAX_LUN) {
        return error_setf(err, EINVAL, "%s: LUN '%s' is not a number from "
                          "0 to %d", what, s, ISCSI_MAX_LUN);
    }
    *lun = (int)v;
    return 0;
}

/* host[:port] or [v6][:port], with the default port added. */
static char *make_portal(const char *host, size_t hlen, const char *port,
                         size_t plen)
{
    char buf[512];
    if (hlen + plen + 8 > sizeof(buf)) {
        return NULL;
    }
    int n;
    if (plen) {
        n = snprintf(buf, sizeof(buf), "%.*s:%.*s", (int)hlen, host,
                     (int)plen, port);
    } else {
        n = snprintf(buf, sizeof(buf), "%.*s:%d", (int)hlen, host,
                     ISCSI_DEFAULT_PORT);
    }
    return n > 0 ? strdup(buf) : NULL;
}

static int bad_url(Error *err, const char *why)
{
    return error_setf(err, EINVAL, "iSCSI URL %s (the form is "
                      URL_SYNTAX ")", why);
}

/* Splits a URL into the address fields; the password, when the URL has
 * one, goes straight into a->password. */
static int parse_url(IscsiAddr *a, const char *url, bool need_lun,
                     Error *err)
{
    const char *p = url + strlen("iscsi://");
    const char *slash = strchr(p, '/');
    const char *auth_end = NULL;
    /* The user part ends at the last '@' before the path. */
    for (const char *q = p; *q && (!slash || q < slash); q++) {
        if (*q == '@') {
            auth_end = q;
        }
    }
    if (auth_end) {
        const char *pct = memchr(p, '%', (size_t)(auth_end - p));
        size_t ulen = (size_t)((pct ? pct : auth_end) - p);
        if (ulen == 0) {
            return bad_url(err, "has an empty user name");
        }
        a->user = strndup(p, ulen);
        if (pct) {
            a->password_len = (size_t)(auth_end - pct - 1);
            a->password = strndup(pct + 1, a->password_len);
            a->password_in_url = true;
            if (!a->password) {
                return error_setf(err, ENOMEM, "out of memory");
            }
        }
        if (!a->user) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        p = auth_end + 1;
    }
    const char *host_end = slash ? slash : p + strlen(p);
    const char *host = p, *port = NULL;
    size_t hlen, plen = 0;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(host_end - p));
        if (!rb) {
            return bad_url(err, "has an unterminated [IPv6 address]");
        }
        hlen = (size_t)(rb + 1 - p);
        if (rb + 1 < host_end) {
            if (rb[1] != ':') {
                return bad_url(err, "has junk after the [IPv6 address]");
            }
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(host_end - p));
        hlen = (size_t)((colon ? colon : host_end) - p);
        if (colon) {
            port = colon + 1;
        }
    }
    if (hlen == 0) {
        return bad_url(err, "has no host");
    }
    if (port) {
        plen = (size_t)(host_end - port);
        if (plen == 0 || plen > 5 || strspn(port, "0123456789") < plen ||
            atoi(port) < 1 || atoi(port) > 65535) {
            return bad_url(err, "has a bad port");
        }
    }
    a->portal = make_portal(host, hlen, port, plen);
    if (!a->portal) {
        return bad_url(err, "has a host name that is too long");
    }
    if (!slash || !slash[1]) {
        if (need_lun) {
            return bad_url(err, "names no target");
        }
        return 0;
    }
    const char *tgt = slash + 1;
    const char *tslash = strchr(tgt, '/');
    size_t tlen = tslash ? (size_t)(tslash - tgt) : strlen(tgt);
    if (tlen == 0) {
        return bad_url(err, "names no target");
    }
    a->target = pct_decode(tgt, tlen);
    if (!a->target) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (!tslash || !tslash[1]) {
        if (need_lun) {
            return bad_url(err, "names no LUN");
        }
        return 0;
    }
    return parse_lun(tslash + 1, &a->lun, "iSCSI URL", err);
}

static char *default_initiator_name(void)
{
    char host[HOST_NAME_MAX + 1] = "localhost";
    char buf[HOST_NAME_MAX + 64];
    if (gethostname(host, sizeof(host)) < 0) {
        strcpy(host, "localhost");
    }
    host[sizeof(host) - 1] = 0;
    /* An IQN's unique part may hold letters, digits, '-', '.', ':'. */
    for (char *c = host; *c; c++) {
        if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.') {
            *c = '-';
        }
        *c = (char)tolower((unsigned char)*c);
    }
    snprintf(buf, sizeof(buf), "iqn.2024-01.org.imgtool:%s", host);
    return strdup(buf);
}

static int parse_options(IscsiAddr *a, KVList *opts, Error *err)
{
    const char *v;
    if ((v = kvlist_get(opts, "transport"))) {
        if (strcmp(v, "tcp") == 0) {
            a->iser = false;
        } else if (strcmp(v, "iser") == 0) {
            a->iser = true;
        } else {
            return error_setf(err, EINVAL, "iSCSI transport '%s' is "
                              "neither 'tcp' nor 'iser'", v);
        }
    }
    if ((v = kvlist_get(opts, "portal"))) {
        free(a->portal);
        const char *colon = strrchr(v, ':');
        bool has_port = colon && (v[0] != '[' || colon > strchr(v, ']'));
        a->portal = has_port ? strdup(v)
                             : make_portal(v, strlen(v), NULL, 0);
        if (!a->portal || !*v) {
            return error_setf(err, EINVAL, "iSCSI portal '%s' is not "
                              "host[:port]", v);
        }
    }
    if ((v = kvlist_get(opts, "target"))) {
        free(a->target);
        if (!(a->target = strdup(v))) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    if ((v = kvlist_get(opts, "lun"))) {
        int ret = parse_lun(v, &a->lun, "iSCSI option lun", err);
        if (ret < 0) {
            return ret;
        }
    }
    if ((v = kvlist_get(opts, "user"))) {
        free(a->user);
        if (!(a->user = strdup(v))) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    if ((v = kvlist_get(opts, "password-secret"))) {
        uint8_t *data;
        size_t len;
        int ret = secret_lookup(v, &data, &len, err);
        if (ret < 0) {
            return ret;
        }
        if (memchr(data, 0, len)) {
            secret_free(data, len);
            return error_setf(err, EINVAL, "secret '%s' holds a NUL byte, "
                              "which a CHAP password cannot", v);
        }
        wipe_free(a->password, a->password_len);
        a->password = strndup((char *)data, len);
        a->password_len = len;
        a->password_in_url = false;
        secret_free(data, len);
        if (!a->password) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    if (kvlist_has(opts, "password")) {
        return error_setf(err, EINVAL, "iSCSI option 'password' is not "
                          "taken in clear; give password-secret=ID with "
                          "--object secret,id=ID,file=PATH");
    }
    if ((v = kvlist_get(opts, "initiator-name"))) {
        free(a->initiator_name);
        if (!(a->initiator_name = strdup(v))) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    if ((v = kvlist_get(opts, "header-digest"))) {
        static const struct { const char *name; int digest; } d[] = {
            { "crc32c", ISCSI_HEADER_DIGEST_CRC32C },
            { "none", ISCSI_HEADER_DIGEST_NONE },
            { "crc32c-none", ISCSI_HEADER_DIGEST_CRC32C_NONE },
            { "none-crc32c", ISCSI_HEADER_DIGEST_NONE_CRC32C },
        };
        size_t i;
        for (i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
            if (strcasecmp(v, d[i].name) == 0) {
                a->header_digest = d[i].digest;
                break;
            }
        }
        if (i == sizeof(d) / sizeof(d[0])) {
            return error_setf(err, EINVAL, "iSCSI header-digest '%s' is "
                              "not one of crc32c, none, crc32c-none, "
                              "none-crc32c", v);
        }
    }
    if (kvlist_has(opts, "timeout")) {
        uint64_t t;
        int ret = kvlist_get_uint(opts, "timeout", 0, &t, err);
        if (ret < 0) {
            return ret;
        }
        if (t > 86400) {
            return error_setf(err, EINVAL, "iSCSI timeout %llu is more "
                              "than a day", (unsigned long long)t);
        }
        a->timeout = (unsigned)t;
    }
    return 0;
}

/* Per-target defaults (iscsi_set_target_defaults): a short list, set
 * by pool back ends, read by every session's address. */
typedef struct TargetDefaults {
    char *target, *user, *secret_id, *initiator;
    struct TargetDefaults *next;
} TargetDefaults;

static pthread_mutex_t defaults_lock = PTHREAD_MUTEX_INITIALIZER;
static TargetDefaults *defaults;

static void defaults_free(TargetDefaults *d)
{
    free(d->target);
    free(d->user);
    free(d->secret_id);
    free(d->initiator);
    free(d);
}

int iscsi_set_target_defaults(const char *target, const char *user,
                              const char *secret_id,
                              const char *initiator_name)
{
    TargetDefaults *n = NULL;
    if (user || initiator_name) {
        n = calloc(1, sizeof(*n));
        if (!n || !(n->target = strdup(target)) ||
            (user && !(n->user = strdup(user))) ||
            (secret_id && !(n->secret_id = strdup(secret_id))) ||
            (initiator_name && !(n->initiator = strdup(initiator_name)))) {
            if (n) {
                defaults_free(n);
            }
            return -ENOMEM;
        }
    }
    pthread_mutex_lock(&defaults_lock);
    for (TargetDefaults **p = &defaults; *p; p = &(*p)->next) {
        if (strcmp((*p)->target, target) == 0) {
            TargetDefaults *old = *p;
            *p = old->next;
            defaults_free(old);
            break;
        }
    }
    if (n) {
        n->next = defaults;
        defaults = n;
    }
    pthread_mutex_unlock(&defaults_lock);
    return 0;
}

/* Fills what a's own options left out from the target's defaults. */
static int apply_defaults(IscsiAddr *a, Error *err)
{
    char *secret = NULL;
    pthread_mutex_lock(&defaults_lock);
    for (TargetDefaults *d = defaults; d; d = d->next) {
        if (strcmp(d->target, a->target) != 0) {
            continue;
        }
        if (!a->user && !a->password && d->user) {
            a->user = strdup(d->user);
            secret = d->secret_id ? strdup(d->secret_id) : NULL;
        }
        if (!a->initiator_name && d->initiator) {
            a->initiator_name = strdup(d->initiator);
        }
        break;
    }
    pthread_mutex_unlock(&defaults_lock);
    if (!secret) {
        return 0;
    }
    KVList o = { 0 };
    kvlist_set(&o, "password-secret", secret);
    free(secret);
    int ret = parse_options(a, &o, err);
    kvlist_free(&o);
    return ret;
}

int iscsi_addr_parse(IscsiAddr *a, const char *url, KVList *opts,
                     bool need_lun, Error *err)
{
    memset(a, 0, sizeof(*a));
    a->lun = -1;
    a->header_digest = ISCSI_HEADER_DIGEST_NONE_CRC32C;
    a->timeout = ISCSI_DEFAULT_TIMEOUT;
    int ret = 0;
    if (url && *url) {
        if (!iscsi_is_url(url)) {
            ret = error_setf(err, EINVAL, "'%s' is not an iSCSI URL (the "
                             "form is " URL_SYNTAX ")", url);
        } else {
            ret = parse_url(a, url, need_lun && !opts, err);
        }
    }
    if (ret >= 0 && opts) {
        ret = parse_options(a, opts, err);
    }
    if (ret >= 0 && !a->portal) {
        ret = error_setf(err, EINVAL, "iSCSI: no portal given (a URL "
                         URL_SYNTAX ", or portal=host[:port])");
    }
    if (ret >= 0 && a->target) {
        ret = apply_defaults(a, err);
    }
    if (ret >= 0 && need_lun && !a->target) {
        ret = error_setf(err, EINVAL, "iSCSI: no target given (the target "
                         "IQN in the URL, or target=IQN)");
    }
    if (ret >= 0 && need_lun && a->lun < 0) {
        ret = error_setf(err, EINVAL, "iSCSI: no LUN given (the LUN number "
                         "at the end of the URL, or lun=N)");
    }
    if (ret >= 0 && a->password && !a->user) {
        ret = error_setf(err, EINVAL, "iSCSI: a CHAP password needs a user "
                         "(user=NAME)");
    }
    if (ret >= 0 && a->user && !a->password) {
        ret = error_setf(err, EINVAL, "iSCSI: CHAP user '%s' needs a "
                         "password: give password-secret=ID with --object "
                         "secret,id=ID,file=PATH", a->user);
    }
    if (ret >= 0 && a->iser) {
        ret = error_setf(err, ENOTSUP, "iSCSI: transport 'iser' needs RDMA, "
                         "which this build does not use; use 'tcp'");
    }
    if (ret >= 0 && !a->initiator_name &&
        !(a->initiator_name = default_initiator_name())) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    if (ret < 0) {
        iscsi_addr_free(a);
    }
    return ret;
}

char *iscsi_addr_display(const IscsiAddr *a)
{
    char lun[16] = "";
    if (a->lun >= 0) {
        snprintf(lun, sizeof(lun), "/%d", a->lun);
    }
    size_t len = strlen(a->portal) + (a->target ? strlen(a->target) : 0) +
                 (a->user ? strlen(a->user) : 0) + 40;
    char *s = malloc(len);
    if (s) {
        snprintf(s, len, "iscsi://%s%s%s%s%s%s", a->user ? a->user : "",
                 a->user ? "@" : "", a->portal, a->target ? "/" : "",
                 a->target ? a->target : "", lun);
    }
    return s;
}
