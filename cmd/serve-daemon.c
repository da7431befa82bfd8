/*
 * serve-daemon.c - the parts of `imgtool serve` that make it a daemon:
 * --daemonize (fork, wait for readiness), --pidfile, and systemd's
 * readiness notification (one datagram to $NOTIFY_SOCKET, written by
 * hand: sd_notify's protocol is that datagram).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmd/serve.h"
#include "imgtool/imgtool.h"

static int ready_fd = -1;
static char *pidfile_path;
static int pidfile_fd = -1;

/* The daemon half learns its readiness pipe from here. */
#define READY_ENV "IMGTOOL_SERVE_READY_FD"

int serve_daemonize(int argc, char **argv, Error *err)
{
    const char *env = getenv(READY_ENV);
    if (env) {
        /* The re-executed daemon: report readiness on this pipe. */
        ready_fd = atoi(env);
        unsetenv(READY_ENV);
        fcntl(ready_fd, F_SETFD, FD_CLOEXEC);
        return 0;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        return error_setf(err, errno, "cannot daemonize: %s",
                          strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0) {
        return error_setf(err, errno, "cannot daemonize: %s",
                          strerror(errno));
    }
    if (pid == 0) {
        /* imgtool has threads by now (the SIGUSR1 reporter): a forked
         * child has only this one, with the others' locks in whatever
         * state they were.  So the daemon is a fresh exec of the same
         * command line, told where to report readiness. */
        char fd[16];
        snprintf(fd, sizeof(fd), "%d", p[1]);
        fcntl(p[1], F_SETFD, 0);
        setenv(READY_ENV, fd, 1);
        setsid();
        char **av = calloc((size_t)argc + 2, sizeof(*av));
        if (av) {
            av[0] = (char *)imgtool_prog;
            memcpy(av + 1, argv, (size_t)argc * sizeof(*av));
            execv("/proc/self/exe", av);
        }
        fprintf(stderr, "%s: cannot daemonize: %s\n", imgtool_prog,
                strerror(errno));
        _exit(1);
    }
    close(p[1]);
    char status = 1;
    ssize_t r;
    do {
        r = read(p[0], &status, 1);
    } while (r < 0 && errno == EINTR);
    if (r != 1 || status != 0) {
        /* The daemon said why on stderr; reap it if it is gone. */
        waitpid(pid, NULL, WNOHANG);
        _exit(1);
    }
    _exit(0);
}

void serve_daemon_ready(void)
{
    if (ready_fd < 0) {
        return;
    }
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        fflush(stdout);
        fflush(stderr);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2) {
            close(null);
        }
    }
    char ok = 0;
    ssize_t r = write(ready_fd, &ok, 1);
    (void)r;
    close(ready_fd);
    ready_fd = -1;
}

int serve_pidfile(const char *path, Error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        return error_setf(err, errno, "Cannot open pid file: %s",
                          strerror(errno));
    }
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        int e = errno;
        close(fd);
        return error_setf(err, e, "Cannot lock pid file: %s", strerror(e));
    }
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || write(fd, buf, (size_t)n) != n) {
        int e = errno;
        close(fd);
        return error_setf(err, e, "Failed to write pid file: %s",
                          strerror(e));
    }
    pidfile_path = strdup(path);
    pidfile_fd = fd;
    return 0;
}

void serve_pidfile_remove(void)
{
    if (pidfile_path) {
        unlink(pidfile_path);
        free(pidfile_path);
        pidfile_path = NULL;
    }
    if (pidfile_fd >= 0) {
        close(pidfile_fd);
        pidfile_fd = -1;
    }
}

void serve_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)
                                                  ->sun_path)) {
        return;
    }
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    memcpy(sun.sun_path, path, len);
    if (sun.sun_path[0] == '@') {
        sun.sun_path[0] = '\0';    /* abstract namespace */
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return;
    }
    char msg[128];
    int n = snprintf(msg, sizeof(msg), "%s\nMAINPID=%d", state,
                     (int)getpid());
    ssize_t r = sendto(fd, msg, (size_t)n, MSG_NOSIGNAL,
                       (struct sockaddr *)&sun,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                                   len));
    (void)r;
    close(fd);
}
