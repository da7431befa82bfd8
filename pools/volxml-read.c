/*
 * volxml-read.c - reading libvirt's storage volume XML (vol-create's
 * input) into VolCreateArgs.  Part of the imgtool-xml module
 * (pools/xml-module.c), so that only commands that read XML map libxml2.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pools/backend.h"
#include "pools/util.h"
#include "pools/xml.h"

static int parse_target(xmlNodePtr t, VolCreateArgs *a, Error *err)
{
    if (!t) {
        return 0;
    }
    a->format = pxml_attr(pxml_child(t, "format"), "type");
    int uid, gid;
    char *label = NULL;
    int ret = pxml_permissions(t, &a->mode, &uid, &gid, &label, err);
    free(label);
    if (ret < 0) {
        return ret;
    }
    a->compat = pxml_child_text(t, "compat");
    bool present;
    ret = pxml_scaled(t, "clusterSize", &a->cluster_size, &present, err);
    if (ret < 0) {
        return ret;
    }
    a->lazy_refcounts = pxml_child(pxml_child(t, "features"),
                                   "lazy_refcounts") != NULL;
    xmlNodePtr enc = pxml_child(t, "encryption");
    if (enc) {
        char *fmt = pxml_attr(enc, "format");
        bool luks = fmt && strcmp(fmt, "luks") == 0;
        free(fmt);
        if (!luks) {
            return error_setf(err, ENOTSUP, "only <encryption "
                              "format='luks'> is supported");
        }
        xmlNodePtr sec = pxml_child(enc, "secret");
        a->secret = pxml_attr(sec, "uuid");
        if (!a->secret) {
            a->secret = pxml_attr(sec, "usage");
        }
        if (!a->secret) {
            return error_setf(err, EINVAL, "<encryption> needs a <secret "
                              "type='passphrase' uuid='...'/>, the id of an "
                              "--object secret");
        }
        if (!a->format) {
            a->format = strdup("luks");
        }
    }
    return 0;
}

int pxml_read_vol(const char *xml, size_t len, VolCreateArgs *a,
                  Error *err)
{
    vol_create_args_clear(a);
    xmlDocPtr doc;
    int ret = pxml_parse(xml, len, "volume", &doc, err);
    if (ret < 0) {
        return ret;
    }
    xmlNodePtr root = xmlDocGetRootElement(doc);
    bool present;
    a->name = pxml_child_text(root, "name");
    if (!a->name) {
        ret = error_setf(err, EINVAL, "missing volume name element");
        goto out;
    }
    ret = pool_check_name("volume", a->name, err);
    if (ret < 0) {
        goto out;
    }
    ret = pxml_scaled(root, "capacity", &a->capacity, &present, err);
    if (ret == 0 && !present) {
        ret = error_setf(err, EINVAL, "missing capacity element");
    }
    if (ret == 0) {
        ret = pxml_scaled(root, "allocation", &a->allocation,
                          &a->has_allocation, err);
    }
    if (ret == 0) {
        ret = parse_target(pxml_child(root, "target"), a, err);
    }
    xmlNodePtr b = pxml_child(root, "backingStore");
    if (ret == 0 && b) {
        a->backing_vol = pxml_child_text(b, "path");
        a->backing_format = pxml_attr(pxml_child(b, "format"), "type");
        if (!a->backing_vol) {
            ret = error_setf(err, EINVAL, "missing backing store path");
        }
    }
out:
    xmlFreeDoc(doc);
    if (ret < 0) {
        vol_create_args_clear(a);
    }
    return ret;
}
