/*
 * volopen.c - "vol:POOL/NAME" in image commands: the one place that
 * turns such a name into what the block layer opens (or, for a new
 * image, where it is created).
 *
 * A volume is refused when it is not good: its pool is inactive, its
 * creation is running or was killed, a wipe of it was interrupted.
 * The pool lock is only held while answering; the block layer's image
 * lock protects the volume from then on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/secret.h"
#include "pools/core.h"
#include "pools/util.h"

bool pool_is_vol_name(const char *name)
{
    return name && strncmp(name, POOL_VOL_PREFIX,
                           strlen(POOL_VOL_PREFIX)) == 0;
}

/* "vol:POOL/NAME" -> POOL, NAME (malloc'd). */
static int split_name(const char *name, char **pool, char **vol, Error *err)
{
    *pool = *vol = NULL;
    const char *p = name + strlen(POOL_VOL_PREFIX);
    const char *slash = strchr(p, '/');
    if (!slash || slash == p || !slash[1]) {
        return error_setf(err, EINVAL, "a volume is named vol:POOL/NAME");
    }
    *pool = strndup(p, (size_t)(slash - p));
    *vol = strdup(slash + 1);
    int ret = !*pool || !*vol ? error_setf(err, ENOMEM, "out of memory")
                              : pool_check_name("volume", *vol, err);
    if (ret < 0) {
        free(*pool);
        free(*vol);
        *pool = *vol = NULL;
    }
    return ret;
}

int pool_vol_spec_init(VolOpenSpec *spec, char *filename, const VolInfo *v,
                       bool raw_bytes, Error *err)
{
    memset(spec, 0, sizeof(*spec));
    spec->filename = filename;
    spec->format = strdup(raw_bytes ? "raw" : v->format);
    if (!spec->filename || !spec->format) {
        vol_open_spec_clear(spec);
        return error_setf(err, ENOMEM, "out of memory");
    }
    return 0;
}

void pool_vol_spec_luks_key(VolOpenSpec *spec, const VolInfo *v,
                            bool raw_bytes)
{
    if (!raw_bytes && v->secret && strcmp(v->format, "luks") == 0) {
        uint8_t *data;
        size_t len;
        Error ignored = { 0 };
        if (secret_lookup(v->secret, &data, &len, &ignored) == 0) {
            secret_free(data, len);
            kvlist_set(&spec->opts, "key-secret", v->secret);
        }
    }
}

static int spec_for(Pool *p, const VolInfo *v, VolOpenSpec *spec, Error *err)
{
    if (v->state == VOL_STATE_WIPE_INTERRUPTED) {
        return error_setf(err, EINVAL, "volume '%s' was left half wiped by "
                          "an interrupted vol-wipe; wipe it again or delete "
                          "it", v->name);
    }
    if (store_op_status(p->store, p->def.name, v->name, NULL) ==
        OP_RUNNING) {
        return error_setf(err, EBUSY, "volume '%s' is busy: another command "
                          "is working on it", v->name);
    }
    return p->be->vol_open_spec(p, v, false, spec, err);
}

static int open_pool(PoolStore *s, const char *pool, Pool **p, Error *err)
{
    int ret = pool_open(s, pool, p, err);
    if (ret == 0) {
        ret = pool_require_active(*p, err);
        if (ret < 0) {
            pool_close(*p);
            *p = NULL;
        }
    }
    return ret;
}

/* Opens the pool of "vol:POOL/NAME" (active, locked) and looks NAME up
 * into v.  *p is the pool, or NULL when none was opened; *vol the name
 * (malloc'd, or NULL).  Returns the lookup's answer (-ENOENT when the
 * pool is open but has no such volume); release with close_vol(). */
static int open_vol(PoolStore *s, const char *name, Pool **p, char **vol,
                    VolInfo *v, Error *err)
{
    *p = NULL;
    char *pool;
    int ret = split_name(name, &pool, vol, err);
    if (ret < 0) {
        return ret;
    }
    ret = open_pool(s, pool, p, err);
    free(pool);
    if (ret == 0) {
        ret = pool_lookup_locked(*p, *vol, v, err);
    }
    return ret;
}

static void close_vol(Pool *p, char *vol)
{
    if (p) {
        pool_close(p);
    }
    free(vol);
}

int pool_vol_open_spec(PoolStore *s, const char *name, VolOpenSpec *spec,
                       Error *err)
{
    memset(spec, 0, sizeof(*spec));
    Pool *p;
    char *vol;
    VolInfo v;
    int ret = open_vol(s, name, &p, &vol, &v, err);
    if (ret == 0) {
        ret = spec_for(p, &v, spec, err);
        vol_info_clear(&v);
    }
    close_vol(p, vol);
    return ret;
}

int pool_vol_target_spec(PoolStore *s, const char *name, VolOpenSpec *spec,
                         bool *exists, Error *err)
{
    memset(spec, 0, sizeof(*spec));
    *exists = false;
    Pool *p;
    char *vol;
    VolInfo v;
    int ret = open_vol(s, name, &p, &vol, &v, err);
    if (ret == 0) {
        /* A LUN is there to be written: an image goes onto it. */
        *exists = !p->be->fixed_volumes;
        ret = spec_for(p, &v, spec, err);
        vol_info_clear(&v);
    } else if (ret == -ENOENT && p && p->be->vol_new_path) {
        error_clear(err);
        ret = store_op_status(s, p->def.name, vol, NULL) == OP_RUNNING
                  ? error_setf(err, EBUSY, "volume '%s' is being "
                               "created by another command", vol)
                  : p->be->vol_name_check(vol, err);
        if (ret == 0) {
            spec->filename = p->be->vol_new_path(p, vol);
            ret = spec->filename ? 0
                                 : error_setf(err, ENOMEM, "out of memory");
        }
    } else if (ret == -ENOENT && p) {
        error_clear(err);
        ret = error_setf(err, ENOENT, "volume '%s' does not exist in "
                         "pool '%s' (create it with vol-create-as "
                         "first)", vol, p->def.name);
    }
    close_vol(p, vol);
    return ret;
}

int pool_vol_set_format(PoolStore *s, const char *name, const char *format,
                        Error *err)
{
    Pool *p;
    char *vol;
    VolInfo v;
    int ret = open_vol(s, name, &p, &vol, &v, err);
    if (ret == 0) {
        ret = p->be->vol_changed(p, &v, format, err);
        vol_info_clear(&v);
    }
    close_vol(p, vol);
    return ret;
}
