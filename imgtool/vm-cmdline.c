/*
 * vm-cmdline.c - building the serve daemon's and QEMU's command lines
 * for `imgtool run` (see vm-cmdline.h).
 *
 * Disk i is node "disk<i>" in the daemon.  virtio-blk disks get a
 * vhost-user-blk export and socket each; virtio-scsi disks are LUNs
 * 0, 1, ... of one vhost-user-scsi controller (one socket).  The
 * vhost-user-blk chardevs reconnect, so a restarted daemon picks up
 * where the last one stopped (QEMU 7.2's vhost-user-scsi cannot).
 *
 * Values that go into comma-separated option lists have their commas
 * doubled, as QEMU and the daemon read them.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/vm-cmdline.h"

typedef struct Argv {
    char **v;
    int n, cap;
    bool failed;
} Argv;

static void add(Argv *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add(Argv *a, const char *fmt, ...)
{
    if (a->failed) {
        return;
    }
    if (a->n + 2 > a->cap) {
        int cap = a->cap ? a->cap * 2 : 32;
        char **v = realloc(a->v, sizeof(*v) * (size_t)cap);
        if (!v) {
            a->failed = true;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(&a->v[a->n], fmt, ap);
    va_end(ap);
    if (r < 0) {
        a->failed = true;
        return;
    }
    a->v[++a->n] = NULL;
}

static char **finish(Argv *a, Error *err)
{
    if (a->failed || !a->v) {
        if (a->v) {
            a->v[a->n] = NULL;
        }
        vm_argv_free(a->v);
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    return a->v;
}

/* s with every comma doubled (static rotation of buffers is not
 * thread-safe and not needed: callers free). */
static char *esc(const char *s)
{
    size_t n = strlen(s), commas = 0;
    for (size_t i = 0; i < n; i++) {
        commas += s[i] == ',';
    }
    char *out = malloc(n + commas + 1);
    if (!out) {
        return NULL;
    }
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        *p++ = s[i];
        if (s[i] == ',') {
            *p++ = ',';
        }
    }
    *p = 0;
    return out;
}

int vm_disk_parse(const char *spec, VmDisk *d, Error *err)
{
    memset(d, 0, sizeof(*d));
    KVList l = { 0 };
    int ret = kvlist_parse(&l, spec, "file", err);
    const char *file = ret == 0 ? kvlist_get(&l, "file") : NULL;
    if (ret == 0 && (!file || !*file)) {
        ret = error_setf(err, EINVAL, "--disk '%s': no image named", spec);
    }
    const char *bus = ret == 0 ? kvlist_get(&l, "bus") : NULL;
    if (bus && strcmp(bus, "blk") == 0) {
        d->bus = VM_BUS_BLK;
    } else if (bus && strcmp(bus, "scsi") == 0) {
        d->bus = VM_BUS_SCSI;
    } else if (bus) {
        ret = error_setf(err, EINVAL, "--disk %s: bus must be blk or scsi, "
                         "not '%s'", file, bus);
    }
    if (ret == 0) {
        ret = kvlist_get_bool(&l, "readonly", false, &d->readonly, err);
    }
    if (ret == 0) {
        ret = kvlist_get_bool(&l, "writethrough", false, &d->writethrough,
                              err);
    }
    const char *fmt = ret == 0 ? kvlist_get(&l, "format") : NULL;
    if (ret == 0) {
        ret = kvlist_check_unused(&l, "--disk", err);
    }
    if (ret == 0) {
        d->name = strdup(file);
        d->filename = strdup(file);
        d->format = fmt ? strdup(fmt) : NULL;
        if (!d->name || !d->filename || (fmt && !d->format)) {
            ret = error_setf(err, ENOMEM, "out of memory");
        }
    }
    kvlist_free(&l);
    if (ret < 0) {
        vm_disk_clear(d);
    }
    return ret;
}

void vm_disk_clear(VmDisk *d)
{
    free(d->name);
    free(d->filename);
    free(d->format);
    kvlist_free(&d->opts);
    memset(d, 0, sizeof(*d));
}

int vm_memory_parse(const char *s, uint64_t *bytes, Error *err)
{
    uint64_t v;
    size_t n = strlen(s);
    bool plain = n > 0 && s[n - 1] >= '0' && s[n - 1] <= '9';
    if (parse_size(s, &v) < 0 || v == 0) {
        return error_setf(err, EINVAL, "--memory '%s': a size expected "
                          "(512, 512M, 2G)", s);
    }
    if (plain) {
        if (v > (UINT64_MAX >> 20)) {
            return error_setf(err, ERANGE, "--memory '%s' is too large", s);
        }
        v <<= 20;
    }
    if (v % (1 << 20)) {
        return error_setf(err, EINVAL, "--memory '%s': a whole number of "
                          "MiB expected", s);
    }
    *bytes = v;
    return 0;
}

char *vm_qmp_path(const VmConfig *c)
{
    char *p = NULL;
    return asprintf(&p, "%s/qmp.sock", c->run_dir) < 0 ? NULL : p;
}

static char *blk_socket(const VmConfig *c, int i)
{
    char *p = NULL;
    return asprintf(&p, "%s/disk%d.sock", c->run_dir, i) < 0 ? NULL : p;
}

static char *scsi_socket(const VmConfig *c)
{
    char *p = NULL;
    return asprintf(&p, "%s/scsi.sock", c->run_dir) < 0 ? NULL : p;
}

char **vm_serve_argv(const VmConfig *c, Error *err)
{
    Argv a = { 0 };
    add(&a, "%s", c->imgtool);
    add(&a, "serve");
    char *scsi = scsi_socket(c), *escsi = scsi ? esc(scsi) : NULL;
    int lun = 0;
    for (int i = 0; i < c->ndisks; i++) {
        const VmDisk *d = &c->disks[i];
        char *f = esc(d->filename), *fmt = esc(d->format ? d->format : "raw");
        char *extra = strdup("");
        for (size_t k = 0; extra && k < d->opts.n; k++) {
            char *v = esc(d->opts.items[k].value ? d->opts.items[k].value
                                                 : "");
            char *next = NULL;
            if (v && asprintf(&next, "%s,%s=%s", extra, d->opts.items[k].key,
                              v) < 0) {
                next = NULL;
            }
            free(v);
            free(extra);
            extra = next;
        }
        if (!f || !fmt || !extra) {
            a.failed = true;
        }
        add(&a, "--blockdev");
        add(&a, "driver=%s,node-name=disk%d,file.filename=%s%s%s", fmt, i,
            f ? f : "", extra ? extra : "", d->readonly ? ",read-only=on"
                                                         : "");
        add(&a, "--export");
        if (d->bus == VM_BUS_BLK) {
            char *s = blk_socket(c, i), *es = s ? esc(s) : NULL;
            add(&a, "type=vhost-user-blk,id=disk%d,node-name=disk%d,"
                "addr.type=unix,addr.path=%s,writable=%s,num-queues=%d%s",
                i, i, es ? es : "", d->readonly ? "off" : "on", c->cpus,
                d->writethrough ? ",writethrough=on" : "");
            a.failed |= !es;
            free(s);
            free(es);
        } else {
            add(&a, "type=vhost-user-scsi,id=disk%d,node-name=disk%d,"
                "addr.type=unix,addr.path=%s,writable=%s,lun=%d,"
                "num-queues=%d%s", i, i, escsi ? escsi : "",
                d->readonly ? "off" : "on", lun++, c->cpus,
                d->writethrough ? ",writethrough=on" : "");
            a.failed |= !escsi;
        }
        free(f);
        free(fmt);
        free(extra);
    }
    char *qmp = vm_qmp_path(c), *eqmp = qmp ? esc(qmp) : NULL;
    add(&a, "--chardev");
    add(&a, "socket,id=qmp,path=%s,server=on,wait=off", eqmp ? eqmp : "");
    add(&a, "--monitor");
    add(&a, "chardev=qmp");
    a.failed |= !eqmp;
    free(qmp);
    free(eqmp);
    free(scsi);
    free(escsi);
    return finish(&a, err);
}

char **vm_qemu_argv(const VmConfig *c, Error *err)
{
    Argv a = { 0 };
    uint64_t mib = c->memory >> 20;
    add(&a, "%s", c->qemu);
    add(&a, "-name");
    add(&a, "imgtool-run");
    add(&a, "-accel");
    add(&a, "%s", c->kvm ? "kvm" : "tcg");
    add(&a, "-cpu");
    add(&a, "%s", c->kvm ? "host" : "max");
    /* vhost-user back ends map guest memory: it must be a shared fd. */
    add(&a, "-object");
    add(&a, "memory-backend-memfd,id=mem,size=%lluM,share=on",
        (unsigned long long)mib);
    add(&a, "-machine");
    add(&a, "q35,memory-backend=mem");
    add(&a, "-m");
    add(&a, "%lluM", (unsigned long long)mib);
    add(&a, "-smp");
    add(&a, "%d", c->cpus);
    add(&a, "-nodefaults");
    add(&a, "-no-user-config");
    add(&a, "-display");
    add(&a, "none");
    add(&a, "-serial");
    add(&a, "stdio");
    if (c->kernel) {
        add(&a, "-kernel");
        add(&a, "%s", c->kernel);
    }
    if (c->initrd) {
        add(&a, "-initrd");
        add(&a, "%s", c->initrd);
    }
    if (c->append) {
        add(&a, "-append");
        add(&a, "%s", c->append);
    }
    bool boot = !c->kernel;
    bool have_scsi = false;
    for (int i = 0; i < c->ndisks; i++) {
        if (c->disks[i].bus == VM_BUS_SCSI) {
            have_scsi = true;
            continue;
        }
        char *s = blk_socket(c, i), *es = s ? esc(s) : NULL;
        add(&a, "-chardev");
        add(&a, "socket,id=vhost%d,path=%s,reconnect=1", i, es ? es : "");
        add(&a, "-device");
        add(&a, "vhost-user-blk-pci,chardev=vhost%d,num-queues=%d%s", i,
            c->cpus, boot ? ",bootindex=0" : "");
        boot = false;
        a.failed |= !es;
        free(s);
        free(es);
    }
    if (have_scsi) {
        char *s = scsi_socket(c), *es = s ? esc(s) : NULL;
        add(&a, "-chardev");
        add(&a, "socket,id=vhostscsi,path=%s", es ? es : "");
        add(&a, "-device");
        add(&a, "vhost-user-scsi-pci,chardev=vhostscsi,num_queues=%d%s",
            c->cpus, boot ? ",bootindex=0" : "");
        a.failed |= !es;
        free(s);
        free(es);
    }
    for (int i = 0; i < c->nextra; i++) {
        add(&a, "%s", c->extra[i]);
    }
    return finish(&a, err);
}

void vm_argv_free(char **argv)
{
    for (int i = 0; argv && argv[i]; i++) {
        free(argv[i]);
    }
    free(argv);
}

char *vm_argv_join(char *const *argv)
{
    size_t len = 1;
    for (int i = 0; argv[i]; i++) {
        len += 4 * strlen(argv[i]) + 3;
    }
    char *out = malloc(len), *p = out;
    if (!out) {
        return NULL;
    }
    for (int i = 0; argv[i]; i++) {
        const char *s = argv[i];
        bool plain = *s != 0;
        for (const char *q = s; *q && plain; q++) {
            plain = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                           "0123456789-_=,./:+@%", *q) != NULL;
        }
        if (i > 0) {
            *p++ = ' ';
        }
        if (plain) {
            p = stpcpy(p, s);
            continue;
        }
        *p++ = '\'';
        for (; *s; s++) {
            if (*s == '\'') {
                p = stpcpy(p, "'\\''");
            } else {
                *p++ = *s;
            }
        }
        *p++ = '\'';
    }
    *p = 0;
    return out;
}
