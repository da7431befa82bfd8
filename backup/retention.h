/*
 * retention.h - which points a --keep-last/daily/weekly/monthly policy
 * keeps (retention.c; internal to backup/).
 */
#ifndef IMGTOOL_BACKUP_RETENTION_H
#define IMGTOOL_BACKUP_RETENTION_H

#include <stdbool.h>

#include "backup/repo.h"

typedef struct BkPolicy {
    int last, daily, weekly, monthly;
} BkPolicy;

/* keep[i] for r->points[i]: kept by some rule, or the newest point.
 * Days, weeks (ISO 8601) and months are local time, as cron's. */
void bk_retention(const BkRepo *r, const BkPolicy *p, bool *keep);

#endif
