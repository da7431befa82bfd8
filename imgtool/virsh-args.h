/*
 * virsh-args.h - virsh's way of taking options, for the pool and volume
 * commands: each command declares its options once, in a table, from
 * which parsing, --help and the usage line come.
 *
 * As in virsh: "--name value", "--name=value" and boolean "--name";
 * arguments without a leading "--" fill, in table order, the string
 * options not given by name (so `vol-info VOL POOL` is
 * `vol-info --vol VOL --pool POOL`); "--" ends the options.  imgtool adds
 * --output=human|json, -p (progress) and --object where the command
 * says so.
 */
#ifndef IMGTOOL_VIRSH_ARGS_H
#define IMGTOOL_VIRSH_ARGS_H

#include <stdbool.h>

#include "imgtool/imgtool.h"

typedef enum { VA_BOOL, VA_STRING } VirshArgType;

enum {
    VA_REQUIRED = 1 << 0,
    VA_NAMED = 1 << 1,          /* never filled by a bare argument */
};

typedef struct VirshOpt {
    const char *name;
    VirshArgType type;
    unsigned flags;
    const char *help;
} VirshOpt;

/* What else a command takes. */
enum {
    VA_OUTPUT = 1 << 0,         /* --output=human|json */
    VA_PROGRESS = 1 << 1,       /* -p, --progress */
    VA_OBJECT = 1 << 2,         /* --object secret,... */
};

typedef struct VirshCmd {
    const char *name;
    const char *summary;
    const VirshOpt *opts;       /* { NULL } terminated */
    unsigned extras;
} VirshCmd;

#define VIRSH_MAX_OPTS 32

typedef struct VirshArgs {
    const VirshCmd *cmd;
    const char *val[VIRSH_MAX_OPTS];
    bool set[VIRSH_MAX_OPTS];
    OutputFormat output;
    bool progress;
} VirshArgs;

/* argv[0] is the command's name.  Returns -1 when the command should
 * run, or the exit code it should end with (0 after --help, 1 after
 * reporting a mistake). */
int virsh_args_parse(const VirshCmd *c, int argc, char **argv,
                     VirshArgs *a);
/* The value of a string option, NULL when not given. */
const char *virsh_arg(const VirshArgs *a, const char *name);
bool virsh_flag(const VirshArgs *a, const char *name);

#endif
