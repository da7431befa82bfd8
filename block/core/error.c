/* error.c - the one-line Error object every fallible call fills. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "block/block.h"

int error_setf(Error *err, int code, const char *fmt, ...)
{
    if (code < 0) {
        code = -code;
    }
    if (code == 0) {
        code = EIO;
    }
    if (err && err->code == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return -code;
}

void error_prefixf(Error *err, const char *fmt, ...)
{
    if (!err || err->code == 0) {
        return;
    }
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    char old[sizeof(err->msg)];
    memcpy(old, err->msg, sizeof(old));
    size_t plen = strlen(prefix);
    if (plen + 2 >= sizeof(err->msg)) {
        return;
    }
    memcpy(err->msg, prefix, plen);
    memcpy(err->msg + plen, ": ", 2);
    size_t room = sizeof(err->msg) - plen - 3;
    size_t olen = strnlen(old, room);
    memcpy(err->msg + plen + 2, old, olen);
    err->msg[plen + 2 + olen] = '\0';
}

bool error_is_set(const Error *err)
{
    return err && err->code != 0;
}

void error_clear(Error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
