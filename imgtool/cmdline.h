/*
 * cmdline.h - the options every image command shares (-f, -U, -q,
 * --output, --image-opts, --object), read in one place so that they
 * mean the same thing, with the same errors, in every command.
 *
 * A command lists the ones it takes in its parse-options table
 * (CMDOPT_FORMAT, CMDOPT_FORCE_SHARE, ... in imgtool/parse-options.h);
 * cmd_parse() hands them to image_args_parse() and the command reads
 * the result from its ImageArgs.
 */
#ifndef IMGTOOL_CMDLINE_H
#define IMGTOOL_CMDLINE_H

#include <stdbool.h>

#include "imgtool/imgtool.h"

typedef struct ImageArgs {
    const char *fmt;        /* -f: NULL probes */
    bool image_opts;        /* --image-opts */
    bool force_share;       /* -U */
    bool quiet;             /* -q */
    OutputFormat output;    /* --output=human|json */
} ImageArgs;

enum {
    OPT_COMMON_OUTPUT = 0x400,
    OPT_COMMON_IMAGE_OPTS,
    OPT_COMMON_OBJECT,
};

/* c is a letter ('f', 'U', 'q') or an OPT_COMMON_* code; arg is
 * argv's own string (--object wipes a data= secret in it).  1: recorded
 * in a; 0: not a shared option; -1: a bad value, already reported (exit
 * with 1). */
int image_args_parse(ImageArgs *a, int c, char *arg);

/* Refuses combinations no command accepts (--image-opts with -f);
 * returns 0, or -1 after reporting.  Commands call it after their own
 * argument checks, as qemu-img reports those first. */
int image_args_check(const ImageArgs *a);

/* BLOCK_O_* flags implied by the shared options. */
int image_args_flags(const ImageArgs *a);

#endif
