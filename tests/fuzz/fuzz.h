/* fuzz.h -- what the libFuzzer targets of tests/fuzz share: a check that
 * turns a broken invariant into a crash libFuzzer records (with the
 * input that caused it), and a reader that takes bytes off the front of
 * the fuzz input deterministically (an exhausted input reads as zeros, so
 * every input, however short, is a complete program). */
#ifndef AORM_FUZZ_H
#define AORM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The entry point libFuzzer calls with each input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant: on failure print what broke and abort (libFuzzer saves
 * the input as a crash artifact). */
#define FUZZ_CHECK(cond, ...)                                                       \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "fuzz check failed: %s (%s:%d): ", #cond, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                    \
            abort();                                                                \
        }                                                                           \
    } while (0)

typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline size_t fuzz_left(const fuzz_in *in) { return in->n; }

static inline uint8_t fuzz_u8(fuzz_in *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(fuzz_in *in) {
    uint16_t hi = fuzz_u8(in);
    return (uint16_t)(hi << 8 | fuzz_u8(in));
}

static inline uint32_t fuzz_u32(fuzz_in *in) {
    uint32_t hi = fuzz_u16(in);
    return hi << 16 | fuzz_u16(in);
}

static inline uint64_t fuzz_u64(fuzz_in *in) {
    uint64_t hi = fuzz_u32(in);
    return hi << 32 | fuzz_u32(in);
}

/* Up to max bytes (fewer when the input ends): *len gets the count, the
 * return value points into the input. */
static inline const uint8_t *fuzz_bytes(fuzz_in *in, size_t max, size_t *len) {
    size_t n = max < in->n ? max : in->n;
    const uint8_t *p = in->p;
    in->p += n;
    in->n -= n;
    *len = n;
    return p;
}

#endif /* AORM_FUZZ_H */
