/* mapping.h -- what src/mapping offers the other modules (sql/, the
 * session, the loaders): SQL types of columns, and moving one field of an
 * object to a bound parameter or from a result value.
 *
 * Not public: the functions use the aorm__ prefix and may change. */
#ifndef AORM_MAPPING_H
#define AORM_MAPPING_H

#include <stdbool.h>
#include <stdint.h>

#include "aorm/model.h"
#include "aorm/result.h"
#include "util/util.h"

/* PostgreSQL type OID of a column type, of its array type, and its SQL
 * name for DDL and casts ("bigint", "text", "timestamp with time zone",
 * ...; with serial = true, "bigserial"/"serial"/"smallserial" for the
 * integer types). */
uint32_t aorm__type_oid(aorm_type t);
uint32_t aorm__type_array_oid(aorm_type t);
const char *aorm__type_sql(aorm_type t, bool serial);

/* The field of col in obj. */
static inline void *aorm__field(const aorm_column *col, void *obj) { return (char *)obj + col->offset; }
static inline const void *aorm__cfield(const aorm_column *col, const void *obj) {
    return (const char *)obj + col->offset;
}

/* True when the field holds SQL NULL (NULL pointer, invalid aorm_opt_*,
 * NULL aorm_bytes.data). Never true for a non-nullable scalar. */
bool aorm__field_is_null(const aorm_column *col, const void *obj);

/* True when the field is "unset" in the sense of INSERT: a SERIAL or
 * IDENTITY column whose value is 0, or a server_default column whose
 * field is zero / NULL. Such columns are left to the server. */
bool aorm__field_unset(const aorm_column *col, const void *obj);

/* Appends the field's value to p as one binary parameter of the column's
 * type (NULL when aorm__field_is_null). Returns 0 or a negative code
 * (AORM_EENCODING for a NUL byte in text, a malformed numeric...). */
int aorm__field_param(const aorm_column *col, const void *obj, aorm_params *p);

/* Appends ONE binary array parameter holding column col of each of the n
 * objects (element type = column type; NULL elements allowed), for
 * `unnest($k::type[])` multi-row inserts. */
int aorm__field_param_array(const aorm_column *col, const void *const *objs, size_t n, aorm_params *p);

/* Stores a binary result value (len -1 = NULL) of type OID `oid` into the
 * field, converting where lossless (int2/int4 into an int64_t field, float4
 * into double...). Strings and byte arrays are copied with alloc (NULL:
 * malloc). AORM_ETYPE when the value cannot go into the field;
 * AORM_ENULLVALUE for NULL into a non-nullable field; AORM_EPROTOCOL for
 * malformed bytes. The field is unchanged on error. */
int aorm__field_load(const aorm_column *col, void *obj, uint32_t oid, const char *val, int len,
                     const aorm_allocator *alloc);

/* True when the two objects hold equal values in col (for change
 * detection: strings by content, aorm_bytes by content, floats by bit
 * pattern so that NaN equals NaN). */
bool aorm__field_equal(const aorm_column *col, const void *a, const void *b);

/* Orders two objects by column col (NULLs first; text by bytes, as the C
 * collation does; numeric approximately, through double). Returns <0, 0,
 * >0. Used to order collections filled from joined rows. */
int aorm__field_compare(const aorm_column *col, const void *a, const void *b);

#endif /* AORM_MAPPING_H */
