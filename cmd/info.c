/* info.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_info(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("info: not implemented yet");
    return 1;
}
