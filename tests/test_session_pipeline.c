/* test_session_pipeline.c -- a session's round trips: what it queues in
 * one loop turn goes out in one pipeline write, against the sandbox
 * PostgreSQL (reference data of bench/schema.sql, read only).
 *
 * What is proved, with the engine's counters (statements, round trips)
 * as deltas and the SQL echo:
 *   - a single-row INSERT in a lazy transaction is BEGIN + INSERT ...
 *     RETURNING in one write, then COMMIT: 3 statements, 2 round trips,
 *     no nextval;
 *   - statements queued in one turn inside a transaction, COMMIT
 *     included, cost one round trip, and their callbacks run in order;
 *   - after a failed statement the ones pipelined behind it fail with
 *     AORM_ETXSTATE (rollback required), the COMMIT too, and a rollback
 *     leaves nothing of the transaction;
 *   - autocommit reads queued in one turn are all sent before the first
 *     one answers, and answer in order;
 *   - gets of one model queued in one turn are one `= ANY` statement,
 *     each answered with its own object (NULL for a missing row, the same
 *     object for the same key);
 *   - aorm_session_run_transaction sends BEGIN with its first step;
 *   - freeing the session or the engine from the first callback answers
 *     every operation started behind it once, with a cancellation.
 *
 * Isolation: this file's table (ppl_notes) is created with IF NOT EXISTS
 * under an advisory lock; each test works on rows it inserted itself,
 * marked with its name and the process id.
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
#include "session_kit.h"
#include "support.h"

#define TIMEOUT 120

typedef struct ppl_note {
    int64_t id;
    char *tag;
    int32_t n;
} ppl_note;

extern const aorm_model ppl_note_model;

static const aorm_column ppl_note_columns[] = {
    AORM_COLUMN(ppl_note, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(ppl_note, tag, AORM_TEXT, 0),
    AORM_COLUMN(ppl_note, n, AORM_INT4, 0),
};
const aorm_model ppl_note_model = {
    AORM_MODEL_OF(ppl_note, "ppl_notes"),
    AORM_COLUMNS(ppl_note_columns),
};

static void ensure_table(PGconn *pg) {
    free(t_pg_exec(pg, "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74312);"
                       "CREATE TABLE IF NOT EXISTS ppl_notes (id bigserial PRIMARY KEY, tag text NOT NULL, "
                       "  n int NOT NULL);"
                       "COMMIT"));
}

/* A tag for this test's rows: its name and the process id. */
static const char *tag_of(const char *name) {
    static char buf[96];
    snprintf(buf, sizeof(buf), "%s-%ld", name, (long)getpid());
    return buf;
}

/* Inserts a row with (tag, n) through libpq; returns its id. */
static int64_t insert_row(PGconn *pg, const char *mark_tag, int n) {
    char sql[256];
    snprintf(sql, sizeof(sql), "INSERT INTO ppl_notes(tag, n) VALUES ('%s', %d) RETURNING id", mark_tag, n);
    return t_pg_long(pg, sql);
}

static long row_n(PGconn *pg, int64_t id) {
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT n FROM ppl_notes WHERE id = %" PRId64, id);
    return t_pg_long(pg, sql);
}

/* ---- callbacks that record their order ------------------------------------------- */

#define MAXCB 64

typedef struct order {
    env *t;
    int seq[MAXCB];       /* which slot answered, in answer order */
    int n;
    int code[MAXCB];      /* per slot: 0 or the error code */
    int done[MAXCB];      /* per slot: callbacks */
    void *obj[MAXCB];     /* per slot: the object (gets) */
    int64_t val[MAXCB];   /* per slot: first value of the result (executes), or -1 */
    uint64_t sent_at_first; /* engine statements when the first callback ran */
    aorm_session *free_session; /* freed from the first callback when set */
    bool free_engine;           /* the engine freed from the first callback */
} order;

typedef struct slot {
    order *o;
    int i;
} slot;

static void record(slot *sl, const aorm_error *err) {
    order *o = sl->o;
    if (o->n == 0) {
        aorm_engine_stats st;
        if (o->t->e) {
            aorm_engine_stats_get(o->t->e, &st);
            o->sent_at_first = st.statements;
        }
    }
    o->seq[o->n++] = sl->i;
    o->done[sl->i]++;
    o->code[sl->i] = err ? err->code : 0;
    if (o->n == 1 && o->free_session) {
        aorm_session *s = o->free_session;
        o->free_session = NULL;
        aorm_session_free(s);
    }
    if (o->n == 1 && o->free_engine) {
        o->free_engine = false;
        aorm_engine_free(o->t->e);
        o->t->e = NULL;
    }
}

static void on_slot_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) {
    (void)s;
    slot *sl = user;
    sl->o->val[sl->i] = -1;
    if (!err && aorm_result_nrows(res) > 0) {
        int64_t v;
        if (aorm_result_int64(res, 0, 0, &v) == 0) sl->o->val[sl->i] = v;
    }
    record(sl, err);
}

static void on_slot_obj(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    (void)s;
    slot *sl = user;
    sl->o->obj[sl->i] = obj;
    record(sl, err);
}

static void on_slot_objs(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    (void)s;
    slot *sl = user;
    sl->o->obj[sl->i] = !err && objs->len > 0 ? objs->items[0] : NULL;
    record(sl, err);
}

static void on_slot_done(aorm_session *s, const aorm_error *err, void *user) {
    (void)s;
    record(user, err);
}

static void init_order(order *o, env *t, slot *slots) {
    memset(o, 0, sizeof(*o));
    o->t = t;
    for (int i = 0; i < MAXCB; i++) slots[i] = (slot){o, i};
}

static void wait_n(env *t, order *o, int n, const char *what) {
    for (int k = 0; k < 600 && o->n < n; k++) t_run_until(t->evl, &o->n, 0.1);
    cr_assert_geq(o->n, n, "%s: %d of %d callbacks", what, o->n, n);
    settle(t);
    cr_assert_eq(o->n, n, "%s: %d callbacks, expected %d", what, o->n, n);
    for (int i = 0; i < n; i++) cr_assert_eq(o->seq[i], i, "%s: callback %d answered in place %d", what, o->seq[i], i);
}

/* UPDATE ppl_notes SET n = n + d WHERE id = id RETURNING n */
static aorm_stmt *bump(int64_t id, int d) {
    aorm_stmt *q = aorm_update(&ppl_note_model);
    aorm_set(q, AORM_COL(ppl_note, n), aorm_add(AORM_COL(ppl_note, n), aorm_int4(d)));
    aorm_where(q, aorm_eq(AORM_COL(ppl_note, id), aorm_int8(id)));
    aorm_returning(q, AORM_COL(ppl_note, n));
    return q;
}

/* SELECT n FROM ppl_notes WHERE id = id */
static aorm_stmt *read_n(int64_t id) {
    aorm_stmt *q = aorm_select_exprs((const aorm_expr *[]){AORM_COL(ppl_note, n)}, 1);
    aorm_from(q, &ppl_note_model);
    aorm_where(q, aorm_eq(AORM_COL(ppl_note, id), aorm_int8(id)));
    return q;
}

/* ==========================================================================
 * a single-row INSERT: BEGIN + INSERT ... RETURNING, then COMMIT
 * ========================================================================== */

Test(session_pipeline, single_insert_two_round_trips, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    ensure_table(pg);
    env t;
    env_open(&t, true);
    aorm_session *s = session_new(&t);
    ppl_note *n = aorm_session_new_object(s, &ppl_note_model);
    n->tag = (char *)tag_of("single_insert");
    n->n = 7;
    cr_assert_eq(aorm_session_add(s, n), 0);
    echo_clear(&t);
    mark m0 = mark_now(&t, s);
    session_commit(&t, s);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 3, 2, "one new row, committed");
    cr_assert_eq(t.nsql, 3, "%d statements echoed", t.nsql);
    cr_assert(strstr(t.sql[0], "BEGIN"), "first: %s", t.sql[0]);
    cr_assert(strstr(t.sql[1], "INSERT INTO \"ppl_notes\"") && strstr(t.sql[1], "RETURNING"), "second: %s",
              t.sql[1]);
    cr_assert(strstr(t.sql[2], "COMMIT"), "third: %s", t.sql[2]);
    cr_assert_eq(echo_count(&t, "nextval"), 0, "no key prefetch");
    cr_assert_gt(n->id, 0, "the generated key is read back");
    cr_assert_eq(row_n(pg, n->id), 7);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* ==========================================================================
 * a transaction queued in one turn: one round trip
 * ========================================================================== */

Test(session_pipeline, transaction_in_one_round_trip, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    ensure_table(pg);
    const char *rows_tag = tag_of("one_round_trip");
    int64_t a = insert_row(pg, rows_tag, 10), b = insert_row(pg, rows_tag, 20);
    env t;
    env_open(&t, true);
    aorm_session *s = session_new(&t);
    order o;
    slot sl[MAXCB];
    init_order(&o, &t, sl);
    /* warm the pool: connecting is no round trip of the transaction's */
    cr_assert_eq(aorm_session_execute(s, read_n(a), on_slot_rows, &sl[0]), 0);
    wait_n(&t, &o, 1, "warm-up");
    init_order(&o, &t, sl);
    echo_clear(&t);
    mark m0 = mark_now(&t, s);
    cr_assert_eq(aorm_session_execute(s, bump(a, 1), on_slot_rows, &sl[0]), 0);
    cr_assert_eq(aorm_session_execute(s, read_n(a), on_slot_rows, &sl[1]), 0);
    cr_assert_eq(aorm_session_execute(s, bump(b, 5), on_slot_rows, &sl[2]), 0);
    cr_assert_eq(aorm_session_execute(s, read_n(b), on_slot_rows, &sl[3]), 0);
    cr_assert_eq(aorm_session_commit(s, on_slot_done, &sl[4]), 0);
    wait_n(&t, &o, 5, "transaction");
    mark m1 = mark_now(&t, s);
    for (int i = 0; i < 5; i++) cr_assert_eq(o.code[i], 0, "operation %d failed: %d", i, o.code[i]);
    cr_assert_eq(o.val[0], 11);
    cr_assert_eq(o.val[1], 11);
    cr_assert_eq(o.val[2], 25);
    cr_assert_eq(o.val[3], 25);
    /* BEGIN, four statements, COMMIT */
    expect_cost(&m0, &m1, 6, 1, "a transaction queued in one turn");
    cr_assert(strstr(t.sql[0], "BEGIN") && strstr(t.sql[5], "COMMIT"), "%s ... %s", t.sql[0], t.sql[5]);
    cr_assert(!aorm_session_in_transaction(s));
    cr_assert_eq(row_n(pg, a), 11);
    cr_assert_eq(row_n(pg, b), 25);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

Test(session_pipeline, failure_fails_the_rest, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    ensure_table(pg);
    const char *rows_tag = tag_of("failure");
    int64_t a = insert_row(pg, rows_tag, 1);
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    order o;
    slot sl[MAXCB];
    init_order(&o, &t, sl);
    cr_assert_eq(aorm_session_execute(s, bump(a, 1), on_slot_rows, &sl[0]), 0);
    /* a NOT NULL violation */
    aorm_stmt *bad = aorm_update(&ppl_note_model);
    aorm_set(bad, AORM_COL(ppl_note, tag), aorm_null(AORM_TEXT));
    aorm_where(bad, aorm_eq(AORM_COL(ppl_note, id), aorm_int8(a)));
    cr_assert_eq(aorm_session_execute(s, bad, on_slot_rows, &sl[1]), 0);
    cr_assert_eq(aorm_session_execute(s, bump(a, 100), on_slot_rows, &sl[2]), 0);
    cr_assert_eq(aorm_session_get(s, &ppl_note_model, &(ppl_note){.id = a}, NULL, on_slot_obj, &sl[3]), 0);
    cr_assert_eq(aorm_session_commit(s, on_slot_done, &sl[4]), 0);
    wait_n(&t, &o, 5, "failing transaction");
    cr_assert_eq(o.code[0], 0);
    cr_assert_eq(o.code[1], AORM_ESERVER, "the failing statement reports its own error: %d", o.code[1]);
    for (int i = 2; i < 5; i++) cr_assert_eq(o.code[i], AORM_ETXSTATE, "operation %d: %d", i, o.code[i]);
    cr_assert(aorm_session_rollback_required(s));
    dres r = {0};
    cr_assert_eq(aorm_session_rollback(s, on_done, &r), 0);
    expect_done_ok(&t, &r, "rollback");
    cr_assert(!aorm_session_rollback_required(s));
    cr_assert_eq(row_n(pg, a), 1, "nothing of the transaction is left");
    /* the session works again */
    init_order(&o, &t, sl);
    cr_assert_eq(aorm_session_execute(s, bump(a, 2), on_slot_rows, &sl[0]), 0);
    cr_assert_eq(aorm_session_commit(s, on_slot_done, &sl[1]), 0);
    wait_n(&t, &o, 2, "next transaction");
    cr_assert_eq(o.code[0], 0);
    cr_assert_eq(o.code[1], 0);
    cr_assert_eq(row_n(pg, a), 3);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* ==========================================================================
 * autocommit reads and merged gets
 * ========================================================================== */

Test(session_pipeline, autocommit_reads_sent_together, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    order o;
    slot sl[MAXCB];
    init_order(&o, &t, sl);
    cr_assert_eq(aorm_engine_warm(t.e), 0);
    aorm_engine_stats st0;
    aorm_engine_stats_get(t.e, &st0);
    for (int i = 0; i < 4; i++) {
        aorm_stmt *q = aorm_select(&book_model);
        aorm_where(q, aorm_eq(AORM_COL(book, id), aorm_int8(100 + i)));
        cr_assert_eq(aorm_session_query(s, q, NULL, on_slot_objs, &sl[i]), 0);
    }
    cr_assert_eq(aorm_session_get(s, &tag_model, &(tag){.id = 3}, NULL, on_slot_obj, &sl[4]), 0);
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 9}, NULL, on_slot_obj, &sl[5]), 0);
    wait_n(&t, &o, 6, "reads");
    cr_assert_eq(o.sent_at_first - st0.statements, 6, "every read was out before the first answer (%" PRIu64 ")",
                 o.sent_at_first - st0.statements);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(o.code[i], 0);
        cr_assert_eq(((book *)o.obj[i])->id, 100 + i);
    }
    cr_assert_eq(((tag *)o.obj[4])->id, 3);
    cr_assert_eq(((author *)o.obj[5])->id, 9);
    aorm_session_free(s);
    env_close(&t);
}

Test(session_pipeline, gets_same_turn_one_statement, .timeout = TIMEOUT) {
    env t;
    env_open(&t, true);
    aorm_session *s = session_new(&t);
    order o;
    slot sl[MAXCB];
    init_order(&o, &t, sl);
    /* author 17 first, so that one get is answered by the identity map */
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 17}, NULL, on_slot_obj, &sl[0]), 0);
    wait_n(&t, &o, 1, "first get");
    author *a17 = o.obj[0];
    init_order(&o, &t, sl);
    echo_clear(&t);
    mark m0 = mark_now(&t, s);
    int64_t ids[24];
    for (int i = 0; i < 20; i++) ids[i] = 1 + i * 37;
    ids[20] = 17;      /* in the map */
    ids[21] = 999999;  /* no such row */
    ids[22] = 38;      /* twice */
    ids[23] = 5000;
    for (int i = 0; i < 24; i++)
        cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = ids[i]}, NULL, on_slot_obj, &sl[i]), 0);
    wait_n(&t, &o, 24, "24 gets");
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "24 gets queued in one turn");
    cr_assert_eq(t.nsql, 1);
    cr_assert(strstr(t.sql[0], "= ANY($1)"), "%s", t.sql[0]);
    for (int i = 0; i < 24; i++) {
        cr_assert_eq(o.code[i], 0);
        if (ids[i] == 999999) {
            cr_assert_null(o.obj[i]);
            continue;
        }
        author *a = o.obj[i];
        cr_assert_not_null(a, "get %d (id %" PRId64 ")", i, ids[i]);
        cr_assert_eq(a->id, ids[i]);
        char name[32];
        snprintf(name, sizeof(name), "author %" PRId64, ids[i]);
        cr_assert_str_eq(a->name, name);
    }
    cr_assert_eq(o.obj[20], a17, "the identity map's object");
    cr_assert_eq(o.obj[22], o.obj[1], "one object per row");
    /* a get of another model behind them is a statement of its own */
    init_order(&o, &t, sl);
    m0 = mark_now(&t, s);
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 7001}, NULL, on_slot_obj, &sl[0]), 0);
    cr_assert_eq(aorm_session_get(s, &book_model, &(book){.id = 7001}, NULL, on_slot_obj, &sl[1]), 0);
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 7002}, NULL, on_slot_obj, &sl[2]), 0);
    wait_n(&t, &o, 3, "mixed gets");
    m1 = mark_now(&t, s);
    cr_assert_eq(m1.statements - m0.statements, 3);
    cr_assert_eq(((author *)o.obj[0])->id, 7001);
    cr_assert_eq(((book *)o.obj[1])->id, 7001);
    cr_assert_eq(((author *)o.obj[2])->id, 7002);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * run_transaction: BEGIN goes with the first step
 * ========================================================================== */

typedef struct rt_ctx {
    dres r; /* first: on_done reads it */
    int64_t id;
    int64_t seen;
} rt_ctx;

static int rt_bump(aorm_chain *c, void *u) {
    rt_ctx *x = u;
    return aorm_chain_execute(c, bump(x->id, 3));
}

static int rt_read(aorm_chain *c, void *u) {
    rt_ctx *x = u;
    return aorm_chain_execute(c, read_n(x->id));
}

static int rt_check(aorm_chain *c, void *u) {
    rt_ctx *x = u;
    aorm_result *r = aorm_chain_result(c);
    if (!r) return aorm_chain_fail(c, AORM_EMISUSE, "no result");
    int rc = aorm_result_int64(r, 0, 0, &x->seen);
    return rc == 0 ? 0 : aorm_chain_fail(c, rc, "no value");
}

Test(session_pipeline, run_transaction_begin_with_first_step, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    ensure_table(pg);
    rt_ctx x = {.id = insert_row(pg, tag_of("run_transaction"), 40)};
    env t;
    env_open(&t, true);
    aorm_session *s = session_new(&t);
    order o;
    slot sl[MAXCB];
    init_order(&o, &t, sl);
    cr_assert_eq(aorm_session_execute(s, read_n(x.id), on_slot_rows, &sl[0]), 0); /* connects */
    wait_n(&t, &o, 1, "warm-up");
    echo_clear(&t);
    mark m0 = mark_now(&t, s);
    cr_assert_eq(aorm_session_run_transaction(s, NULL, 1, AORM_STEPS(rt_bump, rt_read, rt_check), on_done, &x), 0);
    expect_done_ok(&t, &x.r, "run_transaction");
    mark m1 = mark_now(&t, s);
    /* BEGIN + UPDATE, SELECT, COMMIT */
    expect_cost(&m0, &m1, 4, 3, "two steps and the commit");
    cr_assert_eq(x.seen, 43);
    cr_assert(strstr(t.sql[0], "BEGIN") && strstr(t.sql[1], "UPDATE"), "%s / %s", t.sql[0], t.sql[1]);
    cr_assert_eq(row_n(pg, x.id), 43);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* ==========================================================================
 * closing with operations started ahead
 * ========================================================================== */

static void close_from_first_callback(bool engine) {
    PGconn *pg = t_pg();
    ensure_table(pg);
    const char *rows_tag = tag_of(engine ? "close_engine" : "close_session");
    int64_t a = insert_row(pg, rows_tag, 5);
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    order o;
    slot sl[MAXCB];
    init_order(&o, &t, sl);
    if (engine) o.free_engine = true;
    else o.free_session = s;
    cr_assert_eq(aorm_session_execute(s, bump(a, 1), on_slot_rows, &sl[0]), 0);
    cr_assert_eq(aorm_session_execute(s, read_n(a), on_slot_rows, &sl[1]), 0);
    cr_assert_eq(aorm_session_get(s, &ppl_note_model, &(ppl_note){.id = a}, NULL, on_slot_obj, &sl[2]), 0);
    cr_assert_eq(aorm_session_execute(s, bump(a, 1), on_slot_rows, &sl[3]), 0);
    cr_assert_eq(aorm_session_commit(s, on_slot_done, &sl[4]), 0);
    wait_n(&t, &o, 5, "closed from the first callback");
    cr_assert_eq(o.code[0], 0);
    for (int i = 1; i < 4; i++)
        cr_assert_eq(o.code[i], AORM_ECANCELED, "operation %d: %d (all: %d %d %d %d %d)", i, o.code[i], o.code[0],
                     o.code[1], o.code[2], o.code[3], o.code[4]);
    cr_assert(o.code[4] == AORM_EUNKNOWN_OUTCOME || o.code[4] == AORM_ECANCELED, "commit: %d", o.code[4]);
    for (int i = 0; i < 5; i++) cr_assert_eq(o.done[i], 1);
    if (engine) aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

Test(session_pipeline, free_session_with_operations_ahead, .timeout = TIMEOUT) { close_from_first_callback(false); }
Test(session_pipeline, free_engine_with_operations_ahead, .timeout = TIMEOUT) { close_from_first_callback(true); }
