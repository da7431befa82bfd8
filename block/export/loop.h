/*
 * loop.h - the event loop exports run on: one epoll loop per thread.
 *
 * A loop watches file descriptors (level-triggered), runs one-shot
 * timers, and runs work that other threads hand it.  Exports keep their
 * sockets and per-connection state on one loop, so that state needs no
 * lock: everything a connection does happens on its loop's thread.  The
 * block layer completes asynchronous requests on its own threads; a
 * completion callback hands its result back with loop_post() (no
 * allocation) or loop_call().
 *
 * Rules:
 *  - loop_add_fd/mod_fd/del_fd, the timer functions and loop_defer are
 *    called on the loop's thread (or before the loop runs);
 *  - loop_call, loop_post and loop_stop may be called from any thread,
 *    including library completion threads;
 *  - a handler removed with loop_del_fd is never called again, even for
 *    an event already fetched in the same round;
 *  - work posted with loop_post/loop_call runs in the order it was
 *    posted; deferred work (loop_defer) runs at the end of the current
 *    round, after every event of that round (batching: queue replies
 *    while handling events, send them once).
 *
 * loop_run_blocking() runs a function that may block (block_status, a
 * synchronous open) on a shared worker thread and its continuation back
 * on the loop, for work that has no asynchronous form.
 */
#ifndef IMGTOOL_EXPORT_LOOP_H
#define IMGTOOL_EXPORT_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "block/block.h"

typedef struct Loop Loop;
typedef struct LoopTimer LoopTimer;

typedef void LoopFn(void *opaque);
/* events: EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP as fetched. */
typedef void LoopFdFn(void *opaque, uint32_t events);

/* A unit of work to embed in one's own structure: loop_post/loop_defer
 * link it into the loop's queue, so a completion never allocates.  It
 * must not be posted again before its fn has started. */
typedef struct LoopWork {
    LoopFn *fn;
    void *opaque;
    struct LoopWork *next;
} LoopWork;

Loop *loop_new(Error *err);
/* The loop must not be running (loop_run returned, or the thread was
 * joined); handlers still registered are dropped, posted work is run. */
void loop_free(Loop *l);

int loop_add_fd(Loop *l, int fd, uint32_t events, LoopFdFn *fn,
                void *opaque);
int loop_mod_fd(Loop *l, int fd, uint32_t events);
void loop_del_fd(Loop *l, int fd);

/* One-shot timers: armed for ms milliseconds from now (re-arming moves
 * the deadline), disarmed when they fire or by loop_timer_disarm. */
LoopTimer *loop_timer_new(Loop *l, LoopFn *fn, void *opaque);
void loop_timer_arm(LoopTimer *t, uint64_t ms);
void loop_timer_disarm(LoopTimer *t);
void loop_timer_free(LoopTimer *t);

/* Thread-safe hand-over to the loop's thread. */
void loop_post(Loop *l, LoopWork *w);
int loop_call(Loop *l, LoopFn *fn, void *opaque);   /* -ENOMEM */
/* On the loop's thread: w runs at the end of this round. */
void loop_defer(Loop *l, LoopWork *w);

/* Runs work(opaque) on a worker thread, then done(opaque) on l's
 * thread.  Returns -ENOMEM/-EAGAIN when nothing was started. */
int loop_run_blocking(Loop *l, LoopFn *work, LoopFn *done, void *opaque);

/* Runs the loop in the calling thread until loop_stop. */
void loop_run(Loop *l);
/* Makes loop_run return after the current round (any thread). */
void loop_stop(Loop *l);
bool loop_in_thread(const Loop *l);

/* A loop on a thread of its own (an iothread). */
int loop_start_thread(Loop *l, Error *err);
/* Stops the loop and joins its thread. */
void loop_join(Loop *l);

/* Monotonic milliseconds. */
uint64_t loop_now_ms(void);

#endif
