/* eng.c -- the fixture of the engine-level workloads: one aorm engine on a
 * private libev loop, a warmed pool, a watchdog per phase and errors
 * reported to stderr and the error= line (see eng.h for how a workload
 * drives it).
 *
 * Kept apart from the workloads so that every engine-level figure comes
 * from the same set-up: the same pool, the same warm-up, the same way of
 * waiting for a phase. Must not: time anything, or know any workload. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"

/* Longest a phase (warm-up, truncate, the measured run) may take. */
#define PHASE_LIMIT 120.0

/* ---- one engine on its own loop ----------------------------------------- */

static void eng_stop_loop(eng *g) { ev_break(g->evl, EVBREAK_ALL); }

void eng_phase_done(eng *g) {
    g->phase_done = 1;
    eng_stop_loop(g);
}

void eng_error(eng *g, const char *what, const aorm_error *err) {
    fprintf(stderr, "aorm-bench: %s: %s: %s (%s, SQLSTATE %s)\n", g->phase, what, err->message,
            aorm_errname(err->code), err->sqlstate[0] ? err->sqlstate : "none");
    if (err->detail[0]) fprintf(stderr, "aorm-bench:   DETAIL: %s\n", err->detail);
    bench_fail(g->out, "%s: %s: %s [%s %s]", g->phase, what, err->message, aorm_errname(err->code),
               err->sqlstate[0] ? err->sqlstate : "-");
    g->failed = 1;
    eng_stop_loop(g);
}

int eng_code(eng *g, const char *what, int code) {
    fprintf(stderr, "aorm-bench: %s: %s: %s (%s)\n", g->phase, what, aorm_strerror(code),
            aorm_errname(code));
    bench_fail(g->out, "%s: %s: %s", g->phase, what, aorm_errname(code));
    g->failed = 1;
    eng_stop_loop(g);
    return -1;
}

void eng_check_failed(eng *g) {
    g->failed = 1;
    eng_stop_loop(g);
}

static void eng_log(aorm_log_level level, const char *message, void *user) {
    (void)user;
    static const char *const names[] = {"error", "warn", "info", "sql", "debug"};
    const char *name = (unsigned)level < sizeof(names) / sizeof(names[0]) ? names[level] : "?";
    fprintf(stderr, "aorm-bench: aorm %s: %s\n", name, message);
}

static void eng_watchdog(struct ev_loop *evl, ev_timer *w, int revents) {
    (void)evl;
    (void)revents;
    eng *g = w->data;
    fprintf(stderr, "aorm-bench: %s: not finished after %.0f s\n", g->phase, PHASE_LIMIT);
    bench_fail(g->out, "%s: timed out after %.0f s", g->phase, PHASE_LIMIT);
    g->failed = 1;
    eng_stop_loop(g);
}

int eng_wait(eng *g) {
    /* Work queued from outside any callback: make sure the before-poll
     * stage runs before the loop blocks. */
    aorm_loop_wake(g->loop);
    ev_now_update(g->evl);
    ev_timer_set(&g->watchdog, PHASE_LIMIT, 0.0);
    ev_timer_start(g->evl, &g->watchdog);
    ev_run(g->evl, 0);
    ev_timer_stop(g->evl, &g->watchdog);
    if (g->failed) return -1;
    if (!g->phase_done)
        return bench_fail(g->out, "%s: the loop ran out of work before the phase finished", g->phase);
    g->phase_done = 0;
    return 0;
}

void eng_close(eng *g) {
    g->closing = 1;
    if (g->evl) ev_timer_stop(g->evl, &g->watchdog);
    aorm_engine_free(g->e);
    aorm_loop_free(g->loop);
    if (g->evl) ev_loop_destroy(g->evl);
    g->e = NULL;
    g->loop = NULL;
    g->evl = NULL;
}

/* ---- warm-up: one statement on every pooled connection ------------------ */

/* Holding pool_size connections at once is the only way to be sure each
 * of them is opened (autocommit statements may all share one pipeline);
 * the SELECT 1 makes sure each has finished connecting and answers. */
typedef struct warm {
    eng *g;
    aorm_conn **conns;
    int n;
    int acquired;
    int answered;
} warm;

static void warm_answered(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    (void)res;
    warm *w = user;
    if (eng_halted(w->g)) return;
    if (err) {
        eng_error(w->g, "SELECT 1", err);
        return;
    }
    if (++w->answered < w->n) return;
    for (int i = 0; i < w->acquired; i++) aorm_conn_release(w->conns[i]);
    w->acquired = 0;
    eng_phase_done(w->g);
}

static void warm_acquired(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    (void)e;
    warm *w = user;
    if (eng_halted(w->g)) {
        /* A connection handed over after another acquire failed: give it
         * straight back (during aorm_engine_free, c is NULL). */
        if (c && !w->g->closing) aorm_conn_release(c);
        return;
    }
    if (err) {
        eng_error(w->g, "acquire", err);
        return;
    }
    w->conns[w->acquired++] = c;
    int rc = aorm_conn_execute(c, "SELECT 1", NULL, NULL, warm_answered, w);
    if (rc != 0) eng_code(w->g, "aorm_conn_execute", rc);
}

static int eng_warm(eng *g) {
    warm w = {.g = g, .n = g->ctx->pool_size};
    w.conns = calloc((size_t)w.n, sizeof(*w.conns));
    if (!w.conns) return bench_fail(g->out, "out of memory");
    g->phase = "warm-up";
    int rc = 0;
    for (int i = 0; rc == 0 && i < w.n; i++) {
        rc = aorm_engine_acquire(g->e, warm_acquired, &w);
        if (rc != 0) eng_code(g, "aorm_engine_acquire", rc);
    }
    if (rc == 0) rc = eng_wait(g);
    if (rc != 0) {
        /* Held connections and pending acquires still point at w, which
         * lives on this stack frame: end them now, while w is alive. */
        g->closing = 1;
        aorm_engine_free(g->e);
        g->e = NULL;
    }
    free(w.conns);
    return rc;
}

int eng_open(eng *g, bench_ctx *ctx, bench_out *out) {
    memset(g, 0, sizeof(*g));
    g->ctx = ctx;
    g->out = out;
    g->phase = "set-up";
    ev_timer_init(&g->watchdog, eng_watchdog, PHASE_LIMIT, 0.0);
    g->watchdog.data = g;
    g->evl = ev_loop_new(EVFLAG_AUTO);
    if (!g->evl) return bench_fail(out, "ev_loop_new failed");
    g->loop = aorm_loop_new_ev(g->evl);
    if (!g->loop) return bench_fail(out, "aorm_loop_new_ev failed");

    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = ctx->dsn;
    o.pool_size = ctx->pool_size;
    o.max_overflow = 0;
    o.log = eng_log;
    o.log_user = g;
    o.log_level = ctx->verbose >= 2 ? AORM_LOG_DEBUG : ctx->verbose ? AORM_LOG_INFO : AORM_LOG_WARN;
    /* Scale-out paths (bench/scale): AORM_BENCH_PGBOUNCER=1 goes through the
     * sandbox's PgBouncer (--pgbouncer) in transaction mode; AORM_BENCH_ROUTE
     * puts a router (hosts.h) in front: "primary" over the primary alone
     * (the routing layer's cost), "replica" over the primary and the
     * sandbox's standby (--replica; reads there), a pool per server. */
    const char *route = getenv("AORM_BENCH_ROUTE");
    const char *pgb = getenv("AORM_BENCH_PGBOUNCER");
    if (pgb && strcmp(pgb, "1") == 0) {
        o.conninfo = getenv("AORM_TEST_PGBOUNCER_DSN");
        if (!o.conninfo) return bench_fail(out, "AORM_BENCH_PGBOUNCER: AORM_TEST_PGBOUNCER_DSN is not set");
        o.pgbouncer = true;
    }
    if (route && *route) {
        aorm_hosts_options ho;
        aorm_hosts_options_init(&ho);
        const char *servers[2] = {o.conninfo, getenv("AORM_TEST_REPLICA_DSN")};
        ho.servers = servers;
        ho.nservers = strcmp(route, "replica") == 0 ? 2 : 1;
        if (ho.nservers == 2 && !servers[1]) return bench_fail(out, "AORM_BENCH_ROUTE=replica: AORM_TEST_REPLICA_DSN is not set");
        ho.engine = o;
        g->e = aorm_engine_new_hosts(g->loop, &ho);
        if (!g->e) return bench_fail(out, "aorm_engine_new_hosts failed (reason logged above)");
        /* every server's pool warmed, then the router (its first checks) */
        aorm_engine *router = g->e;
        for (int i = 0; i < aorm_hosts_count(router); i++) {
            g->e = aorm_hosts_engine(router, i);
            if (eng_warm(g) != 0) {
                g->e = NULL; /* freed by eng_warm; the router is left (the run fails) */
                return -1;
            }
        }
        g->e = router;
        return eng_warm(g);
    }
    g->e = aorm_engine_new(g->loop, &o);
    if (!g->e) return bench_fail(out, "aorm_engine_new failed (reason logged above)");
    return eng_warm(g);
}

void eng_report_stats(const eng *g, const aorm_engine_stats *a, const aorm_engine_stats *b) {
    if (!g->ctx->verbose) return;
    fprintf(stderr,
            "aorm-bench: engine: statements=%llu round_trips=%llu syncs=%llu prepares=%llu "
            "prepared_hits=%llu resent=%llu connects=%llu\n",
            (unsigned long long)(b->statements - a->statements),
            (unsigned long long)(b->round_trips - a->round_trips),
            (unsigned long long)(b->syncs - a->syncs), (unsigned long long)(b->prepares - a->prepares),
            (unsigned long long)(b->prepared_hits - a->prepared_hits),
            (unsigned long long)(b->resent - a->resent), (unsigned long long)(b->connects - a->connects));
}

/* ---- one statement, waited for (set-up and checks) ---------------------- */

static void eng_answered(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    eng_answer *a = user;
    eng *g = a->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "statement", err);
        return;
    }
    if (aorm_result_nrows(res) > 0 && aorm_result_ncols(res) > 0 && aorm_result_is_null(res, 0, 0) == 0) {
        int rc = aorm_result_col_type(res, 0) == AORM_T_FLOAT8 ? aorm_result_float8(res, 0, 0, &a->d)
                                                              : aorm_result_int64(res, 0, 0, &a->i);
        if (rc != 0) {
            eng_code(g, "decoding the answer", rc);
            return;
        }
        a->has_value = 1;
    }
    eng_phase_done(g);
}

int eng_run(eng *g, const char *sql, eng_answer *a) {
    memset(a, 0, sizeof(*a));
    a->g = g;
    g->phase = sql;
    int rc = aorm_engine_execute(g->e, sql, NULL, NULL, eng_answered, a);
    return rc != 0 ? eng_code(g, "aorm_engine_execute", rc) : eng_wait(g);
}

int eng_check_count(eng *g, const char *sql, int64_t want) {
    eng_answer a;
    if (eng_run(g, sql, &a) != 0) return -1;
    if (!a.has_value || a.i != want)
        return bench_fail(g->out, "%s: %lld, expected %lld", sql, (long long)a.i, (long long)want);
    return 0;
}

int eng_truncate_bulk(eng *g) {
    eng_answer a;
    return eng_run(g, "TRUNCATE bulk_books", &a);
}

/* ---- the bulk_books COPY (engine_copy and copy_bulk_insert) ------------------ */

#define BULK_COPY_ROWS 100000
#define BULK_COPY_CHUNK 65536
#define BULK_COPY_SQL "COPY bulk_books (author_id, title, year, price) FROM STDIN (FORMAT binary)"

typedef struct copy_run {
    eng *g;
    const char *name;
    int next; /* next row to append */
} copy_run;

/* Appends about BULK_COPY_CHUNK bytes of rows (the peer's
 * copy_bulk_insert: author_id 1 + i % 10000, title "b<i>", year 2000,
 * price 1.5). The size is counted here rather than read from
 * aorm_copy_buffered(). */
static int copy_fill(aorm_copy *cp, void *user) {
    copy_run *c = user;
    size_t bytes = 0;
    char title[16];
    while (c->next < BULK_COPY_ROWS && bytes < BULK_COPY_CHUNK) {
        int i = c->next++;
        int tlen = snprintf(title, sizeof(title), "b%d", i);
        int rc = aorm_copy_row(cp, 4);
        if (rc == 0) rc = aorm_copy_int8(cp, 1 + i % 10000);
        if (rc == 0) rc = aorm_copy_text(cp, title, (size_t)tlen);
        if (rc == 0) rc = aorm_copy_int4(cp, 2000);
        if (rc == 0) rc = aorm_copy_float8(cp, 1.5);
        if (rc != 0) {
            /* aborting makes the COPY fail; bench_fail keeps this first reason */
            fprintf(stderr, "aorm-bench: %s: row %d: %s\n", c->name, i, aorm_strerror(rc));
            bench_fail(c->g->out, "%s: row %d: %s", c->name, i, aorm_errname(rc));
            return -1;
        }
        /* field count, then length word + value per field */
        bytes += 2 + (4 + 8) + (4 + (size_t)tlen) + (4 + 4) + (4 + 8);
    }
    return c->next < BULK_COPY_ROWS ? 1 : 0;
}

static void copy_done(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    copy_run *c = user;
    eng *g = c->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "COPY", err);
        return;
    }
    g->t_end = bench_now();
    int64_t n = aorm_result_affected(res);
    if (n != BULK_COPY_ROWS) {
        bench_fail(g->out, "%s: loaded %lld rows, expected %d", c->name, (long long)n, BULK_COPY_ROWS);
        eng_check_failed(g);
        return;
    }
    eng_phase_done(g);
}

int eng_run_bulk_copy(bench_ctx *ctx, bench_out *out, const char *name) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    copy_run c = {.g = &g, .name = name};
    if (rc == 0) rc = eng_truncate_bulk(&g);
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = name;
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        rc = aorm_engine_copy(g.e, BULK_COPY_SQL, copy_fill, &c, copy_done, &c);
        rc = rc != 0 ? eng_code(&g, "aorm_engine_copy", rc) : eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = BULK_COPY_ROWS;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
    }
    if (rc == 0) rc = eng_check_count(&g, "SELECT count(*) FROM bulk_books", BULK_COPY_ROWS);
    eng_close(&g);
    return rc;
}
