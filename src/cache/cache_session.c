/* cache_session.c -- the second-level cache inside sessions: the read path
 * of get / get_many (identity map -> Redis -> PostgreSQL for the misses
 * -> conditional write-back) and the collection of a transaction's writes
 * for the invalidation sent after COMMIT.
 *
 * A read asks Redis one MGET: the table's generation (g), its row
 * generation (h), and the rows the identity map lacks. A value counts
 * only when it decodes exactly and carries the h just read. The hits
 * become objects in the identity map, then the session resumes the
 * operation, which answers them from the identity map and sends the
 * misses to PostgreSQL in its one statement. The rows PostgreSQL returns
 * are written back with an EVAL that writes only if g is still the value
 * read before the PostgreSQL read (see cache_int.h).
 *
 * Owns: one read ticket per operation that asked Redis (freed with the
 * operation, or by the reply when the operation went first: the ticket
 * then has no operation and touches nothing of the session), and the
 * session's transaction notes. Must not: read from the cache for a session
 * that could see different rows in PostgreSQL (its own writes, an
 * explicit transaction), write back an object the session has changed,
 * or send an invalidation before COMMIT. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <unistd.h>
#include <xxhash.h>

#include "async_session/session_int.h"
#include "cache/cache_int.h"

typedef struct cread {
    int kind;                 /* AORM__TICKET_READ */
    aorm__sop *op;            /* NULL once the operation is gone */
    aorm_cache_region *rg;
    uint64_t stamp;           /* row generation read */
    aorm__buf gen;            /* generation read ("" when Redis had none) */
    bool have_gen;            /* Redis answered: write-backs may go */
    bool in_flight;
    void **keys;              /* the key structs asked for (the operation's: read only while it lives) */
    size_t nkeys;
    aorm__buf kb;             /* their Redis keys, one after another... */
    size_t *koff;             /* ...starting at these offsets (nkeys + 1) */
    uint64_t near_seq;        /* the near cache's invalidation sequence when the MGET went out */
    uint64_t epoch;           /* the tracker's epoch then */
    /* stampede control: the loads this operation owns (it reads their keys
     * from PostgreSQL), or the number of other operations' loads it waits
     * for (an operation does one or the other, never both: no cycles) */
    aorm__load **owned;
    size_t nowned;
    int waiting;
    bool resume_queued;       /* a soon callback will resume the operation */
    /* leases across processes (region lease > 0): the misses asked for,
     * as indices into kb/koff, and what became of each */
    size_t *miss;
    unsigned char *mstate;    /* LEASE_* */
    size_t nmiss, npoll;      /* npoll: misses still waiting for another process's lease */
    aorm_timer *ptimer;
    double pdeadline;
    /* a get_many's answer in key order (NULL: not answered yet), and the
     * index of each of keys[] in it: when Redis answered every key, the
     * session delivers these without looking them up again */
    void **objs;
    size_t *midx;
    bool complete;
} cread;

enum { LEASE_ASKED, LEASE_HELD, LEASE_WAIT, LEASE_DONE };

/* SET NX PX of each lease key; 1 per key taken, 0 per key another holds. */
static const char lease_take_script[] =
    "local r = {}\n"
    "for i, k in ipairs(KEYS) do\n"
    "  if redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2]) then r[i] = 1 else r[i] = 0 end\n"
    "end\n"
    "return r\n";
/* Deletes each lease key that still holds this process's token. */
static const char lease_release_script[] =
    "local n = 0\n"
    "for i, k in ipairs(KEYS) do\n"
    "  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k); n = n + 1 end\n"
    "end\n"
    "return n\n";

struct aorm__load {
    aorm__load *next;         /* in its bucket */
    uint64_t hash;
    cread *owner;
    const void *row;          /* the owner's row for it, while the load completes */
    aorm__buf key;
    struct lwait {
        cread *t;
        void *key;            /* the waiter's key struct */
    } *waiters;
    size_t nwaiters, cap;
};

typedef struct ctx_notes {
    aorm__inval *iv;
    bool explicit_tx;
} ctx_notes;

static void *region_alloc(void *ctx, size_t n) { return aorm__region_alloc(ctx, n); }

static void loads_complete(cread *t, void *const *objs, size_t n);

static void lease_release(cread *t);

static void cread_free(cread *t) {
    lease_release(t);
    aorm_timer_free(t->ptimer);
    free(t->miss);
    free(t->mstate);
    free(t->objs);
    free(t->midx);
    loads_complete(t, NULL, 0); /* waiters of its loads read PostgreSQL themselves */
    aorm__buf_free(&t->gen);
    aorm__buf_free(&t->kb);
    free(t->koff);
    free(t->keys);
    free(t);
}

void aorm__cache_op_free(void *state) {
    cread *t = state;
    if (!t) return;
    if (t->kind == AORM__TICKET_QUERY) {
        aorm__cache_query_free(state);
        return;
    }
    aorm_timer_free(t->ptimer); /* a lease wait ends with its operation */
    t->ptimer = NULL;
    if (t->in_flight || t->waiting > 0 || t->resume_queued) {
        t->op = NULL; /* the reply, the last load waited for, or the soon callback frees it */
        loads_complete(t, NULL, 0);
    } else {
        cread_free(t);
    }
}

static bool table_written(const aorm_session *s, const aorm__ctable *t) {
    const ctx_notes *n = s->cache_tx;
    if (!n) return false;
    if (n->explicit_tx) return true;
    for (size_t i = 0; n->iv && i < n->iv->ntables; i++)
        if (n->iv->tables[i] == t) return true;
    return false;
}

bool aorm__cache_session_wrote(aorm_session *s, aorm__ctable *const *tabs, int n) {
    const ctx_notes *notes = s->cache_tx;
    if (notes && notes->explicit_tx) return true;
    for (int i = 0; i < n; i++)
        if (table_written(s, tabs[i])) return true;
    return false;
}

/* May s read region rg from the cache now? (Its own writes, an explicit
 * transaction, pending changes, a pending invalidation: no.) */
static bool may_read(aorm_session *s, const aorm_cache_region *rg) {
    if (aorm__session_has_changes(s) || !aorm__cache_usable(rg)) return false;
    if (rg->kind == AORM__REGION_ROWS) return !table_written(s, rg->table);
    for (int i = 0; i < rg->ndeps; i++)
        if (table_written(s, rg->deps[i])) return false;
    return true;
}

/* The object for a value of region rg that answers `key`: decoded into a
 * new object, or over an expired one. Returns true when the value was a
 * row of this layout, stamp and key. */
static bool take_value(aorm_session *s, aorm_cache_region *rg, const void *key, const char *v, size_t len,
                       uint64_t stamp, void **out) {
    const aorm_model *m = rg->m;
    aorm_allocator al = {region_alloc, &s->region};
    uint64_t hash = aorm__key_hash(m, key);
    aorm__obj *h = aorm__idmap_find(&s->idmap, m, key, hash);
    if (out) *out = h ? aorm__obj_data(h) : NULL;
    if (h && !(h->flags & OBJ_EXPIRED)) return true; /* arrived meanwhile: the session's copy wins */
    bool fresh = h == NULL;
    if (fresh && !(h = aorm__session_new_row(s, m, hash))) return false;
    void *obj = aorm__obj_data(h);
    if (!fresh) {
        /* decode aside, then over the expired object: a bad value leaves it alone */
        void *tmp = aorm__region_alloc(&s->region, m->size);
        if (!tmp) return false;
        memcpy(tmp, obj, m->size);
        if (aorm__cache_decode(rg, v, len, stamp, tmp, &al) < 0) return false;
        obj = tmp;
    } else if (aorm__cache_decode(rg, v, len, stamp, obj, &al) < 0) {
        return false; /* the object stays out of the map: region memory, nothing else */
    }
    for (int i = 0; i < m->ncolumns; i++) /* the value is the row asked for */
        if ((m->columns[i].flags & AORM_PK) && !aorm__field_equal(&m->columns[i], obj, key)) return false;
    if (!fresh) {
        memcpy(aorm__obj_data(h), obj, m->size);
        aorm__session_take_snapshot(s, h);
        h->flags &= (uint8_t)~OBJ_EXPIRED;
        return true;
    }
    if (aorm__session_adopt_row(s, h) != 0) return false;
    if (out) *out = obj;
    return true;
}

/* The keys of op the identity map cannot answer, into keys[] (n at most
 * op's count), with their positions in op's keys in midx[]; objs[k] gets
 * the identity map's answer to the others (as the session answers:
 * NULL for an object marked deleted). */
static size_t missing_keys(aorm_session *s, aorm__sop *op, void **keys, size_t *midx, void **objs) {
    const aorm_model *m = op->model;
    size_t n = 0;
    size_t total = op->kind == SOP_GET ? 1 : op->nkeys;
    for (size_t k = 0; k < total; k++) {
        void *key = op->kind == SOP_GET ? op->key : op->keys[k];
        aorm__obj *h = aorm__idmap_find(&s->idmap, m, key, aorm__key_hash(m, key));
        objs[k] = NULL;
        if (h && !(h->flags & OBJ_EXPIRED)) {
            if (h->state != AORM_DELETED) objs[k] = aorm__obj_data(h);
            continue;
        }
        midx[n] = k;
        keys[n++] = key;
    }
    return n;
}

bool aorm__cache_take_answer(aorm__sop *op, void ***objs) {
    cread *t = op->cache;
    if (!t || t->kind != AORM__TICKET_READ || !t->complete || !t->objs || op->kind != SOP_GET_MANY) return false;
    for (size_t k = 0; k < op->nkeys; k++) { /* unchanged since: else the session looks again */
        if (!t->objs[k]) continue;
        aorm__obj *h = aorm__obj_hdr(t->objs[k]);
        if ((h->flags & OBJ_EXPIRED) || h->state != AORM_PERSISTENT) return false;
    }
    *objs = t->objs;
    t->objs = NULL;
    return true;
}

/* ---- stampede control ------------------------------------------------------------------ */

static aorm__load **load_slot(aorm_cache *c, const char *k, size_t len, uint64_t *hash) {
    *hash = XXH3_64bits(k, len);
    aorm__load **p = &c->loads[*hash % AORM__LOAD_BUCKETS];
    while (*p && !((*p)->hash == *hash && (*p)->key.len == len && memcmp((*p)->key.data, k, len) == 0))
        p = &(*p)->next;
    return p;
}

static void soon_resume(void *arg) {
    cread *t = arg;
    t->resume_queued = false;
    aorm__sop *op = t->op;
    if (!op) {
        if (!t->in_flight && t->waiting == 0) cread_free(t);
        return;
    }
    aorm_session *s = op->s;
    aorm__session_enter(s);
    if (!s->closing && !op->answered) aorm__session_resume(op);
    aorm__session_leave(s);
}

/* One load t waited for is over: its row is in t's session when the
 * loader found it. The last one resumes t's operation, from the soon
 * queue (never inside another session's callback). */
static void wait_done(cread *t) {
    if (--t->waiting > 0) return;
    if (!t->op) {
        if (!t->in_flight && !t->resume_queued) cread_free(t);
        return;
    }
    if (aorm_loop_soon(t->op->s->loop, soon_resume, t) == 0) t->resume_queued = true;
    else soon_resume(t); /* out of memory: resume here rather than never */
}

/* t's loads end: with the rows objs[0..n) it read (NULL: none, every
 * waiter reads PostgreSQL itself). Each waiter gets the row of its key
 * decoded into its own session. */
static void loads_complete(cread *t, void *const *objs, size_t n) {
    if (!t->nowned) return;
    aorm_cache_region *rg = t->rg;
    aorm_cache *c = rg->cache;
    aorm__buf kb = {0}, vb = {0};
    bool waited = false;
    for (size_t i = 0; i < t->nowned && !waited; i++) waited = t->owned[i]->nwaiters > 0;
    for (size_t k = 0; waited && k < n; k++) { /* each row to its load: one lookup a row */
        if (!objs[k] || aorm__obj_hdr(objs[k])->model != rg->m) continue;
        kb.len = 0;
        uint64_t hash;
        aorm__load *l = aorm__cache_row_key(rg, objs[k], &kb) == 0 ? *load_slot(c, kb.data, kb.len, &hash) : NULL;
        if (l && l->owner == t) l->row = objs[k];
    }
    for (size_t i = 0; i < t->nowned; i++) {
        aorm__load *l = t->owned[i];
        uint64_t hash;
        aorm__load **p = load_slot(c, l->key.data, l->key.len, &hash);
        if (*p == l) *p = l->next;
        const void *row = l->row;
        vb.len = 0;
        bool have = row && aorm__cache_encode(rg, row, t->stamp, &vb) == 0;
        for (size_t w = 0; w < l->nwaiters; w++) {
            cread *wt = l->waiters[w].t;
            if (have && wt->op && !wt->op->s->closing &&
                take_value(wt->op->s, rg, l->waiters[w].key, vb.data, vb.len, t->stamp, NULL)) {
                rg->st.coalesced++;
            }
            wait_done(wt);
        }
        free(l->waiters);
        aorm__buf_free(&l->key);
        free(l);
    }
    aorm__buf_free(&kb);
    aorm__buf_free(&vb);
    free(t->owned);
    t->owned = NULL;
    t->nowned = 0;
}

/* After t's MGET: its misses keys[0..n) (Redis keys in kb at koff). When
 * another operation already reads one of them from PostgreSQL, t waits
 * for those loads (returns true: do not resume now); otherwise t owns a
 * load of each miss, for others to wait on. */
static bool loads_join(cread *t, void **keys, const bool *hit, size_t n, const aorm__buf *kb, const size_t *koff) {
    aorm_cache *c = t->rg->cache;
    size_t busy = 0;
    for (size_t k = 0; k < n; k++) {
        if (hit[k]) continue;
        uint64_t hash;
        aorm__load *l = *load_slot(c, kb->data + koff[k], koff[k + 1] - koff[k], &hash);
        if (l && l->owner != t) busy++;
    }
    if (busy) {
        for (size_t k = 0; k < n; k++) {
            if (hit[k]) continue;
            uint64_t hash;
            aorm__load *l = *load_slot(c, kb->data + koff[k], koff[k + 1] - koff[k], &hash);
            if (!l || l->owner == t) continue;
            if (l->nwaiters == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 4;
                struct lwait *nw = realloc(l->waiters, cap * sizeof(*nw));
                if (!nw) continue; /* this key: t reads it itself */
                l->waiters = nw;
                l->cap = cap;
            }
            l->waiters[l->nwaiters++] = (struct lwait){t, keys[k]};
            t->waiting++;
        }
        return t->waiting > 0;
    }
    t->owned = malloc((n + 1) * sizeof(*t->owned));
    for (size_t k = 0; t->owned && k < n; k++) {
        if (hit[k]) continue;
        uint64_t hash;
        const char *key = kb->data + koff[k];
        size_t len = koff[k + 1] - koff[k];
        aorm__load **p = load_slot(c, key, len, &hash);
        if (*p) continue; /* the same key twice in one batch */
        aorm__load *l = calloc(1, sizeof(*l));
        if (!l || aorm__buf_append(&l->key, key, len) < 0) {
            free(l);
            continue;
        }
        l->hash = hash;
        l->owner = t;
        *p = l;
        t->owned[t->nowned++] = l;
    }
    return false;
}

/* ---- leases across processes ------------------------------------------------------------- */

/* P l:<row key without P> */
static int lease_key(const aorm_cache *c, const char *k, size_t len, aorm__buf *b) {
    b->len = 0;
    if (aorm__buf_append(b, c->prefix, c->prefix_len) < 0 || aorm__buf_append(b, "l:", 2) < 0) return -1;
    return aorm__buf_append(b, k + c->prefix_len, len - c->prefix_len);
}

static const char *lease_token(aorm_cache *c) {
    if (!c->lease_token[0])
        snprintf(c->lease_token, sizeof(c->lease_token), "%ld:%p:%llx", (long)getpid(), (void *)c,
                 (unsigned long long)(aorm_loop_now(c->loop) * 1e6));
    return c->lease_token;
}

/* One EVAL of script over the lease keys of the misses whose state is
 * `which`. Returns 0 (cb runs later) or -1 (none, or not sent). */
static int lease_eval(cread *t, const char *script, int which, aorm_redis_cb cb, void *user) {
    aorm_cache *c = t->rg->cache;
    size_t cnt = 0;
    for (size_t i = 0; i < t->nmiss; i++) cnt += t->mstate[i] == which;
    if (cnt == 0) return -1;
    size_t argc = 3 + cnt + 2;
    const char **argv = malloc(argc * sizeof(char *));
    size_t *lens = malloc(argc * sizeof(size_t));
    size_t *off = malloc((cnt + 1) * sizeof(size_t));
    aorm__buf all = {0}, one = {0};
    char nk[24], px[32];
    snprintf(nk, sizeof(nk), "%zu", cnt);
    snprintf(px, sizeof(px), "%lld", (long long)(t->rg->lease * 1000) + 1);
    int rc = argv && lens && off ? 0 : -1;
    size_t k = 0;
    for (size_t i = 0; rc == 0 && i < t->nmiss; i++) {
        if (t->mstate[i] != which) continue;
        size_t m = t->miss[i];
        off[k++] = all.len;
        if (lease_key(c, t->kb.data + t->koff[m], t->koff[m + 1] - t->koff[m], &one) < 0 ||
            aorm__buf_append(&all, one.data, one.len) < 0)
            rc = -1;
    }
    if (rc == 0) {
        off[cnt] = all.len;
        size_t a = 0;
        argv[a] = "EVAL", lens[a++] = 4;
        argv[a] = script, lens[a] = strlen(script), a++;
        argv[a] = nk, lens[a++] = strlen(nk);
        for (k = 0; k < cnt; k++) argv[a] = all.data + off[k], lens[a++] = off[k + 1] - off[k];
        argv[a] = lease_token(c), lens[a] = strlen(argv[a]), a++;
        argv[a] = px, lens[a++] = strlen(px);
        aorm_redis_cmd_options co = {.deadline = c->deadline};
        rc = aorm_redis_command_argv(c->r, (int)a, argv, lens, &co, cb, user) < 0 ? -1 : 0;
    }
    free(argv);
    free(lens);
    free(off);
    aorm__buf_free(&all);
    aorm__buf_free(&one);
    return rc;
}

/* Releases the leases t holds (once): after its write-back, on the same
 * connection, so that a waiter re-reading finds the value. */
static void lease_release(cread *t) {
    if (!t->nmiss || t->rg->cache->freeing || !t->rg->cache->r) return;
    if (lease_eval(t, lease_release_script, LEASE_HELD, NULL, NULL) < 0) return;
    for (size_t i = 0; i < t->nmiss; i++)
        if (t->mstate[i] == LEASE_HELD) t->mstate[i] = LEASE_DONE;
}

/* The lease wait of t is over: the operation goes on (to PostgreSQL for
 * what is still missing). Inside the session. */
static void lease_finish(cread *t) {
    aorm__sop *op = t->op;
    free(t->keys);
    t->keys = NULL;
    t->nkeys = 0;
    if (op && !op->s->closing && !op->answered) aorm__session_resume(op);
}

static void on_poll(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user);

/* Re-reads the keys another process holds leases on. */
static void on_ptimer(aorm_timer *tm, void *user) {
    (void)tm;
    cread *t = user;
    aorm_cache *c = t->rg->cache;
    size_t argc = 2 + t->npoll;
    const char **argv = malloc(argc * sizeof(char *));
    size_t *lens = malloc(argc * sizeof(size_t));
    int rc = -1;
    if (argv && lens) {
        size_t a = 0;
        argv[a] = "MGET", lens[a++] = 4;
        argv[a] = t->rg->table->hkey.data, lens[a++] = t->rg->table->hkey.len;
        for (size_t i = 0; i < t->nmiss; i++) {
            if (t->mstate[i] != LEASE_WAIT) continue;
            size_t m = t->miss[i];
            argv[a] = t->kb.data + t->koff[m], lens[a++] = t->koff[m + 1] - t->koff[m];
        }
        aorm_redis_cmd_options co = {.deadline = c->deadline};
        rc = aorm_redis_command_argv(c->r, (int)a, argv, lens, &co, on_poll, t);
    }
    free(argv);
    free(lens);
    if (rc == 0) {
        t->in_flight = true;
        return;
    }
    aorm_session *s = t->op->s;
    aorm__session_enter(s);
    lease_finish(t);
    aorm__session_leave(s);
}

/* The start of a reply to t's command: the session entered, or NULL when
 * t's operation is gone (t is then freed). */
static aorm_session *reply_begins(cread *t) {
    t->in_flight = false;
    if (!t->op) {
        cread_free(t);
        return NULL;
    }
    aorm__session_enter(t->op->s);
    return t->op->s;
}

static void on_poll(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    cread *t = user;
    aorm_session *s = reply_begins(t);
    if (!s) return;
    aorm_cache_region *rg = t->rg;
    bool ok = !err && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == t->npoll + 1 && !s->closing;
    if (ok) {
        const redisReply *hg = rep->element[0];
        uint64_t stamp = hg->type == REDIS_REPLY_STRING ? aorm__cache_gen_value(hg->str, hg->len) : 0;
        size_t e = 1, left = 0;
        for (size_t i = 0; i < t->nmiss; i++) {
            if (t->mstate[i] != LEASE_WAIT) continue;
            const redisReply *v = rep->element[e++];
            size_t m = t->miss[i];
            if (v->type == REDIS_REPLY_STRING && take_value(s, rg, t->keys[m], v->str, v->len, stamp, NULL)) {
                t->mstate[i] = LEASE_DONE;
                rg->st.lease_hits++;
                rg->st.hits++;
            } else {
                left++;
            }
        }
        t->npoll = left;
    }
    if (ok && t->npoll > 0 && aorm_loop_now(s->loop) < t->pdeadline) aorm_timer_start(t->ptimer, 0.005);
    else lease_finish(t);
    aorm__session_leave(s);
}

static void on_lease(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    cread *t = user;
    t->in_flight = false;
    bool ok = !err && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == t->nmiss;
    t->npoll = 0;
    for (size_t i = 0; i < t->nmiss; i++) {
        bool held = ok && rep->element[i]->type == REDIS_REPLY_INTEGER && rep->element[i]->integer == 1;
        t->mstate[i] = held ? LEASE_HELD : ok ? LEASE_WAIT : LEASE_DONE; /* no answer: every miss reads PostgreSQL */
        if (ok && !held) t->npoll++;
    }
    aorm__sop *op = t->op;
    if (!op) {
        cread_free(t); /* releases what it took */
        return;
    }
    aorm_session *s = op->s;
    aorm_cache_region *rg = t->rg;
    aorm__session_enter(s);
    rg->st.lease_waits += t->npoll;
    if (t->npoll > 0 && !s->closing && (t->ptimer || (t->ptimer = aorm_timer_new(s->loop, on_ptimer, t)))) {
        t->pdeadline = aorm_loop_now(s->loop) + rg->lease_wait;
        aorm_timer_start(t->ptimer, 0.005);
    } else {
        lease_finish(t);
    }
    aorm__session_leave(s);
}

/* After t's MGET missed some keys (hit[k] false): asks for their leases.
 * Returns true when the EVAL went out (the operation waits for it). */
static bool lease_ask(cread *t, const bool *hit) {
    size_t n = t->nkeys;
    t->miss = malloc((n + 1) * sizeof(size_t));
    t->mstate = calloc(n + 1, 1);
    if (!t->miss || !t->mstate) return false;
    t->nmiss = 0;
    for (size_t k = 0; k < n; k++)
        if (!hit[k]) t->miss[t->nmiss++] = k;
    if (lease_eval(t, lease_take_script, LEASE_ASKED, on_lease, t) < 0) {
        t->nmiss = 0;
        return false;
    }
    t->in_flight = true;
    return true;
}

static void on_mget(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    cread *t = user;
    aorm_session *s = reply_begins(t);
    if (!s) return;
    aorm__sop *op = t->op;
    aorm_cache_region *rg = t->rg;
    void **keys = t->keys;
    size_t n = t->nkeys;
    size_t hits = 0;
    bool *hit = NULL;
    bool wait = false;
    bool ok = !err && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2;
    if (ok) {
        const redisReply *g = rep->element[0], *hg = rep->element[1];
        ok = (g->type == REDIS_REPLY_STRING || g->type == REDIS_REPLY_NIL) &&
             (hg->type == REDIS_REPLY_STRING || hg->type == REDIS_REPLY_NIL);
        ok = ok && rep->elements == n + 2;
        if (ok) {
            t->stamp = hg->type == REDIS_REPLY_STRING ? aorm__cache_gen_value(hg->str, hg->len) : 0;
            t->gen.len = 0;
            ok = g->type == REDIS_REPLY_NIL || aorm__buf_append(&t->gen, g->str, g->len) == 0;
            t->have_gen = ok && !rg->cache->freeing;
        }
        /* values may go to the near cache when no invalidation came
         * since the MGET left (near.h: the two-connection race) */
        bool near = ok && aorm__cache_near_ok(rg) && aorm__tracker_epoch(rg->cache->tracker) == t->epoch;
        double now = aorm_loop_now(s->loop);
        hit = ok ? calloc(n + 1, sizeof(bool)) : NULL;
        ok = ok && hit;
        for (size_t k = 0; ok && k < n; k++) {
            const redisReply *v = rep->element[k + 2];
            void *obj = NULL;
            if (v->type != REDIS_REPLY_STRING || !take_value(s, rg, keys[k], v->str, v->len, t->stamp, &obj)) continue;
            hits++;
            hit[k] = true;
            if (t->objs) t->objs[t->midx[k]] = obj;
            if (near)
                aorm__near_put_after(rg->near, t->kb.data + t->koff[k], t->koff[k + 1] - t->koff[k], v->str, v->len,
                                     now + rg->ttl, now, t->near_seq);
        }
    }
    if (ok) {
        t->complete = hits == n;
        rg->st.hits += hits;
        rg->st.misses += n - hits;
        if (hits < n && !s->closing && !op->answered) wait = loads_join(t, keys, hit, n, &t->kb, t->koff);
    } else {
        /* no answer, or not one this client can read: PostgreSQL answers,
         * nothing is written back */
        rg->st.errors++;
        rg->st.bypasses += n;
        t->have_gen = false;
    }
    aorm__cache_logf(rg->cache, AORM_LOG_SQL, "cache %s: %zu keys, %zu hits, %zu misses%s", rg->name, n, hits,
                     ok ? n - hits : 0, ok ? "" : " (Redis unusable: read from PostgreSQL)");
    if (ok && !wait && rg->lease > 0 && hits < n && !s->closing && !op->answered) wait = lease_ask(t, hit);
    free(hit);
    if (!wait) {
        free(t->keys);
        t->keys = NULL;
        t->nkeys = 0;
        if (!op->answered) aorm__session_resume(op);
    }
    aorm__session_leave(s);
}

bool aorm__cache_read_start(aorm__sop *op) {
    aorm_session *s = op->s;
    aorm_cache *c = s->o.cache;
    if (!c || op->cache || (op->kind != SOP_GET && op->kind != SOP_GET_MANY)) return false;
    aorm_cache_region *rg = aorm__cache_region(c, op->model);
    if (!rg) return false;
    if (op->qo.populate_existing || op->qo.load || aorm__loaders_default_plan(s, op->model)) return false;
    size_t total = op->kind == SOP_GET ? 1 : op->nkeys;
    if (!may_read(s, rg)) {
        rg->st.bypasses += total;
        return false;
    }
    void **keys = malloc((total + 1) * sizeof(void *));
    size_t *off = malloc((total + 3) * sizeof(size_t));
    if (c->scr_cap < total + 3) { /* argument arrays: the cache's, reused (the client copies them) */
        const char **na = realloc(c->scr_argv, (total + 3) * sizeof(char *));
        if (na) c->scr_argv = na;
        size_t *nl = na ? realloc(c->scr_lens, (total + 3) * sizeof(size_t)) : NULL;
        if (nl) {
            c->scr_lens = nl;
            c->scr_cap = total + 3;
        }
    }
    const char **argv = c->scr_cap >= total + 3 ? c->scr_argv : NULL;
    size_t *lens = argv ? c->scr_lens : NULL;
    cread *t = calloc(1, sizeof(*t));
    aorm__buf kb = {0};
    int rc = keys && off && argv && lens && t ? 0 : AORM_ENOMEM;
    if (rc == 0 && (!(t->objs = malloc((total + 1) * sizeof(void *))) || !(t->midx = malloc((total + 1) * sizeof(size_t)))))
        rc = AORM_ENOMEM;
    size_t n = rc == 0 ? missing_keys(s, op, keys, t->midx, t->objs) : 0;
    if (rc == 0 && aorm__buf_reserve(&kb, n * (rg->kprefix.len + 17)) < 0) rc = AORM_ENOMEM;
    bool near = rg->near && aorm__cache_near_ok(rg);
    double now = aorm_loop_now(s->loop);
    size_t kept = 0;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        off[kept] = kb.len;
        if (aorm__cache_row_key(rg, keys[k], &kb) < 0) {
            rc = AORM_ENOMEM;
            break;
        }
        if (near) { /* process memory first */
            size_t vlen;
            const char *v = aorm__near_get(rg->near, kb.data + off[kept], kb.len - off[kept], now, &vlen);
            void *obj = NULL;
            if (v && take_value(s, rg, keys[k], v, vlen, aorm__cache_value_stamp(v, vlen), &obj)) {
                rg->st.near_hits++;
                t->objs[t->midx[k]] = obj;
                kb.len = off[kept];
                continue;
            }
        }
        t->midx[kept] = t->midx[k];
        keys[kept++] = keys[k];
    }
    n = kept;
    off[n] = kb.len;
    if (rc == 0 && n == 0) rc = 1; /* the identity map (and the near cache) answer everything */
    if (rc == 0) {
        argv[0] = "MGET";
        lens[0] = 4;
        argv[1] = rg->table->gkey.data;
        lens[1] = rg->table->gkey.len;
        argv[2] = rg->table->hkey.data;
        lens[2] = rg->table->hkey.len;
        for (size_t k = 0; k < n; k++) {
            argv[k + 3] = kb.data + off[k];
            lens[k + 3] = off[k + 1] - off[k];
        }
        t->op = op;
        t->rg = rg;
        if (rg->near) {
            t->near_seq = aorm__near_seq(rg->near);
            t->epoch = c->tracker ? aorm__tracker_epoch(c->tracker) : 0;
        }
        aorm_redis_cmd_options co = {.deadline = c->deadline};
        rc = aorm_redis_command_argv(c->r, (int)n + 3, argv, lens, &co, on_mget, t);
        if (rc < 0) {
            rg->st.errors++;
            rg->st.bypasses += n;
        }
    }
    if (rc == 0) {
        t->keys = keys;
        t->nkeys = n;
        keys = NULL;
        /* the near cache and the stampede control want the keys with the values */
        t->kb = kb;
        t->koff = off;
        kb = (aorm__buf){0};
        off = NULL;
    }
    free(keys);
    free(off);
    aorm__buf_free(&kb);
    if (rc != 0) {
        if (t) cread_free(t);
        return false;
    }
    t->in_flight = true;
    op->cache = t;
    return true;
}

/* ---- write-back ----------------------------------------------------------------------- */

typedef struct wback {
    aorm_cache_region *rg;
    size_t n;
} wback;

void (*aorm__cache_wb_gate)(void (*send)(void *job), void *job);

static void on_wback(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    wback *w = user;
    if (err) w->rg->st.errors++;
    else if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) w->rg->st.writebacks_refused += w->n;
    else if (rep && (rep->type == REDIS_REPLY_INTEGER || rep->type == REDIS_REPLY_STATUS)) w->rg->st.writebacks += w->n;
    else w->rg->st.errors++;
    free(w);
}

/* The rows of one write-back, encoded, with what the condition needs: no
 * pointer into the session (a gated job may outlive it). */
typedef struct wb_job {
    aorm_cache_region *rg;
    aorm__ctable *gtab[2]; /* the generations the write is conditional on... */
    aorm__buf gen[2];      /* ...and the values read before PostgreSQL */
    int ngen;
    aorm__buf kb, vb;
    size_t *koff, *voff; /* m + 1 offsets into kb / vb */
    size_t m;
    aorm__buf lk;        /* lease keys to release after the write-back... */
    size_t *lkoff;       /* ...at these offsets (nlk + 1) */
    size_t nlk;
} wb_job;

static void wb_job_free(wb_job *j) {
    aorm__buf_free(&j->kb);
    aorm__buf_free(&j->vb);
    aorm__buf_free(&j->gen[0]);
    aorm__buf_free(&j->gen[1]);
    free(j->koff);
    free(j->voff);
    aorm__buf_free(&j->lk);
    free(j->lkoff);
    free(j);
}

/* The leases t holds go with its write-back j: released right after it. */
static void lease_move(cread *t, wb_job *j) {
    aorm_cache *c = t->rg->cache;
    aorm__buf one = {0};
    j->lkoff = malloc((t->nmiss + 1) * sizeof(size_t));
    for (size_t i = 0; j->lkoff && i < t->nmiss; i++) {
        if (t->mstate[i] != LEASE_HELD) continue;
        size_t m = t->miss[i];
        size_t at = j->lk.len;
        if (lease_key(c, t->kb.data + t->koff[m], t->koff[m + 1] - t->koff[m], &one) < 0 ||
            aorm__buf_append(&j->lk, one.data, one.len) < 0) {
            j->lk.len = at;
            continue; /* stays held by t: released when it goes */
        }
        j->lkoff[j->nlk++] = at;
        t->mstate[i] = LEASE_DONE;
    }
    if (j->lkoff) j->lkoff[j->nlk] = j->lk.len;
    aorm__buf_free(&one);
}

static void wb_release_leases(wb_job *j) {
    aorm_cache *c = j->rg->cache;
    if (!j->nlk || c->freeing) return;
    size_t argc = 3 + j->nlk + 1;
    const char **argv = malloc(argc * sizeof(char *));
    size_t *lens = malloc(argc * sizeof(size_t));
    char nk[24];
    snprintf(nk, sizeof(nk), "%zu", j->nlk);
    if (argv && lens) {
        size_t a = 0;
        argv[a] = "EVAL", lens[a++] = 4;
        argv[a] = lease_release_script, lens[a] = strlen(lease_release_script), a++;
        argv[a] = nk, lens[a++] = strlen(nk);
        for (size_t k = 0; k < j->nlk; k++) argv[a] = j->lk.data + j->lkoff[k], lens[a++] = j->lkoff[k + 1] - j->lkoff[k];
        argv[a] = lease_token(c), lens[a] = strlen(argv[a]), a++;
        aorm_redis_cmd_options co = {.deadline = c->deadline};
        aorm_redis_command_argv(c->r, (int)a, argv, lens, &co, NULL, NULL);
    }
    free(argv);
    free(lens);
}

static void wb_send(void *arg) {
    wb_job *j = arg;
    aorm_cache_region *rg = j->rg;
    aorm_cache *c = rg->cache;
    size_t m = j->m;
    char ttl[32];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(rg->ttl * 1000));
    aorm_redis_cmd_options co = {.deadline = c->deadline};
    if (c->freeing) {
        wb_job_free(j);
        return;
    }
    if (rg->strategy == AORM_CACHE_READ_WRITE) {
        /* EVAL script numkeys g.. k1..km ng ttl gen.. v1..vm */
        size_t argc = 3 + (size_t)j->ngen + m + 2 + (size_t)j->ngen + m;
        const char **argv = malloc(argc * sizeof(char *));
        size_t *lens = malloc(argc * sizeof(size_t));
        wback *w = malloc(sizeof(*w));
        char nk[24], ng[8];
        snprintf(nk, sizeof(nk), "%zu", m + (size_t)j->ngen);
        snprintf(ng, sizeof(ng), "%d", j->ngen);
        if (argv && lens && w) {
            size_t a = 0;
            argv[a] = "EVAL", lens[a++] = 4;
            argv[a] = aorm__cache_wb_script();
            lens[a] = strlen(argv[a]);
            a++;
            argv[a] = nk, lens[a++] = strlen(nk);
            for (int g = 0; g < j->ngen; g++) argv[a] = j->gtab[g]->gkey.data, lens[a++] = j->gtab[g]->gkey.len;
            for (size_t k = 0; k < m; k++) argv[a] = j->kb.data + j->koff[k], lens[a++] = j->koff[k + 1] - j->koff[k];
            argv[a] = ng, lens[a++] = strlen(ng);
            argv[a] = ttl, lens[a++] = strlen(ttl);
            for (int g = 0; g < j->ngen; g++)
                argv[a] = j->gen[g].len ? j->gen[g].data : "", lens[a++] = j->gen[g].len;
            for (size_t k = 0; k < m; k++) argv[a] = j->vb.data + j->voff[k], lens[a++] = j->voff[k + 1] - j->voff[k];
            *w = (wback){rg, m};
            if (aorm_redis_command_argv(c->r, (int)a, argv, lens, &co, on_wback, w) < 0) {
                rg->st.errors++;
                free(w);
            }
            wb_release_leases(j);
        } else {
            free(w);
        }
        free(argv);
        free(lens);
    } else {
        /* read-only rows never change: plain SETs, one pipeline */
        for (size_t k = 0; k < m; k++) {
            wback *w = malloc(sizeof(*w));
            if (!w) break;
            *w = (wback){rg, 1};
            const char *argv[5] = {"SET", j->kb.data + j->koff[k], j->vb.data + j->voff[k], "PX", ttl};
            size_t lens[5] = {3, j->koff[k + 1] - j->koff[k], j->voff[k + 1] - j->voff[k], 2, strlen(ttl)};
            if (aorm_redis_command_argv(c->r, 5, argv, lens, &co, on_wback, w) < 0) {
                rg->st.errors++;
                free(w);
                break;
            }
        }
        wb_release_leases(j);
    }
    wb_job_free(j);
}

static wb_job *rows_writeback(cread *t, void *const *objs, size_t n);

void aorm__cache_loaded(aorm__sop *op, void *const *objs, size_t n) {
    cread *t = op->cache;
    if (t && t->kind == AORM__TICKET_QUERY) {
        aorm__cache_query_loaded(op, objs, n);
        return;
    }
    if (!t) return;
    loads_complete(t, objs, n); /* waiting sessions take these rows */
    wb_job *j = rows_writeback(t, objs, n);
    if (j && t->nmiss) lease_move(t, j); /* released after the write-back */
    lease_release(t);                     /* what is left: nothing to wait for */
    if (!j) return;
    if (aorm__cache_wb_gate) aorm__cache_wb_gate(wb_send, j);
    else wb_send(j);
}

/* The write-back job of the rows t's operation read from PostgreSQL
 * (NULL: none). */
static wb_job *rows_writeback(cread *t, void *const *objs, size_t n) {
    if (!t->have_gen || n == 0) return NULL;
    t->have_gen = false; /* once */
    aorm_cache_region *rg = t->rg;
    aorm_cache *c = rg->cache;
    if (c->freeing || !aorm__cache_usable(rg)) return NULL;
    wb_job *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    j->rg = rg;
    j->ngen = 1;
    j->gtab[0] = rg->table;
    j->koff = malloc((n + 1) * sizeof(size_t));
    j->voff = malloc((n + 1) * sizeof(size_t));
    bool ok = j->koff && j->voff && aorm__buf_append(&j->gen[0], t->gen.data ? t->gen.data : "", t->gen.len) == 0;
    size_t m = 0;
    for (size_t i = 0; ok && i < n; i++) {
        if (!objs[i]) continue;
        aorm__obj *h = aorm__obj_hdr(objs[i]);
        if (h->model != rg->m || h->state != AORM_PERSISTENT || aorm__obj_changed(h)) continue;
        j->koff[m] = j->kb.len;
        j->voff[m] = j->vb.len;
        if (aorm__cache_row_key(rg, objs[i], &j->kb) < 0 || aorm__cache_encode(rg, objs[i], t->stamp, &j->vb) < 0)
            ok = false;
        else
            m++;
    }
    if (!ok || m == 0) {
        wb_job_free(j);
        return NULL;
    }
    j->koff[m] = j->kb.len;
    j->voff[m] = j->vb.len;
    j->m = m;
    return j;
}

/* ---- collections ------------------------------------------------------------------------
 * A list value: [fmt][2][layout low 32 bits][gen 0 u64][gen 1 u64][count
 * u32], then per child [u32 length][the child's row value (its own
 * header and checksum, stamp 0)], then the XXH3 (low 32 bits) of all
 * before. gen 0 / gen 1 are the generations of the region's dependency
 * tables when the list was read from PostgreSQL (gen 1 = gen 0 with one
 * dependency): a list whose generations are not the current ones is a
 * miss. */

#define COLL_HEAD 26

typedef struct ccoll {
    aorm__sop *op;            /* NULL once the operation (its load run) is gone */
    aorm_cache_region *rg;
    aorm__buf gen[2];         /* the generations read */
    uint64_t genv[2];
    bool have_gen;
    bool in_flight;
    void **owners;            /* the owners asked for (session objects) */
    size_t n;
    aorm__coll_then then;
    void *ctx;
    int idx;
} ccoll;

static void ccoll_free(ccoll *t) {
    aorm__buf_free(&t->gen[0]);
    aorm__buf_free(&t->gen[1]);
    free(t->owners);
    free(t);
}

void aorm__cache_coll_free(void *ticket) {
    ccoll *t = ticket;
    if (!t) return;
    if (t->in_flight) t->op = NULL;
    else ccoll_free(t);
}

static int coll_key(const aorm_cache_region *rg, const void *owner, aorm__buf *b) {
    if (aorm__buf_append(b, rg->kprefix.data, rg->kprefix.len) < 0) return -1;
    return aorm__cache_key_bytes(rg->owner, owner, b);
}

/* The session object of a child row value: the identity map's when it
 * holds the row (the session's copy wins, an expired one is refreshed),
 * else a new object. NULL when the value does not decode. */
void *aorm__cache_child_object(aorm_session *s, aorm_cache_region *rg, const char *v, size_t len) {
    const aorm_model *m = rg->m;
    aorm_allocator al = {region_alloc, &s->region};
    void *tmp = aorm__region_alloc(&s->region, m->size);
    if (!tmp) return NULL;
    memset(tmp, 0, m->size);
    if (aorm__cache_decode(rg, v, len, 0, tmp, &al) < 0) return NULL;
    uint64_t hash = aorm__key_hash(m, tmp);
    aorm__obj *h = aorm__idmap_find(&s->idmap, m, tmp, hash);
    if (h && !(h->flags & OBJ_EXPIRED)) return h->state == AORM_DETACHED ? NULL : aorm__obj_data(h);
    if (h) {
        for (int i = 0; i < m->ncolumns; i++) { /* columns only: relationship fields stay */
            const aorm_column *c = &m->columns[i];
            memcpy((char *)aorm__obj_data(h) + c->offset, (char *)tmp + c->offset, c->size);
        }
        aorm__session_take_snapshot(s, h);
        h->flags &= (uint8_t)~OBJ_EXPIRED;
        return aorm__obj_data(h);
    }
    if (!(h = aorm__session_new_row(s, m, hash))) return NULL;
    memcpy(aorm__obj_data(h), tmp, m->size);
    return aorm__session_adopt_row(s, h) == 0 ? aorm__obj_data(h) : NULL;
}

/* Decodes one list value into hit (children as session objects). */
static bool coll_decode(aorm_session *s, ccoll *t, const char *v, size_t len, aorm__coll_hit *hit) {
    aorm_cache_region *rg = t->rg;
    if (len < COLL_HEAD + 4 || (unsigned char)v[0] != AORM__CACHE_VFMT || v[1] != 2) return false;
    uint32_t lay, sum, count;
    uint64_t g0, g1;
    memcpy(&lay, v + 2, 4);
    memcpy(&g0, v + 6, 8);
    memcpy(&g1, v + 14, 8);
    memcpy(&count, v + 22, 4);
    memcpy(&sum, v + len - 4, 4);
    if (lay != (uint32_t)rg->layout || g0 != t->genv[0] || g1 != t->genv[1]) return false;
    if ((uint32_t)XXH3_64bits(v, len - 4) != sum) return false;
    if (count > (len - COLL_HEAD - 4) / 4) return false;
    void **items = count ? aorm__region_alloc(&s->region, count * sizeof(void *)) : NULL;
    if (count && !items) return false;
    size_t at = COLL_HEAD, end = len - 4;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t cl;
        if (end - at < 4) return false;
        memcpy(&cl, v + at, 4);
        at += 4;
        if (end - at < cl) return false;
        if (!(items[i] = aorm__cache_child_object(s, rg, v + at, cl))) return false;
        at += cl;
    }
    if (at != end) return false;
    *hit = (aorm__coll_hit){items, count, true};
    return true;
}

static void on_coll_mget(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    ccoll *t = user;
    t->in_flight = false;
    aorm__sop *op = t->op;
    if (!op) {
        ccoll_free(t);
        return;
    }
    aorm_session *s = op->s;
    aorm_cache_region *rg = t->rg;
    aorm__session_enter(s);
    size_t ng = (size_t)rg->ndeps;
    aorm__coll_hit *hits = NULL;
    size_t nhit = 0;
    bool ok = !err && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == ng + t->n;
    for (size_t g = 0; ok && g < ng; g++) {
        const redisReply *e = rep->element[g];
        ok = e->type == REDIS_REPLY_NIL || e->type == REDIS_REPLY_STRING;
        if (ok && e->type == REDIS_REPLY_STRING) ok = aorm__buf_append(&t->gen[g], e->str, e->len) == 0;
        if (ok) t->genv[g] = e->type == REDIS_REPLY_STRING ? aorm__cache_gen_value(e->str, e->len) : 0;
    }
    if (ng == 1) t->genv[1] = t->genv[0];
    if (ok) ok = (hits = aorm__region_calloc(&s->region, (t->n + 1) * sizeof(*hits))) != NULL;
    for (size_t i = 0; ok && i < t->n; i++) {
        const redisReply *v = rep->element[ng + i];
        if (v->type == REDIS_REPLY_STRING && coll_decode(s, t, v->str, v->len, &hits[i])) nhit++;
        else hits[i].hit = false;
    }
    if (ok) {
        t->have_gen = !rg->cache->freeing;
        rg->st.hits += nhit;
        rg->st.misses += t->n - nhit;
    } else {
        rg->st.errors++;
        rg->st.bypasses += t->n;
        hits = NULL;
    }
    aorm__cache_logf(rg->cache, AORM_LOG_SQL, "cache %s: %zu lists, %zu hits%s", rg->name, t->n, nhit,
                     ok ? "" : " (Redis unusable: read from PostgreSQL)");
    if (!s->closing && !op->answered) t->then(t->ctx, t->idx, hits);
    aorm__session_leave(s);
}

void *aorm__cache_coll_start(aorm__sop *op, const aorm_model *m, const aorm_relationship *rel, void *const *owners,
                             size_t n, aorm__coll_then then, void *ctx, int idx) {
    aorm_session *s = op->s;
    aorm_cache *c = s->o.cache;
    aorm_cache_region *rg = c && n ? aorm__cache_coll_region(c, m, rel) : NULL;
    if (!rg || op->qo.populate_existing) return NULL;
    if (!may_read(s, rg)) {
        rg->st.bypasses += n;
        return NULL;
    }
    ccoll *t = calloc(1, sizeof(*t));
    size_t argc = 1 + (size_t)rg->ndeps + n;
    const char **argv = malloc(argc * sizeof(char *));
    size_t *lens = malloc(argc * sizeof(size_t));
    size_t *off = malloc((n + 1) * sizeof(size_t));
    aorm__buf kb = {0};
    bool ok = t && argv && lens && off && (t->owners = malloc(n * sizeof(void *)));
    for (size_t i = 0; ok && i < n; i++) {
        off[i] = kb.len;
        ok = coll_key(rg, owners[i], &kb) == 0;
    }
    int rc = -1;
    if (ok) {
        off[n] = kb.len;
        memcpy(t->owners, owners, n * sizeof(void *));
        t->n = n;
        t->op = op;
        t->rg = rg;
        t->then = then;
        t->ctx = ctx;
        t->idx = idx;
        size_t a = 0;
        argv[a] = "MGET", lens[a++] = 4;
        for (int g = 0; g < rg->ndeps; g++) argv[a] = rg->deps[g]->gkey.data, lens[a++] = rg->deps[g]->gkey.len;
        for (size_t i = 0; i < n; i++) argv[a] = kb.data + off[i], lens[a++] = off[i + 1] - off[i];
        aorm_redis_cmd_options co = {.deadline = c->deadline};
        rc = aorm_redis_command_argv(c->r, (int)a, argv, lens, &co, on_coll_mget, t);
        if (rc < 0) {
            rg->st.errors++;
            rg->st.bypasses += n;
        }
    }
    free(argv);
    free(lens);
    free(off);
    aorm__buf_free(&kb);
    if (rc < 0) {
        if (t) ccoll_free(t);
        return NULL;
    }
    t->in_flight = true;
    return t;
}

void aorm__cache_coll_loaded(void *ticket, void *const *owners, size_t n) {
    ccoll *t = ticket;
    if (!t || !t->have_gen || n == 0) return;
    t->have_gen = false;
    aorm_cache_region *rg = t->rg;
    aorm_cache *c = rg->cache;
    if (c->freeing || !aorm__cache_usable(rg)) return;
    wb_job *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->rg = rg;
    j->ngen = rg->ndeps;
    bool ok = true;
    for (int g = 0; g < rg->ndeps && ok; g++) {
        j->gtab[g] = rg->deps[g];
        ok = aorm__buf_append(&j->gen[g], t->gen[g].data ? t->gen[g].data : "", t->gen[g].len) == 0;
    }
    j->koff = malloc((n + 1) * sizeof(size_t));
    j->voff = malloc((n + 1) * sizeof(size_t));
    ok = ok && j->koff && j->voff;
    size_t m = 0;
    for (size_t i = 0; ok && i < n; i++) {
        const void *owner = owners[i];
        aorm__obj *oh = aorm__obj_hdr((void *)owner);
        const aorm_list *l = (const aorm_list *)((const char *)owner + rg->rel->offset);
        int ri = (int)(rg->rel - rg->owner->relationships);
        if (oh->model != rg->owner || ri >= 32 || !(oh->loaded_rels & (1u << ri))) continue;
        bool clean = true;
        for (size_t k = 0; k < l->len && clean; k++) {
            aorm__obj *ch = aorm__obj_hdr(l->items[k]);
            clean = ch->model == rg->m && ch->state == AORM_PERSISTENT && !aorm__obj_changed(ch);
        }
        if (!clean) continue;
        size_t kstart = j->kb.len, vstart = j->vb.len;
        char head[COLL_HEAD] = {AORM__CACHE_VFMT, 2};
        uint32_t lay = (uint32_t)rg->layout, count = (uint32_t)l->len;
        memcpy(head + 2, &lay, 4);
        memcpy(head + 6, &t->genv[0], 8);
        memcpy(head + 14, &t->genv[1], 8);
        memcpy(head + 22, &count, 4);
        ok = coll_key(rg, owner, &j->kb) == 0 && aorm__buf_append(&j->vb, head, sizeof(head)) == 0;
        for (size_t k = 0; ok && k < l->len; k++) {
            size_t lenat = j->vb.len;
            uint32_t cl = 0;
            ok = aorm__buf_append(&j->vb, &cl, 4) == 0 && aorm__cache_encode(rg, l->items[k], 0, &j->vb) == 0;
            if (ok) {
                cl = (uint32_t)(j->vb.len - lenat - 4);
                memcpy(j->vb.data + lenat, &cl, 4);
            }
        }
        if (ok) {
            uint32_t sum = (uint32_t)XXH3_64bits(j->vb.data + vstart, j->vb.len - vstart);
            ok = aorm__buf_append(&j->vb, &sum, 4) == 0;
        }
        if (!ok) break;
        j->koff[m] = kstart;
        j->voff[m] = vstart;
        m++;
    }
    if (!ok || m == 0) {
        wb_job_free(j);
        return;
    }
    j->koff[m] = j->kb.len;
    j->voff[m] = j->vb.len;
    j->m = m;
    if (aorm__cache_wb_gate) aorm__cache_wb_gate(wb_send, j);
    else wb_send(j);
}

/* ---- the transaction's writes ---------------------------------------------------------- */

static ctx_notes *notes(aorm_session *s) {
    if (!s->o.cache) return NULL;
    ctx_notes *n = s->cache_tx;
    if (!n && (n = calloc(1, sizeof(*n)))) s->cache_tx = n;
    if (n && !n->iv) n->iv = aorm__inval_new(s->o.cache);
    return n && n->iv ? n : NULL;
}

/* A write to model m's table whose rows are unknown, or deletes that may
 * cascade: rows of other regions whose foreign keys point at m with ON
 * DELETE CASCADE / SET NULL, and targets of m's delete-cascading
 * one-to-many relationships, change on the server without the session
 * seeing them. */
static void note_cascades(ctx_notes *n, aorm_cache *c, const aorm_model *m) {
    for (aorm_cache_region *rg = c->regions; rg; rg = rg->next) {
        const aorm_model *x = rg->m;
        bool hit = false;
        for (int i = 0; i < x->nforeign_keys && !hit; i++)
            hit = x->foreign_keys[i].target == m &&
                  (x->foreign_keys[i].on_delete == AORM_FK_CASCADE || x->foreign_keys[i].on_delete == AORM_FK_SET_NULL);
        for (int i = 0; i < m->nrelationships && !hit; i++)
            hit = m->relationships[i].kind == AORM_ONE_TO_MANY && m->relationships[i].target == x &&
                  (m->relationships[i].cascade & AORM_CASCADE_DELETE);
        aorm__ctable *tb = hit ? aorm__cache_table_written(c, x) : NULL;
        if (tb && aorm__inval_table(n->iv, tb, true) == 0) rg->st.invalidations++;
    }
}

void aorm__cache_note_row(aorm_session *s, const aorm_model *m, const void *obj, bool deleted) {
    ctx_notes *n = notes(s);
    if (!n) return;
    aorm_cache *c = s->o.cache;
    if (deleted) note_cascades(n, c, m);
    aorm__ctable *tb = aorm__cache_table_written(c, m); /* lists and queries may depend on it */
    if (tb && aorm__inval_table(n->iv, tb, false) < 0) aorm__inval_table(n->iv, tb, true);
    aorm_cache_region *rg = aorm__cache_region(c, m);
    if (!rg) return;
    if (obj) {
        aorm__buf kb = {0};
        int rc = aorm__cache_row_key(rg, obj, &kb);
        if (rc == 0) rc = aorm__inval_key(n->iv, kb.data, kb.len);
        aorm__buf_free(&kb);
        if (rc < 0) goto fail;
        rg->st.invalidations++;
    }
    return;
fail:
    /* out of memory: the whole table's rows go instead of the row */
    aorm__inval_table(n->iv, rg->table, true);
}

void aorm__cache_note_stmt(aorm_session *s, const aorm_stmt *q) {
    if (!s->o.cache || !q || aorm_stmt_readonly(q)) return;
    const aorm_model *m = aorm_stmt_model(q);
    ctx_notes *n = m ? notes(s) : NULL;
    if (!n) return; /* raw SQL: invisible (aorm_cache_invalidate_model) */
    note_cascades(n, s->o.cache, m);
    aorm__ctable *tb = aorm__cache_table_written(s->o.cache, m);
    if (tb) aorm__inval_table(n->iv, tb, true);
    aorm_cache_region *rg = aorm__cache_region(s->o.cache, m);
    if (rg) rg->st.invalidations++;
}

void aorm__cache_note_begin(aorm_session *s) {
    ctx_notes *n = notes(s);
    if (n) n->explicit_tx = true;
}

void aorm__cache_tx_commit(aorm_session *s) {
    ctx_notes *n = s->cache_tx;
    if (!n) return;
    n->explicit_tx = false;
    aorm__inval *iv = n->iv;
    n->iv = NULL;
    if (!iv) return;
    if (iv->ntables == 0 && iv->nkeys == 0) {
        aorm__inval_free(iv);
        return;
    }
    aorm__inval_send(iv);
}

void aorm__cache_tx_discard(aorm_session *s) {
    ctx_notes *n = s->cache_tx;
    if (!n) return;
    n->explicit_tx = false;
    aorm__inval_free(n->iv);
    n->iv = NULL;
}

void aorm__cache_session_free(aorm_session *s) {
    ctx_notes *n = s->cache_tx;
    if (!n) return;
    aorm__inval_free(n->iv);
    free(n);
    s->cache_tx = NULL;
}
