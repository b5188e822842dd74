/* util.c -- assertion failure reporting and the growable byte buffer. */
#include "util/util.h"

#include <stdio.h>

void aorm__assert_fail(const char *expr, const char *file, int line) {
    /* The one place aorm writes to stderr by itself: a broken invariant is
     * a bug in aorm, and the process is about to abort. */
    fprintf(stderr, "aorm: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

void aorm__buf_free(aorm__buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int aorm__buf_reserve(aorm__buf *b, size_t extra) {
    if (b->cap - b->len >= extra) return 0;
    size_t need = b->len + extra;
    if (need < b->len) return -1; /* overflow */
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) { cap = need; break; }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int aorm__buf_append(aorm__buf *b, const void *p, size_t n) {
    if (aorm__buf_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

char *aorm__strdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

int aorm__quote_ident(aorm__buf *b, const char *ident) {
    if (!ident || !*ident) return -1;
    size_t n = strlen(ident);
    if (!memchr(ident, '"', n)) { /* the common case: one append */
        if (aorm__buf_reserve(b, n + 2) < 0) return -1;
        b->data[b->len++] = '"';
        memcpy(b->data + b->len, ident, n);
        b->len += n;
        b->data[b->len++] = '"';
        return 0;
    }
    if (aorm__buf_putc(b, '"') < 0) return -1;
    for (const char *p = ident; *p; p++) {
        if (*p == '"' && aorm__buf_putc(b, '"') < 0) return -1;
        if (aorm__buf_putc(b, *p) < 0) return -1;
    }
    return aorm__buf_putc(b, '"');
}
