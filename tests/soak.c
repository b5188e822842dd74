/* soak.c -- the bounded soak (make soak): a mixed workload of engine
 * statements, held transactions and sessions, on one loop, for a fixed time
 * (120 s by default), with faults injected every few seconds: backends
 * terminated, streams cut and connections reset by the fault proxy, answers
 * stalled, and a fast restart of the server.
 *
 * It checks what must hold however long a server runs:
 *   - every operation called back exactly once: zero lost (never called
 *     back once the workload drained), zero duplicated;
 *   - no wrong answer (a statement that succeeds returns what it was asked);
 *   - no error outside the ones the faults explain (a lost connection, a
 *     failed connect, a pool wait or a deadline, an unknown or failed commit,
 *     a transaction that must be rolled back);
 *   - the pool heals: statements after the last fault all succeed;
 *   - memory is flat after warm-up: the resident anonymous memory (RssAnon,
 *     sampled every second) grows less than a bound over the last window
 *     (2 MiB over 60 s by default); the total RSS and the bytes malloc has
 *     handed out are reported beside it;
 *   - the loop keeps beating (a 10 ms timer; the longest gap is reported and
 *     bounded).
 * It prints a summary and exits 1 on any violation, 2 on a set-up error.
 *
 * Runs against the sandbox: AORM_TEST_DSN, and AORM_SANDBOX_SCRIPT for the
 * restart. Faults are injected from a thread of their own, so that the
 * blocking calls they need (a libpq connection, the restart) never run on
 * the loop. The workload thread owns the loop, the engine and every
 * session; the injector touches only the proxy (thread-safe) and its own
 * libpq connection. */
#include <errno.h>
#include <ev.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __GLIBC__
#include <malloc.h> /* mallinfo2: bytes in use, to tell growth from fragmentation */
#endif

#include "aorm/aorm.h"
#include "faultproxy.h"
#include "models.h"

/* ---- settings ------------------------------------------------------------- */

typedef struct settings {
    double seconds;        /* workload duration */
    double fault_every;    /* seconds between faults */
    double quiet;          /* no faults in the last this many seconds (healing is checked after) */
    double window;         /* RSS growth is measured over the last this many seconds */
    long max_growth_kib;   /* allowed RSS growth over the window */
    double max_gap_ms;     /* longest allowed heartbeat gap */
    int restarts;          /* server restarts during the run */
    int max_inflight;      /* operations in flight at most */
} settings;

static void usage(void) {
    fprintf(stderr,
            "usage: aorm-soak [--seconds N] [--fault-every S] [--window S] [--max-growth-kib K]\n"
            "                 [--max-gap-ms M] [--restarts R] [--inflight N]\n"
            "Runs against the sandbox (scripts/sandbox run --schema -- aorm-soak).\n");
}

/* ---- accounting ------------------------------------------------------------- */

enum { MAX_OPS = 4 * 1024 * 1024 };

enum op_kind { K_SELECT, K_READONLY, K_DEADLINE, K_TX, K_SESSION_GET, K_SESSION_TX, K_NKINDS };
static const char *const kind_names[K_NKINDS] = {"select", "readonly", "deadline", "held-tx", "session-get",
                                                 "session-tx"};

typedef struct soak {
    settings set;
    struct ev_loop *evl;
    aorm_loop *l;
    aorm_engine *e;
    fproxy *proxy;
    char *conninfo;
    char app[64];

    uint8_t *count;   /* callbacks per operation id */
    uint32_t next_id;
    long inflight;
    bool issuing;

    long issued[K_NKINDS];
    long ok;
    long errors[32];   /* by -code */
    long duplicated, wrong, unexpected;
    char unexpected_msg[512];
    long timeouts_seen_ok; /* deadline statements that succeeded (a deadline not enforced) */

    ev_timer gen, rss_t, hb, stop_t;
    double t0;
    double hb_last, hb_max, hb_max_at;
    long *rss_kib;     /* one sample per second */
    long *heap_kib;    /* malloc'd bytes in use at the same moments (glibc), or 0 */
    long *total_kib;   /* all resident memory at the same moments (file-backed pages included) */
    int nrss, cap_rss;
    unsigned rnd;
    int phase;         /* 0 workload, 1 drain */
} soak;

static soak S;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned rnd(void) {
    S.rnd = S.rnd * 1103515245u + 12345u;
    return (S.rnd >> 8) & 0xffffff;
}

static uint32_t op_new(enum op_kind k) {
    uint32_t id = S.next_id++;
    S.inflight++;
    S.issued[k]++;
    return id;
}

static bool expected_error(const aorm_error *err) {
    switch (err->code) {
    case AORM_ECONNLOST:
    case AORM_ECONNECT:
    case AORM_EPOOLTIMEOUT:
    case AORM_ETIMEOUT:
    case AORM_EUNKNOWN_OUTCOME:
    case AORM_ENOT_COMMITTED:
    case AORM_ETXSTATE:
    case AORM_EABORTED:
        return true;
    case AORM_ESERVER:
        /* a statement cancelled by its deadline's server-side timeout, a
         * transaction aborted by an earlier failure, the server shutting down */
        return !strcmp(err->sqlstate, "57014") || !strcmp(err->sqlstate, "25P02") ||
               !strncmp(err->sqlstate, "57P0", 4) || !strncmp(err->sqlstate, "08", 2);
    default:
        return false;
    }
}

/* Records one callback of operation id; `good` says whether a success
 * carried the right answer. Returns false for a duplicate. */
static bool op_done(uint32_t id, const aorm_error *err, bool good) {
    if (S.count[id]++) {
        S.duplicated++;
        return false;
    }
    S.inflight--;
    if (!err) {
        S.ok++;
        if (!good) S.wrong++;
        return true;
    }
    int c = -err->code;
    if (c > 0 && c < 32) S.errors[c]++;
    if (!expected_error(err)) {
        if (!S.unexpected++)
            snprintf(S.unexpected_msg, sizeof(S.unexpected_msg), "%s [%s] %s", aorm_errname(err->code),
                     err->sqlstate, err->message);
    }
    return true;
}

static void *id_ptr(uint32_t id) { return (void *)(uintptr_t)id; }
static uint32_t ptr_id(void *p) { return (uint32_t)(uintptr_t)p; }

/* ---- operations ---------------------------------------------------------------- */

static void on_select(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    uint32_t id = ptr_id(user);
    int64_t v = -1;
    bool good = res && aorm_result_int64(res, 0, 0, &v) == 0 && v == (int64_t)(id % 100000);
    op_done(id, err, good);
}

static void issue_select(unsigned flags) {
    uint32_t id = op_new(flags ? K_READONLY : K_SELECT);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int4(&p, (int32_t)(id % 100000));
    aorm_exec_options xo = {.flags = flags};
    int rc = aorm_engine_execute(S.e, "SELECT $1::int4", &p, &xo, on_select, id_ptr(id));
    aorm_params_free(&p);
    if (rc != 0) {
        aorm_error err = {.code = rc, .sqlstate = "", .message = "refused at submission"};
        op_done(id, &err, false);
    }
}

static void on_deadline(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    if (!err) S.timeouts_seen_ok++;
    op_done(ptr_id(user), err, false); /* success here is wrong: the deadline was not kept */
}

static void issue_deadline(void) {
    uint32_t id = op_new(K_DEADLINE);
    aorm_exec_options xo = {.deadline = 0.05};
    int rc = aorm_engine_execute(S.e, "SELECT pg_sleep(0.3)", NULL, &xo, on_deadline, id_ptr(id));
    if (rc != 0) {
        aorm_error err = {.code = rc, .sqlstate = "", .message = "refused at submission"};
        op_done(id, &err, false);
    }
}

/* One step of a chain: its own operation id and the chain it belongs to. */
struct chain;
typedef struct step {
    struct chain *ch;
    uint32_t id;
} step;

/* A held transaction (acquire, then BEGIN, INSERT, COMMIT queued at once;
 * the connection is released by whichever step calls back last), or a
 * session (get an author; or begin, add an author, commit; the session is
 * freed from inside its last callback). */
typedef struct chain {
    uint32_t acq;
    aorm_conn *c;
    aorm_session *s;
    step st[3];
    int pending;
    int64_t want_id;
} chain;

static void chain_end(chain *ch) {
    if (ch->c) aorm_conn_release(ch->c);
    if (ch->s) aorm_session_free(ch->s);
    free(ch);
}

static void step_done(step *sp, const aorm_error *err, bool good) {
    chain *ch = sp->ch;
    if (!op_done(sp->id, err, good)) return;
    if (--ch->pending == 0) chain_end(ch);
}

/* Accounts for steps whose submission was refused (they never call back). */
static void steps_refused(chain *ch, const int *rc, int n) {
    for (int i = 0; i < n; i++)
        if (rc[i] != 0) {
            aorm_error err = {.code = rc[i], .sqlstate = "", .message = "refused at submission"};
            op_done(ch->st[i].id, &err, false);
            ch->pending--;
        }
    if (ch->pending == 0) chain_end(ch);
}

static void on_tx_stmt(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    step_done(user, err, true);
}

static void on_tx_acquired(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    chain *ch = user;
    if (!op_done(ch->acq, err, true)) return;
    if (err) {
        free(ch);
        return;
    }
    ch->c = c;
    char sql[96];
    snprintf(sql, sizeof(sql), "INSERT INTO aorm_soak (v) VALUES (%u)", ch->acq);
    for (int i = 0; i < 3; i++) ch->st[i] = (step){ch, op_new(K_TX)};
    ch->pending = 3;
    int rc[3];
    rc[0] = aorm_conn_begin(c, NULL, on_tx_stmt, &ch->st[0]);
    rc[1] = aorm_conn_execute(c, sql, NULL, NULL, on_tx_stmt, &ch->st[1]);
    rc[2] = aorm_conn_commit(c, on_tx_stmt, &ch->st[2]);
    steps_refused(ch, rc, 3);
}

static void issue_tx(void) {
    chain *ch = calloc(1, sizeof(*ch));
    if (!ch) return;
    ch->acq = op_new(K_TX);
    int rc = aorm_engine_acquire(S.e, on_tx_acquired, ch);
    if (rc != 0) {
        aorm_error err = {.code = rc, .sqlstate = "", .message = "refused at submission"};
        op_done(ch->acq, &err, false);
        free(ch);
    }
}

static void on_sget(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    step *sp = user;
    author *a = obj;
    step_done(sp, err, !err && a && a->id == sp->ch->want_id);
}

static void on_sdone(aorm_session *s, const aorm_error *err, void *user) { step_done(user, err, true); }

static void issue_session(bool write) {
    chain *ch = calloc(1, sizeof(*ch));
    if (!ch) return;
    ch->s = aorm_session_new(S.e, NULL);
    if (!ch->s) {
        free(ch);
        return;
    }
    int rc[2] = {0, 0}, n;
    if (!write) {
        n = 1;
        ch->st[0] = (step){ch, op_new(K_SESSION_GET)};
        ch->want_id = 1 + (int64_t)(rnd() % 10000);
        ch->pending = n;
        rc[0] = aorm_session_get(ch->s, &author_model, &(author){.id = ch->want_id}, NULL, on_sget, &ch->st[0]);
    } else {
        n = 2;
        ch->st[0] = (step){ch, op_new(K_SESSION_TX)};
        ch->st[1] = (step){ch, op_new(K_SESSION_TX)};
        ch->pending = n;
        rc[0] = aorm_session_begin(ch->s, NULL, on_sdone, &ch->st[0]);
        author *a = aorm_session_new_object(ch->s, &author_model);
        char name[48];
        snprintf(name, sizeof(name), "soak-%u", ch->st[0].id);
        if (a) {
            a->name = aorm_session_strdup(ch->s, name);
            aorm_session_add(ch->s, a);
        }
        rc[1] = aorm_session_commit(ch->s, on_sdone, &ch->st[1]);
    }
    steps_refused(ch, rc, n);
}

static void on_gen(struct ev_loop *evl, ev_timer *w, int revents) {
    if (!S.issuing) return;
    int budget = 20;
    while (S.inflight < S.set.max_inflight && budget-- > 0 && S.next_id + 8 < MAX_OPS) {
        unsigned r = rnd() % 100;
        if (r < 40) issue_select(0);
        else if (r < 50) issue_select(AORM_EXEC_READONLY);
        else if (r < 53) issue_deadline();
        else if (r < 68) issue_tx();
        else if (r < 88) issue_session(false);
        else issue_session(true);
    }
}

/* ---- RSS and the heartbeat ---------------------------------------------------------- */

/* The resident anonymous memory (RssAnon: heap, stacks, anonymous maps):
 * what a leak makes grow. File-backed pages (the code of the libraries,
 * paged in as new paths run for the first time) are left out: they grow as
 * the faults reach new code, and they are not the library's memory. */
static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "RssAnon: %ld kB", &kib) == 1) break;
    fclose(f);
    return kib;
}

/* Everything resident, file-backed pages included (reported only). */
static long rss_total_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    long size = 0, res = 0;
    int n = fscanf(f, "%ld %ld", &size, &res);
    fclose(f);
    if (n != 2) return -1;
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Bytes malloc has handed out and not had back (its arenas and its
 * mmapped blocks): flat when nothing accumulates, whatever the allocator
 * keeps for reuse. */
static long heap_kib(void) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    return (long)((mi.uordblks + mi.hblkhd) / 1024);
#else
    return 0;
#endif
}

/* What malloc holds from the system (arenas and mmapped blocks). */
static long heap_system_kib(void) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    return (long)((mi.arena + mi.hblkhd) / 1024);
#else
    return 0;
#endif
}

static void on_rss(struct ev_loop *evl, ev_timer *w, int revents) {
    if (S.nrss >= S.cap_rss) return;
    S.heap_kib[S.nrss] = heap_kib();
    S.rss_kib[S.nrss] = rss_kib();
    S.total_kib[S.nrss] = rss_total_kib();
    S.nrss++;
}

static void on_hb(struct ev_loop *evl, ev_timer *w, int revents) {
    double now = mono();
    if (S.hb_last > 0 && now - S.hb_last > S.hb_max) {
        S.hb_max = now - S.hb_last;
        S.hb_max_at = now - S.t0;
    }
    S.hb_last = now;
}

static void on_stop(struct ev_loop *evl, ev_timer *w, int revents) { ev_break(evl, EVBREAK_ONE); }

/* ---- the fault injector (its own thread) ------------------------------------------------- */

typedef struct injector {
    pthread_t th;
    const char *dsn;
    const char *sandbox;
    fproxy *proxy;
    char app[64];
    double t0, until;
    double every;
    int restarts;
    atomic_int stop;
    long kills, cuts, resets, stalls, restarts_done, failures;
    char last_failure[256];
} injector;

static bool sleep_until(injector *in, double t) {
    while (mono() < t) {
        if (atomic_load(&in->stop)) return false;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return !atomic_load(&in->stop);
}

static void kill_one(injector *in) {
    PGconn *pg = PQconnectdb(in->dsn);
    if (PQstatus(pg) != CONNECTION_OK) {
        in->failures++;
        snprintf(in->last_failure, sizeof(in->last_failure), "side connection: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return;
    }
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity WHERE "
             "application_name = '%s' AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
             "ORDER BY random() LIMIT 1) t", in->app);
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) in->kills += atol(PQgetvalue(r, 0, 0));
    else in->failures++;
    PQclear(r);
    PQfinish(pg);
}

static void *injector_main(void *arg) {
    injector *in = arg;
    double next = in->t0 + in->every;
    int k = 0;
    double restart_at[8];
    for (int i = 0; i < in->restarts && i < 8; i++)
        restart_at[i] = in->t0 + (in->until - in->t0) * (i + 1) / (in->restarts + 1);
    int restarts_left = in->restarts < 8 ? in->restarts : 8;
    while (next < in->until && sleep_until(in, next)) {
        if (restarts_left > 0 && mono() >= restart_at[in->restarts - restarts_left]) {
            char line[4096];
            snprintf(line, sizeof(line), "\"%s\" restart-pg >/dev/null 2>&1", in->sandbox);
            if (system(line) == 0) in->restarts_done++;
            else in->failures++;
            restarts_left--;
        } else {
            switch (k++ % 5) {
            case 0:
            case 2:
                kill_one(in);
                break;
            case 1:
                fp_cut_after(in->proxy, (long)(rand() % 4000));
                in->cuts++;
                break;
            case 3:
                fp_reset_live(in->proxy);
                in->resets++;
                break;
            case 4: {
                fp_stall_live(in->proxy, FP_DOWN);
                sleep_until(in, mono() + 0.5);
                fp_stall_live(in->proxy, 0);
                in->stalls++;
                break;
            }
            }
        }
        next += in->every;
    }
    return NULL;
}

/* ---- main ---------------------------------------------------------------------------------- */

static int drained(void) { return S.inflight == 0; }

/* Runs the loop until cond() or the time is up. */
static bool run_until(int (*cond)(void), double seconds) {
    double until = mono() + seconds;
    while (!cond() && mono() < until) {
        ev_timer_set(&S.stop_t, 0.02, 0.);
        ev_timer_start(S.evl, &S.stop_t);
        ev_run(S.evl, EVRUN_ONCE);
        ev_timer_stop(S.evl, &S.stop_t);
    }
    return cond();
}

static int probes_left;
static long probes_failed;
static char probe_msg[256];

static void on_probe(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    probes_left--;
    if (err) {
        if (!probes_failed++)
            snprintf(probe_msg, sizeof(probe_msg), "%s [%s] %s", aorm_errname(err->code), err->sqlstate,
                     err->message);
    }
}

static int probes_done(void) { return probes_left == 0; }

int main(int argc, char **argv) {
    settings set = {.seconds = 120,
                    .fault_every = 3,
                    .quiet = 10,
                    .window = 60,
                    .max_growth_kib = 2048,
                    .max_gap_ms = 250,
                    .restarts = 1,
                    .max_inflight = 150};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--seconds")) set.seconds = atof(v);
        else if (!strcmp(a, "--fault-every")) set.fault_every = atof(v);
        else if (!strcmp(a, "--window")) set.window = atof(v);
        else if (!strcmp(a, "--max-growth-kib")) set.max_growth_kib = atol(v);
        else if (!strcmp(a, "--max-gap-ms")) set.max_gap_ms = atof(v);
        else if (!strcmp(a, "--restarts")) set.restarts = atoi(v);
        else if (!strcmp(a, "--inflight")) set.max_inflight = atoi(v);
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (set.seconds < 20 || set.window >= set.seconds || set.fault_every <= 0) {
        fprintf(stderr, "aorm-soak: need --seconds >= 20, --window < --seconds, --fault-every > 0\n");
        return 2;
    }
    const char *dsn = getenv("AORM_TEST_DSN"), *sandbox = getenv("AORM_SANDBOX_SCRIPT");
    if (!dsn || !*dsn || !sandbox || !*sandbox) {
        fprintf(stderr, "aorm-soak: AORM_TEST_DSN / AORM_SANDBOX_SCRIPT not set: run it through scripts/sandbox run\n");
        return 2;
    }

    S.set = set;
    S.rnd = (unsigned)getpid();
    snprintf(S.app, sizeof(S.app), "aorm_soak");
    S.count = malloc(MAX_OPS);
    S.cap_rss = (int)set.seconds + 60;
    S.rss_kib = calloc((size_t)S.cap_rss, sizeof(long));
    S.heap_kib = calloc((size_t)S.cap_rss, sizeof(long));
    S.total_kib = calloc((size_t)S.cap_rss, sizeof(long));
    if (!S.count || !S.rss_kib || !S.heap_kib || !S.total_kib) return 2;
    memset(S.count, 0, MAX_OPS); /* touched now, so that it does not show up as growth later */
    S.next_id = 1;                /* 0 means "none" in the chains */

    PGconn *pg = PQconnectdb(dsn);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "aorm-soak: cannot connect: %s", PQerrorMessage(pg));
        return 2;
    }
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    PQclear(PQexec(pg, "CREATE TABLE IF NOT EXISTS aorm_soak (id bigserial PRIMARY KEY, v bigint)"));
    PQclear(PQexec(pg, "TRUNCATE aorm_soak"));
    PQfinish(pg);

    S.proxy = fp_start_dsn(dsn);
    if (!S.proxy) {
        fprintf(stderr, "aorm-soak: the fault proxy did not start: %s\n", strerror(errno));
        return 2;
    }
    char extra[128];
    snprintf(extra, sizeof(extra), "application_name=%s", S.app);
    S.conninfo = fp_conninfo(S.proxy, dsn, extra);
    S.evl = ev_loop_new(EVFLAG_AUTO);
    S.l = aorm_loop_new_ev(S.evl);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = S.conninfo;
    o.pool_size = 8;
    o.max_overflow = 8;
    o.pool_timeout = 5;
    o.connect_timeout = 2;
    S.e = aorm_engine_new(S.l, &o);
    if (!S.conninfo || !S.evl || !S.l || !S.e) {
        fprintf(stderr, "aorm-soak: set-up failed\n");
        return 2;
    }

    ev_timer_init(&S.gen, on_gen, 0.0, 0.002);
    ev_timer_init(&S.rss_t, on_rss, 1.0, 1.0);
    ev_timer_init(&S.hb, on_hb, 0.010, 0.010);
    ev_timer_init(&S.stop_t, on_stop, 0., 0.);
    ev_timer_start(S.evl, &S.gen);
    ev_timer_start(S.evl, &S.rss_t);
    ev_timer_start(S.evl, &S.hb);

    S.t0 = mono();
    injector in;
    memset(&in, 0, sizeof(in));
    in.dsn = dsn;
    in.sandbox = sandbox;
    in.proxy = S.proxy;
    snprintf(in.app, sizeof(in.app), "%s", S.app);
    in.t0 = S.t0;
    in.until = S.t0 + set.seconds - set.quiet;
    in.every = set.fault_every;
    in.restarts = set.restarts;
    if (pthread_create(&in.th, NULL, injector_main, &in) != 0) return 2;

    printf("soak: %.0f s, a fault every %.1f s (%d restart%s), up to %d operations in flight\n", set.seconds,
           set.fault_every, set.restarts, set.restarts == 1 ? "" : "s", set.max_inflight);
    fflush(stdout);
    S.issuing = true;
    S.hb_last = mono();
    ev_timer_set(&S.stop_t, set.seconds, 0.);
    ev_timer_start(S.evl, &S.stop_t);
    ev_run(S.evl, 0);
    ev_timer_stop(S.evl, &S.stop_t);
    S.issuing = false;
    atomic_store(&in.stop, 1);
    pthread_join(in.th, NULL);

    /* drain: every operation still in flight must come back */
    double td = mono();
    bool all_back = run_until(drained, 30);
    double drain_s = mono() - td;
    /* the pool healed: 50 statements after the last fault all succeed */
    probes_left = 50;
    for (int i = 0; i < 50; i++)
        if (aorm_engine_execute(S.e, "SELECT 1", NULL, NULL, on_probe, NULL) != 0) {
            probes_left--;
            probes_failed++;
        }
    bool probes_back = run_until(probes_done, 20);
    ev_timer_stop(S.evl, &S.gen);
    ev_timer_stop(S.evl, &S.rss_t);
    ev_timer_stop(S.evl, &S.hb);

    long lost = 0, dup = S.duplicated;
    for (uint32_t id = 1; id < S.next_id; id++) {
        if (S.count[id] == 0) lost++;
        else if (S.count[id] > 1) dup++;
    }
    aorm_engine_stats st;
    aorm_engine_stats_get(S.e, &st);
    aorm_engine_free(S.e);
    /* engine free calls back anything left: those were lost above, and must
     * not come back twice */
    long late_dup = 0;
    for (uint32_t id = 1; id < S.next_id; id++)
        if (S.count[id] > 1) late_dup++;
    aorm_loop_free(S.l);
    ev_loop_destroy(S.evl);
    fp_counters pc;
    fp_counters_get(S.proxy, &pc);
    fp_stop(S.proxy);

    /* RSS over the last window */
    int w = (int)set.window;
    long growth = 0, start_kib = S.nrss ? S.rss_kib[0] : 0, end_kib = S.nrss ? S.rss_kib[S.nrss - 1] : 0;
    long win_kib = S.nrss > w ? S.rss_kib[S.nrss - 1 - w] : start_kib, peak = 0;
    for (int i = 0; i < S.nrss; i++)
        if (S.rss_kib[i] > peak) peak = S.rss_kib[i];
    growth = end_kib - win_kib;

    long total = (long)S.next_id - 1;
    printf("soak: %ld operations:", total);
    for (int k = 0; k < K_NKINDS; k++) printf(" %s %ld", kind_names[k], S.issued[k]);
    printf("\nsoak: outcomes: ok %ld", S.ok);
    for (int c = 1; c < 32; c++)
        if (S.errors[c]) printf(", %s %ld", aorm_errname(-c), S.errors[c]);
    printf("\nsoak: faults: %ld backends terminated, %ld stream cuts, %ld resets, %ld stalls, %ld restarts "
           "(%ld injector failures%s%s)\n",
           in.kills, in.cuts, in.resets, in.stalls, in.restarts_done, in.failures, in.failures ? ": " : "",
           in.failures ? in.last_failure : "");
    printf("soak: engine: %llu statements, %llu connects, %llu connect failures, %llu lost, %llu discarded, "
           "%llu cancels; proxy: %ld connections, %ld cut, %ld reset\n",
           (unsigned long long)st.statements, (unsigned long long)st.connects,
           (unsigned long long)st.connect_failures, (unsigned long long)st.connections_lost,
           (unsigned long long)st.discarded, (unsigned long long)st.cancels, pc.accepted, pc.cuts, pc.resets);
    printf("soak: callbacks: lost %ld, duplicated %ld (+%ld at engine free), wrong answers %ld, unexpected errors "
           "%ld%s%s; drained in %.2f s\n",
           lost, dup, late_dup - dup > 0 ? late_dup - dup : 0, S.wrong, S.unexpected, S.unexpected ? ": " : "",
           S.unexpected_msg, drain_s);
    printf("soak: healed: %d/50 probes OK after the last fault%s%s\n", 50 - (int)probes_failed - probes_left,
           probes_failed ? ": " : "", probe_msg);
    printf("soak: anonymous RSS: start %.1f MiB, peak %.1f MiB, end %.1f MiB; growth over the last %d s: %ld KiB "
           "(limit %ld)\n",
           start_kib / 1024.0, peak / 1024.0, end_kib / 1024.0, w, growth, set.max_growth_kib);
    printf("soak: anonymous RSS every 10 s (MiB):");
    for (int i = 0; i < S.nrss; i += 10) printf(" %.1f", S.rss_kib[i] / 1024.0);
    printf("\nsoak: total RSS every 10 s (MiB):");
    for (int i = 0; i < S.nrss; i += 10) printf(" %.1f", S.total_kib[i] / 1024.0);
    printf("\nsoak: malloc'd and in use every 10 s (MiB):");
    for (int i = 0; i < S.nrss; i += 10) printf(" %.1f", S.heap_kib[i] / 1024.0);
    printf("\nsoak: malloc's memory from the system at the end: %.1f MiB\n", heap_system_kib() / 1024.0);
    printf("soak: loop: longest heartbeat gap %.1f ms (at %.1f s; limit %.0f)\n", S.hb_max * 1000, S.hb_max_at,
           set.max_gap_ms);

    int bad = 0;
#define VIOLATION(cond, ...)                 \
    do {                                     \
        if (cond) {                          \
            printf("soak: VIOLATION: ");     \
            printf(__VA_ARGS__);             \
            printf("\n");                    \
            bad = 1;                         \
        }                                    \
    } while (0)
    VIOLATION(!all_back || lost, "%ld operations never called back", lost);
    VIOLATION(dup || late_dup, "%ld operations called back more than once", dup > late_dup ? dup : late_dup);
    VIOLATION(S.wrong, "%ld wrong answers (%ld deadline statements succeeded)", S.wrong, S.timeouts_seen_ok);
    VIOLATION(S.unexpected, "%ld unexpected errors: %s", S.unexpected, S.unexpected_msg);
    VIOLATION(!probes_back || probes_failed, "the pool did not heal: %ld of 50 probes failed: %s", probes_failed,
              probe_msg);
    VIOLATION(growth >= set.max_growth_kib, "anonymous RSS grew %ld KiB over the last %d s", growth, w);
    VIOLATION(S.hb_max * 1000 > set.max_gap_ms, "the loop stalled %.0f ms", S.hb_max * 1000);
    VIOLATION(in.restarts_done < set.restarts, "only %ld of %d restarts happened", in.restarts_done, set.restarts);
    VIOLATION(total < 1000, "only %ld operations ran", total);
    printf("soak: %s\n", bad ? "FAIL" : "PASS");
    free(S.count);
    free(S.rss_kib);
    free(S.heap_kib);
    free(S.total_kib);
    free(S.conninfo);
    return bad;
}
