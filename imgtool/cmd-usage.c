/* cmd-usage.c - one wording for option errors across commands. */
#include <getopt.h>
#include <stdio.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"

int usage_error(const char *cmd, const char *msg)
{
    imgtool_error("%s", msg);
    fprintf(stderr, "Try 'imgtool %s --help' for more information\n", cmd);
    return 1;
}

int usage_bad_option(const char *cmd, char **argv, int c)
{
    const char *what = c == ':' ? "missing argument for option"
                                : "unrecognized option";
    if (optopt > 0 && optopt < 256) {
        imgtool_error("%s '-%c'", what, optopt);
    } else {
        imgtool_error("%s '%s'", what, argv[optind - 1]);
    }
    fprintf(stderr, "Try 'imgtool %s --help' for more information\n", cmd);
    return 1;
}
