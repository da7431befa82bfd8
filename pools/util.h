/*
 * util.h - small helpers of the pool library: files written atomically,
 * bounded reads, names, UUIDs, scaled integers and XML escaping.
 * Internal to pools/.
 */
#ifndef IMGTOOL_POOLS_UTIL_H
#define IMGTOOL_POOLS_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "block/block.h"

/* Definitions and caches larger than this are refused, not read. */
#define POOL_MAX_XML   (1024 * 1024)
#define POOL_MAX_CACHE (64 * 1024 * 1024)
/* Names of pools and volumes (bytes). */
#define POOL_NAME_MAX  200

/* asprintf that returns NULL when out of memory. */
char *pool_strfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes data to path so that path holds the old or the new content
 * whatever happens: a temporary file in the same directory, fsync,
 * rename, fsync of the directory. */
int pool_write_atomic(const char *path, const void *data, size_t len,
                      Error *err);
/* Reads a whole file of at most max bytes (NUL-terminated). */
int pool_read_file(const char *path, size_t max, char **out, size_t *len,
                   Error *err);
int pool_mkdir_p(const char *path, int mode, Error *err);
/* fsyncs the directory holding path (after a rename or unlink). */
void pool_sync_parent(const char *path);

/* A pool or volume name: not empty, at most POOL_NAME_MAX bytes, no
 * '/', no control characters, not "." or "..". */
int pool_check_name(const char *what, const char *name, Error *err);

void pool_uuid_generate(char out[37]);
/* Accepts 32 hex digits with or without libvirt's dashes; writes the
 * dashed lower-case form. */
bool pool_uuid_parse(const char *in, char out[37]);

/* /proc/sys/kernel/random/boot_id, "" when unknown. */
void pool_boot_id(char out[64]);

/* XML text with &, <, >, ', " escaped. */
void pool_xml_escape(FILE *f, const char *s);

/* A one-line summary of a command's stderr: its first line that is
 * not a warning, leading blanks dropped ("" when there is none). */
void pool_last_line(const char *text, char *out, size_t len);

#endif
