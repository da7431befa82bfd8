/*
 * source.h - where a backup's disks come from (internal to backup/):
 * offline images opened here (offline.c), or the disks of a running VM
 * reached through its QMP socket and an NBD export (online.c).
 *
 * point.c drives every source the same way:
 *   open        find the disks: size, format, whether a bitmap of
 *               changes can be kept for them;
 *   bitmap_usable  per disk: does the bitmap of the changes since the
 *               base point exist and can it be trusted (else why not);
 *   begin       the point in time: for every disk at once, add the new
 *               point's bitmap and make the disk readable as it is now
 *               (offline: it cannot change; online: one QMP transaction
 *               with a fleecing overlay), with the base's changes
 *               selectable when a bitmap is used;
 *   finish      after the point is listed: drop what is no longer needed
 *               (online: bitmaps of older points, the export; offline
 *               images drop old bitmaps in begin's one store);
 *   abort       the point failed: undo begin (the new bitmap goes, the
 *               base's stays), leaving the source as it was;
 *   close.
 */
#ifndef IMGTOOL_BACKUP_SOURCE_H
#define IMGTOOL_BACKUP_SOURCE_H

#include "backup/backup.h"
#include "backup/engine.h"
#include "backup/repo.h"

typedef struct BkSrcDisk {
    const char *name;          /* as the user gave it */
    char *format;              /* what the source is read as */
    uint64_t size;
    bool can_bitmaps;          /* a bitmap of changes can be kept */
    bool persistent;           /* ... and survives the source's restart */
    /* After begin: */
    BlockNode *node;           /* read here (through its chain) */
    BkSelectFn *select;        /* the base's changes, or NULL: all */
    void *select_opaque;
    void *priv;
} BkSrcDisk;

typedef struct BkSession BkSession;

/* Point ids per disk in begin's and finish's keep arrays. */
#define BK_KEEP 4

typedef struct BkSourceOps {
    const char *origin;        /* the record's "origin" */
    int (*open)(BkSession *s, Error *err);
    /* 1 usable, 0 not (*reason malloc'd), < 0 error. */
    int (*bitmap_usable)(BkSession *s, int i, const char *base_id,
                         char **reason, Error *err);
    /* use_bitmap[i]: the base point id whose bitmap selects disk i's
     * clusters, or NULL to read every cluster; keep[BK_KEEP * i ...]:
     * the points whose bitmaps disk i still needs should this point fail
     * (the newest point's, the base's, the fulls of both chains; NULL
     * entries: none). */
    int (*begin)(BkSession *s, const char *new_id,
                 const char *const *use_bitmap, const char *const *keep,
                 Error *err);
    /* keep[BK_KEEP * i ...]: the point ids whose bitmaps disk i keeps
     * now the point is listed (the new point's, its chain's full's). */
    int (*finish)(BkSession *s, const char *const *keep, Error *err);
    void (*abort)(BkSession *s, const char *new_id);
    void (*close)(BkSession *s);
} BkSourceOps;

struct BkSession {
    const BkSourceOps *ops;
    const BackupOptions *o;
    BkRepo *r;
    const char *workdir;       /* the point's .tmp- directory */
    BkSrcDisk *disks;
    int ndisks;
    json_t *record_extra;      /* keys the source adds to the record */
    void *priv;
};

extern const BkSourceOps bk_offline_source;
extern const BkSourceOps bk_online_source;

#endif
