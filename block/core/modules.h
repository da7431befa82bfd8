/*
 * modules.h - the registry's view of drivers that live in loadable
 * modules (block/core/modules.c).  Internal to block/core.
 */
#ifndef IMGTOOL_BLOCK_CORE_MODULES_H
#define IMGTOOL_BLOCK_CORE_MODULES_H

#include "block/driver.h"

typedef struct BlockModule {
    const char *name;              /* the driver's name */
    const char *module;            /* file imgtool-<module>.so */
    const char *const *prefixes;   /* URL prefixes it owns, NULL-ended */
    const BlockDriver **loaded;    /* where the loaded driver is kept */
} BlockModule;

/* The module's driver, loading it on first use; NULL when it cannot be
 * loaded (block_module_error says why, when the loader said anything). */
const BlockDriver *block_module_load(const BlockModule *m);
const char *block_module_error(void);

/* Every module driver the build knows, NULL-name terminated. */
extern const BlockModule block_module_list[];

#endif
