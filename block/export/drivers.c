/* drivers.c - the one table every export type is registered in. */
#include <stddef.h>

#include "block/export/export.h"

extern const BlockExportDriver nbd_export_driver;
extern const BlockExportDriver vhost_user_blk_export_driver;
extern const BlockExportDriver vhost_user_scsi_export_driver;

const BlockExportDriver *const block_export_driver_list[] = {
    &nbd_export_driver,
    &vhost_user_blk_export_driver,
    &vhost_user_scsi_export_driver,
    NULL,
};
