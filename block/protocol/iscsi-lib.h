/*
 * iscsi-lib.h - libiscsi, loaded when the first iSCSI session opens.
 *
 * Linked at start-up, libiscsi (with the RDMA and netlink libraries it
 * pulls in) costs every imgtool command 1-2 MiB of resident memory and
 * the time to relocate it, though most never speak iSCSI; QEMU loads its
 * iscsi driver as a module for the same reason.  So the iscsi files call
 * libiscsi through a table filled by dlopen/dlsym: the names below are
 * redirected to it, the calls read as plain libiscsi calls, and the
 * compiler checks them against libiscsi's own prototypes (the table's
 * types are __typeof__ the declarations).
 */
#ifndef IMGTOOL_BLOCK_PROTOCOL_ISCSI_LIB_H
#define IMGTOOL_BLOCK_PROTOCOL_ISCSI_LIB_H

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "block/block.h"

#define ISCSI_LIB_FUNCTIONS(X)                                               \
    X(iscsi_create_context) X(iscsi_destroy_context)                         \
    X(iscsi_full_connect_async) X(iscsi_get_error) X(iscsi_get_fd)          \
    X(iscsi_which_events) X(iscsi_service) X(iscsi_is_logged_in)            \
    X(iscsi_set_timeout) X(iscsi_logout_sync) X(iscsi_scsi_cancel_task)     \
    X(iscsi_set_header_digest) X(iscsi_set_initiator_username_pwd)          \
    X(iscsi_set_no_ua_on_reconnect) X(iscsi_set_session_type)               \
    X(iscsi_set_targetname)                                                  \
    X(iscsi_read16_iov_task) X(iscsi_write16_iov_task)                      \
    X(iscsi_synchronizecache16_task) X(iscsi_unmap_task)                    \
    X(iscsi_writesame16_task) X(iscsi_get_lba_status_task)                  \
    X(iscsi_inquiry_task) X(iscsi_readcapacity16_task)                      \
    X(iscsi_readcapacity10_task) X(iscsi_modesense6_task)                   \
    X(iscsi_reportluns_task) X(iscsi_testunitready_task)                    \
    X(scsi_datain_unmarshall) X(scsi_devtype_to_str)                        \
    X(scsi_free_scsi_task) X(scsi_sense_key_str)

typedef struct IscsiLib {
#define X(f) __typeof__(f) *f;
    ISCSI_LIB_FUNCTIONS(X)
#undef X
} IscsiLib;

extern IscsiLib iscsi_lib;

/* Loads libiscsi once (thread-safe); one line naming the package when it
 * is not installed. */
int iscsi_lib_load(Error *err);

#ifndef ISCSI_LIB_IMPL
#define iscsi_create_context(...) \
    (*iscsi_lib.iscsi_create_context)(__VA_ARGS__)
#define iscsi_destroy_context(...) \
    (*iscsi_lib.iscsi_destroy_context)(__VA_ARGS__)
#define iscsi_full_connect_async(...) \
    (*iscsi_lib.iscsi_full_connect_async)(__VA_ARGS__)
#define iscsi_get_error(...) (*iscsi_lib.iscsi_get_error)(__VA_ARGS__)
#define iscsi_get_fd(...) (*iscsi_lib.iscsi_get_fd)(__VA_ARGS__)
#define iscsi_which_events(...) (*iscsi_lib.iscsi_which_events)(__VA_ARGS__)
#define iscsi_service(...) (*iscsi_lib.iscsi_service)(__VA_ARGS__)
#define iscsi_is_logged_in(...) (*iscsi_lib.iscsi_is_logged_in)(__VA_ARGS__)
#define iscsi_set_timeout(...) (*iscsi_lib.iscsi_set_timeout)(__VA_ARGS__)
#define iscsi_logout_sync(...) (*iscsi_lib.iscsi_logout_sync)(__VA_ARGS__)
#define iscsi_scsi_cancel_task(...) \
    (*iscsi_lib.iscsi_scsi_cancel_task)(__VA_ARGS__)
#define iscsi_set_header_digest(...) \
    (*iscsi_lib.iscsi_set_header_digest)(__VA_ARGS__)
#define iscsi_set_initiator_username_pwd(...) \
    (*iscsi_lib.iscsi_set_initiator_username_pwd)(__VA_ARGS__)
#define iscsi_set_no_ua_on_reconnect(...) \
    (*iscsi_lib.iscsi_set_no_ua_on_reconnect)(__VA_ARGS__)
#define iscsi_set_session_type(...) \
    (*iscsi_lib.iscsi_set_session_type)(__VA_ARGS__)
#define iscsi_set_targetname(...) \
    (*iscsi_lib.iscsi_set_targetname)(__VA_ARGS__)
#define iscsi_read16_iov_task(...) \
    (*iscsi_lib.iscsi_read16_iov_task)(__VA_ARGS__)
#define iscsi_write16_iov_task(...) \
    (*iscsi_lib.iscsi_write16_iov_task)(__VA_ARGS__)
#define iscsi_synchronizecache16_task(...) \
    (*iscsi_lib.iscsi_synchronizecache16_task)(__VA_ARGS__)
#define iscsi_unmap_task(...) (*iscsi_lib.iscsi_unmap_task)(__VA_ARGS__)
#define iscsi_writesame16_task(...) \
    (*iscsi_lib.iscsi_writesame16_task)(__VA_ARGS__)
#define iscsi_get_lba_status_task(...) \
    (*iscsi_lib.iscsi_get_lba_status_task)(__VA_ARGS__)
#define iscsi_inquiry_task(...) (*iscsi_lib.iscsi_inquiry_task)(__VA_ARGS__)
#define iscsi_readcapacity16_task(...) \
    (*iscsi_lib.iscsi_readcapacity16_task)(__VA_ARGS__)
#define iscsi_readcapacity10_task(...) \
    (*iscsi_lib.iscsi_readcapacity10_task)(__VA_ARGS__)
#define iscsi_modesense6_task(...) \
    (*iscsi_lib.iscsi_modesense6_task)(__VA_ARGS__)
#define iscsi_reportluns_task(...) \
    (*iscsi_lib.iscsi_reportluns_task)(__VA_ARGS__)
#define iscsi_testunitready_task(...) \
    (*iscsi_lib.iscsi_testunitready_task)(__VA_ARGS__)
#define scsi_datain_unmarshall(...) \
    (*iscsi_lib.scsi_datain_unmarshall)(__VA_ARGS__)
#define scsi_devtype_to_str(...) (*iscsi_lib.scsi_devtype_to_str)(__VA_ARGS__)
#define scsi_free_scsi_task(...) (*iscsi_lib.scsi_free_scsi_task)(__VA_ARGS__)
#define scsi_sense_key_str(...) (*iscsi_lib.scsi_sense_key_str)(__VA_ARGS__)
#endif

#endif
