/*
 * vm-run.h - running what `imgtool run` starts (vm-run.c): the serve
 * daemon and QEMU, with the command lines vm-cmdline.c builds.
 */
#ifndef IMGTOOL_VM_RUN_H
#define IMGTOOL_VM_RUN_H

#include <stdbool.h>
#include <stddef.h>

/* Whether QEMU (the binary qemu) can run a guest with KVM here: a 64 KiB
 * ROM whose reset vector writes to isa-debug-exit, run with -cpu host.
 * Some hosts (a nested, paravirtual KVM) have /dev/kvm but abort on the
 * CPU's MSRs or fail to emulate; only trying tells.  why (whylen bytes)
 * says what failed. */
bool vm_kvm_usable(const char *qemu, char *why, size_t whylen);

/* Starts the daemon (serve_argv) and waits for its READY=1 on a socket
 * in run_dir, runs QEMU (qemu_argv) in the foreground until it exits,
 * starting the daemon again when it dies meanwhile, passes SIGINT and
 * SIGTERM on to QEMU, then stops the daemon.  Returns QEMU's exit code
 * (128 + the signal when interrupted, 1 when something failed, which it
 * reported). */
int vm_run(char **serve_argv, char **qemu_argv, const char *run_dir);

/* Removes the sockets a run leaves in dir, and dir. */
void vm_run_dir_remove(const char *dir);

#endif
