/*
 * poolxml.c - libvirt's storage pool XML (formatstorage): writing a
 * PoolDef the way libvirt formats it, and building one from
 * pool-define-as's options as virsh does.  Reading is poolxml-read.c's
 * (in the imgtool-xml module).  The definition is stored in libvirt's own
 * layout, so `pool-dumpxml` shows what imgtool understood.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pools/backend.h"
#include "pools/util.h"

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
