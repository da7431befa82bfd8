/*
 * modules.c - drivers built as loadable modules.
 *
 * The libraries behind network protocols are large (linked in, libiscsi,
 * libgfapi and libnbd each add megabytes of resident memory to every run,
 * most of which never touch them), so their drivers are shared modules
 * loaded the first time something names them: by driver name or by a URL
 * prefix (block/core/drivers.c lists both).  A module exports one symbol,
 * imgtool_block_module_driver, the driver it holds; the core's symbols it
 * uses come from the program that loads it.
 *
 * Where modules are looked for: $IMGTOOL_MODULE_DIR, then "modules" next
 * to the running executable (the build tree), then the install directory
 * (IMGTOOL_MODULE_INSTALL_DIR).  A module that cannot be loaded is an
 * unknown driver, with the loader's reason in the error.
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
static char last_error[256];

static void *try_open(const char *dir, const char *module)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/imgtool-%s.so", dir, module) >=
        (int)sizeof(path)) {
        return NULL;
    }
    if (access(path, R_OK) != 0) {
        return NULL;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(last_error, sizeof(last_error), "%s", dlerror());
    }
    return h;
}

static void *open_module(const char *module)
{
    const char *env = getenv("IMGTOOL_MODULE_DIR");
    void *h = env && *env ? try_open(env, module) : NULL;
    if (!h) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash) {
                strcpy(slash, "/modules");
                h = try_open(exe, module);
            }
        }
    }
    if (!h) {
        h = try_open(IMGTOOL_MODULE_INSTALL_DIR, module);
    }
    return h;
}

const BlockDriver *block_module_load(const BlockModule *m)
{
    pthread_mutex_lock(&modules_lock);
    if (!*m->loaded) {
        last_error[0] = '\0';
        void *h = open_module(m->module);
        const BlockDriver *const *pp =
            h ? dlsym(h, "imgtool_block_module_driver") : NULL;
        const BlockDriver *d = pp ? *pp : NULL;
        if (d && d->api_version == BLOCK_DRIVER_API_VERSION &&
            strcmp(d->name, m->name) == 0) {
            *m->loaded = d;   /* stays loaded: nodes point into it */
        } else if (h) {
            dlclose(h);
        }
    }
    const BlockDriver *d = *m->loaded;
    pthread_mutex_unlock(&modules_lock);
    return d;
}

const char *block_module_error(void)
{
    return last_error[0] ? last_error : NULL;
}
