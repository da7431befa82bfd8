/*
 * opthelp.c - `-o help` shared by the option-taking commands: spotting
 * the request, and the creation option list qemu-img prints for a format
 * (with the options of the file it would be created in, such as nocow and
 * extent_size_hint, once the file is named).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/opthelp.h"

/*
 * qemu-img reads an -o list item by item: a name runs to the first '='
 * or ',' (no escaping in names); after '=' the value runs to the next
 * single ',' (",," is a comma in it).  An item without '=' is a flag,
 * and the flag "help" or "?" asks for the list; so "help,,", "x,,help"
 * and "a=1,,,help" ask, while "a=1,,help" (a value) does not.
 */
bool opthelp_wanted(const char *s)
{
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, "=,");
        if (p[len] == '=') {
            p += len + 1;
            while (*p && !(*p == ',' && p[1] != ',')) {
                p += (*p == ',') ? 2 : 1;
            }
        } else {
            if ((len == 4 && strncmp(p, "help", 4) == 0) ||
                (len == 1 && *p == '?')) {
                return true;
            }
            p += len;
        }
        if (*p == ',') {
            p++;
        }
    }
    return false;
}

static const char *type_label(OptType t)
{
    switch (t) {
    case OPT_SIZE: return "<size>";
    case OPT_NUMBER: return "<num>";
    case OPT_BOOL: return "<bool (on/off)>";
    default: return "<str>";
    }
}

static int opt_cmp(const void *a, const void *b)
{
    const BlockCreateOpt *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

void opthelp_print(const char *title, const BlockCreateOpt **v, size_t n)
{
    qsort(v, n, sizeof(*v), opt_cmp);
    printf("%s\n", title);
    for (size_t i = 0; i < n; i++) {
        char left[128];
        snprintf(left, sizeof(left), "%s=%s", v[i]->name,
                 type_label(v[i]->type));
        printf("  %-22s - %s\n", left, v[i]->help ? v[i]->help : "");
    }
}

const BlockCreateOpt *opthelp_find_opt(const BlockCreateOpt *list,
                                       const char *name)
{
    for (int i = 0; list && list[i].name; i++) {
        if (strcmp(list[i].name, name) == 0) {
            return &list[i];
        }
    }
    return NULL;
}

/* An option a format only hands down to its file (the entry is the same
 * as the protocol's): qemu-img lists it only once the file is named. */
static bool only_passed_down(const BlockCreateOpt *o,
                             const BlockDriver *proto)
{
    const BlockCreateOpt *p = proto ? opthelp_find_opt(block_driver_create_opts(proto), o->name)
                                    : NULL;
    return p && strcmp(o->name, "size") != 0 && o->help && p->help &&
           strcmp(o->help, p->help) == 0;
}

void opthelp_print_create(const BlockDriver *drv, const char *filename)
{
    const BlockDriver *proto = block_protocol_for(filename);
    const BlockCreateOpt *lists[2] = {
        block_driver_create_opts(drv), filename && proto ? block_driver_create_opts(proto) : NULL,
    };
    size_t n = 0, cap = 1;
    for (int l = 0; l < 2; l++) {
        for (int i = 0; lists[l] && lists[l][i].name; i++) {
            cap++;
        }
    }
    const BlockCreateOpt **all = calloc(cap, sizeof(*all));
    if (!all) {
        return;
    }
    /* the format's entry wins over the protocol's of the same name */
    for (int l = 0; l < 2; l++) {
        for (int i = 0; lists[l] && lists[l][i].name; i++) {
            const BlockCreateOpt *o = &lists[l][i];
            bool dup = false;
            for (size_t j = 0; j < n && !dup; j++) {
                dup = strcmp(all[j]->name, o->name) == 0;
            }
            if (!dup && (filename || !only_passed_down(o, proto))) {
                all[n++] = o;
            }
        }
    }
    char title[128];
    if (filename) {
        snprintf(title, sizeof(title), "Supported options:");
    } else {
        snprintf(title, sizeof(title), "Supported %s options:", block_driver_name(drv));
    }
    opthelp_print(title, all, n);
    if (!filename) {
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    }
    free(all);
}
