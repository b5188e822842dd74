/** @file sql.h
 * Core: the SQL expression language.
 *
 * Statements (aorm_stmt) are built from models and expressions and compile
 * to PostgreSQL text with $n placeholders plus typed binary parameters.
 * Values are always bound parameters and identifiers are always quoted:
 * nothing a caller passes is ever spliced into the SQL text. Equal
 * statement shapes compile to equal text (an IN list is one `= ANY($n)`
 * array parameter whatever its length), so the engine's prepared
 * statement cache hits.
 *
 *   aorm_stmt *q = aorm_select(&book_model);
 *   aorm_where(q, aorm_and(aorm_eq(AORM_COL(book, author_id), aorm_int8(42)),
 *                          aorm_lt(AORM_COL(book, price), aorm_float8(20.0))));
 *   aorm_order_by(q, AORM_COL(book, title), 0);
 *   aorm_limit(q, 10);
 *   aorm_stmt_execute(engine, q, NULL, on_rows, user);
 *   aorm_stmt_free(q);      // the engine copied what it needs
 *
 * Expressions are temporaries. The aorm_eq(), aorm_int8(), AORM_COL()...
 * macros build them as compound literals on the caller's stack; the
 * statement function they are passed to (aorm_where, aorm_set, ...)
 * copies the whole tree, including strings and arrays, into the
 * statement. Pass them directly; never keep one past the end of the
 * enclosing block.
 *
 * Beyond SELECT / INSERT / UPDATE / DELETE with joins, Core writes the
 * queries reports need: aliases and self-joins (AORM_ACOL), subqueries in
 * FROM and LATERAL, CTEs (several, recursive, data-modifying), window
 * functions, UNION / INTERSECT / EXCEPT, CASE, casts, any function by
 * name, JSON and array operators, INSERT ... SELECT, UPDATE ... FROM,
 * DELETE ... USING. Names a caller passes (aliases, CTE, column and
 * constraint names) are quoted identifiers of 1 to 63 bytes; function
 * and type names must be identifiers ([A-Za-z_][A-Za-z0-9_]*, optionally
 * schema-qualified) or the call fails with AORM_EMISUSE; JSON keys are
 * bound values. A statement handed to another (a subquery, a CTE, an arm
 * of a set operation) belongs to it from then on, also when the call
 * fails.
 *
 * Errors are sticky: a builder call that fails (NULL statement or
 * expression, a column of a model that is not part of the statement, a
 * text value holding a NUL byte, out of memory) returns the
 * code and records it; aorm_stmt_compile() and aorm_stmt_execute() then
 * return it too, with aorm_stmt_errmsg() saying what was wrong.
 *
 * Handles and ownership: aorm_stmt is made by a builder (aorm_select(),
 * aorm_insert(), ...) and owned by the caller, who frees it with
 * aorm_stmt_free() (NULL accepted) -- except where a call says it *takes
 * over* the statement (aorm_session_query() and the other session calls
 * do, also on error). Expressions are temporaries copied into the
 * statement (above). The compiled text of aorm_stmt_compile() belongs to
 * the statement.
 *
 * Callbacks: aorm_stmt_execute() calls back with the engine's
 * aorm_result_cb contract (engine.h). Builders may be called from any
 * callback.
 *
 * C only: the expression macros (AORM_COL, aorm_eq(), aorm_int8(), ...)
 * build C11 compound literals; a C++ program builds its statements in a C
 * file. The types and functions are C++-clean (tests/header_check).
 */
#ifndef AORM_SQL_H
#define AORM_SQL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "export.h"
#include "model.h"
#include "result.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aorm_stmt aorm_stmt;

/* ---- expressions ------------------------------------------------------------ */

typedef enum aorm_expr_kind {
    AORM_X_COLUMN = 1, /**< model + offset */
    AORM_X_VALUE,      /**< a bound value of type `type` (null: SQL NULL) */
    AORM_X_ARRAY,      /**< a bound 1-D array of `type` elements (n of them at p) */
    AORM_X_BINARY,     /**< a op b */
    AORM_X_AND,        /**< list */
    AORM_X_OR,         /**< list */
    AORM_X_NOT,        /**< a */
    AORM_X_IS_NULL,    /**< a */
    AORM_X_IS_NOT_NULL,/* a */
    AORM_X_BETWEEN,    /**< a BETWEEN b AND c */
    AORM_X_ANY,        /**< a = ANY(b), b an AORM_X_ARRAY; op AORM_OP_NE gives NOT (a = ANY(b)) */
    AORM_X_IN_SELECT,  /**< a IN (sub) */
    AORM_X_EXISTS,     /**< EXISTS (sub) */
    AORM_X_FUNC,       /**< aggregate `op` over a (NULL a: count(*)) */
    AORM_X_EXCLUDED,   /**< EXCLUDED.(column a) in ON CONFLICT DO UPDATE */
    AORM_X_LABEL,      /**< a AS "label" */
    AORM_X_TUPLE_IN,   /**< (list[0..n/2)) IN (SELECT * FROM unnest(list[n/2..n))): parallel arrays */
    AORM_X_REF,        /**< "alias"."name" (alias NULL: "name"): a column by name */
    AORM_X_CALL,       /**< function `op` (AORM_FN_NAMED: `name`) over list[0..n) */
    AORM_X_OVER,       /**< a OVER (PARTITION BY b ORDER BY c frame): b, c AORM_X_LIST, frame list[0] */
    AORM_X_LIST,       /**< list[0..n): a PARTITION BY / window ORDER BY list */
    AORM_X_SORT,       /**< a with sort flags n (AORM_DESC...), in a window's ORDER BY */
    AORM_X_FRAME,      /**< frame of mode n (AORM_FRAME_*) from bound a to bound b (or NULL) */
    AORM_X_BOUND,      /**< frame bound n (AORM_BOUND_*), offset a */
    AORM_X_CASE,       /**< CASE list of WHEN nodes (the last may be an ELSE) END */
    AORM_X_WHEN,       /**< WHEN a THEN b (a NULL: ELSE b) */
    AORM_X_CAST,       /**< CAST(a AS type) (or AS "name" when name is set) */
    AORM_X_SUBQUERY,   /**< (sub): a scalar subquery */
    AORM_X_QUANT       /**< a op ANY(b) (n 0) / a op ALL(b) (n 1) */
} aorm_expr_kind;

typedef enum aorm_op {
    AORM_OP_EQ = 1, AORM_OP_NE, AORM_OP_LT, AORM_OP_LE, AORM_OP_GT, AORM_OP_GE,
    AORM_OP_LIKE, AORM_OP_ILIKE, AORM_OP_NOT_LIKE, AORM_OP_NOT_ILIKE,
    AORM_OP_ADD, AORM_OP_SUB, AORM_OP_MUL, AORM_OP_DIV,
    AORM_FN_COUNT, AORM_FN_COUNT_DISTINCT, AORM_FN_SUM, AORM_FN_AVG, AORM_FN_MIN, AORM_FN_MAX,
    /* binary operators (after the aggregates, so that older values keep theirs) */
    AORM_OP_MOD,            /**< % */
    AORM_OP_CONCAT,         /**< || (text, arrays, jsonb) */
    AORM_OP_JSON_GET,       /**< -> (key or index) */
    AORM_OP_JSON_GET_TEXT,  /**< ->> */
    AORM_OP_JSON_PATH,      /**< #> (text[] path) */
    AORM_OP_JSON_PATH_TEXT, /**< #>> */
    AORM_OP_HAS_KEY,        /**< ? (jsonb has the key) */
    AORM_OP_CONTAINS,       /**< @> (jsonb, arrays) */
    AORM_OP_CONTAINED_BY,   /**< <@ */
    AORM_OP_OVERLAPS,       /**< && (arrays) */
    /* functions of AORM_X_CALL: SQL's own forms and the window functions */
    AORM_FN_COALESCE, AORM_FN_NULLIF, AORM_FN_GREATEST, AORM_FN_LEAST,
    AORM_FN_ROW_NUMBER, AORM_FN_RANK, AORM_FN_DENSE_RANK, AORM_FN_PERCENT_RANK, AORM_FN_CUME_DIST,
    AORM_FN_NTILE, AORM_FN_LAG, AORM_FN_LEAD, AORM_FN_FIRST_VALUE, AORM_FN_LAST_VALUE, AORM_FN_NTH_VALUE,
    AORM_FN_NAMED           /**< any function, by name (checked as an identifier, quoted) */
} aorm_op;

/** Fields are private to aorm: build expressions with the macros below. */
typedef struct aorm_expr {
    aorm_expr_kind kind;
    aorm_op op;
    const aorm_model *model;  /**< COLUMN */
    size_t offset;            /**< COLUMN */
    aorm_type type;           /**< VALUE, ARRAY */
    bool null;                /**< VALUE: SQL NULL */
    union {
        bool b;
        int64_t i;
        double d;
        const char *s;
        const void *p;
    } v;                      /**< VALUE (s/p: copied), ARRAY (p: elements) */
    size_t len;               /**< VALUE text/bytea length (SIZE_MAX: strlen); ARRAY count */
    const bool *nulls;        /**< ARRAY: NULL flags or NULL */
    const struct aorm_expr *a, *b, *c;
    const struct aorm_expr *const *list; /**< AND / OR */
    int n;
    aorm_stmt *sub;           /**< IN_SELECT, EXISTS: consumed (freed) by the statement it is attached to */
    const char *label;        /**< LABEL */
    const char *alias;        /**< COLUMN, REF: the FROM item's alias (NULL: the model's own table) */
    const char *name;         /**< REF: column name; CALL (AORM_FN_NAMED): function; CAST: type name */
    const struct aorm_enum *enum_type; /**< VALUE of type AORM_ENUM: its descriptor (model.h) */
} aorm_expr;

#define AORM__X(...) (&(const aorm_expr){__VA_ARGS__})

/** A column: AORM_COL(book, price) is books.price (model book_model). */
#define AORM_COL(S, f) AORM__X(.kind = AORM_X_COLUMN, .model = &S##_model, .offset = offsetof(S, f))

/** Bound values. Strings and byte arrays are copied when the expression is
 * attached to a statement. */
#define aorm_bool(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_BOOL, .v.b = (x))
#define aorm_int2(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_INT2, .v.i = (x))
#define aorm_int4(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_INT4, .v.i = (x))
#define aorm_int8(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_INT8, .v.i = (x))
#define aorm_float4(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_FLOAT4, .v.d = (x))
#define aorm_float8(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_FLOAT8, .v.d = (x))
#define aorm_text(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_TEXT, .v.s = (x), .len = SIZE_MAX)
#define aorm_text_n(x, n) AORM__X(.kind = AORM_X_VALUE, .type = AORM_TEXT, .v.s = (x), .len = (n))
#define aorm_numeric(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_NUMERIC, .v.s = (x), .len = SIZE_MAX)
#define aorm_json(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_JSON, .v.s = (x), .len = SIZE_MAX)
#define aorm_jsonb(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_JSONB, .v.s = (x), .len = SIZE_MAX)
#define aorm_bytea(x, n) AORM__X(.kind = AORM_X_VALUE, .type = AORM_BYTEA, .v.p = (x), .len = (n))
#define aorm_date(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_DATE, .v.i = (x))
#define aorm_timestamp(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_TIMESTAMP, .v.i = (x))
#define aorm_timestamptz(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_TIMESTAMPTZ, .v.i = (x))
/** x: pointer to 16 bytes */
#define aorm_uuid_value(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_UUID, .v.p = (x), .len = 16)
#define aorm_null(T) AORM__X(.kind = AORM_X_VALUE, .type = (T), .null = true)
/** x: pointer to an aorm_interval / aorm_inet (inet or cidr). */
#define aorm_interval_value(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_INTERVAL, .v.p = (x))
#define aorm_inet_value(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_INET, .v.p = (x))
#define aorm_cidr_value(x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_CIDR, .v.p = (x))
/** An enum value: E a `const aorm_enum *`, x its C value (sent as the label). */
#define aorm_enum_value(E, x) AORM__X(.kind = AORM_X_VALUE, .type = AORM_ENUM, .v.i = (x), .enum_type = (E))
/** A whole array as one value: T an AORM_*_ARRAY type, x a pointer to the
 * matching aorm_array_* (model.h); elements and strings are copied. */
#define aorm_array_value(T, x) AORM__X(.kind = AORM_X_VALUE, .type = (T), .v.p = (x))

/** Comparisons and arithmetic. */
#define AORM__BIN(o, x, y) AORM__X(.kind = AORM_X_BINARY, .op = (o), .a = (x), .b = (y))
#define aorm_eq(x, y) AORM__BIN(AORM_OP_EQ, x, y)
#define aorm_ne(x, y) AORM__BIN(AORM_OP_NE, x, y)
#define aorm_lt(x, y) AORM__BIN(AORM_OP_LT, x, y)
#define aorm_le(x, y) AORM__BIN(AORM_OP_LE, x, y)
#define aorm_gt(x, y) AORM__BIN(AORM_OP_GT, x, y)
#define aorm_ge(x, y) AORM__BIN(AORM_OP_GE, x, y)
#define aorm_like(x, y) AORM__BIN(AORM_OP_LIKE, x, y)
#define aorm_ilike(x, y) AORM__BIN(AORM_OP_ILIKE, x, y)
#define aorm_not_like(x, y) AORM__BIN(AORM_OP_NOT_LIKE, x, y)
#define aorm_not_ilike(x, y) AORM__BIN(AORM_OP_NOT_ILIKE, x, y)
#define aorm_add(x, y) AORM__BIN(AORM_OP_ADD, x, y)
#define aorm_sub(x, y) AORM__BIN(AORM_OP_SUB, x, y)
#define aorm_mul(x, y) AORM__BIN(AORM_OP_MUL, x, y)
#define aorm_div(x, y) AORM__BIN(AORM_OP_DIV, x, y)

/** Boolean logic: aorm_and(e1, e2, ...), aorm_or(...), aorm_not(e). */
#define AORM__LIST(...) ((const aorm_expr *const[]){__VA_ARGS__})
#define AORM__NLIST(...) ((int)(sizeof(AORM__LIST(__VA_ARGS__)) / sizeof(const aorm_expr *)))
#define aorm_and(...) AORM__X(.kind = AORM_X_AND, .list = AORM__LIST(__VA_ARGS__), .n = AORM__NLIST(__VA_ARGS__))
#define aorm_or(...) AORM__X(.kind = AORM_X_OR, .list = AORM__LIST(__VA_ARGS__), .n = AORM__NLIST(__VA_ARGS__))
#define aorm_not(x) AORM__X(.kind = AORM_X_NOT, .a = (x))
#define aorm_is_null(x) AORM__X(.kind = AORM_X_IS_NULL, .a = (x))
#define aorm_is_not_null(x) AORM__X(.kind = AORM_X_IS_NOT_NULL, .a = (x))
#define aorm_between(x, lo, hi) AORM__X(.kind = AORM_X_BETWEEN, .a = (x), .b = (lo), .c = (hi))

/** IN lists, bound as ONE array parameter: `x = ANY($n)`. An empty list
 * matches nothing (and its NOT form everything). nulls may be NULL. */
#define AORM__ARR(T, vals, nl, cnt) AORM__X(.kind = AORM_X_ARRAY, .type = (T), .v.p = (vals), .nulls = (nl), .len = (cnt))
#define aorm_in_int4(x, vals, cnt) AORM__X(.kind = AORM_X_ANY, .op = AORM_OP_EQ, .a = (x), .b = AORM__ARR(AORM_INT4, vals, NULL, cnt))
#define aorm_in_int8(x, vals, cnt) AORM__X(.kind = AORM_X_ANY, .op = AORM_OP_EQ, .a = (x), .b = AORM__ARR(AORM_INT8, vals, NULL, cnt))
#define aorm_in_text(x, vals, cnt) AORM__X(.kind = AORM_X_ANY, .op = AORM_OP_EQ, .a = (x), .b = AORM__ARR(AORM_TEXT, vals, NULL, cnt))
/** vals: n * 16 contiguous bytes */
#define aorm_in_uuid(x, vals, cnt) AORM__X(.kind = AORM_X_ANY, .op = AORM_OP_EQ, .a = (x), .b = AORM__ARR(AORM_UUID, vals, NULL, cnt))
#define aorm_not_in_int8(x, vals, cnt) AORM__X(.kind = AORM_X_ANY, .op = AORM_OP_NE, .a = (x), .b = AORM__ARR(AORM_INT8, vals, NULL, cnt))
#define aorm_not_in_text(x, vals, cnt) AORM__X(.kind = AORM_X_ANY, .op = AORM_OP_NE, .a = (x), .b = AORM__ARR(AORM_TEXT, vals, NULL, cnt))

/** Array values (one parameter), e.g. for raw SQL `= ANY(:ids)` binds:
 * aorm_int8_array(ids, n). nulls may be NULL. Copied when attached. */
#define aorm_int4_array(vals, cnt) AORM__ARR(AORM_INT4, vals, NULL, cnt)
#define aorm_int8_array(vals, cnt) AORM__ARR(AORM_INT8, vals, NULL, cnt)
#define aorm_text_array(vals, cnt) AORM__ARR(AORM_TEXT, vals, NULL, cnt)
#define aorm_uuid_array(vals, cnt) AORM__ARR(AORM_UUID, vals, NULL, cnt)

/** Multi-column IN over parallel arrays, each bound as ONE parameter:
 * aorm_tuple_in(c1, ..., ck, a1, ..., ak) is
 * `(c1, ..., ck) IN (SELECT * FROM unnest($1, ..., $k))`, matching rows
 * whose (c1, ..., ck) equals (a1[i], ..., ak[i]) for some i. The first
 * half are expressions (usually columns), the second half arrays of equal
 * length (aorm_int8_array(), aorm_text_array()...); 1 <= k <= 8. The text
 * does not depend on the number of tuples, so the statement is prepared
 * once for any count:
 *
 *   aorm_where(q, aorm_tuple_in(AORM_COL(line, region), AORM_COL(line, order_no),
 *                               aorm_text_array(regions, n), aorm_int8_array(nos, n)));
 */
#define aorm_tuple_in(...) \
    AORM__X(.kind = AORM_X_TUPLE_IN, .list = AORM__LIST(__VA_ARGS__), .n = AORM__NLIST(__VA_ARGS__))

/** Subqueries: the statement passed is consumed by the statement the
 * expression is attached to (freed with it, or on error). */
#define aorm_in_select(x, sub_stmt) AORM__X(.kind = AORM_X_IN_SELECT, .a = (x), .sub = (sub_stmt))
#define aorm_exists(sub_stmt) AORM__X(.kind = AORM_X_EXISTS, .sub = (sub_stmt))

/** Aggregates. */
#define aorm_count_all() AORM__X(.kind = AORM_X_FUNC, .op = AORM_FN_COUNT)
#define aorm_count(x) AORM__X(.kind = AORM_X_FUNC, .op = AORM_FN_COUNT, .a = (x))
#define aorm_count_distinct(x) AORM__X(.kind = AORM_X_FUNC, .op = AORM_FN_COUNT_DISTINCT, .a = (x))
#define aorm_sum(x) AORM__X(.kind = AORM_X_FUNC, .op = AORM_FN_SUM, .a = (x))
#define aorm_avg(x) AORM__X(.kind = AORM_X_FUNC, .op = AORM_FN_AVG, .a = (x))
#define aorm_min(x) AORM__X(.kind = AORM_X_FUNC, .op = AORM_FN_MIN, .a = (x))
#define aorm_max(x) AORM__X(.kind = AORM_X_FUNC, .op = AORM_FN_MAX, .a = (x))

/** `x AS "name"` in a select list (name quoted as an identifier). */
#define aorm_label(x, name) AORM__X(.kind = AORM_X_LABEL, .a = (x), .label = (name))
/** EXCLUDED.col, for ON CONFLICT ... DO UPDATE SET col = EXCLUDED.col */
#define aorm_excluded(col) AORM__X(.kind = AORM_X_EXCLUDED, .a = (col))

/* ---- aliases, names, functions, windows ------------------------------------------- */

/** A column of model S seen through the FROM item called `alias`: an
 * aliased model (aorm_join_alias, aorm_from_alias), a subquery in FROM
 * (aorm_from_select, aorm_join_select) or a CTE (aorm_from_cte...) whose
 * output has a column of that name. AORM_ACOL("mgr", employee, name) is
 * "mgr"."name". alias is copied and quoted as an identifier. */
#define AORM_ACOL(al, S, f) \
    AORM__X(.kind = AORM_X_COLUMN, .model = &S##_model, .offset = offsetof(S, f), .alias = (al))
/** A column by name: aorm_ref("top", "rank") is "top"."rank", a column of
 * the FROM item called "top" (an alias, a CTE, a subquery, or a model's
 * table name); aorm_name("rank") is the unqualified "rank" (an output
 * column, e.g. in a UNION's ORDER BY). Both names are copied and quoted;
 * when the FROM item is a Core statement, the name must be one of its
 * output columns (checked when compiled). */
#define aorm_ref(al, col) AORM__X(.kind = AORM_X_REF, .alias = (al), .name = (col))
#define aorm_name(col) AORM__X(.kind = AORM_X_REF, .name = (col))

/** Operators: x % y, x || y (text, arrays, jsonb), JSON x -> k, x ->> k
 * (k a text key or an int4 index, bound), x #> path, x #>> path (path a
 * text array), x ? key, containment x @> y, x <@ y, overlap x && y. */
#define aorm_mod(x, y) AORM__BIN(AORM_OP_MOD, x, y)
#define aorm_concat(x, y) AORM__BIN(AORM_OP_CONCAT, x, y)
#define aorm_json_get(x, k) AORM__BIN(AORM_OP_JSON_GET, x, k)
#define aorm_json_get_text(x, k) AORM__BIN(AORM_OP_JSON_GET_TEXT, x, k)
#define aorm_json_key(x, key) aorm_json_get(x, aorm_text(key))
#define aorm_json_key_text(x, key) aorm_json_get_text(x, aorm_text(key))
#define aorm_json_path(x, path) AORM__BIN(AORM_OP_JSON_PATH, x, path)
#define aorm_json_path_text(x, path) AORM__BIN(AORM_OP_JSON_PATH_TEXT, x, path)
#define aorm_has_key(x, key) AORM__BIN(AORM_OP_HAS_KEY, x, key)
#define aorm_contains(x, y) AORM__BIN(AORM_OP_CONTAINS, x, y)
#define aorm_contained_by(x, y) AORM__BIN(AORM_OP_CONTAINED_BY, x, y)
#define aorm_overlaps(x, y) AORM__BIN(AORM_OP_OVERLAPS, x, y)

/** x op ANY(arr) / x op ALL(arr), op a comparison (AORM_OP_EQ ... GE,
 * LIKE...): arr is any array expression -- an array column, aorm_ref() to
 * one, a bound array (aorm_int8_array()) -- or aorm_scalar(sub), which
 * gives the subquery form `x op ANY (SELECT ...)`. */
#define aorm_op_any(o, x, arr) AORM__X(.kind = AORM_X_QUANT, .op = (o), .a = (x), .b = (arr), .n = 0)
#define aorm_op_all(o, x, arr) AORM__X(.kind = AORM_X_QUANT, .op = (o), .a = (x), .b = (arr), .n = 1)
#define aorm_eq_any(x, arr) aorm_op_any(AORM_OP_EQ, x, arr)
#define aorm_ne_all(x, arr) aorm_op_all(AORM_OP_NE, x, arr)

/** A scalar subquery `(SELECT ...)` (one column, at most one row). The
 * statement is consumed like aorm_in_select's. */
#define aorm_scalar(sub_stmt) AORM__X(.kind = AORM_X_SUBQUERY, .sub = (sub_stmt))

/** A function call by name: aorm_func("lower", x), aorm_func0("now").
 * The name must be an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63
 * bytes, optionally "schema.name"); it is written quoted, so it is
 * case-sensitive: give it as PostgreSQL stores it (lowercase). Anything
 * else is refused (AORM_EMISUSE) when the expression is attached.
 * Aggregates called this way (string_agg, array_agg, bool_and...) may
 * take aorm_over() too. */
#define aorm_func(fname, ...) \
    AORM__X(.kind = AORM_X_CALL, .op = AORM_FN_NAMED, .name = (fname), .list = AORM__LIST(__VA_ARGS__), \
            .n = AORM__NLIST(__VA_ARGS__))
#define aorm_func0(fname) AORM__X(.kind = AORM_X_CALL, .op = AORM_FN_NAMED, .name = (fname))
#define AORM__CALL(o, ...) \
    AORM__X(.kind = AORM_X_CALL, .op = (o), .list = AORM__LIST(__VA_ARGS__), .n = AORM__NLIST(__VA_ARGS__))
#define AORM__CALL0(o) AORM__X(.kind = AORM_X_CALL, .op = (o))
/** COALESCE(x, ...), NULLIF(x, y), GREATEST(x, ...), LEAST(x, ...). */
#define aorm_coalesce(...) AORM__CALL(AORM_FN_COALESCE, __VA_ARGS__)
#define aorm_nullif(x, y) AORM__CALL(AORM_FN_NULLIF, x, y)
#define aorm_greatest(...) AORM__CALL(AORM_FN_GREATEST, __VA_ARGS__)
#define aorm_least(...) AORM__CALL(AORM_FN_LEAST, __VA_ARGS__)

/** CASE WHEN c1 THEN v1 ... [ELSE v] END:
 * aorm_case(aorm_when(c1, v1), aorm_when(c2, v2), aorm_else(v)). */
#define aorm_case(...) AORM__X(.kind = AORM_X_CASE, .list = AORM__LIST(__VA_ARGS__), .n = AORM__NLIST(__VA_ARGS__))
#define aorm_when(cond, val) AORM__X(.kind = AORM_X_WHEN, .a = (cond), .b = (val))
#define aorm_else(val) AORM__X(.kind = AORM_X_WHEN, .b = (val))

/** CAST(x AS type): aorm_cast(x, AORM_TEXT); aorm_cast_name(x, "mood")
 * for any type by name (an identifier as for aorm_func, optionally
 * "schema.name", optionally ending in "[]"; quoted). */
#define aorm_cast(x, T) AORM__X(.kind = AORM_X_CAST, .a = (x), .type = (T))
#define aorm_cast_name(x, tname) AORM__X(.kind = AORM_X_CAST, .a = (x), .name = (tname))

/** Window functions; each needs aorm_over(). lag/lead take the offset
 * and default as expressions (aorm_int4(2), ...). */
#define aorm_row_number() AORM__CALL0(AORM_FN_ROW_NUMBER)
#define aorm_rank() AORM__CALL0(AORM_FN_RANK)
#define aorm_dense_rank() AORM__CALL0(AORM_FN_DENSE_RANK)
#define aorm_percent_rank() AORM__CALL0(AORM_FN_PERCENT_RANK)
#define aorm_cume_dist() AORM__CALL0(AORM_FN_CUME_DIST)
#define aorm_ntile(n) AORM__CALL(AORM_FN_NTILE, n)
#define aorm_lag(...) AORM__CALL(AORM_FN_LAG, __VA_ARGS__)
#define aorm_lead(...) AORM__CALL(AORM_FN_LEAD, __VA_ARGS__)
#define aorm_first_value(x) AORM__CALL(AORM_FN_FIRST_VALUE, x)
#define aorm_last_value(x) AORM__CALL(AORM_FN_LAST_VALUE, x)
#define aorm_nth_value(x, n) AORM__CALL(AORM_FN_NTH_VALUE, x, n)

/** fn OVER (PARTITION BY ... ORDER BY ... [frame]): fn is a window
 * function, an aggregate (aorm_sum()...) or aorm_func(); partition and
 * order are aorm_list(...) or NULL; order entries may be wrapped in
 * aorm_desc() / aorm_sort(x, flags) (AORM_DESC, AORM_NULLS_FIRST...).
 *
 *   aorm_over(aorm_rank(), aorm_list(AORM_COL(book, author_id)),
 *             aorm_list(aorm_desc(AORM_COL(book, price))))
 *   aorm_over_frame(aorm_sum(AORM_COL(book, price)), NULL, aorm_list(AORM_COL(book, id)),
 *                   aorm_rows(aorm_preceding(aorm_int8(2)), aorm_current_row()))
 */
#define aorm_list(...) AORM__X(.kind = AORM_X_LIST, .list = AORM__LIST(__VA_ARGS__), .n = AORM__NLIST(__VA_ARGS__))
#define aorm_sort(x, flags) AORM__X(.kind = AORM_X_SORT, .a = (x), .n = (int)(flags))
#define aorm_asc(x) aorm_sort(x, AORM_ASC)
#define aorm_desc(x) aorm_sort(x, AORM_DESC)
#define aorm_over(fn, partition, order) AORM__X(.kind = AORM_X_OVER, .a = (fn), .b = (partition), .c = (order))
#define aorm_over_frame(fn, partition, order, frame) \
    AORM__X(.kind = AORM_X_OVER, .a = (fn), .b = (partition), .c = (order), .list = AORM__LIST(frame), .n = 1)

enum { AORM_FRAME_ROWS = 1, AORM_FRAME_RANGE, AORM_FRAME_GROUPS };
enum {
    AORM_BOUND_UNBOUNDED_PRECEDING = 1, AORM_BOUND_PRECEDING, AORM_BOUND_CURRENT_ROW, AORM_BOUND_FOLLOWING,
    AORM_BOUND_UNBOUNDED_FOLLOWING
};
/** Frames: ROWS / RANGE / GROUPS BETWEEN start AND end (end NULL: just
 * start). Offsets are expressions, normally bound values: ROWS and
 * GROUPS take an int8 (aorm_int8(3)), RANGE a value of the ordering
 * column's type. */
#define aorm_rows(start, end) AORM__X(.kind = AORM_X_FRAME, .n = AORM_FRAME_ROWS, .a = (start), .b = (end))
#define aorm_range(start, end) AORM__X(.kind = AORM_X_FRAME, .n = AORM_FRAME_RANGE, .a = (start), .b = (end))
#define aorm_groups(start, end) AORM__X(.kind = AORM_X_FRAME, .n = AORM_FRAME_GROUPS, .a = (start), .b = (end))
#define aorm_unbounded_preceding() AORM__X(.kind = AORM_X_BOUND, .n = AORM_BOUND_UNBOUNDED_PRECEDING)
#define aorm_preceding(off) AORM__X(.kind = AORM_X_BOUND, .n = AORM_BOUND_PRECEDING, .a = (off))
#define aorm_current_row() AORM__X(.kind = AORM_X_BOUND, .n = AORM_BOUND_CURRENT_ROW)
#define aorm_following(off) AORM__X(.kind = AORM_X_BOUND, .n = AORM_BOUND_FOLLOWING, .a = (off))
#define aorm_unbounded_following() AORM__X(.kind = AORM_X_BOUND, .n = AORM_BOUND_UNBOUNDED_FOLLOWING)

/** A list of columns for aorm_insert_select() (like aorm_conflict_columns). */
#define aorm_columns(...) AORM__LIST(__VA_ARGS__), AORM__NLIST(__VA_ARGS__)

/** The relationship descriptor of field f of S (for joins on relationships). */
#define AORM_REL(S, f) aorm_model_relationship_at(&S##_model, offsetof(S, f))
AORM_API const aorm_relationship *aorm_model_relationship_at(const aorm_model *m, size_t offset);

/* ---- statements ------------------------------------------------------------- */

/** SELECT every column of m FROM m. Returns NULL only on out of memory
 * (or NULL m). */
AORM_API aorm_stmt *aorm_select(const aorm_model *m);
/** SELECT (the given expressions) — FROM follows from the columns' models
 * (the first model seen) or aorm_from(). */
AORM_API aorm_stmt *aorm_select_exprs(const aorm_expr *const *exprs, int n);
#define aorm_select_columns(...) aorm_select_exprs(AORM__LIST(__VA_ARGS__), AORM__NLIST(__VA_ARGS__))
/** Adds one select-list entry / every column of a (joined) model. */
AORM_API int aorm_select_add(aorm_stmt *q, const aorm_expr *e);
AORM_API int aorm_select_add_model(aorm_stmt *q, const aorm_model *m);
AORM_API int aorm_from(aorm_stmt *q, const aorm_model *m);
AORM_API int aorm_distinct(aorm_stmt *q);

/** INNER / LEFT OUTER JOIN m ON cond. */
AORM_API int aorm_join(aorm_stmt *q, const aorm_model *m, const aorm_expr *on);
AORM_API int aorm_left_join(aorm_stmt *q, const aorm_model *m, const aorm_expr *on);
/** Join along a relationship of a model already in the statement (the ON
 * condition comes from its foreign key; many-to-many joins the secondary
 * table too). outer: LEFT OUTER JOIN. */
AORM_API int aorm_join_rel(aorm_stmt *q, const aorm_relationship *rel, bool outer);

/* ---- aliases, subqueries in FROM, CTEs -------------------------------------- */

/* Aliases and CTE names are quoted identifiers: any text of 1 to 63 bytes
 * (PostgreSQL would cut a longer one, so two long names could become
 * the same one); anything else is AORM_EMISUSE. In one statement, every
 * FROM item needs a name of its own: the table of an unaliased model, an
 * alias, or a CTE's name. */

/** A SELECT of every column of m FROM m AS "alias" (columns:
 * AORM_ACOL(alias, S, f)). NULL only on out of memory or NULL m. */
AORM_API aorm_stmt *aorm_select_alias(const aorm_model *m, const char *alias);
/** Adds every column of the FROM item `alias` as columns of m (an aliased
 * model, or a CTE or subquery with m's columns); load them with
 * aorm_stmt_load_alias(). */
AORM_API int aorm_select_add_alias(aorm_stmt *q, const aorm_model *m, const char *alias);

/** FROM items. On a SELECT they set its FROM (once): a model under an
 * alias, a subquery `(sub) AS "alias"`, or a CTE by name (`FROM "name"`,
 * a CTE of this statement or an enclosing one). On an UPDATE they add
 * to `UPDATE ... FROM`, on a DELETE to `DELETE ... USING` (several
 * calls: a comma-separated list; the join condition goes in
 * aorm_where). aorm_from() does the same with a model under its own
 * name. sub is consumed (freed with q, also when the call fails). */
AORM_API int aorm_from_alias(aorm_stmt *q, const aorm_model *m, const char *alias);
AORM_API int aorm_from_select(aorm_stmt *q, aorm_stmt *sub, const char *alias);
AORM_API int aorm_from_cte(aorm_stmt *q, const char *name);

enum {
    AORM_JOIN_INNER = 0,
    AORM_JOIN_LEFT = 1,   /**< LEFT JOIN */
    AORM_JOIN_LATERAL = 2 /**< JOIN LATERAL (subqueries: may use the columns of earlier FROM items) */
};
/** Joins of a SELECT: a model under an alias (self-joins), a subquery,
 * a CTE (alias NULL: under its own name). on NULL is CROSS JOIN (inner)
 * or `ON TRUE` (left). flags: AORM_JOIN_* (LATERAL only for subqueries). */
AORM_API int aorm_join_alias(aorm_stmt *q, const aorm_model *m, const char *alias, const aorm_expr *on,
                             unsigned flags);
AORM_API int aorm_join_select(aorm_stmt *q, aorm_stmt *sub, const char *alias, const aorm_expr *on,
                              unsigned flags);
AORM_API int aorm_join_cte(aorm_stmt *q, const char *name, const char *alias, const aorm_expr *on,
                           unsigned flags);
/** aorm_join_rel() with the target under an alias: the way to join a
 * self-referential relationship (employee.manager) or a model twice. */
AORM_API int aorm_join_rel_alias(aorm_stmt *q, const aorm_relationship *rel, const char *alias, bool outer);

/** WITH "name" AS (sub): sub is a SELECT, a set operation, raw text, or
 * an INSERT / UPDATE / DELETE (a data-modifying CTE, usually with
 * RETURNING); several calls give several CTEs, in order. Allowed on
 * every statement but raw text. aorm_with_recursive() makes the WITH
 * clause `WITH RECURSIVE` (it applies to all of them, as in SQL); the
 * recursive CTE is then a UNION [ALL] whose second arm uses
 * aorm_from_cte / aorm_join_cte(name). sub is consumed. */
AORM_API int aorm_with(aorm_stmt *q, const char *name, aorm_stmt *sub);
AORM_API int aorm_with_recursive(aorm_stmt *q, const char *name, aorm_stmt *sub);

/** Set operations: a new statement `(a) UNION (b)` etc., consuming a and
 * b (SELECTs, set operations or raw text; they may have their own ORDER
 * BY and LIMIT). The result takes aorm_order_by (with aorm_name() of an
 * output column), aorm_limit, aorm_offset, aorm_with; its output
 * columns (for aorm_stmt_load) are those of a. NULL when a or b is NULL
 * (the other is freed) or on out of memory. */
AORM_API aorm_stmt *aorm_union(aorm_stmt *a, aorm_stmt *b);
AORM_API aorm_stmt *aorm_union_all(aorm_stmt *a, aorm_stmt *b);
AORM_API aorm_stmt *aorm_intersect(aorm_stmt *a, aorm_stmt *b);
AORM_API aorm_stmt *aorm_intersect_all(aorm_stmt *a, aorm_stmt *b);
AORM_API aorm_stmt *aorm_except(aorm_stmt *a, aorm_stmt *b);
AORM_API aorm_stmt *aorm_except_all(aorm_stmt *a, aorm_stmt *b);

/** SELECT DISTINCT ON (e, ...): several calls add keys (the ORDER BY
 * should start with them). Excludes aorm_distinct(). */
AORM_API int aorm_distinct_on(aorm_stmt *q, const aorm_expr *e);

/** WHERE cond (several calls are ANDed). Also for UPDATE and DELETE. */
AORM_API int aorm_where(aorm_stmt *q, const aorm_expr *cond);

enum { AORM_ASC = 0, AORM_DESC = 1, AORM_NULLS_FIRST = 2, AORM_NULLS_LAST = 4 };
AORM_API int aorm_order_by(aorm_stmt *q, const aorm_expr *e, unsigned flags);
AORM_API int aorm_group_by(aorm_stmt *q, const aorm_expr *e);
AORM_API int aorm_having(aorm_stmt *q, const aorm_expr *cond);
/** LIMIT / OFFSET, bound as parameters (so the text stays the same). */
AORM_API int aorm_limit(aorm_stmt *q, int64_t n);
AORM_API int aorm_offset(aorm_stmt *q, int64_t n);

enum { AORM_LOCK_UPDATE = 0, AORM_LOCK_SHARE = 1, AORM_LOCK_NOWAIT = 2, AORM_LOCK_SKIP_LOCKED = 4 };
/** FOR UPDATE [NOWAIT | SKIP LOCKED] (FOR SHARE with AORM_LOCK_SHARE). */
AORM_API int aorm_for_update(aorm_stmt *q, unsigned flags);

/** INSERT INTO m. Rows come from objects (aorm_insert_object: every column
 * of the struct with its field's value, zero, false and NULL included,
 * except SERIAL/IDENTITY columns whose field is zero, which the server
 * generates, and the columns given to aorm_insert_use_default()) or from
 * explicit values (aorm_set), or from a query (aorm_insert_select). A
 * column with a server_default is written like any other: a value the
 * program set is never replaced by the default (as in a session). One
 * row compiles to VALUES ($1, ...); several object rows compile to one
 * `SELECT * FROM unnest($1::type[], ...)` with one array parameter per
 * column, whatever the number of rows. */
AORM_API aorm_stmt *aorm_insert(const aorm_model *m);
AORM_API int aorm_insert_object(aorm_stmt *q, const void *obj);
AORM_API int aorm_insert_objects(aorm_stmt *q, const void *const *objs, size_t n);
/** Leaves column col (AORM_COL of the INSERT's model, declaring a
 * server_default) out of the object rows, whatever their fields hold, so
 * that the server fills it (read it back with RETURNING). Call before
 * aorm_insert_object(s). Returns 0 or AORM_EMISUSE. */
AORM_API int aorm_insert_use_default(aorm_stmt *q, const aorm_expr *col);

/** ON CONFLICT (cols) DO NOTHING / DO UPDATE SET (then aorm_set pairs,
 * typically with aorm_excluded). n may be 0 for a bare ON CONFLICT DO
 * NOTHING. */
AORM_API int aorm_on_conflict_do_nothing(aorm_stmt *q, const aorm_expr *const *cols, int n);
AORM_API int aorm_on_conflict_do_update(aorm_stmt *q, const aorm_expr *const *cols, int n);
#define aorm_conflict_columns(...) AORM__LIST(__VA_ARGS__), AORM__NLIST(__VA_ARGS__)

/** INSERT INTO m (cols) SELECT ...: cols are columns of m
 * (aorm_columns(...); n 0: every column in table order), sub a SELECT,
 * set operation or raw text with as many output columns. Excludes object
 * rows and aorm_set values. sub is consumed. */
AORM_API int aorm_insert_select(aorm_stmt *q, const aorm_expr *const *cols, int n, aorm_stmt *sub);
/** ON CONFLICT ON CONSTRAINT "name" DO NOTHING / DO UPDATE SET (then
 * aorm_set pairs). name is quoted as an identifier (1 to 63 bytes). */
AORM_API int aorm_on_conflict_constraint_do_nothing(aorm_stmt *q, const char *name);
AORM_API int aorm_on_conflict_constraint_do_update(aorm_stmt *q, const char *name);

/** UPDATE m SET ... / DELETE FROM m. */
AORM_API aorm_stmt *aorm_update(const aorm_model *m);
AORM_API aorm_stmt *aorm_delete(const aorm_model *m);

/** col = value: UPDATE's SET list, INSERT's explicit values, or the DO
 * UPDATE SET list after aorm_on_conflict_do_update(). */
AORM_API int aorm_set(aorm_stmt *q, const aorm_expr *col, const aorm_expr *value);

/** RETURNING e / RETURNING every column of the statement's model. */
AORM_API int aorm_returning(aorm_stmt *q, const aorm_expr *e);
AORM_API int aorm_returning_all(aorm_stmt *q);

/** Raw SQL with named binds: `:name` placeholders (outside string
 * literals, quoted identifiers, dollar-quoted strings, comments and `::`
 * casts) become $n, the same name the same $n. Every placeholder must be
 * bound and every bind used. Returns NULL for NULL sql or out of memory. */
AORM_API aorm_stmt *aorm_raw(const char *sql);
AORM_API int aorm_bind(aorm_stmt *q, const char *name, const aorm_expr *value);

/* ---- compiling and running -------------------------------------------------- */

/** Compiles (once; later calls return the cached outcome). Returns 0 or the
 * statement's error. */
AORM_API int aorm_stmt_compile(aorm_stmt *q);
/** The compiled text and parameters, valid until the statement is freed or
 * changed; NULL before a successful compile. */
AORM_API const char *aorm_stmt_sql(const aorm_stmt *q);
AORM_API const aorm_params *aorm_stmt_params(const aorm_stmt *q);
/** The statement's sticky error (0 when fine) and its description. */
AORM_API int aorm_stmt_error(const aorm_stmt *q);
AORM_API const char *aorm_stmt_errmsg(const aorm_stmt *q);
/** True for a plain SELECT (no FOR UPDATE/SHARE): the engine may run it as
 * AORM_EXEC_READONLY. */
AORM_API bool aorm_stmt_readonly(const aorm_stmt *q);
/** The primary model of the statement (FROM / INSERT INTO / UPDATE / DELETE). */
AORM_API const aorm_model *aorm_stmt_model(const aorm_stmt *q);

/** Frees the statement and everything it copied. Accepts NULL. */
AORM_API void aorm_stmt_free(aorm_stmt *q);

/** Compiles and queues the statement on the engine (autocommit) or a held
 * connection. A read-only SELECT is flagged AORM_EXEC_READONLY
 * automatically. The statement may be freed as soon as this returns.
 * Returns 0 (cb runs once, later) or a negative code (cb never runs). */
AORM_API int aorm_stmt_execute(aorm_engine *e, aorm_stmt *q, const aorm_exec_options *o,
                               aorm_result_cb cb, void *user);
AORM_API int aorm_stmt_execute_on(aorm_conn *c, aorm_stmt *q, const aorm_exec_options *o,
                                  aorm_result_cb cb, void *user);

/* ---- prepared statements: compiled once, executed with new values -------------
 *
 *   aorm_stmt *q = aorm_update(&account_model);
 *   aorm_set(q, AORM_COL(account, balance),
 *            aorm_add(AORM_COL(account, balance), aorm_param(AORM_INT4, "delta")));
 *   aorm_where(q, aorm_eq(AORM_COL(account, id), aorm_param(AORM_INT4, "id")));
 *   aorm_prepared *p = aorm_stmt_prepare(q);   // compiles q once
 *   aorm_stmt_free(q);                         // p owns what it needs
 *   aorm_prepared_bind_int4(p, "delta", 10);
 *   aorm_prepared_bind_int4(p, "id", 7);
 *   aorm_prepared_execute(engine, p, NULL, on_result, user);   // again and again
 *   aorm_prepared_free(p);
 *
 * aorm_param(T, "name") is a placeholder of type T in any expression; a
 * name may appear several times (every place takes the bound value). A
 * statement holding placeholders cannot be executed itself
 * (aorm_stmt_execute returns AORM_EMISUSE): prepare it. Values keep their
 * binding between executions; binding copies them. The engine keeps the
 * text's server-side prepared statement too, so an execution costs the
 * values' encoding and nothing else. */
#define aorm_param(T, nm) AORM__X(.kind = AORM_X_VALUE, .type = (T), .null = true, .name = (nm))
/** An enum placeholder: E the `const aorm_enum *`. */
#define aorm_param_enum(E, nm) \
    AORM__X(.kind = AORM_X_VALUE, .type = AORM_ENUM, .null = true, .name = (nm), .enum_type = (E))

typedef struct aorm_prepared aorm_prepared;

/** Compiles q (not consumed: free it when you like) into a prepared
 * statement that owns the text and the parameter slots. NULL when q does
 * not compile (aorm_stmt_error / aorm_stmt_errmsg say why) or out of
 * memory. */
AORM_API aorm_prepared *aorm_stmt_prepare(aorm_stmt *q);
AORM_API void aorm_prepared_free(aorm_prepared *p);
/** The compiled text ($1, $2 ... for every parameter). */
AORM_API const char *aorm_prepared_sql(const aorm_prepared *p);
/** Binds placeholder `name` to value v, an AORM_X_VALUE expression of the
 * placeholder's type (aorm_int8(5), aorm_text("x"), aorm_null(T)...;
 * integers may be narrower than the placeholder). AORM_EMISUSE for a
 * name the statement does not have or a value of another type;
 * AORM_ERANGE / AORM_EENCODING as Core values. */
AORM_API int aorm_prepared_bind(aorm_prepared *p, const char *name, const aorm_expr *v);
AORM_API int aorm_prepared_bind_int4(aorm_prepared *p, const char *name, int32_t v);
AORM_API int aorm_prepared_bind_int8(aorm_prepared *p, const char *name, int64_t v);
AORM_API int aorm_prepared_bind_float8(aorm_prepared *p, const char *name, double v);
AORM_API int aorm_prepared_bind_text(aorm_prepared *p, const char *name, const char *v);
AORM_API int aorm_prepared_bind_bool(aorm_prepared *p, const char *name, bool v);
AORM_API int aorm_prepared_bind_null(aorm_prepared *p, const char *name);
/** Executes with the bound values, as aorm_stmt_execute would (the
 * prepared statement may be freed once this returns). AORM_EMISUSE when a
 * placeholder has no value yet, before anything is sent. */
AORM_API int aorm_prepared_execute(aorm_engine *e, aorm_prepared *p, const aorm_exec_options *o, aorm_result_cb cb,
                                   void *user);
AORM_API int aorm_prepared_execute_on(aorm_conn *c, aorm_prepared *p, const aorm_exec_options *o,
                                      aorm_result_cb cb, void *user);
/** A statement holding the text and the values bound now, already
 * compiled (a raw statement: no builder applies to it), for the calls that
 * take an aorm_stmt (aorm_session_execute takes it over); NULL when a
 * placeholder has no value or out of memory. */
AORM_API aorm_stmt *aorm_prepared_stmt(aorm_prepared *p);

/** Position in the result of a select-list or RETURNING entry: a column
 * (AORM_COL: the model's own table; AORM_ACOL: that alias only) or a
 * label name given with aorm_label (pass aorm_label's expression or just
 * the column). For a set operation, the entries of its first arm.
 * Returns the index or AORM_ENOTFOUND. */
AORM_API int aorm_stmt_column(const aorm_stmt *q, const aorm_expr *col);
AORM_API int aorm_stmt_label(const aorm_stmt *q, const char *label);

/** Fills obj (a struct of model m) from row `row` of a result of q: every
 * column of m present in q's select list or RETURNING list. Strings and
 * byte arrays are allocated with `alloc` (NULL: malloc; see
 * aorm_model_free_fields). Returns 0 or a negative code (AORM_ETYPE when a
 * column's result type does not match the model). Values are read in the
 * binary format the engine asks for by default; in a text-format result
 * (AORM_EXEC_TEXT_RESULT) only text, varchar, char, name, json and jsonb
 * columns load (their text is the value), any other non-NULL value is
 * AORM_ETYPE. */
AORM_API int aorm_stmt_load(const aorm_stmt *q, const aorm_result *r, int row, const aorm_model *m,
                            void *obj, const aorm_allocator *alloc);

/** aorm_stmt_load() for the columns of m selected through the FROM item
 * `alias` (AORM_ACOL, aorm_select_add_alias); alias NULL is
 * aorm_stmt_load() itself. Same returns. */
AORM_API int aorm_stmt_load_alias(const aorm_stmt *q, const aorm_result *r, int row, const aorm_model *m,
                                  const char *alias, void *obj, const aorm_allocator *alloc);

/* ---- DDL ------------------------------------------------------------------------- */

enum {
    AORM_DDL_IF_NOT_EXISTS = 1, /**< CREATE ... IF NOT EXISTS: safe to run again */
    AORM_DDL_IF_EXISTS = 2,     /**< DROP ... IF EXISTS */
    AORM_DDL_CASCADE = 4        /**< DROP ... CASCADE */
};

/** The CREATE statements for models (tables with primary keys, NOT NULL,
 * defaults, UNIQUE and foreign keys inline; then indexes on foreign-key
 * columns not already leading an index or key, and declared indexes), in
 * dependency order (referenced tables first; a cycle is reported as
 * AORM_EMISUSE naming the tables). *out is malloc'd, statements separated
 * by ";\n". */
AORM_API int aorm_ddl_create_sql(const aorm_model *const *models, int n, unsigned flags, char **out,
                                 char *errmsg, size_t errcap);
/** The DROP statements, in reverse dependency order. */
AORM_API int aorm_ddl_drop_sql(const aorm_model *const *models, int n, unsigned flags, char **out,
                               char *errmsg, size_t errcap);
/** Runs them in one transaction on a connection of the engine; cb gets the
 * last statement's result or the first error (nothing is kept then). */
AORM_API int aorm_ddl_create_all(aorm_engine *e, const aorm_model *const *models, int n, unsigned flags,
                                 aorm_result_cb cb, void *user);
AORM_API int aorm_ddl_drop_all(aorm_engine *e, const aorm_model *const *models, int n, unsigned flags,
                               aorm_result_cb cb, void *user);

#ifdef __cplusplus
}
#endif

#endif /* AORM_SQL_H */
