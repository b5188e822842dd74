/* identity.c -- the identity map: (model, primary key) -> object, a
 * chained hash table that doubles when it holds as many objects as it has
 * buckets. Keys are hashed from the primary-key fields themselves (text
 * keys by content), so a lookup needs no allocation. */
#include <xxhash.h>

#include "async_session/session_int.h"

void aorm__idmap_init(aorm__idmap *m) { memset(m, 0, sizeof(*m)); }

void aorm__idmap_free(aorm__idmap *m) {
    free(m->buckets);
    memset(m, 0, sizeof(*m));
}

/* A 64-bit finalizer (from MurmurHash3): enough mixing for integer keys,
 * a handful of instructions instead of a library call per row. */
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

uint64_t aorm__key_hash(const aorm_model *m, const void *obj) {
    /* the usual key: one integer column, declared first */
    if (m->ncolumns > 0 && (m->columns[0].flags & AORM_PK) &&
        (m->ncolumns == 1 || !(m->columns[1].flags & AORM_PK))) {
        const aorm_column *c = &m->columns[0];
        const void *f = aorm__cfield(c, obj);
        bool single = true;
        for (int i = 2; i < m->ncolumns && single; i++) single = !(m->columns[i].flags & AORM_PK);
        if (single && c->type == AORM_INT8) return mix64((uint64_t)*(const int64_t *)f ^ (uint64_t)(uintptr_t)m);
        if (single && c->type == AORM_INT4)
            return mix64((uint64_t)(int64_t)*(const int32_t *)f ^ (uint64_t)(uintptr_t)m);
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

static bool keys_equal(const aorm_model *m, const void *a, const void *b) {
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if ((c->flags & AORM_PK) && !aorm__field_equal(c, a, b)) return false;
    }
    return true;
}

aorm__obj *aorm__idmap_find(aorm__idmap *map, const aorm_model *m, const void *key, uint64_t hash) {
    if (!map->nbuckets) return NULL;
    for (aorm__obj *h = map->buckets[hash & (map->nbuckets - 1)]; h; h = h->id_next)
        if (h->key_hash == hash && h->model == m && keys_equal(m, aorm__obj_data(h), key)) return h;
    return NULL;
}

static int rehash(aorm__idmap *map, uint32_t nb);

/* Makes room for `more` objects without rehashing while they go in: a
 * large result sizes the table once instead of doubling it step by step
 * (each doubling walks every object header, all over memory). */
int aorm__idmap_reserve(aorm__idmap *map, size_t more) {
    size_t want = map->count + more;
    if (want <= map->nbuckets) return 0;
    uint32_t nb = map->nbuckets ? map->nbuckets : 256;
    while (nb < want && nb < (1u << 30)) nb <<= 1;
    return rehash(map, nb);
}

static int grow(aorm__idmap *map) { return rehash(map, map->nbuckets ? map->nbuckets * 2 : 256); }

static int rehash(aorm__idmap *map, uint32_t nb) {
    aorm__obj **b = calloc(nb, sizeof(*b));
    if (!b) return -1;
    for (uint32_t i = 0; i < map->nbuckets; i++) {
        aorm__obj *h = map->buckets[i];
        while (h) {
            aorm__obj *n = h->id_next;
            aorm__obj **slot = &b[h->key_hash & (nb - 1)];
            h->id_next = *slot;
            *slot = h;
            h = n;
        }
    }
    free(map->buckets);
    map->buckets = b;
    map->nbuckets = nb;
    return 0;
}

int aorm__idmap_put(aorm__idmap *map, aorm__obj *h) {
    if (map->count >= map->nbuckets && grow(map) < 0) return -1;
    aorm__obj **slot = &map->buckets[h->key_hash & (map->nbuckets - 1)];
    h->id_next = *slot;
    *slot = h;
    h->flags |= OBJ_IN_MAP;
    map->count++;
    return 0;
}

void aorm__idmap_remove(aorm__idmap *map, aorm__obj *h) {
    if (!(h->flags & OBJ_IN_MAP)) return;
    aorm__obj **pp = &map->buckets[h->key_hash & (map->nbuckets - 1)];
    while (*pp && *pp != h) pp = &(*pp)->id_next;
    if (*pp) {
        *pp = h->id_next;
        map->count--;
    }
    h->id_next = NULL;
    h->flags &= (uint8_t)~OBJ_IN_MAP;
}
