/* snapshot.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_snapshot(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("snapshot: not implemented yet");
    return 1;
}
