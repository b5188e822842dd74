/* test_redis.c -- the Redis client (aorm_redis) against the sandbox's
 * Redis and against redis-server processes of its own.
 *
 * The sandbox Redis (AORM_TEST_REDIS, host:port) serves the plain cases:
 * replies of every type, error replies, one write per loop turn, refused
 * commands. Tests that need a password, an ACL user, a unix socket, or a
 * server they can stop (SIGSTOP), kill and restart start their own
 * redis-server on a unix socket in a temporary directory (srv_*). Tests
 * of protocol garbage run a fake server on the test's own loop. The
 * connection hooks (on_ready's commands first, on_lost once per ready
 * connection) and subscriber clients (resubscribed after a reconnect, the
 * SUBSCRIBE deadline, malformed pub/sub messages) run against servers of
 * their own too.
 *
 * When the sandbox runs Redis with authentication it exports
 * AORM_TEST_REDIS_PASSWORD (and AORM_TEST_REDIS_USER for an ACL user);
 * the sandbox tests then authenticate with them.
 *
 * Every command callback is counted; tests assert exactly-once delivery
 * after running the loop a little longer to catch a late duplicate. A
 * heartbeat timer on the same loop checks that nothing stalls it. */
#include <ev.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aorm/redis.h"
#include "cache/redis_int.h"
#include "support.h"

/* ---- the heartbeat ------------------------------------------------------------ */

/* The longest gap between two beats of a 5 ms timer that a test accepts:
 * scheduling noise on a busy machine stays below it, while a loop blocked
 * on a stopped server would stall for a whole deadline (0.2 s or more). */
#define HB_MAX 0.15

typedef struct heartbeat {
    ev_timer w;
    double last, max_gap;
    long beats;
} heartbeat;

static void hb_tick(struct ev_loop *evl, ev_timer *w, int revents) {
    heartbeat *h = (heartbeat *)w;
    double now = t_mono();
    if (h->last > 0 && now - h->last > h->max_gap) h->max_gap = now - h->last;
    h->last = now;
    h->beats++;
}

static void hb_start(struct ev_loop *evl, heartbeat *h) {
    memset(h, 0, sizeof(*h));
    ev_timer_init(&h->w, hb_tick, 0.005, 0.005);
    ev_timer_start(evl, &h->w);
}

/* Stops the heartbeat and returns the longest gap between two beats. */
static double hb_stop(struct ev_loop *evl, heartbeat *h) {
    ev_timer_stop(evl, &h->w);
    return h->max_gap;
}

/* ---- fixture ------------------------------------------------------------------- */

#define MAX_LOG 512

typedef struct fx {
    struct ev_loop *evl;
    aorm_loop *l;
    aorm_redis *r;
    char *logs[MAX_LOG];
    int nlogs;
} fx;

static fx F;

/* Keeps every line for the test, and hands it to the test kit's log,
 * which the suite's secret grep searches. */
static void log_cb(aorm_log_level level, const char *msg, void *user) {
    fx *f = user;
    t_log("redis client: %s", msg);
    if (f->nlogs < MAX_LOG) f->logs[f->nlogs++] = strdup(msg);
}

static void fx_init(aorm_redis_options *o) {
    memset(&F, 0, sizeof(F));
    t_loop_open(&F.evl, &F.l);
    aorm_redis_options_init(o);
    o->log = log_cb;
    o->log_user = &F;
    o->log_level = AORM_LOG_DEBUG;
}

/* Options for the sandbox Redis, with its credentials when it has them. */
static void fx_sandbox(aorm_redis_options *o) {
    fx_init(o);
    t_redis_sandbox(o);
}

static void fx_client(const aorm_redis_options *o) {
    F.r = aorm_redis_new(F.l, o);
    cr_assert_not_null(F.r, "aorm_redis_new failed");
}

static void fx_done(void) {
    aorm_redis_free(F.r);
    F.r = NULL;
    t_loop_close(&F.evl, &F.l);
    for (int i = 0; i < F.nlogs; i++) free(F.logs[i]);
    F.nlogs = 0;
}

/* True when no log line collected so far contains `s`. */
static bool logs_lack(const char *s) {
    for (int i = 0; i < F.nlogs; i++)
        if (strstr(F.logs[i], s)) return false;
    return true;
}

static aorm_redis_stats stats(void) {
    aorm_redis_stats s;
    aorm_redis_stats_get(F.r, &s);
    return s;
}

/* ---- recorded outcomes ---------------------------------------------------------- */

typedef struct outcome {
    int calls;
    int code;           /* 0: a reply */
    int type;           /* reply type */
    long long integer;
    char str[1024];     /* reply string (truncated), or error message */
    size_t len;
    int elements;
    double at;          /* when it arrived */
    int order;          /* arrival rank */
    bool free_client;   /* free the client from inside this callback */
} outcome;

static int arrivals;

static void on_outcome(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    outcome *o = user;
    o->calls++;
    o->at = t_mono();
    o->order = arrivals++;
    if (err) {
        cr_assert(!reply, "reply and error together");
        o->code = err->code;
        t_log_error("redis command", err);
        cr_assert(err->message && err->detail && err->sqlstate[0] == '\0');
        snprintf(o->str, sizeof(o->str), "%s", err->message);
    } else {
        cr_assert_not_null(reply, "neither reply nor error");
        o->code = 0;
        o->type = reply->type;
        o->integer = reply->integer;
        o->elements = (int)reply->elements;
        if (reply->str) {
            o->len = reply->len;
            memcpy(o->str, reply->str, reply->len < sizeof(o->str) ? reply->len : sizeof(o->str) - 1);
        }
    }
    if (o->free_client) aorm_redis_free(r);
}

static int all_called_cond(void *arg) {
    outcome **v = arg;
    for (; *v; v++)
        if ((*v)->calls == 0) return 0;
    return 1;
}

static int one_called_cond(void *arg) { return ((outcome *)arg)->calls > 0; }

/* Runs the loop until o has its outcome (bounded). */
static void wait_for(outcome *o, double seconds) {
    cr_assert(t_run_until_fn(F.evl, one_called_cond, o, seconds), "no callback within %g s", seconds);
}

/* Sends PING and waits for PONG: the connection is ready. */
static void ping_ok(double seconds) {
    outcome o = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &o, "PING"), 0);
    wait_for(&o, seconds);
    cr_assert_eq(o.code, 0, "PING failed: %s %s", aorm_errname(o.code), o.str);
    cr_assert_str_eq(o.str, "PONG");
}

/* Retries PING until one succeeds (the client reconnects meanwhile). */
typedef struct retry_state {
    outcome o;
    bool ok;
    int tries;
    ev_timer again;
} retry_state;

static void retry_cb(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user);

static void retry_send(retry_state *s) {
    memset(&s->o, 0, sizeof(s->o));
    s->tries++;
    int rc = aorm_redis_command(F.r, NULL, retry_cb, s, "PING");
    if (rc < 0) ev_timer_start(F.evl, &s->again); /* breaker open: later */
}

static void retry_timer_cb(struct ev_loop *evl, ev_timer *w, int revents) {
    retry_state *s = (retry_state *)((char *)w - offsetof(retry_state, again));
    retry_send(s);
}

static void retry_cb(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    retry_state *s = user;
    if (!err) {
        s->ok = true;
        return;
    }
    ev_timer_start(F.evl, &s->again);
}

static int retry_ok_cond(void *arg) { return ((retry_state *)arg)->ok; }

static void ping_until_ok(double seconds) {
    retry_state s;
    memset(&s, 0, sizeof(s));
    ev_timer_init(&s.again, retry_timer_cb, 0.02, 0.);
    retry_send(&s);
    bool ok = t_run_until_fn(F.evl, retry_ok_cond, &s, seconds);
    ev_timer_stop(F.evl, &s.again);
    cr_assert(ok, "no successful PING within %g s (%d tries)", seconds, s.tries);
}

/* ---- a redis-server of the test's own ------------------------------------------- */

typedef struct srv {
    char dir[64];
    char sock[128];
    pid_t pid;
    bool stopped;
    const char *argv[40];
    int argc;
} srv;

static srv S;

static void srv_exec(srv *s) {
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork failed");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        char logpath[160];
        snprintf(logpath, sizeof(logpath), "%s/redis.log", s->dir);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int null = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (null >= 0) dup2(null, 0);
        execvp("redis-server", (char *const *)s->argv);
        _exit(127);
    }
    s->pid = pid;
    s->stopped = false;
    /* up when it answers on its socket (NOAUTH counts as an answer) */
    double until = t_mono() + 10;
    for (;;) {
        struct timeval tv = {0, 200000};
        redisContext *c = redisConnectUnixWithTimeout(s->sock, tv);
        if (c && !c->err) {
            redisReply *rep = redisCommand(c, "PING");
            bool up = rep != NULL;
            freeReplyObject(rep);
            redisFree(c);
            if (up) return;
        } else if (c) {
            redisFree(c);
        }
        int status;
        cr_assert(waitpid(pid, &status, WNOHANG) == 0, "redis-server exited at start (see %s/redis.log)", s->dir);
        cr_assert(t_mono() < until, "redis-server did not answer within 10 s (see %s/redis.log)", s->dir);
        usleep(10000);
    }
}

/* Starts redis-server on a unix socket in a new temporary directory.
 * `extra` are more arguments (NULL-terminated list). */
static void srv_start(const char *const *extra) {
    srv *s = &S;
    memset(s, 0, sizeof(*s));
    snprintf(s->dir, sizeof(s->dir), "/tmp/aorm-redis-test.XXXXXX");
    cr_assert_not_null(mkdtemp(s->dir));
    snprintf(s->sock, sizeof(s->sock), "%.60s/redis.sock", s->dir);
    const char *base[] = {"redis-server", "--port", "0", "--unixsocket", s->sock, "--unixsocketperm", "700",
                          "--save", "", "--appendonly", "no", "--dir", s->dir, "--databases", "16", NULL};
    for (int i = 0; base[i]; i++) s->argv[s->argc++] = base[i];
    for (int i = 0; extra && extra[i]; i++) s->argv[s->argc++] = extra[i];
    s->argv[s->argc] = NULL;
    srv_exec(s);
}

static void srv_stop_signal(void) {
    if (S.pid > 0 && !S.stopped) {
        cr_assert_eq(kill(S.pid, SIGSTOP), 0);
        /* stopped for certain once waitpid reports it */
        int status;
        cr_assert_eq(waitpid(S.pid, &status, WUNTRACED), S.pid);
        cr_assert(WIFSTOPPED(status));
        S.stopped = true;
    }
}

static void srv_cont(void) {
    if (S.pid > 0 && S.stopped) {
        kill(S.pid, SIGCONT);
        S.stopped = false;
    }
}

static void srv_kill(void) {
    if (S.pid > 0) {
        kill(S.pid, SIGKILL);
        if (S.stopped) kill(S.pid, SIGCONT);
        waitpid(S.pid, NULL, 0);
        S.pid = 0;
        S.stopped = false;
    }
}

/* Runs after every test, passed or failed: no server outlives it, none
 * stays stopped. */
static void srv_fini(void) {
    srv_cont();
    srv_kill();
    if (S.dir[0]) {
        char p[200];
        snprintf(p, sizeof(p), "%s/redis.log", S.dir);
        unlink(p);
        unlink(S.sock);
        rmdir(S.dir);
        S.dir[0] = '\0';
    }
}

static void fx_own(aorm_redis_options *o) {
    fx_init(o);
    o->unix_path = S.sock;
}

/* ---- a fake server on the test's loop ------------------------------------------- */

typedef struct fake {
    ev_io lw;
    int lfd, port;
    ev_io cw[64];
    int ncw;
    const char *answer;         /* written once per chunk read ... */
    const char *const *answers; /* ... or answers[i] to chunk i, while there are some */
    bool close_at_accept;       /* accept, then close at once */
    long accepted, chunks;
    char got[8192];             /* what the first connection sent, chunk by chunk */
    size_t got_len;
    size_t chunk_end[16];       /* end offset in got of each of its first chunks */
} fake;

static fake FK;

static void fake_client(struct ev_loop *evl, ev_io *w, int revents) {
    char buf[4096];
    ssize_t n = read(w->fd, buf, sizeof(buf));
    if (n <= 0) {
        ev_io_stop(evl, w);
        close(w->fd);
        w->fd = -1;
        return;
    }
    if (w == &FK.cw[0]) {
        size_t room = sizeof(FK.got) - FK.got_len, k = (size_t)n < room ? (size_t)n : room;
        memcpy(FK.got + FK.got_len, buf, k);
        FK.got_len += k;
        if (FK.chunks < 16) FK.chunk_end[FK.chunks] = FK.got_len;
    }
    const char *a = FK.answer;
    if (FK.answers) {
        a = FK.answers[FK.chunks];
        if (!a) { /* past the script: the plain answer from now on */
            FK.answers = NULL;
            a = FK.answer;
        }
    }
    FK.chunks++;
    if (a && write(w->fd, a, strlen(a)) < 0) { /* peer gone: the next read sees it */
    }
}

static void fake_accept(struct ev_loop *evl, ev_io *w, int revents) {
    int fd = accept(w->fd, NULL, NULL);
    if (fd < 0) return;
    FK.accepted++;
    if (FK.close_at_accept) {
        close(fd);
        return;
    }
    if (FK.ncw == (int)(sizeof(FK.cw) / sizeof(FK.cw[0]))) { /* enough of them: refuse */
        close(fd);
        return;
    }
    ev_io_init(&FK.cw[FK.ncw], fake_client, fd, EV_READ);
    ev_io_start(evl, &FK.cw[FK.ncw]);
    FK.ncw++;
}

static void fake_start(struct ev_loop *evl, const char *answer) {
    memset(&FK, 0, sizeof(FK));
    FK.answer = answer;
    FK.lfd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(FK.lfd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(FK.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(FK.lfd, 16), 0);
    socklen_t al = sizeof(a);
    cr_assert_eq(getsockname(FK.lfd, (struct sockaddr *)&a, &al), 0);
    FK.port = ntohs(a.sin_port);
    ev_io_init(&FK.lw, fake_accept, FK.lfd, EV_READ);
    ev_io_start(evl, &FK.lw);
}

static void fake_stop(struct ev_loop *evl) {
    ev_io_stop(evl, &FK.lw);
    close(FK.lfd);
    for (int i = 0; i < FK.ncw; i++) {
        if (FK.cw[i].fd < 0) continue; /* closed by fake_client */
        ev_io_stop(evl, &FK.cw[i]);
        close(FK.cw[i].fd);
    }
    FK.ncw = 0;
}

/* A TCP port on 127.0.0.1 that nothing listens on. */
static int closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t al = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    return ntohs(a.sin_port);
}

static int protocol_error_seen(void *arg) { return stats().protocol_errors >= 1; }
static int breaker_open(void *arg) { return stats().breaker == AORM_REDIS_BREAKER_OPEN; }

/* ==== the sandbox Redis ============================================================ */

Test(redis, replies_of_every_type, .timeout = 30) {
    aorm_redis_options o;
    fx_sandbox(&o);
    fx_client(&o);
    outcome set = {0}, get = {0}, del = {0}, nil = {0}, incr = {0}, mget = {0}, wrong = {0}, lpush = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &del, "DEL aorm:t:a aorm:t:list aorm:t:n"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &set, "SET aorm:t:a %b", "v\0x y", (size_t)5), 0);
    const char *argv[] = {"GET", "aorm:t:a"};
    cr_assert_eq(aorm_redis_command_argv(F.r, 2, argv, NULL, NULL, on_outcome, &get), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &nil, "GET aorm:t:missing"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &incr, "INCRBY aorm:t:n %s", "41"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &lpush, "LPUSH aorm:t:list x"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &wrong, "GET aorm:t:list"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &mget, "MGET aorm:t:a aorm:t:missing aorm:t:n"), 0);
    cr_assert_eq(set.calls + get.calls + mget.calls, 0, "a callback ran inside the call that queued it");
    outcome *all[] = {&del, &set, &get, &nil, &incr, &lpush, &wrong, &mget, NULL};
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 10), "replies missing");
    cr_assert_eq(set.code, 0);
    cr_assert_eq(set.type, REDIS_REPLY_STATUS);
    cr_assert_str_eq(set.str, "OK");
    cr_assert_eq(get.type, REDIS_REPLY_STRING);
    cr_assert_eq(get.len, 5);
    cr_assert(memcmp(get.str, "v\0x y", 5) == 0, "binary value changed");
    cr_assert_eq(nil.type, REDIS_REPLY_NIL);
    cr_assert_eq(incr.type, REDIS_REPLY_INTEGER);
    cr_assert_eq(incr.integer, 41);
    cr_assert_eq(wrong.code, AORM_ESERVER);
    cr_assert(strncmp(wrong.str, "WRONGTYPE", 9) == 0, "server text expected, got %s", wrong.str);
    cr_assert_eq(mget.type, REDIS_REPLY_ARRAY);
    cr_assert_eq(mget.elements, 3);
    /* replies arrive in the order the commands were queued */
    for (int i = 1; all[i]; i++) cr_assert_lt(all[i - 1]->order, all[i]->order);
    t_settle(F.evl, 0.05);
    for (int i = 0; all[i]; i++) cr_assert_eq(all[i]->calls, 1);
    aorm_redis_stats s = stats();
    cr_assert_eq(s.commands, 8);
    cr_assert_eq(s.replies, 8);
    cr_assert_eq(s.server_errors, 1);
    cr_assert_eq(s.errors, 1);
    cr_assert(s.connected);
    cr_assert_eq(s.connects, 1);
    cr_assert_eq(s.connections_lost, 0, "an error reply closed the connection");
    cr_assert_eq(s.in_flight + s.waiting, 0);
    fx_done();
}

/* Everything queued in one loop turn is one write; two turns are two. */
typedef struct burst {
    outcome first;
    outcome more[50];
    bool queued;
} burst;

static void burst_first(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    burst *b = user;
    on_outcome(r, reply, err, &b->first);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(aorm_redis_command(r, NULL, on_outcome, &b->more[i], "INCR aorm:t:burst"), 0);
    b->queued = true;
}

static int burst_done(void *arg) {
    burst *b = arg;
    for (int i = 0; i < 50; i++)
        if (!b->more[i].calls) return 0;
    return 1;
}

Test(redis, one_write_per_loop_turn, .timeout = 30) {
    aorm_redis_options o;
    fx_sandbox(&o);
    fx_client(&o);
    ping_ok(10);
    /* 200 commands queued outside the loop: the next before-poll stage
     * writes them all at once */
    static outcome v[201];
    memset(v, 0, sizeof(v));
    uint64_t w0 = stats().writes;
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &v[0], "DEL aorm:t:burst"), 0);
    for (int i = 1; i < 200; i++)
        cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &v[i], "SET aorm:t:k%d %d", i, i), 0);
    outcome *all[201];
    for (int i = 0; i < 200; i++) all[i] = &v[i];
    all[200] = NULL;
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 10));
    for (int i = 0; i < 200; i++) {
        cr_assert_eq(v[i].code, 0, "command %d: %s", i, v[i].str);
        if (i) cr_assert_lt(v[i - 1].order, v[i].order);
    }
    cr_assert_eq(stats().writes - w0, 1, "200 commands of one turn took %llu writes",
                 (unsigned long long)(stats().writes - w0));

    /* 50 commands queued from inside a reply callback: one more write */
    static burst b;
    memset(&b, 0, sizeof(b));
    w0 = stats().writes;
    cr_assert_eq(aorm_redis_command(F.r, NULL, burst_first, &b, "PING"), 0);
    cr_assert(t_run_until_fn(F.evl, burst_done, &b, 10));
    for (int i = 0; i < 50; i++) cr_assert_eq(b.more[i].integer, i + 1);
    cr_assert_eq(stats().writes - w0, 2, "PING, then 50 commands from its callback: %llu writes",
                 (unsigned long long)(stats().writes - w0));
    fx_done();
}

Test(redis, commands_that_would_change_the_connection_are_refused, .timeout = 30) {
    aorm_redis_options o;
    fx_sandbox(&o);
    fx_client(&o);
    outcome x = {0};
    const char *refused[] = {"SUBSCRIBE ch", "psubscribe p*", "UNSUBSCRIBE", "MONITOR", "SELECT 2", "AUTH pw",
                             "HELLO 3", "QUIT", "RESET", "client reply off", "CLIENT REPLY SKIP"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &x, refused[i]), AORM_EMISUSE, "%s accepted",
                     refused[i]);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &x, ""), AORM_EMISUSE);
    cr_assert_eq(aorm_redis_command_argv(F.r, 0, NULL, NULL, NULL, on_outcome, &x), AORM_EMISUSE);
    cr_assert_eq(aorm_redis_command(NULL, NULL, on_outcome, &x, "PING"), AORM_EMISUSE);
    /* CLIENT with another subcommand is fine */
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &x, "CLIENT GETNAME"), 0);
    wait_for(&x, 10);
    cr_assert_eq(x.code, 0);
    cr_assert_eq(stats().commands, 1);
    fx_done();
}

Test(redis, invalid_options, .timeout = 30) {
    aorm_redis_options o;
    fx_init(&o);
    o.port = 70000;
    cr_assert_null(aorm_redis_new(F.l, &o));
    aorm_redis_options_init(&o);
    o.client_name = "two words";
    cr_assert_null(aorm_redis_new(F.l, &o));
    aorm_redis_options_init(&o);
    o.username = "alice"; /* without a password */
    cr_assert_null(aorm_redis_new(F.l, &o));
    aorm_redis_options_init(&o);
    o.host = "";
    cr_assert_null(aorm_redis_new(F.l, &o));
    aorm_redis_options_init(&o);
    o.reconnect_min = 0;
    cr_assert_null(aorm_redis_new(F.l, &o));
    cr_assert_null(aorm_redis_new(NULL, &o));
    cr_assert_null(aorm_redis_new(F.l, NULL));
    fx_done();
}

/* A host name is resolved once, when the client is made. */
Test(redis, host_name, .timeout = 30) {
    aorm_redis_options o;
    fx_sandbox(&o);
    cr_assert_str_eq(o.host, "127.0.0.1", "the sandbox's Redis is expected on 127.0.0.1");
    o.host = "localhost"; /* /etc/hosts: no DNS traffic */
    fx_client(&o);
    ping_ok(10);
    fx_done();
}

/* ==== a server of the test's own: authentication, unix socket, db, name ========== */

#define PW_DEFAULT "s3cr3t-Default-pw"
#define PW_ALICE "s3cr3t-Alice-pw"

static const char *const auth_args[] = {"--requirepass", PW_DEFAULT, "--user", "alice", "on", ">" PW_ALICE, "~*",
                                        "&*", "+@all", NULL};

Test(redis, acl_user_on_unix_socket_with_db_and_name, .timeout = 60, .fini = srv_fini) {
    srv_start(auth_args);
    aorm_redis_options o;
    fx_own(&o);
    o.username = "alice";
    o.password = PW_ALICE;
    o.db = 3;
    o.client_name = "aorm-test";
    fx_client(&o);
    outcome name = {0}, who = {0}, set = {0}, info = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &name, "CLIENT GETNAME"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &who, "ACL WHOAMI"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &set, "SET aorm:t:db3 yes"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &info, "CLIENT INFO"), 0);
    outcome *all[] = {&name, &who, &set, &info, NULL};
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 10));
    cr_assert_eq(name.code, 0, "%s", name.str);
    cr_assert_str_eq(name.str, "aorm-test");
    cr_assert_str_eq(who.str, "alice");
    cr_assert(strstr(info.str, " db=3 "), "not on db 3: %s", info.str);
    /* the key is in db 3, not in db 0 */
    redisContext *c = redisConnectUnix(S.sock);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "AUTH alice %s", PW_ALICE);
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    rep = redisCommand(c, "EXISTS aorm:t:db3");
    cr_assert_eq(rep->integer, 0);
    freeReplyObject(rep);
    rep = redisCommand(c, "SELECT 3");
    freeReplyObject(rep);
    rep = redisCommand(c, "EXISTS aorm:t:db3");
    cr_assert_eq(rep->integer, 1);
    freeReplyObject(rep);
    redisFree(c);
    cr_assert(logs_lack(PW_ALICE), "the password reached the log");
    fx_done();
}

Test(redis, password_of_the_default_user, .timeout = 60, .fini = srv_fini) {
    srv_start(auth_args);
    aorm_redis_options o;
    fx_own(&o);
    o.password = PW_DEFAULT;
    fx_client(&o);
    outcome who = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &who, "ACL WHOAMI"), 0);
    wait_for(&who, 10);
    cr_assert_eq(who.code, 0, "%s", who.str);
    cr_assert_str_eq(who.str, "default");
    cr_assert(logs_lack(PW_DEFAULT));
    fx_done();
}

Test(redis, wrong_password_is_an_auth_error, .timeout = 60, .fini = srv_fini) {
    srv_start(auth_args);
    aorm_redis_options o;
    fx_own(&o);
    o.username = "alice";
    o.password = "not-" PW_ALICE;
    o.reconnect_max = 0.2;
    fx_client(&o);
    outcome a = {0}, b = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "GET k"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &b, "GET k"), 0);
    outcome *all[] = {&a, &b, NULL};
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 10));
    cr_assert_eq(a.code, AORM_EAUTH, "got %s: %s", aorm_errname(a.code), a.str);
    cr_assert_eq(b.code, AORM_EAUTH);
    cr_assert(strstr(a.str, "WRONGPASS"), "the server's reason is missing: %s", a.str);
    cr_assert(!strstr(a.str, PW_ALICE), "the password is in the error message");
    aorm_redis_stats s = stats();
    cr_assert_eq(s.connects, 0);
    cr_assert_geq(s.connect_failures, 1);
    /* refused credentials are retried at reconnect_max, not in a storm */
    t_settle(F.evl, 0.5);
    cr_assert_leq(stats().connect_failures, 4, "%llu attempts in 0.5 s",
                  (unsigned long long)stats().connect_failures);
    cr_assert(logs_lack(PW_ALICE));
    fx_done();
}

Test(redis, no_password_against_a_server_that_wants_one, .timeout = 60, .fini = srv_fini) {
    srv_start(auth_args);
    aorm_redis_options o;
    fx_own(&o);
    fx_client(&o);
    outcome a = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "GET k"), 0);
    wait_for(&a, 10);
    cr_assert_eq(a.code, AORM_EAUTH, "got %s: %s", aorm_errname(a.code), a.str);
    cr_assert(strstr(a.str, "NOAUTH"), "%s", a.str);
    fx_done();
}

/* ==== deadlines, a stopped server, a killed server ================================ */

Test(redis, deadline_with_a_stopped_server, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    aorm_redis_options o;
    fx_own(&o);
    o.connect_timeout = 0.3;
    fx_client(&o);
    ping_ok(10);
    heartbeat hb;
    hb_start(F.evl, &hb);
    srv_stop_signal();
    outcome slow = {0}, other = {0}, later = {0};
    aorm_redis_cmd_options short_dl = {0.2}, long_dl = {5};
    double t0 = t_mono();
    cr_assert_eq(aorm_redis_command(F.r, &short_dl, on_outcome, &slow, "GET a"), 0);
    cr_assert_eq(aorm_redis_command(F.r, &long_dl, on_outcome, &other, "GET b"), 0);
    wait_for(&slow, 5);
    cr_assert_eq(slow.code, AORM_ETIMEOUT, "got %s", aorm_errname(slow.code));
    cr_assert_geq(slow.at - t0, 0.2 - 0.01);
    cr_assert_lt(slow.at - t0, 0.2 + 0.25, "ETIMEOUT after %.3f s", slow.at - t0);
    /* the connection was closed: the other command in flight failed with it */
    wait_for(&other, 1);
    cr_assert_eq(other.code, AORM_ECONNLOST, "got %s", aorm_errname(other.code));
    cr_assert_lt(other.at - t0, 0.5);
    aorm_redis_stats s = stats();
    cr_assert_eq(s.timeouts, 1);
    cr_assert_eq(s.connections_lost, 1);
    /* still stopped: the reconnect connects (the kernel accepts) but the
     * server never answers; a command queued now waits for it and times out */
    cr_assert_eq(aorm_redis_command(F.r, &short_dl, on_outcome, &later, "GET c"), 0);
    wait_for(&later, 5);
    cr_assert(later.code == AORM_ETIMEOUT || later.code == AORM_ECONNECT, "got %s", aorm_errname(later.code));
    srv_cont();
    ping_until_ok(10);
    double gap = hb_stop(F.evl, &hb);
    cr_assert_lt(gap, HB_MAX, "the loop stalled for %.3f s", gap);
    t_settle(F.evl, 0.05);
    cr_assert_eq(slow.calls + other.calls + later.calls, 3);
    fx_done();
}

Test(redis, connect_timeout_with_a_stopped_server, .timeout = 60, .fini = srv_fini) {
    srv_start(auth_args);
    srv_stop_signal();
    aorm_redis_options o;
    fx_own(&o);
    o.password = PW_DEFAULT; /* the handshake needs an answer */
    o.connect_timeout = 0.25;
    o.command_timeout = 5;
    fx_client(&o);
    heartbeat hb;
    hb_start(F.evl, &hb);
    outcome a = {0};
    double t0 = t_mono();
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "GET a"), 0);
    wait_for(&a, 5);
    cr_assert_eq(a.code, AORM_ECONNECT, "got %s: %s", aorm_errname(a.code), a.str);
    cr_assert_lt(a.at - t0, 0.25 + 0.25);
    cr_assert(strstr(a.str, "timed out"), "%s", a.str);
    srv_cont();
    ping_until_ok(10);
    cr_assert_lt(hb_stop(F.evl, &hb), HB_MAX);
    fx_done();
}

Test(redis, server_killed_and_restarted, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    aorm_redis_options o;
    fx_own(&o);
    o.command_timeout = 20;
    fx_client(&o);
    ping_ok(10);
    heartbeat hb;
    hb_start(F.evl, &hb);
    /* a command held by the server (BLPOP) is in flight when it dies */
    outcome held = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &held, "BLPOP aorm:t:nothing 15"), 0);
    t_settle(F.evl, 0.05); /* sent */
    cr_assert_eq(stats().in_flight, 1);
    srv_kill();
    wait_for(&held, 5);
    cr_assert_eq(held.code, AORM_ECONNLOST, "got %s: %s", aorm_errname(held.code), held.str);
    /* while it is down, commands fail (the attempt is refused), fast */
    outcome down = {0};
    int rc = aorm_redis_command(F.r, NULL, on_outcome, &down, "PING");
    if (rc == 0) {
        wait_for(&down, 5);
        cr_assert_eq(down.code, AORM_ECONNECT, "got %s: %s", aorm_errname(down.code), down.str);
    } else {
        cr_assert_eq(rc, AORM_ECONNECT);
    }
    /* starting the server blocks this test, not the client: no heartbeat then */
    double gap = hb_stop(F.evl, &hb);
    cr_assert_lt(gap, HB_MAX, "the loop stalled for %.3f s", gap);
    srv_exec(&S);
    hb_start(F.evl, &hb);
    ping_until_ok(10);
    aorm_redis_stats s = stats();
    cr_assert_geq(s.reconnects, 1);
    cr_assert_eq(s.connections_lost, 1);
    cr_assert_eq(s.consecutive_failures, 0);
    cr_assert_eq(s.breaker, AORM_REDIS_BREAKER_CLOSED);
    gap = hb_stop(F.evl, &hb);
    cr_assert_lt(gap, HB_MAX, "the loop stalled for %.3f s", gap);
    t_settle(F.evl, 0.05);
    cr_assert_eq(held.calls, 1);
    fx_done();
}

/* ==== garbage and the breaker ====================================================== */

Test(redis, garbage_from_the_server, .timeout = 60) {
    aorm_redis_options o;
    fx_init(&o);
    fake_start(F.evl, "this is not RESP\r\n");
    o.port = FK.port;
    o.breaker_threshold = 3;
    o.breaker_cooldown = 0.3;
    o.reconnect_min = 0.01;
    fx_client(&o);
    heartbeat hb;
    hb_start(F.evl, &hb);
    outcome a = {0}, b = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "GET a"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &b, "GET b"), 0);
    outcome *all[] = {&a, &b, NULL};
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 5));
    cr_assert_eq(a.code, AORM_EPROTOCOL, "got %s: %s", aorm_errname(a.code), a.str);
    cr_assert_eq(b.code, AORM_EPROTOCOL);
    cr_assert_geq(stats().protocol_errors, 1);
    /* keep failing until the breaker opens; then calls fail at once */
    double t0 = t_mono();
    int rc = 0;
    while (rc == 0 && t_mono() - t0 < 5) {
        outcome c = {0};
        rc = aorm_redis_command(F.r, NULL, on_outcome, &c, "GET c");
        if (rc == 0) wait_for(&c, 5);
    }
    cr_assert_eq(rc, AORM_ECONNECT, "the breaker never opened");
    aorm_redis_stats s = stats();
    cr_assert_eq(s.breaker, AORM_REDIS_BREAKER_OPEN);
    cr_assert_eq(s.breaker_opens, 1);
    cr_assert_geq(s.rejected, 1);
    /* after the cooldown it tries again (half-open), fails, opens again */
    uint64_t accepted = FK.accepted;
    t_settle(F.evl, 0.5);
    cr_assert_gt(FK.accepted, accepted, "no attempt after the cooldown");
    cr_assert_geq(stats().breaker_opens, 1);
    cr_assert_lt(hb_stop(F.evl, &hb), HB_MAX);
    fake_stop(F.evl);
    fx_done();
}

Test(redis, replies_nobody_asked_for, .timeout = 60) {
    aorm_redis_options o;
    fx_init(&o);
    fake_start(F.evl, "+OK\r\n+OK\r\n:1\r\n"); /* three answers to every write */
    o.port = FK.port;
    fx_client(&o);
    outcome a = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "SET a b"), 0);
    wait_for(&a, 5);
    cr_assert_eq(a.code, 0);
    cr_assert_str_eq(a.str, "OK");
    /* the extra replies close the connection (hiredis alone would abort) */
    cr_assert(t_run_until_fn(F.evl, protocol_error_seen, NULL, 5), "the connection stayed open");
    cr_assert_geq(stats().connections_lost, 1);
    fake_stop(F.evl);
    fx_done();
}

/* A server that hangs up at once: a command waiting for the handshake
 * fails with AORM_ECONNECT; without a handshake the command was sent, and
 * fails with AORM_ECONNLOST. */
Test(redis, server_hangs_up_at_once, .timeout = 30) {
    for (int pass = 0; pass < 2; pass++) {
        aorm_redis_options o;
        fx_init(&o);
        fake_start(F.evl, NULL);
        FK.close_at_accept = true;
        o.port = FK.port;
        if (pass == 0) o.password = "pw";
        fx_client(&o);
        outcome a = {0};
        cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "GET a"), 0);
        wait_for(&a, 5);
        int want = pass == 0 ? AORM_ECONNECT : AORM_ECONNLOST;
        cr_assert_eq(a.code, want, "pass %d: got %s: %s", pass, aorm_errname(a.code), a.str);
        cr_assert(strstr(a.str, "redis 127.0.0.1:"), "the message does not say where: %s", a.str);
        t_settle(F.evl, 0.05);
        cr_assert_eq(a.calls, 1);
        fake_stop(F.evl);
        fx_done();
    }
}

Test(redis, breaker_closes_when_the_server_returns, .timeout = 60, .fini = srv_fini) {
    /* the socket does not exist yet: every attempt fails at once */
    memset(&S, 0, sizeof(S));
    snprintf(S.dir, sizeof(S.dir), "/tmp/aorm-redis-test.XXXXXX");
    cr_assert_not_null(mkdtemp(S.dir));
    snprintf(S.sock, sizeof(S.sock), "%.60s/redis.sock", S.dir);
    aorm_redis_options o;
    fx_own(&o);
    o.breaker_threshold = 3;
    o.breaker_cooldown = 0.2;
    o.reconnect_min = 0.01;
    fx_client(&o);
    outcome a = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "PING"), 0);
    wait_for(&a, 5);
    cr_assert_eq(a.code, AORM_ECONNECT, "got %s: %s", aorm_errname(a.code), a.str);
    cr_assert(t_run_until_fn(F.evl, breaker_open, NULL, 5), "the breaker never opened");
    outcome b = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &b, "PING"), AORM_ECONNECT);
    /* the server appears: after the cooldown the half-open attempt succeeds */
    const char *base[] = {"redis-server", "--port", "0", "--unixsocket", S.sock, "--unixsocketperm", "700",
                          "--save", "", "--appendonly", "no", "--dir", S.dir, NULL};
    for (int i = 0; base[i]; i++) S.argv[S.argc++] = base[i];
    S.argv[S.argc] = NULL;
    srv_exec(&S);
    ping_until_ok(10);
    aorm_redis_stats s = stats();
    cr_assert_eq(s.breaker, AORM_REDIS_BREAKER_CLOSED);
    cr_assert_eq(s.consecutive_failures, 0);
    cr_assert_geq(s.breaker_opens, 1);
    cr_assert_eq(b.calls, 0, "a refused command called back");
    fx_done();
}

Test(redis, connection_refused_fails_waiting_commands_fast, .timeout = 30) {
    aorm_redis_options o;
    fx_init(&o);
    o.port = closed_port();
    o.command_timeout = 10;
    fx_client(&o);
    outcome a = {0};
    double t0 = t_mono();
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "PING"), 0);
    wait_for(&a, 5);
    cr_assert_eq(a.code, AORM_ECONNECT);
    cr_assert_lt(a.at - t0, 0.5, "failed after %.3f s", a.at - t0);
    cr_assert(strstr(a.str, "refused"), "%s", a.str);
    fx_done();
}

/* The handshake is one write, sent before anything of the caller's, and
 * the caller's commands wait for its replies. */
Test(redis, handshake_goes_first_and_alone, .timeout = 30) {
    aorm_redis_options o;
    fx_init(&o);
    static const char *const script[] = {"+OK\r\n+OK\r\n+OK\r\n", "$1\r\nv\r\n", NULL};
    fake_start(F.evl, NULL);
    FK.answers = script;
    o.port = FK.port;
    o.username = "u";
    o.password = "p w";
    o.db = 2;
    o.client_name = "n";
    fx_client(&o);
    outcome a = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "GET k"), 0);
    wait_for(&a, 5);
    cr_assert_eq(a.code, 0, "%s: %s", aorm_errname(a.code), a.str);
    cr_assert_str_eq(a.str, "v");
    const char *hs = "*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$3\r\np w\r\n"
                     "*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"
                     "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$1\r\nn\r\n";
    const char *get = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    cr_assert_eq(FK.chunks, 2, "%ld chunks", FK.chunks);
    cr_assert_eq(FK.chunk_end[0], strlen(hs));
    cr_assert(memcmp(FK.got, hs, strlen(hs)) == 0, "first write: %.*s", (int)FK.chunk_end[0], FK.got);
    cr_assert_eq(FK.chunk_end[1] - FK.chunk_end[0], strlen(get));
    cr_assert(memcmp(FK.got + FK.chunk_end[0], get, strlen(get)) == 0);
    cr_assert_eq(stats().connects, 1);
    fake_stop(F.evl);
    fx_done();
}

/* A value larger than the socket buffers: the write continues when the
 * socket drains, the reply is read over many turns, the loop never stalls. */
Test(redis, values_larger_than_the_socket_buffer, .timeout = 60) {
    aorm_redis_options o;
    fx_sandbox(&o);
    o.command_timeout = 20;
    fx_client(&o);
    ping_ok(10);
    size_t n = 8u << 20;
    char *big = malloc(n);
    cr_assert_not_null(big);
    for (size_t i = 0; i < n; i++) big[i] = (char)('a' + i % 26);
    uint64_t w0 = stats().writes;
    outcome set = {0}, len = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &set, "SET aorm:t:big %b", big, n), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &len, "STRLEN aorm:t:big"), 0);
    /* from here on, what the loop does: copying 8 MB into the command was
     * the caller's own time */
    heartbeat hb;
    hb_start(F.evl, &hb);
    outcome *all[] = {&set, &len, NULL};
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 20));
    cr_assert_eq(set.code, 0, "%s", set.str);
    cr_assert_eq(len.integer, (long long)n);
    cr_assert_gt(stats().writes - w0, 1, "8 MB went out in one write: the partial path is untested");
    /* and back: one bulk reply of 8 MB */
    outcome get = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &get, "GETRANGE aorm:t:big 0 -1"), 0);
    wait_for(&get, 20);
    cr_assert_eq(get.code, 0);
    cr_assert_eq(get.len, n);
    cr_assert(memcmp(get.str, big, sizeof(get.str) - 1) == 0);
    double gap = hb_stop(F.evl, &hb);
    cr_assert_lt(gap, HB_MAX, "the loop stalled for %.3f s", gap);
    outcome del = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &del, "DEL aorm:t:big"), 0);
    wait_for(&del, 10);
    free(big);
    fx_done();
}

/* The sandbox's own credentials (when it has them): over TCP and, when
 * it exports one, over its unix socket. */
Test(redis, sandbox_credentials, .timeout = 30) {
    const char *user = getenv("AORM_TEST_REDIS_USER");
    const char *pw = getenv("AORM_TEST_REDIS_PASSWORD");
    const char *sock = getenv("AORM_TEST_REDIS_SOCKET");
    for (int pass = 0; pass < (sock && *sock ? 2 : 1); pass++) {
        aorm_redis_options o;
        fx_sandbox(&o);
        if (pass == 1) o.unix_path = sock;
        fx_client(&o);
        /* CLIENT INFO, not ACL WHOAMI: the sandbox's cache user may not run ACL */
        outcome who = {0};
        cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &who, "CLIENT INFO"), 0);
        wait_for(&who, 10);
        cr_assert_eq(who.code, 0, "%s: %s", aorm_errname(who.code), who.str);
        char want[128];
        snprintf(want, sizeof(want), " user=%s ", pw && *pw && user && *user ? user : "default");
        cr_assert(strstr(who.str, want), "not logged in as%s: %s", want, who.str);
        if (pw && *pw) cr_assert(logs_lack(pw), "the sandbox's password reached the log");
        fx_done();
    }
}

/* ==== freeing ============================================================================ */

Test(redis, free_inside_a_reply_callback, .timeout = 30) {
    aorm_redis_options o;
    fx_sandbox(&o);
    fx_client(&o);
    ping_ok(10);
    static outcome v[20];
    memset(v, 0, sizeof(v));
    v[5].free_client = true;
    for (int i = 0; i < 20; i++) cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &v[i], "PING"), 0);
    outcome *all[21];
    for (int i = 0; i < 20; i++) all[i] = &v[i];
    all[20] = NULL;
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 10));
    F.r = NULL; /* freed by the callback */
    for (int i = 0; i <= 5; i++) cr_assert_eq(v[i].code, 0);
    for (int i = 6; i < 20; i++) cr_assert_eq(v[i].code, AORM_ECANCELED, "command %d: %s", i, aorm_errname(v[i].code));
    t_settle(F.evl, 0.05);
    for (int i = 0; i < 20; i++) cr_assert_eq(v[i].calls, 1);
    fx_done();
}

/* A callback that queues a command after free was requested is refused;
 * freeing twice is harmless. */
static void free_and_queue(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    outcome *o = user;
    on_outcome(r, reply, err, o);
    aorm_redis_free(r);
    aorm_redis_free(r);
    outcome x = {0};
    cr_assert_eq(aorm_redis_command(r, NULL, on_outcome, &x, "PING"), AORM_ECLOSED);
}

Test(redis, free_inside_a_timeout_callback, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    aorm_redis_options o;
    fx_own(&o);
    fx_client(&o);
    ping_ok(10);
    srv_stop_signal();
    outcome a = {0}, b = {0}, c = {0};
    aorm_redis_cmd_options dl = {0.1}, long_dl = {5};
    cr_assert_eq(aorm_redis_command(F.r, &dl, free_and_queue, &a, "GET a"), 0);
    cr_assert_eq(aorm_redis_command(F.r, &long_dl, on_outcome, &b, "GET b"), 0);
    cr_assert_eq(aorm_redis_command(F.r, &long_dl, on_outcome, &c, "GET c"), 0);
    outcome *all[] = {&a, &b, &c, NULL};
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 5));
    F.r = NULL;
    cr_assert_eq(a.code, AORM_ETIMEOUT);
    cr_assert_eq(b.code, AORM_ECANCELED);
    cr_assert_eq(c.code, AORM_ECANCELED);
    srv_cont();
    t_settle(F.evl, 0.05);
    cr_assert_eq(a.calls + b.calls + c.calls, 3);
    fx_done();
}

Test(redis, free_inside_a_connection_loss_callback, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    aorm_redis_options o;
    fx_own(&o);
    o.command_timeout = 20;
    fx_client(&o);
    ping_ok(10);
    outcome a = {0}, b = {0};
    a.free_client = true;
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "BLPOP aorm:t:x 15"), 0);
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &b, "BLPOP aorm:t:y 15"), 0);
    t_settle(F.evl, 0.05);
    srv_kill();
    outcome *all[] = {&a, &b, NULL};
    cr_assert(t_run_until_fn(F.evl, all_called_cond, all, 5));
    F.r = NULL;
    cr_assert_eq(a.code, AORM_ECONNLOST);
    cr_assert_eq(b.code, AORM_ECANCELED);
    t_settle(F.evl, 0.05);
    cr_assert_eq(a.calls + b.calls, 2);
    fx_done();
}

Test(redis, free_cancels_every_pending_command, .timeout = 30) {
    aorm_redis_options o;
    fx_sandbox(&o);
    fx_client(&o);
    ping_ok(10);
    static outcome sent[10], queued[10];
    memset(sent, 0, sizeof(sent));
    memset(queued, 0, sizeof(queued));
    /* in flight (written at the before-poll stage of one turn) */
    for (int i = 0; i < 10; i++)
        cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &sent[i], "BLPOP aorm:t:none 5"), 0);
    ev_run(F.evl, EVRUN_NOWAIT);
    cr_assert_eq(stats().in_flight, 10);
    for (int i = 0; i < 10; i++) cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &queued[i], "PING"), 0);
    aorm_redis_free(F.r);
    F.r = NULL;
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(sent[i].calls, 1);
        cr_assert_eq(sent[i].code, AORM_ECANCELED);
        cr_assert_eq(queued[i].calls, 1);
        cr_assert_eq(queued[i].code, AORM_ECANCELED);
    }
    fx_done();
}

Test(redis, free_while_connecting, .timeout = 30) {
    aorm_redis_options o;
    fx_sandbox(&o);
    fx_client(&o);
    outcome a = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &a, "PING"), 0);
    aorm_redis_free(F.r);
    F.r = NULL;
    cr_assert_eq(a.calls, 1);
    cr_assert_eq(a.code, AORM_ECANCELED);
    t_settle(F.evl, 0.05);
    cr_assert_eq(a.calls, 1);
    fx_done();
}

/* ==== connection hooks ================================================================= */

/* A blocking connection to the test's own server, for CLIENT KILL and PUBLISH. */
static redisContext *srv_admin(void) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectUnixWithTimeout(S.sock, tv);
    cr_assert(c && !c->err, "cannot reach the test's redis-server");
    return c;
}

static long long srv_admin_int(const char *cmd) {
    redisContext *c = srv_admin();
    redisReply *rep = redisCommand(c, cmd);
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER, "%s: no integer reply", cmd);
    long long v = rep->integer;
    freeReplyObject(rep);
    redisFree(c);
    return v;
}

typedef struct hooks_rec {
    int ready, lost;
    outcome hook_cmd[4]; /* ECHO queued by each on_ready */
    outcome lost_cmd[4]; /* ECHO queued by each on_lost */
    int internal_ready;  /* the internal hook */
    int seq[16];         /* 1: options' on_ready, 2: internal on_ready, 3: options' on_lost, 4: internal on_lost */
    int nseq;
    bool remove_internal_in_ready;
} hooks_rec;

static hooks_rec H;

static void h_internal_ready(aorm_redis *r, void *user);
static void h_internal_lost(aorm_redis *r, void *user);

static void h_ready(aorm_redis *r, void *user) {
    hooks_rec *h = user;
    cr_assert_eq(h, &H);
    if (h->nseq < 16) h->seq[h->nseq++] = 1;
    cr_assert(stats().connected, "on_ready runs on a ready connection");
    if (h->ready < 4) cr_assert_eq(aorm_redis_command(r, NULL, on_outcome, &h->hook_cmd[h->ready], "ECHO hook"), 0);
    h->ready++;
    if (h->remove_internal_in_ready) aorm__redis_hook_remove(r, h_internal_ready, h_internal_lost, h);
}

static void h_lost(aorm_redis *r, void *user) {
    hooks_rec *h = user;
    if (h->nseq < 16) h->seq[h->nseq++] = 3;
    cr_assert(!stats().connected);
    if (h->lost < 4) cr_assert_eq(aorm_redis_command(r, NULL, on_outcome, &h->lost_cmd[h->lost], "ECHO after"), 0);
    h->lost++;
}

static void h_internal_ready(aorm_redis *r, void *user) {
    hooks_rec *h = user;
    if (h->nseq < 16) h->seq[h->nseq++] = 2;
    h->internal_ready++;
}

static void h_internal_lost(aorm_redis *r, void *user) {
    hooks_rec *h = user;
    if (h->nseq < 16) h->seq[h->nseq++] = 4;
}

static int lost_cmd_answered(void *arg) { return H.lost_cmd[*(int *)arg].calls > 0; }

Test(redis, ready_hook_goes_first_and_lost_hook_runs_once_per_connection, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    memset(&H, 0, sizeof(H));
    aorm_redis_options o;
    fx_own(&o);
    o.client_name = "aorm-hooks"; /* a handshake: the hook runs after its reply */
    o.on_ready = h_ready;
    o.on_lost = h_lost;
    o.hook_user = &H;
    o.reconnect_min = 0.01;
    fx_client(&o);
    cr_assert_eq(aorm__redis_hook_add(F.r, h_internal_ready, h_internal_lost, &H), 0);
    cr_assert_eq(aorm__redis_hook_add(F.r, NULL, NULL, &H), AORM_EMISUSE);
    /* queued before the connection is ready: waits, and goes after the hook's */
    outcome user = {0};
    cr_assert_eq(aorm_redis_command(F.r, NULL, on_outcome, &user, "ECHO user"), 0);
    wait_for(&user, 5);
    cr_assert_eq(H.ready, 1);
    cr_assert_eq(H.hook_cmd[0].calls, 1);
    cr_assert_eq(H.hook_cmd[0].code, 0);
    cr_assert_str_eq(H.hook_cmd[0].str, "hook");
    cr_assert_lt(H.hook_cmd[0].order, user.order, "the hook's command was answered after a waiting one");
    cr_assert_eq(H.nseq, 2);
    cr_assert_eq(H.seq[0], 1, "the options' hook runs first");
    cr_assert_eq(H.seq[1], 2);
    cr_assert_eq(aorm__redis_conn_gen(F.r), 1);
    cr_assert_eq(H.lost, 0);
    /* the server drops the connection: on_lost once, then a new connection
     * runs on_ready again, whose command goes before the one on_lost queued */
    H.remove_internal_in_ready = true;
    cr_assert_eq(srv_admin_int("CLIENT KILL TYPE normal"), 1);
    int k = 0;
    cr_assert(t_run_until_fn(F.evl, lost_cmd_answered, &k, 5), "the command queued by on_lost never ran");
    cr_assert_eq(H.lost, 1);
    cr_assert_eq(H.ready, 2);
    cr_assert_eq(H.lost_cmd[0].code, 0, "on_lost's command waits for the next connection: %s", H.lost_cmd[0].str);
    cr_assert_lt(H.hook_cmd[1].order, H.lost_cmd[0].order);
    cr_assert_eq(aorm__redis_conn_gen(F.r), 2);
    /* seq: ready 1 2 | lost 3 4 | ready 1, which removed the internal hook before its turn */
    cr_assert_eq(H.seq[2], 3);
    cr_assert_eq(H.seq[3], 4);
    cr_assert_eq(H.seq[4], 1);
    cr_assert_eq(H.nseq, 5, "the internal hook removed inside on_ready is not called again");
    /* once more: only the options' hooks remain */
    cr_assert_eq(srv_admin_int("CLIENT KILL TYPE normal"), 1);
    k = 1;
    cr_assert(t_run_until_fn(F.evl, lost_cmd_answered, &k, 5));
    cr_assert_eq(H.lost, 2);
    cr_assert_eq(H.ready, 3);
    cr_assert_eq(H.nseq, 7);
    t_settle(F.evl, 0.05);
    fx_done(); /* freeing runs no hook */
    cr_assert_eq(H.lost, 2);
    for (int i = 0; i < 3; i++) cr_assert_eq(H.hook_cmd[i].calls, 1);
}

/* ==== subscribers ======================================================================= */

typedef struct subrec {
    int subscribed, ready, lost;
    int messages;
    char chan[8][64];
    char msg[8][64];
    outcome id_cmd[4];
    int refused_outside; /* what aorm_redis_command returned outside the hook */
    bool free_in_message;
} subrec;

static subrec SR;

static void s_on_message(aorm_redis *r, const char *channel, size_t channel_len, const struct redisReply *m,
                         void *user) {
    subrec *s = user;
    if (s->messages < 8) {
        snprintf(s->chan[s->messages], sizeof(s->chan[0]), "%.*s", (int)channel_len, channel);
        cr_assert_eq(m->type, REDIS_REPLY_STRING);
        snprintf(s->msg[s->messages], sizeof(s->msg[0]), "%.*s", (int)m->len, m->str);
    }
    s->messages++;
    if (s->free_in_message) {
        aorm_redis_free(r);
        F.r = NULL;
    }
}

static void s_on_subscribed(aorm_redis *r, void *user) {
    subrec *s = user;
    s->subscribed++;
    cr_assert(aorm_redis_subscribed(r));
    s->refused_outside = aorm_redis_command(r, NULL, NULL, NULL, "PING");
}

static void s_on_ready(aorm_redis *r, void *user) {
    subrec *s = user;
    cr_assert(!aorm_redis_subscribed(r), "not subscribed before SUBSCRIBE was sent");
    if (s->ready < 4) cr_assert_eq(aorm_redis_command(r, NULL, on_outcome, &s->id_cmd[s->ready], "CLIENT ID"), 0);
    s->ready++;
}

static void s_on_lost(aorm_redis *r, void *user) { ((subrec *)user)->lost++; }

static int subscribed_n(void *arg) { return SR.subscribed >= *(int *)arg; }
static int messages_n(void *arg) { return SR.messages >= *(int *)arg; }

static void srv_publish(const char *ch, const char *msg, long long receivers) {
    redisContext *c = srv_admin();
    redisReply *rep = redisCommand(c, "PUBLISH %s %s", ch, msg);
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER);
    cr_assert_eq(rep->integer, receivers, "PUBLISH reached %lld subscribers", rep->integer);
    freeReplyObject(rep);
    redisFree(c);
}

static aorm_redis *subscriber(aorm_redis_options *o) {
    o->on_ready = s_on_ready;
    o->on_lost = s_on_lost;
    o->hook_user = &SR;
    static const char *const ch[] = {"aorm:t:one", "aorm:t:two"};
    aorm_redis *r = aorm_redis_subscriber_new(F.l, o, ch, 2, s_on_message, s_on_subscribed, &SR);
    cr_assert_not_null(r);
    return r;
}

Test(redis, subscriber_receives_messages_and_resubscribes_after_a_reconnect, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    memset(&SR, 0, sizeof(SR));
    aorm_redis_options o;
    fx_own(&o);
    o.reconnect_min = 0.01;
    static const char *const none[] = {"x"};
    cr_assert_null(aorm_redis_subscriber_new(F.l, &o, none, 0, s_on_message, NULL, NULL));
    cr_assert_null(aorm_redis_subscriber_new(F.l, &o, none, 1, NULL, NULL, NULL));
    F.r = subscriber(&o);
    cr_assert_eq(aorm_redis_command(F.r, NULL, NULL, NULL, "PING"), AORM_EMISUSE, "commands only from on_ready");
    int one = 1;
    cr_assert(t_run_until_fn(F.evl, subscribed_n, &one, 5), "never subscribed");
    cr_assert_eq(SR.refused_outside, AORM_EMISUSE);
    cr_assert_eq(SR.id_cmd[0].calls, 1, "the hook's command was answered before the subscription");
    cr_assert_eq(SR.id_cmd[0].code, 0);
    cr_assert_eq(SR.id_cmd[0].type, REDIS_REPLY_INTEGER);
    cr_assert(stats().subscribed);
    srv_publish("aorm:t:one", "hello", 1);
    srv_publish("aorm:t:two", "world", 1);
    srv_publish("aorm:t:three", "nobody", 0);
    int two = 2;
    cr_assert(t_run_until_fn(F.evl, messages_n, &two, 5));
    cr_assert_str_eq(SR.chan[0], "aorm:t:one");
    cr_assert_str_eq(SR.msg[0], "hello");
    cr_assert_str_eq(SR.chan[1], "aorm:t:two");
    cr_assert_str_eq(SR.msg[1], "world");
    /* the server drops it: lost, reconnected, subscribed again */
    cr_assert_eq(srv_admin_int("CLIENT KILL TYPE pubsub"), 1);
    int twice = 2;
    cr_assert(t_run_until_fn(F.evl, subscribed_n, &twice, 5), "not subscribed again after the kill");
    cr_assert_eq(SR.lost, 1);
    cr_assert_eq(SR.ready, 2);
    cr_assert_neq(SR.id_cmd[1].integer, SR.id_cmd[0].integer, "a new connection");
    srv_publish("aorm:t:two", "again", 1);
    int three = 3;
    cr_assert(t_run_until_fn(F.evl, messages_n, &three, 5));
    cr_assert_str_eq(SR.msg[2], "again");
    t_settle(F.evl, 0.05);
    aorm_redis_stats s = stats();
    cr_assert_eq(s.messages, 3);
    cr_assert_eq(s.connections_lost, 1);
    cr_assert_eq(SR.messages, 3);
    /* freed from inside its message callback */
    SR.free_in_message = true;
    srv_publish("aorm:t:one", "last", 1);
    int four = 4;
    cr_assert(t_run_until_fn(F.evl, messages_n, &four, 5));
    cr_assert_null(F.r);
    cr_assert_eq(SR.lost, 1, "freeing runs no hook");
    fx_done();
}

Test(redis, subscribe_not_confirmed_within_the_deadline, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    memset(&SR, 0, sizeof(SR));
    aorm_redis_options o;
    fx_own(&o);
    o.command_timeout = 0.2;
    o.connect_timeout = 5; /* a stopped server still completes the connect (the kernel does) */
    o.reconnect_min = 0.05;
    o.breaker_threshold = 0;
    srv_stop_signal();
    F.r = subscriber(&o);
    heartbeat hb;
    hb_start(F.evl, &hb);
    t_settle(F.evl, 0.5);
    cr_assert_lt(hb_stop(F.evl, &hb), HB_MAX);
    aorm_redis_stats s = stats();
    cr_assert_eq(SR.subscribed, 0);
    cr_assert(!s.subscribed);
    cr_assert_geq(s.timeouts, 1, "the deadline of the hook's CLIENT ID or of SUBSCRIBE expired");
    cr_assert_geq(s.connections_lost, 1);
    srv_cont();
    int one = 1;
    cr_assert(t_run_until_fn(F.evl, subscribed_n, &one, 5), "not subscribed once the server runs again");
    cr_assert(stats().subscribed);
    fx_done();
}

/* A server that confirms SUBSCRIBE and then sends pub/sub garbage: the
 * connection is closed as a protocol error (hiredis alone would abort). */
Test(redis, malformed_pubsub_messages_close_the_connection, .timeout = 30) {
    static const char *const bad[] = {
        "*1\r\n:1\r\n",                          /* too short */
        "*3\r\n:1\r\n$3\r\none\r\n:1\r\n",       /* kind not a string */
        "*3\r\n$7\r\nmessage\r\n:5\r\n$1\r\nx\r\n", /* channel not a string */
        ":7\r\n",                                /* not an array */
        "*2\r\n$11\r\nunsubscribe\r\n$10\r\naorm:t:one\r\n",                  /* no count */
        "*3\r\n$11\r\nUNSUBSCRIBE\r\n$10\r\naorm:t:one\r\n$1\r\nx\r\n",    /* count not an integer */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&SR, 0, sizeof(SR));
        aorm_redis_options o;
        fx_init(&o);
        char script[256];
        snprintf(script, sizeof(script), ":42\r\n*3\r\n$9\r\nsubscribe\r\n$10\r\naorm:t:one\r\n:1\r\n"
                                         "*3\r\n$9\r\nsubscribe\r\n$10\r\naorm:t:two\r\n:2\r\n%s", bad[i]);
        const char *answers[] = {script, NULL};
        fake_start(F.evl, NULL);
        FK.answers = answers;
        o.port = FK.port;
        o.reconnect_min = 1; /* one connection in this test */
        o.reconnect_max = 1;
        F.r = subscriber(&o);
        cr_assert(t_run_until_fn(F.evl, protocol_error_seen, NULL, 5), "case %zu: the connection stayed open", i);
        cr_assert_eq(SR.subscribed, 1, "case %zu: the good confirmations came first", i);
        cr_assert_eq(SR.messages, 0);
        cr_assert_eq(SR.lost, 1);
        fake_stop(F.evl);
        fx_done();
    }
}

static int connection_lost_seen(void *arg) { return stats().connections_lost >= 1; }

/* The server ends a subscription by itself (a well-formed unsubscribe):
 * the connection is closed so that the next one subscribes again. */
Test(redis, an_unsubscribe_from_the_server_reconnects, .timeout = 30) {
    memset(&SR, 0, sizeof(SR));
    aorm_redis_options o;
    fx_init(&o);
    const char *answers[] = {":42\r\n*3\r\n$9\r\nsubscribe\r\n$10\r\naorm:t:one\r\n:1\r\n"
                             "*3\r\n$9\r\nsubscribe\r\n$10\r\naorm:t:two\r\n:2\r\n"
                             "*3\r\n$11\r\nunsubscribe\r\n$10\r\naorm:t:one\r\n:1\r\n",
                             NULL};
    fake_start(F.evl, NULL);
    FK.answers = answers;
    o.port = FK.port;
    o.reconnect_min = 0.01;
    o.reconnect_max = 0.01;
    F.r = subscriber(&o);
    cr_assert(t_run_until_fn(F.evl, connection_lost_seen, NULL, 5), "the connection stayed open");
    cr_assert_eq(SR.subscribed, 1);
    cr_assert_eq(SR.lost, 1);
    cr_assert_eq(stats().protocol_errors, 0, "not garbage: a reconnect");
    cr_assert(t_run_until_fn(F.evl, t_never, NULL, 0.2) == 0);
    cr_assert_geq(FK.accepted, 2, "no new connection");
    fake_stop(F.evl);
    fx_done();
}

/* A subscribed connection that goes quiet is checked with PING: answered
 * while the server runs (the connection stays), unanswered once it is
 * stopped (closed within subscriber_ping + command_timeout), and the
 * subscription comes back when the server runs again. */
Test(redis, subscriber_heartbeat_finds_a_silent_server, .timeout = 60, .fini = srv_fini) {
    srv_start(NULL);
    memset(&SR, 0, sizeof(SR));
    aorm_redis_options o;
    fx_own(&o);
    o.subscriber_ping = 0.1;
    o.command_timeout = 0.2;
    o.reconnect_min = 0.05;
    o.breaker_threshold = 0;
    o.connect_timeout = 5;
    F.r = subscriber(&o);
    int one = 1;
    cr_assert(t_run_until_fn(F.evl, subscribed_n, &one, 5));
    uint64_t w0 = stats().writes;
    t_settle(F.evl, 1.0);
    aorm_redis_stats s = stats();
    cr_assert_eq(s.connections_lost, 0, "an answered PING closed the connection");
    cr_assert_geq(s.writes - w0, 4, "no heartbeat while idle (%llu writes)", (unsigned long long)(s.writes - w0));
    cr_assert_leq(s.writes - w0, 12, "more PINGs than one per interval");
    cr_assert(s.subscribed);
    srv_stop_signal();
    double t0 = t_mono();
    heartbeat hb;
    hb_start(F.evl, &hb);
    cr_assert(t_run_until_fn(F.evl, connection_lost_seen, NULL, 5), "a silent server was not noticed");
    double took = t_mono() - t0;
    cr_assert_lt(hb_stop(F.evl, &hb), HB_MAX);
    cr_assert_lt(took, 1.0, "noticed after %.2f s", took);
    cr_assert_eq(SR.lost, 1);
    cr_assert_geq(stats().timeouts, 1);
    srv_cont();
    int two = 2;
    cr_assert(t_run_until_fn(F.evl, subscribed_n, &two, 10), "not subscribed again");
    fx_done();
}
