/*
 * qmp-backup.h - the control socket's backup commands (qmp-backup.c):
 * transaction, blockdev-backup, block-job-cancel, query-block-jobs.
 */
#ifndef IMGTOOL_EXPORT_QMP_BACKUP_H
#define IMGTOOL_EXPORT_QMP_BACKUP_H

#include <jansson.h>

#include "block/block.h"

json_t *qmp_cmd_transaction(json_t *args, Error *err);
json_t *qmp_cmd_blockdev_backup(json_t *args, Error *err);
json_t *qmp_cmd_block_job_cancel(json_t *args, Error *err);
json_t *qmp_cmd_query_block_jobs(json_t *args, Error *err);
json_t *qmp_cmd_query_nbd_server(json_t *args, Error *err);
/* At shutdown, after every node is closed. */
void qmp_backup_jobs_free(void);

#endif
