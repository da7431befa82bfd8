/*
 * xmlops.c - pools/' entry points for reading XML, which load the
 * imgtool-xml module on first use (pools/xmlops.h says why) and call
 * through its table.
 */
#include "pools/backend.h"
#include "pools/pool.h"
#include "pools/xmlops.h"

static int xml_ops(const PoolXmlOps **ops, Error *err)
{
    const void *p = NULL;
    int ret = block_module_ops("xml", &p, err);
    *ops = p;
    return ret;
}

int pool_def_parse(const char *xml, size_t len, PoolDef *d, Error *err)
{
    const PoolXmlOps *ops;
    int ret = xml_ops(&ops, err);
    return ret < 0 ? ret : ops->read_pool(xml, len, d, err);
}

int pool_vol_args_from_xml(const char *xml, size_t len, VolCreateArgs *a,
                           Error *err)
{
    const PoolXmlOps *ops;
    int ret = xml_ops(&ops, err);
    return ret < 0 ? ret : ops->read_vol(xml, len, a, err);
}

int pool_xml_validate(const char *xml, size_t len, const char *schema,
                      Error *err)
{
    const PoolXmlOps *ops;
    int ret = xml_ops(&ops, err);
    return ret < 0 ? ret : ops->validate(xml, len, schema, err);
}
