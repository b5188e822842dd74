/* eng.h -- the fixture of the workloads that go through aorm's engine
 * (wl_engine.c, wl_session.c, wl_core.c, wl_loaders.c): one engine on a
 * private libev loop, driven one phase at a time.
 *
 * eng_open() makes a new loop and an engine of ctx->pool_size connections
 * (no overflow) and warms the pool, so that connecting never counts in a
 * timed part. A workload then names each phase in g->phase (for messages),
 * queues its work and calls eng_wait(), which runs the loop until the
 * phase's last callback calls eng_phase_done(); a watchdog turns a phase
 * that never finishes into a failure instead of a hang. Any error fails
 * the workload: details go to stderr, a one-line reason to bench_fail(),
 * and nothing more is queued. Callbacks follow one pattern:
 *
 *   if (eng_halted(g)) return;
 *   if (err) { eng_error(g, "what", err); return; }
 *   if (a check fails) { bench_fail(g->out, ...); eng_check_failed(g); return; }
 *   eng_phase_done(g);
 *
 * Must not: keep state between workloads (each opens and closes its own
 * eng), or time anything: the workloads time their measured part. */
#ifndef AORM_BENCH_ENG_H
#define AORM_BENCH_ENG_H

#include <stdint.h>

#include <ev.h>

#include "aorm/aorm.h"
#include "bench.h"

typedef struct eng {
    bench_ctx *ctx;
    bench_out *out;
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    ev_timer watchdog;
    const char *phase;  /* what is running, for messages */
    int phase_done;     /* set by the phase's last callback */
    int failed;         /* an error was recorded: queue nothing more */
    int closing;        /* inside aorm_engine_free: ignore cancellations */
    double t_end;       /* bench_now() at the last timed callback */
} eng;

/* Opens the loop and the engine (pool_size connections, no overflow) and
 * warms the pool. Returns 0, or -1 with the reason recorded; eng_close()
 * must be called either way. */
int eng_open(eng *g, bench_ctx *ctx, bench_out *out);

/* Frees everything eng_open made, cancelling what is still in flight (so
 * whatever the callbacks' user pointers reach must outlive this call).
 * Safe on a partly opened eng. */
void eng_close(eng *g);

/* Runs the loop until the current phase's last callback, a failure or the
 * watchdog. Returns 0 when the phase completed, else -1 (reason recorded). */
int eng_wait(eng *g);

/* Callbacks return at once when this holds: after a failure the rest of
 * the in-flight work is left to aorm_engine_free to cancel. Inline, as
 * every callback of the measured work asks it. */
static inline int eng_halted(const eng *g) { return g->failed || g->closing; }

/* Ends the current phase: eng_wait() returns 0. */
void eng_phase_done(eng *g);

/* Records an asynchronous error: details on stderr, a one-line reason for
 * the error= line, and the loop stopped. */
void eng_error(eng *g, const char *what, const aorm_error *err);

/* Records a failed call (a negative aorm code) and stops the loop.
 * Returns -1. */
int eng_code(eng *g, const char *what, int code);

/* Records a failed check (not an aorm error; the caller has called
 * bench_fail()) and stops the loop. */
void eng_check_failed(eng *g);

/* With --verbose, prints the engine's counters over a timed part (b - a). */
void eng_report_stats(const eng *g, const aorm_engine_stats *a, const aorm_engine_stats *b);

/* ---- one statement, waited for (set-up and checks) ---------------------- */

/* The outcome of eng_run: the first value of the first row (an integer
 * or a float8 column), when there is one. */
typedef struct eng_answer {
    eng *g;
    int has_value;
    int64_t i;
    double d;
} eng_answer;

/* Runs sql in autocommit and waits for it. Returns 0 with *a filled, or
 * -1 with the reason recorded. The phase is named after the statement. */
int eng_run(eng *g, const char *sql, eng_answer *a);

/* Runs sql, a SELECT count(*), which must answer `want`. Returns 0 or -1
 * (reason recorded). */
int eng_check_count(eng *g, const char *sql, int64_t want);

/* Empties bulk_books, before the clock starts. Returns 0 or -1. */
int eng_truncate_bulk(eng *g);

/* The 100,000-row binary COPY into bulk_books through aorm_engine_copy
 * (emptied first, untimed; counted after, untimed), reported as `name`:
 * engine_copy and copy_bulk_insert are this same measurement. */
int eng_run_bulk_copy(bench_ctx *ctx, bench_out *out, const char *name);

/* wl_loaders.c: counts the books and tag links under loaded authors
 * (books -> tags) through AORM_GET_REL. Returns 0, or -1 with the reason
 * recorded when a relationship is not loaded. Shared by wl_cache.c. */
int count_tree(eng *g, aorm_session *s, void *const *authors, size_t n, uint64_t *nbooks, uint64_t *ntags);

#endif /* AORM_BENCH_ENG_H */
