/*
 * poolxml-read.c - reading libvirt's storage pool XML (formatstorage)
 * into a PoolDef.  Part of the imgtool-xml module (pools/xml-module.c),
 * so that only commands that read pool definitions map libxml2.
 *
 * What is read: the pool type, name, uuid, the source (devices, name,
 * format, hosts, dir, initiator, auth), the target path and its
 * permissions.  Sizes in the input are ignored (they are live values).
 * Elements imgtool does not know are ignored, as libvirt ignores them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pools/backend.h"
#include "pools/util.h"
#include "pools/xml.h"

/* <host name='h' port='p'/>; a name written "h:p" (as virsh's
 * --source-host passes it on) is split the same way. */
static int parse_host(xmlNodePtr h, PoolDef *d, Error *err)
{
    char *name = pxml_attr(h, "name");
    char *port = pxml_attr(h, "port");
    int ret = 0;
    if (!name || !*name) {
        ret = error_setf(err, EINVAL, "missing storage pool host name");
        goto out;
    }
    char *colon = strrchr(name, ':');
    if (!port && colon && colon == strchr(name, ':') && colon[1]) {
        port = strdup(colon + 1);
        *colon = 0;
    }
    int p = 0;
    if (port) {
        char *end;
        long v = strtol(port, &end, 10);
        if (!*port || *end || v < 1 || v > 65535) {
            ret = error_setf(err, EINVAL, "storage pool host '%s' has a bad "
                             "port '%s'", name, port);
            goto out;
        }
        p = (int)v;
    }
    PoolHost *nh = realloc(d->hosts, (d->nhosts + 1) * sizeof(*nh));
    if (!nh) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    d->hosts = nh;
    d->hosts[d->nhosts].name = name;
    d->hosts[d->nhosts++].port = p;
    name = NULL;
out:
    free(name);
    free(port);
    return ret;
}

static int parse_auth(xmlNodePtr auth, PoolDef *d, Error *err)
{
    if (!auth) {
        return 0;
    }
    d->auth_type = pxml_attr(auth, "type");
    d->auth_username = pxml_attr(auth, "username");
    xmlNodePtr sec = pxml_child(auth, "secret");
    d->auth_secret = pxml_attr(sec, "usage");
    if (!d->auth_secret) {
        d->auth_secret = pxml_attr(sec, "uuid");
        d->auth_secret_is_uuid = d->auth_secret != NULL;
    }
    if (!d->auth_type || strcmp(d->auth_type, "chap") != 0) {
        return error_setf(err, ENOTSUP, "storage pool auth type '%s' is not "
                          "supported (chap is)",
                          d->auth_type ? d->auth_type : "");
    }
    if (!d->auth_username || !*d->auth_username) {
        return error_setf(err, EINVAL, "missing auth username attribute");
    }
    if (!d->auth_secret || !*d->auth_secret) {
        return error_setf(err, EINVAL, "missing auth secret uuid or usage "
                          "attribute");
    }
    return 0;
}

static int parse_source(xmlNodePtr src, PoolDef *d, Error *err)
{
    if (!src) {
        return 0;
    }
    for (xmlNodePtr dev = pxml_child(src, "device"); dev;
         dev = pxml_next(dev, "device")) {
        char *path = pxml_attr(dev, "path");
        if (!path || !*path) {
            free(path);
            return error_setf(err, EINVAL, "missing device path in pool "
                              "source");
        }
        char **nv = realloc(d->source_devices,
                            (d->ndevices + 1) * sizeof(*nv));
        if (!nv) {
            free(path);
            return error_setf(err, ENOMEM, "out of memory");
        }
        d->source_devices = nv;
        d->source_devices[d->ndevices++] = path;
    }
    for (xmlNodePtr h = pxml_child(src, "host"); h;
         h = pxml_next(h, "host")) {
        int ret = parse_host(h, d, err);
        if (ret < 0) {
            return ret;
        }
    }
    d->source_name = pxml_child_text(src, "name");
    d->source_format = pxml_attr(pxml_child(src, "format"), "type");
    d->source_dir = pxml_attr(pxml_child(src, "dir"), "path");
    d->initiator_iqn = pxml_attr(pxml_child(pxml_child(src, "initiator"),
                                            "iqn"), "name");
    return parse_auth(pxml_child(src, "auth"), d, err);
}

int pxml_read_pool(const char *xml, size_t len, PoolDef *d, Error *err)
{
    pool_def_clear(d);
    xmlDocPtr doc;
    int ret = pxml_parse(xml, len, "pool", &doc, err);
    if (ret < 0) {
        return ret;
    }
    xmlNodePtr root = xmlDocGetRootElement(doc);
    d->type = pxml_attr(root, "type");
    if (!d->type) {
        ret = error_setf(err, EINVAL, "storage pool type is missing");
        goto out;
    }
    d->name = pxml_child_text(root, "name");
    if (!d->name) {
        ret = error_setf(err, EINVAL, "missing pool source name element");
        goto out;
    }
    ret = pool_check_name("pool", d->name, err);
    if (ret < 0) {
        goto out;
    }
    char *uuid = pxml_child_text(root, "uuid");
    if (uuid) {
        if (!pool_uuid_parse(uuid, d->uuid)) {
            ret = error_setf(err, EINVAL, "malformed uuid element '%s'",
                             uuid);
        }
        free(uuid);
        if (ret < 0) {
            goto out;
        }
    }
    ret = parse_source(pxml_child(root, "source"), d, err);
    if (ret < 0) {
        goto out;
    }
    xmlNodePtr target = pxml_child(root, "target");
    d->target_path = pxml_child_text(target, "path");
    ret = pxml_permissions(target, &d->mode, &d->uid, &d->gid, &d->label,
                           err);
out:
    xmlFreeDoc(doc);
    if (ret < 0) {
        pool_def_clear(d);
    }
    return ret;
}
