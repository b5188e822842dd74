/* support.h -- helpers shared by the Criterion suites: the sandbox's
 * connection strings (a missing one fails the test, never skips it) and a
 * bounded way to run the loop until a condition holds. */
#ifndef AORM_TEST_SUPPORT_H
#define AORM_TEST_SUPPORT_H

#include <criterion/criterion.h>
#include <ev.h>
#include <libpq-fe.h>
#include <unistd.h>

#include "aorm/aorm.h"

/* AORM_TEST_DSN / AORM_TEST_REDIS, or a failed test naming the variable. */
const char *t_dsn(void);
const char *t_redis_host(void);
int t_redis_port(void);

/* A blocking libpq connection to the sandbox, for set-up and checks. */
PGconn *t_pg(void);
/* Runs sql on c, asserting success; returns the first value of the first
 * row as a malloc'd string (or NULL for no rows). */
char *t_pg_exec(PGconn *c, const char *sql);
long t_pg_long(PGconn *c, const char *sql);

/* Runs the loop until *flag becomes non-zero or `seconds` pass; returns
 * the flag. */
int t_run_until(struct ev_loop *evl, volatile int *flag, double seconds);
/* Runs the loop until cond(arg) or `seconds`; returns cond's last value. */
int t_run_until_fn(struct ev_loop *evl, int (*cond)(void *), void *arg, double seconds);

/* Runs "$AORM_SANDBOX_SCRIPT cmd" (e.g. "restart-pg"), asserting success. */
void t_sandbox(const char *cmd);

#endif
