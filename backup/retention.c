/*
 * retention.c - the retention policy (see retention.h).
 *
 * Each rule walks the points newest first: keep-last keeps the first N;
 * keep-daily keeps the newest point of each of the N most recent days
 * that have points (weekly and monthly the same with ISO weeks and
 * months), as restic and borg count.  A point is kept when any rule
 * keeps it; the newest is always kept, since the next incremental
 * builds on it.
 */
#include <string.h>
#include <time.h>

#include "backup/retention.h"

static void bucket(int64_t t, const char *fmt, char *out, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(out, len, fmt, &tm);
}

static void by_period(const BkRepo *r, int n, const char *fmt, bool *keep)
{
    char last[32] = "";
    int kept = 0;
    for (int i = r->npoints - 1; i >= 0 && kept < n; i--) {
        char b[32];
        bucket(r->points[i].time, fmt, b, sizeof(b));
        if (strcmp(b, last) != 0) {
            keep[i] = true;
            kept++;
            strcpy(last, b);
        }
    }
}

void bk_retention(const BkRepo *r, const BkPolicy *p, bool *keep)
{
    for (int i = 0; i < r->npoints; i++) {
        keep[i] = i >= r->npoints - p->last;
    }
    by_period(r, p->daily, "%Y-%m-%d", keep);
    by_period(r, p->weekly, "%G-W%V", keep);
    by_period(r, p->monthly, "%Y-%m", keep);
    if (r->npoints) {
        keep[r->npoints - 1] = true;
    }
}
