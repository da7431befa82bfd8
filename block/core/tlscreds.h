/*
 * tlscreds.h - named TLS credentials, defined as QEMU defines them:
 *   --object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client
 *            [,verify-peer=on|off]
 *   --object tls-creds-psk,id=ID,dir=DIR,endpoint=server|client
 *            [,username=NAME]
 * and looked up by id (the NBD server's tls-creds=, the NBD client's
 * tls-creds=).  The directory holds QEMU's file names: ca-cert.pem,
 * server-cert.pem, server-key.pem, client-cert.pem, client-key.pem
 * (x509) or keys.psk with "username:hexkey" lines (psk).
 *
 * The registry is process-wide and thread-safe; a definition is never
 * changed or removed while the process runs, so a pointer from
 * tls_creds_find stays valid.  Nothing here reads key material: the
 * users load the files when they need them.
 */
#ifndef IMGTOOL_BLOCK_TLSCREDS_H
#define IMGTOOL_BLOCK_TLSCREDS_H

#include <stdbool.h>

#include "block/block.h"

typedef enum { TLS_CREDS_X509, TLS_CREDS_PSK } TlsCredsType;

typedef struct TlsCreds {
    char *id;
    TlsCredsType type;
    char *dir;
    bool server;          /* endpoint=server */
    bool verify_peer;     /* x509: require/verify the peer's certificate */
    char *username;       /* psk client: the identity (default "qemu") */
    struct TlsCreds *next;
} TlsCreds;

/* True when objdef's type is a TLS credentials type. */
bool tls_creds_is_def(const char *objdef);
/* Defines credentials from "tls-creds-x509,id=...,..." (qom-type= works
 * too); checks that the files the endpoint needs are readable. */
int tls_creds_define(const char *objdef, Error *err);
const TlsCreds *tls_creds_find(const char *id);
/* The path of file `name` in the credentials' directory (malloc'd). */
char *tls_creds_path(const TlsCreds *c, const char *name);

#endif
