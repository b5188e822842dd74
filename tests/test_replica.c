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
 *   - read-your-writes through Redis: two routers on two loops, each with
 *     its own Redis client on the sandbox Redis; what one commits under a
 *     consistency key, the other reads (from the primary) under the same
 *     key while replay is paused, from the standby once it has replayed;
 *     another key reads the standby; the stored position only grows; with
 *     Redis stopped (SIGSTOP) a keyed read goes to the primary within the
 *     Redis deadline; the same through sessions;
 *   - a standby lagging past max_lag leaves the rotation and comes back;
 *   - failover: the primary killed, in-flight statements fail with
 *     AORM_ECONNLOST / AORM_EUNKNOWN_OUTCOME, new writes fail fast with
 *     "no primary server", and once the standby is promoted new writes
 *     succeed on it through the same engine.
 *
 * Every test has the same timeout: Criterion 2.4.1's runner leaks under
 * --jobs when timeouts differ. */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <signal.h>
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

static void env_open_with(env *t, double max_lag, bool standby_first, aorm_target_attrs reads, aorm_balance balance) {
    memset(t, 0, sizeof(*t));
    t_loop_open(&t->evl, &t->loop);
    aorm_hosts_options o;
    aorm_hosts_options_init(&o);
    o.reads = reads;
    o.balance = balance;
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

static void env_open_lag(env *t, double max_lag, bool standby_first) {
    env_open_with(t, max_lag, standby_first, AORM_TARGET_PREFER_STANDBY, AORM_BALANCE_LEAST_BUSY);
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

static int owner_has_lsn(void *arg) { return aorm_owner_commit_lsn(arg) > 0; }
typedef struct lsn_past {
    aorm_owner *o;
    uint64_t lsn;
} lsn_past;
static int owner_past(void *arg) {
    lsn_past *p = arg;
    return aorm_owner_commit_lsn(p->o) > p->lsn;
}
static int session_has_lsn(void *arg) { return aorm_session_commit_lsn(arg) > 0; }

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

/* Where reads go under each target: counted over many reads, with both
 * servers up and checked. ANY with random balancing uses both (all 60 on
 * one server: probability 2^-59). */
static int reads_on_standby(env *t, int n) {
    int on_standby = 0;
    for (int i = 0; i < n; i++) {
        answer a = exec(t, t->r, "SELECT pg_is_in_recovery() AS r", READ, NULL);
        cr_assert_eq(a.code, 0, "read %d: %s", i, a.msg);
        on_standby += a.recovery;
    }
    return on_standby;
}

Test(replica, every_read_target_routes_as_documented) {
    static const struct {
        aorm_target_attrs target;
        aorm_balance balance;
        int min_standby, max_standby; /* of 60 reads */
    } cases[] = {
        {AORM_TARGET_ANY, AORM_BALANCE_RANDOM, 1, 59},
        {AORM_TARGET_READ_WRITE, AORM_BALANCE_LEAST_BUSY, 0, 0},
        {AORM_TARGET_PRIMARY, AORM_BALANCE_RANDOM, 0, 0},
        {AORM_TARGET_READ_ONLY, AORM_BALANCE_RANDOM, 60, 60},
        {AORM_TARGET_STANDBY, AORM_BALANCE_LEAST_BUSY, 60, 60},
        {AORM_TARGET_PREFER_STANDBY, AORM_BALANCE_RANDOM, 60, 60},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        env t;
        env_open_with(&t, 0, k % 2 == 0, cases[k].target, cases[k].balance);
        int sb = k % 2 == 0 ? 0 : 1;
        wait_host(&t, sb, AORM_HOST_STANDBY, 1, 0, 10);
        wait_host(&t, 1 - sb, AORM_HOST_PRIMARY, 1, 0, 10);
        int n = reads_on_standby(&t, 60);
        cr_assert(n >= cases[k].min_standby && n <= cases[k].max_standby,
                  "target %d: %d of 60 reads on the standby, expected %d..%d", (int)cases[k].target, n,
                  cases[k].min_standby, cases[k].max_standby);
        /* writes go to the primary whatever the read target */
        cr_assert_not(exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", 0, NULL).recovery);
        env_close(&t);
    }

    /* only the primary listed: STANDBY has nowhere to read and says so;
     * READ_ONLY and PREFER_STANDBY fall back to the primary */
    static const aorm_target_attrs alone[] = {AORM_TARGET_STANDBY, AORM_TARGET_READ_ONLY, AORM_TARGET_PREFER_STANDBY};
    for (size_t k = 0; k < sizeof(alone) / sizeof(alone[0]); k++) {
        env t;
        memset(&t, 0, sizeof(t));
        t_loop_open(&t.evl, &t.loop);
        aorm_hosts_options o;
        aorm_hosts_options_init(&o);
        const char *servers[1] = {t_env("AORM_TEST_DSN")};
        o.servers = servers;
        o.nservers = 1;
        o.check_interval = 0.05;
        o.reads = alone[k];
        o.engine.pool_size = 2;
        t.r = aorm_engine_new_hosts(t.loop, &o);
        cr_assert_not_null(t.r);
        wait_host(&t, 0, AORM_HOST_PRIMARY, 1, 0, 10);
        answer a = exec(&t, t.r, "SELECT pg_is_in_recovery() AS r", READ, NULL);
        if (alone[k] == AORM_TARGET_STANDBY) {
            cr_assert_eq(a.code, AORM_ECONNECT, "STANDBY with no standby: %s (%s)", aorm_errname(a.code), a.msg);
            cr_assert(strstr(a.msg, "no server to read from"), "message: %s", a.msg);
        } else {
            cr_assert_eq(a.code, 0, "target %d: %s", (int)alone[k], a.msg);
            cr_assert_not(a.recovery);
        }
        env_close(&t);
    }
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
    /* the router's own checks are not the callers' statements */
    cr_assert_lt(st.statements, s0.statements + s1.statements);
    cr_assert_geq(st.statements, 25);
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
    /* until the position is back (right behind the COMMIT's answer) the
     * writer's reads go to the primary anyway */
    answer early = exec(&t, t.r, q, READ, writer);
    cr_assert_eq(early.count, 1);
    cr_assert(t_run_until_fn(t.evl, owner_has_lsn, writer, 5), "the commit's position did not come back");
    uint64_t lsn = aorm_owner_commit_lsn(writer);
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
    lsn_past past = {writer, lsn};
    cr_assert(t_run_until_fn(t.evl, owner_past, &past, 5), "the write's position did not come back");
    /* a position set from elsewhere (another process) */
    aorm_owner_set_commit_lsn(other, aorm_owner_commit_lsn(writer));
    cr_assert_not(exec(&t, t.r, q, READ, other).recovery);
    replay(&t, true);
    aorm_owner_free(writer);
    aorm_owner_free(other);
    t_pg_runf(t.primary, "DROP TABLE ryw_items");
    env_close(&t);
}

/* ---- read-your-writes shared through Redis ------------------------------------ */

typedef struct fleet {
    env t;
    aorm_redis *rd;
} fleet;

static void fleet_open(fleet *f) {
    env *t = &f->t;
    memset(f, 0, sizeof(*f));
    t_loop_open(&t->evl, &t->loop);
    aorm_redis_options ro;
    aorm_redis_options_init(&ro);
    t_redis_sandbox(&ro);
    ro.command_timeout = 0.3;
    ro.reconnect_max = 0.2;
    f->rd = aorm_redis_new(t->loop, &ro);
    cr_assert_not_null(f->rd);
    aorm_hosts_options o;
    aorm_hosts_options_init(&o);
    const char *servers[2] = {t_env("AORM_TEST_REPLICA_DSN"), t_env("AORM_TEST_DSN")};
    o.servers = servers;
    o.nservers = 2;
    o.check_interval = 0.05;
    o.check_timeout = 1;
    o.max_lag = 0;
    o.engine.pool_size = 4;
    o.engine.pool_timeout = 3;
    o.engine.connect_timeout = 2;
    o.redis = f->rd;
    o.redis_prefix = "aorm:test:ryw:";
    o.redis_deadline = 0.3;
    t->r = aorm_engine_new_hosts(t->loop, &o);
    cr_assert_not_null(t->r);
    t->primary = PQconnectdb(t_env("AORM_TEST_DSN"));
    cr_assert_eq(PQstatus(t->primary), CONNECTION_OK);
    t->standby = PQconnectdb(t_env("AORM_TEST_REPLICA_DSN"));
    cr_assert_eq(PQstatus(t->standby), CONNECTION_OK);
}

static void fleet_close(fleet *f) {
    aorm_engine_free(f->t.r);
    f->t.r = NULL;
    aorm_redis_free(f->rd);
    env_close(&f->t);
}

static int redis_idle(void *arg) {
    aorm_redis_stats st;
    aorm_redis_stats_get(arg, &st);
    return st.in_flight == 0 && st.waiting == 0;
}

typedef struct rget {
    int done;
    int code;
    bool nil;
    char val[64];
} rget;

static void on_rget(aorm_redis *r, redisReply *reply, const aorm_error *err, void *user) {
    (void)r;
    rget *g = user;
    g->done++;
    g->code = err ? err->code : 0;
    if (reply && reply->type == REDIS_REPLY_NIL) g->nil = true;
    if (reply && reply->type == REDIS_REPLY_STRING) snprintf(g->val, sizeof(g->val), "%s", reply->str);
}

static rget redis_cmd(fleet *f, const char *a0, const char *a1, const char *a2) {
    rget g = {0};
    const char *argv[3] = {a0, a1, a2};
    cr_assert_eq(aorm_redis_command_argv(f->rd, a2 ? 3 : 2, argv, NULL, NULL, on_rget, &g), 0);
    cr_assert(t_run_until(f->t.evl, &g.done, 10));
    cr_assert_eq(g.code, 0, "redis %s %s: %d", a0, a1, g.code);
    return g;
}

/* A read through a new owner of f's router with consistency key `key`
 * (NULL: none). */
static answer keyed_read(fleet *f, const char *key, const char *sql) {
    aorm_owner *o = aorm_owner_new(f->t.r);
    cr_assert_not_null(o);
    if (key) cr_assert_eq(aorm_owner_set_consistency_key(o, key), 0);
    answer a = exec(&f->t, f->t.r, sql, READ, o);
    aorm_owner_free(o);
    return a;
}

Test(replica, read_your_writes_shared_through_redis) {
    fleet A, B;
    fleet_open(&A);
    fleet_open(&B);
    make_table(&A.t, "ryw_fleet");
    wait_host(&A.t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    wait_host(&B.t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    char key[64], other[64], high[64];
    snprintf(key, sizeof(key), "user-%d", (int)getpid());
    snprintf(other, sizeof(other), "user-%d-other", (int)getpid());
    snprintf(high, sizeof(high), "user-%d-high", (int)getpid());
    char full[128];
    snprintf(full, sizeof(full), "aorm:test:ryw:%s", key);
    redis_cmd(&A, "DEL", full, NULL);
    const char *q = "SELECT count(*) AS n, pg_is_in_recovery() AS r FROM ryw_fleet";

    /* misuse: a plain owner, an empty key, a router without Redis */
    aorm_owner *w = aorm_owner_new(A.t.r);
    cr_assert_eq(aorm_owner_set_consistency_key(w, ""), AORM_EMISUSE);
    env plain;
    env_open(&plain);
    aorm_owner *po = aorm_owner_new(plain.r);
    cr_assert_eq(aorm_owner_set_consistency_key(po, "k"), AORM_EMISUSE);
    aorm_owner_free(po);
    env_close(&plain);

    /* A commits under the key while the standby does not replay */
    cr_assert_eq(aorm_owner_set_consistency_key(w, key), 0);
    replay(&A.t, false);
    insert_tx(&A.t, w, "ryw_fleet", 1);
    cr_assert(t_run_until_fn(A.t.evl, owner_has_lsn, w, 5), "the commit's position did not come back");
    uint64_t lsn = aorm_owner_commit_lsn(w);
    cr_assert(t_run_until_fn(A.t.evl, redis_idle, A.rd, 5), "the position was not stored");
    rget stored = redis_cmd(&B, "GET", full, NULL);
    cr_assert_eq(strlen(stored.val), 16, "stored as '%s'", stored.val);
    cr_assert_eq(strtoull(stored.val, NULL, 16), lsn, "stored %s, committed at %" PRIx64, stored.val, lsn);

    /* B (another router, another loop, another Redis connection) under the
     * same key reads the write from the primary; under another key or
     * none it reads the standby, which has not replayed it */
    answer b1 = keyed_read(&B, key, q);
    cr_assert_eq(b1.code, 0, "%s", b1.msg);
    cr_assert_eq(b1.count, 1, "the same key did not read the write");
    cr_assert_not(b1.recovery);
    answer b2 = keyed_read(&B, other, q);
    cr_assert_eq(b2.code, 0, "%s", b2.msg);
    cr_assert(b2.recovery, "another key did not read the standby");
    cr_assert_eq(b2.count, 0);
    answer b3 = keyed_read(&B, NULL, q);
    cr_assert(b3.recovery);
    /* one owner: only its first read asks Redis, the later ones keep the position */
    aorm_owner *bo = aorm_owner_new(B.t.r);
    cr_assert_eq(aorm_owner_set_consistency_key(bo, key), 0);
    aorm_redis_stats s0, s1;
    aorm_redis_stats_get(B.rd, &s0);
    for (int i = 0; i < 3; i++) cr_assert_not(exec(&B.t, B.t.r, q, READ, bo).recovery);
    aorm_redis_stats_get(B.rd, &s1);
    cr_assert_eq(s1.commands - s0.commands, 1, "%" PRIu64 " Redis commands for three reads", s1.commands - s0.commands);
    cr_assert_geq(aorm_owner_commit_lsn(bo), lsn);

    /* after replay resumes and the standby has replayed it: the standby */
    replay(&A.t, true);
    wait_host(&B.t, 0, AORM_HOST_STANDBY, 1, lsn, 10);
    answer b4 = keyed_read(&B, key, q);
    cr_assert_eq(b4.code, 0, "%s", b4.msg);
    cr_assert(b4.recovery, "the key's reads did not go back to the standby");
    cr_assert_eq(b4.count, 1);
    cr_assert(exec(&B.t, B.t.r, q, READ, bo).recovery);
    aorm_owner_free(bo);

    /* the stored position only grows: a higher one stays */
    char fullhigh[128];
    snprintf(fullhigh, sizeof(fullhigh), "aorm:test:ryw:%s", high);
    redis_cmd(&A, "SET", fullhigh, "7fffffffffffffff");
    cr_assert_eq(aorm_owner_set_consistency_key(w, high), 0);
    insert_tx(&A.t, w, "ryw_fleet", 2);
    lsn_past past = {w, lsn};
    cr_assert(t_run_until_fn(A.t.evl, owner_past, &past, 5));
    cr_assert(t_run_until_fn(A.t.evl, redis_idle, A.rd, 5));
    cr_assert_str_eq(redis_cmd(&B, "GET", fullhigh, NULL).val, "7fffffffffffffff");
    /* (that owner now trusts no standby: its reads go to the primary) */
    cr_assert_not(exec(&A.t, A.t.r, q, READ, w).recovery);
    cr_assert_eq(aorm_owner_commit_lsn(w), UINT64_C(0x7fffffffffffffff));
    aorm_owner_free(w);

    /* Redis stopped: a keyed read still sees the write, from the primary,
     * within the Redis deadline; reads without a key never wait */
    w = aorm_owner_new(A.t.r);
    cr_assert_eq(aorm_owner_set_consistency_key(w, key), 0);
    replay(&A.t, false);
    insert_tx(&A.t, w, "ryw_fleet", 3);
    cr_assert(t_run_until_fn(A.t.evl, owner_has_lsn, w, 5));
    cr_assert(t_run_until_fn(A.t.evl, redis_idle, A.rd, 5));
    pid_t pid = t_sandbox_redis_pid();
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    double t0 = aorm_loop_now(B.t.loop);
    answer b5 = keyed_read(&B, key, q);
    double took = aorm_loop_now(B.t.loop) - t0;
    answer b6 = keyed_read(&B, other, q);
    double t1 = aorm_loop_now(B.t.loop);
    answer b7 = keyed_read(&B, NULL, q);
    double took_plain = aorm_loop_now(B.t.loop) - t1;
    kill(pid, SIGCONT);
    cr_assert_eq(b5.code, 0, "%s", b5.msg);
    cr_assert_eq(b5.count, 3, "Redis stopped: the keyed read missed the write");
    cr_assert_not(b5.recovery, "Redis stopped: the keyed read went to the lagging standby");
    cr_assert_lt(took, 1.0, "the keyed read took %.3f s (Redis deadline 0.3 s)", took);
    cr_assert_geq(took, 0.25, "the keyed read did not wait for Redis (%.3f s)", took);
    cr_assert_eq(b6.code, 0, "%s", b6.msg);
    cr_assert_not(b6.recovery, "Redis stopped: an unknown key must not trust the standby");
    cr_assert(b7.recovery);
    cr_assert_lt(took_plain, 0.25, "a read without a key waited %.3f s", took_plain);
    replay(&A.t, true);

    /* Redis back: B's keyed reads use it again */
    wait_host(&B.t, 0, AORM_HOST_STANDBY, 1, aorm_owner_commit_lsn(w), 10);
    answer b8 = {0};
    for (int i = 0; i < 50; i++) {
        b8 = keyed_read(&B, key, q);
        if (b8.recovery) break;
        t_settle(B.t.evl, 0.1); /* the breaker / reconnect after the deadline */
    }
    cr_assert(b8.recovery, "Redis back: the keyed read never reached the standby");
    cr_assert_eq(b8.count, 3);

    aorm_owner_free(w);
    redis_cmd(&A, "DEL", full, NULL);
    redis_cmd(&A, "DEL", fullhigh, NULL);
    t_pg_runf(A.t.primary, "DROP TABLE ryw_fleet");
    fleet_close(&A);
    fleet_close(&B);
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
    cr_assert(t_run_until_fn(t.evl, session_has_lsn, s, 5), "the commit's position did not come back");
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

/* The same through sessions: a session of router A commits under a key, a
 * session of router B under the same key reads the row. */
Test(replica, sessions_share_a_consistency_key) {
    fleet A, B;
    fleet_open(&A);
    fleet_open(&B);
    wait_host(&A.t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    wait_host(&B.t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    t_pg_runf(A.t.primary, "DELETE FROM authors WHERE name = 'ryw fleet session'");
    char key[64];
    snprintf(key, sizeof(key), "session-%d", (int)getpid());
    aorm_session *w = aorm_session_new(A.t.r, NULL);
    cr_assert_not_null(w);
    cr_assert_eq(aorm_session_set_consistency_key(w, key), 0);
    cr_assert_eq(aorm_session_set_consistency_key(NULL, key), AORM_EMISUSE);
    replay(&A.t, false);
    author *a = aorm_session_new_object(w, &author_model);
    a->name = aorm_session_strdup(w, "ryw fleet session");
    cr_assert_eq(aorm_session_add(w, a), 0);
    sres c = {0};
    cr_assert_eq(aorm_session_commit(w, on_sdone, &c), 0);
    cr_assert(t_run_until(A.t.evl, &c.done, 30));
    cr_assert_eq(c.code, 0, "commit failed: %s", aorm_errname(c.code));
    int64_t id = a->id;
    cr_assert(t_run_until_fn(A.t.evl, session_has_lsn, w, 5));
    cr_assert(t_run_until_fn(A.t.evl, redis_idle, A.rd, 5));

    aorm_session *r = aorm_session_new(B.t.r, NULL), *stranger = aorm_session_new(B.t.r, NULL);
    cr_assert_eq(aorm_session_set_consistency_key(r, key), 0);
    sres mine = session_get(&B.t, r, id);
    cr_assert_eq(mine.count, 1, "the same key on another router did not read the write");
    cr_assert_not(mine.recovery);
    cr_assert_geq(aorm_session_commit_lsn(r), aorm_session_commit_lsn(w));
    sres theirs = session_get(&B.t, stranger, id);
    cr_assert_eq(theirs.count, 0);
    cr_assert(theirs.recovery);
    replay(&A.t, true);
    wait_host(&B.t, 0, AORM_HOST_STANDBY, 1, aorm_session_commit_lsn(w), 10);
    sres again = session_get(&B.t, r, id);
    cr_assert_eq(again.count, 1);
    cr_assert(again.recovery, "the key's reads did not go back to the standby");
    aorm_session_free(stranger);
    aorm_session_free(r);
    aorm_session_free(w);
    t_pg_runf(A.t.primary, "DELETE FROM authors WHERE name = 'ryw fleet session'");
    fleet_close(&A);
    fleet_close(&B);
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

/* The port= value of a conninfo (the sandbox writes key=value pairs). */
static char *port_of(const char *dsn) {
    const char *p = strstr(dsn, "port=");
    cr_assert_not_null(p);
    p += 5;
    return strndup(p, strspn(p, "0123456789"));
}

/* One conninfo with host and port lists: one server each, target_session_attrs
 * dropped (the router decides), reads still on the standby. */
Test(replica, a_conninfo_host_list_is_split) {
    const char *dsn = t_env("AORM_TEST_DSN");
    char *pp = port_of(dsn), *rp = port_of(t_env("AORM_TEST_REPLICA_DSN"));
    char *list = NULL;
    const char *rest = strstr(dsn, "dbname=");
    cr_assert_not_null(rest);
    cr_assert_gt(asprintf(&list, "host=localhost,localhost port=%s,%s target_session_attrs=any %s", rp, pp, rest), 0);
    struct ev_loop *evl;
    aorm_loop *loop;
    t_loop_open(&evl, &loop);
    aorm_hosts_options o;
    aorm_hosts_options_init(&o);
    o.conninfo = list;
    o.check_interval = 0.05;
    aorm_engine *r = aorm_engine_new_hosts(loop, &o);
    cr_assert_not_null(r);
    cr_assert_eq(aorm_hosts_count(r), 2);
    env t = {.evl = evl, .loop = loop, .r = r};
    wait_host(&t, 0, AORM_HOST_STANDBY, 1, 0, 10);
    wait_host(&t, 1, AORM_HOST_PRIMARY, 1, 0, 10);
    cr_assert(exec(&t, r, "SELECT pg_is_in_recovery() AS r", READ, NULL).recovery);
    cr_assert_not(exec(&t, r, "SELECT pg_is_in_recovery() AS r", 0, NULL).recovery);
    aorm_engine_free(r);
    t_loop_close(&evl, &loop);
    /* an unparsable conninfo, or no server at all */
    aorm_hosts_options bad;
    aorm_hosts_options_init(&bad);
    t_loop_open(&evl, &loop);
    bad.conninfo = "host='unterminated";
    cr_assert_null(aorm_engine_new_hosts(loop, &bad));
    bad.conninfo = NULL;
    cr_assert_null(aorm_engine_new_hosts(loop, &bad));
    t_loop_close(&evl, &loop);
    free(list);
    free(pp);
    free(rp);
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
