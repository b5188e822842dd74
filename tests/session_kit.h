/* session_kit.h -- what the session-level suites (loaders, composite keys)
 * share: a loop and an engine with its SQL echo recorded, the engine's and
 * the session's counters as marks, and session operations run to
 * completion with their callbacks counted (a second callback fails the
 * test). */
#ifndef AORM_TEST_SESSION_KIT_H
#define AORM_TEST_SESSION_KIT_H

#include <stdbool.h>
#include <stdint.h>

#include "aorm/aorm.h"
#include "aorm/loaders.h"
#include "support.h"

/* How long an operation may take before the test fails. */
#define KIT_WAIT 60.0

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    char **sql; /* AORM_LOG_SQL messages (echo), in arrival order */
    int nsql;
} env;

/* Counters at one point in time. */
typedef struct mark {
    uint64_t statements;  /* engine */
    uint64_t round_trips; /* engine */
    uint64_t session;     /* aorm_session_statements */
} mark;

typedef struct qres {
    int done;      /* callbacks received */
    void **items;  /* copy of the objects array (the objects belong to the session) */
    size_t len;
    aorm_error *err;
} qres;

typedef struct dres {
    int done;
    aorm_error *err;
} dres;

/* A private loop and engine; with echo, every statement's SQL (and its
 * parameters) is recorded in t->sql. */
void env_open(env *t, bool echo);
void env_close(env *t);
void echo_clear(env *t);
/* Echoed statements containing needle. */
int echo_count(const env *t, const char *needle);
aorm_session *session_new(env *t);
/* Runs the loop 0.1 s more: a late second callback or a hidden statement
 * shows up in the counters after this. */
void settle(env *t);

/* The engine's statements and round trips and the session's statements
 * now; expect_cost asserts the deltas between two marks. */
mark mark_now(env *t, aorm_session *s);
void expect_cost(const mark *a, const mark *b, uint64_t statements, uint64_t round_trips, const char *what);

/* Runs the loop until *done, then settles and asserts one callback. */
void wait_done(env *t, int *done, const char *what);

/* Queries (q is consumed) with a load plan, to completion: query() leaves
 * the outcome in *r, query_ok() asserts success. */
void on_objects(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user);
void qres_free(qres *r);
void query(env *t, aorm_session *s, aorm_stmt *q, const aorm_load_plan *plan, qres *r);
void query_ok(env *t, aorm_session *s, aorm_stmt *q, const aorm_load_plan *plan, qres *r);

/* Session operations to completion, asserting success. */
void on_done(aorm_session *s, const aorm_error *err, void *user);
void expect_done_ok(env *t, dres *r, const char *what);
void session_flush(env *t, aorm_session *s);
void session_commit(env *t, aorm_session *s);
void session_rollback(env *t, aorm_session *s);
/* aorm_session_load of objs along plan. */
void load(env *t, aorm_session *s, void *const *objs, size_t n, const aorm_load_plan *plan);

#endif
