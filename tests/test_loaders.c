/* test_loaders.c -- eager relationship loading (loaders.h) against the
 * sandbox PostgreSQL with the reference data loaded (bench/schema.sql):
 * authors 1..10000; books 1..100000 with author_id = 1 + (id - 1) / 10
 * and title 'book <id>'; tags 1..50 named 'tag <id>'; book b has the tags
 * 1 + ((b * 7 + k * 13) % 50) for k = 0, 1, 2.
 *
 * What is proved, with the engine's own counters (statements, round
 * trips) and the session's statement counter as deltas around each
 * operation:
 *   - a three-level selectin tree costs one statement and one round trip
 *     per depth, and every collection is complete, correct and ordered;
 *   - the loads of one depth share one round trip (also seen in the SQL
 *     echo);
 *   - many-to-one targets already in the identity map are not fetched;
 *   - 50,000 keys go in one statement (one array parameter);
 *   - reading an unloaded relationship is AORM_EUNLOADED, never a query,
 *     and the N+1 advisor counts it at its call site;
 *   - loaders run on the session's connection inside its transaction;
 *   - joined loads, explicit loads (aorm_session_load), AORM_ORDER_BY and
 *     plan misuse.
 *
 * Isolation: the reference rows are only read. Rows a test writes carry
 * its name and the process id, or live in a transaction that is rolled
 * back; this file's own tables (ldr_shelves, ldr_items) are created with
 * IF NOT EXISTS under an advisory lock.
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
#include "aorm/loaders.h"

#define TIMEOUT 120

/* ==========================================================================
 * Load plans (static constants, as loaders.h recommends)
 * ========================================================================== */

static const aorm_load_plan *const plan_tree =
    AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)));
static const aorm_load_plan *const plan_books = AORM_PLAN(AORM_SELECTIN(author, books));
static const aorm_load_plan *const plan_book_author = AORM_PLAN(AORM_SELECTIN(book, author));
static const aorm_load_plan *const plan_author_and_tags =
    AORM_PLAN(AORM_SELECTIN(book, author), AORM_SELECTIN(book, tags));
static const aorm_load_plan *const plan_joined_author = AORM_PLAN(AORM_JOINED(book, author));
static const aorm_load_plan *const plan_joined_books = AORM_PLAN(AORM_JOINED(author, books));
static const aorm_load_plan *const plan_joined_then_selectin =
    AORM_PLAN(AORM_JOINED_THEN(author, books, AORM_SELECTIN(book, tags)));
static const aorm_load_plan *const plan_joined_then_joined =
    AORM_PLAN(AORM_JOINED_THEN(author, books, AORM_JOINED(book, tags)));
/* misuse: book.tags at the root of an author query; a child load of the
 * wrong model; a field that is not a relationship */
static const aorm_load_plan *const plan_wrong_root = AORM_PLAN(AORM_SELECTIN(book, tags));
static const aorm_load_plan *const plan_wrong_child =
    AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(author, books)));
static const aorm_load_plan *const plan_not_a_rel =
    AORM_PLAN({.model = &author_model, .offset = offsetof(author, name), .strategy = AORM_LOAD_SELECTIN});

/* ==========================================================================
 * This file's models: collections ordered by AORM_ORDER_BY
 * ========================================================================== */

typedef struct ldr_shelf {
    int64_t id;
    char *name;
    aorm_list by_rank;  /* ldr_item *, rank descending (ties: id ascending) */
    aorm_list by_label; /* ldr_item *, label ascending */
} ldr_shelf;

typedef struct ldr_item {
    int64_t id;
    int64_t shelf_id;
    int32_t rank;
    char *label;
} ldr_item;

extern const aorm_model ldr_shelf_model, ldr_item_model;

static const aorm_column ldr_shelf_columns[] = {
    AORM_COLUMN(ldr_shelf, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(ldr_shelf, name, AORM_TEXT, 0),
};
static const aorm_relationship ldr_shelf_relationships[] = {
    AORM_ONE_TO_MANY(ldr_shelf, by_rank, ldr_item, shelf_id, AORM_ORDER_BY(ldr_item, rank, true)),
    AORM_ONE_TO_MANY(ldr_shelf, by_label, ldr_item, shelf_id, AORM_ORDER_BY(ldr_item, label, false)),
};
const aorm_model ldr_shelf_model = {
    AORM_MODEL_OF(ldr_shelf, "ldr_shelves"),
    AORM_COLUMNS(ldr_shelf_columns),
    AORM_RELATIONSHIPS(ldr_shelf_relationships),
};

static const aorm_column ldr_item_columns[] = {
    AORM_COLUMN(ldr_item, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(ldr_item, shelf_id, AORM_INT8, 0),
    AORM_COLUMN(ldr_item, rank, AORM_INT4, 0),
    AORM_COLUMN(ldr_item, label, AORM_TEXT, 0),
};
static const aorm_foreign_key ldr_item_foreign_keys[] = {
    AORM_FOREIGN_KEY(ldr_item, shelf_id, ldr_shelf, id),
};
const aorm_model ldr_item_model = {
    AORM_MODEL_OF(ldr_item, "ldr_items"),
    AORM_COLUMNS(ldr_item_columns),
    AORM_FOREIGN_KEYS(ldr_item_foreign_keys),
};

static const aorm_load_plan *const plan_shelf_orders =
    AORM_PLAN(AORM_SELECTIN(ldr_shelf, by_rank), AORM_SELECTIN(ldr_shelf, by_label));
static const aorm_load_plan *const plan_shelf_joined_rank = AORM_PLAN(AORM_JOINED(ldr_shelf, by_rank));
static const aorm_load_plan *const plan_shelf_joined_label = AORM_PLAN(AORM_JOINED(ldr_shelf, by_label));

/* Idempotent, serialized by an advisory lock held to the commit. */
static void ensure_shelf_tables(PGconn *pg) {
    free(t_pg_exec(pg, "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74311);"
                       "CREATE TABLE IF NOT EXISTS ldr_shelves (id bigserial PRIMARY KEY, name text NOT NULL);"
                       "CREATE TABLE IF NOT EXISTS ldr_items (id bigserial PRIMARY KEY, "
                       "  shelf_id bigint NOT NULL REFERENCES ldr_shelves(id), rank int NOT NULL, "
                       "  label text NOT NULL);"
                       "COMMIT"));
}

typedef struct xres {
    int done;
    int64_t affected;
    aorm_error *err;
} xres;

static void on_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) {
    (void)s;
    xres *r = user;
    r->done++;
    if (err) r->err = aorm_error_copy(err);
    else r->affected = aorm_result_affected(res);
}

/* ==========================================================================
 * Statements
 * ========================================================================== */

/* authors lo..hi, ordered by id */
static aorm_stmt *authors_between(int64_t lo, int64_t hi) {
    aorm_stmt *q = aorm_select(&author_model);
    aorm_where(q, aorm_between(AORM_COL(author, id), aorm_int8(lo), aorm_int8(hi)));
    aorm_order_by(q, AORM_COL(author, id), AORM_ASC);
    return q;
}

/* books lo..hi, ordered by id */
static aorm_stmt *books_between(int64_t lo, int64_t hi) {
    aorm_stmt *q = aorm_select(&book_model);
    aorm_where(q, aorm_between(AORM_COL(book, id), aorm_int8(lo), aorm_int8(hi)));
    aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
    return q;
}

/* ==========================================================================
 * Checks against the reference data
 * ========================================================================== */

static int64_t author_of_book(int64_t b) { return 1 + (b - 1) / 10; }

/* The tag ids of book b, ascending. */
static void expected_tags(int64_t b, int64_t out[3]) {
    for (int k = 0; k < 3; k++) out[k] = 1 + ((b * 7 + k * 13) % 50);
    for (int i = 1; i < 3; i++)
        for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
            int64_t x = out[j];
            out[j] = out[j - 1];
            out[j - 1] = x;
        }
}

/* Book b's tags, read through AORM_GET_REL: exactly the expected ids,
 * ascending, named 'tag <id>', one object per tag id in the session
 * (tag_objs[id] remembers the first one seen). */
static void check_book_tags(aorm_session *s, book *b, tag **tag_objs) {
    aorm_list *tl = NULL;
    cr_assert_eq(AORM_GET_REL(s, book, b, tags, &tl), 0, "book %lld: tags not loaded: %s", (long long)b->id,
                 aorm_session_errmsg(s));
    cr_assert_eq(tl, &b->tags);
    cr_assert_eq(tl->len, 3, "book %lld has %zu tags", (long long)b->id, tl->len);
    int64_t want[3];
    expected_tags(b->id, want);
    for (int k = 0; k < 3; k++) {
        tag *g = AORM_LIST_AT(*tl, tag, k);
        cr_assert_not_null(g);
        cr_assert_eq(g->id, want[k], "book %lld tag %d: id %lld, expected %lld", (long long)b->id, k,
                     (long long)g->id, (long long)want[k]);
        if (!tag_objs[g->id]) {
            char name[32];
            snprintf(name, sizeof(name), "tag %lld", (long long)g->id);
            cr_assert_str_eq(g->name, name);
            tag_objs[g->id] = g;
        }
        cr_assert_eq(g, tag_objs[g->id], "tag %lld: two objects in one session", (long long)g->id);
    }
}

/* Author a's books: the ten reference books in ascending id order, each
 * pointing back at a. With tags: each book's tags too. Returns the
 * number of tag links seen. */
static size_t check_author_books(aorm_session *s, author *a, bool with_tags, tag **tag_objs) {
    aorm_list *bl = NULL;
    cr_assert_eq(AORM_GET_REL(s, author, a, books, &bl), 0, "author %lld: books not loaded: %s", (long long)a->id,
                 aorm_session_errmsg(s));
    cr_assert_eq(bl, &a->books);
    cr_assert_eq(bl->len, 10, "author %lld has %zu books", (long long)a->id, bl->len);
    size_t links = 0;
    for (size_t j = 0; j < bl->len; j++) {
        book *b = AORM_LIST_AT(*bl, book, j);
        cr_assert_not_null(b);
        int64_t want = (a->id - 1) * 10 + 1 + (int64_t)j;
        cr_assert_eq(b->id, want, "author %lld book %zu: id %lld, expected %lld", (long long)a->id, j,
                     (long long)b->id, (long long)want);
        cr_assert_eq(b->author_id, a->id);
        char title[32];
        snprintf(title, sizeof(title), "book %lld", (long long)b->id);
        cr_assert_str_eq(b->title, title);
        author *back = NULL;
        cr_assert_eq(AORM_GET_REL(s, book, b, author, &back), 0, "book %lld: back-pointer not loaded: %s",
                     (long long)b->id, aorm_session_errmsg(s));
        cr_assert_eq(back, a, "book %lld does not point back at its author", (long long)b->id);
        cr_assert_eq(b->author, a);
        if (with_tags) {
            check_book_tags(s, b, tag_objs);
            links += b->tags.len;
        }
    }
    return links;
}

/* ==========================================================================
 * a. a three-level selectin tree: 3 statements, 3 round trips
 * ========================================================================== */

Test(loaders, selectin_tree_three_levels, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    char msg[256];
    cr_assert_eq(aorm_load_plan_validate(&author_model, plan_tree, msg, sizeof(msg)), 0, "%s", msg);

    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, authors_between(1, 1000), plan_tree, &r);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 3, 3, "authors 1..1000 with books and tags");

    cr_assert_eq(r.len, 1000);
    tag *tag_objs[51] = {0};
    size_t nbooks = 0, nlinks = 0;
    for (size_t i = 0; i < r.len; i++) {
        author *a = r.items[i];
        cr_assert_eq(a->id, (int64_t)i + 1);
        cr_assert_eq(aorm_rel_loaded(s, a, AORM_REL(author, books)), 1);
        nlinks += check_author_books(s, a, true, tag_objs);
        nbooks += a->books.len;
    }
    cr_assert_eq(nbooks, 10000);
    cr_assert_eq(nlinks, 30000);
    /* every tag is reached by the books of 1..10000 */
    for (int id = 1; id <= 50; id++) cr_assert_not_null(tag_objs[id], "tag %d never seen", id);

    /* reading them all sent nothing */
    settle(&t);
    mark m2 = mark_now(&t, s);
    expect_cost(&m1, &m2, 0, 0, "reading loaded relationships");

    qres_free(&r);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * b. two relationships of one depth: one round trip for both
 * ========================================================================== */

static int find_echo(const env *t, const char *a, const char *b, const char *c) {
    int found = -1, n = 0;
    for (int i = 0; i < t->nsql; i++)
        if (strstr(t->sql[i], a) && (!b || strstr(t->sql[i], b)) && (!c || strstr(t->sql[i], c))) {
            found = i;
            n++;
        }
    return n == 1 ? found : -1 - n;
}

Test(loaders, one_round_trip_per_depth, .timeout = TIMEOUT) {
    env t;
    env_open(&t, true);
    aorm_session *s = session_new(&t);

    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, books_between(1, 100), plan_author_and_tags, &r);
    mark m1 = mark_now(&t, s);
    /* root, then book.author and book.tags together */
    expect_cost(&m0, &m1, 3, 2, "books 1..100 with author and tags");

    /* the echo: the root statement and both loads, each exactly once */
    cr_assert_eq(t.nsql, 3, "%d statements echoed", t.nsql);
    int root = find_echo(&t, "FROM \"books\"", "$1=1, $2=100", NULL);
    int authors = find_echo(&t, "FROM \"authors\"", "= ANY($1)", "10 rows");
    int tags = find_echo(&t, "\"book_tags\"", "= ANY($1)", "300 rows");
    cr_assert_geq(root, 0, "root statement not echoed once:\n%s\n%s\n%s", t.sql[0], t.sql[1], t.sql[2]);
    cr_assert_geq(authors, 0, "book.author load not echoed once:\n%s\n%s\n%s", t.sql[0], t.sql[1], t.sql[2]);
    cr_assert_geq(tags, 0, "book.tags load not echoed once:\n%s\n%s\n%s", t.sql[0], t.sql[1], t.sql[2]);
    cr_assert_eq(root, 0, "the root statement comes back first");

    cr_assert_eq(r.len, 100);
    tag *tag_objs[51] = {0};
    author *by_id[11] = {0};
    for (size_t i = 0; i < r.len; i++) {
        book *b = r.items[i];
        cr_assert_eq(b->id, (int64_t)i + 1);
        author *a = NULL;
        cr_assert_eq(AORM_GET_REL(s, book, b, author, &a), 0, "%s", aorm_session_errmsg(s));
        cr_assert_not_null(a);
        cr_assert_eq(a->id, author_of_book(b->id));
        char name[32];
        snprintf(name, sizeof(name), "author %lld", (long long)a->id);
        cr_assert_str_eq(a->name, name);
        if (!by_id[a->id]) by_id[a->id] = a;
        cr_assert_eq(a, by_id[a->id], "one object per author");
        check_book_tags(s, b, tag_objs);
    }
    for (int i = 1; i <= 10; i++) cr_assert_not_null(by_id[i]);

    qres_free(&r);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * c. many-to-one targets already in the session are not fetched again
 * ========================================================================== */

static void check_book_authors(aorm_session *s, const qres *r, author *const *expect_objs) {
    cr_assert_eq(r->len, 100);
    for (size_t i = 0; i < r->len; i++) {
        book *b = r->items[i];
        author *a = NULL;
        cr_assert_eq(AORM_GET_REL(s, book, b, author, &a), 0, "%s", aorm_session_errmsg(s));
        cr_assert_not_null(a);
        cr_assert_eq(a->id, author_of_book(b->id));
        if (expect_objs) cr_assert_eq(a, expect_objs[a->id], "book %lld: not the session's author object", (long long)b->id);
    }
}

Test(loaders, many_to_one_uses_identity_map, .timeout = TIMEOUT) {
    env t;
    env_open(&t, true);

    /* the same query and plan twice in one session */
    aorm_session *s = session_new(&t);
    qres r1, r2;
    mark m0 = mark_now(&t, s);
    query_ok(&t, s, books_between(1, 100), plan_book_author, &r1);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 2, 2, "first run");
    author *objs[11] = {0};
    for (size_t i = 0; i < r1.len; i++) {
        book *b = r1.items[i];
        objs[b->author->id] = b->author;
    }
    check_book_authors(s, &r1, objs);

    query_ok(&t, s, books_between(1, 100), plan_book_author, &r2);
    mark m2 = mark_now(&t, s);
    expect_cost(&m1, &m2, 1, 1, "second run: the root statement only");
    check_book_authors(s, &r2, objs);
    for (size_t i = 0; i < r2.len; i++) cr_assert_eq(r2.items[i], r1.items[i], "identity map: same book objects");
    qres_free(&r1);
    qres_free(&r2);
    aorm_session_free(s);

    /* every author already loaded by a get: the first load sends none */
    s = session_new(&t);
    author keys[10];
    const void *kp[10];
    for (int i = 0; i < 10; i++) {
        memset(&keys[i], 0, sizeof(keys[i]));
        keys[i].id = i + 1;
        kp[i] = &keys[i];
    }
    qres g = {0};
    cr_assert_eq(aorm_session_get_many(s, &author_model, kp, 10, NULL, on_objects, &g), 0);
    wait_done(&t, &g.done, "get_many");
    cr_assert_null(g.err);
    cr_assert_eq(g.len, 10);
    memset(objs, 0, sizeof(objs));
    for (int i = 0; i < 10; i++) {
        author *a = g.items[i];
        cr_assert_eq(a->id, i + 1);
        objs[i + 1] = a;
    }
    mark m3 = mark_now(&t, s);
    query_ok(&t, s, books_between(1, 100), plan_book_author, &r1);
    mark m4 = mark_now(&t, s);
    expect_cost(&m3, &m4, 1, 1, "authors already got: the root statement only");
    check_book_authors(s, &r1, objs);
    qres_free(&r1);
    qres_free(&g);
    aorm_session_free(s);

    /* half of them present: only the other half is asked for */
    s = session_new(&t);
    g = (qres){0};
    cr_assert_eq(aorm_session_get_many(s, &author_model, kp, 5, NULL, on_objects, &g), 0);
    wait_done(&t, &g.done, "get_many");
    cr_assert_null(g.err);
    memset(objs, 0, sizeof(objs));
    for (int i = 0; i < 5; i++) objs[i + 1] = g.items[i];
    echo_clear(&t);
    m3 = mark_now(&t, s);
    query_ok(&t, s, books_between(1, 100), plan_book_author, &r1);
    m4 = mark_now(&t, s);
    expect_cost(&m3, &m4, 2, 2, "authors 1..5 present");
    cr_assert_eq(t.nsql, 2);
    cr_assert_geq(find_echo(&t, "FROM \"authors\"", "= ANY($1)", "5 rows"), 0,
                  "the authors load should fetch the 5 missing authors only: %s", t.sql[1]);
    for (size_t i = 0; i < r1.len; i++) {
        book *b = r1.items[i];
        cr_assert_eq(b->author->id, author_of_book(b->id));
        if (b->author->id <= 5) cr_assert_eq(b->author, objs[b->author->id]);
    }
    qres_free(&r1);
    qres_free(&g);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * d. 50,000 keys in one statement
 * ========================================================================== */

Test(loaders, fifty_thousand_keys_one_statement, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);

    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, authors_between(1, 5000), plan_tree, &r);
    mark m1 = mark_now(&t, s);
    /* books: 5,000 author keys; tags: 50,000 book keys, one array each */
    expect_cost(&m0, &m1, 3, 3, "authors 1..5000 with books and tags");

    cr_assert_eq(r.len, 5000);
    size_t nbooks = 0, nlinks = 0;
    for (size_t i = 0; i < r.len; i++) {
        author *a = r.items[i];
        cr_assert_eq(a->id, (int64_t)i + 1);
        cr_assert_eq(a->books.len, 10, "author %lld has %zu books", (long long)a->id, a->books.len);
        nbooks += a->books.len;
        for (size_t j = 0; j < a->books.len; j++) {
            book *b = a->books.items[j];
            cr_assert_eq(b->id, (a->id - 1) * 10 + 1 + (int64_t)j);
            cr_assert_eq(b->author, a);
            cr_assert_eq(b->tags.len, 3, "book %lld has %zu tags", (long long)b->id, b->tags.len);
            nlinks += b->tags.len;
        }
    }
    cr_assert_eq(nbooks, 50000);
    cr_assert_eq(nlinks, 150000);
    /* the last book's tags exactly, through the checked accessor */
    tag *tag_objs[51] = {0};
    author *last = r.items[4999];
    cr_assert_eq(check_author_books(s, last, true, tag_objs), 30);

    qres_free(&r);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * e. reading an unloaded relationship: an error, never a query
 * ========================================================================== */

Test(loaders, unloaded_read_is_an_error_and_advised, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    aorm_advisor_enable(true);
    aorm_advisor_reset();
    cr_assert_eq(aorm_advisor_count(), 0);

    qres r;
    query_ok(&t, s, authors_between(1, 3), NULL, &r);
    cr_assert_eq(r.len, 3);
    settle(&t);
    mark m0 = mark_now(&t, s);

    int line = 0;
    for (size_t i = 0; i < r.len; i++) {
        author *a = r.items[i];
        aorm_list *books = NULL;
        cr_assert_eq(aorm_rel_loaded(s, a, AORM_REL(author, books)), 0);
        line = __LINE__; int rc = AORM_GET_REL(s, author, a, books, &books);
        cr_assert_eq(rc, AORM_EUNLOADED, "got %s", aorm_errname(rc));
        const char *msg = aorm_session_errmsg(s);
        cr_assert(strstr(msg, "author.books"), "message does not name author.books: %s", msg);
        cr_assert(strstr(msg, "AORM_SELECTIN(author, books)"), "message does not name the option: %s", msg);
        cr_assert_eq(a->books.len, 0);
        cr_assert_null(a->books.items);
    }
    /* never a statement, now or later */
    settle(&t);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 0, 0, "unloaded reads");

    cr_assert_eq(aorm_advisor_count(), 3);
    char *report = aorm_advisor_report();
    cr_assert_not_null(report);
    char site[512];
    snprintf(site, sizeof(site), "%s:%d: 3 reads of unloaded author.books", __FILE__, line);
    cr_assert(strstr(report, site), "report does not name %s:\n%s", site, report);
    cr_assert(strstr(report, "AORM_SELECTIN(author, books)"), "report does not name the option:\n%s", report);
    free(report);

    /* a many-to-one too, from a plain query of books */
    qres rb;
    query_ok(&t, s, books_between(1, 2), NULL, &rb);
    mark m2 = mark_now(&t, s);
    author *au = NULL;
    cr_assert_eq(AORM_GET_REL(s, book, rb.items[0], author, &au), AORM_EUNLOADED);
    cr_assert_null(au);
    cr_assert(strstr(aorm_session_errmsg(s), "book.author"), "%s", aorm_session_errmsg(s));
    cr_assert(strstr(aorm_session_errmsg(s), "AORM_SELECTIN(book, author)"), "%s", aorm_session_errmsg(s));
    cr_assert_eq(aorm_advisor_count(), 4);
    settle(&t);
    mark m3 = mark_now(&t, s);
    expect_cost(&m2, &m3, 0, 0, "unloaded many-to-one read");

    /* an object of another session: misuse, not counted */
    aorm_session *other = session_new(&t);
    qres ro;
    query_ok(&t, other, authors_between(1, 1), NULL, &ro);
    aorm_list *sl = NULL;
    cr_assert_eq(AORM_GET_REL(s, author, ro.items[0], books, &sl), AORM_EMISUSE);
    cr_assert_eq(aorm_advisor_count(), 4);
    qres_free(&ro);
    aorm_session_free(other);

    /* switched off: still the error, not counted */
    aorm_advisor_enable(false);
    aorm_list *bl = NULL;
    cr_assert_eq(AORM_GET_REL(s, author, r.items[0], books, &bl), AORM_EUNLOADED);
    cr_assert_eq(aorm_advisor_count(), 4);
    aorm_advisor_reset();
    cr_assert_eq(aorm_advisor_count(), 0);

    qres_free(&r);
    qres_free(&rb);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * f. loaders inside a transaction see its uncommitted rows
 * ========================================================================== */

Test(loaders, loaders_run_in_the_transaction, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    PGconn *pg = t_pg();
    aorm_session *s = session_new(&t);
    char name[96];
    snprintf(name, sizeof(name), "ldr-tx-%ld", (long)getpid());

    /* a new author with two new books, flushed, not committed */
    author *a = aorm_session_new_object(s, &author_model);
    cr_assert_not_null(a);
    a->name = aorm_session_strdup(s, name);
    book *nb[2];
    for (int i = 0; i < 2; i++) {
        nb[i] = aorm_session_new_object(s, &book_model);
        cr_assert_not_null(nb[i]);
        char title[128];
        snprintf(title, sizeof(title), "%s-book-%d", name, i);
        nb[i]->title = aorm_session_strdup(s, title);
        nb[i]->year = 2000 + i;
        nb[i]->price = 10.5 + i;
        nb[i]->author = a;
    }
    a->books.items = aorm_session_alloc(s, 2 * sizeof(void *));
    cr_assert_not_null(a->books.items);
    a->books.items[0] = nb[0];
    a->books.items[1] = nb[1];
    a->books.len = a->books.cap = 2;
    cr_assert_eq(aorm_session_add(s, a), 0);
    session_flush(&t, s);
    cr_assert(aorm_session_in_transaction(s));
    cr_assert_gt(a->id, 10000);
    for (int i = 0; i < 2; i++) {
        cr_assert_gt(nb[i]->id, 100000);
        cr_assert_eq(nb[i]->author_id, a->id);
    }

    /* a third book inserted by SQL in the same transaction: not in the
     * identity map, so only a load that runs in the transaction finds it */
    aorm_stmt *ins = aorm_raw("INSERT INTO books(author_id, title, year, price) VALUES (:a, :t, 2002, 12.5)");
    char title3[128];
    snprintf(title3, sizeof(title3), "%s-book-2", name);
    aorm_bind(ins, "a", aorm_int8(a->id));
    aorm_bind(ins, "t", aorm_text(title3));
    xres x = {0};
    cr_assert_eq(aorm_session_execute(s, ins, on_rows, &x), 0);
    wait_done(&t, &x.done, "insert");
    cr_assert_null(x.err, "insert: %s", x.err ? x.err->message : "");
    cr_assert_eq(x.affected, 1);

    /* nobody else sees any of it */
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM books WHERE author_id > 10000 AND title LIKE 'ldr-tx-%'"), 0);

    mark m0 = mark_now(&t, s);
    aorm_stmt *q = aorm_select(&author_model);
    aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(a->id)));
    qres r;
    query_ok(&t, s, q, plan_books, &r);
    mark m1 = mark_now(&t, s);
    cr_assert_eq(m1.session - m0.session, 2);
    cr_assert_eq(m1.statements - m0.statements, 2);
    cr_assert_eq(r.len, 1);
    cr_assert_eq(r.items[0], a, "identity map: the flushed author object");
    aorm_list *bl = NULL;
    cr_assert_eq(AORM_GET_REL(s, author, a, books, &bl), 0, "%s", aorm_session_errmsg(s));
    cr_assert_eq(bl->len, 3, "the load saw %zu of the transaction's 3 books", bl->len);
    cr_assert_eq(bl->items[0], nb[0]);
    cr_assert_eq(bl->items[1], nb[1]);
    book *b3 = bl->items[2];
    cr_assert_str_eq(b3->title, title3);
    cr_assert_gt(b3->id, nb[1]->id);
    cr_assert_eq(b3->author, a);
    cr_assert_eq(aorm_object_state_of(s, b3), AORM_PERSISTENT);

    /* another session (autocommit, other connections) sees none of it */
    aorm_session *s2 = session_new(&t);
    q = aorm_select(&author_model);
    aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(a->id)));
    qres r2;
    query_ok(&t, s2, q, plan_books, &r2);
    cr_assert_eq(r2.len, 0);
    q = aorm_select(&book_model);
    aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(a->id)));
    qres r3;
    query_ok(&t, s2, q, NULL, &r3);
    cr_assert_eq(r3.len, 0);
    /* an existing author loaded by the other session: its books are the
     * committed ten */
    qres r4;
    query_ok(&t, s2, authors_between(7, 7), plan_books, &r4);
    cr_assert_eq(r4.len, 1);
    check_author_books(s2, r4.items[0], false, NULL);

    session_rollback(&t, s);
    cr_assert_not(aorm_session_in_transaction(s));
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM authors WHERE name = '%s'", name);
    cr_assert_eq(t_pg_long(pg, sql), 0);

    qres_free(&r);
    qres_free(&r2);
    qres_free(&r3);
    qres_free(&r4);
    aorm_error_free(x.err);
    aorm_session_free(s2);
    aorm_session_free(s);
    PQfinish(pg);
    env_close(&t);
}

/* ==========================================================================
 * g. joined loads: one statement, parents de-duplicated
 * ========================================================================== */

Test(loaders, joined_loads, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);

    /* many-to-one */
    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, books_between(1, 20), plan_joined_author, &r);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "books 1..20 joined with their author");
    cr_assert_eq(r.len, 20);
    author *seen[3] = {0};
    for (size_t i = 0; i < r.len; i++) {
        book *b = r.items[i];
        cr_assert_eq(b->id, (int64_t)i + 1);
        author *a = NULL;
        cr_assert_eq(AORM_GET_REL(s, book, b, author, &a), 0, "%s", aorm_session_errmsg(s));
        cr_assert_not_null(a);
        cr_assert_eq(a->id, author_of_book(b->id));
        if (!seen[a->id]) seen[a->id] = a;
        cr_assert_eq(a, seen[a->id]);
    }
    cr_assert_neq(seen[1], seen[2]);
    qres_free(&r);
    aorm_session_free(s);

    /* one-to-many: 50 joined rows, 5 authors */
    s = session_new(&t);
    m0 = mark_now(&t, s);
    query_ok(&t, s, authors_between(1, 5), plan_joined_books, &r);
    m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "authors 1..5 joined with their books");
    cr_assert_eq(r.len, 5, "parents repeated by the join must be de-duplicated: %zu returned", r.len);
    for (size_t i = 0; i < r.len; i++) {
        author *a = r.items[i];
        cr_assert_eq(a->id, (int64_t)i + 1, "authors in query order");
        aorm_list *bl = NULL;
        cr_assert_eq(AORM_GET_REL(s, author, a, books, &bl), 0, "%s", aorm_session_errmsg(s));
        cr_assert_eq(bl->len, 10, "author %lld: %zu books", (long long)a->id, bl->len);
        for (size_t j = 0; j < bl->len; j++) {
            book *b = bl->items[j];
            cr_assert_eq(b->id, (a->id - 1) * 10 + 1 + (int64_t)j, "author %lld book %zu: id %lld", (long long)a->id,
                         j, (long long)b->id);
            cr_assert_eq(b->author_id, a->id);
        }
    }
    qres_free(&r);
    aorm_session_free(s);

    /* joined first level, selectin below it; a joined load below the
     * first level runs as selectin: 2 statements either way */
    const aorm_load_plan *const plans[2] = {plan_joined_then_selectin, plan_joined_then_joined};
    for (int p = 0; p < 2; p++) {
        s = session_new(&t);
        m0 = mark_now(&t, s);
        query_ok(&t, s, authors_between(11, 13), plans[p], &r);
        m1 = mark_now(&t, s);
        expect_cost(&m0, &m1, 2, 2, p == 0 ? "joined then selectin" : "joined then joined");
        cr_assert_eq(r.len, 3);
        tag *tag_objs[51] = {0};
        for (size_t i = 0; i < r.len; i++) {
            author *a = r.items[i];
            cr_assert_eq(a->id, (int64_t)i + 11);
            cr_assert_eq(a->books.len, 10);
            for (size_t j = 0; j < a->books.len; j++) check_book_tags(s, a->books.items[j], tag_objs);
        }
        qres_free(&r);
        aorm_session_free(s);
    }
    env_close(&t);
}

/* ==========================================================================
 * h. explicit loads: aorm_session_load
 * ========================================================================== */

Test(loaders, explicit_load, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);

    qres r;
    query_ok(&t, s, authors_between(1, 100), NULL, &r);
    cr_assert_eq(r.len, 100);
    for (size_t i = 0; i < r.len; i++) cr_assert_eq(aorm_rel_loaded(s, r.items[i], AORM_REL(author, books)), 0);

    /* 100 authors: one statement */
    mark m0 = mark_now(&t, s);
    load(&t, s, r.items, r.len, plan_books);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "load books of 100 authors");
    for (size_t i = 0; i < r.len; i++) check_author_books(s, r.items[i], false, NULL);

    /* again: reloaded (refreshed), one statement, same book objects */
    book *first = ((author *)r.items[0])->books.items[0];
    load(&t, s, r.items, r.len, plan_books);
    mark m2 = mark_now(&t, s);
    expect_cost(&m1, &m2, 1, 1, "load again");
    for (size_t i = 0; i < r.len; i++) check_author_books(s, r.items[i], false, NULL);
    cr_assert_eq(((author *)r.items[0])->books.items[0], first);

    /* one author got by key: one statement */
    author key = {.id = 321};
    qres g = {0};
    cr_assert_eq(aorm_session_get_many(s, &author_model, (const void *const[]){&key}, 1, NULL, on_objects, &g), 0);
    wait_done(&t, &g.done, "get");
    cr_assert_null(g.err);
    cr_assert_eq(g.len, 1);
    author *one = g.items[0];
    cr_assert_eq(one->id, 321);
    mark m3 = mark_now(&t, s);
    load(&t, s, (void *const[]){one}, 1, plan_books);
    mark m4 = mark_now(&t, s);
    expect_cost(&m3, &m4, 1, 1, "load books of one author");
    check_author_books(s, one, false, NULL);

    /* a deeper plan on one author: one statement per depth */
    load(&t, s, (void *const[]){one}, 1, plan_tree);
    mark m5 = mark_now(&t, s);
    expect_cost(&m4, &m5, 2, 2, "load books and tags of one author");
    tag *tag_objs[51] = {0};
    cr_assert_eq(check_author_books(s, one, true, tag_objs), 30);

    /* no objects: nothing to send, still one callback */
    load(&t, s, NULL, 0, plan_books);
    settle(&t);
    mark m6 = mark_now(&t, s);
    expect_cost(&m5, &m6, 0, 0, "load of no objects");

    qres_free(&r);
    qres_free(&g);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * i. collections follow AORM_ORDER_BY
 * ========================================================================== */

static int64_t insert_shelf(PGconn *pg, const char *name) {
    char sql[256];
    snprintf(sql, sizeof(sql), "INSERT INTO ldr_shelves(name) VALUES ('%s') RETURNING id", name);
    return t_pg_long(pg, sql);
}

static int64_t insert_item(PGconn *pg, int64_t shelf, int rank, const char *label) {
    char sql[256];
    snprintf(sql, sizeof(sql), "INSERT INTO ldr_items(shelf_id, rank, label) VALUES (%" PRId64 ", %d, '%s') RETURNING id",
             shelf, rank, label);
    return t_pg_long(pg, sql);
}

/* The shelves' fixture: two shelves whose items were inserted so that id,
 * rank and label orders all differ; ranks repeat (ties go by id). */
static const int shelf_ranks[2][6] = {{3, 7, 1, 7, 5, 2}, {4, 4, 9, 0, 4, 6}};
static const char *const shelf_labels[2][6] = {{"kiwi", "apple", "fig", "date", "lime", "cherry"},
                                               {"plum", "grape", "banana", "mango", "olive", "lemon"}};

typedef struct shelves {
    char prefix[64];
    int64_t shelf_ids[2];
    int64_t item_ids[2][6];
} shelves;

static void shelves_create(PGconn *pg, shelves *f, const char *test) {
    ensure_shelf_tables(pg);
    snprintf(f->prefix, sizeof(f->prefix), "ldr-%s-%ld-", test, (long)getpid());
    for (int sh = 0; sh < 2; sh++) {
        char name[96];
        snprintf(name, sizeof(name), "%s%d", f->prefix, sh);
        f->shelf_ids[sh] = insert_shelf(pg, name);
        for (int i = 0; i < 6; i++)
            f->item_ids[sh][i] = insert_item(pg, f->shelf_ids[sh], shelf_ranks[sh][i], shelf_labels[sh][i]);
    }
}

static void shelves_drop(PGconn *pg, const shelves *f) {
    char sql[256];
    snprintf(sql, sizeof(sql), "DELETE FROM ldr_items WHERE shelf_id IN (%" PRId64 ", %" PRId64 ")",
             f->shelf_ids[0], f->shelf_ids[1]);
    free(t_pg_exec(pg, sql));
    snprintf(sql, sizeof(sql), "DELETE FROM ldr_shelves WHERE id IN (%" PRId64 ", %" PRId64 ")", f->shelf_ids[0],
             f->shelf_ids[1]);
    free(t_pg_exec(pg, sql));
}

/* The fixture's shelves, in id order. */
static aorm_stmt *shelves_query(const shelves *f) {
    char like[96];
    snprintf(like, sizeof(like), "%s%%", f->prefix);
    aorm_stmt *q = aorm_select(&ldr_shelf_model);
    aorm_where(q, aorm_like(AORM_COL(ldr_shelf, name), aorm_text(like)));
    aorm_order_by(q, AORM_COL(ldr_shelf, id), AORM_ASC);
    return q;
}

/* Checks one collection of each shelf (by_rank, by_label, or both)
 * against the orders computed here: rank descending then id ascending;
 * label ascending. */
static void check_shelf_orders(aorm_session *s, const shelves *f, const qres *r, bool rank, bool label,
                               const char *how) {
    cr_assert_eq(r->len, 2, "%s: %zu shelves", how, r->len);
    for (int sh = 0; sh < 2; sh++) {
        ldr_shelf *shelf = r->items[sh];
        cr_assert_eq(shelf->id, f->shelf_ids[sh]);
        int by_rank[6], by_label[6];
        for (int i = 0; i < 6; i++) by_rank[i] = by_label[i] = i;
        for (int i = 1; i < 6; i++)
            for (int j = i; j > 0; j--) {
                int x = by_rank[j - 1], y = by_rank[j];
                bool swap = shelf_ranks[sh][x] < shelf_ranks[sh][y] ||
                            (shelf_ranks[sh][x] == shelf_ranks[sh][y] && f->item_ids[sh][x] > f->item_ids[sh][y]);
                if (!swap) break;
                by_rank[j - 1] = y;
                by_rank[j] = x;
            }
        for (int i = 1; i < 6; i++)
            for (int j = i; j > 0 && strcmp(shelf_labels[sh][by_label[j - 1]], shelf_labels[sh][by_label[j]]) > 0;
                 j--) {
                int x = by_label[j - 1];
                by_label[j - 1] = by_label[j];
                by_label[j] = x;
            }
        aorm_list *lr = NULL, *ll = NULL;
        if (rank) {
            cr_assert_eq(AORM_GET_REL(s, ldr_shelf, shelf, by_rank, &lr), 0, "%s", aorm_session_errmsg(s));
            cr_assert_eq(lr->len, 6);
            /* expectations, not assertions: on a wrong order the test
             * fails but still frees everything */
            for (int i = 0; i < 6; i++) {
                ldr_item *it = lr->items[i];
                cr_assert_eq(it->shelf_id, shelf->id);
                cr_expect_eq(it->id, f->item_ids[sh][by_rank[i]],
                             "%s: shelf %d by_rank[%d]: item %lld (rank %d), expected item %lld (rank %d)", how, sh,
                             i, (long long)it->id, it->rank, (long long)f->item_ids[sh][by_rank[i]],
                             shelf_ranks[sh][by_rank[i]]);
                if (it->id != f->item_ids[sh][by_rank[i]]) break;
            }
        }
        if (label) {
            cr_assert_eq(AORM_GET_REL(s, ldr_shelf, shelf, by_label, &ll), 0, "%s", aorm_session_errmsg(s));
            cr_assert_eq(ll->len, 6);
            for (int i = 0; i < 6; i++) {
                ldr_item *il = ll->items[i];
                cr_expect_eq(il->id, f->item_ids[sh][by_label[i]], "%s: shelf %d by_label[%d]: %s, expected %s", how,
                             sh, i, il->label, shelf_labels[sh][by_label[i]]);
                if (il->id != f->item_ids[sh][by_label[i]]) break;
                cr_assert_str_eq(il->label, shelf_labels[sh][by_label[i]]);
            }
        }
        /* both collections hold the same objects (one per row) */
        if (rank && label)
            for (int i = 0; i < 6; i++) {
                bool found = false;
                for (int j = 0; j < 6; j++) found = found || lr->items[i] == ll->items[j];
                cr_assert(found);
            }
    }
}

Test(loaders, collections_follow_order_by, .timeout = TIMEOUT) {
    char msg[256];
    cr_assert_eq(aorm_model_validate(&ldr_shelf_model, msg, sizeof(msg)), 0, "%s", msg);
    cr_assert_eq(aorm_model_validate(&ldr_item_model, msg, sizeof(msg)), 0, "%s", msg);
    cr_assert_eq(aorm_load_plan_validate(&ldr_shelf_model, plan_shelf_orders, msg, sizeof(msg)), 0, "%s", msg);

    env t;
    env_open(&t, false);
    PGconn *pg = t_pg();
    shelves f;
    shelves_create(pg, &f, "order");

    aorm_session *s = session_new(&t);
    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, shelves_query(&f), plan_shelf_orders, &r);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 3, 2, "shelves with two ordered collections");
    check_shelf_orders(s, &f, &r, true, true, "selectin");

    qres_free(&r);
    aorm_session_free(s);
    shelves_drop(pg, &f);
    PQfinish(pg);
    env_close(&t);
}

/* The same orders through joined loads (model.h: collections are ordered
 * by order_by, else by the target's primary key, whatever the loader). */
Test(loaders, joined_collections_follow_order_by, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    PGconn *pg = t_pg();
    shelves f;
    shelves_create(pg, &f, "jorder");

    const aorm_load_plan *const plans[2] = {plan_shelf_joined_rank, plan_shelf_joined_label};
    for (int p = 0; p < 2; p++) {
        aorm_session *s = session_new(&t);
        mark m0 = mark_now(&t, s);
        qres r;
        query_ok(&t, s, shelves_query(&f), plans[p], &r);
        mark m1 = mark_now(&t, s);
        expect_cost(&m0, &m1, 1, 1, "shelves joined with an ordered collection");
        check_shelf_orders(s, &f, &r, p == 0, p == 1, p == 0 ? "joined by_rank" : "joined by_label");
        qres_free(&r);
        aorm_session_free(s);
    }
    shelves_drop(pg, &f);
    PQfinish(pg);
    env_close(&t);
}

/* ==========================================================================
 * j. misuse: a plan that does not fit the query
 * ========================================================================== */

Test(loaders, plan_misuse, .timeout = TIMEOUT) {
    char msg[256];
    cr_assert_eq(aorm_load_plan_validate(&author_model, plan_wrong_root, msg, sizeof(msg)), AORM_EMISUSE);
    cr_assert(strstr(msg, "book") && strstr(msg, "author"), "message: %s", msg);
    cr_assert_eq(aorm_load_plan_validate(&book_model, plan_wrong_root, msg, sizeof(msg)), 0, "%s", msg);
    cr_assert_eq(aorm_load_plan_validate(&author_model, plan_wrong_child, msg, sizeof(msg)), AORM_EMISUSE);
    cr_assert(msg[0], "no message");
    cr_assert_eq(aorm_load_plan_validate(&author_model, plan_not_a_rel, msg, sizeof(msg)), AORM_EMISUSE);
    cr_assert(strstr(msg, "relationship"), "message: %s", msg);
    cr_assert_eq(aorm_load_plan_validate(&author_model, NULL, msg, sizeof(msg)), AORM_EMISUSE);

    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);

    const aorm_load_plan *const bad[3] = {plan_wrong_root, plan_wrong_child, plan_not_a_rel};
    for (int i = 0; i < 3; i++) {
        mark m0 = mark_now(&t, s);
        qres r;
        query(&t, s, authors_between(1, 10), bad[i], &r);
        settle(&t);
        mark m1 = mark_now(&t, s);
        cr_assert_not_null(r.err, "plan %d: the query should have failed", i);
        cr_assert_eq(r.err->code, AORM_EMISUSE, "plan %d: %s", i, aorm_errname(r.err->code));
        cr_assert(r.err->message[0], "plan %d: no message", i);
        cr_assert_null(r.items);
        expect_cost(&m0, &m1, 0, 0, "a query with an invalid plan");
        qres_free(&r);
    }

    /* the session is still usable */
    qres ok;
    query_ok(&t, s, authors_between(1, 10), plan_books, &ok);
    cr_assert_eq(ok.len, 10);

    /* explicit loads: objects of another model than the plan's root, or
     * a plan that does not validate, are refused or fail */
    mark m0 = mark_now(&t, s);
    author *a0 = ok.items[0];
    book *b0 = a0->books.items[0];
    dres d = {0};
    cr_assert_eq(aorm_session_load(s, (void *const[]){b0}, 1, plan_books, on_done, &d), AORM_EMISUSE);
    cr_assert_eq(aorm_session_load(s, (void *const[]){a0}, 1, NULL, on_done, &d), AORM_EMISUSE);
    aorm_session *other = session_new(&t);
    qres ro;
    query_ok(&t, other, authors_between(1, 1), NULL, &ro);
    m0 = mark_now(&t, s);
    cr_assert_eq(aorm_session_load(s, ro.items, 1, plan_books, on_done, &d), AORM_EMISUSE,
                 "an object of another session");
    int rc = aorm_session_load(s, (void *const[]){a0}, 1, plan_wrong_child, on_done, &d);
    if (rc == 0) {
        wait_done(&t, &d.done, "load with an invalid plan");
        cr_assert_not_null(d.err, "a load with an invalid plan should fail");
        cr_assert_eq(d.err->code, AORM_EMISUSE);
        cr_assert(d.err->message[0]);
    } else {
        cr_assert_eq(rc, AORM_EMISUSE);
    }
    settle(&t);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 0, 0, "refused loads");
    cr_assert_eq(d.done, rc == 0 ? 1 : 0);

    aorm_error_free(d.err);
    qres_free(&ok);
    qres_free(&ro);
    aorm_session_free(other);
    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * k. a pointer that is not a session object at all
 *
 * loaders.h: aorm_rel_get returns AORM_EMISUSE for what is not a session
 * object (and session.h: aorm_object_model returns NULL for one); the
 * session refuses such a pointer for aorm_session_load. A plain struct on
 * the caller's stack is the usual mistake.
 * ========================================================================== */

Test(loaders, foreign_pointer_is_misuse, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    aorm_advisor_enable(true);
    aorm_advisor_reset();

    author stray = {.id = 1};
    cr_assert_null(aorm_object_model(s, &stray));
    aorm_list *sl = NULL;
    cr_assert_eq(AORM_GET_REL(s, author, &stray, books, &sl), AORM_EMISUSE);
    cr_assert_lt(aorm_rel_loaded(s, &stray, AORM_REL(author, books)), 0);
    cr_assert_eq(aorm_advisor_count(), 0);
    dres d = {0};
    cr_assert_eq(aorm_session_load(s, (void *const[]){&stray}, 1, plan_books, on_done, &d), AORM_EMISUSE);
    settle(&t);
    cr_assert_eq(d.done, 0);

    aorm_session_free(s);
    env_close(&t);
}

/* ==========================================================================
 * Default loaders declared on relationships
 * ========================================================================== */

/* The reference authors and books again, as a second pair of models whose
 * collection declares selectin as its default loader (and whose inverse
 * declares it too: the default plan must not walk back along it). */
typedef struct dl_author {
    int64_t id;
    char *name;
    aorm_opt_int32 born;
    aorm_list books;
} dl_author;

typedef struct dl_book {
    int64_t id;
    int64_t author_id;
    char *title;
    int32_t year;
    double price;
    struct dl_author *author;
} dl_book;

extern const aorm_model dl_author_model, dl_book_model;

static const aorm_column dl_author_columns[] = {
    AORM_COLUMN(dl_author, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(dl_author, name, AORM_TEXT, 0),
    AORM_COLUMN(dl_author, born, AORM_INT4, AORM_NULLABLE),
};
static const aorm_relationship dl_author_relationships[] = {
    AORM_ONE_TO_MANY(dl_author, books, dl_book, author_id, .back_populates = "author",
                     .lazy = AORM_LOAD_SELECTIN),
};
const aorm_model dl_author_model = {
    AORM_MODEL_OF(dl_author, "authors"),
    AORM_COLUMNS(dl_author_columns),
    AORM_RELATIONSHIPS(dl_author_relationships),
};

static const aorm_column dl_book_columns[] = {
    AORM_COLUMN(dl_book, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(dl_book, author_id, AORM_INT8, 0),
    AORM_COLUMN(dl_book, title, AORM_TEXT, 0),
    AORM_COLUMN(dl_book, year, AORM_INT4, 0),
    AORM_COLUMN(dl_book, price, AORM_FLOAT8, 0),
};
static const aorm_foreign_key dl_book_foreign_keys[] = {
    AORM_FOREIGN_KEY(dl_book, author_id, dl_author, id),
};
static const aorm_relationship dl_book_relationships[] = {
    AORM_MANY_TO_ONE(dl_book, author, dl_author, author_id, .back_populates = "books",
                     .lazy = AORM_LOAD_SELECTIN),
};
const aorm_model dl_book_model = {
    AORM_MODEL_OF(dl_book, "books"),
    AORM_COLUMNS(dl_book_columns),
    AORM_FOREIGN_KEYS(dl_book_foreign_keys),
    AORM_RELATIONSHIPS(dl_book_relationships),
};

/* A query without a plan loads the relationships declared with a default
 * loader (one level here: the inverse is not walked back); an explicit
 * plan replaces the defaults. */
Test(loaders, relationship_default_loaders, .timeout = TIMEOUT) {
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);

    mark a = mark_now(&t, s);
    aorm_stmt *q = aorm_select(&dl_author_model);
    aorm_where(q, aorm_le(AORM_COL(dl_author, id), aorm_int8(20)));
    aorm_order_by(q, AORM_COL(dl_author, id), AORM_ASC);
    qres r;
    query_ok(&t, s, q, NULL, &r);
    mark b = mark_now(&t, s);
    expect_cost(&a, &b, 2, 2, "authors with their default books loader");
    cr_assert_eq(r.len, 20);
    for (size_t i = 0; i < r.len; i++) {
        dl_author *au = r.items[i];
        aorm_list *books;
        cr_assert_eq(AORM_GET_REL(s, dl_author, au, books, &books), 0, "%s", aorm_session_errmsg(s));
        cr_assert_eq(books->len, 10, "author %lld has %zu books", (long long)au->id, books->len);
        for (size_t k = 0; k < books->len; k++) {
            dl_book *bk = books->items[k];
            cr_assert_eq(bk->author_id, au->id);
            cr_assert_eq(bk->author, au, "the inverse pointer is set by back-population");
        }
    }
    qres_free(&r);

    /* a get goes through the defaults too */
    mark c = mark_now(&t, s);
    aorm_session_expunge_all(s);
    q = aorm_select(&dl_book_model);
    aorm_where(q, aorm_le(AORM_COL(dl_book, id), aorm_int8(30)));
    query_ok(&t, s, q, NULL, &r);
    mark d = mark_now(&t, s);
    expect_cost(&c, &d, 2, 2, "books with their default author loader");
    for (size_t i = 0; i < r.len; i++) {
        dl_book *bk = r.items[i];
        dl_author *au;
        cr_assert_eq(AORM_GET_REL(s, dl_book, bk, author, &au), 0, "%s", aorm_session_errmsg(s));
        cr_assert_not_null(au);
        cr_assert_eq(au->id, bk->author_id);
    }
    qres_free(&r);

    /* an explicit (empty) plan replaces the defaults: nothing else loads */
    static const aorm_load_plan no_loads = {NULL, 0};
    aorm_session_expunge_all(s);
    mark e = mark_now(&t, s);
    q = aorm_select(&dl_author_model);
    aorm_where(q, aorm_eq(AORM_COL(dl_author, id), aorm_int8(1)));
    query_ok(&t, s, q, &no_loads, &r);
    mark f = mark_now(&t, s);
    expect_cost(&e, &f, 1, 1, "authors with an explicit empty plan");
    aorm_list *none;
    cr_assert_eq(AORM_GET_REL(s, dl_author, r.items[0], books, &none), AORM_EUNLOADED);
    qres_free(&r);

    aorm_session_free(s);
    env_close(&t);
}
