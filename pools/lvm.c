/*
 * lvm.c - running lvm2's commands (see lvm.h).
 *
 * A command runs with stdout and stderr on pipes read together (so
 * neither can fill up and block it), both bounded; lvm's warnings about
 * inherited descriptors are switched off with LVM_SUPPRESS_FD_WARNINGS,
 * and our own descriptors are close-on-exec.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pools/lvm.h"
#include "pools/util.h"

extern char **environ;

#define MAX_STDOUT (64 * 1024 * 1024)
#define MAX_STDERR (256 * 1024)

bool lvm_have_dm(void)
{
    const char *e = getenv("IMGTOOL_LVM_NO_DM");
    if (e && *e && strcmp(e, "0") != 0) {
        return false;
    }
    /* Not /dev/mapper/control: lvm creates that node even where the
     * kernel has no driver behind it. */
    FILE *f = fopen("/proc/misc", "re");
    bool found = false;
    char line[128];
    while (f && !found && fgets(line, sizeof(line), f)) {
        found = strstr(line, " device-mapper") != NULL;
    }
    if (f) {
        fclose(f);
    }
    return found;
}

typedef struct Buf {
    char *data;
    size_t len, cap, max;
} Buf;

static int buf_add(Buf *b, const char *p, size_t n)
{
    if (b->len + n > b->max) {
        n = b->max > b->len ? b->max - b->len : 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t nc = (b->len + n + 1) * 2;
        char *nd = realloc(b->data, nc);
        if (!nd) {
            return -ENOMEM;
        }
        b->data = nd;
        b->cap = nc;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

/* envp: environ plus LVM_SUPPRESS_FD_WARNINGS=1 (malloc'd array). */
static char **child_env(void)
{
    size_t n = 0;
    while (environ[n]) {
        n++;
    }
    char **env = calloc(n + 2, sizeof(*env));
    if (!env) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "LVM_SUPPRESS_FD_WARNINGS=", 25) != 0) {
            env[k++] = environ[i];
        }
    }
    env[k++] = "LVM_SUPPRESS_FD_WARNINGS=1";
    env[k] = NULL;
    return env;
}

int lvm_run_prog(const char *prog, const char *const *args, char **out,
                 int *status, Error *err)
{
    size_t nargs = 0;
    while (args[nargs]) {
        nargs++;
    }
    const char **argv = calloc(nargs + 2, sizeof(*argv));
    char **env = child_env();
    int po[2] = { -1, -1 }, pe[2] = { -1, -1 };
    if (!argv || !env || pipe2(po, O_CLOEXEC) < 0 ||
        pipe2(pe, O_CLOEXEC) < 0) {
        int e = errno ? errno : ENOMEM;
        free(argv);
        free(env);
        for (int i = 0; i < 2; i++) {
            if (po[i] >= 0) {
                close(po[i]);
            }
            if (pe[i] >= 0) {
                close(pe[i]);
            }
        }
        return error_setf(err, e, "cannot run %s: %s", prog, strerror(e));
    }
    argv[0] = prog;
    memcpy(argv + 1, args, nargs * sizeof(*argv));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
    pid_t pid;
    int r = posix_spawnp(&pid, prog, &fa, &at, (char *const *)argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(argv);
    free(env);
    close(po[1]);
    close(pe[1]);
    if (r != 0) {
        close(po[0]);
        close(pe[0]);
        return error_setf(err, r, "cannot run %s: %s", prog, strerror(r));
    }
    Buf bo = { .max = MAX_STDOUT }, be = { .max = MAX_STDERR };
    struct pollfd fds[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
    int open_fds = 2, ret = 0;
    while (open_fds > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !fds[i].revents) {
                continue;
            }
            char chunk[16384];
            ssize_t n = read(fds[i].fd, chunk, sizeof(chunk));
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            } else if (buf_add(i ? &be : &bo, chunk, (size_t)n) < 0) {
                ret = -ENOMEM;
            }
        }
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (ret == 0 && *status != 0) {
        char line[512];
        pool_last_line(be.data, line, sizeof(line));
        ret = error_setf(err, EIO, "%s", line[0] ? line
                         : "failed without a message");
    } else if (ret < 0) {
        error_setf(err, ENOMEM, "out of memory");
    }
    free(be.data);
    if (ret == 0 && out) {
        *out = bo.data ? bo.data : strdup("");
    } else {
        free(bo.data);
    }
    return ret;
}

int lvm_run(const char *const *args, char **out, Error *err)
{
    const char *bin = getenv("IMGTOOL_LVM");
    if (!bin || !*bin) {
        bin = "lvm";
    }
    /* lvm's first argument is the command; the config goes after it. */
    size_t n = 0;
    while (args[n]) {
        n++;
    }
    const char **full = calloc(n + 3, sizeof(*full));
    if (!full || n == 0) {
        free(full);
        return error_setf(err, ENOMEM, "out of memory");
    }
    size_t k = 0;
    full[k++] = args[0];
    if (!lvm_have_dm()) {
        full[k++] = "--config";
        full[k++] = "global{activation=0}";
    }
    for (size_t i = 1; i < n; i++) {
        full[k++] = args[i];
    }
    full[k] = NULL;
    int status;
    Error lerr = { 0 };
    int ret = lvm_run_prog(bin, full, out, &status, &lerr);
    free(full);
    if (ret < 0) {
        bool missing = strstr(lerr.msg, "not found") ||
                       strstr(lerr.msg, "Failed to find") ||
                       strstr(lerr.msg, "does not exist");
        error_setf(err, missing ? ENOENT : lerr.code, "%s", lerr.msg);
        return missing ? -ENOENT : ret;
    }
    return 0;
}

int lvm_report(const char *const *args, const char *kind, json_t **rows,
               Error *err)
{
    *rows = NULL;
    char *out;
    int ret = lvm_run(args, &out, err);
    if (ret < 0) {
        return ret;
    }
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    free(out);
    json_t *r = json_object_get(json_array_get(json_object_get(j, "report"),
                                               0), kind);
    if (!json_is_array(r)) {
        json_decref(j);
        return error_setf(err, EIO, "cannot read lvm's %s report", kind);
    }
    *rows = json_incref(r);
    json_decref(j);
    return 0;
}
