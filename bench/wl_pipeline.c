/* wl_pipeline.c -- a session's round trips: what one loop turn queues goes
 * out as one pipeline.
 *
 *   session_gets_same_turn  2,000 "requests" (16 at a time), each a new
 *                           session that queues 20 aorm_session_get of
 *                           random authors at once, as a TechEmpower
 *                           /queries handler would; measured in rounds
 *                           interleaved with the same requests made of
 *                           one aorm_session_get_many of the 20 keys (its
 *                           ceiling), best round of each; extra
 *                           `vs_get_many` is the ratio of their rates
 *   tpcb_session_1          pgbench's TPC-B-like transaction (scale 10)
 *   tpcb_session_20         through sessions and Core, 1 or 20 clients
 *                           (one session each): the five statements and
 *                           the COMMIT queued in one turn, for 5 s (env
 *                           AORM_BENCH_TPCB_SECONDS), as pgbench -T; extra
 *                           `rt_per_tx` is the engine's round trips per
 *                           transaction. bench/tpcb runs them next to
 *                           `pgbench -M prepared` and pgbench's pipelined
 *                           script and prints the ratios. The five
 *                           statements are compiled once per run
 *                           (aorm_stmt_prepare, named placeholders) and
 *                           executed with each transaction's values.
 *   tpcb_session_built_1    the same, with the statements built and
 *   tpcb_session_built_20   compiled again for every transaction.
 *
 * The TPC-B tables are pgbench's own (`pgbench -i -s 10`, which bench/tpcb
 * runs): the workloads fail when they are missing. The history row's
 * mtime is left NULL (pgbench writes CURRENT_TIMESTAMP).
 *
 * Timing: from the first call to the last callback; sessions are made and
 * freed inside it (one per request, one per client). Must not: share
 * state between workloads, or time anything but the measured work. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aorm/aorm.h"
#include "bench.h"
#include "eng.h"
#include "models.h"

/* ---- session_gets_same_turn ------------------------------------------------ */

#define GST_AUTHORS 10000
#define GST_REQUESTS 2000
#define GST_PER_REQUEST 20
#define GST_INFLIGHT 16
#define GST_ROUNDS 5

typedef struct gst_run gst_run;

typedef struct gst_req {
    gst_run *run;
    aorm_session *s;
    int64_t ids[GST_PER_REQUEST];
    int got;
} gst_req;

struct gst_run {
    eng *g;
    bench_rng *rng;
    bool many;       /* get_many instead of 20 gets */
    int started, done;
    int64_t born_sum;
    gst_req reqs[GST_INFLIGHT];
};

static int gst_issue(gst_req *r);

static void gst_finish_one(gst_req *r) {
    gst_run *p = r->run;
    aorm_session_free(r->s); /* from inside its own callback: freed when it returns */
    r->s = NULL;
    if (++p->done == GST_REQUESTS) {
        p->g->t_end = bench_now();
        eng_phase_done(p->g);
        return;
    }
    if (p->started < GST_REQUESTS) gst_issue(r);
}

static bool gst_check(gst_req *r, const author *a, int64_t want) {
    if (!a || a->id != want || !a->name) {
        bench_fail(r->run->g->out, "get author %lld: %s", (long long)want, a ? "wrong object" : "no object");
        eng_check_failed(r->run->g);
        return false;
    }
    if (a->born.valid) r->run->born_sum += a->born.value;
    return true;
}

static void gst_got(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    gst_req *r = user;
    eng *g = r->run->g;
    (void)s;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_get", err);
        return;
    }
    if (!gst_check(r, obj, r->ids[r->got])) return;
    if (++r->got == GST_PER_REQUEST) gst_finish_one(r);
}

static void gst_got_many(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    gst_req *r = user;
    eng *g = r->run->g;
    (void)s;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "aorm_session_get_many", err);
        return;
    }
    for (int i = 0; i < GST_PER_REQUEST; i++)
        if (!gst_check(r, objs->items[i], r->ids[i])) return;
    gst_finish_one(r);
}

static int gst_issue(gst_req *r) {
    gst_run *p = r->run;
    p->started++;
    r->got = 0;
    r->s = aorm_session_new(p->g->e, NULL);
    if (!r->s) return bench_fail(p->g->out, "aorm_session_new failed");
    for (int i = 0; i < GST_PER_REQUEST; i++) r->ids[i] = bench_rng_range(p->rng, 1, GST_AUTHORS);
    if (p->many) {
        author keys[GST_PER_REQUEST];
        const void *kp[GST_PER_REQUEST];
        for (int i = 0; i < GST_PER_REQUEST; i++) {
            keys[i] = (author){.id = r->ids[i]};
            kp[i] = &keys[i];
        }
        int rc = aorm_session_get_many(r->s, &author_model, kp, GST_PER_REQUEST, NULL, gst_got_many, r);
        return rc != 0 ? eng_code(p->g, "aorm_session_get_many", rc) : 0;
    }
    for (int i = 0; i < GST_PER_REQUEST; i++) {
        int rc = aorm_session_get(r->s, &author_model, &(author){.id = r->ids[i]}, NULL, gst_got, r);
        if (rc != 0) return eng_code(p->g, "aorm_session_get", rc);
    }
    return 0;
}

/* One round of GST_REQUESTS requests; *secs and *stmts of it. */
static int gst_round(eng *g, bench_ctx *ctx, bool many, double *secs, uint64_t *stmts) {
    gst_run *p = calloc(1, sizeof(*p));
    if (!p) return bench_fail(g->out, "out of memory");
    *p = (gst_run){.g = g, .rng = &ctx->rng, .many = many};
    g->phase = many ? "get_many round" : "gets round";
    g->phase_done = 0;
    aorm_engine_stats st0, st1;
    aorm_engine_stats_get(g->e, &st0);
    double t0 = bench_now();
    int rc = 0;
    for (int k = 0; rc == 0 && k < GST_INFLIGHT; k++) {
        p->reqs[k].run = p;
        rc = gst_issue(&p->reqs[k]);
    }
    if (rc == 0) rc = eng_wait(g);
    aorm_engine_stats_get(g->e, &st1);
    *secs = g->t_end - t0;
    *stmts = st1.statements - st0.statements;
    for (int k = 0; k < GST_INFLIGHT; k++) aorm_session_free(p->reqs[k].s);
    free(p);
    return rc;
}

static int run_session_gets_same_turn(bench_ctx *ctx, bench_out *out) {
    eng g;
    int rc = eng_open(&g, ctx, out);
    double best_gets = 0, best_many = 0;
    uint64_t stmts_gets = 0, stmts_many = 0;
    for (int round = 0; rc == 0 && round < GST_ROUNDS; round++) {
        double s1, s2;
        uint64_t q1, q2;
        rc = gst_round(&g, ctx, false, &s1, &q1);
        if (rc == 0) rc = gst_round(&g, ctx, true, &s2, &q2);
        if (rc != 0) break;
        if (round == 0 || s1 < best_gets) best_gets = s1, stmts_gets = q1;
        if (round == 0 || s2 < best_many) best_many = s2, stmts_many = q2;
    }
    if (rc == 0) {
        out->seconds = best_gets;
        out->ops = (uint64_t)GST_REQUESTS * GST_PER_REQUEST;
        out->queries = stmts_gets;
        bench_extra(out, "get_many_ops_per_s", "%.0f", (double)out->ops / best_many);
        bench_extra(out, "vs_get_many", "%.2f", best_many / best_gets);
        if (stmts_gets != GST_REQUESTS || stmts_many != GST_REQUESTS)
            rc = bench_fail(out, "%llu / %llu statements for %d requests", (unsigned long long)stmts_gets,
                            (unsigned long long)stmts_many, GST_REQUESTS);
    }
    eng_close(&g);
    return rc;
}

/* ---- tpcb_session ------------------------------------------------------------ */

#define TPCB_SCALE 10
#define TPCB_SECONDS 5.0 /* how long a run lasts, as pgbench -T (env AORM_BENCH_TPCB_SECONDS) */

typedef struct pgb_account {
    int32_t aid;
    int32_t abalance;
} pgb_account;
typedef struct pgb_teller {
    int32_t tid;
    int32_t tbalance;
} pgb_teller;
typedef struct pgb_branch {
    int32_t bid;
    int32_t bbalance;
} pgb_branch;
typedef struct pgb_history {
    int32_t tid, bid, aid, delta;
} pgb_history;

static const aorm_column pgb_account_columns[] = {
    AORM_COLUMN(pgb_account, aid, AORM_INT4, AORM_PK),
    AORM_COLUMN(pgb_account, abalance, AORM_INT4, 0),
};
static const aorm_model pgb_account_model = {AORM_MODEL_OF(pgb_account, "pgbench_accounts"),
                                             AORM_COLUMNS(pgb_account_columns)};
static const aorm_column pgb_teller_columns[] = {
    AORM_COLUMN(pgb_teller, tid, AORM_INT4, AORM_PK),
    AORM_COLUMN(pgb_teller, tbalance, AORM_INT4, 0),
};
static const aorm_model pgb_teller_model = {AORM_MODEL_OF(pgb_teller, "pgbench_tellers"),
                                            AORM_COLUMNS(pgb_teller_columns)};
static const aorm_column pgb_branch_columns[] = {
    AORM_COLUMN(pgb_branch, bid, AORM_INT4, AORM_PK),
    AORM_COLUMN(pgb_branch, bbalance, AORM_INT4, 0),
};
static const aorm_model pgb_branch_model = {AORM_MODEL_OF(pgb_branch, "pgbench_branches"),
                                            AORM_COLUMNS(pgb_branch_columns)};
static const aorm_column pgb_history_columns[] = {
    AORM_COLUMN(pgb_history, tid, AORM_INT4, 0),
    AORM_COLUMN(pgb_history, bid, AORM_INT4, 0),
    AORM_COLUMN(pgb_history, aid, AORM_INT4, 0),
    AORM_COLUMN(pgb_history, delta, AORM_INT4, 0),
};
static const aorm_model pgb_history_model = {AORM_MODEL_OF(pgb_history, "pgbench_history"),
                                             AORM_COLUMNS(pgb_history_columns)};

typedef struct tpcb_run tpcb_run;

typedef struct tpcb_client {
    tpcb_run *run;
    aorm_session *s;
    int answers; /* of the transaction in flight */
} tpcb_client;

struct tpcb_run {
    eng *g;
    bench_rng *rng;
    double until;     /* no transaction starts after this (bench_now) */
    int clients;
    int started, done, idle;
    int64_t balance_sum;
    aorm_prepared *prep[5]; /* the five statements compiled once (NULL: rebuilt per transaction) */
};

/* The five statements with named placeholders, compiled once per run
 * (aorm_stmt_prepare) and shared by the clients: a session execution
 * copies the values bound at that moment. Returns 0 or -1. */
static int tpcb_prepare(tpcb_run *p) {
    aorm_stmt *q[5];
    q[0] = aorm_update(&pgb_account_model);
    aorm_set(q[0], AORM_COL(pgb_account, abalance),
             aorm_add(AORM_COL(pgb_account, abalance), aorm_param(AORM_INT4, "delta")));
    aorm_where(q[0], aorm_eq(AORM_COL(pgb_account, aid), aorm_param(AORM_INT4, "aid")));
    q[1] = aorm_select_exprs((const aorm_expr *[]){AORM_COL(pgb_account, abalance)}, 1);
    aorm_from(q[1], &pgb_account_model);
    aorm_where(q[1], aorm_eq(AORM_COL(pgb_account, aid), aorm_param(AORM_INT4, "aid")));
    q[2] = aorm_update(&pgb_teller_model);
    aorm_set(q[2], AORM_COL(pgb_teller, tbalance),
             aorm_add(AORM_COL(pgb_teller, tbalance), aorm_param(AORM_INT4, "delta")));
    aorm_where(q[2], aorm_eq(AORM_COL(pgb_teller, tid), aorm_param(AORM_INT4, "tid")));
    q[3] = aorm_update(&pgb_branch_model);
    aorm_set(q[3], AORM_COL(pgb_branch, bbalance),
             aorm_add(AORM_COL(pgb_branch, bbalance), aorm_param(AORM_INT4, "delta")));
    aorm_where(q[3], aorm_eq(AORM_COL(pgb_branch, bid), aorm_param(AORM_INT4, "bid")));
    q[4] = aorm_insert(&pgb_history_model);
    aorm_set(q[4], AORM_COL(pgb_history, tid), aorm_param(AORM_INT4, "tid"));
    aorm_set(q[4], AORM_COL(pgb_history, bid), aorm_param(AORM_INT4, "bid"));
    aorm_set(q[4], AORM_COL(pgb_history, aid), aorm_param(AORM_INT4, "aid"));
    aorm_set(q[4], AORM_COL(pgb_history, delta), aorm_param(AORM_INT4, "delta"));
    int rc = 0;
    for (int i = 0; i < 5; i++) {
        p->prep[i] = rc == 0 ? aorm_stmt_prepare(q[i]) : NULL;
        if (!p->prep[i] && rc == 0) rc = bench_fail(p->g->out, "tpcb: prepare: %s", aorm_stmt_errmsg(q[i]));
        aorm_stmt_free(q[i]);
    }
    return rc;
}

static int tpcb_issue(tpcb_client *c);

static void tpcb_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) {
    tpcb_client *c = user;
    eng *g = c->run->g;
    (void)s;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "tpcb statement", err);
        return;
    }
    if (c->answers++ == 1) { /* the SELECT abalance */
        int32_t v;
        if (aorm_result_nrows(res) != 1 || aorm_result_int32(res, 0, 0, &v) != 0) {
            bench_fail(g->out, "tpcb: the account's balance was not read");
            eng_check_failed(g);
            return;
        }
        c->run->balance_sum += v;
    }
}

static void tpcb_committed(aorm_session *s, const aorm_error *err, void *user) {
    tpcb_client *c = user;
    tpcb_run *p = c->run;
    eng *g = p->g;
    (void)s;
    if (eng_halted(g)) return;
    if (err) {
        eng_error(g, "tpcb COMMIT", err);
        return;
    }
    if (c->answers != 5) {
        bench_fail(g->out, "tpcb: %d answers before the COMMIT's", c->answers);
        eng_check_failed(g);
        return;
    }
    p->done++;
    double now = bench_now();
    if (now < p->until) {
        tpcb_issue(c);
        return;
    }
    if (++p->idle == p->clients) { /* every client has finished its last transaction */
        g->t_end = now;
        eng_phase_done(g);
    }
}

/* One TPC-B-like transaction queued in one turn: five Core statements and
 * the COMMIT. Returns 0 or -1 (reason recorded). */
static int tpcb_issue(tpcb_client *c) {
    tpcb_run *p = c->run;
    eng *g = p->g;
    p->started++;
    c->answers = 0;
    int32_t aid = (int32_t)bench_rng_range(p->rng, 1, 100000 * TPCB_SCALE);
    int32_t bid = (int32_t)bench_rng_range(p->rng, 1, TPCB_SCALE);
    int32_t tid = (int32_t)bench_rng_range(p->rng, 1, 10 * TPCB_SCALE);
    int32_t delta = (int32_t)bench_rng_range(p->rng, -5000, 5000);

    if (p->prep[0]) {
        static const char *const names[4] = {"aid", "bid", "tid", "delta"};
        const int32_t vals[4] = {aid, bid, tid, delta};
        for (int i = 0; i < 5; i++) {
            for (int k = 0; k < 4; k++) {
                int b = aorm_prepared_bind_int4(p->prep[i], names[k], vals[k]);
                if (b != 0 && b != AORM_EMISUSE) return eng_code(g, "aorm_prepared_bind_int4", b);
            }
            int rc = aorm_session_execute_prepared(c->s, p->prep[i], tpcb_rows, c);
            if (rc != 0) return eng_code(g, "aorm_session_execute_prepared", rc);
        }
        int rc = aorm_session_commit(c->s, tpcb_committed, c);
        return rc != 0 ? eng_code(g, "aorm_session_commit", rc) : 0;
    }

    aorm_stmt *q[5];
    q[0] = aorm_update(&pgb_account_model);
    aorm_set(q[0], AORM_COL(pgb_account, abalance), aorm_add(AORM_COL(pgb_account, abalance), aorm_int4(delta)));
    aorm_where(q[0], aorm_eq(AORM_COL(pgb_account, aid), aorm_int4(aid)));
    q[1] = aorm_select_exprs((const aorm_expr *[]){AORM_COL(pgb_account, abalance)}, 1);
    aorm_from(q[1], &pgb_account_model);
    aorm_where(q[1], aorm_eq(AORM_COL(pgb_account, aid), aorm_int4(aid)));
    q[2] = aorm_update(&pgb_teller_model);
    aorm_set(q[2], AORM_COL(pgb_teller, tbalance), aorm_add(AORM_COL(pgb_teller, tbalance), aorm_int4(delta)));
    aorm_where(q[2], aorm_eq(AORM_COL(pgb_teller, tid), aorm_int4(tid)));
    q[3] = aorm_update(&pgb_branch_model);
    aorm_set(q[3], AORM_COL(pgb_branch, bbalance), aorm_add(AORM_COL(pgb_branch, bbalance), aorm_int4(delta)));
    aorm_where(q[3], aorm_eq(AORM_COL(pgb_branch, bid), aorm_int4(bid)));
    q[4] = aorm_insert(&pgb_history_model);
    pgb_history h = {.tid = tid, .bid = bid, .aid = aid, .delta = delta};
    aorm_insert_object(q[4], &h);
    for (int i = 0; i < 5; i++) {
        int rc = aorm_session_execute(c->s, q[i], tpcb_rows, c);
        if (rc != 0) {
            for (int k = i + 1; k < 5; k++) aorm_stmt_free(q[k]);
            return eng_code(g, "aorm_session_execute", rc);
        }
    }
    int rc = aorm_session_commit(c->s, tpcb_committed, c);
    return rc != 0 ? eng_code(g, "aorm_session_commit", rc) : 0;
}

static int run_tpcb(bench_ctx *ctx, bench_out *out, int clients, bool prepared) {
    const char *env_secs = getenv("AORM_BENCH_TPCB_SECONDS");
    double secs = env_secs && atof(env_secs) > 0 ? atof(env_secs) : TPCB_SECONDS;
    eng g;
    int rc = eng_open(&g, ctx, out);
    eng_answer a = {0};
    if (rc == 0 && (eng_run(&g, "SELECT count(*) FROM pgbench_branches", &a) != 0 || a.i != TPCB_SCALE))
        rc = bench_fail(out, "no pgbench tables at scale %d: run `pgbench -i -s %d` (bench/tpcb does)", TPCB_SCALE,
                        TPCB_SCALE);
    tpcb_client *cl = calloc((size_t)clients, sizeof(*cl));
    tpcb_run p = {.g = &g, .rng = &ctx->rng, .clients = clients};
    if (rc == 0 && !cl) rc = bench_fail(out, "out of memory");
    if (rc == 0 && prepared) rc = tpcb_prepare(&p);
    if (rc == 0) {
        aorm_engine_stats st0, st1;
        g.phase = "tpcb";
        g.phase_done = 0;
        aorm_engine_stats_get(g.e, &st0);
        double t0 = bench_now();
        p.until = t0 + secs;
        for (int k = 0; rc == 0 && k < clients; k++) {
            cl[k] = (tpcb_client){.run = &p, .s = aorm_session_new(g.e, NULL)};
            if (!cl[k].s) rc = bench_fail(out, "aorm_session_new failed");
        }
        for (int k = 0; rc == 0 && k < clients; k++) rc = tpcb_issue(&cl[k]);
        if (rc == 0) rc = eng_wait(&g);
        aorm_engine_stats_get(g.e, &st1);
        out->seconds = g.t_end - t0;
        out->ops = (uint64_t)p.done;
        out->queries = st1.statements - st0.statements;
        double n = p.done ? (double)p.done : 1.0;
        bench_extra(out, "clients", "%d", clients);
        bench_extra(out, "statements", "%s", prepared ? "prepared once" : "built per transaction");
        bench_extra(out, "rt_per_tx", "%.3f", (double)(st1.round_trips - st0.round_trips) / n);
        bench_extra(out, "stmts_per_tx", "%.3f", (double)out->queries / n);
        eng_report_stats(&g, &st0, &st1);
    }
    for (int k = 0; cl && k < clients; k++) aorm_session_free(cl[k].s);
    free(cl);
    for (int i = 0; i < 5; i++) aorm_prepared_free(p.prep[i]);
    eng_close(&g);
    return rc;
}

static int run_tpcb_session_1(bench_ctx *ctx, bench_out *out) { return run_tpcb(ctx, out, 1, true); }
static int run_tpcb_session_20(bench_ctx *ctx, bench_out *out) { return run_tpcb(ctx, out, 20, true); }
static int run_tpcb_session_built_1(bench_ctx *ctx, bench_out *out) { return run_tpcb(ctx, out, 1, false); }
static int run_tpcb_session_built_20(bench_ctx *ctx, bench_out *out) { return run_tpcb(ctx, out, 20, false); }

const bench_workload wl_pipeline_list[] = {
    {"session_gets_same_turn", "pipeline", run_session_gets_same_turn},
    {"tpcb_session_1", "tpcb", run_tpcb_session_1},
    {"tpcb_session_20", "tpcb", run_tpcb_session_20},
    {"tpcb_session_built_1", "tpcb", run_tpcb_session_built_1},
    {"tpcb_session_built_20", "tpcb", run_tpcb_session_built_20},
    {NULL, NULL, NULL}
};
