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

#define PREALLOC_OPT                                                 \
    { "prealloc-metadata", VA_BOOL, 0, "preallocate metadata (for qcow2 " \
      "instead of full allocation)" }

static const VirshOpt create_opts[] = {
    { "pool", VA_STRING, VA_REQUIRED, "pool name" },
    { "file", VA_STRING, VA_REQUIRED, "file containing an XML vol "
      "description ('-': standard input)" },
    PREALLOC_OPT,
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
    PREALLOC_OPT,
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
    PCMD_OPT_VOL,
    { "inputpool", VA_STRING, 0, "pool name or uuid of the input volume's "
      "pool" },
    PREALLOC_OPT,
    { "validate", VA_BOOL, 0, "validate the XML against libvirt's schema" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd create_from_cmd = {
    "vol-create-from", "create a vol, using another volume as input",
    create_from_opts, VA_OUTPUT | VA_OBJECT | VA_PROGRESS,
};

static const VirshOpt clone_opts[] = {
    PCMD_OPT_VOL,
    { "newname", VA_STRING, VA_REQUIRED, "clone name" },
    PCMD_OPT_POOL,
    PREALLOC_OPT,
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

/* A volume-making command's run: the store, and the progress shown
 * while the pool copies content. */
typedef struct Making {
    PoolStore *s;
    Progress *pr;
    VolInfo v;
    Error err;
} Making;

static int making_start(const VirshArgs *a, Making *m)
{
    memset(m, 0, sizeof(*m));
    m->s = pcmd_store();
    if (!m->s) {
        return -1;
    }
    m->pr = progress_start(a->progress);
    return 0;
}

/* ret: the pool call's.  Reports "Failed to <fail_what> <fail_arg>: why"
 * or "Vol NAME <done_what><done_arg>" (or the volume as JSON). */
static int making_end(const VirshArgs *a, Making *m, int ret,
                      const char *fail_what, const char *fail_arg,
                      const char *done_what, const char *done_arg)
{
    progress_finish(m->pr);
    pool_store_close(m->s);
    int rc = ret < 0
                 ? pcmd_fail(&m->err, "Failed to %s %s", fail_what, fail_arg)
                 : pcmd_done(a, pcmd_vol_json(&m->v), "Vol %s %s%s",
                             m->v.name, done_what, done_arg);
    vol_info_clear(&m->v);
    return rc;
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
    Making m;
    rc = 1;
    if (making_start(&a, &m) == 0) {
        rc = making_end(&a, &m,
                        pool_vol_create(m.s, virsh_arg(&a, "pool"), &va,
                                        pcmd_progress, m.pr, &m.v, &m.err),
                        "create vol from", file, "created from ", file);
    }
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
        pcmd_print_xml(&a, xml ? xml : "");
        free(xml);
        return 0;
    }
    Making m;
    if (making_start(&a, &m) < 0) {
        return 1;
    }
    return making_end(&a, &m,
                      pool_vol_create(m.s, virsh_arg(&a, "pool"), &va,
                                      pcmd_progress, m.pr, &m.v, &m.err),
                      "create vol", va.name, "created", "");
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
    Making m;
    rc = 1;
    if (making_start(&a, &m) == 0) {
        rc = making_end(&a, &m,
                        pool_vol_create_from(m.s, virsh_arg(&a, "pool"), &va,
                                             virsh_arg(&a, "inputpool"), from,
                                             pcmd_progress, m.pr, &m.v,
                                             &m.err),
                        "create vol from", file, "created from input vol ",
                        from);
    }
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
    Making m;
    if (making_start(&a, &m) < 0) {
        return 1;
    }
    return making_end(&a, &m,
                      pool_vol_clone(m.s, virsh_arg(&a, "pool"), vol, newname,
                                     pcmd_progress, m.pr, &m.v, &m.err),
                      "clone vol from", vol, "cloned from ", vol);
}
