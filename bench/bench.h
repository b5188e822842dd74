/* bench.h -- the aorm-bench harness: workload registry, run context,
 * per-run output, a seeded PRNG and a monotonic clock.
 *
 * A workload is one function that sets itself up (connections, warm-up,
 * table truncation), times only the work being measured, and fills a
 * bench_out. main.c runs the selected workloads and prints one line each:
 *
 *   NAME seconds=S queries=Q ops=N ops_per_s=R [key=value ...]
 *
 * Adding a file of workloads (e.g. wl_session.c):
 *   1. define in it a registry array terminated by a NULL name:
 *        const bench_workload wl_session_list[] = {
 *            {"session_pk_get", "session", run_session_pk_get},
 *            {NULL, NULL, NULL}
 *        };
 *   2. declare it below, next to wl_raw_list;
 *   3. add it to the `lists` array in main.c (its position there is its
 *      place in the default run order);
 *   4. add the file to add_executable() in bench/CMakeLists.txt.
 * Workloads that go through aorm's engine share one fixture (a private
 * loop and engine, a warmed pool, a watchdog per phase): eng.h.
 *
 * Workloads report failures by returning nonzero; bench_fail() records a
 * one-line reason that main.c prints as `NAME error=REASON`. Details (the
 * server's message, SQLSTATE) go to stderr from the workload itself. */
#ifndef AORM_BENCH_H
#define AORM_BENCH_H

#include <stdint.h>

/* ---- PRNG: xorshift64* ------------------------------------------------- */

/* Small, fast and good enough to pick row ids; the point is that a given
 * seed draws the same ids on every run and every machine. */
typedef struct bench_rng {
    uint64_t s; /* never 0 */
} bench_rng;

/* Seeds the generator. Any seed is accepted: it is mixed once
 * (splitmix64) so that small seeds such as 1, 2, 3 do not start in a
 * low-entropy state, and 0 is mapped away (xorshift must not hold 0). */
static inline void bench_rng_seed(bench_rng *r, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    r->s = z ? z : 0x2545F4914F6CDD1Dull;
}

static inline uint64_t bench_rng_next(bench_rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform-enough integer in [lo, hi] (the modulo bias is below 1e-15 for
 * the ranges used here). Requires lo <= hi. */
static inline int64_t bench_rng_range(bench_rng *r, int64_t lo, int64_t hi) {
    uint64_t span = (uint64_t)(hi - lo) + 1u;
    return lo + (int64_t)(bench_rng_next(r) % span);
}

/* Seed shared by the primary-key lookup workloads (raw_pk_*, engine_pk_*),
 * so that libpq and aorm look up the same ids and their ratio compares
 * like with like. Other workloads get a seed derived from their name. */
#define BENCH_SEED_PK 1u

/* ---- context and output ------------------------------------------------- */

#define BENCH_DEFAULT_POOL 20 /* the peer (SQLAlchemy) runs with pool_size=20 */
#define BENCH_MAX_EXTRA 4

typedef struct bench_ctx {
    const char *dsn; /* libpq conninfo, never NULL while a workload runs */
    int pool_size;   /* engine pool size (BENCH_DEFAULT_POOL) */
    int verbose;     /* > 0: workloads may print diagnostics to stderr */
    bench_rng rng;   /* seeded by main.c before every run */
} bench_ctx;

typedef struct bench_kv {
    const char *key; /* a string literal: not copied */
    char value[32];
} bench_kv;

typedef struct bench_out {
    uint64_t ops;     /* units of work done (lookups, rows) */
    uint64_t queries; /* statements sent to the server while timed */
    double seconds;   /* timed part only, measured with bench_now() */
    int nextra;
    bench_kv extra[BENCH_MAX_EXTRA];
    char error[160];  /* set by bench_fail() */
} bench_out;

typedef struct bench_workload {
    const char *name;  /* unique; NULL terminates a registry array */
    const char *group; /* selects several at once on the command line */
    /* Returns 0 with *out filled, or nonzero on failure. */
    int (*run)(bench_ctx *ctx, bench_out *out);
} bench_workload;

/* ---- helpers (main.c) --------------------------------------------------- */

/* Seconds on CLOCK_MONOTONIC, for measuring intervals. */
double bench_now(void);

/* Appends `key=value` to the output line (value formatted like printf,
 * truncated to 31 bytes). Ignored once BENCH_MAX_EXTRA pairs are set. */
void bench_extra(bench_out *out, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records why a workload failed (printf-style, truncated to one line of
 * 159 bytes; the first reason recorded is kept) and returns -1, so that a
 * workload can `return bench_fail(out, "...", ...);`. */
int bench_fail(bench_out *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- registries, one per wl_*.c file ------------------------------------ */

extern const bench_workload wl_raw_list[];    /* wl_raw.c: plain libpq ceilings */
extern const bench_workload wl_engine_list[]; /* wl_engine.c: aorm_engine */

#endif /* AORM_BENCH_H */
