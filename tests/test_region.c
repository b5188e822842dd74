/* test_region.c -- the region (bump) allocator behind a session's arena
 * (src/async_session/region.c) and aorm_session_alloc() at the sizes that
 * used to wrap: a request larger than any object can be is refused with
 * NULL, never served from a block too small for it. No server is
 * contacted (an engine opens no connection until it has work). */
#include <stdint.h>
#include <string.h>

#include "support.h"

#include "async_session/region.h"

/* Sizes no object can have, from SIZE_MAX down to just past PTRDIFF_MAX. */
static const size_t absurd[] = {
    SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 8, SIZE_MAX - 14, SIZE_MAX - 15, SIZE_MAX - 16,
    SIZE_MAX - 64, SIZE_MAX / 2 + 1, (size_t)PTRDIFF_MAX + 1,
};

Test(region, absurd_sizes_are_refused, .timeout = 10) {
    aorm__region a;
    aorm__region_init(&a, 0);
    /* a current block with room left, so the fast path is what is tried */
    char *first = aorm__region_alloc(&a, 24);
    cr_assert_not_null(first);
    memset(first, 'x', 24);
    size_t total = a.total;
    for (size_t i = 0; i < sizeof(absurd) / sizeof(absurd[0]); i++) {
        cr_expect_null(aorm__region_alloc(&a, absurd[i]), "a request of %zu bytes was served", absurd[i]);
        cr_expect_null(aorm__region_calloc(&a, absurd[i]), "calloc of %zu bytes was served", absurd[i]);
        cr_expect_null(aorm__region_memdup(&a, first, absurd[i]), "memdup of %zu bytes was served", absurd[i]);
        aorm__region_reserve(&a, absurd[i]); /* best effort: must simply do nothing */
    }
    cr_expect_eq(a.total, total, "refused requests were counted");
    /* the region still works, and the first block was not overwritten */
    char *p = aorm__region_alloc(&a, 100);
    cr_assert_not_null(p);
    memset(p, 'y', 100);
    for (int i = 0; i < 24; i++) cr_assert_eq(first[i], 'x');
    cr_assert(aorm__region_contains(&a, p, 100));
    void *big = aorm__region_alloc(&a, (size_t)1 << 20); /* a dedicated block */
    cr_assert_not_null(big);
    memset(big, 0, (size_t)1 << 20);
    cr_expect_eq((uintptr_t)big % 16, 0, "alignment");
    aorm__region_free(&a);
}

Test(region, session_alloc_absurd_sizes, .timeout = 10) {
    struct ev_loop *evl;
    aorm_loop *loop;
    t_loop_open(&evl, &loop);
    aorm_engine *e = t_engine(loop, NULL);
    aorm_session *s = aorm_session_new(e, NULL);
    cr_assert_not_null(s);
    char *ok = aorm_session_alloc(s, 32);
    cr_assert_not_null(ok);
    memset(ok, 1, 32);
    for (size_t i = 0; i < sizeof(absurd) / sizeof(absurd[0]); i++)
        cr_expect_null(aorm_session_alloc(s, absurd[i]), "aorm_session_alloc(%zu) returned memory", absurd[i]);
    char *after = aorm_session_alloc(s, 4096);
    cr_assert_not_null(after);
    memset(after, 2, 4096);
    for (int i = 0; i < 32; i++) cr_assert_eq(ok[i], 1);
    cr_expect_null(aorm_session_alloc(NULL, 8));
    aorm_session_free(s);
    aorm_engine_free(e);
    t_loop_close(&evl, &loop);
}
