/* report.c - the one-line error and warning format of every command. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/imgtool.h"

const char *imgtool_cmd_name;
const char *imgtool_prog = "imgtool";

/* A message is one line whatever it quotes: control characters in a
 * name the user gave ("a\nb") are shown escaped. */
static void vreport(const char *kind, const char *fmt, va_list ap)
{
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s: %s", imgtool_prog, kind);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0) {
        msg = NULL;
    }
    const char *text = msg ? msg : "out of memory";
    /* Built whole and written at once: stderr is unbuffered, and a
     * child (QEMU under imgtool run) may write to it at the same time;
     * a byte at a time the two lines would interleave. */
    size_t cap = strlen(prefix) + 4 * strlen(text) + 2;
    char *line = malloc(cap), *p = line;
    if (!line) {
        fprintf(stderr, "%s%s\n", prefix, text);
        free(msg);
        return;
    }
    p = stpcpy(p, prefix);
    for (const char *c = text; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if (u == '\n') {
            p = stpcpy(p, "\\n");
        } else if (u == '\t') {
            p = stpcpy(p, "\\t");
        } else if (u < 0x20 || u == 0x7f) {
            p += sprintf(p, "\\x%02x", u);
        } else {
            *p++ = *c;
        }
    }
    *p++ = '\n';
    fwrite(line, 1, (size_t)(p - line), stderr);
    free(line);
    free(msg);
}

void imgtool_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
}

void imgtool_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("warning: ", fmt, ap);
    va_end(ap);
}

void imgtool_report(const Error *err)
{
    if (err && err->code) {
        imgtool_error("%s", err->msg);
    } else {
        imgtool_error("unknown error");
    }
}

/* The block library's warnings, in the CLI's words. */
static void print_library_report(void *opaque, BlockReportLevel level,
                                 const char *msg)
{
    (void)opaque;
    if (level == BLOCK_REPORT_WARNING) {
        imgtool_warn("%s", msg);
    } else {
        imgtool_error("%s", msg);
    }
}

void imgtool_install_report(void)
{
    block_set_report_fn(print_library_report, NULL);
}
