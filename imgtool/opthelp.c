/*
 * opthelp.c - `-o help` shared by the option-taking commands.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/opthelp.h"

bool opthelp_wanted(const char *s)
{
    const char *p = s;
    while (*p) {
        const char *end = p;
        while (*end && !(*end == ',' && end[1] != ',')) {
            end += (*end == ',') ? 2 : 1;
        }
        size_t len = (size_t)(end - p);
        if ((len == 4 && strncmp(p, "help", 4) == 0) ||
            (len == 1 && *p == '?')) {
            return true;
        }
        p = *end ? end + 1 : end;
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
