/*
 * image.c - what back ends ask the block layer about a volume's image:
 * reading its format, capacity and backing file, and creating an empty
 * image of a volume's format (the only format work a pool does, and
 * only through block_create()).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "pools/backend.h"
#include "pools/util.h"

static void qcow2_details(BlockNode *n, VolInfo *v)
{
    BlockInfoExtra x;
    block_get_info_extra(n, &x);
    v->cluster_size = x.cluster_size;
    json_t *fi = block_get_format_info(n);
    json_t *d = json_object_get(fi, "data");
    const char *compat = json_string_value(json_object_get(d, "compat"));
    v->compat = compat ? strdup(compat) : NULL;
    v->lazy_refcounts = json_is_true(json_object_get(d, "lazy-refcounts"));
    v->extended_l2 = json_is_true(json_object_get(d, "extended-l2"));
    json_decref(fi);
}

int pool_read_image_info(const char *filename, const char *fmt,
                         VolInfo *v, Error *err)
{
    Error oerr = { 0 };
    BlockNode *n = block_open(filename, fmt, NULL, BLOCK_O_NO_BACKING |
                              BLOCK_O_SHARE | BLOCK_O_NO_LOCK, &oerr);
    free(v->format);
    v->format = NULL;
    if (!n) {
        /* Unreadable as what it is or claims to be (a damaged header, an
         * image QEMU is writing): listed by that format with the file's
         * size, as libvirt lists such files. */
        const BlockDriver *d = fmt ? NULL : block_probe(filename, &oerr);
        v->format = strdup(fmt ? fmt : d ? block_driver_name(d) : "raw");
        return v->format ? 1 : error_setf(err, ENOMEM, "out of memory");
    }
    v->format = strdup(block_node_format(n));
    int64_t len = block_get_length(n);
    v->capacity = len > 0 ? (uint64_t)len : 0;
    const char *bk = block_node_full_backing_filename(n);
    const char *bkf = block_node_backing_format(n);
    if (bk) {
        v->backing_path = strdup(bk);
        v->backing_format = bkf ? strdup(bkf) : NULL;
    }
    if (strcmp(block_node_format(n), "qcow2") == 0) {
        qcow2_details(n, v);
    }
    block_close(n);
    return v->format ? 0 : error_setf(err, ENOMEM, "out of memory");
}

static void set_u64(KVList *o, const char *key, uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    kvlist_set(o, key, buf);
}

int pool_create_image(Pool *p, const char *filename, const VolCreateArgs *a,
                      const char *backing_path, const char *backing_fmt,
                      bool fill_storage, Error *err)
{
    (void)p;
    const char *fmt = a->format ? a->format : "raw";
    bool full = fill_storage && a->has_allocation &&
                a->allocation >= a->capacity;
    KVList o = { 0 };
    if (backing_path && strcmp(fmt, "qcow2") != 0) {
        return error_setf(err, ENOTSUP, "a %s volume cannot have a backing "
                          "volume (qcow2 can)", fmt);
    }
    if (strcmp(fmt, "qcow2") == 0) {
        if (backing_path) {
            kvlist_set(&o, "backing_file", backing_path);
            kvlist_set(&o, "backing_fmt", backing_fmt);
        }
        if (a->compat) {
            kvlist_set(&o, "compat", a->compat);
        }
        if (a->cluster_size) {
            set_u64(&o, "cluster_size", a->cluster_size);
        }
        if (a->lazy_refcounts) {
            kvlist_set(&o, "lazy_refcounts", "on");
        }
        if (a->prealloc_metadata) {
            kvlist_set(&o, "preallocation", "metadata");
        } else if (full) {
            kvlist_set(&o, "preallocation", "falloc");
        }
    } else if (strcmp(fmt, "luks") == 0) {
        if (!a->secret) {
            return error_setf(err, EINVAL, "a luks volume needs a secret: "
                              "--key-secret ID with --object "
                              "secret,id=ID,file=...");
        }
        kvlist_set(&o, "key-secret", a->secret);
        if (a->iter_time) {
            set_u64(&o, "iter-time", a->iter_time);
        }
        if (full) {
            kvlist_set(&o, "preallocation", "falloc");
        }
    } else if (full) {
        kvlist_set(&o, "preallocation", "falloc");
    }
    int ret = block_create(fmt, filename, a->capacity, true, &o,
                           BLOCK_CREATE_QUIET, err);
    kvlist_free(&o);
    if (ret < 0 || !fill_storage || full || !a->has_allocation ||
        !a->allocation || strcmp(fmt, "raw") != 0) {
        return ret;
    }
    /* A raw file allocated in part, as libvirt makes it: the first
     * `allocation` bytes get blocks, the rest stays a hole. */
    BlockNode *n = block_open_protocol(filename, NULL, BLOCK_O_RDWR, err);
    if (!n) {
        return -(err->code ? err->code : EIO);
    }
    uint64_t alloc = a->allocation < a->capacity ? a->allocation
                                                 : a->capacity;
    ret = block_write_zeroes(n, 0, alloc, 0);
    block_close(n);
    if (ret < 0) {
        return error_setf(err, -ret, "cannot allocate '%s': %s", filename,
                          strerror(-ret));
    }
    return 0;
}
