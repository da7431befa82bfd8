/*
 * vm-run.c - the processes of `imgtool run`: trying KVM, starting the
 * serve daemon and waiting for its readiness, running QEMU in the
 * foreground, restarting a daemon that dies, and stopping both (see
 * vm-run.h).  Part of the command line: it reports on stderr.
 *
 * Signals: SIGINT, SIGTERM and SIGCHLD are blocked while the children
 * run and read from a signalfd; children get the caller's mask back.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "imgtool/imgtool.h"
#include "imgtool/vm-run.h"

#define READY_SECONDS 60
#define STOP_SECONDS 30
#define MAX_RESTARTS 5

static sigset_t caught;

static pid_t spawn(char **argv, const char *notify, bool quiet)
{
    pid_t pid = fork();
    if (pid != 0) {
        return pid;
    }
    sigprocmask(SIG_UNBLOCK, &caught, NULL);
    if (notify) {
        setenv("NOTIFY_SOCKET", notify, 1);
    } else {
        unsetenv("NOTIFY_SOCKET");
    }
    if (quiet) {
        int fd = open("/dev/null", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
        }
    }
    execvp(argv[0], argv);
    fprintf(stderr, "%s: cannot run %s: %s\n", imgtool_prog, argv[0],
            strerror(errno));
    _exit(127);
}

/* Waits up to ms for pid; its wait status, or -1 when it still runs. */
static int wait_for(pid_t pid, int ms)
{
    for (int waited = 0;; waited += 10) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            return st;
        }
        if (r < 0 || waited >= ms) {
            return r < 0 ? 0 : -1;
        }
        nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
    }
}

static void stop(pid_t pid, int seconds)
{
    if (pid <= 0) {
        return;
    }
    kill(pid, SIGTERM);
    if (wait_for(pid, seconds * 1000) == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* Whether QEMU can run a guest with KVM here: a 64 KiB ROM whose reset
 * vector writes to isa-debug-exit, run with -cpu host.  Some hosts (a
 * nested, paravirtual KVM) have /dev/kvm but abort on the CPU's MSRs or
 * fail to emulate; only trying tells. */
bool vm_kvm_usable(const char *qemu, char *why, size_t whylen)
{
    if (access("/dev/kvm", R_OK | W_OK) != 0) {
        snprintf(why, whylen, "/dev/kvm: %s", strerror(errno));
        return false;
    }
    const char *tmp = getenv("TMPDIR");
    char rom[4096];
    snprintf(rom, sizeof(rom), "%s/imgtool-kvm-probe.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    static uint8_t img[65536];
    static const uint8_t code[] = {
        0xb0, 0x01,         /* mov al, 1 */
        0xe6, 0xf4,         /* out 0xf4, al: QEMU exits with 3 */
        0xf4,               /* hlt */
        0xeb, 0xfe,         /* jmp $ */
    };
    memcpy(img + 0xfff0, code, sizeof(code));
    int fd = mkostemp(rom, O_CLOEXEC);
    if (fd < 0 || write(fd, img, sizeof(img)) != (ssize_t)sizeof(img)) {
        if (fd >= 0) {
            close(fd);
            unlink(rom);
        }
        snprintf(why, whylen, "cannot write a probe ROM");
        return false;
    }
    close(fd);
    char *argv[] = {
        (char *)qemu, "-accel", "kvm", "-cpu", "host", "-machine", "q35",
        "-m", "16", "-nodefaults", "-no-user-config", "-display", "none",
        "-bios", rom, "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        NULL,
    };
    pid_t pid = spawn(argv, NULL, true);
    int st = pid > 0 ? wait_for(pid, 10000) : 0;
    if (st == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    unlink(rom);
    if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 3) {
        return true;
    }
    if (st == -1) {
        snprintf(why, whylen, "a test guest did not finish");
    } else if (WIFSIGNALED(st)) {
        snprintf(why, whylen, "QEMU died (signal %d) starting a test guest",
                 WTERMSIG(st));
    } else {
        snprintf(why, whylen, "a test guest failed (exit %d)",
                 WEXITSTATUS(st));
    }
    return false;
}

/* A datagram socket the daemon reports READY=1 on. */
static int notify_socket(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (fd < 0 || strlen(path) >= sizeof(sa.sun_path)) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    strcpy(sa.sun_path, path);
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Starts the daemon and waits for READY=1.  Returns its pid, 0 when it
 * failed (it said why on stderr), -1 when interrupted. */
static pid_t start_daemon(char **argv, int nfd, const char *npath,
                          int sigfd)
{
    pid_t pid = spawn(argv, npath, false);
    if (pid < 0) {
        imgtool_error("cannot start the serve daemon: %s", strerror(errno));
        return 0;
    }
    for (int ms = 0; ms < READY_SECONDS * 1000; ms += 100) {
        struct pollfd p[2] = { { nfd, POLLIN, 0 }, { sigfd, POLLIN, 0 } };
        poll(p, 2, 100);
        char buf[256];
        ssize_t n;
        while ((n = recv(nfd, buf, sizeof(buf) - 1, 0)) > 0) {
            buf[n] = 0;
            if (strstr(buf, "READY=1")) {
                return pid;
            }
        }
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                if (si.ssi_signo != SIGCHLD) {
                    stop(pid, STOP_SECONDS);
                    return -1;
                }
            }
        }
        int st = wait_for(pid, 0);
        if (st != -1) {
            imgtool_error("the serve daemon failed to start");
            return 0;
        }
    }
    imgtool_error("the serve daemon did not get ready in %d s",
                  READY_SECONDS);
    stop(pid, STOP_SECONDS);
    return 0;
}

void vm_run_dir_remove(const char *dir)
{
    static const char *const files[] = {
        "qmp.sock", "scsi.sock", "notify.sock",
    };
    char p[4096];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    for (int i = 0; i < 1024; i++) {
        snprintf(p, sizeof(p), "%s/disk%d.sock", dir, i);
        unlink(p);
    }
    rmdir(dir);
}

/* Runs QEMU until it exits; restarts a daemon that dies meanwhile.
 * Returns the exit code. */
static int supervise(char **qemu_argv, char **serve_argv, pid_t *daemon,
                     int nfd, const char *npath, int sigfd)
{
    pid_t qemu = spawn(qemu_argv, NULL, false);
    if (qemu < 0) {
        imgtool_error("cannot start %s: %s", qemu_argv[0], strerror(errno));
        return 1;
    }
    int restarts = 0;
    for (;;) {
        struct signalfd_siginfo si;
        struct pollfd p = { sigfd, POLLIN, 0 };
        poll(&p, 1, 1000);
        while (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
            if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) {
                stop(qemu, STOP_SECONDS);
                return 128 + (int)si.ssi_signo;
            }
        }
        int st = wait_for(qemu, 0);
        if (st != -1) {
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        st = *daemon > 0 ? wait_for(*daemon, 0) : 0;
        if (st == -1) {
            continue;
        }
        if (restarts++ >= MAX_RESTARTS) {
            imgtool_error("the serve daemon keeps dying; stopping the guest");
            *daemon = 0;
            stop(qemu, STOP_SECONDS);
            return 1;
        }
        if (WIFSIGNALED(st)) {
            imgtool_warn("the serve daemon died (signal %d); starting it "
                         "again", WTERMSIG(st));
        } else {
            imgtool_warn("the serve daemon exited (%d); starting it again",
                         WEXITSTATUS(st));
        }
        *daemon = start_daemon(serve_argv, nfd, npath, sigfd);
        if (*daemon <= 0) {
            *daemon = 0;
            stop(qemu, STOP_SECONDS);
            return 1;
        }
    }
}

int vm_run(char **serve_argv, char **qemu_argv, const char *run_dir)
{
    int rc = 1;
    sigset_t old;
    sigemptyset(&caught);
    sigaddset(&caught, SIGINT);
    sigaddset(&caught, SIGTERM);
    sigaddset(&caught, SIGCHLD);
    sigprocmask(SIG_BLOCK, &caught, &old);
    int sigfd = signalfd(-1, &caught, SFD_NONBLOCK | SFD_CLOEXEC);
    char npath[4200];
    snprintf(npath, sizeof(npath), "%s/notify.sock", run_dir);
    int nfd = notify_socket(npath);
    if (sigfd < 0 || nfd < 0) {
        imgtool_error("cannot set up the run directory %s", run_dir);
    } else {
        pid_t daemon = start_daemon(serve_argv, nfd, npath, sigfd);
        if (daemon > 0) {
            rc = supervise(qemu_argv, serve_argv, &daemon, nfd, npath,
                           sigfd);
            stop(daemon, STOP_SECONDS);
        } else if (daemon < 0) {
            rc = 130;
        }
    }
    if (nfd >= 0) {
        close(nfd);
    }
    unlink(npath);
    if (sigfd >= 0) {
        close(sigfd);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}
