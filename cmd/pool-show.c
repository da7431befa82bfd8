/*
 * pool-show.c - the commands that show pools: pool-list, pool-info and
 * pool-dumpxml, in virsh's layouts (or --output=json).
 */
#include <stdlib.h>
#include <string.h>

#include "imgtool/pool-cmd.h"

static const VirshOpt list_opts[] = {
    { "inactive", VA_BOOL, 0, "list inactive pools" },
    { "all", VA_BOOL, 0, "list inactive & active pools" },
    { "transient", VA_BOOL, 0, "list transient pools" },
    { "persistent", VA_BOOL, 0, "list persistent pools" },
    { "autostart", VA_BOOL, 0, "list pools with autostart enabled" },
    { "no-autostart", VA_BOOL, 0, "list pools with autostart disabled" },
    { "type", VA_STRING, VA_NAMED, "only list pool of specified type(s)" },
    { "details", VA_BOOL, 0, "display extended details for pools" },
    { "uuid", VA_BOOL, 0, "list UUID of active pools only" },
    { "name", VA_BOOL, 0, "list name of active pools only" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd list_cmd = {
    "pool-list", "list pools", list_opts, VA_OUTPUT | VA_OBJECT,
};

static const VirshOpt info_opts[] = {
    { "pool", VA_STRING, VA_REQUIRED, "pool name or uuid" },
    { "bytes", VA_BOOL, 0, "Return pool info in bytes" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd info_cmd = {
    "pool-info", "storage pool information", info_opts, VA_OUTPUT | VA_OBJECT,
};

static const VirshOpt dumpxml_opts[] = {
    { "pool", VA_STRING, VA_REQUIRED, "pool name or uuid" },
    { "inactive", VA_BOOL, 0, "show inactive defined XML" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd dumpxml_cmd = {
    "pool-dumpxml", "pool information in XML", dumpxml_opts,
    VA_OUTPUT | VA_OBJECT,
};

static bool type_listed(const char *types, const char *type)
{
    size_t n = strlen(type);
    for (const char *p = types; p && *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncmp(p, type, n) == 0) {
            return true;
        }
        p = e ? e + 1 : NULL;
    }
    return false;
}

static bool wanted(const VirshArgs *a, const PoolInfo *p)
{
    bool inactive = virsh_flag(a, "inactive"), all = virsh_flag(a, "all");
    if (!all && (inactive ? p->active : !p->active)) {
        return false;
    }
    if (virsh_flag(a, "transient") != virsh_flag(a, "persistent") &&
        virsh_flag(a, "persistent") != p->persistent) {
        return false;
    }
    if (virsh_flag(a, "autostart") != virsh_flag(a, "no-autostart") &&
        virsh_flag(a, "autostart") != p->autostart) {
        return false;
    }
    const char *types = virsh_arg(a, "type");
    return !types || type_listed(types, p->type);
}

static void sizes(const PoolInfo *p, char c[3][32])
{
    uint64_t v[3] = { p->capacity, p->allocation, p->available };
    for (int i = 0; i < 3; i++) {
        if (p->sizes_known) {
            pcmd_pretty(v[i], c[i], sizeof(c[i]));
        } else {
            strcpy(c[i], "-");
        }
    }
}

int cmd_pool_list(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&list_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    PoolStore *s = pcmd_store();
    PoolInfo *v;
    size_t n;
    Error err = { 0 };
    if (!s || pool_list(s, &v, &n, &err) < 0) {
        pool_store_close(s);
        return s ? pcmd_fail(&err, "Failed to list pools") : 1;
    }
    pool_store_close(s);
    bool details = virsh_flag(&a, "details");
    json_t *arr = json_array();
    PcmdTable *t = NULL;
    if (details) {
        static const char *const h[] = { "Name", "State", "Autostart",
                                         "Persistent", "Capacity",
                                         "Allocation", "Available" };
        t = pcmd_table_new(7, h);
    } else {
        static const char *const h[] = { "Name", "State", "Autostart" };
        t = pcmd_table_new(3, h);
    }
    for (size_t i = 0; i < n; i++) {
        const PoolInfo *p = &v[i];
        if (!wanted(&a, p)) {
            continue;
        }
        json_array_append_new(arr, pcmd_pool_json(p));
        if (virsh_flag(&a, "uuid") || virsh_flag(&a, "name")) {
            if (a.output == OUTPUT_HUMAN) {
                if (virsh_flag(&a, "uuid")) {
                    printf("%s%s", p->uuid, virsh_flag(&a, "name") ? " " : "");
                }
                if (virsh_flag(&a, "name")) {
                    printf("%-20s", p->name);
                }
                putchar('\n');
            }
            continue;
        }
        char c[3][32];
        sizes(p, c);
        const char *state = details ? (p->active ? "running" : "inactive")
                                    : (p->active ? "active" : "inactive");
        const char *row[] = { p->name, state, p->autostart ? "yes" : "no",
                              p->persistent ? "yes" : "no", c[0], c[1],
                              c[2] };
        pcmd_table_row(t, row);
    }
    if (a.output == OUTPUT_JSON) {
        imgtool_print_json(arr);
    } else if (virsh_flag(&a, "uuid") || virsh_flag(&a, "name")) {
        putchar('\n');
    } else {
        pcmd_table_print(t);
        t = NULL;
    }
    pcmd_table_free(t);
    json_decref(arr);
    pool_info_list_free(v, n);
    return 0;
}

int cmd_pool_info(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&info_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *pool = virsh_arg(&a, "pool");
    PoolStore *s = pcmd_store();
    PoolInfo p;
    Error err = { 0 };
    if (!s || pool_get_info(s, pool, &p, &err) < 0) {
        pool_store_close(s);
        return s ? pcmd_fail(&err, "failed to get pool '%s'", pool) : 1;
    }
    pool_store_close(s);
    if (a.output == OUTPUT_JSON) {
        json_t *j = pcmd_pool_json(&p);
        imgtool_print_json(j);
        json_decref(j);
        pool_info_clear(&p);
        return 0;
    }
    pcmd_kv("Name", "%s", p.name);
    pcmd_kv("UUID", "%s", p.uuid);
    pcmd_kv("State", "%s", p.active ? "running" : "inactive");
    pcmd_kv("Persistent", "%s", p.persistent ? "yes" : "no");
    pcmd_kv("Autostart", "%s", p.autostart ? "yes" : "no");
    if (p.active && p.sizes_known) {
        uint64_t v[3] = { p.capacity, p.allocation, p.available };
        const char *k[3] = { "Capacity", "Allocation", "Available" };
        for (int i = 0; i < 3; i++) {
            pcmd_kv_size(k[i], v[i], virsh_flag(&a, "bytes"), "");
        }
    }
    putchar('\n');
    pool_info_clear(&p);
    return 0;
}

int cmd_pool_dumpxml(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&dumpxml_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *pool = virsh_arg(&a, "pool");
    PoolStore *s = pcmd_store();
    char *xml;
    Error err = { 0 };
    if (!s || pool_dumpxml(s, pool, virsh_flag(&a, "inactive"), &xml,
                           &err) < 0) {
        pool_store_close(s);
        return s ? pcmd_fail(&err, "failed to get pool '%s'", pool) : 1;
    }
    pool_store_close(s);
    pcmd_print_xml(&a, xml);
    free(xml);
    return 0;
}
