/*
 * blkdebug.c - QEMU's fault-injection spelling: rules that fire on the
 * named events format drivers raise (block_debug_event), so QEMU's
 * fault scenarios run unchanged.
 *
 *   blkdebug:RULES.conf:IMAGE
 *   --image-opts driver=blkdebug,config=RULES.conf,image.filename=IMAGE
 *   --image-opts driver=qcow2,file.driver=blkdebug,file.image.filename=IMAGE,
 *                file.inject-error.0.event=l2_load,file.inject-error.0.once=on
 *
 * The config file holds [inject-error] and [set-state] sections of
 * `key = "value"` lines, as QEMU reads them; the same rules can be given
 * as inject-error.N.KEY / set-state.N.KEY options.  inject-error: event,
 * errno (a number, EIO=5 by default, or a name), sector (the error hits
 * only requests covering that sector; default every request), once
 * (the rule goes away after one error), immediately (accepted; errors
 * are always returned at once here), state (the rule fires only in that
 * state), iotype (read, write, write-zeroes, discard, flush; default
 * all).  set-state: event, state, new_state.
 *
 * Semantics (QEMU's): the state starts at 1.  An event runs its rules
 * whose state matches; the first inject-error rule it fires replaces the
 * set of active errors, every further one joins it; set-state moves the
 * state once all rules of the event ran.  Every later request on this
 * node that an active rule covers fails with its errno, until a `once`
 * rule fails one and is gone.
 *
 * Invariants: rules and the active set change only under s->lock; an
 * event raised while requests run concurrently sees either the old or
 * the new set.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/driver.h"

enum {
    IO_READ = 1 << 0,
    IO_WRITE = 1 << 1,
    IO_WRITE_ZEROES = 1 << 2,
    IO_DISCARD = 1 << 3,
    IO_FLUSH = 1 << 4,
    IO_ALL = (1 << 5) - 1,
};

typedef struct Rule {
    bool set_state;          /* else inject-error */
    int event;
    uint64_t state;          /* 0: any */
    uint64_t new_state;
    int err;
    int64_t offset;          /* -1: every request */
    bool once;
    int iotypes;
    bool active;
    bool gone;               /* a `once` rule that fired */
} Rule;

typedef struct BlkdebugState {
    BlockNode *child;
    pthread_mutex_t lock;
    Rule *rules;
    size_t n;
    uint64_t state;
} BlkdebugState;

static int parse_errno_value(const char *v, int *out)
{
    static const struct { const char *name; int e; } names[] = {
        { "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EINVAL", EINVAL },
        { "EPERM", EPERM }, { "EACCES", EACCES }, { "ENOMEM", ENOMEM },
        { "EFBIG", EFBIG }, { "EROFS", EROFS }, { "ENOTSUP", ENOTSUP },
    };
    char *end;
    long n = strtol(v, &end, 10);
    if (*v && !*end && n > 0 && n < 4096) {
        *out = (int)n;
        return 0;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcmp(v, names[i].name)) {
            *out = names[i].e;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_iotype(const char *v, int *out)
{
    static const struct { const char *name; int t; } types[] = {
        { "read", IO_READ }, { "write", IO_WRITE },
        { "write-zeroes", IO_WRITE_ZEROES }, { "discard", IO_DISCARD },
        { "flush", IO_FLUSH },
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (!strcmp(v, types[i].name)) {
            *out = types[i].t;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_bool_value(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "false") ||
               !strcmp(v, "no")) {
        *out = false;
    } else {
        return -EINVAL;
    }
    return 0;
}

static int parse_uint_value(const char *v, uint64_t *out)
{
    char *end;
    if (!*v || *v == '-') {
        return -EINVAL;
    }
    unsigned long long n = strtoull(v, &end, 0);
    if (*end) {
        return -EINVAL;
    }
    *out = n;
    return 0;
}

/* One key of a rule; where names the rule for messages. */
static int rule_set(Rule *r, const char *key, const char *v,
                    const char *where, Error *err)
{
    int ret = 0;
    uint64_t u = 0;
    if (!strcmp(key, "event")) {
        r->event = block_debug_event_lookup(v);
        if (r->event < 0) {
            return error_setf(err, EINVAL, "Invalid parameter 'event' of %s: "
                              "unknown event '%s'", where, v);
        }
        return 0;
    }
    if (!strcmp(key, "state")) {
        ret = parse_uint_value(v, &r->state);
    } else if (r->set_state && !strcmp(key, "new_state")) {
        ret = parse_uint_value(v, &r->new_state);
    } else if (!r->set_state && !strcmp(key, "errno")) {
        ret = parse_errno_value(v, &r->err);
    } else if (!r->set_state && !strcmp(key, "sector")) {
        ret = parse_uint_value(v, &u);
        if (ret == 0 && u > (uint64_t)INT64_MAX / 512) {
            ret = -ERANGE;
        }
        r->offset = (int64_t)u * 512;
    } else if (!r->set_state && !strcmp(key, "once")) {
        ret = parse_bool_value(v, &r->once);
    } else if (!r->set_state && !strcmp(key, "immediately")) {
        bool ignored;
        ret = parse_bool_value(v, &ignored);
    } else if (!r->set_state && !strcmp(key, "iotype")) {
        ret = parse_iotype(v, &r->iotypes);
    } else {
        return error_setf(err, EINVAL, "Invalid parameter '%s' of %s", key,
                          where);
    }
    if (ret < 0) {
        return error_setf(err, EINVAL, "Parameter '%s' of %s does not "
                          "accept value '%s'", key, where, v);
    }
    return 0;
}

static Rule *rule_add(BlkdebugState *s, bool set_state)
{
    Rule *n = realloc(s->rules, (s->n + 1) * sizeof(*n));
    if (!n) {
        return NULL;
    }
    s->rules = n;
    Rule *r = &n[s->n++];
    *r = (Rule){ .set_state = set_state, .event = -1, .err = EIO,
                 .offset = -1, .iotypes = IO_ALL };
    return r;
}

static int rule_check(const Rule *r, const char *where, Error *err)
{
    if (r->event < 0) {
        return error_setf(err, EINVAL, "Parameter 'event' is missing in %s",
                          where);
    }
    return 0;
}

static char *trim(char *p)
{
    while (isspace((unsigned char)*p)) {
        p++;
    }
    char *e = p + strlen(p);
    while (e > p && isspace((unsigned char)e[-1])) {
        *--e = '\0';
    }
    return p;
}

/* QEMU's config syntax: [section] lines and key = "value" lines, '#'
 * comments.  Bounded: a line longer than the buffer is an error. */
static int read_config(BlkdebugState *s, const char *path, Error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        return error_setf(err, e, "Could not read blkdebug config file: %s",
                          strerror(e));
    }
    char line[1024];
    int lineno = 0, ret = 0;
    Rule *cur = NULL;
    char where[64] = "";
    while (ret == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            ret = error_setf(err, EINVAL, "%s:%d: line too long", path,
                             lineno);
            break;
        }
        char *p = trim(line);
        if (!*p || *p == '#') {
            continue;
        }
        if (*p == '[') {
            if (cur) {
                ret = rule_check(cur, where, err);
            }
            bool inj = !strcmp(p, "[inject-error]");
            if (ret == 0 && !inj && strcmp(p, "[set-state]")) {
                ret = error_setf(err, EINVAL, "%s:%d: unknown section %s",
                                 path, lineno, p);
            }
            if (ret == 0) {
                cur = rule_add(s, !inj);
                if (!cur) {
                    ret = error_setf(err, ENOMEM, "out of memory");
                }
                snprintf(where, sizeof(where), "%s:%d", path, lineno);
            }
            continue;
        }
        char *eq = strchr(p, '=');
        if (!cur || !eq) {
            ret = error_setf(err, EINVAL, "%s:%d: syntax error", path,
                             lineno);
            break;
        }
        *eq = '\0';
        char *key = trim(p), *val = trim(eq + 1);
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = '\0';
            val++;
        }
        ret = rule_set(cur, key, val, where, err);
    }
    if (ret == 0 && cur) {
        ret = rule_check(cur, where, err);
    }
    fclose(f);
    return ret;
}

/* inject-error.N.KEY / set-state.N.KEY options, N from 0 up. */
static int read_option_rules(BlkdebugState *s, KVList *opts, Error *err)
{
    static const char *const kinds[] = { "inject-error", "set-state" };
    for (int k = 0; k < 2; k++) {
        for (unsigned idx = 0;; idx++) {
            char prefix[48];
            snprintf(prefix, sizeof(prefix), "%s.%u", kinds[k], idx);
            KVList sub = { 0 };
            kvlist_extract_prefix(opts, prefix, &sub);
            if (sub.n == 0) {
                kvlist_free(&sub);
                break;
            }
            Rule *r = rule_add(s, k == 1);
            int ret = r ? 0 : error_setf(err, ENOMEM, "out of memory");
            for (size_t i = 0; ret == 0 && i < sub.n; i++) {
                ret = rule_set(r, sub.items[i].key, sub.items[i].value,
                               prefix, err);
            }
            if (ret == 0) {
                ret = rule_check(r, prefix, err);
            }
            kvlist_free(&sub);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

static int blkdebug_open(BlockNode *n, KVList *opts, int flags, Error *err)
{
    BlkdebugState *s = n->opaque;
    (void)flags;
    s->state = 1;
    const char *config = kvlist_get(opts, "config");
    int ret = 0;
    if (config && *config) {
        ret = read_config(s, config, err);
    }
    if (ret == 0) {
        ret = read_option_rules(s, opts, err);
    }
    /* QEMU's layout options: requests here are as the child takes them */
    for (const char *const *k = (const char *const[]){ "align",
             "max-transfer", "opt-write-zero", "max-write-zero",
             "opt-discard", "max-discard", NULL }; *k; k++) {
        kvlist_get(opts, *k);
    }
    if (ret < 0) {
        free(s->rules);
        s->rules = NULL;
        return ret;
    }
    s->child = block_filtered(n);
    pthread_mutex_init(&s->lock, NULL);
    n->request_alignment = s->child->request_alignment;
    n->max_transfer = s->child->max_transfer;
    return 0;
}

static void blkdebug_close(BlockNode *n)
{
    BlkdebugState *s = n->opaque;
    free(s->rules);
    pthread_mutex_destroy(&s->lock);
}

static void blkdebug_event(BlockNode *n, BlockDebugEvent ev)
{
    BlkdebugState *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    uint64_t new_state = s->state;
    bool injected = false;
    for (size_t i = 0; i < s->n; i++) {
        Rule *r = &s->rules[i];
        if (r->gone || r->event != (int)ev ||
            (r->state && r->state != s->state)) {
            continue;
        }
        if (r->set_state) {
            new_state = r->new_state;
            continue;
        }
        if (!injected) {
            /* the first error of an event replaces the active set */
            for (size_t j = 0; j < s->n; j++) {
                s->rules[j].active = false;
            }
            injected = true;
        }
        r->active = true;
    }
    s->state = new_state;
    pthread_mutex_unlock(&s->lock);
}

/* The error an active rule gives a request, or 0. */
static int gate(BlkdebugState *s, uint64_t off, uint64_t len, int iotype)
{
    pthread_mutex_lock(&s->lock);
    int ret = 0;
    for (size_t i = 0; i < s->n; i++) {
        Rule *r = &s->rules[i];
        if (!r->active || !(r->iotypes & iotype)) {
            continue;
        }
        if (r->offset >= 0 && !(len && (uint64_t)r->offset >= off &&
                                (uint64_t)r->offset < off + len)) {
            continue;
        }
        ret = -r->err;
        if (r->once) {
            r->active = false;
            r->gone = true;
        }
        break;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int blkdebug_preadv(BlockNode *n, uint64_t off, BlockIOV *qiov,
                           int flags)
{
    BlkdebugState *s = n->opaque;
    int ret = gate(s, off, qiov->size, IO_READ);
    return ret < 0 ? ret : block_preadv(s->child, off, qiov, flags);
}

static int blkdebug_pwritev(BlockNode *n, uint64_t off, BlockIOV *qiov,
                            int flags)
{
    BlkdebugState *s = n->opaque;
    int ret = gate(s, off, qiov->size, IO_WRITE);
    return ret < 0 ? ret : block_pwritev(s->child, off, qiov, flags);
}

static int blkdebug_write_zeroes(BlockNode *n, uint64_t off, uint64_t len,
                                 int flags)
{
    BlkdebugState *s = n->opaque;
    int ret = gate(s, off, len, IO_WRITE_ZEROES);
    return ret < 0 ? ret : block_write_zeroes(s->child, off, len, flags);
}

static int blkdebug_discard(BlockNode *n, uint64_t off, uint64_t len)
{
    BlkdebugState *s = n->opaque;
    int ret = gate(s, off, len, IO_DISCARD);
    return ret < 0 ? ret : block_discard(s->child, off, len);
}

static int blkdebug_flush(BlockNode *n)
{
    /* The core flushes the child after us. */
    return gate(n->opaque, 0, 0, IO_FLUSH);
}

static int blkdebug_block_status(BlockNode *n, uint64_t off, uint64_t len,
                                 uint64_t *pnum, uint64_t *map,
                                 BlockNode **file)
{
    BlkdebugState *s = n->opaque;
    return block_status(s->child, off, len, pnum, map, file);
}

static int blkdebug_truncate(BlockNode *n, uint64_t size, bool exact,
                             PreallocMode pm, Error *err)
{
    BlkdebugState *s = n->opaque;
    return block_truncate(s->child, size, exact, pm, err);
}

static bool blkdebug_has_zero_init(BlockNode *n)
{
    BlkdebugState *s = n->opaque;
    return block_has_zero_init(s->child);
}

const BlockDriver blkdebug_driver = {
    .api_version = BLOCK_DRIVER_API_VERSION,
    .name = "blkdebug",
    .kind = BLOCK_DRIVER_FILTER,
    .instance_size = sizeof(BlkdebugState),
    .open = blkdebug_open,
    .close = blkdebug_close,
    .preadv = blkdebug_preadv,
    .pwritev = blkdebug_pwritev,
    .flush = blkdebug_flush,
    .discard = blkdebug_discard,
    .write_zeroes = blkdebug_write_zeroes,
    .block_status = blkdebug_block_status,
    .truncate = blkdebug_truncate,
    .has_zero_init = blkdebug_has_zero_init,
    .debug_event = blkdebug_event,
};
