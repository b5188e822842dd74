/* region.c -- see region.h. A block that cannot hold a large request gets
 * a dedicated block of its own, placed behind the current one so the
 * current block keeps serving small requests. */
#include "async_session/region.h"

#include <stdlib.h>
#include <string.h>

struct aorm__region_block {
    aorm__region_block *next;
    size_t size;
    char data[] __attribute__((aligned(16)));
};

void aorm__region_init(aorm__region *a, size_t block_size) {
    memset(a, 0, sizeof(*a));
    a->block_size = block_size ? block_size : 65536;
}

void aorm__region_free(aorm__region *a) {
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

void *aorm__region_alloc_slow(aorm__region *a, size_t n) {
    if (n > a->block_size / 4) {
        aorm__region_block *b = malloc(sizeof(*b) + n);
        if (!b) return NULL;
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
    b->size = a->block_size;
    b->next = a->head;
    a->head = b;
    a->cur = b->data + n;
    a->end = b->data + a->block_size;
    a->total += n;
    return b->data;
}

void *aorm__region_calloc(aorm__region *a, size_t n) {
    void *p = aorm__region_alloc(a, n);
    if (p) memset(p, 0, n);
    return p;
}

char *aorm__region_memdup(aorm__region *a, const void *p, size_t n) {
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
