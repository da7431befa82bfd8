/* size.c - parsing and printing sizes the way qemu-img users write them. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/block.h"

static int suffix_shift(char c)
{
    switch (toupper((unsigned char)c)) {
    case 'B': return 0;
    case 'K': return 10;
    case 'M': return 20;
    case 'G': return 30;
    case 'T': return 40;
    case 'P': return 50;
    case 'E': return 60;
    default: return -1;
    }
}

int parse_size(const char *s, uint64_t *out)
{
    if (!s) {
        return -EINVAL;
    }
    /* as qemu-img: leading blanks are skipped, and 0x starts a whole
     * hexadecimal number (a suffix may follow, a fraction may not) */
    while (isspace((unsigned char)*s)) {
        s++;
    }
    if (!*s || *s == '-' || *s == '+') {
        return -EINVAL;
    }
    bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *digits = hex ? s + 2 : s;
    if (!isxdigit((unsigned char)*digits)) {
        return -EINVAL;
    }
    char *end;
    errno = 0;
    unsigned long long whole = strtoull(digits, &end, hex ? 16 : 10);
    if (end == digits || errno) {
        return errno == ERANGE ? -ERANGE : -EINVAL;
    }
    if (hex && *end == '.') {
        return -EINVAL;
    }
    double frac = 0;
    if (*end == '.') {
        char *fend;
        frac = strtod(end, &fend);
        if (fend == end + 1) {
            return -EINVAL;
        }
        end = fend;
    }
    int shift = 0;
    if (*end) {
        shift = suffix_shift(*end);
        if (shift < 0 || end[1] != '\0') {
            return -EINVAL;
        }
    }
    if (frac != 0 && shift == 0) {
        return -EINVAL;   /* fractional bytes make no sense */
    }
    if (shift && whole > (UINT64_MAX >> shift)) {
        return -ERANGE;
    }
    uint64_t v = (uint64_t)whole << shift;
    if (frac != 0) {
        double extra = frac * (double)((uint64_t)1 << shift);
        if ((double)v + extra >= 18446744073709551615.0) {
            return -ERANGE;
        }
        v += (uint64_t)extra;
    }
    *out = v;
    return 0;
}

void format_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = {
        "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB",
    };
    /* qemu-img's choice: the largest unit in which the value stays below
     * 1000, printed with three significant digits. */
    int e;
    frexp((double)bytes / (1000.0 / 1024.0), &e);
    int i = (e - 1) / 10;
    if (i < 0) {
        i = 0;
    }
    if (i > 6) {
        i = 6;
    }
    snprintf(buf, len, "%0.3g %s", (double)bytes / (double)(1ULL << (i * 10)),
             units[i]);
}

int prealloc_parse(const char *s, PreallocMode *out)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (PreallocMode)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *prealloc_name(PreallocMode m)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    return (unsigned)m < 4 ? names[m] : "?";
}
