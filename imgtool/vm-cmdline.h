/*
 * vm-cmdline.h - the command lines `imgtool run` starts: the serve
 * daemon that exports the disks over vhost-user, and QEMU attached to
 * it with shared guest memory.  Pure: no processes, no output, so
 * --print-command shows exactly what would run.
 */
#ifndef IMGTOOL_VM_CMDLINE_H
#define IMGTOOL_VM_CMDLINE_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

typedef enum { VM_BUS_BLK, VM_BUS_SCSI } VmBus;

typedef struct VmDisk {
    char *name;         /* as the user gave it */
    char *filename;     /* what the daemon opens (a path or URL) */
    char *format;       /* NULL until resolved */
    KVList opts;        /* extra driver options (a volume's) */
    VmBus bus;
    bool readonly;
    bool writethrough;  /* no volatile cache: a daemon crash loses no
                           completed write */
} VmDisk;

typedef struct VmConfig {
    VmDisk *disks;
    int ndisks;
    const char *kernel, *initrd, *append;
    uint64_t memory;    /* bytes, a whole number of MiB */
    int cpus;
    bool kvm;
    const char *qemu;   /* the QEMU binary */
    const char *imgtool;   /* this program, for the daemon */
    const char *run_dir;   /* where sockets go */
    char **extra;       /* QEMU arguments after -- */
    int nextra;
} VmConfig;

/* "NAME[,bus=blk|scsi][,format=FMT][,readonly=on|off]
 * [,writethrough=on|off]" (",," is a
 * comma in NAME).  filename is NAME; format as given (NULL: probe). */
int vm_disk_parse(const char *spec, VmDisk *d, Error *err);
void vm_disk_clear(VmDisk *d);
/* QEMU's -m syntax: a plain number is MiB; k/M/G/T suffixes. */
int vm_memory_parse(const char *s, uint64_t *bytes, Error *err);

/* NULL-terminated argv (each string malloc'd), or NULL with err set. */
char **vm_serve_argv(const VmConfig *c, Error *err);
char **vm_qemu_argv(const VmConfig *c, Error *err);
void vm_argv_free(char **argv);
/* The argv as one shell-quoted line (malloc'd). */
char *vm_argv_join(char *const *argv);

/* Paths inside run_dir (malloc'd). */
char *vm_qmp_path(const VmConfig *c);

#endif
