/* near.c -- the near cache: a bounded LRU of copied keys and values in
 * process memory, in front of Redis (see near.h for its contract and for
 * the race that aorm__near_put_after closes).
 *
 * Layout. Each entry is one allocation: a header (LRU links, hash, expiry,
 * lengths) followed by the key bytes and the value bytes. The index is an
 * open-addressing table of (hash, entry) slots with linear probing, kept
 * at most half full, hashed with XXH3 (libxxhash, already a dependency of
 * the identity map and the statement cache); a probe compares hashes in
 * the table and touches an entry only when they match. Removal shifts the
 * following slots back (no tombstones), so a cache with constant churn
 * never fills with dead slots. The LRU list runs from the most recently
 * used (head) to the least (tail); eviction takes the tail.
 *
 * Invalidation history: a ring of the hashes of the last
 * AORM__NEAR_HISTORY deleted keys with their sequence numbers. A
 * conditional put scans it from the newest back to its `seen` number.
 * Comparing hashes only can refuse a put that was safe (a collision),
 * never accept one that was not.
 *
 * Owns: the entries, the table and the ring. Must not: call out (no
 * callbacks), or keep a pointer handed in by the caller. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "aorm/error.h"
#include "cache/near.h"
#include "util/util.h"

typedef struct nent nent;
struct nent {
    nent *prev, *next; /* LRU: prev towards the head (most recent) */
    uint64_t hash;
    double expires_at; /* <= 0: none */
    size_t klen, vlen;
    unsigned char data[]; /* key, then value */
};

typedef struct nslot {
    uint64_t hash;
    nent *e; /* NULL: empty */
} nslot;

typedef struct nhist {
    uint64_t hash;
    uint64_t seq;
} nhist;

struct aorm__near {
    size_t max_entries, max_bytes;
    nslot *slots;
    size_t nslots; /* power of two; count <= nslots / 2 */
    nent *head, *tail;
    uint64_t seq;        /* invalidation sequence */
    uint64_t clear_seq;  /* seq of the last clear; 0 none */
    nhist *hist;         /* AORM__NEAR_HISTORY entries, a ring */
    size_t hist_next;    /* where the next del goes */
    size_t hist_count;   /* entries filled (<= AORM__NEAR_HISTORY) */
    aorm__near_stats st;
};

#define INITIAL_SLOTS 16u

static size_t ent_bytes(size_t klen, size_t vlen) { return klen + vlen + AORM__NEAR_OVERHEAD; }

static uint64_t key_hash(const void *key, size_t klen) { return XXH3_64bits(key, klen); }

aorm__near *aorm__near_new(size_t max_entries, size_t max_bytes) {
    if (max_entries == 0) return NULL;
    aorm__near *n = calloc(1, sizeof(*n));
    if (!n) return NULL;
    n->max_entries = max_entries;
    n->max_bytes = max_bytes;
    n->nslots = INITIAL_SLOTS;
    n->slots = calloc(n->nslots, sizeof(*n->slots));
    n->hist = calloc(AORM__NEAR_HISTORY, sizeof(*n->hist));
    if (!n->slots || !n->hist) {
        free(n->slots);
        free(n->hist);
        free(n);
        return NULL;
    }
    return n;
}

static void drop_all(aorm__near *n) {
    for (nent *e = n->head, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    n->head = n->tail = NULL;
    memset(n->slots, 0, n->nslots * sizeof(*n->slots));
    n->st.entries = 0;
    n->st.bytes = 0;
}

void aorm__near_free(aorm__near *n) {
    if (!n) return;
    drop_all(n);
    free(n->slots);
    free(n->hist);
    free(n);
}

/* ---- the LRU list ---------------------------------------------------------------- */

static void lru_unlink(aorm__near *n, nent *e) {
    if (e->prev) e->prev->next = e->next;
    else n->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else n->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_head(aorm__near *n, nent *e) {
    e->prev = NULL;
    e->next = n->head;
    if (n->head) n->head->prev = e;
    else n->tail = e;
    n->head = e;
}

/* ---- the table ------------------------------------------------------------------- */

/* The slot index holding key, or (size_t)-1. */
static size_t find_slot(const aorm__near *n, uint64_t h, const void *key, size_t klen) {
    size_t mask = n->nslots - 1;
    /* terminates: the table is at most half full */
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const nslot *s = &n->slots[i];
        if (!s->e) return (size_t)-1;
        if (s->hash == h && s->e->klen == klen && memcmp(s->e->data, key, klen) == 0) return i;
    }
}

/* Empties slot i and shifts the run after it back into place. */
static void slot_remove(aorm__near *n, size_t i) {
    size_t mask = n->nslots - 1;
    n->slots[i].e = NULL;
    for (size_t j = (i + 1) & mask; n->slots[j].e; j = (j + 1) & mask) {
        size_t home = (size_t)n->slots[j].hash & mask;
        /* slot j may move to the hole i when its home is not in (i, j] */
        bool stay = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stay) continue;
        n->slots[i] = n->slots[j];
        n->slots[j].e = NULL;
        i = j;
    }
}

static void slot_insert(nslot *slots, size_t nslots, uint64_t h, nent *e) {
    size_t mask = nslots - 1;
    size_t i = (size_t)h & mask;
    while (slots[i].e) i = (i + 1) & mask;
    slots[i].hash = h;
    slots[i].e = e;
}

/* Room for one more entry. Returns 0 or -1 (out of memory; unchanged). */
static int table_reserve(aorm__near *n) {
    if ((n->st.entries + 1) * 2 <= n->nslots) return 0;
    size_t ns = n->nslots * 2;
    nslot *t = calloc(ns, sizeof(*t));
    if (!t) return -1;
    for (size_t i = 0; i < n->nslots; i++)
        if (n->slots[i].e) slot_insert(t, ns, n->slots[i].hash, n->slots[i].e);
    free(n->slots);
    n->slots = t;
    n->nslots = ns;
    return 0;
}

/* Drops the entry in slot i. */
static void remove_at(aorm__near *n, size_t i) {
    nent *e = n->slots[i].e;
    slot_remove(n, i);
    lru_unlink(n, e);
    n->st.entries--;
    n->st.bytes -= ent_bytes(e->klen, e->vlen);
    free(e);
}

static void remove_entry(aorm__near *n, nent *e) {
    size_t i = find_slot(n, e->hash, e->data, e->klen);
    aorm__assert(i != (size_t)-1 && n->slots[i].e == e);
    remove_at(n, i);
}

/* ---- the interface --------------------------------------------------------------- */

const void *aorm__near_get(aorm__near *n, const void *key, size_t klen, double now, size_t *vlen) {
    if (!n || (!key && klen)) return NULL;
    if (!key) key = ""; /* (memcmp and memcpy take no NULL, even for 0 bytes) */
    size_t i = find_slot(n, key_hash(key, klen), key, klen);
    if (i == (size_t)-1) {
        n->st.misses++;
        return NULL;
    }
    nent *e = n->slots[i].e;
    if (e->expires_at > 0 && e->expires_at <= now) {
        remove_at(n, i);
        n->st.misses++;
        n->st.expired++;
        return NULL;
    }
    if (n->head != e) {
        lru_unlink(n, e);
        lru_push_head(n, e);
    }
    n->st.hits++;
    if (vlen) *vlen = e->vlen;
    return e->data + e->klen;
}

int aorm__near_put(aorm__near *n, const void *key, size_t klen, const void *val, size_t vlen, double expires_at,
                   double now) {
    if (!n || (!key && klen) || (!val && vlen)) return AORM_EMISUSE;
    if (!key) key = "";
    if (!val) val = "";
    uint64_t h = key_hash(key, klen);
    size_t i = find_slot(n, h, key, klen);
    size_t eb = ent_bytes(klen, vlen);
    if ((n->max_bytes && eb > n->max_bytes) || (expires_at > 0 && expires_at <= now)) {
        if (i != (size_t)-1) remove_at(n, i);
        n->st.refused++;
        return 1;
    }
    nent *e = malloc(sizeof(*e) + klen + vlen);
    if (!e) return AORM_ENOMEM;
    e->prev = e->next = NULL;
    e->hash = h;
    e->expires_at = expires_at;
    e->klen = klen;
    e->vlen = vlen;
    if (klen) memcpy(e->data, key, klen);
    if (vlen) memcpy(e->data + klen, val, vlen);
    if (i != (size_t)-1) { /* replace in place: the slot keeps its position */
        nent *old = n->slots[i].e;
        lru_unlink(n, old);
        n->st.bytes -= ent_bytes(old->klen, old->vlen);
        n->st.entries--;
        free(old);
        n->slots[i].e = e;
    } else if (table_reserve(n) < 0) {
        free(e);
        return AORM_ENOMEM;
    }
    /* make room; the new entry is not in the list yet, so it is never evicted */
    while (n->tail && (n->st.entries + 1 > n->max_entries || (n->max_bytes && n->st.bytes + eb > n->max_bytes))) {
        remove_entry(n, n->tail);
        n->st.evictions++;
    }
    if (i == (size_t)-1) slot_insert(n->slots, n->nslots, h, e);
    lru_push_head(n, e);
    n->st.entries++;
    n->st.bytes += eb;
    return 0;
}

uint64_t aorm__near_seq(const aorm__near *n) { return n ? n->seq : 0; }

/* True when key may have been dropped after `seen`. */
static bool dropped_since(const aorm__near *n, uint64_t h, uint64_t seen) {
    if (seen >= n->seq) return false;
    if (n->clear_seq > seen) return true;
    size_t k = n->hist_next;
    for (size_t left = n->hist_count; left > 0; left--) {
        k = (k + AORM__NEAR_HISTORY - 1) % AORM__NEAR_HISTORY;
        const nhist *x = &n->hist[k];
        if (x->seq <= seen) return false;
        if (x->hash == h) return true;
    }
    /* every remembered del is newer than seen: older ones were forgotten
     * unless the ring never filled */
    return n->hist_count == AORM__NEAR_HISTORY;
}

int aorm__near_put_after(aorm__near *n, const void *key, size_t klen, const void *val, size_t vlen, double expires_at,
                         double now, uint64_t seen) {
    if (!n || (!key && klen) || (!val && vlen)) return AORM_EMISUSE;
    if (!key) key = "";
    if (dropped_since(n, key_hash(key, klen), seen)) {
        n->st.refused++;
        return 1;
    }
    return aorm__near_put(n, key, klen, val, vlen, expires_at, now);
}

void aorm__near_del(aorm__near *n, const void *key, size_t klen) {
    if (!n || (!key && klen)) return;
    if (!key) key = "";
    uint64_t h = key_hash(key, klen);
    n->seq++;
    n->hist[n->hist_next].hash = h;
    n->hist[n->hist_next].seq = n->seq;
    n->hist_next = (n->hist_next + 1) % AORM__NEAR_HISTORY;
    if (n->hist_count < AORM__NEAR_HISTORY) n->hist_count++;
    size_t i = find_slot(n, h, key, klen);
    if (i == (size_t)-1) return;
    remove_at(n, i);
    n->st.invalidations++;
}

void aorm__near_clear(aorm__near *n) {
    if (!n) return;
    drop_all(n);
    n->seq++;
    n->clear_seq = n->seq;
    n->hist_count = 0; /* the clear covers every older del */
    n->st.flushes++;
}

void aorm__near_stats_get(const aorm__near *n, aorm__near_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof(*out));
    if (n) *out = n->st;
}
