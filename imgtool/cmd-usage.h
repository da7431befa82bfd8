/*
 * cmd-usage.h - reporting command-line mistakes the way qemu-img does,
 * shared by the commands in cmd/.
 */
#ifndef IMGTOOL_CMD_USAGE_H
#define IMGTOOL_CMD_USAGE_H

/* For a getopt_long() loop whose optstring starts with ':'.  Reports the
 * option getopt rejected (c is '?' or ':') and how to get help; returns
 * the exit code 1. */
int usage_bad_option(const char *cmd, char **argv, int c);

/* Reports msg and how to get help; returns the exit code 1. */
int usage_error(const char *cmd, const char *msg);

#endif
