/*
 * online-int.h - what online.c (a backup session with a running QEMU or
 * imgtool serve) and online-peer.c (how the two peers differ) share.
 */
#ifndef IMGTOOL_BACKUP_ONLINE_INT_H
#define IMGTOOL_BACKUP_ONLINE_INT_H

#include <jansson.h>
#include <stdbool.h>

#include "backup/qmp.h"
#include "backup/source.h"

#define EVENT_TIMEOUT_MS 60000

typedef struct OnDisk {
    char *node;                /* the disk's node in QEMU */
    char *fleece_node;         /* imgtool-XXXXXXXX-fN */
    char *fleece_file;
    char *export;              /* also the job id: imgtool-XXXXXXXX-eN */
    char *job;
    char *frozen;              /* the disabled copy of the base bitmap */
    char *view;                /* imgtool serve: the view node exported */
    json_t *bitmaps;           /* query-block's dirty-bitmaps */
    BlockNode *bm_node;        /* NBD with the qemu:dirty-bitmap context */
    bool added, job_started, exported;
} OnDisk;

typedef struct Online {
    QmpClient *qmp;
    char *tag;                 /* imgtool-XXXXXXXX: our names in QEMU */
    char *sock;                /* the NBD server's socket */
    bool server_started;
    bool had_leftovers;        /* a killed run of ours left things */
    bool is_serve;             /* imgtool serve, not QEMU */
    char *url_head;            /* an export's URL: head + name + tail */
    char *url_tail;
    bool torn_down;
    OnDisk *d;
} Online;

bool on_has_prefix(const char *s, const char *p);

/* online-peer.c */

/* Removes what a killed run of this repository (uuid) left in the peer:
 * exports, jobs, nodes and frozen bitmaps named with o->tag; sets
 * o->had_leftovers when there were any. */
void on_remove_leftovers(Online *o, const char *uuid);
/* The peer's disks as query-block entries ({"device", "qdev",
 * "inserted": {"node-name", "image", "dirty-bitmaps"}}): QEMU's own; the
 * daemon's nodes, also under the name and id of each NBD export. */
int on_query_disks(Online *o, json_t **out, Error *err);
/* The entry of the disk the user named, or NULL. */
json_t *on_find_device(json_t *blocks, const char *name);
/* An NBD server for the point's exports, and o->url_head/url_tail to
 * reach them (o->server_started when it is ours to stop). */
int on_nbd_server(BkSession *s, Error *err);

#endif
