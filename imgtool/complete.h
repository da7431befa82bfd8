/*
 * complete.h - shell completion from the binary itself: `imgtool
 * --complete CWORD imgtool WORD...` prints the candidates for word CWORD
 * of the command line, one per line (the bash script in completions/
 * only relays them), so a command or option added to the tables
 * completes without anyone editing a list.
 *
 * A command's options come from its own table: the command is run with
 * complete_capture.active set, and cmd_parse() / virsh_args_parse() hand
 * it their table and return at once (exit code 0) instead of parsing.
 * The tables are static, so the pointers outlive the call.
 *
 * Output: candidates that start with the word being completed, each a
 * whole word (bash trims what readline keeps before '=' or ':'); "@file"
 * or "@dir" asks the shell to add file or directory names.
 */
#ifndef IMGTOOL_COMPLETE_H
#define IMGTOOL_COMPLETE_H

#include <stdbool.h>

#include "imgtool/imgtool.h"

struct CmdSpec;
struct VirshCmd;

typedef struct CompleteCapture {
    bool active;
    const struct CmdSpec *spec;
    const struct VirshCmd *virsh;
} CompleteCapture;

extern CompleteCapture complete_capture;

/* argv: the words after "--complete" (CWORD, then the command line from
 * "imgtool" on).  Returns the exit code. */
int imgtool_complete(const ImgtoolCommand *cmds, size_t n, int argc,
                     char **argv);

#endif
