/* test_near.c -- the near cache (an in-process LRU) and the tracker that
 * keeps it coherent with Redis through client-side caching.
 *
 * The LRU tests need no server: bounds in entries and bytes, expiry,
 * eviction order, replacement, and the conditional put that closes the
 * invalidation-before-reply race. The tracking tests run against the
 * sandbox's Redis (AORM_TEST_REDIS, its ACL user): another client's SET
 * on a tracked prefix reaches the callback in the loop turn its message
 * arrives in; killing the tracker's connection or the data connection
 * (CLIENT KILL as the sandbox admin), flushing the server, stopping
 * Redis (SIGSTOP: the first read deadline) and killing and restarting it
 * each drop everything, make the tracker not ready, and it becomes ready
 * again by itself, with invalidations flowing. A GET whose reply races
 * the invalidation of a later change never leaves the old value behind,
 * whichever socket is read first.
 *
 * The suite runs serially (it kills connections and restarts the shared
 * sandbox Redis). */
#include <ev.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "aorm/redis.h"
#include "cache/near.h"
#include "support.h"

/* ---- the LRU ------------------------------------------------------------------------- */

static const char *get_str(aorm__near *n, const char *key, double now) {
    size_t vlen = 0;
    const char *v = aorm__near_get(n, key, strlen(key), now, &vlen);
    static char buf[256];
    if (!v) return NULL;
    cr_assert(vlen < sizeof(buf));
    memcpy(buf, v, vlen);
    buf[vlen] = '\0';
    return buf;
}

static int put_str(aorm__near *n, const char *key, const char *val, double exp, double now) {
    return aorm__near_put(n, key, strlen(key), val, strlen(val), exp, now);
}

static aorm__near_stats nstats(aorm__near *n) {
    aorm__near_stats s;
    aorm__near_stats_get(n, &s);
    return s;
}

Test(near, get_put_del_and_copies, .timeout = 10) {
    aorm__near *n = aorm__near_new(100, 0);
    cr_assert_not_null(n);
    char key[8] = "k1", val[8] = "v1";
    cr_assert_eq(aorm__near_put(n, key, 2, val, 2, 0, 1.0), 0);
    key[1] = 'X'; /* the cache holds copies */
    val[1] = 'X';
    cr_assert_str_eq(get_str(n, "k1", 1.0), "v1");
    cr_assert_null(get_str(n, "kX", 1.0));
    cr_assert_eq(put_str(n, "k1", "second", 0, 1.0), 0); /* replaces */
    cr_assert_str_eq(get_str(n, "k1", 1.0), "second");
    aorm__near_stats s = nstats(n);
    cr_assert_eq(s.entries, 1);
    cr_assert_eq(s.bytes, 2 + 6 + AORM__NEAR_OVERHEAD);
    cr_assert_eq(s.hits, 2);
    cr_assert_eq(s.misses, 1);
    aorm__near_del(n, "k1", 2);
    aorm__near_del(n, "absent", 6);
    cr_assert_null(get_str(n, "k1", 1.0));
    s = nstats(n);
    cr_assert_eq(s.entries, 0);
    cr_assert_eq(s.bytes, 0);
    cr_assert_eq(s.invalidations, 1, "only a present key counts");
    /* empty keys and values are values too */
    cr_assert_eq(aorm__near_put(n, "", 0, "", 0, 0, 1.0), 0);
    size_t vlen = 99;
    cr_assert_not_null(aorm__near_get(n, "", 0, 1.0, &vlen));
    cr_assert_eq(vlen, 0);
    cr_assert_eq(aorm__near_put(n, NULL, 0, NULL, 0, 0, 1.0), 0, "NULL with length 0 is the empty key");
    cr_assert_not_null(aorm__near_get(n, NULL, 0, 1.0, &vlen));
    cr_assert_eq(aorm__near_put(n, NULL, 1, "x", 1, 0, 1.0), AORM_EMISUSE);
    cr_assert_null(aorm__near_get(NULL, "k", 1, 1.0, &vlen));
    /* binary keys: a NUL inside is part of the key */
    cr_assert_eq(aorm__near_put(n, "a\0b", 3, "x", 1, 0, 1.0), 0);
    cr_assert_null(aorm__near_get(n, "a\0c", 3, 1.0, &vlen));
    cr_assert_not_null(aorm__near_get(n, "a\0b", 3, 1.0, &vlen));
    aorm__near_free(n);
    aorm__near_free(NULL);
    cr_assert_null(aorm__near_new(0, 100));
}

Test(near, bounded_by_entries_in_lru_order, .timeout = 10) {
    aorm__near *n = aorm__near_new(3, 0);
    put_str(n, "a", "1", 0, 0);
    put_str(n, "b", "2", 0, 0);
    put_str(n, "c", "3", 0, 0);
    cr_assert_not_null(get_str(n, "a", 0)); /* a is now the most recent: b is the oldest */
    put_str(n, "d", "4", 0, 0);
    cr_assert_null(get_str(n, "b", 0));
    cr_assert_not_null(get_str(n, "a", 0));
    cr_assert_not_null(get_str(n, "c", 0));
    cr_assert_not_null(get_str(n, "d", 0));
    aorm__near_stats s = nstats(n);
    cr_assert_eq(s.entries, 3);
    cr_assert_eq(s.evictions, 1);
    put_str(n, "c", "33", 0, 0); /* a replacement evicts nothing */
    cr_assert_eq(nstats(n).evictions, 1);
    cr_assert_eq(nstats(n).entries, 3);
    aorm__near_free(n);
}

Test(near, bounded_by_bytes, .timeout = 10) {
    size_t per = 1 + 10 + AORM__NEAR_OVERHEAD;
    aorm__near *n = aorm__near_new(1000, 4 * per);
    char k[2] = "a";
    for (int i = 0; i < 10; i++) {
        k[0] = (char)('a' + i);
        cr_assert_eq(aorm__near_put(n, k, 1, "0123456789", 10, 0, 0), 0);
        cr_assert_leq(nstats(n).bytes, 4 * per);
    }
    aorm__near_stats s = nstats(n);
    cr_assert_eq(s.entries, 4);
    cr_assert_eq(s.evictions, 6);
    cr_assert_not_null(get_str(n, "j", 0));
    cr_assert_null(get_str(n, "f", 0));
    /* one value larger than the whole bound: not stored, and the old value of its key goes */
    char big[400];
    memset(big, 'x', sizeof(big));
    cr_assert_eq(aorm__near_put(n, "j", 1, big, sizeof(big), 0, 0), 1);
    cr_assert_null(get_str(n, "j", 0));
    cr_assert_eq(nstats(n).refused, 1);
    /* three entries left (g, h, i); one of three entries' size needs two evictions */
    cr_assert_eq(nstats(n).entries, 3);
    cr_assert_eq(aorm__near_put(n, "z", 1, big, 3 * per - AORM__NEAR_OVERHEAD - 1, 0, 0), 0);
    cr_assert_eq(nstats(n).bytes, 4 * per);
    cr_assert_eq(nstats(n).entries, 2, "two of the three 10-byte entries made room");
    cr_assert_null(get_str(n, "g", 0));
    cr_assert_null(get_str(n, "h", 0));
    cr_assert_not_null(get_str(n, "i", 0));
    aorm__near_free(n);
}

Test(near, entries_expire, .timeout = 10) {
    aorm__near *n = aorm__near_new(10, 0);
    put_str(n, "short", "s", 10.0, 1.0);
    put_str(n, "never", "n", 0, 1.0);
    cr_assert_not_null(get_str(n, "short", 9.99));
    cr_assert_null(get_str(n, "short", 10.0));
    cr_assert_not_null(get_str(n, "never", 1e9));
    aorm__near_stats s = nstats(n);
    cr_assert_eq(s.expired, 1);
    cr_assert_eq(s.entries, 1, "an expired entry found by get is dropped");
    cr_assert_eq(put_str(n, "late", "l", 5.0, 6.0), 1, "already expired: not stored");
    cr_assert_null(get_str(n, "late", 6.0));
    aorm__near_free(n);
}

Test(near, clear_drops_everything, .timeout = 10) {
    aorm__near *n = aorm__near_new(100, 0);
    for (int i = 0; i < 50; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        put_str(n, k, "v", 0, 0);
    }
    aorm__near_clear(n);
    aorm__near_stats s = nstats(n);
    cr_assert_eq(s.entries, 0);
    cr_assert_eq(s.bytes, 0);
    cr_assert_eq(s.flushes, 1);
    cr_assert_null(get_str(n, "k7", 0));
    cr_assert_eq(put_str(n, "k7", "again", 0, 0), 0);
    cr_assert_str_eq(get_str(n, "k7", 0), "again");
    aorm__near_free(n);
}

/* The race: a read is sent; before its reply is handled the key's
 * invalidation arrives on the other connection (nothing to drop yet);
 * then the reply would put the old value. put_after refuses it. */
Test(near, put_after_refuses_a_value_invalidated_during_its_read, .timeout = 10) {
    aorm__near *n = aorm__near_new(100, 0);
    uint64_t seen = aorm__near_seq(n);
    aorm__near_del(n, "hot", 3);      /* the invalidation, handled first */
    cr_assert_eq(aorm__near_put_after(n, "hot", 3, "old", 3, 0, 0, seen), 1);
    cr_assert_null(get_str(n, "hot", 0));
    /* another key invalidated meanwhile does not stop this one */
    cr_assert_eq(aorm__near_put_after(n, "cold", 4, "v", 1, 0, 0, seen), 0);
    /* a read sent after the invalidation is fine */
    uint64_t later = aorm__near_seq(n);
    cr_assert_eq(aorm__near_put_after(n, "hot", 3, "new", 3, 0, 0, later), 0);
    cr_assert_str_eq(get_str(n, "hot", 0), "new");
    /* a clear refuses every read sent before it */
    uint64_t before_clear = aorm__near_seq(n);
    aorm__near_clear(n);
    cr_assert_eq(aorm__near_put_after(n, "x", 1, "v", 1, 0, 0, before_clear), 1);
    cr_assert_eq(aorm__near_put_after(n, "x", 1, "v", 1, 0, 0, aorm__near_seq(n)), 0);
    cr_assert_eq(nstats(n).refused, 2);
    aorm__near_free(n);
}

Test(near, put_after_is_conservative_past_its_history, .timeout = 10) {
    aorm__near *n = aorm__near_new(100, 0);
    uint64_t seen = aorm__near_seq(n);
    char k[32];
    for (unsigned i = 0; i < AORM__NEAR_HISTORY - 1; i++) {
        snprintf(k, sizeof(k), "other%u", i);
        aorm__near_del(n, k, strlen(k));
    }
    cr_assert_eq(aorm__near_put_after(n, "mine", 4, "v", 1, 0, 0, seen), 0, "history still covers the read");
    for (unsigned i = 0; i < 2; i++) {
        snprintf(k, sizeof(k), "more%u", i);
        aorm__near_del(n, k, strlen(k));
    }
    cr_assert_eq(aorm__near_put_after(n, "mine2", 5, "v", 1, 0, 0, seen), 1, "history lost: refused");
    aorm__near_free(n);
}

/* Many random operations against a plain model of the cache (an array
 * searched linearly, with the same LRU order): contents, order and byte
 * counts agree after every step, across table growth and the backward
 * shifts of removal. */
#define MODEL_MAX 64
typedef struct mentry {
    char key[8];
    size_t klen;
    char val[64];
    size_t vlen;
    double exp;
    long used; /* larger: more recent */
} mentry;

Test(near, agrees_with_a_model_over_random_operations, .timeout = 60) {
    const size_t max_entries = 40, max_bytes = 40 * (AORM__NEAR_OVERHEAD + 20);
    aorm__near *n = aorm__near_new(max_entries, max_bytes);
    mentry m[MODEL_MAX];
    int nm = 0;
    long clock = 0;
    unsigned seed = 12345;
    for (int step = 0; step < 200000; step++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = seed >> 8;
        char key[8];
        size_t klen = (size_t)snprintf(key, sizeof(key), "k%u", r % 97);
        double now = step * 0.001;
        int op = (int)((r >> 8) % 10);
        int found = -1;
        for (int i = 0; i < nm; i++)
            if (m[i].klen == klen && memcmp(m[i].key, key, klen) == 0) found = i;
        if (op < 4) { /* get */
            size_t vlen;
            const char *v = aorm__near_get(n, key, klen, now, &vlen);
            if (found >= 0 && m[found].exp > 0 && m[found].exp <= now) {
                m[found] = m[--nm];
                found = -1;
            }
            if (found < 0) {
                cr_assert_null(v, "step %d: %s should be absent", step, key);
            } else {
                cr_assert_not_null(v, "step %d: %s should be present", step, key);
                cr_assert_eq(vlen, m[found].vlen);
                cr_assert(memcmp(v, m[found].val, vlen) == 0);
                m[found].used = ++clock;
            }
        } else if (op < 8) { /* put */
            char val[64];
            size_t vlen = (r >> 12) % 40;
            memset(val, 'a' + (int)(r % 26), vlen);
            double exp = (r >> 4) % 3 == 0 ? now + 0.05 : 0;
            cr_assert_eq(aorm__near_put(n, key, klen, val, vlen, exp, now), 0);
            if (found >= 0) m[found] = m[--nm];
            size_t eb = klen + vlen + AORM__NEAR_OVERHEAD, bytes = 0;
            for (int i = 0; i < nm; i++) bytes += m[i].klen + m[i].vlen + AORM__NEAR_OVERHEAD;
            while (nm > 0 && ((size_t)nm + 1 > max_entries || bytes + eb > max_bytes)) {
                int lru = 0;
                for (int i = 1; i < nm; i++)
                    if (m[i].used < m[lru].used) lru = i;
                bytes -= m[lru].klen + m[lru].vlen + AORM__NEAR_OVERHEAD;
                m[lru] = m[--nm];
            }
            cr_assert_lt(nm, MODEL_MAX);
            mentry *e = &m[nm++];
            memcpy(e->key, key, klen);
            e->klen = klen;
            memcpy(e->val, val, vlen);
            e->vlen = vlen;
            e->exp = exp;
            e->used = ++clock;
        } else if (op < 9) { /* del */
            aorm__near_del(n, key, klen);
            if (found >= 0) m[found] = m[--nm];
        } else if ((r >> 20) % 50 == 0) {
            aorm__near_clear(n);
            nm = 0;
        }
        aorm__near_stats s = nstats(n);
        size_t bytes = 0;
        for (int i = 0; i < nm; i++) bytes += m[i].klen + m[i].vlen + AORM__NEAR_OVERHEAD;
        cr_assert_eq(s.entries, (size_t)nm, "step %d", step);
        cr_assert_eq(s.bytes, bytes, "step %d", step);
    }
    aorm__near_free(n);
}

/* ---- tracking against the sandbox Redis ------------------------------------------------ */

typedef struct tfx {
    struct ev_loop *evl;
    aorm_loop *l;
    aorm_redis_options o;
    aorm_redis *data;
    aorm__tracker *t;
    aorm__near *near;
    char prefix[64];
    int flushes;          /* cb(NULL) */
    int keys;             /* cb(key) */
    char last_key[256];
    unsigned turns;       /* loop turns ended (before-poll stages seen) */
    unsigned cb_turn;     /* the turn of the last cb(key) */
    unsigned msg_turn;    /* the turn in which the last message arrived */
    uint64_t msgs_seen;
    ev_prepare prep;
    bool free_in_cb;
} tfx;

static tfx T;

static void tlog_cb(aorm_log_level level, const char *msg, void *user) { t_log("redis (near suite): %s", msg); }

static void on_invalidate(void *user, const char *key, size_t klen) {
    tfx *f = user;
    if (!key) {
        f->flushes++;
        aorm__near_clear(f->near);
    } else {
        f->keys++;
        snprintf(f->last_key, sizeof(f->last_key), "%.*s", (int)klen, key);
        f->cb_turn = f->turns;
        aorm__near_del(f->near, key, klen);
    }
    if (f->free_in_cb) {
        aorm__tracker_free(f->t);
        f->t = NULL;
    }
}

/* At the end of each turn (right before the loop polls): notes the turn
 * in which a message arrived, then starts the next turn. */
static void on_prepare(struct ev_loop *evl, ev_prepare *w, int revents) {
    tfx *f = (tfx *)((char *)w - offsetof(tfx, prep));
    if (f->t) {
        aorm_redis_stats s;
        aorm_redis_stats_get(aorm__tracker_conn(f->t), &s);
        if (s.messages != f->msgs_seen) {
            f->msgs_seen = s.messages;
            f->msg_turn = f->turns;
        }
    }
    f->turns++;
}

static void tfx_init(void) {
    memset(&T, 0, sizeof(T));
    t_loop_open(&T.evl, &T.l);
    aorm_redis_options_init(&T.o);
    t_redis_sandbox(&T.o);
    T.o.log = tlog_cb;
    T.o.log_level = AORM_LOG_DEBUG;
    T.o.reconnect_min = 0.02;
    T.o.reconnect_max = 0.2;
    T.o.breaker_threshold = 0;
    T.o.command_timeout = 2;
    T.o.client_name = "aorm-near-test";
    snprintf(T.prefix, sizeof(T.prefix), "aorm:near:%d:", (int)getpid());
    T.data = aorm_redis_new(T.l, &T.o);
    cr_assert_not_null(T.data);
    T.near = aorm__near_new(1000, 0);
    const char *prefixes[] = {T.prefix};
    T.t = aorm__tracker_new(T.l, &T.o, T.data, prefixes, 1, on_invalidate, &T);
    cr_assert_not_null(T.t);
    ev_prepare_init(&T.prep, on_prepare);
    ev_prepare_start(T.evl, &T.prep);
}

static void tfx_fini(void) {
    ev_prepare_stop(T.evl, &T.prep);
    aorm__tracker_free(T.t);
    aorm_redis_free(T.data);
    aorm__near_free(T.near);
    t_loop_close(&T.evl, &T.l);
}

static int ready_cond(void *arg) { return T.t && aorm__tracker_ready(T.t); }
static int flushed_cond(void *arg) { return T.flushes > *(int *)arg; }
static int keys_cond(void *arg) { return T.keys > *(int *)arg; }

static void wait_ready(double s) {
    cr_assert(t_run_until_fn(T.evl, ready_cond, NULL, s), "tracker not ready within %g s", s);
}

/* Another client (plain hiredis, blocking) sets a key. */
static void other_set(const char *key, const char *val) {
    redisContext *c = t_redis(false);
    redisReply *rep = redisCommand(c, "SET %s %s", key, val);
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS, "SET failed: %s", rep && rep->str ? rep->str : c->errstr);
    freeReplyObject(rep);
    redisFree(c);
}

/* The data connection's CLIENT ID, asked on it. */
typedef struct idq {
    int done;
    long long id;
} idq;

static void on_id(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    idq *q = user;
    q->done = 1;
    if (!err && reply->type == REDIS_REPLY_INTEGER) q->id = reply->integer;
}

/* Asks until an answer comes (after a kill the first tries fail). */
static long long data_client_id(void) {
    for (int i = 0; i < 100; i++) {
        idq q = {0};
        cr_assert_eq(aorm_redis_command(T.data, NULL, on_id, &q, "CLIENT ID"), 0);
        cr_assert(t_run_until(T.evl, &q.done, 5));
        if (q.id > 0) return q.id;
    }
    cr_assert_fail("CLIENT ID never answered");
    return 0;
}

static void kill_client(long long id) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "redis-cli client kill id %lld", id);
    t_sandbox(cmd);
}

/* A SET by another client reaches the callback, and the near cache. */
static void expect_invalidation(const char *suffix) {
    char key[128];
    snprintf(key, sizeof(key), "%s%s", T.prefix, suffix);
    cr_assert_eq(aorm__near_put(T.near, key, strlen(key), "cached", 6, 0, 0), 0);
    int before = T.keys;
    other_set(key, "changed");
    cr_assert(t_run_until_fn(T.evl, keys_cond, &before, 5), "no invalidation of %s within 5 s", key);
    cr_assert_str_eq(T.last_key, key);
    size_t vlen;
    cr_assert_null(aorm__near_get(T.near, key, strlen(key), 0, &vlen), "the near entry was dropped");
}

Test(near, tracking_delivers_another_clients_change_in_the_turn_it_arrives, .timeout = 60, .init = tfx_init,
     .fini = tfx_fini) {
    cr_assert(!aorm__tracker_ready(T.t), "not ready before anything was confirmed");
    wait_ready(5);
    aorm__tracker_stats ts;
    aorm__tracker_stats_get(T.t, &ts);
    cr_assert_gt(ts.client_id, 0);
    cr_assert_eq(ts.tracking_ok, 1);
    expect_invalidation("k1");
    cr_assert_eq(T.cb_turn, T.msg_turn, "callback in loop turn %u, message arrived in turn %u", T.cb_turn,
                 T.msg_turn);
    /* a key outside the prefix is not reported */
    int before = T.keys;
    other_set("aorm:elsewhere:x", "1");
    expect_invalidation("k2");
    cr_assert_eq(T.keys, before + 1, "only the tracked key");
    cr_assert_eq(T.flushes, 0);
}

Test(near, killing_the_tracking_connection_drops_everything_until_tracking_is_back, .timeout = 60,
     .init = tfx_init, .fini = tfx_fini) {
    wait_ready(5);
    aorm__tracker_stats ts;
    aorm__tracker_stats_get(T.t, &ts);
    long long old_id = ts.client_id;
    uint64_t epoch = aorm__tracker_epoch(T.t);
    int f0 = T.flushes;
    kill_client(old_id);
    cr_assert(t_run_until_fn(T.evl, flushed_cond, &f0, 5), "no drop-everything after the kill");
    cr_assert(!aorm__tracker_ready(T.t));
    cr_assert_neq(aorm__tracker_epoch(T.t), epoch, "a value read before the loss cannot be put");
    wait_ready(5);
    aorm__tracker_stats_get(T.t, &ts);
    cr_assert_neq(ts.client_id, old_id);
    cr_assert_eq(ts.tracking_ok, 2);
    expect_invalidation("after-kill");
}

Test(near, killing_the_data_connection_drops_everything_until_tracking_is_back, .timeout = 60, .init = tfx_init,
     .fini = tfx_fini) {
    wait_ready(5);
    long long id = data_client_id();
    int f0 = T.flushes;
    kill_client(id);
    cr_assert(t_run_until_fn(T.evl, flushed_cond, &f0, 5), "no drop-everything after the kill");
    cr_assert(!aorm__tracker_ready(T.t));
    wait_ready(5);
    cr_assert_neq(data_client_id(), id);
    expect_invalidation("after-data-kill");
}

Test(near, a_flush_of_the_server_drops_everything, .timeout = 60, .init = tfx_init, .fini = tfx_fini) {
    wait_ready(5);
    cr_assert_eq(aorm__near_put(T.near, "x", 1, "v", 1, 0, 0), 0);
    int f0 = T.flushes;
    t_sandbox("redis-cli flushdb");
    cr_assert(t_run_until_fn(T.evl, flushed_cond, &f0, 5), "no drop-everything after FLUSHDB");
    cr_assert_eq(aorm__near_get(T.near, "x", 1, 0, &(size_t){0}), NULL);
    cr_assert(aorm__tracker_ready(T.t), "tracking itself survives a flush");
    expect_invalidation("after-flush");
}

Test(near, redis_restarted_drops_everything_and_recovers, .timeout = 90, .init = tfx_init, .fini = tfx_fini) {
    wait_ready(5);
    int f0 = T.flushes;
    t_sandbox("restart-redis");
    cr_assert(t_run_until_fn(T.evl, flushed_cond, &f0, 5), "no drop-everything after the restart");
    wait_ready(10);
    expect_invalidation("after-restart");
}

Test(near, freed_inside_its_callback, .timeout = 60, .init = tfx_init, .fini = tfx_fini) {
    wait_ready(5);
    T.free_in_cb = true;
    char key[128];
    snprintf(key, sizeof(key), "%sfree", T.prefix);
    int before = T.keys;
    other_set(key, "1");
    cr_assert(t_run_until_fn(T.evl, keys_cond, &before, 5));
    cr_assert_null(T.t);
    /* the data connection keeps working without the tracker's hooks */
    long long id = data_client_id();
    kill_client(id);
    cr_assert_neq(data_client_id(), id);
}

Test(near, tracker_arguments, .timeout = 30, .init = tfx_init, .fini = tfx_fini) {
    const char *overlap[] = {"aorm:a:", "aorm:a:b:"};
    const char *empty[] = {""};
    const char *ok[] = {"aorm:a:"};
    cr_assert_null(aorm__tracker_new(T.l, &T.o, T.data, overlap, 2, on_invalidate, &T));
    cr_assert_null(aorm__tracker_new(T.l, &T.o, T.data, empty, 1, on_invalidate, &T));
    cr_assert_null(aorm__tracker_new(T.l, &T.o, T.data, ok, 0, on_invalidate, &T));
    cr_assert_null(aorm__tracker_new(T.l, &T.o, T.data, ok, 1, NULL, &T));
    cr_assert_null(aorm__tracker_new(T.l, &T.o, NULL, ok, 1, on_invalidate, &T));
    cr_assert(!aorm__tracker_ready(NULL));
    aorm__tracker_free(NULL);
}

/* A tracker made for a data connection that is ready already, with two
 * prefixes: it sends its TRACKING command on that connection once
 * subscribed, and both prefixes are reported. */
Test(near, tracker_for_a_ready_data_connection_with_two_prefixes, .timeout = 60, .init = tfx_init,
     .fini = tfx_fini) {
    wait_ready(5);
    aorm__tracker_free(T.t);
    T.t = NULL;
    char p2[64];
    snprintf(p2, sizeof(p2), "aorm:near2:%d:", (int)getpid());
    const char *prefixes[] = {p2, T.prefix};
    T.t = aorm__tracker_new(T.l, &T.o, T.data, prefixes, 2, on_invalidate, &T);
    cr_assert_not_null(T.t);
    cr_assert(!aorm__tracker_ready(T.t));
    wait_ready(5);
    expect_invalidation("first-prefix");
    char key[128];
    snprintf(key, sizeof(key), "%sx", p2);
    int before = T.keys;
    other_set(key, "1");
    cr_assert(t_run_until_fn(T.evl, keys_cond, &before, 5));
    cr_assert_str_eq(T.last_key, key);
}

/* The race, end to end: a GET is in flight on the data connection when
 * another client changes the key; the GET's reply (the old value) and the
 * invalidation reach this process on two sockets, in either order. A put
 * of the reply made the way the cache makes it (tracker ready, same
 * epoch, put_after with the sequence taken before the GET) never leaves
 * the old value in the near cache. */
typedef struct race {
    int done;
    int keys_before_reply; /* invalidations handled before the reply */
    char key[128];
    uint64_t seen, epoch;
    int put_rc;
} race;

static void on_race_get(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    race *x = user;
    x->done = 1;
    cr_assert_null(err, "GET failed: %s", err ? err->message : "");
    x->keys_before_reply = T.keys;
    x->put_rc = -100;
    if (aorm__tracker_ready(T.t) && aorm__tracker_epoch(T.t) == x->epoch)
        x->put_rc = aorm__near_put_after(T.near, x->key, strlen(x->key), reply->str, reply->len, 0, 0, x->seen);
}

Test(near, a_reply_racing_its_invalidation_never_leaves_the_old_value, .timeout = 120, .init = tfx_init,
     .fini = tfx_fini) {
    wait_ready(5);
    int orders[2] = {0, 0}; /* [0]: reply first, [1]: invalidation first */
    for (int i = 0; i < 40; i++) {
        race x = {0};
        snprintf(x.key, sizeof(x.key), "%srace%d", T.prefix, i);
        other_set(x.key, "old");
        int k0 = T.keys; /* that SET's own invalidation comes first */
        cr_assert(t_run_until_fn(T.evl, keys_cond, &k0, 5));
        k0 = T.keys;
        x.seen = aorm__near_seq(T.near);
        x.epoch = aorm__tracker_epoch(T.t);
        cr_assert_eq(aorm_redis_command(T.data, NULL, on_race_get, &x, "GET %s", x.key), 0);
        ev_run(T.evl, EVRUN_NOWAIT); /* the GET is written (before-poll stage) */
        other_set(x.key, "new");     /* ran after the GET: its invalidation follows the reply */
        cr_assert(t_run_until(T.evl, &x.done, 5));
        cr_assert(t_run_until_fn(T.evl, keys_cond, &k0, 5), "no invalidation of the second SET");
        bool inval_first = x.keys_before_reply > k0;
        orders[inval_first]++;
        if (inval_first) cr_assert_eq(x.put_rc, 1, "the old value was put after its invalidation");
        size_t vlen;
        cr_assert_null(aorm__near_get(T.near, x.key, strlen(x.key), 0, &vlen), "round %d: the old value stayed", i);
    }
    t_log("race orders: reply first %d, invalidation first %d", orders[0], orders[1]);
    cr_log_info("race orders: reply first %d, invalidation first %d", orders[0], orders[1]);
}

/* ---- the sandbox Redis stopped (SIGSTOP) ----------------------------------------------- */

static pid_t stopped_redis;

static void cont_fini(void) {
    if (stopped_redis > 0) kill(stopped_redis, SIGCONT);
    stopped_redis = 0;
    tfx_fini();
}

static void on_get_done(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    *(int *)user = err ? err->code : 1;
}

/* A stopped server sends no invalidation and answers no read: the read's
 * deadline closes the data connection, which drops everything; once the
 * server runs again tracking comes back by itself. */
Test(near, a_stopped_server_drops_everything_at_the_first_deadline, .timeout = 60, .init = tfx_init,
     .fini = cont_fini) {
    wait_ready(5);
    int f0 = T.flushes;
    stopped_redis = t_sandbox_redis_pid();
    cr_assert_eq(kill(stopped_redis, SIGSTOP), 0);
    int got = 0;
    aorm_redis_cmd_options co = {.deadline = 0.2};
    cr_assert_eq(aorm_redis_command(T.data, &co, on_get_done, &got, "GET %sx", T.prefix), 0);
    cr_assert(t_run_until(T.evl, &got, 5));
    cr_assert_eq(got, AORM_ETIMEOUT);
    cr_assert(t_run_until_fn(T.evl, flushed_cond, &f0, 5), "no drop-everything after the deadline");
    cr_assert(!aorm__tracker_ready(T.t));
    kill(stopped_redis, SIGCONT);
    stopped_redis = 0;
    wait_ready(10);
    expect_invalidation("after-stop");
}
