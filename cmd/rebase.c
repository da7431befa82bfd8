/* rebase.c - stub until the command lands. */
#include "imgtool/imgtool.h"

int cmd_rebase(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    imgtool_error("rebase: not implemented yet");
    return 1;
}
