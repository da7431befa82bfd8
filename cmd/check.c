/* check.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_check(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("check: not implemented yet");
    return 1;
}
