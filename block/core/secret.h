/*
 * secret.h - named secrets (passphrases) defined with
 * `--object secret,id=ID,data=...|file=PATH[,format=raw|base64]`, as
 * qemu-img takes them, and looked up by drivers through an option such
 * as key-secret=ID.
 *
 * The registry is process-wide and thread-safe.  Every copy of secret
 * bytes it hands out or drops is wiped (OPENSSL_cleanse) before it is
 * freed; nothing here ever logs secret bytes.
 */
#ifndef IMGTOOL_BLOCK_SECRET_H
#define IMGTOOL_BLOCK_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "block/block.h"

/* Defines a secret from an object definition: "secret,id=ID,..." (the
 * type may also be given as qom-type=secret).  Refuses other object
 * types, encrypted secrets (keyid=, iv=), duplicate ids, unknown keys. */
int secret_define(const char *objdef, Error *err);

/* A malloc'd copy of the secret's bytes (*data is NUL-terminated one
 * byte past *len for callers that want a string).  Release it with
 * secret_free().  Returns -ENOENT with "No secret with id 'ID'". */
int secret_lookup(const char *id, uint8_t **data, size_t *len, Error *err);

/* Wipes and frees a copy from secret_lookup (NULL is fine). */
void secret_free(uint8_t *data, size_t len);

/* Wipes and forgets every secret (at exit). */
void secret_clear_all(void);

#endif
