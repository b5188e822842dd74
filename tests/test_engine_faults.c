/* test_engine_faults.c -- the engine when things go wrong, against the
 * sandbox PostgreSQL: backends terminated under load, the server restarted
 * with statements in flight and while idle, statement deadlines (pooled and
 * inside a transaction), pool exhaustion and overflow, freeing the engine
 * with work pending (from outside and from inside a callback), an
 * unreachable server and its reconnect backoff, a COMMIT sent on a dead
 * connection, and read-only statements re-sent after a pipeline abort.
 *
 * Every callback is counted: each test asserts exactly-once delivery,
 * after running the loop a little longer to catch a late duplicate.
 *
 * Every engine connects with its own application_name, so that the checks
 * made through pg_stat_activity only see that engine's backends.
 *
 * This binary must run with --jobs=1: its tests restart the server and
 * terminate backends, which would break any test running beside them. */
#include <ev.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "faultproxy.h"
#include "support.h"

/* ---- fixture ----------------------------------------------------------------- */

typedef struct fx {
    struct ev_loop *evl;
    aorm_loop *l;
    aorm_engine *e;
    char app[64];
    char conninfo[1024];
} fx;


/* A loop, and options whose conninfo is the sandbox's with this test's
 * application_name (and `extra`, e.g. a wrong port, appended last so it
 * wins). */
static void fx_init(fx *f, aorm_engine_options *o, const char *tag, const char *extra) {
    memset(f, 0, sizeof(*f));
    snprintf(f->app, sizeof(f->app), "aorm_flt_%s", tag);
    snprintf(f->conninfo, sizeof(f->conninfo), "%s application_name=%s %s", t_dsn(), f->app, extra ? extra : "");
    t_loop_open(&f->evl, &f->l);
    aorm_engine_options_init(o);
    o->conninfo = f->conninfo;
}

static void fx_engine(fx *f, const aorm_engine_options *o) {
    f->e = aorm_engine_new(f->l, o);
    cr_assert_not_null(f->e, "aorm_engine_new failed");
}

static void fx_close(fx *f) {
    aorm_engine_free(f->e);
    f->e = NULL;
    t_loop_close(&f->evl, &f->l);
}

static int wait_flag(struct ev_loop *evl, volatile int *flag, double seconds) {
    return t_run_until_prompt(evl, t_flag_set, (void *)flag, seconds);
}

static void run_for(fx *f, double seconds) { t_settle(f->evl, seconds); /* times from now, as t_run_until_prompt() */ }

/* ---- recording outcomes ---------------------------------------------------- */

/* Outcomes go to t_rec (the test kit's recorder: the first outcome is
 * kept, the count tells the rest); a test sets t_rec_mark around its
 * aorm_engine_free() call, so that mark tells the callbacks run inside it. */

/* A lost connection is always AORM_ECONNLOST. Its SQLSTATE is a
 * synthesized class-08 code, or, for the statement the server was running
 * when it was told to terminate, the server's own FATAL code (57P01
 * admin_shutdown) that arrives just before the end of the stream. */
static int lost_outcome(const t_rec *r) {
    return r->code == AORM_ECONNLOST &&
           (strncmp(r->sqlstate, "08", 2) == 0 || strcmp(r->sqlstate, "57P01") == 0);
}

/* Runs one statement and waits for it. *r must outlive the engine's
 * callbacks (the caller checks later that it was called only once). */
static void run_sql(fx *f, const char *sql, t_rec *r, double seconds) {
    memset(r, 0, sizeof(*r));
    cr_assert_eq(aorm_engine_execute(f->e, sql, NULL, NULL, t_rec_on_result, r), 0, "%s", sql);
    cr_assert(wait_flag(f->evl, &r->calls, seconds), "no answer to %s", sql);
}

/* ---- pg_stat_activity checks (the loop keeps running between them) ---------- */

enum { CMP_EQ, CMP_LE, CMP_GE };

/* Polls a count query on the side connection until it compares as asked
 * with `want`, running the engine's loop for 50 ms between polls. Returns
 * the last value seen. */
static long poll_pg(fx *f, PGconn *pg, const char *sql, int cmp, long want, double seconds) {
    double until = t_mono() + seconds;
    long v;
    for (;;) {
        v = t_pg_long(pg, sql);
        if ((cmp == CMP_EQ && v == want) || (cmp == CMP_LE && v <= want) || (cmp == CMP_GE && v >= want)) return v;
        if (t_mono() >= until) return v;
        run_for(f, 0.05);
    }
}

/* The backend pid of this engine's running `SELECT pg_sleep...`, found by
 * polling pg_stat_activity (the statement has to reach the server first).
 * Returns 0 when none showed up in time. */
static long find_sleeper(fx *f, PGconn *pg, double seconds) {
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%' "
             "AND pid <> pg_backend_pid() AND application_name = '%s' AND state = 'active' LIMIT 1",
             f->app);
    double until = t_mono() + seconds;
    for (;;) {
        char *v = t_pg_exec(pg, sql);
        if (v) {
            long pid = strtol(v, NULL, 10);
            free(v);
            return pid;
        }
        if (t_mono() >= until) return 0;
        run_for(f, 0.05);
    }
}

/* Count of this engine's client backends, optionally narrowed by `where`. */
static void activity_sql(char *buf, size_t cap, const fx *f, const char *where) {
    snprintf(buf, cap,
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
             "AND backend_type = 'client backend' AND pid <> pg_backend_pid() %s",
             f->app, where ? where : "");
}

/* ============================================================================
 * 1. A busy connection's backend is terminated
 * ========================================================================== */

Test(engine_faults, terminate_busy_connection, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "term", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);

    /* pg_sleep first, five statements queued behind it on the one connection */
    enum { N = 6 };
    t_rec r[N];
    memset(r, 0, sizeof(r));
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(5)", NULL, NULL, t_rec_on_result, &r[0]), 0);
    for (int i = 1; i < N; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, i);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4 + 100", &p, NULL, t_rec_on_result, &r[i]), 0);
        aorm_params_free(&p);
    }

    PGconn *pg = t_pg();
    long pid = find_sleeper(&f, pg, 10);
    cr_assert(pid > 0, "the engine's pg_sleep never showed up in pg_stat_activity");
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].calls, 0, "statement %d answered before the terminate", i);
    t_pg_terminate(pg, pid);

    cr_assert(t_rec_wait_all(f.evl, r, N, 10), "not every pending statement was called back");
    run_for(&f, 0.2); /* a duplicate would show up now */
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert(lost_outcome(&r[i]), "statement %d: expected a lost connection, got %s [%s] %s", i,
                  aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
        cr_assert(r[i].at - t0 < 4.0, "statement %d failed only after %.2f s", i, r[i].at - t0);
    }
    /* What the engine gives today: the running pg_sleep receives the
     * server's own FATAL as its result (AORM_ESERVER, 57P01 "terminating
     * connection due to administrator command"); the statements queued
     * behind it, which the server never read, fail with AORM_ECONNLOST /
     * 08006 when the EOF is seen. Only the latter is pinned down here: the
     * running one may also be reported as AORM_ECONNLOST. */
    cr_log_info("terminated pg_sleep: %s [%s] %s", aorm_errname(r[0].code), r[0].sqlstate, r[0].msg);
    for (int i = 1; i < N; i++) {
        cr_assert_eq(r[i].code, AORM_ECONNLOST, "statement %d: %s", i, aorm_errname(r[i].code));
        cr_assert_str_eq(r[i].sqlstate, "08006");
    }
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1, "connections_lost = %llu", (unsigned long long)s.connections_lost);

    /* the engine heals on its own: the next statements just work */
    t_rec ok[3];
    for (int i = 0; i < 3; i++) {
        run_sql(&f, "SELECT 41 + 1", &ok[i], 10);
        cr_assert_eq(ok[i].code, 0, "statement after the terminate failed: %s [%s] %s", aorm_errname(ok[i].code),
                     ok[i].sqlstate, ok[i].msg);
        cr_assert(ok[i].has_int && ok[i].ival == 42);
    }
    run_for(&f, 0.1);
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].calls, 1);
    for (int i = 0; i < 3; i++) cr_assert_eq(ok[i].calls, 1);
    s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1);
    cr_assert_eq(s.connects, 2, "connects = %llu", (unsigned long long)s.connects);
    PQfinish(pg);
    fx_close(&f);
}

/* The same on an idle connection: its backend is gone (and has said so on
 * the socket) before the next statement is queued. The next statement must
 * not be sent to the dead connection. */
Test(engine_faults, terminate_idle_connection, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "term_idle", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec pidr;
    run_sql(&f, "SELECT pg_backend_pid()", &pidr, 10);
    cr_assert(pidr.code == 0 && pidr.has_int && pidr.ival > 0);

    PGconn *pg = t_pg();
    t_pg_terminate(pg, (long)pidr.ival);
    PQfinish(pg);

    t_rec r;
    run_sql(&f, "SELECT 5", &r, 10);
    run_for(&f, 0.1);
    cr_assert_eq(pidr.calls, 1);
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(r.code, 0,
                 "the first statement after the idle connection's backend was terminated failed: %s [%s] %s",
                 aorm_errname(r.code), r.sqlstate, r.msg);
    cr_assert(r.has_int && r.ival == 5);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1);
    cr_assert_eq(s.connects, 2);
    fx_close(&f);
}

/* ============================================================================
 * 2. The server restarts
 * ========================================================================== */

static void warm_and_wait(fx *f, int n) {
    cr_assert_eq(aorm_engine_warm(f->e), 0);
    t_wait_idle(f->evl, f->e, n, 10);
}

Test(engine_faults, restart_with_statements_in_flight, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "restart_busy", NULL);
    o.pool_size = 4;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm_and_wait(&f, 4);

    /* two held connections and the shared ones, each running pg_sleep(3) */
    t_rec h[2];
    memset(h, 0, sizeof(h));
    for (int i = 0; i < 2; i++) cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h[i]), 0);
    t_rec *hs[] = {&h[0], &h[1], NULL};
    cr_assert(t_run_until_prompt(f.evl, t_recs_called, hs, 10));
    for (int i = 0; i < 2; i++) cr_assert(h[i].conn && h[i].code == 0);

    enum { NH = 2, NA = 3, N = NH + NA };
    t_rec r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < NH; i++)
        cr_assert_eq(aorm_conn_execute(h[i].conn, "SELECT pg_sleep(3)", NULL, NULL, t_rec_on_result, &r[i]), 0);
    for (int i = NH; i < N; i++)
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(3)", NULL, NULL, t_rec_on_result, &r[i]), 0);

    /* wait until the server is running them: the held ones and at least one
     * shared connection */
    PGconn *pg = t_pg();
    char sql[512];
    activity_sql(sql, sizeof(sql), &f, "AND state = 'active' AND query = 'SELECT pg_sleep(3)'");
    long active = poll_pg(&f, pg, sql, CMP_GE, 3, 10);
    cr_assert(active >= 3, "only %ld pg_sleep statements reached the server", active);
    PQfinish(pg);
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].calls, 0);

    double t0 = t_mono();
    t_sandbox("restart-pg"); /* blocking: the loop is not running meanwhile */

    cr_assert(t_rec_wait_all(f.evl, r, N, 10), "not every in-flight statement was called back");
    run_for(&f, 0.2);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert(lost_outcome(&r[i]), "statement %d: expected a lost connection, got %s [%s] %s", i,
                  aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
        cr_assert(r[i].at - t0 < 3.0, "statement %d failed only after %.2f s", i, r[i].at - t0);
        cr_log_info("%s statement %d after the restart: %s [%s] %s", i < NH ? "held" : "pooled", i,
                    aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
    }

    /* held connections are now broken; their handles still need a release */
    for (int i = 0; i < NH; i++) {
        cr_assert(aorm_conn_broken(h[i].conn), "held connection %d not marked broken", i);
        cr_assert_eq(aorm_conn_tx_status(h[i].conn), AORM_TX_UNKNOWN);
        t_rec never_called = {0};
        cr_assert_eq(aorm_conn_execute(h[i].conn, "SELECT 1", NULL, NULL, t_rec_on_result, &never_called), AORM_ECONNLOST);
        aorm_conn_release(h[i].conn);
        run_for(&f, 0.01);
        cr_assert_eq(never_called.calls, 0);
    }

    /* the first statements after the restart succeed, on the first try */
    enum { M = 5 };
    t_rec after[M];
    memset(after, 0, sizeof(after));
    for (int i = 0; i < M; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, i);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4 * 3", &p, NULL, t_rec_on_result, &after[i]), 0);
        aorm_params_free(&p);
    }
    cr_assert(t_rec_wait_all(f.evl, after, M, 10), "statements after the restart never completed");
    run_for(&f, 0.1);
    for (int i = 0; i < M; i++) {
        cr_assert_eq(after[i].calls, 1);
        cr_assert_eq(after[i].code, 0, "statement %d after the restart failed: %s [%s] %s", i,
                     aorm_errname(after[i].code), after[i].sqlstate, after[i].msg);
        cr_assert(after[i].has_int && after[i].ival == 3 * i);
    }
    /* and a transaction works too */
    t_rec h2 = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    cr_assert(wait_flag(f.evl, &h2.calls, 10));
    cr_assert_eq(h2.code, 0);
    t_rec b = {0}, q = {0}, c = {0};
    aorm_conn_begin(h2.conn, NULL, t_rec_on_result, &b);
    aorm_conn_execute(h2.conn, "SELECT 5", NULL, NULL, t_rec_on_result, &q);
    aorm_conn_commit(h2.conn, t_rec_on_result, &c);
    cr_assert(wait_flag(f.evl, &c.calls, 10));
    cr_assert(b.calls == 1 && q.calls == 1 && c.calls == 1);
    cr_assert(b.code == 0 && q.code == 0 && c.code == 0, "transaction after restart: %s %s %s",
              aorm_errname(b.code), aorm_errname(q.code), aorm_errname(c.code));
    aorm_conn_release(h2.conn);
    run_for(&f, 0.05);
    cr_assert(h[0].calls == 1 && h[1].calls == 1 && h2.calls == 1);
    for (int i = 0; i < M; i++) cr_assert_eq(after[i].calls, 1);
    fx_close(&f);
}

/* The pool is open and idle when the server restarts; `idle_for` is how
 * long the connections sat idle before the restart began. */
static void restart_while_idle(const char *tag, double idle_for) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, tag, NULL);
    o.pool_size = 3;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm_and_wait(&f, 3);
    if (idle_for > 0) run_for(&f, idle_for);

    double t0 = t_mono();
    t_sandbox("restart-pg");
    double took = t_mono() - t0;

    enum { M = 3 };
    t_rec r[M];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < M; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, i + 1);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4", &p, NULL, t_rec_on_result, &r[i]), 0);
        aorm_params_free(&p);
    }
    cr_assert(t_rec_wait_all(f.evl, r, M, 10), "statements after the restart never completed");
    run_for(&f, 0.1);
    for (int i = 0; i < M; i++) {
        cr_assert_eq(r[i].calls, 1);
        cr_assert_eq(r[i].code, 0,
                     "statement %d, the first after a restart (which took %.2f s, the pool idle %.2f s "
                     "before it), failed: %s [%s] %s",
                     i, took, idle_for, aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
        cr_assert(r[i].has_int && r[i].ival == i + 1);
    }
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 3, "connections_lost = %llu", (unsigned long long)s.connections_lost);
    fx_close(&f);
}

/* The restart itself takes a fraction of a second, so the connections are
 * reused right after having been seen healthy. */
Test(engine_faults, restart_while_idle, .timeout = 90) { restart_while_idle("restart_idle", 0); }

/* Same, with the pool idle for more than a second first. */
Test(engine_faults, restart_after_idle_second, .timeout = 90) { restart_while_idle("restart_idle_long", 1.5); }

/* ============================================================================
 * 3. Deadlines
 * ========================================================================== */

Test(engine_faults, deadline_cancels_on_server, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "deadline", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10); /* connected: the deadline measures the statement only */
    cr_assert_eq(warm.code, 0);

    t_rec slow = {0}, next = {0};
    aorm_exec_options xo = {.flags = 0, .deadline = 0.1};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(10)", NULL, &xo, t_rec_on_result, &slow), 0);
    cr_assert(wait_flag(f.evl, &slow.calls, 5));
    double took = slow.at - t0;
    cr_assert_eq(slow.code, AORM_ETIMEOUT, "got %s [%s] %s", aorm_errname(slow.code), slow.sqlstate, slow.msg);
    cr_assert_str_eq(slow.sqlstate, "57014");
    cr_assert(took >= 0.09 && took < 1.0, "deadline of 0.1 s fired after %.3f s", took);

    /* queued at once on the same (only) connection */
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 7", NULL, NULL, t_rec_on_result, &next), 0);

    /* the server stops running it: cancelled, not just forgotten */
    PGconn *pg = t_pg();
    char sql[512];
    activity_sql(sql, sizeof(sql), &f, "AND state = 'active' AND query = 'SELECT pg_sleep(10)'");
    long still = poll_pg(&f, pg, sql, CMP_EQ, 0, 2.0);
    cr_assert_eq(still, 0, "pg_sleep(10) still running on the server %.2f s after its deadline", t_mono() - slow.at);
    PQfinish(pg);

    cr_assert(wait_flag(f.evl, &next.calls, 5), "the statement after a timeout never completed");
    run_for(&f, 0.2);
    cr_assert_eq(warm.calls, 1);
    cr_assert_eq(slow.calls, 1);
    cr_assert_eq(next.calls, 1);
    cr_assert_eq(next.code, 0, "statement after a timeout: %s [%s] %s", aorm_errname(next.code), next.sqlstate,
                 next.msg);
    cr_assert(next.has_int && next.ival == 7);
    cr_assert(next.at - slow.at < 2.0, "the next statement waited %.2f s", next.at - slow.at);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.cancels, 1, "cancels = %llu", (unsigned long long)s.cancels);
    /* drained and reused, not discarded */
    cr_assert_eq(s.connects, 1, "connects = %llu", (unsigned long long)s.connects);
    cr_assert_eq(s.discarded, 0);
    cr_assert_eq(s.connections_lost, 0);
    fx_close(&f);
}

Test(engine_faults, default_statement_timeout, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "stmt_timeout", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.statement_timeout = 0.2;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    cr_assert_eq(warm.code, 0, "a fast statement under the default deadline failed: %s", aorm_errname(warm.code));

    double t0 = t_mono();
    t_rec slow;
    run_sql(&f, "SELECT pg_sleep(10)", &slow, 5); /* no options: the engine default applies */
    cr_assert_eq(slow.code, AORM_ETIMEOUT, "got %s [%s] %s", aorm_errname(slow.code), slow.sqlstate, slow.msg);
    cr_assert(slow.at - t0 >= 0.19 && slow.at - t0 < 1.0, "default deadline of 0.2 s fired after %.3f s",
              slow.at - t0);

    /* a negative deadline means none, overriding the default */
    t_rec none = {0};
    aorm_exec_options xo = {.flags = 0, .deadline = -1};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(0.5)", NULL, &xo, t_rec_on_result, &none), 0);
    cr_assert(wait_flag(f.evl, &none.calls, 10));
    cr_assert_eq(none.code, 0, "no-deadline statement failed: %s [%s] %s", aorm_errname(none.code), none.sqlstate,
                 none.msg);
    t_rec after;
    run_sql(&f, "SELECT 9", &after, 5);
    cr_assert_eq(after.code, 0);
    cr_assert(after.has_int && after.ival == 9);
    run_for(&f, 0.1);
    cr_assert(warm.calls == 1 && slow.calls == 1 && none.calls == 1 && after.calls == 1);
    fx_close(&f);
}

/* Runs one statement on a held connection and waits for it (see run_sql). */
static void conn_sql(fx *f, aorm_conn *c, const char *sql, const aorm_exec_options *xo, t_rec *r) {
    memset(r, 0, sizeof(*r));
    cr_assert_eq(aorm_conn_execute(c, sql, NULL, xo, t_rec_on_result, r), 0, "%s", sql);
    cr_assert(wait_flag(f->evl, &r->calls, 10), "no answer to %s", sql);
}

Test(engine_faults, deadline_inside_transaction, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "deadline_tx", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);

    t_rec b = {0};
    cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
    cr_assert(wait_flag(f.evl, &b.calls, 10));
    cr_assert_eq(b.code, 0);

    aorm_exec_options xo = {.flags = 0, .deadline = 0.1};
    double t0 = t_mono();
    t_rec slow;
    conn_sql(&f, h.conn, "SELECT pg_sleep(10)", &xo, &slow);
    cr_assert_eq(slow.code, AORM_ETIMEOUT, "got %s [%s] %s", aorm_errname(slow.code), slow.sqlstate, slow.msg);
    cr_assert(slow.at - t0 < 1.0, "deadline fired after %.3f s", slow.at - t0);

    /* the cancelled statement aborted the transaction: everything fails
     * until the rollback */
    t_rec e1;
    conn_sql(&f, h.conn, "SELECT 1", NULL, &e1);
    cr_assert_eq(e1.code, AORM_ESERVER, "after a timeout in a transaction: %s [%s] %s", aorm_errname(e1.code),
                 e1.sqlstate, e1.msg);
    cr_assert_str_eq(e1.sqlstate, "25P02");
    cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_INERROR);
    t_rec e2;
    conn_sql(&f, h.conn, "SELECT 2", NULL, &e2);
    cr_assert_eq(e2.code, AORM_ESERVER);
    cr_assert_str_eq(e2.sqlstate, "25P02");

    t_rec rb = {0};
    cr_assert_eq(aorm_conn_rollback(h.conn, t_rec_on_result, &rb), 0);
    cr_assert(wait_flag(f.evl, &rb.calls, 10));
    cr_assert_eq(rb.code, 0, "rollback: %s [%s] %s", aorm_errname(rb.code), rb.sqlstate, rb.msg);
    cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_IDLE);
    t_rec ok;
    conn_sql(&f, h.conn, "SELECT 3", NULL, &ok);
    cr_assert_eq(ok.code, 0, "after rollback: %s [%s] %s", aorm_errname(ok.code), ok.sqlstate, ok.msg);
    cr_assert(ok.has_int && ok.ival == 3);

    /* and the server is not still sleeping */
    PGconn *pg = t_pg();
    char sql[512];
    activity_sql(sql, sizeof(sql), &f, "AND state = 'active' AND query = 'SELECT pg_sleep(10)'");
    cr_assert_eq(poll_pg(&f, pg, sql, CMP_EQ, 0, 2.0), 0);
    PQfinish(pg);

    run_for(&f, 0.1);
    cr_assert(b.calls == 1 && slow.calls == 1 && e1.calls == 1 && e2.calls == 1 && rb.calls == 1 && ok.calls == 1);
    cr_assert_eq(h.calls, 1);
    aorm_conn_release(h.conn);
    run_for(&f, 0.05);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.held, 0);
    cr_assert_eq(s.connections_lost, 0);
    fx_close(&f);
}

/* ============================================================================
 * 4. Pool exhaustion
 * ========================================================================== */

static int none_held(void *arg) {
    aorm_engine_stats s = t_stats(arg);
    return s.held == 0 && s.waiting == 0;
}

Test(engine_faults, pool_exhausted, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "pool1", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.pool_timeout = 0.3;
    fx_engine(&f, &o);

    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);

    /* a second acquire waits, then times out */
    t_rec h2 = {0};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    cr_assert(wait_flag(f.evl, &h2.calls, 5));
    cr_assert_eq(h2.code, AORM_EPOOLTIMEOUT, "got %s", aorm_errname(h2.code));
    cr_assert_null(h2.conn);
    cr_assert(h2.at - t0 >= 0.28 && h2.at - t0 < 1.0, "pool timeout of 0.3 s after %.3f s", h2.at - t0);

    /* so does an autocommit statement */
    t_rec r = {0};
    t0 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 1", NULL, NULL, t_rec_on_result, &r), 0);
    cr_assert(wait_flag(f.evl, &r.calls, 5));
    cr_assert_eq(r.code, AORM_EPOOLTIMEOUT, "got %s [%s] %s", aorm_errname(r.code), r.sqlstate, r.msg);
    cr_assert(r.at - t0 >= 0.28 && r.at - t0 < 1.0, "pool timeout of 0.3 s after %.3f s", r.at - t0);

    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.open, 1);
    cr_assert_eq(s.held, 1);
    cr_assert_eq(s.waiting, 0);

    aorm_conn_release(h.conn);
    cr_assert(t_run_until_prompt(f.evl, none_held, f.e, 2), "the released connection never came back");
    s = t_stats(f.e);
    cr_assert_eq(s.open, 1, "open = %d", s.open);
    cr_assert_eq(s.held, 0, "held = %d", s.held);
    cr_assert_eq(s.waiting, 0, "waiting = %d", s.waiting);
    cr_assert_eq(s.idle, 1, "idle = %d", s.idle);

    t_rec h3 = {0};
    t0 = t_mono();
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h3), 0);
    cr_assert(wait_flag(f.evl, &h3.calls, 2));
    cr_assert_eq(h3.code, 0);
    cr_assert(h3.at - t0 < 0.1, "acquire of an idle connection took %.3f s", h3.at - t0);
    t_rec q;
    conn_sql(&f, h3.conn, "SELECT 11", NULL, &q);
    cr_assert(q.code == 0 && q.ival == 11);
    aorm_conn_release(h3.conn);
    run_for(&f, 0.1);
    cr_assert(h.calls == 1 && h2.calls == 1 && h3.calls == 1 && r.calls == 1 && q.calls == 1);
    s = t_stats(f.e);
    cr_assert_eq(s.connects, 1);
    fx_close(&f);
}

Test(engine_faults, pool_overflow, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "overflow", NULL);
    o.pool_size = 2;
    o.max_overflow = 1;
    o.pool_timeout = 0.3;
    o.idle_timeout = 0.5;
    fx_engine(&f, &o);

    t_rec h[3];
    memset(h, 0, sizeof(h));
    for (int i = 0; i < 3; i++) cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h[i]), 0);
    t_rec *hs[] = {&h[0], &h[1], &h[2], NULL};
    cr_assert(t_run_until_prompt(f.evl, t_recs_called, hs, 10));
    for (int i = 0; i < 3; i++) cr_assert_eq(h[i].code, 0, "acquire %d: %s", i, aorm_errname(h[i].code));
    cr_assert(h[0].conn != h[1].conn && h[1].conn != h[2].conn && h[0].conn != h[2].conn);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.open, 3);
    cr_assert_eq(s.held, 3);

    t_rec h4 = {0};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h4), 0);
    cr_assert(wait_flag(f.evl, &h4.calls, 5));
    cr_assert_eq(h4.code, AORM_EPOOLTIMEOUT, "fourth acquire: %s", aorm_errname(h4.code));
    cr_assert(h4.at - t0 >= 0.28 && h4.at - t0 < 1.0, "pool timeout of 0.3 s after %.3f s", h4.at - t0);

    for (int i = 0; i < 3; i++) aorm_conn_release(h[i].conn);
    cr_assert(t_run_until_prompt(f.evl, none_held, f.e, 2));
    s = t_stats(f.e);
    cr_assert_eq(s.open, 3, "the overflow connection should linger for reuse: open = %d", s.open);
    cr_assert_eq(s.held, 0);
    cr_assert_eq(s.overflow_opened, 1);
    double until = t_mono() + 5;
    while (t_stats(f.e).open > 2 && t_mono() < until) run_for(&f, 0.05);
    s = t_stats(f.e);
    cr_assert(s.open <= 2, "the overflow connection was kept past idle_timeout: open = %d", s.open);
    cr_assert_eq(s.overflow_closed, 1);

    PGconn *pg = t_pg();
    char sql[512];
    activity_sql(sql, sizeof(sql), &f, NULL);
    long n = poll_pg(&f, pg, sql, CMP_LE, 2, 3.0);
    cr_assert(n <= 2, "%ld client backends still open for the engine", n);
    PQfinish(pg);
    run_for(&f, 0.05);
    for (int i = 0; i < 3; i++) cr_assert_eq(h[i].calls, 1);
    cr_assert_eq(h4.calls, 1);
    fx_close(&f);
}

/* ============================================================================
 * 5. Freeing the engine with work pending
 * ========================================================================== */

static int all_sent(void *arg) {
    void **a = arg;
    aorm_engine_stats s = t_stats(a[0]);
    return s.statements >= *(uint64_t *)a[1];
}

Test(engine_faults, free_with_statements_in_flight, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "free_inflight", NULL);
    fx_engine(&f, &o);
    enum { N = 100 };
    t_rec *r = calloc(N, sizeof(*r));
    cr_assert_not_null(r);
    for (int i = 0; i < N; i++)
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(0.5)", NULL, NULL, t_rec_on_result, &r[i]), 0);
    run_for(&f, 0.1);
    uint64_t want = N;
    void *a[2] = {f.e, &want};
    cr_assert(t_run_until_prompt(f.evl, all_sent, a, 5), "the statements were not all sent");
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].calls, 0, "statement %d answered already", i);

    t_rec_mark = 1;
    aorm_engine_free(f.e);
    t_rec_mark = 0;
    f.e = NULL;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert(r[i].mark, "statement %d was not called back from inside aorm_engine_free", i);
        cr_assert_eq(r[i].code, AORM_ECANCELED, "statement %d: %s [%s] %s", i, aorm_errname(r[i].code),
                     r[i].sqlstate, r[i].msg);
    }
    run_for(&f, 0.05);
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].calls, 1);
    free(r);
    fx_close(&f);
}

/* A cancelled callback that calls back into the closing engine. */
typedef struct reentry {
    t_rec r;
    t_rec dummy;   /* would receive the re-entrant statement's outcome */
    t_rec dummy_h;
    int exec_rc;
    int acquire_rc;
} reentry;

static void on_cancel_reenter(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    reentry *x = user;
    t_rec_take(&x->r, res, err);
    x->exec_rc = aorm_engine_execute(e, "SELECT 1", NULL, NULL, t_rec_on_result, &x->dummy);
    x->acquire_rc = aorm_engine_acquire(e, t_rec_on_conn, &x->dummy_h);
    aorm_engine_free(e); /* again, from inside the first free: a no-op */
}

Test(engine_faults, free_with_statements_queued, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "free_queued", NULL);
    fx_engine(&f, &o);
    enum { N = 100 };
    t_rec *r = calloc(N, sizeof(*r));
    cr_assert_not_null(r);
    reentry x;
    memset(&x, 0, sizeof(x));
    t_rec h = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 0", NULL, NULL, on_cancel_reenter, &x), 0);
    for (int i = 0; i < N; i++)
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(0.5)", NULL, NULL, t_rec_on_result, &r[i]), 0);
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);

    t_rec_mark = 1;
    aorm_engine_free(f.e); /* the loop never ran: nothing was sent */
    t_rec_mark = 0;
    f.e = NULL;
    cr_assert_eq(x.r.calls, 1);
    cr_assert_eq(x.r.code, AORM_ECANCELED);
    cr_assert_eq(x.exec_rc, AORM_ECLOSED, "execute on a closing engine returned %s", aorm_errname(x.exec_rc));
    cr_assert_eq(x.acquire_rc, AORM_ECLOSED, "acquire on a closing engine returned %s",
                 aorm_errname(x.acquire_rc));
    cr_assert(x.dummy.calls == 0 && x.dummy_h.calls == 0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert(r[i].mark);
        cr_assert_eq(r[i].code, AORM_ECANCELED, "statement %d: %s", i, aorm_errname(r[i].code));
    }
    cr_assert_eq(h.calls, 1);
    cr_assert_eq(h.code, AORM_ECANCELED, "acquire: %s", aorm_errname(h.code));
    cr_assert_null(h.conn);
    run_for(&f, 0.05);
    free(r);
    fx_close(&f);
}

/* The statement whose callback frees the engine. */
typedef struct freer {
    t_rec r;
    fx *f;
    t_rec *late;          /* queued from inside the callback, before the free */
    int nlate;
    int others_done_in_free; /* callbacks of `others` that had run when free returned */
    t_rec *others;
    int nothers;
    t_rec *held;
    int held_done_in_free;
} freer;

static void on_free_engine(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    freer *fr = user;
    t_rec_take(&fr->r, res, err);
    for (int i = 0; i < fr->nlate; i++) aorm_engine_execute(e, "SELECT 2", NULL, NULL, t_rec_on_result, &fr->late[i]);
    t_rec_mark = 1;
    aorm_engine_free(e);
    t_rec_mark = 0;
    fr->f->e = NULL;
    for (int i = 0; i < fr->nothers; i++) fr->others_done_in_free += fr->others[i].calls;
    fr->held_done_in_free = fr->held->calls;
}

Test(engine_faults, free_from_inside_a_callback, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "free_in_cb", NULL);
    o.pool_size = 2;
    fx_engine(&f, &o);

    /* a held connection with a statement running on it */
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    t_rec held_sleep = {0};
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT pg_sleep(5)", NULL, NULL, t_rec_on_result, &held_sleep), 0);

    /* the freeing statement first, sleepers pipelined behind it */
    enum { NS = 10, NL = 5 };
    t_rec sleepers[NS];
    t_rec late[NL];
    memset(sleepers, 0, sizeof(sleepers));
    memset(late, 0, sizeof(late));
    freer fr = {.f = &f, .late = late, .nlate = NL, .others = sleepers, .nothers = NS, .held = &held_sleep};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 1", NULL, NULL, on_free_engine, &fr), 0);
    for (int i = 0; i < NS; i++)
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(5)", NULL, NULL, t_rec_on_result, &sleepers[i]), 0);

    cr_assert(wait_flag(f.evl, &fr.r.calls, 10), "the freeing statement never completed");
    cr_assert_null(f.e, "the callback did not run aorm_engine_free");
    cr_assert_eq(fr.r.code, 0, "SELECT 1: %s [%s] %s", aorm_errname(fr.r.code), fr.r.sqlstate, fr.r.msg);
    cr_assert_eq(fr.others_done_in_free, NS, "only %d of %d pending callbacks ran inside the free",
                 fr.others_done_in_free, NS);
    cr_assert_eq(fr.held_done_in_free, 1, "the held connection's statement was not cancelled inside the free");
    /* the loop keeps running with the engine gone */
    run_for(&f, 0.2);
    cr_assert_eq(fr.r.calls, 1);
    for (int i = 0; i < NS; i++) {
        cr_assert_eq(sleepers[i].calls, 1, "sleeper %d called back %d times", i, sleepers[i].calls);
        cr_assert_eq(sleepers[i].code, AORM_ECANCELED, "sleeper %d: %s", i, aorm_errname(sleepers[i].code));
        cr_assert(sleepers[i].mark);
    }
    for (int i = 0; i < NL; i++) {
        cr_assert_eq(late[i].calls, 1, "late %d called back %d times", i, late[i].calls);
        cr_assert_eq(late[i].code, AORM_ECANCELED);
        cr_assert(late[i].mark);
    }
    cr_assert_eq(held_sleep.calls, 1, "held statement called back %d times", held_sleep.calls);
    cr_assert_eq(held_sleep.code, AORM_ECANCELED, "held statement: %s", aorm_errname(held_sleep.code));
    cr_assert(held_sleep.mark);
    cr_assert_eq(h.calls, 1);
    fx_close(&f); /* asserts (debug builds) that the engine left no watcher behind */
}

/* ============================================================================
 * 6. The server cannot be reached
 * ========================================================================== */

Test(engine_faults, connection_refused, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "refused", "port=1");
    /* callers wait for a connection up to the pool timeout while the
     * engine keeps trying, then hear why none came */
    o.pool_timeout = 0.5;
    fx_engine(&f, &o);
    t_rec r = {0};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 1", NULL, NULL, t_rec_on_result, &r), 0);
    cr_assert(wait_flag(f.evl, &r.calls, 10));
    cr_assert_eq(r.code, AORM_ECONNECT, "got %s [%s] %s", aorm_errname(r.code), r.sqlstate, r.msg);
    cr_assert_str_eq(r.sqlstate, "08001");
    cr_assert(r.at - t0 >= o.pool_timeout - 0.05, "gave up after %.2f s, before the pool timeout", r.at - t0);
    cr_assert(r.at - t0 < o.pool_timeout + 0.5, "connection refused reported after %.2f s", r.at - t0);

    t_rec h = {0};
    t0 = t_mono();
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, AORM_ECONNECT, "acquire: %s", aorm_errname(h.code));
    cr_assert_null(h.conn);
    cr_assert(h.at - t0 >= o.pool_timeout - 0.05 && h.at - t0 < o.pool_timeout + 0.5, "acquire failed after %.2f s",
              h.at - t0);
    run_for(&f, 0.1);
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(h.calls, 1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert(s.connect_failures >= 1);
    cr_assert_eq(s.connects, 0);
    cr_assert_eq(s.open, 0);
    cr_assert_eq(s.waiting, 0);
    fx_close(&f);
}

typedef struct feeder {
    ev_timer w;
    aorm_engine *e;
    t_rec *r;
    double *sent_at;
    int n, next;
} feeder;

static void on_feed(struct ev_loop *evl, ev_timer *w, int revents) {
    feeder *fd = (feeder *)w;
    if (fd->next >= fd->n) {
        ev_timer_stop(evl, w);
        return;
    }
    fd->sent_at[fd->next] = t_mono();
    int rc = aorm_engine_execute(fd->e, "SELECT 1", NULL, NULL, t_rec_on_result, &fd->r[fd->next]);
    if (rc != 0) {
        /* refused at submission: never called back, and the count check fails */
        fd->r[fd->next].code = rc;
        fd->r[fd->next].calls = -1000;
    }
    fd->next++;
}

Test(engine_faults, connection_refused_backoff, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "backoff", "port=1");
    o.pool_timeout = 0.3;
    fx_engine(&f, &o);
    enum { N = 100 };
    t_rec r[N];
    double sent_at[N];
    memset(r, 0, sizeof(r));
    feeder fd = {.e = f.e, .r = r, .sent_at = sent_at, .n = N};
    ev_timer_init(&fd.w, on_feed, 0.0, 0.01); /* one statement every 10 ms for a second */
    ev_timer_start(f.evl, &fd.w);
    cr_assert(t_rec_wait_all(f.evl, r, N, 10), "not every statement was called back");
    ev_timer_stop(f.evl, &fd.w);
    run_for(&f, 0.1);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert_eq(r[i].code, AORM_ECONNECT, "statement %d: %s [%s]", i, aorm_errname(r[i].code), r[i].sqlstate);
        cr_assert_str_eq(r[i].sqlstate, "08001");
        if (r[i].at - sent_at[i] > worst) worst = r[i].at - sent_at[i];
    }
    aorm_engine_stats s = t_stats(f.e);
    cr_log_info("%llu connection attempts for %d statements; slowest failure %.3f s",
                (unsigned long long)s.connect_failures, N, worst);
    /* backoff from 0.05 s doubling: about six attempts in 1.3 s */
    cr_assert(s.connect_failures >= 2 && s.connect_failures <= 15,
              "%llu connection attempts for %d statements over 1 s", (unsigned long long)s.connect_failures, N);
    cr_assert(worst < o.pool_timeout + 0.5, "a statement waited %.2f s for its failure", worst);
    cr_assert_eq(s.connects, 0);
    fx_close(&f);
}

/* ============================================================================
 * 7. COMMIT on a connection whose backend is gone
 * ========================================================================== */

static int conn_is_broken(void *arg) { return aorm_conn_broken(arg); }

Test(engine_faults, commit_on_terminated_backend, .timeout = 90) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "SET client_min_messages = warning"));
    free(t_pg_exec(pg, "CREATE TABLE IF NOT EXISTS aorm_flt_commit (id int PRIMARY KEY, note text)"));
    free(t_pg_exec(pg, "TRUNCATE aorm_flt_commit"));

    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "commit", NULL);
    o.pool_size = 2;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);

    t_rec b = {0}, pidr = {0}, ins = {0}, commit = {0};
    cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT pg_backend_pid()", NULL, NULL, t_rec_on_result, &pidr), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO aorm_flt_commit VALUES (1, 'lost')", NULL, NULL, t_rec_on_result, &ins),
                 0);
    cr_assert(wait_flag(f.evl, &ins.calls, 10));
    cr_assert(b.code == 0 && pidr.code == 0 && ins.code == 0);
    cr_assert(pidr.has_int && pidr.ival > 0);
    cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_INTRANS);

    /* the backend dies while the engine is not looking; COMMIT goes out on
     * the dead connection */
    t_pg_terminate(pg, (long)pidr.ival);
    uint64_t sent_before = t_stats(f.e).statements;
    cr_assert_eq(aorm_conn_commit(h.conn, t_rec_on_result, &commit), 0);
    cr_assert(wait_flag(f.evl, &commit.calls, 10));
    bool commit_sent = t_stats(f.e).statements > sent_before;
    cr_log_info("COMMIT on a dead connection (%s): %s [%s] %s", commit_sent ? "sent" : "not sent",
                aorm_errname(commit.code), commit.sqlstate, commit.msg);
    /* The engine sends the COMMIT (the kernel accepts a write to a socket
     * whose peer has closed), and from then on, for all it knows, the
     * server may have received and committed it before the connection
     * went: the outcome is unknown, and the contract (engine.h) is
     * AORM_EUNKNOWN_OUTCOME, SQLSTATE 08007. AORM_ECONNLOST would tell the
     * caller that nothing was committed, which is only certain when the
     * COMMIT never left (an engine that checks the connection before
     * sending may fail it that way). The server's FATAL 57P01 that the
     * dying backend wrote is not an answer to the COMMIT either: a backend
     * terminated during COMMIT (e.g. while waiting for a synchronous
     * standby) may well have committed locally, so AORM_ESERVER/57P01 must
     * not reach the caller as if the COMMIT had been refused. */
    if (commit_sent) {
        cr_assert_eq(commit.code, AORM_EUNKNOWN_OUTCOME, "COMMIT sent on a dead connection: %s [%s] %s",
                     aorm_errname(commit.code), commit.sqlstate, commit.msg);
        cr_assert_str_eq(commit.sqlstate, "08007");
    } else {
        cr_assert(commit.code == AORM_EUNKNOWN_OUTCOME || commit.code == AORM_ECONNLOST,
                  "COMMIT not sent, connection dead: %s [%s] %s", aorm_errname(commit.code), commit.sqlstate,
                  commit.msg);
    }

    cr_assert(t_run_until_prompt(f.evl, conn_is_broken, h.conn, 5), "the held connection was never marked broken");
    cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_UNKNOWN);
    t_rec never_called = {0};
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 1", NULL, NULL, t_rec_on_result, &never_called), AORM_ECONNLOST);
    cr_assert_eq(aorm_conn_commit(h.conn, t_rec_on_result, &never_called), AORM_ECONNLOST);
    aorm_conn_release(h.conn);
    run_for(&f, 0.1);
    cr_assert_eq(never_called.calls, 0);
    cr_assert(b.calls == 1 && pidr.calls == 1 && ins.calls == 1 && commit.calls == 1);

    /* here the backend died before it read the COMMIT: nothing committed */
    t_rec cnt;
    run_sql(&f, "SELECT count(*) FROM aorm_flt_commit", &cnt, 10);
    cr_assert_eq(cnt.code, 0, "the engine does not work after the lost commit: %s [%s] %s", aorm_errname(cnt.code),
                 cnt.sqlstate, cnt.msg);
    cr_assert(cnt.has_int && cnt.ival == 0);
    run_for(&f, 0.05);
    cr_assert_eq(cnt.calls, 1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1);
    cr_assert_eq(s.held, 0);
    PQfinish(pg);
    fx_close(&f);
}

/* ============================================================================
 * 8. Read-only statements re-sent after a pipeline abort run once
 * ========================================================================== */

enum { RO_N = 50, RO_FAIL = 25 };

typedef struct ro_state {
    int notices[RO_N];  /* executions seen, one NOTICE per execution */
    int other_notices;
    t_rec r[RO_N];
    t_rec warm;
} ro_state;

static void on_ro_log(aorm_log_level level, const char *message, void *user) {
    ro_state *st = user;
    const char *p = strstr(message, "aorm_flt_probe ");
    if (!p) return;
    int i = atoi(p + strlen("aorm_flt_probe "));
    if (i >= 0 && i < RO_N) st->notices[i]++;
    else st->other_notices++;
}

static void on_ro_warm(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    ro_state *st = user;
    t_rec_take(&st->warm, res, err);
    /* all fifty in one loop turn: one pipeline, one shared sync */
    aorm_exec_options ro = {.flags = AORM_EXEC_READONLY, .deadline = 0};
    for (int i = 0; i < RO_N; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, i);
        int rc = aorm_engine_execute(e, "SELECT aorm_flt_probe($1)", &p, &ro, t_rec_on_result, &st->r[i]);
        if (rc != 0) st->r[i].calls = -1000;
        aorm_params_free(&p);
    }
}

Test(engine_faults, readonly_resend_runs_once, .timeout = 90) {
    PGconn *pg = t_pg();
    /* side-effect free apart from a NOTICE per call, which is how the test
     * counts executions; the call with 25 fails */
    free(t_pg_exec(pg, "CREATE OR REPLACE FUNCTION aorm_flt_probe(i int) RETURNS int LANGUAGE plpgsql STABLE AS $$ "
                       "BEGIN RAISE NOTICE 'aorm_flt_probe %', i; "
                       "IF i = 25 THEN RAISE EXCEPTION 'probe % fails', i USING ERRCODE = '22012'; END IF; "
                       "RETURN i * 2; END $$"));

    ro_state *st = calloc(1, sizeof(*st));
    cr_assert_not_null(st);
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "resend", NULL);
    o.log = on_ro_log;
    o.log_user = st;
    o.log_level = AORM_LOG_INFO; /* server NOTICEs are logged at INFO */
    fx_engine(&f, &o);

    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 1", NULL, NULL, on_ro_warm, st), 0);
    cr_assert(wait_flag(f.evl, &st->warm.calls, 10));
    cr_assert_eq(st->warm.code, 0);
    cr_assert(t_rec_wait_all(f.evl, st->r, RO_N, 20), "not every read-only statement was called back");
    run_for(&f, 0.2);

    for (int i = 0; i < RO_N; i++) {
        cr_assert_eq(st->r[i].calls, 1, "statement %d called back %d times", i, st->r[i].calls);
        if (i == RO_FAIL) {
            cr_assert_eq(st->r[i].code, AORM_ESERVER, "the failing probe: %s [%s] %s", aorm_errname(st->r[i].code),
                         st->r[i].sqlstate, st->r[i].msg);
            cr_assert_str_eq(st->r[i].sqlstate, "22012");
        } else {
            cr_assert_eq(st->r[i].code, 0, "probe %d: %s [%s] %s", i, aorm_errname(st->r[i].code),
                         st->r[i].sqlstate, st->r[i].msg);
            cr_assert(st->r[i].has_int && st->r[i].ival == 2 * i, "probe %d returned %lld", i,
                      (long long)st->r[i].ival);
        }
        cr_assert_eq(st->notices[i], 1, "probe %d ran %d times on the server", i, st->notices[i]);
    }
    cr_assert_eq(st->other_notices, 0);
    aorm_engine_stats s = t_stats(f.e);
    /* the ones after the failure were skipped by the server and re-sent */
    cr_assert(s.resent >= 1, "nothing was re-sent: was the pipeline really shared? (syncs %llu)",
              (unsigned long long)s.syncs);
    cr_assert(s.resent <= RO_N - RO_FAIL - 1, "resent = %llu", (unsigned long long)s.resent);
    fx_close(&f);
    free(st);
    free(t_pg_exec(pg, "DROP FUNCTION IF EXISTS aorm_flt_probe(int)"));
    PQfinish(pg);
}

/* ============================================================================
 * 8. Promises the engine keeps in the corners (each a regression test)
 * ========================================================================== */

/* The transaction status a callback sees is the state its own statement
 * left behind, whether or not the sync behind it has been read yet. */
typedef struct txs_probe {
    aorm_conn *c;
    int calls;
    int code;
    aorm_tx_status seen;
} txs_probe;

static void on_txs_probe(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    txs_probe *p = user;
    p->calls++;
    p->code = err ? err->code : 0;
    p->seen = aorm_conn_tx_status(p->c);
}

Test(engine_faults, tx_status_inside_callbacks, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "txs_cb", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);

    enum { BEGIN, SAVE, FAIL, AFTER, BACK, OK, COMMIT, RAW_BEGIN, RAW_FAIL, RAW_ROLLBACK, N };
    txs_probe p[N];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < N; i++) p[i].c = h.conn;
    /* all queued in one turn: one pipeline, several sync groups */
    cr_assert_eq(aorm_conn_begin(h.conn, NULL, on_txs_probe, &p[BEGIN]), 0);
    cr_assert_eq(aorm_conn_savepoint(h.conn, "s1", on_txs_probe, &p[SAVE]), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 1/0", NULL, NULL, on_txs_probe, &p[FAIL]), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 2", NULL, NULL, on_txs_probe, &p[AFTER]), 0);
    cr_assert_eq(aorm_conn_rollback_to(h.conn, "s1", on_txs_probe, &p[BACK]), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 3", NULL, NULL, on_txs_probe, &p[OK]), 0);
    cr_assert_eq(aorm_conn_commit(h.conn, on_txs_probe, &p[COMMIT]), 0);
    txs_probe *last = &p[COMMIT];
    cr_assert(wait_flag(f.evl, &last->calls, 10));
    /* a transaction opened and ended with raw SQL is tracked too */
    aorm_exec_options raw = {.flags = AORM_EXEC_UNPREPARED, .deadline = 0};
    cr_assert_eq(aorm_conn_execute(h.conn, "BEGIN", NULL, &raw, on_txs_probe, &p[RAW_BEGIN]), 0);
    cr_assert(wait_flag(f.evl, &p[RAW_BEGIN].calls, 10));
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 1/0", NULL, &raw, on_txs_probe, &p[RAW_FAIL]), 0);
    cr_assert(wait_flag(f.evl, &p[RAW_FAIL].calls, 10));
    cr_assert_eq(aorm_conn_execute(h.conn, "ROLLBACK", NULL, &raw, on_txs_probe, &p[RAW_ROLLBACK]), 0);
    cr_assert(wait_flag(f.evl, &p[RAW_ROLLBACK].calls, 10));
    run_for(&f, 0.05);

    static const struct { int code; aorm_tx_status st; const char *what; } want[N] = {
        [BEGIN] = {0, AORM_TX_INTRANS, "BEGIN"},
        [SAVE] = {0, AORM_TX_INTRANS, "SAVEPOINT"},
        [FAIL] = {AORM_ESERVER, AORM_TX_INERROR, "failing statement"},
        [AFTER] = {AORM_EABORTED, AORM_TX_INERROR, "statement behind the failure"},
        [BACK] = {0, AORM_TX_INTRANS, "ROLLBACK TO SAVEPOINT"},
        [OK] = {0, AORM_TX_INTRANS, "statement after the savepoint rollback"},
        [COMMIT] = {0, AORM_TX_IDLE, "COMMIT"},
        [RAW_BEGIN] = {0, AORM_TX_INTRANS, "raw BEGIN"},
        [RAW_FAIL] = {AORM_ESERVER, AORM_TX_INERROR, "failing statement in a raw transaction"},
        [RAW_ROLLBACK] = {0, AORM_TX_IDLE, "raw ROLLBACK"},
    };
    for (int i = 0; i < N; i++) {
        cr_assert_eq(p[i].calls, 1, "%s called back %d times", want[i].what, p[i].calls);
        cr_assert_eq(p[i].code, want[i].code, "%s: %s", want[i].what, aorm_errname(p[i].code));
        cr_assert_eq(p[i].seen, want[i].st, "%s: the callback saw status %d, want %d", want[i].what, p[i].seen,
                     want[i].st);
    }
    cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_IDLE);
    aorm_conn_release(h.conn);
    fx_close(&f);
}

/* A held connection is lost while its statement runs, and the holder
 * releases it from that statement's callback (the natural place: a COMMIT
 * or rollback callback). The connection's place in the pool is given back
 * once, and the pool opens new connections for the work that follows. */
typedef struct release_on_cb {
    t_rec r;
    aorm_conn *c;
} release_on_cb;

static void on_rec_release(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    release_on_cb *x = user;
    t_rec_take(&x->r, res, err);
    aorm_conn_release(x->c);
}

Test(engine_faults, pool_heals_after_release_in_loss_callback, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "heal_release", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.pool_timeout = 5;
    fx_engine(&f, &o);
    for (int round = 0; round < 3; round++) {
        t_rec h = {0};
        cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
        cr_assert(wait_flag(f.evl, &h.calls, 10));
        cr_assert_eq(h.code, 0, "round %d: acquire: %s", round, aorm_errname(h.code));
        /* the release comes from the callback of the statement queued
         * behind the running one (or, in the last round, of the running
         * one itself) */
        release_on_cb x = {.c = h.conn};
        t_rec sleeper = {0};
        if (round < 2) {
            cr_assert_eq(aorm_conn_execute(h.conn, "SELECT pg_sleep(5)", NULL, NULL, t_rec_on_result, &sleeper), 0);
            cr_assert_eq(aorm_conn_execute(h.conn, round == 0 ? "SELECT 1" : "COMMIT", NULL, NULL, on_rec_release, &x), 0);
        } else {
            cr_assert_eq(aorm_conn_execute(h.conn, "SELECT pg_sleep(5)", NULL, NULL, on_rec_release, &x), 0);
            sleeper.calls = 1;
            sleeper.code = AORM_ECONNLOST;
            snprintf(sleeper.sqlstate, sizeof(sleeper.sqlstate), "08006");
        }
        PGconn *pg = t_pg();
        long pid = find_sleeper(&f, pg, 10);
        cr_assert(pid > 0);
        t_pg_terminate(pg, pid);
        PQfinish(pg);
        cr_assert(wait_flag(f.evl, &x.r.calls, 10));
        cr_assert(lost_outcome(&x.r), "round %d: %s [%s]", round, aorm_errname(x.r.code), x.r.sqlstate);
        cr_assert_eq(sleeper.calls, 1);
        cr_assert(lost_outcome(&sleeper), "round %d: %s [%s]", round, aorm_errname(sleeper.code), sleeper.sqlstate);
        aorm_engine_stats s = t_stats(f.e);
        cr_assert_eq(s.held, 0, "round %d: held = %d", round, s.held);

        /* the pool must heal: autocommit work and a new holder both get a connection */
        enum { N = 10 };
        t_rec r[N];
        memset(r, 0, sizeof(r));
        for (int i = 0; i < N; i++) cr_assert_eq(aorm_engine_execute(f.e, "SELECT 7", NULL, NULL, t_rec_on_result, &r[i]), 0);
        cr_assert(t_rec_wait_all(f.evl, r, N, 10));
        for (int i = 0; i < N; i++)
            cr_assert_eq(r[i].code, 0, "round %d, statement %d after the loss: %s [%s] %s", round, i,
                         aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
        cr_assert_eq(x.r.calls, 1);
    }
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.held, 0);
    cr_assert(s.open <= 1, "open = %d with pool_size 1", s.open);
    fx_close(&f);
}

/* When a connection is lost, its callers hear it in the order they
 * submitted: the running statement first, then those pipelined behind it,
 * then a holder's statements that were still queued. */
typedef struct order_rec {
    t_rec r;
    int *next;
    int seq; /* position at which this callback ran */
} order_rec;

static void on_order(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    order_rec *o = user;
    t_rec_take(&o->r, res, err);
    o->seq = (*o->next)++;
}

static void loss_order(bool held) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, held ? "order_held" : "order_auto", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec h = {0};
    if (held) {
        cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
        cr_assert(wait_flag(f.evl, &h.calls, 10));
        cr_assert_eq(h.code, 0);
    }
    enum { N = 8 };
    order_rec r[N];
    int next = 0;
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        r[i].next = &next;
        const char *sql = i == 0 ? "SELECT pg_sleep(5)" : "SELECT 1";
        int rc = held ? aorm_conn_execute(h.conn, sql, NULL, NULL, on_order, &r[i])
                      : aorm_engine_execute(f.e, sql, NULL, NULL, on_order, &r[i]);
        cr_assert_eq(rc, 0);
    }
    PGconn *pg = t_pg();
    long pid = find_sleeper(&f, pg, 10);
    cr_assert(pid > 0);
    if (held) {
        /* more work queued behind, not yet sent when the loss is seen */
        for (int i = 0; i < N; i++) cr_assert_eq(r[i].r.calls, 0);
    }
    t_pg_terminate(pg, pid);
    PQfinish(pg);
    t_rec *flat[N];
    for (int i = 0; i < N; i++) flat[i] = &r[i].r;
    double until = t_mono() + 10;
    while (t_mono() < until) {
        int all = 1;
        for (int i = 0; i < N; i++) all &= flat[i]->calls > 0;
        if (all) break;
        run_for(&f, 0.02);
    }
    run_for(&f, 0.1);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].r.calls, 1, "statement %d called back %d times", i, r[i].r.calls);
        cr_assert(lost_outcome(&r[i].r), "statement %d: %s [%s] %s", i, aorm_errname(r[i].r.code), r[i].r.sqlstate,
                  r[i].r.msg);
        cr_assert_eq(r[i].seq, i, "statement %d was called back in position %d", i, r[i].seq);
    }
    if (held) aorm_conn_release(h.conn);
    fx_close(&f);
}

Test(engine_faults, loss_callbacks_in_submission_order_autocommit, .timeout = 60) { loss_order(false); }
Test(engine_faults, loss_callbacks_in_submission_order_held, .timeout = 60) { loss_order(true); }

/* ---- owners: a caller that goes away takes its work with it ------------- */

static int g_cancel_depth; /* inside aorm_owner_cancel() in the test */

typedef struct owned {
    t_rec r;
    int *next;
    int seq;
    int in_cancel;
} owned;

static void on_owned(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    owned *o = user;
    t_rec_take(&o->r, res, err);
    o->seq = (*o->next)++;
    o->in_cancel = g_cancel_depth;
}

static void on_owned_hold(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    owned *o = user;
    o->r.calls++;
    o->r.code = err ? err->code : 0;
    o->seq = (*o->next)++;
    o->in_cancel = g_cancel_depth;
}

Test(engine_faults, owner_cancel_calls_back_at_once, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "owner_cancel", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);

    aorm_owner *ow = aorm_owner_new(f.e);
    cr_assert_not_null(ow);
    enum { N = 6 };
    owned *w = calloc(N + 1, sizeof(*w)); /* freed right after the cancel: a late callback would be caught */
    int next = 0;
    for (int i = 0; i <= N; i++) w[i].next = &next;
    aorm_exec_options xo = {.owner = ow};
    /* the first runs on the server when the cancel comes; the rest are queued behind it */
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(0.5)", NULL, &xo, on_owned, &w[0]), 0);
    run_for(&f, 0.05);
    for (int i = 1; i < N; i++) cr_assert_eq(aorm_engine_execute(f.e, "SELECT 2", NULL, &xo, on_owned, &w[i]), 0);
    cr_assert_eq(aorm_owner_acquire(ow, on_owned_hold, &w[N]), 0);
    /* someone else's statement, queued behind: unaffected */
    t_rec other = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 3", NULL, NULL, t_rec_on_result, &other), 0);

    g_cancel_depth++;
    aorm_owner_cancel(ow);
    g_cancel_depth--;
    for (int i = 0; i <= N; i++) {
        cr_assert_eq(w[i].r.calls, 1, "owned %d called back %d times", i, w[i].r.calls);
        cr_assert_eq(w[i].r.code, AORM_ECANCELED, "owned %d: %s", i, aorm_errname(w[i].r.code));
        cr_assert(w[i].in_cancel, "owned %d was not called back from inside the cancel", i);
        cr_assert_eq(w[i].seq, i, "owned %d called back in position %d", i, w[i].seq);
    }
    free(w);
    cr_assert(wait_flag(f.evl, &other.calls, 10));
    cr_assert_eq(other.code, 0, "a statement of no owner: %s", aorm_errname(other.code));
    cr_assert(other.has_int && other.ival == 3);
    run_for(&f, 0.6); /* the server's late answer to the sleep is read and dropped */
    /* the owner stays usable */
    t_rec again = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 4", NULL, &xo, t_rec_on_result, &again), 0);
    cr_assert(wait_flag(f.evl, &again.calls, 10));
    cr_assert_eq(again.code, 0);
    aorm_owner_free(ow);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 0);
    fx_close(&f);
}

Test(engine_faults, owner_cancel_releases_its_transaction, .timeout = 60) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_owner_tx"));
    free(t_pg_exec(pg, "CREATE TABLE flt_owner_tx (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "owner_tx", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    aorm_owner *ow = aorm_owner_new(f.e);
    t_rec h = {0};
    cr_assert_eq(aorm_owner_acquire(ow, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    t_rec b = {0}, ins = {0};
    cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO flt_owner_tx VALUES (1)", NULL, NULL, t_rec_on_result, &ins), 0);
    cr_assert(wait_flag(f.evl, &ins.calls, 10));
    cr_assert_eq(ins.code, 0);
    /* queued, never sent: cancelled; a COMMIT never sent did not commit */
    t_rec more = {0}, commit = {0};
    cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO flt_owner_tx VALUES (2)", NULL, NULL, t_rec_on_result, &more), 0);
    cr_assert_eq(aorm_conn_commit(h.conn, t_rec_on_result, &commit), 0);
    aorm_owner_cancel(ow);
    cr_assert_eq(more.calls, 1);
    cr_assert_eq(more.code, AORM_ECANCELED, "%s", aorm_errname(more.code));
    cr_assert_eq(commit.calls, 1);
    cr_assert_eq(commit.code, AORM_ENOT_COMMITTED, "%s", aorm_errname(commit.code));
    /* the connection went back, rolled back: the next holder gets it clean */
    t_rec h2 = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    cr_assert(wait_flag(f.evl, &h2.calls, 10));
    cr_assert_eq(h2.code, 0, "%s", aorm_errname(h2.code));
    cr_assert_eq(aorm_conn_tx_status(h2.conn), AORM_TX_IDLE);
    aorm_conn_release(h2.conn);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_owner_tx"), 0);
    run_for(&f, 0.05);
    cr_assert_eq(b.calls, 1);
    cr_assert_eq(ins.calls, 1);
    aorm_owner_free(ow);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_owner_tx"));
    PQfinish(pg);
}

typedef struct owner_close {
    int calls;
    int engine_gone;
} owner_close;

static void on_owner_close(aorm_owner *o, void *user) {
    owner_close *x = user;
    x->calls++;
    x->engine_gone = aorm_owner_engine(o) == NULL;
}

Test(engine_faults, owner_outlives_its_engine, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "owner_orphan", NULL);
    fx_engine(&f, &o);
    aorm_owner *ow = aorm_owner_new(f.e);
    owner_close cl = {0};
    aorm_owner_on_close(ow, on_owner_close, &cl);
    t_rec r = {0};
    aorm_exec_options xo = {.owner = ow};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(0.2)", NULL, &xo, t_rec_on_result, &r), 0);
    run_for(&f, 0.05);
    aorm_engine_free(f.e);
    f.e = NULL;
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(r.code, AORM_ECANCELED);
    cr_assert_eq(cl.calls, 1);
    cr_assert(cl.engine_gone);
    cr_assert_null(aorm_owner_engine(ow));
    cr_assert_eq(aorm_owner_acquire(ow, t_rec_on_conn, NULL), AORM_ECLOSED);
    aorm_owner_cancel(ow); /* a no-op now */
    aorm_owner_free(ow);
    fx_close(&f);
}

/* Freed from inside the callback of its own statement, mid-cancel. */
typedef struct self_free {
    aorm_owner *ow;
    int calls;
} self_free;

static void on_self_free(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    self_free *x = user;
    if (x->calls++ == 0) aorm_owner_free(x->ow);
}

Test(engine_faults, owner_freed_inside_its_callback, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "owner_self", NULL);
    fx_engine(&f, &o);
    aorm_owner *ow = aorm_owner_new(f.e);
    self_free x[3] = {{ow, 0}, {ow, 0}, {ow, 0}};
    aorm_exec_options xo = {.owner = ow};
    for (int i = 0; i < 3; i++) cr_assert_eq(aorm_engine_execute(f.e, "SELECT 1", NULL, &xo, on_self_free, &x[i]), 0);
    aorm_owner_cancel(ow); /* the first callback frees the owner; the others still run once */
    for (int i = 0; i < 3; i++) cr_assert_eq(x[i].calls, 1);
    run_for(&f, 0.1);
    for (int i = 0; i < 3; i++) cr_assert_eq(x[i].calls, 1);
    fx_close(&f);
}

/* Several statements of one owner time out waiting for the pool in the
 * same timer run; the first one's callback frees the owner. The others
 * are answered once each (cancelled by the owner), in submission order,
 * and nothing reads the freed ops (ASan). */
typedef struct expire_free {
    aorm_owner *ow;
    int *next;
    int calls, code, seq;
} expire_free;

static void on_expire_free(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    expire_free *x = user;
    x->calls++;
    x->code = err ? err->code : 0;
    x->seq = (*x->next)++;
    if (x->ow) aorm_owner_free(x->ow);
}

Test(engine_faults, owner_freed_by_a_pool_timeout_callback, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "owner_expire_free", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.pool_timeout = 0.3;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    cr_assert_eq(warm.code, 0);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0); /* the only connection */
    cr_assert(wait_flag(f.evl, &h.calls, 5));
    cr_assert_eq(h.code, 0);

    aorm_owner *ow = aorm_owner_new(f.e);
    enum { N = 4 };
    int next = 0;
    expire_free x[N];
    memset(x, 0, sizeof(x));
    aorm_exec_options xo = {.owner = ow};
    for (int i = 0; i < N; i++) {
        x[i].next = &next;
        x[i].ow = i == 0 ? ow : NULL;
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT 2", NULL, &xo, on_expire_free, &x[i]), 0);
    }
    cr_assert(wait_flag(f.evl, &x[N - 1].calls, 5));
    run_for(&f, 0.1);
    cr_assert_eq(x[0].code, AORM_EPOOLTIMEOUT, "first: %s", aorm_errname(x[0].code));
    for (int i = 0; i < N; i++) {
        cr_assert_eq(x[i].calls, 1, "statement %d called back %d times", i, x[i].calls);
        cr_assert_eq(x[i].seq, i, "statement %d called back in position %d", i, x[i].seq);
        if (i > 0) cr_assert_eq(x[i].code, AORM_ECANCELED, "statement %d: %s", i, aorm_errname(x[i].code));
    }
    aorm_conn_release(h.conn);
    t_rec after = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 3", NULL, NULL, t_rec_on_result, &after), 0);
    cr_assert(wait_flag(f.evl, &after.calls, 5));
    cr_assert_eq(after.code, 0);
    fx_close(&f);
}
/* While the server is down, queued work waits for the pool to reconnect
 * (up to its pool timeout) instead of failing at the first refused
 * attempt; when the server is back, all of it runs. */
Test(engine_faults, work_waits_for_reconnect, .timeout = 90) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "wait_reconnect", NULL);
    o.pool_size = 2;
    o.pool_timeout = 30;
    o.reconnect_max = 0.5;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    cr_assert_eq(warm.code, 0);

    t_sandbox("stop-pg"); /* blocking: the loop is not running meanwhile */
    enum { N = 20 };
    t_rec r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) cr_assert_eq(aorm_engine_execute(f.e, "SELECT 42", NULL, NULL, t_rec_on_result, &r[i]), 0);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    run_for(&f, 1.5); /* refused attempts meanwhile */
    aorm_engine_stats s = t_stats(f.e);
    cr_assert(s.connect_failures >= 1, "no reconnect attempt while the server was down");
    for (int i = 0; i < N; i++)
        cr_assert_eq(r[i].calls, 0, "statement %d failed while the pool was reconnecting: %s [%s] %s", i,
                     aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
    cr_assert_eq(h.calls, 0, "the acquire failed while the pool was reconnecting: %s", aorm_errname(h.code));

    t_sandbox("start-pg");
    cr_assert(t_rec_wait_all(f.evl, r, N, 20), "the queued statements did not run after the server came back");
    cr_assert(wait_flag(f.evl, &h.calls, 20));
    for (int i = 0; i < N; i++)
        cr_assert(r[i].code == 0 && r[i].has_int && r[i].ival == 42, "statement %d: %s [%s] %s", i,
                  aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
    cr_assert_eq(h.code, 0);
    aorm_conn_release(h.conn);
    run_for(&f, 0.1);
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].calls, 1);
    cr_assert_eq(h.calls, 1);
    fx_close(&f);
}

/* Head-of-line blocking: on a warm pool, slow statements each get their
 * own connection, and a fast one queued after them runs on a free one. */
Test(engine_faults, statements_spread_over_idle_connections, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "spread", NULL);
    o.pool_size = 6;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    cr_assert_eq(aorm_engine_warm(f.e), 0);
    double until = t_mono() + 10;
    while (t_stats(f.e).idle < 6 && t_mono() < until) run_for(&f, 0.02);
    cr_assert_eq(t_stats(f.e).idle, 6, "the pool did not warm up");

    /* twice: first with statements the engine has never seen, then with
     * the same ones known (the slow ones as slow, the fast one as fast) */
    for (int round = 0; round < 2; round++) {
        enum { SLOW = 5 };
        t_rec slow[SLOW], fast = {0};
        memset(slow, 0, sizeof(slow));
        double t0 = t_mono();
        for (int i = 0; i < SLOW; i++)
            cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(1)", NULL, NULL, t_rec_on_result, &slow[i]), 0);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT 5", NULL, NULL, t_rec_on_result, &fast), 0);
        cr_assert(wait_flag(f.evl, &fast.calls, 10));
        cr_assert_eq(fast.code, 0);
        cr_assert(fast.at - t0 < 0.5, "round %d: a fast statement waited %.2f s behind slow ones", round,
                  fast.at - t0);
        cr_assert(t_rec_wait_all(f.evl, slow, SLOW, 10));
        for (int i = 0; i < SLOW; i++) {
            cr_assert_eq(slow[i].code, 0);
            cr_assert(slow[i].at - t0 < 1.8, "round %d: slow statement %d finished after %.2f s: they ran one after "
                      "another", round, i, slow[i].at - t0);
        }
    }
    /* (that short statements still share pipelines is a throughput
     * property, measured by bench/ engine_pk_concurrent against the raw
     * pipelined ceiling: how many share depends on this machine's timing) */
    fx_close(&f);
}

/* Deadlines stop their own statement only: 50 callers pipeline 1,000
 * statements over two connections, one in ten with a deadline it cannot
 * meet; every statement without a deadline succeeds with its own answer. */
Test(engine_faults, deadlines_hit_only_their_own_statement, .timeout = 120) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "deadline_mix", NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    enum { CALLERS = 50, EACH = 20, N = CALLERS * EACH };
    t_rec *r = calloc(N, sizeof(*r));
    cr_assert_not_null(r);
    for (int round = 0; round < 2; round++) {
        memset(r, 0, N * sizeof(*r));
        for (int c = 0; c < CALLERS; c++) {
            for (int k = 0; k < EACH; k++) {
                int i = c * EACH + k;
                aorm_params p;
                aorm_params_init(&p);
                if (i % 10 == 3) {
                    /* 5 to 25 ms of budget for 30 ms of work: it will time out, at
                     * various points of the others' pipeline */
                    aorm_exec_options xo = {.deadline = 0.005 + 0.001 * (i % 21)};
                    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(0.03)", NULL, &xo, t_rec_on_result, &r[i]), 0);
                } else {
                    aorm_params_int4(&p, i);
                    aorm_exec_options xo = {.flags = (i % 2) ? AORM_EXEC_READONLY : 0};
                    cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4 * 2", &p, &xo, t_rec_on_result, &r[i]), 0);
                }
                aorm_params_free(&p);
            }
        }
        cr_assert(t_rec_wait_all(f.evl, r, N, 60), "round %d: not every statement was called back", round);
        run_for(&f, 0.2);
        int timeouts = 0;
        for (int i = 0; i < N; i++) {
            cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
            if (i % 10 == 3) {
                cr_assert(r[i].code == AORM_ETIMEOUT || r[i].code == 0, "deadline statement %d: %s [%s] %s", i,
                          aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
                timeouts += r[i].code == AORM_ETIMEOUT;
                continue;
            }
            cr_assert_eq(r[i].code, 0, "round %d: statement %d without a deadline failed: %s [%s] %s", round, i,
                         aorm_errname(r[i].code), r[i].sqlstate, r[i].msg);
            cr_assert(r[i].has_int && r[i].ival == 2 * i, "statement %d got %lld", i, (long long)r[i].ival);
        }
        cr_assert(timeouts >= N / 20, "round %d: only %d deadlines expired", round, timeouts);
    }
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 0);
    cr_assert_eq(s.discarded, 0);
    free(r);
    fx_close(&f);
}

/* On a held connection the holder's COMMIT, pipelined right behind a
 * statement that barely meets its deadline, always commits. */
Test(engine_faults, deadline_never_hits_the_commit_behind, .timeout = 120) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_dl_commit"));
    free(t_pg_exec(pg, "CREATE TABLE flt_dl_commit (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "deadline_commit", NULL);
    o.pool_size = 1;
    fx_engine(&f, &o);
    enum { ROUNDS = 40 };
    int committed = 0;
    for (int i = 0; i < ROUNDS; i++) {
        t_rec h = {0};
        cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
        cr_assert(wait_flag(f.evl, &h.calls, 10));
        cr_assert_eq(h.code, 0);
        t_rec b = {0}, ins = {0}, close = {0}, commit = {0};
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, i);
        cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
        cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO flt_dl_commit VALUES ($1)", &p, NULL, t_rec_on_result, &ins), 0);
        /* 20 ms of work against a 20-22 ms deadline: finishes just before or just after it */
        aorm_exec_options xo = {.deadline = 0.020 + 0.0001 * (i % 20)};
        cr_assert_eq(aorm_conn_execute(h.conn, "SELECT pg_sleep(0.019)", NULL, &xo, t_rec_on_result, &close), 0);
        cr_assert_eq(aorm_conn_commit(h.conn, t_rec_on_result, &commit), 0);
        aorm_params_free(&p);
        cr_assert(wait_flag(f.evl, &commit.calls, 10));
        if (close.code == 0) {
            cr_assert_eq(commit.code, 0, "round %d: the statement met its deadline but COMMIT failed: %s [%s] %s", i,
                         aorm_errname(commit.code), commit.sqlstate, commit.msg);
            committed++;
        } else {
            /* the caller heard ETIMEOUT at its deadline; the server either
             * finished it anyway (COMMIT commits) or stopped it (the
             * transaction is aborted and COMMIT says so) */
            cr_assert_eq(close.code, AORM_ETIMEOUT, "round %d: %s", i, aorm_errname(close.code));
            cr_assert(commit.code == 0 || (commit.code == AORM_ESERVER && strcmp(commit.sqlstate, "25P02") == 0),
                      "round %d: COMMIT after a timed-out statement: %s [%s] %s", i, aorm_errname(commit.code),
                      commit.sqlstate, commit.msg);
            committed += commit.code == 0;
        }
        aorm_conn_release(h.conn);
    }
    run_for(&f, 0.1);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_dl_commit"), committed);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_dl_commit"));
    PQfinish(pg);
}

/* A held connection's prepared statement whose plan went stale runs again
 * on that same connection (it sees the holder's temporary table), or, in
 * a transaction block the error aborted, fails there: it never moves to
 * another backend. */
Test(engine_faults, stale_plan_on_held_connection_stays_there, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "stale_held", NULL);
    o.pool_size = 3;
    fx_engine(&f, &o);
    cr_assert_eq(aorm_engine_warm(f.e), 0);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    aorm_exec_options raw = {.flags = AORM_EXEC_UNPREPARED};
    t_rec r;
    conn_sql(&f, h.conn, "CREATE TEMP TABLE flt_stale (a int)", &raw, &r);
    cr_assert_eq(r.code, 0, "%s", r.msg);
    conn_sql(&f, h.conn, "INSERT INTO flt_stale VALUES (5)", &raw, &r);
    cr_assert_eq(r.code, 0, "%s", r.msg);
    t_rec a;
    conn_sql(&f, h.conn, "SELECT * FROM flt_stale", NULL, &a); /* prepared and cached */
    cr_assert_eq(a.code, 0, "%s", a.msg);
    cr_assert(a.has_int && a.ival == 5);
    conn_sql(&f, h.conn, "ALTER TABLE flt_stale ADD COLUMN b int DEFAULT 6", &raw, &r);
    cr_assert_eq(r.code, 0, "%s", r.msg);
    t_rec again;
    conn_sql(&f, h.conn, "SELECT * FROM flt_stale", NULL, &again);
    cr_assert_eq(again.code, 0, "the re-prepared statement: %s [%s] %s", aorm_errname(again.code), again.sqlstate,
                 again.msg);
    cr_assert(again.has_int && again.ival == 5);

    /* the same inside a raw transaction block: the error aborted it */
    conn_sql(&f, h.conn, "BEGIN", &raw, &r);
    cr_assert_eq(r.code, 0);
    conn_sql(&f, h.conn, "ALTER TABLE flt_stale ADD COLUMN c int", &raw, &r);
    cr_assert_eq(r.code, 0, "%s", r.msg);
    t_rec in_tx;
    conn_sql(&f, h.conn, "SELECT * FROM flt_stale", NULL, &in_tx);
    cr_assert_eq(in_tx.code, AORM_ESERVER, "inside the block: %s [%s] %s", aorm_errname(in_tx.code), in_tx.sqlstate,
                 in_tx.msg);
    cr_assert_str_eq(in_tx.sqlstate, "0A000");
    cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_INERROR);
    t_rec rb = {0};
    cr_assert_eq(aorm_conn_rollback(h.conn, t_rec_on_result, &rb), 0);
    cr_assert(wait_flag(f.evl, &rb.calls, 10));
    cr_assert_eq(rb.code, 0);
    aorm_conn_release(h.conn);
    run_for(&f, 0.1);
    fx_close(&f);
}

/* More writers than pool_size: overflow connections are reused, not
 * opened and closed for every transaction, and the pool says so. */
typedef struct writer {
    aorm_engine *e;
    int left, done, failed;
    aorm_conn *c;
} writer;

static void writer_next(writer *w);

static void on_writer_commit(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    writer *w = user;
    if (err) w->failed++;
    aorm_conn_release(w->c);
    w->c = NULL;
    w->done++;
    writer_next(w);
}

static void on_writer_ins(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    writer *w = user;
    if (err) w->failed++;
}

static void on_writer_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    writer *w = user;
    if (err) {
        w->failed++;
        w->done++;
        writer_next(w);
        return;
    }
    w->c = c;
    int rc = aorm_conn_begin(c, NULL, on_writer_ins, w);
    rc |= aorm_conn_execute(c, "INSERT INTO flt_churn VALUES (1)", NULL, NULL, on_writer_ins, w);
    rc |= aorm_conn_commit(c, on_writer_commit, w);
    if (rc) w->failed++;
}

static void writer_next(writer *w) {
    if (w->left-- <= 0) return;
    if (aorm_engine_acquire(w->e, on_writer_conn, w) != 0) w->failed++;
}

typedef struct log_tally {
    int churn, waits;
} log_tally;

static void on_tally_log(aorm_log_level lvl, const char *msg, void *user) {
    log_tally *t = user;
    if (lvl == AORM_LOG_WARN && strstr(msg, "churn")) t->churn++;
    if (lvl == AORM_LOG_WARN && strstr(msg, "waited for a connection")) t->waits++;
}

static int writers_done(void *arg) {
    writer *w = arg;
    for (int i = 0; i < 8; i++)
        if (w[i].left > 0 || w[i].c) return 0;
    return 1;
}

Test(engine_faults, overflow_connections_are_reused, .timeout = 90) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_churn"));
    free(t_pg_exec(pg, "CREATE TABLE flt_churn (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "churn", NULL);
    o.pool_size = 2;
    o.max_overflow = 6;
    log_tally tally = {0};
    o.log = on_tally_log;
    o.log_user = &tally;
    fx_engine(&f, &o);
    enum { WRITERS = 8, EACH = 50 };
    writer w[WRITERS];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < WRITERS; i++) {
        w[i].e = f.e;
        w[i].left = EACH;
        writer_next(&w[i]);
    }
    cr_assert(t_run_until_prompt(f.evl, writers_done, w, 60), "the writers did not finish");
    run_for(&f, 0.1);
    int total = 0;
    for (int i = 0; i < WRITERS; i++) {
        cr_assert_eq(w[i].failed, 0, "writer %d: %d failures", i, w[i].failed);
        total += w[i].done;
    }
    cr_assert_eq(total, WRITERS * EACH);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_churn"), WRITERS * EACH);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert(s.connects <= WRITERS, "%llu connections opened for %d writers: churn", (unsigned long long)s.connects,
              WRITERS);
    cr_assert(s.overflow_opened >= 1 && s.overflow_opened <= WRITERS - 2, "overflow_opened = %llu",
              (unsigned long long)s.overflow_opened);
    cr_assert_eq(s.overflow_closed, 0, "overflow connections were closed while still in use");
    cr_assert_eq(tally.churn, 1, "churn warnings: %d (rate-limited: one expected)", tally.churn);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_churn"));
    PQfinish(pg);
}

/* A prepared statement evicted from the cache while its connection's
 * transaction has failed is deallocated after the rollback, not leaked
 * for the life of the connection. */
Test(engine_faults, dealloc_after_failed_transaction, .timeout = 60) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "dealloc_fail", NULL);
    o.pool_size = 1;
    o.prepared_cache_size = 2;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    t_rec r;
    t_rec b = {0};
    cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
    conn_sql(&f, h.conn, "SELECT 1 AS a", NULL, &r);
    conn_sql(&f, h.conn, "SELECT 2 AS b", NULL, &r);
    conn_sql(&f, h.conn, "SELECT 1/0", NULL, &r); /* evicts the first; the transaction fails */
    cr_assert_eq(r.code, AORM_ESERVER);
    for (int i = 0; i < 4; i++) {
        char sql[64];
        snprintf(sql, sizeof(sql), "SELECT %d AS c%d", 10 + i, i); /* more evictions, all refused */
        conn_sql(&f, h.conn, sql, NULL, &r);
        cr_assert_eq(r.code, AORM_ESERVER, "%s", r.msg);
    }
    t_rec rb = {0};
    cr_assert_eq(aorm_conn_rollback(h.conn, t_rec_on_result, &rb), 0);
    cr_assert(wait_flag(f.evl, &rb.calls, 10));
    cr_assert_eq(rb.code, 0);
    aorm_exec_options raw = {.flags = AORM_EXEC_UNPREPARED};
    conn_sql(&f, h.conn, "SELECT 1", NULL, &r); /* a turn that sends the pending DEALLOCATEs */
    run_for(&f, 0.05);
    t_rec n;
    conn_sql(&f, h.conn, "SELECT count(*) FROM pg_prepared_statements", &raw, &n);
    cr_assert_eq(n.code, 0, "%s", n.msg);
    cr_assert(n.ival <= 2, "%lld prepared statements on a connection whose cache holds 2", (long long)n.ival);
    aorm_conn_release(h.conn);
    fx_close(&f);
}

/* A backend terminated while its connection looked idle: its FATAL is
 * still on the way (held back here by the proxy) when the next statement,
 * a fresh one, goes out with its PREPARE. The FATAL arrives as the
 * PREPARE's answer: the statement hears a connection loss (which retry
 * logic keys on), not a server error, and the pool heals. */
Test(engine_faults, fatal_answering_a_prepare_is_a_loss, .timeout = 60) {
    fproxy *px = fp_start_dsn(t_dsn());
    cr_assert_not_null(px);
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "fatal_prepare", NULL);
    char *via = fp_conninfo(px, f.conninfo, NULL);
    cr_assert_not_null(via);
    o.conninfo = via;
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    cr_assert_eq(warm.code, 0, "%s", warm.msg);

    PGconn *pg = t_pg();
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT pid FROM pg_stat_activity WHERE application_name = '%s' AND state = 'idle' "
             "AND backend_type = 'client backend' LIMIT 1", f.app);
    char *v = t_pg_exec(pg, sql);
    cr_assert_not_null(v, "the engine's idle backend was not found");
    long pid = strtol(v, NULL, 10);
    free(v);
    /* the server's goodbye is held back, and what the engine sends next
     * never reaches the closed backend (its refusal would close the
     * proxied connection before the goodbye is read) */
    fp_stall_live(px, FP_BOTH);
    t_pg_terminate(pg, pid);

    t_rec r = {0}, behind = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 77 AS fresh", NULL, NULL, t_rec_on_result, &r), 0);
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 78 AS fresh2", NULL, NULL, t_rec_on_result, &behind), 0);
    run_for(&f, 0.2); /* sent, Parse first */
    cr_assert_eq(r.calls, 0);
    fp_stall_live(px, FP_UP); /* the goodbye now arrives, as the answer to the PREPARE */
    cr_assert(wait_flag(f.evl, &r.calls, 10));
    cr_assert(wait_flag(f.evl, &behind.calls, 10));
    cr_assert_eq(r.code, AORM_ECONNLOST, "the statement met by the FATAL: %s [%s] %s", aorm_errname(r.code),
                 r.sqlstate, r.msg);
    cr_assert_eq(behind.code, AORM_ECONNLOST, "%s [%s] %s", aorm_errname(behind.code), behind.sqlstate, behind.msg);
    /* and the pool heals */
    t_rec after;
    run_sql(&f, "SELECT 79", &after, 20);
    cr_assert_eq(after.code, 0, "after the loss: %s [%s] %s", aorm_errname(after.code), after.sqlstate, after.msg);
    run_for(&f, 0.1);
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(behind.calls, 1);
    PQfinish(pg);
    fx_close(&f);
    free(via);
    fp_stop(px);
}

/* A COPY fill callback that frees the engine: the COPY is called back
 * once, cancelled, and nothing reads the freed COPY state. */
typedef struct copy_free {
    aorm_engine *e;
    int fills;
} copy_free;

static int fill_and_free(aorm_copy *cp, void *user) {
    copy_free *x = user;
    x->fills++;
    aorm_copy_row(cp, 1);
    aorm_copy_int4(cp, 1);
    aorm_engine_free(x->e);
    return 1;
}

Test(engine_faults, copy_fill_frees_the_engine, .timeout = 60) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_copy_free"));
    free(t_pg_exec(pg, "CREATE TABLE flt_copy_free (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "copy_free", NULL);
    fx_engine(&f, &o);
    copy_free x = {.e = f.e};
    t_rec r = {0};
    cr_assert_eq(aorm_engine_copy(f.e, "COPY flt_copy_free (v) FROM STDIN (FORMAT binary)", fill_and_free, &x, t_rec_on_result,
                                  &r),
                 0);
    cr_assert(wait_flag(f.evl, &r.calls, 10));
    f.e = NULL; /* freed by the fill callback */
    run_for(&f, 0.1);
    cr_assert_eq(x.fills, 1);
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(r.code, AORM_ECANCELED, "%s", aorm_errname(r.code));
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_copy_free"), 0);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_copy_free"));
    PQfinish(pg);
}

/* Freeing the engine while one COMMIT runs on the server and another
 * waits, unsent, behind a slow statement: the first outcome is unknown,
 * the second did not commit. Outcome by rule, not by path. */
static int commit_running(void *arg) {
    void **a = arg;
    fx *f = a[0];
    PGconn *pg = a[1];
    char sql[512];
    activity_sql(sql, sizeof(sql), f, "AND state = 'active' AND query = 'COMMIT'");
    return t_pg_long(pg, sql) == 1;
}

Test(engine_faults, commit_outcomes_at_engine_free, .timeout = 60) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_commit_free"));
    free(t_pg_exec(pg, "CREATE TABLE flt_commit_free (v int)"));
    free(t_pg_exec(pg, "CREATE OR REPLACE FUNCTION flt_slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$"));
    free(t_pg_exec(pg, "CREATE CONSTRAINT TRIGGER flt_slow AFTER INSERT ON flt_commit_free DEFERRABLE INITIALLY "
                       "DEFERRED FOR EACH ROW WHEN (NEW.v = 1) EXECUTE FUNCTION flt_slow_commit()"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "commit_free", NULL);
    o.pool_size = 2;
    fx_engine(&f, &o);
    t_rec h1 = {0}, h2 = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h1), 0);
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    t_rec *hs[] = {&h1, &h2, NULL};
    cr_assert(t_run_until_prompt(f.evl, t_recs_called, hs, 10));
    cr_assert(h1.code == 0 && h2.code == 0);
    t_rec b1 = {0}, i1 = {0}, c1 = {0}, b2 = {0}, i2 = {0}, slow = {0}, c2 = {0};
    cr_assert_eq(aorm_conn_begin(h1.conn, NULL, t_rec_on_result, &b1), 0);
    cr_assert_eq(aorm_conn_execute(h1.conn, "INSERT INTO flt_commit_free VALUES (1)", NULL, NULL, t_rec_on_result, &i1), 0);
    cr_assert_eq(aorm_conn_commit(h1.conn, t_rec_on_result, &c1), 0);
    cr_assert_eq(aorm_conn_begin(h2.conn, NULL, t_rec_on_result, &b2), 0);
    cr_assert_eq(aorm_conn_execute(h2.conn, "INSERT INTO flt_commit_free VALUES (2)", NULL, NULL, t_rec_on_result, &i2), 0);
    cr_assert(wait_flag(f.evl, &i2.calls, 10));
    cr_assert_eq(aorm_conn_execute(h2.conn, "SELECT pg_sleep(3)", NULL, NULL, t_rec_on_result, &slow), 0);
    void *a[] = {&f, pg};
    cr_assert(t_run_until_prompt(f.evl, commit_running, a, 10), "the first COMMIT never started on the server");
    /* queued after the slow statement had gone out: never sent */
    cr_assert_eq(aorm_conn_commit(h2.conn, t_rec_on_result, &c2), 0);
    aorm_engine_free(f.e);
    f.e = NULL;
    cr_assert_eq(c1.calls, 1);
    cr_assert_eq(c1.code, AORM_EUNKNOWN_OUTCOME, "the running COMMIT: %s", aorm_errname(c1.code));
    cr_assert_str_eq(c1.sqlstate, "08007");
    cr_assert_eq(c2.calls, 1);
    cr_assert_eq(c2.code, AORM_ENOT_COMMITTED, "the unsent COMMIT: %s", aorm_errname(c2.code));
    cr_assert_eq(slow.calls, 1);
    cr_assert_eq(slow.code, AORM_ECANCELED);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_commit_free"));
    free(t_pg_exec(pg, "DROP FUNCTION flt_slow_commit()"));
    PQfinish(pg);
}

/* ============================================================================
 * 9. Found in review: callbacks that free what the engine is still using,
 *    and promises kept when something else happens first
 * ========================================================================== */

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

/* Sanitizer builds: everything the test allocated is freed by now (a
 * worker's LeakSanitizer report at exit fails nothing, so the check runs
 * while the test does). */
static void rv_no_leaks(void) {
#ifdef __SANITIZE_ADDRESS__
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "memory leaked: see the LeakSanitizer report above");
#endif
}

/* The engine's PQpipelineSync calls reach libpq through this wrapper (the
 * binary is linked with --wrap=PQpipelineSync): while g_fail_syncs > 0,
 * a sync fails the way libpq refuses one on a connection that has gone
 * bad between two sends. */
static int g_fail_syncs;
int __real_PQpipelineSync(PGconn *conn);
int __wrap_PQpipelineSync(PGconn *conn);
int __wrap_PQpipelineSync(PGconn *conn) {
    if (g_fail_syncs > 0) {
        g_fail_syncs--;
        return 0;
    }
    return __real_PQpipelineSync(conn);
}

/* A statement whose callback frees the engine. */
typedef struct rv_freer {
    t_rec r;
    fx *f;
} rv_freer;

static void on_rv_free_engine(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    rv_freer *x = user;
    t_rec_take(&x->r, res, err);
    t_rec_mark = 1;
    aorm_engine_free(e);
    t_rec_mark = 0;
    x->f->e = NULL;
}

/* A deadline expires and the statement's callback frees the engine: the
 * timer that delivered it reads neither the statement nor the engine
 * again, and the statement behind it is cancelled once, inside the free.
 * On a shared connection and on a held one. */
Test(engine_faults, review_deadline_callback_frees_the_engine, .timeout = 30) {
    for (int held = 0; held < 2; held++) {
        fx f;
        aorm_engine_options o;
        fx_init(&f, &o, held ? "rv_dlfree_held" : "rv_dlfree", NULL);
        o.pool_size = 1;
        o.max_overflow = 0;
        fx_engine(&f, &o);
        t_rec h = {0};
        t_rec warm;
        if (held) {
            cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
            cr_assert(wait_flag(f.evl, &h.calls, 10));
            cr_assert_eq(h.code, 0);
            conn_sql(&f, h.conn, "SELECT 1", NULL, &warm);
        } else {
            run_sql(&f, "SELECT 1", &warm, 10);
        }
        cr_assert_eq(warm.code, 0);

        rv_freer x = {.f = &f};
        t_rec behind = {0};
        aorm_exec_options xo = {.deadline = 0.2};
        double t0 = t_mono();
        if (held) {
            cr_assert_eq(aorm_conn_execute(h.conn, "SELECT pg_sleep(1)", NULL, &xo, on_rv_free_engine, &x), 0);
            cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 2", NULL, NULL, t_rec_on_result, &behind), 0);
        } else {
            cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(1)", NULL, &xo, on_rv_free_engine, &x), 0);
            cr_assert_eq(aorm_engine_execute(f.e, "SELECT 2", NULL, NULL, t_rec_on_result, &behind), 0);
        }
        cr_assert(wait_flag(f.evl, &x.r.calls, 5), "%s: the deadline never expired", held ? "held" : "shared");
        cr_assert_null(f.e, "the callback did not free the engine");
        cr_assert_eq(x.r.code, AORM_ETIMEOUT, "%s: %s [%s] %s", held ? "held" : "shared", aorm_errname(x.r.code),
                     x.r.sqlstate, x.r.msg);
        cr_assert_str_eq(x.r.sqlstate, "57014");
        cr_assert(x.r.at - t0 >= 0.19 && x.r.at - t0 < 1.0, "a deadline of 0.2 s expired after %.3f s",
                  x.r.at - t0);
        cr_assert_eq(behind.calls, 1, "%s: the statement behind was called back %d times", held ? "held" : "shared",
                     behind.calls);
        cr_assert_eq(behind.code, AORM_ECANCELED, "%s: the statement behind: %s", held ? "held" : "shared",
                     aorm_errname(behind.code));
        cr_assert(behind.mark, "the statement behind was not called back from inside the free");
        run_for(&f, 1.0); /* past the end of the sleep: nothing more is called */
        cr_assert_eq(x.r.calls, 1);
        cr_assert_eq(behind.calls, 1);
        fx_close(&f);
    }
    rv_no_leaks();
}

/* The close callback of an owner frees it. */
typedef struct rv_close {
    int calls;
    int engine_gone;
} rv_close;

static void on_rv_close_free_owner(aorm_owner *o, void *user) {
    rv_close *x = user;
    x->calls++;
    x->engine_gone = aorm_owner_engine(o) == NULL;
    aorm_owner_free(o);
}

/* aorm_owner_cancel() from outside any callback; the cancelled statement's
 * callback frees the engine, whose end calls the owner's close callback,
 * which frees the owner: the cancel reads none of them afterwards. With
 * the statement queued, then with it running on the server. */
Test(engine_faults, review_owner_cancel_frees_engine_and_owner, .timeout = 30) {
    for (int sent = 0; sent < 2; sent++) {
        fx f;
        aorm_engine_options o;
        fx_init(&f, &o, sent ? "rv_ownfree_sent" : "rv_ownfree", NULL);
        o.pool_size = 1;
        o.max_overflow = 0;
        fx_engine(&f, &o);
        t_rec warm;
        run_sql(&f, "SELECT 1", &warm, 10);
        cr_assert_eq(warm.code, 0);

        aorm_owner *ow = aorm_owner_new(f.e);
        cr_assert_not_null(ow);
        rv_close cl = {0};
        aorm_owner_on_close(ow, on_rv_close_free_owner, &cl);
        rv_freer x = {.f = &f};
        t_rec second = {0};
        aorm_exec_options xo = {.owner = ow};
        cr_assert_eq(aorm_engine_execute(f.e, sent ? "SELECT pg_sleep(0.3)" : "SELECT 1", NULL, &xo,
                                         on_rv_free_engine, &x),
                     0);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT 2", NULL, &xo, t_rec_on_result, &second), 0);
        if (sent) {
            uint64_t want = 2; /* the warm-up and the sleep */
            void *a[2] = {f.e, &want};
            cr_assert(t_run_until_prompt(f.evl, all_sent, a, 5), "the sleep was never sent");
            cr_assert_eq(x.r.calls, 0);
        }
        aorm_owner_cancel(ow); /* ow is freed by its close callback during this call */
        cr_assert_null(f.e, "the statement's callback did not free the engine");
        cr_assert_eq(x.r.calls, 1, "round %d: the first statement was called back %d times", sent, x.r.calls);
        cr_assert_eq(x.r.code, AORM_ECANCELED, "round %d: %s", sent, aorm_errname(x.r.code));
        cr_assert_eq(second.calls, 1, "round %d: the second statement was called back %d times", sent,
                     second.calls);
        cr_assert_eq(second.code, AORM_ECANCELED, "round %d: %s", sent, aorm_errname(second.code));
        cr_assert_eq(cl.calls, 1, "round %d: the close callback ran %d times", sent, cl.calls);
        cr_assert(cl.engine_gone);
        run_for(&f, 0.4);
        cr_assert_eq(x.r.calls, 1);
        cr_assert_eq(second.calls, 1);
        cr_assert_eq(cl.calls, 1);
        fx_close(&f);
    }
    rv_no_leaks();
}

/* A sync that libpq refuses on a shared connection: the connection is
 * lost under the dispatcher, which must not read it (nor the statement
 * the loss called back) again. The statement hears AORM_ECONNLOST once,
 * a statement on the other connection is unaffected, and the pool heals.
 * Round 0: a read-only statement, whose shared group is synced when the
 * turn's writes are closed; round 1: a statement with a sync group of its
 * own (synced as it is sent). */
Test(engine_faults, review_sync_failure_on_shared_connection, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_syncfail", NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    for (int round = 0; round < 2; round++) {
        warm_and_wait(&f, 2);
        uint64_t lost_before = t_stats(f.e).connections_lost;
        aorm_exec_options xo = {.flags = round ? 0 : AORM_EXEC_READONLY};
        t_rec lost = {0}, other = {0};
        g_fail_syncs = 1;
        cr_assert_eq(aorm_engine_execute(f.e, round ? "SELECT 11" : "SELECT 13", NULL, &xo, t_rec_on_result, &lost), 0);
        if (round == 1) cr_assert_eq(aorm_engine_execute(f.e, "SELECT 12", NULL, NULL, t_rec_on_result, &other), 0);
        cr_assert(wait_flag(f.evl, &lost.calls, 10), "round %d: the statement never came back", round);
        if (round == 1) cr_assert(wait_flag(f.evl, &other.calls, 10));
        cr_assert_eq(g_fail_syncs, 0, "round %d: no sync was made", round);
        cr_assert_eq(lost.code, AORM_ECONNLOST, "round %d: %s [%s] %s", round, aorm_errname(lost.code),
                     lost.sqlstate, lost.msg);
        cr_assert_str_eq(lost.sqlstate, "08006");
        if (round == 1) {
            cr_assert_eq(other.code, 0, "the statement on the other connection: %s [%s] %s",
                         aorm_errname(other.code), other.sqlstate, other.msg);
            cr_assert(other.has_int && other.ival == 12);
        }
        cr_assert_eq(t_stats(f.e).connections_lost, lost_before + 1);
        t_rec after;
        run_sql(&f, "SELECT 14", &after, 10);
        cr_assert_eq(after.code, 0, "round %d, after the loss: %s [%s] %s", round, aorm_errname(after.code),
                     after.sqlstate, after.msg);
        cr_assert(after.has_int && after.ival == 14);
        run_for(&f, 0.1);
        cr_assert_eq(lost.calls, 1, "round %d: called back %d times", round, lost.calls);
        if (round == 1) cr_assert_eq(other.calls, 1);
    }
    fx_close(&f);
    rv_no_leaks();
}

/* A held connection's statement whose callback releases the connection
 * on error (the usual handler). */
typedef struct rv_rel {
    t_rec r;
    aorm_conn **c;
    int *releases;
    int *next;
    int seq;
} rv_rel;

static void on_rv_release(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    rv_rel *x = user;
    t_rec_take(&x->r, res, err);
    x->seq = (*x->next)++;
    if (err && *x->c) {
        aorm_conn_release(*x->c);
        *x->c = NULL;
        (*x->releases)++;
    }
}

/* The same on a held connection: the loss calls back the holder's
 * statement, whose callback releases (and so frees) the broken
 * connection while the dispatcher is still sending on it. Both queued
 * statements hear AORM_ECONNLOST once, in order; the pool heals. */
Test(engine_faults, review_sync_failure_on_held_connection, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_syncfail_held", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.pool_timeout = 5;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    t_rec warm;
    conn_sql(&f, h.conn, "SELECT 1", NULL, &warm);
    cr_assert_eq(warm.code, 0);

    aorm_conn *c = h.conn;
    int releases = 0, next = 0;
    rv_rel q[2];
    memset(q, 0, sizeof(q));
    for (int i = 0; i < 2; i++) {
        q[i].c = &c;
        q[i].releases = &releases;
        q[i].next = &next;
    }
    g_fail_syncs = 1;
    cr_assert_eq(aorm_conn_execute(c, "SELECT 21", NULL, NULL, on_rv_release, &q[0]), 0);
    cr_assert_eq(aorm_conn_execute(c, "SELECT 22", NULL, NULL, on_rv_release, &q[1]), 0);
    cr_assert(wait_flag(f.evl, &q[1].r.calls, 10), "the second statement never came back");
    cr_assert_eq(g_fail_syncs, 0, "no sync was made");
    run_for(&f, 0.1);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(q[i].r.calls, 1, "statement %d called back %d times", i, q[i].r.calls);
        cr_assert_eq(q[i].r.code, AORM_ECONNLOST, "statement %d: %s [%s] %s", i, aorm_errname(q[i].r.code),
                     q[i].r.sqlstate, q[i].r.msg);
        cr_assert_str_eq(q[i].r.sqlstate, "08006");
        cr_assert_eq(q[i].seq, i, "statement %d called back in position %d", i, q[i].seq);
    }
    cr_assert_eq(releases, 1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.held, 0, "held = %d", s.held);
    cr_assert_eq(s.connections_lost, 1);

    /* the pool heals: autocommit work, and a new holder */
    t_rec after;
    run_sql(&f, "SELECT 23", &after, 10);
    cr_assert_eq(after.code, 0, "after the loss: %s [%s] %s", aorm_errname(after.code), after.sqlstate, after.msg);
    cr_assert(after.has_int && after.ival == 23);
    t_rec h2 = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    cr_assert(wait_flag(f.evl, &h2.calls, 10));
    cr_assert_eq(h2.code, 0, "acquire after the loss: %s", aorm_errname(h2.code));
    t_rec on_new;
    conn_sql(&f, h2.conn, "SELECT 24", NULL, &on_new);
    cr_assert(on_new.code == 0 && on_new.has_int && on_new.ival == 24);
    aorm_conn_release(h2.conn);
    run_for(&f, 0.05);
    cr_assert_eq(h.calls, 1);
    cr_assert_eq(h2.calls, 1);
    fx_close(&f);
    rv_no_leaks();
}

/* A statement with a deadline pipelined behind a long one without a
 * deadline: it times out at its deadline, and the long one, which the
 * server is still running, is not made to pay for it (the grace period
 * counts from when the server can have started the expired statement).
 * grace = max(5 s, connect_timeout) = 5 s < the 6 s sleep. */
Test(engine_faults, review_deadline_behind_long_statement, .timeout = 40) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_dl_behind", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.connect_timeout = 1;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    cr_assert_eq(warm.code, 0);

    t_rec slow = {0}, quick = {0};
    aorm_exec_options xo = {.deadline = 0.5};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(6)", NULL, NULL, t_rec_on_result, &slow), 0);
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 42", NULL, &xo, t_rec_on_result, &quick), 0);
    cr_assert(wait_flag(f.evl, &quick.calls, 5));
    cr_assert_eq(quick.code, AORM_ETIMEOUT, "the statement with the deadline: %s [%s] %s", aorm_errname(quick.code),
                 quick.sqlstate, quick.msg);
    cr_assert_str_eq(quick.sqlstate, "57014");
    cr_assert(quick.at - t0 >= 0.45 && quick.at - t0 < 1.5, "a deadline of 0.5 s expired after %.2f s",
              quick.at - t0);
    cr_assert(wait_flag(f.evl, &slow.calls, 10), "the long statement never came back");
    cr_assert_eq(slow.code, 0, "the long statement (no deadline) after %.2f s: %s [%s] %s", slow.at - t0,
                 aorm_errname(slow.code), slow.sqlstate, slow.msg);
    t_rec after;
    run_sql(&f, "SELECT 43", &after, 10);
    cr_assert(after.code == 0 && after.has_int && after.ival == 43, "after: %s", aorm_errname(after.code));
    run_for(&f, 0.1);
    cr_assert_eq(slow.calls, 1);
    cr_assert_eq(quick.calls, 1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 0);
    cr_assert_eq(s.discarded, 0);
    cr_assert_eq(s.connects, 1, "connects = %llu", (unsigned long long)s.connects);
    fx_close(&f);
}

/* The same inside a transaction on a held connection: the holder's long
 * statement, its transaction and its COMMIT survive a deadline of a
 * statement queued behind. */
Test(engine_faults, review_deadline_behind_long_statement_held, .timeout = 40) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_rv_long"));
    free(t_pg_exec(pg, "CREATE TABLE flt_rv_long (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_dl_behind_held", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.connect_timeout = 1;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);

    t_rec b = {0}, ins = {0}, slow = {0}, quick = {0}, commit = {0};
    aorm_exec_options xo = {.deadline = 0.5};
    double t0 = t_mono();
    cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO flt_rv_long VALUES (1)", NULL, NULL, t_rec_on_result, &ins), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT pg_sleep(6)", NULL, NULL, t_rec_on_result, &slow), 0);
    cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 42", NULL, &xo, t_rec_on_result, &quick), 0);
    cr_assert_eq(aorm_conn_commit(h.conn, t_rec_on_result, &commit), 0);
    cr_assert(wait_flag(f.evl, &quick.calls, 5));
    cr_assert_eq(quick.code, AORM_ETIMEOUT, "%s [%s] %s", aorm_errname(quick.code), quick.sqlstate, quick.msg);
    cr_assert(quick.at - t0 >= 0.45 && quick.at - t0 < 1.5, "a deadline of 0.5 s expired after %.2f s",
              quick.at - t0);
    cr_assert(wait_flag(f.evl, &commit.calls, 10), "the COMMIT never came back");
    cr_assert_eq(slow.code, 0, "the long statement (no deadline) after %.2f s: %s [%s] %s", slow.at - t0,
                 aorm_errname(slow.code), slow.sqlstate, slow.msg);
    cr_assert_eq(b.code, 0, "BEGIN: %s [%s] %s", aorm_errname(b.code), b.sqlstate, b.msg);
    cr_assert_eq(ins.code, 0, "INSERT: %s [%s] %s", aorm_errname(ins.code), ins.sqlstate, ins.msg);
    cr_assert_eq(commit.code, 0, "COMMIT: %s [%s] %s", aorm_errname(commit.code), commit.sqlstate, commit.msg);
    cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_IDLE);
    run_for(&f, 0.1);
    cr_assert(b.calls == 1 && ins.calls == 1 && slow.calls == 1 && quick.calls == 1 && commit.calls == 1);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_rv_long"), 1);
    aorm_conn_release(h.conn);
    run_for(&f, 0.05);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 0);
    cr_assert_eq(s.discarded, 0);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_rv_long"));
    PQfinish(pg);
}

/* The only connection is promised to an acquire that then goes away
 * (cancelled with its owner; timed out): the connection comes back into
 * rotation, and autocommit work after it runs at once. */
Test(engine_faults, review_reservation_of_cancelled_acquire, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_reserve_cancel", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.pool_timeout = 2;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    cr_assert_eq(warm.code, 0);

    t_rec busy = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(0.5)", NULL, NULL, t_rec_on_result, &busy), 0);
    uint64_t want = 2;
    void *a[2] = {f.e, &want};
    cr_assert(t_run_until_prompt(f.evl, all_sent, a, 5), "the sleep was never sent");
    aorm_owner *ow = aorm_owner_new(f.e);
    cr_assert_not_null(ow);
    t_rec h = {0};
    cr_assert_eq(aorm_owner_acquire(ow, t_rec_on_conn, &h), 0);
    run_for(&f, 0.1); /* a dispatch reserves the busy connection for it */
    cr_assert_eq(h.calls, 0);
    cr_assert_eq(t_stats(f.e).waiting, 1);
    aorm_owner_cancel(ow);
    cr_assert_eq(h.calls, 1);
    cr_assert_eq(h.code, AORM_ECANCELED, "the cancelled acquire: %s", aorm_errname(h.code));
    cr_assert_null(h.conn);
    cr_assert(wait_flag(f.evl, &busy.calls, 5));
    cr_assert_eq(busy.code, 0);

    t_rec next = {0};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 2", NULL, NULL, t_rec_on_result, &next), 0);
    cr_assert(wait_flag(f.evl, &next.calls, 5));
    cr_assert_eq(next.code, 0, "a statement after the cancelled acquire: %s [%s] %s", aorm_errname(next.code),
                 next.sqlstate, next.msg);
    cr_assert(next.has_int && next.ival == 2);
    cr_assert(next.at - t0 < 0.5, "it waited %.2f s for the idle connection", next.at - t0);
    /* and the connection can be acquired again */
    t_rec h2 = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    cr_assert(wait_flag(f.evl, &h2.calls, 5));
    cr_assert_eq(h2.code, 0, "%s", aorm_errname(h2.code));
    aorm_conn_release(h2.conn);
    run_for(&f, 0.05);
    cr_assert_eq(h.calls, 1);
    cr_assert_eq(next.calls, 1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connects, 1);
    cr_assert_eq(s.idle, 1, "idle = %d", s.idle);
    aorm_owner_free(ow);
    fx_close(&f);
}

Test(engine_faults, review_reservation_of_timed_out_acquire, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_reserve_timeout", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.pool_timeout = 0.3;
    fx_engine(&f, &o);
    t_rec warm;
    run_sql(&f, "SELECT 1", &warm, 10);
    cr_assert_eq(warm.code, 0);

    t_rec busy = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(1)", NULL, NULL, t_rec_on_result, &busy), 0);
    uint64_t want = 2;
    void *a[2] = {f.e, &want};
    cr_assert(t_run_until_prompt(f.evl, all_sent, a, 5), "the sleep was never sent");
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 5));
    cr_assert_eq(h.code, AORM_EPOOLTIMEOUT, "the acquire: %s", aorm_errname(h.code));
    cr_assert_eq(busy.calls, 0, "the sleep ended before the acquire timed out");
    cr_assert(wait_flag(f.evl, &busy.calls, 5));
    cr_assert_eq(busy.code, 0);

    enum { N = 3 };
    t_rec next[N];
    memset(next, 0, sizeof(next));
    double t0 = t_mono();
    for (int i = 0; i < N; i++) cr_assert_eq(aorm_engine_execute(f.e, "SELECT 2", NULL, NULL, t_rec_on_result, &next[i]), 0);
    cr_assert(t_rec_wait_all(f.evl, next, N, 5));
    for (int i = 0; i < N; i++) {
        /* (one left out of rotation: each would wait its pool timeout, 0.3 s, and fail) */
        cr_assert_eq(next[i].code, 0, "statement %d after the timed-out acquire, %.2f s later: %s [%s] %s", i,
                     next[i].at - t0, aorm_errname(next[i].code), next[i].sqlstate, next[i].msg);
    }
    run_for(&f, 0.05);
    cr_assert_eq(h.calls, 1);
    for (int i = 0; i < N; i++) cr_assert_eq(next[i].calls, 1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connects, 1);
    cr_assert_eq(s.idle, 1, "idle = %d", s.idle);
    fx_close(&f);
}

/* COPY fill state for the owner tests. */
typedef struct rv_fill {
    int fills;
    int forever; /* 1: always more rows */
} rv_fill;

static int rv_fill_rows(aorm_copy *cp, void *user) {
    rv_fill *x = user;
    x->fills++;
    for (int i = 0; i < 1000; i++) {
        aorm_copy_row(cp, 1);
        aorm_copy_int4(cp, i);
    }
    return x->forever ? 1 : 0;
}

static int rv_fill_started(void *arg) { return ((rv_fill *)arg)->fills >= 2; }

/* A COPY on a connection held through an owner belongs to the owner:
 * freeing the owner calls it back at once and it never runs (queued), or
 * is aborted and never filled again (streaming). */
Test(engine_faults, review_owned_copy_goes_with_its_owner, .timeout = 30) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_rv_copy"));
    free(t_pg_exec(pg, "CREATE TABLE flt_rv_copy (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_owned_copy", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);

    /* queued behind a statement, the owner freed before anything is sent */
    aorm_owner *ow = aorm_owner_new(f.e);
    cr_assert_not_null(ow);
    t_rec h = {0};
    cr_assert_eq(aorm_owner_acquire(ow, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    t_rec ins = {0}, cp = {0};
    rv_fill fl = {0};
    cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO flt_rv_copy VALUES (-1)", NULL, NULL, t_rec_on_result, &ins), 0);
    cr_assert_eq(aorm_conn_copy(h.conn, "COPY flt_rv_copy (v) FROM STDIN (FORMAT binary)", rv_fill_rows, &fl, t_rec_on_result,
                                &cp),
                 0);
    aorm_owner_free(ow);
    cr_assert_eq(ins.calls, 1);
    cr_assert_eq(ins.code, AORM_ECANCELED, "the statement: %s", aorm_errname(ins.code));
    cr_assert_eq(cp.calls, 1, "the COPY was called back %d times inside aorm_owner_free", cp.calls);
    cr_assert_eq(cp.code, AORM_ECANCELED, "the COPY: %s", aorm_errname(cp.code));
    run_for(&f, 0.5);
    cr_assert_eq(ins.calls, 1);
    cr_assert_eq(cp.calls, 1, "the COPY was called back again after its owner was freed");
    cr_assert_eq(fl.fills, 0, "the COPY of a freed owner was filled");
    cr_assert(t_run_until_prompt(f.evl, none_held, f.e, 5), "the owner's connection never came back");
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_rv_copy"), 0);

    /* the pool works on */
    t_rec h2 = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    cr_assert(wait_flag(f.evl, &h2.calls, 10));
    cr_assert_eq(h2.code, 0, "%s", aorm_errname(h2.code));
    cr_assert_eq(aorm_conn_tx_status(h2.conn), AORM_TX_IDLE);
    aorm_conn_release(h2.conn);
    run_for(&f, 0.05);
    cr_assert(h.calls == 1 && h2.calls == 1);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_rv_copy"));
    PQfinish(pg);
}

/* The owner of a COPY that is streaming is cancelled: the COPY is called
 * back at once, never filled again and aborted (nothing loaded), and its
 * connection goes back to the pool (rolled back) for the next holder. */
Test(engine_faults, review_owned_copy_cancelled_while_streaming, .timeout = 30) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_rv_copy_cancel"));
    free(t_pg_exec(pg, "CREATE TABLE flt_rv_copy_cancel (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_copy_cancel", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    aorm_owner *ow = aorm_owner_new(f.e);
    cr_assert_not_null(ow);
    t_rec h = {0};
    cr_assert_eq(aorm_owner_acquire(ow, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    t_rec cp = {0};
    rv_fill fl = {.forever = 1};
    cr_assert_eq(aorm_conn_copy(h.conn, "COPY flt_rv_copy_cancel (v) FROM STDIN (FORMAT binary)", rv_fill_rows, &fl,
                                t_rec_on_result, &cp),
                 0);
    cr_assert(t_run_until_prompt(f.evl, rv_fill_started, &fl, 10), "the COPY never started streaming");
    cr_assert_eq(cp.calls, 0);
    aorm_owner_cancel(ow);
    int fills = fl.fills;
    cr_assert_eq(cp.calls, 1, "the streaming COPY was called back %d times inside the cancel", cp.calls);
    cr_assert_eq(cp.code, AORM_ECANCELED, "the streaming COPY: %s", aorm_errname(cp.code));
    run_for(&f, 0.3);
    cr_assert_eq(cp.calls, 1);
    cr_assert_eq(fl.fills, fills, "filled %d more times after the cancel", fl.fills - fills);
    cr_assert(t_run_until_prompt(f.evl, none_held, f.e, 5),
              "the connection of the cancelled COPY never went back to the pool: held %d, open %d, idle %d",
              t_stats(f.e).held, t_stats(f.e).open, t_stats(f.e).idle);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_rv_copy_cancel"), 0);
    /* the owner stays usable, and gets the connection clean */
    t_rec h2 = {0};
    cr_assert_eq(aorm_owner_acquire(ow, t_rec_on_conn, &h2), 0);
    cr_assert(wait_flag(f.evl, &h2.calls, 10));
    cr_assert_eq(h2.code, 0, "%s", aorm_errname(h2.code));
    cr_assert_eq(aorm_conn_tx_status(h2.conn), AORM_TX_IDLE);
    aorm_conn_release(h2.conn);
    aorm_owner_free(ow);
    run_for(&f, 0.05);
    cr_assert(h.calls == 1 && h2.calls == 1);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_rv_copy_cancel"));
    PQfinish(pg);
}

/* Finite fill: 20 calls, then done. */
static int rv_fill_twenty(aorm_copy *cp, void *user) {
    rv_fill *x = user;
    rv_fill_rows(cp, user);
    return x->fills < 20 ? 1 : 0;
}

/* The holder releases its connection while its COPY streams ("statements
 * already queued still complete and call back"): the COPY completes, and
 * then the connection goes back to the pool. */
Test(engine_faults, review_copy_released_while_streaming, .timeout = 30) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_rv_copy_rel"));
    free(t_pg_exec(pg, "CREATE TABLE flt_rv_copy_rel (v int)"));
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_copy_release", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    t_rec cp = {0};
    rv_fill fl = {.forever = 1};
    cr_assert_eq(aorm_conn_copy(h.conn, "COPY flt_rv_copy_rel (v) FROM STDIN (FORMAT binary)", rv_fill_twenty, &fl,
                                t_rec_on_result, &cp),
                 0);
    cr_assert(t_run_until_prompt(f.evl, rv_fill_started, &fl, 10), "the COPY never started streaming");
    cr_assert_eq(cp.calls, 0);
    aorm_conn_release(h.conn);
    cr_assert(wait_flag(f.evl, &cp.calls, 10), "the COPY never completed");
    cr_assert_eq(cp.code, 0, "the COPY: %s [%s] %s", aorm_errname(cp.code), cp.sqlstate, cp.msg);
    cr_assert_eq(fl.fills, 20);
    cr_assert(t_run_until_prompt(f.evl, none_held, f.e, 5),
              "the connection released during its COPY never went back to the pool: held %d, open %d, idle %d",
              t_stats(f.e).held, t_stats(f.e).open, t_stats(f.e).idle);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_rv_copy_rel"), 20 * 1000);
    t_rec after;
    run_sql(&f, "SELECT 5", &after, 5);
    cr_assert_eq(after.code, 0, "%s", aorm_errname(after.code));
    run_for(&f, 0.05);
    cr_assert_eq(cp.calls, 1);
    cr_assert_eq(h.calls, 1);
    fx_close(&f);
    free(t_pg_exec(pg, "DROP TABLE flt_rv_copy_rel"));
    PQfinish(pg);
}

static int open_at_most_one(void *arg) { return t_stats(arg).open <= 1; }

/* Overflow connections that were busy with autocommit statements in the
 * last dispatch are closed idle_timeout after they go idle, with no
 * traffic to wake the engine. */
Test(engine_faults, review_idle_overflow_reaped_without_traffic, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_reap", NULL);
    o.pool_size = 1;
    o.max_overflow = 1;
    o.idle_timeout = 0.5;
    fx_engine(&f, &o);
    t_rec h1 = {0}, h2 = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h1), 0);
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h2), 0);
    t_rec *hs[] = {&h1, &h2, NULL};
    cr_assert(t_run_until_prompt(f.evl, t_recs_called, hs, 10));
    cr_assert(h1.code == 0 && h2.code == 0);
    aorm_conn_release(h1.conn);
    aorm_conn_release(h2.conn);
    cr_assert(t_run_until_prompt(f.evl, none_held, f.e, 5));
    cr_assert_eq(t_stats(f.e).open, 2);

    t_rec a = {0}, b = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_backend_pid() FROM pg_sleep(0.2)", NULL, NULL, t_rec_on_result, &a), 0);
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_backend_pid() FROM pg_sleep(0.2)", NULL, NULL, t_rec_on_result, &b), 0);
    t_rec ab[2];
    cr_assert(wait_flag(f.evl, &a.calls, 5) && wait_flag(f.evl, &b.calls, 5));
    ab[0] = a;
    ab[1] = b;
    for (int i = 0; i < 2; i++)
        cr_assert(ab[i].code == 0 && ab[i].has_int, "sleep %d: %s [%s] %s", i, aorm_errname(ab[i].code),
                  ab[i].sqlstate, ab[i].msg);
    cr_assert_neq(a.ival, b.ival, "both statements ran on one connection: the test did not set up its case");
    double idle_since = t_mono();

    /* no more traffic from here on */
    cr_assert(t_run_until_prompt(f.evl, open_at_most_one, f.e, 3), "%d connections still open %.1f s after the last statement "
              "(pool_size 1, idle_timeout 0.5)", t_stats(f.e).open, t_mono() - idle_since);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.open, 1, "open = %d", s.open);
    cr_assert_eq(s.overflow_closed, 1, "overflow_closed = %llu", (unsigned long long)s.overflow_closed);
    PGconn *pg = t_pg();
    char sql[512];
    activity_sql(sql, sizeof(sql), &f, NULL);
    long n = poll_pg(&f, pg, sql, CMP_LE, 1, 3.0);
    cr_assert(n <= 1, "%ld client backends still open for the engine", n);
    PQfinish(pg);
    run_for(&f, 0.05);
    cr_assert(a.calls == 1 && b.calls == 1);
    fx_close(&f);
}

/* The statement_timeout of the holder's session, in ms. */
static int64_t rv_statement_timeout(fx *f, aorm_conn *c) {
    aorm_exec_options raw = {.flags = AORM_EXEC_UNPREPARED, .deadline = -1};
    t_rec r;
    conn_sql(f, c, "SELECT setting::int8 FROM pg_settings WHERE name = 'statement_timeout'", &raw, &r);
    cr_assert(r.code == 0 && r.has_int, "statement_timeout: %s [%s] %s", aorm_errname(r.code), r.sqlstate, r.msg);
    return r.ival;
}

/* A raw COMMIT with a deadline inside a block opened with aorm_conn_begin:
 * the COMMIT undoes the deadline's settings before they are put back, and
 * the statements queued behind it still run (nothing of the deadline's
 * bookkeeping fails them); the session's statement_timeout is unchanged. */
Test(engine_faults, review_deadline_on_raw_commit, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_dl_commit", NULL);
    o.pool_size = 1;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    int64_t before = rv_statement_timeout(&f, h.conn);

    for (int round = 0; round < 2; round++) {
        /* round 1: the COMMIT's statement is prepared by now */
        t_rec b = {0}, commit = {0}, after = {0};
        aorm_exec_options xo = {.deadline = 2};
        cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
        cr_assert_eq(aorm_conn_execute(h.conn, "COMMIT", NULL, &xo, t_rec_on_result, &commit), 0);
        cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 1", NULL, NULL, t_rec_on_result, &after), 0);
        cr_assert(wait_flag(f.evl, &after.calls, 10));
        cr_assert_eq(b.code, 0, "round %d: BEGIN: %s", round, aorm_errname(b.code));
        cr_assert_eq(commit.code, 0, "round %d: COMMIT: %s [%s] %s", round, aorm_errname(commit.code),
                     commit.sqlstate, commit.msg);
        cr_assert_eq(after.code, 0, "round %d: the statement after the COMMIT: %s [%s] %s", round,
                     aorm_errname(after.code), after.sqlstate, after.msg);
        cr_assert(after.has_int && after.ival == 1);
        cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_IDLE);
        cr_assert_eq(rv_statement_timeout(&f, h.conn), before, "round %d: the session's statement_timeout changed",
                     round);
        run_for(&f, 0.05);
        cr_assert(b.calls == 1 && commit.calls == 1 && after.calls == 1);
    }
    aorm_conn_release(h.conn);
    fx_close(&f);
}

/* A raw ROLLBACK TO SAVEPOINT with a deadline: it undoes the deadline's
 * settings made after the savepoint (in round 0 the first of the
 * transaction) before they are put back; the transaction goes on, the
 * statements after it run, and the COMMIT commits what was before the
 * savepoint. Round 0: a deadline on the ROLLBACK TO alone; round 1: an
 * engine-wide statement_timeout (a deadline on every statement). */
Test(engine_faults, review_deadline_on_raw_rollback_to_savepoint, .timeout = 30) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "DROP TABLE IF EXISTS flt_rv_sp"));
    free(t_pg_exec(pg, "CREATE TABLE flt_rv_sp (v int)"));
    for (int round = 0; round < 2; round++) {
        free(t_pg_exec(pg, "TRUNCATE flt_rv_sp"));
        fx f;
        aorm_engine_options o;
        fx_init(&f, &o, round ? "rv_dl_savepoint_all" : "rv_dl_savepoint", NULL);
        o.pool_size = 1;
        if (round) o.statement_timeout = 5;
        fx_engine(&f, &o);
        t_rec h = {0};
        cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
        cr_assert(wait_flag(f.evl, &h.calls, 10));
        cr_assert_eq(h.code, 0);

        t_rec b = {0}, sp = {0}, i1 = {0}, i2 = {0}, back = {0}, after = {0}, commit = {0};
        aorm_exec_options xo = {.deadline = 2};
        cr_assert_eq(aorm_conn_begin(h.conn, NULL, t_rec_on_result, &b), 0);
        cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO flt_rv_sp VALUES (1)", NULL, NULL, t_rec_on_result, &i1), 0);
        cr_assert_eq(aorm_conn_savepoint(h.conn, "s1", t_rec_on_result, &sp), 0);
        cr_assert_eq(aorm_conn_execute(h.conn, "INSERT INTO flt_rv_sp VALUES (2)", NULL, NULL, t_rec_on_result, &i2), 0);
        cr_assert_eq(aorm_conn_execute(h.conn, "ROLLBACK TO SAVEPOINT s1", NULL, round ? NULL : &xo, t_rec_on_result, &back), 0);
        cr_assert_eq(aorm_conn_execute(h.conn, "SELECT 3", NULL, NULL, t_rec_on_result, &after), 0);
        cr_assert_eq(aorm_conn_commit(h.conn, t_rec_on_result, &commit), 0);
        cr_assert(wait_flag(f.evl, &commit.calls, 10));
        run_for(&f, 0.05);
        const struct {
            t_rec *r;
            const char *what;
        } steps[] = {{&b, "BEGIN"},
                     {&i1, "first INSERT"},
                     {&sp, "SAVEPOINT"},
                     {&i2, "second INSERT"},
                     {&back, "raw ROLLBACK TO SAVEPOINT"},
                     {&after, "statement after it"},
                     {&commit, "COMMIT"}};
        for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
            cr_assert_eq(steps[i].r->calls, 1, "round %d: %s called back %d times", round,
                         steps[i].what, steps[i].r->calls);
            cr_assert_eq(steps[i].r->code, 0, "round %d: %s: %s [%s] %s", round, steps[i].what,
                         aorm_errname(steps[i].r->code), steps[i].r->sqlstate, steps[i].r->msg);
        }
        cr_assert(after.has_int && after.ival == 3);
        cr_assert_eq(aorm_conn_tx_status(h.conn), AORM_TX_IDLE);
        cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM flt_rv_sp"), 1, "round %d", round);
        cr_assert_eq(t_pg_long(pg, "SELECT sum(v) FROM flt_rv_sp"), 1, "round %d", round);
        aorm_conn_release(h.conn);
        run_for(&f, 0.05);
        fx_close(&f);
    }
    free(t_pg_exec(pg, "DROP TABLE flt_rv_sp"));
    PQfinish(pg);
}

/* A statement evicted from the cache after the user's DEALLOCATE ALL: its
 * DEALLOCATE fails with 26000 (it does not exist) and is not sent again.
 * Counted by syncs: once the failure has been read, each statement costs
 * its own sync and nothing more. */
Test(engine_faults, review_failed_deallocate_not_resent, .timeout = 30) {
    fx f;
    aorm_engine_options o;
    fx_init(&f, &o, "rv_dealloc_gone", NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.prepared_cache_size = 2;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(f.evl, &h.calls, 10));
    cr_assert_eq(h.code, 0);
    aorm_exec_options raw = {.flags = AORM_EXEC_UNPREPARED};
    t_rec r;
    conn_sql(&f, h.conn, "SELECT 1 AS rv_a", NULL, &r); /* prepared and cached */
    cr_assert_eq(r.code, 0);
    conn_sql(&f, h.conn, "SELECT 2 AS rv_b", NULL, &r);
    cr_assert_eq(r.code, 0);
    conn_sql(&f, h.conn, "DEALLOCATE ALL", &raw, &r); /* the cache does not know */
    cr_assert_eq(r.code, 0, "%s", r.msg);
    conn_sql(&f, h.conn, "SELECT 3 AS rv_c", NULL, &r); /* evicts rv_a: its DEALLOCATE fails */
    cr_assert_eq(r.code, 0, "%s", r.msg);
    cr_assert(r.has_int && r.ival == 3);
    conn_sql(&f, h.conn, "SELECT 4", &raw, &r); /* answered after the DEALLOCATE was */
    cr_assert_eq(r.code, 0);

    enum { K = 6 };
    uint64_t s0 = t_stats(f.e).syncs;
    for (int i = 0; i < K; i++) {
        conn_sql(&f, h.conn, "SELECT 5", &raw, &r);
        cr_assert_eq(r.code, 0, "%s", r.msg);
    }
    uint64_t s1 = t_stats(f.e).syncs;
    cr_assert_eq(s1 - s0, K, "%llu syncs for %d statements: the failed DEALLOCATE is being sent again",
                 (unsigned long long)(s1 - s0), K);
    /* the statement whose server side was dropped runs (prepared again) */
    conn_sql(&f, h.conn, "SELECT 2 AS rv_b", NULL, &r);
    cr_assert_eq(r.code, 0, "%s [%s] %s", aorm_errname(r.code), r.sqlstate, r.msg);
    cr_assert(r.has_int && r.ival == 2);
    aorm_conn_release(h.conn);
    run_for(&f, 0.05);
    fx_close(&f);
}
