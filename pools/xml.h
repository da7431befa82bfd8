/*
 * xml.h - reading libvirt's XML with libxml2, safely: documents are
 * bounded (POOL_MAX_XML), never fetch anything from the network, and a
 * DOCTYPE (where entity expansion attacks live) is refused outright.
 * libxml2 never prints: its errors come back as one line in err.
 * Internal to the imgtool-xml module (pools/xml-module.c): the rest of
 * pools/ reaches these readers through PoolXmlOps (pools/xmlops.h).
 */
#ifndef IMGTOOL_POOLS_XML_H
#define IMGTOOL_POOLS_XML_H

#include <stdbool.h>
#include <stdint.h>

#include <libxml/tree.h>

#include "block/block.h"
#include "pools/backend.h"

/* Parses xml whose root element must be `root`. */
int pxml_parse(const char *xml, size_t len, const char *root,
               xmlDocPtr *doc, Error *err);
/* The first child element of n called name, or NULL. */
xmlNodePtr pxml_child(xmlNodePtr n, const char *name);
/* The next sibling element called name after n, or NULL. */
xmlNodePtr pxml_next(xmlNodePtr n, const char *name);
/* Text content / attribute (malloc'd, NULL when absent). */
char *pxml_text(xmlNodePtr n);
char *pxml_attr(xmlNodePtr n, const char *name);
/* Text of the child `name`, or NULL. */
char *pxml_child_text(xmlNodePtr n, const char *name);
/* A libvirt scaled integer element (<capacity unit='G'>1</capacity>);
 * *present false when the element is missing. */
int pxml_scaled(xmlNodePtr parent, const char *name, uint64_t *out,
                bool *present, Error *err);
/* <permissions>: mode (octal), owner, group; -1 when unset. */
int pxml_permissions(xmlNodePtr parent, int *mode, int *uid, int *gid,
                     char **label, Error *err);

/* The readers the module's PoolXmlOps table holds. */
int pxml_read_pool(const char *xml, size_t len, PoolDef *d, Error *err);
int pxml_read_vol(const char *xml, size_t len, VolCreateArgs *a,
                  Error *err);
int pxml_validate(const char *xml, size_t len, const char *schema,
                  Error *err);

#endif
