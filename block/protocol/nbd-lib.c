/*
 * nbd-lib.c - loading libnbd on first use (see nbd-client.h): every
 * function the driver calls is looked up once, by name, in libnbd.so.0.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "block/protocol/nbd-client.h"

#define LIBNBD_SONAME "libnbd.so.0"

NbdLib nbdlib;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[512];

static void load(void)
{
    void *h = dlopen(LIBNBD_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(failure, sizeof(failure), "NBD needs libnbd (%s): %s",
                 LIBNBD_SONAME, dlerror());
        return;
    }
#define NBD_LIB_LOAD(f)                                                  \
    if (!failure[0] && !(*(void **)&nbdlib.f = dlsym(h, #f))) {         \
        snprintf(failure, sizeof(failure), "%s lacks %s: install "       \
                 "libnbd 1.14 or newer", LIBNBD_SONAME, #f);             \
    }
    NBD_LIB_FUNCS(NBD_LIB_LOAD)
#undef NBD_LIB_LOAD
    /* The library stays loaded for the life of the process. */
}

int nbd_lib_load(Error *err)
{
    pthread_once(&once, load);
    if (failure[0]) {
        return error_setf(err, ENOSYS, "%s", failure);
    }
    return 0;
}
