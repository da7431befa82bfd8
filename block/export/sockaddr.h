/*
 * sockaddr.h - the socket addresses servers listen on, in QEMU's
 * SocketAddress spelling: type=unix,path=P | type=inet,host=H,port=N |
 * type=fd,str=N (a listening socket inherited from the parent), given
 * under a prefix ("addr.type=unix,addr.path=/run/x.sock").
 *
 * A unix socket a server created is removed again by sockaddr_unlink;
 * an existing file there is replaced only when it is a socket (a stale
 * one from a killed run), never a regular file.
 */
#ifndef IMGTOOL_EXPORT_SOCKADDR_H
#define IMGTOOL_EXPORT_SOCKADDR_H

#include <stdbool.h>

#include "block/block.h"

typedef enum { SOCKADDR_UNIX, SOCKADDR_INET, SOCKADDR_FD } SockAddrType;

typedef struct SockAddr {
    SockAddrType type;
    char *path;         /* unix */
    char *host;         /* inet ("" or NULL: every address) */
    char *port;         /* inet */
    int fd;             /* fd */
} SockAddr;

/* Reads "<prefix>.type", "<prefix>.path" ... (prefix NULL: no prefix)
 * and marks them used. */
int sockaddr_parse(SockAddr *a, KVList *opts, const char *prefix,
                   Error *err);
void sockaddr_free(SockAddr *a);
/* "unix:/path", "inet:host:port", "fd:3" */
char *sockaddr_describe(const SockAddr *a);

/* Listening, non-blocking, close-on-exec sockets: up to max fds (inet
 * names may resolve to an IPv4 and an IPv6 address).  Returns how many,
 * or a negative errno with err set. */
int sockaddr_listen(const SockAddr *a, int *fds, int max, Error *err);
/* Removes the unix socket file sockaddr_listen made (no-op otherwise). */
void sockaddr_unlink(const SockAddr *a);

/* Accepts one connection from a listening socket: non-blocking and
 * close-on-exec, TCP_NODELAY on TCP.  -EAGAIN when none is waiting. */
int sockaddr_accept(int listen_fd);

#endif
