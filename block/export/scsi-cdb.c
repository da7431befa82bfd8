/*
 * scsi-cdb.c - decoding CDBs into ScsiCmd (SPC-4, SBC-3), and sense data.
 *
 * Invariants: a command is accepted only when its operation code is one
 * we execute and the bytes it has fit in what the transport gave; fields
 * we do not implement (protection information, ACA, linked commands,
 * obsolete CMDDT) are refused with INVALID FIELD IN CDB pointing at
 * them, rather than silently ignored.
 */
#include <errno.h>
#include <string.h>

#include "block/export/scsi.h"

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
        (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static int invalid_field(ScsiError *e, int byte, int bit)
{
    *e = (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB,
                      byte, bit, true };
    return -EINVAL;
}

static int invalid_opcode(ScsiError *e)
{
    *e = (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_INVALID_OPCODE, 0, -1,
                      true };
    return -EINVAL;
}

/* The CDB length of an operation code's group. */
static unsigned group_len(uint8_t op)
{
    switch (op >> 5) {
    case 0: return 6;
    case 1: case 2: return 10;
    case 4: return 16;
    case 5: return 12;
    default: return 0;     /* variable length, reserved, vendor */
    }
}

/* READ/WRITE/WRITE SAME byte 1: protection fields we do not have. */
static int check_protect(const uint8_t *cdb, ScsiError *e)
{
    return (cdb[1] & 0xe0) ? invalid_field(e, 1, 7) : 0;
}

int scsi_cdb_parse(const uint8_t *cdb, unsigned len, ScsiCmd *c,
                   ScsiError *e)
{
    memset(c, 0, sizeof(*c));
    if (len == 0) {
        return invalid_opcode(e);
    }
    c->op = cdb[0];
    c->cdb_len = group_len(c->op);
    if (c->cdb_len == 0 || c->cdb_len > len) {
        return invalid_opcode(e);
    }
    uint8_t control = cdb[c->cdb_len - 1];
    bool rw = false, write = false;
    switch (c->op) {
    case SCSI_TEST_UNIT_READY:
        c->kind = SCSI_CMD_TEST_UNIT_READY;
        break;
    case SCSI_REQUEST_SENSE:
        c->kind = SCSI_CMD_REQUEST_SENSE;
        c->desc = cdb[1] & 1;
        c->alloc_len = cdb[4];
        if (c->desc) {
            return invalid_field(e, 1, 0);   /* fixed format only */
        }
        break;
    case SCSI_READ_6:
    case SCSI_WRITE_6:
        c->lba = (uint64_t)(cdb[1] & 0x1f) << 16 | be16(cdb + 2);
        c->blocks = cdb[4] ? cdb[4] : 256;
        rw = true;
        write = c->op == SCSI_WRITE_6;
        break;
    case SCSI_INQUIRY:
        c->kind = SCSI_CMD_INQUIRY;
        if (cdb[1] & 0x02) {
            return invalid_field(e, 1, 1);   /* CMDDT, obsolete */
        }
        c->evpd = cdb[1] & 1;
        c->page = cdb[2];
        c->alloc_len = be16(cdb + 3);
        if (!c->evpd && c->page) {
            return invalid_field(e, 2, -1);
        }
        break;
    case SCSI_MODE_SENSE_6:
    case SCSI_MODE_SENSE_10:
        c->kind = SCSI_CMD_MODE_SENSE;
        c->ten = c->op == SCSI_MODE_SENSE_10;
        c->dbd = cdb[1] & 0x08;
        c->llbaa = c->ten && (cdb[1] & 0x10);
        c->pc = cdb[2] >> 6;
        c->page = cdb[2] & 0x3f;
        c->subpage = cdb[3];
        c->alloc_len = c->ten ? be16(cdb + 7) : cdb[4];
        break;
    case SCSI_START_STOP_UNIT:
        c->kind = SCSI_CMD_START_STOP;
        break;
    case SCSI_READ_CAPACITY_10:
        c->kind = SCSI_CMD_READ_CAPACITY_10;
        c->lba = be32(cdb + 2);
        if (!(cdb[8] & 1) && c->lba) {
            return invalid_field(e, 2, -1);
        }
        break;
    case SCSI_READ_10:
    case SCSI_WRITE_10:
        c->lba = be32(cdb + 2);
        c->blocks = be16(cdb + 7);
        c->fua = cdb[1] & 0x08;
        rw = true;
        write = c->op == SCSI_WRITE_10;
        break;
    case SCSI_READ_12:
    case SCSI_WRITE_12:
        c->lba = be32(cdb + 2);
        c->blocks = be32(cdb + 6);
        c->fua = cdb[1] & 0x08;
        rw = true;
        write = c->op == SCSI_WRITE_12;
        break;
    case SCSI_READ_16:
    case SCSI_WRITE_16:
        c->lba = be64(cdb + 2);
        c->blocks = be32(cdb + 10);
        c->fua = cdb[1] & 0x08;
        rw = true;
        write = c->op == SCSI_WRITE_16;
        break;
    case SCSI_SYNC_CACHE_10:
        c->kind = SCSI_CMD_SYNC_CACHE;
        c->lba = be32(cdb + 2);
        c->blocks = be16(cdb + 7);
        break;
    case SCSI_SYNC_CACHE_16:
        c->kind = SCSI_CMD_SYNC_CACHE;
        c->lba = be64(cdb + 2);
        c->blocks = be32(cdb + 10);
        break;
    case SCSI_WRITE_SAME_10:
    case SCSI_WRITE_SAME_16:
        c->kind = SCSI_CMD_WRITE_SAME;
        if (check_protect(cdb, e) < 0) {
            return -EINVAL;
        }
        c->anchor = cdb[1] & 0x10;
        c->unmap = cdb[1] & 0x08;
        if (c->op == SCSI_WRITE_SAME_10) {
            c->lba = be32(cdb + 2);
            c->blocks = be16(cdb + 7);
        } else {
            c->ndob = cdb[1] & 0x01;
            c->lba = be64(cdb + 2);
            c->blocks = be32(cdb + 10);
        }
        if (c->anchor) {
            return invalid_field(e, 1, 4);   /* no anchored state */
        }
        break;
    case SCSI_UNMAP:
        c->kind = SCSI_CMD_UNMAP;
        c->anchor = cdb[1] & 0x01;
        c->alloc_len = be16(cdb + 7);
        if (c->anchor) {
            return invalid_field(e, 1, 0);
        }
        break;
    case SCSI_SERVICE_ACTION_IN_16:
        switch (cdb[1] & 0x1f) {
        case SCSI_SAI_READ_CAPACITY_16:
            c->kind = SCSI_CMD_READ_CAPACITY_16;
            break;
        case SCSI_SAI_GET_LBA_STATUS:
            c->kind = SCSI_CMD_GET_LBA_STATUS;
            break;
        default:
            return invalid_field(e, 1, 4);
        }
        c->lba = be64(cdb + 2);
        c->alloc_len = be32(cdb + 10);
        break;
    case SCSI_REPORT_LUNS:
        c->kind = SCSI_CMD_REPORT_LUNS;
        c->select = cdb[2];
        c->alloc_len = be32(cdb + 6);
        if (c->select > 2) {
            return invalid_field(e, 2, -1);
        }
        if (c->alloc_len < 16) {
            return invalid_field(e, 6, -1);
        }
        break;
    default:
        return invalid_opcode(e);
    }
    if (rw) {
        c->kind = write ? SCSI_CMD_WRITE : SCSI_CMD_READ;
        if (check_protect(cdb, e) < 0) {
            return -EINVAL;
        }
    }
    if (control & 0x05) {          /* NACA or LINK */
        return invalid_field(e, (int)c->cdb_len - 1,
                             (control & 0x04) ? 2 : 0);
    }
    return 0;
}

void scsi_sense_fixed(uint8_t *buf, const ScsiError *e)
{
    memset(buf, 0, SCSI_SENSE_BYTES);
    buf[0] = 0x70;                       /* current error, fixed format */
    buf[2] = e->key & 0x0f;
    buf[7] = SCSI_SENSE_BYTES - 8;       /* additional sense length */
    buf[12] = (uint8_t)(e->asc >> 8);
    buf[13] = (uint8_t)e->asc;
    if (e->field >= 0) {
        /* Sense-key specific: SKSV, C/D, BPV and the bit, the field. */
        buf[15] = 0x80 | (e->cdb ? 0x40 : 0) |
            (e->bit >= 0 ? 0x08 | (e->bit & 7) : 0);
        buf[16] = (uint8_t)(e->field >> 8);
        buf[17] = (uint8_t)e->field;
    }
}

ScsiError scsi_error_from_errno(int ret, bool write)
{
    switch (ret) {
    case -ENOSPC:
    case -EDQUOT:
        return (ScsiError){ SENSE_DATA_PROTECT, ASC_SPACE_ALLOC_FAILED_WP,
                            -1, -1, false };
    case -EROFS:
    case -EPERM:
    case -EACCES:
        return (ScsiError){ SENSE_DATA_PROTECT, ASC_WRITE_PROTECTED, -1,
                            -1, false };
    case -EIO:
    case -ENXIO:
        return (ScsiError){ SENSE_MEDIUM_ERROR, write ? ASC_WRITE_ERROR :
                            ASC_UNRECOVERED_READ_ERROR, -1, -1, false };
    default:
        return (ScsiError){ SENSE_HARDWARE_ERROR,
                            ASC_INTERNAL_TARGET_FAILURE, -1, -1, false };
    }
}
