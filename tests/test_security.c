/* test_security.c -- aorm connects the way production does: TLS verified
 * against the host name (resolved on the engine's helper thread, passed to
 * libpq as hostaddr beside host), SCRAM-SHA-256, client certificates,
 * channel binding; it refuses what it must refuse with AORM_EAUTH and a
 * message naming the cause, without a retry storm; secrets stay out of
 * logs, the echo and errors; the restricted role is refused DDL; Redis
 * asks for a user and a password. Runs against the secure sandbox
 * (scripts/sandbox without --insecure): everything it needs comes from
 * there, and its absence fails the tests. */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "aorm/sql.h"
#include "support.h"

#define WAIT 30.0
#define MAXLOG 512

/* ==========================================================================
 * A loop, an engine, and everything it logged
 * ========================================================================== */

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    char *logs[MAXLOG];
    int nlogs;
} env;

static void on_log(aorm_log_level level, const char *message, void *user) {
    env *t = user;
    if (t->nlogs < MAXLOG) t->logs[t->nlogs++] = strdup(message);
}

static void env_opts(aorm_engine_options *o, const char *conninfo) {
    aorm_engine_options_init(o);
    o->conninfo = conninfo;
    o->log_level = AORM_LOG_DEBUG;
    o->echo = true;
    o->echo_params = true;
    o->connect_timeout = 10;
}

static void env_open(env *t, const aorm_engine_options *o) {
    memset(t, 0, sizeof(*t));
    t_loop_open(&t->evl, &t->loop);
    aorm_engine_options mine = *o;
    mine.log = on_log;
    mine.log_user = t;
    t->e = aorm_engine_new(t->loop, &mine);
    cr_assert_not_null(t->e, "aorm_engine_new failed");
}

static void env_close(env *t) {
    aorm_engine_free(t->e);
    t->e = NULL;
    t_loop_close(&t->evl, &t->loop);
    for (int i = 0; i < t->nlogs; i++) free(t->logs[i]);
    t->nlogs = 0;
}

/* Asserts that no log line of t contains needle. */
static void assert_not_logged(const env *t, const char *needle, const char *what) {
    for (int i = 0; i < t->nlogs; i++)
        cr_assert(!strstr(t->logs[i], needle), "%s was logged: %s", what, t->logs[i]);
}

static int log_count(const env *t, const char *needle) {
    int n = 0;
    for (int i = 0; i < t->nlogs; i++)
        if (strstr(t->logs[i], needle)) n++;
    return n;
}

/* One statement's outcome. */
typedef struct outcome {
    int done;
    aorm_error *err;
    char text[512]; /* first value of the first row, as text */
    int nrows;
} outcome;

static void on_result(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    outcome *o = user;
    o->done++;
    if (err) {
        o->err = aorm_error_copy(err);
        return;
    }
    o->nrows = aorm_result_nrows(res);
    const char *v;
    size_t len;
    if (o->nrows > 0 && aorm_result_ncols(res) > 0 && aorm_result_text(res, 0, 0, &v, &len) == 0)
        snprintf(o->text, sizeof(o->text), "%.*s", (int)len, v);
}

static void outcome_free(outcome *o) {
    aorm_error_free(o->err);
    memset(o, 0, sizeof(*o));
}

static void run(env *t, const char *sql, const aorm_params *p, unsigned flags, outcome *o) {
    memset(o, 0, sizeof(*o));
    aorm_exec_options xo = {.flags = flags | AORM_EXEC_TEXT_RESULT};
    cr_assert_eq(aorm_engine_execute(t->e, sql, p, &xo, on_result, o), 0);
    cr_assert(t_run_until(t->evl, &o->done, WAIT), "%s: no answer within %.0f s", sql, WAIT);
}

static void run_ok(env *t, const char *sql, outcome *o) {
    run(t, sql, NULL, 0, o);
    cr_assert_null(o->err, "%s: %s %s: %s | %s", sql, aorm_errname(o->err->code), o->err->sqlstate,
                   o->err->message, o->err->detail);
}

/* Opens an engine on conninfo, runs one statement and expects it to fail
 * to connect with code, the message containing cause. Returns the error
 * (owned by the caller) after checking that it and the log do not hold
 * `secret` (may be NULL). */
static aorm_error *expect_refused(const char *conninfo, int code, const char *cause, const char *secret) {
    aorm_engine_options o;
    env_opts(&o, conninfo);
    env t;
    env_open(&t, &o);
    outcome r;
    run(&t, "SELECT 1", NULL, 0, &r);
    cr_assert_not_null(r.err, "connected, but it should have been refused (%s)", cause);
    cr_assert_eq(r.err->code, code, "expected %s, got %s %s: %s | %s", aorm_errname(code),
                 aorm_errname(r.err->code), r.err->sqlstate, r.err->message, r.err->detail);
    bool named = strstr(r.err->message, cause) || strstr(r.err->detail, cause);
    cr_assert(named, "the error does not name the cause (\"%s\"): %s | %s", cause, r.err->message, r.err->detail);
    cr_assert(log_count(&t, cause) >= 1, "the failure (\"%s\") was not logged", cause);
    aorm_engine_stats st;
    aorm_engine_stats_get(t.e, &st);
    cr_assert_eq(st.connects, 0, "a connection was made");
    cr_assert_geq(st.connect_failures, 1);
    if (secret) {
        assert_not_logged(&t, secret, "the password");
        cr_assert(!strstr(r.err->message, secret) && !strstr(r.err->detail, secret), "the password is in the error");
    }
    aorm_error *err = r.err;
    r.err = NULL;
    env_close(&t);
    return err;
}

static void random_hex(char *out, size_t bytes) {
    unsigned char b[32];
    cr_assert(bytes <= sizeof(b));
    cr_assert_eq(getrandom(b, bytes, 0), (ssize_t)bytes);
    for (size_t i = 0; i < bytes; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

/* ==========================================================================
 * 1. TLS, verified against the host name aorm resolved itself
 * ========================================================================== */

/* (A test that ends at once, beside another, makes Criterion's runner leak
 * its timeout record under ASan: the DSN checks live in a connecting test.) */
Test(tls, connects_over_verified_tls_with_scram, .timeout = 60) {
    const char *dsn = t_owner_dsn();
    cr_assert(strstr(dsn, "host=localhost "), "the sandbox DSN should name the host: %s", dsn);
    cr_assert(!strstr(dsn, "hostaddr"), "no hostaddr: the engine resolves the name itself: %s", dsn);
    cr_assert(strstr(dsn, "sslmode=verify-full"), "%s", dsn);
    cr_assert(strstr(dsn, "sslrootcert="), "%s", dsn);
    cr_assert(!strstr(dsn, "password="), "the password belongs in the passfile: %s", dsn);
    aorm_engine_options o;
    env_opts(&o, t_owner_dsn());
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT ssl::text || ' ' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &r);
    cr_assert(strncmp(r.text, "true TLSv1.", 11) == 0, "not TLS: %s", r.text);
    outcome_free(&r);
    run_ok(&t, "SELECT host(inet_server_addr())", &r);
    cr_assert_str_eq(r.text, "127.0.0.1", "the name resolved to %s", r.text);
    outcome_free(&r);
    /* the password was checked with SCRAM: that is what the server keeps */
    run_ok(&t, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = current_user", &r);
    cr_assert_str_eq(r.text, "SCRAM-SHA-256$", "%s", r.text);
    outcome_free(&r);
    run_ok(&t, "SELECT current_setting('password_encryption')", &r);
    cr_assert_str_eq(r.text, "scram-sha-256");
    outcome_free(&r);
    env_close(&t);
}

Test(tls, verifies_host_not_hostaddr, .timeout = 60) {
    /* a name given with hostaddr is not looked up: libpq connects to the
     * address and checks the certificate against the name */
    char *ok = t_conninfo(t_owner_dsn(), "host", "localhost", "hostaddr", "127.0.0.1", NULL);
    aorm_engine_options o;
    env_opts(&o, ok);
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &r);
    cr_assert_str_eq(r.text, "true");
    outcome_free(&r);
    env_close(&t);
    free(ok);

    char *bad = t_conninfo(t_owner_dsn(), "host", "not-in-the-certificate.invalid", "hostaddr", "127.0.0.1", NULL);
    aorm_error *err = expect_refused(bad, AORM_EAUTH, "does not match host name", NULL);
    cr_assert(strstr(err->message, "not-in-the-certificate.invalid") || strstr(err->detail, "not-in-the-certificate.invalid"),
              "the error does not name the host: %s", err->message);
    aorm_error_free(err);
    free(bad);
}

Test(tls, refuses_an_address_the_certificate_does_not_name, .timeout = 60) {
    /* host is an address the certificate does not name (it names
     * localhost and 127.0.0.1); hostaddr makes libpq reach the server */
    char *bad = t_conninfo(t_owner_dsn(), "host", "127.0.0.2", "hostaddr", "127.0.0.1", NULL);
    aorm_error *err = expect_refused(bad, AORM_EAUTH, "does not match host name", NULL);
    cr_assert(strstr(err->message, "\"127.0.0.2\""), "%s", err->message);
    aorm_error_free(err);
    /* sslmode from the conninfo is honoured: verify-ca checks the chain only */
    char *ca_only = t_conninfo(bad, "sslmode", "verify-ca", NULL);
    aorm_engine_options o;
    env_opts(&o, ca_only);
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT host(inet_server_addr()) || ' ' || ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &r);
    cr_assert_str_eq(r.text, "127.0.0.1 true");
    outcome_free(&r);
    env_close(&t);
    free(ca_only);
    free(bad);
}

Test(tls, refuses_a_certificate_of_another_ca, .timeout = 60) {
    char *other = t_tls_file("other-ca.crt");
    char *bad = t_conninfo(t_owner_dsn(), "sslrootcert", other, NULL);
    aorm_error_free(expect_refused(bad, AORM_EAUTH, "certificate verify failed", NULL));
    free(bad);
    /* a root file that does not exist is refused too, before any traffic */
    bad = t_conninfo(t_owner_dsn(), "sslrootcert", "/nonexistent/root.crt", NULL);
    aorm_error_free(expect_refused(bad, AORM_EAUTH, "root certificate file", NULL));
    free(bad);
    free(other);
}

/* ---- the TLS handshake never blocks the loop ----------------------------- */

/* A 5 ms timer on the loop. Between two beats the loop's thread either ran
 * (aorm's work and libev's), slept (in poll, or blocked in a call), or
 * waited for a CPU the kernel gave to another process. The last is not the
 * loop's doing (the machine may be loaded), so a gap is the wall time
 * between beats minus that wait (from /proc/thread-self/schedstat: CPU
 * time, run-queue wait, in ns); the raw wall gap is kept for the record. */
typedef struct heartbeat {
    ev_timer w;
    double last, last_wait;
    double max_gap, max_wall_gap;
    int ticks;
} heartbeat;

static double runqueue_wait(void) {
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    cr_assert_not_null(f, "/proc/thread-self/schedstat: %s", strerror(errno));
    unsigned long long cpu = 0, wait = 0;
    cr_assert_eq(fscanf(f, "%llu %llu", &cpu, &wait), 2);
    fclose(f);
    return (double)wait * 1e-9;
}

static void on_beat(struct ev_loop *evl, ev_timer *w, int revents) {
    heartbeat *h = (heartbeat *)w;
    double now = ev_time(), wait = runqueue_wait();
    if (h->last > 0) {
        double wall = now - h->last, gap = wall - (wait - h->last_wait);
        if (gap > h->max_gap) h->max_gap = gap;
        if (wall > h->max_wall_gap) h->max_wall_gap = wall;
    }
    h->last = now;
    h->last_wait = wait;
    h->ticks++;
}

typedef struct held {
    int done;
    aorm_conn *c;
    aorm_error *err;
    outcome q;
} held;

static void on_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    held *h = user;
    if (err) {
        h->err = aorm_error_copy(err);
        h->done = 1;
        return;
    }
    h->c = c;
    aorm_exec_options xo = {.flags = AORM_EXEC_TEXT_RESULT};
    int rc = aorm_conn_execute(c, "SELECT pg_backend_pid()::text || ' ' || ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                               NULL, &xo, on_result, &h->q);
    cr_assert_eq(rc, 0);
}

static int all_held(void *arg) {
    held *h = arg;
    for (int i = 0; i < 10; i++)
        if (!h[i].done && !h[i].q.done) return 0;
    return 1;
}

Test(tls, handshakes_never_block_the_loop, .timeout = 60) {
    aorm_engine_options o;
    env_opts(&o, t_owner_dsn());
    o.pool_size = 10;
    o.max_overflow = 0;
    o.echo = false;
    o.log_level = AORM_LOG_INFO;
    env t;
    env_open(&t, &o);
    heartbeat hb = {0};
    ev_timer_init(&hb.w, on_beat, 0.005, 0.005);
    ev_timer_start(t.evl, &hb.w);
    held h[10];
    memset(h, 0, sizeof(h));
    double t0 = ev_time();
    for (int i = 0; i < 10; i++) cr_assert_eq(aorm_engine_acquire(t.e, on_conn, &h[i]), 0);
    cr_assert(t_run_until_fn(t.evl, all_held, h, 60), "the 10 connections did not open");
    double elapsed = ev_time() - t0;
    ev_timer_stop(t.evl, &hb.w);
    for (int i = 0; i < 10; i++) {
        cr_assert_null(h[i].err, "acquire %d: %s", i, h[i].err->message);
        cr_assert_null(h[i].q.err, "query %d: %s", i, h[i].q.err->message);
        cr_assert(strstr(h[i].q.text, " true"), "connection %d is not TLS: %s", i, h[i].q.text);
        for (int j = 0; j < i; j++) cr_assert_str_neq(h[i].q.text, h[j].q.text, "two acquires got one backend");
        aorm_conn_release(h[i].c);
    }
    aorm_engine_stats st;
    aorm_engine_stats_get(t.e, &st);
    cr_assert_eq(st.connects, 10);
    t_log("handshakes_never_block_the_loop: %.0f ms, %d beats, max gap %.1f ms (wall %.1f ms)", elapsed * 1000,
          hb.ticks, hb.max_gap * 1000, hb.max_wall_gap * 1000);
    cr_assert(hb.ticks >= 2, "the heartbeat did not run while the connections opened (%d ticks in %.0f ms)",
              hb.ticks, elapsed * 1000);
    /* Each connection costs the loop some 5-8 ms of CPU (the handshake and,
     * mostly, SCRAM's key derivation): done all in one turn, ten of them
     * held the loop for 45-70 ms; spread over turns, 10-25 ms at most. */
    cr_assert_leq(hb.max_gap, 0.040, "the loop stalled for %.1f ms while TLS connections opened (wall %.1f ms)",
                  hb.max_gap * 1000, hb.max_wall_gap * 1000);
    for (int i = 0; i < 10; i++) outcome_free(&h[i].q);
    env_close(&t);
}

/* ---- client certificates and channel binding ----------------------------- */

Test(tls, client_certificate_authenticates_its_role, .timeout = 60) {
    char *crt = t_tls_file("aorm_cert.crt"), *key = t_tls_file("aorm_cert.key");
    char *dsn = t_conninfo(t_owner_dsn(), "user", "aorm_cert", "sslcert", crt, "sslkey", key, NULL);
    aorm_engine_options o;
    env_opts(&o, dsn);
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT current_user || ' ' || client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &r);
    cr_assert_str_eq(r.text, "aorm_cert /CN=aorm_cert");
    outcome_free(&r);
    env_close(&t);
    free(dsn);

    /* the same role without its certificate is refused by the server */
    dsn = t_conninfo(t_owner_dsn(), "user", "aorm_cert", "sslcert", "/nonexistent/client.crt", "sslkey",
                     "/nonexistent/client.key", NULL);
    aorm_error_free(expect_refused(dsn, AORM_EAUTH, "certificate", NULL));
    free(dsn);
    free(crt);
    free(key);
}

Test(tls, channel_binding_require_binds_over_tls, .timeout = 60) {
    char *dsn = t_conninfo(t_owner_dsn(), "channel_binding", "require", NULL);
    aorm_engine_options o;
    env_opts(&o, dsn);
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT current_user", &r);
    cr_assert_str_eq(r.text, "aorm");
    outcome_free(&r);
    env_close(&t);
    free(dsn);
}

Test(tls, channel_binding_require_refuses_md5, .timeout = 60) {
    /* aorm_md5 authenticates with md5 over TLS: no channel binding possible */
    char *plain = t_conninfo(t_owner_dsn(), "user", "aorm_md5", NULL);
    aorm_engine_options o;
    env_opts(&o, plain);
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT current_user", &r);
    cr_assert_str_eq(r.text, "aorm_md5", "the md5 role itself must work");
    outcome_free(&r);
    env_close(&t);
    char *bound = t_conninfo(plain, "channel_binding", "require", NULL);
    aorm_error_free(expect_refused(bound, AORM_EAUTH, "channel binding", NULL));
    free(bound);
    free(plain);
}

/* ==========================================================================
 * 2. A server without TLS: answers the SSLRequest with 'N', then, to a
 *    client that goes on without TLS, asks for a clear-text password
 * ========================================================================== */

typedef struct fake_client {
    ev_io w;
    struct fake_pg *srv;
    unsigned char buf[4096];
    size_t len;
    int stage; /* 0 before the SSLRequest or startup, 1 startup answered */
} fake_client;

typedef struct fake_pg {
    ev_io accept_w;
    int fd;
    int port;
    int ssl_requests;
    int startups;
    int passwords; /* 'p' messages: a password sent in the clear */
    fake_client *clients[16];
    int nclients;
} fake_pg;

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void fake_read(struct ev_loop *evl, ev_io *w, int revents) {
    fake_client *c = (fake_client *)w;
    ssize_t n = read(w->fd, c->buf + c->len, sizeof(c->buf) - c->len);
    if (n <= 0) {
        ev_io_stop(evl, w);
        close(w->fd);
        w->fd = -1;
        return;
    }
    c->len += (size_t)n;
    for (;;) {
        if (c->stage == 0) {
            /* length-prefixed, no type byte: SSLRequest, GSSENCRequest or startup */
            if (c->len < 8) return;
            uint32_t len = be32(c->buf), code = be32(c->buf + 4);
            if (c->len < len) return;
            if (code == 80877103 || code == 80877104) {
                if (code == 80877103) c->srv->ssl_requests++;
                cr_assert_eq(write(w->fd, "N", 1), 1);
            } else {
                c->srv->startups++;
                /* AuthenticationCleartextPassword */
                static const unsigned char ask[] = {'R', 0, 0, 0, 8, 0, 0, 0, 3};
                cr_assert_eq(write(w->fd, ask, sizeof(ask)), (ssize_t)sizeof(ask));
                c->stage = 1;
            }
            memmove(c->buf, c->buf + len, c->len - len);
            c->len -= len;
            continue;
        }
        if (c->len < 5) return;
        uint32_t len = be32(c->buf + 1);
        if (c->len < len + 1) return;
        if (c->buf[0] == 'p') c->srv->passwords++;
        memmove(c->buf, c->buf + len + 1, c->len - len - 1);
        c->len -= len + 1;
    }
}

static void fake_accept(struct ev_loop *evl, ev_io *w, int revents) {
    fake_pg *s = (fake_pg *)w;
    int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    cr_assert_lt(s->nclients, 16);
    fake_client *c = calloc(1, sizeof(*c));
    cr_assert_not_null(c);
    c->srv = s;
    s->clients[s->nclients++] = c;
    ev_io_init(&c->w, fake_read, fd, EV_READ);
    ev_io_start(evl, &c->w);
}

static void fake_start(fake_pg *s, struct ev_loop *evl) {
    memset(s, 0, sizeof(*s));
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    cr_assert_geq(s->fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(s->fd, 16), 0);
    socklen_t al = sizeof(a);
    cr_assert_eq(getsockname(s->fd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
    ev_io_init(&s->accept_w, fake_accept, s->fd, EV_READ);
    ev_io_start(evl, &s->accept_w);
}

static void fake_stop(fake_pg *s, struct ev_loop *evl) {
    ev_io_stop(evl, &s->accept_w);
    close(s->fd);
    for (int i = 0; i < s->nclients; i++) {
        if (s->clients[i]->w.fd >= 0) {
            ev_io_stop(evl, &s->clients[i]->w);
            close(s->clients[i]->w.fd);
        }
        free(s->clients[i]);
    }
}

/* Runs one statement against the fake server with conninfo extra keys;
 * returns the error. */
static aorm_error *against_fake(fake_pg *s, env *t, const char *k1, const char *v1, const char *k2, const char *v2) {
    memset(t, 0, sizeof(*t));
    t_loop_open(&t->evl, &t->loop);
    fake_start(s, t->evl);
    char port[16];
    snprintf(port, sizeof(port), "%d", s->port);
    char *dsn = t_conninfo(t_owner_dsn(), "host", "127.0.0.1", "port", port, k1, v1, k2, v2, NULL);
    aorm_engine_options o;
    env_opts(&o, dsn);
    o.log = on_log;
    o.log_user = t;
    t->e = aorm_engine_new(t->loop, &o);
    cr_assert_not_null(t->e);
    outcome r;
    run(t, "SELECT 1", NULL, 0, &r);
    free(dsn);
    cr_assert_not_null(r.err, "the fake server let a statement through");
    return r.err;
}

static void fake_done(fake_pg *s, env *t) {
    fake_stop(s, t->evl);
    env_close(t);
}

Test(refusals, server_without_tls_under_sslmode_require, .timeout = 60) {
    const char *modes[] = {"require", "verify-ca", "verify-full"};
    for (int i = 0; i < 3; i++) {
        fake_pg s;
        env t;
        aorm_error *err = against_fake(&s, &t, "sslmode", modes[i], NULL, NULL);
        cr_assert_eq(err->code, AORM_EAUTH, "sslmode=%s: %s: %s", modes[i], aorm_errname(err->code), err->message);
        cr_assert(strstr(err->message, "server does not support SSL, but SSL was required"), "sslmode=%s: %s",
                  modes[i], err->message);
        cr_assert_geq(s.ssl_requests, 1, "libpq never asked for TLS");
        cr_assert_eq(s.startups, 0, "sslmode=%s went on without TLS", modes[i]);
        aorm_error_free(err);
        fake_done(&s, &t);
    }
}

Test(refusals, channel_binding_require_against_a_server_that_cannot_bind, .timeout = 60) {
    /* no TLS, and a request for a clear-text password: with channel
     * binding required the password is never sent */
    fake_pg s;
    env t;
    aorm_error *err = against_fake(&s, &t, "sslmode", "prefer", "channel_binding", "require");
    cr_assert_eq(err->code, AORM_EAUTH, "%s: %s", aorm_errname(err->code), err->message);
    cr_assert(strstr(err->message, "channel binding"), "%s", err->message);
    cr_assert_eq(s.startups, 1, "the client never got to authentication");
    cr_assert_eq(s.passwords, 0, "the password went to a server that cannot bind the channel");
    aorm_error_free(err);
    fake_done(&s, &t);
}

/* ==========================================================================
 * 3. Passwords: wrong, missing; no retry storm; nothing in clear
 * ========================================================================== */

Test(refusals, wrong_password, .timeout = 60) {
    char wrong[64] = "wrong-";
    random_hex(wrong + 6, 16);
    char *dsn = t_conninfo(t_owner_dsn(), "password", wrong, NULL);
    aorm_error *err = expect_refused(dsn, AORM_EAUTH, "password authentication failed", wrong);
    cr_assert(strstr(err->message, "\"aorm\"") || strstr(err->detail, "\"aorm\""), "the user is not named: %s",
              err->message);
    aorm_error_free(err);
    free(dsn);
}

Test(refusals, missing_password, .timeout = 60) {
    /* a passfile that does not exist and no password= */
    char *dsn = t_conninfo(t_owner_dsn(), "user", "aorm_app", "passfile", "/nonexistent/pgpass", NULL);
    aorm_error_free(expect_refused(dsn, AORM_EAUTH, "no password supplied", NULL));
    free(dsn);
}

typedef struct storm {
    ev_timer w; /* first: the timer callback's pointer is the storm's */
    env *t;
    int submitted;
    int answered;
    int auth_errors;
    int other_errors;
    char other[256];
} storm;

static void storm_cb(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    storm *s = user;
    s->answered++;
    if (!err) return;
    if (err->code == AORM_EAUTH) s->auth_errors++;
    else if (err->code != AORM_ECANCELED) {
        s->other_errors++;
        snprintf(s->other, sizeof(s->other), "%s %s: %s", aorm_errname(err->code), err->sqlstate, err->message);
    }
}

static void storm_tick(struct ev_loop *evl, ev_timer *w, int revents) {
    storm *s = (storm *)w;
    if (aorm_engine_execute(s->t->e, "SELECT 1", NULL, NULL, storm_cb, s) == 0) s->submitted++;
}


Test(refusals, no_retry_storm_on_a_wrong_password, .timeout = 60) {
    char wrong[64] = "wrong-";
    random_hex(wrong + 6, 16);
    char *dsn = t_conninfo(t_owner_dsn(), "password", wrong, NULL);
    aorm_engine_options o;
    env_opts(&o, dsn);
    o.echo = false;
    o.reconnect_min = 0.05;
    o.reconnect_max = 2;
    env t;
    env_open(&t, &o);
    storm s = {.t = &t};
    /* a caller that keeps asking: a statement every 10 ms for 2 s */
    ev_timer_init(&s.w, storm_tick, 0., 0.010);
    ev_timer_start(t.evl, &s.w);
    t_settle(t.evl, 2.0);
    ev_timer_stop(t.evl, &s.w);
    aorm_engine_stats st;
    aorm_engine_stats_get(t.e, &st);
    t_log("no_retry_storm: %d statements, %llu connection attempts in 2 s", s.submitted,
          (unsigned long long)st.connect_failures);
    cr_assert_geq(s.submitted, 100, "only %d statements were submitted", s.submitted);
    cr_assert_eq(st.connects, 0);
    /* backoff 0.05 s doubling to 2 s: attempts at about 0, .05, .15, .35, .75, 1.55 s */
    cr_assert_geq(st.connect_failures, 2, "the engine did not try again");
    cr_assert_leq(st.connect_failures, 8, "%llu connection attempts in 2 s for %d statements: a retry storm",
                  (unsigned long long)st.connect_failures, s.submitted);
    cr_assert_eq(s.other_errors, 0, "a statement failed with something else than AORM_EAUTH: %s", s.other);
    cr_assert_geq(s.auth_errors, s.submitted / 2, "%d of %d statements heard AORM_EAUTH", s.auth_errors,
                  s.submitted);
    assert_not_logged(&t, wrong, "the password");
    int failures_logged = log_count(&t, "password authentication failed");
    cr_assert_eq((uint64_t)failures_logged, st.connect_failures, "%d failures logged for %llu attempts",
                 failures_logged, (unsigned long long)st.connect_failures);
    env_close(&t); /* what still waits is cancelled */
    cr_assert_eq(s.answered, s.submitted);
    free(dsn);
}

Test(secrets, test_kit_records_errors_without_the_password, .timeout = 60) {
    /* the real password in the conninfo (it works), then a wrong one: the
     * kit's file for this process has both engines' lines and the error,
     * and neither password */
    char real[128];
    cr_assert(t_sandbox_password("aorm", real, sizeof(real)), "the sandbox has no passwords (--insecure?)");
    char *good = t_conninfo(t_owner_dsn(), "password", real, "passfile", "/nonexistent/pgpass", NULL);
    aorm_engine_options o;
    env_opts(&o, good);
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT current_user", &r);
    outcome_free(&r);
    assert_not_logged(&t, real, "the password");
    env_close(&t);

    char wrong[64] = "wrong-";
    random_hex(wrong + 6, 16);
    char *bad = t_conninfo(good, "password", wrong, NULL);
    aorm_error_free(expect_refused(bad, AORM_EAUTH, "password authentication failed", wrong));

    char path[4096];
    cr_assert(t_log_path(path, sizeof(path)), "AORM_TEST_LOG_DIR is not set");
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "the test kit wrote no log for this process: %s", path);
    char line[4096];
    int engine_lines = 0, error_lines = 0;
    while (fgets(line, sizeof(line), f)) {
        cr_assert(!strstr(line, real) && !strstr(line, wrong), "a password is in the kit's log: %s", line);
        if (strncmp(line, "engine ", 7) == 0) engine_lines++;
        if (strncmp(line, "error ", 6) == 0 && strstr(line, "password authentication failed")) error_lines++;
    }
    fclose(f);
    cr_assert_geq(engine_lines, 3, "the kit recorded %d engine lines", engine_lines);
    cr_assert_geq(error_lines, 1, "the kit did not record the refusal");
    free(bad);
    free(good);
}

Test(secrets, a_conninfo_libpq_cannot_parse_is_logged_without_its_password, .timeout = 30) {
    char pw[40];
    random_hex(pw, 12);
    /* libpq quotes the token (a bad percent escape in the password) or the
     * whole URI (an unterminated IPv6 address) in its message */
    char bad[3][256];
    snprintf(bad[0], sizeof(bad[0]), "postgresql://aorm:%s%%zz@localhost/aorm", pw);
    snprintf(bad[1], sizeof(bad[1]), "postgresql://aorm:%s@[::1/aorm", pw);
    snprintf(bad[2], sizeof(bad[2]), "host=localhost password=%s nosuchoption=1", pw);
    for (int i = 0; i < 3; i++) {
        env t;
        memset(&t, 0, sizeof(t));
        t_loop_open(&t.evl, &t.loop);
        aorm_engine_options o;
        env_opts(&o, bad[i]);
        o.log = on_log;
        o.log_user = &t;
        cr_assert_null(aorm_engine_new(t.loop, &o), "an engine from %d", i);
        cr_assert_geq(log_count(&t, "invalid conninfo"), 1, "case %d: the reason was not logged", i);
        assert_not_logged(&t, pw, "the password of an unparsable conninfo");
        t_loop_close(&t.evl, &t.loop);
        for (int j = 0; j < t.nlogs; j++) free(t.logs[j]);
    }
}

/* ==========================================================================
 * 4. Statements marked sensitive
 * ========================================================================== */

Test(secrets, sensitive_parameters_stay_out_of_the_echo_and_errors, .timeout = 60) {
    char token[64] = "tok-";
    random_hex(token + 4, 16);
    PGconn *pg = t_pg();
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS sec_tokens_%d; CREATE TABLE sec_tokens_%d (token text PRIMARY KEY)",
             (int)getpid(), (int)getpid());
    free(t_pg_exec(pg, sql));
    char insert[128];
    snprintf(insert, sizeof(insert), "INSERT INTO sec_tokens_%d (token) VALUES ($1)", (int)getpid());

    for (int sensitive = 1; sensitive >= 0; sensitive--) {
        unsigned flag = sensitive ? AORM_EXEC_SENSITIVE : 0;
        aorm_engine_options o;
        env_opts(&o, t_owner_dsn());
        env t;
        env_open(&t, &o);
        aorm_params p;
        aorm_params_init(&p);
        outcome r;

        /* success: the echo shows the statement, not the value */
        aorm_params_text(&p, token);
        run(&t, "SELECT length($1::text)::text", &p, flag, &r);
        cr_assert_null(r.err);
        outcome_free(&r);

        /* a value the server quotes in its message */
        char bad_int[80];
        snprintf(bad_int, sizeof(bad_int), "x%s", token);
        aorm_params_reset(&p);
        aorm_params_text(&p, bad_int);
        run(&t, "SELECT $1::text::int", &p, flag, &r);
        cr_assert_not_null(r.err);
        cr_assert_eq(r.err->code, AORM_ESERVER);
        cr_assert_str_eq(r.err->sqlstate, "22P02");
        bool in_msg = strstr(r.err->message, token) || strstr(r.err->detail, token) || strstr(r.err->hint, token);
        cr_assert_eq(in_msg, !sensitive, "sensitive=%d: %s | %s", sensitive, r.err->message, r.err->detail);
        outcome_free(&r);

        /* a value the server quotes in its detail (a duplicate key) */
        for (int i = 0; i < 2; i++) {
            aorm_params_reset(&p);
            aorm_params_text(&p, token);
            run(&t, insert, &p, flag, &r);
            if (i == 0) {
                cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
            } else {
                cr_assert_not_null(r.err);
                cr_assert_str_eq(r.err->sqlstate, "23505");
                char pkey[64];
                snprintf(pkey, sizeof(pkey), "sec_tokens_%d_pkey", (int)getpid());
                cr_assert_str_eq(r.err->constraint, pkey, "the constraint name is kept");
                bool shown = strstr(r.err->message, token) || strstr(r.err->detail, token);
                cr_assert_eq(shown, !sensitive, "sensitive=%d: %s | %s", sensitive, r.err->message, r.err->detail);
            }
            outcome_free(&r);
        }
        char del[128];
        snprintf(del, sizeof(del), "DELETE FROM sec_tokens_%d", (int)getpid());
        run_ok(&t, del, &r);
        outcome_free(&r);

        int echoed = log_count(&t, token);
        if (sensitive) {
            assert_not_logged(&t, token, "a sensitive parameter");
            cr_assert_geq(log_count(&t, "$1=redacted"), 4, "the echo does not show the redacted parameters");
        } else {
            cr_assert_geq(echoed, 3, "control: echo_params shows ordinary values (%d lines)", echoed);
        }
        aorm_params_free(&p);
        env_close(&t);
    }
    snprintf(sql, sizeof(sql), "DROP TABLE sec_tokens_%d", (int)getpid());
    free(t_pg_exec(pg, sql));
    PQfinish(pg);
}

/* ==========================================================================
 * 5. The restricted role: rows only
 * ========================================================================== */

typedef struct probe {
    int64_t id;
    char *name;
} probe;

static const aorm_column probe_columns[] = {
    AORM_COLUMN(probe, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(probe, name, AORM_TEXT, 0),
};
static const aorm_model probe_model = {
    AORM_MODEL_OF(probe, "sec_ddl_probe"),
    AORM_COLUMNS(probe_columns),
};

Test(least_privilege, app_role_reads_and_writes_rows_only, .timeout = 60) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "SET client_min_messages = warning; DROP TABLE IF EXISTS sec_rows; "
                       "CREATE TABLE sec_rows (id bigserial PRIMARY KEY, v text)"));
    aorm_engine_options o;
    env_opts(&o, t_env("AORM_TEST_APP_DSN"));
    env t;
    env_open(&t, &o);
    outcome r;
    run_ok(&t, "SELECT current_user || ' ' || rolsuper::text || rolcreatedb::text || rolcreaterole::text "
               "FROM pg_roles WHERE rolname = current_user", &r);
    cr_assert_str_eq(r.text, "aorm_app falsefalsefalse");
    outcome_free(&r);
    run_ok(&t, "INSERT INTO sec_rows (v) VALUES ('a') RETURNING id::text", &r);
    outcome_free(&r);
    run_ok(&t, "UPDATE sec_rows SET v = 'b'", &r);
    outcome_free(&r);
    run_ok(&t, "SELECT v FROM sec_rows", &r);
    cr_assert_str_eq(r.text, "b");
    outcome_free(&r);
    run_ok(&t, "DELETE FROM sec_rows", &r);
    outcome_free(&r);
    const char *refused[] = {
        "CREATE TABLE sec_app_made (i int)", "CREATE TEMP TABLE sec_app_tmp (i int)", "DROP TABLE sec_rows",
        "ALTER TABLE sec_rows ADD COLUMN w int", "TRUNCATE sec_rows", "CREATE INDEX ON sec_rows (v)",
        "CREATE SCHEMA sec_app_schema",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        run(&t, refused[i], NULL, 0, &r);
        cr_assert_not_null(r.err, "the restricted role may: %s", refused[i]);
        cr_assert_str_eq(r.err->sqlstate, "42501", "%s: %s %s", refused[i], r.err->sqlstate, r.err->message);
        outcome_free(&r);
    }
    env_close(&t);
    free(t_pg_exec(pg, "DROP TABLE sec_rows"));
    PQfinish(pg);
}

static void on_ddl(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    outcome *o = user;
    o->done++;
    if (err) o->err = aorm_error_copy(err);
}

Test(least_privilege, ddl_as_the_app_role_says_it_needs_the_owner, .timeout = 60) {
    aorm_engine_options o;
    env_opts(&o, t_env("AORM_TEST_APP_DSN"));
    env t;
    env_open(&t, &o);
    const aorm_model *models[] = {&probe_model};
    outcome r = {0};
    cr_assert_eq(aorm_ddl_create_all(t.e, models, 1, 0, on_ddl, &r), 0);
    cr_assert(t_run_until(t.evl, &r.done, WAIT));
    cr_assert_not_null(r.err, "the restricted role created a table");
    cr_assert_eq(r.err->code, AORM_ESERVER, "%s", aorm_errname(r.err->code));
    cr_assert_str_eq(r.err->sqlstate, "42501");
    cr_assert(strstr(r.err->message, "permission denied"), "%s", r.err->message);
    cr_assert(strstr(r.err->message, "DDL needs the role that owns the schema"), "%s", r.err->message);
    outcome_free(&r);
    env_close(&t);

    /* the owner may */
    env_opts(&o, t_owner_dsn());
    env_open(&t, &o);
    cr_assert_eq(aorm_ddl_drop_all(t.e, models, 1, AORM_DDL_IF_EXISTS, on_ddl, &r), 0);
    cr_assert(t_run_until(t.evl, &r.done, WAIT));
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    outcome_free(&r);
    cr_assert_eq(aorm_ddl_create_all(t.e, models, 1, 0, on_ddl, &r), 0);
    cr_assert(t_run_until(t.evl, &r.done, WAIT));
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    outcome_free(&r);
    cr_assert_eq(aorm_ddl_drop_all(t.e, models, 1, 0, on_ddl, &r), 0);
    cr_assert(t_run_until(t.evl, &r.done, WAIT));
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    outcome_free(&r);
    env_close(&t);
}

/* ==========================================================================
 * 6. Redis: a user and a password, least privilege, unix socket
 * ========================================================================== */

static redisReply *cmd(redisContext *r, const char *fmt, const char *arg) {
    redisReply *rep = arg ? redisCommand(r, fmt, arg) : redisCommand(r, fmt);
    cr_assert_not_null(rep, "%s: %s", fmt, r->errstr);
    return rep;
}

static void expect_error(redisContext *r, const char *fmt, const char *arg, const char *prefix) {
    redisReply *rep = cmd(r, fmt, arg);
    cr_assert(rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, prefix, strlen(prefix)) == 0,
              "%s: expected %s..., got %s", fmt, prefix, rep->type == REDIS_REPLY_ERROR ? rep->str : "a success");
    freeReplyObject(rep);
}

static void expect_ok(redisContext *r, const char *fmt, const char *arg) {
    redisReply *rep = cmd(r, fmt, arg);
    cr_assert(rep->type != REDIS_REPLY_ERROR, "%s: %s", fmt, rep->str);
    freeReplyObject(rep);
}

Test(redis_auth, requires_a_password, .timeout = 30) {
    const char *pw = t_env("AORM_TEST_REDIS_PASSWORD");
    for (int sock = 0; sock < 2; sock++) {
        struct timeval tv = {5, 0};
        redisContext *r = sock ? redisConnectUnixWithTimeout(t_env("AORM_TEST_REDIS_SOCKET"), tv)
                               : redisConnectWithTimeout(t_redis_host(), t_redis_port(), tv);
        cr_assert(r && !r->err);
        expect_error(r, "PING", NULL, "NOAUTH");
        expect_error(r, "GET aorm:x", NULL, "NOAUTH");
        char wrong[40];
        random_hex(wrong, 16);
        redisReply *rep = redisCommand(r, "AUTH %s %s", t_env("AORM_TEST_REDIS_USER"), wrong);
        cr_assert(rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "WRONGPASS", 9) == 0);
        freeReplyObject(rep);
        /* the password alone authenticates `default`, whose password it is not */
        rep = redisCommand(r, "AUTH %s", pw);
        cr_assert(rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "WRONGPASS", 9) == 0);
        freeReplyObject(rep);
        redisFree(r);
    }
}

Test(redis_auth, app_user_has_a_caches_commands_only, .timeout = 30) {
    for (int sock = 0; sock < 2; sock++) {
        redisContext *r = t_redis(sock);
        redisReply *rep = cmd(r, "CLIENT INFO", NULL);
        cr_assert(rep->type == REDIS_REPLY_STRING, "CLIENT INFO: %s", rep->str);
        char who[64];
        snprintf(who, sizeof(who), " user=%s ", t_env("AORM_TEST_REDIS_USER"));
        cr_assert(strstr(rep->str, who), "not authenticated as the ACL user: %s", rep->str);
        freeReplyObject(rep);
        expect_ok(r, "SET aorm:sec:%s v EX 30", sock ? "sock" : "tcp");
        expect_ok(r, "GET aorm:sec:%s", sock ? "sock" : "tcp");
        expect_ok(r, "INCR aorm:sec:gen", NULL);
        expect_ok(r, "EXPIRE aorm:sec:gen 30", NULL);
        expect_ok(r, "MGET aorm:sec:tcp aorm:sec:sock", NULL);
        expect_ok(r, "DEL aorm:sec:gen", NULL);
        expect_ok(r, "CLIENT ID", NULL);
        expect_ok(r, "MULTI", NULL);
        expect_ok(r, "INCR aorm:sec:tx", NULL);
        expect_ok(r, "EXEC", NULL);
        expect_ok(r, "EVAL %s 1 aorm:sec:tx", "return redis.call('GET', KEYS[1])");
        /* keys outside aorm:*, and what a cache never needs */
        expect_error(r, "SET other:key v", NULL, "NOPERM");
        expect_error(r, "GET other:key", NULL, "NOPERM");
        expect_error(r, "FLUSHALL", NULL, "NOPERM");
        expect_error(r, "FLUSHDB", NULL, "NOPERM");
        expect_error(r, "KEYS *", NULL, "NOPERM");
        expect_error(r, "CONFIG GET requirepass", NULL, "NOPERM");
        expect_error(r, "ACL LIST", NULL, "NOPERM");
        expect_error(r, "SHUTDOWN", NULL, "NOPERM");
        expect_error(r, "CLIENT KILL ID 999999", NULL, "NOPERM");
        expect_error(r, "CLIENT LIST", NULL, "NOPERM");
        /* the near cache's invalidation channel is allowed */
        expect_ok(r, "SUBSCRIBE __redis__:invalidate", NULL);
        redisFree(r);
    }
}
