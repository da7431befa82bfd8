/* qcow2.c - the qcow2 format driver (in progress). */
#include "block/block.h"

const BlockDriver qcow2_driver = {
    .name = "qcow2",
    .is_format = true,
    .supports_backing = true,
};
