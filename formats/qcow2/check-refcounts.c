/*
 * check-refcounts.c - comparing the counted references with the stored
 * refcounts, and repairing them in place.
 *
 * stored < counted is a corruption, stored > counted a leak.  A repair in
 * place only moves a stored count that is not 0 to the counted one
 * (qcow2_set_refcount): a cluster in use but free on disk may already
 * have been handed out again, so it asks for a rebuild instead
 * (c->rebuild), and a refcount block known to be unusable is never read
 * through.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/check-int.h"

/* Stored refcount of one cluster, refusing to read through a refcount
 * block already known to be unusable.  Read through the entry's offset
 * bits whatever its reserved bits say (the driver refuses such entries;
 * count_refblocks has reported them). */
int check_stored_refcount(Check *c, uint64_t k, uint64_t *rc)
{
    Qcow2State *s = c->s;
    uint64_t rti = qcow2_reftable_index(s, k);

    *rc = 0;
    if (rti >= s->refcount_table_size || c->rb_state[rti] == RB_OUTSIDE) {
        return 0;
    }
    if (c->rb_state[rti] == RB_BAD) {
        return -EIO;
    }
    uint64_t boff = s->refcount_table[rti] & QCOW2_REFT_OFFSET_MASK;
    if (!boff) {
        return 0;
    }
    uint8_t *block;
    int ret = qcow2_cache_get(&s->refcount_cache, boff, &block);
    if (ret < 0) {
        return ret;
    }
    *rc = qcow2_refblock_get(s, block, qcow2_refblock_index(s, k));
    qcow2_cache_put(&s->refcount_cache, &block);
    return 0;
}

typedef struct Fixup {
    uint64_t cluster, stored, counted;
} Fixup;

static void fixup_report(Check *c, const Fixup *f)
{
    bool corrupt = f->stored < f->counted;

    check_say(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
              PRIu64, corrupt ? "ERROR" : "Leaked", f->cluster, f->stored,
              f->counted);
    if (corrupt) {
        c->res->corruptions++;
    } else {
        c->res->leaks++;
    }
}

/* Compares clusters of one refcount block's range [base, end). */
static int compare_block(Check *c, uint64_t rti, uint64_t base, uint64_t end,
                         int fix, Fixup *fx)
{
    Qcow2State *s = c->s;
    uint64_t boff = rti < s->refcount_table_size &&
                    c->rb_state[rti] != RB_OUTSIDE
                        ? s->refcount_table[rti] & QCOW2_REFT_OFFSET_MASK : 0;
    uint8_t *block = NULL;
    size_t nfx = 0;
    int ret;

    if (rti < s->refcount_table_size && c->rb_state[rti] == RB_BAD) {
        for (uint64_t k = base; k < end; k++) {
            check_say(c, "Can't get refcount for cluster %" PRIu64 ": %s", k,
                      strerror(EIO));
            c->res->check_errors++;
            if (check_ref_at(c, k)) {
                c->highest = k + 1;
            }
        }
        return 0;
    }
    if (boff) {
        ret = qcow2_cache_get(&s->refcount_cache, boff, &block);
        if (ret < 0) {
            for (uint64_t k = base; k < end; k++) {
                check_say(c, "Can't get refcount for cluster %" PRIu64
                          ": %s", k, strerror(-ret));
                c->res->check_errors++;
            }
            return 0;
        }
    }
    for (uint64_t k = base; k < end; k++) {
        uint64_t stored = block ? qcow2_refblock_get(s, block, k - base) : 0;
        uint64_t counted = check_ref_at(c, k);
        uint64_t after = stored;

        if (stored != counted) {
            Fixup f = { k, stored, counted };
            bool fixable = stored != 0 &&
                           ((stored > counted && (fix & BLOCK_FIX_LEAKS)) ||
                            (stored < counted && (fix & BLOCK_FIX_ERRORS)));
            if (stored == 0) {
                /* In use but free on disk: it may have been handed out
                 * again already; only a rebuild settles that. */
                c->rebuild = true;
            }
            if (fixable) {
                fx[nfx++] = f;
                after = counted;
            } else {
                fixup_report(c, &f);
            }
        }
        if (after || counted) {
            c->highest = k + 1;
        }
    }
    if (block) {
        qcow2_cache_put(&s->refcount_cache, &block);
    }

    for (size_t i = 0; i < nfx; i++) {
        ret = qcow2_set_refcount(s, fx[i].cluster, fx[i].counted);
        if (ret < 0) {
            check_say(c, "ERROR: could not fix the refcount of cluster %" PRIu64
                      ": %s", fx[i].cluster, strerror(-ret));
            c->res->check_errors++;
            fixup_report(c, &fx[i]);
            continue;
        }
        check_say(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
                  " reference=%" PRIu64, fx[i].cluster, fx[i].stored,
                  fx[i].counted);
        if (fx[i].stored > fx[i].counted) {
            c->res->leaks_fixed++;
        } else {
            c->res->corruptions_fixed++;
        }
    }
    return 0;
}

int check_compare_refcounts(Check *c, int fix)
{
    Qcow2State *s = c->s;
    uint64_t rbe = s->refblock_entries;
    Fixup *fx = malloc(rbe * sizeof(*fx));
    int ret = 0;

    if (!fx) {
        return -ENOMEM;
    }
    c->highest = 0;
    uint64_t limit = c->nb_clusters > c->ref_end ? c->nb_clusters
                                                 : c->ref_end;
    for (uint64_t base = 0; base < limit; base += rbe) {
        uint64_t rti = base / rbe;
        uint64_t end = base + rbe < limit ? base + rbe : limit;
        bool no_block = rti >= s->refcount_table_size ||
                        !(s->refcount_table[rti] & QCOW2_REFT_OFFSET_MASK);

        /* Past both the counted clusters and the refcount table there is
         * nothing left to disagree about. */
        if (no_block && !check_range_used(c, base, end)) {
            if (rti >= s->refcount_table_size && base >= c->refs_len) {
                break;
            }
            continue;
        }
        ret = compare_block(c, rti, base, end, fix, fx);
        if (ret < 0) {
            break;
        }
    }
    free(fx);
    return ret;
}
