/* test_replica.c -- host groups (hosts.h) against a real primary and a
 * streaming hot standby (scripts/sandbox --replica: AORM_TEST_DSN and
 * AORM_TEST_REPLICA_DSN). Two suites, each run in a sandbox of its own
 * (tests/CMakeLists.txt): `replica` leaves the servers as they were,
 * `failover` kills the primary and promotes the standby.
 *
 * What is proved:
 *   - what each server is comes from asking it, whatever the order of the
 *     list; reads go to the standby, writes, acquires and AORM_EXEC_PRIMARY
 *     statements to the primary;
 *   - with replay paused on the standby, an owner that committed reads its
 *     own write (from the primary) while another owner reads the standby's
 *     older state; once replay resumes and the standby has replayed the
 *     commit, the first owner's reads go back to the standby; the same
 *     through a session;
 *   - a standby lagging past max_lag leaves the rotation and comes back;
 *   - failover: the primary killed, in-flight statements fail with
 *     AORM_ECONNLOST / AORM_EUNKNOWN_OUTCOME, new writes fail fast with
 *     "no primary server", and once the standby is promoted new writes
 *     succeed on it through the same engine.
 *
 * Every test has the same timeout: Criterion 2.4.1's runner leaks under
 * --jobs when timeouts differ. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models.h"
#include "support.h"

#define TIMEOUT 180

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *r;
    PGconn *primary; /* direct, for set-up and checks */
    PGconn *standby;
} env;

static void env_open_lag(env *t, double max_lag, bool standby_first) {
    memset(t, 0, sizeof(*t));
    t_loop_open(&t->evl, &t->loop);
    aorm_hosts_options o;
    aorm_hosts_options_init(&o);
    const char *servers[2];
    servers[standby_first ? 0 : 1] = t_env("AORM_TEST_REPLICA_DSN");
    servers[standby_first ? 1 : 0] = t_env("AORM_TEST_DSN");
    o.servers = servers;
    o.nservers = 2;
    o.check_interval = 0.05;
    o.check_timeout = 1;
    o.max_lag = max_lag;
    o.engine.pool_size = 4;
    o.engine.pool_timeout = 3;
    o.engine.connect_timeout = 2;
    o.engine.reconnect_max = 0.2;
    t->r = aorm_engine_new_hosts(t->loop, &o);
    cr_assert_not_null(t->r);
    cr_assert(aorm_engine_is_router(t->r));
    t->primary = PQconnectdb(t_env("AORM_TEST_DSN"));
    cr_assert_eq(PQstatus(t->primary), CONNECTION_OK);
    t->standby = PQconnectdb(t_env("AORM_TEST_REPLICA_DSN"));
    cr_assert_eq(PQstatus(t->standby), CONNECTION_OK);
}

static void env_open(env *t) { env_open_lag(t, 0, true); }

static void env_close(env *t) {
    aorm_engine_free(t->r);
    t_loop_close(&t->evl, &t->loop);
    if (t->primary) PQfinish(t->primary);
    if (t->standby) PQfinish(t->standby);
}

typedef struct answer {
    int done;
    int code;
    char msg[512];
    bool recovery;  /* column "r": pg_is_in_recovery() of the server that answered */
    long count;     /* column "n" */
    aorm_engine *e; /* the engine the callback got */
} answer;

static void on_answer(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    answer *a = user;
    a->done++;
    a->e = e;
    if (err) {
        a->code = err->code;
        snprintf(a->msg, sizeof(a->msg), "%s", err->message ? err->message : "");
        return;
    }
    int nc = aorm_result_ncols(res);
    if (aorm_result_nrows(res) < 1) return;
    for (int c = 0; c < nc; c++) {
        const char *name = aorm_result_col_name(res, c);
        if (strcmp(name, "r") == 0) aorm_result_bool(res, 0, c, &a->recovery);
        if (strcmp(name, "n") == 0) {
            int64_t v;
            if (aorm_result_int64(res, 0, c, &v) == 0) a->count = (long)v;
        }
    }
}

static answer exec(env *t, aorm_engine *e, const char *sql, unsigned flags, aorm_owner *owner) {
    answer a = {0};
    aorm_exec_options xo;
    aorm_exec_options_init(&xo);
    xo.flags = flags;
    xo.owner = owner;
    cr_assert_eq(aorm_engine_execute(e, sql, NULL, &xo, on_answer, &a), 0, "%s", sql);
    cr_assert(t_run_until(t->evl, &a.done, 30), "no answer to %s", sql);
    return a;
}

#define READ AORM_EXEC_READONLY

typedef struct held {
    int done;
    int code;
    aorm_conn *c;
    aorm_engine *e;
} held;

static void on_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    held *h = user;
    h->done++;
    h->e = e;
    h->code = err ? err->code : 0;
    h->c = c;
}

static aorm_conn *acquire(env *t, aorm_owner *owner) {
    held h = {0};
    cr_assert_eq(owner ? aorm_owner_acquire(owner, on_conn, &h) : aorm_engine_acquire(t->r, on_conn, &h), 0);
    cr_assert(t_run_until(t->evl, &h.done, 30));
    cr_assert_eq(h.code, 0, "acquire failed: %d", h.code);
    cr_assert_eq(h.e, t->r, "the acquire's callback got another engine than the router");
    return h.c;
}

static answer conn_exec(env *t, aorm_conn *c, const char *sql) {
    answer a = {0};
    cr_assert_eq(aorm_conn_execute(c, sql, NULL, NULL, on_answer, &a), 0, "%s", sql);
    cr_assert(t_run_until(t->evl, &a.done, 30), "no answer to %s", sql);
    return a;
}

static answer conn_commit(env *t, aorm_conn *c) {
    answer a = {0};
    cr_assert_eq(aorm_conn_commit(c, on_answer, &a), 0);
    cr_assert(t_run_until(t->evl, &a.done, 30));
    return a;
}

/* Writes through an owner: one transaction inserting id. */
static void insert_tx(env *t, aorm_owner *owner, const char *table, int id) {
    aorm_conn *c = acquire(t, owner);
    cr_assert_eq(conn_exec(t, c, "BEGIN").code, 0);
    char sql[160];
    snprintf(sql, sizeof(sql), "INSERT INTO %s VALUES (%d)", table, id);
    answer a = conn_exec(t, c, sql);
    cr_assert_eq(a.code, 0, "%s: %s", sql, a.msg);
    cr_assert_eq(conn_commit(t, c).code, 0);
    aorm_conn_release(c);
}

typedef struct wait_arg {
    env *t;
    int host;
    aorm_host_role role;
    int in_rotation; /* -1 any */
    uint64_t lsn;
} wait_arg;

static int host_is(void *arg) {
    wait_arg *w = arg;
    aorm_host_status st;
    if (aorm_hosts_status(w->t->r, w->host, &st) < 0) return 0;
    if (w->role && st.role != w->role) return 0;
    if (w->in_rotation >= 0 && st.in_rotation != (w->in_rotation != 0)) return 0;
    return st.lsn >= w->lsn;
}

static void wait_host(env *t, int host, aorm_host_role role, int in_rotation, uint64_t lsn, double seconds) {
    wait_arg w = {t, host, role, in_rotation, lsn};
    aorm_hosts_check(t->r);
    cr_assert(t_run_until_fn(t->evl, host_is, &w, seconds), "server %d never became role %d rotation %d lsn %" PRIu64,
              host, role, in_rotation, lsn);
}

/* Until the standby has the table (it streams from the primary). */
static void wait_replicated(env *t, const char *sql_true) {
    for (int i = 0; i < 200; i++) {
        PGresult *r = PQexec(t->standby, sql_true);
        bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (ok) return;
        usleep(20000);
    }
    cr_assert_fail("the standby never replayed: %s", sql_true);
}

static void make_table(env *t, const char *table) {
    t_pg_runf(t->primary, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (id int PRIMARY KEY)", table, table);
    char q[200];
    snprintf(q, sizeof(q), "SELECT to_regclass('%s') IS NOT NULL", table);
    wait_replicated(t, q);
}

static void replay(env *t, bool on) {
    t_pg_runf(t->standby, on ? "SELECT pg_wal_replay_resume()" : "SELECT pg_wal_replay_pause()");
}

TestSuite(replica, .timeout = TIMEOUT);

Test(replica, roles_come_from_the_servers) {
    env t;
    env_open(&t); /* the standby first in the list */
    cr_assert_eq(aorm_hosts_count(t.r), 2);
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    wait_host(&t, 1, AORM_HOST_PRIMARY, 1, 0, 10);
    cr_assert_eq(aorm_hosts_primary(t.r), 1);
    aorm_host_status st;
    cr_assert_eq(aorm_hosts_status(t.r, 0, &st), 0);
    cr_assert(st.read_only);
    cr_assert_gt(st.lsn, 0);
    cr_assert_eq(aorm_hosts_status(t.r, 2, &st), AORM_EMISUSE);
    cr_assert_null(aorm_hosts_engine(t.r, 2));

    /* statements queued before any check had answered wait for them */
    env u;
    env_open_lag(&u, 0, false);
    answer a = {0}, b = {0};
    aorm_exec_options xo;
    aorm_exec_options_init(&xo);
    xo.flags = READ;
    cr_assert_eq(aorm_engine_execute(u.r, "SELECT pg_is_in_recovery() AS r", NULL, &xo, on_answer, &a), 0);
    cr_assert_eq(aorm_engine_execute(u.r, "SELECT pg_is_in_recovery() AS r", NULL, NULL, on_answer, &b), 0);
    cr_assert_eq(a.done + b.done, 0, "called back from inside the call");
    cr_assert(t_run_until(u.evl, &b.done, 10));
    cr_assert(t_run_until(u.evl, &a.done, 10));
    cr_assert_eq(a.code, 0, "%s", a.msg);
    cr_assert(a.recovery, "the read did not go to the standby");
    cr_assert_not(b.recovery, "the write did not go to the primary");
    cr_assert_eq(a.e, u.r);
    env_close(&u);
    env_close(&t);
}

Test(replica, reads_to_the_standby_writes_to_the_primary) {
    env t;
    env_open(&t);
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    for (int i = 0; i < 20; i++) {
        answer a = exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ, NULL);
        cr_assert_eq(a.code, 0, "%s", a.msg);
        cr_assert(a.recovery, "read %d went to the primary", i);
        cr_assert_eq(a.e, t.r);
    }
    cr_assert_not(exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", 0, NULL).recovery);
    cr_assert_not(exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ | AORM_EXEC_PRIMARY, NULL).recovery);
    aorm_conn *c = acquire(&t, NULL);
    cr_assert_not(conn_exec(&t, c, "SELECT pg_is_in_recovery() AS r").recovery);
    aorm_conn_release(c);
    /* an owner pinned to the primary */
    aorm_owner *o = aorm_owner_new(t.r);
    cr_assert_not_null(o);
    cr_assert(exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ, o).recovery);
    aorm_owner_use_primary(o, true);
    cr_assert_not(exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ, o).recovery);
    aorm_owner_use_primary(o, false);
    cr_assert(exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ, o).recovery);
    aorm_owner_free(o);
    /* the counts add up over the servers */
    aorm_engine_stats st;
    aorm_engine_stats_get(t.r, &st);
    aorm_engine_stats s0, s1;
    aorm_engine_stats_get(aorm_hosts_engine(t.r, 0), &s0);
    aorm_engine_stats_get(aorm_hosts_engine(t.r, 1), &s1);
    cr_assert_eq(st.statements, s0.statements + s1.statements);
    aorm_host_status h0;
    aorm_hosts_status(t.r, 0, &h0);
    cr_assert_geq(h0.routed, 22);
    env_close(&t);
}

Test(replica, read_your_writes_with_replay_paused) {
    env t;
    env_open(&t);
    make_table(&t, "ryw_items");
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    aorm_owner *writer = aorm_owner_new(t.r), *other = aorm_owner_new(t.r);
    cr_assert_not_null(writer);
    cr_assert_not_null(other);
    const char *q = "SELECT count(*) AS n, pg_is_in_recovery() AS r FROM ryw_items";

    replay(&t, false);
    insert_tx(&t, writer, "ryw_items", 1);
    uint64_t lsn = aorm_owner_commit_lsn(writer);
    cr_assert_gt(lsn, 0, "the commit's position did not come back");
    /* the writer reads its write, from the primary */
    for (int i = 0; i < 5; i++) {
        answer a = exec(&t, t.r, q, READ, writer);
        cr_assert_eq(a.code, 0, "%s", a.msg);
        cr_assert_eq(a.count, 1, "the writer did not read its own write");
        cr_assert_not(a.recovery);
    }
    /* another owner reads the standby, which has not replayed it */
    answer b = exec(&t, t.r, q, READ, other);
    cr_assert(b.recovery);
    cr_assert_eq(b.count, 0);
    /* even after a check: the standby has not reached the commit */
    aorm_hosts_check(t.r);
    t_settle(t.evl, 0.3);
    aorm_host_status st;
    aorm_hosts_status(t.r, 0, &st);
    cr_assert_lt(st.lsn, lsn);
    cr_assert_not(exec(&t, t.r, q, READ, writer).recovery);

    replay(&t, true);
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, lsn, 10);
    answer c = exec(&t, t.r, q, READ, writer);
    cr_assert(c.recovery, "the writer's reads did not go back to the standby");
    cr_assert_eq(c.count, 1);
    /* an autocommit write through the owner counts too */
    replay(&t, false);
    answer w = exec(&t, t.r, "INSERT INTO ryw_items VALUES (2)", 0, writer);
    cr_assert_eq(w.code, 0, "%s", w.msg);
    answer d = exec(&t, t.r, q, READ, writer);
    cr_assert_eq(d.count, 2);
    cr_assert_not(d.recovery);
    cr_assert_gt(aorm_owner_commit_lsn(writer), lsn);
    /* a position set from elsewhere (another process) */
    aorm_owner_set_commit_lsn(other, aorm_owner_commit_lsn(writer));
    cr_assert_not(exec(&t, t.r, q, READ, other).recovery);
    replay(&t, true);
    aorm_owner_free(writer);
    aorm_owner_free(other);
    t_pg_runf(t.primary, "DROP TABLE ryw_items");
    env_close(&t);
}

typedef struct sres {
    int done;
    int code;
    long count;
    bool recovery;
} sres;

static void on_sdone(aorm_session *s, const aorm_error *err, void *user) {
    (void)s;
    sres *r = user;
    r->done++;
    r->code = err ? err->code : 0;
    if (err) fprintf(stderr, "session error: %s %s %s\n", aorm_errname(err->code), err->sqlstate, err->message ? err->message : "");
}

static void on_sobj(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    (void)s;
    sres *r = user;
    r->done++;
    r->code = err ? err->code : 0;
    r->count = obj ? 1 : 0;
}

static uint64_t routed(env *t, int host) {
    aorm_host_status st;
    aorm_hosts_status(t->r, host, &st);
    return st.routed;
}

/* Looks the author up by id in a fresh identity map: found (count 1) or
 * not, and whether the statement went to the standby (server 0). */
static sres session_get(env *t, aorm_session *s, int64_t id) {
    aorm_session_expunge_all(s);
    uint64_t before = routed(t, 0);
    sres r = {0};
    author key = {.id = id};
    cr_assert_eq(aorm_session_get(s, &author_model, &key, NULL, on_sobj, &r), 0);
    cr_assert(t_run_until(t->evl, &r.done, 30));
    cr_assert_eq(r.code, 0);
    r.recovery = routed(t, 0) > before;
    return r;
}

Test(replica, session_reads_its_own_commit) {
    env t;
    env_open(&t);
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    t_pg_runf(t.primary, "DELETE FROM authors WHERE name = 'ryw session'");
    aorm_session *s = aorm_session_new(t.r, NULL);
    cr_assert_not_null(s);
    /* a session that has written nothing reads the standby */
    cr_assert(session_get(&t, s, 1).recovery);
    replay(&t, false);
    author *a = aorm_session_new_object(s, &author_model);
    a->name = aorm_session_strdup(s, "ryw session");
    cr_assert_eq(aorm_session_add(s, a), 0);
    sres c = {0};
    cr_assert_eq(aorm_session_commit(s, on_sdone, &c), 0);
    cr_assert(t_run_until(t.evl, &c.done, 30));
    cr_assert_eq(c.code, 0, "commit failed: %s", aorm_errname(c.code));
    int64_t id = a->id;
    cr_assert_gt(id, 0);
    cr_assert_gt(aorm_session_commit_lsn(s), 0);
    /* its reads see its write, from the primary; another session's do not */
    sres mine = session_get(&t, s, id);
    cr_assert_eq(mine.count, 1, "the session did not read its own write");
    cr_assert_not(mine.recovery);
    aorm_session *other = aorm_session_new(t.r, NULL);
    sres theirs = session_get(&t, other, id);
    cr_assert_eq(theirs.count, 0);
    cr_assert(theirs.recovery);
    /* replay resumes: back to the standby */
    replay(&t, true);
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, aorm_session_commit_lsn(s), 10);
    sres again = session_get(&t, s, id);
    cr_assert_eq(again.count, 1);
    cr_assert(again.recovery, "the session's reads did not go back to the standby");
    /* asked for the primary */
    aorm_session_use_primary(s, true);
    cr_assert_not(session_get(&t, s, id).recovery);
    aorm_session_free(other);
    aorm_session_free(s);
    t_pg_runf(t.primary, "DELETE FROM authors WHERE name = 'ryw session'");
    env_close(&t);
}

Test(replica, a_lagging_standby_leaves_the_rotation) {
    env t;
    env_open_lag(&t, 0.4, true);
    make_table(&t, "lag_items");
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    replay(&t, false);
    /* the primary moves on; the standby stays behind */
    for (int i = 0; i < 10; i++) {
        t_pg_runf(t.primary, "INSERT INTO lag_items VALUES (%d)", i);
        t_settle(t.evl, 0.1);
    }
    wait_host(&t, 0, AORM_HOST_STANDBY, 0, 0, 10);
    aorm_host_status st;
    aorm_hosts_status(t.r, 0, &st);
    cr_assert_gt(st.lag, 0.4);
    answer a = exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ, NULL);
    cr_assert_not(a.recovery, "a read went to a standby out of the rotation");
    replay(&t, true);
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    cr_assert(exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ, NULL).recovery);
    t_pg_runf(t.primary, "DROP TABLE lag_items");
    env_close(&t);
}

/* ---- failover (kills the primary: a sandbox of its own) ------------------------------ */

TestSuite(failover, .timeout = TIMEOUT);

Test(failover, promotion_is_picked_up) {
    env t;
    env_open_lag(&t, 0, false); /* primary first: 0 primary, 1 standby */
    make_table(&t, "fo_items");
    wait_host(&t, 0, AORM_HOST_PRIMARY, 1, 0, 10);
    wait_host(&t, 1, AORM_HOST_STANDBY, 1, 0, 10);
    cr_assert_eq(exec(&t, t.r, "INSERT INTO fo_items VALUES (1)", 0, NULL).code, 0);

    /* in flight when the primary goes: a long statement, an open transaction */
    answer slow = {0};
    cr_assert_eq(aorm_engine_execute(t.r, "SELECT pg_sleep(30)", NULL, NULL, on_answer, &slow), 0);
    aorm_conn *c = acquire(&t, NULL);
    cr_assert_eq(conn_exec(&t, c, "BEGIN").code, 0);
    cr_assert_eq(conn_exec(&t, c, "INSERT INTO fo_items VALUES (2)").code, 0);
    t_settle(t.evl, 0.2);
    PQfinish(t.primary);
    t.primary = NULL;
    t_sandbox("kill-pg");
    cr_assert(t_run_until(t.evl, &slow.done, 10));
    cr_assert(slow.code == AORM_ECONNLOST, "in-flight statement: %d %s", slow.code, slow.msg);
    answer commit = {0};
    int rc = aorm_conn_commit(c, on_answer, &commit);
    if (rc == 0) {
        cr_assert(t_run_until(t.evl, &commit.done, 10));
        cr_assert(commit.code == AORM_ECONNLOST || commit.code == AORM_EUNKNOWN_OUTCOME ||
                  commit.code == AORM_ENOT_COMMITTED, "commit: %d %s", commit.code, commit.msg);
    } else {
        cr_assert_eq(rc, AORM_ECONNLOST);
    }
    aorm_conn_release(c);

    /* no primary: writes fail fast with a clear error, reads still work */
    wait_host(&t, 0, AORM_HOST_DOWN, -1, 0, 10);
    cr_assert_eq(aorm_hosts_primary(t.r), -1);
    double t0 = t_mono();
    answer w = exec(&t, t.r, "INSERT INTO fo_items VALUES (3)", 0, NULL);
    cr_assert_eq(w.code, AORM_ECONNECT);
    cr_assert(strstr(w.msg, "no primary server"), "message: %s", w.msg);
    cr_assert_lt(t_mono() - t0, 0.5, "the write took %.3f s to fail", t_mono() - t0);
    held h = {0};
    cr_assert_eq(aorm_engine_acquire(t.r, on_conn, &h), 0);
    cr_assert(t_run_until(t.evl, &h.done, 5));
    cr_assert_eq(h.code, AORM_ECONNECT);
    answer r = exec(&t, t.r, "SELECT count(*) AS n, pg_is_in_recovery() AS r FROM fo_items", READ, NULL);
    cr_assert_eq(r.code, 0, "%s", r.msg);
    cr_assert(r.recovery);
    cr_assert_eq(r.count, 1);

    /* promotion: found by the next checks, writes go there */
    t_sandbox("promote");
    wait_host(&t, 1, AORM_HOST_PRIMARY, 1, 0, 10);
    cr_assert_eq(aorm_hosts_primary(t.r), 1);
    answer w2 = exec(&t, t.r, "INSERT INTO fo_items VALUES (4)", 0, NULL);
    cr_assert_eq(w2.code, 0, "%s", w2.msg);
    answer r2 = exec(&t, t.r, "SELECT count(*) AS n, pg_is_in_recovery() AS r FROM fo_items", READ, NULL);
    cr_assert_eq(r2.count, 2);
    cr_assert_not(r2.recovery);
    aorm_conn *c2 = acquire(&t, NULL);
    cr_assert_eq(conn_exec(&t, c2, "BEGIN").code, 0);
    cr_assert_eq(conn_exec(&t, c2, "INSERT INTO fo_items VALUES (5)").code, 0);
    cr_assert_eq(conn_commit(&t, c2).code, 0);
    aorm_conn_release(c2);
    env_close(&t);
}
