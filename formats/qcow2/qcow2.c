/*
 * qcow2.c - the qcow2 format driver: open/close, flush, info and the ops
 * table.  The pieces live next to it: header.c and header-write.c (header
 * and extensions), cache.c (metadata cache), refcount.c (allocation),
 * cluster.c (L1/L2), read.c, write.c, write-compressed.c and zero.c
 * (guest I/O), resize.c (truncate), create.c, compress.c, and check*.c
 * (check and repair) / measure.c.
 *
 * Opening validates the header before trusting it, refuses what we cannot
 * handle safely (unknown incompatible features, encryption, writing a
 * corrupt image), and repairs refcounts left inconsistent by lazy refcount
 * updates before anything is written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/driver.h"
#include "formats/qcow2/qcow2.h"


int qcow2_write_zeroes(BlockNode *n, uint64_t off, uint64_t len, int flags);
int qcow2_discard(BlockNode *n, uint64_t off, uint64_t len);
int qcow2_make_empty(BlockNode *n);
int qcow2_block_status(BlockNode *n, uint64_t off, uint64_t len,
                       uint64_t *pnum, uint64_t *map, BlockNode **file);
int qcow2_truncate(BlockNode *n, uint64_t size, bool exact, PreallocMode pm,
                   Error *err);
int qcow2_create(const char *filename, uint64_t size, KVList *opts,
                 Error *err);

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 8 && qcow2_be32(buf) == QCOW2_MAGIC &&
        qcow2_be32(buf + 4) >= 2) {
        return 100;
    }
    return 0;
}

int qcow2_flush_caches(Qcow2State *s)
{
    int ret = qcow2_apply_pending_frees(s);
    if (ret >= 0) {
        ret = qcow2_cache_writeback(&s->l2_cache);
    }
    if (ret >= 0) {
        ret = qcow2_cache_writeback(&s->refcount_cache);
    }
    if (ret >= 0) {
        ret = block_flush(block_file(s->node));
        if (ret >= 0) {
            s->refcount_unflushed = false;
            s->data_unflushed = false;
        }
    }
    return ret < 0 ? ret : 0;
}

static int qcow2_flush(BlockNode *n)
{
    Qcow2State *s = qcow2_state(n);
    int ret = 0;

    if (s->read_only && !s->dirty_set) {
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    ret = qcow2_cache_flush_all(s);
    pthread_mutex_unlock(&s->lock);
    /* 1: the image and data files are flushed already */
    return ret < 0 ? ret : 1;
}

static void free_state(Qcow2State *s)
{
    qcow2_crypto_close(s);
    qcow2_cache_destroy(&s->l2_cache);
    qcow2_cache_destroy(&s->refcount_cache);
    free(s->l1_table);
    free(s->refcount_table);
    free(s->pending_frees);
    s->l1_table = NULL;
    s->refcount_table = NULL;
    s->pending_frees = NULL;
    qcow2_free_header(s);
    pthread_cond_destroy(&s->inflight_cond);
    pthread_mutex_destroy(&s->grow_lock);
    pthread_mutex_destroy(&s->lock);
}

static void qcow2_close(BlockNode *n)
{
    Qcow2State *s = qcow2_state(n);

    if (!s || !s->node) {
        return;
    }
    /* Bitmaps first: storing them allocates clusters. */
    pthread_mutex_lock(&s->lock);
    qcow2_bitmaps_close(n);
    pthread_mutex_unlock(&s->lock);
    if (!n->read_only) {
        pthread_mutex_lock(&s->lock);
        int ret = s->read_only ? 0 : qcow2_flush_caches(s);
        if (ret == 0 && s->dirty_set) {
            /* A clean close: refcounts are consistent again. */
            if (qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY) == 0) {
                s->dirty_set = false;
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
    free_state(s);
    s->node = NULL;
}

static int open_data_file(BlockNode *n, Qcow2State *s, KVList *opts,
                          int flags, Error *err)
{
    const char *name = kvlist_get(opts, "data-file");

    if (!s->has_data_file) {
        if (name) {
            return error_setf(err, EINVAL, "'data-file' can only be set for "
                              "images with an external data file");
        }
        return 0;
    }
    if (block_data_file(n)) {
        return 0;   /* a reopen: the core reopened the child already */
    }
    if (!name) {
        name = s->data_file_name;
    }
    if (!name || !*name) {
        return error_setf(err, EINVAL, "'data-file' is required for this "
                          "image");
    }
    /* QEMU opens a relative data file name from the current directory;
     * fall back to the image's directory, where backing files live. */
    char *full = strdup(name);
    if (full && name[0] != '/' && !strstr(name, "://") &&
        access(name, F_OK) != 0) {
        char *alt = block_resolve_backing(n->filename, name);
        if (alt && access(alt, F_OK) == 0) {
            free(full);
            full = alt;
        } else {
            free(alt);
        }
    }
    if (!full) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int pflags = flags & (BLOCK_O_RDWR | BLOCK_O_SHARE | BLOCK_O_NOCACHE |
                          BLOCK_O_NO_LOCK | BLOCK_O_NO_FLUSH);
    Error derr = { 0 };
    BlockNode *df = block_open_protocol(full, NULL, pflags, &derr);
    if (!df) {
        error_setf(err, derr.code ? derr.code : EIO,
                   "Could not open data file '%s': %s", full, derr.msg);
        free(full);
        return -(derr.code ? derr.code : EIO);
    }
    block_set_child(n, BLOCK_CHILD_DATA_FILE, df);
    free(full);
    return 0;
}

static int load_tables(Qcow2State *s, Error *err)
{
    int ret = qcow2_read_l1(s, s->l1_table_offset, s->l1_size, &s->l1_table);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the L1 table: %s",
                          strerror(-ret));
    }
    uint64_t n = s->refcount_table_size;
    s->refcount_table = calloc(n ? n : 1, 8);
    if (!s->refcount_table) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int64_t flen = block_get_length(block_file(s->node));
    uint64_t avail = (uint64_t)flen - s->refcount_table_offset;
    uint64_t bytes = n * 8 < avail ? n * 8 : avail;
    bytes &= ~7ull;
    ret = block_pread(block_file(s->node), s->refcount_table_offset, bytes,
                      s->refcount_table);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot read the refcount table: %s",
                          strerror(-ret));
    }
    for (uint64_t i = 0; i < bytes / 8; i++) {
        s->refcount_table[i] = qcow2_be64((uint8_t *)&s->refcount_table[i]);
    }
    s->alloc_end = ((uint64_t)flen + s->cluster_size - 1) >> s->cluster_bits;
    s->free_cluster_index = 1;
    return 0;
}

static int qcow2_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    int ret;

    memset(s, 0, sizeof(*s));
    s->node = n;
    s->open_flags = flags;
    s->read_only = n->read_only;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->inflight_cond, NULL);
    pthread_mutex_init(&s->grow_lock, NULL);
    n->request_alignment = 1;
    s->debug_events = block_takes_debug_events(block_file(n));

    ret = qcow2_read_header(s, err);
    if (ret < 0) {
        goto fail;
    }
    if (s->crypt_method != QCOW2_CRYPT_NONE) {
        ret = qcow2_crypto_open(s, opts, flags, err);
        if (ret < 0) {
            goto fail;
        }
    } else {
        /* As QEMU: a key for a plain image is not an error (one script
         * line can open encrypted and plain images alike, and a convert
         * killed before it encrypted its target leaves a plain one); a
         * format the header does not have is. */
        (void)kvlist_get(opts, "encrypt.key-secret");
        const char *efmt = kvlist_get(opts, "encrypt.format");
        if (efmt) {
            ret = error_setf(err, EINVAL, "No encryption in image header, "
                             "but options specified format '%s'", efmt);
            goto fail;
        }
    }
    if (!n->read_only && (s->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
        && !(flags & BLOCK_O_CHECK)) {
        ret = error_setf(err, EACCES, "qcow2: Image is corrupt; cannot be "
                         "opened read/write");
        goto fail;
    }
    ret = load_tables(s, err);
    if (ret < 0) {
        goto fail;
    }
    Qcow2CacheConfig cc;
    ret = qcow2_cache_config(s, opts, &cc, err);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_cache_init(s, &s->l2_cache, cc.l2_entries, false);
    if (ret >= 0) {
        ret = qcow2_cache_init(s, &s->refcount_cache, cc.refcount_entries,
                               true);
    }
    if (ret < 0) {
        error_setf(err, -ret, "out of memory");
        goto fail;
    }
    qcow2_cache_set_clean_interval(&s->l2_cache, cc.clean_interval);
    qcow2_cache_set_clean_interval(&s->refcount_cache, cc.clean_interval);
    ret = open_data_file(n, s, opts, flags, err);
    if (ret < 0) {
        goto fail;
    }
    if (s->backing_file) {
        if (s->data_file_raw) {
            ret = error_setf(err, EINVAL, "data-file-raw cannot be combined "
                             "with a backing file");
            goto fail;
        }
        n->backing_file = strdup(s->backing_file);
        n->backing_format = s->backing_format ? strdup(s->backing_format)
                                              : NULL;
        if (!n->backing_file || (s->backing_format && !n->backing_format)) {
            ret = error_setf(err, ENOMEM, "out of memory");
            goto fail;
        }
    }

    if (!n->read_only) {
        uint64_t unknown_ac = s->autoclear_features & ~QCOW2_AUTOCLEAR_KNOWN;
        if (unknown_ac && s->version >= 3) {
            s->autoclear_features &= ~unknown_ac;
            uint8_t b[8];
            qcow2_put_be64(b, s->autoclear_features);
            ret = block_pwrite(block_file(n), QCOW2_HDR_AUTOCLEAR, 8, b, 0);
            if (ret >= 0) {
                ret = block_flush(block_file(n));
            }
            if (ret < 0) {
                error_setf(err, -ret, "cannot update the header: %s",
                           strerror(-ret));
                goto fail;
            }
        }
        if ((s->incompatible_features & QCOW2_INCOMPAT_DIRTY) &&
            !(flags & BLOCK_O_CHECK)) {
            /* Lazy refcounts left them stale: rebuild before any write. */
            BlockCheckResult res;
            memset(&res, 0, sizeof(res));
            if (!qcow2_driver.check) {
                ret = error_setf(err, ENOTSUP, "image is dirty and refcount "
                                 "repair is not available");
                goto fail;
            }
            ret = qcow2_driver.check(n, &res,
                                     BLOCK_FIX_ERRORS | BLOCK_FIX_LEAKS, err);
            if (ret < 0) {
                goto fail;
            }
            pthread_mutex_lock(&s->lock);
            ret = qcow2_flush_caches(s);
            if (ret >= 0) {
                ret = qcow2_update_incompat(s, 0, QCOW2_INCOMPAT_DIRTY);
            }
            pthread_mutex_unlock(&s->lock);
            if (ret < 0) {
                error_setf(err, -ret, "cannot clear the dirty flag: %s",
                           strerror(-ret));
                goto fail;
            }
        }
    }
    /* Last: bitmaps are flagged in use on disk only once the open can no
     * longer fail for another reason. */
    ret = qcow2_bitmaps_open(n, err);
    if (ret < 0) {
        goto fail;
    }
    return 0;

fail:
    block_set_child(n, BLOCK_CHILD_DATA_FILE, NULL);
    free(n->backing_file);
    free(n->backing_format);
    n->backing_file = n->backing_format = NULL;
    free_state(s);
    s->node = NULL;
    return ret < 0 ? ret : -EINVAL;
}

/* Dirty bitmaps follow the new size (QEMU resizes them too). */
static int qcow2_truncate_bitmaps(BlockNode *n, uint64_t size, bool exact,
                                  PreallocMode pm, Error *err)
{
    int ret = qcow2_truncate(n, size, exact, pm, err);
    if (ret >= 0 && block_bitmaps_resize(n, size) < 0) {
        return error_setf(err, ENOMEM, "cannot resize the dirty bitmaps");
    }
    return ret;
}

/* Reverting would change the content behind the bitmaps' back; QEMU
 * refuses while the image has any. */
static int qcow2_snapshot_apply_bitmaps(BlockNode *n, const char *id_or_name,
                                        Error *err)
{
    if (n->bitmaps && n->bitmaps->n > 0) {
        return error_setf(err, EBUSY, "Device has active dirty bitmaps");
    }
    return qcow2_snapshot_apply(n, id_or_name, err);
}

static int64_t qcow2_get_length(BlockNode *n)
{
    return (int64_t)qcow2_state(n)->size;
}

static int64_t qcow2_get_allocated_size(BlockNode *n)
{
    int64_t a = block_get_allocated_size(block_file(n));
    if (a >= 0 && block_data_file(n)) {
        int64_t d = block_get_allocated_size(block_data_file(n));
        if (d > 0) {
            a += d;
        }
    }
    return a;
}

static json_t *qcow2_get_format_info(BlockNode *n)
{
    Qcow2State *s = qcow2_state(n);
    json_t *d = json_object();

    if (s->version == 2) {
        json_object_set_new(d, "compat", json_string("0.10"));
        json_object_set_new(d, "compression-type", json_string("zlib"));
        json_object_set_new(d, "refcount-bits",
                            json_integer(s->refcount_bits));
        if (s->crypto || s->aes) {
            json_object_set_new(d, "encrypt", qcow2_crypto_info(s));
        }
    } else {
        json_object_set_new(d, "compat", json_string("1.1"));
        json_object_set_new(d, "compression-type",
                            json_string(s->compression_type ==
                                        QCOW2_COMPRESSION_ZSTD ? "zstd"
                                                               : "zlib"));
        json_object_set_new(d, "lazy-refcounts",
                            json_boolean(s->lazy_refcounts));
        json_t *bm = qcow2_bitmaps_info(s);
        if (bm) {
            json_object_set_new(d, "bitmaps", bm);
        }
        json_object_set_new(d, "refcount-bits",
                            json_integer(s->refcount_bits));
        if (s->has_data_file) {
            if (s->data_file_name) {
                json_object_set_new(d, "data-file",
                                    json_string(s->data_file_name));
            }
            json_object_set_new(d, "data-file-raw",
                                json_boolean(s->data_file_raw));
        }
        if (s->crypto || s->aes) {
            json_object_set_new(d, "encrypt", qcow2_crypto_info(s));
        }
        json_object_set_new(d, "corrupt", json_boolean(
            s->incompatible_features & QCOW2_INCOMPAT_CORRUPT));
        json_object_set_new(d, "extended-l2", json_boolean(s->extended_l2));
    }
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("qcow2"));
    json_object_set_new(o, "data", d);
    return o;
}

/* A new image without preallocation has no clusters: it reads as
 * zeroes.  Preallocation allocates every L2 table, so the first L1
 * entry tells; then the clusters read what the data file holds, which
 * decrypts to garbage when encrypted (QEMU's rule). */
static bool qcow2_has_zero_init(BlockNode *n)
{
    Qcow2State *s = qcow2_state(n);
    pthread_mutex_lock(&s->lock);
    bool prealloc = s->l1_size > 0 && s->l1_table[0] != 0;
    pthread_mutex_unlock(&s->lock);
    if (!prealloc) {
        return true;
    }
    return !qcow2_encrypted(s) && block_has_zero_init(qcow2_data_node(s));
}

static void qcow2_get_info_extra(BlockNode *n, BlockInfoExtra *out)
{
    Qcow2State *s = qcow2_state(n);
    memset(out, 0, sizeof(*out));
    out->cluster_size = s->cluster_size;
    out->dirty = (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
    out->encrypted = s->crypt_method != QCOW2_CRYPT_NONE;
}

static int qcow2_change_backing_file(BlockNode *n, const char *file,
                                     const char *fmt, Error *err)
{
    Qcow2State *s = qcow2_state(n);
    char *nf = NULL, *nfmt = NULL;
    int ret;

    if (file && *file && s->data_file_raw) {
        return error_setf(err, EINVAL, "Cannot use a backing file with "
                          "data-file-raw");
    }
    if (file && *file) {
        if (strlen(file) > QCOW2_MAX_BACKING_NAME) {
            return error_setf(err, EINVAL, "Backing file name too long");
        }
        nf = strdup(file);
        if (fmt && *fmt) {
            nfmt = strdup(fmt);
        }
    }
    pthread_mutex_lock(&s->lock);
    char *of = s->backing_file, *ofmt = s->backing_format;
    s->backing_file = nf;
    s->backing_format = nfmt;
    ret = qcow2_write_header(s, err);
    if (ret < 0) {
        s->backing_file = of;
        s->backing_format = ofmt;
        free(nf);
        free(nfmt);
    } else {
        free(of);
        free(ofmt);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Compressed writes are ours to refuse with qemu-img's words (encrypted
 * images, external data files), so the answer is yes. */
static bool qcow2_can_compress(BlockNode *n)
{
    return true;
}

/* A FUA write is flushed through to the file with its metadata. */
static bool qcow2_can_fua(BlockNode *n)
{
    return true;
}

const BlockDriver qcow2_driver = {
    .name = "qcow2",
    .instance_size = sizeof(Qcow2State),
    .api_version = BLOCK_DRIVER_API_VERSION,
    .kind = BLOCK_DRIVER_FORMAT,
    .supports_backing = true,
    .can_compress = qcow2_can_compress,
    .can_fua = qcow2_can_fua,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .preadv = qcow2_preadv,
    .submit = qcow2_submit,
    .pwrite = qcow2_pwrite,
    .copy_range_from = qcow2_copy_range_from,
    .flush = qcow2_flush,
    .discard = qcow2_discard,
    .write_zeroes = qcow2_write_zeroes,
    .block_status = qcow2_block_status,
    .get_length = qcow2_get_length,
    .get_allocated_size = qcow2_get_allocated_size,
    .has_zero_init = qcow2_has_zero_init,
    .truncate = qcow2_truncate_bitmaps,
    .create = qcow2_create,
    .create_opts = qcow2_create_opts,
    .create_file_opt = "data_file",
    .check = qcow2_check,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_apply = qcow2_snapshot_apply_bitmaps,
    .snapshot_delete = qcow2_snapshot_delete,
    .list_snapshots = qcow2_list_snapshots,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .measure = qcow2_measure,
    .get_format_info = qcow2_get_format_info,
    .get_info_extra = qcow2_get_info_extra,
    .change_backing_file = qcow2_change_backing_file,
    .make_empty = qcow2_make_empty,
    .amend = qcow2_amend,
    .amend_opts = qcow2_amend_opts,
};
