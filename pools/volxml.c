/*
 * volxml.c - libvirt's storage volume XML: a volume's description as
 * vol-dumpxml prints it, and the definition vol-create / vol-create-from
 * take (name, capacity, allocation, target format, permissions mode,
 * qcow2 compat, clusterSize and features, LUKS encryption with its
 * secret, backingStore).
 *
 * A LUKS volume's <secret uuid=...> (or usage=...) names the secret
 * that `--object secret,id=...` defines on imgtool's command line:
 * libvirt's secret objects have no daemon here to live in.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pools/backend.h"
#include "pools/util.h"

void vol_create_args_clear(VolCreateArgs *a)
{
    free(a->name);
    free(a->format);
    free(a->backing_vol);
    free(a->backing_format);
    free(a->secret);
    free(a->compat);
    memset(a, 0, sizeof(*a));
    a->mode = -1;
}

/* <format type='FMT'/> inside <target> or <backingStore>. */
static void put_format(FILE *f, const char *fmt)
{
    fputs("    <format type='", f);
    pool_xml_escape(f, fmt);
    fputs("'/>\n", f);
}

/* A LUKS volume's passphrase, inside <encryption>: the --object secret
 * by uuid when its id is one, by usage otherwise. */
static void put_secret(FILE *f, const char *secret)
{
    char u[37];
    fputs("      <secret type='passphrase' ", f);
    fputs(pool_uuid_parse(secret, u) ? "uuid='" : "usage='", f);
    pool_xml_escape(f, secret);
    fputs("'/>\n", f);
}

static void put_backing_store(FILE *f, const char *path, const char *fmt)
{
    fputs("  <backingStore>\n    <path>", f);
    pool_xml_escape(f, path);
    fputs("</path>\n", f);
    if (fmt) {
        put_format(f, fmt);
    }
    fputs("  </backingStore>\n", f);
}

/* What virsh vol-create-as --print-xml shows. */
char *pool_vol_args_to_xml(const VolCreateArgs *a)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        return NULL;
    }
    fputs("<volume>\n  <name>", f);
    pool_xml_escape(f, a->name);
    fprintf(f, "</name>\n  <capacity>%llu</capacity>\n",
            (unsigned long long)a->capacity);
    if (a->has_allocation) {
        fprintf(f, "  <allocation>%llu</allocation>\n",
                (unsigned long long)a->allocation);
    }
    if (a->format || a->secret) {
        fputs("  <target>\n", f);
        if (a->format) {
            put_format(f, a->format);
        }
        if (a->secret) {
            fputs("    <encryption format='luks'>\n", f);
            put_secret(f, a->secret);
            fputs("    </encryption>\n", f);
        }
        fputs("  </target>\n", f);
    }
    if (a->backing_vol) {
        put_backing_store(f, a->backing_vol, a->backing_format);
    }
    fputs("</volume>\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void put_timestamp(FILE *f, const char *name, int64_t ns)
{
    if (ns > 0) {
        fprintf(f, "      <%s>%lld.%09lld</%s>\n", name,
                (long long)(ns / 1000000000), (long long)(ns % 1000000000),
                name);
    }
}

static void put_perms(FILE *f, int mode, int uid, int gid)
{
    if (mode < 0 && uid < 0 && gid < 0) {
        return;
    }
    fputs("    <permissions>\n", f);
    if (mode >= 0) {
        fprintf(f, "      <mode>%04o</mode>\n", (unsigned)mode);
    }
    if (uid >= 0) {
        fprintf(f, "      <owner>%d</owner>\n", uid);
    }
    if (gid >= 0) {
        fprintf(f, "      <group>%d</group>\n", gid);
    }
    fputs("    </permissions>\n", f);
}

char *pool_vol_format_xml(const VolInfo *v)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        return NULL;
    }
    fprintf(f, "<volume type='%s'>\n  <name>", v->type);
    pool_xml_escape(f, v->name);
    fputs("</name>\n  <key>", f);
    pool_xml_escape(f, v->key);
    fputs("</key>\n", f);
    if (v->nextents) {
        fputs("  <source>\n", f);
        for (size_t i = 0; i < v->nextents; i++) {
            /* libvirt groups the extents of one device under it */
            if (i == 0 || strcmp(v->extents[i].device,
                                 v->extents[i - 1].device) != 0) {
                fputs("    <device path='", f);
                pool_xml_escape(f, v->extents[i].device);
                fputs("'>\n", f);
            }
            fprintf(f, "      <extent start='%llu' end='%llu'/>\n",
                    (unsigned long long)v->extents[i].start,
                    (unsigned long long)v->extents[i].end);
            if (i + 1 == v->nextents ||
                strcmp(v->extents[i].device, v->extents[i + 1].device)) {
                fputs("    </device>\n", f);
            }
        }
        fputs("  </source>\n", f);
    }
    fprintf(f, "  <capacity unit='bytes'>%llu</capacity>\n"
               "  <allocation unit='bytes'>%llu</allocation>\n"
               "  <physical unit='bytes'>%llu</physical>\n",
            (unsigned long long)v->capacity,
            (unsigned long long)v->allocation,
            (unsigned long long)v->physical);
    fputs("  <target>\n    <path>", f);
    pool_xml_escape(f, v->path);
    fputs("</path>\n", f);
    if (v->format) {
        put_format(f, v->format);
    }
    put_perms(f, v->mode, v->uid, v->gid);
    if (v->atime_ns || v->mtime_ns || v->ctime_ns) {
        fputs("    <timestamps>\n", f);
        put_timestamp(f, "atime", v->atime_ns);
        put_timestamp(f, "mtime", v->mtime_ns);
        put_timestamp(f, "ctime", v->ctime_ns);
        fputs("    </timestamps>\n", f);
    }
    if (v->format && strcmp(v->format, "luks") == 0) {
        fputs("    <encryption format='luks'>\n", f);
        if (v->secret) {
            put_secret(f, v->secret);
        }
        fputs("    </encryption>\n", f);
    }
    if (v->compat) {
        fputs("    <compat>", f);
        pool_xml_escape(f, v->compat);
        fputs("</compat>\n", f);
    }
    if (v->cluster_size) {
        fprintf(f, "    <clusterSize unit='B'>%llu</clusterSize>\n",
                (unsigned long long)v->cluster_size);
    }
    if (v->compat) {
        if (v->lazy_refcounts || v->extended_l2) {
            fputs("    <features>\n", f);
            if (v->lazy_refcounts) {
                fputs("      <lazy_refcounts/>\n", f);
            }
            if (v->extended_l2) {
                fputs("      <extended_l2/>\n", f);
            }
            fputs("    </features>\n", f);
        } else {
            fputs("    <features/>\n", f);
        }
    }
    fputs("  </target>\n", f);
    /* libvirt's schema has only file paths for a backing store; one on
     * the network (a gluster:// base) is left out, as libvirt cannot say
     * it either (info --backing-chain shows it). */
    if (v->backing_path && v->backing_path[0] == '/') {
        put_backing_store(f, v->backing_path, v->backing_format);
    }
    fputs("</volume>\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
