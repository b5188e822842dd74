/* test_session_tx.c -- what a session's transaction promises when things
 * go wrong, against the sandbox PostgreSQL:
 *   - a BEGIN that fails (no connection within the pool timeout) leaves
 *     the session rollback-required: nothing runs in another transaction
 *     or in autocommit as if the begin had worked;
 *   - a held connection lost while the session has nothing in flight
 *     (its backend terminated) makes the session rollback-required, and
 *     the next statement or commit says so;
 *   - a COMMIT cut off after it was sent is an unknown outcome: what the
 *     transaction inserted leaves the session and is never inserted again;
 *     a COMMIT never sent is AORM_ENOT_COMMITTED and the objects are as
 *     after a rollback;
 *   - a value the program set is the value written, also zero / false on a
 *     column with a server default; only columns the program leaves to
 *     the server take their defaults, whose values are read back;
 *   - an engine freed under its sessions cancels their work, and the
 *     sessions can still be freed (and fail cleanly until then).
 *
 * Each test creates its own table (named with the process id: Criterion
 * runs every test in a process of its own), so nothing here touches the
 * reference data. Backends are terminated from a side libpq connection,
 * only ever the test's own session's (found by pg_backend_pid() through
 * that session), so the suite can run beside others; every wait is for
 * an event (a callback, the engine's count of lost
 * connections, a backend's state in pg_stat_activity), never for time. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support.h"

#define TIMEOUT 60
#define WAIT 20.0 /* seconds one step may take before the test fails */

/* ==========================================================================
 * The model: one table with server defaults of every common kind
 * ========================================================================== */

static char item_table[64];

typedef struct stx_item {
    int64_t id;          /* bigserial */
    char *name;          /* text NOT NULL */
    bool flag;           /* boolean NOT NULL DEFAULT true */
    int32_t qty;         /* int NOT NULL DEFAULT 7 */
    int64_t created;     /* timestamptz NOT NULL DEFAULT now() */
    aorm_opt_int32 rank; /* int DEFAULT 5 (nullable) */
    char *note;          /* text NOT NULL DEFAULT 'none' */
} stx_item;

static const aorm_column stx_item_columns[] = {
    AORM_COLUMN(stx_item, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(stx_item, name, AORM_TEXT, 0),
    AORM_COLUMN(stx_item, flag, AORM_BOOL, 0, .server_default = "true"),
    AORM_COLUMN(stx_item, qty, AORM_INT4, 0, .server_default = "7"),
    AORM_COLUMN(stx_item, created, AORM_TIMESTAMPTZ, 0, .server_default = "now()"),
    AORM_COLUMN(stx_item, rank, AORM_INT4, AORM_NULLABLE, .server_default = "5"),
    AORM_COLUMN(stx_item, note, AORM_TEXT, 0, .server_default = "'none'"),
};
const aorm_model stx_item_model = {
    AORM_MODEL_OF(stx_item, item_table),
    AORM_COLUMNS(stx_item_columns),
};

/* ==========================================================================
 * Environment
 * ========================================================================== */

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    PGconn *pg; /* side connection: set-up, checks, pg_terminate_backend */
    long lock_key; /* advisory lock the blocking trigger waits for */
} env;

/* pool < 0, overflow < 0, pool_timeout <= 0: engine defaults */
static void env_open_pool(env *t, int pool, int overflow, double pool_timeout) {
    memset(t, 0, sizeof(*t));
    snprintf(item_table, sizeof(item_table), "stx_items_%ld", (long)getpid());
    t->lock_key = 7400000L + (long)getpid();
    t->pg = t_pg();
    char msg[256];
    cr_assert_eq(aorm_model_validate(&stx_item_model, msg, sizeof(msg)), 0, "%s", msg);
    t_pg_runf(t->pg,
            "SET client_min_messages = warning; DROP TABLE IF EXISTS \"%1$s\";"
            "CREATE TABLE \"%1$s\" (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, flag boolean NOT NULL DEFAULT "
            "true, qty int NOT NULL DEFAULT 7, created timestamptz NOT NULL DEFAULT now(), rank int DEFAULT 5, "
            "note text NOT NULL DEFAULT 'none')",
            item_table);
    t_loop_open(&t->evl, &t->loop);
    aorm_engine_options o; /* t_engine() sets conninfo and, through PgBouncer, .pgbouncer */
    aorm_engine_options_init(&o);
    if (pool >= 0) o.pool_size = pool;
    if (overflow >= 0) o.max_overflow = overflow;
    if (pool_timeout > 0) o.pool_timeout = pool_timeout;
    t->e = t_engine(t->loop, &o);
}

static void env_open(env *t) { env_open_pool(t, -1, -1, 0); }

static void env_close(env *t) {
    aorm_engine_free(t->e);
    t->e = NULL;
    t_loop_close(&t->evl, &t->loop);
    t_pg_runf(t->pg, "SET client_min_messages = warning; DROP TABLE IF EXISTS \"%s\";"
               "DROP FUNCTION IF EXISTS \"%s_block\"()",
            item_table, item_table);
    PQfinish(t->pg);
}

/* Runs the loop a little longer: a late second callback shows up after
 * this. */
static void settle(env *t) { t_settle(t->evl, 0.1); }

static aorm_engine_stats stats(const env *t) { return t_stats(t->e); }

static int one_lost(void *arg) { return stats(arg).connections_lost >= 1; }

/* ==========================================================================
 * Callback recorders
 * ========================================================================== */

/* t_rec (the test kit's recorder), through t_rec_on_done, t_rec_on_objs
 * (obj: the first object, len: how many), t_rec_on_obj, t_rec_on_rows. */

static void await(env *t, t_rec *r, const char *what) {
    cr_assert(t_run_until(t->evl, &r->calls, WAIT), "no callback for %s within %.0f s", what, WAIT);
    settle(t);
    cr_assert_eq(r->calls, 1, "%s called back %d times", what, r->calls);
}

static void await_code(env *t, t_rec *r, int code, const char *what) {
    await(t, r, what);
    cr_assert_eq(r->code, code, "%s: expected %s, got %s [%s] %s", what, aorm_errname(code), aorm_errname(r->code),
                 r->sqlstate, r->msg);
}

static void await_ok(env *t, t_rec *r, const char *what) { await_code(t, r, 0, what); }

/* ---- session steps, run to completion ---- */

static void commit_expect(env *t, aorm_session *s, int code, const char *what) {
    t_rec r = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &r), 0);
    await_code(t, &r, code, what);
}

static void rollback_ok(env *t, aorm_session *s) {
    t_rec r = {0};
    cr_assert_eq(aorm_session_rollback(s, t_rec_on_done, &r), 0);
    await_ok(t, &r, "rollback");
}

static void flush_expect(env *t, aorm_session *s, int code, const char *what) {
    t_rec r = {0};
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &r), 0);
    await_code(t, &r, code, what);
}

/* Raw SQL through the session (in its transaction), one integer back. */
static int64_t session_int(env *t, aorm_session *s, const char *sql) {
    t_rec r = {0};
    cr_assert_eq(aorm_session_execute(s, aorm_raw(sql), t_rec_on_rows, &r), 0);
    await_ok(t, &r, sql);
    cr_assert(r.has_int, "%s returned no integer", sql);
    return r.ival;
}

static aorm_stmt *q_named(const char *name) {
    aorm_stmt *q = aorm_select(&stx_item_model);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(stx_item, name), aorm_text(name))), 0);
    return q;
}

static void query_expect(env *t, aorm_session *s, const char *name, int code, t_rec *r, const char *what) {
    memset(r, 0, sizeof(*r));
    cr_assert_eq(aorm_session_query(s, q_named(name), NULL, t_rec_on_objs, r), 0);
    await_code(t, r, code, what);
}

/* A new item named `name` whose INSERT writes every field as it is. */
static stx_item *new_item_values(aorm_session *s, const char *name) {
    stx_item *it = aorm_session_new_object(s, &stx_item_model);
    cr_assert_not_null(it);
    it->name = aorm_session_strdup(s, name);
    cr_assert_not_null(it->name);
    return it;
}

/* A new item named `name` that leaves every column with a server default
 * to the server. */
static stx_item *new_item(aorm_session *s, const char *name) {
    stx_item *it = new_item_values(s, name);
    cr_assert_eq(aorm_object_use_default(s, it, NULL), 0);
    return it;
}

static long rows_named(env *t, const char *name) {
    return t_pg_longf(t->pg, "SELECT count(*) FROM \"%s\" WHERE name = '%s'", item_table, name);
}

/* Terminates a backend from the side connection and waits until it is
 * gone from pg_stat_activity (the server has closed its socket). */
static void terminate_backend(env *t, int64_t pid) {
    cr_assert_eq(t_pg_longf(t->pg, "SELECT pg_terminate_backend(%lld)::int", (long long)pid), 1,
                 "backend %lld was not terminated", (long long)pid);
    for (int i = 0; i < 20000; i++) {
        if (t_pg_longf(t->pg, "SELECT count(*) FROM pg_stat_activity WHERE pid = %lld", (long long)pid) == 0) return;
        usleep(1000);
    }
    cr_assert_fail("backend %lld did not exit", (long long)pid);
}

/* ==========================================================================
 * 1. A failed BEGIN is never forgotten
 * ========================================================================== */

typedef struct hold {
    int calls;
    int code;
    aorm_conn *c;
} hold;

static void on_hold(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    hold *h = user;
    h->calls++;
    h->code = err ? err->code : 0;
    h->c = c;
}

Test(tx_begin, a_failed_begin_leaves_the_session_rollback_required, .timeout = TIMEOUT) {
    env t;
    env_open_pool(&t, 1, 0, 0.3);
    /* the pool's only connection is taken: the session's BEGIN cannot
     * have one within the pool timeout */
    hold h = {0};
    cr_assert_eq(aorm_engine_acquire(t.e, on_hold, &h), 0);
    cr_assert(t_run_until(t.evl, &h.calls, WAIT));
    cr_assert_eq(h.code, 0);

    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    static const aorm_tx_options ser_ro = {.isolation = AORM_ISO_SERIALIZABLE, .read_only = true};
    t_rec b = {0};
    cr_assert_eq(aorm_session_begin(s, &ser_ro, t_rec_on_done, &b), 0);
    await_code(&t, &b, AORM_EPOOLTIMEOUT, "begin(SERIALIZABLE, READ ONLY) without a connection");
    cr_assert(aorm_session_rollback_required(s), "a failed begin was forgotten");
    cr_assert(aorm_session_in_transaction(s));
    aorm_conn_release(h.c); /* connections are available again: nothing may use them as if begun */

    char name[64];
    snprintf(name, sizeof(name), "begin-%ld", (long)getpid());
    stx_item *it = new_item(s, name);
    cr_assert_eq(aorm_session_add(s, it), 0);
    flush_expect(&t, s, AORM_ETXSTATE, "flush after a failed begin");
    commit_expect(&t, s, AORM_ETXSTATE, "commit after a failed begin");
    t_rec q;
    query_expect(&t, s, name, AORM_ETXSTATE, &q, "query after a failed begin");
    t_rec g = {0};
    cr_assert_eq(aorm_session_get(s, &stx_item_model, &(stx_item){.id = 1}, NULL, t_rec_on_obj, &g), 0);
    await_code(&t, &g, AORM_ETXSTATE, "get after a failed begin");
    cr_assert_eq(rows_named(&t, name), 0, "a write ran outside the transaction that was asked for");
    cr_assert(aorm_session_rollback_required(s));

    rollback_ok(&t, s);
    cr_assert_not(aorm_session_rollback_required(s));
    cr_assert_not(aorm_session_in_transaction(s));
    cr_assert_eq(aorm_object_state_of(s, it), AORM_TRANSIENT, "the rollback discards the unwritten add");

    /* begun again, the transaction has the options it was asked for */
    t_rec b2 = {0};
    cr_assert_eq(aorm_session_begin(s, &ser_ro, t_rec_on_done, &b2), 0);
    await_ok(&t, &b2, "begin again");
    cr_assert_eq(session_int(&t, s, "SELECT (current_setting('transaction_isolation') = 'serializable')::int"), 1);
    cr_assert_eq(session_int(&t, s, "SELECT (current_setting('transaction_read_only') = 'on')::int"), 1);
    commit_expect(&t, s, 0, "commit of the read-only transaction");
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * 2. The held connection lost while the session has nothing in flight
 * ========================================================================== */

/* Opens a transaction on s that has written one row (named `name`) and
 * returns its backend's pid. */
static int64_t tx_with_one_insert(env *t, aorm_session *s, const char *name, stx_item **out) {
    int64_t pid = session_int(t, s, "SELECT pg_backend_pid()"); /* raw SQL: begins the transaction */
    cr_assert(aorm_session_in_transaction(s));
    stx_item *it = new_item(s, name);
    cr_assert_eq(aorm_session_add(s, it), 0);
    flush_expect(t, s, 0, "flush inside the transaction");
    cr_assert_eq(aorm_object_state_of(s, it), AORM_PERSISTENT);
    *out = it;
    return pid;
}

Test(tx_loss, idle_loss_seen_by_the_engine_makes_the_next_statement_fail_and_requires_rollback,
     .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    char name[64];
    snprintf(name, sizeof(name), "idle-loss-%ld", (long)getpid());
    stx_item *it;
    int64_t pid = tx_with_one_insert(&t, s, name, &it);

    terminate_backend(&t, pid);
    cr_assert(t_run_until_fn(t.evl, one_lost, &t, WAIT), "the engine never noticed the lost connection");
    cr_assert(aorm_session_rollback_required(s), "a transaction whose connection is gone needs no rollback?");
    cr_assert(aorm_session_in_transaction(s));

    t_rec q;
    query_expect(&t, s, name, AORM_ECONNLOST, &q, "the first statement after the loss");
    cr_assert_str_eq(q.sqlstate, "08006");
    query_expect(&t, s, name, AORM_ETXSTATE, &q, "the second statement after the loss");
    commit_expect(&t, s, AORM_ETXSTATE, "commit of the lost transaction");
    cr_assert(aorm_session_rollback_required(s));
    rollback_ok(&t, s);
    cr_assert_not(aorm_session_in_transaction(s));
    cr_assert_eq(aorm_object_state_of(s, it), AORM_TRANSIENT, "its INSERT went with the transaction");
    cr_assert_eq(it->id, 0, "the server-generated key is cleared");
    cr_assert_eq(rows_named(&t, name), 0);

    /* the session goes on with a new connection */
    cr_assert_eq(aorm_session_add(s, it), 0);
    commit_expect(&t, s, 0, "commit on a new connection");
    cr_assert_eq(rows_named(&t, name), 1);
    aorm_session_free(s);
    env_close(&t);
}

Test(tx_loss, idle_loss_then_commit_is_not_committed_and_the_objects_are_as_after_rollback, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    char name[64];
    snprintf(name, sizeof(name), "idle-commit-%ld", (long)getpid());
    stx_item *it;
    int64_t pid = tx_with_one_insert(&t, s, name, &it);

    terminate_backend(&t, pid);
    cr_assert(t_run_until_fn(t.evl, one_lost, &t, WAIT), "the engine never noticed the lost connection");
    uint64_t sent = stats(&t).statements;
    commit_expect(&t, s, AORM_ENOT_COMMITTED, "commit after the connection was lost");
    cr_assert_eq(stats(&t).statements, sent, "a COMMIT went out on a lost connection");
    cr_assert_not(aorm_session_in_transaction(s), "the transaction is over");
    cr_assert_not(aorm_session_rollback_required(s));
    cr_assert_eq(aorm_object_state_of(s, it), AORM_TRANSIENT, "as after a rollback");
    cr_assert_eq(rows_named(&t, name), 0);

    cr_assert_eq(aorm_session_add(s, it), 0);
    commit_expect(&t, s, 0, "commit again");
    cr_assert_eq(rows_named(&t, name), 1, "written once");
    aorm_session_free(s);
    env_close(&t);
}

Test(tx_loss, loss_the_engine_has_not_seen_yet_fails_the_next_statement_and_requires_rollback,
     .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    char name[64];
    snprintf(name, sizeof(name), "unseen-loss-%ld", (long)getpid());
    stx_item *it;
    int64_t pid = tx_with_one_insert(&t, s, name, &it);

    /* the loop does not run between the termination and the query: the
     * engine learns of the loss while sending or reading it */
    terminate_backend(&t, pid);
    t_rec q;
    query_expect(&t, s, name, AORM_ECONNLOST, &q, "the first statement after the loss");
    cr_assert(aorm_session_rollback_required(s));
    commit_expect(&t, s, AORM_ETXSTATE, "commit of the lost transaction");
    rollback_ok(&t, s);
    cr_assert_eq(aorm_object_state_of(s, it), AORM_TRANSIENT);
    cr_assert_eq(rows_named(&t, name), 0);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * 3. COMMIT cut off after it was sent: unknown outcome
 * ========================================================================== */

/* A trigger on the table's INSERTs that waits for an advisory lock the
 * side connection holds: inside COMMIT when deferred (a deferred
 * constraint trigger), inside the INSERT itself otherwise. */
static void add_blocking_trigger(env *t, bool in_commit) {
    t_pg_runf(t->pg,
            "CREATE FUNCTION \"%1$s_block\"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM pg_advisory_xact_lock(%2$ld); RETURN NULL; END $$;"
            "CREATE CONSTRAINT TRIGGER block_insert AFTER INSERT ON \"%1$s\" %3$s "
            "FOR EACH ROW EXECUTE FUNCTION \"%1$s_block\"()",
            item_table, t->lock_key, in_commit ? "DEFERRABLE INITIALLY DEFERRED" : "NOT DEFERRABLE");
}

static void add_blocking_commit_trigger(env *t) { add_blocking_trigger(t, true); }

typedef struct waiting_backend {
    env *t;
    int64_t pid;
    const char *query_prefix; /* of the statement it waits in */
} waiting_backend;

/* The backend is waiting for the advisory lock inside a statement that
 * starts with query_prefix. */
static int backend_blocked(void *arg) {
    waiting_backend *w = arg;
    return t_pg_longf(w->t->pg,
                   "SELECT count(*) FROM pg_stat_activity WHERE pid = %lld AND wait_event_type = 'Lock' AND "
                   "wait_event = 'advisory' AND starts_with(query, '%s')",
                   (long long)w->pid, w->query_prefix) == 1;
}

/* Waits until the backend of the side connection's lock waiter is gone or
 * idle (its client vanished: the server rolled it back). */
static void wait_backend_gone(env *t, int64_t pid) {
    for (int i = 0; i < 20000; i++) {
        if (t_pg_longf(t->pg, "SELECT count(*) FROM pg_stat_activity WHERE pid = %lld", (long long)pid) == 0) return;
        usleep(1000);
    }
    cr_assert_fail("backend %lld did not exit", (long long)pid);
}

Test(tx_commit, connection_lost_mid_commit_is_unknown_and_nothing_is_inserted_twice, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    char name[64], old_name[64];
    snprintf(name, sizeof(name), "mid-commit-%ld", (long)getpid());
    snprintf(old_name, sizeof(old_name), "mid-commit-old-%ld", (long)getpid());
    t_pg_runf(t.pg, "INSERT INTO \"%s\"(name, qty) VALUES ('%s', 1)", item_table, old_name);
    add_blocking_commit_trigger(&t);

    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    int64_t pid = session_int(&t, s, "SELECT pg_backend_pid()");
    t_rec q;
    query_expect(&t, s, old_name, 0, &q, "load the existing row");
    cr_assert_eq(q.len, 1);
    stx_item *old = q.obj;
    old->qty = 2; /* an UPDATE in the same transaction */
    stx_item *it = new_item(s, name);
    it->qty = 3;
    cr_assert_eq(aorm_session_add(s, it), 0);

    t_pg_runf(t.pg, "SELECT pg_advisory_lock(%ld)", t.lock_key);
    t_rec c = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    waiting_backend w = {&t, pid, "COMMIT"};
    cr_assert(t_run_until_fn(t.evl, backend_blocked, &w, WAIT), "the COMMIT never reached the trigger");
    cr_assert_eq(c.calls, 0);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT pg_terminate_backend(%lld)::int", (long long)pid), 1);
    await_code(&t, &c, AORM_EUNKNOWN_OUTCOME, "COMMIT cut off by the backend's termination");
    cr_assert_str_eq(c.sqlstate, "08007");
    t_pg_runf(t.pg, "SELECT pg_advisory_unlock(%ld)", t.lock_key);

    /* the transaction is over; what it inserted has left the session */
    cr_assert_not(aorm_session_in_transaction(s));
    cr_assert_not(aorm_session_rollback_required(s));
    cr_assert_eq(aorm_object_state_of(s, it), AORM_DETACHED,
                 "an object whose INSERT may have committed is still in the session");
    cr_assert_neq(it->id, 0, "its key stays, to look the row up");
    cr_assert_eq(aorm_session_add(s, it), AORM_EMISUSE, "it can be added again");
    /* the updated object is expired, not modified: no UPDATE goes again */
    cr_assert_eq(aorm_object_state_of(s, old), AORM_PERSISTENT);
    cr_assert_not(aorm_object_modified(s, old));
    uint64_t sent = aorm_session_statements(s);
    flush_expect(&t, s, 0, "flush after the unknown outcome");
    commit_expect(&t, s, 0, "commit after the unknown outcome");
    cr_assert_eq(aorm_session_statements(s), sent, "something was written again");

    /* here the backend died waiting: nothing was committed, and the
     * expired object reloads from its row */
    cr_assert_eq(rows_named(&t, name), 0);
    query_expect(&t, s, old_name, 0, &q, "reload the existing row");
    cr_assert_eq(q.obj, old, "one object per row");
    cr_assert_eq(old->qty, 1, "the expired object was reloaded");
    t_rec g = {0};
    cr_assert_eq(aorm_session_get(s, &stx_item_model, &(stx_item){.id = it->id}, NULL, t_rec_on_obj, &g), 0);
    await_ok(&t, &g, "look the detached object's row up");
    cr_assert_null(g.obj, "no row: the commit did not happen");
    aorm_session_free(s);
    env_close(&t);
}

Test(tx_commit, a_session_freed_with_its_commit_in_flight_reports_an_unknown_outcome, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    add_blocking_commit_trigger(&t);
    char name[64];
    snprintf(name, sizeof(name), "free-in-commit-%ld", (long)getpid());
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    int64_t pid = session_int(&t, s, "SELECT pg_backend_pid()");
    cr_assert_eq(aorm_session_add(s, new_item(s, name)), 0);
    t_pg_runf(t.pg, "SELECT pg_advisory_lock(%ld)", t.lock_key);
    t_rec c = {0}, behind = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &behind), 0);
    waiting_backend w = {&t, pid, "COMMIT"};
    cr_assert(t_run_until_fn(t.evl, backend_blocked, &w, WAIT), "the COMMIT never reached the trigger");
    aorm_session_free(s); /* callbacks from inside this call */
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.code, AORM_EUNKNOWN_OUTCOME, "a COMMIT sent and unanswered: %s", aorm_errname(c.code));
    cr_assert_str_eq(c.sqlstate, "08007");
    cr_assert_eq(behind.calls, 1);
    cr_assert_eq(behind.code, AORM_ECANCELED);
    settle(&t);
    cr_assert(c.calls == 1 && behind.calls == 1);
    t_pg_runf(t.pg, "SELECT pg_advisory_unlock(%ld)", t.lock_key);
    /* the connection went back to the pool with its COMMIT unanswered: the
     * engine drops the answer (committed here, since the backend lived) */
    t_rec q = {0};
    aorm_session *r = aorm_session_new(t.e, NULL);
    cr_assert_not_null(r);
    query_expect(&t, r, name, 0, &q, "the engine still works");
    aorm_session_free(r);
    env_close(&t);
}

/* ==========================================================================
 * 4. A value the program set is the value written
 * ========================================================================== */

/* The row named `name` as "flag qty rank note created-epoch" ("" for NULL). */
static char *row_text(env *t, const char *name) {
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT concat_ws(' ', flag, qty, coalesce(rank::text, 'null'), note, "
             "floor(extract(epoch FROM created))::bigint) "
             "FROM \"%s\" WHERE name = '%s'",
             item_table, name);
    char *v = t_pg_exec(t->pg, sql);
    cr_assert_not_null(v, "no row named %s", name);
    return v;
}

/* aorm timestamps are microseconds since 2000-01-01 */
#define PG_EPOCH_OFFSET 946684800LL

static void expect_row(env *t, const char *name, const char *want) {
    char *v = row_text(t, name);
    cr_assert_str_eq(v, want, "row %s: %s, expected %s", name, v, want);
    free(v);
}

Test(tx_defaults, explicit_zero_and_false_are_written_on_columns_with_server_defaults, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    char one[64], many[3][64];
    snprintf(one, sizeof(one), "zero-%ld", (long)getpid());
    /* one row (VALUES): every field set to its zero, explicitly */
    stx_item *it = new_item_values(s, one);
    it->flag = false;
    it->qty = 0;
    it->rank = AORM_SOME(aorm_opt_int32, 0);
    it->note = "";
    it->created = 0; /* 2000-01-01 00:00:00 UTC */
    cr_assert_eq(aorm_session_add(s, it), 0);
    /* several rows (unnest), zero and non-zero values mixed */
    stx_item *m[3];
    for (int i = 0; i < 3; i++) {
        snprintf(many[i], sizeof(many[i]), "zero-%d-%ld", i, (long)getpid());
        m[i] = new_item_values(s, many[i]);
        m[i]->flag = i == 1;
        m[i]->qty = i;
        m[i]->rank = i == 2 ? AORM_NONE(aorm_opt_int32) : AORM_SOME(aorm_opt_int32, i);
        m[i]->note = i == 0 ? "" : "set";
        m[i]->created = (int64_t)i * 1000000;
        cr_assert_eq(aorm_session_add(s, m[i]), 0);
    }
    commit_expect(&t, s, 0, "commit of explicit zero values");
    char want[128];
    snprintf(want, sizeof(want), "f 0 0  %lld", PG_EPOCH_OFFSET);
    expect_row(&t, one, want);
    cr_assert_not(it->flag);
    cr_assert_eq(it->qty, 0);
    cr_assert(it->rank.valid && it->rank.value == 0);
    snprintf(want, sizeof(want), "f 0 0  %lld", PG_EPOCH_OFFSET);
    expect_row(&t, many[0], want);
    snprintf(want, sizeof(want), "t 1 1 set %lld", PG_EPOCH_OFFSET + 1);
    expect_row(&t, many[1], want);
    snprintf(want, sizeof(want), "f 2 null set %lld", PG_EPOCH_OFFSET + 2);
    expect_row(&t, many[2], want);
    aorm_session_free(s);
    env_close(&t);
}

Test(tx_defaults, columns_left_to_the_server_take_their_defaults_and_are_read_back, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    long before = t_pg_longf(t.pg, "SELECT floor(extract(epoch FROM now()))::bigint");
    char name[64], part[64], many[3][64];
    snprintf(name, sizeof(name), "dflt-%ld", (long)getpid());
    snprintf(part, sizeof(part), "dflt-part-%ld", (long)getpid());
    /* every column with a server default */
    stx_item *it = new_item(s, name);
    cr_assert_eq(aorm_object_use_default(s, it, NULL), 0);
    cr_assert_eq(aorm_session_add(s, it), 0);
    /* some of them; a field set after all is written */
    stx_item *p = new_item_values(s, part);
    cr_assert_eq(aorm_object_use_default(s, p, AORM_COL(stx_item, flag)), 0);
    cr_assert_eq(aorm_object_use_default(s, p, AORM_COL(stx_item, note)), 0);
    cr_assert_eq(aorm_object_use_default(s, p, AORM_COL(stx_item, qty)), 0);
    p->qty = 3;          /* set after all: written */
    p->created = 5000000; /* not left to the server: written */
    cr_assert_eq(aorm_session_add(s, p), 0);
    /* several rows left to the server alike: one statement, read back by key */
    for (int i = 0; i < 3; i++) {
        snprintf(many[i], sizeof(many[i]), "dflt-%d-%ld", i, (long)getpid());
        stx_item *x = new_item(s, many[i]);
        cr_assert_eq(aorm_object_use_default(s, x, NULL), 0);
        cr_assert_eq(aorm_object_use_value(s, x, AORM_COL(stx_item, rank)), 0);
        x->rank = AORM_SOME(aorm_opt_int32, 10 + i);
        cr_assert_eq(aorm_session_add(s, x), 0);
    }
    /* misuse */
    stx_item *bad = new_item_values(s, "unused");
    cr_assert_eq(aorm_object_use_default(s, bad, AORM_COL(stx_item, name)), AORM_EMISUSE, "no server default");
    cr_assert_eq(aorm_object_use_default(s, bad, AORM_COL(stx_item, id)), AORM_EMISUSE, "no server default");
    cr_assert_eq(aorm_object_use_default(s, &(stx_item){0}, NULL), AORM_EMISUSE, "not a session object");
    commit_expect(&t, s, 0, "commit of rows with server defaults");
    long after = t_pg_longf(t.pg, "SELECT floor(extract(epoch FROM now()))::bigint");

    cr_assert(it->flag, "the default (true) was not read back");
    cr_assert_eq(it->qty, 7);
    cr_assert(it->rank.valid && it->rank.value == 5);
    cr_assert_str_eq(it->note, "none");
    long created = (long)(it->created / 1000000 + PG_EPOCH_OFFSET);
    cr_assert(created >= before && created <= after, "created %ld not read back from now()", created);
    char want[128];
    snprintf(want, sizeof(want), "t 7 5 none %ld", created);
    expect_row(&t, name, want);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT (created = '2000-01-01'::timestamptz + %lld * interval '1 microsecond')::int "
                             "FROM \"%s\" WHERE name = '%s'",
                         (long long)it->created, item_table, name),
                 1, "the object's created is not the row's");

    cr_assert(p->flag);
    cr_assert_str_eq(p->note, "none");
    cr_assert_eq(p->qty, 3);
    cr_assert_not(p->rank.valid, "an unmarked NULL is written as NULL");
    snprintf(want, sizeof(want), "t 3 null none %lld", PG_EPOCH_OFFSET + 5);
    expect_row(&t, part, want);

    for (int i = 0; i < 3; i++) {
        char *v = row_text(&t, many[i]);
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "t 7 %d none ", 10 + i);
        cr_assert(strncmp(v, prefix, strlen(prefix)) == 0, "row %s: %s", many[i], v);
        free(v);
    }
    t_rec q;
    query_expect(&t, s, many[1], 0, &q, "the identity map answers for a row read back");
    stx_item *x = q.obj;
    cr_assert(x && x->flag && x->qty == 7 && x->rank.value == 11 && strcmp(x->note, "none") == 0);
    cr_assert_not(aorm_object_modified(s, x), "read-back values are part of the snapshot");
    cr_assert_eq(aorm_object_use_default(s, x, NULL), AORM_EMISUSE, "persistent objects have their row");
    aorm_session_free(s);
    env_close(&t);
}

Test(tx_defaults, a_rollback_or_a_failed_flush_leaves_the_columns_to_the_server_again, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    char name[64], dup[64];
    snprintf(name, sizeof(name), "dflt-rb-%ld", (long)getpid());
    snprintf(dup, sizeof(dup), "dflt-dup-%ld", (long)getpid());
    t_pg_runf(t.pg, "INSERT INTO \"%s\"(name) VALUES ('%s')", item_table, dup);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);

    /* a flush that fails after the INSERT that read the defaults back */
    stx_item *it = new_item(s, name);
    cr_assert_eq(aorm_object_use_default(s, it, NULL), 0);
    cr_assert_eq(aorm_session_add(s, it), 0);
    stx_item *d = new_item(s, dup);
    d->created = 1;
    cr_assert_eq(aorm_session_add(s, d), 0);
    flush_expect(&t, s, AORM_ESERVER, "flush with a duplicate name");
    cr_assert_eq(aorm_object_state_of(s, it), AORM_PENDING);
    cr_assert(!it->flag && it->qty == 0 && it->created == 0 && !it->rank.valid && !it->note,
              "values read back by a failed flush stayed in the object");
    rollback_ok(&t, s);
    cr_assert_eq(aorm_session_delete(s, d), AORM_EMISUSE); /* transient now: dropped */

    /* a flush that succeeds, then a rollback */
    cr_assert_eq(aorm_session_add(s, it), 0);
    flush_expect(&t, s, 0, "flush");
    cr_assert(it->flag && it->qty == 7 && it->created != 0);
    rollback_ok(&t, s);
    cr_assert_eq(aorm_object_state_of(s, it), AORM_TRANSIENT);
    cr_assert(!it->flag && it->qty == 0 && it->created == 0 && !it->rank.valid && !it->note,
              "values of a rolled-back row stayed in the object");

    /* the defaults again */
    cr_assert_eq(aorm_session_add(s, it), 0);
    commit_expect(&t, s, 0, "commit");
    cr_assert(it->flag && it->qty == 7 && it->created != 0 && strcmp(it->note, "none") == 0);
    char want[128];
    snprintf(want, sizeof(want), "t 7 5 none %lld", (long long)(it->created / 1000000 + PG_EPOCH_OFFSET));
    expect_row(&t, name, want);
    aorm_session_free(s);
    env_close(&t);
}

Test(tx_defaults, a_large_batch_of_set_values_goes_by_copy_and_keeps_its_zeros, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    enum { N = 1200 };
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof(name), "copy-%d-%ld", i, (long)getpid());
        stx_item *x = new_item_values(s, name);
        x->flag = false;
        x->qty = 0;
        x->note = "";
        cr_assert_eq(aorm_session_add(s, x), 0);
    }
    commit_expect(&t, s, 0, "commit of a large batch");
    cr_assert_eq(t_pg_longf(t.pg,
                         "SELECT count(*) FROM \"%s\" WHERE NOT flag AND qty = 0 AND rank IS NULL AND note = '' AND "
                         "created = '2000-01-01'::timestamptz",
                         item_table),
                 N);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * 5. The engine freed under its sessions
 * ========================================================================== */

Test(tx_engine_free, freeing_the_engine_cancels_queued_and_running_work_and_later_calls_fail, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    add_blocking_trigger(&t, false);
    char name[64];
    snprintf(name, sizeof(name), "free-%ld", (long)getpid());
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    int64_t pid = session_int(&t, s, "SELECT pg_backend_pid()");
    stx_item *it = new_item(s, name);
    cr_assert_eq(aorm_session_add(s, it), 0);
    t_pg_runf(t.pg, "SELECT pg_advisory_lock(%ld)", t.lock_key);
    t_rec f = {0}, c = {0}, q = {0};
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f), 0);
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    cr_assert_eq(aorm_session_query(s, q_named(name), NULL, t_rec_on_objs, &q), 0);
    waiting_backend w = {&t, pid, "INSERT"};
    cr_assert(t_run_until_fn(t.evl, backend_blocked, &w, WAIT), "the flush never reached the trigger");
    cr_assert_eq(f.calls + c.calls + q.calls, 0);
    stx_item *late_item = new_item(s, "late");

    aorm_engine_free(t.e); /* every callback from inside this call */
    t.e = NULL;
    cr_assert_eq(f.calls, 1);
    cr_assert_eq(f.code, AORM_ECANCELED, "flush: %s", aorm_errname(f.code));
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.code, AORM_ECANCELED, "the commit queued behind the flush: %s", aorm_errname(c.code));
    cr_assert_eq(q.calls, 1);
    cr_assert_eq(q.code, AORM_ECANCELED, "the query queued behind it: %s", aorm_errname(q.code));

    cr_assert_null(aorm_session_engine(s));
    cr_assert_not(aorm_session_in_transaction(s));
    cr_assert_not(aorm_session_rollback_required(s));
    t_rec late = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &late), AORM_ECLOSED);
    cr_assert_eq(aorm_session_query(s, q_named(name), NULL, t_rec_on_objs, &late), AORM_ECLOSED);
    cr_assert_eq(aorm_session_add(s, late_item), AORM_ECLOSED);
    cr_assert_null(aorm_session_new_object(s, &stx_item_model));
    settle(&t);
    cr_assert_eq(late.calls, 0);
    cr_assert(f.calls == 1 && c.calls == 1 && q.calls == 1);
    aorm_session_free(s);

    t_pg_runf(t.pg, "SELECT pg_advisory_unlock(%ld)", t.lock_key);
    wait_backend_gone(&t, pid);
    cr_assert_eq(rows_named(&t, name), 0, "the transaction of a freed engine committed");
    env_close(&t);
}

Test(tx_engine_free, a_session_idle_in_a_transaction_is_freed_cleanly_after_its_engine, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    char name[64];
    snprintf(name, sizeof(name), "idle-free-%ld", (long)getpid());
    aorm_session *s = aorm_session_new(t.e, NULL);
    aorm_session *r = aorm_session_new(t.e, NULL); /* one that never did anything */
    cr_assert(s && r);
    stx_item *it;
    int64_t pid = tx_with_one_insert(&t, s, name, &it);
    aorm_engine_free(t.e);
    t.e = NULL;
    aorm_session_free(s); /* reads nothing of the freed engine (ASan) */
    aorm_session_free(r);
    wait_backend_gone(&t, pid);
    cr_assert_eq(rows_named(&t, name), 0);
    env_close(&t);
}

typedef struct free_in_cb {
    env *t;
    t_rec r;
} free_in_cb;

static void on_objs_free_engine(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    free_in_cb *x = user;
    t_rec_err(&x->r, err);
    aorm_engine_free(x->t->e); /* from inside a callback of one of its sessions */
    x->t->e = NULL;
}

Test(tx_engine_free, engine_freed_from_a_session_callback_cancels_the_other_sessions_commits, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    add_blocking_trigger(&t, false);
    char name[64], other[64];
    snprintf(name, sizeof(name), "cbfree-%ld", (long)getpid());
    snprintf(other, sizeof(other), "cbfree-other-%ld", (long)getpid());
    aorm_session *a = aorm_session_new(t.e, NULL);
    aorm_session *b = aorm_session_new(t.e, NULL);
    cr_assert(a && b);
    int64_t pid = session_int(&t, b, "SELECT pg_backend_pid()");
    cr_assert_eq(aorm_session_add(b, new_item(b, name)), 0);
    t_pg_runf(t.pg, "SELECT pg_advisory_lock(%ld)", t.lock_key);
    t_rec bf = {0}, bc = {0}, bc2 = {0};
    cr_assert_eq(aorm_session_flush(b, t_rec_on_done, &bf), 0);
    cr_assert_eq(aorm_session_commit(b, t_rec_on_done, &bc), 0);
    cr_assert_eq(aorm_session_commit(b, t_rec_on_done, &bc2), 0);
    waiting_backend w = {&t, pid, "INSERT"};
    cr_assert(t_run_until_fn(t.evl, backend_blocked, &w, WAIT), "the flush never reached the trigger");

    /* a's query (an autocommit read, on another connection) frees the engine in its callback */
    free_in_cb x = {&t, {0}};
    cr_assert_eq(aorm_session_query(a, q_named(other), NULL, on_objs_free_engine, &x), 0);
    cr_assert(t_run_until(t.evl, &x.r.calls, WAIT));
    cr_assert_eq(x.r.code, 0);
    cr_assert_null(t.e);
    cr_assert(bf.calls == 1 && bc.calls == 1 && bc2.calls == 1, "%d %d %d", bf.calls, bc.calls, bc2.calls);
    cr_assert_eq(bf.code, AORM_ECANCELED, "b's flush: %s", aorm_errname(bf.code));
    cr_assert_eq(bc.code, AORM_ECANCELED, "b's commit behind it: %s", aorm_errname(bc.code));
    cr_assert_eq(bc2.code, AORM_ECANCELED, "b's second commit: %s", aorm_errname(bc2.code));
    settle(&t);
    cr_assert(bf.calls == 1 && bc.calls == 1 && bc2.calls == 1 && x.r.calls == 1);
    aorm_session_free(b);
    aorm_session_free(a);
    t_pg_runf(t.pg, "SELECT pg_advisory_unlock(%ld)", t.lock_key);
    wait_backend_gone(&t, pid);
    cr_assert_eq(rows_named(&t, name), 0);
    env_close(&t);
}

Test(tx_engine_free, a_commit_in_flight_when_the_engine_is_freed_is_an_unknown_outcome, .timeout = TIMEOUT) {
    env t;
    env_open(&t);
    add_blocking_commit_trigger(&t);
    char name[64];
    snprintf(name, sizeof(name), "free-commit-%ld", (long)getpid());
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);
    int64_t pid = session_int(&t, s, "SELECT pg_backend_pid()");
    stx_item *it = new_item(s, name);
    cr_assert_eq(aorm_session_add(s, it), 0);
    t_pg_runf(t.pg, "SELECT pg_advisory_lock(%ld)", t.lock_key);
    t_rec c = {0}, after = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &after), 0);
    waiting_backend w = {&t, pid, "COMMIT"};
    cr_assert(t_run_until_fn(t.evl, backend_blocked, &w, WAIT), "the COMMIT never reached the trigger");
    aorm_engine_free(t.e);
    t.e = NULL;
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.code, AORM_EUNKNOWN_OUTCOME, "a COMMIT sent and unanswered: %s", aorm_errname(c.code));
    cr_assert_eq(after.calls, 1);
    cr_assert_eq(after.code, AORM_ECANCELED, "queued behind the commit: %s", aorm_errname(after.code));
    cr_assert_eq(aorm_object_state_of(s, it), AORM_DETACHED, "its INSERT may have committed");
    aorm_session_free(s);
    t_pg_runf(t.pg, "SELECT pg_advisory_unlock(%ld)", t.lock_key);
    wait_backend_gone(&t, pid);
    env_close(&t);
}
