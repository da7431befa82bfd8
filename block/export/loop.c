/*
 * loop.c - the epoll event loop (see loop.h).
 *
 * Invariants:
 *  - handlers are kept in an array indexed by fd; an epoll event carries
 *    the fd and the handler's generation, and a handler deleted (or
 *    replaced) since the event was fetched has another generation, so a
 *    stale event is dropped instead of calling freed state;
 *  - posted work is a FIFO under `lock`; the eventfd is written only
 *    when the queue goes from empty to non-empty (`notified`), and the
 *    loop reads it before it takes the queue, so no post is missed;
 *  - timers are an unsorted list (a loop has a handful): the earliest
 *    armed deadline bounds each epoll_wait.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "block/export/loop.h"

#define MAX_EVENTS 64
/* Workers for loop_run_blocking, started on demand. */
#define BLOCKING_WORKERS 8

typedef struct Handler {
    LoopFdFn *fn;
    void *opaque;
    uint32_t gen;
} Handler;

struct LoopTimer {
    Loop *loop;
    LoopFn *fn;
    void *opaque;
    uint64_t deadline;    /* 0: disarmed */
    LoopTimer *next;
};

struct Loop {
    int epfd;
    int efd;
    Handler *handlers;
    int n_handlers;
    uint32_t next_gen;

    pthread_mutex_t lock;      /* posted work */
    LoopWork *post_head, *post_tail;
    bool notified;

    LoopWork *defer_head, *defer_tail;   /* loop thread only */
    LoopTimer *timers;

    atomic_bool stop;
    pthread_t thread;
    atomic_bool running;
    bool own_thread;
};

uint64_t loop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

Loop *loop_new(Error *err)
{
    Loop *l = calloc(1, sizeof(*l));
    if (!l) {
        error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->epfd < 0 || l->efd < 0) {
        error_setf(err, errno, "cannot create an event loop: %s",
                   strerror(errno));
        goto fail;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = UINT64_MAX };
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->efd, &ev) < 0) {
        error_setf(err, errno, "cannot create an event loop: %s",
                   strerror(errno));
        goto fail;
    }
    pthread_mutex_init(&l->lock, NULL);
    l->next_gen = 1;
    return l;
fail:
    if (l->epfd >= 0) {
        close(l->epfd);
    }
    if (l->efd >= 0) {
        close(l->efd);
    }
    free(l);
    return NULL;
}

static void run_posted(Loop *l);

void loop_free(Loop *l)
{
    if (!l) {
        return;
    }
    run_posted(l);
    while (l->timers) {
        LoopTimer *t = l->timers;
        l->timers = t->next;
        free(t);
    }
    close(l->epfd);
    close(l->efd);
    free(l->handlers);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

bool loop_in_thread(const Loop *l)
{
    return atomic_load(&l->running) && pthread_equal(l->thread,
                                                     pthread_self());
}

/* ------------------------------------------------------------------ */
/* File descriptors                                                    */

static uint64_t ev_data(int fd, uint32_t gen)
{
    return (uint64_t)(uint32_t)fd | ((uint64_t)gen << 32);
}

int loop_add_fd(Loop *l, int fd, uint32_t events, LoopFdFn *fn, void *opaque)
{
    if (fd < 0) {
        return -EBADF;
    }
    if (fd >= l->n_handlers) {
        int n = l->n_handlers ? l->n_handlers : 64;
        while (n <= fd) {
            n *= 2;
        }
        Handler *h = realloc(l->handlers, (size_t)n * sizeof(*h));
        if (!h) {
            return -ENOMEM;
        }
        memset(h + l->n_handlers, 0,
               (size_t)(n - l->n_handlers) * sizeof(*h));
        l->handlers = h;
        l->n_handlers = n;
    }
    Handler *h = &l->handlers[fd];
    if (h->fn) {
        return -EEXIST;
    }
    uint32_t gen = l->next_gen++;
    if (gen == 0) {
        gen = l->next_gen++;
    }
    struct epoll_event ev = { .events = events, .data.u64 = ev_data(fd, gen) };
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        return -errno;
    }
    h->fn = fn;
    h->opaque = opaque;
    h->gen = gen;
    return 0;
}

int loop_mod_fd(Loop *l, int fd, uint32_t events)
{
    if (fd < 0 || fd >= l->n_handlers || !l->handlers[fd].fn) {
        return -ENOENT;
    }
    struct epoll_event ev = {
        .events = events, .data.u64 = ev_data(fd, l->handlers[fd].gen),
    };
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void loop_del_fd(Loop *l, int fd)
{
    if (fd < 0 || fd >= l->n_handlers || !l->handlers[fd].fn) {
        return;
    }
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    l->handlers[fd].fn = NULL;
    l->handlers[fd].opaque = NULL;
    l->handlers[fd].gen = 0;
}

/* ------------------------------------------------------------------ */
/* Timers                                                              */

LoopTimer *loop_timer_new(Loop *l, LoopFn *fn, void *opaque)
{
    LoopTimer *t = calloc(1, sizeof(*t));
    if (t) {
        t->loop = l;
        t->fn = fn;
        t->opaque = opaque;
        t->next = l->timers;
        l->timers = t;
    }
    return t;
}

void loop_timer_arm(LoopTimer *t, uint64_t ms)
{
    t->deadline = loop_now_ms() + ms;
    if (t->deadline == 0) {
        t->deadline = 1;
    }
}

void loop_timer_disarm(LoopTimer *t)
{
    t->deadline = 0;
}

void loop_timer_free(LoopTimer *t)
{
    if (!t) {
        return;
    }
    for (LoopTimer **p = &t->loop->timers; *p; p = &(*p)->next) {
        if (*p == t) {
            *p = t->next;
            break;
        }
    }
    free(t);
}

static int next_timeout(Loop *l)
{
    uint64_t first = 0;
    for (LoopTimer *t = l->timers; t; t = t->next) {
        if (t->deadline && (!first || t->deadline < first)) {
            first = t->deadline;
        }
    }
    if (!first) {
        return -1;
    }
    uint64_t now = loop_now_ms();
    return first <= now ? 0 : (int)(first - now > 60000 ? 60000
                                                         : first - now);
}

static void run_timers(Loop *l)
{
    uint64_t now = loop_now_ms();
    /* A timer's function may free or arm timers: start over after each. */
    for (;;) {
        LoopTimer *due = NULL;
        for (LoopTimer *t = l->timers; t; t = t->next) {
            if (t->deadline && t->deadline <= now) {
                due = t;
                break;
            }
        }
        if (!due) {
            return;
        }
        due->deadline = 0;
        due->fn(due->opaque);
    }
}

/* ------------------------------------------------------------------ */
/* Work from other threads                                             */

void loop_post(Loop *l, LoopWork *w)
{
    w->next = NULL;
    pthread_mutex_lock(&l->lock);
    if (l->post_tail) {
        l->post_tail->next = w;
    } else {
        l->post_head = w;
    }
    l->post_tail = w;
    bool wake = !l->notified;
    l->notified = true;
    pthread_mutex_unlock(&l->lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t r = write(l->efd, &one, sizeof(one));
        (void)r;   /* EAGAIN: the counter is already non-zero */
    }
}

typedef struct CallWork {
    LoopWork w;
    LoopFn *fn;
    void *opaque;
} CallWork;

static void call_run(void *opaque)
{
    CallWork *c = opaque;
    LoopFn *fn = c->fn;
    void *arg = c->opaque;
    free(c);
    fn(arg);
}

int loop_call(Loop *l, LoopFn *fn, void *opaque)
{
    CallWork *c = malloc(sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    c->fn = fn;
    c->opaque = opaque;
    c->w.fn = call_run;
    c->w.opaque = c;
    loop_post(l, &c->w);
    return 0;
}

void loop_defer(Loop *l, LoopWork *w)
{
    w->next = NULL;
    if (l->defer_tail) {
        l->defer_tail->next = w;
    } else {
        l->defer_head = w;
    }
    l->defer_tail = w;
}

static void run_posted(Loop *l)
{
    uint64_t v;
    ssize_t r = read(l->efd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&l->lock);
    LoopWork *w = l->post_head;
    l->post_head = l->post_tail = NULL;
    l->notified = false;
    pthread_mutex_unlock(&l->lock);
    while (w) {
        LoopWork *next = w->next;
        w->fn(w->opaque);
        w = next;
    }
}

static void run_deferred(Loop *l)
{
    /* Deferred work may defer more: it runs in this same round. */
    while (l->defer_head) {
        LoopWork *w = l->defer_head;
        l->defer_head = w->next;
        if (!l->defer_head) {
            l->defer_tail = NULL;
        }
        w->fn(w->opaque);
    }
}

/* ------------------------------------------------------------------ */
/* Running                                                             */

void loop_run(Loop *l)
{
    struct epoll_event evs[MAX_EVENTS];
    l->thread = pthread_self();
    atomic_store(&l->running, true);
    while (!atomic_load(&l->stop)) {
        int n = epoll_wait(l->epfd, evs, MAX_EVENTS,
                           l->defer_head ? 0 : next_timeout(l));
        if (n < 0 && errno != EINTR) {
            break;
        }
        bool posted = false;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == UINT64_MAX) {
                posted = true;
                continue;
            }
            int fd = (int)(uint32_t)evs[i].data.u64;
            uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32);
            if (fd >= l->n_handlers || l->handlers[fd].gen != gen ||
                !l->handlers[fd].fn) {
                continue;   /* deleted since it was fetched */
            }
            l->handlers[fd].fn(l->handlers[fd].opaque, evs[i].events);
        }
        if (posted) {
            run_posted(l);
        }
        run_timers(l);
        run_deferred(l);
    }
    atomic_store(&l->stop, false);
    atomic_store(&l->running, false);
}

void loop_stop(Loop *l)
{
    atomic_store(&l->stop, true);
    uint64_t one = 1;
    ssize_t r = write(l->efd, &one, sizeof(one));
    (void)r;
}

static void *loop_thread_main(void *opaque)
{
    loop_run(opaque);
    return NULL;
}

int loop_start_thread(Loop *l, Error *err)
{
    int r = pthread_create(&l->thread, NULL, loop_thread_main, l);
    if (r) {
        return error_setf(err, r, "cannot start an event loop thread: %s",
                          strerror(r));
    }
    l->own_thread = true;
    return 0;
}

void loop_join(Loop *l)
{
    if (l->own_thread) {
        loop_stop(l);
        pthread_join(l->thread, NULL);
        l->own_thread = false;
    }
}

/* ------------------------------------------------------------------ */
/* Blocking work on worker threads                                     */

typedef struct BlockingJob {
    LoopWork w;            /* the continuation, posted to the loop */
    Loop *loop;
    LoopFn *work;
    LoopFn *done;
    void *opaque;
    struct BlockingJob *next;
} BlockingJob;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    BlockingJob *head, *tail;
    int threads, idle;
} pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER,
};

static void blocking_done(void *opaque)
{
    BlockingJob *j = opaque;
    LoopFn *done = j->done;
    void *arg = j->opaque;
    free(j);
    done(arg);
}

static void *blocking_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.head) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 10;
            pool.idle++;
            int r = pthread_cond_timedwait(&pool.cond, &pool.lock, &until);
            pool.idle--;
            if (r == ETIMEDOUT && !pool.head) {
                pool.threads--;
                pthread_mutex_unlock(&pool.lock);
                return NULL;
            }
        }
        BlockingJob *j = pool.head;
        pool.head = j->next;
        if (!pool.head) {
            pool.tail = NULL;
        }
        pthread_mutex_unlock(&pool.lock);
        j->work(j->opaque);
        j->w.fn = blocking_done;
        j->w.opaque = j;
        loop_post(j->loop, &j->w);
        pthread_mutex_lock(&pool.lock);
    }
}

int loop_run_blocking(Loop *l, LoopFn *work, LoopFn *done, void *opaque)
{
    BlockingJob *j = calloc(1, sizeof(*j));
    if (!j) {
        return -ENOMEM;
    }
    j->loop = l;
    j->work = work;
    j->done = done;
    j->opaque = opaque;
    pthread_mutex_lock(&pool.lock);
    if (pool.idle == 0 && pool.threads < BLOCKING_WORKERS) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, blocking_main, NULL) == 0) {
            pool.threads++;
        }
        pthread_attr_destroy(&attr);
    }
    if (pool.threads == 0) {
        pthread_mutex_unlock(&pool.lock);
        free(j);
        return -EAGAIN;
    }
    if (pool.tail) {
        pool.tail->next = j;
    } else {
        pool.head = j;
    }
    pool.tail = j;
    pthread_cond_signal(&pool.cond);
    pthread_mutex_unlock(&pool.lock);
    return 0;
}
