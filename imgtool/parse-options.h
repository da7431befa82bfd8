/*
 * parse-options.h - each command declares its options once, in a table,
 * and parsing, the usage line and --help all come from it (the way git's
 * parse-options does), so they cannot drift apart.
 *
 *   static struct { bool shrink; const char *prealloc; } o;
 *   static const CmdOpt resize_opts[] = {
 *       CMDOPT_OBJECT, CMDOPT_IMAGE_OPTS, CMDOPT_FORMAT, CMDOPT_QUIET,
 *       { CMDOPT_STRING, 0, "preallocation", "mode",
 *         "how to allocate the added space", .value = &o.prealloc },
 *       { CMDOPT_FLAG, 0, "shrink", NULL, "allow making it smaller",
 *         .value = &o.shrink },
 *       CMDOPT_END,
 *   };
 *   static const CmdSpec resize_spec = {
 *       .name = "resize", .args = "filename [+|-]size",
 *       .opts = resize_opts,
 *   };
 *   ...
 *   int rc, first = cmd_parse(&resize_spec, &a, NULL, argc, argv, &rc);
 *   if (first < 0) return rc;     // --help printed (0) or an error (1)
 *
 * An entry names its type, short and long name, argument name and help
 * line in that order, then what the type needs by designator (.value,
 * .fn, .what, .min, .max, .flags).  Options are handled in command-line
 * order, so a callback's error comes where the old getopt loops gave it.
 *
 * The shared options (-f, --image-opts, --object, -U, -q, --output) are
 * table entries too (CMDOPT_FORMAT ...) and land in the ImageArgs given
 * to cmd_parse, with the meaning imgtool/cmdline.c gives them; the
 * command calls image_args_check() itself, after its own argument checks,
 * since qemu-img reports a wrong number of file names first.  Errors keep
 * qemu-img's wording ("unrecognized option '-x'", "missing argument for
 * option '-f'", then "Try 'imgtool CMD --help'") unless the spec says
 * otherwise.
 */
#ifndef IMGTOOL_PARSE_OPTIONS_H
#define IMGTOOL_PARSE_OPTIONS_H

#include <getopt.h>     /* optind, which cmd_parse() leaves as it returns */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "imgtool/cmdline.h"

typedef enum {
    CMDOPT_END_OF_TABLE,
    CMDOPT_FLAG,        /* no argument; sets *(bool *)value */
    CMDOPT_STRING,      /* an argument; sets *(const char **)value */
    CMDOPT_LIST,        /* an argument, repeatable; appended to
                         * *(CmdList *)value */
    CMDOPT_SIZE,        /* a size with an optional k, M, G, T, P or E
                         * suffix in [min, max] into *(uint64_t *)value;
                         * else qemu-img's "Invalid <what> specified. You
                         * may use k, M, G, T, P or E suffixes for..." */
    CMDOPT_UINT,        /* a number (decimal, 0x hex, 0 octal) in [min,
                         * max] into *(uint64_t *)value; else "Invalid
                         * <what> specified" */
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
    const char *help;         /* one line of --help (NULL: none) */
    void *value;              /* what the type sets (see CmdOptType) */
    CmdOptFn *fn;             /* FN */
    int flags;                /* CMDOPT_ARG_OPTIONAL, CMDOPT_HIDDEN */
    int common_code;          /* COMMON: what image_args_parse knows */
    const char *what;         /* SIZE, UINT: the noun of the message */
    uint64_t min, max;        /* SIZE, UINT: the range; max 0 means none
                               * (UINT: at most INT64_MAX) */
};

/* The values of a CMDOPT_LIST option, in command-line order; the
 * strings are argv's.  Free with cmd_list_free(). */
typedef struct CmdList {
    const char **items;
    size_t n;
} CmdList;

#define CMDOPT_END { CMDOPT_END_OF_TABLE, 0, NULL, NULL, NULL, .value = NULL }
#define CMDOPT_FORMAT \
    { CMDOPT_COMMON, 'f', "format", "fmt", \
      "image format (probed when omitted)", .common_code = 'f' }
#define CMDOPT_IMAGE_OPTS \
    { CMDOPT_COMMON, 0, "image-opts", NULL, \
      "the file name is an option string (driver=...,...)", \
      .common_code = OPT_COMMON_IMAGE_OPTS }
#define CMDOPT_OBJECT \
    { CMDOPT_COMMON, 0, "object", "objectdef", \
      "define an object, e.g. secret,id=ID,file=PATH", \
      .common_code = OPT_COMMON_OBJECT }
#define CMDOPT_FORCE_SHARE \
    { CMDOPT_COMMON, 'U', "force-share", NULL, \
      "open read-only without conflicting locks (an image in use)", \
      .common_code = 'U' }
#define CMDOPT_QUIET \
    { CMDOPT_COMMON, 'q', "quiet", NULL, "quiet", .common_code = 'q' }
#define CMDOPT_OUTPUT \
    { CMDOPT_COMMON, 0, "output", "human|json", "output format", \
      .common_code = OPT_COMMON_OUTPUT }
/* -p: a progress bar (which -q turns off in every command). */
#define CMDOPT_PROGRESS(var) \
    { CMDOPT_FLAG, 'p', NULL, NULL, "show progress", .value = var }
/* -t/-T: a cache mode, checked later by cmd_cache_flags(). */
#define CMDOPT_CACHE(letter, arg, var, whose) \
    { CMDOPT_STRING, letter, NULL, arg, \
      whose "cache mode: none, writeback (default), unsafe, directsync, " \
      "writethrough", .value = var }

/* Flags of a CmdSpec. */
enum {
    /* Options end at the first other argument (getopt's '+'): what
     * follows a file name is not an option. */
    CMDSPEC_IN_ORDER = 1 << 0,
    /* No -h/--help. */
    CMDSPEC_NO_HELP = 1 << 1,
    /* getopt reports a bad option in its own words ("io: invalid option
     * -- 'x'") and the usage lines follow on stderr, as qemu-io does. */
    CMDSPEC_GETOPT_MESSAGES = 1 << 2,
};

typedef struct CmdSpec CmdSpec;

/* Reports an option getopt refused: opt as written ("-x", "--bogus"),
 * missing_arg when its argument was missing, else unknown.  Returns the
 * exit code. */
typedef int CmdBadOptFn(const CmdSpec *spec, const char *opt,
                        bool missing_arg, void *ctx);

struct CmdSpec {
    const char *name;         /* "resize" */
    const char *args;         /* positional arguments for the usage line */
    const char *description;  /* lines shown after the usage (or NULL) */
    const CmdOpt *opts;
    int flags;                /* CMDSPEC_* */
    CmdBadOptFn *bad_option;  /* NULL: qemu-img's wording */
    /* A command language of the command's own (NULL-terminated), listed
     * in --help under "commands:" with its usage lines. */
    const CmdSpec *const *commands;
};

/* Parses argv (argv[0] is the command name).  Returns the index of the
 * first positional argument, or -1 with *exit_code set: 0 after printing
 * --help, else after reporting a bad option.  a may be NULL for a
 * command without shared options; ctx goes to CMDOPT_FN callbacks and
 * bad_option. */
int cmd_parse(const CmdSpec *spec, ImageArgs *a, void *ctx, int argc,
              char **argv, int *exit_code);

/* Appends arg to l: 0, or -ENOMEM. */
int cmd_list_append(CmdList *l, const char *arg);
void cmd_list_free(CmdList *l);

/* Appends one -o list to the ones before it in *all (malloc'd), after a
 * ',' when *all holds something: qemu-img merges repeated -o options
 * into one list.  0, or -ENOMEM. */
/* One -o argument as qemu-img takes it: not empty, no leading comma and
 * no unescaped trailing one (",," is an escaped comma), whether or not
 * it asks for help.  False after reporting "Invalid option list: ARG". */
bool cmd_option_list_valid(const char *arg);
int cmd_opts_append(char **all, const char *more);

/* The BLOCK_O_* flags of a -t/-T cache mode (NULL: *flags untouched),
 * or -1 after qemu-img's "Invalid [source ]cache option: MODE". */
int cmd_cache_flags(const char *mode, bool source, int *flags);

/* The --help text (usage line, description, one line per option). */
void cmd_print_help(const CmdSpec *spec, FILE *f);

#endif
