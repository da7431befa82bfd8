/*
 * snapshot-int.h - what qcow2's snapshot operations (snapshot.c) use of
 * the snapshot table (snapshot-table.c).  Everything here needs s->lock
 * held.
 */
#ifndef IMGTOOL_FORMATS_QCOW2_SNAPSHOT_INT_H
#define IMGTOOL_FORMATS_QCOW2_SNAPSHOT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "formats/qcow2/qcow2.h"

/* The table as on disk (s->snapshots_size bytes) into a malloc'd buffer;
 * *buf NULL and *len 0 when there is none. */
int qcow2_snapshot_read_table(Qcow2State *s, uint8_t **buf, size_t *len);
/* Offsets and lengths of the nb entries of a table buffer, in arrays it
 * allocates (nb + 1 long, so nb may be 0); -EINVAL when an entry does not
 * fit, and then nothing stays allocated. */
int qcow2_snapshot_index_entries(const uint8_t *buf, size_t len,
                                 uint32_t nb, size_t **offs, size_t **lens);
/* Index of the first snapshot named `name`; -1. */
int qcow2_snapshot_find_by_name(Qcow2State *s, const char *name);
/* Index of the snapshot whose id, else whose name, is `key`; -1. */
int qcow2_snapshot_find(Qcow2State *s, const char *key);
/* The commit point of a change: the table buf/len of nb entries goes to
 * fresh clusters, the header is switched to it in one write, the old
 * table is freed and s->snapshots reloaded. */
int qcow2_snapshot_switch_table(Qcow2State *s, const uint8_t *buf,
                                size_t len, uint32_t nb, Error *err);
/* Refcounts, then L2 tables, on disk and flushed. */
int qcow2_snapshot_write_meta(Qcow2State *s);

#endif
