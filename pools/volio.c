/*
 * volio.c - work on a volume's host bytes: vol-wipe (zero, trim, random
 * and the multi-pass patterns of scrub(1)'s algorithms, written here),
 * vol-upload and vol-download.
 *
 * Each runs with the pool unlocked and the volume opened for writing
 * (or reading) through the block layer, whose lock keeps QEMU and other
 * commands off it.  A wipe holds an operation marker: killed, it leaves
 * the volume flagged as half wiped (listed so, never opened as good)
 * until it is wiped again or deleted.  A qcow2 volume is an empty qcow2
 * image of the same capacity (and backing file) again after its wipe; a
 * LUKS volume's header is destroyed with its data, so it is raw after.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "pools/core.h"
#include "pools/util.h"

#define CHUNK (1024 * 1024)

/* A pass writes a repeated pattern of 1-3 bytes, or random bytes. */
typedef struct WipePass {
    uint8_t len;              /* 0: random */
    uint8_t pat[3];
} WipePass;

#define R { 0, { 0 } }
#define P1(a) { 1, { a } }
#define P3(a, b, c) { 3, { a, b, c } }

static const WipePass p_random[] = { R };
static const WipePass p_nnsa[] = { R, R, P1(0x00) };
static const WipePass p_dod[] = { R, P1(0x00), P1(0xff) };
static const WipePass p_bsi[] = {
    P1(0xff), P1(0xfe), P1(0xfd), P1(0xfb), P1(0xf7), P1(0xef), P1(0xdf),
    P1(0xbf), P1(0x7f),
};
/* Gutmann's 35 passes: 4 random, the 27 encodings, 4 random. */
static const WipePass p_gutmann[] = {
    R, R, R, R,
    P1(0x55), P1(0xaa),
    P3(0x92, 0x49, 0x24), P3(0x49, 0x24, 0x92), P3(0x24, 0x92, 0x49),
    P1(0x00), P1(0x11), P1(0x22), P1(0x33), P1(0x44), P1(0x55), P1(0x66),
    P1(0x77), P1(0x88), P1(0x99), P1(0xaa), P1(0xbb), P1(0xcc), P1(0xdd),
    P1(0xee), P1(0xff),
    P3(0x92, 0x49, 0x24), P3(0x49, 0x24, 0x92), P3(0x24, 0x92, 0x49),
    P3(0x6d, 0xb6, 0xdb), P3(0xb6, 0xdb, 0x6d), P3(0xdb, 0x6d, 0xb6),
    R, R, R, R,
};
static const WipePass p_schneier[] = { P1(0x00), P1(0xff), R, R, R, R, R };
static const WipePass p_pfitzner7[] = { R, R, R, R, R, R, R };
static const WipePass p_pfitzner33[] = {
    R, R, R, R, R, R, R, R, R, R, R, R, R, R, R, R, R,
    R, R, R, R, R, R, R, R, R, R, R, R, R, R, R, R,
};

static const struct {
    const char *name;
    const WipePass *passes;
    int n;
} algorithms[] = {
#define A(name, v) { name, v, (int)(sizeof(v) / sizeof(v[0])) }
    { "zero", NULL, 1 },
    { "trim", NULL, 1 },
    A("random", p_random),
    A("nnsa", p_nnsa),
    A("dod", p_dod),
    A("bsi", p_bsi),
    A("gutmann", p_gutmann),
    A("schneier", p_schneier),
    A("pfitzner7", p_pfitzner7),
    A("pfitzner33", p_pfitzner33),
#undef A
};

const char *pool_wipe_algorithm(size_t i)
{
    return i < sizeof(algorithms) / sizeof(algorithms[0])
               ? algorithms[i].name : NULL;
}

/* Random passes: AES-128-CTR over zeroes with a random key, fast and as
 * unpredictable as the key. */
typedef struct RandomStream {
    EVP_CIPHER_CTX *ctx;
} RandomStream;

static int random_init(RandomStream *r)
{
    uint8_t key[16], iv[16];
    r->ctx = EVP_CIPHER_CTX_new();
    if (!r->ctx || RAND_bytes(key, sizeof(key)) != 1 ||
        RAND_bytes(iv, sizeof(iv)) != 1 ||
        EVP_EncryptInit_ex(r->ctx, EVP_aes_128_ctr(), NULL, key, iv) != 1) {
        EVP_CIPHER_CTX_free(r->ctx);
        r->ctx = NULL;
        return -EIO;
    }
    return 0;
}

static int random_fill(RandomStream *r, uint8_t *buf, size_t len)
{
    memset(buf, 0, len);
    int out = 0;
    return EVP_EncryptUpdate(r->ctx, buf, &out, buf, (int)len) == 1
               ? 0 : -EIO;
}

static void fill_pattern(const WipePass *w, uint64_t off, uint8_t *buf,
                         size_t len)
{
    if (w->len == 1) {
        memset(buf, w->pat[0], len);
        return;
    }
    for (size_t i = 0; i < len; i++) {
        buf[i] = w->pat[(off + i) % 3];
    }
}

typedef struct WipeRun {
    BlockNode *n;
    uint64_t len;
    uint64_t done, total;
    BlockProgressFn *progress;
    void *opaque;
} WipeRun;

static void advance(WipeRun *w, uint64_t bytes)
{
    w->done += bytes;
    if (w->progress) {
        w->progress(w->opaque, w->done, w->total);
    }
}

static int run_pass(WipeRun *w, const WipePass *pass, uint8_t *buf,
                    Error *err)
{
    RandomStream rs = { NULL };
    if (pass->len == 0 && random_init(&rs) < 0) {
        return error_setf(err, EIO, "cannot start the random generator");
    }
    int ret = 0;
    for (uint64_t off = 0; ret == 0 && off < w->len; off += CHUNK) {
        size_t now = w->len - off < CHUNK ? (size_t)(w->len - off) : CHUNK;
        if (pass->len) {
            fill_pattern(pass, off, buf, now);
        } else if (random_fill(&rs, buf, now) < 0) {
            ret = error_setf(err, EIO, "random generator failed");
            break;
        }
        ret = block_pwrite(w->n, off, now, buf, 0);
        if (ret < 0) {
            error_setf(err, -ret, "error while writing at byte %llu: %s",
                       (unsigned long long)off, strerror(-ret));
        }
        advance(w, now);
    }
    if (ret == 0) {
        /* Each pass reaches the storage before the next overwrites it. */
        ret = block_flush(w->n);
        if (ret < 0) {
            error_setf(err, -ret, "flush failed: %s", strerror(-ret));
        }
    }
    EVP_CIPHER_CTX_free(rs.ctx);
    return ret;
}

static int run_wipe(WipeRun *w, const char *alg, int idx, Error *err)
{
    int ret;
    if (strcmp(alg, "zero") == 0 || strcmp(alg, "trim") == 0) {
        bool trim = alg[0] == 't';
        for (uint64_t off = 0; off < w->len; off += 64 * CHUNK) {
            uint64_t now = w->len - off < 64 * CHUNK ? w->len - off
                                                     : 64 * CHUNK;
            ret = trim ? block_discard(w->n, off, now)
                       : block_write_zeroes(w->n, off, now,
                                            BLOCK_REQ_MAY_UNMAP);
            if (ret < 0) {
                return error_setf(err, -ret, "%s failed at byte %llu: %s",
                                  trim ? "discard" : "writing zeroes",
                                  (unsigned long long)off, strerror(-ret));
            }
            advance(w, now);
        }
        ret = block_flush(w->n);
        return ret < 0 ? error_setf(err, -ret, "flush failed: %s",
                                    strerror(-ret)) : 0;
    }
    uint8_t *buf = malloc(CHUNK);
    if (!buf) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    ret = 0;
    for (int i = 0; ret == 0 && i < algorithms[idx].n; i++) {
        ret = run_pass(w, &algorithms[idx].passes[i], buf, err);
    }
    free(buf);
    return ret;
}

/* After the wipe the volume is an empty image of its format again (a
 * qcow2 with its capacity and backing file), or raw. */
static int reformat(Pool *p, const VolInfo *v, const char **format,
                    Error *err)
{
    *format = "raw";
    if (!v->format || strcmp(v->format, "qcow2") != 0) {
        return 0;
    }
    VolOpenSpec spec = { 0 };
    int ret = p->be->vol_open_spec(p, v, true, &spec, err);
    if (ret < 0) {
        return ret;
    }
    VolCreateArgs a = {
        .name = v->name, .capacity = v->capacity, .format = "qcow2",
        .cluster_size = v->cluster_size, .compat = v->compat,
        .lazy_refcounts = v->lazy_refcounts, .mode = -1,
    };
    ret = pool_create_image(p, spec.filename, &a, v->backing_path,
                            v->backing_format, false, err);
    vol_open_spec_clear(&spec);
    if (ret == 0) {
        *format = "qcow2";
    }
    return ret;
}

int pool_vol_wipe(PoolStore *s, const char *pool, const char *vol,
                  const char *algorithm, BlockProgressFn *progress,
                  void *opaque, Error *err)
{
    const char *alg = algorithm ? algorithm : "zero";
    int idx = -1;
    for (size_t i = 0; i < sizeof(algorithms) / sizeof(algorithms[0]); i++) {
        if (strcmp(algorithms[i].name, alg) == 0) {
            idx = (int)i;
        }
    }
    if (idx < 0) {
        return error_setf(err, EINVAL, "unsupported algorithm '%s'", alg);
    }
    Pool *p;
    VolInfo v;
    int ret = pool_vol_resolve(s, pool, vol, &p, &v, err);
    if (ret < 0) {
        return ret;
    }
    OpMarker m = { -1, NULL };
    BlockNode *n = NULL;
    ret = store_op_begin(s, p->def.name, v.name, "wipe", &m, err);
    if (ret == 0) {
        Error oerr = { 0 };
        ret = pool_vol_open_node(p, &v, true, BLOCK_O_RDWR, &n, &oerr);
        if (ret < 0) {
            error_setf(err, -ret, "volume '%s' cannot be used: %s", v.name,
                       oerr.msg);
            store_op_end(&m);
        }
    }
    if (ret == 0) {
        pool_unlock(p);
        int64_t len = block_get_length(n);
        WipeRun w = { .n = n, .len = len > 0 ? (uint64_t)len : 0,
                      .progress = progress, .opaque = opaque };
        w.total = w.len * (uint64_t)algorithms[idx].n;
        ret = len < 0 ? error_setf(err, (int)-len, "cannot get the size of "
                                   "volume '%s'", v.name)
                      : run_wipe(&w, alg, idx, err);
        block_close(n);
        const char *format = "raw";
        if (ret == 0) {
            ret = reformat(p, &v, &format, err);
        }
        Error rerr = { 0 };
        int r2 = pool_relock(p, &rerr);
        if (ret == 0 && r2 < 0) {
            ret = error_setf(err, rerr.code, "%s", rerr.msg);
        }
        if (ret == 0) {
            ret = p->be->vol_changed(p, &v, format, err);
        }
        if (ret == 0) {
            store_op_end(&m);
        } else if (m.fd >= 0) {
            /* Failed half way: the marker stays, unlocked once we exit,
             * and says what happened to the volume. */
            close(m.fd);
            m.fd = -1;
            free(m.path);
            m.path = NULL;
        }
    }
    vol_info_clear(&v);
    pool_close(p);
    return ret;
}

/* ---- upload / download ---------------------------------------------- */

static bool all_zero(const uint8_t *b, size_t n)
{
    return n == 0 || (b[0] == 0 && memcmp(b, b + 1, n - 1) == 0);
}

/* --sparse works at this granularity. */
#define SPARSE_BLOCK 4096

/* Length of the run at the start of buf (of len bytes) made of blocks
 * that are all zero (*zero set) or all not. */
static size_t zero_run(const uint8_t *buf, size_t len, bool *zero)
{
    size_t first = len < SPARSE_BLOCK ? len : SPARSE_BLOCK;
    *zero = all_zero(buf, first);
    size_t n = first;
    while (n < len) {
        size_t b = len - n < SPARSE_BLOCK ? len - n : SPARSE_BLOCK;
        if (all_zero(buf + n, b) != *zero) {
            break;
        }
        n += b;
    }
    return n;
}

static ssize_t read_full(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return -errno;
        }
        if (r == 0) {
            break;
        }
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int write_full(int fd, const uint8_t *buf, size_t len)
{
    while (len > 0) {
        ssize_t r = write(fd, buf, len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return r < 0 ? -errno : -EIO;
        }
        buf += r;
        len -= (size_t)r;
    }
    return 0;
}

/* Opens v's host bytes for a transfer, with the pool unlocked after. */
static int transfer_open(PoolStore *s, const char *pool, const char *vol,
                         bool write, Pool **pp, VolInfo *v, BlockNode **n,
                         Error *err)
{
    int ret = pool_vol_resolve(s, pool, vol, pp, v, err);
    if (ret < 0) {
        return ret;
    }
    if (store_op_status(s, (*pp)->def.name, v->name, NULL) == OP_RUNNING) {
        ret = error_setf(err, EBUSY, "volume '%s' is busy: another command "
                         "is working on it", v->name);
    } else if (write && v->state != VOL_STATE_OK) {
        ret = error_setf(err, EINVAL, "volume '%s' was left half wiped by "
                         "an interrupted vol-wipe; wipe it again or delete "
                         "it", v->name);
    }
    Error oerr = { 0 };
    if (ret == 0) {
        ret = pool_vol_open_node(*pp, v, true, write ? BLOCK_O_RDWR : 0, n,
                                 &oerr);
        if (ret < 0) {
            error_setf(err, -ret, "volume '%s' cannot be used: %s", v->name,
                       oerr.msg);
        }
    }
    if (ret < 0) {
        vol_info_clear(v);
        pool_close(*pp);
        *pp = NULL;
        return ret;
    }
    pool_unlock(*pp);
    return 0;
}

static int upload_loop(BlockNode *n, const VolTransfer *t, bool growable,
                       const VolInfo *v, Error *err)
{
    uint8_t *buf = malloc(CHUNK);
    if (!buf) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    struct stat st;
    bool seekable = fstat(t->fd, &st) == 0 && S_ISREG(st.st_mode);
    uint64_t total = t->has_length ? t->length
                     : seekable && (uint64_t)st.st_size > 0
                         ? (uint64_t)st.st_size : 0;
    uint64_t done = 0;
    int ret = 0;
    while (!t->has_length || done < t->length) {
        size_t want = CHUNK;
        if (t->has_length && t->length - done < want) {
            want = (size_t)(t->length - done);
        }
        ssize_t got = read_full(t->fd, buf, want);
        if (got < 0) {
            ret = error_setf(err, (int)-got, "error reading %s: %s",
                             t->fd_name, strerror((int)-got));
            break;
        }
        if (got == 0) {
            break;
        }
        uint64_t off = t->offset + done;
        int64_t len = block_get_length(n);
        if (len >= 0 && off + (uint64_t)got > (uint64_t)len) {
            if (!growable) {
                ret = error_setf(err, ENOSPC, "the upload does not fit in "
                                 "volume '%s' (%lld bytes)", v->name,
                                 (long long)len);
                break;
            }
            ret = block_truncate(n, off + (uint64_t)got, false, PREALLOC_OFF,
                                 err);
            if (ret < 0) {
                break;
            }
        }
        for (size_t pos = 0; ret == 0 && pos < (size_t)got;) {
            bool zero = false;
            size_t run = t->sparse ? zero_run(buf + pos, (size_t)got - pos,
                                              &zero)
                                   : (size_t)got;
            ret = zero ? block_write_zeroes(n, off + pos, run,
                                            BLOCK_REQ_MAY_UNMAP)
                       : block_pwrite(n, off + pos, run, buf + pos, 0);
            pos += run;
        }
        if (ret < 0) {
            error_setf(err, -ret, "error writing volume '%s' at byte %llu: "
                       "%s", v->name, (unsigned long long)off,
                       strerror(-ret));
            break;
        }
        done += (uint64_t)got;
        if (t->progress) {
            t->progress(t->opaque, done, total > done ? total : done);
        }
    }
    if (ret == 0 && t->has_length && done < t->length) {
        ret = error_setf(err, EIO, "%s ended after %llu of %llu bytes",
                         t->fd_name, (unsigned long long)done,
                         (unsigned long long)t->length);
    }
    if (ret == 0) {
        ret = block_flush(n);
        if (ret < 0) {
            error_setf(err, -ret, "flush failed: %s", strerror(-ret));
        }
    }
    free(buf);
    return ret;
}

int pool_vol_upload(PoolStore *s, const char *pool, const char *vol,
                    const VolTransfer *t, Error *err)
{
    Pool *p;
    VolInfo v;
    BlockNode *n;
    int ret = transfer_open(s, pool, vol, true, &p, &v, &n, err);
    if (ret < 0) {
        return ret;
    }
    int64_t len = block_get_length(n);
    if (len >= 0 && t->offset > (uint64_t)len) {
        ret = error_setf(err, EINVAL, "offset %llu is past the end of "
                         "volume '%s' (%lld bytes)",
                         (unsigned long long)t->offset, v.name,
                         (long long)len);
    } else {
        ret = upload_loop(n, t, strcmp(v.type, "file") == 0, &v, err);
    }
    block_close(n);
    Error rerr = { 0 };
    if (pool_relock(p, &rerr) == 0) {
        /* New bytes: what the volume is now is found out again. */
        Error ignored = { 0 };
        p->be->vol_changed(p, &v, NULL, &ignored);
    }
    vol_info_clear(&v);
    pool_close(p);
    return ret;
}

int pool_vol_download(PoolStore *s, const char *pool, const char *vol,
                      const VolTransfer *t, Error *err)
{
    Pool *p;
    VolInfo v;
    BlockNode *n;
    int ret = transfer_open(s, pool, vol, false, &p, &v, &n, err);
    if (ret < 0) {
        return ret;
    }
    int64_t size = block_get_length(n);
    uint64_t end = 0;
    if (size < 0) {
        ret = error_setf(err, (int)-size, "cannot get the size of volume "
                         "'%s'", v.name);
    } else if (t->offset > (uint64_t)size) {
        ret = error_setf(err, EINVAL, "offset %llu is past the end of "
                         "volume '%s' (%lld bytes)",
                         (unsigned long long)t->offset, v.name,
                         (long long)size);
    } else {
        end = (uint64_t)size;
        if (t->has_length && t->length < end - t->offset) {
            end = t->offset + t->length;
        }
    }
    struct stat st;
    bool can_seek = fstat(t->fd, &st) == 0 && S_ISREG(st.st_mode);
    off_t start = can_seek ? lseek(t->fd, 0, SEEK_CUR) : 0;
    uint8_t *buf = ret == 0 ? malloc(CHUNK) : NULL;
    if (ret == 0 && !buf) {
        ret = error_setf(err, ENOMEM, "out of memory");
    }
    bool hole_at_end = false;
    for (uint64_t off = t->offset; ret == 0 && off < end; off += CHUNK) {
        size_t now = end - off < CHUNK ? (size_t)(end - off) : CHUNK;
        ret = block_pread(n, off, now, buf);
        if (ret < 0) {
            error_setf(err, -ret, "error reading volume '%s' at byte %llu: "
                       "%s", v.name, (unsigned long long)off,
                       strerror(-ret));
            break;
        }
        for (size_t pos = 0; ret == 0 && pos < now;) {
            size_t run = now - pos;
            hole_at_end = false;
            if (t->sparse && can_seek) {
                run = zero_run(buf + pos, now - pos, &hole_at_end);
            }
            if (hole_at_end) {
                ret = lseek(t->fd, (off_t)run, SEEK_CUR) < 0 ? -errno : 0;
            } else {
                ret = write_full(t->fd, buf + pos, run);
            }
            pos += run;
        }
        if (ret < 0) {
            error_setf(err, -ret, "error writing %s: %s", t->fd_name,
                       strerror(-ret));
            break;
        }
        if (t->progress) {
            t->progress(t->opaque, off + now - t->offset, end - t->offset);
        }
    }
    if (ret == 0 && hole_at_end &&
        ftruncate(t->fd, start + (off_t)(end - t->offset)) < 0) {
        ret = error_setf(err, errno, "error writing %s: %s", t->fd_name,
                         strerror(errno));
    }
    free(buf);
    block_close(n);
    vol_info_clear(&v);
    pool_close(p);
    return ret;
}
