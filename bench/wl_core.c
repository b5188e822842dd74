/* wl_core.c -- the peer's (SQLAlchemy asyncio) Core bulk loads through aorm's
 * engine and SQL expression language, no session.
 *
 *   core_bulk_insert  one aorm_insert(&bulk_book_model) of 100,000 structs
 *                     (aorm_insert_objects), which compiles to one
 *                     INSERT ... SELECT * FROM unnest($1, $2, $3, $4): one
 *                     array parameter per column (the peer: executemany of
 *                     insert(BulkBook.__table__) through asyncpg)
 *   copy_bulk_insert  aorm_engine_copy of the same 100,000 rows in binary
 *                     COPY (the peer: asyncpg's copy_records_to_table);
 *                     the same work as engine_copy, under the peer's name
 *   report_cte_window the bookstore's report in Core (reports.h): two CTEs (per-author
 *                     totals; every book ranked within its author by a
 *                     window function) joined to authors, the top 3 books
 *                     of 10 consecutive authors (30 rows); 2,000 reports
 *                     one after another, each one built, compiled, run and
 *                     its rows read
 *   raw_report_cte_window  its ceiling: the same SQL text, prepared once,
 *                     run through blocking libpq with binary parameters and
 *                     results, rows read the same way
 *
 * Rows: author_id 1 + i % 10000, title "b<i>", year 2000, price 1.5. The
 * timed part includes building them (the peer builds its list of rows in
 * its timed part too) and ends with the statement's callback. Not timed:
 * warming the pool, emptying bulk_books first (the peer times its DELETE
 * of the previous rows too) and the count(*) check afterwards. `queries`
 * is the engine's statement count over the timed part.
 *
 * The engine scaffolding is eng.h's. Must not: share state between
 * workloads, or time anything but the measured work. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"
#include "models.h"
#include "reports.h"

#define BULK_N 100000
#define BULK_COUNT_SQL "SELECT count(*) FROM bulk_books"

/* ---- core_bulk_insert ------------------------------------------------------ */

typedef struct core_run {
    eng *g;
    bulk_book *rows;
    const void **ptrs;
    char *titles; /* 16 bytes per row */
} core_run;

static void core_inserted(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    core_run *c = user;
    eng *g = c->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "INSERT", err);
        return;
    }
    g->t_end = bench_now();
    int64_t n = aorm_result_affected(res);
    if (n != BULK_N) {
        bench_fail(g->out, "core_bulk_insert: inserted %lld rows, expected %d", (long long)n, BULK_N);
        eng_check_failed(g);
        return;
    }
    eng_phase_done(g);
}

/* The rows as structs of bulk_book_model (id 0: the server assigns it). */
static void core_build_rows(core_run *c) {
    for (int i = 0; i < BULK_N; i++) {
        char *t = c->titles + (size_t)i * 16;
        snprintf(t, 16, "b%d", i);
        c->rows[i] = (bulk_book){.author_id = 1 + i % 10000, .title = t, .year = 2000, .price = 1.5};
        c->ptrs[i] = &c->rows[i];
    }
}

static int run_core_bulk_insert(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    core_run c = {.g = &g};
    c.rows = malloc(BULK_N * sizeof(*c.rows));
    c.ptrs = malloc(BULK_N * sizeof(*c.ptrs));
    c.titles = malloc((size_t)BULK_N * 16);
    if (rc == 0 && (!c.rows || !c.ptrs || !c.titles)) rc = bench_fail(out, "out of memory");
    if (rc == 0) rc = eng_truncate_bulk(&g);
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "core_bulk_insert";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        core_build_rows(&c);
        aorm_stmt *q = aorm_insert(&bulk_book_model);
        aorm_insert_objects(q, c.ptrs, BULK_N); /* errors are sticky: execute reports them */
        rc = aorm_stmt_execute(g.e, q, NULL, core_inserted, &c);
        if (rc != 0) {
            fprintf(stderr, "aorm-bench: core_bulk_insert: %s\n", q ? aorm_stmt_errmsg(q) : "out of memory");
            eng_code(&g, "aorm_stmt_execute", rc);
        } else {
            if (ctx->verbose) {
                const char *sql = aorm_stmt_sql(q);
                fprintf(stderr, "aorm-bench: core_bulk_insert: %s\n", sql ? sql : "(not compiled)");
            }
            aorm_stmt_free(q); /* the engine copied what it needs */
            q = NULL;
            rc = eng_wait(&g);
        }
        aorm_stmt_free(q);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = BULK_N;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
    }
    if (rc == 0) rc = eng_check_count(&g, BULK_COUNT_SQL, BULK_N);
    eng_close(&g);
    free(c.rows);
    free(c.ptrs);
    free(c.titles);
    return rc;
}

/* ---- copy_bulk_insert ------------------------------------------------------ */

/* The peer's copy_bulk_insert is a binary COPY of the same rows: the
 * engine's COPY, shared with engine_copy (eng.c). */
static int run_copy_bulk_insert(bench_ctx *ctx, bench_out *out) {
    return eng_run_bulk_copy(ctx, out, "copy_bulk_insert");
}

/* ---- report_cte_window / raw_report_cte_window -------------------------------- */

#define REPORT_N 2000    /* reports per run */
#define REPORT_SPAN 10   /* consecutive authors per report */
#define REPORT_TOP 3     /* books per author */
#define REPORT_ROWS (REPORT_SPAN * REPORT_TOP)
#define REPORT_AUTHORS 10000
#define REPORT_SEED 17u  /* both sides draw the same author ranges */

/* The text Core compiles the report to (checked before the timed part),
 * which the raw side prepares as it is. */
#define REPORT_SQL                                                                                                  \
    "WITH \"totals\" AS (SELECT \"books\".\"author_id\", sum(\"books\".\"price\") AS \"total\", count(*) AS "          \
    "\"books\" FROM \"books\" WHERE \"books\".\"author_id\" BETWEEN $1 AND $2 GROUP BY \"books\".\"author_id\"), "       \
    "\"ranked\" AS (SELECT \"books\".\"author_id\", \"books\".\"title\", \"books\".\"price\", rank() OVER (PARTITION " \
    "BY \"books\".\"author_id\" ORDER BY \"books\".\"price\" DESC, \"books\".\"id\") AS \"pos\" FROM \"books\" WHERE "     \
    "\"books\".\"author_id\" BETWEEN $3 AND $4) SELECT \"authors\".\"name\", \"ranked\".\"title\", "                    \
    "\"ranked\".\"price\", \"ranked\".\"pos\", \"totals\".\"total\", \"totals\".\"books\" FROM \"authors\" JOIN "       \
    "\"ranked\" ON \"ranked\".\"author_id\" = \"authors\".\"id\" JOIN \"totals\" ON \"totals\".\"author_id\" = "          \
    "\"authors\".\"id\" WHERE \"ranked\".\"pos\" <= $5 ORDER BY \"authors\".\"id\", \"ranked\".\"pos\""

/* What both sides read of each row, summed so that the reads cannot be
 * optimized away and the two sides can be compared. */
typedef struct report_sum {
    double money;   /* prices and totals */
    int64_t counts; /* positions and book counts */
    size_t text;    /* bytes of names and titles */
} report_sum;

typedef struct report_run {
    eng *g;
    bench_rng *rng;
    int done;
    report_sum sum;
} report_run;

static int report_send(report_run *c);

static void report_rows(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    report_run *c = user;
    eng *g = c->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "report", err);
        return;
    }
    int n = aorm_result_nrows(res);
    if (n != REPORT_ROWS) {
        bench_fail(g->out, "report_cte_window: %d rows, expected %d", n, REPORT_ROWS);
        eng_check_failed(g);
        return;
    }
    for (int r = 0; r < n; r++) {
        const char *name, *title;
        size_t nl, tl;
        double price, total;
        int64_t pos, books;
        if (aorm_result_text(res, r, 0, &name, &nl) || aorm_result_text(res, r, 1, &title, &tl) ||
            aorm_result_float8(res, r, 2, &price) || aorm_result_int64(res, r, 3, &pos) ||
            aorm_result_float8(res, r, 4, &total) || aorm_result_int64(res, r, 5, &books)) {
            bench_fail(g->out, "report_cte_window: row %d does not decode", r);
            eng_check_failed(g);
            return;
        }
        c->sum.money += price + total;
        c->sum.counts += pos + books;
        c->sum.text += nl + tl;
    }
    if (++c->done == REPORT_N) {
        g->t_end = bench_now();
        eng_phase_done(g);
        return;
    }
    int rc = report_send(c);
    if (rc) eng_code(g, "aorm_stmt_execute", rc);
}

static int report_send(report_run *c) {
    int64_t lo = bench_rng_range(c->rng, 1, REPORT_AUTHORS - REPORT_SPAN + 1);
    aorm_stmt *q = bookstore_top_books_report(lo, lo + REPORT_SPAN - 1, REPORT_TOP);
    int rc = aorm_stmt_execute(c->g->e, q, NULL, report_rows, c);
    if (rc) fprintf(stderr, "aorm-bench: report_cte_window: %s\n", q ? aorm_stmt_errmsg(q) : "out of memory");
    aorm_stmt_free(q);
    return rc;
}

/* Core compiles the report to REPORT_SQL: the two sides run the same text. */
static int report_check_text(bench_out *out, const char *name) {
    aorm_stmt *q = bookstore_top_books_report(1, REPORT_SPAN, REPORT_TOP);
    int rc = aorm_stmt_compile(q);
    if (rc) rc = bench_fail(out, "%s: compile: %s", name, aorm_stmt_errmsg(q));
    else if (strcmp(aorm_stmt_sql(q), REPORT_SQL) != 0) rc = bench_fail(out, "%s: Core's text differs from REPORT_SQL", name);
    if (rc && aorm_stmt_sql(q)) fprintf(stderr, "aorm-bench: %s: Core compiles to: %s\n", name, aorm_stmt_sql(q));
    aorm_stmt_free(q);
    return rc;
}

static int run_report_cte_window(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    report_run c = {.g = &g, .rng = &ctx->rng};
    bench_rng_seed(&ctx->rng, REPORT_SEED);
    if (rc == 0) rc = report_check_text(out, "report_cte_window");
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "report_cte_window";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        rc = report_send(&c);
        if (rc) eng_code(&g, "aorm_stmt_execute", rc);
        else rc = eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = REPORT_N;
        out->queries = st1.statements - st0.statements;
        bench_extra(out, "rows", "%d", REPORT_N * REPORT_ROWS);
        bench_extra(out, "checksum", "%.2f", c.sum.money);
        eng_report_stats(&g, &st0, &st1);
    }
    eng_close(&g);
    return rc;
}

static uint64_t be64(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | u[i];
    return v;
}

static double be_float8(const char *p) {
    uint64_t u = be64(p);
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static int run_raw_report_cte_window(bench_ctx *ctx, bench_out *out) {
    PGconn *pg = PQconnectdb(ctx->dsn);
    if (PQstatus(pg) != CONNECTION_OK) {
        int rc = bench_fail(out, "connect: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return rc;
    }
    bench_rng_seed(&ctx->rng, REPORT_SEED);
    int rc = report_check_text(out, "raw_report_cte_window");
    const Oid types[5] = {20, 20, 20, 20, 20};
    PGresult *pr = rc ? NULL : PQprepare(pg, "report", REPORT_SQL, 5, types);
    if (!rc && PQresultStatus(pr) != PGRES_COMMAND_OK) rc = bench_fail(out, "prepare: %s", PQresultErrorMessage(pr));
    PQclear(pr);
    report_sum sum = {0};
    unsigned char params[5][8];
    const char *values[5];
    const int lengths[5] = {8, 8, 8, 8, 8}, formats[5] = {1, 1, 1, 1, 1};
    for (int i = 0; i < 5; i++) values[i] = (const char *)params[i];
    double t0 = bench_now();
    for (int i = 0; rc == 0 && i < REPORT_N; i++) {
        int64_t lo = bench_rng_range(&ctx->rng, 1, REPORT_AUTHORS - REPORT_SPAN + 1);
        const int64_t v[5] = {lo, lo + REPORT_SPAN - 1, lo, lo + REPORT_SPAN - 1, REPORT_TOP};
        for (int k = 0; k < 5; k++)
            for (int b = 0; b < 8; b++) params[k][b] = (unsigned char)((uint64_t)v[k] >> (56 - 8 * b));
        PGresult *r = PQexecPrepared(pg, "report", 5, values, lengths, formats, 1);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) rc = bench_fail(out, "report: %s", PQresultErrorMessage(r));
        else if (PQntuples(r) != REPORT_ROWS || PQnfields(r) != 6)
            rc = bench_fail(out, "report: %d rows of %d columns", PQntuples(r), PQnfields(r));
        for (int row = 0; rc == 0 && row < REPORT_ROWS; row++) {
            for (int k = 0; k < 6; k++)
                if (PQgetisnull(r, row, k) || ((k >= 2) && PQgetlength(r, row, k) != 8))
                    rc = bench_fail(out, "report: row %d column %d: bad value", row, k);
            if (rc) break;
            sum.money += be_float8(PQgetvalue(r, row, 2)) + be_float8(PQgetvalue(r, row, 4));
            sum.counts += (int64_t)be64(PQgetvalue(r, row, 3)) + (int64_t)be64(PQgetvalue(r, row, 5));
            sum.text += (size_t)PQgetlength(r, row, 0) + (size_t)PQgetlength(r, row, 1);
        }
        PQclear(r);
    }
    out->seconds = bench_now() - t0;
    out->ops = REPORT_N;
    out->queries = REPORT_N;
    bench_extra(out, "rows", "%d", REPORT_N * REPORT_ROWS);
    bench_extra(out, "checksum", "%.2f", sum.money);
    PQfinish(pg);
    return rc;
}

const bench_workload wl_core_list[] = {
    {"core_bulk_insert", "core", run_core_bulk_insert},
    {"copy_bulk_insert", "core", run_copy_bulk_insert},
    {"report_cte_window", "core", run_report_cte_window},
    {"raw_report_cte_window", "core", run_raw_report_cte_window},
    {NULL, NULL, NULL}
};
