/* create.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_create(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("create: not implemented yet");
    return 1;
}
