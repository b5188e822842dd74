/* region.h -- a session's region: many small allocations, one free.
 *
 * Private to src/async_session and src/loaders (the objects a session
 * loads live here). The region is the project's one bump allocator
 * (util/bump.h) set up the session's way: fixed-size blocks (the
 * session's arena_block option), requests above a quarter block in a
 * block of their own, and an index of every block so that
 * aorm__region_contains() can tell whether memory came from the region.
 * Nothing is freed before aorm__region_free(). */
#ifndef AORM_REGION_H
#define AORM_REGION_H

#include <stddef.h>

#include "util/bump.h"

typedef aorm__bump aorm__region;

static inline void aorm__region_init(aorm__region *a, size_t block_size) {
    size_t bs = block_size ? block_size : 65536;
    aorm__bump_init(a, NULL, 0, bs, bs, bs / 4, true);
}
static inline void aorm__region_free(aorm__region *a) { aorm__bump_free(a); }
/* 16-byte aligned memory, NULL on out of memory or for a size no object
 * can have (more than PTRDIFF_MAX bytes, SIZE_MAX included: rounding it
 * up must not wrap to a small block). Not zeroed. */
static inline void *aorm__region_alloc(aorm__region *a, size_t n) { return aorm__bump_alloc(a, n); }
/* Hints that the n bytes `ahead` bytes past the current allocation point
 * will be written soon, when they lie in the current block: a large load
 * fills the region front to back, and asking for those cache lines early
 * keeps its writes from waiting on them. Only a hint (a prefetch never
 * faults). */
static inline void aorm__region_prefetch(const aorm__region *a, size_t ahead, size_t n) {
    if ((size_t)(a->end - a->cur) < ahead + n) return;
    for (const char *p = a->cur + ahead, *e = p + n; p < e; p += 64) __builtin_prefetch(p, 1);
}
static inline void *aorm__region_calloc(aorm__region *a, size_t n) { return aorm__bump_calloc(a, n); }
static inline char *aorm__region_strdup(aorm__region *a, const char *s) { return aorm__bump_strdup(a, s); }
static inline char *aorm__region_memdup(aorm__region *a, const void *p, size_t n) {
    return aorm__bump_memdup(a, p, n);
}
/* Makes the next n bytes of small allocations come from one block, and
 * faults that block in at once when it is large (one madvise instead of
 * a page fault per 4 KiB while a large result is loaded). Best effort. */
static inline void aorm__region_reserve(aorm__region *a, size_t n) { aorm__bump_reserve(a, n); }

/* calloc(1, n), and from AORM__PREFAULT_MIN bytes on faulted in by one
 * madvise: a large table probed at random (the identity map's slots)
 * would otherwise take its page faults one at a time, in the middle of a
 * load, where no prefetch can hide them. Freed with free(). */
#define AORM__PREFAULT_MIN ((size_t)256 << 10)
void *aorm__calloc_prefaulted(size_t n);

/* True when [p, p + n) lies inside memory the region handed out (so it
 * may be read without going out of bounds). O(log blocks). */
static inline int aorm__region_contains(const aorm__region *a, const void *p, size_t n) {
    return aorm__bump_contains(a, p, n);
}
/* allocator adapter for aorm__field_load and aorm_stmt_load */
void *aorm__region_alloc_fn(void *ctx, size_t n);

#endif /* AORM_REGION_H */
