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

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"
#include "models.h"

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

const bench_workload wl_core_list[] = {
    {"core_bulk_insert", "core", run_core_bulk_insert},
    {"copy_bulk_insert", "core", run_copy_bulk_insert},
    {NULL, NULL, NULL}
};
