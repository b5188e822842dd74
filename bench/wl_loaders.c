/* wl_loaders.c -- the peer's relationship-loading workloads (sqla_async.py)
 * through aorm's loaders, and their libpq ceiling.
 *
 *   raw_selectin_tree  the ceiling: blocking libpq, the three statements a
 *                      selectin tree needs (authors id <= 1000; their books
 *                      `author_id = ANY($1::bigint[])`; the books' tags
 *                      through book_tags `book_id = ANY($1)`), binary
 *                      parameters and results, every row decoded into a
 *                      struct, tags de-duplicated by id, and the objects
 *                      linked with arrays of pointers: 3 round trips
 *   selectin_tree      one session: authors id <= 1000 with
 *                      AORM_SELECTIN_THEN(author, books,
 *                      AORM_SELECTIN(book, tags)); counts checked
 *                      (1,000 / 10,000 / 30,000); ops = authors + books +
 *                      tag links, as the peer returns
 *   n_plus_one         the anti-pattern, for comparison: the same authors
 *                      without a plan, then one books query per author
 *                      (1,000 queries one after another in one session);
 *                      ops = authors + books
 *   requests_mix       2,000 "requests", 100 at once: each its own session
 *                      that selects one author by id (seeded random ids)
 *                      with books -> tags, and checks its 10 books
 *
 * Timing: from the first call of the workload (sessions are created inside
 * the timed part, as the peer's `async with AsyncSession` is) to its last
 * callback. Not timed: connecting and warming the pool, drawing the ids,
 * freeing the objects. `queries` is the engine's statement count
 * (aorm_engine_stats_get) over the timed part.
 *
 * The engine scaffolding (a private loop and engine per workload, pool of
 * ctx->pool_size warmed first, a watchdog per phase, errors to stderr) is
 * eng.h's. Must not: share state between workloads, or time anything but
 * the measured work. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"
#include "models.h"

#define TREE_AUTHORS 1000
#define BOOKS_PER_AUTHOR 10
#define TAGS_PER_BOOK 3

#define MIX_N 2000
#define MIX_TASKS 100
#define MIX_AUTHORS 10000

static const aorm_load_plan *const plan_tree =
    AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)));

/* ---- counting a loaded tree ------------------------------------------------ */

/* Counts the books and tag links under the authors through the checked
 * accessor (AORM_GET_REL), as the peer's len(a.books) / len(b.tags) go
 * through its attribute instrumentation. Returns 0, or -1 with the reason
 * recorded when a relationship is not loaded. */
int count_tree(eng *g, aorm_session *s, void *const *authors, size_t n, uint64_t *nbooks, uint64_t *ntags) {
    uint64_t nb = 0, nt = 0;
    for (size_t i = 0; i < n; i++) {
        aorm_list *books;
        if (AORM_GET_REL(s, author, authors[i], books, &books) != 0)
            return bench_fail(g->out, "%s: %s", g->phase, aorm_session_errmsg(s));
        nb += books->len;
        for (size_t j = 0; j < books->len; j++) {
            aorm_list *tags;
            if (AORM_GET_REL(s, book, books->items[j], tags, &tags) != 0)
                return bench_fail(g->out, "%s: %s", g->phase, aorm_session_errmsg(s));
            nt += tags->len;
        }
    }
    *nbooks = nb;
    *ntags = nt;
    return 0;
}

/* ---- selectin_tree ----------------------------------------------------------- */

typedef struct tree_run {
    eng *g;
    uint64_t nauthors, nbooks, ntags;
} tree_run;

static void tree_loaded(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    tree_run *t = user;
    eng *g = t->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_query", err);
        return;
    }
    if (count_tree(g, s, objs->items, objs->len, &t->nbooks, &t->ntags) != 0) {
        eng_check_failed(g);
        return;
    }
    t->nauthors = objs->len;
    g->t_end = bench_now();
    if (t->nauthors != TREE_AUTHORS || t->nbooks != BOOKS_PER_AUTHOR * TREE_AUTHORS ||
        t->ntags != BOOKS_PER_AUTHOR * TAGS_PER_BOOK * TREE_AUTHORS) {
        bench_fail(g->out, "selectin_tree: %llu authors, %llu books, %llu tags", (unsigned long long)t->nauthors,
                   (unsigned long long)t->nbooks, (unsigned long long)t->ntags);
        eng_check_failed(g);
        return;
    }
    eng_phase_done(g);
}

/* select(Author).where(Author.id <= 1000).options(selectinload(books).selectinload(tags)) */
static int run_selectin_tree(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    tree_run t = {.g = &g};
    aorm_session *s = NULL;
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "selectin_tree";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        s = aorm_session_new(g.e, NULL);
        if (!s) rc = bench_fail(out, "aorm_session_new failed");
        if (rc == 0) {
            aorm_stmt *q = aorm_select(&author_model);
            aorm_where(q, aorm_le(AORM_COL(author, id), aorm_int8(TREE_AUTHORS)));
            aorm_query_options qo = {.load = plan_tree};
            rc = aorm_session_query(s, q, &qo, tree_loaded, &t); /* takes q, also on error */
            rc = rc != 0 ? eng_code(&g, "aorm_session_query", rc) : eng_wait(&g);
        }
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = t.nauthors + t.nbooks + t.ntags;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
        if (rc == 0 && out->queries != 3)
            rc = bench_fail(out, "selectin_tree: %llu statements, expected 3", (unsigned long long)out->queries);
    }
    aorm_session_free(s);
    eng_close(&g);
    return rc;
}

/* ---- n_plus_one ----------------------------------------------------------------- */

typedef struct npo_run {
    eng *g;
    aorm_session *s;
    void **authors; /* copy of the first query's array (objects are the session's) */
    size_t nauthors;
    size_t next;    /* index of the author whose books are asked for next */
    uint64_t nbooks;
} npo_run;

static void npo_books(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user);

/* Queues the books query of the next author. Returns 0 or -1. */
static int npo_issue(npo_run *p) {
    const author *a = p->authors[p->next++];
    aorm_stmt *q = aorm_select(&book_model);
    aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(a->id)));
    int rc = aorm_session_query(p->s, q, NULL, npo_books, p);
    return rc != 0 ? eng_code(p->g, "aorm_session_query", rc) : 0;
}

static void npo_books(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    (void)s;
    npo_run *p = user;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "books of one author", err);
        return;
    }
    p->nbooks += objs->len;
    if (p->next < p->nauthors) {
        npo_issue(p);
        return;
    }
    g->t_end = bench_now();
    if (p->nbooks != BOOKS_PER_AUTHOR * TREE_AUTHORS) {
        bench_fail(g->out, "n_plus_one: %llu books, expected %d", (unsigned long long)p->nbooks,
                   BOOKS_PER_AUTHOR * TREE_AUTHORS);
        eng_check_failed(g);
        return;
    }
    eng_phase_done(g);
}

static void npo_authors(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    (void)s;
    npo_run *p = user;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "authors", err);
        return;
    }
    if (objs->len != TREE_AUTHORS) {
        bench_fail(g->out, "n_plus_one: %zu authors, expected %d", objs->len, TREE_AUTHORS);
        eng_check_failed(g);
        return;
    }
    p->authors = malloc(objs->len * sizeof(void *));
    if (!p->authors) {
        bench_fail(g->out, "out of memory");
        eng_check_failed(g);
        return;
    }
    memcpy(p->authors, objs->items, objs->len * sizeof(void *));
    p->nauthors = objs->len;
    npo_issue(p);
}

static int run_n_plus_one(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    npo_run p = {.g = &g};
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "n_plus_one";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        p.s = aorm_session_new(g.e, NULL);
        if (!p.s) rc = bench_fail(out, "aorm_session_new failed");
        if (rc == 0) {
            aorm_stmt *q = aorm_select(&author_model);
            aorm_where(q, aorm_le(AORM_COL(author, id), aorm_int8(TREE_AUTHORS)));
            rc = aorm_session_query(p.s, q, NULL, npo_authors, &p);
            rc = rc != 0 ? eng_code(&g, "aorm_session_query", rc) : eng_wait(&g);
        }
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = p.nauthors + p.nbooks;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
    }
    aorm_session_free(p.s);
    eng_close(&g);
    free(p.authors);
    return rc;
}

/* ---- requests_mix ------------------------------------------------------------- */

typedef struct mix_run mix_run;

/* One task: its share of the ids (ids[first], ids[first + step], ...),
 * one request at a time, each in a session of its own. */
typedef struct mix_worker {
    mix_run *run;
    aorm_session *s; /* the request in flight's session */
    int next;        /* index in ids of the next request */
    int64_t want;
} mix_worker;

struct mix_run {
    eng *g;
    const int64_t *ids;
    int total;
    int step;
    int done;
    uint64_t ntags; /* keeps the loaded tree observable */
};

static void mix_loaded(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user);

/* Opens a session and queues the worker's next request, if it has one
 * left. Returns 0 or -1. */
static int mix_issue(mix_worker *w) {
    mix_run *p = w->run;
    if (w->next >= p->total) return 0;
    w->want = p->ids[w->next];
    w->next += p->step;
    w->s = aorm_session_new(p->g->e, NULL);
    if (!w->s) {
        bench_fail(p->g->out, "aorm_session_new failed");
        eng_check_failed(p->g);
        return -1;
    }
    aorm_stmt *q = aorm_select(&author_model);
    aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(w->want)));
    aorm_query_options qo = {.load = plan_tree};
    int rc = aorm_session_query(w->s, q, &qo, mix_loaded, w);
    return rc != 0 ? eng_code(p->g, "aorm_session_query", rc) : 0;
}

static void mix_loaded(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    mix_worker *w = user;
    mix_run *p = w->run;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "request", err);
        return;
    }
    uint64_t nb = 0, nt = 0;
    if (objs->len != 1 || ((const author *)objs->items[0])->id != w->want) {
        bench_fail(g->out, "requests_mix: author %lld: %zu objects", (long long)w->want, objs->len);
        eng_check_failed(g);
        return;
    }
    if (count_tree(g, s, objs->items, 1, &nb, &nt) != 0) {
        eng_check_failed(g);
        return;
    }
    if (nb != BOOKS_PER_AUTHOR) {
        bench_fail(g->out, "requests_mix: author %lld has %llu books", (long long)w->want, (unsigned long long)nb);
        eng_check_failed(g);
        return;
    }
    p->ntags += nt;
    /* the request is over: its session goes (freed once this callback
     * returns), the task takes the next request */
    aorm_session_free(s);
    w->s = NULL;
    if (++p->done == p->total) {
        g->t_end = bench_now();
        eng_phase_done(g);
        return;
    }
    mix_issue(w);
}

static int run_requests_mix(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    int64_t *ids = malloc(MIX_N * sizeof(*ids));
    mix_worker *workers = calloc(MIX_TASKS, sizeof(*workers));
    mix_run p = {.g = &g, .ids = ids, .total = MIX_N, .step = MIX_TASKS};
    if (rc == 0 && (!ids || !workers)) rc = bench_fail(out, "out of memory");
    for (int i = 0; rc == 0 && i < MIX_N; i++) ids[i] = bench_rng_range(&ctx->rng, 1, MIX_AUTHORS);

    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "requests_mix";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        for (int k = 0; rc == 0 && k < MIX_TASKS; k++) {
            workers[k] = (mix_worker){.run = &p, .next = k};
            rc = mix_issue(&workers[k]);
        }
        if (rc == 0) rc = eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = MIX_N;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
        if (rc == 0 && out->seconds > 0) bench_extra(out, "requests_per_s", "%.0f", MIX_N / out->seconds);
        bench_extra(out, "inflight", "%d", MIX_TASKS);
        if (rc == 0 && p.ntags != (uint64_t)MIX_N * BOOKS_PER_AUTHOR * TAGS_PER_BOOK)
            rc = bench_fail(out, "requests_mix: %llu tag links", (unsigned long long)p.ntags);
    }
    /* After a failure, freeing a session cancels its request in flight;
     * its callback sees the failure and returns. */
    for (int k = 0; workers && k < MIX_TASKS; k++) aorm_session_free(workers[k].s);
    eng_close(&g);
    free(workers);
    free(ids);
    return rc;
}

/* ---- raw_selectin_tree: the ceiling -------------------------------------------- */

#define RAW_AUTHORS_SQL "SELECT id, name, born FROM authors WHERE id <= $1"
#define RAW_BOOKS_SQL \
    "SELECT id, author_id, title, year, price FROM books WHERE author_id = ANY($1::bigint[]) ORDER BY author_id, id"
#define RAW_TAGS_SQL                                                                              \
    "SELECT t.id, t.name, bt.book_id FROM tags t JOIN book_tags bt ON bt.tag_id = t.id "          \
    "WHERE bt.book_id = ANY($1::bigint[]) ORDER BY bt.book_id, t.id"

#define OID_INT8 20
#define OID_INT8_ARRAY 1016

typedef struct raw_tag {
    int64_t id;
    char *name;
} raw_tag;

typedef struct raw_author raw_author;

typedef struct raw_book {
    int64_t id;
    int64_t author_id;
    char *title;
    int32_t year;
    double price;
    raw_author *author;
    raw_tag **tags; /* a slice of the run's link array */
    size_t ntags;
} raw_book;

struct raw_author {
    int64_t id;
    char *name;
    int32_t born;
    bool born_null;
    raw_book **books; /* a slice of the run's book pointer array */
    size_t nbooks;
};

static uint32_t get_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get_be64(const unsigned char *p) { return (uint64_t)get_be32(p) << 32 | get_be32(p + 4); }

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void put_be64(unsigned char *p, uint64_t v) {
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

/* Strings live in a bump arena, as a session's do. */
typedef struct raw_chunk {
    struct raw_chunk *next;
    size_t used, cap;
    char data[];
} raw_chunk;

typedef struct raw_arena {
    raw_chunk *head;
} raw_arena;

static char *arena_strndup(raw_arena *a, const char *s, size_t n) {
    if (!a->head || a->head->cap - a->head->used < n + 1) {
        size_t cap = n + 1 > 65536 ? n + 1 : 65536;
        raw_chunk *c = malloc(sizeof(*c) + cap);
        if (!c) return NULL;
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    char *p = a->head->data + a->head->used;
    memcpy(p, s, n);
    p[n] = '\0';
    a->head->used += n + 1;
    return p;
}

static void arena_free(raw_arena *a) {
    while (a->head) {
        raw_chunk *n = a->head->next;
        free(a->head);
        a->head = n;
    }
}

/* id -> object (ids are > 0; 0 marks an empty slot) */
typedef struct id_map {
    int64_t *keys;
    void **vals;
    size_t cap; /* power of two */
} id_map;

static int id_map_init(id_map *m, size_t n) {
    m->cap = 16;
    while (m->cap < n * 2) m->cap *= 2;
    m->keys = calloc(m->cap, sizeof(*m->keys));
    m->vals = calloc(m->cap, sizeof(*m->vals));
    return m->keys && m->vals ? 0 : -1;
}

static void id_map_free(id_map *m) {
    free(m->keys);
    free(m->vals);
}

static size_t id_slot(const id_map *m, int64_t id) {
    size_t h = (size_t)((uint64_t)id * 0x9E3779B97F4A7C15ull >> 17) & (m->cap - 1);
    while (m->keys[h] != 0 && m->keys[h] != id) h = (h + 1) & (m->cap - 1);
    return h;
}

static void *id_map_get(const id_map *m, int64_t id) {
    size_t h = id_slot(m, id);
    return m->keys[h] == id ? m->vals[h] : NULL;
}

static void id_map_put(id_map *m, int64_t id, void *v) {
    size_t h = id_slot(m, id);
    m->keys[h] = id;
    m->vals[h] = v;
}

/* A binary int8[] parameter: header, then (length, value) per element. */
static unsigned char *int8_array(const int64_t *v, size_t n, int *len) {
    size_t sz = 20 + n * 12;
    unsigned char *b = malloc(sz);
    if (!b) return NULL;
    put_be32(b, 1);          /* dimensions */
    put_be32(b + 4, 0);      /* no NULLs */
    put_be32(b + 8, OID_INT8);
    put_be32(b + 12, (uint32_t)n);
    put_be32(b + 16, 1);     /* lower bound */
    unsigned char *p = b + 20;
    for (size_t i = 0; i < n; i++, p += 12) {
        put_be32(p, 8);
        put_be64(p + 4, (uint64_t)v[i]);
    }
    *len = (int)sz;
    return b;
}

typedef struct raw_tree {
    raw_author *authors;
    size_t nauthors;
    raw_book *books;
    size_t nbooks;
    raw_book **book_ptrs; /* authors' slices */
    raw_tag *tags;        /* distinct tags */
    size_t ntags;
    raw_tag **links;      /* books' slices */
    size_t nlinks;
    raw_arena strings;
} raw_tree;

static void raw_tree_free(raw_tree *t) {
    free(t->authors);
    free(t->books);
    free(t->book_ptrs);
    free(t->tags);
    free(t->links);
    arena_free(&t->strings);
}

/* Runs one statement with one binary parameter, binary results. */
static PGresult *raw_exec(PGconn *c, const char *sql, Oid type, const char *value, int len, bench_out *out) {
    const Oid types[1] = {type};
    const char *values[1] = {value};
    const int lengths[1] = {len};
    const int formats[1] = {1};
    PGresult *r = PQexecParams(c, sql, 1, types, values, lengths, formats, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        bench_fail(out, "raw_selectin_tree: %s", PQresultErrorMessage(r));
        PQclear(r);
        return NULL;
    }
    return r;
}

static int64_t cell_int8(const PGresult *r, int row, int col) {
    return (int64_t)get_be64((const unsigned char *)PQgetvalue(r, row, col));
}

/* The three statements, decoded and linked. Returns 0 or bench_fail(). */
static int raw_load_tree(PGconn *c, raw_tree *t, bench_out *out) {
    int rc = -1;
    PGresult *ra = NULL, *rb = NULL, *rt = NULL;
    int64_t *keys = NULL;
    unsigned char *arr = NULL;
    id_map by_author = {0}, by_book = {0}, by_tag = {0};

    /* 1. authors */
    unsigned char lim[8];
    put_be64(lim, TREE_AUTHORS);
    if (!(ra = raw_exec(c, RAW_AUTHORS_SQL, OID_INT8, (const char *)lim, 8, out))) goto out;
    int na = PQntuples(ra);
    t->authors = calloc((size_t)na + 1, sizeof(*t->authors));
    keys = malloc(((size_t)na + 1) * sizeof(*keys));
    if (!t->authors || !keys || id_map_init(&by_author, (size_t)na) != 0) {
        bench_fail(out, "out of memory");
        goto out;
    }
    for (int i = 0; i < na; i++) {
        raw_author *a = &t->authors[i];
        a->id = cell_int8(ra, i, 0);
        a->name = arena_strndup(&t->strings, PQgetvalue(ra, i, 1), (size_t)PQgetlength(ra, i, 1));
        a->born_null = PQgetisnull(ra, i, 2);
        a->born = a->born_null ? 0 : (int32_t)get_be32((const unsigned char *)PQgetvalue(ra, i, 2));
        if (!a->name) {
            bench_fail(out, "out of memory");
            goto out;
        }
        keys[i] = a->id;
        id_map_put(&by_author, a->id, a);
    }
    t->nauthors = (size_t)na;

    /* 2. their books, grouped by author */
    int alen;
    if (!(arr = int8_array(keys, (size_t)na, &alen))) {
        bench_fail(out, "out of memory");
        goto out;
    }
    if (!(rb = raw_exec(c, RAW_BOOKS_SQL, OID_INT8_ARRAY, (const char *)arr, alen, out))) goto out;
    free(arr);
    arr = NULL;
    int nb = PQntuples(rb);
    t->books = calloc((size_t)nb + 1, sizeof(*t->books));
    t->book_ptrs = malloc(((size_t)nb + 1) * sizeof(*t->book_ptrs));
    int64_t *bkeys = realloc(keys, ((size_t)nb + 1) * sizeof(*keys));
    if (bkeys) keys = bkeys;
    if (!t->books || !t->book_ptrs || !bkeys || id_map_init(&by_book, (size_t)nb) != 0) {
        bench_fail(out, "out of memory");
        goto out;
    }
    raw_author *cur = NULL;
    for (int i = 0; i < nb; i++) {
        raw_book *b = &t->books[i];
        b->id = cell_int8(rb, i, 0);
        b->author_id = cell_int8(rb, i, 1);
        b->title = arena_strndup(&t->strings, PQgetvalue(rb, i, 2), (size_t)PQgetlength(rb, i, 2));
        b->year = (int32_t)get_be32((const unsigned char *)PQgetvalue(rb, i, 3));
        uint64_t bits = get_be64((const unsigned char *)PQgetvalue(rb, i, 4));
        memcpy(&b->price, &bits, sizeof(b->price));
        if (!b->title) {
            bench_fail(out, "out of memory");
            goto out;
        }
        if (!cur || cur->id != b->author_id) {
            cur = id_map_get(&by_author, b->author_id);
            if (!cur) {
                bench_fail(out, "raw_selectin_tree: book %lld of an author not asked for", (long long)b->id);
                goto out;
            }
            cur->books = &t->book_ptrs[i];
        }
        b->author = cur;
        t->book_ptrs[i] = b;
        cur->nbooks++;
        keys[i] = b->id;
        id_map_put(&by_book, b->id, b);
    }
    t->nbooks = (size_t)nb;

    /* 3. the books' tags, grouped by book; one object per tag */
    if (!(arr = int8_array(keys, (size_t)nb, &alen))) {
        bench_fail(out, "out of memory");
        goto out;
    }
    if (!(rt = raw_exec(c, RAW_TAGS_SQL, OID_INT8_ARRAY, (const char *)arr, alen, out))) goto out;
    int nl = PQntuples(rt);
    t->links = malloc(((size_t)nl + 1) * sizeof(*t->links));
    t->tags = calloc((size_t)nl + 1, sizeof(*t->tags));
    if (!t->links || !t->tags || id_map_init(&by_tag, 64) != 0) {
        bench_fail(out, "out of memory");
        goto out;
    }
    raw_book *cb = NULL;
    for (int i = 0; i < nl; i++) {
        int64_t tid = cell_int8(rt, i, 0);
        int64_t bid = cell_int8(rt, i, 2);
        raw_tag *g = id_map_get(&by_tag, tid);
        if (!g) {
            if (t->ntags * 2 >= by_tag.cap) {
                bench_fail(out, "raw_selectin_tree: more distinct tags than expected");
                goto out;
            }
            g = &t->tags[t->ntags++];
            g->id = tid;
            g->name = arena_strndup(&t->strings, PQgetvalue(rt, i, 1), (size_t)PQgetlength(rt, i, 1));
            if (!g->name) {
                bench_fail(out, "out of memory");
                goto out;
            }
            id_map_put(&by_tag, tid, g);
        }
        if (!cb || cb->id != bid) {
            cb = id_map_get(&by_book, bid);
            if (!cb) {
                bench_fail(out, "raw_selectin_tree: a tag of book %lld, not asked for", (long long)bid);
                goto out;
            }
            cb->tags = &t->links[i];
        }
        t->links[i] = g;
        cb->ntags++;
    }
    t->nlinks = (size_t)nl;
    rc = 0;
out:
    PQclear(ra);
    PQclear(rb);
    PQclear(rt);
    free(keys);
    free(arr);
    id_map_free(&by_author);
    id_map_free(&by_book);
    id_map_free(&by_tag);
    return rc;
}

static int run_raw_selectin_tree(bench_ctx *ctx, bench_out *out) {
    PGconn *c = PQconnectdb(ctx->dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        bench_fail(out, "connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    raw_tree t;
    memset(&t, 0, sizeof(t));
    double t0 = bench_now();
    int rc = raw_load_tree(c, &t, out);
    double t1 = bench_now();
    if (rc == 0) {
        /* the same checks as selectin_tree, through the links */
        uint64_t nb = 0, nt = 0;
        for (size_t i = 0; i < t.nauthors; i++) {
            nb += t.authors[i].nbooks;
            for (size_t j = 0; j < t.authors[i].nbooks; j++) nt += t.authors[i].books[j]->ntags;
        }
        if (t.nauthors != TREE_AUTHORS || nb != BOOKS_PER_AUTHOR * TREE_AUTHORS ||
            nt != BOOKS_PER_AUTHOR * TAGS_PER_BOOK * TREE_AUTHORS)
            rc = bench_fail(out, "raw_selectin_tree: %zu authors, %llu books, %llu tags", t.nauthors,
                            (unsigned long long)nb, (unsigned long long)nt);
        out->seconds = t1 - t0;
        out->ops = t.nauthors + nb + nt;
        out->queries = 3;
    }
    raw_tree_free(&t);
    PQfinish(c);
    return rc;
}

const bench_workload wl_loaders_list[] = {
    {"raw_selectin_tree", "loaders", run_raw_selectin_tree},
    {"selectin_tree", "loaders", run_selectin_tree},
    {"n_plus_one", "loaders", run_n_plus_one},
    {"requests_mix", "loaders", run_requests_mix},
    {NULL, NULL, NULL}
};
