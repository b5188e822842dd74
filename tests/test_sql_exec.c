/* test_sql_exec.c -- Core statements executed through the engine against
 * the sandbox PostgreSQL (started with the reference schema loaded:
 * authors, books, tags, book_tags).
 *
 * Isolation: the bookstore models fix their table names, so the tests
 * share the reference tables. Each test creates its own rows, with names
 * that carry the test's name and process id, and only looks at those
 * rows (or at reference rows it never changes); ids come from the
 * tables' sequences, so parallel test processes never collide. Tables of
 * this file's own models (odd identifiers, a schema, every column type)
 * are created with IF NOT EXISTS inside a transaction holding an
 * advisory lock, which makes the set-up idempotent and safe when several
 * test processes start at once.
 *
 * What the server stores is checked through a separate blocking libpq
 * connection, never only through the code under test.
 *
 * Every test has the same timeout (see test_sql_compile.c: Criterion's
 * runner leaks under --jobs when timeouts differ). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models.h"
#include "support.h"
#include "aorm/sql.h"

#define WAIT 20.0

/* ==========================================================================
 * This file's models
 * ========================================================================== */

typedef struct weird {
    int64_t id;
    char *text;
} weird;

static const aorm_column weird_columns[] = {
    {.name = "id", .offset = offsetof(weird, id), .size = sizeof(int64_t), .type = AORM_INT8,
     .flags = AORM_PK | AORM_SERIAL},
    {.name = "col \"umn\"; --", .offset = offsetof(weird, text), .size = sizeof(char *), .type = AORM_TEXT,
     .flags = AORM_NULLABLE},
};
const aorm_model weird_model = {
    .name = "weird", .table = "sqlx_we\"ird", .size = sizeof(weird), AORM_COLUMNS(weird_columns),
};

typedef struct thing {
    int64_t id;
    char *name;
} thing;

static const aorm_column thing_columns[] = {
    AORM_COLUMN(thing, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(thing, name, AORM_TEXT, 0),
};
const aorm_model thing_model = {
    AORM_MODEL_OF(thing, "things"), .schema = "sqlx \"s\"", AORM_COLUMNS(thing_columns),
};

/* A model whose table name tries to end the statement. */
typedef struct evil {
    int64_t id;
} evil;

static const aorm_column evil_columns[] = {
    AORM_COLUMN(evil, id, AORM_INT8, AORM_PK),
};
const aorm_model evil_model = {
    AORM_MODEL_OF(evil, "authors\"; DROP TABLE authors; --"), AORM_COLUMNS(evil_columns),
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
    AORM_MODEL_OF(typed, "sqlx_typed"), AORM_COLUMNS(typed_columns),
};

/* Idempotent, serialized by an advisory lock held to the commit. */
static void ensure_tables(PGconn *pg) {
    free(t_pg_exec(pg, "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74201);"
                       "CREATE TABLE IF NOT EXISTS \"sqlx_we\"\"ird\" (id bigserial PRIMARY KEY, "
                       "  \"col \"\"umn\"\"; --\" text);"
                       "CREATE SCHEMA IF NOT EXISTS \"sqlx \"\"s\"\"\";"
                       "CREATE TABLE IF NOT EXISTS \"sqlx \"\"s\"\"\".things (id bigserial PRIMARY KEY, name text NOT NULL);"
                       "CREATE TABLE IF NOT EXISTS sqlx_typed (id bigserial PRIMARY KEY, b boolean NOT NULL, "
                       "  i2 smallint NOT NULL, i4 integer NOT NULL, f4 real NOT NULL, f8 double precision NOT NULL, "
                       "  num numeric NOT NULL, txt text NOT NULL, bin bytea, day date NOT NULL, ts timestamp NOT NULL, "
                       "  tstz timestamptz, u uuid NOT NULL, js json, jsb jsonb);"
                       "COMMIT"));
}

/* ==========================================================================
 * Environment
 * ========================================================================== */

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    PGconn *pg;
    char prefix[96];   /* unique name prefix of this test's rows */
    char **logs;
    int nlogs;
} env;

static void on_log(aorm_log_level level, const char *message, void *user) {
    env *t = user;
    if (level != AORM_LOG_SQL) return;
    char **n = realloc(t->logs, (size_t)(t->nlogs + 1) * sizeof(*n));
    cr_assert_not_null(n);
    t->logs = n;
    t->logs[t->nlogs++] = strdup(message);
}

static void env_open_opts(env *t, const char *test, bool echo) {
    memset(t, 0, sizeof(*t));
    snprintf(t->prefix, sizeof(t->prefix), "sqlx-%s-%ld-", test, (long)getpid());
    t->evl = ev_loop_new(EVFLAG_AUTO);
    t->loop = aorm_loop_new_ev(t->evl);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = t_dsn();
    o.log = on_log;
    o.log_user = t;
    if (echo) {
        o.echo = true;
        o.echo_params = true;
        o.log_level = AORM_LOG_SQL;
    }
    t->e = aorm_engine_new(t->loop, &o);
    cr_assert_not_null(t->e);
    t->pg = t_pg();
}

static void env_open(env *t, const char *test) { env_open_opts(t, test, false); }

static void env_close(env *t) {
    aorm_engine_free(t->e);
    aorm_loop_free(t->loop);
    ev_loop_destroy(t->evl);
    PQfinish(t->pg);
    for (int i = 0; i < t->nlogs; i++) free(t->logs[i]);
    free(t->logs);
}

typedef struct reply {
    int done;
    aorm_result *res;
    aorm_error *err;
} reply;

static void on_result(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    reply *r = user;
    r->done++;
    if (err) r->err = aorm_error_copy(err);
    else r->res = aorm_result_detach(res);
}

static void reply_wait(env *t, reply *r) {
    cr_assert(t_run_until(t->evl, &r->done, WAIT), "no answer within %.0f s", WAIT);
    cr_assert_eq(r->done, 1);
}

/* Runs q and frees it as soon as it is queued (the engine copied what
 * it needs); returns the result, asserting success. Rows are then loaded
 * through a second statement of the same shape ("shape" in the tests):
 * result positions depend only on a statement's select / RETURNING list,
 * never on the values it carried. */
static aorm_result *run(env *t, aorm_stmt *q) {
    reply r = {0};
    int rc = aorm_stmt_execute(t->e, q, NULL, on_result, &r);
    cr_assert_eq(rc, 0, "execute: %s: %s", aorm_errname(rc), aorm_stmt_errmsg(q));
    char *sql = strdup(aorm_stmt_sql(q));
    aorm_stmt_free(q);
    reply_wait(t, &r);
    cr_assert_null(r.err, "%s: %s %s", sql, r.err->sqlstate, r.err->message);
    free(sql);
    return r.res;
}

/* Runs q (then frees it); returns the server's error, asserting one. */
static aorm_error *run_error(env *t, aorm_stmt *q) {
    reply r = {0};
    int rc = aorm_stmt_execute(t->e, q, NULL, on_result, &r);
    cr_assert_eq(rc, 0, "execute: %s: %s", aorm_errname(rc), aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
    reply_wait(t, &r);
    cr_assert_not_null(r.err, "the statement should have failed");
    return r.err;
}

static int64_t new_author(env *t, const char *suffix, int born) {
    char sql[256];
    if (born) snprintf(sql, sizeof(sql), "INSERT INTO authors(name, born) VALUES ('%s%s', %d) RETURNING id", t->prefix, suffix, born);
    else snprintf(sql, sizeof(sql), "INSERT INTO authors(name) VALUES ('%s%s') RETURNING id", t->prefix, suffix);
    return t_pg_long(t->pg, sql);
}

static int64_t new_book(env *t, int64_t author_id, const char *title, int year, double price) {
    char sql[256];
    snprintf(sql, sizeof(sql),
             "INSERT INTO books(author_id, title, year, price) VALUES (%" PRId64 ", '%s%s', %d, %.17g) RETURNING id",
             author_id, t->prefix, title, year, price);
    return t_pg_long(t->pg, sql);
}

/* One text value read with a binary-safe parameterized query. */
static char *pg_text(env *t, const char *sql, int64_t id, int *len) {
    char idbuf[32];
    snprintf(idbuf, sizeof(idbuf), "%" PRId64, id);
    const char *vals[1] = {idbuf};
    PGresult *r = PQexecParams(t->pg, sql, 1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(t->pg));
    cr_assert_eq(PQntuples(r), 1, "%s with %s: %d rows", sql, idbuf, PQntuples(r));
    *len = PQgetlength(r, 0, 0);
    char *s = malloc((size_t)*len + 1);
    memcpy(s, PQgetvalue(r, 0, 0), (size_t)*len + 1);
    PQclear(r);
    return s;
}

static void authors_intact(env *t) {
    cr_assert_geq(t_pg_long(t->pg, "SELECT count(*) FROM authors WHERE id <= 10000"), 10000, "authors lost rows");
    cr_assert_eq(t_pg_long(t->pg, "SELECT count(*) FROM books WHERE id <= 100000"), 100000, "books lost rows");
}

/* ==========================================================================
 * SELECT and loading
 * ========================================================================== */

Test(sql_exec, select_and_load, .timeout = 30) {
    env t;
    env_open(&t, "select");
    int64_t ids[3] = {new_author(&t, "a", 1920), new_author(&t, "b", 0), new_author(&t, "c", 1999)};
    char like[128];
    snprintf(like, sizeof(like), "%s%%", t.prefix);

    aorm_stmt *q = aorm_select(&author_model);
    aorm_where(q, aorm_like(AORM_COL(author, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(author, id), AORM_ASC);
    cr_assert(aorm_stmt_readonly(q));
    aorm_stmt *keep = aorm_select(&author_model); /* same shape, kept for loading */
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 3);
    for (int i = 0; i < 3; i++) {
        author a = {0};
        cr_assert_eq(aorm_stmt_load(keep, r, i, &author_model, &a, NULL), 0);
        cr_assert_eq(a.id, ids[i]);
        char want[128];
        snprintf(want, sizeof(want), "%s%c", t.prefix, 'a' + i);
        cr_assert_str_eq(a.name, want);
        int len;
        char *born = pg_text(&t, "SELECT coalesce(born::text, 'NULL') FROM authors WHERE id = $1", a.id, &len);
        if (strcmp(born, "NULL") == 0) cr_assert_not(a.born.valid);
        else cr_assert(a.born.valid && a.born.value == atoi(born));
        free(born);
        aorm_model_free_fields(&author_model, &a);
    }
    cr_assert_eq(aorm_stmt_load(keep, r, 3, &author_model, &(author){0}, NULL), AORM_ERANGE);
    aorm_result_free(r);

    /* reference rows: the books of authors 1 and 2, against libpq */
    const int64_t aids[] = {1, 2};
    q = aorm_select(&book_model);
    aorm_where(q, aorm_in_int8(AORM_COL(book, author_id), aids, 2));
    aorm_order_by(q, AORM_COL(book, id), AORM_DESC);
    aorm_limit(q, 15);
    aorm_offset(q, 1);
    aorm_stmt *shape = aorm_select(&book_model);
    r = run(&t, q);
    PGresult *pr = PQexec(t.pg, "SELECT id, author_id, title, year, price FROM books WHERE author_id IN (1, 2) "
                                "ORDER BY id DESC LIMIT 15 OFFSET 1");
    cr_assert_eq(aorm_result_nrows(r), PQntuples(pr));
    cr_assert_eq(PQntuples(pr), 15);
    for (int i = 0; i < 15; i++) {
        book b = {0};
        cr_assert_eq(aorm_stmt_load(shape, r, i, &book_model, &b, NULL), 0);
        cr_assert_eq(b.id, atoll(PQgetvalue(pr, i, 0)));
        cr_assert_eq(b.author_id, atoll(PQgetvalue(pr, i, 1)));
        cr_assert_str_eq(b.title, PQgetvalue(pr, i, 2));
        cr_assert_eq(b.year, atoi(PQgetvalue(pr, i, 3)));
        cr_assert_float_eq(b.price, atof(PQgetvalue(pr, i, 4)), 1e-9);
        aorm_model_free_fields(&book_model, &b);
    }
    PQclear(pr);
    aorm_result_free(r);
    aorm_stmt_free(shape);
    aorm_stmt_free(keep);
    env_close(&t);
}

/* Loading picks each model's columns by position, even when both
 * models have an "id". */
Test(sql_exec, join_load_two_models, .timeout = 30) {
    env t;
    env_open(&t, "joinload");
    int64_t a = new_author(&t, "a", 1950);
    int64_t b = new_book(&t, a, "b", 2001, 12.5);
    aorm_stmt *q = aorm_select(&book_model);
    aorm_join_rel(q, AORM_REL(book, author), false);
    aorm_select_add_model(q, &author_model);
    aorm_where(q, aorm_eq(AORM_COL(book, id), aorm_int8(b)));
    cr_assert_eq(aorm_stmt_compile(q), 0, "%s", aorm_stmt_errmsg(q));
    aorm_stmt *shape = aorm_select(&book_model);
    aorm_join_rel(shape, AORM_REL(book, author), false);
    aorm_select_add_model(shape, &author_model);
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    book bk = {0};
    author au = {0};
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &book_model, &bk, NULL), 0);
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &author_model, &au, NULL), 0);
    cr_assert_eq(bk.id, b);
    cr_assert_eq(bk.author_id, a);
    cr_assert_eq(au.id, a, "authors.id comes from its own position, not books.id");
    cr_assert(au.born.valid && au.born.value == 1950);
    cr_assert_str_eq(aorm_result_col_name(r, aorm_stmt_column(shape, AORM_COL(author, id))), "authors_id");
    aorm_model_free_fields(&book_model, &bk);
    aorm_model_free_fields(&author_model, &au);
    aorm_result_free(r);
    aorm_stmt_free(shape);
    env_close(&t);
}

Test(sql_exec, joins_with_aggregates, .timeout = 30) {
    env t;
    env_open(&t, "agg");
    int64_t a1 = new_author(&t, "1", 1900), a2 = new_author(&t, "2", 1901), a3 = new_author(&t, "3", 1902);
    new_book(&t, a1, "x", 2000, 10.25);
    new_book(&t, a1, "y", 2005, 4.75);
    new_book(&t, a1, "z", 1990, 1);
    new_book(&t, a2, "w", 2010, 7.5);
    const int64_t ids[] = {a1, a2, a3};

    aorm_stmt *q = aorm_select_columns(AORM_COL(author, id), aorm_label(aorm_count(AORM_COL(book, id)), "n"),
                                       aorm_label(aorm_sum(AORM_COL(book, price)), "total"),
                                       aorm_label(aorm_max(AORM_COL(book, year)), "latest"),
                                       aorm_label(aorm_count_distinct(AORM_COL(book, year)), "years"));
    aorm_join_rel(q, AORM_REL(author, books), true);
    aorm_where(q, aorm_in_int8(AORM_COL(author, id), ids, 3));
    aorm_group_by(q, AORM_COL(author, id));
    aorm_having(q, aorm_ge(aorm_count(AORM_COL(book, id)), aorm_int8(0)));
    aorm_order_by(q, AORM_COL(author, id), AORM_ASC);
    aorm_stmt *shape = aorm_select_columns(AORM_COL(author, id), aorm_label(aorm_count(AORM_COL(book, id)), "n"),
                                           aorm_label(aorm_sum(AORM_COL(book, price)), "total"));
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 3);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT a.id, count(b.id), coalesce(sum(b.price), -1), coalesce(max(b.year), -1) FROM authors a "
             "LEFT JOIN books b ON b.author_id = a.id WHERE a.id IN (%" PRId64 ", %" PRId64 ", %" PRId64 ") "
             "GROUP BY a.id ORDER BY a.id",
             a1, a2, a3);
    PGresult *pr = PQexec(t.pg, sql);
    cr_assert_eq(PQntuples(pr), 3);
    int cn = aorm_stmt_label(shape, "n"), ct = aorm_stmt_label(shape, "total");
    cr_assert_eq(cn, 1);
    cr_assert_eq(ct, 2);
    for (int i = 0; i < 3; i++) {
        int64_t id, n;
        cr_assert_eq(aorm_result_int64(r, i, 0, &id), 0);
        cr_assert_eq(id, atoll(PQgetvalue(pr, i, 0)));
        cr_assert_eq(aorm_result_int64(r, i, cn, &n), 0);
        cr_assert_eq(n, atoll(PQgetvalue(pr, i, 1)));
        double total;
        if (aorm_result_is_null(r, i, ct)) cr_assert_float_eq(atof(PQgetvalue(pr, i, 2)), -1.0, 0);
        else {
            cr_assert_eq(aorm_result_float8(r, i, ct, &total), 0);
            cr_assert_float_eq(total, atof(PQgetvalue(pr, i, 2)), 1e-9);
        }
    }
    int64_t n;
    aorm_result_int64(r, 0, 1, &n);
    cr_assert_eq(n, 3);
    aorm_result_int64(r, 2, 1, &n);
    cr_assert_eq(n, 0, "the LEFT JOIN keeps the author without books");
    int32_t latest;
    cr_assert_eq(aorm_result_int32(r, 0, 3, &latest), 0);
    cr_assert_eq(latest, 2005);
    PQclear(pr);
    aorm_result_free(r);
    aorm_stmt_free(shape);

    /* many-to-many: tags of reference book 1 */
    q = aorm_select_columns(AORM_COL(tag, name));
    aorm_from(q, &book_model);
    aorm_join_rel(q, AORM_REL(book, tags), false);
    aorm_where(q, aorm_eq(AORM_COL(book, id), aorm_int8(1)));
    aorm_order_by(q, AORM_COL(tag, name), AORM_ASC);
    r = run(&t, q);
    pr = PQexec(t.pg, "SELECT t.name FROM book_tags bt JOIN tags t ON t.id = bt.tag_id WHERE bt.book_id = 1 ORDER BY 1");
    cr_assert_eq(aorm_result_nrows(r), PQntuples(pr));
    cr_assert_gt(PQntuples(pr), 0);
    for (int i = 0; i < PQntuples(pr); i++) {
        const char *s;
        cr_assert_eq(aorm_result_text(r, i, 0, &s, NULL), 0);
        cr_assert_str_eq(s, PQgetvalue(pr, i, 0));
    }
    PQclear(pr);
    aorm_result_free(r);
    env_close(&t);
}

Test(sql_exec, subqueries, .timeout = 30) {
    env t;
    env_open(&t, "subq");
    int64_t a1 = new_author(&t, "1", 1800), a2 = new_author(&t, "2", 1800), a3 = new_author(&t, "3", 1801);
    new_book(&t, a1, "cheap", 2000, 1);
    new_book(&t, a2, "dear", 2000, 99);
    new_book(&t, a3, "dear", 2001, 98);
    (void)a3;
    char like[128];
    snprintf(like, sizeof(like), "%s%%", t.prefix);
    /* authors of this test with a book over 50 published in 2000 */
    aorm_stmt *sub = aorm_select_columns(AORM_COL(book, author_id));
    aorm_where(sub, aorm_gt(AORM_COL(book, price), aorm_float8(50)));
    aorm_stmt *ex = aorm_select_columns(AORM_COL(book, id));
    aorm_where(ex, aorm_and(aorm_eq(AORM_COL(book, author_id), AORM_COL(author, id)),
                            aorm_eq(AORM_COL(book, year), aorm_int4(2000))));
    aorm_stmt *q = aorm_select_columns(AORM_COL(author, id));
    aorm_where(q, aorm_like(AORM_COL(author, name), aorm_text(like)));
    aorm_where(q, aorm_in_select(AORM_COL(author, id), sub));
    aorm_where(q, aorm_exists(ex));
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    int64_t id;
    aorm_result_int64(r, 0, 0, &id);
    cr_assert_eq(id, a2);
    aorm_result_free(r);
    env_close(&t);
}

/* ==========================================================================
 * INSERT / UPDATE / DELETE
 * ========================================================================== */

Test(sql_exec, insert_one_returning, .timeout = 30) {
    env t;
    env_open(&t, "ins1");
    int64_t a = new_author(&t, "a", 1960);
    char title[128];
    snprintf(title, sizeof(title), "%sone", t.prefix);
    book b = {.author_id = a, .title = title, .year = 2020, .price = 3.5};
    aorm_stmt *q = aorm_insert(&book_model);
    aorm_insert_object(q, &b);
    aorm_returning(q, AORM_COL(book, id));
    aorm_stmt *shape = aorm_insert(&book_model);
    aorm_returning(shape, AORM_COL(book, id));
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &book_model, &b, NULL), 0);
    cr_assert_gt(b.id, 100000);
    cr_assert_eq(b.title, title, "only the RETURNING columns are loaded");
    int len;
    char *s = pg_text(&t, "SELECT title || '/' || year || '/' || price || '/' || author_id FROM books WHERE id = $1", b.id, &len);
    char want[256];
    snprintf(want, sizeof(want), "%s/2020/3.5/%" PRId64, title, a);
    cr_assert_str_eq(s, want);
    free(s);
    aorm_result_free(r);
    aorm_stmt_free(shape);

    /* explicit values, RETURNING every column */
    q = aorm_insert(&author_model);
    aorm_set(q, AORM_COL(author, name), aorm_text(title));
    aorm_set(q, AORM_COL(author, born), aorm_null(AORM_INT4));
    aorm_returning_all(q);
    shape = aorm_insert(&author_model);
    aorm_returning_all(shape);
    r = run(&t, q);
    author au = {.born = AORM_SOME(aorm_opt_int32, 5)};
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &author_model, &au, NULL), 0);
    cr_assert_gt(au.id, 0);
    cr_assert_str_eq(au.name, title);
    cr_assert_not(au.born.valid);
    aorm_model_free_fields(&author_model, &au);
    aorm_result_free(r);
    aorm_stmt_free(shape);
    env_close(&t);
}

static void insert_many(env *t, size_t n) {
    int64_t a = new_author(t, "many", 1970);
    book *rows = calloc(n, sizeof(*rows));
    const void **objs = calloc(n, sizeof(*objs));
    for (size_t i = 0; i < n; i++) {
        char title[160];
        snprintf(title, sizeof(title), "%s%zu-%zu", t->prefix, n, i);
        rows[i] = (book){.author_id = a, .title = strdup(title), .year = 1900 + (int)(i % 100), .price = (double)i / 4};
        objs[i] = &rows[i];
    }
    aorm_stmt *q = aorm_insert(&book_model);
    cr_assert_eq(aorm_insert_objects(q, objs, n), 0, "%s", aorm_stmt_errmsg(q));
    aorm_returning(q, AORM_COL(book, id));
    aorm_stmt *shape = aorm_insert(&book_model);
    aorm_returning(shape, AORM_COL(book, id));
    aorm_result *r = run(t, q);
    cr_assert_eq(aorm_result_nrows(r), (int)n);
    for (size_t i = 0; i < n; i++) cr_assert_eq(aorm_stmt_load(shape, r, (int)i, &book_model, &rows[i], NULL), 0);
    aorm_result_free(r);
    aorm_stmt_free(shape);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM books WHERE author_id = %" PRId64, a);
    cr_assert_eq(t_pg_long(t->pg, sql), (long)n);
    /* every id came back in the order of the objects */
    for (size_t i = 0; i < n; i += (n > 50 ? 37 : 1)) {
        int len;
        char *s = pg_text(t, "SELECT title || '|' || year || '|' || price FROM books WHERE id = $1", rows[i].id, &len);
        char want[256];
        snprintf(want, sizeof(want), "%s|%d|%g", rows[i].title, rows[i].year, rows[i].price);
        cr_assert_str_eq(s, want);
        free(s);
    }
    for (size_t i = 0; i < n; i++) free(rows[i].title);
    free(rows);
    free(objs);
}

Test(sql_exec, insert_many_returning, .timeout = 30) {
    env t;
    env_open(&t, "insN");
    insert_many(&t, 2);
    insert_many(&t, 1000);
    env_close(&t);
}

Test(sql_exec, every_type_round_trip, .timeout = 30) {
    env t;
    env_open(&t, "typed");
    ensure_tables(t.pg);
    static const uint8_t bytes[] = {0, 1, 2, 255, '\'', '\\'};
    typed a = {.b = true, .i2 = -32768, .i4 = 2147483647, .f4 = 0.5f, .f8 = -1e300, .num = "-12345678901234567890.0012",
               .txt = t.prefix, .bin = {(uint8_t *)bytes, sizeof(bytes)}, .day = aorm_date_from_ymd(1999, 12, 31),
               .ts = 123456789, .tstz = AORM_SOME(aorm_opt_int64, -5), .u = {{0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff}},
               .js = "{\"k\": [1, 2]}", .jsb = "{\"z\": null}"};
    typed b = a;
    b.bin = (aorm_bytes){0};
    b.tstz = AORM_NONE(aorm_opt_int64);
    b.js = NULL;
    b.num = "NaN";
    /* one row, then two rows through unnest: the server checks the casts */
    for (int rows = 1; rows <= 2; rows++) {
        const void *objs[] = {&a, &b};
        aorm_stmt *q = aorm_insert(&typed_model);
        cr_assert_eq(aorm_insert_objects(q, objs, (size_t)rows), 0, "%s", aorm_stmt_errmsg(q));
        aorm_returning_all(q);
        aorm_stmt *shape = aorm_insert(&typed_model);
        aorm_returning_all(shape);
        aorm_result *r = run(&t, q);
        cr_assert_eq(aorm_result_nrows(r), rows);
        for (int i = 0; i < rows; i++) {
            const typed *want = i ? &b : &a;
            typed got = {0};
            cr_assert_eq(aorm_stmt_load(shape, r, i, &typed_model, &got, NULL), 0);
            cr_assert_gt(got.id, 0);
            cr_assert_eq(got.b, want->b);
            cr_assert_eq(got.i2, want->i2);
            cr_assert_eq(got.i4, want->i4);
            cr_assert_eq(got.f4, want->f4);
            cr_assert_eq(got.f8, want->f8);
            cr_assert_str_eq(got.num, want->num);
            cr_assert_str_eq(got.txt, want->txt);
            cr_assert_eq(got.bin.len, want->bin.len);
            if (want->bin.data) cr_assert(memcmp(got.bin.data, want->bin.data, want->bin.len) == 0);
            else cr_assert_null(got.bin.data);
            cr_assert_eq(got.day, want->day);
            cr_assert_eq(got.ts, want->ts);
            cr_assert_eq(got.tstz.valid, want->tstz.valid);
            cr_assert_eq(got.tstz.value, want->tstz.value);
            cr_assert(memcmp(&got.u, &want->u, 16) == 0);
            if (want->js) cr_assert_str_eq(got.js, want->js);
            else cr_assert_null(got.js);
            cr_assert_str_eq(got.jsb, want->jsb);
            aorm_model_free_fields(&typed_model, &got);
        }
        aorm_result_free(r);
        aorm_stmt_free(shape);
    }
    /* values of every type as WHERE parameters find the row */
    static const uint8_t u[16] = {0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff};
    aorm_stmt *q = aorm_select_columns(aorm_count_all());
    aorm_from(q, &typed_model);
    aorm_where(q, aorm_and(aorm_eq(AORM_COL(typed, b), aorm_bool(true)), aorm_eq(AORM_COL(typed, i2), aorm_int2(-32768)),
                           aorm_eq(AORM_COL(typed, i4), aorm_int4(2147483647)), aorm_eq(AORM_COL(typed, f4), aorm_float4(0.5f)),
                           aorm_eq(AORM_COL(typed, f8), aorm_float8(-1e300)),
                           aorm_eq(AORM_COL(typed, num), aorm_numeric("-12345678901234567890.0012")),
                           aorm_eq(AORM_COL(typed, txt), aorm_text(t.prefix)),
                           aorm_eq(AORM_COL(typed, bin), aorm_bytea(bytes, sizeof(bytes))),
                           aorm_eq(AORM_COL(typed, day), aorm_date(aorm_date_from_ymd(1999, 12, 31))),
                           aorm_eq(AORM_COL(typed, ts), aorm_timestamp(123456789)),
                           aorm_eq(AORM_COL(typed, tstz), aorm_timestamptz(-5)), aorm_eq(AORM_COL(typed, u), aorm_uuid_value(u)),
                           aorm_eq(AORM_COL(typed, jsb), aorm_jsonb("{\"z\": null}")),
                           aorm_in_uuid(AORM_COL(typed, u), u, 1)));
    aorm_result *r = run(&t, q);
    int64_t n;
    cr_assert_eq(aorm_result_int64(r, 0, 0, &n), 0);
    cr_assert_eq(n, 2, "the row inserted alone and the first of the pair");
    aorm_result_free(r);
    env_close(&t);
}

Test(sql_exec, update_and_delete_returning, .timeout = 30) {
    env t;
    env_open(&t, "upd");
    int64_t a = new_author(&t, "a", 1940);
    int64_t b1 = new_book(&t, a, "1", 2000, 10), b2 = new_book(&t, a, "2", 2001, 20);
    new_book(&t, a, "3", 2002, 30);
    const int64_t ids[] = {b1, b2};

    aorm_stmt *q = aorm_update(&book_model);
    aorm_set(q, AORM_COL(book, price), aorm_add(aorm_mul(AORM_COL(book, price), aorm_float8(2)), aorm_float8(0.5)));
    aorm_set(q, AORM_COL(book, year), aorm_int4(1999));
    aorm_where(q, aorm_in_int8(AORM_COL(book, id), ids, 2));
    aorm_returning(q, AORM_COL(book, id));
    aorm_returning(q, AORM_COL(book, price));
    aorm_stmt *shape = aorm_update(&book_model);
    aorm_returning(shape, AORM_COL(book, id));
    aorm_returning(shape, AORM_COL(book, price));
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 2);
    for (int i = 0; i < 2; i++) {
        book bk = {0};
        cr_assert_eq(aorm_stmt_load(shape, r, i, &book_model, &bk, NULL), 0);
        cr_assert_float_eq(bk.price, bk.id == b1 ? 20.5 : 40.5, 1e-9);
    }
    aorm_result_free(r);
    aorm_stmt_free(shape);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM books WHERE author_id = %" PRId64 " AND year = 1999", a);
    cr_assert_eq(t_pg_long(t.pg, sql), 2);

    q = aorm_delete(&book_model);
    aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(a)));
    aorm_where(q, aorm_lt(AORM_COL(book, year), aorm_int4(2002)));
    aorm_returning(q, AORM_COL(book, title));
    r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 2);
    cr_assert_eq(aorm_result_affected(r), 2);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM books WHERE author_id = %" PRId64, a);
    cr_assert_eq(t_pg_long(t.pg, sql), 1);
    aorm_result_free(r);
    env_close(&t);
}

Test(sql_exec, on_conflict, .timeout = 30) {
    env t;
    env_open(&t, "conflict");
    int64_t a = new_author(&t, "a", 1930);
    int64_t id = t_pg_long(t.pg, "SELECT nextval('books_id_seq')");
    char title[128];
    snprintf(title, sizeof(title), "%sfirst", t.prefix);
    book b = {.id = id, .author_id = a, .title = title, .year = 2000, .price = 10};
    aorm_stmt *q = aorm_insert(&book_model);
    aorm_insert_object(q, &b);
    aorm_result_free(run(&t, q));

    /* DO NOTHING: no row comes back, nothing changes */
    b.price = 99;
    q = aorm_insert(&book_model);
    aorm_insert_object(q, &b);
    aorm_on_conflict_do_nothing(q, aorm_conflict_columns(AORM_COL(book, id)));
    aorm_returning(q, AORM_COL(book, id));
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 0);
    aorm_result_free(r);

    /* DO UPDATE: the title replaced, the prices added */
    snprintf(title, sizeof(title), "%ssecond", t.prefix);
    b.price = 5;
    q = aorm_insert(&book_model);
    aorm_insert_object(q, &b);
    aorm_on_conflict_do_update(q, aorm_conflict_columns(AORM_COL(book, id)));
    aorm_set(q, AORM_COL(book, title), aorm_excluded(AORM_COL(book, title)));
    aorm_set(q, AORM_COL(book, price), aorm_add(AORM_COL(book, price), aorm_excluded(AORM_COL(book, price))));
    aorm_returning_all(q);
    aorm_stmt *shape = aorm_insert(&book_model);
    aorm_returning_all(shape);
    r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    book got = {0};
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &book_model, &got, NULL), 0);
    cr_assert_eq(got.id, id);
    cr_assert_str_eq(got.title, title);
    cr_assert_float_eq(got.price, 15, 1e-9);
    aorm_model_free_fields(&book_model, &got);
    aorm_result_free(r);
    aorm_stmt_free(shape);
    int len;
    char *s = pg_text(&t, "SELECT title || '|' || price FROM books WHERE id = $1", id, &len);
    char want[160];
    snprintf(want, sizeof(want), "%s|15", title);
    cr_assert_str_eq(s, want);
    free(s);

    /* several rows (unnest) with ON CONFLICT: only the new row comes back */
    book b2 = b;
    b2.id = t_pg_long(t.pg, "SELECT nextval('books_id_seq')");
    const void *objs[] = {&b, &b2};
    q = aorm_insert(&book_model);
    cr_assert_eq(aorm_insert_objects(q, objs, 2), 0);
    aorm_on_conflict_do_nothing(q, aorm_conflict_columns(AORM_COL(book, id)));
    aorm_returning(q, AORM_COL(book, id));
    r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    int64_t got_id;
    cr_assert_eq(aorm_result_int64(r, 0, 0, &got_id), 0);
    cr_assert_eq(got_id, b2.id);
    aorm_result_free(r);
    env_close(&t);
}

/* ==========================================================================
 * Locks on a held connection
 * ========================================================================== */

typedef struct acq {
    int done;
    aorm_conn *c;
} acq;

static void on_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    acq *a = user;
    a->done = 1;
    cr_assert_null(err, "acquire: %s", err ? err->message : "");
    a->c = c;
}

static aorm_stmt *locking_select(const int64_t *ids, size_t n, unsigned flags) {
    aorm_stmt *q = aorm_select(&author_model);
    aorm_where(q, aorm_in_int8(AORM_COL(author, id), ids, n));
    aorm_for_update(q, flags);
    return q;
}

Test(sql_exec, for_update_skip_locked, .timeout = 30) {
    env t;
    env_open(&t, "lock");
    const int64_t ids[] = {new_author(&t, "1", 1), new_author(&t, "2", 2), new_author(&t, "3", 3)};
    acq a = {0};
    cr_assert_eq(aorm_engine_acquire(t.e, on_conn, &a), 0);
    cr_assert(t_run_until(t.evl, &a.done, WAIT));
    reply rb = {0}, rl = {0};
    cr_assert_eq(aorm_conn_begin(a.c, NULL, on_result, &rb), 0);
    /* lock the first two */
    aorm_stmt *q = locking_select(ids, 2, AORM_LOCK_UPDATE);
    cr_assert_not(aorm_stmt_readonly(q));
    cr_assert_eq(aorm_stmt_execute_on(a.c, q, NULL, on_result, &rl), 0, "%s", aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
    reply_wait(&t, &rb);
    reply_wait(&t, &rl);
    cr_assert_null(rl.err, "%s", rl.err ? rl.err->message : "");
    cr_assert_eq(aorm_result_nrows(rl.res), 2);
    aorm_result_free(rb.res);
    aorm_result_free(rl.res);

    /* elsewhere: SKIP LOCKED sees the third only, NOWAIT fails */
    aorm_result *r = run(&t, locking_select(ids, 3, AORM_LOCK_UPDATE | AORM_LOCK_SKIP_LOCKED));
    cr_assert_eq(aorm_result_nrows(r), 1);
    author au = {0};
    aorm_stmt *shape = aorm_select(&author_model);
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &author_model, &au, NULL), 0);
    cr_assert_eq(au.id, ids[2]);
    aorm_model_free_fields(&author_model, &au);
    aorm_result_free(r);
    aorm_error *err = run_error(&t, locking_select(ids, 3, AORM_LOCK_UPDATE | AORM_LOCK_NOWAIT));
    cr_assert_str_eq(err->sqlstate, "55P03", "lock_not_available, got %s %s", err->sqlstate, err->message);
    aorm_error_free(err);
    r = run(&t, locking_select(ids, 3, AORM_LOCK_SHARE | AORM_LOCK_SKIP_LOCKED));
    cr_assert_eq(aorm_result_nrows(r), 1, "FOR SHARE conflicts with FOR UPDATE too");
    aorm_result_free(r);

    reply rr = {0};
    cr_assert_eq(aorm_conn_rollback(a.c, on_result, &rr), 0);
    reply_wait(&t, &rr);
    aorm_result_free(rr.res);
    aorm_conn_release(a.c);
    r = run(&t, locking_select(ids, 3, AORM_LOCK_UPDATE | AORM_LOCK_SKIP_LOCKED));
    cr_assert_eq(aorm_result_nrows(r), 3, "the locks went with the rollback");
    aorm_result_free(r);
    aorm_stmt_free(shape);
    env_close(&t);
}

/* ==========================================================================
 * Raw text
 * ========================================================================== */

Test(sql_exec, raw_with_binds, .timeout = 30) {
    env t;
    env_open(&t, "raw");
    new_author(&t, "a", 1910);
    new_author(&t, "b", 0);
    new_author(&t, "c", 1930);
    char like[128];
    snprintf(like, sizeof(like), "%s%%", t.prefix);
    aorm_stmt *q = aorm_raw("SELECT id, born, name, ':not' AS \"x:y\" FROM authors -- :no\n"
                            "WHERE name LIKE :pat AND (born IS NULL OR born::int >= :min) /* :no */ "
                            "AND name <> :pat ORDER BY id");
    aorm_bind(q, "pat", aorm_text(like));
    aorm_bind(q, "min", aorm_int4(1920));
    aorm_stmt *shape = aorm_raw("SELECT 1");
    aorm_result *r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 2);
    author au = {0};
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &author_model, &au, NULL), 0, "raw results load by column name");
    char want[128];
    snprintf(want, sizeof(want), "%sb", t.prefix);
    cr_assert_str_eq(au.name, want);
    cr_assert_not(au.born.valid);
    aorm_model_free_fields(&author_model, &au);
    const char *x;
    cr_assert_eq(aorm_result_text(r, 1, 3, &x, NULL), 0);
    cr_assert_str_eq(x, ":not");
    aorm_result_free(r);
    aorm_stmt_free(shape);

    /* a raw statement that writes, with dollar quotes left alone */
    q = aorm_raw("UPDATE authors SET born = :b WHERE name = :n || $q$c$q$ RETURNING born");
    aorm_bind(q, "b", aorm_int4(1931));
    aorm_bind(q, "n", aorm_text(t.prefix));
    cr_assert_not(aorm_stmt_readonly(q));
    r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    aorm_result_free(r);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT born FROM authors WHERE name = '%sc'", t.prefix);
    cr_assert_eq(t_pg_long(t.pg, sql), 1931);
    env_close(&t);
}

/* ==========================================================================
 * Injection: values and identifiers reach the server as data
 * ========================================================================== */

static const char *const hostile[] = {
    "'; DROP TABLE authors; --",
    "Robert'); DROP TABLE books;--",
    "it''s \\' \\\\ \\",
    "$1 $2 $$ $q$ :name ::text",
    "\"; DELETE FROM authors; --",
    "semi;colon;",
    "/* comment */ -- line",
    "E'\\x41'",
    "ünïcödé ✓",
};

Test(sql_exec, injection_values, .timeout = 30) {
    env t;
    env_open(&t, "inject");
    size_t n = sizeof(hostile) / sizeof(hostile[0]);
    for (size_t i = 0; i < n; i++) {
        char name[256];
        snprintf(name, sizeof(name), "%s%zu %s", t.prefix, i, hostile[i]);
        /* through an object, then found by a WHERE value */
        author a = {.name = name, .born = AORM_SOME(aorm_opt_int32, (int32_t)i)};
        aorm_stmt *q = aorm_insert(&author_model);
        aorm_insert_object(q, &a);
        aorm_returning(q, AORM_COL(author, id));
        aorm_stmt *shape = aorm_insert(&author_model);
        aorm_returning(shape, AORM_COL(author, id));
        aorm_result *r = run(&t, q);
        cr_assert_eq(aorm_stmt_load(shape, r, 0, &author_model, &a, NULL), 0);
        aorm_result_free(r);
        aorm_stmt_free(shape);
        int len;
        char *back = pg_text(&t, "SELECT name FROM authors WHERE id = $1", a.id, &len);
        cr_assert_eq((size_t)len, strlen(name));
        cr_assert(memcmp(back, name, (size_t)len) == 0, "stored \"%s\", read \"%s\"", name, back);
        free(back);

        q = aorm_select_columns(AORM_COL(author, id));
        aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text(name)));
        r = run(&t, q);
        cr_assert_eq(aorm_result_nrows(r), 1);
        int64_t id;
        aorm_result_int64(r, 0, 0, &id);
        cr_assert_eq(id, a.id);
        aorm_result_free(r);

        /* through aorm_set on an UPDATE and a raw bind */
        q = aorm_update(&author_model);
        aorm_set(q, AORM_COL(author, name), aorm_text(name));
        aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(a.id)));
        aorm_result_free(run(&t, q));
        q = aorm_raw("SELECT count(*) FROM authors WHERE name = :v AND id = :id");
        aorm_bind(q, "v", aorm_text(name));
        aorm_bind(q, "id", aorm_int8(a.id));
        r = run(&t, q);
        int64_t cnt;
        aorm_result_int64(r, 0, 0, &cnt);
        cr_assert_eq(cnt, 1);
        aorm_result_free(r);
    }
    authors_intact(&t);
    env_close(&t);
}

Test(sql_exec, injection_identifiers, .timeout = 30) {
    env t;
    env_open(&t, "ident");
    ensure_tables(t.pg);
    char value[128];
    snprintf(value, sizeof(value), "%s\"quoted\" 'single'", t.prefix);
    weird w = {.text = value};
    aorm_stmt *q = aorm_insert(&weird_model);
    aorm_insert_object(q, &w);
    aorm_returning_all(q);
    aorm_stmt *shape = aorm_insert(&weird_model);
    aorm_returning_all(shape);
    aorm_result *r = run(&t, q);
    weird got = {0};
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &weird_model, &got, NULL), 0);
    cr_assert_str_eq(got.text, value);
    aorm_model_free_fields(&weird_model, &got);
    aorm_result_free(r);
    aorm_stmt_free(shape);

    q = aorm_select(&weird_model);
    aorm_where(q, aorm_eq(AORM_COL(weird, text), aorm_text(value)));
    r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    cr_assert_str_eq(aorm_result_col_name(r, 1), "col \"umn\"; --");
    aorm_result_free(r);

    /* a schema-qualified model */
    thing th = {.name = value};
    q = aorm_insert(&thing_model);
    aorm_insert_object(q, &th);
    aorm_returning(q, AORM_COL(thing, id));
    r = run(&t, q);
    int64_t id;
    aorm_result_int64(r, 0, 0, &id);
    aorm_result_free(r);
    q = aorm_update(&thing_model);
    aorm_set(q, AORM_COL(thing, name), aorm_text("renamed"));
    aorm_where(q, aorm_eq(AORM_COL(thing, id), aorm_int8(id)));
    aorm_returning(q, AORM_COL(thing, name));
    r = run(&t, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    aorm_result_free(r);
    int len;
    char *s = pg_text(&t, "SELECT name FROM \"sqlx \"\"s\"\"\".things WHERE id = $1", id, &len);
    cr_assert_str_eq(s, "renamed");
    free(s);

    /* a table name that tries to end the statement is one odd name */
    q = aorm_select(&evil_model);
    aorm_error *err = run_error(&t, q);
    cr_assert_str_eq(err->sqlstate, "42P01", "undefined_table, got %s %s", err->sqlstate, err->message);
    aorm_error_free(err);
    authors_intact(&t);
    env_close(&t);
}

Test(sql_exec, nul_bytes_and_invalid_utf8, .timeout = 30) {
    env t;
    env_open(&t, "encoding");
    /* a NUL byte: refused at attach, nothing is sent */
    aorm_engine_stats before, after;
    aorm_engine_stats_get(t.e, &before);
    aorm_stmt *q = aorm_select(&author_model);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text_n("a\0b", 3))), AORM_EENCODING);
    reply r0 = {0};
    cr_assert_eq(aorm_stmt_execute(t.e, q, NULL, on_result, &r0), AORM_EENCODING);
    aorm_stmt_free(q);
    q = aorm_raw("SELECT :v");
    cr_assert_eq(aorm_bind(q, "v", aorm_text_n("\0", 1)), AORM_EENCODING);
    cr_assert_eq(aorm_stmt_execute(t.e, q, NULL, on_result, &r0), AORM_EENCODING);
    aorm_stmt_free(q);
    ev_run(t.evl, EVRUN_NOWAIT);
    aorm_engine_stats_get(t.e, &after);
    cr_assert_eq(after.statements, before.statements, "nothing may reach the server");
    cr_assert_eq(r0.done, 0, "the callback of a refused statement never runs");

    /* invalid UTF-8: the server refuses it (22021); the text is the same */
    q = aorm_select_columns(AORM_COL(author, id));
    aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text("ok")));
    cr_assert_eq(aorm_stmt_compile(q), 0);
    char *good = strdup(aorm_stmt_sql(q));
    aorm_stmt_free(q);
    q = aorm_select_columns(AORM_COL(author, id));
    aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text("\xff\xfe'; DROP TABLE authors; --")));
    cr_assert_eq(aorm_stmt_compile(q), 0);
    cr_assert_str_eq(aorm_stmt_sql(q), good, "the statement's shape does not depend on the value");
    free(good);
    aorm_error *err = run_error(&t, q);
    cr_assert_str_eq(err->sqlstate, "22021", "got %s %s", err->sqlstate, err->message);
    aorm_error_free(err);
    authors_intact(&t);
    env_close(&t);
}

/* ==========================================================================
 * Echo
 * ========================================================================== */

Test(sql_exec, echo_logs_compiled_sql_and_params, .timeout = 30) {
    env t;
    env_open_opts(&t, "echo", true);
    aorm_stmt *q = aorm_select_columns(AORM_COL(book, title));
    aorm_where(q, aorm_eq(AORM_COL(book, id), aorm_int8(77)));
    aorm_where(q, aorm_ne(AORM_COL(book, title), aorm_text("zz")));
    cr_assert_eq(aorm_stmt_compile(q), 0);
    char *sql = strdup(aorm_stmt_sql(q));
    aorm_result_free(run(&t, q));
    int found = 0;
    for (int i = 0; i < t.nlogs; i++)
        if (strstr(t.logs[i], sql) && strstr(t.logs[i], "$1=77") && strstr(t.logs[i], "$2='zz'")) found++;
    cr_assert_eq(found, 1, "no echo of \"%s\" with its parameters among %d SQL messages", sql, t.nlogs);
    free(sql);
    env_close(&t);
}

/* ==========================================================================
 * Text-format results
 * ========================================================================== */

/* Runs sql (no parameters) with the given engine flags; returns the
 * detached result, asserting success. */
static aorm_result *run_sql(env *t, const char *sql, unsigned flags) {
    reply r = {0};
    aorm_exec_options o = {.flags = flags};
    cr_assert_eq(aorm_engine_execute(t->e, sql, NULL, &o, on_result, &r), 0);
    reply_wait(t, &r);
    cr_assert_null(r.err, "%s: %s %s", sql, r.err->sqlstate, r.err->message);
    return r.res;
}

/* aorm_stmt_load decodes the binary format. A text-format column whose
 * text is its value (text, json, jsonb) loads; any other one (the int2
 * "42" would decode as 0x3432 = 13362) is refused with AORM_ETYPE, and
 * NULL is NULL in either format. */
Test(sql_exec, load_text_format_result, .timeout = 30) {
    env t;
    env_open(&t, "textfmt");
    aorm_stmt *shape = aorm_raw("SELECT 1"); /* raw: columns found by name */
    const char *ints = "SELECT 42::int4 AS i4, 'hi'::text AS txt";
    aorm_result *r = run_sql(&t, ints, AORM_EXEC_TEXT_RESULT);
    typed got = {0};
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &typed_model, &got, NULL), AORM_ETYPE, "text-format int4");
    cr_assert_eq(got.i4, 0, "nothing decoded");
    aorm_model_free_fields(&typed_model, &got);
    aorm_result_free(r);

    r = run_sql(&t, ints, 0); /* the same, in binary: loads */
    memset(&got, 0, sizeof(got));
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &typed_model, &got, NULL), 0);
    cr_assert_eq(got.i4, 42);
    cr_assert_str_eq(got.txt, "hi");
    aorm_model_free_fields(&typed_model, &got);
    aorm_result_free(r);

    r = run_sql(&t,
                "SELECT 'it''s'::varchar AS txt, '{\"a\": [1, 2]}'::json AS js, '{\"b\": null}'::jsonb AS jsb, "
                "NULL::timestamptz AS tstz, NULL::bytea AS bin",
                AORM_EXEC_TEXT_RESULT);
    memset(&got, 0, sizeof(got));
    got.tstz = AORM_SOME(aorm_opt_int64, 7);
    cr_assert_eq(aorm_stmt_load(shape, r, 0, &typed_model, &got, NULL), 0, "text-like columns in text format");
    cr_assert_str_eq(got.txt, "it's");
    cr_assert_str_eq(got.js, "{\"a\": [1, 2]}");
    cr_assert_str_eq(got.jsb, "{\"b\": null}", "jsonb's text form, no version byte");
    cr_assert_not(got.tstz.valid, "NULL in text format");
    cr_assert_null(got.bin.data);
    aorm_model_free_fields(&typed_model, &got);
    aorm_result_free(r);

    /* every other type is refused, NULL or not */
    static const char *const others[] = {
        "SELECT true AS b",      "SELECT 42::int2 AS i2", /* 13362 once */        "SELECT 1.5::float4 AS f4",
        "SELECT 2.5::float8 AS f8", "SELECT 3.25::numeric AS num", "SELECT '\\x00'::bytea AS bin",
        "SELECT '2000-01-01'::date AS day", "SELECT '2000-01-01'::timestamp AS ts",
        "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u"};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        r = run_sql(&t, others[i], AORM_EXEC_TEXT_RESULT);
        memset(&got, 0, sizeof(got));
        cr_expect_eq(aorm_stmt_load(shape, r, 0, &typed_model, &got, NULL), AORM_ETYPE, "%s", others[i]);
        aorm_model_free_fields(&typed_model, &got);
        aorm_result_free(r);
    }
    aorm_stmt_free(shape);
    env_close(&t);
}

/* ==========================================================================
 * Prepared statements: compiled once, executed with new values
 * ========================================================================== */

#include "sql/sql_int.h" /* aorm__sql_compiles */

static aorm_result *run_prepared(env *t, aorm_prepared *p) {
    reply r = {0};
    int rc = aorm_prepared_execute(t->e, p, NULL, on_result, &r);
    cr_assert_eq(rc, 0, "execute: %s", aorm_errname(rc));
    reply_wait(t, &r);
    cr_assert_null(r.err, "%s: %s %s", aorm_prepared_sql(p), r.err->sqlstate, r.err->message);
    return r.res;
}

Test(sql_exec, prepared_compiles_once_and_binds_by_name, .timeout = 30) {
    env t;
    env_open(&t, "prepared");
    int64_t a = new_author(&t, "p", 1950);
    aorm_stmt *q = aorm_update(&author_model);
    aorm_set(q, AORM_COL(author, born), aorm_param(AORM_INT4, "born"));
    aorm_where(q, aorm_and(aorm_eq(AORM_COL(author, id), aorm_param(AORM_INT8, "id")),
                           aorm_ne(AORM_COL(author, born), aorm_param(AORM_INT4, "born"))));
    aorm_returning(q, AORM_COL(author, born));
    /* placeholders without values: the statement itself is not executable */
    reply r0 = {0};
    cr_assert_eq(aorm_stmt_execute(t.e, q, NULL, on_result, &r0), AORM_EMISUSE);
    aorm_prepared *p = aorm_stmt_prepare(q);
    cr_assert_not_null(p, "%s", aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
    cr_assert_str_eq(aorm_prepared_sql(p),
                     "UPDATE \"authors\" SET \"born\" = $1 WHERE \"authors\".\"id\" = $2 AND "
                     "\"authors\".\"born\" <> $3 RETURNING \"authors\".\"born\"");
    /* missing values, unknown names, wrong types: refused before sending */
    reply r = {0};
    cr_assert_eq(aorm_prepared_execute(t.e, p, NULL, on_result, &r), AORM_EMISUSE, "nothing bound");
    cr_assert_eq(aorm_prepared_bind_int8(p, "nope", 1), AORM_EMISUSE);
    cr_assert_eq(aorm_prepared_bind_text(p, "id", "1"), AORM_EMISUSE);
    cr_assert_eq(aorm_prepared_bind_int8(p, "born", INT64_MAX), AORM_ERANGE);
    cr_assert_eq(aorm_prepared_bind_int8(p, "id", a), 0);
    cr_assert_eq(aorm_prepared_execute(t.e, p, NULL, on_result, &r), AORM_EMISUSE, "born unbound");
    unsigned long compiles = aorm__sql_compiles;
    for (int year = 1960; year < 1965; year++) {
        cr_assert_eq(aorm_prepared_bind_int4(p, "born", year), 0);
        aorm_result *res = run_prepared(&t, p);
        cr_assert_eq(aorm_result_nrows(res), 1, "year %d", year);
        int32_t got;
        cr_assert_eq(aorm_result_int32(res, 0, 0, &got), 0);
        cr_assert_eq(got, year);
        aorm_result_free(res);
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT born FROM authors WHERE id = %" PRId64, a);
        cr_assert_eq(t_pg_long(t.pg, sql), year, "stored");
    }
    /* the same value again: the WHERE's "born <> $3" takes it too, so no row */
    aorm_result *res = run_prepared(&t, p);
    cr_assert_eq(aorm_result_nrows(res), 0);
    aorm_result_free(res);
    cr_assert_eq(aorm__sql_compiles, compiles, "executions compile nothing");
    aorm_prepared_free(p);
    env_close(&t);
}

static void on_session_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) {
    (void)s;
    on_result(NULL, res, err, user);
}

/* Through a session: two executions queued in one turn with different
 * values (the second bound before the first is answered); each answers
 * with the values bound at its call, and nothing is compiled again. */
Test(sql_exec, prepared_through_a_session, .timeout = 30) {
    env t;
    env_open(&t, "prepared_session");
    int64_t a = new_author(&t, "s", 1900);
    aorm_stmt *q = aorm_select_exprs((const aorm_expr *[]){aorm_add(AORM_COL(author, born), aorm_param(AORM_INT4, "d"))}, 1);
    aorm_from(q, &author_model);
    aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_param(AORM_INT8, "id")));
    aorm_prepared *p = aorm_stmt_prepare(q);
    cr_assert_not_null(p, "%s", aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    reply r1 = {0}, r2 = {0};
    cr_assert_eq(aorm_session_execute_prepared(s, p, on_session_rows, &r1), AORM_EMISUSE, "nothing bound");
    cr_assert_eq(aorm_prepared_bind_int8(p, "id", a), 0);
    cr_assert_eq(aorm_prepared_bind_int4(p, "d", 1), 0);
    unsigned long compiles = aorm__sql_compiles;
    cr_assert_eq(aorm_session_execute_prepared(s, p, on_session_rows, &r1), 0);
    cr_assert_eq(aorm_prepared_bind_int4(p, "d", 2), 0);
    cr_assert_eq(aorm_session_execute_prepared(s, p, on_session_rows, &r2), 0);
    reply_wait(&t, &r1);
    reply_wait(&t, &r2);
    cr_assert_null(r1.err, "%s", r1.err->message);
    cr_assert_null(r2.err, "%s", r2.err->message);
    int32_t v1, v2;
    cr_assert_eq(aorm_result_int32(r1.res, 0, 0, &v1), 0);
    cr_assert_eq(aorm_result_int32(r2.res, 0, 0, &v2), 0);
    cr_assert_eq(v1, 1901, "the value bound at the first execution");
    cr_assert_eq(v2, 1902);
    cr_assert_eq(aorm__sql_compiles, compiles, "nothing compiled");
    aorm_result_free(r1.res);
    aorm_result_free(r2.res);
    aorm_session_free(s);
    aorm_prepared_free(p);
    env_close(&t);
}
