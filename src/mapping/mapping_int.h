/* mapping_int.h -- private to src/mapping: facts about column types that
 * model validation and DDL share with the field codecs (field.c). */
#ifndef AORM_MAPPING_INT_H
#define AORM_MAPPING_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "aorm/model.h"

/* True for the values of aorm_type. */
bool aorm__type_valid(aorm_type t);

/* The enum's spelling ("AORM_INT8") for messages; "an invalid type" for
 * values outside the enum. Never NULL. */
const char *aorm__type_name(aorm_type t);

/* sizeof the C field that holds type t (the aorm_opt_* form when
 * nullable), or 0 for an invalid type. */
size_t aorm__type_csize(aorm_type t, bool nullable);

/* True for AORM_INT2 / AORM_INT4 / AORM_INT8. */
bool aorm__type_is_integer(aorm_type t);

#endif /* AORM_MAPPING_INT_H */
