/*
 * journal.h - removing points from a repository, crash-safely: the
 * journal of a prune and its replay (prune.c; internal to backup/).
 */
#ifndef IMGTOOL_BACKUP_JOURNAL_H
#define IMGTOOL_BACKUP_JOURNAL_H

#include "backup/repo.h"

/* Finishes a prune that was interrupted (REPO/journal.json), if any:
 * takes the exclusive read lock, so it waits for readers.  Writers call
 * it before they change anything. */
int bk_journal_replay(BkRepo *r, Error *err);

#endif
