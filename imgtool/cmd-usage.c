/* cmd-usage.c - one wording for option errors across commands. */
#include <stdio.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"

int usage_error(const char *cmd, const char *msg)
{
    imgtool_error("%s", msg);
    fprintf(stderr, "Try '%s %s --help' for more information\n",
            imgtool_prog, cmd);
    return 1;
}

int usage_bad_option(const char *cmd, const char *opt, bool missing_arg)
{
    imgtool_error("%s '%s'", missing_arg ? "missing argument for option"
                                         : "unrecognized option", opt);
    fprintf(stderr, "Try '%s %s --help' for more information\n",
            imgtool_prog, cmd);
    return 1;
}

int usage_bad_size(const char *what)
{
    imgtool_error("Invalid %s specified. You may use k, M, G, T, P or E "
                  "suffixes for", what);
    imgtool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
    return 1;
}
