/*
 * cmd-usage.h - reporting command-line mistakes the way qemu-img does,
 * shared by the commands in cmd/ and imgtool/parse-options.c.
 */
#ifndef IMGTOOL_CMD_USAGE_H
#define IMGTOOL_CMD_USAGE_H

#include <stdbool.h>

/* Reports an option getopt refused (opt as written, "-x" or "--bogus";
 * missing_arg: its argument was missing) and how to get help; returns
 * the exit code 1. */
int usage_bad_option(const char *cmd, const char *opt, bool missing_arg);

/* Reports msg and how to get help; returns the exit code 1. */
int usage_error(const char *cmd, const char *msg);

/* qemu-img's two lines for a size it cannot read ("Invalid <what>
 * specified. You may use k, M, G, T, P or E suffixes for" ...); returns
 * the exit code 1. */
int usage_bad_size(const char *what);

#endif
