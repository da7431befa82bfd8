/*
 * progress.c - qemu-img's progress bar.
 *
 * With -p the bar is redrawn in place on stdout ("    (45.00/100%)\r")
 * whenever it moved by at least one point, and progress_finish ends the
 * line.  Without -p, SIGUSR1 prints one report on stderr
 * ("    (45.00/100%)\n"), as qemu-img does; with -p it redraws the bar.
 *
 * SIGUSR1 never kills imgtool, whatever the command and whenever it
 * comes (qemu-img blocks it from the start too): progress_signals_init,
 * called by main before anything else, blocks it in the main thread, so
 * every thread started later (copy workers, io_uring waiters ...)
 * inherits the blocked mask and no system call of theirs is interrupted;
 * one thread of ours takes it with sigwait and reports from ordinary
 * thread context, so printing needs no async-signal-safety tricks.
 *
 * Updates come from many copy workers, so each Progress sits behind a
 * mutex; `active_lock` guards which Progress a signal reports (taken
 * before a Progress's own lock, never after).
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "imgtool/imgtool.h"

/* Redraw only when the value moved this much: a 1 TiB copy must not
 * print a million lines. */
#define PROGRESS_MIN_STEP 1.0

struct Progress {
    bool enabled;
    FILE *out;           /* where the bar goes: stdout unless told */
    pthread_mutex_t lock;
    double current;      /* percent */
    double last_printed; /* percent, < 0 before the first draw */
    uint64_t done;       /* for progress_add */
};

static pthread_mutex_t active_lock = PTHREAD_MUTEX_INITIALIZER;
static Progress *active;    /* the one SIGUSR1 reports, or NULL */

static void print_now(Progress *p);

static void *sigusr1_thread(void *arg)
{
    sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0) {
            continue;
        }
        pthread_mutex_lock(&active_lock);
        if (active) {
            pthread_mutex_lock(&active->lock);
            print_now(active);
            pthread_mutex_unlock(&active->lock);
        }
        pthread_mutex_unlock(&active_lock);
    }
    return NULL;
}

void progress_signals_init(void)
{
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) {
        return;
    }
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* The thread is born with every signal blocked, so it never takes
     * one meant for the process: SIGTERM and SIGINT still kill a
     * command through the main thread, and `serve`, which blocks them
     * to read them from a signalfd, still gets them there. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    /* Without the thread the signal stays blocked: it is lost, never
     * fatal. */
    pthread_create(&t, &attr, sigusr1_thread, &set);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

Progress *progress_start(bool enabled)
{
    return progress_start_on(enabled, stdout);
}

Progress *progress_start_on(bool enabled, FILE *out)
{
    Progress *p = calloc(1, sizeof(*p));
    if (!p) {
        return NULL;
    }
    p->enabled = enabled;
    p->out = out;
    p->last_printed = -1.0;
    pthread_mutex_init(&p->lock, NULL);
    /* qemu-img draws 0.00 before any work is done */
    progress_update(p, 0, 1);
    pthread_mutex_lock(&active_lock);
    active = p;
    pthread_mutex_unlock(&active_lock);
    return p;
}

/* Lock held: the report SIGUSR1 asks for. */
static void print_now(Progress *p)
{
    if (p->enabled) {
        fprintf(p->out, "    (%3.2f/100%%)\r", p->current);
        fflush(p->out);
        p->last_printed = p->current;
    } else {
        fprintf(stderr, "    (%3.2f/100%%)\n", p->current);
    }
}

/* Lock held. */
static void progress_draw(Progress *p)
{
    if (p->enabled &&
        (p->last_printed < 0 ||
         p->current - p->last_printed >= PROGRESS_MIN_STEP ||
         (p->current >= 100.0 && p->last_printed < 100.0))) {
        print_now(p);
    }
}

/* Lock held. */
static void progress_set(Progress *p, uint64_t done, uint64_t total)
{
    double v = total ? (double)done * 100.0 / (double)total : 100.0;
    if (v > 100.0) {
        v = 100.0;
    }
    /* updates from racing workers may arrive out of order */
    if (v > p->current || p->last_printed < 0) {
        p->current = v;
    }
    p->done = done;
    progress_draw(p);
}

void progress_update(Progress *p, uint64_t done, uint64_t total)
{
    if (!p) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    progress_set(p, done, total);
    pthread_mutex_unlock(&p->lock);
}

void progress_qemu_step(Progress *p, float percent)
{
    if (!p) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    float last = (float)p->last_printed;
    if (percent > last + 1.0f || percent < last - 1.0f ||
        percent == 100.0f || percent == 0.0f) {
        p->current = percent;
        if (p->enabled) {
            print_now(p);
        }
        p->last_printed = percent;
    }
    pthread_mutex_unlock(&p->lock);
}

void progress_add(Progress *p, uint64_t delta, uint64_t total)
{
    if (!p) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    progress_set(p, p->done + delta, total);
    pthread_mutex_unlock(&p->lock);
}

void progress_finish(Progress *p)
{
    if (!p) {
        return;
    }
    pthread_mutex_lock(&active_lock);
    if (active == p) {
        active = NULL;
    }
    pthread_mutex_unlock(&active_lock);
    pthread_mutex_lock(&p->lock);
    if (p->enabled) {
        fputc('\n', p->out);
        fflush(p->out);
    }
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
