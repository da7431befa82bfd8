/*
 * run.c - `imgtool run`: boots a guest with disks served by imgtool's own
 * vhost-user back ends.
 *
 *   imgtool run --disk a.qcow2 --disk b.raw,bus=scsi,readonly=on \
 *       [--kernel K --initrd I --append A] [--memory 1G] [--cpus 2] \
 *       [--print-command] [-- extra QEMU arguments]
 *
 * It resolves each disk (format probed unless given, vol:POOL/NAME
 * through the pool store), starts `imgtool serve` with one export per
 * disk and waits until it is ready (sd_notify's READY=1 on a socket of
 * ours), tries KVM and falls back to TCG with one line saying so, runs
 * QEMU with shared guest memory in the foreground, and when QEMU exits
 * (or on SIGINT/SIGTERM, which it passes on) stops the daemon and
 * removes the run directory.  A daemon that dies while the guest runs is
 * started again: vhost-user-blk reconnects and requests in flight are
 * resubmitted.  The exit code is QEMU's.
 *
 * The command lines come from imgtool/vm-cmdline.c; this file only runs
 * processes.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/vm-cmdline.h"

static const char run_usage[] =
    "usage: imgtool run [--disk NAME[,bus=blk|scsi][,format=FMT]"
    "[,readonly=on][,writethrough=on]]...\n"
    "                   [--kernel FILE] [--initrd FILE] [--append TEXT]\n"
    "                   [--memory SIZE] [--cpus N] [--accel auto|kvm|tcg]\n"
    "                   [--run-dir DIR] [--print-command] [-- QEMU ARGS]\n"
    "\n"
    "Boots a guest whose disks imgtool serves over vhost-user.\n"
    "  --disk NAME,...   an image file, vol:POOL/NAME or URL; bus=blk\n"
    "                    (virtio-blk, the default) or bus=scsi (LUNs of one\n"
    "                    virtio-scsi controller); repeatable;\n"
    "                    writethrough=on: no write cache, so a daemon\n"
    "                    crash loses no write the guest saw complete\n"
    "  --kernel/--initrd/--append  boot a kernel directly (else the first\n"
    "                    disk boots)\n"
    "  --memory SIZE     guest memory (default 512M; a plain number is MiB)\n"
    "  --cpus N          virtual CPUs, and queues per disk (default 1)\n"
    "  --accel A         auto (default: KVM when it works, else TCG), kvm,\n"
    "                    tcg\n"
    "  --run-dir DIR     where the sockets go (default: a new directory,\n"
    "                    removed at the end); DIR/qmp.sock controls the\n"
    "                    daemon (imgtool serve-ctl)\n"
    "  --print-command   print the daemon's and QEMU's command lines, run\n"
    "                    nothing\n"
    "  -- ARGS           passed to QEMU as they are\n";

enum {
    OPT_DISK = 256, OPT_KERNEL, OPT_INITRD, OPT_APPEND, OPT_MEMORY, OPT_CPUS,
    OPT_ACCEL, OPT_RUN_DIR, OPT_PRINT,
};

static const struct option run_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "disk", required_argument, NULL, OPT_DISK },
    { "kernel", required_argument, NULL, OPT_KERNEL },
    { "initrd", required_argument, NULL, OPT_INITRD },
    { "append", required_argument, NULL, OPT_APPEND },
    { "memory", required_argument, NULL, OPT_MEMORY },
    { "cpus", required_argument, NULL, OPT_CPUS },
    { "accel", required_argument, NULL, OPT_ACCEL },
    { "run-dir", required_argument, NULL, OPT_RUN_DIR },
    { "print-command", no_argument, NULL, OPT_PRINT },
    { NULL, 0, NULL, 0 },
};

#define QEMU_BINARY "qemu-system-x86_64"
#define READY_SECONDS 60
#define STOP_SECONDS 30
#define MAX_RESTARTS 5

/* ---- Disks ------------------------------------------------------------ */

static int resolve_disk(VmDisk *d, Error *err)
{
    if (strncmp(d->name, "vol:", 4) == 0) {
        return error_setf(err, ENOTSUP, "%s: storage pool volumes are not "
                          "supported by this build", d->name);
    }
    if (!d->format) {
        const BlockDriver *drv = block_probe(d->filename, err);
        if (!drv) {
            error_prefixf(err, "%s", d->name);
            return -EINVAL;
        }
        d->format = strdup(block_driver_name(drv));
        if (!d->format) {
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    return 0;
}

/* ---- Processes -------------------------------------------------------- */

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
    fprintf(stderr, "imgtool: cannot run %s: %s\n", argv[0],
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
static bool kvm_usable(char *why, size_t whylen)
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
        QEMU_BINARY, "-accel", "kvm", "-cpu", "host", "-machine", "q35",
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

static void remove_run_dir(const char *dir)
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

int cmd_run(int argc, char **argv)
{
    VmConfig cfg = { .cpus = 1, .memory = 512ull << 20, .qemu = QEMU_BINARY };
    VmDisk *disks = calloc((size_t)argc, sizeof(*disks));
    const char *accel = "auto", *run_dir = NULL;
    bool print = false;
    int c, rc = 1;
    Error err = { 0 };
    char **serve_argv = NULL, **qemu_argv = NULL;
    char made_dir[] = "/tmp/imgtool-run.XXXXXX";
    bool own_dir = false;

    if (!disks) {
        imgtool_error("out of memory");
        return 1;
    }
    optind = 0;
    while ((c = getopt_long(argc, argv, "+:h", run_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(run_usage, stdout);
            rc = 0;
            goto out;
        case OPT_DISK:
            if (vm_disk_parse(optarg, &disks[cfg.ndisks], &err) < 0) {
                imgtool_report(&err);
                goto out;
            }
            cfg.ndisks++;
            break;
        case OPT_KERNEL:
            cfg.kernel = optarg;
            break;
        case OPT_INITRD:
            cfg.initrd = optarg;
            break;
        case OPT_APPEND:
            cfg.append = optarg;
            break;
        case OPT_MEMORY:
            if (vm_memory_parse(optarg, &cfg.memory, &err) < 0) {
                imgtool_report(&err);
                goto out;
            }
            break;
        case OPT_CPUS: {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 32) {
                imgtool_error("--cpus '%s': 1 to 32 expected", optarg);
                goto out;
            }
            cfg.cpus = (int)n;
            break;
        }
        case OPT_ACCEL:
            if (strcmp(optarg, "auto") && strcmp(optarg, "kvm") &&
                strcmp(optarg, "tcg")) {
                imgtool_error("--accel '%s': auto, kvm or tcg expected",
                              optarg);
                goto out;
            }
            accel = optarg;
            break;
        case OPT_RUN_DIR:
            run_dir = optarg;
            break;
        case OPT_PRINT:
            print = true;
            break;
        default:
            rc = usage_bad_option("run", argv, c);
            goto out;
        }
    }
    cfg.extra = argv + optind;
    cfg.nextra = argc - optind;
    if (cfg.nextra > 0 && strcmp(argv[optind - 1], "--") != 0) {
        imgtool_error("unexpected argument '%s' (QEMU arguments go after "
                      "--)", argv[optind]);
        goto out;
    }
    if ((cfg.initrd || cfg.append) && !cfg.kernel) {
        imgtool_error("--initrd and --append need --kernel");
        goto out;
    }
    if (cfg.ndisks == 0 && !cfg.kernel) {
        rc = usage_error("run", "nothing to boot: give --disk or --kernel");
        goto out;
    }
    cfg.disks = disks;
    for (int i = 0; i < cfg.ndisks; i++) {
        if (resolve_disk(&disks[i], &err) < 0) {
            imgtool_report(&err);
            goto out;
        }
    }
    if (!run_dir) {
        if (print) {
            run_dir = "RUNDIR";
        } else {
            if (!mkdtemp(made_dir)) {
                imgtool_error("cannot create a run directory: %s",
                              strerror(errno));
                goto out;
            }
            run_dir = made_dir;
            own_dir = true;
        }
    } else if (!print && mkdir(run_dir, 0700) < 0 && errno != EEXIST) {
        imgtool_error("--run-dir %s: %s", run_dir, strerror(errno));
        goto out;
    }
    cfg.run_dir = run_dir;
    cfg.imgtool = print ? "imgtool" : "/proc/self/exe";
    char self[4096];
    if (!print) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n > 0) {
            self[n] = 0;
            cfg.imgtool = self;
        }
    }

    char why[256] = "";
    cfg.kvm = strcmp(accel, "kvm") == 0 ||
        (strcmp(accel, "auto") == 0 && kvm_usable(why, sizeof(why)));
    if (strcmp(accel, "auto") == 0 && !cfg.kvm) {
        imgtool_warn("KVM is not usable here (%s); using TCG, which is "
                     "much slower", why);
    }
    serve_argv = vm_serve_argv(&cfg, &err);
    qemu_argv = serve_argv ? vm_qemu_argv(&cfg, &err) : NULL;
    if (!qemu_argv) {
        imgtool_report(&err);
        goto out;
    }
    if (print) {
        char *s = vm_argv_join(serve_argv), *q = vm_argv_join(qemu_argv);
        if (s && q) {
            printf("%s &\n%s\n", s, q);
            rc = 0;
        }
        free(s);
        free(q);
        goto out;
    }

    sigemptyset(&caught);
    sigaddset(&caught, SIGINT);
    sigaddset(&caught, SIGTERM);
    sigaddset(&caught, SIGCHLD);
    sigprocmask(SIG_BLOCK, &caught, NULL);
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
    if (sigfd >= 0) {
        close(sigfd);
    }
    sigprocmask(SIG_UNBLOCK, &caught, NULL);
    if (own_dir) {
        remove_run_dir(run_dir);
    } else {
        snprintf(npath, sizeof(npath), "%s/notify.sock", run_dir);
        unlink(npath);
    }
out:
    vm_argv_free(serve_argv);
    vm_argv_free(qemu_argv);
    for (int i = 0; i < cfg.ndisks; i++) {
        vm_disk_clear(&disks[i]);
    }
    free(disks);
    return rc;
}
