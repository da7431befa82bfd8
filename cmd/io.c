/* io.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_io(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("io: not implemented yet");
    return 1;
}
