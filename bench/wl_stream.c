/* wl_stream.c -- a large result in bounded memory.
 *
 *   stream_rows   1,000,000 rows of bulk_books-like data (table
 *                 stream_books, filled once, untimed) streamed through
 *                 aorm_session_stream with release (batches of 5,000
 *                 objects), in rounds interleaved with two plain libpq
 *                 readers of the same SELECT that decode every row into a
 *                 struct: single-row mode (the ceiling the ratio is taken
 *                 against: `vs_single_row`) and a server-side cursor
 *                 fetching 5,000 rows at a time (`cursor_rows_per_s`); the
 *                 best round of each counts. `rss_peak_mib` is the process's
 *                 peak resident size (getrusage) after all rounds; aorm's
 *                 own sampled peak during its rounds is `rss_stream_mib`.
 *
 * Must not: share state between workloads, or time the set-up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"

#define STREAM_N 1000000
#define STREAM_BATCH 5000
#define STREAM_ROUNDS 3
#define STREAM_SQL "SELECT id, author_id, title, year, price FROM stream_books"

typedef struct stream_book {
    int64_t id;
    int64_t author_id;
    char *title;
    int32_t year;
    double price;
} stream_book;

static const aorm_column stream_book_columns[] = {
    AORM_COLUMN(stream_book, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(stream_book, author_id, AORM_INT8, 0),
    AORM_COLUMN(stream_book, title, AORM_TEXT, 0),
    AORM_COLUMN(stream_book, year, AORM_INT4, 0),
    AORM_COLUMN(stream_book, price, AORM_FLOAT8, 0),
};
static const aorm_model stream_book_model = {AORM_MODEL_OF(stream_book, "stream_books"),
                                             AORM_COLUMNS(stream_book_columns)};

/* ---- memory ------------------------------------------------------------------ */

static double rss_now_mib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static double rss_peak_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

/* ---- plain libpq --------------------------------------------------------------- */

static uint32_t be32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}
static uint64_t be64(const char *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* Decodes row r of res into b (the title into buf, reused). Returns 0 or -1. */
static int raw_row(const PGresult *res, int r, stream_book *b, char *buf, size_t cap) {
    if (PQgetlength(res, r, 0) != 8 || PQgetlength(res, r, 1) != 8 || PQgetlength(res, r, 3) != 4 ||
        PQgetlength(res, r, 4) != 8)
        return -1;
    b->id = (int64_t)be64(PQgetvalue(res, r, 0));
    b->author_id = (int64_t)be64(PQgetvalue(res, r, 1));
    size_t n = (size_t)PQgetlength(res, r, 2);
    if (n >= cap) n = cap - 1;
    memcpy(buf, PQgetvalue(res, r, 2), n);
    buf[n] = '\0';
    b->title = buf;
    b->year = (int32_t)be32(PQgetvalue(res, r, 3));
    uint64_t u = be64(PQgetvalue(res, r, 4));
    memcpy(&b->price, &u, 8);
    return 0;
}

/* Single-row mode: every row its own PGresult. Returns rows or -1. */
static long raw_single_row(PGconn *c, bench_out *out, double *year_sum) {
    if (!PQsendQueryParams(c, STREAM_SQL, 0, NULL, NULL, NULL, NULL, 1) || !PQsetSingleRowMode(c)) {
        bench_fail(out, "single-row mode: %s", PQerrorMessage(c));
        return -1;
    }
    long rows = 0;
    char title[64];
    PGresult *res;
    int bad = 0;
    while ((res = PQgetResult(c))) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_SINGLE_TUPLE) {
            stream_book b;
            if (raw_row(res, 0, &b, title, sizeof(title)) < 0) bad = 1;
            *year_sum += b.year;
            rows++;
        } else if (st != PGRES_TUPLES_OK) {
            bad = 1;
        }
        PQclear(res);
    }
    if (bad) bench_fail(out, "single-row mode: %s", PQerrorMessage(c));
    return bad ? -1 : rows;
}

static int raw_exec_ok(PGconn *c, const char *sql, bench_out *out) {
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) bench_fail(out, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    return ok ? 0 : -1;
}

/* A server-side cursor, STREAM_BATCH rows per FETCH. Returns rows or -1. */
static long raw_cursor(PGconn *c, bench_out *out, double *year_sum) {
    if (raw_exec_ok(c, "BEGIN", out) < 0 || raw_exec_ok(c, "DECLARE raw_c NO SCROLL CURSOR FOR " STREAM_SQL, out) < 0)
        return -1;
    long rows = 0;
    char title[64];
    char fetch[64];
    snprintf(fetch, sizeof(fetch), "FETCH FORWARD %d FROM raw_c", STREAM_BATCH);
    for (;;) {
        PGresult *res = PQexecParams(c, fetch, 0, NULL, NULL, NULL, NULL, 1);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            bench_fail(out, "FETCH: %s", PQerrorMessage(c));
            PQclear(res);
            return -1;
        }
        int n = PQntuples(res);
        for (int r = 0; r < n; r++) {
            stream_book b;
            if (raw_row(res, r, &b, title, sizeof(title)) < 0) {
                PQclear(res);
                bench_fail(out, "FETCH: a malformed row");
                return -1;
            }
            *year_sum += b.year;
        }
        rows += n;
        PQclear(res);
        if (n < STREAM_BATCH) break;
    }
    if (raw_exec_ok(c, "COMMIT", out) < 0) return -1;
    return rows;
}

/* ---- aorm --------------------------------------------------------------------------- */

typedef struct aorm_stream_run {
    eng *g;
    long rows;
    double year_sum;
    double rss_max;
    int batches;
} aorm_stream_run;

static int on_batch(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    aorm_stream_run *r = user;
    eng *g = r->g;
    (void)s;
    if (!objs) {
        if (err) eng_error(g, "aorm_session_stream", err);
        else {
            g->t_end = bench_now();
            eng_phase_done(g);
        }
        return 0;
    }
    if (eng_halted(g)) return AORM_STREAM_STOP;
    for (size_t i = 0; i < objs->len; i++) {
        const stream_book *b = objs->items[i];
        r->year_sum += b->year;
    }
    r->rows += (long)objs->len;
    if ((++r->batches & 15) == 0) {
        double rss = rss_now_mib();
        if (rss > r->rss_max) r->rss_max = rss;
    }
    return AORM_STREAM_NEXT;
}

static void on_end_tx(aorm_session *s, const aorm_error *err, void *user) {
    eng *g = user;
    (void)s;
    if (err) eng_error(g, "rollback", err);
    else eng_phase_done(g);
}

/* One aorm round: seconds, or -1. */
static double aorm_round(eng *g, aorm_stream_run *r) {
    aorm_session *s = aorm_session_new(g->e, NULL);
    if (!s) return bench_fail(g->out, "aorm_session_new failed");
    aorm_stream_options o;
    aorm_stream_options_init(&o);
    o.batch = STREAM_BATCH;
    o.release = true;
    g->phase = "stream";
    g->phase_done = 0;
    double t0 = bench_now();
    int rc = aorm_session_stream(s, aorm_select(&stream_book_model), &o, on_batch, r);
    rc = rc != 0 ? eng_code(g, "aorm_session_stream", rc) : eng_wait(g);
    double secs = g->t_end - t0;
    if (rc == 0) { /* the cursor's transaction (read only): end it, untimed */
        g->phase = "rollback";
        g->phase_done = 0;
        rc = aorm_session_rollback(s, on_end_tx, g);
        rc = rc != 0 ? eng_code(g, "aorm_session_rollback", rc) : eng_wait(g);
    }
    aorm_session_free(s);
    return rc == 0 ? secs : -1;
}

/* ---- the workload ------------------------------------------------------------------- */

static int ensure_table(PGconn *c, bench_out *out) {
    PGresult *r = PQexec(c, "SELECT count(*) FROM stream_books");
    long have = PQresultStatus(r) == PGRES_TUPLES_OK ? atol(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    if (have == STREAM_N) return 0;
    fprintf(stderr, "aorm-bench: stream_rows: filling stream_books (%d rows, untimed)\n", STREAM_N);
    return raw_exec_ok(c,
                       "SET client_min_messages = warning;"
                       "DROP TABLE IF EXISTS stream_books;"
                       "CREATE TABLE stream_books (id bigint PRIMARY KEY, author_id bigint NOT NULL, title text "
                       "NOT NULL, year int NOT NULL, price float8 NOT NULL);"
                       "INSERT INTO stream_books SELECT g, 1 + (g - 1) / 10, 'book ' || g, 1950 + g % 70, "
                       "(g % 5000) / 100.0 FROM generate_series(1, 1000000) g",
                       out) < 0
               ? -1
               : raw_exec_ok(c, "VACUUM ANALYZE stream_books", out); /* not in the implicit transaction above */
}

static int run_stream_rows(bench_ctx *ctx, bench_out *out) {
    PGconn *c = PQconnectdb(ctx->dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        bench_fail(out, "connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    int rc = ensure_table(c, out);
    eng g;
    if (rc == 0) rc = eng_open(&g, ctx, out);
    else memset(&g, 0, sizeof(g));
    double best_single = 0, best_cursor = 0, best_aorm = 0, rss_stream = 0;
    for (int round = 0; rc == 0 && round < STREAM_ROUNDS; round++) {
        double ys1 = 0, ys2 = 0;
        double t0 = bench_now();
        long n1 = raw_single_row(c, out, &ys1);
        double t1 = bench_now();
        long n2 = n1 == STREAM_N ? raw_cursor(c, out, &ys2) : -1;
        double t2 = bench_now();
        if (n1 != STREAM_N || n2 != STREAM_N) {
            rc = bench_fail(out, "libpq read %ld / %ld rows", n1, n2);
            break;
        }
        aorm_stream_run r = {.g = &g};
        double ta = aorm_round(&g, &r);
        if (ta < 0) {
            rc = -1;
            break;
        }
        if (r.rows != STREAM_N || r.year_sum != ys1) {
            rc = bench_fail(out, "aorm streamed %ld rows (year sum %.0f, expected %.0f)", r.rows, r.year_sum, ys1);
            break;
        }
        if (round == 0 || t1 - t0 < best_single) best_single = t1 - t0;
        if (round == 0 || t2 - t1 < best_cursor) best_cursor = t2 - t1;
        if (round == 0 || ta < best_aorm) best_aorm = ta;
        if (r.rss_max > rss_stream) rss_stream = r.rss_max;
    }
    if (rc == 0) {
        out->seconds = best_aorm;
        out->ops = STREAM_N;
        out->queries = 2 + STREAM_N / STREAM_BATCH + 1; /* DECLARE, the FETCHes, CLOSE */
        bench_extra(out, "vs_single_row", "%.2f", best_single / best_aorm);
        bench_extra(out, "cursor_rows_per_s", "%.0f", STREAM_N / best_cursor);
        bench_extra(out, "rss_peak_mib", "%.1f", rss_peak_mib());
        bench_extra(out, "rss_stream_mib", "%.1f", rss_stream);
        fprintf(stderr, "aorm-bench: stream_rows: single-row mode %.0f rows/s, cursor %.0f rows/s, aorm %.0f rows/s\n",
                STREAM_N / best_single, STREAM_N / best_cursor, STREAM_N / best_aorm);
    }
    if (g.e || g.evl) eng_close(&g);
    PQfinish(c);
    return rc;
}

const bench_workload wl_stream_list[] = {
    {"stream_rows", "stream", run_stream_rows},
    {NULL, NULL, NULL}
};
