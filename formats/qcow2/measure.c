/* measure.c - qcow2 size estimates for `measure` (in progress). */
#include "block/block.h"
