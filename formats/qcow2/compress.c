/*
 * compress.c - decompression of qcow2 compressed clusters (zlib raw
 * deflate or zstd, as the header's compression_type says).
 *
 * The stored data may be followed by unrelated bytes (the descriptor
 * rounds up to 512-byte sectors), so decompression stops as soon as a full
 * cluster has been produced.
 */
#include <errno.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

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
