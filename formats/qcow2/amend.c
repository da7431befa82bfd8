/*
 * amend.c - qcow2 option amendment (qemu-img amend) (being written).
 */
#include "formats/qcow2/qcow2.h"
