/* test_sql_hard.c -- the hard queries of Core run against the sandbox:
 * aliases and self-joins (and joined loads of a self-referential
 * relationship through a session), CTEs (several, recursive,
 * data-modifying), window functions, set operations, subqueries in FROM,
 * LATERAL, scalar subqueries, CASE / COALESCE / casts / functions, JSON
 * and array operators, INSERT ... SELECT, UPDATE ... FROM, DELETE ...
 * USING, ON CONFLICT ON CONSTRAINT, DISTINCT ON, row locks; and every
 * place a caller's string reaches the statement, failing safely.
 *
 * The golden text of each construct is in test_sql_compile.c; here each
 * one runs, and its rows are compared with a hand-written SQL statement
 * run through a separate blocking libpq connection (values compared as
 * text, floats to 15 significant digits), or the rows it wrote are read
 * back that way.
 *
 * Isolation: this file's tables (sqlx_h_*) are created IF NOT EXISTS under
 * an advisory lock; each test works on rows whose names carry the test's
 * name and the process id, and the reference bookstore rows are only
 * read. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models.h"
#include "reports.h"
#include "session_kit.h"
#include "support.h"
#include "aorm/loaders.h"
#include "aorm/sql.h"

#define TIMEOUT 60

/* ==========================================================================
 * Models
 * ========================================================================== */

#define CORE_T_EMPLOYEES "sqlx_h_employees"
#define CORE_T_ARCHIVE "sqlx_h_archive"
#define CORE_T_DFLT "sqlx_h_dflt"
#include "core_models.h"

/* ==========================================================================
 * Set-up and helpers
 * ========================================================================== */

typedef struct ctx {
    env t;
    PGconn *pg;
    char prefix[96]; /* unique name prefix of this test's rows */
} ctx;

static void ctx_open(ctx *c, const char *test, bool echo) {
    env_open(&c->t, echo);
    c->pg = t_pg();
    snprintf(c->prefix, sizeof(c->prefix), "h-%s-%ld-", test, (long)getpid());
    free(t_pg_exec(c->pg, "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74202);"
                          "CREATE TABLE IF NOT EXISTS sqlx_h_employees (id bigserial PRIMARY KEY, "
                          "  name text NOT NULL CONSTRAINT sqlx_h_employees_name_uq UNIQUE, "
                          "  manager_id bigint REFERENCES sqlx_h_employees(id), dept text NOT NULL, "
                          "  salary float8 NOT NULL, doc jsonb, tags text[], nums bigint[]);"
                          "CREATE TABLE IF NOT EXISTS sqlx_h_archive (id bigint PRIMARY KEY, name text NOT NULL);"
                          "CREATE TABLE IF NOT EXISTS sqlx_h_dflt (id bigserial PRIMARY KEY, name text NOT NULL, "
                          "  qty int NOT NULL DEFAULT 7, note text DEFAULT 'n');"
                          "COMMIT"));
}

static void ctx_close(ctx *c) {
    PQfinish(c->pg);
    env_close(&c->t);
}

/* A row of sqlx_h_employees named prefix+name; returns its id. */
static int64_t emp(ctx *c, const char *name, int64_t manager, const char *dept, double salary, const char *extra) {
    char sql[1024];
    char mgr[32] = "NULL";
    if (manager) snprintf(mgr, sizeof(mgr), "%" PRId64, manager);
    snprintf(sql, sizeof(sql),
             "INSERT INTO sqlx_h_employees (name, manager_id, dept, salary%s) VALUES ('%s%s', %s, '%s%s', %.17g%s%s) "
             "RETURNING id",
             extra ? ", doc, tags, nums" : "", c->prefix, name, mgr, c->prefix, dept, salary, extra ? ", " : "",
             extra ? extra : "");
    return t_pg_long(c->pg, sql);
}

typedef struct reply {
    int done;
    aorm_result *res;
    aorm_error *err;
} reply;

static void on_result(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    reply *r = user;
    r->done++;
    if (err) r->err = aorm_error_copy(err);
    else r->res = aorm_result_detach(res);
}

/* Runs q (kept: it is still needed to load rows), asserting success. */
static aorm_result *run(ctx *c, aorm_stmt *q) {
    reply r = {0};
    int rc = aorm_stmt_execute(c->t.e, q, NULL, on_result, &r);
    cr_assert_eq(rc, 0, "execute: %s: %s", aorm_errname(rc), aorm_stmt_errmsg(q));
    wait_done(&c->t, &r.done, "statement");
    cr_assert_null(r.err, "%s: %s %s", aorm_stmt_sql(q), r.err->sqlstate, r.err->message);
    return r.res;
}

/* Runs q; returns the server's error, asserting one. */
static aorm_error *run_error(ctx *c, aorm_stmt *q) {
    reply r = {0};
    int rc = aorm_stmt_execute(c->t.e, q, NULL, on_result, &r);
    cr_assert_eq(rc, 0, "execute: %s: %s", aorm_errname(rc), aorm_stmt_errmsg(q));
    wait_done(&c->t, &r.done, "statement");
    cr_assert_not_null(r.err, "%s should have failed", aorm_stmt_sql(q));
    aorm_result_free(r.res);
    return r.err;
}

/* The text of a value: NULL, integers, floats (15 significant digits),
 * booleans as t/f, anything else as its text. */
static void norm(char *out, size_t cap, uint32_t oid, const char *text) {
    if (!text) snprintf(out, cap, "NULL");
    else if (oid == 700 || oid == 701 || oid == 1700) snprintf(out, cap, "%.15g", atof(text));
    else snprintf(out, cap, "%s", text);
}

static void cell(const aorm_result *r, int row, int col, char *out, size_t cap) {
    uint32_t oid = aorm_result_col_type(r, col);
    if (aorm_result_is_null(r, row, col)) {
        norm(out, cap, oid, NULL);
        return;
    }
    char tmp[256];
    switch (oid) {
    case 16: {
        bool b;
        cr_assert_eq(aorm_result_bool(r, row, col, &b), 0);
        snprintf(tmp, sizeof(tmp), "%s", b ? "t" : "f");
        break;
    }
    case 20: {
        int64_t v;
        cr_assert_eq(aorm_result_int64(r, row, col, &v), 0);
        snprintf(tmp, sizeof(tmp), "%" PRId64, v);
        break;
    }
    case 23: {
        int32_t v;
        cr_assert_eq(aorm_result_int32(r, row, col, &v), 0);
        snprintf(tmp, sizeof(tmp), "%d", v);
        break;
    }
    case 701: {
        double v;
        cr_assert_eq(aorm_result_float8(r, row, col, &v), 0);
        snprintf(tmp, sizeof(tmp), "%.17g", v);
        break;
    }
    case 1700: {
        size_t need;
        cr_assert_eq(aorm_result_numeric(r, row, col, tmp, sizeof(tmp), &need), 0);
        break;
    }
    case 25:
    case 1043: {
        const char *s;
        size_t len;
        cr_assert_eq(aorm_result_text(r, row, col, &s, &len), 0);
        snprintf(tmp, sizeof(tmp), "%.*s", (int)len, s);
        break;
    }
    default: cr_assert_fail("column %d: type %u not handled by the test", col, oid);
    }
    norm(out, cap, oid, tmp);
}

/* Asserts that result r holds the rows `sql` gives through libpq, in
 * order; returns the number of rows. */
static int same_rows(ctx *c, const aorm_result *r, const char *sql) {
    PGresult *p = PQexec(c->pg, sql);
    cr_assert_eq(PQresultStatus(p), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c->pg));
    cr_assert_eq(aorm_result_nrows(r), PQntuples(p), "rows: %d through aorm, %d through libpq (%s)", aorm_result_nrows(r),
                 PQntuples(p), sql);
    cr_assert_eq(aorm_result_ncols(r), PQnfields(p));
    for (int i = 0; i < PQntuples(p); i++)
        for (int k = 0; k < PQnfields(p); k++) {
            char a[512], b[512];
            cell(r, i, k, a, sizeof(a));
            norm(b, sizeof(b), PQftype(p, k), PQgetisnull(p, i, k) ? NULL : PQgetvalue(p, i, k));
            cr_assert_str_eq(a, b, "row %d column %d (%s)", i, k, PQfname(p, k));
        }
    int n = PQntuples(p);
    PQclear(p);
    return n;
}

/* sql with every %P replaced by the test's prefix (for LIKE patterns). */
static char *with_prefix(const ctx *c, const char *sql) {
    size_t n = strlen(sql) + 1, pl = strlen(c->prefix);
    for (const char *s = sql; (s = strstr(s, "%P")); s += 2) n += pl;
    char *out = malloc(n), *o = out;
    for (const char *s = sql; *s;) {
        if (s[0] == '%' && s[1] == 'P') {
            memcpy(o, c->prefix, pl);
            o += pl;
            s += 2;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

static void check_rows(ctx *c, const aorm_result *r, const char *sql_with_prefix, int want) {
    char *sql = with_prefix(c, sql_with_prefix);
    int n = same_rows(c, r, sql);
    free(sql);
    if (want >= 0) cr_assert_eq(n, want, "%s: %d rows, expected %d", sql_with_prefix, n, want);
}

static char *like_prefix(const ctx *c) {
    char *s = malloc(strlen(c->prefix) + 2);
    sprintf(s, "%s%%", c->prefix);
    return s;
}

/* A small company: boss -> (a, b), a -> (c, d), c -> e. */
typedef struct company {
    int64_t boss, a, b, c, d, e;
} company;

static company make_company(ctx *c) {
    company k;
    k.boss = emp(c, "boss", 0, "hq", 300, "'{\"role\": \"ceo\", \"level\": 1}', '{x,y}', '{1,2}'");
    k.a = emp(c, "a", k.boss, "eng", 200, "'{\"role\": \"lead\", \"tags\": [\"go\", \"c\"]}', '{x}', '{2,3}'");
    k.b = emp(c, "b", k.boss, "ops", 150, NULL);
    k.c = emp(c, "c", k.a, "eng", 120, "'{\"role\": \"dev\"}', '{y,z}', '{5}'");
    k.d = emp(c, "d", k.a, "eng", 120, NULL);
    k.e = emp(c, "e", k.c, "eng", 90, NULL);
    return k;
}

/* ==========================================================================
 * Aliases and self-referential loads
 * ========================================================================== */

Test(sql_hard, self_join, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "selfjoin", false);
    make_company(&c);
    char *like = like_prefix(&c);
    aorm_stmt *q = aorm_select_columns(AORM_COL(employee, name), aorm_label(AORM_ACOL("mgr", employee, name), "boss"),
                                       aorm_label(AORM_ACOL("top", employee, name), "top"));
    aorm_join_alias(q, &employee_model, "mgr", aorm_eq(AORM_ACOL("mgr", employee, id), AORM_COL(employee, manager_id)),
                    AORM_JOIN_LEFT);
    aorm_join_alias(q, &employee_model, "top", aorm_eq(AORM_ACOL("top", employee, id), AORM_ACOL("mgr", employee, manager_id)),
                    AORM_JOIN_LEFT);
    aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(employee, id), 0);
    aorm_result *r = run(&c, q);
    check_rows(&c, r,
               "SELECT e.name, m.name, t.name FROM sqlx_h_employees e LEFT JOIN sqlx_h_employees m ON m.id = e.manager_id "
               "LEFT JOIN sqlx_h_employees t ON t.id = m.manager_id WHERE e.name LIKE '%P%%' ORDER BY e.id",
               6);
    aorm_result_free(r);
    aorm_stmt_free(q);

    /* both sides of a self-join loaded into objects */
    q = aorm_select(&employee_model);
    aorm_select_add_alias(q, &employee_model, "boss");
    aorm_join_rel_alias(q, AORM_REL(employee, manager), "boss", false);
    aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(employee, id), 0);
    r = run(&c, q);
    cr_assert_eq(aorm_result_nrows(r), 5);
    employee e = {0}, m = {0};
    cr_assert_eq(aorm_stmt_load(q, r, 4, &employee_model, &e, NULL), 0);
    cr_assert_eq(aorm_stmt_load_alias(q, r, 4, &employee_model, "boss", &m, NULL), 0);
    cr_assert_eq(m.id, e.manager_id.value);
    cr_assert(strstr(e.name, "-e") && strstr(m.name, "-c"), "%s / %s", e.name, m.name);
    aorm_model_free_fields(&employee_model, &e);
    aorm_model_free_fields(&employee_model, &m);
    aorm_result_free(r);
    aorm_stmt_free(q);
    free(like);
    ctx_close(&c);
}

static const aorm_load_plan *const plan_manager = AORM_PLAN(AORM_JOINED(employee, manager));
static const aorm_load_plan *const plan_reports = AORM_PLAN(AORM_JOINED(employee, reports));
static const aorm_load_plan *const plan_both = AORM_PLAN(AORM_JOINED(employee, manager), AORM_JOINED(employee, reports));

Test(sql_hard, joined_load_self_referential, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "joinedself", true);
    company k = make_company(&c);
    char *like = like_prefix(&c);
    aorm_session *s = session_new(&c.t);

    aorm_stmt *q = aorm_select(&employee_model);
    aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(employee, id), 0);
    qres r;
    query_ok(&c.t, s, q, plan_manager, &r);
    cr_assert_eq(r.len, 6, "one object per row, not per joined row");
    cr_assert_eq(echo_count(&c.t, "LEFT JOIN \"sqlx_h_employees\" AS \"manager\" ON \"manager\".\"id\" = "
                                  "\"sqlx_h_employees\".\"manager_id\""),
                 1, "one statement, the manager joined under an alias");
    for (size_t i = 0; i < r.len; i++) {
        employee *x = r.items[i], *mgr = NULL;
        cr_assert_eq(AORM_GET_REL(s, employee, x, manager, &mgr), 0);
        if (x->id == k.boss) {
            cr_assert_null(mgr);
        } else {
            cr_assert_not_null(mgr);
            cr_assert_eq(mgr->id, x->manager_id.value);
            /* the identity map: the manager is the same object as its own row */
            bool found = false;
            for (size_t j = 0; j < r.len; j++) found |= r.items[j] == mgr;
            cr_assert(found, "the manager of %s is not the object of its own row", x->name);
        }
    }
    qres_free(&r);

    /* the collection side, and both at once */
    for (int pass = 0; pass < 2; pass++) {
        q = aorm_select(&employee_model);
        aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
        query_ok(&c.t, s, q, pass ? plan_both : plan_reports, &r);
        cr_assert_eq(r.len, 6);
        for (size_t i = 0; i < r.len; i++) {
            employee *x = r.items[i];
            aorm_list *reports = NULL;
            cr_assert_eq(AORM_GET_REL(s, employee, x, reports, &reports), 0);
            size_t want = x->id == k.boss ? 2 : x->id == k.a ? 2 : x->id == k.c ? 1 : 0;
            cr_assert_eq(reports->len, want, "%s has %zu reports, expected %zu", x->name, reports->len, want);
            for (size_t j = 0; j < reports->len; j++)
                cr_assert_eq(AORM_LIST_AT(*reports, employee, j)->manager_id.value, x->id);
        }
        qres_free(&r);
    }
    aorm_session_free(s);
    free(like);
    ctx_close(&c);
}

/* ==========================================================================
 * CTEs
 * ========================================================================== */

Test(sql_hard, with_recursive_manager_tree, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "tree", false);
    company k = make_company(&c);
    aorm_stmt *q = core_manager_tree(k.a);
    aorm_result *r = run(&c, q);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "WITH RECURSIVE t AS (SELECT id, name, manager_id, 0 AS depth FROM sqlx_h_employees WHERE id = %" PRId64
             " UNION ALL SELECT e.id, e.name, e.manager_id, t.depth + 1 FROM sqlx_h_employees e JOIN t ON e.manager_id "
             "= t.id) SELECT * FROM t ORDER BY depth, id",
             k.a);
    cr_assert_eq(same_rows(&c, r, sql), 4, "a, c, d, e");
    /* rows load into objects through the CTE's name */
    employee e = {0};
    cr_assert_eq(aorm_stmt_load_alias(q, r, 3, &employee_model, "tree", &e, NULL), 0);
    cr_assert_eq(e.id, k.e);
    cr_assert_eq(e.manager_id.value, k.c);
    int32_t depth;
    cr_assert_eq(aorm_result_int32(r, 3, aorm_stmt_label(q, "depth"), &depth), 0);
    cr_assert_eq(depth, 2);
    aorm_model_free_fields(&employee_model, &e);
    aorm_result_free(r);
    aorm_stmt_free(q);
    ctx_close(&c);
}

Test(sql_hard, report_several_ctes_and_window, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "report", false);
    aorm_stmt *q = bookstore_top_books_report(11, 20, 3);
    aorm_result *r = run(&c, q);
    cr_assert_eq(same_rows(&c, r,
                           "WITH totals AS (SELECT author_id, sum(price) AS total, count(*) AS books FROM books WHERE "
                           "author_id BETWEEN 11 AND 20 GROUP BY author_id), ranked AS (SELECT author_id, title, price, "
                           "rank() OVER (PARTITION BY author_id ORDER BY price DESC, id) AS pos FROM books WHERE author_id "
                           "BETWEEN 11 AND 20) SELECT a.name, r.title, r.price, r.pos, t.total, t.books FROM authors a "
                           "JOIN ranked r ON r.author_id = a.id JOIN totals t ON t.author_id = a.id WHERE r.pos <= 3 "
                           "ORDER BY a.id, r.pos"),
                 30);
    aorm_result_free(r);
    aorm_stmt_free(q);
    ctx_close(&c);
}

Test(sql_hard, data_modifying_cte_moves_rows, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "moved", false);
    company k = make_company(&c);
    char dept[128];
    snprintf(dept, sizeof(dept), "%seng", c.prefix);
    /* the leaves of eng (nobody reports to them) move to the archive */
    aorm_stmt *has_reports = aorm_select_columns(aorm_int4(1));
    aorm_from_alias(has_reports, &employee_model, "r");
    aorm_where(has_reports, aorm_eq(AORM_ACOL("r", employee, manager_id), AORM_COL(employee, id)));
    aorm_stmt *del = aorm_delete(&employee_model);
    aorm_where(del, aorm_and(aorm_eq(AORM_COL(employee, dept), aorm_text(dept)), aorm_not(aorm_exists(has_reports))));
    aorm_returning(del, AORM_COL(employee, id));
    aorm_returning(del, AORM_COL(employee, name));
    aorm_stmt *sel = aorm_select_columns(aorm_ref("moved", "id"), aorm_ref("moved", "name"));
    aorm_from_cte(sel, "moved");
    aorm_stmt *ins = aorm_insert(&archive_model);
    aorm_insert_select(ins, aorm_columns(AORM_COL(archive, id), AORM_COL(archive, name)), sel);
    aorm_with(ins, "moved", del);
    aorm_returning(ins, AORM_COL(archive, id));
    cr_assert_not(aorm_stmt_readonly(ins));
    aorm_result *r = run(&c, ins);
    cr_assert_eq(aorm_result_nrows(r), 2, "d and e are leaves of eng");
    aorm_result_free(r);
    aorm_stmt_free(ins);
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM sqlx_h_archive WHERE id IN (%" PRId64 ", %" PRId64 ")", k.d, k.e);
    cr_assert_eq(t_pg_long(c.pg, sql), 2);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM sqlx_h_employees WHERE id IN (%" PRId64 ", %" PRId64 ")", k.d, k.e);
    cr_assert_eq(t_pg_long(c.pg, sql), 0);
    ctx_close(&c);
}

/* ==========================================================================
 * Window functions, set operations, subqueries
 * ========================================================================== */

Test(sql_hard, window_functions, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "window", false);
    make_company(&c);
    char *like = like_prefix(&c);
    aorm_stmt *q = aorm_select_columns(
        AORM_COL(employee, name),
        aorm_over(aorm_row_number(), aorm_list(AORM_COL(employee, dept)), aorm_list(aorm_desc(AORM_COL(employee, salary)), AORM_COL(employee, id))),
        aorm_over(aorm_rank(), NULL, aorm_list(aorm_desc(AORM_COL(employee, salary)))),
        aorm_over(aorm_dense_rank(), NULL, aorm_list(aorm_desc(AORM_COL(employee, salary)))),
        aorm_over(aorm_lag(AORM_COL(employee, salary), aorm_int4(1), aorm_float8(-1)), NULL, aorm_list(AORM_COL(employee, id))),
        aorm_over(aorm_lead(AORM_COL(employee, name)), NULL, aorm_list(AORM_COL(employee, id))),
        aorm_over_frame(aorm_sum(AORM_COL(employee, salary)), NULL, aorm_list(AORM_COL(employee, id)),
                        aorm_rows(aorm_preceding(aorm_int8(1)), aorm_current_row())),
        aorm_over_frame(aorm_avg(AORM_COL(employee, salary)), aorm_list(AORM_COL(employee, dept)), aorm_list(AORM_COL(employee, salary)),
                        aorm_range(aorm_preceding(aorm_float8(30)), aorm_following(aorm_float8(30)))),
        aorm_over(aorm_count_all(), aorm_list(AORM_COL(employee, dept)), NULL),
        aorm_over_frame(aorm_first_value(AORM_COL(employee, name)), NULL, aorm_list(AORM_COL(employee, salary), AORM_COL(employee, id)),
                        aorm_groups(aorm_unbounded_preceding(), aorm_current_row())));
    aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(employee, id), 0);
    aorm_result *r = run(&c, q);
    check_rows(&c, r,
               "SELECT name, row_number() OVER (PARTITION BY dept ORDER BY salary DESC, id), rank() OVER (ORDER BY "
               "salary DESC), dense_rank() OVER (ORDER BY salary DESC), lag(salary, 1, -1) OVER (ORDER BY id), "
               "lead(name) OVER (ORDER BY id), sum(salary) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT "
               "ROW), avg(salary) OVER (PARTITION BY dept ORDER BY salary RANGE BETWEEN 30 PRECEDING AND 30 "
               "FOLLOWING), count(*) OVER (PARTITION BY dept), first_value(name) OVER (ORDER BY salary, id GROUPS "
               "BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM sqlx_h_employees WHERE name LIKE '%P%%' ORDER BY id",
               6);
    aorm_result_free(r);
    aorm_stmt_free(q);
    free(like);
    ctx_close(&c);
}

Test(sql_hard, set_operations, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "setops", false);
    make_company(&c);
    char eng[128], like[128];
    snprintf(eng, sizeof(eng), "%seng", c.prefix);
    snprintf(like, sizeof(like), "%s%%", c.prefix);
    struct {
        aorm_stmt *(*fn)(aorm_stmt *, aorm_stmt *);
        const char *op;
        int rows;
    } ops[] = {{aorm_union, "UNION", 6},     {aorm_union_all, "UNION ALL", 10}, {aorm_intersect, "INTERSECT", 4},
               {aorm_intersect_all, "INTERSECT ALL", 4}, {aorm_except, "EXCEPT", 2}, {aorm_except_all, "EXCEPT ALL", 2}};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        aorm_stmt *all = aorm_select_columns(AORM_COL(employee, name));
        aorm_where(all, aorm_like(AORM_COL(employee, name), aorm_text(like)));
        aorm_stmt *in_eng = aorm_select_columns(AORM_COL(employee, name));
        aorm_where(in_eng, aorm_eq(AORM_COL(employee, dept), aorm_text(eng)));
        aorm_stmt *u = ops[i].fn(all, in_eng);
        aorm_order_by(u, aorm_name("name"), 0);
        aorm_result *r = run(&c, u);
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "(SELECT name FROM sqlx_h_employees WHERE name LIKE '%%P%%%%') %s (SELECT name FROM sqlx_h_employees "
                 "WHERE dept = '%%Peng') ORDER BY name",
                 ops[i].op);
        check_rows(&c, r, sql, ops[i].rows);
        aorm_result_free(r);
        aorm_stmt_free(u);
    }
    ctx_close(&c);
}

Test(sql_hard, subqueries_from_lateral_scalar, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "subq", false);
    /* per author: the number of books (subquery in FROM), the two dearest
     * (LATERAL), the overall average (scalar) */
    aorm_stmt *counts = aorm_select_columns(AORM_COL(book, author_id), aorm_label(aorm_count_all(), "n"));
    aorm_group_by(counts, AORM_COL(book, author_id));
    aorm_stmt *top = aorm_select_columns(AORM_COL(book, title), AORM_COL(book, price));
    aorm_where(top, aorm_eq(AORM_COL(book, author_id), AORM_COL(author, id)));
    aorm_order_by(top, AORM_COL(book, price), AORM_DESC);
    aorm_order_by(top, AORM_COL(book, id), 0);
    aorm_limit(top, 2);
    aorm_stmt *avg = aorm_select_columns(aorm_avg(AORM_COL(book, price)));
    aorm_from(avg, &book_model);
    aorm_where(avg, aorm_eq(AORM_COL(book, author_id), AORM_COL(author, id)));
    aorm_stmt *q = aorm_select_columns(AORM_COL(author, name), aorm_ref("c", "n"), aorm_ref("top", "title"),
                                       aorm_label(aorm_scalar(avg), "avg"));
    aorm_join_select(q, counts, "c", aorm_eq(aorm_ref("c", "author_id"), AORM_COL(author, id)), 0);
    aorm_join_select(q, top, "top", NULL, AORM_JOIN_LATERAL | AORM_JOIN_LEFT);
    aorm_where(q, aorm_between(AORM_COL(author, id), aorm_int8(5), aorm_int8(8)));
    aorm_order_by(q, AORM_COL(author, id), 0);
    aorm_order_by(q, aorm_ref("top", "price"), AORM_DESC);
    aorm_result *r = run(&c, q);
    check_rows(&c, r,
               "SELECT a.name, c.n, top.title, (SELECT avg(price) FROM books WHERE author_id = a.id) FROM authors a "
               "JOIN (SELECT author_id, count(*) AS n FROM books GROUP BY author_id) c ON c.author_id = a.id LEFT JOIN "
               "LATERAL (SELECT title, price FROM books WHERE author_id = a.id ORDER BY price DESC, id LIMIT 2) top ON "
               "TRUE WHERE a.id BETWEEN 5 AND 8 ORDER BY a.id, top.price DESC",
               8);
    aorm_result_free(r);
    aorm_stmt_free(q);

    /* FROM a subquery only, CROSS JOIN LATERAL */
    aorm_stmt *sub = aorm_select_columns(AORM_COL(author, id), aorm_label(aorm_mul(AORM_COL(author, born), aorm_int4(2)), "twice"));
    aorm_where(sub, aorm_le(AORM_COL(author, id), aorm_int8(3)));
    aorm_stmt *lat = aorm_select_columns(aorm_label(aorm_max(AORM_COL(book, year)), "last"));
    aorm_where(lat, aorm_eq(AORM_COL(book, author_id), aorm_ref("s", "id")));
    q = aorm_select_columns(aorm_ref("s", "id"), aorm_ref("s", "twice"), aorm_ref("l", "last"));
    aorm_from_select(q, sub, "s");
    aorm_join_select(q, lat, "l", NULL, AORM_JOIN_LATERAL);
    aorm_order_by(q, aorm_ref("s", "id"), 0);
    r = run(&c, q);
    check_rows(&c, r,
               "SELECT s.id, s.twice, l.last FROM (SELECT id, born * 2 AS twice FROM authors WHERE id <= 3) s CROSS "
               "JOIN LATERAL (SELECT max(year) AS last FROM books WHERE author_id = s.id) l ORDER BY s.id",
               3);
    aorm_result_free(r);
    aorm_stmt_free(q);
    ctx_close(&c);
}

/* ==========================================================================
 * Expressions: CASE, COALESCE, casts, functions, JSON and arrays
 * ========================================================================== */

Test(sql_hard, expressions, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "expr", false);
    make_company(&c);
    char *like = like_prefix(&c);
    aorm_stmt *q = aorm_select_columns(
        AORM_COL(employee, id),
        aorm_case(aorm_when(aorm_ge(AORM_COL(employee, salary), aorm_float8(200)), aorm_text("high")),
                  aorm_when(aorm_ge(AORM_COL(employee, salary), aorm_float8(120)), aorm_text("mid")), aorm_else(aorm_text("low"))),
        aorm_coalesce(aorm_json_key_text(AORM_COL(employee, doc), "role"), aorm_text("none")),
        aorm_nullif(AORM_COL(employee, salary), aorm_float8(120)),
        aorm_greatest(AORM_COL(employee, salary), aorm_float8(130)), aorm_least(AORM_COL(employee, salary), aorm_float8(130)),
        aorm_cast(AORM_COL(employee, salary), AORM_INT8), aorm_cast_name(aorm_cast(AORM_COL(employee, salary), AORM_INT4), "pg_catalog.int8"),
        aorm_concat(aorm_func("upper", aorm_func("split_part", AORM_COL(employee, name), aorm_text("-"), aorm_int4(4))), aorm_text("!")),
        aorm_json_get_text(aorm_json_key(AORM_COL(employee, doc), "tags"), aorm_int4(1)),
        aorm_cast(aorm_json_key(AORM_COL(employee, doc), "level"), AORM_TEXT),
        aorm_mod(aorm_cast(AORM_COL(employee, salary), AORM_INT8), aorm_int8(7)));
    aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(employee, id), 0);
    aorm_result *r = run(&c, q);
    check_rows(&c, r,
               "SELECT id, CASE WHEN salary >= 200 THEN 'high' WHEN salary >= 120 THEN 'mid' ELSE 'low' END, "
               "coalesce(doc ->> 'role', 'none'), nullif(salary, 120), greatest(salary, 130), least(salary, 130), "
               "salary::bigint, salary::int::int8, upper(split_part(name, '-', 4)) || '!', (doc -> 'tags') ->> 1, "
               "(doc -> 'level')::text, salary::bigint % 7 FROM sqlx_h_employees WHERE name LIKE '%P%%' ORDER BY id",
               6);
    aorm_result_free(r);
    aorm_stmt_free(q);

    /* JSON containment and keys, array containment, overlap, ANY / ALL over
     * array columns (not mapped: named with aorm_ref) and over a subquery */
    static const char *const xy[] = {"x", "y"};
    static const char *const path[] = {"tags", "0"};
    static const int64_t nums[] = {3, 5};
    struct {
        const aorm_expr *cond;
        const char *sql;
        int rows;
    } cases[] = {
        {aorm_contains(AORM_COL(employee, doc), aorm_jsonb("{\"role\": \"lead\"}")), "doc @> '{\"role\": \"lead\"}'", 1},
        {aorm_has_key(AORM_COL(employee, doc), aorm_text("level")), "doc ? 'level'", 1},
        {aorm_eq(aorm_json_path_text(AORM_COL(employee, doc), aorm_text_array(path, 2)), aorm_text("go")),
         "doc #>> '{tags,0}' = 'go'", 1},
        {aorm_is_not_null(aorm_json_path(AORM_COL(employee, doc), aorm_text_array(path, 2))), "doc #> '{tags,0}' IS NOT NULL", 1},
        {aorm_contains(aorm_ref("sqlx_h_employees", "tags"), aorm_text_array(xy, 2)), "tags @> '{x,y}'", 1},
        {aorm_contained_by(aorm_ref("sqlx_h_employees", "tags"), aorm_text_array(xy, 2)), "tags <@ '{x,y}'", 2},
        {aorm_overlaps(aorm_ref("sqlx_h_employees", "nums"), aorm_int8_array(nums, 2)), "nums && '{3,5}'::bigint[]", 2},
        {aorm_eq_any(aorm_text("y"), aorm_ref("sqlx_h_employees", "tags")), "'y' = ANY(tags)", 2},
        {aorm_op_all(AORM_OP_LT, aorm_int8(1), aorm_ref("sqlx_h_employees", "nums")), "1 < ALL(nums)", 2},
        {aorm_ne_all(AORM_COL(employee, salary), aorm_scalar(aorm_select_columns(aorm_cast(aorm_int4(120), AORM_FLOAT8)))),
         "salary <> ALL (SELECT 120::float8)", 4},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        q = aorm_select_columns(AORM_COL(employee, id));
        aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
        aorm_where(q, cases[i].cond);
        aorm_order_by(q, AORM_COL(employee, id), 0);
        r = run(&c, q);
        char sql[512];
        snprintf(sql, sizeof(sql), "SELECT id FROM sqlx_h_employees WHERE name LIKE '%%P%%%%' AND %s ORDER BY id",
                 cases[i].sql);
        check_rows(&c, r, sql, cases[i].rows);
        aorm_result_free(r);
        aorm_stmt_free(q);
    }
    free(like);
    ctx_close(&c);
}

/* ==========================================================================
 * Writes: INSERT ... SELECT, UPDATE ... FROM, DELETE ... USING, ON CONFLICT
 * ON CONSTRAINT, DISTINCT ON, locks
 * ========================================================================== */

Test(sql_hard, insert_select_update_from_delete_using, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "dml", false);
    company k = make_company(&c);
    char *like = like_prefix(&c);

    /* INSERT ... SELECT: everybody of eng into the archive */
    aorm_stmt *sel = aorm_select_columns(AORM_COL(employee, id), aorm_concat(AORM_COL(employee, name), aorm_text("/arch")));
    aorm_where(sel, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    aorm_stmt *ins = aorm_insert(&archive_model);
    aorm_insert_select(ins, aorm_columns(AORM_COL(archive, id), AORM_COL(archive, name)), sel);
    aorm_result *r = run(&c, ins);
    cr_assert_eq(aorm_result_affected(r), 6);
    aorm_result_free(r);
    aorm_stmt_free(ins);
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM sqlx_h_archive WHERE name LIKE '%s%%/arch'", c.prefix);
    cr_assert_eq(t_pg_long(c.pg, sql), 6);

    /* UPDATE ... FROM: a raise for whoever reports to a manager earning
     * more than 250 (only a and b) */
    aorm_stmt *u = aorm_update(&employee_model);
    aorm_set(u, AORM_COL(employee, salary), aorm_add(AORM_COL(employee, salary), aorm_float8(1)));
    aorm_from_alias(u, &employee_model, "m");
    aorm_where(u, aorm_and(aorm_eq(AORM_COL(employee, manager_id), AORM_ACOL("m", employee, id)),
                           aorm_gt(AORM_ACOL("m", employee, salary), aorm_float8(250)),
                           aorm_like(AORM_COL(employee, name), aorm_text(like))));
    aorm_returning(u, AORM_COL(employee, id));
    aorm_returning(u, aorm_label(AORM_ACOL("m", employee, name), "boss"));
    r = run(&c, u);
    cr_assert_eq(aorm_result_nrows(r), 2);
    aorm_result_free(r);
    aorm_stmt_free(u);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM sqlx_h_employees WHERE id IN (%" PRId64 ", %" PRId64 ") AND salary IN (201, 151)", k.a, k.b);
    cr_assert_eq(t_pg_long(c.pg, sql), 2);

    /* DELETE ... USING: the archive rows of people in ops */
    char ops[128];
    snprintf(ops, sizeof(ops), "%sops", c.prefix);
    aorm_stmt *d = aorm_delete(&archive_model);
    aorm_from(d, &employee_model);
    aorm_where(d, aorm_and(aorm_eq(AORM_COL(archive, id), AORM_COL(employee, id)),
                           aorm_eq(AORM_COL(employee, dept), aorm_text(ops))));
    aorm_returning(d, AORM_COL(archive, id));
    r = run(&c, d);
    cr_assert_eq(aorm_result_nrows(r), 1);
    int64_t gone;
    cr_assert_eq(aorm_result_int64(r, 0, 0, &gone), 0);
    cr_assert_eq(gone, k.b);
    aorm_result_free(r);
    aorm_stmt_free(d);
    free(like);
    ctx_close(&c);
}

Test(sql_hard, on_conflict_on_constraint_and_distinct_on, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "conflict", false);
    company k = make_company(&c);
    char name[128], dept[128];
    snprintf(name, sizeof(name), "%sa", c.prefix);
    snprintf(dept, sizeof(dept), "%snew", c.prefix);
    aorm_stmt *i = aorm_insert(&employee_model);
    aorm_set(i, AORM_COL(employee, name), aorm_text(name));
    aorm_set(i, AORM_COL(employee, dept), aorm_text(dept));
    aorm_set(i, AORM_COL(employee, salary), aorm_float8(1));
    aorm_on_conflict_constraint_do_update(i, "sqlx_h_employees_name_uq");
    aorm_set(i, AORM_COL(employee, dept), aorm_excluded(AORM_COL(employee, dept)));
    aorm_returning(i, AORM_COL(employee, id));
    aorm_result *r = run(&c, i);
    int64_t id;
    cr_assert_eq(aorm_result_int64(r, 0, 0, &id), 0);
    cr_assert_eq(id, k.a, "the existing row was updated");
    aorm_result_free(r);
    aorm_stmt_free(i);
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM sqlx_h_employees WHERE id = %" PRId64 " AND dept = '%s'", k.a, dept);
    cr_assert_eq(t_pg_long(c.pg, sql), 1);
    i = aorm_insert(&employee_model);
    aorm_set(i, AORM_COL(employee, name), aorm_text(name));
    aorm_set(i, AORM_COL(employee, dept), aorm_text(dept));
    aorm_set(i, AORM_COL(employee, salary), aorm_float8(1));
    aorm_on_conflict_constraint_do_nothing(i, "sqlx_h_employees_name_uq");
    r = run(&c, i);
    cr_assert_eq(aorm_result_affected(r), 0);
    aorm_result_free(r);
    aorm_stmt_free(i);
    /* a constraint that does not exist: the server says so */
    i = aorm_insert(&employee_model);
    aorm_set(i, AORM_COL(employee, name), aorm_text(name));
    aorm_on_conflict_constraint_do_nothing(i, "no_such_constraint");
    aorm_error *err = run_error(&c, i);
    cr_assert_str_eq(err->sqlstate, "42704");
    aorm_error_free(err);
    aorm_stmt_free(i);

    /* DISTINCT ON: the best paid of each department */
    char *like = like_prefix(&c);
    aorm_stmt *q = aorm_select_columns(AORM_COL(employee, dept), AORM_COL(employee, name), AORM_COL(employee, salary));
    aorm_distinct_on(q, AORM_COL(employee, dept));
    aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(employee, dept), 0);
    aorm_order_by(q, AORM_COL(employee, salary), AORM_DESC);
    aorm_order_by(q, AORM_COL(employee, id), 0);
    r = run(&c, q);
    check_rows(&c, r,
               "SELECT DISTINCT ON (dept) dept, name, salary FROM sqlx_h_employees WHERE name LIKE '%P%%' ORDER BY dept, "
               "salary DESC, id",
               4);
    aorm_result_free(r);
    aorm_stmt_free(q);
    free(like);
    ctx_close(&c);
}

/* A row locked by another transaction: SKIP LOCKED passes it over,
 * NOWAIT fails at once with 55P03 instead of waiting. */
Test(sql_hard, for_update_skip_locked_nowait, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "locks", false);
    company k = make_company(&c);
    char sql[256];
    free(t_pg_exec(c.pg, "BEGIN"));
    snprintf(sql, sizeof(sql), "SELECT id FROM sqlx_h_employees WHERE id = %" PRId64 " FOR UPDATE", k.a);
    free(t_pg_exec(c.pg, sql));
    const int64_t ids[] = {k.a, k.b};
    aorm_stmt *q = aorm_select_alias(&employee_model, "e");
    aorm_where(q, aorm_in_int8(AORM_ACOL("e", employee, id), ids, 2));
    aorm_for_update(q, AORM_LOCK_SKIP_LOCKED);
    cr_assert_not(aorm_stmt_readonly(q));
    aorm_result *r = run(&c, q);
    cr_assert_eq(aorm_result_nrows(r), 1);
    employee e = {0};
    cr_assert_eq(aorm_stmt_load_alias(q, r, 0, &employee_model, "e", &e, NULL), 0);
    cr_assert_eq(e.id, k.b);
    aorm_model_free_fields(&employee_model, &e);
    aorm_result_free(r);
    aorm_stmt_free(q);
    q = aorm_select(&employee_model);
    aorm_where(q, aorm_eq(AORM_COL(employee, id), aorm_int8(k.a)));
    aorm_for_update(q, AORM_LOCK_NOWAIT);
    aorm_error *err = run_error(&c, q);
    cr_assert_str_eq(err->sqlstate, "55P03");
    aorm_error_free(err);
    aorm_stmt_free(q);
    free(t_pg_exec(c.pg, "ROLLBACK"));
    ctx_close(&c);
}

/* ==========================================================================
 * Injection: every place a caller's string can reach
 * ========================================================================== */

Test(sql_hard, injection_fails_safely, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "inject", false);
    make_company(&c);
    char *like = like_prefix(&c);
    long before = t_pg_long(c.pg, "SELECT count(*) FROM sqlx_h_employees");

    /* function and type names: refused before anything is sent */
    static const char *const fnames[] = {"lower(name)); DELETE FROM sqlx_h_employees; --",
                                         "pg_sleep(5)--", "lower\"(\"x", "a.b.c", "x y"};
    for (size_t i = 0; i < sizeof(fnames) / sizeof(fnames[0]); i++) {
        aorm_stmt *q = aorm_select_columns(aorm_func(fnames[i], AORM_COL(employee, name)));
        reply r = {0};
        cr_assert_eq(aorm_stmt_execute(c.t.e, q, NULL, on_result, &r), AORM_EMISUSE);
        cr_assert_eq(r.done, 0, "no callback for a refused statement");
        aorm_stmt_free(q);
        q = aorm_select_columns(aorm_cast_name(AORM_COL(employee, name), fnames[i]));
        cr_assert_eq(aorm_stmt_execute(c.t.e, q, NULL, on_result, &r), AORM_EMISUSE);
        aorm_stmt_free(q);
    }
    /* a function name that is an identifier but no function: the server's error */
    aorm_stmt *q = aorm_select_columns(aorm_func("no_such_function_x", AORM_COL(employee, name)));
    aorm_error *err = run_error(&c, q);
    cr_assert_str_eq(err->sqlstate, "42883");
    aorm_error_free(err);
    aorm_stmt_free(q);

    /* aliases, CTE and column names with quotes and SQL in them: quoted, so
     * they are just names */
    const char *alias = "m\" ON TRUE; DELETE FROM sqlx_h_employees; --";
    const char *cte = "c\"; DROP TABLE sqlx_h_employees; --";
    aorm_stmt *inner = aorm_select_columns(aorm_label(AORM_COL(employee, name), "n\"; --"));
    aorm_where(inner, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    q = aorm_select_columns(AORM_COL(employee, name), aorm_ref(cte, "n\"; --"));
    aorm_with(q, cte, inner);
    aorm_join_cte(q, cte, NULL, aorm_eq(aorm_ref(cte, "n\"; --"), AORM_COL(employee, name)), 0);
    aorm_join_alias(q, &employee_model, alias, aorm_eq(AORM_ACOL(alias, employee, id), AORM_COL(employee, manager_id)),
                    AORM_JOIN_LEFT);
    aorm_where(q, aorm_is_null(AORM_ACOL(alias, employee, id)));
    aorm_result *r = run(&c, q);
    cr_assert_eq(aorm_result_nrows(r), 1, "only the boss has no manager");
    aorm_result_free(r);
    aorm_stmt_free(q);

    /* JSON keys and path elements are bound values */
    static const char *const path[] = {"role'; DELETE FROM sqlx_h_employees; --", "x"};
    q = aorm_select_columns(aorm_json_key_text(AORM_COL(employee, doc), "role' OR '1'='1"),
                            aorm_json_path_text(AORM_COL(employee, doc), aorm_text_array(path, 2)));
    aorm_where(q, aorm_like(AORM_COL(employee, name), aorm_text(like)));
    r = run(&c, q);
    cr_assert_eq(aorm_result_nrows(r), 6);
    for (int i = 0; i < 6; i++) cr_assert(aorm_result_is_null(r, i, 0) && aorm_result_is_null(r, i, 1));
    aorm_result_free(r);
    aorm_stmt_free(q);

    /* a constraint name with SQL in it: quoted; the server finds no such constraint */
    q = aorm_insert(&employee_model);
    aorm_set(q, AORM_COL(employee, name), aorm_text("x"));
    aorm_on_conflict_constraint_do_nothing(q, "x\" DO NOTHING; DELETE FROM sqlx_h_employees; --");
    err = run_error(&c, q);
    cr_assert_str_eq(err->sqlstate, "42704");
    aorm_error_free(err);
    aorm_stmt_free(q);

    cr_assert_eq(t_pg_long(c.pg, "SELECT count(*) FROM sqlx_h_employees"), before, "rows lost");
    free(like);
    ctx_close(&c);
}

/* ==========================================================================
 * aorm_insert_object and server defaults
 * ========================================================================== */

Test(sql_hard, insert_object_writes_values_of_default_columns, .timeout = TIMEOUT) {
    ctx c;
    ctx_open(&c, "dflt", false);
    char name[128];
    snprintf(name, sizeof(name), "%sz", c.prefix);
    /* zero and NULL are values: written, not replaced by 7 / 'n' */
    dflt d = {.name = name, .qty = 0, .note = NULL};
    aorm_stmt *q = aorm_insert(&dflt_model);
    aorm_insert_object(q, &d);
    aorm_returning_all(q);
    aorm_result *r = run(&c, q);
    dflt back = {0};
    cr_assert_eq(aorm_stmt_load(q, r, 0, &dflt_model, &back, NULL), 0);
    cr_assert_eq(back.qty, 0);
    cr_assert_null(back.note);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM sqlx_h_dflt WHERE id = %" PRId64 " AND qty = 0 AND note IS NULL", back.id);
    cr_assert_eq(t_pg_long(c.pg, sql), 1);
    aorm_model_free_fields(&dflt_model, &back);
    aorm_result_free(r);
    aorm_stmt_free(q);

    /* the same for several rows (unnest) */
    dflt rows[2] = {{.name = name}, {.name = name, .qty = 3, .note = "set"}};
    const void *objs[2] = {&rows[0], &rows[1]};
    q = aorm_insert(&dflt_model);
    aorm_insert_objects(q, objs, 2);
    aorm_returning(q, AORM_COL(dflt, qty));
    aorm_returning(q, AORM_COL(dflt, note));
    r = run(&c, q);
    int32_t qty;
    cr_assert_eq(aorm_result_int32(r, 0, 0, &qty), 0);
    cr_assert_eq(qty, 0);
    cr_assert(aorm_result_is_null(r, 0, 1));
    aorm_result_free(r);
    aorm_stmt_free(q);

    /* left to the server on request: the defaults come back */
    q = aorm_insert(&dflt_model);
    aorm_insert_use_default(q, AORM_COL(dflt, qty));
    aorm_insert_use_default(q, AORM_COL(dflt, note));
    aorm_insert_object(q, &d);
    aorm_returning_all(q);
    r = run(&c, q);
    memset(&back, 0, sizeof(back));
    cr_assert_eq(aorm_stmt_load(q, r, 0, &dflt_model, &back, NULL), 0);
    cr_assert_eq(back.qty, 7);
    cr_assert_str_eq(back.note, "n");
    aorm_model_free_fields(&dflt_model, &back);
    aorm_result_free(r);
    aorm_stmt_free(q);
    ctx_close(&c);
}
