/*
 * backup-verify.c - `imgtool backup-verify`: recheck every point of a
 * repository against its checksums (backup/verify.c says what that
 * covers).  Exit 0: all points are sound; 2: some are damaged (each is
 * named); 1: the check itself failed.
 */
#include <errno.h>
#include <stdio.h>

#include "imgtool/backup-cmd.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/parse-options.h"

static const char *key_secret, *point;
static bool show_progress;

static const CmdOpt verify_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_QUIET,
    CMDOPT_OUTPUT,
    { CMDOPT_STRING, 0, "point", "id", "only this point", .value = &point },
    CMDOPT_PROGRESS(&show_progress),
    CMDOPT_KEY_SECRET(key_secret),
    CMDOPT_END,
};

static const CmdSpec verify_spec = {
    .name = "backup-verify",
    .args = "repository",
    .description =
        "  Exit status: 0 every point is sound, 2 damaged points (named),\n"
        "  1 an error.\n",
    .opts = verify_opts,
};

int cmd_backup_verify(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;

    key_secret = point = NULL;
    show_progress = false;
    if (cmd_parse(&verify_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    if (argc - optind != 1) {
        return usage_error("backup-verify", "Expecting a repository");
    }
    Progress *p = progress_start_on(show_progress && !a.quiet,
                                    a.output == OUTPUT_JSON ? stderr
                                                            : stdout);
    backup_cmd_catch_signals();
    VerifyOptions o = {
        .key_secret = key_secret, .point = point,
        .progress = backup_cmd_progress, .progress_opaque = p,
        .cancel = &backup_cmd_cancel,
    };
    Error err = { 0 };
    json_t *report = NULL;
    int ret = backup_verify(argv[optind], &o, &report, &err);
    progress_finish(p);
    if (report && a.output == OUTPUT_JSON) {
        imgtool_print_json(report);
    } else if (report && !a.quiet) {
        size_t i, k;
        json_t *e, *pr;
        json_array_foreach(report, i, e) {
            printf("point %s: %s\n",
                   json_string_value(json_object_get(e, "id")),
                   json_string_value(json_object_get(e, "status")));
            json_array_foreach(json_object_get(e, "problems"), k, pr) {
                printf("  %s\n", json_string_value(pr));
            }
        }
    }
    json_decref(report);
    if (ret < 0) {
        imgtool_report(&err);
        return ret == -EILSEQ ? 2 : 1;
    }
    return 0;
}
