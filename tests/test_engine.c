/* test_engine.c -- the async engine against the sandbox PostgreSQL.
 *
 * Every test drives a real engine on a libev loop of its own and checks
 * what the server actually did: values the server computed from the
 * parameters sent, rows counted from a separate blocking connection,
 * backends seen in pg_stat_activity, prepared statements seen in
 * pg_prepared_statements. Nothing is compared with a hard-coded result
 * the server did not produce.
 *
 * Callbacks: every statement, acquire and COPY is given a reply record
 * owned by the test environment. When the environment is closed (after
 * the engine has been freed, which cancels whatever is still pending)
 * each record must have been called back exactly once.
 *
 * The suites share one database: each test uses tables named after it,
 * dropped and created at its start. */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

/* Seconds a test waits for one answer before it calls it lost. */
#define WAIT 20.0

/* ==========================================================================
 * The test environment: loop, engine, blocking checker, replies, log
 * ========================================================================== */

typedef struct env env;

typedef struct reply {
    struct reply *next;
    env *t;
    char *what;        /* label for messages (the SQL, usually) */
    int calls;
    int order;         /* completion order within the environment, from 1 */
    aorm_result *res;  /* detached result */
    aorm_error *err;   /* copied error */
    aorm_conn *conn;   /* acquire: the connection */
} reply;

typedef struct logmsg {
    aorm_log_level level;
    char *text;
} logmsg;

struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    PGconn *pg;
    reply *replies;
    int completed;
    logmsg *logs;
    int nlogs;
    int log_cap;
};

static void on_log(aorm_log_level level, const char *message, void *user) {
    env *t = user;
    cr_assert_not_null(message, "log callback got a NULL message");
    if (t->nlogs == t->log_cap) {
        int cap = t->log_cap ? t->log_cap * 2 : 16;
        logmsg *n = realloc(t->logs, (size_t)cap * sizeof(*n));
        cr_assert_not_null(n);
        t->logs = n;
        t->log_cap = cap;
    }
    t->logs[t->nlogs].level = level;
    t->logs[t->nlogs].text = strdup(message);
    cr_assert_not_null(t->logs[t->nlogs].text);
    t->nlogs++;
}

/* Messages at `level` (or any level when level < 0) containing needle
 * (or any message when needle is NULL). */
static int log_count(const env *t, int level, const char *needle) {
    int n = 0;
    for (int i = 0; i < t->nlogs; i++) {
        if (level >= 0 && (int)t->logs[i].level != level) continue;
        if (needle && !strstr(t->logs[i].text, needle)) continue;
        n++;
    }
    return n;
}

static void opts_init(aorm_engine_options *o) {
    aorm_engine_options_init(o);
    o->conninfo = t_dsn();
}

/* Opens the environment; o may be NULL (defaults). The log goes to the
 * environment unless o already names a log callback. */
static void env_open(env *t, aorm_engine_options *o) {
    aorm_engine_options dflt;
    memset(t, 0, sizeof(*t));
    if (!o) {
        opts_init(&dflt);
        o = &dflt;
    }
    if (!o->log) {
        o->log = on_log;
        o->log_user = t;
    }
    t_loop_open(&t->evl, &t->loop);
    t->e = aorm_engine_new(t->loop, o);
    cr_assert_not_null(t->e, "aorm_engine_new failed for conninfo %s", o->conninfo);
    t->pg = t_pg();
}

/* Frees the engine (cancelling anything pending), then checks that every
 * reply was called back exactly once, and frees the rest. */
static void env_close(env *t) {
    aorm_engine_free(t->e);
    t->e = NULL;
    for (reply *r = t->replies, *n; r; r = n) {
        n = r->next;
        cr_assert_eq(r->calls, 1, "the callback of \"%s\" ran %d times (want exactly once)", r->what, r->calls);
        aorm_result_free(r->res);
        aorm_error_free(r->err);
        free(r->what);
        free(r);
    }
    t->replies = NULL;
    t_loop_close(&t->evl, &t->loop);
    PQfinish(t->pg);
    for (int i = 0; i < t->nlogs; i++) free(t->logs[i].text);
    free(t->logs);
}

static reply *reply_new(env *t, const char *what) {
    reply *r = calloc(1, sizeof(*r));
    cr_assert_not_null(r);
    r->t = t;
    r->what = strdup(what);
    cr_assert_not_null(r->what);
    r->next = t->replies;
    t->replies = r;
    return r;
}

static void on_reply(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    reply *r = user;
    r->calls++;
    r->order = ++r->t->completed;
    cr_assert_not_null(e, "%s: callback without its engine", r->what);
    cr_assert((res != NULL) != (err != NULL), "%s: exactly one of result and error must be set", r->what);
    if (r->calls > 1) return; /* reported by env_close */
    if (res) {
        r->res = aorm_result_detach(res);
        cr_assert_not_null(r->res, "%s: aorm_result_detach failed", r->what);
    } else {
        cr_assert(err->code < 0, "%s: error with code %d", r->what, err->code);
        cr_assert_not_null(err->message);
        r->err = aorm_error_copy(err);
        cr_assert_not_null(r->err);
    }
}

static void on_acquired(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    reply *r = user;
    r->calls++;
    r->order = ++r->t->completed;
    cr_assert((c != NULL) != (err != NULL), "acquire: exactly one of connection and error must be set");
    if (r->calls > 1) return;
    r->conn = c;
    if (err) r->err = aorm_error_copy(err);
}

static int reply_done(void *arg) { return ((reply *)arg)->calls > 0; }

static int all_done(void *arg) {
    for (reply *r = ((env *)arg)->replies; r; r = r->next)
        if (r->calls == 0) return 0;
    return 1;
}

static void wait_reply(env *t, reply *r) {
    cr_assert(t_run_until_fn(t->evl, reply_done, r, WAIT), "no answer for \"%s\" within %.0f s", r->what, WAIT);
}

static void wait_all(env *t) {
    if (t_run_until_fn(t->evl, all_done, t, WAIT)) return;
    for (reply *r = t->replies; r; r = r->next)
        if (r->calls == 0) cr_assert_fail("no answer for \"%s\" within %.0f s", r->what, WAIT);
}

static reply *want_ok(reply *r) {
    cr_assert_eq(r->calls, 1, "%s: not answered", r->what);
    if (r->err)
        cr_assert_fail("%s failed: %s (SQLSTATE %s): %s", r->what, aorm_errname(r->err->code), r->err->sqlstate,
                       r->err->message);
    cr_assert_not_null(r->res);
    return r;
}

static const aorm_error *want_err(reply *r) {
    cr_assert_eq(r->calls, 1, "%s: not answered", r->what);
    cr_assert_not_null(r->err, "%s succeeded, an error was expected", r->what);
    return r->err;
}

static void want_server_error(reply *r, const char *sqlstate) {
    const aorm_error *err = want_err(r);
    cr_assert_eq(err->code, AORM_ESERVER, "%s: code %s, want AORM_ESERVER (%s)", r->what, aorm_errname(err->code),
                 err->message);
    cr_assert_str_eq(err->sqlstate, sqlstate, "%s: SQLSTATE %s (%s), want %s", r->what, err->sqlstate, err->message,
                     sqlstate);
    cr_assert(aorm_error_is(err, sqlstate));
}

static reply *submit(env *t, const char *sql, const aorm_params *p, unsigned flags) {
    reply *r = reply_new(t, sql);
    aorm_exec_options xo = {.flags = flags, .deadline = 0};
    int rc = aorm_engine_execute(t->e, sql, p, &xo, on_reply, r);
    cr_assert_eq(rc, 0, "aorm_engine_execute(%s) = %s", sql, aorm_errname(rc));
    cr_assert_eq(r->calls, 0, "callback ran inside aorm_engine_execute");
    return r;
}

static reply *csubmit(env *t, aorm_conn *c, const char *sql, const aorm_params *p, unsigned flags) {
    reply *r = reply_new(t, sql);
    aorm_exec_options xo = {.flags = flags, .deadline = 0};
    int rc = aorm_conn_execute(c, sql, p, &xo, on_reply, r);
    cr_assert_eq(rc, 0, "aorm_conn_execute(%s) = %s", sql, aorm_errname(rc));
    cr_assert_eq(r->calls, 0, "callback ran inside aorm_conn_execute");
    return r;
}

static reply *exec_ok(env *t, const char *sql, const aorm_params *p, unsigned flags) {
    reply *r = submit(t, sql, p, flags);
    wait_reply(t, r);
    return want_ok(r);
}

static const aorm_error *exec_err(env *t, const char *sql, const aorm_params *p, unsigned flags) {
    reply *r = submit(t, sql, p, flags);
    wait_reply(t, r);
    return want_err(r);
}

static reply *cexec_ok(env *t, aorm_conn *c, const char *sql, const aorm_params *p, unsigned flags) {
    reply *r = csubmit(t, c, sql, p, flags);
    wait_reply(t, r);
    return want_ok(r);
}

/* Wraps one of the aorm_conn_* transaction calls: rc must be 0. */
static reply *tx_call(env *t, const char *what, int (*fn)(aorm_conn *, aorm_result_cb, void *), aorm_conn *c) {
    reply *r = reply_new(t, what);
    int rc = fn(c, on_reply, r);
    cr_assert_eq(rc, 0, "%s = %s", what, aorm_errname(rc));
    return r;
}

static reply *sp_call(env *t, const char *what, int (*fn)(aorm_conn *, const char *, aorm_result_cb, void *),
                      aorm_conn *c, const char *name) {
    reply *r = reply_new(t, what);
    int rc = fn(c, name, on_reply, r);
    cr_assert_eq(rc, 0, "%s = %s", what, aorm_errname(rc));
    return r;
}

static aorm_conn *acquire(env *t) {
    reply *r = reply_new(t, "acquire");
    int rc = aorm_engine_acquire(t->e, on_acquired, r);
    cr_assert_eq(rc, 0, "aorm_engine_acquire = %s", aorm_errname(rc));
    cr_assert_eq(r->calls, 0, "acquire called back inside aorm_engine_acquire");
    wait_reply(t, r);
    if (r->err) cr_assert_fail("acquire failed: %s: %s", aorm_errname(r->err->code), r->err->message);
    cr_assert_not_null(r->conn);
    return r->conn;
}

static int tx_settled(void *arg) { return aorm_conn_tx_status(arg) != AORM_TX_ACTIVE; }

/* The connection's status once nothing is in flight any more. */
static aorm_tx_status settled_status(env *t, aorm_conn *c) {
    t_run_until_fn(t->evl, tx_settled, c, WAIT);
    return aorm_conn_tx_status(c);
}

/* ---- reading results ---------------------------------------------------- */

static int64_t get_i64(const reply *r, int row, int col) {
    int64_t v = 0;
    int rc = aorm_result_int64(r->res, row, col, &v);
    cr_assert_eq(rc, 0, "%s: int64 at (%d,%d): %s", r->what, row, col, aorm_errname(rc));
    return v;
}

static bool get_bool(const reply *r, int row, int col) {
    bool v = false;
    int rc = aorm_result_bool(r->res, row, col, &v);
    cr_assert_eq(rc, 0, "%s: bool at (%d,%d): %s", r->what, row, col, aorm_errname(rc));
    return v;
}

static const char *get_text(const reply *r, int row, int col, size_t *len) {
    const char *s = NULL;
    int rc = aorm_result_text(r->res, row, col, &s, len);
    cr_assert_eq(rc, 0, "%s: text at (%d,%d): %s", r->what, row, col, aorm_errname(rc));
    return s;
}

/* ---- the blocking checker ------------------------------------------------ */

static void pg_cmd(env *t, const char *sql) { free(t_pg_exec(t->pg, sql)); }

/* t_pg_exec() with the text kept in a caller's buffer. */
static void pg_text(env *t, const char *sql, char *out, size_t cap) {
    char *v = t_pg_exec(t->pg, sql);
    cr_assert_not_null(v, "%s returned no value", sql);
    snprintf(out, cap, "%s", v);
    free(v);
}

/* `base` with key set to value (replaced in place, or appended). Keys and
 * values of the sandbox conninfo hold no spaces or quotes. */
static char *conninfo_set(const char *base, const char *key, const char *value) {
    size_t klen = strlen(key);
    size_t cap = strlen(base) + klen + strlen(value) + 8;
    char *out = calloc(1, cap);
    cr_assert_not_null(out);
    bool replaced = false;
    for (const char *p = base; *p;) {
        while (*p == ' ') p++;
        if (!*p) break;
        const char *end = strchr(p, ' ');
        if (!end) end = p + strlen(p);
        if (*out) strcat(out, " ");
        if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            strcat(out, key);
            strcat(out, "=");
            strcat(out, value);
            replaced = true;
        } else {
            strncat(out, p, (size_t)(end - p));
        }
        p = end;
    }
    if (!replaced) {
        if (*out) strcat(out, " ");
        strcat(out, key);
        strcat(out, "=");
        strcat(out, value);
    }
    return out;
}

static aorm_engine_stats stats(const env *t) {
    aorm_engine_stats s;
    memset(&s, 0, sizeof(s));
    aorm_engine_stats_get(t->e, &s);
    return s;
}

/* ==========================================================================
 * 1. Concurrency: many callers, a small pool
 * ========================================================================== */

#define CALLERS 500
#define PER_CALLER 20

typedef struct conc conc;

typedef struct caller {
    conc *st;
    int id;
    int sent;             /* statements issued so far */
    int got[PER_CALLER];  /* answers per statement, indexed by what the server returned */
} caller;

struct conc {
    env *t;
    unsigned flags;
    caller callers[CALLERS];
    int answers;
    int finished;
    long max_backends;
    int samples;
    int samples_during_run;
    char sample_sql[512];
};

static void conc_text(char *buf, size_t cap, int id, int k) {
    snprintf(buf, cap, "caller %d, statement %d, caf\xc3\xa9 '$1'", id, k);
}

static void conc_on_answer(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);

static void conc_issue(caller *c) {
    aorm_params p;
    char text[96];
    aorm_params_init(&p);
    int k = c->sent++;
    conc_text(text, sizeof(text), c->id, k);
    /* the caller in the high half, the statement in the low half */
    aorm_params_int8(&p, ((int64_t)c->id << 32) | k);
    aorm_params_text(&p, text);
    aorm_exec_options xo = {.flags = c->st->flags, .deadline = 0};
    int rc = aorm_engine_execute(c->st->t->e, "SELECT $1::int8 * 2, $2::text", &p, &xo, conc_on_answer, c);
    aorm_params_free(&p);
    cr_assert_eq(rc, 0, "aorm_engine_execute = %s", aorm_errname(rc));
}

static void conc_sample(conc *st) {
    long n = t_pg_long(st->t->pg, st->sample_sql);
    st->samples++;
    if (st->answers < CALLERS * PER_CALLER) st->samples_during_run++;
    if (n > st->max_backends) st->max_backends = n;
}

static void conc_on_tick(struct ev_loop *evl, ev_timer *w, int revents) { conc_sample(w->data); }

static void conc_on_answer(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    caller *c = user;
    conc *st = c->st;
    st->answers++;
    if (err)
        cr_assert_fail("caller %d statement %d failed: %s (SQLSTATE %s): %s", c->id, c->sent - 1,
                       aorm_errname(err->code), err->sqlstate, err->message);
    cr_assert_eq(aorm_result_nrows(res), 1);
    cr_assert_eq(aorm_result_ncols(res), 2);
    int64_t doubled = 0;
    cr_assert_eq(aorm_result_int64(res, 0, 0, &doubled), 0);
    cr_assert_eq(doubled % 2, 0, "the server did not double the value: %" PRId64, doubled);
    int64_t v = doubled / 2;
    cr_assert_eq(v >> 32, c->id, "an answer for caller %" PRId64 " reached caller %d", v >> 32, c->id);
    int k = (int)(v & 0xffffffff);
    cr_assert(k >= 0 && k < PER_CALLER, "statement number %d out of range", k);
    cr_assert_eq(k, c->sent - 1, "caller %d: answer to statement %d while statement %d is outstanding", c->id, k,
                 c->sent - 1);
    c->got[k]++;
    const char *s = NULL;
    char want[96];
    cr_assert_eq(aorm_result_text(res, 0, 1, &s, NULL), 0);
    conc_text(want, sizeof(want), c->id, k);
    cr_assert_str_eq(s, want);
    if (st->answers == CALLERS * PER_CALLER / 2) conc_sample(st); /* at least one sample mid-run */
    if (c->sent < PER_CALLER) conc_issue(c);
    else st->finished++;
}

static int conc_all_finished(void *arg) { return ((conc *)arg)->finished == CALLERS; }

static void run_concurrency(unsigned flags, const char *appname) {
    /* The application name keeps other tests' connections out of the count. */
    char *dsn = conninfo_set(t_dsn(), "application_name", appname);
    aorm_engine_options o;
    opts_init(&o);
    o.conninfo = dsn;
    o.pool_size = 4;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    conc *st = calloc(1, sizeof(*st));
    cr_assert_not_null(st);
    st->t = &t;
    st->flags = flags;
    snprintf(st->sample_sql, sizeof(st->sample_sql),
             "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name = '%s'",
             appname);
    for (int i = 0; i < CALLERS; i++) {
        st->callers[i].st = st;
        st->callers[i].id = i;
        conc_issue(&st->callers[i]);
    }
    ev_timer tick;
    ev_timer_init(&tick, conc_on_tick, 0.005, 0.005);
    tick.data = st;
    ev_timer_start(t.evl, &tick);
    int ok = t_run_until_fn(t.evl, conc_all_finished, st, 45);
    ev_timer_stop(t.evl, &tick);
    cr_assert(ok, "%d of %d callers finished (%d answers) in 45 s", st->finished, CALLERS, st->answers);

    cr_assert_eq(st->answers, CALLERS * PER_CALLER);
    for (int i = 0; i < CALLERS; i++)
        for (int k = 0; k < PER_CALLER; k++)
            cr_assert_eq(st->callers[i].got[k], 1, "caller %d statement %d answered %d times", i, k,
                         st->callers[i].got[k]);
    cr_assert(st->samples_during_run > 0, "pg_stat_activity was never sampled during the run");
    cr_assert(st->max_backends <= 4, "%ld backends seen with pool_size=4, max_overflow=0", st->max_backends);
    cr_assert(st->max_backends >= 1, "no backend of the engine seen in pg_stat_activity (%d samples)", st->samples);

    aorm_engine_stats s = stats(&t);
    cr_log_info("%s: %d pg_stat_activity samples, at most %ld backends; statements %" PRIu64 ", round trips %" PRIu64
                ", syncs %" PRIu64 ", prepares %" PRIu64 ", connects %" PRIu64,
                appname, st->samples, st->max_backends, s.statements, s.round_trips, s.syncs, s.prepares,
                s.connects);
    cr_assert(s.statements >= CALLERS * PER_CALLER, "stats.statements = %" PRIu64, s.statements);
    cr_assert(s.connects >= 1 && s.connects <= 4, "stats.connects = %" PRIu64, s.connects);
    cr_assert(s.open <= 4, "stats.open = %d", s.open);
    cr_assert_eq(s.connections_lost, 0);
    cr_assert_eq(s.connect_failures, 0);
    cr_assert_eq(s.resent, 0, "nothing failed, yet %" PRIu64 " statements were re-sent", s.resent);
    /* many statements per pipeline write, not one write per statement */
    cr_assert(s.round_trips * 4 <= s.statements, "round_trips %" PRIu64 " for %" PRIu64 " statements",
              s.round_trips, s.statements);
    env_close(&t);
    cr_assert_eq(st->answers, CALLERS * PER_CALLER, "callbacks ran after the run was complete");
    free(st);
    free(dsn);
}

Test(engine, concurrency_10k_statements_500_callers_pool_of_4, .timeout = 60) {
    run_concurrency(0, "aorm_test_conc_rw");
}

Test(engine, concurrency_10k_readonly_statements_500_callers_pool_of_4, .timeout = 60) {
    run_concurrency(AORM_EXEC_READONLY, "aorm_test_conc_ro");
}

/* ==========================================================================
 * 2. Server errors
 * ========================================================================== */

Test(engine, server_errors_leave_the_connection_usable, .timeout = 60) {
    aorm_engine_options o;
    opts_init(&o);
    o.pool_size = 1;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    pg_cmd(&t, "DROP TABLE IF EXISTS eng_errors");
    pg_cmd(&t, "CREATE TABLE eng_errors (id int8 NOT NULL, CONSTRAINT eng_errors_id_uniq UNIQUE (id))");

    int64_t pid = get_i64(exec_ok(&t, "SELECT pg_backend_pid()::int8", NULL, 0), 0, 0);

    reply *syntax = submit(&t, "SELEC 1", NULL, 0);
    wait_reply(&t, syntax);
    want_server_error(syntax, "42601");
    cr_assert(*syntax->err->message, "a server error without a message");

    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8(&p, 7);
    reply *ins = exec_ok(&t, "INSERT INTO eng_errors (id) VALUES ($1)", &p, 0);
    cr_assert_eq(aorm_result_affected(ins->res), 1);
    reply *dup = submit(&t, "INSERT INTO eng_errors (id) VALUES ($1)", &p, 0);
    wait_reply(&t, dup);
    want_server_error(dup, "23505");
    cr_assert_str_eq(dup->err->constraint, "eng_errors_id_uniq");
    cr_assert_str_eq(dup->err->table, "eng_errors");
    cr_assert(strstr(dup->err->detail, "(id)=(7)"), "detail: %s", dup->err->detail);
    aorm_params_free(&p);

    /* the same connection goes on working */
    reply *count = exec_ok(&t, "SELECT count(*) FROM eng_errors", NULL, 0);
    cr_assert_eq(get_i64(count, 0, 0), 1);
    cr_assert_eq(get_i64(exec_ok(&t, "SELECT pg_backend_pid()::int8", NULL, 0), 0, 0), pid,
                 "the connection was replaced after a server error");
    aorm_engine_stats s = stats(&t);
    cr_assert_eq(s.connections_lost, 0);
    cr_assert_eq(s.discarded, 0);
    cr_assert_eq(s.connects, 1);
    env_close(&t);
}

/* ==========================================================================
 * 3. Pipeline aborts
 * ========================================================================== */

Test(engine, held_connection_pipeline_abort_then_rollback, .timeout = 60) {
    aorm_engine_options o;
    opts_init(&o);
    o.pool_size = 1;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    pg_cmd(&t, "DROP TABLE IF EXISTS eng_abort");
    pg_cmd(&t, "CREATE TABLE eng_abort (v int4)");
    aorm_conn *c = acquire(&t);
    cr_assert_eq(aorm_conn_tx_status(c), AORM_TX_IDLE);
    cr_assert(!aorm_conn_broken(c));

    /* all queued in one loop turn: one pipeline, one transaction */
    aorm_params zero;
    aorm_params_init(&zero);
    aorm_params_int4(&zero, 0);
    reply *b = reply_new(&t, "BEGIN");
    cr_assert_eq(aorm_conn_begin(c, NULL, on_reply, b), 0);
    reply *r1 = csubmit(&t, c, "INSERT INTO eng_abort (v) VALUES (1)", NULL, 0);
    reply *r2 = csubmit(&t, c, "SELECT count(*) FROM eng_abort", NULL, 0);
    reply *r3 = csubmit(&t, c, "SELECT 1 / $1::int4", &zero, 0);
    reply *r4 = csubmit(&t, c, "INSERT INTO eng_abort (v) VALUES (4)", NULL, 0);
    reply *r5 = csubmit(&t, c, "SELECT 5", NULL, 0);
    aorm_params_free(&zero);
    cr_assert_eq(aorm_conn_tx_status(c), AORM_TX_ACTIVE, "statements are queued");
    wait_all(&t);

    want_ok(b);
    cr_assert_eq(aorm_result_affected(want_ok(r1)->res), 1);
    cr_assert_eq(get_i64(want_ok(r2), 0, 0), 1, "the transaction sees its own insert");
    want_server_error(r3, "22012");
    cr_assert_eq(want_err(r4)->code, AORM_EABORTED, "4th: %s", aorm_errname(r4->err->code));
    cr_assert_eq(want_err(r5)->code, AORM_EABORTED, "5th: %s", aorm_errname(r5->err->code));
    cr_assert(b->order < r1->order && r1->order < r2->order && r2->order < r3->order && r3->order < r4->order &&
                  r4->order < r5->order,
              "callbacks out of order");
    cr_assert_eq(settled_status(&t, c), AORM_TX_INERROR);

    reply *rb = tx_call(&t, "ROLLBACK", aorm_conn_rollback, c);
    wait_reply(&t, rb);
    want_ok(rb);
    cr_assert_eq(settled_status(&t, c), AORM_TX_IDLE);
    cr_assert_eq(get_i64(cexec_ok(&t, c, "SELECT count(*) FROM eng_abort", NULL, 0), 0, 0), 0);
    aorm_conn_release(c);
    cr_assert_eq(t_pg_long(t.pg, "SELECT count(*) FROM eng_abort"), 0);
    aorm_engine_stats s = stats(&t);
    cr_assert_eq(s.resent, 0, "statements inside a transaction must never be re-sent");
    cr_assert_eq(s.connections_lost, 0);
    env_close(&t);
}

/* On a held connection outside a transaction, statements have the same
 * contract as aorm_engine_execute(): read-only ones share a sync, the
 * others have their own. A statement with its own sync is not touched by
 * an earlier failure, even when its text was also queued (and skipped,
 * PREPARE included) in the failed read-only group of the same turn. */
Test(engine, held_connection_own_sync_statement_after_a_failed_group, .timeout = 60) {
    aorm_engine_options o;
    opts_init(&o);
    o.pool_size = 1;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    aorm_conn *c = acquire(&t);
    aorm_params zero;
    aorm_params_init(&zero);
    aorm_params_int4(&zero, 0);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8(&p, 5);
    /* one turn */
    reply *bad = csubmit(&t, c, "SELECT 1 / $1::int4", &zero, AORM_EXEC_READONLY);
    reply *skipped = csubmit(&t, c, "SELECT $1::int8 + 77", &p, AORM_EXEC_READONLY);
    reply *own = csubmit(&t, c, "SELECT $1::int8 + 77", &p, 0);
    aorm_params_free(&zero);
    aorm_params_free(&p);
    wait_all(&t);
    want_server_error(bad, "22012");
    cr_assert(skipped->err == NULL || skipped->err->code == AORM_EABORTED, "the skipped statement: %s",
              aorm_errname(skipped->err->code));
    if (skipped->err == NULL) cr_assert_eq(get_i64(skipped, 0, 0), 82);
    cr_assert_eq(get_i64(want_ok(own), 0, 0), 82, "a statement with its own sync failed because of another one");
    cr_assert_eq(settled_status(&t, c), AORM_TX_IDLE);
    aorm_conn_release(c);
    env_close(&t);
}

static const int32_t divisors[10] = {1, 2, 4, 5, 0, 10, 20, 25, 50, 100};

/* Ten divisions queued in one turn on a one-connection pool; the 5th
 * divides by zero. */
static void run_divisions(unsigned flags, bool readonly) {
    aorm_engine_options o;
    opts_init(&o);
    o.pool_size = 1;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    exec_ok(&t, "SELECT 1", NULL, 0); /* connected: the ten go out together */
    reply *r[10];
    for (int i = 0; i < 10; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, divisors[i]);
        r[i] = submit(&t, "SELECT 100 / $1::int4", &p, flags);
        aorm_params_free(&p);
    }
    wait_all(&t);
    for (int i = 0; i < 10; i++) {
        if (divisors[i] == 0) {
            want_server_error(r[i], "22012");
            continue;
        }
        int32_t v = 0;
        want_ok(r[i]);
        cr_assert_eq(aorm_result_int32(r[i]->res, 0, 0, &v), 0);
        cr_assert_eq(v, 100 / divisors[i], "statement %d: %d", i, v);
    }
    aorm_engine_stats s = stats(&t);
    if (readonly)
        cr_assert(s.resent > 0, "the read-only statements after the failure were not re-sent (resent = %" PRIu64 ")",
                  s.resent);
    else
        cr_assert_eq(s.resent, 0, "autocommit statements have their own sync: nothing to re-send");
    cr_assert_eq(s.connections_lost, 0);
    env_close(&t);
}

Test(engine, readonly_group_failure_resends_the_skipped_statements, .timeout = 60) {
    run_divisions(AORM_EXEC_READONLY, true);
}

Test(engine, autocommit_failure_does_not_touch_other_statements, .timeout = 60) {
    run_divisions(0, false);
}

/* ==========================================================================
 * 4. Autocommit writes
 * ========================================================================== */

Test(engine, autocommit_writes_are_their_own_transactions, .timeout = 60) {
    aorm_engine_options o;
    opts_init(&o);
    o.pool_size = 1;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    pg_cmd(&t, "DROP TABLE IF EXISTS eng_autocommit");
    pg_cmd(&t, "CREATE TABLE eng_autocommit (name text, CONSTRAINT eng_autocommit_name_key UNIQUE (name))");
    exec_ok(&t, "SELECT 1", NULL, 0); /* connected: the three share one pipeline */
    const char *names[3] = {"a", "a", "c"};
    reply *r[3];
    for (int i = 0; i < 3; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_text(&p, names[i]);
        r[i] = submit(&t, "INSERT INTO eng_autocommit (name) VALUES ($1)", &p, 0);
        aorm_params_free(&p);
    }
    wait_all(&t);
    cr_assert_eq(aorm_result_affected(want_ok(r[0])->res), 1);
    want_server_error(r[1], "23505");
    cr_assert_str_eq(r[1]->err->constraint, "eng_autocommit_name_key");
    cr_assert_eq(aorm_result_affected(want_ok(r[2])->res), 1);
    char got[64];
    pg_text(&t, "SELECT string_agg(name, ',' ORDER BY name) FROM eng_autocommit", got, sizeof(got));
    cr_assert_str_eq(got, "a,c", "committed rows: %s", got);
    env_close(&t);
}

/* ==========================================================================
 * 5. The result API through the engine
 * ========================================================================== */

typedef struct borrowed_check {
    int calls;
    aorm_result *kept;
    int nrows;
} borrowed_check;

/* Frees the borrowed result (must be ignored), reads it again, keeps it. */
static void on_keep(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    borrowed_check *b = user;
    b->calls++;
    cr_assert_null(err, "%s", err ? err->message : "");
    aorm_result_free(res); /* borrowed: ignored */
    b->nrows = aorm_result_nrows(res);
    b->kept = aorm_result_detach(res);
    cr_assert_not_null(b->kept);
}

Test(engine, result_api_through_the_engine, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    pg_cmd(&t, "DROP TABLE IF EXISTS eng_result");
    reply *ddl = exec_ok(&t, "CREATE TABLE eng_result (id int4 PRIMARY KEY, \"Name\" text, score float8, note text)",
                         NULL, 0);
    cr_assert_str_eq(aorm_result_cmd_tag(ddl->res), "CREATE TABLE");
    cr_assert_eq(aorm_result_affected(ddl->res), -1);

    reply *ins = exec_ok(&t,
                         "INSERT INTO eng_result VALUES (1, 'one', 1.5, NULL), (2, 'two', 2.5, 'n2'), "
                         "(3, 'three', 3.5, 'n3')",
                         NULL, 0);
    cr_assert_str_eq(aorm_result_cmd_tag(ins->res), "INSERT 0 3");
    cr_assert_eq(aorm_result_affected(ins->res), 3);
    cr_assert_eq(aorm_result_nrows(ins->res), 0);

    reply *upd = exec_ok(&t, "UPDATE eng_result SET score = score * 2 WHERE id >= 2", NULL, 0);
    cr_assert_str_eq(aorm_result_cmd_tag(upd->res), "UPDATE 2");
    cr_assert_eq(aorm_result_affected(upd->res), 2);

    reply *del = exec_ok(&t, "DELETE FROM eng_result WHERE id = 3", NULL, 0);
    cr_assert_str_eq(aorm_result_cmd_tag(del->res), "DELETE 1");
    cr_assert_eq(aorm_result_affected(del->res), 1);

    reply *none = exec_ok(&t, "DELETE FROM eng_result WHERE id = 42", NULL, 0);
    cr_assert_eq(aorm_result_affected(none->res), 0);

    reply *sel = exec_ok(&t, "SELECT id, \"Name\", score, note, id AS name FROM eng_result ORDER BY id", NULL, 0);
    const aorm_result *r = sel->res;
    cr_assert_str_eq(aorm_result_cmd_tag(r), "SELECT 2");
    cr_assert_eq(aorm_result_affected(r), 2);
    cr_assert_eq(aorm_result_nrows(r), 2);
    cr_assert_eq(aorm_result_ncols(r), 5);
    cr_assert_eq(aorm_result_col(r, "Name"), 1);
    cr_assert_eq(aorm_result_col(r, "name"), 4, "lookup must be case-sensitive");
    cr_assert_eq(aorm_result_col(r, "NAME"), AORM_ENOTFOUND);
    cr_assert_eq(aorm_result_col(r, "note"), 3);
    cr_assert_eq(aorm_result_col(r, "nope"), AORM_ENOTFOUND);
    cr_assert_str_eq(aorm_result_col_name(r, 1), "Name");
    cr_assert_eq(aorm_result_col_type(r, 0), AORM_T_INT4);
    cr_assert_eq(aorm_result_col_type(r, 1), AORM_T_TEXT);
    cr_assert_eq(aorm_result_col_type(r, 2), AORM_T_FLOAT8);
    cr_assert_eq(aorm_result_col_type(r, 3), AORM_T_TEXT);
    int32_t id = 0;
    double score = 0;
    cr_assert_eq(aorm_result_int32(r, 1, 0, &id), 0);
    cr_assert_eq(id, 2);
    cr_assert_eq(aorm_result_float8(r, 1, 2, &score), 0);
    cr_assert_eq(score, 5.0, "score %g: the UPDATE doubled 2.5", score);
    cr_assert_str_eq(get_text(sel, 0, 1, NULL), "one");
    cr_assert_eq(aorm_result_is_null(r, 0, 3), 1);
    cr_assert_eq(aorm_result_is_null(r, 1, 3), 0);
    cr_assert(aorm_result_is_null(r, 2, 0) < 0, "row out of range");
    cr_assert(aorm_result_is_null(r, 0, 5) < 0, "column out of range");
    const char *s = NULL;
    cr_assert_eq(aorm_result_text(r, 0, 3, &s, NULL), AORM_ENULLVALUE);
    cr_assert_eq(aorm_result_int32(r, 0, 1, &id), AORM_ETYPE, "int32 getter on a text column");
    cr_assert_eq(aorm_result_int32(r, 2, 0, &id), AORM_ERANGE);

    /* a result kept past its callback (the engine frees borrowed ones) */
    borrowed_check bc = {0};
    cr_assert_eq(aorm_engine_execute(t.e, "SELECT g, 'v' || g FROM generate_series(1, 3) g", NULL, NULL, on_keep, &bc),
                 0);
    cr_assert(t_run_until(t.evl, &bc.calls, WAIT));
    exec_ok(&t, "SELECT 1", NULL, 0); /* the loop and the engine moved on */
    cr_assert_eq(bc.calls, 1);
    cr_assert_eq(bc.nrows, 3);
    cr_assert_eq(aorm_result_nrows(bc.kept), 3);
    int64_t g = 0;
    cr_assert_eq(aorm_result_int64(bc.kept, 2, 0, &g), 0);
    cr_assert_eq(g, 3);
    cr_assert_eq(aorm_result_text(bc.kept, 2, 1, &s, NULL), 0);
    cr_assert_str_eq(s, "v3");
    aorm_result_free(bc.kept);
    aorm_result_free(NULL);

    /* text results */
    reply *txt = exec_ok(&t, "SELECT 42::int4 AS n, 'hi'::text AS t, NULL::int4 AS z", NULL, AORM_EXEC_TEXT_RESULT);
    const char *raw = NULL;
    int rawlen = 0;
    cr_assert_eq(aorm_result_raw(txt->res, 0, 0, &raw, &rawlen), 0);
    cr_assert_eq(rawlen, 2, "a text-format int4 42 is two characters, got %d bytes", rawlen);
    cr_assert(memcmp(raw, "42", 2) == 0, "text-format value: %.*s", rawlen, raw);
    cr_assert_str_eq(get_text(txt, 0, 1, NULL), "hi");
    cr_assert_eq(aorm_result_is_null(txt->res, 0, 2), 1);
    /* result.h lists the types aorm_result_text reads (int4 is not one of
     * them): on a text-format int column it may read the text, or refuse
     * with AORM_ETYPE, but never hand out anything else. */
    s = NULL;
    int rc = aorm_result_text(txt->res, 0, 0, &s, NULL);
    cr_assert(rc == 0 || rc == AORM_ETYPE, "aorm_result_text on a text-format int4: %s", aorm_errname(rc));
    if (rc == 0) cr_assert_str_eq(s, "42");
    cr_log_info("aorm_result_text on a text-format int4 column: %s", rc == 0 ? "reads \"42\"" : aorm_errname(rc));
    /* a binary getter must not misread text bytes */
    id = -1;
    rc = aorm_result_int32(txt->res, 0, 0, &id);
    cr_assert(rc < 0 || id == 42, "int32 getter on text-format \"42\" returned %d", id);
    env_close(&t);
}

/* ==========================================================================
 * 6. Codecs, through the engine
 * ========================================================================== */

static int never_calls;
static void on_never(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) { never_calls++; }

Test(engine, codec_integers_and_floats, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8(&p, INT64_MIN);
    aorm_params_int8(&p, INT64_MAX);
    aorm_params_int4(&p, INT32_MIN);
    aorm_params_int2(&p, INT16_MAX);
    reply *r = exec_ok(&t,
                       "SELECT $1::int8, $2::int8, $1::int8 = -9223372036854775808, $2::int8 = 9223372036854775807, "
                       "$3::int4, $3::int4 = -2147483648, $4::int2, $4::int2 = 32767",
                       &p, 0);
    aorm_params_free(&p);
    cr_assert_eq(get_i64(r, 0, 0), INT64_MIN);
    cr_assert_eq(get_i64(r, 0, 1), INT64_MAX);
    cr_assert(get_bool(r, 0, 2), "the server did not receive INT64_MIN");
    cr_assert(get_bool(r, 0, 3), "the server did not receive INT64_MAX");
    cr_assert_eq(get_i64(r, 0, 4), INT32_MIN);
    cr_assert(get_bool(r, 0, 5));
    int16_t i16 = 0;
    cr_assert_eq(aorm_result_int16(r->res, 0, 6, &i16), 0);
    cr_assert_eq(i16, INT16_MAX);
    cr_assert(get_bool(r, 0, 7));

    aorm_params_init(&p);
    aorm_params_float8(&p, NAN);
    aorm_params_float8(&p, INFINITY);
    aorm_params_float8(&p, -INFINITY);
    aorm_params_float8(&p, 0.1);
    aorm_params_float8(&p, -0.0);
    r = exec_ok(&t,
                "SELECT $1::float8, $2::float8, $3::float8, $4::float8, $5::float8, "
                "$1::float8 = 'NaN'::float8, $2::float8 = 'Infinity'::float8, $3::float8 = '-Infinity'::float8, "
                "$4::float8 = 0.1::float8",
                &p, 0);
    aorm_params_free(&p);
    double d[5];
    for (int i = 0; i < 5; i++) cr_assert_eq(aorm_result_float8(r->res, 0, i, &d[i]), 0);
    cr_assert(isnan(d[0]));
    cr_assert(isinf(d[1]) && d[1] > 0);
    cr_assert(isinf(d[2]) && d[2] < 0);
    cr_assert_eq(d[3], 0.1);
    cr_assert(d[4] == 0 && signbit(d[4]), "-0.0 lost its sign");
    for (int i = 5; i < 9; i++) cr_assert(get_bool(r, 0, i), "column %d: the server saw another value", i);
    env_close(&t);
}

/* Code points of a UTF-8 string. */
static long utf8_chars(const char *s) {
    long n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80) n++;
    return n;
}

Test(engine, codec_text_is_never_interpreted, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    static const char tricky[] = "it's \"quoted\" \\ back\\slash \\x00 $1 $2 ; DROP TABLE eng_x; -- /* */ "
                                 "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89 %s %n";
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, tricky);
    reply *r = exec_ok(&t, "SELECT $1::text, octet_length($1::text), char_length($1::text)", &p, 0);
    aorm_params_free(&p);
    size_t len = 0;
    const char *s = get_text(r, 0, 0, &len);
    cr_assert_eq(len, strlen(tricky));
    cr_assert_str_eq(s, tricky);
    cr_assert_eq(get_i64(r, 0, 1), (int64_t)strlen(tricky));
    cr_assert_eq(get_i64(r, 0, 2), utf8_chars(tricky), "the server counted %" PRId64 " characters",
                 get_i64(r, 0, 2));

    /* invalid UTF-8 is refused by the server */
    aorm_params_init(&p);
    aorm_params_text(&p, "bad \xff\xfe");
    reply *bad = submit(&t, "SELECT $1::text", &p, 0);
    aorm_params_free(&p);
    wait_reply(&t, bad);
    want_server_error(bad, "22021");

    /* a NUL byte never leaves the process, and the callback never runs */
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_text_n(&p, "ab\0cd", 5), AORM_EENCODING);
    never_calls = 0;
    int rc = aorm_engine_execute(t.e, "SELECT $1::text", &p, NULL, on_never, NULL);
    cr_assert_eq(rc, AORM_EENCODING, "aorm_engine_execute = %s", aorm_errname(rc));
    aorm_exec_options ro = {.flags = AORM_EXEC_READONLY, .deadline = 0};
    rc = aorm_engine_execute(t.e, "SELECT $1::text", &p, &ro, on_never, NULL);
    cr_assert_eq(rc, AORM_EENCODING);
    aorm_params_free(&p);
    exec_ok(&t, "SELECT 1", NULL, 0);
    cr_assert_eq(never_calls, 0, "a refused statement called back");
    aorm_engine_stats es = stats(&t);
    env_close(&t);
    cr_assert_eq(never_calls, 0, "a refused statement called back at engine free");
    cr_assert_eq(es.statements, 3, "%" PRIu64 " statements sent, want 3", es.statements);
}

Test(engine, codec_one_mebibyte_text_and_bytea, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    size_t n = (size_t)1 << 20;
    char *big = malloc(n + 1);
    uint8_t *bin = malloc(n);
    cr_assert(big && bin);
    for (size_t i = 0; i < n; i++) {
        big[i] = (char)('a' + (i * 7 + i / 26) % 26);
        bin[i] = (uint8_t)(i * 131 + (i >> 9));
    }
    big[n] = '\0';
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, big);
    aorm_params_bytea(&p, bin, n);
    cr_assert_eq(aorm_params_error(&p), 0);
    reply *r = exec_ok(&t,
                       "SELECT $1::text, $2::bytea, octet_length($1::text), octet_length($2::bytea), "
                       "substr($1::text, 700001, 16), get_byte($2::bytea, 0), get_byte($2::bytea, 1048575), "
                       "get_byte($2::bytea, 524287)",
                       &p, 0);
    aorm_params_free(&p);
    size_t len = 0;
    const char *s = get_text(r, 0, 0, &len);
    cr_assert_eq(len, n);
    cr_assert(memcmp(s, big, n) == 0, "1 MiB text changed on the way");
    const uint8_t *data = NULL;
    cr_assert_eq(aorm_result_bytea(r->res, 0, 1, &data, &len), 0);
    cr_assert_eq(len, n);
    cr_assert(memcmp(data, bin, n) == 0, "1 MiB bytea changed on the way");
    cr_assert_eq(get_i64(r, 0, 2), (int64_t)n);
    cr_assert_eq(get_i64(r, 0, 3), (int64_t)n);
    size_t sublen = 0;
    const char *sub = get_text(r, 0, 4, &sublen);
    cr_assert_eq(sublen, 16);
    cr_assert(memcmp(sub, big + 700000, 16) == 0, "the server saw other text at offset 700000");
    cr_assert_eq(get_i64(r, 0, 5), bin[0]);
    cr_assert_eq(get_i64(r, 0, 6), bin[n - 1]);
    cr_assert_eq(get_i64(r, 0, 7), bin[524287]);
    free(big);
    free(bin);
    env_close(&t);
}

Test(engine, codec_numeric_date_timestamptz_uuid_jsonb, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    static const char *const decimals[] = {"-12345678901234567890.000123400", "0.0000001", "NaN", "1e-3"};
    static const char *const canonical[] = {"-12345678901234567890.000123400", "0.0000001", "NaN", "0.001"};
    for (int i = 0; i < 4; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_numeric(&p, decimals[i]);
        int perr = aorm_params_error(&p);
        if (perr) {
            /* "1e-3" is not a plain decimal string: the builder may refuse it */
            cr_assert_eq(i, 3, "numeric %s refused: %s", decimals[i], aorm_errname(perr));
            aorm_params_free(&p);
            continue;
        }
        reply *r = exec_ok(&t, "SELECT $1::numeric, $1::numeric::text", &p, 0);
        aorm_params_free(&p);
        char buf[128];
        int rc = aorm_result_numeric(r->res, 0, 0, buf, sizeof(buf), NULL);
        cr_assert(rc >= 0, "numeric getter: %s", aorm_errname(rc));
        cr_assert_str_eq(buf, get_text(r, 0, 1, NULL), "decoded %s, the server says %s", buf,
                         get_text(r, 0, 1, NULL));
        cr_assert_str_eq(buf, canonical[i]);
    }

    aorm_params p;
    aorm_params_init(&p);
    int32_t day = aorm_date_from_ymd(2024, 2, 29);
    int64_t ts = aorm_timestamp_from_unix_us(INT64_C(1700000000123456));
    aorm_params_date(&p, day);
    aorm_params_timestamptz(&p, ts);
    aorm_params_uuid_str(&p, "123e4567-e89b-12d3-a456-426614174000");
    static const char json[] = "{\"k\": null, \"a\": [1, 2, {\"b\": \"\xc3\xbc\"}], \"n\": 1.50}";
    aorm_params_jsonb(&p, json, strlen(json));
    cr_assert_eq(aorm_params_error(&p), 0);
    reply *r = exec_ok(&t,
                       "SELECT $1::date, $1::date = DATE '2024-02-29', "
                       "$2::timestamptz, $2::timestamptz = '2023-11-14 22:13:20.123456+00'::timestamptz, "
                       "$3::uuid, $3::uuid::text, "
                       "$4::jsonb, $4::jsonb::text, $4::jsonb -> 'a' -> 2 ->> 'b', ($4::jsonb ->> 'n')::numeric = 1.5",
                       &p, 0);
    aorm_params_free(&p);
    int32_t gotday = 0;
    cr_assert_eq(aorm_result_date(r->res, 0, 0, &gotday), 0);
    cr_assert_eq(gotday, day);
    cr_assert(get_bool(r, 0, 1), "the server read another date");
    int64_t gotts = 0;
    cr_assert_eq(aorm_result_timestamp(r->res, 0, 2, &gotts), 0);
    cr_assert_eq(gotts, ts);
    cr_assert(get_bool(r, 0, 3), "the server read another timestamp");
    uint8_t u[16];
    static const uint8_t want_u[16] = {0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3,
                                       0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00};
    cr_assert_eq(aorm_result_uuid(r->res, 0, 4, u), 0);
    cr_assert(memcmp(u, want_u, 16) == 0);
    cr_assert_str_eq(get_text(r, 0, 5, NULL), "123e4567-e89b-12d3-a456-426614174000");
    cr_assert_eq(aorm_result_col_type(r->res, 6), AORM_T_JSONB);
    char jb[256];
    snprintf(jb, sizeof(jb), "%s", get_text(r, 0, 6, NULL));
    cr_assert_str_eq(jb, get_text(r, 0, 7, NULL), "binary jsonb decoded as %s, the server's text is %s", jb,
                     get_text(r, 0, 7, NULL));
    cr_assert_str_eq(get_text(r, 0, 8, NULL), "\xc3\xbc");
    cr_assert(get_bool(r, 0, 9));
    env_close(&t);
}

Test(engine, codec_arrays_and_any, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    pg_cmd(&t, "DROP TABLE IF EXISTS eng_codec_any");
    pg_cmd(&t, "CREATE TABLE eng_codec_any (id int8 PRIMARY KEY)");
    pg_cmd(&t, "INSERT INTO eng_codec_any SELECT generate_series(1, 10)");

    static const int64_t keys[6] = {2, 0, 5, 11, 7, INT64_MIN};
    static const bool key_nulls[6] = {false, true, false, false, false, false};
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8_array(&p, keys, key_nulls, 6);
    reply *any = exec_ok(&t, "SELECT id FROM eng_codec_any WHERE id = ANY($1) ORDER BY id", &p, 0);
    reply *echo = exec_ok(&t, "SELECT $1::int8[], array_length($1::int8[], 1), array_position($1::int8[], NULL)", &p,
                          0);
    aorm_params_free(&p);
    cr_assert_eq(aorm_result_nrows(any->res), 3);
    cr_assert_eq(get_i64(any, 0, 0), 2);
    cr_assert_eq(get_i64(any, 1, 0), 5);
    cr_assert_eq(get_i64(any, 2, 0), 7);
    aorm_array a;
    cr_assert_eq(aorm_result_array(echo->res, 0, 0, &a), 0);
    cr_assert_eq(a.count, 6);
    int64_t back[6];
    bool back_nulls[6];
    cr_assert_eq(aorm_array_int64s(&a, back, back_nulls, 6), 6);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(back_nulls[i], key_nulls[i], "element %d", i);
        if (!key_nulls[i]) cr_assert_eq(back[i], keys[i], "element %d", i);
    }
    cr_assert_eq(get_i64(echo, 0, 1), 6);
    cr_assert_eq(get_i64(echo, 0, 2), 2, "the server saw the NULL at another position");

    static const char *const words[7] = {"plain", NULL, "with,comma", "quote\"d {brace}", "", "caf\xc3\xa9",
                                         "back\\slash"};
    aorm_params_init(&p);
    aorm_params_text_array(&p, words, 7);
    reply *tr = exec_ok(&t, "SELECT $1::text[], array_length($1::text[], 1), ($1::text[])[4], ($1::text[])[2] IS NULL",
                        &p, 0);
    aorm_params_free(&p);
    cr_assert_eq(aorm_result_array(tr->res, 0, 0, &a), 0);
    cr_assert_eq(a.count, 7);
    cr_assert_eq(a.elem_type, AORM_T_TEXT);
    const char *elem;
    int elen;
    for (int i = 0; i < 7; i++) {
        cr_assert_eq(aorm_array_next(&a, &elem, &elen), 1, "element %d missing", i);
        if (!words[i]) {
            cr_assert_eq(elen, -1, "element %d should be NULL", i);
            continue;
        }
        cr_assert_eq(elen, (int)strlen(words[i]), "element %d length", i);
        cr_assert(memcmp(elem, words[i], (size_t)elen) == 0, "element %d: %.*s", i, elen, elem);
    }
    cr_assert_eq(aorm_array_next(&a, &elem, &elen), 0);
    cr_assert_eq(get_i64(tr, 0, 1), 7);
    cr_assert_str_eq(get_text(tr, 0, 2, NULL), words[3]);
    cr_assert(get_bool(tr, 0, 3));
    env_close(&t);
}

/* ==========================================================================
 * 7. Prepared statements
 * ========================================================================== */

static const char *const rotation[5] = {"SELECT $1::int8 + 1", "SELECT $1::int8 + 2", "SELECT $1::int8 + 3",
                                        "SELECT $1::int8 + 4", "SELECT $1::int8 + 5"};

static reply *submit_i64(env *t, const char *sql, int64_t v, unsigned flags) {
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8(&p, v);
    reply *r = submit(t, sql, &p, flags);
    aorm_params_free(&p);
    return r;
}

static void small_cache_options(aorm_engine_options *o, int cache) {
    opts_init(o);
    o->pool_size = 1;
    o->max_overflow = 0;
    o->prepared_cache_size = cache;
}

/* Named statements on the engine's (only) connection; *names gets them,
 * borrowed from a reply the environment owns. */
static int64_t server_prepared_list(env *t, const char **names) {
    reply *r = exec_ok(t,
                       "SELECT count(*), coalesce(string_agg(name || ': ' || statement, '; ' ORDER BY name), '') "
                       "FROM pg_prepared_statements",
                       NULL, AORM_EXEC_UNPREPARED);
    if (names) *names = get_text(r, 0, 1, NULL);
    return get_i64(r, 0, 0);
}

static int64_t server_prepared(env *t) { return server_prepared_list(t, NULL); }

Test(engine, prepared_cache_lru_eviction, .timeout = 60) {
    aorm_engine_options o;
    small_cache_options(&o, 2);
    env t;
    env_open(&t, &o);
    for (int round = 0; round < 4; round++) {
        for (int s = 0; s < 5; s++) {
            int64_t v = round * 100 + s;
            reply *r = submit_i64(&t, rotation[s], v, 0);
            wait_reply(&t, r);
            cr_assert_eq(get_i64(want_ok(r), 0, 0), v + s + 1, "round %d statement %d", round, s);
        }
    }
    aorm_engine_stats st = stats(&t);
    cr_assert(st.prepares > 5, "prepares = %" PRIu64 ": evicted statements must be prepared again", st.prepares);
    /* the count itself runs unprepared: what is left is the cache */
    const char *names = NULL;
    int64_t n = server_prepared_list(&t, &names);
    cr_assert(n >= 1 && n <= 2, "%" PRId64 " prepared statements on the server with prepared_cache_size=2: %s", n,
              names);
    /* the same statement twice in a row is a cache hit */
    uint64_t hits = stats(&t).prepared_hits;
    for (int i = 0; i < 2; i++) {
        reply *r = submit_i64(&t, rotation[4], 1000 + i, 0);
        wait_reply(&t, r);
        cr_assert_eq(get_i64(want_ok(r), 0, 0), 1005 + i);
    }
    cr_assert(stats(&t).prepared_hits > hits, "no prepared-statement hit");
    cr_assert_eq(stats(&t).connects, 1);
    env_close(&t);
}

Test(engine, prepared_cache_stays_bounded_after_a_burst, .timeout = 60) {
    aorm_engine_options o;
    small_cache_options(&o, 2);
    env t;
    env_open(&t, &o);
    exec_ok(&t, "SELECT 1", NULL, AORM_EXEC_UNPREPARED);
    for (int round = 0; round < 3; round++) {
        reply *r[5];
        for (int s = 0; s < 5; s++) r[s] = submit_i64(&t, rotation[s], round * 10 + s, 0); /* one turn */
        wait_all(&t);
        for (int s = 0; s < 5; s++) cr_assert_eq(get_i64(want_ok(r[s]), 0, 0), round * 10 + s + s + 1);
    }
    const char *names = NULL;
    int64_t n = server_prepared_list(&t, &names);
    cr_assert(n <= 2, "%" PRId64 " prepared statements on the server with prepared_cache_size=2: %s", n, names);
    env_close(&t);
}

/* A statement that fails early in a sync group makes the server skip the
 * rest of the group, DEALLOCATEs of evicted statements included. */
Test(engine, prepared_eviction_inside_an_aborted_pipeline, .timeout = 60) {
    aorm_engine_options o;
    small_cache_options(&o, 2);
    env t;
    env_open(&t, &o);
    for (int round = 0; round < 5; round++) {
        char a[64], b[64], c[64];
        int base = 1000 + round * 3;
        snprintf(a, sizeof(a), "SELECT $1::int8 + %d", base);
        snprintf(b, sizeof(b), "SELECT $1::int8 + %d", base + 1);
        snprintf(c, sizeof(c), "SELECT $1::int8 + %d", base + 2);
        reply *ra = submit_i64(&t, a, round, AORM_EXEC_READONLY);
        wait_reply(&t, ra);
        cr_assert_eq(get_i64(want_ok(ra), 0, 0), round + base);
        reply *rb = submit_i64(&t, b, round, AORM_EXEC_READONLY);
        wait_reply(&t, rb);
        cr_assert_eq(get_i64(want_ok(rb), 0, 0), round + base + 1);
        /* one turn: a failure, then a statement whose PREPARE evicts one */
        aorm_params zero;
        aorm_params_init(&zero);
        aorm_params_int4(&zero, 0);
        reply *rf = submit(&t, "SELECT 1 / $1::int4", &zero, AORM_EXEC_READONLY);
        aorm_params_free(&zero);
        reply *rc = submit_i64(&t, c, round, AORM_EXEC_READONLY);
        wait_all(&t);
        want_server_error(rf, "22012");
        cr_assert_eq(get_i64(want_ok(rc), 0, 0), round + base + 2);
    }
    const char *names = NULL;
    int64_t n = server_prepared_list(&t, &names);
    cr_assert(n <= 2, "%" PRId64 " prepared statements on the server with prepared_cache_size=2: %s", n, names);
    env_close(&t);
}

Test(engine, prepared_cache_off_for_pgbouncer, .timeout = 60) {
    aorm_engine_options o;
    small_cache_options(&o, 0);
    env t;
    env_open(&t, &o);
    for (int round = 0; round < 3; round++) {
        reply *r[5];
        for (int s = 0; s < 5; s++) r[s] = submit_i64(&t, rotation[s], round + s, s % 2 ? AORM_EXEC_READONLY : 0);
        wait_all(&t);
        for (int s = 0; s < 5; s++) cr_assert_eq(get_i64(want_ok(r[s]), 0, 0), round + s + s + 1);
    }
    cr_assert_eq(server_prepared(&t), 0, "named statements exist with prepared_cache_size=0");
    aorm_engine_stats st = stats(&t);
    cr_assert_eq(st.prepares, 0);
    cr_assert_eq(st.prepared_hits, 0);
    env_close(&t);
}

Test(engine, prepared_statement_survives_a_schema_change, .timeout = 60) {
    aorm_engine_options o;
    small_cache_options(&o, 16);
    env t;
    env_open(&t, &o);
    pg_cmd(&t, "DROP TABLE IF EXISTS eng_stale");
    pg_cmd(&t, "CREATE TABLE eng_stale (a int4, b int4)");
    pg_cmd(&t, "INSERT INTO eng_stale VALUES (1, 2)");
    reply *r = exec_ok(&t, "SELECT * FROM eng_stale", NULL, 0);
    cr_assert_eq(aorm_result_ncols(r->res), 2);
    r = exec_ok(&t, "SELECT * FROM eng_stale", NULL, 0);
    cr_assert_eq(aorm_result_ncols(r->res), 2);
    cr_assert(stats(&t).prepared_hits >= 1, "the second run did not use the prepared statement");
    pg_cmd(&t, "ALTER TABLE eng_stale ADD COLUMN x int4");
    r = exec_ok(&t, "SELECT * FROM eng_stale", NULL, 0);
    cr_assert_eq(aorm_result_ncols(r->res), 3, "the stale plan's column count came back");
    cr_assert_str_eq(aorm_result_col_name(r->res, 2), "x");
    cr_assert_eq(aorm_result_is_null(r->res, 0, 2), 1);
    cr_assert_eq(get_i64(r, 0, 1), 2);
    r = exec_ok(&t, "SELECT * FROM eng_stale", NULL, 0);
    cr_assert_eq(aorm_result_ncols(r->res), 3);
    cr_assert_eq(stats(&t).connections_lost, 0);
    env_close(&t);
}

/* ==========================================================================
 * 8. Transactions on a held connection
 * ========================================================================== */

static reply *insert_v(env *t, aorm_conn *c, const char *table, int v) {
    char sql[128];
    snprintf(sql, sizeof(sql), "INSERT INTO %s (v) VALUES ($1)", table);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int4(&p, v);
    reply *r = csubmit(t, c, sql, &p, 0);
    aorm_params_free(&p);
    return r;
}

Test(engine, transaction_isolation_savepoints_and_status, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    pg_cmd(&t, "DROP TABLE IF EXISTS eng_tx");
    pg_cmd(&t, "CREATE TABLE eng_tx (v int4)");
    aorm_conn *c = acquire(&t);
    cr_assert_eq(aorm_conn_tx_status(c), AORM_TX_IDLE);

    aorm_tx_options txo = {AORM_ISO_SERIALIZABLE, false, false};
    reply *b = reply_new(&t, "BEGIN SERIALIZABLE");
    cr_assert_eq(aorm_conn_begin(c, &txo, on_reply, b), 0);
    cr_assert_eq(aorm_conn_tx_status(c), AORM_TX_ACTIVE);
    reply *iso = csubmit(&t, c, "SHOW transaction_isolation", NULL, 0);
    wait_all(&t);
    want_ok(b);
    cr_assert_str_eq(get_text(want_ok(iso), 0, 0, NULL), "serializable");
    cr_assert_eq(settled_status(&t, c), AORM_TX_INTRANS);

    static const char sp[] = "my \"sp\" one";
    reply *i1 = insert_v(&t, c, "eng_tx", 1);
    reply *s1 = sp_call(&t, "SAVEPOINT", aorm_conn_savepoint, c, sp);
    reply *i2 = insert_v(&t, c, "eng_tx", 2);
    wait_all(&t);
    want_ok(i1);
    want_ok(s1);
    want_ok(i2);
    cr_assert_eq(settled_status(&t, c), AORM_TX_INTRANS);

    aorm_params zero;
    aorm_params_init(&zero);
    aorm_params_int4(&zero, 0);
    reply *bad = csubmit(&t, c, "SELECT 1 / $1::int4", &zero, 0);
    aorm_params_free(&zero);
    wait_reply(&t, bad);
    want_server_error(bad, "22012");
    cr_assert_eq(settled_status(&t, c), AORM_TX_INERROR);

    reply *rt = sp_call(&t, "ROLLBACK TO SAVEPOINT", aorm_conn_rollback_to, c, sp);
    wait_reply(&t, rt);
    want_ok(rt);
    cr_assert_eq(settled_status(&t, c), AORM_TX_INTRANS);
    reply *i3 = insert_v(&t, c, "eng_tx", 3);
    reply *rel = sp_call(&t, "RELEASE SAVEPOINT", aorm_conn_release_savepoint, c, sp);
    reply *inside = csubmit(&t, c, "SELECT string_agg(v::text, ',' ORDER BY v) FROM eng_tx", NULL, 0);
    wait_all(&t);
    want_ok(i3);
    want_ok(rel);
    cr_assert_str_eq(get_text(want_ok(inside), 0, 0, NULL), "1,3");
    cr_assert_eq(t_pg_long(t.pg, "SELECT count(*) FROM eng_tx"), 0, "uncommitted rows visible outside");

    reply *cm = tx_call(&t, "COMMIT", aorm_conn_commit, c);
    wait_reply(&t, cm);
    cr_assert_str_eq(aorm_result_cmd_tag(want_ok(cm)->res), "COMMIT");
    cr_assert_eq(settled_status(&t, c), AORM_TX_IDLE);
    char got[64];
    pg_text(&t, "SELECT string_agg(v::text, ',' ORDER BY v) FROM eng_tx", got, sizeof(got));
    cr_assert_str_eq(got, "1,3");

    /* a second transaction, read only and rolled back */
    aorm_tx_options ro = {AORM_ISO_REPEATABLE_READ, true, false};
    b = reply_new(&t, "BEGIN READ ONLY");
    cr_assert_eq(aorm_conn_begin(c, &ro, on_reply, b), 0);
    reply *iso2 = csubmit(&t, c, "SHOW transaction_isolation", NULL, 0);
    reply *w = insert_v(&t, c, "eng_tx", 4);
    wait_all(&t);
    want_ok(b);
    cr_assert_str_eq(get_text(want_ok(iso2), 0, 0, NULL), "repeatable read");
    want_server_error(w, "25006");
    cr_assert_eq(settled_status(&t, c), AORM_TX_INERROR);
    reply *rb = tx_call(&t, "ROLLBACK", aorm_conn_rollback, c);
    wait_reply(&t, rb);
    want_ok(rb);
    cr_assert_eq(settled_status(&t, c), AORM_TX_IDLE);
    aorm_conn_release(c);
    cr_assert_eq(t_pg_long(t.pg, "SELECT count(*) FROM eng_tx"), 2);
    env_close(&t);
}

/* Releases a connection inside an open transaction (after its statements
 * completed, or right after queueing them) and takes it again. */
static void release_dirty(bool wait_before_release) {
    aorm_engine_options o;
    opts_init(&o);
    o.pool_size = 1;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    const char *table = wait_before_release ? "eng_release_open" : "eng_release_queued";
    char sql[128];
    snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", table);
    pg_cmd(&t, sql);
    snprintf(sql, sizeof(sql), "CREATE TABLE %s (v int4)", table);
    pg_cmd(&t, sql);

    aorm_conn *c = acquire(&t);
    int64_t pid = get_i64(cexec_ok(&t, c, "SELECT pg_backend_pid()::int8", NULL, 0), 0, 0);
    reply *b = reply_new(&t, "BEGIN");
    cr_assert_eq(aorm_conn_begin(c, NULL, on_reply, b), 0);
    reply *ins = insert_v(&t, c, table, 99);
    if (wait_before_release) {
        wait_all(&t);
        cr_assert_eq(settled_status(&t, c), AORM_TX_INTRANS);
    }
    aorm_conn_release(c);
    wait_all(&t); /* queued statements still complete */
    want_ok(b);
    cr_assert_eq(aorm_result_affected(want_ok(ins)->res), 1);

    aorm_conn *c2 = acquire(&t);
    cr_assert_eq(aorm_conn_tx_status(c2), AORM_TX_IDLE, "the next holder got a connection in a transaction");
    cr_assert_eq(get_i64(cexec_ok(&t, c2, "SELECT pg_backend_pid()::int8", NULL, 0), 0, 0), pid,
                 "pool_size=1 but another backend");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
    cr_assert_eq(get_i64(cexec_ok(&t, c2, sql, NULL, 0), 0, 0), 0, "the released transaction's row is visible");
    cr_assert_eq(settled_status(&t, c2), AORM_TX_IDLE);
    aorm_conn_release(c2);
    cr_assert_eq(t_pg_long(t.pg, sql), 0, "the released transaction was committed");
    aorm_engine_stats s = stats(&t);
    cr_assert_eq(s.connections_lost, 0);
    cr_assert_eq(s.discarded, 0);
    cr_assert_eq(s.connects, 1);
    env_close(&t);
}

Test(engine, release_with_an_open_transaction_rolls_back, .timeout = 60) { release_dirty(true); }
Test(engine, release_right_after_queueing_rolls_back, .timeout = 60) { release_dirty(false); }

typedef struct acq_query {
    env *t;
    reply *acq;
    reply *stmt;
} acq_query;

static void on_acquired_then_query(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    acq_query *q = user;
    on_acquired(e, c, err, q->acq);
    if (!c) return;
    q->stmt = csubmit(q->t, c, "SELECT 42::int8", NULL, 0);
}

Test(engine, statements_queued_in_the_acquire_callback_are_sent, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    exec_ok(&t, "SELECT 1", NULL, 0); /* an idle connection is ready */
    acq_query q = {&t, reply_new(&t, "acquire"), NULL};
    cr_assert_eq(aorm_engine_acquire(t.e, on_acquired_then_query, &q), 0);
    wait_reply(&t, q.acq);
    cr_assert_not_null(q.stmt, "acquire failed");
    double t0 = ev_time();
    int ok = t_run_until_fn(t.evl, reply_done, q.stmt, 5.0);
    cr_assert(ok, "a statement queued inside the acquire callback was not sent within 5 s: the loop blocked "
                  "in poll with the statement still queued");
    cr_assert(ev_time() - t0 < 1.0, "a statement queued inside the acquire callback took %.2f s",
              ev_time() - t0);
    cr_assert_eq(get_i64(want_ok(q.stmt), 0, 0), 42);
    aorm_conn_release(q.acq->conn);
    env_close(&t);
}

/* ==========================================================================
 * 9. COPY
 * ========================================================================== */

typedef struct copy_src {
    int total;
    int next;
    int calls;
    int abort_on_call;  /* return -1 on this call; 0 never */
    bool duplicates;    /* ids repeat: a unique violation */
    size_t max_chunk;
    /* what was sent */
    int64_t sum_id;
    int64_t sum_qty;
    int64_t names;
    int64_t name_bytes;
    int64_t prices;
    double sum_price;
} copy_src;

static int copy_fill(aorm_copy *cp, void *user) {
    copy_src *s = user;
    s->calls++;
    if (s->abort_on_call && s->calls == s->abort_on_call) return -1;
    while (s->next < s->total && aorm_copy_buffered(cp) < 64 * 1024) {
        int i = s->next++;
        int64_t id = s->duplicates ? (int64_t)(i % (s->total / 2)) + 1 : (int64_t)i + 1;
        cr_assert_eq(aorm_copy_row(cp, 4), 0);
        cr_assert_eq(aorm_copy_int8(cp, id), 0);
        s->sum_id += id;
        if (i % 7 == 3) {
            cr_assert_eq(aorm_copy_null(cp), 0);
        } else {
            char name[48];
            int n = snprintf(name, sizeof(name), "row %d caf\xc3\xa9", i);
            cr_assert_eq(aorm_copy_text(cp, name, (size_t)n), 0);
            s->names++;
            s->name_bytes += n;
        }
        int32_t qty = i % 1000 - 500;
        cr_assert_eq(aorm_copy_int4(cp, qty), 0);
        s->sum_qty += qty;
        if (i % 11 == 5) {
            cr_assert_eq(aorm_copy_null(cp), 0);
        } else {
            double price = i * 0.25; /* exact in binary: the server's sum is exact too */
            cr_assert_eq(aorm_copy_float8(cp, price), 0);
            s->prices++;
            s->sum_price += price;
        }
    }
    size_t b = aorm_copy_buffered(cp);
    if (b > s->max_chunk) s->max_chunk = b;
    return s->next < s->total ? 1 : 0;
}

static void copy_table(env *t, const char *table, const char *pk) {
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", table);
    pg_cmd(t, sql);
    snprintf(sql, sizeof(sql), "CREATE TABLE %s (id int8 %s, name text, qty int4, price float8)", table,
             pk ? pk : "");
    pg_cmd(t, sql);
}

static void copy_sql(char *buf, size_t cap, const char *table) {
    snprintf(buf, cap, "COPY %s (id, name, qty, price) FROM STDIN (FORMAT binary)", table);
}

/* What the table holds, computed by the server, equals what was sent. */
static void copy_verify(env *t, const char *table, const copy_src *s) {
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(*), coalesce(sum(id), 0), coalesce(sum(qty), 0), count(name), "
             "coalesce(sum(octet_length(name)), 0), count(price), coalesce(sum(price), 0) FROM %s",
             table);
    PGresult *r = PQexec(t->pg, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(t->pg));
    int64_t want[6] = {s->total, s->sum_id, s->sum_qty, s->names, s->name_bytes, s->prices};
    static const char *const what[6] = {"count", "sum(id)", "sum(qty)", "count(name)", "bytes of name",
                                        "count(price)"};
    for (int i = 0; i < 6; i++) {
        int64_t got = strtoll(PQgetvalue(r, 0, i), NULL, 10);
        cr_assert_eq(got, want[i], "%s: the table has %" PRId64 ", %" PRId64 " were sent", what[i], got, want[i]);
    }
    double price = strtod(PQgetvalue(r, 0, 6), NULL);
    cr_assert_eq(price, s->sum_price, "sum(price): the table has %.17g, %.17g was sent", price, s->sum_price);
    PQclear(r);
}

static long table_rows(env *t, const char *table) {
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
    return t_pg_long(t->pg, sql);
}

static void copy_result_ok(reply *r, const copy_src *s) {
    want_ok(r);
    cr_assert_eq(aorm_result_affected(r->res), s->total, "COPY reported %" PRId64 " rows",
                 aorm_result_affected(r->res));
    cr_assert_eq(s->next, s->total);
}

/* The fill callback was asked for more about every 64 KiB. */
static void copy_chunks_ok(const copy_src *s) {
    cr_assert(s->calls > 10, "the fill callback was called %d times for %d rows", s->calls, s->total);
    cr_assert(s->max_chunk >= 64 * 1024 && s->max_chunk < 64 * 1024 + 256, "largest chunk %zu bytes",
              s->max_chunk);
}

Test(engine, copy_100k_rows_on_a_pooled_connection, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    copy_table(&t, "eng_copy_engine", NULL);
    copy_src s = {.total = 100000};
    char sql[128];
    copy_sql(sql, sizeof(sql), "eng_copy_engine");
    reply *r = reply_new(&t, "aorm_engine_copy");
    cr_assert_eq(aorm_engine_copy(t.e, sql, copy_fill, &s, on_reply, r), 0);
    cr_assert_eq(s.calls, 0, "fill called inside aorm_engine_copy");
    wait_reply(&t, r);
    copy_result_ok(r, &s);
    copy_chunks_ok(&s);
    copy_verify(&t, "eng_copy_engine", &s);
    exec_ok(&t, "SELECT 1", NULL, 0);
    cr_assert_eq(stats(&t).held, 0, "the COPY's connection was not given back");
    env_close(&t);
}

Test(engine, copy_100k_rows_on_a_held_connection, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    copy_table(&t, "eng_copy_held", NULL);
    copy_src s = {.total = 100000};
    char sql[128];
    copy_sql(sql, sizeof(sql), "eng_copy_held");
    aorm_conn *c = acquire(&t);
    reply *r = reply_new(&t, "aorm_conn_copy");
    cr_assert_eq(aorm_conn_copy(c, sql, copy_fill, &s, on_reply, r), 0);
    wait_reply(&t, r);
    copy_result_ok(r, &s);
    copy_chunks_ok(&s);
    cr_assert_eq(settled_status(&t, c), AORM_TX_IDLE);
    cr_assert_eq(get_i64(cexec_ok(&t, c, "SELECT count(*) FROM eng_copy_held", NULL, 0), 0, 0), 100000);
    aorm_conn_release(c);
    copy_verify(&t, "eng_copy_held", &s);
    env_close(&t);
}

Test(engine, copy_inside_a_transaction_rolled_back, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    copy_table(&t, "eng_copy_tx", NULL);
    copy_src s = {.total = 5000};
    char sql[128];
    copy_sql(sql, sizeof(sql), "eng_copy_tx");
    aorm_conn *c = acquire(&t);
    /* one turn: BEGIN, COPY, a count inside, ROLLBACK */
    reply *b = reply_new(&t, "BEGIN");
    cr_assert_eq(aorm_conn_begin(c, NULL, on_reply, b), 0);
    reply *cp = reply_new(&t, "COPY inside a transaction");
    cr_assert_eq(aorm_conn_copy(c, sql, copy_fill, &s, on_reply, cp), 0);
    reply *cnt = csubmit(&t, c, "SELECT count(*) FROM eng_copy_tx", NULL, 0);
    reply *rb = tx_call(&t, "ROLLBACK", aorm_conn_rollback, c);
    wait_all(&t);
    want_ok(b);
    copy_result_ok(cp, &s);
    cr_assert_eq(get_i64(want_ok(cnt), 0, 0), s.total, "the transaction does not see its COPY");
    want_ok(rb);
    cr_assert(b->order < cp->order && cp->order < cnt->order && cnt->order < rb->order, "callbacks out of order");
    cr_assert_eq(settled_status(&t, c), AORM_TX_IDLE);
    cr_assert_eq(table_rows(&t, "eng_copy_tx"), 0, "rows of a rolled-back COPY remain");
    aorm_conn_release(c);
    env_close(&t);
}

Test(engine, copy_aborted_by_the_fill_callback, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    copy_table(&t, "eng_copy_abort", NULL);
    copy_src s = {.total = 100000, .abort_on_call = 3}; /* after two chunks went out */
    char sql[128];
    copy_sql(sql, sizeof(sql), "eng_copy_abort");
    aorm_conn *c = acquire(&t);
    reply *r = reply_new(&t, "aborted COPY");
    cr_assert_eq(aorm_conn_copy(c, sql, copy_fill, &s, on_reply, r), 0);
    wait_reply(&t, r);
    const aorm_error *err = want_err(r);
    cr_assert_eq(s.calls, 3, "fill called %d times after returning -1", s.calls);
    cr_assert(*err->message, "an aborted COPY without a message");
    cr_assert_eq(table_rows(&t, "eng_copy_abort"), 0, "an aborted COPY loaded rows");
    /* the connection is still good */
    cr_assert_eq(settled_status(&t, c), AORM_TX_IDLE);
    cr_assert(!aorm_conn_broken(c));
    cr_assert_eq(get_i64(cexec_ok(&t, c, "SELECT 7::int8", NULL, 0), 0, 0), 7);
    aorm_conn_release(c);
    env_close(&t);
}

Test(engine, copy_unique_violation, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    copy_table(&t, "eng_copy_dup", "CONSTRAINT eng_copy_dup_pk PRIMARY KEY");
    copy_src s = {.total = 2000, .duplicates = true};
    char sql[128];
    copy_sql(sql, sizeof(sql), "eng_copy_dup");
    aorm_conn *c = acquire(&t);
    reply *r = reply_new(&t, "COPY with duplicates");
    cr_assert_eq(aorm_conn_copy(c, sql, copy_fill, &s, on_reply, r), 0);
    wait_reply(&t, r);
    want_server_error(r, "23505");
    cr_assert_str_eq(r->err->constraint, "eng_copy_dup_pk");
    cr_assert_eq(table_rows(&t, "eng_copy_dup"), 0);
    cr_assert_eq(get_i64(cexec_ok(&t, c, "SELECT 8::int8", NULL, 0), 0, 0), 8);
    aorm_conn_release(c);
    env_close(&t);
}

/* ==========================================================================
 * 10. Host names
 * ========================================================================== */

Test(engine, host_name_is_resolved_and_connects, .timeout = 60) {
    char *dsn = conninfo_set(t_dsn(), "host", "localhost");
    aorm_engine_options o;
    opts_init(&o);
    o.conninfo = dsn;
    env t;
    env_open(&t, &o);
    reply *r = exec_ok(&t, "SELECT host(inet_server_addr()), inet_server_port()", NULL, 0);
    cr_assert_str_eq(get_text(r, 0, 0, NULL), "127.0.0.1", "connected to %s", get_text(r, 0, 0, NULL));
    cr_assert_eq(stats(&t).connects, 1);
    cr_assert_eq(stats(&t).connect_failures, 0);
    env_close(&t);
    free(dsn);
}

/* A name that does not resolve, and resolvers that never answer:
 * test_resolve.c, with a resolver of its own (nothing leaves the machine). */

/* ==========================================================================
 * 11. Misuse and freeing from callbacks
 * ========================================================================== */

static int misuse_calls;
static void on_misuse(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) { misuse_calls++; }
static void on_misuse_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) { misuse_calls++; }

Test(engine, misuse_returns_emisuse_and_never_calls_back, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    copy_src s = {.total = 1};
    misuse_calls = 0;
    cr_assert_eq(aorm_engine_execute(NULL, "SELECT 1", NULL, NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_execute(t.e, NULL, NULL, NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_execute(t.e, "SELECT 1", NULL, NULL, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_acquire(NULL, on_misuse_conn, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_acquire(t.e, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_copy(NULL, "COPY x FROM STDIN", copy_fill, &s, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_copy(t.e, NULL, copy_fill, &s, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_copy(t.e, "COPY x FROM STDIN", NULL, &s, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_copy(t.e, "COPY x FROM STDIN", copy_fill, &s, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_execute(NULL, "SELECT 1", NULL, NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_begin(NULL, NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_commit(NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_rollback(NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_savepoint(NULL, "x", on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_copy(NULL, "COPY x FROM STDIN", copy_fill, &s, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_engine_warm(NULL), AORM_EMISUSE);
    aorm_engine_free(NULL);
    aorm_conn_release(NULL);
    aorm_result_free(NULL);
    aorm_error_free(NULL);
    aorm_engine_stats_get(NULL, NULL);
    cr_assert_null(aorm_engine_new(NULL, NULL));

    aorm_conn *c = acquire(&t);
    cr_assert_eq(aorm_conn_execute(c, NULL, NULL, NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_execute(c, "SELECT 1", NULL, NULL, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_savepoint(c, NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_rollback_to(c, NULL, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_begin(c, NULL, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_conn_copy(c, "COPY x FROM STDIN", NULL, &s, on_misuse, NULL), AORM_EMISUSE);
    cr_assert_eq(get_i64(cexec_ok(&t, c, "SELECT 3::int8", NULL, 0), 0, 0), 3, "the connection still works");
    aorm_conn_release(c);
    cr_assert_eq(get_i64(exec_ok(&t, "SELECT 4::int8", NULL, 0), 0, 0), 4, "the engine still works");
    cr_assert_eq(s.calls, 0);
    env_close(&t);
    cr_assert_eq(misuse_calls, 0, "a refused call called back");
}

typedef struct freeing {
    env *t;
    int calls;
    int ok;
    int canceled;
    int closed_rc;
    int64_t first;
} freeing;

typedef struct freeing_stmt {
    freeing *f;
    int calls;
    int code;
} freeing_stmt;

static void on_free_first(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    freeing_stmt *s = user;
    freeing *f = s->f;
    s->calls++;
    s->code = err ? err->code : 0;
    if (err && err->code == AORM_ECANCELED) f->canceled++;
    if (!err) f->ok++;
    if (++f->calls == 1) {
        cr_assert_null(err, "first statement failed: %s", err ? err->message : "");
        cr_assert_eq(aorm_result_int64(res, 0, 0, &f->first), 0);
        aorm_engine_free(e);
        f->t->e = NULL;
        /* still allocated until this callback returns, and closed */
        f->closed_rc = aorm_engine_execute(e, "SELECT 1", NULL, NULL, on_never, NULL);
        cr_assert_eq(aorm_result_nrows(res), 1, "the borrowed result went away during the callback");
    }
}

static int freeing_done(void *arg) { return ((freeing *)arg)->calls >= 5; }

Test(engine, free_from_a_statement_callback, .timeout = 60) {
    env t;
    env_open(&t, NULL);
    never_calls = 0;
    freeing f = {&t, 0, 0, 0, 0, 0};
    freeing_stmt st[5];
    for (int i = 0; i < 5; i++) {
        st[i] = (freeing_stmt){&f, 0, 0};
        char sql[64];
        snprintf(sql, sizeof(sql), "SELECT %d::int8", i);
        cr_assert_eq(aorm_engine_execute(t.e, sql, NULL, NULL, on_free_first, &st[i]), 0);
    }
    cr_assert(t_run_until_fn(t.evl, freeing_done, &f, WAIT), "%d of 5 callbacks", f.calls);
    cr_assert_null(t.e);
    cr_assert_eq(f.closed_rc, AORM_ECLOSED, "execute on a closing engine: %s", aorm_errname(f.closed_rc));
    cr_assert_eq(f.ok, 1);
    cr_assert_eq(f.canceled, 4, "%d cancelled, want 4", f.canceled);
    /* nothing of the engine is left on the loop: run it a while */
    int never = 0;
    t_run_until(t.evl, &never, 0.3);
    for (int i = 0; i < 5; i++) cr_assert_eq(st[i].calls, 1, "statement %d called back %d times", i, st[i].calls);
    cr_assert_eq(never_calls, 0);
    env_close(&t); /* aorm_loop_free asserts that no watcher is left */
}

typedef struct acq_freeing {
    env *t;
    int acq_calls;
    int acq_canceled;
    int stmt_calls;
    int stmt_canceled;
    int held_calls;
    int held_canceled;
} acq_freeing;

static void on_held_stmt_free(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    acq_freeing *f = user;
    f->held_calls++;
    if (err && err->code == AORM_ECANCELED) f->held_canceled++;
}

static void on_acq_free(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    acq_freeing *f = user;
    if (++f->acq_calls == 1) {
        cr_assert_not_null(c, "first acquire failed: %s", err ? err->message : "");
        /* a statement queued on the held connection, then free */
        cr_assert_eq(aorm_conn_execute(c, "SELECT 1", NULL, NULL, on_held_stmt_free, f), 0);
        aorm_engine_free(e);
        f->t->e = NULL;
        return;
    }
    cr_assert_null(c);
    if (err && err->code == AORM_ECANCELED) f->acq_canceled++;
}

static void on_stmt_free(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    acq_freeing *f = user;
    f->stmt_calls++;
    if (err && err->code == AORM_ECANCELED) f->stmt_canceled++;
}

static int acq_freeing_done(void *arg) {
    acq_freeing *f = arg;
    return f->acq_calls >= 2 && f->stmt_calls >= 3 && f->held_calls >= 1;
}

Test(engine, free_from_an_acquire_callback, .timeout = 60) {
    aorm_engine_options o;
    opts_init(&o);
    o.pool_size = 1;
    o.max_overflow = 0;
    env t;
    env_open(&t, &o);
    acq_freeing f = {&t, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(aorm_engine_acquire(t.e, on_acq_free, &f), 0);
    cr_assert_eq(aorm_engine_acquire(t.e, on_acq_free, &f), 0); /* waits: pool of one */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(aorm_engine_execute(t.e, "SELECT pg_sleep(0.01)", NULL, NULL, on_stmt_free, &f), 0);
    cr_assert(t_run_until_fn(t.evl, acq_freeing_done, &f, WAIT), "acquires %d, statements %d, held %d",
              f.acq_calls, f.stmt_calls, f.held_calls);
    int never = 0;
    t_run_until(t.evl, &never, 0.3); /* nothing more comes */
    cr_assert_null(t.e);
    cr_assert_eq(f.acq_calls, 2);
    cr_assert_eq(f.acq_canceled, 1);
    cr_assert_eq(f.stmt_calls, 3, "statements called back %d times, want 3", f.stmt_calls);
    cr_assert_eq(f.stmt_canceled, 3);
    cr_assert_eq(f.held_calls, 1, "the held connection's statement called back %d times", f.held_calls);
    cr_assert_eq(f.held_canceled, 1);
    env_close(&t);
}

/* ==========================================================================
 * 12. The log callback
 * ========================================================================== */

static void log_echo(bool with_params) {
    aorm_engine_options o;
    opts_init(&o);
    o.log_level = AORM_LOG_SQL;
    o.echo = true;
    o.echo_params = with_params;
    env t;
    env_open(&t, &o);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, "zebra-4711-marker");
    aorm_params_int8(&p, 987654321);
    reply *r = exec_ok(&t, "SELECT $1::text AS echo_probe, $2::int8", &p, 0);
    aorm_params_free(&p);
    cr_assert_str_eq(get_text(r, 0, 0, NULL), "zebra-4711-marker");
    cr_assert_eq(log_count(&t, AORM_LOG_SQL, NULL), 1, "%d SQL echo messages for one statement",
                 log_count(&t, AORM_LOG_SQL, NULL));
    cr_assert_eq(log_count(&t, AORM_LOG_SQL, "SELECT $1::text AS echo_probe, $2::int8"), 1,
                 "the echo does not carry the SQL text");
    if (with_params) {
        cr_assert_eq(log_count(&t, AORM_LOG_SQL, "zebra-4711-marker"), 1, "the echo lacks the text parameter");
        cr_assert_eq(log_count(&t, AORM_LOG_SQL, "987654321"), 1, "the echo lacks the int8 parameter");
    } else {
        cr_assert_eq(log_count(&t, -1, "zebra-4711-marker"), 0, "a parameter value was logged with echo_params off");
        cr_assert_eq(log_count(&t, -1, "987654321"), 0, "a parameter value was logged with echo_params off");
        cr_assert_eq(log_count(&t, AORM_LOG_SQL, "redacted"), 1, "the echo does not say the values are redacted");
    }
    for (int i = 0; i < t.nlogs; i++)
        cr_assert((int)t.logs[i].level <= AORM_LOG_SQL, "message above log_level: %s", t.logs[i].text);
    env_close(&t);
}

Test(engine, log_echo_with_parameters, .timeout = 60) { log_echo(true); }
Test(engine, log_echo_with_parameters_redacted, .timeout = 60) { log_echo(false); }

static void assert_no_secret(const env *t, const char *secret) {
    for (int i = 0; i < t->nlogs; i++)
        cr_assert(!strstr(t->logs[i].text, secret), "the password was logged: %s", t->logs[i].text);
}

Test(engine, log_never_shows_the_password, .timeout = 60) {
    /* a working connection with a password in its conninfo: the secure
     * sandbox's own (which then wins over its passfile), or any under trust */
    char secret[128] = "sekrit";
    t_sandbox_password("aorm", secret, sizeof(secret));
    char *good = conninfo_set(t_dsn(), "password", secret);
    aorm_engine_options o;
    opts_init(&o);
    o.conninfo = good;
    o.log_level = AORM_LOG_DEBUG;
    o.echo = true;
    o.echo_params = true;
    env t;
    env_open(&t, &o);
    exec_ok(&t, "SELECT 1", NULL, 0);
    cr_assert(t.nlogs >= 2, "expected connection and echo messages at DEBUG, got %d", t.nlogs);
    assert_no_secret(&t, secret);
    env_close(&t);

    /* a connection that fails (nothing listens on port 1) */
    char *bad = conninfo_set(good, "port", "1");
    opts_init(&o);
    o.conninfo = bad;
    o.pool_timeout = 0.5; /* callers wait for the pool to connect up to this */
    o.log_level = AORM_LOG_DEBUG;
    o.echo = true;
    o.echo_params = true;
    env_open(&t, &o);
    const aorm_error *err = exec_err(&t, "SELECT 1", NULL, 0);
    cr_assert_eq(err->code, AORM_ECONNECT, "%s: %s", aorm_errname(err->code), err->message);
    cr_assert(!strstr(err->message, secret) && !strstr(err->detail, secret), "the password is in the error");
    cr_assert(log_count(&t, AORM_LOG_ERROR, NULL) >= 1, "the connection failure was not logged");
    assert_no_secret(&t, secret);

    /* a conninfo that does not parse */
    char *broken = conninfo_set(good, "nosuchoption", "1");
    aorm_engine_options ob;
    opts_init(&ob);
    ob.conninfo = broken;
    ob.log = on_log;
    ob.log_user = &t;
    ob.log_level = AORM_LOG_DEBUG;
    int before = t.nlogs;
    cr_assert_null(aorm_engine_new(t.loop, &ob), "an engine from an unknown conninfo option");
    cr_assert(t.nlogs > before, "the conninfo error was not logged");
    assert_no_secret(&t, secret);
    env_close(&t);
    free(broken);
    free(bad);
    free(good);
}

/* A statement whose parameters exceed max_param_bytes is refused when it
 * is queued (its bytes would stall the loop while copied and sent); one
 * at the bound runs. */
Test(engine, max_param_bytes_bounds_a_statement, .timeout = 60) {
    misuse_calls = 0;
    aorm_engine_options o;
    opts_init(&o);
    o.max_param_bytes = (size_t)1 << 20;
    env t;
    env_open(&t, &o);
    size_t n = (size_t)1 << 20;
    char *big = malloc(n + 1);
    cr_assert_not_null(big);
    memset(big, 'x', n + 1);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_bytea(&p, big, n + 1);
    cr_assert_eq(aorm_engine_execute(t.e, "SELECT length($1::bytea)", &p, NULL, on_misuse, NULL), AORM_ERANGE);
    aorm_params_free(&p);
    aorm_params_init(&p);
    aorm_params_bytea(&p, big, n);
    reply *ok = exec_ok(&t, "SELECT length($1::bytea)", &p, 0);
    cr_assert_eq(get_i64(ok, 0, 0), (int64_t)n);
    aorm_params_free(&p);
    cr_assert_eq(misuse_calls, 0, "a refused statement was called back");
    free(big);
    env_close(&t);
}
