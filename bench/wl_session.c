/* wl_session.c -- the peer's (SQLAlchemy asyncio) session workloads through
 * aorm's AsyncSession, and the libpq ceiling of the largest read.
 *
 * Each does the work of the peer's workload of the same name: the same
 * rows, the same statements asked of the ORM, the same checks:
 *
 *   pk_get_seq         one session, 5,000 aorm_session_get of random
 *                      authors, expunge_all after each (so every get sends
 *                      its SELECT), one at a time (vs raw_pk_seq: same ids)
 *   pk_get_concurrent  the same 5,000 gets over 64 sessions at once, each
 *                      session doing its share (ids k, k + 64, ...) one
 *                      after another, like the peer's 64 tasks
 *   raw_load_rows      the ceiling of load_rows: blocking libpq, binary
 *                      results, every row decoded into a struct
 *   load_rows          a Core select of the 100,000 books through
 *                      aorm_session_query: 100,000 objects
 *   uow_update         load books 1..1,000, add 1.0 to each price, commit:
 *                      1,000 UPDATEs (checked with the engine's counters
 *                      and by the sum of the prices on the server)
 *   orm_bulk_insert    100,000 new bulk_book objects added to one session
 *                      and committed; every object must get its key
 *
 * Timing: from the first call of the workload (the session is created
 * inside the timed part, as the peer's `async with AsyncSession` is) to
 * its last callback. Not timed: connecting and warming the pool, emptying
 * bulk_books (the peer times its DELETE of the previous rows too), the
 * checks made afterwards with extra statements, and freeing the session
 * and its objects. `queries` is the engine's own statement count
 * (aorm_engine_stats_get) over the timed part, BEGIN and COMMIT included.
 *
 * The engine scaffolding (a private loop and engine per workload, pool
 * warm-up, a watchdog per phase, errors to stderr) is eng.h's. Must not:
 * share state between workloads, or time anything but the measured work. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"
#include "models.h"

#define PK_AUTHORS 10000
#define PK_GET_N 5000
#define PK_GET_SESSIONS 64

#define LOAD_N 100000
#define LOAD_SQL "SELECT id, author_id, title, year, price FROM books WHERE id <= $1"

#define UOW_N 1000
/* The check after the commit: the prices of the books it changed. */
#define UOW_SUM_SQL "SELECT sum(price) FROM books WHERE id <= 1000"
/* The SELECT, BEGIN, one UPDATE per book, COMMIT. */
#define UOW_STATEMENTS (1 + 1 + UOW_N + 1)

#define BULK_N 100000

/* ---- primary-key gets ---------------------------------------------------- */

typedef struct pkg_run pkg_run;

/* One session and its share of the ids: ids[first], ids[first + step]... */
typedef struct pkg_worker {
    pkg_run *run;
    aorm_session *s;
    int next;     /* index in ids of the next get */
    int64_t want; /* id of the get in flight */
} pkg_worker;

struct pkg_run {
    eng *g;
    const int64_t *ids;
    int total;
    int step;          /* number of workers */
    int done;
    int64_t born_sum;  /* keeps the loaded values observable */
};

static void pkg_got(aorm_session *s, void *obj, const aorm_error *err, void *user);

/* Queues the worker's next get, if it has one left. Returns 0 or -1. */
static int pkg_issue(pkg_worker *w) {
    pkg_run *p = w->run;
    if (w->next >= p->total) return 0;
    w->want = p->ids[w->next];
    w->next += p->step;
    int rc = aorm_session_get(w->s, &author_model, &(author){.id = w->want}, NULL, pkg_got, w);
    return rc != 0 ? eng_code(p->g, "aorm_session_get", rc) : 0;
}

static void pkg_got(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    pkg_worker *w = user;
    pkg_run *p = w->run;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_get", err);
        return;
    }
    const author *a = obj;
    if (!a || a->id != w->want || !a->name || !a->name[0]) {
        bench_fail(g->out, "get author %lld: %s", (long long)w->want,
                   a ? "wrong object" : "no object");
        eng_check_failed(g);
        return;
    }
    if (a->born.valid) p->born_sum += a->born.value;
    /* Forget it, so that the next get of the same id sends a statement
     * (the peer's s.expunge_all()). */
    aorm_session_expunge_all(s);
    if (++p->done == p->total) {
        g->t_end = bench_now();
        eng_phase_done(g);
        return;
    }
    pkg_issue(w);
}

/* PK_GET_N gets spread over `nsessions` sessions running at once. */
static int run_pk_get(bench_ctx *ctx, bench_out *out, const char *name, int nsessions) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    int64_t *ids = malloc(PK_GET_N * sizeof(*ids));
    pkg_worker *workers = calloc((size_t)nsessions, sizeof(*workers));
    pkg_run p = {.g = &g, .ids = ids, .total = PK_GET_N, .step = nsessions};
    if (rc == 0 && (!ids || !workers)) rc = bench_fail(out, "out of memory");
    /* The ids of raw_pk_seq and engine_pk_seq, drawn before the clock. */
    bench_rng_seed(&ctx->rng, BENCH_SEED_PK);
    for (int i = 0; rc == 0 && i < PK_GET_N; i++) ids[i] = bench_rng_range(&ctx->rng, 1, PK_AUTHORS);

    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = name;
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        for (int k = 0; rc == 0 && k < nsessions; k++) {
            workers[k] = (pkg_worker){.run = &p, .next = k};
            workers[k].s = aorm_session_new(g.e, NULL);
            if (!workers[k].s) rc = bench_fail(out, "aorm_session_new failed");
        }
        for (int k = 0; rc == 0 && k < nsessions; k++) rc = pkg_issue(&workers[k]);
        if (rc == 0) rc = eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = PK_GET_N;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
        if (rc == 0 && out->queries != PK_GET_N)
            rc = bench_fail(out, "%s: %llu statements for %d gets", name,
                            (unsigned long long)out->queries, PK_GET_N);
    }
    /* After a failure, freeing a session cancels its get in flight; its
     * callback sees the failure and returns. */
    for (int k = 0; workers && k < nsessions; k++) aorm_session_free(workers[k].s);
    eng_close(&g);
    free(workers);
    free(ids);
    return rc;
}

static int run_pk_get_seq(bench_ctx *ctx, bench_out *out) {
    return run_pk_get(ctx, out, "pk_get_seq", 1);
}

static int run_pk_get_concurrent(bench_ctx *ctx, bench_out *out) {
    bench_extra(out, "sessions", "%d", PK_GET_SESSIONS);
    return run_pk_get(ctx, out, "pk_get_concurrent", PK_GET_SESSIONS);
}

/* ---- load_rows ------------------------------------------------------------- */

typedef struct load_run {
    eng *g;
    double price_sum; /* keeps the loaded values observable */
} load_run;

static void load_done(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    (void)s;
    load_run *l = user;
    eng *g = l->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_query", err);
        return;
    }
    g->t_end = bench_now();
    if (objs->len != LOAD_N) {
        bench_fail(g->out, "load_rows: %zu objects, expected %d", objs->len, LOAD_N);
        eng_check_failed(g);
        return;
    }
    for (size_t i = 0; i < objs->len; i++) {
        const book *b = objs->items[i];
        if (!b || b->id < 1 || b->id > LOAD_N || !b->title || b->author_id < 1) {
            bench_fail(g->out, "load_rows: object %zu is not a book of the reference data", i);
            eng_check_failed(g);
            return;
        }
        l->price_sum += b->price;
    }
    eng_phase_done(g);
}

/* Select(Book).where(Book.id <= 100000) through the session. */
static int run_load_rows(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    load_run l = {.g = &g};
    aorm_session *s = NULL;
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "load_rows";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        s = aorm_session_new(g.e, NULL);
        if (!s) rc = bench_fail(out, "aorm_session_new failed");
        if (rc == 0) {
            aorm_stmt *q = aorm_select(&book_model);
            aorm_where(q, aorm_le(AORM_COL(book, id), aorm_int8(LOAD_N)));
            rc = aorm_session_query(s, q, NULL, load_done, &l); /* takes q, also on error */
            rc = rc != 0 ? eng_code(&g, "aorm_session_query", rc) : eng_wait(&g);
        }
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = LOAD_N;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
    }
    aorm_session_free(s);
    eng_close(&g);
    return rc;
}

/* ---- raw_load_rows: the ceiling of load_rows ------------------------------- */

/* A book as a hand-written client would hold it. */
typedef struct raw_book {
    int64_t id;
    int64_t author_id;
    char *title; /* in the run's title arena */
    int32_t year;
    double price;
} raw_book;

static uint32_t get_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get_be64(const unsigned char *p) {
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static void put_be64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}

/* Decodes every row of a binary books result into a malloc'd array, the
 * titles copied into one malloc'd arena. Returns 0, or bench_fail(). */
static int raw_decode_books(const PGresult *r, raw_book **books_out, char **arena_out, bench_out *out) {
    int n = PQntuples(r);
    if (PQnfields(r) != 5) return bench_fail(out, "raw_load_rows: %d columns", PQnfields(r));
    size_t bytes = 0;
    for (int i = 0; i < n; i++) bytes += (size_t)PQgetlength(r, i, 2) + 1;
    raw_book *books = malloc(((size_t)n + 1) * sizeof(*books));
    char *arena = malloc(bytes + 1);
    *books_out = books;
    *arena_out = arena;
    if (!books || !arena) return bench_fail(out, "out of memory");
    char *p = arena;
    for (int i = 0; i < n; i++) {
        raw_book *b = &books[i];
        for (int c = 0; c < 5; c++)
            if (PQgetisnull(r, i, c)) return bench_fail(out, "raw_load_rows: row %d: NULL value", i);
        if (PQgetlength(r, i, 0) != 8 || PQgetlength(r, i, 1) != 8 || PQgetlength(r, i, 3) != 4 ||
            PQgetlength(r, i, 4) != 8)
            return bench_fail(out, "raw_load_rows: row %d: bad value length", i);
        b->id = (int64_t)get_be64((const unsigned char *)PQgetvalue(r, i, 0));
        b->author_id = (int64_t)get_be64((const unsigned char *)PQgetvalue(r, i, 1));
        int tlen = PQgetlength(r, i, 2);
        memcpy(p, PQgetvalue(r, i, 2), (size_t)tlen);
        p[tlen] = '\0';
        b->title = p;
        p += tlen + 1;
        b->year = (int32_t)get_be32((const unsigned char *)PQgetvalue(r, i, 3));
        uint64_t bits = get_be64((const unsigned char *)PQgetvalue(r, i, 4));
        memcpy(&b->price, &bits, sizeof(b->price));
        if (b->id < 1 || b->id > LOAD_N || b->author_id < 1)
            return bench_fail(out, "raw_load_rows: row %d is not a book of the reference data", i);
    }
    return 0;
}

/* SELECT ... FROM books WHERE id <= 100000 with plain blocking libpq:
 * binary parameter and results, rows decoded into structs. */
static int run_raw_load_rows(bench_ctx *ctx, bench_out *out) {
    PGconn *c = PQconnectdb(ctx->dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        bench_fail(out, "connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    unsigned char param[8];
    put_be64(param, LOAD_N);
    const char *values[1] = {(const char *)param};
    const int lengths[1] = {8};
    const int formats[1] = {1};
    const Oid types[1] = {20}; /* int8 */
    raw_book *books = NULL;
    char *arena = NULL;
    int rc = 0;

    double t0 = bench_now();
    PGresult *r = PQexecParams(c, LOAD_SQL, 1, types, values, lengths, formats, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = bench_fail(out, "%s: %s", LOAD_SQL, PQresultErrorMessage(r));
    else if (PQntuples(r) != LOAD_N)
        rc = bench_fail(out, "raw_load_rows: %d rows, expected %d", PQntuples(r), LOAD_N);
    if (rc == 0) rc = raw_decode_books(r, &books, &arena, out);
    out->seconds = bench_now() - t0;
    out->ops = LOAD_N;
    out->queries = 1;
    /* Not timed, as load_rows does not time freeing its session. */
    PQclear(r);
    free(books);
    free(arena);
    PQfinish(c);
    return rc;
}

/* ---- uow_update ------------------------------------------------------------ */

typedef struct uow_run {
    eng *g;
    double sum_before; /* of the prices as loaded */
} uow_run;

static void uow_committed(aorm_session *s, const aorm_error *err, void *user) {
    (void)s;
    uow_run *u = user;
    eng *g = u->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_commit", err);
        return;
    }
    g->t_end = bench_now();
    eng_phase_done(g);
}

static void uow_loaded(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    uow_run *u = user;
    eng *g = u->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_query", err);
        return;
    }
    if (objs->len != UOW_N) {
        bench_fail(g->out, "uow_update: %zu books loaded, expected %d", objs->len, UOW_N);
        eng_check_failed(g);
        return;
    }
    for (size_t i = 0; i < objs->len; i++) {
        book *b = objs->items[i];
        u->sum_before += b->price;
        b->price = b->price + 1.0;
    }
    int rc = aorm_session_commit(s, uow_committed, u);
    if (rc != 0) eng_code(g, "aorm_session_commit", rc);
}

/* Load books 1..1000, change every price, commit. */
static int run_uow_update(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    uow_run u = {.g = &g};
    aorm_session *s = NULL;
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "uow_update";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        s = aorm_session_new(g.e, NULL);
        if (!s) rc = bench_fail(out, "aorm_session_new failed");
        if (rc == 0) {
            aorm_stmt *q = aorm_select(&book_model);
            aorm_where(q, aorm_le(AORM_COL(book, id), aorm_int8(UOW_N)));
            rc = aorm_session_query(s, q, NULL, uow_loaded, &u);
            rc = rc != 0 ? eng_code(&g, "aorm_session_query", rc) : eng_wait(&g);
        }
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = UOW_N;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
        if (rc == 0 && out->queries != UOW_STATEMENTS)
            rc = bench_fail(out, "uow_update: the engine sent %llu statements, expected %d "
                                 "(SELECT, BEGIN, %d UPDATEs, COMMIT)",
                            (unsigned long long)out->queries, UOW_STATEMENTS, UOW_N);
    }
    /* The server must hold every new price: their sum grew by 1,000. */
    if (rc == 0) {
        eng_answer a;
        rc = eng_run(&g, UOW_SUM_SQL, &a);
        double want = u.sum_before + UOW_N;
        if (rc == 0 && (!a.has_value || fabs(a.d - want) > 1e-6 * fabs(want)))
            rc = bench_fail(out, "uow_update: sum(price) is %.4f after the commit, expected %.4f", a.d, want);
    }
    aorm_session_free(s);
    eng_close(&g);
    return rc;
}

/* ---- orm_bulk_insert ------------------------------------------------------- */

typedef struct bulk_run {
    eng *g;
} bulk_run;

static void bulk_committed(aorm_session *s, const aorm_error *err, void *user) {
    (void)s;
    bulk_run *b = user;
    eng *g = b->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_commit", err);
        return;
    }
    g->t_end = bench_now();
    eng_phase_done(g);
}

/* 100,000 new objects (the peer's add_all of BulkBook rows), one commit. */
static int run_orm_bulk_insert(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    bulk_run b = {.g = &g};
    aorm_session *s = NULL;
    bulk_book **objs = malloc(BULK_N * sizeof(*objs));
    if (rc == 0 && !objs) rc = bench_fail(out, "out of memory");
    if (rc == 0) {
        eng_answer a;
        rc = eng_run(&g, "TRUNCATE bulk_books", &a);
    }
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "orm_bulk_insert";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        s = aorm_session_new(g.e, NULL);
        if (!s) rc = bench_fail(out, "aorm_session_new failed");
        char title[16];
        for (int i = 0; rc == 0 && i < BULK_N; i++) {
            bulk_book *o = aorm_session_new_object(s, &bulk_book_model);
            if (!o) {
                rc = bench_fail(out, "aorm_session_new_object failed");
                break;
            }
            snprintf(title, sizeof(title), "b%d", i);
            o->author_id = 1 + i % 10000;
            o->title = aorm_session_strdup(s, title);
            o->year = 2000;
            o->price = 1.5;
            objs[i] = o;
            int arc = o->title ? aorm_session_add(s, o) : AORM_ENOMEM;
            if (arc != 0) rc = eng_code(&g, "aorm_session_add", arc);
        }
        if (rc == 0) {
            rc = aorm_session_commit(s, bulk_committed, &b);
            rc = rc != 0 ? eng_code(&g, "aorm_session_commit", rc) : eng_wait(&g);
        }
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = BULK_N;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
    }
    /* Every object has its key and is persistent; the table holds them. */
    for (int i = 0; rc == 0 && i < BULK_N; i++)
        if (objs[i]->id == 0 || aorm_object_state_of(s, objs[i]) != AORM_PERSISTENT)
            rc = bench_fail(out, "orm_bulk_insert: object %d: id %lld, state %d after the commit", i,
                            (long long)objs[i]->id, (int)aorm_object_state_of(s, objs[i]));
    if (rc == 0) rc = eng_check_count(&g, "SELECT count(*) FROM bulk_books", BULK_N);
    aorm_session_free(s);
    eng_close(&g);
    free(objs);
    return rc;
}

const bench_workload wl_session_list[] = {
    {"pk_get_seq", "session", run_pk_get_seq},
    {"pk_get_concurrent", "session", run_pk_get_concurrent},
    {"raw_load_rows", "raw", run_raw_load_rows},
    {"load_rows", "session", run_load_rows},
    {"uow_update", "session", run_uow_update},
    {"orm_bulk_insert", "session", run_orm_bulk_insert},
    {NULL, NULL, NULL}
};
