/*
 * amend.c - `imgtool amend` (being written).
 */
#include <stdio.h>

#include "imgtool/imgtool.h"

int cmd_amend(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "imgtool: amend: not implemented yet\n");
    return 1;
}
