/*
 * cmdline.h - the options every image command shares (-f, -U, -q,
 * --output, --image-opts, --object), parsed in one place so that they
 * mean the same thing, with the same errors, in every command.
 *
 * A command puts IMAGE_ARGS_LONG_OPTIONS (plus FORCE_SHARE_LONG_OPTION and
 * OUTPUT_LONG_OPTION when it has -U and --output) in its getopt_long table, lists the short letters it
 * takes in its optstring, and hands every option its own switch does not
 * know to image_args_parse().
 */
#ifndef IMGTOOL_CMDLINE_H
#define IMGTOOL_CMDLINE_H

#include <getopt.h>
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

#define IMAGE_ARGS_LONG_OPTIONS                                        \
    { "format", required_argument, NULL, 'f' },                        \
    { "image-opts", no_argument, NULL, OPT_COMMON_IMAGE_OPTS },        \
    { "object", required_argument, NULL, OPT_COMMON_OBJECT }

#define FORCE_SHARE_LONG_OPTION \
    { "force-share", no_argument, NULL, 'U' }

#define OUTPUT_LONG_OPTION \
    { "output", required_argument, NULL, OPT_COMMON_OUTPUT }

/* 1: c was a shared option and is recorded in a; 0: not a shared
 * option; -1: a bad value, already reported (exit with 1). */
int image_args_parse(ImageArgs *a, int c, char *arg);

/* For a command's `default:` case: records a shared option and returns
 * 0, or reports a bad value or an unknown option (with the hint to run
 * `imgtool CMD --help`) and returns the exit code, 1. */
int image_args_option(ImageArgs *a, int c, char *arg, const char *cmd,
                      char **argv);

/* Refuses combinations no command accepts (--image-opts with -f);
 * returns 0, or -1 after reporting. */
int image_args_check(const ImageArgs *a);

/* BLOCK_O_* flags implied by the shared options. */
int image_args_flags(const ImageArgs *a);

#endif
