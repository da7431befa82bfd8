/*
 * pool-cmd.h - what the pool and volume commands (cmd/pool-*.c,
 * cmd/vol-*.c) share: the store, virsh's output layouts (tables,
 * "Key:  value" lines, sizes as "1.50 GiB", the blank line virsh ends
 * its output with), their JSON shapes, and the one-line errors.
 */
#ifndef IMGTOOL_POOL_CMD_H
#define IMGTOOL_POOL_CMD_H

#include <jansson.h>

#include "imgtool/imgtool.h"
#include "imgtool/virsh-args.h"
#include "pools/pool.h"

/* Opens the store or reports why not (NULL). */
PoolStore *pcmd_store(void);

/* "imgtool: <what>: <err>" and exit code 1. */
int pcmd_fail(const Error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* virsh's human sizes: "0.00 B", "10.00 MiB", "1.50 GiB". */
void pcmd_pretty(uint64_t v, char *buf, size_t len);

/* "Name:           value" lines, as pool-info and vol-info print. */
void pcmd_kv(const char *key, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A size as a "Key:  value" line: "1.50 GiB", or the number of bytes
 * followed by unit ("" or " bytes", as the command's virsh twin says)
 * when bytes. */
void pcmd_kv_size(const char *key, uint64_t v, bool bytes, const char *unit);

/* Options the volume commands share, as virsh words them. */
#define PCMD_OPT_VOL { "vol", VA_STRING, VA_REQUIRED, "vol name, key or path" }
#define PCMD_OPT_POOL { "pool", VA_STRING, 0, "pool name or uuid" }

/* A table in virsh's layout; cells are copied. */
typedef struct PcmdTable PcmdTable;
PcmdTable *pcmd_table_new(int ncols, const char *const *header);
void pcmd_table_row(PcmdTable *t, const char *const *cells);
/* Prints (header, dashes, rows, the closing blank line) and frees. */
void pcmd_table_print(PcmdTable *t);
void pcmd_table_free(PcmdTable *t);

/* The end of a command that did something: "Pool x started" and a
 * blank line, or obj as JSON (obj is consumed). */
int pcmd_done(const VirshArgs *a, json_t *obj, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* An XML document (pool-dumpxml, vol-dumpxml, --print-xml): printed as
 * it is, or as {"xml": ...}. */
void pcmd_print_xml(const VirshArgs *a, const char *xml);

json_t *pcmd_pool_json(const PoolInfo *p);
json_t *pcmd_vol_json(const VolInfo *v);

/* An XML file (or "-" for stdin) read whole, bounded. */
int pcmd_read_xml(const char *file, char **buf, size_t *len, Error *err);

/* Progress for the library's callbacks. */
void pcmd_progress(void *opaque, uint64_t done, uint64_t total);

#endif
