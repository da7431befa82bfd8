/*
 * parse-options.h - each command declares its options once, in a table,
 * and parsing, the usage line and --help all come from it (the way git's
 * parse-options does), so they cannot drift apart.
 *
 *   static bool shrink;
 *   static const CmdOpt resize_opts[] = {
 *       CMDOPT_OBJECT, CMDOPT_IMAGE_OPTS, CMDOPT_FORMAT, CMDOPT_QUIET,
 *       { CMDOPT_STRING, 0, "preallocation", "mode",
 *         "how to allocate the added space", &prealloc },
 *       { CMDOPT_FLAG, 0, "shrink", NULL, "allow making it smaller",
 *         &shrink },
 *       CMDOPT_END,
 *   };
 *   static const CmdSpec resize_spec = {
 *       "resize", "filename [+|-]size", NULL, resize_opts,
 *   };
 *   ...
 *   int rc, first = cmd_parse(&resize_spec, &a, NULL, argc, argv, &rc);
 *   if (first < 0) return rc;     // --help printed (0) or an error (1)
 *
 * The shared options (-f, --image-opts, --object, -U, -q, --output) are
 * table entries too (CMDOPT_FORMAT ...) and land in the ImageArgs given
 * to cmd_parse, with the meaning imgtool/cmdline.c gives them.  Errors
 * keep qemu-img's wording ("unrecognized option '-x'", "missing argument
 * for option '-f'", then "Try 'imgtool CMD --help'").
 */
#ifndef IMGTOOL_PARSE_OPTIONS_H
#define IMGTOOL_PARSE_OPTIONS_H

#include <stdbool.h>

#include "imgtool/cmdline.h"

typedef enum {
    CMDOPT_END_OF_TABLE,
    CMDOPT_FLAG,        /* no argument; sets *(bool *)value */
    CMDOPT_STRING,      /* an argument; sets *(const char **)value */
    CMDOPT_FN,          /* fn(opt, arg, ctx) decides */
    CMDOPT_COMMON,      /* a shared option, into the ImageArgs */
} CmdOptType;

enum {
    CMDOPT_ARG_OPTIONAL = 1 << 0,   /* --name[=value] */
    CMDOPT_HIDDEN = 1 << 1,         /* accepted, not shown in --help */
};

typedef struct CmdOpt CmdOpt;

/* Returns 0 to go on, or the exit code after reporting the error. */
typedef int CmdOptFn(const CmdOpt *o, const char *arg, void *ctx);

struct CmdOpt {
    CmdOptType type;
    int short_name;           /* 'f', or 0 for a long-only option */
    const char *long_name;    /* "format", or NULL for a short-only one */
    const char *argname;      /* "fmt" when it takes an argument */
    const char *help;         /* one line of --help */
    void *value;              /* FLAG: bool *, STRING: const char ** */
    CmdOptFn *fn;             /* FN */
    int flags;                /* CMDOPT_ARG_OPTIONAL, CMDOPT_HIDDEN */
    int common_code;          /* COMMON: what image_args_parse knows */
};

#define CMDOPT_END { CMDOPT_END_OF_TABLE, 0, NULL, NULL, NULL, NULL, NULL, 0, 0 }
#define CMDOPT_FORMAT \
    { CMDOPT_COMMON, 'f', "format", "fmt", \
      "image format (probed when omitted)", NULL, NULL, 0, 'f' }
#define CMDOPT_IMAGE_OPTS \
    { CMDOPT_COMMON, 0, "image-opts", NULL, \
      "the file name is an option string (driver=...,...)", NULL, NULL, \
      0, OPT_COMMON_IMAGE_OPTS }
#define CMDOPT_OBJECT \
    { CMDOPT_COMMON, 0, "object", "objectdef", \
      "define an object, e.g. secret,id=ID,file=PATH", NULL, NULL, 0, \
      OPT_COMMON_OBJECT }
#define CMDOPT_FORCE_SHARE \
    { CMDOPT_COMMON, 'U', "force-share", NULL, \
      "open read-only without conflicting locks (an image in use)", NULL, \
      NULL, 0, 'U' }
#define CMDOPT_QUIET \
    { CMDOPT_COMMON, 'q', "quiet", NULL, "quiet", NULL, NULL, 0, 'q' }
#define CMDOPT_OUTPUT \
    { CMDOPT_COMMON, 0, "output", "human|json", "output format", NULL, \
      NULL, 0, OPT_COMMON_OUTPUT }

typedef struct CmdSpec {
    const char *name;         /* "resize" */
    const char *args;         /* positional arguments for the usage line */
    const char *description;  /* lines shown after the usage (or NULL) */
    const CmdOpt *opts;
} CmdSpec;

/* Parses argv (argv[0] is the command name).  Returns the index of the
 * first positional argument, or -1 with *exit_code set: 0 after printing
 * --help, 1 after reporting a bad option.  a may be NULL for a command
 * without shared options; ctx goes to CMDOPT_FN callbacks. */
int cmd_parse(const CmdSpec *spec, ImageArgs *a, void *ctx, int argc,
              char **argv, int *exit_code);

/* Ready-made CMDOPT_FN parsers writing to the option's value:
 * a rate limit in bytes per second (uint64_t *, qemu-img's messages). */
int cmdopt_rate(const CmdOpt *o, const char *arg, void *ctx);

/* The --help text (usage line, description, one line per option). */
void cmd_print_help(const CmdSpec *spec, FILE *f);

#endif
