/*
 * progress.c - qemu-img's progress bar.
 *
 * With -p the bar is redrawn in place on stdout ("    (45.00/100%)\r")
 * whenever it moved by at least one point, and progress_finish ends the
 * line.  Without -p, SIGUSR1 asks for one report on stderr
 * ("    (45.00/100%)\n") at the next update, as qemu-img does; the handler
 * only sets a flag because printing is not async-signal-safe.
 *
 * Updates come from many copy workers, so the state sits behind a mutex.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/imgtool.h"

/* Redraw only when the value moved this much: a 1 TiB copy must not
 * print a million lines. */
#define PROGRESS_MIN_STEP 1.0

struct Progress {
    bool enabled;
    pthread_mutex_t lock;
    double current;      /* percent */
    double last_printed; /* percent, < 0 before the first draw */
    uint64_t done;       /* for progress_add */
};

static volatile sig_atomic_t progress_sigusr1;

static void progress_on_sigusr1(int sig)
{
    (void)sig;
    progress_sigusr1 = 1;
}

Progress *progress_start(bool enabled)
{
    Progress *p = calloc(1, sizeof(*p));
    if (!p) {
        return NULL;
    }
    p->enabled = enabled;
    p->last_printed = -1.0;
    pthread_mutex_init(&p->lock, NULL);
    if (!enabled) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = progress_on_sigusr1;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        sigaction(SIGUSR1, &sa, NULL);
    }
    /* qemu-img draws 0.00 before any work is done */
    progress_update(p, 0, 1);
    return p;
}

/* Lock held. */
static void progress_draw(Progress *p)
{
    if (p->enabled) {
        if (p->last_printed < 0 ||
            p->current - p->last_printed >= PROGRESS_MIN_STEP ||
            (p->current >= 100.0 && p->last_printed < 100.0)) {
            printf("    (%3.2f/100%%)\r", p->current);
            fflush(stdout);
            p->last_printed = p->current;
        }
    } else if (progress_sigusr1) {
        progress_sigusr1 = 0;
        fprintf(stderr, "    (%3.2f/100%%)\n", p->current);
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
    pthread_mutex_lock(&p->lock);
    if (p->enabled) {
        printf("\n");
        fflush(stdout);
    }
    pthread_mutex_unlock(&p->lock);
    if (!p->enabled) {
        signal(SIGUSR1, SIG_DFL);
    }
    pthread_mutex_destroy(&p->lock);
    free(p);
}
