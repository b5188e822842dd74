/* test_session.c -- the AsyncSession against the sandbox PostgreSQL with
 * the reference data (bench/schema.sql) loaded.
 *
 * What is proved here, each against real rows and counted callbacks:
 *   - identity: one object per row per session, gets answered from the map
 *     without a statement, get_many in key order, expunge, expire and
 *     populate_existing;
 *   - the unit of work: a graph of new authors, books and tags (with
 *     many-to-many links) flushed in foreign-key order in one pipeline,
 *     keys filled in, read back by a fresh session; delete cascades over
 *     test-local models; UPDATEs of the changed columns only;
 *   - failures: a unique violation in a 1,000-row flush, rollback-required
 *     and recovery; serialization failures retried by the transaction
 *     helper; sessions closed with operations queued or in flight;
 *   - lazy transactions: 1,000 sessions on a pool of 4, a writer holding
 *     exactly one connection from its flush to its commit;
 *   - callback chaining and object states.
 *
 * Traps: the reference rows are shared with every suite running beside
 * this one, so tests only ever write rows they created themselves (names
 * carry the test's name and the process id) or tables of their own, and
 * sessions that modify reference objects without meaning to write them
 * run with autoflush off. Criterion runs tests in separate processes, so
 * each test has its own loop and engine. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models.h"
#include "support.h"

#define TIMEOUT 120
#define WAIT 30.0 /* seconds one step may take before the test fails */

/* ==========================================================================
 * Environment: loop, engine, SQL echo capture, a blocking libpq connection
 * ========================================================================== */

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    PGconn *pg;
    t_echo log; /* the SQL echo, recorded while log.on is set */
    char tag[64]; /* "ses-<name>-<pid>": prefix of every row this test writes */
} env;

/* The reference data must be there, untouched: fail loudly otherwise. */
static void check_reference_data(env *t) {
    char *ok = t_pg_exec(t->pg, "SELECT to_regclass('public.authors') IS NOT NULL AND to_regclass('public.books') "
                                "IS NOT NULL AND to_regclass('public.tags') IS NOT NULL AND "
                                "to_regclass('public.book_tags') IS NOT NULL");
    int loaded = ok && strcmp(ok, "t") == 0;
    free(ok);
    cr_assert(loaded, "the reference schema (bench/schema.sql) is not loaded: run this suite with "
                      "`scripts/sandbox run --schema -- ...`");
    cr_assert_eq(t_pg_longf(t->pg, "SELECT count(*) FROM authors WHERE id BETWEEN 1 AND 10000"), 10000,
                 "reference authors 1..10000 are missing");
    cr_assert_eq(t_pg_longf(t->pg, "SELECT count(*) FROM books WHERE id BETWEEN 1 AND 100000 AND "
                            "author_id = 1 + (id - 1) / 10"),
                 100000, "reference books 1..100000 are missing or changed");
    cr_assert_eq(t_pg_longf(t->pg, "SELECT count(*) FROM tags WHERE id BETWEEN 1 AND 50 AND name = 'tag ' || id"), 50,
                 "reference tags 1..50 are missing or changed");
    cr_assert_eq(t_pg_longf(t->pg, "SELECT count(*) FROM book_tags WHERE book_id BETWEEN 1 AND 100000"), 300000,
                 "reference book_tags are missing");
}

/* Deletes every row this test created in the reference tables (names and
 * titles start with the test's tag). */
static void cleanup_rows(env *t) {
    t_pg_runf(t->pg,
            "DELETE FROM book_tags WHERE book_id IN (SELECT id FROM books WHERE title LIKE '%1$s%%' OR author_id IN "
            "(SELECT id FROM authors WHERE name LIKE '%1$s%%')) OR tag_id IN (SELECT id FROM tags WHERE name LIKE "
            "'%1$s%%');"
            "DELETE FROM books WHERE title LIKE '%1$s%%' OR author_id IN (SELECT id FROM authors WHERE name LIKE "
            "'%1$s%%');"
            "DELETE FROM tags WHERE name LIKE '%1$s%%';"
            "DELETE FROM authors WHERE name LIKE '%1$s%%'",
            t->tag);
}

/* pool < 0 / overflow < 0: engine defaults */
static void env_open_pool(env *t, const char *name, int pool, int overflow) {
    memset(t, 0, sizeof(*t));
    snprintf(t->tag, sizeof(t->tag), "ses-%s-%ld", name, (long)getpid());
    t->pg = t_pg();
    check_reference_data(t);
    cleanup_rows(t);
    t_loop_open(&t->evl, &t->loop);
    aorm_engine_options o; /* t_engine() sets conninfo and, through PgBouncer, .pgbouncer */
    aorm_engine_options_init(&o);
    if (pool >= 0) o.pool_size = pool;
    if (overflow >= 0) o.max_overflow = overflow;
    t_echo_attach(&t->log, &o, false);
    t->log.on = false; /* recorded only where a test turns it on */
    t->e = t_engine(t->loop, &o);
}

static void env_open(env *t, const char *name) { env_open_pool(t, name, -1, -1); }

static void env_close(env *t) {
    aorm_engine_free(t->e);
    t_loop_close(&t->evl, &t->loop);
    cleanup_rows(t);
    PQfinish(t->pg);
    t_echo_free(&t->log);
}

/* Runs the loop for `seconds` (late or duplicate callbacks show up here). */
static void settle(env *t, double seconds) { t_settle(t->evl, seconds); }

static aorm_engine_stats stats(env *t) { return t_stats(t->e); }

static int held_is_zero(void *arg) { return stats(arg).held == 0; }

/* ==========================================================================
 * Callback recorders: every callback counts its calls
 * ========================================================================== */

/* t_rec (the test kit's recorder); get / query / flush / execute record
 * through t_rec_on_obj, t_rec_on_items (the array is copied: t_rec_free),
 * t_rec_on_done, t_rec_on_rows. */

/* Waits for the callback; it must have run exactly once. */
static void await(env *t, t_rec *r, const char *what) {
    cr_assert(t_run_until(t->evl, &r->calls, WAIT), "no callback for %s within %.0f s", what, WAIT);
    cr_assert_eq(r->calls, 1, "%s called back %d times", what, r->calls);
}

static void await_ok(env *t, t_rec *r, const char *what) {
    await(t, r, what);
    cr_assert_eq(r->code, 0, "%s failed: %s sqlstate=%s constraint=%s: %s", what, aorm_errname(r->code),
                 r->sqlstate, r->constraint, r->msg);
}

static void expect_code(const t_rec *r, int code, const char *what) {
    cr_assert_eq(r->calls, 1, "%s called back %d times", what, r->calls);
    cr_assert_eq(r->code, code, "%s: expected %s, got %s (%s)", what, aorm_errname(code), aorm_errname(r->code),
                 r->msg);
}

/* ---- small builders ---- */

static char *sfmt(aorm_session *s, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    char *p = aorm_session_strdup(s, buf);
    cr_assert_not_null(p);
    return p;
}

/* A collection of n objects, its array in the session's arena. */
static void set_list(aorm_session *s, aorm_list *l, size_t n, ...) {
    l->items = n ? aorm_session_alloc(s, n * sizeof(void *)) : NULL;
    if (n) cr_assert_not_null(l->items);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) l->items[i] = va_arg(ap, void *);
    va_end(ap);
    l->len = l->cap = n;
}

static aorm_stmt *q_author_id(int64_t id) {
    aorm_stmt *q = aorm_select(&author_model);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(id))), 0);
    return q;
}

static aorm_stmt *q_authors_in(const int64_t *ids, size_t n) {
    aorm_stmt *q = aorm_select(&author_model);
    cr_assert_eq(aorm_where(q, aorm_in_int8(AORM_COL(author, id), ids, n)), 0);
    cr_assert_eq(aorm_order_by(q, AORM_COL(author, id), AORM_ASC), 0);
    return q;
}

static aorm_stmt *q_author_named(const char *name) {
    aorm_stmt *q = aorm_select(&author_model);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text(name))), 0);
    return q;
}

static aorm_stmt *q_books_of(int64_t author_id) {
    aorm_stmt *q = aorm_select(&book_model);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(author_id))), 0);
    cr_assert_eq(aorm_order_by(q, AORM_COL(book, id), AORM_ASC), 0);
    return q;
}

/* SELECT count(authors.id) FROM authors WHERE name = $1 */
static aorm_stmt *q_count_authors_named(const char *name) {
    aorm_stmt *q = aorm_select_columns(aorm_count(AORM_COL(author, id)));
    cr_assert_not_null(q);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text(name))), 0);
    return q;
}

/* A fresh author (and n books titled "<tag>-<label>-book-<i>") written
 * with libpq; returns the author's id, book ids in books[]. */
static int64_t make_author(env *t, const char *label, int nbooks, int64_t *books) {
    int64_t id = t_pg_longf(t->pg, "INSERT INTO authors(name, born) VALUES ('%s-%s', 1970) RETURNING id", t->tag, label);
    for (int i = 0; i < nbooks; i++)
        books[i] = t_pg_longf(t->pg,
                           "INSERT INTO books(author_id, title, year, price) VALUES (%lld, '%s-%s-book-%d', %d, "
                           "%d.5) RETURNING id",
                           (long long)id, t->tag, label, i + 1, 2000 + i, 10 + i);
    return id;
}

/* ==========================================================================
 * 1. Identity
 * ========================================================================== */

Test(identity, one_object_per_row_and_statements_only_when_needed, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "identity");
    /* autoflush off: a reference object is modified below and must never
     * be written */
    aorm_session_options so;
    aorm_session_options_init(&so);
    so.autoflush = false;
    aorm_session *s = aorm_session_new(t.e, &so);
    cr_assert_not_null(s);

    /* get, get again, query: one pointer; the second get sends nothing */
    t_rec g1 = {0}, g2 = {0}, q = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 42}, NULL, t_rec_on_obj, &g1), 0);
    cr_assert_eq(g1.calls, 0, "called back inside aorm_session_get");
    await_ok(&t, &g1, "get author 42");
    author *a = g1.obj;
    cr_assert_not_null(a);
    cr_assert_eq(a->id, 42);
    cr_assert_str_eq(a->name, "author 42");
    cr_assert(a->born.valid && a->born.value == 1942);
    cr_assert_eq(aorm_object_state_of(s, a), AORM_PERSISTENT);
    cr_assert_eq(aorm_object_model(s, a), &author_model);
    cr_assert_eq(aorm_session_statements(s), 1);

    uint64_t ss = aorm_session_statements(s), es = stats(&t).statements;
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 42}, NULL, t_rec_on_obj, &g2), 0);
    cr_assert_eq(g2.calls, 0, "called back inside aorm_session_get (identity-map hit)");
    await_ok(&t, &g2, "second get of author 42");
    cr_assert_eq(g2.obj, a, "second get returned another object");
    cr_assert_eq(aorm_session_statements(s), ss, "the second get sent a statement");
    cr_assert_eq(stats(&t).statements, es, "the engine sent a statement for the second get");

    cr_assert_eq(aorm_session_query(s, q_author_id(42), NULL, t_rec_on_items, &q), 0);
    await_ok(&t, &q, "query author 42");
    cr_assert_eq(q.len, 1);
    cr_assert_eq(q.items[0], a, "the query returned another object for the same row");
    cr_assert_eq(aorm_session_statements(s), ss + 1);

    /* a missing key: obj NULL, err NULL */
    t_rec miss = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 999999999}, NULL, t_rec_on_obj, &miss), 0);
    await_ok(&t, &miss, "get of a missing author");
    cr_assert_null(miss.obj);

    /* get_many [1, 2, 999999, 1]: key order, NULL for the missing one, one statement */
    const void *keys[] = {&(author){.id = 1}, &(author){.id = 2}, &(author){.id = 999999}, &(author){.id = 1}};
    t_rec gm = {0};
    ss = aorm_session_statements(s);
    es = stats(&t).statements;
    cr_assert_eq(aorm_session_get_many(s, &author_model, keys, 4, NULL, t_rec_on_items, &gm), 0);
    await_ok(&t, &gm, "get_many [1, 2, 999999, 1]");
    cr_assert_eq(gm.len, 4);
    cr_assert_not_null(gm.items[0]);
    cr_assert_not_null(gm.items[1]);
    cr_assert_eq(((author *)gm.items[0])->id, 1);
    cr_assert_str_eq(((author *)gm.items[0])->name, "author 1");
    cr_assert_eq(((author *)gm.items[1])->id, 2);
    cr_assert_null(gm.items[2], "the missing key must answer NULL");
    cr_assert_eq(gm.items[3], gm.items[0], "the repeated key must answer the same object");
    cr_assert_eq(aorm_session_statements(s), ss + 1, "get_many sent %llu statements",
                 (unsigned long long)(aorm_session_statements(s) - ss));
    cr_assert_eq(stats(&t).statements, es + 1);

    /* the same keys that are now in the map: nothing is sent */
    const void *present[] = {&(author){.id = 1}, &(author){.id = 2}, &(author){.id = 1}, &(author){.id = 42}};
    t_rec gm2 = {0};
    ss = aorm_session_statements(s);
    es = stats(&t).statements;
    cr_assert_eq(aorm_session_get_many(s, &author_model, present, 4, NULL, t_rec_on_items, &gm2), 0);
    cr_assert_eq(gm2.calls, 0, "called back inside aorm_session_get_many");
    await_ok(&t, &gm2, "second get_many");
    cr_assert_eq(gm2.len, 4);
    cr_assert_eq(gm2.items[0], gm.items[0]);
    cr_assert_eq(gm2.items[1], gm.items[1]);
    cr_assert_eq(gm2.items[2], gm.items[0]);
    cr_assert_eq(gm2.items[3], a);
    cr_assert_eq(aorm_session_statements(s), ss, "a get_many answered by the identity map sent a statement");
    cr_assert_eq(stats(&t).statements, es);

    /* the original keys again: only the key that has no row (and so is not
     * in the identity map) is looked up, in one statement */
    t_rec gm3 = {0};
    ss = aorm_session_statements(s);
    cr_assert_eq(aorm_session_get_many(s, &author_model, keys, 4, NULL, t_rec_on_items, &gm3), 0);
    await_ok(&t, &gm3, "third get_many");
    cr_assert_eq(gm3.len, 4);
    cr_assert_eq(gm3.items[0], gm.items[0]);
    cr_assert_eq(gm3.items[1], gm.items[1]);
    cr_assert_null(gm3.items[2]);
    cr_assert_eq(gm3.items[3], gm.items[0]);
    cr_assert_eq(aorm_session_statements(s), ss + 1);

    /* expunge: the next get queries again and makes a new object */
    cr_assert_eq(aorm_session_expunge(s, a), 0);
    cr_assert_eq(aorm_object_state_of(s, a), AORM_DETACHED);
    t_rec g3 = {0};
    ss = aorm_session_statements(s);
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 42}, NULL, t_rec_on_obj, &g3), 0);
    await_ok(&t, &g3, "get after expunge");
    cr_assert_eq(aorm_session_statements(s), ss + 1, "get after expunge must query");
    cr_assert_not_null(g3.obj);
    cr_assert_neq(g3.obj, a, "an expunged object came back from the identity map");
    cr_assert_eq(((author *)g3.obj)->id, 42);
    cr_assert_eq(aorm_object_state_of(s, g3.obj), AORM_PERSISTENT);

    /* a plain query leaves pending changes alone; populate_existing
     * overwrites them */
    t_rec g4 = {0}, q2 = {0}, q3 = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 43}, NULL, t_rec_on_obj, &g4), 0);
    await_ok(&t, &g4, "get author 43");
    author *b = g4.obj;
    cr_assert_not_null(b);
    b->name = aorm_session_strdup(s, "changed in memory");
    cr_assert(aorm_object_modified(s, b));
    cr_assert_eq(aorm_session_query(s, q_author_id(43), NULL, t_rec_on_items, &q2), 0);
    await_ok(&t, &q2, "plain query of author 43");
    cr_assert_eq(q2.len, 1);
    cr_assert_eq(q2.items[0], b);
    cr_assert_str_eq(b->name, "changed in memory", "a plain query overwrote a pending change");
    cr_assert(aorm_object_modified(s, b));
    aorm_query_options po = {.populate_existing = true};
    cr_assert_eq(aorm_session_query(s, q_author_id(43), &po, t_rec_on_items, &q3), 0);
    await_ok(&t, &q3, "populate_existing query of author 43");
    cr_assert_eq(q3.len, 1);
    cr_assert_eq(q3.items[0], b);
    cr_assert_str_eq(b->name, "author 43", "populate_existing did not overwrite the modified field");
    cr_assert_not(aorm_object_modified(s, b));

    /* expire: the next get reloads the columns into the same object */
    b->born = AORM_SOME(aorm_opt_int32, 1);
    cr_assert_eq(aorm_session_expire(s, b), 0);
    t_rec g5 = {0};
    ss = aorm_session_statements(s);
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 43}, NULL, t_rec_on_obj, &g5), 0);
    await_ok(&t, &g5, "get of an expired object");
    cr_assert_eq(aorm_session_statements(s), ss + 1, "an expired object must be reloaded");
    cr_assert_eq(g5.obj, b);
    cr_assert(b->born.valid && b->born.value == 1943);

    aorm_session_free(s);
    settle(&t, 0.1);
    /* nothing was written */
    char *name = t_pg_execf(t.pg, "SELECT name FROM authors WHERE id = 43");
    cr_assert_str_eq(name, "author 43");
    free(name);
    cr_assert_eq(g1.calls + g2.calls + q.calls + miss.calls + gm.calls + gm2.calls + gm3.calls + g3.calls +
                     g4.calls + q2.calls + q3.calls + g5.calls,
                 12, "a callback ran more than once");
    t_rec_free(&q);
    t_rec_free(&gm);
    t_rec_free(&gm2);
    t_rec_free(&gm3);
    t_rec_free(&q2);
    t_rec_free(&q3);
    env_close(&t);
}

/* The object among items whose int64 key at `off` is id, or NULL. */
static void *find_by_id(void **items, size_t n, size_t off, int64_t id) {
    for (size_t i = 0; i < n; i++)
        if (*(const int64_t *)((const char *)items[i] + off) == id) return items[i];
    return NULL;
}

/* ==========================================================================
 * 2. The unit of work: a graph of new objects, one pipeline, read back
 * ========================================================================== */

Test(unit_of_work, graph_is_flushed_in_fk_order_in_one_pipeline_and_reads_back, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "graph");
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_not_null(s);

    author *a1 = aorm_session_new_object(s, &author_model);
    author *a2 = aorm_session_new_object(s, &author_model);
    cr_assert(a1 && a2);
    a1->name = sfmt(s, "%s-a1", t.tag);
    a1->born = AORM_SOME(aorm_opt_int32, 1950);
    a2->name = sfmt(s, "%s-a2", t.tag);
    a2->born = AORM_NONE(aorm_opt_int32);

    tag *tg[3];
    for (int i = 0; i < 3; i++) {
        tg[i] = aorm_session_new_object(s, &tag_model);
        cr_assert_not_null(tg[i]);
        tg[i]->name = sfmt(s, "%s-tag-%d", t.tag, i);
    }

    /* one title lives in memory of the test's own: the flush copies it */
    char own_title[96];
    snprintf(own_title, sizeof(own_title), "%s-b3", t.tag);
    book *b[4];
    for (int i = 0; i < 4; i++) {
        b[i] = aorm_session_new_object(s, &book_model);
        cr_assert_not_null(b[i]);
        b[i]->title = i == 3 ? own_title : sfmt(s, "%s-b%d", t.tag, i);
        b[i]->year = 2001 + i;
        b[i]->price = 10.25 + i;
    }
    /* books attached through book->author ... */
    b[0]->author = a1;
    b[2]->author = a2;
    /* ... and through author->books */
    set_list(s, &a1->books, 1, b[1]);
    set_list(s, &a2->books, 1, b[3]);
    /* many-to-many */
    set_list(s, &b[0]->tags, 2, tg[0], tg[1]);
    set_list(s, &b[1]->tags, 2, tg[1], tg[2]);
    set_list(s, &b[3]->tags, 1, tg[0]);

    cr_assert_eq(aorm_object_state_of(s, b[0]), AORM_TRANSIENT);
    /* adding two books reaches everything through save-update cascades:
     * b0 -> a1 -> a1.books -> b1 -> tags; b2 -> a2 -> b3 */
    cr_assert_eq(aorm_session_add(s, b[0]), 0);
    cr_assert_eq(aorm_session_add(s, b[2]), 0);
    void *all[] = {a1, a2, tg[0], tg[1], tg[2], b[0], b[1], b[2], b[3]};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        cr_assert_eq(aorm_object_state_of(s, all[i]), AORM_PENDING, "object %zu was not cascaded to PENDING", i);

    aorm_engine_stats before = stats(&t);
    t.log.on = 1;
    t_rec c = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    await_ok(&t, &c, "commit of the graph");
    t.log.on = 0;
    aorm_engine_stats after = stats(&t);
    t_echo_dump(&t.log);

    /* order: authors and tags before books, books before book_tags, all
     * before COMMIT; one INSERT per model */
    int ia = t_echo_find(&t.log, "INSERT INTO \"authors\"");
    int it = t_echo_find(&t.log, "INSERT INTO \"tags\"");
    int ib = t_echo_find(&t.log, "INSERT INTO \"books\"");
    int ibt = t_echo_find(&t.log, "INSERT INTO \"book_tags\"");
    int ic = t_echo_find(&t.log, "COMMIT");
    cr_assert(ia >= 0 && it >= 0 && ib >= 0 && ibt >= 0 && ic >= 0,
              "missing statements in the echo: authors %d tags %d books %d book_tags %d commit %d", ia, it, ib, ibt,
              ic);
    /* foreign-key order: books reference authors; book_tags reference
     * books and tags (books do not reference tags, so tags and books may
     * come in either order) */
    cr_log_info("insert order: authors %d, tags %d, books %d, book_tags %d", ia, it, ib, ibt);
    cr_assert_lt(ia, ib, "authors must be inserted before books");
    cr_assert_lt(ib, ibt, "books must be inserted before book_tags");
    cr_assert_lt(it, ibt, "tags must be inserted before book_tags");
    cr_assert_lt(ibt, ic, "every write comes before COMMIT");
    cr_assert_eq(t_echo_count_prefix(&t.log, "INSERT"), 4, "one INSERT statement per model");
    cr_assert_eq(t_echo_count_prefix(&t.log, "UPDATE"), 0);
    cr_assert_eq(t_echo_count_prefix(&t.log, "DELETE"), 0);
    /* one round trip for the generated keys, one for every write, one for
     * COMMIT */
    uint64_t rt = after.round_trips - before.round_trips;
    cr_log_info("flush + commit: %llu round trips, %llu statements", (unsigned long long)rt,
                (unsigned long long)(after.statements - before.statements));
    cr_assert_leq(rt, 3, "the flush and commit took %llu round trips", (unsigned long long)rt);

    /* keys are filled in, children carry their parents' keys */
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        cr_assert_eq(aorm_object_state_of(s, all[i]), AORM_PERSISTENT, "object %zu is not PERSISTENT", i);
    cr_assert(a1->id && a2->id && tg[0]->id && tg[1]->id && tg[2]->id);
    for (int i = 0; i < 4; i++) cr_assert_neq(b[i]->id, 0, "book %d has no id", i);
    cr_assert_eq(b[0]->author_id, a1->id);
    cr_assert_eq(b[1]->author_id, a1->id, "a book in author->books did not get the author's key");
    cr_assert_eq(b[2]->author_id, a2->id);
    cr_assert_eq(b[3]->author_id, a2->id, "a book in author->books did not get the author's key");
    /* the caller's string was copied at flush */
    cr_assert_neq(b[3]->title, own_title, "the flush kept a pointer to the caller's memory");
    memset(own_title, 'x', sizeof(own_title) - 1);
    char expect_b3[96];
    snprintf(expect_b3, sizeof(expect_b3), "%s-b3", t.tag);
    cr_assert_str_eq(b[3]->title, expect_b3);

    /* read everything back in a fresh session with Core queries */
    aorm_session *r = aorm_session_new(t.e, NULL);
    cr_assert_not_null(r);
    int64_t aids[2] = {a1->id, a2->id};
    int64_t bids[4] = {b[0]->id, b[1]->id, b[2]->id, b[3]->id};
    int64_t tids[3] = {tg[0]->id, tg[1]->id, tg[2]->id};
    t_rec ra = {0}, rb = {0}, rt_ = {0}, rl = {0};
    cr_assert_eq(aorm_session_query(r, q_authors_in(aids, 2), NULL, t_rec_on_items, &ra), 0);
    aorm_stmt *qb = aorm_select(&book_model);
    aorm_where(qb, aorm_in_int8(AORM_COL(book, id), bids, 4));
    aorm_order_by(qb, AORM_COL(book, id), AORM_ASC);
    cr_assert_eq(aorm_session_query(r, qb, NULL, t_rec_on_items, &rb), 0);
    aorm_stmt *qt = aorm_select(&tag_model);
    aorm_where(qt, aorm_in_int8(AORM_COL(tag, id), tids, 3));
    aorm_order_by(qt, AORM_COL(tag, id), AORM_ASC);
    cr_assert_eq(aorm_session_query(r, qt, NULL, t_rec_on_items, &rt_), 0);
    aorm_stmt *ql = aorm_select(&book_tag_model);
    aorm_where(ql, aorm_in_int8(AORM_COL(book_tag, book_id), bids, 4));
    cr_assert_eq(aorm_session_query(r, ql, NULL, t_rec_on_items, &rl), 0);
    await_ok(&t, &ra, "read back authors");
    await_ok(&t, &rb, "read back books");
    await_ok(&t, &rt_, "read back tags");
    await_ok(&t, &rl, "read back book_tags");

    /* rows are matched by key: the order in which new objects get their
     * keys is the flush's business */
    author *wa[2] = {a1, a2};
    cr_assert_eq(ra.len, 2);
    for (int i = 0; i < 2; i++) {
        author *x = find_by_id(ra.items, ra.len, offsetof(author, id), wa[i]->id);
        cr_assert_not_null(x, "author %d is not in the database", i);
        cr_assert_neq(x, wa[i], "two sessions share an object");
        cr_assert_str_eq(x->name, wa[i]->name);
        cr_assert_eq(x->born.valid, wa[i]->born.valid);
        if (x->born.valid) cr_assert_eq(x->born.value, wa[i]->born.value);
    }
    cr_assert_eq(rb.len, 4);
    for (int i = 0; i < 4; i++) {
        book *x = find_by_id(rb.items, rb.len, offsetof(book, id), b[i]->id);
        cr_assert_not_null(x, "book %d is not in the database", i);
        cr_assert_eq(x->author_id, b[i]->author_id);
        cr_assert_str_eq(x->title, b[i]->title);
        cr_assert_eq(x->year, b[i]->year);
        cr_assert_eq(x->price, b[i]->price);
    }
    cr_assert_eq(rt_.len, 3);
    for (int i = 0; i < 3; i++) {
        tag *x = find_by_id(rt_.items, rt_.len, offsetof(tag, id), tg[i]->id);
        cr_assert_not_null(x, "tag %d is not in the database", i);
        cr_assert_str_eq(x->name, tg[i]->name);
    }
    /* links: b0-{t0,t1}, b1-{t1,t2}, b3-{t0} */
    struct { int bi, ti; } want[] = {{0, 0}, {0, 1}, {1, 1}, {1, 2}, {3, 0}};
    cr_assert_eq(rl.len, 5, "expected 5 book_tags rows, got %zu", rl.len);
    for (size_t w = 0; w < 5; w++) {
        int found = 0;
        for (size_t k = 0; k < rl.len; k++) {
            book_tag *x = rl.items[k];
            if (x->book_id == b[want[w].bi]->id && x->tag_id == tg[want[w].ti]->id) found++;
        }
        cr_assert_eq(found, 1, "link book %d - tag %d is missing", want[w].bi, want[w].ti);
    }

    aorm_session_free(r);
    aorm_session_free(s);
    settle(&t, 0.05);
    t_rec_free(&ra);
    t_rec_free(&rb);
    t_rec_free(&rt_);
    t_rec_free(&rl);
    env_close(&t);
}

/* New objects, once flushed, are persistent like loaded ones: a later
 * change of one column writes that column and nothing else (their
 * collections as flushed are the baseline: the association rows are not
 * written again). */
Test(unit_of_work, a_later_flush_of_flushed_new_objects_writes_only_the_change, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "reflush");
    aorm_session *s = aorm_session_new(t.e, NULL);
    author *a = aorm_session_new_object(s, &author_model);
    a->name = sfmt(s, "%s-a", t.tag);
    tag *t1 = aorm_session_new_object(s, &tag_model), *t2 = aorm_session_new_object(s, &tag_model);
    t1->name = sfmt(s, "%s-t1", t.tag);
    t2->name = sfmt(s, "%s-t2", t.tag);
    book *b = aorm_session_new_object(s, &book_model);
    b->title = sfmt(s, "%s-b", t.tag);
    b->year = 2020;
    b->price = 5;
    b->author = a;
    cr_assert_eq(aorm_session_list_append(s, &b->tags, t1), 0);
    cr_assert_eq(aorm_session_list_append(s, &b->tags, t2), 0);
    cr_assert_eq(aorm_session_add(s, b), 0);
    t_rec c1 = {0}, c2 = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c1), 0);
    await_ok(&t, &c1, "first commit");
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM book_tags WHERE book_id = %lld", (long long)b->id), 2);

    b->price = 6.5;
    t.log.on = 1;
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c2), 0);
    await(&t, &c2, "second commit");
    t.log.on = 0;
    t_echo_dump(&t.log);
    cr_assert_eq(c2.code, 0, "changing one column of a flushed new book failed: %s %s (%s)", c2.sqlstate,
                 c2.msg, c2.constraint);
    cr_assert_eq(t_echo_count_prefix(&t.log, "INSERT"), 0, "the second flush inserted rows again");
    cr_assert_eq(t_echo_count_prefix(&t.log, "UPDATE"), 1);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM book_tags WHERE book_id = %lld", (long long)b->id), 2);
    char *price = t_pg_execf(t.pg, "SELECT price FROM books WHERE id = %lld", (long long)b->id);
    cr_assert_str_eq(price, "6.5");
    free(price);
    aorm_session_free(s);
    settle(&t, 0.05);
    env_close(&t);
}

/* ---- delete cascades over test-local models ---- */

typedef struct casc_parent {
    int64_t id;
    char *name;
    aorm_list children; /* struct casc_child * */
} casc_parent;

typedef struct casc_child {
    int64_t id;
    int64_t parent_id;
    char *name;
    struct casc_parent *parent;
} casc_child;

extern const aorm_model casc_parent_model, casc_child_model;

/* table names carry the process id (filled in by casc_setup) */
static char casc_parent_table[64];
static char casc_child_table[64];

static const aorm_column casc_parent_columns[] = {
    AORM_COLUMN(casc_parent, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(casc_parent, name, AORM_TEXT, 0),
};
static const aorm_relationship casc_parent_relationships[] = {
    AORM_ONE_TO_MANY(casc_parent, children, casc_child, parent_id, .back_populates = "parent",
                     .cascade = AORM_CASCADE_SAVE_UPDATE | AORM_CASCADE_DELETE | AORM_CASCADE_DELETE_ORPHAN),
};
const aorm_model casc_parent_model = {
    AORM_MODEL_OF(casc_parent, casc_parent_table),
    AORM_COLUMNS(casc_parent_columns),
    AORM_RELATIONSHIPS(casc_parent_relationships),
};

static const aorm_column casc_child_columns[] = {
    AORM_COLUMN(casc_child, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(casc_child, parent_id, AORM_INT8, 0),
    AORM_COLUMN(casc_child, name, AORM_TEXT, 0),
};
static const aorm_foreign_key casc_child_foreign_keys[] = {
    AORM_FOREIGN_KEY(casc_child, parent_id, casc_parent, id),
};
static const aorm_relationship casc_child_relationships[] = {
    AORM_MANY_TO_ONE(casc_child, parent, casc_parent, parent_id, .back_populates = "children"),
};
const aorm_model casc_child_model = {
    AORM_MODEL_OF(casc_child, casc_child_table),
    AORM_COLUMNS(casc_child_columns),
    AORM_FOREIGN_KEYS(casc_child_foreign_keys),
    AORM_RELATIONSHIPS(casc_child_relationships),
};

/* Creates the two tables. The foreign key has no ON DELETE action: a
 * parent row can only go once the flush has deleted its children. */
static void casc_setup(env *t, const char *label) {
    snprintf(casc_parent_table, sizeof(casc_parent_table), "ses_%s_parent_%ld", label, (long)getpid());
    snprintf(casc_child_table, sizeof(casc_child_table), "ses_%s_child_%ld", label, (long)getpid());
    char msg[256];
    cr_assert_eq(aorm_model_validate(&casc_parent_model, msg, sizeof(msg)), 0, "%s", msg);
    cr_assert_eq(aorm_model_validate(&casc_child_model, msg, sizeof(msg)), 0, "%s", msg);
    t_pg_runf(t->pg,
            "DROP TABLE IF EXISTS \"%2$s\", \"%1$s\";"
            "CREATE TABLE \"%1$s\" (id bigserial PRIMARY KEY, name text NOT NULL);"
            "CREATE TABLE \"%2$s\" (id bigserial PRIMARY KEY, parent_id bigint NOT NULL REFERENCES \"%1$s\"(id), "
            "name text NOT NULL)",
            casc_parent_table, casc_child_table);
}

static void casc_teardown(env *t) {
    t_pg_runf(t->pg, "DROP TABLE IF EXISTS \"%s\", \"%s\"", casc_child_table, casc_parent_table);
}

static int64_t casc_make_parent(env *t, const char *name, int nchildren) {
    int64_t id = t_pg_longf(t->pg, "INSERT INTO \"%s\"(name) VALUES ('%s') RETURNING id", casc_parent_table, name);
    for (int i = 0; i < nchildren; i++)
        t_pg_runf(t->pg, "INSERT INTO \"%s\"(parent_id, name) VALUES (%lld, '%s-child-%d')", casc_child_table,
                (long long)id, name, i);
    return id;
}

static long casc_count(env *t, const char *table, const char *col, int64_t v) {
    return t_pg_longf(t->pg, "SELECT count(*) FROM \"%s\" WHERE %s = %lld", table, col, (long long)v);
}

Test(unit_of_work, delete_cascades_to_loaded_and_unloaded_children, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "cascade");
    casc_setup(&t, "casc");
    int64_t p1 = casc_make_parent(&t, "p1", 2);
    int64_t p2 = casc_make_parent(&t, "p2", 3);

    /* (a) children loaded by a query and put in the parent's collection by
     * hand (what a loader will do) */
    aorm_session *s = aorm_session_new(t.e, NULL);
    t_rec gp = {0}, qc = {0}, f1 = {0}, c1 = {0};
    cr_assert_eq(aorm_session_get(s, &casc_parent_model, &(casc_parent){.id = p1}, NULL, t_rec_on_obj, &gp), 0);
    aorm_stmt *q = aorm_select(&casc_child_model);
    aorm_where(q, aorm_eq(AORM_COL(casc_child, parent_id), aorm_int8(p1)));
    aorm_order_by(q, AORM_COL(casc_child, id), AORM_ASC);
    cr_assert_eq(aorm_session_query(s, q, NULL, t_rec_on_items, &qc), 0);
    await_ok(&t, &gp, "get parent p1");
    await_ok(&t, &qc, "query children of p1");
    casc_parent *parent = gp.obj;
    cr_assert_not_null(parent);
    cr_assert_eq(qc.len, 2);
    set_list(s, &parent->children, 2, qc.items[0], qc.items[1]);
    cr_assert_eq(aorm_session_delete(s, parent), 0);
    cr_assert_eq(aorm_object_state_of(s, parent), AORM_DELETED);
    t.log.on = 1;
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f1), 0);
    await_ok(&t, &f1, "flush of the deleted parent p1");
    t.log.on = 0;
    t_echo_dump(&t.log);
    cr_assert_eq(aorm_object_state_of(s, parent), AORM_DETACHED);
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c1), 0);
    await_ok(&t, &c1, "commit of the deleted parent p1");
    cr_assert_eq(casc_count(&t, casc_child_table, "parent_id", p1), 0, "children of p1 survived");
    cr_assert_eq(casc_count(&t, casc_parent_table, "id", p1), 0, "p1 survived");
    aorm_session_free(s);
    t_echo_clear(&t.log);

    /* (b) children not loaded at all: the flush deletes them by foreign key */
    s = aorm_session_new(t.e, NULL);
    t_rec gp2 = {0}, c2 = {0};
    cr_assert_eq(aorm_session_get(s, &casc_parent_model, &(casc_parent){.id = p2}, NULL, t_rec_on_obj, &gp2), 0);
    await_ok(&t, &gp2, "get parent p2");
    cr_assert_not_null(gp2.obj);
    cr_assert_eq(aorm_session_delete(s, gp2.obj), 0);
    t.log.on = 1;
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c2), 0);
    await_ok(&t, &c2, "commit of the deleted parent p2");
    t.log.on = 0;
    t_echo_dump(&t.log);
    char child_del[128], parent_del[128];
    snprintf(child_del, sizeof(child_del), "DELETE FROM \"%s\"", casc_child_table);
    snprintf(parent_del, sizeof(parent_del), "DELETE FROM \"%s\"", casc_parent_table);
    int icd = t_echo_find(&t.log, child_del), ipd = t_echo_find(&t.log, parent_del);
    cr_assert(icd >= 0, "no DELETE of the unloaded children was sent");
    cr_assert(strstr(t.log.lines[icd], "\"parent_id\" = ANY($1)"), "children are not deleted by foreign key: %s",
              t.log.lines[icd]);
    cr_assert(ipd > icd, "the children must be deleted before their parent");
    cr_assert_eq(casc_count(&t, casc_child_table, "parent_id", p2), 0, "children of p2 survived");
    cr_assert_eq(casc_count(&t, casc_parent_table, "id", p2), 0, "p2 survived");
    aorm_session_free(s);

    /* (c) a collection the session knows completely: parent and children
     * created and flushed through the session, then the parent deleted */
    s = aorm_session_new(t.e, NULL);
    casc_parent *p3 = aorm_session_new_object(s, &casc_parent_model);
    casc_child *k1 = aorm_session_new_object(s, &casc_child_model);
    casc_child *k2 = aorm_session_new_object(s, &casc_child_model);
    p3->name = sfmt(s, "p3");
    k1->name = sfmt(s, "p3-child-1");
    k2->name = sfmt(s, "p3-child-2");
    set_list(s, &p3->children, 2, k1, k2);
    cr_assert_eq(aorm_session_add(s, p3), 0);
    cr_assert_eq(aorm_object_state_of(s, k1), AORM_PENDING);
    t_rec c3 = {0}, c4 = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c3), 0);
    await_ok(&t, &c3, "commit of p3 and its children");
    cr_assert_neq(p3->id, 0);
    cr_assert_eq(k1->parent_id, p3->id);
    cr_assert_eq(k2->parent_id, p3->id);
    cr_assert_eq(casc_count(&t, casc_child_table, "parent_id", p3->id), 2);
    int64_t p3id = p3->id;
    cr_assert_eq(aorm_session_delete(s, p3), 0);
    cr_assert_eq(aorm_object_state_of(s, k1), AORM_DELETED, "delete did not cascade to a known child");
    cr_assert_eq(aorm_object_state_of(s, k2), AORM_DELETED, "delete did not cascade to a known child");
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c4), 0);
    await_ok(&t, &c4, "commit of the deleted p3");
    cr_assert_eq(aorm_object_state_of(s, p3), AORM_DETACHED);
    cr_assert_eq(aorm_object_state_of(s, k1), AORM_DETACHED);
    cr_assert_eq(aorm_object_state_of(s, k2), AORM_DETACHED);
    cr_assert_eq(casc_count(&t, casc_child_table, "parent_id", p3id), 0);
    cr_assert_eq(casc_count(&t, casc_parent_table, "id", p3id), 0);
    aorm_session_free(s);

    settle(&t, 0.05);
    t_rec_free(&qc);
    casc_teardown(&t);
    env_close(&t);
}

/* The children in a deleted parent's collection (filled by hand from a
 * query, as a loader will) follow their parent in the session too:
 * DELETED at aorm_session_delete, DETACHED once flushed, and a get of
 * one of them afterwards finds no row instead of a stale object. */
Test(unit_of_work, delete_cascade_marks_the_children_held_in_the_collection, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "cascstate");
    casc_setup(&t, "cst");
    int64_t p1 = casc_make_parent(&t, "p1", 2);
    aorm_session *s = aorm_session_new(t.e, NULL);
    t_rec gp = {0}, qc = {0}, c1 = {0};
    cr_assert_eq(aorm_session_get(s, &casc_parent_model, &(casc_parent){.id = p1}, NULL, t_rec_on_obj, &gp), 0);
    aorm_stmt *q = aorm_select(&casc_child_model);
    aorm_where(q, aorm_eq(AORM_COL(casc_child, parent_id), aorm_int8(p1)));
    aorm_order_by(q, AORM_COL(casc_child, id), AORM_ASC);
    cr_assert_eq(aorm_session_query(s, q, NULL, t_rec_on_items, &qc), 0);
    await_ok(&t, &gp, "get parent p1");
    await_ok(&t, &qc, "query children of p1");
    casc_parent *parent = gp.obj;
    cr_assert_not_null(parent);
    cr_assert_eq(qc.len, 2);
    casc_child *k0 = qc.items[0];
    int64_t k0id = k0->id;
    set_list(s, &parent->children, 2, qc.items[0], qc.items[1]);
    cr_assert_eq(aorm_session_delete(s, parent), 0);
    cr_expect_eq(aorm_object_state_of(s, k0), AORM_DELETED, "a child in a deleted parent's collection is %d",
                 (int)aorm_object_state_of(s, k0));
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c1), 0);
    await_ok(&t, &c1, "commit of the deleted parent");
    cr_assert_eq(casc_count(&t, casc_child_table, "parent_id", p1), 0, "children of p1 survived");
    cr_expect_eq(aorm_object_state_of(s, k0), AORM_DETACHED,
                 "a child whose row the flush deleted is still %d in the session",
                 (int)aorm_object_state_of(s, k0));
    t_rec g = {0};
    cr_assert_eq(aorm_session_get(s, &casc_child_model, &(casc_child){.id = k0id}, NULL, t_rec_on_obj, &g), 0);
    await_ok(&t, &g, "get of a deleted child");
    cr_expect_null(g.obj, "get of a child whose row was deleted returned a stale object from the identity map");
    aorm_session_free(s);
    settle(&t, 0.05);
    t_rec_free(&qc);
    casc_teardown(&t);
    env_close(&t);
}

/* The collection loaded by the loaders (selectin): the session knows it
 * completely and keeps its snapshot. */
static const aorm_load_plan *const casc_children_plan = AORM_PLAN(AORM_SELECTIN(casc_parent, children));

/* The parent p with its children loaded; the caller frees r.items. */
static casc_parent *casc_load_parent(env *t, aorm_session *s, int64_t p, t_rec *r) {
    aorm_stmt *q = aorm_select(&casc_parent_model);
    aorm_where(q, aorm_eq(AORM_COL(casc_parent, id), aorm_int8(p)));
    aorm_query_options qo = {.load = casc_children_plan};
    cr_assert_eq(aorm_session_query(s, q, &qo, t_rec_on_items, r), 0);
    await_ok(t, r, "query of a parent with its children loaded");
    cr_assert_eq(r->len, 1);
    casc_parent *parent = r->items[0];
    cr_assert_eq(aorm_rel_loaded(s, parent, AORM_REL(casc_parent, children)), 1);
    return parent;
}

Test(unit_of_work, delete_cascade_marks_the_children_of_a_loaded_collection, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "cascload");
    casc_setup(&t, "cld");
    int64_t p1 = casc_make_parent(&t, "p1", 2);
    aorm_session *s = aorm_session_new(t.e, NULL);
    t_rec r = {0}, c = {0}, g = {0};
    casc_parent *parent = casc_load_parent(&t, s, p1, &r);
    cr_assert_eq(parent->children.len, 2);
    casc_child *k0 = parent->children.items[0], *k1 = parent->children.items[1];
    int64_t k0id = k0->id;
    cr_assert_eq(aorm_session_delete(s, parent), 0);
    cr_assert_eq(aorm_object_state_of(s, k0), AORM_DELETED, "delete did not cascade to a loaded child");
    cr_assert_eq(aorm_object_state_of(s, k1), AORM_DELETED, "delete did not cascade to a loaded child");
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    await_ok(&t, &c, "commit of the deleted parent");
    cr_assert_eq(casc_count(&t, casc_child_table, "parent_id", p1), 0, "children of p1 survived");
    cr_assert_eq(casc_count(&t, casc_parent_table, "id", p1), 0, "p1 survived");
    cr_assert_eq(aorm_object_state_of(s, parent), AORM_DETACHED);
    cr_assert_eq(aorm_object_state_of(s, k0), AORM_DETACHED);
    cr_assert_eq(aorm_object_state_of(s, k1), AORM_DETACHED);
    cr_assert_eq(aorm_session_get(s, &casc_child_model, &(casc_child){.id = k0id}, NULL, t_rec_on_obj, &g), 0);
    await_ok(&t, &g, "get of a deleted child");
    cr_assert_null(g.obj);
    aorm_session_free(s);
    settle(&t, 0.05);
    t_rec_free(&r);
    casc_teardown(&t);
    env_close(&t);
}

Test(unit_of_work, delete_orphan_of_a_loaded_collection, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "orphload");
    casc_setup(&t, "old");
    int64_t p1 = casc_make_parent(&t, "p1", 2);
    aorm_session *s = aorm_session_new(t.e, NULL);
    t_rec r = {0}, c = {0};
    casc_parent *parent = casc_load_parent(&t, s, p1, &r);
    cr_assert_eq(parent->children.len, 2);
    casc_child *k0 = parent->children.items[0], *k1 = parent->children.items[1];
    int64_t k0id = k0->id, k1id = k1->id;
    parent->children.len = 1; /* k1 leaves the collection: an orphan */
    t.log.on = 1;
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    await_ok(&t, &c, "commit after removing a loaded child");
    t.log.on = 0;
    t_echo_dump(&t.log);
    cr_assert_eq(casc_count(&t, casc_child_table, "id", k1id), 0,
                 "a child removed from a loaded delete-orphan collection was not deleted");
    cr_assert_eq(casc_count(&t, casc_child_table, "id", k0id), 1, "the child still in the collection was deleted");
    cr_assert_eq(aorm_object_state_of(s, k1), AORM_DETACHED);
    cr_assert_eq(aorm_object_state_of(s, k0), AORM_PERSISTENT);
    aorm_session_free(s);
    settle(&t, 0.05);
    t_rec_free(&r);
    casc_teardown(&t);
    env_close(&t);
}

/* Delete-orphan: a child removed from a collection the session knows
 * completely (created and flushed through it) is deleted at the next
 * flush. The loaders are what normally provide such collections; here
 * the collection comes from the session's own flush. */
Test(unit_of_work, delete_orphan_of_a_flushed_collection, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "orphan");
    casc_setup(&t, "orph");
    aorm_session *s = aorm_session_new(t.e, NULL);
    casc_parent *p = aorm_session_new_object(s, &casc_parent_model);
    casc_child *k1 = aorm_session_new_object(s, &casc_child_model);
    casc_child *k2 = aorm_session_new_object(s, &casc_child_model);
    p->name = sfmt(s, "p");
    k1->name = sfmt(s, "p-child-1");
    k2->name = sfmt(s, "p-child-2");
    set_list(s, &p->children, 2, k1, k2);
    cr_assert_eq(aorm_session_add(s, p), 0);
    t_rec c1 = {0}, c2 = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c1), 0);
    await_ok(&t, &c1, "commit of the parent and its children");
    cr_assert_eq(casc_count(&t, casc_child_table, "parent_id", p->id), 2);
    int64_t k2id = k2->id;

    p->children.len = 1; /* k2 leaves the collection: an orphan */
    t.log.on = 1;
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c2), 0);
    await_ok(&t, &c2, "commit after removing a child");
    t.log.on = 0;
    t_echo_dump(&t.log);
    cr_assert_eq(casc_count(&t, casc_child_table, "id", k2id), 0,
                 "a child removed from a delete-orphan collection was not deleted");
    cr_assert_eq(aorm_object_state_of(s, k2), AORM_DETACHED);
    cr_assert_eq(casc_count(&t, casc_child_table, "id", k1->id), 1);
    aorm_session_free(s);
    settle(&t, 0.05);
    casc_teardown(&t);
    env_close(&t);
}

/* ==========================================================================
 * 3. Changed columns only; untouched objects write nothing
 * ========================================================================== */

Test(unit_of_work, update_sends_changed_columns_only_and_untouched_objects_nothing, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "update");
    int64_t bid;
    make_author(&t, "writer", 1, &bid);

    aorm_session *s = aorm_session_new(t.e, NULL);
    t_rec g = {0}, f = {0}, c = {0};
    cr_assert_eq(aorm_session_get(s, &book_model, &(book){.id = bid}, NULL, t_rec_on_obj, &g), 0);
    await_ok(&t, &g, "get the book");
    book *b = g.obj;
    cr_assert_not_null(b);
    char *title = strdup(b->title);
    b->price = 12.25;
    cr_assert(aorm_object_modified(s, b));
    t.log.on = 1;
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f), 0);
    await_ok(&t, &f, "flush of the new price");
    t.log.on = 0;
    t_echo_dump(&t.log);
    cr_assert_eq(t_echo_count_prefix(&t.log, "UPDATE"), 1, "expected one UPDATE");
    const char *upd = t.log.lines[t_echo_find(&t.log, "UPDATE")];
    static const char want_upd[] = "UPDATE \"books\" SET \"price\" = $1 WHERE ";
    cr_assert(strncmp(upd, want_upd, sizeof(want_upd) - 1) == 0,
              "the UPDATE must set the changed column only: %s", upd);
    cr_assert_null(strstr(upd, "\"title\""), "%s", upd);
    cr_assert_null(strstr(upd, "\"year\""), "%s", upd);
    cr_assert_null(strstr(upd, "\"author_id\" ="), "%s", upd);
    cr_assert_not(aorm_object_modified(s, b), "the flushed values are the new snapshot");
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    await_ok(&t, &c, "commit of the new price");
    char *price = t_pg_execf(t.pg, "SELECT price FROM books WHERE id = %lld", (long long)bid);
    char *dbtitle = t_pg_execf(t.pg, "SELECT title FROM books WHERE id = %lld", (long long)bid);
    cr_assert_str_eq(price, "12.25");
    cr_assert_str_eq(dbtitle, title);
    free(price);
    free(dbtitle);
    free(title);
    aorm_session_free(s);
    t_echo_clear(&t.log);

    /* loaded and untouched (or assigned its own value): a flush and a commit
     * send nothing, not even BEGIN */
    settle(&t, 0.05);
    s = aorm_session_new(t.e, NULL);
    t_rec g2 = {0}, f2 = {0}, c2 = {0};
    cr_assert_eq(aorm_session_get(s, &book_model, &(book){.id = bid}, NULL, t_rec_on_obj, &g2), 0);
    await_ok(&t, &g2, "get the book again");
    b = g2.obj;
    cr_assert_not_null(b);
    b->price = 12.25; /* the same value */
    cr_assert_not(aorm_object_modified(s, b));
    uint64_t ss = aorm_session_statements(s), es = stats(&t).statements;
    t.log.on = 1;
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f2), 0);
    await_ok(&t, &f2, "flush of an untouched object");
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c2), 0);
    await_ok(&t, &c2, "commit of an untouched object");
    t.log.on = 0;
    t_echo_dump(&t.log);
    cr_assert_eq(aorm_session_statements(s), ss, "an untouched object sent statements");
    cr_assert_eq(stats(&t).statements, es, "an untouched object sent statements");
    cr_assert_eq(t.log.n, 0, "statements were echoed for an untouched object");
    cr_assert_not(aorm_session_in_transaction(s), "an untouched object began a transaction");
    cr_assert_eq(stats(&t).held, 0);
    aorm_session_free(s);
    settle(&t, 0.05);
    env_close(&t);
}

/* ==========================================================================
 * 4. A unique violation in the middle of a 1,000-row flush
 * ========================================================================== */

#define NTAGS 1000

Test(failures, unique_violation_in_a_1000_row_flush_and_recovery, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "unique");
    aorm_session *s = aorm_session_new(t.e, NULL);

    /* a reference tag in the identity map, for the rollback-required checks */
    t_rec g0 = {0};
    cr_assert_eq(aorm_session_get(s, &tag_model, &(tag){.id = 1}, NULL, t_rec_on_obj, &g0), 0);
    await_ok(&t, &g0, "get tag 1");
    tag *mapped = g0.obj;
    cr_assert_not_null(mapped);

    tag *news[NTAGS];
    for (int i = 0; i < NTAGS; i++) {
        news[i] = aorm_session_new_object(s, &tag_model);
        cr_assert_not_null(news[i]);
        /* row 500 collides with the reference tag "tag 7" (tags.name is UNIQUE) */
        news[i]->name = i == 499 ? sfmt(s, "tag 7") : sfmt(s, "%s-%04d", t.tag, i);
        cr_assert_eq(aorm_session_add(s, news[i]), 0);
    }
    t_rec c = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    await(&t, &c, "commit of 1,000 tags");
    cr_assert_neq(c.code, 0, "a flush with a duplicate name committed");
    cr_assert_str_eq(c.sqlstate, "23505", "%s: %s", aorm_errname(c.code), c.msg);
    cr_assert_str_eq(c.constraint, "tags_name_key");
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM tags WHERE name LIKE '%s-%%'", t.tag), 0,
                 "rows of the failed flush reached the database");
    cr_assert(aorm_session_rollback_required(s));

    /* every operation but rollback fails with AORM_ETXSTATE */
    t_rec gx = {0}, gm = {0}, qx = {0}, fx = {0}, cx = {0};
    cr_assert_eq(aorm_session_get(s, &tag_model, &(tag){.id = 2}, NULL, t_rec_on_obj, &gx), 0);
    cr_assert_eq(aorm_session_get(s, &tag_model, &(tag){.id = 1}, NULL, t_rec_on_obj, &gm), 0);
    cr_assert_eq(aorm_session_query(s, q_author_id(1), NULL, t_rec_on_items, &qx), 0);
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &fx), 0);
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &cx), 0);
    await(&t, &cx, "commit in rollback-required state");
    settle(&t, 0.05);
    expect_code(&gx, AORM_ETXSTATE, "get in rollback-required state");
    expect_code(&qx, AORM_ETXSTATE, "query in rollback-required state");
    expect_code(&fx, AORM_ETXSTATE, "flush in rollback-required state");
    expect_code(&cx, AORM_ETXSTATE, "commit in rollback-required state");
    cr_expect_eq(gm.calls, 1);
    cr_expect_eq(gm.code, AORM_ETXSTATE,
                 "a get answered from the identity map in rollback-required state succeeded (%s) instead of "
                 "failing with AORM_ETXSTATE",
                 aorm_errname(gm.code));

    /* rollback: the session works again */
    t_rec rb = {0};
    cr_assert_eq(aorm_session_rollback(s, t_rec_on_done, &rb), 0);
    await_ok(&t, &rb, "rollback");
    cr_assert_not(aorm_session_rollback_required(s));
    cr_assert_not(aorm_session_in_transaction(s));
    cr_expect_eq(aorm_object_state_of(s, news[0]), AORM_TRANSIENT,
                 "a new object of the rolled-back flush is %d, not TRANSIENT",
                 (int)aorm_object_state_of(s, news[0]));
    cr_expect_eq(aorm_object_state_of(s, news[499]), AORM_TRANSIENT);
    t_rec g3 = {0};
    cr_assert_eq(aorm_session_get(s, &tag_model, &(tag){.id = 3}, NULL, t_rec_on_obj, &g3), 0);
    await_ok(&t, &g3, "get after rollback");
    cr_assert_not_null(g3.obj);
    cr_assert_str_eq(((tag *)g3.obj)->name, "tag 3");

    tag *ok = aorm_session_new_object(s, &tag_model);
    ok->name = sfmt(s, "%s-valid", t.tag);
    cr_assert_eq(aorm_session_add(s, ok), 0);
    t_rec c2 = {0};
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c2), 0);
    await_ok(&t, &c2, "a valid commit after the rollback");
    cr_assert_neq(ok->id, 0);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM tags WHERE name = '%s-valid'", t.tag), 1);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM tags WHERE name LIKE '%s-0%%'", t.tag), 0);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM tags WHERE name = 'tag 7'"), 1);

    aorm_session_free(s);
    settle(&t, 0.05);
    t_rec_free(&qx);
    env_close(&t);
}

/* ==========================================================================
 * 5. Lazy transactions
 * ========================================================================== */

#define NSESSIONS 1000

typedef struct many_gets {
    int64_t ids[NSESSIONS];
    int calls[NSESSIONS];
    int ok[NSESSIONS];
    int done;
    int nok;
} many_gets;

typedef struct one_get {
    many_gets *m;
    int i;
} one_get;

static void on_one_get(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    one_get *g = user;
    many_gets *m = g->m;
    m->calls[g->i]++;
    m->done++;
    const author *a = obj;
    char want[32];
    snprintf(want, sizeof(want), "author %lld", (long long)m->ids[g->i]);
    if (!err && a && a->id == m->ids[g->i] && strcmp(a->name, want) == 0) {
        m->ok[g->i] = 1;
        m->nok++;
    } else if (err) {
        cr_log_error("session %d: %s %s %s", g->i, aorm_errname(err->code), err->sqlstate, err->message);
    }
    aorm_session_free(s); /* from inside its own callback */
}

static int all_gets_done(void *arg) { return ((many_gets *)arg)->done >= NSESSIONS; }

Test(lazy_tx, a_thousand_sessions_share_a_pool_of_four, .timeout = TIMEOUT) {
    env t;
    env_open_pool(&t, "many", 4, 0);
    many_gets *m = calloc(1, sizeof(*m));
    one_get *g = calloc(NSESSIONS, sizeof(*g));
    cr_assert(m && g);
    aorm_session_options so;
    aorm_session_options_init(&so);
    so.arena_block = 4096;
    uint32_t seed = (uint32_t)getpid() * 2654435761u;
    for (int i = 0; i < NSESSIONS; i++) {
        seed = seed * 1664525u + 1013904223u;
        m->ids[i] = 1 + (int64_t)((seed >> 8) % 10000);
        g[i].m = m;
        g[i].i = i;
        aorm_session *s = aorm_session_new(t.e, &so);
        cr_assert_not_null(s);
        cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = m->ids[i]}, NULL, on_one_get, &g[i]), 0);
    }
    cr_assert_eq(m->done, 0);
    cr_assert(t_run_until_fn(t.evl, all_gets_done, m, 90), "only %d of %d sessions called back", m->done,
              NSESSIONS);
    settle(&t, 0.1);
    for (int i = 0; i < NSESSIONS; i++) cr_assert_eq(m->calls[i], 1, "session %d called back %d times", i, m->calls[i]);
    cr_assert_eq(m->nok, NSESSIONS, "%d of %d gets returned the right author", m->nok, NSESSIONS);
    aorm_engine_stats st = stats(&t);
    cr_assert_leq(st.open, 4, "%d connections were opened on a pool of 4 without overflow", st.open);
    cr_assert_eq(st.held, 0);
    cr_log_info("1000 sessions: %llu statements, %llu round trips", (unsigned long long)st.statements,
                (unsigned long long)st.round_trips);
    free(g);
    free(m);
    env_close(&t);
}

Test(lazy_tx, a_writer_holds_one_connection_and_sees_its_own_writes, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "writer");
    aorm_session *w = aorm_session_new(t.e, NULL);
    aorm_session *r = aorm_session_new(t.e, NULL);
    char name[96];
    snprintf(name, sizeof(name), "%s-uncommitted", t.tag);

    /* reads alone hold nothing */
    t_rec g = {0};
    cr_assert_eq(aorm_session_get(w, &author_model, &(author){.id = 7}, NULL, t_rec_on_obj, &g), 0);
    await_ok(&t, &g, "a read before writing");
    cr_assert_not(aorm_session_in_transaction(w));
    cr_assert_eq(stats(&t).held, 0);

    author *a = aorm_session_new_object(w, &author_model);
    a->name = aorm_session_strdup(w, name);
    cr_assert_eq(aorm_session_add(w, a), 0);
    t_rec f = {0};
    cr_assert_eq(aorm_session_flush(w, t_rec_on_done, &f), 0);
    await_ok(&t, &f, "flush of the new author");
    cr_assert_eq(stats(&t).held, 1, "a session that flushed must hold exactly one connection");
    cr_assert(aorm_session_in_transaction(w));
    cr_assert_neq(a->id, 0);

    /* its own reads see the uncommitted row; another session's do not */
    t_rec wq = {0}, wc = {0}, rq = {0}, rc = {0};
    cr_assert_eq(aorm_session_query(w, q_author_named(name), NULL, t_rec_on_items, &wq), 0);
    cr_assert_eq(aorm_session_execute(w, q_count_authors_named(name), t_rec_on_rows, &wc), 0);
    cr_assert_eq(aorm_session_query(r, q_author_named(name), NULL, t_rec_on_items, &rq), 0);
    cr_assert_eq(aorm_session_execute(r, q_count_authors_named(name), t_rec_on_rows, &rc), 0);
    await_ok(&t, &wq, "writer's query");
    await_ok(&t, &wc, "writer's count");
    await_ok(&t, &rq, "reader's query");
    await_ok(&t, &rc, "reader's count");
    cr_assert_eq(wq.len, 1, "the writer does not see its own flushed row");
    cr_assert_eq(wq.items[0], a, "the writer's own row came back as another object");
    cr_assert(wc.has_int && wc.ival == 1, "the writer's count is not 1");
    cr_assert_eq(rq.len, 0, "another session sees uncommitted data");
    cr_assert(rc.has_int && rc.ival == 0, "another session counts uncommitted data");
    cr_assert_eq(stats(&t).held, 1, "the writer must keep its one connection until commit");
    cr_assert_not(aorm_session_in_transaction(r));

    t_rec c = {0};
    cr_assert_eq(aorm_session_commit(w, t_rec_on_done, &c), 0);
    await_ok(&t, &c, "commit");
    cr_assert_not(aorm_session_in_transaction(w));
    cr_assert_eq(stats(&t).held, 0, "the connection is still held after commit");

    t_rec rc2 = {0};
    cr_assert_eq(aorm_session_execute(r, q_count_authors_named(name), t_rec_on_rows, &rc2), 0);
    await_ok(&t, &rc2, "reader's count after commit");
    cr_assert(rc2.has_int && rc2.ival == 1, "the committed row is not visible to another session");
    aorm_session_free(w);
    aorm_session_free(r);
    settle(&t, 0.05);
    t_rec_free(&wq);
    t_rec_free(&rq);
    env_close(&t);
}

/* ==========================================================================
 * 6. Serialization failures: the transaction helper retries
 * ========================================================================== */

typedef struct ledger {
    int32_t id;
    int32_t val;
} ledger;

static char ledger_table[64];

static const aorm_column ledger_columns[] = {
    AORM_COLUMN(ledger, id, AORM_INT4, AORM_PK),
    AORM_COLUMN(ledger, val, AORM_INT4, 0),
};
static const aorm_model ledger_model = {
    AORM_MODEL_OF(ledger, ledger_table),
    AORM_COLUMNS(ledger_columns),
};

/* One of two write-skew transactions: read both rows, wait so that the
 * other transaction reads too, then set my row to the sum of both. Run
 * one after the other from (1, 1), they end at (2, 3) or (3, 2); run
 * interleaved without SERIALIZABLE, both would write 2. */
typedef struct skew {
    int me; /* 0: row 1, 1: row 2 */
    int max_attempt;
    int steps_run;
    t_rec done;
} skew;

static int skew_read(aorm_chain *c, void *user) {
    skew *k = user;
    k->steps_run++;
    if (aorm_chain_attempt(c) > k->max_attempt) k->max_attempt = aorm_chain_attempt(c);
    aorm_stmt *q = aorm_select(&ledger_model);
    aorm_order_by(q, AORM_COL(ledger, id), AORM_ASC);
    return aorm_chain_query(c, q, NULL);
}

static int skew_pause(aorm_chain *c, void *user) {
    aorm_objects *o = aorm_chain_objects(c);
    if (!o || o->len != 2) return aorm_chain_fail(c, AORM_ENOTFOUND, "expected two rows");
    aorm_chain_keep(c, 0, o->items[0]);
    aorm_chain_keep(c, 1, o->items[1]);
    return aorm_chain_execute(c, aorm_raw("SELECT pg_sleep(0.3)"));
}

static int skew_write(aorm_chain *c, void *user) {
    skew *k = user;
    ledger *x = aorm_chain_kept(c, 0), *y = aorm_chain_kept(c, 1);
    ledger *mine = k->me == 0 ? x : y;
    mine->val = x->val + y->val;
    return aorm_chain_flush(c);
}

static void on_skew_done(aorm_session *s, const aorm_error *err, void *user) { t_rec_err(&((skew *)user)->done, err); }

static int both_skews_done(void *arg) {
    skew *k = arg;
    return k[0].done.calls && k[1].done.calls;
}

static void run_skew(env *t, aorm_session *s[2], skew k[2], int max_attempts) {
    aorm_tx_options tx = {.isolation = AORM_ISO_SERIALIZABLE};
    for (int i = 0; i < 2; i++) {
        memset(&k[i], 0, sizeof(k[i]));
        k[i].me = i;
        cr_assert_eq(aorm_session_run_transaction(s[i], &tx, max_attempts,
                                                  AORM_STEPS(skew_read, skew_pause, skew_write), on_skew_done,
                                                  &k[i]),
                     0);
    }
    cr_assert(t_run_until_fn(t->evl, both_skews_done, k, 60), "the transactions did not finish");
    settle(t, 0.2);
    cr_assert_eq(k[0].done.calls, 1, "done ran %d times", k[0].done.calls);
    cr_assert_eq(k[1].done.calls, 1, "done ran %d times", k[1].done.calls);
}

Test(retry, serialization_failure_is_retried_and_a_budget_of_one_reports_it, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "retry");
    snprintf(ledger_table, sizeof(ledger_table), "ses_ledger_%ld", (long)getpid());
    t_pg_runf(t.pg, "DROP TABLE IF EXISTS \"%1$s\"; CREATE TABLE \"%1$s\" (id int PRIMARY KEY, val int NOT NULL);"
                "INSERT INTO \"%1$s\" VALUES (1, 1), (2, 1)",
            ledger_table);
    aorm_session *s[2] = {aorm_session_new(t.e, NULL), aorm_session_new(t.e, NULL)};
    skew k[2];

    run_skew(&t, s, k, 3);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(k[i].done.code, 0, "transaction %d failed: %s %s %s", i, aorm_errname(k[i].done.code),
                     k[i].done.sqlstate, k[i].done.msg);
    cr_log_info("attempts: %d and %d", k[0].max_attempt, k[1].max_attempt);
    cr_assert((k[0].max_attempt == 1 && k[1].max_attempt == 2) || (k[0].max_attempt == 2 && k[1].max_attempt == 1),
              "expected exactly one retry, attempts were %d and %d", k[0].max_attempt, k[1].max_attempt);
    long v1 = t_pg_longf(t.pg, "SELECT val FROM \"%s\" WHERE id = 1", ledger_table);
    long v2 = t_pg_longf(t.pg, "SELECT val FROM \"%s\" WHERE id = 2", ledger_table);
    cr_assert((v1 == 2 && v2 == 3) || (v1 == 3 && v2 == 2), "(%ld, %ld) is not the outcome of a serial execution",
              v1, v2);
    for (int i = 0; i < 2; i++) {
        cr_assert_not(aorm_session_in_transaction(s[i]));
        cr_assert_not(aorm_session_rollback_required(s[i]));
    }

    /* a budget of one attempt: the failure goes to done. Fresh sessions:
     * the first ones hold the rows as they last read them, and a plain
     * query does not overwrite objects already in the identity map */
    aorm_session_free(s[0]);
    aorm_session_free(s[1]);
    s[0] = aorm_session_new(t.e, NULL);
    s[1] = aorm_session_new(t.e, NULL);
    t_pg_runf(t.pg, "UPDATE \"%s\" SET val = 1", ledger_table);
    run_skew(&t, s, k, 1);
    int failed = (k[0].done.code != 0) + (k[1].done.code != 0);
    cr_assert_eq(failed, 1, "expected one failed transaction, got %d", failed);
    t_rec *bad = k[0].done.code ? &k[0].done : &k[1].done;
    cr_assert_eq(bad->code, AORM_ESERVER, "%s: %s", aorm_errname(bad->code), bad->msg);
    cr_assert_str_eq(bad->sqlstate, "40001");
    cr_assert_eq(k[0].max_attempt, 1);
    cr_assert_eq(k[1].max_attempt, 1);
    v1 = t_pg_longf(t.pg, "SELECT val FROM \"%s\" WHERE id = 1", ledger_table);
    v2 = t_pg_longf(t.pg, "SELECT val FROM \"%s\" WHERE id = 2", ledger_table);
    cr_assert((v1 == 2 && v2 == 1) || (v1 == 1 && v2 == 2), "(%ld, %ld): only the winner may have written", v1, v2);
    for (int i = 0; i < 2; i++) {
        cr_assert_not(aorm_session_in_transaction(s[i]), "the failed transaction was left open");
        cr_assert_not(aorm_session_rollback_required(s[i]));
    }

    aorm_session_free(s[0]);
    aorm_session_free(s[1]);
    settle(&t, 0.05);
    t_pg_runf(t.pg, "DROP TABLE IF EXISTS \"%s\"", ledger_table);
    env_close(&t);
}

/* ==========================================================================
 * 7. Closing a session with operations queued or in flight
 * ========================================================================== */

Test(closing, free_before_the_loop_runs_cancels_every_queued_operation, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "close1");
    aorm_session *s = aorm_session_new(t.e, NULL);
    t_rec g = {0}, q = {0}, c = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 1}, NULL, t_rec_on_obj, &g), 0);
    cr_assert_eq(aorm_session_query(s, q_author_id(2), NULL, t_rec_on_items, &q), 0);
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    cr_assert_eq(g.calls + q.calls + c.calls, 0, "called back before the loop ran");
    aorm_session_free(s);
    settle(&t, 0.3);
    expect_code(&g, AORM_ECANCELED, "queued get");
    expect_code(&q, AORM_ECANCELED, "queued query");
    expect_code(&c, AORM_ECANCELED, "queued commit");
    cr_assert_eq(stats(&t).statements, 0, "a closed session's operations reached the server");
    t_rec_free(&q);
    env_close(&t);
}

typedef struct free_in_cb {
    t_rec r;
    int64_t id;
} free_in_cb;

static void on_obj_then_free(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    free_in_cb *f = user;
    t_rec_err(&f->r, err);
    f->id = obj ? ((author *)obj)->id : -1;
    aorm_session_free(s);
}

Test(closing, free_from_inside_the_first_callback_cancels_the_rest, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "close2");
    aorm_session *s = aorm_session_new(t.e, NULL);
    free_in_cb g = {0};
    t_rec q = {0}, c = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = 3}, NULL, on_obj_then_free, &g), 0);
    cr_assert_eq(aorm_session_query(s, q_author_id(4), NULL, t_rec_on_items, &q), 0);
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    cr_assert(t_run_until(t.evl, &c.calls, WAIT), "the commit was never called back");
    settle(&t, 0.3);
    cr_assert_eq(g.r.calls, 1);
    cr_assert_eq(g.r.code, 0, "%s", g.r.msg);
    cr_assert_eq(g.id, 3);
    expect_code(&q, AORM_ECANCELED, "query queued behind the freeing callback");
    expect_code(&c, AORM_ECANCELED, "commit queued behind the freeing callback");
    t_rec_free(&q);
    env_close(&t);
}

Test(closing, free_with_a_statement_in_flight_and_a_transaction_open, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "close3");
    aorm_session *s = aorm_session_new(t.e, NULL);
    char name[96];
    snprintf(name, sizeof(name), "%s-never", t.tag);
    author *a = aorm_session_new_object(s, &author_model);
    a->name = aorm_session_strdup(s, name);
    cr_assert_eq(aorm_session_add(s, a), 0);
    t_rec f = {0}, x = {0}, c = {0};
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f), 0);
    cr_assert_eq(aorm_session_execute(s, aorm_raw("SELECT pg_sleep(1.0) AS ses_close3_sleep"), t_rec_on_rows, &x), 0);
    /* a savepoint waits for the statement in front of it (a COMMIT
     * queued here would be pipelined behind the sleep, already sent: its
     * outcome unknown, see test_session_pipeline.c) */
    cr_assert_eq(aorm_session_begin_nested(s, t_rec_on_done, &c), 0);
    await_ok(&t, &f, "flush");
    cr_assert_eq(stats(&t).held, 1);
    /* wait until the server runs the sleep */
    long running = 0;
    for (int i = 0; i < 40 && !running; i++) {
        settle(&t, 0.02);
        running = t_pg_longf(t.pg, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%ses_close3_sleep%%' "
                              "AND pid <> pg_backend_pid() AND state = 'active'");
    }
    cr_assert(running, "the statement never reached the server");
    cr_assert_eq(x.calls, 0);
    aorm_session_free(s);
    expect_code(&x, AORM_ECANCELED, "statement in flight");
    expect_code(&c, AORM_ECANCELED, "queued savepoint");
    cr_assert(t_run_until_fn(t.evl, held_is_zero, &t, 5.0), "the connection was not given back");
    settle(&t, 1.0); /* the late result arrives and goes nowhere */
    cr_assert_eq(f.calls, 1);
    cr_assert_eq(x.calls, 1);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM authors WHERE name = '%s'", name), 0,
                 "the closed session's transaction was committed");
    env_close(&t);
}

/* ==========================================================================
 * 8. Chaining
 * ========================================================================== */

typedef struct chain_ctx {
    int64_t author_id;
    int order[8];
    int n;
    char new_title[96];
    int64_t changed;
    t_rec done;
} chain_ctx;

static void mark(chain_ctx *x, int step) {
    if (x->n < 8) x->order[x->n] = step;
    x->n++;
}

static int ch_get(aorm_chain *c, void *user) {
    chain_ctx *x = user;
    mark(x, 1);
    return aorm_chain_get(c, &author_model, &(author){.id = x->author_id});
}

static int ch_books(aorm_chain *c, void *user) {
    chain_ctx *x = user;
    mark(x, 2);
    author *a = aorm_chain_object(c);
    if (!a) return aorm_chain_fail(c, AORM_ENOTFOUND, "no such author");
    aorm_chain_keep(c, 0, a);
    return aorm_chain_query(c, q_books_of(a->id), NULL);
}

static int ch_edit(aorm_chain *c, void *user) {
    chain_ctx *x = user;
    mark(x, 3);
    aorm_objects *o = aorm_chain_objects(c);
    author *a = aorm_chain_kept(c, 0);
    if (!a || a->id != x->author_id) return aorm_chain_fail(c, AORM_EMISUSE, "lost the kept author");
    if (!o || o->len != 3) return aorm_chain_fail(c, AORM_ENOTFOUND, "expected three books");
    book *b = o->items[1];
    b->title = aorm_session_strdup(aorm_chain_session(c), x->new_title);
    x->changed = b->id;
    return aorm_chain_commit(c);
}

static int ch_after(aorm_chain *c, void *user) {
    mark(user, 4);
    return 0; /* queues nothing: the chain ends */
}

static int ch_stop(aorm_chain *c, void *user) {
    mark(user, 5);
    return aorm_chain_fail(c, AORM_ENOTFOUND, "stopped on purpose");
}

static int ch_bad_query(aorm_chain *c, void *user) {
    mark(user, 6);
    return aorm_chain_execute(c, aorm_raw("SELECT 1 / 0"));
}

static int ch_never(aorm_chain *c, void *user) {
    mark(user, 9);
    return 0;
}

static void on_chain_done(aorm_session *s, const aorm_error *err, void *user) { t_rec_err(&((chain_ctx *)user)->done, err); }

Test(chain, get_query_edit_commit_runs_in_order, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "chain");
    int64_t books[3];
    chain_ctx x = {0};
    x.author_id = make_author(&t, "chained", 3, books);
    snprintf(x.new_title, sizeof(x.new_title), "%s-retitled", t.tag);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_eq(aorm_chain_run(s, AORM_STEPS(ch_get, ch_books, ch_edit, ch_after), on_chain_done, &x), 0);
    cr_assert_eq(x.n, 0, "a step ran inside aorm_chain_run");
    await_ok(&t, &x.done, "the chain");
    settle(&t, 0.1);
    cr_assert_eq(x.done.calls, 1);
    cr_assert_eq(x.n, 4);
    for (int i = 0; i < 4; i++) cr_assert_eq(x.order[i], i + 1, "step %d ran as step %d", x.order[i], i + 1);
    cr_assert_eq(x.changed, books[1]);
    char *title = t_pg_execf(t.pg, "SELECT title FROM books WHERE id = %lld", (long long)books[1]);
    cr_assert_str_eq(title, x.new_title, "the chain's change is not in the database");
    free(title);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM books WHERE author_id = %lld AND title LIKE '%s-chained-book-%%'",
                         (long long)x.author_id, t.tag),
                 2, "other books changed");
    cr_assert_not(aorm_session_in_transaction(s));
    aorm_session_free(s);
    settle(&t, 0.05);
    env_close(&t);
}

Test(chain, aorm_chain_fail_skips_the_rest_and_done_gets_its_error_once, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "chainstop");
    int64_t books[1];
    chain_ctx x = {0};
    x.author_id = make_author(&t, "chained", 1, books);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_eq(aorm_chain_run(s, AORM_STEPS(ch_get, ch_stop, ch_never), on_chain_done, &x), 0);
    await(&t, &x.done, "the stopped chain");
    settle(&t, 0.2);
    cr_assert_eq(x.done.calls, 1);
    cr_assert_eq(x.done.code, AORM_ENOTFOUND, "%s", aorm_errname(x.done.code));
    cr_assert_str_eq(x.done.msg, "stopped on purpose");
    cr_assert_eq(x.n, 2, "%d steps ran", x.n);
    cr_assert_eq(x.order[0], 1);
    cr_assert_eq(x.order[1], 5);
    aorm_session_free(s);
    cr_assert_eq(aorm_chain_run(NULL, AORM_STEPS(ch_get), on_chain_done, &x), AORM_EMISUSE);
    settle(&t, 0.05);
    cr_assert_eq(x.done.calls, 1);
    env_close(&t);
}

Test(chain, a_server_error_skips_the_rest_and_done_gets_it_once, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "chainerr");
    int64_t books[1];
    chain_ctx y = {0};
    y.author_id = make_author(&t, "chained", 1, books);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cr_assert_eq(aorm_chain_run(s, AORM_STEPS(ch_get, ch_bad_query, ch_never), on_chain_done, &y), 0);
    await(&t, &y.done, "the failing chain");
    settle(&t, 0.2);
    cr_assert_eq(y.done.calls, 1);
    cr_assert_eq(y.done.code, AORM_ESERVER, "%s: %s", aorm_errname(y.done.code), y.done.msg);
    cr_assert_str_eq(y.done.sqlstate, "22012");
    cr_assert_eq(y.n, 2, "%d steps ran", y.n);
    cr_assert_eq(y.order[0], 1);
    cr_assert_eq(y.order[1], 6);
    aorm_session_free(s);
    settle(&t, 0.05);
    env_close(&t);
}

Test(chain, a_step_that_finds_nothing_stops_the_chain, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "chainmiss");
    aorm_session *s = aorm_session_new(t.e, NULL);
    chain_ctx z = {.author_id = 999999999};
    cr_assert_eq(aorm_chain_run(s, AORM_STEPS(ch_get, ch_books, ch_never), on_chain_done, &z), 0);
    await(&t, &z.done, "the chain of a missing author");
    settle(&t, 0.2);
    cr_assert_eq(z.done.calls, 1);
    cr_assert_eq(z.done.code, AORM_ENOTFOUND);
    cr_assert_str_eq(z.done.msg, "no such author");
    cr_assert_eq(z.n, 2, "%d steps ran", z.n);
    aorm_session_free(s);
    settle(&t, 0.05);
    env_close(&t);
}

/* ==========================================================================
 * 9. Object states
 * ========================================================================== */

Test(states, transient_pending_persistent_deleted_detached_and_rollback, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "states");
    int64_t none[1];
    int64_t victim = make_author(&t, "victim", 0, none);
    int64_t victim2 = make_author(&t, "victim2", 0, none);
    aorm_session *s = aorm_session_new(t.e, NULL);

    /* transient -> pending -> persistent -> deleted -> detached */
    author *n = aorm_session_new_object(s, &author_model);
    cr_assert_not_null(n);
    n->name = sfmt(s, "%s-new", t.tag);
    cr_assert_eq(aorm_object_state_of(s, n), AORM_TRANSIENT);
    cr_assert_eq(aorm_session_add(s, n), 0);
    cr_assert_eq(aorm_object_state_of(s, n), AORM_PENDING);
    cr_assert_eq(aorm_session_delete(s, n), 0, "delete of a pending object");
    cr_assert_eq(aorm_object_state_of(s, n), AORM_TRANSIENT);
    cr_assert_eq(aorm_session_add(s, n), 0);
    t_rec f1 = {0};
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f1), 0);
    await_ok(&t, &f1, "flush of a new object");
    cr_assert_eq(aorm_object_state_of(s, n), AORM_PERSISTENT);
    cr_assert_neq(n->id, 0);
    cr_assert_eq(aorm_session_delete(s, n), 0);
    cr_assert_eq(aorm_object_state_of(s, n), AORM_DELETED);
    t_rec f2 = {0}, c1 = {0};
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f2), 0);
    await_ok(&t, &f2, "flush of a deleted object");
    cr_assert_eq(aorm_object_state_of(s, n), AORM_DETACHED);
    t_rec gv = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = victim}, NULL, t_rec_on_obj, &gv), 0);
    await_ok(&t, &gv, "get the victim");
    cr_assert_not_null(gv.obj);
    cr_assert_eq(aorm_session_delete(s, gv.obj), 0);
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c1), 0);
    await_ok(&t, &c1, "commit");
    cr_assert_eq(aorm_object_state_of(s, gv.obj), AORM_DETACHED);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM authors WHERE id = %lld", (long long)victim), 0);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM authors WHERE name = '%s-new'", t.tag), 0);

    /* rollback after a flush: the new object is TRANSIENT again, the
     * deleted one PERSISTENT */
    author *n2 = aorm_session_new_object(s, &author_model);
    n2->name = sfmt(s, "%s-rolled-back", t.tag);
    cr_assert_eq(aorm_session_add(s, n2), 0);
    t_rec gv2 = {0}, f3 = {0}, rb = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = victim2}, NULL, t_rec_on_obj, &gv2), 0);
    await_ok(&t, &gv2, "get the second victim");
    author *d = gv2.obj;
    cr_assert_not_null(d);
    cr_assert_eq(aorm_session_delete(s, d), 0);
    cr_assert_eq(aorm_session_flush(s, t_rec_on_done, &f3), 0);
    await_ok(&t, &f3, "flush before rollback");
    cr_assert_eq(aorm_object_state_of(s, n2), AORM_PERSISTENT);
    cr_assert_eq(aorm_object_state_of(s, d), AORM_DETACHED);
    cr_assert_eq(aorm_session_rollback(s, t_rec_on_done, &rb), 0);
    await_ok(&t, &rb, "rollback");
    cr_expect_eq(aorm_object_state_of(s, n2), AORM_TRANSIENT, "a rolled-back INSERT's object is %d",
                 (int)aorm_object_state_of(s, n2));
    cr_expect_eq(aorm_object_state_of(s, d), AORM_PERSISTENT, "a rolled-back DELETE's object is %d",
                 (int)aorm_object_state_of(s, d));
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM authors WHERE name = '%s-rolled-back'", t.tag), 0);
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM authors WHERE id = %lld", (long long)victim2), 1);
    /* the restored object is the session's object for its row again */
    t_rec gv3 = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = victim2}, NULL, t_rec_on_obj, &gv3), 0);
    await_ok(&t, &gv3, "get after rollback");
    cr_expect_eq(gv3.obj, d, "the restored object is not the session's object for its row");

    /* pointers that are not objects of this session */
    aorm_session *other = aorm_session_new(t.e, NULL);
    author *foreign = aorm_session_new_object(other, &author_model);
    cr_assert_eq(aorm_session_add(s, foreign), AORM_EMISUSE);
    cr_assert_eq(aorm_session_delete(s, foreign), AORM_EMISUSE);
    cr_assert_eq(aorm_object_state_of(s, foreign), AORM_DETACHED);
    cr_assert_null(aorm_object_model(s, foreign));
    cr_assert_eq(aorm_object_state_of(other, foreign), AORM_TRANSIENT);
    /* a plain struct (inside a zeroed buffer: the session looks at the
     * bytes in front of the pointer for its header) */
    _Alignas(16) unsigned char buf[512] = {0};
    author *plain = (author *)(buf + 256);
    cr_assert_eq(aorm_session_add(s, plain), AORM_EMISUSE);
    cr_assert_eq(aorm_session_add(s, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_session_add(NULL, n2), AORM_EMISUSE);
    /* a detached object cannot come back */
    cr_assert_eq(aorm_session_add(s, n), AORM_EMISUSE);

    aorm_session_free(other);
    aorm_session_free(s);
    settle(&t, 0.05);
    env_close(&t);
}

Test(states, rollback_discards_unflushed_changes, .timeout = TIMEOUT) {
    env t;
    env_open(&t, "discard");
    int64_t none[1];
    int64_t victim = make_author(&t, "victim", 0, none);
    aorm_session *s = aorm_session_new(t.e, NULL);
    t_rec g = {0}, rb = {0}, c = {0};
    cr_assert_eq(aorm_session_get(s, &author_model, &(author){.id = victim}, NULL, t_rec_on_obj, &g), 0);
    await_ok(&t, &g, "get");
    author *d = g.obj;
    author *n = aorm_session_new_object(s, &author_model);
    n->name = sfmt(s, "%s-pending", t.tag);
    cr_assert_eq(aorm_session_add(s, n), 0);
    cr_assert_eq(aorm_session_delete(s, d), 0);
    cr_assert_eq(aorm_object_state_of(s, n), AORM_PENDING);
    cr_assert_eq(aorm_object_state_of(s, d), AORM_DELETED);
    cr_assert_eq(aorm_session_rollback(s, t_rec_on_done, &rb), 0);
    await_ok(&t, &rb, "rollback of unflushed changes");
    cr_expect_eq(aorm_object_state_of(s, n), AORM_TRANSIENT, "a pending object is %d after rollback",
                 (int)aorm_object_state_of(s, n));
    cr_expect_eq(aorm_object_state_of(s, d), AORM_PERSISTENT, "a deleted object is %d after rollback",
                 (int)aorm_object_state_of(s, d));
    /* discarded changes are not written by the next commit */
    cr_assert_eq(aorm_session_commit(s, t_rec_on_done, &c), 0);
    await_ok(&t, &c, "commit after rollback");
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM authors WHERE name = '%s-pending'", t.tag), 0,
                 "a change discarded by rollback was committed");
    cr_assert_eq(t_pg_longf(t.pg, "SELECT count(*) FROM authors WHERE id = %lld", (long long)victim), 1,
                 "a delete discarded by rollback was committed");
    aorm_session_free(s);
    settle(&t, 0.05);
    env_close(&t);
}
