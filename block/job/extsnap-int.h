/*
 * extsnap-int.h - what the external snapshot operations (extsnap.c) use
 * of the chain mechanics (extsnap-chain.c).
 */
#ifndef IMGTOOL_BLOCK_JOB_EXTSNAP_INT_H
#define IMGTOOL_BLOCK_JOB_EXTSNAP_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

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

/* Names */

char *extsnap_asprintf(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
/* path's directory ("." when none); NULL when out of memory. */
char *extsnap_dirname_of(const char *path);
/* The snapshot name a layer file stands for: NAME for
 * "<stem>.NAME.qcow2", else the file name without its extension. */
char *extsnap_layer_name(const char *stem, const char *file);
/* A snapshot name we accept (1..EXTSNAP_MAX_NAME characters, no '/',
 * no leading '.', no control characters). */
int extsnap_check_name(const char *name, Error *err);
/* The name an image at `overlay` must store to find `target`. */
char *extsnap_backing_name_for(const char *overlay, const char *target);
/* path with its directory made absolute, the last component kept. */
char *extsnap_abs_name(const char *path);
bool extsnap_same_inode(const struct stat *a, const struct stat *b);

/* Durability */

/* fsync of a file, or of a directory (dir). */
int extsnap_sync_path(const char *path, bool dir);
int extsnap_sync_dir_of(const char *path, Error *err);

/* The chain of one active image */

void extsnap_ctx_free(Ctx *c);
int extsnap_ctx_names(Ctx *c, const char *active, Error *err);
/* Opens the chain read-only (flags: BLOCK_O_SHARE / BLOCK_O_NO_LOCK) and
 * names its layers. */
int extsnap_open_chain(Ctx *c, const char *fmt, int flags, Error *err);
/* The writer lock on a file, held while the node stays open. */
BlockNode *extsnap_lock_file(const char *path, Error *err);
/* The writer lock on the active image, then its chain without locks. */
int extsnap_open_locked(Ctx *c, const char *active, const char *fmt,
                        Error *err);
/* Finishes what a killed run left (active image's lock held). */
void extsnap_recover(Ctx *c);
/* extsnap_open_locked and extsnap_recover, then the index (> 0) of the
 * layer `name` names, or a negative errno. */
int extsnap_open_layer(Ctx *c, const char *active, const char *fmt,
                       const char *name, Error *err);

/* The journal of files to drop */

/* Replaces the journal with paths[0..n), durably. */
int extsnap_journal_write(Ctx *c, char **paths, int n, Error *err);

/* Overlays */

/* Creates c->tmp: an empty qcow2 overlay of `size` bytes on `backing`,
 * synced to disk. */
int extsnap_make_overlay(Ctx *c, const char *backing, const char *fmt,
                         uint64_t size, uint64_t cluster_size, Error *err);
/* The switch: the finished overlay becomes the active image. */
int extsnap_install_overlay(Ctx *c, Error *err);
uint64_t extsnap_cluster_size_of(BlockNode *n);
/* Makes the active image's relative backing name absolute before it is
 * frozen under `frozen` in another directory. */
int extsnap_absolute_backing(Ctx *c, const char *frozen, Error *err);

#endif
