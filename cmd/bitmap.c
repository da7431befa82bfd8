/*
 * bitmap.c - `imgtool bitmap` (being written).
 */
#include <stdio.h>

#include "imgtool/imgtool.h"

int cmd_bitmap(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "imgtool: bitmap: not implemented yet\n");
    return 1;
}
