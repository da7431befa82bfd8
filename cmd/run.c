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
#include "imgtool/parse-options.h"
#include "imgtool/vm-cmdline.h"
#include "imgtool/vm-run.h"
#include "pools/pool.h"

static struct {
    CmdList disks;
    const char *kernel, *initrd, *append, *memory, *accel, *run_dir;
    uint64_t cpus;
    bool print;
} o;

static const CmdOpt run_opts[] = {
    { CMDOPT_LIST, 0, "disk",
      "name[,bus=blk|scsi][,format=fmt][,readonly=on][,writethrough=on]",
      "a disk (repeatable): an image file, vol:POOL/NAME or a URL; "
      "bus=scsi makes it the next LUN of one virtio-scsi controller; "
      "writethrough=on: no write cache, a daemon crash loses nothing the "
      "guest saw written", .value = &o.disks },
    { CMDOPT_STRING, 0, "kernel", "file",
      "boot this kernel (else the first disk boots)", .value = &o.kernel },
    { CMDOPT_STRING, 0, "initrd", "file", "its initramfs",
      .value = &o.initrd },
    { CMDOPT_STRING, 0, "append", "text", "its command line",
      .value = &o.append },
    { CMDOPT_STRING, 0, "memory", "size",
      "guest memory (default 512M; a number alone is MiB)",
      .value = &o.memory },
    { CMDOPT_UINT, 0, "cpus", "n",
      "virtual CPUs, and queues per disk (default 1)", .value = &o.cpus,
      .what = "--cpus value (1 to 32)", .min = 1, .max = 32 },
    { CMDOPT_STRING, 0, "accel", "auto|kvm|tcg",
      "auto (default): KVM when it works, else TCG", .value = &o.accel },
    { CMDOPT_STRING, 0, "run-dir", "dir",
      "where the sockets go (default: a new directory, removed at the "
      "end); dir/qmp.sock controls the daemon", .value = &o.run_dir },
    { CMDOPT_FLAG, 0, "print-command", NULL,
      "print the daemon's and QEMU's command lines, run nothing",
      .value = &o.print },
    CMDOPT_END,
};

static const CmdSpec run_spec = {
    .name = "run",
    .args = "[-- qemu-args...]",
    .description =
        "  Boots a guest whose disks imgtool serves over vhost-user; what\n"
        "  follows -- goes to QEMU as it is.\n",
    .opts = run_opts,
};

#define QEMU_BINARY "qemu-system-x86_64"

/* ---- Disks ------------------------------------------------------------ */

/* vol:POOL/NAME: the file (or device) and format the pool knows, and the
 * driver options it needs (a LUKS volume's secret, for instance). */
static int resolve_volume(VmDisk *d, Error *err)
{
    PoolStore *s;
    VolOpenSpec spec;
    if (pool_store_open(&s, err) < 0) {
        return -EINVAL;
    }
    int ret = pool_vol_open_spec(s, d->name, &spec, err);
    pool_store_close(s);
    if (ret < 0) {
        error_prefixf(err, "%s", d->name);
        return ret;
    }
    if (d->format && strcmp(d->format, spec.format) != 0) {
        ret = error_setf(err, EINVAL, "%s: the volume's format is %s, not "
                         "%s", d->name, spec.format, d->format);
    } else {
        free(d->filename);
        free(d->format);
        d->filename = strdup(spec.filename);
        d->format = strdup(spec.format);
        for (size_t i = 0; i < spec.opts.n; i++) {
            kvlist_set(&d->opts, spec.opts.items[i].key,
                       spec.opts.items[i].value);
        }
        if (!d->filename || !d->format) {
            ret = error_setf(err, ENOMEM, "out of memory");
        }
    }
    vol_open_spec_clear(&spec);
    return ret;
}

static int resolve_disk(VmDisk *d, Error *err)
{
    if (pool_is_vol_name(d->name)) {
        return resolve_volume(d, err);
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
    VmDisk *disks = NULL;
    const char *accel = "auto", *run_dir;
    int rc = 1;
    Error err = { 0 };
    char **serve_argv = NULL, **qemu_argv = NULL;
    char made_dir[] = "/tmp/imgtool-run.XXXXXX";
    bool own_dir = false;

    memset(&o, 0, sizeof(o));
    o.cpus = 1;
    if (cmd_parse(&run_spec, NULL, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    rc = 1;
    disks = calloc(o.disks.n + 1, sizeof(*disks));
    if (!disks) {
        imgtool_error("out of memory");
        goto out;
    }
    for (size_t i = 0; i < o.disks.n; i++) {
        if (vm_disk_parse(o.disks.items[i], &disks[cfg.ndisks], &err) < 0) {
            imgtool_report(&err);
            goto out;
        }
        cfg.ndisks++;
    }
    cfg.kernel = o.kernel;
    cfg.initrd = o.initrd;
    cfg.append = o.append;
    cfg.cpus = (int)o.cpus;
    run_dir = o.run_dir;
    bool print = o.print;
    if (o.memory && vm_memory_parse(o.memory, &cfg.memory, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    if (o.accel) {
        if (strcmp(o.accel, "auto") && strcmp(o.accel, "kvm") &&
            strcmp(o.accel, "tcg")) {
            imgtool_error("--accel '%s': auto, kvm or tcg expected",
                          o.accel);
            goto out;
        }
        accel = o.accel;
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
    for (int i = 0; disks && i < cfg.ndisks; i++) {
        vm_disk_clear(&disks[i]);
    }
    free(disks);
    cmd_list_free(&o.disks);
    return rc;
}
