/* main.c -- the bookstore: a guided tour of aorm, from an empty database
 * to a report, without ever blocking the event loop.
 *
 * `make demo` runs this program inside a throw-away PostgreSQL started by
 * scripts/sandbox (which exports AORM_TEST_DSN). It creates its own schema
 * through the revisions of bookstore/migrations (written from the models
 * of models.c by `aorm-migrate new --autogenerate`) and then walks through
 * eight sections:
 *
 *   1. the schema, through migrations (upgrade, then check against the models)
 *   2. an object graph (authors, books, tags) inserted in one flush
 *   3. eager loading with selectin: 3 statements instead of 1 + 20 + 200
 *   4. reading a relationship that was not loaded: a clear error, never a
 *      hidden query; the N+1 advisor says which loader to add
 *   5. change detection: UPDATEs of the changed columns only
 *   6. a Core bulk UPDATE
 *   7. a Core report: a join with aggregates
 *   8. callback chaining: get, query, change, commit as a flat list of steps
 *
 * How to read it. Every aorm call queues work and returns at once; the
 * answer comes later, in a callback, from inside ev_run(). A section is
 * therefore a short run of functions, each queuing the next operation from
 * the callback of the previous one; the last callback of a section calls
 * next_section(). The list of sections is at the bottom, above main().
 *
 * The engine's SQL echo is on: the log callback prints every statement
 * the engine sends, indented under the narration, during the sections
 * where the SQL is the point (the `echo` flag below). The echo's time is
 * from queueing to the answer, so statements sent in one pipeline and
 * answered in one read all carry the pipeline's time: the demo prints that
 * time once, on the first statement of the pipeline, and marks the others
 * "same round trip" (see on_log).
 *
 * Any error stops the loop; the program then frees everything and exits 1
 * with the error. */
#include <aorm/aorm.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models.h"

enum { AUTHORS = 20, BOOKS_PER_AUTHOR = 10, TAGS = 10, TAGS_PER_BOOK = 3 };

typedef struct demo {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    aorm_session *s;      /* the session of the running section */
    aorm_session *kept;   /* section 3's session, changed again in section 5 */
    int section;          /* index into `sections` */
    bool echo;            /* print the SQL echo now */
    bool failed;          /* an error stopped the demo */
    bool finished;        /* the last section completed */
    uint64_t trips_before; /* engine round trips when a measured step began */
    aorm_migrate *mig;    /* section 1: the bookstore's revisions */
    double echo_ms;       /* time of the last echo line (queue to answer), and */
    double echo_now;      /* the loop time it was printed at: a pipeline's lines share both */
    author *first;        /* section 3: the first author, changed in section 5 */
    void **books;         /* section 4: the books queried without a plan */
    book *retitled;       /* section 8: the book the chain changed */
    size_t nbooks;
} demo;

static void next_section(demo *d);

/* ==== plumbing: echo, errors, counters ================================== */

/* One SQL echo line. The engine ends it with " (N.NNN ms)": the time from
 * queueing the statement to its answer. Statements written in one
 * pipeline and answered in one read share that time (and the loop time at
 * which they are echoed), so printing it on each would make every one of
 * them look as slow as the whole pipeline: the first line of such a group
 * shows the round trip's time, the others say they shared it. */
static void print_echo(demo *d, const char *msg) {
    const char *tail = strrchr(msg, '(');
    double ms;
    char unit[4] = "";
    if (!tail || tail == msg || sscanf(tail, "(%lf %3[^)])", &ms, unit) != 2 || strcmp(unit, "ms") != 0) {
        printf("      sql> %s\n", msg);
        return;
    }
    int len = (int)(tail - msg - 1);
    double now = aorm_loop_now(d->loop);
    if (ms == d->echo_ms && now == d->echo_now) {
        printf("      sql> %.*s  (same round trip)\n", len, msg);
    } else {
        printf("      sql> %.*s  (%.3f ms round trip)\n", len, msg, ms);
        d->echo_ms = ms;
        d->echo_now = now;
    }
}

/* The engine's log callback. SQL echo lines are printed while d->echo is
 * on, each statement on its own indented line; warnings and errors always
 * go to stderr; connection chatter (INFO) is left out. */
static void on_log(aorm_log_level level, const char *msg, void *user) {
    demo *d = user;
    if (level == AORM_LOG_SQL) {
        if (d->echo) print_echo(d, msg);
    } else if (level <= AORM_LOG_WARN && !strstr(msg, "NOTICE:")) {
        /* (PostgreSQL's NOTICEs, such as "table ... does not exist,
         * skipping" from DROP ... IF EXISTS, are informational; the engine
         * passes them at AORM_LOG_WARN too.) */
        fprintf(stderr, "  [%s] %s\n", level == AORM_LOG_ERROR ? "error" : "warning", msg);
    }
}

/* Reports the first failure and stops the loop; main() cleans up. Later
 * failures (the cancellations the clean-up causes) are not repeated. */
static void fail(demo *d, const char *what, const aorm_error *err) {
    if (d->failed) return;
    d->failed = true;
    d->echo = false; /* the clean-up's cancellations are not part of the story */
    fprintf(stderr, "\nbookstore: %s failed: %s [%s", what, err->message, aorm_errname(err->code));
    if (err->sqlstate[0]) fprintf(stderr, ", SQLSTATE %s", err->sqlstate);
    fprintf(stderr, "]\n");
    if (err->detail[0] && strcmp(err->detail, err->message) != 0) fprintf(stderr, "  detail: %s\n", err->detail);
    if (err->hint[0]) fprintf(stderr, "  hint: %s\n", err->hint);
    ev_break(d->evl, EVBREAK_ALL);
}

/* A failure known here rather than reported by a callback: a call that
 * refused to start (a negative code: no callback will run), or a check of
 * our own. message NULL: the code's description. */
static void fail_msg(demo *d, const char *what, int code, const char *message) {
    aorm_error err = {.code = code, .message = message ? message : aorm_strerror(code), .detail = "",
                      .hint = "", .constraint = "", .table = "", .column = ""};
    fail(d, what, &err);
}

/* True when a call that takes a callback was queued. */
static bool queued(demo *d, const char *what, int rc) {
    if (rc < 0) fail_msg(d, what, rc, NULL);
    return rc == 0;
}

static uint64_t round_trips(demo *d) {
    aorm_engine_stats st;
    aorm_engine_stats_get(d->e, &st);
    return st.round_trips;
}

/* Closes the current section's session (if any) and opens a fresh one. */
static bool open_session(demo *d) {
    aorm_session_free(d->s);
    d->s = aorm_session_new(d->e, NULL);
    if (!d->s) fail_msg(d, "aorm_session_new", AORM_ENOMEM, NULL);
    return d->s != NULL;
}

/* Appends obj to a relationship list of new objects. The array lives in
 * the session's arena, like the lists the loaders fill, so it is freed
 * with the session. */
static int list_append(aorm_session *s, aorm_list *l, void *obj) {
    if (l->len == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 4;
        void **items = aorm_session_alloc(s, cap * sizeof(void *));
        if (!items) return AORM_ENOMEM;
        if (l->len) memcpy(items, l->items, l->len * sizeof(void *));
        l->items = items;
        l->cap = cap;
    }
    l->items[l->len++] = obj;
    return 0;
}

/* Prints a block of text, every line indented. */
static void print_indented(const char *indent, const char *text) {
    while (*text) {
        const char *nl = strchr(text, '\n');
        size_t n = nl ? (size_t)(nl - text) : strlen(text);
        printf("%s%.*s\n", indent, (int)n, text);
        text += n + (nl ? 1 : 0);
    }
}

/* ==== 1. the schema, through migrations ================================= */

static const aorm_model *const MODELS[] = {&author_model, &book_model, &tag_model, &book_tag_model};
#define NMODELS ((int)(sizeof(MODELS) / sizeof(MODELS[0])))

/* The revision directory: bookstore/migrations of the source tree (its
 * path is compiled in), or $AORM_BOOKSTORE_MIGRATIONS. */
static const char *migrations_dir(void) {
    const char *env = getenv("AORM_BOOKSTORE_MIGRATIONS");
    return env && *env ? env : BOOKSTORE_MIGRATIONS;
}

static void on_checked(aorm_migrate *m, const aorm_migrate_report *r, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_migrate_check", err); return; }
    if (r->drift) {
        print_indented("    ", r->text);
        fail_msg(d, "aorm_migrate_check", AORM_EMISUSE, r->message);
        return;
    }
    printf("  check: %s.\n", r->message);
    next_section(d);
}

static void on_upgraded(aorm_migrate *m, const aorm_migrate_report *r, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_migrate_upgrade", err); return; }
    for (int i = 0; i < r->ndone; i++) printf("  applied %s\n", r->done[i]);
    printf("  upgrade head: %s (each revision in its own transaction, under the advisory lock).\n", r->message);
    queued(d, "aorm_migrate_check", aorm_migrate_check(m, on_checked, d));
}

static void on_downgraded(aorm_migrate *m, const aorm_migrate_report *r, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_migrate_downgrade", err); return; }
    printf("  downgrade base: %s.\n", r->ndone ? r->message : "nothing to revert (a fresh database)");
    queued(d, "aorm_migrate_upgrade", aorm_migrate_upgrade(m, "head", on_upgraded, d));
}

static void section_schema(demo *d) {
    aorm_migrate_options o;
    aorm_migrate_options_init(&o);
    o.directory = migrations_dir();
    o.models = MODELS; /* for check: do the revisions match the models? */
    o.nmodels = NMODELS;
    char why[256];
    d->mig = aorm_migrate_new(d->loop, d->e, &o, why, sizeof(why));
    if (!d->mig) { fail_msg(d, "aorm_migrate_new", AORM_ENOMEM, why); return; }
    char *hist = NULL;
    int rc = aorm_migrate_history(d->mig, &hist, why, sizeof(why));
    if (rc < 0) { fail_msg(d, "aorm_migrate_history", rc, why); return; }
    printf("  The schema lives in revision files (%s), written by\n"
           "  `aorm-migrate new --autogenerate` from the models; the history:\n\n", o.directory);
    print_indented("    ", hist);
    free(hist);
    printf("\n  downgrade base (a rerun starts from empty tables), upgrade head, then check.\n");
    queued(d, "aorm_migrate_downgrade", aorm_migrate_downgrade(d->mig, "base", on_downgraded, d));
}

/* ==== 2. an object graph, inserted in one flush ========================== */

static const char *const AUTHOR_NAMES[AUTHORS] = {
    "Ada Winterbourne", "Bram Okafor",     "Clara Lindqvist", "Dmitri Vell",    "Esme Carraway",
    "Felix Marchetti",  "Greta Holm",      "Hugo Anselm",     "Iris Kettering", "Jonah Brightwater",
    "Kira Nakamura",    "Leopold Crane",   "Mara Ostrova",    "Nils Haverford", "Odile Fontaine",
    "Pavel Sorensen",   "Quinn Albright",  "Rosa Delacroix",  "Silas Thorne",   "Tamsin Reyes"};
static const char *const TAG_NAMES[TAGS] = {"fantasy", "mystery",  "history",   "poetry",  "travel",
                                            "science", "romance", "biography", "classic", "humour"};
static const char *const ADJECTIVES[10] = {"Silent", "Hidden", "Last",  "Golden", "Northern",
                                           "Broken", "Secret", "Quiet", "Distant", "Burning"};
static const char *const NOUNS[10] = {"River", "Garden", "Lantern", "Harbour", "Orchard",
                                      "Mirror", "Voyage", "Archive", "Meadow", "Tide"};

static void on_graph_committed(aorm_session *s, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_session_commit", err); return; }
    printf("\n  Committed %d authors, %d books and %d tag links: %llu statements in %llu round trips.\n",
           AUTHORS, AUTHORS * BOOKS_PER_AUTHOR, AUTHORS * BOOKS_PER_AUTHOR * TAGS_PER_BOOK,
           (unsigned long long)aorm_session_statements(s),
           (unsigned long long)(round_trips(d) - d->trips_before));
    printf("  The keys came first (one nextval batch per table), so every foreign key was known\n"
           "  before the INSERTs went out together, one multi-row statement per table.\n");
    next_section(d);
}

static void section_insert(demo *d) {
    if (!open_session(d)) return;
    aorm_session *s = d->s;
    tag *tags[TAGS];
    for (int t = 0; t < TAGS; t++) {
        if (!(tags[t] = aorm_session_new_object(s, &tag_model))) goto nomem;
        tags[t]->name = (char *)TAG_NAMES[t]; /* strings we own are copied into the session at flush */
    }
    for (int a = 0; a < AUTHORS; a++) {
        author *au = aorm_session_new_object(s, &author_model);
        if (!au) goto nomem;
        au->name = (char *)AUTHOR_NAMES[a];
        au->born = AORM_SOME(aorm_opt_int32, 1920 + 3 * a);
        for (int b = 0; b < BOOKS_PER_AUTHOR; b++) {
            book *bk = aorm_session_new_object(s, &book_model);
            if (!bk) goto nomem;
            char title[64];
            snprintf(title, sizeof(title), "The %s %s", ADJECTIVES[(a + b) % 10], NOUNS[(3 * a + b) % 10]);
            bk->title = aorm_session_strdup(s, title);
            bk->year = 1950 + (7 * a + 5 * b) % 70;
            bk->price = 8.99 + (double)((13 * a + 7 * b) % 30);
            /* Link both ways; no key exists yet: the flush fills in author_id. */
            bk->author = au;
            if (!bk->title || list_append(s, &au->books, bk) < 0) goto nomem;
            for (int k = 0; k < TAGS_PER_BOOK; k++) /* many-to-many: rows of book_tags */
                if (list_append(s, &bk->tags, tags[(a + b + 3 * k) % TAGS]) < 0) goto nomem;
        }
        /* Adding an author is enough: the save-update cascade adds its books and their tags. */
        int rc = aorm_session_add(s, au);
        if (rc < 0) { fail_msg(d, "aorm_session_add", rc, NULL); return; }
    }
    printf("  %d authors x %d books, each book with %d of %d tags, built as plain structs,\n"
           "  linked through book->author, author->books and book->tags, then one commit:\n\n",
           AUTHORS, BOOKS_PER_AUTHOR, TAGS_PER_BOOK, TAGS);
    d->trips_before = round_trips(d);
    queued(d, "aorm_session_commit", aorm_session_commit(s, on_graph_committed, d));
    return;
nomem:
    fail_msg(d, "building the object graph", AORM_ENOMEM, NULL);
}

/* ==== 3. eager loading with selectin ===================================== */

/* Authors, their books, and the books' tags: one statement per level. */
static const aorm_load_plan *const BOOKS_AND_TAGS =
    AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)));

static void print_book(aorm_session *s, const book *b) {
    aorm_list *tags = NULL;
    printf("      %-22s %d  %6.2f  [", b->title, b->year, b->price);
    if (AORM_GET_REL(s, book, b, tags, &tags) == 0) {
        for (size_t i = 0; i < tags->len; i++)
            printf("%s%s", i ? ", " : "", AORM_LIST_AT(*tags, tag, i)->name);
    }
    printf("]\n");
}

static void on_authors_loaded(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_session_query(authors)", err); return; }
    if (objs->len == 0) { fail_msg(d, "aorm_session_query(authors)", AORM_ENOTFOUND, "no authors"); return; }
    size_t nbooks = 0, nlinks = 0;
    for (size_t i = 0; i < objs->len; i++) {
        aorm_list *books;
        if (AORM_GET_REL(s, author, objs->items[i], books, &books) < 0) {
            fail_msg(d, "AORM_GET_REL", AORM_EUNLOADED, aorm_session_errmsg(s));
            return;
        }
        nbooks += books->len;
        for (size_t k = 0; k < books->len; k++) nlinks += AORM_LIST_AT(*books, book, k)->tags.len;
    }
    printf("\n  Loaded %zu authors, %zu books and %zu tag links with %llu statements in %llu round trips,\n"
           "  where lazy loading would have sent 1 + %zu + %zu = %zu.\n\n",
           objs->len, nbooks, nlinks, (unsigned long long)aorm_session_statements(s),
           (unsigned long long)(round_trips(d) - d->trips_before), objs->len, nbooks,
           1 + objs->len + nbooks);
    for (size_t i = 0; i < 2 && i < objs->len; i++) {
        author *a = objs->items[i];
        printf("    %s, born %d\n", a->name, a->born.value);
        for (size_t k = 0; k < 3 && k < a->books.len; k++) print_book(s, AORM_LIST_AT(a->books, book, k));
        if (a->books.len > 3) printf("      ... and %zu more\n", a->books.len - 3);
    }
    /* Section 5 changes these objects: keep the session. */
    d->first = objs->items[0];
    d->kept = d->s;
    d->s = NULL;
    next_section(d);
}

static void section_selectin(demo *d) {
    if (!open_session(d)) return;
    aorm_stmt *q = aorm_select(&author_model);
    aorm_order_by(q, AORM_COL(author, id), AORM_ASC);
    aorm_query_options qo = {.load = BOOKS_AND_TAGS};
    printf("  Query the authors with the plan\n"
           "    AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)):\n\n");
    d->trips_before = round_trips(d);
    queued(d, "aorm_session_query", aorm_session_query(d->s, q, &qo, on_authors_loaded, d));
}

/* ==== 4. an unloaded relationship is an error, not a hidden query ======== */

/* A plan must outlive the operation that uses it: make it a static constant. */
static const aorm_load_plan *const BOOK_AUTHOR = AORM_PLAN(AORM_SELECTIN(book, author));

/* The advisor's lines start with the call site's full path: keep the file name. */
static void print_advice(const char *report) {
    while (*report) {
        const char *nl = strchr(report, '\n');
        size_t n = nl ? (size_t)(nl - report) : strlen(report);
        const char *start = report;
        for (const char *p = report; p < report + n && *p != ':'; p++)
            if (*p == '/') start = p + 1;
        printf("    %.*s\n", (int)(n - (size_t)(start - report)), start);
        report += n + (nl ? 1 : 0);
    }
}

static void on_authors_of_books(aorm_session *s, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_session_load", err); return; }
    printf("\n  Now book->author reads fine:\n");
    for (size_t i = 0; i < 3 && i < d->nbooks; i++) {
        author *a;
        if (AORM_GET_REL(s, book, d->books[i], author, &a) < 0) {
            fail_msg(d, "AORM_GET_REL", AORM_EUNLOADED, aorm_session_errmsg(s));
            return;
        }
        printf("    %-22s by %s\n", ((book *)d->books[i])->title, a->name);
    }
    aorm_session_free(d->s);
    d->s = NULL;
    next_section(d);
}

static void on_books_without_plan(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_session_query(books)", err); return; }
    if (objs->len == 0) { fail_msg(d, "aorm_session_query(books)", AORM_ENOTFOUND, "no books"); return; }
    d->echo = false;
    int unloaded = 0;
    for (size_t i = 0; i < objs->len; i++) {
        author *a;
        if (AORM_GET_REL(s, book, objs->items[i], author, &a) == AORM_EUNLOADED) unloaded++;
    }
    printf("\n  Reading book->author with AORM_GET_REL on each of the %zu books: %d x AORM_EUNLOADED:\n"
           "    %s\n",
           objs->len, unloaded, aorm_session_errmsg(s));
    printf("  Statements sent by this session: still %llu. The loop never waited.\n",
           (unsigned long long)aorm_session_statements(s));
    char *report = aorm_advisor_report();
    printf("\n  The N+1 advisor (aorm_advisor_report) counted the reads by call site:\n");
    if (report) print_advice(report);
    free(report);

    /* The fix, after the fact: load the relationship for these objects,
     * batched (the C counterpart of awaiting an attribute). */
    d->nbooks = objs->len;
    d->books = aorm_session_alloc(s, objs->len * sizeof(void *)); /* objs is borrowed */
    if (!d->books) { fail_msg(d, "aorm_session_alloc", AORM_ENOMEM, NULL); return; }
    memcpy(d->books, objs->items, objs->len * sizeof(void *));
    printf("\n  aorm_session_load(books, AORM_PLAN(AORM_SELECTIN(book, author))) loads them in one go:\n\n");
    d->echo = true;
    queued(d, "aorm_session_load",
           aorm_session_load(s, d->books, d->nbooks, BOOK_AUTHOR, on_authors_of_books, d));
}

static void section_unloaded(demo *d) {
    if (!open_session(d)) return;
    aorm_stmt *q = aorm_select(&book_model);
    aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
    aorm_limit(q, 10);
    aorm_advisor_reset();
    printf("  A fresh session queries 10 books, with no load plan:\n\n");
    queued(d, "aorm_session_query", aorm_session_query(d->s, q, NULL, on_books_without_plan, d));
}

/* ==== 5. change objects, commit: only what changed is written ============ */

static void on_changes_committed(aorm_session *s, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "aorm_session_commit", err); return; }
    printf("\n  Committed: one UPDATE per changed object, naming only the changed columns.\n");
    next_section(d);
}

static void section_changes(demo *d) {
    d->s = d->kept; /* the session of section 3, with its objects */
    d->kept = NULL;
    author *a = d->first;
    if (a->books.len < 2) { fail_msg(d, "section 5", AORM_ENOTFOUND, "the first author has too few books"); return; }
    book *b1 = AORM_LIST_AT(a->books, book, 0), *b2 = AORM_LIST_AT(a->books, book, 1);
    char *name = "Ada W. Winterbourne";
    double price1 = 19.50, price2 = 12.00;
    printf("  Plain assignments to the structs loaded in section 3:\n");
    printf("    author %lld  name:  \"%s\" -> \"%s\"\n", (long long)a->id, a->name, name);
    printf("    book %lld    price: %.2f -> %.2f\n", (long long)b1->id, b1->price, price1);
    printf("    book %lld    price: %.2f -> %.2f\n", (long long)b2->id, b2->price, price2);
    a->name = name; /* a new pointer: strings are values, never edited in place */
    b1->price = price1;
    b2->price = price2;
    printf("  The session compares each object with the snapshot it took at load time\n"
           "  (aorm_object_modified(author) = %s). aorm_session_commit():\n\n",
           aorm_object_modified(d->s, a) ? "true" : "false");
    queued(d, "aorm_session_commit", aorm_session_commit(d->s, on_changes_committed, d));
}

/* ==== 6. a Core bulk UPDATE ============================================== */

/* Queues a Core statement on the engine (autocommit). Builder errors are
 * sticky: they surface here, explained by aorm_stmt_errmsg(). */
static void run_core(demo *d, const char *what, aorm_stmt *q, aorm_result_cb cb) {
    int rc = q ? aorm_stmt_execute(d->e, q, NULL, cb, d) : AORM_ENOMEM;
    if (rc < 0) fail_msg(d, what, rc, q && aorm_stmt_error(q) ? aorm_stmt_errmsg(q) : NULL);
    aorm_stmt_free(q); /* the engine copied what it needs */
}

static void on_bulk_updated(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "bulk UPDATE", err); return; }
    printf("\n  %lld books published before 1970 now cost 10%% more (aorm_result_affected).\n"
           "  One statement, whatever the number of rows. Core bypasses the sessions: objects\n"
           "  already loaded keep their old prices until refreshed (aorm_session_refresh).\n",
           (long long)aorm_result_affected(res));
    next_section(d);
}

static void section_bulk(demo *d) {
    printf("  UPDATE books SET price = price * 1.1 WHERE year < 1970, built with Core:\n"
           "    aorm_set(q, AORM_COL(book, price), aorm_mul(AORM_COL(book, price), aorm_float8(1.1)))\n"
           "    aorm_where(q, aorm_lt(AORM_COL(book, year), aorm_int4(1970)))\n\n");
    aorm_stmt *q = aorm_update(&book_model);
    aorm_set(q, AORM_COL(book, price), aorm_mul(AORM_COL(book, price), aorm_float8(1.1)));
    aorm_where(q, aorm_lt(AORM_COL(book, year), aorm_int4(1970)));
    run_core(d, "bulk UPDATE", q, on_bulk_updated);
}

/* ==== 7. a Core report: join and aggregates ============================== */

static void on_report(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "report query", err); return; }
    int c_name = aorm_result_col(res, "name"), c_books = aorm_result_col(res, "books"),
        c_avg = aorm_result_col(res, "avg_price");
    printf("\n    %-22s %5s  %9s\n", "author", "books", "avg price");
    printf("    %-22s %5s  %9s\n", "----------------------", "-----", "---------");
    for (int r = 0; r < aorm_result_nrows(res); r++) {
        const char *name;
        int64_t nbooks;
        double avg;
        if (aorm_result_text(res, r, c_name, &name, NULL) < 0 || aorm_result_int64(res, r, c_books, &nbooks) < 0 ||
            aorm_result_float8(res, r, c_avg, &avg) < 0) {
            fail_msg(d, "reading the report", AORM_ETYPE, NULL);
            return;
        }
        printf("    %-22s %5lld  %9.2f\n", name, (long long)nbooks, avg);
    }
    next_section(d);
}

static void section_report(demo *d) {
    printf("  The five authors with the dearest books on average:\n\n");
    aorm_stmt *q = aorm_select_columns(AORM_COL(author, name),
                                       aorm_label(aorm_count(AORM_COL(book, id)), "books"),
                                       aorm_label(aorm_avg(AORM_COL(book, price)), "avg_price"));
    aorm_join_rel(q, AORM_REL(author, books), false); /* ON comes from the foreign key */
    aorm_group_by(q, AORM_COL(author, id));           /* name depends on the key */
    aorm_order_by(q, aorm_avg(AORM_COL(book, price)), AORM_DESC);
    aorm_limit(q, 5);
    run_core(d, "report query", q, on_report);
}

/* ==== 8. callback chaining: a flat sequence of steps ===================== */

/* Each step queues one operation; the next step sees its outcome. */
static int step_get_author(aorm_chain *c, void *user) {
    printf("  step 1: get author 1\n");
    return aorm_chain_get(c, &author_model, &(author){.id = 1});
}

static int step_query_books(aorm_chain *c, void *user) {
    author *a = aorm_chain_object(c);
    if (!a) return aorm_chain_fail(c, AORM_ENOTFOUND, "author 1 does not exist");
    printf("  step 2: query the books of %s\n", a->name);
    aorm_stmt *q = aorm_select(&book_model);
    aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(a->id)));
    aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
    return aorm_chain_query(c, q, NULL);
}

static int step_retitle(aorm_chain *c, void *user) {
    aorm_objects *books = aorm_chain_objects(c);
    if (books->len == 0) return aorm_chain_fail(c, AORM_ENOTFOUND, "author 1 has no books");
    book *b = books->items[0];
    printf("  step 3: retitle \"%s\" and commit\n", b->title);
    b->title = "The Silent River, Revised";
    ((demo *)user)->retitled = b; /* the chain's own slots end with it: keep it for done */
    return aorm_chain_commit(c);
}

static void on_chain_done(aorm_session *s, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) { fail(d, "the chain", err); return; }
    printf("\n  Chain done: book %lld is now \"%s\"; the session sent %llu statements.\n",
           (long long)d->retitled->id, d->retitled->title, (unsigned long long)aorm_session_statements(s));
    next_section(d);
}

static void section_chain(demo *d) {
    if (!open_session(d)) return;
    printf("  aorm_chain_run(s, AORM_STEPS(get_author, query_books, retitle), done):\n\n");
    queued(d, "aorm_chain_run",
           aorm_chain_run(d->s, AORM_STEPS(step_get_author, step_query_books, step_retitle), on_chain_done, d));
}

/* ==== sections, and main ================================================== */

static const struct {
    const char *title;
    void (*run)(demo *d);
    bool echo; /* show the SQL echo during this section */
} sections[] = {
    {"The schema, through migrations", section_schema, false},
    {"An object graph, inserted in one flush", section_insert, true},
    {"Eager loading: selectin, one statement per level", section_selectin, true},
    {"An unloaded relationship is an error, never a hidden query", section_unloaded, true},
    {"Change detection: only changed columns are written", section_changes, true},
    {"A Core bulk UPDATE", section_bulk, true},
    {"A Core report: join, aggregates, order, limit", section_report, true},
    {"Callback chaining: get, query, change, commit", section_chain, true},
};
#define NSECTIONS ((int)(sizeof(sections) / sizeof(sections[0])))

/* Starts the next section, or stops the loop after the last one. */
static void next_section(demo *d) {
    if (d->failed) return;
    if (++d->section == NSECTIONS) {
        d->finished = true;
        ev_break(d->evl, EVBREAK_ALL);
        return;
    }
    printf("\n== %d. %s ==\n\n", d->section + 1, sections[d->section].title);
    d->echo = sections[d->section].echo;
    sections[d->section].run(d);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep stdout and stderr in order when piped */
    const char *dsn = getenv("AORM_TEST_DSN");
    if (!dsn || !*dsn) {
        fprintf(stderr, "bookstore: AORM_TEST_DSN is not set. Run `make demo`, or\n"
                        "  scripts/sandbox run -- build/examples/aorm-bookstore\n");
        return 2;
    }
    aorm_advisor_enable(true); /* on by default in debug builds only */

    demo d = {.evl = EV_DEFAULT, .section = -1};
    d.loop = aorm_loop_new_ev(d.evl);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = dsn;
    o.log = on_log;
    o.log_user = &d;
    o.log_level = AORM_LOG_SQL;
    o.echo = true;          /* every statement goes to on_log at AORM_LOG_SQL... */
    o.echo_params = true;   /* ...with its parameter values */
    d.e = d.loop ? aorm_engine_new(d.loop, &o) : NULL;
    if (!d.e) {
        fprintf(stderr, "bookstore: cannot create the engine (out of memory or a bad conninfo)\n");
        aorm_loop_free(d.loop);
        return 1;
    }

    printf("aorm %d.%d.%d -- the bookstore tour\n", AORM_VERSION_MAJOR, AORM_VERSION_MINOR, AORM_VERSION_PATCH);
    next_section(&d);
    ev_run(d.evl, 0); /* everything happens in here, in callbacks */

    /* Closing the sessions and the engine cancels anything still pending
     * (only after an error); their callbacks see AORM_ECANCELED. */
    aorm_engine_stats st;
    aorm_engine_stats_get(d.e, &st);
    aorm_session_free(d.s);
    aorm_session_free(d.kept);
    aorm_migrate_free(d.mig);
    aorm_engine_free(d.e);
    aorm_loop_free(d.loop);
    if (!d.failed && !d.finished) {
        fprintf(stderr, "bookstore: the loop stopped before the tour was finished\n");
        return 1;
    }
    if (d.failed) return 1;
    printf("\nDone. The engine sent %llu statements in %llu round trips over %llu connection%s;\n"
           "%llu of them ran from the prepared-statement cache. The loop never blocked.\n",
           (unsigned long long)st.statements, (unsigned long long)st.round_trips,
           (unsigned long long)st.connects, st.connects == 1 ? "" : "s", (unsigned long long)st.prepared_hits);
    return 0;
}
