/* test_fault_matrix.c -- the fault matrix: what a caller sees and what the
 * pool does when the server or the network fails in each way the engine
 * must survive, against the sandbox PostgreSQL.
 *
 * Server-side faults: backends terminated (pg_terminate_backend) mid-query,
 * mid-transaction, mid-COMMIT, mid-COPY and mid-pipeline; a fast restart of
 * the server with 100 operations in flight. Network faults come from the
 * fault proxy (faultproxy.h) between the engine and the server: a server
 * that hangs at connect or mid-statement, a stream cut mid-message, resets
 * (of a busy connection, and of idle ones the engine only learns about when
 * it writes to them), a closed port, a server that accepts and closes. Then
 * pool exhaustion with 1,000 waiters and refused credentials.
 *
 * Every scenario asserts:
 *   - each callback ran exactly once, with the right code, in submission
 *     order where the contract orders them (one connection, one session);
 *   - the pool healed within a bound (a statement after the fault succeeds;
 *     open / idle / held / waiting settle);
 *   - other callers were unaffected (bystanders: statements of other
 *     callers or another engine running through the fault, all fine);
 *   - the loop never stalled: a 10 ms heartbeat timer runs beside the
 *     engine and no gap between two beats may reach 100 ms (blocking steps
 *     of the test itself -- a side connection, a server restart -- run
 *     outside the loop and are not counted);
 *   - no leak: in sanitizer builds LeakSanitizer runs at the end of each
 *     scenario (Criterion ignores its workers' exit status, so a report at
 *     exit would fail nothing).
 *
 * Each scenario that passes writes one row of the fault matrix ("scenario |
 * what the caller sees | what the pool does", built from what it observed)
 * to the file named by AORM_FAULT_MATRIX; scripts/fault-matrix turns the
 * rows into docs/fault-matrix.md and the fault_matrix_doc check compares
 * them.
 *
 * The binary runs with --jobs=1 and never beside another suite (SERIAL):
 * it restarts the server and terminates backends. */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/hooks.h>

#include "faultproxy.h"
#include "models.h"
#include "support.h"

/* Criterion ignores how its worker processes exit, so a leak report at exit
 * would fail nothing: sanitizer builds check for leaks at the end of each
 * scenario instead, while the process still runs. */
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#define FM_LEAK_CHECK 1
#endif

/* ============================================================================
 * Harness
 * ========================================================================== */

#define MAX_GAP 0.100   /* the longest the loop may go without a heartbeat */
#define HEAL_S 5.0      /* a statement after a fault succeeds within this */


/* ---- the heartbeat ---------------------------------------------------------- */

typedef struct heartbeat {
    ev_timer w;
    double last;     /* t_mono() of the previous beat, or of the loop's (re)entry */
    double max_gap;
    double max_at;   /* t_mono() when the longest gap ended */
    long beats;
    int paused;      /* the test itself blocks inside a callback */
} heartbeat;

static void on_beat(struct ev_loop *evl, ev_timer *w, int revents) {
    heartbeat *hb = (heartbeat *)w;
    double now = t_mono();
    if (!hb->paused && hb->last > 0 && now - hb->last > hb->max_gap) {
        hb->max_gap = now - hb->last;
        hb->max_at = now;
    }
    hb->last = now;
    hb->beats++;
}

/* ---- the fixture -------------------------------------------------------------- */

typedef struct fx {
    struct ev_loop *evl;
    aorm_loop *l;
    aorm_engine *e;
    char app[64];
    char *conninfo;
    fproxy *proxy;
    heartbeat hb;
    double t0;      /* t_mono() at the start */
} fx;

static fx *g_fx; /* the heartbeat of the running scenario, for callbacks that block */

static void hb_pause(void) {
    if (g_fx) g_fx->hb.paused++;
}

static void hb_resume(void) {
    if (!g_fx) return;
    g_fx->hb.paused--;
    g_fx->hb.last = t_mono();
}

/* A loop with the heartbeat; the engine comes from fx_engine(). */
static void fx_init(fx *f, const char *label) {
    memset(f, 0, sizeof(*f));
    snprintf(f->app, sizeof(f->app), "aorm_fm_%s", label);
    t_loop_open(&f->evl, &f->l);
    ev_timer_init(&f->hb.w, on_beat, 0.010, 0.010);
    ev_timer_start(f->evl, &f->hb.w);
    f->t0 = t_mono();
    g_fx = f;
}

/* A proxy in front of the sandbox server. */
static void fx_proxy(fx *f) {
    f->proxy = fp_start_dsn(t_dsn());
    cr_assert_not_null(f->proxy, "the fault proxy did not start: %s", strerror(errno));
}

/* Options with this scenario's conninfo: the sandbox's (through the proxy
 * when there is one) with its application_name, then `extra`. */
static void fx_options(fx *f, aorm_engine_options *o, const char *extra) {
    char tail[512];
    snprintf(tail, sizeof(tail), "application_name=%s %s", f->app, extra ? extra : "");
    free(f->conninfo);
    if (f->proxy) {
        f->conninfo = fp_conninfo(f->proxy, t_dsn(), tail);
        cr_assert_not_null(f->conninfo, "the sandbox DSN does not parse: %s", t_dsn());
    } else {
        size_t n = strlen(t_dsn()) + strlen(tail) + 2;
        f->conninfo = malloc(n);
        cr_assert_not_null(f->conninfo);
        snprintf(f->conninfo, n, "%s %s", t_dsn(), tail);
    }
    aorm_engine_options_init(o);
    o->conninfo = f->conninfo;
}

static void fx_engine(fx *f, const aorm_engine_options *o) {
    f->e = aorm_engine_new(f->l, o);
    cr_assert_not_null(f->e, "aorm_engine_new failed");
}

/* Frees the engine (which must not block the loop either), checks the
 * heartbeat, tears down, and (sanitizer builds) checks that nothing leaked:
 * callers free their own buffers and side connections before. */
static void fx_close(fx *f) {
    double t = t_mono();
    aorm_engine_free(f->e);
    double took = t_mono() - t;
    f->e = NULL;
    cr_assert(took < MAX_GAP, "aorm_engine_free blocked for %.0f ms", took * 1000);
    ev_timer_stop(f->evl, &f->hb.w);
    cr_assert(f->hb.max_gap < MAX_GAP, "the loop stalled: %.0f ms without a heartbeat (%.2f s into the scenario)",
              f->hb.max_gap * 1000, f->hb.max_at - f->t0);
    cr_log_info("%s: longest heartbeat gap %.1f ms (%.2f s into the scenario) over %ld beats", f->app,
                f->hb.max_gap * 1000, f->hb.max_at - f->t0, f->hb.beats);
    fp_stop(f->proxy);
    f->proxy = NULL;
    t_loop_close(&f->evl, &f->l);
    free(f->conninfo);
    g_fx = NULL;
#ifdef FM_LEAK_CHECK
    /* everything of the scenario is freed by now (the callers free their own
     * buffers and side connections first) */
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "memory leaked: see the LeakSanitizer report above");
#endif
}

/* ---- running the loop ---------------------------------------------------------- */

/* Runs the loop (t_run_until_prompt) until cond(arg) or `seconds`. */
static int wait_fn(fx *f, int (*cond)(void *), void *arg, double seconds) {
    f->hb.last = t_mono(); /* time spent outside the loop is the test's, not the engine's */
    return t_run_until_prompt(f->evl, cond, arg, seconds);
}

static int wait_flag(fx *f, volatile int *flag, double seconds) { return wait_fn(f, t_flag_set, (void *)flag, seconds); }
static void run_for(fx *f, double seconds) { wait_fn(f, t_never, NULL, seconds); }

/* ---- recording outcomes ------------------------------------------------------- */

/* Outcomes go to t_rec (the test kit's recorder: the first outcome is
 * kept, the count tells the rest); t_rec_seq counts the callbacks of a
 * scenario and gives each its place (seq), holds included. */

static int wait_all(fx *f, t_rec *r, int n, double seconds) {
    f->hb.last = t_mono(); /* as wait_fn() */
    return t_rec_wait_all(f->evl, r, n, seconds);
}

/* A lost connection: AORM_ECONNLOST with a synthesized class-08 SQLSTATE,
 * or the server's own FATAL code (57P01 admin_shutdown, 57P02/57P03 for a
 * shutdown) that the dying backend wrote just before the end of the
 * stream. */
static bool lost_outcome(const t_rec *r) {
    return r->code == AORM_ECONNLOST && (strncmp(r->sqlstate, "08", 2) == 0 || strncmp(r->sqlstate, "57P0", 4) == 0);
}

/* The short name of a code for the matrix: AORM_ECONNLOST -> ECONNLOST. */
static const char *cname(int code) {
    if (code == 0) return "OK";
    const char *n = aorm_errname(code);
    return strncmp(n, "AORM_", 5) == 0 ? n + 5 : n;
}

static void params_int(aorm_params *p, int v) {
    aorm_params_init(p);
    aorm_params_int4(p, v);
}

/* ---- held connections ------------------------------------------------------------ */

static aorm_conn *acquire(fx *f, t_rec *h) {
    memset(h, 0, sizeof(*h));
    cr_assert_eq(aorm_engine_acquire(f->e, t_rec_on_conn, h), 0);
    cr_assert(wait_flag(f, &h->calls, 10), "acquire: no answer");
    cr_assert_eq(h->code, 0, "acquire: %s %s", aorm_errname(h->code), h->msg);
    return h->conn;
}

/* Runs one statement and waits for it. */
static void run_sql(fx *f, const char *sql, t_rec *r, double seconds) {
    memset(r, 0, sizeof(*r));
    cr_assert_eq(aorm_engine_execute(f->e, sql, NULL, NULL, t_rec_on_result, r), 0, "%s", sql);
    cr_assert(wait_flag(f, &r->calls, seconds), "no answer to %s within %.1f s", sql, seconds);
}

static void warm(fx *f, int n) {
    cr_assert_eq(aorm_engine_warm(f->e), 0);
    f->hb.last = t_mono(); /* as wait_fn() */
    t_wait_idle(f->evl, f->e, n, 10);
}

/* ---- healing ------------------------------------------------------------------------ */

static int settled(void *arg) {
    aorm_engine_stats s = t_stats(arg);
    return s.held == 0 && s.waiting == 0 && s.idle >= 1 && s.idle == s.open;
}

/* After a fault: a statement queued now succeeds within `bound` seconds,
 * and the pool settles (nothing held or waiting, what is open is idle, at
 * most `max_open` open). Returns the seconds the statement took. */
static double expect_healed(fx *f, double bound, int max_open, const char *what) {
    t_rec r;
    double t = t_mono();
    memset(&r, 0, sizeof(r));
    aorm_params p;
    params_int(&p, 4242);
    cr_assert_eq(aorm_engine_execute(f->e, "SELECT $1::int4", &p, NULL, t_rec_on_result, &r), 0);
    aorm_params_free(&p);
    cr_assert(wait_flag(f, &r.calls, bound), "%s: the pool did not heal: no answer to a statement within %.1f s",
              what, bound);
    double took = t_mono() - t;
    cr_assert_eq(r.code, 0, "%s: the pool did not heal: the first statement after the fault failed: %s", what,
                 t_rec_str(&r));
    cr_assert(r.has_int && r.ival == 4242);
    cr_assert(wait_fn(f, settled, f->e, 2.0), "%s: the pool did not settle", what);
    aorm_engine_stats s = t_stats(f->e);
    cr_assert(s.open <= max_open, "%s: %d connections open, at most %d expected", what, s.open, max_open);
    run_for(f, 0.05);
    cr_assert_eq(r.calls, 1, "%s: the healing statement was called back %d times", what, r.calls);
    return took;
}

/* ---- bystanders: other callers that must not notice the fault ------------------------ */

enum { BY_MAX = 4000 };

typedef struct bystander {
    ev_timer w;
    aorm_engine *e;
    int sent;
    t_rec r[BY_MAX];
    int rc_fail;      /* a submission that returned an error */
} bystander;

static void on_bystander_tick(struct ev_loop *evl, ev_timer *w, int revents) {
    bystander *b = (bystander *)w;
    if (b->sent >= BY_MAX) return;
    aorm_params p;
    params_int(&p, b->sent);
    int rc = aorm_engine_execute(b->e, "SELECT $1::int4", &p, NULL, t_rec_on_result, &b->r[b->sent]);
    aorm_params_free(&p);
    if (rc != 0) b->rc_fail = rc;
    else b->sent++;
}

/* One statement of another caller every 20 ms on `e` (the scenario's
 * engine, or another one). */
static bystander *bystander_start(fx *f, aorm_engine *e) {
    bystander *b = calloc(1, sizeof(*b));
    cr_assert_not_null(b);
    b->e = e;
    ev_timer_init(&b->w, on_bystander_tick, 0.0, 0.020);
    ev_timer_start(f->evl, &b->w);
    return b;
}

static int bystander_done(void *arg) {
    bystander *b = arg;
    for (int i = 0; i < b->sent; i++)
        if (b->r[i].calls == 0) return 0;
    return 1;
}

/* Stops it and asserts every statement succeeded, exactly once. Returns how
 * many ran. */
static int bystander_stop(fx *f, bystander *b, const char *what) {
    ev_timer_stop(f->evl, &b->w);
    cr_assert(wait_fn(f, bystander_done, b, 10), "%s: a bystander's statement was never answered", what);
    run_for(f, 0.05);
    cr_assert_eq(b->rc_fail, 0, "%s: a bystander's statement was refused: %s", what, aorm_errname(b->rc_fail));
    for (int i = 0; i < b->sent; i++) {
        cr_assert_eq(b->r[i].calls, 1, "%s: bystander statement %d called back %d times", what, i, b->r[i].calls);
        cr_assert_eq(b->r[i].code, 0, "%s: bystander statement %d of %d (another caller) failed: %s", what, i,
                     b->sent, t_rec_str(&b->r[i]));
        cr_assert(b->r[i].has_int && b->r[i].ival == i, "%s: bystander statement %d got the wrong answer", what, i);
    }
    int n = b->sent;
    free(b);
    return n;
}

/* A second engine on the same loop, straight to the server: another
 * process of the same fleet. */
static aorm_engine *other_engine(fx *f, char *conninfo, size_t cap) {
    snprintf(conninfo, cap, "%s application_name=%s_other", t_dsn(), f->app);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = conninfo;
    o.pool_size = 2;
    aorm_engine *e = aorm_engine_new(f->l, &o);
    cr_assert_not_null(e);
    return e;
}

/* ---- the side connection ---------------------------------------------------------------- */

/* The pid of this scenario's backend whose statement matches `like` and is
 * running, found by polling pg_stat_activity while the loop runs; 0 when
 * none showed up in time. */
static long find_backend(fx *f, PGconn *pg, const char *like, double seconds) {
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT pid FROM pg_stat_activity WHERE query LIKE '%s' AND pid <> pg_backend_pid() "
             "AND application_name = '%s' AND state = 'active' ORDER BY backend_start LIMIT 1",
             like, f->app);
    double until = t_mono() + seconds;
    for (;;) {
        char *v = t_pg_exec(pg, sql);
        if (v) {
            long pid = strtol(v, NULL, 10);
            free(v);
            return pid;
        }
        if (t_mono() >= until) return 0;
        run_for(f, 0.02);
    }
}


static void pg_do(PGconn *pg, const char *sql) { free(t_pg_exec(pg, sql)); }

static void activity_count_sql(char *buf, size_t cap, const fx *f, const char *where) {
    snprintf(buf, cap,
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
             "AND backend_type = 'client backend' AND pid <> pg_backend_pid() %s",
             f->app, where ? where : "");
}

/* ---- the matrix rows ---------------------------------------------------------------------- */

/* Appends one line to $AORM_FAULT_MATRIX (one write, O_APPEND). */
static void matrix_line(const char *line) {
    const char *path = getenv("AORM_FAULT_MATRIX");
    if (!path || !*path) return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    cr_assert(fd >= 0, "cannot open %s: %s", path, strerror(errno));
    size_t n = strlen(line);
    cr_assert_eq(write(fd, line, n), (ssize_t)n, "cannot write %s", path);
    close(fd);
}

/* A scenario announces itself first ("id B title"): a scenario that fails
 * leaves no row, and the script reports it by its title. */
static void matrix_begin(const char *id, const char *title) {
    char line[512];
    snprintf(line, sizeof(line), "%s\tB\t%s\n", id, title);
    matrix_line(line);
}

/* The row, once every assertion of the scenario has passed. */
static void matrix_row(const char *id, const char *title, const char *caller, const char *pool) {
    char line[4096];
    snprintf(line, sizeof(line), "%s\tR\t%s\t%s\t%s\n", id, title, caller, pool);
    matrix_line(line);
    cr_log_info("fault matrix: %s | %s | %s", title, caller, pool);
}

/* The rows file is rewritten by each run of the suite. */
ReportHook(PRE_ALL)(struct criterion_test_set *set) {
    const char *path = getenv("AORM_FAULT_MATRIX");
    if (path && *path) {
        int fd = open(path, O_WRONLY | O_TRUNC | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) close(fd);
    }
}

/* ============================================================================
 * 1. A backend is terminated while a statement runs
 * ========================================================================== */

Test(fault_matrix, killed_mid_query, .timeout = 120) {
    const char *title = "backend killed mid-query";
    matrix_begin("01", title);
    fx f;
    fx_init(&f, "kill_query");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 3;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 3);

    t_rec sleep = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(30)", NULL, NULL, t_rec_on_result, &sleep), 0);
    bystander *by = bystander_start(&f, f.e); /* other callers of the same engine */
    PGconn *pg = t_pg();
    long pid = find_backend(&f, pg, "SELECT pg_sleep%", 10);
    cr_assert(pid > 0, "the statement never reached the server");
    run_for(&f, 0.1); /* bystanders run beside the sleeping connection */
    cr_assert_eq(sleep.calls, 0);
    double tk = t_mono();
    t_pg_terminate(pg, pid);
    cr_assert(wait_flag(&f, &sleep.calls, 5), "the terminated statement was never called back");
    run_for(&f, 0.3);
    int nby = bystander_stop(&f, by, title);
    cr_assert_eq(sleep.calls, 1, "the terminated statement was called back %d times", sleep.calls);
    cr_assert(lost_outcome(&sleep), "the terminated statement: expected a lost connection, got %s", t_rec_str(&sleep));
    cr_assert(sleep.at - tk < 3.0, "the loss was reported %.2f s after the terminate", sleep.at - tk);
    cr_assert(nby >= 5, "only %d bystander statements ran", nby);

    double healed = expect_healed(&f, HEAL_S, 3, title);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1, "connections_lost = %llu", (unsigned long long)s.connections_lost);
    cr_log_info("healed in %.3f s; %d bystander statements", healed, nby);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "the running statement: %s, once; other callers' statements on the other "
             "connections: all OK", cname(sleep.code));
    snprintf(pool, sizeof(pool), "the dead connection is dropped (connections_lost %llu) and replaced; the next "
             "statement succeeds", (unsigned long long)s.connections_lost);
    PQfinish(pg);
    fx_close(&f);
    matrix_row("01", title, caller, pool);
}

/* ============================================================================
 * 2. ... inside a transaction, on a held connection
 * ========================================================================== */

/* A statement of the held transaction; the last one releases the
 * connection from inside its callback. */
typedef struct txop {
    t_rec r;
    aorm_conn *c;
    bool release;          /* release c from inside the callback */
    bool broken_in_cb;     /* aorm_conn_broken() inside the callback */
    aorm_tx_status tx_in_cb;
} txop;

static void on_txop(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    txop *t = user;
    t_rec_take(&t->r, res, err);
    if (t->r.calls > 1) return;
    t->broken_in_cb = aorm_conn_broken(t->c);
    t->tx_in_cb = aorm_conn_tx_status(t->c);
    if (t->release) aorm_conn_release(t->c);
}

Test(fault_matrix, killed_mid_transaction, .timeout = 120) {
    const char *title = "backend killed mid-transaction (held connection)";
    matrix_begin("02", title);
    PGconn *pg = t_pg();
    pg_do(pg, "SET client_min_messages = warning");
    pg_do(pg, "CREATE TABLE IF NOT EXISTS aorm_fm_tx (id int PRIMARY KEY)");
    pg_do(pg, "TRUNCATE aorm_fm_tx");

    fx f;
    fx_init(&f, "kill_tx");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 3;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 3);
    t_rec h;
    aorm_conn *c = acquire(&f, &h);

    enum { BEGIN, INSERT, SLEEP, AFTER, N };
    txop t[N];
    memset(t, 0, sizeof(t));
    for (int i = 0; i < N; i++) t[i].c = c;
    t[AFTER].release = true;
    cr_assert_eq(aorm_conn_begin(c, NULL, on_txop, &t[BEGIN]), 0);
    cr_assert_eq(aorm_conn_execute(c, "INSERT INTO aorm_fm_tx VALUES (1)", NULL, NULL, on_txop, &t[INSERT]), 0);
    cr_assert_eq(aorm_conn_execute(c, "SELECT pg_sleep(30)", NULL, NULL, on_txop, &t[SLEEP]), 0);
    cr_assert_eq(aorm_conn_execute(c, "SELECT 2", NULL, NULL, on_txop, &t[AFTER]), 0);
    bystander *by = bystander_start(&f, f.e);
    long pid = find_backend(&f, pg, "SELECT pg_sleep%", 10);
    cr_assert(pid > 0, "the statement never reached the server");
    /* BEGIN and INSERT share the sleep's sync group: the server holds their
     * answers back until the group ends, so they may not be in yet */
    cr_assert_eq(t[SLEEP].r.calls, 0);
    t_pg_terminate(pg, pid);
    t_rec *last = &t[AFTER].r;
    cr_assert(wait_flag(&f, &last->calls, 5), "the statement queued behind the terminated one was never called back");
    run_for(&f, 0.3);
    int nby = bystander_stop(&f, by, title);

    for (int i = 0; i < N; i++) cr_assert_eq(t[i].r.calls, 1, "statement %d called back %d times", i, t[i].r.calls);
    for (int i = BEGIN; i < SLEEP; i++)
        cr_assert(t[i].r.code == 0 || lost_outcome(&t[i].r), "statement %d ahead of the running one: %s", i,
                  t_rec_str(&t[i].r));
    for (int i = 1; i < N; i++)
        cr_assert(t[i].r.seq > t[i - 1].r.seq, "callbacks out of submission order: statement %d ran #%d, %d #%d",
                  i - 1, t[i - 1].r.seq, i, t[i].r.seq);
    cr_assert(lost_outcome(&t[SLEEP].r), "the running statement: %s", t_rec_str(&t[SLEEP].r));
    cr_assert(lost_outcome(&t[AFTER].r), "the statement behind it: %s", t_rec_str(&t[AFTER].r));
    cr_assert(t[SLEEP].r.seq < t[AFTER].r.seq,
              "callbacks out of submission order: the queued statement (#%d) was failed before the running one (#%d)",
              t[AFTER].r.seq, t[SLEEP].r.seq);
    for (int i = SLEEP; i < N; i++) {
        cr_assert(t[i].broken_in_cb, "statement %d: the connection was not broken yet inside its callback", i);
        cr_assert_eq(t[i].tx_in_cb, AORM_TX_UNKNOWN, "statement %d: tx status %d inside its callback", i,
                     t[i].tx_in_cb);
    }
    /* the connection's place is given back once, by the release in the callback */
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.held, 0, "held = %d after the release from inside the callback", s.held);
    double healed = expect_healed(&f, HEAL_S, 3, title);

    /* a new transaction works, and the lost one left nothing behind */
    t_rec h2;
    aorm_conn *c2 = acquire(&f, &h2);
    t_rec b = {0}, cnt = {0}, cm = {0};
    cr_assert_eq(aorm_conn_begin(c2, NULL, t_rec_on_result, &b), 0);
    cr_assert_eq(aorm_conn_execute(c2, "SELECT count(*) FROM aorm_fm_tx", NULL, NULL, t_rec_on_result, &cnt), 0);
    cr_assert_eq(aorm_conn_commit(c2, t_rec_on_result, &cm), 0);
    cr_assert(wait_flag(&f, &cm.calls, 10));
    cr_assert(b.code == 0 && cnt.code == 0 && cm.code == 0, "transaction after the loss: %s / %s / %s", cname(b.code),
              cname(cnt.code), cname(cm.code));
    cr_assert(cnt.has_int && cnt.ival == 0, "the lost transaction's insert is visible");
    aorm_conn_release(c2);
    run_for(&f, 0.05);
    cr_assert(b.calls == 1 && cnt.calls == 1 && cm.calls == 1 && h.calls == 1 && h2.calls == 1);
    s = t_stats(f.e);
    cr_assert_eq(s.held, 0);
    cr_log_info("healed in %.3f s; %d bystander statements", healed, nby);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller),
             "the running statement and the one queued behind it: %s%s%s, once each, in submission order; inside "
             "the callbacks the connection is already broken (tx status UNKNOWN); other callers: all OK",
             t[SLEEP].r.code == t[AFTER].r.code ? "both " : "", cname(t[SLEEP].r.code),
             t[SLEEP].r.code == t[AFTER].r.code ? "" : t[AFTER].r.code ? " then another" : "");
    snprintf(pool, sizeof(pool),
             "a release from inside the callback gives the connection's place back once (held %d); the server "
             "rolled the transaction back (%lld rows); the next statement and a new transaction succeed",
             s.held, (long long)cnt.ival);
    PQfinish(pg);
    fx_close(&f);
    matrix_row("02", title, caller, pool);
}

/* ============================================================================
 * 3. ... inside a session's transaction
 * ========================================================================== */

typedef struct sres {
    int calls;
    int seq;
    int code;
    char msg[256];
} sres;

static void sres_take(sres *r, const aorm_error *err) {
    r->calls++;
    if (r->calls > 1) return;
    r->seq = ++t_rec_seq;
    r->code = err ? err->code : 0;
    if (err) snprintf(r->msg, sizeof(r->msg), "%s [%s] %s", aorm_errname(err->code), err->sqlstate, err->message);
    else snprintf(r->msg, sizeof(r->msg), "OK");
}

static void on_sdone(aorm_session *s, const aorm_error *err, void *user) { sres_take(user, err); }
static void on_srows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) { sres_take(user, err); }
static void on_sobj(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    sres_take(user, err);
    if (!err && !obj) ((sres *)user)->code = AORM_ENOTFOUND;
}

static const char *state_name(aorm_object_state st) {
    switch (st) {
    case AORM_TRANSIENT: return "TRANSIENT";
    case AORM_PENDING: return "PENDING";
    case AORM_PERSISTENT: return "PERSISTENT";
    case AORM_DELETED: return "DELETED";
    case AORM_DETACHED: return "DETACHED";
    }
    return "?";
}

static int wait_sres(fx *f, sres *r, double seconds) { return wait_flag(f, &r->calls, seconds); }

static long count_authors(PGconn *pg, const char *name) {
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM authors WHERE name = '%s'", name);
    return t_pg_long(pg, sql);
}

Test(fault_matrix, killed_mid_session_transaction, .timeout = 120) {
    const char *title = "backend killed mid-transaction (session)";
    matrix_begin("03", title);
    PGconn *pg = t_pg();
    char name[64], name2[64];
    snprintf(name, sizeof(name), "fm-lost-%d", (int)getpid());
    snprintf(name2, sizeof(name2), "fm-after-%d", (int)getpid());

    fx f;
    fx_init(&f, "kill_stx");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 3;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 3);
    aorm_session *s = aorm_session_new(f.e, NULL);
    aorm_session *other = aorm_session_new(f.e, NULL);
    cr_assert(s && other);

    sres b = {0}, fl = {0}, sl = {0};
    cr_assert_eq(aorm_session_begin(s, NULL, on_sdone, &b), 0);
    author *a = aorm_session_new_object(s, &author_model);
    cr_assert_not_null(a);
    a->name = name;
    cr_assert_eq(aorm_session_add(s, a), 0);
    cr_assert_eq(aorm_session_flush(s, on_sdone, &fl), 0);
    cr_assert_eq(aorm_session_execute(s, aorm_raw("SELECT pg_sleep(30)"), on_srows, &sl), 0);
    long pid = find_backend(&f, pg, "SELECT pg_sleep%", 10);
    cr_assert(pid > 0, "the session's statement never reached the server");
    cr_assert(b.calls == 1 && fl.calls == 1 && sl.calls == 0);
    cr_assert(b.code == 0 && fl.code == 0, "begin %s, flush %s", b.msg, fl.msg);

    /* another session reads through the fault */
    sres g1 = {0};
    cr_assert_eq(aorm_session_get(other, &author_model, &(author){.id = 42}, NULL, on_sobj, &g1), 0);
    t_pg_terminate(pg, pid);
    sres g2 = {0};
    cr_assert_eq(aorm_session_get(other, &author_model, &(author){.id = 43}, NULL, on_sobj, &g2), 0);
    cr_assert(wait_sres(&f, &sl, 5), "the session's statement was never called back");
    cr_assert(wait_sres(&f, &g2, 5));
    run_for(&f, 0.1);
    cr_assert_eq(sl.calls, 1, "the session's statement was called back %d times", sl.calls);
    cr_assert_eq(sl.code, AORM_ECONNLOST, "the session's statement: %s", sl.msg);
    cr_assert(g1.calls == 1 && g1.code == 0, "the other session's read before the fault: %s", g1.msg);
    cr_assert(g2.calls == 1 && g2.code == 0, "the other session's read after the fault: %s", g2.msg);

    /* the transaction is gone: rollback required; commit refused */
    cr_assert(aorm_session_rollback_required(s), "a session whose transaction was lost is not rollback-required");
    sres cm = {0};
    int rc = aorm_session_commit(s, on_sdone, &cm);
    if (rc == 0) {
        cr_assert(wait_sres(&f, &cm, 5));
        cr_assert_eq(cm.code, AORM_ETXSTATE, "commit after the loss: %s", cm.msg);
    } else {
        cr_assert_eq(rc, AORM_ETXSTATE, "commit after the loss returned %s", aorm_errname(rc));
        cm.code = rc;
    }
    sres rb = {0};
    cr_assert_eq(aorm_session_rollback(s, on_sdone, &rb), 0);
    cr_assert(wait_sres(&f, &rb, 5));
    cr_assert_eq(rb.code, 0, "rollback after the loss: %s", rb.msg);
    cr_assert(!aorm_session_rollback_required(s));
    cr_assert(!aorm_session_in_transaction(s));
    cr_assert_eq(aorm_object_state_of(s, a), AORM_TRANSIENT, "the lost INSERT's object: state %d",
                 aorm_object_state_of(s, a));

    /* the session works again: a new transaction commits */
    author *a2 = aorm_session_new_object(s, &author_model);
    a2->name = name2;
    cr_assert_eq(aorm_session_add(s, a2), 0);
    sres cm2 = {0};
    cr_assert_eq(aorm_session_commit(s, on_sdone, &cm2), 0);
    cr_assert(wait_sres(&f, &cm2, HEAL_S), "the session's next commit never answered");
    cr_assert_eq(cm2.code, 0, "the session's next commit: %s", cm2.msg);
    aorm_session_free(s);
    aorm_session_free(other);
    run_for(&f, 0.05);
    cr_assert(b.calls == 1 && fl.calls == 1 && sl.calls == 1 && rb.calls == 1 && cm2.calls == 1);
    cr_assert(cm.calls <= 1);
    long lost = count_authors(pg, name), kept = count_authors(pg, name2);
    cr_assert_eq(lost, 0, "the lost transaction's author was written");
    cr_assert_eq(kept, 1, "the next transaction's author was not written");
    expect_healed(&f, HEAL_S, 3, title);
    aorm_engine_stats st = t_stats(f.e);
    char sql[256];
    snprintf(sql, sizeof(sql), "DELETE FROM authors WHERE name IN ('%s', '%s')", name, name2);
    pg_do(pg, sql);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller),
             "the running statement: %s; the session is rollback-required (commit: %s); after the rollback the "
             "new object is TRANSIENT again and the next transaction commits; other sessions: all OK",
             cname(sl.code), cname(cm.code));
    snprintf(pool, sizeof(pool), "the connection is dropped (connections_lost %llu) and its place given back "
             "(held %d); nothing of the lost transaction was written (%ld rows)",
             (unsigned long long)st.connections_lost, st.held, lost);
    PQfinish(pg);
    fx_close(&f);
    matrix_row("03", title, caller, pool);
}

/* ============================================================================
 * 4. ... during COMMIT
 * ========================================================================== */

/* A deferred constraint trigger that makes COMMIT sleep when the
 * transaction set aorm.fm_slow_commit: the backend can be terminated while
 * it runs the COMMIT. Harmless to every other transaction. */
static void slow_commit_trigger(PGconn *pg, const char *table) {
    char sql[512];
    pg_do(pg, "SET client_min_messages = warning");
    pg_do(pg, "CREATE OR REPLACE FUNCTION aorm_fm_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
              "IF current_setting('aorm.fm_slow_commit', true) = 'on' THEN PERFORM pg_sleep(30); END IF; "
              "RETURN NULL; END $$");
    snprintf(sql, sizeof(sql), "DROP TRIGGER IF EXISTS aorm_fm_slow ON %s", table);
    pg_do(pg, sql);
    snprintf(sql, sizeof(sql),
             "CREATE CONSTRAINT TRIGGER aorm_fm_slow AFTER INSERT ON %s DEFERRABLE INITIALLY DEFERRED "
             "FOR EACH ROW EXECUTE FUNCTION aorm_fm_slow_commit()", table);
    pg_do(pg, sql);
}

static void drop_slow_commit_trigger(PGconn *pg, const char *table) {
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP TRIGGER IF EXISTS aorm_fm_slow ON %s", table);
    pg_do(pg, sql);
}

Test(fault_matrix, killed_mid_commit, .timeout = 120) {
    const char *title = "backend killed mid-COMMIT (held connection)";
    matrix_begin("04", title);
    PGconn *pg = t_pg();
    pg_do(pg, "SET client_min_messages = warning");
    pg_do(pg, "CREATE TABLE IF NOT EXISTS aorm_fm_commit (id int PRIMARY KEY)");
    pg_do(pg, "TRUNCATE aorm_fm_commit");
    slow_commit_trigger(pg, "aorm_fm_commit");

    fx f;
    fx_init(&f, "kill_commit");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 3;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 3);
    t_rec h;
    aorm_conn *c = acquire(&f, &h);

    enum { BEGIN, SET, INSERT, COMMIT, N };
    txop t[N];
    memset(t, 0, sizeof(t));
    for (int i = 0; i < N; i++) t[i].c = c;
    t[COMMIT].release = true; /* the natural place to release */
    aorm_exec_options raw = {.flags = AORM_EXEC_UNPREPARED};
    cr_assert_eq(aorm_conn_begin(c, NULL, on_txop, &t[BEGIN]), 0);
    cr_assert_eq(aorm_conn_execute(c, "SET LOCAL aorm.fm_slow_commit = 'on'", NULL, &raw, on_txop, &t[SET]), 0);
    cr_assert_eq(aorm_conn_execute(c, "INSERT INTO aorm_fm_commit VALUES (1)", NULL, NULL, on_txop, &t[INSERT]), 0);
    cr_assert_eq(aorm_conn_commit(c, on_txop, &t[COMMIT]), 0);
    bystander *by = bystander_start(&f, f.e);
    long pid = find_backend(&f, pg, "COMMIT%", 10);
    cr_assert(pid > 0, "the COMMIT never started on the server");
    /* the statements ahead of the COMMIT share its sync group: their
     * answers may still be held back by the server */
    cr_assert_eq(t[COMMIT].r.calls, 0);
    t_pg_terminate(pg, pid);
    cr_assert(wait_flag(&f, &t[COMMIT].r.calls, 5), "the COMMIT was never called back");
    run_for(&f, 0.3);
    int nby = bystander_stop(&f, by, title);
    t_rec *cm = &t[COMMIT].r;
    for (int i = 0; i < COMMIT; i++) {
        cr_assert_eq(t[i].r.calls, 1, "statement %d before the COMMIT called back %d times", i, t[i].r.calls);
        cr_assert(t[i].r.code == 0 || lost_outcome(&t[i].r), "statement %d before the COMMIT: %s", i,
                  t_rec_str(&t[i].r));
        cr_assert(t[i].r.seq < t[i + 1].r.seq, "callbacks out of submission order at statement %d", i);
    }
    cr_assert_eq(cm->calls, 1, "the COMMIT was called back %d times", cm->calls);
    cr_assert_eq(cm->code, AORM_EUNKNOWN_OUTCOME, "a COMMIT cut off on the server: %s", t_rec_str(cm));
    cr_assert_str_eq(cm->sqlstate, "08007");
    cr_assert(t[COMMIT].broken_in_cb, "the connection was not broken yet inside the COMMIT's callback");
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.held, 0, "held = %d after the release from inside the COMMIT's callback", s.held);
    expect_healed(&f, HEAL_S, 3, title);
    long rows = t_pg_long(pg, "SELECT count(*) FROM aorm_fm_commit");
    drop_slow_commit_trigger(pg, "aorm_fm_commit");
    s = t_stats(f.e);
    cr_log_info("%d bystander statements", nby);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "COMMIT: %s [%s], once (never ECONNLOST nor the server's FATAL); other "
             "callers: all OK", cname(cm->code), cm->sqlstate);
    snprintf(pool, sizeof(pool), "released from the COMMIT's callback, its place is given back (held %d); the "
             "next statement succeeds (here the server had not committed: %ld rows)", s.held, rows);
    PQfinish(pg);
    fx_close(&f);
    matrix_row("04", title, caller, pool);
}

Test(fault_matrix, killed_mid_session_commit, .timeout = 120) {
    const char *title = "backend killed mid-COMMIT (session)";
    matrix_begin("05", title);
    PGconn *pg = t_pg();
    slow_commit_trigger(pg, "authors");
    char name[64];
    snprintf(name, sizeof(name), "fm-unknown-%d", (int)getpid());

    fx f;
    fx_init(&f, "kill_scommit");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 3;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 3);
    aorm_session *s = aorm_session_new(f.e, NULL);
    cr_assert_not_null(s);

    sres b = {0}, set = {0}, cm = {0};
    cr_assert_eq(aorm_session_begin(s, NULL, on_sdone, &b), 0);
    cr_assert_eq(aorm_session_execute(s, aorm_raw("SELECT set_config('aorm.fm_slow_commit', 'on', true)"),
                                      on_srows, &set), 0);
    author *a = aorm_session_new_object(s, &author_model);
    cr_assert_not_null(a);
    a->name = name;
    cr_assert_eq(aorm_session_add(s, a), 0);
    cr_assert_eq(aorm_session_commit(s, on_sdone, &cm), 0);
    long pid = find_backend(&f, pg, "COMMIT%", 10);
    cr_assert(pid > 0, "the session's COMMIT never started on the server");
    cr_assert(b.code == 0 && set.code == 0, "begin %s, set_config %s", b.msg, set.msg);
    t_pg_terminate(pg, pid);
    cr_assert(wait_sres(&f, &cm, 5), "the session's commit was never called back");
    run_for(&f, 0.2);
    cr_assert_eq(cm.calls, 1, "the session's commit was called back %d times", cm.calls);
    cr_assert_eq(cm.code, AORM_EUNKNOWN_OUTCOME, "a session COMMIT cut off on the server: %s", cm.msg);
    aorm_object_state st = aorm_object_state_of(s, a);
    cr_assert(st != AORM_PENDING && st != AORM_PERSISTENT,
              "after an unknown outcome the new object is %s: the next flush would insert it again or trust it",
              st == AORM_PENDING ? "PENDING" : "PERSISTENT");

    /* the next commit must not insert the same object again */
    sres cm2 = {0};
    uint64_t before = aorm_session_statements(s);
    cr_assert_eq(aorm_session_commit(s, on_sdone, &cm2), 0);
    cr_assert(wait_sres(&f, &cm2, HEAL_S), "the session's next commit never answered");
    uint64_t sent = aorm_session_statements(s) - before;
    aorm_session_free(s);
    run_for(&f, 0.05);
    cr_assert_eq(cm2.calls, 1);
    long rows = count_authors(pg, name);
    drop_slow_commit_trigger(pg, "authors");
    cr_assert_eq(rows, 0, "the object of the unknown-outcome commit was inserted again (%ld rows, %llu statements)",
                 rows, (unsigned long long)sent);
    expect_healed(&f, HEAL_S, 3, title);
    aorm_engine_stats es = t_stats(f.e);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller),
             "commit: %s, once; the new object is no longer pending (%s): the next commit (%s) does not insert "
             "it again", cname(cm.code), state_name(st), cname(cm2.code));
    snprintf(pool, sizeof(pool), "the connection is dropped (connections_lost %llu) and its place given back "
             "(held %d)", (unsigned long long)es.connections_lost, es.held);
    PQfinish(pg);
    fx_close(&f);
    matrix_row("05", title, caller, pool);
}

/* ============================================================================
 * 5. ... during COPY
 * ========================================================================== */

typedef struct copy_src {
    fx *f;
    PGconn *pg;
    int calls;
    int calls_after_cb;
    int kill_on;     /* the fill call that terminates the COPY's backend */
    long killed_pid;
    int64_t next;
    t_rec r;
} copy_src;

static int copy_fill(aorm_copy *cp, void *user) {
    copy_src *s = user;
    s->calls++;
    if (s->r.calls) s->calls_after_cb++;
    if (s->calls == s->kill_on) {
        /* the test blocks here on purpose (not the engine): pause the beat */
        hb_pause();
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY%%' AND application_name = '%s' "
                 "AND state = 'active' LIMIT 1", s->f->app);
        char *v = t_pg_exec(s->pg, sql);
        cr_assert_not_null(v, "the COPY is not running on the server during its fill");
        s->killed_pid = strtol(v, NULL, 10);
        free(v);
        t_pg_terminate(s->pg, s->killed_pid);
        hb_resume();
    }
    char name[32];
    while (aorm_copy_buffered(cp) < 64 * 1024) {
        int n = snprintf(name, sizeof(name), "row %lld", (long long)s->next);
        cr_assert_eq(aorm_copy_row(cp, 2), 0);
        cr_assert_eq(aorm_copy_int8(cp, s->next), 0);
        cr_assert_eq(aorm_copy_text(cp, name, (size_t)n), 0);
        s->next++;
    }
    return 1; /* endless: only the fault ends it */
}

static void on_copy_done(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    copy_src *s = user;
    t_rec_take(&s->r, res, err);
}

Test(fault_matrix, killed_mid_copy, .timeout = 120) {
    const char *title = "backend killed mid-COPY";
    matrix_begin("06", title);
    PGconn *pg = t_pg();
    pg_do(pg, "SET client_min_messages = warning");
    pg_do(pg, "CREATE TABLE IF NOT EXISTS aorm_fm_copy (id int8, name text)");
    pg_do(pg, "TRUNCATE aorm_fm_copy");

    fx f;
    fx_init(&f, "kill_copy");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 3;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 3);
    copy_src src = {.f = &f, .pg = pg, .kill_on = 4};
    bystander *by = bystander_start(&f, f.e);
    run_for(&f, 0.05);
    cr_assert_eq(aorm_engine_copy(f.e, "COPY aorm_fm_copy (id, name) FROM STDIN (FORMAT binary)", copy_fill, &src,
                                  on_copy_done, &src), 0);
    cr_assert(wait_flag(&f, &src.r.calls, 20), "the COPY was never called back (fill ran %d times)", src.calls);
    run_for(&f, 0.3);
    int nby = bystander_stop(&f, by, title);
    cr_assert(src.killed_pid > 0, "the COPY ended before its backend was terminated: %s", t_rec_str(&src.r));
    cr_assert_eq(src.r.calls, 1, "the COPY was called back %d times", src.r.calls);
    cr_assert(lost_outcome(&src.r), "the COPY: expected a lost connection, got %s", t_rec_str(&src.r));
    cr_assert_eq(src.calls_after_cb, 0, "fill ran %d times after the COPY's callback", src.calls_after_cb);
    expect_healed(&f, HEAL_S, 3, title);
    long rows = t_pg_long(pg, "SELECT count(*) FROM aorm_fm_copy");
    cr_assert_eq(rows, 0, "a COPY that never finished loaded %ld rows", rows);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1);
    cr_log_info("fill ran %d times; %d bystander statements", src.calls, nby);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "the COPY: %s, once; fill is never called after it; other callers: all OK",
             cname(src.r.code));
    snprintf(pool, sizeof(pool), "the connection is dropped (connections_lost %llu) and replaced; nothing was "
             "loaded (%ld rows)", (unsigned long long)s.connections_lost, rows);
    PQfinish(pg);
    fx_close(&f);
    matrix_row("06", title, caller, pool);
}

/* ============================================================================
 * 6. ... mid-pipeline: 100 callers on one connection
 * ========================================================================== */

static int sent_at_least(void *arg) {
    void **a = arg;
    return t_stats(a[0]).statements >= *(uint64_t *)a[1];
}

Test(fault_matrix, killed_mid_pipeline, .timeout = 120) {
    const char *title = "backend killed mid-pipeline of 100 callers";
    matrix_begin("07", title);
    fx f;
    fx_init(&f, "kill_pipeline");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 1);
    char other_ci[1024];
    aorm_engine *other = other_engine(&f, other_ci, sizeof(other_ci));
    bystander *by = bystander_start(&f, other);

    enum { N = 100 };
    t_rec *r = calloc(N, sizeof(*r));
    cr_assert_not_null(r);
    uint64_t base = t_stats(f.e).statements;
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(30)", NULL, NULL, t_rec_on_result, &r[0]), 0);
    for (int i = 1; i < N; i++) {
        aorm_params p;
        params_int(&p, i);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4", &p, NULL, t_rec_on_result, &r[i]), 0);
        aorm_params_free(&p);
    }
    uint64_t want = base + N;
    void *a[2] = {f.e, &want};
    cr_assert(wait_fn(&f, sent_at_least, a, 10), "the 100 statements were not all sent (%llu)",
              (unsigned long long)(t_stats(f.e).statements - base));
    PGconn *pg = t_pg();
    long pid = find_backend(&f, pg, "SELECT pg_sleep%", 10);
    cr_assert(pid > 0, "the head of the pipeline never started on the server");
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].calls, 0, "caller %d answered before the fault", i);
    t_pg_terminate(pg, pid);
    cr_assert(wait_all(&f, r, N, 5), "not every caller of the pipeline was called back");
    run_for(&f, 0.3);
    int nby = bystander_stop(&f, by, title);
    int lost = 0;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "caller %d called back %d times", i, r[i].calls);
        cr_assert(lost_outcome(&r[i]), "caller %d: expected a lost connection, got %s", i, t_rec_str(&r[i]));
        if (i > 0)
            cr_assert(r[i].seq > r[i - 1].seq, "callbacks out of submission order: caller %d ran #%d, caller %d #%d",
                      i - 1, r[i - 1].seq, i, r[i].seq);
        lost++;
    }
    expect_healed(&f, HEAL_S, 1, title);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1);
    aorm_engine_free(other);
    free(r);
    cr_log_info("%d statements of another engine ran through the fault", nby);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "%d/%d callers: %s, once each, in submission order; another engine on the "
             "same loop: all OK", lost, N, cname(AORM_ECONNLOST));
    snprintf(pool, sizeof(pool), "the connection is dropped (connections_lost %llu) and replaced; the next "
             "statement succeeds", (unsigned long long)s.connections_lost);
    PQfinish(pg);
    fx_close(&f);
    matrix_row("07", title, caller, pool);
}

/* ============================================================================
 * 7. The server restarts with 100 operations in flight
 * ========================================================================== */

/* A session whose commit callback frees it. */
typedef struct ses_op {
    aorm_session *s;
    sres begin, flush, sleep, commit;
    bool freed;
} ses_op;

static void on_ses_commit_free(aorm_session *s, const aorm_error *err, void *user) {
    ses_op *so = user;
    sres_take(&so->commit, err);
    aorm_session_free(s); /* from inside its own callback */
    so->freed = true;
}

static long active_sleepers(fx *f, PGconn *pg) {
    char sql[512];
    activity_count_sql(sql, sizeof(sql), f, "AND state = 'active' AND query LIKE 'SELECT pg_sleep%'");
    return t_pg_long(pg, sql);
}

Test(fault_matrix, restart_with_100_in_flight, .timeout = 180) {
    const char *title = "server restart with 100 operations in flight";
    matrix_begin("08", title);
    PGconn *pg = t_pg();
    pg_do(pg, "SET client_min_messages = warning");
    pg_do(pg, "CREATE TABLE IF NOT EXISTS aorm_fm_restart (id int PRIMARY KEY)");
    pg_do(pg, "TRUNCATE aorm_fm_restart");

    fx f;
    fx_init(&f, "restart");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 8;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 8);

    /* two held transactions: BEGIN and INSERT done, a sleep and the COMMIT in flight;
     * the COMMIT's callback releases the connection */
    enum { NH = 2, NS = 2, NSLEEP = 4, NQUICK = 88 };
    t_rec h[NH];
    txop ht[NH][4];
    memset(ht, 0, sizeof(ht));
    for (int i = 0; i < NH; i++) {
        aorm_conn *c = acquire(&f, &h[i]);
        for (int k = 0; k < 4; k++) ht[i][k].c = c;
        ht[i][3].release = true;
        char sql[64];
        snprintf(sql, sizeof(sql), "INSERT INTO aorm_fm_restart VALUES (%d)", i);
        cr_assert_eq(aorm_conn_begin(c, NULL, on_txop, &ht[i][0]), 0);
        cr_assert_eq(aorm_conn_execute(c, sql, NULL, NULL, on_txop, &ht[i][1]), 0);
        cr_assert(wait_flag(&f, &ht[i][1].r.calls, 10));
        cr_assert(ht[i][0].r.code == 0 && ht[i][1].r.code == 0);
    }
    /* two sessions in a transaction: flushed, a sleep running, the commit
     * queued in the same turn (so pipelined behind it: sent); the commit's
     * callback frees the session */
    ses_op so[NS];
    memset(so, 0, sizeof(so));
    char names[NS][64];
    for (int i = 0; i < NS; i++) {
        so[i].s = aorm_session_new(f.e, NULL);
        cr_assert_not_null(so[i].s);
        cr_assert_eq(aorm_session_begin(so[i].s, NULL, on_sdone, &so[i].begin), 0);
        author *a = aorm_session_new_object(so[i].s, &author_model);
        snprintf(names[i], sizeof(names[i]), "fm-restart-%d-%d", (int)getpid(), i);
        a->name = names[i];
        cr_assert_eq(aorm_session_add(so[i].s, a), 0);
        cr_assert_eq(aorm_session_flush(so[i].s, on_sdone, &so[i].flush), 0);
        cr_assert(wait_sres(&f, &so[i].flush, 10));
        cr_assert(so[i].begin.code == 0 && so[i].flush.code == 0, "session %d: begin %s, flush %s", i,
                  so[i].begin.msg, so[i].flush.msg);
    }

    uint64_t base = t_stats(f.e).statements;
    for (int i = 0; i < NH; i++) {
        cr_assert_eq(aorm_conn_execute(ht[i][2].c, "SELECT pg_sleep(30)", NULL, NULL, on_txop, &ht[i][2]), 0);
        cr_assert_eq(aorm_conn_commit(ht[i][3].c, on_txop, &ht[i][3]), 0);
    }
    for (int i = 0; i < NS; i++) {
        cr_assert_eq(aorm_session_execute(so[i].s, aorm_raw("SELECT pg_sleep(30)"), on_srows, &so[i].sleep), 0);
        cr_assert_eq(aorm_session_commit(so[i].s, on_ses_commit_free, &so[i]), 0);
    }
    t_rec *ac = calloc(NSLEEP + NQUICK, sizeof(*ac));
    cr_assert_not_null(ac);
    for (int i = 0; i < NSLEEP; i++)
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(30)", NULL, NULL, t_rec_on_result, &ac[i]), 0);
    for (int i = NSLEEP; i < NSLEEP + NQUICK; i++) {
        aorm_params p;
        params_int(&p, i);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4", &p, NULL, t_rec_on_result, &ac[i]), 0);
        aorm_params_free(&p);
    }
    int in_flight = NH * 2 + NS * 2 + NSLEEP + NQUICK;
    cr_assert_eq(in_flight, 100);
    uint64_t want = base + NH * 2 + NS + NSLEEP + NQUICK; /* what reaches the wire (the sessions' commits wait) */
    void *a[2] = {f.e, &want};
    cr_assert(wait_fn(&f, sent_at_least, a, 10), "only %llu of %llu statements were sent",
              (unsigned long long)(t_stats(f.e).statements - base), (unsigned long long)(want - base));
    long sleeping = 0;
    double until = t_mono() + 10;
    while ((sleeping = active_sleepers(&f, pg)) < NH + NS + NSLEEP && t_mono() < until) run_for(&f, 0.02);
    cr_assert_eq(sleeping, NH + NS + NSLEEP,
                 "only %ld of %d sleeps run on the server: the autocommit ones were not spread over the idle "
                 "connections", sleeping, NH + NS + NSLEEP);
    PQfinish(pg);
    pg = NULL;

    t_sandbox("restart-pg"); /* blocking, outside the loop */
    double t_up = t_mono();

    int done_wait_ok = wait_all(&f, ac, NSLEEP + NQUICK, 10);
    for (int i = 0; i < NH; i++) done_wait_ok &= wait_flag(&f, &ht[i][3].r.calls, 5);
    for (int i = 0; i < NS; i++) done_wait_ok &= wait_sres(&f, &so[i].commit, 5);
    cr_assert(done_wait_ok, "not every operation in flight was called back after the restart");
    /* heal probes, queued at once: they wait for the server, then run */
    enum { NP = 20 };
    t_rec probe[NP];
    memset(probe, 0, sizeof(probe));
    for (int i = 0; i < NP; i++) {
        aorm_params p;
        params_int(&p, 1000 + i);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4", &p, NULL, t_rec_on_result, &probe[i]), 0);
        aorm_params_free(&p);
    }
    cr_assert(wait_all(&f, probe, NP, 10), "the probes after the restart were not all answered within 10 s");
    double healed = t_mono() - t_up;
    run_for(&f, 0.3);

    int lost = 0, unknown = 0, pipelined = 0;
    for (int i = 0; i < NSLEEP + NQUICK; i++) {
        cr_assert_eq(ac[i].calls, 1, "autocommit statement %d called back %d times", i, ac[i].calls);
        cr_assert(lost_outcome(&ac[i]), "autocommit statement %d: expected a lost connection, got %s", i,
                  t_rec_str(&ac[i]));
        lost++;
    }
    for (int i = 0; i < NH; i++) {
        for (int k = 0; k < 4; k++)
            cr_assert_eq(ht[i][k].r.calls, 1, "holder %d statement %d called back %d times", i, k, ht[i][k].r.calls);
        cr_assert(lost_outcome(&ht[i][2].r), "holder %d, the sleep: %s", i, t_rec_str(&ht[i][2].r));
        cr_assert_eq(ht[i][3].r.code, AORM_EUNKNOWN_OUTCOME, "holder %d, the COMMIT sent before the restart: %s", i,
                     t_rec_str(&ht[i][3].r));
        cr_assert(ht[i][2].r.seq < ht[i][3].r.seq, "holder %d: the COMMIT was failed before the statement ahead of it",
                  i);
        lost++;
        unknown++;
    }
    for (int i = 0; i < NS; i++) {
        cr_assert_eq(so[i].sleep.calls, 1);
        cr_assert_eq(so[i].commit.calls, 1);
        cr_assert(so[i].freed);
        cr_assert_eq(so[i].sleep.code, AORM_ECONNLOST, "session %d, the sleep: %s", i, so[i].sleep.msg);
        /* the COMMIT went out behind the sleep: the server may or may not
         * have run it, and the session says so */
        cr_assert_eq(so[i].commit.code, AORM_EUNKNOWN_OUTCOME,
                     "session %d, the commit pipelined behind the lost statement: %s", i, so[i].commit.msg);
        cr_assert(so[i].sleep.seq < so[i].commit.seq);
        lost++;
        pipelined++;
    }
    for (int i = 0; i < NP; i++) {
        cr_assert_eq(probe[i].calls, 1);
        cr_assert_eq(probe[i].code, 0, "probe %d after the restart failed: %s", i, t_rec_str(&probe[i]));
        cr_assert(probe[i].has_int && probe[i].ival == 1000 + i);
    }
    cr_assert(wait_fn(&f, settled, f.e, 2.0), "the pool did not settle after the restart");
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.held, 0, "held = %d after every holder released from inside its callback", s.held);
    cr_assert(s.open <= 8, "open = %d", s.open);
    /* and a transaction works */
    t_rec h2;
    aorm_conn *c2 = acquire(&f, &h2);
    t_rec b = {0}, cnt = {0}, cm = {0};
    aorm_conn_begin(c2, NULL, t_rec_on_result, &b);
    aorm_conn_execute(c2, "SELECT count(*) FROM aorm_fm_restart", NULL, NULL, t_rec_on_result, &cnt);
    aorm_conn_commit(c2, t_rec_on_result, &cm);
    cr_assert(wait_flag(&f, &cm.calls, 10));
    cr_assert(b.code == 0 && cnt.code == 0 && cm.code == 0);
    aorm_conn_release(c2);
    expect_healed(&f, HEAL_S, 8, title);
    free(ac);
    cr_log_info("the pool healed %.3f s after the restart", healed);

    char caller[640], pool[512];
    snprintf(caller, sizeof(caller),
             "every operation once: %d statements %s (held COMMITs already sent: %d %s; sessions' commits "
             "pipelined behind: %d %s); holders release and sessions free themselves from inside the callbacks",
             lost - pipelined, cname(AORM_ECONNLOST), unknown, cname(AORM_EUNKNOWN_OUTCOME), pipelined,
             cname(AORM_EUNKNOWN_OUTCOME));
    snprintf(pool, sizeof(pool), "every place is given back (held %d); %d probes queued right after the restart "
             "all succeed; a new transaction works", s.held, NP);
    fx_close(&f);
    matrix_row("08", title, caller, pool);
}

/* ============================================================================
 * 8. A server that hangs (the proxy stalls)
 * ========================================================================== */

Test(fault_matrix, hung_at_connect, .timeout = 120) {
    const char *title = "server hangs at connect (accepts, never answers)";
    matrix_begin("09", title);
    fx f;
    fx_init(&f, "hung_connect");
    fx_proxy(&f);
    fp_stall_new(f.proxy, true);
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    o.connect_timeout = 0.5;
    o.pool_timeout = 1.5;
    fx_engine(&f, &o);
    char other_ci[1024];
    aorm_engine *other = other_engine(&f, other_ci, sizeof(other_ci));
    bystander *by = bystander_start(&f, other);

    enum { N = 10 };
    t_rec r[N];
    memset(r, 0, sizeof(r));
    t_rec h = {0};
    double t0 = t_mono();
    for (int i = 0; i < N; i++) cr_assert_eq(aorm_engine_execute(f.e, "SELECT 1", NULL, NULL, t_rec_on_result, &r[i]), 0);
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    double bound = o.pool_timeout + o.connect_timeout + 0.5;
    cr_assert(wait_all(&f, r, N, bound + 2), "not every statement was called back");
    cr_assert(wait_flag(&f, &h.calls, 2), "the acquire was never called back");
    run_for(&f, 0.2);
    int code = r[0].code;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert(r[i].code == AORM_ECONNECT || r[i].code == AORM_EPOOLTIMEOUT,
                  "statement %d against a hung server: %s", i, t_rec_str(&r[i]));
        cr_assert_eq(r[i].code, code, "statement %d: %s, statement 0: %s", i, cname(r[i].code), cname(code));
        double at = r[i].at - t0;
        cr_assert(at >= o.connect_timeout - 0.05 && at <= bound,
                  "statement %d failed %.2f s after submission (connect_timeout %.1f, pool_timeout %.1f)", i, at,
                  o.connect_timeout, o.pool_timeout);
        const char *why = r[i].code == AORM_EPOOLTIMEOUT ? r[i].detail : r[i].msg;
        cr_assert(why[0], "statement %d: %s carries no connection failure", i, cname(r[i].code));
    }
    cr_assert(h.code == AORM_ECONNECT || h.code == AORM_EPOOLTIMEOUT, "acquire: %s %s", cname(h.code), h.msg);
    cr_assert_null(h.conn);
    aorm_engine_stats s = t_stats(f.e);
    fp_counters pc;
    fp_counters_get(f.proxy, &pc);
    cr_assert(s.connect_failures >= 1, "no connection attempt failed");
    cr_assert_eq(s.connects, 0);
    cr_assert(pc.stalled >= 1 && pc.accepted <= 20, "%ld connection attempts reached the hung server", pc.accepted);
    cr_log_info("hung at connect: %s [%s] %s / %s after %.2f s", cname(code), r[0].sqlstate, r[0].msg, r[0].detail,
                r[0].at - t0);

    fp_stall_new(f.proxy, false);
    double healed = expect_healed(&f, HEAL_S, 2, title);
    int nby = bystander_stop(&f, by, title);
    aorm_engine_free(other);
    cr_log_info("healed %.3f s after the server answered again; %d statements of another engine", healed, nby);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "statements and acquires: %s, once each, after connect_timeout and no later than "
             "pool_timeout, with the connection failure in the error; the loop never waits", cname(code));
    snprintf(pool, sizeof(pool), "each attempt is abandoned at connect_timeout, retried with backoff (%s); when the "
             "server answers again the next statement succeeds", pc.accepted <= 20 ? "no storm" : "storm");
    fx_close(&f);
    matrix_row("09", title, caller, pool);
}

Test(fault_matrix, hung_mid_statement, .timeout = 120) {
    const char *title = "server hangs mid-statement (query sent, no answer)";
    matrix_begin("10", title);
    fx f;
    fx_init(&f, "hung_stmt");
    fx_proxy(&f);
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    o.pool_timeout = 15;
    o.connect_timeout = 2; /* the grace past a deadline before a silent connection is dropped follows it */
    fx_engine(&f, &o);
    char other_ci[1024];
    aorm_engine *other = other_engine(&f, other_ci, sizeof(other_ci));
    t_rec w;
    run_sql(&f, "SELECT 1", &w, 10);
    cr_assert_eq(w.code, 0, "through the proxy: %s", t_rec_str(&w));
    bystander *by = bystander_start(&f, other);

    fp_counters before;
    fp_counters_get(f.proxy, &before);
    fp_stall_live(f.proxy, FP_DOWN); /* queries reach the server; answers are held back */
    t_rec slow = {0};
    aorm_exec_options xo = {.deadline = 0.5};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 7", NULL, &xo, t_rec_on_result, &slow), 0);
    cr_assert(wait_flag(&f, &slow.calls, 5), "the statement with a deadline was never called back");
    double at = slow.at - t0;
    fp_counters mid;
    fp_counters_get(f.proxy, &mid);
    cr_assert(mid.bytes_up > before.bytes_up, "the query never left through the proxy");
    cr_assert_eq(slow.code, AORM_ETIMEOUT, "a statement whose answer never comes: %s", t_rec_str(&slow));
    cr_assert(at >= 0.45 && at < 1.0, "the deadline of 0.5 s fired after %.3f s", at);

    /* the next caller must not be stuck behind the dead connection */
    t_rec next = {0};
    double t1 = t_mono();
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT 8", NULL, NULL, t_rec_on_result, &next), 0);
    cr_assert(wait_flag(&f, &next.calls, 10), "the next statement never completed: the hung connection was kept");
    double next_took = t_mono() - t1;
    run_for(&f, 0.2);
    cr_assert_eq(slow.calls, 1, "the timed-out statement was called back %d times", slow.calls);
    cr_assert_eq(next.calls, 1);
    cr_assert_eq(next.code, 0, "the statement after the hang: %s", t_rec_str(&next));
    cr_assert(next.has_int && next.ival == 8);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert(s.discarded + s.connections_lost >= 1, "the hung connection was neither discarded nor lost");
    cr_assert(s.connects >= 2);
    int nby = bystander_stop(&f, by, title);
    fp_stall_live(f.proxy, 0);
    expect_healed(&f, HEAL_S, 1, title);
    aorm_engine_free(other);
    cr_log_info("deadline after %.3f s; the next statement took %.3f s; discarded %llu lost %llu; %d bystanders", at,
                next_took, (unsigned long long)s.discarded, (unsigned long long)s.connections_lost, nby);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "the statement: %s at its deadline, once; the next caller: %s on a new "
             "connection", cname(slow.code), cname(next.code));
    snprintf(pool, sizeof(pool), "the connection that never answers takes no new work and is discarded "
             "(discarded %llu) a grace period after the deadline; a new one replaces it",
             (unsigned long long)s.discarded);
    fx_close(&f);
    matrix_row("10", title, caller, pool);
}

/* ============================================================================
 * 9. The stream is cut mid-message; the connection is reset
 * ========================================================================== */

Test(fault_matrix, stream_cut_mid_message, .timeout = 120) {
    const char *title = "stream cut mid-message (server to client)";
    matrix_begin("11", title);
    fx f;
    fx_init(&f, "cut");
    fx_proxy(&f);
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    t_rec w;
    run_sql(&f, "SELECT 1", &w, 10);
    cr_assert_eq(w.code, 0, "through the proxy: %s", t_rec_str(&w));

    fp_cut_after(f.proxy, 3000); /* inside the first rows of the answer */
    t_rec big = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT repeat('x', 200) FROM generate_series(1, 5000)", NULL, NULL,
                                     t_rec_on_result, &big), 0);
    cr_assert(wait_flag(&f, &big.calls, 10), "the statement whose answer was cut was never called back");
    run_for(&f, 0.2);
    fp_counters pc;
    fp_counters_get(f.proxy, &pc);
    cr_assert_eq(pc.cuts, 1, "the proxy cut %ld connections", pc.cuts);
    cr_assert_eq(big.calls, 1, "called back %d times", big.calls);
    cr_assert(lost_outcome(&big), "an answer cut mid-message: %s", t_rec_str(&big));
    expect_healed(&f, HEAL_S, 1, title);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "the statement: %s, once; no partial result is delivered", cname(big.code));
    snprintf(pool, sizeof(pool), "the connection is dropped (connections_lost %llu) and replaced; the next "
             "statement succeeds", (unsigned long long)s.connections_lost);
    fx_close(&f);
    matrix_row("11", title, caller, pool);
}

Test(fault_matrix, connection_reset, .timeout = 120) {
    const char *title = "connections reset (RST), one busy, one idle";
    matrix_begin("12", title);
    fx f;
    fx_init(&f, "reset");
    fx_proxy(&f);
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 2);
    t_rec sleep = {0};
    cr_assert_eq(aorm_engine_execute(f.e, "SELECT pg_sleep(5)", NULL, NULL, t_rec_on_result, &sleep), 0);
    PGconn *pg = t_pg();
    long pid = find_backend(&f, pg, "SELECT pg_sleep%", 10);
    cr_assert(pid > 0, "the statement never reached the server");
    PQfinish(pg);
    fp_reset_live(f.proxy);
    cr_assert(wait_flag(&f, &sleep.calls, 5), "the statement on the reset connection was never called back");
    run_for(&f, 0.2);
    cr_assert_eq(sleep.calls, 1);
    cr_assert(lost_outcome(&sleep), "a reset connection: %s", t_rec_str(&sleep));
    /* the idle one was reset too: the next statements must not land on it */
    t_rec r[3];
    for (int i = 0; i < 3; i++) {
        run_sql(&f, "SELECT 5", &r[i], HEAL_S);
        cr_assert_eq(r[i].code, 0, "statement %d after the reset: %s", i, t_rec_str(&r[i]));
    }
    expect_healed(&f, HEAL_S, 2, title);
    fp_counters pc;
    fp_counters_get(f.proxy, &pc);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(pc.resets, 2);
    cr_assert_eq(s.connections_lost, 2, "connections_lost = %llu", (unsigned long long)s.connections_lost);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "the running statement: %s, once; statements after it: OK (never sent to the "
             "reset idle connection)", cname(sleep.code));
    snprintf(pool, sizeof(pool), "both connections are dropped (connections_lost %llu) and replaced",
             (unsigned long long)s.connections_lost);
    fx_close(&f);
    matrix_row("12", title, caller, pool);
}

/* The pool's idle connections are reset while the loop is not looking:
 * the engine learns it only when it writes the next statements to them.
 * Those statements never reached the server: they must run on new
 * connections, not fail. */
Test(fault_matrix, idle_reset_seen_at_send, .timeout = 120) {
    const char *title = "idle connections reset, seen only when the next statements are sent";
    matrix_begin("18", title);
    fx f;
    fx_init(&f, "reset_send");
    fx_proxy(&f);
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 2);
    fp_reset_live(f.proxy);
    /* the RSTs are in the kernel before the loop runs again: the first the
     * engine hears of them is the failed write of the statements below */
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    /* more than libpq buffers before it writes (64 KiB): the writes happen
     * while the statements are being handed over */
    enum { N = 200, LEN = 1024 };
    t_rec *r = calloc(N, sizeof(*r));
    char *text = malloc(LEN + 1);
    cr_assert(r && text);
    memset(text, 'x', LEN);
    text[LEN] = '\0';
    for (int i = 0; i < N; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int4(&p, i);
        aorm_params_text(&p, text);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT $1::int4 + length($2::text)", &p, NULL, t_rec_on_result, &r[i]), 0);
        aorm_params_free(&p);
    }
    free(text);
    cr_assert(wait_all(&f, r, N, HEAL_S), "not every statement was called back");
    run_for(&f, 0.2);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert_eq(r[i].code, 0, "statement %d, written to a reset connection and never run: %s", i,
                     t_rec_str(&r[i]));
        cr_assert(r[i].has_int && r[i].ival == i + LEN);
        ok++;
    }
    free(r);
    expect_healed(&f, HEAL_S, 2, title);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 2, "connections_lost = %llu", (unsigned long long)s.connections_lost);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "%d/%d statements OK, once each: the ones written to the dead connections "
             "never reached the server and run again on new ones", ok, N);
    snprintf(pool, sizeof(pool), "both connections are dropped when the write fails (connections_lost %llu) and "
             "replaced", (unsigned long long)s.connections_lost);
    fx_close(&f);
    matrix_row("18", title, caller, pool);
}

/* The server stops reading, so the engine's writes block; then it ends the
 * stream. A statement queued in the same loop turn as the end of the stream
 * is written by the engine's dispatch before the engine can read that end:
 * libpq, finding its socket full, reads, meets the end, and drops the
 * connection inside the write. */
enum { HC_N = 128, HC_LEN = 64 * 1024 }; /* 8 MiB: more than the socket buffers hold (about 4 MiB on loopback) */

/* Queues the statements 256 KiB per loop turn: one turn handing 8 MiB of
 * parameters to the engine would be a stall of the test's making. */
typedef struct hc_feed {
    ev_timer w;
    fx *f;
    t_rec *r;
    const char *text;
    int next;
    int rc;
} hc_feed;

static void on_hc_feed(struct ev_loop *evl, ev_timer *w, int revents) {
    hc_feed *fd = (hc_feed *)w;
    for (int k = 0; k < 4 && fd->next < HC_N; k++, fd->next++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_text(&p, fd->text);
        int rc = aorm_engine_execute(fd->f->e, "SELECT length($1::text)", &p, NULL, t_rec_on_result, &fd->r[fd->next]);
        aorm_params_free(&p);
        if (rc != 0) fd->rc = rc;
    }
    if (fd->next >= HC_N) ev_timer_stop(evl, w);
}

static int hc_fed(void *arg) { return ((hc_feed *)arg)->next >= HC_N; }

typedef struct late_send {
    ev_timer w;
    fx *f;
    t_rec *x;
    char *text;
    int rc;
} late_send;

static void on_late_send(struct ev_loop *evl, ev_timer *w, int revents) {
    late_send *ls = (late_send *)w;
    fp_half_close_live(ls->f->proxy);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, ls->text);
    ls->rc = aorm_engine_execute(ls->f->e, "SELECT length($1::text)", &p, NULL, t_rec_on_result, ls->x);
    aorm_params_free(&p);
}

Test(fault_matrix, closed_while_writes_block, .timeout = 120) {
    const char *title = "server stops reading, then closes while the engine writes";
    matrix_begin("19", title);
    fx f;
    fx_init(&f, "half_close");
    fx_proxy(&f);
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 1;
    o.max_overflow = 0;
    fx_engine(&f, &o);
    warm(&f, 1);
    char *text = malloc(HC_LEN + 1);
    t_rec *r = calloc(HC_N + 1, sizeof(*r));
    cr_assert(text && r);
    memset(text, 'y', HC_LEN);
    text[HC_LEN] = '\0';

    fp_stall_live(f.proxy, FP_UP); /* nothing the engine writes is read any more */
    fp_counters c0;
    fp_counters_get(f.proxy, &c0);
    hc_feed fd = {.f = &f, .r = r, .text = text};
    ev_timer_init(&fd.w, on_hc_feed, 0., 0.005);
    ev_timer_start(f.evl, &fd.w);
    cr_assert(wait_fn(&f, hc_fed, &fd, 10), "the statements were not all queued");
    cr_assert_eq(fd.rc, 0, "a statement was refused: %s", aorm_errname(fd.rc));
    run_for(&f, 0.5); /* the engine writes until the socket is full, then waits */
    fp_counters c1;
    fp_counters_get(f.proxy, &c1);
    cr_assert_eq(c1.bytes_up, c0.bytes_up, "the proxy forwarded statements it should have held");
    for (int i = 0; i < HC_N; i++) cr_assert_eq(r[i].calls, 0, "statement %d answered while nothing was read", i);

    late_send ls = {.f = &f, .x = &r[HC_N], .text = text, .rc = 1};
    ev_timer_init(&ls.w, on_late_send, 0., 0.);
    ev_timer_start(f.evl, &ls.w);
    cr_assert(wait_all(&f, r, HC_N + 1, HEAL_S + 5), "not every statement was called back");
    run_for(&f, 0.2);
    cr_assert_eq(ls.rc, 0);
    int lost = 0;
    for (int i = 0; i < HC_N; i++) {
        cr_assert_eq(r[i].calls, 1, "statement %d called back %d times", i, r[i].calls);
        cr_assert(lost_outcome(&r[i]), "statement %d, written to a connection the server closed: %s", i,
                  t_rec_str(&r[i]));
        lost++;
    }
    t_rec *x = &r[HC_N];
    cr_assert_eq(x->calls, 1, "the statement written at the end of the stream was called back %d times", x->calls);
    cr_assert(x->code == 0 || lost_outcome(x), "the statement written at the end of the stream: %s", t_rec_str(x));
    if (x->code == 0) cr_assert(x->has_int && x->ival == HC_LEN);
    fp_stall_live(f.proxy, 0);
    expect_healed(&f, HEAL_S, 1, title);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connections_lost, 1, "connections_lost = %llu", (unsigned long long)s.connections_lost);
    int x_code = x->code;
    free(text);
    free(r);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "%d/%d statements stuck in the socket: %s, once each; the one written when "
             "the stream ended: %s, once", lost, HC_N, cname(AORM_ECONNLOST), cname(x_code));
    snprintf(pool, sizeof(pool), "the connection is dropped (connections_lost %llu) and replaced; the next "
             "statement succeeds", (unsigned long long)s.connections_lost);
    fx_close(&f);
    matrix_row("19", title, caller, pool);
}

/* ============================================================================
 * 10. Pool exhaustion: 1,000 waiters
 * ========================================================================== */

Test(fault_matrix, pool_exhausted_1000_waiters_time_out, .timeout = 120) {
    const char *title = "pool exhausted, 1,000 waiters time out";
    matrix_begin("13", title);
    fx f;
    fx_init(&f, "exhaust");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    o.pool_timeout = 0.5;
    fx_engine(&f, &o);
    t_rec h[2];
    acquire(&f, &h[0]);
    acquire(&f, &h[1]);

    enum { N = 1000 };
    t_rec *ha = calloc(N / 2, sizeof(*ha));
    t_rec *ra = calloc(N / 2, sizeof(*ra));
    cr_assert(ha && ra);
    t_rec_seq = 0;
    double t0 = t_mono();
    for (int i = 0; i < N / 2; i++) {
        cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &ha[i]), 0);
        cr_assert_eq(aorm_engine_execute(f.e, "SELECT 1", NULL, NULL, t_rec_on_result, &ra[i]), 0);
    }
    run_for(&f, 0.1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.waiting, N, "waiting = %d with %d waiters", s.waiting, N);
    cr_assert(wait_all(&f, ra, N / 2, 3), "the waiting statements were not all called back");
    for (int i = 0; i < N / 2; i++) cr_assert(wait_flag(&f, &ha[i].calls, 1), "acquire %d never called back", i);
    run_for(&f, 0.2);
    double first = 1e9, last = 0;
    for (int i = 0; i < N / 2; i++) {
        cr_assert_eq(ha[i].calls, 1, "acquire %d called back %d times", i, ha[i].calls);
        cr_assert_eq(ra[i].calls, 1, "statement %d called back %d times", i, ra[i].calls);
        cr_assert_eq(ha[i].code, AORM_EPOOLTIMEOUT, "acquire %d: %s %s", i, cname(ha[i].code), ha[i].msg);
        cr_assert_eq(ra[i].code, AORM_EPOOLTIMEOUT, "statement %d: %s", i, t_rec_str(&ra[i]));
        cr_assert_null(ha[i].conn);
        double at[2] = {ha[i].at - t0, ra[i].at - t0};
        for (int k = 0; k < 2; k++) {
            if (at[k] < first) first = at[k];
            if (at[k] > last) last = at[k];
        }
    }
    cr_assert(first >= o.pool_timeout - 0.02 && last < o.pool_timeout + 0.5,
              "pool timeout of %.1f s: the first waiter failed after %.3f s, the last after %.3f s", o.pool_timeout,
              first, last);
    s = t_stats(f.e);
    cr_assert_eq(s.waiting, 0, "waiting = %d after every timeout", s.waiting);
    cr_assert_eq(s.held, 2);
    cr_assert_eq(s.open, 2, "open = %d", s.open);
    aorm_conn_release(h[0].conn);
    aorm_conn_release(h[1].conn);
    expect_healed(&f, HEAL_S, 2, title);
    s = t_stats(f.e);
    free(ha);
    free(ra);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "%d acquires and %d statements: %s at pool_timeout, once each", N / 2, N / 2,
             cname(AORM_EPOOLTIMEOUT));
    snprintf(pool, sizeof(pool), "never more than pool_size + max_overflow open (%d); nothing left waiting; the "
             "released connections serve the next statement", s.open);
    fx_close(&f);
    matrix_row("13", title, caller, pool);
}

/* A waiter that runs one statement on its grant and releases from inside
 * that statement's callback. */
typedef struct grantee {
    t_rec h;
    t_rec r;
    int idx;
} grantee;

static void on_grantee_stmt(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    grantee *g = user;
    t_rec_take(&g->r, res, err);
    aorm_conn_release(g->h.conn);
}

static void on_grant(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    grantee *g = user;
    t_rec_on_conn(e, c, err, &g->h);
    if (err || g->h.calls > 1) return;
    aorm_params p;
    params_int(&p, g->idx);
    int rc = aorm_conn_execute(c, "SELECT $1::int4", &p, NULL, on_grantee_stmt, g);
    aorm_params_free(&p);
    if (rc != 0) {
        g->r.calls = -1000; /* refused: the count check names it */
        aorm_conn_release(c);
    }
}

Test(fault_matrix, pool_exhausted_1000_waiters_fifo, .timeout = 120) {
    const char *title = "pool exhausted, 1,000 waiters granted as connections return";
    matrix_begin("14", title);
    fx f;
    fx_init(&f, "fifo");
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    o.pool_timeout = 60;
    fx_engine(&f, &o);
    t_rec h[2];
    acquire(&f, &h[0]);
    acquire(&f, &h[1]);

    enum { N = 1000 };
    grantee *g = calloc(N, sizeof(*g));
    cr_assert_not_null(g);
    t_rec_seq = 0;
    for (int i = 0; i < N; i++) {
        g[i].idx = i;
        cr_assert_eq(aorm_engine_acquire(f.e, on_grant, &g[i]), 0);
    }
    run_for(&f, 0.1);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.waiting, N, "waiting = %d", s.waiting);
    aorm_conn_release(h[0].conn);
    aorm_conn_release(h[1].conn);
    t_rec *rr = calloc(N, sizeof(*rr));
    cr_assert_not_null(rr);
    /* wait for the last statement */
    cr_assert(wait_flag(&f, &g[N - 1].r.calls, 60), "not every waiter was granted and served");
    for (int i = 0; i < N; i++) cr_assert(wait_flag(&f, &g[i].r.calls, 1), "waiter %d never served", i);
    run_for(&f, 0.2);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(g[i].h.calls, 1, "waiter %d granted %d times", i, g[i].h.calls);
        cr_assert_eq(g[i].h.code, 0, "waiter %d: %s %s", i, cname(g[i].h.code), g[i].h.msg);
        cr_assert_eq(g[i].r.calls, 1, "waiter %d's statement called back %d times", i, g[i].r.calls);
        cr_assert_eq(g[i].r.code, 0, "waiter %d's statement: %s", i, t_rec_str(&g[i].r));
        cr_assert(g[i].r.has_int && g[i].r.ival == i, "waiter %d's statement answered %lld", i,
                  (long long)g[i].r.ival);
        if (i > 0)
            cr_assert(g[i].h.seq > g[i - 1].h.seq, "grants out of FIFO order: waiter %d before waiter %d", i, i - 1);
    }
    cr_assert(wait_fn(&f, settled, f.e, 2.0));
    s = t_stats(f.e);
    cr_assert_eq(s.held, 0);
    cr_assert_eq(s.waiting, 0);
    cr_assert(s.open <= 2);
    cr_assert(s.connects == 2, "connects = %llu", (unsigned long long)s.connects);
    free(g);
    free(rr);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "%d/%d waiters granted in FIFO order, each once, each statement OK", N, N);
    snprintf(pool, sizeof(pool), "the %d connections are handed from one holder to the next (connects %llu); "
             "nothing left held or waiting", s.open, (unsigned long long)s.connects);
    fx_close(&f);
    matrix_row("14", title, caller, pool);
}

/* ============================================================================
 * 11. The server refuses: credentials, a closed port, accept-and-close
 * ========================================================================== */

/* The sandbox authenticates by password (TLS + SCRAM) when its DSN or the
 * environment carries one; before that it trusts its users, and the wrong
 * credential is a role that does not exist. */
static bool sandbox_uses_password(void) {
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(t_dsn(), &err);
    cr_assert_not_null(opts, "the sandbox DSN does not parse: %s", err ? err : "");
    bool pw = false;
    for (PQconninfoOption *op = opts; op->keyword; op++)
        if ((!strcmp(op->keyword, "password") || !strcmp(op->keyword, "passfile")) && op->val && *op->val) pw = true;
    PQconninfoFree(opts);
    const char *e1 = getenv("PGPASSWORD"), *e2 = getenv("PGPASSFILE");
    return pw || (e1 && *e1) || (e2 && *e2);
}

/* Statements every 10 ms for a second against an engine that cannot
 * connect: each fails once with `want`; returns the connection attempts. */
static uint64_t refused_stream(fx *f, int want, double bound, const char *what, t_rec *first) {
    enum { N = 100 };
    t_rec *r = calloc(N, sizeof(*r));
    double *sent = calloc(N, sizeof(*sent));
    cr_assert(r && sent);
    for (int i = 0; i < N; i++) {
        sent[i] = t_mono();
        cr_assert_eq(aorm_engine_execute(f->e, "SELECT 1", NULL, NULL, t_rec_on_result, &r[i]), 0);
        run_for(f, 0.01);
    }
    cr_assert(wait_all(f, r, N, bound + 2), "%s: not every statement was called back", what);
    run_for(f, 0.2);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].calls, 1, "%s: statement %d called back %d times", what, i, r[i].calls);
        cr_assert_eq(r[i].code, want, "%s: statement %d: %s", what, i, t_rec_str(&r[i]));
        cr_assert(r[i].at - sent[i] <= bound, "%s: statement %d failed %.2f s after submission", what, i,
                  r[i].at - sent[i]);
    }
    *first = r[0];
    free(r);
    free(sent);
    return t_stats(f->e).connect_failures;
}

Test(fault_matrix, wrong_credentials, .timeout = 120) {
    bool pw = sandbox_uses_password();
    /* the same row either way: the contract does not depend on the sandbox */
    const char *title = "refused credentials (a wrong password, or a role that does not exist)";
    matrix_begin("15", title);
    fx f;
    fx_init(&f, "auth");
    aorm_engine_options o;
    fx_options(&f, &o, pw ? "password=aorm-fm-wrong-password" : "user=aorm_fm_no_such_role");
    o.pool_timeout = 1.0;
    o.reconnect_max = 0.5;
    fx_engine(&f, &o);
    t_rec h = {0};
    double t0 = t_mono();
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(&f, &h.calls, 5), "the acquire was never called back");
    cr_assert_eq(h.code, AORM_EAUTH, "acquire with refused credentials: %s %s", cname(h.code), h.msg);
    cr_assert(h.at - t0 < 1.0, "refused credentials reported after %.2f s", h.at - t0);
    t_rec first;
    uint64_t attempts = refused_stream(&f, AORM_EAUTH, 1.5, title, &first);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connects, 0);
    cr_assert_eq(s.open, 0, "open = %d", s.open);
    cr_assert_eq(s.waiting, 0);
    cr_assert(attempts <= 25, "%llu connection attempts in about 1.2 s: no backoff", (unsigned long long)attempts);
    cr_log_info("%s: %s; %llu attempts", title, t_rec_str(&first), (unsigned long long)attempts);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "statements and acquires: %s, once each, at once (not at pool_timeout), "
             "with the server's message", cname(first.code));
    snprintf(pool, sizeof(pool), "no connection opens; attempts back off (at most %d over a second of traffic)",
             25);
    fx_close(&f);
    matrix_row("15", title, caller, pool);
}

static void refused_scenario(const char *id, const char *title, const char *label, fp_listen_mode mode,
                             const char *needle) {
    matrix_begin(id, title);
    fx f;
    fx_init(&f, label);
    fx_proxy(&f);
    cr_assert_eq(fp_listen(f.proxy, mode), 0);
    aorm_engine_options o;
    fx_options(&f, &o, NULL);
    o.pool_size = 2;
    o.max_overflow = 0;
    o.pool_timeout = 1.0;
    o.reconnect_max = 0.5;
    fx_engine(&f, &o);
    t_rec h = {0};
    cr_assert_eq(aorm_engine_acquire(f.e, t_rec_on_conn, &h), 0);
    cr_assert(wait_flag(&f, &h.calls, 5), "the acquire was never called back");
    cr_assert_eq(h.code, AORM_ECONNECT, "acquire: %s %s", cname(h.code), h.msg);
    t_rec first;
    uint64_t attempts = refused_stream(&f, AORM_ECONNECT, o.pool_timeout + o.reconnect_max + 0.5, title, &first);
    cr_assert_str_eq(first.sqlstate, "08001");
    cr_assert(strstr(first.msg, needle) || strstr(first.detail, needle), "%s: the error does not say \"%s\": %s / %s",
              title, needle, first.msg, first.detail);
    aorm_engine_stats s = t_stats(f.e);
    cr_assert_eq(s.connects, 0);
    cr_assert_eq(s.waiting, 0);
    cr_assert(attempts >= 2 && attempts <= 25, "%llu connection attempts", (unsigned long long)attempts);
    fp_counters pc;
    fp_counters_get(f.proxy, &pc);
    if (mode == FP_REFUSE_ACCEPT) cr_assert(pc.refused >= 1);

    cr_assert_eq(fp_listen(f.proxy, FP_ACCEPT), 0);
    double healed = expect_healed(&f, HEAL_S, 2, title);
    cr_log_info("%s: %s; %llu attempts; healed in %.3f s", title, t_rec_str(&first), (unsigned long long)attempts,
                healed);

    char caller[512], pool[512];
    snprintf(caller, sizeof(caller), "statements and acquires: %s [%s], once each, within pool_timeout",
             cname(first.code), first.sqlstate);
    snprintf(pool, sizeof(pool), "attempts back off (reconnect_min doubling to reconnect_max); once the server "
             "accepts again the next statement succeeds");
    fx_close(&f);
    matrix_row(id, title, caller, pool);
}

Test(fault_matrix, closed_port, .timeout = 120) {
    refused_scenario("16", "closed port (connection refused)", "closed", FP_REFUSE_CLOSED, "refused");
}

Test(fault_matrix, accept_and_close, .timeout = 120) {
    refused_scenario("17", "server accepts and closes at once", "acc_close", FP_REFUSE_ACCEPT, "closed");
}
