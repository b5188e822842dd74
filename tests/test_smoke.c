/* test_smoke.c -- the sandbox servers are reachable: PostgreSQL through
 * the engine (non-blocking, loop-driven) and Redis through hiredis, over
 * TCP and its unix socket, authenticated when the sandbox asks for it. A
 * missing sandbox fails here, loudly. */
#include <ev.h>
#include <hiredis/hiredis.h>
#include <string.h>

#include "support.h"

typedef struct version_state {
    char version[256];
    int done;
    int failed;
} version_state;

static void on_version(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    version_state *s = user;
    s->done = 1;
    if (err) {
        s->failed = 1;
        cr_log_error("SELECT version() failed: %s %s", err->sqlstate, err->message);
        return;
    }
    const char *v;
    if (aorm_result_text(res, 0, 0, &v, NULL) == 0) snprintf(s->version, sizeof(s->version), "%s", v);
}

Test(smoke, postgresql_through_the_engine, .timeout = 30) {
    struct ev_loop *evl;
    aorm_loop *l;
    t_loop_open(&evl, &l);
    aorm_engine *e = t_engine(l, NULL);
    version_state s = {0};
    cr_assert_eq(aorm_engine_execute(e, "SELECT version()", NULL, NULL, on_version, &s), 0);
    cr_assert_eq(s.done, 0, "callback ran inside execute");
    cr_assert(t_run_until(evl, &s.done, 20), "no answer from the sandbox PostgreSQL");
    cr_assert_eq(s.failed, 0);
    cr_assert(strncmp(s.version, "PostgreSQL", 10) == 0, "unexpected version string: %s", s.version);
    aorm_engine_free(e);
    t_loop_close(&evl, &l);
}

/* PING, then a binary-safe SET/GET, on a connection made and
 * authenticated the way the sandbox says (user and password when it set
 * them). */
static void redis_round_trip(bool unix_socket) {
    redisContext *r = t_redis(unix_socket);
    redisReply *rep = redisCommand(r, "PING");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0, "PING: %s",
              rep && rep->str ? rep->str : r->errstr);
    freeReplyObject(rep);
    rep = redisCommand(r, "SET %s %b", "aorm:smoke", "v\0x", (size_t)3);
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS, "SET: %s", rep && rep->str ? rep->str : r->errstr);
    freeReplyObject(rep);
    rep = redisCommand(r, "GET aorm:smoke");
    cr_assert(rep && rep->type == REDIS_REPLY_STRING && rep->len == 3 && memcmp(rep->str, "v\0x", 3) == 0);
    freeReplyObject(rep);
    redisFree(r);
}

Test(smoke, redis, .timeout = 30) { redis_round_trip(false); }
Test(smoke, redis_unix_socket, .timeout = 30) { redis_round_trip(true); }
