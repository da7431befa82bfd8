/*
 * opthelp.h - `-o help` for the commands that take format options
 * (create, amend, convert): spotting the request and printing a sorted
 * option list in qemu-img's layout.
 */
#ifndef IMGTOOL_OPTHELP_H
#define IMGTOOL_OPTHELP_H

#include <stdbool.h>
#include <stddef.h>

#include "block/block.h"

/* True when an -o string holds a "help" or "?" flag item, read as
 * qemu-img reads the list (see opthelp.c). */
bool opthelp_wanted(const char *s);

/* Prints title, then one "  name=<type>   - help" line per option,
 * sorted by name as qemu-img lists them; v is sorted in place. */
void opthelp_print(const char *title, const BlockCreateOpt **v, size_t n);

/* Prints the creation options of format drv as qemu-img create and
 * convert list them: with filename (the image to be created) the options
 * of the protocol that would hold it are merged in; without, options the
 * format only passes down to its file are left out and a note says so. */
void opthelp_print_create(const BlockDriver *drv, const char *filename);
/* The entry named name in a NULL-terminated option list, or NULL. */
const BlockCreateOpt *opthelp_find_opt(const BlockCreateOpt *list,
                                       const char *name);

#endif
