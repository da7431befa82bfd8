/*
 * compress.c - decompression of qcow2 compressed clusters (zlib raw
 * deflate or zstd, as the header's compression_type says), and the
 * compression of whole clusters for BLOCK_REQ_COMPRESSED writes.
 *
 * The stored data may be followed by unrelated bytes (the descriptor
 * rounds up to 512-byte sectors), so decompression stops as soon as a full
 * cluster has been produced.
 *
 * Compression produces what QEMU writes: a raw deflate stream with a 4k
 * window, or one zstd frame.  It runs without s->lock, in the writing
 * thread, so parallel writers compress in parallel.
 *
 * Codec state comes from a process-wide free list (see Codec): a thread
 * takes one context for one cluster and gives it back, so setting up
 * zlib's and zstd's state is paid once per context rather than once per
 * cluster, and the number of contexts is the peak number of clusters
 * being (de)compressed at once (at most the copy engine's workers).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>
#ifdef HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "formats/qcow2/qcow2.h"

/* ------------------------------------------------------------------ */
/* Codec contexts                                                      */

/* Each part is set up on first use, so a reader never pays for the
 * compressor's state (zlib's deflate state alone is 272 KiB). */
typedef struct Codec {
    struct Codec *next;
    bool inflate_ready, deflate_ready;
    z_stream inf, def;
    ZSTD_DCtx *zd;
    ZSTD_CCtx *zc;
#ifdef HAVE_LIBDEFLATE
    struct libdeflate_decompressor *ld;
    struct libdeflate_compressor *lc;   /* level 1: the incompressible test */
#endif
} Codec;

static pthread_mutex_t codec_lock = PTHREAD_MUTEX_INITIALIZER;
static Codec *codec_free;

static Codec *codec_get(void)
{
    pthread_mutex_lock(&codec_lock);
    Codec *c = codec_free;
    if (c) {
        codec_free = c->next;
    }
    pthread_mutex_unlock(&codec_lock);
    return c ? c : calloc(1, sizeof(Codec));
}

static void codec_put(Codec *c)
{
    pthread_mutex_lock(&codec_lock);
    c->next = codec_free;
    codec_free = c;
    pthread_mutex_unlock(&codec_lock);
}

static void codec_destroy(Codec *c)
{
    if (c->inflate_ready) {
        inflateEnd(&c->inf);
    }
    if (c->deflate_ready) {
        deflateEnd(&c->def);
    }
    ZSTD_freeDCtx(c->zd);
    ZSTD_freeCCtx(c->zc);
#ifdef HAVE_LIBDEFLATE
    libdeflate_free_decompressor(c->ld);
    libdeflate_free_compressor(c->lc);
#endif
    free(c);
}

/* At exit, so leak checkers see every context given back. */
__attribute__((destructor)) static void codec_free_all(void)
{
    pthread_mutex_lock(&codec_lock);
    while (codec_free) {
        Codec *c = codec_free;
        codec_free = c->next;
        codec_destroy(c);
    }
    pthread_mutex_unlock(&codec_lock);
}

/* ------------------------------------------------------------------ */
/* Decompression                                                       */

/* Readies the context's inflate (deflate when `compress`) stream for one
 * cluster: set up on first use, reset after, pointed at the buffers.  Both
 * directions speak raw deflate with a 4k window, as qcow2 writers use. */
static int zstream_begin(Codec *c, bool compress, const uint8_t *src,
                         size_t src_len, uint8_t *dst, size_t dst_len)
{
    z_stream *z = compress ? &c->def : &c->inf;
    bool *ready = compress ? &c->deflate_ready : &c->inflate_ready;
    if (!*ready) {
        int r = compress ? deflateInit2(z, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                                        -12, 9, Z_DEFAULT_STRATEGY)
                         : inflateInit2(z, -12);
        if (r != Z_OK) {
            return -ENOMEM;
        }
        *ready = true;
    } else if ((compress ? deflateReset(z) : inflateReset(z)) != Z_OK) {
        return -EIO;
    }
    z->next_in = (Bytef *)src;
    z->avail_in = (uInt)src_len;
    z->next_out = dst;
    z->avail_out = (uInt)dst_len;
    return 0;
}

static int inflate_zlib(Codec *c, const uint8_t *src, size_t src_len,
                        uint8_t *dst, size_t dst_len)
{
    int ret = zstream_begin(c, false, src, src_len, dst, dst_len);
    if (ret < 0) {
        return ret;
    }
    z_stream *z = &c->inf;
    ret = inflate(z, Z_FINISH);
    size_t produced = dst_len - z->avail_out;
    /* A stream that goes on past the cluster is cut there, as QEMU
     * does. */
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && produced == dst_len) {
        return 0;
    }
    return -EIO;
}

#ifdef HAVE_LIBDEFLATE
/* libdeflate decodes raw deflate 2-3x faster than zlib.  What it does not
 * decode to exactly one cluster goes to zlib, so a stream that runs on
 * past the cluster is still cut there (as QEMU does) and a damaged one
 * still fails.  The one difference: libdeflate does not limit distances
 * to the 4k window, so a stream reaching further back (which no qcow2
 * writer makes, and QEMU refuses) is read rather than refused. */
static int inflate_deflate(Codec *c, const uint8_t *src, size_t src_len,
                           uint8_t *dst, size_t dst_len)
{
    if (!c->ld) {
        c->ld = libdeflate_alloc_decompressor();
    }
    if (c->ld) {
        size_t in_used, out_len;
        if (libdeflate_deflate_decompress_ex(c->ld, src, src_len, dst,
                                             dst_len, &in_used, &out_len) ==
                LIBDEFLATE_SUCCESS && out_len == dst_len) {
            return 0;
        }
    }
    return inflate_zlib(c, src, src_len, dst, dst_len);
}
#else
#define inflate_deflate inflate_zlib
#endif

static int inflate_zstd(Codec *c, const uint8_t *src, size_t src_len,
                        uint8_t *dst, size_t dst_len)
{
    if (!c->zd) {
        c->zd = ZSTD_createDCtx();
        if (!c->zd) {
            return -ENOMEM;
        }
    } else {
        ZSTD_DCtx_reset(c->zd, ZSTD_reset_session_only);
    }
    ZSTD_inBuffer in = { src, src_len, 0 };
    ZSTD_outBuffer out = { dst, dst_len, 0 };
    /* A frame that states its size and fits is decoded in one pass,
     * straight into dst. */
    while (out.pos < out.size && in.pos < in.size) {
        size_t r = ZSTD_decompressStream(c->zd, &out, &in);
        if (ZSTD_isError(r) || r == 0) {
            break;   /* error, or the frame is complete */
        }
    }
    return out.pos == out.size ? 0 : -EIO;
}

/* ------------------------------------------------------------------ */
/* Compression                                                         */

#ifdef HAVE_LIBDEFLATE
/* Most of what zlib spends on compressing a disk goes into clusters that
 * do not compress (random or already compressed data): it works through
 * them at level 6 only to give up.  libdeflate's fastest level tells them
 * apart in half the time: when even it cannot get the cluster into
 * dst_len bytes, the cluster is stored plain without asking zlib.  Its
 * 32k window sees at least the repeats zlib's 4k window does, so the
 * clusters this turns away would have shrunk, if at all, by a few bytes
 * of better matching.  dst serves as its scratch space. */
static bool deflate_hopeless(Codec *c, const uint8_t *src, size_t src_len,
                             uint8_t *dst, size_t dst_len)
{
    if (!c->lc) {
        c->lc = libdeflate_alloc_compressor(1);
        if (!c->lc) {
            return false;
        }
    }
    return libdeflate_deflate_compress(c->lc, src, src_len, dst,
                                       dst_len) == 0;
}
#endif

static ssize_t deflate_zlib(Codec *c, const uint8_t *src, size_t src_len,
                            uint8_t *dst, size_t dst_len)
{
#ifdef HAVE_LIBDEFLATE
    if (deflate_hopeless(c, src, src_len, dst, dst_len)) {
        return -ENOSPC;
    }
#endif
    int r = zstream_begin(c, true, src, src_len, dst, dst_len);
    if (r < 0) {
        return r;
    }
    z_stream *z = &c->def;
    r = deflate(z, Z_FINISH);
    /* Anything but a finished stream means it did not fit. */
    return r == Z_STREAM_END ? (ssize_t)(dst_len - z->avail_out) : -ENOSPC;
}

static ssize_t compress_zstd(Codec *c, const uint8_t *src, size_t src_len,
                             uint8_t *dst, size_t dst_len)
{
    if (!c->zc) {
        c->zc = ZSTD_createCCtx();
        if (!c->zc) {
            return -ENOMEM;
        }
    }
    /* Sets every parameter afresh: the frame is what ZSTD_compress
     * would make. */
    size_t r = ZSTD_compressCCtx(c->zc, dst, dst_len, src, src_len,
                                 ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(r)) {
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall
               ? -ENOSPC : -EIO;
    }
    return (ssize_t)r;
}

/* ------------------------------------------------------------------ */
/* Entry points                                                        */

/* One cluster through the image's codec, either way, on a context
 * borrowed for the call. */
static ssize_t codec_run(const Qcow2State *s, bool compress,
                         const uint8_t *src, size_t src_len, uint8_t *dst,
                         size_t dst_len)
{
    bool zlib = s->compression_type == QCOW2_COMPRESSION_ZLIB;
    if (!zlib && s->compression_type != QCOW2_COMPRESSION_ZSTD) {
        return -ENOTSUP;
    }
    Codec *c = codec_get();
    if (!c) {
        return -ENOMEM;
    }
    ssize_t ret;
    if (compress) {
        ret = zlib ? deflate_zlib(c, src, src_len, dst, dst_len)
                   : compress_zstd(c, src, src_len, dst, dst_len);
    } else {
        ret = zlib ? inflate_deflate(c, src, src_len, dst, dst_len)
                   : inflate_zstd(c, src, src_len, dst, dst_len);
    }
    codec_put(c);
    return ret;
}

int qcow2_decompress(const Qcow2State *s, const uint8_t *src, size_t src_len,
                     uint8_t *dst)
{
    return (int)codec_run(s, false, src, src_len, dst, s->cluster_size);
}

ssize_t qcow2_compress(const Qcow2State *s, const uint8_t *src, uint8_t *dst,
                       size_t dst_len)
{
    return codec_run(s, true, src, s->cluster_size, dst, dst_len);
}
