/* cache_query.c -- cached queries: the answer of a SELECT of a model
 * (aorm_session_query with aorm_query_options.cache), kept in Redis under
 * a hash of its compiled text and parameters, valid while the generations
 * of every table it reads are the ones it was read under.
 *
 * Read: one MGET of the tables' generations (g) and the query's key. A
 * value whose generations are the ones just read answers the query: its
 * rows become objects of the session (the identity map's copy wins, as a
 * query without populate_existing does), no statement is sent. Otherwise
 * the query goes to PostgreSQL, and its rows are written back with the
 * conditional EVAL of rows (cache.c): written only if every generation is
 * still the value read before the PostgreSQL read, so a reader that read
 * before a writer's commit never puts its answer back after the writer's
 * invalidation.
 *
 * A value: [fmt][3][layout low 32 bits][ntables u32][gen u64 per table]
 * [count u32], then per row [u32 length][the row's value (stamp 0)], then
 * the XXH3 (low 32 bits) of all before.
 *
 * Owns: one ticket per operation that asked (freed with the operation, or
 * by the reply when the operation went first). Must not: answer a session
 * that could see other rows in PostgreSQL (its own writes, an explicit
 * transaction), or write back objects the session held before it asked
 * (they may be older than the generations read). */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <xxhash.h>

#include "async_session/session_int.h"
#include "cache/cache_int.h"
#include "sql/sql_int.h"

#define QMAX_TABLES 16
#define QHEAD 14 /* fmt, kind, layout, ntables, ..., count: without the gens */

typedef struct cquery {
    int kind;                 /* AORM__TICKET_QUERY */
    aorm__sop *op;            /* NULL once the operation is gone */
    aorm_cache_region *rg;
    aorm__ctable *tabs[QMAX_TABLES];
    int ntabs;
    aorm__buf gen[QMAX_TABLES]; /* generations read ("" when none) */
    uint64_t genv[QMAX_TABLES];
    aorm__buf key;
    uint32_t seq0;            /* the session's object sequence when the MGET went out */
    bool in_flight;
    bool answered;            /* the reply came (hit or miss) */
    bool have_gen;            /* write-back allowed */
    void **items;             /* a hit: the rows (malloc'd), handed to the session once */
    size_t nitems;
} cquery;

static void cquery_free(cquery *t) {
    for (int i = 0; i < QMAX_TABLES; i++) aorm__buf_free(&t->gen[i]);
    aorm__buf_free(&t->key);
    free(t->items);
    free(t);
}

void aorm__cache_query_free(void *ticket) {
    cquery *t = ticket;
    if (!t) return;
    if (t->in_flight) t->op = NULL; /* the reply frees it */
    else cquery_free(t);
}

/* The models whose tables q reads (its FROM and JOIN items, at any depth
 * of subqueries, CTEs and set operations), added to t. Returns false when
 * q cannot be cached: raw text, row locks, too many tables. */
static bool add_tables(cquery *t, aorm_cache *c, const aorm_stmt *q) {
    if (q->kind == AORM__RAW || q->has_lock) return false;
    const aorm_model *ms[1 + 64];
    int nm = 0;
    if (q->model) ms[nm++] = q->model;
    for (int i = 0; i < q->njoins; i++) {
        if (!q->joins[i].model) continue;
        if (nm == 1 + 64) return false;
        ms[nm++] = q->joins[i].model;
    }
    for (int i = 0; i < nm; i++) {
        aorm__ctable *tb = aorm__cache_table_make(c, ms[i]);
        if (!tb) return false;
        bool seen = false;
        for (int k = 0; k < t->ntabs && !seen; k++) seen = t->tabs[k] == tb;
        if (seen) continue;
        if (t->ntabs == QMAX_TABLES) return false;
        t->tabs[t->ntabs++] = tb;
    }
    for (const aorm_stmt *sub = q->subs; sub; sub = sub->next_sub)
        if (!add_tables(t, c, sub)) return false;
    return true;
}

/* P q:<region>:<layout>: + XXH3-128 of the text and the parameters. */
static int query_key(const aorm_cache_region *rg, const aorm_stmt *q, aorm__buf *b) {
    const char *sql = aorm_stmt_sql(q);
    const aorm_params *p = aorm_stmt_params(q);
    if (!sql || !p) return -1;
    XXH3_state_t *st = XXH3_createState();
    if (!st) return -1;
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, sql, strlen(sql) + 1);
    uint32_t count = (uint32_t)p->count;
    XXH3_128bits_update(st, &count, sizeof(count));
    for (int i = 0; i < p->count; i++) {
        const aorm_param_slot *sl = &p->slots[i];
        int32_t d[3] = {(int32_t)sl->type, sl->len, sl->format};
        XXH3_128bits_update(st, d, sizeof(d));
        if (sl->len > 0) XXH3_128bits_update(st, p->data + sl->offset, (size_t)sl->len);
    }
    XXH128_hash_t h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    char hex[40];
    snprintf(hex, sizeof(hex), "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
    if (aorm__buf_append(b, rg->kprefix.data, rg->kprefix.len) < 0) return -1;
    return aorm__buf_append(b, hex, 32);
}

/* Decodes a value into t->items (objects of s). */
static bool query_decode(aorm_session *s, cquery *t, const char *v, size_t len) {
    aorm_cache_region *rg = t->rg;
    size_t head = QHEAD + 8 * (size_t)t->ntabs;
    if (len < head + 4 || (unsigned char)v[0] != AORM__CACHE_VFMT || v[1] != 3) return false;
    uint32_t lay, nt, count, sum;
    memcpy(&lay, v + 2, 4);
    memcpy(&nt, v + 6, 4);
    if (lay != (uint32_t)rg->layout || nt != (uint32_t)t->ntabs) return false;
    for (int i = 0; i < t->ntabs; i++) {
        uint64_t g;
        memcpy(&g, v + 10 + 8 * (size_t)i, 8);
        if (g != t->genv[i]) return false;
    }
    memcpy(&count, v + head - 4, 4);
    memcpy(&sum, v + len - 4, 4);
    if ((uint32_t)XXH3_64bits(v, len - 4) != sum) return false;
    if (count > (len - head - 4) / 4) return false;
    void **items = malloc(((size_t)count + 1) * sizeof(void *));
    if (!items) return false;
    size_t at = head, end = len - 4;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t cl;
        if (end - at < 4) goto bad;
        memcpy(&cl, v + at, 4);
        at += 4;
        if (end - at < cl) goto bad;
        if (!(items[i] = aorm__cache_child_object(s, rg, v + at, cl))) goto bad;
        at += cl;
    }
    if (at != end) goto bad;
    t->items = items;
    t->nitems = count;
    return true;
bad:
    free(items);
    return false;
}

static void on_qmget(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    cquery *t = user;
    t->in_flight = false;
    aorm__sop *op = t->op;
    if (!op) {
        cquery_free(t);
        return;
    }
    aorm_session *s = op->s;
    aorm_cache_region *rg = t->rg;
    aorm__session_enter(s);
    size_t nt = (size_t)t->ntabs;
    bool ok = !err && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == nt + 1;
    for (size_t g = 0; ok && g < nt; g++) {
        const redisReply *e = rep->element[g];
        ok = e->type == REDIS_REPLY_NIL || e->type == REDIS_REPLY_STRING;
        t->gen[g].len = 0;
        if (ok && e->type == REDIS_REPLY_STRING) ok = aorm__buf_append(&t->gen[g], e->str, e->len) == 0;
        if (ok) t->genv[g] = e->type == REDIS_REPLY_STRING ? aorm__cache_gen_value(e->str, e->len) : 0;
    }
    bool hit = false;
    if (ok) {
        const redisReply *v = rep->element[nt];
        hit = v->type == REDIS_REPLY_STRING && !s->closing && query_decode(s, t, v->str, v->len);
        t->have_gen = !hit && !rg->cache->freeing;
        if (hit) rg->st.hits++;
        else rg->st.misses++;
    } else {
        rg->st.errors++;
        rg->st.bypasses++;
    }
    t->answered = true;
    aorm__cache_logf(rg->cache, AORM_LOG_SQL, "cache %s: query %s%s", rg->name, hit ? "hit" : "miss",
                     ok ? "" : " (Redis unusable: read from PostgreSQL)");
    if (!s->closing && !op->answered) aorm__session_resume(op);
    aorm__session_leave(s);
}

/* May s answer from region rg reading tables t->tabs now? */
static bool may_read_query(aorm_session *s, const cquery *t) {
    if (aorm__session_has_changes(s) || !aorm__cache_usable(t->rg)) return false;
    for (int i = 0; i < t->ntabs; i++)
        if (t->tabs[i]->unacked > 0) return false;
    /* own writes and explicit transactions: the session's notes */
    return !aorm__cache_session_wrote(s, (aorm__ctable *const *)t->tabs, t->ntabs);
}

int aorm__cache_query_start(aorm__sop *op, void ***items, size_t *n) {
    aorm_session *s = op->s;
    aorm_cache *c = s->o.cache;
    cquery *t = op->cache;
    if (t) { /* resumed: Redis answered */
        if (t->kind != AORM__TICKET_QUERY || !t->answered || !t->items) return 0;
        *items = t->items;
        *n = t->nitems;
        t->items = NULL;
        return 2;
    }
    if (!c || !op->qo.cache || op->kind != SOP_QUERY || !op->stmt || op->qo.load || op->qo.populate_existing)
        return 0;
    aorm_cache_region *rg = aorm__cache_query_region(c, aorm_stmt_model(op->stmt));
    if (!rg || !aorm_stmt_readonly(op->stmt)) return 0;
    if (!(t = calloc(1, sizeof(*t)))) return 0;
    t->kind = AORM__TICKET_QUERY;
    t->rg = rg;
    if (!add_tables(t, c, op->stmt) || query_key(rg, op->stmt, &t->key) < 0) {
        rg->st.bypasses++;
        cquery_free(t);
        return 0;
    }
    if (!may_read_query(s, t)) {
        rg->st.bypasses++;
        cquery_free(t);
        return 0;
    }
    const char *argv[QMAX_TABLES + 2];
    size_t lens[QMAX_TABLES + 2];
    int a = 0;
    argv[a] = "MGET", lens[a++] = 4;
    for (int i = 0; i < t->ntabs; i++) argv[a] = t->tabs[i]->gkey.data, lens[a++] = t->tabs[i]->gkey.len;
    argv[a] = t->key.data, lens[a++] = t->key.len;
    aorm_redis_cmd_options co = {.deadline = c->deadline};
    if (aorm_redis_command_argv(c->r, a, argv, lens, &co, on_qmget, t) < 0) {
        rg->st.errors++;
        rg->st.bypasses++;
        cquery_free(t);
        return 0;
    }
    t->op = op;
    t->seq0 = s->next_seq;
    t->in_flight = true;
    op->cache = t;
    return 1;
}

/* ---- write-back ------------------------------------------------------------------------ */

typedef struct qjob {
    aorm_cache_region *rg;
    aorm__buf gkeys[QMAX_TABLES], gens[QMAX_TABLES];
    int ntabs;
    aorm__buf key, val;
} qjob;

static void qjob_free(qjob *j) {
    for (int i = 0; i < QMAX_TABLES; i++) {
        aorm__buf_free(&j->gkeys[i]);
        aorm__buf_free(&j->gens[i]);
    }
    aorm__buf_free(&j->key);
    aorm__buf_free(&j->val);
    free(j);
}

static void on_qwback(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    aorm_cache_region *rg = user;
    if (err) rg->st.errors++;
    else if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) rg->st.writebacks_refused++;
    else if (rep && rep->type == REDIS_REPLY_INTEGER) rg->st.writebacks++;
    else rg->st.errors++;
}

static void qjob_send(void *arg) {
    qjob *j = arg;
    aorm_cache_region *rg = j->rg;
    aorm_cache *c = rg->cache;
    if (c->freeing) {
        qjob_free(j);
        return;
    }
    /* EVAL script numkeys g.. qkey ng ttl gen.. value */
    const char *argv[3 + QMAX_TABLES + 1 + 2 + QMAX_TABLES + 1];
    size_t lens[3 + QMAX_TABLES + 1 + 2 + QMAX_TABLES + 1];
    char nk[16], ng[16], ttl[32];
    snprintf(nk, sizeof(nk), "%d", j->ntabs + 1);
    snprintf(ng, sizeof(ng), "%d", j->ntabs);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(rg->ttl * 1000));
    int a = 0;
    argv[a] = "EVAL", lens[a++] = 4;
    argv[a] = aorm__cache_wb_script(), lens[a] = strlen(argv[a]), a++;
    argv[a] = nk, lens[a++] = strlen(nk);
    for (int i = 0; i < j->ntabs; i++) argv[a] = j->gkeys[i].data, lens[a++] = j->gkeys[i].len;
    argv[a] = j->key.data, lens[a++] = j->key.len;
    argv[a] = ng, lens[a++] = strlen(ng);
    argv[a] = ttl, lens[a++] = strlen(ttl);
    for (int i = 0; i < j->ntabs; i++) argv[a] = j->gens[i].len ? j->gens[i].data : "", lens[a++] = j->gens[i].len;
    argv[a] = j->val.data, lens[a++] = j->val.len;
    aorm_redis_cmd_options co = {.deadline = c->deadline};
    if (aorm_redis_command_argv(c->r, a, argv, lens, &co, on_qwback, rg) < 0) rg->st.errors++;
    qjob_free(j);
}

void aorm__cache_query_loaded(aorm__sop *op, void *const *objs, size_t n) {
    cquery *t = op->cache;
    if (!t || !t->have_gen) return;
    t->have_gen = false; /* once */
    aorm_cache_region *rg = t->rg;
    aorm_cache *c = rg->cache;
    if (c->freeing || !aorm__cache_usable(rg)) return;
    for (int i = 0; i < t->ntabs; i++)
        if (t->tabs[i]->unacked > 0) return;
    for (size_t i = 0; i < n; i++) {
        /* every row as PostgreSQL returned it: not an object the session
         * held before it asked (the map's copy wins, and may be older
         * than the generations read), not one it changed */
        if (!objs[i]) return;
        aorm__obj *h = aorm__obj_hdr(objs[i]);
        if (h->model != rg->m || h->state != AORM_PERSISTENT || aorm__obj_changed(h) ||
            (int32_t)(h->seq - t->seq0) <= 0)
            return;
    }
    qjob *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->rg = rg;
    j->ntabs = t->ntabs;
    bool ok = aorm__buf_append(&j->key, t->key.data, t->key.len) == 0;
    for (int i = 0; ok && i < t->ntabs; i++)
        ok = aorm__buf_append(&j->gkeys[i], t->tabs[i]->gkey.data, t->tabs[i]->gkey.len) == 0 &&
             aorm__buf_append(&j->gens[i], t->gen[i].data ? t->gen[i].data : "", t->gen[i].len) == 0;
    char head[QHEAD + 8 * QMAX_TABLES];
    size_t hl = QHEAD + 8 * (size_t)t->ntabs;
    uint32_t lay = (uint32_t)rg->layout, nt = (uint32_t)t->ntabs, count = (uint32_t)n;
    head[0] = AORM__CACHE_VFMT;
    head[1] = 3;
    memcpy(head + 2, &lay, 4);
    memcpy(head + 6, &nt, 4);
    for (int i = 0; i < t->ntabs; i++) memcpy(head + 10 + 8 * (size_t)i, &t->genv[i], 8);
    memcpy(head + hl - 4, &count, 4);
    ok = ok && aorm__buf_append(&j->val, head, hl) == 0;
    for (size_t k = 0; ok && k < n; k++) {
        size_t lenat = j->val.len;
        uint32_t cl = 0;
        ok = aorm__buf_append(&j->val, &cl, 4) == 0 && aorm__cache_encode(rg, objs[k], 0, &j->val) == 0;
        if (ok) {
            cl = (uint32_t)(j->val.len - lenat - 4);
            memcpy(j->val.data + lenat, &cl, 4);
        }
    }
    if (ok) {
        uint32_t sum = (uint32_t)XXH3_64bits(j->val.data, j->val.len);
        ok = aorm__buf_append(&j->val, &sum, 4) == 0;
    }
    if (!ok) {
        qjob_free(j);
        return;
    }
    if (aorm__cache_wb_gate) aorm__cache_wb_gate(qjob_send, j);
    else qjob_send(j);
}
