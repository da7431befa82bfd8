/*
 * backup.c - `imgtool backup`: make a backup point of one or more images
 * (or volumes, or URLs) in a repository.  The work is backup/point.c's;
 * this file parses options and prints the outcome.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/backup-cmd.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/parse-options.h"

#define MAX_SOURCES 64

typedef struct BackupArgs {
    const char *disks[MAX_SOURCES];
    int ndisks;
    const char *devices[MAX_SOURCES];
    int ndevices;
    BackupMode mode;
    uint64_t iter_time;
    int workers;
} BackupArgs;

static int opt_disk(const CmdOpt *o, const char *arg, void *ctx)
{
    BackupArgs *b = ctx;
    if (b->ndisks == MAX_SOURCES) {
        imgtool_error("at most %d --disk options", MAX_SOURCES);
        return 1;
    }
    b->disks[b->ndisks++] = arg;
    return 0;
}

static int opt_device(const CmdOpt *o, const char *arg, void *ctx)
{
    BackupArgs *b = ctx;
    if (b->ndevices == MAX_SOURCES) {
        imgtool_error("at most %d --device options", MAX_SOURCES);
        return 1;
    }
    b->devices[b->ndevices++] = arg;
    return 0;
}

static int opt_mode(const CmdOpt *o, const char *arg, void *ctx)
{
    BackupArgs *b = ctx;
    if (backup_mode_parse(arg, &b->mode) < 0) {
        imgtool_error("Invalid backup mode '%s': full, incremental, "
                      "differential or auto", arg);
        return 1;
    }
    return 0;
}

static int opt_number(const char *what, const char *arg, uint64_t max,
                      uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || !*arg || *end || arg[0] == '-' || v == 0 || v > max) {
        imgtool_error("Invalid %s '%s': a number from 1 to %llu", what, arg,
                      (unsigned long long)max);
        return 1;
    }
    *out = v;
    return 0;
}

static int opt_iter_time(const CmdOpt *o, const char *arg, void *ctx)
{
    BackupArgs *b = ctx;
    return opt_number("iteration time", arg, 600000, &b->iter_time);
}

static int opt_workers(const CmdOpt *o, const char *arg, void *ctx)
{
    BackupArgs *b = ctx;
    uint64_t v = 0;
    int r = opt_number("number of workers", arg, 16, &v);
    b->workers = (int)v;
    return r;
}

static bool compress, show_progress;
static const char *key_secret, *qmp, *qga, *fleece_dir, *tls_creds;

static const CmdOpt backup_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_FORMAT,
    CMDOPT_QUIET,
    CMDOPT_OUTPUT,
    { CMDOPT_FN, 0, "mode", "full|incremental|differential|auto",
      "what the point holds (default auto: full without a usable chain, "
      "else incremental)", .fn = opt_mode },
    CMDOPT_PROGRESS(&show_progress),
    { CMDOPT_FLAG, 'c', "compress", NULL,
      "store clusters zstd-compressed", .value = &compress },
    CMDOPT_KEY_SECRET(key_secret),
    { CMDOPT_FN, 0, "iter-time", "ms",
      "a new encrypted repository: PBKDF time per key (default 2000)",
      .fn = opt_iter_time },
    { CMDOPT_FN, 0, "disk", "name",
      "the next source's name in the repository (default: its file name "
      "without extension); once per source", .fn = opt_disk },
    { CMDOPT_FN, 'm', "workers", "n", "parallel workers (default 8)",
      .fn = opt_workers },
    { CMDOPT_STRING, 0, "qmp", "socket",
      "back up a running VM through its QMP socket (its disks given with "
      "--device)", .value = &qmp },
    { CMDOPT_FN, 0, "device", "name",
      "with --qmp: a disk of the VM (device id, drive or node name); once "
      "per disk, all in one consistent point", .fn = opt_device },
    { CMDOPT_STRING, 0, "qga", "socket",
      "with --qmp: freeze the guest's filesystems around the point in "
      "time through its guest agent", .value = &qga },
    { CMDOPT_STRING, 0, "fleece-dir", "dir",
      "with --qmp: where the fleecing overlays go (default: the "
      "repository)", .value = &fleece_dir },
    { CMDOPT_STRING, 0, "tls-creds", "id",
      "with --qmp: the credentials (a --object tls-creds-x509 or "
      "tls-creds-psk, endpoint=client) for an NBD server that requires "
      "TLS (imgtool serve --tls-creds)", .value = &tls_creds },
    CMDOPT_END,
};

static const CmdSpec backup_spec = {
    .name = "backup",
    .args = "(source... | --qmp socket --device name...) repository",
    .description =
        "  source: an image file, vol:POOL/NAME, a URL, or with --image-opts\n"
        "  an option string; the repository is a directory, made by the\n"
        "  first backup (encrypted when --key-secret is given then).\n",
    .opts = backup_opts,
};

static void print_human(json_t *rec, const char *repo)
{
    char rd[32], wr[32];
    printf("Backup point %s in %s\n",
           json_string_value(json_object_get(rec, "id")), repo);
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(rec, "disks"), i, d) {
        const char *type = json_string_value(json_object_get(d, "type"));
        const char *parent = json_string_value(json_object_get(d, "parent"));
        format_size((uint64_t)json_integer_value(
                        json_object_get(d, "bytes-read")), rd, sizeof(rd));
        format_size((uint64_t)json_integer_value(
                        json_object_get(d, "bytes-written")), wr, sizeof(wr));
        printf("  %s: %s%s%s (%s), read %s, stored %s\n",
               json_string_value(json_object_get(d, "name")), type,
               parent ? " on " : "", parent ? parent : "",
               json_string_value(json_object_get(d, "method")), rd, wr);
    }
}

int cmd_backup(int argc, char **argv)
{
    ImageArgs a = { 0 };
    BackupArgs b = { .mode = BACKUP_AUTO };
    int rc;

    compress = show_progress = false;
    key_secret = qmp = qga = fleece_dir = tls_creds = NULL;
    if (cmd_parse(&backup_spec, &a, &b, argc, argv, &rc) < 0) {
        return rc;
    }
    int npos = argc - optind;
    if (qmp) {
        if (npos != 1 || b.ndevices == 0) {
            return usage_error("backup", "With --qmp: expecting --device "
                               "and a repository");
        }
    } else if (b.ndevices || qga || fleece_dir || tls_creds) {
        return usage_error("backup", "--device, --qga, --fleece-dir and "
                           "--tls-creds go with --qmp");
    } else if (npos < 2) {
        return usage_error("backup", "Expecting a source and a repository");
    }
    int nsrc = qmp ? b.ndevices : npos - 1;
    if (nsrc > MAX_SOURCES) {
        imgtool_error("at most %d sources in one backup", MAX_SOURCES);
        return 1;
    }
    if (b.ndisks && b.ndisks != nsrc) {
        imgtool_error("%d --disk names for %d sources", b.ndisks, nsrc);
        return 1;
    }
    const char *repo = argv[argc - 1];
    BackupSource src[MAX_SOURCES];
    for (int i = 0; i < nsrc; i++) {
        src[i].name = qmp ? b.devices[i] : argv[optind + i];
        src[i].disk = b.ndisks ? b.disks[i] : NULL;
    }
    Progress *p = progress_start_on(show_progress && !a.quiet,
                                    a.output == OUTPUT_JSON ? stderr
                                                            : stdout);
    backup_cmd_catch_signals();
    BackupOptions o = {
        .mode = b.mode,
        .compress = compress,
        .key_secret = key_secret,
        .iter_time_ms = b.iter_time,
        .workers = b.workers,
        .open = backup_cmd_open,
        .open_opaque = &a,
        .progress = backup_cmd_progress,
        .progress_opaque = p,
        .cancel = &backup_cmd_cancel,
        .qmp_socket = qmp,
        .qga_socket = qga,
        .fleece_dir = fleece_dir,
        .tls_creds = tls_creds,
    };
    Error err = { 0 };
    json_t *rec = NULL;
    int ret = backup_create(repo, src, nsrc, &o, &rec, &err);
    progress_finish(p);
    if (ret < 0) {
        imgtool_report(&err);
        return 1;
    }
    if (a.output == OUTPUT_JSON) {
        imgtool_print_json(rec);
    } else if (!a.quiet) {
        print_human(rec, repo);
    }
    json_decref(rec);
    return 0;
}
