/*
 * vol-create.c - the commands that make volumes: vol-create (from XML),
 * vol-create-as (from options), vol-create-from (XML, content copied
 * from another volume) and vol-clone, with virsh's options.
 *
 * imgtool adds --key-secret ID (with --object secret,id=ID,...) and
 * --iter-time MS for LUKS volumes made with vol-create-as; in XML the
 * secret is <encryption format='luks'><secret type='passphrase'
 * uuid='ID'/></encryption>.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/pool-cmd.h"

static const VirshOpt create_opts[] = {
    { "pool", VA_STRING, VA_REQUIRED, "pool name" },
    { "file", VA_STRING, VA_REQUIRED, "file containing an XML vol "
      "description ('-': standard input)" },
    { "prealloc-metadata", VA_BOOL, 0, "preallocate metadata (for qcow2 "
      "instead of full allocation)" },
    { "validate", VA_BOOL, 0, "validate the XML against libvirt's schema" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd create_cmd = {
    "vol-create", "create a vol from an XML file", create_opts,
    VA_OUTPUT | VA_OBJECT | VA_PROGRESS,
};

static const VirshOpt create_as_opts[] = {
    { "pool", VA_STRING, VA_REQUIRED, "pool name" },
    { "name", VA_STRING, VA_REQUIRED, "name of the volume" },
    { "capacity", VA_STRING, VA_REQUIRED, "size of the vol, as scaled "
      "integer (default bytes)" },
    { "allocation", VA_STRING, 0, "initial allocation size, as scaled "
      "integer (default bytes)" },
    { "format", VA_STRING, 0, "file format type raw,qcow2,luks" },
    { "backing-vol", VA_STRING, 0, "the backing volume if taking a "
      "snapshot" },
    { "backing-vol-format", VA_STRING, 0, "format of backing volume if "
      "taking a snapshot" },
    { "prealloc-metadata", VA_BOOL, 0, "preallocate metadata (for qcow2 "
      "instead of full allocation)" },
    { "print-xml", VA_BOOL, 0, "print XML document, but don't "
      "define/create" },
    { "key-secret", VA_STRING, VA_NAMED, "luks: the id of the --object "
      "secret holding the passphrase (imgtool)" },
    { "iter-time", VA_STRING, VA_NAMED, "luks: PBKDF time in milliseconds "
      "(imgtool)" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd create_as_cmd = {
    "vol-create-as", "create a volume from a set of args", create_as_opts,
    VA_OUTPUT | VA_OBJECT | VA_PROGRESS,
};

static const VirshOpt create_from_opts[] = {
    { "pool", VA_STRING, VA_REQUIRED, "pool name or uuid" },
    { "file", VA_STRING, VA_REQUIRED, "file containing an XML vol "
      "description ('-': standard input)" },
    { "vol", VA_STRING, VA_REQUIRED, "vol name, key or path" },
    { "inputpool", VA_STRING, 0, "pool name or uuid of the input volume's "
      "pool" },
    { "prealloc-metadata", VA_BOOL, 0, "preallocate metadata (for qcow2 "
      "instead of full allocation)" },
    { "validate", VA_BOOL, 0, "validate the XML against libvirt's schema" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd create_from_cmd = {
    "vol-create-from", "create a vol, using another volume as input",
    create_from_opts, VA_OUTPUT | VA_OBJECT | VA_PROGRESS,
};

static const VirshOpt clone_opts[] = {
    { "vol", VA_STRING, VA_REQUIRED, "vol name, key or path" },
    { "newname", VA_STRING, VA_REQUIRED, "clone name" },
    { "pool", VA_STRING, 0, "pool name or uuid" },
    { "prealloc-metadata", VA_BOOL, 0, "preallocate metadata (for qcow2 "
      "instead of full allocation)" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd clone_cmd = {
    "vol-clone", "clone a volume", clone_opts,
    VA_OUTPUT | VA_OBJECT | VA_PROGRESS,
};

static int size_arg(const char *s, uint64_t *out)
{
    if (pool_parse_scaled(s, out) < 0) {
        imgtool_error("Malformed size %s", s);
        return -1;
    }
    return 0;
}

static int read_args(const VirshArgs *a, const char *file,
                     VolCreateArgs *va)
{
    char *xml;
    size_t len;
    Error err = { 0 };
    if (pcmd_read_xml(file, &xml, &len, &err) < 0) {
        return pcmd_fail(&err, "Failed to read file '%s'", file);
    }
    int ret = virsh_flag(a, "validate")
                  ? pool_xml_validate(xml, len, "storagevol", &err) : 0;
    if (ret == 0) {
        ret = pool_vol_args_from_xml(xml, len, va, &err);
    }
    free(xml);
    if (ret < 0) {
        return pcmd_fail(&err, "%s", file);
    }
    va->prealloc_metadata = virsh_flag(a, "prealloc-metadata");
    return 0;
}

int cmd_vol_create(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&create_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *file = virsh_arg(&a, "file");
    VolCreateArgs va = { .mode = -1 };
    if (read_args(&a, file, &va)) {
        return 1;
    }
    PoolStore *s = pcmd_store();
    Progress *pr = s ? progress_start(a.progress) : NULL;
    VolInfo v = { 0 };
    Error err = { 0 };
    if (!s) {
        rc = 1;
    } else if (pool_vol_create(s, virsh_arg(&a, "pool"), &va, pcmd_progress,
                               pr, &v, &err) < 0) {
        progress_finish(pr);
        rc = pcmd_fail(&err, "Failed to create vol from %s", file);
    } else {
        progress_finish(pr);
        json_t *j = pcmd_vol_json(&v);
        rc = pcmd_done(&a, j, "Vol %s created from %s", v.name, file);
    }
    pool_store_close(s);
    vol_info_clear(&v);
    vol_create_args_clear(&va);
    return rc;
}

int cmd_vol_create_as(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&create_as_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    VolCreateArgs va = { .mode = -1 };
    const char *alloc = virsh_arg(&a, "allocation");
    const char *iter = virsh_arg(&a, "iter-time");
    if (size_arg(virsh_arg(&a, "capacity"), &va.capacity) < 0 ||
        (alloc && size_arg(alloc, &va.allocation) < 0) ||
        (iter && size_arg(iter, &va.iter_time) < 0)) {
        return 1;
    }
    va.has_allocation = alloc != NULL;
    va.name = (char *)virsh_arg(&a, "name");
    va.format = (char *)virsh_arg(&a, "format");
    va.backing_vol = (char *)virsh_arg(&a, "backing-vol");
    va.backing_format = (char *)virsh_arg(&a, "backing-vol-format");
    va.secret = (char *)virsh_arg(&a, "key-secret");
    va.prealloc_metadata = virsh_flag(&a, "prealloc-metadata");
    if (virsh_flag(&a, "print-xml")) {
        char *xml = pool_vol_args_to_xml(&va);
        if (a.output == OUTPUT_JSON) {
            pcmd_done(&a, json_pack("{s:s}", "xml", xml ? xml : ""), "%s",
                      "");
        } else {
            printf("%s\n", xml ? xml : "");
        }
        free(xml);
        return 0;
    }
    PoolStore *s = pcmd_store();
    if (!s) {
        return 1;
    }
    Progress *pr = progress_start(a.progress);
    VolInfo v = { 0 };
    Error err = { 0 };
    if (pool_vol_create(s, virsh_arg(&a, "pool"), &va, pcmd_progress, pr,
                        &v, &err) < 0) {
        progress_finish(pr);
        pool_store_close(s);
        return pcmd_fail(&err, "Failed to create vol %s", va.name);
    }
    pool_store_close(s);
    progress_finish(pr);
    json_t *j = pcmd_vol_json(&v);
    rc = pcmd_done(&a, j, "Vol %s created", v.name);
    vol_info_clear(&v);
    return rc;
}

int cmd_vol_create_from(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&create_from_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *file = virsh_arg(&a, "file");
    const char *from = virsh_arg(&a, "vol");
    VolCreateArgs va = { .mode = -1 };
    if (read_args(&a, file, &va)) {
        return 1;
    }
    PoolStore *s = pcmd_store();
    Progress *pr = s ? progress_start(a.progress) : NULL;
    VolInfo v = { 0 };
    Error err = { 0 };
    if (!s) {
        rc = 1;
    } else if (pool_vol_create_from(s, virsh_arg(&a, "pool"), &va,
                                    virsh_arg(&a, "inputpool"), from,
                                    pcmd_progress, pr, &v, &err) < 0) {
        progress_finish(pr);
        rc = pcmd_fail(&err, "Failed to create vol from %s", file);
    } else {
        progress_finish(pr);
        json_t *j = pcmd_vol_json(&v);
        rc = pcmd_done(&a, j, "Vol %s created from input vol %s", v.name,
                       from);
    }
    pool_store_close(s);
    vol_info_clear(&v);
    vol_create_args_clear(&va);
    return rc;
}

int cmd_vol_clone(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&clone_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *vol = virsh_arg(&a, "vol");
    const char *newname = virsh_arg(&a, "newname");
    PoolStore *s = pcmd_store();
    if (!s) {
        return 1;
    }
    Progress *pr = progress_start(a.progress);
    VolInfo v = { 0 };
    Error err = { 0 };
    if (pool_vol_clone(s, virsh_arg(&a, "pool"), vol, newname,
                       pcmd_progress, pr, &v, &err) < 0) {
        progress_finish(pr);
        pool_store_close(s);
        return pcmd_fail(&err, "Failed to clone vol from %s", vol);
    }
    pool_store_close(s);
    progress_finish(pr);
    json_t *j = pcmd_vol_json(&v);
    rc = pcmd_done(&a, j, "Vol %s cloned from %s", v.name, vol);
    vol_info_clear(&v);
    return rc;
}
