/*
 * complete.c - the candidates for one word of an imgtool command line
 * (see complete.h), from the command table, the command's option table
 * and what the block layer and the pool store know (formats, creation
 * options, pools, volumes, wipe algorithms).
 *
 * An option's values are told by its argument name, so tables need no
 * completion field: "fmt" is a format, "a|b|c" a fixed set, -o's
 * "options" the chosen format's keys, "name[,bus=blk|scsi][,...]" a
 * key list whose keys and fixed values come from the name itself.
 * A command language of a command's own (CmdSpec.commands: serve-ctl's
 * QMP commands) completes the positional its usage calls COMMAND.
 * Nothing here writes except the candidates on stdout; every failure
 * (no store, an inactive pool) just means fewer candidates.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/driver.h"
#include "imgtool/complete.h"
#include "imgtool/parse-options.h"
#include "imgtool/virsh-args.h"
#include "pools/pool.h"

CompleteCapture complete_capture;

#define MAX_OPTS 128

/* One option, the same whichever parser owns it. */
typedef struct Opt {
    int short_name;
    const char *long_name;
    const char *argname;        /* NULL: no argument */
    bool optional_arg;
} Opt;

typedef struct Line {
    const char *cmd;            /* the command's name */
    Opt opts[MAX_OPTS];
    size_t nopts;
    const CmdSpec *spec;        /* a cmd_parse() command's table */
    const VirshCmd *virsh;      /* positional arguments fill its strings */
    /* what the words before the cursor said */
    const char *fmt, *out_fmt, *pool, *inputpool;
    bool virsh_set[VIRSH_MAX_OPTS];
    int npos;                   /* positional words (cmd_parse commands) */
    bool options_ended;         /* "--", or CMDSPEC_IN_ORDER's first one */
    const char *cur;            /* the word being completed */
} Line;

static void add_opt(Line *l, int s, const char *name, const char *arg,
                    bool optional)
{
    if (l->nopts < MAX_OPTS) {
        l->opts[l->nopts++] = (Opt){ s, name, arg, optional };
    }
}

static void load_spec(Line *l, const CmdSpec *spec)
{
    if (!(spec->flags & CMDSPEC_NO_HELP)) {
        add_opt(l, 'h', "help", NULL, false);
    }
    for (const CmdOpt *o = spec->opts; o->type != CMDOPT_END_OF_TABLE; o++) {
        if (!(o->flags & CMDOPT_HIDDEN)) {
            add_opt(l, o->short_name, o->long_name, o->argname,
                    o->flags & CMDOPT_ARG_OPTIONAL);
        }
    }
}

static void load_virsh(Line *l, const VirshCmd *c)
{
    l->virsh = c;
    add_opt(l, 'h', "help", NULL, false);
    for (int i = 0; c->opts[i].name; i++) {
        add_opt(l, 0, c->opts[i].name,
                c->opts[i].type == VA_STRING ? c->opts[i].name : NULL, false);
    }
    if (c->extras & VA_PROGRESS) {
        add_opt(l, 'p', "progress", NULL, false);
    }
    if (c->extras & VA_OBJECT) {
        add_opt(l, 0, "object", "objectdef", false);
    }
    if (c->extras & VA_OUTPUT) {
        add_opt(l, 0, "output", "human|json", false);
    }
}

static bool in(const char *s, const char *const *set)
{
    for (; *set; set++) {
        if (strcmp(s, *set) == 0) {
            return true;
        }
    }
    return false;
}

/* Prints pre+val when it extends the word being completed. */
static void emit(const Line *l, const char *pre, size_t prelen,
                 const char *val)
{
    size_t vlen = strlen(val), clen = strlen(l->cur);
    if (prelen + vlen < clen) {
        return;
    }
    if (strncmp(pre, l->cur, prelen < clen ? prelen : clen) != 0) {
        return;
    }
    if (clen > prelen && strncmp(val, l->cur + prelen, clen - prelen) != 0) {
        return;
    }
    printf("%.*s%s\n", (int)prelen, pre, val);
}

/* The values of a fixed set written "a|b|c" (len bytes of it). */
static void emit_choices(const Line *l, const char *pre, size_t prelen,
                         const char *set, size_t len)
{
    while (len > 0) {
        size_t n = strcspn(set, "|");
        if (n > len) {
            n = len;
        }
        char v[64];
        snprintf(v, sizeof(v), "%.*s", (int)n, set);
        emit(l, pre, prelen, v);
        set += n;
        len -= n;
        if (len > 0) {
            set++;
            len--;
        }
    }
}

static void emit_formats(const Line *l, const char *pre, size_t prelen)
{
    for (int i = 0; block_driver_list[i]; i++) {
        if (block_driver_list[i]->kind == BLOCK_DRIVER_FORMAT) {
            emit(l, pre, prelen, block_driver_list[i]->name);
        }
    }
}

static void emit_pools(const Line *l, const char *pre, size_t prelen,
                       const char *suffix)
{
    PoolStore *s;
    Error err = { 0 };
    PoolInfo *v = NULL;
    size_t n = 0;
    if (pool_store_open(&s, &err) < 0) {
        error_clear(&err);
        return;
    }
    if (pool_list(s, &v, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++) {
            char buf[512];
            snprintf(buf, sizeof(buf), "%s%s", v[i].name, suffix);
            emit(l, pre, prelen, buf);
        }
        pool_info_list_free(v, n);
    }
    error_clear(&err);
    pool_store_close(s);
}

static void emit_vols(const Line *l, const char *pre, size_t prelen,
                      const char *pool)
{
    PoolStore *s;
    Error err = { 0 };
    VolInfo *v = NULL;
    size_t n = 0;
    if (pool_store_open(&s, &err) < 0) {
        error_clear(&err);
        return;
    }
    if (pool_vol_list(s, pool, &v, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++) {
            emit(l, pre, prelen, v[i].name);
        }
        vol_info_list_free(v, n);
    }
    error_clear(&err);
    pool_store_close(s);
}

/* A volume given without its pool: virsh looks it up by key or path in
 * every active pool (pool_vol_find), so those are what completes; a name
 * alone would be refused.  Each pool's candidates go out as they come:
 * the shell stops waiting on a dead network pool after a few seconds. */
static void emit_vol_keys(const Line *l, const char *pre, size_t prelen)
{
    PoolStore *s;
    Error err = { 0 };
    PoolInfo *pools = NULL;
    size_t np = 0;
    if (pool_store_open(&s, &err) < 0) {
        error_clear(&err);
        return;
    }
    if (pool_list(s, &pools, &np, &err) < 0) {
        np = 0;
    }
    error_clear(&err);
    for (size_t p = 0; p < np; p++) {
        VolInfo *v = NULL;
        size_t n = 0;
        if (!pools[p].active ||
            pool_vol_list(s, pools[p].name, &v, &n, &err) < 0) {
            error_clear(&err);
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            emit(l, pre, prelen, v[i].path);
            if (strcmp(v[i].key, v[i].path) != 0) {
                emit(l, pre, prelen, v[i].key);
            }
        }
        vol_info_list_free(v, n);
        fflush(stdout);
    }
    pool_info_list_free(pools, np);
    pool_store_close(s);
}

/* The pool a volume argument is looked up in: vol-create-from's source
 * volume is --inputpool's, every other one --pool's (NULL: any). */
static const char *vol_pool(const Line *l)
{
    if (l->virsh) {
        for (int i = 0; i < VIRSH_MAX_OPTS && l->virsh->opts[i].name; i++) {
            if (!strcmp(l->virsh->opts[i].name, "inputpool")) {
                return l->inputpool;
            }
        }
    }
    return l->pool;
}

/* An image argument: a file, or vol:POOL/NAME. */
static void emit_image(const Line *l, const char *pre, size_t prelen)
{
    const char *w = l->cur + (strlen(l->cur) >= prelen ? prelen : 0);
    if (strncmp(w, "vol:", 4) != 0) {
        printf("@file\n");
        emit_pools(l, "vol:", 4, "/");
        return;
    }
    const char *slash = strchr(w + 4, '/');
    char head[512];
    if (!slash) {
        snprintf(head, sizeof(head), "%.*svol:", (int)prelen, l->cur);
        emit_pools(l, head, strlen(head), "/");
        return;
    }
    char pool[256];
    snprintf(pool, sizeof(pool), "%.*s", (int)(slash - (w + 4)), w + 4);
    snprintf(head, sizeof(head), "%.*s", (int)(slash + 1 - l->cur), l->cur);
    emit_vols(l, head, strlen(head), pool);
}

/* -o: the chosen format's creation (amend: amendable) options as
 * "key=", and on/off or a preallocation mode after a key. */
static void emit_create_opts(const Line *l, const char *pre, size_t prelen)
{
    const char *fmt = l->out_fmt ? l->out_fmt : l->fmt;
    if (!fmt && strcmp(l->cmd, "create") == 0) {
        fmt = "raw";
    }
    const BlockDriver *d = fmt ? block_find_format(fmt) : NULL;
    if (!d) {
        return;
    }
    const BlockCreateOpt *opts = strcmp(l->cmd, "amend") == 0
                                     ? block_driver_amend_opts(d)
                                     : block_driver_create_opts(d);
    const char *w = l->cur + (strlen(l->cur) >= prelen ? prelen : 0);
    const char *seg = strrchr(w, ',');
    seg = seg ? seg + 1 : w;
    const char *eq = strchr(seg, '=');
    char head[512];
    if (eq) {
        snprintf(head, sizeof(head), "%.*s", (int)(eq + 1 - l->cur), l->cur);
        for (size_t i = 0; opts && opts[i].name; i++) {
            if (strlen(opts[i].name) != (size_t)(eq - seg) ||
                strncmp(opts[i].name, seg, (size_t)(eq - seg)) != 0) {
                continue;
            }
            if (opts[i].type == OPT_BOOL) {
                emit_choices(l, head, strlen(head), "on|off", 6);
            } else if (strcmp(opts[i].name, "preallocation") == 0) {
                for (int m = PREALLOC_OFF; m <= PREALLOC_FULL; m++) {
                    emit(l, head, strlen(head), prealloc_name(m));
                }
            }
        }
        return;
    }
    snprintf(head, sizeof(head), "%.*s", (int)(seg - l->cur), l->cur);
    for (size_t i = 0; opts && opts[i].name; i++) {
        char kv[128];
        snprintf(kv, sizeof(kv), "%s=", opts[i].name);
        emit(l, head, strlen(head), kv);
    }
    if (seg == w) {
        emit(l, head, strlen(head), "help");
    }
}

/* "name[,bus=blk|scsi][,format=fmt][,readonly=on]": the image first,
 * then the keys, then a key's values as the argument name gives them. */
static void emit_keylist(const Line *l, const char *pre, size_t prelen,
                         const char *spec)
{
    const char *w = l->cur + (strlen(l->cur) >= prelen ? prelen : 0);
    const char *seg = strrchr(w, ',');
    if (!seg) {
        emit_image(l, pre, prelen);
        return;
    }
    seg++;
    const char *eq = strchr(seg, '=');
    char head[512];
    snprintf(head, sizeof(head), "%.*s",
             (int)((eq ? eq + 1 : seg) - l->cur), l->cur);
    for (const char *p = strstr(spec, "[,"); p; p = strstr(p + 1, "[,")) {
        const char *key = p + 2, *keq = strchr(key, '=');
        const char *end = strchr(key, ']');
        if (!keq || !end || keq > end) {
            continue;
        }
        if (!eq) {
            char kv[64];
            snprintf(kv, sizeof(kv), "%.*s", (int)(keq + 1 - key), key);
            emit(l, head, strlen(head), kv);
        } else if ((size_t)(keq - key) == (size_t)(eq - seg) &&
                   strncmp(key, seg, (size_t)(eq - seg)) == 0) {
            const char *val = keq + 1;
            size_t vlen = (size_t)(end - val);
            if (vlen == 3 && strncmp(val, "fmt", 3) == 0) {
                emit_formats(l, head, strlen(head));
            } else if (vlen == 2 && strncmp(val, "on", 2) == 0) {
                emit_choices(l, head, strlen(head), "on|off", 6);
            } else {
                emit_choices(l, head, strlen(head), val, vlen);
            }
        }
    }
}

static bool is_choice_set(const char *s)
{
    if (!strchr(s, '|')) {
        return false;
    }
    return s[strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_-|")] == '\0';
}

/* The values of an option (or positional argument) whose argument is
 * named argname, the word being completed starting with pre. */
static void emit_values(const Line *l, int short_name, const char *argname,
                        const char *pre)
{
    static const char *const formats[] = {
        "fmt", "output_fmt", "backing_fmt", "source_fmt", "format",
        "backing-vol-format", NULL,
    };
    static const char *const images[] = {
        "backing_file", "source_file", "SOURCE", "filename", "image", NULL,
    };
    static const char *const files[] = {
        "file", "path", "target", "source-path", "source-dev",
        "socket|host:port", "SOCKET", NULL,
    };
    size_t prelen = strlen(pre);
    if (in(argname, formats)) {
        emit_formats(l, pre, prelen);
    } else if (!strcmp(argname, "cache") || !strcmp(argname, "src_cache")) {
        emit_choices(l, pre, prelen,
                     "none|writeback|unsafe|directsync|writethrough", 45);
    } else if (!strcmp(argname, "options") && short_name == 'o') {
        emit_create_opts(l, pre, prelen);
    } else if (!strcmp(argname, "prealloc")) {
        for (int m = PREALLOC_OFF; m <= PREALLOC_FULL; m++) {
            emit(l, pre, prelen, prealloc_name(m));
        }
    } else if (!strcmp(argname, "aio")) {
        emit_choices(l, pre, prelen, "threads|native|io_uring", 23);
    } else if (!strcmp(argname, "pool") || !strcmp(argname, "inputpool")) {
        emit_pools(l, pre, prelen, "");
    } else if (!strcmp(argname, "vol")) {
        if (vol_pool(l)) {
            emit_vols(l, pre, prelen, vol_pool(l));
        } else {
            emit_vol_keys(l, pre, prelen);
        }
    } else if (!strcmp(argname, "backing-vol")) {
        if (l->pool) {
            emit_vols(l, pre, prelen, l->pool);
        }
    } else if (!strcmp(argname, "algorithm")) {
        for (size_t i = 0; pool_wipe_algorithm(i); i++) {
            emit(l, pre, prelen, pool_wipe_algorithm(i));
        }
    } else if (in(argname, images)) {
        emit_image(l, pre, prelen);
    } else if (in(argname, files)) {
        printf("@file\n");
    } else if (!strcmp(argname, "dir")) {
        printf("@dir\n");
    } else if (strstr(argname, "[,")) {
        emit_keylist(l, pre, prelen, argname);
    } else if (is_choice_set(argname)) {
        emit_choices(l, pre, prelen, argname, strlen(argname));
    }
}

static const Opt *find_long(const Line *l, const char *name, size_t len)
{
    for (size_t i = 0; i < l->nopts; i++) {
        const char *n = l->opts[i].long_name;
        if (n && strlen(n) == len && strncmp(n, name, len) == 0) {
            return &l->opts[i];
        }
    }
    return NULL;
}

static const Opt *find_short(const Line *l, int c)
{
    for (size_t i = 0; i < l->nopts; i++) {
        if (l->opts[i].short_name == c) {
            return &l->opts[i];
        }
    }
    return NULL;
}

/* What the words before the cursor chose: the formats and the pool. */
static void note_value(Line *l, const Opt *o, const char *v)
{
    if (o->short_name == 'f' || (o->long_name &&
                                 !strcmp(o->long_name, "format"))) {
        l->fmt = v;
    } else if (o->short_name == 'O') {
        l->out_fmt = v;
    } else if (o->long_name && !strcmp(o->long_name, "pool")) {
        l->pool = v;
    } else if (o->long_name && !strcmp(o->long_name, "inputpool")) {
        l->inputpool = v;
    }
}

/* The next positional argument of a virsh-style command: the first
 * string option not given yet (by name or position), or NULL. */
static int virsh_next_positional(Line *l)
{
    for (int i = 0; i < VIRSH_MAX_OPTS && l->virsh->opts[i].name; i++) {
        const VirshOpt *o = &l->virsh->opts[i];
        if (o->type == VA_STRING && !(o->flags & VA_NAMED) &&
            !l->virsh_set[i]) {
            return i;
        }
    }
    return -1;
}

static void virsh_mark(Line *l, const char *name)
{
    for (int i = 0; i < VIRSH_MAX_OPTS && l->virsh->opts[i].name; i++) {
        if (strcmp(l->virsh->opts[i].name, name) == 0) {
            l->virsh_set[i] = true;
        }
    }
}

/* Reads words[2..cword-1]; returns the option whose argument the cursor
 * is on (the word before it wanted one), or NULL. */
static const Opt *scan(Line *l, char **words, int cword)
{
    bool dashdash = false;
    for (int i = 2; i < cword; i++) {
        const char *w = words[i];
        const Opt *o = NULL;
        const char *val = NULL;
        if (!dashdash && !strcmp(w, "--")) {
            dashdash = l->options_ended = true;
            continue;
        }
        if (!dashdash && !strncmp(w, "--", 2)) {
            size_t len = strcspn(w + 2, "=");
            o = find_long(l, w + 2, len);
            if (o && w[2 + len] == '=') {
                val = w + 3 + len;
            } else if (o && o->argname && !o->optional_arg) {
                if (i + 1 == cword) {
                    return o;
                }
                val = words[++i];
            }
        } else if (!dashdash && w[0] == '-' && w[1]) {
            for (const char *p = w + 1; *p; p++) {
                o = find_short(l, *p);
                if (o && o->argname) {
                    if (p[1]) {
                        val = p + 1;
                    } else if (!o->optional_arg) {
                        if (i + 1 == cword) {
                            return o;
                        }
                        val = words[++i];
                    }
                    break;
                }
            }
        } else if (l->virsh) {
            int k = virsh_next_positional(l);
            if (k >= 0) {
                l->virsh_set[k] = true;
                if (!strcmp(l->virsh->opts[k].name, "pool")) {
                    l->pool = w;
                } else if (!strcmp(l->virsh->opts[k].name, "inputpool")) {
                    l->inputpool = w;
                }
            }
        } else {
            l->npos++;
            if (l->spec && (l->spec->flags & CMDSPEC_IN_ORDER)) {
                dashdash = l->options_ended = true;
            }
        }
        if (o && l->virsh && o->long_name) {
            virsh_mark(l, o->long_name);
        }
        if (o && val) {
            note_value(l, o, val);
        }
    }
    return NULL;
}

static void emit_options(const Line *l)
{
    for (size_t i = 0; i < l->nopts; i++) {
        const Opt *o = &l->opts[i];
        if (o->long_name) {
            char buf[96];
            snprintf(buf, sizeof(buf), "--%s", o->long_name);
            emit(l, "", 0, buf);
        }
        if (o->short_name && strlen(l->cur) < 3) {
            char buf[3] = { '-', (char)o->short_name, 0 };
            emit(l, "", 0, buf);
        }
    }
}

/* A positional argument of a command with a command language of its
 * own (spec->commands) whose usage names one "COMMAND" (serve-ctl's
 * "SOCKET COMMAND [JSON | key=value ...]"): the command names there,
 * what the usage names before it, nothing after it (the command's own
 * arguments). */
static bool emit_command_language(const Line *l)
{
    const char *args = l->spec->args ? l->spec->args : "";
    char word[64] = "";
    int k = 0;
    while (*(args += strspn(args, " "))) {
        size_t len = 0;
        for (int depth = 0; args[len] && (depth || args[len] != ' ');
             len++) {
            depth += args[len] == '[' ? 1 : args[len] == ']' ? -1 : 0;
        }
        snprintf(word, sizeof(word), "%.*s", (int)len, args);
        args += len;
        if (!strcmp(word, "COMMAND")) {
            break;
        }
        k++;
    }
    if (strcmp(word, "COMMAND") != 0) {
        return false;
    }
    if (l->npos == k) {
        for (size_t i = 0; l->spec->commands[i]; i++) {
            emit(l, "", 0, l->spec->commands[i]->name);
        }
    } else if (l->npos < k) {
        /* the k-th word of the usage names it */
        args = l->spec->args;
        for (int i = 0; i <= l->npos; i++) {
            args += strspn(args, " ");
            size_t len = strcspn(args, " ");
            snprintf(word, sizeof(word), "%.*s", (int)len, args);
            args += len;
        }
        emit_values(l, 0, word, "");
    }
    return true;
}

/* The command's tables, captured by running it (complete.h says how). */
static void load_command(Line *l, const ImgtoolCommand *c)
{
    char *argv[] = { (char *)c->name, NULL };
    complete_capture = (CompleteCapture){ .active = true };
    /* Anything a command says before it parses is not a candidate. */
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (saved >= 0 && null >= 0) {
        dup2(null, STDOUT_FILENO);
    }
    c->run(1, argv);
    fflush(stdout);
    if (saved >= 0 && null >= 0) {
        dup2(saved, STDOUT_FILENO);
    }
    if (saved >= 0) {
        close(saved);
    }
    if (null >= 0) {
        close(null);
    }
    if (complete_capture.spec) {
        l->spec = complete_capture.spec;
        load_spec(l, complete_capture.spec);
    } else if (complete_capture.virsh) {
        load_virsh(l, complete_capture.virsh);
    }
    complete_capture = (CompleteCapture){ 0 };
}

int imgtool_complete(const ImgtoolCommand *cmds, size_t n, int argc,
                     char **argv)
{
    if (argc < 2) {
        imgtool_error("--complete: give CWORD and the command line");
        return 1;
    }
    char *end;
    long cword = strtol(argv[0], &end, 10);
    char **words = argv + 1;
    int nwords = argc - 1;
    if (*end || cword < 1 || cword > nwords) {
        imgtool_error("--complete: '%s': not a word index", argv[0]);
        return 1;
    }
    Line *l = calloc(1, sizeof(*l));
    if (!l) {
        imgtool_error("out of memory");
        return 1;
    }
    l->cur = cword < nwords ? words[cword] : "";
    if (cword == 1 || (cword == 2 && !strcmp(words[1], "help"))) {
        for (size_t i = 0; i < n; i++) {
            emit(l, "", 0, cmds[i].name);
        }
        if (cword == 1) {
            emit(l, "", 0, "help");
            emit(l, "", 0, "--help");
            emit(l, "", 0, "--version");
        }
        free(l);
        return 0;
    }
    const ImgtoolCommand *c = NULL;
    for (size_t i = 0; i < n && !c; i++) {
        if (!strcmp(cmds[i].name, words[1])) {
            c = &cmds[i];
        }
    }
    if (!c) {
        free(l);
        return 0;
    }
    l->cmd = c->name;
    load_command(l, c);
    const Opt *want = scan(l, words, (int)cword);
    const char *cur = l->cur;
    if (want) {
        emit_values(l, want->short_name, want->argname, "");
    } else if (!strncmp(cur, "--", 2) && strchr(cur, '=')) {
        const char *eq = strchr(cur, '=');
        const Opt *o = find_long(l, cur + 2, (size_t)(eq - cur - 2));
        if (o && o->argname) {
            char pre[128];
            snprintf(pre, sizeof(pre), "%.*s", (int)(eq + 1 - cur), cur);
            emit_values(l, o->short_name, o->argname, pre);
        }
    } else if (cur[0] == '-' && !l->options_ended) {
        emit_options(l);
    } else if (l->spec && l->spec->commands &&
               emit_command_language(l)) {
        /* done */
    } else if (l->virsh) {
        int k = virsh_next_positional(l);
        if (k >= 0) {
            emit_values(l, 0, l->virsh->opts[k].name, "");
        }
    } else {
        emit_values(l, 0, "image", "");
    }
    free(l);
    return 0;
}
