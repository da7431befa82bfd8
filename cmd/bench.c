/* bench.c - stub until `imgtool bench` lands. */
#include "imgtool/imgtool.h"

int cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("bench: not implemented yet");
    return 1;
}
