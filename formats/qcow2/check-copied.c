/*
 * check-copied.c - the COPIED flags of the active L1 and L2 tables.
 *
 * A COPIED flag says the cluster's refcount is 1, so a writer may
 * overwrite it in place: a flag set where the refcount is not 1 would let
 * shared data be overwritten, one missing only costs a copy.  Flags follow
 * the stored refcounts, so they are compared last, once those are right,
 * and a table laid over other metadata is reported, never rewritten.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/check-int.h"

/* Rewrites active L1 entry i as e, counting the repair (or, when the
 * write fails, the corruption it leaves and the error). */
static void repair_l1_entry(Check *c, uint32_t i, uint64_t e)
{
    Qcow2State *s = c->s;
    uint64_t old = s->l1_table[i];

    s->l1_table[i] = e;
    if (qcow2_write_l1(s, i, 1) < 0) {
        s->l1_table[i] = old;
        c->res->check_errors++;
        c->res->corruptions++;
    } else {
        c->res->corruptions_fixed++;
    }
}

int check_copied(Check *c)
{
    Qcow2State *s = c->s;
    BlockCheckResult *r = c->res;
    /* Flags follow the refcounts; when only leaks may be repaired that is
     * safe only if the refcounts themselves are right by now. */
    bool fixing = (c->fix & BLOCK_FIX_ERRORS) ||
                  ((c->fix & BLOCK_FIX_LEAKS) && !r->check_errors &&
                   !r->corruptions && !r->leaks);
    int ret;
    /* a table laid over other metadata is reported, never rewritten */
    bool fix_l1 = fixing &&
                  check_may_rewrite(c, s->l1_table_offset,
                                    (uint64_t)s->l1_size * 8,
                                    s->l1_table_offset);

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t e = s->l1_table[i];
        uint64_t l2_off = e & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        bool changed = false;

        if (!l2_off && (e & QCOW2_OFLAG_COPIED)) {
            /* No L2 table (offset 0 is unallocated, qcow2.txt), so no
             * refcount of one.  qemu-img calls it a corruption too, by
             * walking cluster 0 as the table. */
            check_say(c, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
                      " l1_entry=%" PRIx64 " refcount=0",
                      fix_l1 ? "Repairing" : "ERROR", i, e);
            if (fix_l1) {
                repair_l1_entry(c, i, e & ~QCOW2_OFLAG_COPIED);
            } else {
                c->res->corruptions++;
            }
            continue;
        }
        if (!l2_off || l2_off % c->cs) {
            continue;
        }
        ret = check_stored_refcount(c, l2_off / c->cs, &rc);
        if (ret < 0) {
            c->res->check_errors++;
            continue;
        }
        if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
            check_say(c, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
                      " l1_entry=%" PRIx64 " refcount=%" PRIu64,
                      fix_l1 ? "Repairing" : "ERROR", i, e, rc);
            if (fix_l1) {
                repair_l1_entry(c, i, rc == 1 ? e | QCOW2_OFLAG_COPIED
                                              : e & ~QCOW2_OFLAG_COPIED);
            } else {
                c->res->corruptions++;
            }
        }
        if (l2_off >= c->file_len) {
            continue;
        }
        ret = check_read_file(c, l2_off, c->cs, c->l2buf);
        if (ret < 0) {
            c->res->check_errors++;
            continue;
        }
        bool fix_l2 = fixing && check_may_rewrite(c, l2_off, c->cs, l2_off);
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t e2 = qcow2_l2_get_entry(s, c->l2buf, j);
            uint64_t off = e2 & QCOW2_L2E_OFFSET_MASK;

            if ((e2 & QCOW2_OFLAG_COMPRESSED) ||
                !(off || (s->has_data_file && (e2 & QCOW2_OFLAG_COPIED)))) {
                continue;
            }
            if (s->has_data_file) {
                rc = 1;   /* external data clusters are never shared */
            } else if (check_stored_refcount(c, off / c->cs, &rc) < 0) {
                c->res->check_errors++;
                continue;
            }
            if ((rc == 1) == !!(e2 & QCOW2_OFLAG_COPIED)) {
                continue;
            }
            check_say(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                      " refcount=%" PRIu64, fix_l2 ? "Repairing" : "ERROR", e2,
                      rc);
            if (fix_l2) {
                uint64_t b = s->extended_l2 ?
                             qcow2_l2_get_bitmap(s, c->l2buf, j) : 0;
                qcow2_l2_set(s, c->l2buf, j,
                             rc == 1 ? e2 | QCOW2_OFLAG_COPIED
                                     : e2 & ~QCOW2_OFLAG_COPIED, b);
                changed = true;
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        if (changed) {
            ret = qcow2_write_l2_table(s, l2_off, c->l2buf);
            if (ret < 0) {
                check_say(c, "ERROR: could not write the L2 table at 0x%" PRIx64
                          ": %s", l2_off, strerror(-ret));
                c->res->check_errors++;
            }
        }
    }
    return 0;
}
