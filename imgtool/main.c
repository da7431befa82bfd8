/*
 * main.c - imgtool's entry point: find the command, run it.  Each
 * command lives in cmd/<name>.c with its own options and usage.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "imgtool/complete.h"
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
    /* backups */
    { "backup", cmd_backup, "back up images into a backup repository" },
    { "restore", cmd_restore, "restore a backup point to an image" },
    { "backup-list", cmd_backup_list, "list a backup repository's points" },
    { "backup-verify", cmd_backup_verify, "check backup points against their checksums" },
    { "backup-prune", cmd_backup_prune, "remove old backup points (retention)" },
    /* storage pools and volumes, virsh's vocabulary */
    { "pool-define", cmd_pool_define, "define a pool from an XML file" },
    { "pool-define-as", cmd_pool_define_as, "define a pool from a set of args" },
    { "pool-create-as", cmd_pool_create_as, "create and start a transient pool" },
    { "pool-build", cmd_pool_build, "build a pool's storage" },
    { "pool-start", cmd_pool_start, "start an inactive pool" },
    { "pool-destroy", cmd_pool_destroy, "stop a pool" },
    { "pool-delete", cmd_pool_delete, "delete a pool's storage" },
    { "pool-undefine", cmd_pool_undefine, "undefine an inactive pool" },
    { "pool-refresh", cmd_pool_refresh, "refresh a pool's volumes" },
    { "pool-autostart", cmd_pool_autostart, "autostart a pool (or --disable)" },
    { "pool-start-autostart", cmd_pool_start_autostart,
      "start every inactive autostart pool (at boot)" },
    { "pool-list", cmd_pool_list, "list pools" },
    { "pool-info", cmd_pool_info, "storage pool information" },
    { "pool-dumpxml", cmd_pool_dumpxml, "pool information in XML" },
    { "vol-create", cmd_vol_create, "create a volume from an XML file" },
    { "vol-create-as", cmd_vol_create_as, "create a volume from a set of args" },
    { "vol-create-from", cmd_vol_create_from, "create a volume from another" },
    { "vol-clone", cmd_vol_clone, "clone a volume" },
    { "vol-delete", cmd_vol_delete, "delete a volume" },
    { "vol-resize", cmd_vol_resize, "resize a volume" },
    { "vol-wipe", cmd_vol_wipe, "wipe a volume" },
    { "vol-upload", cmd_vol_upload, "upload file contents to a volume" },
    { "vol-download", cmd_vol_download, "download a volume's contents" },
    { "vol-list", cmd_vol_list, "list the volumes of a pool" },
    { "vol-info", cmd_vol_info, "storage volume information" },
    { "vol-path", cmd_vol_path, "the path of a volume" },
    { "vol-key", cmd_vol_key, "the key of a volume" },
    { "vol-name", cmd_vol_name, "the name of a volume given its key or path" },
    { "vol-pool", cmd_vol_pool, "the pool of a volume given its key or path" },
    { "vol-dumpxml", cmd_vol_dumpxml, "volume information in XML" },
    { "serve", cmd_serve, "serve images over NBD and vhost-user (qemu-storage-daemon's options)" },
    { "serve-ctl", cmd_serve_ctl, "send a command to a running serve daemon" },
    { "run", cmd_run, "boot a guest with disks served over vhost-user" },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: %s <command> [options]\n\ncommands:\n", imgtool_prog);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].synopsis);
    }
    fprintf(f, "\nRun '%s help <command>' for a command's options; "
               "see imgtool(1).\n", imgtool_prog);
}

int main(int argc, char **argv)
{
    /* A vanished reader of our output is an error, not a crash. */
    signal(SIGPIPE, SIG_IGN);
    if (argc > 0 && argv[0] && argv[0][0]) {
        const char *slash = strrchr(argv[0], '/');
        imgtool_prog = slash && slash[1] ? slash + 1 : argv[0];
    }
    /* Before any work (and any thread): SIGUSR1 must never kill us. */
    progress_signals_init();
    imgtool_install_report();
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    const char *name = argv[1];
    /* hidden: the shell completion's source (imgtool/complete.h) */
    if (!strcmp(name, "--complete")) {
        return imgtool_complete(commands, N_COMMANDS, argc - 2, argv + 2);
    }
    /* `help CMD` is `CMD --help` */
    char *help_argv[] = { argv[0], argc > 2 ? argv[2] : NULL, "--help",
                          NULL };
    if (!strcmp(name, "help") && argc > 2) {
        argc = 3;
        argv = help_argv;
        name = argv[1];
    } else if (!strcmp(name, "-h") || !strcmp(name, "--help") ||
               !strcmp(name, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(name, "-V") || !strcmp(name, "--version")) {
        imgtool_print_version(stdout);
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
    /* qemu-img's words: scripts match on them. */
    imgtool_error("Command not found: %s", name);
    fprintf(stderr, "Try '%s --help' for more information\n", imgtool_prog);
    return 1;
}
