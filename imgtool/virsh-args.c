/*
 * virsh-args.c - parsing virsh-style options from a command's table
 * (see virsh-args.h), with virsh's words for the mistakes.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "imgtool/complete.h"
#include "imgtool/imgtool.h"
#include "imgtool/object.h"
#include "imgtool/virsh-args.h"

static int find_opt(const VirshCmd *c, const char *name, size_t len)
{
    for (int i = 0; c->opts[i].name; i++) {
        if (strlen(c->opts[i].name) == len &&
            strncmp(c->opts[i].name, name, len) == 0) {
            return i;
        }
    }
    return -1;
}

static void print_usage(const VirshCmd *c)
{
    printf("usage: %s %s", imgtool_prog, c->name);
    for (int i = 0; c->opts[i].name; i++) {
        const VirshOpt *o = &c->opts[i];
        if (o->type == VA_BOOL) {
            printf(" [--%s]", o->name);
        } else if (o->flags & VA_REQUIRED) {
            printf(" <%s>", o->name);
        } else {
            printf(" [--%s <string>]", o->name);
        }
    }
    if (c->extras & VA_PROGRESS) {
        printf(" [-p]");
    }
    if (c->extras & VA_OBJECT) {
        printf(" [--object objectdef]");
    }
    if (c->extras & VA_OUTPUT) {
        printf(" [--output=human|json]");
    }
    printf("\n\n%s\n\n", c->summary);
    for (int i = 0; c->opts[i].name; i++) {
        const VirshOpt *o = &c->opts[i];
        char left[64];
        if (o->type == VA_BOOL) {
            snprintf(left, sizeof(left), "--%s", o->name);
        } else if (o->flags & VA_NAMED) {
            snprintf(left, sizeof(left), "--%s <string>", o->name);
        } else {
            snprintf(left, sizeof(left), "[--%s] <string>", o->name);
        }
        printf("  %-26s %s\n", left, o->help);
    }
    if (c->extras & VA_PROGRESS) {
        printf("  %-26s %s\n", "-p, --progress", "show progress");
    }
    if (c->extras & VA_OBJECT) {
        printf("  %-26s %s\n", "--object DEF",
               "define a secret: secret,id=ID,file=PATH");
    }
    if (c->extras & VA_OUTPUT) {
        printf("  %-26s %s\n", "--output=FMT", "'human' (default) or 'json'");
    }
}

static int mistake(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "%s: ", imgtool_prog);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return 1;
}

/* Options imgtool adds to virsh's.  Returns 1 when arg was one (i may
 * advance), 0 when not, -1 after reporting a mistake. */
static int extra_option(const VirshCmd *c, VirshArgs *a, int argc,
                        char **argv, int *i)
{
    const char *arg = argv[*i];
    if ((c->extras & VA_PROGRESS) &&
        (!strcmp(arg, "-p") || !strcmp(arg, "--progress"))) {
        a->progress = true;
        return 1;
    }
    const char *val = NULL;
    bool output = false, object = false;
    if (c->extras & VA_OUTPUT) {
        if (!strncmp(arg, "--output=", 9)) {
            val = arg + 9;
            output = true;
        } else if (!strcmp(arg, "--output")) {
            output = true;
        }
    }
    if ((c->extras & VA_OBJECT) && !strcmp(arg, "--object")) {
        object = true;
    } else if ((c->extras & VA_OBJECT) && !strncmp(arg, "--object=", 9)) {
        val = arg + 9;
        object = true;
    }
    if (!output && !object) {
        return 0;
    }
    if (!val) {
        if (*i + 1 >= argc) {
            mistake("expected syntax: %s <%s>", arg, "string");
            return -1;
        }
        val = argv[++*i];
    }
    if (output) {
        if (imgtool_parse_output(val, &a->output) < 0) {
            imgtool_error("--output must be used with human or json as "
                          "argument.");
            return -1;
        }
        return 1;
    }
    /* imgtool_object_add may overwrite a data= value in place (argv). */
    return imgtool_object_add((char *)val) < 0 ? -1 : 1;
}

static int take_value(const VirshCmd *c, VirshArgs *a, int k,
                      const char *val)
{
    if (a->set[k]) {
        return mistake("option --%s already seen%s", c->opts[k].name, "");
    }
    a->set[k] = true;
    a->val[k] = val;
    return 0;
}

int virsh_args_parse(const VirshCmd *c, int argc, char **argv,
                     VirshArgs *a)
{
    memset(a, 0, sizeof(*a));
    a->cmd = c;
    if (complete_capture.active) {
        /* imgtool --complete wants the table, not a parse */
        complete_capture.virsh = c;
        return 0;
    }
    bool dashdash = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!dashdash && (!strcmp(arg, "-h") || !strcmp(arg, "--help"))) {
            print_usage(c);
            return 0;
        }
        if (!dashdash && !strcmp(arg, "--")) {
            dashdash = true;
            continue;
        }
        if (!dashdash && arg[0] == '-') {
            int r = extra_option(c, a, argc, argv, &i);
            if (r < 0) {
                return 1;
            }
            if (r) {
                continue;
            }
        }
        /* As virsh: "--" and a letter or digit starts an option; "-1G"
         * is data (vol-resize takes negative sizes). */
        if (!dashdash && arg[0] == '-' && arg[1] == '-' &&
            isalnum((unsigned char)arg[2])) {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            int k = find_opt(c, name, eq ? (size_t)(eq - name)
                                         : strlen(name));
            if (k < 0) {
                char shown[128];
                snprintf(shown, sizeof(shown), "--%.*s",
                         (int)(eq ? eq - name : (long)strlen(name)), name);
                return mistake("command '%s' doesn't support option %s",
                               c->name, shown);
            }
            const char *val = NULL;
            if (c->opts[k].type == VA_BOOL) {
                if (eq) {
                    return mistake("option --%s takes no value%s",
                                   c->opts[k].name, "");
                }
                val = "";
            } else if (eq) {
                val = eq + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                return mistake("expected syntax: --%s <%s>",
                               c->opts[k].name, "string");
            }
            if (take_value(c, a, k, val)) {
                return 1;
            }
            continue;
        }
        /* A bare argument fills the next string option not given. */
        int k = -1;
        for (int j = 0; c->opts[j].name && k < 0; j++) {
            if (c->opts[j].type == VA_STRING && !a->set[j] &&
                !(c->opts[j].flags & VA_NAMED)) {
                k = j;
            }
        }
        if (k < 0) {
            return mistake("unexpected data '%s'%s", arg, "");
        }
        a->set[k] = true;
        a->val[k] = arg;
    }
    for (int j = 0; c->opts[j].name; j++) {
        if ((c->opts[j].flags & VA_REQUIRED) && !a->set[j]) {
            return mistake("command '%s' requires <%s> option", c->name,
                           c->opts[j].name);
        }
    }
    return -1;
}

const char *virsh_arg(const VirshArgs *a, const char *name)
{
    int k = find_opt(a->cmd, name, strlen(name));
    return k >= 0 && a->set[k] ? a->val[k] : NULL;
}

bool virsh_flag(const VirshArgs *a, const char *name)
{
    int k = find_opt(a->cmd, name, strlen(name));
    return k >= 0 && a->set[k];
}
