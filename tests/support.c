/* support.c -- see support.h. */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *need_env(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v)
        cr_assert_fail("%s is not set: run the tests through the sandbox "
                       "(make test, or scripts/sandbox run -- ctest)", name);
    return v;
}

const char *t_dsn(void) { return need_env("AORM_TEST_DSN"); }

const char *t_redis_host(void) {
    static char host[256];
    const char *v = need_env("AORM_TEST_REDIS");
    const char *colon = strrchr(v, ':');
    cr_assert(colon && (size_t)(colon - v) < sizeof(host), "AORM_TEST_REDIS must be host:port, got %s", v);
    memcpy(host, v, (size_t)(colon - v));
    host[colon - v] = '\0';
    return host;
}

int t_redis_port(void) {
    const char *v = need_env("AORM_TEST_REDIS");
    const char *colon = strrchr(v, ':');
    cr_assert(colon, "AORM_TEST_REDIS must be host:port, got %s", v);
    return atoi(colon + 1);
}

PGconn *t_pg(void) {
    PGconn *c = PQconnectdb(t_dsn());
    cr_assert(PQstatus(c) == CONNECTION_OK, "cannot connect to the sandbox PostgreSQL: %s",
              PQerrorMessage(c));
    return c;
}

char *t_pg_exec(PGconn *c, const char *sql) {
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    char *out = NULL;
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        out = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return out;
}

long t_pg_long(PGconn *c, const char *sql) {
    char *v = t_pg_exec(c, sql);
    cr_assert(v, "%s returned no value", sql);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

typedef struct until_state {
    int (*cond)(void *);
    void *arg;
} until_state;

/* The condition is checked after every poll (ev_check) and every
 * millisecond (a repeating timer), so that work the library completes
 * before polling, at its before-poll stage, is seen too. */
static void until_check(struct ev_loop *evl, ev_check *w, int revents) {
    until_state *st = w->data;
    if (st->cond(st->arg)) ev_break(evl, EVBREAK_ONE);
}

static void until_tick(struct ev_loop *evl, ev_timer *w, int revents) {
    until_state *st = w->data;
    if (st->cond(st->arg)) ev_break(evl, EVBREAK_ONE);
}

static void until_timeout(struct ev_loop *evl, ev_timer *w, int revents) {
    ev_break(evl, EVBREAK_ONE);
}

int t_run_until_fn(struct ev_loop *evl, int (*cond)(void *), void *arg, double seconds) {
    if (cond(arg)) return 1;
    until_state st = {cond, arg};
    ev_check chk;
    ev_timer tick, tm;
    ev_now_update(evl); /* the caller may have blocked: time the limit from now */
    ev_check_init(&chk, until_check);
    chk.data = &st;
    ev_check_start(evl, &chk);
    ev_timer_init(&tick, until_tick, 0.001, 0.001);
    tick.data = &st;
    ev_timer_start(evl, &tick);
    ev_timer_init(&tm, until_timeout, seconds, 0.);
    ev_timer_start(evl, &tm);
    ev_run(evl, 0);
    ev_check_stop(evl, &chk);
    ev_timer_stop(evl, &tick);
    ev_timer_stop(evl, &tm);
    return cond(arg);
}

static int flag_cond(void *arg) { return *(volatile int *)arg != 0; }

int t_run_until(struct ev_loop *evl, volatile int *flag, double seconds) {
    return t_run_until_fn(evl, flag_cond, (void *)flag, seconds);
}

void t_sandbox(const char *cmd) {
    const char *script = need_env("AORM_SANDBOX_SCRIPT");
    char line[4096];
    snprintf(line, sizeof(line), "\"%s\" %s >/dev/null 2>&1", script, cmd);
    int rc = system(line);
    cr_assert(rc == 0, "sandbox %s failed (%d)", cmd, rc);
}
