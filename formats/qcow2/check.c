/* check.c - qcow2 consistency check and repair (in progress). */
#include "block/block.h"
