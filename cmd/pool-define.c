/*
 * pool-define.c - `pool-define FILE`, `pool-define-as NAME TYPE ...` and
 * `pool-create-as NAME TYPE ... [--build]`, with virsh's options.
 * pool-create-as makes a transient pool: started now, gone when it is
 * destroyed (or after a reboot).
 */
#include <stdlib.h>
#include <string.h>

#include "imgtool/pool-cmd.h"

#define DEFINE_AS_OPTIONS                                                    \
    { "name", VA_STRING, VA_REQUIRED, "name of the pool" },                  \
    { "type", VA_STRING, VA_REQUIRED, "type of the pool (dir, logical, "     \
      "iscsi, iscsi-direct, gluster)" },                                     \
    { "print-xml", VA_BOOL, 0, "print XML document, but don't "             \
      "define/create" },                                                     \
    { "source-host", VA_STRING, 0, "source-host for underlying storage" },   \
    { "source-path", VA_STRING, 0, "source path for underlying storage" },   \
    { "source-dev", VA_STRING, 0, "source device for underlying storage" },  \
    { "source-name", VA_STRING, 0, "source name for underlying storage" },   \
    { "target", VA_STRING, 0, "target for underlying storage" },             \
    { "source-format", VA_STRING, 0, "format for underlying storage" },      \
    { "auth-type", VA_STRING, VA_NAMED, "auth type to be used for "         \
      "underlying storage (chap)" },                                         \
    { "auth-username", VA_STRING, VA_NAMED, "auth username to be used for " \
      "underlying storage" },                                                \
    { "secret-usage", VA_STRING, VA_NAMED, "auth secret usage: the id of "  \
      "an --object secret" },                                                \
    { "secret-uuid", VA_STRING, VA_NAMED, "auth secret UUID: the id of an " \
      "--object secret" },                                                   \
    { "source-initiator", VA_STRING, VA_NAMED, "initiator iqn for "         \
      "underlying storage" }

static const VirshOpt define_opts[] = {
    { "file", VA_STRING, VA_REQUIRED, "file containing an XML pool "
      "description ('-': standard input)" },
    { "validate", VA_BOOL, 0, "validate the XML against libvirt's schema" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd define_cmd = {
    "pool-define", "define (but don't start) a pool from an XML file",
    define_opts, VA_OUTPUT,
};

static const VirshOpt define_as_opts[] = {
    DEFINE_AS_OPTIONS,
    { NULL, 0, 0, NULL },
};
static const VirshCmd define_as_cmd = {
    "pool-define-as", "define a pool from a set of args", define_as_opts,
    VA_OUTPUT,
};

static const VirshOpt create_as_opts[] = {
    DEFINE_AS_OPTIONS,
    { "build", VA_BOOL, 0, "build the pool as normal" },
    { "no-overwrite", VA_BOOL, 0, "do not overwrite any existing data" },
    { "overwrite", VA_BOOL, 0, "overwrite any existing data" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd create_as_cmd = {
    "pool-create-as", "create (start) a transient pool from a set of args",
    create_as_opts, VA_OUTPUT | VA_OBJECT,
};

int cmd_pool_define(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&define_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *file = virsh_arg(&a, "file");
    char *xml;
    size_t len;
    Error err = { 0 };
    if (pcmd_read_xml(file, &xml, &len, &err) < 0) {
        return pcmd_fail(&err, "Failed to read file '%s'", file);
    }
    if (virsh_flag(&a, "validate") &&
        pool_xml_validate(xml, len, "storagepool", &err) < 0) {
        free(xml);
        return pcmd_fail(&err, "%s", file);
    }
    PoolStore *s = pcmd_store();
    char *name = NULL;
    if (!s || pool_define(s, xml, len, &name, &err) < 0) {
        free(xml);
        pool_store_close(s);
        return s ? pcmd_fail(&err, "Failed to define pool from %s", file)
                 : 1;
    }
    free(xml);
    pool_store_close(s);
    rc = pcmd_done(&a, json_pack("{s:s}", "pool", name),
                   "Pool %s defined from %s", name, file);
    free(name);
    return rc;
}

static int define_as(int argc, char **argv, const VirshCmd *cmd,
                     bool create)
{
    VirshArgs a;
    int rc = virsh_args_parse(cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    PoolDefineArgs d = {
        .name = virsh_arg(&a, "name"),
        .type = virsh_arg(&a, "type"),
        .source_host = virsh_arg(&a, "source-host"),
        .source_path = virsh_arg(&a, "source-path"),
        .source_dev = virsh_arg(&a, "source-dev"),
        .source_name = virsh_arg(&a, "source-name"),
        .target = virsh_arg(&a, "target"),
        .source_format = virsh_arg(&a, "source-format"),
        .source_initiator = virsh_arg(&a, "source-initiator"),
        .auth_type = virsh_arg(&a, "auth-type"),
        .auth_username = virsh_arg(&a, "auth-username"),
        .secret_usage = virsh_arg(&a, "secret-usage"),
        .secret_uuid = virsh_arg(&a, "secret-uuid"),
    };
    Error err = { 0 };
    char *xml;
    if (pool_xml_from_args(&d, &xml, &err) < 0) {
        return pcmd_fail(&err, "Failed to define pool %s", d.name);
    }
    if (virsh_flag(&a, "print-xml")) {
        if (a.output == OUTPUT_JSON) {
            rc = pcmd_done(&a, json_pack("{s:s}", "xml", xml), "%s", "");
        } else {
            printf("%s\n", xml);
        }
        free(xml);
        return 0;
    }
    PoolStore *s = pcmd_store();
    char *name = NULL;
    int ret = -1;
    if (s && create) {
        unsigned flags = (virsh_flag(&a, "overwrite") ? POOL_BUILD_OVERWRITE
                                                      : 0) |
                         (virsh_flag(&a, "no-overwrite")
                              ? POOL_BUILD_NO_OVERWRITE : 0);
        ret = pool_create(s, xml, strlen(xml), virsh_flag(&a, "build"),
                          flags, &name, &err);
    } else if (s) {
        ret = pool_define(s, xml, strlen(xml), &name, &err);
    }
    free(xml);
    pool_store_close(s);
    if (ret < 0) {
        return s ? pcmd_fail(&err, "Failed to %s pool %s",
                             create ? "create" : "define", d.name)
                 : 1;
    }
    rc = pcmd_done(&a, json_pack("{s:s}", "pool", name), "Pool %s %s", name,
                   create ? "created" : "defined");
    free(name);
    return rc;
}

int cmd_pool_define_as(int argc, char **argv)
{
    return define_as(argc, argv, &define_as_cmd, false);
}

int cmd_pool_create_as(int argc, char **argv)
{
    return define_as(argc, argv, &create_as_cmd, true);
}
