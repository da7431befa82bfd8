/*
 * validate.c - checking XML against libvirt's own RelaxNG schemas
 * (/usr/share/libvirt/schemas, from libvirt-clients), for
 * pool-define --validate and vol-create --validate: the same check as
 * `virt-xml-validate FILE storagepool`.  Part of the imgtool-xml module.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/relaxng.h>

#include "pools/backend.h"
#include "pools/util.h"
#include "pools/xml.h"

#define SCHEMA_DIR "/usr/share/libvirt/schemas"

typedef struct FirstError {
    char msg[512];
} FirstError;

static void keep_first(void *opaque, xmlErrorPtr e)
{
    FirstError *f = opaque;
    if (!f->msg[0] && e && e->message) {
        snprintf(f->msg, sizeof(f->msg), "%s", e->message);
        f->msg[strcspn(f->msg, "\n")] = '\0';
    }
}

static void quiet(void *ctx, const char *msg, ...)
{
    (void)ctx;
    (void)msg;
}

int pxml_validate(const char *xml, size_t len, const char *schema,
                  Error *err)
{
    char *path = pool_strfmt("%s/%s.rng", SCHEMA_DIR, schema);
    if (!path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    if (access(path, R_OK) < 0) {
        int ret = error_setf(err, ENOENT, "--validate needs libvirt's schema "
                             "%s (package libvirt-clients)", path);
        free(path);
        return ret;
    }
    xmlDocPtr doc;
    const char *root = strcmp(schema, "storagevol") == 0 ? "volume" : "pool";
    int ret = pxml_parse(xml, len, root, &doc, err);
    if (ret < 0) {
        free(path);
        return ret;
    }
    xmlSetGenericErrorFunc(NULL, quiet);
    FirstError fe = { "" };
    xmlRelaxNGParserCtxtPtr pc = xmlRelaxNGNewParserCtxt(path);
    xmlRelaxNGPtr rng = pc ? xmlRelaxNGParse(pc) : NULL;
    xmlRelaxNGValidCtxtPtr vc = rng ? xmlRelaxNGNewValidCtxt(rng) : NULL;
    if (!vc) {
        ret = error_setf(err, EIO, "cannot load the schema %s", path);
    } else {
        xmlRelaxNGSetValidStructuredErrors(vc, keep_first, &fe);
        if (xmlRelaxNGValidateDoc(vc, doc) != 0) {
            ret = error_setf(err, EINVAL, "XML document failed to validate "
                             "against schema: %s",
                             fe.msg[0] ? fe.msg : "invalid");
        }
    }
    xmlRelaxNGFreeValidCtxt(vc);
    xmlRelaxNGFree(rng);
    xmlRelaxNGFreeParserCtxt(pc);
    xmlFreeDoc(doc);
    free(path);
    return ret;
}
