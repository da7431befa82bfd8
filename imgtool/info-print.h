/*
 * info-print.h - building and printing the JSON objects qemu-img prints
 * (ImageInfo for `info`, and the key order every qemu-img JSON object
 * follows), shared by info, check and measure.
 */
#ifndef IMGTOOL_INFO_PRINT_H
#define IMGTOOL_INFO_PRINT_H

#include <jansson.h>

#include "block/block.h"

/* Returns a new object with the keys of obj (recursively, through arrays
 * too) in the order qemu-img prints them.  qemu-img's order is not the
 * insertion order but a fixed order per key name; keys we do not know
 * keep their relative order and go last.  Steals nothing; caller owns
 * the result. */
json_t *qemu_json_order(const json_t *j);

/* The ImageInfo object of one opened node, as `qemu-img info
 * --output=json` prints it (already in qemu-img's key order). */
json_t *info_build(BlockNode *n);

/* The "snapshots" array of n (qemu-img's SnapshotInfo objects, in its
 * key order), or NULL when there are none or they cannot be read. */
json_t *info_snapshots(BlockNode *n);

/* "Snapshot list:" and its table, as `info` and `snapshot -l` print it. */
void info_print_snapshots(FILE *f, const json_t *list);

/* The human layout of one ImageInfo ("image: x\nfile format: ..."). */
void info_print_human(FILE *f, const json_t *info);

/* The "Format specific information:" tree: a JSON value printed as
 * qemu-img prints QAPI objects, '-' in keys shown as ' ', nested objects
 * and lists indented by 4 more. */
void info_print_tree(FILE *f, const json_t *j, int indent);

#endif
