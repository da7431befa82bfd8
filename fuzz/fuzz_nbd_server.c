/*
 * fuzz_nbd_server.c - libFuzzer harness: an arbitrary byte stream from
 * an NBD client, through the real server (block/export/nbd-*.c): the
 * handshake, option haggling, the request parser, the replies, and the
 * requests themselves on real nodes.
 *
 * Two exports, set up once: "" is a writable 1 MiB raw image, "q" a
 * read-only 1 MiB qcow2 image with a dirty bitmap "b" and the
 * allocation-depth context, both on memfds.  Each input is written into
 * one end of a socketpair whose other end the server adopts, then the
 * write side is shut; the harness reads and drops whatever the server
 * answers, and the input is done when the server has let go of the
 * connection (every request it started has ended).
 *
 * Any crash, sanitizer report, leak, hang or timeout is a bug in the
 * server: every stream must be answered or refused in bounded time and
 * memory.  The seeds (fuzz/corpus/nbd/, made by fuzz/make_nbd_corpus.py)
 * are well-formed sessions that reach every option and command.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "block/block.h"
#include "block/export/export.h"
#include "block/export/loop.h"
#include "block/export/nbd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define IMAGE_SIZE (1u << 20)

static Loop *loop;

typedef struct Feed {
    int fd;
    const uint8_t *data;
    size_t size, sent;
    bool shut;
    LoopTimer *timer;
} Feed;

static int memfd_path(char *path, size_t len)
{
    int fd = memfd_create("fuzz-nbd", 0);
    if (fd < 0 || ftruncate(fd, IMAGE_SIZE) < 0) {
        return -1;
    }
    snprintf(path, len, "/proc/self/fd/%d", fd);
    return fd;
}

static void die(const char *what, const Error *err)
{
    fprintf(stderr, "fuzz_nbd_server: %s: %s\n", what, err ? err->msg : "");
    abort();
}

static void add_export(const char *def)
{
    Error err = { 0 };
    KVList kv = { 0 };
    if (kvlist_parse(&kv, def, NULL, &err) < 0 ||
        block_export_add(&kv, NULL, &err) < 0) {
        die(def, &err);
    }
    kvlist_free(&kv);
}

static void setup(void)
{
    Error err = { 0 };
    char path[64], opts[160];
    loop = loop_new(&err);
    if (!loop) {
        die("loop", &err);
    }
    block_export_set_main_loop(loop);
    if (nbd_server_start_unbound(NULL, &err) < 0) {
        die("server", &err);
    }

    if (memfd_path(path, sizeof(path)) < 0) {
        die("memfd", NULL);
    }
    KVList kv = { 0 };
    kvlist_set(&kv, "node-name", "raw0");
    BlockNode *raw = block_open(path, "raw", &kv, BLOCK_O_RDWR |
                                BLOCK_O_NO_LOCK, &err);
    kvlist_free(&kv);
    if (!raw) {
        die("raw image", &err);
    }
    add_export("type=nbd,id=e0,node-name=raw0,name=,writable=on");

    if (memfd_path(path, sizeof(path)) < 0) {
        die("memfd", NULL);
    }
    KVList copts = { 0 };
    if (block_create("qcow2", path, IMAGE_SIZE, true, &copts,
                     BLOCK_CREATE_QUIET, &err) < 0) {
        die("qcow2 image", &err);
    }
    kvlist_set(&kv, "node-name", "q0");
    BlockNode *q = block_open(path, "qcow2", &kv, BLOCK_O_RDWR |
                              BLOCK_O_NO_LOCK, &err);
    kvlist_free(&kv);
    if (!q || block_bitmap_add(q, "b", 65536, true, &err) < 0) {
        die("qcow2 node", &err);
    }
    static const uint8_t pattern[8192] = { 1 };
    block_pwrite(q, 65536, sizeof(pattern), pattern, 0);
    block_pwrite(q, 512 << 10, sizeof(pattern), pattern, 0);
    snprintf(opts, sizeof(opts), "type=nbd,id=e1,node-name=q0,name=q,"
             "bitmaps.0=b,allocation-depth=on,description=fuzz");
    add_export(opts);
    /* The nodes stay open for the process: the exports hold them. */
    block_close(raw);
    block_close(q);
}

static void feed_done_check(void *opaque)
{
    Feed *f = opaque;
    if (nbd_server_connections() == 0) {
        loop_stop(loop);
    } else {
        loop_timer_arm(f->timer, 1);
    }
}

static void feed_event(void *opaque, uint32_t events)
{
    Feed *f = opaque;
    if (events & EPOLLOUT && f->sent < f->size) {
        ssize_t r = send(f->fd, f->data + f->sent, f->size - f->sent,
                         MSG_NOSIGNAL);
        if (r > 0) {
            f->sent += (size_t)r;
        } else if (r < 0 && errno != EAGAIN) {
            f->sent = f->size;   /* the server closed: stop feeding */
        }
    }
    if (f->sent == f->size && !f->shut) {
        shutdown(f->fd, SHUT_WR);
        f->shut = true;
        loop_mod_fd(loop, f->fd, EPOLLIN);
    }
    if (events & (EPOLLIN | EPOLLHUP)) {
        char buf[65536];
        while (recv(f->fd, buf, sizeof(buf), 0) > 0) {
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                   sv) < 0) {
        return 0;
    }
    Error err = { 0 };
    if (nbd_server_adopt(sv[0], &err) < 0) {
        close(sv[1]);
        return 0;
    }
    Feed f = { .fd = sv[1], .data = data, .size = size };
    f.timer = loop_timer_new(loop, feed_done_check, &f);
    loop_add_fd(loop, f.fd, EPOLLIN | EPOLLOUT, feed_event, &f);
    loop_timer_arm(f.timer, 1);
    loop_run(loop);
    loop_del_fd(loop, f.fd);
    loop_timer_free(f.timer);
    close(f.fd);
    return 0;
}
