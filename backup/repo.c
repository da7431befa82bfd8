/*
 * repo.c - opening, creating, locking and listing a backup repository
 * (layout and invariants in repo.h; its crash-safe file writes are
 * files.c).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "backup/repo.h"
#include "block/core/secret.h"

#define LOCK_FILE      ".lock"
#define READ_LOCK_FILE ".lock-read"
#define DEFAULT_ITER_TIME 2000

/* ------------------------------------------------------------------ */
/* Names                                                               */

bool bk_disk_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64 || name[0] == '.') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
              (c >= 'a' && c <= 'z') || c == '-' || c == '_' || c == '.' ||
              c == '+')) {
            return false;
        }
    }
    return true;
}

char *bk_repo_file(const BkRepo *r, const char *id, const char *name)
{
    char *p = NULL;
    int n = id ? asprintf(&p, "%s/%s/%s", r->path, id, name)
               : asprintf(&p, "%s/%s", r->path, name);
    return n < 0 ? NULL : p;
}

char *bk_disk_file(const BkRepo *r, const char *id, const char *disk,
                   const char *ext)
{
    char *p = NULL;
    return asprintf(&p, "%s/%s/%s.%s", r->path, id, disk, ext) < 0 ? NULL
                                                                    : p;
}

/* ------------------------------------------------------------------ */
/* Keys                                                                */

static void hex_encode(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    }
}

static int hex_decode(const char *s, uint8_t *b, size_t n)
{
    if (!s || strlen(s) != 2 * n) {
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            return -EINVAL;
        }
        b[i] = (uint8_t)v;
    }
    return 0;
}

/* PBKDF2-SHA256 of the passphrase: 32 bytes of map key, then 32 whose
 * SHA-256 is the stored check (a wrong passphrase is told at once). */
static int derive(const uint8_t *pass, size_t plen, const uint8_t salt[16],
                  uint32_t iterations, BkKey *key, uint8_t check[32])
{
    uint8_t out[64];
    if (PKCS5_PBKDF2_HMAC((const char *)pass, (int)plen, salt, 16,
                          (int)iterations, EVP_sha256(), sizeof(out),
                          out) != 1) {
        return -EIO;
    }
    memcpy(key->bytes, out, 32);
    SHA256(out + 32, 32, check);
    OPENSSL_cleanse(out, sizeof(out));
    return 0;
}

/* Iterations that take about ms milliseconds of CPU here (CPU time, as
 * LUKS sizes its slots: a busy host must not weaken the key). */
static uint32_t calibrate(uint64_t ms)
{
    static const uint8_t salt[16];
    uint8_t out[32];
    uint32_t n = 1000;
    for (;;) {
        struct timespec a, b;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
        PKCS5_PBKDF2_HMAC("calibrate", 9, salt, 16, (int)n, EVP_sha256(),
                          sizeof(out), out);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
        double t = (double)(b.tv_sec - a.tv_sec) * 1e3 +
                   (double)(b.tv_nsec - a.tv_nsec) / 1e6;
        if (t >= 20 || n >= (1u << 28)) {
            double want = (double)n * (double)ms / (t > 0 ? t : 1);
            if (want < 1000) {
                want = 1000;
            }
            return want > (double)(1u << 30) ? (1u << 30) : (uint32_t)want;
        }
        n *= 4;
    }
}

int bk_repo_unlock(BkRepo *r, const char *key_secret, Error *err)
{
    uint8_t *pass = NULL;
    size_t plen = 0;
    uint8_t check[32];
    if (!r->encrypted) {
        return error_setf(err, EINVAL, "%s: the repository is not "
                          "encrypted (no --key-secret needed)", r->path);
    }
    int ret = secret_lookup(key_secret, &pass, &plen, err);
    if (ret < 0) {
        return ret;
    }
    ret = derive(pass, plen, r->salt, r->kdf_iterations, &r->key, check);
    secret_free(pass, plen);
    if (ret < 0) {
        return error_setf(err, EIO, "cannot derive the key");
    }
    if (CRYPTO_memcmp(check, r->check, 32) != 0) {
        OPENSSL_cleanse(&r->key, sizeof(r->key));
        return error_setf(err, EACCES, "%s: wrong passphrase for the "
                          "repository", r->path);
    }
    r->have_key = true;
    free(r->key_secret);
    r->key_secret = strdup(key_secret);
    return r->key_secret ? 0 : error_setf(err, ENOMEM, "out of memory");
}

/* ------------------------------------------------------------------ */
/* The repository file                                                 */

static void make_uuid(char out[37])
{
    uint8_t b[16];
    if (RAND_bytes(b, 16) != 1) {
        for (int i = 0; i < 16; i++) {
            b[i] = (uint8_t)rand();
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
             b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

static int repo_create_file(BkRepo *r, const BkOpenArgs *a, Error *err)
{
    char uuid[37], seed_hex[17], when[32];
    uint8_t seed[8];
    time_t now = time(NULL);
    struct tm tm;

    make_uuid(uuid);
    if (RAND_bytes(seed, 8) != 1) {
        return error_setf(err, EIO, "no random bytes for the hash seed");
    }
    hex_encode(seed, 8, seed_hex);
    gmtime_r(&now, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *enc = json_null();
    if (a->key_secret) {
        uint8_t salt[16], check[32], *pass = NULL;
        size_t plen = 0;
        char salt_hex[33], check_hex[65];
        uint64_t ms = a->iter_time_ms ? a->iter_time_ms : DEFAULT_ITER_TIME;
        int ret = secret_lookup(a->key_secret, &pass, &plen, err);
        if (ret < 0) {
            return ret;
        }
        uint32_t iters = calibrate(ms);
        BkKey key;
        if (RAND_bytes(salt, 16) != 1 ||
            derive(pass, plen, salt, iters, &key, check) < 0) {
            secret_free(pass, plen);
            return error_setf(err, EIO, "cannot derive the key");
        }
        secret_free(pass, plen);
        OPENSSL_cleanse(&key, sizeof(key));
        hex_encode(salt, 16, salt_hex);
        hex_encode(check, 32, check_hex);
        enc = json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:I}",
                        "points", "qcow2 encrypt.format=luks",
                        "maps", "aes-256-gcm",
                        "kdf", "pbkdf2-sha256",
                        "iterations", (json_int_t)iters,
                        "salt", salt_hex,
                        "check", check_hex,
                        "luks-iter-time", (json_int_t)ms);
    }
    json_t *j = json_pack("{s:s, s:i, s:s, s:s, s:s, s:o}",
                          "format", BK_FORMAT,
                          "version", BK_VERSION,
                          "uuid", uuid,
                          "created", when,
                          "seed", seed_hex,
                          "encryption", enc);
    char *path = bk_repo_file(r, NULL, BK_REPO_FILE);
    int ret = j && path ? bk_write_json_atomic(path, j, err)
                        : error_setf(err, ENOMEM, "out of memory");
    json_decref(j);
    free(path);
    return ret;
}

static int repo_read_file(BkRepo *r, Error *err)
{
    char *path = bk_repo_file(r, NULL, BK_REPO_FILE);
    json_error_t je;
    uint8_t seed[8];
    if (!path) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    free(path);
    if (!j) {
        return error_setf(err, EINVAL, "%s: not a backup repository (its "
                          "%s cannot be read: %s)", r->path, BK_REPO_FILE,
                          je.text);
    }
    int ret = 0;
    json_t *enc = json_object_get(j, "encryption");
    const char *uuid = json_string_value(json_object_get(j, "uuid"));
    if (!json_is_object(j) ||
        !json_is_string(json_object_get(j, "format")) ||
        strcmp(json_string_value(json_object_get(j, "format")),
               BK_FORMAT) != 0 || !uuid || strlen(uuid) != 36 ||
        hex_decode(json_string_value(json_object_get(j, "seed")), seed,
                   8) < 0) {
        ret = error_setf(err, EINVAL, "%s: not a backup repository (bad "
                         "%s)", r->path, BK_REPO_FILE);
    } else if (json_integer_value(json_object_get(j, "version")) !=
               BK_VERSION) {
        ret = error_setf(err, ENOTSUP, "%s: repository version %lld is "
                         "not supported (this imgtool knows %d)", r->path,
                         (long long)json_integer_value(
                             json_object_get(j, "version")), BK_VERSION);
    } else if (json_is_object(enc)) {
        json_int_t it = json_integer_value(json_object_get(enc,
                                                           "iterations"));
        json_int_t lt = json_integer_value(json_object_get(enc,
                                                           "luks-iter-time"));
        if (it < 1000 || it > (1 << 30) || lt < 0 ||
            hex_decode(json_string_value(json_object_get(enc, "salt")),
                       r->salt, 16) < 0 ||
            hex_decode(json_string_value(json_object_get(enc, "check")),
                       r->check, 32) < 0) {
            ret = error_setf(err, EINVAL, "%s: bad encryption settings in "
                             "%s", r->path, BK_REPO_FILE);
        } else {
            r->encrypted = true;
            r->kdf_iterations = (uint32_t)it;
            r->luks_iter_time = (uint64_t)lt;
        }
    } else if (enc && !json_is_null(enc)) {
        ret = error_setf(err, EINVAL, "%s: bad encryption settings in %s",
                         r->path, BK_REPO_FILE);
    }
    if (ret == 0) {
        r->uuid = strdup(uuid);
        r->seed = 0;
        for (int i = 0; i < 8; i++) {
            r->seed = r->seed << 8 | seed[i];
        }
        if (!r->uuid) {
            ret = error_setf(err, ENOMEM, "out of memory");
        }
    }
    json_decref(j);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Points                                                              */

static int point_cmp(const void *a, const void *b)
{
    const BkPoint *x = a, *y = b;
    if (x->seq != y->seq) {
        return x->seq < y->seq ? -1 : 1;
    }
    return strcmp(x->id, y->id);
}

static void free_points(BkRepo *r)
{
    for (int i = 0; i < r->npoints; i++) {
        bk_point_clear(&r->points[i]);
    }
    free(r->points);
    r->points = NULL;
    r->npoints = 0;
    for (int i = 0; i < r->ndamaged; i++) {
        free(r->damaged[i]);
    }
    free(r->damaged);
    r->damaged = NULL;
    r->ndamaged = 0;
}

static int add_damaged(BkRepo *r, const char *name)
{
    char **v = realloc(r->damaged, (size_t)(r->ndamaged + 1) * sizeof(*v));
    if (!v) {
        return -ENOMEM;
    }
    r->damaged = v;
    v[r->ndamaged] = strdup(name);
    if (!v[r->ndamaged]) {
        return -ENOMEM;
    }
    r->ndamaged++;
    return 0;
}

int bk_repo_reload(BkRepo *r, Error *err)
{
    DIR *d = opendir(r->path);
    int ret = 0;

    free_points(r);
    if (!d) {
        ret = -errno;
        return error_setf(err, -ret, "%s: %s", r->path, strerror(-ret));
    }
    struct dirent *e;
    while ((e = readdir(d)) && ret == 0) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char *sub = NULL, *rec = NULL;
        struct stat st;
        if (asprintf(&sub, "%s/%s", r->path, e->d_name) < 0 ||
            asprintf(&rec, "%s/%s", sub, BK_POINT_FILE) < 0) {
            free(sub);
            ret = error_setf(err, ENOMEM, "out of memory");
            break;
        }
        if (stat(sub, &st) < 0 || !S_ISDIR(st.st_mode)) {
            free(sub);
            free(rec);
            continue;
        }
        json_error_t je;
        json_t *j = json_load_file(rec, JSON_REJECT_DUPLICATES, &je);
        BkPoint p;
        Error perr = { 0 };
        if (!j || bk_point_from_json(j, &p, &perr) < 0 ||
            strcmp(p.id, e->d_name) != 0) {
            if (j && perr.code == 0) {
                bk_point_clear(&p);
            }
            /* A directory of ours without a usable record: verify names
             * it; nothing else lists it. */
            if (add_damaged(r, e->d_name) < 0) {
                ret = error_setf(err, ENOMEM, "out of memory");
            }
        } else {
            BkPoint *v = realloc(r->points,
                                 (size_t)(r->npoints + 1) * sizeof(*v));
            if (!v) {
                bk_point_clear(&p);
                ret = error_setf(err, ENOMEM, "out of memory");
            } else {
                r->points = v;
                v[r->npoints++] = p;
            }
        }
        json_decref(j);
        free(sub);
        free(rec);
    }
    closedir(d);
    if (ret == 0 && r->npoints > 1) {
        qsort(r->points, (size_t)r->npoints, sizeof(*r->points), point_cmp);
    }
    return ret;
}

BkPoint *bk_repo_find(BkRepo *r, const char *id)
{
    for (int i = 0; id && i < r->npoints; i++) {
        if (strcmp(r->points[i].id, id) == 0) {
            return &r->points[i];
        }
    }
    return NULL;
}

BkDiskRec *bk_point_disk(BkPoint *p, const char *disk)
{
    for (int i = 0; p && i < p->ndisks; i++) {
        if (strcmp(p->disks[i].name, disk) == 0) {
            return &p->disks[i];
        }
    }
    return NULL;
}

BkPoint *bk_repo_last_with(BkRepo *r, const char *disk)
{
    for (int i = r->npoints - 1; i >= 0; i--) {
        if (bk_point_disk(&r->points[i], disk)) {
            return &r->points[i];
        }
    }
    return NULL;
}

BkPoint *bk_repo_chain_root(BkRepo *r, BkPoint *p, const char *disk)
{
    for (int depth = 0; p && depth <= r->npoints; depth++) {
        BkDiskRec *d = bk_point_disk(p, disk);
        if (!d) {
            return NULL;
        }
        if (!d->parent) {
            return p;
        }
        BkPoint *q = bk_repo_find(r, d->parent);
        /* Parents are older: anything else is a loop or damage. */
        if (!q || q->seq >= p->seq) {
            return NULL;
        }
        p = q;
    }
    return NULL;
}

/* The time an id names, or -1 (ids that are not times never block). */
static int64_t id_time(const char *id)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(id, "%Y%m%dT%H%M%SZ", &tm);
    return end && !*end ? (int64_t)timegm(&tm) : -1;
}

char *bk_repo_next_id(BkRepo *r, int64_t now)
{
    /* The id is the UTC time, moved past the newest id (a clock set
     * back, or two points in one second) so ids sort as points were
     * made. */
    int64_t t = now;
    for (int i = 0; i < r->npoints; i++) {
        int64_t x = id_time(r->points[i].id);
        if (x >= t) {
            t = x + 1;
        }
    }
    for (;; t++) {
        char id[32];
        time_t tt = (time_t)t;
        struct tm tm;
        gmtime_r(&tt, &tm);
        strftime(id, sizeof(id), "%Y%m%dT%H%M%SZ", &tm);
        bool taken = false;
        for (int i = 0; i < r->npoints && !taken; i++) {
            taken = id_time(r->points[i].id) >= 0 &&
                    strcmp(r->points[i].id, id) >= 0;
        }
        for (int i = 0; i < r->ndamaged && !taken; i++) {
            taken = strcmp(r->damaged[i], id) == 0;
        }
        if (!taken) {
            return strdup(id);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Opening                                                             */

static int take_lock(BkRepo *r, const char *name, int how, int *fd_out,
                     Error *err)
{
    char *p = bk_repo_file(r, NULL, name);
    if (!p) {
        return error_setf(err, ENOMEM, "out of memory");
    }
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EACCES && !(how & LOCK_EX)) {
        fd = open(p, O_RDONLY | O_CLOEXEC);
    }
    free(p);
    if (fd < 0) {
        int e = errno;
        return error_setf(err, e, "%s: cannot open its lock file: %s",
                          r->path, strerror(e));
    }
    while (flock(fd, how) < 0) {
        int e = errno;
        if (e == EINTR) {
            continue;
        }
        close(fd);
        if (e == EWOULDBLOCK) {
            return error_setf(err, EBUSY, "%s: another backup or prune is "
                              "running on this repository", r->path);
        }
        return error_setf(err, e, "%s: cannot lock: %s", r->path,
                          strerror(e));
    }
    *fd_out = fd;
    return 0;
}

int bk_repo_lock_exclusive(BkRepo *r, Error *err)
{
    if (r->exclusive_read) {
        return 0;
    }
    if (r->rlock_fd >= 0) {
        close(r->rlock_fd);
        r->rlock_fd = -1;
    }
    int ret = take_lock(r, READ_LOCK_FILE, LOCK_EX, &r->rlock_fd, err);
    if (ret == 0) {
        r->exclusive_read = true;
    }
    return ret;
}

/* The directory holds nothing, or only our lock file (a first backup
 * that died before writing the repository file). */
static bool only_our_lock(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        return errno == ENOENT;
    }
    struct dirent *e;
    bool ok = true;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            strcmp(e->d_name, LOCK_FILE)) {
            ok = false;
            break;
        }
    }
    closedir(d);
    return ok;
}

int bk_repo_open(const char *path, const BkOpenArgs *a, BkRepo **out,
                 Error *err)
{
    BkRepo *r = calloc(1, sizeof(*r));
    struct stat st;
    int ret;

    *out = NULL;
    if (!r || !(r->path = strdup(path))) {
        free(r);
        return error_setf(err, ENOMEM, "out of memory");
    }
    r->lock_fd = r->rlock_fd = -1;
    /* No trailing slashes: paths are joined with '/'. */
    for (size_t n = strlen(r->path); n > 1 && r->path[n - 1] == '/'; n--) {
        r->path[n - 1] = '\0';
    }
    char *rf = bk_repo_file(r, NULL, BK_REPO_FILE);
    bool exists = rf && stat(rf, &st) == 0;
    free(rf);
    if (!exists) {
        if (!a->create) {
            ret = stat(r->path, &st) < 0
                ? error_setf(err, errno, "%s: %s", r->path, strerror(errno))
                : error_setf(err, EINVAL, "%s: not a backup repository (no "
                             "%s)", r->path, BK_REPO_FILE);
            goto fail;
        }
        if (mkdir(r->path, 0755) < 0 && errno != EEXIST) {
            ret = error_setf(err, errno, "%s: cannot create: %s", r->path,
                             strerror(errno));
            goto fail;
        }
        if (stat(r->path, &st) < 0 || !S_ISDIR(st.st_mode)) {
            ret = error_setf(err, ENOTDIR, "%s: not a directory", r->path);
            goto fail;
        }
    }
    if (!exists && !only_our_lock(r->path)) {
        ret = error_setf(err, EEXIST, "%s: not a backup repository, and not "
                         "empty: refusing to make one there", r->path);
        goto fail;
    }
    if (a->mode == BK_OPEN_WRITE) {
        ret = take_lock(r, LOCK_FILE, LOCK_EX | LOCK_NB, &r->lock_fd, err);
        if (ret < 0) {
            goto fail;
        }
    }
    if (!exists) {
        /* Under the writer's lock: two first backups cannot both make
         * one.  An existing directory is taken only when empty (apart
         * from our lock file), never someone's files. */
        rf = bk_repo_file(r, NULL, BK_REPO_FILE);
        exists = rf && stat(rf, &st) == 0;
        free(rf);
    }
    if (!exists) {
        if (!only_our_lock(r->path)) {
            ret = error_setf(err, EEXIST, "%s: not a backup repository, "
                             "and not empty: refusing to make one there",
                             r->path);
            goto fail;
        }
        ret = repo_create_file(r, a, err);
        if (ret < 0) {
            goto fail;
        }
    }
    ret = repo_read_file(r, err);
    if (ret < 0) {
        goto fail;
    }
    ret = take_lock(r, READ_LOCK_FILE, LOCK_SH, &r->rlock_fd, err);
    if (ret < 0) {
        goto fail;
    }
    if (a->key_secret) {
        ret = bk_repo_unlock(r, a->key_secret, err);
        if (ret < 0) {
            goto fail;
        }
    } else if (r->encrypted && a->need_key) {
        ret = error_setf(err, EACCES, "%s: the repository is encrypted: "
                         "give its passphrase with --object secret,id=ID,"
                         "file=PATH --key-secret ID", r->path);
        goto fail;
    }
    ret = bk_repo_reload(r, err);
    if (ret < 0) {
        goto fail;
    }
    *out = r;
    return 0;
fail:
    bk_repo_close(r);
    return ret;
}

void bk_repo_close(BkRepo *r)
{
    if (!r) {
        return;
    }
    free_points(r);
    if (r->rlock_fd >= 0) {
        close(r->rlock_fd);
    }
    if (r->lock_fd >= 0) {
        close(r->lock_fd);
    }
    OPENSSL_cleanse(&r->key, sizeof(r->key));
    free(r->key_secret);
    free(r->uuid);
    free(r->path);
    free(r);
}
