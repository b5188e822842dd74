/* chaining.c -- one request written twice: with nested callbacks, then as
 * a chain.
 *
 * The request: get author 42, load its books (a Core query of books where
 * author_id = 42, run through the session so the books land in its
 * identity map), change one title, commit. Nothing blocks the loop, so
 * every step is a callback. Written by hand, each step lives inside the
 * previous step's callback and every callback repeats the same error
 * handling; written with aorm_chain_run(), the steps are a flat list of
 * small functions and the errors go to one `done`.
 *
 * Both versions edit the same book: the first appends " (revised)" to its
 * title, the second takes it off again, so the database ends as it began.
 *
 * Reads AORM_TEST_DSN (set by scripts/sandbox, with --schema for the
 * reference data). Exits 0 on success. */
#include <aorm/aorm.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models.h"

#define AUTHOR_ID 42
#define SUFFIX " (revised)"

typedef struct request {
    int done;      /* the request has finished, well or not */
    int failed;
    char title[256]; /* the edited book's title as committed */
} request;

/* The title with SUFFIX added, or taken off when it is already there; a
 * copy in the session's arena (the session owns the strings it writes). */
static char *toggled(aorm_session *s, const char *title) {
    size_t n = strlen(title), k = strlen(SUFFIX);
    char buf[256];
    if (n >= k && strcmp(title + n - k, SUFFIX) == 0)
        snprintf(buf, sizeof(buf), "%.*s", (int)(n - k), title);
    else
        snprintf(buf, sizeof(buf), "%s%s", title, SUFFIX);
    return aorm_session_strdup(s, buf);
}

static aorm_stmt *books_of(int64_t author_id) {
    aorm_stmt *q = aorm_select(&book_model);
    aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(author_id)));
    aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
    return q;
}

static void finish(request *r, const char *what, const aorm_error *err) {
    if (err) {
        fprintf(stderr, "%s failed: %s (SQLSTATE %s)\n", what, err->message, err->sqlstate);
        r->failed = 1;
    }
    r->done = 1;
}

/* ==========================================================================
 * 1. Nested callbacks: each step starts the next from inside its callback.
 *    The request reads from the bottom up, the state must travel through
 *    `user`, and every level checks its own error.
 * ========================================================================== */

static void nested_committed(aorm_session *s, const aorm_error *err, void *user) {
    finish(user, "commit", err);
}

static void nested_books(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    request *r = user;
    if (err) {
        finish(r, "loading the books", err);
        return;
    }
    if (objs->len == 0) {
        fprintf(stderr, "author %d has no books\n", AUTHOR_ID);
        r->failed = r->done = 1;
        return;
    }
    book *b = objs->items[0];
    b->title = toggled(s, b->title); /* a plain assignment: the flush finds it */
    snprintf(r->title, sizeof(r->title), "%s", b->title);
    int rc = aorm_session_commit(s, nested_committed, r);
    if (rc < 0) {
        fprintf(stderr, "commit: %s\n", aorm_strerror(rc));
        r->failed = r->done = 1;
    }
}

static void nested_author(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    request *r = user;
    if (err) {
        finish(r, "get author", err);
        return;
    }
    if (!obj) {
        fprintf(stderr, "author %d not found\n", AUTHOR_ID);
        r->failed = r->done = 1;
        return;
    }
    author *a = obj;
    printf("nested: %s\n", a->name);
    int rc = aorm_session_query(s, books_of(a->id), NULL, nested_books, r);
    if (rc < 0) {
        fprintf(stderr, "query: %s\n", aorm_strerror(rc));
        r->failed = r->done = 1;
    }
}

static int start_nested(aorm_session *s, request *r) {
    return aorm_session_get(s, &author_model, &(author){.id = AUTHOR_ID}, NULL, nested_author, r);
}

/* ==========================================================================
 * 2. The same request as a chain: one small function per step, read top to
 *    bottom. A step queues one operation (aorm_chain_*) and the chain runs
 *    the next step with its outcome; a failure anywhere, or
 *    aorm_chain_fail(), skips the remaining steps and reaches `done` once.
 * ========================================================================== */

static int step_find(aorm_chain *c, void *user) {
    return aorm_chain_get(c, &author_model, &(author){.id = AUTHOR_ID});
}

static int step_books(aorm_chain *c, void *user) {
    author *a = aorm_chain_object(c); /* the get's object, NULL when no row */
    if (!a) return aorm_chain_fail(c, AORM_ENOTFOUND, "author 42 not found");
    printf("chain:  %s\n", a->name);
    return aorm_chain_query(c, books_of(a->id), NULL);
}

static int step_edit(aorm_chain *c, void *user) {
    request *r = user;
    aorm_objects *books = aorm_chain_objects(c); /* the query's objects */
    if (books->len == 0) return aorm_chain_fail(c, AORM_ENOTFOUND, "author 42 has no books");
    book *b = books->items[0];
    b->title = toggled(aorm_chain_session(c), b->title);
    snprintf(r->title, sizeof(r->title), "%s", b->title);
    return aorm_chain_commit(c);
}

static void chain_done(aorm_session *s, const aorm_error *err, void *user) {
    finish(user, "the chain", err);
}

static int start_chain(aorm_session *s, request *r) {
    return aorm_chain_run(s, AORM_STEPS(step_find, step_books, step_edit), chain_done, r);
}

/* ==========================================================================
 * main: each version in a session of its own, the loop turned until it ends
 * ========================================================================== */

static int run(struct ev_loop *evl, aorm_engine *e, const char *label, int (*start)(aorm_session *, request *)) {
    request r = {0};
    aorm_session *s = aorm_session_new(e, NULL);
    if (!s) return 1;
    int rc = start(s, &r);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", label, aorm_strerror(rc));
        aorm_session_free(s);
        return 1;
    }
    while (!r.done) ev_run(evl, EVRUN_ONCE);
    aorm_session_free(s);
    if (!r.failed) printf("%s: committed title \"%s\"\n", label, r.title);
    return r.failed;
}

int main(void) {
    const char *dsn = getenv("AORM_TEST_DSN");
    if (!dsn || !*dsn) {
        fprintf(stderr, "AORM_TEST_DSN is not set (run through scripts/sandbox run --schema -- ...)\n");
        return 2;
    }
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    aorm_loop *loop = evl ? aorm_loop_new_ev(evl) : NULL;
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = dsn;
    aorm_engine *e = loop ? aorm_engine_new(loop, &o) : NULL;
    int failed = !e;
    if (!failed) failed = run(evl, e, "nested callbacks", start_nested);
    if (!failed) failed = run(evl, e, "chain", start_chain);
    aorm_engine_free(e);
    aorm_loop_free(loop);
    if (evl) ev_loop_destroy(evl);
    return failed ? 1 : 0;
}
