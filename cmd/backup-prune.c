/*
 * backup-prune.c - `imgtool backup-prune`: retention.  Points no
 * --keep-... rule keeps are removed, their data merged into the points
 * that depend on them (backup/prune.c); --dry-run only says what would
 * happen.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "imgtool/backup-cmd.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/parse-options.h"

static const char *key_secret;
static bool dry_run;

static int opt_keep(const CmdOpt *o, const char *arg, void *ctx)
{
    PruneOptions *po = ctx;
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || !*arg || *end || v < 1 || v > 1000000) {
        imgtool_error("Invalid --%s '%s': a number from 1 to 1000000",
                      o->long_name, arg);
        return 1;
    }
    switch (o->long_name[5]) {
    case 'l': po->keep_last = (int)v; break;
    case 'd': po->keep_daily = (int)v; break;
    case 'w': po->keep_weekly = (int)v; break;
    default: po->keep_monthly = (int)v; break;
    }
    return 0;
}

static const CmdOpt prune_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_QUIET,
    CMDOPT_OUTPUT,
    { CMDOPT_FN, 0, "keep-last", "n", "keep the n newest points",
      .fn = opt_keep },
    { CMDOPT_FN, 0, "keep-daily", "n",
      "keep the newest point of each of the last n days with points",
      .fn = opt_keep },
    { CMDOPT_FN, 0, "keep-weekly", "n", "... of the last n weeks",
      .fn = opt_keep },
    { CMDOPT_FN, 0, "keep-monthly", "n", "... of the last n months",
      .fn = opt_keep },
    { CMDOPT_FLAG, 0, "dry-run", NULL, "only say what would be removed",
      .value = &dry_run },
    CMDOPT_KEY_SECRET(key_secret),
    CMDOPT_END,
};

static const CmdSpec prune_spec = {
    .name = "backup-prune",
    .args = "repository",
    .description =
        "  A point is kept when any rule keeps it; the newest always is.\n"
        "  Removed points are merged into the points that depend on them.\n",
    .opts = prune_opts,
};

int cmd_backup_prune(int argc, char **argv)
{
    ImageArgs a = { 0 };
    PruneOptions o = { 0 };
    int rc;

    key_secret = NULL;
    dry_run = false;
    if (cmd_parse(&prune_spec, &a, &o, argc, argv, &rc) < 0) {
        return rc;
    }
    if (argc - optind != 1) {
        return usage_error("backup-prune", "Expecting a repository");
    }
    o.dry_run = dry_run;
    o.key_secret = key_secret;
    Error err = { 0 };
    json_t *res = NULL;
    if (backup_prune(argv[optind], &o, &res, &err) < 0) {
        imgtool_report(&err);
        return 1;
    }
    if (a.output == OUTPUT_JSON) {
        imgtool_print_json(res);
    } else if (!a.quiet) {
        const char *verb = dry_run ? "would " : "";
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(res, "keep"), i, v) {
            printf("keep %s\n", json_string_value(v));
        }
        json_array_foreach(json_object_get(res, "merges"), i, v) {
            printf("%smerge %s into %s (disk %s)\n", verb,
                   json_string_value(json_object_get(v, "from")),
                   json_string_value(json_object_get(v, "into")),
                   json_string_value(json_object_get(v, "disk")));
        }
        json_array_foreach(json_object_get(res, "remove"), i, v) {
            printf("%sremove %s\n", verb, json_string_value(v));
        }
    }
    json_decref(res);
    return 0;
}
