/*
 * extsnap.c - external snapshots: a backing chain used as a list of
 * saved states, with create, revert, delete and list.
 *
 * The active image (the path the VM uses, e.g. disk.qcow2) never moves.
 * Taking snapshot NAME freezes the active content under a new name
 * (<dir>/<stem>.NAME.qcow2 by default) and makes the active path a fresh
 * empty overlay on it; reverting makes the active path a fresh overlay on
 * an older layer and deletes the layers above it; deleting a layer first
 * copies what it holds into the layer above (a safe rebase), then drops
 * it.  A layer's name is derived from its file name, so nothing but the
 * chain itself records the snapshots.
 *
 * Invariants, whatever moment a process is killed at:
 *  - the active path names either the old image or the complete new one:
 *    a new overlay is written and synced under a temporary name and moved
 *    in with rename(2); a frozen image gets its new name with link(2)
 *    before the active path changes, so no moment lacks either;
 *  - no file still named by the chain is ever deleted: files to drop are
 *    first listed in a journal next to the active image, and whoever
 *    holds the active image next deletes only those no longer in its
 *    chain;
 *  - every file that must not change under us is locked: the active
 *    image with the writer lock (so QEMU and other imgtool runs refuse
 *    it), files to delete with the writer lock until they are gone (or,
 *    for a layer that -d drops, until the rebase opens it), so nobody, not
 *    even a reader using one as a backing file, has them open; the kept
 *    layers with reader locks.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "block/block.h"

#define EXTSNAP_MAX_LAYERS 66
#define EXTSNAP_MAX_NAME 200

typedef struct Layer {
    BlockNode *node;     /* in the discovery chain */
    char *name;          /* derived from the file name */
    struct stat st;
    bool has_st;
} Layer;

/* One operation on the chain of one active image. */
typedef struct Ctx {
    const char *active;  /* as given */
    char *dir;           /* its directory ("." when none given) */
    char *base;          /* its file name */
    char *stem;          /* base without its last extension */
    char *tmp;           /* <dir>/.<base>.extsnap-tmp: overlay in making */
    char *journal;       /* <dir>/.<base>.extsnap-discard: files to drop */
    BlockNode *hold;     /* writer lock on the active image, or NULL */
    BlockNode *top;      /* the chain, read-only */
    Layer layers[EXTSNAP_MAX_LAYERS];
    int n;
} Ctx;

/* ------------------------------------------------------------------ */
/* Names                                                               */

static char *xstrndup(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = '\0';
    }
    return r;
}

static char *xasprintf(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *r = NULL;
    if (vasprintf(&r, fmt, ap) < 0) {
        r = NULL;
    }
    va_end(ap);
    return r;
}

static const char *basename_of(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static char *dirname_of(const char *path)
{
    const char *s = strrchr(path, '/');
    if (!s) {
        return strdup(".");
    }
    return s == path ? strdup("/") : xstrndup(path, (size_t)(s - path));
}

/* "disk.qcow2" -> "disk"; a name without an extension is its own stem. */
static char *stem_of(const char *base)
{
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base) {
        return strdup(base);
    }
    return xstrndup(base, (size_t)(dot - base));
}

/* The snapshot name a layer file stands for: NAME for
 * "<stem>.NAME.qcow2" (what -c makes), else the file name without its
 * extension. */
static char *layer_name(const char *stem, const char *file)
{
    const char *b = basename_of(file);
    size_t sl = strlen(stem), bl = strlen(b), el = strlen(".qcow2");
    if (bl > sl + 1 + el && strncmp(b, stem, sl) == 0 && b[sl] == '.' &&
        strcmp(b + bl - el, ".qcow2") == 0) {
        return xstrndup(b + sl + 1, bl - sl - 1 - el);
    }
    return stem_of(b);
}

static int check_name(const char *name, Error *err)
{
    size_t len = strlen(name);
    if (len == 0 || len > EXTSNAP_MAX_NAME) {
        return error_setf(err, EINVAL, "a snapshot name must have 1 to %d "
                          "characters", EXTSNAP_MAX_NAME);
    }
    if (name[0] == '.' || strchr(name, '/')) {
        return error_setf(err, EINVAL, "a snapshot name must not contain "
                          "'/' nor start with '.'");
    }
    for (const char *p = name; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            return error_setf(err, EINVAL, "a snapshot name must not "
                              "contain control characters");
        }
    }
    return 0;
}

/* The name an image at `overlay` must store to find `target`: the bare
 * file name when both sit in the same directory (the pair can then move
 * together), else target's absolute path. */
static char *backing_name_for(const char *overlay, const char *target)
{
    char *od = dirname_of(overlay), *td = dirname_of(target);
    char *ro = od ? realpath(od, NULL) : NULL;
    char *rt = td ? realpath(td, NULL) : NULL;
    char *r = NULL;
    if (ro && rt) {
        if (strcmp(ro, rt) == 0) {
            r = strdup(basename_of(target));
        } else {
            r = xasprintf("%s%s%s", rt, strcmp(rt, "/") ? "/" : "",
                          basename_of(target));
        }
    }
    free(od);
    free(td);
    free(ro);
    free(rt);
    return r;
}

/* path with its directory made absolute, the last component kept as it
 * is (a symlink is dropped as a name, never the file it points at). */
static char *abs_name(const char *path)
{
    char *d = dirname_of(path);
    char *rd = d ? realpath(d, NULL) : NULL;
    char *r = rd ? xasprintf("%s%s%s", rd, strcmp(rd, "/") ? "/" : "",
                             basename_of(path))
                 : NULL;
    free(d);
    free(rd);
    return r;
}

static bool same_inode(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* ------------------------------------------------------------------ */
/* Durability                                                          */

static int sync_path(const char *path, bool dir)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | (dir ? O_DIRECTORY : 0));
    if (fd < 0) {
        return -errno;
    }
    int ret = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    /* Some file systems cannot sync a directory; the rename still is
     * atomic there, only its durability is the file system's. */
    if (dir && (ret == -EINVAL || ret == -EBADF)) {
        ret = 0;
    }
    return ret;
}

static int sync_dir_of(const char *path, Error *err)
{
    char *d = dirname_of(path);
    if (!d) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = sync_path(d, true);
    if (ret < 0) {
        error_setf(err, -ret, "Could not sync directory '%s': %s", d,
                   strerror(-ret));
    }
    free(d);
    return ret;
}

/* ------------------------------------------------------------------ */
/* The chain                                                           */

static void ctx_free(Ctx *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->layers[i].name);
    }
    c->n = 0;
    block_close(c->top);
    block_close(c->hold);
    free(c->dir);
    free(c->base);
    free(c->stem);
    free(c->tmp);
    free(c->journal);
    memset(c, 0, sizeof(*c));
}

static int ctx_names(Ctx *c, const char *active, Error *err)
{
    struct stat st;
    c->active = active;
    if (strstr(active, "://")) {
        /* The journal, the renames and the directory syncs that make a
         * switch atomic are local file system operations. */
        return error_setf(err, ENOTSUP, "snapshot --external needs a local "
                          "file; on '%s' take an external snapshot with "
                          "create -b (a new overlay) and merge it with "
                          "commit", active);
    }
    if (lstat(active, &st) < 0) {
        int e = errno;
        return error_setf(err, e, "Could not open '%s': %s", active,
                          strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        return error_setf(err, EINVAL, "'%s' is not a regular file (the "
                          "active image of an external snapshot chain is "
                          "replaced by renaming)", active);
    }
    c->dir = dirname_of(active);
    c->base = strdup(basename_of(active));
    c->stem = c->base ? stem_of(c->base) : NULL;
    if (c->dir) {
        c->tmp = xasprintf("%s/.%s.extsnap-tmp", c->dir, c->base);
        c->journal = xasprintf("%s/.%s.extsnap-discard", c->dir, c->base);
    }
    if (!c->dir || !c->base || !c->stem || !c->tmp || !c->journal) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

/* Opens the chain read-only (flags: BLOCK_O_SHARE / BLOCK_O_NO_LOCK) and
 * names its layers. */
static int ctx_open_chain(Ctx *c, const char *fmt, int flags, Error *err)
{
    c->top = block_open(c->active, fmt, NULL, flags, err);
    if (!c->top) {
        return -(err && err->code ? err->code : EIO);
    }
    for (BlockNode *m = c->top; m; m = block_backing(m)) {
        if (c->n == EXTSNAP_MAX_LAYERS) {
            return error_setf(err, ELOOP, "backing chain too deep");
        }
        Layer *l = &c->layers[c->n++];
        l->node = m;
        l->name = layer_name(c->stem, block_node_filename(m));
        if (!l->name) {
            return error_setf(err, ENOMEM, "out of memory");
        }
        l->has_st = stat(block_node_filename(m), &l->st) == 0;
    }
    return 0;
}

/* Layer index of `name` (a snapshot name, a file name or a path), or -1
 * with err set. */
static int ctx_find(Ctx *c, const char *name, Error *err)
{
    struct stat st;
    bool by_path = strchr(name, '/') && stat(name, &st) == 0;
    int found = -1;
    for (int i = 0; i < c->n; i++) {
        Layer *l = &c->layers[i];
        bool hit = strcmp(l->name, name) == 0 ||
                   strcmp(basename_of(block_node_filename(l->node)), name) == 0 ||
                   (by_path && l->has_st && same_inode(&st, &l->st));
        if (!hit) {
            continue;
        }
        if (found >= 0) {
            error_setf(err, EINVAL, "'%s' names more than one layer ('%s' "
                       "and '%s'); name the file by its path", name,
                       block_node_filename(c->layers[found].node), block_node_filename(l->node));
            return -1;
        }
        found = i;
    }
    if (found < 0) {
        error_setf(err, ENOENT, "no layer named '%s' in the backing chain "
                   "of '%s'", name, c->active);
    }
    return found;
}

static bool in_chain(Ctx *c, const struct stat *st)
{
    for (int i = 0; i < c->n; i++) {
        if (c->layers[i].has_st && same_inode(&c->layers[i].st, st)) {
            return true;
        }
    }
    return false;
}

/* The writer lock on a file, held while the node stays open: nobody else
 * has it open, not even as a backing file. */
static BlockNode *lock_file(const char *path, Error *err)
{
    return block_open_protocol(path, NULL, BLOCK_O_RDWR, err);
}

/* Takes the writer lock on the active image, then opens its chain
 * without locks (the locks that matter are taken per file). */
static int ctx_open_locked(Ctx *c, const char *active, const char *fmt,
                           Error *err)
{
    int ret = ctx_names(c, active, err);
    if (ret < 0) {
        return ret;
    }
    c->hold = lock_file(active, err);
    if (!c->hold) {
        return -(err && err->code ? err->code : EIO);
    }
    return ctx_open_chain(c, fmt, BLOCK_O_NO_LOCK, err);
}

/* ------------------------------------------------------------------ */
/* The journal of files to drop                                        */

static int journal_write(Ctx *c, char **paths, int n, Error *err)
{
    char *tmp = xasprintf("%s.new", c->journal);
    if (!tmp) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    FILE *f = fopen(tmp, "we");
    int ret = 0;
    if (!f) {
        ret = -errno;
    } else {
        for (int i = 0; i < n; i++) {
            fprintf(f, "%s\n", paths[i]);
        }
        if (fflush(f) != 0 || fsync(fileno(f)) < 0) {
            ret = -errno;
        }
        if (fclose(f) != 0 && !ret) {
            ret = -errno;
        }
    }
    if (!ret && rename(tmp, c->journal) < 0) {
        ret = -errno;
    }
    if (ret < 0) {
        unlink(tmp);
        free(tmp);
        return error_setf(err, -ret, "Could not write '%s': %s", c->journal,
                          strerror(-ret));
    }
    free(tmp);
    return sync_dir_of(c->journal, err);
}

/* Calls fn for each file the journal lists that exists and is no longer
 * in the chain. */
static void journal_scan(Ctx *c, void (*fn)(Ctx *, const char *, void *),
                         void *opaque)
{
    FILE *f = fopen(c->journal, "re");
    if (!f) {
        return;
    }
    char line[PATH_MAX + 2];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        struct stat st;
        if (line[0] && stat(line, &st) == 0 && !in_chain(c, &st)) {
            fn(c, line, opaque);
        }
    }
    fclose(f);
}

static void drop_stray(Ctx *c, const char *path, void *opaque)
{
    (void)c;
    (void)opaque;
    Error ignored = { 0 };
    BlockNode *lk = lock_file(path, &ignored);
    if (lk) {
        /* Locked: nobody uses it; it left the chain for good. */
        unlink(path);
        block_close(lk);
        char *d = dirname_of(path);
        if (d) {
            sync_path(d, true);
        }
        free(d);
    }
}

/* Finishes what a killed run left: a half-made overlay, and files that
 * left the chain but were not deleted yet.  Called with the active
 * image's writer lock held, so no other run is between these steps. */
static void ctx_recover(Ctx *c)
{
    unlink(c->tmp);
    journal_scan(c, drop_stray, NULL);
    unlink(c->journal);
    unlink(c->tmp);
}

/* Revert and delete both act on one layer below the active image: holds
 * the active image's lock, finishes a killed run's leftovers, and returns
 * the index (> 0) of the layer `name` names, or a negative errno. */
static int ctx_open_layer(Ctx *c, const char *active, const char *fmt,
                          const char *name, Error *err)
{
    int ret = ctx_open_locked(c, active, fmt, err);
    if (ret < 0) {
        return ret;
    }
    ctx_recover(c);
    int k = ctx_find(c, name, err);
    if (k < 0) {
        return -(err && err->code ? err->code : ENOENT);
    }
    if (k == 0) {
        return error_setf(err, EINVAL, "'%s' is the active image",
                          block_node_filename(c->layers[0].node));
    }
    return k;
}

/* ------------------------------------------------------------------ */
/* Overlays                                                            */

/* Creates c->tmp: an empty qcow2 overlay of `size` bytes on the image
 * `backing` will name (it need not exist yet), synced to disk. */
static int make_overlay(Ctx *c, const char *backing, const char *fmt,
                        uint64_t size, uint64_t cluster_size, Error *err)
{
    KVList o = { 0 };
    char cs[32];
    int ret = kvlist_set(&o, "backing_file", backing);
    if (ret >= 0) {
        ret = kvlist_set(&o, "backing_fmt", fmt);
    }
    if (ret >= 0 && cluster_size) {
        snprintf(cs, sizeof(cs), "%llu", (unsigned long long)cluster_size);
        ret = kvlist_set(&o, "cluster_size", cs);
    }
    if (ret < 0) {
        kvlist_free(&o);
        return error_setf(err, ENOMEM, "out of memory");
    }
    unlink(c->tmp);
    ret = block_create("qcow2", c->tmp, size, true, &o,
                       BLOCK_CREATE_UNSAFE | BLOCK_CREATE_QUIET, err);
    kvlist_free(&o);
    if (ret >= 0 && c->n && c->layers[0].has_st) {
        /* The VM opens the new image as it opened the old one (e.g. a
         * 0600 file owned by the qemu user). */
        const struct stat *st = &c->layers[0].st;
        if (chown(c->tmp, st->st_uid, st->st_gid) < 0 && errno != EPERM) {
            ret = -errno;
        }
        if (ret >= 0 && chmod(c->tmp, st->st_mode & 07777) < 0) {
            ret = -errno;
        }
        if (ret < 0) {
            error_setf(err, -ret, "Could not set the owner or mode of "
                       "'%s': %s", c->tmp, strerror(-ret));
        }
    }
    if (ret >= 0) {
        ret = sync_path(c->tmp, false);
        if (ret < 0) {
            error_setf(err, -ret, "Could not sync '%s': %s", c->tmp,
                       strerror(-ret));
        }
    }
    if (ret < 0) {
        unlink(c->tmp);
    }
    return ret;
}

/* The switch: the finished overlay becomes the active image. */
static int install_overlay(Ctx *c, Error *err)
{
    if (rename(c->tmp, c->active) < 0) {
        int e = errno;
        unlink(c->tmp);
        return error_setf(err, e, "Could not rename '%s' to '%s': %s",
                          c->tmp, c->active, strerror(e));
    }
    /* Done once renamed: a failed directory sync cannot undo it, and
     * reporting failure would make the caller treat it as not done. */
    sync_dir_of(c->active, NULL);
    return 0;
}

static uint64_t cluster_size_of(BlockNode *n)
{
    BlockInfoExtra x;
    block_get_info_extra(n, &x);
    return x.cluster_size;
}

/* A relative backing name only holds in the active image's directory:
 * before the active image is frozen under another one, its backing name
 * becomes absolute (one header write: the old or the new name, both
 * right).  We hold the writer lock, so this open takes none. */
static int absolute_backing(Ctx *c, const char *frozen, Error *err)
{
    BlockNode *top = c->top;
    const char *b = block_node_backing_file(top);
    if (!b || !*b || b[0] == '/' || strstr(b, "://")) {
        return 0;
    }
    char *same = backing_name_for(c->active, frozen);
    bool moved = same && strchr(same, '/');
    free(same);
    if (!moved) {
        return 0;
    }
    char *abs = abs_name(block_node_full_backing_filename(top));
    if (!abs) {
        return error_setf(err, ENOMEM, "Could not resolve '%s'",
                          block_node_full_backing_filename(top));
    }
    BlockNode *w = block_open(c->active, block_node_format(top), NULL,
                              BLOCK_O_RDWR | BLOCK_O_NO_BACKING |
                              BLOCK_O_NO_LOCK, err);
    int ret = w ? block_change_backing_file(w, abs, block_node_backing_format(top), err)
                : -(err && err->code ? err->code : EIO);
    if (ret >= 0) {
        ret = block_flush(w);
        if (ret < 0) {
            error_setf(err, -ret, "Could not flush '%s'", c->active);
        }
    }
    block_close(w);
    free(abs);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Operations                                                          */

int block_extsnap_create(const char *active, const char *fmt,
                         const char *name, const char *file, Error *err)
{
    Ctx c = { 0 };
    char *frozen = NULL, *bname = NULL;
    int ret = check_name(name, err);
    if (ret < 0) {
        return ret;
    }
    ret = ctx_open_locked(&c, active, fmt, err);
    if (ret < 0) {
        goto out;
    }
    ctx_recover(&c);
    BlockNode *top = c.top;
    if (strcmp(block_node_format(top), "qcow2") != 0) {
        ret = error_setf(err, ENOTSUP, "'%s' is a %s image; the active "
                         "image of an external snapshot chain must be "
                         "qcow2", active, block_node_format(top));
        goto out;
    }
    if (block_node_has_data_file(top)) {
        ret = error_setf(err, ENOTSUP, "'%s' has an external data file, "
                         "which external snapshots do not support", active);
        goto out;
    }
    for (int i = 0; i < c.n; i++) {
        if (strcmp(c.layers[i].name, name) == 0) {
            ret = error_setf(err, EEXIST, "snapshot '%s' already exists "
                             "('%s')", name, block_node_filename(c.layers[i].node));
            goto out;
        }
    }
    frozen = file ? strdup(file) : xasprintf("%s/%s.%s.qcow2", c.dir,
                                             c.stem, name);
    if (!frozen) {
        ret = error_setf(err, ENOMEM, "out of memory");
        goto out;
    }
    if (file) {
        char *derived = layer_name(c.stem, file);
        bool ok = derived && strcmp(derived, name) == 0;
        free(derived);
        if (!ok) {
            ret = error_setf(err, EINVAL, "the file of snapshot '%s' must "
                             "be called '%s.qcow2' or '%s.%s.qcow2' (a "
                             "layer's name comes from its file name)",
                             name, name, c.stem, name);
            goto out;
        }
    }
    char *fa = abs_name(frozen), *aa = abs_name(active);
    bool self = !fa || !aa || strcmp(fa, aa) == 0;
    free(fa);
    free(aa);
    if (self) {
        ret = error_setf(err, EINVAL, "'%s' cannot be frozen as itself",
                         active);
        goto out;
    }
    /* A name that already exists refuses, unless it is the link an
     * interrupted run of this same command left: that is our frozen
     * image already. */
    struct stat fst;
    bool relink = true;
    if (lstat(frozen, &fst) == 0) {
        if (!c.layers[0].has_st || !same_inode(&fst, &c.layers[0].st)) {
            ret = error_setf(err, EEXIST, "'%s' already exists", frozen);
            goto out;
        }
        relink = false;
    }
    bname = backing_name_for(active, frozen);
    if (!bname) {
        ret = error_setf(err, errno ? errno : ENOMEM, "Could not resolve "
                         "the directory of '%s': %s", frozen,
                         strerror(errno ? errno : ENOMEM));
        goto out;
    }
    int64_t len = block_get_length(top);
    if (len < 0) {
        ret = error_setf(err, (int)-len, "Could not get the size of '%s'",
                         active);
        goto out;
    }
    ret = absolute_backing(&c, frozen, err);
    if (ret < 0) {
        goto out;
    }
    /* What the frozen image holds must be on disk before it is frozen. */
    ret = block_flush(c.hold);
    if (ret < 0) {
        error_setf(err, -ret, "Could not flush '%s': %s", active,
                   strerror(-ret));
        goto out;
    }
    ret = make_overlay(&c, bname, "qcow2", (uint64_t)len,
                       cluster_size_of(top), err);
    if (ret < 0) {
        goto out;
    }
    if (relink && link(active, frozen) < 0) {
        int e = errno;
        unlink(c.tmp);
        ret = error_setf(err, e, "Could not link '%s' to '%s': %s%s", active,
                         frozen, strerror(e),
                         e == EXDEV ? " (it must be on the same file system)"
                                    : "");
        goto out;
    }
    /* The layer's date is when it was frozen. */
    utimensat(AT_FDCWD, frozen, NULL, 0);
    ret = sync_dir_of(frozen, err);
    if (ret >= 0) {
        ret = install_overlay(&c, err);
    }
out:
    free(frozen);
    free(bname);
    ctx_free(&c);
    return ret < 0 ? ret : 0;
}

int block_extsnap_revert(const char *active, const char *fmt,
                         const char *name, Error *err)
{
    Ctx c = { 0 };
    BlockNode *locks[EXTSNAP_MAX_LAYERS] = { 0 };
    char *drop[EXTSNAP_MAX_LAYERS] = { 0 };
    struct stat drop_st[EXTSNAP_MAX_LAYERS];
    int ndrop = 0;
    BlockNode *keep = NULL;
    char *bname = NULL;
    int k = ctx_open_layer(&c, active, fmt, name, err);
    int ret = k;
    if (k < 0) {
        goto out;
    }
    /* The layers between the active image and the target are dropped:
     * nobody may have them open. */
    for (int i = 1; i < k; i++) {
        const char *f = block_node_filename(c.layers[i].node);
        locks[i] = lock_file(f, err);
        if (!locks[i]) {
            error_prefixf(err, "layer '%s' is in use", c.layers[i].name);
            ret = -(err && err->code ? err->code : EBUSY);
            goto out;
        }
        drop[ndrop] = abs_name(f);
        if (!drop[ndrop] || !c.layers[i].has_st) {
            ret = error_setf(err, errno ? errno : ENOMEM, "Could not "
                             "resolve '%s'", f);
            goto out;
        }
        drop_st[ndrop++] = c.layers[i].st;
    }
    BlockNode *t = c.layers[k].node;
    keep = block_open(block_node_filename(t), block_node_format(t), NULL, 0, err);
    if (!keep) {
        ret = -(err && err->code ? err->code : EIO);
        goto out;
    }
    int64_t len = block_get_length(keep);
    bname = backing_name_for(active, block_node_filename(t));
    if (len < 0 || !bname) {
        ret = error_setf(err, EIO, "Could not read '%s'", block_node_filename(t));
        goto out;
    }
    ret = make_overlay(&c, bname, block_node_format(t), (uint64_t)len,
                       cluster_size_of(c.top), err);
    if (ret >= 0 && ndrop) {
        ret = journal_write(&c, drop, ndrop, err);
    }
    if (ret >= 0) {
        ret = install_overlay(&c, err);
    }
    if (ret < 0) {
        unlink(c.tmp);
        unlink(c.journal);
        goto out;
    }
    /* Reverted.  Drop what the new chain no longer names (never a file
     * that is also one of the kept layers under another name). */
    for (int i = 0; i < ndrop; i++) {
        bool kept = false;
        for (int j = k; j < c.n; j++) {
            kept |= c.layers[j].has_st &&
                    same_inode(&c.layers[j].st, &drop_st[i]);
        }
        if (!kept && unlink(drop[i]) == 0) {
            char *d = dirname_of(drop[i]);
            if (d) {
                sync_path(d, true);
            }
            free(d);
        }
    }
    if (ndrop) {
        unlink(c.journal);
        sync_dir_of(c.journal, NULL);
    }
    ret = 0;
out:
    for (int i = 0; i < EXTSNAP_MAX_LAYERS; i++) {
        block_close(locks[i]);
        free(drop[i]);
    }
    block_close(keep);
    free(bname);
    ctx_free(&c);
    return ret;
}

int block_extsnap_delete(const char *active, const char *fmt,
                         const char *name, BlockProgressFn *progress,
                         void *opaque, Error *err)
{
    Ctx c = { 0 };
    BlockNode *upper = NULL;
    char *bname = NULL, *bfmt = NULL, *tpath = NULL, *upath = NULL;
    int k = ctx_open_layer(&c, active, fmt, name, err);
    int ret = k;
    if (k < 0) {
        goto out;
    }
    BlockNode *t = c.layers[k].node, *u = c.layers[k - 1].node;
    struct stat tst = c.layers[k].st;
    tpath = abs_name(block_node_filename(t));
    upath = strdup(block_node_filename(u));
    if (!tpath || !upath || !c.layers[k].has_st) {
        ret = error_setf(err, ENOMEM, "Could not resolve '%s'", block_node_filename(t));
        goto out;
    }
    /* The layer above takes over the link to what lies below: the same
     * stored name when both sit in one directory, else a full path. */
    if (block_backing(t)) {
        char *ud = dirname_of(block_node_filename(u)), *td = dirname_of(block_node_filename(t));
        char *rud = ud ? realpath(ud, NULL) : NULL;
        char *rtd = td ? realpath(td, NULL) : NULL;
        if (rud && rtd && strcmp(rud, rtd) == 0) {
            bname = strdup(block_node_backing_file(t));
        } else {
            bname = backing_name_for(block_node_filename(u), block_node_full_backing_filename(t));
        }
        free(ud);
        free(td);
        free(rud);
        free(rtd);
        bfmt = strdup(block_node_backing_format(t) ? block_node_backing_format(t)
                                        : block_node_format(block_backing(t)));
        if (!bname || !bfmt) {
            ret = error_setf(err, ENOMEM, "out of memory");
            goto out;
        }
    }
    /* The dropped layer must be ours alone. */
    BlockNode *probe = lock_file(block_node_filename(t), err);
    if (!probe) {
        error_prefixf(err, "layer '%s' is in use", c.layers[k].name);
        ret = -(err && err->code ? err->code : EBUSY);
        goto out;
    }
    block_close(probe);
    bool shared_inode = false;
    for (int j = 0; j < c.n; j++) {
        shared_inode |= j != k && c.layers[j].has_st &&
                        same_inode(&c.layers[j].st, &tst);
    }
    const char *ufmt = block_node_format(u);
    /* The discovery chain is unlocked; the rebase opens its own. */
    block_close(c.top);
    c.top = NULL;
    if (k == 1) {
        /* The layer above is the active image itself: our writer lock on
         * it is handed to the node that writes it. */
        block_close(c.hold);
        c.hold = NULL;
    }
    upper = block_open(upath, ufmt, NULL, BLOCK_O_RDWR, err);
    if (!upper) {
        ret = -(err && err->code ? err->code : EIO);
        goto out;
    }
    if (!shared_inode) {
        ret = journal_write(&c, &tpath, 1, err);
        if (ret < 0) {
            goto out;
        }
    }
    BlockRebase r = {
        .backing = bname ? bname : "",
        .backing_fmt = bfmt,
        .progress = progress,
        .progress_opaque = opaque,
    };
    ret = block_rebase(upper, &r, err);
    if (ret >= 0) {
        ret = block_flush(upper);
        if (ret < 0) {
            error_setf(err, -ret, "Could not flush '%s': %s", upath,
                       strerror(-ret));
        }
    }
    block_close(upper);
    upper = NULL;
    if (ret < 0) {
        /* The header may or may not have switched: the journal stays and
         * the next run deletes the layer only if the chain has left it. */
        goto out;
    }
    if (!shared_inode) {
        unlink(tpath);
        sync_dir_of(tpath, NULL);
        unlink(c.journal);
        sync_dir_of(c.journal, NULL);
    }
    ret = 0;
out:
    block_close(upper);
    free(bname);
    free(bfmt);
    free(tpath);
    free(upath);
    ctx_free(&c);
    return ret;
}

int block_extsnap_list(const char *active, const char *fmt, int flags,
                       BlockExtSnapList *out, Error *err)
{
    Ctx c = { 0 };
    memset(out, 0, sizeof(*out));
    int ret = ctx_names(&c, active, err);
    if (ret >= 0) {
        ret = ctx_open_chain(&c, fmt, flags & (BLOCK_O_SHARE |
                                               BLOCK_O_NO_LOCK), err);
    }
    if (ret < 0) {
        ctx_free(&c);
        return ret;
    }
    out->layers = calloc((size_t)c.n, sizeof(*out->layers));
    if (!out->layers) {
        ctx_free(&c);
        return error_setf(err, ENOMEM, "out of memory");
    }
    for (int i = 0; i < c.n; i++) {
        Layer *l = &c.layers[i];
        BlockExtSnapLayer *o = &out->layers[out->n++];
        o->name = strdup(l->name);
        o->filename = strdup(block_node_filename(l->node));
        o->format = strdup(block_node_format(l->node));
        int64_t len = block_get_length(l->node);
        o->virtual_size = len > 0 ? (uint64_t)len : 0;
        o->actual_size = block_get_allocated_size(l->node);
        o->active = i == 0;
        if (l->has_st) {
            o->date_sec = (int64_t)l->st.st_mtim.tv_sec;
            o->date_nsec = (uint32_t)l->st.st_mtim.tv_nsec;
        }
        if (!o->name || !o->filename || !o->format) {
            block_extsnap_list_free(out);
            ctx_free(&c);
            return error_setf(err, ENOMEM, "out of memory");
        }
    }
    struct stat st;
    out->interrupted = stat(c.tmp, &st) == 0 || stat(c.journal, &st) == 0;
    ctx_free(&c);
    return 0;
}

void block_extsnap_list_free(BlockExtSnapList *l)
{
    for (int i = 0; i < l->n; i++) {
        free(l->layers[i].name);
        free(l->layers[i].filename);
        free(l->layers[i].format);
    }
    free(l->layers);
    memset(l, 0, sizeof(*l));
}
