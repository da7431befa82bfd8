/*
 * compress.c - decompression of qcow2 compressed clusters (zlib raw
 * deflate or zstd, as the header's compression_type says).
 *
 * The stored data may be followed by unrelated bytes (the descriptor
 * rounds up to 512-byte sectors), so decompression stops as soon as a full
 * cluster has been produced.
 *
 * Compression (for BLOCK_REQ_COMPRESSED writes) produces what QEMU writes:
 * a raw deflate stream with a 4k window, or one zstd frame.  It runs
 * without s->lock, in the writing thread, so parallel writers compress in
 * parallel.
 */
#include <errno.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "formats/qcow2/qcow2.h"

static int inflate_zlib(const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len)
{
    z_stream z;
    int ret;

    memset(&z, 0, sizeof(z));
    /* Raw deflate with a 4k window, as qcow2 writers use. */
    if (inflateInit2(&z, -12) != Z_OK) {
        return -EIO;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    ret = inflate(&z, Z_FINISH);
    size_t produced = dst_len - z.avail_out;
    inflateEnd(&z);
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && produced == dst_len) {
        return 0;
    }
    return -EIO;
}

static int inflate_zstd(const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    ZSTD_inBuffer in = { src, src_len, 0 };
    ZSTD_outBuffer out = { dst, dst_len, 0 };
    int ret = -EIO;

    if (!dctx) {
        return -ENOMEM;
    }
    while (out.pos < out.size && in.pos < in.size) {
        size_t r = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(r)) {
            break;
        }
        if (r == 0) {
            /* Frame complete. */
            break;
        }
    }
    if (out.pos == out.size) {
        ret = 0;
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

int qcow2_decompress(const Qcow2State *s, const uint8_t *src, size_t src_len,
                     uint8_t *dst)
{
    switch (s->compression_type) {
    case QCOW2_COMPRESSION_ZLIB:
        return inflate_zlib(src, src_len, dst, s->cluster_size);
    case QCOW2_COMPRESSION_ZSTD:
        return inflate_zstd(src, src_len, dst, s->cluster_size);
    default:
        return -ENOTSUP;
    }
}

static ssize_t deflate_zlib(const uint8_t *src, size_t src_len, uint8_t *dst,
                            size_t dst_len)
{
    z_stream z;
    ssize_t ret;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int r = deflate(&z, Z_FINISH);
    /* Anything but a finished stream means it did not fit. */
    ret = r == Z_STREAM_END ? (ssize_t)(dst_len - z.avail_out) : -ENOSPC;
    deflateEnd(&z);
    return ret;
}

static ssize_t compress_zstd(const uint8_t *src, size_t src_len, uint8_t *dst,
                             size_t dst_len)
{
    size_t r = ZSTD_compress(dst, dst_len, src, src_len, ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(r)) {
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall
               ? -ENOSPC : -EIO;
    }
    return (ssize_t)r;
}

ssize_t qcow2_compress(const Qcow2State *s, const uint8_t *src, uint8_t *dst,
                       size_t dst_len)
{
    switch (s->compression_type) {
    case QCOW2_COMPRESSION_ZLIB:
        return deflate_zlib(src, s->cluster_size, dst, dst_len);
    case QCOW2_COMPRESSION_ZSTD:
        return compress_zstd(src, s->cluster_size, dst, dst_len);
    default:
        return -ENOTSUP;
    }
}
