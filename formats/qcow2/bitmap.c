/*
 * bitmap.c - qcow2 persistent dirty bitmaps (the bitmaps extension) (being written).
 */
#include "formats/qcow2/qcow2.h"
