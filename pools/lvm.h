/*
 * lvm.h - running lvm2's commands and reading their JSON reports, for
 * the logical pool back end.  Internal to pools/.
 *
 * Where the kernel has no device-mapper, every command runs with
 * activation off (--config 'global{activation=0}'): LVs are then only
 * metadata in the VG, and their data is reached through their segments
 * on the PVs (block/linear.c).
 */
#ifndef IMGTOOL_POOLS_LVM_H
#define IMGTOOL_POOLS_LVM_H

#include <stdbool.h>

#include <jansson.h>

#include "block/block.h"

/* The kernel has device-mapper (IMGTOOL_LVM_NO_DM=1 says no, for tests
 * that must take the path hosts without device-mapper take). */
bool lvm_have_dm(void);

/* Runs `lvm args...` (IMGTOOL_LVM names another binary).  *out (may be
 * NULL) receives stdout; on failure err holds lvm's last line of
 * stderr and the return value is -EIO (-ENOENT when lvm says the
 * object does not exist). */
int lvm_run(const char *const *args, char **out, Error *err);

/* Runs a report command (args must include --reportformat json) and
 * returns the array of rows of report[0][kind] ("lv", "pv", "vg"). */
int lvm_report(const char *const *args, const char *kind, json_t **rows,
               Error *err);

/* Runs any other program (blkid, wipefs) the same way. */
int lvm_run_prog(const char *prog, const char *const *args, char **out,
                 int *status, Error *err);

#endif
