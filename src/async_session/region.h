/* region.h -- a region (bump) allocator: many small allocations, one free.
 *
 * Private to src/async_session and src/loaders (the objects a session
 * loads live here). Blocks are malloc'd as needed; nothing is freed
 * before aorm__region_free(). */
#ifndef AORM_REGION_H
#define AORM_REGION_H

#include <stddef.h>

typedef struct aorm__region_block aorm__region_block;

typedef struct aorm__region_range {
    const char *start, *end;
} aorm__region_range;

typedef struct aorm__region {
    aorm__region_block *head; /* current block first */
    char *cur;
    char *end;
    size_t block_size;
    size_t total;            /* bytes handed out */
    aorm__region_range *ranges; /* every block's bytes, sorted by address */
    size_t nranges, cap_ranges;
} aorm__region;

void aorm__region_init(aorm__region *a, size_t block_size);
void aorm__region_free(aorm__region *a);
/* 16-byte aligned memory, NULL on out of memory or for a size no object
 * can have (more than PTRDIFF_MAX bytes, SIZE_MAX included: rounding it
 * up must not wrap to a small block). Not zeroed. */
void *aorm__region_alloc_slow(aorm__region *a, size_t n);
static inline void *aorm__region_alloc(aorm__region *a, size_t n) {
    size_t r = (n + 15) & ~(size_t)15;
    if (r >= n && (size_t)(a->end - a->cur) >= r) {
        void *p = a->cur;
        a->cur += r;
        a->total += r;
        return p;
    }
    return aorm__region_alloc_slow(a, n);
}
/* Hints that the n bytes `ahead` bytes past the current allocation point
 * will be written soon, when they lie in the current block: a large load
 * fills the region front to back, and asking for those cache lines early
 * keeps its writes from waiting on them. Only a hint (a prefetch never
 * faults). */
static inline void aorm__region_prefetch(const aorm__region *a, size_t ahead, size_t n) {
    if ((size_t)(a->end - a->cur) < ahead + n) return;
    for (const char *p = a->cur + ahead, *e = p + n; p < e; p += 64) __builtin_prefetch(p, 1);
}
void *aorm__region_calloc(aorm__region *a, size_t n);
char *aorm__region_strdup(aorm__region *a, const char *s);
char *aorm__region_memdup(aorm__region *a, const void *p, size_t n);
/* Makes the next n bytes of small allocations come from one block, and
 * faults that block in at once when it is large (one madvise instead of
 * a page fault per 4 KiB while a large result is loaded). Best effort. */
void aorm__region_reserve(aorm__region *a, size_t n);

/* calloc(1, n), and from AORM__PREFAULT_MIN bytes on faulted in by one
 * madvise: a large table probed at random (the identity map's slots)
 * would otherwise take its page faults one at a time, in the middle of a
 * load, where no prefetch can hide them. Freed with free(). */
#define AORM__PREFAULT_MIN ((size_t)256 << 10)
void *aorm__calloc_prefaulted(size_t n);

/* True when [p, p + n) lies inside memory the region handed out (so it
 * may be read without going out of bounds). O(log blocks). */
int aorm__region_contains(const aorm__region *a, const void *p, size_t n);
/* allocator adapter for aorm__field_load and aorm_stmt_load */
void *aorm__region_alloc_fn(void *ctx, size_t n);

#endif /* AORM_REGION_H */
