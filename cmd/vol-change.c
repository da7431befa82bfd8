/*
 * vol-change.c - vol-delete, vol-resize and vol-wipe, with virsh's
 * options and messages.
 */
#include <string.h>

#include "imgtool/pool-cmd.h"

static const VirshOpt delete_opts[] = {
    PCMD_OPT_VOL, PCMD_OPT_POOL,
    { "delete-snapshots", VA_BOOL, 0, "delete snapshots associated with "
      "volume (must be supported by storage driver)" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd delete_cmd = {
    "vol-delete", "delete a vol", delete_opts, VA_OUTPUT | VA_OBJECT,
};

static const VirshOpt resize_opts[] = {
    PCMD_OPT_VOL,
    { "capacity", VA_STRING, VA_REQUIRED, "new capacity for the vol, as "
      "scaled integer (default bytes)" },
    PCMD_OPT_POOL,
    { "allocate", VA_BOOL, 0, "allocate the new capacity, rather than "
      "leaving it sparse" },
    { "delta", VA_BOOL, 0, "use capacity as a delta to current size, rather "
      "than the new size" },
    { "shrink", VA_BOOL, 0, "allow the resize to shrink the volume" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd resize_cmd = {
    "vol-resize", "resize a vol", resize_opts, VA_OUTPUT | VA_OBJECT,
};

static const VirshOpt wipe_opts[] = {
    PCMD_OPT_VOL, PCMD_OPT_POOL,
    { "algorithm", VA_STRING, 0, "perform selected wiping algorithm: zero, "
      "nnsa, dod, bsi, gutmann, schneier, pfitzner7, pfitzner33, random, "
      "trim" },
    { NULL, 0, 0, NULL },
};
static const VirshCmd wipe_cmd = {
    "vol-wipe", "wipe a vol", wipe_opts, VA_OUTPUT | VA_OBJECT | VA_PROGRESS,
};

int cmd_vol_delete(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&delete_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *vol = virsh_arg(&a, "vol");
    if (virsh_flag(&a, "delete-snapshots")) {
        imgtool_error("Failed to delete vol %s: --delete-snapshots is not "
                      "supported by the dir and logical pools", vol);
        return 1;
    }
    PoolStore *s = pcmd_store();
    Error err = { 0 };
    int ret = s ? pool_vol_delete(s, virsh_arg(&a, "pool"), vol, &err) : -1;
    pool_store_close(s);
    if (ret < 0) {
        return s ? pcmd_fail(&err, "Failed to delete vol %s", vol) : 1;
    }
    return pcmd_done(&a, json_pack("{s:s}", "volume", vol), "Vol %s deleted",
                     vol);
}

int cmd_vol_resize(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&resize_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *vol = virsh_arg(&a, "vol");
    const char *cap = virsh_arg(&a, "capacity");
    unsigned flags = (virsh_flag(&a, "allocate") ? VOL_RESIZE_ALLOCATE : 0) |
                     (virsh_flag(&a, "delta") ? VOL_RESIZE_DELTA : 0) |
                     (virsh_flag(&a, "shrink") ? VOL_RESIZE_SHRINK : 0);
    const char *num = cap;
    if (*num == '-') {
        /* virsh: a negative size is a delta that shrinks */
        if (!(flags & VOL_RESIZE_SHRINK)) {
            imgtool_error("negative size requires --shrink");
            return 1;
        }
        num++;
        flags |= VOL_RESIZE_DELTA;
    } else if (*num == '+') {
        num++;
        flags |= VOL_RESIZE_DELTA;
    }
    uint64_t bytes;
    if (pool_parse_scaled(num, &bytes) < 0) {
        imgtool_error("Malformed size %s", cap);
        return 1;
    }
    PoolStore *s = pcmd_store();
    Error err = { 0 };
    int ret = s ? pool_vol_resize(s, virsh_arg(&a, "pool"), vol, bytes, flags,
                                  &err)
                : -1;
    pool_store_close(s);
    if (ret < 0) {
        return s ? pcmd_fail(&err, "Failed to change size of volume '%s' to "
                             "%s", vol, cap)
                 : 1;
    }
    return pcmd_done(&a, json_pack("{s:s}", "volume", vol),
                     "Size of volume '%s' successfully changed to %s", vol,
                     cap);
}

int cmd_vol_wipe(int argc, char **argv)
{
    VirshArgs a;
    int rc = virsh_args_parse(&wipe_cmd, argc, argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *vol = virsh_arg(&a, "vol");
    PoolStore *s = pcmd_store();
    if (!s) {
        return 1;
    }
    Progress *pr = progress_start(a.progress);
    Error err = { 0 };
    int ret = pool_vol_wipe(s, virsh_arg(&a, "pool"), vol,
                            virsh_arg(&a, "algorithm"), pcmd_progress, pr,
                            &err);
    progress_finish(pr);
    pool_store_close(s);
    if (ret < 0) {
        return pcmd_fail(&err, "Failed to wipe vol %s", vol);
    }
    return pcmd_done(&a, json_pack("{s:s}", "volume", vol), "Vol %s wiped",
                     vol);
}
