/*
 * io.c - `imgtool io`: qemu-io-style commands run through imgtool's own
 * block layer, so users and tests can read, write, zero, discard and
 * flush an image exactly as a guest would.
 *
 *   imgtool io [-f fmt] [-r] [-U] [-t cache] [-n] [--image-opts]
 *              [-c 'command']... filename
 *
 * Without -c, commands are read from standard input, one per line.  Unlike
 * qemu-io, the exit status is non-zero when any command failed (a failed
 * pattern check included), so scripts can rely on it.
 *
 * Output is qemu-io's, line for line: after each read, write or discard
 * "read N/N bytes at offset O" and the statistics line
 * "64 KiB, 1 ops; 00.00 sec (12.5 MiB/sec and 200.1 ops/sec)" (unless
 * the command has -q), read -v's hexdump before them.  Errors are ours:
 * one "imgtool: io: ..." line on stderr.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/parse-options.h"

#define IO_CHUNK (4u << 20)
#define MAX_ARGS 32

static int parse_num(const char *s, uint64_t *out)
{
    if (strncmp(s, "0x", 2) == 0 || strncmp(s, "0X", 2) == 0) {
        char *end;
        errno = 0;
        *out = strtoull(s, &end, 16);
        return (*end || errno) ? -EINVAL : 0;
    }
    return parse_size(s, out);
}

/* Splits a command line into words (no quoting needed by the grammar). */
static int split_words(char *line, char **argv)
{
    int argc = 0;
    for (char *tok = strtok(line, " \t\n"); tok && argc < MAX_ARGS - 1;
         tok = strtok(NULL, " \t\n")) {
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    return argc;
}

typedef struct IoOpts {
    const char *cmd;        /* "read", ... for messages */
    bool verbose;
    bool have_pattern;
    int pattern;
    bool zero;
    bool unmap;
    bool fua;
    bool quiet;
    bool compress;
    const char *prealloc;
    const char *src_file;
    uint64_t off;
    uint64_t len;
} IoOpts;

/* The options of the command being parsed (commands run one at a
 * time), filled by the tables below. */
static IoOpts cur;

static int opt_pattern(const CmdOpt *opt, const char *arg, void *ctx)
{
    uint64_t p;
    if (parse_num(arg, &p) < 0 || p > 255) {
        imgtool_error("io: %s: bad pattern '%s'", cur.cmd, arg);
        return 1;
    }
    cur.have_pattern = true;
    cur.pattern = (int)p;
    return 0;
}

/* Errors of the command language are ours: "io: read: ...". */
static int bad_option(const CmdSpec *spec, const char *opt, bool missing,
                      void *ctx)
{
    if (missing) {
        imgtool_error("io: %s: %s needs a value", spec->name, opt);
    } else {
        imgtool_error("io: %s: unknown option '%s'", spec->name, opt);
    }
    return 1;
}

#define IO_QUIET \
    { CMDOPT_FLAG, 'q', NULL, NULL, "print nothing", .value = &cur.quiet }
#define IO_COMMAND(cmd, arguments, table) \
    { .name = cmd, .args = arguments, .opts = table, \
      .flags = CMDSPEC_IN_ORDER | CMDSPEC_NO_HELP, .bad_option = bad_option }

static const CmdOpt read_opts[] = {
    { CMDOPT_FN, 'P', NULL, "pattern",
      "check that every byte read is pattern", .fn = opt_pattern },
    IO_QUIET,
    { CMDOPT_FLAG, 'v', NULL, NULL, "dump the data read",
      .value = &cur.verbose },
    CMDOPT_END,
};

static const CmdOpt write_opts[] = {
    { CMDOPT_FN, 'P', NULL, "pattern", "write this byte (default 0xcd)",
      .fn = opt_pattern },
    { CMDOPT_FLAG, 'z', NULL, NULL, "write zeroes (not with -P or -s)",
      .value = &cur.zero },
    { CMDOPT_FLAG, 'u', NULL, NULL, "with -z: the zeroes may be unmapped",
      .value = &cur.unmap },
    { CMDOPT_STRING, 's', NULL, "file",
      "write the first length bytes of file (not with -P or -z)",
      .value = &cur.src_file },
    { CMDOPT_FLAG, 'c', NULL, NULL, "write compressed",
      .value = &cur.compress },
    { CMDOPT_FLAG, 'f', NULL, NULL, "forced unit access (FUA)",
      .value = &cur.fua },
    IO_QUIET,
    CMDOPT_END,
};

static const CmdOpt discard_opts[] = {
    IO_QUIET,
    CMDOPT_END,
};

static const CmdOpt truncate_opts[] = {
    { CMDOPT_STRING, 'm', NULL, "prealloc",
      "how to allocate the added space (off, metadata, falloc, full)",
      .value = &cur.prealloc },
    CMDOPT_END,
};

static const CmdOpt no_opts[] = {
    CMDOPT_END,
};

static const CmdSpec read_spec = IO_COMMAND("read", "offset length",
                                            read_opts);
static const CmdSpec write_spec = IO_COMMAND("write", "offset length",
                                             write_opts);
static const CmdSpec discard_spec = IO_COMMAND("discard", "offset length",
                                               discard_opts);
static const CmdSpec truncate_spec = IO_COMMAND("truncate", "size",
                                                truncate_opts);
/* Listed only: these take no options and ignore their arguments. */
static const CmdSpec flush_spec = IO_COMMAND("flush", NULL, no_opts);
static const CmdSpec map_spec = IO_COMMAND("map", NULL, no_opts);
static const CmdSpec length_spec = IO_COMMAND("length", NULL, no_opts);

/* Parses "[options] off [len]" (nnums numbers) of argv[0]'s command. */
static int parse_io_args(const CmdSpec *spec, int argc, char **argv,
                         int nnums, IoOpts *o)
{
    int rc;
    memset(&cur, 0, sizeof(cur));
    cur.cmd = spec->name;
    if (cmd_parse(spec, NULL, NULL, argc, argv, &rc) < 0) {
        return -EINVAL;
    }
    int i = optind;
    if (argc - i != nnums) {
        imgtool_error("io: %s: expected %d number(s)", argv[0], nnums);
        return -EINVAL;
    }
    uint64_t *dst[2] = { &cur.off, &cur.len };
    for (int k = 0; k < nnums; k++, i++) {
        if (parse_num(argv[i], dst[k]) < 0) {
            imgtool_error("io: %s: invalid number '%s'", argv[0], argv[i]);
            return -EINVAL;
        }
    }
    if (cur.zero + cur.have_pattern + !!cur.src_file > 1) {
        imgtool_error("io: write: -z, -P and -s are mutually exclusive");
        return -EINVAL;
    }
    if (cur.compress && cur.zero) {
        /* qemu-io 7.2 takes "write -z -c" and writes zeroes: -c is
         * dropped (zero clusters need no compressing). */
        cur.compress = false;
    }
    if (cur.unmap && !cur.zero) {
        imgtool_error("io: write: -u requires -z");
        return -EINVAL;
    }
    *o = cur;
    return 0;
}

/* ---- qemu-io's report lines ---- */

/* A byte count as qemu-io's cvtstr writes it: "1000 bytes", "64 KiB",
 * "1.465 KiB", "3 MiB" (three decimals, ".000" dropped). */
static void io_cvtstr(double v, char *buf, size_t len)
{
    static const char *const units[] = { " EiB", " PiB", " TiB", " GiB",
                                         " MiB", " KiB" };
    const char *suffix = " bytes";
    double scale = 1.0;
    for (int i = 0; i < 6; i++) {
        double u = (double)(1ull << (10 * (6 - i)));
        if (v >= u) {
            suffix = units[i];
            scale = u;
            break;
        }
    }
    char num[48];
    snprintf(num, sizeof(num), scale > 1.0 ? "%.3f" : "%f", v / scale);
    char *trim = strstr(num, ".000");
    if (trim) {
        *trim = '\0';
    }
    snprintf(buf, len, "%s%s", num, suffix);
}

/* qemu-io's timestr: "00.07 sec" under a second, else "H:MM:SS.ss". */
static void io_timestr(const struct timespec *t, char *buf, size_t len)
{
    double frac = t->tv_nsec / 1e9;
    if (t->tv_sec) {
        snprintf(buf, len, "%u:%02u:%05.2f", (unsigned)(t->tv_sec / 3600),
                 (unsigned)(t->tv_sec / 60 % 60),
                 (double)(t->tv_sec % 60) + frac);
    } else {
        snprintf(buf, len, "%05.2f sec", frac);
    }
}

typedef struct IoTimer {
    struct timespec t0;
} IoTimer;

static void io_timer_start(IoTimer *t)
{
    clock_gettime(CLOCK_MONOTONIC, &t->t0);
}

/* "read N/N bytes at offset O" and the statistics line, as qemu-io's
 * print_report (one op). */
static void io_report(const char *op, const IoTimer *tm, uint64_t off,
                      uint64_t count)
{
    struct timespec now, d;
    clock_gettime(CLOCK_MONOTONIC, &now);
    d.tv_sec = now.tv_sec - tm->t0.tv_sec;
    d.tv_nsec = now.tv_nsec - tm->t0.tv_nsec;
    if (d.tv_nsec < 0) {
        d.tv_sec--;
        d.tv_nsec += 1000000000L;
    }
    double secs = (double)d.tv_sec + d.tv_nsec / 1e9;
    char s1[64], s2[64], ts[64];
    io_cvtstr((double)count, s1, sizeof(s1));
    io_cvtstr((double)count / secs, s2, sizeof(s2));
    io_timestr(&d, ts, sizeof(ts));
    printf("%s %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", op,
           count, count, off);
    printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", s1, 1, ts, s2,
           1.0 / secs);
}

/* read -v: qemu-io's hexdump, 16 bytes a line with their offset. */
static void io_dump(const uint8_t *p, uint64_t off, size_t len)
{
    for (size_t i = 0; i < len; i += 16) {
        size_t n = len - i < 16 ? len - i : 16;
        printf("%08" PRIx64 ":  ", off + i);
        for (size_t j = 0; j < n; j++) {
            printf("%02x ", p[i + j]);
        }
        printf(" ");
        for (size_t j = 0; j < n; j++) {
            putchar(isalnum(p[i + j]) ? p[i + j] : '.');
        }
        printf("\n");
    }
}

static int io_read(BlockNode *n, int argc, char **argv)
{
    IoOpts o;
    if (parse_io_args(&read_spec, argc, argv, 2, &o) < 0) {
        return -EINVAL;
    }
    IoTimer tm;
    io_timer_start(&tm);
    size_t chunk = o.len < IO_CHUNK ? (size_t)o.len : IO_CHUNK;
    uint8_t *buf = malloc(chunk ? chunk : 1);
    if (!buf) {
        return -ENOMEM;
    }
    int ret = 0;
    bool mismatch = false;
    for (uint64_t done = 0; done < o.len && ret == 0;) {
        size_t now = o.len - done < chunk ? (size_t)(o.len - done) : chunk;
        ret = block_pread(n, o.off + done, now, buf);
        if (ret < 0) {
            imgtool_error("io: read failed at offset %" PRIu64 ": %s",
                          o.off + done, strerror(-ret));
            break;
        }
        for (size_t k = 0; o.have_pattern && !mismatch && k < now; k++) {
            if (buf[k] != o.pattern) {
                imgtool_error("io: Pattern verification failed at "
                              "offset %" PRIu64 ", %" PRIu64 " bytes",
                              o.off + done + k, o.len);
                mismatch = true;
            }
        }
        if (o.verbose && !o.quiet) {
            /* chunks are multiples of 16: the lines fall as qemu-io's */
            io_dump(buf, o.off + done, now);
        }
        done += now;
    }
    free(buf);
    if (ret < 0) {
        return ret;
    }
    /* qemu-io reports the read after a failed pattern check too */
    if (!o.quiet) {
        io_report("read", &tm, o.off, o.len);
    }
    return mismatch ? -EILSEQ : 0;
}

static int io_write(BlockNode *n, int argc, char **argv)
{
    IoOpts o;
    if (parse_io_args(&write_spec, argc, argv, 2, &o) < 0) {
        return -EINVAL;
    }
    FILE *src = NULL;
    if (o.src_file) {
        src = fopen(o.src_file, "rb");
        if (!src) {
            imgtool_error("io: write: cannot open '%s': %s", o.src_file,
                          strerror(errno));
            return -errno;
        }
    }
    int flags = (o.fua ? BLOCK_REQ_FUA : 0) |
                (o.compress ? BLOCK_REQ_COMPRESSED : 0);
    int ret = 0;
    IoTimer tm;
    io_timer_start(&tm);
    if (o.zero) {
        ret = block_write_zeroes(n, o.off, o.len,
                                 flags | (o.unmap ? BLOCK_REQ_MAY_UNMAP : 0));
    } else {
        size_t chunk = o.len < IO_CHUNK ? (size_t)o.len : IO_CHUNK;
        if (o.compress) {
            /* one request: chunks could split a cluster */
            chunk = (size_t)o.len;
        }
        uint8_t *buf = malloc(chunk ? chunk : 1);
        if (!buf) {
            if (src) {
                fclose(src);
            }
            return -ENOMEM;
        }
        memset(buf, o.have_pattern ? o.pattern : 0xcd, chunk);
        for (uint64_t done = 0; done < o.len && ret == 0;) {
            size_t now = o.len - done < chunk ? (size_t)(o.len - done) : chunk;
            if (src && fread(buf, 1, now, src) != now) {
                imgtool_error("io: write: '%s' is shorter than %" PRIu64
                              " bytes", o.src_file, o.len);
                ret = -EINVAL;
                break;
            }
            ret = block_pwrite(n, o.off + done, now, buf, flags);
            done += now;
        }
        free(buf);
    }
    if (src) {
        fclose(src);
    }
    if (ret == -EINVAL && src) {
        return ret;
    }
    if (ret < 0) {
        imgtool_error("io: write failed: %s", strerror(-ret));
        return ret;
    }
    if (!o.quiet) {
        io_report("wrote", &tm, o.off, o.len);
    }
    return 0;
}

static int io_discard(BlockNode *n, int argc, char **argv)
{
    IoOpts o;
    if (parse_io_args(&discard_spec, argc, argv, 2, &o) < 0) {
        return -EINVAL;
    }
    IoTimer tm;
    io_timer_start(&tm);
    int ret = block_discard(n, o.off, o.len);
    if (ret < 0) {
        imgtool_error("io: discard failed: %s", strerror(-ret));
        return ret;
    }
    if (!o.quiet) {
        io_report("discard", &tm, o.off, o.len);
    }
    return 0;
}

static int io_map(BlockNode *n)
{
    int64_t size = block_get_length(n);
    if (size < 0) {
        return (int)size;
    }
    uint64_t off = 0;
    while (off < (uint64_t)size) {
        uint64_t pnum;
        int ret = block_status_above(n, NULL, off, (uint64_t)size - off,
                                     &pnum, NULL, NULL, NULL);
        if (ret < 0) {
            imgtool_error("io: map failed at offset %" PRIu64 ": %s", off,
                          strerror(-ret));
            return ret;
        }
        bool alloc = ret & BLOCK_STATUS_ALLOCATED;
        /* Merge runs with the same allocation state, as qemu-io does. */
        uint64_t end = off + pnum;
        while (end < (uint64_t)size) {
            uint64_t more;
            int r2 = block_status_above(n, NULL, end, (uint64_t)size - end,
                                        &more, NULL, NULL, NULL);
            if (r2 < 0 || !!(r2 & BLOCK_STATUS_ALLOCATED) != alloc) {
                break;
            }
            end += more;
        }
        char s1[32], s2[32];
        format_size(end - off, s1, sizeof(s1));
        format_size(off, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
               s1, end - off, alloc ? "    allocated" : "not allocated", s2,
               off);
        off = end;
    }
    return 0;
}

static int io_truncate(BlockNode *n, int argc, char **argv)
{
    IoOpts o;
    if (parse_io_args(&truncate_spec, argc, argv, 1, &o) < 0) {
        return -EINVAL;
    }
    PreallocMode pm = PREALLOC_OFF;
    if (o.prealloc && prealloc_parse(o.prealloc, &pm) < 0) {
        imgtool_error("io: truncate: bad preallocation mode '%s'",
                      o.prealloc);
        return -EINVAL;
    }
    Error err = { 0 };
    int ret = block_truncate(n, o.off, true, pm, &err);
    if (ret < 0) {
        imgtool_error("io: truncate: %s", err.msg);
    }
    return ret;
}

static int run_line(BlockNode *n, const char *line)
{
    char *copy = strdup(line);
    char *argv[MAX_ARGS];
    if (!copy) {
        return -ENOMEM;
    }
    int argc = split_words(copy, argv);
    int ret = 0;
    if (argc == 0 || argv[0][0] == '#') {
        ret = 0;
    } else if (!strcmp(argv[0], "read")) {
        ret = io_read(n, argc, argv);
    } else if (!strcmp(argv[0], "write")) {
        ret = io_write(n, argc, argv);
    } else if (!strcmp(argv[0], "discard")) {
        ret = io_discard(n, argc, argv);
    } else if (!strcmp(argv[0], "flush")) {
        ret = block_flush(n);
        if (ret < 0) {
            imgtool_error("io: flush failed: %s", strerror(-ret));
        }
    } else if (!strcmp(argv[0], "map")) {
        ret = io_map(n);
    } else if (!strcmp(argv[0], "length")) {
        int64_t len = block_get_length(n);
        if (len < 0) {
            ret = (int)len;
        } else {
            char s[32];
            format_size((uint64_t)len, s, sizeof(s));
            printf("%s\n", s);
        }
    } else if (!strcmp(argv[0], "truncate")) {
        ret = io_truncate(n, argc, argv);
    } else {
        imgtool_error("io: unknown command '%s'", argv[0]);
        ret = -EINVAL;
    }
    free(copy);
    return ret;
}

/* -t and -n change the same flags, so the later one wins. */
static int opt_cache(const CmdOpt *opt, const char *arg, void *ctx)
{
    if (imgtool_parse_cache(arg, ctx) < 0) {
        imgtool_error("io: invalid cache mode '%s'", arg);
        return 1;
    }
    return 0;
}

static int opt_nocache(const CmdOpt *opt, const char *arg, void *ctx)
{
    *(int *)ctx |= BLOCK_O_NOCACHE;
    return 0;
}

static struct {
    bool read_only;
    CmdList cmds;
} o;

static const CmdOpt io_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_FORMAT,
    { CMDOPT_FLAG, 'r', "read-only", NULL, "open the image read-only",
      .value = &o.read_only },
    CMDOPT_FORCE_SHARE,
    { CMDOPT_FN, 't', "cache", "cache",
      "cache mode: none, writeback (default), unsafe, directsync, "
      "writethrough", .fn = opt_cache },
    { CMDOPT_FN, 'n', "nocache", NULL, "bypass the host page cache",
      .fn = opt_nocache },
    CMDOPT_IMAGE_OPTS,
    { CMDOPT_LIST, 'c', "cmd", "command",
      "run this command (repeatable; default: read commands from standard "
      "input, one a line)", .value = &o.cmds },
    CMDOPT_END,
};

static const CmdSpec *const io_commands[] = {
    &read_spec, &write_spec, &discard_spec, &flush_spec, &map_spec,
    &length_spec, &truncate_spec, NULL,
};

static const CmdSpec io_spec = {
    .name = "io",
    .args = "filename",
    .description = "Runs qemu-io-style commands on an image.  The exit "
                   "status is non-zero when\nany command failed.\n",
    .opts = io_opts,
    .flags = CMDSPEC_IN_ORDER | CMDSPEC_GETOPT_MESSAGES,
    .commands = io_commands,
};

int cmd_io(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int flags = BLOCK_O_RDWR;
    int rc;
    if (cmd_parse(&io_spec, &a, &flags, argc, argv, &rc) < 0) {
        goto out;
    }
    rc = 1;
    if (o.read_only) {
        flags &= ~BLOCK_O_RDWR;
    }
    flags |= image_args_flags(&a);
    if (image_args_check(&a) < 0) {
        goto out;
    }
    if (optind != argc - 1) {
        imgtool_error("io: expecting one image file name");
        goto out;
    }
    if ((flags & BLOCK_O_SHARE) && (flags & BLOCK_O_RDWR)) {
        imgtool_error("io: force-share (-U) requires read-only mode (-r)");
        goto out;
    }
    Error err = { 0 };
    BlockNode *n = imgtool_open(argv[optind], a.fmt, a.image_opts, flags, &err);
    if (!n) {
        imgtool_report(&err);
        goto out;
    }
    rc = 0;
    if (o.cmds.n) {
        for (size_t i = 0; i < o.cmds.n; i++) {
            if (run_line(n, o.cmds.items[i]) < 0) {
                rc = 1;
            }
        }
    } else {
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, stdin) > 0) {
            if (run_line(n, line) < 0) {
                rc = 1;
            }
        }
        free(line);
    }
    int ret = block_flush(n);
    if (ret < 0) {
        /* After a failed command the failed flush is the same story (a
         * lost connection, a full disk): said once is enough. */
        if (rc == 0) {
            imgtool_error("io: flush on close failed: %s", strerror(-ret));
        }
        rc = 1;
    }
    block_close(n);
out:
    cmd_list_free(&o.cmds);
    return rc;
}
