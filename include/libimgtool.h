/*
 * libimgtool.h - the stable C interface of imgtool's block layer.
 *
 * Link with `pkg-config --cflags --libs libimgtool`.  This header is the
 * whole public interface: everything else in the library is internal and
 * may change.  Within one soname (libimgtool.so.0) these functions keep
 * their signatures and meaning, and struct libimgtool_error keeps its
 * layout; additions get new names.
 *
 * Conventions:
 *   - Functions return 0 (or a non-negative count) on success and a
 *     negative errno on failure; those that take a libimgtool_error *
 *     (which may be NULL) also fill it with one line saying why.
 *   - The library never prints, exits or handles signals.
 *   - An open image may be used from several threads at once; opening,
 *     closing and creating are not ordered against I/O on the same
 *     image (do not close an image another thread still uses).
 *   - Images are what imgtool opens: qcow2 (with backing chains), LUKS,
 *     raw, on files, block devices and the network protocols (nbd://,
 *     iscsi://, gluster://), which are imgtool's modules, loaded on first
 *     use from $IMGTOOL_MODULE_DIR or imgtool's install directory.
 */
#ifndef LIBIMGTOOL_H
#define LIBIMGTOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LIBIMGTOOL_API_VERSION 1

typedef struct libimgtool_error {
    int code;               /* positive errno, 0 when unset */
    char message[1024];     /* one line, no trailing newline */
} libimgtool_error;

typedef struct libimgtool_image libimgtool_image;

/* libimgtool_open flags */
#define LIBIMGTOOL_OPEN_RDWR        (1u << 0)  /* else read-only */
#define LIBIMGTOOL_OPEN_SHARE       (1u << 1)  /* read-only, no lock that
                                                  conflicts with a writer
                                                  (an image in use) */
#define LIBIMGTOOL_OPEN_NO_BACKING  (1u << 2)  /* this layer alone */

/* libimgtool_pwrite flags */
#define LIBIMGTOOL_WRITE_FUA        (1u << 0)  /* durable on return */

/* libimgtool_block_status result bits */
#define LIBIMGTOOL_STATUS_DATA      (1u << 0)  /* reads come from data */
#define LIBIMGTOOL_STATUS_ZERO      (1u << 1)  /* reads return zeroes */
#define LIBIMGTOOL_STATUS_ALLOCATED (1u << 3)  /* some layer of the chain
                                                  defines the content */

/* The library's version, e.g. "0.1.0". */
const char *libimgtool_version(void);

/* Opens filename (a path or URL).  format: "qcow2", "raw", "luks"... or
 * NULL to probe the content.  *out is set on success. */
int libimgtool_open(const char *filename, const char *format,
                    unsigned flags, libimgtool_image **out,
                    libimgtool_error *err);

/* The image's format ("qcow2") and virtual size in bytes (or -errno). */
const char *libimgtool_format(const libimgtool_image *img);
int64_t libimgtool_size(libimgtool_image *img);

/* len bytes at off; the range must lie within the image's size. */
int libimgtool_pread(libimgtool_image *img, void *buf, size_t len,
                     uint64_t off);
int libimgtool_pwrite(libimgtool_image *img, const void *buf, size_t len,
                      uint64_t off, unsigned flags);
int libimgtool_flush(libimgtool_image *img);

/* What reads of [off, off+len) return, through the backing chain:
 * LIBIMGTOOL_STATUS_* bits, true for the first *pnum bytes (>= 1 when
 * len > 0); the next call starts at off + *pnum. */
int libimgtool_block_status(libimgtool_image *img, uint64_t off,
                            uint64_t len, uint64_t *pnum, unsigned *status);

/* Creates an image of size bytes.  options: the format's creation
 * options as imgtool create -o takes them ("cluster_size=64k,
 * backing_file=base.qcow2"), or NULL. */
int libimgtool_create(const char *filename, const char *format,
                      uint64_t size, const char *options,
                      libimgtool_error *err);

/* Closes the image, writing back what its format keeps in memory; call
 * libimgtool_flush first to learn whether everything reached the disk.
 * NULL is a no-op. */
void libimgtool_close(libimgtool_image *img);

#ifdef __cplusplus
}
#endif

#endif
