/* region.c -- see region.h. The allocator itself is util/bump.c; what is
 * left here are the two functions a pointer is taken of or that are not
 * the region's own: the allocator adapter handed to the mapping layer, and
 * the prefaulted calloc of the identity map's tables. */
#include "async_session/region.h"

#include <stdlib.h>

void *aorm__region_alloc_fn(void *ctx, size_t n) { return aorm__region_alloc(ctx, n); }

void *aorm__calloc_prefaulted(size_t n) {
    void *p = calloc(1, n);
    if (p && n >= AORM__PREFAULT_MIN) aorm__prefault(p, n);
    return p;
}
