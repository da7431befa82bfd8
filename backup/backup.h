/*
 * backup.h - backups of disk images into a repository, and everything
 * done with them afterwards: the API cmd/backup*.c and cmd/restore.c
 * use.
 *
 * A repository (repo.h has its layout) holds points; a point holds one
 * or more disks, each a qcow2 layer over the previous point's (QEMU
 * reads any point directly) plus a checksum map of the disk's whole
 * content.  Backups are full, incremental (changes since the newest
 * point), differential (changes since the chain's full) or automatic.
 * Changes are found by a persistent dirty bitmap the backup keeps in the
 * source image itself (qcow2), or by comparing every cluster's checksum
 * with the base point's map (raw and LVM volumes, and any image whose
 * bitmap was lost: the chain heals itself).
 *
 * Like the rest of the library this never prints or exits: notes go to
 * block_report (one line each), failures come back as -errno and one
 * line in an Error.
 */
#ifndef IMGTOOL_BACKUP_BACKUP_H
#define IMGTOOL_BACKUP_BACKUP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "block/block.h"

typedef enum {
    BACKUP_AUTO,             /* full when there is no usable chain, else
                                incremental */
    BACKUP_FULL,
    BACKUP_INCREMENTAL,
    BACKUP_DIFFERENTIAL,
} BackupMode;

int backup_mode_parse(const char *s, BackupMode *out);
const char *backup_mode_name(BackupMode m);

/* Opens a source named on the command line (a file, "vol:POOL/NAME",
 * a URL, an --image-opts string): the command line knows how; the
 * library says with which flags. */
typedef BlockNode *BackupOpenFn(void *opaque, const char *name, int flags,
                                Error *err);

typedef struct BackupSource {
    const char *name;        /* as the user gave it (recorded) */
    const char *disk;        /* its name in the repository; NULL: the
                                source's file name without extension */
} BackupSource;

typedef struct BackupOptions {
    BackupMode mode;
    bool compress;           /* zstd-compressed clusters */
    const char *key_secret;  /* secret id: encrypts a new repository,
                                unlocks an encrypted one */
    uint64_t iter_time_ms;   /* new encrypted repository: PBKDF time
                                (0: 2000) */
    int workers;             /* 0: default */
    BackupOpenFn *open;
    void *open_opaque;
    BlockProgressFn *progress;
    void *progress_opaque;
    atomic_bool *cancel;     /* set (by a signal handler) to stop */
    /* A running VM: its QMP socket; the sources are then its disks
     * (device ids or node names), backed up in one transaction. */
    const char *qmp_socket;
    /* Its guest agent's socket: filesystems are frozen around the
     * transaction.  NULL: none. */
    const char *qga_socket;
    /* Where the fleecing overlays go (local, fast storage: guest writes
     * wait for their copy there); NULL: the point's directory. */
    const char *fleece_dir;
    /* The id of a client tls-creds object (--object) for the peer's NBD
     * server when it requires TLS (imgtool serve --tls-creds); NULL:
     * none, and such a server is refused in one line. */
    const char *tls_creds;
} BackupOptions;

/* Makes one point of every source in repo (created when missing).
 * *record (may be NULL) receives the point's record. */
int backup_create(const char *repo, const BackupSource *src, int nsrc,
                  const BackupOptions *o, json_t **record, Error *err);

/* The points, oldest first, as a JSON array of records. */
int backup_list(const char *repo, const char *key_secret, json_t **points,
                Error *err);

/* Restore. */
typedef struct RestoreTarget {
    /* Called once the point is known: opens or creates the target for
     * a disk of `size` bytes whose source was `format` ("qcow2", "raw").
     * Returns the node (or NULL with *fd >= 0 for a stream, or NULL with
     * err set); *is_zero says the target reads as zeroes already. */
    BlockNode *(*open)(void *opaque, uint64_t size, const char *format,
                       int *fd, bool *is_zero, Error *err);
    void *opaque;
} RestoreTarget;

typedef struct RestoreOptions {
    const char *point;       /* id, NULL: the newest */
    const char *disk;        /* NULL: the point's only disk */
    const char *key_secret;
    int workers;
    BlockProgressFn *progress;
    void *progress_opaque;
    atomic_bool *cancel;
} RestoreOptions;

/* Restores a point's disk to the target, checking every cluster
 * against the point's checksums.  *info (may be NULL): what was done. */
int backup_restore(const char *repo, const RestoreOptions *o,
                   const RestoreTarget *t, json_t **info, Error *err);

/* Verify: every point's every disk against its checksums: the map
 * file's digest, the qcow2 structure, each cluster the point's layer
 * holds against the map, and the map against the parent's where the
 * layer holds nothing.  Returns 0 when all is well; -EILSEQ when
 * something is damaged (err names the first damaged point); *report
 * (may be NULL) lists every point with "status" "ok" or "damaged" and
 * what was found. */
typedef struct VerifyOptions {
    const char *key_secret;
    const char *point;       /* only this one; NULL: all */
    int workers;
    BlockProgressFn *progress;
    void *progress_opaque;
    atomic_bool *cancel;
} VerifyOptions;
int backup_verify(const char *repo, const VerifyOptions *o, json_t **report,
                  Error *err);

/* Retention: a point is kept when any rule keeps it (the newest point
 * always is); the others are removed, their data merged into the points
 * that stay and depend on them. */
typedef struct PruneOptions {
    int keep_last;
    int keep_daily;
    int keep_weekly;
    int keep_monthly;
    bool dry_run;
    const char *key_secret;
    BlockProgressFn *progress;
    void *progress_opaque;
} PruneOptions;
/* *result: {"keep": [ids], "remove": [ids], "merged": [{from, into}]}. */
int backup_prune(const char *repo, const PruneOptions *o, json_t **result,
                 Error *err);

#endif
