/* session_kit.c -- see session_kit.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_kit.h"

static void on_log(aorm_log_level level, const char *message, void *user) {
    env *t = user;
    if (level != AORM_LOG_SQL) return;
    char **n = realloc(t->sql, (size_t)(t->nsql + 1) * sizeof(*n));
    if (!n) return;
    t->sql = n;
    t->sql[t->nsql] = strdup(message);
    if (t->sql[t->nsql]) t->nsql++;
}

void echo_clear(env *t) {
    for (int i = 0; i < t->nsql; i++) free(t->sql[i]);
    free(t->sql);
    t->sql = NULL;
    t->nsql = 0;
}

void env_open(env *t, bool echo) {
    memset(t, 0, sizeof(*t));
    t_loop_open(&t->evl, &t->loop);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.log = on_log;
    o.log_user = t;
    if (echo) {
        o.echo = true;
        o.echo_params = true;
        o.log_level = AORM_LOG_SQL;
    }
    t->e = t_engine(t->loop, &o);
}

void env_close(env *t) {
    aorm_engine_free(t->e);
    t_loop_close(&t->evl, &t->loop);
    echo_clear(t);
}

aorm_session *session_new(env *t) {
    aorm_session *s = aorm_session_new(t->e, NULL);
    cr_assert_not_null(s);
    return s;
}

/* Runs the loop a little longer: a second (wrong) callback or a hidden
 * statement would show up in the counters after this. */
void settle(env *t) { t_settle(t->evl, 0.1); }


mark mark_now(env *t, aorm_session *s) {
    aorm_engine_stats st = t_stats(t->e);
    return (mark){st.statements, st.round_trips, s ? aorm_session_statements(s) : 0};
}

/* Asserts the deltas between two marks. */
void expect_cost(const mark *a, const mark *b, uint64_t statements, uint64_t round_trips,
                        const char *what) {
    cr_assert_eq(b->session - a->session, statements, "%s: the session sent %llu statements, expected %llu", what,
                 (unsigned long long)(b->session - a->session), (unsigned long long)statements);
    cr_assert_eq(b->statements - a->statements, statements, "%s: the engine sent %llu statements, expected %llu",
                 what, (unsigned long long)(b->statements - a->statements), (unsigned long long)statements);
    cr_assert_eq(b->round_trips - a->round_trips, round_trips, "%s: %llu round trips, expected %llu", what,
                 (unsigned long long)(b->round_trips - a->round_trips), (unsigned long long)round_trips);
}

/* ==========================================================================
 * Running session operations to completion
 * ========================================================================== */


void on_objects(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    (void)s;
    qres *r = user;
    r->done++;
    if (err) {
        r->err = aorm_error_copy(err);
        return;
    }
    r->len = objs->len;
    r->items = malloc((objs->len + 1) * sizeof(void *));
    if (r->items && objs->len) memcpy(r->items, objs->items, objs->len * sizeof(void *));
}

void qres_free(qres *r) {
    free(r->items);
    aorm_error_free(r->err);
    memset(r, 0, sizeof(*r));
}

void wait_done(env *t, int *done, const char *what) {
    cr_assert(t_run_until(t->evl, done, KIT_WAIT), "%s: no answer within %.0f s", what, KIT_WAIT);
    settle(t);
    cr_assert_eq(*done, 1, "%s: the callback ran %d times", what, *done);
}

/* Queues q (consumed) with plan on s and runs the loop until it answers,
 * exactly once. The outcome (objects or error) is in *r. */
void query(env *t, aorm_session *s, aorm_stmt *q, const aorm_load_plan *plan, qres *r) {
    memset(r, 0, sizeof(*r));
    aorm_query_options qo = {.load = plan};
    int rc = aorm_session_query(s, q, &qo, on_objects, r);
    cr_assert_eq(rc, 0, "aorm_session_query: %s", aorm_errname(rc));
    wait_done(t, &r->done, "query");
}

/* The same, asserting success. */
void query_ok(env *t, aorm_session *s, aorm_stmt *q, const aorm_load_plan *plan, qres *r) {
    query(t, s, q, plan, r);
    cr_assert_null(r->err, "query failed: %s %s: %s", r->err ? aorm_errname(r->err->code) : "",
                   r->err ? r->err->sqlstate : "", r->err ? r->err->message : "");
}


void on_done(aorm_session *s, const aorm_error *err, void *user) {
    (void)s;
    dres *r = user;
    r->done++;
    if (err) r->err = aorm_error_copy(err);
}

void expect_done_ok(env *t, dres *r, const char *what) {
    wait_done(t, &r->done, what);
    cr_assert_null(r->err, "%s failed: %s %s: %s", what, r->err ? aorm_errname(r->err->code) : "",
                   r->err ? r->err->sqlstate : "", r->err ? r->err->message : "");
}

void session_flush(env *t, aorm_session *s) {
    dres r = {0};
    cr_assert_eq(aorm_session_flush(s, on_done, &r), 0);
    expect_done_ok(t, &r, "flush");
}

void session_rollback(env *t, aorm_session *s) {
    dres r = {0};
    cr_assert_eq(aorm_session_rollback(s, on_done, &r), 0);
    expect_done_ok(t, &r, "rollback");
}

void load(env *t, aorm_session *s, void *const *objs, size_t n, const aorm_load_plan *plan) {
    dres d = {0};
    int rc = aorm_session_load(s, objs, n, plan, on_done, &d);
    cr_assert_eq(rc, 0, "aorm_session_load: %s", aorm_errname(rc));
    expect_done_ok(t, &d, "load");
}

void session_commit(env *t, aorm_session *s) {
    dres r = {0};
    cr_assert_eq(aorm_session_commit(s, on_done, &r), 0);
    expect_done_ok(t, &r, "commit");
    aorm_error_free(r.err);
}

int echo_count(const env *t, const char *needle) {
    int n = 0;
    for (int i = 0; i < t->nsql; i++)
        if (strstr(t->sql[i], needle)) n++;
    return n;
}
