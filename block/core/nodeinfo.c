/*
 * nodeinfo.c - what callers may ask of a node or a driver without seeing
 * their structures (block.h keeps both opaque, so drivers can change
 * without touching commands).
 */
#include "block/driver.h"

const char *block_node_name(const BlockNode *n)
{
    return n->node_name;
}

const char *block_node_filename(const BlockNode *n)
{
    return n->filename;
}

const char *block_node_format(const BlockNode *n)
{
    return n->drv->name;
}

bool block_node_is_format(const BlockNode *n)
{
    return n->drv->kind == BLOCK_DRIVER_FORMAT;
}

bool block_node_read_only(const BlockNode *n)
{
    return n->read_only;
}

int block_node_flags(const BlockNode *n)
{
    return n->flags;
}

/* Filters are transparent: the backing node of a filter is that of what
 * it filters, so chain walks see the same chain with or without them. */
BlockNode *block_backing(BlockNode *n)
{
    while (n->drv->kind == BLOCK_DRIVER_FILTER && block_filtered(n)) {
        n = block_filtered(n);
    }
    return block_child(n, BLOCK_CHILD_BACKING);
}

const char *block_node_backing_file(const BlockNode *n)
{
    return n->backing_file;
}

const char *block_node_backing_format(const BlockNode *n)
{
    return n->backing_format;
}

const char *block_node_full_backing_filename(const BlockNode *n)
{
    return n->full_backing_filename;
}

BlockNode *block_node_storage(BlockNode *n)
{
    while (n && n->drv->kind != BLOCK_DRIVER_PROTOCOL) {
        n = block_file(n) ? block_file(n) : block_filtered(n);
    }
    return n;
}

bool block_node_has_data_file(BlockNode *n)
{
    return block_data_file(n) != NULL;
}

bool block_node_supports_backing(const BlockNode *n)
{
    return n->drv->supports_backing;
}

bool block_node_can_compress(const BlockNode *n)
{
    return n->caps.can_compress;
}

bool block_node_can_discard(const BlockNode *n)
{
    return n->caps.can_discard;
}

bool block_node_can_zero(const BlockNode *n)
{
    return n->caps.can_zero;
}

bool block_node_can_fast_zero(const BlockNode *n)
{
    return n->caps.can_fast_zero;
}

bool block_node_can_fua(const BlockNode *n)
{
    return n->caps.can_fua;
}

bool block_node_can_multi_conn(const BlockNode *n)
{
    return n->caps.can_multi_conn;
}

uint32_t block_node_alignment(const BlockNode *n)
{
    return n->request_alignment;
}

const BlockDriver *block_node_driver(const BlockNode *n)
{
    return n->drv;
}

const BlockDriver *block_find_format(const char *name)
{
    const BlockDriver *d = block_find_driver(name);
    return d && d->kind == BLOCK_DRIVER_FORMAT ? d : NULL;
}

bool block_driver_is_format(const BlockDriver *d)
{
    return d->kind == BLOCK_DRIVER_FORMAT;
}

const char *block_driver_name(const BlockDriver *d)
{
    return d->name;
}

bool block_driver_supports_backing(const BlockDriver *d)
{
    return d->supports_backing;
}

bool block_driver_can_compress(const BlockDriver *d)
{
    return d->can_compress != NULL;
}

bool block_driver_can_create(const BlockDriver *d)
{
    return d->create != NULL;
}

bool block_driver_can_measure(const BlockDriver *d)
{
    return d->measure != NULL;
}

const BlockCreateOpt *block_driver_create_opts(const BlockDriver *d)
{
    return d->create_opts;
}

const BlockCreateOpt *block_driver_amend_opts(const BlockDriver *d)
{
    if (!d->amend) {
        return NULL;
    }
    return d->amend_opts ? d->amend_opts : d->create_opts;
}
