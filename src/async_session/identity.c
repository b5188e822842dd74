/* identity.c -- the identity map: (model, primary key) -> object, an
 * open-addressing table with linear probing, kept at most half full.
 *
 * Each slot holds the object's key hash beside the object pointer, so a
 * probe compares hashes inside the table and reads an object only when
 * the hashes are equal. Loading a large result, where almost every row
 * is new to the map, then costs one table line per row (prefetched by the
 * caller, aorm__idmap_prefetch) instead of a walk through other objects'
 * headers scattered over the session's memory -- with chained buckets
 * that walk was the largest cache-miss cost of a load. Growing the table
 * reads slots only, never objects. Removal shifts the slots after the
 * hole back (no tombstones), so a table that sees many gets and expunges
 * (a session reused across requests) never fills with dead slots.
 *
 * Keys are hashed from the primary-key fields themselves (text keys by
 * content), so a lookup needs no allocation. An object's key_hash must not
 * change while it is in the map (flush.c sets it before aorm__idmap_put).
 * Owns: the slot array only; the objects belong to the session's region. */
#include <xxhash.h>

#include "async_session/region.h"
#include "async_session/session_int.h"

void aorm__idmap_init(aorm__idmap *m) { memset(m, 0, sizeof(*m)); }

void aorm__idmap_free(aorm__idmap *m) {
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

uint64_t aorm__key_hash(const aorm_model *m, const void *obj) {
    /* the usual key: one integer column, declared first */
    if (m->ncolumns > 0 && (m->columns[0].flags & AORM_PK) &&
        (m->ncolumns == 1 || !(m->columns[1].flags & AORM_PK))) {
        const aorm_column *c = &m->columns[0];
        const void *f = aorm__cfield(c, obj);
        bool single = true;
        for (int i = 2; i < m->ncolumns && single; i++) single = !(m->columns[i].flags & AORM_PK);
        if (single && c->type == AORM_INT8) return aorm__int_key_hash(m, *(const int64_t *)f);
        if (single && c->type == AORM_INT4) return aorm__int_key_hash(m, *(const int32_t *)f);
    }
    uint64_t h = (uint64_t)(uintptr_t)m;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if (!(c->flags & AORM_PK)) continue;
        const void *f = aorm__cfield(c, obj);
        switch (c->type) {
        case AORM_TEXT:
        case AORM_NUMERIC:
        case AORM_JSON:
        case AORM_JSONB: {
            const char *str = *(char *const *)f;
            h = str ? XXH3_64bits_withSeed(str, strlen(str), h) : h ^ 0x9e3779b97f4a7c15ull;
            break;
        }
        case AORM_BYTEA: {
            const aorm_bytes *b = f;
            h = XXH3_64bits_withSeed(b->data ? (const void *)b->data : "", b->len, h);
            break;
        }
        default:
            h = XXH3_64bits_withSeed(f, c->size, h);
            break;
        }
    }
    return h;
}

/* The key column of a model with a one-column integer key, or NULL. */
static const aorm_column *int_key(const aorm_model *m) {
    if (m->ncolumns == 0 || !(m->columns[0].flags & AORM_PK)) return NULL;
    for (int i = 1; i < m->ncolumns; i++)
        if (m->columns[i].flags & AORM_PK) return NULL;
    return m->columns[0].type == AORM_INT8 || m->columns[0].type == AORM_INT4 ? &m->columns[0] : NULL;
}

static bool keys_equal(const aorm_model *m, const void *a, const void *b) {
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if ((c->flags & AORM_PK) && !aorm__field_equal(c, a, b)) return false;
    }
    return true;
}

aorm__obj *aorm__idmap_find(aorm__idmap *map, const aorm_model *m, const void *key, uint64_t hash) {
    if (!map->count) return NULL;
    uint32_t mask = map->nslots - 1;
    /* terminates: the table is at most half full */
    for (uint32_t i = (uint32_t)hash & mask;; i = (i + 1) & mask) {
        const aorm__idmap_slot *sl = &map->slots[i];
        if (!sl->h) return NULL;
        if (sl->hash == hash && sl->h->model == m && keys_equal(m, aorm__obj_data(sl->h), key)) return sl->h;
    }
}

aorm__obj *aorm__idmap_find_int(aorm__idmap *map, const aorm_model *m, int64_t key, uint64_t hash) {
    if (!map->count) return NULL;
    uint32_t mask = map->nslots - 1;
    for (uint32_t i = (uint32_t)hash & mask;; i = (i + 1) & mask) {
        const aorm__idmap_slot *sl = &map->slots[i];
        if (!sl->h) return NULL;
        if (sl->hash != hash || sl->h->model != m) continue;
        const aorm_column *c = int_key(m); /* only on a hash match: rare for rows new to the map */
        aorm__assert(c);
        const void *f = aorm__cfield(c, aorm__obj_data(sl->h));
        if (c->type == AORM_INT8 ? *(const int64_t *)f == key : *(const int32_t *)f == key) return sl->h;
    }
}

/* Moves every object into a table of nslots slots (a power of two, more
 * than twice the count). Returns 0, or -1 on out of memory (the table is
 * unchanged). */
static int rehash(aorm__idmap *map, uint32_t nslots) {
    aorm__idmap_slot *t = aorm__calloc_prefaulted((size_t)nslots * sizeof(*t));
    if (!t) return -1;
    uint32_t mask = nslots - 1;
    for (uint32_t i = 0; i < map->nslots; i++) {
        const aorm__idmap_slot *sl = &map->slots[i];
        if (!sl->h) continue;
        uint32_t j = (uint32_t)sl->hash & mask;
        while (t[j].h) j = (j + 1) & mask;
        t[j] = *sl;
    }
    free(map->slots);
    map->slots = t;
    map->nslots = nslots;
    return 0;
}

/* Makes room for `more` objects without rehashing while they go in: a
 * large result sizes the table once instead of doubling it step by step. */
int aorm__idmap_reserve(aorm__idmap *map, size_t more) {
    size_t want = (size_t)map->count + more;
    if (want * 2 <= map->nslots) return 0;
    if (want > (1u << 30)) return -1;
    uint32_t n = map->nslots ? map->nslots : 64;
    while ((size_t)n < want * 2) n <<= 1;
    return rehash(map, n);
}

int aorm__idmap_put(aorm__idmap *map, aorm__obj *h) {
    if ((size_t)(map->count + 1) * 2 > map->nslots) {
        if (map->nslots >= (1u << 31) || rehash(map, map->nslots ? map->nslots * 2 : 64) < 0) return -1;
    }
    uint32_t mask = map->nslots - 1;
    uint32_t i = (uint32_t)h->key_hash & mask;
    while (map->slots[i].h) i = (i + 1) & mask;
    map->slots[i].hash = h->key_hash;
    map->slots[i].h = h;
    h->flags |= OBJ_IN_MAP;
    map->count++;
    return 0;
}

void aorm__idmap_remove(aorm__idmap *map, aorm__obj *h) {
    if (!(h->flags & OBJ_IN_MAP)) return;
    h->flags &= (uint8_t)~OBJ_IN_MAP;
    if (!map->count) return;
    uint32_t mask = map->nslots - 1;
    uint32_t i = (uint32_t)h->key_hash & mask;
    while (map->slots[i].h != h) {
        if (!map->slots[i].h) return; /* not there */
        i = (i + 1) & mask;
    }
    /* Backward shift: a later slot of the same run moves into the hole
     * unless its home lies cyclically in (hole, slot] -- then a lookup
     * starting at its home would still reach it. */
    for (uint32_t j = i;;) {
        j = (j + 1) & mask;
        const aorm__idmap_slot *sl = &map->slots[j];
        if (!sl->h) break;
        uint32_t home = (uint32_t)sl->hash & mask;
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays) continue;
        map->slots[i] = *sl;
        i = j;
    }
    map->slots[i].h = NULL;
    map->slots[i].hash = 0;
    map->count--;
}
