/*
 * compare.c - `imgtool compare`: do two images read the same?  Exit codes
 * and messages follow qemu-img compare: 0 identical, 1 different, 2 an
 * image could not be opened, 3 block status failed, 4 a read failed.
 *
 * Block status of both sides decides what must be read: a region both
 * prove zero is skipped, a region one side proves zero is checked for
 * zeroes on the other side only.  Mismatch offsets are reported at
 * 512-byte granularity, like qemu-img.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/parse-options.h"

#define CMP_BUF (1024 * 1024)
#define CMP_SECTOR 512

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_EOPEN = 2, CMP_ESTATUS = 3,
       CMP_EREAD = 4 };

static struct {
    const char *fmt2, *cache;
    bool progress, strict;
} o;

static const CmdOpt compare_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    { CMDOPT_COMMON, 'f', "format", "fmt",
      "format of the first image (probed when omitted)", .common_code = 'f' },
    { CMDOPT_STRING, 'F', NULL, "fmt", "format of the second image",
      .value = &o.fmt2 },
    CMDOPT_CACHE('T', "src_cache", &o.cache, "both images' "),
    CMDOPT_PROGRESS(&o.progress),
    { CMDOPT_COMMON, 'q', NULL, NULL, "print nothing", .common_code = 'q' },
    { CMDOPT_FLAG, 's', NULL, NULL,
      "strict: sizes and allocation must match too", .value = &o.strict },
    CMDOPT_FORCE_SHARE,
    CMDOPT_END,
};

static const CmdSpec compare_spec = {
    .name = "compare",
    .args = "filename1 filename2",
    .description = "Compares the contents of two images.  Exit code: 0 "
                   "identical, 1 different,\n2 open error, 3 block status "
                   "error, 4 read error.\n",
    .opts = compare_opts,
};

typedef struct Side {
    BlockNode *n;
    const char *name;
    int64_t size;
    uint8_t *buf;
} Side;

typedef struct Compare {
    Side s[2];
    bool quiet, strict;
    Progress *prog;
} Compare;

static void cmp_say(const Compare *c, const char *fmt, uint64_t off)
{
    if (!c->quiet) {
        printf(fmt, (unsigned long long)off);
    }
}

/* Offset of the first 512-byte sector where a and b differ, or len. */
static uint64_t first_diff(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    for (uint64_t p = 0; p < len; p += CMP_SECTOR) {
        uint64_t n = len - p < CMP_SECTOR ? len - p : CMP_SECTOR;
        if (memcmp(a + p, b + p, n)) {
            return p;
        }
    }
    return len;
}

static uint64_t first_nonzero(const uint8_t *a, uint64_t len)
{
    for (uint64_t p = 0; p < len; p += CMP_SECTOR) {
        uint64_t n = len - p < CMP_SECTOR ? len - p : CMP_SECTOR;
        if (a[p] || memcmp(a + p, a + p + 1, n - 1)) {
            return p;
        }
    }
    return len;
}

static int cmp_read(Compare *c, int i, uint64_t off, uint64_t len)
{
    int ret = block_pread(c->s[i].n, off, len, c->s[i].buf);
    if (ret < 0) {
        imgtool_error("Error while reading offset %llu of %s: %s",
                      (unsigned long long)off, c->s[i].name, strerror(-ret));
        return CMP_EREAD;
    }
    return CMP_SAME;
}

static int cmp_status(Compare *c, int i, uint64_t off, uint64_t len,
                      uint64_t *pnum)
{
    int st = block_status_above(c->s[i].n, NULL, off, len, pnum, NULL,
                                NULL, NULL);
    if (st < 0) {
        imgtool_error("Sector allocation test failed for %s", c->s[i].name);
        return -1;
    }
    if (*pnum == 0 || *pnum > len) {
        *pnum = len;
    }
    return st;
}

/* Checks that [off, end) of side i reads as zero (the other side has no
 * data there). */
static int cmp_check_zero(Compare *c, int i, uint64_t off, uint64_t end,
                          uint64_t prog_total)
{
    while (off < end) {
        uint64_t pnum;
        int st = cmp_status(c, i, off, end - off, &pnum);
        if (st < 0) {
            return CMP_ESTATUS;
        }
        if (!(st & BLOCK_STATUS_ZERO)) {
            uint64_t len = pnum < CMP_BUF ? pnum : CMP_BUF;
            int ret = cmp_read(c, i, off, len);
            if (ret) {
                return ret;
            }
            uint64_t d = first_nonzero(c->s[i].buf, len);
            if (d < len) {
                cmp_say(c, "Content mismatch at offset %llu!\n", off + d);
                return CMP_DIFFERENT;
            }
            pnum = len;
        }
        off += pnum;
        progress_update(c->prog, off, prog_total);
    }
    return CMP_SAME;
}

static int cmp_common(Compare *c, uint64_t total, uint64_t prog_total)
{
    const int mask = BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO |
                     BLOCK_STATUS_DATA;
    uint64_t off = 0;
    while (off < total) {
        uint64_t p1, p2;
        int st1 = cmp_status(c, 0, off, total - off, &p1);
        if (st1 < 0) {
            return CMP_ESTATUS;
        }
        int st2 = cmp_status(c, 1, off, total - off, &p2);
        if (st2 < 0) {
            return CMP_ESTATUS;
        }
        uint64_t len = p1 < p2 ? p1 : p2;
        if (c->strict && (st1 & mask) != (st2 & mask)) {
            cmp_say(c, "Strict mode: Offset %llu block status mismatch!\n",
                    off);
            return CMP_DIFFERENT;
        }
        bool z1 = st1 & BLOCK_STATUS_ZERO, z2 = st2 & BLOCK_STATUS_ZERO;
        if (z1 && z2) {
            /* both proven zero: nothing to read */
        } else if (z1 || z2) {
            int ret = cmp_check_zero(c, z1 ? 1 : 0, off, off + len,
                                     prog_total);
            if (ret) {
                return ret;
            }
        } else {
            if (len > CMP_BUF) {
                len = CMP_BUF;
            }
            int ret = cmp_read(c, 0, off, len);
            if (!ret) {
                ret = cmp_read(c, 1, off, len);
            }
            if (ret) {
                return ret;
            }
            uint64_t d = first_diff(c->s[0].buf, c->s[1].buf, len);
            if (d < len) {
                cmp_say(c, "Content mismatch at offset %llu!\n", off + d);
                return CMP_DIFFERENT;
            }
        }
        off += len;
        progress_update(c->prog, off, prog_total);
    }
    return CMP_SAME;
}

static int cmp_run(Compare *c)
{
    uint64_t s0 = c->s[0].size, s1 = c->s[1].size;
    uint64_t common = s0 < s1 ? s0 : s1;
    uint64_t larger = s0 < s1 ? s1 : s0;
    if (s0 != s1) {
        if (c->strict) {
            if (!c->quiet) {
                printf("Strict mode: Image size mismatch!\n");
            }
            return CMP_DIFFERENT;
        }
    }
    int ret = cmp_common(c, common, larger);
    if (ret) {
        return ret;
    }
    if (s0 != s1) {
        /* as qemu-img: the warning only once the common part is the
         * same (a difference there is the answer by itself) */
        if (!c->quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        /* the extra area of the larger image must read as zero */
        ret = cmp_check_zero(c, s0 > s1 ? 0 : 1, common, larger, larger);
        if (ret) {
            return ret;
        }
    }
    if (!c->quiet) {
        printf("Images are identical.\n");
    }
    return CMP_SAME;
}

int cmd_compare(int argc, char **argv)
{
    ImageArgs a = { 0 };
    Compare c = { 0 };
    int rc;
    if (cmd_parse(&compare_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    const char *fmt2 = o.fmt2;
    bool progress = o.progress;
    c.strict = o.strict;
    c.quiet = a.quiet;
    if (c.quiet) {
        progress = false;
    }
    if (argc - optind != 2) {
        return usage_error("compare", "Expecting two image file names");
    }
    if (image_args_check(&a) < 0) {
        return CMP_EOPEN;
    }
    int flags = image_args_flags(&a);
    if (cmd_cache_flags(o.cache, true, &flags) < 0) {
        return CMP_EOPEN;
    }

    int ret = CMP_EOPEN;
    const char *fmts[2] = { a.fmt, fmt2 };
    for (int i = 0; i < 2; i++) {
        Error err = { 0 };
        c.s[i].name = argv[optind + i];
        c.s[i].n = imgtool_open(c.s[i].name, fmts[i], a.image_opts, flags,
                                &err);
        if (!c.s[i].n) {
            imgtool_report(&err);
            goto out;
        }
        c.s[i].size = block_get_length(c.s[i].n);
        if (c.s[i].size < 0) {
            imgtool_error("Can't get size of %s: %s", c.s[i].name,
                          strerror((int)-c.s[i].size));
            goto out;
        }
        if (posix_memalign((void **)&c.s[i].buf, 4096, CMP_BUF)) {
            imgtool_error("out of memory");
            goto out;
        }
    }

    c.prog = progress_start(progress);
    ret = cmp_run(&c);
    progress_finish(c.prog);

out:
    for (int i = 0; i < 2; i++) {
        if (c.s[i].n) {
            block_close(c.s[i].n);
        }
        free(c.s[i].buf);
    }
    return ret;
}
