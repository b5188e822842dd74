/* support.h -- helpers shared by the Criterion suites: the sandbox's
 * connection strings (a missing one fails the test, never skips it) and a
 * bounded way to run the loop until a condition holds. */
#ifndef AORM_TEST_SUPPORT_H
#define AORM_TEST_SUPPORT_H

#include <criterion/criterion.h>
#include <ev.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <unistd.h>

#include "aorm/aorm.h"

/* AORM_TEST_DSN / AORM_TEST_REDIS, or a failed test naming the variable.
 * t_dsn() is what the library under test connects with: the owner's DSN,
 * or, when AORM_TEST_AS=app (the restricted-role runs of a suite),
 * AORM_TEST_APP_DSN, a role that may only read and write rows.
 * t_owner_dsn() is always the owner's (AORM_TEST_DSN): set-up, DDL, checks. */
const char *t_dsn(void);
const char *t_owner_dsn(void);
/* True in a restricted-role run (AORM_TEST_AS=app). */
bool t_as_app(void);
/* AORM_TEST_VIA=pgbouncer: t_dsn() is the sandbox PgBouncer's DSN (--pgbouncer) and
 * t_engine() sets aorm_engine_options.pgbouncer; engines made by hand should too. */
bool t_via_pgbouncer(void);
const char *t_redis_host(void);
int t_redis_port(void);

/* The value of an environment variable the sandbox sets, or a failed test
 * naming it (and saying that the secure sandbox sets it, when it does). */
const char *t_env(const char *name);

/* `base` (a key=value conninfo whose values hold no spaces or quotes) with
 * the given keys set: t_conninfo(base, "host", "x", "port", "1", NULL).
 * A NULL value removes the key. malloc'd. */
char *t_conninfo(const char *base, ...);

/* The path of a file in the sandbox's client TLS directory
 * (AORM_TEST_TLS_DIR): "ca.crt", "other-ca.crt" (a CA that signed
 * nothing), "aorm_cert.crt" / "aorm_cert.key". malloc'd. */
char *t_tls_file(const char *name);

/* A connection to the sandbox Redis: over its unix socket
 * (AORM_TEST_REDIS_SOCKET) or TCP (AORM_TEST_REDIS), authenticated with
 * AORM_TEST_REDIS_USER / AORM_TEST_REDIS_PASSWORD when the sandbox set
 * them. Fails the test when it cannot connect or authenticate. */
struct redisContext;
struct redisContext *t_redis(bool unix_socket);

/* The secure sandbox's password of role (from the passfile its DSN names)
 * into out; false when the sandbox has none (--insecure: trust). */
bool t_sandbox_password(const char *role, char *out, size_t cap);

/* A blocking libpq connection to the sandbox as the owner, for set-up and
 * checks. */
PGconn *t_pg(void);
/* Runs sql on c, asserting success; returns the first value of the first
 * row as a malloc'd string (or NULL for no rows). */
char *t_pg_exec(PGconn *c, const char *sql);
long t_pg_long(PGconn *c, const char *sql);

/* t_pg_exec / t_pg_long with the SQL built from a printf format (no
 * length limit; positional arguments such as %1$s allowed, so the
 * compiler's format check is off). */
char *t_pg_execf(PGconn *c, const char *fmt, ...);
long t_pg_longf(PGconn *c, const char *fmt, ...);
/* t_pg_execf, the value dropped: for statements run for their effect. */
void t_pg_runf(PGconn *c, const char *fmt, ...);

/* ---- loops and waiting ------------------------------------------------------
 * A private libev loop with an aorm_loop on it: every test gets its own, so
 * that nothing of one test's engine can reach the next. t_loop_open opens
 * both (asserted); t_loop_close frees the aorm_loop, then the libev loop,
 * and sets both to NULL (free every engine and client on it first). */
void t_loop_open(struct ev_loop **evl, aorm_loop **loop);
void t_loop_close(struct ev_loop **evl, aorm_loop **loop);
/* An engine on loop with the sandbox's DSN (t_dsn()) and, when o is not
 * NULL, the rest of *o (its conninfo is replaced); asserted. */
aorm_engine *t_engine(aorm_loop *loop, const aorm_engine_options *o);
/* Runs the loop for `seconds` whatever happens: a late or second callback,
 * or a statement nobody asked for, shows up in the counters after this. */
void t_settle(struct ev_loop *evl, double seconds);
/* A t_run_until_fn() condition that never holds (for waiters of one's own
 * that run the loop for a fixed time). */
int t_never(void *arg);

/* ---- echo capture -------------------------------------------------------------
 * The SQL echo of an engine, line by line: t_echo_attach() points an
 * engine's options at the recorder (log callback, AORM_LOG_SQL, echo on,
 * parameters shown); lines are recorded while `on` is set (t_echo_init
 * sets it). */
typedef struct t_echo {
    char **lines;
    size_t n, cap;
    bool on;
} t_echo;
void t_echo_init(t_echo *e);
void t_echo_attach(t_echo *e, aorm_engine_options *o, bool with_params);
/* The engine's log callback t_echo_attach() installs (user = the t_echo). */
void t_echo_log(aorm_log_level level, const char *message, void *user);
/* Forgets the lines recorded so far (keeps the memory). */
void t_echo_clear(t_echo *e);
/* Frees everything; the recorder can be t_echo_init'ed again. */
void t_echo_free(t_echo *e);
/* Lines that contain needle; the index of the first line that starts with
 * prefix, or -1; how many start with it. */
int t_echo_count(const t_echo *e, const char *needle);
int t_echo_find(const t_echo *e, const char *prefix);
int t_echo_count_prefix(const t_echo *e, const char *prefix);
/* Every line, into the test's log (cr_log_info), for a failure's context. */
void t_echo_dump(const t_echo *e);

/* Seconds on the monotonic clock (for deadlines of a test's own). */
double t_mono(void);
/* pg_terminate_backend(pid) with a 5 s wait for the backend to be gone,
 * asserting it did so. */
void t_pg_terminate(PGconn *c, long pid);

/* ---- statement counters ------------------------------------------------------ */
/* The engine's counters now (aorm_engine_stats_get). */
aorm_engine_stats t_stats(const aorm_engine *e);
/* Runs the loop (t_run_until_prompt) until the engine's pool has at least
 * n idle connections, asserting it does within `seconds` (after
 * aorm_engine_warm, say). */
void t_wait_idle(struct ev_loop *evl, const aorm_engine *e, int n, double seconds);

/* Runs the loop until *flag becomes non-zero or `seconds` pass; returns
 * the flag. */
int t_run_until(struct ev_loop *evl, volatile int *flag, double seconds);
/* Runs the loop until cond(arg) or `seconds`; returns cond's last value. */
int t_run_until_fn(struct ev_loop *evl, int (*cond)(void *), void *arg, double seconds);
/* t_run_until_fn(), with the condition also checked right after the
 * engine's before-poll dispatch, where the engine delivers some callbacks
 * (acquire grants, connection failures, ECONNECT to waiters): checked only
 * after the poll, the test would sit in poll until the next unrelated
 * event. Nothing else shortens the poll, so an engine that leaves work
 * unsent until some other event still shows as slow. */
int t_run_until_prompt(struct ev_loop *evl, int (*cond)(void *), void *arg, double seconds);
/* A condition: *(volatile int *)arg != 0. */
int t_flag_set(void *arg);

/* Runs "$AORM_SANDBOX_SCRIPT cmd" (e.g. "restart-pg"), asserting success. */
void t_sandbox(const char *cmd);

/* The test kit's record of what the library said: every line any engine
 * logs (at every level, the SQL echo included, whatever the test asked
 * for: support.c wraps aorm_engine_new) and every error copied with
 * aorm_error_copy() is appended to a file of this process under
 * $AORM_TEST_LOG_DIR, which the last ctest step (zz_secret_grep) searches
 * for the sandbox's passwords. Tests add what else they print or receive
 * (e.g. libpq messages) with t_log(). */
void t_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* This process's file (DIR/<executable>.<pid>.log); false without
 * AORM_TEST_LOG_DIR. */
bool t_log_path(char *out, size_t cap);
void t_log_error(const char *where, const aorm_error *err);

/* ---- the sandbox Redis --------------------------------------------------------
 * Points o (already aorm_redis_options_init'ed) at the sandbox Redis over
 * TCP (AORM_TEST_REDIS) and, when the sandbox has them, its credentials
 * (AORM_TEST_REDIS_PASSWORD; AORM_TEST_REDIS_USER only together with a
 * password). The rest of *o is left alone. */
void t_redis_sandbox(aorm_redis_options *o);
/* The pid of the sandbox's redis-server ($AORM_SANDBOX_DIR/redis.pid), for
 * tests that stop (SIGSTOP) or kill it; asserted. */
pid_t t_sandbox_redis_pid(void);

/* ---- files ------------------------------------------------------------------------ */
/* The whole content of path, NUL-terminated, malloc'd; asserted. */
char *t_read_file(const char *path);

/* ---- result recorder ---------------------------------------------------------------
 * One record of a callback's outcome, for engine and session callbacks
 * alike. Every callback counts in `calls`; the first outcome is kept and a
 * later call only counts (a test checks calls == 1 to see a second
 * callback). Zero-initialise it ({0}); t_rec_free() frees what it holds
 * (items) and zeroes it again. */
typedef struct t_rec {
    int calls;
    int code;            /* 0, or err->code */
    char sqlstate[6];
    char constraint[128];
    char msg[256];       /* err->message */
    char detail[256];    /* err->detail */
    double at;           /* t_mono() at the first callback */
    int seq;             /* ++t_rec_seq at the first callback */
    int mark;            /* t_rec_mark at the first callback */
    int64_t nrows;       /* a result's rows */
    int64_t affected;    /* a result's affected rows */
    int has_int;         /* ival holds the first column of the first row */
    int64_t ival;
    void *obj;           /* get: the object; query, get_many: the first one */
    void **items;        /* query, get_many: a copy of the array (malloc'd) */
    size_t len;
    aorm_conn *conn;     /* acquire: the connection (NULL with an error) */
} t_rec;
/* Callbacks so far (each record's first one counts); a test resets it to
 * give the records of a scenario their places. */
extern int t_rec_seq;
/* What each record's first callback stores in `mark` (a test sets it
 * around a call, e.g. 1 around aorm_engine_free(), to tell callbacks run
 * inside that call). */
extern int t_rec_mark;
/* Records a call: counts it and, for the first one, when and the error's
 * fields (code 0 without one); true for the first call. For callbacks of a
 * test's own that record into a t_rec. */
bool t_rec_err(t_rec *r, const aorm_error *err);
/* t_rec_err(), and for a first call without error the result's rows,
 * affected rows and first integer. */
void t_rec_take(t_rec *r, aorm_result *res, const aorm_error *err);
/* aorm_engine_execute / aorm_conn_execute callback (user = the t_rec). */
void t_rec_on_result(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);
/* aorm_engine_acquire callback (user = the t_rec): conn. */
void t_rec_on_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user);
/* Session callbacks (user = the t_rec): get, query / get_many (obj = the
 * first; len = how many), flush / commit / rollback, execute. An error
 * that comes with an object, objects or a result fails the test. */
void t_rec_on_obj(aorm_session *s, void *obj, const aorm_error *err, void *user);
void t_rec_on_objs(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user);
/* t_rec_on_objs that also keeps a copy of the array in items (free it
 * with t_rec_free()). */
void t_rec_on_items(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user);
void t_rec_on_done(aorm_session *s, const aorm_error *err, void *user);
void t_rec_on_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user);
void t_rec_free(t_rec *r);
/* Runs the loop (t_run_until_prompt) until every one of the n records has
 * been called, or `seconds` pass; true when all were. */
bool t_rec_wait_all(struct ev_loop *evl, t_rec *r, int n, double seconds);
/* A t_run_until_fn() / t_run_until_prompt() condition: every record of
 * the NULL-terminated array of t_rec pointers arg has been called. */
int t_recs_called(void *arg);
/* "OK" or "AORM_E... [sqlstate] message" (a static buffer: one at a time). */
const char *t_rec_str(const t_rec *r);

#endif
