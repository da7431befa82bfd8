/*
 * snapshot.c - internal snapshot requests, dispatched to the format
 * driver of the top node.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/driver.h"

int block_snapshot_list(BlockNode *n, BlockSnapshotInfo **out, int *count)
{
    *out = NULL;
    *count = 0;
    if (!n->drv->list_snapshots) {
        return 0;
    }
    return n->drv->list_snapshots(n, out, count);
}

void block_snapshot_list_free(BlockSnapshotInfo *v, int count)
{
    if (!v) {
        return;
    }
    for (int i = 0; i < count; i++) {
        free(v[i].id);
        free(v[i].name);
    }
    free(v);
}

static int not_supported(Error *err)
{
    return error_setf(err, ENOTSUP, "Block driver does not support "
                      "snapshots");
}

int block_snapshot_create(BlockNode *n, const char *name, Error *err)
{
    if (!n->drv->snapshot_create) {
        return not_supported(err);
    }
    /* qemu-img happily stores a second snapshot under a taken name, and
     * every later lookup by that name then silently picks the first:
     * a user reverting "before-upgrade" could get the wrong one. */
    BlockSnapshotInfo *v;
    int count;
    int ret = block_snapshot_list(n, &v, &count);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the snapshot table: %s",
                          strerror(-ret));
    }
    bool taken = false;
    for (int i = 0; i < count && !taken; i++) {
        taken = strcmp(v[i].name, name) == 0;
    }
    block_snapshot_list_free(v, count);
    if (taken) {
        return error_setf(err, EEXIST, "a snapshot named '%s' already "
                          "exists", name);
    }
    return n->drv->snapshot_create(n, name, err);
}

int block_snapshot_apply(BlockNode *n, const char *id_or_name, Error *err)
{
    if (!n->drv->snapshot_apply) {
        return not_supported(err);
    }
    return n->drv->snapshot_apply(n, id_or_name, err);
}

int block_snapshot_delete(BlockNode *n, const char *name, Error *err)
{
    if (!n->drv->snapshot_delete) {
        return not_supported(err);
    }
    return n->drv->snapshot_delete(n, name, err);
}

int block_snapshot_load_tmp(BlockNode *n, const char *param, Error *err)
{
    const char *id = NULL, *name = NULL;
    KVList kv = { 0 };
    Error perr = { 0 };
    int ret;

    if (strncmp(param, "snapshot.", 9) == 0) {
        if (kvlist_parse(&kv, param, NULL, &perr) < 0) {
            kvlist_free(&kv);
            return error_setf(err, EINVAL, "Failed in parsing snapshot "
                              "param '%s'", param);
        }
        id = kvlist_get(&kv, "snapshot.id");
        name = kvlist_get(&kv, "snapshot.name");
        for (size_t i = 0; i < kv.n; i++) {
            if (!kv.items[i].used) {
                ret = error_setf(err, EINVAL, "Invalid parameter '%s'",
                                 kv.items[i].key);
                kvlist_free(&kv);
                return ret;
            }
        }
        if (!id && !name) {
            kvlist_free(&kv);
            return error_setf(err, EINVAL, "Failed in parsing snapshot "
                              "param '%s'", param);
        }
    }
    if (!n->drv->snapshot_load_tmp) {
        ret = error_setf(err, ENOTSUP, "Failed to load snapshot: Block "
                         "format '%s' used by device '' does not support "
                         "temporarily loading internal snapshots",
                         n->drv->name);
    } else if (id || name) {
        ret = n->drv->snapshot_load_tmp(n, id, name, err);
    } else {
        /* A bare word: an id first, else a name. */
        ret = n->drv->snapshot_load_tmp(n, param, NULL, err);
        if (ret == -ENOENT) {
            error_clear(err);
            ret = n->drv->snapshot_load_tmp(n, NULL, param, err);
        }
    }
    kvlist_free(&kv);
    return ret;
}
