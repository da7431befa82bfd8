/*
 * parse-options.c - options from a command's table: getopt_long's
 * optstring and option array are generated from it, and so are the usage
 * line and --help (see parse-options.h).
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/complete.h"
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

/* head, then the options and arguments, wrapped under the end of head
 * as qemu-img wraps its usage lines. */
static void print_usage_line(const CmdSpec *spec, const char *head, FILE *f)
{
    int indent = (int)strlen(head);
    int col = indent;
    fputs(head, f);
    /* one item a time: each option, then each argument (a bracketed
     * group such as "[filename2 [...]]" stays whole) */
    const char *args = spec->args ? spec->args : "";
    size_t i = 0;
    for (;;) {
        char item[128];
        const CmdOpt *o = &spec->opts[i];
        if (o->type != CMDOPT_END_OF_TABLE) {
            i++;
            if (o->flags & CMDOPT_HIDDEN) {
                continue;
            }
            opt_synopsis(o, item + 1, sizeof(item) - 5);
            item[0] = '[';
            strcat(item, o->type == CMDOPT_LIST ? "]..." : "]");
        } else {
            args += strspn(args, " ");
            if (!*args) {
                break;
            }
            size_t len = 0;
            for (int depth = 0; args[len] && (depth || args[len] != ' ');
                 len++) {
                depth += args[len] == '[' ? 1 : args[len] == ']' ? -1 : 0;
            }
            snprintf(item, sizeof(item), "%.*s", (int)len, args);
            args += len;
        }
        int w = (int)strlen(item) + 1;
        if (col + w > 78 && col > indent) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        }
        fprintf(f, " %s", item);
        col += w;
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

/* One line per option: its names from column indent, its help from
 * column indent + 24. */
static void print_options(const CmdSpec *spec, int indent, FILE *f)
{
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
            fprintf(f, "%*s%s\n%*s", indent, "", names, indent + 24, "");
        } else {
            fprintf(f, "%*s%-23s ", indent, "", names);
        }
        print_wrapped(f, o->help, indent + 24);
    }
}

/* The usage line, the description and the option lines (all: --help)
 * or the usage lines alone (after a mistake). */
static void print_help(const CmdSpec *spec, bool all, FILE *f)
{
    char head[64];
    snprintf(head, sizeof(head), "usage: %s %s", imgtool_prog, spec->name);
    print_usage_line(spec, head, f);
    if (all && spec->description) {
        fprintf(f, "\n%s", spec->description);
    }
    if (all) {
        fputc('\n', f);
        print_options(spec, 2, f);
    }
    if (spec->commands) {
        fprintf(f, "\ncommands:\n");
        for (size_t i = 0; spec->commands[i]; i++) {
            snprintf(head, sizeof(head), "  %s", spec->commands[i]->name);
            print_usage_line(spec->commands[i], head, f);
            if (all) {
                print_options(spec->commands[i], 4, f);
            }
        }
    }
}

void cmd_print_help(const CmdSpec *spec, FILE *f)
{
    print_help(spec, true, f);
}

int cmd_list_append(CmdList *l, const char *arg)
{
    const char **v = realloc(l->items, (l->n + 1) * sizeof(*v));
    if (!v) {
        return -ENOMEM;
    }
    v[l->n++] = arg;
    l->items = v;
    return 0;
}

void cmd_list_free(CmdList *l)
{
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* CMDOPT_UINT: as qemu-img reads such numbers (strtoll, any base). */
static bool parse_uint(const char *s, uint64_t min, uint64_t max,
                       uint64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end || v < 0 || (uint64_t)v < min ||
        (max && (uint64_t)v > max)) {
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

/* One option's value (argv's own string); 0 or the exit code after
 * reporting. */
static int take_option(const CmdOpt *o, char *arg, ImageArgs *a, void *ctx)
{
    uint64_t v = 0;
    switch (o->type) {
    case CMDOPT_FLAG:
        *(bool *)o->value = true;
        return 0;
    case CMDOPT_STRING:
        *(const char **)o->value = arg;
        return 0;
    case CMDOPT_LIST:
        if (cmd_list_append(o->value, arg) < 0) {
            imgtool_error("out of memory");
            return 1;
        }
        return 0;
    case CMDOPT_SIZE:
        if (parse_size(arg, &v) < 0 || v < o->min || (o->max && v > o->max)) {
            return usage_bad_size(o->what);
        }
        *(uint64_t *)o->value = v;
        return 0;
    case CMDOPT_UINT:
        if (!parse_uint(arg, o->min, o->max, &v)) {
            imgtool_error("Invalid %s specified", o->what);
            return 1;
        }
        *(uint64_t *)o->value = v;
        return 0;
    case CMDOPT_FN:
        return o->fn(o, arg, ctx);
    case CMDOPT_COMMON:
        return image_args_parse(a, o->common_code, arg) < 0 ? 1 : 0;
    case CMDOPT_END_OF_TABLE:
        break;
    }
    return 0;
}

/* An option getopt refused, as the user wrote it: "-x" for a short
 * option or a long one with a letter, else the word ("--bogus"). */
static int bad_option(const CmdSpec *spec, char **argv, int c, void *ctx)
{
    char buf[3] = { '-', (char)optopt, 0 };
    const char *opt = optopt > 0 && optopt < 256 ? buf : argv[optind - 1];
    if (spec->bad_option) {
        return spec->bad_option(spec, opt, c == ':', ctx);
    }
    return usage_bad_option(spec->name, opt, c == ':');
}

int cmd_parse(const CmdSpec *spec, ImageArgs *a, void *ctx, int argc,
              char **argv, int *exit_code)
{
    if (complete_capture.active) {
        /* imgtool --complete wants the table, not a parse */
        complete_capture.spec = spec;
        *exit_code = 0;
        return -1;
    }
    size_t n = 0;
    while (spec->opts[n].type != CMDOPT_END_OF_TABLE) {
        n++;
    }
    bool help = !(spec->flags & CMDSPEC_NO_HELP);
    bool quiet_getopt = !(spec->flags & CMDSPEC_GETOPT_MESSAGES);
    /* '+' to stop at the first argument, ':' (getopt says nothing, and
     * missing arguments are told apart), 'h' for --help. */
    char *optstring = malloc(4 + 3 * n + 1);
    struct option *longs = calloc(n + 2, sizeof(*longs));
    if (!optstring || !longs) {
        free(optstring);
        free(longs);
        imgtool_error("out of memory");
        *exit_code = 1;
        return -1;
    }
    char *p = optstring;
    if (spec->flags & CMDSPEC_IN_ORDER) {
        *p++ = '+';
    }
    if (quiet_getopt) {
        *p++ = ':';
    }
    size_t nl = 0;
    if (help) {
        *p++ = 'h';
        longs[nl++] = (struct option){ "help", no_argument, NULL, 'h' };
    }
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
        if (c == 'h' && help) {
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
        int r;
        if (!o && !quiet_getopt) {
            /* getopt has said what was wrong; the usage follows */
            print_help(spec, false, stderr);
            r = 1;
        } else if (!o) {
            r = bad_option(spec, argv, c, ctx);
        } else {
            r = take_option(o, optarg, a, ctx);
        }
        if (r) {
            *exit_code = r;
            ret = -1;
        }
    }
    free(optstring);
    free(longs);
    return ret < 0 ? -1 : optind;
}

bool cmd_option_list_valid(const char *arg)
{
    size_t len = strlen(arg), i = len;
    while (i > 0 && arg[i - 1] == ',') {
        i--;
    }
    if (!*arg || *arg == ',' || (len - i) % 2) {
        imgtool_error("Invalid option list: %s", arg);
        return false;
    }
    return true;
}

int cmd_opts_append(char **all, const char *more)
{
    size_t have = *all ? strlen(*all) : 0;
    char *n = realloc(*all, have + strlen(more) + 2);
    if (!n) {
        return -ENOMEM;
    }
    if (have) {
        n[have++] = ',';
    }
    strcpy(n + have, more);
    *all = n;
    return 0;
}

int cmd_cache_flags(const char *mode, bool source, int *flags)
{
    if (mode && imgtool_parse_cache(mode, flags) < 0) {
        imgtool_error("Invalid %scache option: %s", source ? "source " : "",
                      mode);
        return -1;
    }
    return 0;
}
