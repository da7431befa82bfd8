/*
 * serve.h - what cmd/serve.c shares with its helpers: running as a
 * daemon (serve-daemon.c) and the qemu-storage-daemon options that are
 * not block-layer objects (serve-opts.c: --chardev, --monitor,
 * --object iothread).
 */
#ifndef IMGTOOL_CMD_SERVE_H
#define IMGTOOL_CMD_SERVE_H

#include <stdbool.h>

#include "block/block.h"
#include "block/export/loop.h"

/* --daemonize: starts the daemon as a new process (fork, then exec of
 * the same command line, argv being the command's arguments from
 * "serve" on) and waits until it says it is ready (exit 0) or dies or
 * fails (exit 1); never returns there.  In the daemon returns 0. */
int serve_daemonize(int argc, char **argv, Error *err);
/* The child is ready: tells the waiting parent and detaches from the
 * terminal (stdio to /dev/null). */
void serve_daemon_ready(void);
/* --pidfile: created and locked (a second daemon with the same file is
 * refused), removed by serve_pidfile_remove. */
int serve_pidfile(const char *path, Error *err);
void serve_pidfile_remove(void);
/* READY=1 / STOPPING=1 to $NOTIFY_SOCKET when systemd set it. */
void serve_sd_notify(const char *state);

/* --chardev socket,id=ID,path=P|host=H,port=N[,server=on][,wait=off] */
int serve_chardev_add(const char *arg, Error *err);
/* --monitor [chardev=]ID[,mode=control][,pretty=on|off]: QMP on the
 * chardev's socket, which is created now. */
int serve_monitor_add(const char *arg, Loop *loop, Error *err);
/* --qmp PATH (the short form): a QMP socket at a unix path. */
int serve_qmp_path(const char *path, Loop *loop, Error *err);
/* --object iothread,id=ID[,...]: a loop on its own thread. */
int serve_iothread_add(const char *arg, Error *err);
/* At exit: monitors closed, sockets removed, iothreads joined. */
void serve_opts_cleanup(void);

#endif
