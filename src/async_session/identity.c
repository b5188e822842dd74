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

void aorm__idmap_clear(aorm__idmap *m) {
    for (uint32_t i = 0; i < m->nbuckets; i++) {
        for (aorm__obj *h = m->buckets[i]; h; h = h->id_next) h->flags &= (uint8_t)~OBJ_IN_MAP;
        m->buckets[i] = NULL;
    }
    m->count = 0;
}

uint64_t aorm__key_hash(const aorm_model *m, const void *obj) {
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

static int grow(aorm__idmap *map) {
    uint32_t nb = map->nbuckets ? map->nbuckets * 2 : 256;
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
