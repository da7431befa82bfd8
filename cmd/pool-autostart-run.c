/*
 * pool-autostart-run.c - `imgtool pool-start-autostart`: start every
 * pool marked autostart that is not running.  What libvirtd does for its
 * pools when it starts; imgtool has no daemon, so a oneshot unit
 * (systemd/imgtool-pools-autostart.service) runs this at boot.
 *
 * One pool failing does not stop the others; the exit code is 1 when
 * any failed.
 */
#include <stdlib.h>

#include "imgtool/pool-cmd.h"

static const VirshOpt opts[] = {
    { NULL, 0, 0, NULL },
};
static const VirshCmd start_autostart_cmd = {
    "pool-start-autostart",
    "start every inactive pool marked autostart (at boot)",
    opts, VA_OUTPUT | VA_OBJECT,
};

int cmd_pool_start_autostart(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&start_autostart_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    PoolStore *s = pcmd_store();
    if (!s) {
        return 1;
    }
    PoolInfo *v = NULL;
    size_t n = 0;
    Error err = { 0 };
    if (pool_list(s, &v, &n, &err) < 0) {
        pool_store_close(s);
        return pcmd_fail(&err, "Failed to list pools");
    }
    json_t *started = json_array();
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (!v[i].autostart || v[i].active) {
            continue;
        }
        error_clear(&err);
        if (pool_start(s, v[i].name, false, 0, &err) < 0) {
            rc = pcmd_fail(&err, "Failed to start pool %s", v[i].name);
            continue;
        }
        json_array_append_new(started, json_string(v[i].name));
        if (a.output != OUTPUT_JSON) {
            printf("Pool %s started\n", v[i].name);
        }
    }
    pool_info_list_free(v, n);
    pool_store_close(s);
    if (a.output == OUTPUT_JSON) {
        json_t *j = json_pack("{s:o}", "started", started);
        imgtool_print_json(j);
        json_decref(j);
    } else {
        json_decref(started);
        putchar('\n');
    }
    return rc;
}
