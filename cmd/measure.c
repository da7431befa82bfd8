/* measure.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_measure(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("measure: not implemented yet");
    return 1;
}
