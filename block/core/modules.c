/*
 * modules.c - drivers built as loadable modules.
 *
 * The libraries behind network protocols are large (linked in, libiscsi,
 * libgfapi and libnbd each add megabytes of resident memory and their
 * relocation time to every run, most of which never touch them), so
 * their drivers are shared modules, linked normally against their
 * library and loaded the first time something names them: by driver name
 * or by a URL prefix (block/core/drivers.c lists both), or by a pool that
 * asks for the module's ops.  A module exports imgtool_block_module_driver
 * (the driver it holds) and may export imgtool_block_module_ops (what
 * else callers ask of it, such as a pool's questions to an iSCSI target;
 * the type is the module's own header's); the core's symbols it uses come
 * from the program that loads it (linked with export_dynamic).  A module
 * may also be ops only, without a driver: pools' XML readers, so that
 * libxml2 (with ICU and libstdc++) is mapped only by what reads XML.
 *
 * Where a module is looked for: $IMGTOOL_MODULE_DIR, then "modules" next
 * to the running executable (the build tree, so tests run from build/),
 * then the install directory (IMGTOOL_MODULE_INSTALL_DIR).  The first
 * file found is the one used: a module there that does not load is an
 * error, not a reason to try an older one elsewhere.  Loaded, it stays
 * loaded; failed, it is not tried again, and its one-line reason is what
 * every later use reports.  A module calls the core through symbols the
 * program exports: the imgtool executable exports them all, libimgtool.so
 * those the modules use (under a private version, lib/libimgtool.map).
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/core/modules.h"

#ifndef IMGTOOL_MODULE_INSTALL_DIR
#define IMGTOOL_MODULE_INSTALL_DIR "/usr/lib/imgtool"
#endif

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;

const BlockModule *block_module_named(const char *name)
{
    for (int i = 0; name && block_module_list[i].name; i++) {
        if (strcmp(block_module_list[i].name, name) == 0) {
            return &block_module_list[i];
        }
    }
    return NULL;
}

const BlockModule *block_module_owning(const char *filename)
{
    for (int i = 0; filename && block_module_list[i].name; i++) {
        const BlockModule *m = &block_module_list[i];
        for (int k = 0; m->prefixes[k]; k++) {
            if (strncmp(filename, m->prefixes[k],
                        strlen(m->prefixes[k])) == 0) {
                return m;
            }
        }
    }
    return NULL;
}

/* The directory of the running executable plus "/modules", or "". */
static void build_tree_dir(char *out, size_t size)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    out[0] = '\0';
    if (n <= 0) {
        return;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
        *slash = '\0';
        if (snprintf(out, size, "%s/modules", exe) >= (int)size) {
            out[0] = '\0';
        }
    }
}

/* Fills path with the first imgtool-NAME.so found; false (and where it
 * looked, in st->error) when there is none. */
static bool find_module(const BlockModule *m, char *path, size_t size)
{
    char here[PATH_MAX];
    build_tree_dir(here, sizeof(here));
    const char *env = getenv("IMGTOOL_MODULE_DIR");
    const char *dirs[] = { env && *env ? env : NULL, here[0] ? here : NULL,
                           IMGTOOL_MODULE_INSTALL_DIR };
    char looked[PATH_MAX * 2] = "";
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (!dirs[i]) {
            continue;
        }
        if (snprintf(path, size, "%s/imgtool-%s.so", dirs[i], m->name) <
                (int)size && access(path, F_OK) == 0) {
            return true;
        }
        size_t len = strlen(looked);
        snprintf(looked + len, sizeof(looked) - len, "%s%s",
                 len ? ", " : "", dirs[i]);
    }
    snprintf(m->state->error, sizeof(m->state->error),
             "the %s %s imgtool-%s.so is not installed (looked in %.400s)",
             m->name, m->ops_only ? "module" : "driver's module", m->name,
             looked);
    return false;
}

static void load(const BlockModule *m)
{
    BlockModuleState *st = m->state;
    /* A module calls the core through the program's exported symbols; a
     * program that links the core statically without exporting it cannot
     * host modules, and says so rather than reporting a missing symbol. */
    if (!dlsym(RTLD_DEFAULT, "block_module_ops")) {
        snprintf(st->error, sizeof(st->error), "the %s driver is a module "
                 "this program cannot load (it does not export imgtool's "
                 "core)", m->name);
        return;
    }
    char path[PATH_MAX];
    if (!find_module(m, path, sizeof(path))) {
        return;
    }
    dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        /* dlerror names the module itself when it is broken, or the
         * library it needs when that is missing. */
        const char *why = dlerror();
        snprintf(st->error, sizeof(st->error), "cannot load the %s driver: "
                 "%.400s (the module needs %s, package %s)", m->name,
                 why ? why : path, m->library, m->package);
        return;
    }
    const BlockDriver *const *pp = dlsym(h, "imgtool_block_module_driver");
    const void *const *ops = dlsym(h, "imgtool_block_module_ops");
    const BlockDriver *d = pp ? *pp : NULL;
    if (m->ops_only) {
        if (d || !ops) {
            snprintf(st->error, sizeof(st->error), "%.400s is not imgtool's "
                     "%s module", path, m->name);
        } else {
            st->ops = *ops;
            st->loaded = true;
            return;
        }
    } else if (!d || strcmp(d->name, m->name) != 0) {
        snprintf(st->error, sizeof(st->error), "%.400s is not the imgtool "
                 "module of the %s driver", path, m->name);
    } else if (d->api_version != BLOCK_DRIVER_API_VERSION) {
        snprintf(st->error, sizeof(st->error), "%.400s was built for another "
                 "imgtool (driver API %d, this one has %d)", path,
                 d->api_version, BLOCK_DRIVER_API_VERSION);
    } else {
        st->driver = d;
        st->ops = ops ? *ops : NULL;
        st->loaded = true;
        return;
    }
    dlclose(h);
}

const BlockDriver *block_module_load(const BlockModule *m)
{
    pthread_mutex_lock(&modules_lock);
    if (!m->state->tried) {
        load(m);
        m->state->tried = true;
    }
    const BlockDriver *d = m->state->driver;
    pthread_mutex_unlock(&modules_lock);
    return d;
}

const char *block_module_error(const BlockModule *m)
{
    pthread_mutex_lock(&modules_lock);
    const char *why = m->state->tried && !m->state->loaded ?
                      m->state->error : NULL;
    pthread_mutex_unlock(&modules_lock);
    return why;
}

int block_module_ops(const char *driver, const void **ops, Error *err)
{
    const BlockModule *m = block_module_named(driver);
    *ops = NULL;
    if (!m) {
        return error_setf(err, ENOENT, "no driver module named '%s'",
                          driver);
    }
    block_module_load(m);
    const char *why = block_module_error(m);
    if (why) {
        return error_setf(err, ENOENT, "%s", why);
    }
    if (!m->state->ops) {
        return error_setf(err, ENOSYS, "the %s driver's module has no "
                          "operations besides the driver", driver);
    }
    *ops = m->state->ops;
    return 0;
}

int block_module_driver_error(const char *drvname, const char *filename,
                              Error *err)
{
    const BlockModule *m = drvname ? block_module_named(drvname)
                                   : block_module_owning(filename);
    const char *why = m ? block_module_error(m) : NULL;
    if (why) {
        return error_setf(err, ENOENT, "%s", why);
    }
    return 0;
}
