/* region.c -- see region.h. A block that cannot hold a large request gets
 * a dedicated block of its own, placed behind the current one so the
 * current block keeps serving small requests. Sizes come from callers
 * (aorm_session_alloc is public): one larger than any object can be is
 * refused before any arithmetic on it, so nothing wraps. */
#include "async_session/region.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct aorm__region_block {
    aorm__region_block *next;
    size_t size;
    char data[] __attribute__((aligned(16)));
};

void aorm__region_init(aorm__region *a, size_t block_size) {
    memset(a, 0, sizeof(*a));
    a->block_size = block_size ? block_size : 65536;
}

/* Records a new block in the sorted range index (blocks are rare: an
 * insertion with memmove is fine). */
static int add_range(aorm__region *a, char *start, size_t n) {
    if (a->nranges == a->cap_ranges) {
        size_t cap = a->cap_ranges ? a->cap_ranges * 2 : 16;
        aorm__region_range *r = realloc(a->ranges, cap * sizeof(*r));
        if (!r) return -1;
        a->ranges = r;
        a->cap_ranges = cap;
    }
    size_t i = a->nranges;
    while (i > 0 && a->ranges[i - 1].start > start) i--;
    memmove(&a->ranges[i + 1], &a->ranges[i], (a->nranges - i) * sizeof(*a->ranges));
    a->ranges[i].start = start;
    a->ranges[i].end = start + n;
    a->nranges++;
    return 0;
}

int aorm__region_contains(const aorm__region *a, const void *p, size_t n) {
    const char *q = p;
    size_t lo = 0, hi = a->nranges;
    while (lo < hi) { /* last range starting at or before q */
        size_t mid = (lo + hi) / 2;
        if (a->ranges[mid].start <= q) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return 0;
    const aorm__region_range *r = &a->ranges[lo - 1];
    return q >= r->start && q < r->end && (size_t)(r->end - q) >= n;
}

void aorm__region_free(aorm__region *a) {
    free(a->ranges);
    a->ranges = NULL;
    a->nranges = a->cap_ranges = 0;
    aorm__region_block *b = a->head;
    while (b) {
        aorm__region_block *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
    a->cur = a->end = NULL;
    a->total = 0;
}

/* The largest request served: the block header, the rounding and the
 * pointer differences of the bump path must all stay in range. */
#define REGION_MAX ((size_t)PTRDIFF_MAX - sizeof(aorm__region_block) - 64)

void *aorm__region_alloc_slow(aorm__region *a, size_t n) {
    if (n > REGION_MAX) return NULL;
    n = (n + 15) & ~(size_t)15;
    if (n > a->block_size / 4) {
        aorm__region_block *b = malloc(sizeof(*b) + n);
        if (!b) return NULL;
        if (add_range(a, b->data, n) < 0) {
            free(b);
            return NULL;
        }
        b->size = n;
        if (a->head) { /* behind the current block */
            b->next = a->head->next;
            a->head->next = b;
        } else {
            b->next = NULL;
            a->head = b;
            a->cur = a->end = b->data + n; /* full: next small request opens a block */
        }
        a->total += n;
        return b->data;
    }
    aorm__region_block *b = malloc(sizeof(*b) + a->block_size);
    if (!b) return NULL;
    if (add_range(a, b->data, a->block_size) < 0) {
        free(b);
        return NULL;
    }
    b->size = a->block_size;
    b->next = a->head;
    a->head = b;
    a->cur = b->data + n;
    a->end = b->data + a->block_size;
    a->total += n;
    return b->data;
}

/* Faults [p, p + n) in with one call, where the kernel knows
 * MADV_POPULATE_WRITE (5.14); harmless when it says no. */
static void prefault(void *p, size_t n) {
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

void aorm__region_reserve(aorm__region *a, size_t n) {
    if ((size_t)(a->end - a->cur) >= n || n < (size_t)1 << 20 || n > REGION_MAX) return;
    aorm__region_block *b = malloc(sizeof(*b) + n);
    if (!b) return;
    if (add_range(a, b->data, n) < 0) {
        free(b);
        return;
    }
    b->size = n;
    b->next = a->head; /* becomes the current block */
    a->head = b;
    a->cur = b->data;
    a->end = b->data + n;
    prefault(b->data, n);
}

void *aorm__region_calloc(aorm__region *a, size_t n) {
    void *p = aorm__region_alloc(a, n);
    if (p) memset(p, 0, n);
    return p;
}

char *aorm__region_memdup(aorm__region *a, const void *p, size_t n) {
    if (n > REGION_MAX) return NULL;
    char *d = aorm__region_alloc(a, n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

char *aorm__region_strdup(aorm__region *a, const char *s) {
    return s ? aorm__region_memdup(a, s, strlen(s)) : NULL;
}

void *aorm__region_alloc_fn(void *ctx, size_t n) { return aorm__region_alloc(ctx, n); }

void *aorm__calloc_prefaulted(size_t n) {
    void *p = calloc(1, n);
    if (p && n >= AORM__PREFAULT_MIN) prefault(p, n);
    return p;
}
