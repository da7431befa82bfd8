/*
 * report.c - the library's one way of telling the user something that is
 * not a failure of the call at hand (a warning, a repair notice): a sink
 * the program installs.  The library itself never writes to stderr.
 */
#include <stdarg.h>
#include <stdio.h>

#include "block/driver.h"

static BlockReportFn *report_fn;
static void *report_opaque;

void block_set_report_fn(BlockReportFn *fn, void *opaque)
{
    report_fn = fn;
    report_opaque = opaque;
}

void block_report(BlockReportLevel level, const char *fmt, ...)
{
    if (!report_fn) {
        return;
    }
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    report_fn(report_opaque, level, msg);
}
