/*
 * xml.c - the libxml2 side of reading pool and volume XML (see xml.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/xmlerror.h>

#include "pools/pool.h"
#include "pools/util.h"
#include "pools/xml.h"

/* libxml2 would print parse errors on stderr; the library must not. */
static void quiet(void *ctx, const char *msg, ...)
{
    (void)ctx;
    (void)msg;
}

int pxml_parse(const char *xml, size_t len, const char *root,
               xmlDocPtr *doc, Error *err)
{
    *doc = NULL;
    if (len > POOL_MAX_XML) {
        return error_setf(err, EFBIG, "XML document larger than %d bytes",
                          POOL_MAX_XML);
    }
    xmlSetGenericErrorFunc(NULL, quiet);
    xmlResetLastError();
    xmlDocPtr d = xmlReadMemory(xml, (int)len, "pool.xml", NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR |
                                XML_PARSE_NOWARNING);
    if (!d) {
        const xmlError *e = xmlGetLastError();
        char msg[256] = "not well-formed";
        if (e && e->message) {
            snprintf(msg, sizeof(msg), "%s", e->message);
            msg[strcspn(msg, "\n")] = '\0';
        }
        return error_setf(err, EINVAL, "malformed XML (line %d): %s",
                          e ? e->line : 0, msg);
    }
    if (d->intSubset || d->extSubset) {
        xmlFreeDoc(d);
        return error_setf(err, EINVAL, "XML with a DOCTYPE is not accepted");
    }
    xmlNodePtr r = xmlDocGetRootElement(d);
    if (!r || strcmp((const char *)r->name, root) != 0) {
        int ret = error_setf(err, EINVAL, "unexpected root element <%s>, "
                             "expecting <%s>", r ? (const char *)r->name : "",
                             root);
        xmlFreeDoc(d);
        return ret;
    }
    *doc = d;
    return 0;
}

xmlNodePtr pxml_next(xmlNodePtr n, const char *name)
{
    for (n = n ? n->next : NULL; n; n = n->next) {
        if (n->type == XML_ELEMENT_NODE &&
            strcmp((const char *)n->name, name) == 0) {
            return n;
        }
    }
    return NULL;
}

xmlNodePtr pxml_child(xmlNodePtr n, const char *name)
{
    for (n = n ? n->children : NULL; n; n = n->next) {
        if (n->type == XML_ELEMENT_NODE &&
            strcmp((const char *)n->name, name) == 0) {
            return n;
        }
    }
    return NULL;
}

static char *dup_xml(xmlChar *s)
{
    if (!s) {
        return NULL;
    }
    char *r = strdup((const char *)s);
    xmlFree(s);
    return r;
}

char *pxml_text(xmlNodePtr n)
{
    return n ? dup_xml(xmlNodeGetContent(n)) : NULL;
}

char *pxml_attr(xmlNodePtr n, const char *name)
{
    return n ? dup_xml(xmlGetProp(n, (const xmlChar *)name)) : NULL;
}

char *pxml_child_text(xmlNodePtr n, const char *name)
{
    return pxml_text(pxml_child(n, name));
}

/* libvirt's units: case-insensitive, "bytes"/"b", k/KiB = 1024,
 * KB = 1000, and so on; pool_parse_scaled knows them as suffixes. */
int pxml_scaled(xmlNodePtr parent, const char *name, uint64_t *out,
                bool *present, Error *err)
{
    xmlNodePtr n = pxml_child(parent, name);
    *present = n != NULL;
    if (!n) {
        return 0;
    }
    char *text = pxml_text(n);
    char *unit = pxml_attr(n, "unit");
    char *both = text ? pool_strfmt("%s%s", text, unit ? unit : "") : NULL;
    int ret = both ? pool_parse_scaled(both, out) : -EINVAL;
    if (ret < 0) {
        ret = error_setf(err, -ret, "invalid <%s> value '%s%s%s'", name,
                         text ? text : "", unit ? " " : "",
                         unit ? unit : "");
    }
    free(text);
    free(unit);
    free(both);
    return ret;
}

static int parse_id(xmlNodePtr perms, const char *name, int *out,
                    Error *err)
{
    char *t = pxml_child_text(perms, name);
    *out = -1;
    if (!t) {
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(t, &end, 10);
    int ret = 0;
    if (end == t || *end || errno || v < -1 || v > INT32_MAX) {
        ret = error_setf(err, EINVAL, "malformed <%s> '%s'", name, t);
    } else {
        *out = (int)v;
    }
    free(t);
    return ret;
}

int pxml_permissions(xmlNodePtr parent, int *mode, int *uid, int *gid,
                     char **label, Error *err)
{
    *mode = *uid = *gid = -1;
    *label = NULL;
    xmlNodePtr p = pxml_child(parent, "permissions");
    if (!p) {
        return 0;
    }
    char *m = pxml_child_text(p, "mode");
    if (m) {
        char *end;
        errno = 0;
        long v = strtol(m, &end, 8);
        if (end == m || *end || errno || v < 0 || v > 07777) {
            int ret = error_setf(err, EINVAL, "malformed octal mode '%s'", m);
            free(m);
            return ret;
        }
        *mode = (int)v;
        free(m);
    }
    int ret = parse_id(p, "owner", uid, err);
    if (ret == 0) {
        ret = parse_id(p, "group", gid, err);
    }
    if (ret == 0) {
        *label = pxml_child_text(p, "label");
    }
    return ret;
}
