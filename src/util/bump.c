/* bump.c -- see bump.h: the one bump allocator, behind the statement arena
 * (src/sql) and the session's region (src/async_session). Sizes can come
 * from callers (aorm_session_alloc is public): one larger than any object
 * can be is refused before any arithmetic on it, so nothing wraps. */
#include "util/bump.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct aorm__bump_block {
    aorm__bump_block *next;
    size_t size;
    char data[] __attribute__((aligned(16)));
};

/* The largest request served: the block header, the rounding and the
 * pointer differences of the bump path must all stay in range. */
#define BUMP_MAX ((size_t)PTRDIFF_MAX - sizeof(aorm__bump_block) - 64)

void aorm__bump_init(aorm__bump *b, void *first, size_t first_size, size_t block_min, size_t block_max,
                     size_t big, bool track) {
    memset(b, 0, sizeof(*b));
    if (first) {
        b->cur = first;
        b->end = (char *)first + first_size;
    }
    b->next_size = block_min;
    b->max_size = block_max < block_min ? block_min : block_max;
    b->big = big > block_min ? block_min : big;
    b->track = track;
}

void aorm__bump_free(aorm__bump *b) {
    free(b->ranges);
    b->ranges = NULL;
    b->nranges = b->cap_ranges = 0;
    aorm__bump_block *k = b->head;
    while (k) {
        aorm__bump_block *n = k->next;
        free(k);
        k = n;
    }
    b->head = NULL;
    b->cur = b->end = NULL;
    b->total = 0;
}

/* Records a new block in the sorted range index (blocks are rare: an
 * insertion with memmove is fine). */
static int add_range(aorm__bump *b, char *start, size_t n) {
    if (!b->track) return 0;
    if (b->nranges == b->cap_ranges) {
        size_t cap = b->cap_ranges ? b->cap_ranges * 2 : 16;
        aorm__bump_range *r = realloc(b->ranges, cap * sizeof(*r));
        if (!r) return -1;
        b->ranges = r;
        b->cap_ranges = cap;
    }
    size_t i = b->nranges;
    while (i > 0 && b->ranges[i - 1].start > start) i--;
    memmove(&b->ranges[i + 1], &b->ranges[i], (b->nranges - i) * sizeof(*b->ranges));
    b->ranges[i].start = start;
    b->ranges[i].end = start + n;
    b->nranges++;
    return 0;
}

/* A new malloc'd block of n bytes, indexed; NULL on out of memory. */
static aorm__bump_block *new_block(aorm__bump *b, size_t n) {
    aorm__bump_block *k = malloc(sizeof(*k) + n);
    if (!k) return NULL;
    if (add_range(b, k->data, n) < 0) {
        free(k);
        return NULL;
    }
    k->size = n;
    return k;
}

int aorm__bump_contains(const aorm__bump *b, const void *p, size_t n) {
    const char *q = p;
    size_t lo = 0, hi = b->nranges;
    while (lo < hi) { /* last range starting at or before q */
        size_t mid = (lo + hi) / 2;
        if (b->ranges[mid].start <= q) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return 0;
    const aorm__bump_range *r = &b->ranges[lo - 1];
    return q >= r->start && q < r->end && (size_t)(r->end - q) >= n;
}

void *aorm__bump_alloc_slow(aorm__bump *b, size_t n) {
    if (n > BUMP_MAX) return NULL;
    n = (n + AORM__BUMP_ALIGN - 1) & ~(AORM__BUMP_ALIGN - 1);
    if (n > b->big) {
        /* a dedicated block, behind the current one (which keeps its room) */
        aorm__bump_block *k = new_block(b, n);
        if (!k) return NULL;
        if (b->head) {
            k->next = b->head->next;
            b->head->next = k;
        } else {
            k->next = NULL;
            b->head = k;
        }
        b->total += n;
        return k->data;
    }
    size_t size = b->next_size;
    aorm__bump_block *k = new_block(b, size);
    if (!k) return NULL;
    if (b->next_size < b->max_size) b->next_size = b->next_size * 2 > b->max_size ? b->max_size : b->next_size * 2;
    k->next = b->head;
    b->head = k;
    b->cur = k->data + n;
    b->end = k->data + size;
    b->total += n;
    return k->data;
}

void aorm__prefault(void *p, size_t n) {
#ifdef MADV_POPULATE_WRITE
    uintptr_t page = 4096;
    uintptr_t start = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t stop = ((uintptr_t)p + n) & ~(page - 1);
    if (stop > start) madvise((void *)start, stop - start, MADV_POPULATE_WRITE);
#else
    (void)p;
    (void)n;
#endif
}

void aorm__bump_reserve(aorm__bump *b, size_t n) {
    if ((size_t)(b->end - b->cur) >= n || n < (size_t)1 << 20 || n > BUMP_MAX) return;
    aorm__bump_block *k = new_block(b, n);
    if (!k) return;
    k->next = b->head; /* becomes the current block */
    b->head = k;
    b->cur = k->data;
    b->end = k->data + n;
    aorm__prefault(k->data, n);
}

void *aorm__bump_calloc(aorm__bump *b, size_t n) {
    void *p = aorm__bump_alloc(b, n);
    if (p) memset(p, 0, n);
    return p;
}

char *aorm__bump_memdup(aorm__bump *b, const void *p, size_t n) {
    if (n > BUMP_MAX) return NULL;
    char *d = aorm__bump_alloc(b, n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

char *aorm__bump_strdup(aorm__bump *b, const char *s) {
    return s ? aorm__bump_memdup(b, s, strlen(s)) : NULL;
}
