/* dd.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_dd(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("dd: not implemented yet");
    return 1;
}
