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
/* The SQL name of the type of OID oid into buf ("text", "integer[]",
 * "interval", ...; for a type it does not know, its OID), for messages. */
void aorm__oid_describe(uint32_t oid, char *buf, size_t cap);
/* The SQL type of column c for DDL and casts: aorm__type_sql, or for an
 * AORM_ENUM column its enum type's quoted (schema-qualified) name written
 * into buf. NULL when there is none (or it does not fit in cap). */
const char *aorm__column_type_sql(const aorm_column *c, bool serial, char *buf, size_t cap);
/* The element type of an AORM_*_ARRAY type; 0 for the others. */
aorm_type aorm__type_elem(aorm_type t);
/* True for the types a multi-row INSERT can pass as one unnest() array
 * (AORM_BOOL .. AORM_JSONB); the others go as VALUES rows. */
bool aorm__type_unnest_ok(aorm_type t);
/* Enum descriptors: the label of C value `value` (NULL if none); the C
 * value of a label (0, or AORM_ETYPE for a label the descriptor lacks);
 * the C value at position i. */
const char *aorm__enum_label(const aorm_enum *e, int32_t value);
int aorm__enum_find(const aorm_enum *e, const char *label, size_t len, int32_t *value);
int aorm__enum_value_of(const aorm_enum *e, int i);
/* The json hooks (aorm_json_set_hooks): in = a loaded value (parse),
 * else a parameter (serialize). 0, or the hook's negative code. */
int aorm__json_check(bool in, const char *text, size_t len);
/* Copies the array of column col of obj (and its strings) into memory
 * from alloc, so that obj no longer shares it: for snapshots, which must
 * see later in-place edits as changes, and for arrays the program
 * assigned, which move into the session. Other columns are left alone.
 * Returns 0 or AORM_ENOMEM (the field unchanged). */
int aorm__field_own_array(const aorm_column *col, void *obj, const aorm_allocator *alloc);
/* Binds one value of type t held in its C representation at cval (an
 * aorm_interval, aorm_inet, int32_t enum value, aorm_array_*...), as a
 * field of that type would be (enum_type for AORM_ENUM). */
int aorm__value_param(aorm_type t, const aorm_enum *enum_type, const void *cval, aorm_params *p);
/* The C name of a column type ("AORM_TEXT"), for messages. */
const char *aorm__type_name(aorm_type t);
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

/* True when field a of oa and field b of ob hold the same non-NULL value:
 * a foreign key against the key it references (integers of any width
 * compare by value; otherwise the types must be equal; nullability may
 * differ). NULL equals nothing. */
bool aorm__field_same_value(const aorm_column *a, const void *oa, const aorm_column *b, const void *ob);

/* Stores the value of field src of `from` into field dst of `to` (a
 * foreign key taking its parent's key): integers converted between
 * widths, nullability added or dropped (NULL into a NOT NULL field gives
 * its zero value), strings and byte arrays shared, not copied. Fields of
 * unrelated types are left alone. */
void aorm__field_copy_value(const aorm_column *dst, void *to, const aorm_column *src, const void *from);

/* One column of many objects as a C array, for a Core array parameter
 * (AORM_X_ARRAY of `type`: int2/int4 columns as int32_t, int8 as
 * int64_t, text as const char *, uuid as 16 bytes). nulls[i] marks NULL
 * fields (nulls is NULL when there are none). Strings are borrowed from
 * the objects. */
typedef struct aorm__gathered {
    aorm_type type;
    void *data;
    bool *nulls;
    size_t n;
} aorm__gathered;

/* The array element type a column gathers to, or 0 when it has none
 * (only int2/int4/int8/text/uuid key columns do). */
aorm_type aorm__field_array_type(const aorm_column *col);
/* Gathers column col of objs[0..n). Returns 0, AORM_ETYPE (no array form)
 * or AORM_ENOMEM; free with aorm__gathered_free (also after an error). */
int aorm__field_gather(const aorm_column *col, const void *const *objs, size_t n, aorm__gathered *g);
void aorm__gathered_free(aorm__gathered *g);

struct aorm_stmt;
/* Adds to q's WHERE "columns cols[0..k) of model m hold the key that
 * columns src[0..k) hold in one of objs[0..n)": `c = ANY($1)` for one
 * column, `(c1, c2) IN (SELECT * FROM unnest($1, $2))` for several; one
 * array parameter per column whatever n, so the text is the same for any
 * count. Every src column must have an array form
 * (aorm__field_array_type). Returns 0 or the statement's error. */
int aorm__where_key_in(struct aorm_stmt *q, const aorm_model *m, const aorm_column *const *cols,
                       const aorm_column *const *src, int k, void *const *objs, size_t n);

/* aorm_insert_objects() with the column set chosen by the caller: omit[i]
 * true leaves column i of the statement's model out of the INSERT (for
 * every row), false writes the field's value, whatever it is; omit NULL
 * is aorm_insert_objects() itself (aorm__field_unset of the first row).
 * Defined in src/sql/stmt.c. Returns 0 or the statement's error. */
int aorm__insert_objects_cols(struct aorm_stmt *q, const void *const *objs, size_t n, const bool *omit);

/* ---- keys of foreign keys and relationships ----------------------------------- */

/* The column pairs of a key: from[i] (a column of the referencing model)
 * holds the value of to[i] (a column of the referenced model; for
 * relationships, its primary key in declaration order). */
typedef struct aorm__keymap {
    int n;
    const aorm_column *from[AORM_KEY_MAX];
    const aorm_column *to[AORM_KEY_MAX];
} aorm__keymap;

/* The foreign-key fields of a relationship as offsets (n of them in *n):
 * its composite list or its single fk_offset; for many-to-many, the
 * association's local (which = 0) or remote (which = 1) fields. */
const size_t *aorm__rel_fields(const aorm_relationship *r, int which, int *n);

/* The key of relationship r of `owner`: many-to-one, owner's FK columns ->
 * target's primary key; one-to-many, target's FK columns -> owner's
 * primary key; many-to-many, which = 0 the association's local columns ->
 * owner's key, which = 1 its remote columns -> target's key. Returns 0, or
 * AORM_EMISUSE when the declaration does not resolve (aorm_model_validate
 * says why). */
int aorm__rel_keymap(const aorm_model *owner, const aorm_relationship *r, int which, aorm__keymap *km);

/* Adds `JOIN joined ON from.f1 = to.t1 AND ...` to the SELECT q, the
 * column pairs of km in order (km->from[i] a column of `from`, km->to[i]
 * one of `to`). The key-equality expression is built in one place
 * (src/sql/stmt.c) for aorm_join_rel() and the loaders. Returns 0 or the
 * statement's error. */
int aorm__join_key(struct aorm_stmt *q, const aorm_model *joined, const aorm_model *from, const aorm_model *to,
                   const aorm__keymap *km);

/* The referencing fields of a foreign key (n in *n) and the referenced ones. */
const size_t *aorm__fk_fields(const aorm_foreign_key *fk, int *n);
const size_t *aorm__fk_target_fields(const aorm_foreign_key *fk, int *n);

/* Orders two objects by column col (NULLs first; text by bytes, as the C
 * collation does; numeric approximately, through double). Returns <0, 0,
 * >0. Used to order collections filled from joined rows. */
int aorm__field_compare(const aorm_column *col, const void *a, const void *b);

#endif /* AORM_MAPPING_H */
