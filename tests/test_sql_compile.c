/* test_sql_compile.c -- Core statements compiled to text, checked against
 * golden SQL and the exact parameter list (count, type OIDs, decoded
 * values). No server: what is checked is the text and the bytes that
 * would be sent.
 *
 * The parenthesis style under test: operator operands that are
 * themselves operator expressions are wrapped; AND/OR wrap nested AND/OR
 * lists only; the top of a clause is never wrapped.
 *
 * Every test has the same timeout on purpose: Criterion 2.4.1's runner
 * leaks a 48-byte watchdog entry (which LeakSanitizer turns into a failed
 * run) when, under --jobs > 1, a test with a longer timeout is followed
 * by one with a shorter timeout. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "models.h"
#include "support.h"
#include "aorm/sql.h"

/* ==========================================================================
 * Models of this file: odd identifiers, a schema, every column type
 * ========================================================================== */

typedef struct weird {
    int64_t id;
    char *text;
} weird;

static const aorm_column weird_columns[] = {
    {.name = "id", .offset = offsetof(weird, id), .size = sizeof(int64_t), .type = AORM_INT8,
     .flags = AORM_PK | AORM_SERIAL},
    {.name = "col \"umn\"", .offset = offsetof(weird, text), .size = sizeof(char *), .type = AORM_TEXT,
     .flags = AORM_NULLABLE},
};
const aorm_model weird_model = {
    .name = "weird", .table = "we\"ird", .size = sizeof(weird), AORM_COLUMNS(weird_columns),
};

typedef struct thing {
    int64_t id;
    char *name;
} thing;

static const aorm_column thing_columns[] = {
    AORM_COLUMN(thing, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(thing, name, AORM_TEXT, 0),
};
const aorm_model thing_model = {
    AORM_MODEL_OF(thing, "things"), .schema = "my \"schema\"", AORM_COLUMNS(thing_columns),
};

typedef struct typed {
    int64_t id;
    bool b;
    int16_t i2;
    int32_t i4;
    float f4;
    double f8;
    char *num;
    char *txt;
    aorm_bytes bin;
    int32_t day;
    int64_t ts;
    aorm_opt_int64 tstz;
    aorm_uuid u;
    char *js;
    char *jsb;
} typed;

static const aorm_column typed_columns[] = {
    AORM_COLUMN(typed, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(typed, b, AORM_BOOL, 0),
    AORM_COLUMN(typed, i2, AORM_INT2, 0),
    AORM_COLUMN(typed, i4, AORM_INT4, 0),
    AORM_COLUMN(typed, f4, AORM_FLOAT4, 0),
    AORM_COLUMN(typed, f8, AORM_FLOAT8, 0),
    AORM_COLUMN(typed, num, AORM_NUMERIC, 0),
    AORM_COLUMN(typed, txt, AORM_TEXT, 0),
    AORM_COLUMN(typed, bin, AORM_BYTEA, AORM_NULLABLE),
    AORM_COLUMN(typed, day, AORM_DATE, 0),
    AORM_COLUMN(typed, ts, AORM_TIMESTAMP, 0),
    AORM_COLUMN(typed, tstz, AORM_TIMESTAMPTZ, AORM_NULLABLE),
    AORM_COLUMN(typed, u, AORM_UUID, 0),
    AORM_COLUMN(typed, js, AORM_JSON, AORM_NULLABLE),
    AORM_COLUMN(typed, jsb, AORM_JSONB, AORM_NULLABLE),
};
const aorm_model typed_model = {
    AORM_MODEL_OF(typed, "typed"), AORM_COLUMNS(typed_columns),
};

/* ==========================================================================
 * Helpers
 * ========================================================================== */

#define BOOK_COLS "\"books\".\"id\", \"books\".\"author_id\", \"books\".\"title\", \"books\".\"year\", \"books\".\"price\""
#define AUTHOR_COLS "\"authors\".\"id\", \"authors\".\"name\", \"authors\".\"born\""

/* Compiles q, asserting success, the exact text and the parameter count. */
static void expect(aorm_stmt *q, const char *sql, int nparams) {
    cr_assert_not_null(q);
    int rc = aorm_stmt_compile(q);
    cr_assert_eq(rc, 0, "compile failed: %s: %s", aorm_errname(rc), aorm_stmt_errmsg(q));
    cr_assert_str_eq(aorm_stmt_sql(q), sql);
    cr_assert_not_null(aorm_stmt_params(q));
    cr_assert_eq(aorm_params_count(aorm_stmt_params(q)), nparams, "expected %d parameters, got %d", nparams,
                 aorm_params_count(aorm_stmt_params(q)));
}

/* Asserts that q failed with code and that its message contains each of
 * the (up to two) needles. */
static void expect_error(aorm_stmt *q, int rc, int code, const char *needle, const char *needle2) {
    cr_assert_eq(rc, code, "expected %s, got %s (%s)", aorm_errname(code), aorm_errname(rc), aorm_stmt_errmsg(q));
    if (!q) return;
    cr_assert_eq(aorm_stmt_error(q), code);
    cr_assert_eq(aorm_stmt_compile(q), code, "compile must return the sticky error");
    cr_assert_null(aorm_stmt_sql(q));
    const char *m = aorm_stmt_errmsg(q);
    cr_assert_not_null(m);
    if (needle) cr_assert(strstr(m, needle), "message \"%s\" lacks \"%s\"", m, needle);
    if (needle2) cr_assert(strstr(m, needle2), "message \"%s\" lacks \"%s\"", m, needle2);
}

static uint32_t ptype(const aorm_stmt *q, int i) { return aorm_stmt_params(q)->slots[i].type; }

static const char *pval(const aorm_stmt *q, int i, int *len) {
    const aorm_params *p = aorm_stmt_params(q);
    cr_assert(i < p->count);
    *len = p->slots[i].len;
    cr_assert_eq(p->slots[i].format, 1, "parameter $%d is not binary", i + 1);
    return *len < 0 ? NULL : p->data + p->slots[i].offset;
}

static int64_t pint(const aorm_stmt *q, int i) {
    int len;
    const char *v = pval(q, i, &len);
    int64_t out = 0;
    cr_assert_eq(aorm_decode_int(ptype(q, i), v, len, &out), 0, "parameter $%d is not an integer", i + 1);
    return out;
}

static double pfloat(const aorm_stmt *q, int i) {
    int len;
    const char *v = pval(q, i, &len);
    double out = 0;
    cr_assert_eq(aorm_decode_float8(ptype(q, i), v, len, &out), 0);
    return out;
}

static void ptext(const aorm_stmt *q, int i, const char *want) {
    int len;
    const char *v = pval(q, i, &len);
    cr_assert_eq(ptype(q, i), AORM_T_TEXT);
    cr_assert_eq(len, (int)strlen(want), "parameter $%d: %d bytes, want \"%s\"", i + 1, len, want);
    cr_assert(memcmp(v, want, (size_t)len) == 0, "parameter $%d: \"%.*s\", want \"%s\"", i + 1, len, v, want);
}

static bool pnull(const aorm_stmt *q, int i) {
    int len;
    pval(q, i, &len);
    return len < 0;
}

static uint32_t be32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

/* A one-dimensional array parameter: element count and type; the
 * elements' data start at *elems. */
static int parray(const aorm_stmt *q, int i, uint32_t *elem, const char **elems) {
    int len;
    const char *v = pval(q, i, &len);
    cr_assert(len >= 12);
    uint32_t ndim = be32(v);
    *elem = be32(v + 8);
    if (ndim == 0) {
        *elems = v + 12;
        return 0;
    }
    cr_assert_eq(ndim, 1);
    *elems = v + 20;
    return (int)be32(v + 12);
}

/* Element k of an int8 array parameter (no NULLs). */
static int64_t parray_int8(const aorm_stmt *q, int i, int k) {
    uint32_t elem;
    const char *d;
    int n = parray(q, i, &elem, &d);
    cr_assert(k < n && elem == AORM_T_INT8);
    d += (size_t)k * 12;
    cr_assert_eq(be32(d), 8);
    int64_t out;
    cr_assert_eq(aorm_decode_int(AORM_T_INT8, d + 4, 8, &out), 0);
    return out;
}

/* ==========================================================================
 * SELECT
 * ========================================================================== */

Test(sql_compile, select_model, .timeout = 10) {
    aorm_stmt *q = aorm_select(&book_model);
    expect(q, "SELECT " BOOK_COLS " FROM \"books\"", 0);
    cr_assert(aorm_stmt_readonly(q));
    cr_assert_eq(aorm_stmt_model(q), &book_model);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(book, id)), 0);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(book, price)), 4);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(author, id)), AORM_ENOTFOUND);
    cr_assert_eq(aorm_stmt_label(q, "title"), 2);
    aorm_stmt_free(q);
}

Test(sql_compile, select_columns_and_labels, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, title), aorm_label(AORM_COL(book, price), "cost"),
                                       aorm_label(aorm_mul(AORM_COL(book, price), aorm_float8(2)), "double"),
                                       aorm_label(aorm_count_all(), "n"));
    aorm_group_by(q, AORM_COL(book, title));
    aorm_group_by(q, AORM_COL(book, price));
    expect(q,
           "SELECT \"books\".\"title\", \"books\".\"price\" AS \"cost\", \"books\".\"price\" * $1 AS \"double\", "
           "count(*) AS \"n\" FROM \"books\" GROUP BY \"books\".\"title\", \"books\".\"price\"",
           1);
    cr_assert_eq(ptype(q, 0), AORM_T_FLOAT8);
    cr_assert_float_eq(pfloat(q, 0), 2.0, 0);
    cr_assert_eq(aorm_stmt_model(q), &book_model, "FROM follows from the first column");
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(book, title)), 0);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(book, price)), 1, "a labelled column is found by its column");
    cr_assert_eq(aorm_stmt_column(q, aorm_label(AORM_COL(book, price), "cost")), 1);
    cr_assert_eq(aorm_stmt_label(q, "double"), 2);
    cr_assert_eq(aorm_stmt_label(q, "n"), 3);
    cr_assert_eq(aorm_stmt_label(q, "nope"), AORM_ENOTFOUND);
    aorm_stmt_free(q);
}

Test(sql_compile, select_without_from, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(aorm_label(aorm_int4(7), "seven"), aorm_text("x"));
    expect(q, "SELECT $1 AS \"seven\", $2", 2);
    cr_assert_eq(ptype(q, 0), AORM_T_INT4);
    cr_assert_eq(pint(q, 0), 7);
    ptext(q, 1, "x");
    cr_assert_null(aorm_stmt_model(q));
    aorm_stmt_free(q);

    /* aorm_from() names FROM when the list has no column. */
    q = aorm_select_columns(aorm_count_all());
    cr_assert_eq(aorm_from(q, &author_model), 0);
    expect(q, "SELECT count(*) FROM \"authors\"", 0);
    aorm_stmt_free(q);
}

Test(sql_compile, where_every_comparison, .timeout = 10) {
    aorm_stmt *q = aorm_select(&book_model);
    aorm_where(q, aorm_and(aorm_eq(AORM_COL(book, id), aorm_int8(1)), aorm_ne(AORM_COL(book, title), aorm_text("x")),
                           aorm_lt(AORM_COL(book, price), aorm_float8(9.5)),
                           aorm_le(AORM_COL(book, year), aorm_int4(2000)),
                           aorm_gt(AORM_COL(book, year), aorm_int2(3)),
                           aorm_ge(AORM_COL(book, price), aorm_float4(1.5f))));
    expect(q,
           "SELECT " BOOK_COLS " FROM \"books\" WHERE \"books\".\"id\" = $1 AND \"books\".\"title\" <> $2 AND "
           "\"books\".\"price\" < $3 AND \"books\".\"year\" <= $4 AND \"books\".\"year\" > $5 AND "
           "\"books\".\"price\" >= $6",
           6);
    uint32_t types[] = {AORM_T_INT8, AORM_T_TEXT, AORM_T_FLOAT8, AORM_T_INT4, AORM_T_INT2, AORM_T_FLOAT4};
    for (int i = 0; i < 6; i++) cr_assert_eq(ptype(q, i), types[i], "parameter $%d type %u", i + 1, ptype(q, i));
    cr_assert_eq(pint(q, 0), 1);
    ptext(q, 1, "x");
    cr_assert_float_eq(pfloat(q, 2), 9.5, 0);
    cr_assert_eq(pint(q, 3), 2000);
    cr_assert_eq(pint(q, 4), 3);
    cr_assert_float_eq(pfloat(q, 5), 1.5, 0);
    aorm_stmt_free(q);
}

Test(sql_compile, arithmetic_parenthesized, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, id));
    aorm_where(q, aorm_gt(aorm_mul(aorm_add(AORM_COL(book, price), aorm_float8(1)), aorm_float8(2)), aorm_float8(10)));
    aorm_where(q, aorm_eq(aorm_div(aorm_sub(AORM_COL(book, year), aorm_int4(1900)), aorm_int4(10)), aorm_int4(5)));
    expect(q,
           "SELECT \"books\".\"id\" FROM \"books\" WHERE ((\"books\".\"price\" + $1) * $2) > $3 AND "
           "((\"books\".\"year\" - $4) / $5) = $6",
           6);
    aorm_stmt_free(q);
}

Test(sql_compile, and_or_not_nesting, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, id));
    aorm_where(q, aorm_and(aorm_eq(AORM_COL(book, id), aorm_int8(1)),
                           aorm_or(aorm_eq(AORM_COL(book, year), aorm_int4(2)), aorm_eq(AORM_COL(book, year), aorm_int4(3)))));
    expect(q,
           "SELECT \"books\".\"id\" FROM \"books\" WHERE \"books\".\"id\" = $1 AND (\"books\".\"year\" = $2 OR "
           "\"books\".\"year\" = $3)",
           3);
    aorm_stmt_free(q);

    q = aorm_select_columns(AORM_COL(book, id));
    aorm_where(q, aorm_or(aorm_and(aorm_eq(AORM_COL(book, id), aorm_int8(1)), aorm_eq(AORM_COL(book, year), aorm_int4(2))),
                          aorm_not(aorm_or(aorm_eq(AORM_COL(book, year), aorm_int4(3)),
                                           aorm_not(aorm_eq(AORM_COL(book, id), aorm_int8(4)))))));
    /* A second aorm_where() is ANDed; the first (an OR) gets wrapped. */
    aorm_where(q, aorm_ne(AORM_COL(book, title), aorm_text("t")));
    expect(q,
           "SELECT \"books\".\"id\" FROM \"books\" WHERE ((\"books\".\"id\" = $1 AND \"books\".\"year\" = $2) OR "
           "NOT (\"books\".\"year\" = $3 OR NOT (\"books\".\"id\" = $4))) AND \"books\".\"title\" <> $5",
           5);
    cr_assert_eq(pint(q, 3), 4);
    ptext(q, 4, "t");
    aorm_stmt_free(q);

    /* One-element lists are just their element. */
    q = aorm_select_columns(AORM_COL(book, id));
    aorm_where(q, aorm_and(aorm_or(aorm_eq(AORM_COL(book, id), aorm_int8(1)))));
    expect(q, "SELECT \"books\".\"id\" FROM \"books\" WHERE (\"books\".\"id\" = $1)", 1);
    aorm_stmt_free(q);
}

Test(sql_compile, null_checks, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(author, id));
    aorm_where(q, aorm_or(aorm_is_null(AORM_COL(author, born)),
                          aorm_and(aorm_is_not_null(AORM_COL(author, born)),
                                   aorm_is_null(aorm_add(AORM_COL(author, born), aorm_int4(1))))));
    aorm_where(q, aorm_ne(AORM_COL(author, born), aorm_null(AORM_INT4)));
    expect(q,
           "SELECT \"authors\".\"id\" FROM \"authors\" WHERE (\"authors\".\"born\" IS NULL OR (\"authors\".\"born\" "
           "IS NOT NULL AND (\"authors\".\"born\" + $1) IS NULL)) AND \"authors\".\"born\" <> $2",
           2);
    cr_assert_eq(ptype(q, 1), AORM_T_INT4, "a NULL value keeps its type");
    cr_assert(pnull(q, 1));
    aorm_stmt_free(q);
}

Test(sql_compile, like_and_between, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, id));
    aorm_where(q, aorm_and(aorm_like(AORM_COL(book, title), aorm_text("a%")),
                           aorm_ilike(AORM_COL(book, title), aorm_text("%B")),
                           aorm_not_like(AORM_COL(book, title), aorm_text("c_")),
                           aorm_not_ilike(AORM_COL(book, title), aorm_text("D")),
                           aorm_between(AORM_COL(book, year), aorm_int4(1990), aorm_int4(1999)),
                           aorm_not(aorm_between(AORM_COL(book, price), aorm_float8(1), aorm_add(AORM_COL(book, price), aorm_float8(2))))));
    expect(q,
           "SELECT \"books\".\"id\" FROM \"books\" WHERE \"books\".\"title\" LIKE $1 AND \"books\".\"title\" ILIKE $2 "
           "AND \"books\".\"title\" NOT LIKE $3 AND \"books\".\"title\" NOT ILIKE $4 AND \"books\".\"year\" BETWEEN $5 "
           "AND $6 AND NOT (\"books\".\"price\" BETWEEN $7 AND (\"books\".\"price\" + $8))",
           8);
    ptext(q, 0, "a%");
    ptext(q, 3, "D");
    cr_assert_eq(pint(q, 4), 1990);
    cr_assert_eq(pint(q, 5), 1999);
    aorm_stmt_free(q);
}

/* ==========================================================================
 * IN lists
 * ========================================================================== */

static char *in_int8_sql(size_t n, bool negate) {
    int64_t *ids = malloc((n ? n : 1) * sizeof(*ids));
    for (size_t i = 0; i < n; i++) ids[i] = (int64_t)i * 3 - 7;
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, title));
    if (negate) aorm_where(q, aorm_not_in_int8(AORM_COL(book, id), ids, n));
    else aorm_where(q, aorm_in_int8(AORM_COL(book, id), ids, n));
    free(ids); /* the statement copied the array */
    cr_assert_eq(aorm_stmt_compile(q), 0, "%s", aorm_stmt_errmsg(q));
    cr_assert_eq(aorm_params_count(aorm_stmt_params(q)), 1);
    cr_assert_eq(ptype(q, 0), AORM_T_INT8_ARRAY);
    uint32_t elem;
    const char *d;
    cr_assert_eq(parray(q, 0, &elem, &d), (int)n);
    cr_assert_eq(elem, AORM_T_INT8);
    for (size_t i = 0; i < n; i += 97) cr_assert_eq(parray_int8(q, 0, (int)i), (int64_t)i * 3 - 7);
    char *s = strdup(aorm_stmt_sql(q));
    aorm_stmt_free(q);
    return s;
}

Test(sql_compile, in_int8_same_text_any_length, .timeout = 10) {
    char *s0 = in_int8_sql(0, false), *s1 = in_int8_sql(1, false), *s1000 = in_int8_sql(1000, false);
    cr_assert_str_eq(s0, "SELECT \"books\".\"title\" FROM \"books\" WHERE \"books\".\"id\" = ANY($1)");
    cr_assert(strcmp(s0, s1) == 0 && strcmp(s1, s1000) == 0, "IN-list text depends on its length");
    free(s0), free(s1), free(s1000);
    s0 = in_int8_sql(0, true), s1 = in_int8_sql(1, true), s1000 = in_int8_sql(1000, true);
    cr_assert_str_eq(s0, "SELECT \"books\".\"title\" FROM \"books\" WHERE NOT (\"books\".\"id\" = ANY($1))");
    cr_assert(strcmp(s0, s1) == 0 && strcmp(s1, s1000) == 0);
    free(s0), free(s1), free(s1000);
}

Test(sql_compile, in_text_uuid_same_text_any_length, .timeout = 10) {
    enum { N = 1000 };
    const char **names = calloc(N, sizeof(*names));
    uint8_t *uuids = calloc(N, 16);
    for (int i = 0; i < N; i++) names[i] = i % 2 ? "odd" : "even";
    char *first = NULL;
    const size_t counts[] = {0, 1, N};
    for (size_t k = 0; k < 3; k++) {
        aorm_stmt *q = aorm_select_columns(AORM_COL(tag, id));
        aorm_where(q, aorm_in_text(AORM_COL(tag, name), names, counts[k]));
        aorm_where(q, aorm_not_in_text(AORM_COL(tag, name), names, counts[k]));
        aorm_where(q, aorm_in_uuid(AORM_COL(tag, name), uuids, counts[k]));
        expect(q,
               "SELECT \"tags\".\"id\" FROM \"tags\" WHERE \"tags\".\"name\" = ANY($1) AND NOT (\"tags\".\"name\" = "
               "ANY($2)) AND \"tags\".\"name\" = ANY($3)",
               3);
        uint32_t elem;
        const char *d;
        cr_assert_eq(parray(q, 0, &elem, &d), (int)counts[k]);
        cr_assert_eq(parray(q, 2, &elem, &d), (int)counts[k]);
        if (!first) first = strdup(aorm_stmt_sql(q));
        else cr_assert(strcmp(first, aorm_stmt_sql(q)) == 0);
        aorm_stmt_free(q);
    }
    free(first);
    free(names);
    free(uuids);
}

Test(sql_compile, in_text_uuid_int4, .timeout = 10) {
    char a[] = "alpha", b[] = "be'ta";
    const char *names[] = {a, b, NULL};
    static const uint8_t uuids[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0xff};
    const int32_t years[] = {1999, 2001};
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, id));
    aorm_where(q, aorm_in_text(AORM_COL(book, title), names, 3));
    aorm_where(q, aorm_not_in_text(AORM_COL(book, title), names, 0));
    aorm_where(q, aorm_in_uuid(AORM_COL(book, title), uuids, 2));
    aorm_where(q, aorm_in_int4(AORM_COL(book, year), years, 2));
    a[0] = 'X'; /* copied at attach: the parameter keeps "alpha" */
    expect(q,
           "SELECT \"books\".\"id\" FROM \"books\" WHERE \"books\".\"title\" = ANY($1) AND NOT (\"books\".\"title\" = "
           "ANY($2)) AND \"books\".\"title\" = ANY($3) AND \"books\".\"year\" = ANY($4)",
           4);
    cr_assert_eq(ptype(q, 0), AORM_T_TEXT_ARRAY);
    cr_assert_eq(ptype(q, 1), AORM_T_TEXT_ARRAY);
    cr_assert_eq(ptype(q, 2), AORM_T_UUID_ARRAY);
    cr_assert_eq(ptype(q, 3), AORM_T_INT4_ARRAY);
    uint32_t elem;
    const char *d;
    cr_assert_eq(parray(q, 0, &elem, &d), 3);
    cr_assert_eq(elem, AORM_T_TEXT);
    cr_assert_eq(be32(d), 5);
    cr_assert(memcmp(d + 4, "alpha", 5) == 0);
    cr_assert_eq(be32(d + 9), 5);
    cr_assert(memcmp(d + 13, "be'ta", 5) == 0);
    cr_assert_eq(be32(d + 18), UINT32_MAX, "a NULL pointer is a NULL element");
    cr_assert_eq(parray(q, 1, &elem, &d), 0);
    cr_assert_eq(parray(q, 2, &elem, &d), 2);
    cr_assert_eq(elem, AORM_T_UUID);
    cr_assert(memcmp(d + 4, uuids, 16) == 0 && memcmp(d + 24, uuids + 16, 16) == 0);
    cr_assert_eq(parray(q, 3, &elem, &d), 2);
    cr_assert_eq(elem, AORM_T_INT4);
    cr_assert_eq(be32(d + 4), 1999);
    aorm_stmt_free(q);
}

/* ==========================================================================
 * Joins
 * ========================================================================== */

Test(sql_compile, join_explicit_and_duplicate_names, .timeout = 10) {
    aorm_stmt *q = aorm_select(&book_model);
    cr_assert_eq(aorm_join(q, &author_model, aorm_eq(AORM_COL(author, id), AORM_COL(book, author_id))), 0);
    cr_assert_eq(aorm_select_add_model(q, &author_model), 0);
    aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text("n")));
    expect(q,
           "SELECT " BOOK_COLS ", \"authors\".\"id\" AS \"authors_id\", \"authors\".\"name\", \"authors\".\"born\" "
           "FROM \"books\" JOIN \"authors\" ON \"authors\".\"id\" = \"books\".\"author_id\" WHERE "
           "\"authors\".\"name\" = $1",
           1);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(book, id)), 0);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(author, id)), 5);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(author, born)), 7);
    cr_assert_eq(aorm_stmt_label(q, "authors_id"), 5);
    aorm_stmt_free(q);

    /* A third "id" whose table_column name is taken gets a number. */
    q = aorm_select_columns(AORM_COL(book, id), aorm_label(AORM_COL(book, title), "authors_id"));
    aorm_left_join(q, &author_model, aorm_eq(AORM_COL(author, id), AORM_COL(book, author_id)));
    aorm_select_add(q, AORM_COL(author, id));
    aorm_select_add(q, aorm_count(AORM_COL(author, id)));
    aorm_select_add(q, aorm_count(AORM_COL(book, id)));
    aorm_group_by(q, AORM_COL(book, id));
    aorm_group_by(q, AORM_COL(author, id));
    expect(q,
           "SELECT \"books\".\"id\", \"books\".\"title\" AS \"authors_id\", \"authors\".\"id\" AS \"authors_id_2\", "
           "count(\"authors\".\"id\"), count(\"books\".\"id\") AS \"count_2\" FROM \"books\" LEFT JOIN \"authors\" ON "
           "\"authors\".\"id\" = \"books\".\"author_id\" GROUP BY \"books\".\"id\", \"authors\".\"id\"",
           0);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(author, id)), 2);
    aorm_stmt_free(q);
}

Test(sql_compile, join_relationships, .timeout = 10) {
    /* many-to-one: JOIN target ON target.pk = this.fk */
    aorm_stmt *q = aorm_select(&book_model);
    cr_assert_eq(aorm_join_rel(q, AORM_REL(book, author), false), 0, "%s", aorm_stmt_errmsg(q));
    expect(q, "SELECT " BOOK_COLS " FROM \"books\" JOIN \"authors\" ON \"authors\".\"id\" = \"books\".\"author_id\"", 0);
    aorm_stmt_free(q);

    /* one-to-many: JOIN target ON target.fk = this.pk */
    q = aorm_select(&author_model);
    cr_assert_eq(aorm_join_rel(q, AORM_REL(author, books), true), 0, "%s", aorm_stmt_errmsg(q));
    expect(q, "SELECT " AUTHOR_COLS " FROM \"authors\" LEFT JOIN \"books\" ON \"books\".\"author_id\" = \"authors\".\"id\"",
           0);
    aorm_stmt_free(q);

    /* many-to-many: the secondary, then the target */
    q = aorm_select_columns(AORM_COL(book, title), AORM_COL(tag, name));
    cr_assert_eq(aorm_join_rel(q, AORM_REL(book, tags), false), 0, "%s", aorm_stmt_errmsg(q));
    expect(q,
           "SELECT \"books\".\"title\", \"tags\".\"name\" FROM \"books\" JOIN \"book_tags\" ON "
           "\"book_tags\".\"book_id\" = \"books\".\"id\" JOIN \"tags\" ON \"tags\".\"id\" = \"book_tags\".\"tag_id\"",
           0);
    aorm_stmt_free(q);

    /* a relationship of a joined model */
    q = aorm_select_columns(AORM_COL(author, name), AORM_COL(tag, name));
    cr_assert_eq(aorm_join_rel(q, AORM_REL(author, books), false), 0);
    cr_assert_eq(aorm_join_rel(q, AORM_REL(book, tags), true), 0);
    expect(q,
           "SELECT \"authors\".\"name\", \"tags\".\"name\" AS \"tags_name\" FROM \"authors\" JOIN \"books\" ON "
           "\"books\".\"author_id\" = \"authors\".\"id\" LEFT JOIN \"book_tags\" ON \"book_tags\".\"book_id\" = "
           "\"books\".\"id\" LEFT JOIN \"tags\" ON \"tags\".\"id\" = \"book_tags\".\"tag_id\"",
           0);
    aorm_stmt_free(q);

    /* a relationship of a model that is not in the statement; a self-join */
    q = aorm_select(&tag_model);
    expect_error(q, aorm_join_rel(q, AORM_REL(book, author), false), AORM_EMISUSE, "author", "does not belong");
    aorm_stmt_free(q);
    q = aorm_select(&book_model);
    expect_error(q, aorm_join(q, &book_model, aorm_eq(AORM_COL(book, id), AORM_COL(book, id))), AORM_EMISUSE,
                 "self-join", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&book_model);
    expect_error(q, aorm_join_rel(q, NULL, false), AORM_EMISUSE, "NULL relationship", NULL);
    aorm_stmt_free(q);
}

/* ==========================================================================
 * ORDER BY, LIMIT/OFFSET, GROUP BY/HAVING, DISTINCT, locks
 * ========================================================================== */

Test(sql_compile, order_by_variants, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, id));
    aorm_order_by(q, AORM_COL(book, title), AORM_ASC);
    aorm_order_by(q, AORM_COL(book, price), AORM_DESC);
    aorm_order_by(q, AORM_COL(book, year), AORM_DESC | AORM_NULLS_LAST);
    aorm_order_by(q, AORM_COL(book, author_id), AORM_NULLS_FIRST);
    aorm_order_by(q, aorm_mul(AORM_COL(book, price), aorm_float8(2)), AORM_ASC | AORM_NULLS_LAST);
    expect(q,
           "SELECT \"books\".\"id\" FROM \"books\" ORDER BY \"books\".\"title\", \"books\".\"price\" DESC, "
           "\"books\".\"year\" DESC NULLS LAST, \"books\".\"author_id\" NULLS FIRST, \"books\".\"price\" * $1 NULLS "
           "LAST",
           1);
    expect_error(q, aorm_order_by(q, AORM_COL(book, id), AORM_NULLS_FIRST | AORM_NULLS_LAST), AORM_EMISUSE,
                 "aorm_order_by", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, limit_offset_are_parameters, .timeout = 10) {
    char *first = NULL;
    for (int64_t lim = 1; lim <= 1000; lim *= 10) {
        aorm_stmt *q = aorm_select_columns(AORM_COL(book, id));
        aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(5)));
        aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
        aorm_limit(q, lim);
        aorm_offset(q, lim * 2);
        expect(q,
               "SELECT \"books\".\"id\" FROM \"books\" WHERE \"books\".\"author_id\" = $1 ORDER BY \"books\".\"id\" "
               "LIMIT $2 OFFSET $3",
               3);
        cr_assert_eq(ptype(q, 1), AORM_T_INT8);
        cr_assert_eq(ptype(q, 2), AORM_T_INT8);
        cr_assert_eq(pint(q, 1), lim);
        cr_assert_eq(pint(q, 2), lim * 2);
        if (!first) first = strdup(aorm_stmt_sql(q));
        else cr_assert_str_eq(first, aorm_stmt_sql(q));
        aorm_stmt_free(q);
    }
    free(first);
    aorm_stmt *q = aorm_select(&book_model);
    expect_error(q, aorm_limit(q, -1), AORM_EMISUSE, "negative", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, group_by_having_aggregates, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, author_id), aorm_count_all(), aorm_sum(AORM_COL(book, price)),
                                       aorm_avg(AORM_COL(book, price)), aorm_min(AORM_COL(book, year)),
                                       aorm_max(AORM_COL(book, year)), aorm_count(AORM_COL(book, title)),
                                       aorm_count_distinct(AORM_COL(book, year)));
    aorm_where(q, aorm_gt(AORM_COL(book, price), aorm_float8(0)));
    aorm_group_by(q, AORM_COL(book, author_id));
    aorm_having(q, aorm_gt(aorm_count_all(), aorm_int8(2)));
    aorm_having(q, aorm_lt(aorm_sum(aorm_mul(AORM_COL(book, price), aorm_float8(1.5))), aorm_float8(1000)));
    aorm_order_by(q, aorm_count_all(), AORM_DESC);
    expect(q,
           "SELECT \"books\".\"author_id\", count(*), sum(\"books\".\"price\"), avg(\"books\".\"price\"), "
           "min(\"books\".\"year\"), max(\"books\".\"year\"), count(\"books\".\"title\") AS \"count_2\", "
           "count(DISTINCT \"books\".\"year\") AS \"count_3\" FROM \"books\" WHERE \"books\".\"price\" > $1 GROUP BY "
           "\"books\".\"author_id\" HAVING count(*) > $2 AND sum(\"books\".\"price\" * $3) < $4 ORDER BY count(*) DESC",
           4);
    cr_assert_eq(pint(q, 1), 2);
    cr_assert_eq(aorm_stmt_label(q, "count"), 1);
    cr_assert_eq(aorm_stmt_label(q, "count_3"), 7);
    aorm_stmt_free(q);
}

Test(sql_compile, distinct, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, author_id));
    aorm_distinct(q);
    expect(q, "SELECT DISTINCT \"books\".\"author_id\" FROM \"books\"", 0);
    aorm_stmt_free(q);
}

Test(sql_compile, locking, .timeout = 10) {
    static const struct {
        unsigned flags;
        const char *tail;
    } cases[] = {
        {AORM_LOCK_UPDATE, " FOR UPDATE"},
        {AORM_LOCK_UPDATE | AORM_LOCK_SKIP_LOCKED, " FOR UPDATE SKIP LOCKED"},
        {AORM_LOCK_UPDATE | AORM_LOCK_NOWAIT, " FOR UPDATE NOWAIT"},
        {AORM_LOCK_SHARE, " FOR SHARE"},
        {AORM_LOCK_SHARE | AORM_LOCK_SKIP_LOCKED, " FOR SHARE SKIP LOCKED"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        aorm_stmt *q = aorm_select_columns(AORM_COL(author, id));
        aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(1)));
        aorm_limit(q, 5);
        cr_assert(aorm_stmt_readonly(q));
        aorm_for_update(q, cases[i].flags);
        cr_assert_not(aorm_stmt_readonly(q), "a locking SELECT is not read-only");
        char want[256];
        snprintf(want, sizeof(want),
                 "SELECT \"authors\".\"id\" FROM \"authors\" WHERE \"authors\".\"id\" = $1 LIMIT $2%s", cases[i].tail);
        expect(q, want, 2);
        aorm_stmt_free(q);
    }
    aorm_stmt *q = aorm_select(&author_model);
    expect_error(q, aorm_for_update(q, AORM_LOCK_NOWAIT | AORM_LOCK_SKIP_LOCKED), AORM_EMISUSE, "NOWAIT", NULL);
    aorm_stmt_free(q);

    /* a locking subquery makes the whole statement locking */
    aorm_stmt *sub = aorm_select_columns(AORM_COL(book, author_id));
    aorm_for_update(sub, AORM_LOCK_SKIP_LOCKED);
    q = aorm_select(&author_model);
    aorm_where(q, aorm_in_select(AORM_COL(author, id), sub));
    expect(q,
           "SELECT " AUTHOR_COLS " FROM \"authors\" WHERE \"authors\".\"id\" IN (SELECT \"books\".\"author_id\" "
           "FROM \"books\" FOR UPDATE SKIP LOCKED)",
           0);
    cr_assert_not(aorm_stmt_readonly(q));
    aorm_stmt_free(q);
}

/* ==========================================================================
 * Subqueries
 * ========================================================================== */

Test(sql_compile, in_subquery_numbering, .timeout = 10) {
    aorm_stmt *sub = aorm_select_columns(AORM_COL(book, author_id));
    aorm_where(sub, aorm_gt(AORM_COL(book, price), aorm_float8(40)));
    aorm_limit(sub, 100);
    aorm_stmt *q = aorm_select(&author_model);
    aorm_where(q, aorm_gt(AORM_COL(author, born), aorm_int4(1900)));
    aorm_where(q, aorm_in_select(AORM_COL(author, id), sub));
    aorm_where(q, aorm_ne(AORM_COL(author, name), aorm_text("z")));
    aorm_limit(q, 10);
    expect(q,
           "SELECT " AUTHOR_COLS " FROM \"authors\" WHERE \"authors\".\"born\" > $1 AND \"authors\".\"id\" IN (SELECT "
           "\"books\".\"author_id\" FROM \"books\" WHERE \"books\".\"price\" > $2 LIMIT $3) AND \"authors\".\"name\" "
           "<> $4 LIMIT $5",
           5);
    cr_assert_eq(pint(q, 0), 1900);
    cr_assert_float_eq(pfloat(q, 1), 40.0, 0);
    cr_assert_eq(pint(q, 2), 100);
    ptext(q, 3, "z");
    cr_assert_eq(pint(q, 4), 10);
    cr_assert(aorm_stmt_readonly(q));
    /* The subquery belongs to q now: freeing it is ignored, changing it refused. */
    aorm_stmt_free(sub);
    cr_assert_eq(aorm_limit(sub, 1), AORM_EMISUSE);
    cr_assert_eq(aorm_stmt_compile(sub), AORM_EMISUSE);
    aorm_stmt_free(q);
}

Test(sql_compile, exists_correlated, .timeout = 10) {
    aorm_stmt *sub = aorm_select_columns(AORM_COL(book, id));
    aorm_where(sub, aorm_and(aorm_eq(AORM_COL(book, author_id), AORM_COL(author, id)),
                             aorm_gt(AORM_COL(book, year), aorm_int4(2000))));
    aorm_stmt *inner = aorm_select_columns(AORM_COL(book_tag, tag_id));
    aorm_where(inner, aorm_eq(AORM_COL(book_tag, book_id), AORM_COL(book, id)));
    aorm_where(sub, aorm_exists(inner));
    aorm_stmt *q = aorm_select_columns(AORM_COL(author, name));
    aorm_where(q, aorm_eq(AORM_COL(author, born), aorm_int4(1950)));
    aorm_where(q, aorm_not(aorm_exists(sub)));
    aorm_order_by(q, AORM_COL(author, name), AORM_ASC);
    expect(q,
           "SELECT \"authors\".\"name\" FROM \"authors\" WHERE \"authors\".\"born\" = $1 AND NOT EXISTS (SELECT "
           "\"books\".\"id\" FROM \"books\" WHERE (\"books\".\"author_id\" = \"authors\".\"id\" AND \"books\".\"year\" > "
           "$2) AND EXISTS (SELECT \"book_tags\".\"tag_id\" FROM \"book_tags\" WHERE \"book_tags\".\"book_id\" = "
           "\"books\".\"id\")) ORDER BY \"authors\".\"name\"",
           2);
    cr_assert_eq(pint(q, 1), 2000);
    aorm_stmt_free(q);
}

Test(sql_compile, raw_subquery, .timeout = 10) {
    aorm_stmt *sub = aorm_raw("SELECT id FROM authors WHERE born = :born OR born = :born + 1");
    aorm_bind(sub, "born", aorm_int4(1970));
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, title));
    aorm_where(q, aorm_eq(AORM_COL(book, year), aorm_int4(2001)));
    aorm_where(q, aorm_in_select(AORM_COL(book, author_id), sub));
    aorm_where(q, aorm_eq(AORM_COL(book, price), aorm_float8(3)));
    expect(q,
           "SELECT \"books\".\"title\" FROM \"books\" WHERE \"books\".\"year\" = $1 AND \"books\".\"author_id\" IN "
           "(SELECT id FROM authors WHERE born = $2 OR born = $2 + 1) AND \"books\".\"price\" = $3",
           3);
    cr_assert_eq(pint(q, 1), 1970);
    cr_assert_not(aorm_stmt_readonly(q), "raw text may write: not read-only");
    aorm_stmt_free(q);
}

/* ==========================================================================
 * INSERT
 * ========================================================================== */

#define INSERT_BOOK "INSERT INTO \"books\" (\"author_id\", \"title\", \"year\", \"price\")"

Test(sql_compile, insert_one_object, .timeout = 10) {
    char title[] = "Dune";
    book b = {.id = 0, .author_id = 3, .title = title, .year = 1965, .price = 9.5};
    aorm_stmt *q = aorm_insert(&book_model);
    cr_assert_eq(aorm_insert_object(q, &b), 0, "%s", aorm_stmt_errmsg(q));
    title[0] = 'X'; /* encoded at attach */
    b.year = 1;
    aorm_returning(q, AORM_COL(book, id));
    expect(q, INSERT_BOOK " VALUES ($1, $2, $3, $4) RETURNING \"books\".\"id\"", 4);
    uint32_t types[] = {AORM_T_INT8, AORM_T_TEXT, AORM_T_INT4, AORM_T_FLOAT8};
    for (int i = 0; i < 4; i++) cr_assert_eq(ptype(q, i), types[i]);
    cr_assert_eq(pint(q, 0), 3);
    ptext(q, 1, "Dune");
    cr_assert_eq(pint(q, 2), 1965);
    cr_assert_float_eq(pfloat(q, 3), 9.5, 0);
    cr_assert_not(aorm_stmt_readonly(q));
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(book, id)), 0);
    aorm_stmt_free(q);

    /* a serial id that is set is sent */
    b.id = 42;
    q = aorm_insert(&book_model);
    aorm_insert_object(q, &b);
    aorm_returning_all(q);
    expect(q,
           "INSERT INTO \"books\" (\"id\", \"author_id\", \"title\", \"year\", \"price\") VALUES ($1, $2, $3, $4, $5) "
           "RETURNING " BOOK_COLS,
           5);
    cr_assert_eq(pint(q, 0), 42);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(book, price)), 4);
    aorm_stmt_free(q);

    /* nothing to send: DEFAULT VALUES */
    weird w = {0};
    q = aorm_insert(&weird_model);
    aorm_insert_object(q, &w);
    aorm_returning(q, AORM_COL(weird, id));
    expect(q, "INSERT INTO \"we\"\"ird\" (\"col \"\"umn\"\"\") VALUES ($1) RETURNING \"we\"\"ird\".\"id\"", 1);
    cr_assert(pnull(q, 0), "a NULL text field is a NULL parameter");
    aorm_stmt_free(q);
    q = aorm_insert(&weird_model);
    expect(q, "INSERT INTO \"we\"\"ird\" DEFAULT VALUES", 0);
    aorm_stmt_free(q);
}

static char *insert_many_sql(size_t n) {
    book *rows = calloc(n, sizeof(*rows));
    const void **objs = calloc(n, sizeof(*objs));
    char title[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(title, sizeof(title), "t%zu", i);
        rows[i] = (book){.author_id = (int64_t)i + 1, .title = strdup(title), .year = 2000, .price = (double)i};
        objs[i] = &rows[i];
    }
    aorm_stmt *q = aorm_insert(&book_model);
    cr_assert_eq(aorm_insert_objects(q, objs, n), 0, "%s", aorm_stmt_errmsg(q));
    aorm_returning(q, AORM_COL(book, id));
    for (size_t i = 0; i < n; i++) free(rows[i].title);
    free(rows);
    free(objs);
    cr_assert_eq(aorm_stmt_compile(q), 0, "%s", aorm_stmt_errmsg(q));
    cr_assert_eq(aorm_params_count(aorm_stmt_params(q)), 4);
    uint32_t types[] = {AORM_T_INT8_ARRAY, AORM_T_TEXT_ARRAY, AORM_T_INT4_ARRAY, 1022};
    for (int i = 0; i < 4; i++) cr_assert_eq(ptype(q, i), types[i], "array parameter $%d", i + 1);
    uint32_t elem;
    const char *d;
    cr_assert_eq(parray(q, 0, &elem, &d), (int)n);
    cr_assert_eq(parray_int8(q, 0, (int)n - 1), (int64_t)n);
    cr_assert_eq(parray(q, 1, &elem, &d), (int)n);
    cr_assert_eq(be32(d), 2);
    cr_assert(memcmp(d + 4, "t0", 2) == 0, "titles were copied before the test freed them");
    char *s = strdup(aorm_stmt_sql(q));
    aorm_stmt_free(q);
    return s;
}

Test(sql_compile, insert_many_objects_unnest, .timeout = 10) {
    char *s2 = insert_many_sql(2), *s1000 = insert_many_sql(1000);
    cr_assert_str_eq(s2, INSERT_BOOK " SELECT * FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::double "
                                     "precision[]) RETURNING \"books\".\"id\"");
    cr_assert_str_eq(s2, s1000);
    free(s2);
    free(s1000);
}

Test(sql_compile, insert_many_every_type, .timeout = 10) {
    typed a = {.b = true, .i2 = 2, .i4 = 4, .f4 = 1.5f, .f8 = 2.5, .num = "12.50", .txt = "x", .day = 3, .ts = 4,
               .js = "{}", .jsb = "[]"};
    typed b = a;
    b.num = "-1";
    const void *objs[] = {&a, &b};
    aorm_stmt *q = aorm_insert(&typed_model);
    cr_assert_eq(aorm_insert_objects(q, objs, 2), 0, "%s", aorm_stmt_errmsg(q));
    expect(q,
           "INSERT INTO \"typed\" (\"b\", \"i2\", \"i4\", \"f4\", \"f8\", \"num\", \"txt\", \"bin\", \"day\", \"ts\", "
           "\"tstz\", \"u\", \"js\", \"jsb\") SELECT * FROM unnest($1::boolean[], $2::smallint[], $3::integer[], "
           "$4::real[], $5::double precision[], $6::numeric[], $7::text[], $8::bytea[], $9::date[], $10::timestamp "
           "without time zone[], $11::timestamp with time zone[], $12::uuid[], $13::json[], $14::jsonb[])",
           14);
    cr_assert_eq(ptype(q, 10), 1185);
    aorm_stmt_free(q);
}

Test(sql_compile, insert_rows_must_agree, .timeout = 10) {
    book a = {.author_id = 1, .title = "a", .year = 1, .price = 1};
    book b = a;
    b.id = 9;
    const void *objs[] = {&a, &b};
    aorm_stmt *q = aorm_insert(&book_model);
    expect_error(q, aorm_insert_objects(q, objs, 2), AORM_EMISUSE, "\"id\"", "same columns");
    aorm_stmt_free(q);
    q = aorm_insert(&book_model);
    expect_error(q, aorm_insert_objects(q, objs, 0), AORM_EMISUSE, "no objects", NULL);
    aorm_stmt_free(q);
    q = aorm_insert(&book_model);
    aorm_insert_object(q, &a);
    expect_error(q, aorm_insert_object(q, &b), AORM_EMISUSE, "already", NULL);
    aorm_stmt_free(q);
    q = aorm_insert(&book_model);
    expect_error(q, aorm_insert_object(q, NULL), AORM_EMISUSE, "NULL", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, insert_explicit_values, .timeout = 10) {
    aorm_stmt *q = aorm_insert(&author_model);
    aorm_set(q, AORM_COL(author, name), aorm_text("Le Guin"));
    aorm_set(q, AORM_COL(author, born), aorm_int4(1929));
    aorm_returning(q, AORM_COL(author, id));
    aorm_returning(q, aorm_label(AORM_COL(author, name), "who"));
    expect(q,
           "INSERT INTO \"authors\" (\"name\", \"born\") VALUES ($1, $2) RETURNING \"authors\".\"id\", "
           "\"authors\".\"name\" AS \"who\"",
           2);
    ptext(q, 0, "Le Guin");
    cr_assert_eq(pint(q, 1), 1929);
    cr_assert_eq(aorm_stmt_label(q, "who"), 1);
    expect_error(q, aorm_set(q, AORM_COL(author, name), aorm_text("again")), AORM_EMISUSE, "twice", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, on_conflict, .timeout = 10) {
    tag t = {.name = "sf"};
    aorm_stmt *q = aorm_insert(&tag_model);
    aorm_insert_object(q, &t);
    aorm_on_conflict_do_nothing(q, aorm_conflict_columns(AORM_COL(tag, name)));
    expect(q, "INSERT INTO \"tags\" (\"name\") VALUES ($1) ON CONFLICT (\"name\") DO NOTHING", 1);
    aorm_stmt_free(q);

    q = aorm_insert(&tag_model);
    aorm_insert_object(q, &t);
    aorm_on_conflict_do_nothing(q, NULL, 0);
    expect(q, "INSERT INTO \"tags\" (\"name\") VALUES ($1) ON CONFLICT DO NOTHING", 1);
    aorm_stmt_free(q);

    book b = {.id = 5, .author_id = 1, .title = "T", .year = 2000, .price = 1.25};
    q = aorm_insert(&book_model);
    aorm_insert_object(q, &b);
    aorm_on_conflict_do_update(q, aorm_conflict_columns(AORM_COL(book, id)));
    aorm_set(q, AORM_COL(book, title), aorm_excluded(AORM_COL(book, title)));
    aorm_set(q, AORM_COL(book, price), aorm_add(AORM_COL(book, price), aorm_excluded(AORM_COL(book, price))));
    aorm_set(q, AORM_COL(book, year), aorm_int4(1999));
    aorm_returning_all(q);
    expect(q,
           "INSERT INTO \"books\" (\"id\", \"author_id\", \"title\", \"year\", \"price\") VALUES ($1, $2, $3, $4, $5) "
           "ON CONFLICT (\"id\") DO UPDATE SET \"title\" = EXCLUDED.\"title\", \"price\" = \"books\".\"price\" + "
           "EXCLUDED.\"price\", \"year\" = $6 RETURNING " BOOK_COLS,
           6);
    cr_assert_eq(pint(q, 5), 1999);
    aorm_stmt_free(q);

    /* EXCLUDED outside DO UPDATE; DO UPDATE without a SET; a second ON CONFLICT */
    q = aorm_insert(&book_model);
    expect_error(q, aorm_set(q, AORM_COL(book, title), aorm_excluded(AORM_COL(book, title))), AORM_EMISUSE,
                 "EXCLUDED", NULL);
    aorm_stmt_free(q);
    q = aorm_insert(&tag_model);
    aorm_insert_object(q, &t);
    aorm_on_conflict_do_update(q, aorm_conflict_columns(AORM_COL(tag, name)));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "DO UPDATE", NULL);
    aorm_stmt_free(q);
    q = aorm_insert(&tag_model);
    aorm_on_conflict_do_nothing(q, NULL, 0);
    expect_error(q, aorm_on_conflict_do_nothing(q, NULL, 0), AORM_EMISUSE, "already", NULL);
    aorm_stmt_free(q);
    q = aorm_insert(&tag_model);
    expect_error(q, aorm_on_conflict_do_nothing(q, aorm_conflict_columns(AORM_COL(book, id))), AORM_EMISUSE, "books",
                 "tags");
    aorm_stmt_free(q);
}

/* ==========================================================================
 * UPDATE / DELETE
 * ========================================================================== */

Test(sql_compile, update_set_where_returning, .timeout = 10) {
    aorm_stmt *sub = aorm_select_columns(AORM_COL(author, id));
    aorm_where(sub, aorm_is_null(AORM_COL(author, born)));
    aorm_stmt *q = aorm_update(&book_model);
    aorm_set(q, AORM_COL(book, price), aorm_mul(AORM_COL(book, price), aorm_float8(1.1)));
    aorm_set(q, AORM_COL(book, title), aorm_text("t"));
    aorm_where(q, aorm_eq(AORM_COL(book, id), aorm_int8(7)));
    aorm_where(q, aorm_in_select(AORM_COL(book, author_id), sub));
    aorm_returning(q, AORM_COL(book, price));
    expect(q,
           "UPDATE \"books\" SET \"price\" = \"books\".\"price\" * $1, \"title\" = $2 WHERE \"books\".\"id\" = $3 AND "
           "\"books\".\"author_id\" IN (SELECT \"authors\".\"id\" FROM \"authors\" WHERE \"authors\".\"born\" IS NULL) "
           "RETURNING \"books\".\"price\"",
           3);
    cr_assert_float_eq(pfloat(q, 0), 1.1, 0);
    cr_assert_eq(pint(q, 2), 7);
    cr_assert_eq(aorm_stmt_model(q), &book_model);
    aorm_stmt_free(q);

    q = aorm_update(&book_model);
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "without any aorm_set", NULL);
    aorm_stmt_free(q);
    q = aorm_update(&book_model);
    expect_error(q, aorm_set(q, AORM_COL(author, name), aorm_text("x")), AORM_EMISUSE, "authors", "books");
    aorm_stmt_free(q);
}

Test(sql_compile, delete_where_returning, .timeout = 10) {
    aorm_stmt *q = aorm_delete(&book_model);
    aorm_where(q, aorm_lt(AORM_COL(book, year), aorm_int4(1900)));
    aorm_returning(q, AORM_COL(book, id));
    aorm_returning(q, AORM_COL(book, title));
    expect(q, "DELETE FROM \"books\" WHERE \"books\".\"year\" < $1 RETURNING \"books\".\"id\", \"books\".\"title\"", 1);
    cr_assert_not(aorm_stmt_readonly(q));
    aorm_stmt_free(q);
    q = aorm_delete(&tag_model);
    expect(q, "DELETE FROM \"tags\"", 0);
    aorm_stmt_free(q);
}

/* ==========================================================================
 * Raw text
 * ========================================================================== */

Test(sql_compile, raw_named_binds, .timeout = 10) {
    aorm_stmt *q = aorm_raw("SELECT * FROM books WHERE author_id = :aid AND title <> :t OR author_id = :aid");
    aorm_bind(q, "aid", aorm_int8(12));
    aorm_bind(q, ":t", aorm_text("x"));
    expect(q, "SELECT * FROM books WHERE author_id = $1 AND title <> $2 OR author_id = $1", 2);
    cr_assert_eq(ptype(q, 0), AORM_T_INT8);
    cr_assert_eq(pint(q, 0), 12);
    ptext(q, 1, "x");
    cr_assert_not(aorm_stmt_readonly(q));
    cr_assert_null(aorm_stmt_model(q));
    /* binding again replaces the value and drops the compiled text */
    aorm_bind(q, "aid", aorm_int8(13));
    cr_assert_null(aorm_stmt_sql(q));
    expect(q, "SELECT * FROM books WHERE author_id = $1 AND title <> $2 OR author_id = $1", 2);
    cr_assert_eq(pint(q, 0), 13);
    aorm_stmt_free(q);

    q = aorm_raw("SELECT 1");
    expect(q, "SELECT 1", 0);
    aorm_stmt_free(q);
}

Test(sql_compile, raw_placeholders_only_outside_literals, .timeout = 10) {
    static const char text[] =
        "SELECT ':no', 'it''s :no', E'it\\'s :no', e'\\\\', \"col:no\", \"a\"\":no\", $$ :no $$, "
        "$tag$ :no $x$ $ :no $tag$, x::text, y :: int, arr[1:2], f(a := 1), /* :no /* nested :no */ :no */ :yes, "
        "a$b, U&'d\\0061t:no' -- :no ' \" $$\n, :yes, :y2::int, :_z";
    static const char want[] =
        "SELECT ':no', 'it''s :no', E'it\\'s :no', e'\\\\', \"col:no\", \"a\"\":no\", $$ :no $$, "
        "$tag$ :no $x$ $ :no $tag$, x::text, y :: int, arr[1:2], f(a := 1), /* :no /* nested :no */ :no */ $1, "
        "a$b, U&'d\\0061t:no' -- :no ' \" $$\n, $1, $2::int, $3";
    aorm_stmt *q = aorm_raw(text);
    cr_assert_eq(aorm_stmt_error(q), 0, "%s", aorm_stmt_errmsg(q));
    aorm_bind(q, "yes", aorm_bool(true));
    aorm_bind(q, "y2", aorm_int2(5));
    aorm_bind(q, "_z", aorm_null(AORM_TEXT));
    expect(q, want, 3);
    cr_assert_eq(ptype(q, 0), AORM_T_BOOL);
    cr_assert_eq(ptype(q, 1), AORM_T_INT2);
    cr_assert_eq(ptype(q, 2), AORM_T_TEXT);
    cr_assert(pnull(q, 2));
    aorm_stmt_free(q);
}

Test(sql_compile, raw_errors, .timeout = 10) {
    aorm_stmt *q = aorm_raw("SELECT :a, :b");
    aorm_bind(q, "a", aorm_int4(1));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, ":b", "not bound");
    aorm_stmt_free(q);

    q = aorm_raw("SELECT :a");
    expect_error(q, aorm_bind(q, "nope", aorm_int4(1)), AORM_EMISUSE, ":nope", "unused");
    aorm_stmt_free(q);

    q = aorm_raw("SELECT $1");
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "positional", NULL);
    aorm_stmt_free(q);

    static const char *unterminated[] = {"SELECT 'x", "SELECT \"x", "SELECT $a$ x", "SELECT /* /* */", "SELECT E'\\'"};
    for (size_t i = 0; i < sizeof(unterminated) / sizeof(unterminated[0]); i++) {
        q = aorm_raw(unterminated[i]);
        expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "unterminated", NULL);
        aorm_stmt_free(q);
    }

    q = aorm_raw("SELECT :a");
    expect_error(q, aorm_bind(q, "a", AORM_COL(book, id)), AORM_EMISUSE, "only values", NULL);
    aorm_stmt_free(q);

    cr_assert_null(aorm_raw(NULL));
    cr_assert_eq(aorm_bind(NULL, "a", aorm_int4(1)), AORM_EMISUSE);
}

/* ==========================================================================
 * Identifiers
 * ========================================================================== */

Test(sql_compile, identifiers_quoted_and_doubled, .timeout = 10) {
    aorm_stmt *q = aorm_select(&weird_model);
    aorm_where(q, aorm_eq(AORM_COL(weird, text), aorm_text("\"; DROP TABLE x; --")));
    aorm_order_by(q, AORM_COL(weird, text), AORM_DESC);
    expect(q,
           "SELECT \"we\"\"ird\".\"id\", \"we\"\"ird\".\"col \"\"umn\"\"\" FROM \"we\"\"ird\" WHERE "
           "\"we\"\"ird\".\"col \"\"umn\"\"\" = $1 ORDER BY \"we\"\"ird\".\"col \"\"umn\"\"\" DESC",
           1);
    ptext(q, 0, "\"; DROP TABLE x; --");
    aorm_stmt_free(q);

    q = aorm_select(&thing_model);
    aorm_where(q, aorm_eq(AORM_COL(thing, id), aorm_int8(1)));
    expect(q,
           "SELECT \"my \"\"schema\"\"\".\"things\".\"id\", \"my \"\"schema\"\"\".\"things\".\"name\" FROM "
           "\"my \"\"schema\"\"\".\"things\" WHERE \"my \"\"schema\"\"\".\"things\".\"id\" = $1",
           1);
    aorm_stmt_free(q);

    q = aorm_update(&thing_model);
    aorm_set(q, AORM_COL(thing, name), aorm_text("n"));
    aorm_returning(q, AORM_COL(thing, id));
    expect(q,
           "UPDATE \"my \"\"schema\"\"\".\"things\" SET \"name\" = $1 RETURNING \"my \"\"schema\"\"\".\"things\".\"id\"",
           1);
    aorm_stmt_free(q);
}

/* ==========================================================================
 * Values: every type, copies, encoding errors
 * ========================================================================== */

Test(sql_compile, value_types, .timeout = 10) {
    static const uint8_t u[16] = {0xde, 0xad};
    static const uint8_t bytes[3] = {0, 1, 2};
    aorm_stmt *q = aorm_select_columns(aorm_bool(true), aorm_int2(-2), aorm_int4(-4), aorm_int8(INT64_MIN),
                                       aorm_float4(0.5f), aorm_float8(-0.25), aorm_numeric("-12.3400"),
                                       aorm_text("t"), aorm_bytea(bytes, 3), aorm_date(-1), aorm_timestamp(5),
                                       aorm_timestamptz(6), aorm_uuid_value(u), aorm_json("{\"a\":1}"),
                                       aorm_jsonb("[1]"), aorm_text_n("ab\0", 2), aorm_null(AORM_UUID));
    expect(q, "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17", 17);
    uint32_t types[] = {AORM_T_BOOL,      AORM_T_INT2,        AORM_T_INT4,  AORM_T_INT8, AORM_T_FLOAT4, AORM_T_FLOAT8,
                        AORM_T_NUMERIC,   AORM_T_TEXT,        AORM_T_BYTEA, AORM_T_DATE, AORM_T_TIMESTAMP,
                        AORM_T_TIMESTAMPTZ, AORM_T_UUID,      AORM_T_JSON,  AORM_T_JSONB, AORM_T_TEXT, AORM_T_UUID};
    for (int i = 0; i < 17; i++) cr_assert_eq(ptype(q, i), types[i], "parameter $%d: type %u", i + 1, ptype(q, i));
    cr_assert_eq(pint(q, 3), INT64_MIN);
    int len;
    const char *v = pval(q, 8, &len);
    cr_assert(len == 3 && memcmp(v, bytes, 3) == 0);
    v = pval(q, 12, &len);
    cr_assert(len == 16 && memcmp(v, u, 16) == 0);
    v = pval(q, 14, &len);
    cr_assert(len == 4 && v[0] == 1 && memcmp(v + 1, "[1]", 3) == 0, "jsonb carries its version byte");
    ptext(q, 15, "ab");
    cr_assert(pnull(q, 16));
    aorm_stmt_free(q);
}

Test(sql_compile, values_are_copied, .timeout = 10) {
    char buf[16] = "before";
    int64_t ids[3] = {1, 2, 3};
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, id));
    {
        /* the expression lives in this block only */
        aorm_where(q, aorm_or(aorm_eq(AORM_COL(book, title), aorm_text(buf)), aorm_in_int8(AORM_COL(book, id), ids, 3)));
    }
    strcpy(buf, "after!");
    ids[0] = 99;
    expect(q, "SELECT \"books\".\"id\" FROM \"books\" WHERE \"books\".\"title\" = $1 OR \"books\".\"id\" = ANY($2)", 2);
    ptext(q, 0, "before");
    cr_assert_eq(parray_int8(q, 1, 0), 1);
    aorm_stmt_free(q);
}

Test(sql_compile, encoding_and_range_errors, .timeout = 10) {
    aorm_stmt *q = aorm_select(&author_model);
    expect_error(q, aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text_n("a\0b", 3))), AORM_EENCODING, "NUL",
                 NULL);
    aorm_stmt_free(q);
    q = aorm_select(&author_model);
    expect_error(q, aorm_where(q, aorm_eq(AORM_COL(author, born), aorm_int2(40000))), AORM_ERANGE, "40000", "int2");
    aorm_stmt_free(q);
    q = aorm_select(&author_model);
    expect_error(q, aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_numeric("1.2.3"))), AORM_EENCODING, "numeric",
                 "1.2.3");
    aorm_stmt_free(q);
    q = aorm_insert(&author_model);
    char bad[] = "a\0b";
    author a = {.name = bad};
    cr_assert_eq(aorm_insert_object(q, &a), 0, "a C string stops at its NUL");
    aorm_stmt_free(q);
}

/* ==========================================================================
 * Misuse: errors, never crashes
 * ========================================================================== */

Test(sql_compile, null_statement, .timeout = 10) {
    cr_assert_null(aorm_select(NULL));
    cr_assert_null(aorm_insert(NULL));
    cr_assert_null(aorm_update(NULL));
    cr_assert_null(aorm_delete(NULL));
    cr_assert_eq(aorm_where(NULL, aorm_eq(AORM_COL(book, id), aorm_int8(1))), AORM_EMISUSE);
    cr_assert_eq(aorm_select_add(NULL, AORM_COL(book, id)), AORM_EMISUSE);
    cr_assert_eq(aorm_select_add_model(NULL, &book_model), AORM_EMISUSE);
    cr_assert_eq(aorm_from(NULL, &book_model), AORM_EMISUSE);
    cr_assert_eq(aorm_distinct(NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_join(NULL, &book_model, aorm_bool(true)), AORM_EMISUSE);
    cr_assert_eq(aorm_left_join(NULL, &book_model, aorm_bool(true)), AORM_EMISUSE);
    cr_assert_eq(aorm_join_rel(NULL, AORM_REL(book, author), false), AORM_EMISUSE);
    cr_assert_eq(aorm_order_by(NULL, AORM_COL(book, id), 0), AORM_EMISUSE);
    cr_assert_eq(aorm_group_by(NULL, AORM_COL(book, id)), AORM_EMISUSE);
    cr_assert_eq(aorm_having(NULL, aorm_bool(true)), AORM_EMISUSE);
    cr_assert_eq(aorm_limit(NULL, 1), AORM_EMISUSE);
    cr_assert_eq(aorm_offset(NULL, 1), AORM_EMISUSE);
    cr_assert_eq(aorm_for_update(NULL, 0), AORM_EMISUSE);
    cr_assert_eq(aorm_insert_object(NULL, &(book){0}), AORM_EMISUSE);
    cr_assert_eq(aorm_insert_objects(NULL, NULL, 0), AORM_EMISUSE);
    cr_assert_eq(aorm_on_conflict_do_nothing(NULL, NULL, 0), AORM_EMISUSE);
    cr_assert_eq(aorm_on_conflict_do_update(NULL, NULL, 0), AORM_EMISUSE);
    cr_assert_eq(aorm_set(NULL, AORM_COL(book, id), aorm_int8(1)), AORM_EMISUSE);
    cr_assert_eq(aorm_returning(NULL, AORM_COL(book, id)), AORM_EMISUSE);
    cr_assert_eq(aorm_returning_all(NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_stmt_compile(NULL), AORM_EMISUSE);
    cr_assert_null(aorm_stmt_sql(NULL));
    cr_assert_null(aorm_stmt_params(NULL));
    cr_assert_eq(aorm_stmt_error(NULL), AORM_EMISUSE);
    cr_assert_not_null(aorm_stmt_errmsg(NULL));
    cr_assert_not(aorm_stmt_readonly(NULL));
    cr_assert_null(aorm_stmt_model(NULL));
    cr_assert_eq(aorm_stmt_column(NULL, AORM_COL(book, id)), AORM_EMISUSE);
    cr_assert_eq(aorm_stmt_label(NULL, "x"), AORM_EMISUSE);
    cr_assert_eq(aorm_stmt_execute(NULL, NULL, NULL, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_stmt_execute_on(NULL, NULL, NULL, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_stmt_load(NULL, NULL, 0, &book_model, NULL, NULL), AORM_EMISUSE);
    aorm_stmt_free(NULL);
    /* a subquery handed to a NULL statement is freed (ASan would see a leak) */
    cr_assert_eq(aorm_where(NULL, aorm_exists(aorm_select(&book_model))), AORM_EMISUSE);
    /* ... once, even when passed twice */
    aorm_stmt *sub = aorm_select(&book_model);
    cr_assert_eq(aorm_where(NULL, aorm_or(aorm_exists(sub), aorm_exists(sub))), AORM_EMISUSE);
    sub = aorm_select(&book_model);
    cr_assert_eq(aorm_set(NULL, AORM_COL(book, id), aorm_exists(sub)), AORM_EMISUSE);
    /* with a statement, the second use is refused and the subquery freed once */
    sub = aorm_select(&book_model);
    aorm_stmt *q = aorm_select(&author_model);
    expect_error(q, aorm_where(q, aorm_or(aorm_exists(sub), aorm_exists(sub))), AORM_EMISUSE, "attached once", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, null_expression, .timeout = 10) {
    aorm_stmt *q = aorm_select(&book_model);
    expect_error(q, aorm_where(q, NULL), AORM_EMISUSE, "aorm_where", "NULL expression");
    aorm_stmt_free(q);
    q = aorm_select(&book_model);
    expect_error(q, aorm_where(q, aorm_and(aorm_bool(true), NULL)), AORM_EMISUSE, "NULL expression", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&book_model);
    expect_error(q, aorm_where(q, aorm_eq(AORM_COL(book, id), NULL)), AORM_EMISUSE, "NULL expression", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(AORM_COL(book, id), NULL, AORM_COL(book, title));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "aorm_select_add", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, column_not_in_statement, .timeout = 10) {
    aorm_stmt *q = aorm_select(&book_model);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text("x"))), 0, "checked at compile");
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "authors", "name");
    aorm_stmt_free(q);

    q = aorm_delete(&book_model);
    aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(1)));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "authors.id", NULL);
    aorm_stmt_free(q);

    q = aorm_insert(&book_model);
    aorm_set(q, AORM_COL(book, title), aorm_text("t"));
    aorm_returning(q, AORM_COL(tag, name));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "tags", "name");
    aorm_stmt_free(q);

    /* an offset the model does not declare */
    q = aorm_select(&book_model);
    expect_error(q, aorm_where(q, AORM__X(.kind = AORM_X_COLUMN, .model = &book_model, .offset = 999)), AORM_EMISUSE,
                 "offset 999", "books");
    aorm_stmt_free(q);
}

Test(sql_compile, wrong_statement_kind, .timeout = 10) {
    aorm_stmt *q = aorm_select(&tag_model);
    expect_error(q, aorm_on_conflict_do_nothing(q, NULL, 0), AORM_EMISUSE, "aorm_on_conflict_do_nothing", "SELECT");
    aorm_stmt_free(q);
    q = aorm_select(&tag_model);
    expect_error(q, aorm_returning(q, AORM_COL(tag, id)), AORM_EMISUSE, "aorm_returning", "SELECT");
    aorm_stmt_free(q);
    q = aorm_insert(&tag_model);
    expect_error(q, aorm_limit(q, 1), AORM_EMISUSE, "aorm_limit", "INSERT");
    aorm_stmt_free(q);
    q = aorm_insert(&tag_model);
    expect_error(q, aorm_where(q, aorm_bool(true)), AORM_EMISUSE, "aorm_where", "INSERT");
    aorm_stmt_free(q);
    q = aorm_delete(&tag_model);
    expect_error(q, aorm_set(q, AORM_COL(tag, name), aorm_text("x")), AORM_EMISUSE, "aorm_set", "DELETE");
    aorm_stmt_free(q);
    q = aorm_update(&tag_model);
    expect_error(q, aorm_order_by(q, AORM_COL(tag, name), 0), AORM_EMISUSE, "aorm_order_by", "UPDATE");
    aorm_stmt_free(q);
    q = aorm_select(&tag_model);
    expect_error(q, aorm_bind(q, "x", aorm_int4(1)), AORM_EMISUSE, "aorm_bind", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&tag_model);
    expect_error(q, aorm_where(q, aorm_label(AORM_COL(tag, id), "x")), AORM_EMISUSE, "label", NULL);
    aorm_stmt_free(q);
    /* a subquery must be a SELECT; it is freed with the statement all the same */
    q = aorm_select(&tag_model);
    expect_error(q, aorm_where(q, aorm_exists(aorm_delete(&book_model))), AORM_EMISUSE, "SELECT", NULL);
    aorm_stmt_free(q);
    /* a statement cannot contain itself */
    q = aorm_select(&tag_model);
    expect_error(q, aorm_where(q, aorm_exists(q)), AORM_EMISUSE, "itself", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, errors_are_sticky, .timeout = 10) {
    aorm_stmt *sub = aorm_select(&book_model);
    aorm_stmt *q = aorm_select(&author_model);
    cr_assert_eq(aorm_where(q, NULL), AORM_EMISUSE);
    const char *msg = aorm_stmt_errmsg(q);
    /* later calls return the first error; a subquery passed is still taken over */
    cr_assert_eq(aorm_where(q, aorm_in_select(AORM_COL(author, id), sub)), AORM_EMISUSE);
    cr_assert_eq(aorm_limit(q, 1), AORM_EMISUSE);
    cr_assert_eq(aorm_stmt_errmsg(q), msg);
    cr_assert_eq(aorm_stmt_compile(q), AORM_EMISUSE);
    aorm_stmt_free(q);

    /* a subquery in error poisons its parent */
    sub = aorm_select(&book_model);
    aorm_where(sub, aorm_eq(AORM_COL(book, title), aorm_text_n("\0", 1)));
    q = aorm_select(&author_model);
    expect_error(q, aorm_where(q, aorm_exists(sub)), AORM_EENCODING, "subquery", "NUL");
    aorm_stmt_free(q);
}

Test(sql_compile, compile_cache, .timeout = 10) {
    aorm_stmt *q = aorm_select(&book_model);
    cr_assert_null(aorm_stmt_sql(q));
    cr_assert_eq(aorm_stmt_compile(q), 0);
    const char *s1 = aorm_stmt_sql(q);
    cr_assert_eq(aorm_stmt_compile(q), 0);
    cr_assert_eq(aorm_stmt_sql(q), s1, "a second compile reuses the first");
    aorm_where(q, aorm_eq(AORM_COL(book, id), aorm_int8(3)));
    cr_assert_null(aorm_stmt_sql(q), "a builder call drops the compiled text");
    expect(q, "SELECT " BOOK_COLS " FROM \"books\" WHERE \"books\".\"id\" = $1", 1);
    aorm_stmt_free(q);
}

/* Building and compiling a simple select takes microseconds (with
 * sanitizers on, a generous bound; the figure is logged). */
Test(sql_compile, compile_is_fast, .timeout = 10) {
    enum { N = 20000 };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) {
        aorm_stmt *q = aorm_select(&book_model);
        aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(i)));
        aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
        aorm_limit(q, 10);
        cr_assert_eq(aorm_stmt_compile(q), 0);
        aorm_stmt_free(q);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e3 / N;
    cr_log_info("build + compile + free of a simple select: %.2f us", us);
    cr_assert_lt(us, 100.0, "%.2f us per statement", us);
}

/* ==========================================================================
 * Regressions found by tests/fuzz/fuzz_compile
 *
 * Leaks: LeakSanitizer reports a leak in a test process at its exit, but
 * that report does not fail the test, so these tests ask for a leak check
 * themselves once everything is freed (sanitizer builds; a no-op else).
 * ========================================================================== */

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#define LEAKED() __lsan_do_recoverable_leak_check()
#else
#define LEAKED() 0
#endif

/* Runs body in a frame of its own and then checks for leaks: the check
 * scans the live stack, where pointers left by the body's compound
 * literals would still make a leaked statement look reachable. */
#define LEAK_TEST(name, what)                                                       \
    static __attribute__((noinline)) void name##_body(void);                       \
    Test(sql_compile, name, .timeout = 10) {                                         \
        name##_body();                                                               \
        cr_assert_eq(LEAKED(), 0, what);                                             \
    }                                                                                \
    static __attribute__((noinline)) void name##_body(void)

/* An ON CONFLICT column list is a list of expressions: a subquery inside
 * one is consumed like everywhere else when the call is refused (wrong
 * statement kind, a statement already in error, a NULL statement, a
 * refused column further down the list). It used to leak. */
LEAK_TEST(on_conflict_refused_takes_its_subqueries, "a refused ON CONFLICT leaked its subqueries") {
    /* not an INSERT */
    aorm_stmt *q = aorm_select(&book_model);
    expect_error(q,
                 aorm_on_conflict_do_nothing(q, aorm_conflict_columns(aorm_in_select(AORM_COL(book, id),
                                                                                     aorm_select(&book_model)))),
                 AORM_EMISUSE, "not allowed on a SELECT", NULL);
    aorm_stmt_free(q);
    /* a statement already in error */
    q = aorm_insert(&book_model);
    aorm_set(q, AORM_COL(book, title), aorm_text_n("\0", 1));
    cr_assert_eq(aorm_on_conflict_do_update(q, aorm_conflict_columns(AORM_COL(book, id),
                                                                     aorm_exists(aorm_select(&author_model)))),
                 AORM_EENCODING);
    aorm_stmt_free(q);
    /* a NULL statement frees them, once even when one is passed twice */
    aorm_stmt *sub = aorm_select(&author_model);
    cr_assert_eq(aorm_on_conflict_do_nothing(NULL, aorm_conflict_columns(aorm_exists(sub), aorm_exists(sub))),
                 AORM_EMISUSE);
    /* the first entry is refused: the later ones' subqueries are taken too */
    q = aorm_insert(&book_model);
    expect_error(q,
                 aorm_on_conflict_do_nothing(q, aorm_conflict_columns(aorm_eq(AORM_COL(book, id), aorm_int8(1)),
                                                                      aorm_exists(aorm_select(&author_model)))),
                 AORM_EMISUSE, "must be a column", NULL);
    aorm_stmt_free(q);
    /* ON CONFLICT given twice */
    q = aorm_insert(&book_model);
    cr_assert_eq(aorm_on_conflict_do_nothing(q, NULL, 0), 0);
    expect_error(q, aorm_on_conflict_do_nothing(q, aorm_conflict_columns(aorm_exists(aorm_select(&book_model)))),
                 AORM_EMISUSE, "already given", NULL);
    aorm_stmt_free(q);
}

/* The same for aorm_select_add on a statement that is not a SELECT, and
 * for aorm_set's target after object rows: both used to leak. */
LEAK_TEST(refused_select_add_and_set_take_their_subqueries, "a refused select_add or set leaked its subqueries") {
    aorm_stmt *q = aorm_raw("SELECT 1");
    expect_error(q, aorm_select_add(q, aorm_exists(aorm_select(&book_model))), AORM_EMISUSE,
                 "not allowed on a raw SQL", NULL);
    aorm_stmt_free(q);
    q = aorm_delete(&book_model);
    expect_error(q, aorm_select_add(q, aorm_label(aorm_exists(aorm_select(&author_model)), "e")), AORM_EMISUSE,
                 "not allowed on a DELETE", NULL);
    aorm_stmt_free(q);
    book b = {.id = 1, .author_id = 2, .title = "t", .year = 2000, .price = 1.0};
    q = aorm_insert(&book_model);
    cr_assert_eq(aorm_insert_object(q, &b), 0);
    expect_error(q, aorm_set(q, aorm_exists(aorm_select(&book_model)), aorm_exists(aorm_select(&author_model))),
                 AORM_EMISUSE, "already has object rows", NULL);
    aorm_stmt_free(q);
}

/* Subqueries are taken over wherever they sit in a refused expression:
 * under EXCLUDED (which takes a column), and at the bottom of a tree too
 * deep to be copied. Both used to leak. */
LEAK_TEST(refused_trees_take_every_subquery, "subqueries under EXCLUDED or deep in a refused tree leaked") {
    aorm_stmt *q = aorm_select(&book_model);
    expect_error(q, aorm_where(q, aorm_excluded(aorm_exists(aorm_select(&author_model)))), AORM_EMISUSE,
                 "EXCLUDED", NULL);
    aorm_stmt_free(q);
    cr_assert_eq(aorm_where(NULL, aorm_excluded(aorm_exists(aorm_select(&author_model)))), AORM_EMISUSE);

    enum { DEEP = 2000 };
    aorm_expr *chain = calloc(DEEP, sizeof(*chain));
    cr_assert_not_null(chain);
    for (int pass = 0; pass < 2; pass++) {
        chain[DEEP - 1] = (aorm_expr){.kind = AORM_X_EXISTS, .sub = aorm_select(&author_model)};
        for (int i = DEEP - 2; i >= 0; i--) chain[i] = (aorm_expr){.kind = AORM_X_NOT, .a = &chain[i + 1]};
        if (pass == 0) {
            q = aorm_select(&book_model);
            expect_error(q, aorm_where(q, &chain[0]), AORM_EMISUSE, "deeper than", NULL);
            aorm_stmt_free(q);
        } else {
            cr_assert_eq(aorm_where(NULL, &chain[0]), AORM_EMISUSE);
        }
    }
    free(chain);
}

/* ==========================================================================
 * Hard queries: aliases, CTEs, windows, set operations, subqueries in
 * FROM, expressions, INSERT ... SELECT, UPDATE ... FROM, DELETE ... USING
 * ========================================================================== */

#define CORE_T_EMPLOYEES "employees"
#define CORE_T_ARCHIVE "employee_archive"
#define CORE_T_DFLT "dflt"
#include "core_models.h"

#define EMP_COLS                                                                                      \
    "\"employees\".\"id\", \"employees\".\"name\", \"employees\".\"manager_id\", \"employees\".\"dept\", " \
    "\"employees\".\"salary\", \"employees\".\"doc\""

Test(sql_compile, self_join_with_alias, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(AORM_COL(employee, name), aorm_label(AORM_ACOL("mgr", employee, name), "boss"));
    aorm_join_alias(q, &employee_model, "mgr", aorm_eq(AORM_ACOL("mgr", employee, id), AORM_COL(employee, manager_id)),
                    AORM_JOIN_LEFT);
    aorm_where(q, aorm_gt(AORM_ACOL("mgr", employee, salary), aorm_float8(100)));
    expect(q,
           "SELECT \"employees\".\"name\", \"mgr\".\"name\" AS \"boss\" FROM \"employees\" LEFT JOIN \"employees\" "
           "AS \"mgr\" ON \"mgr\".\"id\" = \"employees\".\"manager_id\" WHERE \"mgr\".\"salary\" > $1",
           1);
    cr_assert(aorm_stmt_readonly(q));
    aorm_stmt_free(q);

    /* a relationship joined under an alias; each side loads on its own */
    q = aorm_select(&employee_model);
    cr_assert_eq(aorm_select_add_alias(q, &employee_model, "boss"), 0);
    cr_assert_eq(aorm_join_rel_alias(q, AORM_REL(employee, manager), "boss", true), 0);
    expect(q,
           "SELECT " EMP_COLS ", \"boss\".\"id\" AS \"boss_id\", \"boss\".\"name\" AS \"boss_name\", "
           "\"boss\".\"manager_id\" AS \"boss_manager_id\", \"boss\".\"dept\" AS \"boss_dept\", \"boss\".\"salary\" AS "
           "\"boss_salary\", \"boss\".\"doc\" AS \"boss_doc\" FROM \"employees\" LEFT JOIN \"employees\" AS \"boss\" ON "
           "\"boss\".\"id\" = \"employees\".\"manager_id\"",
           0);
    cr_assert_eq(aorm_stmt_column(q, AORM_COL(employee, name)), 1);
    cr_assert_eq(aorm_stmt_column(q, AORM_ACOL("boss", employee, name)), 7);
    cr_assert_eq(aorm_stmt_column(q, AORM_ACOL("nobody", employee, name)), AORM_ENOTFOUND);
    aorm_stmt_free(q);

    /* one-to-many the other way, FROM under an alias */
    q = aorm_select_alias(&employee_model, "e");
    aorm_join_rel_alias(q, AORM_REL(employee, reports), "r", false);
    aorm_where(q, aorm_eq(AORM_ACOL("r", employee, dept), aorm_text("x")));
    expect(q,
           "SELECT \"e\".\"id\", \"e\".\"name\", \"e\".\"manager_id\", \"e\".\"dept\", \"e\".\"salary\", \"e\".\"doc\" "
           "FROM \"employees\" AS \"e\" JOIN \"employees\" AS \"r\" ON \"r\".\"manager_id\" = \"e\".\"id\" WHERE "
           "\"r\".\"dept\" = $1",
           1);
    aorm_stmt_free(q);

    /* without an alias the second join is refused, saying how to do it */
    q = aorm_select(&employee_model);
    expect_error(q, aorm_join_rel(q, AORM_REL(employee, manager), true), AORM_EMISUSE, "alias", "self-join");
    aorm_stmt_free(q);
}

Test(sql_compile, alias_errors, .timeout = 10) {
    char longname[80];
    memset(longname, 'a', 64);
    longname[64] = '\0';
    aorm_stmt *q = aorm_select(&employee_model);
    expect_error(q, aorm_join_alias(q, &employee_model, "", aorm_eq(AORM_COL(employee, id), aorm_int8(1)), 0),
                 AORM_EMISUSE, "empty alias", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&employee_model);
    expect_error(q, aorm_join_alias(q, &employee_model, longname, NULL, 0), AORM_EMISUSE, "63", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&employee_model);
    aorm_join_alias(q, &employee_model, "m", NULL, 0);
    expect_error(q, aorm_join_alias(q, &author_model, "m", NULL, 0), AORM_EMISUSE, "already goes by", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&employee_model);
    expect_error(q, aorm_join_alias(q, &author_model, "employees", NULL, 0), AORM_EMISUSE, "already goes by", NULL);
    aorm_stmt_free(q);
    /* a column through an alias the statement does not have */
    q = aorm_select(&employee_model);
    aorm_where(q, aorm_eq(AORM_ACOL("ghost", employee, id), aorm_int8(1)));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "ghost", "no FROM item");
    aorm_stmt_free(q);
    /* an alias of another model */
    q = aorm_select(&employee_model);
    aorm_join_alias(q, &author_model, "a", NULL, 0);
    aorm_where(q, aorm_eq(AORM_ACOL("a", employee, id), aorm_int8(1)));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "alias of authors", NULL);
    aorm_stmt_free(q);
    /* an aliased FROM hides the table's own name */
    q = aorm_select_alias(&employee_model, "e");
    aorm_where(q, aorm_eq(AORM_COL(employee, id), aorm_int8(1)));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "not part of the statement", NULL);
    aorm_stmt_free(q);
    /* LATERAL only with a subquery */
    q = aorm_select(&employee_model);
    expect_error(q, aorm_join_alias(q, &employee_model, "x", NULL, AORM_JOIN_LATERAL), AORM_EMISUSE, "LATERAL", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&employee_model);
    expect_error(q, aorm_join_alias(q, &employee_model, "x", NULL, 8), AORM_EMISUSE, "flags", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, ctes_several, .timeout = 10) {
    aorm_stmt *totals = aorm_select_columns(AORM_COL(book, author_id), aorm_label(aorm_sum(AORM_COL(book, price)), "total"));
    aorm_group_by(totals, AORM_COL(book, author_id));
    aorm_stmt *rich = aorm_select_columns(aorm_ref("totals", "author_id"));
    aorm_from_cte(rich, "totals");
    aorm_where(rich, aorm_gt(aorm_ref("totals", "total"), aorm_float8(100)));
    aorm_stmt *ids = aorm_select_columns(aorm_ref("rich", "author_id"));
    aorm_from_cte(ids, "rich");
    aorm_stmt *q = aorm_select(&author_model);
    cr_assert_eq(aorm_with(q, "totals", totals), 0);
    cr_assert_eq(aorm_with(q, "rich", rich), 0);
    aorm_where(q, aorm_in_select(AORM_COL(author, id), ids));
    aorm_order_by(q, AORM_COL(author, id), 0);
    aorm_limit(q, 3);
    expect(q,
           "WITH \"totals\" AS (SELECT \"books\".\"author_id\", sum(\"books\".\"price\") AS \"total\" FROM \"books\" "
           "GROUP BY \"books\".\"author_id\"), \"rich\" AS (SELECT \"totals\".\"author_id\" FROM \"totals\" WHERE "
           "\"totals\".\"total\" > $1) SELECT " AUTHOR_COLS " FROM \"authors\" WHERE \"authors\".\"id\" IN (SELECT "
           "\"rich\".\"author_id\" FROM \"rich\") ORDER BY \"authors\".\"id\" LIMIT $2",
           2);
    cr_assert(aorm_stmt_readonly(q));
    aorm_stmt_free(q);

    /* names are checked against what the CTE puts out */
    totals = aorm_select_columns(AORM_COL(book, author_id));
    q = aorm_select_columns(aorm_ref("totals", "total"));
    aorm_from_cte(q, "totals");
    aorm_with(q, "totals", totals);
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "\"total\"", "no output column");
    aorm_stmt_free(q);
    /* a CTE that is not there */
    q = aorm_select_columns(aorm_ref("nope", "x"));
    aorm_from_cte(q, "nope");
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "no CTE", NULL);
    aorm_stmt_free(q);
    /* twice the same name */
    q = aorm_select(&author_model);
    aorm_with(q, "a", aorm_select(&book_model));
    expect_error(q, aorm_with(q, "a", aorm_select(&tag_model)), AORM_EMISUSE, "already has a CTE", NULL);
    aorm_stmt_free(q);
    /* a CTE on raw text is refused, the CTE freed with it */
    q = aorm_raw("SELECT 1");
    expect_error(q, aorm_with(q, "a", aorm_select(&book_model)), AORM_EMISUSE, "aorm_with", NULL);
    aorm_stmt_free(q);
    cr_assert_eq(aorm_with(NULL, "a", aorm_select(&book_model)), AORM_EMISUSE);
}

Test(sql_compile, with_recursive, .timeout = 10) {
    aorm_stmt *q = core_manager_tree(1);
    expect(q,
           "WITH RECURSIVE \"tree\" AS ((SELECT \"employees\".\"id\", \"employees\".\"name\", "
           "\"employees\".\"manager_id\", $1 AS \"depth\" FROM \"employees\" WHERE \"employees\".\"id\" = $2) UNION ALL "
           "(SELECT \"e\".\"id\", \"e\".\"name\", \"e\".\"manager_id\", \"tree\".\"depth\" + $3 AS \"depth\" FROM "
           "\"employees\" AS \"e\" JOIN \"tree\" ON \"e\".\"manager_id\" = \"tree\".\"id\")) SELECT \"tree\".\"id\", "
           "\"tree\".\"name\", \"tree\".\"manager_id\", \"tree\".\"depth\" FROM \"tree\" ORDER BY \"tree\".\"depth\", "
           "\"tree\".\"id\"",
           3);
    cr_assert_eq(aorm_stmt_column(q, AORM_ACOL("tree", employee, name)), 1);
    cr_assert_eq(aorm_stmt_label(q, "depth"), 3);
    aorm_stmt_free(q);
}

Test(sql_compile, data_modifying_cte, .timeout = 10) {
    aorm_stmt *del = aorm_delete(&employee_model);
    aorm_where(del, aorm_eq(AORM_COL(employee, dept), aorm_text("gone")));
    aorm_returning(del, AORM_COL(employee, id));
    aorm_returning(del, AORM_COL(employee, name));
    aorm_stmt *sel = aorm_select_columns(aorm_ref("moved", "id"), aorm_ref("moved", "name"));
    aorm_from_cte(sel, "moved");
    aorm_stmt *ins = aorm_insert(&archive_model);
    cr_assert_eq(aorm_insert_select(ins, aorm_columns(AORM_COL(archive, id), AORM_COL(archive, name)), sel), 0);
    cr_assert_eq(aorm_with(ins, "moved", del), 0);
    aorm_returning(ins, AORM_COL(archive, id));
    expect(ins,
           "WITH \"moved\" AS (DELETE FROM \"employees\" WHERE \"employees\".\"dept\" = $1 RETURNING "
           "\"employees\".\"id\", \"employees\".\"name\") INSERT INTO \"employee_archive\" (\"id\", \"name\") SELECT "
           "\"moved\".\"id\", \"moved\".\"name\" FROM \"moved\" RETURNING \"employee_archive\".\"id\"",
           1);
    cr_assert_not(aorm_stmt_readonly(ins));
    aorm_stmt_free(ins);

    /* a SELECT with a writing CTE is not read-only */
    del = aorm_delete(&employee_model);
    aorm_returning(del, AORM_COL(employee, id));
    aorm_stmt *q = aorm_select_columns(aorm_ref("d", "id"));
    aorm_from_cte(q, "d");
    aorm_with(q, "d", del);
    expect(q, "WITH \"d\" AS (DELETE FROM \"employees\" RETURNING \"employees\".\"id\") SELECT \"d\".\"id\" FROM \"d\"", 0);
    cr_assert_not(aorm_stmt_readonly(q));
    aorm_stmt_free(q);

    /* INSERT ... SELECT of every column, a set operation as the source */
    ins = aorm_insert(&archive_model);
    aorm_stmt *a = aorm_select_columns(AORM_COL(employee, id), AORM_COL(employee, name));
    aorm_stmt *b = aorm_select_columns(AORM_COL(author, id), AORM_COL(author, name));
    aorm_insert_select(ins, NULL, 0, aorm_union(a, b));
    expect(ins,
           "INSERT INTO \"employee_archive\" (SELECT \"employees\".\"id\", \"employees\".\"name\" FROM \"employees\") "
           "UNION (SELECT \"authors\".\"id\", \"authors\".\"name\" FROM \"authors\")",
           0);
    aorm_stmt_free(ins);
    /* rows from a query exclude object rows and values */
    ins = aorm_insert(&archive_model);
    aorm_set(ins, AORM_COL(archive, id), aorm_int8(1));
    expect_error(ins, aorm_insert_select(ins, NULL, 0, aorm_select(&employee_model)), AORM_EMISUSE, "already has its rows",
                 NULL);
    aorm_stmt_free(ins);
    ins = aorm_insert(&archive_model);
    expect_error(ins, aorm_insert_select(ins, aorm_columns(AORM_COL(archive, id), AORM_COL(archive, id)), aorm_select(&employee_model)),
                 AORM_EMISUSE, "twice", NULL);
    aorm_stmt_free(ins);
    ins = aorm_insert(&archive_model);
    expect_error(ins, aorm_insert_select(ins, aorm_columns(AORM_COL(employee, id)), aorm_select(&employee_model)),
                 AORM_EMISUSE, "not a column of employee_archive", NULL);
    aorm_stmt_free(ins);
}

Test(sql_compile, window_functions, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(
        AORM_COL(book, id),
        aorm_label(aorm_over(aorm_row_number(), aorm_list(AORM_COL(book, author_id)),
                             aorm_list(aorm_desc(AORM_COL(book, price)), AORM_COL(book, id))),
                   "rn"),
        aorm_label(aorm_over(aorm_rank(), NULL, aorm_list(AORM_COL(book, year))), "r"),
        aorm_label(aorm_over(aorm_dense_rank(), aorm_list(AORM_COL(book, year)),
                             aorm_list(aorm_sort(AORM_COL(book, price), AORM_DESC | AORM_NULLS_LAST))),
                   "dr"),
        aorm_label(aorm_over(aorm_lag(AORM_COL(book, price), aorm_int4(1), aorm_float8(0)), NULL,
                             aorm_list(AORM_COL(book, id))),
                   "prev"),
        aorm_label(aorm_over(aorm_lead(AORM_COL(book, price)), NULL, aorm_list(AORM_COL(book, id))), "next"),
        aorm_label(aorm_over_frame(aorm_sum(AORM_COL(book, price)), aorm_list(AORM_COL(book, author_id)),
                                   aorm_list(AORM_COL(book, id)), aorm_rows(aorm_preceding(aorm_int8(2)), aorm_current_row())),
                   "moving"),
        aorm_label(aorm_over(aorm_count_all(), aorm_list(AORM_COL(book, author_id)), NULL), "n"),
        aorm_over(aorm_avg(AORM_COL(book, price)), NULL, NULL));
    expect(q,
           "SELECT \"books\".\"id\", row_number() OVER (PARTITION BY \"books\".\"author_id\" ORDER BY "
           "\"books\".\"price\" DESC, \"books\".\"id\") AS \"rn\", rank() OVER (ORDER BY \"books\".\"year\") AS \"r\", "
           "dense_rank() OVER (PARTITION BY \"books\".\"year\" ORDER BY \"books\".\"price\" DESC NULLS LAST) AS \"dr\", "
           "lag(\"books\".\"price\", $1, $2) OVER (ORDER BY \"books\".\"id\") AS \"prev\", lead(\"books\".\"price\") "
           "OVER (ORDER BY \"books\".\"id\") AS \"next\", sum(\"books\".\"price\") OVER (PARTITION BY "
           "\"books\".\"author_id\" ORDER BY \"books\".\"id\" ROWS BETWEEN $3 PRECEDING AND CURRENT ROW) AS \"moving\", "
           "count(*) OVER (PARTITION BY \"books\".\"author_id\") AS \"n\", avg(\"books\".\"price\") OVER () FROM "
           "\"books\"",
           3);
    cr_assert_eq(aorm_stmt_label(q, "avg"), 8);
    aorm_stmt_free(q);

    /* the other frames and window functions; a named aggregate */
    q = aorm_select_columns(
        aorm_over_frame(aorm_first_value(AORM_COL(book, title)), NULL, aorm_list(AORM_COL(book, price)),
                        aorm_range(aorm_unbounded_preceding(), aorm_unbounded_following())),
        aorm_over_frame(aorm_last_value(AORM_COL(book, title)), NULL, aorm_list(AORM_COL(book, price)),
                        aorm_range(aorm_preceding(aorm_float8(1.5)), aorm_following(aorm_float8(1.5)))),
        aorm_over_frame(aorm_nth_value(AORM_COL(book, title), aorm_int4(2)), NULL, aorm_list(AORM_COL(book, year)),
                        aorm_groups(aorm_current_row(), NULL)),
        aorm_over(aorm_ntile(aorm_int4(4)), NULL, aorm_list(AORM_COL(book, price))),
        aorm_over(aorm_percent_rank(), NULL, aorm_list(AORM_COL(book, price))),
        aorm_over(aorm_cume_dist(), NULL, aorm_list(AORM_COL(book, price))),
        aorm_over(aorm_func("string_agg", AORM_COL(book, title), aorm_text(",")), aorm_list(AORM_COL(book, author_id)), NULL));
    expect(q,
           "SELECT first_value(\"books\".\"title\") OVER (ORDER BY \"books\".\"price\" RANGE BETWEEN UNBOUNDED "
           "PRECEDING AND UNBOUNDED FOLLOWING), last_value(\"books\".\"title\") OVER (ORDER BY \"books\".\"price\" "
           "RANGE BETWEEN $1 PRECEDING AND $2 FOLLOWING), nth_value(\"books\".\"title\", $3) OVER (ORDER BY "
           "\"books\".\"year\" GROUPS CURRENT ROW), ntile($4) OVER (ORDER BY \"books\".\"price\"), percent_rank() OVER "
           "(ORDER BY \"books\".\"price\"), cume_dist() OVER (ORDER BY \"books\".\"price\"), "
           "\"string_agg\"(\"books\".\"title\", $5) OVER (PARTITION BY \"books\".\"author_id\") FROM \"books\"",
           5);
    aorm_stmt_free(q);

    /* misuse: a window function without OVER, OVER of a non-function,
     * sort keys in PARTITION BY, impossible frames */
    q = aorm_select_columns(aorm_row_number());
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "needs aorm_over", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_over(aorm_coalesce(AORM_COL(book, id)), NULL, NULL));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "aorm_over() takes", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_over(aorm_rank(), aorm_list(aorm_desc(AORM_COL(book, id))), NULL));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "PARTITION BY takes no sort", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_over_frame(aorm_sum(AORM_COL(book, id)), NULL, NULL,
                                            aorm_rows(aorm_unbounded_following(), NULL)));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "UNBOUNDED FOLLOWING", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_over_frame(aorm_sum(AORM_COL(book, id)), NULL, NULL,
                                            aorm_rows(aorm_current_row(), aorm_unbounded_preceding())));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "UNBOUNDED PRECEDING", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_over_frame(aorm_sum(AORM_COL(book, id)), NULL, NULL, aorm_current_row()));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "frame must be", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_over(aorm_lag(AORM_COL(book, id), aorm_int4(1), aorm_int4(2), aorm_int4(3)), NULL, NULL));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "arguments", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&book_model);
    aorm_where(q, aorm_gt(aorm_list(AORM_COL(book, id)), aorm_int4(1)));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "aorm_list() only goes in", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, set_operations, .timeout = 10) {
    struct {
        aorm_stmt *(*fn)(aorm_stmt *, aorm_stmt *);
        const char *op;
    } ops[] = {{aorm_union, "UNION"},         {aorm_union_all, "UNION ALL"}, {aorm_intersect, "INTERSECT"},
               {aorm_intersect_all, "INTERSECT ALL"}, {aorm_except, "EXCEPT"},     {aorm_except_all, "EXCEPT ALL"}};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        aorm_stmt *a = aorm_select_columns(AORM_COL(author, name));
        aorm_where(a, aorm_lt(AORM_COL(author, id), aorm_int8(3)));
        aorm_stmt *b = aorm_select_columns(AORM_COL(tag, name));
        aorm_where(b, aorm_lt(AORM_COL(tag, id), aorm_int8(4)));
        aorm_stmt *u = ops[i].fn(a, b);
        aorm_order_by(u, aorm_name("name"), AORM_DESC);
        aorm_limit(u, 5);
        char want[512];
        snprintf(want, sizeof(want),
                 "(SELECT \"authors\".\"name\" FROM \"authors\" WHERE \"authors\".\"id\" < $1) %s (SELECT "
                 "\"tags\".\"name\" FROM \"tags\" WHERE \"tags\".\"id\" < $2) ORDER BY \"name\" DESC LIMIT $3",
                 ops[i].op);
        expect(u, want, 3);
        cr_assert(aorm_stmt_readonly(u));
        cr_assert_eq(aorm_stmt_column(u, AORM_COL(author, name)), 0, "outputs are the first arm's");
        aorm_stmt_free(u);
    }
    /* nested, arms with their own ORDER BY / LIMIT, raw text as an arm */
    aorm_stmt *a = aorm_select_columns(AORM_COL(book, id));
    aorm_order_by(a, AORM_COL(book, price), AORM_DESC);
    aorm_limit(a, 2);
    aorm_stmt *r = aorm_raw("SELECT :x::bigint");
    aorm_bind(r, "x", aorm_int8(7));
    aorm_stmt *c = aorm_select_columns(AORM_COL(book_tag, book_id));
    aorm_stmt *u = aorm_except(aorm_union(a, r), c);
    expect(u,
           "((SELECT \"books\".\"id\" FROM \"books\" ORDER BY \"books\".\"price\" DESC LIMIT $1) UNION (SELECT "
           "$2::bigint)) EXCEPT (SELECT \"book_tags\".\"book_id\" FROM \"book_tags\")",
           2);
    cr_assert_not(aorm_stmt_readonly(u), "raw text may write");
    aorm_stmt_free(u);

    /* misuse: an arm that writes, a column in the ORDER BY, NULL arms */
    u = aorm_union(aorm_select(&book_model), aorm_delete(&book_model));
    expect_error(u, aorm_stmt_error(u), AORM_EMISUSE, "a DELETE cannot go here", NULL);
    aorm_stmt_free(u);
    u = aorm_union(aorm_select_columns(AORM_COL(book, id)), aorm_select_columns(AORM_COL(tag, id)));
    aorm_order_by(u, AORM_COL(book, id), 0);
    expect_error(u, aorm_stmt_compile(u), AORM_EMISUSE, "aorm_name()", NULL);
    aorm_stmt_free(u);
    cr_assert_null(aorm_union(NULL, aorm_select(&book_model)));
    cr_assert_null(aorm_union_all(aorm_select(&book_model), NULL));
    u = aorm_union(aorm_select(&book_model), aorm_select(&book_model));
    expect_error(u, aorm_where(u, aorm_eq(AORM_COL(book, id), aorm_int8(1))), AORM_EMISUSE, "set operation", NULL);
    aorm_stmt_free(u);
}

Test(sql_compile, subqueries_in_from_lateral_scalar, .timeout = 10) {
    aorm_stmt *sub = aorm_select_columns(AORM_COL(book, author_id), aorm_label(aorm_count_all(), "n"));
    aorm_group_by(sub, AORM_COL(book, author_id));
    aorm_stmt *q = aorm_select_columns(AORM_COL(author, name), aorm_ref("c", "n"));
    cr_assert_eq(aorm_join_select(q, sub, "c", aorm_eq(aorm_ref("c", "author_id"), AORM_COL(author, id)), 0), 0);
    expect(q,
           "SELECT \"authors\".\"name\", \"c\".\"n\" FROM \"authors\" JOIN (SELECT \"books\".\"author_id\", count(*) AS "
           "\"n\" FROM \"books\" GROUP BY \"books\".\"author_id\") AS \"c\" ON \"c\".\"author_id\" = \"authors\".\"id\"",
           0);
    aorm_stmt_free(q);

    /* FROM a subquery only */
    sub = aorm_select_columns(AORM_COL(book, title), aorm_label(aorm_mul(AORM_COL(book, price), aorm_float8(2)), "dbl"));
    q = aorm_select_columns(aorm_ref("s", "title"));
    aorm_from_select(q, sub, "s");
    aorm_where(q, aorm_gt(aorm_ref("s", "dbl"), aorm_float8(10)));
    expect(q,
           "SELECT \"s\".\"title\" FROM (SELECT \"books\".\"title\", \"books\".\"price\" * $1 AS \"dbl\" FROM \"books\") "
           "AS \"s\" WHERE \"s\".\"dbl\" > $2",
           2);
    cr_assert_null(aorm_stmt_model(q));
    aorm_stmt_free(q);

    /* LATERAL: the top two books of each author */
    for (int left = 0; left < 2; left++) {
        aorm_stmt *lat = aorm_select_columns(AORM_COL(book, title), AORM_COL(book, price));
        aorm_where(lat, aorm_eq(AORM_COL(book, author_id), AORM_COL(author, id)));
        aorm_order_by(lat, AORM_COL(book, price), AORM_DESC);
        aorm_limit(lat, 2);
        q = aorm_select_columns(AORM_COL(author, name), aorm_ref("top", "title"));
        aorm_join_select(q, lat, "top", NULL, AORM_JOIN_LATERAL | (left ? AORM_JOIN_LEFT : 0));
        aorm_where(q, aorm_lt(AORM_COL(author, id), aorm_int8(3)));
        char want[512];
        snprintf(want, sizeof(want),
                 "SELECT \"authors\".\"name\", \"top\".\"title\" FROM \"authors\" %s LATERAL (SELECT \"books\".\"title\", "
                 "\"books\".\"price\" FROM \"books\" WHERE \"books\".\"author_id\" = \"authors\".\"id\" ORDER BY "
                 "\"books\".\"price\" DESC LIMIT $1) AS \"top\"%s WHERE \"authors\".\"id\" < $2",
                 left ? "LEFT JOIN" : "CROSS JOIN", left ? " ON TRUE" : "");
        expect(q, want, 2);
        aorm_stmt_free(q);
    }

    /* a scalar subquery in the select list and in WHERE */
    aorm_stmt *cnt = aorm_select_columns(aorm_count_all());
    aorm_from(cnt, &book_model);
    aorm_where(cnt, aorm_eq(AORM_COL(book, author_id), AORM_COL(author, id)));
    aorm_stmt *avg = aorm_select_columns(aorm_avg(AORM_COL(author, born)));
    q = aorm_select_columns(AORM_COL(author, name), aorm_label(aorm_scalar(cnt), "books"));
    aorm_where(q, aorm_gt(AORM_COL(author, born), aorm_scalar(avg)));
    expect(q,
           "SELECT \"authors\".\"name\", (SELECT count(*) FROM \"books\" WHERE \"books\".\"author_id\" = "
           "\"authors\".\"id\") AS \"books\" FROM \"authors\" WHERE \"authors\".\"born\" > (SELECT "
           "avg(\"authors\".\"born\") FROM \"authors\")",
           0);
    aorm_stmt_free(q);

    /* a subquery's output names are checked; a subquery attached twice is refused */
    sub = aorm_select_columns(AORM_COL(book, id));
    q = aorm_select_columns(aorm_ref("s", "nope"));
    aorm_from_select(q, sub, "s");
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "\"nope\"", "subquery");
    aorm_stmt_free(q);
    sub = aorm_select(&book_model);
    q = aorm_select(&author_model);
    aorm_join_select(q, sub, "a", NULL, 0);
    expect_error(q, aorm_join_select(q, sub, "b", NULL, 0), AORM_EMISUSE, "already belongs", NULL);
    aorm_stmt_free(q);
    cr_assert_eq(aorm_from_select(NULL, aorm_select(&book_model), "x"), AORM_EMISUSE);
    q = aorm_select(&author_model);
    expect_error(q, aorm_join_select(q, aorm_delete(&book_model), "d", NULL, 0), AORM_EMISUSE, "cannot go here", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, case_coalesce_cast_functions, .timeout = 10) {
    aorm_stmt *q = aorm_select_columns(
        aorm_label(aorm_case(aorm_when(aorm_lt(AORM_COL(book, price), aorm_float8(10)), aorm_text("cheap")),
                             aorm_when(aorm_lt(AORM_COL(book, price), aorm_float8(30)), aorm_text("fair")),
                             aorm_else(aorm_text("dear"))),
                   "band"),
        aorm_case(aorm_when(aorm_eq(AORM_COL(book, year), aorm_int4(2000)), aorm_bool(true))),
        aorm_coalesce(aorm_nullif(AORM_COL(book, year), aorm_int4(0)), aorm_int4(1)),
        aorm_greatest(AORM_COL(book, price), aorm_float8(1), aorm_float8(2)), aorm_least(AORM_COL(book, price), aorm_float8(9)),
        aorm_cast(AORM_COL(book, price), AORM_INT8), aorm_cast_name(AORM_COL(book, title), "pg_catalog.varchar"),
        aorm_cast_name(AORM_COL(book, title), "text[]"),
        aorm_concat(aorm_concat(AORM_COL(book, title), aorm_text(" - ")), aorm_cast(AORM_COL(book, year), AORM_TEXT)),
        aorm_func("lower", AORM_COL(book, title)), aorm_func0("now"), aorm_func("pg_catalog.upper", AORM_COL(book, title)),
        aorm_mod(AORM_COL(book, year), aorm_int4(10)));
    expect(q,
           "SELECT CASE WHEN \"books\".\"price\" < $1 THEN $2 WHEN \"books\".\"price\" < $3 THEN $4 ELSE $5 END AS "
           "\"band\", CASE WHEN \"books\".\"year\" = $6 THEN $7 END, coalesce(nullif(\"books\".\"year\", $8), $9), "
           "greatest(\"books\".\"price\", $10, $11), least(\"books\".\"price\", $12), CAST(\"books\".\"price\" AS "
           "bigint), CAST(\"books\".\"title\" AS \"pg_catalog\".\"varchar\"), CAST(\"books\".\"title\" AS \"text\"[]), "
           "(\"books\".\"title\" || $13) || CAST(\"books\".\"year\" AS text), \"lower\"(\"books\".\"title\"), \"now\"(), "
           "\"pg_catalog\".\"upper\"(\"books\".\"title\"), \"books\".\"year\" % $14 FROM \"books\"",
           14);
    cr_assert_eq(aorm_stmt_label(q, "case"), 1);
    cr_assert_eq(aorm_stmt_label(q, "coalesce"), 2);
    cr_assert_eq(aorm_stmt_label(q, "lower"), 9);
    cr_assert_eq(aorm_stmt_label(q, "upper"), 11);
    aorm_stmt_free(q);

    /* misuse */
    q = aorm_select_columns(aorm_case(aorm_else(aorm_int4(1))));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "aorm_else() goes last", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_case(aorm_else(aorm_int4(1)), aorm_when(aorm_bool(true), aorm_int4(2))));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "aorm_else() goes last", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_case(aorm_int4(1)));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "not aorm_when()", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_nullif(AORM_COL(book, id), AORM_COL(book, id)));
    expect(q, "SELECT nullif(\"books\".\"id\", \"books\".\"id\") FROM \"books\"", 0);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_cast(AORM_COL(book, id), (aorm_type)99));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "unknown type", NULL);
    aorm_stmt_free(q);
}

Test(sql_compile, json_and_array_operators, .timeout = 10) {
    static const char *const tags[] = {"a", "b"};
    static const char *const path[] = {"k", "0"};
    static const int64_t nums[] = {1, 2, 3};
    aorm_stmt *q = aorm_select_columns(aorm_json_key(AORM_COL(employee, doc), "role"),
                                       aorm_json_key_text(AORM_COL(employee, doc), "role"),
                                       aorm_json_get_text(aorm_json_key(AORM_COL(employee, doc), "list"), aorm_int4(0)),
                                       aorm_json_path_text(AORM_COL(employee, doc), aorm_text_array(path, 2)),
                                       aorm_json_path(AORM_COL(employee, doc), aorm_text_array(path, 2)));
    aorm_where(q, aorm_and(aorm_contains(AORM_COL(employee, doc), aorm_jsonb("{\"a\": 1}")),
                           aorm_has_key(AORM_COL(employee, doc), aorm_text("b")),
                           aorm_contains(aorm_ref("employees", "tags"), aorm_text_array(tags, 2)),
                           aorm_contained_by(aorm_ref("employees", "tags"), aorm_text_array(tags, 2)),
                           aorm_overlaps(aorm_ref("employees", "nums"), aorm_int8_array(nums, 3)),
                           aorm_eq_any(aorm_text("a"), aorm_ref("employees", "tags")),
                           aorm_ne_all(AORM_COL(employee, id), aorm_int8_array(nums, 3)),
                           aorm_op_any(AORM_OP_LIKE, AORM_COL(employee, name), aorm_text_array(tags, 2))));
    expect(q,
           "SELECT \"employees\".\"doc\" -> $1, \"employees\".\"doc\" ->> $2, (\"employees\".\"doc\" -> $3) ->> $4, "
           "\"employees\".\"doc\" #>> $5, \"employees\".\"doc\" #> $6 FROM \"employees\" WHERE \"employees\".\"doc\" @> "
           "$7 AND \"employees\".\"doc\" ? $8 AND \"employees\".\"tags\" @> $9 AND \"employees\".\"tags\" <@ $10 AND "
           "\"employees\".\"nums\" && $11 AND $12 = ANY(\"employees\".\"tags\") AND \"employees\".\"id\" <> "
           "ALL($13) AND \"employees\".\"name\" LIKE ANY($14)",
           14);
    /* JSON keys are values: never in the text */
    cr_assert_eq(ptype(q, 0), 25 /* text */);
    aorm_stmt_free(q);

    /* ALL / ANY over a subquery */
    aorm_stmt *sub = aorm_select_columns(AORM_ACOL("o", employee, salary));
    aorm_from_alias(sub, &employee_model, "o");
    aorm_where(sub, aorm_eq(AORM_ACOL("o", employee, dept), AORM_COL(employee, dept)));
    q = aorm_select_columns(AORM_COL(employee, name));
    aorm_where(q, aorm_op_all(AORM_OP_GE, AORM_COL(employee, salary), aorm_scalar(sub)));
    expect(q,
           "SELECT \"employees\".\"name\" FROM \"employees\" WHERE \"employees\".\"salary\" >= ALL (SELECT "
           "\"o\".\"salary\" FROM \"employees\" AS \"o\" WHERE \"o\".\"dept\" = \"employees\".\"dept\")",
           0);
    aorm_stmt_free(q);

    q = aorm_select(&employee_model);
    expect_error(q, aorm_where(q, aorm_op_any(AORM_OP_ADD, AORM_COL(employee, id), aorm_int8_array(nums, 3))),
                 AORM_EMISUSE, "comparison", NULL);
    aorm_stmt_free(q);
    q = aorm_select(&employee_model);
    aorm_where(q, aorm_eq(aorm_ref("ghost", "x"), aorm_int4(1)));
    expect_error(q, aorm_stmt_compile(q), AORM_EMISUSE, "ghost", "no FROM item");
    aorm_stmt_free(q);
}

Test(sql_compile, update_from_delete_using_conflict_constraint_distinct_on, .timeout = 10) {
    aorm_stmt *u = aorm_update(&book_model);
    aorm_set(u, AORM_COL(book, price), aorm_mul(AORM_COL(book, price), aorm_float8(1.1)));
    cr_assert_eq(aorm_from_alias(u, &author_model, "a"), 0);
    aorm_where(u, aorm_and(aorm_eq(AORM_COL(book, author_id), AORM_ACOL("a", author, id)),
                           aorm_lt(AORM_ACOL("a", author, born), aorm_int4(1950))));
    aorm_returning(u, AORM_COL(book, id));
    aorm_returning(u, aorm_label(AORM_ACOL("a", author, name), "author"));
    expect(u,
           "UPDATE \"books\" SET \"price\" = \"books\".\"price\" * $1 FROM \"authors\" AS \"a\" WHERE "
           "\"books\".\"author_id\" = \"a\".\"id\" AND \"a\".\"born\" < $2 RETURNING \"books\".\"id\", \"a\".\"name\" AS "
           "\"author\"",
           2);
    aorm_stmt_free(u);

    /* UPDATE ... FROM a subquery and a CTE */
    aorm_stmt *sub = aorm_select_columns(AORM_COL(author, id));
    aorm_where(sub, aorm_is_null(AORM_COL(author, born)));
    u = aorm_update(&book_model);
    aorm_set(u, AORM_COL(book, year), aorm_int4(0));
    aorm_from_select(u, sub, "nb");
    aorm_from_cte(u, "c");
    aorm_with(u, "c", aorm_select_columns(aorm_label(aorm_int4(5), "five")));
    aorm_where(u, aorm_eq(AORM_COL(book, author_id), aorm_ref("nb", "id")));
    expect(u,
           "WITH \"c\" AS (SELECT $1 AS \"five\") UPDATE \"books\" SET \"year\" = $2 FROM (SELECT \"authors\".\"id\" "
           "FROM \"authors\" WHERE \"authors\".\"born\" IS NULL) AS \"nb\", \"c\" WHERE \"books\".\"author_id\" = "
           "\"nb\".\"id\"",
           2);
    aorm_stmt_free(u);

    aorm_stmt *d = aorm_delete(&book_tag_model);
    cr_assert_eq(aorm_from(d, &tag_model), 0);
    aorm_where(d, aorm_and(aorm_eq(AORM_COL(book_tag, tag_id), AORM_COL(tag, id)), aorm_eq(AORM_COL(tag, name), aorm_text("x"))));
    aorm_returning(d, AORM_COL(book_tag, book_id));
    expect(d,
           "DELETE FROM \"book_tags\" USING \"tags\" WHERE \"book_tags\".\"tag_id\" = \"tags\".\"id\" AND "
           "\"tags\".\"name\" = $1 RETURNING \"book_tags\".\"book_id\"",
           1);
    aorm_stmt_free(d);
    d = aorm_delete(&book_model);
    expect_error(d, aorm_from(d, &book_model), AORM_EMISUSE, "already", NULL);
    aorm_stmt_free(d);

    aorm_stmt *i = aorm_insert(&tag_model);
    aorm_set(i, AORM_COL(tag, name), aorm_text("t"));
    cr_assert_eq(aorm_on_conflict_constraint_do_update(i, "tags_name_key"), 0);
    aorm_set(i, AORM_COL(tag, name), aorm_excluded(AORM_COL(tag, name)));
    aorm_returning(i, AORM_COL(tag, id));
    expect(i,
           "INSERT INTO \"tags\" (\"name\") VALUES ($1) ON CONFLICT ON CONSTRAINT \"tags_name_key\" DO UPDATE SET "
           "\"name\" = EXCLUDED.\"name\" RETURNING \"tags\".\"id\"",
           1);
    aorm_stmt_free(i);
    i = aorm_insert(&tag_model);
    aorm_set(i, AORM_COL(tag, name), aorm_text("t"));
    aorm_on_conflict_constraint_do_nothing(i, "tags\"; DROP TABLE tags; --");
    expect(i, "INSERT INTO \"tags\" (\"name\") VALUES ($1) ON CONFLICT ON CONSTRAINT \"tags\"\"; DROP TABLE tags; --\" DO NOTHING", 1);
    expect_error(i, aorm_on_conflict_constraint_do_nothing(i, "x"), AORM_EMISUSE, "already given", NULL);
    aorm_stmt_free(i);
    i = aorm_insert(&tag_model);
    expect_error(i, aorm_on_conflict_constraint_do_nothing(i, ""), AORM_EMISUSE, "empty constraint name", NULL);
    aorm_stmt_free(i);

    aorm_stmt *q = aorm_select(&book_model);
    cr_assert_eq(aorm_distinct_on(q, AORM_COL(book, author_id)), 0);
    cr_assert_eq(aorm_distinct_on(q, AORM_COL(book, year)), 0);
    aorm_order_by(q, AORM_COL(book, author_id), 0);
    aorm_order_by(q, AORM_COL(book, year), 0);
    aorm_order_by(q, AORM_COL(book, price), AORM_DESC);
    aorm_for_update(q, AORM_LOCK_SKIP_LOCKED);
    expect(q,
           "SELECT DISTINCT ON (\"books\".\"author_id\", \"books\".\"year\") " BOOK_COLS " FROM \"books\" ORDER BY "
           "\"books\".\"author_id\", \"books\".\"year\", \"books\".\"price\" DESC FOR UPDATE SKIP LOCKED",
           0);
    expect_error(q, aorm_distinct(q), AORM_EMISUSE, "DISTINCT ON", NULL);
    aorm_stmt_free(q);
    q = aorm_select_alias(&book_model, "b");
    aorm_for_update(q, AORM_LOCK_NOWAIT);
    expect(q,
           "SELECT \"b\".\"id\", \"b\".\"author_id\", \"b\".\"title\", \"b\".\"year\", \"b\".\"price\" FROM \"books\" "
           "AS \"b\" FOR UPDATE NOWAIT",
           0);
    aorm_stmt_free(q);
}

/* Every place a caller's string reaches the text: refused when it cannot
 * be an identifier, quoted (quotes doubled) when it can; JSON keys are
 * bound values. */
Test(sql_compile, injection_names, .timeout = 10) {
    static const char *const bad_funcs[] = {"lower(); DROP TABLE books; --", "lower\"", "a.b.c", "", "1abc",
                                            "lo wer", "pg_sleep(10)--", "x;y", "a..b", ".a", "a."};
    for (size_t i = 0; i < sizeof(bad_funcs) / sizeof(bad_funcs[0]); i++) {
        aorm_stmt *q = aorm_select_columns(aorm_func(bad_funcs[i], AORM_COL(book, title)));
        expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "not a function name", NULL);
        aorm_stmt_free(q);
        q = aorm_select_columns(aorm_cast_name(AORM_COL(book, title), bad_funcs[i]));
        expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "not a type name", NULL);
        aorm_stmt_free(q);
    }
    char longname[80];
    memset(longname, 'f', 64);
    longname[64] = '\0';
    aorm_stmt *q = aorm_select_columns(aorm_func0(longname));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "not a function name", NULL);
    aorm_stmt_free(q);
    q = aorm_select_columns(aorm_func0(NULL));
    expect_error(q, aorm_stmt_error(q), AORM_EMISUSE, "not a function name", NULL);
    aorm_stmt_free(q);

    /* aliases, CTE names, ref names: quoted, whatever they hold */
    const char *evil = "x\" OR 1=1; --";
    q = aorm_select_columns(AORM_ACOL(evil, book, title), aorm_ref(evil, "a\"b"));
    aorm_from_select(q, aorm_select_columns(AORM_COL(book, title), aorm_label(AORM_COL(book, id), "a\"b")), evil);
    aorm_with(q, "c\"te", aorm_select(&tag_model));
    expect(q,
           "WITH \"c\"\"te\" AS (SELECT \"tags\".\"id\", \"tags\".\"name\" FROM \"tags\") SELECT \"x\"\" OR 1=1; "
           "--\".\"title\", \"x\"\" OR 1=1; --\".\"a\"\"b\" FROM (SELECT \"books\".\"title\", \"books\".\"id\" AS "
           "\"a\"\"b\" FROM \"books\") AS \"x\"\" OR 1=1; --\"",
           0);
    aorm_stmt_free(q);

    /* JSON keys and array elements never reach the text */
    const char *key = "k'; DROP TABLE books; --";
    q = aorm_select_columns(aorm_json_key_text(AORM_COL(employee, doc), key));
    expect(q, "SELECT \"employees\".\"doc\" ->> $1 FROM \"employees\"", 1);
    cr_assert_null(strstr(aorm_stmt_sql(q), "DROP"));
    aorm_stmt_free(q);
}

/* aorm_insert_object writes the value of a server-default column, zero
 * and NULL included; aorm_insert_use_default leaves it to the server. */
Test(sql_compile, insert_object_writes_server_default_columns, .timeout = 10) {
    dflt d = {.name = "n", .qty = 0, .note = NULL};
    aorm_stmt *q = aorm_insert(&dflt_model);
    cr_assert_eq(aorm_insert_object(q, &d), 0);
    expect(q, "INSERT INTO \"dflt\" (\"name\", \"qty\", \"note\") VALUES ($1, $2, $3)", 3);
    cr_assert_eq(ptype(q, 1), 23 /* int4 */);
    cr_assert_eq(aorm_stmt_params(q)->slots[2].len, -1, "NULL is written, not left to the default");
    aorm_stmt_free(q);

    dflt rows[2] = {{.name = "a"}, {.name = "b", .qty = 3}};
    const void *objs[2] = {&rows[0], &rows[1]};
    q = aorm_insert(&dflt_model);
    cr_assert_eq(aorm_insert_objects(q, objs, 2), 0, "%s", aorm_stmt_errmsg(q));
    expect(q, "INSERT INTO \"dflt\" (\"name\", \"qty\", \"note\") SELECT * FROM unnest($1::text[], $2::integer[], $3::text[])", 3);
    aorm_stmt_free(q);

    q = aorm_insert(&dflt_model);
    cr_assert_eq(aorm_insert_use_default(q, AORM_COL(dflt, qty)), 0);
    cr_assert_eq(aorm_insert_use_default(q, AORM_COL(dflt, note)), 0);
    d.qty = 5; /* left to the server all the same: asked for */
    cr_assert_eq(aorm_insert_object(q, &d), 0);
    aorm_returning_all(q);
    expect(q,
           "INSERT INTO \"dflt\" (\"name\") VALUES ($1) RETURNING \"dflt\".\"id\", \"dflt\".\"name\", \"dflt\".\"qty\", "
           "\"dflt\".\"note\"",
           1);
    aorm_stmt_free(q);

    /* the SERIAL column still goes to the server when 0, is written when set */
    d.id = 42;
    q = aorm_insert(&dflt_model);
    aorm_insert_object(q, &d);
    expect(q, "INSERT INTO \"dflt\" (\"id\", \"name\", \"qty\", \"note\") VALUES ($1, $2, $3, $4)", 4);
    aorm_stmt_free(q);

    q = aorm_insert(&dflt_model);
    expect_error(q, aorm_insert_use_default(q, AORM_COL(dflt, name)), AORM_EMISUSE, "no server default", NULL);
    aorm_stmt_free(q);
    q = aorm_insert(&dflt_model);
    aorm_insert_object(q, &d);
    expect_error(q, aorm_insert_use_default(q, AORM_COL(dflt, qty)), AORM_EMISUSE, "before adding the rows", NULL);
    aorm_stmt_free(q);
}
