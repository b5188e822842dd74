/* bump.h -- the one bump allocator: many small allocations, one free.
 *
 * Serves both the statement arena of src/sql (a small first block inside
 * the statement itself, then blocks that double from 4 KiB to 64 KiB) and
 * the session's region of src/async_session (fixed-size blocks, an index
 * of every block's bytes for aorm__bump_contains(), large reservations
 * faulted in at once). One implementation, so that an overflow check or an
 * alignment rule is fixed once for both.
 *
 * Rules:
 *   - memory comes 16-byte aligned (enough for any scalar type here:
 *     _Alignof(max_align_t) is 16 on the targets aorm builds for), is not
 *     zeroed, and is never freed before aorm__bump_free();
 *   - an ordinary request is served from the current block, or from a new
 *     one of next_size bytes (which then doubles, up to max_size);
 *   - a request larger than `big` gets a dedicated block of its own, kept
 *     *behind* the current block, so the current block keeps serving small
 *     requests;
 *   - a size no object can have (more than PTRDIFF_MAX bytes, SIZE_MAX
 *     included) is refused with NULL before any arithmetic on it, so no
 *     rounding can wrap to a small block. */
#ifndef AORM_UTIL_BUMP_H
#define AORM_UTIL_BUMP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct aorm__bump_block aorm__bump_block;

typedef struct aorm__bump_range {
    const char *start, *end;
} aorm__bump_range;

typedef struct aorm__bump {
    char *cur, *end;          /* free room of the current block */
    aorm__bump_block *head;   /* malloc'd blocks, the current one first (a first block given to
                                 aorm__bump_init is not listed: its owner frees it) */
    size_t next_size;         /* size of the next ordinary block */
    size_t max_size;          /* ordinary blocks double up to this */
    size_t big;               /* requests above this get a dedicated block */
    size_t total;             /* bytes handed out (after rounding) */
    bool track;               /* keep `ranges` for aorm__bump_contains() */
    aorm__bump_range *ranges; /* with track: every malloc'd block's bytes, sorted by address */
    size_t nranges, cap_ranges;
} aorm__bump;

#define AORM__BUMP_ALIGN ((size_t)16)

/* Prepares b. `first` (16-byte aligned, may be NULL) with `first_size`
 * bytes is the first block, owned by the caller. Ordinary blocks start at
 * block_min bytes and double up to block_max; requests above `big` bytes
 * (at most block_min) get a block of their own. `track` keeps the index
 * aorm__bump_contains() needs. */
void aorm__bump_init(aorm__bump *b, void *first, size_t first_size, size_t block_min, size_t block_max,
                     size_t big, bool track);
/* Frees every block (not `first`) and leaves b empty and reusable only
 * after another aorm__bump_init(). */
void aorm__bump_free(aorm__bump *b);

void *aorm__bump_alloc_slow(aorm__bump *b, size_t n);
/* n bytes, 16-byte aligned, or NULL on out of memory or an absurd size.
 * A request of 0 bytes may return the current position (not unique). */
static inline void *aorm__bump_alloc(aorm__bump *b, size_t n) {
    size_t r = (n + AORM__BUMP_ALIGN - 1) & ~(AORM__BUMP_ALIGN - 1);
    if (r >= n && (size_t)(b->end - b->cur) >= r) {
        void *p = b->cur;
        b->cur += r;
        b->total += r;
        return p;
    }
    return aorm__bump_alloc_slow(b, n);
}
void *aorm__bump_calloc(aorm__bump *b, size_t n);
/* A copy of p[0..n) followed by a NUL byte; strdup NULL gives NULL. */
char *aorm__bump_memdup(aorm__bump *b, const void *p, size_t n);
char *aorm__bump_strdup(aorm__bump *b, const char *s);
/* Makes the next n bytes of small allocations come from one block, and
 * faults that block in at once when it is large (from 1 MiB: one madvise
 * instead of a page fault per 4 KiB). Best effort: does nothing on out of
 * memory or an absurd size. */
void aorm__bump_reserve(aorm__bump *b, size_t n);
/* True when [p, p + n) lies inside one malloc'd block of b (needs track;
 * the first block is not indexed). O(log blocks). */
int aorm__bump_contains(const aorm__bump *b, const void *p, size_t n);

/* Faults [p, p + n) in with one call where the kernel knows
 * MADV_POPULATE_WRITE (5.14); harmless when it says no. */
void aorm__prefault(void *p, size_t n);

#endif /* AORM_UTIL_BUMP_H */
