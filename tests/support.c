/* support.c -- see support.h. Also the test kit's log: wrappers (linked
 * with -Wl,--wrap, see tests/CMakeLists.txt) around aorm_engine_new, which
 * tee every engine's log lines into this process's file, and around
 * aorm_error_copy, which records every error a test or the library copies. */
#include "support.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Criterion 2.4's runner process (not a test) leaks a few 48-byte blocks
 * (its timeout records) when the tests of one binary run side by side
 * (--jobs=2); LeakSanitizer then fails the binary although every test
 * passed. The suppression applies in the runner only: a pattern matches any
 * frame of a leak's stack, and every allocation of a test passes through
 * libcriterion's test main, so in the test processes (Criterion's workers,
 * "boxfort-worker") it would hide every leak of the tests and the library.
 * Every suite links this file. */
const char *__lsan_default_suppressions(void);
__attribute__((used, visibility("default"))) const char *__lsan_default_suppressions(void) {
    return strcmp(program_invocation_short_name, "boxfort-worker") == 0 ? "" : "leak:libcriterion.so\n";
}

static const char *need_env(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v) {
        bool secure_only = strcmp(name, "AORM_TEST_TLS_DIR") == 0 || strcmp(name, "AORM_TEST_REDIS_USER") == 0 ||
                           strcmp(name, "AORM_TEST_REDIS_PASSWORD") == 0;
        cr_assert_fail("%s is not set: run the tests through the sandbox "
                       "(make test, or scripts/sandbox run -- ctest)%s", name,
                       secure_only ? "; the secure sandbox sets it (not --insecure)" : "");
    }
    return v;
}

const char *t_env(const char *name) { return need_env(name); }

bool t_as_app(void) {
    const char *as = getenv("AORM_TEST_AS");
    return as && strcmp(as, "app") == 0;
}

bool t_via_pgbouncer(void) {
    const char *via = getenv("AORM_TEST_VIA");
    return via && strcmp(via, "pgbouncer") == 0;
}

const char *t_dsn(void) {
    if (t_via_pgbouncer())
        return t_as_app() ? need_env("AORM_TEST_APP_PGBOUNCER_DSN") : need_env("AORM_TEST_PGBOUNCER_DSN");
    return t_as_app() ? need_env("AORM_TEST_APP_DSN") : need_env("AORM_TEST_DSN");
}

const char *t_owner_dsn(void) { return need_env("AORM_TEST_DSN"); }

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
    PGconn *c = PQconnectdb(t_owner_dsn());
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

/* The before-poll check of t_run_until_prompt(): a prepare watcher of the
 * lowest priority (it runs after the engine's); when the condition holds
 * there, an idle watcher makes the coming poll return at once. */
typedef struct prompt_waiter {
    ev_prepare prep; /* first: the watcher is the waiter */
    ev_idle idle;
    int (*cond)(void *);
    void *arg;
} prompt_waiter;

static void prompt_idle(struct ev_loop *evl, ev_idle *w, int revents) { ev_idle_stop(evl, w); }

static void prompt_prepare(struct ev_loop *evl, ev_prepare *w, int revents) {
    prompt_waiter *wt = (prompt_waiter *)w;
    if (wt->cond(wt->arg)) {
        ev_idle_start(evl, &wt->idle);
        ev_break(evl, EVBREAK_ONE);
    }
}

int t_run_until_prompt(struct ev_loop *evl, int (*cond)(void *), void *arg, double seconds) {
    prompt_waiter wt;
    memset(&wt, 0, sizeof(wt));
    wt.cond = cond;
    wt.arg = arg;
    ev_prepare_init(&wt.prep, prompt_prepare);
    ev_set_priority(&wt.prep, EV_MINPRI);
    ev_idle_init(&wt.idle, prompt_idle);
    ev_prepare_start(evl, &wt.prep);
    /* the loop's clock is refreshed even when the condition already holds:
     * a caller's timer started next is timed from now, not from before a
     * blocking call (t_pg, t_sandbox) */
    ev_now_update(evl);
    int r = t_run_until_fn(evl, cond, arg, seconds);
    ev_prepare_stop(evl, &wt.prep);
    ev_idle_stop(evl, &wt.idle);
    return r;
}

int t_flag_set(void *arg) { return *(volatile int *)arg != 0; }

void t_sandbox(const char *cmd) {
    const char *script = need_env("AORM_SANDBOX_SCRIPT");
    char line[4096];
    snprintf(line, sizeof(line), "\"%s\" %s >/dev/null 2>&1", script, cmd);
    int rc = system(line);
    cr_assert(rc == 0, "sandbox %s failed (%d)", cmd, rc);
}

/* ---- conninfo and files --------------------------------------------------- */

char *t_conninfo(const char *base, ...) {
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    cr_assert_not_null(f);
    /* the keys to set, in order */
    const char *keys[16], *vals[16];
    int n = 0;
    va_list ap;
    va_start(ap, base);
    for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
        cr_assert(n < 16, "t_conninfo: too many keys");
        keys[n] = k;
        vals[n] = va_arg(ap, const char *);
        n++;
    }
    va_end(ap);
    bool done[16] = {0};
    bool first = true;
    for (const char *p = base; *p;) {
        while (*p == ' ') p++;
        if (!*p) break;
        const char *end = strchr(p, ' ');
        if (!end) end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        int hit = -1;
        for (int i = 0; eq && i < n; i++)
            if (strlen(keys[i]) == (size_t)(eq - p) && strncmp(p, keys[i], (size_t)(eq - p)) == 0) hit = i;
        if (hit < 0) {
            fprintf(f, "%s%.*s", first ? "" : " ", (int)(end - p), p);
            first = false;
        } else if (vals[hit] && !done[hit]) {
            fprintf(f, "%s%s=%s", first ? "" : " ", keys[hit], vals[hit]);
            first = false;
        }
        if (hit >= 0) done[hit] = true;
        p = end;
    }
    for (int i = 0; i < n; i++) {
        if (done[i] || !vals[i]) continue;
        fprintf(f, "%s%s=%s", first ? "" : " ", keys[i], vals[i]);
        first = false;
    }
    fclose(f);
    return out;
}

char *t_tls_file(const char *name) {
    const char *dir = need_env("AORM_TEST_TLS_DIR");
    char *path = NULL;
    cr_assert(asprintf(&path, "%s/%s", dir, name) > 0);
    cr_assert(access(path, R_OK) == 0, "%s: %s", path, strerror(errno));
    return path;
}

bool t_sandbox_password(const char *role, char *out, size_t cap) {
    const char *dir = getenv("AORM_TEST_TLS_DIR");
    if (!dir || !*dir) return false;
    char path[4096];
    snprintf(path, sizeof(path), "%s/pgpass", dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    /* lines host:port:database:user:password, the password in hex */
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *p = line;
        for (int field = 0; field < 3 && p; field++) p = strchr(p, ':') ? strchr(p, ':') + 1 : NULL;
        char *colon = p ? strchr(p, ':') : NULL;
        if (!colon || (size_t)(colon - p) != strlen(role) || strncmp(p, role, strlen(role)) != 0) continue;
        snprintf(out, cap, "%s", colon + 1);
        found = true;
    }
    explicit_bzero(line, sizeof(line));
    fclose(f);
    cr_assert(found, "no password for %s in %s", role, path);
    return true;
}

/* ---- Redis ---------------------------------------------------------------- */

struct redisContext *t_redis(bool unix_socket) {
    struct timeval tv = {5, 0};
    redisContext *r;
    if (unix_socket) r = redisConnectUnixWithTimeout(need_env("AORM_TEST_REDIS_SOCKET"), tv);
    else r = redisConnectWithTimeout(t_redis_host(), t_redis_port(), tv);
    cr_assert(r && !r->err, "cannot connect to the sandbox Redis (%s): %s", unix_socket ? "unix socket" : "TCP",
              r ? r->errstr : "out of memory");
    const char *pw = getenv("AORM_TEST_REDIS_PASSWORD");
    if (pw && *pw) {
        const char *user = need_env("AORM_TEST_REDIS_USER");
        redisReply *rep = redisCommand(r, "AUTH %s %s", user, pw);
        cr_assert(rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "OK") == 0,
                  "Redis AUTH as %s failed: %s", user, rep && rep->str ? rep->str : r->errstr);
        freeReplyObject(rep);
    }
    return r;
}

/* ---- the test kit's log ------------------------------------------------------ */

static int log_fd = -1;
static pid_t log_pid;

bool t_log_path(char *out, size_t cap) {
    const char *dir = getenv("AORM_TEST_LOG_DIR");
    if (!dir || !*dir) return false;
    /* Criterion's workers run as "boxfort-worker": name the file after the
     * executable instead */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[n > 0 ? n : 0] = '\0';
    const char *base = n > 0 && strrchr(exe, '/') ? strrchr(exe, '/') + 1 : program_invocation_short_name;
    snprintf(out, cap, "%s/%s.%ld.log", dir, base, (long)getpid());
    return true;
}

/* This process's file. Criterion forks a process per test, so the
 * descriptor is reopened when the pid changes. */
static int log_file(void) {
    if (log_fd >= 0 && log_pid == getpid()) return log_fd;
    if (log_fd >= 0) close(log_fd);
    log_fd = -1;
    char path[4096];
    if (!t_log_path(path, sizeof(path))) return -1;
    log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    log_pid = getpid();
    return log_fd;
}

static void log_write(const char *text, size_t len) {
    int fd = log_file();
    if (fd < 0) return;
    while (len > 0) {
        ssize_t w = write(fd, text, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        text += w;
        len -= (size_t)w;
    }
}

static void log_vline(const char *fmt, va_list ap) {
    char stack[1024];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(stack, sizeof(stack), fmt, ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    char *buf = stack;
    if ((size_t)n + 2 > sizeof(stack)) {
        buf = malloc((size_t)n + 2);
        if (!buf) {
            va_end(ap2);
            return;
        }
        vsnprintf(buf, (size_t)n + 1, fmt, ap2);
    }
    va_end(ap2);
    buf[n] = '\n';
    log_write(buf, (size_t)n + 1);
    if (buf != stack) free(buf);
}

void t_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vline(fmt, ap);
    va_end(ap);
}

void t_log_error(const char *where, const aorm_error *err) {
    if (!err) return;
    t_log("error %s: %s %s %s | detail: %s | hint: %s", where, aorm_errname(err->code), err->sqlstate,
          err->message ? err->message : "", err->detail ? err->detail : "", err->hint ? err->hint : "");
}

/* Every engine of a test process logs everything to the file, and passes
 * on to the test's own callback exactly what the test asked for. */
typedef struct log_tee {
    struct log_tee *next; /* all of them stay reachable: an engine may log until it is destroyed */
    aorm_log_fn fn;
    void *user;
    aorm_log_level level;
    bool echo;
} log_tee;

static log_tee *tees;

static const char *level_name(aorm_log_level l) {
    switch (l) {
    case AORM_LOG_ERROR: return "ERROR";
    case AORM_LOG_WARN: return "WARN";
    case AORM_LOG_INFO: return "INFO";
    case AORM_LOG_SQL: return "SQL";
    case AORM_LOG_DEBUG: return "DEBUG";
    }
    return "?";
}

static void tee_log(aorm_log_level level, const char *message, void *user) {
    log_tee *t = user;
    t_log("engine %s: %s", level_name(level), message);
    if (!t->fn || level > t->level) return;
    if (level == AORM_LOG_SQL && !t->echo) return; /* the echo was ours, not the test's */
    t->fn(level, message, t->user);
}

aorm_engine *__real_aorm_engine_new(aorm_loop *loop, const aorm_engine_options *o);
aorm_engine *__wrap_aorm_engine_new(aorm_loop *loop, const aorm_engine_options *o);

aorm_engine *__wrap_aorm_engine_new(aorm_loop *loop, const aorm_engine_options *o) {
    if (!o || log_file() < 0) return __real_aorm_engine_new(loop, o);
    log_tee *t = calloc(1, sizeof(*t));
    if (!t) return __real_aorm_engine_new(loop, o);
    t->fn = o->log;
    t->user = o->log_user;
    t->echo = o->echo;
    /* the engine raises its level to the echo's when echo is on */
    t->level = o->echo && o->log_level < AORM_LOG_SQL ? AORM_LOG_SQL : o->log_level;
    t->next = tees;
    tees = t;
    aorm_engine_options mine = *o;
    mine.log = tee_log;
    mine.log_user = t;
    mine.log_level = AORM_LOG_DEBUG;
    if (!o->echo) {
        /* the test sees no echo: the file gets it with every parameter, so
         * that what must stay hidden is hidden by the engine itself */
        mine.echo = true;
        mine.echo_params = true;
    }
    return __real_aorm_engine_new(loop, &mine);
}

aorm_error *__real_aorm_error_copy(const aorm_error *err);
aorm_error *__wrap_aorm_error_copy(const aorm_error *err);

aorm_error *__wrap_aorm_error_copy(const aorm_error *err) {
    t_log_error("copied", err);
    return __real_aorm_error_copy(err);
}

/* ---- blocking SQL with formats ----------------------------------------------- */

/* The one formatting path of the three: the statement's text, run on c;
 * the first value (malloc'd) or NULL. */
static char *pg_vexec(PGconn *c, const char *fmt, va_list ap) {
    char *sql = NULL;
    cr_assert(vasprintf(&sql, fmt, ap) >= 0 && sql, "out of memory formatting SQL");
    char *v = t_pg_exec(c, sql);
    free(sql);
    return v;
}

char *t_pg_execf(PGconn *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *v = pg_vexec(c, fmt, ap);
    va_end(ap);
    return v;
}

long t_pg_longf(PGconn *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *v = pg_vexec(c, fmt, ap);
    va_end(ap);
    cr_assert(v, "%s returned no value", fmt);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

void t_pg_runf(PGconn *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    free(pg_vexec(c, fmt, ap));
    va_end(ap);
}

/* ---- loops and waiting ---------------------------------------------------------- */

void t_loop_open(struct ev_loop **evl, aorm_loop **loop) {
    *evl = ev_loop_new(EVFLAG_AUTO);
    cr_assert_not_null(*evl, "ev_loop_new failed");
    *loop = aorm_loop_new_ev(*evl);
    cr_assert_not_null(*loop, "aorm_loop_new_ev failed");
}

void t_loop_close(struct ev_loop **evl, aorm_loop **loop) {
    aorm_loop_free(*loop);
    *loop = NULL;
    if (*evl) ev_loop_destroy(*evl);
    *evl = NULL;
}

aorm_engine *t_engine(aorm_loop *loop, const aorm_engine_options *o) {
    aorm_engine_options eo;
    if (o) eo = *o;
    else aorm_engine_options_init(&eo);
    eo.conninfo = t_dsn();
    if (t_via_pgbouncer()) eo.pgbouncer = true;
    aorm_engine *e = aorm_engine_new(loop, &eo);
    cr_assert_not_null(e, "aorm_engine_new failed");
    return e;
}

int t_never(void *arg) {
    (void)arg;
    return 0;
}

void t_settle(struct ev_loop *evl, double seconds) { t_run_until_fn(evl, t_never, NULL, seconds); }

/* ---- echo capture ------------------------------------------------------------------ */

void t_echo_init(t_echo *e) {
    memset(e, 0, sizeof(*e));
    e->on = true;
}

void t_echo_log(aorm_log_level level, const char *message, void *user) {
    t_echo *e = user;
    if (level != AORM_LOG_SQL || !e->on) return;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 64;
        char **p = realloc(e->lines, cap * sizeof(*p));
        cr_assert_not_null(p, "out of memory recording the echo");
        e->lines = p;
        e->cap = cap;
    }
    e->lines[e->n] = strdup(message);
    cr_assert_not_null(e->lines[e->n], "out of memory recording the echo");
    e->n++;
}

void t_echo_attach(t_echo *e, aorm_engine_options *o, bool with_params) {
    o->log = t_echo_log;
    o->log_user = e;
    o->log_level = AORM_LOG_SQL;
    o->echo = true;
    o->echo_params = with_params;
}

void t_echo_clear(t_echo *e) {
    for (size_t i = 0; i < e->n; i++) free(e->lines[i]);
    e->n = 0;
}

void t_echo_free(t_echo *e) {
    t_echo_clear(e);
    free(e->lines);
    e->lines = NULL;
    e->cap = 0;
}

int t_echo_count(const t_echo *e, const char *needle) {
    int n = 0;
    for (size_t i = 0; i < e->n; i++)
        if (strstr(e->lines[i], needle)) n++;
    return n;
}

int t_echo_find(const t_echo *e, const char *prefix) {
    for (size_t i = 0; i < e->n; i++)
        if (strncmp(e->lines[i], prefix, strlen(prefix)) == 0) return (int)i;
    return -1;
}

int t_echo_count_prefix(const t_echo *e, const char *prefix) {
    int n = 0;
    for (size_t i = 0; i < e->n; i++)
        if (strncmp(e->lines[i], prefix, strlen(prefix)) == 0) n++;
    return n;
}

void t_echo_dump(const t_echo *e) {
    for (size_t i = 0; i < e->n; i++) cr_log_info("sql[%zu] %s", i, e->lines[i]);
}

/* ---- statement counters ---------------------------------------------------------- */

aorm_engine_stats t_stats(const aorm_engine *e) {
    aorm_engine_stats st;
    memset(&st, 0, sizeof(st));
    aorm_engine_stats_get(e, &st);
    return st;
}

typedef struct idle_want {
    const aorm_engine *e;
    int n;
} idle_want;

static int idle_at_least(void *arg) {
    idle_want *w = arg;
    return t_stats(w->e).idle >= w->n;
}

void t_wait_idle(struct ev_loop *evl, const aorm_engine *e, int n, double seconds) {
    idle_want w = {e, n};
    cr_assert(t_run_until_prompt(evl, idle_at_least, &w, seconds), "the pool never had %d idle connections", n);
}

/* ---- time and backends -------------------------------------------------------------- */

double t_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void t_pg_terminate(PGconn *c, long pid) {
    /* with a timeout, pg_terminate_backend waits until the backend is gone */
    char *v = t_pg_execf(c, "SELECT pg_terminate_backend(%ld, 5000)", pid);
    cr_assert(v && strcmp(v, "t") == 0, "pg_terminate_backend(%ld) returned %s", pid, v ? v : "NULL");
    free(v);
}

/* ---- the sandbox Redis ---------------------------------------------------------- */

void t_redis_sandbox(aorm_redis_options *o) {
    o->host = t_redis_host();
    o->port = t_redis_port();
    const char *pw = getenv("AORM_TEST_REDIS_PASSWORD");
    const char *user = getenv("AORM_TEST_REDIS_USER");
    if (pw && *pw) o->password = pw;
    if (pw && *pw && user && *user) o->username = user;
}

pid_t t_sandbox_redis_pid(void) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/redis.pid", t_env("AORM_SANDBOX_DIR"));
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no %s", path);
    long pid = 0;
    cr_assert_eq(fscanf(f, "%ld", &pid), 1, "%s holds no pid", path);
    fclose(f);
    cr_assert_gt(pid, 1);
    return (pid_t)pid;
}

/* ---- files ------------------------------------------------------------------------ */

char *t_read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    cr_assert_not_null(m, "out of memory reading %s", path);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) fwrite(chunk, 1, n, m);
    fclose(m);
    fclose(f);
    cr_assert_not_null(buf, "out of memory reading %s", path);
    return buf;
}

/* ---- result recorder ---------------------------------------------------------------- */

int t_rec_seq;
int t_rec_mark;

bool t_rec_err(t_rec *r, const aorm_error *err) {
    r->calls++;
    if (r->calls > 1) return false; /* the first outcome is kept; the count tells the rest */
    r->at = t_mono();
    r->seq = ++t_rec_seq;
    r->mark = t_rec_mark;
    r->code = err ? err->code : 0;
    snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", err ? err->sqlstate : "");
    snprintf(r->constraint, sizeof(r->constraint), "%s", err && err->constraint ? err->constraint : "");
    snprintf(r->msg, sizeof(r->msg), "%s", err && err->message ? err->message : "");
    snprintf(r->detail, sizeof(r->detail), "%s", err && err->detail ? err->detail : "");
    return true;
}

static void rec_result(t_rec *r, aorm_result *res) {
    r->nrows = aorm_result_nrows(res);
    r->affected = aorm_result_affected(res);
    if (r->nrows > 0 && aorm_result_ncols(res) > 0 && aorm_result_int64(res, 0, 0, &r->ival) == 0) r->has_int = 1;
}

void t_rec_take(t_rec *r, aorm_result *res, const aorm_error *err) {
    if (!t_rec_err(r, err) || err) return;
    rec_result(r, res);
}

void t_rec_on_result(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    t_rec_take(user, res, err);
}

void t_rec_on_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    (void)e;
    t_rec *r = user;
    if (!t_rec_err(r, err)) return;
    r->conn = c;
}

void t_rec_on_obj(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    (void)s;
    t_rec *r = user;
    if (err) cr_assert_null(obj, "an object came with an error");
    if (!t_rec_err(r, err)) return;
    r->obj = obj;
}

static void rec_objs(t_rec *r, aorm_objects *objs, const aorm_error *err, bool copy) {
    if (err) cr_assert_null(objs, "objects came with an error");
    else cr_assert_not_null(objs, "neither objects nor an error");
    if (!t_rec_err(r, err) || err) return;
    r->len = objs->len;
    r->obj = objs->len ? objs->items[0] : NULL;
    if (!copy) return;
    r->items = malloc((objs->len + 1) * sizeof(void *));
    cr_assert_not_null(r->items);
    if (objs->len) memcpy(r->items, objs->items, objs->len * sizeof(void *));
}

void t_rec_on_objs(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    (void)s;
    rec_objs(user, objs, err, false);
}

void t_rec_on_items(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    (void)s;
    rec_objs(user, objs, err, true);
}

void t_rec_on_done(aorm_session *s, const aorm_error *err, void *user) {
    (void)s;
    t_rec_err(user, err);
}

void t_rec_on_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) {
    (void)s;
    t_rec *r = user;
    if (err) cr_assert_null(res, "a result came with an error");
    if (!t_rec_err(r, err) || err) return;
    rec_result(r, res);
}

void t_rec_free(t_rec *r) {
    free(r->items);
    memset(r, 0, sizeof(*r));
}

typedef struct rec_set {
    t_rec *r;
    int n;
} rec_set;

static int recs_all_called(void *arg) {
    rec_set *rs = arg;
    for (int i = 0; i < rs->n; i++)
        if (rs->r[i].calls == 0) return 0;
    return 1;
}

bool t_rec_wait_all(struct ev_loop *evl, t_rec *r, int n, double seconds) {
    rec_set rs = {r, n};
    return t_run_until_prompt(evl, recs_all_called, &rs, seconds) != 0;
}

int t_recs_called(void *arg) {
    t_rec **rs = arg;
    for (int i = 0; rs[i]; i++)
        if (rs[i]->calls == 0) return 0;
    return 1;
}

const char *t_rec_str(const t_rec *r) {
    static char buf[640];
    if (r->code == 0) snprintf(buf, sizeof(buf), "OK");
    else snprintf(buf, sizeof(buf), "%s [%s] %s", aorm_errname(r->code), r->sqlstate, r->msg);
    return buf;
}
