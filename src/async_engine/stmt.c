/* stmt.c -- the per-connection cache of named prepared statements: a hash
 * table keyed by (SQL text, parameter types) with a bounded LRU list.
 *
 * Owns: the aorm__stmt records. A statement evicted (or found stale)
 * while in-flight items still refer to it leaves the table at once and is
 * freed when its last reference goes (aorm__stmt_unref). Must not: send
 * anything itself; the connection code sends PREPARE and DEALLOCATE. */
#include <stdio.h>
#include <xxhash.h>

#include "async_engine/engine_int.h"

uint64_t aorm__stmt_hash(const char *sql, size_t len, const Oid *types, int n) {
    uint64_t h = XXH3_64bits(sql, len);
    /* chain the parameter types in, seeded by the text's hash */
    return n == 0 ? h : XXH3_64bits_withSeed(types, (size_t)n * sizeof(*types), h);
}

void aorm__stmt_cache_init(aorm__stmt_cache *sc, int cap) {
    memset(sc, 0, sizeof(*sc));
    sc->cap = cap;
}

static void stmt_free(aorm__stmt *s) { free(s); }

void aorm__stmt_unref(aorm__stmt *s) {
    aorm__assert(s->refs > 0);
    if (--s->refs == 0 && !s->cached) stmt_free(s);
}

static void lru_unlink(aorm__stmt_cache *sc, aorm__stmt *s) {
    if (s->lru_prev) s->lru_prev->lru_next = s->lru_next;
    else sc->lru_head = s->lru_next;
    if (s->lru_next) s->lru_next->lru_prev = s->lru_prev;
    else sc->lru_tail = s->lru_prev;
    s->lru_prev = s->lru_next = NULL;
}

static void lru_push_front(aorm__stmt_cache *sc, aorm__stmt *s) {
    s->lru_prev = NULL;
    s->lru_next = sc->lru_head;
    if (sc->lru_head) sc->lru_head->lru_prev = s;
    sc->lru_head = s;
    if (!sc->lru_tail) sc->lru_tail = s;
}

void aorm__stmt_cache_free(aorm__stmt_cache *sc) {
    aorm__stmt *s = sc->lru_head;
    while (s) {
        aorm__stmt *n = s->lru_next;
        s->cached = false;
        if (s->refs == 0) stmt_free(s);
        s = n;
    }
    free(sc->buckets);
    memset(sc, 0, sizeof(*sc));
}

static bool stmt_matches(const aorm__stmt *s, const aorm__op *op) {
    return s->hash == op->hash && s->sql_len == op->sql_len && s->nparams == op->nparams &&
           memcmp(s->sql, op->sql, op->sql_len) == 0 &&
           (op->nparams == 0 || memcmp(s->types, op->types, (size_t)op->nparams * sizeof(Oid)) == 0);
}

aorm__stmt *aorm__stmt_lookup(aorm__stmt_cache *sc, const aorm__op *op) {
    if (!sc->buckets) return NULL;
    aorm__stmt *s = sc->buckets[op->hash & (sc->nbuckets - 1)];
    for (; s; s = s->hnext) {
        if (stmt_matches(s, op)) {
            if (sc->lru_head != s) {
                lru_unlink(sc, s);
                lru_push_front(sc, s);
            }
            return s;
        }
    }
    return NULL;
}

void aorm__stmt_forget(aorm__stmt_cache *sc, aorm__stmt *s) {
    if (!s->cached) return;
    aorm__stmt **pp = &sc->buckets[s->hash & (sc->nbuckets - 1)];
    while (*pp != s) pp = &(*pp)->hnext;
    *pp = s->hnext;
    lru_unlink(sc, s);
    s->cached = false;
    sc->count--;
    if (s->refs == 0) stmt_free(s);
}

/* Adds a statement for op. When the cache is full the least recently used
 * statement that is not being prepared leaves it and is returned in
 * *evicted (with one reference held for the caller, who arranges its
 * DEALLOCATE and unrefs it). When the cache is full of statements still
 * being prepared, nothing is added and *full is set: the caller sends op
 * unnamed, so the cache never outgrows its bound. Returns NULL then, and
 * on out of memory. */
aorm__stmt *aorm__stmt_insert(aorm__stmt_cache *sc, const aorm__op *op, aorm__stmt **evicted, bool *full) {
    *evicted = NULL;
    *full = false;
    aorm__stmt *victim = NULL;
    if (sc->count >= sc->cap) {
        victim = sc->lru_tail;
        while (victim && victim->state == STMT_PREPARING) victim = victim->lru_prev;
        if (!victim) {
            *full = true;
            return NULL;
        }
    }
    if (!sc->buckets) {
        uint32_t nb = 16;
        while (nb < (uint32_t)sc->cap * 2) nb <<= 1;
        sc->buckets = calloc(nb, sizeof(*sc->buckets));
        if (!sc->buckets) return NULL;
        sc->nbuckets = nb;
    }
    size_t tsz = (size_t)op->nparams * sizeof(Oid);
    aorm__stmt *s = malloc(sizeof(*s) + tsz + op->sql_len + 1);
    if (!s) return NULL;
    memset(s, 0, sizeof(*s));
    s->hash = op->hash;
    s->nparams = op->nparams;
    s->types = (Oid *)s->storage;
    if (tsz) memcpy(s->types, op->types, tsz);
    s->sql = s->storage + tsz;
    memcpy(s->sql, op->sql, op->sql_len);
    s->sql[op->sql_len] = '\0';
    s->sql_len = op->sql_len;
    s->state = STMT_PREPARING;
    s->cached = true;
    snprintf(s->name, sizeof(s->name), "aorm_%llu", (unsigned long long)++sc->next_id);

    if (victim) {
        victim->refs++;
        aorm__stmt_forget(sc, victim);
        *evicted = victim;
    }
    aorm__stmt **b = &sc->buckets[s->hash & (sc->nbuckets - 1)];
    s->hnext = *b;
    *b = s;
    lru_push_front(sc, s);
    sc->count++;
    return s;
}
