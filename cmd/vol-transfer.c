/*
 * vol-transfer.c - vol-upload and vol-download: a volume's host bytes
 * from or to a file ("-": standard input or output), with virsh's
 * --offset, --length and --sparse.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imgtool/pool-cmd.h"

#define TRANSFER_OPTS(dir)                                                   \
    { "vol", VA_STRING, VA_REQUIRED, "vol name, key or path" },              \
    { "file", VA_STRING, VA_REQUIRED, "file ('-': standard " dir ")" },      \
    { "pool", VA_STRING, 0, "pool name or uuid" },                           \
    { "offset", VA_STRING, 0, "volume offset to " "transfer at" },           \
    { "length", VA_STRING, 0, "amount of data to transfer" },                \
    { "sparse", VA_BOOL, 0, "preserve sparseness of volume" },               \
    { NULL, 0, 0, NULL }

static const VirshOpt upload_opts[] = { TRANSFER_OPTS("input") };
static const VirshOpt download_opts[] = { TRANSFER_OPTS("output") };
static const VirshCmd upload_cmd = {
    "vol-upload", "upload file contents to a volume", upload_opts,
    VA_PROGRESS | VA_OBJECT,
};
static const VirshCmd download_cmd = {
    "vol-download", "download volume contents to a file", download_opts,
    VA_PROGRESS | VA_OBJECT,
};

static int number(const char *name, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = s ? strtoull(s, &end, 10) : 0;
    if (s && (!*s || *end || errno || *s == '-')) {
        imgtool_error("Unable to parse integer parameter '--%s'", name);
        return -1;
    }
    *out = v;
    return 0;
}

static int transfer(int argc, char **argv, bool upload)
{
    VirshArgs a;
    int rc = virsh_args_parse(upload ? &upload_cmd : &download_cmd, argc,
                              argv, &a);
    if (rc >= 0) {
        return rc;
    }
    const char *vol = virsh_arg(&a, "vol");
    const char *file = virsh_arg(&a, "file");
    VolTransfer t = { .sparse = virsh_flag(&a, "sparse") };
    if (number("offset", virsh_arg(&a, "offset"), &t.offset) < 0 ||
        number("length", virsh_arg(&a, "length"), &t.length) < 0) {
        return 1;
    }
    t.has_length = virsh_arg(&a, "length") != NULL;
    bool std = strcmp(file, "-") == 0;
    if (std && !upload && a.progress) {
        imgtool_error("-p cannot be used when downloading to standard "
                      "output");
        return 1;
    }
    if (std) {
        t.fd = upload ? 0 : 1;
        t.fd_name = upload ? "standard input" : "standard output";
    } else {
        t.fd = upload ? open(file, O_RDONLY | O_CLOEXEC)
                      : open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                             0666);
        t.fd_name = file;
        if (t.fd < 0) {
            imgtool_error("cannot open file '%s': %s", file,
                          strerror(errno));
            return 1;
        }
    }
    PoolStore *s = pcmd_store();
    Progress *pr = s ? progress_start(a.progress) : NULL;
    t.progress = pcmd_progress;
    t.opaque = pr;
    Error err = { 0 };
    int ret = !s ? -1
              : upload ? pool_vol_upload(s, virsh_arg(&a, "pool"), vol, &t,
                                         &err)
                       : pool_vol_download(s, virsh_arg(&a, "pool"), vol, &t,
                                           &err);
    progress_finish(pr);
    pool_store_close(s);
    if (!std && close(t.fd) < 0 && ret == 0) {
        error_setf(&err, errno, "error writing %s: %s", file,
                   strerror(errno));
        ret = -1;
    }
    if (ret < 0) {
        return s ? pcmd_fail(&err, "cannot %s volume %s",
                             upload ? "upload to" : "download from", vol)
                 : 1;
    }
    return 0;
}

int cmd_vol_upload(int argc, char **argv)
{
    return transfer(argc, argv, true);
}

int cmd_vol_download(int argc, char **argv)
{
    return transfer(argc, argv, false);
}
