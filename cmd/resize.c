/* resize.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_resize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("resize: not implemented yet");
    return 1;
}
