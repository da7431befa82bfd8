/* map.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_map(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("map: not implemented yet");
    return 1;
}
