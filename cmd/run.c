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
 * The command lines come from imgtool/vm-cmdline.c, the processes are
 * run by imgtool/vm-run.c; this file reads the options and resolves the
 * disks.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/vm-cmdline.h"
#include "imgtool/vm-run.h"

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
        (strcmp(accel, "auto") == 0 &&
         vm_kvm_usable(cfg.qemu, why, sizeof(why)));
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

    rc = vm_run(serve_argv, qemu_argv, run_dir);
    if (own_dir) {
        vm_run_dir_remove(run_dir);
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
