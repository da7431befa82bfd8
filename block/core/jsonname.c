/*
 * jsonname.c - "json:{...}" image names, as QEMU takes them: the object
 * is the image's options, nested objects are option groups.  QEMU also
 * writes such names into qcow2 headers as backing files when plain file
 * names cannot say how the backing image is opened.
 *
 * QEMU's JSON parser is wider than RFC 8259 in one way that people use:
 * strings may be single-quoted ('driver': 'qcow2'), with \' as an
 * escape in either kind of string.  Such text is rewritten into strict
 * JSON before jansson sees it; a real number where a string is expected
 * becomes the string QEMU makes of it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "block/block.h"

#define JSON_PREFIX "json:"
/* Deeper nesting than any real option tree: a hostile backing name must
 * not run the flattening out of stack. */
#define JSON_MAX_DEPTH 16

bool block_is_json_name(const char *name)
{
    return name && strncmp(name, JSON_PREFIX, strlen(JSON_PREFIX)) == 0;
}

static int flatten(const json_t *obj, const char *prefix, int depth,
                   KVList *out, Error *err)
{
    const char *key;
    json_t *v;

    if (depth > JSON_MAX_DEPTH) {
        return error_setf(err, EINVAL, "json: options nested too deeply");
    }
    json_object_foreach((json_t *)obj, key, v) {
        char *full = NULL;
        if (asprintf(&full, "%s%s%s", prefix, *prefix ? "." : "", key) < 0) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        char num[32];
        const char *val = NULL;
        int ret = 0;
        switch (json_typeof(v)) {
        case JSON_OBJECT:
            ret = flatten(v, full, depth + 1, out, err);
            break;
        case JSON_STRING:
            val = json_string_value(v);
            break;
        case JSON_REAL:
            /* %.17g: what QEMU makes of a number given for a string
             * option (1.5e6 is "1500000") */
            snprintf(num, sizeof(num), "%.17g", json_real_value(v));
            val = num;
            break;
        case JSON_INTEGER:
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(v));
            val = num;
            break;
        case JSON_TRUE:
            val = "on";
            break;
        case JSON_FALSE:
            val = "off";
            break;
        case JSON_NULL:
            /* "backing": null opens a layer without its backing file (to
             * read only what the layer holds); the block layer takes an
             * empty backing option for that. */
            if (strcmp(key, "backing") == 0) {
                val = "";
                break;
            }
            /* fall through */
        default:
            ret = error_setf(err, EINVAL, "json: option '%s' must be a "
                             "string, a number, a boolean or an "
                             "object (null only for 'backing')", full);
            break;
        }
        if (ret == 0 && val && kvlist_set(out, full, val) < 0) {
            ret = error_setf(err, ENOMEM, "out of memory");
        }
        free(full);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* QEMU's dialect in strict JSON: single-quoted strings become
 * double-quoted ones (a " inside them escaped, \' unescaped), and \'
 * inside a double-quoted string becomes a plain '.  Everything else,
 * errors included, is left for jansson to judge.  malloc'd or NULL. */
static char *strict_json(const char *in)
{
    size_t len = strlen(in);
    /* worst case: every byte of a single-quoted string is a '"' */
    char *out = malloc(2 * len + 1), *o = out;
    if (!out) {
        return NULL;
    }
    char quote = 0;
    for (const char *c = in; *c; c++) {
        if (!quote) {
            if (*c == '\'' || *c == '"') {
                quote = *c;
                *o++ = '"';
            } else {
                *o++ = *c;
            }
            continue;
        }
        if (*c == quote) {
            quote = 0;
            *o++ = '"';
        } else if (*c == '\\' && c[1] == '\'') {
            *o++ = '\'';
            c++;
        } else if (*c == '\\' && c[1]) {
            *o++ = *c++;
            *o++ = *c;
        } else if (*c == '"') {
            /* only in a single-quoted string */
            *o++ = '\\';
            *o++ = '"';
        } else {
            *o++ = *c;
        }
    }
    *o = '\0';
    return out;
}

int block_json_name_to_opts(const char *name, KVList *out, Error *err)
{
    json_error_t jerr;
    char *text = strict_json(name + strlen(JSON_PREFIX));
    if (!text) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) {
        return error_setf(err, EINVAL, "Could not parse the JSON options "
                          "in the image name: %s", jerr.text);
    }
    int ret;
    if (!json_is_object(root)) {
        ret = error_setf(err, EINVAL, "json: image options must be a JSON "
                         "object");
    } else {
        ret = flatten(root, "", 0, out, err);
    }
    json_decref(root);
    return ret;
}
