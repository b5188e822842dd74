/* wl_redis.c -- batch reads from Redis: the ceiling with plain hiredis,
 * and the same work through aorm_redis, which the second-level cache's
 * batch reads build on.
 *
 *   raw_hiredis_mget  blocking hiredis: 300 MGETs of 1,000 keys, one at a
 *                     time, every value decoded into a struct and checked
 *   redis_mget        the same MGETs through aorm_redis on a private loop
 *
 * Both draw the same keys (one seed) out of 10,000 keys aorm:bench:mget:N,
 * each holding a 48-byte row image (id, year, price, title), written
 * before the timed part. They use the sandbox's Redis: its unix socket
 * when AORM_TEST_REDIS_SOCKET is set, else AORM_TEST_REDIS (host:port),
 * with AORM_TEST_REDIS_USER / AORM_TEST_REDIS_PASSWORD when set. Must
 * not: time the set-up, or let one workload read values the other wrote
 * differently. */
#include <ev.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aorm/aorm.h"
#include "bench.h"

#define MGET_KEYS 10000
#define MGET_BATCH 1000
#define MGET_ROUNDS 300
#define ROW_LEN 48
#define TITLE_MAX 27
#define MGET_SEED 2u

/* ---- the row image ----------------------------------------------------------- */

typedef struct mrow {
    int64_t id;
    int32_t year;
    int64_t price_cents;
    char title[TITLE_MAX + 1];
} mrow;

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}

static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

/* id (8, big-endian), year (4), price in cents (8), title length (1), title */
static void encode_row(unsigned char *out, int64_t id) {
    memset(out, 0, ROW_LEN);
    put64(out, (uint64_t)id);
    uint32_t year = 1900 + (uint32_t)(id % 120);
    out[8] = (unsigned char)(year >> 24);
    out[9] = (unsigned char)(year >> 16);
    out[10] = (unsigned char)(year >> 8);
    out[11] = (unsigned char)year;
    put64(out + 12, (uint64_t)(id * 7 % 10000));
    int n = snprintf((char *)out + 21, TITLE_MAX + 1, "Book number %lld", (long long)id);
    out[20] = (unsigned char)(n > TITLE_MAX ? TITLE_MAX : n);
}

/* Decodes one value and checks it is row `want`. Returns 0 or -1. */
static int decode_row(const char *s, size_t len, int64_t want, mrow *r) {
    const unsigned char *p = (const unsigned char *)s;
    if (len != ROW_LEN) return -1;
    r->id = (int64_t)get64(p);
    r->year = (int32_t)((uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11]);
    r->price_cents = (int64_t)get64(p + 12);
    size_t tl = p[20];
    if (tl > TITLE_MAX) return -1;
    memcpy(r->title, p + 21, tl);
    r->title[tl] = '\0';
    return r->id == want ? 0 : -1;
}

/* ---- shared set-up ----------------------------------------------------------- */

typedef struct mget_plan {
    char keys[MGET_KEYS][24];
    size_t keylen[MGET_KEYS];
    int pick[MGET_ROUNDS][MGET_BATCH]; /* key indexes of each round */
    const char *argv[MGET_BATCH + 1];
    size_t argvlen[MGET_BATCH + 1];
} mget_plan;

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Where the sandbox's Redis is: unix socket, else host and port. */
static int redis_where(bench_out *out, const char **sock, char *host, size_t hostlen, int *port) {
    *sock = env("AORM_TEST_REDIS_SOCKET");
    const char *hp = env("AORM_TEST_REDIS");
    if (*sock) return 0;
    if (!hp) return bench_fail(out, "AORM_TEST_REDIS is not set: run inside scripts/sandbox");
    const char *colon = strrchr(hp, ':');
    if (!colon || (size_t)(colon - hp) >= hostlen) return bench_fail(out, "AORM_TEST_REDIS must be host:port");
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = '\0';
    *port = atoi(colon + 1);
    return 0;
}

/* A blocking connection, authenticated when the sandbox has credentials. */
static redisContext *raw_redis(bench_out *out) {
    const char *sock;
    char host[256];
    int port = 0;
    if (redis_where(out, &sock, host, sizeof(host), &port) < 0) return NULL;
    redisContext *c = sock ? redisConnectUnix(sock) : redisConnect(host, port);
    if (!c || c->err) {
        bench_fail(out, "redis connect: %s", c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    const char *pw = env("AORM_TEST_REDIS_PASSWORD"), *user = env("AORM_TEST_REDIS_USER");
    if (pw) {
        redisReply *rep = user ? redisCommand(c, "AUTH %s %s", user, pw) : redisCommand(c, "AUTH %s", pw);
        int ok = rep && rep->type == REDIS_REPLY_STATUS;
        if (!ok) bench_fail(out, "redis AUTH: %s", rep && rep->str ? rep->str : c->errstr);
        freeReplyObject(rep);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

/* Writes the 10,000 rows (pipelined MSETs) and draws the rounds' keys. */
static mget_plan *plan_new(bench_ctx *ctx, bench_out *out) {
    mget_plan *p = calloc(1, sizeof(*p));
    if (!p) {
        bench_fail(out, "out of memory");
        return NULL;
    }
    for (int i = 0; i < MGET_KEYS; i++)
        p->keylen[i] = (size_t)snprintf(p->keys[i], sizeof(p->keys[i]), "aorm:bench:mget:%d", i);
    redisContext *c = raw_redis(out);
    if (!c) {
        free(p);
        return NULL;
    }
    unsigned char vals[100][ROW_LEN];
    const char *argv[201];
    size_t lens[201];
    int rc = 0;
    for (int base = 0; base < MGET_KEYS && rc == 0; base += 100) {
        argv[0] = "MSET";
        lens[0] = 4;
        for (int j = 0; j < 100; j++) {
            encode_row(vals[j], base + j);
            argv[1 + 2 * j] = p->keys[base + j];
            lens[1 + 2 * j] = p->keylen[base + j];
            argv[2 + 2 * j] = (const char *)vals[j];
            lens[2 + 2 * j] = ROW_LEN;
        }
        redisReply *rep = redisCommandArgv(c, 201, argv, lens);
        if (!rep || rep->type != REDIS_REPLY_STATUS)
            rc = bench_fail(out, "MSET: %s", rep && rep->str ? rep->str : c->errstr);
        freeReplyObject(rep);
    }
    redisFree(c);
    if (rc < 0) {
        free(p);
        return NULL;
    }
    bench_rng_seed(&ctx->rng, MGET_SEED); /* both workloads read the same keys */
    for (int r = 0; r < MGET_ROUNDS; r++)
        for (int k = 0; k < MGET_BATCH; k++) p->pick[r][k] = (int)bench_rng_range(&ctx->rng, 0, MGET_KEYS - 1);
    p->argv[0] = "MGET";
    p->argvlen[0] = 4;
    return p;
}

static void plan_round(mget_plan *p, int r) {
    for (int k = 0; k < MGET_BATCH; k++) {
        p->argv[1 + k] = p->keys[p->pick[r][k]];
        p->argvlen[1 + k] = p->keylen[p->pick[r][k]];
    }
}

/* Decodes every value of one MGET reply of round r. Returns 0 or -1. */
static int check_round(const mget_plan *p, int r, const redisReply *rep, int64_t *sum) {
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != MGET_BATCH) return -1;
    for (int k = 0; k < MGET_BATCH; k++) {
        const redisReply *e = rep->element[k];
        mrow row;
        if (e->type != REDIS_REPLY_STRING || decode_row(e->str, e->len, p->pick[r][k], &row) < 0) return -1;
        *sum += row.year + row.price_cents + (int64_t)strlen(row.title);
    }
    return 0;
}

/* ---- raw_hiredis_mget -------------------------------------------------------- */

static int run_raw_hiredis_mget(bench_ctx *ctx, bench_out *out) {
    mget_plan *p = plan_new(ctx, out);
    if (!p) return -1;
    redisContext *c = raw_redis(out);
    if (!c) {
        free(p);
        return -1;
    }
    int64_t sum = 0;
    int rc = 0;
    double t0 = bench_now();
    for (int r = 0; r < MGET_ROUNDS && rc == 0; r++) {
        plan_round(p, r);
        redisReply *rep = redisCommandArgv(c, MGET_BATCH + 1, p->argv, p->argvlen);
        if (check_round(p, r, rep, &sum) < 0) rc = bench_fail(out, "round %d: bad MGET reply", r);
        freeReplyObject(rep);
    }
    out->seconds = bench_now() - t0;
    out->ops = (uint64_t)MGET_ROUNDS * MGET_BATCH;
    out->queries = MGET_ROUNDS;
    bench_extra(out, "keys_per_query", "%d", MGET_BATCH);
    if (ctx->verbose) fprintf(stderr, "raw_hiredis_mget: checksum %lld\n", (long long)sum);
    redisFree(c);
    free(p);
    return rc;
}

/* ---- redis_mget -------------------------------------------------------------- */

typedef struct amget {
    struct ev_loop *evl;
    mget_plan *p;
    bench_out *out;
    aorm_redis *r;
    int round;
    int done, failed;
    int64_t sum;
} amget;

static void amget_send(amget *a);

static void on_mget(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    amget *a = user;
    if (err) {
        bench_fail(a->out, "round %d: %s %s", a->round, aorm_errname(err->code), err->message);
        a->failed = 1;
    } else if (check_round(a->p, a->round, reply, &a->sum) < 0) {
        bench_fail(a->out, "round %d: bad MGET reply", a->round);
        a->failed = 1;
    } else if (++a->round == MGET_ROUNDS) {
        a->done = 1;
    } else {
        amget_send(a);
    }
    if (a->done || a->failed) ev_break(a->evl, EVBREAK_ALL);
}

static void amget_send(amget *a) {
    plan_round(a->p, a->round);
    int rc = aorm_redis_command_argv(a->r, MGET_BATCH + 1, a->p->argv, a->p->argvlen, NULL, on_mget, a);
    if (rc < 0) {
        bench_fail(a->out, "MGET: %s", aorm_errname(rc));
        a->failed = 1;
        ev_break(a->evl, EVBREAK_ALL);
    }
}

static void on_ping(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    amget *a = user;
    if (err) {
        bench_fail(a->out, "PING: %s %s", aorm_errname(err->code), err->message);
        a->failed = 1;
    }
    a->done = 1;
    ev_break(a->evl, EVBREAK_ALL);
}

static void watchdog(struct ev_loop *evl, ev_timer *w, int revents) { ev_break(evl, EVBREAK_ALL); }

/* Runs the loop until a->done or a failure (60 s at most): the callbacks
 * break the loop themselves. */
static int amget_wait(struct ev_loop *evl, amget *a) {
    ev_timer wd;
    ev_timer_init(&wd, watchdog, 60., 0.);
    ev_timer_start(evl, &wd);
    ev_run(evl, 0);
    ev_timer_stop(evl, &wd);
    if (!a->done && !a->failed) {
        bench_fail(a->out, "round %d: no answer within 60 s", a->round);
        a->failed = 1;
    }
    return a->failed ? -1 : 0;
}

static int run_redis_mget(bench_ctx *ctx, bench_out *out) {
    mget_plan *p = plan_new(ctx, out);
    if (!p) return -1;
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    aorm_loop *loop = evl ? aorm_loop_new_ev(evl) : NULL;
    amget a = {evl, p, out, NULL, 0, 0, 0, 0};
    int rc = -1;
    const char *sock;
    char host[256];
    aorm_redis_options o;
    aorm_redis_options_init(&o);
    if (!loop) {
        bench_fail(out, "out of memory");
        goto done;
    }
    if (redis_where(out, &sock, host, sizeof(host), &o.port) < 0) goto done;
    if (sock) o.unix_path = sock;
    else o.host = host;
    o.password = env("AORM_TEST_REDIS_PASSWORD");
    o.username = o.password ? env("AORM_TEST_REDIS_USER") : NULL;
    o.command_timeout = 10;
    a.r = aorm_redis_new(loop, &o);
    if (!a.r) {
        bench_fail(out, "aorm_redis_new failed");
        goto done;
    }
    /* connected and authenticated before the timed part */
    if (aorm_redis_command(a.r, NULL, on_ping, &a, "PING") < 0 || amget_wait(evl, &a) < 0) goto done;
    a.done = 0;
    aorm_redis_stats s0, s1;
    aorm_redis_stats_get(a.r, &s0);
    double t0 = bench_now();
    amget_send(&a);
    rc = amget_wait(evl, &a);
    out->seconds = bench_now() - t0;
    aorm_redis_stats_get(a.r, &s1);
    out->ops = (uint64_t)MGET_ROUNDS * MGET_BATCH;
    out->queries = s1.commands - s0.commands;
    bench_extra(out, "keys_per_query", "%d", MGET_BATCH);
    bench_extra(out, "writes", "%llu", (unsigned long long)(s1.writes - s0.writes));
    if (ctx->verbose) fprintf(stderr, "redis_mget: checksum %lld\n", (long long)a.sum);
done:
    aorm_redis_free(a.r);
    aorm_loop_free(loop);
    if (evl) ev_loop_destroy(evl);
    free(p);
    return rc;
}

const bench_workload wl_redis_list[] = {
    {"raw_hiredis_mget", "redis", run_raw_hiredis_mget},
    {"redis_mget", "redis", run_redis_mget},
    {NULL, NULL, NULL},
};
