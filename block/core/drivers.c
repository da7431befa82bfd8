/* drivers.c - the one table every driver is registered in. */
#include <string.h>

#include "block/driver.h"

extern const BlockDriver file_driver;
extern const BlockDriver raw_driver;
extern const BlockDriver qcow2_driver;
extern const BlockDriver luks_driver;
extern const BlockDriver faulty_driver;
extern const BlockDriver linear_driver;
extern const BlockDriver iscsi_driver;
extern const BlockDriver gluster_driver;

/* Probe order matters only for ties; raw is the fallback and never
 * claims a file by content. */
const BlockDriver *const block_driver_list[] = {
    &qcow2_driver,
    &luks_driver,
    &raw_driver,
    &file_driver,
    &faulty_driver,
    &linear_driver,
    &iscsi_driver,
    &gluster_driver,
    NULL,
};

const BlockDriver *block_find_driver(const char *name)
{
    for (int i = 0; block_driver_list[i]; i++) {
        /* A driver written for another contract is not used at all. */
        if (block_driver_list[i]->api_version != BLOCK_DRIVER_API_VERSION) {
            continue;
        }
        if (strcmp(block_driver_list[i]->name, name) == 0) {
            return block_driver_list[i];
        }
    }
    /* qemu-img accepts "host_device" for block devices; the file driver
     * handles both. */
    if (strcmp(name, "host_device") == 0) {
        return block_find_driver("file");
    }
    return NULL;
}
