/* convert.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_convert(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("convert: not implemented yet");
    return 1;
}
