/*
 * util.c - helpers of the pool library (see util.h).
 *
 * pool_write_atomic() is what makes every definition, state and cache
 * file crash-safe: readers only ever see a complete old or new file.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pools/backend.h"
#include "pools/util.h"

char *pool_strfmt(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    return r < 0 ? NULL : s;
}

void pool_sync_parent(const char *path)
{
    char *copy = strdup(path);
    if (!copy) {
        return;
    }
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(copy);
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t r = write(fd, p, len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return r < 0 ? -errno : -EIO;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

int pool_write_atomic(const char *path, const void *data, size_t len,
                      Error *err)
{
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd)) {
        rnd = (uint32_t)getpid();
    }
    char *tmp = pool_strfmt("%s.tmp.%ld.%08x", path, (long)getpid(), rnd);
    if (!tmp) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int ret;
    if (fd < 0) {
        ret = -errno;
        error_setf(err, -ret, "cannot write '%s': %s", path, strerror(-ret));
        free(tmp);
        return ret;
    }
    ret = write_all(fd, data, len);
    if (ret == 0 && fsync(fd) < 0) {
        ret = -errno;
    }
    if (close(fd) < 0 && ret == 0) {
        ret = -errno;
    }
    if (ret == 0 && rename(tmp, path) < 0) {
        ret = -errno;
    }
    if (ret < 0) {
        unlink(tmp);
        error_setf(err, -ret, "cannot write '%s': %s", path, strerror(-ret));
    } else {
        pool_sync_parent(path);
    }
    free(tmp);
    return ret;
}

int pool_read_file(const char *path, size_t max, char **out, size_t *len,
                   Error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return error_setf(err, e, "cannot read '%s': %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int e = S_ISDIR(st.st_mode) ? EISDIR : errno ? errno : EINVAL;
        close(fd);
        return error_setf(err, e, "cannot read '%s': %s", path,
                          e == EINVAL ? "not a regular file" : strerror(e));
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return error_setf(err, EFBIG, "'%s' is larger than %zu bytes",
                          path, max);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return error_setf(err, ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return error_setf(err, e, "cannot read '%s': %s", path,
                              strerror(e));
        }
        if (r == 0) {
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    if (len) {
        *len = got;
    }
    return 0;
}

int pool_mkdir_p(const char *path, int mode, Error *err)
{
    char *p = strdup(path);
    if (!p) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (char *s = p + 1; ; s++) {
        bool end = *s == '\0';
        if (*s == '/' || end) {
            *s = '\0';
            if (mkdir(p, (mode_t)mode) < 0 && errno != EEXIST) {
                int e = errno;
                error_setf(err, e, "cannot create directory '%s': %s", p,
                           strerror(e));
                free(p);
                return -e;
            }
            if (end) {
                break;
            }
            *s = '/';
        }
    }
    free(p);
    return 0;
}

int pool_check_name(const char *what, const char *name, Error *err)
{
    if (!name || !*name) {
        return error_setf(err, EINVAL, "%s name must not be empty", what);
    }
    size_t n = strlen(name);
    if (n > POOL_NAME_MAX) {
        return error_setf(err, EINVAL, "%s name is longer than %d bytes",
                          what, POOL_NAME_MAX);
    }
    if (!strcmp(name, ".") || !strcmp(name, "..")) {
        return error_setf(err, EINVAL, "%s name '%s' is not allowed", what,
                          name);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '/') {
            return error_setf(err, EINVAL, "%s name '%s' must not contain "
                              "'/'", what, name);
        }
        if (c < 0x20 || c == 0x7f) {
            return error_setf(err, EINVAL, "%s name must not contain "
                              "control characters", what);
        }
    }
    return 0;
}

void pool_uuid_generate(char out[37])
{
    uint8_t b[16];
    if (getrandom(b, sizeof(b), 0) != sizeof(b)) {
        /* getrandom on Linux >= 3.17 does not fail for 16 bytes; this is
         * only for a kernel without it. */
        for (size_t i = 0; i < sizeof(b); i++) {
            b[i] = (uint8_t)(rand() >> 7);
        }
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);   /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
             b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

bool pool_uuid_parse(const char *in, char out[37])
{
    char hex[33];
    size_t n = 0;
    for (const char *p = in; *p; p++) {
        if (*p == '-' && (n == 8 || n == 12 || n == 16 || n == 20) &&
            strlen(in) == 36) {
            continue;
        }
        if (!isxdigit((unsigned char)*p) || n >= 32) {
            return false;
        }
        hex[n++] = (char)tolower((unsigned char)*p);
    }
    if (n != 32) {
        return false;
    }
    hex[32] = '\0';
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
             hex + 16, hex + 20);
    return true;
}

void pool_boot_id(char out[64])
{
    out[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (!f) {
        return;
    }
    if (fgets(out, 64, f)) {
        out[strcspn(out, "\n")] = '\0';
    } else {
        out[0] = '\0';
    }
    fclose(f);
}

void pool_xml_escape(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '\'': fputs("&apos;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

void pool_last_line(const char *text, char *out, size_t len)
{
    /* The first line that is not a warning says what went wrong (lvm
     * ends with hints such as "Run `lvcreate --help'"); else the last. */
    const char *best = NULL, *best_end = NULL;
    const char *p = text ? text : "";
    while (*p) {
        const char *e = strchr(p, '\n');
        if (!e) {
            e = p + strlen(p);
        }
        const char *s = p;
        while (s < e && (*s == ' ' || *s == '\t')) {
            s++;
        }
        if (s < e) {
            bool warning = strncmp(s, "WARNING", 7) == 0;
            if (!best || (!warning && strncmp(best, "WARNING", 7) == 0)) {
                best = s;
                best_end = e;
            }
        }
        p = *e ? e + 1 : e;
    }
    if (!best) {
        snprintf(out, len, "%s", "");
        return;
    }
    snprintf(out, len, "%.*s", (int)(best_end - best), best);
}

int pool_parse_scaled(const char *s, uint64_t *out)
{
    static const struct { const char *suffix; uint64_t scale; } units[] = {
        { "", 1 }, { "b", 1 }, { "byte", 1 }, { "bytes", 1 },
        { "k", 1ULL << 10 }, { "kib", 1ULL << 10 }, { "kb", 1000ULL },
        { "m", 1ULL << 20 }, { "mib", 1ULL << 20 }, { "mb", 1000000ULL },
        { "g", 1ULL << 30 }, { "gib", 1ULL << 30 },
        { "gb", 1000000000ULL },
        { "t", 1ULL << 40 }, { "tib", 1ULL << 40 },
        { "tb", 1000000000000ULL },
        { "p", 1ULL << 50 }, { "pib", 1ULL << 50 },
        { "pb", 1000000000000000ULL },
        { "e", 1ULL << 60 }, { "eib", 1ULL << 60 },
        { "eb", 1000000000000000000ULL },
    };
    if (!s || !isdigit((unsigned char)*s)) {
        return -EINVAL;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(end, units[i].suffix) == 0) {
            if (v > UINT64_MAX / units[i].scale) {
                return -ERANGE;
            }
            *out = v * units[i].scale;
            return 0;
        }
    }
    return -EINVAL;
}
