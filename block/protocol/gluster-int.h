/*
 * gluster-int.h - the Gluster protocol's internals, shared by
 * gluster-conn.c (where a file is, and the process's connections to
 * volumes), gluster.c (the block driver) and gluster-vol.c (what a pool
 * does with files on a volume).
 *
 * Invariants:
 *  - one glfs_t per (servers, volume, log settings) for the whole
 *    process, shared by every node and pool operation on that volume;
 *  - a connection is never glfs_fini'd while the process runs (see
 *    gluster-conn.c for why that is safe and why it matters);
 *  - every descriptor a node opened is fsync'd (when it was writable)
 *    and closed before the node's close returns.
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_GLUSTER_INT_H
#define IMGTOOL_BLOCK_PROTOCOL_GLUSTER_INT_H

#include "block/driver.h"
#include <glusterfs/api/glfs.h>

#include "block/protocol/gluster.h"

#define GLUSTER_MAX_SERVERS 16
#define GLUSTER_DEFAULT_PORT 24007

typedef struct GlusterServer {
    bool unix_socket;        /* else TCP */
    char *host;              /* TCP host, or the socket path */
    int port;                /* TCP */
} GlusterServer;

typedef struct GlusterAddr {
    GlusterServer servers[GLUSTER_MAX_SERVERS];
    int nservers;
    char *volume;
    char *path;              /* inside the volume, no leading '/' */
    int debug;               /* gfapi log level 0..9 */
    char *logfile;           /* NULL: /dev/null unless debug was given */
    bool debug_given;
} GlusterAddr;

bool gluster_is_url(const char *filename);

/* Fills a from `url` (may be NULL) and opts (volume, path, debug,
 * logfile, server.N.type/host/port/path); options override the URL.
 * need_path: the address must name a file (a pool needs only the
 * volume).  One line on failure naming what is missing. */
int gluster_addr_parse(GlusterAddr *a, const char *url, KVList *opts,
                       bool need_path, Error *err);
void gluster_addr_free(GlusterAddr *a);
/* gluster[+unix]://host[:port]/volume/path (malloc'd), for messages and
 * as the name a file elsewhere on the volume is opened by. */
char *gluster_addr_url(const GlusterAddr *a, const char *path);

/* The process's connection to a's volume, made on first use (bounded by
 * gfapi's own connection timeouts).  Release with gluster_put. */
glfs_t *gluster_get(const GlusterAddr *a, Error *err);
void gluster_put(glfs_t *fs);

#endif
