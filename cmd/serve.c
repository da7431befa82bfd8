/*
 * serve.c - `imgtool serve`: the daemon that exports images over NBD
 * (and the export types block/export/ registers), configured like
 * qemu-storage-daemon:
 *
 *   imgtool serve --blockdev driver=file,node-name=f0,filename=a.qcow2 \
 *       --blockdev driver=qcow2,node-name=d0,file=f0 \
 *       --nbd-server addr.type=unix,addr.path=/run/a.sock \
 *       --export type=nbd,id=e0,node-name=d0,writable=on \
 *       --chardev socket,id=m0,path=/run/a.qmp,server=on,wait=off \
 *       --monitor chardev=m0
 *
 * or in a short form for one image per export:
 *
 *   imgtool serve --nbd /run/a.sock [--writable] a.qcow2
 *
 * Options are acted on in command-line order, as qemu-storage-daemon
 * does.  The process runs in the foreground (or --daemonize), tells
 * systemd when it is ready, and on SIGTERM, SIGINT, SIGHUP or QMP's quit
 * drops its clients, lets the requests in flight finish, flushes and
 * closes every node and removes the sockets (and pid file) it made.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "block/core/tlscreds.h"
#include "block/export/qmp-backup.h"
#include "block/export/blockdev.h"
#include "block/export/export.h"
#include "block/export/monitor.h"
#include "block/export/nbd.h"
#include "cmd/serve.h"
#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/object.h"
#include "imgtool/parse-options.h"
#include "pools/pool.h"

/* The qemu-storage-daemon options, acted on in command-line order. */
typedef enum {
    ACT_BLOCKDEV, ACT_OBJECT, ACT_NBD_SERVER, ACT_EXPORT, ACT_CHARDEV,
    ACT_MONITOR, ACT_QMP,
} ActKind;

typedef struct Action {
    ActKind kind;
    const char *arg;
} Action;

typedef struct ShortForm {
    const char *nbd;
    const char *name;
    const char *desc;
    bool writable;
    const char *fmt;
    bool image_opts;
    int cache_flags;
    CmdList bitmaps;
    bool depth;
    const char *tls;
    const char *max_conns;
    char **images;
    int n_images;
} ShortForm;

static Loop *main_loop;
static bool stopping;

/* ------------------------------------------------------------------ */
/* Shutdown                                                            */

/* Drop clients, stop listening; the loop runs on until every export
 * has let its requests in flight finish (export_event stops it). */
static void begin_shutdown(void *opaque)
{
    if (stopping) {
        return;
    }
    stopping = true;
    serve_sd_notify("STOPPING=1");
    if (nbd_server_running()) {
        Error ignored = { 0 };
        nbd_server_stop(&ignored);
    }
    block_export_del_all();
    if (block_export_count() == 0) {
        loop_stop(main_loop);
    }
}

static void signal_event(void *opaque, uint32_t events)
{
    int fd = *(int *)opaque;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        begin_shutdown(NULL);
    }
}

/* ------------------------------------------------------------------ */
/* The short form                                                      */

/* "HOST:PORT", ":PORT" and "[v6]:PORT" are TCP; anything else (a path)
 * is a unix socket. */
static int nbd_addr_opts(const char *addr, KVList *kv)
{
    const char *colon = strrchr(addr, ':');
    bool tcp = colon && !strchr(addr, '/') && colon[1] &&
               strspn(colon + 1, "0123456789") == strlen(colon + 1);
    if (!tcp) {
        kvlist_set(kv, "addr.type", "unix");
        return kvlist_set(kv, "addr.path", addr);
    }
    char host[256];
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof(host)) {
        return -ENAMETOOLONG;
    }
    memcpy(host, addr, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    kvlist_set(kv, "addr.type", "inet");
    kvlist_set(kv, "addr.host", host);
    return kvlist_set(kv, "addr.port", colon + 1);
}

/* The node already open for image name img (a file name, or the file
 * of a vol:POOL/NAME volume), or NULL. */
static BlockNode *find_open_image(const char *img)
{
    if (!pool_is_vol_name(img)) {
        return block_find_image(img);
    }
    PoolStore *ps;
    VolOpenSpec spec;
    Error ignored = { 0 };
    BlockNode *n = NULL;
    if (pool_store_open(&ps, &ignored) < 0) {
        return NULL;
    }
    if (pool_vol_open_spec(ps, img, &spec, &ignored) == 0) {
        n = block_find_image(spec.filename);
        vol_open_spec_clear(&spec);
    }
    pool_store_close(ps);
    return n;
}

static int short_export(ShortForm *sf, int i, Error *err)
{
    const char *img = sf->images[i];
    int flags = (sf->writable ? BLOCK_O_RDWR : 0) | sf->cache_flags;
    /* One image exported twice (two names for one file, or a file and
     * its volume name) shares the node the first export opened. */
    BlockNode *n = sf->image_opts ? NULL : find_open_image(img);
    if (n && sf->writable && block_node_read_only(n)) {
        block_close(n);
        return error_setf(err, EBUSY, "'%s' is exported read-only already",
                          img);
    }
    if (!n) {
        n = imgtool_open(img, sf->fmt, sf->image_opts, flags, err);
    }
    if (!n) {
        return -EINVAL;
    }
    const char *node = block_node_name(n);
    char *node_copy = strdup(node);
    int ret = blockdev_hold(n, err);
    if (ret < 0 || !node_copy) {
        free(node_copy);
        return ret < 0 ? ret : error_setf(err, ENOMEM, "out of memory");
    }
    KVList kv = { 0 };
    const char *name = sf->name ? sf->name : sf->n_images == 1 ? "" : img;
    char id[32];
    snprintf(id, sizeof(id), "export%d", i);
    kvlist_set(&kv, "type", "nbd");
    kvlist_set(&kv, "id", id);
    kvlist_set(&kv, "node-name", node_copy);
    kvlist_set(&kv, "name", name);
    kvlist_set(&kv, "writable", sf->writable ? "on" : "off");
    kvlist_set(&kv, "allocation-depth", sf->depth ? "on" : "off");
    if (sf->desc) {
        kvlist_set(&kv, "description", sf->desc);
    }
    for (size_t b = 0; b < sf->bitmaps.n; b++) {
        char k[32];
        snprintf(k, sizeof(k), "bitmaps.%zu", b);
        kvlist_set(&kv, k, sf->bitmaps.items[b]);
    }
    ret = block_export_add(&kv, NULL, err);
    if (ret < 0) {
        error_prefixf(err, "%s", img);
    }
    kvlist_free(&kv);
    free(node_copy);
    return ret;
}

static int short_form(ShortForm *sf, Error *err)
{
    if (sf->n_images == 0) {
        return 0;
    }
    if (sf->name && sf->n_images > 1) {
        return error_setf(err, EINVAL, "--name names one export; with "
                          "several images each is named as given");
    }
    KVList kv = { 0 };
    int ret = nbd_addr_opts(sf->nbd, &kv);
    if (sf->tls) {
        kvlist_set(&kv, "tls-creds", sf->tls);
    }
    if (sf->max_conns) {
        kvlist_set(&kv, "max-connections", sf->max_conns);
    }
    ret = ret < 0 ? error_setf(err, -ret, "bad address '%s'", sf->nbd)
                  : nbd_server_start(&kv, err);
    kvlist_free(&kv);
    for (int i = 0; ret == 0 && i < sf->n_images; i++) {
        ret = short_export(sf, i, err);
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* qemu-storage-daemon options                                         */

static int run_action(const Action *a, Error *err)
{
    KVList kv = { 0 };
    int ret = 0;
    switch (a->kind) {
    case ACT_OBJECT:
        if (strncmp(a->arg, "iothread", 8) == 0 ||
            strncmp(a->arg, "qom-type=iothread", 17) == 0) {
            return serve_iothread_add(a->arg, err);
        }
        /* secrets and TLS credentials; reports its own error.  The
         * argument is argv's: writable, so an inline secret is wiped. */
        return imgtool_object_add((char *)a->arg) < 0 ? -EINVAL : 0;
    case ACT_BLOCKDEV:
        ret = qmp_parse_arg(a->arg, NULL, &kv, err);
        if (ret == 0) {
            ret = blockdev_add(&kv, err);
        }
        break;
    case ACT_NBD_SERVER:
        ret = qmp_parse_arg(a->arg, NULL, &kv, err);
        if (ret == 0) {
            ret = nbd_server_start(&kv, err);
        }
        if (ret == 0) {
            ret = kvlist_check_unused(&kv, "--nbd-server", err);
        }
        break;
    case ACT_EXPORT:
        ret = qmp_parse_arg(a->arg, "type", &kv, err);
        if (ret == 0) {
            ret = block_export_add(&kv, NULL, err);
        }
        break;
    case ACT_CHARDEV:
        return serve_chardev_add(a->arg, err);
    case ACT_MONITOR:
        return serve_monitor_add(a->arg, main_loop, err);
    case ACT_QMP:
        return serve_qmp_path(a->arg, main_loop, err);
    }
    kvlist_free(&kv);
    return ret;
}

/* ------------------------------------------------------------------ */

static void quit_cb(void *opaque)
{
    begin_shutdown(NULL);
}

static void export_event(void *opaque, const char *event, json_t *data)
{
    monitor_event(event, data);
    if (stopping && block_export_count() == 0) {
        loop_stop(main_loop);
    }
}

static int serve_main(Action *acts, int nacts, ShortForm *sf, bool daemonize,
                      const char *pidfile, int argc, char **argv)
{
    Error err = { 0 };
    int rc = 1, sfd = -1;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    /* Blocked before any thread exists, so every thread inherits it and
     * only the signalfd sees them. */
    pthread_sigmask(SIG_BLOCK, &mask, NULL);

    if (daemonize && serve_daemonize(argc, argv, &err) < 0) {
        imgtool_report(&err);
        return 1;
    }
    main_loop = loop_new(&err);
    if (!main_loop) {
        imgtool_report(&err);
        return 1;
    }
    block_export_set_main_loop(main_loop);
    block_export_set_event_fn(export_event, NULL);
    monitor_set_quit_fn(quit_cb, NULL);
    sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0 || loop_add_fd(main_loop, sfd, EPOLLIN, signal_event,
                               &sfd) < 0) {
        imgtool_error("cannot watch signals: %s", strerror(errno));
        goto out;
    }
    for (int i = 0; i < nacts; i++) {
        if (run_action(&acts[i], &err) < 0) {
            if (error_is_set(&err)) {
                imgtool_report(&err);
            }
            goto out;
        }
    }
    if (short_form(sf, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    if (pidfile && serve_pidfile(pidfile, &err) < 0) {
        imgtool_report(&err);
        goto out;
    }
    serve_sd_notify("READY=1");
    serve_daemon_ready();
    loop_run(main_loop);
    /* quit or a signal: the exports are gone (begin_shutdown waited). */
    rc = 0;
out:
    stopping = true;
    if (nbd_server_running()) {
        Error ignored = { 0 };
        nbd_server_stop(&ignored);
    }
    block_export_del_all();
    /* A failed start-up may leave exports to wind down: let them. */
    if (block_export_count() > 0) {
        loop_run(main_loop);
    }
    serve_opts_cleanup();
    block_drain_all_begin();
    block_drain_all_end();
    Error cerr = { 0 };
    if (blockdev_close_all(&cerr) < 0) {
        imgtool_report(&cerr);
        rc = 1;
    }
    qmp_backup_jobs_free();
    if (sfd >= 0) {
        loop_del_fd(main_loop, sfd);
        close(sfd);
    }
    block_export_set_main_loop(NULL);
    loop_free(main_loop);
    main_loop = NULL;
    serve_pidfile_remove();
    return rc;
}

/* ------------------------------------------------------------------ */
/* Options                                                             */

typedef struct ServeArgs {
    Action *acts;
    int nacts;
    ShortForm sf;
    bool daemonize;
    bool version;
    const char *pidfile;
    const char *cache;
} ServeArgs;

static ServeArgs args;

static int take_action(const CmdOpt *o, const char *arg, void *ctx)
{
    static const struct {
        const char *name;
        ActKind kind;
    } kinds[] = {
        { "blockdev", ACT_BLOCKDEV }, { "object", ACT_OBJECT },
        { "nbd-server", ACT_NBD_SERVER }, { "export", ACT_EXPORT },
        { "chardev", ACT_CHARDEV }, { "monitor", ACT_MONITOR },
        { "qmp", ACT_QMP },
    };
    ServeArgs *sa = ctx;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if (strcmp(o->long_name, kinds[i].name) == 0) {
            sa->acts[sa->nacts].kind = kinds[i].kind;
            sa->acts[sa->nacts].arg = arg;
            sa->nacts++;
        }
    }
    return 0;
}

static int ignore_trace(const CmdOpt *o, const char *arg, void *ctx)
{
    imgtool_warn("--trace is not supported; ignored");
    return 0;
}

#define ACTION(name, argname, help) \
    { CMDOPT_FN, 0, name, argname, help, .fn = take_action }

static const CmdOpt serve_opts[] = {
    ACTION("blockdev", "options",
           "open a node (key=value list or JSON), in order"),
    ACTION("object", "objectdef",
           "secret, tls-creds-x509, tls-creds-psk or iothread"),
    ACTION("nbd-server", "options",
           "addr.type=unix,addr.path=P | addr.type=inet,addr.host=H,"
           "addr.port=N [,tls-creds=ID][,max-connections=N]"),
    ACTION("export", "options",
           "type=nbd,id=ID,node-name=NODE [,name=NAME] [,writable=on] "
           "[,bitmaps.0=B] [,allocation-depth=on]; or "
           "type=vhost-user-blk|vhost-user-scsi ,id=ID,node-name=NODE "
           ",addr.type=unix,addr.path=P [,writable=on] [,num-queues=N] "
           "[,lun=N] (imgtool(1), VHOST-USER EXPORTS)"),
    ACTION("chardev", "options", "socket,id=ID,path=P,server=on,wait=off"),
    ACTION("monitor", "[chardev=]id", "a QMP control socket on a chardev"),
    { CMDOPT_FLAG, 0, "daemonize", NULL, "run in the background once ready",
      .value = &args.daemonize },
    { CMDOPT_STRING, 0, "pidfile", "path",
      "write (and lock) the process id there", .value = &args.pidfile },
    { CMDOPT_FN, 'T', "trace", "events", NULL, .fn = ignore_trace,
      .flags = CMDOPT_HIDDEN },
    { CMDOPT_FLAG, 'V', "version", NULL, "print the version",
      .value = &args.version },
    { CMDOPT_STRING, 0, "nbd", "socket|host:port",
      "short form: serve each image over NBD there", .value = &args.sf.nbd },
    { CMDOPT_STRING, 0, "name", "name",
      "export name of the one image (default \"\")", .value = &args.sf.name },
    { CMDOPT_STRING, 0, "description", "text", "export description",
      .value = &args.sf.desc },
    { CMDOPT_FLAG, 'w', "writable", NULL,
      "let clients write (default read-only)", .value = &args.sf.writable },
    CMDOPT_FORMAT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_CACHE('t', "cache", &args.cache, ""),
    { CMDOPT_LIST, 'B', "bitmap", "name",
      "offer qemu:dirty-bitmap:NAME (repeatable)",
      .value = &args.sf.bitmaps },
    { CMDOPT_FLAG, 'A', "allocation-depth", NULL,
      "offer qemu:allocation-depth", .value = &args.sf.depth },
    { CMDOPT_STRING, 0, "tls-creds", "id",
      "require TLS with these credentials", .value = &args.sf.tls },
    { CMDOPT_STRING, 'e', "max-connections", "n",
      "at most n clients at once", .value = &args.sf.max_conns },
    ACTION("qmp", "path", "a QMP control socket at path"),
    CMDOPT_END,
};

static const CmdSpec serve_spec = {
    .name = "serve",
    .args = "[image...]",
    .description =
        "  Serves images over NBD, configured with qemu-storage-daemon's\n"
        "  options (acted on in order), or in the short form: --nbd WHERE\n"
        "  and one export per image.  SIGTERM (or QMP quit) drains,\n"
        "  flushes, closes and removes the sockets it made.  Control it at\n"
        "  run time with `imgtool serve-ctl SOCKET COMMAND`.\n",
    .opts = serve_opts,
};

int cmd_serve(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc = 1;
    memset(&args, 0, sizeof(args));
    args.acts = calloc((size_t)argc + 1, sizeof(*args.acts));
    if (!args.acts) {
        imgtool_error("Out of memory");
        return 1;
    }
    ShortForm *sf = &args.sf;
    if (cmd_parse(&serve_spec, &a, &args, argc, argv, &rc) < 0) {
        goto out;
    }
    rc = 1;
    if (args.version) {
        imgtool_print_version(stdout);
        rc = 0;
        goto out;
    }
    if (args.cache && cmd_cache_flags(args.cache, false,
                                      &sf->cache_flags) < 0) {
        goto out;
    }
    sf->fmt = a.fmt;
    sf->image_opts = a.image_opts;
    sf->images = argv + optind;
    sf->n_images = argc - optind;
    if (args.nacts == 0 && sf->n_images == 0) {
        rc = usage_error("serve", "nothing to serve: give an image with "
                         "--nbd, or --blockdev/--export options");
        goto out;
    }
    if (sf->n_images > 0 && !sf->nbd) {
        rc = usage_error("serve", "give --nbd SOCKET|HOST:PORT to say where "
                         "to serve the image");
        goto out;
    }
    if (sf->n_images == 0 && (sf->nbd || sf->name || sf->writable)) {
        rc = usage_error("serve", "the short form needs an IMAGE to "
                         "serve");
        goto out;
    }
    if (image_args_check(&a) < 0) {
        goto out;
    }
    rc = serve_main(args.acts, args.nacts, sf, args.daemonize, args.pidfile,
                    argc, argv);
out:
    free(args.acts);
    cmd_list_free(&sf->bitmaps);
    return rc;
}
