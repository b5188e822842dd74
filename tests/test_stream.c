/* test_stream.c -- large results in batches (aorm_conn_stream,
 * aorm_session_stream) against the sandbox PostgreSQL's reference data
 * (bench/schema.sql: books 1..100000, title 'book <id>'), read only.
 *
 * What is proved:
 *   - every row arrives once, in order, in batches of the size asked (the
 *     last one shorter or, for an exact multiple, no empty batch);
 *   - stopping mid-stream ends the stream with no error and leaves the
 *     connection and its transaction usable;
 *   - a paused stream hands nothing over until it is resumed;
 *   - a failing statement ends the stream with its error;
 *   - through the session: without release the objects are the identity
 *     map's (a get afterwards sends nothing), with release they never
 *     enter it (DETACHED) and the session's memory does not grow with the
 *     rows; freeing the session with a paused stream answers it once.
 *
 * Every test has the same timeout: Criterion 2.4.1's runner leaks under
 * --jobs when timeouts differ. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models.h"
#include "session_kit.h"
#include "support.h"

#define TIMEOUT 120

/* ---- engine level ---------------------------------------------------------------- */

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

typedef struct sres {
    int done;
    aorm_error *err;
} sres;

static void on_stmt(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    (void)res;
    sres *r = user;
    r->done++;
    if (err) r->err = aorm_error_copy(err);
}

static void stmt_ok(env *t, aorm_conn *c, const char *sql) {
    sres r = {0};
    cr_assert_eq(aorm_conn_execute(c, sql, NULL, NULL, on_stmt, &r), 0);
    cr_assert(t_run_until(t->evl, &r.done, KIT_WAIT), "%s: no answer", sql);
    cr_assert_null(r.err, "%s: %s", sql, r.err ? r.err->message : "");
}

static aorm_conn *begin_held(env *t) {
    held h = {0};
    cr_assert_eq(aorm_engine_acquire(t->e, on_conn, &h), 0);
    cr_assert(t_run_until(t->evl, &h.done, KIT_WAIT));
    stmt_ok(t, h.c, "BEGIN");
    return h.c;
}

typedef struct rows {
    int batches, ends;
    int64_t next;         /* the id expected next */
    int max_batch;
    int stop_after;       /* batches, 0: never */
    int pause_after;      /* batches, 0: never */
    int paused;
    aorm_stream *st;
    aorm_error *err;
    bool bad;             /* an id out of order */
} rows;

static int on_rows(aorm_conn *c, aorm_result *batch, const aorm_error *err, void *user) {
    (void)c;
    rows *r = user;
    if (!batch) {
        r->ends++;
        if (err) r->err = aorm_error_copy(err);
        return 0;
    }
    r->batches++;
    int n = aorm_result_nrows(batch);
    if (n > r->max_batch) r->max_batch = n;
    for (int i = 0; i < n; i++) {
        int64_t id;
        if (aorm_result_int64(batch, i, 0, &id) != 0 || id != r->next) r->bad = true;
        r->next++;
    }
    if (r->stop_after && r->batches == r->stop_after) return AORM_STREAM_STOP;
    if (r->pause_after && r->batches == r->pause_after) {
        r->paused = 1;
        return AORM_STREAM_PAUSE;
    }
    return AORM_STREAM_NEXT;
}

static int stream_books(env *t, aorm_conn *c, int64_t upto, int batch, rows *r) {
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8(&p, upto);
    r->next = 1;
    int rc = aorm_conn_stream(c, "SELECT id, title FROM books WHERE id <= $1 ORDER BY id", &p, batch, on_rows, r,
                              &r->st);
    aorm_params_free(&p);
    (void)t;
    return rc;
}

Test(stream, every_row_in_order, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_conn *c = begin_held(&t);
    rows r = {0};
    cr_assert_eq(stream_books(&t, c, 25000, 1000, &r), 0);
    cr_assert_eq(r.batches, 0, "no batch inside the call");
    cr_assert(t_run_until(t.evl, &r.ends, KIT_WAIT));
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    cr_assert(!r.bad);
    cr_assert_eq(r.next, 25001);
    cr_assert_eq(r.batches, 25, "an exact multiple: no empty batch (%d)", r.batches);
    cr_assert_eq(r.max_batch, 1000);
    rows q = {0};
    cr_assert_eq(stream_books(&t, c, 2500, 1000, &q), 0);
    cr_assert(t_run_until(t.evl, &q.ends, KIT_WAIT));
    cr_assert_eq(q.batches, 3);
    cr_assert_eq(q.next, 2501);
    stmt_ok(&t, c, "COMMIT");
    aorm_conn_release(c);
    env_close(&t);
}

Test(stream, stop_leaves_the_connection_usable, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_conn *c = begin_held(&t);
    rows r = {.stop_after = 3};
    cr_assert_eq(stream_books(&t, c, 100000, 500, &r), 0);
    cr_assert(t_run_until(t.evl, &r.ends, KIT_WAIT));
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    cr_assert_eq(r.batches, 3);
    cr_assert_eq(r.next, 1501);
    stmt_ok(&t, c, "SELECT 1");
    cr_assert_eq(aorm_conn_tx_status(c), AORM_TX_INTRANS);
    /* a second stream on the same connection */
    rows q = {0};
    cr_assert_eq(stream_books(&t, c, 1200, 500, &q), 0);
    cr_assert(t_run_until(t.evl, &q.ends, KIT_WAIT));
    cr_assert_eq(q.next, 1201);
    stmt_ok(&t, c, "COMMIT");
    aorm_conn_release(c);
    env_close(&t);
}

Test(stream, pause_then_resume, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_conn *c = begin_held(&t);
    rows r = {.pause_after = 2};
    cr_assert_eq(stream_books(&t, c, 10000, 1000, &r), 0);
    cr_assert(t_run_until(t.evl, &r.paused, KIT_WAIT));
    settle(&t);
    cr_assert_eq(r.batches, 2, "nothing handed over while paused");
    cr_assert_eq(r.ends, 0);
    cr_assert_eq(aorm_stream_resume(r.st), 0);
    cr_assert_eq(r.batches, 2, "not from inside resume");
    cr_assert_eq(aorm_stream_resume(r.st), AORM_EMISUSE, "not paused any more");
    cr_assert(t_run_until(t.evl, &r.ends, KIT_WAIT));
    cr_assert_eq(r.batches, 10);
    cr_assert_eq(r.next, 10001);
    cr_assert(!r.bad);
    stmt_ok(&t, c, "COMMIT");
    aorm_conn_release(c);
    env_close(&t);
}

Test(stream, failing_statement_ends_with_its_error, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_conn *c = begin_held(&t);
    rows r = {0};
    cr_assert_eq(aorm_conn_stream(c, "SELECT id FROM no_such_table_here", NULL, 100, on_rows, &r, NULL), 0);
    cr_assert(t_run_until(t.evl, &r.ends, KIT_WAIT));
    cr_assert_eq(r.ends, 1);
    cr_assert_eq(r.batches, 0);
    cr_assert_not_null(r.err);
    cr_assert(aorm_error_is(r.err, "42P01"), "%s", r.err->sqlstate);
    cr_assert_eq(aorm_conn_stream(c, "SELECT 1", NULL, 0, on_rows, &r, NULL), AORM_EMISUSE);
    stmt_ok(&t, c, "ROLLBACK");
    aorm_conn_release(c);
    aorm_error_free(r.err);
    env_close(&t);
}

/* ---- session level ---------------------------------------------------------------- */

typedef struct objs_run {
    aorm_session *s;
    int batches, ends;
    int64_t next;
    int detached;        /* objects whose state is DETACHED */
    int pause_after;
    int paused;
    bool free_on_pause;
    aorm_error *err;
    bool bad;
} objs_run;

static int on_objs(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    objs_run *r = user;
    if (!objs) {
        r->ends++;
        if (err) r->err = aorm_error_copy(err);
        return 0;
    }
    r->batches++;
    for (size_t i = 0; i < objs->len; i++) {
        book *b = objs->items[i];
        char title[32];
        snprintf(title, sizeof(title), "book %" PRId64, r->next);
        if (!b || b->id != r->next || !b->title || strcmp(b->title, title) != 0) r->bad = true;
        if (aorm_object_state_of(s, b) == AORM_DETACHED) r->detached++;
        r->next++;
    }
    if (r->pause_after && r->batches == r->pause_after) {
        r->paused = 1;
        return AORM_STREAM_PAUSE;
    }
    return AORM_STREAM_NEXT;
}

static aorm_stmt *books_upto(int64_t n) {
    aorm_stmt *q = aorm_select(&book_model);
    aorm_where(q, aorm_le(AORM_COL(book, id), aorm_int8(n)));
    aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
    return q;
}

static void on_obj(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    (void)s;
    (void)err;
    *(void **)user = obj;
}

Test(stream, session_objects_through_the_identity_map, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    objs_run r = {.s = s, .next = 1};
    aorm_stream_options o;
    aorm_stream_options_init(&o);
    o.batch = 700;
    cr_assert_eq(aorm_session_stream(s, books_upto(5000), &o, on_objs, &r), 0);
    cr_assert(t_run_until(t.evl, &r.ends, KIT_WAIT));
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    cr_assert(!r.bad);
    cr_assert_eq(r.next, 5001);
    cr_assert_eq(r.batches, 8);
    cr_assert_eq(r.detached, 0);
    cr_assert(aorm_session_in_transaction(s), "the cursor's transaction");
    mark m0 = mark_now(&t, s);
    void *got = NULL;
    cr_assert_eq(aorm_session_get(s, &book_model, &(book){.id = 4321}, NULL, on_obj, &got), 0);
    settle(&t);
    mark m1 = mark_now(&t, s);
    cr_assert_not_null(got);
    cr_assert_eq(m1.statements, m0.statements, "answered by the identity map");
    session_commit(&t, s);
    aorm_session_free(s);
    env_close(&t);
}

Test(stream, session_release_constant_memory, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    objs_run r = {.s = s, .next = 1};
    aorm_stream_options o;
    aorm_stream_options_init(&o);
    o.batch = 2000;
    o.release = true;
    cr_assert_eq(aorm_session_stream(s, books_upto(100000), &o, on_objs, &r), 0);
    cr_assert(t_run_until(t.evl, &r.ends, KIT_WAIT));
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    cr_assert(!r.bad);
    cr_assert_eq(r.next, 100001);
    cr_assert_eq(r.detached, 100000, "released objects are not the session's");
    /* none of them is in the identity map: a get sends its statement */
    mark m0 = mark_now(&t, s);
    void *got = NULL;
    cr_assert_eq(aorm_session_get(s, &book_model, &(book){.id = 777}, NULL, on_obj, &got), 0);
    for (int i = 0; i < 100 && !got; i++) settle(&t);
    mark m1 = mark_now(&t, s);
    cr_assert_not_null(got);
    cr_assert_eq(m1.statements - m0.statements, 1);
    session_rollback(&t, s);
    aorm_session_free(s);
    env_close(&t);
}

Test(stream, free_session_while_paused, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    objs_run r = {.s = s, .next = 1, .pause_after = 1};
    aorm_stream_options o;
    aorm_stream_options_init(&o);
    o.batch = 100;
    cr_assert_eq(aorm_session_stream(s, books_upto(1000), &o, on_objs, &r), 0);
    cr_assert(t_run_until(t.evl, &r.paused, KIT_WAIT));
    settle(&t);
    cr_assert_eq(r.batches, 1);
    aorm_session_free(s);
    settle(&t);
    cr_assert_eq(r.ends, 1, "the stream is answered once");
    cr_assert_not_null(r.err);
    cr_assert_eq(r.err->code, AORM_ECANCELED);
    aorm_error_free(r.err);
    env_close(&t);
}
