/** @file model.h
 * mapping plain C structs to tables.
 *
 * A model is a `const aorm_model` that describes one of your structs: its
 * table, its columns (which field, which SQL type, nullability, primary
 * key, defaults, uniqueness), its foreign keys and its relationships. You
 * declare it once, next to the struct; aorm never changes the struct's
 * layout and keeps any state of its own (loaded snapshots, relationship
 * load state) outside it.
 *
 *   typedef struct author {
 *       int64_t id;
 *       char *name;
 *       aorm_opt_int32 born;          // nullable int
 *       aorm_list books;              // one-to-many: struct book *
 *   } author;
 *
 *   static const aorm_column author_columns[] = {
 *       AORM_COLUMN(author, id, AORM_INT8, AORM_PK | AORM_SERIAL),
 *       AORM_COLUMN(author, name, AORM_TEXT, 0),
 *       AORM_COLUMN(author, born, AORM_INT4, AORM_NULLABLE),
 *   };
 *   static const aorm_relationship author_rels[] = {
 *       AORM_ONE_TO_MANY(author, books, book, author_id, .back_populates = "author"),
 *   };
 *   const aorm_model author_model = {
 *       AORM_MODEL_OF(author, "authors"),
 *       AORM_COLUMNS(author_columns),
 *       AORM_RELATIONSHIPS(author_rels),
 *   };
 *
 * Every macro takes the struct's type name and field names, never
 * strings: offsets and sizes come from offsetof/sizeof, and a field whose
 * C type does not match its declared SQL type (or nullability) is a
 * compile-time error ("field author.born does not match its column
 * type"). A model named `author_model` is what AORM_COL(author, field)
 * and the relationship macros refer to, so name models `<struct>_model`.
 *
 * C representation of each SQL type (the `_opt` form for NULLABLE
 * columns; a zeroed aorm_opt_* is NULL, so calloc'd objects start NULL):
 *
 *   AORM_BOOL        bool                 aorm_opt_bool
 *   AORM_INT2        int16_t              aorm_opt_int16
 *   AORM_INT4        int32_t              aorm_opt_int32
 *   AORM_INT8        int64_t              aorm_opt_int64
 *   AORM_FLOAT4      float                aorm_opt_float
 *   AORM_FLOAT8      double               aorm_opt_double
 *   AORM_DATE        int32_t (days since 2000-01-01)       aorm_opt_int32
 *   AORM_TIMESTAMP   int64_t (µs since 2000-01-01)         aorm_opt_int64
 *   AORM_TIMESTAMPTZ int64_t (µs since 2000-01-01 UTC)     aorm_opt_int64
 *   AORM_UUID        aorm_uuid            aorm_opt_uuid
 *   AORM_TEXT, AORM_JSON, AORM_JSONB, AORM_NUMERIC (decimal string)
 *                    char *   (NULL pointer = SQL NULL, only for NULLABLE)
 *   AORM_BYTEA       aorm_bytes {data, len} (data NULL = SQL NULL)
 *   AORM_INTERVAL    aorm_interval {usecs, days, months}   aorm_opt_interval
 *   AORM_INET, AORM_CIDR  aorm_inet {family, bits, addr}  aorm_opt_inet
 *   AORM_ENUM        a C enum or int32_t (.enum_type = &descriptor)  aorm_opt_int32
 *   AORM_*_ARRAY     aorm_array_* {v, n} (v NULL = SQL NULL when NULLABLE):
 *                    BOOL bool, INT2 int16, INT4 int32, INT8 and TIMESTAMPTZ
 *                    int64, FLOAT4 float, FLOAT8 double, TEXT and NUMERIC
 *                    text, UUID uuid
 *
 * json / jsonb stay text in C; aorm_json_set_hooks() (result.h) plugs a
 * JSON library in to check or normalize them on the way in and out.
 *
 * Handles and ownership: no handles. Models, columns, foreign keys and
 * relationships are constant declarations of the program (usually
 * `static const` at file scope) that must outlive every engine and
 * session using them; aorm only reads them. Objects of a model belong to
 * the session that made or loaded them (session.h); an object loaded with
 * a NULL aorm_allocator owns malloc'd strings freed with
 * aorm_model_free_fields().
 *
 * Callbacks: none; every function here may be called from any callback.
 *
 * C only: the declaration macros (AORM_COLUMN, AORM_FOREIGN_KEY*,
 * AORM_MANY_TO_ONE and friends, AORM_SOME) rely on C11: _Generic for the
 * compile-time type checks, compound literals for key lists and
 * designated initializers in any order. A C++ program declares its
 * models in a C file and uses them through `extern const aorm_model`
 * declarations; the types and functions of this header are C++-clean
 * (tests/header_check).
 */
#ifndef AORM_MODEL_H
#define AORM_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- column types and their C representations ------------------------- */

typedef enum aorm_type {
    AORM_BOOL = 1,
    AORM_INT2,
    AORM_INT4,
    AORM_INT8,
    AORM_FLOAT4,
    AORM_FLOAT8,
    AORM_NUMERIC,
    AORM_TEXT,
    AORM_BYTEA,
    AORM_DATE,
    AORM_TIMESTAMP,
    AORM_TIMESTAMPTZ,
    AORM_UUID,
    AORM_JSON,
    AORM_JSONB,
    AORM_INTERVAL,          /**< aorm_interval / aorm_opt_interval */
    AORM_INET,              /**< aorm_inet / aorm_opt_inet (host address, optional netmask) */
    AORM_CIDR,              /**< aorm_inet / aorm_opt_inet (network) */
    AORM_ENUM,              /**< a C enum (or int32_t) / aorm_opt_int32; column's enum_type names the labels */
    AORM_BOOL_ARRAY,        /**< boolean[]: aorm_array_bool */
    AORM_INT2_ARRAY,        /**< smallint[]: aorm_array_int16 */
    AORM_INT4_ARRAY,        /**< integer[]: aorm_array_int32 */
    AORM_INT8_ARRAY,        /**< bigint[]: aorm_array_int64 */
    AORM_FLOAT4_ARRAY,      /**< real[]: aorm_array_float */
    AORM_FLOAT8_ARRAY,      /**< double precision[]: aorm_array_double */
    AORM_NUMERIC_ARRAY,     /**< numeric[]: aorm_array_text (decimal strings) */
    AORM_TEXT_ARRAY,        /**< text[]: aorm_array_text */
    AORM_UUID_ARRAY,        /**< uuid[]: aorm_array_uuid */
    AORM_TIMESTAMPTZ_ARRAY  /**< timestamp with time zone[]: aorm_array_int64 (µs since 2000-01-01 UTC) */
} aorm_type;

/** The last value of aorm_type. */
#define AORM_TYPE_LAST AORM_TIMESTAMPTZ_ARRAY

typedef struct aorm_uuid { uint8_t b[16]; } aorm_uuid;
typedef struct aorm_bytes { uint8_t *data; size_t len; } aorm_bytes;

typedef struct aorm_opt_bool { bool valid; bool value; } aorm_opt_bool;
typedef struct aorm_opt_int16 { bool valid; int16_t value; } aorm_opt_int16;
typedef struct aorm_opt_int32 { bool valid; int32_t value; } aorm_opt_int32;
typedef struct aorm_opt_int64 { bool valid; int64_t value; } aorm_opt_int64;
typedef struct aorm_opt_float { bool valid; float value; } aorm_opt_float;
typedef struct aorm_opt_double { bool valid; double value; } aorm_opt_double;
typedef struct aorm_opt_uuid { bool valid; aorm_uuid value; } aorm_opt_uuid;

/** An interval as PostgreSQL keeps it: three independent parts (a month
 * is not a number of days, a day is not 24 hours across a DST change). */
typedef struct aorm_interval {
    int64_t usecs;   /**< microseconds */
    int32_t days;
    int32_t months;
} aorm_interval;
typedef struct aorm_opt_interval { bool valid; aorm_interval value; } aorm_opt_interval;

/** inet / cidr: family AORM_INET_V4 (4 address bytes used) or
 * AORM_INET_V6 (16), the netmask length in bits (32 / 128 for a plain
 * host address), the address in network byte order. */
enum { AORM_INET_V4 = 4, AORM_INET_V6 = 6 };
typedef struct aorm_inet {
    uint8_t family;
    uint8_t bits;
    uint8_t addr[16];
} aorm_inet;
typedef struct aorm_opt_inet { bool valid; aorm_inet value; } aorm_opt_inet;

/** Array columns: `n` elements at `v`. Loaded arrays live in the session
 * that loaded them (their region; malloc'd with a NULL aorm_allocator).
 * SQL NULL is `v == NULL` in a NULLABLE column; in a NOT NULL column
 * `v == NULL` is the empty array. A loaded empty array has a non-NULL `v`
 * and n 0. Only one-dimensional arrays are mapped; NULL elements exist only
 * in aorm_array_text (a NULL pointer), elsewhere they are refused at load.
 * A session detects changes by content: writing `a->tags.v[1] = 7` in place
 * is a change, flushed as one UPDATE of the column. Arrays the program
 * assigns are copied into the session at flush. */
typedef struct aorm_array_bool { bool *v; size_t n; } aorm_array_bool;
typedef struct aorm_array_int16 { int16_t *v; size_t n; } aorm_array_int16;
typedef struct aorm_array_int32 { int32_t *v; size_t n; } aorm_array_int32;
typedef struct aorm_array_int64 { int64_t *v; size_t n; } aorm_array_int64;
typedef struct aorm_array_float { float *v; size_t n; } aorm_array_float;
typedef struct aorm_array_double { double *v; size_t n; } aorm_array_double;
typedef struct aorm_array_text { char **v; size_t n; } aorm_array_text;
typedef struct aorm_array_uuid { aorm_uuid *v; size_t n; } aorm_array_uuid;

/** A PostgreSQL enum type mapped to C values, declared once:
 *
 *   typedef enum mood { MOOD_SAD = 1, MOOD_OK, MOOD_HAPPY } mood;
 *   static const char *const mood_labels[] = {"sad", "ok", "happy"};
 *   static const int mood_values[] = {MOOD_SAD, MOOD_OK, MOOD_HAPPY};
 *   const aorm_enum mood_enum = {"mood", NULL, mood_labels, mood_values, 3};
 *   ... AORM_COLUMN(person, mood, AORM_ENUM, 0, .enum_type = &mood_enum) ...
 *
 * labels[i] is the label of C value values[i] (values NULL: value i), in
 * the type's sort order. DDL (aorm_ddl_create_sql) writes CREATE TYPE
 * name AS ENUM (labels...) before the tables that use it, DROP TYPE after
 * them. Values travel as their labels; a label the descriptor does not
 * have is a load error naming the column. */
typedef struct aorm_enum {
    const char *name;            /**< SQL type name (quoted when used) */
    const char *schema;          /**< or NULL for the search path */
    const char *const *labels;
    const int *values;           /**< or NULL: 0 .. n-1 */
    int n;
} aorm_enum;

/** Values for nullable fields: `a->born = AORM_SOME(aorm_opt_int32, 1929);`
 * and `a->born = AORM_NONE(aorm_opt_int32);`. */
#define AORM_SOME(T, v) ((T){true, (v)})
#define AORM_NONE(T) ((T){0})

/** A relationship collection (one-to-many, many-to-many): an array of
 * pointers to objects of the target model. Filled by loaders and the
 * session; `items` is owned by the session that loaded it. */
typedef struct aorm_list {
    void **items;
    size_t len;
    size_t cap;
} aorm_list;

#define AORM_LIST_AT(list, T, i) ((T *)(list).items[(i)])

/* ---- columns -------------------------------------------------------------- */

enum {
    AORM_PK = 1u << 0,       /**< part of the primary key (several = composite key) */
    AORM_NULLABLE = 1u << 1, /**< NULL allowed (use the aorm_opt_* / pointer form) */
    AORM_UNIQUE = 1u << 2,   /**< UNIQUE constraint on this column alone */
    AORM_SERIAL = 1u << 3,   /**< serial / bigserial: the server generates it */
    AORM_IDENTITY = 1u << 4, /**< GENERATED BY DEFAULT AS IDENTITY */
    AORM_INDEX = 1u << 5     /**< plain index on this column */
};

typedef struct aorm_column {
    const char *name;           /**< column name; the field's name */
    size_t offset;              /**< offsetof(struct, field) */
    size_t size;                /**< sizeof the field */
    aorm_type type;
    unsigned flags;             /**< AORM_PK | AORM_NULLABLE | ... */
    /** SQL expression from the model's author, e.g. "now()"; or NULL. DDL
     * writes it into CREATE TABLE as is (it is SQL, not a value): it must
     * be a constant of the program, never built from user input.
     * At INSERT, a C field cannot say "unset": a session writes the
     * field's value, 0 / false / NULL included, unless the program left
     * the column to the server for that object with
     * aorm_object_use_default() (session.h), whose value is then read
     * back. Core's aorm_insert_object() writes the field's value the
     * same way, unless the column is given to aorm_insert_use_default()
     * (sql.h). */
    const char *server_default;
    /** AORM_ENUM columns: the enum type (required); NULL otherwise. */
    const aorm_enum *enum_type;
    int aorm_reserved;          /**< lets the declaration macros end without a trailing option */
} aorm_column;

/* ---- compile-time checks ---------------------------------------------------
 * AORM__FIELD_OK is 1 when field f of S has the C type of SQL type T with
 * the nullability in flags F. */
#define AORM__NULLABLE(F) (((F) & AORM_NULLABLE) != 0)
#define AORM__FIELD_OK(S, f, T, F)                                                               \
    _Generic((((S *)0)->f),                                                                      \
        bool: (T) == AORM_BOOL && !AORM__NULLABLE(F),                                            \
        int16_t: (T) == AORM_INT2 && !AORM__NULLABLE(F),                                         \
        int32_t: ((T) == AORM_INT4 || (T) == AORM_DATE || (T) == AORM_ENUM) && !AORM__NULLABLE(F), \
        unsigned int: (T) == AORM_ENUM && !AORM__NULLABLE(F),                                    \
        int64_t: ((T) == AORM_INT8 || (T) == AORM_TIMESTAMP || (T) == AORM_TIMESTAMPTZ) &&       \
                     !AORM__NULLABLE(F),                                                         \
        float: (T) == AORM_FLOAT4 && !AORM__NULLABLE(F),                                         \
        double: (T) == AORM_FLOAT8 && !AORM__NULLABLE(F),                                        \
        aorm_uuid: (T) == AORM_UUID && !AORM__NULLABLE(F),                                       \
        aorm_opt_bool: (T) == AORM_BOOL && AORM__NULLABLE(F),                                    \
        aorm_opt_int16: (T) == AORM_INT2 && AORM__NULLABLE(F),                                   \
        aorm_opt_int32: ((T) == AORM_INT4 || (T) == AORM_DATE || (T) == AORM_ENUM) && AORM__NULLABLE(F), \
        aorm_interval: (T) == AORM_INTERVAL && !AORM__NULLABLE(F),                               \
        aorm_opt_interval: (T) == AORM_INTERVAL && AORM__NULLABLE(F),                            \
        aorm_inet: ((T) == AORM_INET || (T) == AORM_CIDR) && !AORM__NULLABLE(F),                 \
        aorm_opt_inet: ((T) == AORM_INET || (T) == AORM_CIDR) && AORM__NULLABLE(F),              \
        aorm_array_bool: (T) == AORM_BOOL_ARRAY,                                                 \
        aorm_array_int16: (T) == AORM_INT2_ARRAY,                                                \
        aorm_array_int32: (T) == AORM_INT4_ARRAY,                                                \
        aorm_array_int64: (T) == AORM_INT8_ARRAY || (T) == AORM_TIMESTAMPTZ_ARRAY,               \
        aorm_array_float: (T) == AORM_FLOAT4_ARRAY,                                              \
        aorm_array_double: (T) == AORM_FLOAT8_ARRAY,                                             \
        aorm_array_text: (T) == AORM_TEXT_ARRAY || (T) == AORM_NUMERIC_ARRAY,                    \
        aorm_array_uuid: (T) == AORM_UUID_ARRAY,                                                 \
        aorm_opt_int64: ((T) == AORM_INT8 || (T) == AORM_TIMESTAMP || (T) == AORM_TIMESTAMPTZ) && \
                            AORM__NULLABLE(F),                                                   \
        aorm_opt_float: (T) == AORM_FLOAT4 && AORM__NULLABLE(F),                                 \
        aorm_opt_double: (T) == AORM_FLOAT8 && AORM__NULLABLE(F),                                \
        aorm_opt_uuid: (T) == AORM_UUID && AORM__NULLABLE(F),                                    \
        char *: (T) == AORM_TEXT || (T) == AORM_JSON || (T) == AORM_JSONB || (T) == AORM_NUMERIC, \
        aorm_bytes: (T) == AORM_BYTEA,                                                           \
        default: 0)

/** Evaluates to 0, or stops the compilation with `msg` when cond is false
 * (a static assertion usable inside an initializer). */
#define AORM__STATIC_CHECK(cond, msg) (0 * sizeof(struct { _Static_assert(cond, msg); char aorm_c_; }))

/** AORM__FIRST(a, ...) is a; AORM__REST(a, ...) is what follows it. The
 * declaration macros take their last required argument inside `...` and
 * append a filler (.aorm_reserved = 0), so that a call without options
 * still passes one variadic argument (ISO C11 requires at least one). */
#define AORM__FIRST(a, ...) a
#define AORM__REST(a, ...) __VA_ARGS__

/** One column: AORM_COLUMN(S, field, TYPE, FLAGS [, .server_default = "now()"]). */
#define AORM_COLUMN(S, f, T, ...)                                                                    \
    {                                                                                                \
        .name = #f,                                                                                  \
        .offset = offsetof(S, f) +                                                                   \
                  AORM__STATIC_CHECK(AORM__FIELD_OK(S, f, T, AORM__FIRST(__VA_ARGS__, 0)),           \
                                     "field " #S "." #f " does not match its column type"),          \
        .size = sizeof(((S *)0)->f), .type = (T), .flags = AORM__FIRST(__VA_ARGS__, 0),              \
        AORM__REST(__VA_ARGS__, .aorm_reserved = 0)                                                  \
    }

/* ---- foreign keys ------------------------------------------------------- */

typedef enum aorm_fk_action {
    AORM_FK_NO_ACTION = 0, AORM_FK_CASCADE, AORM_FK_SET_NULL, AORM_FK_RESTRICT
} aorm_fk_action;

struct aorm_model;

/** Most columns a composite key (primary or foreign) may have. */
#define AORM_KEY_MAX 8

typedef struct aorm_foreign_key {
    size_t offset;                   /**< the referencing field of this model (single-column form) */
    const struct aorm_model *target;
    size_t target_offset;            /**< the referenced field of the target model (single-column form) */
    aorm_fk_action on_delete;
    /** Composite form (AORM_FOREIGN_KEY_COMPOSITE): `ncolumns` referencing
     * fields of this model and, at the same positions, the fields of the
     * target they reference. ncolumns 0 means the single-column form. */
    const size_t *offsets;
    const size_t *target_offsets;
    int ncolumns;
    int aorm_reserved;
} aorm_foreign_key;

/** AORM_FOREIGN_KEY(S, f, T, tf [, .on_delete = AORM_FK_CASCADE]): field f
 * of S references field tf of model T (struct T, model T##_model). */
#define AORM_FOREIGN_KEY(S, f, T, ...)                                                  \
    {                                                                                   \
        .offset = offsetof(S, f), .target = &T##_model,                                 \
        .target_offset = offsetof(T, AORM__FIRST(__VA_ARGS__, 0)),                      \
        AORM__REST(__VA_ARGS__, .aorm_reserved = 0)                                     \
    }

/* AORM__OFFSETS(S, (a, b, ...)) is a `const size_t[]` of the offsets of
 * fields a, b, ... of S (1 to AORM_KEY_MAX of them); AORM__COUNT((a, b))
 * is how many. The arrays are compound literals: declare models at file
 * scope, where they have static storage. */
#define AORM__CAT(a, b) AORM__CAT_(a, b)
#define AORM__CAT_(a, b) a##b
#define AORM__NARGS(...) AORM__NARGS_(__VA_ARGS__, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define AORM__NARGS_(a1, a2, a3, a4, a5, a6, a7, a8, n, ...) n
#define AORM__UNPAREN(...) __VA_ARGS__
#define AORM__OFF1(S, a) offsetof(S, a)
#define AORM__OFF2(S, a, ...) offsetof(S, a), AORM__OFF1(S, __VA_ARGS__)
#define AORM__OFF3(S, a, ...) offsetof(S, a), AORM__OFF2(S, __VA_ARGS__)
#define AORM__OFF4(S, a, ...) offsetof(S, a), AORM__OFF3(S, __VA_ARGS__)
#define AORM__OFF5(S, a, ...) offsetof(S, a), AORM__OFF4(S, __VA_ARGS__)
#define AORM__OFF6(S, a, ...) offsetof(S, a), AORM__OFF5(S, __VA_ARGS__)
#define AORM__OFF7(S, a, ...) offsetof(S, a), AORM__OFF6(S, __VA_ARGS__)
#define AORM__OFF8(S, a, ...) offsetof(S, a), AORM__OFF7(S, __VA_ARGS__)
#define AORM__OFFS_(S, ...) AORM__CAT(AORM__OFF, AORM__NARGS(__VA_ARGS__))(S, __VA_ARGS__)
#define AORM__OFFSETS(S, list) ((const size_t[]){AORM__OFFS_(S, AORM__UNPAREN list)})
#define AORM__COUNT_(...) AORM__NARGS(__VA_ARGS__)
#define AORM__COUNT(list) AORM__COUNT_(AORM__UNPAREN list)

/** AORM_FOREIGN_KEY_COMPOSITE(S, (f1, f2, ...), T, (t1, t2, ...) [, options]):
 * fields f1, f2... of S together reference fields t1, t2... of model T
 * (its primary key, or a unique index over exactly those fields). Both
 * lists in parentheses, of equal length, at most AORM_KEY_MAX. */
#define AORM_FOREIGN_KEY_COMPOSITE(S, fields, T, ...)                                              \
    {                                                                                              \
        .offsets = AORM__OFFSETS(S, fields), .target = &T##_model,                                 \
        .ncolumns = AORM__COUNT(fields) +                                                          \
                    AORM__STATIC_CHECK(AORM__COUNT(fields) == AORM__COUNT(AORM__FIRST(__VA_ARGS__, 0)), \
                                       "foreign key of " #S ": the two field lists differ in length"), \
        .target_offsets = AORM__OFFSETS(T, AORM__FIRST(__VA_ARGS__, 0)),                           \
        AORM__REST(__VA_ARGS__, .aorm_reserved = 0)                                                \
    }

/* ---- relationships -------------------------------------------------------- */

typedef enum aorm_rel_kind { AORM_MANY_TO_ONE = 1, AORM_ONE_TO_MANY, AORM_MANY_TO_MANY } aorm_rel_kind;

/** How a relationship is loaded when a query does not say (see loaders.h):
 * raise (the default: reading it unloaded is an error), selectin, joined. */
typedef enum aorm_loader_kind { AORM_LOAD_RAISE = 0, AORM_LOAD_SELECTIN, AORM_LOAD_JOINED } aorm_loader_kind;

enum {
    AORM_CASCADE_SAVE_UPDATE = 1u << 0, /**< adding the parent adds its children (on by default) */
    AORM_CASCADE_DELETE = 1u << 1,      /**< deleting the parent deletes its children */
    AORM_CASCADE_DELETE_ORPHAN = 1u << 2, /**< a child removed from the collection is deleted */
    AORM_CASCADE_NONE = 1u << 15        /**< explicitly nothing (turns save-update off) */
};

typedef struct aorm_relationship {
    const char *name;                /**< the field's name */
    aorm_rel_kind kind;
    size_t offset;                   /**< the field: target pointer (many-to-one) or aorm_list */
    const struct aorm_model *target;
    /** many-to-one: this model's FK field; one-to-many: the target's FK
     * field; many-to-many: unused */
    size_t fk_offset;
    /** many-to-many: the association model and its two FK fields (to this
     * model, to the target) */
    const struct aorm_model *secondary;
    size_t secondary_local;
    size_t secondary_remote;
    /** Composite keys (the _COMPOSITE macros): nfk fields in place of
     * fk_offset, listed in the order of the referenced primary key's
     * columns; for many-to-many, nlocal fields in place of
     * secondary_local and nremote in place of secondary_remote. A count
     * of 0 means the single field above. */
    const size_t *fk_offsets;
    int nfk;
    const size_t *secondary_locals;
    int nlocal;
    const size_t *secondary_remotes;
    int nremote;
    const char *back_populates;      /**< name of the inverse relationship on the target, or NULL */
    size_t order_by;                 /**< offset of a target field to order collections by... */
    bool has_order_by;               /**< ...when set (else by the target's primary key) */
    bool order_desc;
    unsigned cascade;                /**< AORM_CASCADE_* (0 = save-update) */
    aorm_loader_kind lazy;           /**< default loader: used when a query names no load plan
                                          (SELECTIN / JOINED; RAISE, the default, loads nothing) */
    int aorm_reserved;               /**< lets the declaration macros end without a trailing option */
} aorm_relationship;

#define AORM__IS_PTR_TO(S, f, T) _Generic((((S *)0)->f), T *: 1, default: 0)
#define AORM__IS_LIST(S, f) _Generic((((S *)0)->f), aorm_list: 1, default: 0)

/** AORM_MANY_TO_ONE(S, f, T, fk [, options]): S.f is a `T *`; S.fk
 * references T's primary key. */
#define AORM_MANY_TO_ONE(S, f, T, ...)                                                              \
    {                                                                                               \
        .name = #f, .kind = AORM_MANY_TO_ONE,                                                       \
        .offset = offsetof(S, f) +                                                                  \
                  AORM__STATIC_CHECK(AORM__IS_PTR_TO(S, f, T), #S "." #f " must be a " #T " pointer"), \
        .target = &T##_model, .fk_offset = offsetof(S, AORM__FIRST(__VA_ARGS__, 0)),                \
        AORM__REST(__VA_ARGS__, .aorm_reserved = 0)                                                 \
    }

/** AORM_ONE_TO_MANY(S, f, T, fk [, options]): S.f is an aorm_list of T;
 * T.fk references S's primary key. */
#define AORM_ONE_TO_MANY(S, f, T, ...)                                                              \
    {                                                                                               \
        .name = #f, .kind = AORM_ONE_TO_MANY,                                                       \
        .offset = offsetof(S, f) + AORM__STATIC_CHECK(AORM__IS_LIST(S, f), #S "." #f " must be an aorm_list"), \
        .target = &T##_model, .fk_offset = offsetof(T, AORM__FIRST(__VA_ARGS__, 0)),                \
        AORM__REST(__VA_ARGS__, .aorm_reserved = 0)                                                 \
    }

/** AORM_MANY_TO_MANY(S, f, T, A, a_local, a_remote [, options]): S.f is an
 * aorm_list of T through association model A, whose field a_local
 * references S's primary key and a_remote references T's. */
#define AORM_MANY_TO_MANY(S, f, T, A, a_local, ...)                                                 \
    {                                                                                               \
        .name = #f, .kind = AORM_MANY_TO_MANY,                                                      \
        .offset = offsetof(S, f) + AORM__STATIC_CHECK(AORM__IS_LIST(S, f), #S "." #f " must be an aorm_list"), \
        .target = &T##_model, .secondary = &A##_model, .secondary_local = offsetof(A, a_local),     \
        .secondary_remote = offsetof(A, AORM__FIRST(__VA_ARGS__, 0)),                               \
        AORM__REST(__VA_ARGS__, .aorm_reserved = 0)                                                 \
    }

/** Relationships over composite keys. The key lists are parenthesized
 * field names, in the order of the referenced primary key's columns, and
 * a matching AORM_FOREIGN_KEY_COMPOSITE must be declared (validation
 * checks it):
 *
 *   AORM_MANY_TO_ONE_COMPOSITE(S, f, T, (fk1, fk2) [, options])
 *       S.f is a `T *`; S.fk1, S.fk2 reference T's two-column primary key.
 *   AORM_ONE_TO_MANY_COMPOSITE(S, f, T, (fk1, fk2) [, options])
 *       S.f is an aorm_list of T; T.fk1, T.fk2 reference S's primary key.
 *   AORM_MANY_TO_MANY_COMPOSITE(S, f, T, A, (l1, l2), (r1, r2) [, options])
 *       S.f is an aorm_list of T through A; A.l1, A.l2 reference S's key,
 *       A.r1, A.r2 reference T's (either list may have a single field). */
#define AORM_MANY_TO_ONE_COMPOSITE(S, f, T, ...)                                                    \
    {                                                                                               \
        .name = #f, .kind = AORM_MANY_TO_ONE,                                                       \
        .offset = offsetof(S, f) +                                                                  \
                  AORM__STATIC_CHECK(AORM__IS_PTR_TO(S, f, T), #S "." #f " must be a " #T " pointer"), \
        .target = &T##_model, .fk_offsets = AORM__OFFSETS(S, AORM__FIRST(__VA_ARGS__, 0)),          \
        .nfk = AORM__COUNT(AORM__FIRST(__VA_ARGS__, 0)), AORM__REST(__VA_ARGS__, .aorm_reserved = 0) \
    }
#define AORM_ONE_TO_MANY_COMPOSITE(S, f, T, ...)                                                    \
    {                                                                                               \
        .name = #f, .kind = AORM_ONE_TO_MANY,                                                       \
        .offset = offsetof(S, f) + AORM__STATIC_CHECK(AORM__IS_LIST(S, f), #S "." #f " must be an aorm_list"), \
        .target = &T##_model, .fk_offsets = AORM__OFFSETS(T, AORM__FIRST(__VA_ARGS__, 0)),          \
        .nfk = AORM__COUNT(AORM__FIRST(__VA_ARGS__, 0)), AORM__REST(__VA_ARGS__, .aorm_reserved = 0) \
    }
#define AORM_MANY_TO_MANY_COMPOSITE(S, f, T, A, locals, ...)                                        \
    {                                                                                               \
        .name = #f, .kind = AORM_MANY_TO_MANY,                                                      \
        .offset = offsetof(S, f) + AORM__STATIC_CHECK(AORM__IS_LIST(S, f), #S "." #f " must be an aorm_list"), \
        .target = &T##_model, .secondary = &A##_model, .secondary_locals = AORM__OFFSETS(A, locals), \
        .nlocal = AORM__COUNT(locals), .secondary_remotes = AORM__OFFSETS(A, AORM__FIRST(__VA_ARGS__, 0)), \
        .nremote = AORM__COUNT(AORM__FIRST(__VA_ARGS__, 0)), AORM__REST(__VA_ARGS__, .aorm_reserved = 0) \
    }

/** Collections ordered by a target field: `AORM_ORDER_BY(book, year, false)`. */
#define AORM_ORDER_BY(T, f, desc) .order_by = offsetof(T, f), .has_order_by = true, .order_desc = (desc)

/* ---- models ----------------------------------------------------------------- */

typedef struct aorm_index {
    const char *name;      /**< NULL: "<table>_<first column>_idx" */
    const size_t *fields;  /**< offsets of the indexed fields, in order */
    int nfields;
    bool unique;
} aorm_index;

typedef struct aorm_model {
    const char *name;      /**< the struct's name */
    const char *table;     /**< table name (quoted when used) */
    const char *schema;    /**< schema name, or NULL for the search path */
    size_t size;           /**< sizeof the struct */
    const aorm_column *columns;
    int ncolumns;
    const aorm_foreign_key *foreign_keys;
    int nforeign_keys;
    const aorm_relationship *relationships;
    int nrelationships;
    const aorm_index *indexes;
    int nindexes;
} aorm_model;

#define AORM__LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define AORM_MODEL_OF(S, tablename) .name = #S, .table = (tablename), .size = sizeof(S)
#define AORM_COLUMNS(a) .columns = (a), .ncolumns = AORM__LEN(a)
#define AORM_FOREIGN_KEYS(a) .foreign_keys = (a), .nforeign_keys = AORM__LEN(a)
#define AORM_RELATIONSHIPS(a) .relationships = (a), .nrelationships = AORM__LEN(a)
#define AORM_INDEXES(a) .indexes = (a), .nindexes = AORM__LEN(a)

/* ---- model lookups ------------------------------------------------------------ */

/** Column of m stored at `offset`, or NULL. */
AORM_API const aorm_column *aorm_model_column_at(const aorm_model *m, size_t offset);
/** Column of m by name, or NULL. */
AORM_API const aorm_column *aorm_model_column(const aorm_model *m, const char *name);
/** Relationship of m by field name, or NULL. */
AORM_API const aorm_relationship *aorm_model_relationship(const aorm_model *m, const char *name);
/** Number of primary-key columns and the i-th one (in declaration order). */
AORM_API int aorm_model_pk_count(const aorm_model *m);
AORM_API const aorm_column *aorm_model_pk(const aorm_model *m, int i);

/** Checks a model's declaration beyond what the compiler can: at least one
 * primary-key column, no duplicate column names, foreign keys pointing at
 * declared columns of matching type, relationships consistent with the
 * foreign keys (a many-to-one needs an FK from its field to the target's
 * primary key, and so on), back_populates naming an existing inverse.
 * Returns 0, or AORM_EMISUSE and a description in msg (NUL-terminated,
 * truncated to cap). */
AORM_API int aorm_model_validate(const aorm_model *m, char *msg, size_t cap);

/* ---- objects <-> rows ----------------------------------------------------------- */

/** Where strings and byte arrays loaded into objects live: an allocator
 * (the session passes its arena). NULL means malloc, and the caller
 * releases an object's strings with aorm_model_free_fields(). */
typedef struct aorm_allocator {
    void *(*alloc)(void *ctx, size_t size);
    void *ctx;
} aorm_allocator;

/** Frees the text/json/numeric strings and bytea buffers of obj that were
 * malloc'd by a load with a NULL allocator, and sets them to NULL. Does
 * not free obj. */
AORM_API void aorm_model_free_fields(const aorm_model *m, void *obj);

#ifdef __cplusplus
}
#endif

#endif /* AORM_MODEL_H */
