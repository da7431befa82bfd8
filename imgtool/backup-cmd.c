/*
 * backup-cmd.c - the command-line side shared by the backup commands
 * (see backup-cmd.h).
 */
#include <signal.h>
#include <string.h>

#include "imgtool/backup-cmd.h"

atomic_bool backup_cmd_cancel;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&backup_cmd_cancel, true);
}

void backup_cmd_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

void backup_cmd_progress(void *opaque, uint64_t done, uint64_t total)
{
    progress_update(opaque, done, total);
}

BlockNode *backup_cmd_open(void *opaque, const char *name, int flags,
                           Error *err)
{
    ImageArgs *a = opaque;
    return imgtool_open(name, a->fmt, a->image_opts,
                        flags | image_args_flags(a), err);
}
