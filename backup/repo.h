/*
 * repo.h - a backup repository on disk: its layout, its locks, and the
 * records of its points (internal to backup/; commands use backup.h).
 *
 * Layout (also in the man page, BACKUP REPOSITORIES):
 *
 *   REPO/imgtool-backup.json   what the directory is: format, version,
 *                              uuid, the hash seed, encryption settings
 *   REPO/ID/point.json         a point's record; a point exists exactly
 *                              when its directory holds this file
 *   REPO/ID/DISK.qcow2         the disk's data at that point: a qcow2
 *                              image whose backing file is
 *                              ../PARENT/DISK.qcow2 (none for a full)
 *   REPO/ID/DISK.sums          the disk's checksum map (sums.h)
 *   REPO/.tmp-ID/              a point being made; renamed to ID/ only
 *                              once complete and fsynced
 *   REPO/journal.json          a prune in progress (prune.c), finished by
 *                              the next backup or prune
 *   REPO/.lock, REPO/.lock-read   flock(2) files (below)
 *
 * Invariants:
 *  - every file a point consists of is written and fsynced before the
 *    rename that lists it, and the directory is fsynced after, so a
 *    killed or powered-off run leaves the point absent or complete;
 *  - records and the repository file are replaced only by write-temp +
 *    fsync + rename (+ directory fsync);
 *  - point ids grow with their creation order (seq), so sorting ids
 *    sorts points;
 *  - writers (backup, prune) hold .lock exclusively (a second one is
 *    refused at once); anything that deletes or rewrites a listed point
 *    (prune, finishing a journal) also holds .lock-read exclusively,
 *    which readers (list, restore, verify) hold shared.
 */
#ifndef IMGTOOL_BACKUP_REPO_H
#define IMGTOOL_BACKUP_REPO_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "backup/sums.h"
#include "block/block.h"

#define BK_REPO_FILE   "imgtool-backup.json"
#define BK_POINT_FILE  "point.json"
#define BK_JOURNAL     "journal.json"
#define BK_TMP_PREFIX  ".tmp-"
#define BK_FORMAT      "imgtool-backup"
#define BK_VERSION     1
/* Backup points' cluster size: the granularity of bitmaps and hashes. */
#define BK_CLUSTER_BITS 16
/* Our bitmaps in a source image: PREFIX.REPO-UUID.POINT-ID ("changes
 * since that point"). */
#define BK_BITMAP_PREFIX "imgtool-backup."

typedef struct BkDiskRec {
    char *name;
    char *source;              /* as the user named it */
    char *source_format;       /* the format the source was read as */
    uint64_t virtual_size;
    uint32_t cluster_bits;
    char *type;                /* "full", "incremental", "differential" */
    char *parent;              /* the point holding our backing file;
                                  NULL for a full */
    char *method;              /* "full", "bitmap", "checksum" */
    char *reason;              /* why the changes were found by checksum
                                  when a bitmap was expected, or NULL */
    char *bitmap;              /* the bitmap this point left in the source
                                  (changes since it), or NULL */
    bool compressed;
    bool encrypted;
    BkHash sums_digest;        /* of DISK.sums as written */
    BkHash content_digest;     /* of the disk's content (its hashes) */
    uint64_t bytes_read;       /* from the source */
    uint64_t bytes_written;    /* guest bytes stored in this layer */
    uint64_t clusters_read;
    uint64_t clusters_changed;
    uint64_t file_size;        /* DISK.qcow2 on the host */
    json_t *extra;             /* anything else the record held */
} BkDiskRec;

typedef struct BkPoint {
    char *id;
    uint64_t seq;
    int64_t time;              /* seconds since the epoch */
    char *mode;                /* as asked: auto, full, incremental, ... */
    char *origin;              /* "offline", "qmp" ... */
    BkDiskRec *disks;
    int ndisks;
    json_t *extra;
} BkPoint;

typedef struct BkRepo {
    char *path;
    int lock_fd;               /* .lock (writers), -1 when not held */
    int rlock_fd;              /* .lock-read, -1 when not held */
    bool exclusive_read;       /* .lock-read held exclusively */
    char *uuid;
    uint64_t seed;
    bool encrypted;
    uint32_t kdf_iterations;
    uint8_t salt[16];
    uint8_t check[32];
    uint64_t luks_iter_time;   /* ms, for new encrypted points */
    BkKey key;
    bool have_key;
    char *key_secret;          /* --object secret id unlocking points */
    BkPoint *points;           /* oldest first */
    int npoints;
    int ndamaged;              /* point directories whose record failed */
    char **damaged;            /* their names */
} BkRepo;

typedef enum {
    BK_OPEN_READ,              /* list, restore, verify: shared */
    BK_OPEN_WRITE,             /* backup, prune: the writer's lock */
} BkOpenMode;

/* Opens (with create: creates, encrypted when key_secret is given) the
 * repository at path and loads its points.  key_secret (may be NULL)
 * unlocks an encrypted repository; without it an encrypted one opens for
 * listing only.  iter_time_ms: PBKDF time for a new encrypted one. */
typedef struct BkOpenArgs {
    BkOpenMode mode;
    bool create;
    const char *key_secret;
    uint64_t iter_time_ms;     /* 0: 2000 */
    bool need_key;             /* fail when encrypted and no key given */
} BkOpenArgs;
int bk_repo_open(const char *path, const BkOpenArgs *a, BkRepo **out,
                 Error *err);
void bk_repo_close(BkRepo *r);
/* Takes .lock-read exclusively (prune, journal replay): waits for
 * readers. */
int bk_repo_lock_exclusive(BkRepo *r, Error *err);
/* Reloads the points (after changes). */
int bk_repo_reload(BkRepo *r, Error *err);

BkPoint *bk_repo_find(BkRepo *r, const char *id);
BkDiskRec *bk_point_disk(BkPoint *p, const char *disk);
/* The newest point holding disk, or NULL. */
BkPoint *bk_repo_last_with(BkRepo *r, const char *disk);
/* The root of disk's chain at p (a point without parent), or NULL when
 * the chain is broken (a parent missing). */
BkPoint *bk_repo_chain_root(BkRepo *r, BkPoint *p, const char *disk);

/* malloc'd "REPO/a/b" paths. */
char *bk_repo_file(const BkRepo *r, const char *id, const char *name);
char *bk_disk_file(const BkRepo *r, const char *id, const char *disk,
                   const char *ext);

/* The next point id (UTC time of `now`, strictly above every id). */
char *bk_repo_next_id(BkRepo *r, int64_t now);

/* Records. */
json_t *bk_point_to_json(const BkPoint *p);
int bk_point_from_json(json_t *j, BkPoint *p, Error *err);
void bk_point_clear(BkPoint *p);
void bk_disk_clear(BkDiskRec *d);
/* Writes p's record to dir/point.json: replacing it crash-safely, or
 * (replace false: a point's directory not listed yet, which its own
 * fsync and rename make durable) as a new file, fsynced. */
int bk_point_save(const char *dir, const BkPoint *p, bool replace,
                  Error *err);

/* Crash-safe file replacement: dir/name.tmp, fsync, rename, fsync(dir). */
int bk_write_file_atomic(const char *path, const void *buf, size_t len,
                         Error *err);
int bk_write_json_atomic(const char *path, json_t *j, Error *err);
/* A new file (O_EXCL), written and fsynced; its directory is not. */
int bk_write_file_new(const char *path, const void *buf, size_t len,
                      Error *err);
int bk_write_json_new(const char *path, json_t *j, Error *err);
int bk_fsync_dir(const char *dir);
/* rm -r of a directory we made (only regular files and directories). */
int bk_remove_tree(const char *path);
/* A disk name that is safe as a file name: [A-Za-z0-9._+-], not starting
 * with '.', at most 64 bytes. */
bool bk_disk_name_ok(const char *name);

/* The secret's bytes checked against the repository (sets r->key). */
int bk_repo_unlock(BkRepo *r, const char *key_secret, Error *err);

#endif
