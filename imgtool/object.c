/*
 * object.c - the command-line side of `--object`: define the secret in
 * the block layer's registry, warn about inline secrets, and make sure
 * every secret is wiped when the process exits.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/secret.h"
#include "block/core/tlscreds.h"
#include "imgtool/imgtool.h"
#include "imgtool/object.h"

/* The start of the value of the top-level key `key` in a "k=v,k=v"
 * definition (",," escapes a comma), or NULL. */
static char *find_value(char *def, const char *key)
{
    size_t klen = strlen(key);
    char *p = def;
    while (*p) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            return p + klen + 1;
        }
        while (*p && !(*p == ',' && p[1] != ',')) {
            p += (*p == ',') ? 2 : 1;
        }
        if (*p == ',') {
            p++;
        }
    }
    return NULL;
}

static void wipe_value(char *v)
{
    while (*v && !(*v == ',' && v[1] != ',')) {
        if (*v == ',') {
            *v++ = 'x';   /* the first of an escaped ",," */
        }
        *v++ = 'x';
    }
}

int imgtool_object_add(char *arg)
{
    static bool cleanup_registered;
    Error err = { 0 };
    if (!cleanup_registered) {
        atexit(secret_clear_all);
        cleanup_registered = true;
    }
    if (tls_creds_is_def(arg)) {
        if (tls_creds_define(arg, &err) < 0) {
            imgtool_report(&err);
            return -1;
        }
        return 0;
    }
    char *data = find_value(arg, "data");
    if (secret_define(arg, &err) < 0) {
        imgtool_report(&err);
        return -1;
    }
    if (data) {
        char id[128] = "";
        const char *idv = find_value(arg, "id");
        if (idv) {
            size_t n = strcspn(idv, ",");
            snprintf(id, sizeof(id), "%.*s", (int)(n < 100 ? n : 100), idv);
        }
        wipe_value(data);
        imgtool_warn("secret '%s' was given with data= on the command line, "
                     "where other users can see it; use file= instead", id);
    }
    return 0;
}
