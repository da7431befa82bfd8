/*
 * netlib.c - loading libiscsi and libgfapi when first needed
 * (iscsi-lib.h, gluster-lib.h say why): each once per process, every
 * function looked up, and one line naming the Debian package when the
 * library or a function is missing.  A library loaded stays loaded.
 */
#define ISCSI_LIB_IMPL
#define GLUSTER_LIB_IMPL

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "block/protocol/gluster-lib.h"
#include "block/protocol/iscsi-lib.h"

IscsiLib iscsi_lib;
GlusterLib gluster_lib;

typedef struct Loader {
    pthread_once_t once;
    int ret;
    char msg[512];
} Loader;

static Loader iscsi_loader = { .once = PTHREAD_ONCE_INIT };
static Loader gluster_loader = { .once = PTHREAD_ONCE_INIT };

#ifdef IMGTOOL_NETLIBS_LINKED
/* Sanitizer builds link both libraries (meson.build says why): the
 * tables take the functions' addresses, which also keeps the linker from
 * dropping the libraries as unused. */
static void load_iscsi(void)
{
#define X(f) iscsi_lib.f = f;
    ISCSI_LIB_FUNCTIONS(X)
#undef X
}

static void load_gluster(void)
{
#define X(f) gluster_lib.f = f;
    GLUSTER_LIB_FUNCTIONS(X)
#undef X
}
#else
/* Opens the first of names that loads; fills msg on failure. */
static void *open_lib(const char *const *names, Loader *l, const char *pkg)
{
    for (int i = 0; names[i]; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) {
            return h;
        }
    }
    const char *why = dlerror();
    snprintf(l->msg, sizeof(l->msg), "%s is not installed (package %s): %s",
             names[0], pkg, why ? why : "not found");
    l->ret = -ENOENT;
    return NULL;
}

static bool lookup(void *h, const char *name, void **slot, Loader *l)
{
    *slot = dlsym(h, name);
    if (!*slot) {
        snprintf(l->msg, sizeof(l->msg), "%s has no function %s: the "
                 "installed version is too old", "the library", name);
        l->ret = -ENOSYS;
    }
    return *slot != NULL;
}

static void load_iscsi(void)
{
    static const char *const names[] = { "libiscsi.so.7", "libiscsi.so.9",
                                         "libiscsi.so", NULL };
    void *h = open_lib(names, &iscsi_loader, "libiscsi7");
    if (!h) {
        return;
    }
#define X(f) if (!lookup(h, #f, (void **)&iscsi_lib.f, &iscsi_loader)) { \
        return;                                                          \
    }
    ISCSI_LIB_FUNCTIONS(X)
#undef X
}

static void load_gluster(void)
{
    static const char *const names[] = { "libgfapi.so.0", "libgfapi.so",
                                         NULL };
    void *h = open_lib(names, &gluster_loader, "libgfapi0");
    if (!h) {
        return;
    }
#define X(f) if (!lookup(h, #f, (void **)&gluster_lib.f, &gluster_loader)) { \
        return;                                                              \
    }
    GLUSTER_LIB_FUNCTIONS(X)
#undef X
}
#endif

int iscsi_lib_load(Error *err)
{
    pthread_once(&iscsi_loader.once, load_iscsi);
    if (iscsi_loader.ret < 0) {
        return error_setf(err, -iscsi_loader.ret, "iSCSI: %s",
                          iscsi_loader.msg);
    }
    return 0;
}

int gluster_lib_load(Error *err)
{
    pthread_once(&gluster_loader.once, load_gluster);
    if (gluster_loader.ret < 0) {
        return error_setf(err, -gluster_loader.ret, "Gluster: %s",
                          gluster_loader.msg);
    }
    return 0;
}
