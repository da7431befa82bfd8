/*
 * poolxml.c - libvirt's storage pool XML (formatstorage): reading a
 * definition into a PoolDef, writing one back the way libvirt formats
 * it, and building one from pool-define-as's options as virsh does.
 *
 * What is read: the pool type, name, uuid, the source (devices, name,
 * format; host and dir are accepted and ignored by the types imgtool
 * has), the target path and its permissions.  Sizes in the input are
 * ignored (they are live values).  Elements imgtool does not know are
 * ignored, as libvirt ignores them; the definition is stored in
 * libvirt's own layout, so `pool-dumpxml` shows what imgtool understood.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pools/backend.h"
#include "pools/util.h"
#include "pools/xml.h"

void pool_def_clear(PoolDef *d)
{
    free(d->type);
    free(d->name);
    free(d->target_path);
    free(d->source_name);
    free(d->source_format);
    for (size_t i = 0; i < d->ndevices; i++) {
        free(d->source_devices[i]);
    }
    free(d->source_devices);
    for (size_t i = 0; i < d->nhosts; i++) {
        free(d->hosts[i].name);
    }
    free(d->hosts);
    free(d->source_dir);
    free(d->initiator_iqn);
    free(d->auth_type);
    free(d->auth_username);
    free(d->auth_secret);
    free(d->label);
    memset(d, 0, sizeof(*d));
    d->mode = d->uid = d->gid = -1;
}

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

int pool_def_parse(const char *xml, size_t len, PoolDef *d, Error *err)
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

static void put_permissions(FILE *f, const PoolDef *d)
{
    if (d->mode < 0 && d->uid < 0 && d->gid < 0 && !d->label) {
        return;
    }
    fputs("    <permissions>\n", f);
    if (d->mode >= 0) {
        fprintf(f, "      <mode>%04o</mode>\n", (unsigned)d->mode);
    }
    if (d->uid >= 0) {
        fprintf(f, "      <owner>%d</owner>\n", d->uid);
    }
    if (d->gid >= 0) {
        fprintf(f, "      <group>%d</group>\n", d->gid);
    }
    if (d->label) {
        fputs("      <label>", f);
        pool_xml_escape(f, d->label);
        fputs("</label>\n", f);
    }
    fputs("    </permissions>\n", f);
}

char *pool_def_format(const PoolDef *d, const uint64_t sizes[3])
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        return NULL;
    }
    fputs("<pool type='", f);
    pool_xml_escape(f, d->type);
    fputs("'>\n  <name>", f);
    pool_xml_escape(f, d->name);
    fprintf(f, "</name>\n  <uuid>%s</uuid>\n", d->uuid);
    if (sizes) {
        fprintf(f, "  <capacity unit='bytes'>%llu</capacity>\n"
                   "  <allocation unit='bytes'>%llu</allocation>\n"
                   "  <available unit='bytes'>%llu</available>\n",
                (unsigned long long)sizes[0], (unsigned long long)sizes[1],
                (unsigned long long)sizes[2]);
    }
    /* libvirt's order: host, device, dir, name, initiator, format, auth */
    fputs("  <source>\n", f);
    for (size_t i = 0; i < d->nhosts; i++) {
        fputs("    <host name='", f);
        pool_xml_escape(f, d->hosts[i].name);
        if (d->hosts[i].port) {
            fprintf(f, "' port='%d", d->hosts[i].port);
        }
        fputs("'/>\n", f);
    }
    for (size_t i = 0; i < d->ndevices; i++) {
        fputs("    <device path='", f);
        pool_xml_escape(f, d->source_devices[i]);
        fputs("'/>\n", f);
    }
    if (d->source_dir) {
        fputs("    <dir path='", f);
        pool_xml_escape(f, d->source_dir);
        fputs("'/>\n", f);
    }
    if (d->source_name) {
        fputs("    <name>", f);
        pool_xml_escape(f, d->source_name);
        fputs("</name>\n", f);
    }
    if (d->initiator_iqn) {
        fputs("    <initiator>\n      <iqn name='", f);
        pool_xml_escape(f, d->initiator_iqn);
        fputs("'/>\n    </initiator>\n", f);
    }
    if (d->source_format) {
        fputs("    <format type='", f);
        pool_xml_escape(f, d->source_format);
        fputs("'/>\n", f);
    }
    if (d->auth_type) {
        fputs("    <auth type='", f);
        pool_xml_escape(f, d->auth_type);
        fputs("' username='", f);
        pool_xml_escape(f, d->auth_username);
        fputs(d->auth_secret_is_uuid ? "'>\n      <secret uuid='"
                                     : "'>\n      <secret usage='", f);
        pool_xml_escape(f, d->auth_secret);
        fputs("'/>\n    </auth>\n", f);
    }
    fputs("  </source>\n", f);
    if (d->target_path) {
        fputs("  <target>\n    <path>", f);
        pool_xml_escape(f, d->target_path);
        fputs("</path>\n", f);
        put_permissions(f, d);
        fputs("  </target>\n", f);
    }
    fputs("</pool>\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* virsh's pool-define-as builds the XML from whatever was given, for any
 * type; the definition is checked when it is defined. */
int pool_xml_from_args(const PoolDefineArgs *a, char **xml, Error *err)
{
    *xml = NULL;
    if (!a->name || !a->type) {
        return error_setf(err, EINVAL, "pool name and type are required");
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    fputs("<pool type='", f);
    pool_xml_escape(f, a->type);
    fputs("'>\n  <name>", f);
    pool_xml_escape(f, a->name);
    fputs("</name>\n", f);
    if (a->auth_type && (!a->auth_username ||
                         (!a->secret_usage && !a->secret_uuid))) {
        fclose(f);
        free(buf);
        return error_setf(err, EINVAL, "--auth-type needs --auth-username "
                          "and --secret-usage or --secret-uuid");
    }
    if (a->source_host || a->source_path || a->source_dev ||
        a->source_name || a->source_format || a->source_initiator ||
        a->auth_type) {
        fputs("  <source>\n", f);
        if (a->source_host) {
            fputs("    <host name='", f);
            pool_xml_escape(f, a->source_host);
            fputs("'/>\n", f);
        }
        if (a->source_path) {
            fputs("    <dir path='", f);
            pool_xml_escape(f, a->source_path);
            fputs("'/>\n", f);
        }
        if (a->source_dev) {
            fputs("    <device path='", f);
            pool_xml_escape(f, a->source_dev);
            fputs("'/>\n", f);
        }
        if (a->source_initiator) {
            fputs("    <initiator>\n      <iqn name='", f);
            pool_xml_escape(f, a->source_initiator);
            fputs("'/>\n    </initiator>\n", f);
        }
        if (a->auth_type) {
            fputs("    <auth type='", f);
            pool_xml_escape(f, a->auth_type);
            fputs("' username='", f);
            pool_xml_escape(f, a->auth_username);
            fputs(a->secret_usage ? "'>\n      <secret usage='"
                                  : "'>\n      <secret uuid='", f);
            pool_xml_escape(f, a->secret_usage ? a->secret_usage
                                               : a->secret_uuid);
            fputs("'/>\n    </auth>\n", f);
        }
        if (a->source_format) {
            fputs("    <format type='", f);
            pool_xml_escape(f, a->source_format);
            fputs("'/>\n", f);
        }
        if (a->source_name) {
            fputs("    <name>", f);
            pool_xml_escape(f, a->source_name);
            fputs("</name>\n", f);
        }
        fputs("  </source>\n", f);
    }
    if (a->target) {
        fputs("  <target>\n    <path>", f);
        pool_xml_escape(f, a->target);
        fputs("</path>\n  </target>\n", f);
    }
    fputs("</pool>\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return error_setf(err, ENOMEM, "out of memory");
    }
    *xml = buf;
    return 0;
}
