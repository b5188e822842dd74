/* util.h -- internal helpers shared by every aorm module: assertions,
 * allocation wrappers and a growable byte buffer.
 *
 * This is the one private header that crosses module boundaries; it holds
 * no module state and depends on nothing but libc. */
#ifndef AORM_UTIL_H
#define AORM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* aorm__assert: invariant checks, active in debug, test and sanitizer
 * builds. A failed assert names the file, line and expression and aborts.
 * Public misuse never reaches one: it returns AORM_EMISUSE instead. */
#ifdef AORM_DEBUG
#define aorm__assert(e) ((e) ? (void)0 : aorm__assert_fail(#e, __FILE__, __LINE__))
#else
#define aorm__assert(e) ((void)0)
#endif
void aorm__assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

#define AORM__UNUSED(x) ((void)(x))
#define AORM__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define AORM__LIKELY(x) __builtin_expect(!!(x), 1)
#define AORM__UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Growable byte buffer. Owner frees with aorm__buf_free(). Appends return 0
 * or -1 on out of memory (the buffer is then unchanged). */
typedef struct aorm__buf {
    char *data;
    size_t len;
    size_t cap;
} aorm__buf;

void aorm__buf_free(aorm__buf *b);
int aorm__buf_reserve(aorm__buf *b, size_t extra);
int aorm__buf_append(aorm__buf *b, const void *p, size_t n);
static inline int aorm__buf_putc(aorm__buf *b, char c) {
    if (AORM__UNLIKELY(b->len == b->cap) && aorm__buf_reserve(b, 1) < 0) return -1;
    b->data[b->len++] = c;
    return 0;
}

/* Big-endian (network order) stores and loads for the binary protocol. */
static inline void aorm__put_be16(char *p, uint16_t v) {
    p[0] = (char)(v >> 8); p[1] = (char)v;
}
static inline void aorm__put_be32(char *p, uint32_t v) {
    p[0] = (char)(v >> 24); p[1] = (char)(v >> 16); p[2] = (char)(v >> 8); p[3] = (char)v;
}
static inline void aorm__put_be64(char *p, uint64_t v) {
    aorm__put_be32(p, (uint32_t)(v >> 32)); aorm__put_be32(p + 4, (uint32_t)v);
}
static inline uint16_t aorm__get_be16(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (uint16_t)((u[0] << 8) | u[1]);
}
static inline uint32_t aorm__get_be32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}
static inline uint64_t aorm__get_be64(const char *p) {
    return ((uint64_t)aorm__get_be32(p) << 32) | aorm__get_be32(p + 4);
}

/* strdup that returns NULL for NULL. */
char *aorm__strdup(const char *s);

/* Appends `"ident"` with embedded double quotes doubled: how every
 * identifier reaches SQL text. Returns -1 on out of memory, or when ident
 * is NULL/empty or holds a byte PostgreSQL cannot take in an identifier
 * (none today besides NUL, which cannot occur in a C string). */
int aorm__quote_ident(aorm__buf *b, const char *ident);

#endif /* AORM_UTIL_H */
