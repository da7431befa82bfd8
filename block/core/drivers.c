/* drivers.c - the one table every driver is registered in: built-in
 * drivers in block_driver_list, drivers in loadable modules (see
 * modules.c) in block_module_list with the URL prefixes they own. */
#include <string.h>

#include "block/core/modules.h"

extern const BlockDriver file_driver;
extern const BlockDriver raw_driver;
extern const BlockDriver qcow2_driver;
extern const BlockDriver luks_driver;
extern const BlockDriver faulty_driver;
extern const BlockDriver blkdebug_driver;
extern const BlockDriver fleece_driver;
extern const BlockDriver linear_driver;

/* Probe order matters only for ties; raw is the fallback and never
 * claims a file by content. */
const BlockDriver *const block_driver_list[] = {
    &qcow2_driver,
    &luks_driver,
    &raw_driver,
    &file_driver,
    &faulty_driver,
    &blkdebug_driver,
    &fleece_driver,
    &linear_driver,
    NULL,
};

/* Loadable modules (modules/meson.build builds them): the URL prefixes
 * each owns, and the library it links with the package that has it, for
 * the message when it cannot be loaded. */
static const char *const nbd_prefixes[] = {
    "nbd:", "nbds:", "nbd+", "nbds+", NULL,
};
static const char *const iscsi_prefixes[] = { "iscsi://", NULL };
static const char *const gluster_prefixes[] = {
    "gluster://", "gluster+tcp://", "gluster+unix://", "gluster+rdma://",
    NULL,
};
static const char *const no_prefixes[] = { NULL };
static BlockModuleState nbd_state, iscsi_state, gluster_state, xml_state;

const BlockModule block_module_list[] = {
    { "nbd", nbd_prefixes, "libnbd", "libnbd0", &nbd_state, false },
    { "iscsi", iscsi_prefixes, "libiscsi", "libiscsi7", &iscsi_state, false },
    { "gluster", gluster_prefixes, "libgfapi", "libgfapi0", &gluster_state,
      false },
    /* pools/xmlops.h: libvirt's XML read on libxml2 */
    { "xml", no_prefixes, "libxml2", "libxml2", &xml_state, true },
    { NULL, NULL, NULL, NULL, NULL, false },
};

const char *block_known_driver(size_t i, bool *module)
{
    size_t nb = 0;
    while (block_driver_list[nb]) {
        nb++;
    }
    if (i < nb) {
        *module = false;
        return block_driver_list[i]->name;
    }
    size_t seen = nb;
    for (size_t k = 0; block_module_list[k].name; k++) {
        if (block_module_list[k].ops_only) {
            continue;       /* a module, but no driver */
        }
        if (seen++ == i) {
            *module = true;
            return block_module_list[k].name;
        }
    }
    return NULL;
}

const char *block_known_module(size_t i, const char **library)
{
    for (size_t k = 0; block_module_list[k].name; k++) {
        if (k == i) {
            *library = block_module_list[k].library;
            return block_module_list[k].name;
        }
    }
    return NULL;
}

const BlockDriver *block_find_driver(const char *name)
{
    for (int i = 0; block_driver_list[i]; i++) {
        /* A driver written for another contract is not used at all. */
        if (block_driver_list[i]->api_version != BLOCK_DRIVER_API_VERSION) {
            continue;
        }
        if (strcmp(block_driver_list[i]->name, name) == 0) {
            return block_driver_list[i];
        }
    }
    /* qemu-img accepts "host_device" for block devices; the file driver
     * handles both. */
    if (strcmp(name, "host_device") == 0) {
        return block_find_driver("file");
    }
    const BlockModule *m = block_module_named(name);
    return m && !m->ops_only ? block_module_load(m) : NULL;
}

const BlockDriver *block_protocol_for(const char *filename)
{
    for (int i = 0; filename && block_driver_list[i]; i++) {
        const BlockDriver *d = block_driver_list[i];
        if (d->kind == BLOCK_DRIVER_PROTOCOL && d->owns_filename &&
            d->owns_filename(filename)) {
            return d;
        }
    }
    /* A URL a module owns is never a local file name, loaded or not. */
    const BlockModule *m = block_module_owning(filename);
    return m ? block_module_load(m) : block_find_driver("file");
}
