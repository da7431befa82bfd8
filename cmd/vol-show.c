/*
 * vol-show.c - the commands that show volumes: vol-list, vol-info,
 * vol-path, vol-key, vol-name, vol-pool and vol-dumpxml, in virsh's
 * layouts (or --output=json).  A volume an interrupted vol-wipe left
 * half wiped is listed with a warning on stderr (and "state" in JSON).
 */
#include <stdlib.h>
#include <string.h>

#include "imgtool/pool-cmd.h"

static const VirshOpt list_opts[] = {
    { "pool", VA_STRING, VA_REQUIRED, "pool name or uuid" },
    { "details", VA_BOOL, 0, "display extended details for volumes" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd list_cmd = {
    "vol-list", "list vols", list_opts, VA_OUTPUT | VA_OBJECT,
};

static const VirshOpt info_opts[] = {
    PCMD_OPT_VOL,
    PCMD_OPT_POOL,
    { "bytes", VA_BOOL, 0, "sizes are represented in bytes rather than "
      "pretty units" },
    { "physical", VA_BOOL, 0, "return the physical size of the volume in "
      "allocation field" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd info_cmd = {
    "vol-info", "storage vol information", info_opts, VA_OUTPUT | VA_OBJECT,
};

static const VirshOpt vol_pool_opts[] = {
    PCMD_OPT_VOL,
    PCMD_OPT_POOL,
    { NULL, 0, 0, NULL },
};
static const VirshOpt vol_only_opts[] = {
    { "vol", VA_STRING, VA_REQUIRED, "volume key or path" },
    { "uuid", VA_BOOL, 0, "return the pool uuid rather than pool name" },
    { NULL, 0, 0, NULL },
};
static const VirshOpt name_opts[] = {
    { "vol", VA_STRING, VA_REQUIRED, "volume key or path" },
    { NULL, 0, 0, NULL },
};

static const VirshCmd path_cmd = {
    "vol-path", "returns the volume path for a given volume name or key",
    vol_pool_opts, VA_OUTPUT | VA_OBJECT,
};
static const VirshCmd key_cmd = {
    "vol-key", "returns the volume key for a given volume name or path",
    vol_pool_opts, VA_OUTPUT | VA_OBJECT,
};
static const VirshCmd dumpxml_cmd = {
    "vol-dumpxml", "vol information in XML", vol_pool_opts,
    VA_OUTPUT | VA_OBJECT,
};
static const VirshCmd vpool_cmd = {
    "vol-pool", "returns the storage pool for a given volume key or path",
    vol_only_opts, VA_OUTPUT | VA_OBJECT,
};
static const VirshCmd name_cmd = {
    "vol-name", "returns the volume name for a given volume key or path",
    name_opts, VA_OUTPUT | VA_OBJECT,
};

static void warn_state(const VolInfo *v)
{
    if (v->state == VOL_STATE_WIPE_INTERRUPTED) {
        imgtool_warn("volume '%s' was left half wiped by an interrupted "
                     "vol-wipe; wipe it again or delete it", v->name);
    }
}

int cmd_vol_list(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&list_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *pool = virsh_arg(&a, "pool");
    PoolStore *s = pcmd_store();
    VolInfo *v;
    size_t n;
    Error err = { 0 };
    if (!s || pool_vol_list(s, pool, &v, &n, &err) < 0) {
        pool_store_close(s);
        return s ? pcmd_fail(&err, "Failed to list volumes of pool %s", pool)
                 : 1;
    }
    pool_store_close(s);
    if (a.output == OUTPUT_JSON) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            json_array_append_new(arr, pcmd_vol_json(&v[i]));
        }
        imgtool_print_json(arr);
        json_decref(arr);
        vol_info_list_free(v, n);
        return 0;
    }
    bool details = virsh_flag(&a, "details");
    static const char *const h[] = { "Name", "Path", "Type", "Capacity",
                                     "Allocation" };
    PcmdTable *t = pcmd_table_new(details ? 5 : 2, h);
    for (size_t i = 0; i < n; i++) {
        char cap[32], alloc[32];
        pcmd_pretty(v[i].capacity, cap, sizeof(cap));
        pcmd_pretty(v[i].allocation, alloc, sizeof(alloc));
        const char *row[] = { v[i].name, v[i].path, v[i].type, cap, alloc };
        pcmd_table_row(t, row);
        warn_state(&v[i]);
    }
    pcmd_table_print(t);
    vol_info_list_free(v, n);
    return 0;
}

static int find(const VirshArgs *a, VolInfo *v)
{
    const char *vol = virsh_arg(a, "vol");
    PoolStore *s = pcmd_store();
    Error err = { 0 };
    int ret = s ? pool_vol_find(s, virsh_arg(a, "pool"), vol, v, &err) : -1;
    pool_store_close(s);
    if (ret < 0) {
        return s ? pcmd_fail(&err, "failed to get vol '%s'", vol) : 1;
    }
    return 0;
}

int cmd_vol_info(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&info_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    VolInfo v;
    if (find(&a, &v)) {
        return 1;
    }
    if (a.output == OUTPUT_JSON) {
        json_t *j = pcmd_vol_json(&v);
        imgtool_print_json(j);
        json_decref(j);
    } else {
        bool bytes = virsh_flag(&a, "bytes");
        bool phys = virsh_flag(&a, "physical");
        uint64_t val[2] = { v.capacity, phys ? v.physical : v.allocation };
        const char *key[2] = { "Capacity", phys ? "Physical" : "Allocation" };
        pcmd_kv("Name", "%s", v.name);
        pcmd_kv("Type", "%s", v.type);
        for (int i = 0; i < 2; i++) {
            pcmd_kv_size(key[i], val[i], bytes, " bytes");
        }
        putchar('\n');
        warn_state(&v);
    }
    vol_info_clear(&v);
    return 0;
}

/* vol-path, vol-key, vol-name, vol-pool: one value. */
static int one_value(int argc, char **argv, const VirshCmd *cmd,
                     const char *what)
{
    VirshArgs a;
    int rc = virsh_args_parse(cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    VolInfo v;
    if (find(&a, &v)) {
        return 1;
    }
    const char *val = !strcmp(what, "path") ? v.path
                      : !strcmp(what, "key") ? v.key
                      : !strcmp(what, "name") ? v.name : v.pool;
    char *uuid = NULL;
    if (!strcmp(what, "pool") && virsh_flag(&a, "uuid")) {
        PoolStore *s = pcmd_store();
        PoolInfo p;
        Error err = { 0 };
        if (s && pool_get_info(s, v.pool, &p, &err) == 0) {
            uuid = strdup(p.uuid);
            pool_info_clear(&p);
        }
        pool_store_close(s);
        val = uuid ? uuid : "";
    }
    if (a.output == OUTPUT_JSON) {
        json_t *j = json_object();
        json_object_set_new(j, uuid ? "uuid" : what, json_string(val));
        imgtool_print_json(j);
        json_decref(j);
    } else {
        printf("%s\n\n", val);
    }
    free(uuid);
    vol_info_clear(&v);
    return 0;
}

int cmd_vol_path(int argc, char **argv)
{
    return one_value(argc, argv, &path_cmd, "path");
}

int cmd_vol_key(int argc, char **argv)
{
    return one_value(argc, argv, &key_cmd, "key");
}

int cmd_vol_name(int argc, char **argv)
{
    return one_value(argc, argv, &name_cmd, "name");
}

int cmd_vol_pool(int argc, char **argv)
{
    return one_value(argc, argv, &vpool_cmd, "pool");
}

int cmd_vol_dumpxml(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&dumpxml_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    VolInfo v;
    if (find(&a, &v)) {
        return 1;
    }
    char *xml = pool_vol_format_xml(&v);
    if (!xml) {
        imgtool_error("out of memory");
        vol_info_clear(&v);
        return 1;
    }
    pcmd_print_xml(&a, xml);
    free(xml);
    vol_info_clear(&v);
    return 0;
}
