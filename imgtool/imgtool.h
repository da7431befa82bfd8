/*
 * imgtool.h - what every command in cmd/ shares: the command table,
 * error reporting, opening images from command-line arguments, JSON and
 * human output, and the progress bar.
 *
 * Commands are thin: they parse options, call the block layer, print.
 * Only cmd/ and imgtool/main.c may exit(); everything below returns.
 */
#ifndef IMGTOOL_IMGTOOL_H
#define IMGTOOL_IMGTOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "block/block.h"

typedef struct ImgtoolCommand {
    const char *name;
    int (*run)(int argc, char **argv);   /* returns the exit code */
    const char *synopsis;                /* one line for `imgtool help` */
} ImgtoolCommand;

/* cmd/<name>.c each define one of these. */
int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_dd(int argc, char **argv);
int cmd_io(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_amend(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
/* Backups (cmd/backup*.c, cmd/restore.c). */
int cmd_backup(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_backup_list(int argc, char **argv);
int cmd_backup_verify(int argc, char **argv);
int cmd_backup_prune(int argc, char **argv);
/* Storage pools and volumes (virsh's names). */
int cmd_pool_define(int argc, char **argv);
int cmd_pool_define_as(int argc, char **argv);
int cmd_pool_create_as(int argc, char **argv);
int cmd_pool_build(int argc, char **argv);
int cmd_pool_start(int argc, char **argv);
int cmd_pool_destroy(int argc, char **argv);
int cmd_pool_delete(int argc, char **argv);
int cmd_pool_undefine(int argc, char **argv);
int cmd_pool_refresh(int argc, char **argv);
int cmd_pool_autostart(int argc, char **argv);
int cmd_pool_start_autostart(int argc, char **argv);
int cmd_pool_list(int argc, char **argv);
int cmd_pool_info(int argc, char **argv);
int cmd_pool_dumpxml(int argc, char **argv);
int cmd_vol_create(int argc, char **argv);
int cmd_vol_create_as(int argc, char **argv);
int cmd_vol_create_from(int argc, char **argv);
int cmd_vol_clone(int argc, char **argv);
int cmd_vol_delete(int argc, char **argv);
int cmd_vol_resize(int argc, char **argv);
int cmd_vol_wipe(int argc, char **argv);
int cmd_vol_upload(int argc, char **argv);
int cmd_vol_download(int argc, char **argv);
int cmd_vol_list(int argc, char **argv);
int cmd_vol_info(int argc, char **argv);
int cmd_vol_path(int argc, char **argv);
int cmd_vol_key(int argc, char **argv);
int cmd_vol_name(int argc, char **argv);
int cmd_vol_pool(int argc, char **argv);
int cmd_vol_dumpxml(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_serve_ctl(int argc, char **argv);
int cmd_run(int argc, char **argv);

/* --version: the version line, the drivers and the optional libraries
 * compiled in (imgtool/version.c). */
const char *imgtool_version(void);
void imgtool_print_version(FILE *f);

/* The name messages start with: the base name of argv[0], so that a
 * link named qemu-img says "qemu-img: ..." as qemu-img does (scripts
 * match on it); "imgtool" until main sets it. */
extern const char *imgtool_prog;

/* "<prog>: <msg>\n" on stderr. */
void imgtool_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void imgtool_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reports err (one line) prefixed by "<prog>: ". */
void imgtool_report(const Error *err);
/* Sends the block library's warnings to stderr (main, at start-up). */
void imgtool_install_report(void);

/* Set from main for the duration of a command. */
extern const char *imgtool_cmd_name;

/* Open an image named on the command line.  With image_opts, `name` is
 * a "driver=qcow2,file.filename=x,..." option string; otherwise a
 * filename opened with `fmt` (NULL probes).  extra_opts (may be NULL) are
 * merged in.  Prints nothing; fills err. */
BlockNode *imgtool_open(const char *name, const char *fmt, bool image_opts,
                        int flags, Error *err);
/* "vol:POOL/NAME" names a volume in every image command (open.c).
 * For a name that a command will create (create, convert, dd): *out is
 * the path of the new file in a directory pool (a volume that exists is
 * refused), or name itself when it is not a volume.  malloc'd. */
int imgtool_target_name(const char *name, char **out, Error *err);
/* After creating an image at a vol: name: the pool remembers its
 * format (it is never probed again).  Nothing for other names. */
void imgtool_target_created(const char *name, const char *fmt);
/* A backing file given as a vol: name (create -b, convert -B,
 * rebase -b): *path is the volume's path and *fmt its format (both
 * malloc'd); both NULL for names that are not volumes. */
int imgtool_backing_name(const char *name, char **path, char **fmt,
                         Error *err);
/* Cache mode names ("none", "writeback", "unsafe", "directsync",
 * "writethrough") to BLOCK_O_* flags.  Returns -EINVAL for unknown. */
int imgtool_parse_cache(const char *mode, int *flags);

/* Output format from --output=human|json. */
typedef enum { OUTPUT_HUMAN, OUTPUT_JSON } OutputFormat;
int imgtool_parse_output(const char *s, OutputFormat *out);
/* Prints j the way qemu-img does (4-space indent, keys in insertion
 * order) followed by a newline, and frees nothing. */
void imgtool_print_json(const json_t *j);

/* Progress bar: "    (12.34/100%)\r" on stdout, as qemu-img draws it;
 * SIGUSR1 prints the current progress (on stderr when the bar is off,
 * redrawing the bar with -p) and never kills. */
typedef struct Progress Progress;
/* Called once by main before any other thread exists: from then on
 * SIGUSR1 reports the running Progress, if any, and is otherwise
 * ignored. */
void progress_signals_init(void);
Progress *progress_start(bool enabled);
/* done/total in any unit; safe to call from many threads. */
void progress_update(Progress *p, uint64_t done, uint64_t total);
void progress_add(Progress *p, uint64_t delta, uint64_t total);
/* qemu-img's own rule, for commands that reproduce its steps: the bar
 * is drawn at `percent` when it moved by more than one point either way
 * since the last drawing, or is 0 or 100 (so 100 may be drawn twice, as
 * qemu-img does).  Single precision, as qemu-img computes it. */
void progress_qemu_step(Progress *p, float percent);
void progress_finish(Progress *p);
/* The bar on `out` (stderr when stdout carries data, such as a restore
 * to "-", or JSON). */
Progress *progress_start_on(bool enabled, FILE *out);

#endif
