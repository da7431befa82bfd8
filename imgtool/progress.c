/* progress.c - stub progress bar. */
#include <stdlib.h>

#include "imgtool/imgtool.h"

struct Progress {
    int unused;
};

Progress *progress_start(bool enabled)
{
    (void)enabled;
    return NULL;
}

void progress_update(Progress *p, uint64_t done, uint64_t total) { (void)p; (void)done; (void)total; }
void progress_add(Progress *p, uint64_t delta, uint64_t total) { (void)p; (void)delta; (void)total; }
void progress_finish(Progress *p) { (void)p; }
