/*
 * rotate.h - the dirty bitmaps a repository keeps in a source image and
 * their crash-safe rotation (rotate.c says how; internal to backup/).
 */
#ifndef IMGTOOL_BACKUP_ROTATE_H
#define IMGTOOL_BACKUP_ROTATE_H

#include "backup/repo.h"

/* "imgtool-backup.UUID.ID", malloc'd. */
char *bk_bitmap_name(const char *uuid, const char *id);

/* 1 when src holds a usable bitmap of the changes since point id; 0 and
 * *reason (malloc'd, one phrase) when it does not. */
int bk_bitmap_usable(BlockNode *src, const char *uuid, const char *id,
                     char **reason, Error *err);

/* The rotation: adds the bitmap of point new_id and, in the same store,
 * removes ours that are inconsistent or whose point is not in keep (NULL
 * entries are ignored). */
int bk_bitmaps_begin(BlockNode *src, const char *uuid, const char *new_id,
                     uint64_t granularity, const char *const *keep,
                     int nkeep, Error *err);

/* Removes (and stores) every bitmap of ours whose point is not in keep
 * (NULL entries are ignored). */
int bk_bitmaps_finish(BlockNode *src, const char *uuid,
                      const char *const *keep, int nkeep, Error *err);

/* A BkSelectFn over a bitmap: dirty clusters are read. */
typedef struct BkBitmapSelect {
    BlockNode *node;
    const char *name;
} BkBitmapSelect;
int bk_bitmap_select(void *opaque, uint64_t off, uint64_t len,
                     uint64_t *pnum, Error *err);

#endif
