/* demo.c -- aorm's engine on a libev loop, end to end.
 *
 * Reads AORM_TEST_DSN (set by scripts/sandbox), then, without ever
 * blocking the loop:
 *   1. asks the server for its version;
 *   2. fires 1,000 primary-key lookups at once: the engine writes them as
 *      pipelines over its pool, and the echo shows a few of them;
 *   3. runs a transaction on a held connection (begin, insert returning,
 *      savepoint, rollback to it, commit);
 *   4. shows how a server error reaches the callback (SQLSTATE and
 *      constraint name);
 *   5. prints the engine's counters: statements, round trips, prepares.
 *
 * The echo's time is from queueing a statement to its answer. Statements
 * of one pipeline are answered in one read and would all show the whole
 * pipeline's time, so only the first of them shows it (on_log); the burst
 * of step 2 reports its wall time once, for all its lookups. */
#include <aorm/aorm.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOOKUPS 1000

typedef struct demo {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    double burst_start;   /* loop time step 2 queued its lookups */
    double echo_ms;       /* time and loop time of the last echo line shown */
    double echo_now;
    int echoed;
    aorm_conn *tx;
    int lookups_done;
    int lookups_ok;
    int failures;
} demo;

static void step_stats(demo *d);
static void step_error(demo *d);

static void on_log(aorm_log_level level, const char *msg, void *user) {
    demo *d = user;
    if (level != AORM_LOG_SQL) {
        fprintf(stderr, "  [log] %s\n", msg);
        return;
    }
    if (++d->echoed > 6) return; /* a few are enough */
    /* The line ends with " (N.NNN ms)", queue to answer: shown on the first
     * statement of a round trip only, the others shared it. */
    const char *tail = strrchr(msg, '(');
    double ms, now = aorm_loop_now(d->loop);
    if (!tail || tail == msg || sscanf(tail, "(%lf ms)", &ms) != 1) {
        fprintf(stderr, "  [sql] %s\n", msg);
    } else if (ms == d->echo_ms && now == d->echo_now) {
        fprintf(stderr, "  [sql] %.*s  (same round trip)\n", (int)(tail - msg - 1), msg);
    } else {
        fprintf(stderr, "  [sql] %.*s  (%.3f ms round trip)\n", (int)(tail - msg - 1), msg, ms);
        d->echo_ms = ms;
        d->echo_now = now;
    }
}

static void fail(demo *d, const char *what, const aorm_error *err) {
    fprintf(stderr, "%s failed: %s (SQLSTATE %s)\n", what, err->message, err->sqlstate);
    d->failures++;
    ev_break(d->evl, EVBREAK_ALL);
}

/* ---- 4: a constraint violation, reported with its constraint name */
static void on_dup(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    if (!err) {
        fprintf(stderr, "expected a unique violation\n");
        d->failures++;
    } else {
        printf("4. duplicate tag refused: SQLSTATE %s, constraint \"%s\": %s\n", err->sqlstate, err->constraint,
               err->message);
    }
    step_stats(d);
}

static void step_error(demo *d) {
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, "tag 1"); /* tags.name is UNIQUE and "tag 1" exists */
    aorm_engine_execute(d->e, "INSERT INTO tags (name) VALUES ($1)", &p, NULL, on_dup, d);
    aorm_params_free(&p);
}

/* ---- 3: a transaction on a held connection */
static void on_commit(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    aorm_conn_release(d->tx);
    d->tx = NULL;
    if (err) {
        fail(d, "commit", err);
        return;
    }
    printf("3. transaction committed (%s)\n", aorm_result_cmd_tag(res));
    step_error(d);
}

static void on_tx_step(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) fail(d, "transaction statement", err);
}

static void on_insert(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) {
        fail(d, "insert", err);
        return;
    }
    int64_t id;
    aorm_result_int64(res, 0, 0, &id);
    printf("3. inserted author id %lld inside the transaction\n", (long long)id);
}

static void on_acquired(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) {
        fail(d, "acquire", err);
        return;
    }
    d->tx = c;
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, "Ursula K. Le Guin");
    aorm_params_int4(&p, 1929);
    /* queued back to back: they go out as one pipeline */
    aorm_conn_begin(c, NULL, on_tx_step, d);
    aorm_conn_execute(c, "INSERT INTO authors (name, born) VALUES ($1, $2) RETURNING id", &p, NULL, on_insert, d);
    aorm_conn_savepoint(c, "before_update", on_tx_step, d);
    aorm_conn_execute(c, "UPDATE authors SET born = NULL WHERE name = 'Ursula K. Le Guin'", NULL, NULL, on_tx_step, d);
    aorm_conn_rollback_to(c, "before_update", on_tx_step, d);
    aorm_conn_commit(c, on_commit, d);
    aorm_params_free(&p);
}

/* ---- 2: a burst of lookups, pipelined */
static void on_lookup(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    d->lookups_done++;
    if (err) {
        d->failures++;
    } else if (aorm_result_nrows(res) == 1) {
        d->lookups_ok++;
    }
    if (d->lookups_done == LOOKUPS) {
        aorm_engine_stats st;
        aorm_engine_stats_get(d->e, &st);
        double ms = (aorm_loop_now(d->loop) - d->burst_start) * 1000.0;
        printf("2. %d of %d lookups answered in %.1f ms of wall time for all of them, pipelined over %d\n"
               "   connections: %.3f ms per lookup. An echo time is queue to answer: it includes the wait\n"
               "   behind the statements ahead of it in its pipeline.\n",
               d->lookups_ok, LOOKUPS, ms, st.open, ms / LOOKUPS);
        aorm_engine_acquire(d->e, on_acquired, d);
    }
}

static void on_version(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    demo *d = user;
    if (err) {
        fail(d, "SELECT version()", err);
        return;
    }
    const char *v;
    aorm_result_text(res, 0, 0, &v, NULL);
    printf("1. server: %s\n", v);
    aorm_exec_options ro = {.flags = AORM_EXEC_READONLY, .deadline = 5.0};
    d->burst_start = aorm_loop_now(d->loop);
    for (int i = 0; i < LOOKUPS; i++) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_int8(&p, 1 + (i * 7919) % 10000);
        aorm_engine_execute(e, "SELECT id, name, born FROM authors WHERE id = $1", &p, &ro, on_lookup, d);
        aorm_params_free(&p);
    }
}

/* ---- 5 */
static void step_stats(demo *d) {
    aorm_engine_stats s;
    aorm_engine_stats_get(d->e, &s);
    printf("5. statements=%llu round_trips=%llu syncs=%llu prepares=%llu prepared_hits=%llu connections=%d\n",
           (unsigned long long)s.statements, (unsigned long long)s.round_trips, (unsigned long long)s.syncs,
           (unsigned long long)s.prepares, (unsigned long long)s.prepared_hits, s.open);
    aorm_engine_free(d->e); /* from inside a callback: freed when it returns */
    d->e = NULL;
}

int main(void) {
    const char *dsn = getenv("AORM_TEST_DSN");
    if (!dsn) {
        fprintf(stderr, "AORM_TEST_DSN is not set (run through scripts/sandbox)\n");
        return 2;
    }
    demo d = {0};
    d.evl = EV_DEFAULT;
    aorm_loop *loop = aorm_loop_new_ev(d.evl);
    d.loop = loop;
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = dsn;
    o.pool_size = 4;
    o.log = on_log;
    o.log_user = &d;
    o.log_level = AORM_LOG_SQL;
    o.echo = true;
    o.echo_params = true;
    d.e = aorm_engine_new(loop, &o);
    if (!d.e) {
        fprintf(stderr, "cannot create the engine\n");
        return 1;
    }
    aorm_engine_execute(d.e, "SELECT version()", NULL, NULL, on_version, &d);
    ev_run(d.evl, 0); /* returns when the engine is freed: nothing left to watch */
    if (d.e) aorm_engine_free(d.e);
    aorm_loop_free(loop);
    return d.failures ? 1 : 0;
}
