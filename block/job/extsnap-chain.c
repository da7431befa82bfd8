/*
 * extsnap-chain.c - the mechanics under external snapshots (extsnap.c):
 * the names a chain's files and layers go by, durability of files and
 * directories, the chain of one active image opened and locked, the
 * journal of files to drop, and new overlays moved into place.
 *
 * What it keeps, for the operations' invariants:
 *  - a new overlay is created under a temporary name, synced, and moved
 *    in with rename(2) (its directory synced after), so the active path
 *    names the old image or the complete new one;
 *  - the journal is replaced whole (written, synced, renamed); a file it
 *    lists is deleted only once it is no longer in the chain and its
 *    writer lock can be had, i.e. nobody has it open;
 *  - the active image's writer lock is held for the whole operation, so
 *    no two runs are ever between these steps on one chain.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/job/extsnap-int.h"

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

char *extsnap_asprintf(const char *fmt, ...)
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

char *extsnap_dirname_of(const char *path)
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
char *extsnap_layer_name(const char *stem, const char *file)
{
    const char *b = basename_of(file);
    size_t sl = strlen(stem), bl = strlen(b), el = strlen(".qcow2");
    if (bl > sl + 1 + el && strncmp(b, stem, sl) == 0 && b[sl] == '.' &&
        strcmp(b + bl - el, ".qcow2") == 0) {
        return xstrndup(b + sl + 1, bl - sl - 1 - el);
    }
    return stem_of(b);
}

int extsnap_check_name(const char *name, Error *err)
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
char *extsnap_backing_name_for(const char *overlay, const char *target)
{
    char *od = extsnap_dirname_of(overlay), *td = extsnap_dirname_of(target);
    char *ro = od ? realpath(od, NULL) : NULL;
    char *rt = td ? realpath(td, NULL) : NULL;
    char *r = NULL;
    if (ro && rt) {
        if (strcmp(ro, rt) == 0) {
            r = strdup(basename_of(target));
        } else {
            r = extsnap_asprintf("%s%s%s", rt, strcmp(rt, "/") ? "/" : "",
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
char *extsnap_abs_name(const char *path)
{
    char *d = extsnap_dirname_of(path);
    char *rd = d ? realpath(d, NULL) : NULL;
    char *r = rd ? extsnap_asprintf("%s%s%s", rd, strcmp(rd, "/") ? "/" : "",
                                    basename_of(path))
                 : NULL;
    free(d);
    free(rd);
    return r;
}

bool extsnap_same_inode(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* ------------------------------------------------------------------ */
/* Durability                                                          */

int extsnap_sync_path(const char *path, bool dir)
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

int extsnap_sync_dir_of(const char *path, Error *err)
{
    char *d = extsnap_dirname_of(path);
    if (!d) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int ret = extsnap_sync_path(d, true);
    if (ret < 0) {
        error_setf(err, -ret, "Could not sync directory '%s': %s", d,
                   strerror(-ret));
    }
    free(d);
    return ret;
}

/* ------------------------------------------------------------------ */
/* The chain                                                           */

void extsnap_ctx_free(Ctx *c)
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

int extsnap_ctx_names(Ctx *c, const char *active, Error *err)
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
    c->dir = extsnap_dirname_of(active);
    c->base = strdup(basename_of(active));
    c->stem = c->base ? stem_of(c->base) : NULL;
    if (c->dir) {
        c->tmp = extsnap_asprintf("%s/.%s.extsnap-tmp", c->dir, c->base);
        c->journal = extsnap_asprintf("%s/.%s.extsnap-discard", c->dir,
                                      c->base);
    }
    if (!c->dir || !c->base || !c->stem || !c->tmp || !c->journal) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

/* Opens the chain read-only (flags: BLOCK_O_SHARE / BLOCK_O_NO_LOCK) and
 * names its layers. */
int extsnap_open_chain(Ctx *c, const char *fmt, int flags, Error *err)
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
        l->name = extsnap_layer_name(c->stem, block_node_filename(m));
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
                   (by_path && l->has_st && extsnap_same_inode(&st, &l->st));
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
        if (c->layers[i].has_st && extsnap_same_inode(&c->layers[i].st, st)) {
            return true;
        }
    }
    return false;
}

/* The writer lock on a file, held while the node stays open: nobody else
 * has it open, not even as a backing file. */
BlockNode *extsnap_lock_file(const char *path, Error *err)
{
    return block_open_protocol(path, NULL, BLOCK_O_RDWR, err);
}

/* Takes the writer lock on the active image, then opens its chain
 * without locks (the locks that matter are taken per file). */
int extsnap_open_locked(Ctx *c, const char *active, const char *fmt,
                        Error *err)
{
    int ret = extsnap_ctx_names(c, active, err);
    if (ret < 0) {
        return ret;
    }
    c->hold = extsnap_lock_file(active, err);
    if (!c->hold) {
        return -(err && err->code ? err->code : EIO);
    }
    return extsnap_open_chain(c, fmt, BLOCK_O_NO_LOCK, err);
}

/* ------------------------------------------------------------------ */
/* The journal of files to drop                                        */

int extsnap_journal_write(Ctx *c, char **paths, int n, Error *err)
{
    char *tmp = extsnap_asprintf("%s.new", c->journal);
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
    return extsnap_sync_dir_of(c->journal, err);
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
    BlockNode *lk = extsnap_lock_file(path, &ignored);
    if (lk) {
        /* Locked: nobody uses it; it left the chain for good. */
        unlink(path);
        block_close(lk);
        char *d = extsnap_dirname_of(path);
        if (d) {
            extsnap_sync_path(d, true);
        }
        free(d);
    }
}

/* Finishes what a killed run left: a half-made overlay, and files that
 * left the chain but were not deleted yet.  Called with the active
 * image's writer lock held, so no other run is between these steps. */
void extsnap_recover(Ctx *c)
{
    unlink(c->tmp);
    journal_scan(c, drop_stray, NULL);
    unlink(c->journal);
    unlink(c->tmp);
}

/* Revert and delete both act on one layer below the active image: holds
 * the active image's lock, finishes a killed run's leftovers, and returns
 * the index (> 0) of the layer `name` names, or a negative errno. */
int extsnap_open_layer(Ctx *c, const char *active, const char *fmt,
                       const char *name, Error *err)
{
    int ret = extsnap_open_locked(c, active, fmt, err);
    if (ret < 0) {
        return ret;
    }
    extsnap_recover(c);
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
int extsnap_make_overlay(Ctx *c, const char *backing, const char *fmt,
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
        ret = extsnap_sync_path(c->tmp, false);
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
int extsnap_install_overlay(Ctx *c, Error *err)
{
    if (rename(c->tmp, c->active) < 0) {
        int e = errno;
        unlink(c->tmp);
        return error_setf(err, e, "Could not rename '%s' to '%s': %s",
                          c->tmp, c->active, strerror(e));
    }
    /* Done once renamed: a failed directory sync cannot undo it, and
     * reporting failure would make the caller treat it as not done. */
    extsnap_sync_dir_of(c->active, NULL);
    return 0;
}

uint64_t extsnap_cluster_size_of(BlockNode *n)
{
    BlockInfoExtra x;
    block_get_info_extra(n, &x);
    return x.cluster_size;
}

/* A relative backing name only holds in the active image's directory:
 * before the active image is frozen under another one, its backing name
 * becomes absolute (one header write: the old or the new name, both
 * right).  We hold the writer lock, so this open takes none. */
int extsnap_absolute_backing(Ctx *c, const char *frozen, Error *err)
{
    BlockNode *top = c->top;
    const char *b = block_node_backing_file(top);
    if (!b || !*b || b[0] == '/' || strstr(b, "://")) {
        return 0;
    }
    char *same = extsnap_backing_name_for(c->active, frozen);
    bool moved = same && strchr(same, '/');
    free(same);
    if (!moved) {
        return 0;
    }
    char *abs = extsnap_abs_name(block_node_full_backing_filename(top));
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
