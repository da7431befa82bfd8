/*
 * linear.c - the "linear" protocol driver: device-mapper's linear target
 * done in user space.  The file name lists the pieces of block devices
 * (or files) that, end to end, make the node's bytes:
 *
 *     linear:OFFSET+LENGTH@PATH[;OFFSET+LENGTH@PATH...]
 *
 * (bytes; the path comes last so it may hold ':' or '@').  The logical
 * pool reaches a logical volume's data this way, from its segments on
 * its physical volumes, on hosts without device-mapper.
 *
 * Invariants: a leaf like every protocol (it opens the devices itself, no
 * child nodes); the segment table never changes while the node is open;
 * nothing is written past its end (-ENOSPC, as a full device) and reads
 * there see zeroes; requests are split at segment boundaries.  Devices
 * take no QEMU lock bytes (those of a whole PV would make its LVs exclude
 * each other): the node takes an OFD lock on the first byte of its first
 * segment instead - a write lock for writers, a read lock for readers,
 * none with -U or locking=off - so two commands never write one LV at
 * once and a reader keeps writers off, while other LVs stay free.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/driver.h"

#define LINEAR_PREFIX "linear:"
#define LINEAR_MAX_SEGMENTS 4096
#define LINEAR_MAX_DEVICES 64

typedef struct LinearSeg {
    uint64_t start;          /* offset in the node */
    uint64_t off;            /* offset on the device */
    uint64_t len;
    int dev;
} LinearSeg;

typedef struct LinearDev {
    int fd;
    bool is_device;
} LinearDev;

typedef struct LinearState {
    LinearSeg *segs;
    int nsegs;
    LinearDev devs[LINEAR_MAX_DEVICES];
    int ndevs;
    uint64_t length;
    int lock_fd;
} LinearState;

typedef struct LinearMap {
    LinearSeg *segs;
    int nsegs;
    char *paths[LINEAR_MAX_DEVICES];
    int npaths;
    uint64_t length;
} LinearMap;

static bool linear_owns(const char *filename)
{
    return strncmp(filename, LINEAR_PREFIX, strlen(LINEAR_PREFIX)) == 0;
}

static void map_free(LinearMap *m)
{
    free(m->segs);
    for (int i = 0; i < m->npaths; i++) {
        free(m->paths[i]);
    }
    memset(m, 0, sizeof(*m));
}

static int parse_u64(const char *s, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    if (s == end) {
        return -EINVAL;
    }
    for (; s < end; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10) {
            return -EINVAL;
        }
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

static int map_parse(const char *filename, LinearMap *m, Error *err)
{
    memset(m, 0, sizeof(*m));
    const char *p = filename + strlen(LINEAR_PREFIX);
    while (*p) {
        const char *end = strchr(p, ';');
        if (!end) {
            end = p + strlen(p);
        }
        const char *plus = memchr(p, '+', (size_t)(end - p));
        const char *at = plus ? memchr(plus, '@', (size_t)(end - plus))
                              : NULL;
        LinearSeg s = { 0 };
        if (!plus || !at || at + 1 == end ||
            parse_u64(p, plus, &s.off) < 0 ||
            parse_u64(plus + 1, at, &s.len) < 0 || s.len == 0 ||
            s.off > INT64_MAX - s.len || m->length > INT64_MAX - s.len) {
            map_free(m);
            return error_setf(err, EINVAL, "bad segment '%.*s' in '%s' "
                              "(expected OFFSET+LENGTH@PATH)",
                              (int)(end - p), p, filename);
        }
        if (m->nsegs == LINEAR_MAX_SEGMENTS) {
            map_free(m);
            return error_setf(err, EINVAL, "more than %d segments",
                              LINEAR_MAX_SEGMENTS);
        }
        size_t plen = (size_t)(end - at - 1);
        s.dev = -1;
        for (int i = 0; i < m->npaths; i++) {
            if (strlen(m->paths[i]) == plen &&
                !strncmp(m->paths[i], at + 1, plen)) {
                s.dev = i;
            }
        }
        if (s.dev < 0) {
            if (m->npaths == LINEAR_MAX_DEVICES) {
                map_free(m);
                return error_setf(err, EINVAL, "more than %d devices",
                                  LINEAR_MAX_DEVICES);
            }
            m->paths[m->npaths] = strndup(at + 1, plen);
            if (!m->paths[m->npaths]) {
                map_free(m);
                return error_setf(err, ENOMEM, "out of memory");
            }
            s.dev = m->npaths++;
        }
        LinearSeg *ns = realloc(m->segs, (size_t)(m->nsegs + 1) *
                                         sizeof(*ns));
        if (!ns) {
            map_free(m);
            return error_setf(err, ENOMEM, "out of memory");
        }
        s.start = m->length;
        m->length += s.len;
        m->segs = ns;
        m->segs[m->nsegs++] = s;
        p = *end ? end + 1 : end;
    }
    if (m->nsegs == 0) {
        return error_setf(err, EINVAL, "no segments in '%s'", filename);
    }
    return 0;
}

static int take_lock(LinearState *s, const char *path, uint64_t off,
                     bool write, Error *err)
{
    s->lock_fd = open(path, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (s->lock_fd < 0) {
        return error_setf(err, errno, "cannot open '%s': %s", path,
                          strerror(errno));
    }
    struct flock fl = {
        .l_type = write ? F_WRLCK : F_RDLCK,
        .l_whence = SEEK_SET,
        .l_start = (off_t)off,
        .l_len = 1,
    };
    if (fcntl(s->lock_fd, F_OFD_SETLK, &fl) < 0) {
        int e = errno;
        close(s->lock_fd);
        s->lock_fd = -1;
        if (e == EAGAIN || e == EACCES) {
            return error_setf(err, EAGAIN, "Failed to get \"%s\" lock: is "
                              "another process using the volume?",
                              write ? "write" : "consistent read");
        }
        if (e != EINVAL && e != ENOTSUP) {
            return error_setf(err, e, "cannot lock '%s': %s", path,
                              strerror(e));
        }
    }
    return 0;
}

static int dev_length(LinearDev *d, uint64_t *len)
{
    if (d->is_device) {
        return ioctl(d->fd, BLKGETSIZE64, len) < 0 ? -errno : 0;
    }
    struct stat st;
    if (fstat(d->fd, &st) < 0) {
        return -errno;
    }
    *len = (uint64_t)st.st_size;
    return 0;
}

static int open_dev(LinearDev *d, const char *path, int flags, Error *err)
{
    int oflags = O_CLOEXEC | ((flags & BLOCK_O_RDWR) ? O_RDWR : O_RDONLY) |
                 ((flags & BLOCK_O_NOCACHE) ? O_DIRECT : 0);
    d->fd = open(path, oflags);
    if (d->fd < 0) {
        return error_setf(err, errno, "Could not open '%s': %s", path,
                          strerror(errno));
    }
    struct stat st;
    if (fstat(d->fd, &st) < 0 || !(S_ISBLK(st.st_mode) ||
                                   S_ISREG(st.st_mode))) {
        return error_setf(err, EINVAL, "'%s' is not a block device or a "
                          "file", path);
    }
    d->is_device = S_ISBLK(st.st_mode);
    return 0;
}

static void close_devs(LinearState *s)
{
    for (int i = 0; i < s->ndevs; i++) {
        if (s->devs[i].fd >= 0) {
            close(s->devs[i].fd);
        }
    }
    s->ndevs = 0;
}

static int linear_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    LinearState *s = n->opaque;
    s->lock_fd = -1;
    const char *locking = kvlist_get(opts, "locking");
    if (locking && strcmp(locking, "on") && strcmp(locking, "off") &&
        strcmp(locking, "auto")) {
        return error_setf(err, EINVAL, "Parameter 'locking' expects 'on', "
                          "'off' or 'auto'");
    }
    LinearMap m;
    int ret = map_parse(n->filename, &m, err);
    if (ret < 0) {
        return ret;
    }
    for (int i = 0; i < m.npaths && ret == 0; i++) {
        s->ndevs = i + 1;
        ret = open_dev(&s->devs[i], m.paths[i], flags, err);
    }
    if (ret == 0 && (flags & BLOCK_O_NOCACHE)) {
        n->request_alignment = 4096;   /* what O_DIRECT on any device takes */
    }
    for (int i = 0; i < m.nsegs && ret == 0; i++) {
        uint64_t dlen = 0;
        if (dev_length(&s->devs[m.segs[i].dev], &dlen) < 0 ||
            m.segs[i].off + m.segs[i].len > dlen) {
            ret = error_setf(err, EINVAL, "segment %d (%" PRIu64 "+%" PRIu64
                             ") ends past the end of '%s'", i, m.segs[i].off,
                             m.segs[i].len, m.paths[m.segs[i].dev]);
        }
    }
    bool want_lock = !(flags & (BLOCK_O_NO_LOCK | BLOCK_O_SHARE)) &&
                     !(locking && strcmp(locking, "off") == 0);
    if (ret == 0 && want_lock) {
        ret = take_lock(s, m.paths[m.segs[0].dev], m.segs[0].off,
                        flags & BLOCK_O_RDWR, err);
    }
    if (ret < 0) {
        close_devs(s);
        map_free(&m);
        return ret;
    }
    s->segs = m.segs;
    s->nsegs = m.nsegs;
    s->length = m.length;
    m.segs = NULL;
    map_free(&m);
    return 0;
}

static void linear_close(BlockNode *n)
{
    LinearState *s = n->opaque;
    close_devs(s);
    if (s->lock_fd >= 0) {
        close(s->lock_fd);
    }
    free(s->segs);
}

/* The segment holding node offset off (off < length). */
static const LinearSeg *seg_at(const LinearState *s, uint64_t off)
{
    int lo = 0, hi = s->nsegs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (s->segs[mid].start <= off) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return &s->segs[lo];
}

typedef enum { OP_READ, OP_WRITE, OP_DISCARD, OP_ZERO } LinearOp;

static int piece_rw(LinearDev *d, LinearOp op, uint64_t off, uint64_t len,
                    uint8_t *b, int flags)
{
    if (op == OP_DISCARD || op == OP_ZERO) {
        if (d->is_device) {
            uint64_t range[2] = { off, len };
            return ioctl(d->fd, op == OP_ZERO ? BLKZEROOUT : BLKDISCARD,
                         range) < 0 ? -errno : 0;
        }
        int mode = op == OP_DISCARD || (flags & BLOCK_REQ_MAY_UNMAP)
                       ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                       : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        if (fallocate(d->fd, mode, (off_t)off, (off_t)len) == 0) {
            return 0;
        }
        /* -ENOTSUP: the core writes zero buffers instead */
        return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
    }
    while (len > 0) {
        ssize_t r = op == OP_READ ? pread(d->fd, b, len, (off_t)off)
                                  : pwrite(d->fd, b, len, (off_t)off);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return -errno;
        }
        if (r == 0) {
            if (op == OP_WRITE) {
                return -ENOSPC;
            }
            memset(b, 0, len);          /* a file shorter than its piece */
            return 0;
        }
        off += (uint64_t)r;
        len -= (uint64_t)r;
        b += r;
    }
    if (op == OP_WRITE && (flags & BLOCK_REQ_FUA) && fdatasync(d->fd) < 0) {
        return -errno;
    }
    return 0;
}

static int linear_rw(BlockNode *n, LinearOp op, uint64_t off, uint64_t len,
                     void *buf, int flags)
{
    LinearState *s = n->opaque;
    uint8_t *b = buf;
    if (off >= s->length || len > s->length - off) {
        /* Past the end, as on a device: reads see zeroes (a format's
         * bounced read-modify-write may straddle the end), nothing can
         * be written there. */
        if (op != OP_READ) {
            return -ENOSPC;
        }
        uint64_t in = off < s->length ? s->length - off : 0;
        memset(b + in, 0, (size_t)(len - in));
        len = in;
    }
    while (len > 0) {
        const LinearSeg *g = seg_at(s, off);
        uint64_t in = off - g->start;
        uint64_t now = g->len - in < len ? g->len - in : len;
        int ret = piece_rw(&s->devs[g->dev], op, g->off + in, now, b, flags);
        if (ret < 0) {
            return ret;
        }
        off += now;
        len -= now;
        if (b) {
            b += now;
        }
    }
    return 0;
}

static int linear_pread(BlockNode *n, uint64_t off, size_t len, void *buf)
{
    return linear_rw(n, OP_READ, off, len, buf, 0);
}

static int linear_pwrite(BlockNode *n, uint64_t off, size_t len,
                         const void *buf, int flags)
{
    return linear_rw(n, OP_WRITE, off, len, (void *)buf, flags);
}

static int linear_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    return linear_rw(n, OP_DISCARD, off, len, NULL, 0);
}

static int linear_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                               int flags)
{
    return linear_rw(n, OP_ZERO, off, len, NULL, flags);
}

static int linear_flush(BlockNode *n)
{
    LinearState *s = n->opaque;
    for (int i = 0; i < s->ndevs; i++) {
        if (fdatasync(s->devs[i].fd) < 0) {
            return -errno;
        }
    }
    return 0;
}

static bool linear_can_zero(BlockNode *n)
{
    return true;
}

static bool linear_can_fua(BlockNode *n)
{
    return true;
}

/* Every byte is data (a device cannot tell holes), mapped to itself. */
static int linear_block_status(BlockNode *n, uint64_t off, uint64_t len,
                               uint64_t *pnum, uint64_t *map,
                               BlockNode **file)
{
    *pnum = len;
    *map = off;
    *file = n;
    return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID |
           BLOCK_STATUS_ALLOCATED;
}

static int64_t linear_get_length(BlockNode *n)
{
    LinearState *s = n->opaque;
    return (int64_t)s->length;
}

static int64_t linear_get_allocated_size(BlockNode *n)
{
    (void)n;
    return 0;   /* as for a device */
}

static int linear_truncate(BlockNode *n, uint64_t size, bool exact,
                           PreallocMode pm, Error *err)
{
    LinearState *s = n->opaque;
    (void)pm;
    if (size == s->length || (!exact && size < s->length)) {
        return 0;
    }
    return error_setf(err, ENOTSUP, "Cannot resize a volume through its "
                      "extents (vol-resize changes it)");
}

static int linear_create(const char *filename, uint64_t size, KVList *opts,
                         Error *err)
{
    /* The storage exists already: "creating" checks that it is big
     * enough, as the file driver does for a device. */
    kvlist_get(opts, "preallocation");
    kvlist_get(opts, "nocow");
    kvlist_get(opts, "extent_size_hint");
    int ret = kvlist_check_unused(opts, "linear", err);
    if (ret < 0) {
        return ret;
    }
    LinearMap m;
    ret = map_parse(filename, &m, err);
    if (ret < 0) {
        return ret;
    }
    if (size > m.length) {
        ret = error_setf(err, ENOSPC, "the volume holds %" PRIu64 " bytes, "
                         "%" PRIu64 " are needed", m.length, size);
    }
    map_free(&m);
    return ret;
}

const BlockDriver linear_driver = {
    .api_version = BLOCK_DRIVER_API_VERSION,
    .name = "linear",
    .kind = BLOCK_DRIVER_PROTOCOL,
    .thread_model = BLOCK_THREAD_PARALLEL,
    .instance_size = sizeof(LinearState),
    .owns_filename = linear_owns,
    .open = linear_open,
    .close = linear_close,
    .can_zero = linear_can_zero,
    .can_fua = linear_can_fua,
    .pread = linear_pread,
    .pwrite = linear_pwrite,
    .flush = linear_flush,
    .discard = linear_discard,
    .write_zeroes = linear_write_zeroes,
    .block_status = linear_block_status,
    .get_length = linear_get_length,
    .get_allocated_size = linear_get_allocated_size,
    .truncate = linear_truncate,
    .create = linear_create,
    .create_opts = block_protocol_create_opts,
};
