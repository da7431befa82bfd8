/*
 * backup-cmd.h - what the backup commands (backup, restore, backup-list,
 * backup-verify, backup-prune) share on the command line: stopping
 * cleanly on SIGINT/SIGTERM, progress, opening sources, and the
 * --key-secret option.
 */
#ifndef IMGTOOL_BACKUP_CMD_H
#define IMGTOOL_BACKUP_CMD_H

#include <stdatomic.h>

#include "backup/backup.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"

/* Set by SIGINT, SIGTERM and SIGHUP from backup_cmd_catch_signals() on:
 * the library stops at its next step, cleans up and fails with
 * "interrupted". */
extern atomic_bool backup_cmd_cancel;
void backup_cmd_catch_signals(void);

/* BlockProgressFn over a Progress. */
void backup_cmd_progress(void *opaque, uint64_t done, uint64_t total);

/* BackupOpenFn for sources named on the command line; opaque is the
 * command's ImageArgs (-f, --image-opts). */
BlockNode *backup_cmd_open(void *opaque, const char *name, int flags,
                           Error *err);

#define CMDOPT_KEY_SECRET(var) \
    { CMDOPT_STRING, 0, "key-secret", "id", \
      "the repository's passphrase: the secret (--object) with this id", \
      .value = &(var) }

#endif
