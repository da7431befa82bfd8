/*
 * pool-state.c - the commands that change a pool's state, one line of
 * output each as virsh prints it: pool-build, pool-start, pool-destroy,
 * pool-delete, pool-undefine, pool-refresh, pool-autostart.
 */
#include <string.h>

#include "imgtool/pool-cmd.h"

#define POOL_OPT { "pool", VA_STRING, VA_REQUIRED, "pool name or uuid" }
#define OVERWRITE_OPTS                                                     \
    { "no-overwrite", VA_BOOL, 0, "do not overwrite any existing data" },  \
    { "overwrite", VA_BOOL, 0, "overwrite any existing data" }

static const VirshOpt pool_only[] = { POOL_OPT, { NULL, 0, 0, NULL } };
static const VirshOpt build_opts[] = {
    POOL_OPT, OVERWRITE_OPTS, { NULL, 0, 0, NULL },
};
static const VirshOpt start_opts[] = {
    POOL_OPT,
    { "build", VA_BOOL, 0, "build the pool as normal" },
    OVERWRITE_OPTS,
    { NULL, 0, 0, NULL },
};
static const VirshOpt autostart_opts[] = {
    POOL_OPT,
    { "disable", VA_BOOL, 0, "disable autostarting" },
    { NULL, 0, 0, NULL },
};

/* Every one may need a secret: a CHAP password, for an iSCSI pool. */
#define POOL_EXTRAS (VA_OUTPUT | VA_OBJECT)
static const VirshCmd cmds[] = {
    { "pool-build", "build a pool", build_opts, POOL_EXTRAS },
    { "pool-start", "start a (previously defined) inactive pool",
      start_opts, POOL_EXTRAS },
    { "pool-destroy", "destroy (stop) a pool", pool_only, POOL_EXTRAS },
    { "pool-delete", "delete a pool's storage", pool_only, POOL_EXTRAS },
    { "pool-undefine", "undefine an inactive pool", pool_only, POOL_EXTRAS },
    { "pool-refresh", "refresh a pool", pool_only, POOL_EXTRAS },
    { "pool-autostart", "autostart a pool", autostart_opts, POOL_EXTRAS },
};

enum { BUILD, START, DESTROY, DELETE, UNDEFINE, REFRESH, AUTOSTART };

static const struct {
    const char *verb;       /* "Failed to <verb> pool X" */
    const char *done;       /* "Pool X <done>" */
} words[] = {
    { "build", "built" },
    { "start", "started" },
    { "destroy", "destroyed" },
    { "delete", "deleted" },
    { "undefine", "has been undefined" },
    { "refresh", "refreshed" },
    { "mark autostarted", "marked as autostarted" },
};

static int run(int which, int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&cmds[which], argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *pool = virsh_arg(&a, "pool");
    unsigned flags = (virsh_flag(&a, "overwrite") ? POOL_BUILD_OVERWRITE
                                                  : 0) |
                     (virsh_flag(&a, "no-overwrite")
                          ? POOL_BUILD_NO_OVERWRITE : 0);
    bool disable = virsh_flag(&a, "disable");
    PoolStore *s = pcmd_store();
    if (!s) {
        return 1;
    }
    Error err = { 0 };
    int ret = 0;
    switch (which) {
    case BUILD: ret = pool_build(s, pool, flags, &err); break;
    case START:
        ret = pool_start(s, pool, virsh_flag(&a, "build"), flags, &err);
        break;
    case DESTROY: ret = pool_destroy(s, pool, &err); break;
    case DELETE: ret = pool_delete(s, pool, &err); break;
    case UNDEFINE: ret = pool_undefine(s, pool, &err); break;
    case REFRESH: ret = pool_refresh(s, pool, &err); break;
    case AUTOSTART: ret = pool_set_autostart(s, pool, !disable, &err); break;
    }
    pool_store_close(s);
    const char *verb = which == AUTOSTART && disable ? "unmark autostarted"
                                                     : words[which].verb;
    const char *done = which == AUTOSTART && disable
                           ? "unmarked as autostarted" : words[which].done;
    if (ret < 0) {
        return pcmd_fail(&err, "Failed to %s pool %s", verb, pool);
    }
    return pcmd_done(&a, json_pack("{s:s}", "pool", pool), "Pool %s %s",
                     pool, done);
}

int cmd_pool_build(int argc, char **argv) { return run(BUILD, argc, argv); }
int cmd_pool_start(int argc, char **argv) { return run(START, argc, argv); }
int cmd_pool_destroy(int argc, char **argv)
{
    return run(DESTROY, argc, argv);
}
int cmd_pool_delete(int argc, char **argv) { return run(DELETE, argc, argv); }
int cmd_pool_undefine(int argc, char **argv)
{
    return run(UNDEFINE, argc, argv);
}
int cmd_pool_refresh(int argc, char **argv)
{
    return run(REFRESH, argc, argv);
}
int cmd_pool_autostart(int argc, char **argv)
{
    return run(AUTOSTART, argc, argv);
}
