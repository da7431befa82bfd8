/*
 * scsi-info.c - the SCSI commands that only describe: INQUIRY and its VPD
 * pages, MODE SENSE, READ CAPACITY, REPORT LUNS and GET LBA STATUS (see
 * scsi.h).  Each builds its whole response in a buffer of SCSI_INFO_MAX
 * bytes; the caller cuts it to the allocation length and the buffers the
 * initiator gave.  Every response here is far shorter than SCSI_INFO_MAX
 * (REPORT LUNS, the longest, is 8 + 8 * SCSI_MAX_LUNS = 2056 bytes).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "block/export/scsi.h"

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static int invalid_field(ScsiError *e, int byte, int bit)
{
    *e = (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB,
                      byte, bit, true };
    return -EINVAL;
}

/* Space-padded ASCII, as INQUIRY's identification fields are. */
static void put_ascii(uint8_t *p, const char *s, size_t n)
{
    memset(p, ' ', n);
    size_t l = strlen(s);
    memcpy(p, s, l < n ? l : n);
}

#define VENDOR "IMGTOOL"
#define PRODUCT "imgtool disk"
#define REVISION "0001"

static int standard_inquiry(ScsiLun *l, uint8_t *buf)
{
    memset(buf, 0, 96);
    buf[0] = l ? 0x00 : 0x7f;   /* direct access, or no device here */
    buf[2] = 0x06;              /* SPC-4 */
    buf[3] = 0x12;              /* HISUP, response data format 2 */
    buf[4] = 96 - 5;
    buf[7] = 0x02;              /* CMDQUE */
    put_ascii(buf + 8, VENDOR, 8);
    put_ascii(buf + 16, PRODUCT, 16);
    put_ascii(buf + 32, REVISION, 4);
    /* Version descriptors: SAM-5, SPC-4, SBC-3. */
    put16(buf + 58, 0x00a0);
    put16(buf + 60, 0x0460);
    put16(buf + 62, 0x04c0);
    return 96;
}

/* A stable 60-bit value from the serial, for the NAA identifier. */
static uint64_t serial_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;     /* FNV-1a */
    for (; *s; s++) {
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    }
    return h & 0x0fffffffffffffffull;
}

static int vpd_page(ScsiLun *l, uint8_t page, uint8_t *buf, ScsiError *e)
{
    static const uint8_t pages[] = { 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2 };
    uint64_t gran = l->granularity ? l->granularity : 1;
    uint32_t max_unmap = (uint32_t)(SCSI_MAX_UNMAP_BYTES / l->block_size);
    int n;
    buf[0] = 0x00;
    buf[1] = page;
    switch (page) {
    case 0x00:
        memcpy(buf + 4, pages, sizeof(pages));
        n = 4 + (int)sizeof(pages);
        break;
    case 0x80: {
        size_t s = strlen(l->serial);
        memcpy(buf + 4, l->serial, s);
        n = 4 + (int)s;
        break;
    }
    case 0x83: {
        uint8_t *d = buf + 4;
        /* NAA 3 (locally assigned), binary. */
        d[0] = 0x01;
        d[1] = 0x03;
        d[3] = 8;
        put64(d + 4, 0x3000000000000000ull | serial_hash(l->serial));
        d += 12;
        /* T10 vendor ID based, ASCII. */
        size_t s = strlen(l->serial);
        d[0] = 0x02;
        d[1] = 0x01;
        d[3] = (uint8_t)(8 + s);
        put_ascii(d + 4, VENDOR, 8);
        memcpy(d + 12, l->serial, s);
        d += 12 + s;
        n = (int)(d - buf);
        break;
    }
    case 0xb0:                  /* block limits */
        memset(buf + 4, 0, 0x3c);
        buf[4] = 0x01;          /* WSNZ: WRITE SAME needs a length */
        put16(buf + 6, (uint16_t)(gran > 0xffff ? 0xffff : gran));
        put32(buf + 8, SCSI_MAX_XFER_BYTES / l->block_size);
        if (l->can_discard) {
            put32(buf + 20, max_unmap);
            put32(buf + 24, SCSI_MAX_UNMAP_DESC);
            put32(buf + 28, (uint32_t)gran);
        }
        put64(buf + 36, max_unmap);
        n = 4 + 0x3c;
        break;
    case 0xb1:                  /* block device characteristics */
        memset(buf + 4, 0, 0x3c);
        put16(buf + 4, 1);      /* non-rotating medium */
        n = 4 + 0x3c;
        break;
    case 0xb2:                  /* logical block provisioning */
        memset(buf + 4, 0, 4);
        if (l->can_discard) {
            buf[5] = 0xe0;      /* LBPU, LBPWS, LBPWS10 */
            buf[6] = 0x02;      /* thin provisioned */
        }
        n = 8;
        break;
    default:
        return invalid_field(e, 2, -1);
    }
    put16(buf + 2, (uint16_t)(n - 4));
    return n;
}

int scsi_info_inquiry(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                      ScsiError *e)
{
    if (!c->evpd) {
        return standard_inquiry(l, buf);
    }
    if (!l) {
        /* No device: pages describe nothing. */
        return invalid_field(e, 1, 0);
    }
    return vpd_page(l, c->page, buf, e);
}

static int mode_page(ScsiLun *l, uint8_t page, uint8_t pc, uint8_t *p)
{
    bool changeable = pc == 1;
    switch (page) {
    case 0x08:                  /* caching */
        memset(p, 0, 20);
        p[0] = 0x08;
        p[1] = 18;
        if (!changeable && !l->writethrough) {
            p[2] = 0x04;        /* WCE: writes are cached until flushed */
        }
        return 20;
    case 0x0a:                  /* control */
        memset(p, 0, 12);
        p[0] = 0x0a;
        p[1] = 10;
        if (!changeable) {
            p[3] = 0x10;        /* unrestricted reordering */
        }
        return 12;
    default:
        return -1;
    }
}

int scsi_info_mode_sense(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                         ScsiError *e)
{
    static const uint8_t all[] = { 0x08, 0x0a };
    if (c->pc == 3) {
        *e = (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_SAVING_PARAMS_UNSUP,
                          2, 7, true };
        return -EINVAL;
    }
    bool all_pages = c->page == 0x3f;
    if ((!all_pages && c->subpage != 0) ||
        (all_pages && c->subpage != 0 && c->subpage != 0xff)) {
        return invalid_field(e, 3, -1);
    }
    unsigned hdr = c->ten ? 8 : 4;
    uint8_t *p = buf + hdr;
    unsigned bd = 0;
    if (!c->dbd) {
        uint64_t blocks = atomic_load(&l->blocks);
        bd = c->llbaa ? 16 : 8;
        memset(p, 0, bd);
        if (c->llbaa) {
            put64(p, blocks);
            put32(p + 12, l->block_size);
        } else {
            put32(p, blocks > 0xffffffffull ? 0xffffffff : (uint32_t)blocks);
            put32(p + 4, l->block_size & 0xffffff);
        }
        p += bd;
    }
    if (all_pages) {
        for (size_t i = 0; i < sizeof(all); i++) {
            p += mode_page(l, all[i], c->pc, p);
        }
    } else {
        int n = mode_page(l, c->page, c->pc, p);
        if (n < 0) {
            return invalid_field(e, 2, 5);
        }
        p += n;
    }
    int len = (int)(p - buf);
    uint8_t dsp = (l->read_only ? 0x80 : 0) | 0x10;   /* WP, DPOFUA */
    if (c->ten) {
        put16(buf, (uint16_t)(len - 2));
        buf[2] = 0;
        buf[3] = dsp;
        buf[4] = c->llbaa ? 1 : 0;
        buf[5] = 0;
        put16(buf + 6, (uint16_t)bd);
    } else {
        buf[0] = (uint8_t)(len - 1);
        buf[1] = 0;
        buf[2] = dsp;
        buf[3] = (uint8_t)bd;
    }
    return len;
}

int scsi_info_read_capacity(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                            ScsiError *e)
{
    uint64_t blocks = atomic_load(&l->blocks);
    uint64_t last = blocks ? blocks - 1 : 0;
    if (c->kind == SCSI_CMD_READ_CAPACITY_10) {
        put32(buf, last > 0xfffffffeull ? 0xffffffff : (uint32_t)last);
        put32(buf + 4, l->block_size);
        return 8;
    }
    memset(buf, 0, 32);
    put64(buf, last);
    put32(buf + 8, l->block_size);
    if (l->can_discard) {
        buf[14] = 0x80;         /* LBPME; LBPRZ stays 0: an unmapped block
                                   may read from a backing file */
    }
    return 32;
}

static void put_lun(uint8_t *p, unsigned lun)
{
    memset(p, 0, 8);
    if (lun < 256) {
        p[1] = (uint8_t)lun;                 /* peripheral addressing */
    } else {
        p[0] = (uint8_t)(0x40 | (lun >> 8)); /* flat space addressing */
        p[1] = (uint8_t)lun;
    }
}

int scsi_info_report_luns(ScsiTarget *t, const ScsiCmd *c, uint8_t *buf,
                          ScsiError *e)
{
    unsigned n = 0;
    memset(buf, 0, 8);
    if (c->select != 1) {       /* 1: well-known LUNs only, we have none */
        pthread_rwlock_rdlock(&t->lock);
        for (unsigned i = 0; i < SCSI_MAX_LUNS; i++) {
            if (t->luns[i]) {
                put_lun(buf + 8 + 8 * n, i);
                n++;
            }
        }
        pthread_rwlock_unlock(&t->lock);
    }
    put32(buf, 8 * n);
    return (int)(8 + 8 * n);
}

int scsi_info_lba_status(ScsiLun *l, const ScsiCmd *c, uint8_t *buf,
                         ScsiError *e)
{
    uint64_t blocks = atomic_load(&l->blocks);
    if (c->lba >= blocks) {
        *e = (ScsiError){ SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, -1,
                          -1, false };
        return -EINVAL;
    }
    uint64_t bs = l->block_size;
    unsigned max = c->alloc_len < 24 ? 1 : (c->alloc_len - 8) / 16;
    if (max > SCSI_MAX_LBA_STATUS_DESC) {
        max = SCSI_MAX_LBA_STATUS_DESC;
    }
    unsigned n = 0;
    uint64_t lba = c->lba;
    memset(buf, 0, 8);
    /* Each round asks the node once; bound the rounds as well as the
     * descriptors so that a fragmented image cannot keep us here. */
    for (unsigned rounds = 0; n < max && lba < blocks && rounds < 4096;
         rounds++) {
        uint64_t left = (blocks - lba) * bs;
        uint64_t pnum = 0;
        int st = block_status_above(l->node, NULL, lba * bs, left, &pnum,
                                    NULL, NULL, NULL);
        if (st < 0) {
            *e = scsi_error_from_errno(st, false);
            return -EINVAL;
        }
        /* Whole blocks; a status that ends inside a block counts as
         * mapped for that block (never claim less than is there). */
        uint64_t nb = pnum / bs;
        uint8_t prov = (st & BLOCK_STATUS_DATA) ? 0 : 1;
        if (nb == 0) {
            nb = 1;
            prov = 0;
        }
        if (nb > 0xffffffffull) {
            nb = 0xffffffffull;
        }
        /* Merge with the previous descriptor when it says the same. */
        uint8_t *prev = n > 0 ? buf + 8 + 16 * (n - 1) : NULL;
        if (prev && (prev[12] & 0x0f) == prov) {
            uint32_t have = (uint32_t)prev[8] << 24 | prev[9] << 16 |
                prev[10] << 8 | prev[11];
            if ((uint64_t)have + nb <= 0xffffffffull) {
                put32(prev + 8, (uint32_t)(have + nb));
                lba += nb;
                continue;
            }
        }
        uint8_t *d = buf + 8 + 16 * n;
        memset(d, 0, 16);
        put64(d, lba);
        put32(d + 8, (uint32_t)nb);
        d[12] = prov;           /* 0 mapped, 1 deallocated */
        n++;
        lba += nb;
    }
    put32(buf, 4 + 16 * n);     /* parameter data length */
    return (int)(8 + 16 * n);
}
