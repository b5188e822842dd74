/* wl_cache.c -- the second-level cache (cache.h) against PostgreSQL and
 * against plain hiredis, on the reference data.
 *
 *   get_many             300 rounds of aorm_session_get_many of 1,000
 *                        authors from PostgreSQL, one at a time, a fresh
 *                        session per round; the keys raw_hiredis_mget
 *                        draws (its seed), as author ids
 *   cache_get_many       the same through the cache, warm (every author
 *                        written back before the timed part): one MGET
 *                        per round, every value decoded into an object
 *                        of the session's identity map
 *   cache_selectin_tree  authors 1..1,000 by get_many, then books -> tags
 *                        (the selectin_tree plan) with author.books and
 *                        book.tags cached, warm: three MGETs, no statement
 *   cache_selectin_tree_cold  the same on an empty cache (a fresh key
 *                        prefix): PostgreSQL, plus the write-backs
 *   requests_mix_cached  requests_mix's 2,000 requests, 100 at once, each
 *                        its own session: the author by id, then books ->
 *                        tags, through the cache (warm)
 *   commit_invalidation  1,000 commits one after another, each a new name
 *                        for one cached author (rows of the workload's own):
 *                        the invalidation's cost is this minus
 *   commit_plain         the same commits without a cache
 *
 * Redis: the sandbox's unix socket when AORM_TEST_REDIS_SOCKET is set,
 * else AORM_TEST_REDIS, with AORM_TEST_REDIS_USER / _PASSWORD. Keys go
 * under aorm:b<pid>.<run>: (short, as a real prefix would be). Timing and the engine fixture are
 * eng.h's. Must not: time warming, or check less than the peers' own
 * checks (counts, ids). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"
#include "models.h"

#define GM_ROUNDS 300
#define GM_BATCH 1000
#define GM_KEYS 10000
#define GM_SEED 2u /* raw_hiredis_mget's */

#define TREE_AUTHORS 1000
#define MIX_N 2000
#define MIX_TASKS 100
#define MIX_AUTHORS 10000
#define COMMITS 1000
#define COMMIT_ROWS 100

static const aorm_load_plan *const plan_tree =
    AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)));

/* ---- the cache ------------------------------------------------------------------- */

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static char host_buf[256];

/* A cache on g's loop, regions for authors, books and tags (and, with
 * trees, author.books and book.tags), keys under a prefix named after
 * the workload. Returns NULL with the reason recorded. */
static size_t near_entries; /* near cache of the authors region (0: none) */

static aorm_cache *cache_open(eng *g, const char *name, bool trees) {
    aorm_cache_options co;
    aorm_cache_options_init(&co);
    const char *sock = env("AORM_TEST_REDIS_SOCKET"), *hp = env("AORM_TEST_REDIS");
    if (sock) {
        co.redis.unix_path = sock;
    } else if (hp && strrchr(hp, ':')) {
        const char *colon = strrchr(hp, ':');
        snprintf(host_buf, sizeof(host_buf), "%.*s", (int)(colon - hp), hp);
        co.redis.host = host_buf;
        co.redis.port = atoi(colon + 1);
    } else {
        bench_fail(g->out, "AORM_TEST_REDIS is not set: run inside scripts/sandbox");
        return NULL;
    }
    co.redis.password = env("AORM_TEST_REDIS_PASSWORD");
    co.redis.username = co.redis.password ? env("AORM_TEST_REDIS_USER") : NULL;
    co.deadline = 5; /* a benchmark that falls back to PostgreSQL measures nothing */
    char prefix[96];
    static int run_no; /* a fresh prefix per run: a cold run starts empty, also under --repeat */
    (void)name;
    snprintf(prefix, sizeof(prefix), "aorm:b%d.%d:", (int)getpid(), ++run_no);
    co.prefix = prefix;
    aorm_cache *c = aorm_cache_new(g->loop, &co);
    aorm_cache_region_options ro;
    aorm_cache_region_options_init(&ro);
    ro.near_max_entries = near_entries;
    if (!c || !aorm_cache_model(c, &author_model, &ro) || !aorm_cache_model(c, &book_model, NULL) ||
        !aorm_cache_model(c, &tag_model, NULL) ||
        (trees && (!aorm_cache_collection(c, &author_model, AORM_REL(author, books), NULL) ||
                   !aorm_cache_collection(c, &book_model, AORM_REL(book, tags), NULL)))) {
        bench_fail(g->out, "aorm_cache_new / regions failed");
        aorm_cache_free(c);
        return NULL;
    }
    return c;
}

static aorm_session *session_with(eng *g, aorm_cache *c) {
    aorm_session_options so;
    aorm_session_options_init(&so);
    so.cache = c;
    return aorm_session_new(g->e, &so);
}

/* Runs the loop until every write-back and invalidation of c is answered
 * (Redis idle for this client). */
static int cache_settle(eng *g, aorm_cache *c) {
    double t0 = bench_now();
    for (;;) {
        aorm_redis_stats rs;
        aorm_redis_stats_get(aorm_cache_redis(c), &rs);
        if (rs.in_flight == 0 && rs.waiting == 0) return 0;
        if (bench_now() - t0 > 30) return bench_fail(g->out, "the cache's Redis commands never finished");
        ev_run(g->evl, EVRUN_ONCE);
    }
}

static int check_stats(eng *g, aorm_cache *c, const char *what) {
    aorm_cache_stats st;
    aorm_cache_stats_get(c, &st);
    if (st.errors || st.bypasses)
        return bench_fail(g->out, "%s: the cache failed (%llu errors, %llu bypasses)", what,
                          (unsigned long long)st.errors, (unsigned long long)st.bypasses);
    return 0;
}

/* ---- get_many, cache_get_many ------------------------------------------------------ */

typedef struct gm_run {
    eng *g;
    aorm_cache *c;
    int64_t (*ids)[GM_BATCH];
    int rounds;
    int round;
    aorm_session *s;
    author keys[GM_BATCH];
    const void *kp[GM_BATCH];
    int64_t sum;
} gm_run;

static void gm_send(gm_run *p);

static void gm_got(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    gm_run *p = user;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "get_many", err);
        return;
    }
    if (objs->len != GM_BATCH) {
        bench_fail(g->out, "%s: %zu objects", g->phase, objs->len);
        eng_check_failed(g);
        return;
    }
    for (size_t i = 0; i < objs->len; i++) {
        const author *a = objs->items[i];
        if (!a || a->id != p->ids[p->round][i] || !a->name) {
            bench_fail(g->out, "%s: round %d key %zu: wrong object", g->phase, p->round, i);
            eng_check_failed(g);
            return;
        }
        p->sum += a->born.value + (int64_t)strlen(a->name);
    }
    aorm_session_free(s);
    p->s = NULL;
    if (++p->round == p->rounds) {
        g->t_end = bench_now();
        eng_phase_done(g);
        return;
    }
    gm_send(p);
}

static void gm_send(gm_run *p) {
    p->s = p->c ? session_with(p->g, p->c) : aorm_session_new(p->g->e, NULL);
    if (!p->s) {
        bench_fail(p->g->out, "aorm_session_new failed");
        eng_check_failed(p->g);
        return;
    }
    for (int k = 0; k < GM_BATCH; k++) p->keys[k].id = p->ids[p->round][k];
    int rc = aorm_session_get_many(p->s, &author_model, p->kp, GM_BATCH, NULL, gm_got, p);
    if (rc < 0) eng_code(p->g, "aorm_session_get_many", rc);
}

static int run_gm(bench_ctx *ctx, bench_out *out, bool cached) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    gm_run *p = calloc(1, sizeof(*p));
    int64_t(*ids)[GM_BATCH] = malloc(sizeof(int64_t[GM_ROUNDS][GM_BATCH]));
    if (rc == 0 && (!p || !ids)) rc = bench_fail(out, "out of memory");
    if (rc == 0) {
        bench_rng_seed(&ctx->rng, GM_SEED);
        for (int r = 0; r < GM_ROUNDS; r++)
            for (int k = 0; k < GM_BATCH; k++) ids[r][k] = 1 + bench_rng_range(&ctx->rng, 0, GM_KEYS - 1);
        *p = (gm_run){.g = &g, .ids = ids};
        for (int k = 0; k < GM_BATCH; k++) p->kp[k] = &p->keys[k];
    }
    if (rc == 0 && cached && !(p->c = cache_open(&g, "get_many", false))) rc = -1;
    if (rc == 0 && cached) {
        /* warm: every author once, written back */
        int64_t(*all)[GM_BATCH] = malloc(sizeof(int64_t[GM_KEYS / GM_BATCH][GM_BATCH]));
        if (!all) rc = bench_fail(out, "out of memory");
        for (int i = 0; rc == 0 && i < GM_KEYS; i++) all[i / GM_BATCH][i % GM_BATCH] = 1 + i;
        if (rc == 0) {
            p->ids = all;
            p->rounds = GM_KEYS / GM_BATCH;
            g.phase = "warm";
            gm_send(p);
            rc = eng_wait(&g);
        }
        if (rc == 0) rc = cache_settle(&g, p->c);
        if (rc == 0 && near_entries) { /* Redis hits fill the near cache (once tracking is ready) */
            for (int i = 0; i < 100 && rc == 0; i++) ev_run(g.evl, EVRUN_NOWAIT);
            p->round = 0;
            gm_send(p);
            rc = eng_wait(&g);
            if (rc == 0) rc = cache_settle(&g, p->c);
        }
        free(all);
        p->ids = ids;
        p->round = 0;
        p->sum = 0;
    }
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        p->rounds = GM_ROUNDS;
        g.phase = cached ? "cache_get_many" : "get_many";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        gm_send(p);
        rc = eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = (uint64_t)GM_ROUNDS * GM_BATCH;
        out->queries = st1.statements - st0.statements;
        bench_extra(out, "keys_per_query", "%d", GM_BATCH);
        if (cached && rc == 0) {
            aorm_cache_stats cs;
            aorm_cache_stats_get(p->c, &cs);
            bench_extra(out, "hits", "%llu", (unsigned long long)cs.hits);
            if (near_entries) bench_extra(out, "near_hits", "%llu", (unsigned long long)cs.near_hits);
            if (cs.misses > GM_KEYS || out->queries != 0)
                rc = bench_fail(out, "cache_get_many: %llu misses, %llu statements while timed",
                                (unsigned long long)cs.misses, (unsigned long long)out->queries);
            if (rc == 0) rc = check_stats(&g, p->c, "cache_get_many");
        }
        if (ctx->verbose) fprintf(stderr, "%s: checksum %lld\n", g.phase, (long long)p->sum);
    }
    if (p) aorm_session_free(p->s);
    if (p) aorm_cache_free(p->c); /* before the loop goes */
    eng_close(&g);
    free(p);
    free(ids);
    return rc;
}

static int run_get_many(bench_ctx *ctx, bench_out *out) { return run_gm(ctx, out, false); }
static int run_cache_get_many(bench_ctx *ctx, bench_out *out) { return run_gm(ctx, out, true); }
static int run_cache_get_many_near(bench_ctx *ctx, bench_out *out) {
    near_entries = GM_KEYS * 2;
    int rc = run_gm(ctx, out, true);
    near_entries = 0;
    return rc;
}

/* ---- cache_selectin_tree ------------------------------------------------------------- */

typedef struct tree_run {
    eng *g;
    aorm_session *s;
    author keys[TREE_AUTHORS];
    const void *kp[TREE_AUTHORS];
    void **authors;
    size_t nauthors;
    uint64_t nbooks, ntags;
} tree_run;

static void tree_loaded(aorm_session *s, const aorm_error *err, void *user) {
    tree_run *t = user;
    eng *g = t->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_load", err);
        return;
    }
    if (count_tree(g, s, t->authors, t->nauthors, &t->nbooks, &t->ntags) != 0) {
        eng_check_failed(g);
        return;
    }
    g->t_end = bench_now();
    if (t->nbooks != 10 * TREE_AUTHORS || t->ntags != 30 * TREE_AUTHORS) {
        bench_fail(g->out, "%s: %llu books, %llu tags", g->phase, (unsigned long long)t->nbooks,
                   (unsigned long long)t->ntags);
        eng_check_failed(g);
        return;
    }
    eng_phase_done(g);
}

static void tree_got(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    tree_run *t = user;
    eng *g = t->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "get_many", err);
        return;
    }
    free(t->authors);
    t->authors = malloc(objs->len * sizeof(void *));
    if (!t->authors) {
        bench_fail(g->out, "out of memory");
        eng_check_failed(g);
        return;
    }
    memcpy(t->authors, objs->items, objs->len * sizeof(void *));
    t->nauthors = objs->len;
    int rc = aorm_session_load(s, t->authors, t->nauthors, plan_tree, tree_loaded, t);
    if (rc < 0) eng_code(g, "aorm_session_load", rc);
}

/* One tree in a new session; returns 0 or -1. */
static int tree_once(tree_run *t, aorm_cache *c, const char *phase) {
    eng *g = t->g;
    aorm_session_free(t->s);
    t->s = session_with(g, c);
    if (!t->s) return bench_fail(g->out, "aorm_session_new failed");
    g->phase = phase;
    int rc = aorm_session_get_many(t->s, &author_model, t->kp, TREE_AUTHORS, NULL, tree_got, t);
    if (rc < 0) return eng_code(g, "aorm_session_get_many", rc);
    return eng_wait(g);
}

static int run_tree(bench_ctx *ctx, bench_out *out, bool warm) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    tree_run *t = calloc(1, sizeof(*t));
    aorm_cache *c = NULL;
    if (rc == 0 && !t) rc = bench_fail(out, "out of memory");
    if (rc == 0) {
        t->g = &g;
        for (int i = 0; i < TREE_AUTHORS; i++) {
            t->keys[i].id = 1 + i;
            t->kp[i] = &t->keys[i];
        }
        char name[64];
        snprintf(name, sizeof(name), "tree_%s", warm ? "warm" : "cold");
        if (!(c = cache_open(&g, name, true))) rc = -1;
    }
    if (rc == 0 && warm) {
        rc = tree_once(t, c, "warm-up");
        if (rc == 0) rc = cache_settle(&g, c);
    }
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        rc = tree_once(t, c, warm ? "cache_selectin_tree" : "cache_selectin_tree_cold");
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = t->nauthors + t->nbooks + t->ntags;
        out->queries = st1.statements - st0.statements;
        if (rc == 0 && warm && out->queries != 0)
            rc = bench_fail(out, "cache_selectin_tree: %llu statements while warm", (unsigned long long)out->queries);
        if (rc == 0) rc = check_stats(&g, c, g.phase);
    }
    if (t) aorm_session_free(t->s);
    if (rc == 0 && !warm) cache_settle(&g, c); /* the write-backs, not timed */
    aorm_cache_free(c);
    eng_close(&g);
    if (t) free(t->authors);
    free(t);
    return rc;
}

static int run_cache_tree(bench_ctx *ctx, bench_out *out) { return run_tree(ctx, out, true); }
static int run_cache_tree_cold(bench_ctx *ctx, bench_out *out) { return run_tree(ctx, out, false); }

/* ---- requests_mix_cached ---------------------------------------------------------------- */

typedef struct mix_run mix_run;

typedef struct mix_worker {
    mix_run *run;
    aorm_session *s;
    int next;
    int64_t want;
    void *obj;
} mix_worker;

struct mix_run {
    eng *g;
    aorm_cache *c;
    const int64_t *ids;
    int total;
    int step;
    int done;
    uint64_t ntags;
};

static void mix_got(aorm_session *s, void *obj, const aorm_error *err, void *user);

static int mix_issue(mix_worker *w) {
    mix_run *p = w->run;
    if (w->next >= p->total) return 0;
    w->want = p->ids[w->next];
    w->next += p->step;
    w->s = session_with(p->g, p->c);
    if (!w->s) {
        bench_fail(p->g->out, "aorm_session_new failed");
        eng_check_failed(p->g);
        return -1;
    }
    author key = {.id = w->want};
    int rc = aorm_session_get(w->s, &author_model, &key, NULL, mix_got, w);
    return rc != 0 ? eng_code(p->g, "aorm_session_get", rc) : 0;
}

static void mix_loaded(aorm_session *s, const aorm_error *err, void *user) {
    mix_worker *w = user;
    mix_run *p = w->run;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "request", err);
        return;
    }
    uint64_t nb = 0, nt = 0;
    if (count_tree(g, s, &w->obj, 1, &nb, &nt) != 0) {
        eng_check_failed(g);
        return;
    }
    if (nb != 10) {
        bench_fail(g->out, "requests_mix_cached: author %lld has %llu books", (long long)w->want,
                   (unsigned long long)nb);
        eng_check_failed(g);
        return;
    }
    p->ntags += nt;
    aorm_session_free(s);
    w->s = NULL;
    if (++p->done == p->total) {
        g->t_end = bench_now();
        eng_phase_done(g);
        return;
    }
    mix_issue(w);
}

static void mix_got(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    mix_worker *w = user;
    eng *g = w->run->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "request", err);
        return;
    }
    if (!obj || ((const author *)obj)->id != w->want) {
        bench_fail(g->out, "requests_mix_cached: author %lld missing", (long long)w->want);
        eng_check_failed(g);
        return;
    }
    w->obj = obj;
    int rc = aorm_session_load(s, &w->obj, 1, plan_tree, mix_loaded, w);
    if (rc < 0) eng_code(g, "aorm_session_load", rc);
}

static int mix_phase(eng *g, mix_run *p, mix_worker *workers, const char *phase) {
    g->phase = phase;
    p->done = 0;
    p->ntags = 0;
    int rc = 0;
    for (int k = 0; rc == 0 && k < MIX_TASKS; k++) {
        workers[k] = (mix_worker){.run = p, .next = k};
        rc = mix_issue(&workers[k]);
    }
    if (rc == 0) rc = eng_wait(g);
    return rc;
}

static int run_requests_mix_cached(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    int64_t *ids = malloc(MIX_N * sizeof(*ids));
    mix_worker *workers = calloc(MIX_TASKS, sizeof(*workers));
    mix_run p = {.g = &g, .ids = ids, .total = MIX_N, .step = MIX_TASKS};
    if (rc == 0 && (!ids || !workers)) rc = bench_fail(out, "out of memory");
    for (int i = 0; rc == 0 && i < MIX_N; i++) ids[i] = bench_rng_range(&ctx->rng, 1, MIX_AUTHORS);
    if (rc == 0 && !(p.c = cache_open(&g, "mix", true))) rc = -1;
    /* warm: the same requests once, written back */
    if (rc == 0) rc = mix_phase(&g, &p, workers, "warm-up");
    if (rc == 0) rc = cache_settle(&g, p.c);
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        rc = mix_phase(&g, &p, workers, "requests_mix_cached");
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = MIX_N;
        out->queries = st1.statements - st0.statements;
        if (rc == 0 && out->seconds > 0) bench_extra(out, "requests_per_s", "%.0f", MIX_N / out->seconds);
        bench_extra(out, "inflight", "%d", MIX_TASKS);
        if (rc == 0 && p.ntags != (uint64_t)MIX_N * 30)
            rc = bench_fail(out, "requests_mix_cached: %llu tag links", (unsigned long long)p.ntags);
        if (rc == 0) rc = check_stats(&g, p.c, "requests_mix_cached");
    }
    for (int k = 0; workers && k < MIX_TASKS; k++) aorm_session_free(workers[k].s);
    aorm_cache_free(p.c);
    eng_close(&g);
    free(workers);
    free(ids);
    return rc;
}

/* ---- commit_invalidation, commit_plain --------------------------------------------------- */

typedef struct cm_run {
    eng *g;
    aorm_cache *c;
    int64_t first_id;
    int i, n;
    aorm_session *s;
    char name[64];
} cm_run;

static void cm_next(cm_run *p);

static void cm_committed(aorm_session *s, const aorm_error *err, void *user) {
    cm_run *p = user;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "commit", err);
        return;
    }
    aorm_session_free(s);
    p->s = NULL;
    if (++p->i == p->n) {
        g->t_end = bench_now();
        eng_phase_done(g);
        return;
    }
    cm_next(p);
}

static void cm_got(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    cm_run *p = user;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err || !obj) {
        if (err) eng_error(g, "get", err);
        else {
            bench_fail(g->out, "commit: row missing");
            eng_check_failed(g);
        }
        return;
    }
    author *a = obj;
    snprintf(p->name, sizeof(p->name), "bench-cache-commit %d", p->i);
    a->name = p->name;
    int rc = aorm_session_commit(s, cm_committed, p);
    if (rc < 0) eng_code(g, "aorm_session_commit", rc);
}

static void cm_next(cm_run *p) {
    p->s = p->c ? session_with(p->g, p->c) : aorm_session_new(p->g->e, NULL);
    if (!p->s) {
        bench_fail(p->g->out, "aorm_session_new failed");
        eng_check_failed(p->g);
        return;
    }
    author key = {.id = p->first_id + p->i % COMMIT_ROWS};
    int rc = aorm_session_get(p->s, &author_model, &key, NULL, cm_got, p);
    if (rc < 0) eng_code(p->g, "aorm_session_get", rc);
}

static int run_commits(bench_ctx *ctx, bench_out *out, bool cached) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    cm_run p = {.g = &g};
    char sql[256];
    /* the workload's own rows, above every id in use */
    eng_answer a = {0};
    if (rc == 0) rc = eng_run(&g, "SELECT COALESCE(max(id), 0) + 1000000 FROM authors", &a);
    if (rc == 0) {
        p.first_id = a.i;
        snprintf(sql, sizeof(sql),
                 "INSERT INTO authors(id, name, born) SELECT %lld + g, 'bench-cache-commit', 1 "
                 "FROM generate_series(0, %d) g",
                 (long long)p.first_id, COMMIT_ROWS - 1);
        rc = eng_run(&g, sql, &a);
    }
    if (rc == 0 && cached && !(p.c = cache_open(&g, "commit", false))) rc = -1;
    if (rc == 0) { /* warm: every row read once (cached: written back) */
        gm_run *w = calloc(1, sizeof(*w));
        int64_t(*wids)[GM_BATCH] = calloc(1, sizeof(int64_t[1][GM_BATCH]));
        if (!w || !wids) rc = bench_fail(out, "out of memory");
        if (rc == 0) {
            *w = (gm_run){.g = &g, .c = p.c, .ids = wids, .rounds = 1};
            for (int k = 0; k < GM_BATCH; k++) {
                wids[0][k] = p.first_id + k % COMMIT_ROWS;
                w->kp[k] = &w->keys[k];
            }
            g.phase = "warm-up";
            gm_send(w);
            rc = eng_wait(&g);
            aorm_session_free(w->s);
        }
        free(w);
        free(wids);
        if (rc == 0 && p.c) rc = cache_settle(&g, p.c);
    }
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        p.i = 0;
        p.n = COMMITS;
        g.phase = cached ? "commit_invalidation" : "commit_plain";
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        cm_next(&p);
        rc = eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = COMMITS;
        out->queries = st1.statements - st0.statements;
        if (rc == 0 && out->seconds > 0) bench_extra(out, "us_per_commit", "%.1f", out->seconds * 1e6 / COMMITS);
        if (cached) bench_extra(out, "keys_per_commit", "%d", 1);
        if (rc == 0 && p.c) {
            aorm_cache_stats cs;
            aorm_cache_stats_get(p.c, &cs);
            bench_extra(out, "hits", "%llu", (unsigned long long)cs.hits);
            if (cs.errors) rc = bench_fail(out, "commit_invalidation: %llu cache errors", (unsigned long long)cs.errors);
        }
    }
    aorm_session_free(p.s);
    if (p.first_id) {
        snprintf(sql, sizeof(sql), "DELETE FROM authors WHERE id >= %lld AND id < %lld", (long long)p.first_id,
                 (long long)p.first_id + COMMIT_ROWS);
        int failed = g.failed;
        g.failed = 0;
        eng_answer d = {0};
        eng_run(&g, sql, &d);
        g.failed = failed;
    }
    if (p.c) cache_settle(&g, p.c);
    aorm_cache_free(p.c);
    eng_close(&g);
    return rc;
}

static int run_commit_invalidation(bench_ctx *ctx, bench_out *out) { return run_commits(ctx, out, true); }
static int run_commit_plain(bench_ctx *ctx, bench_out *out) { return run_commits(ctx, out, false); }

const bench_workload wl_cache_list[] = {
    {"get_many", "cache", run_get_many},
    {"cache_get_many", "cache", run_cache_get_many},
    {"cache_get_many_near", "cache", run_cache_get_many_near},
    {"cache_selectin_tree", "cache", run_cache_tree},
    {"cache_selectin_tree_cold", "cache", run_cache_tree_cold},
    {"requests_mix_cached", "cache", run_requests_mix_cached},
    {"commit_invalidation", "cache", run_commit_invalidation},
    {"commit_plain", "cache", run_commit_plain},
    {NULL, NULL, NULL},
};
