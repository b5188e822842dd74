/* test_identity.c -- the session's identity map (src/async_session/
 * identity.c) against a reference set, with no database: random puts,
 * removes, finds and reserves of objects of two models sharing key values,
 * under three hash distributions -- the real integer-key hash, heavy
 * clustering, and every key on one hash -- so that linear probing,
 * backward-shift removal and growth are all exercised where they are
 * hardest. After every step the count must match the reference and the
 * table must be at most half full; at the end a scan of the slots must
 * find exactly the reference's objects.
 *
 * Every test has the same timeout: Criterion 2.4.1's runner leaks under
 * --jobs when timeouts differ. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "async_session/session_int.h"
#include "models.h"

#define TIMEOUT 120
#define N 4000
#define STEPS 200000

typedef struct slot_author {
    aorm__obj h;
    author a;
} slot_author;

typedef struct slot_tag {
    aorm__obj h;
    tag t;
} slot_tag;

static slot_author authors[N];
static slot_tag tags[N];
static bool author_in[N], tag_in[N];

static uint64_t hash_of(const aorm_model *m, int i, int mode) {
    if (mode == 0) return aorm__int_key_hash(m, i);
    if (mode == 1) return (uint64_t)(i % 13) * 64 + (uint64_t)(i % 3); /* clusters of probes */
    return 7;                                                          /* one chain for every key */
}

static void run(int mode) {
    aorm__idmap map;
    aorm__idmap_init(&map);
    memset(author_in, 0, sizeof author_in);
    memset(tag_in, 0, sizeof tag_in);
    int n = mode == 2 ? 300 : N;
    for (int i = 0; i < n; i++) {
        memset(&authors[i], 0, sizeof authors[i]);
        authors[i].h.model = &author_model;
        authors[i].a.id = i;
        authors[i].h.key_hash = hash_of(&author_model, i, mode);
        memset(&tags[i], 0, sizeof tags[i]);
        tags[i].h.model = &tag_model; /* the same key values, another model */
        tags[i].t.id = i;
        tags[i].h.key_hash = hash_of(&tag_model, i, mode);
    }
    srand(1u + (unsigned)mode);
    uint32_t count = 0;
    for (int step = 0; step < STEPS; step++) {
        int i = rand() % n;
        int op = rand() % 10;
        bool is_tag = rand() % 4 == 0;
        bool *in = is_tag ? tag_in : author_in;
        aorm__obj *h = is_tag ? &tags[i].h : &authors[i].h;
        const aorm_model *m = is_tag ? &tag_model : &author_model;
        if (op < 4) {
            if (!in[i]) {
                cr_assert_eq(aorm__idmap_put(&map, h), 0);
                cr_assert(h->flags & OBJ_IN_MAP);
                in[i] = true;
                count++;
            }
        } else if (op < 7) {
            aorm__idmap_remove(&map, h);
            cr_assert_not(h->flags & OBJ_IN_MAP, "mode %d step %d: removed object still flagged", mode, step);
            if (in[i]) count--;
            in[i] = false;
        } else if (op < 9) {
            author akey = {.id = i};
            tag tkey = {.id = i};
            uint64_t hash = hash_of(m, i, mode);
            aorm__obj *f = aorm__idmap_find(&map, m, is_tag ? (void *)&tkey : (void *)&akey, hash);
            aorm__obj *g = aorm__idmap_find_int(&map, m, i, hash);
            cr_assert_eq(f != NULL, in[i], "mode %d step %d: find says %d, reference %d", mode, step, f != NULL,
                         in[i]);
            cr_assert_eq(f, g, "mode %d step %d: find and find_int disagree", mode, step);
            if (f) cr_assert_eq(f, h, "mode %d step %d: another object answered", mode, step);
        } else {
            cr_assert_eq(aorm__idmap_reserve(&map, (size_t)(rand() % 3000)), 0);
        }
        cr_assert_eq(map.count, count, "mode %d step %d: count %u, reference %u", mode, step, map.count, count);
        cr_assert(map.nslots == 0 || map.count * 2 <= map.nslots, "mode %d step %d: more than half full", mode,
                  step);
    }
    uint32_t seen = 0;
    for (uint32_t k = 0; k < map.nslots; k++) {
        aorm__obj *h = map.slots[k].h;
        if (!h) continue;
        seen++;
        cr_assert_eq(map.slots[k].hash, h->key_hash);
        bool is_tag = h->model == &tag_model;
        int i = is_tag ? (int)((slot_tag *)(void *)h)->t.id : (int)((slot_author *)(void *)h)->a.id;
        cr_assert(is_tag ? tag_in[i] : author_in[i], "mode %d: slot %u holds an object the reference lacks", mode, k);
    }
    cr_assert_eq(seen, count);
    aorm__idmap_free(&map);
}

Test(identity, random_operations_with_real_hashes, .timeout = TIMEOUT) { run(0); }
Test(identity, random_operations_with_clustered_hashes, .timeout = TIMEOUT) { run(1); }
Test(identity, random_operations_with_one_hash_for_every_key, .timeout = TIMEOUT) { run(2); }
