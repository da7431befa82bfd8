/*
 * create.c - creating qcow2 images with qemu-img's options and layout.
 *
 * The layout matches QEMU's: header cluster, refcount table (cluster 1),
 * refcount block (cluster 2), then the L1 table at cluster 3 sized for the
 * virtual size.  We write the first three clusters through a protocol
 * node, then open the result as a qcow2 node and let the driver's own
 * resize code add the L1 table (and any preallocation), so every image
 * size and geometry takes the same, tested, allocation path.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "formats/qcow2/qcow2.h"

const BlockCreateOpt qcow2_create_opts[] = {
    { "size", OPT_SIZE, "Virtual disk size", NULL },
    { "compat", OPT_STRING,
      "Compatibility level (v2 [0.10] or v3 [1.1])", "1.1" },
    { "backing_file", OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", OPT_STRING, "Image format of the base image", NULL },
    { "data_file", OPT_STRING, "File name of an external data file", NULL },
    { "data_file_raw", OPT_BOOL,
      "The external data file must stay valid as a raw image", "off" },
    { "encryption", OPT_BOOL, "Encrypt the image with format 'aes'. "
      "(Deprecated in favor of encrypt.format=aes)", NULL },
    { "encrypt.format", OPT_STRING,
      "Encrypt the image, format choices: 'aes', 'luks'", NULL },
    { "encrypt.key-secret", OPT_STRING,
      "ID of secret providing qcow AES key or LUKS passphrase", NULL },
    { "encrypt.cipher-alg", OPT_STRING,
      "Name of encryption cipher algorithm", NULL },
    { "encrypt.cipher-mode", OPT_STRING, "Name of encryption cipher mode",
      NULL },
    { "encrypt.ivgen-alg", OPT_STRING, "Name of IV generator algorithm",
      NULL },
    { "encrypt.ivgen-hash-alg", OPT_STRING,
      "Name of IV generator hash algorithm", NULL },
    { "encrypt.hash-alg", OPT_STRING, "Name of encryption hash algorithm",
      NULL },
    { "encrypt.iter-time", OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds", NULL },
    { "cluster_size", OPT_SIZE, "qcow2 cluster size", "65536" },
    { "preallocation", OPT_STRING, "Preallocation mode (allowed values: off, "
      "metadata, falloc, full)", "off" },
    { "lazy_refcounts", OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", OPT_NUMBER, "Width of a reference count entry in bits",
      "16" },
    { "compression_type", OPT_STRING,
      "Compression method used for image cluster compression", "zlib" },
    { "extended_l2", OPT_BOOL, "Extended L2 tables", "off" },
    { "nocow", OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)",
      "off" },
    { "extent_size_hint", OPT_SIZE,
      "Extent size hint for the image file, 0 to disable", NULL },
    { NULL, 0, NULL, NULL },
};

int qcow2_truncate(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                   Error *err);

typedef struct CreateParams {
    uint32_t version;
    uint32_t cluster_bits;
    uint32_t refcount_order;
    bool lazy_refcounts;
    bool extended_l2;
    bool data_file_raw;
    uint8_t compression_type;
    PreallocMode prealloc;
    const char *backing_file;
    const char *backing_fmt;
    const char *data_file;
    bool encrypt_luks;
    bool encrypt_aes;
} CreateParams;

static int parse_params(KVList *opts, CreateParams *p, Error *err)
{
    const char *v;
    uint64_t u;
    int ret;

    memset(p, 0, sizeof(*p));
    p->version = 3;
    v = kvlist_get(opts, "compat");
    if (v) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
            p->version = 2;
        } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
            p->version = 3;
        } else {
            return error_setf(err, EINVAL, "Parameter 'version' does not "
                              "accept value '%s'", v);
        }
    }
    ret = kvlist_get_size(opts, "cluster_size", 65536, &u, err);
    if (ret < 0) {
        return ret;
    }
    if (u < 512 || u > (2u << 20) || (u & (u - 1))) {
        return error_setf(err, EINVAL, "Cluster size must be a power of two "
                          "between 512 and 2048k");
    }
    p->cluster_bits = (uint32_t)__builtin_ctzll(u);
    ret = kvlist_get_uint(opts, "refcount_bits", 16, &u, err);
    if (ret < 0) {
        return ret;
    }
    if (u == 0 || u > 64 || (u & (u - 1))) {
        return error_setf(err, EINVAL, "Refcount width must be a power of two "
                          "and may not exceed 64 bits");
    }
    p->refcount_order = (uint32_t)__builtin_ctzll(u);
    ret = kvlist_get_bool(opts, "lazy_refcounts", false, &p->lazy_refcounts,
                          err);
    if (ret >= 0) {
        ret = kvlist_get_bool(opts, "extended_l2", false, &p->extended_l2,
                              err);
    }
    if (ret >= 0) {
        ret = kvlist_get_bool(opts, "data_file_raw", false, &p->data_file_raw,
                              err);
    }
    bool nocow, enc = false;
    if (ret >= 0) {
        ret = kvlist_get_bool(opts, "nocow", false, &nocow, err);
    }
    if (ret >= 0) {
        ret = kvlist_get_bool(opts, "encryption", false, &enc, err);
    }
    if (ret < 0) {
        return ret;
    }
    const char *ef = kvlist_get(opts, "encrypt.format");
    static const char *const enc_keys[] = {
        "encrypt.key-secret", "encrypt.cipher-alg", "encrypt.cipher-mode",
        "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg",
        "encrypt.iter-time",
    };
    for (size_t i = 0; i < sizeof(enc_keys) / sizeof(enc_keys[0]); i++) {
        kvlist_get(opts, enc_keys[i]);
    }
    if (enc && ef) {
        return error_setf(err, EINVAL, "'encrypt.format' and its alias "
                          "'encryption' can't be used at the same time");
    }
    if (ef && !strcmp(ef, "luks")) {
        p->encrypt_luks = true;
        ret = qcow2_crypto_check_opts(opts, err);
        if (ret < 0) {
            return ret;
        }
    } else if (enc || (ef && !strcmp(ef, "aes"))) {
        /* legacy AES, which qemu-img 7.2 still creates */
        p->encrypt_aes = true;
        if (!kvlist_get(opts, "encrypt.key-secret")) {
            return error_setf(err, EINVAL, "Parameter 'encrypt.key-secret' "
                              "is required for cipher");
        }
    } else if (ef && *ef) {
        return error_setf(err, EINVAL, "Parameter 'encrypt.format' does not "
                          "accept value '%s'", ef);
    }
    v = kvlist_get(opts, "compression_type");
    if (v && strcmp(v, "zlib") == 0) {
        p->compression_type = QCOW2_COMPRESSION_ZLIB;
    } else if (v && strcmp(v, "zstd") == 0) {
        p->compression_type = QCOW2_COMPRESSION_ZSTD;
    } else if (v) {
        return error_setf(err, EINVAL, "Parameter 'compression-type' does "
                          "not accept value '%s'", v);
    }
    v = kvlist_get(opts, "preallocation");
    if (v && prealloc_parse(v, &p->prealloc) < 0) {
        return error_setf(err, EINVAL, "Parameter 'preallocation' does not "
                          "accept value '%s'", v);
    }
    p->backing_file = kvlist_get(opts, "backing_file");
    if (p->backing_file && !*p->backing_file) {
        p->backing_file = NULL;
    }
    p->backing_fmt = kvlist_get(opts, "backing_fmt");
    if (p->backing_fmt && !*p->backing_fmt) {
        p->backing_fmt = NULL;
    }
    p->data_file = kvlist_get(opts, "data_file");
    if (p->data_file && !*p->data_file) {
        p->data_file = NULL;
    }

    /* Combinations, with QEMU's wording. */
    if (p->version < 3) {
        if (p->refcount_order != 4) {
            return error_setf(err, EINVAL, "Different refcount widths than 16 "
                              "bits require compatibility level 1.1 or above "
                              "(use version=v3 or greater)");
        }
        if (p->lazy_refcounts) {
            return error_setf(err, EINVAL, "Lazy refcounts only supported "
                              "with compatibility level 1.1 and above (use "
                              "version=v3 or greater)");
        }
        if (p->extended_l2) {
            return error_setf(err, EINVAL, "Extended L2 entries are only "
                              "supported with compatibility level 1.1 and "
                              "above (use version=v3 or greater)");
        }
        if (p->data_file) {
            return error_setf(err, EINVAL, "External data files are only "
                              "supported with compatibility level 1.1 and "
                              "above (use version=v3 or greater)");
        }
        if (p->compression_type != QCOW2_COMPRESSION_ZLIB) {
            return error_setf(err, EINVAL, "Non-zlib compression type is "
                              "only supported with compatibility level 1.1 "
                              "and above (use version=v3 or greater)");
        }
    }
    if (p->extended_l2 && p->cluster_bits < QCOW2_EXTL2_MIN_CLUSTER_BITS) {
        return error_setf(err, EINVAL, "Extended L2 entries are only "
                          "supported with cluster sizes of at least 16384 "
                          "bytes");
    }
    if (p->data_file_raw && !p->data_file) {
        return error_setf(err, EINVAL, "data-file-raw requires data-file");
    }
    if (p->backing_file && p->data_file_raw) {
        return error_setf(err, EINVAL, "Backing file and data-file-raw cannot "
                          "be used at the same time");
    }
    if (p->backing_file && p->prealloc != PREALLOC_OFF && !p->extended_l2) {
        return error_setf(err, EINVAL, "Backing file and preallocation can "
                          "only be used at the same time if extended_l2 is "
                          "on");
    }
    if (p->backing_file && strlen(p->backing_file) > QCOW2_MAX_BACKING_NAME) {
        return error_setf(err, EINVAL, "Backing file name too long");
    }
    return 0;
}

/* Header cluster, refcount table and one refcount block counting the
 * first three clusters.  When one refcount block can also count the L1
 * table, the L1 table for `size` is laid out right behind them and the
 * whole image goes out in one write (so a killed create leaves either an
 * empty file or a complete image); *complete says whether it did. */
static int write_initial(BlockNode *file, const CreateParams *p,
                         uint64_t size, bool *complete, Error *err)
{
    Qcow2State st;
    uint64_t cs = 1ull << p->cluster_bits;
    uint32_t order = p->version < 3 ? 4 : p->refcount_order;
    uint64_t l2_span = cs << (p->cluster_bits - (p->extended_l2 ? 4 : 3));
    uint64_t l1_size = (size + l2_span - 1) / l2_span;
    uint64_t l1_clusters = (l1_size * 8 + cs - 1) / cs;
    uint64_t per_block = 1ull << (p->cluster_bits + 3 - order);
    int ret;

    *complete = l1_size * 8 <= QCOW2_MAX_L1_BYTES &&
                3 + l1_clusters <= per_block;
    if (!*complete) {
        l1_size = l1_clusters = 0;
    }
    uint8_t *buf = calloc(3 + l1_clusters, cs);
    if (!buf) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    memset(&st, 0, sizeof(st));
    st.version = p->version;
    st.cluster_bits = p->cluster_bits;
    st.cluster_size = cs;
    st.size = *complete ? size : 0;
    st.l1_size = (uint32_t)l1_size;
    st.l1_table_offset = l1_size ? 3 * cs : 0;
    st.refcount_table_offset = cs;
    st.refcount_table_clusters = 1;
    st.refcount_order = p->version < 3 ? 4 : p->refcount_order;
    st.header_length = QCOW2_V3_HEADER_SIZE;
    st.compression_type = p->compression_type;
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB) {
        st.incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
    }
    if (p->extended_l2) {
        st.incompatible_features |= QCOW2_INCOMPAT_EXTL2;
    }
    if (p->data_file) {
        st.incompatible_features |= QCOW2_INCOMPAT_DATA_FILE;
        st.data_file_name = (char *)p->data_file;
    }
    if (p->data_file_raw) {
        st.autoclear_features |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    if (p->lazy_refcounts) {
        st.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    st.backing_file = (char *)p->backing_file;
    st.backing_format = (char *)p->backing_fmt;
    st.refcount_bits = 1u << st.refcount_order;

    ret = qcow2_build_header(&st, buf, err);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    /* Refcount table entry 0 -> block at cluster 2, which counts the
     * header, itself, the table and the L1 table. */
    qcow2_put_be64(buf + cs, 2 * cs);
    for (uint64_t i = 0; i < 3 + l1_clusters; i++) {
        qcow2_refblock_set(&st, buf + 2 * cs, i, 1);
    }
    /* The file ends right after the L1 entries, as QEMU's does.  The
     * header goes last: a write cut short (a SIGKILL stops a large
     * write() between pages) must not leave a header naming a refcount
     * block or L1 table that is not there yet. */
    ret = block_pwrite(file, cs, 2 * cs + l1_size * 8, buf + cs, 0);
    if (ret >= 0) {
        ret = block_pwrite(file, 0, cs, buf, 0);
    }
    free(buf);
    if (ret >= 0) {
        ret = block_flush(file);
    }
    if (ret < 0) {
        return error_setf(err, -ret, "cannot write the qcow2 metadata: %s",
                          strerror(-ret));
    }
    return 0;
}

int qcow2_create(const char *filename, uint64_t size, KVList *opts,
                 Error *err)
{
    CreateParams p;
    int ret;

    const char *sz = kvlist_get(opts, "size");
    if (sz) {
        ret = kvlist_get_size(opts, "size", size, &size, err);
        if (ret < 0) {
            return ret;
        }
    }
    ret = parse_params(opts, &p, err);
    if (ret < 0) {
        return ret;
    }
    size = qcow2_align_up(size, 512);
    /* Before touching the disk: an existing file named for the image
     * keeps its content. */
    uint64_t l2_entries = (1ull << p.cluster_bits) /
                          (p.extended_l2 ? 16 : 8);
    uint64_t l1_span = (1ull << p.cluster_bits) * l2_entries;
    if (size / l1_span + (size % l1_span != 0) >
        QCOW2_MAX_L1_BYTES / 8) {
        return error_setf(err, EFBIG, "The image size is too large for "
                          "file format 'qcow2' (try using a larger cluster "
                          "size)");
    }

    if (p.data_file) {
        /* As QEMU: the name is used as given (relative to the current
         * directory) and stored as given. */
        /* as QEMU: the image file's hints apply to the data file too */
        KVList hints = { 0 };
        block_create_file_hints(opts, &hints);
        /* falloc/full allocate the data file's blocks as qemu-img does
         * (that is where the data goes); metadata only maps it */
        PreallocMode dpm = p.prealloc == PREALLOC_METADATA ? PREALLOC_OFF
                                                            : p.prealloc;
        ret = block_create_file(p.data_file, size, dpm, &hints, err);
        kvlist_free(&hints);
        if (ret < 0) {
            return ret;
        }
    }
    ret = block_create_file(filename, 0, PREALLOC_OFF, opts, err);
    if (ret < 0) {
        return ret;
    }
    BlockNode *file = block_open_protocol(filename, NULL, BLOCK_O_RDWR |
                                          BLOCK_O_NO_LOCK, err);
    if (!file) {
        return -(err && err->code ? err->code : EIO);
    }
    bool complete;
    ret = write_initial(file, &p, size, &complete, err);
    block_close(file);
    if (ret < 0) {
        return ret;
    }

    /* Now a valid empty image: grow it to size through the driver. */
    BlockNode *n = block_open(filename, "qcow2", NULL,
                              BLOCK_O_RDWR | BLOCK_O_NO_BACKING, err);
    if (!n) {
        return -(err && err->code ? err->code : EIO);
    }
    if (p.encrypt_luks || p.encrypt_aes) {
        ret = p.encrypt_luks ? qcow2_crypto_create(n, opts, err)
                             : qcow2_crypto_create_aes(n, opts, err);
        if (ret < 0) {
            block_close(n);
            return ret;
        }
    }
    PreallocMode pm = p.prealloc;
    if (p.data_file_raw && pm == PREALLOC_OFF) {
        /* A raw data file must be readable standalone: map it all. */
        pm = PREALLOC_METADATA;
    }
    if (size > 0 && (!complete || pm != PREALLOC_OFF)) {
        ret = qcow2_truncate(n, size, true, pm, err);
    }
    if (ret >= 0) {
        ret = block_flush(n);
        if (ret < 0) {
            error_setf(err, -ret, "cannot flush the new image: %s",
                       strerror(-ret));
        }
    }
    block_close(n);
    return ret < 0 ? ret : 0;
}
