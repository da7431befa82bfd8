/* commit.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_commit(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("commit: not implemented yet");
    return 1;
}
