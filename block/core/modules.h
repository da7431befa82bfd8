/*
 * modules.h - the registry's view of drivers that live in loadable
 * modules (block/core/modules.c).  Internal to block/core.
 *
 * Invariants: a module is tried at most once per process; what that try
 * gave (its driver and ops, or why it failed) is kept in its state and
 * never changes afterwards, so readers need no lock once `tried` is seen
 * under the registry's lock.
 */
#ifndef IMGTOOL_BLOCK_CORE_MODULES_H
#define IMGTOOL_BLOCK_CORE_MODULES_H

#include <stdbool.h>

#include "block/driver.h"

typedef struct BlockModuleState {
    bool tried;
    bool loaded;                   /* the try worked */
    const BlockDriver *driver;     /* stays loaded: nodes point into it */
    const void *ops;               /* imgtool_block_module_ops, or NULL */
    char error[512];               /* one line when the load failed */
} BlockModuleState;

typedef struct BlockModule {
    const char *name;              /* the driver's; file imgtool-NAME.so */
    const char *const *prefixes;   /* URL prefixes it owns, NULL-ended */
    const char *library;           /* what it links, for the message */
    const char *package;           /* the Debian package that has it */
    BlockModuleState *state;
    bool ops_only;                 /* no driver, only an ops table (pools'
                                    * XML readers on libxml2) */
} BlockModule;

/* Every module driver the build knows, NULL-name terminated. */
extern const BlockModule block_module_list[];

/* The module whose driver is named name / that owns filename's URL
 * prefix, or NULL. */
const BlockModule *block_module_named(const char *name);
const BlockModule *block_module_owning(const char *filename);

/* The module's driver, loading it on first use; NULL when it cannot be
 * loaded (block_module_error says why). */
const BlockDriver *block_module_load(const BlockModule *m);
/* Why m could not be loaded (one line), or NULL. */
const char *block_module_error(const BlockModule *m);

/* When the driver named drvname (or, drvname NULL, the one owning
 * filename) is a module that failed to load: fills err with why and
 * returns its negative errno; else 0.  Used where a driver was looked for
 * and not found, so that the message is the module's, not "unknown". */
int block_module_driver_error(const char *drvname, const char *filename,
                              Error *err);

#endif
