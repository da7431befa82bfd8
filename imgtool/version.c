/*
 * version.c - `imgtool --version`: the version, then what this build
 * can do: its drivers (built in, or loadable modules), and the optional
 * libraries it was built with.  The driver lines come from the block
 * layer's registry, so a driver added or moved to a module shows up
 * without an edit here.
 */
#include <stdio.h>
#include <string.h>

#include "imgtool/imgtool.h"

#ifndef IMGTOOL_VERSION
#define IMGTOOL_VERSION "unknown"
#endif

const char *imgtool_version(void)
{
    return IMGTOOL_VERSION;
}

void imgtool_print_version(FILE *f)
{
    fprintf(f, "imgtool version %s\n", IMGTOOL_VERSION);
    for (int want_module = 0; want_module <= 1; want_module++) {
        fprintf(f, "%s", want_module ? "modules:" : "drivers:");
        bool module;
        const char *name;
        for (size_t i = 0; (name = block_known_driver(i, &module)); i++) {
            if (module == (bool)want_module) {
                fprintf(f, " %s", name);
            }
        }
        fputc('\n', f);
    }
    fprintf(f, "features: zlib zstd openssl jansson");
#ifdef HAVE_LIBDEFLATE
    fprintf(f, " libdeflate");
#endif
#ifdef HAVE_LIBURING
    fprintf(f, " liburing");
#endif
    const char *lib;
    for (size_t i = 0; block_known_module(i, &lib); i++) {
        fprintf(f, " %s(module)", lib);
    }
    fputc('\n', f);
}
