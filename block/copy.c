/* copy.c - the copy engine (see copy.h); filled in by the convert work. */
#include "block/block.h"
