/*
 * layers.h - opening the qcow2 layers of a repository's points (one
 * layer alone, or a point's whole chain) with the repository's key, and
 * the file names layers use for each other (internal to backup/).
 *
 * A chain is opened layer by layer from the records, not from the
 * backing names in the files: the records say what a point is, and a
 * layer's header may lag its record for the moment a prune needs to
 * switch it (the content is the same either way, see prune.c).
 */
#ifndef IMGTOOL_BACKUP_LAYERS_H
#define IMGTOOL_BACKUP_LAYERS_H

#include "backup/repo.h"

/* One layer without its backing file.  flags: BLOCK_O_RDWR or 0. */
BlockNode *bk_layer_open(BkRepo *r, const char *id, const char *disk,
                         int flags, Error *err);

typedef struct BkChain {
    BlockNode *top;
    char **ids;              /* layer ids, top first */
    int n;
} BkChain;

/* p's disk as its whole chain, read-only.  top_flags for the top layer
 * (BLOCK_O_RDWR for a prune's merge target), the others read-only. */
int bk_chain_open(BkRepo *r, BkPoint *p, const char *disk, int top_flags,
                  BkChain *out, Error *err);
void bk_chain_close(BkChain *c);
/* The id of layer `depth` (0 = top), for messages (engine callback). */
const char *bk_chain_layer_name(void *chain, int depth);

/* The backing file name a point's layer stores for its parent's. */
char *bk_layer_backing_name(const char *parent_id, const char *disk);

/* Driver options that unlock a layer of r ("encrypt.key-secret"). */
int bk_layer_opts(BkRepo *r, KVList *opts, Error *err);

#endif
