/* test_pgbouncer.c -- the engine behind a real PgBouncer 1.18 in
 * pool_mode=transaction (scripts/sandbox --pgbouncer: AORM_TEST_PGBOUNCER_DSN),
 * with aorm_engine_options.pgbouncer.
 *
 * What is proved:
 *   - statements go out unnamed (no PREPARE ever), pipelined: hundreds of
 *     read-only statements in a few writes and sync groups, every answer
 *     right and in order;
 *   - thousands of sync groups from two clients at once (each statement
 *     with a sync of its own, or read-only ones sharing one) all get their
 *     own answers: a group never follows another one in flight whose end
 *     lets PgBouncer 1.18 hand the server to someone else;
 *   - without the switch, named prepared statements break through
 *     PgBouncer (the reason the switch exists);
 *   - statements that would leave session state on a pooled server
 *     connection are refused when queued (AORM_EMISUSE), on pooled and held
 *     connections; their transaction-scoped forms pass;
 *   - deadlines still stop their statement, and the statement_timeout they
 *     set never leaks to the next transaction on the same server connection;
 *   - transactions on held connections, savepoints and cursors work,
 *     also many at once (more clients than PgBouncer has server connections
 *     for them).
 *
 * Every test has the same timeout: Criterion 2.4.1's runner leaks under
 * --jobs when timeouts differ. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support.h"

#define TIMEOUT 120

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    int refusals; /* AORM_LOG_ERROR lines about a refused statement */
} env;

static void on_log(aorm_log_level level, const char *message, void *user) {
    env *t = user;
    if (level == AORM_LOG_ERROR && strstr(message, "refused under PgBouncer transaction pooling")) t->refusals++;
}

static void env_open_pool(env *t, bool pgbouncer, int pool, int overflow) {
    memset(t, 0, sizeof(*t));
    t_loop_open(&t->evl, &t->loop);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = t_env("AORM_TEST_PGBOUNCER_DSN");
    o.pgbouncer = pgbouncer;
    o.pool_size = pool;
    o.max_overflow = overflow;
    o.pool_timeout = 20;
    o.log = on_log;
    o.log_user = t;
    o.log_level = AORM_LOG_ERROR;
    t->e = aorm_engine_new(t->loop, &o);
    cr_assert_not_null(t->e);
}

static void env_open(env *t, bool pgbouncer) { env_open_pool(t, pgbouncer, 4, 10); }

static void env_close(env *t) {
    aorm_engine_free(t->e);
    t_loop_close(&t->evl, &t->loop);
}

typedef struct answer {
    int done;
    int code;
    char sqlstate[6];
    long value;
    char text[64];
} answer;

static void on_answer(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    answer *a = user;
    a->done++;
    if (err) {
        a->code = err->code;
        snprintf(a->sqlstate, sizeof(a->sqlstate), "%s", err->sqlstate);
        return;
    }
    if (aorm_result_nrows(res) > 0 && aorm_result_ncols(res) > 0) {
        const char *s;
        size_t n;
        if (aorm_result_text(res, 0, 0, &s, &n) == 0) snprintf(a->text, sizeof(a->text), "%.*s", (int)n, s);
        int64_t v;
        if (aorm_result_int64(res, 0, 0, &v) == 0) a->value = (long)v;
        int32_t v4;
        if (aorm_result_int32(res, 0, 0, &v4) == 0) a->value = v4;
    }
}

static int all_done(void *arg) {
    answer **a = arg;
    for (int i = 0; a[i]; i++)
        if (!a[i]->done) return 0;
    return 1;
}

/* Runs one statement on the pool (flags, deadline) and waits for it. */
static answer run(env *t, const char *sql, unsigned flags, double deadline) {
    answer a = {0};
    aorm_exec_options xo;
    aorm_exec_options_init(&xo);
    xo.flags = flags | AORM_EXEC_TEXT_RESULT;
    xo.deadline = deadline;
    cr_assert_eq(aorm_engine_execute(t->e, sql, NULL, &xo, on_answer, &a), 0, "%s", sql);
    cr_assert(t_run_until(t->evl, &a.done, 30), "no answer to %s", sql);
    return a;
}

typedef struct held {
    int done;
    aorm_conn *c;
} held;

static void on_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    (void)e;
    held *h = user;
    cr_assert_null(err, "acquire: %s", err ? err->message : "");
    h->c = c;
    h->done++;
}

static aorm_conn *acquire(env *t) {
    held h = {0};
    cr_assert_eq(aorm_engine_acquire(t->e, on_conn, &h), 0);
    cr_assert(t_run_until(t->evl, &h.done, 30));
    return h.c;
}

static answer conn_run(env *t, aorm_conn *c, const char *sql) {
    answer a = {0};
    aorm_exec_options xo;
    aorm_exec_options_init(&xo);
    xo.flags = AORM_EXEC_TEXT_RESULT;
    cr_assert_eq(aorm_conn_execute(c, sql, NULL, &xo, on_answer, &a), 0, "%s", sql);
    cr_assert(t_run_until(t->evl, &a.done, 30), "no answer to %s", sql);
    return a;
}

TestSuite(pgbouncer, .timeout = TIMEOUT);

Test(pgbouncer, pipelined_unnamed_statements) {
    env t;
    env_open(&t, true);
    enum { N = 400 };
    answer *a = calloc(N, sizeof(*a));
    answer **list = calloc(N + 1, sizeof(*list));
    for (int i = 0; i < N; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, i);
        list[i] = &a[i];
        aorm_exec_options xo;
        aorm_exec_options_init(&xo);
        xo.flags = AORM_EXEC_READONLY; /* read-only statements share sync groups: one transaction, one server */
        cr_assert_eq(aorm_engine_execute(t.e, "SELECT $1::int4 * 2", &p, &xo, on_answer, &a[i]), 0);
        aorm_params_free(&p);
    }
    cr_assert(t_run_until_fn(t.evl, all_done, list, 30));
    for (int i = 0; i < N; i++) {
        cr_assert_eq(a[i].code, 0, "statement %d failed: %d %s", i, a[i].code, a[i].sqlstate);
        cr_assert_eq(a[i].value, 2 * i);
    }
    aorm_engine_stats st = t_stats(t.e);
    cr_assert_eq(st.prepares, 0, "PgBouncer mode prepared %" PRIu64 " statements", st.prepares);
    cr_assert_eq(st.statements, N);
    /* pipelined: at most 4 connections, far fewer writes than statements */
    cr_assert_leq(st.round_trips, 40, "%" PRIu64 " writes for %d statements", st.round_trips, N);
    cr_assert_leq(st.syncs, 40, "%" PRIu64 " syncs for %d read-only statements", st.syncs, N);
    free(list);
    free(a);
    env_close(&t);
}

/* Without the switch a statement prepared in one transaction is missing
 * in the next when PgBouncer runs that one on another server connection:
 * here another client takes the server our statement was prepared on
 * (PgBouncer reuses server connections LIFO) before we run it again. The
 * engine then meets 26000 and prepares again: the named statement bought
 * nothing. With the switch nothing is ever prepared. */
Test(pgbouncer, named_statements_do_not_survive_without_the_switch) {
    env t;
    env_open_pool(&t, false, 1, 0);
    PGconn *blocker = PQconnectdb(t_env("AORM_TEST_PGBOUNCER_DSN"));
    cr_assert_eq(PQstatus(blocker), CONNECTION_OK);
    answer a = run(&t, "SELECT 41 + 1", 0, 0);
    cr_assert_eq(a.code, 0);
    cr_assert_eq(t_stats(t.e).prepares, 1);
    PQclear(PQexec(blocker, "BEGIN"));
    PQclear(PQexec(blocker, "SELECT 1")); /* holds the server the PREPARE went to */
    answer b = run(&t, "SELECT 41 + 1", 0, 0);
    PQclear(PQexec(blocker, "COMMIT"));
    PQfinish(blocker);
    aorm_engine_stats st = t_stats(t.e);
    cr_assert(b.code != 0 || st.prepares >= 2 || st.resent > 0,
              "the named statement survived a change of server connection (prepares %" PRIu64 ")", st.prepares);
    env_close(&t);

    env_open_pool(&t, true, 1, 0);
    for (int i = 0; i < 5; i++) cr_assert_eq(run(&t, "SELECT 41 + 1", 0, 0).code, 0);
    cr_assert_eq(t_stats(t.e).prepares, 0);
    env_close(&t);
}

static const char *refused[] = {
    "SET statement_timeout = 0",
    "set search_path to public",
    "  /* c */ SET SESSION work_mem = '8MB'",
    "RESET ALL",
    "LISTEN aorm_channel",
    "SELECT pg_advisory_lock(42)",
    "select pg_try_advisory_lock_shared(1, 2)",
    "CREATE TEMP TABLE t_tmp (x int)",
    "create local temporary table t_tmp2 (x int)",
    "PREPARE q AS SELECT 1",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
};

static const char *allowed[] = {
    "SET LOCAL work_mem = '8MB'",
    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT 'SET statement_timeout = 0'",
    "-- SET x\nSELECT 1",
};

Test(pgbouncer, session_state_is_refused) {
    env t;
    env_open(&t, true);
    for (size_t i = 0; i < sizeof(refused) / sizeof(*refused); i++) {
        answer a = {0};
        cr_assert_eq(aorm_engine_execute(t.e, refused[i], NULL, NULL, on_answer, &a), AORM_EMISUSE, "%s", refused[i]);
        cr_assert_eq(t.refusals, (int)i + 1, "no reason logged for %s", refused[i]);
    }
    for (size_t i = 0; i < sizeof(allowed) / sizeof(*allowed); i++) {
        answer a = run(&t, allowed[i], 0, 0);
        cr_assert_eq(a.code, 0, "%s failed: %d %s", allowed[i], a.code, a.sqlstate);
    }
    /* on a held connection too, inside a transaction as well */
    aorm_conn *c = acquire(&t);
    cr_assert_eq(conn_run(&t, c, "BEGIN").code, 0);
    answer a = {0};
    cr_assert_eq(aorm_conn_execute(c, "SET work_mem = '8MB'", NULL, NULL, on_answer, &a), AORM_EMISUSE);
    cr_assert_eq(conn_run(&t, c, "SET LOCAL work_mem = '8MB'").code, 0);
    cr_assert_str_eq(conn_run(&t, c, "SHOW work_mem").text, "8MB");
    cr_assert_eq(conn_run(&t, c, "COMMIT").code, 0);
    aorm_conn_release(c);
    /* a direct engine (no switch) sends them */
    env d;
    env_open(&d, false);
    answer s = run(&d, "SELECT pg_advisory_xact_lock(7)", AORM_EXEC_UNPREPARED, 0);
    cr_assert_eq(s.code, 0);
    env_close(&d);
    env_close(&t);
}

Test(pgbouncer, deadlines_stay_in_their_transaction) {
    env t;
    env_open(&t, true);
    answer slow = run(&t, "SELECT pg_sleep(2)", 0, 0.2);
    cr_assert_eq(slow.code, AORM_ETIMEOUT, "code %d", slow.code);
    answer quick = run(&t, "SELECT 1", 0, 5);
    cr_assert_eq(quick.code, 0);
    /* every server connection PgBouncer hands out afterwards, to us and to
     * another client, has the server default */
    PGconn *other = PQconnectdb(t_env("AORM_TEST_PGBOUNCER_DSN"));
    cr_assert_eq(PQstatus(other), CONNECTION_OK);
    for (int i = 0; i < 20; i++) {
        answer a = run(&t, "SHOW statement_timeout", 0, 0);
        cr_assert_str_eq(a.text, "0", "statement_timeout leaked: %s", a.text);
        char *v = t_pg_exec(other, "SHOW statement_timeout");
        cr_assert_str_eq(v, "0", "statement_timeout leaked to another client: %s", v);
        free(v);
        answer d = run(&t, "SELECT 1", 0, 3); /* one with a deadline between each */
        cr_assert_eq(d.code, 0);
    }
    PQfinish(other);
    /* inside a transaction on a held connection: the timeout is restored */
    aorm_conn *c = acquire(&t);
    cr_assert_eq(conn_run(&t, c, "BEGIN").code, 0);
    answer a = {0};
    aorm_exec_options xo;
    aorm_exec_options_init(&xo);
    xo.deadline = 3;
    cr_assert_eq(aorm_conn_execute(c, "SELECT 1", NULL, &xo, on_answer, &a), 0);
    cr_assert(t_run_until(t.evl, &a.done, 30));
    cr_assert_eq(a.code, 0);
    cr_assert_str_eq(conn_run(&t, c, "SHOW statement_timeout").text, "0");
    cr_assert_eq(conn_run(&t, c, "COMMIT").code, 0);
    aorm_conn_release(c);
    env_close(&t);
}

typedef struct txn {
    env *t;
    aorm_conn *c;
    int id;
    int step;
    int done;
    int failed;
    answer a[4];
} txn;

static void tx_acquired(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    (void)e;
    txn *x = user;
    if (err) {
        x->failed = err->code;
        x->done = 1;
        return;
    }
    x->c = c;
    char sql[160];
    snprintf(sql, sizeof(sql), "INSERT INTO pgb_items (id, note) VALUES (%d, 'n%d')", x->id, x->id);
    /* the whole transaction in one pipeline */
    cr_assert_eq(aorm_conn_begin(c, NULL, on_answer, &x->a[0]), 0);
    cr_assert_eq(aorm_conn_execute(c, sql, NULL, NULL, on_answer, &x->a[1]), 0);
    cr_assert_eq(aorm_conn_execute(c, "SELECT count(*) FROM pgb_items WHERE id >= 0", NULL, NULL, on_answer, &x->a[2]), 0);
    cr_assert_eq(aorm_conn_commit(c, on_answer, &x->a[3]), 0);
}

static int txns_done(void *arg) {
    txn *x = arg;
    for (int i = 0; x[i].t; i++) {
        if (x[i].failed) continue;
        if (!x[i].a[3].done) return 0;
    }
    return 1;
}

Test(pgbouncer, transactions_copy_and_cursors) {
    env t;
    env_open(&t, true);
    PGconn *pg = PQconnectdb(t_owner_dsn());
    cr_assert_eq(PQstatus(pg), CONNECTION_OK);
    t_pg_runf(pg, "DROP TABLE IF EXISTS pgb_items; CREATE TABLE pgb_items (id int PRIMARY KEY, note text)");
    t_pg_runf(pg, "GRANT ALL ON pgb_items TO aorm_app");

    /* 60 transactions at once on a pool of 4 (+ overflow) */
    enum { N = 60 };
    txn x[N + 1];
    memset(x, 0, sizeof(x));
    for (int i = 0; i < N; i++) {
        x[i].t = &t;
        x[i].id = i + 1;
        cr_assert_eq(aorm_engine_acquire(t.e, tx_acquired, &x[i]), 0);
    }
    /* each releases its connection once committed */
    for (int round = 0; round < 200 && !txns_done(x); round++) {
        t_settle(t.evl, 0.05);
        for (int i = 0; i < N; i++)
            if (x[i].c && x[i].a[3].done) {
                aorm_conn_release(x[i].c);
                x[i].c = NULL;
            }
    }
    cr_assert(txns_done(x));
    for (int i = 0; i < N; i++) {
        if (x[i].c) aorm_conn_release(x[i].c);
        cr_assert_eq(x[i].failed, 0);
        for (int k = 0; k < 4; k++) cr_assert_eq(x[i].a[k].code, 0, "tx %d step %d: %d %s", i, k, x[i].a[k].code, x[i].a[k].sqlstate);
    }
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pgb_items"), N);

    /* a savepoint rolled back inside a transaction */
    aorm_conn *c = acquire(&t);
    cr_assert_eq(conn_run(&t, c, "BEGIN").code, 0);
    answer sp = {0};
    cr_assert_eq(aorm_conn_savepoint(c, "s1", on_answer, &sp), 0);
    cr_assert(t_run_until(t.evl, &sp.done, 30));
    cr_assert_eq(conn_run(&t, c, "INSERT INTO pgb_items VALUES (1000, 'x')").code, 0);
    answer rb = {0};
    cr_assert_eq(aorm_conn_rollback_to(c, "s1", on_answer, &rb), 0);
    cr_assert(t_run_until(t.evl, &rb.done, 30));
    cr_assert_eq(conn_run(&t, c, "COMMIT").code, 0);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pgb_items WHERE id = 1000"), 0);

    /* a cursor in a transaction */
    cr_assert_eq(conn_run(&t, c, "BEGIN").code, 0);
    cr_assert_eq(conn_run(&t, c, "DECLARE cur CURSOR FOR SELECT id FROM pgb_items ORDER BY id").code, 0);
    answer f = conn_run(&t, c, "FETCH 5 FROM cur");
    cr_assert_eq(f.code, 0);
    cr_assert_str_eq(f.text, "1");
    cr_assert_eq(conn_run(&t, c, "COMMIT").code, 0);
    aorm_conn_release(c);
    t_pg_runf(pg, "DROP TABLE pgb_items");
    PQfinish(pg);
    env_close(&t);
}

/* Many sync groups from many clients at once: each group (one statement
 * with its own sync, or read-only ones sharing one) must run on one server
 * connection, its Parse, Bind and Execute together. PgBouncer 1.18 hands a
 * server on at the first ReadyForQuery outside a transaction, so a group
 * pipelined behind another could reach a server that holds someone else's
 * unnamed statement (22P03, wrong rows). Two engines, thousands of
 * statements of different parameter types, every answer checked. */
typedef struct mixed {
    int done;
    int bad;
    int failed;
    int want;
    int kind; /* 0 int8 sum, 1 text length */
} mixed;

static void on_mixed(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    mixed *m = user;
    m->done = 1;
    if (err) {
        m->failed = err->code;
        return;
    }
    int64_t v8 = -1;
    int32_t v4 = -1;
    if (m->kind == 0) {
        if (aorm_result_int64(res, 0, 0, &v8) != 0 || v8 != m->want) m->bad = 1;
    } else {
        if (aorm_result_int32(res, 0, 0, &v4) != 0 || v4 != m->want) m->bad = 1;
    }
}

static int mixed_done(void *arg) {
    mixed **list = arg;
    for (int i = 0; list[i]; i++)
        if (!list[i]->done) return 0;
    return 1;
}

Test(pgbouncer, many_sync_groups_from_many_clients) {
    env a, b;
    env_open_pool(&a, true, 2, 0);
    env_open_pool(&b, true, 2, 0);
    enum { N = 6000 };
    mixed *m = calloc(N, sizeof(*m));
    mixed **list = calloc(N + 1, sizeof(*list));
    static char text[4096];
    for (int i = 0; i < N; i++) {
        list[i] = &m[i];
        aorm_params p;
        aorm_params_init(&p);
        aorm_exec_options xo;
        aorm_exec_options_init(&xo);
        env *t = i % 2 ? &a : &b;
        const char *sql;
        m[i].kind = (i / 3) % 2;
        if (m[i].kind == 0) {
            aorm_params_int8(&p, i);
            m[i].want = i + 1;
            sql = "SELECT $1::int8 + 1";
            xo.flags = i % 5 ? AORM_EXEC_READONLY : 0;
        } else {
            int len = (i * 37) % 4000;
            memset(text, 'x', (size_t)len);
            aorm_params_text_n(&p, text, (size_t)len);
            m[i].want = len;
            sql = "SELECT length($1::text)";
            xo.flags = i % 7 ? 0 : AORM_EXEC_READONLY;
        }
        cr_assert_eq(aorm_engine_execute(t->e, sql, &p, &xo, on_mixed, &m[i]), 0);
        aorm_params_free(&p);
        if (i % 500 == 499) t_settle(a.evl, 0.01); /* a and b share no loop: drive both */
    }
    for (int round = 0; round < 600 && !mixed_done(list); round++) {
        t_settle(a.evl, 0.01);
        t_settle(b.evl, 0.01);
    }
    cr_assert(mixed_done(list), "not every statement was answered");
    for (int i = 0; i < N; i++) {
        cr_assert_eq(m[i].failed, 0, "statement %d failed: %s", i, aorm_errname(m[i].failed));
        cr_assert_eq(m[i].bad, 0, "statement %d got a wrong answer", i);
    }
    free(list);
    free(m);
    env_close(&a);
    env_close(&b);
}
