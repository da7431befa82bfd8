/*
 * restore.c - `imgtool restore`: a backup point's disk to a new image
 * file, a pool volume, or stdout ("-").  The work is backup/restore.c's;
 * this file makes the target.  An existing target is written into only
 * with -n, so a typo cannot overwrite an image.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imgtool/backup-cmd.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/parse-options.h"

typedef struct RestoreArgs {
    const char *name;          /* TARGET as given */
    const char *fmt;           /* -O */
    const char *opts;          /* -o */
    bool existing;             /* -n */
    BlockNode *node;
    char *created;             /* a file we made (removed on failure) */
} RestoreArgs;

static const char *point, *disk, *key_secret, *out_fmt, *create_opts;
static bool show_progress, no_create;
static int workers;

static int opt_workers(const CmdOpt *o, const char *arg, void *ctx)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (!*arg || *end || v < 1 || v > 16) {
        imgtool_error("Invalid number of workers '%s': 1 to 16", arg);
        return 1;
    }
    workers = (int)v;
    return 0;
}

static const CmdOpt restore_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_QUIET,
    CMDOPT_OUTPUT,
    { CMDOPT_STRING, 0, "point", "id", "the point (default: the newest)",
      .value = &point },
    { CMDOPT_STRING, 0, "disk", "name",
      "the disk, when the point holds several", .value = &disk },
    { CMDOPT_STRING, 'O', "target-format", "fmt",
      "raw or qcow2 (default: raw for a raw source, else qcow2)",
      .value = &out_fmt },
    { CMDOPT_STRING, 'o', "options", "opts",
      "creation options of the target (-o help for the format's)",
      .value = &create_opts },
    { CMDOPT_FLAG, 'n', "existing", NULL,
      "write into an existing target (same size or larger)",
      .value = &no_create },
    CMDOPT_PROGRESS(&show_progress),
    CMDOPT_KEY_SECRET(key_secret),
    { CMDOPT_FN, 'm', "workers", "n", "parallel workers (default 8)",
      .fn = opt_workers },
    CMDOPT_END,
};

static const CmdSpec restore_spec = {
    .name = "restore",
    .args = "repository target",
    .description =
        "  target: a new image file, vol:POOL/NAME, or - for stdout (raw).\n",
    .opts = restore_opts,
};

static BlockNode *open_target(void *opaque, uint64_t size, const char *fmt,
                              int *fd, bool *is_zero, Error *err)
{
    RestoreArgs *t = opaque;
    *fd = -1;
    *is_zero = false;
    if (strcmp(t->name, "-") == 0) {
        if (isatty(STDOUT_FILENO)) {
            error_setf(err, EINVAL, "refusing to write a disk image to a "
                       "terminal");
            return NULL;
        }
        *fd = STDOUT_FILENO;
        return NULL;
    }
    if (t->fmt) {
        fmt = t->fmt;
    }
    if (t->existing) {
        t->node = imgtool_open(t->name, t->fmt, false, BLOCK_O_RDWR, err);
        if (!t->node) {
            return NULL;
        }
        int64_t len = block_get_length(t->node);
        if (len >= 0 && (uint64_t)len < size) {
            error_setf(err, ENOSPC, "%s: %lld bytes, smaller than the "
                       "disk's %llu", t->name, (long long)len,
                       (unsigned long long)size);
            block_close(t->node);
            t->node = NULL;
            return NULL;
        }
        return block_ref(t->node);
    }
    char *path = NULL;
    if (imgtool_target_name(t->name, &path, err) < 0) {
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) == 0) {
        error_setf(err, EEXIST, "%s exists: remove it first, or give -n to "
                   "write into it", t->name);
        free(path);
        return NULL;
    }
    KVList opts = { 0 };
    if (t->opts && kvlist_parse(&opts, t->opts, NULL, err) < 0) {
        kvlist_free(&opts);
        free(path);
        return NULL;
    }
    if (block_create(fmt, path, size, true, &opts, BLOCK_CREATE_QUIET,
                     err) < 0) {
        kvlist_free(&opts);
        free(path);
        return NULL;
    }
    kvlist_free(&opts);
    t->created = path;
    imgtool_target_created(t->name, fmt);
    t->node = block_open(path, fmt, NULL, BLOCK_O_RDWR, err);
    if (!t->node) {
        return NULL;
    }
    *is_zero = block_has_zero_init(t->node);
    return block_ref(t->node);
}

int cmd_restore(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;

    point = disk = key_secret = out_fmt = create_opts = NULL;
    show_progress = no_create = false;
    workers = 0;
    if (cmd_parse(&restore_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    if (argc - optind != 2) {
        return usage_error("restore", "Expecting a repository and a target");
    }
    if (out_fmt && strcmp(out_fmt, "raw") && strcmp(out_fmt, "qcow2")) {
        imgtool_error("Invalid target format '%s': raw or qcow2", out_fmt);
        return 1;
    }
    const char *repo = argv[optind], *target = argv[optind + 1];
    RestoreArgs t = {
        .name = target, .fmt = out_fmt, .opts = create_opts,
        .existing = no_create,
    };
    bool to_stdout = strcmp(target, "-") == 0;
    Progress *p = progress_start_on(show_progress && !a.quiet,
                                    to_stdout || a.output == OUTPUT_JSON
                                        ? stderr : stdout);
    backup_cmd_catch_signals();
    RestoreOptions o = {
        .point = point, .disk = disk, .key_secret = key_secret,
        .workers = workers, .progress = backup_cmd_progress,
        .progress_opaque = p, .cancel = &backup_cmd_cancel,
    };
    RestoreTarget rt = { open_target, &t };
    Error err = { 0 };
    json_t *info = NULL;
    int ret = backup_restore(repo, &o, &rt, &info, &err);
    progress_finish(p);
    block_close(t.node);
    if (ret < 0) {
        if (t.created) {
            unlink(t.created);
        }
        free(t.created);
        imgtool_report(&err);
        return 1;
    }
    free(t.created);
    if (a.output == OUTPUT_JSON && !to_stdout) {
        imgtool_print_json(info);
    } else if (!a.quiet && !to_stdout) {
        printf("Restored point %s disk %s to %s\n",
               json_string_value(json_object_get(info, "point")),
               json_string_value(json_object_get(info, "disk")), target);
    }
    json_decref(info);
    return 0;
}
