/* wl_engine.c -- the raw workloads again, through aorm's engine.
 *
 * Same SQL, same ids (BENCH_SEED_PK), same rows and the same checks as
 * wl_raw.c, so that scripts/bench-ratios can divide one by the other:
 *
 *   engine_pk_seq         5,000 lookups, the next queued from the previous
 *                         one's callback (vs raw_pk_seq)
 *   engine_pk_concurrent  50,000 lookups, 64 in flight (vs raw_pk_pipelined)
 *   engine_copy           aorm_engine_copy of 100,000 rows (vs raw_copy)
 *
 * Each workload gets a private libev loop and engine (eng.h: the pool is
 * warmed first so that connecting never counts, a watchdog per phase, any
 * error fails the workload). Set-up is not timed: the COPY's TRUNCATE runs
 * before the clock starts. The statement count is the engine's own
 * (aorm_engine_stats_get), as a delta over the timed part. Must not: share
 * state between workloads, or time anything but the measured work. */
#include <stdio.h>
#include <stdlib.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"

#define PK_SQL "SELECT id, name, born FROM authors WHERE id = $1"
#define PK_AUTHORS 10000
#define PK_SEQ_N 5000
#define PK_CONC_N 50000
#define PK_CONC_INFLIGHT 64


/* ---- primary-key lookups ------------------------------------------------ */

typedef struct eng_author {
    int64_t id;
    const char *name; /* borrowed from the result */
    size_t name_len;
    int32_t born;
    int born_null;
} eng_author;

typedef struct pk_run pk_run;

/* One lookup in flight; reused for the next lookup when it completes. */
typedef struct pk_slot {
    pk_run *run;
    int64_t want;
} pk_slot;

struct pk_run {
    eng *g;
    int total;
    int issued;
    int done;
    aorm_params params; /* reused: the engine copies it at submission */
    aorm_exec_options xo;
    int64_t born_sum;   /* keeps the decoded values observable */
};

/* Decodes the single row of a lookup into *a and checks it is author
 * `want`. Returns 0, or -1 with the reason recorded (the caller then
 * fails the phase). */
static int pk_decode(eng *g, const aorm_result *res, int64_t want, eng_author *a) {
    int n = aorm_result_nrows(res);
    if (n != 1) {
        bench_fail(g->out, "lookup %lld: %d rows", (long long)want, n);
        return -1;
    }
    int rc = aorm_result_int64(res, 0, 0, &a->id);
    if (rc == 0) rc = aorm_result_text(res, 0, 1, &a->name, &a->name_len);
    int isnull = rc == 0 ? aorm_result_is_null(res, 0, 2) : 0;
    if (isnull < 0) rc = isnull;
    a->born_null = isnull == 1;
    a->born = 0;
    if (rc == 0 && !a->born_null) rc = aorm_result_int32(res, 0, 2, &a->born);
    if (rc != 0) {
        eng_code(g, "decoding a row", rc);
        return -1;
    }
    if (a->id != want || a->name_len == 0) {
        bench_fail(g->out, "lookup %lld: got author %lld", (long long)want, (long long)a->id);
        return -1;
    }
    return 0;
}

static void pk_done(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);

/* Draws the next id and queues its lookup on slot s. Returns 0 or -1. */
static int pk_issue(pk_run *p, pk_slot *s) {
    s->want = bench_rng_range(&p->g->ctx->rng, 1, PK_AUTHORS);
    aorm_params_reset(&p->params);
    aorm_params_int8(&p->params, s->want);
    int rc = aorm_engine_execute(p->g->e, PK_SQL, &p->params, &p->xo, pk_done, s);
    if (rc != 0) return eng_code(p->g, "aorm_engine_execute", rc);
    p->issued++;
    return 0;
}

static void pk_done(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    pk_slot *s = user;
    pk_run *p = s->run;
    eng *g = p->g;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "lookup", err);
        return;
    }
    eng_author a;
    if (pk_decode(g, res, s->want, &a) != 0) {
        eng_check_failed(g);
        return;
    }
    p->born_sum += a.born;
    p->done++;
    if (p->issued < p->total) {
        pk_issue(p, s);
    } else if (p->done == p->total) {
        g->t_end = bench_now();
        eng_phase_done(g);
    }
}

/* `total` lookups with at most `inflight` outstanding: each callback
 * queues the next lookup on its slot until all are issued. */
static int run_pk(bench_ctx *ctx, bench_out *out, const char *name, int total, int inflight) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    pk_run p = {.g = &g, .total = total, .xo = {.flags = AORM_EXEC_READONLY}};
    pk_slot *slots = calloc((size_t)inflight, sizeof(*slots));
    aorm_params_init(&p.params);
    if (rc == 0 && !slots) rc = bench_fail(out, "out of memory");
    bench_rng_seed(&ctx->rng, BENCH_SEED_PK);

    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = name;
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        for (int k = 0; rc == 0 && k < inflight && k < total; k++) {
            slots[k].run = &p;
            rc = pk_issue(&p, &slots[k]);
        }
        if (rc == 0) rc = eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = (uint64_t)total;
        out->queries = st1.statements - st0.statements;
        eng_report_stats(&g, &st0, &st1);
    }
    /* Cancels whatever is still in flight after a failure; slots and p
     * must outlive this. */
    eng_close(&g);
    aorm_params_free(&p.params);
    free(slots);
    return rc;
}

static int run_engine_pk_seq(bench_ctx *ctx, bench_out *out) {
    return run_pk(ctx, out, "engine_pk_seq", PK_SEQ_N, 1);
}

static int run_engine_pk_concurrent(bench_ctx *ctx, bench_out *out) {
    bench_extra(out, "inflight", "%d", PK_CONC_INFLIGHT);
    return run_pk(ctx, out, "engine_pk_concurrent", PK_CONC_N, PK_CONC_INFLIGHT);
}

/* ---- COPY --------------------------------------------------------------- */

static int run_engine_copy(bench_ctx *ctx, bench_out *out) { return eng_run_bulk_copy(ctx, out, "engine_copy"); }

const bench_workload wl_engine_list[] = {
    {"engine_pk_seq", "engine", run_engine_pk_seq},
    {"engine_pk_concurrent", "engine", run_engine_pk_concurrent},
    {"engine_copy", "engine", run_engine_copy},
    {NULL, NULL, NULL}
};
