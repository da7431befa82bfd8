/*
 * secret.c - the process-wide registry of named secrets.
 *
 * Secret bytes live in exactly one place (the registry entry) and in the
 * short-lived copies handed to drivers; both are wiped before they are
 * freed.  The object definition itself is parsed into a scratch buffer
 * that is wiped too, so no stray copy of an inline data= value stays in
 * the heap after secret_define() returns.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "block/core/secret.h"

/* Passphrases are short; a bound keeps file=/dev/zero from eating the
 * machine. */
#define SECRET_MAX_BYTES (1024 * 1024)

typedef struct Secret {
    char *id;
    uint8_t *data;
    size_t len;
    struct Secret *next;
} Secret;

static pthread_mutex_t secret_lock = PTHREAD_MUTEX_INITIALIZER;
static Secret *secret_list;

void secret_free(uint8_t *data, size_t len)
{
    if (data) {
        OPENSSL_cleanse(data, len + 1);
        free(data);
    }
}

/* QEMU's identifier rule: a letter, then letters, digits, '-', '.', '_'. */
static bool valid_id(const char *s)
{
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'))) {
        return false;
    }
    for (s++; *s; s++) {
        bool ok = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                  (*s >= '0' && *s <= '9') || *s == '-' || *s == '.' ||
                  *s == '_';
        if (!ok) {
            return false;
        }
    }
    return true;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

/* Decodes in place.  Like qemu-img, padding and line breaks are
 * tolerated and left-over bits are dropped; anything else is refused. */
static int b64_decode(uint8_t *buf, size_t *len, Error *err)
{
    size_t out = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < *len; i++) {
        char c = (char)buf[i];
        if (c == '=' || c == '\n' || c == '\r') {
            continue;
        }
        int v = b64_value(c);
        if (v < 0) {
            return error_setf(err, EINVAL, "Base64 data contains invalid "
                              "characters");
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[out++] = (uint8_t)(acc >> bits);
        }
    }
    OPENSSL_cleanse(buf + out, *len - out);
    *len = out;
    return 0;
}

static int read_secret_file(const char *path, uint8_t **data, size_t *len,
                            Error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return error_setf(err, errno, "Unable to read %s: %s", path,
                          strerror(errno));
    }
    size_t cap = 256, n = 0;
    uint8_t *buf = malloc(cap + 1);
    int ret = 0;
    while (buf) {
        if (n == cap) {
            if (cap >= SECRET_MAX_BYTES) {
                ret = error_setf(err, EFBIG, "Unable to read %s: larger "
                                 "than %d bytes", path, SECRET_MAX_BYTES);
                break;
            }
            /* Grow by copying so the old buffer can be wiped. */
            uint8_t *nb = malloc(cap * 2 + 1);
            if (nb) {
                memcpy(nb, buf, n);
            }
            secret_free(buf, cap);
            buf = nb;
            cap *= 2;
            continue;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            ret = error_setf(err, errno, "Unable to read %s: %s", path,
                             strerror(errno));
            break;
        }
        if (r == 0) {
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    if (!buf) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (ret < 0) {
        secret_free(buf, cap);
        return ret;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

/* The parsed pieces of one definition; the values point into `scratch`,
 * which is wiped when parsing ends. */
typedef struct ObjDef {
    char *scratch;
    size_t scratch_len;
    const char *type, *id, *data, *file, *format;
} ObjDef;

static int objdef_store(ObjDef *d, const char *key, const char *val,
                        Error *err)
{
    const char **slot = NULL;
    if (!strcmp(key, "qom-type")) {
        slot = &d->type;
    } else if (!strcmp(key, "id")) {
        slot = &d->id;
    } else if (!strcmp(key, "data")) {
        slot = &d->data;
    } else if (!strcmp(key, "file")) {
        slot = &d->file;
    } else if (!strcmp(key, "format")) {
        slot = &d->format;
    } else if (!strcmp(key, "keyid") || !strcmp(key, "iv")) {
        return error_setf(err, ENOTSUP, "Encrypted secrets (%s=) are not "
                          "supported: give the secret with file= in a file "
                          "only you can read", key);
    } else {
        return error_setf(err, EINVAL, "Parameter '%s' is unexpected", key);
    }
    *slot = val;
    return 0;
}

/* Splits "a=b,c=d" (",," is a literal comma) into d; a bare first word
 * is the object type. */
static int objdef_parse(const char *def, ObjDef *d, Error *err)
{
    d->scratch_len = strlen(def) + 1;
    d->scratch = malloc(d->scratch_len);
    if (!d->scratch) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    char *out = d->scratch;
    const char *p = def;
    bool first = true;
    while (*p) {
        char *key = out, *val = NULL;
        while (*p) {
            if (*p == ',' && p[1] == ',') {
                *out++ = ',';
                p += 2;
            } else if (*p == ',') {
                break;
            } else if (*p == '=' && !val) {
                *out++ = '\0';
                val = out;
                p++;
            } else {
                *out++ = *p++;
            }
        }
        *out++ = '\0';
        if (*p == ',') {
            p++;
        }
        int ret;
        if (!val && first) {
            ret = objdef_store(d, "qom-type", key, err);
        } else if (!val) {
            ret = error_setf(err, EINVAL, "Parameter '%s' is missing a "
                             "value", key);
        } else {
            ret = objdef_store(d, key, val, err);
        }
        if (ret < 0) {
            return ret;
        }
        first = false;
    }
    return 0;
}

static Secret *find_locked(const char *id)
{
    for (Secret *s = secret_list; s; s = s->next) {
        if (strcmp(s->id, id) == 0) {
            return s;
        }
    }
    return NULL;
}

static int secret_build(const ObjDef *d, Secret **out, Error *err)
{
    if (!d->type || strcmp(d->type, "secret") != 0) {
        return error_setf(err, EINVAL, "Object type '%s' is not supported "
                          "(only 'secret' objects are)",
                          d->type ? d->type : "");
    }
    if (!d->id) {
        return error_setf(err, EINVAL, "Parameter 'id' is missing");
    }
    if (!valid_id(d->id)) {
        return error_setf(err, EINVAL, "Parameter 'id' expects an "
                          "identifier (letters, digits, '-', '.', '_', "
                          "starting with a letter)");
    }
    bool base64 = false;
    if (d->format && !strcmp(d->format, "base64")) {
        base64 = true;
    } else if (d->format && strcmp(d->format, "raw") != 0) {
        return error_setf(err, EINVAL, "Parameter 'format' does not accept "
                          "value '%s'", d->format);
    }
    if (d->data && d->file) {
        return error_setf(err, EINVAL, "'file' and 'data' are mutually "
                          "exclusive");
    }
    if (!d->data && !d->file) {
        return error_setf(err, EINVAL, "Either 'file' or 'data' must be "
                          "provided");
    }
    Secret *s = calloc(1, sizeof(*s));
    if (!s || !(s->id = strdup(d->id))) {
        free(s);
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = 0;
    if (d->file) {
        ret = read_secret_file(d->file, &s->data, &s->len, err);
    } else {
        s->len = strlen(d->data);
        s->data = malloc(s->len + 1);
        if (s->data) {
            memcpy(s->data, d->data, s->len + 1);
        } else {
            ret = error_setf(err, ENOMEM, "out of memory");
        }
    }
    if (ret == 0 && base64) {
        ret = b64_decode(s->data, &s->len, err);
        if (ret == 0) {
            s->data[s->len] = '\0';
        }
    }
    if (ret < 0) {
        secret_free(s->data, s->len);
        free(s->id);
        free(s);
        return ret;
    }
    *out = s;
    return 0;
}

int secret_define(const char *objdef, Error *err)
{
    ObjDef d = { 0 };
    Secret *s = NULL;
    int ret = objdef_parse(objdef, &d, err);
    if (ret == 0) {
        ret = secret_build(&d, &s, err);
    }
    if (d.scratch) {
        OPENSSL_cleanse(d.scratch, d.scratch_len);
        free(d.scratch);
    }
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&secret_lock);
    if (find_locked(s->id)) {
        pthread_mutex_unlock(&secret_lock);
        ret = error_setf(err, EEXIST, "An object with id '%s' already "
                         "exists", s->id);
        secret_free(s->data, s->len);
        free(s->id);
        free(s);
        return ret;
    }
    s->next = secret_list;
    secret_list = s;
    pthread_mutex_unlock(&secret_lock);
    return 0;
}

int secret_lookup(const char *id, uint8_t **data, size_t *len, Error *err)
{
    *data = NULL;
    *len = 0;
    pthread_mutex_lock(&secret_lock);
    Secret *s = find_locked(id);
    if (s) {
        *data = malloc(s->len + 1);
        if (*data) {
            memcpy(*data, s->data, s->len);
            (*data)[s->len] = '\0';
            *len = s->len;
        }
    }
    pthread_mutex_unlock(&secret_lock);
    if (!s) {
        return error_setf(err, ENOENT, "No secret with id '%s'", id);
    }
    if (!*data) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

void secret_clear_all(void)
{
    pthread_mutex_lock(&secret_lock);
    Secret *s = secret_list;
    secret_list = NULL;
    pthread_mutex_unlock(&secret_lock);
    while (s) {
        Secret *next = s->next;
        secret_free(s->data, s->len);
        free(s->id);
        free(s);
        s = next;
    }
}
