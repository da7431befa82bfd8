/*
 * vhost-export.h - what the two vhost-user export types share.
 */
#ifndef IMGTOOL_EXPORT_VHOST_EXPORT_H
#define IMGTOOL_EXPORT_VHOST_EXPORT_H

#include "block/export/sockaddr.h"

/* The socket address a vhost-user export listens on, from its addr.*
 * options: unix or fd only (qemu-storage-daemon's rule: the protocol
 * passes fds, which TCP cannot). */
int vhost_export_addr(SockAddr *a, KVList *opts, Error *err);

#endif
