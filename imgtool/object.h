/*
 * object.h - `--object` on the command line: the shared CMDOPT_OBJECT
 * entry (imgtool/cmdline.c) and virsh-args call imgtool_object_add().
 */
#ifndef IMGTOOL_OBJECT_H
#define IMGTOOL_OBJECT_H

/* Defines the object described by `arg` (secrets, TLS credentials).  Prints
 * one error line and returns -1 on failure, 0 on success.  Warns when a
 * secret is given inline with data=, and overwrites that value in `arg`
 * (argv memory) so it no longer shows in /proc/PID/cmdline. */
int imgtool_object_add(char *arg);

#endif
