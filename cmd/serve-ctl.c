/*
 * serve-ctl.c - `imgtool serve-ctl SOCKET COMMAND [ARGUMENTS]`: one QMP
 * command to a running `imgtool serve` (or qemu-storage-daemon), its
 * "return" value printed as JSON.  ARGUMENTS is a JSON object or
 * key=value pairs (dotted keys nest; true/false and whole numbers are
 * typed, everything else is a string: use JSON for a string that looks
 * like a number).  Exit 0 on success, 1 with the server's error.
 *
 * Its table lists the daemon's commands from the daemon's own dispatch
 * table (qmp_command_name), so --help and completion offer exactly what
 * `imgtool serve` runs.
 */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "block/export/monitor.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/parse-options.h"

#define MAX_COMMANDS 64

static const CmdOpt ctl_opts[] = { CMDOPT_END };

/* The commands the daemon runs (qmp-cmds.c's table), as a command
 * language of serve-ctl's: --help lists them and completion offers
 * them from the one table the daemon dispatches with. */
static CmdSpec ctl_command_specs[MAX_COMMANDS];
static const CmdSpec *ctl_commands[MAX_COMMANDS + 1];

static const CmdSpec ctl_spec = {
    .name = "serve-ctl",
    .args = "SOCKET COMMAND [JSON | key=value ...]",
    .description =
        "Sends one QMP command to the control socket of `imgtool serve`\n"
        "(a unix socket path, or HOST:PORT) and prints its return value.\n"
        "Examples:\n"
        "  imgtool serve-ctl /run/s.qmp query-block-exports\n"
        "  imgtool serve-ctl /run/s.qmp block-export-add type=nbd id=e1 \\\n"
        "      node-name=disk writable=true\n"
        /* no newline: no option lines follow, the commands do */
        "  imgtool serve-ctl /run/s.qmp block-export-del id=e1",
    .opts = ctl_opts,
    /* What follows SOCKET is the command's, options or not. */
    .flags = CMDSPEC_IN_ORDER,
    .commands = ctl_commands,
};

static void ctl_commands_load(void)
{
    const char *name;
    for (size_t i = 0; i < MAX_COMMANDS && (name = qmp_command_name(i));
         i++) {
        ctl_command_specs[i] = (CmdSpec){ .name = name, .opts = ctl_opts };
        ctl_commands[i] = &ctl_command_specs[i];
    }
    /* Room for every command the daemon has. */
    assert(!qmp_command_name(MAX_COMMANDS));
}

#define MAX_REPLY (64u << 20)

static int ctl_connect(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    if (colon && !strchr(addr, '/') && colon[1]) {
        char host[256];
        size_t hl = (size_t)(colon - addr);
        if (hl >= sizeof(host)) {
            return -ENAMETOOLONG;
        }
        memcpy(host, addr, hl);
        host[hl] = '\0';
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
        if (getaddrinfo(*host ? host : "localhost", colon + 1, &hints,
                        &res) != 0) {
            return -EHOSTUNREACH;
        }
        int fd = -ECONNREFUSED;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                break;
            }
            if (fd >= 0) {
                close(fd);
            }
            fd = -errno;
        }
        freeaddrinfo(res);
        return fd;
    }
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(addr) >= sizeof(sun.sun_path)) {
        return -ENAMETOOLONG;
    }
    strcpy(sun.sun_path, addr);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
        }
        return -e;
    }
    return fd;
}

/* Reads JSON values until one that is not an event; NULL on EOF. */
static json_t *next_message(int fd, char **buf, size_t *len)
{
    for (;;) {
        size_t ws = 0;
        while (ws < *len && strchr(" \t\r\n", (*buf)[ws])) {
            ws++;
        }
        if (ws < *len) {
            json_error_t jerr;
            json_t *j = json_loadb(*buf + ws, *len - ws,
                                   JSON_DISABLE_EOF_CHECK, &jerr);
            if (j) {
                size_t used = ws + (size_t)jerr.position;
                memmove(*buf, *buf + used, *len - used);
                *len -= used;
                if (json_object_get(j, "event")) {
                    json_decref(j);
                    continue;
                }
                return j;
            }
            if (json_error_code(&jerr) != json_error_premature_end_of_input) {
                return NULL;
            }
        }
        if (*len > MAX_REPLY) {
            return NULL;
        }
        char *b = realloc(*buf, *len + 65536);
        if (!b) {
            return NULL;
        }
        *buf = b;
        ssize_t r = recv(fd, b + *len, 65536, 0);
        if (r <= 0) {
            return NULL;
        }
        *len += (size_t)r;
    }
}

static int send_all(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t r = send(fd, s, n, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -errno;
        }
        s += r;
        n -= (size_t)r;
    }
    return 0;
}

static json_t *typed(const char *v)
{
    if (!strcmp(v, "true") || !strcmp(v, "on")) {
        return json_true();
    }
    if (!strcmp(v, "false") || !strcmp(v, "off")) {
        return json_false();
    }
    if (*v && strspn(v, "0123456789") == strlen(v) && strlen(v) < 19) {
        return json_integer(strtoll(v, NULL, 10));
    }
    return json_string(v);
}

/* key=value pairs to an object; "a.b=x" nests. */
static int pairs_to_json(char **argv, int n, json_t *obj)
{
    for (int i = 0; i < n; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq || eq == argv[i]) {
            imgtool_error("serve-ctl: '%s': expected key=value", argv[i]);
            return -1;
        }
        char *key = strndup(argv[i], (size_t)(eq - argv[i]));
        json_t *at = obj;
        char *part = key, *dot;
        while ((dot = strchr(part, '.'))) {
            *dot = '\0';
            json_t *sub = json_object_get(at, part);
            if (!json_is_object(sub)) {
                sub = json_object();
                json_object_set_new(at, part, sub);
            }
            at = sub;
            part = dot + 1;
        }
        json_object_set_new(at, part, typed(eq + 1));
        free(key);
    }
    return 0;
}

int cmd_serve_ctl(int argc, char **argv)
{
    ctl_commands_load();
    int rc, first = cmd_parse(&ctl_spec, NULL, NULL, argc, argv, &rc);
    if (first < 0) {
        return rc;
    }
    argc -= first - 1;
    argv += first - 1;
    if (argc < 3) {
        return usage_error("serve-ctl", "give the control SOCKET and a "
                           "COMMAND");
    }
    json_t *args = NULL;
    if (argc >= 4 && argv[3][0] == '{') {
        json_error_t jerr;
        args = json_loads(argv[3], 0, &jerr);
        if (!json_is_object(args) || argc > 4) {
            imgtool_error("serve-ctl: arguments: %s", args ? "give one JSON "
                          "object" : jerr.text);
            json_decref(args);
            return 1;
        }
    } else {
        args = json_object();
        if (pairs_to_json(argv + 3, argc - 3, args) < 0) {
            json_decref(args);
            return 1;
        }
    }
    int fd = ctl_connect(argv[1]);
    if (fd < 0) {
        imgtool_error("serve-ctl: cannot connect to %s: %s", argv[1],
                      strerror(-fd));
        json_decref(args);
        return 1;
    }
    json_t *cmd = json_pack("{s:s,s:o}", "execute", argv[2], "arguments",
                            args);
    char *dumped = json_dumps(cmd, JSON_COMPACT), *text = NULL;
    json_decref(cmd);
    /* One write: a daemon told to quit may close right after reading. */
    if (!dumped || asprintf(&text, "%s\n", dumped) < 0) {
        text = NULL;
    }
    free(dumped);
    char *buf = NULL;
    size_t len = 0;
    rc = 1;
    json_t *greeting = next_message(fd, &buf, &len);
    json_t *caps = NULL, *r = NULL;
    if (!greeting || !json_object_get(greeting, "QMP")) {
        imgtool_error("serve-ctl: %s does not speak QMP", argv[1]);
        goto out;
    }
    if (send_all(fd, "{\"execute\":\"qmp_capabilities\"}\n") < 0 ||
        !(caps = next_message(fd, &buf, &len)) ||
        !text || send_all(fd, text) < 0 ||
        !(r = next_message(fd, &buf, &len))) {
        imgtool_error("serve-ctl: the connection to %s failed", argv[1]);
        goto out;
    }
    json_t *ret = json_object_get(r, "return");
    if (ret) {
        imgtool_print_json(ret);
        rc = 0;
    } else {
        json_t *desc = json_object_get(json_object_get(r, "error"), "desc");
        imgtool_error("serve-ctl: %s: %s", argv[2], json_is_string(desc)
                      ? json_string_value(desc) : "failed");
    }
out:
    json_decref(greeting);
    json_decref(caps);
    json_decref(r);
    free(text);
    free(buf);
    close(fd);
    return rc;
}
