/*
 * kvlist.c - "key=value,key=value" option lists as qemu-img takes them
 * for -o and --image-opts.  ",," stands for a literal comma in a value.
 * Every lookup marks the key used so that leftovers can be reported as
 * invalid parameters, which is how a typo gets a clear error.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"

int kvlist_set(KVList *l, const char *key, const char *value)
{
    KVPair *items = realloc(l->items, (l->n + 1) * sizeof(*items));
    if (!items) {
        return -ENOMEM;
    }
    l->items = items;
    items[l->n].key = strdup(key);
    items[l->n].value = strdup(value);
    items[l->n].used = false;
    if (!items[l->n].key || !items[l->n].value) {
        free(items[l->n].key);
        free(items[l->n].value);
        return -ENOMEM;
    }
    l->n++;
    return 0;
}

/* Copies one token of s up to an unescaped ',' (or '=' when stop_eq),
 * unescaping ",,". Returns the position after the token. */
static const char *take_token(const char *s, bool stop_eq, char *out,
                              size_t *outlen)
{
    size_t n = 0;
    while (*s) {
        if (*s == ',') {
            if (s[1] == ',') {
                out[n++] = ',';
                s += 2;
                continue;
            }
            break;
        }
        if (stop_eq && *s == '=') {
            break;
        }
        out[n++] = *s++;
    }
    out[n] = '\0';
    *outlen = n;
    return s;
}

int kvlist_parse(KVList *l, const char *str, const char *implied_key,
                 Error *err)
{
    size_t cap = strlen(str) + 1;
    char *key = malloc(cap), *val = malloc(cap);
    int ret = 0;
    bool first = true;
    if (!key || !val) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    const char *p = str;
    while (*p) {
        size_t klen, vlen;
        p = take_token(p, true, key, &klen);
        if (*p == '=') {
            p = take_token(p + 1, false, val, &vlen);
            if (klen == 0) {
                ret = error_setf(err, EINVAL, "Invalid option '%s': empty name",
                                 str);
                goto out;
            }
            ret = kvlist_set(l, key, val);
        } else if (first && implied_key) {
            ret = kvlist_set(l, implied_key, key);
        } else if (klen == 0) {
            ret = error_setf(err, EINVAL, "Invalid option list '%s'", str);
            goto out;
        } else {
            ret = error_setf(err, EINVAL,
                             "Invalid parameter '%s': expected key=value",
                             key);
            goto out;
        }
        if (ret < 0) {
            ret = error_setf(err, -ret, "out of memory");
            goto out;
        }
        first = false;
        if (*p == ',') {
            p++;
        }
    }
out:
    free(key);
    free(val);
    return ret;
}

static KVPair *find_last(const KVList *l, const char *key)
{
    for (size_t i = l->n; i-- > 0;) {
        if (strcmp(l->items[i].key, key) == 0) {
            return &l->items[i];
        }
    }
    return NULL;
}

const char *kvlist_get(KVList *l, const char *key)
{
    if (!l) {
        return NULL;
    }
    KVPair *found = NULL;
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->items[i].key, key) == 0) {
            l->items[i].used = true;
            found = &l->items[i];
        }
    }
    return found ? found->value : NULL;
}

const char *kvlist_peek(const KVList *l, const char *key)
{
    KVPair *p = find_last(l, key);
    return p ? p->value : NULL;
}

bool kvlist_has(const KVList *l, const char *key)
{
    return l && find_last(l, key) != NULL;
}

int kvlist_get_bool(KVList *l, const char *key, bool def, bool *out,
                    Error *err)
{
    const char *v = kvlist_get(l, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes") ||
        !strcmp(v, "1")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no") ||
               !strcmp(v, "0")) {
        *out = false;
    } else {
        return error_setf(err, EINVAL,
                          "Parameter '%s' expects 'on' or 'off', got '%s'",
                          key, v);
    }
    return 0;
}

int kvlist_get_size(KVList *l, const char *key, uint64_t def, uint64_t *out,
                    Error *err)
{
    const char *v = kvlist_get(l, key);
    if (!v) {
        *out = def;
        return 0;
    }
    int ret = parse_size(v, out);
    if (ret < 0) {
        return error_setf(err, EINVAL,
                          "Parameter '%s' expects a size (e.g. 64k, 1G), got '%s'",
                          key, v);
    }
    return 0;
}

int kvlist_get_uint(KVList *l, const char *key, uint64_t def, uint64_t *out,
                    Error *err)
{
    const char *v = kvlist_get(l, key);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 0);
    if (!*v || *end || errno || *v == '-') {
        return error_setf(err, EINVAL,
                          "Parameter '%s' expects a number, got '%s'", key, v);
    }
    *out = n;
    return 0;
}

void kvlist_extract_prefix(KVList *l, const char *prefix, KVList *out)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < l->n; i++) {
        KVPair *p = &l->items[i];
        if (strncmp(p->key, prefix, plen) == 0 && p->key[plen] == '.') {
            p->used = true;
            kvlist_set(out, p->key + plen + 1, p->value);
        }
    }
}

int kvlist_check_unused(const KVList *l, const char *what, Error *err)
{
    if (!l) {
        return 0;
    }
    for (size_t i = 0; i < l->n; i++) {
        if (!l->items[i].used) {
            return error_setf(err, EINVAL, "Invalid parameter '%s'%s%s",
                              l->items[i].key, what ? " for " : "",
                              what ? what : "");
        }
    }
    return 0;
}

void kvlist_free(KVList *l)
{
    if (!l) {
        return;
    }
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
    }
    free(l->items);
    l->items = NULL;
    l->n = 0;
}
