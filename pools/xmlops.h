/*
 * xmlops.h - what the imgtool-xml module (pools/xml-module.c) offers the
 * rest of pools/: every reader of libvirt's XML.  libxml2 (and the ICU
 * and libstdc++ it pulls in, some 1.8 MiB of resident memory at start-up)
 * is mapped only by commands that read a pool or volume definition; an
 * image command on a plain file never loads it.  Writing XML needs no
 * library (poolxml.c, volxml.c).  Internal to pools/.
 */
#ifndef IMGTOOL_POOLS_XMLOPS_H
#define IMGTOOL_POOLS_XMLOPS_H

#include <stddef.h>

#include "pools/backend.h"

typedef struct PoolXmlOps {
    int (*read_pool)(const char *xml, size_t len, PoolDef *d, Error *err);
    int (*read_vol)(const char *xml, size_t len, VolCreateArgs *a,
                    Error *err);
    int (*validate)(const char *xml, size_t len, const char *schema,
                    Error *err);
} PoolXmlOps;

#endif
