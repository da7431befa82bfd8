/* compare.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_compare(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("compare: not implemented yet");
    return 1;
}
