/*
 * xml-module.c - the imgtool-xml module's entry: the readers of libvirt's
 * XML (poolxml-read.c, volxml-read.c, validate.c over xml.c) as one
 * PoolXmlOps table, the only symbol the module exports besides its
 * (empty) driver slot.  Built in when the build has no modules.
 */
#include "block/driver.h"
#include "pools/xml.h"
#include "pools/xmlops.h"

static const PoolXmlOps pool_xml_ops_table = {
    .read_pool = pxml_read_pool,
    .read_vol = pxml_read_vol,
    .validate = pxml_validate,
};

BLOCK_MODULE_OPS(pool_xml_ops_table);
