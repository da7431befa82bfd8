#include <errno.h>
#include "pools/backend.h"
static int stub(PoolDef *d, Error *err) { (void)d; return error_setf(err, ENOTSUP, "not yet"); }
const PoolBackend pool_backend_logical = { .type = "logical", .def_check = stub };
