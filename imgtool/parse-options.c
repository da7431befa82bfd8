/*
 * parse-options.c - options from a command's table: getopt_long's
 * optstring and option array are generated from it, and so are the usage
 * line and --help (see parse-options.h).
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/parse-options.h"

/* getopt codes for long-only options: above every character. */
#define LONG_ONLY_BASE 0x10000

static int opt_code(const CmdOpt *o, size_t index)
{
    return o->short_name ? o->short_name : LONG_ONLY_BASE + (int)index;
}

static bool takes_arg(const CmdOpt *o)
{
    return o->argname != NULL;
}

/* For the usage line: the short form when there is one ("-f fmt"),
 * else the long one ("--output=human|json", "--random[=seed]"). */
static void opt_synopsis(const CmdOpt *o, char *buf, size_t len)
{
    bool arg = takes_arg(o), optional = o->flags & CMDOPT_ARG_OPTIONAL;
    if (o->short_name) {
        snprintf(buf, len, "-%c%s%s", o->short_name, arg ? " " : "",
                 arg ? o->argname : "");
    } else {
        snprintf(buf, len, "--%s%s%s%s", o->long_name,
                 arg ? (optional ? "[=" : "=") : "", arg ? o->argname : "",
                 arg && optional ? "]" : "");
    }
}

/* The usage line, wrapped under the command name as qemu-img does. */
static void print_usage_line(const CmdSpec *spec, FILE *f)
{
    char head[64];
    int indent = snprintf(head, sizeof(head), "usage: imgtool %s",
                          spec->name);
    int col = indent;
    fputs(head, f);
    for (size_t i = 0; spec->opts[i].type != CMDOPT_END_OF_TABLE; i++) {
        const CmdOpt *o = &spec->opts[i];
        if (o->flags & CMDOPT_HIDDEN) {
            continue;
        }
        char item[128];
        opt_synopsis(o, item + 1, sizeof(item) - 2);
        item[0] = '[';
        strcat(item, "]");
        int w = (int)strlen(item) + 1;
        if (col + w > 78) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        }
        fprintf(f, " %s", item);
        col += w;
    }
    if (spec->args && *spec->args) {
        if (col + 1 + (int)strlen(spec->args) > 78) {
            fprintf(f, "\n%*s", indent, "");
        }
        fprintf(f, " %s", spec->args);
    }
    fputc('\n', f);
}

/* text from column `indent` on, wrapped at word boundaries before 80. */
static void print_wrapped(FILE *f, const char *text, int indent)
{
    int col = indent;
    const char *p = text;
    while (*p) {
        size_t w = strcspn(p, " ");
        if (col > indent && col + 1 + (int)w > 79) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', f);
            col++;
        }
        fwrite(p, 1, w, f);
        col += (int)w;
        p += w;
        while (*p == ' ') {
            p++;
        }
    }
    fputc('\n', f);
}

void cmd_print_help(const CmdSpec *spec, FILE *f)
{
    print_usage_line(spec, f);
    if (spec->description) {
        fprintf(f, "\n%s", spec->description);
    }
    fputc('\n', f);
    for (size_t i = 0; spec->opts[i].type != CMDOPT_END_OF_TABLE; i++) {
        const CmdOpt *o = &spec->opts[i];
        if (o->flags & CMDOPT_HIDDEN || !o->help) {
            continue;
        }
        char names[96];
        const char *arg = takes_arg(o) ? o->argname : NULL;
        if (o->short_name && o->long_name) {
            snprintf(names, sizeof(names), "-%c, --%s%s%s", o->short_name,
                     o->long_name, arg ? "=" : "", arg ? arg : "");
        } else if (o->short_name) {
            snprintf(names, sizeof(names), "-%c%s%s", o->short_name,
                     arg ? " " : "", arg ? arg : "");
        } else {
            snprintf(names, sizeof(names), "--%s%s%s%s", o->long_name,
                     arg ? (o->flags & CMDOPT_ARG_OPTIONAL ? "[=" : "=") : "",
                     arg ? arg : "",
                     arg && (o->flags & CMDOPT_ARG_OPTIONAL) ? "]" : "");
        }
        if (strlen(names) > 22) {
            fprintf(f, "  %s\n%26s", names, "");
        } else {
            fprintf(f, "  %-23s ", names);
        }
        print_wrapped(f, o->help, 26);
    }
}

int cmd_parse(const CmdSpec *spec, ImageArgs *a, void *ctx, int argc,
              char **argv, int *exit_code)
{
    size_t n = 0;
    while (spec->opts[n].type != CMDOPT_END_OF_TABLE) {
        n++;
    }
    /* ':' first (missing arguments told apart), 'h' for --help. */
    char *optstring = malloc(2 + 3 * n + 2);
    struct option *longs = calloc(n + 2, sizeof(*longs));
    if (!optstring || !longs) {
        free(optstring);
        free(longs);
        imgtool_error("out of memory");
        *exit_code = 1;
        return -1;
    }
    char *p = optstring;
    *p++ = ':';
    *p++ = 'h';
    size_t nl = 0;
    longs[nl++] = (struct option){ "help", no_argument, NULL, 'h' };
    for (size_t i = 0; i < n; i++) {
        const CmdOpt *o = &spec->opts[i];
        int has = !takes_arg(o) ? no_argument
                  : (o->flags & CMDOPT_ARG_OPTIONAL) ? optional_argument
                                                     : required_argument;
        if (o->short_name) {
            *p++ = (char)o->short_name;
            if (has == required_argument) {
                *p++ = ':';
            } else if (has == optional_argument) {
                *p++ = ':';
                *p++ = ':';
            }
        }
        if (o->long_name) {
            longs[nl++] = (struct option){ o->long_name, has, NULL,
                                           opt_code(o, i) };
        }
    }
    *p = '\0';

    int ret = 0;
    int c;
    optind = 0;
    while (ret == 0 &&
           (c = getopt_long(argc, argv, optstring, longs, NULL)) != -1) {
        if (c == 'h') {
            cmd_print_help(spec, stdout);
            *exit_code = 0;
            ret = -1;
            break;
        }
        const CmdOpt *o = NULL;
        for (size_t i = 0; i < n && !o; i++) {
            if (opt_code(&spec->opts[i], i) == c) {
                o = &spec->opts[i];
            }
        }
        if (!o) {
            *exit_code = usage_bad_option(spec->name, argv, c);
            ret = -1;
            break;
        }
        int r = 0;
        switch (o->type) {
        case CMDOPT_FLAG:
            *(bool *)o->value = true;
            break;
        case CMDOPT_STRING:
            *(const char **)o->value = optarg;
            break;
        case CMDOPT_FN:
            r = o->fn(o, optarg, ctx);
            break;
        case CMDOPT_COMMON:
            r = image_args_parse(a, o->common_code, optarg) < 0 ? 1 : 0;
            break;
        case CMDOPT_END_OF_TABLE:
            break;
        }
        if (r) {
            *exit_code = r;
            ret = -1;
        }
    }
    free(optstring);
    free(longs);
    if (ret < 0) {
        return -1;
    }
    if (a && image_args_check(a) < 0) {
        *exit_code = 1;
        return -1;
    }
    return optind;
}

int cmdopt_rate(const CmdOpt *o, const char *arg, void *ctx)
{
    (void)ctx;
    if (parse_size(arg, o->value) < 0 || *(uint64_t *)o->value == 0) {
        imgtool_error("Invalid rate limit specified. You may use k, M, G, "
                      "T, P or E suffixes for");
        imgtool_error("kilobytes, megabytes, gigabytes, terabytes, "
                      "petabytes and exabytes.");
        return 1;
    }
    return 0;
}
