/*
 * backup-list.c - `imgtool backup-list`: the points of a repository,
 * oldest first; --output=json prints their records as a JSON array (the
 * shape scripts rely on: see the man page).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "imgtool/backup-cmd.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/parse-options.h"

static const char *key_secret;

static const CmdOpt list_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_OUTPUT,
    CMDOPT_KEY_SECRET(key_secret),
    CMDOPT_END,
};

static const CmdSpec list_spec = {
    .name = "backup-list",
    .args = "repository",
    .opts = list_opts,
};

static void print_table(json_t *points)
{
    size_t i;
    json_t *p;
    printf("%-17s %-20s %-13s %-10s %10s %10s  %s\n", "ID", "TIME (UTC)",
           "TYPE", "METHOD", "READ", "STORED", "DISKS");
    json_array_foreach(points, i, p) {
        json_t *disks = json_object_get(p, "disks");
        const char *type = NULL, *method = NULL;
        char names[256] = "", rd[32], wr[32], when[32];
        size_t k;
        json_t *d;
        json_array_foreach(disks, k, d) {
            const char *t = json_string_value(json_object_get(d, "type"));
            const char *m = json_string_value(json_object_get(d, "method"));
            type = !type || strcmp(type, t) == 0 ? t : "mixed";
            method = !method || strcmp(method, m) == 0 ? m : "mixed";
            const char *n = json_string_value(json_object_get(d, "name"));
            if (strlen(names) + strlen(n) + 2 < sizeof(names)) {
                strcat(names, k ? "," : "");
                strcat(names, n);
            }
        }
        time_t t = (time_t)json_integer_value(json_object_get(p,
                                                              "timestamp"));
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        format_size((uint64_t)json_integer_value(
                        json_object_get(p, "bytes-read")), rd, sizeof(rd));
        format_size((uint64_t)json_integer_value(
                        json_object_get(p, "bytes-written")), wr, sizeof(wr));
        printf("%-17s %-20s %-13s %-10s %10s %10s  %s\n",
               json_string_value(json_object_get(p, "id")), when,
               type ? type : "-", method ? method : "-", rd, wr, names);
    }
}

int cmd_backup_list(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;

    key_secret = NULL;
    if (cmd_parse(&list_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    if (argc - optind != 1) {
        return usage_error("backup-list", "Expecting a repository");
    }
    Error err = { 0 };
    json_t *points = NULL;
    if (backup_list(argv[optind], key_secret, &points, &err) < 0) {
        imgtool_report(&err);
        return 1;
    }
    if (a.output == OUTPUT_JSON) {
        imgtool_print_json(points);
    } else {
        print_table(points);
    }
    json_decref(points);
    return 0;
}
