/*
 * main.c - imgtool's entry point: find the command, run it.  Each
 * command lives in cmd/<name>.c with its own options and usage.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "imgtool/imgtool.h"

static const ImgtoolCommand commands[] = {
    { "create", cmd_create, "create a new disk image" },
    { "info", cmd_info, "show information about an image" },
    { "check", cmd_check, "check (and repair) an image's consistency" },
    { "convert", cmd_convert, "copy an image, converting its format" },
    { "compare", cmd_compare, "compare the contents of two images" },
    { "map", cmd_map, "show an image's allocation map" },
    { "measure", cmd_measure, "compute the size a new image needs" },
    { "resize", cmd_resize, "change an image's virtual size" },
    { "dd", cmd_dd, "copy like dd(1) between images" },
    { "io", cmd_io, "run qemu-io-style I/O commands on an image" },
    { "bench", cmd_bench, "benchmark I/O through the block layer" },
    { "snapshot", cmd_snapshot, "create, list, apply or delete snapshots" },
    { "commit", cmd_commit, "merge an overlay into its backing file" },
    { "rebase", cmd_rebase, "change an image's backing file" },
    { "amend", cmd_amend, "change an image's format options in place" },
    { "bitmap", cmd_bitmap, "add, remove or change persistent dirty bitmaps" },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: imgtool <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].synopsis);
    }
    fprintf(f, "\nRun 'imgtool <command> --help' for a command's options; "
               "see imgtool(1).\n");
}

int main(int argc, char **argv)
{
    /* A vanished reader of our output is an error, not a crash. */
    signal(SIGPIPE, SIG_IGN);
    imgtool_install_report();
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help") ||
        !strcmp(name, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(name, "-V") || !strcmp(name, "--version")) {
        printf("imgtool version 0.1.0\n");
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0) {
            imgtool_cmd_name = name;
            int rc = commands[i].run(argc - 1, argv + 1);
            /* A write that failed in an earlier implicit flush leaves
             * only the error flag: this flush may have nothing to fail. */
            int ferr = fflush(stdout) != 0 ? errno : 0;
            if ((ferr || ferror(stdout)) && rc == 0) {
                imgtool_error("error writing output%s%s", ferr ? ": " : "",
                              ferr ? strerror(ferr) : "");
                rc = 1;
            }
            return rc;
        }
    }
    imgtool_error("unknown command '%s' (try 'imgtool --help')", name);
    return 1;
}
